//! The README's walk-through, run as a new user would run it: every shell
//! block of "A walk through with depotctl" against `depotd --dev` started
//! in an empty directory, with the checkout's binaries on PATH.
//!
//! What is changed before running, and why:
//! - the `cargo build --release ... && export PATH=...` line: the test puts
//!   the binaries it was built with on PATH instead;
//! - `127.0.0.1:54321`: the daemon listens on a free port (`port = 0`), so
//!   the test never collides with a depotd a developer is running;
//! - `/tmp/`: a private directory, so runs never share storage.
//!
//! The block that needs SAN LUNs (`domainType=3`) is left out; the VM tier
//! covers those verbs. A command whose comment says `exit 1` must fail;
//! every other command must succeed (`set -e`).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(30);

fn bin_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_depotctl"))
        .parent()
        .expect("binary dir")
        .to_owned()
}

/// The shell blocks of the walk-through section, in order.
fn walkthrough_blocks(readme: &str) -> Vec<String> {
    let start = readme
        .find("## A walk through with depotctl")
        .expect("the README has the walk-through section");
    let section = &readme[start..];
    let end = section[3..].find("\n## ").map_or(section.len(), |i| i + 3);
    let mut blocks = Vec::new();
    let mut rest = &section[..end];
    while let Some(open) = rest.find("```sh\n") {
        let body = &rest[open + 6..];
        let close = body.find("\n```").expect("a closed code block");
        blocks.push(body[..close + 1].to_owned());
        rest = &body[close + 4..];
    }
    blocks
}

/// One logical command: continuation lines joined; a here-document kept
/// as it is.
fn logical_lines(block: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut lines = block.lines();
    let mut current = String::new();
    while let Some(line) = lines.next() {
        if let Some(head) = line.strip_suffix('\\') {
            current.push_str(head);
            continue;
        }
        current.push_str(line);
        if current.contains("<<'EOF'") {
            for body in lines.by_ref() {
                current.push('\n');
                current.push_str(body);
                if body == "EOF" {
                    break;
                }
            }
        }
        out.push(std::mem::take(&mut current));
    }
    out
}

/// The script to run: `set -e`, the substitutions of the module docs, and
/// each `# exit 1` command turned into a check that it fails.
fn script(blocks: &[String], tmp: &Path, address: &str) -> String {
    let mut s = String::from("set -euo pipefail\nset -x\n");
    let tmp = format!("{}/", tmp.display());
    for block in blocks {
        if block.contains("domainType=3") {
            continue; // SAN LUNs: the VM tier's
        }
        for line in logical_lines(block) {
            let line = if line.starts_with("cargo build") && line.contains("export PATH") {
                format!("export PATH={}:$PATH", bin_dir().display())
            } else {
                line.replace("127.0.0.1:54321", address)
                    .replace("/tmp/", &tmp)
            };
            match line.rfind(" # ") {
                Some(at) if line[at..].contains("exit 1") => {
                    let cmd = line[..at].trim_end();
                    let shown = cmd.replace('\'', "");
                    s.push_str(&format!(
                        "if out=$({cmd} 2>&1); then echo 'README: this should have failed: {shown}' >&2; exit 99; fi\n\
                         printf '%s\\n' \"$out\"\n"
                    ));
                    // The code the comment promises ("error 911").
                    if let Some(code) = promised_code(&line[at..]) {
                        s.push_str(&format!(
                            "case \"$out\" in *'error {code}'*) ;; *) echo 'README: {shown}: not error {code}' >&2; exit 98 ;; esac\n"
                        ));
                    }
                }
                _ => {
                    s.push_str(&line);
                    s.push('\n');
                }
            }
        }
    }
    s
}

/// N of "error N" in a comment.
fn promised_code(comment: &str) -> Option<String> {
    let rest = &comment[comment.find("error ")? + 6..];
    let code: String = rest
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '-')
        .collect();
    (!code.is_empty()).then_some(code)
}

struct Daemon {
    child: Child,
    dir: PathBuf,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `depotd --dev` in `dir`, as the README's first command (the debug
/// build, on a free port); returns once it answers.
fn start_daemon(dir: &Path) -> (Daemon, String) {
    let depotd = bin_dir().join("depotd");
    assert!(
        depotd.exists(),
        "no depotd binary at {}; run `cargo build -p depotd` first",
        depotd.display()
    );
    std::fs::write(dir.join("port0.toml"), "[listen]\nport = 0\n").unwrap();
    let log = std::fs::File::create(dir.join("depotd.log")).unwrap();
    let child = Command::new(depotd)
        .args(["--dev", "--config", "port0.toml"])
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("spawn depotd");
    let d = Daemon {
        child,
        dir: dir.to_owned(),
    };
    let address_file = dir.join("depot-dev/state/listen-address");
    let deadline = Instant::now() + WAIT;
    loop {
        if let Ok(a) = std::fs::read_to_string(&address_file) {
            let ping = Command::new(bin_dir().join("depotctl"))
                .arg("ping")
                .current_dir(dir)
                .output()
                .unwrap();
            if ping.status.success() && !a.trim().is_empty() {
                return (d, a.trim().to_owned());
            }
        }
        assert!(
            Instant::now() < deadline,
            "depotd --dev did not come up; log:\n{}",
            std::fs::read_to_string(dir.join("depotd.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn the_readme_walkthrough_runs_as_written() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let blocks = walkthrough_blocks(&readme);
    assert!(blocks.len() >= 4, "walk-through blocks: {}", blocks.len());

    let dir = std::env::temp_dir().join(format!("depot-readme-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    // "From the same directory": the walk-through uploads the checkout's
    // Cargo.toml as a file that is not a tar.
    std::fs::copy(root.join("Cargo.toml"), dir.join("Cargo.toml")).unwrap();
    let (d, address) = start_daemon(&dir);
    let data = dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    let text = script(&blocks, &data, &address);
    std::fs::write(dir.join("walkthrough.sh"), &text).unwrap();

    let out = Command::new("bash")
        .arg("walkthrough.sh")
        .current_dir(&dir)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "the walk-through failed ({}).\n--- script\n{text}\n--- stdout\n{}\n--- stderr (trace)\n{}\n--- depotd log (tail)\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        tail(&std::fs::read_to_string(d.dir.join("depotd.log")).unwrap_or_default(), 40),
    );
    // The steps the README promises results of.
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("myvm"),
        "the OVF listing names the VM:\n{stdout}"
    );
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[test]
fn the_script_maker_handles_continuations_heredocs_and_expected_failures() {
    let block = "a \\\n    b   # one\nc <<'EOF' > x\nline \\\nEOF\nd x   # exit 1: error 9\n";
    assert_eq!(
        logical_lines(block),
        [
            "a     b   # one",
            "c <<'EOF' > x\nline \\\nEOF",
            "d x   # exit 1: error 9"
        ]
    );
    let s = script(
        &[format!("{block}e 127.0.0.1:54321 /tmp/f\n")],
        Path::new("/t"),
        "127.0.0.1:1",
    );
    assert!(s.contains("\nif out=$(d x 2>&1); then echo"), "{s}");
    assert!(s.contains("*'error 9'*)"), "{s}");
    assert_eq!(
        promised_code(" # exit 1: error -32601: x").as_deref(),
        Some("-32601")
    );
    assert_eq!(promised_code(" # exit 1").as_deref(), None);
    assert!(s.contains("\ne 127.0.0.1:1 /t/f\n"), "{s}");
    assert!(s.contains("\na     b   # one\n"), "{s}");
}
