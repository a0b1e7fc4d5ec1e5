//! Opening the node's embedded fjall databases.

use std::path::Path;
use std::time::{Duration, Instant};

use fjall::Database;

/// How long an open waits for another holder of the database lock (a
/// previous instance of the node still closing) before giving up.
const LOCK_WAIT: Duration = Duration::from_secs(10);

/// Opens (or creates) the fjall database in `dir`. A database still locked
/// by an instance that is shutting down (its worker threads release the
/// lock a moment after it closes) is retried for up to ten seconds; any
/// other error, or a lock held longer, is returned as it is.
pub(crate) fn open_database(dir: &Path) -> fjall::Result<Database> {
    let started = Instant::now();
    let mut warned = false;
    loop {
        match Database::builder(dir).open() {
            Err(fjall::Error::Locked) if started.elapsed() < LOCK_WAIT => {
                if !warned {
                    tracing::info!(
                        path = %dir.display(),
                        "database locked by another instance; waiting for it to close"
                    );
                    warned = true;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            other => return other,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_lock_released_while_waiting_is_taken() {
        let dir = tempfile::tempdir().unwrap();
        let first = open_database(dir.path()).unwrap();
        // Released a moment later: the second open waits and succeeds.
        let closer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            drop(first);
        });
        let second = open_database(dir.path()).unwrap();
        closer.join().unwrap();
        drop(second);
    }
}
