//! The implementation under test: reached at a URL, or launched from a
//! command line that the runner starts, waits for, resets and stops
//! (CONF-014). Calls go out over the gRPC binding exactly as built, and come
//! back as the raw frames the target sent, so every framing rule can be
//! checked and reported rather than enforced.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use hearthnet_sdk::proto::hearthnet::bus::v1::bus_service_client::BusServiceClient;
use hearthnet_sdk::proto::hearthnet::bus::v1::{CallRequest, Frame};
use tonic::transport::{Channel, Endpoint};

/// Errors reaching or launching a target.
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    /// The URL is not `grpc://HOST:PORT` or `http://HOST:PORT`.
    #[error("target {0:?}: expected grpc://HOST:PORT or http://HOST:PORT")]
    Url(String),
    /// The launch command could not be started.
    #[error("cannot launch {command:?}: {source}")]
    Spawn {
        /// The command line.
        command: String,
        /// Why.
        source: std::io::Error,
    },
    /// The target did not answer `protocol.describe` in time.
    #[error("target at {url} not ready after {secs} s{log}")]
    NotReady {
        /// Where it was expected.
        url: String,
        /// How long the runner waited.
        secs: u64,
        /// The launched process's exit status and log file, when launched.
        log: String,
    },
    /// Local I/O (data directory, log file, free port).
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// A launched target process.
#[derive(Debug)]
struct Launched {
    command: String,
    child: tokio::process::Child,
    data: PathBuf,
    log: PathBuf,
    port: u16,
    caller: String,
    /// `{peer}` of the command (empty for the main target).
    peer: String,
    // Holds the data directory for the run.
    _dir: tempfile::TempDir,
}

/// The target of a run.
#[derive(Debug)]
pub struct Target {
    url: String,
    client: BusServiceClient<Channel>,
    launched: Option<Launched>,
}

/// The frames of one call as the target sent them.
#[derive(Debug, Clone, Default)]
pub struct Observed {
    /// Every frame, in arrival order.
    pub frames: Vec<Frame>,
    /// The gRPC status or transport failure that ended the stream, if any.
    pub transport_error: Option<String>,
}

const READY_WAIT: Duration = Duration::from_secs(90);
const CALL_DEADLINE: Duration = Duration::from_secs(30);

fn endpoint(url: &str) -> Result<String, TargetError> {
    let rest = url
        .strip_prefix("grpc://")
        .or_else(|| url.strip_prefix("http://"))
        .ok_or_else(|| TargetError::Url(url.to_string()))?;
    let rest = rest.trim_end_matches('/');
    if rest.is_empty() || rest.contains('/') || !rest.contains(':') {
        return Err(TargetError::Url(url.to_string()));
    }
    Ok(format!("http://{rest}"))
}

fn lazy_client(url: &str) -> Result<BusServiceClient<Channel>, TargetError> {
    let channel = Endpoint::from_shared(endpoint(url)?)
        .map_err(|_| TargetError::Url(url.to_string()))?
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_secs(5))
        .connect_lazy();
    Ok(BusServiceClient::new(channel)
        .max_decoding_message_size(hearthnet_sdk::constants::BUS_MAX_MESSAGE_BYTES as usize * 2))
}

impl Target {
    /// A target already running at `url`.
    pub fn at(url: &str) -> Result<Self, TargetError> {
        Ok(Self {
            url: url.to_string(),
            client: lazy_client(url)?,
            launched: None,
        })
    }

    /// Launches `command` with `sh -c`. `{port}`, `{data}` and `{caller}`
    /// in the command (and the variables `HEARTHNET_CONFORMANCE_PORT`,
    /// `…_DATA`, `…_CALLER` in its environment) name a free loopback port,
    /// an empty data directory and the NodeID the runner calls as, so the
    /// command can grant that caller trust. Output goes to `log`.
    pub async fn launch(command: &str, caller: &str, log: &Path) -> Result<Self, TargetError> {
        Self::spawned(command, caller, log, String::new())
    }

    /// Launches a second instance of a launched target's command, on its own
    /// port and data, told to use this one as a peer: `{peer}` (and
    /// `HEARTHNET_CONFORMANCE_PEER`) is `http://127.0.0.1:PORT` of this
    /// target. `None` when this target was not launched.
    pub fn launch_peer(&self, log: &Path) -> Result<Option<Self>, TargetError> {
        let Some(l) = &self.launched else {
            return Ok(None);
        };
        let peer = format!("http://127.0.0.1:{}", l.port);
        Self::spawned(&l.command, &l.caller, log, peer).map(Some)
    }

    /// `command` started on a free port and an empty data directory.
    fn spawned(command: &str, caller: &str, log: &Path, peer: String) -> Result<Self, TargetError> {
        let dir = tempfile::tempdir()?;
        let data = dir.path().join("data");
        std::fs::create_dir_all(&data)?;
        let port = free_port()?;
        let child = spawn(command, port, &data, caller, log, &peer)?;
        let url = format!("grpc://127.0.0.1:{port}");
        Ok(Self {
            client: lazy_client(&url)?,
            url,
            launched: Some(Launched {
                command: command.to_string(),
                child,
                data,
                log: log.to_path_buf(),
                port,
                caller: caller.to_string(),
                peer,
                _dir: dir,
            }),
        })
    }

    /// Where a launched target's output goes.
    pub fn log_path(&self) -> Option<&Path> {
        self.launched.as_ref().map(|l| l.log.as_path())
    }

    /// The URL calls go to.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Whether the runner launched the target (and can reset it).
    pub fn is_launched(&self) -> bool {
        self.launched.is_some()
    }

    /// Waits until `probe` answers with a frame (any frame: readiness, not
    /// correctness), or the launched process exits.
    pub async fn wait_ready(&mut self, probe: impl Fn() -> CallRequest) -> Result<(), TargetError> {
        let started = Instant::now();
        loop {
            let o = self.call(probe()).await;
            if !o.frames.is_empty() {
                return Ok(());
            }
            let exited = match &mut self.launched {
                Some(l) => l.child.try_wait()?.map(|s| s.to_string()),
                None => None,
            };
            if exited.is_some() || started.elapsed() > READY_WAIT {
                let log = match &self.launched {
                    Some(l) => format!(
                        " (process {}; its output is in {})",
                        exited.unwrap_or_else(|| "still running".into()),
                        l.log.display()
                    ),
                    None => String::new(),
                };
                return Err(TargetError::NotReady {
                    url: self.url.clone(),
                    secs: started.elapsed().as_secs(),
                    log,
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Stops a launched target (SIGTERM to its process group, then SIGKILL
    /// after `grace`); returns whether it exited within the grace period.
    pub async fn stop(&mut self, grace: Duration) -> Result<bool, TargetError> {
        let Some(l) = &mut self.launched else {
            return Ok(true);
        };
        if l.child.try_wait()?.is_some() {
            return Ok(true);
        }
        if let Some(pid) = l.child.id() {
            signal_group(pid, "-TERM");
        }
        let clean = tokio::time::timeout(grace, l.child.wait()).await.is_ok();
        if !clean {
            if let Some(pid) = l.child.id() {
                signal_group(pid, "-KILL");
            }
            let _ = l.child.wait().await;
        }
        Ok(clean)
    }

    /// Restarts a launched target on the same port; with `wipe`, on an
    /// empty data directory (a reset), else on the same data (restart
    /// persistence).
    pub async fn restart(&mut self, wipe: bool) -> Result<bool, TargetError> {
        let clean = self.stop(Duration::from_secs(10)).await?;
        let Some(l) = &mut self.launched else {
            return Ok(clean);
        };
        if wipe {
            std::fs::remove_dir_all(&l.data)?;
            std::fs::create_dir_all(&l.data)?;
        }
        l.child = spawn(&l.command, l.port, &l.data, &l.caller, &l.log, &l.peer)?;
        self.client = lazy_client(&self.url)?;
        Ok(clean)
    }

    /// Sends one call and collects what comes back until the stream ends
    /// (or the deadline passes).
    pub async fn call(&self, call: CallRequest) -> Observed {
        let mut obs = Observed::default();
        let mut req = tonic::Request::new(call);
        req.set_timeout(CALL_DEADLINE);
        let run = async {
            let mut stream = match self.client.clone().call(req).await {
                Ok(s) => s.into_inner(),
                Err(status) => {
                    obs.transport_error = Some(format!(
                        "gRPC status {:?}: {}",
                        status.code(),
                        status.message()
                    ));
                    return;
                }
            };
            loop {
                match stream.message().await {
                    Ok(Some(r)) => match r.frame {
                        Some(f) => obs.frames.push(f),
                        None => {
                            obs.transport_error = Some("a CallResponse without a frame".into());
                            return;
                        }
                    },
                    Ok(None) => return,
                    Err(status) => {
                        obs.transport_error = Some(format!(
                            "gRPC status {:?}: {}",
                            status.code(),
                            status.message()
                        ));
                        return;
                    }
                }
            }
        };
        if tokio::time::timeout(CALL_DEADLINE + Duration::from_secs(5), run)
            .await
            .is_err()
        {
            obs.transport_error = Some(format!(
                "no end of stream within {} s",
                CALL_DEADLINE.as_secs() + 5
            ));
        }
        obs
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        if let Some(l) = &mut self.launched
            && let Some(pid) = l.child.id()
        {
            signal_group(pid, "-KILL");
        }
    }
}

/// Sends `signal` to the process group `pid` leads (launched targets run in
/// their own group, so a shell wrapper's children get it too).
fn signal_group(pid: u32, signal: &str) {
    let _ = std::process::Command::new("kill")
        .args([signal, "--", &format!("-{pid}")])
        .status();
}

fn free_port() -> Result<u16, std::io::Error> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

fn spawn(
    command: &str,
    port: u16,
    data: &Path,
    caller: &str,
    log: &Path,
    peer: &str,
) -> Result<tokio::process::Child, TargetError> {
    let line = command
        .replace("{port}", &port.to_string())
        .replace("{data}", &data.display().to_string())
        .replace("{caller}", caller)
        .replace("{peer}", peer);
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)?;
    let err = out.try_clone()?;
    tokio::process::Command::new("sh")
        .arg("-c")
        .arg(&line)
        .env("HEARTHNET_CONFORMANCE_PORT", port.to_string())
        .env("HEARTHNET_CONFORMANCE_DATA", data)
        .env("HEARTHNET_CONFORMANCE_CALLER", caller)
        .env("HEARTHNET_CONFORMANCE_PEER", peer)
        .stdin(std::process::Stdio::null())
        .stdout(out)
        .stderr(err)
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(|source| TargetError::Spawn {
            command: line,
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(
            endpoint("grpc://127.0.0.1:7080").ok().as_deref(),
            Some("http://127.0.0.1:7080")
        );
        assert_eq!(
            endpoint("http://[::1]:7080/").ok().as_deref(),
            Some("http://[::1]:7080")
        );
        assert!(endpoint("ftp://x:1").is_err());
        assert!(endpoint("grpc://host").is_err());
        assert!(endpoint("grpc://host:1/path").is_err());
    }
}
