//! `depotctl backup`: the OVF backup verbs (`OvfBackup.*`) as tables, or
//! their answers as JSON.

use depot_client::{Client, ClientError, Endpoint, Options};
use serde_json::{json, Value};

use crate::args::BackupCmd;
use crate::ovf::{format_time, table};
use crate::Failure;

const LIST_HEADER: [&str; 6] = ["ENTITY ID", "NAME", "TYPE", "COPIES", "TRUSTED", "WHY"];
const COPY_HEADER: [&str; 6] = [
    "PROVIDER",
    "GENERATION",
    "SHA256",
    "SOURCE DOMAIN/VOLUME",
    "RECORDED",
    "AGREES WITH",
];

pub async fn run(
    ep: &Endpoint,
    opts: Options,
    flow_id: Option<&str>,
    cmd: BackupCmd,
) -> Result<(), Failure> {
    let client = Client::connect_with(ep, opts).await?;
    let call = |method: &'static str, params: Value| {
        let client = &client;
        async move {
            match flow_id {
                Some(f) => client.call_with_flow_id(method, params, f).await,
                None => client.call(method, params).await,
            }
        }
    };
    let (v, json, render): (Value, bool, fn(&Value) -> String) = match cmd {
        BackupCmd::List { json } => (call("OvfBackup.list", json!({})).await?, json, render_list),
        BackupCmd::Show { entity, json } => (
            call("OvfBackup.show", json!({"entityID": entity.to_string()})).await?,
            json,
            render_show,
        ),
        BackupCmd::Restore {
            domain,
            image,
            volume,
            entities,
            provider,
            json,
        } => {
            let mut p = json!({"storagedomainID": domain.to_string()});
            if let (Some(i), Some(v)) = (image, volume) {
                p["imageID"] = json!(i.to_string());
                p["volumeID"] = json!(v.to_string());
            }
            if !entities.is_empty() {
                p["entityIDs"] = json!(entities.iter().map(|e| e.to_string()).collect::<Vec<_>>());
            }
            if let Some(pr) = provider {
                p["provider"] = json!(pr);
            }
            (call("OvfBackup.restore", p).await?, json, render_restore)
        }
        BackupCmd::Attach {
            path,
            resume,
            fresh: _,
            json,
        } => {
            let abs = if path.is_absolute() {
                path
            } else {
                std::env::current_dir()
                    .map_err(|e| Failure::Usage(format!("cannot resolve {}: {e}", path.display())))?
                    .join(path)
            };
            let mode = if resume { "resume" } else { "fresh" };
            (
                call(
                    "OvfBackup.attach",
                    json!({"path": abs.display().to_string(), "mode": mode}),
                )
                .await?,
                json,
                render_attach,
            )
        }
    };
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&v).map_err(|e| ClientError::Protocol(e.to_string()))?
        );
    } else {
        print!("{}", render(&v));
    }
    Ok(())
}

fn s(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

fn short(sha: &Value) -> String {
    let t = s(sha);
    t.chars().take(12).collect()
}

fn arr(v: &Value) -> &[Value] {
    v.as_array().map(Vec::as_slice).unwrap_or(&[])
}

pub fn render_list(v: &Value) -> String {
    let mut out = String::new();
    for p in arr(&v["providers"]) {
        if let Some(e) = p["error"].as_str() {
            out.push_str(&format!("provider {}: {e}\n", s(&p["name"])));
        }
    }
    let rows: Vec<Vec<String>> = arr(&v["entities"])
        .iter()
        .map(|e| {
            let trusted = match e["trusted"].as_str() {
                Some(p) => format!("{p} gen {}", s(&e["trustedGeneration"])),
                None => "none".into(),
            };
            vec![
                s(&e["id"]),
                s(&e["name"]),
                s(&e["type"]),
                arr(&e["copies"]).len().to_string(),
                trusted,
                s(&e["reason"]),
            ]
        })
        .collect();
    if rows.is_empty() {
        out.push_str("no VMs or templates in any provider\n");
    } else {
        out.push_str(&table(&LIST_HEADER, &rows));
    }
    out
}

pub fn render_show(v: &Value) -> String {
    let mut out = format!(
        "{} {} ({})\ntrusted: {}\n\n",
        s(&v["type"]),
        s(&v["name"]),
        s(&v["id"]),
        match v["trusted"].as_str() {
            Some(p) => format!(
                "{p}, generation {}, sha256 {} - {}",
                s(&v["trustedGeneration"]),
                short(&v["trustedSha256"]),
                s(&v["reason"])
            ),
            None => format!("none - {}", s(&v["reason"])),
        }
    );
    let rows: Vec<Vec<String>> = arr(&v["copies"])
        .iter()
        .map(|c| {
            let agree: Vec<String> = arr(&c["agreesWith"]).iter().map(s).collect();
            vec![
                s(&c["provider"]),
                s(&c["generation"]),
                short(&c["sha256"]),
                format!("{}/{}", s(&c["sourceDomainID"]), s(&c["sourceVolumeID"])),
                match c["time"].as_u64() {
                    Some(0) | None => "-".into(),
                    Some(t) => format_time(t),
                },
                match c["unusable"].as_str() {
                    Some(why) => format!("unusable: {why}"),
                    None => agree.join(", "),
                },
            ]
        })
        .collect();
    out.push_str(&table(&COPY_HEADER, &rows));
    if let Some(ovf) = v["ovf"].as_str() {
        out.push('\n');
        out.push_str(ovf);
        if !ovf.ends_with('\n') {
            out.push('\n');
        }
    }
    out
}

pub fn render_restore(v: &Value) -> String {
    let mut out = format!(
        "restored into {}/{}/{} as generation {}:\n",
        s(&v["storagedomainID"]),
        s(&v["imageID"]),
        s(&v["volumeID"]),
        s(&v["generation"])
    );
    for r in arr(&v["restored"]) {
        out.push_str(&format!(
            "  {} {} from {} (generation {}, sha256 {})\n",
            s(&r["id"]),
            s(&r["name"]),
            s(&r["provider"]),
            s(&r["generation"]),
            short(&r["sha256"])
        ));
    }
    for r in arr(&v["skipped"]) {
        out.push_str(&format!("  skipped {}: {}\n", s(&r["id"]), s(&r["reason"])));
    }
    out
}

pub fn render_attach(v: &Value) -> String {
    let mut out = format!(
        "attached {} ({}); uploads are recorded in {}\n",
        s(&v["path"]),
        s(&v["mode"]),
        s(&v["recording"])
    );
    for g in arr(&v["latest"]) {
        out.push_str(&format!(
            "  {}/{}: generation {}\n",
            s(&g["sourceDomainID"]),
            s(&g["sourceVolumeID"]),
            s(&g["generation"])
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_shows_the_trusted_copy_and_why() {
        let v = json!({
            "providers": [{"name": "stores", "records": false},
                          {"name": "mirror", "records": true, "error": "domain x: gone"}],
            "entities": [{"id": "e1", "name": "web", "type": "VM",
                "copies": [{}, {}], "trusted": "archive", "trustedGeneration": 3,
                "reason": "generation 3 is held by 2 providers that agree"}]
        });
        let out = render_list(&v);
        assert!(out.contains("provider mirror: domain x: gone"), "{out}");
        assert!(out.contains("archive gen 3"), "{out}");
        assert!(out.contains("2 providers that agree"), "{out}");
        let none = render_list(&json!({"providers": [], "entities": []}));
        assert!(none.contains("no VMs or templates"), "{none}");
    }
}
