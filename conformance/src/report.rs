//! The report (CONF-001 … CONF-004, CONF-013): verdicts, the signed and
//! content-addressed `ConformanceReport`, and its JSON, Markdown and HTML
//! forms; `verify` for a report written earlier.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::Path;

use hearthnet_sdk::identity::{NodeId, SecretKey};
use hearthnet_sdk::proto::hearthnet::conformance::v1::{
    ConformanceReport, ConformanceTier, FailureDetail, RunnerInfo, SectionGroup, SectionResult,
    TargetCapability, TargetSelfDescription, Verdict,
};
use hearthnet_sdk::records::{sign_conformance_report, verify_conformance_report};
use hearthnet_sdk::wkt::Timestamp;

use crate::catalogue::CLAUSES;
use crate::run::{CaseResult, Outcome, Preflight};

/// The suite's own version (CONF-002); cases change → minor, verdict rules
/// or case meaning change → major.
pub const SUITE_VERSION: &str = "0.2.0";

/// The group of a section name (CONF-009), or `None` when it is not one.
pub fn group_of(section: &str) -> Option<SectionGroup> {
    let (group, name) = section.split_once('/').unwrap_or((section, ""));
    let named = !name.is_empty() && !name.contains('/');
    match group {
        "core" if named => Some(SectionGroup::Core),
        "services" if named => Some(SectionGroup::Services),
        "experimental" if named => Some(SectionGroup::Experimental),
        "operability" if named => Some(SectionGroup::Operability),
        "federation" if name.is_empty() => Some(SectionGroup::Federation),
        _ => None,
    }
}

/// Per-section tallies with the words of CONF-001.
pub fn sections(results: &[CaseResult], known: &BTreeMap<String, String>) -> Vec<SectionResult> {
    let mut by: BTreeMap<String, Vec<&CaseResult>> = BTreeMap::new();
    for r in results {
        by.entry(r.case.section.clone()).or_default().push(r);
    }
    by.into_iter()
        .map(|(name, rs)| {
            let mut s = SectionResult {
                group: group_of(&name).unwrap_or(SectionGroup::Unspecified) as i32,
                name,
                ..Default::default()
            };
            for r in &rs {
                s.total += 1;
                match &r.outcome {
                    Outcome::Pass => s.passed += 1,
                    Outcome::Skip(_) => s.skipped += 1,
                    Outcome::Fail(f) => {
                        s.failed += 1;
                        let mut clauses = r.case.clauses.clone();
                        for c in &f.also_broken {
                            if !clauses.contains(c) {
                                clauses.push(c.clone());
                            }
                        }
                        let mut observed = f.observed.clone();
                        if let Some(reason) = known.get(&r.case.test_id) {
                            let _ = write!(observed, " [known failing: {reason}]");
                        }
                        s.failures.push(FailureDetail {
                            test_id: r.case.test_id.clone(),
                            clause_ids: clauses,
                            spec_ref: r.case.spec_ref.clone(),
                            observed,
                            expected: f.expected.clone(),
                            capability: Some(r.case.capability.clone()),
                            payload_json: Some(r.payload_json.clone()),
                            vector_id: None,
                        });
                    }
                }
            }
            s.verdict = if s.failed > 0 {
                Verdict::Fail
            } else if s.passed == 0 {
                Verdict::Skipped
            } else {
                Verdict::Pass
            } as i32;
            if s.verdict == Verdict::Skipped as i32 {
                let reasons: BTreeSet<String> = rs
                    .iter()
                    .filter_map(|r| match &r.outcome {
                        Outcome::Skip(why) => {
                            Some(why.split(':').next().unwrap_or(why).to_string())
                        }
                        _ => None,
                    })
                    .collect();
                s.reason = Some(reasons.into_iter().collect::<Vec<_>>().join(", "));
            }
            s
        })
        .collect()
}

/// `overall`, `compliant` and `tiers` from the sections (CONF-001).
pub fn verdicts(
    sections: &[SectionResult],
    federation_advertised: bool,
) -> (Verdict, bool, Vec<ConformanceTier>) {
    let v = |s: &SectionResult| Verdict::try_from(s.verdict).unwrap_or(Verdict::Unspecified);
    let g =
        |s: &SectionResult| SectionGroup::try_from(s.group).unwrap_or(SectionGroup::Unspecified);
    let ran = sections.iter().any(|s| s.passed + s.failed > 0);
    let core_failed = sections
        .iter()
        .any(|s| g(s) == SectionGroup::Core && v(s) == Verdict::Fail);
    let counted = |s: &SectionResult| {
        g(s) == SectionGroup::Services
            || (g(s) == SectionGroup::Federation && federation_advertised)
    };
    let other_failed = sections
        .iter()
        .any(|s| counted(s) && matches!(v(s), Verdict::Fail | Verdict::Partial));
    let overall = if !ran {
        Verdict::Skipped
    } else if core_failed {
        Verdict::Fail
    } else if other_failed {
        Verdict::Partial
    } else {
        Verdict::Pass
    };
    // Decision 0097: a named section must have run and passed; a group's
    // sections must each have passed or been skipped (not advertised).
    let passed = |name: &str| {
        sections
            .iter()
            .any(|s| s.name == name && v(s) == Verdict::Pass)
    };
    let group_clean = |group: SectionGroup| {
        sections
            .iter()
            .filter(|s| g(s) == group)
            .all(|s| matches!(v(s), Verdict::Pass | Verdict::Skipped))
    };
    let bronze = passed("core/identity") && passed("core/transport") && passed("core/bus");
    let silver = bronze
        && passed("core/events")
        && passed("core/files")
        && group_clean(SectionGroup::Core)
        && group_clean(SectionGroup::Services);
    let operability_ran = sections
        .iter()
        .any(|s| g(s) == SectionGroup::Operability && v(s) == Verdict::Pass);
    let federation_ok = !federation_advertised
        || sections
            .iter()
            .any(|s| g(s) == SectionGroup::Federation && v(s) == Verdict::Pass);
    let gold = silver && operability_ran && group_clean(SectionGroup::Operability) && federation_ok;
    let tiers = [
        (bronze, ConformanceTier::Bronze),
        (silver, ConformanceTier::Silver),
        (gold, ConformanceTier::Gold),
    ]
    .into_iter()
    .filter_map(|(held, t)| held.then_some(t))
    .collect();
    (overall, overall == Verdict::Pass, tiers)
}

/// Inputs of a report besides the results.
#[derive(Debug)]
pub struct RunInfo<'a> {
    /// The pre-flight.
    pub preflight: &'a Preflight,
    /// When the run started.
    pub ran_at: Timestamp,
    /// Wall time.
    pub duration_ms: u64,
    /// Seed.
    pub seed: u64,
    /// Selection globs.
    pub selection: Vec<String>,
}

/// Builds and signs the report; returns it with its protobuf bytes and CID.
pub fn build(
    results: &[CaseResult],
    known: &BTreeMap<String, String>,
    info: &RunInfo<'_>,
    key: &SecretKey,
) -> (ConformanceReport, Vec<u8>, String) {
    let d = &info.preflight.describe;
    let sections = sections(results, known);
    let federation = info
        .preflight
        .advertised
        .keys()
        .any(|c| c.starts_with("federation."));
    let (overall, compliant, tiers) = verdicts(&sections, federation);
    let mut report = ConformanceReport {
        schema_version: 1,
        suite_version: SUITE_VERSION.into(),
        protocol_version: hearthnet_sdk::PROTOCOL_VERSION.into(),
        protocol_descriptor_hash: format!(
            "blake3:{}",
            blake3::hash(hearthnet_sdk::DESCRIPTOR_SET).to_hex()
        ),
        target: Some(TargetSelfDescription {
            implementation: d.implementation.clone(),
            implementation_version: d.implementation_version.clone(),
            commit: None,
            protocol_version: d.protocol_version.clone(),
            descriptor_hash: d.descriptor_hash.clone(),
            node: d.node.clone(),
            capabilities: d
                .capabilities
                .iter()
                .map(|c| TargetCapability {
                    name: c.name.clone(),
                    version: c.version.clone(),
                    schema_hash: c.schema_hash.clone(),
                })
                .collect(),
            features: d.features.clone(),
        }),
        runner: Some(RunnerInfo {
            name: "hearthnet-conformance".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            commit: None,
        }),
        ran_at: Some(info.ran_at),
        duration_ms: info.duration_ms,
        seed: info.seed,
        selection: info.selection.clone(),
        overall: overall as i32,
        compliant,
        tiers: tiers.into_iter().map(|t| t as i32).collect(),
        total: sections.iter().map(|s| s.total).sum(),
        passed: sections.iter().map(|s| s.passed).sum(),
        failed: sections.iter().map(|s| s.failed).sum(),
        skipped: sections.iter().map(|s| s.skipped).sum(),
        sections,
        signature: None,
    };
    let (bytes, cid) = sign_conformance_report(key, &mut report);
    (report, bytes, cid)
}

/// Why a report does not verify.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// A rule of CONF-001/002 does not hold.
    #[error("{0}")]
    Invalid(String),
}

/// Checks a report's signature, its binding to this suite and the
/// consistency of its verdicts; returns its CID and signer.
pub fn verify(report: &ConformanceReport) -> Result<(String, NodeId), VerifyError> {
    let bad = |m: String| Err(VerifyError::Invalid(m));
    if report.schema_version != 1 {
        return bad(format!(
            "schema_version {} (expected 1)",
            report.schema_version
        ));
    }
    let (cid, signer) =
        verify_conformance_report(report).map_err(|e| VerifyError::Invalid(e.to_string()))?;
    let sum = |f: fn(&SectionResult) -> u64| report.sections.iter().map(f).sum::<u64>();
    if (report.total, report.passed, report.failed, report.skipped)
        != (
            sum(|s| s.total),
            sum(|s| s.passed),
            sum(|s| s.failed),
            sum(|s| s.skipped),
        )
    {
        return bad("totals are not the sums over the sections (CONF-001)".into());
    }
    let federation = report.target.as_ref().is_some_and(|t| {
        t.capabilities
            .iter()
            .any(|c| c.name.starts_with("federation."))
    });
    let (overall, compliant, tiers) = verdicts(&report.sections, federation);
    if report.overall != overall as i32
        || report.compliant != compliant
        || report.tiers != tiers.iter().map(|t| *t as i32).collect::<Vec<_>>()
    {
        return bad(
            "overall, compliant or tiers do not follow from the sections (CONF-001)".into(),
        );
    }
    for s in &report.sections {
        if s.failures.len() as u64 != s.failed {
            return bad(format!(
                "section {}: {} failures listed for {} failed",
                s.name,
                s.failures.len(),
                s.failed
            ));
        }
    }
    Ok((cid, signer))
}

/// Clause coverage: (covered clause ids, all clause ids).
pub fn coverage(cases: &[crate::cases::Case]) -> (BTreeSet<String>, usize) {
    let covered = cases
        .iter()
        .flat_map(|c| c.clauses.iter().cloned())
        .filter(|c| CLAUSES.iter().any(|(id, _)| id == c))
        .collect();
    (covered, CLAUSES.len())
}

fn verdict_word(v: i32) -> &'static str {
    match Verdict::try_from(v).unwrap_or(Verdict::Unspecified) {
        Verdict::Pass => "pass",
        Verdict::Partial => "partial",
        Verdict::Fail => "FAIL",
        Verdict::Skipped => "skipped",
        Verdict::Unspecified => "?",
    }
}

fn tier_words(r: &ConformanceReport) -> String {
    let t: Vec<&str> = r
        .tiers
        .iter()
        .map(
            |t| match ConformanceTier::try_from(*t).unwrap_or(ConformanceTier::Unspecified) {
                ConformanceTier::Bronze => "Bronze",
                ConformanceTier::Silver => "Silver",
                ConformanceTier::Gold => "Gold",
                ConformanceTier::Unspecified => "?",
            },
        )
        .collect();
    if t.is_empty() {
        "none".into()
    } else {
        t.join(", ")
    }
}

/// The Markdown form.
pub fn markdown(
    r: &ConformanceReport,
    cid: &str,
    results: &[CaseResult],
    coverage: (usize, usize),
) -> String {
    let t = r.target.clone().unwrap_or_default();
    let mut s = String::new();
    let _ = writeln!(s, "# HearthNet conformance report\n");
    let _ = writeln!(s, "| | |\n|---|---|");
    let _ = writeln!(
        s,
        "| target | {} {} (`{}`) |",
        t.implementation, t.implementation_version, t.node
    );
    let _ = writeln!(
        s,
        "| target protocol | {} ({}) |",
        t.protocol_version, t.descriptor_hash
    );
    let _ = writeln!(
        s,
        "| suite | {} for protocol {} ({}) |",
        r.suite_version, r.protocol_version, r.protocol_descriptor_hash
    );
    let _ = writeln!(
        s,
        "| overall | **{}** (compliant: {}) |",
        verdict_word(r.overall),
        r.compliant
    );
    let _ = writeln!(s, "| tiers | {} |", tier_words(r));
    let _ = writeln!(
        s,
        "| cases | {} run: {} passed, {} failed, {} skipped |",
        r.total, r.passed, r.failed, r.skipped
    );
    let _ = writeln!(
        s,
        "| clause coverage | {} of {} clauses cited by the suite |",
        coverage.0, coverage.1
    );
    let _ = writeln!(s, "| seed | {} |", r.seed);
    let _ = writeln!(s, "| duration | {} ms |", r.duration_ms);
    let _ = writeln!(s, "| report CID | `{cid}` |");
    let signer = r
        .signature
        .as_ref()
        .map(|x| x.signer.clone())
        .unwrap_or_default();
    let _ = writeln!(s, "| signed by | `{signer}` |\n");
    let _ = writeln!(
        s,
        "## Sections\n\n| section | verdict | passed | failed | skipped |\n|---|---|---|---|---|"
    );
    for sec in &r.sections {
        let _ = writeln!(
            s,
            "| {} | {}{} | {} | {} | {} |",
            sec.name,
            verdict_word(sec.verdict),
            sec.reason
                .as_ref()
                .map(|x| format!(" ({x})"))
                .unwrap_or_default(),
            sec.passed,
            sec.failed,
            sec.skipped
        );
    }
    let failures: Vec<&FailureDetail> = r.sections.iter().flat_map(|x| &x.failures).collect();
    if !failures.is_empty() {
        let _ = writeln!(s, "\n## Failures\n");
        for f in failures {
            let _ = writeln!(s, "### `{}`\n", f.test_id);
            let _ = writeln!(s, "- clauses: {} ({})", f.clause_ids.join(", "), f.spec_ref);
            let _ = writeln!(s, "- expected: {}", f.expected);
            let _ = writeln!(s, "- observed: {}", f.observed);
            if let Some(c) = &f.capability {
                let _ = writeln!(
                    s,
                    "- reproduce: call `{c}` with `{}`",
                    f.payload_json.clone().unwrap_or_default()
                );
            }
            let _ = writeln!(s);
        }
    }
    let _ = writeln!(
        s,
        "\n## Cases\n\n| case | clauses | result |\n|---|---|---|"
    );
    for res in results {
        let out = match &res.outcome {
            Outcome::Pass => "pass".to_string(),
            Outcome::Fail(_) => "**FAIL**".to_string(),
            Outcome::Skip(why) => format!("skipped: {why}"),
        };
        let _ = writeln!(
            s,
            "| `{}` | {} | {} |",
            res.case.test_id,
            res.case.clauses.join(", "),
            out
        );
    }
    s
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The self-contained HTML form (no external resources).
pub fn html(
    r: &ConformanceReport,
    cid: &str,
    results: &[CaseResult],
    coverage: (usize, usize),
) -> String {
    let t = r.target.clone().unwrap_or_default();
    let mut s = String::from(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>HearthNet conformance report</title>\n<style>body{font-family:system-ui,sans-serif;max-width:70rem;margin:2rem auto;padding:0 1rem;color:#222}table{border-collapse:collapse;margin:1rem 0}td,th{border:1px solid #ccc;padding:.25rem .5rem;text-align:left;vertical-align:top}.pass{color:#176b2c}.fail{color:#b00020;font-weight:bold}.skipped{color:#666}code{font-size:.9em}</style></head><body>\n",
    );
    let _ = writeln!(s, "<h1>HearthNet conformance report</h1>");
    let _ = writeln!(s, "<table>");
    let row = |s: &mut String, k: &str, v: String| {
        let _ = writeln!(s, "<tr><th>{}</th><td>{}</td></tr>", esc(k), v);
    };
    row(
        &mut s,
        "target",
        format!(
            "{} {} (<code>{}</code>)",
            esc(&t.implementation),
            esc(&t.implementation_version),
            esc(&t.node)
        ),
    );
    row(
        &mut s,
        "suite",
        format!(
            "{} for protocol {}",
            esc(&r.suite_version),
            esc(&r.protocol_version)
        ),
    );
    let cls = if r.overall == Verdict::Pass as i32 {
        "pass"
    } else if r.overall == Verdict::Skipped as i32 {
        "skipped"
    } else {
        "fail"
    };
    row(
        &mut s,
        "overall",
        format!(
            "<span class=\"{cls}\">{}</span> (compliant: {})",
            verdict_word(r.overall),
            r.compliant
        ),
    );
    row(&mut s, "tiers", esc(&tier_words(r)));
    row(
        &mut s,
        "cases",
        format!(
            "{} run: {} passed, {} failed, {} skipped",
            r.total, r.passed, r.failed, r.skipped
        ),
    );
    row(
        &mut s,
        "clause coverage",
        format!("{} of {} clauses", coverage.0, coverage.1),
    );
    row(&mut s, "seed", r.seed.to_string());
    row(&mut s, "report CID", format!("<code>{}</code>", esc(cid)));
    let signer = r
        .signature
        .as_ref()
        .map(|x| x.signer.clone())
        .unwrap_or_default();
    row(
        &mut s,
        "signed by",
        format!("<code>{}</code>", esc(&signer)),
    );
    let _ = writeln!(
        s,
        "</table>\n<h2>Sections</h2>\n<table><tr><th>section</th><th>verdict</th><th>passed</th><th>failed</th><th>skipped</th></tr>"
    );
    for sec in &r.sections {
        let w = verdict_word(sec.verdict);
        let c = if w == "pass" {
            "pass"
        } else if w == "skipped" {
            "skipped"
        } else {
            "fail"
        };
        let _ = writeln!(
            s,
            "<tr><td>{}</td><td class=\"{c}\">{}{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&sec.name),
            w,
            sec.reason
                .as_ref()
                .map(|x| format!(" ({})", esc(x)))
                .unwrap_or_default(),
            sec.passed,
            sec.failed,
            sec.skipped
        );
    }
    let _ = writeln!(s, "</table>");
    let failures: Vec<&FailureDetail> = r.sections.iter().flat_map(|x| &x.failures).collect();
    if !failures.is_empty() {
        let _ = writeln!(s, "<h2>Failures</h2>");
        for f in failures {
            let _ = writeln!(
                s,
                "<h3><code>{}</code></h3><ul><li>clauses: {} ({})</li><li>expected: {}</li><li>observed: {}</li><li>reproduce: <code>{}</code> with <code>{}</code></li></ul>",
                esc(&f.test_id),
                esc(&f.clause_ids.join(", ")),
                esc(&f.spec_ref),
                esc(&f.expected),
                esc(&f.observed),
                esc(f.capability.as_deref().unwrap_or_default()),
                esc(f.payload_json.as_deref().unwrap_or_default())
            );
        }
    }
    let _ = writeln!(
        s,
        "<h2>Cases</h2>\n<table><tr><th>case</th><th>clauses</th><th>result</th></tr>"
    );
    for res in results {
        let (c, out) = match &res.outcome {
            Outcome::Pass => ("pass", "pass".to_string()),
            Outcome::Fail(_) => ("fail", "FAIL".to_string()),
            Outcome::Skip(why) => ("skipped", format!("skipped: {why}")),
        };
        let _ = writeln!(
            s,
            "<tr><td><code>{}</code></td><td>{}</td><td class=\"{c}\">{}</td></tr>",
            esc(&res.case.test_id),
            esc(&res.case.clauses.join(", ")),
            esc(&out)
        );
    }
    s.push_str("</table>\n</body></html>\n");
    s
}

/// Writes `report.json` (authoritative proto3 JSON), `report.binpb` (the
/// signed bytes the CID names), `report.md` and `report.html` into `dir`.
pub fn write(
    dir: &Path,
    report: &ConformanceReport,
    bytes: &[u8],
    cid: &str,
    results: &[CaseResult],
    coverage: (usize, usize),
) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let json: serde_json::Value = serde_json::from_str(&hearthnet_sdk::json::to_json(report))
        .map_err(std::io::Error::other)?;
    let pretty = serde_json::to_string_pretty(&json).map_err(std::io::Error::other)?;
    std::fs::write(dir.join("report.json"), pretty + "\n")?;
    std::fs::write(dir.join("report.binpb"), bytes)?;
    std::fs::write(dir.join("report.cid"), format!("{cid}\n"))?;
    std::fs::write(
        dir.join("report.md"),
        markdown(report, cid, results, coverage),
    )?;
    std::fs::write(
        dir.join("report.html"),
        html(report, cid, results, coverage),
    )?;
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn sec(name: &str, passed: u64, failed: u64) -> SectionResult {
        SectionResult {
            name: name.into(),
            group: group_of(name).unwrap() as i32,
            total: passed + failed,
            passed,
            failed,
            verdict: if failed > 0 {
                Verdict::Fail
            } else if passed == 0 {
                Verdict::Skipped
            } else {
                Verdict::Pass
            } as i32,
            ..Default::default()
        }
    }

    #[test]
    fn verdicts_follow_conf_001() {
        let bronze = [
            sec("core/identity", 3, 0),
            sec("core/transport", 2, 0),
            sec("core/bus", 9, 0),
        ];
        let (o, c, t) = verdicts(&bronze, false);
        assert_eq!((o, c), (Verdict::Pass, true));
        // Decision 0097: events and files skipped (not advertised) is not Silver.
        assert_eq!(t, vec![ConformanceTier::Bronze]);
        let mut core_fail = bronze.to_vec();
        core_fail.push(sec("core/files", 3, 1));
        let (o, c, t) = verdicts(&core_fail, false);
        assert_eq!((o, c), (Verdict::Fail, false));
        assert_eq!(t, vec![ConformanceTier::Bronze]);
        let mut svc_fail = bronze.to_vec();
        svc_fail.push(sec("services/market", 3, 1));
        assert_eq!(verdicts(&svc_fail, false).0, Verdict::Partial);
        let mut exp_fail = bronze.to_vec();
        exp_fail.push(sec("experimental/tensor", 0, 2));
        exp_fail.push(sec("operability/restart", 0, 1));
        assert_eq!(verdicts(&exp_fail, false).0, Verdict::Pass);
        let (o, _, t) = verdicts(&[sec("core/identity", 0, 0)], false);
        assert_eq!((o, t), (Verdict::Skipped, vec![]));
        let mut silver = bronze.to_vec();
        silver.push(sec("core/events", 2, 0));
        silver.push(sec("core/files", 5, 0));
        silver.push(sec("core/llm", 0, 0));
        silver.push(sec("services/market", 0, 0));
        let all = vec![
            ConformanceTier::Bronze,
            ConformanceTier::Silver,
            ConformanceTier::Gold,
        ];
        assert_eq!(verdicts(&silver, false).2, all[..2]);
        // Gold: operability ran and passed; federation counts when advertised.
        let mut gold = silver.clone();
        gold.push(sec("operability/restart", 1, 0));
        gold.push(sec("operability/metrics", 0, 0));
        assert_eq!(verdicts(&gold, false).2, all);
        assert_eq!(verdicts(&gold, true).2, all[..2]);
        gold.push(sec("federation", 4, 0));
        assert_eq!(verdicts(&gold, true).2, all);
        // A failed operability section costs Gold but not `overall`.
        gold.push(sec("operability/shutdown", 0, 1));
        let (o, _, t) = verdicts(&gold, true);
        assert_eq!((o, t), (Verdict::Pass, all[..2].to_vec()));
        // A failed advertised service costs Silver.
        let mut svc = silver.clone();
        svc.push(sec("services/chat", 1, 1));
        assert_eq!(verdicts(&svc, false).2, all[..1]);
    }

    #[test]
    fn section_names() {
        assert_eq!(group_of("core/bus"), Some(SectionGroup::Core));
        assert_eq!(group_of("federation"), Some(SectionGroup::Federation));
        assert_eq!(group_of("services/llm"), Some(SectionGroup::Services));
        assert_eq!(group_of("core"), None);
        assert_eq!(group_of("core/a/b"), None);
        assert_eq!(group_of("misc/x"), None);
    }
}
