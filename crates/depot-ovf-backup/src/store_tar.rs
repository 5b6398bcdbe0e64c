//! OVF_STORE archives depot writes itself (the mirror's, a restore's),
//! and their way into a store: the storage's upload path, with its checks
//! and its trailer.

use std::collections::HashMap;

use depot_api::storage::{ImgUuid, SdUuid, VolUuid};
use depot_ovf_archive::now_secs;
use depot_storage::{Storage, StorageResult, UploadDone};
use uuid::Uuid;

/// An OVF_STORE archive as the engine writes one: `info.json` (its "Last
/// Updated" and "Storage Domains", and `extra`), then one `<id>.ovf` per
/// entity (the last of an id wins, as the engine's reader does).
pub(crate) fn build_tar(
    sd: SdUuid,
    extra: Option<(&str, serde_json::Value)>,
    entities: &[(Uuid, String)],
) -> std::io::Result<Vec<u8>> {
    let mut json = serde_json::json!({
        "Last Updated": now_secs().to_string(),
        "Storage Domains": [{"uuid": sd.0.to_string()}],
    });
    if let (Some((k, v)), Some(m)) = (extra, json.as_object_mut()) {
        m.insert(k.to_string(), v);
    }
    let mut last: HashMap<Uuid, usize> = HashMap::new();
    for (i, (id, _)) in entities.iter().enumerate() {
        last.insert(*id, i);
    }
    let mut out = Vec::new();
    {
        let mut b = tar::Builder::new(&mut out);
        append(&mut b, "info.json", json.to_string().as_bytes())?;
        for (i, (id, text)) in entities.iter().enumerate() {
            if last.get(id) == Some(&i) {
                append(&mut b, &format!("{id}.ovf"), text.as_bytes())?;
            }
        }
        b.finish()?;
    }
    Ok(out)
}

fn append(b: &mut tar::Builder<&mut Vec<u8>>, name: &str, data: &[u8]) -> std::io::Result<()> {
    let mut h = tar::Header::new_ustar();
    h.set_path(name)?;
    h.set_size(data.len() as u64);
    h.set_mode(0o644);
    h.set_mtime(now_secs());
    h.set_entry_type(tar::EntryType::Regular);
    h.set_cksum();
    b.append(&h, data)
}

/// Writes `tar` into OVF_STORE `vol` through the upload path.
pub(crate) fn upload(
    storage: &Storage,
    sd: SdUuid,
    img: ImgUuid,
    vol: VolUuid,
    tar: &[u8],
) -> StorageResult<UploadDone> {
    let mut at = 0usize;
    let mut source = |buf: &mut [u8]| -> std::io::Result<usize> {
        let n = buf.len().min(tar.len() - at);
        buf[..n].copy_from_slice(&tar[at..at + n]);
        at += n;
        Ok(n)
    };
    storage.ovf_upload(sd, img, vol, tar.len() as u64, &mut source)
}
