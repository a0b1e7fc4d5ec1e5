//! Helpers for tests that compile small protocol fixtures.
#![allow(dead_code)]

use std::path::PathBuf;

/// The repository root.
pub fn repo() -> PathBuf {
    std::path::PathBuf::from(
        std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into()),
    )
    .join("..")
}

/// The real protocol.
pub fn protocol() -> hearthnet_codegen::Protocol {
    hearthnet_codegen::Protocol::compile(repo().join("protocol/proto")).expect("protocol compiles")
}

/// A temporary protocol folder: `proto/` (the buf module root, passed to
/// `Protocol::compile(dir.path().join("proto"))`) holding our options.proto plus
/// `files`; paths in `files` starting with `../` land beside `proto/`.
pub fn fixture(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    let opts = repo().join("protocol/proto/hearthnet/options/v1/options.proto");
    let dest = dir.path().join("proto/hearthnet/options/v1");
    std::fs::create_dir_all(&dest).expect("mkdir");
    std::fs::copy(opts, dest.join("options.proto")).expect("copy options");
    for (path, text) in files {
        let p = match path.strip_prefix("../") {
            Some(beside) => dir.path().join(beside),
            None => dir.path().join("proto").join(path),
        };
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        std::fs::write(p, text).expect("write");
    }
    dir
}

/// A small documented area with one capability; `extra` lands inside the file.
pub fn area(field_type: &str, streaming: bool, extra: &str) -> String {
    let stream = if streaming { "stream " } else { "" };
    let shape = if streaming {
        "STREAMING_SERVER"
    } else {
        "STREAMING_UNARY"
    };
    format!(
        r#"syntax = "proto3";
// Demo area.
package hearthnet.demo.v1;
import "hearthnet/options/v1/options.proto";
// Demo service.
service DemoService {{
  // Echoes.
  rpc Echo(EchoRequest) returns ({stream}EchoResponse) {{
    option (hearthnet.options.v1.capability) = {{ name: "demo.echo" version: "1.0" stability: STABILITY_BETA min_trust: TRUST_LEVEL_MEMBER }};
  }}
}}
// Kinds.
enum Kind {{
  // Unset.
  KIND_UNSPECIFIED = 0;
  // A.
  KIND_A = 1;
  // B.
  KIND_B = 2;
}}
// Request.
message EchoRequest {{
  // Text.
  {field_type} text = 1;
  // Kind.
  Kind kind = 2;
}}
// Response.
message EchoResponse {{
  // Text.
  string text = 1;
}}
{extra}
"#
    )
    .replace("{stream}", stream)
    .replace("STREAMING_X", shape)
}
