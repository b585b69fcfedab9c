//! The account's keys: creating them (`portcullis ca init`) and printing the CA's public key
//! in the form an operator pastes into a target's `ca.pub` / `TrustedUserCAKeys`.

use std::{
    fs::OpenOptions,
    io::Write,
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
};

use rand::RngExt;
use ssh_key::{Algorithm, LineEnding, PrivateKey};

use crate::config::Account;

#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not an OpenSSH private key: {source}")]
    Key {
        path: PathBuf,
        #[source]
        source: ssh_key::Error,
    },
    #[error("generating the CA key: {0}")]
    Generate(#[source] ssh_key::Error),
}

/// What `init` did with each file.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    Created(PathBuf),
    Kept(PathBuf),
}

/// Writes `bytes` to a new file readable by its owner only; an existing file is kept.
fn create_private(path: &Path, bytes: &[u8]) -> Result<Outcome, CaError> {
    let io = |source| CaError::Io {
        path: path.to_owned(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    match OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(mut f) => {
            f.write_all(bytes).and_then(|_| f.sync_all()).map_err(io)?;
            Ok(Outcome::Created(path.to_owned()))
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(Outcome::Kept(path.to_owned())),
        Err(e) => Err(io(e)),
    }
}

/// Creates the account secret (32 random bytes) and the Ed25519 CA key if they are missing.
pub fn init(account: &Account) -> Result<Vec<Outcome>, CaError> {
    let secret: [u8; 32] = rand::rng().random();
    let a = create_private(&account.secret, &secret)?;
    let key = PrivateKey::random(&mut rand::rng(), Algorithm::Ed25519).map_err(CaError::Generate)?;
    let pem = key.to_openssh(LineEnding::LF).map_err(CaError::Generate)?;
    let b = create_private(&account.ca_key, pem.as_bytes())?;
    Ok(vec![a, b])
}

pub fn load_ca(path: &Path) -> Result<PrivateKey, CaError> {
    let text = std::fs::read_to_string(path).map_err(|source| CaError::Io {
        path: path.to_owned(),
        source,
    })?;
    PrivateKey::from_openssh(text).map_err(|source| CaError::Key {
        path: path.to_owned(),
        source,
    })
}

/// The line for `TrustedUserCAKeys` / `ca.pub`.
pub fn public_line(path: &Path) -> Result<String, CaError> {
    let key = load_ca(path)?;
    let mut pk = key.public_key().clone();
    pk.set_comment("portcullis-ca");
    pk.to_openssh().map_err(CaError::Generate)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn init_creates_private_files_once_and_prints_a_public_line() {
        let dir = std::env::temp_dir().join(format!("portcullis-ca-{}", std::process::id()));
        let account = Account {
            secret: dir.join("secret"),
            ca_key: dir.join("ca"),
            recording_public_key: None,
            recording_signing_key: None,
        };
        let first = init(&account).unwrap();
        assert!(first.iter().all(|o| matches!(o, Outcome::Created(_))));
        for p in [&account.secret, &account.ca_key] {
            assert_eq!(std::fs::metadata(p).unwrap().permissions().mode() & 0o777, 0o600);
        }
        let line = public_line(&account.ca_key).unwrap();
        assert!(
            line.starts_with("ssh-ed25519 AAAA") && line.ends_with(" portcullis-ca"),
            "{line}"
        );
        let again = init(&account).unwrap();
        assert!(
            again.iter().all(|o| matches!(o, Outcome::Kept(_))),
            "never overwrites keys"
        );
        assert_eq!(public_line(&account.ca_key).unwrap(), line);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
