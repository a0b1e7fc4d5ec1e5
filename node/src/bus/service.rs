//! The service interface: what a capability provider implements and what it
//! receives. Services register with the bus at start-up; the bus knows none
//! of them at build time, and services reach each other only through the bus.

use std::collections::BTreeMap;
use std::time::Instant;

use futures::future::BoxFuture;
use prost::Message;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use hearthnet_sdk::identity::NodeId;
use hearthnet_sdk::proto::hearthnet::bus::v1::Progress;
use hearthnet_sdk::registry::Capability;

use crate::bus::Trust;
use crate::error::CallError;

/// One capability a service offers.
#[derive(Debug, Clone)]
pub struct Offer {
    /// The capability, from the protocol registry.
    pub capability: &'static Capability,
    /// Instance parameters (models, corpora…), advertised in the manifest.
    pub params: BTreeMap<String, String>,
    /// Most concurrent calls (0 = unlimited).
    pub max_concurrent: u32,
    /// Needs the internet: suspended while the node is offline (EMERG-018).
    pub requires_internet: bool,
}

impl Offer {
    /// Offers each registry capability named (names the protocol does not
    /// define are skipped).
    pub fn all(names: &[&str]) -> Vec<Self> {
        names.iter().filter_map(|n| Self::of(n)).collect()
    }

    /// Offers a registry capability with its default concurrency limit.
    ///
    /// Returns `None` for a name the protocol does not define.
    pub fn of(name: &str) -> Option<Self> {
        let capability = hearthnet_sdk::registry::capability(name)?;
        Some(Self {
            capability,
            params: BTreeMap::new(),
            max_concurrent: capability.max_concurrent,
            requires_internet: false,
        })
    }
}

/// A call as a service sees it: already authenticated, authorised, rate
/// limited and decoded from JSON where needed.
#[derive(Debug)]
pub struct Request {
    /// The capability being served.
    pub capability: &'static Capability,
    /// The encoded request message (protobuf).
    pub payload: Vec<u8>,
    /// The (immediate) caller.
    pub caller: NodeId,
    /// The caller's trust level.
    pub trust: Trust,
    /// Request id, also the trace id.
    pub request_id: String,
    /// When the call must be finished.
    pub deadline: Instant,
    /// Cancelled when the caller goes away or the deadline passes.
    pub cancel: CancellationToken,
    /// The client frames after the first message, for client- and
    /// bidi-streaming capabilities called with `Open` (decision 0044).
    pub input: Option<Input>,
}

/// The client messages of an `Open` call after the first one (which is the
/// request payload), already decoded from JSON where needed.
#[derive(Debug)]
pub struct Input {
    rx: mpsc::Receiver<Result<Vec<u8>, CallError>>,
}

impl Input {
    /// Input fed from a channel (the bus's pump, or tests).
    pub fn new(rx: mpsc::Receiver<Result<Vec<u8>, CallError>>) -> Self {
        Self { rx }
    }

    /// The next client message as `M`; `Ok(None)` once the client has
    /// finished sending. A malformed message is `bad_request`.
    pub async fn next<M: Message + Default>(&mut self) -> Result<Option<M>, CallError> {
        match self.rx.recv().await {
            None => Ok(None),
            Some(Err(e)) => Err(e),
            Some(Ok(bytes)) => M::decode(bytes.as_slice())
                .map(Some)
                .map_err(|e| CallError::bad_request(format!("client frame: {e}"))),
        }
    }
}

impl Request {
    /// Decodes the payload as `M`; a malformed payload is `bad_request`.
    pub fn decode<M: Message + Default>(&self) -> Result<M, CallError> {
        M::decode(self.payload.as_slice()).map_err(|e| {
            CallError::bad_request(format!(
                "payload is not a valid {}: {e}",
                self.capability.request
            ))
        })
    }
}

/// What a service emits while serving a call.
#[derive(Debug)]
pub enum Item {
    /// One response message (a data frame).
    Data(Vec<u8>),
    /// A progress report.
    Progress(Progress),
}

/// Where a service writes its frames. Sending fails once the caller has gone.
#[derive(Debug, Clone)]
pub struct Sink {
    tx: mpsc::Sender<Item>,
}

impl Sink {
    /// A sink and the receiving end the bus reads.
    pub(crate) fn channel(depth: usize) -> (Self, mpsc::Receiver<Item>) {
        let (tx, rx) = mpsc::channel(depth);
        (Self { tx }, rx)
    }

    /// A sink and its receiver, for benchmarks and tests that call a service
    /// directly.
    pub fn pair(depth: usize) -> (Self, mpsc::Receiver<Item>) {
        Self::channel(depth)
    }

    /// Sends one response message.
    pub async fn send<M: Message>(&self, msg: &M) -> Result<(), CallError> {
        self.tx
            .send(Item::Data(msg.encode_to_vec()))
            .await
            .map_err(|_| {
                CallError::new(
                    hearthnet_sdk::proto::hearthnet::common::v1::ErrorCode::Timeout,
                    "caller went away",
                )
            })
    }

    /// Sends one already-encoded response message.
    pub async fn send_bytes(&self, bytes: Vec<u8>) -> Result<(), CallError> {
        self.tx.send(Item::Data(bytes)).await.map_err(|_| {
            CallError::new(
                hearthnet_sdk::proto::hearthnet::common::v1::ErrorCode::Timeout,
                "caller went away",
            )
        })
    }

    /// Sends a progress frame.
    pub async fn progress(&self, p: Progress) -> Result<(), CallError> {
        self.tx.send(Item::Progress(p)).await.map_err(|_| {
            CallError::new(
                hearthnet_sdk::proto::hearthnet::common::v1::ErrorCode::Timeout,
                "caller went away",
            )
        })
    }
}

/// A capability provider.
pub trait Service: Send + Sync + 'static {
    /// Short name for logs (`diag`, `llm`…).
    fn name(&self) -> &str;

    /// The capabilities offered; read once at registration.
    fn offers(&self) -> Vec<Offer>;

    /// Serves one call, writing response messages to `out`. A unary
    /// capability sends exactly one message.
    fn call(&self, req: Request, out: Sink) -> BoxFuture<'static, Result<(), CallError>>;
}
