//! Sentence embeddings with a BERT encoder on candle (MiniLM by default,
//! bge-small when configured): pooling per model — the mean over the
//! attention mask (MiniLM) or the `[CLS]` token (bge), as the model's
//! sentence-transformers `1_Pooling/config.json` says, else by its name —
//! then optional L2 normalisation.

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config};
use tokenizers::{PaddingParams, Tokenizer, TruncationParams};

use super::ModelError;

/// Longest input in tokens (sentence-transformers' `max_seq_length`).
const MAX_TOKENS: usize = 256;

/// How token vectors become one sentence vector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pooling {
    /// The mean over the real tokens (all-MiniLM-L6-v2).
    Mean,
    /// The first token, `[CLS]` (the bge family).
    Cls,
}

impl Pooling {
    /// The pooling of the model in `dir` named `model`: its
    /// `1_Pooling/config.json` when there is one (`pooling_mode_cls_token`),
    /// else `Cls` for names containing `bge` and `Mean` otherwise.
    pub fn detect(dir: &Path, model: &str) -> Result<Self, ModelError> {
        let file = dir.join("1_Pooling").join("config.json");
        match std::fs::read(&file) {
            Ok(bytes) => {
                let v: serde_json::Value = serde_json::from_slice(&bytes)
                    .map_err(|e| ModelError::Format(format!("{}: {e}", file.display())))?;
                let cls = v.get("pooling_mode_cls_token").and_then(|b| b.as_bool());
                let mean = v.get("pooling_mode_mean_tokens").and_then(|b| b.as_bool());
                match (cls, mean) {
                    (Some(true), _) => Ok(Self::Cls),
                    (_, Some(true)) => Ok(Self::Mean),
                    _ => Err(ModelError::Format(format!(
                        "{}: only mean or CLS pooling is supported",
                        file.display()
                    ))),
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Ok(if model.to_ascii_lowercase().contains("bge") {
                    Self::Cls
                } else {
                    Self::Mean
                })
            }
            Err(e) => Err(e.into()),
        }
    }
}

/// A loaded BERT sentence encoder.
pub struct Embedder {
    model: BertModel,
    pooling: Pooling,
    tokenizer: Tokenizer,
    dim: usize,
    device: Device,
}

impl std::fmt::Debug for Embedder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Embedder")
            .field("dim", &self.dim)
            .finish_non_exhaustive()
    }
}

impl Embedder {
    /// Loads `model.safetensors`, `config.json` and `tokenizer.json` from
    /// `dir`; `model` is its name, for the pooling ([`Pooling::detect`]).
    pub fn load(dir: &Path, model: &str) -> Result<Self, ModelError> {
        let device = Device::Cpu;
        let pooling = Pooling::detect(dir, model)?;
        let config: Config = serde_json::from_slice(&std::fs::read(dir.join("config.json"))?)
            .map_err(|e| ModelError::Format(format!("config.json: {e}")))?;
        let dim = config.hidden_size;
        let weights = std::fs::read(dir.join("model.safetensors"))?;
        let vb = VarBuilder::from_buffered_safetensors(weights, DType::F32, &device)?;
        let model = BertModel::load(vb, &config)?;
        let mut tokenizer = Tokenizer::from_file(dir.join("tokenizer.json"))
            .map_err(|e| ModelError::Format(format!("tokenizer.json: {e}")))?;
        // sentence-transformers ships fixed padding to 128: pad to the longest
        // text of a batch instead, and cut at the model's limit.
        tokenizer.with_padding(Some(PaddingParams::default()));
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: MAX_TOKENS,
                ..Default::default()
            }))
            .map_err(|e| ModelError::Format(format!("truncation: {e}")))?;
        Ok(Self {
            model,
            pooling,
            tokenizer,
            dim,
            device,
        })
    }

    /// The pooling in use.
    pub fn pooling(&self) -> Pooling {
        self.pooling
    }

    /// Vector length.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Embeds a batch of texts; `normalize` scales each vector to length 1.
    pub fn embed(&self, texts: &[String], normalize: bool) -> Result<Vec<Vec<f32>>, ModelError> {
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        let enc = self
            .tokenizer
            .encode_batch(texts.to_vec(), true)
            .map_err(|e| ModelError::Format(format!("tokenizing: {e}")))?;
        let ids: Vec<Tensor> = enc
            .iter()
            .map(|e| Tensor::new(e.get_ids(), &self.device))
            .collect::<Result<_, _>>()?;
        let masks: Vec<Tensor> = enc
            .iter()
            .map(|e| Tensor::new(e.get_attention_mask(), &self.device))
            .collect::<Result<_, _>>()?;
        let ids = Tensor::stack(&ids, 0)?;
        let mask = Tensor::stack(&masks, 0)?;
        let types = ids.zeros_like()?;
        let hidden = self.model.forward(&ids, &types, Some(&mask))?;
        let mut pooled = match self.pooling {
            Pooling::Mean => {
                // Mean over the real tokens.
                let m = mask.to_dtype(DType::F32)?.unsqueeze(2)?;
                let summed = hidden.broadcast_mul(&m)?.sum(1)?;
                let counts = m.sum(1)?;
                summed.broadcast_div(&counts)?
            }
            Pooling::Cls => hidden.narrow(1, 0, 1)?.squeeze(1)?,
        };
        if normalize {
            let norms = pooled.sqr()?.sum_keepdim(1)?.sqrt()?;
            pooled = pooled.broadcast_div(&norms)?;
        }
        Ok(pooled.to_vec2::<f32>()?)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn padding_does_not_change_a_vector_and_normalisation_holds() {
        let dir = tempfile::tempdir().unwrap();
        crate::models::fixtures::tiny_bert(dir.path(), false);
        let e = Embedder::load(dir.path(), "test/tiny").unwrap();
        assert_eq!(e.dim(), 64);
        assert_eq!(e.pooling(), Pooling::Mean);
        let alone = e.embed(&["a cat".into()], true).unwrap();
        let batch = e
            .embed(&["a cat".into(), "the stock market on a rug".into()], true)
            .unwrap();
        assert_eq!(batch.len(), 2);
        for (x, y) in alone[0].iter().zip(&batch[0]) {
            assert!(
                (x - y).abs() < 1e-4,
                "padding changed the vector: {x} vs {y}"
            );
        }
        for v in &batch {
            let n: f32 = v.iter().map(|x| x * x).sum::<f32>().sqrt();
            assert!((n - 1.0).abs() < 1e-4, "length {n}");
        }
        let raw = e.embed(&["a cat".into()], false).unwrap();
        let n: f32 = raw[0].iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!(
            (n - 1.0).abs() > 1e-3,
            "unnormalised vectors are returned as they are"
        );
        assert!(e.embed(&[], true).unwrap().is_empty());
    }

    #[test]
    fn cls_pooling_follows_the_pooling_config_or_the_name() {
        let dir = tempfile::tempdir().unwrap();
        crate::models::fixtures::tiny_bert(dir.path(), false);
        let mean = Embedder::load(dir.path(), "test/tiny").unwrap();
        let by_name = Embedder::load(dir.path(), "BAAI/bge-small-en-v1.5").unwrap();
        assert_eq!(by_name.pooling(), Pooling::Cls);
        std::fs::create_dir(dir.path().join("1_Pooling")).unwrap();
        let cfg = dir.path().join("1_Pooling").join("config.json");
        std::fs::write(
            &cfg,
            r#"{"word_embedding_dimension": 64, "pooling_mode_cls_token": true, "pooling_mode_mean_tokens": false}"#,
        )
        .unwrap();
        let cls = Embedder::load(dir.path(), "test/tiny").unwrap();
        assert_eq!(cls.pooling(), Pooling::Cls);
        let text = ["the cat on the mat".to_string()];
        let a = cls.embed(&text, true).unwrap();
        let b = by_name.embed(&text, true).unwrap();
        assert_eq!(a, b);
        // CLS is not the mean, and padding does not change it either.
        let m = mean.embed(&text, true).unwrap();
        assert!(a[0].iter().zip(&m[0]).any(|(x, y)| (x - y).abs() > 1e-3));
        let batch = cls
            .embed(&[text[0].clone(), "a kitten".into()], true)
            .unwrap();
        for (x, y) in a[0].iter().zip(&batch[0]) {
            assert!((x - y).abs() < 1e-4, "padding changed the vector");
        }
        // The file wins over the name; a broken file is a typed error.
        std::fs::write(&cfg, r#"{"pooling_mode_mean_tokens": true}"#).unwrap();
        let e = Embedder::load(dir.path(), "BAAI/bge-small-en-v1.5").unwrap();
        assert_eq!(e.pooling(), Pooling::Mean);
        std::fs::write(&cfg, "{").unwrap();
        assert!(matches!(
            Embedder::load(dir.path(), "test/tiny"),
            Err(ModelError::Format(_))
        ));
    }

    #[test]
    fn a_missing_or_broken_model_is_a_typed_error() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            Embedder::load(dir.path(), "test/tiny"),
            Err(ModelError::Io(_))
        ));
        std::fs::write(dir.path().join("config.json"), "{ not json").unwrap();
        assert!(matches!(
            Embedder::load(dir.path(), "test/tiny"),
            Err(ModelError::Format(_))
        ));
    }
}
