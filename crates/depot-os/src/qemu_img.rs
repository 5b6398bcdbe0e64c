//! `qemu-img` over the command runner: create images, read their metadata,
//! check qcow2 consistency.
//!
//! Flags follow VDSM: qcow2 is created with `-o compat=1.1` (the format
//! every supported qemu reads, and the one with lazy refcounts and zero
//! clusters), `info` uses `--output json -U` (`-U` so it works while a VM
//! holds the image's lock). Every call takes an explicit timeout: qemu-img
//! on a hung NFS mount blocks like any other reader.
//!
//! Paths: a relative path is passed as `./path`, so that neither a leading
//! `-` (an option) nor a `name:` prefix (a qemu protocol such as `nbd:`) can
//! change its meaning.

use std::ffi::OsString;
use std::fmt;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

use crate::command::{Cmd, CmdError, CommandRunner};

/// A failed qemu-img operation.
#[derive(Debug, thiserror::Error)]
pub enum QemuImgError {
    /// qemu-img ran and failed, timed out, or could not start.
    #[error("qemu-img {op} {path}: {source}")]
    Command {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: Box<CmdError>,
    },

    /// The request makes no sense (e.g. a raw image with a backing file).
    #[error("qemu-img {op} {path}: invalid argument: {reason}")]
    InvalidArgument {
        op: &'static str,
        path: PathBuf,
        reason: &'static str,
    },

    /// qemu-img's JSON output is not what this parser expects.
    #[error("qemu-img {op} {path}: cannot parse output: {reason}")]
    Parse {
        op: &'static str,
        path: PathBuf,
        reason: String,
    },
}

impl QemuImgError {
    /// The command error (with qemu-img's stderr), if qemu-img ran.
    pub fn cmd_error(&self) -> Option<&CmdError> {
        match self {
            QemuImgError::Command { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// The image formats depot creates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageFormat {
    Raw,
    Qcow2,
}

impl ImageFormat {
    /// The name qemu-img uses (`raw`, `qcow2`).
    pub fn as_str(self) -> &'static str {
        match self {
            ImageFormat::Raw => "raw",
            ImageFormat::Qcow2 => "qcow2",
        }
    }

    /// The format named `name` by qemu-img, if depot knows it.
    pub fn from_qemu(name: &str) -> Option<Self> {
        match name {
            "raw" => Some(ImageFormat::Raw),
            "qcow2" => Some(ImageFormat::Qcow2),
            _ => None,
        }
    }
}

impl fmt::Display for ImageFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How much space `create` allocates up front.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Preallocation {
    /// Sparse: nothing allocated.
    Off,
    /// `fallocate`: space reserved fast, reads as zeros.
    Falloc,
    /// Zeros written: slow, but works where `fallocate` does not (NFS < 4.2).
    Full,
}

impl Preallocation {
    fn as_option(self) -> Option<&'static str> {
        match self {
            Preallocation::Off => None,
            Preallocation::Falloc => Some("preallocation=falloc"),
            Preallocation::Full => Some("preallocation=full"),
        }
    }
}

/// What `qemu-img info` says about an image (the top image only, not its
/// backing chain).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageInfo {
    /// Format name as qemu-img reports it (`raw`, `qcow2`, maybe others).
    pub format: String,
    /// Size the guest sees.
    pub virtual_size: u64,
    /// Space allocated on the host; absent for some protocols.
    pub actual_size: Option<u64>,
    /// The backing file as recorded in the image (may be relative).
    pub backing_filename: Option<String>,
    pub backing_format: Option<String>,
    /// qcow2 only.
    pub cluster_size: Option<u64>,
    /// qcow2 only: `"0.10"` or `"1.1"`.
    pub compat: Option<String>,
    /// qcow2 only: qemu marked the image corrupt and will not write it.
    pub corrupt: Option<bool>,
}

impl ImageInfo {
    /// [`format`](Self::format) as an [`ImageFormat`], if depot knows it.
    pub fn image_format(&self) -> Option<ImageFormat> {
        ImageFormat::from_qemu(&self.format)
    }
}

/// The result of `qemu-img check` on a qcow2 image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckResult {
    /// Clusters allocated but not referenced: wasted space, harmless.
    pub leaks: u64,
    /// Inconsistent metadata: data may be lost.
    pub corruptions: u64,
    /// Errors that kept the check from looking at everything.
    pub check_errors: u64,
    /// Where the image's used space ends.
    pub image_end_offset: Option<u64>,
}

impl CheckResult {
    pub fn is_clean(&self) -> bool {
        self.leaks == 0 && self.corruptions == 0 && self.check_errors == 0
    }
}

/// Runs `qemu-img`.
#[derive(Debug, Clone)]
pub struct QemuImg {
    runner: CommandRunner,
    program: OsString,
}

impl QemuImg {
    /// Uses `qemu-img` from `PATH`.
    pub fn new(runner: CommandRunner) -> Self {
        Self::with_program(runner, "qemu-img")
    }

    /// Uses another binary (e.g. a private qemu-img 7.2 with network
    /// block drivers; set its `QEMU_MODULE_DIR` on the runner).
    pub fn with_program(runner: CommandRunner, program: impl Into<OsString>) -> Self {
        QemuImg {
            runner,
            program: program.into(),
        }
    }

    /// `qemu-img create -f FMT [-o compat=1.1,backing_file=B,backing_fmt=BF,preallocation=P] PATH SIZE`.
    ///
    /// The backing file must exist (qemu-img opens it to check it); a
    /// relative backing path is relative to the new image's directory, as
    /// qemu resolves it. Raw images cannot have a backing file.
    pub fn create(
        &self,
        path: &Path,
        format: ImageFormat,
        size_bytes: u64,
        backing: Option<(&Path, ImageFormat)>,
        preallocation: Preallocation,
        timeout: Duration,
    ) -> Result<(), QemuImgError> {
        const OP: &str = "create";
        let mut opts: Vec<OsString> = Vec::new();
        if format == ImageFormat::Qcow2 {
            opts.push("compat=1.1".into());
        }
        if let Some((file, fmt)) = backing {
            if format == ImageFormat::Raw {
                return Err(QemuImgError::InvalidArgument {
                    op: OP,
                    path: path.to_owned(),
                    reason: "a raw image cannot have a backing file",
                });
            }
            let mut o = OsString::from("backing_file=");
            o.push(escape_option_value(file));
            opts.push(o);
            opts.push(format!("backing_fmt={fmt}").into());
        }
        if let Some(p) = preallocation.as_option() {
            opts.push(p.into());
        }
        let mut cmd = Cmd::new(&self.program, timeout).args(["create", "-f", format.as_str()]);
        if let Some((first, rest)) = opts.split_first() {
            let mut joined = first.clone();
            for o in rest {
                joined.push(",");
                joined.push(o);
            }
            cmd = cmd.arg("-o").arg(joined);
        }
        let cmd = cmd.arg(path_arg(path)).arg(size_bytes.to_string());
        self.run(OP, path, &cmd).map(|_| ())
    }

    /// `qemu-img info --output json -U [-f FMT] PATH`.
    ///
    /// Pass `format` whenever it is known: probing the format of an image a
    /// guest can write is unsafe (a guest can write a qcow2 header into a
    /// raw image and name a host file as its backing file).
    pub fn info(
        &self,
        path: &Path,
        format: Option<ImageFormat>,
        timeout: Duration,
    ) -> Result<ImageInfo, QemuImgError> {
        const OP: &str = "info";
        let mut cmd = Cmd::new(&self.program, timeout).args(["info", "--output", "json", "-U"]);
        if let Some(f) = format {
            cmd = cmd.args(["-f", f.as_str()]);
        }
        let cmd = cmd.arg(path_arg(path));
        let v = self.run_json(OP, path, &cmd)?;
        parse_info(&v).map_err(|reason| QemuImgError::Parse {
            op: OP,
            path: path.to_owned(),
            reason,
        })
    }

    /// `qemu-img check --output json -f qcow2 PATH`. Leaks and corruptions
    /// are results, not errors (exit codes 3 and 2); an error means the
    /// check itself could not run or finish.
    pub fn check(&self, path: &Path, timeout: Duration) -> Result<CheckResult, QemuImgError> {
        self.check_with(path, timeout, false)
    }

    /// [`check`](Self::check) of an image another process has open for
    /// writing (`-U`, force share: qemu's image lock would refuse the
    /// check otherwise): what the watermark of a thin LV reads the image
    /// end from while a writer fills it. Its counts may include clusters
    /// in flight; `image_end_offset` is what matters.
    pub fn check_shared(
        &self,
        path: &Path,
        timeout: Duration,
    ) -> Result<CheckResult, QemuImgError> {
        self.check_with(path, timeout, true)
    }

    fn check_with(
        &self,
        path: &Path,
        timeout: Duration,
        force_share: bool,
    ) -> Result<CheckResult, QemuImgError> {
        const OP: &str = "check";
        let share: &[&str] = if force_share { &["-U"] } else { &[] };
        let cmd = Cmd::new(&self.program, timeout)
            .arg("check")
            .args(share.iter().copied())
            .args(["--output", "json", "-f", "qcow2"])
            .arg(path_arg(path))
            .ok_codes(&[0, 2, 3]);
        let v = self.run_json(OP, path, &cmd)?;
        let count = |key| v.get(key).and_then(Value::as_u64).unwrap_or(0);
        Ok(CheckResult {
            leaks: count("leaks"),
            corruptions: count("corruptions"),
            check_errors: count("check-errors"),
            image_end_offset: v.get("image-end-offset").and_then(Value::as_u64),
        })
    }

    /// Copies `src` into the existing `dst` with VDSM's flags:
    /// `qemu-img convert -p -t none -T none -f F -O F -n [--target-is-zero]
    /// [-W] [-B backing -F fmt] src dst`. `progress` gets the percentage
    /// qemu-img prints (`(NN.NN/100%)`); `abort` stops it (the process group
    /// is killed; the error is `CmdError::Aborted`). stderr is kept in every
    /// error.
    #[allow(clippy::too_many_arguments)]
    pub fn convert(
        &self,
        src: &Path,
        src_format: ImageFormat,
        dst: &Path,
        dst_format: ImageFormat,
        opts: &ConvertOptions,
        timeout: Duration,
        progress: &dyn Fn(f64),
        abort: &dyn Fn() -> bool,
    ) -> Result<(), QemuImgError> {
        let mut cmd = Cmd::new(&self.program, timeout).args([
            "convert",
            "-p",
            "-t",
            "none",
            "-T",
            "none",
            "-f",
            src_format.as_str(),
            "-O",
            dst_format.as_str(),
            "-n",
        ]);
        if opts.target_is_zero {
            cmd = cmd.arg("--target-is-zero");
        }
        if opts.unordered_writes {
            cmd = cmd.arg("-W");
        }
        if let Some((backing, fmt)) = &opts.backing {
            cmd = cmd
                .arg("-B")
                .arg(path_arg(backing))
                .args(["-F", fmt.as_str()]);
        }
        let cmd = cmd.arg(path_arg(src)).arg(path_arg(dst));
        let last = std::cell::Cell::new(-1.0f64);
        let on_stdout = |bytes: &[u8]| {
            if let Some(p) = parse_progress(bytes) {
                if p > last.get() {
                    last.set(p);
                    progress(p);
                }
            }
        };
        let watch = crate::command::Watch {
            progress: &on_stdout,
            abort,
        };
        self.runner
            .run_watched(&cmd, Some(&watch))
            .map(|_| ())
            .map_err(|source| QemuImgError::Command {
                op: "convert",
                path: dst.to_owned(),
                source: Box::new(source),
            })
    }

    /// Checks that two images hold the same guest-visible data
    /// (`qemu-img compare`, exit 0; 1 means they differ, an error).
    pub fn compare(
        &self,
        a: &Path,
        a_format: ImageFormat,
        b: &Path,
        b_format: ImageFormat,
        timeout: Duration,
    ) -> Result<(), QemuImgError> {
        let cmd = Cmd::new(&self.program, timeout)
            .args([
                "compare",
                "-T",
                "none",
                "-f",
                a_format.as_str(),
                "-F",
                b_format.as_str(),
            ])
            .arg(path_arg(a))
            .arg(path_arg(b));
        self.run("compare", b, &cmd).map(|_| ())
    }

    /// Grows an image's virtual size to `size` bytes (`qemu-img resize`).
    /// The format is given, never probed: a guest can write any header.
    pub fn resize(
        &self,
        path: &Path,
        format: ImageFormat,
        size: u64,
        timeout: Duration,
    ) -> Result<(), QemuImgError> {
        let cmd = Cmd::new(&self.program, timeout)
            .args(["resize", "-f", format.as_str()])
            .arg(path_arg(path))
            .arg(size.to_string());
        self.run("resize", path, &cmd).map(|_| ())
    }

    fn run(
        &self,
        op: &'static str,
        path: &Path,
        cmd: &Cmd,
    ) -> Result<crate::command::Output, QemuImgError> {
        self.runner
            .run(cmd)
            .map_err(|source| QemuImgError::Command {
                op,
                path: path.to_owned(),
                source: Box::new(source),
            })
    }

    fn run_json(&self, op: &'static str, path: &Path, cmd: &Cmd) -> Result<Value, QemuImgError> {
        let out = self.run(op, path, cmd)?;
        serde_json::from_slice(&out.stdout).map_err(|e| QemuImgError::Parse {
            op,
            path: path.to_owned(),
            reason: e.to_string(),
        })
    }
}

/// How [`QemuImg::convert`] writes the destination.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConvertOptions {
    /// The destination is known to read as zeros: qemu-img skips zero
    /// ranges (`--target-is-zero`, only valid with no backing file).
    pub target_is_zero: bool,
    /// `-W`: unordered writes, VDSM's choice for raw on block storage.
    pub unordered_writes: bool,
    /// `-B path -F fmt`: write only what differs from this backing file
    /// (copying one layer of a chain).
    pub backing: Option<(std::path::PathBuf, ImageFormat)>,
}

/// The last `(NN.NN/100%)` in qemu-img's `-p` output (lines end in `\r`).
pub fn parse_progress(out: &[u8]) -> Option<f64> {
    let text = String::from_utf8_lossy(out);
    let end = text.rfind("/100%)")?;
    let start = text[..end].rfind('(')? + 1;
    text[start..end].trim().parse().ok()
}

fn parse_info(v: &Value) -> Result<ImageInfo, String> {
    let str_field = |key: &str| v.get(key).and_then(Value::as_str).map(str::to_owned);
    let format = str_field("format").ok_or("no \"format\"")?;
    let virtual_size = v
        .get("virtual-size")
        .and_then(Value::as_u64)
        .ok_or("no \"virtual-size\"")?;
    let specific = v
        .get("format-specific")
        .filter(|s| s.get("type").and_then(Value::as_str) == Some("qcow2"))
        .and_then(|s| s.get("data"));
    Ok(ImageInfo {
        format,
        virtual_size,
        actual_size: v.get("actual-size").and_then(Value::as_u64),
        backing_filename: str_field("backing-filename"),
        backing_format: str_field("backing-filename-format"),
        cluster_size: v.get("cluster-size").and_then(Value::as_u64),
        compat: specific
            .and_then(|d| d.get("compat"))
            .and_then(Value::as_str)
            .map(str::to_owned),
        corrupt: specific
            .and_then(|d| d.get("corrupt"))
            .and_then(Value::as_bool),
    })
}

/// `./path` for relative paths (see the module docs).
fn path_arg(path: &Path) -> PathBuf {
    if path.is_relative() {
        Path::new(".").join(path)
    } else {
        path.to_owned()
    }
}

/// qemu's `-o` syntax separates options with `,`; a literal comma in a
/// value is written `,,`.
fn escape_option_value(path: &Path) -> OsString {
    let mut out = Vec::new();
    for &b in path.as_os_str().as_bytes() {
        out.push(b);
        if b == b',' {
            out.push(b',');
        }
    }
    OsString::from_vec(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::OpenOptions;
    use std::os::unix::fs::FileExt;

    const T: Duration = Duration::from_secs(30);
    const MIB: u64 = 1024 * 1024;

    fn qemu() -> QemuImg {
        QemuImg::new(CommandRunner::new())
    }

    #[test]
    fn creates_raw_and_reads_info() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("disk.raw");
        qemu()
            .create(&p, ImageFormat::Raw, 10 * MIB, None, Preallocation::Off, T)
            .unwrap();
        let info = qemu().info(&p, Some(ImageFormat::Raw), T).unwrap();
        assert_eq!(info.image_format(), Some(ImageFormat::Raw));
        assert_eq!(info.virtual_size, 10 * MIB);
        assert!(info.actual_size.unwrap() < MIB, "sparse: {info:?}");
        assert_eq!(info.compat, None);
        assert_eq!(info.backing_filename, None);
    }

    #[test]
    fn progress_is_parsed() {
        assert_eq!(
            parse_progress(b"    (0.00/100%)\r    (12.50/100%)\r"),
            Some(12.5)
        );
        assert_eq!(parse_progress(b""), None);
        assert_eq!(parse_progress(b"    (100.00/100%)\n"), Some(100.0));
    }

    #[test]
    fn converts_with_progress_and_aborts() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src.raw");
        let data: Vec<u8> = (0..8 * MIB).map(|i| (i % 251) as u8).collect();
        std::fs::write(&src, &data).unwrap();
        let dst = dir.path().join("dst.qcow2");
        qemu()
            .create(
                &dst,
                ImageFormat::Qcow2,
                8 * MIB,
                None,
                Preallocation::Off,
                T,
            )
            .unwrap();
        let seen = std::cell::RefCell::new(Vec::new());
        let opts = ConvertOptions {
            target_is_zero: true,
            ..Default::default()
        };
        qemu()
            .convert(
                &src,
                ImageFormat::Raw,
                &dst,
                ImageFormat::Qcow2,
                &opts,
                T,
                &|p| seen.borrow_mut().push(p),
                &|| false,
            )
            .unwrap();
        assert_eq!(
            seen.borrow().last().copied(),
            Some(100.0),
            "{:?}",
            seen.borrow()
        );
        // Back to raw: the same bytes.
        let back = dir.path().join("back.raw");
        std::fs::File::create(&back)
            .unwrap()
            .set_len(8 * MIB)
            .unwrap();
        qemu()
            .convert(
                &dst,
                ImageFormat::Qcow2,
                &back,
                ImageFormat::Raw,
                &ConvertOptions::default(),
                T,
                &|_| {},
                &|| false,
            )
            .unwrap();
        assert_eq!(std::fs::read(&back).unwrap(), data);
        // Abort: asked to stop at once, the run ends with Aborted.
        let e = qemu()
            .convert(
                &src,
                ImageFormat::Raw,
                &back,
                ImageFormat::Raw,
                &ConvertOptions::default(),
                T,
                &|_| {},
                &|| true,
            )
            .unwrap_err();
        assert!(e.cmd_error().is_some_and(|c| c.is_aborted()), "{e}");
    }

    #[test]
    fn resizes_qcow2_and_raw() {
        let dir = tempfile::tempdir().unwrap();
        for (name, fmt) in [("a.qcow2", ImageFormat::Qcow2), ("a.raw", ImageFormat::Raw)] {
            let p = dir.path().join(name);
            qemu()
                .create(&p, fmt, 10 * MIB, None, Preallocation::Off, T)
                .unwrap();
            qemu().resize(&p, fmt, 30 * MIB, T).unwrap();
            assert_eq!(
                qemu().info(&p, Some(fmt), T).unwrap().virtual_size,
                30 * MIB
            );
        }
        // Shrinking needs --shrink, which depot never passes.
        let p = dir.path().join("a.qcow2");
        assert!(qemu().resize(&p, ImageFormat::Qcow2, MIB, T).is_err());
    }

    #[test]
    fn creates_preallocated_raw() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("disk.raw");
        qemu()
            .create(
                &p,
                ImageFormat::Raw,
                4 * MIB,
                None,
                Preallocation::Falloc,
                T,
            )
            .unwrap();
        let info = qemu().info(&p, None, T).unwrap();
        assert!(info.actual_size.unwrap() >= 4 * MIB, "{info:?}");
    }

    #[test]
    fn creates_qcow2_compat_1_1_and_checks_it() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("disk.qcow2");
        qemu()
            .create(
                &p,
                ImageFormat::Qcow2,
                20 * MIB,
                None,
                Preallocation::Off,
                T,
            )
            .unwrap();
        let info = qemu().info(&p, Some(ImageFormat::Qcow2), T).unwrap();
        assert_eq!(info.format, "qcow2");
        assert_eq!(info.virtual_size, 20 * MIB);
        assert_eq!(info.compat.as_deref(), Some("1.1"));
        assert_eq!(info.cluster_size, Some(65536));
        assert_eq!(info.corrupt, Some(false));
        let c = qemu().check(&p, T).unwrap();
        assert!(c.is_clean(), "{c:?}");
        assert!(c.image_end_offset.is_some());
    }

    #[test]
    fn creates_qcow2_over_a_backing_file() {
        let dir = tempfile::tempdir().unwrap();
        // A comma in the name exercises the ",," escaping.
        let base = dir.path().join("base,1.raw");
        qemu()
            .create(
                &base,
                ImageFormat::Raw,
                8 * MIB,
                None,
                Preallocation::Off,
                T,
            )
            .unwrap();
        let top = dir.path().join("top.qcow2");
        qemu()
            .create(
                &top,
                ImageFormat::Qcow2,
                8 * MIB,
                Some((&base, ImageFormat::Raw)),
                Preallocation::Off,
                T,
            )
            .unwrap();
        let info = qemu().info(&top, Some(ImageFormat::Qcow2), T).unwrap();
        assert_eq!(
            info.backing_filename.as_deref(),
            Some(base.to_str().unwrap())
        );
        assert_eq!(info.backing_format.as_deref(), Some("raw"));
        assert_eq!(info.compat.as_deref(), Some("1.1"));

        // Relative backing names resolve against the image's directory.
        let top2 = dir.path().join("top2.qcow2");
        qemu()
            .create(
                &top2,
                ImageFormat::Qcow2,
                8 * MIB,
                Some((Path::new("top.qcow2"), ImageFormat::Qcow2)),
                Preallocation::Off,
                T,
            )
            .unwrap();
        let info = qemu().info(&top2, None, T).unwrap();
        assert_eq!(info.backing_filename.as_deref(), Some("top.qcow2"));
    }

    #[test]
    fn raw_with_backing_is_rejected() {
        let err = qemu()
            .create(
                Path::new("/tmp/x"),
                ImageFormat::Raw,
                MIB,
                Some((Path::new("/tmp/y"), ImageFormat::Raw)),
                Preallocation::Off,
                T,
            )
            .unwrap_err();
        assert!(matches!(err, QemuImgError::InvalidArgument { .. }), "{err}");
    }

    #[test]
    fn failed_create_carries_stderr() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("no-such-dir").join("disk.qcow2");
        let err = qemu()
            .create(&p, ImageFormat::Qcow2, MIB, None, Preallocation::Off, T)
            .unwrap_err();
        let cmd = err.cmd_error().expect("a command error");
        assert_eq!(cmd.exit_code(), Some(1));
        assert!(cmd.stderr().contains("No such file or directory"), "{err}");
        assert!(err.to_string().contains("qemu-img create"), "{err}");
    }

    #[test]
    fn missing_backing_file_fails() {
        let dir = tempfile::tempdir().unwrap();
        let err = qemu()
            .create(
                &dir.path().join("top.qcow2"),
                ImageFormat::Qcow2,
                MIB,
                Some((&dir.path().join("missing"), ImageFormat::Raw)),
                Preallocation::Off,
                T,
            )
            .unwrap_err();
        assert!(err.cmd_error().is_some(), "{err}");
    }

    /// Sets the 16-bit refcount of `cluster` in the first refcount block.
    fn set_refcount(path: &Path, cluster: u64, value: u16) {
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .unwrap();
        let mut b = [0u8; 8];
        f.read_exact_at(&mut b, 48).unwrap(); // refcount_table_offset
        let table = u64::from_be_bytes(b);
        f.read_exact_at(&mut b, table).unwrap();
        let block = u64::from_be_bytes(b);
        f.write_all_at(&value.to_be_bytes(), block + 2 * cluster)
            .unwrap();
    }

    #[test]
    fn check_counts_leaks_and_corruptions() {
        let dir = tempfile::tempdir().unwrap();
        let leaky = dir.path().join("leaky.qcow2");
        let broken = dir.path().join("broken.qcow2");
        for p in [&leaky, &broken] {
            qemu()
                .create(p, ImageFormat::Qcow2, MIB, None, Preallocation::Off, T)
                .unwrap();
        }
        set_refcount(&leaky, 1, 2); // referenced once, counted twice
        set_refcount(&broken, 0, 0); // the header cluster, counted zero times
        let c = qemu().check(&leaky, T).unwrap();
        assert_eq!((c.leaks, c.corruptions), (1, 0), "{c:?}");
        let c = qemu().check(&broken, T).unwrap();
        assert_eq!((c.leaks, c.corruptions), (0, 1), "{c:?}");
        assert!(!c.is_clean());
    }

    #[test]
    fn check_of_raw_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("disk.raw");
        qemu()
            .create(&p, ImageFormat::Raw, MIB, None, Preallocation::Off, T)
            .unwrap();
        assert!(qemu().check(&p, T).is_err());
    }

    #[test]
    fn relative_paths_get_dot_slash() {
        assert_eq!(path_arg(Path::new("-x")), PathBuf::from("./-x"));
        assert_eq!(path_arg(Path::new("nbd:x")), PathBuf::from("./nbd:x"));
        assert_eq!(path_arg(Path::new("/a/b")), PathBuf::from("/a/b"));
        assert_eq!(
            escape_option_value(Path::new("a,b")),
            OsString::from("a,,b")
        );
    }
}
