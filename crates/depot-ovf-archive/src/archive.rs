//! The host-local OVF archive: one SQLite database file (docs/formats.md,
//! "OVF archive").
//!
//! Each accepted upload is a row of `uploads` (source domain and volume,
//! generation, time) and one row of `entities` per VM or template (id,
//! name, type, sha256, the OVF text), written in one transaction. The
//! schema version is SQLite's `user_version`, and `application_id` marks
//! the file as depot's: a file from a newer depot, someone else's
//! database, or a file that is not a database (or fails SQLite's
//! `quick_check`) is refused with an error naming it, and never written:
//! nothing is created over it.
//!
//! Size is bounded (the OVF text held, [`Limits::max_bytes`]) with a
//! retention rule: at most [`Limits::keep_generations`] uploads of each
//! source store; past the byte bound, the oldest uploads go first, but the
//! newest upload of each source store is always kept. A single upload
//! larger than the bound is refused (it would evict everything else).

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use rusqlite::{params, Connection, OpenFlags, OptionalExtension};
use uuid::Uuid;

use crate::{EntityKind, HeldCopy, Provider, ProviderError, Source, UploadRecord};

/// The schema this depot writes and reads.
pub const SCHEMA_VERSION: i64 = 1;
/// `PRAGMA application_id` of depot's OVF archive ("DPOA").
pub const APPLICATION_ID: i64 = 0x4450_4f41;
/// How long a write waits for a lock held by another process before the
/// archive counts as unavailable (and the record stays queued).
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(2);

/// The size bound and retention rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The most OVF text (bytes) held.
    pub max_bytes: u64,
    /// The most uploads kept of each source store.
    pub keep_generations: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_bytes: 1 << 30,
            keep_generations: 20,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("OVF archive {}: its directory does not exist", .path.display())]
    NoDirectory { path: PathBuf },
    #[error(
        "OVF archive {}: schema version {found} is newer than this depot's ({supported}); \
         it was written by a newer depot and is left as it is",
        .path.display()
    )]
    Newer {
        path: PathBuf,
        found: i64,
        supported: i64,
    },
    #[error("OVF archive {}: not a depot OVF archive or damaged ({reason}); it is left as it is", .path.display())]
    Corrupt { path: PathBuf, reason: String },
    #[error("OVF archive {}: locked by another process for more than {:?}", .path.display(), BUSY_TIMEOUT)]
    Busy { path: PathBuf },
    #[error("OVF archive {} is read-only (attached with --fresh)", .path.display())]
    ReadOnly { path: PathBuf },
    #[error("OVF archive {}: an upload of {size} bytes of OVF is larger than the archive's bound of {max} bytes", .path.display())]
    TooLarge { path: PathBuf, size: u64, max: u64 },
    #[error("OVF archive {}: {op}: {source}", .path.display())]
    Sqlite {
        path: PathBuf,
        op: &'static str,
        #[source]
        source: rusqlite::Error,
    },
}

impl ArchiveError {
    /// Whether retrying later may succeed. A corrupt archive or one from
    /// a newer depot may be fixed or moved away by the admin: records stay
    /// queued for it. Only a record the archive can never take is not.
    pub fn is_transient(&self) -> bool {
        !matches!(
            self,
            ArchiveError::TooLarge { .. } | ArchiveError::ReadOnly { .. }
        )
    }
}

/// How an archive is opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Read and write; created when missing.
    ReadWrite,
    /// Read only (an archive kept for restores); never created.
    ReadOnly,
}

/// An open archive.
pub struct Archive {
    path: PathBuf,
    conn: Connection,
    limits: Limits,
    mode: Mode,
}

const SQLITE_MAGIC: &[u8; 16] = b"SQLite format 3\0";

const SCHEMA: &str = "
CREATE TABLE uploads (
    id INTEGER PRIMARY KEY,
    source_sd TEXT NOT NULL,
    source_img TEXT NOT NULL,
    source_vol TEXT NOT NULL,
    generation INTEGER NOT NULL,
    recorded_at INTEGER NOT NULL,
    UNIQUE (source_sd, source_vol, generation)
);
CREATE TABLE entities (
    upload_id INTEGER NOT NULL REFERENCES uploads(id) ON DELETE CASCADE,
    entity_id TEXT NOT NULL,
    name TEXT NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('VM', 'TEMPLATE')),
    sha256 TEXT NOT NULL,
    ovf TEXT NOT NULL,
    PRIMARY KEY (upload_id, entity_id)
);
CREATE INDEX entities_by_id ON entities (entity_id);
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
";

impl Archive {
    /// Opens (ReadWrite: creates when missing) the archive at `path`.
    pub fn open(path: &Path, limits: Limits, mode: Mode) -> Result<Archive, ArchiveError> {
        let p = path.to_path_buf();
        let dir = path.parent().unwrap_or(Path::new("."));
        if !dir.is_dir() {
            return Err(ArchiveError::NoDirectory { path: p });
        }
        let exists = match std::fs::metadata(path) {
            Ok(m) => {
                check_header(path, m.len())?;
                m.len() > 0
            }
            Err(_) => false,
        };
        if !exists && mode == Mode::ReadOnly {
            return Err(ArchiveError::Corrupt {
                path: p,
                reason: "no such file".into(),
            });
        }
        let flags = match mode {
            Mode::ReadOnly => OpenFlags::SQLITE_OPEN_READ_ONLY,
            Mode::ReadWrite if exists => OpenFlags::SQLITE_OPEN_READ_WRITE,
            Mode::ReadWrite => OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE,
        } | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let sql = |op: &'static str| {
            let p = p.clone();
            move |source| ArchiveError::Sqlite {
                path: p,
                op,
                source,
            }
        };
        let conn = Connection::open_with_flags(path, flags).map_err(sql("open"))?;
        conn.busy_timeout(BUSY_TIMEOUT)
            .map_err(sql("busy_timeout"))?;
        let archive = Archive {
            path: p.clone(),
            conn,
            limits,
            mode,
        };
        if exists {
            archive.check_existing()?;
        } else {
            archive.create()?;
        }
        archive
            .conn
            .execute_batch("PRAGMA foreign_keys = ON; PRAGMA synchronous = FULL;")
            .map_err(|e| archive.classify("pragmas", e))?;
        Ok(archive)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn classify(&self, op: &'static str, e: rusqlite::Error) -> ArchiveError {
        classify(&self.path, op, e)
    }

    fn check_existing(&self) -> Result<(), ArchiveError> {
        let (app, version): (i64, i64) = self
            .conn
            .query_row(
                "SELECT (SELECT application_id FROM pragma_application_id), \
                        (SELECT user_version FROM pragma_user_version)",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .map_err(|e| self.classify("read the schema version", e))?;
        if app != APPLICATION_ID {
            return Err(ArchiveError::Corrupt {
                path: self.path.clone(),
                reason: format!("application_id {app:#x}, not depot's {APPLICATION_ID:#x}"),
            });
        }
        if version > SCHEMA_VERSION {
            return Err(ArchiveError::Newer {
                path: self.path.clone(),
                found: version,
                supported: SCHEMA_VERSION,
            });
        }
        if version < 1 {
            return Err(ArchiveError::Corrupt {
                path: self.path.clone(),
                reason: format!("schema version {version}"),
            });
        }
        let check: String = self
            .conn
            .query_row("PRAGMA quick_check", [], |r| r.get(0))
            .map_err(|e| self.classify("quick_check", e))?;
        if check != "ok" {
            return Err(ArchiveError::Corrupt {
                path: self.path.clone(),
                reason: format!("quick_check: {check}"),
            });
        }
        Ok(())
    }

    fn create(&self) -> Result<(), ArchiveError> {
        // auto_vacuum must be set before the first table: pruned uploads
        // give their pages back to the file system.
        self.conn
            .execute_batch(&format!(
                "PRAGMA auto_vacuum = FULL; BEGIN IMMEDIATE; {SCHEMA} \
                 PRAGMA application_id = {APPLICATION_ID}; \
                 PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;"
            ))
            .map_err(|e| self.classify("create the schema", e))
    }

    /// Records `rec` in one transaction, then applies the retention rule
    /// in the same transaction. A record already held is left as it is.
    pub fn record(&mut self, rec: &UploadRecord) -> Result<(), ArchiveError> {
        if self.mode == Mode::ReadOnly {
            return Err(ArchiveError::ReadOnly {
                path: self.path.clone(),
            });
        }
        let size: u64 = rec.entities.iter().map(|e| e.ovf.len() as u64).sum();
        if size > self.limits.max_bytes {
            return Err(ArchiveError::TooLarge {
                path: self.path.clone(),
                size,
                max: self.limits.max_bytes,
            });
        }
        let path = self.path.clone();
        let limits = self.limits;
        let path = &path;
        let err = |op: &'static str| move |e| classify(path, op, e);
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(err("begin"))?;
        let src = rec.source;
        let inserted = tx
            .execute(
                "INSERT OR IGNORE INTO uploads \
                 (source_sd, source_img, source_vol, generation, recorded_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![
                    src.sd.to_string(),
                    src.img.to_string(),
                    src.vol.to_string(),
                    rec.generation as i64,
                    rec.time as i64
                ],
            )
            .map_err(err("insert the upload"))?;
        if inserted == 0 {
            // Recorded before (a retry after a crash between the commit
            // and the queue's removal).
            return Ok(());
        }
        let upload = tx.last_insert_rowid();
        {
            let mut ins = tx
                .prepare(
                    "INSERT OR REPLACE INTO entities \
                     (upload_id, entity_id, name, kind, sha256, ovf) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                )
                .map_err(err("prepare"))?;
            for e in &rec.entities {
                ins.execute(params![
                    upload,
                    e.id.to_string(),
                    e.name,
                    e.kind.as_str(),
                    e.sha256,
                    e.ovf
                ])
                .map_err(err("insert an entity"))?;
            }
        }
        retain(&tx, limits).map_err(err("apply the retention rule"))?;
        tx.commit().map_err(err("commit"))?;
        Ok(())
    }

    /// The newest upload of each source store: its entities, no texts.
    pub fn list(&self) -> Result<Vec<HeldCopy>, ArchiveError> {
        self.query(
            "SELECT e.entity_id, e.name, e.kind, u.generation, e.sha256, \
                    u.source_sd, u.source_img, u.source_vol, u.recorded_at, NULL \
             FROM entities e JOIN uploads u ON e.upload_id = u.id \
             WHERE u.id = (SELECT u2.id FROM uploads u2 \
                           WHERE u2.source_sd = u.source_sd AND u2.source_vol = u.source_vol \
                           ORDER BY u2.generation DESC LIMIT 1) \
             ORDER BY e.name, e.entity_id",
            None,
        )
    }

    /// Every copy of every entity it holds (all the generations kept),
    /// newest first, without texts.
    pub fn list_all(&self) -> Result<Vec<HeldCopy>, ArchiveError> {
        self.query(
            "SELECT e.entity_id, e.name, e.kind, u.generation, e.sha256, \
                    u.source_sd, u.source_img, u.source_vol, u.recorded_at, NULL \
             FROM entities e JOIN uploads u ON e.upload_id = u.id \
             ORDER BY e.entity_id, u.generation DESC",
            None,
        )
    }

    /// Every copy of entity `id`, newest first, with texts.
    pub fn copies(&self, id: Uuid) -> Result<Vec<HeldCopy>, ArchiveError> {
        self.query(
            "SELECT e.entity_id, e.name, e.kind, u.generation, e.sha256, \
                    u.source_sd, u.source_img, u.source_vol, u.recorded_at, e.ovf \
             FROM entities e JOIN uploads u ON e.upload_id = u.id \
             WHERE e.entity_id = ?1 \
             ORDER BY u.generation DESC, u.recorded_at DESC",
            Some(id),
        )
    }

    /// The newest generation recorded of each source store.
    pub fn latest_generations(&self) -> Result<Vec<(Source, u64)>, ArchiveError> {
        let mut st = self
            .conn
            .prepare(
                "SELECT source_sd, source_img, source_vol, MAX(generation) FROM uploads \
                 GROUP BY source_sd, source_vol",
            )
            .map_err(|e| self.classify("prepare", e))?;
        let rows = st
            .query_map([], |r| {
                Ok((
                    Source {
                        sd: uuid_col(r, 0)?,
                        img: uuid_col(r, 1)?,
                        vol: uuid_col(r, 2)?,
                    },
                    r.get::<_, i64>(3)? as u64,
                ))
            })
            .map_err(|e| self.classify("query", e))?;
        rows.collect::<Result<_, _>>()
            .map_err(|e| self.classify("read a row", e))
    }

    /// The OVF text held (what [`Limits::max_bytes`] bounds).
    pub fn held_bytes(&self) -> Result<u64, ArchiveError> {
        self.conn
            .query_row(
                "SELECT COALESCE(SUM(LENGTH(ovf)), 0) FROM entities",
                [],
                |r| r.get::<_, i64>(0),
            )
            .map(|n| n as u64)
            .map_err(|e| self.classify("size", e))
    }

    fn query(&self, sql: &str, id: Option<Uuid>) -> Result<Vec<HeldCopy>, ArchiveError> {
        let mut st = self
            .conn
            .prepare(sql)
            .map_err(|e| self.classify("prepare", e))?;
        let map = |r: &rusqlite::Row<'_>| -> rusqlite::Result<HeldCopy> {
            let kind: String = r.get(2)?;
            Ok(HeldCopy {
                provider: "archive".into(),
                id: uuid_col(r, 0)?,
                name: r.get(1)?,
                kind: EntityKind::parse(&kind).unwrap_or(EntityKind::Vm),
                generation: Some(r.get::<_, i64>(3)? as u64),
                sha256: r.get(4)?,
                source: Source {
                    sd: uuid_col(r, 5)?,
                    img: uuid_col(r, 6)?,
                    vol: uuid_col(r, 7)?,
                },
                time: r.get::<_, i64>(8)? as u64,
                ovf: r.get(9)?,
                unusable: None,
            })
        };
        let rows = match id {
            Some(id) => st.query_map([id.to_string()], map),
            None => st.query_map([], map),
        }
        .map_err(|e| self.classify("query", e))?;
        rows.collect::<Result<_, _>>()
            .map_err(|e| self.classify("read a row", e))
    }
}

fn uuid_col(r: &rusqlite::Row<'_>, i: usize) -> rusqlite::Result<Uuid> {
    let s: String = r.get(i)?;
    s.parse().map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(i, rusqlite::types::Type::Text, Box::new(e))
    })
}

/// The retention rule, inside the recording transaction.
fn retain(tx: &rusqlite::Transaction<'_>, limits: Limits) -> rusqlite::Result<()> {
    // At most keep_generations uploads of each source store.
    tx.execute(
        "DELETE FROM uploads WHERE id IN ( \
            SELECT id FROM (SELECT id, ROW_NUMBER() OVER ( \
                PARTITION BY source_sd, source_vol ORDER BY generation DESC) AS n FROM uploads) \
            WHERE n > ?1)",
        [limits.keep_generations.max(1) as i64],
    )?;
    // Past the byte bound: the oldest first, never the newest of a store.
    loop {
        let held: i64 = tx.query_row(
            "SELECT COALESCE(SUM(LENGTH(ovf)), 0) FROM entities",
            [],
            |r| r.get(0),
        )?;
        if held as u64 <= limits.max_bytes {
            return Ok(());
        }
        let oldest: Option<i64> = tx
            .query_row(
                "SELECT u.id FROM uploads u WHERE EXISTS ( \
                    SELECT 1 FROM uploads n WHERE n.source_sd = u.source_sd \
                    AND n.source_vol = u.source_vol AND n.generation > u.generation) \
                 ORDER BY u.recorded_at, u.id LIMIT 1",
                [],
                |r| r.get(0),
            )
            .optional()?;
        match oldest {
            Some(id) => {
                tx.execute("DELETE FROM uploads WHERE id = ?1", [id])?;
            }
            // Only the newest of each store is left: kept, over the bound.
            None => return Ok(()),
        }
    }
}

fn classify(path: &Path, op: &'static str, e: rusqlite::Error) -> ArchiveError {
    use rusqlite::ErrorCode;
    match e.sqlite_error_code() {
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => ArchiveError::Busy {
            path: path.to_path_buf(),
        },
        Some(ErrorCode::NotADatabase | ErrorCode::DatabaseCorrupt) => ArchiveError::Corrupt {
            path: path.to_path_buf(),
            reason: e.to_string(),
        },
        _ => ArchiveError::Sqlite {
            path: path.to_path_buf(),
            op,
            source: e,
        },
    }
}

/// A file that exists must start as an SQLite database does; checked
/// before SQLite opens it, so that nothing is ever written over it.
fn check_header(path: &Path, len: u64) -> Result<(), ArchiveError> {
    use std::io::Read;
    if len == 0 {
        return Err(ArchiveError::Corrupt {
            path: path.to_path_buf(),
            reason: "empty file".into(),
        });
    }
    let mut head = [0u8; 16];
    let mut f = std::fs::File::open(path).map_err(|e| ArchiveError::Corrupt {
        path: path.to_path_buf(),
        reason: format!("cannot open: {e}"),
    })?;
    if f.read_exact(&mut head).is_err() || &head != SQLITE_MAGIC {
        return Err(ArchiveError::Corrupt {
            path: path.to_path_buf(),
            reason: "not an SQLite database".into(),
        });
    }
    Ok(())
}

/// The archive as a [`Provider`]: opened on first use and again after a
/// failure, so an archive that was unavailable (its directory missing,
/// locked by another process) is used as soon as it is back.
pub struct ArchiveProvider {
    name: String,
    path: Mutex<PathBuf>,
    limits: Limits,
    mode: Mode,
    open: Mutex<Option<Archive>>,
}

impl ArchiveProvider {
    pub fn new(path: PathBuf, limits: Limits, mode: Mode) -> ArchiveProvider {
        ArchiveProvider {
            name: "archive".into(),
            path: Mutex::new(path),
            limits,
            mode,
            open: Mutex::new(None),
        }
    }

    /// The same provider under another name (an archive attached read
    /// only next to the one written: "attached").
    pub fn named(mut self, name: &str) -> ArchiveProvider {
        self.name = name.to_string();
        self
    }

    pub fn path(&self) -> PathBuf {
        self.path.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// From now on, the archive at `path` (`depotctl backup attach
    /// --resume`): the next record goes there.
    pub fn retarget(&self, path: PathBuf) {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        *self.path.lock().unwrap_or_else(|p| p.into_inner()) = path;
        *open = None;
    }

    fn with<T>(
        &self,
        f: impl FnOnce(&mut Archive) -> Result<T, ArchiveError>,
    ) -> Result<T, ProviderError> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if open.is_none() {
            *open = Some(
                Archive::open(&self.path(), self.limits, self.mode)
                    .map_err(|e| to_provider(&self.name, e))?,
            );
        }
        let Some(archive) = open.as_mut() else {
            unreachable!("opened above")
        };
        let r = f(archive);
        if r.is_err() {
            // Opened again next time: the file may have been replaced.
            *open = None;
        }
        r.map_err(|e| to_provider(&self.name, e))
    }
}

fn to_provider(name: &str, e: ArchiveError) -> ProviderError {
    let reason = e.to_string();
    if e.is_transient() {
        ProviderError::Unavailable {
            provider: name.into(),
            reason,
        }
    } else {
        ProviderError::Refused {
            provider: name.into(),
            reason,
        }
    }
}

impl ArchiveProvider {
    /// Copies named after this provider (an attached archive's are
    /// "attached"'s, not "archive"'s).
    fn own(&self, mut copies: Vec<HeldCopy>) -> Vec<HeldCopy> {
        for c in &mut copies {
            c.provider.clone_from(&self.name);
        }
        copies
    }
}

impl Provider for ArchiveProvider {
    fn name(&self) -> &str {
        &self.name
    }

    fn records(&self) -> bool {
        self.mode == Mode::ReadWrite
    }

    fn record(&self, rec: &UploadRecord) -> Result<(), ProviderError> {
        self.with(|a| a.record(rec))
    }

    fn list(&self) -> Result<Vec<HeldCopy>, ProviderError> {
        self.with(|a| a.list_all()).map(|c| self.own(c))
    }

    fn copies(&self, id: Uuid) -> Result<Vec<HeldCopy>, ProviderError> {
        self.with(|a| a.copies(id)).map(|c| self.own(c))
    }
}
