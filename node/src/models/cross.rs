//! A BERT cross-encoder on candle (`BertForSequenceClassification`
//! layout: `bert.*`, `bert.pooler.dense`, `classifier`), scoring (query,
//! document) pairs for `rerank.text`.

use std::path::Path;

use candle_core::{DType, Device, IndexOp, Tensor};
use candle_nn::{Linear, Module, VarBuilder};
use candle_transformers::models::bert::{BertModel, Config};
use tokenizers::{PaddingParams, Tokenizer, TruncationParams};

use super::ModelError;

/// Longest (query, document) pair in tokens.
const MAX_TOKENS: usize = 512;

/// A loaded cross-encoder.
pub struct CrossEncoder {
    bert: BertModel,
    pooler: Linear,
    classifier: Linear,
    tokenizer: Tokenizer,
    device: Device,
}

impl std::fmt::Debug for CrossEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CrossEncoder").finish_non_exhaustive()
    }
}

impl CrossEncoder {
    /// Loads `model.safetensors`, `config.json` and `tokenizer.json` from `dir`.
    pub fn load(dir: &Path) -> Result<Self, ModelError> {
        let device = Device::Cpu;
        let config: Config = serde_json::from_slice(&std::fs::read(dir.join("config.json"))?)
            .map_err(|e| ModelError::Format(format!("config.json: {e}")))?;
        let weights = std::fs::read(dir.join("model.safetensors"))?;
        let vb = VarBuilder::from_buffered_safetensors(weights, DType::F32, &device)?;
        let bert = BertModel::load(vb.pp("bert"), &config)?;
        let h = config.hidden_size;
        let pooler = candle_nn::linear(h, h, vb.pp("bert.pooler.dense"))?;
        let classifier = candle_nn::linear(h, 1, vb.pp("classifier"))?;
        let mut tokenizer = Tokenizer::from_file(dir.join("tokenizer.json"))
            .map_err(|e| ModelError::Format(format!("tokenizer.json: {e}")))?;
        tokenizer.with_padding(Some(PaddingParams::default()));
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: MAX_TOKENS,
                ..Default::default()
            }))
            .map_err(|e| ModelError::Format(format!("truncation: {e}")))?;
        Ok(Self {
            bert,
            pooler,
            classifier,
            tokenizer,
            device,
        })
    }

    /// One relevance logit per document (higher is more relevant); also
    /// how many pairs were cut at the token limit.
    pub fn score(&self, query: &str, docs: &[String]) -> Result<(Vec<f32>, u32), ModelError> {
        if docs.is_empty() {
            return Ok((Vec::new(), 0));
        }
        let pairs: Vec<(String, String)> = docs
            .iter()
            .map(|d| (query.to_string(), d.clone()))
            .collect();
        let enc = self
            .tokenizer
            .encode_batch(pairs, true)
            .map_err(|e| ModelError::Format(format!("tokenizing: {e}")))?;
        let truncated = enc
            .iter()
            .filter(|e| !e.get_overflowing().is_empty())
            .count() as u32;
        let ids: Vec<Tensor> = enc
            .iter()
            .map(|e| Tensor::new(e.get_ids(), &self.device))
            .collect::<Result<_, _>>()?;
        let types: Vec<Tensor> = enc
            .iter()
            .map(|e| Tensor::new(e.get_type_ids(), &self.device))
            .collect::<Result<_, _>>()?;
        let masks: Vec<Tensor> = enc
            .iter()
            .map(|e| Tensor::new(e.get_attention_mask(), &self.device))
            .collect::<Result<_, _>>()?;
        let (ids, types, mask) = (
            Tensor::stack(&ids, 0)?,
            Tensor::stack(&types, 0)?,
            Tensor::stack(&masks, 0)?,
        );
        let hidden = self.bert.forward(&ids, &types, Some(&mask))?;
        let cls = hidden.i((.., 0, ..))?;
        let pooled = self.pooler.forward(&cls)?.tanh()?;
        let logits = self.classifier.forward(&pooled)?.squeeze(1)?;
        Ok((logits.to_vec1::<f32>()?, truncated))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_cross_encoder_scores_each_pair_on_its_own() {
        let dir = tempfile::tempdir().unwrap();
        crate::models::fixtures::tiny_bert(dir.path(), true);
        let c = CrossEncoder::load(dir.path()).unwrap();
        let docs: Vec<String> = ["the cat on a mat", "stock market", "bread"]
            .map(String::from)
            .to_vec();
        let (all, truncated) = c.score("a kitten", &docs).unwrap();
        assert_eq!((all.len(), truncated), (3, 0));
        // A pair's score does not depend on the other pairs of the batch.
        for (i, d) in docs.iter().enumerate() {
            let (one, _) = c.score("a kitten", std::slice::from_ref(d)).unwrap();
            assert!((one[0] - all[i]).abs() < 1e-4, "{} vs {}", one[0], all[i]);
        }
        assert!(c.score("a kitten", &[]).unwrap().0.is_empty());
        // Not a cross-encoder: the classifier is missing.
        let plain = tempfile::tempdir().unwrap();
        crate::models::fixtures::tiny_bert(plain.path(), false);
        assert!(CrossEncoder::load(plain.path()).is_err());
    }
}
