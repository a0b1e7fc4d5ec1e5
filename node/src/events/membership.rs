//! The membership view: a fold of the community log in log order
//! (EVT-044 … EVT-053, decisions 0048 and 0049).

use std::collections::{BTreeMap, HashMap, HashSet};

use prost::Message;

use hearthnet_sdk::envelope;
use hearthnet_sdk::identity::NodeId;
use hearthnet_sdk::proto::hearthnet::community::v1 as cm;
use hearthnet_sdk::proto::hearthnet::identity::v1::{
    CommunityManifest, CommunityPolicy, Member, MemberLevel, NodeManifest, RevokedMember,
};
use hearthnet_sdk::signing::{self, Domain};
use hearthnet_sdk::wkt::Timestamp;

use super::LogEvent;

/// One member as the view knows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MemberInfo {
    /// Level (`MemberLevel` number: 1 member, 2 trusted, 3 anchor).
    pub level: i32,
    /// Join time (the join's wall clock).
    pub added_at: i64,
    /// Who invited it.
    pub added_by: String,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct InviteInfo {
    invitee: String,
    inviter: String,
    level: i32,
    expires_at: i64,
    lamport: u64,
    used: bool,
}

/// Who belongs to the community, at some position of the log.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Membership {
    root: String,
    name: String,
    created_at: i64,
    policy: CommunityPolicy,
    members: BTreeMap<String, MemberInfo>,
    revoked: BTreeMap<String, (i64, u64)>,
    invites: HashMap<String, InviteInfo>,
    used_cosignatures: HashSet<Vec<u8>>,
    head_lamport: u64,
}

fn secs(t: &Option<hearthnet_sdk::wkt::Timestamp>) -> i64 {
    t.as_ref().map_or(0, |t| t.seconds)
}

impl Membership {
    /// The empty view of a community whose root is `root`.
    pub fn new(root: &str) -> Self {
        Self {
            root: root.to_string(),
            ..Self::default()
        }
    }

    /// A view holding the given members (for tests of other views): pairs of
    /// NodeID text and `MemberLevel` number.
    pub fn for_tests(members: &[(&str, i32)]) -> Self {
        let mut m = Self::default();
        for (id, level) in members {
            m.members.insert(
                (*id).to_string(),
                MemberInfo {
                    level: *level,
                    added_at: 0,
                    added_by: String::new(),
                },
            );
        }
        m
    }

    /// The root's NodeID text.
    pub fn root(&self) -> &str {
        &self.root
    }

    /// Whether `community.created` has been folded.
    pub fn is_created(&self) -> bool {
        !self.name.is_empty() || self.members.contains_key(&self.root)
    }

    /// A member's level number, if it is a (non-revoked) member.
    pub fn level(&self, node: &str) -> Option<i32> {
        self.members.get(node).map(|m| m.level)
    }

    /// Member, trusted or anchor, not revoked.
    pub fn is_member(&self, node: &str) -> bool {
        self.members.contains_key(node)
    }

    /// Trusted or anchor.
    pub fn is_trusted(&self, node: &str) -> bool {
        self.level(node)
            .is_some_and(|l| l >= MemberLevel::Trusted as i32)
    }

    /// Whether `node` may author a valid invite now (EVT-045).
    pub fn can_invite(&self, node: &str) -> bool {
        self.is_member(node) && (self.policy.default_member_can_invite || self.is_trusted(node))
    }

    /// Trusted co-signers a revocation needs (0 read as 3).
    pub fn revoke_threshold(&self) -> u32 {
        match self.policy.min_signatures_to_revoke {
            0 => 3,
            n => n,
        }
    }

    /// Whether a valid revocation of `node` has been folded.
    pub fn is_revoked(&self, node: &str) -> bool {
        self.revoked.contains_key(node)
    }

    /// The Lamport time of the first valid revocation of `node`.
    pub fn revoked_at_lamport(&self, node: &str) -> Option<u64> {
        self.revoked.get(node).map(|r| r.1)
    }

    /// Whether `node` is named by a valid, unexpired (at `now`), unredeemed
    /// invite and not revoked (decision 0046).
    pub fn is_pending_invitee(&self, node: &str, now: i64) -> bool {
        !self.is_revoked(node)
            && !self.is_member(node)
            && self
                .invites
                .values()
                .any(|i| i.invitee == node && !i.used && i.expires_at > now)
    }

    /// The ids of valid, unused invites naming `node`.
    pub fn invites_for(&self, node: &str) -> Vec<String> {
        let mut v: Vec<_> = self
            .invites
            .iter()
            .filter(|(_, i)| i.invitee == node && !i.used)
            .map(|(id, _)| id.clone())
            .collect();
        v.sort();
        v
    }

    /// Every member and its level.
    pub fn members(&self) -> impl Iterator<Item = (&str, &MemberInfo)> {
        self.members.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// The view as a community manifest at its head (EVT-055).
    pub fn manifest(&self, community: &str) -> CommunityManifest {
        CommunityManifest {
            version: 1,
            community_id: community.to_string(),
            name: self.name.clone(),
            created_at: Some(Timestamp {
                seconds: self.created_at,
                nanos: 0,
            }),
            policy: Some(self.policy),
            members: self
                .members
                .iter()
                .map(|(id, m)| Member {
                    node_id: id.clone(),
                    level: m.level,
                    added_at: Some(Timestamp {
                        seconds: m.added_at,
                        nanos: 0,
                    }),
                    added_by: m.added_by.clone(),
                })
                .collect(),
            revoked: self
                .revoked
                .iter()
                .map(|(id, (at, _))| RevokedMember {
                    node_id: id.clone(),
                    revoked_at: Some(Timestamp {
                        seconds: *at,
                        nanos: 0,
                    }),
                })
                .collect(),
            head_lamport: self.head_lamport,
        }
    }

    /// Folds one event that is not void by author (the caller checks the
    /// revocation boundary and equivocation). Returns false when the event
    /// breaks a membership rule (it is then void in this view).
    pub fn apply(&mut self, ev: &LogEvent) -> bool {
        self.head_lamport = self.head_lamport.max(ev.lamport);
        match ev.event_type.as_str() {
            "community.created" => self.created(ev),
            "community.member.invited" => self.invited(ev),
            "community.member.joined" => self.joined(ev),
            "community.member.promoted" => self.promoted(ev),
            "community.member.demoted" => self.demoted(ev),
            "community.member.revoked" => self.revoked_ev(ev),
            "community.policy.updated" => {
                if ev.author != self.root {
                    return false;
                }
                match cm::PolicyUpdatedEvent::decode(ev.payload.as_slice()) {
                    Ok(p) => {
                        self.policy = p.policy.unwrap_or_default();
                        true
                    }
                    Err(_) => false,
                }
            }
            _ => true,
        }
    }

    fn created(&mut self, ev: &LogEvent) -> bool {
        // EVT-044: only the root, only once.
        if ev.author != self.root || self.members.contains_key(&self.root) {
            return false;
        }
        let Ok(c) = cm::CommunityCreatedEvent::decode(ev.payload.as_slice()) else {
            return false;
        };
        self.name = c.name;
        self.policy = c.policy.unwrap_or_default();
        self.created_at = ev.wall_clock;
        self.members.insert(
            self.root.clone(),
            MemberInfo {
                level: MemberLevel::Anchor as i32,
                added_at: ev.wall_clock,
                added_by: self.root.clone(),
            },
        );
        true
    }

    fn invited(&mut self, ev: &LogEvent) -> bool {
        let Ok(i) = cm::MemberInvitedEvent::decode(ev.payload.as_slice()) else {
            return false;
        };
        let Some(author_level) = self.level(&ev.author) else {
            return false;
        };
        let trusted = author_level >= MemberLevel::Trusted as i32;
        // EVT-045.
        if !(self.policy.default_member_can_invite || trusted) {
            return false;
        }
        let level_ok = i.initial_level == MemberLevel::Member as i32
            || (i.initial_level == MemberLevel::Trusted as i32 && trusted);
        if !level_ok
            || i.expires_at.is_none()
            || self.is_member(&i.invitee_node_id)
            || self.is_revoked(&i.invitee_node_id)
        {
            return false;
        }
        self.invites.insert(
            ev.id.clone(),
            InviteInfo {
                invitee: i.invitee_node_id,
                inviter: ev.author.clone(),
                level: i.initial_level,
                expires_at: secs(&i.expires_at),
                lamport: ev.lamport,
                used: false,
            },
        );
        true
    }

    fn joined(&mut self, ev: &LogEvent) -> bool {
        // EVT-046.
        if ev.seq != 1 || self.is_member(&ev.author) || self.is_revoked(&ev.author) {
            // The founder's own join changes nothing (decision 0048).
            return ev.author == self.root;
        }
        let Ok(j) = cm::MemberJoinedEvent::decode(ev.payload.as_slice()) else {
            return false;
        };
        let Some(inv) = self.invites.get(&j.invite_event_id) else {
            return false;
        };
        if inv.invitee != ev.author
            || inv.used
            || ev.lamport <= inv.lamport
            || ev.wall_clock >= inv.expires_at
        {
            return false;
        }
        let Some(env) = j.node_manifest.as_ref() else {
            return false;
        };
        let Ok((signer, m)) = envelope::open::<NodeManifest>(env, Domain::NodeManifest) else {
            return false;
        };
        if signer.to_string() != ev.author || m.node_id != ev.author {
            return false;
        }
        let (level, inviter) = (inv.level, inv.inviter.clone());
        if let Some(inv) = self.invites.get_mut(&j.invite_event_id) {
            inv.used = true;
        }
        self.members.insert(
            ev.author.clone(),
            MemberInfo {
                level,
                added_at: ev.wall_clock,
                added_by: inviter,
            },
        );
        true
    }

    /// Counts valid co-signatures (EVT-050) over `signed`; marks them used
    /// when `commit` and the count reaches `needed`.
    fn cosigned(
        &mut self,
        author: &str,
        cosigners: &[cm::CoSignature],
        signed: &[u8],
        needed: u32,
    ) -> bool {
        let mut seen = HashSet::new();
        let mut fresh = Vec::new();
        for c in cosigners {
            if !seen.insert(c.node_id.clone()) {
                return false;
            }
            if !self.is_trusted(&c.node_id) || self.used_cosignatures.contains(&c.signature) {
                continue;
            }
            let Ok(id) = c.node_id.parse::<NodeId>() else {
                continue;
            };
            if signing::verify_envelope(&id, Domain::CommunityCosign, signed, &c.signature).is_ok()
            {
                fresh.push(c.signature.clone());
            }
        }
        if !seen.contains(author) || (fresh.len() as u32) < needed.max(1) {
            return false;
        }
        self.used_cosignatures.extend(fresh);
        true
    }

    fn promoted(&mut self, ev: &LogEvent) -> bool {
        let Ok(p) = cm::MemberPromotedEvent::decode(ev.payload.as_slice()) else {
            return false;
        };
        let Some(current) = self.level(&p.target_node_id) else {
            return false;
        };
        if !self.is_trusted(&ev.author)
            || p.new_level <= current
            || p.new_level > MemberLevel::Anchor as i32
            || (p.new_level == MemberLevel::Anchor as i32 && ev.author != self.root)
        {
            return false;
        }
        let signed = cm::MemberPromotedEvent {
            co_signers: Vec::new(),
            ..p.clone()
        }
        .encode_to_vec();
        let needed = self.policy.min_signatures_to_promote.max(1);
        if !self.cosigned(&ev.author, &p.co_signers, &signed, needed) {
            return false;
        }
        if let Some(m) = self.members.get_mut(&p.target_node_id) {
            m.level = p.new_level;
        }
        true
    }

    fn demoted(&mut self, ev: &LogEvent) -> bool {
        let Ok(d) = cm::MemberDemotedEvent::decode(ev.payload.as_slice()) else {
            return false;
        };
        let Some(current) = self.level(&d.target_node_id) else {
            return false;
        };
        if !self.is_trusted(&ev.author)
            || d.target_node_id == self.root
            || d.new_level >= current
            || d.new_level < MemberLevel::Member as i32
            || (current == MemberLevel::Anchor as i32 && ev.author != self.root)
        {
            return false;
        }
        let signed = cm::MemberDemotedEvent {
            co_signers: Vec::new(),
            ..d.clone()
        }
        .encode_to_vec();
        let needed = match self.policy.min_signatures_to_demote {
            0 => 3,
            n => n,
        };
        if !self.cosigned(&ev.author, &d.co_signers, &signed, needed) {
            return false;
        }
        if let Some(m) = self.members.get_mut(&d.target_node_id) {
            m.level = d.new_level;
        }
        true
    }

    fn revoked_ev(&mut self, ev: &LogEvent) -> bool {
        let Ok(r) = cm::MemberRevokedEvent::decode(ev.payload.as_slice()) else {
            return false;
        };
        let target = r.target_node_id.clone();
        let pending = self
            .invites
            .values()
            .any(|i| i.invitee == target && !i.used);
        if !self.is_trusted(&ev.author)
            || target == self.root
            || self.is_revoked(&target)
            || !(self.is_member(&target) || pending)
        {
            return false;
        }
        // Co-signers sign a `RevokeInput` with only target and reason (decision 0048).
        let signed = cm::RevokeInput {
            target_node_id: target.clone(),
            reason: r.reason,
            ..Default::default()
        }
        .encode_to_vec();
        let needed = match self.policy.min_signatures_to_revoke {
            0 => 3,
            n => n,
        };
        if !self.cosigned(&ev.author, &r.co_signers, &signed, needed) {
            return false;
        }
        self.members.remove(&target);
        for inv in self.invites.values_mut() {
            if inv.invitee == target {
                inv.used = true;
            }
        }
        self.revoked.insert(target, (ev.wall_clock, ev.lamport));
        true
    }
}
