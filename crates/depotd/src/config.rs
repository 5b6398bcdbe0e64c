//! The daemon's configuration: `/etc/depot/depot.toml` (or `--config`).
//!
//! Every key has a default (docs/config.md lists them). Dev mode starts from
//! different defaults (everything under one local directory, loopback only)
//! and the file, if given, is merged over them key by key, so one test
//! config can change a single limit. An unknown key is an error at start
//! that names the key.

use depot_storage::MailboxConfig;
use serde::{Deserialize, Serialize};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub const DEFAULT_CONFIG_PATH: &str = "/etc/depot/depot.toml";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub daemon: DaemonConfig,
    pub listen: ListenConfig,
    pub tls: TlsConfig,
    pub limits: Limits,
    pub jobs: JobsConfig,
    pub tasks: TasksConfig,
    pub storage: StorageSection,
    pub sanlock: SanlockSection,
    pub fencing: FencingSection,
    pub mailbox: MailboxSection,
    pub thinp: ThinpSection,
    pub ovf_backup: OvfBackupSection,
    pub log: LogConfig,
}

/// The most helper processes per mount `storage.fsproc_helpers_per_mount`
/// accepts.
pub const MAX_FSPROC_HELPERS: usize = 64;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageSection {
    /// Seconds one file-system call on a domain may take before it fails
    /// (a dead NFS server); the stuck thread is abandoned.
    pub io_timeout_s: f64,
    /// Seconds a verb waits for a domain or image lock (VDSM's resource
    /// timeout).
    pub lock_timeout_s: f64,
    /// Seconds one qemu-img call may take.
    pub qemu_img_timeout_s: f64,
    /// Seconds between two health checks of a domain (VDSM's
    /// sd_health_check_delay).
    pub monitor_interval_s: f64,
    /// The most helper processes (`depotd fsproc`) that make file-system
    /// calls on one mount at once, stuck ones included (VDSM's ioprocess).
    pub fsproc_helpers_per_mount: usize,
}

/// sanlock (docs/architecture.md, "sanlock"): host ids in the domains'
/// lockspaces, and the lockspace of each new domain.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SanlockSection {
    /// Use sanlock. Off: depotd behaves as on a machine without it (new
    /// domains get empty `ids`/`leases`, `acquired` stays false).
    pub enabled: bool,
    /// The daemon's client library, loaded at start; empty: the system's
    /// `libsanlock_client.so.1`, else `libsanlock.so.1`.
    pub library: String,
    /// The `sanlock` program, which formats a new domain's lockspace and
    /// SDM lease (`sanlock direct init`); a bare name is looked up in
    /// `PATH`.
    pub program: PathBuf,
    /// Seconds one call to the sanlock daemon, or one `sanlock direct`
    /// run, may take.
    pub timeout_s: f64,
    /// sanlock's `io_timeout` for this host's delta leases (VDSM's
    /// `[sanlock] io_timeout`, 10): a dead host's leases are free
    /// 8 × io_timeout + 60 s after its last renewal.
    pub io_timeout_s: u32,
}

/// The SPM mailbox (docs/storage.md, "Thin volume extension").
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MailboxSection {
    /// Seconds between two reads of the event block by the SPM, and of
    /// a waiting host's answers (VDSM's `[mailbox] events_interval`).
    pub events_interval_s: f64,
    /// Seconds between two reads of every host's mailbox by the SPM
    /// without an event (VDSM's monitor interval).
    pub poll_interval_s: f64,
    /// The SPM reads the mailboxes of host ids 1 to this (VDSM's
    /// `maxHostID`).
    pub max_host_id: u32,
    /// Seconds a host waits for the SPM's answer to an extend request.
    pub request_timeout_s: f64,
}

/// The watermark of prepared thin LVs (VDSM's `[irs]
/// volume_utilization_*`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ThinpSection {
    /// MiB an extend adds.
    pub chunk_mb: u64,
    /// An extend is asked when the LV's free space is under (100 - this)%
    /// of the chunk.
    pub utilization_percent: u64,
    /// Seconds between two checks of the prepared thin LVs.
    pub check_interval_s: f64,
}

/// Where OVF_STORE uploads are kept besides their domain
/// (`[ovf_backup]`, docs/storage.md "OVF backup providers").
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OvfBackupSection {
    /// Any of "stores" (the domains' own OVF_STOREs, read only),
    /// "archive" (the host-local SQLite archive), "mirror" (another
    /// domain's OVF_STORE). Empty: nothing is kept (the NoOp provider).
    pub providers: Vec<OvfProviderKind>,
    /// The archive's file; empty: `<state_dir>/ovf-archive.db`.
    pub archive_path: PathBuf,
    /// The most OVF text the archive holds, MiB.
    pub archive_max_mb: u64,
    /// The most uploads of one source store the archive keeps.
    pub archive_keep_generations: u32,
    /// Whether the archive is written ("read-write") or only read for
    /// restores ("read-only": an archive attached with `--fresh`).
    pub archive_mode: ArchiveMode,
    /// The mirror domain's UUID (needed with "mirror").
    pub mirror_domain: String,
    /// Seconds before a failing provider is tried again, doubled per
    /// failure up to `retry_max_s`.
    pub retry_first_s: f64,
    pub retry_max_s: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OvfProviderKind {
    Stores,
    Archive,
    Mirror,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ArchiveMode {
    ReadWrite,
    ReadOnly,
}

/// Power fencing (`Host.fenceNode`, docs/storage.md "Fencing").
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FencingSection {
    /// Where the fence agents are: `fence_<agent>` (Debian's
    /// fence-agents installs them in /usr/sbin).
    pub agents_dir: PathBuf,
    /// Seconds one run of a fence agent may take.
    pub timeout_s: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DaemonConfig {
    /// Persistent state: jobs, generated dev certificates, the bound address.
    pub state_dir: PathBuf,
    /// Root of mount points and run links, VDSM's `/rhev/data-center`.
    pub repository: PathBuf,
    /// Seconds that SIGTERM waits for in-flight requests and jobs.
    pub shutdown_grace_s: f64,
    /// Dev mode: generate a CA, server and client certificate into
    /// `<state_dir>/pki` on first start. Set by `--dev`.
    pub generate_certs: bool,
    /// Offer the test verbs (`Host.sleepJob`). On in dev mode; off in
    /// production, where they answer as if they did not exist.
    pub test_verbs: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenConfig {
    /// Address of the TLS listener, VDSM's `management_ip`.
    pub address: IpAddr,
    /// Port of the TLS listener; 0 picks a free one (written to
    /// `<state_dir>/listen-address`).
    pub port: u16,
    /// The local admin socket; created owner-only (0600).
    pub socket: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// CA that signs the clients' certificates (the engine's CA).
    pub ca_file: PathBuf,
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    /// Client certificate subjects let in (as logged, e.g. "CN=engine");
    /// empty lets in every certificate the CA signed.
    pub allowed_subjects: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Largest JSON-RPC request (one message or one batch), in bytes.
    pub max_request_bytes: usize,
    /// Most calls in one batch.
    pub max_batch: usize,
    /// Calls that run at once on one connection; more wait.
    pub max_concurrent_per_connection: usize,
    /// Open TLS connections that finished the handshake; more are closed.
    pub max_connections: usize,
    /// Open connections on the local socket, a pool of their own so that a
    /// flood on the TCP port never locks the admin out.
    pub max_local_connections: usize,
    /// TCP connections that have not finished the TLS handshake. When they
    /// are all taken, a new connection pushes out the oldest one.
    pub max_handshakes: usize,
    /// Unfinished handshakes from one source address (IPv6: one /64); more
    /// are closed at once.
    pub max_handshakes_per_address: usize,
    /// Seconds a new connection has for the TLS handshake and its first
    /// bytes, and a request for its headers (so also how long an idle
    /// keep-alive connection stays open).
    pub handshake_timeout_s: f64,
    /// Slowest a client may send a request body or take a response body,
    /// in bytes per second, over `body_window_s`.
    pub min_body_rate: u64,
    /// Seconds of waiting on a client that `min_body_rate` is measured
    /// over; a transfer that stalls completely ends after this long.
    pub body_window_s: f64,
    /// Seconds between the server's pings on a WebSocket.
    pub ws_ping_interval_s: f64,
    /// Seconds a WebSocket may stay silent (no message, no pong) before it
    /// is closed.
    pub ws_idle_timeout_s: f64,
    /// Bytes of a STOMP frame's command and header lines (its body is a
    /// JSON-RPC message: `max_request_bytes`).
    pub stomp_max_header_bytes: usize,
    /// Header lines in one STOMP frame.
    pub stomp_max_headers: usize,
    /// Subscriptions on one STOMP connection.
    pub stomp_max_subscriptions: usize,
    /// Frames queued for one STOMP client; a client that lets more pile
    /// up is not reading and is dropped.
    pub stomp_max_pending_messages: usize,
    /// Bytes queued for one STOMP client past which it is not reading
    /// either (one larger answer still goes through an empty queue).
    pub stomp_max_pending_bytes: usize,
    /// Seconds a STOMP client that sends no heart-beats may stay silent
    /// (with none of its calls running); also the longest any client may,
    /// whatever heart-beat it asked for.
    pub stomp_idle_timeout_s: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobsConfig {
    /// Seconds a finished job stays listed, VDSM's `autodelete_delay`.
    pub autodelete_delay_s: f64,
    /// Jobs that run at once; more stay pending.
    pub max_running: usize,
    /// Jobs pending or running at once; starting one more is refused
    /// (9020, TooManyJobs).
    pub max_active: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TasksConfig {
    /// Finished tasks kept until the engine clears them (`Task.clear`):
    /// the persisted ones of the OVF_STORE streams and of the SPM verbs,
    /// counted together. Beyond it the oldest go.
    pub max_finished: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// A tracing filter, e.g. "info" or "info,depotd=debug". `RUST_LOG`
    /// overrides it.
    pub level: String,
    /// "auto" (journald under systemd, stderr otherwise), "journald" or
    /// "stderr".
    pub target: LogTarget,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogTarget {
    Auto,
    Journald,
    Stderr,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config {path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

impl Config {
    /// Production defaults: VDSM's paths and port.
    pub fn production() -> Config {
        let mb = MailboxConfig::default();
        Config {
            daemon: DaemonConfig {
                state_dir: "/var/lib/depot".into(),
                repository: "/rhev/data-center".into(),
                shutdown_grace_s: 30.0,
                generate_certs: false,
                test_verbs: false,
            },
            listen: ListenConfig {
                address: "::".parse().expect("literal address"),
                port: depot_api::DEFAULT_PORT,
                socket: "/run/depot/depotd.sock".into(),
            },
            tls: TlsConfig {
                ca_file: "/etc/pki/depot/certs/cacert.pem".into(),
                cert_file: "/etc/pki/depot/certs/depotcert.pem".into(),
                key_file: "/etc/pki/depot/keys/depotkey.pem".into(),
                allowed_subjects: Vec::new(),
            },
            limits: Limits {
                max_request_bytes: 8 << 20,
                max_batch: 100,
                max_concurrent_per_connection: 16,
                max_connections: 512,
                max_local_connections: 64,
                max_handshakes: 128,
                max_handshakes_per_address: 8,
                handshake_timeout_s: 5.0,
                min_body_rate: 1024,
                body_window_s: 30.0,
                ws_ping_interval_s: 30.0,
                ws_idle_timeout_s: 90.0,
                stomp_max_header_bytes: 16 << 10,
                stomp_max_headers: 32,
                stomp_max_subscriptions: 16,
                stomp_max_pending_messages: 1024,
                stomp_max_pending_bytes: 32 << 20,
                stomp_idle_timeout_s: 300.0,
            },
            jobs: JobsConfig {
                autodelete_delay_s: 3600.0,
                max_running: 4,
                max_active: 256,
            },
            tasks: TasksConfig { max_finished: 1000 },
            storage: StorageSection {
                io_timeout_s: 60.0,
                lock_timeout_s: 60.0,
                qemu_img_timeout_s: 3600.0,
                monitor_interval_s: 10.0,
                fsproc_helpers_per_mount: 4,
            },
            sanlock: SanlockSection {
                enabled: true,
                library: String::new(),
                program: "sanlock".into(),
                timeout_s: 30.0,
                io_timeout_s: 10,
            },
            fencing: FencingSection {
                agents_dir: "/usr/sbin".into(),
                timeout_s: 120.0,
            },
            // depot-storage's defaults are the one source of these.
            mailbox: MailboxSection {
                events_interval_s: mb.event_interval.as_secs_f64(),
                poll_interval_s: mb.poll_interval.as_secs_f64(),
                max_host_id: mb.max_host_id,
                request_timeout_s: mb.request_timeout.as_secs_f64(),
            },
            thinp: ThinpSection {
                chunk_mb: mb.chunk >> 20,
                utilization_percent: mb.utilization_percent,
                check_interval_s: mb.check_interval.as_secs_f64(),
            },
            ovf_backup: OvfBackupSection {
                providers: Vec::new(),
                archive_path: PathBuf::new(),
                archive_max_mb: 1024,
                archive_keep_generations: 20,
                archive_mode: ArchiveMode::ReadWrite,
                mirror_domain: String::new(),
                retry_first_s: 1.0,
                retry_max_s: 60.0,
            },
            log: LogConfig {
                level: "info".into(),
                target: LogTarget::Auto,
            },
        }
    }

    /// The storage's mailbox and watermark settings (`[mailbox]` and
    /// `[thinp]`).
    pub fn mailbox_config(&self) -> MailboxConfig {
        let (m, t) = (&self.mailbox, &self.thinp);
        MailboxConfig {
            event_interval: Duration::from_secs_f64(m.events_interval_s),
            poll_interval: Duration::from_secs_f64(m.poll_interval_s),
            max_host_id: m.max_host_id,
            request_timeout: Duration::from_secs_f64(m.request_timeout_s),
            chunk: t.chunk_mb << 20,
            utilization_percent: t.utilization_percent,
            check_interval: Duration::from_secs_f64(t.check_interval_s),
        }
    }

    /// Dev defaults: no root needed, everything under `dir`, loopback only,
    /// certificates generated on first start, and no sanlock (a single
    /// host: spmStart gives it the SPM role with no lease, as on a host
    /// without sanlock; a config file's `[sanlock] enabled = true` turns
    /// it on).
    pub fn dev(dir: &Path) -> Config {
        let mut c = Config::production();
        c.sanlock.enabled = false;
        let pki = dir.join("state/pki");
        c.daemon.state_dir = dir.join("state");
        c.daemon.repository = dir.join("repository");
        c.daemon.generate_certs = true;
        c.daemon.test_verbs = true;
        c.listen.address = "127.0.0.1".parse().expect("literal address");
        c.listen.socket = dir.join("depotd.sock");
        c.tls.ca_file = pki.join("ca.pem");
        c.tls.cert_file = pki.join("server.pem");
        c.tls.key_file = pki.join("server-key.pem");
        c.log.target = LogTarget::Stderr;
        c
    }

    /// Merges the TOML text over `base`, key by key, and checks the result.
    pub fn merge_toml(base: &Config, text: &str, path: &Path) -> Result<Config, ConfigError> {
        let invalid = |message: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            message,
        };
        let overlay: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| invalid(e.to_string()))?;
        let mut merged = toml::Table::try_from(base).map_err(|e| invalid(e.to_string()))?;
        merge(&mut merged, overlay);
        let config: Config = toml::Value::Table(merged)
            .try_into()
            .map_err(|e: toml::de::Error| invalid(e.message().to_string()))?;
        config.validate().map_err(invalid)?;
        Ok(config)
    }

    pub fn load(base: &Config, path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Config::merge_toml(base, &text, path)
    }

    fn validate(&self) -> Result<(), String> {
        self.validate_counts()?;
        self.validate_seconds()?;
        self.validate_paths()
    }

    /// Counts and sizes: 0 would refuse everything.
    fn validate_counts(&self) -> Result<(), String> {
        let l = &self.limits;
        for (name, v) in [
            ("limits.max_request_bytes", l.max_request_bytes as u64),
            ("limits.max_batch", l.max_batch as u64),
            (
                "limits.max_concurrent_per_connection",
                l.max_concurrent_per_connection as u64,
            ),
            ("limits.max_connections", l.max_connections as u64),
            (
                "limits.max_local_connections",
                l.max_local_connections as u64,
            ),
            ("limits.max_handshakes", l.max_handshakes as u64),
            (
                "limits.max_handshakes_per_address",
                l.max_handshakes_per_address as u64,
            ),
            ("limits.min_body_rate", l.min_body_rate),
            (
                "limits.stomp_max_header_bytes",
                l.stomp_max_header_bytes as u64,
            ),
            ("limits.stomp_max_headers", l.stomp_max_headers as u64),
            (
                "limits.stomp_max_subscriptions",
                l.stomp_max_subscriptions as u64,
            ),
            (
                "limits.stomp_max_pending_messages",
                l.stomp_max_pending_messages as u64,
            ),
            (
                "limits.stomp_max_pending_bytes",
                l.stomp_max_pending_bytes as u64,
            ),
            ("jobs.max_running", self.jobs.max_running as u64),
            ("jobs.max_active", self.jobs.max_active as u64),
            ("tasks.max_finished", self.tasks.max_finished as u64),
            (
                "storage.fsproc_helpers_per_mount",
                self.storage.fsproc_helpers_per_mount as u64,
            ),
            ("mailbox.max_host_id", u64::from(self.mailbox.max_host_id)),
            ("sanlock.io_timeout_s", u64::from(self.sanlock.io_timeout_s)),
            ("thinp.chunk_mb", self.thinp.chunk_mb),
            ("ovf_backup.archive_max_mb", self.ovf_backup.archive_max_mb),
            (
                "ovf_backup.archive_keep_generations",
                u64::from(self.ovf_backup.archive_keep_generations),
            ),
        ] {
            if v == 0 {
                return Err(format!("{name} must be at least 1"));
            }
        }
        // sanlock's and VDSM's most host ids; the mailbox areas hold 4095.
        if self.mailbox.max_host_id > 2000 {
            return Err("mailbox.max_host_id must be at most 2000".into());
        }
        // 120 s already leaves a dead host's leases taken for 17 minutes
        // (8 x 120 + 60 s): more is a typo, not a slow storage.
        if self.sanlock.io_timeout_s > 120 {
            return Err("sanlock.io_timeout_s must be at most 120".into());
        }
        // A chunk beyond the mailbox's largest size (0xFFFFFFFF MiB) could
        // not be asked for.
        if self.thinp.chunk_mb > 0xFFFF_FFFF {
            return Err("thinp.chunk_mb must be at most 4294967295".into());
        }
        if self.thinp.utilization_percent > 99 {
            return Err("thinp.utilization_percent must be at most 99".into());
        }
        // Each helper is a process: a typo must not fork hundreds per mount.
        if self.storage.fsproc_helpers_per_mount > MAX_FSPROC_HELPERS {
            return Err(format!(
                "storage.fsproc_helpers_per_mount must be at most {MAX_FSPROC_HELPERS}"
            ));
        }
        Ok(())
    }

    fn validate_seconds(&self) -> Result<(), String> {
        let l = &self.limits;
        // Seconds. 0 would make every call, lock wait, handshake or check
        // fail at once (or spin), so only the grace period may be 0: "do
        // not wait".
        for (name, v, zero_ok) in [
            (
                "daemon.shutdown_grace_s",
                self.daemon.shutdown_grace_s,
                true,
            ),
            ("limits.handshake_timeout_s", l.handshake_timeout_s, false),
            ("limits.body_window_s", l.body_window_s, false),
            ("limits.ws_ping_interval_s", l.ws_ping_interval_s, false),
            ("limits.ws_idle_timeout_s", l.ws_idle_timeout_s, false),
            ("limits.stomp_idle_timeout_s", l.stomp_idle_timeout_s, false),
            (
                "jobs.autodelete_delay_s",
                self.jobs.autodelete_delay_s,
                false,
            ),
            ("storage.io_timeout_s", self.storage.io_timeout_s, false),
            ("storage.lock_timeout_s", self.storage.lock_timeout_s, false),
            (
                "storage.qemu_img_timeout_s",
                self.storage.qemu_img_timeout_s,
                false,
            ),
            (
                "storage.monitor_interval_s",
                self.storage.monitor_interval_s,
                false,
            ),
            ("sanlock.timeout_s", self.sanlock.timeout_s, false),
            ("fencing.timeout_s", self.fencing.timeout_s, false),
            (
                "mailbox.events_interval_s",
                self.mailbox.events_interval_s,
                false,
            ),
            (
                "mailbox.poll_interval_s",
                self.mailbox.poll_interval_s,
                false,
            ),
            (
                "mailbox.request_timeout_s",
                self.mailbox.request_timeout_s,
                false,
            ),
            ("thinp.check_interval_s", self.thinp.check_interval_s, false),
            (
                "ovf_backup.retry_first_s",
                self.ovf_backup.retry_first_s,
                false,
            ),
            ("ovf_backup.retry_max_s", self.ovf_backup.retry_max_s, false),
        ] {
            if !(0.0..1e9).contains(&v) {
                return Err(format!("{name} must be a number of seconds, not {v}"));
            }
            if v == 0.0 && !zero_ok {
                return Err(format!("{name} must be more than 0 seconds"));
            }
        }
        let b = &self.ovf_backup;
        if b.providers.contains(&OvfProviderKind::Mirror)
            && b.mirror_domain.parse::<uuid::Uuid>().is_err()
        {
            return Err(format!(
                "ovf_backup.mirror_domain must be a domain UUID with the \"mirror\" provider, not {:?}",
                b.mirror_domain
            ));
        }
        if !b.archive_path.as_os_str().is_empty() && !b.archive_path.is_absolute() {
            return Err(format!(
                "ovf_backup.archive_path must be absolute, not {}",
                b.archive_path.display()
            ));
        }
        if b.retry_max_s < b.retry_first_s {
            return Err("ovf_backup.retry_max_s must be at least ovf_backup.retry_first_s".into());
        }
        // A live client answers pings: it is silent for at most one ping
        // interval plus a round trip.
        if l.ws_idle_timeout_s <= l.ws_ping_interval_s {
            return Err(format!(
                "limits.ws_idle_timeout_s ({}) must be longer than limits.ws_ping_interval_s ({})",
                l.ws_idle_timeout_s, l.ws_ping_interval_s
            ));
        }
        Ok(())
    }

    fn validate_paths(&self) -> Result<(), String> {
        // A relative path would depend on the daemon's working directory.
        for (name, path) in [
            ("listen.socket", &self.listen.socket),
            ("daemon.state_dir", &self.daemon.state_dir),
            ("daemon.repository", &self.daemon.repository),
            ("fencing.agents_dir", &self.fencing.agents_dir),
        ] {
            if !path.is_absolute() {
                return Err(format!("{name} must be an absolute path"));
            }
        }
        Ok(())
    }

    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_secs_f64(self.daemon.shutdown_grace_s)
    }

    pub fn handshake_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.limits.handshake_timeout_s)
    }

    /// The slowest a client may move a body (docs/config.md).
    pub fn body_pace(&self) -> crate::pace::PaceLimits {
        crate::pace::PaceLimits {
            min_rate: self.limits.min_body_rate,
            window: Duration::from_secs_f64(self.limits.body_window_s),
        }
    }
}

/// Overlays `over` on `base`: tables merge recursively, other values replace.
fn merge(base: &mut toml::Table, over: toml::Table) {
    for (k, v) in over {
        match (base.get_mut(&k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge(b, o),
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p() -> &'static Path {
        Path::new("test.toml")
    }

    /// The mailbox's defaults have one source (depot-storage's): the
    /// production config gives the storage exactly those.
    #[test]
    fn mailbox_defaults_are_the_storages() {
        assert_eq!(
            Config::production().mailbox_config(),
            MailboxConfig::default()
        );
    }

    #[test]
    fn empty_file_gives_defaults() {
        let base = Config::production();
        assert_eq!(Config::merge_toml(&base, "", p()).unwrap(), base);
    }

    #[test]
    fn one_key_overrides_only_itself() {
        let base = Config::dev(Path::new("/tmp/d"));
        let c = Config::merge_toml(&base, "[limits]\nmax_batch = 3\n", p()).unwrap();
        assert_eq!(c.limits.max_batch, 3);
        assert_eq!(c.limits.max_connections, base.limits.max_connections);
        assert_eq!(c.daemon.state_dir, Path::new("/tmp/d/state"));
    }

    #[test]
    fn unknown_key_is_named() {
        let base = Config::production();
        let e = Config::merge_toml(&base, "[limits]\nmax_bach = 3\n", p()).unwrap_err();
        assert!(e.to_string().contains("max_bach"), "{e}");
        let e = Config::merge_toml(&base, "[nosuch]\nx = 1\n", p()).unwrap_err();
        assert!(e.to_string().contains("nosuch"), "{e}");
    }

    #[test]
    fn config_doc_lists_every_key() {
        let doc = include_str!("../../../docs/config.md");
        let table = toml::Table::try_from(Config::production()).unwrap();
        for (section, keys) in &table {
            assert!(
                doc.contains(&format!("## `[{section}]`")),
                "docs/config.md lacks [{section}]"
            );
            for key in keys.as_table().unwrap().keys() {
                assert!(
                    doc.contains(&format!("| `{key}` |")),
                    "docs/config.md lacks {section}.{key}"
                );
            }
        }
    }

    #[test]
    fn wrong_type_and_zero_limits_are_refused() {
        let base = Config::production();
        assert!(Config::merge_toml(&base, "[listen]\nport = \"x\"\n", p()).is_err());
        assert!(Config::merge_toml(&base, "[limits]\nmax_batch = 0\n", p()).is_err());
        assert!(Config::merge_toml(&base, "[jobs]\nautodelete_delay_s = -1\n", p()).is_err());
    }

    /// Every timeout, interval and limit that makes no sense at 0 is
    /// refused at start, and the message names the key.
    #[test]
    fn mailbox_and_thinp_limits_are_refused_by_name() {
        let base = Config::production();
        for text in [
            "[mailbox]\nevents_interval_s = 0\n",
            "[mailbox]\npoll_interval_s = 0\n",
            "[mailbox]\nrequest_timeout_s = 0\n",
            "[mailbox]\nmax_host_id = 0\n",
            "[mailbox]\nmax_host_id = 2001\n",
            "[thinp]\nchunk_mb = 0\n",
            "[thinp]\nchunk_mb = 4294967296\n",
            "[thinp]\nutilization_percent = 100\n",
            "[thinp]\ncheck_interval_s = 0\n",
        ] {
            let e = Config::merge_toml(&base, text, p()).expect_err(text);
            let key = text.replace(['[', ']'], "");
            let (section, rest) = key.split_once('\n').unwrap();
            let name = rest.split(' ').next().unwrap();
            assert!(e.to_string().contains(&format!("{section}.{name}")), "{e}");
        }
        let ok =
            "[mailbox]\nmax_host_id = 2000\n[thinp]\nchunk_mb = 128\nutilization_percent = 50\n";
        Config::merge_toml(&base, ok, p()).unwrap();
    }

    #[test]
    fn zero_timeouts_and_limits_are_refused_by_name() {
        let base = Config::production();
        for (section, key) in [
            ("storage", "io_timeout_s"),
            ("storage", "lock_timeout_s"),
            ("storage", "qemu_img_timeout_s"),
            ("storage", "monitor_interval_s"),
            ("limits", "handshake_timeout_s"),
            ("limits", "body_window_s"),
            ("limits", "ws_ping_interval_s"),
            ("limits", "ws_idle_timeout_s"),
            ("limits", "stomp_idle_timeout_s"),
            ("jobs", "autodelete_delay_s"),
        ] {
            let text = format!("[{section}]\n{key} = 0\n");
            let e = Config::merge_toml(&base, &text, p())
                .expect_err(&format!("{section}.{key} = 0 was accepted"));
            assert!(e.to_string().contains(&format!("{section}.{key}")), "{e}");
        }
        for key in [
            "max_local_connections",
            "max_handshakes",
            "max_handshakes_per_address",
            "min_body_rate",
            "stomp_max_header_bytes",
            "stomp_max_headers",
            "stomp_max_subscriptions",
            "stomp_max_pending_messages",
            "stomp_max_pending_bytes",
        ] {
            let text = format!("[limits]\n{key} = 0\n");
            let e = Config::merge_toml(&base, &text, p())
                .expect_err(&format!("limits.{key} = 0 was accepted"));
            assert!(e.to_string().contains(&format!("limits.{key}")), "{e}");
        }
        let e = Config::merge_toml(&base, "[jobs]\nmax_active = 0\n", p()).unwrap_err();
        assert!(e.to_string().contains("jobs.max_active"), "{e}");
        let e = Config::merge_toml(&base, "[tasks]\nmax_finished = 0\n", p()).unwrap_err();
        assert!(e.to_string().contains("tasks.max_finished"), "{e}");
        for n in [0, MAX_FSPROC_HELPERS + 1] {
            let text = format!("[storage]\nfsproc_helpers_per_mount = {n}\n");
            let e = Config::merge_toml(&base, &text, p()).unwrap_err();
            assert!(
                e.to_string().contains("storage.fsproc_helpers_per_mount"),
                "{e}"
            );
        }
        // A WebSocket that answers every ping must outlive the idle timeout.
        let text = "[limits]\nws_ping_interval_s = 60\nws_idle_timeout_s = 60\n";
        let e = Config::merge_toml(&base, text, p()).unwrap_err();
        assert!(e.to_string().contains("ws_idle_timeout_s"), "{e}");
        // No waiting at SIGTERM is a choice, not a mistake.
        Config::merge_toml(&base, "[daemon]\nshutdown_grace_s = 0\n", p()).unwrap();
    }

    #[test]
    fn test_verbs_only_in_dev_mode() {
        assert!(!Config::production().daemon.test_verbs);
        assert!(Config::dev(Path::new("/tmp/d")).daemon.test_verbs);
    }

    #[test]
    fn dev_mode_has_no_sanlock_unless_the_config_says_so() {
        assert!(Config::production().sanlock.enabled);
        let dev = Config::dev(Path::new("/tmp/d"));
        assert!(!dev.sanlock.enabled);
        let on = Config::merge_toml(&dev, "[sanlock]\nenabled = true\n", Path::new("t")).unwrap();
        assert!(on.sanlock.enabled);
    }
}
