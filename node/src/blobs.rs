//! Content-addressed blobs (M07, decision 0064): the store and BLAKE3
//! verified streaming. Transfer capabilities and replication build on it.
//!
//! A blob's CID is the plain BLAKE3 hash of its bytes. Next to each blob the
//! store keeps a BLAKE3 *outboard* (the tree's parent hashes, pre-order) in
//! chunk groups of 16 KiB (`bao-tree`, chunk-group log 4, the anchor's
//! choice), so any byte range can be sent with the hashes that prove it and
//! a receiver checks every 16 KiB group against the CID before keeping it:
//! a corrupted byte costs at most one group, and verified groups never need
//! to be sent again.
//!
//! Layout under the store's directory: `data/<2 hex>/<64 hex>` (content),
//! `data/<2 hex>/<64 hex>.obao` (outboard), `tmp/` (writes in progress) and
//! `index/` (fjall: CID → size, pins, when stored). Writes go to `tmp/`, are
//! `fsync`ed, then renamed into place and the directory is `fsync`ed, so a
//! crash leaves either no blob or a whole one; the index entry is written
//! last, and a blob file without an index entry is removed at open.

use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use bao_tree::io::outboard::PreOrderMemOutboard;
use bao_tree::io::sync::{DecodeResponseIter, encode_ranges_validated};
use bao_tree::io::{BaoContentItem, DecodeError, EncodeError};
use bao_tree::{BaoTree, BlockSize, ChunkNum, ChunkRanges};
use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};

/// Chunk-group log: 2⁴ BLAKE3 chunks of 1 KiB = 16 KiB per verified group.
pub const GROUP_LOG: u8 = 4;
/// Bytes per verified group.
pub const GROUP_BYTES: u64 = 1024 << GROUP_LOG;
/// Longest blob name accepted (bytes).
pub const NAME_MAX_BYTES: usize = 255;

fn block() -> BlockSize {
    BlockSize::from_chunk_log(GROUP_LOG)
}

/// Blob errors.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BlobError {
    /// Disk I/O failed.
    #[error("blob store: {0}")]
    Io(#[from] std::io::Error),
    /// The index failed.
    #[error("blob index: {0}")]
    Db(#[from] fjall::Error),
    /// No such blob.
    #[error("no blob {0}")]
    NotFound(String),
    /// A group did not verify against the CID (in transit or on disk).
    #[error("bytes at offset {offset} do not match {cid}")]
    Corrupt {
        /// The CID.
        cid: String,
        /// First byte of the bad group.
        offset: u64,
    },
    /// The range lies outside the blob.
    #[error("range {start}..{end} is outside a blob of {size} bytes")]
    Range {
        /// Start.
        start: u64,
        /// End (exclusive).
        end: u64,
        /// Blob size.
        size: u64,
    },
    /// A name is not acceptable.
    #[error("bad blob name: {0}")]
    Name(String),
    /// The store is full of pinned blobs.
    #[error("quota of {quota} bytes exceeded ({needed} more needed)")]
    Quota {
        /// The quota.
        quota: u64,
        /// Bytes that could not be freed.
        needed: u64,
    },
}

/// `blake3:` text of a hash.
pub fn cid_text(hash: &blake3::Hash) -> String {
    format!("blake3:{}", hash.to_hex())
}

fn parse_cid(cid: &str) -> Result<blake3::Hash, BlobError> {
    let hex = cid
        .strip_prefix("blake3:")
        .ok_or_else(|| BlobError::NotFound(cid.to_string()))?;
    blake3::Hash::from_hex(hex).map_err(|_| BlobError::NotFound(cid.to_string()))
}

/// Checks a blob name given by a caller: no path separators or traversal,
/// no control characters, at most `NAME_MAX_BYTES`.
pub fn validate_name(name: &str) -> Result<(), BlobError> {
    let bad = name.is_empty()
        || name.len() > NAME_MAX_BYTES
        || name == "."
        || name == ".."
        || name.contains(['/', '\\', '\0'])
        || name.chars().any(char::is_control);
    if bad {
        return Err(BlobError::Name(format!(
            "`{}` must be 1..={NAME_MAX_BYTES} bytes without path separators or control characters",
            name.escape_debug()
        )));
    }
    Ok(())
}

/// The outboard of some bytes; its root is the CID's hash.
pub fn outboard(data: &[u8]) -> PreOrderMemOutboard {
    PreOrderMemOutboard::create(data, block())
}

/// The chunk range covering bytes `start..end`.
fn chunks(start: u64, end: u64) -> ChunkRanges {
    ChunkRanges::from(ChunkNum(start / 1024)..ChunkNum(end.div_ceil(1024)))
}

/// Encodes bytes `start..end` of a blob with the hashes that prove them.
pub fn encode_range(
    data: &[u8],
    outboard: &PreOrderMemOutboard,
    start: u64,
    end: u64,
) -> Result<Vec<u8>, BlobError> {
    let size = data.len() as u64;
    if start > end || end > size {
        return Err(BlobError::Range { start, end, size });
    }
    let mut out = Vec::new();
    encode_ranges_validated(data, outboard, &chunks(start, end), &mut out).map_err(|e| {
        // The sender re-verifies what it reads: a mismatch means its own
        // copy (disk or memory) is corrupt.
        let corrupt = |offset| BlobError::Corrupt {
            cid: cid_text(&outboard.root),
            offset,
        };
        match e {
            EncodeError::LeafHashMismatch(c) => corrupt(c.0 * 1024),
            EncodeError::ParentHashMismatch(_) | EncodeError::SizeMismatch => corrupt(start),
            EncodeError::Io(e) => BlobError::Io(e),
            other => BlobError::Io(std::io::Error::other(format!("encoding: {other}"))),
        }
    })?;
    Ok(out)
}

/// What a receiver got out of an encoded range.
#[derive(Debug, Default)]
pub struct Verified {
    /// Verified pieces: (byte offset, bytes), in order.
    pub pieces: Vec<(u64, Vec<u8>)>,
    /// The first group that failed, if any (everything before it is good).
    pub corrupt_at: Option<u64>,
}

/// Checks an encoded range against the CID and size, group by group; keeps
/// every group that verifies before the first one that does not.
pub fn decode_range(
    cid: &str,
    size: u64,
    start: u64,
    end: u64,
    encoded: &[u8],
) -> Result<Verified, BlobError> {
    let root = parse_cid(cid)?;
    if start > end || end > size {
        return Err(BlobError::Range { start, end, size });
    }
    let tree = BaoTree::new(size, block());
    let ranges = chunks(start, end);
    let mut out = Verified::default();
    for item in DecodeResponseIter::new(root, tree, encoded, &ranges) {
        match item {
            Ok(BaoContentItem::Leaf(leaf)) => out.pieces.push((leaf.offset, leaf.data.to_vec())),
            Ok(BaoContentItem::Parent(_)) => {}
            Err(DecodeError::LeafHashMismatch(c)) => {
                out.corrupt_at = Some(c.0 * 1024);
                break;
            }
            Err(DecodeError::ParentHashMismatch(_))
            | Err(DecodeError::ParentNotFound(_))
            | Err(DecodeError::LeafNotFound(_)) => {
                let next = out
                    .pieces
                    .last()
                    .map_or(start - start % GROUP_BYTES, |(o, d)| o + d.len() as u64);
                out.corrupt_at = Some(next);
                break;
            }
            Err(DecodeError::Io(e)) => return Err(BlobError::Io(e)),
        }
    }
    Ok(out)
}

/// Index entry of a stored blob.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlobInfo {
    /// Size in bytes.
    pub size: u64,
    /// Pin count (pinned blobs are never collected).
    pub pins: u32,
    /// When it was stored (unix seconds).
    pub stored_at: i64,
}

impl BlobInfo {
    fn encode(&self) -> [u8; 20] {
        let mut b = [0u8; 20];
        b[..8].copy_from_slice(&self.size.to_be_bytes());
        b[8..12].copy_from_slice(&self.pins.to_be_bytes());
        b[12..].copy_from_slice(&self.stored_at.to_be_bytes());
        b
    }

    fn decode(b: &[u8]) -> Option<Self> {
        Some(Self {
            size: u64::from_be_bytes(b.get(..8)?.try_into().ok()?),
            pins: u32::from_be_bytes(b.get(8..12)?.try_into().ok()?),
            stored_at: i64::from_be_bytes(b.get(12..20)?.try_into().ok()?),
        })
    }
}

/// The blob store of one node.
pub struct BlobStore {
    dir: PathBuf,
    db: Database,
    index: Keyspace,
    quota: u64,
}

fn now() -> i64 {
    hearthnet_sdk::wkt::Timestamp::now().seconds
}

impl BlobStore {
    /// Opens the store in `dir` with a quota in bytes (0 = unlimited);
    /// removes leftovers of interrupted writes.
    pub fn open(dir: &Path, quota: u64) -> Result<Self, BlobError> {
        fs::create_dir_all(dir.join("data"))?;
        let tmp = dir.join("tmp");
        if tmp.exists() {
            fs::remove_dir_all(&tmp)?;
        }
        fs::create_dir_all(&tmp)?;
        let db = Database::builder(dir.join("index")).open()?;
        let index = db.keyspace("blobs", KeyspaceCreateOptions::default)?;
        Ok(Self {
            dir: dir.to_path_buf(),
            db,
            index,
            quota,
        })
    }

    fn paths(&self, hash: &blake3::Hash) -> (PathBuf, PathBuf) {
        let hex = hash.to_hex();
        let shard = self.dir.join("data").join(&hex.as_str()[..2]);
        (
            shard.join(hex.as_str()),
            shard.join(format!("{}.obao", hex.as_str())),
        )
    }

    /// Stores bytes read from `reader`; returns the CID. Storing a blob that
    /// is already held is a no-op.
    pub fn put(&self, mut reader: impl Read) -> Result<String, BlobError> {
        let tmp = self.dir.join("tmp").join(ulid::Ulid::new().to_string());
        let mut file = File::create(&tmp)?;
        let mut hasher = blake3::Hasher::new();
        let mut buf = vec![0u8; 256 * 1024];
        let mut size = 0u64;
        loop {
            let n = reader.read(&mut buf)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            file.write_all(&buf[..n])?;
            size += n as u64;
        }
        file.sync_data()?;
        drop(file);
        let hash = hasher.finalize();
        let result = self.commit(&tmp, hash, size);
        let _ = fs::remove_file(&tmp);
        result
    }

    fn commit(&self, tmp: &Path, hash: blake3::Hash, size: u64) -> Result<String, BlobError> {
        let key = *hash.as_bytes();
        if self.index.contains_key(key)? {
            return Ok(cid_text(&hash));
        }
        self.make_room(size)?;
        let data = fs::read(tmp)?;
        let ob = outboard(&data);
        debug_assert_eq!(ob.root, hash);
        let (path, obao) = self.paths(&hash);
        let shard = path.parent().map(Path::to_path_buf).unwrap_or_default();
        fs::create_dir_all(&shard)?;
        let obao_tmp = tmp.with_extension("obao");
        {
            let mut f = File::create(&obao_tmp)?;
            f.write_all(&ob.data)?;
            f.sync_data()?;
        }
        fs::rename(&obao_tmp, &obao)?;
        fs::rename(tmp, &path)?;
        File::open(&shard)?.sync_all()?;
        let info = BlobInfo {
            size,
            pins: 0,
            stored_at: now(),
        };
        let mut batch = self.db.batch().durability(Some(PersistMode::SyncData));
        batch.insert(&self.index, key, info.encode());
        batch.commit()?;
        Ok(cid_text(&hash))
    }

    /// The index entry of a blob.
    pub fn stat(&self, cid: &str) -> Result<BlobInfo, BlobError> {
        let hash = parse_cid(cid)?;
        self.index
            .get(hash.as_bytes())?
            .and_then(|v| BlobInfo::decode(&v))
            .ok_or_else(|| BlobError::NotFound(cid.to_string()))
    }

    /// Every stored blob, by CID.
    pub fn list(&self) -> Result<Vec<(String, BlobInfo)>, BlobError> {
        let mut out = Vec::new();
        for item in self.index.iter() {
            let (k, v) = item.into_inner()?;
            if let (Ok(h), Some(info)) = (<[u8; 32]>::try_from(&k[..]), BlobInfo::decode(&v)) {
                out.push((cid_text(&blake3::Hash::from_bytes(h)), info));
            }
        }
        Ok(out)
    }

    /// Bytes `start..end` of a blob, encoded with their proofs, after
    /// re-verifying what is on disk (a corrupted disk is reported, never
    /// served).
    pub fn read_range(&self, cid: &str, start: u64, end: u64) -> Result<Vec<u8>, BlobError> {
        let info = self.stat(cid)?;
        let hash = parse_cid(cid)?;
        let (path, obao) = self.paths(&hash);
        let data = fs::read(path)?;
        let ob = PreOrderMemOutboard {
            root: hash,
            tree: BaoTree::new(info.size, block()),
            data: fs::read(obao)?,
        };
        let encoded = encode_range(&data, &ob, start, end)?;
        let check = decode_range(cid, info.size, start, end, &encoded)?;
        if let Some(offset) = check.corrupt_at {
            return Err(BlobError::Corrupt {
                cid: cid.to_string(),
                offset,
            });
        }
        Ok(encoded)
    }

    /// The whole content, verified.
    pub fn read(&self, cid: &str) -> Result<Vec<u8>, BlobError> {
        let info = self.stat(cid)?;
        let encoded = self.read_range(cid, 0, info.size)?;
        let v = decode_range(cid, info.size, 0, info.size, &encoded)?;
        let mut out = Vec::with_capacity(info.size as usize);
        for (_, piece) in v.pieces {
            out.extend_from_slice(&piece);
        }
        Ok(out)
    }

    fn set_pins(&self, cid: &str, f: impl FnOnce(u32) -> u32) -> Result<BlobInfo, BlobError> {
        let mut info = self.stat(cid)?;
        info.pins = f(info.pins);
        let hash = parse_cid(cid)?;
        self.index.insert(hash.as_bytes(), info.encode())?;
        Ok(info)
    }

    /// Pins a blob (never collected while pinned).
    pub fn pin(&self, cid: &str) -> Result<BlobInfo, BlobError> {
        self.set_pins(cid, |p| p.saturating_add(1))
    }

    /// Removes one pin.
    pub fn unpin(&self, cid: &str) -> Result<BlobInfo, BlobError> {
        self.set_pins(cid, |p| p.saturating_sub(1))
    }

    /// Deletes a blob (pinned or not): index first, then the files.
    pub fn delete(&self, cid: &str) -> Result<(), BlobError> {
        let hash = parse_cid(cid)?;
        self.stat(cid)?;
        self.index.remove(hash.as_bytes())?;
        let (path, obao) = self.paths(&hash);
        let _ = fs::remove_file(path);
        let _ = fs::remove_file(obao);
        Ok(())
    }

    /// Bytes held.
    pub fn used(&self) -> Result<u64, BlobError> {
        Ok(self.list()?.iter().map(|(_, i)| i.size).sum())
    }

    /// Collects unpinned blobs, oldest first, until `needed` more bytes fit
    /// under the quota; refuses when only pinned blobs are left.
    fn make_room(&self, needed: u64) -> Result<(), BlobError> {
        if self.quota == 0 {
            return Ok(());
        }
        let mut used = self.used()?;
        if used + needed <= self.quota {
            return Ok(());
        }
        let mut candidates: Vec<(String, BlobInfo)> = self
            .list()?
            .into_iter()
            .filter(|(_, i)| i.pins == 0)
            .collect();
        candidates.sort_by_key(|(_, i)| i.stored_at);
        for (cid, info) in candidates {
            if used + needed <= self.quota {
                break;
            }
            self.delete(&cid)?;
            used -= info.size;
        }
        if used + needed > self.quota {
            return Err(BlobError::Quota {
                quota: self.quota,
                needed: used + needed - self.quota,
            });
        }
        Ok(())
    }

    /// Collects every unpinned blob; returns the bytes freed.
    pub fn gc(&self) -> Result<u64, BlobError> {
        let mut freed = 0;
        for (cid, info) in self.list()? {
            if info.pins == 0 {
                self.delete(&cid)?;
                freed += info.size;
            }
        }
        Ok(freed)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn bytes(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 31 % 251) as u8).collect()
    }

    #[test]
    fn cids_are_plain_blake3_for_edge_sizes() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path(), 0).unwrap();
        for n in [0, 1, 1024, 16_384, 16_385, 262_144, 262_145] {
            let data = bytes(n);
            let cid = store.put(data.as_slice()).unwrap();
            assert_eq!(cid, cid_text(&blake3::hash(&data)), "size {n}");
            assert_eq!(store.stat(&cid).unwrap().size, n as u64);
            assert_eq!(store.read(&cid).unwrap(), data, "size {n}");
            // Storing again is a no-op.
            assert_eq!(store.put(data.as_slice()).unwrap(), cid);
        }
    }

    #[test]
    fn corruption_in_transit_is_caught_within_one_group() {
        let data = bytes(200_000);
        let cid = cid_text(&blake3::hash(&data));
        let ob = outboard(&data);
        let size = data.len() as u64;
        let mut enc = encode_range(&data, &ob, 0, size).unwrap();
        let ok = decode_range(&cid, size, 0, size, &enc).unwrap();
        assert_eq!(ok.corrupt_at, None);
        assert_eq!(
            ok.pieces.iter().map(|(_, d)| d.len()).sum::<usize>(),
            data.len()
        );
        // Flip one byte near the end of the stream: every group before the
        // bad one is kept, the bad one and later ones are not.
        let at = enc.len() - 40_000;
        enc[at] ^= 0x55;
        let bad = decode_range(&cid, size, 0, size, &enc).unwrap();
        let bad_at = bad.corrupt_at.expect("corruption detected");
        assert_eq!(bad_at % GROUP_BYTES, 0);
        let kept: u64 = bad.pieces.iter().map(|(_, d)| d.len() as u64).sum();
        assert_eq!(kept, bad_at, "everything before the bad group is verified");
        for (off, piece) in &bad.pieces {
            assert_eq!(
                &data[*off as usize..*off as usize + piece.len()],
                &piece[..]
            );
        }
        // Resume: fetch only from the bad group on.
        let rest = encode_range(&data, &ob, bad_at, size).unwrap();
        let fixed = decode_range(&cid, size, bad_at, size, &rest).unwrap();
        assert_eq!(fixed.corrupt_at, None);
        assert!(
            rest.len() < enc.len(),
            "the verified groups were not re-sent"
        );
        // A range in the middle verifies on its own.
        let mid = encode_range(&data, &ob, 50_000, 70_000).unwrap();
        let m = decode_range(&cid, size, 50_000, 70_000, &mid).unwrap();
        assert_eq!(m.corrupt_at, None);
        assert!(m.pieces.first().unwrap().0 <= 50_000);
    }

    #[test]
    fn a_corrupted_disk_is_reported_not_served() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path(), 0).unwrap();
        let data = bytes(100_000);
        let cid = store.put(data.as_slice()).unwrap();
        let hash = parse_cid(&cid).unwrap();
        let (path, _) = store.paths(&hash);
        let mut on_disk = fs::read(&path).unwrap();
        on_disk[70_000] ^= 1;
        fs::write(&path, on_disk).unwrap();
        assert!(
            store.read_range(&cid, 0, 16_384).is_ok(),
            "untouched groups still serve"
        );
        match store.read(&cid) {
            Err(BlobError::Corrupt { offset, .. }) => assert_eq!(offset, 65_536),
            other => panic!("expected corruption, got {other:?}"),
        }
    }

    #[test]
    fn pins_quota_and_gc() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path(), 250_000).unwrap();
        let a = store.put(bytes(100_000).as_slice()).unwrap();
        store.pin(&a).unwrap();
        let b = store.put(&bytes(100_001)[..]).unwrap();
        // A third blob needs room: the unpinned one goes, the pinned stays.
        let c = store.put(&bytes(100_002)[..]).unwrap();
        assert!(store.stat(&a).is_ok());
        assert!(matches!(store.stat(&b), Err(BlobError::NotFound(_))));
        assert!(store.stat(&c).is_ok());
        // Nothing unpinned left to make room for a big one.
        store.pin(&c).unwrap();
        assert!(matches!(
            store.put(&bytes(100_003)[..]),
            Err(BlobError::Quota { .. })
        ));
        store.unpin(&c).unwrap();
        assert_eq!(store.gc().unwrap(), 100_002);
        assert_eq!(store.list().unwrap().len(), 1);
        store.delete(&a).unwrap();
        assert!(store.list().unwrap().is_empty());
    }

    #[test]
    fn names_with_paths_or_too_long_are_refused() {
        for bad in [
            "",
            ".",
            "..",
            "../etc/passwd",
            "a/b",
            "a\\b",
            "nul\0",
            "tab\there",
            &"x".repeat(256),
        ] {
            assert!(validate_name(bad).is_err(), "{bad:?}");
        }
        for good in [
            "report.pdf",
            "Foto vom Fest.jpg",
            "ünïcödé.txt",
            &"x".repeat(255),
        ] {
            assert!(validate_name(good).is_ok(), "{good:?}");
        }
    }
}
