//! Opportunistic batch verification of call signatures: one worker thread
//! takes every call waiting at that moment (up to [`MAX_BATCH`]) and checks
//! them with one Ed25519 batch verification. A lone call is checked at once,
//! so batching adds no waiting; under load it roughly halves the cost per
//! signature.

use tokio::sync::{mpsc, oneshot};

use hearthnet_sdk::identity::NodeId;
use hearthnet_sdk::proto::hearthnet::bus::v1::CallRequest;
use hearthnet_sdk::signing::{CallAuthError, verify_call, verify_calls_batch};

/// Largest batch.
pub const MAX_BATCH: usize = 64;

type Reply = (CallRequest, Result<NodeId, CallAuthError>);

struct Job {
    call: CallRequest,
    reply: oneshot::Sender<Reply>,
}

/// Handle to the verification worker.
#[derive(Debug, Clone)]
pub struct Verifier {
    tx: mpsc::Sender<Job>,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Job").finish_non_exhaustive()
    }
}

impl Verifier {
    /// Starts the worker thread; it ends when every handle is dropped.
    pub fn start() -> Self {
        let (tx, mut rx) = mpsc::channel::<Job>(4 * MAX_BATCH);
        let spawned = std::thread::Builder::new()
            .name("hearthnet-verify".into())
            .spawn(move || {
                while let Some(first) = rx.blocking_recv() {
                    let mut jobs = vec![first];
                    while jobs.len() < MAX_BATCH {
                        match rx.try_recv() {
                            Ok(j) => jobs.push(j),
                            Err(_) => break,
                        }
                    }
                    let results = {
                        let calls: Vec<&CallRequest> = jobs.iter().map(|j| &j.call).collect();
                        verify_calls_batch(&calls)
                    };
                    for (job, result) in jobs.into_iter().zip(results) {
                        let _ = job.reply.send((job.call, result));
                    }
                }
            });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "no verification thread; verifying inline");
        }
        Self { tx }
    }

    /// Verifies one call's signature; returns the call and its caller.
    pub async fn verify(&self, call: CallRequest) -> Reply {
        let (reply, rx) = oneshot::channel();
        match self.tx.send(Job { call, reply }).await {
            Ok(()) => match rx.await {
                Ok(r) => r,
                Err(_) => unreachable_worker(),
            },
            // No worker: check inline.
            Err(mpsc::error::SendError(job)) => {
                let r = verify_call(&job.call);
                (job.call, r)
            }
        }
    }
}

fn unreachable_worker() -> Reply {
    // The worker answers every job it takes; it can only vanish by panicking.
    (
        CallRequest::default(),
        Err(CallAuthError::Signature(
            hearthnet_sdk::signing::VerifyError::BadSignature,
        )),
    )
}
