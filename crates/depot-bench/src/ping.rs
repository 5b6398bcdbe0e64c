//! `Host.ping2` over mutual TLS from many concurrent clients on loopback:
//! calls/s, latency p50/p99, and depotd's RSS idle and under load.
//!
//! Each client is its own TLS connection doing one call at a time (as the
//! engine's per-host connection does), so the figure includes TLS record
//! handling, HTTP parsing, JSON-RPC dispatch and the request log line.
//! Client and server share this machine's cores; the figures are a lower
//! bound for a server with the machine to itself.

use depot_client::Client;
use serde_json::json;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::daemon::Daemon;
use crate::stats::{median_f64, percentile};

#[derive(clap::Args)]
pub struct PingArgs {
    /// Concurrent clients, each on its own TLS connection.
    #[arg(long, default_value_t = 64)]
    clients: usize,
    /// Seconds each measured round lasts.
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// Measured rounds; the report gives the median round.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Total calls per second to offer, spread evenly over the clients
    /// (paced load). Unset: every client calls again as soon as it has its
    /// answer (saturation).
    #[arg(long)]
    rate: Option<f64>,
    /// depotd's log level during the run ("info" logs every request, as in
    /// production).
    #[arg(long, default_value = "info")]
    log_level: String,
}

struct Round {
    calls: usize,
    per_s: f64,
    p50_us: u64,
    p99_us: u64,
    rss_max_kib: u64,
    /// depotd's CPU time per call, in microseconds.
    cpu_us_per_call: f64,
}

pub async fn run(depotd: &std::path::Path, args: PingArgs) -> Result<(), String> {
    let d = Daemon::start(depotd, &format!("[log]\nlevel = \"{}\"\n", args.log_level)).await?;
    let mut clients = Vec::with_capacity(args.clients);
    for _ in 0..args.clients {
        clients.push(Arc::new(
            Client::connect(&d.tls()).await.map_err(|e| e.to_string())?,
        ));
    }
    // Warm up: every connection has done its handshake and a few calls.
    for c in &clients {
        c.call("Host.ping2", json!({}))
            .await
            .map_err(|e| e.to_string())?;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let idle_kib = d.rss_kib();

    let mut rounds = Vec::new();
    for _ in 0..args.rounds {
        rounds.push(
            round(
                &d,
                &clients,
                Duration::from_secs_f64(args.seconds),
                args.rate,
            )
            .await?,
        );
    }
    drop(clients);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after_kib = d.rss_kib();

    let per_s = median_f64(rounds.iter().map(|r| r.per_s).collect());
    let p50 = median_f64(rounds.iter().map(|r| r.p50_us as f64).collect());
    let p99 = median_f64(rounds.iter().map(|r| r.p99_us as f64).collect());
    let rss_load = rounds.iter().map(|r| r.rss_max_kib).max().unwrap_or(0);
    let load = match args.rate {
        Some(r) => format!("paced at {r:.0} calls/s"),
        None => "saturating".to_string(),
    };
    println!(
        "bench: Host.ping2 over mutual TLS, {} clients, {load}, {} rounds of {} s, depotd log level {}",
        args.clients, args.rounds, args.seconds, args.log_level
    );
    for (i, r) in rounds.iter().enumerate() {
        println!(
            "  round {}: {} calls, {:.0} calls/s, p50 {:.3} ms, p99 {:.3} ms, RSS max {:.1} MiB, depotd CPU {:.1} us/call",
            i + 1,
            r.calls,
            r.per_s,
            r.p50_us as f64 / 1e3,
            r.p99_us as f64 / 1e3,
            r.rss_max_kib as f64 / 1024.0,
            r.cpu_us_per_call
        );
    }
    println!(
        "median calls/s: {per_s:.0} (target >= 20000: ratio {:.2})",
        per_s / 20000.0
    );
    println!("median p50: {:.3} ms", p50 / 1e3);
    println!(
        "median p99: {:.3} ms (target < 2 ms: ratio {:.2})",
        p99 / 1e3,
        2000.0 / p99.max(1.0)
    );
    println!(
        "RSS idle: {:.1} MiB (target < 20 MiB)",
        idle_kib as f64 / 1024.0
    );
    println!("RSS under load (max): {:.1} MiB", rss_load as f64 / 1024.0);
    println!(
        "RSS after the clients left: {:.1} MiB",
        after_kib as f64 / 1024.0
    );
    Ok(())
}

async fn round(
    d: &Daemon,
    clients: &[Arc<Client>],
    length: Duration,
    rate: Option<f64>,
) -> Result<Round, String> {
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    // Paced clients start spread over one interval so they do not call in
    // lockstep.
    let interval = rate.map(|r| Duration::from_secs_f64(clients.len() as f64 / r));
    for (i, c) in clients.iter().enumerate() {
        let (c, stop) = (c.clone(), stop.clone());
        let offset = interval.map(|iv| iv.mul_f64(i as f64 / clients.len() as f64));
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(65536);
            let mut next = tokio::time::Instant::now() + offset.unwrap_or_default();
            while !stop.load(Ordering::Relaxed) {
                if let Some(iv) = interval {
                    tokio::time::sleep_until(next).await;
                    next += iv;
                }
                let t = Instant::now();
                c.call("Host.ping2", json!({}))
                    .await
                    .map_err(|e| e.to_string())?;
                lat.push(t.elapsed().as_micros() as u64);
            }
            Ok::<_, String>(lat)
        }));
    }
    let cpu_before = d.cpu_seconds();
    let start = Instant::now();
    let mut rss_max = 0;
    while start.elapsed() < length {
        tokio::time::sleep(Duration::from_millis(200)).await;
        rss_max = rss_max.max(d.rss_kib());
    }
    stop.store(true, Ordering::Relaxed);
    let elapsed = start.elapsed().as_secs_f64();
    let cpu = d.cpu_seconds() - cpu_before;
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.map_err(|e| e.to_string())??);
    }
    all.sort_unstable();
    Ok(Round {
        calls: all.len(),
        per_s: all.len() as f64 / elapsed,
        p50_us: percentile(&all, 50.0),
        p99_us: percentile(&all, 99.0),
        rss_max_kib: rss_max,
        cpu_us_per_call: cpu * 1e6 / all.len().max(1) as f64,
    })
}
