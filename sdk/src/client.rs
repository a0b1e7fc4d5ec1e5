//! A bus client: builds and signs `CallRequest`s, sends them over gRPC and
//! checks the frames that come back (sequence numbers, one terminal frame,
//! the provider's signature over the transcript in `done`).
//!
//! ```no_run
//! # async fn demo() -> Result<(), hearthnet_sdk::client::ClientError> {
//! use hearthnet_sdk::client::Client;
//! use hearthnet_sdk::identity::SecretKey;
//! use hearthnet_sdk::proto::hearthnet::protocol::v1::{ListVersionsRequest, ListVersionsResponse};
//! let key = SecretKey::generate().expect("random key");
//! let client = Client::connect("http://127.0.0.1:7080", key).await?;
//! let out: ListVersionsResponse = client
//!     .unary("protocol.version.list", "1.0", &ListVersionsRequest::default())
//!     .await?;
//! println!("{:?}", out.output.map(|o| o.versions));
//! # Ok(()) }
//! ```

use std::sync::Arc;
use std::time::Duration;

use prost::Message;
use tonic::transport::{Channel, Endpoint};

use crate::identity::{NodeId, SecretKey};
use crate::proto::hearthnet::bus::v1::bus_service_client::BusServiceClient;
use crate::proto::hearthnet::bus::v1::{
    CallRequest, Done, Frame, OpenRequest, PayloadEncoding, Progress, frame, open_request,
};
use crate::proto::hearthnet::common::v1::Error as WireError;
use crate::signing::{Transcript, sign_call};
use crate::wkt::Timestamp;

/// Errors of a bus call made with [`Client`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The endpoint is not a valid URI or the connection failed.
    #[error("cannot connect: {0}")]
    Connect(#[from] tonic::transport::Error),
    /// The gRPC call itself failed (transport, HTTP/2, status).
    #[error("gRPC status {}: {}", .0.code(), .0.message())]
    Status(#[from] tonic::Status),
    /// The provider answered with an `error` frame.
    #[error("{}: {}", .0.code, .0.message)]
    Remote(Box<WireError>),
    /// The provider broke the framing rules (BUS-002 … BUS-005, BUS-014).
    #[error("protocol violation: {0}")]
    Protocol(String),
    /// A data frame is not the expected message.
    #[error("cannot decode response: {0}")]
    Decode(#[from] prost::DecodeError),
    /// [`OpenSink::send`]: the provider ended the call before reading this
    /// message; its [`CallStream`] carries the reason (an `error` frame).
    #[error("the provider ended the stream")]
    Ended,
}

impl ClientError {
    /// The wire error code name (`not_found`, …) when the provider sent one.
    pub fn wire_code(&self) -> Option<&str> {
        match self {
            ClientError::Remote(e) => Some(&e.code),
            _ => None,
        }
    }
}

/// One item of a call's response stream, after checking.
#[derive(Debug, Clone, PartialEq)]
pub enum CallItem {
    /// A data frame: the encoded response message.
    Data(Vec<u8>),
    /// A progress frame.
    Progress(Progress),
    /// The terminal `done` frame; its frame count and transcript hash are
    /// checked, and its signature where decision 0043 requires it (or always,
    /// with [`Client::verify_every_done`]).
    Done(Done),
}

/// A bus client signing calls with one key.
#[derive(Clone)]
pub struct Client {
    inner: BusServiceClient<Channel>,
    key: Arc<SecretKey>,
    community: String,
    verify_every_done: bool,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("caller", &self.key.node_id().to_string())
            .field("community", &self.community)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// Connects to `endpoint` (`http://host:port`) over gRPC with TCP_NODELAY.
    pub async fn connect(endpoint: &str, key: SecretKey) -> Result<Self, ClientError> {
        let channel = Endpoint::from_shared(endpoint.to_string())?
            .tcp_nodelay(true)
            .connect_timeout(Duration::from_secs(5))
            .connect()
            .await?;
        Ok(Self::with_channel(channel, Arc::new(key)))
    }

    /// A client over an existing channel (connections are shared by clones).
    pub fn with_channel(channel: Channel, key: Arc<SecretKey>) -> Self {
        Self {
            inner: BusServiceClient::new(channel)
                .max_decoding_message_size(crate::constants::BUS_MAX_MESSAGE_BYTES as usize),
            key,
            community: String::new(),
            verify_every_done: false,
        }
    }

    /// Verifies the `done` signature of every call, not only where decision
    /// 0043 requires it (capabilities that emit events or are not
    /// idempotent, and capabilities this SDK does not know).
    pub fn verify_every_done(mut self, on: bool) -> Self {
        self.verify_every_done = on;
        self
    }

    /// Sets the community every call names.
    pub fn with_community(mut self, community: impl Into<String>) -> Self {
        self.community = community.into();
        self
    }

    /// The NodeID calls are signed as.
    pub fn caller(&self) -> NodeId {
        self.key.node_id()
    }

    /// Builds a signed call with a fresh ULID request id and the current time.
    pub fn request(
        &self,
        capability: &str,
        min_version: &str,
        encoding: PayloadEncoding,
        payload: Vec<u8>,
    ) -> CallRequest {
        let mut call = CallRequest {
            capability: capability.to_string(),
            min_version: min_version.to_string(),
            request_id: ulid::Ulid::new().to_string(),
            caller: String::new(),
            community: self.community.clone(),
            timestamp: Some(Timestamp::now()),
            encoding: encoding as i32,
            payload,
            schema_hash: String::new(),
            token: String::new(),
            signature: Vec::new(),
        };
        sign_call(&self.key, &mut call);
        call
    }

    /// Sends a signed call; `timeout` becomes the gRPC deadline.
    pub async fn send(
        &self,
        call: CallRequest,
        timeout: Option<Duration>,
    ) -> Result<CallStream, ClientError> {
        let request_id = call.request_id.clone();
        let verify_signature = self.verify_every_done
            || crate::registry::capability(&call.capability)
                .is_none_or(|c| !c.idempotent || !c.events.is_empty());
        let mut req = tonic::Request::new(call);
        if let Some(t) = timeout {
            req.set_timeout(t);
        }
        let stream = self.inner.clone().call(req).await?.into_inner();
        Ok(CallStream {
            source: Source::Call(Box::new(stream)),
            transcript: Transcript::new(),
            request_id,
            next_seq: 0,
            finished: false,
            verify_signature,
        })
    }

    /// Opens a client- or bidi-streaming call (`Open`): `call.payload` is the
    /// first client message; further messages go through the returned
    /// [`OpenSink`] (which keeps to the window of `STREAM_WINDOW_FRAMES`
    /// unacknowledged frames), and the provider's frames come on the
    /// [`CallStream`]. Dropping or finishing the sink ends the client side.
    pub async fn open(
        &self,
        call: CallRequest,
        timeout: Option<Duration>,
    ) -> Result<(OpenSink, CallStream), ClientError> {
        let request_id = call.request_id.clone();
        let verify_signature = self.verify_every_done
            || crate::registry::capability(&call.capability)
                .is_none_or(|c| !c.idempotent || !c.events.is_empty());
        let (tx, rx) = tokio::sync::mpsc::channel(crate::constants::STREAM_WINDOW_FRAMES as usize);
        tx.send(OpenRequest {
            kind: Some(open_request::Kind::Call(call)),
        })
        .await
        .map_err(|_| ClientError::Protocol("stream closed".into()))?;
        let mut req = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
        if let Some(t) = timeout {
            req.set_timeout(t);
        }
        let mut incoming = self.inner.clone().open(req).await?.into_inner();
        // Acks must be seen while the caller is busy sending, so a task reads
        // the provider's frames, notes acks and passes every frame on.
        let (acked_tx, acked_rx) = tokio::sync::watch::channel(0u64);
        let (ftx, frx) = tokio::sync::mpsc::channel(64);
        tokio::spawn(async move {
            loop {
                let next = incoming.message().await;
                let item = match next {
                    Ok(Some(resp)) => match resp.frame {
                        Some(f) => {
                            if let Some(frame::Kind::Ack(a)) = &f.kind {
                                acked_tx.send_replace(a.upto + 1);
                            }
                            Ok(Some(f))
                        }
                        None => Err(ClientError::Protocol("response without a frame".into())),
                    },
                    Ok(None) => Ok(None),
                    Err(s) => Err(ClientError::Status(s)),
                };
                let end = !matches!(item, Ok(Some(_)));
                if ftx.send(item).await.is_err() || end {
                    return;
                }
            }
        });
        Ok((
            OpenSink {
                tx: Some(tx),
                seq: 0,
                acked: acked_rx,
            },
            CallStream {
                source: Source::Open(frx),
                transcript: Transcript::new(),
                request_id,
                next_seq: 0,
                finished: false,
                verify_signature,
            },
        ))
    }

    /// Calls a unary capability with a typed request and decodes the single
    /// data frame.
    pub async fn unary<Req: Message, Resp: Message + Default>(
        &self,
        capability: &str,
        min_version: &str,
        request: &Req,
    ) -> Result<Resp, ClientError> {
        let call = self.request(
            capability,
            min_version,
            PayloadEncoding::Proto,
            request.encode_to_vec(),
        );
        let mut stream = self.send(call, None).await?;
        let mut data = None;
        while let Some(item) = stream.next().await? {
            if let CallItem::Data(d) = item
                && data.replace(d).is_some()
            {
                return Err(ClientError::Protocol(
                    "unary capability sent more than one data frame".into(),
                ));
            }
        }
        let data = data.ok_or_else(|| ClientError::Protocol("no data frame".into()))?;
        Ok(Resp::decode(data.as_slice())?)
    }
}

/// The client side of an `Open` call: sends client messages as data frames.
#[derive(Debug)]
pub struct OpenSink {
    tx: Option<tokio::sync::mpsc::Sender<OpenRequest>>,
    seq: u64,
    acked: tokio::sync::watch::Receiver<u64>,
}

impl OpenSink {
    /// Sends one encoded client message, first waiting while
    /// `STREAM_WINDOW_FRAMES` frames are unacknowledged; no ack for
    /// `STREAM_ACK_TIMEOUT_SECONDS` breaks the stream. [`ClientError::Ended`]
    /// means the provider has already answered (often refused the call):
    /// stop sending and read the [`CallStream`] for its reason.
    pub async fn send(&mut self, message: Vec<u8>) -> Result<(), ClientError> {
        let window = crate::constants::STREAM_WINDOW_FRAMES as u64;
        let seq = self.seq;
        let wait = self.acked.wait_for(|acked| seq < acked + window);
        match tokio::time::timeout(
            Duration::from_secs(crate::constants::STREAM_ACK_TIMEOUT_SECONDS as u64),
            wait,
        )
        .await
        {
            Ok(Ok(_)) => {}
            Ok(Err(_)) => return Err(ClientError::Ended),
            Err(_) => {
                return Err(ClientError::Protocol(
                    "no ack from the provider in time".into(),
                ));
            }
        }
        let tx = self
            .tx
            .as_ref()
            .ok_or_else(|| ClientError::Protocol("the client side is finished".into()))?;
        tx.send(OpenRequest {
            kind: Some(open_request::Kind::Frame(Frame {
                seq,
                kind: Some(frame::Kind::Data(message)),
            })),
        })
        .await
        .map_err(|_| ClientError::Ended)?;
        self.seq += 1;
        Ok(())
    }

    /// Ends the client side (half-close); the provider then finishes.
    pub fn finish(&mut self) {
        self.tx = None;
    }
}

#[derive(Debug)]
enum Source {
    Call(Box<tonic::Streaming<crate::proto::hearthnet::bus::v1::CallResponse>>),
    Open(tokio::sync::mpsc::Receiver<Result<Option<Frame>, ClientError>>),
}

impl Source {
    async fn next(&mut self) -> Result<Option<Frame>, ClientError> {
        match self {
            Source::Call(s) => match s.message().await? {
                Some(resp) => resp
                    .frame
                    .map(Some)
                    .ok_or_else(|| ClientError::Protocol("response without a frame".into())),
                None => Ok(None),
            },
            Source::Open(rx) => rx.recv().await.unwrap_or(Ok(None)),
        }
    }
}

/// The response stream of one call. [`CallStream::next`] yields checked
/// items and ends after a verified `done`.
#[derive(Debug)]
pub struct CallStream {
    source: Source,
    transcript: Transcript,
    request_id: String,
    next_seq: u64,
    finished: bool,
    verify_signature: bool,
}

impl CallStream {
    /// The call's request id (also its trace id).
    pub fn request_id(&self) -> &str {
        &self.request_id
    }

    /// The next item; `Ok(None)` after the verified `done` frame. An `error`
    /// frame becomes [`ClientError::Remote`].
    pub async fn next(&mut self) -> Result<Option<CallItem>, ClientError> {
        loop {
            if let Some(item) = self.next_frame().await? {
                return Ok(Some(item));
            }
            if self.finished {
                return Ok(None);
            }
        }
    }

    /// The next checked frame; `Ok(None)` for an `ack` (on `Open`) or after
    /// the end.
    async fn next_frame(&mut self) -> Result<Option<CallItem>, ClientError> {
        if self.finished {
            return Ok(None);
        }
        let Some(frame) = self.source.next().await? else {
            self.finished = true;
            return Err(ClientError::Protocol(
                "stream ended without a terminal frame".into(),
            ));
        };
        let item = self.check(frame);
        if self.finished {
            // Read the end of the gRPC stream (its trailers) so the HTTP/2
            // stream closes cleanly instead of being reset, and check that
            // nothing follows the terminal frame (BUS-003).
            match self.source.next().await {
                Ok(None) => {}
                Ok(Some(_)) => {
                    return Err(ClientError::Protocol(
                        "a frame followed the terminal frame".into(),
                    ));
                }
                Err(e) if item.is_ok() => return Err(e),
                Err(_) => {}
            }
        }
        item
    }

    fn check(&mut self, frame: Frame) -> Result<Option<CallItem>, ClientError> {
        if frame.seq != self.next_seq {
            self.finished = true;
            return Err(ClientError::Protocol(format!(
                "frame seq {} where {} was expected",
                frame.seq, self.next_seq
            )));
        }
        self.next_seq += 1;
        match frame.kind {
            Some(frame::Kind::Data(d)) => {
                self.transcript.push(frame.seq, &d);
                Ok(Some(CallItem::Data(d)))
            }
            Some(frame::Kind::Progress(p)) => Ok(Some(CallItem::Progress(p))),
            Some(frame::Kind::Ack(_)) if matches!(self.source, Source::Open(_)) => Ok(None),
            Some(frame::Kind::Ack(_)) => {
                self.finished = true;
                Err(ClientError::Protocol("ack frame on a Call stream".into()))
            }
            Some(frame::Kind::Error(e)) => {
                self.finished = true;
                Err(ClientError::Remote(Box::new(e)))
            }
            Some(frame::Kind::Done(done)) => {
                self.finished = true;
                if done.frames != self.transcript.frames() {
                    return Err(ClientError::Protocol(format!(
                        "done counts {} data frames, {} were received",
                        done.frames,
                        self.transcript.frames()
                    )));
                }
                let signer: NodeId = done
                    .signer
                    .parse()
                    .map_err(|e| ClientError::Protocol(format!("done signer: {e}")))?;
                if done.transcript_hash != self.transcript.hash() {
                    return Err(ClientError::Protocol("transcript hash differs".into()));
                }
                if self.verify_signature {
                    self.transcript
                        .verify_done(&signer, &self.request_id, &done.signature)
                        .map_err(|e| ClientError::Protocol(format!("done signature: {e}")))?;
                }
                Ok(Some(CallItem::Done(done)))
            }
            None => {
                self.finished = true;
                Err(ClientError::Protocol("frame without a kind".into()))
            }
        }
    }
}
