//! Retrieval over document corpora (M05, `protocol/spec/rag.md`): text
//! extraction, chunking, the persistent corpora and their hybrid index.
//! The `rag.*` capabilities are served by `services::rag`, which obtains
//! embeddings through the bus (`embed.text`).

pub mod chunk;
pub mod extract;
pub mod index;
pub mod store;

use hearthnet_sdk::proto::hearthnet::common::v1::ErrorCode;

use crate::error::CallError;

/// Errors of the RAG store and pipeline.
#[derive(Debug, thiserror::Error)]
pub enum RagError {
    /// The document cannot be read (RAG-012).
    #[error("{0}")]
    Unsupported(String),
    /// A malformed request (filter, corpus name).
    #[error("{0}")]
    BadRequest(String),
    /// The database failed.
    #[error("corpus database: {0}")]
    Db(#[from] fjall::Error),
    /// A file system operation failed.
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
    /// A broken invariant or stored record.
    #[error("{0}")]
    Internal(String),
}

impl From<RagError> for CallError {
    fn from(e: RagError) -> Self {
        match e {
            RagError::Unsupported(m) | RagError::BadRequest(m) => CallError::bad_request(m),
            other => CallError::new(ErrorCode::InternalError, other.to_string()),
        }
    }
}

/// Checks a corpus name against `[a-z0-9-]{1,64}` (RAG-004).
pub fn check_name(name: &str) -> Result<(), RagError> {
    let ok = (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(RagError::BadRequest(format!(
            "corpus name `{}` does not match [a-z0-9-]{{1,64}}",
            name.chars().take(80).collect::<String>()
        )))
    }
}

/// Reads a document and splits it into chunks (RAG-010, RAG-012): the
/// format from `format` (the ingest metadata key) or sniffed.
pub fn prepare(
    bytes: &[u8],
    format: Option<&str>,
) -> Result<(extract::Format, Vec<chunk::Chunk>), RagError> {
    let format = match format {
        Some(f) => extract::Format::parse(f)?,
        None => extract::sniff(bytes),
    };
    let doc = extract::extract(bytes, format)?;
    let chunks = chunk::chunk(&doc)?;
    if chunks.is_empty() {
        return Err(RagError::Unsupported("the document holds no text".into()));
    }
    Ok((format, chunks))
}
