//! `community.invite` and `community.revoke` (COMM-001, COMM-002): the
//! operator's node authors the membership events.

use std::sync::Arc;
use std::time::Instant;

use futures::FutureExt;
use futures::future::BoxFuture;
use prost::Message;

use hearthnet_sdk::identity::NodeId;
use hearthnet_sdk::proto::hearthnet::common::v1::ErrorCode;
use hearthnet_sdk::proto::hearthnet::community::v1 as cm;
use hearthnet_sdk::proto::hearthnet::identity::v1::{Invite, MemberLevel};
use hearthnet_sdk::signing::{self, Domain};
use hearthnet_sdk::wkt::Timestamp;

use super::EventLog;
use crate::bus::{Offer, Request, Service, Sink, Trust};
use crate::error::CallError;

/// Default invite lifetime (COMM-001).
const INVITE_SECONDS: i64 = 24 * 3600;

/// The community capabilities of one log.
pub struct CommunityService {
    log: EventLog,
}

impl CommunityService {
    /// The service over a log.
    pub fn new(log: EventLog) -> Arc<Self> {
        Arc::new(Self { log })
    }
}

impl Service for CommunityService {
    fn name(&self) -> &str {
        "community"
    }

    fn offers(&self) -> Vec<Offer> {
        Offer::all(&["community.invite", "community.revoke"])
    }

    fn call(&self, req: Request, out: Sink) -> BoxFuture<'static, Result<(), CallError>> {
        let log = self.log.clone();
        async move {
            let started = Instant::now();
            if req.trust != Trust::Operator {
                return Err(CallError::new(
                    ErrorCode::Unauthorized,
                    "only this node's operator may author membership events (decision 0067)",
                ));
            }
            match req.capability.name {
                "community.invite" => {
                    let r: cm::InviteRequest = req.decode()?;
                    let output = invite(&log, r.input.unwrap_or_default())?;
                    out.send(&cm::InviteResponse {
                        output: Some(output),
                        meta: Some(cm::InviteMeta {
                            ms: started.elapsed().as_millis() as u64,
                        }),
                    })
                    .await
                }
                "community.revoke" => {
                    let r: cm::RevokeRequest = req.decode()?;
                    let output = revoke(&log, r.input.unwrap_or_default())?;
                    out.send(&cm::RevokeResponse {
                        output: Some(output),
                        meta: Some(cm::RevokeMeta {
                            ms: started.elapsed().as_millis() as u64,
                        }),
                    })
                    .await
                }
                other => Err(CallError::new(
                    ErrorCode::NotFound,
                    format!("community service does not serve {other}"),
                )),
            }
        }
        .boxed()
    }
}

/// COMM-001: signs the invite, logs `community.member.invited` once per
/// invitee (a repeat returns the logged one).
fn invite(log: &EventLog, input: cm::InviteInput) -> Result<cm::InviteOutput, CallError> {
    let invitee: NodeId = input
        .invitee_node_id
        .parse()
        .map_err(|e| CallError::bad_request(format!("invitee_node_id: {e}")))?;
    let level = match input.initial_level {
        0 => MemberLevel::Member as i32,
        l if l == MemberLevel::Member as i32 || l == MemberLevel::Trusted as i32 => l,
        _ => {
            return Err(CallError::bad_request(
                "initial_level must be member or trusted",
            ));
        }
    };
    let now = Timestamp::now();
    let expires = input.expires_at.unwrap_or(Timestamp {
        seconds: now.seconds + INVITE_SECONDS,
        nanos: 0,
    });
    if expires.seconds <= now.seconds {
        return Err(CallError::bad_request("expires_at is in the past"));
    }
    let invitee_text = invitee.to_string();
    let membership = log.catch_up(|m| m.clone());
    if membership.is_member(&invitee_text) || membership.is_revoked(&invitee_text) {
        return Err(CallError::bad_request(
            "the invitee is already a member or was revoked",
        ));
    }
    if !membership.can_invite(&log.node_id().to_string()) {
        // EVT-045: refuse what the view would void.
        return Err(CallError::new(
            ErrorCode::Unauthorized,
            "this node may not invite (the policy needs a trusted member)",
        ));
    }
    let text = hearthnet_sdk::records::issue_invite(
        log.key(),
        Invite {
            version: 1,
            community_id: log.community().to_string(),
            community_name: String::new(),
            inviter_node_id: String::new(),
            invitee_node_id: invitee_text.clone(),
            initial_level: level,
            bootstrap_endpoints: Vec::new(),
            expires_at: Some(expires),
        },
    )
    .map_err(|e| CallError::internal(e.to_string()))?;
    // Idempotent per invitee: reuse a pending invite.
    if let Some(id) = membership.invites_for(&invitee_text).into_iter().next()
        && let Some(ev) = log.get(&id)
    {
        return Ok(cm::InviteOutput {
            invite: text,
            event_id: id,
            lamport: ev.lamport,
        });
    }
    let payload = cm::MemberInvitedEvent {
        invitee_node_id: invitee_text,
        display_name: input.display_name,
        initial_level: level,
        expires_at: Some(expires),
    };
    let appended = log.append("community.member.invited", payload.encode_to_vec())?;
    Ok(cm::InviteOutput {
        invite: text,
        event_id: appended.id,
        lamport: appended.lamport,
    })
}

/// COMM-002: checks the co-signatures and logs `community.member.revoked`.
fn revoke(log: &EventLog, input: cm::RevokeInput) -> Result<cm::RevokeOutput, CallError> {
    let target: NodeId = input
        .target_node_id
        .parse()
        .map_err(|e| CallError::bad_request(format!("target_node_id: {e}")))?;
    let target = target.to_string();
    let me = log.node_id().to_string();
    let (membership, policy_needed) = log.catch_up(|m| (m.clone(), m.revoke_threshold()));
    if membership.is_revoked(&target) {
        return Err(CallError::bad_request("the target is already revoked"));
    }
    if !membership.is_member(&target) && membership.invites_for(&target).is_empty() {
        return Err(CallError::new(
            ErrorCode::NotFound,
            "the target is neither a member nor a pending invitee",
        ));
    }
    if target == membership.root() {
        return Err(CallError::bad_request("the root cannot be revoked"));
    }
    let signed = cm::RevokeInput {
        target_node_id: target.clone(),
        reason: input.reason,
        ..Default::default()
    }
    .encode_to_vec();
    let mut cosigners = input.co_signers;
    if !cosigners.iter().any(|c| c.node_id == me) {
        cosigners.push(cm::CoSignature {
            node_id: me.clone(),
            signature: signing::sign_envelope(log.key(), Domain::CommunityCosign, &signed).to_vec(),
        });
    }
    let mut distinct = std::collections::HashSet::new();
    for c in &cosigners {
        let id: NodeId = c
            .node_id
            .parse()
            .map_err(|e| CallError::bad_request(format!("co-signer: {e}")))?;
        signing::verify_envelope(&id, Domain::CommunityCosign, &signed, &c.signature).map_err(
            |_| {
                CallError::new(
                    ErrorCode::InvalidSignature,
                    format!("co-signature of {} does not verify", c.node_id),
                )
            },
        )?;
        if membership.is_trusted(&c.node_id) {
            distinct.insert(c.node_id.clone());
        }
    }
    if (distinct.len() as u32) < policy_needed {
        return Err(CallError::new(
            ErrorCode::CoSignerInsufficient,
            format!(
                "{} trusted co-signers, the policy needs {policy_needed}",
                distinct.len()
            ),
        ));
    }
    let payload = cm::MemberRevokedEvent {
        target_node_id: target,
        reason: input.reason,
        co_signers: cosigners,
    };
    let appended = log.append("community.member.revoked", payload.encode_to_vec())?;
    Ok(cm::RevokeOutput {
        event_id: appended.id,
        lamport: appended.lamport,
    })
}
