//! SPM tasks on the pool's master domain (issue 16; docs/storage.md "SPM
//! tasks", docs/formats.md "SPM tasks on the master domain"): the
//! born-finished task of an SPM verb of a pool is written, besides the
//! host's state directory (crate::task_store), to the master domain's
//! `master/tasks/<id>.json`, the same record; a host that becomes the
//! pool's SPM loads the records it does not know ([`load`]) before it
//! reports SPM, so the engine finds the old SPM's tasks on the new one;
//! `Task.clear` on the SPM removes both copies.
//!
//! Every call on the master goes through its mount's helpers
//! (depot_storage's `MasterTasksDir`), bounded by the I/O timeout, on the
//! caller's blocking thread. Nothing here fails a verb: the verb's work is
//! done when its task is written, and a record the master did not get is
//! still the host's (logged), as VDSM logs a task it cannot persist.
//!
//! Only the SPM verbs' tasks (they have a pool): the OVF_STORE streams'
//! tasks belong to no pool (any host serves a stream, and the engine asks
//! the host it streamed through), and the host jobs' tasks (Image.move,
//! spmStart) are depot-jobs' jobs, run by the host that started them: a
//! move goes on running there after spmStop, and another host could not
//! answer its progress.
//!
//! On a block master the records are in the `master` LV's file system,
//! which the SPM mounts at spmStart before [`load`] runs and unmounts
//! when the role ends (depot_storage's `engine::block_master`); a host
//! that has not mounted it (not the SPM) has no directory to write to.

use depot_api::storage::SpUuid;
use depot_api::types::Uuid;
use depot_api::{ApiError, Code};
use depot_storage::engine::master_tasks::MasterTasksDir;
use depot_storage::Storage;

use crate::task_store::{State, TaskRecord, TaskStore};

/// The largest record file read from a master (a record is about 400
/// bytes; a larger file is not one of depot's and is moved aside).
pub const MAX_RECORD_BYTES: u32 = 64 * 1024;

/// The most records one spmStart looks at: the engine clears the tasks it
/// has seen, so a master holds a few; thousands are another tool's files
/// or a leak, and reading them one by one would hold spmStart up for
/// minutes on a slow server. The rest stay on the master and are logged.
pub const MAX_LOADED: usize = 1000;

const SUFFIX: &str = ".json";

/// The task directory of `sp`'s master, or why there is none (logged
/// here at debug for a block master not mounted here, a warning for a
/// failure).
fn dir_of(storage: &Storage, sp: SpUuid, what: &str) -> Option<MasterTasksDir> {
    match storage.master_tasks(sp) {
        Ok(Some(dir)) => Some(dir),
        Ok(None) => {
            tracing::debug!(pool = %sp, what,
                "block master not mounted here (not the SPM): the task is kept on this host only");
            None
        }
        Err(e) => {
            tracing::warn!(pool = %sp, what, error = %e, "cannot find the master domain's tasks");
            None
        }
    }
}

/// Writes `record` (an SPM verb's task of its pool) to the pool's master.
/// A failure is logged: the host's record stands.
pub fn write(storage: &Storage, record: &TaskRecord) {
    let Some(sp) = record.pool else { return };
    let Some(dir) = dir_of(storage, sp, "write") else {
        return;
    };
    write_to(&dir, record);
}

fn write_to(dir: &MasterTasksDir, record: &TaskRecord) {
    if let Err(e) = dir.write(record.id, &record.encode()) {
        tracing::warn!(task = %record.id, master = %dir.master, error = %e,
            "cannot write the task to the master domain; a new SPM will not know it");
    }
}

/// Writes every task of `sp` this host keeps to the pool's (new) master:
/// after a switchMaster, so that the next SPM finds them there.
pub fn write_all(storage: &Storage, sp: SpUuid, store: &TaskStore) {
    let Some(dir) = dir_of(storage, sp, "copy") else {
        return;
    };
    for r in store.all().iter().filter(|r| r.pool == Some(sp)) {
        write_to(&dir, r);
    }
}

/// Removes the master's copies of `gone` (tasks cleared or pushed out by
/// the bound) that belong to a pool: only of a pool whose SPM this host
/// is (only the SPM writes the master; another host's clear leaves the
/// copy to the SPM's). A failure is logged.
pub fn remove(storage: &Storage, gone: &[TaskRecord]) {
    let spm_of: Vec<SpUuid> = storage
        .connected_pools_spm()
        .into_iter()
        .filter_map(|(sp, spm)| spm.then_some(sp))
        .collect();
    for r in gone {
        let Some(sp) = r.pool.filter(|sp| spm_of.contains(sp)) else {
            continue;
        };
        let Some(dir) = dir_of(storage, sp, "remove") else {
            continue;
        };
        remove_from(&dir, r.id);
    }
}

fn remove_from(dir: &MasterTasksDir, id: Uuid) {
    if let Err(e) = dir.remove(id) {
        tracing::warn!(task = %id, master = %dir.master, error = %e,
            "cannot remove the task from the master domain");
    }
}

/// What [`load`] did, for the log.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Loaded {
    /// Taken into this host's store.
    pub loaded: usize,
    /// Of those, running when written: now failed with 9001.
    pub interrupted: usize,
    /// Known here already.
    pub known: usize,
    /// Written by a newer depot: left where they are.
    pub newer: usize,
    /// Moved aside as `<name>.corrupt`.
    pub corrupt: usize,
    /// Another pool's (a lost pool's, on a domain taken over by disaster
    /// recovery or reconstructed into a new pool): left where they are.
    pub other_pool: usize,
    /// Over [`MAX_LOADED`], not looked at.
    pub skipped: usize,
    /// Why the load stopped early (the master did not answer).
    pub failed: Option<String>,
}

impl std::fmt::Display for Loaded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} loaded, {} interrupted, {} known, {} newer, {} corrupt, {} of another pool, \
             {} skipped",
            self.loaded,
            self.interrupted,
            self.known,
            self.newer,
            self.corrupt,
            self.other_pool,
            self.skipped
        )?;
        if let Some(why) = &self.failed {
            write!(f, "; stopped: {why}")?;
        }
        Ok(())
    }
}

/// spmStart's step once this host holds the SPM's lease of `sp`: the
/// master's tasks this host does not know go into `store` (VDSM's
/// loadDumpedTasks then recoverDumpedTasks). Never fails the start.
pub fn load(storage: &Storage, sp: SpUuid, store: &TaskStore) -> Loaded {
    let Some(dir) = dir_of(storage, sp, "load") else {
        return Loaded::default();
    };
    let loaded = load_from(&dir, sp, store);
    if loaded.failed.is_some() {
        tracing::warn!(pool = %sp, master = %dir.master, %loaded, "master domain's tasks loaded in part");
    } else {
        tracing::info!(pool = %sp, master = %dir.master, %loaded, "master domain's tasks loaded");
    }
    loaded
}

/// [`load`] from `dir`. Each `<id>.json` not known here is read (at most
/// [`MAX_RECORD_BYTES`]); one of another pool is left as it is; the rest
/// are recovered as VDSM recovers a dumped task: a
/// finished one stays as it is; one still running (depot writes none,
/// but a newer one might) is finished/cleanFailure 9001, as the work of
/// a process that is gone. A file that does not parse, is too large or
/// holds another id is moved aside; a newer format's is left for the
/// depot that wrote it. An I/O failure stops the load (a master that does
/// not answer one read will not answer the next) with what was loaded
/// kept. Tasks the bound pushes out of the store go from the master too.
pub fn load_from(dir: &MasterTasksDir, sp: SpUuid, store: &TaskStore) -> Loaded {
    let mut out = Loaded::default();
    let mut names = match dir.names() {
        Ok(names) => names,
        Err(e) => {
            out.failed = Some(format!("cannot list {}: {e}", dir.path().display()));
            return out;
        }
    };
    // Temporary files of a write cut short start with '.'; `.corrupt`
    // files do not end in `.json`.
    names.retain(|n| !n.starts_with('.') && n.ends_with(SUFFIX));
    names.sort();
    if names.len() > MAX_LOADED {
        out.skipped = names.len() - MAX_LOADED;
        names.truncate(MAX_LOADED);
    }
    for name in names {
        let stem = &name[..name.len() - SUFFIX.len()];
        if stem.parse::<Uuid>().is_ok_and(|id| store.get(id).is_some()) {
            out.known += 1;
            continue;
        }
        let bytes = match dir.read(&name, MAX_RECORD_BYTES) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                aside(dir, &name, &e.to_string(), &mut out);
                continue;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue, // cleared meanwhile
            Err(e) => {
                out.failed = Some(format!("cannot read {name}: {e}"));
                return out;
            }
        };
        let mut record = match TaskRecord::decode(&bytes, stem) {
            Ok(r) => r,
            Err(e) if e.newer => {
                tracing::warn!(master = %dir.master, file = name, reason = %e.why,
                    "a newer depot's task on the master domain, left there");
                out.newer += 1;
                continue;
            }
            Err(e) => {
                aside(dir, &name, &e.why, &mut out);
                continue;
            }
        };
        // A task of another pool was never this pool's engine's: after a
        // disaster recovery the master still holds the lost pool's, and
        // loading them would list them in the recovery pool.
        if record.pool.is_some_and(|p| p != sp) {
            out.other_pool += 1;
            continue;
        }
        record.pool = Some(sp);
        let interrupted = record.state == State::Running;
        if interrupted {
            interrupt(&mut record);
            write_to(dir, &record);
        }
        match store.adopt(record) {
            None => out.known += 1,
            Some(pruned) => {
                out.loaded += 1;
                out.interrupted += usize::from(interrupted);
                for r in pruned.iter().filter(|r| r.pool == Some(sp)) {
                    remove_from(dir, r.id);
                }
            }
        }
    }
    out
}

/// VDSM's recovery of a task that was running on an SPM that is gone: it
/// ends, failed cleanly, with JobInterrupted.
fn interrupt(record: &mut TaskRecord) {
    let e = ApiError::new(
        Code::JobInterrupted,
        format!(
            "the {} task was running on the SPM that wrote it, which is no longer SPM",
            record.verb.name()
        ),
    );
    record.state = State::Finished;
    record.success = false;
    record.code = e.code.number();
    record.message = e.message();
    record.ended_at = Some(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0),
    );
}

fn aside(dir: &MasterTasksDir, name: &str, why: &str, out: &mut Loaded) {
    match dir.move_aside(name) {
        Ok(aside) => {
            tracing::warn!(master = %dir.master, file = name, aside, reason = why,
                "unreadable task file on the master domain, moved aside");
            out.corrupt += 1;
        }
        Err(e) => tracing::warn!(master = %dir.master, file = name, reason = why, error = %e,
            "unreadable task file on the master domain, cannot move it aside"),
    }
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::path::{Path, PathBuf};
    use std::sync::Arc;
    use std::time::Duration;

    use depot_api::storage::SdUuid;
    use depot_storage::mount_fs::MountFs;

    use super::*;
    use crate::task_store::{SpmVerb, Verb, TASKS_DIR};

    struct Fixture {
        _tmp: tempfile::TempDir,
        master: MasterTasksDir,
        /// `<domain>/master/tasks` as plain files, to plant and check.
        files: PathBuf,
        host: PathBuf,
    }

    fn fixture() -> Fixture {
        let tmp = tempfile::tempdir().unwrap();
        let mount = tmp.path().join("mnt");
        let sd = SdUuid(Uuid::new_v4());
        let domain = mount.join(sd.to_string());
        fs::create_dir_all(&domain).unwrap();
        let fs = MountFs::in_process(&mount, Duration::from_secs(5));
        let master = MasterTasksDir::at(sd, fs, &domain);
        let files = master.path().to_path_buf();
        let host = tmp.path().join("state");
        Fixture {
            _tmp: tmp,
            master,
            files,
            host,
        }
    }

    fn store(dir: &Path, max: usize) -> Arc<TaskStore> {
        TaskStore::open(dir, max).unwrap().0
    }

    /// The old SPM's record goes to the master as the same format 2
    /// record, and a host that never saw it loads it: finished with
    /// success, of the pool, on its own disk too.
    #[test]
    fn a_record_round_trips_through_the_master() {
        let f = fixture();
        let sp = SpUuid(Uuid::new_v4());
        let old = store(&f.host.join("a"), 10);
        let t = old.record_finished(SpmVerb::CreateVolume, Some(sp)).record;
        write_to(&f.master, &t);
        let text = fs::read_to_string(f.files.join(format!("{}.json", t.id))).unwrap();
        assert!(text.contains("\"format\": 2"), "{text}");
        assert!(text.contains("\"verb\": \"createVolume\""), "{text}");

        let new = store(&f.host.join("b"), 10);
        let got = load_from(&f.master, sp, &new);
        assert_eq!(
            got,
            Loaded {
                loaded: 1,
                ..Loaded::default()
            }
        );
        assert_eq!(new.get(t.id).unwrap(), t);
        assert_eq!(new.get(t.id).unwrap().status().taskResult, "success");
        assert!(f
            .host
            .join("b")
            .join(TASKS_DIR)
            .join(format!("{}.json", t.id))
            .exists());
        // A second load finds it known; the old SPM's own copy is known too.
        assert_eq!(load_from(&f.master, sp, &new).known, 1);
        assert_eq!(load_from(&f.master, sp, &old).known, 1);
        // Removing is idempotent.
        remove_from(&f.master, t.id);
        remove_from(&f.master, t.id);
        assert!(!f.files.join(format!("{}.json", t.id)).exists());
    }

    /// A newer depot's record stays on the master, untouched; a corrupt
    /// one, one too large and one holding another id go aside; a running
    /// one is recovered as failed with 9001 (on the master too); the rest
    /// loads, and the load never fails.
    #[test]
    fn newer_is_left_corrupt_goes_aside_and_running_is_interrupted() {
        let f = fixture();
        let sp = SpUuid(Uuid::new_v4());
        let old = store(&f.host.join("a"), 10);
        let good = old.record_finished(SpmVerb::DeleteImage, Some(sp)).record;
        write_to(&f.master, &good);
        let text = fs::read_to_string(f.files.join(format!("{}.json", good.id))).unwrap();
        let plant = |id: Uuid, body: &str| {
            fs::write(f.files.join(format!("{id}.json")), body).unwrap();
        };
        let (newer, corrupt, big, other, running, lost) = (
            Uuid::new_v4(),
            Uuid::new_v4(),
            Uuid::new_v4(),
            Uuid::new_v4(),
            Uuid::new_v4(),
            Uuid::new_v4(),
        );
        // A lost pool's task (the master taken over into pool sp).
        let lost_pool = SpUuid(Uuid::new_v4());
        let lost_text = text
            .replace(&good.id.to_string(), &lost.to_string())
            .replace(&sp.to_string(), &lost_pool.to_string());
        assert_ne!(
            lost_text,
            text.replace(&good.id.to_string(), &lost.to_string())
        );
        plant(lost, &lost_text);
        let newer_text = text
            .replace("\"format\": 2", "\"format\": 3")
            .replace(&good.id.to_string(), &newer.to_string());
        plant(newer, &newer_text);
        plant(corrupt, "{\"format\": 2, \"id\": ");
        plant(big, &" ".repeat(MAX_RECORD_BYTES as usize + 1));
        plant(other, &text);
        plant(
            running,
            &text
                .replace(&good.id.to_string(), &running.to_string())
                .replace("\"state\": \"finished\"", "\"state\": \"running\""),
        );
        fs::write(f.files.join(".x.json.tmp-1"), "half").unwrap();
        fs::write(f.files.join("x.json.corrupt"), "old evidence").unwrap();

        let new = store(&f.host.join("b"), 10);
        let got = load_from(&f.master, sp, &new);
        assert_eq!(
            got,
            Loaded {
                loaded: 2,
                interrupted: 1,
                newer: 1,
                corrupt: 3,
                other_pool: 1,
                ..Loaded::default()
            }
        );
        assert!(new.get(lost).is_none(), "another pool's task loaded");
        assert_eq!(
            fs::read_to_string(f.files.join(format!("{lost}.json"))).unwrap(),
            lost_text,
            "another pool's task is left as it was"
        );
        assert_eq!(
            fs::read_to_string(f.files.join(format!("{newer}.json"))).unwrap(),
            newer_text
        );
        assert!(new.get(newer).is_none());
        for id in [corrupt, big, other] {
            assert!(!f.files.join(format!("{id}.json")).exists());
            assert!(f.files.join(format!("{id}.json.corrupt")).exists());
            assert!(new.get(id).is_none());
        }
        let r = new.get(running).unwrap();
        assert_eq!(
            (r.state, r.success, r.code, r.verb, r.pool),
            (State::Finished, false, 9001, Verb::DeleteImage, Some(sp))
        );
        assert_eq!(r.status().taskResult, "cleanFailure");
        let on_master = fs::read_to_string(f.files.join(format!("{running}.json"))).unwrap();
        assert!(on_master.contains("\"code\": 9001"), "{on_master}");
        assert_eq!(new.get(good.id).unwrap(), good);
    }

    /// The store's bound holds for what a load brings: the oldest go, from
    /// the master too; a directory that is not there is an empty load.
    #[test]
    fn the_bound_holds_and_a_missing_directory_is_empty() {
        let f = fixture();
        let sp = SpUuid(Uuid::new_v4());
        let new = store(&f.host.join("b"), 2);
        assert_eq!(load_from(&f.master, sp, &new), Loaded::default());
        let old = store(&f.host.join("a"), 10);
        let mut ids = Vec::new();
        for _ in 0..3 {
            let t = old.record_finished(SpmVerb::CreateVolume, Some(sp)).record;
            write_to(&f.master, &t);
            ids.push(t.id);
            std::thread::sleep(Duration::from_millis(5));
        }
        let got = load_from(&f.master, sp, &new);
        assert_eq!(got.loaded, 3);
        assert!(new.get(ids[0]).is_none());
        assert!(!f.files.join(format!("{}.json", ids[0])).exists());
        assert!(new.get(ids[2]).is_some());
        assert!(f.files.join(format!("{}.json", ids[2])).exists());
    }
}
