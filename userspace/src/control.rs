//! The control socket: a unix socket under the state directory
//! (`<state_dir>/<instance>/control.sock`, 0600) through which the CLI lists live
//! sessions, ends one, and reloads the configuration with an answer. One JSON request
//! line, one JSON answer line. Only root or the daemon's own user may use it (checked on
//! the peer's credentials, besides the file mode).

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::{UnixListener, UnixStream},
    sync::{mpsc, oneshot},
};

use crate::{
    audit::{Audit, Event},
    config::schema::DataplaneConfig,
    live::{self, Listed, Termination},
};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "request", rename_all = "snake_case")]
pub enum Request {
    Sessions,
    Terminate { session: String, reason: Option<String> },
    Reload,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "answer", rename_all = "snake_case")]
pub enum Answer {
    Sessions {
        sessions: Vec<Listed>,
    },
    Terminated {
        session: String,
    },
    NoSuchSession {
        session: String,
    },
    /// The new configuration is in force.
    Reloaded {
        generation: i64,
    },
    /// The new configuration was refused; the previous one keeps serving.
    ReloadRejected {
        error: String,
    },
    Error {
        error: String,
    },
}

/// A reload asked for: by whom (for the audit trail) and where to send its outcome (none
/// for SIGHUP).
pub struct ReloadRequest {
    pub by: String,
    pub answer: Option<oneshot::Sender<Result<i64, String>>>,
}

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: the daemon's answer is not understood: {source}")]
    Answer {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{path}: the daemon closed the connection without answering")]
    NoAnswer { path: PathBuf },
}

/// Where an instance's control socket is.
pub fn path(cfg: &DataplaneConfig) -> PathBuf {
    cfg.state_dir.join(&cfg.instance).join("control.sock")
}

/// The default reason `terminate` gives the user.
pub const DEFAULT_REASON: &str = "terminated by the gateway's operator";
/// Longest request line.
const MAX_REQUEST: u64 = 64 * 1024;
/// A client must send its request within this.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest operator reason kept (it is shown to the user and audited).
const MAX_REASON: usize = 256;

/// Binds the control socket (a stale one from a killed daemon is replaced).
pub fn bind(cfg: &DataplaneConfig) -> Result<UnixListener, ControlError> {
    use std::os::unix::fs::PermissionsExt;
    let p = path(cfg);
    let io = |source| ControlError::Io {
        path: p.clone(),
        source,
    };
    if let Some(dir) = p.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    match std::fs::remove_file(&p) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(e)),
    }
    let l = UnixListener::bind(&p).map_err(io)?;
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).map_err(io)?;
    Ok(l)
}

/// Serves the control socket until the daemon stops. `reloads` is weak: a stopping daemon
/// closes its reload queue, and this server must not keep it open.
pub async fn serve(listener: UnixListener, reloads: mpsc::WeakSender<ReloadRequest>, audit: Arc<Audit>) {
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                tracing::warn!(error = %e, "control socket: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let (reloads, audit) = (reloads.clone(), audit.clone());
        tokio::spawn(async move {
            if let Err(e) = one(stream, &reloads, &audit).await {
                tracing::debug!(error = %e, "control socket: a request failed");
            }
        });
    }
}

async fn one(
    stream: UnixStream,
    reloads: &mpsc::WeakSender<ReloadRequest>,
    audit: &Audit,
) -> std::io::Result<()> {
    let cred = stream.peer_cred()?;
    let (rd, mut wr) = stream.into_split();
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    let answer = if cred.uid() != 0 && cred.uid() != me {
        Answer::Error {
            error: format!("uid {} may not use the control socket", cred.uid()),
        }
    } else {
        let mut line = String::new();
        // One byte past the cap tells a request that is too long from one that fits.
        let mut rd = BufReader::new(rd.take(MAX_REQUEST + 1));
        let read = rd.read_line(&mut line);
        match tokio::time::timeout(REQUEST_TIMEOUT, read).await {
            Ok(Ok(n)) if n as u64 > MAX_REQUEST => Answer::Error {
                error: format!("request longer than {} KiB", MAX_REQUEST / 1024),
            },
            Ok(Ok(_)) => match serde_json::from_str::<Request>(&line) {
                Ok(req) => {
                    let by = match cred.pid() {
                        Some(pid) => format!("uid {} pid {pid}", cred.uid()),
                        None => format!("uid {}", cred.uid()),
                    };
                    handle(req, &by, reloads, audit).await
                }
                Err(e) => Answer::Error {
                    error: format!("not a request: {e}"),
                },
            },
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::InvalidData => Answer::Error {
                error: "not a request: not UTF-8".into(),
            },
            Ok(Err(e)) => return Err(e),
            Err(_) => Answer::Error {
                error: "no request within 5 s".into(),
            },
        }
    };
    let mut out = serde_json::to_vec(&answer).map_err(std::io::Error::other)?;
    out.push(b'\n');
    wr.write_all(&out).await?;
    wr.shutdown().await
}

async fn handle(req: Request, by: &str, reloads: &mpsc::WeakSender<ReloadRequest>, audit: &Audit) -> Answer {
    match req {
        Request::Sessions => Answer::Sessions {
            sessions: live::registry().list(),
        },
        Request::Terminate { session, reason } => {
            let reason = reason
                .filter(|r| !r.trim().is_empty())
                .unwrap_or_else(|| DEFAULT_REASON.into());
            // Shown to the user in a DISCONNECT and audited: one printable line, bounded.
            let reason = crate::audit::printable(&reason, MAX_REASON);
            let t = Termination {
                reason,
                by: by.to_owned(),
            };
            // Every request is audited: the first by the relay as it ends the session
            // (`session.terminated`), the others here, since an operator's request is a
            // decision even when it changes nothing.
            let reason = t.reason.clone();
            let (event, why, answer) = match live::registry().terminate(&session, t) {
                live::Terminate::Asked => return Answer::Terminated { session },
                live::Terminate::Repeated => (
                    "session.terminate_repeated",
                    reason,
                    Answer::Terminated {
                        session: session.clone(),
                    },
                ),
                live::Terminate::NoSuchSession => (
                    "session.terminate_failed",
                    "no such live session".into(),
                    Answer::NoSuchSession {
                        session: session.clone(),
                    },
                ),
            };
            let mut e = Event::new(event, &session);
            e.requested_by = Some(by.to_owned());
            e.reason = Some(why);
            audit.emit(&e);
            answer
        }
        Request::Reload => {
            let (tx, rx) = oneshot::channel();
            let sent = match reloads.upgrade() {
                Some(r) => r
                    .send(ReloadRequest {
                        by: by.to_owned(),
                        answer: Some(tx),
                    })
                    .await
                    .is_ok(),
                None => false,
            };
            if !sent {
                return Answer::Error {
                    error: "the reloader has stopped; restart the daemon".into(),
                };
            }
            match rx.await {
                Ok(Ok(generation)) => Answer::Reloaded { generation },
                Ok(Err(error)) => Answer::ReloadRejected { error },
                Err(_) => Answer::Error {
                    error: "the reload was abandoned (the daemon is stopping)".into(),
                },
            }
        }
    }
}

/// The CLI's side: sends `req` to the daemon at `socket` and returns its answer.
pub async fn ask(socket: &Path, req: &Request) -> Result<Answer, ControlError> {
    let io = |source| ControlError::Io {
        path: socket.to_owned(),
        source,
    };
    let mut s = UnixStream::connect(socket).await.map_err(io)?;
    let mut line = serde_json::to_vec(req).expect("requests serialize");
    line.push(b'\n');
    s.write_all(&line).await.map_err(io)?;
    let mut answer = String::new();
    BufReader::new(s).read_line(&mut answer).await.map_err(io)?;
    if answer.is_empty() {
        return Err(ControlError::NoAnswer {
            path: socket.to_owned(),
        });
    }
    serde_json::from_str(&answer).map_err(|source| ControlError::Answer {
        path: socket.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_and_answers_on_the_wire() {
        let r: Request =
            serde_json::from_str(r#"{"request":"terminate","session":"s1","reason":null}"#).unwrap();
        assert_eq!(
            r,
            Request::Terminate {
                session: "s1".into(),
                reason: None
            }
        );
        let a = serde_json::to_string(&Answer::Reloaded { generation: 3 }).unwrap();
        assert_eq!(a, r#"{"answer":"reloaded","generation":3}"#);
        assert!(serde_json::from_str::<Request>(r#"{"request":"rm -rf"}"#).is_err());
    }
}
