//! A chat model from one GGUF file on candle (`quantized_llama`): the
//! tokenizer is rebuilt from the GGUF metadata (`tokenizer.ggml.*`), the
//! chat template is the file's own `tokenizer.chat_template` (Jinja,
//! rendered with minijinja; ChatML when absent), sampling is
//! temperature/top-p with a seed, and text streams out token by token with
//! stop sequences held back until they can no longer match.

use std::path::Path;

use candle_core::quantized::gguf_file::{self, Value};
use candle_core::{Device, Tensor};
use candle_transformers::generation::{LogitsProcessor, Sampling};
use candle_transformers::models::quantized_llama::ModelWeights;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::{AddedToken, Tokenizer};

use super::ModelError;

/// ChatML, used when the GGUF carries no template.
const CHATML: &str = "{% for message in messages %}<|im_start|>{{ message.role }}\n{{ message.content }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";

/// Why generation stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// The model ended its turn.
    End,
    /// `max_tokens` reached.
    MaxTokens,
    /// A stop sequence appeared.
    StopSequence,
    /// The caller went away or cancelled.
    Cancelled,
}

/// Sampling settings of one generation.
#[derive(Debug, Clone, PartialEq)]
pub struct Sampler {
    /// Most new tokens.
    pub max_tokens: u32,
    /// Temperature; 0 is greedy.
    pub temperature: f64,
    /// Nucleus mass.
    pub top_p: f64,
    /// Seed of the sampler (same seed, same tokens).
    pub seed: u64,
    /// Stop sequences.
    pub stop: Vec<String>,
}

/// A loaded GGUF chat model.
pub struct ChatModel {
    weights: ModelWeights,
    tokenizer: Tokenizer,
    template: String,
    bos: String,
    eos: String,
    /// Token ids that end a turn.
    end_ids: Vec<u32>,
    ctx: usize,
    device: Device,
}

impl std::fmt::Debug for ChatModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatModel")
            .field("ctx", &self.ctx)
            .finish_non_exhaustive()
    }
}

fn strings(v: Option<&Value>) -> Vec<String> {
    match v {
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(|x| x.to_string().ok().cloned())
            .collect(),
        _ => Vec::new(),
    }
}

impl ChatModel {
    /// Loads a llama-architecture GGUF file.
    pub fn load(path: &Path) -> Result<Self, ModelError> {
        let mut file = std::fs::File::open(path)?;
        let content = gguf_file::Content::read(&mut file)
            .map_err(|e| ModelError::Format(format!("{}: {e}", path.display())))?;
        let md = &content.metadata;
        let tokens = strings(md.get("tokenizer.ggml.tokens"));
        if tokens.is_empty() {
            return Err(ModelError::Format(format!(
                "{} has no tokenizer.ggml.tokens",
                path.display()
            )));
        }
        let merges: Vec<(String, String)> = strings(md.get("tokenizer.ggml.merges"))
            .into_iter()
            .filter_map(|m| m.split_once(' ').map(|(a, b)| (a.to_owned(), b.to_owned())))
            .collect();
        let vocab: tokenizers::models::bpe::Vocab = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.clone(), i as u32))
            .collect();
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .build()
            .map_err(|e| ModelError::Format(format!("tokenizer: {e}")))?;
        let mut tokenizer = Tokenizer::new(bpe);
        tokenizer.with_pre_tokenizer(Some(ByteLevel::new(false, true, true)));
        tokenizer.with_decoder(Some(ByteLevelDecoder::default()));
        // Control tokens (`<|im_start|>`…) are special: never split.
        let types: Vec<i64> = match md.get("tokenizer.ggml.token_type") {
            Some(Value::Array(a)) => a
                .iter()
                .map(|v| v.to_i32().map(i64::from).unwrap_or(1))
                .collect(),
            _ => Vec::new(),
        };
        let special: Vec<AddedToken> = tokens
            .iter()
            .enumerate()
            .filter(|(i, t)| {
                types.get(*i) == Some(&3) || (t.starts_with("<|") && t.ends_with("|>"))
            })
            .map(|(_, t)| AddedToken::from(t.clone(), true))
            .collect();
        tokenizer
            .add_special_tokens(special)
            .map_err(|e| ModelError::Format(format!("special tokens: {e}")))?;
        let id = |key: &str| md.get(key).and_then(|v| v.to_u32().ok());
        let eos_id = id("tokenizer.ggml.eos_token_id").unwrap_or(2);
        let bos_id = id("tokenizer.ggml.bos_token_id").unwrap_or(1);
        let text = |i: u32| tokens.get(i as usize).cloned().unwrap_or_default();
        let mut end_ids = vec![eos_id];
        if let Some(p) = tokens.iter().position(|t| t == "<|im_end|>") {
            end_ids.push(p as u32);
        }
        let template = md
            .get("tokenizer.chat_template")
            .and_then(|v| v.to_string().ok().cloned())
            .unwrap_or_else(|| CHATML.to_string());
        let ctx = md
            .iter()
            .find(|(k, _)| k.ends_with(".context_length"))
            .and_then(|(_, v)| v.to_u32().ok())
            .unwrap_or(2048) as usize;
        let device = Device::Cpu;
        let weights = ModelWeights::from_gguf(content, &mut file, &device)?;
        Ok(Self {
            weights,
            tokenizer,
            template,
            bos: text(bos_id),
            eos: text(eos_id),
            end_ids,
            ctx,
            device,
        })
    }

    /// Context window in tokens.
    pub fn ctx(&self) -> usize {
        self.ctx
    }

    /// Renders `(role, content)` messages with the model's chat template,
    /// ending with the assistant's turn.
    pub fn render(&self, messages: &[(String, String)]) -> Result<String, ModelError> {
        let mut env = minijinja::Environment::new();
        env.add_template("chat", &self.template)
            .map_err(|e| ModelError::Format(format!("chat template: {e}")))?;
        let msgs: Vec<_> = messages
            .iter()
            .map(|(role, content)| minijinja::context! { role => role, content => content })
            .collect();
        env.get_template("chat")
            .and_then(|t| {
                t.render(minijinja::context! {
                    messages => msgs,
                    add_generation_prompt => true,
                    bos_token => &self.bos,
                    eos_token => &self.eos,
                })
            })
            .map_err(|e| ModelError::Format(format!("chat template: {e}")))
    }

    /// Token ids of `text` (special tokens recognised).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, ModelError> {
        Ok(self
            .tokenizer
            .encode(text, false)
            .map_err(|e| ModelError::Format(format!("tokenizing: {e}")))?
            .get_ids()
            .to_vec())
    }

    /// Generates from prompt tokens, calling `emit` with each piece of new
    /// text (never part of a stop sequence); `emit` returning false cancels.
    /// Returns the tokens generated and why it stopped.
    pub fn generate(
        &mut self,
        prompt: &[u32],
        s: &Sampler,
        mut emit: impl FnMut(&str) -> bool,
    ) -> Result<(u32, Stop), ModelError> {
        if prompt.is_empty() {
            return Err(ModelError::Input("empty prompt".into()));
        }
        if prompt.len() + s.max_tokens as usize > self.ctx {
            return Err(ModelError::Input(format!(
                "{} prompt tokens + max_tokens {} exceed the context window of {} tokens",
                prompt.len(),
                s.max_tokens,
                self.ctx
            )));
        }
        let sampling = if s.temperature <= 0.0 {
            Sampling::ArgMax
        } else if s.top_p > 0.0 && s.top_p < 1.0 {
            Sampling::TopP {
                p: s.top_p,
                temperature: s.temperature,
            }
        } else {
            Sampling::All {
                temperature: s.temperature,
            }
        };
        let mut sampler = LogitsProcessor::from_sampling(s.seed, sampling);
        let mut out: Vec<u32> = Vec::new();
        // Text decoded so far and how much of it was emitted.
        let mut text = String::new();
        let mut sent = 0usize;
        let mut input = prompt.to_vec();
        let mut pos = 0usize;
        let held = s.stop.iter().map(|x| x.len()).max().unwrap_or(0);
        loop {
            if out.len() as u32 >= s.max_tokens {
                return self.flush(&text, sent, &mut emit, out.len(), Stop::MaxTokens);
            }
            let x = Tensor::new(input.as_slice(), &self.device)?.unsqueeze(0)?;
            let logits = self.weights.forward(&x, pos)?.squeeze(0)?;
            pos += input.len();
            let next = sampler.sample(&logits)?;
            if self.end_ids.contains(&next) {
                return self.flush(&text, sent, &mut emit, out.len(), Stop::End);
            }
            out.push(next);
            input = vec![next];
            text = self
                .tokenizer
                .decode(&out, true)
                .map_err(|e| ModelError::Format(format!("decoding: {e}")))?;
            if let Some(at) = s
                .stop
                .iter()
                .filter_map(|st| text[sent..].find(st.as_str()).map(|i| sent + i))
                .min()
            {
                if at > sent && !emit(&text[sent..at]) {
                    return Ok((out.len() as u32, Stop::Cancelled));
                }
                return Ok((out.len() as u32, Stop::StopSequence));
            }
            // Emit what can no longer start a stop sequence, never half a
            // character.
            let mut upto = text.len().saturating_sub(held.saturating_sub(1));
            while upto > sent && !text.is_char_boundary(upto) {
                upto -= 1;
            }
            if text.ends_with('\u{FFFD}') {
                upto = upto.min(text.len() - '\u{FFFD}'.len_utf8());
            }
            if upto > sent {
                if !emit(&text[sent..upto]) {
                    return Ok((out.len() as u32, Stop::Cancelled));
                }
                sent = upto;
            }
        }
    }

    fn flush(
        &self,
        text: &str,
        sent: usize,
        emit: &mut impl FnMut(&str) -> bool,
        n: usize,
        stop: Stop,
    ) -> Result<(u32, Stop), ModelError> {
        if text.len() > sent && !emit(&text[sent..]) {
            return Ok((n as u32, Stop::Cancelled));
        }
        Ok((n as u32, stop))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn tiny() -> (tempfile::TempDir, ChatModel) {
        let dir = tempfile::tempdir().unwrap();
        let path = crate::models::fixtures::tiny_gguf(dir.path());
        let model = ChatModel::load(&path).unwrap();
        (dir, model)
    }

    fn sampler(max_tokens: u32, temperature: f64, seed: u64) -> Sampler {
        Sampler {
            max_tokens,
            temperature,
            top_p: 1.0,
            seed,
            stop: Vec::new(),
        }
    }

    fn run(m: &mut ChatModel, ids: &[u32], s: &Sampler) -> (String, u32, Stop) {
        let mut text = String::new();
        let (n, stop) = m
            .generate(ids, s, |piece| {
                text.push_str(piece);
                true
            })
            .unwrap();
        (text, n, stop)
    }

    #[test]
    fn a_random_llama_loads_with_chatml_and_its_context() {
        let (_d, m) = tiny();
        assert_eq!(m.ctx(), 128);
        let prompt = m.render(&[("user".into(), "Hi there".into())]).unwrap();
        assert_eq!(
            prompt,
            "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n"
        );
        let ids = m.encode(&prompt).unwrap();
        // Control tokens stay whole: 3 of them + 8 bytes of text + 3 newlines + "user"/"assistant" bytes.
        assert_eq!(ids.iter().filter(|&&i| i >= 96).count(), 3);
        assert_eq!(ids.len(), 3 + "user\nHi there\nassistant\n".len());
    }

    #[test]
    fn same_seed_same_tokens_and_the_limit_holds() {
        let (_d, mut m) = tiny();
        let ids = m.encode("<|im_start|>user\nabc<|im_end|>\n").unwrap();
        let a = run(&mut m, &ids, &sampler(24, 1.0, 7));
        let b = run(&mut m, &ids, &sampler(24, 1.0, 7));
        assert_eq!(a, b);
        let seeds: Vec<String> = (1..6)
            .map(|s| run(&mut m, &ids, &sampler(24, 1.0, s)).0)
            .collect();
        assert!(
            seeds.iter().any(|t| *t != a.0),
            "five other seeds all gave {:?}",
            a.0
        );
        // Greedy is deterministic whatever the seed.
        assert_eq!(
            run(&mut m, &ids, &sampler(16, 0.0, 1)),
            run(&mut m, &ids, &sampler(16, 0.0, 2))
        );
        let (_, n, stop) = run(&mut m, &ids, &sampler(5, 1.0, 3));
        assert!(n <= 5);
        if n == 5 {
            assert_eq!(stop, Stop::MaxTokens);
        } else {
            assert_eq!(stop, Stop::End);
        }
    }

    #[test]
    fn cancel_and_stop_sequences_cut_the_stream() {
        let (_d, mut m) = tiny();
        let ids = m.encode("<|im_start|>user\nxyz<|im_end|>\n").unwrap();
        let mut pieces = 0;
        let (n, stop) = m
            .generate(&ids, &sampler(40, 0.0, 1), |_| {
                pieces += 1;
                false
            })
            .unwrap();
        assert_eq!((pieces, stop), (1, Stop::Cancelled));
        assert!(n <= 2, "{n} tokens after a cancel on the first piece");
        // A stop sequence taken from the middle of the greedy output.
        let (full, _, _) = run(&mut m, &ids, &sampler(40, 0.0, 1));
        let chars: Vec<char> = full.chars().collect();
        assert!(chars.len() >= 12, "greedy output {full:?}");
        let stop: String = chars[8..10].iter().collect();
        let mut s = sampler(40, 0.0, 1);
        s.stop = vec![stop.clone()];
        let (cut, _, why) = run(&mut m, &ids, &s);
        assert_eq!(why, Stop::StopSequence);
        assert_eq!(cut, full[..full.find(&stop).unwrap()]);
        // Prompt plus max_tokens beyond the window is refused.
        let e = m
            .generate(&ids, &sampler(128, 0.0, 1), |_| true)
            .unwrap_err();
        assert!(matches!(e, ModelError::Input(_)), "{e}");
    }
}
