//! Starts a depotd in dev mode on a temporary directory for a benchmark.

use depot_client::{Client, Endpoint};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub fn sibling_depotd() -> PathBuf {
    let me = std::env::current_exe().expect("current exe");
    me.with_file_name("depotd")
}

pub struct Daemon {
    pub dir: tempfile::TempDir,
    child: Child,
}

impl Daemon {
    pub async fn start(bin: &Path, extra_config: &str) -> Result<Daemon, String> {
        if !bin.exists() {
            return Err(format!(
                "no depotd at {}; run `cargo build --release -p depotd -p depot-bench`",
                bin.display()
            ));
        }
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let config = dir.path().join("bench.toml");
        std::fs::write(&config, format!("[listen]\nport = 0\n{extra_config}"))
            .map_err(|e| e.to_string())?;
        let log =
            std::fs::File::create(dir.path().join("depotd.log")).map_err(|e| e.to_string())?;
        let child = Command::new(bin)
            .arg("--dev")
            .arg("--dev-dir")
            .arg(dir.path().join("dev"))
            .arg("--config")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
        let d = Daemon { dir, child };
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(c) = Client::connect(&d.unix()).await {
                if c.call("Host.ping2", serde_json::json!({})).await.is_ok() {
                    return Ok(d);
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Err("depotd did not answer in 30 s".into())
    }

    fn dev(&self) -> PathBuf {
        self.dir.path().join("dev")
    }

    pub fn unix(&self) -> Endpoint {
        Endpoint::Unix(self.dev().join("depotd.sock"))
    }

    pub fn tls(&self) -> Endpoint {
        let addr =
            std::fs::read_to_string(self.dev().join("state/listen-address")).unwrap_or_default();
        Endpoint::tls_from_pki_dir(addr.trim(), self.dev().join("state/pki"))
    }

    /// CPU time (user + system) the daemon has used, in seconds.
    pub fn cpu_seconds(&self) -> f64 {
        let stat =
            std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap_or_default();
        // Fields after the parenthesised command name; utime and stime are
        // the 14th and 15th fields overall, in clock ticks (100 per second).
        let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
        let f: Vec<&str> = rest.split_whitespace().collect();
        let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
        (ticks(11) + ticks(12)) / 100.0
    }

    /// CPU time (user + system) of the daemon and of its children it has
    /// waited for (qemu-img, mount, ...), in seconds.
    pub fn cpu_seconds_with_children(&self) -> f64 {
        let stat =
            std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap_or_default();
        let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
        let f: Vec<&str> = rest.split_whitespace().collect();
        let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
        // utime, stime, cutime, cstime: fields 14 to 17 overall.
        (ticks(11) + ticks(12) + ticks(13) + ticks(14)) / 100.0
    }

    /// Whether the daemon is still running (not exited, not a zombie).
    pub fn alive(&self) -> bool {
        let stat =
            std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap_or_default();
        let state = stat
            .rsplit_once(')')
            .map(|(_, r)| r.trim_start())
            .unwrap_or("");
        !state.is_empty() && !state.starts_with('Z') && !state.starts_with('X')
    }

    /// The last `n` lines of depotd's log, for error messages.
    pub fn log_tail(&self, n: usize) -> String {
        let text = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// depotd's log (its stderr).
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("depotd.log")
    }

    /// Resident set size in KiB, from /proc.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// VDSM's BLANK_UUID: "no parent", "no pool".
pub const BLANK: &str = "00000000-0000-0000-0000-000000000000";

/// One call; the error names the verb.
pub async fn call(
    c: &Client,
    method: &str,
    params: serde_json::Value,
) -> Result<serde_json::Value, String> {
    c.call(method, params)
        .await
        .map_err(|e| format!("{method}: {e}"))
}

/// Connects `storage` (a local directory) as LOCALFS and creates a Data
/// domain named `name` on it; returns the domain's id.
pub async fn localfs_domain(c: &Client, storage: &Path, name: &str) -> Result<String, String> {
    let new_id = || uuid::Uuid::new_v4().to_string();
    let statuses = call(
        c,
        "StoragePool.connectStorageServer",
        serde_json::json!({
            "storagepoolID": BLANK,
            "domainType": 4,
            "connectionParams": [{"id": new_id(), "connection": storage.display().to_string()}],
        }),
    )
    .await?;
    if statuses[0]["status"] != serde_json::json!(0) {
        return Err(format!("connectStorageServer: {statuses}"));
    }
    let sd = new_id();
    call(
        c,
        "StorageDomain.create",
        serde_json::json!({
            "storagedomainID": sd,
            "domainType": 4,
            "typeArgs": storage.display().to_string(),
            "name": name,
            "domainClass": 1,
            "version": 5,
        }),
    )
    .await?;
    Ok(sd)
}
