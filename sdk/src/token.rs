//! Capability tokens (M16, decision 0013): issue, encode, verify, scope checks
//! and revocation.
//!
//! Text form: `hntoken://v1/<b64url(payload)>.<b64url(signature)>`, where the
//! payload is the protobuf encoding of `hearthnet.auth.v1.CapabilityToken` and
//! the signature is the issuer's over the `auth.token` signing input.

use std::collections::{BTreeMap, HashSet};

use crate::envelope::{self, EnvelopeError};
use crate::identity::{NodeId, SecretKey};
use crate::proto::hearthnet::auth::v1::CapabilityToken;
use crate::proto::hearthnet::common::v1::ErrorCode;
use crate::signing::{self, Domain};

/// URI scheme of tokens.
pub const TOKEN_SCHEME: &str = "hntoken://v1/";
/// Longest accepted token text (fits a QR code at ECC level M).
pub const TOKEN_MAX_BYTES: usize = crate::constants::TOKEN_MAX_BYTES as usize;
/// Default lifetime, seconds (`TOKEN_DEFAULT_TTL_SECONDS`).
pub const TOKEN_DEFAULT_TTL_SECONDS: i64 = crate::constants::TOKEN_DEFAULT_TTL_SECONDS;
/// Longest lifetime, seconds (`TOKEN_MAX_TTL_SECONDS`).
pub const TOKEN_MAX_TTL_SECONDS: i64 = crate::constants::TOKEN_MAX_TTL_SECONDS;

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    /// The text or its payload cannot be parsed.
    #[error("malformed token: {0}")]
    Malformed(String),
    /// The signature does not verify against `iss`.
    #[error("token signature does not verify")]
    BadSignature,
    /// Past `exp`.
    #[error("token expired at {exp} (now {now})")]
    Expired {
        /// Expiry, Unix seconds.
        exp: i64,
        /// Now.
        now: i64,
    },
    /// Before `nbf`.
    #[error("token not valid before {nbf} (now {now})")]
    NotYetValid {
        /// Not-before, Unix seconds.
        nbf: i64,
        /// Now.
        now: i64,
    },
    /// `aud` names another community.
    #[error("token is for audience `{got}`, not `{expected}`")]
    WrongAudience {
        /// Our community.
        expected: String,
        /// The token's audience.
        got: String,
    },
    /// Its `jti` is revoked.
    #[error("token {0} is revoked")]
    Revoked(String),
    /// It does not cover the call.
    #[error("token does not cover {0}")]
    ScopeInsufficient(String),
    /// The issuer is not a member of the audience community.
    #[error("issuer {0} is not a member of the community")]
    IssuerNotMember(String),
    /// The issuer's NodeID is revoked in the community.
    #[error("issuer {0} is revoked")]
    IssuerRevoked(String),
    /// Issuing was refused (lifetime, size, issuer).
    #[error("cannot issue token: {0}")]
    Issue(String),
}

impl TokenError {
    /// The protocol error code (digest Phase 2 §1.5 mapping).
    pub fn code(&self) -> ErrorCode {
        match self {
            TokenError::Malformed(_) | TokenError::Issue(_) => ErrorCode::BadRequest,
            TokenError::BadSignature => ErrorCode::TokenInvalid,
            TokenError::Expired { .. } | TokenError::NotYetValid { .. } => ErrorCode::TokenExpired,
            TokenError::WrongAudience { .. } | TokenError::IssuerNotMember(_) => {
                ErrorCode::Unauthorized
            }
            TokenError::IssuerRevoked(_) => ErrorCode::Revoked,
            TokenError::Revoked(_) => ErrorCode::TokenRevoked,
            TokenError::ScopeInsufficient(_) => ErrorCode::TokenScopeInsufficient,
        }
    }
}

/// Revoked token ids (`jti`), fed from `auth.token.revoked` events.
#[derive(Debug, Clone, Default)]
pub struct RevocationList {
    jtis: HashSet<String>,
}

impl RevocationList {
    /// An empty list.
    pub fn new() -> Self {
        Self::default()
    }

    /// Revokes a token id.
    pub fn revoke(&mut self, jti: &str) {
        self.jtis.insert(jti.to_owned());
    }

    /// Whether a token id is revoked.
    pub fn is_revoked(&self, jti: &str) -> bool {
        self.jtis.contains(jti)
    }
}

/// Signs claims as a token. `iss` is set to the key's NodeID; `iat`/`exp`
/// must be set and the lifetime at most [`TOKEN_MAX_TTL_SECONDS`].
pub fn issue(key: &SecretKey, mut claims: CapabilityToken) -> Result<String, TokenError> {
    claims.iss = key.node_id().to_string();
    let ttl = claims.exp - claims.iat;
    if ttl <= 0 || ttl > TOKEN_MAX_TTL_SECONDS {
        return Err(TokenError::Issue(format!(
            "lifetime {ttl} s is outside 1..={TOKEN_MAX_TTL_SECONDS}"
        )));
    }
    if claims.jti.is_empty() {
        return Err(TokenError::Issue("jti is empty".into()));
    }
    let payload = prost::Message::encode_to_vec(&claims);
    envelope::sign_text(
        key,
        Domain::CapabilityToken,
        TOKEN_SCHEME,
        &payload,
        TOKEN_MAX_BYTES,
    )
    .map_err(|e| TokenError::Issue(e.to_string()))
}

/// A token whose signature, times, audience and revocation were checked.
#[derive(Debug, Clone, PartialEq)]
pub struct VerifiedToken {
    /// The claims.
    pub claims: CapabilityToken,
    /// The issuer.
    pub issuer: NodeId,
}

/// Verifies a token at `now` (Unix seconds) for our community `audience`.
/// Order: parse, signature (against `iss`), `exp`, `nbf`, audience, revocation.
pub fn verify(
    text: &str,
    now: i64,
    audience: &str,
    revoked: &RevocationList,
) -> Result<VerifiedToken, TokenError> {
    let (payload, signature) =
        envelope::from_text(TOKEN_SCHEME, text, TOKEN_MAX_BYTES).map_err(|e| match e {
            EnvelopeError::TooLong { len, max } => {
                TokenError::Malformed(format!("{len} bytes, more than {max}"))
            }
            other => TokenError::Malformed(other.to_string()),
        })?;
    let claims: CapabilityToken = prost::Message::decode(payload.as_slice())
        .map_err(|e| TokenError::Malformed(format!("claims: {e}")))?;
    let issuer: NodeId = claims
        .iss
        .parse()
        .map_err(|e| TokenError::Malformed(format!("iss: {e}")))?;
    signing::verify_envelope(&issuer, Domain::CapabilityToken, &payload, &signature).map_err(
        |e| match e {
            signing::VerifyError::BadLength(n) => {
                TokenError::Malformed(format!("signature is {n} bytes, not 64"))
            }
            _ => TokenError::BadSignature,
        },
    )?;
    if now >= claims.exp {
        return Err(TokenError::Expired {
            exp: claims.exp,
            now,
        });
    }
    let nbf = if claims.nbf == 0 {
        claims.iat
    } else {
        claims.nbf
    };
    if now < nbf {
        return Err(TokenError::NotYetValid { nbf, now });
    }
    if !claims.aud.is_empty() && claims.aud != audience {
        return Err(TokenError::WrongAudience {
            expected: audience.to_owned(),
            got: claims.aud.clone(),
        });
    }
    if revoked.is_revoked(&claims.jti) {
        return Err(TokenError::Revoked(claims.jti.clone()));
    }
    Ok(VerifiedToken { claims, issuer })
}

/// [`verify`] against a community manifest: the audience is the community, and
/// the issuer must be a member that is not revoked (`token_issuer_revoked` maps
/// to `revoked`).
pub fn verify_in_community(
    text: &str,
    now: i64,
    community: &crate::proto::hearthnet::identity::v1::CommunityManifest,
    revoked: &RevocationList,
) -> Result<VerifiedToken, TokenError> {
    let t = verify(text, now, &community.community_id, revoked)?;
    let iss = t.issuer.to_string();
    if community.revoked.iter().any(|r| r.node_id == iss) {
        return Err(TokenError::IssuerRevoked(iss));
    }
    if community.community_id != iss && !community.members.iter().any(|m| m.node_id == iss) {
        return Err(TokenError::IssuerNotMember(iss));
    }
    Ok(t)
}

impl VerifiedToken {
    /// Whether the token covers a call to `capability@major.minor` with these
    /// routing params: the scope lists `capability@X.Y` with X = major and
    /// minor <= Y, and every constrained param has an allowed value.
    pub fn covers(
        &self,
        capability: &str,
        version: (u32, u32),
        params: &BTreeMap<String, String>,
    ) -> Result<(), TokenError> {
        let scope = self.claims.scope.clone().unwrap_or_default();
        let listed = scope.capabilities.iter().any(|c| {
            let Some((name, v)) = c.split_once('@') else {
                return false;
            };
            match crate::registry::parse_version(v) {
                Some((x, y)) => name == capability && x == version.0 && version.1 <= y,
                None => false,
            }
        });
        if !listed {
            return Err(TokenError::ScopeInsufficient(format!(
                "{capability}@{}.{}",
                version.0, version.1
            )));
        }
        for (param, allowed) in &scope.params_constraints {
            match params.get(param) {
                Some(v) if allowed.values.iter().any(|a| a == v) => {}
                other => {
                    return Err(TokenError::ScopeInsufficient(format!(
                        "param `{param}` = {other:?} (allowed: {:?})",
                        allowed.values
                    )));
                }
            }
        }
        Ok(())
    }

    /// The effective caller: the subject, or the issuer for a bearer token (`sub = *`).
    pub fn effective_caller(&self) -> String {
        if self.claims.sub == "*" {
            self.issuer.to_string()
        } else {
            self.claims.sub.clone()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::hearthnet::auth::v1::{AllowList, TokenScope};

    fn claims(now: i64) -> CapabilityToken {
        CapabilityToken {
            sub: "*".into(),
            aud: "ed25519:community".into(),
            iat: now,
            exp: now + TOKEN_DEFAULT_TTL_SECONDS,
            jti: "01JDQ7Z3K8M4N5P6Q7R8S9T0VW".into(),
            scope: Some(TokenScope {
                capabilities: vec!["rag.query@1.0".into()],
                params_constraints: [(
                    "corpus".to_owned(),
                    AllowList {
                        values: vec!["garden".into()],
                    },
                )]
                .into(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn issue_verify_and_each_refusal() {
        let key = SecretKey::from_seed([2; 32]);
        let now = 1_764_000_000;
        let t = issue(&key, claims(now)).expect("issued");
        assert!(
            t.starts_with(TOKEN_SCHEME) && t.len() <= TOKEN_MAX_BYTES,
            "{} bytes",
            t.len()
        );
        let mut rl = RevocationList::new();
        let v = verify(&t, now + 10, "ed25519:community", &rl).expect("valid");
        assert_eq!(v.issuer, key.node_id());
        assert_eq!(v.effective_caller(), key.node_id().to_string());
        let params: BTreeMap<String, String> = [("corpus".to_owned(), "garden".to_owned())].into();
        assert_eq!(v.covers("rag.query", (1, 0), &params), Ok(()));
        assert!(v.covers("rag.query", (1, 1), &params).is_err());
        assert!(v.covers("rag.query", (2, 0), &params).is_err());
        assert!(v.covers("llm.chat", (1, 0), &params).is_err());
        let other: BTreeMap<String, String> = [("corpus".to_owned(), "secret".to_owned())].into();
        assert_eq!(
            v.covers("rag.query", (1, 0), &other).map_err(|e| e.code()),
            Err(ErrorCode::TokenScopeInsufficient)
        );
        assert!(v.covers("rag.query", (1, 0), &BTreeMap::new()).is_err());

        let code = |r: Result<VerifiedToken, TokenError>| r.map(|_| ()).map_err(|e| e.code());
        assert_eq!(
            code(verify(
                &t,
                now + TOKEN_DEFAULT_TTL_SECONDS,
                "ed25519:community",
                &rl
            )),
            Err(ErrorCode::TokenExpired)
        );
        assert_eq!(
            code(verify(&t, now - 1, "ed25519:community", &rl)),
            Err(ErrorCode::TokenExpired)
        );
        assert_eq!(
            code(verify(&t, now, "ed25519:other", &rl)),
            Err(ErrorCode::Unauthorized)
        );
        rl.revoke("01JDQ7Z3K8M4N5P6Q7R8S9T0VW");
        assert_eq!(
            code(verify(&t, now, "ed25519:community", &rl)),
            Err(ErrorCode::TokenRevoked)
        );
        let flip = if &t[20..21] == "A" { "B" } else { "A" };
        let tampered = format!("{}{flip}{}", &t[..20], &t[21..]);
        assert!(matches!(
            verify(&tampered, now, "ed25519:community", &RevocationList::new()),
            Err(TokenError::BadSignature | TokenError::Malformed(_))
        ));
        assert_eq!(
            code(verify("hntoken://v1/", now, "x", &rl)),
            Err(ErrorCode::BadRequest)
        );
        // Issuer membership in the audience community.
        use crate::proto::hearthnet::identity::v1::{CommunityManifest, Member, RevokedMember};
        let mut community = CommunityManifest {
            community_id: "ed25519:community".into(),
            ..Default::default()
        };
        let fresh = RevocationList::new();
        assert_eq!(
            code(verify_in_community(&t, now, &community, &fresh)),
            Err(ErrorCode::Unauthorized)
        );
        community.members.push(Member {
            node_id: key.node_id().to_string(),
            ..Default::default()
        });
        assert_eq!(
            code(verify_in_community(&t, now, &community, &fresh)),
            Ok(())
        );
        community.revoked.push(RevokedMember {
            node_id: key.node_id().to_string(),
            revoked_at: None,
        });
        assert_eq!(
            code(verify_in_community(&t, now, &community, &fresh)),
            Err(ErrorCode::Revoked)
        );
        let mut long = claims(now);
        long.exp = now + TOKEN_MAX_TTL_SECONDS + 1;
        assert!(matches!(issue(&key, long), Err(TokenError::Issue(_))));
    }
}
