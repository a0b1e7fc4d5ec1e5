//! The `hearthnet-codegen` command line, run as a user would.

mod common;

use std::process::Command;

fn cli(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_hearthnet-codegen"))
        .current_dir(common::repo())
        .args(args)
        .output()
        .expect("runs")
}

#[test]
fn export_writes_everything_another_language_needs() {
    let out = tempfile::tempdir().expect("tempdir");
    let o = cli(&["export", "--out", out.path().to_str().expect("utf-8")]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    for f in [
        "descriptor.binpb",
        "registry.json",
        "reference/index.md",
        "reference/errors.md",
        "schemas/hearthnet.embed.v1.EmbedTextRequest.schema.json",
    ] {
        assert!(
            out.path()
                .join(f)
                .metadata()
                .map(|m| m.len() > 0)
                .unwrap_or(false),
            "missing {f}"
        );
    }
    let registry: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.path().join("registry.json")).expect("read"))
            .expect("json");
    assert!(registry["capabilities"].as_array().expect("array").len() >= 10);
}

#[test]
fn validate_reports_json_pointers_and_exit_codes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bad = dir.path().join("bad.json");
    std::fs::write(
        &bad,
        r#"{"params":{"model":7},"input":{"messages":[{"role":"ROLE_ROBOT"}],"extra":1}}"#,
    )
    .expect("write");
    let o = cli(&[
        "validate",
        "--capability",
        "llm.chat",
        "--request",
        bad.to_str().expect("utf-8"),
    ]);
    assert_eq!(o.status.code(), Some(1));
    let text = String::from_utf8_lossy(&o.stdout);
    for p in [
        "/params/model:",
        "/input/messages/0/role:",
        "/input: Additional properties",
    ] {
        assert!(text.contains(p), "{p} not in {text}");
    }
    let good = dir.path().join("good.json");
    std::fs::write(&good, r#"{"token":{"text":"hi"}}"#).expect("write");
    let o = cli(&[
        "validate",
        "--capability",
        "llm.chat",
        "--response",
        good.to_str().expect("utf-8"),
    ]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
    let broken = dir.path().join("broken.json");
    std::fs::write(&broken, "{\n  \"a\": ").expect("write");
    let o = cli(&[
        "validate",
        "--capability",
        "llm.chat",
        "--request",
        broken.to_str().expect("utf-8"),
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("broken.json:2:"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let o = cli(&[
        "validate",
        "--capability",
        "no.such",
        "--request",
        good.to_str().expect("utf-8"),
    ]);
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn breaking_against_itself_is_clean_and_lint_passes() {
    let o = cli(&[
        "breaking",
        "--against",
        "protocol/generated/descriptor.binpb",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stdout));
    let o = cli(&["lint"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stdout));
    let o = cli(&["breaking", "--against", "Cargo.toml"]);
    assert_eq!(
        o.status.code(),
        Some(2),
        "a non-descriptor file is a clear error"
    );
    assert!(String::from_utf8_lossy(&o.stderr).contains("invalid descriptor set"));
}
