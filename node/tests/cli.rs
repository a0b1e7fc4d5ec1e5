//! The `hearthnet` command end to end: init, run, call (with exit codes),
//! caps, trace, doctor, config check, and SIGTERM finishing an in-flight call.

#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_hearthnet");

fn cmd(home: &Path) -> Command {
    let mut c = Command::new(BIN);
    c.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", home)
        .env("HEARTHNET_DATA_DIR", home.join("data"))
        .env("HEARTHNET_CONFIG_DIR", home.join("config"))
        .env("HEARTHNET_CACHE_DIR", home.join("cache"));
    c
}

fn run(c: &mut Command) -> Output {
    c.output().unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).to_string()
}

/// Starts `hearthnet run` on a free loopback port; returns the child and its URL.
fn start(home: &Path) -> (Child, String) {
    start_with(home, &[])
}

/// [`start`] with extra environment (later entries win).
fn start_with(home: &Path, env: &[(&str, String)]) -> (Child, String) {
    let mut child = cmd(home)
        .args(["run"])
        .env("HEARTHNET__TRANSPORT__HOST", "127.0.0.1")
        .env("HEARTHNET__TRANSPORT__PORT", "0")
        .env("HEARTHNET__DISCOVERY__MDNS_ENABLED", "false")
        .env("HEARTHNET__DISCOVERY__UDP_ENABLED", "false")
        .env("HEARTHNET__EMERGENCY__ENABLED", "false")
        .env("HEARTHNET__MODELS__ENABLED", "false")
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let url = line
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .unwrap_or_else(|| panic!("no URL in {line:?}"))
        .to_string();
    (child, url)
}

#[test]
fn init_run_call_and_exit_codes() {
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    let out = run(cmd(h).args(["init", "--name", "test-node"]));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("node id   ed25519:"), "{stdout}");
    let cfg = h.join("config/config.toml");
    assert!(cfg.exists());
    assert!(
        std::fs::read_to_string(&cfg)
            .unwrap()
            .contains("display_name = \"test-node\"")
    );

    let (mut node, url) = start(h);
    let call = |args: &[&str]| {
        let mut c = cmd(h);
        c.arg("call").args(args).args(["--node", &url]);
        run(&mut c)
    };

    let out = call(&["protocol.version.list"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains(hearthnet_sdk::PROTOCOL_VERSION));

    let out = call(&["diag.echo.stream", r#"{"input":{"text":"x","repeat":3}}"#]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(text(&out.stdout).lines().count(), 3);

    // Exit codes from wire errors (decision 0041).
    let out = call(&["no.such"]);
    assert_eq!(out.status.code(), Some(6), "not_found");
    assert!(text(&out.stderr).contains("\"code\":\"not_found\""));
    let out = call(&["diag.echo", r#"{"input":{"nope":1}}"#]);
    assert_eq!(out.status.code(), Some(7), "bad_request");
    let out = call(&["diag.echo@3.0"]);
    assert_eq!(out.status.code(), Some(7), "schema_mismatch");
    let out = call(&["diag.echo", r#"{"input":{"failWith":"rate_limited"}}"#]);
    assert_eq!(out.status.code(), Some(5), "rate_limited");
    let out = call(&["diag.echo", r#"{"input":{"failWith":"timeout"}}"#]);
    assert_eq!(out.status.code(), Some(8), "timeout");
    let out = call(&["diag.echo", r#"{"input":{"failWith":"unauthorized"}}"#]);
    assert_eq!(out.status.code(), Some(4), "unauthorized");
    let out = call(&["diag.echo", "not json"]);
    assert_eq!(out.status.code(), Some(2), "usage");

    let out = run(cmd(h).args(["caps", "--node", &url]));
    assert_eq!(out.status.code(), Some(0));
    assert!(text(&out.stdout).contains("protocol.version.list"));

    let out = run(cmd(h).args(["trace", "5", "--node", &url]));
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        text(&out.stdout).lines().count(),
        5,
        "{}",
        text(&out.stdout)
    );

    let out = run(cmd(h).args(["peers", "--node", &url]));
    assert_eq!(out.status.code(), Some(0));
    assert!(text(&out.stdout).contains("no peers"));

    // SIGTERM while a stream is in flight: the call still completes.
    let mut streaming = cmd(h)
        .args([
            "call",
            "diag.echo.stream",
            r#"{"input":{"text":"s","repeat":4,"intervalMs":300}}"#,
            "--node",
            &url,
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut reader = BufReader::new(streaming.stdout.take().unwrap());
    let mut first = String::new();
    reader.read_line(&mut first).unwrap();
    assert!(first.contains("\"text\":\"s\""), "{first}");
    let kill = Command::new("kill")
        .args(["-TERM", &node.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut reader, &mut rest).unwrap();
    assert_eq!(rest.lines().count(), 3, "remaining frames: {rest}");
    assert_eq!(streaming.wait().unwrap().code(), Some(0));
    assert_eq!(node.wait().unwrap().code(), Some(0), "node exits cleanly");

    // No node any more: exit 3.
    let out = call(&["protocol.version.list"]);
    assert_eq!(out.status.code(), Some(3));
}

#[test]
fn config_errors_name_file_line_and_key() {
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    let cfg = h.join("bad.toml");
    std::fs::write(
        &cfg,
        "[transport]\nport = 7080\n\n[bus]\nlocal_load_threshold = 3\n",
    )
    .unwrap();
    let out = run(cmd(h).args(["config", "check", "--config"]).arg(&cfg));
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(
        err.contains("bad.toml:5: bus.local_load_threshold"),
        "{err}"
    );

    std::fs::write(&cfg, "[transport]\nport = \"x\"\n").unwrap();
    let out = run(cmd(h).args(["config", "check", "--config"]).arg(&cfg));
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(
        err.contains("bad.toml:2:") && err.contains("transport.port"),
        "{err}"
    );

    std::fs::write(&cfg, "[transport]\nport = 7099\n").unwrap();
    let out = run(cmd(h).args(["config", "check", "--config"]).arg(&cfg));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let out = run(cmd(h)
        .args(["config", "show", "--config"])
        .arg(&cfg)
        .env("HEARTHNET__BUS__PREFER_LOCAL", "false"));
    let shown = text(&out.stdout);
    assert!(
        shown.contains("port = 7099") && shown.contains("prefer_local = false"),
        "{shown}"
    );

    let out = run(cmd(h).args(["config", "schema"]));
    let schema: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(schema["properties"]["transport"].is_object());
}

#[test]
fn a_conformance_report_without_a_suite_is_skipped_and_signed_by_the_node() {
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    let (mut node, url) = start_with(
        h,
        &[(
            "HEARTHNET_CONFORMANCE_BIN",
            "/nonexistent/hearthnet-conformance".into(),
        )],
    );
    let out = run(cmd(h).args(["call", "--node", &url, "protocol.conformance.report", "{}"]));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let resp: hearthnet_sdk::proto::hearthnet::protocol::v1::ReportConformanceResponse =
        hearthnet_sdk::json::from_json(text(&out.stdout).trim()).unwrap();
    let o = resp.output.unwrap();
    let report = o.report.unwrap();
    assert_eq!(o.overall, 4, "VERDICT_SKIPPED");
    assert_eq!(
        report.sections[0].reason.as_deref(),
        Some("suite_not_installed")
    );
    let (cid, signer) = hearthnet_sdk::records::verify_conformance_report(&report).unwrap();
    assert_eq!(cid, o.report_cid);
    assert_eq!(signer.to_string(), report.target.unwrap().node);
    // A section glob that would read as an option is refused (exit 7).
    let out = run(cmd(h).args([
        "call",
        "--node",
        &url,
        "protocol.conformance.report",
        r#"{"input":{"sections":["--target=elsewhere"]}}"#,
    ]));
    assert_eq!(out.status.code(), Some(7), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("bad_request"));
    // The operator's own call only: any other caller is refused (PROTO-003).
    let other = |c: &mut Command| {
        c.env("HEARTHNET_DATA_DIR", h.join("other/data"))
            .env("HEARTHNET_CONFIG_DIR", h.join("other/config"));
    };
    let mut init = cmd(h);
    other(init.arg("init"));
    assert!(run(&mut init).status.success());
    let mut call = cmd(h);
    other(call.args(["call", "--node", &url, "protocol.conformance.report", "{}"]));
    let stranger = run(&mut call);
    assert_eq!(
        stranger.status.code(),
        Some(4),
        "{}",
        text(&stranger.stderr)
    );
    assert!(text(&stranger.stderr).contains("unauthorized"));
    node.kill().unwrap();
    node.wait().unwrap();
}

#[test]
fn a_reader_that_goes_away_ends_the_output_quietly() {
    // `hearthnet registry | head -1`: no panic when stdout closes.
    let home = tempfile::tempdir().unwrap();
    let mut child = cmd(home.path())
        .arg("registry")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The reader is gone before the first line is written.
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
}

#[test]
fn an_unknown_injected_fault_stops_the_start() {
    let home = tempfile::tempdir().unwrap();
    let out = run(cmd(home.path())
        .args(["run", "--no-models", "--port", "0"])
        .env("HEARTHNET__TRANSPORT__HOST", "127.0.0.1")
        .env("HEARTHNET_TEST_FAULTS", "drop_final_done,no_such_fault"));
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains("unknown fault `no_such_fault`") && err.contains("accept_bad_signature"),
        "{err}"
    );
}

#[test]
fn doctor_reports_missing_key_and_fix() {
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    let out = run(cmd(h)
        .args(["doctor"])
        .env("HEARTHNET__TRANSPORT__PORT", "0"));
    assert_eq!(out.status.code(), Some(1));
    let s = text(&out.stdout);
    assert!(s.contains("✘ key") && s.contains("hearthnet init"), "{s}");
    let out = run(cmd(h).args(["init"]));
    assert!(out.status.success());
    let out = run(cmd(h)
        .args(["doctor"])
        .env("HEARTHNET__TRANSPORT__PORT", "0"));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stdout));
}

/// `file put` and `rag add` push a document and index it; `rag.query` then
/// finds it (needs the provisioned MiniLM).
#[cfg(feature = "models")]
#[test]
fn file_put_and_rag_add() {
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    assert!(run(cmd(h).args(["init"])).status.success());
    let models = std::env::var_os("HEARTHNET_MODELS_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            directories::BaseDirs::new()
                .unwrap()
                .cache_dir()
                .join("hearthnet")
                .join("models")
        });
    let (mut node, url) = start_with(
        h,
        &[
            ("HEARTHNET__MODELS__ENABLED", "true".into()),
            ("HEARTHNET__MODELS__DIR", models.display().to_string()),
        ],
    );
    let data = std::path::PathBuf::from(
        std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into()),
    )
    .join("tests/data/rag");
    let sub = |args: &[&str]| {
        let mut c = cmd(h);
        c.args(args).args(["--node", &url]);
        run(&mut c)
    };
    let compost = data.join("hot-composting.md");
    let out = sub(&["file", "put", compost.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let cid = format!(
        "blake3:{}",
        blake3::hash(&std::fs::read(&compost).unwrap()).to_hex()
    );
    assert_eq!(text(&out.stdout).trim(), cid);

    let bread = data.join("sourdough-bread-guide.md");
    let out = sub(&["rag", "add", bread.to_str().unwrap(), "--meta", "year=2024"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("\"chunksIndexed\""),
        "{}",
        text(&out.stdout)
    );
    let bread_cid = format!(
        "blake3:{}",
        blake3::hash(&std::fs::read(&bread).unwrap()).to_hex()
    );
    let out = sub(&[
        "call",
        "rag.query",
        r#"{"params":{"corpus":"community"},"input":{"query":"keep my sourdough starter alive on holiday","k":1,"filter":{"min_year":"2020"}}}"#,
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains(&bread_cid),
        "{}",
        text(&out.stdout)
    );

    // Bad input: exit codes, no panic.
    let out = sub(&["rag", "add", bread.to_str().unwrap(), "--meta", "nokv"]);
    assert_eq!(out.status.code(), Some(2));
    let out = sub(&["rag", "add", "/no/such/file.md"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("/no/such/file.md"));
    let out = sub(&["rag", "add", bread.to_str().unwrap(), "--corpus", "nope"]);
    assert_eq!(
        out.status.code(),
        Some(6),
        "not_found: {}",
        text(&out.stderr)
    );
    node.kill().unwrap();
    node.wait().unwrap();
}
