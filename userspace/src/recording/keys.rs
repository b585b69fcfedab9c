//! The operator's recording key pair in ssh-log-cli's format: `sshkey` and `sshkey.pub`, each
//! the standard (padded) base64 of a raw 32-byte X25519 key, with no trailing newline (the
//! tool fails to load a private key followed by a newline).

use std::{
    fs::OpenOptions,
    io::Write,
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
};

use base64::{engine::general_purpose::STANDARD, Engine};
use hpke::{kem::X25519HkdfSha256, Deserializable, Kem, Serializable};

pub type PublicKey = <X25519HkdfSha256 as Kem>::PublicKey;
pub type PrivateKey = <X25519HkdfSha256 as Kem>::PrivateKey;

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not a recording key (expected the base64 of 32 bytes, as `portcullis keygen` or `ssh-log-cli generate-key-pair` write)")]
    Format { path: PathBuf },
}

fn write_new(path: &Path, body: &[u8], mode: u32) -> Result<(), KeyError> {
    let io = |source| KeyError::Io {
        path: path.to_owned(),
        source,
    };
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(io)?;
    f.write_all(body).and_then(|_| f.sync_all()).map_err(io)
}

/// Writes a fresh key pair into `dir` (refusing to overwrite one).
pub fn generate(dir: &Path) -> Result<(PathBuf, PathBuf), KeyError> {
    std::fs::create_dir_all(dir).map_err(|source| KeyError::Io {
        path: dir.to_owned(),
        source,
    })?;
    let (sk, pk) = X25519HkdfSha256::gen_keypair();
    let (skp, pkp) = (dir.join("sshkey"), dir.join("sshkey.pub"));
    write_new(&skp, STANDARD.encode(sk.to_bytes()).as_bytes(), 0o600)?;
    write_new(&pkp, STANDARD.encode(pk.to_bytes()).as_bytes(), 0o644)?;
    Ok((skp, pkp))
}

fn read_key(path: &Path) -> Result<[u8; 32], KeyError> {
    let text = std::fs::read_to_string(path).map_err(|source| KeyError::Io {
        path: path.to_owned(),
        source,
    })?;
    // Tolerate surrounding whitespace on reading; we never write it.
    let raw = STANDARD.decode(text.trim()).map_err(|_| KeyError::Format {
        path: path.to_owned(),
    })?;
    raw.try_into().map_err(|_| KeyError::Format {
        path: path.to_owned(),
    })
}

pub fn load_public(path: &Path) -> Result<PublicKey, KeyError> {
    PublicKey::from_bytes(&read_key(path)?).map_err(|_| KeyError::Format {
        path: path.to_owned(),
    })
}

pub fn load_private(path: &Path) -> Result<PrivateKey, KeyError> {
    PrivateKey::from_bytes(&read_key(path)?).map_err(|_| KeyError::Format {
        path: path.to_owned(),
    })
}
