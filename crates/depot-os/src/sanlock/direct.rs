//! `sanlock direct ...` in a child process: formats lockspaces and lease
//! areas (and reads their leader records back) with sanlock's own code,
//! without a running daemon and without any I/O on a thread of this
//! process. The child opens the area itself (`O_DIRECT|O_SYNC`, no
//! `O_CREAT`: the file or LV must exist) and the command runner's timeout
//! bounds it on a storage that does not answer.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{check_name, escape_path, Area, Geometry, SanlockError};
use crate::command::{Cmd, CommandRunner};

/// How to run the `sanlock` program.
#[derive(Clone)]
pub struct DirectConfig {
    pub runner: CommandRunner,
    /// `sanlock` (looked up in `PATH`) unless set.
    pub program: PathBuf,
    /// The deadline of one call. sanlock's own I/O timeout is 10 s per
    /// request; formatting a lockspace writes its whole area.
    pub timeout: Duration,
}

impl Default for DirectConfig {
    fn default() -> Self {
        DirectConfig {
            runner: CommandRunner::new(),
            program: PathBuf::from("sanlock"),
            timeout: Duration::from_secs(60),
        }
    }
}

impl std::fmt::Debug for DirectConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DirectConfig")
            .field("program", &self.program)
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// Whether `program` can be run: an executable file at that path, or, for
/// a bare name, in one of `PATH`'s directories (as the runner's exec will
/// look).
pub fn program_found(program: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    let runnable = |p: &Path| {
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if program.components().count() > 1 {
        return runnable(program);
    }
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|d| runnable(&d.join(program))))
}

/// Formats the lockspace `name` at `area` (`sanlock direct init -s
/// NAME:0:PATH:OFFSET -Z -A`): one delta lease per host id, as many as the
/// geometry holds. What VDSM's `write_lockspace` on `dom_md/ids` does.
pub fn direct_init_lockspace(
    cfg: &DirectConfig,
    name: &str,
    area: &Area,
    geometry: Geometry,
) -> Result<(), SanlockError> {
    const OP: &str = "direct init lockspace";
    check_name(OP, name)?;
    let path = escape_path(OP, &area.path)?;
    let spec = format!("{name}:0:{path}:{}", area.offset);
    init(cfg, OP, "-s", spec, geometry)
}

/// Formats the paxos lease `resource` of lockspace `lockspace` at `area`
/// (`sanlock direct init -r LS:RES:PATH:OFFSET -Z -A`). What VDSM's
/// `write_resource` of the SDM lease in `dom_md/leases` does.
pub fn direct_init_resource(
    cfg: &DirectConfig,
    lockspace: &str,
    resource: &str,
    area: &Area,
    geometry: Geometry,
) -> Result<(), SanlockError> {
    const OP: &str = "direct init resource";
    let spec = resource_spec(OP, Some((lockspace, resource)), area)?;
    init(cfg, OP, "-r", spec, geometry)
}

/// Clears the paxos lease at `area`: writes a leader with empty
/// lockspace and resource names (`sanlock direct init -r ::PATH:OFFSET`),
/// which no acquire can match and [`direct_read_resource`] reads as no
/// lease. What VDSM's xleases code does to delete a lease
/// (`write_resource("", "")`).
pub fn direct_clear_resource(
    cfg: &DirectConfig,
    area: &Area,
    geometry: Geometry,
) -> Result<(), SanlockError> {
    const OP: &str = "direct clear resource";
    let spec = resource_spec(OP, None, area)?;
    init(cfg, OP, "-r", spec, geometry)
}

/// The `-r` argument of a paxos lease at `area`: `LS:RES:PATH:OFFSET`
/// for `names` (lockspace, resource), each checked; `::PATH:OFFSET`, the
/// empty names of a cleared leader, for `None`.
fn resource_spec(
    op: &'static str,
    names: Option<(&str, &str)>,
    area: &Area,
) -> Result<String, SanlockError> {
    let (lockspace, resource) = match names {
        Some((lockspace, resource)) => {
            check_name(op, lockspace)?;
            check_name(op, resource)?;
            (lockspace, resource)
        }
        None => ("", ""),
    };
    let path = escape_path(op, &area.path)?;
    Ok(format!("{lockspace}:{resource}:{path}:{}", area.offset))
}

/// The name of the paxos lease of lockspace `lockspace` at `area`, `None`
/// when there is none: no leader there (never written, rv -223), a
/// cleared one ([`direct_clear_resource`]) or one of another lockspace.
/// `sanlock direct read_leader` checks the names it is given, so it is
/// asked with a placeholder name and its "wrong resource name" answer
/// (rv -227) carries the leader it read.
pub fn direct_read_resource(
    cfg: &DirectConfig,
    lockspace: &str,
    area: &Area,
) -> Result<Option<String>, SanlockError> {
    const OP: &str = "direct read resource";
    // sanlock_rv.h
    const LEADER_MAGIC: i32 = -223;
    const LEADER_LOCKSPACE: i32 = -226;
    const LEADER_RESOURCE: i32 = -227;
    check_name(OP, lockspace)?;
    let path = escape_path(OP, &area.path)?;
    // A name no lease has: '.' is not in a UUID.
    let spec = format!("{lockspace}:.:{path}:{}", area.offset);
    let cmd = Cmd::new(cfg.program.clone(), cfg.timeout)
        .args(["direct", "read_leader", "-r"])
        .arg(&spec)
        .ok_codes(&[0, 1]);
    let out = cfg.runner.run(&cmd).map_err(|e| SanlockError::Command {
        op: OP,
        target: spec.clone(),
        source: Box::new(e),
    })?;
    let text = String::from_utf8_lossy(&out.stdout);
    match done_rv(&text, "read_leader") {
        Some(0 | LEADER_RESOURCE) => {
            let leader = parse_leader(&text);
            let name = leader.get("resource_name").cloned().unwrap_or_default();
            let space = leader.get("space_name").map(String::as_str).unwrap_or("");
            Ok((!name.is_empty() && space == lockspace).then_some(name))
        }
        Some(LEADER_MAGIC | LEADER_LOCKSPACE) => Ok(None),
        rv => Err(SanlockError::Call {
            op: OP,
            target: spec,
            rv: rv.unwrap_or(-1),
            message: format!("sanlock direct read_leader: {}", first_line(&text)),
        }),
    }
}

fn init(
    cfg: &DirectConfig,
    op: &'static str,
    kind: &str,
    spec: String,
    geometry: Geometry,
) -> Result<(), SanlockError> {
    // `-a 0`: plain O_DIRECT writes instead of Linux AIO. With AIO the
    // child's exit waits in io_destroy for an RCU grace period, about
    // 30 ms here: 40 ms a run against 5 ms (a volume lease is one run per
    // Volume.create when no daemon answers, docs/performance.md). A hung
    // storage blocks the child in either mode; the runner's timeout is
    // what bounds it.
    let cmd = Cmd::new(cfg.program.clone(), cfg.timeout)
        .args(["direct", "init", "-a", "0", kind])
        .arg(&spec)
        .args(geometry.cli_args());
    let out = cfg.runner.run(&cmd).map_err(|e| SanlockError::Command {
        op,
        target: spec.clone(),
        source: Box::new(e),
    })?;
    let text = String::from_utf8_lossy(&out.stdout);
    match done_rv(&text, "init") {
        Some(0) => Ok(()),
        Some(rv) => Err(SanlockError::Call {
            op,
            target: spec,
            rv,
            message: format!("sanlock direct init: {}", text.trim()),
        }),
        None => Err(SanlockError::Call {
            op,
            target: spec,
            rv: -1,
            message: format!("no \"init done\" in sanlock's output {:?}", text.trim()),
        }),
    }
}

/// The leader record of a lockspace (`is_resource` false; `id` is then a
/// host id, 1 for the first record) or of a resource (`id` its name) at
/// `area`, as `sanlock direct read_leader` prints it: `magic`, `version`,
/// `sector_size`, `max_hosts`, `space_name`, `resource_name`, `io_timeout`,
/// ... An area that holds no leader is an error (rv -223, no magic).
pub fn direct_read_leader(
    cfg: &DirectConfig,
    lockspace: &str,
    id: &str,
    is_resource: bool,
    area: &Area,
) -> Result<BTreeMap<String, String>, SanlockError> {
    const OP: &str = "direct read_leader";
    check_name(OP, lockspace)?;
    check_name(OP, id)?;
    let path = escape_path(OP, &area.path)?;
    let spec = format!("{lockspace}:{id}:{path}:{}", area.offset);
    let cmd = Cmd::new(cfg.program.clone(), cfg.timeout)
        .args([
            "direct",
            "read_leader",
            if is_resource { "-r" } else { "-s" },
        ])
        .arg(&spec)
        // sanlock exits 1 with the record of zeros when there is none; the
        // "done" line tells.
        .ok_codes(&[0, 1]);
    let out = cfg.runner.run(&cmd).map_err(|e| SanlockError::Command {
        op: OP,
        target: spec.clone(),
        source: Box::new(e),
    })?;
    let text = String::from_utf8_lossy(&out.stdout);
    match done_rv(&text, "read_leader") {
        Some(0) => Ok(parse_leader(&text)),
        rv => Err(SanlockError::Call {
            op: OP,
            target: spec,
            rv: rv.unwrap_or(-1),
            message: format!("sanlock direct read_leader: {}", first_line(&text)),
        }),
    }
}

/// The `rv` of sanlock's `<action> done <rv>` line.
fn done_rv(text: &str, action: &str) -> Option<i32> {
    text.lines().find_map(|l| {
        let rest = l.trim().strip_prefix(action)?.trim_start();
        rest.strip_prefix("done")?.trim().parse().ok()
    })
}

/// `key value` lines after the "done" line.
fn parse_leader(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter(|l| !l.contains(" done "))
        .filter_map(|l| {
            let (k, v) = l.trim().split_once(' ').unwrap_or((l.trim(), ""));
            (!k.is_empty()).then(|| (k.to_owned(), v.trim().to_owned()))
        })
        .collect()
}

fn first_line(text: &str) -> &str {
    text.lines().next().unwrap_or("").trim()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn programs_are_found_in_path_or_by_path() {
        assert!(program_found(Path::new("sh")));
        assert!(program_found(Path::new("/bin/sh")));
        assert!(!program_found(Path::new("no-such-program-depot")));
        assert!(!program_found(Path::new("/nonexistent/sanlock")));
        // A directory is not a program.
        assert!(!program_found(Path::new("/bin")));
    }

    #[test]
    fn done_lines_give_the_rv() {
        assert_eq!(done_rv("init done 0\n", "init"), Some(0));
        assert_eq!(done_rv("init done -19\n", "init"), Some(-19));
        assert_eq!(
            done_rv("read_leader done -223\nmagic 0x0\n", "read_leader"),
            Some(-223)
        );
        assert_eq!(done_rv("init done x\n", "init"), None);
        assert_eq!(done_rv("read_leader done 0\n", "init"), None);
        assert_eq!(done_rv("", "init"), None);
    }

    #[test]
    fn leader_records_parse() {
        let text = "read_leader done 0\nmagic 0x6152010\nversion 0x60004\nsector_size 512\n\
                    max_hosts 2000\nspace_name LS\nresource_name \ntimestamp 0\n";
        let m = parse_leader(text);
        assert_eq!(m["magic"], "0x6152010");
        assert_eq!(m["sector_size"], "512");
        assert_eq!(m["space_name"], "LS");
        assert_eq!(m["resource_name"], "");
        assert!(!m.contains_key("read_leader"));
    }

    #[test]
    fn bad_names_and_paths_run_nothing() {
        // A program that cannot exist: an invalid argument must fail
        // before anything runs, not as a failed command.
        let cfg = DirectConfig {
            program: "/nonexistent/sanlock".into(),
            ..DirectConfig::default()
        };
        let g = Geometry::new(512, 1 << 20).unwrap();
        for (name, path) in [("a:b", "/x"), ("ok", "rel/ids"), ("", "/x")] {
            let e = direct_init_lockspace(&cfg, name, &Area::new(path, 0), g).unwrap_err();
            assert!(matches!(e, SanlockError::Invalid { .. }), "{e}");
        }
        let e = direct_init_lockspace(&cfg, "ok", &Area::new("/x", 0), g).unwrap_err();
        assert!(matches!(e, SanlockError::Command { .. }), "{e}");
    }

    #[test]
    fn a_resource_spec_names_the_lease_and_a_cleared_one_is_nameless() {
        let area = Area::new("/dom/xleases", 3 << 20);
        let spec = resource_spec("t", Some(("LS", "RES")), &area).unwrap();
        assert_eq!(spec, "LS:RES:/dom/xleases:3145728");
        // What `direct init -r` writes to delete a lease: empty names.
        let spec = resource_spec("t", None, &area).unwrap();
        assert_eq!(spec, "::/dom/xleases:3145728");
        for names in [("", "RES"), ("LS", ""), ("L:S", "RES")] {
            let e = resource_spec("t", Some(names), &area).unwrap_err();
            assert!(matches!(e, SanlockError::Invalid { .. }), "{e}");
        }
    }
}
