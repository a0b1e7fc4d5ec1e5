//! Sentence embeddings with a BERT encoder on candle (MiniLM by default,
//! bge-small when configured): mean pooling over the attention mask, then
//! optional L2 normalisation.

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config};
use tokenizers::{PaddingParams, Tokenizer, TruncationParams};

use super::ModelError;

/// Longest input in tokens (sentence-transformers' `max_seq_length`).
const MAX_TOKENS: usize = 256;

/// A loaded BERT sentence encoder.
pub struct Embedder {
    model: BertModel,
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
    /// Loads `model.safetensors`, `config.json` and `tokenizer.json` from `dir`.
    pub fn load(dir: &Path) -> Result<Self, ModelError> {
        let device = Device::Cpu;
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
            tokenizer,
            dim,
            device,
        })
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
        // Mean over the real tokens.
        let m = mask.to_dtype(DType::F32)?.unsqueeze(2)?;
        let summed = hidden.broadcast_mul(&m)?.sum(1)?;
        let counts = m.sum(1)?;
        let mut pooled = summed.broadcast_div(&counts)?;
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
        let e = Embedder::load(dir.path()).unwrap();
        assert_eq!(e.dim(), 64);
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
    fn a_missing_or_broken_model_is_a_typed_error() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(Embedder::load(dir.path()), Err(ModelError::Io(_))));
        std::fs::write(dir.path().join("config.json"), "{ not json").unwrap();
        assert!(matches!(
            Embedder::load(dir.path()),
            Err(ModelError::Format(_))
        ));
    }
}
