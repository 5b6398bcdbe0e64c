//! `depotctl events`: prints pushed events, one line each.

use depot_client::{Endpoint, Options};
use std::io::Write;
use std::time::Duration;

use crate::rpc::Events;
use crate::Failure;

pub async fn run(
    ep: &Endpoint,
    opts: Options,
    flow_id: Option<&str>,
    prefixes: &[String],
    count: Option<u64>,
) -> Result<(), Failure> {
    let prefixes: Vec<&str> = prefixes.iter().map(String::as_str).collect();
    let ws = Events::connect(ep, opts, flow_id, &prefixes).await?;
    let mut seen = 0u64;
    while count.is_none_or(|c| seen < c) {
        match ws.next_event(Duration::from_secs(3600)).await {
            Some((method, params)) => {
                let mut out = std::io::stdout().lock();
                let _ = writeln!(out, "{method} {params}");
                let _ = out.flush();
                seen += 1;
            }
            None => {
                if let Some(why) = ws.closed_reason() {
                    return Err(depot_client::ClientError::Http(format!("events: {why}")).into());
                }
            }
        }
    }
    Ok(())
}
