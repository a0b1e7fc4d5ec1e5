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

use std::os::unix::fs::FileExt;

use bao_tree::io::outboard::{PostOrderOutboard, PreOrderMemOutboard};
use bao_tree::io::sync::{DecodeResponseIter, decode_ranges, encode_ranges_validated};
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

/// Whether `cid` is CID text (IDENT-005/006): `blake3:` and 64 lowercase
/// hex digits.
pub fn is_cid(cid: &str) -> bool {
    cid.strip_prefix("blake3:")
        .is_some_and(|h| h.len() == 64 && h.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
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
    encode_ranges_validated(data, outboard, &chunks(start, end), &mut out)
        .map_err(|e| encode_error(e, &cid_text(&outboard.root), start))?;
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

/// Bytes per transfer chunk (FILE-007).
pub const CHUNK_BYTES: u64 = 262_144;

/// Number of transfer chunks of a blob of `size` bytes (FILE-007: the
/// empty blob is one empty chunk).
pub fn chunk_count(size: u64) -> u32 {
    u32::try_from(size.div_ceil(CHUNK_BYTES).max(1)).unwrap_or(u32::MAX)
}

/// Byte range `start..end` of chunk `i` of a blob of `size` bytes.
pub fn chunk_range(size: u64, i: u32) -> (u64, u64) {
    let start = (u64::from(i) * CHUNK_BYTES).min(size);
    (start, (start + CHUNK_BYTES).min(size))
}

fn encode_error(e: EncodeError, cid: &str, start: u64) -> BlobError {
    // The sender re-verifies what it reads: a mismatch means its own copy
    // (disk or memory) is corrupt.
    let corrupt = |offset| BlobError::Corrupt {
        cid: cid.to_string(),
        offset,
    };
    match e {
        EncodeError::LeafHashMismatch(c) => corrupt(c.0 * 1024),
        EncodeError::ParentHashMismatch(_) | EncodeError::SizeMismatch => corrupt(start),
        EncodeError::Io(e) => BlobError::Io(e),
        other => BlobError::Io(std::io::Error::other(format!("encoding: {other}"))),
    }
}

/// Whether every byte is zero (a hole of a sparse file).
fn is_zero(b: &[u8]) -> bool {
    b.chunks(64).all(|c| c.iter().fold(0u8, |a, &x| a | x) == 0)
}

/// Writes `buf` at `pos`, leaving 4 KiB pages of zeros as holes (the file
/// is extended to its full length afterwards), so sparse content stays sparse.
fn write_sparse(file: &File, pos: u64, buf: &[u8]) -> std::io::Result<()> {
    const PAGE: usize = 4096;
    let mut run: Option<usize> = None;
    let mut off = 0;
    while off < buf.len() {
        let end = (off + PAGE).min(buf.len());
        if is_zero(&buf[off..end]) {
            if let Some(s) = run.take() {
                file.write_all_at(&buf[s..off], pos + s as u64)?;
            }
        } else if run.is_none() {
            run = Some(off);
        }
        off = end;
    }
    if let Some(s) = run {
        file.write_all_at(&buf[s..], pos + s as u64)?;
    }
    Ok(())
}

/// Copies what it reads to a file (sparse) in 1 MiB steps, so hashing and
/// writing share one pass over the data; the writes run on a second thread
/// while the caller hashes.
struct Tee<R> {
    inner: R,
    tx: Option<std::sync::mpsc::SyncSender<(u64, std::sync::Arc<Vec<u8>>)>>,
    /// Buffers the writer is done with, for reuse.
    spare: std::sync::mpsc::Receiver<std::sync::Arc<Vec<u8>>>,
    writer: Option<std::thread::JoinHandle<std::io::Result<()>>>,
    buf: std::sync::Arc<Vec<u8>>,
    used: usize,
    written: u64,
}

impl<R: Read> Tee<R> {
    fn new(inner: R, file: File) -> Self {
        let (tx, rx) = std::sync::mpsc::sync_channel::<(u64, std::sync::Arc<Vec<u8>>)>(4);
        let (spare_tx, spare) = std::sync::mpsc::channel();
        let writer = std::thread::spawn(move || {
            for (pos, buf) in rx {
                write_sparse(&file, pos, &buf)?;
                let _ = spare_tx.send(buf);
            }
            Ok(())
        });
        Self {
            inner,
            tx: Some(tx),
            spare,
            writer: Some(writer),
            buf: std::sync::Arc::new(Vec::new()),
            used: 0,
            written: 0,
        }
    }

    /// Whether the source still has bytes after the ones consumed.
    fn has_more(&mut self) -> std::io::Result<bool> {
        if self.used < self.buf.len() {
            return Ok(true);
        }
        let mut one = [0u8; 1];
        Ok(self.inner.read(&mut one)? > 0)
    }

    /// Waits for every write; the first write error, if any.
    fn finish(&mut self) -> std::io::Result<()> {
        self.tx = None;
        match self.writer.take().map(std::thread::JoinHandle::join) {
            Some(Ok(r)) => r,
            Some(Err(_)) => Err(std::io::Error::other("blob writer thread panicked")),
            None => Ok(()),
        }
    }
}

impl<R> Drop for Tee<R> {
    fn drop(&mut self) {
        self.tx = None;
        if let Some(w) = self.writer.take() {
            let _ = w.join();
        }
    }
}

impl<R: Read> Read for Tee<R> {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        if self.used == self.buf.len() {
            let mut next = self
                .spare
                .try_iter()
                .find_map(|b| std::sync::Arc::try_unwrap(b).ok())
                .unwrap_or_default();
            next.resize(1 << 20, 0);
            let mut n = 0;
            while n < next.len() {
                let k = self.inner.read(&mut next[n..])?;
                if k == 0 {
                    break;
                }
                n += k;
            }
            next.truncate(n);
            self.buf = std::sync::Arc::new(next);
            self.used = 0;
            if n > 0 {
                let sent = self
                    .tx
                    .as_ref()
                    .is_some_and(|tx| tx.send((self.written, self.buf.clone())).is_ok());
                if !sent {
                    // The writer stopped: report its error.
                    return Err(self
                        .finish()
                        .err()
                        .unwrap_or_else(|| std::io::Error::other("blob writer stopped")));
                }
            }
            self.written += n as u64;
        }
        let k = out.len().min(self.buf.len() - self.used);
        out[..k].copy_from_slice(&self.buf[self.used..self.used + k]);
        self.used += k;
        Ok(k)
    }
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
    chunk_index: Keyspace,
    origins: Keyspace,
    quota: u64,
    fsync: bool,
}

impl std::fmt::Debug for BlobStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobStore")
            .field("dir", &self.dir)
            .field("quota", &self.quota)
            .finish_non_exhaustive()
    }
}

fn now() -> i64 {
    hearthnet_sdk::wkt::Timestamp::now().seconds
}

const PARTIAL_MAGIC: &[u8; 4] = b"HNP1";

/// A download or upload in progress: verified chunks are kept on disk
/// (`partial/<hex>`, its outboard and a state file with one byte per chunk)
/// so that an interrupted transfer resumes where it stopped, across
/// restarts.
#[derive(Debug)]
pub struct Partial {
    hash: blake3::Hash,
    size: u64,
    owner: String,
    data: File,
    outboard: PostOrderOutboard<File>,
    state: File,
    header: u64,
    have: Vec<bool>,
    plain: bool,
    paths: [PathBuf; 3],
}

/// Verifies and writes chunks of one [`Partial`] on its own file handles.
/// Writers of one partial write disjoint chunk ranges; the parent hashes they
/// share are verified values, identical whoever writes them.
#[derive(Debug)]
pub struct ChunkWriter {
    hash: blake3::Hash,
    size: u64,
    data: File,
    outboard: PostOrderOutboard<File>,
}

impl ChunkWriter {
    /// Checks chunk `i`, encoded as a verified stream against the blob CID,
    /// group by group, writing each good group (see
    /// [`Partial::accept_verified`]).
    pub fn verify_and_write(&mut self, i: u32, encoded: &[u8]) -> Result<(), BlobError> {
        if self.size == 0 {
            return Ok(());
        }
        let (start, end) = chunk_range(self.size, i);
        if start >= end {
            return Err(BlobError::Range {
                start,
                end,
                size: self.size,
            });
        }
        let corrupt = |offset| BlobError::Corrupt {
            cid: cid_text(&self.hash),
            offset,
        };
        match decode_ranges(
            encoded,
            &chunks(start, end),
            &mut self.data,
            &mut self.outboard,
        ) {
            Ok(()) => Ok(()),
            Err(DecodeError::LeafHashMismatch(c)) => Err(corrupt(c.0 * 1024)),
            Err(DecodeError::Io(e)) if e.kind() != std::io::ErrorKind::UnexpectedEof => {
                Err(BlobError::Io(e))
            }
            Err(_) => Err(corrupt(start)),
        }
    }
}

impl Partial {
    /// The blob CID.
    pub fn cid(&self) -> String {
        cid_text(&self.hash)
    }

    /// The blob size.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Who started it (a NodeID for uploads; empty for downloads).
    pub fn owner(&self) -> &str {
        &self.owner
    }

    /// Chunk indices not received yet, ascending.
    pub fn missing(&self) -> Vec<u32> {
        (0..self.have.len())
            .filter(|&i| !self.have[i])
            .map(|i| i as u32)
            .collect()
    }

    /// Whether every chunk is in.
    pub fn is_complete(&self) -> bool {
        self.have.iter().all(|h| *h)
    }

    fn mark(&mut self, i: u32) -> Result<(), BlobError> {
        self.have[i as usize] = true;
        self.state.write_all_at(&[1], self.header + u64::from(i))?;
        Ok(())
    }

    fn check_index(&self, i: u32) -> Result<(u64, u64), BlobError> {
        if i as usize >= self.have.len() {
            return Err(BlobError::Range {
                start: u64::from(i) * CHUNK_BYTES,
                end: u64::from(i + 1) * CHUNK_BYTES,
                size: self.size,
            });
        }
        Ok(chunk_range(self.size, i))
    }

    /// Accepts chunk `i` as a verified stream against the blob CID (FILE-024):
    /// each 16 KiB group is checked before it is written; on a bad group the
    /// groups before it stay written, the chunk stays missing, and the error
    /// names the first bad byte.
    pub fn accept_verified(&mut self, i: u32, encoded: &[u8]) -> Result<(), BlobError> {
        self.check_index(i)?;
        self.writer()?.verify_and_write(i, encoded)?;
        self.mark(i)
    }

    /// A writer that verifies and writes chunks on its own file handles, so
    /// several chunks can be checked at once; record each with
    /// [`Partial::mark_received`].
    pub fn writer(&self) -> Result<ChunkWriter, BlobError> {
        Ok(ChunkWriter {
            hash: self.hash,
            size: self.size,
            data: self.data.try_clone()?,
            outboard: PostOrderOutboard {
                root: self.hash,
                tree: self.outboard.tree,
                data: self.outboard.data.try_clone()?,
            },
        })
    }

    /// Records chunk `i` as verified and written by a [`ChunkWriter`].
    pub fn mark_received(&mut self, i: u32) -> Result<(), BlobError> {
        self.check_index(i)?;
        self.mark(i)
    }

    /// Accepts chunk `i` as plain data with its chunk CID (FILE-009): the
    /// data must hash to `chunk_cid`; the whole blob is checked against its
    /// CID when the store finishes it.
    pub fn accept_plain(&mut self, i: u32, chunk_cid: &str, data: &[u8]) -> Result<(), BlobError> {
        let (start, end) = self.check_index(i)?;
        if data.len() as u64 != end - start || cid_text(&blake3::hash(data)) != chunk_cid {
            return Err(BlobError::Corrupt {
                cid: chunk_cid.to_string(),
                offset: start,
            });
        }
        if !self.plain {
            self.plain = true;
            self.state.write_all_at(&[1], 4 + 8)?;
        }
        write_sparse(&self.data, start, data)?;
        self.mark(i)
    }
}

impl BlobStore {
    /// Opens the store in `dir` with a quota in bytes (0 = unlimited);
    /// removes leftovers of interrupted writes. Durability is the process's
    /// (see [`BlobStore::fsync`]).
    pub fn open(dir: &Path, quota: u64) -> Result<Self, BlobError> {
        fs::create_dir_all(dir.join("data"))?;
        fs::create_dir_all(dir.join("partial"))?;
        // The index's lock first: leftovers are only removed once no other
        // instance can be writing them.
        let db = crate::storage::open_database(&dir.join("index"))?;
        let tmp = dir.join("tmp");
        if tmp.exists() {
            fs::remove_dir_all(&tmp)?;
        }
        fs::create_dir_all(&tmp)?;
        let index = db.keyspace("blobs", KeyspaceCreateOptions::default)?;
        let chunk_index = db.keyspace("chunks", KeyspaceCreateOptions::default)?;
        let origins = db.keyspace("origins", KeyspaceCreateOptions::default)?;
        Ok(Self {
            dir: dir.to_path_buf(),
            db,
            index,
            chunk_index,
            origins,
            quota,
            fsync: false,
        })
    }

    /// With `on`, every stored blob, its outboard, its directory entry and
    /// its index entry are `fsync`ed before the store reports it stored
    /// (survives power loss). Without, a crash of the process loses
    /// nothing, a power cut may lose recent blobs; a torn one is caught by
    /// the verification of every read and never served.
    pub fn fsync(mut self, on: bool) -> Self {
        self.fsync = on;
        self
    }

    fn paths(&self, hash: &blake3::Hash) -> (PathBuf, PathBuf) {
        let hex = hash.to_hex();
        let shard = self.dir.join("data").join(&hex.as_str()[..2]);
        (
            shard.join(hex.as_str()),
            shard.join(format!("{}.obao4", hex.as_str())),
        )
    }

    fn tmp_paths(&self) -> (PathBuf, PathBuf) {
        let tmp = self.dir.join("tmp").join(ulid::Ulid::new().to_string());
        let ob = tmp.with_extension("obao4");
        (tmp, ob)
    }

    /// The store's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A kept partial transfer of `cid`, if there is one.
    pub fn existing_partial(&self, cid: &str) -> Result<Option<Partial>, BlobError> {
        let hash = parse_cid(cid)?;
        let state = self
            .dir
            .join("partial")
            .join(format!("{}.state", hash.to_hex().as_str()));
        let Ok(raw) = fs::read(&state) else {
            return Ok(None);
        };
        let parsed = (|| {
            (raw.get(..4)? == PARTIAL_MAGIC).then_some(())?;
            let size = u64::from_be_bytes(raw.get(4..12)?.try_into().ok()?);
            let olen = *raw.get(13)? as usize;
            let owner = String::from_utf8(raw.get(14..14 + olen)?.to_vec()).ok()?;
            Some((size, owner))
        })();
        match parsed {
            Some((size, owner)) => self.partial(cid, size, &owner).map(Some),
            None => Ok(None),
        }
    }

    /// Whether the blob is held completely.
    pub fn has(&self, cid: &str) -> bool {
        self.stat(cid).is_ok()
    }

    /// Stores bytes read from `reader` (size unknown: spooled to disk, then
    /// hashed); returns the CID. Storing a blob that is already held is a
    /// no-op.
    pub fn put(&self, mut reader: impl Read) -> Result<String, BlobError> {
        let (tmp, ob) = self.tmp_paths();
        let result = (|| {
            let file = File::create(&tmp)?;
            let mut tee = Tee::new(&mut reader, file.try_clone()?);
            std::io::copy(&mut tee, &mut std::io::sink())?;
            tee.finish()?;
            let size = tee.written;
            file.set_len(size)?;
            let tree = BaoTree::new(size, block());
            let mut w = std::io::BufWriter::with_capacity(1 << 16, File::create(&ob)?);
            let root = bao_tree::io::sync::outboard_post_order(File::open(&tmp)?, tree, &mut w)?;
            w.flush()?;
            self.commit(&tmp, &ob, root, size, "local")
        })();
        let _ = fs::remove_file(&tmp);
        let _ = fs::remove_file(&ob);
        result
    }

    /// Stores exactly `size` bytes read from `reader` in one pass (hashing,
    /// outboard and the sparse write share each read); returns the CID.
    pub fn put_sized(&self, reader: impl Read, size: u64) -> Result<String, BlobError> {
        let (tmp, ob) = self.tmp_paths();
        let result = (|| {
            let file = File::create(&tmp)?;
            let mut tee = Tee::new(reader, file.try_clone()?);
            let tree = BaoTree::new(size, block());
            let mut w = std::io::BufWriter::with_capacity(1 << 16, File::create(&ob)?);
            let root = bao_tree::io::sync::outboard_post_order(&mut tee, tree, &mut w)?;
            w.flush()?;
            tee.finish()?;
            if tee.has_more()? {
                return Err(BlobError::Io(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("more than the declared {size} bytes"),
                )));
            }
            file.set_len(size)?;
            self.commit(&tmp, &ob, root, size, "local")
        })();
        let _ = fs::remove_file(&tmp);
        let _ = fs::remove_file(&ob);
        result
    }

    /// Stores a local file in one pass.
    pub fn put_file(&self, path: &Path) -> Result<String, BlobError> {
        let file = File::open(path)?;
        let size = file.metadata()?.len();
        self.put_sized(file, size)
    }

    /// Moves a verified data file and its outboard into place and indexes
    /// the blob with where it came from (a no-op when it is already held).
    fn commit(
        &self,
        data: &Path,
        ob: &Path,
        hash: blake3::Hash,
        size: u64,
        origin: &str,
    ) -> Result<String, BlobError> {
        let key = *hash.as_bytes();
        if self.index.contains_key(key)? {
            return Ok(cid_text(&hash));
        }
        self.make_room(size)?;
        if self.fsync {
            File::open(data)?.sync_data()?;
            File::open(ob)?.sync_data()?;
        }
        let (path, obao) = self.paths(&hash);
        let shard = path.parent().map(Path::to_path_buf).unwrap_or_default();
        fs::create_dir_all(&shard)?;
        fs::rename(ob, &obao)?;
        fs::rename(data, &path)?;
        if self.fsync {
            File::open(&shard)?.sync_all()?;
        }
        let info = BlobInfo {
            size,
            pins: 0,
            stored_at: now(),
        };
        let mut batch = self.db.batch();
        if self.fsync {
            batch = batch.durability(Some(PersistMode::SyncData));
        }
        batch.insert(&self.index, key, info.encode());
        batch.insert(&self.origins, key, origin.as_bytes());
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

    /// Where a held blob came from: `local` (stored on this node), `put by
    /// <NodeID>`, `fetched`, or what [`BlobStore::set_origin`] recorded.
    pub fn origin(&self, cid: &str) -> Result<String, BlobError> {
        let hash = parse_cid(cid)?;
        self.stat(cid)?;
        Ok(self
            .origins
            .get(hash.as_bytes())?
            .map(|v| String::from_utf8_lossy(&v).into_owned())
            .unwrap_or_default())
    }

    /// Records where a held blob came from.
    pub fn set_origin(&self, cid: &str, origin: &str) -> Result<(), BlobError> {
        let hash = parse_cid(cid)?;
        self.stat(cid)?;
        self.origins.insert(hash.as_bytes(), origin.as_bytes())?;
        Ok(())
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

    fn open_blob(&self, cid: &str) -> Result<(BlobInfo, File, PostOrderOutboard<File>), BlobError> {
        let info = self.stat(cid)?;
        let hash = parse_cid(cid)?;
        let (path, obao) = self.paths(&hash);
        let ob = PostOrderOutboard {
            root: hash,
            tree: BaoTree::new(info.size, block()),
            data: File::open(obao)?,
        };
        Ok((info, File::open(path)?, ob))
    }

    /// Bytes `start..end` of a blob, encoded with their proofs; what is read
    /// from disk is re-verified on the way (a corrupted disk is reported,
    /// never served).
    pub fn read_range(&self, cid: &str, start: u64, end: u64) -> Result<Vec<u8>, BlobError> {
        let (info, data, ob) = self.open_blob(cid)?;
        if start > end || end > info.size {
            return Err(BlobError::Range {
                start,
                end,
                size: info.size,
            });
        }
        let mut out = Vec::with_capacity((end - start) as usize + 4096);
        encode_ranges_validated(&data, &ob, &chunks(start, end), &mut out)
            .map_err(|e| encode_error(e, cid, start))?;
        Ok(out)
    }

    /// Chunk `i` as a verified stream against the blob CID (FILE-024).
    pub fn read_chunk(&self, cid: &str, i: u32) -> Result<Vec<u8>, BlobError> {
        let info = self.stat(cid)?;
        if i >= chunk_count(info.size) {
            return Err(BlobError::Range {
                start: u64::from(i) * CHUNK_BYTES,
                end: u64::from(i + 1) * CHUNK_BYTES,
                size: info.size,
            });
        }
        let (start, end) = chunk_range(info.size, i);
        self.read_range(cid, start, end)
    }

    /// Plain bytes `start..end`, verified against the CID group by group.
    pub fn read_bytes(&self, cid: &str, start: u64, end: u64) -> Result<Vec<u8>, BlobError> {
        let info = self.stat(cid)?;
        let encoded = self.read_range(cid, start, end)?;
        let v = decode_range(cid, info.size, start, end, &encoded)?;
        if let Some(offset) = v.corrupt_at {
            return Err(BlobError::Corrupt {
                cid: cid.to_string(),
                offset,
            });
        }
        let mut out = Vec::with_capacity((end - start) as usize);
        for (off, piece) in v.pieces {
            let lo = start.saturating_sub(off).min(piece.len() as u64) as usize;
            let hi = (end.saturating_sub(off)).min(piece.len() as u64) as usize;
            if lo < hi {
                out.extend_from_slice(&piece[lo..hi]);
            }
        }
        Ok(out)
    }

    /// The whole content, verified.
    pub fn read(&self, cid: &str) -> Result<Vec<u8>, BlobError> {
        let info = self.stat(cid)?;
        self.read_bytes(cid, 0, info.size)
    }

    /// The chunk CIDs of a blob (FILE-008), computed on first use and kept
    /// next to the blob, with a chunk → blob index for chunk reads.
    pub fn chunk_cids(&self, cid: &str) -> Result<Vec<String>, BlobError> {
        let (info, data, _) = self.open_blob(cid)?;
        let hash = parse_cid(cid)?;
        let (path, _) = self.paths(&hash);
        let side = path.with_extension("cids");
        let n = chunk_count(info.size) as usize;
        if let Ok(raw) = fs::read(&side)
            && raw.len() == n * 32
        {
            return Ok(raw
                .chunks_exact(32)
                .map(|h| {
                    let mut a = [0u8; 32];
                    a.copy_from_slice(h);
                    cid_text(&blake3::Hash::from_bytes(a))
                })
                .collect());
        }
        let mut raw = Vec::with_capacity(n * 32);
        let mut buf = vec![0u8; CHUNK_BYTES as usize];
        let mut batch = self.db.batch();
        for i in 0..n as u32 {
            let (s, e) = chunk_range(info.size, i);
            let piece = &mut buf[..(e - s) as usize];
            data.read_exact_at(piece, s)?;
            let h = blake3::hash(piece);
            raw.extend_from_slice(h.as_bytes());
            if n > 1 {
                let mut v = hash.as_bytes().to_vec();
                v.extend_from_slice(&i.to_be_bytes());
                batch.insert(&self.chunk_index, h.as_bytes(), v);
            }
        }
        batch.commit()?;
        let tmp = side.with_extension("cids.tmp");
        fs::write(&tmp, &raw)?;
        fs::rename(&tmp, &side)?;
        Ok(raw
            .chunks_exact(32)
            .map(|h| {
                let mut a = [0u8; 32];
                a.copy_from_slice(h);
                cid_text(&blake3::Hash::from_bytes(a))
            })
            .collect())
    }

    /// The blob and index holding a chunk CID (FILE-001), computing chunk
    /// CIDs of blobs that have none yet.
    pub fn find_chunk(&self, chunk_cid: &str) -> Result<Option<(String, u32)>, BlobError> {
        let h = parse_cid(chunk_cid)?;
        let lookup = || -> Result<Option<(String, u32)>, BlobError> {
            Ok(self.chunk_index.get(h.as_bytes())?.and_then(|v| {
                let blob: [u8; 32] = v.get(..32)?.try_into().ok()?;
                let i = u32::from_be_bytes(v.get(32..36)?.try_into().ok()?);
                Some((cid_text(&blake3::Hash::from_bytes(blob)), i))
            }))
        };
        if let Some(found) = lookup()? {
            return Ok(Some(found));
        }
        for (cid, info) in self.list()? {
            if chunk_count(info.size) > 1 {
                let hash = parse_cid(&cid)?;
                if !self.paths(&hash).0.with_extension("cids").exists() {
                    self.chunk_cids(&cid)?;
                }
            }
        }
        lookup()
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
    pub fn delete(&self, cid: &str) -> Result<u64, BlobError> {
        let hash = parse_cid(cid)?;
        let info = self.stat(cid)?;
        self.index.remove(hash.as_bytes())?;
        self.origins.remove(hash.as_bytes())?;
        let (path, obao) = self.paths(&hash);
        let side = path.with_extension("cids");
        if let Ok(raw) = fs::read(&side) {
            for h in raw.chunks_exact(32) {
                self.chunk_index.remove(h)?;
            }
        }
        let _ = fs::remove_file(side);
        let _ = fs::remove_file(path);
        let _ = fs::remove_file(obao);
        Ok(info.size)
    }

    /// Bytes held.
    pub fn used(&self) -> Result<u64, BlobError> {
        Ok(self.list()?.iter().map(|(_, i)| i.size).sum())
    }

    /// Starts or resumes a transfer of blob `cid` of `size` bytes, started
    /// by `owner`. A kept partial of another size is started afresh.
    pub fn partial(&self, cid: &str, size: u64, owner: &str) -> Result<Partial, BlobError> {
        let hash = parse_cid(cid)?;
        let hex = hash.to_hex();
        let dir = self.dir.join("partial");
        let paths = [
            dir.join(hex.as_str()),
            dir.join(format!("{}.obao4", hex.as_str())),
            dir.join(format!("{}.state", hex.as_str())),
        ];
        let n = chunk_count(size) as usize;
        let owner_bytes = owner.as_bytes();
        let header = (4 + 8 + 1 + 1 + owner_bytes.len().min(255)) as u64;
        let tree = BaoTree::new(size, block());
        let existing = fs::read(&paths[2]).ok().and_then(|raw| {
            (raw.get(..4)? == PARTIAL_MAGIC
                && u64::from_be_bytes(raw.get(4..12)?.try_into().ok()?) == size)
                .then_some(())?;
            let plain = *raw.get(12)? == 1;
            let olen = *raw.get(13)? as usize;
            let old_owner = String::from_utf8(raw.get(14..14 + olen)?.to_vec()).ok()?;
            let have = raw
                .get(14 + olen..14 + olen + n)?
                .iter()
                .map(|b| *b == 1)
                .collect();
            Some((plain, old_owner, have, (14 + olen) as u64))
        });
        let open = |p: &Path| {
            fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(p)
        };
        let (plain, owner, have, header) = match existing {
            Some(found) => found,
            None => {
                for p in &paths {
                    let _ = fs::remove_file(p);
                }
                let mut state = PARTIAL_MAGIC.to_vec();
                state.extend_from_slice(&size.to_be_bytes());
                state.push(0);
                state.push(owner_bytes.len().min(255) as u8);
                state.extend_from_slice(&owner_bytes[..owner_bytes.len().min(255)]);
                state.extend(std::iter::repeat_n(0u8, n));
                fs::write(&paths[2], state)?;
                let data = open(&paths[0])?;
                data.set_len(size)?;
                let ob = open(&paths[1])?;
                ob.set_len(tree.outboard_size())?;
                (false, owner.to_string(), vec![false; n], header)
            }
        };
        Ok(Partial {
            hash,
            size,
            owner,
            data: open(&paths[0])?,
            outboard: PostOrderOutboard {
                root: hash,
                tree,
                data: open(&paths[1])?,
            },
            state: open(&paths[2])?,
            header,
            have,
            plain,
            paths,
        })
    }

    /// Finishes a complete transfer: a plain one is hashed whole against the
    /// CID (FILE-009), a verified one already is; then the blob is stored.
    /// A blob that does not match is discarded.
    pub fn finish(&self, partial: Partial) -> Result<String, BlobError> {
        if !partial.is_complete() {
            return Err(BlobError::Io(std::io::Error::other(format!(
                "{} chunks still missing",
                partial.missing().len()
            ))));
        }
        let cid = partial.cid();
        let ok = if partial.size == 0 {
            partial.hash == blake3::hash(&[])
        } else if partial.plain {
            let mut w =
                std::io::BufWriter::with_capacity(1 << 16, File::create(&partial.paths[1])?);
            let root = bao_tree::io::sync::outboard_post_order(
                std::io::BufReader::with_capacity(1 << 20, File::open(&partial.paths[0])?),
                partial.outboard.tree,
                &mut w,
            )?;
            w.flush()?;
            root == partial.hash
        } else {
            true
        };
        if !ok {
            self.discard(partial);
            return Err(BlobError::Corrupt { cid, offset: 0 });
        }
        let [data, ob, state] = &partial.paths;
        let origin = if partial.owner.is_empty() {
            "fetched".to_string()
        } else {
            format!("put by {}", partial.owner)
        };
        let result = self.commit(data, ob, partial.hash, partial.size, &origin);
        for p in [data, ob, state] {
            let _ = fs::remove_file(p);
        }
        result
    }

    /// Drops a transfer and its files.
    pub fn discard(&self, partial: Partial) {
        for p in &partial.paths {
            let _ = fs::remove_file(p);
        }
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
    fn partial_transfers_verify_each_group_and_resume_after_reopen() {
        let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let a = BlobStore::open(a_dir.path(), 0).unwrap();
        let data = bytes(5 * CHUNK_BYTES as usize + 1000);
        let cid = a.put(data.as_slice()).unwrap();
        let size = data.len() as u64;
        assert_eq!(chunk_count(size), 6);
        let b = BlobStore::open(b_dir.path(), 0).unwrap();
        let mut p = b.partial(&cid, size, "").unwrap();
        p.accept_verified(0, &a.read_chunk(&cid, 0).unwrap())
            .unwrap();
        p.accept_verified(1, &a.read_chunk(&cid, 1).unwrap())
            .unwrap();
        drop(p);
        // Reopened (as after a restart): only the missing chunks are asked for.
        let mut p = b.partial(&cid, size, "").unwrap();
        assert_eq!(p.missing(), vec![2, 3, 4, 5]);
        // A corrupted group is refused at its offset; the chunk stays missing.
        let mut bad = a.read_chunk(&cid, 3).unwrap();
        let at = bad.len() / 2;
        bad[at] ^= 0xff;
        match p.accept_verified(3, &bad) {
            Err(BlobError::Corrupt { offset, .. }) => {
                assert!((3 * CHUNK_BYTES..4 * CHUNK_BYTES).contains(&offset));
                assert_eq!(offset % GROUP_BYTES, 0);
            }
            other => panic!("expected corruption, got {other:?}"),
        }
        // A chunk proven for another index does not verify either.
        assert!(
            p.accept_verified(2, &a.read_chunk(&cid, 4).unwrap())
                .is_err()
        );
        assert_eq!(p.missing(), vec![2, 3, 4, 5]);
        for i in 2..6 {
            p.accept_verified(i, &a.read_chunk(&cid, i).unwrap())
                .unwrap();
        }
        assert_eq!(b.finish(p).unwrap(), cid);
        assert_eq!(b.read(&cid).unwrap(), data);
        assert_eq!(a.origin(&cid).unwrap(), "local");
        assert_eq!(b.origin(&cid).unwrap(), "fetched");
        // Chunk CIDs (FILE-008) and chunk lookups (FILE-001).
        let cids = b.chunk_cids(&cid).unwrap();
        assert_eq!(cids.len(), 6);
        assert_eq!(
            cids[5],
            cid_text(&blake3::hash(&data[5 * CHUNK_BYTES as usize..]))
        );
        assert_eq!(b.find_chunk(&cids[2]).unwrap(), Some((cid.clone(), 2)));
        assert_eq!(
            b.find_chunk(&cid_text(&blake3::hash(b"nope"))).unwrap(),
            None
        );
        assert_eq!(
            b.read_bytes(&cid, 300_000, 300_010).unwrap(),
            data[300_000..300_010]
        );
    }

    #[test]
    fn plain_chunks_are_checked_against_the_whole_blob() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path(), 0).unwrap();
        let data = bytes(CHUNK_BYTES as usize + 7);
        let cid = cid_text(&blake3::hash(&data));
        let mut p = store.partial(&cid, data.len() as u64, "caller").unwrap();
        let c0 = &data[..CHUNK_BYTES as usize];
        assert!(
            p.accept_plain(0, &cid_text(&blake3::hash(b"x")), c0)
                .is_err()
        );
        p.accept_plain(0, &cid_text(&blake3::hash(c0)), c0).unwrap();
        p.accept_plain(
            1,
            &cid_text(&blake3::hash(&data[CHUNK_BYTES as usize..])),
            &data[CHUNK_BYTES as usize..],
        )
        .unwrap();
        assert_eq!(store.finish(p).unwrap(), cid);
        assert_eq!(store.origin(&cid).unwrap(), "put by caller");
        // Chunks that each match their own CID but not the blob CID.
        let other = bytes(CHUNK_BYTES as usize + 8);
        let mut p = store
            .partial(&cid_text(&blake3::hash(b"claimed")), other.len() as u64, "")
            .unwrap();
        for (i, c) in other.chunks(CHUNK_BYTES as usize).enumerate() {
            p.accept_plain(i as u32, &cid_text(&blake3::hash(c)), c)
                .unwrap();
        }
        assert!(matches!(store.finish(p), Err(BlobError::Corrupt { .. })));
        assert!(!store.has(&cid_text(&blake3::hash(b"claimed"))));
    }

    /// Zeros with a marker at the very end, produced on the fly.
    struct Sparse {
        size: u64,
        pos: u64,
    }

    impl Read for Sparse {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = (buf.len() as u64).min(self.size - self.pos) as usize;
            buf[..n].fill(0);
            if self.pos + n as u64 + 16 > self.size {
                for (k, b) in buf[..n].iter_mut().enumerate() {
                    let at = self.pos + k as u64;
                    if at + 16 >= self.size {
                        *b = (at % 251) as u8 + 1;
                    }
                }
            }
            self.pos += n as u64;
            Ok(n)
        }
    }

    #[test]
    fn multi_gib_sparse_blobs_stay_sparse_and_verify() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path(), 0).unwrap();
        let size = 2u64 << 30;
        let mut hasher = blake3::Hasher::new();
        std::io::copy(&mut Sparse { size, pos: 0 }, &mut hasher).unwrap();
        let cid = store.put_sized(Sparse { size, pos: 0 }, size).unwrap();
        assert_eq!(cid, cid_text(&hasher.finalize()));
        assert_eq!(store.stat(&cid).unwrap().size, size);
        let (path, _) = store.paths(&parse_cid(&cid).unwrap());
        let meta = fs::metadata(path).unwrap();
        assert_eq!(meta.len(), size);
        assert!(
            meta.blocks() * 512 < 1 << 20,
            "stored sparse: {} blocks",
            meta.blocks()
        );
        let tail = store.read_bytes(&cid, size - 16, size).unwrap();
        assert!(tail.iter().all(|b| *b != 0));
        let last = chunk_count(size) - 1;
        let enc = store.read_chunk(&cid, last).unwrap();
        let other = tempfile::tempdir().unwrap();
        let b = BlobStore::open(other.path(), 0).unwrap();
        let mut p = b.partial(&cid, size, "").unwrap();
        p.accept_verified(last, &enc).unwrap();
        assert_eq!(p.missing().len() as u32, last);
        // Declared size must match what the reader gives.
        assert!(store.put_sized(&b"abc"[..], 2).is_err());
        assert!(store.put_sized(&b"abc"[..], 4).is_err());
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
