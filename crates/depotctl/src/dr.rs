//! `depotctl dr`: disaster recovery from a mapping file (docs/dr.md). The
//! file is read here and its text sent (`DR.plan`); the answer is shown as
//! a report, or as the JSON received.

use depot_client::{ClientError, Endpoint, Options};
use serde_json::{json, Value};
use std::path::Path;

use crate::args::{DrCmd, MappingFormat};
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
            json,
        } => {
            let text = std::fs::read_to_string(&mapping)
                .map_err(|e| Failure::Usage(format!("{}: {e}", mapping.display())))?;
            let format = format.unwrap_or_else(|| format_of(&mapping));
            let params = json!({
                "mapping": text,
                "format": match format {
                    MappingFormat::Toml => "toml",
                    MappingFormat::Ansible => "ansible",
                },
                "failback": failback,
                "confirmedFenced": confirm_fenced,
            });
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
    out.push_str("\nnothing was changed: DR.failover is not there yet (docs/dr.md)\n");
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
