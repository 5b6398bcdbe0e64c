//! depotctl against a real depotd in dev mode.
//!
//! The daemon binary is taken from next to depotctl's (`target/<profile>/
//! depotd`); build it first (`cargo build -p depotd`, or test the whole
//! workspace). When it is missing the tests say so and pass without running.

use depot_client::{Client, ClientError, Endpoint, Options, TlsIdentity};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(30);

fn depotctl() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_depotctl"))
}

/// The daemon binary built next to depotctl. A missing one fails the test:
/// `tests/run` builds the whole workspace first, and a test that passes
/// without running proves nothing.
fn depotd() -> PathBuf {
    let p = depotctl().parent().expect("binary dir").join("depotd");
    assert!(
        p.exists(),
        "no depotd binary at {}; run `cargo build -p depotd` first",
        p.display()
    );
    p
}

/// A private directory under the system temp dir, removed on drop (short
/// enough for a Unix socket path).
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let p = std::env::temp_dir().join(format!(
            "depotctl-cli-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("temp dir");
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

struct Daemon {
    child: Option<Child>,
    tmp: TempDir,
}

impl Daemon {
    fn start(bin: &Path) -> Daemon {
        Daemon::start_with(bin, |_| String::new())
    }

    /// With more TOML, made from the daemon's temporary directory.
    fn start_with(bin: &Path, extra: impl FnOnce(&Path) -> String) -> Daemon {
        let tmp = TempDir::new();
        let config = tmp.0.join("t.toml");
        std::fs::write(&config, format!("[listen]\nport = 0\n{}", extra(&tmp.0))).unwrap();
        let log = std::fs::File::create(tmp.0.join("depotd.log")).unwrap();
        let child = Command::new(bin)
            .arg("--dev")
            .arg("--dev-dir")
            .arg(tmp.0.join("dev"))
            .arg("--config")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn depotd");
        let mut d = Daemon {
            child: Some(child),
            tmp,
        };
        d.wait_listening();
        d
    }

    fn dev(&self) -> PathBuf {
        self.tmp.0.join("dev")
    }

    fn socket(&self) -> PathBuf {
        self.dev().join("depotd.sock")
    }

    fn pki(&self) -> PathBuf {
        self.dev().join("state/pki")
    }

    fn tls_addr(&self) -> String {
        std::fs::read_to_string(self.dev().join("state/listen-address"))
            .expect("listen-address")
            .trim()
            .to_string()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.tmp.0.join("depotd.log")).unwrap_or_default()
    }

    /// Polls for the socket and the TLS address (up to 30 s).
    fn wait_listening(&mut self) {
        let deadline = Instant::now() + WAIT;
        let addr = self.dev().join("state/listen-address");
        while !(self.socket().exists() && addr.exists()) {
            if let Ok(Some(status)) = self.child.as_mut().unwrap().try_wait() {
                panic!(
                    "depotd exited with {status} before listening; log:\n{}",
                    self.log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "depotd not listening after {WAIT:?}; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, and the daemon must exit 0.
    fn stop(&mut self) {
        let mut child = self.child.take().expect("running");
        let ok = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status()
            .expect("kill")
            .success();
        assert!(ok, "kill -TERM failed");
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                assert!(
                    status.success(),
                    "depotd exited with {status}; log:\n{}",
                    self.log()
                );
                return;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("depotd ignored SIGTERM; log:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Runs depotctl in the daemon's temp dir (so no ./depot-dev of the
    /// caller's is picked up), killing it if it runs past 30 s.
    fn ctl(&self, args: &[&str]) -> Run {
        self.ctl_env(args, None)
    }

    fn ctl_env(&self, args: &[&str], socket_env: Option<&Path>) -> Run {
        let mut cmd = Command::new(depotctl());
        cmd.args(args)
            .current_dir(&self.tmp.0)
            .env_remove("DEPOT_SOCKET")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(s) = socket_env {
            cmd.env("DEPOT_SOCKET", s);
        }
        let mut child = cmd.spawn().expect("spawn depotctl");
        let deadline = Instant::now() + WAIT;
        while child.try_wait().unwrap().is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let out: Output = child.wait_with_output().unwrap();
        let run = Run {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        };
        eprintln!("$ depotctl {}\n{run:?}", args.join(" "));
        run
    }

    fn sock_args(&self) -> Vec<String> {
        vec!["--socket".into(), self.socket().display().to_string()]
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

#[derive(Debug)]
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

fn with<'a>(base: &'a [String], more: &[&'a str]) -> Vec<&'a str> {
    base.iter()
        .map(String::as_str)
        .chain(more.iter().copied())
        .collect()
}

#[test]
fn cli_against_a_dev_daemon() {
    let bin = depotd();
    let mut d = Daemon::start(&bin);
    let s = d.sock_args();

    let r = d.ctl(&with(&s, &["ping"]));
    assert_eq!((r.code, r.stdout.as_str()), (Some(0), "ok\n"), "{r:?}");

    // $DEPOT_SOCKET instead of --socket.
    let r = d.ctl_env(&["ping"], Some(&d.socket()));
    assert_eq!(r.code, Some(0), "{r:?}");

    let r = d.ctl(&with(&s, &["call", "Host.getJobs", "--json"]));
    assert_eq!((r.code, r.stdout.as_str()), (Some(0), "{}\n"), "{r:?}");

    let id = uuid::Uuid::new_v4().to_string();
    let job_id = format!("job_id={id}");
    let r = d.ctl(&with(
        &s,
        &["call", "Host.sleepJob", &job_id, "duration=0.3"],
    ));
    assert_eq!((r.code, r.stdout.as_str()), (Some(0), "true\n"), "{r:?}");

    // Not a terminal: one line per change, ending with the job done.
    let started = Instant::now();
    let r = d.ctl(&with(&s, &["jobs", "--watch", "--interval", "120"]));
    assert_eq!(r.code, Some(0), "{r:?}");
    let last = r.stdout.lines().last().unwrap_or_default();
    assert!(last.starts_with(&id) && last.contains(" done "), "{r:?}");
    assert!(last.contains("[##########] 100%"), "{r:?}");
    // Events, not the 120 s poll, told it the job ended (one-sided: far
    // below the poll however loaded the machine is; ctl kills a watch that
    // waits for the poll at 30 s, and the exit code above fails).
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "{:?}",
        started.elapsed()
    );

    let r = d.ctl(&with(&s, &["jobs"]));
    assert_eq!(r.code, Some(0), "{r:?}");
    assert!(r.stdout.starts_with("JOB ID"), "{r:?}");
    assert!(r.stdout.contains(&id) && r.stdout.contains("done"), "{r:?}");

    let r = d.ctl(&with(
        &s,
        &[
            "call",
            "Host.getJobs",
            &format!("job_ids=[\"{id}\"]"),
            "--json",
        ],
    ));
    assert_eq!(r.code, Some(0), "{r:?}");
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(v[&id]["status"], "done", "{v}");

    // An Ansible var file (by its extension) names no pool ids:
    // --recovery-pool gives the recovery pool's.
    let yml = d.tmp.0.join("dr.yml");
    std::fs::write(
        &yml,
        "dr_import_storages:\n  - dr_domain_type: nfs\n    dr_primary_name: data\n    \
         dr_primary_dc_name: Prod\n    dr_primary_address: 192.0.2.1\n    \
         dr_primary_path: /export/data\n    dr_secondary_name: data\n    \
         dr_secondary_dc_name: Recovery\n    dr_secondary_address: 192.0.2.2\n    \
         dr_secondary_path: /export/data\n",
    )
    .unwrap();
    let yml = yml.display().to_string();
    let sp = uuid::Uuid::new_v4().to_string();
    let r = d.ctl(&with(
        &s,
        &[
            "dr",
            "plan",
            "--mapping",
            &yml,
            "--recovery-pool",
            &sp,
            "--json",
        ],
    ));
    assert_eq!(r.code, Some(0), "{r:?}");
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(v["secondary_pool"]["id"], sp.as_str(), "{v}");
    let r = d.ctl(&with(
        &s,
        &[
            "dr",
            "failover",
            "--mapping",
            &yml,
            "--recovery-pool",
            &sp,
            "--dry-run",
            "--json",
        ],
    ));
    assert_eq!(r.code, Some(0), "{r:?}");
    assert!(r.stdout.contains(&format!("master of {sp}")), "{r:?}");

    let r = d.ctl(&with(&s, &["call", "No.such"]));
    assert_eq!(r.code, Some(1), "{r:?}");
    assert!(r.stderr.starts_with("error -32601: "), "{r:?}");

    let r = d.ctl(&with(&s, &["call", "Host.abortJob", "notakeyvalue"]));
    assert_eq!(r.code, Some(2), "{r:?}");

    let missing = d.tmp.0.join("missing.sock").display().to_string();
    let r = d.ctl(&["--socket", &missing, "ping"]);
    assert_eq!(r.code, Some(3), "{r:?}");

    let addr = d.tls_addr();
    let pki = d.pki().display().to_string();
    let r = d.ctl(&["--host", &addr, "--pki", &pki, "ping"]);
    assert_eq!((r.code, r.stdout.as_str()), (Some(0), "ok\n"), "{r:?}");
    let r = d.ctl(&[
        "--host",
        &addr,
        "--pki",
        &pki,
        "--flow-id",
        "cli-test",
        "call",
        "Host.getJobs",
        "--json",
    ]);
    assert_eq!(r.code, Some(0), "{r:?}");

    d.stop();
}

/// `--stomp`: calls, jobs --watch (its events) and the exit codes over
/// STOMP 1.2, the engine's transport, on TLS and on the local socket.
#[test]
fn stomp_calls_jobs_and_events() {
    let bin = depotd();
    let mut d = Daemon::start(&bin);
    let (addr, pki) = (d.tls_addr(), d.pki().display().to_string());
    let tls = ["--stomp", "--host", addr.as_str(), "--pki", pki.as_str()];
    let r = d.ctl(&[&tls[..], &["ping"]].concat());
    assert_eq!((r.code, r.stdout.as_str()), (Some(0), "ok\n"), "{r:?}");
    assert!(d.log().contains("STOMP client connected"), "{}", d.log());

    let r = d.ctl(
        &[
            &tls[..],
            &["--flow-id", "cli-stomp", "call", "Host.getJobs", "--json"],
        ]
        .concat(),
    );
    assert_eq!((r.code, r.stdout.as_str()), (Some(0), "{}\n"), "{r:?}");
    assert!(d.log().contains("cli-stomp"), "{}", d.log());
    let r = d.ctl(&[&tls[..], &["call", "No.such"]].concat());
    assert_eq!(r.code, Some(1), "{r:?}");
    assert!(r.stderr.starts_with("error -32601: "), "{r:?}");

    // A job watched to its end through its events.
    let job = "5c1b1f0e-7a8d-4c1e-9b0a-3f2e1d0c9b8a";
    let sock = d.sock_args();
    let stomp_sock = with(&sock, &["--stomp"]);
    let r = d.ctl(&with(
        &stomp_sock.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
        &[
            "call",
            "Host.sleepJob",
            &format!("job_id={job}"),
            "duration=1",
        ],
    ));
    assert_eq!(r.code, Some(0), "{r:?}");
    let r = d.ctl(&[&tls[..], &["jobs", "--watch"]].concat());
    assert_eq!(r.code, Some(0), "{r:?}");
    assert!(
        r.stdout.contains(job) && r.stdout.contains(" done "),
        "{r:?}"
    );
    assert!(!r.stderr.contains("polling"), "no events over STOMP: {r:?}");

    let missing = d.tmp.0.join("missing.sock").display().to_string();
    let r = d.ctl(&["--stomp", "--socket", &missing, "ping"]);
    assert_eq!(r.code, Some(3), "{r:?}");
    d.stop();
}

#[tokio::test]
async fn tls_refuses_missing_and_foreign_client_certificates() {
    let bin = depotd();
    let (mut a, mut b) = (Daemon::start(&bin), Daemon::start(&bin));
    let opts = Options::with_timeout(Duration::from_secs(10));
    let good = Endpoint::tls_from_pki_dir(a.tls_addr(), a.pki());

    let c = Client::connect_with(&good, opts).await.unwrap();
    assert_eq!(c.call("Host.ping2", json!({})).await.unwrap(), json!(true));

    // No certificate, then one signed by the other daemon's CA: refused,
    // during the handshake (TLS 1.2) or at the first read (TLS 1.3).
    let foreign = TlsIdentity {
        cert: b.pki().join("client.pem"),
        key: b.pki().join("client-key.pem"),
    };
    for identity in [None, Some(foreign)] {
        let ep = good.clone().with_identity(identity.clone());
        let r = match Client::connect_with(&ep, opts).await {
            Ok(c) => c.call("Host.ping2", json!({})).await,
            Err(e) => Err(e),
        };
        assert!(matches!(r, Err(ClientError::Tls(_))), "{identity:?}: {r:?}");
    }

    // A server whose certificate another CA signed is refused by us.
    let wrong_ca = Endpoint::tls_from_pki_dir(b.tls_addr(), a.pki());
    let r = Client::connect_with(&wrong_ca, opts).await;
    assert!(matches!(r, Err(ClientError::Tls(_))), "{:?}", r.err());

    drop(c);
    a.stop();
    b.stop();
}

#[tokio::test]
async fn client_library_over_http_and_websocket() {
    let bin = depotd();
    let mut d = Daemon::start(&bin);
    let opts = Options::with_timeout(Duration::from_secs(10));
    let ep = Endpoint::Unix(d.socket());

    // HTTP: raw bodies, notifications, flow ids.
    let c = Client::connect_with(&ep, opts).await.unwrap();
    let (status, body) = c.post_raw(b"{nope".to_vec()).await.unwrap();
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        (status, v["error"]["code"].as_i64()),
        (200, Some(-32700)),
        "{v}"
    );
    c.notify("Host.ping2", serde_json::Value::Null)
        .await
        .unwrap();
    let batch = json!([
        {"jsonrpc": "2.0", "id": 1, "method": "Host.ping2"},
        {"jsonrpc": "2.0", "id": 2, "method": "No.such"},
    ]);
    let (status, body) = c.post_raw(batch.to_string().into_bytes()).await.unwrap();
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!((status, v.as_array().map(Vec::len)), (200, Some(2)), "{v}");
    let e = c
        .call_with_flow_id("No.such", json!({}), "f-1")
        .await
        .unwrap_err();
    assert_eq!(e.rpc_code(), Some(-32601), "{e}");
    // Events need a WebSocket.
    let e = c.call("Host.subscribeEvents", json!({})).await.unwrap_err();
    assert_eq!(e.rpc_code(), Some(9002), "{e}");

    // WebSocket: concurrent calls from clones, events, raw messages.
    let ws = depot_client::WsClient::connect_with(&ep, opts)
        .await
        .unwrap();
    ws.subscribe(&["|jobs|status|"]).await.unwrap();
    let calls = (0..20).map(|_| {
        let ws = ws.clone();
        tokio::spawn(async move { ws.call("Host.ping2", json!({})).await })
    });
    for t in calls {
        assert_eq!(t.await.unwrap().unwrap(), json!(true));
    }
    let id = uuid::Uuid::new_v4().to_string();
    ws.call("Host.sleepJob", json!({"job_id": id, "duration": 0.1}))
        .await
        .unwrap();
    let deadline = Instant::now() + WAIT;
    loop {
        let (name, params) = ws.next_event(WAIT).await.expect("an event");
        assert_eq!(name, format!("|jobs|status|{id}"));
        if params["status"] == "done" {
            assert!(params["notify_time"].is_u64(), "{params}");
            break;
        }
        assert!(Instant::now() < deadline);
    }
    ws.send_raw("{nope").await.unwrap();
    let v = ws.recv_raw(WAIT).await.expect("an answer to broken JSON");
    assert_eq!(v["error"]["code"], -32700, "{v}");

    d.stop();
    // The daemon is gone: calls fail instead of hanging.
    let e = ws.call("Host.ping2", json!({})).await.unwrap_err();
    assert!(!e.is_rpc(), "{e}");
}

/// Builds a USTAR archive with python3's tarfile module, as the engine's
/// tar looks: `entries` are (name, content), in order.
fn python_tar(out: &Path, entries: &[(&str, &str)]) {
    const SCRIPT: &str = r#"
import io, json, sys, tarfile
with tarfile.open(sys.argv[1], "w", format=tarfile.USTAR_FORMAT) as t:
    for name, text in json.loads(sys.argv[2]):
        data = text.encode()
        info = tarfile.TarInfo(name)
        info.size = len(data)
        t.addfile(info, io.BytesIO(data))
"#;
    let entries = serde_json::to_string(entries).unwrap();
    let status = Command::new("python3")
        .arg("-c")
        .arg(SCRIPT)
        .arg(out)
        .arg(&entries)
        .status()
        .expect("python3 is needed to build the test's tar");
    assert!(status.success(), "python3 tarfile: {status}");
}

#[test]
fn ovf_store_upload_list_show_download() {
    let bin = depotd();
    let mut d = Daemon::start(&bin);
    let s = d.sock_args();
    let uuid = || uuid::Uuid::new_v4().to_string();
    let (sd, sp, img, vol, vm) = (uuid(), uuid(), uuid(), uuid(), uuid());
    let blank = "00000000-0000-0000-0000-000000000000";
    let data = d.tmp.0.join("data");
    std::fs::create_dir_all(&data).unwrap();
    let data = data.display().to_string();
    let ok = |r: Run| {
        assert_eq!(r.code, Some(0), "{r:?}");
        r.stdout
    };

    // A LOCALFS domain and an OVF_STORE volume on it.
    let conn = format!(
        "connectionParams=[{{\"id\": \"{}\", \"connection\": \"{data}\"}}]",
        uuid()
    );
    ok(d.ctl(&with(
        &s,
        &[
            "call",
            "StoragePool.connectStorageServer",
            "domainType=4",
            &conn,
        ],
    )));
    ok(d.ctl(&with(
        &s,
        &[
            "call",
            "StorageDomain.create",
            &format!("storagedomainID={sd}"),
            "domainType=4",
            &format!("typeArgs={data}"),
            "name=ovf-test",
            "domainClass=1",
            "blockSize=0",
        ],
    )));
    ok(d.ctl(&with(
        &s,
        &[
            "call",
            "Volume.create",
            &format!("volumeID={vol}"),
            &format!("storagedomainID={sd}"),
            &format!("imageID={img}"),
            "size=134217728",
            "volFormat=RAW",
            "preallocate=SPARSE",
            "diskType=OVFS",
            "desc=OVF_STORE",
            &format!("srcImgUUID={blank}"),
            &format!("srcVolUUID={blank}"),
        ],
    )));
    let r = d.ctl(&with(&s, &["ovf", "list", "--domain", &sd]));
    let out = ok(r);
    assert!(out.starts_with("IMAGE ID") && out.contains(&vol), "{out}");
    assert!(out.contains(" unknown "), "not written yet: {out}");

    // The engine's tar: info.json, one VM's OVF, metadata.json.
    let ovf = format!(
        concat!(
            r#"<ovf:Envelope xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1/" "#,
            r#"xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">"#,
            r#"<Section xsi:type="ovf:DiskSection_Type">"#,
            r#"<Disk ovf:diskId="{vol}" ovf:fileRef="{img}/{vol}"/></Section>"#,
            r#"<Content ovf:id="out" xsi:type="ovf:VirtualSystem_Type"><Name>myvm</Name>"#,
            r#"</Content></ovf:Envelope>"#
        ),
        vol = vol,
        img = img
    );
    let info = format!(r#"{{"Last Updated": "now", "Storage Domains": [{{"uuid": "{sd}"}}]}}"#);
    let tar = d.tmp.0.join("store.tar");
    let ovf_name = format!("{vm}.ovf");
    python_tar(
        &tar,
        &[
            ("info.json", &info),
            (&ovf_name, &ovf),
            ("metadata.json", "{}"),
        ],
    );
    let tar_bytes = std::fs::read(&tar).unwrap();
    assert_eq!(tar_bytes.len() % 512, 0);
    let size = tar_bytes.len().to_string();
    let tar_arg = tar.display().to_string();
    let ids = [
        "--pool", &sp, "--domain", &sd, "--image", &img, "--volume", &vol,
    ];
    let ovf_args = |cmd: &str, rest: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = s.clone();
        v.extend(
            ["ovf", cmd]
                .iter()
                .chain(&ids)
                .chain(rest)
                .map(|a| a.to_string()),
        );
        v
    };
    let run = |args: Vec<String>| d.ctl(&args.iter().map(String::as_str).collect::<Vec<_>>());

    // Upload: the Task-Id, alone on its line.
    let out = ok(run(ovf_args("upload", &[&tar_arg])));
    let task = out.trim_end();
    assert!(
        task.parse::<uuid::Uuid>().is_ok() && out.lines().count() == 1,
        "{out:?}"
    );

    let out = ok(d.ctl(&with(&s, &["ovf", "list", "--domain", &sd])));
    let row = out
        .lines()
        .find(|l| l.contains(&vol))
        .expect("the store's row");
    let cells: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(
        cells[..5],
        [img.as_str(), &vol, "valid", &size, "1"],
        "{out}"
    );

    let out = ok(d.ctl(&with(&s, &["ovf", "list", "--domain", &sd, "--entities"])));
    let row = out
        .lines()
        .find(|l| l.starts_with(&vm))
        .expect("the VM's row");
    let cells: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(cells, [vm.as_str(), "myvm", "VM", "1/1", "yes"], "{out}");
    assert!(
        out.contains(&format!("OVF_STORE {img}/{vol} (generation 1)")),
        "{out}"
    );

    let out = ok(d.ctl(&with(&s, &["ovf", "show", "--domain", &sd, &vm])));
    assert_eq!(out, format!("{ovf}\n"));
    let r = d.ctl(&with(&s, &["ovf", "show", "--domain", &sd, &uuid()]));
    assert_eq!(r.code, Some(1), "{r:?}");
    assert!(r.stderr.starts_with("error 9007: "), "{r:?}");

    // Download: the size from getOvfStores, then a given size; over the
    // socket and over mutual TLS.
    let dl = d.tmp.0.join("dl.tar");
    let dl_arg = dl.display().to_string();
    let out = ok(run(ovf_args("download", &[&dl_arg])));
    assert_eq!(out, format!("{size} bytes written to {dl_arg}\n"));
    assert!(
        std::fs::read(&dl).unwrap() == tar_bytes,
        "downloaded bytes differ"
    );
    ok(run(ovf_args("download", &["--size", "1024", &dl_arg])));
    assert_eq!(std::fs::read(&dl).unwrap(), tar_bytes[..1024]);
    let (addr, pki) = (d.tls_addr(), d.pki().display().to_string());
    let mut tls: Vec<String> = ["--host", &addr, "--pki", &pki, "ovf", "download"]
        .iter()
        .chain(&ids)
        .map(|a| a.to_string())
        .collect();
    tls.push(dl_arg.clone());
    ok(run(tls));
    assert!(
        std::fs::read(&dl).unwrap() == tar_bytes,
        "downloaded bytes differ (TLS)"
    );

    // Not a tar: refused with the daemon's code, the store unchanged.
    let junk = d.tmp.0.join("junk.bin");
    std::fs::write(&junk, "not a tar archive\n".repeat(512)).unwrap();
    let r = run(ovf_args("upload", &[&junk.display().to_string()]));
    assert_eq!(r.code, Some(1), "{r:?}");
    assert!(r.stderr.starts_with("error 1000: "), "{r:?}");
    assert!(r.stderr.contains("not a tar archive"), "{r:?}");
    let out = ok(d.ctl(&with(&s, &["ovf", "list", "--domain", &sd])));
    let row = out
        .lines()
        .find(|l| l.contains(&vol))
        .expect("the store's row");
    assert!(
        row.contains(" valid ") && row.contains(&format!(" {size}  1 ")),
        "{out}"
    );
    // A missing file is a usage error; nothing is sent.
    let r = run(ovf_args("upload", &["/nonexistent/store.tar"]));
    assert_eq!(r.code, Some(2), "{r:?}");

    d.stop();
}

#[test]
fn copy_and_move_between_localfs_domains() {
    let bin = depotd();
    let mut d = Daemon::start(&bin);
    let s = d.sock_args();
    let uuid = || uuid::Uuid::new_v4().to_string();
    let blank = "00000000-0000-0000-0000-000000000000";
    let (img, vol) = (uuid(), uuid());
    let ok = |r: Run| {
        assert_eq!(r.code, Some(0), "{r:?}");
        r.stdout
    };

    // Three LOCALFS domains: A and B with the same RAW SPARSE 16 MiB volume
    // (same ids), C empty.
    let mut doms = Vec::new();
    for name in ["a", "b", "c"] {
        let dir = d.tmp.0.join(format!("data-{name}"));
        std::fs::create_dir_all(&dir).unwrap();
        let dir = dir.display().to_string();
        let sd = uuid();
        let conn = format!(
            "connectionParams=[{{\"id\": \"{}\", \"connection\": \"{dir}\"}}]",
            uuid()
        );
        ok(d.ctl(&with(
            &s,
            &[
                "call",
                "StoragePool.connectStorageServer",
                "domainType=4",
                &conn,
            ],
        )));
        ok(d.ctl(&with(
            &s,
            &[
                "call",
                "StorageDomain.create",
                &format!("storagedomainID={sd}"),
                "domainType=4",
                &format!("typeArgs={dir}"),
                &format!("name=copy-{name}"),
                "domainClass=1",
                "blockSize=0",
            ],
        )));
        if name != "c" {
            ok(d.ctl(&with(
                &s,
                &[
                    "call",
                    "Volume.create",
                    &format!("volumeID={vol}"),
                    &format!("storagedomainID={sd}"),
                    &format!("imageID={img}"),
                    "size=16777216",
                    "volFormat=RAW",
                    "preallocate=SPARSE",
                    "diskType=DATA",
                    "desc=copy-test",
                    &format!("srcImgUUID={blank}"),
                    &format!("srcVolUUID={blank}"),
                ],
            )));
        }
        doms.push((PathBuf::from(dir), sd));
    }
    let file = |i: usize| doms[i].0.join(&doms[i].1).join("images").join(&img);
    let (sd_a, sd_b, sd_c) = (doms[0].1.clone(), doms[1].1.clone(), doms[2].1.clone());

    // Some data in A's volume: at the start and at 5 MiB.
    {
        use std::io::{Seek, SeekFrom, Write};
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open(file(0).join(&vol))
            .unwrap();
        f.write_all(&b"depot copy test\n".repeat(1000)).unwrap();
        f.seek(SeekFrom::Start(5 << 20)).unwrap();
        f.write_all(&[0xa5; 70000]).unwrap();
    }

    let src = format!("{sd_a}/{img}/{vol}");
    let dst = format!("{sd_b}/{img}/{vol}");
    let out = ok(d.ctl(&with(&s, &["copy", &src, &dst])));
    assert!(out.contains("checksum: blake2b:"), "{out}");
    assert!(out.contains("generation: 1"), "{out}");
    assert!(
        std::fs::read(file(0).join(&vol)).unwrap() == std::fs::read(file(1).join(&vol)).unwrap(),
        "destination bytes differ"
    );

    // B is at generation 1 now.
    let r = d.ctl(&with(&s, &["copy", &src, &dst, "--generation", "0"]));
    assert_eq!(r.code, Some(1), "{r:?}");
    assert!(r.stderr.contains("error 911: "), "{r:?}");

    // A bad volume path is a usage error.
    let r = d.ctl(&with(&s, &["copy", &format!("{sd_a}/{img}"), &dst]));
    assert_eq!(r.code, Some(2), "{r:?}");

    // Move A's image to C.
    let out = ok(d.ctl(&with(
        &s,
        &["move", "--domain", &sd_a, "--to", &sd_c, "--image", &img],
    )));
    assert!(out.contains("volume 1:"), "{out}");
    let images = |sd: &str| {
        let out = ok(d.ctl(&with(
            &s,
            &[
                "call",
                "StorageDomain.getImages",
                &format!("storagedomainID={sd}"),
                "--json",
            ],
        )));
        serde_json::from_str::<Vec<String>>(out.trim()).unwrap()
    };
    assert_eq!(images(&sd_c), vec![img.clone()]);
    assert!(images(&sd_a).is_empty());
    assert!(file(2).join(&vol).exists() && !file(0).join(&vol).exists());

    d.stop();
}

/// `depotctl backup`: after an OVF_STORE upload recorded in the archive,
/// `list` and `show` (tables and --json) name the trusted copy,
/// `restore` writes it back, and `attach` refuses a file that is not an
/// archive (error 1000) and needs --resume or --fresh (usage, exit 2).
// long: about 110 lines: the domain and store set up through depotctl,
// then each backup command.
#[test]
fn backup_list_show_restore_attach() {
    let bin = depotd();
    let d = Daemon::start_with(&bin, |dir| {
        format!(
            "[ovf_backup]\nproviders = [\"stores\", \"archive\"]\narchive_path = \"{}\"\n\
             retry_first_s = 0.1\nretry_max_s = 0.5\n",
            dir.join("archive.db").display()
        )
    });
    let s = d.sock_args();
    let uuid = || uuid::Uuid::new_v4().to_string();
    let (sd, sp, img, vol, vm) = (uuid(), uuid(), uuid(), uuid(), uuid());
    let blank = "00000000-0000-0000-0000-000000000000";
    let data = d.tmp.0.join("data");
    std::fs::create_dir_all(&data).unwrap();
    let data = data.display().to_string();
    let ok = |r: Run| {
        assert_eq!(r.code, Some(0), "{r:?}");
        r.stdout
    };
    let conn = format!(
        "connectionParams=[{{\"id\": \"{}\", \"connection\": \"{data}\"}}]",
        uuid()
    );
    ok(d.ctl(&with(
        &s,
        &[
            "call",
            "StoragePool.connectStorageServer",
            "domainType=4",
            &conn,
        ],
    )));
    ok(d.ctl(&with(
        &s,
        &[
            "call",
            "StorageDomain.create",
            &format!("storagedomainID={sd}"),
            "domainType=4",
            &format!("typeArgs={data}"),
            "name=backup-test",
            "domainClass=1",
            "blockSize=0",
        ],
    )));
    ok(d.ctl(&with(
        &s,
        &[
            "call",
            "Volume.create",
            &format!("volumeID={vol}"),
            &format!("storagedomainID={sd}"),
            &format!("imageID={img}"),
            "size=134217728",
            "volFormat=RAW",
            "preallocate=SPARSE",
            "diskType=OVFS",
            "desc=OVF_STORE",
            &format!("srcImgUUID={blank}"),
            &format!("srcVolUUID={blank}"),
        ],
    )));
    let ovf = concat!(
        r#"<ovf:Envelope xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1/" "#,
        r#"xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">"#,
        r#"<Content ovf:id="out" xsi:type="ovf:VirtualSystem_Type"><Name>bk</Name>"#,
        r#"</Content></ovf:Envelope>"#
    );
    let info = format!(r#"{{"Last Updated": "now", "Storage Domains": [{{"uuid": "{sd}"}}]}}"#);
    let tar = d.tmp.0.join("store.tar");
    python_tar(&tar, &[("info.json", &info), (&format!("{vm}.ovf"), ovf)]);
    let tar_arg = tar.display().to_string();
    ok(d.ctl(&with(
        &s,
        &[
            "ovf", "upload", "--pool", &sp, "--domain", &sd, "--image", &img, "--volume", &vol,
            &tar_arg,
        ],
    )));

    // Each generation written to the store is recorded in the archive
    // asynchronously: only then do two providers agree on it (and a
    // restore without a chosen provider takes it).
    let agreed = |generation: u64| {
        let deadline = Instant::now() + WAIT;
        loop {
            let out = ok(d.ctl(&with(&s, &["backup", "list", "--json"])));
            let v: serde_json::Value = serde_json::from_str(&out).expect("JSON");
            let e = &v["entities"][0];
            let agree = e["copies"].as_array().is_some_and(|c| {
                c.iter().any(|c| {
                    c["generation"] == generation
                        && c["agreesWith"].as_array().is_some_and(|a| a.len() >= 2)
                })
            });
            if e["trustedGeneration"] == generation && agree {
                break v;
            }
            assert!(
                Instant::now() < deadline,
                "generation {generation} never recorded: {v}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    let listing = agreed(1);
    assert_eq!(
        listing["entities"][0]["copies"].as_array().map(Vec::len),
        Some(2),
        "{listing}"
    );
    assert_eq!(listing["entities"][0]["id"], vm.as_str(), "{listing}");
    let out = ok(d.ctl(&with(&s, &["backup", "list"])));
    let row = out
        .lines()
        .find(|l| l.starts_with(&vm))
        .expect("the VM's row");
    assert!(row.contains("bk") && row.contains("archive gen 1"), "{out}");
    assert!(row.contains("2 providers that agree"), "{out}");
    let out = ok(d.ctl(&with(&s, &["backup", "show", &vm])));
    assert!(out.starts_with("VM bk ("), "{out}");
    assert!(out.contains("trusted: archive, generation 1"), "{out}");
    assert!(out.ends_with(&format!("{ovf}\n")), "{out}");

    let out = ok(d.ctl(&with(&s, &["backup", "restore", "--domain", &sd])));
    assert!(
        out.starts_with(&format!("restored into {sd}/{img}/{vol} as generation 2")),
        "{out}"
    );
    assert!(
        out.contains(&format!("{vm} bk from archive (generation 1")),
        "{out}"
    );
    // The restore's generation 2 recorded too (CI once restored before
    // it was: "no two providers agree", stores at 2, archive at 1).
    agreed(2);
    let out = ok(d.ctl(&with(&s, &["backup", "restore", "--domain", &sd, "--json"])));
    let v: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    assert_eq!(v["generation"], 3, "{v}");

    let junk = d.tmp.0.join("junk.db");
    std::fs::write(&junk, "junk").unwrap();
    let junk = junk.display().to_string();
    let r = d.ctl(&with(&s, &["backup", "attach", &junk, "--fresh"]));
    assert_eq!(r.code, Some(1), "{r:?}");
    assert!(
        r.stderr.starts_with("error 1000: ") && r.stderr.contains("junk.db"),
        "{r:?}"
    );
    let r = d.ctl(&with(&s, &["backup", "attach", &junk]));
    assert_eq!(r.code, Some(2), "{r:?}");
    let r = d.ctl(&with(
        &s,
        &["backup", "attach", &junk, "--resume", "--fresh"],
    ));
    assert_eq!(r.code, Some(2), "{r:?}");
}
