//! # hearthnet-codegen
//!
//! Turns the HearthNet protobuf definitions in `protocol/proto/` into everything
//! an implementation needs: Rust types and gRPC services (prost, tonic, pbjson),
//! the capability registry, JSON Schemas (draft 2020-12) derived from the
//! descriptors, Markdown reference docs and the descriptor set itself.
//!
//! ```no_run
//! let protocol = hearthnet_codegen::Protocol::compile("protocol/proto")?;
//! for cap in protocol.capabilities() {
//!     println!("{}@{} -> {}", cap.name, cap.version, cap.schema_hash);
//! }
//! # Ok::<(), hearthnet_codegen::Error>(())
//! ```
//!
//! The library is used by `sdk/build.rs` (Rust into `OUT_DIR`) and by the
//! `hearthnet-codegen` CLI (`export`, `generate`, `lint`, `breaking`,
//! `validate`). Custom options are read from the encoded descriptor set through
//! prost-reflect, because `prost_types::FileDescriptorSet` drops extension
//! values.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use prost_reflect::DescriptorPool;

pub mod breaking;
pub mod constants;
pub mod coverage;
pub mod docs;
pub mod lint;
pub mod registry;
pub mod rust;
pub mod schema;

pub use registry::{Capability, ErrorCodeInfo, EventType};

/// Errors of the code generator. Source errors name file, line and column.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A `.proto` file does not parse or does not type-check.
    #[error("{location}: {message}")]
    Proto {
        /// `file:line:column` of the problem (or just the file when unknown).
        location: String,
        /// What is wrong.
        message: String,
    },
    /// The protocol's options are inconsistent (for example an unknown error code).
    #[error("{location}: {message}")]
    Options {
        /// The element (`package.Service.Method`) at fault.
        location: String,
        /// What is wrong.
        message: String,
    },
    /// A descriptor set could not be decoded.
    #[error("invalid descriptor set: {0}")]
    Descriptor(String),
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// Rust code generation (prost, tonic, pbjson) failed.
    #[error("rust generation: {0}")]
    Rust(String),
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}

/// A compiled protocol: the descriptor pool plus its encoded descriptor set.
#[derive(Debug, Clone)]
pub struct Protocol {
    pool: DescriptorPool,
    fds: Vec<u8>,
    constants: Vec<constants::Constant>,
    coverage: Vec<coverage::Entry>,
}

/// Root package prefix of everything HearthNet defines.
pub const PACKAGE_PREFIX: &str = "hearthnet.";

impl Protocol {
    /// Compiles every `.proto` file under `root` (the buf module root, e.g.
    /// `protocol/proto`) with protox.
    pub fn compile(root: impl AsRef<Path>) -> Result<Self, Error> {
        let root = root.as_ref();
        let mut files = Vec::new();
        collect_protos(root, root, &mut files)?;
        files.sort();
        if files.is_empty() {
            return Err(Error::Proto {
                location: root.display().to_string(),
                message: "no .proto files found".into(),
            });
        }
        let mut compiler = protox::Compiler::new([root]).map_err(|e| proto_error(root, &e))?;
        compiler.include_imports(true).include_source_info(true);
        for f in &files {
            compiler.open_file(f).map_err(|e| proto_error(root, &e))?;
        }
        let fds = compiler.encode_file_descriptor_set();
        let pool = compiler.descriptor_pool();
        // `constants.json` and `coverage.json` sit beside the buf module root (`protocol/`).
        let (constants, coverage) = match root.parent() {
            Some(dir) => (
                constants::load(&dir.join("constants.json"))?,
                coverage::load(&dir.join("coverage.json"))?,
            ),
            None => (Vec::new(), Vec::new()),
        };
        let protocol = Protocol {
            pool,
            fds,
            constants,
            coverage,
        };
        protocol.check_options()?;
        Ok(protocol)
    }

    /// Loads a protocol from an encoded `FileDescriptorSet` (as written by `export`).
    pub fn from_descriptor_set(bytes: &[u8]) -> Result<Self, Error> {
        let pool = DescriptorPool::decode(bytes).map_err(|e| Error::Descriptor(e.to_string()))?;
        Ok(Protocol {
            pool,
            fds: bytes.to_vec(),
            constants: Vec::new(),
            coverage: Vec::new(),
        })
    }

    /// The descriptor pool, with custom options readable.
    pub fn pool(&self) -> &DescriptorPool {
        &self.pool
    }

    /// The encoded `FileDescriptorSet` (imports and source info included).
    pub fn descriptor_set(&self) -> &[u8] {
        &self.fds
    }

    /// `blake3:` + hex of the descriptor set; identifies a protocol build.
    pub fn descriptor_hash(&self) -> String {
        format!("blake3:{}", blake3::hash(&self.fds).to_hex())
    }

    /// The protocol constants (empty when built from a descriptor set).
    pub fn constants(&self) -> &[constants::Constant] {
        &self.constants
    }

    /// The seed-coverage table (empty when built from a descriptor set).
    pub fn coverage(&self) -> &[coverage::Entry] {
        &self.coverage
    }

    /// Every capability, sorted by name.
    pub fn capabilities(&self) -> Vec<Capability> {
        registry::capabilities(self)
    }

    /// Every event type, sorted by type.
    pub fn events(&self) -> Vec<EventType> {
        registry::events(self)
    }

    /// Every error code, in enum order.
    pub fn error_codes(&self) -> Vec<ErrorCodeInfo> {
        registry::error_codes(self)
    }

    /// HearthNet messages (map entries excluded), sorted by full name.
    pub fn messages(&self) -> Vec<prost_reflect::MessageDescriptor> {
        let mut v: Vec<_> = self
            .pool
            .all_messages()
            .filter(|m| m.full_name().starts_with(PACKAGE_PREFIX) && !m.is_map_entry())
            .collect();
        v.sort_by(|a, b| a.full_name().cmp(b.full_name()));
        v
    }

    /// The JSON Schema of one message, with or without doc comments.
    pub fn schema(&self, full_name: &str, with_docs: bool) -> Option<serde_json::Value> {
        let msg = self.pool.get_message_by_name(full_name)?;
        Some(schema::root_schema(&msg, with_docs))
    }

    /// Every published artefact, keyed by its path relative to an export
    /// directory: `descriptor.binpb`, `registry.json`, `schemas/…`, `reference/…`.
    pub fn artefacts(&self) -> BTreeMap<String, Vec<u8>> {
        let mut out = BTreeMap::new();
        out.insert("descriptor.binpb".to_owned(), self.fds.clone());
        out.insert(
            "registry.json".to_owned(),
            registry::registry_json(self).into_bytes(),
        );
        for msg in self.messages() {
            let s = schema::root_schema(&msg, true);
            out.insert(
                format!("schemas/{}.schema.json", msg.full_name()),
                pretty(&s).into_bytes(),
            );
        }
        for (path, text) in docs::reference(self) {
            out.insert(format!("reference/{path}"), text.into_bytes());
        }
        out
    }

    fn check_options(&self) -> Result<(), Error> {
        registry::check(self)
    }
}

/// Where each export artefact lives in the repository (checked in): everything
/// under `protocol/generated/`, except the reference docs, which go to
/// `docs/reference/`.
pub fn repo_path(artefact: &str) -> String {
    match artefact.strip_prefix("reference/") {
        Some(rest) => format!("docs/reference/{rest}"),
        None => format!("protocol/generated/{artefact}"),
    }
}

/// Pretty JSON with a trailing newline.
pub fn pretty(v: &serde_json::Value) -> String {
    let mut s = serde_json::to_string_pretty(v).unwrap_or_default();
    s.push('\n');
    s
}

fn collect_protos(root: &Path, dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), Error> {
    let entries = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        let path = entry.path();
        if path.is_dir() {
            collect_protos(root, &path, out)?;
        } else if path.extension().is_some_and(|e| e == "proto") {
            let rel = path.strip_prefix(root).unwrap_or(&path).to_path_buf();
            out.push(rel);
        }
    }
    Ok(())
}

/// Converts a protox error into one that names `file:line:column`.
fn proto_error(root: &Path, e: &protox::Error) -> Error {
    use miette::Diagnostic;
    let file = e.file().map(str::to_owned);
    let offset = e.labels().and_then(|mut l| l.next()).map(|l| l.offset());
    let location = match (&file, offset) {
        (Some(f), Some(off)) => {
            let text = std::fs::read_to_string(root.join(f)).unwrap_or_default();
            let (line, col) = line_col(&text, off);
            format!("{}:{line}:{col}", root.join(f).display())
        }
        (Some(f), None) => root.join(f).display().to_string(),
        _ => root.display().to_string(),
    };
    Error::Proto {
        location,
        message: e.to_string(),
    }
}

/// 1-based line and column of a byte offset.
pub(crate) fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

/// Leading comment of a descriptor element, trimmed.
pub(crate) fn comment(file: &prost_reflect::FileDescriptor, path: &[i32]) -> String {
    let Some(info) = &file.file_descriptor_proto().source_code_info else {
        return String::new();
    };
    info.location
        .iter()
        .find(|l| l.path == path)
        .and_then(|l| l.leading_comments.as_deref())
        .map(|c| {
            c.lines()
                .map(str::trim)
                .collect::<Vec<_>>()
                .join("\n")
                .trim()
                .to_owned()
        })
        .unwrap_or_default()
}

/// `file:line:column` of a descriptor element, when source info is present.
pub(crate) fn location(file: &prost_reflect::FileDescriptor, path: &[i32]) -> String {
    let span = file
        .file_descriptor_proto()
        .source_code_info
        .as_ref()
        .and_then(|i| i.location.iter().find(|l| l.path == path))
        .map(|l| l.span.clone());
    match span {
        Some(s) if s.len() >= 2 => format!("{}:{}:{}", file.name(), s[0] + 1, s[1] + 1),
        _ => file.name().to_owned(),
    }
}

/// The command that regenerates the checked-in artefacts.
pub const REGENERATE: &str = "cargo run -p hearthnet-codegen -- generate";

/// Directories (relative to the repository root) that hold only generated files.
pub const GENERATED_DIRS: &[&str] = &["protocol/generated", "docs/reference"];

/// Compares the checked-in artefacts under `repo` with what the generator
/// produces; returns one line per drifted, missing or stale file.
pub fn drift(p: &Protocol, repo: &Path) -> Vec<String> {
    let mut problems = Vec::new();
    let expected: BTreeMap<String, Vec<u8>> = p
        .artefacts()
        .into_iter()
        .map(|(k, v)| (repo_path(&k), v))
        .collect();
    for (path, bytes) in &expected {
        match std::fs::read(repo.join(path)) {
            Ok(have) if &have == bytes => {}
            Ok(_) => problems.push(format!("{path}: differs from the generator's output")),
            Err(_) => problems.push(format!("{path}: missing")),
        }
    }
    for dir in GENERATED_DIRS {
        let mut files = Vec::new();
        let _ = collect_all(&repo.join(dir), &mut files);
        for f in files {
            let rel = f
                .strip_prefix(repo)
                .unwrap_or(&f)
                .to_string_lossy()
                .replace('\\', "/");
            if !expected.contains_key(&rel) {
                problems.push(format!(
                    "{rel}: stale (the generator no longer produces it)"
                ));
            }
        }
    }
    problems
}

/// Writes the artefacts into their repository places, removing stale files.
pub fn write_repo(p: &Protocol, repo: &Path) -> Result<usize, Error> {
    for dir in GENERATED_DIRS {
        let d = repo.join(dir);
        if d.exists() {
            std::fs::remove_dir_all(&d).map_err(|e| Error::io(&d, e))?;
        }
    }
    write_tree(p, repo, repo_path)
}

/// Writes the artefacts under `out` in the export layout.
pub fn export(p: &Protocol, out: &Path) -> Result<usize, Error> {
    write_tree(p, out, |a| a.to_owned())
}

fn write_tree(p: &Protocol, base: &Path, map: impl Fn(&str) -> String) -> Result<usize, Error> {
    let arts = p.artefacts();
    for (name, bytes) in &arts {
        let path = base.join(map(name));
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
        }
        std::fs::write(&path, bytes).map_err(|e| Error::io(&path, e))?;
    }
    Ok(arts.len())
}

fn collect_all(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            collect_all(&path, out)?;
        } else {
            out.push(path);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_col_counts_from_one() {
        assert_eq!(line_col("ab\ncd", 0), (1, 1));
        assert_eq!(line_col("ab\ncd", 4), (2, 2));
    }

    #[test]
    fn repo_paths() {
        assert_eq!(repo_path("reference/errors.md"), "docs/reference/errors.md");
        assert_eq!(
            repo_path("registry.json"),
            "protocol/generated/registry.json"
        );
    }
}
