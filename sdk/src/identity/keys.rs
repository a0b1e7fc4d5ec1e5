//! Signing keys and their files.

use std::io::Write;
use std::path::{Path, PathBuf};

use zeroize::Zeroizing;

use super::NodeId;

/// Errors reading or writing a key file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyFileError {
    /// The file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The key file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The file is readable by others than its owner.
    #[error("{path}: mode {mode:o} lets others read the key; run `chmod 600 {path}`")]
    Permissions {
        /// The key file.
        path: PathBuf,
        /// Its mode bits.
        mode: u32,
    },
    /// The file does not hold a 32-byte seed.
    #[error("{path}: expected a raw 32-byte Ed25519 seed, found {len} bytes")]
    Invalid {
        /// The key file.
        path: PathBuf,
        /// Its length.
        len: usize,
    },
    /// The operating system's random source failed.
    #[error("no randomness available: {0}")]
    Random(String),
}

/// An Ed25519 signing key. Its bytes are zeroized when dropped and never printed.
pub struct SecretKey(ed25519_dalek::SigningKey);

impl SecretKey {
    /// A new key from the operating system's random source.
    pub fn generate() -> Result<Self, KeyFileError> {
        let mut seed = Zeroizing::new([0u8; 32]);
        getrandom::fill(seed.as_mut()).map_err(|e| KeyFileError::Random(e.to_string()))?;
        Ok(Self::from_seed(*seed))
    }

    /// The key for a 32-byte seed (RFC 8032 secret key).
    pub fn from_seed(seed: [u8; 32]) -> Self {
        let seed = Zeroizing::new(seed);
        SecretKey(ed25519_dalek::SigningKey::from_bytes(&seed))
    }

    /// The public key as a NodeID.
    pub fn node_id(&self) -> NodeId {
        NodeId::from_bytes(self.0.verifying_key().to_bytes()).unwrap_or_else(|_| {
            unreachable!("a key derived from a seed is a valid, non-weak point")
        })
    }

    /// Signs raw bytes (normally a signing input from [`crate::signing`]).
    pub fn sign_raw(&self, message: &[u8]) -> [u8; 64] {
        use ed25519_dalek::Signer;
        self.0.sign(message).to_bytes()
    }

    /// The underlying dalek key (for benchmarks and interop).
    pub fn dalek(&self) -> &ed25519_dalek::SigningKey {
        &self.0
    }

    /// Writes the seed to `path`, created with mode 0600 (fails if it exists).
    pub fn save(&self, path: &Path) -> Result<(), KeyFileError> {
        let io = |source| KeyFileError::Io {
            path: path.to_owned(),
            source,
        };
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let mut f = opts.open(path).map_err(io)?;
        let seed = Zeroizing::new(self.0.to_bytes());
        f.write_all(seed.as_ref()).map_err(io)?;
        f.sync_all().map_err(io)
    }

    /// Reads a key written by [`SecretKey::save`]; refuses files others can read.
    pub fn load(path: &Path) -> Result<Self, KeyFileError> {
        let io = |source| KeyFileError::Io {
            path: path.to_owned(),
            source,
        };
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(path).map_err(io)?.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                return Err(KeyFileError::Permissions {
                    path: path.to_owned(),
                    mode,
                });
            }
        }
        let bytes = Zeroizing::new(std::fs::read(path).map_err(io)?);
        let seed: [u8; 32] = bytes
            .as_slice()
            .try_into()
            .map_err(|_| KeyFileError::Invalid {
                path: path.to_owned(),
                len: bytes.len(),
            })?;
        Ok(Self::from_seed(seed))
    }
}

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SecretKey({}, secret hidden)", self.node_id())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_files_are_private_and_round_trip() {
        let dir = std::env::temp_dir().join(format!("hn-key-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("mkdir");
        let path = dir.join("device.ed25519");
        let key = SecretKey::generate().expect("random");
        key.save(&path).expect("save");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(
                std::fs::metadata(&path).expect("meta").permissions().mode() & 0o777,
                0o600
            );
        }
        assert_eq!(
            SecretKey::load(&path).expect("load").node_id(),
            key.node_id()
        );
        assert!(
            matches!(key.save(&path), Err(KeyFileError::Io { .. })),
            "never overwrites a key"
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
            assert!(matches!(
                SecretKey::load(&path),
                Err(KeyFileError::Permissions { mode: 0o644, .. })
            ));
        }
        let short = dir.join("short");
        std::fs::write(&short, [1u8; 31]).expect("write");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&short, std::fs::Permissions::from_mode(0o600))
                .expect("chmod");
        }
        assert!(matches!(
            SecretKey::load(&short),
            Err(KeyFileError::Invalid { len: 31, .. })
        ));
        assert!(!format!("{key:?}").contains(&format!("{:?}", key.0.to_bytes())));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
