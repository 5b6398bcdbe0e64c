//! Processes for test fixtures: running a tool with a timeout, finding
//! and signalling processes through /proc. For tests only: the product's
//! commands go through depot-os's runner.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The machine's host name (`/proc/sys/kernel/hostname`).
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "localhost".into())
}

/// Runs `program ARGS` with a timeout; stdout, or the error with stderr.
pub fn run(program: &str, args: &[&str], timeout: Duration) -> Result<String, String> {
    let shown = || format!("{program} {}", args.join(" "));
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("{}: {e}", shown()))?;
    // Drained on threads, so a chatty tool never blocks on a full pipe.
    let mut out = child.stdout.take().expect("piped");
    let mut err = child.stderr.take().expect("piped");
    let out_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break s,
            Ok(None) if Instant::now() > deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("{} did not end in {timeout:?}", shown()));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(10)),
            Err(e) => return Err(format!("{}: wait: {e}", shown())),
        }
    };
    let stdout = out_reader.join().unwrap_or_default();
    let stderr = err_reader.join().unwrap_or_default();
    if status.success() {
        Ok(stdout)
    } else {
        Err(format!("{} failed ({status}): {}", shown(), stderr.trim()))
    }
}

/// Whether a process is alive: `/proc/<pid>` exists and it is not a zombie.
pub fn pid_alive(pid: u32) -> bool {
    process_state(pid).is_some_and(|s| s != 'Z' && s != 'X')
}

/// The state letter of a process (`R`, `S`, `D`, `T`, `Z`, ...).
pub fn process_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Field 3, after the ")" that ends the command name, is the state.
    stat.rsplit_once(')')?.1.trim_start().chars().next()
}

/// The argv of a process from `/proc/<pid>/cmdline`.
pub fn cmdline(pid: u32) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| {
            b.split(|&c| c == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Live processes whose argv satisfies `pred`.
pub fn find_processes(pred: impl Fn(&[String]) -> bool) -> Vec<u32> {
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    rd.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid != std::process::id() && pid_alive(pid) && pred(&cmdline(pid)))
        .collect()
}

/// Sends `signal` (e.g. "TERM", "STOP") to `pid` with kill(1).
pub fn signal(pid: u32, signal: &str) {
    let _ = run(
        "kill",
        &[&format!("-{signal}"), &pid.to_string()],
        Duration::from_secs(5),
    );
}

/// SIGTERM, wait up to `grace`, then SIGKILL; returns once it is gone
/// (or after another second).
pub fn terminate(pid: u32, grace: Duration) {
    signal(pid, "TERM");
    let deadline = Instant::now() + grace;
    while pid_alive(pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    if pid_alive(pid) {
        signal(pid, "KILL");
        let deadline = Instant::now() + Duration::from_secs(1);
        while pid_alive(pid) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// A thread found waiting inside a file system (see [`threads_waiting`]).
#[derive(Debug, Clone)]
pub struct WaitingThread {
    pub tid: String,
    pub wchan: String,
    /// Its `/proc/<pid>/task/<tid>/stat` line.
    pub stat: String,
}

/// The threads of process `pid` waiting inside a file system: in
/// uninterruptible sleep (`D`), or waiting for a FUSE answer (the kernel
/// first waits for that interruptibly, so such a thread shows `S` with the
/// wchan `request_wait_answer`). Issue 15's tests check that depotd (or a
/// test process driving the storage layer) has none in a frozen mount.
pub fn threads_waiting(pid: u32) -> Vec<WaitingThread> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .flatten()
        .filter_map(|t| {
            let stat = std::fs::read_to_string(t.path().join("stat")).ok()?;
            let wchan = std::fs::read_to_string(t.path().join("wchan")).unwrap_or_default();
            // The state is the field after the command name, which is in
            // parentheses and may contain spaces.
            let state = stat.rsplit_once(") ")?.1.split(' ').next()?.to_owned();
            let in_fuse = wchan == "request_wait_answer" || wchan.starts_with("fuse");
            (state == "D" || in_fuse).then(|| WaitingThread {
                tid: t.file_name().to_string_lossy().into_owned(),
                wchan,
                stat: stat.trim().to_owned(),
            })
        })
        .collect()
}

/// [`threads_waiting`], each as "wchan: stat line", for messages.
pub fn threads_in_the_storage(pid: u32) -> Vec<String> {
    threads_waiting(pid)
        .into_iter()
        .map(|t| format!("{}: {}", t.wchan, t.stat))
        .collect()
}
