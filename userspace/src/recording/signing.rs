//! The gateway's recording-signing key: an Ed25519 key in OpenSSH's private key format
//! (`[account] recording_signing_key`, 0600, created by `portcullis ca init`). It signs each
//! log's trailer; its public half (`portcullis recording pubkey`) is what `verify --signer`
//! trusts. Unlike the recording key pair, the gateway holds the private half: a signature
//! says "this gateway closed this log so", not who may read it.

use std::{
    fs::OpenOptions,
    io::Write,
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
};

use signature::{Signer, Verifier};
use ssh_key::{Algorithm, HashAlg, LineEnding, PrivateKey, PublicKey, Signature};

/// The comment on the public line, so an operator can tell it from the CA's.
const COMMENT: &str = "portcullis-recording";
pub const SIGNATURE_LEN: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum SigningError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not an OpenSSH Ed25519 {what} key: {why}")]
    Format {
        path: PathBuf,
        what: &'static str,
        why: String,
    },
    #[error("generating the recording-signing key: {0}")]
    Generate(#[source] ssh_key::Error),
    #[error("signing the recording trailer failed")]
    Sign,
}

pub struct SigningKey {
    key: PrivateKey,
    /// The public key as the trailer names it (`ssh-ed25519 AAAA…`, no comment).
    public: String,
}

/// Creates an Ed25519 signing key at `path` (0600) unless one is there. `true`: created.
pub fn generate(path: &Path) -> Result<bool, SigningError> {
    let io = |source| SigningError::Io {
        path: path.to_owned(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let key = PrivateKey::random(&mut rand::rng(), Algorithm::Ed25519).map_err(SigningError::Generate)?;
    let pem = key.to_openssh(LineEnding::LF).map_err(SigningError::Generate)?;
    match OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(mut f) => {
            f.write_all(pem.as_bytes())
                .and_then(|_| f.sync_all())
                .map_err(io)?;
            Ok(true)
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(io(e)),
    }
}

fn ed25519_only(path: &Path, what: &'static str, alg: Algorithm) -> Result<(), SigningError> {
    if alg == Algorithm::Ed25519 {
        return Ok(());
    }
    Err(SigningError::Format {
        path: path.to_owned(),
        what,
        why: format!("it is {}", alg.as_str()),
    })
}

/// Loads the signing key (the configuration has checked its mode).
pub fn load(path: &Path) -> Result<SigningKey, SigningError> {
    let text = std::fs::read_to_string(path).map_err(|source| SigningError::Io {
        path: path.to_owned(),
        source,
    })?;
    let bad = |why: String| SigningError::Format {
        path: path.to_owned(),
        what: "private",
        why,
    };
    let key = PrivateKey::from_openssh(text).map_err(|e| bad(e.to_string()))?;
    ed25519_only(path, "private", key.algorithm())?;
    let mut pk = key.public_key().clone();
    pk.set_comment("");
    let public = pk.to_openssh().map_err(|e| bad(e.to_string()))?;
    Ok(SigningKey { key, public })
}

/// Loads a trusted signer: a file whose first line is an OpenSSH public key.
pub fn load_public(path: &Path) -> Result<PublicKey, SigningError> {
    let text = std::fs::read_to_string(path).map_err(|source| SigningError::Io {
        path: path.to_owned(),
        source,
    })?;
    let line = text.lines().map(str::trim).find(|l| !l.is_empty()).unwrap_or("");
    let pk = PublicKey::from_openssh(line).map_err(|e| SigningError::Format {
        path: path.to_owned(),
        what: "public",
        why: e.to_string(),
    })?;
    ed25519_only(path, "public", pk.algorithm())?;
    Ok(pk)
}

impl SigningKey {
    /// `ssh-ed25519 AAAA…`, as the trailer names its signer.
    pub fn public(&self) -> &str {
        &self.public
    }

    /// The line `portcullis recording pubkey` prints, for `verify --signer`.
    pub fn public_line(&self) -> String {
        format!("{} {COMMENT}", self.public)
    }

    pub fn sign(&self, message: &[u8]) -> Result<[u8; SIGNATURE_LEN], SigningError> {
        let sig: Signature = self.key.try_sign(message).map_err(|_| SigningError::Sign)?;
        sig.as_bytes().try_into().map_err(|_| SigningError::Sign)
    }
}

/// `SHA256:…`, as `ssh-keygen -l` shows it.
pub fn fingerprint(pk: &PublicKey) -> String {
    pk.fingerprint(HashAlg::Sha256).to_string()
}

/// Parses the trailer's signer field (an OpenSSH public key, Ed25519 only).
pub fn parse_signer(openssh: &str) -> Option<PublicKey> {
    PublicKey::from_openssh(openssh)
        .ok()
        .filter(|pk| pk.algorithm() == Algorithm::Ed25519)
}

/// Whether `signature` is `pk`'s Ed25519 signature of `message`.
pub fn verify(pk: &PublicKey, message: &[u8], signature: &[u8]) -> bool {
    Signature::new(Algorithm::Ed25519, signature)
        .ok()
        .is_some_and(|s| Verifier::verify(pk, message, &s).is_ok())
}

/// Whether two public keys are the same key (comments aside).
pub fn same_key(a: &PublicKey, b: &PublicKey) -> bool {
    a.key_data() == b.key_data()
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn a_generated_key_is_private_kept_and_signs_what_its_public_line_verifies() {
        let dir = std::env::temp_dir().join(format!("portcullis-signing-{}", std::process::id()));
        let path = dir.join("recsign");
        assert!(generate(&path).unwrap());
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let k = load(&path).unwrap();
        assert!(!generate(&path).unwrap(), "never overwrites a key");
        assert_eq!(load(&path).unwrap().public(), k.public());
        let line = k.public_line();
        assert!(line.starts_with("ssh-ed25519 AAAA") && line.ends_with(" portcullis-recording"));
        std::fs::write(dir.join("recsign.pub"), format!("{line}\n")).unwrap();
        let pk = load_public(&dir.join("recsign.pub")).unwrap();
        let sig = k.sign(b"message").unwrap();
        assert!(verify(&pk, b"message", &sig));
        assert!(!verify(&pk, b"messagE", &sig));
        assert!(!verify(&pk, b"message", &sig[..63]));
        assert!(same_key(&pk, &parse_signer(k.public()).unwrap()));
        assert!(fingerprint(&pk).starts_with("SHA256:"));
        // Another kind of key is refused, not misused.
        let ecdsa = PrivateKey::random(
            &mut rand::rng(),
            Algorithm::Ecdsa {
                curve: ssh_key::EcdsaCurve::NistP256,
            },
        )
        .unwrap();
        std::fs::write(dir.join("ecdsa.pub"), ecdsa.public_key().to_openssh().unwrap()).unwrap();
        assert!(matches!(
            load_public(&dir.join("ecdsa.pub")),
            Err(SigningError::Format { .. })
        ));
        std::fs::remove_dir_all(dir).unwrap();
    }
}
