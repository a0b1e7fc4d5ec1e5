//! `hearthnet-conformance`: the black-box conformance runner (X09). It
//! certifies any HearthNet implementation over the wire: a pre-flight reads
//! what the target speaks and advertises, the cases for what it advertises
//! run, and a signed, content-addressed report is written as JSON, Markdown
//! and HTML (`protocol/spec/conformance.md`).

mod cases;
mod catalogue {
    include!(concat!(env!("OUT_DIR"), "/catalogue.rs"));
}
mod report;
mod run;
mod scenarios;
mod target;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand, ValueEnum};
use hearthnet_sdk::identity::SecretKey;
use hearthnet_sdk::proto::hearthnet::conformance::v1::ConformanceReport;
use hearthnet_sdk::wkt::Timestamp;
use prost::Message;

use crate::cases::Case;
use crate::run::{CaseResult, Keys, Outcome};
use crate::target::Target;

/// Certifies HearthNet implementations over the wire.
#[derive(Parser)]
#[command(name = "hearthnet-conformance", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// List the cases (test id, clauses, capability) of the selection.
    List {
        #[command(flatten)]
        select: Select,
    },
    /// Run the suite against a target and write the report.
    Run(Box<RunArgs>),
    /// Check a report's signature, binding and verdicts (a report directory or its report.json).
    Verify {
        /// `report.json`, or the directory holding it.
        report: PathBuf,
    },
    /// Print the NodeID the runner calls as for a seed (grant it trust on a target you run yourself).
    Caller {
        /// Seed of the run.
        #[arg(long, default_value_t = hearthnet_sdk::constants::CONFORMANCE_DEFAULT_SEED as u64)]
        seed: u64,
    },
}

#[derive(clap::Args, Default)]
struct Select {
    /// Run only cases whose test id (or section) matches one of these globs.
    #[arg(long)]
    only: Vec<String>,
    /// Skip cases whose test id (or section) matches one of these globs.
    #[arg(long)]
    skip: Vec<String>,
    /// Only these groups of sections.
    #[arg(long, value_enum)]
    level: Vec<Level>,
    /// Only the sections a tier needs (decision 0097; bronze: core/identity, core/transport, core/bus; silver: every core and service section; gold: those, operability and federation).
    #[arg(long, value_enum)]
    tier: Option<Tier>,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Level {
    Core,
    Services,
    Federation,
    Experimental,
    Operability,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Tier {
    Bronze,
    Silver,
    Gold,
}

#[derive(clap::Args)]
struct RunArgs {
    /// The target: grpc://HOST:PORT or http://HOST:PORT (one port serves both bindings, decision 0042).
    #[arg(long, conflicts_with = "launch", required_unless_present = "launch")]
    target: Option<String>,
    /// Launch the target with `sh -c COMMAND`; `{port}`, `{data}` and `{caller}` are replaced by a free port, an empty data directory and the runner's caller NodeID.
    #[arg(long)]
    launch: Option<String>,
    /// Restart a launched target on an empty data directory before each section.
    #[arg(long, requires = "launch")]
    reset_between_sections: bool,
    /// Seed of the run (keys and inputs; CONF-008).
    #[arg(long, default_value_t = hearthnet_sdk::constants::CONFORMANCE_DEFAULT_SEED as u64)]
    seed: u64,
    /// Known-failing list (TOML: [[case]] test_id, reason).
    #[arg(long)]
    known_failing: Option<PathBuf>,
    /// Output directory.
    #[arg(long, default_value = hearthnet_sdk::constants::CONFORMANCE_DEFAULT_OUTPUT_DIR)]
    out: PathBuf,
    /// Key file the report is signed with (created when missing; default: runner.key in the user's data directory).
    #[arg(long)]
    key: Option<PathBuf>,
    /// Key file of the caller of every case, instead of the one derived from
    /// the seed (a target that trusts the caller for one run uses a fresh key).
    #[arg(long)]
    caller_key: Option<PathBuf>,
    /// Expect this tier as the highest reached; the run fails when the target
    /// reaches less or more (a CI pin that notices drift either way).
    #[arg(long, value_enum)]
    expect_tier: Option<Tier>,
    #[command(flatten)]
    select: Select,
}

fn glob_set(globs: &[String]) -> Result<globset::GlobSet, String> {
    let mut b = globset::GlobSetBuilder::new();
    for g in globs {
        b.add(globset::Glob::new(g).map_err(|e| format!("--only/--skip {g:?}: {e}"))?);
    }
    b.build().map_err(|e| e.to_string())
}

fn select(all: Vec<Case>, s: &Select) -> Result<Vec<Case>, String> {
    let only = glob_set(&s.only)?;
    let skip = glob_set(&s.skip)?;
    let hit =
        |set: &globset::GlobSet, c: &Case| set.is_match(&c.test_id) || set.is_match(&c.section);
    Ok(all
        .into_iter()
        .filter(|c| s.only.is_empty() || hit(&only, c))
        .filter(|c| !hit(&skip, c))
        .filter(|c| {
            let group = c.section.split('/').next().unwrap_or_default();
            s.level.is_empty()
                || s.level.iter().any(|l| {
                    group
                        == match l {
                            Level::Core => "core",
                            Level::Services => "services",
                            Level::Federation => "federation",
                            Level::Experimental => "experimental",
                            Level::Operability => "operability",
                        }
                })
        })
        .filter(|c| match s.tier {
            None => true,
            Some(Tier::Gold) => !c.section.starts_with("experimental/"),
            Some(Tier::Bronze) => {
                ["core/identity", "core/transport", "core/bus"].contains(&c.section.as_str())
            }
            Some(Tier::Silver) => {
                c.section.starts_with("core/") || c.section.starts_with("services/")
            }
        })
        .collect())
}

fn selection_words(s: &Select) -> Vec<String> {
    let mut out: Vec<String> = s.only.clone();
    out.extend(s.skip.iter().map(|g| format!("!{g}")));
    out
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct KnownFailing {
    #[serde(rename = "case", default)]
    cases: Vec<KnownCase>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct KnownCase {
    test_id: String,
    reason: String,
}

fn known_failing(path: &Path, all: &[Case]) -> Result<BTreeMap<String, String>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let k: KnownFailing = toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut out = BTreeMap::new();
    for c in k.cases {
        if !all.iter().any(|x| x.test_id == c.test_id) {
            return Err(format!("{}: no case {}", path.display(), c.test_id));
        }
        if c.reason.trim().is_empty() {
            return Err(format!("{}: {} needs a reason", path.display(), c.test_id));
        }
        out.insert(c.test_id, c.reason);
    }
    Ok(out)
}

fn report_key(path: Option<PathBuf>) -> Result<SecretKey, String> {
    let path = path.unwrap_or_else(|| {
        let base = std::env::var_os("XDG_DATA_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
            .unwrap_or_else(|| PathBuf::from("."));
        base.join("hearthnet-conformance/runner.key")
    });
    if path.exists() {
        return SecretKey::load(&path).map_err(|e| format!("{}: {e}", path.display()));
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    let key = SecretKey::generate().map_err(|e| e.to_string())?;
    key.save(&path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(key)
}

async fn run_suite(args: RunArgs) -> Result<ExitCode, String> {
    let all = cases::load().map_err(|e| e.to_string())?;
    let known = match &args.known_failing {
        Some(p) => known_failing(p, &all)?,
        None => BTreeMap::new(),
    };
    let selected = select(all, &args.select)?;
    let key = report_key(args.key.clone())?;
    let mut keys = Keys::from_seed(args.seed);
    if let Some(p) = &args.caller_key {
        keys.caller = SecretKey::load(p).map_err(|e| format!("{}: {e}", p.display()))?;
    }
    std::fs::create_dir_all(&args.out).map_err(|e| format!("{}: {e}", args.out.display()))?;
    let started = Instant::now();
    let ran_at = Timestamp::now();
    let mut target = match (&args.target, &args.launch) {
        (Some(url), _) => Target::at(url).map_err(|e| e.to_string())?,
        (None, Some(cmd)) => {
            let log = args.out.join("target.log");
            let _ = std::fs::remove_file(&log);
            Target::launch(cmd, &keys.caller.node_id().to_string(), &log)
                .await
                .map_err(|e| e.to_string())?
        }
        (None, None) => return Err("give --target or --launch".into()),
    };
    eprintln!("target {}: waiting for it to answer", target.url());
    target
        .wait_ready(|| run::probe(&keys))
        .await
        .map_err(|e| e.to_string())?;
    let mut pre = match run::preflight(&target, &keys).await {
        Ok(p) => p,
        Err(e @ run::PreflightError::VersionUnsupported { .. }) => {
            eprintln!("{e}");
            return Ok(ExitCode::from(3));
        }
        Err(e) => return Err(e.to_string()),
    };
    eprintln!(
        "target {} {} ({}), protocol {} (speaks {}), {} capabilities advertised; {} cases selected",
        pre.describe.implementation,
        pre.describe.implementation_version,
        pre.node,
        pre.describe.protocol_version,
        pre.versions.join(", "),
        pre.advertised.len(),
        selected.len()
    );
    let mut results: Vec<CaseResult> = Vec::with_capacity(selected.len());
    let mut section = String::new();
    for case in &selected {
        if case.section != section {
            if !section.is_empty() && args.reset_between_sections {
                target.restart(true).await.map_err(|e| e.to_string())?;
                target
                    .wait_ready(|| run::probe(&keys))
                    .await
                    .map_err(|e| e.to_string())?;
                pre = run::preflight(&target, &keys)
                    .await
                    .map_err(|e| e.to_string())?;
            }
            section = case.section.clone();
            eprintln!("section {section}");
        }
        let r = if let Some(s) = scenarios::find(&case.test_id) {
            scenarios::run(s, &mut target, &keys, &pre, case).await
        } else {
            run::run_case(&target, &keys, &pre, case).await
        };
        if let Outcome::Fail(f) = &r.outcome {
            eprintln!(
                "  FAIL {}: expected {}, observed {}",
                case.test_id, f.expected, f.observed
            );
        }
        results.push(r);
    }
    let stopped_clean = target.stop(Duration::from_secs(10)).await.unwrap_or(false);
    if target.is_launched() && !stopped_clean {
        eprintln!("note: the launched target did not exit within 10 s of SIGTERM");
    }
    let info = report::RunInfo {
        preflight: &pre,
        ran_at,
        duration_ms: started.elapsed().as_millis() as u64,
        seed: args.seed,
        selection: selection_words(&args.select),
    };
    let (report, bytes, cid) = report::build(&results, &known, &info, &key);
    let all_cases: Vec<Case> = results.iter().map(|r| r.case.clone()).collect();
    let (covered, total) = report::coverage(&all_cases);
    report::write(
        &args.out,
        &report,
        &bytes,
        &cid,
        &results,
        (covered.len(), total),
    )
    .map_err(|e| format!("{}: {e}", args.out.display()))?;

    // CONF-012/013: the exit status.
    let mut status_ok = true;
    for r in &results {
        let listed = known.contains_key(&r.case.test_id);
        match (&r.outcome, listed) {
            (Outcome::Fail(_), false) => status_ok = false,
            (Outcome::Pass, true) => {
                eprintln!(
                    "known-failing case {} passed: take it off the list",
                    r.case.test_id
                );
                status_ok = false;
            }
            _ => {}
        }
    }
    let tiers = report
        .tiers
        .iter()
        .filter_map(|t| {
            hearthnet_sdk::proto::hearthnet::conformance::v1::ConformanceTier::try_from(*t).ok()
        })
        .map(|t| {
            t.as_str_name()
                .trim_start_matches("CONFORMANCE_TIER_")
                .to_lowercase()
        })
        .collect::<Vec<_>>();
    if let Some(want) = args.expect_tier {
        let name = match want {
            Tier::Bronze => "bronze",
            Tier::Silver => "silver",
            Tier::Gold => "gold",
        };
        if tiers.last().map(String::as_str) != Some(name) {
            eprintln!("expected highest tier {name}, reached {tiers:?}");
            status_ok = false;
        }
    }
    hearthnet_sdk::say!(
        "{}: {} cases, {} passed, {} failed, {} skipped; overall {}; tiers {}; clause coverage {}/{}; {} ms",
        args.out.display(),
        report.total,
        report.passed,
        report.failed,
        report.skipped,
        hearthnet_sdk::proto::hearthnet::conformance::v1::Verdict::try_from(report.overall)
            .map(|v| v
                .as_str_name()
                .trim_start_matches("VERDICT_")
                .to_lowercase())
            .unwrap_or_default(),
        if tiers.is_empty() {
            "none".to_string()
        } else {
            tiers.join(",")
        },
        covered.len(),
        total,
        report.duration_ms
    );
    hearthnet_sdk::say!("report {cid}");
    Ok(if status_ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn verify_report(path: &Path) -> Result<(), String> {
    let file = if path.is_dir() {
        path.join("report.json")
    } else {
        path.to_path_buf()
    };
    let text = std::fs::read_to_string(&file).map_err(|e| format!("{}: {e}", file.display()))?;
    let value: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", file.display()))?;
    hearthnet_sdk::validate::validate_message_value(
        "hearthnet.conformance.v1.ConformanceReport",
        &value,
    )
    .map_err(|e| format!("{}: not a ConformanceReport: {e}", file.display()))?;
    let report: ConformanceReport =
        hearthnet_sdk::json::from_json(&text).map_err(|e| format!("{}: {e}", file.display()))?;
    let (cid, signer) = report::verify(&report).map_err(|e| format!("{}: {e}", file.display()))?;
    if let Some(dir) = file.parent() {
        if let Ok(bytes) = std::fs::read(dir.join("report.binpb"))
            && bytes != report.encode_to_vec()
        {
            return Err("report.binpb differs from report.json".into());
        }
        if let Ok(c) = std::fs::read_to_string(dir.join("report.cid"))
            && c.trim() != cid
        {
            return Err(format!(
                "report.cid says {}, the report's CID is {cid}",
                c.trim()
            ));
        }
    }
    if report.suite_version.split('.').next() != report::SUITE_VERSION.split('.').next() {
        eprintln!(
            "note: suite {} is not comparable with this runner's suite {} (CONF-004)",
            report.suite_version,
            report::SUITE_VERSION
        );
    }
    let target = report.target.clone().unwrap_or_default();
    hearthnet_sdk::say!(
        "ok {cid}: signed by {signer}{}; target {} {} ({})",
        if signer.to_string() == target.node {
            " (self-signed)"
        } else {
            ""
        },
        target.implementation,
        target.implementation_version,
        target.node
    );
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::List { select: s } => {
            let all = match cases::load() {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(2);
                }
            };
            let picked = match select(all, &s) {
                Ok(p) => p,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(2);
                }
            };
            for c in &picked {
                hearthnet_sdk::say!(
                    "{}\t{}\t{}\t{}",
                    c.test_id,
                    c.clauses.join(","),
                    c.capability,
                    c.summary
                );
            }
            let (covered, total) = report::coverage(&picked);
            eprintln!(
                "{} cases; clause coverage {}/{}",
                picked.len(),
                covered.len(),
                total
            );
            ExitCode::SUCCESS
        }
        Command::Caller { seed } => {
            hearthnet_sdk::say!("{}", Keys::from_seed(seed).caller.node_id());
            ExitCode::SUCCESS
        }
        Command::Verify { report } => match verify_report(&report) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(1)
            }
        },
        Command::Run(args) => {
            let rt = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(2);
                }
            };
            match rt.block_on(run_suite(*args)) {
                Ok(code) => code,
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::from(2)
                }
            }
        }
    }
}
