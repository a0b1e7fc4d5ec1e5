//! Signed envelopes (`hearthnet.identity.v1.SignedEnvelope`) and the text form
//! of signed records (`<scheme><b64url(payload)>.<b64url(signature)>`), used by
//! tokens and invites. Payloads are verified as the exact bytes received and
//! only then decoded (decision 0007).

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use prost::Message;

use crate::identity::{IdError, NodeId, SecretKey};
use crate::proto::hearthnet::identity::v1::SignedEnvelope;
use crate::signing::{self, Domain, VerifyError};

/// Why an envelope or a signed text was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EnvelopeError {
    /// The envelope names another domain than the one expected.
    #[error("envelope is for `{got}`, expected `{expected}`")]
    WrongDomain {
        /// The domain the verifier expects.
        expected: &'static str,
        /// The domain the envelope names.
        got: String,
    },
    /// The signer is not a valid NodeID.
    #[error("bad signer: {0}")]
    Signer(#[from] IdError),
    /// The signature does not verify.
    #[error(transparent)]
    Signature(#[from] VerifyError),
    /// The payload is not a valid encoding of the record.
    #[error("payload does not decode: {0}")]
    Decode(String),
    /// The text form is malformed.
    #[error("malformed signed text: {0}")]
    Malformed(String),
    /// The text form is longer than allowed.
    #[error("signed text is {len} bytes, more than {max}")]
    TooLong {
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
}

/// Seals a record: encodes it and signs the bytes under `domain`.
pub fn seal<M: Message>(key: &SecretKey, domain: Domain, record: &M) -> SignedEnvelope {
    let payload = record.encode_to_vec();
    let signature = signing::sign_envelope(key, domain, &payload).to_vec();
    SignedEnvelope {
        payload,
        signer: key.node_id().to_string(),
        signature,
        domain: domain.name().to_owned(),
    }
}

/// Verifies an envelope for the expected domain; returns the signer.
pub fn verify(env: &SignedEnvelope, expected: Domain) -> Result<NodeId, EnvelopeError> {
    if env.domain != expected.name() {
        return Err(EnvelopeError::WrongDomain {
            expected: expected.name(),
            got: env.domain.clone(),
        });
    }
    let signer: NodeId = env.signer.parse()?;
    signing::verify_envelope(&signer, expected, &env.payload, &env.signature)?;
    Ok(signer)
}

/// Verifies, then decodes the payload as `M`.
pub fn open<M: Message + Default>(
    env: &SignedEnvelope,
    expected: Domain,
) -> Result<(NodeId, M), EnvelopeError> {
    let signer = verify(env, expected)?;
    let record =
        M::decode(env.payload.as_slice()).map_err(|e| EnvelopeError::Decode(e.to_string()))?;
    Ok((signer, record))
}

/// `<scheme><b64url(payload)>.<b64url(signature)>`.
pub fn to_text(scheme: &str, payload: &[u8], signature: &[u8]) -> String {
    format!(
        "{scheme}{}.{}",
        URL_SAFE_NO_PAD.encode(payload),
        URL_SAFE_NO_PAD.encode(signature)
    )
}

/// Signs `payload` under `domain` and returns its text form, refusing texts
/// longer than `max_len`.
pub fn sign_text(
    key: &SecretKey,
    domain: Domain,
    scheme: &str,
    payload: &[u8],
    max_len: usize,
) -> Result<String, EnvelopeError> {
    let sig = signing::sign_envelope(key, domain, payload);
    let text = to_text(scheme, payload, &sig);
    if text.len() > max_len {
        return Err(EnvelopeError::TooLong {
            len: text.len(),
            max: max_len,
        });
    }
    Ok(text)
}

/// Splits a signed text into payload and signature bytes (nothing verified yet).
pub fn from_text(
    scheme: &str,
    text: &str,
    max_len: usize,
) -> Result<(Vec<u8>, Vec<u8>), EnvelopeError> {
    if text.len() > max_len {
        return Err(EnvelopeError::TooLong {
            len: text.len(),
            max: max_len,
        });
    }
    let body = text
        .strip_prefix(scheme)
        .ok_or_else(|| EnvelopeError::Malformed(format!("does not start with `{scheme}`")))?;
    let (p, s) = body
        .split_once('.')
        .ok_or_else(|| EnvelopeError::Malformed("no `.` between payload and signature".into()))?;
    let payload = URL_SAFE_NO_PAD
        .decode(p)
        .map_err(|e| EnvelopeError::Malformed(format!("payload: {e}")))?;
    let signature = URL_SAFE_NO_PAD
        .decode(s)
        .map_err(|e| EnvelopeError::Malformed(format!("signature: {e}")))?;
    Ok((payload, signature))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::hearthnet::identity::v1::Invite;

    #[test]
    fn seal_open_and_refusals() {
        let key = SecretKey::from_seed([1; 32]);
        let rec = Invite {
            version: 1,
            community_name: "Nachbarn".into(),
            ..Default::default()
        };
        let env = seal(&key, Domain::Invite, &rec);
        let (signer, back): (NodeId, Invite) = open(&env, Domain::Invite).expect("opens");
        assert_eq!((signer, &back), (key.node_id(), &rec));
        assert!(matches!(
            verify(&env, Domain::NodeManifest),
            Err(EnvelopeError::WrongDomain { .. })
        ));
        let mut forged = env.clone();
        forged.domain = "node.manifest".into();
        assert!(matches!(
            verify(&forged, Domain::NodeManifest),
            Err(EnvelopeError::Signature(_))
        ));
        let mut bad = env.clone();
        bad.payload.push(0);
        assert!(matches!(
            verify(&bad, Domain::Invite),
            Err(EnvelopeError::Signature(_))
        ));
        let mut garbage = seal(&key, Domain::Invite, &rec);
        garbage.payload = vec![0xff; 3];
        garbage.signature = signing::sign_envelope(&key, Domain::Invite, &garbage.payload).to_vec();
        assert!(matches!(
            open::<Invite>(&garbage, Domain::Invite),
            Err(EnvelopeError::Decode(_))
        ));
    }

    #[test]
    fn text_form_round_trips_and_refuses_garbage() {
        let t = to_text("x://", b"abc", &[7; 64]);
        assert_eq!(
            from_text("x://", &t, 500),
            Ok((b"abc".to_vec(), vec![7; 64]))
        );
        for bad in ["y://YWJj.Bw", "x://YWJj", "x://!!.Bw", "x://YWJj.@@"] {
            assert!(
                matches!(
                    from_text("x://", bad, 500),
                    Err(EnvelopeError::Malformed(_))
                ),
                "{bad}"
            );
        }
        assert!(matches!(
            from_text("x://", &t, 10),
            Err(EnvelopeError::TooLong { .. })
        ));
    }
}
