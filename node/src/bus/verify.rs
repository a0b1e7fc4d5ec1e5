//! Opportunistic batch verification of call signatures. While the worker
//! thread is idle and nothing is queued, a call is verified inline (no thread
//! hop, no waiting). Under load, calls queue up while the worker verifies a
//! batch, and the worker takes every waiting call (up to [`MAX_BATCH`]) into
//! one Ed25519 batch verification, roughly halving the cost per signature.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

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
    busy: Arc<AtomicBool>,
    queued: Arc<AtomicUsize>,
    inline: Arc<AtomicUsize>,
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
        let busy = Arc::new(AtomicBool::new(false));
        let queued = Arc::new(AtomicUsize::new(0));
        let (worker_busy, worker_queued) = (busy.clone(), queued.clone());
        let spawned = std::thread::Builder::new()
            .name("hearthnet-verify".into())
            .spawn(move || {
                while let Some(first) = rx.blocking_recv() {
                    worker_busy.store(true, Ordering::Release);
                    let mut jobs = vec![first];
                    while jobs.len() < MAX_BATCH {
                        match rx.try_recv() {
                            Ok(j) => jobs.push(j),
                            Err(_) => break,
                        }
                    }
                    worker_queued.fetch_sub(jobs.len(), Ordering::AcqRel);
                    let results = {
                        let calls: Vec<&CallRequest> = jobs.iter().map(|j| &j.call).collect();
                        verify_calls_batch(&calls)
                    };
                    for (job, result) in jobs.into_iter().zip(results) {
                        let _ = job.reply.send((job.call, result));
                    }
                    worker_busy.store(false, Ordering::Release);
                }
            });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "no verification thread; verifying inline");
        }
        Self {
            tx,
            busy,
            queued,
            inline: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// Verifies one call's signature; returns the call and its caller.
    pub async fn verify(&self, call: CallRequest) -> Reply {
        // Idle: nobody to batch with, so do not pay for a thread hop. One
        // inline verification at a time; others go to the worker.
        if !self.busy.load(Ordering::Acquire)
            && self.queued.load(Ordering::Acquire) == 0
            && self
                .inline
                .compare_exchange(0, 1, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            let r = verify_call(&call);
            self.inline.store(0, Ordering::Release);
            return (call, r);
        }
        self.queued.fetch_add(1, Ordering::AcqRel);
        let (reply, rx) = oneshot::channel();
        match self.tx.send(Job { call, reply }).await {
            Ok(()) => match rx.await {
                Ok(r) => r,
                Err(_) => unreachable_worker(),
            },
            // No worker: check inline.
            Err(mpsc::error::SendError(job)) => {
                self.queued.fetch_sub(1, Ordering::AcqRel);
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
