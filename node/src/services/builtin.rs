//! Built-in capabilities every node serves: protocol introspection
//! (`protocol.version.list`, `protocol.describe`), node meta
//! (`node.capabilities`, `node.manifest`, `node.trace.recent`,
//! `node.topology`) and diagnostics (`diag.echo`, `diag.echo.stream`).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::FutureExt;
use futures::future::BoxFuture;
use prost::Message;

use hearthnet_sdk::proto::hearthnet::common::v1::{Endpoint, ErrorCode};
use hearthnet_sdk::proto::hearthnet::diag::v1 as diag;
use hearthnet_sdk::proto::hearthnet::identity::v1::{NodeManifest, Profile};
use hearthnet_sdk::proto::hearthnet::node::v1 as node;
use hearthnet_sdk::proto::hearthnet::options::v1::Stability;
use hearthnet_sdk::proto::hearthnet::protocol::v1 as proto;
use hearthnet_sdk::registry::Capability;
use hearthnet_sdk::wkt::Timestamp;

use crate::bus::{Bus, Offer, Request, Service, Sink};
use crate::error::CallError;

/// What the built-ins need to know about the node.
#[derive(Debug, Clone)]
pub struct NodeInfo {
    /// Display name.
    pub display_name: String,
    /// Profile name (`anchor`, `hearth`, `spark`; `auto` reads as hearth).
    pub profile: String,
    /// Community id, if any.
    pub community: Option<String>,
    /// Where peers reach this node.
    pub endpoints: Vec<Endpoint>,
    /// Start time, for uptime.
    pub started: Instant,
}

/// A signed manifest, its expiry, when it was signed and the bus generation
/// it describes.
type CachedManifest = (Vec<u8>, Timestamp, Instant, u64);

/// Protocol introspection and node meta capabilities.
pub struct Introspection {
    bus: Bus,
    info: NodeInfo,
    manifest: Mutex<Option<CachedManifest>>,
}

impl Introspection {
    /// The service over a bus.
    pub fn new(bus: Bus, info: NodeInfo) -> Arc<Self> {
        Arc::new(Self {
            bus,
            info,
            manifest: Mutex::new(None),
        })
    }

    /// The current signed node manifest (`SignedEnvelope` bytes) and its
    /// expiry; re-signed when older than the republish interval.
    pub fn signed_manifest(&self) -> (Vec<u8>, Timestamp) {
        let mut cached = self.manifest.lock().unwrap_or_else(|e| e.into_inner());
        let fresh =
            Duration::from_secs(hearthnet_sdk::records::MANIFEST_REPUBLISH_INTERVAL_SECONDS as u64);
        let generation = self.bus.generation();
        if let Some((bytes, exp, at, g)) = cached.as_ref()
            && at.elapsed() < fresh
            && *g == generation
        {
            return (bytes.clone(), *exp);
        }
        let profile = match self.info.profile.as_str() {
            "anchor" => Profile::Anchor,
            "spark" => Profile::Spark,
            "bridge" => Profile::Bridge,
            _ => Profile::Hearth,
        };
        let manifest = NodeManifest {
            version: 1,
            contract_version: hearthnet_sdk::PROTOCOL_VERSION.to_string(),
            node_id: String::new(),
            display_name: self.info.display_name.clone(),
            community_id: self.info.community.clone().unwrap_or_default(),
            profile: profile as i32,
            endpoints: self.info.endpoints.clone(),
            hardware: None,
            capabilities: self.bus.local_offers(),
            uptime_seconds: self.info.started.elapsed().as_secs(),
            issued_at: None,
            expires_at: None,
        };
        let env =
            hearthnet_sdk::records::seal_node_manifest(self.bus.key(), manifest, Timestamp::now());
        let exp = hearthnet_sdk::envelope::open::<NodeManifest>(
            &env,
            hearthnet_sdk::signing::Domain::NodeManifest,
        )
        .ok()
        .and_then(|(_, m)| m.expires_at)
        .unwrap_or_default();
        let bytes = env.encode_to_vec();
        *cached = Some((bytes.clone(), exp, Instant::now(), generation));
        (bytes, exp)
    }

    fn describe(&self, input: &proto::DescribeInput) -> proto::DescribeOutput {
        let caps = self
            .bus
            .local_capabilities()
            .into_iter()
            .map(|(c, _, _)| proto::AdvertisedCapability {
                name: c.name.to_string(),
                version: c.version.to_string(),
                schema_hash: if input.include_schema_hashes {
                    c.schema_hash.to_string()
                } else {
                    String::new()
                },
                stability: stability(c) as i32,
            })
            .collect();
        proto::DescribeOutput {
            implementation: "hearthnet-rs".into(),
            implementation_version: env!("CARGO_PKG_VERSION").into(),
            protocol_version: hearthnet_sdk::PROTOCOL_VERSION.into(),
            descriptor_hash: hearthnet_sdk::registry::DESCRIPTOR_HASH.into(),
            node: self.bus.node_id().to_string(),
            capabilities: caps,
            // `tokens`: calls' capability tokens are checked (BUS-048).
            features: vec![
                "grpc".into(),
                "http-json".into(),
                "sse".into(),
                "tokens".into(),
            ],
        }
    }

    fn serve(&self, req: &Request) -> Result<Vec<u8>, CallError> {
        let started = Instant::now();
        let ms = || started.elapsed().as_millis() as u64;
        match req.capability.name {
            "protocol.version.list" => {
                let _: proto::ListVersionsRequest = req.decode()?;
                Ok(proto::ListVersionsResponse {
                    output: Some(proto::ListVersionsOutput {
                        versions: vec![hearthnet_sdk::PROTOCOL_VERSION.to_string()],
                        preferred: hearthnet_sdk::PROTOCOL_VERSION.to_string(),
                    }),
                    meta: Some(proto::ListVersionsMeta { ms: ms() }),
                }
                .encode_to_vec())
            }
            "protocol.describe" => {
                let r: proto::DescribeRequest = req.decode()?;
                let out = self.describe(&r.input.unwrap_or_default());
                Ok(proto::DescribeResponse {
                    output: Some(out),
                    meta: Some(proto::DescribeMeta { ms: ms() }),
                }
                .encode_to_vec())
            }
            "node.capabilities" => {
                let r: node::CapabilitiesRequest = req.decode()?;
                let local = self
                    .bus
                    .local_capabilities()
                    .into_iter()
                    .map(|(c, params, max)| spec(c, &params, max))
                    .collect();
                let remote = if r.input.is_some_and(|i| i.include_remote) {
                    self.bus
                        .remote_capabilities()
                        .into_iter()
                        .map(|rc| node::RemoteCapability {
                            node_id: rc.node,
                            spec: Some(node::CapabilitySpec {
                                name: rc.name,
                                version: rc.version,
                                stability: Stability::Unspecified as i32,
                                schema_hash: rc.schema_hash,
                                params: None,
                                max_concurrent: 0,
                            }),
                        })
                        .collect()
                } else {
                    Vec::new()
                };
                Ok(node::CapabilitiesResponse {
                    output: Some(node::CapabilitiesOutput { local, remote }),
                    meta: Some(node::CapabilitiesMeta { ms: ms() }),
                }
                .encode_to_vec())
            }
            "node.manifest" => {
                let _: node::ManifestRequest = req.decode()?;
                let (signed_manifest, expires_at) = self.signed_manifest();
                Ok(node::ManifestResponse {
                    output: Some(node::ManifestOutput {
                        signed_manifest,
                        expires_at: Some(expires_at),
                    }),
                    meta: Some(node::ManifestMeta { ms: ms() }),
                }
                .encode_to_vec())
            }
            "node.trace.recent" => {
                let r: node::RecentTracesRequest = req.decode()?;
                let input = r.input.unwrap_or_default();
                let limit = input.limit.unwrap_or(50).min(
                    u32::try_from(hearthnet_sdk::constants::TRACE_RING_BUFFER).unwrap_or(10_000),
                );
                let traces = self.bus.traces().recent(limit as usize, &input.capability);
                Ok(node::RecentTracesResponse {
                    output: Some(node::RecentTracesOutput { traces }),
                    meta: Some(node::RecentTracesMeta { ms: ms() }),
                }
                .encode_to_vec())
            }
            "node.topology" => {
                let _: node::TopologyRequest = req.decode()?;
                let remote = self.bus.remote_capabilities();
                let mut peers: BTreeMap<String, node::TopologyPeer> = BTreeMap::new();
                for (id, endpoint) in self.bus.peers() {
                    peers
                        .entry(id.clone())
                        .or_insert_with(|| node::TopologyPeer {
                            node_id: id,
                            endpoints: vec![endpoint],
                            ..Default::default()
                        });
                }
                for rc in remote {
                    if let Some(p) = peers.get_mut(&rc.node) {
                        p.capabilities.push(if rc.quarantined {
                            format!("{}@{} (quarantined)", rc.name, rc.version)
                        } else {
                            format!("{}@{}", rc.name, rc.version)
                        });
                    }
                }
                Ok(node::TopologyResponse {
                    output: Some(node::TopologyOutput {
                        our_node_id: self.bus.node_id().to_string(),
                        peers: peers.into_values().collect(),
                        capabilities_local: self
                            .bus
                            .local_capabilities()
                            .into_iter()
                            .map(|(c, _, _)| format!("{}@{}", c.name, c.version))
                            .collect(),
                        in_flight_total: u32::try_from(self.bus.metrics().in_flight.get())
                            .unwrap_or(0),
                    }),
                    meta: Some(node::TopologyMeta { ms: ms() }),
                }
                .encode_to_vec())
            }
            other => Err(CallError::new(
                ErrorCode::NotFound,
                format!("no capability {other}"),
            )),
        }
    }
}

fn stability(c: &Capability) -> Stability {
    Stability::from_str_name(&format!("STABILITY_{}", c.stability.to_ascii_uppercase()))
        .unwrap_or(Stability::Unspecified)
}

/// The wire description of a local capability.
pub(crate) fn spec(
    c: &Capability,
    params: &BTreeMap<String, String>,
    max: u32,
) -> node::CapabilitySpec {
    let fields = params
        .iter()
        .map(|(k, v)| {
            (
                k.clone(),
                pbjson_types::Value {
                    kind: Some(pbjson_types::value::Kind::StringValue(v.clone())),
                },
            )
        })
        .collect();
    node::CapabilitySpec {
        name: c.name.to_string(),
        version: c.version.to_string(),
        stability: stability(c) as i32,
        schema_hash: c.schema_hash.to_string(),
        params: Some(pbjson_types::Struct { fields }),
        max_concurrent: max,
    }
}

impl Service for Introspection {
    fn name(&self) -> &str {
        "introspection"
    }

    fn offers(&self) -> Vec<Offer> {
        Offer::all(&[
            "protocol.version.list",
            "protocol.describe",
            "node.capabilities",
            "node.manifest",
            "node.trace.recent",
            "node.topology",
        ])
    }

    fn call(&self, req: Request, out: Sink) -> BoxFuture<'static, Result<(), CallError>> {
        let result = self.serve(&req);
        async move {
            let bytes = result?;
            out.send_bytes(bytes).await
        }
        .boxed()
    }
}

/// `diag.echo` and `diag.echo.stream`.
#[derive(Debug, Clone)]
pub struct Diag {
    served_by: String,
}

impl Diag {
    /// The diagnostic service for a node.
    pub fn new(bus: &Bus) -> Arc<Self> {
        Arc::new(Self {
            served_by: bus.node_id().to_string(),
        })
    }
}

/// Largest `repeat` and `interval_ms` of `diag.echo.stream`.
const ECHO_STREAM_MAX: u32 = 10_000;

impl Service for Diag {
    fn name(&self) -> &str {
        "diag"
    }

    fn offers(&self) -> Vec<Offer> {
        Offer::all(&["diag.echo", "diag.echo.stream"])
    }

    fn call(&self, req: Request, out: Sink) -> BoxFuture<'static, Result<(), CallError>> {
        let served_by = self.served_by.clone();
        async move {
            let started = Instant::now();
            match req.capability.name {
                "diag.echo" => {
                    let r: diag::EchoRequest = req.decode()?;
                    let input = r.input.unwrap_or_default();
                    if !input.fail_with.is_empty() {
                        let code = ErrorCode::from_wire_name(&input.fail_with).ok_or_else(|| {
                            CallError::bad_request(format!(
                                "fail_with `{}` is not an error code",
                                input.fail_with
                            ))
                        })?;
                        return Err(CallError::new(code, "failure requested by fail_with"));
                    }
                    out.send(&diag::EchoResponse {
                        output: Some(diag::EchoOutput {
                            text: input.text,
                            data: input.data,
                            served_by,
                        }),
                        meta: Some(diag::EchoMeta {
                            ms: started.elapsed().as_millis() as u64,
                        }),
                    })
                    .await
                }
                "diag.echo.stream" => {
                    let r: diag::EchoStreamRequest = req.decode()?;
                    let input = r.input.unwrap_or_default();
                    if input.repeat > ECHO_STREAM_MAX || input.interval_ms > ECHO_STREAM_MAX {
                        return Err(CallError::bad_request(format!(
                            "repeat and interval_ms must be at most {ECHO_STREAM_MAX}"
                        )));
                    }
                    for index in 0..input.repeat {
                        if input.interval_ms > 0 {
                            tokio::select! {
                                _ = tokio::time::sleep(Duration::from_millis(u64::from(input.interval_ms))) => {}
                                _ = req.cancel.cancelled() => return Ok(()),
                            }
                        }
                        out.send(&diag::EchoStreamResponse {
                            output: Some(diag::EchoStreamOutput {
                                index,
                                text: input.text.clone(),
                                served_by: served_by.clone(),
                            }),
                            meta: Some(diag::EchoStreamMeta {}),
                        })
                        .await?;
                    }
                    Ok(())
                }
                other => Err(CallError::new(
                    ErrorCode::NotFound,
                    format!("no capability {other}"),
                )),
            }
        }
        .boxed()
    }
}
