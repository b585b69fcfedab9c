//! A value made from a secret key the first time it is needed, the key wiped once used.
//!
//! The libcrypto ChaCha20-Poly1305 contexts of a transport key (`transport/chacha_libcrypto.rs`)
//! and of a recording's block key (the daemon's `recording/seal_libcrypto.rs`) are made at the
//! first large packet or block: an interactive session, whose packets stay small, holds only
//! the key, not OpenSSL contexts.

use zeroize::{Zeroize, Zeroizing};

pub enum OnFirstUse<K: Zeroize, T> {
    Pending(Zeroizing<K>),
    Ready(T),
    /// `make` failed: the caller uses its other way for good.
    Unavailable,
}

impl<K: Zeroize, T> OnFirstUse<K, T> {
    pub fn new(key: K) -> Self {
        Self::Pending(Zeroizing::new(key))
    }

    /// The value, made with `make` if this is the first call; `None` when it could not be.
    pub fn get(&mut self, make: impl FnOnce(&K) -> Option<T>) -> Option<&mut T> {
        if let Self::Pending(key) = self {
            *self = match make(key) {
                Some(v) => Self::Ready(v),
                None => Self::Unavailable,
            };
        }
        match self {
            Self::Ready(v) => Some(v),
            _ => None,
        }
    }
}
