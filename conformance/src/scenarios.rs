//! Cases written as code: several calls, the HTTP binding byte for byte,
//! and restarts of a launched target.

use std::time::Duration;

use hearthnet_sdk::proto::hearthnet::identity::v1::SignedEnvelope;
use hearthnet_sdk::proto::hearthnet::node::v1 as node;
use prost::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::cases::{Case, Encoding, Expect, Payload};
use crate::run::{self, CaseResult, Failure, Keys, Outcome, Preflight};
use crate::target::Target;

mod events;

/// A scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    ManifestSigned,
    HttpManifest,
    HttpHealth,
    HttpErrorBody,
    RestartKeepsNodeId,
    SigtermStops,
    MetricsServed,
    PeerListsTarget,
    EventLogMatchesHeads,
    EventPushSortsOffers,
}

/// (scenario, section, id, clauses, capability it needs, spec file).
type Entry = (
    Scenario,
    &'static str,
    &'static str,
    &'static [&'static str],
    &'static str,
    &'static str,
);

const ALL: &[Entry] = &[
    (
        Scenario::ManifestSigned,
        "core/identity",
        "manifest_is_signed_by_the_target_for_30_seconds",
        &["IDENT-020", "IDENT-021", "IDENT-022"],
        "node.manifest",
        "protocol/spec/identity.md",
    ),
    (
        Scenario::HttpManifest,
        "core/transport",
        "http_get_manifest_answers_without_authentication",
        &["NODE-006", "BUS-031"],
        "node.manifest",
        "protocol/spec/node.md",
    ),
    (
        Scenario::HttpHealth,
        "core/transport",
        "http_get_health_answers_200",
        &["NODE-007"],
        "protocol.describe",
        "protocol/spec/node.md",
    ),
    (
        Scenario::HttpErrorBody,
        "core/transport",
        "http_error_body_uses_code_and_its_status",
        &["BUS-018", "BUS-030", "BUS-012"],
        "protocol.describe",
        "protocol/spec/bus.md",
    ),
    (
        Scenario::RestartKeepsNodeId,
        "operability/restart",
        "restart_keeps_the_node_id",
        &["IDENT-015"],
        "protocol.describe",
        "protocol/spec/identity.md",
    ),
    (
        Scenario::SigtermStops,
        "operability/shutdown",
        "sigterm_stops_the_node_within_ten_seconds",
        &["NODE-007"],
        "protocol.describe",
        "protocol/spec/node.md",
    ),
    (
        Scenario::MetricsServed,
        "operability/metrics",
        "metrics_are_prometheus_text_without_authentication",
        &["NODE-008"],
        "protocol.describe",
        "protocol/spec/node.md",
    ),
    (
        Scenario::PeerListsTarget,
        "services/discovery",
        "a_second_node_given_the_target_as_static_peer_lists_its_capabilities",
        &["DISC-016", "NODE-001"],
        "discovery.peers",
        "protocol/spec/discovery.md",
    ),
    (
        Scenario::EventLogMatchesHeads,
        "core/events",
        "fetched_log_matches_the_heads_and_verifies",
        &["EVT-027", "EVT-028", "EVT-001", "EVT-005"],
        "event.sync.fetch",
        "protocol/spec/events.md",
    ),
    (
        Scenario::EventPushSortsOffers,
        "core/events",
        "push_counts_duplicates_and_refuses_forged_and_unknown_authors",
        &["EVT-029", "EVT-018", "EVT-019", "EVT-031", "EVT-046"],
        "event.sync.push",
        "protocol/spec/events.md",
    ),
];

/// The scenario cases.
pub fn cases() -> Vec<Case> {
    ALL.iter()
        .map(|(_, section, id, clauses, cap, spec)| Case {
            test_id: format!("{section}/{id}"),
            section: section.to_string(),
            spec_ref: spec.to_string(),
            clauses: clauses.iter().map(|c| c.to_string()).collect(),
            summary: String::new(),
            capability: cap.to_string(),
            requires: vec![cap.to_string()],
            version: "1.0".into(),
            payload: Payload::Json(serde_json::json!({})),
            encoding: Encoding::Proto,
            mutate: None,
            token: None,
            expect: Expect::default(),
        })
        .collect()
}

/// The scenario behind a test id.
pub fn find(test_id: &str) -> Option<Scenario> {
    ALL.iter()
        .find(|(_, section, id, ..)| format!("{section}/{id}") == test_id)
        .map(|(s, ..)| *s)
}

fn fail(observed: impl Into<String>, expected: impl Into<String>) -> Outcome {
    Outcome::Fail(Failure {
        observed: observed.into(),
        expected: expected.into(),
        also_broken: Vec::new(),
    })
}

/// Runs a scenario.
pub async fn run(
    s: Scenario,
    target: &mut Target,
    keys: &Keys,
    pre: &Preflight,
    case: &Case,
) -> CaseResult {
    let mut result = CaseResult {
        case: case.clone(),
        outcome: Outcome::Pass,
        payload_json: "{}".into(),
    };
    for r in &case.requires {
        if !pre.advertised.contains_key(r) {
            result.outcome = Outcome::Skip(format!("not_advertised: {r}"));
            return result;
        }
    }
    result.outcome = match s {
        Scenario::ManifestSigned => manifest_signed(target, keys, pre).await,
        Scenario::EventLogMatchesHeads => events::log_matches_heads(target, keys, pre).await,
        Scenario::EventPushSortsOffers => events::push_sorts_offers(target, keys, pre).await,
        Scenario::HttpManifest => match http(target, "GET", "/manifest", &[], b"").await {
            Err(e) => fail(e, "200 with the manifest's JSON"),
            Ok((200, _, body)) => match serde_json::from_slice::<serde_json::Value>(&body) {
                Ok(v) if v.is_object() => Outcome::Pass,
                _ => fail(
                    format!("a body that is not a JSON object: {}", preview(&body)),
                    "the proto3 JSON of the signed manifest",
                ),
            },
            Ok((status, ..)) => fail(format!("status {status}"), "200"),
        },
        Scenario::PeerListsTarget => peer_lists_target(target, keys, pre).await,
        Scenario::MetricsServed => match http(target, "GET", "/metrics", &[], b"").await {
            // NODE-008: 404 means metrics are switched off, which is allowed.
            Ok((404, ..)) => Outcome::Skip("metrics_disabled: GET /metrics is 404".into()),
            Ok((200, _, body)) => match prometheus_problem(&body) {
                None => Outcome::Pass,
                Some(p) => fail(p, "the Prometheus text exposition format"),
            },
            Ok((status, ..)) => fail(format!("status {status}"), "200, or 404 when disabled"),
            Err(e) => fail(e, "200 with Prometheus text"),
        },
        Scenario::HttpHealth => match http(target, "GET", "/health", &[], b"").await {
            Ok((200, ..)) => Outcome::Pass,
            Ok((status, ..)) => fail(format!("status {status}"), "200"),
            Err(e) => fail(e, "200"),
        },
        Scenario::HttpErrorBody => {
            result.payload_json =
                "POST /bus/v1/call, X-HearthNet-Capability: conformance.no.such, body {}".into();
            match http(
                target,
                "POST",
                "/bus/v1/call",
                &[
                    ("X-HearthNet-Capability", "conformance.no.such"),
                    ("Content-Type", "application/json"),
                ],
                b"{}",
            )
            .await
            {
                Err(e) => fail(e, "404 with {\"code\":\"not_found\"}"),
                Ok((status, _, body)) => {
                    let v: Option<serde_json::Value> = serde_json::from_slice(&body).ok();
                    let code = v
                        .as_ref()
                        .and_then(|v| v.get("code"))
                        .and_then(|c| c.as_str())
                        .map(str::to_string);
                    match (status, code.as_deref()) {
                        (404, Some("not_found")) => Outcome::Pass,
                        _ => fail(
                            format!("status {status}, body {}", preview(&body)),
                            "status 404 (not_found's http_status), body {\"code\":\"not_found\",…}",
                        ),
                    }
                }
            }
        }
        Scenario::RestartKeepsNodeId => {
            if !target.is_launched() {
                Outcome::Skip("not_launched: needs --launch".into())
            } else {
                match restart(target, keys).await {
                    Err(e) => fail(e, "the target back after a restart"),
                    Ok(_) => match run::preflight(target, keys).await {
                        Ok(p) if p.node == pre.node => Outcome::Pass,
                        Ok(p) => fail(
                            format!("NodeID {} after the restart", p.node),
                            format!("NodeID {}", pre.node),
                        ),
                        Err(e) => fail(e.to_string(), "protocol.describe after the restart"),
                    },
                }
            }
        }
        Scenario::SigtermStops => {
            if !target.is_launched() {
                Outcome::Skip("not_launched: needs --launch".into())
            } else {
                match restart(target, keys).await {
                    Ok(true) => Outcome::Pass,
                    Ok(false) => fail(
                        "still running 10 s after SIGTERM",
                        "a clean exit on SIGTERM",
                    ),
                    Err(e) => fail(e, "a clean exit on SIGTERM, then a restart"),
                }
            }
        }
    };
    result
}

/// Two nodes: a second instance of the launched command, given the target as
/// a static peer, fetches its manifest and lists the target's capabilities
/// under `remote` in `node.capabilities` (DISC-016, NODE-001).
async fn peer_lists_target(target: &Target, keys: &Keys, pre: &Preflight) -> Outcome {
    if !pre.advertised.contains_key("node.capabilities") {
        return Outcome::Skip("not_advertised: node.capabilities".into());
    }
    let log = target
        .log_path()
        .map(|p| p.with_file_name("peer.log"))
        .unwrap_or_default();
    let mut peer = match target.launch_peer(&log) {
        Ok(Some(p)) => p,
        Ok(None) => return Outcome::Skip("not_launched: needs --launch".into()),
        Err(e) => return fail(e.to_string(), "a second instance of the target"),
    };
    let outcome = async {
        if let Err(e) = peer.wait_ready(|| run::probe(keys)).await {
            return fail(e.to_string(), "a second instance of the target");
        }
        let req = node::CapabilitiesRequest {
            params: None,
            input: Some(node::CapabilitiesInput {
                include_remote: true,
            }),
        };
        let mut last = String::from("no answer");
        // The peer contacts the target at start and on its refresh ticks.
        for _ in 0..100 {
            match run::unary::<_, node::CapabilitiesResponse>(
                &peer,
                &keys.caller,
                "node.capabilities",
                &req,
            )
            .await
            {
                Ok(r) => {
                    let remote = r.output.map(|o| o.remote).unwrap_or_default();
                    if remote.iter().any(|c| c.node_id == pre.node.to_string()) {
                        return Outcome::Pass;
                    }
                    last = format!("{} remote capabilities, none of the target's", remote.len());
                }
                Err(e) => last = e,
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        fail(
            format!("after 30 s: {last}"),
            format!("remote capabilities of {} on the second node", pre.node),
        )
    }
    .await;
    let _ = peer.stop(Duration::from_secs(5)).await;
    outcome
}

/// Why `body` is not Prometheus text (at least one sample; every line a
/// comment or `name{labels} value`), or `None`.
fn prometheus_problem(body: &[u8]) -> Option<String> {
    let text = match std::str::from_utf8(body) {
        Ok(t) => t,
        Err(_) => return Some("a body that is not UTF-8".into()),
    };
    let mut samples = 0;
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        if line.starts_with('#') {
            continue;
        }
        let name_end = line.find(['{', ' ']).unwrap_or(line.len());
        let name = &line[..name_end];
        let name_ok = !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
            && !name.starts_with(|c: char| c.is_ascii_digit());
        let value = line.rsplit(' ').next().unwrap_or("");
        let value_ok = value.parse::<f64>().is_ok() || matches!(value, "+Inf" | "-Inf" | "NaN");
        if !name_ok || !value_ok {
            return Some(format!("the line {line:?}"));
        }
        samples += 1;
    }
    (samples == 0).then(|| "no samples".to_string())
}

/// Restarts a launched target on its data; whether it stopped cleanly.
async fn restart(target: &mut Target, keys: &Keys) -> Result<bool, String> {
    let clean = target.restart(false).await.map_err(|e| e.to_string())?;
    target
        .wait_ready(|| run::probe(keys))
        .await
        .map_err(|e| e.to_string())?;
    Ok(clean)
}

async fn manifest_signed(target: &Target, keys: &Keys, pre: &Preflight) -> Outcome {
    let resp: node::ManifestResponse = match run::unary(
        target,
        &keys.caller,
        "node.manifest",
        &node::ManifestRequest::default(),
    )
    .await
    {
        Ok(r) => r,
        Err(e) => return fail(e, "a node.manifest response"),
    };
    let bytes = resp.output.map(|o| o.signed_manifest).unwrap_or_default();
    let env = match SignedEnvelope::decode(bytes.as_slice()) {
        Ok(e) => e,
        Err(e) => {
            return fail(
                format!("signed_manifest is not a SignedEnvelope: {e}"),
                "a SignedEnvelope",
            );
        }
    };
    let now = chrono::Utc::now().timestamp();
    match hearthnet_sdk::records::verify_node_manifest(&env, now) {
        Err(e) => fail(
            format!("the manifest does not verify: {e}"),
            "a manifest signed under node.manifest",
        ),
        Ok((signer, _)) if signer != pre.node => fail(
            format!("signed by {signer}"),
            format!("signed by the target {}", pre.node),
        ),
        Ok((_, m)) => {
            let life = m.expires_at.map_or(0, |t| t.seconds) - m.issued_at.map_or(0, |t| t.seconds);
            if life == 30 {
                Outcome::Pass
            } else {
                fail(
                    format!("a lifetime of {life} s"),
                    "expires_at = issued_at + 30 s",
                )
            }
        }
    }
}

fn preview(body: &[u8]) -> String {
    let s = String::from_utf8_lossy(body);
    let s: String = s.chars().take(200).collect();
    format!("{s:?}")
}

/// One HTTP/1.1 exchange with the target's port: (status, headers, body).
async fn http(
    target: &Target,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<(u16, String, Vec<u8>), String> {
    let authority = target
        .url()
        .split_once("://")
        .map(|(_, a)| a.trim_end_matches('/').to_string())
        .ok_or("no authority")?;
    let exchange = async {
        let mut s = tokio::net::TcpStream::connect(&authority)
            .await
            .map_err(|e| format!("connect {authority}: {e}"))?;
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\nContent-Length: {}\r\n",
            body.len()
        );
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        s.write_all(req.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        s.write_all(body).await.map_err(|e| e.to_string())?;
        let mut out = Vec::new();
        s.read_to_end(&mut out).await.map_err(|e| e.to_string())?;
        Ok::<_, String>(out)
    };
    let raw = tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .map_err(|_| "no answer within 10 s".to_string())??;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| format!("not an HTTP response: {}", preview(&raw)))?;
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let mut rest = raw[split + 4..].to_vec();
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| {
            format!(
                "bad status line: {}",
                head.lines().next().unwrap_or_default()
            )
        })?;
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        rest = dechunk(&rest).ok_or("a malformed chunked body")?;
    }
    Ok((status, head, rest))
}

fn dechunk(mut b: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = b.windows(2).position(|w| w == b"\r\n")?;
        let size_text = std::str::from_utf8(&b[..line_end]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        b = &b[line_end + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(b.get(..size)?);
        b = b.get(size + 2..)?;
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn chunked_bodies() {
        assert_eq!(
            dechunk(b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n").unwrap(),
            b"abcde"
        );
        assert!(dechunk(b"zz\r\n").is_none());
        assert!(dechunk(b"5\r\nab").is_none());
    }

    #[test]
    fn every_scenario_is_found_by_its_id() {
        for c in cases() {
            assert!(find(&c.test_id).is_some(), "{}", c.test_id);
        }
    }

    #[test]
    fn prometheus_text() {
        let ok = b"# HELP c calls\n# TYPE c counter\nc_total{capability=\"diag echo\",code=\"ok\"} 3\nup 1 1700000000\nh_bucket{le=\"+Inf\"} +Inf\n# EOF\n";
        assert_eq!(prometheus_problem(ok), None);
        assert!(prometheus_problem(b"# only comments\n").is_some());
        assert!(prometheus_problem(b"<html>metrics</html>\n").is_some());
        assert!(prometheus_problem(b"9lives 1\n").is_some());
        assert!(prometheus_problem(&[0xff, 0xfe]).is_some());
    }
}
