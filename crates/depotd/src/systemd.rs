//! systemd integration without libsystemd: `sd_notify` is one datagram to
//! `$NOTIFY_SOCKET`, and the watchdog is a thread that pings only while the
//! async runtime still runs tasks.

use std::io;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::time::Duration;

/// Sends a notification (`READY=1`, `STOPPING=1`, `STATUS=...`,
/// `WATCHDOG=1`). Returns false when not started by systemd.
pub fn notify(state: &str) -> io::Result<bool> {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return Ok(false);
    };
    let sock = UnixDatagram::unbound()?;
    let bytes = path.as_encoded_bytes();
    if let Some(name) = bytes.strip_prefix(b"@") {
        // An abstract socket: the name has no path.
        use std::os::linux::net::SocketAddrExt;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
        sock.send_to_addr(state.as_bytes(), &addr)?;
    } else {
        sock.send_to(state.as_bytes(), Path::new(&path))?;
    }
    Ok(true)
}

/// Logs instead of failing: a lost notification must not stop the daemon.
pub fn notify_or_log(state: &str) {
    if let Err(e) = notify(state) {
        tracing::warn!(error = %e, state, "sd_notify failed");
    }
}

/// The watchdog interval systemd asked for, if it is meant for this process.
pub fn watchdog_interval() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    if let Ok(pid) = std::env::var("WATCHDOG_PID") {
        if pid.parse::<u32>().ok()? != std::process::id() {
            return None;
        }
    }
    (usec > 0).then(|| Duration::from_micros(usec))
}

/// Pings the watchdog every half interval, but only after a probe task on the
/// runtime has run: a wedged runtime (every worker blocked) stops the pings
/// and systemd restarts the daemon.
pub fn spawn_watchdog(handle: tokio::runtime::Handle, interval: Duration) {
    let period = interval / 2;
    let spawned = std::thread::Builder::new()
        .name("watchdog".into())
        .spawn(move || loop {
            std::thread::sleep(period);
            let (tx, rx) = std::sync::mpsc::sync_channel(1);
            handle.spawn(async move {
                let _ = tx.send(());
            });
            match rx.recv_timeout(period) {
                Ok(()) => notify_or_log("WATCHDOG=1"),
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                    tracing::error!("runtime did not answer the watchdog probe in {:?}", period);
                }
                // The runtime is gone: the daemon is exiting.
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
            }
        });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "cannot start the watchdog thread");
    }
}
