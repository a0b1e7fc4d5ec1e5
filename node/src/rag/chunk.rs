//! Chunking (RAG-010): windows of about [`CHUNK_TOKENS`] tokens with
//! [`OVERLAP_TOKENS`] of overlap, broken at paragraph, then sentence, then
//! word boundaries (the `text-splitter` crate; Markdown is split at its own
//! structure first: headings, blocks, then the same levels). Chunks carry
//! the page they start on and ids `ch_001`, `ch_002`… unique within their
//! document (RAG-011).
//!
//! Tokens are estimated, not counted by a model's tokenizer: the provider
//! embeds through the bus and may not hold the tokenizer. The estimate is
//! 4/3 of the whitespace-separated words (about one token per
//! 0.75 English words).

use text_splitter::{ChunkConfig, ChunkSizer, MarkdownSplitter, TextSplitter};

use super::RagError;
use super::extract::{Extracted, Format};

/// Target chunk size in (estimated) tokens.
pub const CHUNK_TOKENS: usize = 1000;
/// Overlap between consecutive chunks in (estimated) tokens.
pub const OVERLAP_TOKENS: usize = 200;

/// The token estimate used for chunk sizes and `tokens_indexed`.
pub fn estimate_tokens(text: &str) -> usize {
    (text.split_whitespace().count() * 4).div_ceil(3)
}

#[derive(Debug, Clone, Copy)]
struct Estimate;

impl ChunkSizer for Estimate {
    fn size(&self, chunk: &str) -> usize {
        estimate_tokens(chunk)
    }
}

/// One chunk of a document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    /// `ch_001`, `ch_002`…
    pub id: String,
    /// The page the chunk starts on, from 1.
    pub page: u32,
    /// The chunk's text.
    pub text: String,
    /// Its estimated tokens.
    pub tokens: u32,
}

/// Splits extracted text into chunks of about `capacity` tokens with
/// `overlap` tokens of overlap.
pub fn chunk_with(
    doc: &Extracted,
    capacity: usize,
    overlap: usize,
) -> Result<Vec<Chunk>, RagError> {
    let config = ChunkConfig::new(capacity)
        .with_overlap(overlap)
        .map_err(|e| RagError::Internal(format!("chunk settings: {e}")))?
        .with_sizer(Estimate);
    // Pages joined by blank lines; each page's start offset remembered.
    let mut text = String::new();
    let mut starts = Vec::with_capacity(doc.pages.len());
    for p in &doc.pages {
        if !text.is_empty() {
            text.push_str("\n\n");
        }
        starts.push(text.len());
        text.push_str(p);
    }
    let pieces: Vec<(usize, &str)> = match doc.format {
        Format::Markdown => MarkdownSplitter::new(config).chunk_indices(&text).collect(),
        _ => TextSplitter::new(config).chunk_indices(&text).collect(),
    };
    Ok(pieces
        .into_iter()
        .filter(|(_, t)| !t.trim().is_empty())
        .enumerate()
        .map(|(i, (offset, t))| Chunk {
            id: format!("ch_{:03}", i + 1),
            page: starts.partition_point(|s| *s <= offset).max(1) as u32,
            text: t.to_string(),
            tokens: estimate_tokens(t) as u32,
        })
        .collect())
}

/// Splits with the defaults of RAG-010.
pub fn chunk(doc: &Extracted) -> Result<Vec<Chunk>, RagError> {
    chunk_with(doc, CHUNK_TOKENS, OVERLAP_TOKENS)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn words(n: usize, tag: &str) -> String {
        (0..n)
            .map(|i| format!("{tag}{i}"))
            .collect::<Vec<_>>()
            .join(" ")
    }

    #[test]
    fn windows_overlap_and_stay_within_the_size() {
        // 3,000 words in sentences of 10 and paragraphs of 100.
        let mut text = String::new();
        for p in 0..30 {
            for s in 0..10 {
                text.push_str(&words(10, &format!("w{p}_{s}_")));
                text.push_str(". ");
            }
            text.push_str("\n\n");
        }
        let doc = Extracted {
            format: Format::Text,
            pages: vec![text],
        };
        let chunks = chunk(&doc).unwrap();
        assert!(chunks.len() >= 4, "{} chunks", chunks.len());
        for c in &chunks {
            assert!(c.tokens as usize <= CHUNK_TOKENS, "{} tokens", c.tokens);
        }
        // Consecutive chunks share text (the overlap).
        let first_tail: Vec<&str> = chunks[0].text.split_whitespace().rev().take(20).collect();
        assert!(
            first_tail.iter().any(|w| chunks[1].text.contains(w)),
            "no overlap between chunk 1 and 2"
        );
        // Ids unique and ordered (RAG-011).
        let ids: Vec<&str> = chunks.iter().map(|c| c.id.as_str()).collect();
        assert_eq!(ids[0], "ch_001");
        let mut sorted = ids.clone();
        sorted.dedup();
        assert_eq!(sorted.len(), ids.len());
    }

    #[test]
    fn pages_are_kept() {
        let doc = Extracted {
            format: Format::Text,
            pages: vec![words(700, "a"), words(700, "b"), words(700, "c")],
        };
        let chunks = chunk_with(&doc, 300, 50).unwrap();
        assert_eq!(chunks[0].page, 1);
        let last = chunks.last().unwrap();
        assert_eq!(last.page, 3, "{last:?}");
        // A chunk that starts with a `b` word starts on page 2.
        let on_b = chunks.iter().find(|c| c.text.starts_with("b")).unwrap();
        assert_eq!(on_b.page, 2);
    }
}
