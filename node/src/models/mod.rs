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
}
