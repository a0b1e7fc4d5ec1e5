//! Local models on candle (CPU): the default small models and how they are
//! provisioned, a BERT sentence encoder and a GGUF chat model. Services wrap
//! them as `embed.text` and `llm.chat` / `llm.complete`.

pub mod bert;
pub mod cross;
pub mod gguf;
pub mod provision;

/// Model loading and inference errors.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ModelError {
    /// Reading model files failed.
    #[error("model file: {0}")]
    Io(#[from] std::io::Error),
    /// A model file is not what it should be.
    #[error("model format: {0}")]
    Format(String),
    /// The tensor library failed.
    #[error("inference: {0}")]
    Candle(#[from] candle_core::Error),
    /// The input does not fit the model.
    #[error("{0}")]
    Input(String),
}

/// Random-weight models written to disk the way provisioned ones are, for
/// unit tests.
#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub(crate) mod fixtures {
    use std::path::Path;

    use candle_core::{DType, Device};
    use candle_nn::{VarBuilder, VarMap};
    use candle_transformers::models::bert::{BertModel, Config};
    use tokenizers::Tokenizer;
    use tokenizers::models::wordlevel::WordLevel;
    use tokenizers::pre_tokenizers::whitespace::Whitespace;
    use tokenizers::processors::template::TemplateProcessing;

    /// A 2-layer BERT (hidden 64) with a word-level tokenizer; with
    /// `cross`, in BertForSequenceClassification layout with a pooler and
    /// a one-logit classifier.
    pub fn tiny_bert(dir: &Path, cross: bool) {
        let config = serde_json::json!({
            "vocab_size": 32, "hidden_size": 64, "num_hidden_layers": 2,
            "num_attention_heads": 4, "intermediate_size": 128, "hidden_act": "gelu",
            "hidden_dropout_prob": 0.0, "max_position_embeddings": 64, "type_vocab_size": 2,
            "initializer_range": 0.02, "layer_norm_eps": 1e-12, "pad_token_id": 0,
        });
        std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
        let cfg: Config = serde_json::from_value(config).unwrap();
        let vars = VarMap::new();
        let vb = VarBuilder::from_varmap(&vars, DType::F32, &Device::Cpu);
        if cross {
            BertModel::load(vb.pp("bert"), &cfg).unwrap();
            candle_nn::linear(64, 64, vb.pp("bert.pooler.dense")).unwrap();
            candle_nn::linear(64, 1, vb.pp("classifier")).unwrap();
        } else {
            BertModel::load(vb, &cfg).unwrap();
        }
        vars.save(dir.join("model.safetensors")).unwrap();
        let mut vocab: std::collections::HashMap<String, u32> =
            ["[PAD]", "[UNK]", "[CLS]", "[SEP]"]
                .iter()
                .enumerate()
                .map(|(i, t)| (t.to_string(), i as u32))
                .collect();
        for (i, w) in [
            "cat", "kitten", "mat", "rug", "stock", "market", "a", "the", "on", "bread",
        ]
        .iter()
        .enumerate()
        {
            vocab.insert(w.to_string(), 4 + i as u32);
        }
        let model = WordLevel::builder()
            .vocab(vocab.into_iter().collect())
            .unk_token("[UNK]".into())
            .build()
            .unwrap();
        let mut tok = Tokenizer::new(model);
        tok.with_pre_tokenizer(Some(Whitespace {}));
        tok.with_post_processor(Some(
            TemplateProcessing::builder()
                .try_single("[CLS] $A [SEP]")
                .unwrap()
                .try_pair("[CLS] $A [SEP] $B:1 [SEP]:1")
                .unwrap()
                .special_tokens(vec![("[CLS]", 2), ("[SEP]", 3)])
                .build()
                .unwrap(),
        ));
        tok.save(dir.join("tokenizer.json"), false).unwrap();
    }

    /// A 2-layer llama (hidden 64, 4 heads, 2 KV heads, context 128) in one
    /// GGUF file, Q4_1 matrices and f32 norms, with a byte-level vocabulary
    /// of printable ASCII, newline and the ChatML control tokens, and no
    /// chat template (so ChatML applies). Returns the file's path.
    pub fn tiny_gguf(dir: &Path) -> std::path::PathBuf {
        use candle_core::Tensor;
        use candle_core::quantized::gguf_file::{self, Value};
        use candle_core::quantized::{GgmlDType, QTensor};
        let (hidden, ffn, kv) = (64usize, 128usize, 32usize);
        // GPT-2 byte-level forms: printable ASCII is itself, space is
        // U+0120 and newline U+010A.
        let mut tokens: Vec<String> = vec!["\u{10A}".into(), "\u{120}".into()];
        tokens.extend((0x21u8..=0x7e).map(|b| char::from(b).to_string()));
        tokens.extend(["<|endoftext|>", "<|im_start|>", "<|im_end|>"].map(String::from));
        let vocab = tokens.len();
        let eos = (vocab - 3) as u32;
        let mut seed = 0x2545_F491_4F6C_DD1Du64;
        let mut random = |rows: usize, cols: usize, q: bool| {
            let data: Vec<f32> = (0..rows * cols)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    (seed % 2001) as f32 / 1000.0 - 1.0
                })
                .collect();
            let shape: Vec<usize> = if rows == 1 {
                vec![cols]
            } else {
                vec![rows, cols]
            };
            let t = Tensor::from_vec(data, shape, &Device::Cpu).unwrap();
            let dtype = if q { GgmlDType::Q4_1 } else { GgmlDType::F32 };
            QTensor::quantize(&t, dtype).unwrap()
        };
        let mut tensors: Vec<(String, QTensor)> = vec![
            ("token_embd.weight".into(), random(vocab, hidden, false)),
            ("output_norm.weight".into(), random(1, hidden, false)),
            ("output.weight".into(), random(vocab, hidden, true)),
        ];
        for l in 0..2 {
            let p = format!("blk.{l}");
            for (name, rows, cols, q) in [
                ("attn_q", hidden, hidden, true),
                ("attn_k", kv, hidden, true),
                ("attn_v", kv, hidden, true),
                ("attn_output", hidden, hidden, true),
                ("ffn_gate", ffn, hidden, true),
                ("ffn_up", ffn, hidden, true),
                ("ffn_down", hidden, ffn, true),
                ("attn_norm", 1, hidden, false),
                ("ffn_norm", 1, hidden, false),
            ] {
                tensors.push((format!("{p}.{name}.weight"), random(rows, cols, q)));
            }
        }
        let md: Vec<(&str, Value)> = vec![
            ("general.architecture", Value::String("llama".into())),
            ("llama.attention.head_count", Value::U32(4)),
            ("llama.attention.head_count_kv", Value::U32(2)),
            ("llama.block_count", Value::U32(2)),
            ("llama.embedding_length", Value::U32(hidden as u32)),
            ("llama.rope.dimension_count", Value::U32(16)),
            ("llama.attention.layer_norm_rms_epsilon", Value::F32(1e-5)),
            ("llama.rope.freq_base", Value::F32(10_000.0)),
            ("llama.context_length", Value::U32(128)),
            (
                "tokenizer.ggml.tokens",
                Value::Array(tokens.into_iter().map(Value::String).collect()),
            ),
            ("tokenizer.ggml.eos_token_id", Value::U32(eos)),
            ("tokenizer.ggml.bos_token_id", Value::U32(eos)),
        ];
        let path = dir.join("tiny.gguf");
        let mut f = std::fs::File::create(&path).unwrap();
        let md_refs: Vec<(&str, &Value)> = md.iter().map(|(k, v)| (*k, v)).collect();
        let t_refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
        gguf_file::write(&mut f, &md_refs, &t_refs).unwrap();
        path
    }
}
