//! The helper's wire format (docs/formats.md, "fsproc frames"): typed
//! requests and replies, and the frames that carry them over a pipe.
//!
//! A frame is `header_len: u32 BE`, `data_len: u32 BE`, a JSON header of
//! `header_len` bytes, then `data_len` raw bytes (the data of a write, or
//! what a read returned). Both lengths are checked against
//! [`MAX_HEADER_BYTES`] and [`MAX_DATA_BYTES`] before anything is
//! allocated for them, so a peer that lies about a length costs nothing.
//! Every header carries the request id; a reply answers the request with
//! the same id.

use std::io::{self, Read, Write};

use serde::{Deserialize, Serialize};

/// The version of this format. The client sends it in [`Request::Hello`];
/// the helper answers with its own and refuses another, and the client
/// refuses a helper that answers another (a depotd upgraded under running
/// helpers, or a stale binary).
///
/// 2: the `wipe` and `batch` operations, and an exclusive create that
/// sets its mode exactly (a helper of version 1 would refuse the new
/// operations as malformed frames and exit, and leave a new file's mode
/// to the umask).
///
/// 3: `stream_share` and `stream_write_shared` (a streamed write's data
/// in memory both processes map instead of on the pipe; a helper of
/// version 2 would refuse them as malformed frames and exit).
///
/// 4: `set_len` and `sync_dir` in a write's `open`, `sync_dir` in
/// `unlink` and `mkdir` (a step and its fsyncs in one round trip; a
/// helper of version 3 would ignore the first two, skipping a length and
/// an fsync without a word, hence the new version).
pub const PROTOCOL_VERSION: u32 = 4;

/// The largest JSON header: a directory listing of [`MAX_LIST_ENTRIES`]
/// names fits, with room to spare.
pub const MAX_HEADER_BYTES: u32 = 4 << 20;

/// The largest data part: one read or one chunk of a streamed write.
pub const MAX_DATA_BYTES: u32 = 32 << 20;

/// The most entries one listing returns; more are reported as truncated.
pub const MAX_LIST_ENTRIES: u32 = 20_000;

/// The most bytes one [`Request::Wipe`] covers: a step of a long wipe,
/// which must fit one call's deadline (64 MiB in 60 s is 1.1 MB/s).
pub const MAX_WIPE_BYTES: u64 = 64 << 20;

/// The unit a [`Request::Wipe`] with `only_nonzero` reads and skips when
/// it is all zeros.
pub const WIPE_UNIT: u64 = 1 << 20;

/// The most requests one [`Request::Batch`] carries (checked while its
/// header is parsed: a longer list is a malformed frame).
pub const MAX_BATCH_ITEMS: usize = 64;

/// The alignment of a [`Request::Wipe`]'s offset and length (the
/// smallest logical block size; the file system checks its own).
pub const WIPE_ALIGN: u64 = 512;

/// The largest read that [`Request::brief`] counts as brief (a volume's
/// metadata record is 512 bytes to 8 KiB; the domain's is smaller).
pub const BRIEF_READ_BYTES: u32 = 64 << 10;

/// The bytes before the header: its length and the data's.
const PREFIX_BYTES: usize = 8;

/// A request header. Paths are relative to the helper's root and made of
/// plain names (see [`crate::confine::Beneath`]); `""` names the root
/// itself where a directory makes sense (stat, statvfs, listdir, exists,
/// fsync_dir).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// The first request: the version, and the directory every path is
    /// beneath (absolute; trusted, so it may be reached through links).
    Hello {
        version: u32,
        root: String,
    },
    Ping,
    /// Metadata of a file or directory; a symlink is refused (never
    /// followed).
    Stat {
        path: String,
    },
    /// Metadata of the entry itself, a symlink included.
    Lstat {
        path: String,
    },
    Statvfs {
        path: String,
    },
    Exists {
        path: String,
    },
    /// Names and types; at most `max_entries` (capped at
    /// [`MAX_LIST_ENTRIES`]).
    Listdir {
        path: String,
        max_entries: u32,
    },
    /// Up to `len` bytes at `offset`; with `direct`, through `O_DIRECT`
    /// with an aligned buffer (offset and len aligned by the caller).
    Read {
        path: String,
        offset: u64,
        len: u32,
        direct: bool,
    },
    /// Writes the frame's data at `offset`.
    Write {
        path: String,
        offset: u64,
        open: OpenWrite,
        fsync: bool,
    },
    /// Replaces the file with the frame's data: a temporary file beside
    /// it, fsync, rename over it, fsync of the directory.
    WriteAtomic {
        path: String,
        mode: u32,
    },
    Rename {
        from: String,
        to: String,
    },
    Link {
        from: String,
        to: String,
    },
    /// With `sync_dir`, the directory it was in is fsynced after.
    Unlink {
        path: String,
        #[serde(default)]
        sync_dir: bool,
    },
    /// With `sync_dir`, the directory it is made in is fsynced after.
    Mkdir {
        path: String,
        mode: u32,
        #[serde(default)]
        sync_dir: bool,
    },
    Rmdir {
        path: String,
    },
    /// Removes a file, or a directory with everything beneath it (links
    /// are removed, never followed; another file system below is refused).
    Rmtree {
        path: String,
    },
    Truncate {
        path: String,
        len: u64,
    },
    Fallocate {
        path: String,
        offset: u64,
        len: u64,
    },
    /// Makes the range read as zeros: `punch` deallocates it (the size
    /// stays), otherwise it stays allocated (`FALLOC_FL_ZERO_RANGE`, or
    /// written zeros where the file system has neither).
    ZeroRange {
        path: String,
        offset: u64,
        len: u64,
        punch: bool,
    },
    Chmod {
        path: String,
        mode: u32,
    },
    Chown {
        path: String,
        uid: u32,
        gid: u32,
    },
    Fsync {
        path: String,
    },
    FsyncDir {
        path: String,
    },
    /// Overwrites `len` bytes at `offset` with zeros that the helper
    /// writes itself with `O_DIRECT` from a zeroed buffer of its own (no
    /// data on the pipe). The data is overwritten, never punched or
    /// marked unwritten (the old bytes must not stay on the disk).
    /// `offset` and `len` are multiples of [`WIPE_ALIGN`] (and of the
    /// file's block size), `len` at most [`MAX_WIPE_BYTES`]. With
    /// `only_nonzero`, each [`WIPE_UNIT`] is read first (`O_DIRECT`) and
    /// left alone if it is all zeros (a hole stays a hole). The reply is
    /// [`Reply::Written`] with the bytes written.
    Wipe {
        path: String,
        offset: u64,
        len: u64,
        only_nonzero: bool,
    },
    /// Whether the file opens and reads with `O_DIRECT`, and its block
    /// size.
    DirectProbe {
        path: String,
    },
    /// Opens a file for a streamed write; the reply is a handle.
    StreamOpen {
        path: String,
        open: OpenWrite,
    },
    /// Writes the frame's data at `offset` through the handle.
    StreamWrite {
        handle: u64,
        offset: u64,
    },
    /// Gives the handle a shared buffer: the client's sealed `memfd`
    /// whose descriptor in the client's process is `fd` (the helper opens
    /// `/proc/<its parent>/fd/<fd>`), `len` bytes of it mapped read-only
    /// (at most [`MAX_DATA_BYTES`]). Replaces the handle's earlier one.
    StreamShare {
        handle: u64,
        fd: i32,
        len: u64,
    },
    /// Writes `len` bytes of the handle's shared buffer, from `at`, to
    /// the file at `offset` (the frame carries no data). Refused (nothing
    /// written) unless `at + len` lies within the buffer.
    StreamWriteShared {
        handle: u64,
        offset: u64,
        at: u64,
        len: u32,
    },
    /// Closes the handle (after an fsync if asked), reporting the errors
    /// of both: GlusterFS reports an unaligned `O_DIRECT` write only here.
    StreamClose {
        handle: u64,
        fsync: bool,
    },
    /// Several reads in one round trip: each item is made in turn and
    /// answered in one [`Reply::Batch`], its reply or its error, the data
    /// of reads concatenated in the frame's data. Only requests that
    /// change nothing and carry no data are allowed (see
    /// [`Request::batchable`]); a batch with another, or whose reads could
    /// return more than [`MAX_DATA_BYTES`], is refused whole, before any
    /// item is made. At most [`MAX_BATCH_ITEMS`] items.
    Batch {
        #[serde(deserialize_with = "bounded_items")]
        items: Vec<Request>,
    },
}

/// The items of a [`Request::Batch`], refused past [`MAX_BATCH_ITEMS`]
/// while they are parsed (not after a longer list was built).
fn bounded_items<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<Request>, D::Error> {
    struct Items;
    impl<'de> serde::de::Visitor<'de> for Items {
        type Value = Vec<Request>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            write!(f, "a list of at most {MAX_BATCH_ITEMS} requests")
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(
            self,
            mut seq: A,
        ) -> Result<Self::Value, A::Error> {
            let mut items = Vec::new();
            while let Some(item) = seq.next_element()? {
                if items.len() == MAX_BATCH_ITEMS {
                    return Err(serde::de::Error::custom(format!(
                        "a batch of more than {MAX_BATCH_ITEMS} requests"
                    )));
                }
                items.push(item);
            }
            Ok(items)
        }
    }
    d.deserialize_seq(Items)
}

/// How a file is opened for writing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpenWrite {
    /// Create it if missing (with `mode`).
    pub create: bool,
    /// Cut it to length 0 first.
    pub truncate: bool,
    /// With `create`: fail with `EEXIST` if it exists (`O_EXCL`), so that
    /// a new file is never someone else's; the new file then has exactly
    /// `mode` (the umask does not apply). Absent in frames of older
    /// writers (false).
    #[serde(default)]
    pub exclusive: bool,
    pub mode: u32,
    /// `O_DIRECT`: offsets and lengths must be aligned to the block size.
    pub direct: bool,
    /// After the data is written (and before its fsync): the file's new
    /// length (`ftruncate`), e.g. a new sparse volume's capacity. Not for
    /// streams. Absent in frames of older writers (none).
    #[serde(default)]
    pub set_len: Option<u64>,
    /// Last, after the file's fsync: an fsync of the directory the file is
    /// in, so that a new name is durable too. Not for streams. Absent in
    /// frames of older writers (false).
    #[serde(default)]
    pub sync_dir: bool,
}

impl Default for OpenWrite {
    fn default() -> Self {
        OpenWrite {
            create: false,
            truncate: false,
            exclusive: false,
            mode: 0o660,
            direct: false,
            set_len: None,
            sync_dir: false,
        }
    }
}

impl Request {
    /// The operation's name, for errors and logs.
    pub fn op_name(&self) -> &'static str {
        match self {
            Request::Hello { .. } => "hello",
            Request::Ping => "ping",
            Request::Stat { .. } => "stat",
            Request::Lstat { .. } => "lstat",
            Request::Statvfs { .. } => "statvfs",
            Request::Exists { .. } => "exists",
            Request::Listdir { .. } => "listdir",
            Request::Read { .. } => "read",
            Request::Write { .. } => "write",
            Request::WriteAtomic { .. } => "write_atomic",
            Request::Rename { .. } => "rename",
            Request::Link { .. } => "link",
            Request::Unlink { .. } => "unlink",
            Request::Mkdir { .. } => "mkdir",
            Request::Rmdir { .. } => "rmdir",
            Request::Rmtree { .. } => "rmtree",
            Request::Truncate { .. } => "truncate",
            Request::Fallocate { .. } => "fallocate",
            Request::ZeroRange { .. } => "zero_range",
            Request::Chmod { .. } => "chmod",
            Request::Chown { .. } => "chown",
            Request::Fsync { .. } => "fsync",
            Request::FsyncDir { .. } => "fsync_dir",
            Request::Wipe { .. } => "wipe",
            Request::DirectProbe { .. } => "direct_probe",
            Request::StreamOpen { .. } => "stream_open",
            Request::StreamWrite { .. } => "stream_write",
            Request::StreamShare { .. } => "stream_share",
            Request::StreamWriteShared { .. } => "stream_write_shared",
            Request::StreamClose { .. } => "stream_close",
            Request::Batch { .. } => "batch",
        }
    }

    /// Whether the request may be an item of a [`Request::Batch`]: it
    /// changes nothing and carries no data (no write, stream, hello or
    /// batch).
    pub fn batchable(&self) -> bool {
        matches!(
            self,
            Request::Ping
                | Request::Stat { .. }
                | Request::Lstat { .. }
                | Request::Statvfs { .. }
                | Request::Exists { .. }
                | Request::Listdir { .. }
                | Request::Read { .. }
                | Request::DirectProbe { .. }
        )
    }

    /// Whether a healthy file system answers the request within
    /// microseconds: no fsync, no bulk data, no process start. The
    /// caller waits for such a reply by spinning briefly before it sleeps
    /// (client.rs, `REPLY_SPIN`).
    pub fn brief(&self) -> bool {
        match self {
            Request::Batch { items } => items.iter().all(Request::brief),
            Request::Write { fsync, open, .. } => !fsync && !open.sync_dir,
            Request::Unlink { sync_dir, .. } | Request::Mkdir { sync_dir, .. } => !sync_dir,
            Request::Read { len, .. } => *len <= BRIEF_READ_BYTES,
            Request::Hello { .. }
            | Request::Ping
            | Request::Stat { .. }
            | Request::Lstat { .. }
            | Request::Statvfs { .. }
            | Request::Exists { .. }
            | Request::Listdir { .. }
            | Request::DirectProbe { .. }
            | Request::Rename { .. }
            | Request::Link { .. }
            | Request::Rmdir { .. }
            | Request::Truncate { .. }
            | Request::Chmod { .. }
            | Request::Chown { .. } => true,
            Request::WriteAtomic { .. }
            | Request::Rmtree { .. }
            | Request::Fallocate { .. }
            | Request::ZeroRange { .. }
            | Request::Fsync { .. }
            | Request::FsyncDir { .. }
            | Request::Wipe { .. }
            | Request::StreamOpen { .. }
            | Request::StreamWrite { .. }
            | Request::StreamShare { .. }
            | Request::StreamWriteShared { .. }
            | Request::StreamClose { .. } => false,
        }
    }

    /// The most data the request's reply carries (a read's `len`).
    pub fn reply_data_max(&self) -> u64 {
        match self {
            Request::Read { len, .. } => u64::from(*len),
            Request::Batch { items } => items.iter().map(Request::reply_data_max).sum(),
            _ => 0,
        }
    }

    /// The (first) path the request is about, for errors; `""` if none.
    pub fn path(&self) -> &str {
        match self {
            Request::Hello { root, .. } => root,
            Request::Stat { path }
            | Request::Lstat { path }
            | Request::Statvfs { path }
            | Request::Exists { path }
            | Request::Listdir { path, .. }
            | Request::Read { path, .. }
            | Request::Write { path, .. }
            | Request::WriteAtomic { path, .. }
            | Request::Unlink { path, .. }
            | Request::Mkdir { path, .. }
            | Request::Rmdir { path }
            | Request::Rmtree { path }
            | Request::ZeroRange { path, .. }
            | Request::Wipe { path, .. }
            | Request::Truncate { path, .. }
            | Request::Fallocate { path, .. }
            | Request::Chmod { path, .. }
            | Request::Chown { path, .. }
            | Request::Fsync { path }
            | Request::FsyncDir { path }
            | Request::DirectProbe { path }
            | Request::StreamOpen { path, .. } => path,
            Request::Rename { from, .. } | Request::Link { from, .. } => from,
            // A batch that gets no answer is named after its first item
            // (getInfo's: the image directory).
            Request::Batch { items } => items.first().map_or("", Request::path),
            Request::Ping
            | Request::StreamWrite { .. }
            | Request::StreamShare { .. }
            | Request::StreamWriteShared { .. }
            | Request::StreamClose { .. } => "",
        }
    }
}

/// What a file is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FileKind {
    File,
    Dir,
    Symlink,
    BlockDevice,
    CharDevice,
    Fifo,
    Socket,
    Unknown,
}

/// `stat(2)` of one entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatInfo {
    pub kind: FileKind,
    pub size: u64,
    /// Permission bits (and setuid/setgid/sticky), without the type.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub nlink: u64,
    pub ino: u64,
    pub dev: u64,
    /// Seconds and nanoseconds since the epoch.
    pub mtime_s: i64,
    pub mtime_ns: i64,
    /// 512-byte blocks allocated (`st_blocks`): a volume's true size, and
    /// whether a file is sparse. Absent in frames of older helpers (0).
    #[serde(default)]
    pub blocks: u64,
    /// Change time, seconds since the epoch (`st_ctime`). Absent in frames
    /// of older helpers (0).
    #[serde(default)]
    pub ctime_s: i64,
}

/// `statvfs(3)` of the file system holding an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct VfsInfo {
    pub block_size: u64,
    pub total_bytes: u64,
    /// Space an unprivileged user can still use.
    pub free_bytes: u64,
    pub total_inodes: u64,
    pub free_inodes: u64,
    pub read_only: bool,
}

/// A helper's `statvfs` as the figures the storage reports. The helper
/// does not report the root reserve; nothing of a file domain reads it,
/// so `free_bytes_root` is the unprivileged free space.
impl From<VfsInfo> for crate::fsutil::FsStats {
    fn from(v: VfsInfo) -> Self {
        crate::fsutil::FsStats {
            block_size: v.block_size,
            total_bytes: v.total_bytes,
            free_bytes: v.free_bytes,
            free_bytes_root: v.free_bytes,
            total_inodes: v.total_inodes,
            free_inodes: v.free_inodes,
            read_only: v.read_only,
        }
    }
}

/// One directory entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirEntry {
    /// The name; a name that is not UTF-8 is shown lossily and marked.
    pub name: String,
    /// False when `name` is a lossy rendering (it cannot be used as a path).
    pub utf8: bool,
    pub kind: FileKind,
}

/// The answer of [`Request::DirectProbe`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirectProbe {
    /// Whether opening with `O_DIRECT` and reading worked.
    pub supported: bool,
    /// The logical block size found (0 when not supported).
    pub block_size: u32,
    /// How it was found: "statx", "trial_read" or "assumed" (an empty file).
    pub source: String,
}

/// A reply header.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "reply", rename_all = "snake_case", deny_unknown_fields)]
pub enum Reply {
    Hello {
        version: u32,
        pid: u32,
    },
    Pong,
    Stat {
        stat: StatInfo,
    },
    Statvfs {
        vfs: VfsInfo,
    },
    Exists {
        exists: bool,
    },
    Listing {
        entries: Vec<DirEntry>,
        truncated: bool,
    },
    /// The bytes are the frame's data.
    Data,
    Written {
        len: u64,
    },
    Handle {
        handle: u64,
    },
    Probe {
        probe: DirectProbe,
    },
    Done,
    /// The answers of a [`Request::Batch`], one per item in order.
    Batch {
        items: Vec<BatchReply>,
    },
}

/// One item's answer in a [`Reply::Batch`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchReply {
    pub result: Result<Reply, WireError>,
    /// How many bytes of the frame's data are this item's (a read's data;
    /// 0 for the others), after those of the items before it.
    pub data_len: u32,
}

/// A failed request, as the helper saw it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireError {
    /// The OS error number, when the OS reported one.
    pub errno: Option<i32>,
    /// Set when the request was refused by the confinement rule (a
    /// symlink, `..`, another file system): no OS call failed.
    pub refused: bool,
    /// Set when the request itself was malformed or not allowed now.
    pub invalid: bool,
    pub message: String,
}

/// The header of a request frame.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestHeader {
    pub id: u64,
    pub request: Request,
}

/// The header of a reply frame.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplyHeader {
    pub id: u64,
    pub result: Result<Reply, WireError>,
}

/// Why a frame could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("frame header of {len} bytes is over the limit of {MAX_HEADER_BYTES}")]
    HeaderTooLarge { len: u32 },
    #[error("frame data of {len} bytes is over the limit of {MAX_DATA_BYTES}")]
    DataTooLarge { len: u32 },
    #[error("frame header is not valid JSON for this version: {0}")]
    Json(#[from] serde_json::Error),
    #[error("frame I/O: {0}")]
    Io(#[from] io::Error),
    /// The stream ended at a frame boundary.
    #[error("end of stream")]
    Eof,
}

/// The lengths announced by a frame's prefix, checked against the caps.
pub fn parse_prefix(prefix: [u8; PREFIX_BYTES]) -> Result<(usize, usize), FrameError> {
    let header = u32::from_be_bytes(prefix[..4].try_into().expect("4 bytes"));
    let data = u32::from_be_bytes(prefix[4..].try_into().expect("4 bytes"));
    if header > MAX_HEADER_BYTES {
        return Err(FrameError::HeaderTooLarge { len: header });
    }
    if data > MAX_DATA_BYTES {
        return Err(FrameError::DataTooLarge { len: data });
    }
    Ok((header as usize, data as usize))
}

/// A whole frame as bytes: prefix, header, data.
pub fn encode<T: Serialize>(header: &T, data: &[u8]) -> Result<Vec<u8>, FrameError> {
    let mut frame = encode_head(header, data.len())?;
    frame.extend_from_slice(data);
    Ok(frame)
}

/// The prefix and header of a frame whose `data_len` bytes of data the
/// caller writes itself, after them (a 1 MiB write then goes from the
/// caller's buffer to the pipe without being copied into a frame first).
pub fn encode_head<T: Serialize>(header: &T, data_len: usize) -> Result<Vec<u8>, FrameError> {
    let json = serde_json::to_vec(header)?;
    let header_len = u32::try_from(json.len())
        .ok()
        .filter(|&n| n <= MAX_HEADER_BYTES)
        .ok_or(FrameError::HeaderTooLarge {
            len: u32::try_from(json.len()).unwrap_or(u32::MAX),
        })?;
    let data_len = u32::try_from(data_len)
        .ok()
        .filter(|&n| n <= MAX_DATA_BYTES)
        .ok_or(FrameError::DataTooLarge {
            len: u32::try_from(data_len).unwrap_or(u32::MAX),
        })?;
    let mut frame = Vec::with_capacity(PREFIX_BYTES + json.len() + data_len as usize);
    frame.extend_from_slice(&header_len.to_be_bytes());
    frame.extend_from_slice(&data_len.to_be_bytes());
    frame.extend_from_slice(&json);
    Ok(frame)
}

/// Writes one frame and flushes.
pub fn write_frame<T: Serialize>(
    out: &mut impl Write,
    header: &T,
    data: &[u8],
) -> Result<(), FrameError> {
    out.write_all(&encode(header, data)?)?;
    out.flush()?;
    Ok(())
}

/// Reads one frame (blocking): the decoded header and the data.
/// [`FrameError::Eof`] when the stream ends before a frame starts.
pub fn read_frame<T: for<'de> Deserialize<'de>>(
    input: &mut impl Read,
) -> Result<(T, Vec<u8>), FrameError> {
    let (header, data_len) = read_head(input)?;
    let mut data = vec![0u8; data_len];
    input.read_exact(&mut data)?;
    Ok((header, data))
}

/// Reads one frame (blocking) whose data goes into `data` (grown as
/// needed, kept between frames: the helper's loop reads every write's
/// data into one aligned buffer, which an `O_DIRECT` write then uses as
/// it is). Returns the header and the data's length.
pub fn read_frame_into<T: for<'de> Deserialize<'de>>(
    input: &mut impl Read,
    data: &mut DataBuf,
) -> Result<(T, usize), FrameError> {
    let (header, data_len) = read_head(input)?;
    input.read_exact(data.space(data_len)?)?;
    Ok((header, data_len))
}

/// A frame's prefix and header, checked against the caps before anything
/// is allocated; the decoded header and the length of the data that
/// follows. [`FrameError::Eof`] when the stream ends before a frame.
fn read_head<T: for<'de> Deserialize<'de>>(
    input: &mut impl Read,
) -> Result<(T, usize), FrameError> {
    let mut prefix = [0u8; PREFIX_BYTES];
    let mut got = 0;
    while got < PREFIX_BYTES {
        match input.read(&mut prefix[got..]) {
            Ok(0) if got == 0 => return Err(FrameError::Eof),
            Ok(0) => return Err(FrameError::Io(io::ErrorKind::UnexpectedEof.into())),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    let (header_len, data_len) = parse_prefix(prefix)?;
    let mut header = vec![0u8; header_len];
    input.read_exact(&mut header)?;
    Ok((serde_json::from_slice(&header)?, data_len))
}

/// A reusable buffer for frame data, aligned for `O_DIRECT`.
#[derive(Default)]
pub struct DataBuf {
    buf: Option<crate::direct::AlignedBuf>,
}

/// The alignment of [`DataBuf`]: enough for any logical block size.
pub const DATA_ALIGN: usize = 4096;

impl DataBuf {
    /// The first `len` bytes of the buffer, grown (to a multiple of
    /// [`DATA_ALIGN`]) if it is smaller. What was there is not cleared.
    pub fn space(&mut self, len: usize) -> io::Result<&mut [u8]> {
        let have = self.buf.as_ref().map_or(0, |b| b.len());
        if have < len {
            let size = len.div_ceil(DATA_ALIGN) * DATA_ALIGN;
            self.buf =
                Some(crate::direct::AlignedBuf::new(size, DATA_ALIGN).map_err(io::Error::other)?);
        }
        Ok(match self.buf.as_mut() {
            Some(b) => &mut b[..len],
            None => &mut [],
        })
    }

    /// The first `len` bytes (after [`space`](Self::space) made room).
    pub fn data(&self, len: usize) -> &[u8] {
        self.buf.as_ref().map_or(&[], |b| &b[..len])
    }
}

/// Decodes a header read by other means (the client's deadline reads).
pub fn decode<T: for<'de> Deserialize<'de>>(header: &[u8]) -> Result<T, FrameError> {
    Ok(serde_json::from_slice(header)?)
}

/// The prefix size, for readers that read it themselves.
pub const fn prefix_bytes() -> usize {
    PREFIX_BYTES
}

#[cfg(test)]
mod tests {
    use super::*;
    use depot_testkit::rng::Rng;

    /// A reader that fails the test if more than `limit` bytes are read
    /// from it: an oversized frame must be refused from its prefix alone.
    struct Limited<'a> {
        bytes: &'a [u8],
        limit: usize,
        read: usize,
    }

    impl Read for Limited<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = buf.len().min(self.bytes.len() - self.read);
            self.read += n;
            assert!(self.read <= self.limit, "read past the prefix");
            buf[..n].copy_from_slice(&self.bytes[self.read - n..self.read]);
            Ok(n)
        }
    }

    #[test]
    fn only_calls_without_fsync_or_bulk_data_are_brief() {
        let read = |len| Request::Read {
            path: "a".into(),
            offset: 0,
            len,
            direct: true,
        };
        let write = |fsync| Request::Write {
            path: "a".into(),
            offset: 0,
            open: OpenWrite::default(),
            fsync,
        };
        let stat = Request::Stat { path: "a".into() };
        assert!(read(512).brief() && stat.brief() && write(false).brief());
        assert!(!read(BRIEF_READ_BYTES + 1).brief());
        assert!(!write(true).brief());
        assert!(!Request::Fsync { path: "a".into() }.brief());
        assert!(!Request::WriteAtomic {
            path: "a".into(),
            mode: 0o660
        }
        .brief());
        let batch = |items| Request::Batch { items };
        assert!(batch(vec![stat.clone(), read(512)]).brief());
        assert!(!batch(vec![stat, read(1 << 20)]).brief());
    }

    #[test]
    fn a_request_round_trips_with_its_data() {
        let header = RequestHeader {
            id: 7,
            request: Request::Write {
                path: "dom/md/metadata".into(),
                offset: 4096,
                open: OpenWrite {
                    create: true,
                    ..OpenWrite::default()
                },
                fsync: true,
            },
        };
        let frame = encode(&header, b"abc").unwrap();
        let (back, data): (RequestHeader, _) = read_frame(&mut &frame[..]).unwrap();
        assert_eq!(back, header);
        assert_eq!(data, b"abc");
        let json = String::from_utf8_lossy(&frame[8..frame.len() - 3]).into_owned();
        assert!(json.contains(r#""request":{"op":"write""#), "{json}");
        assert!(json.contains(r#""id":7"#), "{json}");
    }

    #[test]
    fn oversized_lengths_are_refused_from_the_prefix_before_allocating() {
        // A header length of 4 GiB - 1: allocating it would abort the test.
        let mut frame = u32::MAX.to_be_bytes().to_vec();
        frame.extend_from_slice(&0u32.to_be_bytes());
        frame.extend_from_slice(&[b'x'; 64]);
        let mut r = Limited {
            bytes: &frame,
            limit: 8,
            read: 0,
        };
        let e = read_frame::<RequestHeader>(&mut r).unwrap_err();
        assert!(
            matches!(e, FrameError::HeaderTooLarge { len: u32::MAX }),
            "{e}"
        );

        let mut frame = 2u32.to_be_bytes().to_vec();
        frame.extend_from_slice(&(MAX_DATA_BYTES + 1).to_be_bytes());
        frame.extend_from_slice(b"{}");
        let mut r = Limited {
            bytes: &frame,
            limit: 8,
            read: 0,
        };
        let e = read_frame::<RequestHeader>(&mut r).unwrap_err();
        assert!(matches!(e, FrameError::DataTooLarge { .. }), "{e}");
        // At the limits exactly, the prefix is accepted.
        let mut at = MAX_HEADER_BYTES.to_be_bytes().to_vec();
        at.extend_from_slice(&MAX_DATA_BYTES.to_be_bytes());
        assert!(parse_prefix(at.try_into().unwrap()).is_ok());
    }

    #[test]
    fn too_much_data_is_not_encoded() {
        let big = vec![0u8; MAX_DATA_BYTES as usize + 1];
        let e = encode(
            &RequestHeader {
                id: 1,
                request: Request::Ping,
            },
            &big,
        )
        .unwrap_err();
        assert!(matches!(e, FrameError::DataTooLarge { .. }), "{e}");
    }

    #[test]
    fn eof_between_frames_and_inside_one_differ() {
        let e = read_frame::<RequestHeader>(&mut &[][..]).unwrap_err();
        assert!(matches!(e, FrameError::Eof), "{e}");
        let e = read_frame::<RequestHeader>(&mut &[0u8, 0, 0][..]).unwrap_err();
        assert!(matches!(e, FrameError::Io(_)), "{e}");
    }

    #[test]
    fn an_unknown_operation_or_field_is_refused() {
        let e = decode::<RequestHeader>(br#"{"id":1,"request":{"op":"format_disk"}}"#).unwrap_err();
        assert!(matches!(e, FrameError::Json(_)), "{e}");
        let e = decode::<RequestHeader>(
            br#"{"id":1,"request":{"op":"stat","path":"a","follow":true}}"#,
        )
        .unwrap_err();
        assert!(matches!(e, FrameError::Json(_)), "{e}");
    }

    /// A valid batch header, the seed the mutations start from.
    fn batch_header() -> Vec<u8> {
        let header = RequestHeader {
            id: 3,
            request: Request::Batch {
                items: vec![
                    Request::Listdir {
                        path: "img".into(),
                        max_entries: 100,
                    },
                    Request::Read {
                        path: "img/v.meta".into(),
                        offset: 0,
                        len: 65537,
                        direct: false,
                    },
                    Request::Lstat {
                        path: "img/v".into(),
                    },
                ],
            },
        };
        serde_json::to_vec(&header).unwrap()
    }

    /// What the helper does with a header: parse it, and if it parses,
    /// answer it on a scratch root. Must never panic; a batch that parses
    /// is within the cap, and one with an item that may not be in a batch
    /// is refused whole.
    fn serve_header(root: &std::path::Path, header: &[u8]) {
        let Ok(parsed) = decode::<RequestHeader>(header) else {
            return;
        };
        if let Request::Batch { items } = &parsed.request {
            assert!(
                items.len() <= MAX_BATCH_ITEMS,
                "{} items parsed",
                items.len()
            );
            let mut c = super::super::ops::Confined::new(root).unwrap();
            let outcome = super::super::server::dispatch(&mut c, &parsed.request, &[]);
            if items.iter().any(|i| !i.batchable()) {
                assert!(outcome.is_err(), "{parsed:?}");
            }
            if let Ok((Reply::Batch { items: replies }, data)) = outcome {
                assert_eq!(replies.len(), items.len());
                let total: usize = replies.iter().map(|r| r.data_len as usize).sum();
                assert_eq!(total, data.len());
            }
        }
    }

    #[test]
    fn mutated_batch_headers_are_refused_or_answered_cleanly() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join("img")).unwrap();
        std::fs::write(root.path().join("img/v.meta"), b"CAP=1\nEOF\n").unwrap();
        let seed = batch_header();
        serve_header(root.path(), &seed);
        let pieces: [&[u8]; 12] = [
            br#"{"op":"batch","items":[]}"#,
            br#"{"op":"mkdir","path":"x","mode":493}"#,
            br#"{"op":"write","path":"x","offset":0,"open":{"create":true,"truncate":false,"mode":420,"direct":false},"fsync":false}"#,
            br#"{"op":"hello","version":2,"root":"/"}"#,
            br#"{"op":"read","path":"img/v.meta","offset":0,"len":4294967295,"direct":false}"#,
            br#"{"op":"stat","path":"../etc"}"#,
            b"[", b"]", b"{", b"}", b",", b"\"items\":",
        ];
        let mut rng = Rng::new(0x5eed_f00d_1234_5678);
        let mut parsed = 0;
        for _ in 0..20_000 {
            let mut h = seed.clone();
            for _ in 0..=rng.below(4) {
                match rng.below(5) {
                    0 if !h.is_empty() => {
                        let at = rng.below(h.len());
                        h[at] = rng.next_u64() as u8;
                    }
                    1 => h.truncate(rng.below(h.len() + 1)),
                    2 => {
                        let at = rng.below(h.len() + 1);
                        let piece = pieces[rng.below(pieces.len())];
                        h.splice(at..at, piece.iter().copied());
                    }
                    3 if !h.is_empty() => {
                        // Repeat a slice (more items, deeper nesting).
                        let a = rng.below(h.len());
                        let b = (a + rng.below(64)).min(h.len());
                        let copy = h[a..b].to_vec();
                        h.splice(b..b, copy.iter().copied().cycle().take(copy.len() * 8));
                    }
                    _ => {
                        let at = rng.below(h.len() + 1);
                        h.insert(at, rng.next_u64() as u8);
                    }
                }
            }
            if decode::<RequestHeader>(&h).is_ok() {
                parsed += 1;
            }
            serve_header(root.path(), &h);
        }
        // The mutations reach past the parser sometimes, not only into it.
        assert!(parsed > 0, "no mutated header parsed");
        assert!(!root.path().join("x").exists(), "a batch made something");
    }

    #[test]
    fn a_batch_is_named_after_its_first_item() {
        let batch = Request::Batch {
            items: vec![
                Request::Listdir {
                    path: "sd/images/img".into(),
                    max_entries: 1,
                },
                Request::Ping,
            ],
        };
        assert_eq!((batch.op_name(), batch.path()), ("batch", "sd/images/img"));
        assert_eq!(Request::Batch { items: vec![] }.path(), "");
    }

    #[test]
    fn malformed_batch_headers_are_refused() {
        let items = |n: usize| vec![r#"{"op":"ping"}"#; n].join(",");
        let at_cap = format!(
            r#"{{"id":1,"request":{{"op":"batch","items":[{}]}}}}"#,
            items(MAX_BATCH_ITEMS)
        );
        assert!(decode::<RequestHeader>(at_cap.as_bytes()).is_ok());
        let nested = |depth: usize| {
            format!(
                r#"{{"id":1,"request":{}{}}}"#,
                r#"{"op":"batch","items":["#.repeat(depth),
                "]}".repeat(depth)
            )
        };
        for bad in [
            format!(
                r#"{{"id":1,"request":{{"op":"batch","items":[{}]}}}}"#,
                items(MAX_BATCH_ITEMS + 1)
            ),
            r#"{"id":1,"request":{"op":"batch","items":{"op":"ping"}}}"#.to_string(),
            r#"{"id":1,"request":{"op":"batch"}}"#.to_string(),
            r#"{"id":1,"request":{"op":"batch","items":[],"extra":1}}"#.to_string(),
            r#"{"id":1,"request":{"op":"batch","items":[{"op":"format_disk"}]}}"#.to_string(),
            r#"{"id":1,"request":{"op":"batch","items":[null]}}"#.to_string(),
            r#"{"id":1,"request":{"op":"batch","items":[1,2]}}"#.to_string(),
            // Deeper than the JSON parser's recursion limit: an error, not
            // a stack overflow.
            nested(10_000),
        ] {
            let e = decode::<RequestHeader>(bad.as_bytes()).unwrap_err();
            assert!(matches!(e, FrameError::Json(_)), "{e}");
        }
        // Nesting the parser accepts is refused by the helper, whole.
        let root = tempfile::tempdir().unwrap();
        let two = decode::<RequestHeader>(nested(2).as_bytes()).unwrap();
        let mut c = super::super::ops::Confined::new(root.path()).unwrap();
        let e = super::super::server::dispatch(&mut c, &two.request, &[]).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{e}");
        assert!(e.to_string().contains("batch cannot be in a batch"), "{e}");
        // A batch reply whose data lengths do not add up is the client's
        // to refuse (pool.rs); here: it parses as what it says.
        let reply: ReplyHeader = decode(
            br#"{"id":1,"result":{"Ok":{"reply":"batch","items":[{"result":{"Ok":{"reply":"data"}},"data_len":4294967295}]}}}"#,
        )
        .unwrap();
        assert!(matches!(reply.result, Ok(Reply::Batch { .. })));
    }
}
