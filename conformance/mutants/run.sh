#!/usr/bin/env bash
# Mutant self-test of the conformance suite (issue 11): runs the whole suite
# against our node once per injected fault (conformance/mutants/faults.txt,
# HEARTHNET_TEST_FAULTS, debug builds only) and checks that every fault is
# caught — the run exits 1 with at least one failed case. Prints the cases
# that caught each fault and the kill rate; exits 1 if a fault survives.
# Then checks the known-failing list both ways: listed failures keep a run
# green, and a listed case that passes makes it fail.
#
#   HEARTHNET_BIN=… HEARTHNET_CONFORMANCE_BIN=… bash conformance/mutants/run.sh [OUT_DIR]
set -euo pipefail
cd "$(dirname "$0")/../.."
bin="${HEARTHNET_BIN:-hearthnet}"
conf="${HEARTHNET_CONFORMANCE_BIN:-hearthnet-conformance}"
py="${PYTHON:-python3}"
out="${1:-$(mktemp -d)}"
mkdir -p "$out"
export HEARTHNET_BIN="$bin"
launch='bash conformance/targets/hearthnet-rs.sh'

# failed_cases DIR: the test ids that failed in DIR/report.json, one per line.
failed_cases() {
  "$py" - "$1/report.json" <<'PY'
import json, sys
report = json.load(open(sys.argv[1]))
for section in report.get("sections", []):
    for f in section.get("failures", []):
        print(f["testId"])
PY
}

faults=$(grep -v '^#' conformance/mutants/faults.txt | awk 'NF { print $1 }')
total=0 killed=0 survivors=()
for fault in $faults; do
  total=$((total + 1))
  rc=0
  "$conf" run --key "$out/runner.key" --out "$out/$fault" \
    --launch "HEARTHNET_TEST_FAULTS=$fault $launch" >"$out/$fault.log" 2>&1 || rc=$?
  caught=""
  [ -f "$out/$fault/report.json" ] && caught="$(failed_cases "$out/$fault")"
  if [ "$rc" = 1 ] && [ -n "$caught" ]; then
    killed=$((killed + 1))
    printf 'killed   %-26s by %s case(s): %s\n' "$fault" "$(wc -l <<<"$caught")" \
      "$(head -3 <<<"$caught" | paste -sd' ' -)$([ "$(wc -l <<<"$caught")" -gt 3 ] && echo ' …')"
  else
    survivors+=("$fault")
    printf 'SURVIVED %-26s (runner exit %s; log %s)\n' "$fault" "$rc" "$out/$fault.log"
  fi
done
printf 'mutant kill rate: %d/%d\n' "$killed" "$total"

# Known-failing entries: the caught cases of one mutant, listed, keep its run green …
known="$out/known-failing.toml"
failed_cases "$out/wrong_error_code" | while read -r id; do
  printf '[[case]]\ntest_id = "%s"\nreason = "mutant wrong_error_code"\n\n' "$id"
done >"$known"
rc=0
"$conf" run --key "$out/runner.key" --out "$out/known-listed" --known-failing "$known" \
  --launch "HEARTHNET_TEST_FAULTS=wrong_error_code $launch" >"$out/known-listed.log" 2>&1 || rc=$?
[ "$rc" = 0 ] || { echo "a run whose only failures are listed as known-failing exited $rc"; exit 1; }
# Two runs with one seed against the same fault write the same report, but
# for timestamps, the signature, the launched target's fresh NodeID and the
# known-failing notes of the second run.
"$py" - "$out/wrong_error_code/report.json" "$out/known-listed/report.json" <<'PY'
import json, re, sys
def normal(path):
    r = json.load(open(path))
    for k in ("ranAt", "durationMs", "signature"):
        r.pop(k, None)
    r["target"].pop("node", None)
    for s in r["sections"]:
        for f in s.get("failures", []):
            f["observed"] = re.sub(r" \[known failing: [^]]*\]$", "", f["observed"])
    return r
a, b = (normal(p) for p in sys.argv[1:])
assert a == b, "two runs with one seed wrote different reports"
print(f"deterministic: two runs with seed {a['seed']} wrote the same report ({a['failed']} failures)")
PY
# … and a listed case that passes fails the run.
rc=0
"$conf" run --key "$out/runner.key" --out "$out/known-passes" \
  --known-failing conformance/mutants/known-failing-passes.toml \
  --launch "$launch" >"$out/known-passes.log" 2>&1 || rc=$?
if [ "$rc" != 1 ] || ! grep -q 'known-failing case core/bus/echo_returns_the_text passed' "$out/known-passes.log"; then
  echo "a known-failing case that passes did not fail the run (exit $rc)"
  exit 1
fi
echo "known-failing list: listed failures pass the run; a listed case that passes fails it"

[ "${#survivors[@]}" = 0 ] || { echo "faults the suite did not catch: ${survivors[*]}"; exit 1; }
