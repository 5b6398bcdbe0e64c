//! Start-up and shutdown: recover state, bind, announce READY, serve until
//! SIGTERM, then stop accepting, let in-flight work finish or persist, exit.

use std::net::SocketAddr;
use std::os::unix::fs::DirBuilderExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, UnixListener};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use depot_jobs::{JobManager, JobsConfig, SleepJob};
use depot_os::fsproc::HelperCommand;
use depot_os::sanlock::{DirectConfig, Sanlock};
use depot_os::CommandRunner;
use depot_storage::events::Events;
use depot_storage::lockspace::SanlockConfig;
use depot_storage::{Storage, StorageConfig};

use crate::config::{Config, SanlockSection};
use crate::events::EventBus;
use crate::jsonrpc::{JsonRpc, ParseLimits};
use crate::listen::admission::Handshakes;
use crate::listen::{self, Listeners, Pool, Throttle};
use crate::pki;
use crate::router::Router;
use crate::storage_jobs;
use crate::systemd;
use crate::task_store::TaskStore;
use crate::tasks::Tasks;
use crate::transport::{self, stomp::StompLimits};

/// The file, in the state directory, that holds the bound TLS address: port
/// 0 in the config picks a free port, and clients (tests, depotctl in dev
/// mode) read it from here.
pub const LISTEN_ADDRESS_FILE: &str = "listen-address";

/// Events that may queue per slow subscriber.
const EVENT_QUEUE: usize = 1024;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot create {path}: {source}")]
    Dir {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Pki(#[from] pki::PkiError),
    #[error("cannot recover jobs: {0}")]
    Jobs(#[from] depot_jobs::JobsError),
    #[error("cannot recover tasks: {0}")]
    Tasks(#[from] crate::task_store::OpenError),
    #[error("cannot listen on {what}: {source}")]
    Bind {
        what: String,
        source: std::io::Error,
    },
    #[error("state directory {path} is in use by another depotd ({source})")]
    Locked {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
}

// long: about 100 lines: the daemon's start and stop as one sequence of
// steps, each a call of its own, in the order they must happen.
pub async fn run(config: Config) -> Result<(), StartError> {
    raise_open_files_limit();
    let state_dir = &config.daemon.state_dir;
    make_dir(state_dir, 0o700)?;
    // Held until exit: two daemons on one state directory would each
    // "recover" the other's running jobs.
    let _lock = lock_state_dir(state_dir)?;
    make_dir(&config.daemon.repository, 0o755)?;
    // Only where nothing is configured yet: dev mode pointed at existing
    // certificates (VDSM's, docs/install.md) must not add files there.
    if config.daemon.generate_certs && !config.tls.ca_file.exists() {
        let dir = config.tls.ca_file.parent().unwrap_or(state_dir);
        if pki::ensure_dev_pki(dir, "depotctl")? {
            tracing::info!(dir = %dir.display(), "generated a dev CA, server and client certificate");
        }
    }
    let tls = TlsAcceptor::from(pki::server_config(&config.tls)?);

    // Signals first: a SIGTERM during recovery must not kill us mid-write.
    let mut sigterm = signal(SignalKind::terminate()).map_err(StartError::Signals)?;
    let mut sigint = signal(SignalKind::interrupt()).map_err(StartError::Signals)?;

    // Before the storage: the monitor and the connection watch publish
    // through it from their first check.
    let events = EventBus::new(EVENT_QUEUE);
    let (storage, ovf_backup) = open_storage_and_backup(&config, &events).await;
    let dr = Arc::new(crate::dr_api::Dr::new(
        storage.clone(),
        ovf_backup.clone(),
        config.daemon.state_dir.clone(),
        config.daemon.test_verbs,
    ));
    let tasks = open_tasks(&config).await?;
    let jobs = open_jobs(&config, &storage, &dr, &tasks).await?;
    let forwarder = events.forward_jobs(&jobs);

    let (tcp, bound, unix) = bind(&config).await?;
    write_listen_address(state_dir, bound);

    let (stop_tx, stop_rx) = watch::channel(false);
    let streams = tasks.streams().clone();
    let router = Router::new(
        jobs.clone(),
        storage.clone(),
        tasks,
        fencer(&config),
        config.daemon.test_verbs,
    )
    .with_ovf_backup(ovf_backup)
    .with_dr(dr);
    let shared = Arc::new(listeners(
        &config,
        router,
        (storage.clone(), streams),
        events,
        stop_rx,
    ));
    let tcp_task = tokio::spawn(listen::serve_tcp(tcp, tls, shared.clone()));
    let unix_task = tokio::spawn(listen::serve_unix(
        unix,
        config.listen.socket.clone(),
        shared.clone(),
    ));

    tracing::info!(
        tls = %bound,
        socket = %config.listen.socket.display(),
        version = env!("CARGO_PKG_VERSION"),
        "depotd ready"
    );
    systemd::notify_or_log(&format!("READY=1\nSTATUS=serving on {bound}"));
    if let Some(interval) = systemd::watchdog_interval() {
        systemd::spawn_watchdog(tokio::runtime::Handle::current(), interval);
    }

    let which = tokio::select! {
        _ = sigterm.recv() => "SIGTERM",
        _ = sigint.recv() => "SIGINT",
    };
    let grace = config.shutdown_grace();
    tracing::info!(signal = which, grace_s = grace.as_secs_f64(), "stopping");
    systemd::notify_or_log("STOPPING=1\nSTATUS=stopping");

    // Stop accepting, let requests in flight answer, then stop the jobs;
    // jobs that do not end in time stay persisted as running and are
    // resumed or failed by the next start. One deadline for all of it:
    // the grace is what SIGTERM may take, not what each step may.
    let deadline = tokio::time::Instant::now() + grace;
    let left = || deadline.saturating_duration_since(tokio::time::Instant::now());
    let _ = stop_tx.send(true);
    let _ = tcp_task.await;
    let _ = unix_task.await;
    if !shared.drain(left()).await {
        tracing::warn!("connections still open after the grace period; closing them");
    }
    jobs.shutdown(left()).await;
    {
        let s = storage.clone();
        let stopped = tokio::task::spawn_blocking(move || s.shutdown());
        if tokio::time::timeout(left(), stopped).await.is_err() {
            tracing::warn!("the storage did not stop within the grace period; leaving it");
        }
    }
    forwarder.abort();
    let _ = std::fs::remove_file(state_dir.join(LISTEN_ADDRESS_FILE));
    tracing::info!("depotd stopped");
    Ok(())
}

/// How depotd starts a file-system helper: itself, as `depotd fsproc`
/// (main.rs). `/proc/self/exe` is this very binary even if the file was
/// replaced by an upgrade since depotd started.
fn fsproc_command() -> HelperCommand {
    HelperCommand::new("/proc/self/exe").arg("fsproc")
}

/// The storage, and the OVF backup providers that record its OVF_STORE
/// writes (docs/storage.md, "OVF backup providers").
async fn open_storage_and_backup(
    config: &Config,
    events: &EventBus,
) -> (Arc<Storage>, Arc<depot_ovf_backup::OvfBackup>) {
    let (sink, backup_events) = depot_ovf_backup::tee(Arc::new(events.clone()));
    let storage = open_storage(config, sink).await;
    let backup = depot_ovf_backup::OvfBackup::start(
        &crate::ovf_backup::settings(config),
        storage.clone(),
        backup_events,
    );
    (storage, Arc::new(backup))
}

/// The storage, with what a crash left in mounts that survived the
/// restart cleaned up.
async fn open_storage(
    config: &Config,
    events: Arc<dyn depot_storage::events::EventSink>,
) -> Arc<Storage> {
    let storage = Arc::new(
        Storage::new(
            StorageConfig {
                repository: config.daemon.repository.clone(),
                io_timeout: Duration::from_secs_f64(config.storage.io_timeout_s),
                lock_timeout: Duration::from_secs_f64(config.storage.lock_timeout_s),
                qemu_img_timeout: Duration::from_secs_f64(config.storage.qemu_img_timeout_s),
                monitor_interval: Duration::from_secs_f64(config.storage.monitor_interval_s),
                fsproc_command: Some(fsproc_command()),
                fsproc_helpers_per_mount: config.storage.fsproc_helpers_per_mount,
                sanlock: sanlock_config(&config.sanlock),
            },
            CommandRunner::new(),
        )
        .with_san_references(config.daemon.state_dir.join("iscsi-sessions"))
        .with_events(Events::new(events))
        .with_mailbox(config.mailbox_config()),
    );
    storage.start_mailbox_service();
    let s = storage.clone();
    let mut recovery = tokio::task::spawn_blocking(move || s.recover());
    match tokio::time::timeout(RECOVERY_WAIT, &mut recovery).await {
        Ok(recovered) => {
            let cleaned = recovered.map(|r| r.len()).unwrap_or_default();
            tracing::info!(cleaned, "storage recovered");
        }
        Err(_) => {
            tracing::warn!(wait = ?RECOVERY_WAIT,
                "crash recovery goes on in the background (a mount is slow, does not answer, \
                 or a promised wipe is long); serving meanwhile");
            tokio::spawn(async move {
                let cleaned = recovery.await.map(|r| r.len()).unwrap_or_default();
                tracing::info!(cleaned, "storage recovered (in the background)");
            });
        }
    }
    let status = {
        let s = storage.clone();
        tokio::task::spawn_blocking(move || s.sanlock_status())
            .await
            .unwrap_or_default()
    };
    match (&status.version, &status.reason) {
        (Some(version), _) => tracing::info!(%version, "sanlock: the daemon answers"),
        (None, reason) => tracing::warn!(
            "{}; host ids will not be acquired until it does",
            reason.as_deref().unwrap_or("sanlock unavailable")
        ),
    }
    storage
}

/// How long depotd waits for the crash recovery of the mounts it finds at
/// start before it binds (issue 15: a restart answers at once even with a
/// mount that does not answer, or a long promised wipe). Recovery of a
/// healthy mount takes milliseconds; what is not done by then goes on in
/// the background (docs/storage.md, "Crash recovery").
const RECOVERY_WAIT: Duration = Duration::from_secs(2);

/// How the storage reaches sanlock (depot_os::sanlock): the library is
/// loaded now, and a missing one is only logged (`Host.getCapabilities`
/// says it too), so depotd starts on a machine without sanlock.
fn sanlock_config(section: &SanlockSection) -> Option<SanlockConfig> {
    if !section.enabled {
        tracing::info!("sanlock disabled (sanlock.enabled = false)");
        return None;
    }
    let timeout = Duration::from_secs_f64(section.timeout_s);
    let library = (!section.library.is_empty()).then(|| Path::new(&section.library));
    let client = Sanlock::load(library, timeout).with_io_timeout(section.io_timeout_s);
    match client.library() {
        Some(name) => tracing::info!(library = name, "sanlock: client library loaded"),
        None => tracing::warn!(
            "sanlock unavailable: {}",
            client.library_error().unwrap_or("no library")
        ),
    }
    let program = section.program.to_string_lossy();
    let direct = if depot_os::sanlock::program_found(&section.program) {
        Some(DirectConfig {
            runner: CommandRunner::new(),
            program: section.program.clone(),
            timeout: timeout * 2,
        })
    } else {
        tracing::warn!(%program, "sanlock unavailable: no sanlock program; new domains \
            get no lockspace");
        None
    };
    Some(SanlockConfig { client, direct })
}

/// The job manager, with the jobs of the last run recovered.
async fn open_jobs(
    config: &Config,
    storage: &Arc<Storage>,
    dr: &Arc<crate::dr_api::Dr>,
    tasks: &Arc<Tasks>,
) -> Result<JobManager, StartError> {
    let state_dir = &config.daemon.state_dir;
    let jobs_config = JobsConfig {
        autodelete: Duration::from_secs_f64(config.jobs.autodelete_delay_s),
        max_running: config.jobs.max_running,
        max_active: config.jobs.max_active,
    };
    let journal_dir = state_dir.join("copy-journals");
    make_dir(&journal_dir, 0o700)?;
    let mut kinds: Vec<Arc<dyn depot_jobs::JobKind>> = vec![Arc::new(SleepJob)];
    let tasks = tasks.clone();
    let on_spm_lease: storage_jobs::SpmLeaseHook = Arc::new(move |storage, sp| {
        tasks.load_master(storage, sp);
    });
    kinds.extend(storage_jobs::kinds(storage, journal_dir, on_spm_lease));
    kinds.push(Arc::new(crate::dr_api::DrJob(dr.clone())));
    let (jobs, recovery) = JobManager::open(state_dir, jobs_config, kinds).await?;
    tracing::info!(%recovery, "jobs recovered");
    Ok(jobs)
}

/// VDSM's tasks, the streams' tasks of the last run recovered.
async fn open_tasks(config: &Config) -> Result<Arc<Tasks>, StartError> {
    let state_dir = &config.daemon.state_dir;
    let (streams, recovered) = {
        let (dir, max) = (state_dir.clone(), config.tasks.max_finished);
        match tokio::task::spawn_blocking(move || TaskStore::open(&dir, max)).await {
            Ok(opened) => opened?,
            Err(e) => {
                return Err(StartError::Tasks(crate::task_store::OpenError {
                    path: state_dir.join(crate::task_store::TASKS_DIR),
                    source: std::io::Error::other(e.to_string()),
                }))
            }
        }
    };
    tracing::info!(%recovered, "tasks recovered");
    Ok(Arc::new(Tasks::new(streams)))
}

/// The TLS port (and the address it got) and the local socket.
async fn bind(config: &Config) -> Result<(TcpListener, SocketAddr, UnixListener), StartError> {
    let addr = SocketAddr::new(config.listen.address, config.listen.port);
    let tcp = listen::bind_tcp(addr)
        .await
        .map_err(|source| StartError::Bind {
            what: addr.to_string(),
            source,
        })?;
    let bound = tcp.local_addr().map_err(|source| StartError::Bind {
        what: addr.to_string(),
        source,
    })?;
    let unix = listen::bind_unix(&config.listen.socket)
        .await
        .map_err(|source| StartError::Bind {
            what: config.listen.socket.display().to_string(),
            source,
        })?;
    Ok((tcp, bound, unix))
}

/// What the listeners and the transports share, with the limits of
/// `config`. The storage and the stream tasks are for the OVF_STORE
/// streams, which bypass JSON-RPC.
fn listeners(
    config: &Config,
    router: Router,
    (storage, streams): (Arc<Storage>, Arc<TaskStore>),
    events: EventBus,
    shutdown: watch::Receiver<bool>,
) -> Listeners {
    let limits = &config.limits;
    let transport = Arc::new(transport::Shared {
        jsonrpc: Arc::new(JsonRpc::new(
            router,
            ParseLimits::new(limits.max_batch, limits.max_request_bytes),
        )),
        storage,
        streams,
        events,
        shutdown,
        max_request_bytes: limits.max_request_bytes,
        max_concurrent_per_connection: limits.max_concurrent_per_connection,
        handshake_timeout: config.handshake_timeout(),
        body_pace: config.body_pace(),
        ws_ping_interval: Duration::from_secs_f64(limits.ws_ping_interval_s),
        ws_idle_timeout: Duration::from_secs_f64(limits.ws_idle_timeout_s),
        stomp: stomp_limits(config),
    });
    Listeners {
        transport,
        connections: Pool::new("tls", limits.max_connections),
        local_connections: Pool::new("local socket", limits.max_local_connections),
        handshakes: Handshakes::new(limits.max_handshakes, limits.max_handshakes_per_address),
        allowed_subjects: config.tls.allowed_subjects.clone(),
        noise: Throttle::default(),
    }
}

/// The STOMP transport's limits (docs/config.md).
fn stomp_limits(config: &Config) -> StompLimits {
    let l = &config.limits;
    StompLimits {
        frame: depot_stomp::Limits {
            max_header_bytes: l.stomp_max_header_bytes,
            max_headers: l.stomp_max_headers,
            max_body_bytes: l.max_request_bytes,
        },
        max_subscriptions: l.stomp_max_subscriptions,
        max_pending: l.stomp_max_pending_messages,
        max_pending_bytes: l.stomp_max_pending_bytes,
        idle_timeout: Duration::from_secs_f64(l.stomp_idle_timeout_s),
    }
}

/// `Host.fenceNode`'s agents and their timeout (`[fencing]`).
fn fencer(config: &Config) -> Arc<crate::fencing::Fencer> {
    Arc::new(crate::fencing::Fencer {
        runner: CommandRunner::new(),
        agents_dir: config.fencing.agents_dir.clone(),
        timeout: Duration::from_secs_f64(config.fencing.timeout_s),
    })
}

/// Every connection is a file descriptor, and the connection limits
/// (docs/config.md) add up to more than the usual soft limit of 1024: take
/// the hard limit, as systemd's unit (LimitNOFILE) does for the service.
fn raise_open_files_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => {
            if let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
                tracing::warn!(soft, hard, error = %e, "cannot raise the open files limit");
            }
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "cannot read the open files limit"),
    }
}

fn make_dir(path: &Path, mode: u32) -> Result<(), StartError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(path)
        .map_err(|source| StartError::Dir {
            path: path.to_path_buf(),
            source,
        })
}

fn lock_state_dir(state_dir: &Path) -> Result<nix::fcntl::Flock<std::fs::File>, StartError> {
    let path = state_dir.join("depotd.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|source| StartError::Dir {
            path: path.clone(),
            source,
        })?;
    nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock).map_err(
        |(_, errno)| StartError::Locked {
            path: state_dir.to_path_buf(),
            source: errno.into(),
        },
    )
}

fn write_listen_address(state_dir: &Path, addr: SocketAddr) {
    let path = state_dir.join(LISTEN_ADDRESS_FILE);
    let tmp = state_dir.join(format!("{LISTEN_ADDRESS_FILE}.tmp"));
    let written =
        std::fs::write(&tmp, format!("{addr}\n")).and_then(|()| std::fs::rename(&tmp, &path));
    if let Err(e) = written {
        tracing::warn!(path = %path.display(), error = %e, "cannot record the listen address");
    }
}
