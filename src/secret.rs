//! The secret two vipgates of a pair share (`[persistence] secret_file`):
//! read once, and turned into independent keys, one per purpose, so either
//! node reads what the other wrote. Cookies are sealed with one key
//! ([`crate::http::persistence`]); TLS session tickets with keys derived
//! per rotation period ([`crate::tls::tickets`]).

use std::path::{Path, PathBuf};

use crate::config::MIN_SECRET_BYTES;

/// Why the shared secret cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("cannot read the shared secret {path}: {error}")]
    Unreadable {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("the shared secret {path} holds {bytes} bytes; at least {MIN_SECRET_BYTES} are needed (create one with `head -c 32 /dev/urandom > {path}`, and give the other node the same file)")]
    TooShort { path: PathBuf, bytes: usize },
}

/// The secret's bytes, a trailing newline left out (`echo secret > file`
/// and `printf secret > file` mean the same).
pub fn read(path: &Path) -> Result<Vec<u8>, SecretError> {
    let mut secret = std::fs::read(path).map_err(|error| SecretError::Unreadable {
        path: path.to_path_buf(),
        error,
    })?;
    while secret.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
        secret.pop();
    }
    if secret.len() < MIN_SECRET_BYTES {
        return Err(SecretError::TooShort {
            path: path.to_path_buf(),
            bytes: secret.len(),
        });
    }
    Ok(secret)
}

/// Fills `key` with bytes derived from `secret` for `purpose`
/// (HKDF-SHA256): different purposes get unrelated keys from the one
/// secret, and every node with the same secret derives the same ones.
pub fn derive(secret: &[u8], purpose: &[&[u8]], key: &mut [u8]) {
    /// HKDF output of a given length.
    struct Length(usize);
    impl ring::hkdf::KeyType for Length {
        fn len(&self) -> usize {
            self.0
        }
    }
    const SALT: &[u8] = b"vipgate shared secret v1";
    let prk = ring::hkdf::Salt::new(ring::hkdf::HKDF_SHA256, SALT).extract(secret);
    // Both fail only for outputs longer than 255 hashes, which no key here
    // is; a key left zeroed would then fail every ticket, not leak one.
    if let Ok(okm) = prk.expand(purpose, Length(key.len())) {
        let _ = okm.fill(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_differ_by_purpose_and_secret_and_repeat_otherwise() {
        let key = |secret: &[u8], purpose: &[u8]| {
            let mut key = [0u8; 32];
            derive(secret, &[purpose], &mut key);
            key
        };
        assert_eq!(key(b"one secret", b"a"), key(b"one secret", b"a"));
        assert_ne!(key(b"one secret", b"a"), key(b"one secret", b"b"));
        assert_ne!(key(b"one secret", b"a"), key(b"two secret", b"a"));
        assert_ne!(key(b"one secret", b"a"), [0u8; 32]);
    }

    #[test]
    fn a_short_or_missing_secret_says_how_to_make_one() {
        let dir = std::env::temp_dir().join(format!("vipgate-secret-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("short");
        std::fs::write(&path, "short\n").unwrap();
        let error = read(&path).unwrap_err().to_string();
        assert!(error.contains("holds 5 bytes; at least 16"), "{error}");
        std::fs::write(&path, "sixteen bytes at least\n").unwrap();
        assert_eq!(read(&path).unwrap(), b"sixteen bytes at least");
        assert!(read(&dir.join("missing"))
            .unwrap_err()
            .to_string()
            .starts_with("cannot read the shared secret"));
    }
}
