//! Test harness: runs the real `depotd` binary in dev mode on a temporary
//! directory, with a free port and a fake `NOTIFY_SOCKET` that records what
//! the daemon tells systemd.

#![allow(dead_code)]

use depot_client::{Client, Endpoint, Options, WsClient};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

pub const WAIT: Duration = Duration::from_secs(30);

pub struct Daemon {
    pub dir: tempfile::TempDir,
    child: Option<Child>,
    notify: UnixDatagram,
    extra_config: String,
    env: Vec<(String, String)>,
    /// The TLS port of the next start: 0 (a free one) unless `keep_port`.
    port: u16,
    /// The argv depotd runs under (empty: directly): a host's namespace
    /// (`SanlockHost::ns_prefix`).
    prefix: Vec<String>,
    /// Notifications received so far, in order.
    pub notifications: Vec<String>,
}

impl Daemon {
    /// Starts depotd with `extra_config` (TOML) merged over the test
    /// defaults, and waits for READY=1.
    pub fn start(extra_config: &str) -> Daemon {
        Daemon::start_with_env(extra_config, &[])
    }

    /// Like `start`, depotd run under `prefix` (an argv that execs its
    /// command, such as `nsenter -t PID -m --`: a host of several, with
    /// its own sanlock daemon, depot_testkit::sanlock::SanlockHost).
    /// `pid()` is depotd's: checked here.
    pub fn start_in(prefix: &[String], extra_config: &str) -> Daemon {
        let d = Daemon::start_full(prefix, extra_config, &[]);
        let exe = std::fs::read_link(format!("/proc/{}/exe", d.pid())).expect("depotd's exe");
        assert_eq!(
            exe.file_name(),
            std::path::Path::new(env!("CARGO_BIN_EXE_depotd")).file_name(),
            "{prefix:?} did not exec depotd: pid {} is {}",
            d.pid(),
            exe.display()
        );
        d
    }

    /// Like `start`, with extra environment variables for the daemon.
    pub fn start_with_env(extra_config: &str, env: &[(&str, &str)]) -> Daemon {
        Daemon::start_full(&[], extra_config, env)
    }

    /// [`start_in`](Self::start_in) with environment variables (a test
    /// hook of a host in its own namespace).
    pub fn start_in_with_env(
        prefix: &[String],
        extra_config: &str,
        env: &[(&str, &str)],
    ) -> Daemon {
        Daemon::start_full(prefix, extra_config, env)
    }

    fn start_full(prefix: &[String], extra_config: &str, env: &[(&str, &str)]) -> Daemon {
        let dir = tempfile::tempdir().expect("tempdir");
        let notify = UnixDatagram::bind(dir.path().join("notify.sock")).expect("notify socket");
        notify
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let mut d = Daemon {
            dir,
            child: None,
            notify,
            extra_config: extra_config.to_string(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            port: 0,
            prefix: prefix.to_vec(),
            notifications: Vec::new(),
        };
        d.spawn();
        d.wait_ready();
        d
    }

    pub fn dev_dir(&self) -> PathBuf {
        self.dir.path().join("dev")
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dev_dir().join("state")
    }

    pub fn socket(&self) -> PathBuf {
        self.dev_dir().join("depotd.sock")
    }

    pub fn pki(&self) -> PathBuf {
        self.state_dir().join("pki")
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("depotd.log")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    pub fn tls_addr(&self) -> String {
        std::fs::read_to_string(self.state_dir().join("listen-address"))
            .expect("listen-address")
            .trim()
            .to_string()
    }

    pub fn unix(&self) -> Endpoint {
        Endpoint::Unix(self.socket())
    }

    pub fn tls(&self) -> Endpoint {
        Endpoint::tls_from_pki_dir(self.tls_addr(), self.pki())
    }

    pub async fn client(&self) -> Client {
        Client::connect_with(&self.unix(), Options::with_timeout(WAIT))
            .await
            .expect("connect to the local socket")
    }

    pub async fn tls_client(&self) -> Client {
        Client::connect_with(&self.tls(), Options::with_timeout(WAIT))
            .await
            .expect("connect over TLS")
    }

    pub async fn ws(&self) -> WsClient {
        WsClient::connect_with(&self.unix(), Options::with_timeout(WAIT))
            .await
            .expect("WebSocket")
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().expect("running").id() as i32
    }

    fn spawn(&mut self) {
        let config = self.dir.path().join("test.toml");
        std::fs::write(
            &config,
            format!("[listen]\nport = {}\n{}", self.port, self.extra_config),
        )
        .unwrap();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .unwrap();
        let depotd = env!("CARGO_BIN_EXE_depotd");
        let mut cmd = match self.prefix.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(depotd);
                c
            }
            None => Command::new(depotd),
        };
        let child = cmd
            .arg("--dev")
            .arg("--dev-dir")
            .arg(self.dev_dir())
            .arg("--config")
            .arg(&config)
            .env("NOTIFY_SOCKET", self.dir.path().join("notify.sock"))
            .env("RUST_LOG", "info")
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn depotd");
        self.child = Some(child);
    }

    /// Waits for a notification containing `what`, recording all of them.
    pub fn wait_notification(&mut self, what: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut buf = [0u8; 4096];
        while Instant::now() < deadline {
            if self.notifications.iter().any(|n| n.contains(what)) {
                return true;
            }
            if let Ok(n) = self.notify.recv(&mut buf) {
                self.notifications
                    .push(String::from_utf8_lossy(&buf[..n]).into_owned());
            }
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    panic!(
                        "depotd exited with {status} before {what:?}; log:\n{}",
                        self.log()
                    );
                }
            }
        }
        self.notifications.iter().any(|n| n.contains(what))
    }

    fn wait_ready(&mut self) {
        assert!(
            self.wait_notification("READY=1", WAIT),
            "no READY=1 in {WAIT:?}; log:\n{}",
            self.log()
        );
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid()), sig).expect("kill");
    }

    /// Waits for the daemon to exit on its own.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        let child = self.child.as_mut().expect("running");
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                self.child = None;
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("depotd did not exit in {timeout:?}; log:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits up to `timeout` for the daemon to exit on its own: its status,
    /// or None with the daemon left running (a test that goes on to report
    /// how much longer it took).
    pub fn try_wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        let child = self.child.as_mut().expect("running");
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                self.child = None;
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM and wait; the exit status.
    pub fn stop(&mut self) -> ExitStatus {
        self.signal(nix::sys::signal::Signal::SIGTERM);
        self.wait_exit(WAIT)
    }

    /// SIGKILL: a crash.
    pub fn crash(&mut self) {
        self.signal(nix::sys::signal::Signal::SIGKILL);
        self.wait_exit(WAIT);
    }

    /// The TOML merged over the test defaults at the next (re)start.
    pub fn set_extra_config(&mut self, extra_config: &str) {
        self.extra_config = extra_config.to_string();
    }

    /// Starts the daemon again on the same directory.
    pub fn restart(&mut self) {
        self.respawn();
        self.wait_ready();
    }

    /// Starts the daemon again on the same directory without waiting for
    /// READY=1: for a test that times the start itself.
    pub fn respawn(&mut self) {
        assert!(self.child.is_none(), "stop or crash first");
        self.notifications.clear();
        self.spawn();
    }

    /// Later starts listen on the TLS port this one bound, as a depotd on
    /// its configured port does: a restart then needs the old process to
    /// have let go of it.
    pub fn keep_port(&mut self) {
        let addr: std::net::SocketAddr = self.tls_addr().parse().expect("listen-address");
        self.port = addr.port();
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

/// Polls `f` until it returns Some, or panics after `timeout`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub fn exists(p: &Path) -> bool {
    p.exists()
}
