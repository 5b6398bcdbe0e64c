//! File-system helper processes (depot_os::fsproc) with the real
//! `depot-fsproc` binary: every operation, confinement, deadlines, helper
//! death, and (root tier) a real GlusterFS brick frozen with SIGSTOP.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use depot_os::fsproc::{
    protocol, FileKind, FsPool, FsProc, FsProcError, HelperCommand, OpenWrite, PoolConfig,
};
use depot_testkit::process::{pid_alive, signal};

fn helper() -> HelperCommand {
    HelperCommand::new(env!("CARGO_BIN_EXE_depot-fsproc"))
}

fn pool(root: &Path, max_helpers: usize, timeout: Duration) -> FsPool {
    FsPool::new(PoolConfig {
        command: helper(),
        root: root.to_owned(),
        max_helpers,
        timeout,
    })
}

/// Polls `cond` every 20 ms until it holds or `limit` passes.
fn wait_until(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    cond()
}

fn create() -> OpenWrite {
    OpenWrite {
        create: true,
        mode: 0o644,
        ..OpenWrite::default()
    }
}

/// Every operation of the protocol, through one pool on `root`.
fn exercise_every_operation(root: &Path) {
    let p = pool(root, 2, Duration::from_secs(30));
    exercise_every_operation_on(&p, root);
    let h = p.health();
    assert!(h.started >= 1 && h.started <= 2, "{h:?}");
}

fn exercise_every_operation_on(p: &FsPool, root: &Path) {
    let p = p.clone();
    exclusive_create(&p);
    steps_with_their_fsyncs(&p, root);
    data_operations(&p, root);
    name_and_attribute_operations(&p, root);
    streams_trees_and_errors(&p, root);
}

/// Directories, reads and writes, plain, atomic and direct.
fn data_operations(p: &FsPool, root: &Path) {
    p.ping().unwrap();
    p.mkdir("a", 0o755).unwrap();
    p.mkdir("a/b", 0o700).unwrap();
    let st = p.stat("a").unwrap();
    assert_eq!((st.kind, st.mode), (FileKind::Dir, 0o755));
    assert_eq!(p.stat("").unwrap().kind, FileKind::Dir);

    // Plain writes and reads.
    assert_eq!(p.write("a/f", 0, b"hello", create(), true).unwrap(), 5);
    let st = p.stat("a/f").unwrap();
    let md = fs::metadata(root.join("a/f")).unwrap();
    assert_eq!((st.kind, st.size, st.nlink), (FileKind::File, 5, 1));
    assert_eq!(
        (st.ino, st.dev, st.uid, st.gid),
        (md.ino(), md.dev(), md.uid(), md.gid())
    );
    assert_eq!((st.mtime_s, st.mtime_ns), (md.mtime(), md.mtime_nsec()));
    assert_eq!(p.read("a/f", 0, 5, false).unwrap(), b"hello");
    assert_eq!(p.read("a/f", 1, 100, false).unwrap(), b"ello");
    let mut no_create = create();
    no_create.create = false;
    let e = p.write("a/new", 0, b"x", no_create, false).unwrap_err();
    assert_eq!(e.io_kind(), Some(std::io::ErrorKind::NotFound), "{e}");

    // Atomic and direct I/O, 4 KiB like domain metadata.
    let meta: Vec<u8> = (0..4096u32).map(|i| (i % 251) as u8).collect();
    p.write_atomic("a/meta", &meta, 0o640).unwrap();
    assert_eq!(p.stat("a/meta").unwrap().mode, 0o640);
    assert_eq!(p.read("a/meta", 0, 4096, true).unwrap(), meta);
    p.write_atomic("a/meta", b"v2", 0o640).unwrap();
    assert_eq!(fs::read(root.join("a/meta")).unwrap(), b"v2");
    let mut direct = create();
    direct.direct = true;
    p.write("a/d", 0, &meta, direct, true).unwrap();
    assert_eq!(fs::read(root.join("a/d")).unwrap(), meta);
    let probe = p.direct_probe("a/d").unwrap();
    assert!(probe.supported, "{probe:?}");
    assert!([512, 4096].contains(&probe.block_size), "{probe:?}");
}

/// Listing, existence, names, size, mode, owner and sync.
fn name_and_attribute_operations(p: &FsPool, root: &Path) {
    // Listing: names and kinds, no temporary file of write_atomic left.
    symlink("f", root.join("a/l")).unwrap();
    let (entries, truncated) = p.listdir("a").unwrap();
    assert!(!truncated);
    let kinds: BTreeMap<String, FileKind> = entries.into_iter().map(|e| (e.name, e.kind)).collect();
    let want: BTreeMap<String, FileKind> = [
        ("b", FileKind::Dir),
        ("d", FileKind::File),
        ("f", FileKind::File),
        ("l", FileKind::Symlink),
        ("meta", FileKind::File),
    ]
    .into_iter()
    .map(|(n, k)| (n.to_owned(), k))
    .collect();
    assert_eq!(kinds, want);
    assert!(p.listdir("").unwrap().0.iter().any(|e| e.name == "a"));

    // exists, lstat; stat does not follow a link.
    assert!(p.exists("a/f").unwrap());
    assert!(!p.exists("a/missing").unwrap());
    assert!(!p.exists("missing/x").unwrap());
    assert_eq!(p.lstat("a/l").unwrap().kind, FileKind::Symlink);
    let e = p.stat("a/l").unwrap_err();
    assert!(e.refusal().is_some(), "{e}");
    let vfs = p.statvfs("").unwrap();
    assert!(vfs.total_bytes > 0 && vfs.block_size > 0, "{vfs:?}");
    assert_eq!(p.statvfs("a/f").unwrap().total_bytes, vfs.total_bytes);

    // Names: rename, link, unlink.
    p.rename("a/f", "a/g").unwrap();
    assert!(!p.exists("a/f").unwrap() && p.exists("a/g").unwrap());
    p.link("a/g", "a/h").unwrap();
    assert_eq!(p.stat("a/g").unwrap().nlink, 2);
    p.unlink("a/h").unwrap();
    assert_eq!(p.stat("a/g").unwrap().nlink, 1);

    // Size, mode, owner, sync.
    p.truncate("a/g", 2).unwrap();
    assert_eq!(fs::read(root.join("a/g")).unwrap(), b"he");
    p.fallocate("a/g", 0, 8192).unwrap();
    assert_eq!(p.stat("a/g").unwrap().size, 8192);
    p.chmod("a/g", 0o600).unwrap();
    assert_eq!(
        fs::metadata(root.join("a/g")).unwrap().permissions().mode() & 0o7777,
        0o600
    );
    let md = fs::metadata(root).unwrap();
    let (uid, gid) = (md.uid(), md.gid());
    p.chown("a/g", uid, gid).unwrap();
    p.fsync("a/g").unwrap();
    p.fsync_dir("a").unwrap();
    p.fsync_dir("").unwrap();
}

/// Streamed writes, zeroing, trees, and errors.
fn streams_trees_and_errors(p: &FsPool, root: &Path) {
    // A streamed write: chunks at offsets, errors of close reported.
    let mut s = p
        .open_write("a/s", create(), Duration::from_secs(30))
        .unwrap();
    s.write(4096, &[2u8; 4096]).unwrap();
    s.write(0, &[1u8; 4096]).unwrap();
    s.close(true).unwrap();
    let data = fs::read(root.join("a/s")).unwrap();
    assert_eq!(data.len(), 8192);
    assert!(data[..4096].iter().all(|&b| b == 1) && data[4096..].iter().all(|&b| b == 2));

    // A direct stream of large pieces, then a smaller one: each lands as
    // sent (the helper reuses one data buffer between frames).
    let direct = OpenWrite {
        direct: true,
        ..create()
    };
    let mut s = p
        .open_write("a/ds", direct, Duration::from_secs(30))
        .unwrap();
    let piece =
        |seed: u8, len: usize| -> Vec<u8> { (0..len).map(|i| (i % 251) as u8 ^ seed).collect() };
    s.write(0, &piece(1, 1 << 20)).unwrap();
    s.write(1 << 20, &piece(2, 1 << 20)).unwrap();
    s.write(2 << 20, &piece(3, 8192)).unwrap();
    s.close(true).unwrap();
    let data = fs::read(root.join("a/ds")).unwrap();
    assert_eq!(data.len(), (2 << 20) + 8192);
    assert!(data[..1 << 20] == piece(1, 1 << 20)[..]);
    assert!(data[1 << 20..2 << 20] == piece(2, 1 << 20)[..]);
    assert!(data[2 << 20..] == piece(3, 8192)[..]);
    p.unlink("a/ds").unwrap();

    // Zeroing, allocated or punched: the size stays.
    p.write("a/z", 0, &[7u8; 8192], create(), false).unwrap();
    p.zero_range("a/z", 0, 4096, false).unwrap();
    p.zero_range("a/z", 4096, 4096, true).unwrap();
    assert_eq!(fs::read(root.join("a/z")).unwrap(), vec![0u8; 8192]);

    // A whole tree goes; a link in it is removed, not followed.
    p.mkdir("a/tree", 0o755).unwrap();
    p.mkdir("a/tree/sub", 0o755).unwrap();
    p.write("a/tree/sub/f", 0, b"x", create(), false).unwrap();
    symlink(root.join("a/g"), root.join("a/tree/sub/link")).unwrap();
    p.rmtree("a/tree").unwrap();
    assert!(!p.exists("a/tree").unwrap());
    assert_eq!(fs::read(root.join("a/g")).unwrap().len(), 8192);
    p.rmtree("a/z").unwrap();
    assert!(!p.exists("a/z").unwrap());

    // Too much data for one frame: refused before it is sent, and the
    // helper serves on.
    let started = p.health().started;
    let big = vec![0u8; protocol::MAX_DATA_BYTES as usize + 1];
    let e = p.write("a/big", 0, &big, create(), false).unwrap_err();
    assert_eq!(e.io_kind(), Some(std::io::ErrorKind::InvalidInput), "{e}");
    assert!(!p.exists("a/big").unwrap());
    assert_eq!(p.health().started, started);

    // Directories go; errors carry the errno, the operation and the path.
    p.rmdir("a/b").unwrap();
    let e = p.rmdir("a").unwrap_err();
    assert_eq!(e.errno(), Some(libc::ENOTEMPTY), "{e}");
    let e = p.stat("a/missing").unwrap_err();
    assert_eq!(e.errno(), Some(libc::ENOENT), "{e}");
    let text = e.to_string();
    assert!(
        text.contains("stat a/missing") && text.contains(&root.display().to_string()),
        "{text}"
    );
    let h = p.health();
    assert_eq!((h.stuck, h.busy, h.trouble_since), (0, 0, None), "{h:?}");
}

#[test]
fn every_operation_works_in_a_local_directory() {
    let t = tempfile::tempdir().unwrap();
    exercise_every_operation(t.path());
}

/// The same operations in process (no helper): the same answers.
#[test]
fn every_operation_works_in_process() {
    let t = tempfile::tempdir().unwrap();
    let p = FsPool::in_process(t.path().to_owned(), Duration::from_secs(30));
    assert!(p.is_in_process());
    exercise_every_operation_on(&p, t.path());
    assert_eq!(p.health().started, 0, "no helper started");
}

/// A step and its fsyncs in one call (protocol 4): a write that sets the
/// length (a new sparse volume), a mkdir and an unlink that fsync their
/// directory. Whether an fsync ran cannot be seen from here; what each
/// call leaves, and that a stream refuses both options, can.
fn steps_with_their_fsyncs(p: &FsPool, root: &Path) {
    p.mkdir_synced("synced", 0o750).unwrap();
    assert!(root.join("synced").is_dir());
    let again = p.mkdir_synced("synced", 0o750).unwrap_err();
    assert_eq!(again.errno(), Some(libc::EEXIST), "{again}");

    let sized = OpenWrite {
        exclusive: true,
        set_len: Some(5 << 30),
        sync_dir: true,
        ..create()
    };
    assert_eq!(p.write("synced/vol", 0, b"head", sized, true).unwrap(), 4);
    let meta = fs::metadata(root.join("synced/vol")).unwrap();
    assert_eq!(meta.len(), 5 << 30);
    assert!(meta.blocks() < 1024, "sparse: {} blocks", meta.blocks());
    assert_eq!(p.read("synced/vol", 0, 8, false).unwrap(), b"head\0\0\0\0");

    for refused in [
        OpenWrite {
            set_len: Some(1),
            ..create()
        },
        OpenWrite {
            sync_dir: true,
            ..create()
        },
    ] {
        let Err(e) = p.open_write("synced/stream", refused, Duration::from_secs(30)) else {
            panic!("a stream took {refused:?}");
        };
        assert!(e.to_string().contains("not streams"), "{e}");
        assert!(!root.join("synced/stream").exists());
    }

    p.unlink_synced("synced/vol").unwrap();
    assert!(!root.join("synced/vol").exists());
    let gone = p.unlink_synced("synced/vol").unwrap_err();
    assert_eq!(gone.errno(), Some(libc::ENOENT), "{gone}");
    p.rmdir("synced").unwrap();
}

/// `exclusive` never opens a file that exists.
fn exclusive_create(p: &FsPool) {
    let new = OpenWrite {
        exclusive: true,
        ..create()
    };
    assert_eq!(p.write("excl", 0, b"one", new, true).unwrap(), 3);
    let again = p.write("excl", 0, b"two", new, true).unwrap_err();
    assert_eq!(again.errno(), Some(libc::EEXIST), "{again}");
    assert_eq!(p.read("excl", 0, 16, false).unwrap(), b"one");
    p.unlink("excl").unwrap();
    // A new file has exactly the mode asked for, whatever the umask
    // (this process's 022 for a pool in process, the helper's otherwise).
    let open = OpenWrite { mode: 0o666, ..new };
    p.write("excl", 0, b"", open, false).unwrap();
    assert_eq!(p.stat("excl").unwrap().mode, 0o666);
    p.unlink("excl").unwrap();
}

#[test]
fn every_operation_works_on_a_tmpfs() {
    let shm = depot_testkit::require_tmpfs_dev_shm();
    let t = tempfile::tempdir_in(shm).unwrap();
    exercise_every_operation(t.path());
}

/// Every entry beneath `dir`, recursively, for "nothing changed" checks.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, (u32, Vec<u8>)> {
    let mut all = BTreeMap::new();
    for e in fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let md = fs::symlink_metadata(e.path()).unwrap();
        let data = if md.is_file() {
            fs::read(e.path()).unwrap()
        } else {
            Vec::new()
        };
        all.insert(e.path(), (md.mode(), data));
        if md.is_dir() {
            all.extend(snapshot(&e.path()));
        }
    }
    all
}

#[test]
fn confinement_refuses_every_escape_and_creates_nothing_outside() {
    let t = tempfile::tempdir().unwrap();
    let dom = t.path().join("dom");
    let outside = t.path().join("outside");
    fs::create_dir_all(dom.join("images")).unwrap();
    fs::create_dir(&outside).unwrap();
    fs::write(outside.join("secret"), b"secret").unwrap();
    fs::write(dom.join("images/vol"), b"vol").unwrap();
    symlink(&outside, dom.join("images/dirlink")).unwrap();
    symlink(outside.join("secret"), dom.join("images/filelink")).unwrap();
    nix::unistd::mkfifo(
        &dom.join("images/fifo"),
        nix::sys::stat::Mode::from_bits_truncate(0o600),
    )
    .unwrap();
    let before = snapshot(&outside);
    let p = pool(&dom, 1, Duration::from_secs(30));

    let absolute_outside = outside.join("secret");
    let escapes = [
        "images/dirlink/secret",
        "images/dirlink/new",
        "../outside/secret",
        "images/../../outside/secret",
        "/etc/passwd",
        absolute_outside.to_str().unwrap(),
    ];
    for path in escapes {
        let refused = |what: &str, r: Result<(), FsProcError>| {
            let e = r.expect_err(&format!("{what} {path} must be refused"));
            assert!(e.refusal().is_some(), "{what} {path}: not a refusal: {e}");
        };
        refused("stat", p.stat(path).map(drop));
        refused("read", p.read(path, 0, 10, false).map(drop));
        refused("write", p.write(path, 0, b"x", create(), true).map(drop));
        refused("write_atomic", p.write_atomic(path, b"x", 0o644));
        refused("mkdir", p.mkdir(path, 0o755));
        refused("unlink", p.unlink(path));
        refused("rmtree", p.rmtree(path));
        refused("zero_range", p.zero_range(path, 0, 1, true));
        refused("rename to", p.rename("images/vol", path));
        refused("rename from", p.rename(path, "images/stolen"));
        refused("link", p.link(path, "images/stolen"));
        refused("truncate", p.truncate(path, 0));
        refused("chmod", p.chmod(path, 0o777));
        refused("chown", p.chown(path, 0, 0));
        refused("listdir", p.listdir(path).map(drop));
        refused(
            "stream",
            p.open_write(path, create(), Duration::from_secs(30))
                .map(drop),
        );
    }
    // A link to a file is never written, read, truncated or chmod'ed through.
    let link = "images/filelink";
    for e in [
        p.read(link, 0, 10, false).map(drop).unwrap_err(),
        p.write(link, 0, b"x", create(), true)
            .map(drop)
            .unwrap_err(),
        p.write_atomic(link, b"x", 0o644).unwrap_err(),
        p.truncate(link, 0).unwrap_err(),
        p.chmod(link, 0o777).unwrap_err(),
        p.fsync(link).unwrap_err(),
    ] {
        assert!(e.refusal().is_some(), "{e}");
    }
    // The root itself is never removed; a tree holding a link to the
    // outside loses the link only.
    assert!(p.rmtree("").unwrap_err().refusal().is_some());
    fs::create_dir(dom.join("images/tree")).unwrap();
    symlink(&outside, dom.join("images/tree/out")).unwrap();
    p.rmtree("images/tree").unwrap();
    assert!(!dom.join("images/tree").exists());
    // Nor a FIFO opened (it would block a reader).
    let e = p.read("images/fifo", 0, 10, false).unwrap_err();
    assert!(e.refusal().is_some(), "{e}");
    assert_eq!(
        snapshot(&outside),
        before,
        "something outside the root changed"
    );
    assert!(!dom.join("images/stolen").exists());
    assert_eq!(fs::read(dom.join("images/vol")).unwrap(), b"vol");
    assert_eq!(p.health().stuck, 0);
}

#[test]
fn a_helper_of_another_version_is_refused() {
    // A "helper" that answers the hello with version 99.
    let t = tempfile::tempdir().unwrap();
    let reply = protocol::ReplyHeader {
        id: 1,
        result: Ok(protocol::Reply::Hello {
            version: 99,
            pid: 1,
        }),
    };
    let frame = t.path().join("reply");
    fs::write(&frame, protocol::encode(&reply, &[]).unwrap()).unwrap();
    let cmd = HelperCommand::new("sh")
        .arg("-c")
        .arg(format!("cat {}; exec sleep 30", frame.display()));
    let e = FsProc::start(&cmd, t.path(), Duration::from_secs(30)).unwrap_err();
    assert!(matches!(e, FsProcError::Protocol { .. }), "{e}");
    let ours = format!("version {}", protocol::PROTOCOL_VERSION);
    assert!(e.to_string().contains(&ours), "{e}");

    // And the real helper refuses a client of another version, then exits.
    let mut input = Vec::new();
    let hello = protocol::RequestHeader {
        id: 1,
        request: protocol::Request::Hello {
            version: protocol::PROTOCOL_VERSION + 1,
            root: "/".into(),
        },
    };
    input.extend(protocol::encode(&hello, &[]).unwrap());
    let out = run_helper_with_input(&input);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let (reply, _): (protocol::ReplyHeader, Vec<u8>) =
        protocol::read_frame(&mut &out.stdout[..]).unwrap();
    let err = reply.result.unwrap_err();
    let theirs = format!("version {}", protocol::PROTOCOL_VERSION + 1);
    assert!(err.invalid && err.message.contains(&theirs), "{err:?}");
    // A client of version 1 (before wipe and batch) is refused too.
    let old = protocol::RequestHeader {
        id: 1,
        request: protocol::Request::Hello {
            version: 1,
            root: "/".into(),
        },
    };
    let out = run_helper_with_input(&protocol::encode(&old, &[]).unwrap());
    assert_eq!(out.status.code(), Some(2), "{out:?}");
}

/// Runs the helper binary with `input` on stdin; its output.
fn run_helper_with_input(input: &[u8]) -> std::process::Output {
    use std::io::Write;
    let mut child = Command::new(env!("CARGO_BIN_EXE_depot-fsproc"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    // The helper may exit before reading everything: ignore EPIPE.
    let _ = stdin.write_all(input);
    drop(stdin);
    child.wait_with_output().unwrap()
}

#[test]
fn the_helper_refuses_an_oversized_frame_and_exits() {
    let hello = protocol::RequestHeader {
        id: 1,
        request: protocol::Request::Hello {
            version: protocol::PROTOCOL_VERSION,
            root: "/tmp".into(),
        },
    };
    let mut input = protocol::encode(&hello, &[]).unwrap();
    // A data part of 4 GiB - 1 announced: refused from the prefix.
    input.extend(8u32.to_be_bytes());
    input.extend(u32::MAX.to_be_bytes());
    let out = run_helper_with_input(&input);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("over the limit"), "{stderr}");
}

#[test]
fn a_killed_helper_is_reported_and_replaced() {
    let t = tempfile::tempdir().unwrap();
    let p = pool(t.path(), 1, Duration::from_secs(30));
    p.ping().unwrap();
    let pids = p.idle_pids();
    assert_eq!(pids.len(), 1);
    signal(pids[0], "KILL");
    // Our child: a zombie until the pool's reaper waits for it.
    assert!(wait_until(Duration::from_secs(10), || {
        depot_testkit::process::process_state(pids[0]).is_none_or(|s| s == 'Z')
    }));
    let e = p.stat("").unwrap_err();
    assert!(matches!(e, FsProcError::HelperDied { .. }), "{e}");
    assert!(e.to_string().contains("signal: 9"), "{e}");
    // The next call gets a fresh helper.
    assert_eq!(p.stat("").unwrap().kind, FileKind::Dir);
    let now = p.idle_pids();
    assert_eq!(now.len(), 1);
    assert_ne!(now[0], pids[0]);
    assert_eq!(p.health().started, 2);
    assert!(wait_until(Duration::from_secs(10), || !pid_alive(pids[0])));
}

#[test]
fn a_helper_that_misses_its_deadline_is_killed_and_replaced() {
    let t = tempfile::tempdir().unwrap();
    let p = pool(t.path(), 2, Duration::from_millis(500));
    p.ping().unwrap();
    let stopped = p.idle_pids()[0];
    // A stopped process answers nothing, like one stuck in a mount, but
    // SIGKILL ends it at once.
    signal(stopped, "STOP");
    let t0 = Instant::now();
    let e = p.stat("").unwrap_err();
    let took = t0.elapsed();
    assert!(e.is_timeout(), "{e}");
    assert!(took >= Duration::from_millis(500), "{took:?}");
    assert!(took < Duration::from_secs(5), "{took:?}");
    assert!(e.to_string().contains("no answer within 500ms"), "{e}");
    let h = p.health();
    assert!(
        h.trouble_since.is_some() && h.last_timeout.is_some(),
        "{h:?}"
    );
    // The killed helper is reaped, and the mount is fine again after a call.
    assert!(
        wait_until(Duration::from_secs(10), || p.health().stuck == 0),
        "{:?}",
        p.health()
    );
    assert!(!pid_alive(stopped));
    p.ping().unwrap();
    let h = p.health();
    assert_eq!((h.stuck, h.trouble_since, h.started), (0, None, 2), "{h:?}");
}

#[test]
fn a_busy_helper_does_not_hold_up_a_call_on_another() {
    let t = tempfile::tempdir().unwrap();
    let p = pool(t.path(), 2, Duration::from_secs(5));
    p.ping().unwrap();
    let first = p.idle_pids()[0];
    signal(first, "STOP");
    let blocked = {
        let p = p.clone();
        std::thread::spawn(move || p.stat(""))
    };
    assert!(wait_until(Duration::from_secs(10), || p.health().busy == 1));
    // The stopped helper is busy with the other thread's call: this one
    // starts a second helper and is answered long before that deadline.
    let t0 = Instant::now();
    assert_eq!(p.stat("").unwrap().kind, FileKind::Dir);
    assert!(t0.elapsed() < Duration::from_secs(4), "{:?}", t0.elapsed());
    let e = blocked.join().unwrap().unwrap_err();
    assert!(e.is_timeout(), "{e}");
    assert_eq!(p.health().started, 2);
}

/// The descriptors a process has open, from /proc.
fn open_fds(pid: u32) -> Vec<i32> {
    let mut fds: Vec<i32> = fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    fds.sort();
    fds
}

#[test]
fn a_helper_keeps_no_inherited_descriptor() {
    // A descriptor without O_CLOEXEC, as a listening socket or a lock file
    // of depotd's could be: the helper would inherit it through exec.
    let leaked = nix::fcntl::open(
        "/dev/null",
        nix::fcntl::OFlag::O_RDONLY,
        nix::sys::stat::Mode::empty(),
    )
    .unwrap();
    let t = tempfile::tempdir().unwrap();
    let p = pool(t.path(), 1, Duration::from_secs(30));
    p.ping().unwrap();
    let helper = p.idle_pids()[0];
    assert_eq!(
        open_fds(helper),
        vec![0, 1, 2],
        "fd {leaked} leaked into the helper"
    );
    nix::unistd::close(leaked).unwrap();
}

/// Child process: starts a helper from a thread that then ends, checks
/// that the helper outlived that thread, writes the helper's pid to the
/// marker file, and waits to be killed.
#[test]
#[ignore = "run by a_helper_dies_with_its_parent_not_with_a_thread in a child process"]
fn child_keeps_a_helper() {
    let (root, mark) = child_env();
    let p = pool(&root, 1, Duration::from_secs(30));
    let first = {
        let p = p.clone();
        std::thread::spawn(move || {
            p.ping().unwrap();
            p.idle_pids()[0]
        })
        .join()
        .unwrap()
    };
    std::thread::sleep(Duration::from_millis(300));
    p.ping().unwrap();
    assert_eq!(
        p.idle_pids(),
        vec![first],
        "the helper died with the thread that started it"
    );
    assert_eq!(p.health().started, 1);
    fs::write(mark, first.to_string()).unwrap();
    std::thread::sleep(Duration::from_secs(600));
}

#[test]
fn a_helper_dies_with_its_parent_not_with_a_thread() {
    let t = tempfile::tempdir().unwrap();
    let mark = t.path().join("helper-pid");
    let mut child = start_child("child_keeps_a_helper", t.path(), &mark);
    let mut ended = None;
    let got_pid = wait_until(Duration::from_secs(60), || {
        ended = ended.or_else(|| child.try_wait().unwrap());
        fs::read_to_string(&mark).is_ok_and(|s| !s.is_empty()) || ended.is_some()
    }) && ended.is_none();
    if !got_pid {
        let _ = child.kill();
        panic!("the child wrote no helper pid: {:?}", child.wait().unwrap());
    }
    let helper: u32 = fs::read_to_string(&mark).unwrap().parse().unwrap();
    assert!(pid_alive(helper));
    // Stopped, it cannot see its stdin end: only PR_SET_PDEATHSIG (a
    // SIGKILL from the kernel) ends it with its parent, as it must end a
    // helper busy in a call when depotd dies.
    signal(helper, "STOP");
    child.kill().unwrap();
    child.wait().unwrap();
    let gone = wait_until(Duration::from_secs(10), || !pid_alive(helper));
    if !gone {
        signal(helper, "KILL");
    }
    assert!(gone, "helper {helper} outlived its parent");
}

/// The env var that makes the `child_*` tests below do their work: they
/// are child processes of the GlusterFS test, not tests of their own.
const CHILD_ROOT_ENV: &str = "DEPOT_FSPROC_TEST_CHILD_ROOT";
const CHILD_MARK_ENV: &str = "DEPOT_FSPROC_TEST_CHILD_MARK";

/// Child process: a stat on the frozen mount through a pool, then return
/// (exit). Writes the marker file once the stat timed out. Not a test of
/// its own: ignored, so no tier runs it, and run without the parent's
/// environment it fails instead of passing.
#[test]
#[ignore = "run by gluster_frozen_brick_is_contained in a child process"]
fn child_stat_through_pool() {
    let (root, mark) = child_env();
    let p = pool(&root, 1, Duration::from_secs(1));
    let e = p.stat("child-pool-probe").unwrap_err();
    assert!(e.is_timeout(), "{e}");
    fs::write(mark, b"timed out").unwrap();
}

/// The root and marker file a child test gets from its parent.
fn child_env() -> (PathBuf, PathBuf) {
    let get = |name| {
        std::env::var_os(name)
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                panic!("a child process of another test, which sets {name}: run that test instead")
            })
    };
    (get(CHILD_ROOT_ENV), get(CHILD_MARK_ENV))
}

/// Child process: the same stat through an IoWorker thread.
#[test]
#[ignore = "run by gluster_frozen_brick_is_contained in a child process"]
fn child_stat_through_io_worker() {
    let (root, mark) = child_env();
    let w = depot_os::IoWorker::new("child", 1);
    let path = root.join("child-worker-probe");
    let e = w
        .run(Duration::from_secs(1), move || fs::metadata(path))
        .unwrap_err();
    assert!(e.is_timeout(), "{e}");
    fs::write(mark, b"timed out").unwrap();
}

fn start_child(test: &str, root: &Path, mark: &Path) -> std::process::Child {
    Command::new(std::env::current_exe().unwrap())
        .args(["--exact", test, "--include-ignored", "--test-threads=1"])
        .env(CHILD_ROOT_ENV, root)
        .env(CHILD_MARK_ENV, mark)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .unwrap()
}

/// Waits for the child to exit within `limit`; its status if it did.
fn exits_within(
    child: &mut std::process::Child,
    limit: Duration,
) -> Option<std::process::ExitStatus> {
    let mut status = None;
    wait_until(limit, || {
        status = child.try_wait().unwrap();
        status.is_some()
    });
    status
}

/// GlusterFS without strict-o-direct reports an unaligned O_DIRECT write
/// only at close: a streamed write's close says so.
fn close_reports_late_direct_errors(
    g: &depot_testkit::gluster::Gluster,
    gp: &FsPool,
    timeout: Duration,
) {
    let mut direct = create();
    direct.direct = true;
    g.cli(&[
        "volume",
        "set",
        g.volume(),
        "performance.strict-o-direct",
        "off",
    ])
    .unwrap();
    let mut s = gp.open_write("unaligned", direct, timeout).unwrap();
    s.write(0, &[1u8; 1000]).unwrap();
    let e = s.close(true).unwrap_err();
    assert_eq!(e.errno(), Some(libc::EINVAL), "{e}");
    g.cli(&[
        "volume",
        "set",
        g.volume(),
        "performance.strict-o-direct",
        "on",
    ])
    .unwrap();
}

/// A process that used only a pool on the frozen mount exits at once; one
/// whose IoWorker thread entered it cannot exit while the brick is frozen.
/// The second child, for the caller to see it exit after the thaw.
fn children_on_the_frozen_mount(dir: &Path, mount: &Path) -> std::process::Child {
    let pool_mark = dir.join("pool-mark");
    let worker_mark = dir.join("worker-mark");
    let mut pool_child = start_child("child_stat_through_pool", mount, &pool_mark);
    let mut worker_child = start_child("child_stat_through_io_worker", mount, &worker_mark);
    assert!(wait_until(Duration::from_secs(60), || pool_mark.exists()
        && worker_mark.exists()));
    let marked = Instant::now();
    let status = exits_within(&mut pool_child, Duration::from_secs(10));
    eprintln!(
        "the pool child exited {:?} after its stat timed out",
        marked.elapsed()
    );
    assert!(
        status.is_some_and(|s| s.success()),
        "pool child: {status:?}"
    );
    let status = exits_within(&mut worker_child, Duration::from_secs(3));
    assert!(
        status.is_none(),
        "the IoWorker child exited while its thread was in the mount?"
    );
    worker_child
}

#[test]
#[cfg_attr(not(depot_root_tier), ignore = "needs the root tier")]
fn gluster_frozen_brick_is_contained() {
    depot_testkit::require_root();
    depot_testkit::require_program("glusterd");
    let g = depot_testkit::gluster::Gluster::start().expect("start gluster");
    let t = tempfile::tempdir().unwrap();
    let mount = g.mount(&t.path().join("gl")).expect("mount the volume");
    let local = tempfile::tempdir().unwrap();
    let timeout = Duration::from_secs(2);
    let gp = pool(mount.path(), 2, timeout);
    let lp = pool(local.path(), 2, timeout);
    gp.write_atomic("probe", b"data", 0o644).unwrap();
    assert_eq!(gp.read("probe", 0, 4, false).unwrap(), b"data");

    close_reports_late_direct_errors(&g, &gp, timeout);
    let mut direct = create();
    direct.direct = true;
    // A stream open when the storage freezes: its next step times out
    // (direct, so that no write-behind cache answers for the brick).
    let stream_pool = pool(mount.path(), 1, timeout);
    let mut stream = stream_pool.open_write("streamed", direct, timeout).unwrap();
    stream.write(0, &[1u8; 4096]).unwrap();

    let frozen = g.freeze_brick().expect("freeze the brick");
    eprintln!("brick {:?} stopped", frozen.pids());
    // Each stat looks up a new name: nothing cached can answer it.
    for (i, name) in ["missing-1", "missing-2"].into_iter().enumerate() {
        let t0 = Instant::now();
        let e = gp.stat(name).unwrap_err();
        let took = t0.elapsed();
        assert!(e.is_timeout(), "{e}");
        eprintln!("stat {name} on the frozen mount: {e} ({took:?})");
        assert!(
            took >= timeout && took < timeout + Duration::from_secs(3),
            "{took:?}"
        );
        assert_eq!(gp.health().stuck, i + 1, "{:?}", gp.health());
    }
    let t0 = Instant::now();
    let e = stream.write(4096, &[2u8; 4096]).unwrap_err();
    assert!(e.is_timeout(), "{e}");
    eprintln!("stream step timed out after {:?}", t0.elapsed());
    assert!(
        stream.write(8192, &[3u8; 4096]).is_err(),
        "a failed stream goes on"
    );
    drop(stream);
    assert_eq!(stream_pool.health().stuck, 1);
    // All helpers stuck: refused at once, no new process.
    let started = gp.health().started;
    let t0 = Instant::now();
    let e = gp.stat("missing-3").unwrap_err();
    assert!(e.is_hung(), "{e}");
    eprintln!("then: {e} after {:?}", t0.elapsed());
    assert!(t0.elapsed() < Duration::from_secs(1), "{:?}", t0.elapsed());
    let h = gp.health();
    assert_eq!(
        (h.started, h.stuck, h.idle, h.busy),
        (started, 2, 0, 0),
        "{h:?}"
    );
    assert!(h.trouble_since.is_some(), "{h:?}");
    // Another mount's pool does not notice.
    lp.write_atomic("x", b"1", 0o644).unwrap();
    assert_eq!(lp.stat("x").unwrap().size, 1);

    let mut worker_child = children_on_the_frozen_mount(t.path(), mount.path());

    // Thawed: the stuck helpers exit, and the next call gets a fresh one.
    frozen.thaw();
    assert!(
        wait_until(Duration::from_secs(120), || gp.health().stuck == 0),
        "{:?}",
        gp.health()
    );
    assert_eq!(gp.read("probe", 0, 4, false).unwrap(), b"data");
    let h = gp.health();
    assert_eq!((h.started, h.trouble_since), (started + 1, None), "{h:?}");
    let thawed = Instant::now();
    let status = exits_within(&mut worker_child, Duration::from_secs(120));
    eprintln!(
        "the IoWorker child exited {:?} after the thaw",
        thawed.elapsed()
    );
    assert!(
        status.is_some(),
        "the IoWorker child did not exit after the thaw"
    );
}

/// `stat` carries the allocated blocks (a sparse file's true size) and the
/// change time, through a helper; a reply of a helper that did not send
/// them still parses (0).
#[test]
fn stat_reports_blocks_and_ctime() {
    let t = tempfile::tempdir().unwrap();
    let p = pool(t.path(), 1, Duration::from_secs(30));
    let f = fs::File::create(t.path().join("sparse")).unwrap();
    f.set_len(64 << 20).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, &[1u8; 8192], 0).unwrap();
    drop(f);
    let md = fs::metadata(t.path().join("sparse")).unwrap();
    let st = p.stat("sparse").unwrap();
    assert_eq!(st.size, 64 << 20);
    assert_eq!(st.blocks, md.blocks());
    assert!(st.blocks > 0 && st.blocks * 512 < st.size, "{st:?}");
    assert_eq!(st.ctime_s, md.ctime());

    let old = r#"{"kind":"file","size":1,"mode":420,"uid":0,"gid":0,"nlink":1,"ino":2,"dev":3,"mtime_s":4,"mtime_ns":5}"#;
    let st: protocol::StatInfo = serde_json::from_str(old).unwrap();
    assert_eq!((st.blocks, st.ctime_s), (0, 0));
}

/// A streamed write's helper does not count against `max_helpers`: with
/// one helper per mount, a call made while a stream is open (an OVF
/// upload stats and chowns its staging file with the stream open) is
/// served at once instead of waiting for the stream.
#[test]
fn a_call_never_waits_for_a_stream_s_helper() {
    let t = tempfile::tempdir().unwrap();
    let p = pool(t.path(), 1, Duration::from_secs(20));
    let mut s = p
        .open_write("s", create(), Duration::from_secs(20))
        .unwrap();
    s.write(0, b"one").unwrap();
    let t0 = Instant::now();
    assert_eq!(p.stat("s").unwrap().size, 3);
    assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
    let h = p.health();
    assert_eq!((h.streams, h.busy), (1, 0), "{h:?}");
    s.close(true).unwrap();
    let h = p.health();
    assert_eq!((h.streams, h.busy, h.stuck), (0, 0, 0), "{h:?}");
}

/// `filefrag -v` of a file: its extents' physical offsets, and whether any
/// is unwritten (`FALLOC_FL_ZERO_RANGE`'s mark, which leaves the old data
/// on the disk). `None` where the file system is not ext4 or filefrag is
/// missing.
fn extents(path: &Path) -> Option<(Vec<String>, bool)> {
    let out = Command::new("filefrag").arg("-v").arg(path).output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() || !text.contains("Filesystem type is: ef53") {
        return None;
    }
    let rows: Vec<&str> = text
        .lines()
        .filter(|l| l.trim_start().starts_with(|c: char| c.is_ascii_digit()))
        .collect();
    let physical = rows
        .iter()
        .filter_map(|l| l.split(':').nth(2).map(|p| p.trim().to_owned()))
        .collect();
    Some((physical, rows.iter().any(|l| l.contains("unwritten"))))
}

/// A wipe writes the zeros in the helper, over the very blocks of the
/// data (no hole punched, no extent marked unwritten: the old bytes do
/// not stay on the disk), and with `only_nonzero` leaves the units that
/// read as zeros alone (a hole stays a hole).
#[test]
fn wipe_overwrites_the_data_in_the_helper() {
    let t = tempfile::tempdir().unwrap();
    let p = pool(t.path(), 1, Duration::from_secs(30));
    // Dense: 10 MiB + 4 KiB (the last unit short) of 0x55.
    let len = (10 << 20) + 4096;
    fs::write(t.path().join("dense"), vec![0x55u8; len]).unwrap();
    let f = fs::File::open(t.path().join("dense")).unwrap();
    f.sync_all().unwrap();
    let before = fs::metadata(t.path().join("dense")).unwrap();
    let extents_before = extents(&t.path().join("dense"));
    assert_eq!(p.wipe("dense", 0, len as u64, false).unwrap(), len as u64);
    let after = fs::metadata(t.path().join("dense")).unwrap();
    assert_eq!(after.len(), before.len());
    assert_eq!(after.blocks(), before.blocks(), "nothing punched");
    let data = fs::read(t.path().join("dense")).unwrap();
    assert!(data.iter().all(|&b| b == 0), "not all zeros");
    match (extents_before, extents(&t.path().join("dense"))) {
        (Some((phys_before, _)), Some((phys_after, unwritten))) => {
            assert!(!unwritten, "an extent is only marked unwritten");
            assert_eq!(phys_before, phys_after, "not overwritten in place");
        }
        _ => eprintln!("not ext4 (or no filefrag): extents not checked"),
    }

    // Part of a file: only the range, and only_nonzero on a sparse file.
    let sparse = t.path().join("sparse");
    let f = fs::File::create(&sparse).unwrap();
    f.set_len(64 << 20).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, &vec![0x66u8; 3 << 20], 0).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, &vec![0x77u8; 1 << 20], 40 << 20).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, &[0x88u8], 63 << 20).unwrap();
    f.sync_all().unwrap();
    drop(f);
    let blocks = fs::metadata(&sparse).unwrap().blocks();
    // Up to 63 MiB: 3 units of data and the one at 40 MiB.
    assert_eq!(p.wipe("sparse", 0, 63 << 20, true).unwrap(), 4 << 20);
    let data = fs::read(&sparse).unwrap();
    assert!(data[..63 << 20].iter().all(|&b| b == 0));
    assert_eq!(data[63 << 20], 0x88, "past the range: untouched");
    assert!(
        fs::metadata(&sparse).unwrap().blocks() <= blocks,
        "the holes were filled"
    );
}

/// A wipe over the cap per call, or not aligned, is refused before
/// anything is written; a missing file is NotFound; a symlink is refused.
#[test]
fn wipe_refuses_what_it_must_not_do() {
    let t = tempfile::tempdir().unwrap();
    let p = pool(t.path(), 1, Duration::from_secs(30));
    let f = fs::File::create(t.path().join("f")).unwrap();
    f.set_len(protocol::MAX_WIPE_BYTES + (1 << 20)).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, &[1u8; 4096], 0).unwrap();
    drop(f);
    let too_long = p
        .wipe("f", 0, protocol::MAX_WIPE_BYTES + 4096, false)
        .unwrap_err();
    assert_eq!(
        too_long.io_kind(),
        Some(std::io::ErrorKind::InvalidInput),
        "{too_long}"
    );
    for (offset, len) in [(100, 4096), (0, 1000)] {
        let e = p.wipe("f", offset, len, false).unwrap_err();
        assert_eq!(e.io_kind(), Some(std::io::ErrorKind::InvalidInput), "{e}");
    }
    let mut head = vec![0u8; 4096];
    std::os::unix::fs::FileExt::read_exact_at(
        &fs::File::open(t.path().join("f")).unwrap(),
        &mut head,
        0,
    )
    .unwrap();
    assert!(head.iter().all(|&b| b == 1), "a refused wipe wrote");
    let e = p.wipe("missing", 0, 4096, false).unwrap_err();
    assert_eq!(e.io_kind(), Some(std::io::ErrorKind::NotFound), "{e}");
    symlink(t.path().join("f"), t.path().join("link")).unwrap();
    let e = p.wipe("link", 0, 4096, false).unwrap_err();
    assert!(e.refusal().is_some(), "{e}");
    // The helper answered every refusal and is still the same one.
    assert_eq!(p.health().started, 1);
}

/// A batch of reads is one round trip: each item answered as it would be
/// alone (its data, or its error with the errno and the item's path).
#[test]
fn a_batch_of_reads_is_one_call_with_each_answer() {
    use protocol::{Reply, Request};
    let t = tempfile::tempdir().unwrap();
    fs::create_dir(t.path().join("img")).unwrap();
    fs::write(t.path().join("img/a.meta"), b"CAP=1\nEOF\n").unwrap();
    fs::write(t.path().join("img/a"), vec![7u8; 8192]).unwrap();
    let p = pool(t.path(), 1, Duration::from_secs(30));
    p.ping().unwrap();
    let calls = p.health().calls;
    let items = [
        Request::Listdir {
            path: "img".into(),
            max_entries: 100,
        },
        Request::Read {
            path: "img/a.meta".into(),
            offset: 0,
            len: 65,
            direct: false,
        },
        Request::Read {
            path: "img/missing.meta".into(),
            offset: 0,
            len: 65,
            direct: false,
        },
        Request::Lstat {
            path: "img/a".into(),
        },
        Request::Read {
            path: "img/a".into(),
            offset: 4096,
            len: 4096,
            direct: true,
        },
        Request::Exists {
            path: "img/b".into(),
        },
    ];
    let answers = p.batch(&items).unwrap();
    assert_eq!(p.health().calls, calls + 1, "one round trip");
    assert_eq!(answers.len(), items.len());
    let mut it = answers.into_iter();
    match it.next().unwrap().unwrap() {
        (Reply::Listing { entries, truncated }, d) => {
            let mut names: Vec<_> = entries.into_iter().map(|e| e.name).collect();
            names.sort();
            assert_eq!(
                (names, truncated, d.len()),
                (vec!["a".into(), "a.meta".to_string()], false, 0)
            );
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        it.next().unwrap().unwrap(),
        (Reply::Data, b"CAP=1\nEOF\n".to_vec())
    );
    let e = it.next().unwrap().unwrap_err();
    assert_eq!(e.errno(), Some(libc::ENOENT), "{e}");
    assert!(e.to_string().contains("img/missing.meta"), "{e}");
    match it.next().unwrap().unwrap() {
        (Reply::Stat { stat }, d) => {
            assert_eq!((stat.kind, stat.size, d.len()), (FileKind::File, 8192, 0))
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(it.next().unwrap().unwrap(), (Reply::Data, vec![7u8; 4096]));
    assert_eq!(
        it.next().unwrap().unwrap(),
        (Reply::Exists { exists: false }, vec![])
    );

    // The same answers in process.
    let local = FsPool::in_process(t.path().to_owned(), Duration::from_secs(30));
    let here = local.batch(&items).unwrap();
    assert_eq!(here.len(), items.len());
    assert_eq!(
        here[1].as_ref().unwrap(),
        &(Reply::Data, b"CAP=1\nEOF\n".to_vec())
    );
    assert_eq!(here[2].as_ref().unwrap_err().errno(), Some(libc::ENOENT));
}

/// What may not be in a batch is refused whole, before anything is made:
/// a write, a nested batch, too many items, reads that could return more
/// than a frame; the helper answers and lives on.
#[test]
fn a_batch_refuses_writes_nesting_and_excess() {
    use protocol::Request;
    let t = tempfile::tempdir().unwrap();
    let p = pool(t.path(), 1, Duration::from_secs(30));
    let stat = Request::Stat { path: "".into() };
    let write = Request::Mkdir {
        path: "made".into(),
        mode: 0o755,
        sync_dir: false,
    };
    let nested = Request::Batch {
        items: vec![stat.clone()],
    };
    let big_read = |len| Request::Read {
        path: "f".into(),
        offset: 0,
        len,
        direct: false,
    };
    for items in [
        vec![stat.clone(), write.clone()],
        vec![nested.clone()],
        vec![stat.clone(); protocol::MAX_BATCH_ITEMS + 1],
    ] {
        let e = p.batch(&items).unwrap_err();
        assert_eq!(e.io_kind(), Some(std::io::ErrorKind::InvalidInput), "{e}");
    }
    // The helper itself refuses them too (frames a client could send).
    let hello = protocol::RequestHeader {
        id: 1,
        request: Request::Hello {
            version: protocol::PROTOCOL_VERSION,
            root: t.path().to_string_lossy().into_owned(),
        },
    };
    let mut input = protocol::encode(&hello, &[]).unwrap();
    let frames = [
        Request::Batch {
            items: vec![stat.clone(), write],
        },
        Request::Batch {
            items: vec![nested],
        },
        Request::Batch {
            items: vec![big_read(protocol::MAX_DATA_BYTES), big_read(1)],
        },
        Request::Ping,
    ];
    for (i, request) in frames.into_iter().enumerate() {
        let header = protocol::RequestHeader {
            id: i as u64 + 2,
            request,
        };
        input.extend(protocol::encode(&header, &[]).unwrap());
    }
    let out = run_helper_with_input(&input);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let mut replies = &out.stdout[..];
    let _hello: (protocol::ReplyHeader, Vec<u8>) = protocol::read_frame(&mut replies).unwrap();
    for id in 2..=4 {
        let (reply, _): (protocol::ReplyHeader, Vec<u8>) =
            protocol::read_frame(&mut replies).unwrap();
        assert_eq!(reply.id, id);
        let err = reply.result.unwrap_err();
        assert!(err.invalid, "{err:?}");
    }
    let (pong, _): (protocol::ReplyHeader, Vec<u8>) = protocol::read_frame(&mut replies).unwrap();
    assert_eq!(pong.result, Ok(protocol::Reply::Pong));
    assert!(
        !t.path().join("made").exists(),
        "a refused batch made something"
    );

    // More items than the cap: a malformed frame, refused while parsed.
    let many = format!(
        r#"{{"id":9,"request":{{"op":"batch","items":[{}]}}}}"#,
        vec![r#"{"op":"ping"}"#; protocol::MAX_BATCH_ITEMS + 1].join(",")
    );
    let mut input = protocol::encode(&hello, &[]).unwrap();
    input.extend((many.len() as u32).to_be_bytes());
    input.extend(0u32.to_be_bytes());
    input.extend(many.as_bytes());
    let out = run_helper_with_input(&input);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("more than 64"), "{stderr}");
}

/// Bytes that differ from piece to piece and within one (a piece written
/// at the wrong place, or a stale buffer, shows).
fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i % 251) as u8 ^ seed ^ (i >> 12) as u8)
        .collect()
}

/// Whether process `pid` maps a stream's shared buffer.
fn maps_shared_buffer(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/maps"))
        .unwrap()
        .contains("memfd:depot-fsproc-stream")
}

/// Writes of [`depot_os::fsproc::SHARED_MIN`] bytes or more go through the
/// stream's shared buffer (the helper maps it), and land byte for byte:
/// odd offsets and lengths (buffered), aligned pieces (`O_DIRECT`), a
/// larger piece that grows the buffer, a short write after a long one
/// (the buffer's stale tail is not written), small writes on the pipe in
/// between; the same in process.
#[test]
fn streamed_writes_through_the_shared_buffer_land_byte_for_byte() {
    let t = tempfile::tempdir().unwrap();
    let p = pool(t.path(), 1, Duration::from_secs(30));
    p.ping().unwrap();
    let helper = p.idle_pids()[0];
    assert!(!maps_shared_buffer(helper));
    shared_writes(&p, t.path(), Some(helper));
    // The helper gave its buffers back with the streams.
    assert!(!maps_shared_buffer(helper));
    assert_eq!(p.health().started, 1);

    let t = tempfile::tempdir().unwrap();
    let local = FsPool::in_process(t.path().to_owned(), Duration::from_secs(30));
    shared_writes(&local, t.path(), None);
}

fn shared_writes(p: &FsPool, root: &Path, helper: Option<u32>) {
    let min = depot_os::fsproc::SHARED_MIN;
    // Buffered: any offset, any length.
    let mut s = p
        .open_write("odd", create(), Duration::from_secs(30))
        .unwrap();
    let pieces: [(u64, usize, u8); 5] = [
        (3, min + 1, 1),
        (3 + min as u64 + 1, (1 << 20) + 7, 2),
        (5 << 20, 100, 3),
        ((5 << 20) + 100, (3 << 20) + 4093, 4),
        ((8 << 20) + 4193, min, 5),
    ];
    let mut expected = vec![0u8; (8 << 20) + 4193 + min];
    for (offset, len, seed) in pieces {
        let data = pattern(seed, len);
        assert_eq!(s.write(offset, &data).unwrap(), len as u64);
        expected[offset as usize..offset as usize + len].copy_from_slice(&data);
        if let Some(pid) = helper {
            assert!(
                len < min || maps_shared_buffer(pid),
                "a write of {len} bytes did not map a shared buffer"
            );
        }
    }
    s.close(true).unwrap();
    assert!(fs::read(root.join("odd")).unwrap() == expected);

    // O_DIRECT from the helper's mapping: aligned pieces, the buffer
    // grown for a 2 MiB one, and a last one shorter than the buffer.
    let direct = OpenWrite {
        direct: true,
        ..create()
    };
    let mut s = p
        .open_write("direct", direct, Duration::from_secs(30))
        .unwrap();
    let mut expected = Vec::new();
    for (len, seed) in [
        (1 << 20, 6),
        (1 << 20, 7),
        (2 << 20, 8),
        (1 << 20, 9),
        (69632, 10),
    ] {
        let data = pattern(seed, len);
        s.write(expected.len() as u64, &data).unwrap();
        expected.extend_from_slice(&data);
    }
    s.close(true).unwrap();
    assert!(fs::read(root.join("direct")).unwrap() == expected);
}

/// A sealed memory file of `len` bytes holding `pattern(seed)`, made by
/// this process (the helper's parent), and its descriptor.
fn sealed_memfd(len: usize, seed: u8) -> std::os::fd::OwnedFd {
    use nix::fcntl::{fcntl, FcntlArg, SealFlag};
    use nix::sys::memfd::{memfd_create, MemFdCreateFlag};
    use std::os::fd::AsRawFd;
    let fd = memfd_create(
        c"test-shared",
        MemFdCreateFlag::MFD_CLOEXEC | MemFdCreateFlag::MFD_ALLOW_SEALING,
    )
    .unwrap();
    let mut f = fs::File::from(fd);
    std::io::Write::write_all(&mut f, &pattern(seed, len)).unwrap();
    fcntl(
        f.as_raw_fd(),
        FcntlArg::F_ADD_SEALS(SealFlag::F_SEAL_SHRINK | SealFlag::F_SEAL_GROW),
    )
    .unwrap();
    f.into()
}

/// The helper checks what a `stream_share` and a `stream_write_shared`
/// name against what it mapped: a range outside the buffer (past its end,
/// overflowing, a handle without a buffer), a descriptor that is not a
/// sealed memory file or is smaller than said, a buffer over the frame
/// limit; each is refused as invalid, nothing is written, and the helper
/// serves on. The same in process.
#[test]
fn a_bad_shared_buffer_or_range_is_refused_and_writes_nothing() {
    let t = tempfile::tempdir().unwrap();
    let p = pool(t.path(), 1, Duration::from_secs(30));
    p.ping().unwrap();
    let helper = p.idle_pids()[0];
    bad_shared_requests(&p, t.path());
    assert_eq!(p.idle_pids(), vec![helper], "the helper served on");

    let t = tempfile::tempdir().unwrap();
    let local = FsPool::in_process(t.path().to_owned(), Duration::from_secs(30));
    bad_shared_requests(&local, t.path());
}

fn bad_shared_requests(p: &FsPool, root: &Path) {
    use protocol::{Reply, Request};
    use std::os::fd::AsRawFd;
    let timeout = Duration::from_secs(30);
    let open = Request::StreamOpen {
        path: "f".into(),
        open: create(),
    };
    let handle = match p.call(&open, &[], timeout).unwrap() {
        (Reply::Handle { handle }, _) => handle,
        other => panic!("{other:?}"),
    };
    let invalid = |request: Request| {
        let e = p.call(&request, &[], timeout).unwrap_err();
        assert_eq!(
            e.io_kind(),
            Some(std::io::ErrorKind::InvalidInput),
            "{request:?}: {e}"
        );
        assert_eq!(
            fs::metadata(root.join("f")).unwrap().len(),
            0,
            "{request:?}"
        );
    };
    let write = |offset: u64, at: u64, len: u32| Request::StreamWriteShared {
        handle,
        offset,
        at,
        len,
    };
    // No buffer yet.
    invalid(write(0, 0, 1));

    let len = 64 << 10;
    let memfd = sealed_memfd(len, 1);
    let fd = memfd.as_raw_fd();
    let share = |fd: i32, len: u64| Request::StreamShare { handle, fd, len };
    // Not a memory file; a memory file not sealed; more than it holds;
    // more than a frame; a descriptor that is not open; nothing.
    let plain = fs::File::create(root.join("plain")).unwrap();
    plain.set_len(len as u64).unwrap();
    invalid(share(plain.as_raw_fd(), len as u64));
    let unsealed =
        nix::sys::memfd::memfd_create(c"t", nix::sys::memfd::MemFdCreateFlag::MFD_CLOEXEC).unwrap();
    nix::unistd::ftruncate(&unsealed, len as i64).unwrap();
    invalid(share(unsealed.as_raw_fd(), len as u64));
    invalid(share(fd, len as u64 + 1));
    invalid(share(fd, u64::from(protocol::MAX_DATA_BYTES) + 1));
    invalid(share(-1, len as u64));
    invalid(share(fd, 0));
    let e = p
        .call(&share(999_999, len as u64), &[], timeout)
        .unwrap_err();
    assert_eq!(e.errno(), Some(libc::ENOENT), "{e}");
    // Still no buffer.
    invalid(write(0, 0, 1));

    // Mapped: ranges past its end, or whose end overflows, are refused.
    assert_eq!(
        p.call(&share(fd, len as u64), &[], timeout).unwrap().0,
        Reply::Done
    );
    let l = len as u64;
    for (at, n) in [
        (0, len as u32 + 1),
        (l, 1),
        (l - 1, 2),
        (1, len as u32),
        (u64::MAX, 2),
        (u64::MAX - 10, 20),
        (l + 4096, 0),
    ] {
        invalid(write(0, at, n));
    }
    // Another handle's buffer is not this one's.
    invalid(Request::StreamWriteShared {
        handle: handle + 1,
        offset: 0,
        at: 0,
        len: 1,
    });
    // In range: written, up to the last byte of the buffer.
    let (reply, _) = p.call(&write(5, l - 3, 3), &[], timeout).unwrap();
    assert_eq!(reply, Reply::Written { len: 3 });
    let close = Request::StreamClose {
        handle,
        fsync: false,
    };
    p.call(&close, &[], timeout).unwrap();
    let mut expected = vec![0u8; 5];
    expected.extend_from_slice(&pattern(1, len)[len - 3..]);
    assert_eq!(fs::read(root.join("f")).unwrap(), expected);
}

/// A stream's helper killed after it mapped the shared buffer: the next
/// write gets the stream's usual error (the helper died), the stream
/// writes no more, and the mount's next stream gets a fresh helper and a
/// buffer of its own.
#[test]
fn a_killed_helper_mid_stream_fails_the_stream_with_the_usual_error() {
    let t = tempfile::tempdir().unwrap();
    let p = pool(t.path(), 1, Duration::from_secs(30));
    p.ping().unwrap();
    let helper = p.idle_pids()[0];
    let direct = OpenWrite {
        direct: true,
        ..create()
    };
    let mut s = p.open_write("f", direct, Duration::from_secs(30)).unwrap();
    s.write(0, &pattern(1, 1 << 20)).unwrap();
    assert!(maps_shared_buffer(helper));
    signal(helper, "KILL");
    assert!(wait_until(Duration::from_secs(10), || {
        depot_testkit::process::process_state(helper).is_none_or(|st| st == 'Z')
    }));
    let e = s.write(1 << 20, &pattern(2, 1 << 20)).unwrap_err();
    assert!(matches!(e, FsProcError::HelperDied { .. }), "{e}");
    assert!(e.to_string().contains("signal: 9"), "{e}");
    let e = s.write(2 << 20, &pattern(3, 1 << 20)).unwrap_err();
    assert!(e.to_string().contains("already failed"), "{e}");
    drop(s);
    assert!(fs::read(t.path().join("f")).unwrap() == pattern(1, 1 << 20));
    let h = p.health();
    assert_eq!((h.streams, h.busy), (0, 0), "{h:?}");

    let mut s = p.open_write("g", direct, Duration::from_secs(30)).unwrap();
    s.write(0, &pattern(4, 1 << 20)).unwrap();
    s.close(true).unwrap();
    assert!(fs::read(t.path().join("g")).unwrap() == pattern(4, 1 << 20));
    let now = p.idle_pids();
    assert_eq!(now.len(), 1);
    assert_ne!(now[0], helper);
    assert!(!maps_shared_buffer(now[0]), "closed: unmapped");
}

#[test]
fn a_failed_stream_step_names_its_file() {
    let t = tempfile::tempdir_in("/var/tmp").unwrap();
    let p = pool(t.path(), 1, Duration::from_secs(30));
    let direct = OpenWrite {
        direct: true,
        ..create()
    };
    p.write("probe", 0, &[0u8; 4096], create(), false).unwrap();
    // /var/tmp is on the root file system (ext4 here and in CI), which
    // refuses an unaligned O_DIRECT write.
    let probe = p.direct_probe("probe").unwrap();
    assert!(probe.supported, "/var/tmp must take O_DIRECT: {probe:?}");
    // An unaligned O_DIRECT write fails with EINVAL, on the pipe (a small
    // piece) and through the shared buffer (a large one).
    for len in [4096, 1 << 20] {
        let mut s = p
            .open_write("unaligned", direct, Duration::from_secs(30))
            .unwrap();
        let e = s.write(1, &vec![1u8; len]).unwrap_err();
        assert_eq!(e.errno(), Some(libc::EINVAL), "{e}");
        assert!(e.to_string().contains(" unaligned on "), "{e}");
        drop(s);
        p.unlink("unaligned").unwrap();
    }
}
