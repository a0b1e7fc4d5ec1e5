#!/usr/bin/env python3
"""Independent check of the published JSON Schemas with Python's `jsonschema`.

Validates every instance of the language-neutral corpus
(protocol/vectors/json/corpus.json) and, when given, the differential corpus
written by `sdk/tests/differential.rs` (HEARTHNET_CORPUS_OUT) against
protocol/generated/schemas/<message>.schema.json with a Draft 2020-12
validator, and compares the verdicts with the expected ones (corpus) and with
the Rust validator's (differential). Exits 1 on any disagreement.
"""
import json
import pathlib
import sys

from jsonschema import Draft202012Validator

ROOT = pathlib.Path(__file__).resolve().parent.parent
SCHEMAS = ROOT / "protocol" / "generated" / "schemas"
_validators = {}


def validator(message):
    if message not in _validators:
        schema = json.loads((SCHEMAS / f"{message}.schema.json").read_text())
        Draft202012Validator.check_schema(schema)
        _validators[message] = Draft202012Validator(schema)
    return _validators[message]


def check(cases, expected_key, label):
    disagreements = []
    for case in cases:
        verdict = validator(case["message"]).is_valid(case["instance"])
        if verdict != case[expected_key]:
            disagreements.append((case["message"], case["instance"], case[expected_key], verdict))
    agree = len(cases) - len(disagreements)
    print(f"{label}: python jsonschema agrees on {agree}/{len(cases)} instances")
    for message, instance, want, got in disagreements[:20]:
        print(f"  {message}: expected {want}, python says {got}: {json.dumps(instance)[:300]}")
    return not disagreements


def main():
    corpus = json.loads((ROOT / "protocol" / "vectors" / "json" / "corpus.json").read_text())
    ok = check(corpus["cases"], "valid", "corpus")
    for extra in sys.argv[1:]:
        cases = json.loads(pathlib.Path(extra).read_text())
        ok = check(cases, "schema_valid", f"differential ({extra})") and ok
    print(f"checked {len(_validators)} schemas")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
