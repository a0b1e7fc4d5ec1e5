//! Text extraction for `rag.ingest` (RAG-012): PDF with a text layer (by
//! page), HTML (visible text, scripts and styles dropped), Markdown and
//! UTF-8 plain text.
//!
//! The format comes from the ingest metadata key `format` (`pdf`, `html`,
//! `markdown`/`md`, `text`/`txt`) when present, otherwise from the content:
//! `%PDF-` → PDF; a leading `<!doctype html`, `<html`, `<head` or `<body`
//! → HTML; Markdown headings, lists, fences or tables → Markdown; any other
//! UTF-8 → text.

use super::RagError;

/// A document format the ingester reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// PDF with a text layer.
    Pdf,
    /// An HTML page.
    Html,
    /// Markdown.
    Markdown,
    /// UTF-8 plain text.
    Text,
}

impl Format {
    /// Name used in logs and metadata.
    pub fn name(self) -> &'static str {
        match self {
            Self::Pdf => "pdf",
            Self::Html => "html",
            Self::Markdown => "markdown",
            Self::Text => "text",
        }
    }

    /// Parses the `format` metadata value.
    pub fn parse(s: &str) -> Result<Self, RagError> {
        Ok(match s.to_ascii_lowercase().as_str() {
            "pdf" | "application/pdf" => Self::Pdf,
            "html" | "htm" | "text/html" => Self::Html,
            "markdown" | "md" | "text/markdown" => Self::Markdown,
            "text" | "txt" | "text/plain" => Self::Text,
            other => {
                return Err(RagError::Unsupported(format!(
                    "format `{other}` is not one of pdf, html, markdown, text"
                )));
            }
        })
    }
}

/// Guesses the format of `bytes`.
pub fn sniff(bytes: &[u8]) -> Format {
    if bytes.starts_with(b"%PDF-") {
        return Format::Pdf;
    }
    let head: String = String::from_utf8_lossy(&bytes[..bytes.len().min(1024)])
        .trim_start_matches('\u{feff}')
        .trim_start()
        .chars()
        .take(16)
        .collect::<String>()
        .to_ascii_lowercase();
    if ["<!doctype html", "<html", "<head", "<body", "<!--"]
        .iter()
        .any(|p| head.starts_with(p))
    {
        return Format::Html;
    }
    let text = String::from_utf8_lossy(&bytes[..bytes.len().min(64 * 1024)]);
    let markdown_lines = text
        .lines()
        .filter(|l| {
            let t = l.trim_start();
            t.starts_with("# ")
                || t.starts_with("## ")
                || t.starts_with("### ")
                || t.starts_with("```")
                || (t.starts_with('|') && t.ends_with('|'))
        })
        .count();
    if markdown_lines > 0 {
        Format::Markdown
    } else {
        Format::Text
    }
}

/// Extracted text: one entry per page (one page for formats without
/// pages).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Extracted {
    /// The format read.
    pub format: Format,
    /// Text of each page, in order.
    pub pages: Vec<String>,
}

/// Extracts the text of a document.
pub fn extract(bytes: &[u8], format: Format) -> Result<Extracted, RagError> {
    let pages = match format {
        Format::Pdf => pdf_pages(bytes)?,
        Format::Html => {
            let text = html2text::config::plain_no_decorate()
                .string_from_read(bytes, 100_000)
                .map_err(|e| RagError::Unsupported(format!("HTML does not parse: {e}")))?;
            vec![tidy(&text)]
        }
        Format::Markdown | Format::Text => {
            let text = std::str::from_utf8(bytes).map_err(|e| {
                RagError::Unsupported(format!(
                    "the document is neither PDF, HTML nor UTF-8 text (byte {} is not UTF-8)",
                    e.valid_up_to()
                ))
            })?;
            vec![text.trim_start_matches('\u{feff}').replace("\r\n", "\n")]
        }
    };
    if pages.iter().all(|p| p.trim().is_empty()) {
        return Err(match format {
            Format::Pdf => RagError::Unsupported(
                "the PDF has no text layer (a scan?): run it through `ocr.pdf` with `store_text` and ingest the text blob"
                    .into(),
            ),
            _ => RagError::Unsupported("the document holds no text".into()),
        });
    }
    Ok(Extracted { format, pages })
}

/// The text of each page of a PDF. The parser runs under `catch_unwind`:
/// a malformed file is a `bad_request`, never a crash.
fn pdf_pages(bytes: &[u8]) -> Result<Vec<String>, RagError> {
    let owned = bytes.to_vec();
    let result =
        std::panic::catch_unwind(move || pdf_extract::extract_text_from_mem_by_pages(&owned));
    match result {
        Ok(Ok(pages)) => Ok(pages.iter().map(|p| tidy(p)).collect()),
        Ok(Err(e)) => Err(RagError::Unsupported(format!(
            "the PDF does not parse: {e}"
        ))),
        Err(_) => Err(RagError::Unsupported(
            "the PDF does not parse (the parser gave up on its structure)".into(),
        )),
    }
}

/// Trims trailing spaces and collapses runs of more than one blank line.
fn tidy(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut blank = 0;
    for line in text.lines() {
        let line = line.trim_end();
        if line.trim().is_empty() {
            blank += 1;
            if blank > 1 {
                continue;
            }
        } else {
            blank = 0;
        }
        out.push_str(line);
        out.push('\n');
    }
    out.trim().to_string()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn sniffs_formats() {
        assert_eq!(sniff(b"%PDF-1.4\n..."), Format::Pdf);
        assert_eq!(sniff(b"  <!DOCTYPE html><html></html>"), Format::Html);
        assert_eq!(sniff(b"# Title\n\nSome text."), Format::Markdown);
        assert_eq!(sniff(b"Just words.\nMore words."), Format::Text);
        assert_eq!(Format::parse("MD").unwrap(), Format::Markdown);
        assert!(Format::parse("docx").is_err());
    }

    #[test]
    fn html_drops_scripts_and_styles() {
        let page = b"<!doctype html><html><head><title>T</title><style>p{color:red}</style>\
            <script>var secret = 1;</script></head><body><p>Hello neighbours.</p>\
            <ul><li>one</li><li>two</li></ul></body></html>";
        let e = extract(page, Format::Html).unwrap();
        let text = &e.pages[0];
        assert!(text.contains("Hello neighbours."), "{text}");
        assert!(text.contains("one") && text.contains("two"), "{text}");
        assert!(
            !text.contains("secret") && !text.contains("color"),
            "{text}"
        );
    }

    #[test]
    fn bad_documents_are_refused() {
        assert!(matches!(
            extract(&[0xff, 0xfe, 0x00, 0x80], Format::Text),
            Err(RagError::Unsupported(_))
        ));
        assert!(matches!(
            extract(b"   \n\n  ", Format::Text),
            Err(RagError::Unsupported(_))
        ));
        // Truncated and garbage PDFs are errors, not panics.
        assert!(extract(b"%PDF-1.4\n1 0 obj << /Type /Catalog", Format::Pdf).is_err());
        assert!(extract(b"%PDF-1.7\n\x00\x01\x02garbage", Format::Pdf).is_err());
    }
}
