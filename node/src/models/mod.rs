//! Local models on candle (CPU): the default small models and how they are
//! provisioned, a BERT sentence encoder and a GGUF chat model. Services wrap
//! them as `embed.text` and `llm.chat` / `llm.complete`.

pub mod bert;
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
