//! SSH clients other than OpenSSH's through the proxy: PuTTY's `plink` and Dropbear's
//! `dbclient`, as they are and with their hardening against trivial authentication (which
//! needs `[auth] methods` without `"none"`, and a key of the user's — any key). Needs root
//! (sshd).

mod support;

use std::{
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
};

use portcullis_testbed::{Gateway, GatewayOptions};

const BIN: &str = env!("CARGO_BIN_EXE_portcullis");

fn gateway(extra: &str) -> Option<Gateway> {
    support::privileged().then(|| {
        Gateway::start(
            Path::new(BIN),
            &GatewayOptions {
                extra: extra.into(),
                ..Default::default()
            },
        )
    })
}

const NO_NONE: &str = "\n[auth]\nmethods = [\"publickey\", \"keyboard-interactive\"]\n";

fn text(o: &Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// The fingerprint of the host key the proxy presents (plink in batch mode wants it given).
fn proxy_fingerprint(g: &Gateway) -> String {
    let scan = Command::new("ssh-keyscan")
        .args(["-t", "ed25519", "-p", &g.proxy_port.to_string(), "127.0.0.1"])
        .output()
        .unwrap();
    let mut fp = Command::new("ssh-keygen")
        .args(["-l", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    fp.stdin.take().unwrap().write_all(&scan.stdout).unwrap();
    let out = fp.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .nth(1)
        .unwrap_or_else(|| panic!("no host key from ssh-keyscan: {}", text(&scan)))
        .to_string()
}

fn plink(g: &Gateway, extra: &[&str], cmd: &str) -> Output {
    Command::new("plink")
        .args(["-batch", "-ssh", "-P", &g.proxy_port.to_string()])
        .args(["-hostkey", &proxy_fingerprint(g)])
        .args(extra)
        .args(["root@127.0.0.1", cmd])
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn dbclient(g: &Gateway, extra: &[&str], cmd: &str) -> Output {
    Command::new("dbclient")
        .args(["-y", "-p", &g.proxy_port.to_string()])
        .args(extra)
        .args(["root@127.0.0.1", cmd])
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// A PuTTY key and a Dropbear key, both Ed25519, without passphrase, in `dir`.
fn client_keys(dir: &Path) -> (PathBuf, PathBuf) {
    std::fs::create_dir_all(dir).unwrap();
    let (ppk, db) = (dir.join("putty.ppk"), dir.join("dropbear_key"));
    let _ = std::fs::remove_file(&db);
    let st = Command::new("puttygen")
        .args(["-t", "ed25519", "--new-passphrase", "/dev/null", "-o"])
        .arg(&ppk)
        .output()
        .unwrap();
    assert!(st.status.success(), "puttygen: {}", text(&st));
    let st = Command::new("dropbearkey")
        .args(["-t", "ed25519", "-f"])
        .arg(&db)
        .output()
        .unwrap();
    assert!(st.status.success(), "dropbearkey: {}", text(&st));
    (ppk, db)
}

#[test]
fn plink_and_dbclient_run_commands_with_their_exit_status() {
    let Some(g) = gateway("") else { return };
    let o = plink(&g, &[], "echo from plink; exit 5");
    assert_eq!(o.status.code(), Some(5), "{}", text(&o));
    assert_eq!(String::from_utf8_lossy(&o.stdout), "from plink\n", "{}", text(&o));
    let o = dbclient(&g, &[], "echo from dbclient; exit 4");
    assert_eq!(o.status.code(), Some(4), "{}", text(&o));
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        "from dbclient\n",
        "{}",
        text(&o)
    );
    let starts = g.audit().iter().filter(|e| e["event"] == "session.start").count();
    assert_eq!(starts, 2, "{:?}", g.audit());
}

/// Hardened clients abandon a session the server let in without credentials. With `none`
/// on (the default) they cannot connect; with it off they authenticate with any key of
/// theirs — identity still comes from the source address.
#[test]
fn clients_hardened_against_trivial_auth_connect_when_none_is_off() {
    let Some(g) = gateway("") else { return };
    let keys = std::env::temp_dir().join(support::unique("portcullis-client-keys-"));
    let (ppk, db) = client_keys(&keys);
    let ppk = ppk.to_str().unwrap();
    let db = db.to_str().unwrap();
    let o = plink(&g, &["-no-trivial-auth", "-i", ppk], "true");
    assert_ne!(o.status.code(), Some(0), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("trivial"),
        "{}",
        text(&o)
    );
    drop(g);

    let Some(g) = gateway(NO_NONE) else { return };
    let o = plink(&g, &["-no-trivial-auth", "-i", ppk], "echo hardened plink");
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert_eq!(String::from_utf8_lossy(&o.stdout), "hardened plink\n");
    let o = dbclient(
        &g,
        &["-o", "DisableTrivialAuth=yes", "-i", db],
        "echo hardened dbclient",
    );
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert_eq!(String::from_utf8_lossy(&o.stdout), "hardened dbclient\n");
    let who: Vec<String> = g
        .audit()
        .iter()
        .filter(|e| e["event"] == "session.start")
        .map(|e| e["identity"].to_string())
        .collect();
    assert_eq!(
        who, ["\"alice@example.com\""; 2],
        "identity from the source address"
    );
    let _ = std::fs::remove_dir_all(&keys);
}

/// `[auth] methods` is enforced, not only advertised: a method left out fails even when a
/// client tries it; one that is listed succeeds.
#[test]
fn methods_left_out_are_refused_even_when_tried() {
    use russh::keys::{Algorithm, PrivateKey, PrivateKeyWithHashAlg};
    let Some(g) = gateway("\n[auth]\nmethods = [\"publickey\"]\n") else {
        return;
    };
    support::runtime().block_on(async {
        let mut h = support::connect(g.proxy_port).await;
        assert!(!h.authenticate_none("root").await.unwrap().success(), "none");
        let kbd = h
            .authenticate_keyboard_interactive_start("root", None)
            .await
            .unwrap();
        assert!(
            !matches!(kbd, russh::client::KeyboardInteractiveAuthResponse::Success),
            "keyboard-interactive"
        );
        let key = PrivateKey::random(&mut rand::rng(), Algorithm::Ed25519).unwrap();
        let key = PrivateKeyWithHashAlg::new(std::sync::Arc::new(key), None);
        assert!(
            h.authenticate_publickey("root", key).await.unwrap().success(),
            "publickey"
        );
    });
}
