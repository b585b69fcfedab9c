//! Which host keys the proxy accepts from a target.
//!
//! By default whatever the target shows: the derived key makes a change visible to the user
//! (their client's own host-key warning) and `hostkey.changed` is audited. A `[[target]]` with
//! `host_keys` accepts only those keys; with `[upstream] host_ca_keys`, a target without pins
//! must show a host certificate from one of those CAs that names it. Either way the input of
//! the derivation is the target's key itself (a certificate's subject key), so renewing a
//! host certificate does not change the key users see.

use std::{
    collections::HashMap,
    fs::{File, OpenOptions},
    io::Write,
    net::{IpAddr, SocketAddr},
    os::unix::fs::OpenOptionsExt,
    path::PathBuf,
    sync::Mutex,
};

use ssh_key::{certificate::CertType, Certificate, Fingerprint, HashAlg, PublicKey};

/// The configuration's host-key rules (part of the reloadable snapshot).
#[derive(Clone, Debug, Default)]
pub struct Rules {
    /// SHA256 fingerprints pinned per (vnet, address).
    pub pins: HashMap<(u16, IpAddr), Vec<Fingerprint>>,
    /// Fingerprints of the host CAs whose certificates are accepted from targets without pins.
    pub cas: Vec<Fingerprint>,
}

/// What one upstream connection checks.
#[derive(Clone, Debug, Default)]
pub struct Check {
    pins: Vec<Fingerprint>,
    cas: Vec<Fingerprint>,
    /// Names a host certificate may carry for this target: its hostname and address.
    names: Vec<String>,
}

impl Rules {
    pub fn for_target(&self, vnet: u16, addr: IpAddr, hostname: &str) -> Check {
        Check {
            pins: self.pins.get(&(vnet, addr)).cloned().unwrap_or_default(),
            cas: self.cas.clone(),
            names: vec![hostname.to_ascii_lowercase(), addr.to_string()],
        }
    }
}

impl Check {
    /// Whether to ask the target for a host certificate.
    pub fn wants_certificate(&self) -> bool {
        self.pins.is_empty() && !self.cas.is_empty()
    }

    /// `Ok`, or why the key is refused (told to the user and audited).
    /// `key` is the key that signed the exchange; `cert` the host certificate shown with it.
    pub fn verify(&self, key: &PublicKey, cert: Option<&Certificate>, unix_now: u64) -> Result<(), String> {
        let fp = key.fingerprint(HashAlg::Sha256);
        if !self.pins.is_empty() {
            return match self.pins.contains(&fp) {
                true => Ok(()),
                false => Err(format!("host key {fp} is not pinned for this target (host_keys)")),
            };
        }
        if self.cas.is_empty() {
            return Ok(());
        }
        let Some(cert) = cert else {
            return Err(format!(
                "host key {fp} comes without a certificate, and [upstream] host_ca_keys requires one"
            ));
        };
        if cert.cert_type() != CertType::Host {
            return Err(format!("the certificate for {fp} is not a host certificate"));
        }
        // As OpenSSH: no critical option is defined for host certificates, so any is unknown.
        if !cert.critical_options().is_empty() {
            return Err(format!("the host certificate for {fp} carries critical options"));
        }
        // As OpenSSH (CASignatureAlgorithms): a CA signature over SHA-1 (`ssh-rsa`) is
        // refused; chosen-prefix collisions make it forgeable.
        if let ssh_key::Algorithm::Rsa { hash: None } = cert.signature().algorithm() {
            return Err(format!(
                "the host certificate for {fp} is signed with ssh-rsa (SHA-1), which is refused"
            ));
        }
        cert.validate_at(unix_now, &self.cas).map_err(|e| {
            format!(
                "host certificate for {fp} (signed by {}): {e}",
                cert.signature_key().fingerprint(HashAlg::Sha256)
            )
        })?;
        // As in OpenSSH, a certificate without principals is valid for any host.
        let principals = cert.valid_principals();
        let named = principals.is_empty()
            || principals
                .iter()
                .any(|p| self.names.iter().any(|n| n.eq_ignore_ascii_case(p)));
        if !named {
            return Err(format!(
                "host certificate for {fp} names {principals:?}, not {}",
                self.names.join(" or ")
            ));
        }
        Ok(())
    }
}

/// Parses a `target-keys` file: (vnet, target) → fingerprint, later lines winning, and the
/// (1-based) numbers of the lines skipped as unreadable.
#[doc(hidden)]
pub fn parse_target_keys(bytes: &[u8]) -> (HashMap<(u16, SocketAddr), String>, Vec<usize>) {
    let mut seen = HashMap::new();
    let mut unreadable = Vec::new();
    for (n, line) in String::from_utf8_lossy(bytes).lines().enumerate() {
        let f: Vec<&str> = line.split_whitespace().collect();
        let parsed = match f[..] {
            [v, a, fp] => v
                .parse::<u16>()
                .ok()
                .zip(a.parse::<SocketAddr>().ok())
                .map(|k| (k, fp)),
            _ => None,
        };
        match parsed {
            Some((k, fp)) => {
                seen.insert(k, fp.to_string());
            }
            None => unreadable.push(n + 1),
        }
    }
    (seen, unreadable)
}

/// The last host key each target presented, per (vnet, address, port), in an append-only
/// file (`<data_dir>/<instance>/target-keys`, a line per first sighting or change), so
/// that a restart does not forget it. Fingerprints only: nothing secret. A target whose key
/// alternates (two hosts behind one address, a misconfigured cluster) adds a line per
/// connection, so the file is rewritten with the last key of each target whenever it has
/// grown well past one line per target — at start, and while running.
pub struct KeyMemory {
    inner: Mutex<Memory>,
}

struct Memory {
    seen: HashMap<(u16, SocketAddr), String>,
    file: Option<KeyFile>,
}

struct KeyFile {
    path: PathBuf,
    f: File,
    /// Lines in the file (approximately: a line cut short by a crash counts as one).
    lines: usize,
    /// The file is compacted once it holds more lines than this.
    limit: usize,
}

/// Lines allowed beyond twice the number of targets before the file is compacted: compaction
/// rewrites every target, so it is done once per this many changes at most.
const COMPACT_SLACK: usize = 64;

fn compaction_limit(targets: usize) -> usize {
    2 * targets + COMPACT_SLACK
}

fn append_open(p: &std::path::Path) -> std::io::Result<File> {
    OpenOptions::new().append(true).create(true).mode(0o600).open(p)
}

impl KeyFile {
    /// Rewrites the file with one line per target (a new file renamed over the old one, so
    /// a crash leaves either), then appends to the new one.
    fn compact(&mut self, seen: &HashMap<(u16, SocketAddr), String>) -> std::io::Result<()> {
        let mut entries: Vec<_> = seen.iter().collect();
        entries.sort();
        let mut text = String::with_capacity(entries.len() * 80);
        for ((vnet, target), fp) in &entries {
            text.push_str(&format!("{vnet} {target} {fp}\n"));
        }
        let tmp = self.path.with_extension("compact");
        let _ = std::fs::remove_file(&tmp);
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, &self.path)?;
        self.f = append_open(&self.path)?;
        self.lines = entries.len();
        self.limit = compaction_limit(entries.len());
        Ok(())
    }

    fn compact_if_grown(&mut self, seen: &HashMap<(u16, SocketAddr), String>) {
        if self.lines <= self.limit {
            return;
        }
        let before = self.lines;
        match self.compact(seen) {
            Ok(()) => {
                tracing::info!(file = %self.path.display(), before, after = self.lines, "compacted the target host keys file")
            }
            Err(e) => {
                // Not retried on every append; the file keeps growing until the next try.
                self.limit = self.lines.saturating_mul(2);
                tracing::warn!(file = %self.path.display(), error = %e, "could not compact the target host keys file");
            }
        }
    }
}

impl KeyMemory {
    /// Loads `path` if it exists (later lines win; unreadable lines are skipped with a
    /// warning) and appends to it from then on. `None`: kept in memory only.
    pub fn open(path: Option<PathBuf>) -> Self {
        let mut seen = HashMap::new();
        let file = path.and_then(|p| {
            let bytes = std::fs::read(&p).unwrap_or_default();
            // The parser the fuzz target `target_keys` exercises.
            let (parsed, unreadable) = parse_target_keys(&bytes);
            seen = parsed;
            for n in unreadable {
                tracing::warn!(file = %p.display(), line = n, "skipping an unreadable line");
            }
            let lines = String::from_utf8_lossy(&bytes).lines().count();
            let opened = p
                .parent()
                .map_or(Ok(()), std::fs::create_dir_all)
                .and_then(|_| append_open(&p))
                .and_then(|mut f| {
                    // A line cut short by a crash must not swallow the next one.
                    if bytes.last().is_some_and(|&c| c != b'\n') {
                        f.write_all(b"\n")?;
                    }
                    Ok(f)
                });
            match opened {
                Ok(f) => {
                    let mut kf = KeyFile {
                        path: p,
                        f,
                        lines,
                        limit: compaction_limit(seen.len()),
                    };
                    kf.compact_if_grown(&seen);
                    Some(kf)
                }
                Err(e) => {
                    tracing::warn!(file = %p.display(), error = %e, "target host keys are remembered until the daemon stops only");
                    None
                }
            }
        });
        Self {
            inner: Mutex::new(Memory { seen, file }),
        }
    }

    /// Records the key `target` presented; returns the fingerprint it replaced, if it
    /// differs from the one remembered.
    pub fn remember(&self, vnet: u16, target: SocketAddr, key: &PublicKey) -> Option<String> {
        let fp = key.fingerprint(HashAlg::Sha256).to_string();
        let mut m = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let Memory { seen, file } = &mut *m;
        let old = seen.insert((vnet, target), fp.clone());
        if old.as_deref() == Some(fp.as_str()) {
            return None;
        }
        if let Some(kf) = file {
            let line = format!("{vnet} {target} {fp}\n");
            match kf.f.write_all(line.as_bytes()) {
                Ok(()) => {
                    kf.lines += 1;
                    kf.compact_if_grown(seen);
                }
                Err(e) => {
                    tracing::warn!(file = %kf.path.display(), error = %e, "could not record a target's host key")
                }
            }
        }
        old
    }
}

#[cfg(test)]
mod tests {
    use ssh_key::{certificate::Builder, Algorithm, PrivateKey};

    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn key() -> PrivateKey {
        PrivateKey::random(&mut rand::rng(), Algorithm::Ed25519).unwrap()
    }

    fn cert(ca: &PrivateKey, subject: &PrivateKey, kind: CertType, principals: &[&str]) -> Shown {
        let mut b =
            Builder::new_with_random_nonce(&mut rand::rng(), subject.public_key(), 1_000, 3_000).unwrap();
        b.cert_type(kind).unwrap();
        for p in principals {
            b.valid_principal(*p).unwrap();
        }
        if principals.is_empty() {
            b.all_principals_valid().unwrap();
        }
        shown_cert(b.sign(ca).unwrap())
    }

    /// What a target shows: its key, and a host certificate for it or not.
    type Shown = (PublicKey, Option<Certificate>);

    fn shown_cert(c: Certificate) -> Shown {
        (PublicKey::from(c.public_key().clone()), Some(c))
    }

    fn plain(k: &PrivateKey) -> Shown {
        (k.public_key().clone(), None)
    }

    fn verify(c: &Check, (key, cert): &Shown, now: u64) -> Result<(), String> {
        c.verify(key, cert.as_ref(), now)
    }

    #[test]
    fn key_memory_survives_a_restart_and_reports_changes() {
        let dir = std::env::temp_dir().join(format!("portcullis-keymem-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("inst").join("target-keys");
        let (a, b) = (key(), key());
        let t: SocketAddr = "198.18.10.10:22".parse().unwrap();
        let m = KeyMemory::open(Some(path.clone()));
        assert_eq!(m.remember(1, t, a.public_key()), None);
        assert_eq!(m.remember(1, t, a.public_key()), None);
        assert_eq!(
            m.remember(2, t, b.public_key()),
            None,
            "another vnet, another target"
        );
        drop(m);
        // A line cut short by a crash: skipped, and the next one still lands on its own.
        std::fs::write(&path, std::fs::read_to_string(&path).unwrap() + "1 198.18").unwrap();
        let m = KeyMemory::open(Some(path.clone()));
        let old = m.remember(1, t, b.public_key());
        assert_eq!(old, Some(a.public_key().fingerprint(HashAlg::Sha256).to_string()));
        assert_eq!(m.remember(1, t, b.public_key()), None);
        drop(m);
        let m = KeyMemory::open(Some(path.clone()));
        assert_eq!(m.remember(1, t, b.public_key()), None, "the change was recorded");
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A target whose key alternates must not grow the file without bound (issue 11 #9).
    #[test]
    fn key_memory_stays_small_when_a_key_alternates() {
        let dir = std::env::temp_dir().join(format!("portcullis-keyalt-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("inst").join("target-keys");
        let (a, b, c) = (key(), key(), key());
        let t: SocketAddr = "198.18.10.10:22".parse().unwrap();
        let other: SocketAddr = "198.18.10.11:22".parse().unwrap();
        let lines = || std::fs::read_to_string(&path).unwrap().lines().count();
        let m = KeyMemory::open(Some(path.clone()));
        m.remember(1, other, c.public_key());
        let mut most = 0;
        for i in 0..1000 {
            let k = if i % 2 == 0 { &a } else { &b };
            m.remember(1, t, k.public_key());
            most = most.max(lines());
        }
        assert!(most <= compaction_limit(2) + 1, "the file grew to {most} lines");
        drop(m);
        // The last key of each target survives compaction and a restart.
        let m = KeyMemory::open(Some(path.clone()));
        assert_eq!(m.remember(1, t, b.public_key()), None, "b was the last key");
        assert_eq!(m.remember(1, other, c.public_key()), None);
        drop(m);
        // A file grown by an older daemon is compacted at start.
        let fa = a.public_key().fingerprint(HashAlg::Sha256);
        let fb = b.public_key().fingerprint(HashAlg::Sha256);
        let grown: String = (0..500)
            .map(|i| format!("1 {t} {}\n", if i % 2 == 0 { fa } else { fb }))
            .collect();
        std::fs::write(&path, grown).unwrap();
        let m = KeyMemory::open(Some(path.clone()));
        assert_eq!(lines(), 1);
        assert_eq!(m.remember(1, t, b.public_key()), None);
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn without_rules_any_key_is_accepted() {
        let addr: IpAddr = "198.18.10.10".parse().unwrap();
        let c = Rules::default().for_target(1, addr, "web-01");
        assert!(!c.wants_certificate());
        assert_eq!(verify(&c, &plain(&key()), 2_000), Ok(()));
    }

    #[test]
    fn pins_accept_only_themselves_certificate_or_not() {
        let (host, other, ca) = (key(), key(), key());
        let addr: IpAddr = "198.18.10.10".parse().unwrap();
        let mut rules = Rules {
            cas: vec![ca.public_key().fingerprint(HashAlg::Sha256)],
            ..Default::default()
        };
        rules
            .pins
            .insert((1, addr), vec![host.public_key().fingerprint(HashAlg::Sha256)]);
        let c = rules.for_target(1, addr, "web-01");
        assert!(!c.wants_certificate(), "pins take precedence over the CA");
        assert_eq!(verify(&c, &plain(&host), 2_000), Ok(()));
        assert_eq!(
            verify(&c, &cert(&ca, &host, CertType::Host, &["web-01"]), 2_000),
            Ok(())
        );
        let e = verify(&c, &plain(&other), 2_000).unwrap_err();
        assert!(e.contains("not pinned"), "{e}");
        // Another address of the same vnet has no pins: the CA rule applies there.
        assert!(rules
            .for_target(1, "198.18.10.11".parse().unwrap(), "web-02")
            .wants_certificate());
    }

    #[test]
    fn certificates_must_be_host_certificates_from_the_ca_naming_the_target_in_time() {
        let (host, ca, rogue) = (key(), key(), key());
        let addr: IpAddr = "198.18.10.10".parse().unwrap();
        let rules = Rules {
            cas: vec![ca.public_key().fingerprint(HashAlg::Sha256)],
            ..Default::default()
        };
        let c = rules.for_target(1, addr, "Web-01");
        assert!(c.wants_certificate());
        let ok = |shown: Shown, now| verify(&c, &shown, now);
        assert_eq!(ok(cert(&ca, &host, CertType::Host, &["web-01"]), 2_000), Ok(()));
        assert_eq!(
            ok(cert(&ca, &host, CertType::Host, &["198.18.10.10"]), 2_000),
            Ok(())
        );
        assert_eq!(ok(cert(&ca, &host, CertType::Host, &[]), 2_000), Ok(()));
        let mut b =
            Builder::new_with_random_nonce(&mut rand::rng(), host.public_key(), 1_000, 3_000).unwrap();
        b.cert_type(CertType::Host).unwrap();
        b.valid_principal("web-01").unwrap();
        b.critical_option("force-command", "true").unwrap();
        let optioned = shown_cert(b.sign(&ca).unwrap());
        for (shown, now, why) in [
            (optioned, 2_000, "critical options"),
            (plain(&host), 2_000, "without a certificate"),
            (
                cert(&rogue, &host, CertType::Host, &["web-01"]),
                2_000,
                "signed by",
            ),
            (
                cert(&ca, &host, CertType::User, &["web-01"]),
                2_000,
                "not a host certificate",
            ),
            (cert(&ca, &host, CertType::Host, &["db-01"]), 2_000, "names"),
            (cert(&ca, &host, CertType::Host, &["web-01"]), 5_000, "signed by"),
        ] {
            let e = ok(shown, now).unwrap_err();
            assert!(e.contains(why), "{why}: {e}");
        }
    }

    /// A host certificate whose CA signed it over SHA-1 (`ssh-keygen -t ssh-rsa`) is
    /// refused, as OpenSSH refuses it; the same CA signing with rsa-sha2-512 is accepted.
    #[test]
    fn a_host_certificate_signed_over_sha1_is_refused() {
        use std::process::Command;
        let dir = std::env::temp_dir().join(format!("portcullis-sha1-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let keygen = |args: &[&str]| {
            Command::new("ssh-keygen")
                .args(args)
                .current_dir(&dir)
                .output()
                .is_ok_and(|o| o.status.success())
        };
        if !keygen(&["-q", "-t", "rsa", "-b", "2048", "-N", "", "-f", "ca"])
            || !keygen(&["-q", "-t", "ed25519", "-N", "", "-f", "host"])
        {
            eprintln!("skipping: no ssh-keygen");
            return;
        }
        let ca = PublicKey::read_openssh_file(dir.join("ca.pub")).unwrap();
        let rules = Rules {
            cas: vec![ca.fingerprint(HashAlg::Sha256)],
            ..Default::default()
        };
        let c = rules.for_target(1, "198.18.10.10".parse().unwrap(), "web-01");
        for (alg, ok) in [("ssh-rsa", false), ("rsa-sha2-512", true)] {
            let _ = std::fs::remove_file(dir.join("host-cert.pub"));
            assert!(keygen(&[
                "-q", "-s", "ca", "-t", alg, "-h", "-I", "web-01", "-n", "web-01", "host.pub"
            ]));
            let cert = Certificate::read_file(&dir.join("host-cert.pub")).unwrap();
            let now = cert.valid_after() + 1;
            let r = verify(&c, &shown_cert(cert), now);
            match ok {
                true => assert_eq!(r, Ok(()), "{alg}"),
                false => assert!(r.unwrap_err().contains("ssh-rsa (SHA-1)"), "{alg}"),
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
