//! The persistent part of the event log, on fjall.
//!
//! One database holds every community's log; each key starts with a 16-byte
//! community prefix (the first 16 bytes of BLAKE3 of the community id text).
//! Keyspaces:
//!
//! | keyspace | key | value |
//! |---|---|---|
//! | `chain`  | prefix · author (32) · seq (u64be) | id (32) · lamport (u64be) · the `SignedEvent` bytes exactly as received |
//! | `ids`    | prefix · id (32) | author (32) · seq (u64be) |
//! | `order`  | prefix · lamport (u64be) · kind (1) · id (32) | author (32) · seq (u64be) |
//! | `meta`   | prefix · name | counters, equivocation proofs, snapshots |
//!
//! The bytes live in author order, so serving a range of an author's chain
//! (the bulk of sync) is one sequential scan without lookups.
//!
//! `kind` is 0 for `community.member.revoked` and 1 otherwise, so a scan of
//! `order` is the log order of EVT-014. One event is one atomic write batch
//! over all four keyspaces (EVT-009: the Lamport counter is written with it).

use std::path::Path;

use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};

/// A meta entry: (name, value).
pub type MetaEntry = (Vec<u8>, Vec<u8>);

/// A 32-byte hash or key.
pub type B32 = [u8; 32];

/// Storage errors.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The database failed.
    #[error("event store: {0}")]
    Db(#[from] fjall::Error),
    /// A stored record does not have the expected layout.
    #[error("event store is corrupt: {0}")]
    Corrupt(&'static str),
}

/// How hard each write batch is pushed to disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Written to the OS before the append returns: survives a crash of the
    /// process (SIGKILL), not a power loss of the last moments.
    Process,
    /// `fdatasync` before the append returns: survives power loss.
    Power,
}

/// The position of an event in the log order (EVT-014).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct OrderKey {
    /// Lamport time.
    pub lamport: u64,
    /// 0 for revocations, 1 otherwise.
    pub kind: u8,
    /// Event id.
    pub id: B32,
}

/// An author's chain entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChainEntry {
    /// Event id.
    pub id: B32,
    /// Its Lamport time.
    pub lamport: u64,
}

/// One event to write.
pub struct NewEvent<'a> {
    /// Event id.
    pub id: B32,
    /// Author key bytes.
    pub author: B32,
    /// Author seq.
    pub seq: u64,
    /// Order position.
    pub order: OrderKey,
    /// The `SignedEvent` bytes as received.
    pub raw: &'a [u8],
}

/// The fjall database of event logs.
#[derive(Clone)]
pub struct Store {
    db: Database,
    ids: Keyspace,
    chain: Keyspace,
    order: Keyspace,
    meta: Keyspace,
    durability: Durability,
}

/// The 16-byte key prefix of a community.
pub fn prefix(community: &str) -> [u8; 16] {
    let h = blake3::hash(community.as_bytes());
    let mut p = [0u8; 16];
    p.copy_from_slice(&h.as_bytes()[..16]);
    p
}

fn b32(s: &[u8]) -> Result<B32, StoreError> {
    s.try_into()
        .map_err(|_| StoreError::Corrupt("bad hash length"))
}

fn u64_at(s: &[u8], at: usize) -> Result<u64, StoreError> {
    s.get(at..at + 8)
        .and_then(|b| b.try_into().ok())
        .map(u64::from_be_bytes)
        .ok_or(StoreError::Corrupt("bad integer"))
}

impl Store {
    /// Opens (or creates) the store in `dir`.
    pub fn open(dir: &Path, durability: Durability) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir).map_err(fjall::Error::Io)?;
        let db = crate::storage::open_database(dir)?;
        let ids = db.keyspace("ids", KeyspaceCreateOptions::default)?;
        let chain = db.keyspace("chain", KeyspaceCreateOptions::default)?;
        let order = db.keyspace("order", KeyspaceCreateOptions::default)?;
        let meta = db.keyspace("meta", KeyspaceCreateOptions::default)?;
        Ok(Self {
            db,
            ids,
            chain,
            order,
            meta,
            durability,
        })
    }

    fn persist_mode(&self) -> PersistMode {
        match self.durability {
            Durability::Process => PersistMode::Buffer,
            Durability::Power => PersistMode::SyncData,
        }
    }

    /// Writes events and the new Lamport counter in one atomic batch.
    pub fn put_events(
        &self,
        pfx: &[u8; 16],
        events: &[NewEvent<'_>],
        lamport: u64,
    ) -> Result<(), StoreError> {
        let mut batch = self.db.batch().durability(Some(self.persist_mode()));
        for e in events {
            let mut ck = Vec::with_capacity(56);
            ck.extend_from_slice(pfx);
            ck.extend_from_slice(&e.author);
            ck.extend_from_slice(&e.seq.to_be_bytes());
            let mut v = Vec::with_capacity(40 + e.raw.len());
            v.extend_from_slice(&e.id);
            v.extend_from_slice(&e.order.lamport.to_be_bytes());
            v.extend_from_slice(e.raw);
            batch.insert(&self.chain, ck, v);

            let mut k = Vec::with_capacity(48);
            k.extend_from_slice(pfx);
            k.extend_from_slice(&e.id);
            let mut pos = Vec::with_capacity(40);
            pos.extend_from_slice(&e.author);
            pos.extend_from_slice(&e.seq.to_be_bytes());
            batch.insert(&self.ids, k, pos.clone());
            batch.insert(&self.order, order_key(pfx, &e.order), pos);
        }
        batch.insert(&self.meta, meta_key(pfx, b"lamport"), lamport.to_be_bytes());
        batch.commit()?;
        Ok(())
    }

    /// The raw `SignedEvent` bytes of an id.
    pub fn get(&self, pfx: &[u8; 16], id: &B32) -> Result<Option<Vec<u8>>, StoreError> {
        let mut k = Vec::with_capacity(48);
        k.extend_from_slice(pfx);
        k.extend_from_slice(id);
        let Some(pos) = self.ids.get(k)? else {
            return Ok(None);
        };
        self.raw_at(pfx, &pos)
    }

    /// The raw bytes at a position value (author · seq).
    fn raw_at(&self, pfx: &[u8; 16], pos: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        if pos.len() != 40 {
            return Err(StoreError::Corrupt("bad position"));
        }
        let mut ck = Vec::with_capacity(56);
        ck.extend_from_slice(pfx);
        ck.extend_from_slice(pos);
        Ok(self
            .chain
            .get(ck)?
            .and_then(|v| v.get(40..).map(<[u8]>::to_vec)))
    }

    /// Whether an id is stored.
    pub fn contains(&self, pfx: &[u8; 16], id: &B32) -> Result<bool, StoreError> {
        let mut k = Vec::with_capacity(48);
        k.extend_from_slice(pfx);
        k.extend_from_slice(id);
        Ok(self.ids.contains_key(k)?)
    }

    /// The chain entry of (author, seq).
    pub fn chain_at(
        &self,
        pfx: &[u8; 16],
        author: &B32,
        seq: u64,
    ) -> Result<Option<ChainEntry>, StoreError> {
        let mut k = Vec::with_capacity(56);
        k.extend_from_slice(pfx);
        k.extend_from_slice(author);
        k.extend_from_slice(&seq.to_be_bytes());
        match self.chain.get(k)? {
            None => Ok(None),
            Some(v) => Ok(Some(entry(&v)?)),
        }
    }

    /// The raw events of one author from `from` to `to` inclusive, in seq
    /// order, calling `f` for each until it returns false.
    pub fn author_range(
        &self,
        pfx: &[u8; 16],
        author: &B32,
        from: u64,
        to: u64,
        mut f: impl FnMut(u64, Vec<u8>) -> bool,
    ) -> Result<(), StoreError> {
        let mut lo = Vec::with_capacity(56);
        lo.extend_from_slice(pfx);
        lo.extend_from_slice(author);
        let mut hi = lo.clone();
        lo.extend_from_slice(&from.to_be_bytes());
        hi.extend_from_slice(&to.to_be_bytes());
        for item in self.chain.range(lo..=hi) {
            let (k, v) = item.into_inner()?;
            let seq = u64_at(&k, 48)?;
            let raw = v
                .get(40..)
                .ok_or(StoreError::Corrupt("short chain entry"))?
                .to_vec();
            if !f(seq, raw) {
                break;
            }
        }
        Ok(())
    }

    /// Every author's highest stored entry: (author, seq, entry).
    pub fn heads(&self, pfx: &[u8; 16]) -> Result<Vec<(B32, u64, ChainEntry)>, StoreError> {
        let mut out: Vec<(B32, u64, ChainEntry)> = Vec::new();
        let mut next: Vec<u8> = pfx.to_vec();
        // Jump from author to author: seek the last key below the next author.
        loop {
            let mut it = self.chain.range(next.clone()..);
            let Some(first) = it.next() else { break };
            let k = first.key()?;
            if !k.starts_with(pfx) {
                break;
            }
            let author = b32(k
                .get(16..48)
                .ok_or(StoreError::Corrupt("short chain key"))?)?;
            let mut author_hi = pfx.to_vec();
            author_hi.extend_from_slice(&author);
            author_hi.extend_from_slice(&u64::MAX.to_be_bytes());
            let mut author_lo = pfx.to_vec();
            author_lo.extend_from_slice(&author);
            let last = self
                .chain
                .range(author_lo..=author_hi.clone())
                .next_back()
                .ok_or(StoreError::Corrupt("author without entries"))?;
            let (lk, lv) = last.into_inner()?;
            out.push((
                author,
                u64_at(&lk, 48)?,
                ChainEntry {
                    id: b32(lv
                        .get(..32)
                        .ok_or(StoreError::Corrupt("short chain entry"))?)?,
                    lamport: u64_at(&lv, 32)?,
                },
            ));
            next = author_hi;
            next.push(0);
        }
        Ok(out)
    }

    /// Walks the log order after `after` (exclusive; from the start when
    /// `None`), calling `f` with each position and raw event.
    pub fn scan_order(
        &self,
        pfx: &[u8; 16],
        after: Option<&OrderKey>,
        mut f: impl FnMut(OrderKey, Vec<u8>) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let lo = match after {
            Some(a) => {
                let mut k = order_key(pfx, a);
                k.push(0);
                k
            }
            None => pfx.to_vec(),
        };
        let mut hi = pfx.to_vec();
        hi.extend_from_slice(&[0xff; 42]);
        for item in self.order.range(lo..hi) {
            let k = item.key()?;
            let ok = OrderKey {
                lamport: u64_at(&k, 16)?,
                kind: *k.get(24).ok_or(StoreError::Corrupt("short order key"))?,
                id: b32(k
                    .get(25..57)
                    .ok_or(StoreError::Corrupt("short order key"))?)?,
            };
            let raw = self
                .get(pfx, &ok.id)?
                .ok_or(StoreError::Corrupt("order names a missing event"))?;
            f(ok, raw)?;
        }
        Ok(())
    }

    /// The number of stored events of a community.
    pub fn count(&self, pfx: &[u8; 16]) -> Result<u64, StoreError> {
        let mut n = 0;
        for item in self.order.prefix(pfx) {
            item.key()?;
            n += 1;
        }
        Ok(n)
    }

    /// Reads a meta value.
    pub fn meta_get(&self, pfx: &[u8; 16], name: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.meta.get(meta_key(pfx, name))?.map(|v| v.to_vec()))
    }

    /// Writes a meta value durably.
    pub fn meta_put(&self, pfx: &[u8; 16], name: &[u8], value: &[u8]) -> Result<(), StoreError> {
        let mut batch = self.db.batch().durability(Some(self.persist_mode()));
        batch.insert(&self.meta, meta_key(pfx, name), value);
        batch.commit()?;
        Ok(())
    }

    /// Deletes a meta value (`name` as returned by [`Store::meta_scan`]).
    pub fn meta_delete(&self, pfx: &[u8; 16], name: &[u8]) -> Result<(), StoreError> {
        let mut batch = self.db.batch().durability(Some(self.persist_mode()));
        batch.remove(&self.meta, meta_key(pfx, name));
        batch.commit()?;
        Ok(())
    }

    /// Every meta value whose name starts with `name_prefix`.
    pub fn meta_scan(
        &self,
        pfx: &[u8; 16],
        name_prefix: &[u8],
    ) -> Result<Vec<MetaEntry>, StoreError> {
        let p = meta_key(pfx, name_prefix);
        let mut out = Vec::new();
        for item in self.meta.prefix(&p) {
            let (k, v) = item.into_inner()?;
            out.push((k.get(16..).unwrap_or_default().to_vec(), v.to_vec()));
        }
        Ok(out)
    }

    /// The stored Lamport counter.
    pub fn lamport(&self, pfx: &[u8; 16]) -> Result<u64, StoreError> {
        match self.meta_get(pfx, b"lamport")? {
            None => Ok(0),
            Some(v) => u64_at(&v, 0),
        }
    }

    /// The highest stored Lamport time (last key of `order`).
    pub fn max_lamport(&self, pfx: &[u8; 16]) -> Result<u64, StoreError> {
        match self.order.prefix(pfx).next_back() {
            None => Ok(0),
            Some(item) => {
                let k = item.key()?;
                u64_at(&k, 16)
            }
        }
    }
}

fn entry(v: &[u8]) -> Result<ChainEntry, StoreError> {
    Ok(ChainEntry {
        id: b32(v
            .get(..32)
            .ok_or(StoreError::Corrupt("short chain entry"))?)?,
        lamport: u64_at(v, 32)?,
    })
}

fn order_key(pfx: &[u8; 16], o: &OrderKey) -> Vec<u8> {
    let mut k = Vec::with_capacity(57);
    k.extend_from_slice(pfx);
    k.extend_from_slice(&o.lamport.to_be_bytes());
    k.push(o.kind);
    k.extend_from_slice(&o.id);
    k
}

fn meta_key(pfx: &[u8; 16], name: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(16 + name.len());
    k.extend_from_slice(pfx);
    k.extend_from_slice(name);
    k
}
