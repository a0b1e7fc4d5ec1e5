//! The language-neutral valid/invalid corpus (`protocol/vectors/json/corpus.json`):
//! every case is judged as listed by the schema validator and by the decoder.

use serde_json::Value;

#[test]
fn corpus_verdicts_match_schema_and_decoder() {
    let text = include_str!("../../protocol/vectors/json/corpus.json");
    let corpus: Value = serde_json::from_str(text).expect("corpus is JSON");
    let cases = corpus["cases"].as_array().expect("cases");
    assert!(cases.len() >= 40);
    let mut wrong = Vec::new();
    for c in cases {
        let message = c["message"].as_str().expect("message");
        let valid = c["valid"].as_bool().expect("valid");
        let instance = &c["instance"];
        let schema = hearthnet_sdk::validate::validate_message_value(message, instance);
        if schema.is_ok() != valid {
            wrong.push(format!(
                "schema: {message} {instance} expected valid={valid}: {:?} ({})",
                schema.clone().err(),
                c["why"]
            ));
        }
        let decoded = hearthnet_sdk::json::json_to_proto_bytes(message, &instance.to_string());
        if decoded.is_ok() != valid {
            wrong.push(format!(
                "decoder: {message} {instance} expected valid={valid}: {:?} ({})",
                decoded.err(),
                c["why"]
            ));
        }
        if !valid {
            let errs = schema.err().map(|e| e.violations().len()).unwrap_or(0);
            if errs == 0 {
                wrong.push(format!("{message} {instance}: no violation reported"));
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}
