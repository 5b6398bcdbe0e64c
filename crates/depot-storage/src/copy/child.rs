//! The native copier and the checksum in a child process (issue 15): the
//! threads that read and write volume data on a mount are the child's, so
//! a storage server that stops answering holds the child, never a thread
//! of depotd. depotd's job thread waits in `poll(2)` on the child's
//! output, polls the job's abort every 20 ms, and on abort (or its own
//! shutdown) kills the child and leaves it to a reaper. The child's
//! journal checkpoints are durable as they are written, so a killed child
//! is a crash the journal already handles (docs/copy.md).
//!
//! The child is depotd itself (`depotd copy-raw ...`; depot-storage's
//! tests run `depot-storage-fsproc copy-raw ...`). Its job is in its
//! arguments, its report in text lines on stdout; the format, version 1,
//! is in docs/formats.md ("copier child"). Both ends are the same build;
//! the parent still checks every line, and a line it cannot read ends the
//! copy with an error, never a guess.

use std::ffi::{OsStr, OsString};
use std::io::{self, Write};
use std::path::PathBuf;
use std::time::Duration;

use depot_os::confine::{Beneath, LvDevice};
use depot_os::fsproc::{HelperCommand, LineChild};

use super::{
    checksum_raw, copy_raw, BlkHash, ChecksumOptions, CopyError, CopyOptions, CopyResult, Journal,
};
use crate::volume_data::VolumeData;

/// The first argument of a copier child.
pub const CHILD_ARG: &str = "copy-raw";
/// The version of the arguments and lines; a child of another refuses.
pub const CHILD_VERSION: &str = "1";

/// How often the parent polls the job's abort while the child works.
const POLL: Duration = Duration::from_millis(20);
/// How long an exited child's status is waited for after its output ends.
const EXIT_WAIT: Duration = Duration::from_secs(5);

/// What a child does.
pub enum ChildJob<'a> {
    Copy {
        src: &'a VolumeData,
        dst: &'a VolumeData,
        length: Option<u64>,
        dst_is_zero: bool,
        sparse: bool,
        checksum: bool,
        verify: bool,
        journal: Option<&'a Journal>,
    },
    Checksum {
        data: &'a VolumeData,
        size: u64,
    },
}

/// What a child did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChildDone {
    Copied(CopyResult),
    Checksum(BlkHash),
}

/// The command that runs a copier child, from the file-system helper's
/// (the same program, `copy-raw` instead of its arguments).
pub fn child_command(fsproc: &HelperCommand) -> HelperCommand {
    HelperCommand::new(fsproc.program.clone()).arg(CHILD_ARG)
}

/// Runs `job` in a child started with `command` (from [`child_command`]),
/// reporting progress as (done, total) and stopping at `abort`.
pub fn run_in_child(
    command: &HelperCommand,
    job: &ChildJob<'_>,
    progress: &dyn Fn(u64, u64),
    abort: &dyn Fn() -> bool,
) -> Result<ChildDone, CopyError> {
    let mut cmd = command.clone();
    cmd.args.push(CHILD_VERSION.into());
    cmd.args.extend(job_args(job));
    let broke = |what: String| CopyError::Child {
        message: format!("copier child: {what}"),
        errno: None,
    };
    let mut child = LineChild::start(&cmd).map_err(|e| CopyError::Child {
        message: format!(
            "cannot start the copier child {}: {e}",
            cmd.program.display()
        ),
        errno: e.raw_os_error(),
    })?;
    loop {
        if abort() {
            // Dropped: killed and reaped on a thread of its own.
            return Err(CopyError::Aborted);
        }
        let line = match child.next_line(POLL) {
            Ok(Some(line)) => line,
            Ok(None) => continue,
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                let status = child.finish(EXIT_WAIT);
                return Err(broke(format!("ended without a report ({status:?})")));
            }
            Err(e) => return Err(broke(e.to_string())),
        };
        match parse_line(&line) {
            Some(Line::Progress(done, total)) => progress(done, total),
            Some(Line::Done(done)) => {
                child.finish(EXIT_WAIT);
                return done;
            }
            None => return Err(broke(format!("unreadable line {line:?}"))),
        }
    }
}

fn job_args(job: &ChildJob<'_>) -> Vec<OsString> {
    let mut a: Vec<OsString> = Vec::new();
    match job {
        ChildJob::Copy {
            src,
            dst,
            length,
            dst_is_zero,
            sparse,
            checksum,
            verify,
            journal,
        } => {
            a.push("copy".into());
            data_args(&mut a, src);
            data_args(&mut a, dst);
            a.push(length.map_or("-".into(), |l| l.to_string()).into());
            for flag in [dst_is_zero, sparse, checksum, verify] {
                a.push(if *flag { "1" } else { "0" }.into());
            }
            match journal {
                Some(j) => {
                    a.push(j.path().into());
                    a.push(j.generation().to_string().into());
                    a.push(j.interval().to_string().into());
                }
                None => a.push("-".into()),
            }
        }
        ChildJob::Checksum { data, size } => {
            a.push("checksum".into());
            data_args(&mut a, data);
            a.push(size.to_string().into());
        }
    }
    a
}

fn data_args(a: &mut Vec<OsString>, data: &VolumeData) {
    match data {
        VolumeData::File(b) => {
            a.push("file".into());
            a.push(b.root().into());
            a.push(b.rel().into());
        }
        VolumeData::Block(l) => {
            a.push("block".into());
            a.push(l.link().into());
            a.push(l.vg().into());
            a.push(l.lv().into());
        }
    }
}

/// A line of a child's report.
enum Line {
    Progress(u64, u64),
    Done(Result<ChildDone, CopyError>),
}

fn parse_line(line: &str) -> Option<Line> {
    let mut w = line.split(' ');
    let num = |s: Option<&str>| s?.parse::<u64>().ok();
    let hash = |w: &mut std::str::Split<'_, char>| {
        Some(BlkHash {
            algorithm: w.next()?.to_owned(),
            block_size: w.next()?.parse().ok()?,
            checksum: w.next()?.to_owned(),
        })
    };
    let parsed = match w.next()? {
        "progress" => Line::Progress(num(w.next())?, num(w.next())?),
        "copied" => {
            let mut r = CopyResult {
                size: num(w.next())?,
                resumed_from: num(w.next())?,
                bytes_copied: num(w.next())?,
                bytes_zeroed: num(w.next())?,
                bytes_skipped: num(w.next())?,
                verified: num(w.next())? == 1,
                checksum: None,
            };
            match w.next()? {
                "-" => {}
                "hash" => r.checksum = Some(hash(&mut w)?),
                _ => return None,
            }
            Line::Done(Ok(ChildDone::Copied(r)))
        }
        "checksum" => Line::Done(Ok(ChildDone::Checksum(hash(&mut w)?))),
        "failed" => {
            let kind = w.next()?;
            let errno = match w.next()? {
                "-" => None,
                n => Some(n.parse().ok()?),
            };
            let message = w.by_ref().collect::<Vec<_>>().join(" ");
            Line::Done(Err(error_of(kind, errno, message)?))
        }
        _ => return None,
    };
    (w.next().is_none()).then_some(parsed)
}

/// The error a child reported, with the kinds whose code differs
/// (engine/copy.rs: `copy_err`) rebuilt as themselves.
fn error_of(kind: &str, errno: Option<i32>, message: String) -> Option<CopyError> {
    let mut parts = kind.split(':');
    Some(match parts.next()? {
        "too_small" => CopyError::DestinationTooSmall {
            dst: PathBuf::from(message),
            src_size: parts.next()?.parse().ok()?,
            dst_size: parts.next()?.parse().ok()?,
        },
        "aborted" => CopyError::Aborted,
        "other" => CopyError::Child { message, errno },
        _ => return None,
    })
}

/// The child's report of an error (one line; newlines in a message are
/// flattened, as the line format has no escapes).
fn failed_line(e: &CopyError) -> String {
    let errno = e.raw_os_error().map_or("-".to_owned(), |n| n.to_string());
    let (kind, message) = match e {
        CopyError::DestinationTooSmall {
            dst,
            src_size,
            dst_size,
        } => (
            format!("too_small:{src_size}:{dst_size}"),
            dst.display().to_string(),
        ),
        CopyError::Aborted => ("aborted".to_owned(), String::new()),
        other => ("other".to_owned(), other.to_string()),
    };
    let message = message.replace(['\n', '\r'], " ");
    format!("failed {kind} {errno} {message}")
}

fn hash_words(h: &BlkHash) -> String {
    format!("{} {} {}", h.algorithm, h.block_size, h.checksum)
}

/// The child's main: `args` are what follows [`CHILD_ARG`]. Returns the
/// exit code: 0 when a report was written (success or failure), 2 for
/// arguments it cannot read.
pub fn child_main(args: Vec<OsString>) -> i32 {
    if let Err(code) = depot_os::fsproc::prepare_helper_process() {
        return code;
    }
    let out = io::stdout();
    let report = |line: String| {
        let mut o = out.lock();
        // The parent is gone if this fails: nothing to tell anyone.
        let _ = writeln!(o, "{line}");
        let _ = o.flush();
    };
    let last = std::cell::Cell::new((u64::MAX, u64::MAX));
    // Only changes: the copier calls progress every 20 ms while it waits.
    let progress = |done: u64, total: u64| {
        if last.replace((done, total)) != (done, total) {
            report(format!("progress {done} {total}"));
        }
    };
    let line = match run_args(&args, &progress) {
        Some(Ok(ChildDone::Copied(r))) => format!(
            "copied {} {} {} {} {} {} {}",
            r.size,
            r.resumed_from,
            r.bytes_copied,
            r.bytes_zeroed,
            r.bytes_skipped,
            u8::from(r.verified),
            r.checksum
                .as_ref()
                .map_or("-".to_owned(), |h| format!("hash {}", hash_words(h)))
        ),
        Some(Ok(ChildDone::Checksum(h))) => format!("checksum {}", hash_words(&h)),
        Some(Err(e)) => failed_line(&e),
        None => {
            eprintln!("depot copier child: cannot read its arguments {args:?}");
            return 2;
        }
    };
    report(line);
    0
}

/// Runs the job the arguments describe; `None` if they describe none.
fn run_args(
    args: &[OsString],
    progress: &dyn Fn(u64, u64),
) -> Option<Result<ChildDone, CopyError>> {
    let mut a = args.iter().map(OsString::as_os_str);
    if a.next()? != CHILD_VERSION {
        return None;
    }
    fn text(s: Option<&OsStr>) -> Option<&str> {
        s?.to_str()
    }
    let num = |s: Option<&OsStr>| text(s)?.parse::<u64>().ok();
    let flag = |s: Option<&OsStr>| match text(s)? {
        "1" => Some(true),
        "0" => Some(false),
        _ => None,
    };
    match text(a.next())? {
        "copy" => {
            let src = data_of(&mut a)?;
            let dst = data_of(&mut a)?;
            let length = match text(a.next())? {
                "-" => None,
                n => Some(n.parse().ok()?),
            };
            let (dst_is_zero, sparse) = (flag(a.next())?, flag(a.next())?);
            let (checksum, verify) = (flag(a.next())?, flag(a.next())?);
            let journal = match a.next()? {
                j if j == "-" => None,
                path => {
                    let generation = num(a.next())?;
                    let interval = num(a.next())?;
                    Some(Journal::new(PathBuf::from(path), generation).with_interval(interval))
                }
            };
            if a.next().is_some() {
                return None;
            }
            let opts = CopyOptions {
                length,
                dst_is_zero,
                sparse,
                checksum,
                verify,
                progress,
                journal: journal.as_ref(),
                ..CopyOptions::default()
            };
            Some(copy_raw(&src, &dst, opts).map(ChildDone::Copied))
        }
        "checksum" => {
            let data = data_of(&mut a)?;
            let size = num(a.next())?;
            if a.next().is_some() {
                return None;
            }
            let opts = ChecksumOptions {
                progress,
                ..ChecksumOptions::default()
            };
            Some(checksum_raw(&data, size, &opts).map(ChildDone::Checksum))
        }
        _ => None,
    }
}

fn data_of<'a>(a: &mut impl Iterator<Item = &'a OsStr>) -> Option<VolumeData> {
    match a.next()?.to_str()? {
        "file" => {
            let (root, rel) = (a.next()?, a.next()?);
            Some(VolumeData::File(Beneath::new(root, rel)))
        }
        "block" => {
            let link = a.next()?;
            let (vg, lv) = (a.next()?.to_str()?, a.next()?.to_str()?);
            Some(VolumeData::Block(LvDevice::new(link, vg, lv)))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_lines_read_back_as_written() {
        let h = BlkHash {
            algorithm: "blake2b".into(),
            block_size: 4 << 20,
            checksum: "ab".repeat(32),
        };
        let line = format!("checksum {}", hash_words(&h));
        match parse_line(&line) {
            Some(Line::Done(Ok(ChildDone::Checksum(back)))) => assert_eq!(back, h),
            _ => panic!("{line}"),
        }
        let e = CopyError::DestinationTooSmall {
            dst: "/rhev/x y".into(),
            src_size: 10,
            dst_size: 5,
        };
        match parse_line(&failed_line(&e)) {
            Some(Line::Done(Err(CopyError::DestinationTooSmall {
                dst,
                src_size: 10,
                dst_size: 5,
            }))) => assert_eq!(dst, PathBuf::from("/rhev/x y")),
            _ => panic!("{}", failed_line(&e)),
        }
        let io = CopyError::Io {
            op: "read",
            path: "/a\nb".into(),
            source: io::Error::from_raw_os_error(libc::ENOSPC),
        };
        match parse_line(&failed_line(&io)) {
            Some(Line::Done(Err(e))) => {
                assert!(e.is_no_space(), "{e}");
                assert!(e.to_string().contains("/a b"), "{e}");
            }
            _ => panic!(),
        }
    }

    #[test]
    fn lines_that_are_not_the_format_are_refused() {
        for bad in [
            "",
            "progress 1",
            "progress 1 2 3",
            "progress x 2",
            "copied 1 2 3 4 5 1",
            "copied 1 2 3 4 5 1 hash blake2b",
            "checksum a b c",
            "failed nope - x",
            "failed other x msg",
            "hello",
        ] {
            assert!(parse_line(bad).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn arguments_of_another_version_or_shape_are_refused() {
        let p = |_: u64, _: u64| {};
        let args = |v: &[&str]| v.iter().map(OsString::from).collect::<Vec<_>>();
        assert!(run_args(&args(&["2", "checksum", "file", "/a", "b", "1"]), &p).is_none());
        assert!(run_args(&args(&["1", "checksum", "file", "/a", "b"]), &p).is_none());
        assert!(run_args(&args(&["1", "checksum", "file", "/a", "b", "1", "x"]), &p).is_none());
        assert!(run_args(&args(&["1", "wipe"]), &p).is_none());
    }
}
