//! Builds the clause catalogue (every `- [ABC-123]` definition in
//! `protocol/spec/*.md`) and embeds the case files under `cases/`, so the
//! runner is one self-contained binary.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

fn main() {
    let manifest = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("set by cargo"));
    let spec = manifest.join("../protocol/spec");
    let cases = manifest.join("cases");
    println!("cargo:rerun-if-changed={}", spec.display());
    println!("cargo:rerun-if-changed={}", cases.display());

    let mut clauses: Vec<(String, String)> = Vec::new();
    let mut files: Vec<PathBuf> = read_dir(&spec, "md");
    files.sort();
    for f in &files {
        println!("cargo:rerun-if-changed={}", f.display());
        let text = std::fs::read_to_string(f).expect("spec file readable");
        let name = f.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        for line in text.lines() {
            let Some(rest) = line.trim_start().strip_prefix("- [") else {
                continue;
            };
            let Some(end) = rest.find(']') else { continue };
            let id = &rest[..end];
            if is_clause_id(id) {
                clauses.push((id.to_string(), name.to_string()));
            }
        }
    }
    let mut src = String::from(
        "/// Every clause defined in `protocol/spec/`, with its file.\npub static CLAUSES: &[(&str, &str)] = &[\n",
    );
    for (id, file) in &clauses {
        let _ = writeln!(src, "    ({id:?}, {file:?}),");
    }
    src.push_str("];\n\n/// The case files, by path under `cases/`.\npub static CASE_FILES: &[(&str, &str)] = &[\n");
    let mut case_files = Vec::new();
    collect(&cases, &mut case_files);
    case_files.sort();
    for f in &case_files {
        println!("cargo:rerun-if-changed={}", f.display());
        let rel = f.strip_prefix(&cases).expect("under cases/");
        let _ = writeln!(
            src,
            "    ({:?}, include_str!({:?})),",
            rel.display().to_string(),
            f.display().to_string()
        );
    }
    src.push_str("];\n");
    std::fs::write(out.join("catalogue.rs"), src).expect("OUT_DIR writable");
}

fn is_clause_id(id: &str) -> bool {
    let Some((prefix, num)) = id.rsplit_once('-') else {
        return false;
    };
    !prefix.is_empty()
        && prefix
            .chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit())
        && num.len() == 3
        && num.chars().all(|c| c.is_ascii_digit())
}

fn read_dir(dir: &Path, ext: &str) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|e| e == ext))
                .collect()
        })
        .unwrap_or_default()
}

fn collect(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.filter_map(Result::ok) {
        let p = e.path();
        if p.is_dir() {
            collect(&p, out);
        } else if p.extension().is_some_and(|e| e == "toml") {
            out.push(p);
        }
    }
}
