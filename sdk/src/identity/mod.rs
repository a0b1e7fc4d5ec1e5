//! Identity: Ed25519 keys, NodeIDs, CIDs and signatures' text forms
//! (DESIGN.md §6, decision 0007).
//!
//! * [`NodeId`]: `ed25519:` + base64url (no padding) of the 32-byte public key;
//!   its [`NodeId::short`] display form `ed25519:XXXX-XXXX-XXXX-XXXX` is never
//!   used for authentication.
//! * [`Cid`]: `blake3:` + 64 lowercase hex digits.
//! * [`SignatureBytes`]: `ed25519:` + base64url (no padding) of 64 bytes.
//! * [`SecretKey`]: a signing key, zeroized on drop, stored as a raw 32-byte
//!   seed in a file of mode 0600.

mod keys;

pub use keys::{KeyFileError, SecretKey};

use std::fmt;
use std::str::FromStr;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// Text prefix of keys and signatures.
pub const ED25519_PREFIX: &str = "ed25519:";
/// Text prefix of content ids.
pub const BLAKE3_PREFIX: &str = "blake3:";

/// Why an identifier, key or signature was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IdError {
    /// The text lacks the expected `ed25519:` / `blake3:` prefix.
    #[error("`{0}` does not start with `{1}`")]
    MissingPrefix(String, &'static str),
    /// The text is not valid unpadded base64url (or hex, for CIDs).
    #[error("`{0}` is not valid {1}")]
    BadEncoding(String, &'static str),
    /// The decoded value has the wrong length.
    #[error("expected {expected} bytes, got {got}")]
    BadLength {
        /// Expected length in bytes.
        expected: usize,
        /// Actual length.
        got: usize,
    },
    /// The bytes are not a valid Ed25519 public key (not a curve point).
    #[error("not a valid Ed25519 public key")]
    InvalidKey,
    /// The public key has small order (a "weak" key that verifies forged signatures).
    #[error("small-order Ed25519 public key")]
    WeakKey,
    /// The text is the display short id, which cannot be parsed back to a key.
    #[error("`{0}` is a short display id; protocol fields need the full NodeID")]
    ShortForm(String),
}

/// A node's (or community root's) public key, the full NodeID. Holds the
/// decompressed key, so verifying needs no point decompression.
#[derive(Clone, Copy)]
pub struct NodeId(ed25519_dalek::VerifyingKey);

impl PartialEq for NodeId {
    fn eq(&self, other: &Self) -> bool {
        self.0.as_bytes() == other.0.as_bytes()
    }
}

impl Eq for NodeId {}

impl std::hash::Hash for NodeId {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.0.as_bytes().hash(state);
    }
}

impl PartialOrd for NodeId {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for NodeId {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.as_bytes().cmp(other.0.as_bytes())
    }
}

impl NodeId {
    /// Builds a NodeID from raw public key bytes, refusing invalid and small-order keys.
    pub fn from_bytes(bytes: [u8; 32]) -> Result<Self, IdError> {
        let key =
            ed25519_dalek::VerifyingKey::from_bytes(&bytes).map_err(|_| IdError::InvalidKey)?;
        if key.is_weak() {
            return Err(IdError::WeakKey);
        }
        Ok(NodeId(key))
    }

    /// The raw 32 public key bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        self.0.as_bytes()
    }

    /// The ed25519-dalek verifying key (already decompressed).
    pub fn verifying_key(&self) -> ed25519_dalek::VerifyingKey {
        self.0
    }

    /// The display form `ed25519:XXXX-XXXX-XXXX-XXXX`: RFC 4648 base32
    /// (upper case, no padding) of the first 10 bytes of the public key, in
    /// groups of four (decision 0007). For people, never for authentication.
    pub fn short(&self) -> String {
        let b32 = data_encoding::BASE32_NOPAD.encode(&self.as_bytes()[..10]);
        let groups: Vec<&str> = (0..4).map(|i| &b32[i * 4..i * 4 + 4]).collect();
        format!("{ED25519_PREFIX}{}", groups.join("-"))
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{ED25519_PREFIX}{}",
            URL_SAFE_NO_PAD.encode(self.as_bytes())
        )
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeId({self})")
    }
}

fn decode_b64<const N: usize>(text: &str, prefix: &'static str) -> Result<[u8; N], IdError> {
    let body = text
        .strip_prefix(prefix)
        .ok_or_else(|| IdError::MissingPrefix(text.to_owned(), prefix))?;
    let bytes = URL_SAFE_NO_PAD
        .decode(body)
        .map_err(|_| IdError::BadEncoding(text.to_owned(), "unpadded base64url"))?;
    let got = bytes.len();
    bytes
        .try_into()
        .map_err(|_| IdError::BadLength { expected: N, got })
}

impl FromStr for NodeId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        if s.len() == ED25519_PREFIX.len() + 19
            && s.as_bytes().get(ED25519_PREFIX.len() + 4) == Some(&b'-')
        {
            return Err(IdError::ShortForm(s.to_owned()));
        }
        NodeId::from_bytes(decode_b64::<32>(s, ED25519_PREFIX)?)
    }
}

/// A content id: `blake3:` + 64 lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Cid([u8; 32]);

impl Cid {
    /// The CID of some bytes.
    pub fn of(bytes: &[u8]) -> Self {
        Cid(*blake3::hash(bytes).as_bytes())
    }

    /// From a raw 32-byte BLAKE3 hash.
    pub fn from_hash(hash: [u8; 32]) -> Self {
        Cid(hash)
    }

    /// The raw hash.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Display for Cid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{BLAKE3_PREFIX}{}",
            blake3::Hash::from_bytes(self.0).to_hex()
        )
    }
}

impl fmt::Debug for Cid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Cid({self})")
    }
}

impl FromStr for Cid {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        let body = s
            .strip_prefix(BLAKE3_PREFIX)
            .ok_or_else(|| IdError::MissingPrefix(s.to_owned(), BLAKE3_PREFIX))?;
        if body.len() != 64 {
            return Err(IdError::BadLength {
                expected: 32,
                got: body.len() / 2,
            });
        }
        if !body
            .bytes()
            .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c))
        {
            return Err(IdError::BadEncoding(s.to_owned(), "lowercase hex"));
        }
        let mut out = [0u8; 32];
        for (i, chunk) in body.as_bytes().chunks(2).enumerate() {
            let hex = std::str::from_utf8(chunk)
                .map_err(|_| IdError::BadEncoding(s.to_owned(), "lowercase hex"))?;
            out[i] = u8::from_str_radix(hex, 16)
                .map_err(|_| IdError::BadEncoding(s.to_owned(), "lowercase hex"))?;
        }
        Ok(Cid(out))
    }
}

/// A 64-byte Ed25519 signature with its text form `ed25519:<base64url>`.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct SignatureBytes(pub [u8; 64]);

impl SignatureBytes {
    /// From a byte slice of exactly 64 bytes.
    pub fn from_slice(bytes: &[u8]) -> Result<Self, IdError> {
        let got = bytes.len();
        Ok(SignatureBytes(
            bytes
                .try_into()
                .map_err(|_| IdError::BadLength { expected: 64, got })?,
        ))
    }
}

impl fmt::Display for SignatureBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{ED25519_PREFIX}{}", URL_SAFE_NO_PAD.encode(self.0))
    }
}

impl fmt::Debug for SignatureBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SignatureBytes({self})")
    }
}

impl FromStr for SignatureBytes {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        Ok(SignatureBytes(decode_b64::<64>(s, ED25519_PREFIX)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_id_text_round_trips_and_short_form_matches_the_spec_regex() {
        let key = SecretKey::from_seed([7u8; 32]);
        let id = key.node_id();
        let text = id.to_string();
        assert_eq!(text.len(), 8 + 43);
        assert_eq!(text.parse::<NodeId>(), Ok(id));
        let short = id.short();
        let re = regex::Regex::new("^ed25519:[A-Z2-7]{4}(-[A-Z2-7]{4}){3}$").expect("regex");
        assert!(re.is_match(&short), "{short}");
        assert!(matches!(
            short.parse::<NodeId>(),
            Err(IdError::ShortForm(_))
        ));
    }

    #[test]
    fn bad_node_ids_are_refused_with_reasons() {
        assert!(matches!(
            "AAAA".parse::<NodeId>(),
            Err(IdError::MissingPrefix(..))
        ));
        assert!(matches!(
            "ed25519:!!".parse::<NodeId>(),
            Err(IdError::BadEncoding(..))
        ));
        assert!(matches!(
            "ed25519:AAAA".parse::<NodeId>(),
            Err(IdError::BadLength {
                expected: 32,
                got: 3
            })
        ));
        // The identity point (small order).
        let mut weak = [0u8; 32];
        weak[0] = 1;
        assert_eq!(NodeId::from_bytes(weak), Err(IdError::WeakKey));
        let padded = format!("{}=", SecretKey::from_seed([1; 32]).node_id());
        assert!(padded.parse::<NodeId>().is_err());
    }

    #[test]
    fn cids_are_lowercase_hex() {
        let c = Cid::of(b"hearth");
        let t = c.to_string();
        assert_eq!(t.len(), 7 + 64);
        assert_eq!(t.parse::<Cid>(), Ok(c));
        assert!(
            t.to_uppercase()
                .replace("BLAKE3", "blake3")
                .parse::<Cid>()
                .is_err()
        );
        assert!("blake3:abc".parse::<Cid>().is_err());
        assert!("sha256:00".parse::<Cid>().is_err());
    }
}
