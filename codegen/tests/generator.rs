//! Tests of the generator: drift of checked-in artefacts, error locations,
//! lint rules, breaking-change detection and snapshots.

mod common;

use hearthnet_codegen::{Error, Protocol, breaking, lint};

#[test]
fn checked_in_artefacts_match_the_generator() {
    let problems = hearthnet_codegen::drift(&common::protocol(), &common::repo());
    assert!(
        problems.is_empty(),
        "generated artefacts drifted:\n{}\nregenerate them with `{}`",
        problems.join("\n"),
        hearthnet_codegen::REGENERATE
    );
}

#[test]
fn every_seed_capability_is_accounted_for() {
    let p = common::protocol();
    assert!(
        p.coverage().len() >= 100,
        "coverage table has {} entries",
        p.coverage().len()
    );
    let caps: Vec<String> = p.capabilities().into_iter().map(|c| c.name).collect();
    let decisions: Vec<String> = std::fs::read_dir(common::repo().join("protocol/decisions"))
        .expect("decisions")
        .filter_map(|e| e.ok()?.file_name().to_str()?.get(..4).map(str::to_owned))
        .collect();
    let problems = hearthnet_codegen::coverage::check(p.coverage(), &caps, &decisions);
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    // The check itself finds a missing target.
    let bogus = vec![hearthnet_codegen::coverage::Entry {
        seed: "x.y@1.0".into(),
        source: "t".into(),
        status: "defined".into(),
        target: "x.y".into(),
        decision: String::new(),
        why: String::new(),
    }];
    assert_eq!(
        hearthnet_codegen::coverage::check(&bogus, &caps, &decisions).len(),
        1
    );
}

#[test]
fn every_cited_clause_is_defined_once_in_the_prose() {
    let spec = common::repo().join("protocol/spec");
    let defined_re = regex::Regex::new(r"(?m)^- \[([A-Z][A-Z0-9]*-[0-9]{3})\]").expect("regex");
    let decision_re = regex::Regex::new(r"(?i)decisions? (\d{4})").expect("regex");
    let decisions: std::collections::BTreeSet<String> =
        std::fs::read_dir(common::repo().join("protocol/decisions"))
            .expect("decisions")
            .filter_map(|e| e.ok()?.file_name().to_str()?.get(..4).map(str::to_owned))
            .collect();
    let mut defined: std::collections::BTreeMap<String, String> = Default::default();
    let mut problems = Vec::new();
    let mut files: Vec<_> = std::fs::read_dir(&spec)
        .expect("spec dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "md"))
        .collect();
    files.sort();
    for path in files {
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("")
            .to_string();
        let text = std::fs::read_to_string(&path).expect("read spec");
        for c in defined_re.captures_iter(&text) {
            if let Some(first) = defined.insert(c[1].to_string(), name.clone()) {
                problems.push(format!(
                    "{} is defined in {first} and again in {name}",
                    &c[1]
                ));
            }
        }
        for c in decision_re.captures_iter(&text) {
            if !decisions.contains(&c[1]) {
                problems.push(format!(
                    "{name} cites decision {}, which does not exist",
                    &c[1]
                ));
            }
        }
    }
    assert!(
        defined.len() >= 500,
        "only {} clauses defined",
        defined.len()
    );
    for cap in common::protocol().capabilities() {
        for clause in &cap.clauses {
            if !defined.contains_key(clause) {
                problems.push(format!(
                    "{} cites {clause}, which no spec file defines",
                    cap.name
                ));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn the_protocol_is_lint_clean() {
    let findings = lint::lint(&common::protocol());
    assert!(
        findings.is_empty(),
        "{}",
        findings
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("\n")
    );
}

#[test]
fn the_protocol_covers_every_stream_shape_and_enough_capabilities() {
    let caps = common::protocol().capabilities();
    assert!(caps.len() >= 10, "{} capabilities", caps.len());
    for shape in ["unary", "server", "client"] {
        assert!(
            caps.iter().any(|c| c.streaming == shape),
            "no {shape} capability"
        );
    }
    assert!(common::protocol().events().len() >= 3);
    let codes = common::protocol().error_codes();
    for w in [
        "not_found",
        "schema_mismatch",
        "experimental_disabled",
        "token_expired",
        "conformance_failed",
    ] {
        assert!(
            codes.iter().any(|c| c.wire_name == w),
            "missing error code {w}"
        );
    }
}

#[test]
fn syntax_errors_name_file_line_and_column() {
    let dir = common::fixture(&[(
        "hearthnet/demo/v1/demo.proto",
        "syntax = \"proto3\";\npackage hearthnet.demo.v1;\nmessage A {\n  string x = ;\n}\n",
    )]);
    let err = Protocol::compile(dir.path().join("proto")).expect_err("must fail");
    let text = err.to_string();
    assert!(matches!(err, Error::Proto { .. }), "{err:?}");
    assert!(text.contains("hearthnet/demo/v1/demo.proto:4:"), "{text}");
}

#[test]
fn unknown_declared_error_codes_are_rejected_with_their_location() {
    let src = common::area("string", false, "").replace(
        "min_trust: TRUST_LEVEL_MEMBER }",
        "min_trust: TRUST_LEVEL_MEMBER errors: [\"no_such_code\"] }",
    );
    let dir = common::fixture(&[("hearthnet/demo/v1/demo.proto", &src)]);
    let err = Protocol::compile(dir.path().join("proto")).expect_err("must fail");
    let text = err.to_string();
    assert!(
        text.contains("no_such_code") && text.contains("hearthnet/demo/v1/demo.proto:8:"),
        "{text}"
    );
}

#[test]
fn constants_are_checked_and_generated() {
    let good = r#"{"constants": [{"name": "DEMO_TTL_SECONDS", "value": 30, "unit": "seconds", "phase": 1, "area": "demo", "description": "A TTL.", "source": "test"}]}"#;
    let dir = common::fixture(&[
        (
            "hearthnet/demo/v1/demo.proto",
            &common::area("string", false, ""),
        ),
        ("../constants.json", good),
    ]);
    let p = Protocol::compile(dir.path().join("proto")).expect("compiles");
    assert_eq!(p.constants().len(), 1);
    assert!(
        hearthnet_codegen::constants::rust(p.constants())
            .contains("pub const DEMO_TTL_SECONDS: i64 = 30;")
    );
    assert!(
        p.artefacts()["reference/constants.md"]
            .windows(16)
            .any(|w| w == b"DEMO_TTL_SECONDS")
    );
    let bad = "{\"constants\": [\n  {\"name\": \"x\"\n";
    let dir = common::fixture(&[
        (
            "hearthnet/demo/v1/demo.proto",
            &common::area("string", false, ""),
        ),
        ("../constants.json", bad),
    ]);
    let err = Protocol::compile(dir.path().join("proto")).expect_err("bad JSON");
    assert!(err.to_string().contains("constants.json:3:"), "{err}");
    let unit = good.replace("seconds\"", "parsecs\"");
    let dir = common::fixture(&[
        (
            "hearthnet/demo/v1/demo.proto",
            &common::area("string", false, ""),
        ),
        ("../constants.json", &unit),
    ]);
    assert!(
        Protocol::compile(dir.path().join("proto"))
            .expect_err("bad unit")
            .to_string()
            .contains("unknown unit `parsecs`")
    );
}

#[test]
fn streaming_option_must_agree_with_the_rpc() {
    let src = common::area("string", false, "").replace(
        "min_trust: TRUST_LEVEL_MEMBER }",
        "min_trust: TRUST_LEVEL_MEMBER streaming: STREAMING_SERVER }",
    );
    let dir = common::fixture(&[("hearthnet/demo/v1/demo.proto", &src)]);
    let err = Protocol::compile(dir.path().join("proto")).expect_err("must fail");
    assert!(
        err.to_string()
            .contains("declares streaming `server` but the rpc is `unary`"),
        "{err}"
    );
}

#[test]
fn lint_finds_bad_names_missing_docs_and_bare_rpcs() {
    let src = common::area("string", false, "// Other.\nservice OtherService {\n  // Bare.\n  rpc Bare(BareRequest) returns (BareResponse);\n}\n// Req.\nmessage BareRequest {\n  string undocumented = 1;\n}\n// Resp.\nmessage BareResponse {}\n")
        .replace("name: \"demo.echo\"", "name: \"Demo.Echo\"")
    .replace("KIND_B = 2", "KIND_SELF = 2");
    let dir = common::fixture(&[("hearthnet/demo/v1/demo.proto", &src)]);
    let findings = lint::lint(&Protocol::compile(dir.path().join("proto")).expect("compiles"));
    let rules: Vec<&str> = findings.iter().map(|f| f.rule).collect();
    assert!(rules.contains(&"ENUM_VALUE_RUST_KEYWORD"), "{findings:?}");
    assert!(rules.contains(&"CAPABILITY_NAME"), "{findings:?}");
    assert!(rules.contains(&"CAPABILITY_REQUIRED"), "{findings:?}");
    let doc = findings
        .iter()
        .find(|f| f.rule == "DOCUMENTED")
        .expect("missing doc found");
    assert!(
        doc.message.contains("BareRequest.undocumented") && doc.location.contains("demo.proto:"),
        "{doc}"
    );
}

fn compile(src: &str) -> Protocol {
    let dir = common::fixture(&[("hearthnet/demo/v1/demo.proto", src)]);
    Protocol::compile(dir.path().join("proto")).expect("compiles")
}

fn rules(old: &Protocol, new: &Protocol) -> Vec<&'static str> {
    breaking::breaking(old, new)
        .into_iter()
        .map(|c| c.rule)
        .collect()
}

#[test]
fn breaking_detects_each_kind_of_change() {
    let base = compile(&common::area("string", false, ""));
    // Through the descriptor set, as the CLI reads `--against`.
    let old = Protocol::from_descriptor_set(base.descriptor_set()).expect("decodes");
    assert!(
        rules(&old, &base).is_empty(),
        "identical protocols are compatible"
    );

    let additive = compile(
        &common::area(
            "string",
            false,
            "// New.\nmessage Extra {\n  // F.\n  string f = 1;\n}\n",
        )
        .replace(
            "  Kind kind = 2;",
            "  Kind kind = 2;\n  // New field.\n  string added = 3;",
        ),
    );
    assert!(
        rules(&old, &additive).is_empty(),
        "additions are compatible: {:?}",
        rules(&old, &additive)
    );

    let cases: Vec<(&str, String)> = vec![
        (
            "FIELD_REMOVED",
            common::area("string", false, "").replace("  // Kind.\n  Kind kind = 2;\n", ""),
        ),
        (
            "FIELD_RENUMBERED",
            common::area("string", false, "").replace("Kind kind = 2;", "Kind kind = 3;"),
        ),
        ("FIELD_TYPE_CHANGED", common::area("bytes", false, "")),
        (
            "FIELD_JSON_NAME_CHANGED",
            common::area("string", false, "").replace(
                "text = 1;\n  // Kind.",
                "text = 1 [json_name = \"words\"];\n  // Kind.",
            ),
        ),
        (
            "ENUM_VALUE_REMOVED",
            common::area("string", false, "").replace("  // B.\n  KIND_B = 2;\n", ""),
        ),
        (
            "ENUM_VALUE_RENAMED",
            common::area("string", false, "").replace("KIND_B = 2", "KIND_BEE = 2"),
        ),
        (
            "CAPABILITY_STREAMING_CHANGED",
            common::area("string", true, ""),
        ),
        (
            "CAPABILITY_REMOVED",
            common::area("string", false, "")
                .replace("name: \"demo.echo\"", "name: \"demo.echo2\""),
        ),
        (
            "FIELD_CARDINALITY_CHANGED",
            common::area("repeated string", false, ""),
        ),
    ];
    for (rule, src) in cases {
        let got = rules(&old, &compile(&src));
        assert!(got.contains(&rule), "{rule} not detected, got {got:?}");
    }
}

#[test]
fn schema_hash_ignores_comments_but_not_shapes() {
    let a = compile(&common::area("string", false, ""));
    let b = compile(&common::area("string", false, "").replace("// Text.", "// Some other words."));
    let c = compile(&common::area("bytes", false, ""));
    let h = |p: &Protocol| p.capabilities()[0].schema_hash.clone();
    assert_eq!(h(&a), h(&b));
    assert_ne!(h(&a), h(&c));
    assert!(h(&a).starts_with("blake3:") && h(&a).len() == 7 + 64);
}

#[test]
fn snapshot_embed_text_request_schema() {
    let p = common::protocol();
    insta::assert_json_snapshot!(
        "embed_text_request_schema",
        p.schema("hearthnet.embed.v1.EmbedTextRequest", true)
            .expect("schema")
    );
}

#[test]
fn snapshot_llm_chat_response_frame_schema() {
    let p = common::protocol();
    insta::assert_json_snapshot!(
        "llm_chat_response_schema",
        p.schema("hearthnet.llm.v1.ChatResponse", true)
            .expect("schema")
    );
}

#[test]
fn snapshot_file_put_client_frame_schema() {
    let p = common::protocol();
    insta::assert_json_snapshot!(
        "file_put_request_schema",
        p.schema("hearthnet.file.v1.PutRequest", true)
            .expect("schema")
    );
}

#[test]
fn snapshot_docs_for_embed_and_llm_packages() {
    let docs = hearthnet_codegen::docs::reference(&common::protocol());
    insta::assert_snapshot!("docs_embed_package", docs["packages/hearthnet.embed.v1.md"]);
    let caps = &docs["capabilities.md"];
    let start = caps.find("\n## llm.chat").expect("llm.chat section");
    let end = caps[start + 1..]
        .find("\n## ")
        .map_or(caps.len(), |e| start + 1 + e);
    insta::assert_snapshot!("docs_llm_chat_capability", &caps[start..end]);
}
