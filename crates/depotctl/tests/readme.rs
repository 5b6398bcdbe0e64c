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
//! covers those verbs. A command whose comment says `exit 1` must fail
//! with the error it names; every other command must succeed (`set -e`).
//!
//! And what the README says a command does, it must do: the output of each
//! `depotctl`, `cat` and `cmp` line is kept, and `check_promises` checks
//! each comment's promise on that output, on disk and through the daemon
//! (`# ok`, the generation of a store, the job that ends "aborted" with
//! 411, a sealed metadata file, a checksum that Python's blkhash agrees
//! with, a moved image gone from its first domain...). A commented command
//! without a check fails the test, so a new promise in the README needs a
//! check here.

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

/// One command of the walk-through whose output the test keeps: a
/// `depotctl`, `cat` or `cmp` line. Its stdout (with stderr for a command
/// that must fail) lands in `<out>/<n>`.
#[derive(Debug, Clone, PartialEq)]
struct Step {
    n: usize,
    /// As the README has it.
    readme: String,
    /// Its trailing `# comment`, without the `#`.
    comment: Option<String>,
}

/// Whether a logical line is a command whose output the test keeps.
fn kept(line: &str) -> bool {
    ["depotctl ", "cat ", "cmp "]
        .iter()
        .any(|p| line.trim_start().starts_with(p))
}

/// The variables of the walk-through whose values the checks need; the
/// script writes them to `<out>/vars` at its end.
const VARS: &[&str] = &[
    "job", "long", "sd", "sp", "img", "vol", "ovfimg", "ovfvol", "vm", "sd2", "raw", "rawimg",
];

/// The script to run: `set -e`, the substitutions of the module docs, each
/// `# exit 1` command turned into a check that it fails, the output of
/// each kept command saved under `out`, and the variables at the end.
fn script(blocks: &[String], tmp: &Path, address: &str, out: &Path) -> (String, Vec<Step>) {
    let mut s = String::from("set -euo pipefail\nset -x\n");
    let mut steps = Vec::new();
    let tmp = format!("{}/", tmp.display());
    for block in blocks {
        if block.contains("domainType=3") {
            continue; // SAN LUNs: the VM tier's
        }
        for readme in logical_lines(block) {
            let line = if readme.starts_with("cargo build") && readme.contains("export PATH") {
                format!("export PATH={}:$PATH", bin_dir().display())
            } else {
                readme
                    .replace("127.0.0.1:54321", address)
                    .replace("/tmp/", &tmp)
            };
            let comment = readme
                .rfind(" # ")
                .map(|at| readme[at + 3..].trim().to_owned());
            let file = out.join((steps.len() + 1).to_string());
            let file = file.display();
            match line.rfind(" # ") {
                Some(at) if line[at..].contains("exit 1") => {
                    let cmd = line[..at].trim_end();
                    let shown = cmd.replace('\'', "");
                    s.push_str(&format!(
                        "if out=$({cmd} 2>&1); then echo 'README: this should have failed: {shown}' >&2; exit 99; fi\n\
                         printf '%s\\n' \"$out\" | tee '{file}'\n"
                    ));
                    // The code the comment promises ("error 911").
                    if let Some(code) = promised_code(&line[at..]) {
                        s.push_str(&format!(
                            "case \"$out\" in *'error {code}'*) ;; *) echo 'README: {shown}: not error {code}' >&2; exit 98 ;; esac\n"
                        ));
                    }
                }
                _ if kept(&line) => {
                    // The comment, if any, ends at the newline before `}`.
                    s.push_str(&format!("{{ {line}\n}} > '{file}'\ncat '{file}'\n"));
                }
                _ => {
                    s.push_str(&line);
                    s.push('\n');
                    continue;
                }
            }
            steps.push(Step {
                n: steps.len() + 1,
                readme,
                comment,
            });
        }
    }
    s.push_str(&format!(
        "for v in {}; do printf '%s=%s\\n' \"$v\" \"${{!v}}\"; done > '{}'\n",
        VARS.join(" "),
        out.join("vars").display()
    ));
    (s, steps)
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
    // The walk-through's depotd has no sanlock daemon (what the README
    // says): as root, where other tests run one, hold their lock.
    let _no_sanlock = depot_testkit::is_root()
        .then(|| depot_testkit::sanlock::NoDaemon::hold().expect("the sanlock test lock"));
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
    let outputs = dir.join("out");
    std::fs::create_dir_all(&outputs).unwrap();
    let (text, steps) = script(&blocks, &data, &address, &outputs);
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
    let w = Walk::new(steps, &outputs, &data, &dir);
    check_promises(&w, &d);
    w.all_promises_checked();
}

/// What the walk-through left: each kept command's output, its variables,
/// and which steps the checks looked at.
struct Walk {
    steps: Vec<Step>,
    outputs: Vec<String>,
    vars: std::collections::BTreeMap<String, String>,
    /// The walk-through's `/tmp/`.
    data: PathBuf,
    /// The daemon's directory (`./depot-dev` is under it).
    dir: PathBuf,
    checked: std::cell::RefCell<std::collections::BTreeSet<usize>>,
}

impl Walk {
    fn new(steps: Vec<Step>, outputs: &Path, data: &Path, dir: &Path) -> Walk {
        let outs = steps
            .iter()
            .map(|s| {
                std::fs::read_to_string(outputs.join(s.n.to_string()))
                    .unwrap_or_else(|e| panic!("the output of step {} ({}): {e}", s.n, s.readme))
            })
            .collect();
        let vars = std::fs::read_to_string(outputs.join("vars"))
            .unwrap()
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        Walk {
            steps,
            outputs: outs,
            vars,
            data: data.to_owned(),
            dir: dir.to_owned(),
            checked: Default::default(),
        }
    }

    /// A variable of the walk-through (`$sd`).
    fn var(&self, name: &str) -> &str {
        self.vars
            .get(name)
            .filter(|v| !v.is_empty())
            .unwrap_or_else(|| panic!("the walk-through set no ${name}: {:?}", self.vars))
    }

    /// The output of the one command whose README line contains `what`
    /// (its comment or the command), marked as checked.
    fn out(&self, what: &str) -> &str {
        self.out_all(&[what])
    }

    /// The same, for the one command that contains all of `what`.
    fn out_all(&self, what: &[&str]) -> &str {
        let found: Vec<&Step> = self
            .steps
            .iter()
            .filter(|s| what.iter().all(|w| s.readme.contains(w)))
            .collect();
        assert_eq!(
            found.len(),
            1,
            "the README has {} commands with {what:?} (the checks follow the README: \
             update them with it)",
            found.len()
        );
        self.checked.borrow_mut().insert(found[0].n);
        &self.outputs[found[0].n - 1]
    }

    fn json(&self, what: &str) -> serde_json::Value {
        let out = self.out(what);
        serde_json::from_str(out)
            .unwrap_or_else(|e| panic!("the output of {what:?} is not JSON ({e}): {out}"))
    }

    /// Every command whose comment promises something was checked.
    fn all_promises_checked(&self) {
        let unchecked: Vec<&str> = self
            .steps
            .iter()
            .filter(|s| s.comment.is_some() && !self.checked.borrow().contains(&s.n))
            .map(|s| s.readme.as_str())
            .collect();
        assert!(
            unchecked.is_empty(),
            "README promises without a check in readme.rs: {unchecked:#?}"
        );
    }

    /// A domain's directory (LOCALFS: the directory the README connects).
    fn domain(&self, dir: &str, sd: &str) -> PathBuf {
        self.data.join(dir).join(self.var(sd))
    }
}

/// What each comment of the walk-through promises, checked on the output
/// of its command, on disk and in the daemon's log.
fn check_promises(w: &Walk, d: &Daemon) {
    let (job, long, sd) = (w.var("job"), w.var("long"), w.var("sd"));

    // Host and jobs.
    assert_eq!(w.out("# ok").trim(), "ok");
    let caps = w.json("# depot's version, domain versions");
    assert_eq!(caps["version_name"], "depot", "{caps}");
    assert_eq!(
        caps["software_version"],
        env!("CARGO_PKG_VERSION"),
        "{caps}"
    );
    assert!(
        caps["domain_versions"]
            .as_array()
            .is_some_and(|v| v.contains(&5.into())),
        "{caps}"
    );
    assert_eq!(w.out("# the same over mutual TLS").trim(), "ok");
    let log = std::fs::read_to_string(d.dir.join("depotd.log")).unwrap_or_default();
    assert!(
        log.lines()
            .any(|l| l.contains("method=Host.ping2") && l.contains("CN=depotctl")),
        "no ping from the TLS client certificate in the daemon's log"
    );
    // Over STOMP: no job has started yet, so the answer is the wire's
    // empty map, and the daemon saw a STOMP client with depotctl's
    // certificate.
    assert_eq!(
        w.json("# over STOMP 1.2, as the engine talks"),
        serde_json::json!({})
    );
    assert!(
        log.lines()
            .any(|l| l.contains("STOMP client connected") && l.contains("CN=depotctl")),
        "no STOMP session of depotctl's certificate in the daemon's log"
    );
    let watch = w.out("# progress bar until it is done");
    let last = watch.lines().last().unwrap_or("");
    assert!(
        last.starts_with(job) && last.contains(" done ") && last.contains("100%"),
        "the watch ends with the job done: {watch}"
    );
    assert!(watch.contains("[#####"), "a progress bar: {watch}");
    assert_eq!(
        w.out("# same id, same job: nothing new starts").trim(),
        "true"
    );
    let listing = w.out("# the job, running");
    let line_of = |id: &str| {
        listing
            .lines()
            .find(|l| l.starts_with(id))
            .unwrap_or_else(|| panic!("no {id} in {listing}"))
            .to_owned()
    };
    assert!(line_of(long).contains(" running "), "{listing}");
    // Nothing new started under the same id: it is still the one done job.
    assert!(line_of(job).contains(" done "), "{listing}");
    assert_eq!(listing.lines().count(), 3, "{listing}");
    assert_eq!(w.out("# it ends \"aborted\", error 411").trim(), "true");
    let raw = w.json("# the raw wire answer");
    assert_eq!(raw[job]["status"], "done", "{raw}");
    assert!(raw[long]["status"].is_string(), "{raw}");
    // The abort's end, asked of the daemon after the walk-through (waited
    // for: aborting is asynchronous).
    let deadline = Instant::now() + WAIT;
    let jobs = loop {
        let jobs = depotctl_json(w, &["call", "Host.getJobs", "--json"]);
        if jobs[long]["status"] != "running" || Instant::now() > deadline {
            break jobs;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(jobs[long]["status"], "aborted", "{jobs}");
    assert_eq!(jobs[long]["error"]["code"], 411, "{jobs}");
    assert!(w.out("# exit 1: error -32601").contains("Method not found"));

    // Storage.
    let st = w.json(r#"/tmp/depot-data\"}]"#);
    assert_eq!(
        st.as_array()
            .map(|a| a.iter().map(|s| s["status"].clone()).collect::<Vec<_>>()),
        Some(vec![0.into()]),
        "one status per connection: {st}"
    );
    let info = w.json("StorageDomain.getInfo storagedomainID=$sd");
    assert_eq!(info["uuid"], sd, "{info}");
    assert_eq!(info["name"], "walkthrough", "{info}");
    assert_eq!(info["class"], "Data", "{info}");
    assert!(
        [512, 4096].contains(&info["block_size"].as_u64().unwrap_or(0)),
        "detected: {info}"
    );
    let md = w.out("# VDSM's format, sealed");
    assert!(md.contains(&format!("\nSDUUID={sd}\n")), "{md}");
    assert!(md.contains("\nCLASS=Data\n"), "{md}");
    check_seal(md);
    let stats = w.json("# code 0, lastCheck, delay");
    let s = &stats[sd];
    assert_eq!(s["code"], 0, "{stats}");
    assert_eq!(s["valid"], true, "{stats}");
    assert!(
        s["lastCheck"]
            .as_str()
            .is_some_and(|v| v.parse::<f64>().is_ok()),
        "{stats}"
    );
    assert!(
        s["delay"]
            .as_str()
            .is_some_and(|v| v.parse::<f64>().is_ok()),
        "{stats}"
    );
    // The SPM's verbs refuse before spmStart (the script checked the
    // code); without sanlock the start gives the local role, and liveness
    // cannot be asked.
    let not_spm = w.out("# exit 1: error 654 (Not SPM)");
    assert!(not_spm.contains("Not SPM"), "{not_spm}");
    let status = w.json("# finished: success");
    assert_eq!(
        (&status["taskState"], &status["taskResult"]),
        (&"finished".into(), &"success".into()),
        "{status}"
    );
    let spm = w.json("# SPM, host id 1, lease version 0");
    assert_eq!(
        spm,
        serde_json::json!({"spmId": 1, "spmStatus": "SPM", "spmLver": 0}),
        "{spm}"
    );
    let liveness = w.out("# exit 1: error 9021");
    assert!(liveness.contains("sanlock is disabled"), "{liveness}");
    let vi = w.json("Volume.getInfo volumeID=$vol");
    assert_eq!(
        (
            &vi["format"],
            &vi["type"],
            &vi["capacity"],
            &vi["description"]
        ),
        (
            &"COW".into(),
            &"SPARSE".into(),
            &"1073741824".into(),
            &"disk1".into()
        ),
        "a 1 GiB thin qcow2 disk: {vi}"
    );
    let prepared = w.json("Image.prepare");
    let path = prepared["path"]
        .as_str()
        .unwrap_or_else(|| panic!("{prepared}"));
    // The path a VM would use: through the pool's link to the domain (the
    // image itself has moved away by the end of the walk-through).
    let repository = w.dir.join("depot-dev/repository");
    let link = repository.join(w.var("sp")).join(sd);
    assert_eq!(
        Path::new(path),
        link.join("images").join(w.var("img")).join(w.var("vol")),
        "{prepared}"
    );
    // The link led to the domain on /tmp/depot-data until the DR failover
    // at the end left the pool (its step 2 disconnects the primary): by
    // now it is gone, and the domain is the replica's (below).
    assert!(
        !link.exists(),
        "{} outlived the failover that left its pool",
        link.display()
    );

    // OVF_STORE.
    let task = w
        .out_all(&["ovf upload", "/tmp/ovf-store.tar"])
        .trim()
        .to_owned();
    assert!(
        task.len() == 36 && task.parse::<uuid::Uuid>().is_ok(),
        "prints the Task-Id: {task:?}"
    );
    let listing = w.out("# the store: valid, generation 1;");
    let store_line = listing
        .lines()
        .find(|l| l.starts_with(w.var("ovfimg")))
        .unwrap_or_else(|| panic!("{listing}"));
    let cols: Vec<&str> = store_line.split_whitespace().collect();
    assert_eq!((cols[2], cols[4]), ("valid", "1"), "{listing}");
    let entity = listing
        .lines()
        .find(|l| l.starts_with(w.var("vm")))
        .unwrap_or_else(|| panic!("{listing}"));
    let cols: Vec<&str> = entity.split_whitespace().collect();
    assert_eq!(
        cols[1..],
        ["myvm", "VM", "1/1", "yes"],
        "myvm: its disk is here, complete: {listing}"
    );
    let ovf = w.out("# myvm's OVF");
    assert!(ovf.contains("<Name>myvm</Name>"), "{ovf}");
    assert!(ovf.contains(&format!(
        "ovf:fileRef=\"{}/{}\"",
        w.var("img"),
        w.var("vol")
    )));
    let downloaded = std::fs::read(w.data.join("ovf-copy.tar")).unwrap();
    assert!(downloaded == std::fs::read(w.data.join("ovf-store.tar")).unwrap());
    w.out("cmp /tmp/ovf-store.tar /tmp/ovf-copy.tar");
    assert!(w.out("# exit 1: error 1000").contains("not a tar archive"));
    let listing = w.out("# still generation 1");
    let cols: Vec<&str> = listing
        .lines()
        .find(|l| l.starts_with(w.var("ovfimg")))
        .unwrap_or_else(|| panic!("{listing}"))
        .split_whitespace()
        .collect();
    assert_eq!((cols[2], cols[4]), ("valid", "1"), "{listing}");
    // The store is unchanged: still the archive that was uploaded.
    let store = w
        .domain("depot-data", "sd")
        .join("images")
        .join(w.var("ovfimg"))
        .join(w.var("ovfvol"));
    let bytes = std::fs::read(&store).unwrap();
    assert!(bytes[..downloaded.len()] == downloaded[..]);

    // Copy and move.
    let (rawimg, raw) = (w.var("rawimg"), w.var("raw"));
    let copied = w.out("# checksum, generation 1");
    let src = w
        .domain("depot-data", "sd")
        .join("images")
        .join(rawimg)
        .join(raw);
    let dst = w
        .domain("depot-data2", "sd2")
        .join("images")
        .join(rawimg)
        .join(raw);
    assert!(
        copied.contains(&format!("checksum: blake2b:{}\n", python_blkhash(&src))),
        "the checksum of the source's data: {copied}"
    );
    assert!(copied.contains("generation: 1\n"), "{copied}");
    assert!(std::fs::read(&src).unwrap() == std::fs::read(&dst).unwrap());
    assert!(w
        .out("# exit 1: error 911")
        .contains("has generation 1, not 0"));
    let images = w.json("StorageDomain.getImages storagedomainID=$sd2");
    assert!(
        images
            .as_array()
            .is_some_and(|a| a.contains(&w.var("img").into())),
        "{images}"
    );
    let (img, vol) = (w.var("img"), w.var("vol"));
    let moved = w
        .domain("depot-data2", "sd2")
        .join("images")
        .join(img)
        .join(vol);
    let q = qemu_img_info(&moved);
    assert_eq!(q["format"], "qcow2", "{q}");
    assert_eq!(q["virtual-size"], 1073741824u64, "{q}");
    assert!(
        !w.domain("depot-data", "sd")
            .join("images")
            .join(img)
            .exists(),
        "the move left the image on the first domain"
    );
    assert!(!list_images(w, "sd").contains(&img.into()));
    assert!(list_images(w, "sd2").contains(&img.into()));

    // Disaster recovery: the plan of the mapping, changing nothing.
    let report = w.out("# disconnect data, connect the replica; fence: unknown");
    for want in [
        "DR plan (failover) from a toml mapping: dc (",
        "disconnect  connected",
        "/depot-replica  connect     not connected",
        "fence check: unknown",
        "sanlock is disabled",
        "nothing was changed",
    ] {
        assert!(
            report.contains(want),
            "{want:?} not in the report:\n{report}"
        );
    }
    assert!(report.contains(sd), "{report}");
    let plan = w.json("# the same plan, as the daemon answered it");
    let conn = &plan["connections"][0];
    assert_eq!(conn["primary"]["state"], "connected", "{plan}");
    assert_eq!(conn["primary"]["action"], "disconnect", "{plan}");
    assert_eq!(conn["secondary"]["action"], "connect", "{plan}");
    assert_eq!(
        conn["domains"][0],
        serde_json::json!({"sd_id": sd, "expected": true, "visible": true, "on": "primary"}),
        "{plan}"
    );
    assert_eq!(plan["fence"]["verdict"], "unknown", "{plan}");
    assert_eq!(plan["primary_pool"]["id"], w.var("sp"), "{plan}");
    assert!(
        w.out("# exit 1: error 9040").contains("error 9040"),
        "a file that is not a mapping is refused"
    );
    // The dry run: the domain found on the replica, nothing written.
    let dry = w.out("# step 3 finds the domain on the replica");
    for want in [
        "DR failover dry run: nothing was changed",
        "step 1, fence check: unchecked",
        "step 2 would do:",
        "would be done",
        "/depot-replica/",
        "step 4: join the lockspaces",
    ] {
        assert!(dry.contains(want), "{want:?} not in the dry run:\n{dry}");
    }
    assert!(dry.contains(sd), "{dry}");
    assert!(
        w.out("# no DR run yet: the dry run wrote no journal")
            .contains("no DR failover or failback on this host"),
        "the dry run left a journal"
    );
    // The failover itself: every step, myvm found, its disk (moved
    // away) missing; the status answers the report.
    let report = w.out("# steps 1-5; myvm found, its disk missing");
    for want in [
        "DR failover into pool ",
        "5 of 5 steps done, finished",
        "1 fence check: unchecked",
        "4 take over: master ",
        "5 VMs and templates:",
        "myvm",
        "missing",
        "valid, generation 1",
    ] {
        assert!(
            report.contains(want),
            "{want:?} not in the report:\n{report}"
        );
    }
    let st = w.json("# finished: the report, kept in the state directory");
    assert_eq!(st["state"], "finished", "{st}");
    let j = &st["journal"];
    assert_eq!(j["takeover"]["master"], sd, "{st}");
    let vm = &j["entities"][0];
    assert_eq!(vm["name"], "myvm", "{st}");
    assert_eq!(vm["disks"][0]["volume"], w.var("vol"), "{st}");
    assert_eq!(vm["disks"][0]["present"], false, "{st}");
    assert_eq!(
        domain_md_pool(w, sd),
        j["pool"].as_str().unwrap(),
        "the replica's domain is in the recovery pool"
    );
}

/// POOL_UUID of the walk-through's domain `sd` on the replica.
fn domain_md_pool(w: &Walk, sd: &str) -> String {
    let md = w
        .data
        .join("depot-replica")
        .join(sd)
        .join("dom_md")
        .join("metadata");
    let text = std::fs::read_to_string(&md).unwrap_or_else(|e| panic!("{}: {e}", md.display()));
    text.lines()
        .find_map(|l| l.strip_prefix("POOL_UUID="))
        .unwrap_or("")
        .to_string()
}

/// `StorageDomain.getImages` of the walk-through's domain `$name`, asked
/// after it.
fn list_images(w: &Walk, name: &str) -> Vec<serde_json::Value> {
    let sd = format!("storagedomainID={}", w.var(name));
    let v = depotctl_json(w, &["call", "StorageDomain.getImages", &sd, "--json"]);
    v.as_array().cloned().unwrap_or_else(|| panic!("{v}"))
}

/// `depotctl ARGS` in the walk-through's directory; its JSON output.
fn depotctl_json(w: &Walk, args: &[&str]) -> serde_json::Value {
    let out = Command::new(bin_dir().join("depotctl"))
        .args(args)
        .current_dir(&w.dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "depotctl {args:?}: {out:?}");
    serde_json::from_slice(&out.stdout).unwrap()
}

fn qemu_img_info(path: &Path) -> serde_json::Value {
    let out = Command::new("qemu-img")
        .args(["info", "--output=json"])
        .arg(path)
        .output()
        .expect("qemu-img (qemu-utils, a requirement of every tier)");
    assert!(
        out.status.success(),
        "qemu-img info {}: {out:?}",
        path.display()
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Checks VDSM's seal of a metadata file independently of depot: the last
/// line `_SHA_CKSUM=` is the sha1 (Python's hashlib) of the other lines
/// concatenated without their newlines.
fn check_seal(text: &str) {
    let script = r#"
import hashlib, sys
lines = sys.stdin.read().splitlines()
assert lines[-1].startswith("_SHA_CKSUM="), lines[-1]
body = "".join(lines[:-1])
print(hashlib.sha1(body.encode("ascii")).hexdigest() == lines[-1][len("_SHA_CKSUM="):])
"#;
    let out = python(script, &[], text.as_bytes());
    assert_eq!(out.trim(), "True", "a broken seal:\n{text}");
}

/// blkhash (ovirt-imageio's checksum: blake2b over 4 MiB blocks' blake2b
/// digests), written out in Python, of a whole file.
fn python_blkhash(path: &Path) -> String {
    let script = r#"
import hashlib, sys
outer = hashlib.blake2b(digest_size=32)
with open(sys.argv[1], "rb") as f:
    while block := f.read(4 << 20):
        outer.update(hashlib.blake2b(block, digest_size=32).digest())
print(outer.hexdigest())
"#;
    python(script, &[path.to_str().unwrap()], b"")
        .trim()
        .to_owned()
}

fn python(script: &str, args: &[&str], stdin: &[u8]) -> String {
    use std::io::Write;
    let mut child = Command::new("python3")
        .arg("-c")
        .arg(script)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 (a requirement of every tier)");
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "python3: {out:?}");
    String::from_utf8(out.stdout).unwrap()
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
    let (s, steps) = script(
        &[format!(
            "{block}e 127.0.0.1:54321 /tmp/f\ndepotctl ping   # ok\ncat /tmp/f\n"
        )],
        Path::new("/t"),
        "127.0.0.1:1",
        Path::new("/o"),
    );
    assert!(s.contains("\nif out=$(d x 2>&1); then echo"), "{s}");
    assert!(s.contains("*'error 9'*)"), "{s}");
    assert!(s.contains("printf '%s\\n' \"$out\" | tee '/o/1'\n"), "{s}");
    assert_eq!(
        promised_code(" # exit 1: error -32601: x").as_deref(),
        Some("-32601")
    );
    assert_eq!(promised_code(" # exit 1").as_deref(), None);
    assert!(s.contains("\ne 127.0.0.1:1 /t/f\n"), "{s}");
    assert!(s.contains("\na     b   # one\n"), "{s}");
    // Kept commands: output to a numbered file, the comment before the `}`.
    assert!(
        s.contains("\n{ depotctl ping   # ok\n} > '/o/2'\ncat '/o/2'\n"),
        "{s}"
    );
    assert!(s.contains("\n{ cat /t/f\n} > '/o/3'\n"), "{s}");
    assert!(s.contains("done > '/o/vars'\n"), "{s}");
    assert_eq!(
        steps,
        [
            Step {
                n: 1,
                readme: "d x   # exit 1: error 9".into(),
                comment: Some("exit 1: error 9".into())
            },
            Step {
                n: 2,
                readme: "depotctl ping   # ok".into(),
                comment: Some("ok".into())
            },
            Step {
                n: 3,
                readme: "cat /tmp/f".into(),
                comment: None
            },
        ]
    );
}
