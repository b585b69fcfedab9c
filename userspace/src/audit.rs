//! The audit trail (DESIGN §5): one JSON object per line, to an append-only file (reopened
//! on SIGHUP for log rotation) and/or stdout. Every event carries the same fields, null when
//! not known yet, so readers never need to guess.

use std::{
    fs::{File, OpenOptions},
    io::Write,
    net::SocketAddr,
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicU64, Ordering},
        Mutex,
    },
    time::{SystemTime, UNIX_EPOCH},
};

use serde::Serialize;

use crate::config::schema::AuditConfig;

#[derive(Clone, Debug, Default, Serialize)]
pub struct Event {
    pub time: String,
    pub event: &'static str,
    pub session: String,
    pub identity: Option<String>,
    pub source: Option<SocketAddr>,
    pub vnet: Option<String>,
    pub target: Option<String>,
    pub target_addr: Option<SocketAddr>,
    pub port: Option<u16>,
    pub login: Option<String>,
    /// `allow` or `deny` for decisions.
    pub decision: Option<&'static str>,
    pub reason: Option<String>,
    pub policy: Option<String>,
    pub rule: Option<String>,
    pub cert_serial: Option<u64>,
    /// How many connections an aggregate event (`refused.flood`) stands for.
    pub count: Option<u64>,
    /// Who asked for an operator's action (`session.terminated`), e.g. `uid 0 pid 4242`.
    pub requested_by: Option<String>,
    /// The environment a client asked for on a session channel before starting it
    /// (`NAME=value`): what the command ran with, if the target accepted it.
    pub env: Option<Vec<String>>,
}

impl Event {
    pub fn new(event: &'static str, session: &str) -> Self {
        Self {
            time: now_rfc3339(),
            event,
            session: session.to_string(),
            ..Default::default()
        }
    }
}

/// Now, RFC 3339 in UTC.
pub fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// Now, in seconds since the Unix epoch (0 for a clock before it).
pub fn unix_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A session id unique across restarts: start time, pid and a counter.
pub fn session_id() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis();
    format!("{t:012x}{:04x}{n:06x}", std::process::id() & 0xffff)
}

pub struct Audit {
    stdout: bool,
    file: Option<(PathBuf, Mutex<File>)>,
}

fn open(path: &Path) -> std::io::Result<File> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
}

impl Audit {
    pub fn open(cfg: &AuditConfig) -> Result<Self, std::io::Error> {
        let file = match &cfg.file {
            Some(p) => Some((
                p.clone(),
                Mutex::new(open(p).map_err(|e| {
                    std::io::Error::new(e.kind(), format!("audit file {}: {e}", p.display()))
                })?),
            )),
            None => None,
        };
        Ok(Self {
            stdout: cfg.stdout,
            file,
        })
    }

    /// Events to stdout only (when no audit configuration is at hand).
    pub fn stdout_only() -> Self {
        Self {
            stdout: true,
            file: None,
        }
    }

    /// Reopens the file (after logrotate moved it away).
    pub fn reopen(&self) -> std::io::Result<()> {
        if let Some((p, f)) = &self.file {
            let new = open(p)?;
            *f.lock().unwrap_or_else(|e| e.into_inner()) = new;
        }
        Ok(())
    }

    /// Writes one event; a failure to write is logged, never silent.
    pub fn emit(&self, e: &Event) {
        count(e);
        let mut line = match serde_json::to_vec(e) {
            Ok(l) => l,
            Err(err) => {
                tracing::error!(error = %err, "audit event did not serialize");
                return;
            }
        };
        escape_c1(&mut line);
        line.push(b'\n');
        if let Some((p, f)) = &self.file {
            let mut f = f.lock().unwrap_or_else(|e| e.into_inner());
            if let Err(err) = f.write_all(&line) {
                tracing::error!(file = %p.display(), error = %err, "audit write failed");
            }
        }
        if self.stdout {
            let mut out = std::io::stdout().lock();
            let _ = out.write_all(&line).and_then(|_| out.flush());
        }
    }
}

/// JSON escapes control characters up to U+001F only: DEL and the C1 controls (U+0080 to
/// U+009F, which a terminal showing the trail with `tail -f` would act on) are escaped
/// here, so the trail holds no raw control character while decoding to the same text.
fn escape_c1(line: &mut Vec<u8>) {
    let c1 = |w: &[u8]| w[0] == 0xc2 && (0x80..=0x9f).contains(&w[1]);
    if !line.contains(&0x7f) && !line.windows(2).any(c1) {
        return;
    }
    let mut out = Vec::with_capacity(line.len() + 64);
    let mut i = 0;
    while i < line.len() {
        match line[i] {
            0x7f => {
                out.extend_from_slice(b"\\u007f");
                i += 1;
            }
            0xc2 if line.get(i + 1).is_some_and(|b| (0x80..=0x9f).contains(b)) => {
                // C2 xx is U+00xx.
                out.extend_from_slice(format!("\\u{:04x}", line[i + 1]).as_bytes());
                i += 2;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    *line = out;
}

/// An error's text as an event's `rule`: see [`printable`], at most 512 bytes. Errors may
/// quote what a peer sent (a 256 KiB list of algorithm names of control bytes became
/// 1.5 MB of escaped JSON per connection).
pub fn clip(text: &str) -> String {
    printable(text, 512)
}

/// How much of a command an event's `rule` keeps, counted as it is written to the trail.
pub const COMMAND: usize = 16 * 1024;

/// A client's command as an event's `rule`: as sent, control characters included (the
/// trail escapes them: JSON the C0 ones, `Audit::emit` DEL and C1), since what runs is what
/// the trail must show; cut at a
/// character boundary once its escaped form passes [`COMMAND`] bytes, and then saying so.
/// Far more than [`clip`] keeps: what a command does may come after a long harmless start.
pub fn command(text: &str) -> String {
    let mut written = 0;
    for (at, c) in text.char_indices() {
        written += match c {
            '"' | '\\' => 2,
            c if c.is_control() => 6,
            c => c.len_utf8(),
        };
        if written > COMMAND {
            return format!("{} [cut: the command has {} bytes]", &text[..at], text.len());
        }
    }
    text.to_string()
}

/// For what is audited or shown to a user's terminal: the engine's.
pub use portcullis_ssh::printable::printable;

/// Every event counted in the metrics; decisions also by reason.
fn count(e: &Event) {
    let m = crate::metrics::get();
    m.audit_events
        .get_or_create(&crate::metrics::EventLabels { event: e.event })
        .inc();
    match e.event {
        "deny" => m.decided(e.decision.unwrap_or("deny"), e.reason.as_deref().unwrap_or(""), 1),
        "session.start" => m.decided("allow", "policy", 1),
        "refused.flood" => m.decided("deny", e.reason.as_deref().unwrap_or(""), e.count.unwrap_or(0)),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    /// A trail in a fresh temporary directory: the directory, the file, the writer.
    fn trail(name: &str) -> (std::path::PathBuf, std::path::PathBuf, Audit) {
        let dir = std::env::temp_dir().join(format!("portcullis-audit-{name}-{}", std::process::id()));
        let path = dir.join("audit.jsonl");
        let a = Audit::open(&AuditConfig {
            file: Some(path.clone()),
            stdout: false,
        })
        .unwrap();
        (dir, path, a)
    }

    #[test]
    fn the_trail_holds_no_raw_control_character_and_decodes_to_the_same_text() {
        let (dir, path, a) = trail("c1");
        let mut e = Event::new("channel.open", "s1");
        let text = "x\u{9d}52;c;aGk=\u{9c}\u{7f}\u{1b}]0;t\u{7}é\u{a0}";
        e.rule = Some(text.into());
        a.emit(&e);
        let line = std::fs::read(&path).unwrap();
        assert!(
            !line[..line.len() - 1].iter().any(|&b| b < 0x20 || b == 0x7f),
            "{line:?}"
        );
        assert!(!line
            .windows(2)
            .any(|w| w[0] == 0xc2 && (0x80..=0x9f).contains(&w[1])));
        let back: serde_json::Value = serde_json::from_slice(&line).unwrap();
        assert_eq!(back["rule"], text);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn commands_keep_their_control_characters_and_are_cut_by_their_written_size() {
        assert_eq!(command("ls\u{1b}[2J -l \"x\""), "ls\u{1b}[2J -l \"x\"");
        let long = format!("{}echo MARK", " ".repeat(3000));
        assert_eq!(command(&long), long, "3 KB is kept whole");
        let huge = format!("{}é{}", "x".repeat(COMMAND - 1), "y".repeat(100));
        let c = command(&huge);
        assert!(
            c.starts_with(&"x".repeat(COMMAND - 1)) && !c.contains('é'),
            "cut before the character"
        );
        assert!(
            c.ends_with(&format!("[cut: the command has {} bytes]", huge.len())),
            "{}",
            &c[COMMAND - 10..]
        );
        let controls = "\u{1}".repeat(COMMAND);
        let c = command(&controls);
        let written = serde_json::to_string(&c).unwrap().len();
        assert!(written <= COMMAND + 64, "{written} bytes in the trail");
    }

    #[test]
    fn clipped_text_is_short_whole_characters_and_no_control() {
        let long = format!("{}\u{1}é{}", "x".repeat(510), "y".repeat(4000));
        let c = clip(&long);
        assert!(c.len() <= 512 && c.starts_with(&"x".repeat(510)), "{}", c.len());
        assert!(!c.chars().any(char::is_control));
        assert_eq!(clip("no common cipher\r\n"), "no common cipher");
    }

    #[test]
    fn file_is_private_append_only_and_reopened_after_rotation() {
        let (dir, path, a) = trail("rotation");
        let mut e = Event::new("deny", "s1");
        e.reason = Some("no_policy".into());
        a.emit(&e);
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        std::fs::rename(&path, dir.join("audit.jsonl.1")).unwrap();
        a.reopen().unwrap();
        a.emit(&Event::new("connect", "s2"));
        let old = std::fs::read_to_string(dir.join("audit.jsonl.1")).unwrap();
        let new = std::fs::read_to_string(&path).unwrap();
        let v: serde_json::Value = serde_json::from_str(old.trim()).unwrap();
        assert_eq!(v["reason"], "no_policy");
        // Every field is present, null when unknown.
        for k in [
            "time",
            "session",
            "identity",
            "source",
            "vnet",
            "target",
            "port",
            "login",
            "cert_serial",
            "count",
        ] {
            assert!(v.get(k).is_some(), "{k} missing");
        }
        assert!(new.contains("\"session\":\"s2\"") && !old.contains("s2"));
        std::fs::remove_dir_all(dir).unwrap();
    }
}
