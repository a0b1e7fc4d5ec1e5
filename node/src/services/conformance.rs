//! Self-certification and the implementation registry (M32, decision 0035).
//!
//! - `protocol.conformance.report` (PROTO-003) runs the installed
//!   `hearthnet-conformance` against this node over loopback, re-signs the
//!   report as the node (CONF-002), stores it by CID, lists it in the node's
//!   own registry entry and appends `protocol.conformance.reported` to the
//!   community log. Without a suite it answers with a `skipped` report whose
//!   reason is `suite_not_installed`.
//! - `protocol.registry.list` (PROTO-004) and `protocol.registry.announce`
//!   (PROTO-005) keep the implementations this node knows, in an embedded
//!   database under the data directory.
//!
//! The suite is found at `$HEARTHNET_CONFORMANCE_BIN`, next to the running
//! `hearthnet` binary, or on `PATH`. Each run gets a fresh caller key, which
//! is granted `trusted` for the run only (a seed-derived key is public). The
//! community log's cases are skipped (that key is no member of the live
//! community, and the node does not make it one), and so are the restart and
//! shutdown scenarios (the suite cannot restart a node it did not launch). The input's `fast`
//! needs no work here: the suite already skips what the node does not
//! advertise.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use fjall::{Database, Keyspace, KeyspaceCreateOptions};
use futures::FutureExt;
use futures::future::BoxFuture;
use prost::Message;

use hearthnet_sdk::identity::{NodeId, SecretKey};
use hearthnet_sdk::proto::hearthnet::common::v1::ErrorCode;
use hearthnet_sdk::proto::hearthnet::conformance::v1 as conf;
use hearthnet_sdk::proto::hearthnet::protocol::v1 as proto;
use hearthnet_sdk::records;
use hearthnet_sdk::wkt::Timestamp;

use crate::bus::{Offer, Request, Service, Sink, Trust, WeakBus};
use crate::error::CallError;
use crate::events::EventLog;

/// Environment variable naming the conformance suite binary.
pub const SUITE_ENV: &str = "HEARTHNET_CONFORMANCE_BIN";
/// The implementation name this node reports.
pub const IMPLEMENTATION: &str = "hearthnet-rs";
/// Most entries the registry keeps (PROTO-004).
const MAX_ENTRIES: usize = 4096;
/// Most report references one entry carries.
const MAX_REPORTS: usize = 16;
/// Cases a self-run leaves out: the community log's, since the suite's caller
/// is not a member of the live community (and pushing would write into it).
const SELF_RUN_SKIP: &[&str] = &["core/events/*"];

/// Why the registry store failed.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The embedded database.
    #[error("registry store: {0}")]
    Store(#[from] fjall::Error),
    /// A directory cannot be created.
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
}

impl From<RegistryError> for CallError {
    fn from(e: RegistryError) -> Self {
        CallError::internal(e.to_string())
    }
}

/// The service: a cheap handle on its state.
#[derive(Debug, Clone)]
pub struct ConformanceService(Arc<Inner>);

struct Inner {
    bus: WeakBus,
    /// The node's key: its own reports are signed with it (CONF-002).
    key: Arc<SecretKey>,
    url: String,
    dir: PathBuf,
    log: Option<EventLog>,
    /// Opened on first use: most nodes never call these capabilities, so
    /// start-up opens no database for them.
    store: Mutex<Option<Arc<Store>>>,
}

/// The registry's embedded database.
struct Store {
    db: Database,
    entries: Keyspace,
    reports: Keyspace,
}

impl Drop for Store {
    fn drop(&mut self) {
        let _ = self.db.persist(fjall::PersistMode::SyncAll);
    }
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConformanceService")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

impl ConformanceService {
    /// The service keeping its registry under `dir` (the database is opened
    /// on first use); `url` is where the suite reaches this node (loopback).
    pub fn new(dir: &Path, bus: &crate::bus::Bus, url: String, log: Option<EventLog>) -> Arc<Self> {
        Arc::new(Self(Arc::new(Inner {
            bus: bus.downgrade(),
            key: bus.key().clone(),
            url,
            dir: dir.to_path_buf(),
            log,
            store: Mutex::new(None),
        })))
    }
}

impl Inner {
    /// The registry's database, opened on the first call that needs it.
    fn store(&self) -> Result<Arc<Store>, RegistryError> {
        let mut slot = self.store.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = &*slot {
            return Ok(s.clone());
        }
        let dir = self.dir.join("db");
        std::fs::create_dir_all(&dir)
            .map_err(|e| RegistryError::Io(dir.display().to_string(), e))?;
        let db = crate::storage::open_database(&dir)?;
        let entries = db.keyspace("entries", KeyspaceCreateOptions::default)?;
        let reports = db.keyspace("reports", KeyspaceCreateOptions::default)?;
        let s = Arc::new(Store {
            db,
            entries,
            reports,
        });
        *slot = Some(s.clone());
        Ok(s)
    }

    fn me(&self) -> NodeId {
        self.key.node_id()
    }

    fn entry_key(name: &str, node: &str) -> Vec<u8> {
        [name.as_bytes(), b"\0", node.as_bytes()].concat()
    }

    fn own_entry(&self) -> Result<proto::RegistryEntry, RegistryError> {
        let key = Self::entry_key(IMPLEMENTATION, &self.me().to_string());
        if let Some(v) = self.store()?.entries.get(&key)?
            && let Ok(e) = proto::RegistryEntry::decode(v.as_ref())
        {
            return Ok(e);
        }
        Ok(proto::RegistryEntry {
            descriptor: Some(own_descriptor()),
            node: self.me().to_string(),
            source: proto::RegistrySource::Local as i32,
            announced_at: Some(Timestamp::now()),
            reports: Vec::new(),
        })
    }

    fn put_entry(&self, e: &proto::RegistryEntry) -> Result<(), RegistryError> {
        let name = e.descriptor.as_ref().map_or("", |d| d.name.as_str());
        self.store()?
            .entries
            .insert(Self::entry_key(name, &e.node), e.encode_to_vec())?;
        Ok(())
    }

    fn list(
        &self,
        input: &proto::ListRegistryInput,
    ) -> Result<Vec<proto::RegistryEntry>, RegistryError> {
        let own_key = Self::entry_key(IMPLEMENTATION, &self.me().to_string());
        let mut out = vec![self.own_entry()?];
        for item in self.store()?.entries.iter() {
            let (k, v) = item.into_inner()?;
            if k.as_ref() == own_key.as_slice() {
                continue;
            }
            // A record that does not decode is skipped, never served.
            if let Ok(e) = proto::RegistryEntry::decode(v.as_ref()) {
                out.push(e);
            }
        }
        out.retain(|e| {
            let major_ok = input.protocol_major.is_none_or(|m| {
                e.descriptor.as_ref().is_some_and(|d| {
                    d.protocol_versions
                        .iter()
                        .any(|v| v.split('.').next().and_then(|x| x.parse().ok()) == Some(m))
                })
            });
            let passing_ok = !input.passing_only
                || e.reports
                    .iter()
                    .any(|r| r.overall == conf::Verdict::Pass as i32);
            major_ok && passing_ok
        });
        out.truncate(MAX_ENTRIES);
        Ok(out)
    }

    fn announce(
        &self,
        caller: &NodeId,
        input: proto::AnnounceRegistryInput,
    ) -> Result<proto::RegistryEntry, CallError> {
        let d = input.descriptor.clone().unwrap_or_default();
        let versions_ok = !d.protocol_versions.is_empty()
            && d.protocol_versions.iter().all(|v| {
                let parts: Vec<&str> = v.split('.').collect();
                parts.len() == 3 && parts.iter().all(|p| p.parse::<u32>().is_ok())
            });
        if d.name.trim().is_empty()
            || d.name.contains('\0')
            || d.version.trim().is_empty()
            || !versions_ok
        {
            return Err(CallError::new(
                ErrorCode::ProtocolDescriptorInvalid,
                "the descriptor needs a name, a version and protocol versions as MAJOR.MINOR.PATCH",
            ));
        }
        if input.reports.len() > MAX_REPORTS {
            return Err(CallError::bad_request(format!(
                "at most {MAX_REPORTS} report references, not {}",
                input.reports.len()
            )));
        }
        records::verify_registry_announce(caller, &input).map_err(|e| {
            CallError::new(
                ErrorCode::InvalidSignature,
                format!("announcement signature: {e}"),
            )
        })?;
        let key = Self::entry_key(&d.name, &caller.to_string());
        if *caller == self.me() {
            return Err(CallError::bad_request(
                "this node's own entry is kept by the node",
            ));
        }
        let store = self.store()?;
        if store
            .entries
            .get(&key)
            .map_err(RegistryError::from)?
            .is_none()
            && store.entries.len().map_err(RegistryError::from)? >= MAX_ENTRIES
        {
            return Err(CallError::new(
                ErrorCode::CapacityExceeded,
                format!("the registry holds {MAX_ENTRIES} entries"),
            ));
        }
        let entry = proto::RegistryEntry {
            descriptor: Some(d),
            node: caller.to_string(),
            source: proto::RegistrySource::Peer as i32,
            announced_at: Some(Timestamp::now()),
            reports: input.reports,
        };
        self.put_entry(&entry)?;
        if let Some(log) = &self.log {
            log.publish_local(
                "protocol.registry.updated",
                proto::RegistryUpdatedEvent {
                    entry: Some(entry.clone()),
                }
                .encode_to_vec(),
            );
        }
        Ok(entry)
    }

    async fn run_report(
        &self,
        input: proto::ReportConformanceInput,
        deadline: Instant,
    ) -> Result<(conf::ConformanceReport, String), CallError> {
        let seed = input
            .seed
            .unwrap_or(hearthnet_sdk::constants::CONFORMANCE_DEFAULT_SEED as u64);
        if let Some(g) = input
            .sections
            .iter()
            .find(|g| g.trim().is_empty() || g.starts_with('-'))
        {
            return Err(CallError::bad_request(format!("section glob {g:?}")));
        }
        let Some(suite) = find_suite() else {
            return Ok(self.skipped(seed, "suite_not_installed"));
        };
        let bus = self
            .bus
            .upgrade()
            .ok_or_else(|| CallError::internal("the node is shutting down"))?;
        let run_dir = self.dir.join("runs").join(ulid::Ulid::new().to_string());
        std::fs::create_dir_all(&run_dir)
            .map_err(|e| CallError::internal(format!("{}: {e}", run_dir.display())))?;
        // A fresh caller: anyone can derive the seed's caller key.
        let caller = SecretKey::generate()
            .and_then(|k| k.save(&run_dir.join("caller.key")).map(|()| k.node_id()))
            .map_err(|e| CallError::internal(format!("caller key: {e}")))?;
        let mut args: Vec<String> = vec![
            "run".into(),
            "--target".into(),
            self.url.clone(),
            "--seed".into(),
            seed.to_string(),
            "--out".into(),
            run_dir.display().to_string(),
            "--key".into(),
            run_dir.join("runner.key").display().to_string(),
            "--caller-key".into(),
            run_dir.join("caller.key").display().to_string(),
        ];
        for g in &input.sections {
            args.extend(["--only".into(), g.clone()]);
        }
        let mut skips: Vec<&str> = SELF_RUN_SKIP.to_vec();
        if input.skip_experimental {
            skips.push("experimental/*");
        }
        if input.skip_operability {
            skips.push("operability/*");
        }
        for s in skips {
            args.extend(["--skip".into(), s.into()]);
        }
        let outcome = {
            let _grant = bus.grant(&caller, Trust::Trusted);
            run_suite(&suite, &args, deadline).await
        };
        let result = match outcome {
            // 0: passed; 1: failures (the report says which).
            Ok(0 | 1) => std::fs::read(run_dir.join("report.binpb"))
                .map_err(|e| failed(format!("the suite wrote no report: {e}")))
                .and_then(|b| {
                    conf::ConformanceReport::decode(b.as_slice())
                        .map_err(|e| failed(format!("the suite's report does not decode: {e}")))
                }),
            Ok(3) => Err(CallError::new(
                ErrorCode::ProtocolVersionUnsupported,
                "the installed suite tests another protocol major",
            )),
            Ok(2) => Err(CallError::bad_request(
                "the suite refused the run parameters",
            )),
            Ok(code) => Err(failed(format!("the suite exited with status {code}"))),
            Err(e) => Err(e),
        };
        let _ = std::fs::remove_dir_all(&run_dir);
        let mut report = result?;
        records::verify_conformance_report(&report)
            .map_err(|e| failed(format!("the suite's report does not verify: {e}")))?;
        if let Some(want) = &input.suite_version
            && *want != report.suite_version
        {
            return Ok(self.skipped(seed, "suite_not_installed"));
        }
        // CONF-002: the node's own report is signed by the node.
        let (bytes, cid) = records::sign_conformance_report(&self.key, &mut report);
        self.keep(&report, bytes, &cid)?;
        Ok((report, cid))
    }

    /// A report of a run that could not happen: `VERDICT_SKIPPED`, signed by
    /// the node (PROTO-003), with its CID.
    fn skipped(&self, seed: u64, reason: &str) -> (conf::ConformanceReport, String) {
        let mut report = conf::ConformanceReport {
            schema_version: 1,
            suite_version: String::new(),
            protocol_version: hearthnet_sdk::PROTOCOL_VERSION.into(),
            protocol_descriptor_hash: hearthnet_sdk::registry::DESCRIPTOR_HASH.into(),
            target: Some(conf::TargetSelfDescription {
                implementation: IMPLEMENTATION.into(),
                implementation_version: env!("CARGO_PKG_VERSION").into(),
                protocol_version: hearthnet_sdk::PROTOCOL_VERSION.into(),
                descriptor_hash: hearthnet_sdk::registry::DESCRIPTOR_HASH.into(),
                node: self.me().to_string(),
                ..Default::default()
            }),
            runner: Some(conf::RunnerInfo {
                name: IMPLEMENTATION.into(),
                version: env!("CARGO_PKG_VERSION").into(),
                commit: None,
            }),
            ran_at: Some(Timestamp::now()),
            seed,
            overall: conf::Verdict::Skipped as i32,
            sections: vec![conf::SectionResult {
                name: "core/identity".into(),
                group: conf::SectionGroup::Core as i32,
                verdict: conf::Verdict::Skipped as i32,
                reason: Some(reason.into()),
                ..Default::default()
            }],
            ..Default::default()
        };
        let (_, cid) = records::sign_conformance_report(&self.key, &mut report);
        (report, cid)
    }

    /// Stores a report, lists it first in the node's own entry and appends
    /// `protocol.conformance.reported` to the community log.
    fn keep(
        &self,
        report: &conf::ConformanceReport,
        bytes: Vec<u8>,
        cid: &str,
    ) -> Result<(), CallError> {
        self.store()?
            .reports
            .insert(cid, bytes)
            .map_err(RegistryError::from)?;
        let reference = conf::ReportRef {
            suite_version: report.suite_version.clone(),
            protocol_version: report.protocol_version.clone(),
            report_cid: cid.to_string(),
            overall: report.overall,
            ran_at: report.ran_at,
        };
        let mut own = self.own_entry()?;
        own.descriptor = Some(own_descriptor());
        own.announced_at = Some(Timestamp::now());
        own.reports.insert(0, reference.clone());
        own.reports.truncate(MAX_REPORTS);
        self.put_entry(&own)?;
        if let Some(log) = &self.log {
            let event = proto::ConformanceReportedEvent {
                report: Some(reference),
                passed: report.passed,
                failed: report.failed,
                skipped: report.skipped,
            };
            if let Err(e) = log.append("protocol.conformance.reported", event.encode_to_vec()) {
                tracing::warn!(error = %e, "protocol.conformance.reported was not logged");
            }
        }
        Ok(())
    }

    async fn serve(&self, req: Request) -> Result<Vec<u8>, CallError> {
        let started = Instant::now();
        let ms = || started.elapsed().as_millis() as u64;
        match req.capability.name {
            "protocol.conformance.report" => {
                let r: proto::ReportConformanceRequest = req.decode()?;
                let (report, cid) = self
                    .run_report(r.input.unwrap_or_default(), req.deadline)
                    .await?;
                Ok(proto::ReportConformanceResponse {
                    output: Some(proto::ReportConformanceOutput {
                        report_cid: cid,
                        passed: report.passed,
                        failed: report.failed,
                        skipped: report.skipped,
                        total: report.total,
                        overall: report.overall,
                        report: Some(report),
                    }),
                    meta: Some(proto::ReportConformanceMeta { ms: ms() }),
                }
                .encode_to_vec())
            }
            "protocol.registry.list" => {
                let r: proto::ListRegistryRequest = req.decode()?;
                let entries = self.list(&r.input.unwrap_or_default())?;
                Ok(proto::ListRegistryResponse {
                    output: Some(proto::ListRegistryOutput { entries }),
                    meta: Some(proto::ListRegistryMeta { ms: ms() }),
                }
                .encode_to_vec())
            }
            "protocol.registry.announce" => {
                let r: proto::AnnounceRegistryRequest = req.decode()?;
                let entry = self.announce(&req.caller, r.input.unwrap_or_default())?;
                Ok(proto::AnnounceRegistryResponse {
                    output: Some(proto::AnnounceRegistryOutput { entry: Some(entry) }),
                    meta: Some(proto::AnnounceRegistryMeta { ms: ms() }),
                }
                .encode_to_vec())
            }
            other => Err(CallError::new(
                ErrorCode::NotFound,
                format!("the conformance service does not serve {other}"),
            )),
        }
    }
}

fn failed(message: String) -> CallError {
    CallError::new(ErrorCode::ConformanceFailed, message)
}

fn own_descriptor() -> proto::ImplementationDescriptor {
    proto::ImplementationDescriptor {
        name: IMPLEMENTATION.into(),
        vendor: "hearthnet".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        protocol_versions: vec![hearthnet_sdk::PROTOCOL_VERSION.into()],
        homepage_url: None,
        contact: None,
    }
}

/// `$HEARTHNET_CONFORMANCE_BIN`, else `hearthnet-conformance` next to this
/// binary, else on `PATH`.
fn find_suite() -> Option<PathBuf> {
    const NAME: &str = "hearthnet-conformance";
    if let Some(p) = std::env::var_os(SUITE_ENV) {
        let p = PathBuf::from(p);
        return p.is_file().then_some(p);
    }
    let sibling = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(|d| d.join(NAME)));
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join(NAME));
    sibling.into_iter().chain(on_path).find(|p| p.is_file())
}

fn remaining(deadline: Instant) -> std::time::Duration {
    deadline.saturating_duration_since(Instant::now())
}

/// Runs the suite; its exit status. Output goes to the node's log at debug.
async fn run_suite(suite: &Path, args: &[String], deadline: Instant) -> Result<i32, CallError> {
    let child = tokio::process::Command::new(suite)
        .args(args)
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(remaining(deadline), child)
        .await
        .map_err(|_| CallError::new(ErrorCode::Timeout, "the conformance run took too long"))?
        .map_err(|e| failed(format!("{}: {e}", suite.display())))?;
    tracing::debug!(
        stderr = %String::from_utf8_lossy(&out.stderr),
        "conformance run finished"
    );
    Ok(out.status.code().unwrap_or(-1))
}

impl Service for ConformanceService {
    fn name(&self) -> &str {
        "conformance"
    }

    fn offers(&self) -> Vec<Offer> {
        Offer::all(&[
            "protocol.conformance.report",
            "protocol.registry.list",
            "protocol.registry.announce",
        ])
    }

    fn call(&self, req: Request, out: Sink) -> BoxFuture<'static, Result<(), CallError>> {
        let this = self.0.clone();
        async move {
            let bytes = this.serve(req).await?;
            out.send_bytes(bytes).await
        }
        .boxed()
    }
}
