//! The command runner against real processes.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use depot_os::{Cmd, CmdError, CommandRunner, ExitStatus, Watch};

const T: Duration = Duration::from_secs(10);
/// "Promptly": well before the 30 s the commands below would run if the
/// runner waited for them (one-sided; a loaded machine is only slower).
const PROMPT: Duration = Duration::from_secs(10);

fn run(cmd: Cmd) -> Result<depot_os::Output, CmdError> {
    CommandRunner::new().run(&cmd)
}

/// True while `pid` is a live (non-zombie) process. A killed grandchild is
/// reparented and may stay a zombie until its new parent reaps it; that is
/// not "left behind" in any way that matters.
fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // Format: "pid (comm) S ..."; comm may contain spaces, so split at ')'.
        Ok(stat) => stat
            .rsplit_once(')')
            .map(|(_, rest)| !rest.trim_start().starts_with(['Z', 'X']))
            .unwrap_or(false),
        Err(_) => false,
    }
}

/// The state letter of `pid` in /proc; None once it is gone (reaped).
fn proc_state(pid: i32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?.1.trim_start().chars().next()
}

fn wait_dead(pid: i32) -> bool {
    let until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < until {
        if !alive(pid) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

fn pid_from_stderr(e: &CmdError) -> i32 {
    e.stderr()
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("no pid in stderr: {e}"))
}

#[test]
fn true_succeeds() {
    let out = run(Cmd::new("true", T)).expect("true");
    assert_eq!(out.code, 0);
    assert!(out.stdout.is_empty());
}

#[test]
fn false_fails_with_code_1() {
    let err = run(Cmd::new("false", T)).expect_err("false");
    assert!(matches!(err, CmdError::Failed { .. }), "{err:?}");
    assert_eq!(err.exit_code(), Some(1));
    assert_eq!(err.to_string(), "command failed: false (exit code 1)");
}

#[test]
fn stderr_is_kept_in_the_error() {
    let err = run(Cmd::new("sh", T).args(["-c", "echo first >&2; echo boom >&2; exit 5"]))
        .expect_err("exit 5");
    assert_eq!(err.exit_code(), Some(5));
    assert_eq!(err.stderr(), "first\nboom\n");
    assert_eq!(
        err.to_string(),
        "command failed: sh -c 'echo first >&2; echo boom >&2; exit 5' (exit code 5): first | boom"
    );
}

#[test]
fn killed_by_signal_is_failed_without_code() {
    let err = run(Cmd::new("sh", T).args(["-c", "kill -9 $$"])).expect_err("killed");
    assert_eq!(err.exit_status(), Some(ExitStatus::Signal(9)));
    assert_eq!(err.exit_code(), None);
}

#[test]
fn shell_metacharacters_reach_the_program_literally() {
    for arg in [
        "; rm -rf /",
        "$(x)",
        "`id`",
        "a'b\"c",
        "*",
        "$HOME",
        "x\ny",
        "",
    ] {
        let out = run(Cmd::new("printf", T).args(["%s", arg])).expect("printf");
        assert_eq!(out.stdout, arg.as_bytes(), "arg {arg:?}");
    }
}

#[test]
fn secret_arg_never_printed() {
    let cmd = Cmd::new("sh", T)
        .args(["-c", "exit 3", "sh"])
        .secret_arg("SECRET-hunter2");
    assert!(!cmd.to_string().contains("hunter2"));
    assert!(!format!("{cmd:?}").contains("hunter2"));
    assert_eq!(cmd.to_string(), "sh -c 'exit 3' sh ***");

    let err = CommandRunner::new().run(&cmd).expect_err("exit 3");
    assert_eq!(err.exit_code(), Some(3));
    assert!(!err.to_string().contains("hunter2"), "{err}");
    assert!(!format!("{err:?}").contains("hunter2"), "{err:?}");
    assert!(err.argv().ends_with("***"));
}

#[test]
fn secret_echoed_by_the_program_is_scrubbed_from_errors() {
    // Like a tool that complains "invalid value 'X'" about its argument.
    let cmd = Cmd::new("sh", T)
        .args([
            "-c",
            r#"echo "bad value '$1'" >&2; echo "out $1"; exit 7"#,
            "sh",
        ])
        .secret_arg("SECRET-hunter2");
    let err = CommandRunner::new().run(&cmd).expect_err("exit 7");
    assert_eq!(err.exit_code(), Some(7));
    assert!(err.stderr().contains("bad value '***'"), "{err:?}");
    assert!(!err.to_string().contains("hunter2"), "{err}");
    assert!(!format!("{err:?}").contains("hunter2"), "{err:?}");
    // Also on success: stderr warnings are scrubbed (stdout is the
    // caller's data and stays as the program wrote it).
    let cmd = Cmd::new("sh", T)
        .args(["-c", r#"echo "warn $1" >&2"#, "sh"])
        .secret_arg("SECRET-hunter2");
    let out = CommandRunner::new().run(&cmd).expect("sh");
    assert_eq!(out.stderr, "warn ***\n");
}

#[test]
fn secret_arg_reaches_the_program() {
    let out = run(Cmd::new("printf", T).arg("%s").secret_arg("hunter2")).expect("printf");
    assert_eq!(out.stdout, b"hunter2");
}

#[test]
fn timeout_kills_child_promptly_and_reaps_it() {
    let started = Instant::now();
    let err =
        run(Cmd::new("sh", Duration::from_millis(300)).args(["-c", "echo $$ >&2; exec sleep 30"]))
            .expect_err("timeout");
    let took = started.elapsed();
    assert!(err.is_timeout(), "{err:?}");
    assert!(took < PROMPT, "took {took:?}");
    assert!(took >= Duration::from_millis(300), "took {took:?}");
    assert!(
        err.to_string()
            .starts_with("command timed out after 300ms: sh -c"),
        "{err}"
    );
    let pid = pid_from_stderr(&err);
    // The direct child is reaped by the runner: not even a zombie is left.
    assert!(!alive(pid), "child {pid} still alive");
}

#[test]
fn timeout_kills_grandchildren() {
    let started = Instant::now();
    let err = run(
        Cmd::new("sh", Duration::from_millis(300)).args(["-c", "sleep 30 & echo $! >&2; wait"])
    )
    .expect_err("timeout");
    assert!(err.is_timeout(), "{err:?}");
    assert!(started.elapsed() < PROMPT, "{:?}", started.elapsed());
    let grandchild = pid_from_stderr(&err);
    assert!(wait_dead(grandchild), "grandchild {grandchild} survived");
}

#[test]
fn timeout_covers_pipes_held_by_a_grandchild() {
    // The child exits at once but a background grandchild keeps stdout open:
    // the call must still end at the timeout, and the grandchild must die.
    let started = Instant::now();
    let err =
        run(Cmd::new("sh", Duration::from_millis(300))
            .args(["-c", "sleep 30 & echo $! >&2; exit 0"]))
        .expect_err("timeout");
    assert!(err.is_timeout(), "{err:?}");
    assert!(started.elapsed() < PROMPT, "{:?}", started.elapsed());
    let grandchild = pid_from_stderr(&err);
    assert!(wait_dead(grandchild), "grandchild {grandchild} survived");
}

#[test]
fn exited_child_stays_unreaped_until_its_group_is_killed() {
    // The child exits at once; a grandchild in its group keeps stdout open,
    // so the run goes on until the timeout. All that time the child must
    // stay a zombie: while it is unreaped its pid, which is the group's id,
    // cannot go to another process, so the kill at the timeout can only
    // reach this group.
    let seen = Mutex::new((None, Vec::new()));
    let progress = |stdout: &[u8]| {
        let text = String::from_utf8_lossy(stdout);
        let Some((line, _)) = text.split_once('\n') else {
            return;
        };
        let pids: Vec<i32> = line.split(' ').map(|p| p.parse().expect("pid")).collect();
        let mut seen = seen.lock().expect("seen");
        seen.0 = Some((pids[0], pids[1]));
        seen.1.push(proc_state(pids[0]));
    };
    let watch = Watch {
        progress: &progress,
        abort: &|| false,
    };
    // 5 s: time for a loaded machine to start sh and print the pids.
    let cmd = Cmd::new("sh", Duration::from_secs(5)).args(["-c", "sleep 30 & echo $$ $!; exit 0"]);
    let err = CommandRunner::new()
        .run_watched(&cmd, Some(&watch))
        .expect_err("timeout");
    assert!(err.is_timeout(), "{err:?}");
    let (pids, states) = seen.into_inner().expect("seen");
    let (child, grandchild) = pids.expect("the pids were never printed");
    assert!(
        states.contains(&Some('Z')),
        "the child was never seen exited and unreaped: {states:?}"
    );
    assert!(
        !states.contains(&None),
        "the child was reaped before its group was killed: {states:?}"
    );
    assert_eq!(
        proc_state(child),
        None,
        "the child was not reaped at the end"
    );
    assert!(wait_dead(grandchild), "grandchild {grandchild} survived");
}

#[test]
fn stdin_held_outside_the_group_does_not_hold_the_run() {
    // A process that left the group (setsid) keeps stdin open and never
    // reads it; the child exits at once. The run must end then: the stdin
    // writer, stuck on 1 MiB that does not fit in the pipe, is not waited
    // for (it ends when that process closes the pipe).
    // (A background job's stdin is /dev/null unless redirected: hence 3.)
    let script =
        r#"exec 3<&0; setsid sh -c 'echo $$ >&2; exec sleep 60 >/dev/null 2>&1' <&3 3<&- &"#;
    let started = Instant::now();
    let out = run(Cmd::new("sh", T)
        .args(["-c", script])
        .stdin(vec![b'x'; 1 << 20]))
    .expect("sh");
    let took = started.elapsed();
    let pid: i32 = out.stderr.trim().parse().expect("pid on stderr");
    // SAFETY: kill(2) with a pid and a signal number.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    assert!(
        took < PROMPT,
        "the run waited for the stdin writer: {took:?}"
    );
}

#[test]
fn missing_binary_is_spawn_error() {
    let err = run(Cmd::new("/nonexistent/depot-no-such-binary", T).arg("x")).expect_err("spawn");
    match &err {
        CmdError::Spawn { argv, source } => {
            assert_eq!(argv, "/nonexistent/depot-no-such-binary x");
            assert_eq!(source.kind(), std::io::ErrorKind::NotFound);
        }
        other => panic!("expected Spawn, got {other:?}"),
    }
    assert!(err
        .to_string()
        .starts_with("cannot start command: /nonexistent/depot-no-such-binary x: "));
}

#[test]
fn ok_codes_accept_nonzero_and_report_it() {
    let cmd = Cmd::new("sh", T).args(["-c", "exit 15"]);
    let err = CommandRunner::new()
        .run(&cmd)
        .expect_err("15 not ok by default");
    assert_eq!(err.exit_code(), Some(15));

    let out = run(cmd.clone().ok_codes(&[0, 15])).expect("15 ok");
    assert_eq!(out.code, 15);
    let out = run(Cmd::new("true", T).ok_codes(&[0, 15])).expect("0 ok");
    assert_eq!(out.code, 0);
    let err = run(Cmd::new("sh", T).args(["-c", "exit 2"]).ok_codes(&[0, 15])).expect_err("2");
    assert_eq!(err.exit_code(), Some(2));
}

#[test]
fn stdout_within_limit_is_complete() {
    let out = run(Cmd::new("head", T)
        .args(["-c", "1000", "/dev/zero"])
        .stdout_limit(1000))
    .expect("exactly at limit");
    assert_eq!(out.stdout.len(), 1000);
}

#[test]
fn stdout_over_limit_is_an_error() {
    let err = run(Cmd::new("head", T)
        .args(["-c", "1001", "/dev/zero"])
        .stdout_limit(1000))
    .expect_err("over limit");
    assert!(
        matches!(err, CmdError::OutputTooLarge { limit: 1000, .. }),
        "{err:?}"
    );
}

#[test]
fn endless_stdout_stops_at_limit_not_timeout() {
    let started = Instant::now();
    let err = run(Cmd::new("yes", Duration::from_secs(30)).stdout_limit(64 * 1024))
        .expect_err("over limit");
    assert!(matches!(err, CmdError::OutputTooLarge { .. }), "{err:?}");
    assert!(started.elapsed() < PROMPT, "{:?}", started.elapsed());
}

#[test]
fn stderr_keeps_only_the_tail() {
    // ~200 KiB of stderr, then a final line that must survive.
    let script = "head -c 200000 /dev/zero | tr '\\0' x >&2; echo; echo LAST >&2; exit 1";
    let err = run(Cmd::new("sh", T).args(["-c", script])).expect_err("exit 1");
    assert!(err.stderr().len() <= depot_os::STDERR_TAIL_LIMIT + 16);
    assert!(err.stderr().starts_with("[...]\n"));
    assert!(err.stderr().ends_with("LAST\n"));
}

#[test]
fn stdin_bytes_are_fed() {
    let input: Vec<u8> = (0..=255u8).cycle().take(300_000).collect();
    let out = run(Cmd::new("cat", T).stdin(input.clone())).expect("cat");
    assert_eq!(out.stdout, input);
}

#[test]
fn no_stdin_means_dev_null() {
    // Without stdin bytes, cat must see EOF at once instead of hanging.
    let out = run(Cmd::new("cat", Duration::from_secs(5))).expect("cat");
    assert!(out.stdout.is_empty());
}

#[test]
fn default_env_and_cmd_env() {
    let out =
        run(Cmd::new("sh", T).args(["-c", "printf %s \"$LC_ALL:$LVM_SUPPRESS_FD_WARNINGS\""]))
            .expect("sh");
    assert_eq!(out.stdout, b"C:1");

    let out = run(Cmd::new("sh", T)
        .args(["-c", "printf %s \"$LC_ALL:$DEPOT_X\""])
        .env("LC_ALL", "POSIX")
        .env("DEPOT_X", "y"))
    .expect("sh");
    assert_eq!(out.stdout, b"POSIX:y");

    let runner = CommandRunner::without_default_env().with_env("DEPOT_Y", "z");
    let out = runner
        .run(&Cmd::new("sh", T).args(["-c", "printf %s \"$DEPOT_Y\""]))
        .expect("sh");
    assert_eq!(out.stdout, b"z");
}

#[test]
fn later_env_of_the_same_name_wins() {
    let runner = CommandRunner::without_default_env()
        .with_env("DEPOT_Z", "runner-1")
        .with_env("DEPOT_Z", "runner-2");
    let cmd = Cmd::new("sh", T).args(["-c", "printf %s \"$DEPOT_Z\""]);
    assert_eq!(runner.run(&cmd).expect("sh").stdout, b"runner-2");
    let cmd = cmd.env("DEPOT_Z", "cmd-1").env("DEPOT_Z", "cmd-2");
    assert_eq!(runner.run(&cmd).expect("sh").stdout, b"cmd-2");
}

#[test]
fn current_dir_is_used() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = run(Cmd::new("pwd", T).current_dir(dir.path())).expect("pwd");
    let got = std::path::PathBuf::from(out.stdout_lossy().trim_end());
    let want = dir.path().canonicalize().expect("canonicalize");
    assert_eq!(got, want);
}

#[test]
fn stderr_on_success_is_returned() {
    let out = run(Cmd::new("sh", T).args(["-c", "echo warn >&2; printf ok"])).expect("sh");
    assert_eq!(out.stdout_str().expect("utf8"), "ok");
    assert_eq!(out.stderr, "warn\n");
}

#[test]
fn runner_works_from_many_threads() {
    let runner = CommandRunner::new();
    let handles: Vec<_> = (0..16)
        .map(|i| {
            let runner = runner.clone();
            std::thread::spawn(move || {
                let out = runner
                    .run(&Cmd::new("printf", T).args(["%s", &i.to_string()]))
                    .expect("printf");
                assert_eq!(out.stdout, i.to_string().as_bytes());
            })
        })
        .collect();
    for h in handles {
        h.join().expect("thread");
    }
}
