//! `Host.ping2` over mutual TLS from many concurrent clients on loopback:
//! calls/s, latency p50/p99, and depotd's RSS idle and under load.
//!
//! Each client is its own TLS connection doing one call at a time (as the
//! engine's per-host connection does), so the figure includes TLS record
//! handling, HTTP parsing, JSON-RPC dispatch and the request log line.
//!
//! `--stomp` runs the same load over STOMP 1.2 (the engine's transport:
//! SEND to jms.topic.vdsm_requests, the answer as a MESSAGE) and over HTTP
//! in the same run, rounds alternating, and prints the ratio.
//! Client and server share this machine's cores; the figures are a lower
//! bound for a server with the machine to itself.

use depot_client::{Client, ClientError, Endpoint, StompClient};
use serde_json::{json, Value};
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
    /// Also run every round over STOMP 1.2 (64 more connections), rounds
    /// alternating with HTTP, and print the STOMP/HTTP ratios.
    #[arg(long)]
    stomp: bool,
}

/// One benchmark connection.
enum Conn {
    Http(Box<Client>),
    Stomp(StompClient),
}

impl Conn {
    async fn open(ep: &Endpoint, stomp: bool) -> Result<Conn, String> {
        if stomp {
            StompClient::connect(ep)
                .await
                .map(Conn::Stomp)
                .map_err(|e| e.to_string())
        } else {
            Client::connect(ep)
                .await
                .map(|c| Conn::Http(Box::new(c)))
                .map_err(|e| e.to_string())
        }
    }

    async fn ping(&self) -> Result<Value, ClientError> {
        match self {
            Conn::Http(c) => c.call("Host.ping2", json!({})).await,
            Conn::Stomp(c) => c.call("Host.ping2", json!({})).await,
        }
    }
}

/// The medians of one transport's rounds.
struct Summary {
    per_s: f64,
    p50_us: f64,
    p99_us: f64,
}

fn summarize(rounds: &[Round]) -> Summary {
    Summary {
        per_s: median_f64(rounds.iter().map(|r| r.per_s).collect()),
        p50_us: median_f64(rounds.iter().map(|r| r.p50_us as f64).collect()),
        p99_us: median_f64(rounds.iter().map(|r| r.p99_us as f64).collect()),
    }
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
    // An HTTP keep-alive connection idle for handshake_timeout_s is
    // closed, and with --stomp each pool sits idle through the other's
    // round: 64 clients reconnecting at once would then meet the
    // per-address handshake limit. Longer than any round.
    let keep_alive = if args.stomp {
        format!(
            "[limits]\nhandshake_timeout_s = {}\n",
            (4.0 * args.seconds).max(60.0)
        )
    } else {
        String::new()
    };
    let d = Daemon::start(
        depotd,
        &format!("[log]\nlevel = \"{}\"\n{keep_alive}", args.log_level),
    )
    .await?;
    let transports: &[(&str, bool)] = if args.stomp {
        &[("HTTP", false), ("STOMP", true)]
    } else {
        &[("HTTP", false)]
    };
    let mut pools = Vec::new();
    for &(_, stomp) in transports {
        let mut clients = Vec::with_capacity(args.clients);
        for _ in 0..args.clients {
            let c = Conn::open(&d.tls(), stomp)
                .await
                .map_err(|e| format!("{e}; depotd's log ends:\n{}", d.log_tail(10)))?;
            clients.push(Arc::new(c));
        }
        // Warm up: every connection has done its handshake and a call.
        for c in &clients {
            c.ping().await.map_err(|e| e.to_string())?;
        }
        pools.push(clients);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let idle_kib = d.rss_kib();

    // Rounds alternate between the transports, so that the machine's
    // noise falls on both alike.
    let mut rounds: Vec<Vec<Round>> = transports.iter().map(|_| Vec::new()).collect();
    for _ in 0..args.rounds {
        for (i, clients) in pools.iter().enumerate() {
            let length = Duration::from_secs_f64(args.seconds);
            rounds[i].push(round(&d, clients, length, args.rate).await?);
        }
    }
    drop(pools);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after_kib = d.rss_kib();

    let load = match args.rate {
        Some(r) => format!("paced at {r:.0} calls/s"),
        None => "saturating".to_string(),
    };
    let names: Vec<&str> = transports.iter().map(|t| t.0).collect();
    println!(
        "bench: Host.ping2 over mutual TLS ({}), {} clients each, {load}, {} rounds of {} s, depotd log level {}",
        names.join(" and "),
        args.clients,
        args.rounds,
        args.seconds,
        args.log_level
    );
    print_transports(transports, &rounds);
    let rss_load = rounds
        .iter()
        .flatten()
        .map(|r| r.rss_max_kib)
        .max()
        .unwrap_or(0);
    println!(
        "RSS idle ({} connections open): {:.1} MiB (target < 20 MiB)",
        args.clients * transports.len(),
        idle_kib as f64 / 1024.0
    );
    println!("RSS under load (max): {:.1} MiB", rss_load as f64 / 1024.0);
    println!(
        "RSS after the clients left: {:.1} MiB",
        after_kib as f64 / 1024.0
    );
    Ok(())
}

/// Each transport's rounds and medians, and STOMP against HTTP when both
/// ran.
fn print_transports(transports: &[(&str, bool)], rounds: &[Vec<Round>]) {
    let mut summaries = Vec::new();
    for ((name, _), rounds) in transports.iter().zip(rounds) {
        println!("{name}:");
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
        let s = summarize(rounds);
        println!(
            "  median calls/s: {:.0} (target >= 20000: ratio {:.2})",
            s.per_s,
            s.per_s / 20000.0
        );
        println!("  median p50: {:.3} ms", s.p50_us / 1e3);
        println!(
            "  median p99: {:.3} ms (target < 2 ms: ratio {:.2})",
            s.p99_us / 1e3,
            2000.0 / s.p99_us.max(1.0)
        );
        let cpu = median_f64(rounds.iter().map(|r| r.cpu_us_per_call).collect());
        println!("  median depotd CPU per call: {cpu:.1} us");
        summaries.push(s);
    }
    if let [http, stomp] = &summaries[..] {
        println!(
            "STOMP/HTTP: calls/s {:.2}, p50 {:.2}, p99 {:.2}",
            stomp.per_s / http.per_s.max(1.0),
            stomp.p50_us / http.p50_us.max(1.0),
            stomp.p99_us / http.p99_us.max(1.0)
        );
    }
}

async fn round(
    d: &Daemon,
    clients: &[Arc<Conn>],
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
                c.ping().await.map_err(|e| e.to_string())?;
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
