//! `depotctl dr`: disaster recovery from a mapping file (docs/dr.md). The
//! file is read here and its text sent (`DR.plan`); the answer is shown as
//! a report, or as the JSON received.

use depot_client::{ClientError, Endpoint, Options};
use serde_json::{json, Value};
use std::path::Path;

use crate::args::{DrCmd, DrRun, MappingFormat};
use crate::ovf::table;
use crate::rpc::Rpc;
use crate::Failure;

pub async fn run(
    ep: &Endpoint,
    opts: Options,
    flow_id: Option<&str>,
    cmd: DrCmd,
) -> Result<(), Failure> {
    match cmd {
        DrCmd::Plan {
            mapping,
            format,
            failback,
            confirm_fenced,
            recovery_pool,
            json,
        } => {
            let text = std::fs::read_to_string(&mapping)
                .map_err(|e| Failure::Usage(format!("{}: {e}", mapping.display())))?;
            let format = format.unwrap_or_else(|| format_of(&mapping));
            let mut params = json!({
                "mapping": text,
                "format": match format {
                    MappingFormat::Toml => "toml",
                    MappingFormat::Ansible => "ansible",
                },
                "failback": failback,
                "confirmedFenced": confirm_fenced,
            });
            if let Some(sp) = recovery_pool {
                params["recoveryPoolID"] = json!(sp);
            }
            let rpc = Rpc::connect(ep, opts, flow_id).await?;
            let plan = rpc.call("DR.plan", params).await?;
            if json {
                println!("{plan}");
            } else {
                print!(
                    "{}",
                    render_plan(&plan).map_err(|e| Failure::Client(ClientError::Protocol(e)))?
                );
            }
            Ok(())
        }
        DrCmd::Failover(run) => failover(ep, opts, flow_id, "DR.failover", run).await,
        DrCmd::Failback(run) => failover(ep, opts, flow_id, "DR.failback", run).await,
        DrCmd::Status { json } => {
            let rpc = Rpc::connect(ep, opts, flow_id).await?;
            let st = rpc.call("DR.status", json!({})).await?;
            if json {
                println!("{st}");
            } else {
                print!("{}", render_status(&st));
            }
            Ok(())
        }
    }
}

/// `dr failover` / `dr failback`: the dry run, or the job followed step
/// by step, then its report.
async fn failover(
    ep: &Endpoint,
    opts: Options,
    flow_id: Option<&str>,
    verb: &str,
    run: DrRun,
) -> Result<(), Failure> {
    let mapping_text = std::fs::read_to_string(&run.mapping)
        .map_err(|e| Failure::Usage(format!("{}: {e}", run.mapping.display())))?;
    let format = run.format.unwrap_or_else(|| format_of(&run.mapping));
    let mut params = json!({
        "mapping": mapping_text,
        "format": match format {
            MappingFormat::Toml => "toml",
            MappingFormat::Ansible => "ansible",
        },
        "confirmedFenced": run.confirm_fenced,
        "dryRun": run.dry_run,
    });
    if let Some(id) = run.host_id {
        params["hostId"] = json!(id);
    }
    if let Some(sp) = run.recovery_pool {
        params["recoveryPoolID"] = json!(sp);
    }
    let rpc = Rpc::connect(ep, opts, flow_id).await?;
    let started = rpc.call(verb, params).await?;
    if run.dry_run {
        if run.json {
            println!("{}", started["dry_run"]);
        } else {
            print!("{}", render_dry_run(&started["dry_run"]));
        }
        return Ok(());
    }
    let id = started
        .get("job_id")
        .and_then(Value::as_str)
        .ok_or_else(|| ClientError::Protocol(format!("{verb} returned {started}, not a job id")))?
        .to_string();
    let mut shown = None;
    loop {
        let jobs = rpc.call("Host.getJobs", json!({"job_ids": [id]})).await?;
        let job = &jobs[id.as_str()];
        let status = text(job, "status");
        let step = job
            .get("progress")
            .and_then(Value::as_u64)
            .map(|p| (p / 20 + 1).min(5));
        if !run.json && step != shown && matches!(status, "running" | "done") {
            if let Some(n) = step.filter(|_| status == "running") {
                eprintln!("step {n} of 5: {}", STEP_NAMES[(n - 1) as usize]);
            }
            shown = step;
        }
        match status {
            "done" => {
                let report = &job["result"];
                if run.json {
                    println!("{report}");
                } else {
                    print!("{}", render_report(report));
                }
                return Ok(());
            }
            "failed" | "aborted" => {
                let e: depot_api::WireError = serde_json::from_value(job["error"].clone())
                    .map_err(|e| ClientError::Protocol(format!("job error: {e}")))?;
                return Err(ClientError::Rpc(e).into());
            }
            _ => tokio::time::sleep(std::time::Duration::from_millis(500)).await,
        }
    }
}

/// The steps' names, as the daemon's journal has them.
const STEP_NAMES: [&str; 5] = [
    "fence check",
    "switch connections",
    "find domains",
    "take over",
    "find VMs",
];

fn fence_line(f: &Value) -> String {
    let confirmed: Vec<String> = f
        .get("confirmed_fenced")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_u64)
        .map(|h| h.to_string())
        .collect();
    let mut out = format!("{}: {}", text(f, "verdict"), text(f, "message"));
    if !confirmed.is_empty() {
        out.push_str(&format!(" (confirmed fenced: {})", confirmed.join(", ")));
    }
    out
}

fn connection_rows(v: &Value) -> Vec<Vec<String>> {
    v.as_array()
        .into_iter()
        .flatten()
        .map(|c| {
            vec![
                text(c, "pair").to_string(),
                text(c, "side").to_string(),
                text(c, "connection").to_string(),
                text(c, "action").to_string(),
                text(c, "outcome").to_string(),
            ]
        })
        .collect()
}

fn domain_rows(v: &Value) -> Vec<Vec<String>> {
    v.as_array()
        .into_iter()
        .flatten()
        .map(|d| {
            vec![
                text(d, "sd").to_string(),
                yes(d, "expected"),
                yes(d, "backup"),
                match d.get("problem").and_then(Value::as_str) {
                    Some(p) => p.to_string(),
                    None => format!("found at {}", text(d, "path")),
                },
            ]
        })
        .collect()
}

/// The dry run: steps 1 and 3 as read, what 2, 4 and 5 would do.
pub fn render_dry_run(v: &Value) -> String {
    let mut out = format!(
        "DR {} dry run: nothing was changed\n\n",
        text(v, "operation")
    );
    out.push_str(&format!(
        "step 1, fence check: {}\n\n",
        fence_line(&v["fence"])
    ));
    out.push_str("step 2 would do:\n");
    out.push_str(&table(
        &["CONNECTION", "SIDE", "WHERE", "ACTION", "OUTCOME"],
        &connection_rows(&v["connections"]),
    ));
    out.push_str("\nstep 3, the domains on the secondary:\n");
    out.push_str(&table(
        &["DOMAIN", "LISTED", "BACKUP", "FOUND"],
        &domain_rows(&v["domains"]),
    ));
    for w in v
        .get("would")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        out.push_str(&format!("{}\n", w.as_str().unwrap_or("")));
    }
    for w in v
        .get("not_resynced")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        out.push_str(&format!("failback refused: {}\n", w.as_str().unwrap_or("")));
    }
    out
}

/// The report (a finished journal): each step, then every VM and
/// template with its disks.
pub fn render_report(r: &Value) -> String {
    let mut out = format!(
        "DR {} into pool {}: {} of 5 steps done{}\n\n",
        text(r, "operation"),
        text(r, "pool"),
        r.get("steps_done").and_then(Value::as_u64).unwrap_or(0),
        if r.get("finished").is_some_and(|f| !f.is_null()) {
            ", finished"
        } else {
            ""
        }
    );
    if let Some(f) = r.get("fence").filter(|f| !f.is_null()) {
        out.push_str(&format!("1 fence check: {}\n", fence_line(f)));
    }
    let conns = connection_rows(&r["connections"]);
    if !conns.is_empty() {
        out.push_str("2 connections:\n");
        out.push_str(&table(
            &["CONNECTION", "SIDE", "WHERE", "ACTION", "OUTCOME"],
            &conns,
        ));
    }
    let doms = domain_rows(&r["domains"]);
    if !doms.is_empty() {
        out.push_str("3 domains:\n");
        out.push_str(&table(&["DOMAIN", "LISTED", "BACKUP", "FOUND"], &doms));
    }
    if let Some(t) = r.get("takeover").filter(|t| !t.is_null()) {
        out.push_str(&format!(
            "4 take over: master {} at version {}, host {}\n",
            text(t, "master"),
            t.get("master_version").and_then(Value::as_i64).unwrap_or(0),
            t.get("host_id").and_then(Value::as_u64).unwrap_or(0)
        ));
        for a in t
            .get("actions")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            out.push_str(&format!("  {}\n", a.as_str().unwrap_or("")));
        }
        out.push_str(&format!(
            "  fence after joining: {}\n",
            fence_line(&t["fence"])
        ));
    }
    let rows = entity_rows(r);
    if r.get("steps_done").and_then(Value::as_u64) == Some(5) {
        out.push_str("5 VMs and templates:\n");
        if rows.is_empty() {
            out.push_str("  none found\n");
        } else {
            out.push_str(&table(
                &["NAME", "KIND", "DISKS", "STATE", "OVF COPY"],
                &rows,
            ));
        }
        let copies = copy_lines(r);
        if !copies.is_empty() {
            out.push_str("copies used:\n");
            for c in copies {
                out.push_str(&format!("  {c}\n"));
            }
        }
        for n in r
            .get("notes")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            out.push_str(&format!("note: {}\n", n.as_str().unwrap_or("")));
        }
    }
    out
}

/// Step 5's table: each VM or template, its disks' state, the OVF copy.
fn entity_rows(r: &Value) -> Vec<Vec<String>> {
    let mut rows = Vec::new();
    for e in r
        .get("entities")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let disks: Vec<&Value> = e
            .get("disks")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .collect();
        let ok = disks.iter().all(|d| {
            d.get("present") == Some(&json!(true)) && d.get("complete") == Some(&json!(true))
        });
        rows.push(vec![
            text(e, "name").to_string(),
            text(e, "kind").to_string(),
            disks.len().to_string(),
            if ok {
                "all present and complete".to_string()
            } else {
                disks
                    .iter()
                    .filter_map(|d| d.get("problem").and_then(Value::as_str))
                    .collect::<Vec<_>>()
                    .join("; ")
            },
            text(e, "ovf_copy").to_string(),
        ]);
    }
    rows
}

/// Step 5: which copy of each entity's OVF was used and why (a journal
/// of version 1 has none).
fn copy_lines(r: &Value) -> Vec<String> {
    let mut out = Vec::new();
    for e in r
        .get("entities")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let Some(c) = e.get("copy").filter(|c| c.is_object()) else {
            continue;
        };
        let generation = c
            .get("generation")
            .and_then(Value::as_u64)
            .map_or("unknown".into(), |g| g.to_string());
        let mut line = format!(
            "{}: {}, generation {}, sha256 {}{}{}: {}",
            text(e, "name"),
            text(c, "provider"),
            generation,
            text(c, "sha256"),
            if c.get("trusted") == Some(&json!(true)) {
                ", trusted"
            } else {
                ""
            },
            if c.get("in_store") == Some(&json!(false)) {
                ", only in the backup providers"
            } else {
                ""
            },
            text(c, "reason")
        );
        if let Some(d) = c.get("store_differs").and_then(Value::as_str) {
            line.push_str(&format!("; {d}"));
        }
        out.push(line);
    }
    out
}

/// `dr status`.
pub fn render_status(st: &Value) -> String {
    match text(st, "state") {
        "none" => "no DR failover or failback on this host\n".to_string(),
        state => format!("state: {state}\n{}", render_report(&st["journal"])),
    }
}

/// The Ansible role's var files are YAML; anything else is depot's TOML.
fn format_of(path: &Path) -> MappingFormat {
    match path.extension().and_then(|e| e.to_str()) {
        Some("yml" | "yaml") => MappingFormat::Ansible,
        _ => MappingFormat::Toml,
    }
}

fn text<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or("")
}

fn pool(v: &Value) -> String {
    match (
        v.get("name").and_then(Value::as_str),
        v.get("id").and_then(Value::as_str),
    ) {
        (Some(n), Some(id)) => format!("{n} ({id})"),
        (Some(n), None) => n.to_string(),
        (None, Some(id)) => id.to_string(),
        (None, None) => "-".into(),
    }
}

fn yes(v: &Value, key: &str) -> String {
    if v.get(key).and_then(Value::as_bool).unwrap_or(false) {
        "yes".into()
    } else {
        "no".into()
    }
}

/// The plan as a report: the connections and what step 2 would do, the
/// domains and where they are, the fence check, the warnings.
pub fn render_plan(plan: &Value) -> Result<String, String> {
    let conns = plan
        .get("connections")
        .and_then(Value::as_array)
        .ok_or_else(|| format!("DR.plan returned no connections: {plan}"))?;
    let what = if plan.get("failback").and_then(Value::as_bool) == Some(true) {
        "failback"
    } else {
        "failover"
    };
    let mut out = format!(
        "DR plan ({what}) from a {} mapping: {} -> {}\n\n",
        text(plan, "format"),
        pool(&plan["primary_pool"]),
        pool(&plan["secondary_pool"])
    );
    let mut rows = Vec::new();
    let mut domains = Vec::new();
    for c in conns {
        for (i, side) in ["primary", "secondary"].iter().enumerate() {
            let s = &c[*side];
            let state = match s.get("detail").and_then(Value::as_str) {
                Some(d) => format!("{} ({d})", text(s, "state")),
                None => text(s, "state").to_string(),
            };
            rows.push(vec![
                if i == 0 {
                    text(c, "name").to_string()
                } else {
                    String::new()
                },
                if i == 0 {
                    text(c, "type").to_string()
                } else {
                    String::new()
                },
                side.to_string(),
                text(s, "connection").to_string(),
                text(s, "action").to_string(),
                state,
            ]);
        }
        for d in c
            .get("domains")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            domains.push(vec![
                text(d, "sd_id").to_string(),
                text(c, "name").to_string(),
                yes(d, "expected"),
                yes(d, "visible"),
                match d.get("detail").and_then(Value::as_str) {
                    Some(x) => format!("{} ({x})", text(d, "on")),
                    None => text(d, "on").to_string(),
                },
            ]);
        }
    }
    out.push_str(&table(
        &["CONNECTION", "TYPE", "SIDE", "WHERE", "STEP 2", "NOW"],
        &rows,
    ));
    out.push('\n');
    if domains.is_empty() {
        out.push_str("no domain listed or found\n");
    } else {
        out.push_str(&table(
            &["DOMAIN", "CONNECTION", "LISTED", "VISIBLE", "ON"],
            &domains,
        ));
    }
    out.push_str(&render_fence(&plan["fence"]));
    for w in plan
        .get("warnings")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        out.push_str(&format!("warning: {}\n", w.as_str().unwrap_or("")));
    }
    out.push_str("\nnothing was changed (depotctl dr failover --dry-run shows steps 3 to 5 too)\n");
    Ok(out)
}

/// The fence check: its verdict, why, and each host that is not known
/// dead.
fn render_fence(fence: &Value) -> String {
    let mut out = String::new();
    out.push_str(&format!(
        "\nfence check: {}\n  {}\n",
        text(fence, "verdict"),
        text(fence, "message")
    ));
    for h in fence
        .get("live_hosts")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let doms: Vec<&str> = h
            .get("domains")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        out.push_str(&format!(
            "  host {}: {}, {} site{}, on {}\n",
            h.get("host_id").and_then(Value::as_u64).unwrap_or(0),
            text(h, "status"),
            text(h, "site"),
            if h.get("confirmed").and_then(Value::as_bool) == Some(true) {
                ", confirmed fenced"
            } else {
                ""
            },
            doms.join(", ")
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_renders_each_step_and_every_vm() {
        let fence = json!({"verdict": "pass (confirmed fenced)", "message": "passes: host 1 confirmed",
            "hosts": [{"host_id": 1, "status": "live", "confirmed": true}],
            "confirmed_fenced": [1], "at": 1});
        let r = json!({
            "version": 1, "operation": "failover", "pool": "rp", "host_id": 3,
            "started": 1, "steps_done": 5, "finished": 2, "fence": fence,
            "connections": [{"pair": "connection 'local'", "side": "primary",
                "connection": "/srv/a", "action": "disconnect", "outcome": "ok"}],
            "domains": [{"sd": "sd-1", "expected": true, "backup": false,
                "path": "/srv/b/sd-1", "metadata": null, "problem": null},
                {"sd": "sd-2", "expected": true, "backup": true, "path": null,
                 "metadata": null, "problem": "missing: not in /srv/b"}],
            "takeover": {"pool": "rp", "master": "sd-1", "master_version": 2, "host_id": 3,
                "domains": ["sd-1"], "actions": ["joined the lockspaces as host 3"], "fence": fence},
            "entities": [
                {"id": "e1", "name": "web", "kind": "VM", "sd": "sd-1",
                 "ovf_copy": "archive: generation 5 of OVF_STORE i/v of sd-1",
                 "copy": {"provider": "archive", "generation": 5, "sha256": "ab12",
                          "trusted": true, "reason": "the only usable copy", "in_store": true,
                          "store_differs": "the OVF_STORE i/v holds generation 4 of it"},
                 "disks": [{"image": "i1", "volume": "v1", "present": true, "complete": true,
                            "legality": "LEGAL", "capacity": 1, "chain": ["v1"], "problem": null}]},
                {"id": "e2", "name": "db", "kind": "VM", "sd": "sd-1", "ovf_copy": "x",
                 "disks": [{"image": "i2", "volume": "v2", "present": false, "complete": false,
                            "legality": null, "capacity": null, "chain": [],
                            "problem": "missing: no volume"}]}],
            "notes": ["sd-9: no OVF_STORE read"],
        });
        let out = render_report(&r);
        for want in [
            "DR failover into pool rp: 5 of 5 steps done, finished",
            "1 fence check: pass (confirmed fenced): passes: host 1 confirmed (confirmed fenced: 1)",
            "connection 'local'  primary  /srv/a  disconnect  ok",
            "sd-2    yes     yes     missing: not in /srv/b",
            "4 take over: master sd-1 at version 2, host 3",
            "  joined the lockspaces as host 3",
            "web   VM    1      all present and complete  archive: generation 5 of OVF_STORE i/v of sd-1",
            "copies used:\n  web: archive, generation 5, sha256 ab12, trusted: the only usable copy; \
             the OVF_STORE i/v holds generation 4 of it",
            "db    VM    1      missing: no volume",
            "note: sd-9: no OVF_STORE read",
        ] {
            assert!(out.contains(want), "{want:?} not in:\n{out}");
        }
        let st = render_status(&json!({"state": "interrupted", "journal": {
            "operation": "failover", "pool": "rp", "steps_done": 2, "finished": null}}));
        assert!(
            st.starts_with("state: interrupted\nDR failover into pool rp: 2 of 5 steps done\n"),
            "{st}"
        );
        assert!(!st.contains("5 VMs"), "{st}");
        assert_eq!(
            render_status(&json!({"state": "none"})),
            "no DR failover or failback on this host\n"
        );
    }

    #[test]
    fn the_format_follows_the_extension() {
        assert_eq!(format_of(Path::new("vars.yml")), MappingFormat::Ansible);
        assert_eq!(format_of(Path::new("a/vars.yaml")), MappingFormat::Ansible);
        assert_eq!(format_of(Path::new("dr-mapping.toml")), MappingFormat::Toml);
        assert_eq!(format_of(Path::new("mapping")), MappingFormat::Toml);
    }

    #[test]
    fn a_plan_renders_every_part() {
        let plan = json!({
            "format": "toml", "failback": false, "warnings": ["ignored: dr_x"],
            "primary_pool": {"id": "p-id", "name": "Prod"},
            "secondary_pool": {"name": "Recovery"},
            "connections": [{
                "name": "connection 'local'", "type": "LOCALFS", "backup": false,
                "primary": {"connection": "/srv/a", "state": "connected", "action": "disconnect"},
                "secondary": {"connection": "/srv/b", "state": "unknown", "detail": "why", "action": "connect"},
                "domains": [{"sd_id": "sd-1", "expected": true, "visible": true, "on": "primary"}],
            }],
            "fence": {"verdict": "refuse", "message": "refused: host 1",
                "live_hosts": [{"host_id": 1, "status": "live", "site": "primary",
                    "confirmed": false, "domains": ["sd-1"]}],
                "domains": []},
        });
        let out = render_plan(&plan).unwrap();
        for want in [
            "DR plan (failover) from a toml mapping: Prod (p-id) -> Recovery",
            "connection 'local'  LOCALFS  primary    /srv/a  disconnect  connected",
            "secondary  /srv/b  connect     unknown (why)",
            "sd-1    connection 'local'  yes     yes      primary",
            "fence check: refuse",
            "host 1: live, primary site, on sd-1",
            "warning: ignored: dr_x",
        ] {
            assert!(out.contains(want), "{want:?} not in:\n{out}");
        }
        assert!(render_plan(&json!({})).is_err());
    }
}
