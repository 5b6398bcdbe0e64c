//! `depotctl ovf`: OVF_STORE uploads and downloads (VDSM's `PUT /` and
//! ranged `GET /` on the daemon's port), and the restore verbs as tables.

use depot_client::{Client, ClientError, Endpoint, Options, FLOW_ID_HEADER};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

use crate::args::{OvfCmd, OvfVolume};
use crate::Failure;

const STORE_HEADER: [&str; 7] = [
    "IMAGE ID",
    "VOLUME ID",
    "STATE",
    "SIZE",
    "GENERATION",
    "UPDATED",
    "NOTE",
];
const ENTITY_HEADER: [&str; 5] = ["ENTITY ID", "NAME", "TYPE", "IMAGES", "COMPLETE"];

pub async fn run(
    ep: &Endpoint,
    opts: Options,
    flow_id: Option<&str>,
    cmd: OvfCmd,
) -> Result<(), Failure> {
    match cmd {
        OvfCmd::Upload { target, file } => upload(ep, opts, flow_id, &target, &file).await,
        OvfCmd::Download { target, size, out } => {
            download(ep, opts, flow_id, &target, size, &out).await
        }
        OvfCmd::List { domain, entities } => {
            let client = Client::connect_with(ep, opts).await?;
            let sd = json!({"storagedomainID": domain.to_string()});
            let v = call(&client, flow_id, "StorageDomain.getOvfStores", sd.clone()).await?;
            let stores = parse_stores(&v).map_err(ClientError::Protocol)?;
            print!("{}", render_stores(&stores));
            if entities {
                let v = call(&client, flow_id, "StorageDomain.getOvfEntities", sd).await?;
                let view = parse_entities(&v).map_err(ClientError::Protocol)?;
                print!("\n{}", render_entities(&view));
            }
            Ok(())
        }
        OvfCmd::Show { domain, entity } => {
            let client = Client::connect_with(ep, opts).await?;
            let params = json!({"storagedomainID": domain.to_string(),
                "entityID": entity.to_string()});
            let v = call(&client, flow_id, "StorageDomain.getOvfEntity", params).await?;
            let Some(text) = v.get("ovf").and_then(Value::as_str) else {
                return Err(ClientError::Protocol(format!(
                    "StorageDomain.getOvfEntity returned no OVF text: {v}"
                ))
                .into());
            };
            print!("{text}");
            if !text.ends_with('\n') {
                println!();
            }
            Ok(())
        }
    }
}

async fn call(
    client: &Client,
    flow_id: Option<&str>,
    method: &str,
    params: Value,
) -> Result<Value, ClientError> {
    match flow_id {
        Some(f) => client.call_with_flow_id(method, params, f).await,
        None => client.call(method, params).await,
    }
}

/// The headers naming the volume (VDSM's), and the flow id.
pub fn stream_headers(t: &OvfVolume, flow_id: Option<&str>) -> Vec<(&'static str, String)> {
    let mut h = vec![
        ("Storage-Pool-Id", t.pool.to_string()),
        ("Storage-Domain-Id", t.domain.to_string()),
        ("Image-Id", t.image.to_string()),
        ("Volume-Id", t.volume.to_string()),
    ];
    if let Some(f) = flow_id {
        h.push((FLOW_ID_HEADER, f.to_string()));
    }
    h
}

fn as_pairs<'a>(h: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    h.iter().map(|(n, v)| (*n, v.as_str())).collect()
}

/// `depotctl ovf upload`: streams FILE, prints the Task-Id.
async fn upload(
    ep: &Endpoint,
    opts: Options,
    flow_id: Option<&str>,
    target: &OvfVolume,
    file: &Path,
) -> Result<(), Failure> {
    let cannot = |e: std::io::Error| Failure::Usage(format!("cannot read {}: {e}", file.display()));
    let f = tokio::fs::File::open(file).await.map_err(cannot)?;
    let meta = f.metadata().await.map_err(cannot)?;
    if !meta.is_file() {
        return Err(Failure::Usage(format!(
            "{} is not a regular file",
            file.display()
        )));
    }
    let client = Client::connect_with(ep, opts).await?;
    let headers = stream_headers(target, flow_id);
    let reply = client
        .put_stream(&as_pairs(&headers), meta.len(), f)
        .await?;
    let Some(task) = reply.task_id() else {
        return Err(ClientError::Protocol("PUT /: the answer has no Task-Id".into()).into());
    };
    println!("{task}");
    Ok(())
}

/// `depotctl ovf download`: bytes 0..size-1 of the volume into OUT.
async fn download(
    ep: &Endpoint,
    opts: Options,
    flow_id: Option<&str>,
    target: &OvfVolume,
    size: Option<u64>,
    out: &Path,
) -> Result<(), Failure> {
    let client = Client::connect_with(ep, opts).await?;
    let size = match size {
        Some(n) => n,
        None => {
            let sd = json!({"storagedomainID": target.domain.to_string()});
            let v = call(&client, flow_id, "StorageDomain.getOvfStores", sd).await?;
            let stores = parse_stores(&v).map_err(ClientError::Protocol)?;
            store_size(&stores, target)?
        }
    };
    let headers = stream_headers(target, flow_id);
    let headers = as_pairs(&headers);
    if out == Path::new("-") {
        let mut stdout = tokio::io::stdout();
        client.get_range(&headers, 0, size - 1, &mut stdout).await?;
        return Ok(());
    }
    // Into a file next to OUT, renamed over it once complete: a failed
    // download leaves OUT as it was.
    let part = part_path(out);
    let mut f = tokio::fs::File::create(&part)
        .await
        .map_err(|e| Failure::Usage(format!("cannot create {}: {e}", part.display())))?;
    let result = client.get_range(&headers, 0, size - 1, &mut f).await;
    drop(f);
    let done = match result {
        Ok(r) => tokio::fs::rename(&part, out)
            .await
            .map(|()| r)
            .map_err(|e| Failure::Usage(format!("cannot write {}: {e}", out.display()))),
        Err(e) => Err(e.into()),
    };
    match done {
        Ok(r) => {
            println!("{} bytes written to {}", r.bytes, out.display());
            Ok(())
        }
        Err(e) => {
            let _ = tokio::fs::remove_file(&part).await;
            Err(e)
        }
    }
}

/// `dir/.name.depotctl-<pid>.part` for `dir/name`.
fn part_path(out: &Path) -> PathBuf {
    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "download".into());
    out.with_file_name(format!(".{name}.depotctl-{}.part", std::process::id()))
}

/// The size of the store's content, for a download without `--size`.
fn store_size(stores: &[StoreRow], t: &OvfVolume) -> Result<u64, Failure> {
    let (img, vol) = (t.image.to_string(), t.volume.to_string());
    let Some(s) = stores.iter().find(|s| s.image == img && s.volume == vol) else {
        return Err(Failure::Failed(format!(
            "domain {} has no OVF_STORE volume {vol} in image {img}",
            t.domain
        )));
    };
    match s.size {
        Some(n) if n > 0 => Ok(n),
        _ => Err(Failure::Usage(format!(
            "the size of OVF_STORE {vol} is not known (state {}): give --size",
            s.state
        ))),
    }
}

/// One OVF_STORE, as StorageDomain.getOvfStores reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreRow {
    pub image: String,
    pub volume: String,
    pub state: String,
    pub size: Option<u64>,
    pub generation: Option<u64>,
    /// Unix seconds.
    pub updated: Option<u64>,
    /// Why a torn store is torn.
    pub reason: Option<String>,
}

/// A number, or a decimal string (VDSM sends sizes as strings).
fn u64_field(v: &Value, key: &str) -> Option<u64> {
    match v.get(key)? {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

fn str_field(v: &Value, key: &str) -> Option<String> {
    v.get(key).and_then(Value::as_str).map(str::to_string)
}

fn parse_store(v: &Value) -> Result<StoreRow, String> {
    let need = |key: &str| str_field(v, key).ok_or_else(|| format!("OVF store without {key}: {v}"));
    Ok(StoreRow {
        image: need("imageID")?,
        volume: need("volumeID")?,
        state: need("state")?,
        size: u64_field(v, "size"),
        generation: u64_field(v, "generation"),
        updated: u64_field(v, "updated"),
        reason: str_field(v, "reason"),
    })
}

/// StorageDomain.getOvfStores' result.
pub fn parse_stores(v: &Value) -> Result<Vec<StoreRow>, String> {
    let Value::Array(items) = v else {
        return Err(format!(
            "StorageDomain.getOvfStores returned {v}, not a list"
        ));
    };
    items.iter().map(parse_store).collect()
}

fn or_dash(v: Option<impl ToString>) -> String {
    v.map(|x| x.to_string()).unwrap_or_else(|| "-".into())
}

/// The stores as a table, sorted by image and volume id.
pub fn render_stores(stores: &[StoreRow]) -> String {
    if stores.is_empty() {
        return "no OVF stores\n".into();
    }
    let mut sorted: Vec<&StoreRow> = stores.iter().collect();
    sorted.sort_by(|a, b| (&a.image, &a.volume).cmp(&(&b.image, &b.volume)));
    let rows: Vec<Vec<String>> = sorted
        .iter()
        .map(|s| {
            vec![
                s.image.clone(),
                s.volume.clone(),
                s.state.clone(),
                or_dash(s.size),
                or_dash(s.generation),
                or_dash(s.updated.map(format_time)),
                s.reason.clone().unwrap_or_default(),
            ]
        })
        .collect();
    table(&STORE_HEADER, &rows)
}

/// One VM or template of the best store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntityRow {
    pub id: String,
    pub name: Option<String>,
    pub kind: Option<String>,
    /// Image id, volume id, present on the domain.
    pub images: Vec<(String, String, bool)>,
    pub complete: bool,
}

/// StorageDomain.getOvfEntities' result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntitiesView {
    pub store: StoreRow,
    pub entities: Vec<EntityRow>,
    /// Archive entries that could not be read, and why.
    pub errors: Vec<(String, String)>,
}

pub fn parse_entities(v: &Value) -> Result<EntitiesView, String> {
    let bad = || format!("StorageDomain.getOvfEntities returned an unexpected shape: {v}");
    let store = parse_store(v.get("store").ok_or_else(bad)?)?;
    let mut entities = Vec::new();
    for e in v
        .get("entities")
        .and_then(Value::as_array)
        .ok_or_else(bad)?
    {
        let images: Vec<(String, String, bool)> = e
            .get("images")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or_default()
            .iter()
            .map(|i| {
                (
                    str_field(i, "imageID").unwrap_or_default(),
                    str_field(i, "volumeID").unwrap_or_default(),
                    i.get("present").and_then(Value::as_bool).unwrap_or(false),
                )
            })
            .collect();
        let complete = e
            .get("complete")
            .and_then(Value::as_bool)
            .unwrap_or_else(|| images.iter().all(|i| i.2));
        entities.push(EntityRow {
            id: str_field(e, "id").ok_or_else(bad)?,
            name: str_field(e, "name"),
            kind: str_field(e, "type"),
            images,
            complete,
        });
    }
    let errors = v
        .get("errors")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|x| {
            (
                str_field(x, "entry").unwrap_or_default(),
                str_field(x, "error").unwrap_or_default(),
            )
        })
        .collect();
    Ok(EntitiesView {
        store,
        entities,
        errors,
    })
}

/// Which store, then the entities as a table (templates first, then by
/// name), then each missing image and each unreadable entry.
pub fn render_entities(view: &EntitiesView) -> String {
    let s = &view.store;
    let mut out = format!(
        "OVF_STORE {}/{} (generation {}):\n",
        s.image,
        s.volume,
        or_dash(s.generation)
    );
    let mut sorted: Vec<&EntityRow> = view.entities.iter().collect();
    sorted.sort_by(|a, b| {
        let key = |e: &&EntityRow| {
            (
                e.kind.as_deref() != Some("TEMPLATE"),
                e.name.clone(),
                e.id.clone(),
            )
        };
        key(a).cmp(&key(b))
    });
    if sorted.is_empty() {
        out.push_str("no VMs or templates\n");
    } else {
        let rows: Vec<Vec<String>> = sorted
            .iter()
            .map(|e| {
                let present = e.images.iter().filter(|i| i.2).count();
                vec![
                    e.id.clone(),
                    or_dash(e.name.as_deref()),
                    or_dash(e.kind.as_deref()),
                    format!("{present}/{}", e.images.len()),
                    if e.complete { "yes" } else { "no" }.into(),
                ]
            })
            .collect();
        out.push_str(&table(&ENTITY_HEADER, &rows));
    }
    for e in &sorted {
        for (img, vol, present) in &e.images {
            if !present {
                out.push_str(&format!(
                    "{} ({}): missing image {img}/{vol}\n",
                    or_dash(e.name.as_deref()),
                    e.id
                ));
            }
        }
    }
    for (entry, why) in &view.errors {
        out.push_str(&format!("unreadable entry {entry}: {why}\n"));
    }
    out
}

/// Columns padded to their widest cell, two spaces apart; the last column
/// is not padded, and lines carry no trailing spaces.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let header: Vec<String> = header.iter().map(|h| h.to_string()).collect();
    let all = || std::iter::once(&header).chain(rows);
    let mut widths = vec![0usize; header.len()];
    for r in all() {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    for r in all() {
        let mut line = String::new();
        for (i, c) in r.iter().enumerate() {
            if i > 0 {
                line.push_str("  ");
            }
            line.push_str(c);
            if i + 1 < r.len() {
                line.push_str(&" ".repeat(widths[i].saturating_sub(c.chars().count())));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// Unix seconds as RFC 3339 UTC: `2023-11-14T22:13:20Z`.
pub fn format_time(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const IMG: &str = "a7229705-8e72-4415-9e02-eff0bc0af659";
    const VOL: &str = "f4eb36cd-c58f-4e77-ba70-a85178352c9e";
    const IMG2: &str = "0b3a6c1e-2f4d-4e5a-8b7c-9d0e1f2a3b4c";
    const VOL2: &str = "1a2b3c4d-5e6f-4a0b-9c1d-2e3f4a5b6c7d";
    const VM: &str = "ec1b852d-2a29-47e7-bd79-8b86b21da441";
    const TPL: &str = "a7d3f1e2-5b6c-4d8e-9f0a-1b2c3d4e5f60";

    fn stores_json() -> Value {
        json!([
            {"imageID": IMG, "volumeID": VOL, "state": "valid", "valid": true, "size": 10240,
             "generation": 3, "sha256": "6ebf", "updated": 1_700_000_000u64,
             "description": "OVF_STORE"},
            {"imageID": IMG2, "volumeID": VOL2, "state": "torn", "valid": false,
             "size": "20480", "reason": "trailer checksum mismatch", "description": "OVF_STORE"},
            {"imageID": IMG2, "volumeID": VOL, "state": "unknown", "valid": false,
             "size": null, "description": "OVF_STORE"},
        ])
    }

    #[test]
    fn times() {
        assert_eq!(format_time(0), "1970-01-01T00:00:00Z");
        assert_eq!(format_time(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(format_time(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(format_time(951_868_799), "2000-02-29T23:59:59Z");
        assert_eq!(format_time(4_102_444_800), "2100-01-01T00:00:00Z");
    }

    #[test]
    fn stores_table() {
        let stores = parse_stores(&stores_json()).unwrap();
        assert_eq!(stores[1].size, Some(20480), "sizes as strings too");
        let want = format!(
            "\
IMAGE ID                              VOLUME ID                             STATE    SIZE   GENERATION  UPDATED               NOTE
{IMG2}  {VOL2}  torn     20480  -           -                     trailer checksum mismatch
{IMG2}  {VOL}  unknown  -      -           -
{IMG}  {VOL}  valid    10240  3           2023-11-14T22:13:20Z
"
        );
        assert_eq!(render_stores(&stores), want);
        assert_eq!(render_stores(&[]), "no OVF stores\n");
        assert!(parse_stores(&json!({})).is_err());
        assert!(parse_stores(&json!([{"imageID": IMG}])).is_err());
    }

    #[test]
    fn entities_table() {
        let v = json!({
            "store": stores_json()[0].clone(),
            "entities": [
                {"id": VM, "name": "myvm", "type": "VM", "complete": true,
                 "images": [{"imageID": IMG, "volumeID": VOL, "present": true}]},
                {"id": TPL, "name": "base-template", "type": "TEMPLATE", "complete": false,
                 "images": [{"imageID": IMG, "volumeID": VOL, "present": true},
                            {"imageID": IMG2, "volumeID": VOL2, "present": false}]},
            ],
            "errors": [{"entry": "bad.ovf", "error": "not XML"}],
        });
        let view = parse_entities(&v).unwrap();
        let want = format!(
            "\
OVF_STORE {IMG}/{VOL} (generation 3):
ENTITY ID                             NAME           TYPE      IMAGES  COMPLETE
{TPL}  base-template  TEMPLATE  1/2     no
{VM}  myvm           VM        1/1     yes
base-template ({TPL}): missing image {IMG2}/{VOL2}
unreadable entry bad.ovf: not XML
"
        );
        assert_eq!(render_entities(&view), want);

        let empty = json!({"store": stores_json()[0].clone(), "entities": [], "errors": []});
        assert_eq!(
            render_entities(&parse_entities(&empty).unwrap()),
            format!("OVF_STORE {IMG}/{VOL} (generation 3):\nno VMs or templates\n")
        );
        assert!(parse_entities(&json!({"entities": []})).is_err());
    }

    #[test]
    fn plain_tables() {
        let rows = vec![
            vec!["a".to_string(), "long cell".into(), "x".into()],
            vec!["bbb".to_string(), "".into(), "".into()],
        ];
        assert_eq!(
            table(&["H1", "H2", "LAST"], &rows),
            "H1   H2         LAST\na    long cell  x\nbbb\n"
        );
    }

    fn target() -> OvfVolume {
        OvfVolume {
            pool: "5c1b1f0e-7a8d-4c1e-9b0a-3f2e1d0c9b8a".parse().unwrap(),
            domain: "75f8a1bb-4504-4314-91ca-d9365a30692b".parse().unwrap(),
            image: IMG.parse().unwrap(),
            volume: VOL.parse().unwrap(),
        }
    }

    #[test]
    fn headers_name_the_volume() {
        let h = stream_headers(&target(), Some("flow-1"));
        let names: Vec<&str> = h.iter().map(|(n, _)| *n).collect();
        assert_eq!(
            names,
            [
                "Storage-Pool-Id",
                "Storage-Domain-Id",
                "Image-Id",
                "Volume-Id",
                FLOW_ID_HEADER
            ]
        );
        assert_eq!((h[2].1.as_str(), h[3].1.as_str()), (IMG, VOL));
        assert_eq!(stream_headers(&target(), None).len(), 4);
    }

    #[test]
    fn download_size_from_the_store_list() {
        let stores = parse_stores(&stores_json()).unwrap();
        assert_eq!(store_size(&stores, &target()).ok(), Some(10240));
        // Unknown size: --size is needed.
        let t = OvfVolume {
            image: IMG2.parse().unwrap(),
            ..target()
        };
        assert!(matches!(store_size(&stores, &t), Err(Failure::Usage(m)) if m.contains("--size")));
        // Not a store of the domain.
        let t = OvfVolume {
            volume: VOL2.parse().unwrap(),
            ..target()
        };
        assert!(matches!(store_size(&stores, &t), Err(Failure::Failed(_))));
    }

    #[test]
    fn part_files_sit_next_to_the_output() {
        let p = part_path(Path::new("/tmp/x/out.tar"));
        assert_eq!(p.parent(), Some(Path::new("/tmp/x")));
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        assert!(
            name.starts_with(".out.tar.depotctl-") && name.ends_with(".part"),
            "{name}"
        );
        assert_eq!(part_path(Path::new("o")).parent(), Some(Path::new("")));
    }
}
