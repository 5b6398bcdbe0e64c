//! The VMs and templates of an OVF_STORE, from the engine's OVF XML.
//!
//! What is recognised (the engine's "ovirt" OVF, as its OVF writers produce
//! it and its OVF_STORE reader reads it; docs/formats.md):
//!
//! - the entity id is the entry's file name, `<id>.ovf` (the `Content`
//!   element's `ovf:id` is the constant `out`);
//! - the name is the text of `Content/Name`;
//! - the kind is Template when the OVF has a `TemplateType` element
//!   (written for templates only; VMs also carry `TemplateId`, naming
//!   their template, so that is no marker), VM otherwise;
//! - the disk images are the `ovf:fileRef="<imgUUID>/<volUUID>"` attributes
//!   of the `Disk` elements of the `Section xsi:type="ovf:DiskSection_Type"`
//!   (one per volume of each disk); a `fileRef` that is not two UUIDs (a
//!   LUN disk) is skipped.
//!
//! The parser is XXE-safe by construction: any `<!DOCTYPE` is refused (so
//! no DTD, no entity definitions, no external references, no entity
//! expansion bomb), and any entity reference other than the five XML
//! predefined ones (`&lt; &gt; &amp; &apos; &quot;`) and character
//! references is refused, in text and in attribute values. Each OVF is read
//! into memory up to [`MAX_OVF_SIZE`]; nesting is limited to [`MAX_DEPTH`].

use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};
use std::io::Read;

use depot_api::storage::{ImgUuid, VolUuid};
use depot_api::types::Uuid;
use quick_xml::events::{BytesDecl, BytesRef, BytesStart, Event};
use quick_xml::reader::Reader;
use quick_xml::XmlVersion;

use super::tar_check::{ArchiveSummary, TarEvent, TarValidator};
use super::OvfError;

/// The largest OVF entry read into memory.
pub const MAX_OVF_SIZE: u64 = 16 << 20;
/// The largest `info.json` / `metadata.json` read into memory.
pub const MAX_JSON_SIZE: u64 = 16 << 20;
/// The deepest element nesting accepted.
pub const MAX_DEPTH: usize = 128;

/// A VM or a template: the wire's type, shared with the OVF backup.
pub use depot_api::storage::EntityKind;

/// One VM or template of a store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OvfEntity {
    pub id: Uuid,
    pub name: String,
    pub kind: EntityKind,
    /// The volumes its disks use, `(image, volume)`, in document order,
    /// without duplicates.
    pub images: Vec<(ImgUuid, VolUuid)>,
}

/// What a stored archive holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoreContents {
    pub entities: Vec<OvfEntity>,
    pub info_json: Option<String>,
    pub metadata_json: Option<String>,
    /// OVF entries that could not be used, with the reason (e.g. a DTD):
    /// a store written before depot validated uploads may hold them.
    pub errors: Vec<(String, String)>,
    pub summary: ArchiveSummary,
}

/// Parses one OVF. `id` is the entity id (from the entry name).
pub fn parse_ovf(id: Uuid, xml: &[u8]) -> Result<OvfEntity, OvfError> {
    let bad = |reason: String| OvfError::Ovf {
        entry: format!("{id}.ovf"),
        reason,
    };
    let text = std::str::from_utf8(xml).map_err(|e| bad(format!("not UTF-8: {e}")))?;
    let mut reader = Reader::from_str(text);
    reader.config_mut().check_end_names = true;
    let mut scan = OvfScan::default();
    loop {
        let ev = reader.read_event().map_err(|e| {
            bad(format!(
                "malformed XML at byte {}: {e}",
                reader.error_position()
            ))
        })?;
        if !scan.event(ev).map_err(&bad)? {
            break;
        }
    }
    scan.finish(id).map_err(bad)
}

/// What [`parse_ovf`] has seen of one OVF so far.
#[derive(Default)]
struct OvfScan {
    /// Per open element: whether it is `Content`. Depths count from 1.
    stack: Vec<bool>,
    root_seen: bool,
    name: Option<String>,
    /// Depth of the Content/Name element while its text is collected.
    name_depth: Option<usize>,
    name_buf: String,
    template: bool,
    disk_section: Option<usize>,
    images: Vec<(ImgUuid, VolUuid)>,
    /// The pairs in `images`, for deduplication: a set, as an OVF may list
    /// any number of disks (a search of `images` was quadratic).
    seen: HashSet<(ImgUuid, VolUuid)>,
}

impl OvfScan {
    /// Takes one event; false at the end of the document.
    fn event(&mut self, ev: Event<'_>) -> Result<bool, String> {
        match ev {
            Event::DocType(_) => {
                return Err("DOCTYPE declarations (DTDs, entity definitions) are refused".into())
            }
            Event::Decl(d) => check_decl(&d)?,
            Event::Start(ref e) => self.start(e, false)?,
            Event::Empty(ref e) => self.start(e, true)?,
            Event::End(_) => self.end(),
            Event::Text(t) => {
                if self.name_depth.is_some() {
                    let s = t.xml10_content().map_err(|e| format!("bad text: {e}"))?;
                    self.name_buf.push_str(&s);
                }
            }
            Event::CData(c) => {
                if self.name_depth.is_some() {
                    let s = c.decode().map_err(|e| format!("bad CDATA: {e}"))?;
                    self.name_buf.push_str(&s);
                }
            }
            Event::GeneralRef(r) => {
                let ch = general_ref(&r)?;
                if let (Some(c), Some(_)) = (ch, self.name_depth) {
                    self.name_buf.push(c);
                }
            }
            Event::Comment(_) | Event::PI(_) => {}
            Event::Eof => return Ok(false),
        }
        Ok(true)
    }

    /// An element opens (`empty`: and closes at once).
    fn start(&mut self, e: &BytesStart<'_>, empty: bool) -> Result<(), String> {
        let local_name = e.local_name();
        let local = local_name.as_ref();
        check_attributes(e)?;
        if self.stack.is_empty() {
            if self.root_seen {
                return Err("more than one root element".into());
            }
            self.root_seen = true;
            if local != b"Envelope" {
                return Err(format!(
                    "the root element is <{}>, not ovf:Envelope",
                    String::from_utf8_lossy(local)
                ));
            }
        }
        if self.stack.len() >= MAX_DEPTH {
            return Err(format!("elements nested deeper than {MAX_DEPTH}"));
        }
        let in_content = self.stack.last() == Some(&true);
        let depth = self.stack.len() + 1;
        match local {
            b"Name" if in_content && self.name.is_none() => {
                if empty {
                    self.name = Some(String::new());
                } else {
                    self.name_depth = Some(depth);
                    self.name_buf.clear();
                }
            }
            b"TemplateType" => self.template = true,
            b"DiskSection" if self.disk_section.is_none() && !empty => {
                self.disk_section = Some(depth);
            }
            b"Section" if self.disk_section.is_none() && !empty && is_disk_section(e) => {
                self.disk_section = Some(depth);
            }
            b"Disk" if self.disk_section == Some(self.stack.len()) => {
                if let Some(pair) = file_ref(e) {
                    if self.seen.insert(pair) {
                        self.images.push(pair);
                    }
                }
            }
            _ => {}
        }
        if !empty {
            self.stack.push(local == b"Content");
        }
        Ok(())
    }

    fn end(&mut self) {
        let depth = self.stack.len();
        self.stack.pop();
        if self.name_depth == Some(depth) {
            self.name = Some(std::mem::take(&mut self.name_buf));
            self.name_depth = None;
        }
        if self.disk_section == Some(depth) {
            self.disk_section = None;
        }
    }

    fn finish(self, id: Uuid) -> Result<OvfEntity, String> {
        if !self.root_seen {
            return Err("no root element".into());
        }
        if !self.stack.is_empty() {
            return Err(format!("{} elements are not closed", self.stack.len()));
        }
        Ok(OvfEntity {
            id,
            name: self.name.unwrap_or_default(),
            kind: if self.template {
                EntityKind::Template
            } else {
                EntityKind::Vm
            },
            images: self.images,
        })
    }
}

/// The XML declaration may name no encoding but UTF-8.
fn check_decl(d: &BytesDecl<'_>) -> Result<(), String> {
    if let Some(enc) = d.encoding() {
        let enc = enc.map_err(|e| format!("bad XML declaration: {e}"))?;
        if !enc.eq_ignore_ascii_case(b"utf-8") {
            return Err(format!(
                "encoding {:?} (only UTF-8 is accepted)",
                String::from_utf8_lossy(&enc)
            ));
        }
    }
    Ok(())
}

/// The character of a reference in text: a character reference, or one of
/// the five predefined entities; any other entity is refused.
fn general_ref(r: &BytesRef<'_>) -> Result<Option<char>, String> {
    if r.is_char_ref() {
        return r
            .resolve_char_ref()
            .map_err(|e| format!("bad character reference: {e}"));
    }
    Ok(match &**r {
        b"lt" => Some('<'),
        b"gt" => Some('>'),
        b"amp" => Some('&'),
        b"apos" => Some('\''),
        b"quot" => Some('"'),
        other => {
            return Err(format!(
                "entity reference &{}; refused (only the five predefined XML \
                 entities are allowed)",
                super::shorten(&String::from_utf8_lossy(other))
            ))
        }
    })
}

/// A value holding a reference may use only the predefined entities and
/// character references. The attributes of an element whose attribute text
/// holds no `&` at all are not parsed here (the fast path: an OVF has tens
/// of thousands); those depot reads are parsed where they are read.
fn check_attributes(e: &BytesStart<'_>) -> Result<(), String> {
    if !e.attributes_raw().contains(&b'&') {
        return Ok(());
    }
    for a in e.attributes() {
        let a = a.map_err(|err| format!("bad attribute: {err}"))?;
        if a.value.contains(&b'&') {
            a.normalized_value(XmlVersion::Implicit1_0).map_err(|err| {
                format!(
                    "attribute {}: {err} (only the five predefined XML entities are allowed)",
                    String::from_utf8_lossy(a.key.as_ref())
                )
            })?;
        }
    }
    Ok(())
}

/// The value of the attribute with this prefix (None: any prefix) and
/// local name.
fn attribute(e: &BytesStart<'_>, prefix: Option<&[u8]>, local: &[u8]) -> Option<String> {
    e.attributes().flatten().find_map(|a| {
        let ok_prefix = match prefix {
            Some(p) => a.key.prefix().is_some_and(|kp| kp.as_ref() == p),
            None => true,
        };
        if ok_prefix && a.key.local_name().as_ref() == local {
            a.normalized_value(XmlVersion::Implicit1_0)
                .ok()
                .map(|v| v.into_owned())
        } else {
            None
        }
    })
}

/// `Section xsi:type="ovf:DiskSection_Type"` (any prefix on the value).
fn is_disk_section(e: &BytesStart<'_>) -> bool {
    attribute(e, Some(b"xsi"), b"type")
        .is_some_and(|t| t.rsplit(':').next() == Some("DiskSection_Type"))
}

/// The `(image, volume)` of a `Disk`'s `fileRef`, `None` if it has none or
/// it is not two UUIDs (LUN disks).
fn file_ref(e: &BytesStart<'_>) -> Option<(ImgUuid, VolUuid)> {
    let v = attribute(e, None, b"fileRef")?;
    let (img, vol) = v.split_once('/')?;
    Some((img.parse().ok()?, vol.parse().ok()?))
}

/// What [`walk_store`] calls with each entry's name and content.
pub type EntryVisitor<'a> = dyn FnMut(&str, &[u8]) -> Result<(), OvfError> + 'a;

/// Reads an archive of `content_length` bytes from `reader`, validating it
/// as an upload is validated, and hands each entry's name and content to
/// `visit`. Memory: one entry at a time, at most [`MAX_OVF_SIZE`] or
/// [`MAX_JSON_SIZE`].
pub fn walk_store(
    reader: impl Read,
    content_length: u64,
    visit: &mut EntryVisitor<'_>,
) -> Result<ArchiveSummary, OvfError> {
    let mut validator = TarValidator::new(content_length)?;
    let mut reader = reader.take(content_length);
    let mut buf = vec![0u8; 64 * 1024];
    let mut collector = Collector::new();
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                let at = validator.position();
                return Err(match e.downcast::<OvfError>() {
                    Ok(inner) => inner,
                    Err(source) => OvfError::Stream { at, source },
                });
            }
        };
        validator.feed_with(&buf[..n], &mut |ev| collector.on_event(ev, visit))?;
    }
    validator.finish()
}

/// Gathers the content of each entry (one at a time, within the size caps)
/// from [`TarEvent`]s and hands complete entries to a visitor.
pub(crate) struct Collector {
    name: Option<String>,
    data: Vec<u8>,
}

impl Collector {
    pub(crate) fn new() -> Self {
        Collector {
            name: None,
            data: Vec::new(),
        }
    }

    pub(crate) fn on_event(
        &mut self,
        ev: TarEvent<'_>,
        visit: &mut EntryVisitor<'_>,
    ) -> Result<(), OvfError> {
        match ev {
            TarEvent::Start { name, size, offset } => {
                let ovf = name.ends_with(".ovf");
                let cap = if ovf { MAX_OVF_SIZE } else { MAX_JSON_SIZE };
                if size > cap {
                    return Err(OvfError::archive(
                        offset,
                        Some(name),
                        format!("{size} bytes, more than the {cap} bytes depot reads"),
                    ));
                }
                self.name = Some(name.to_string());
                self.data.clear();
                self.data.reserve(size as usize);
            }
            TarEvent::Data(d) => {
                if self.name.is_some() {
                    self.data.extend_from_slice(d);
                }
            }
            TarEvent::End => {
                if let Some(name) = self.name.take() {
                    visit(&name, &self.data)?;
                }
            }
        }
        Ok(())
    }
}

/// The entity id of an `<id>.ovf` entry name.
fn entry_id(name: &str) -> Option<Uuid> {
    name.strip_suffix(".ovf")?.parse().ok()
}

/// Reads a stored archive: its entities (a later entry with the same id
/// replaces an earlier one), `info.json` and `metadata.json`. An OVF that
/// cannot be parsed is listed in `errors`; a malformed archive is an error.
pub fn parse_store(reader: impl Read, content_length: u64) -> Result<StoreContents, OvfError> {
    let mut out = StoreContents::default();
    // Where each id is in `out.entities`: a store holds tens of thousands
    // of entities, and a search of the list for each was quadratic.
    let mut index: HashMap<Uuid, usize> = HashMap::new();
    let summary = walk_store(reader, content_length, &mut |name, data| {
        if let Some(id) = entry_id(name) {
            match parse_ovf(id, data) {
                Ok(ent) => match index.entry(ent.id) {
                    Entry::Occupied(at) => out.entities[*at.get()] = ent,
                    Entry::Vacant(slot) => {
                        slot.insert(out.entities.len());
                        out.entities.push(ent);
                    }
                },
                Err(e) => out.errors.push((name.to_string(), e.to_string())),
            }
        } else {
            match String::from_utf8(data.to_vec()) {
                Ok(s) if name == "info.json" => out.info_json = Some(s),
                Ok(s) => out.metadata_json = Some(s),
                Err(_) => out
                    .errors
                    .push((name.to_string(), "not valid UTF-8".to_string())),
            }
        }
        Ok(())
    })?;
    out.summary = summary;
    Ok(out)
}

/// Checks an archive as an upload is checked: the tar rules, and every OVF
/// with [`xml_check`](super::xml_check) (no DTD, no entity, well-formed).
/// The first bad OVF is the error.
pub fn check_store(reader: impl Read, content_length: u64) -> Result<ArchiveSummary, OvfError> {
    walk_store(reader, content_length, &mut |name, data| {
        if name.ends_with(".ovf") {
            super::xml_check::check(data).map_err(|reason| OvfError::Ovf {
                entry: super::shorten(name),
                reason,
            })?;
        }
        Ok(())
    })
}

/// The OVF text of entity `id` in a stored archive (the last entry of that
/// name), `None` if it has none.
pub fn read_entity_ovf(
    reader: impl Read,
    content_length: u64,
    id: Uuid,
) -> Result<Option<String>, OvfError> {
    let want = format!("{id}.ovf");
    let mut found = None;
    walk_store(reader, content_length, &mut |name, data| {
        if name == want {
            let text = String::from_utf8(data.to_vec()).map_err(|_| OvfError::Ovf {
                entry: want.clone(),
                reason: "not UTF-8".into(),
            })?;
            found = Some(text);
        }
        Ok(())
    })?;
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ovf::tests_common::*;

    fn id(s: &str) -> Uuid {
        s.parse().unwrap()
    }

    #[test]
    fn parses_a_vm() {
        let vm = vm_ovf(
            VM_ID,
            "web &amp; db",
            &[(IMG1, VOL1), (IMG1, VOL2), (IMG2, VOL3)],
        );
        let e = parse_ovf(id(VM_ID), vm.as_bytes()).unwrap();
        assert_eq!(e.id.to_string(), VM_ID);
        assert_eq!(e.name, "web & db");
        assert_eq!(e.kind, EntityKind::Vm);
        let imgs: Vec<(String, String)> = e
            .images
            .iter()
            .map(|(i, v)| (i.to_string(), v.to_string()))
            .collect();
        assert_eq!(
            imgs,
            vec![
                (IMG1.into(), VOL1.into()),
                (IMG1.into(), VOL2.into()),
                (IMG2.into(), VOL3.into())
            ]
        );
    }

    #[test]
    fn parses_a_template() {
        let t = template_ovf(TPL_ID, "rhel9-base", &[(IMG2, VOL3)]);
        let e = parse_ovf(id(TPL_ID), t.as_bytes()).unwrap();
        assert_eq!(e.kind, EntityKind::Template);
        assert_eq!(e.kind.as_str(), "TEMPLATE");
        assert_eq!(e.name, "rhel9-base");
        assert_eq!(e.images.len(), 1);
    }

    #[test]
    fn vm_without_disks_and_lun_disks() {
        let vm = vm_ovf(VM_ID, "diskless", &[]);
        let e = parse_ovf(id(VM_ID), vm.as_bytes()).unwrap();
        assert!(e.images.is_empty());
        let lun = vm.replace(
            "<Info>List of Virtual Disks</Info>",
            "<Info>List of Virtual Disks</Info><Disk ovf:diskId=\"x\" ovf:fileRef=\"/dev/mapper/36001405abc\"/>",
        );
        let e = parse_ovf(id(VM_ID), lun.as_bytes()).unwrap();
        assert!(e.images.is_empty());
    }

    #[test]
    fn rasd_name_is_not_the_entity_name() {
        // Only Content/Name counts, not rasd:Name of a NIC or Name elsewhere.
        let vm =
            vm_ovf(VM_ID, "real", &[]).replace("<References>", "<References><Name>decoy</Name>");
        assert_eq!(parse_ovf(id(VM_ID), vm.as_bytes()).unwrap().name, "real");
    }

    #[test]
    fn doctype_and_entities_are_refused() {
        for (what, xml) in [
            ("xxe", XXE_OVF.to_string()),
            ("bomb", BOMB_OVF.to_string()),
            ("undeclared entity in text", vm_ovf(VM_ID, "&xxe;", &[])),
            (
                "entity in attribute",
                vm_ovf(VM_ID, "x", &[]).replace("ovf:id=\"out\"", "ovf:id=\"&xxe;\""),
            ),
        ] {
            let e = parse_ovf(id(VM_ID), xml.as_bytes()).unwrap_err();
            let msg = e.to_string();
            assert!(
                msg.contains("DOCTYPE") || msg.contains("entit"),
                "{what}: {msg}"
            );
            assert!(msg.contains(&format!("{VM_ID}.ovf")), "{what}: {msg}");
            assert_eq!(e.code(), depot_api::Code::InvalidParameterException);
        }
    }

    #[test]
    fn malformed_xml_is_refused() {
        for xml in [
            "<ovf:Envelope><Content>",
            "<ovf:Envelope></Content>",
            "not xml at all",
            "<Other/>",
            "<?xml version=\"1.0\" encoding=\"ISO-8859-1\"?><ovf:Envelope/>",
            "<ovf:Envelope/><ovf:Envelope/>",
        ] {
            assert!(parse_ovf(id(VM_ID), xml.as_bytes()).is_err(), "{xml}");
        }
        assert!(parse_ovf(id(VM_ID), b"\xff\xfe<x/>").is_err());
        let deep = format!(
            "<ovf:Envelope>{}{}</ovf:Envelope>",
            "<a>".repeat(200),
            "</a>".repeat(200)
        );
        assert!(parse_ovf(id(VM_ID), deep.as_bytes())
            .unwrap_err()
            .to_string()
            .contains("nested"));
    }

    #[test]
    fn parse_store_of_an_engine_tar() {
        let (tar, ids) = engine_tar(3);
        let c = parse_store(&tar[..], tar.len() as u64).unwrap();
        assert_eq!(c.entities.len(), 3);
        assert!(c.errors.is_empty(), "{:?}", c.errors);
        let got: Vec<String> = c.entities.iter().map(|e| e.id.to_string()).collect();
        assert_eq!(got, ids);
        assert_eq!(c.entities[0].kind, EntityKind::Template);
        assert_eq!(c.entities[1].kind, EntityKind::Vm);
        assert!(c.info_json.unwrap().contains("Last Updated"));
        assert!(c.metadata_json.unwrap().contains("VM Status"));
        assert_eq!(c.summary.entries.len(), 5);
        check_store(&tar[..], tar.len() as u64).unwrap();

        let text = read_entity_ovf(&tar[..], tar.len() as u64, id(&ids[1]))
            .unwrap()
            .unwrap();
        assert!(text.contains("<Name>vm-1</Name>"), "{text}");
        assert_eq!(
            read_entity_ovf(&tar[..], tar.len() as u64, id(VOL1)).unwrap(),
            None
        );
    }

    #[test]
    fn parse_store_lists_bad_ovfs_and_check_store_refuses_them() {
        let mut tar = Vec::new();
        {
            let mut b = tar::Builder::new(&mut tar);
            append(&mut b, "info.json", info_json().as_bytes());
            append(&mut b, &format!("{VM_ID}.ovf"), XXE_OVF.as_bytes());
            append(
                &mut b,
                &format!("{TPL_ID}.ovf"),
                template_ovf(TPL_ID, "t", &[]).as_bytes(),
            );
            b.finish().unwrap();
        }
        let c = parse_store(&tar[..], tar.len() as u64).unwrap();
        assert_eq!(c.entities.len(), 1);
        assert_eq!(c.errors.len(), 1);
        assert!(c.errors[0].1.contains("DOCTYPE"), "{:?}", c.errors);
        let e = check_store(&tar[..], tar.len() as u64).unwrap_err();
        assert!(e.to_string().contains("DOCTYPE"), "{e}");
    }

    /// CPU time of this thread: unlike wall time, not stretched by the
    /// other builds on the machine.
    fn thread_cpu() -> std::time::Duration {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: clock_gettime writes the timespec it is given.
        let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
        assert_eq!(rc, 0);
        std::time::Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
    }

    /// A distinct (image, volume) pair for each i.
    fn pair(i: usize) -> (String, String) {
        (
            format!("{i:08x}-0000-4000-8000-000000000001"),
            format!("{i:08x}-0000-4000-8000-000000000002"),
        )
    }

    /// The disks of an OVF are deduplicated with a set: 80,000 distinct
    /// disks (7.5 MiB) take about 2 s of CPU in a debug build; comparing
    /// each with every earlier one (3.2 billion comparisons) took 36 s. A
    /// generous bound on this thread's CPU time.
    #[test]
    fn many_disks_are_read_in_linear_time() {
        let n = 80_000;
        let disks: String = (0..n)
            .map(|i| {
                let (img, vol) = pair(i);
                format!("<Disk ovf:fileRef=\"{img}/{vol}\"/>")
            })
            .collect();
        let xml = format!(
            "<ovf:Envelope><Section xsi:type=\"ovf:DiskSection_Type\">{disks}\
             <Disk ovf:fileRef=\"{}/{}\"/></Section></ovf:Envelope>",
            pair(7).0,
            pair(7).1
        );
        let start = thread_cpu();
        let e = parse_ovf(id(VM_ID), xml.as_bytes()).unwrap();
        let spent = thread_cpu() - start;
        assert_eq!(e.images.len(), n, "the repeated disk is listed once");
        assert_eq!(e.images[7].0.to_string(), pair(7).0, "in document order");
        assert!(spent.as_secs_f64() < 10.0, "{spent:?} of CPU");
    }

    /// A later entry with the same id replaces the earlier one, found
    /// through an index: 64,000 OVF entries (64 MiB) take about 3 s of CPU
    /// in a debug build; a search of the list for each (2 billion
    /// comparisons) took 20 s. A generous bound on CPU time.
    #[test]
    fn many_entries_are_read_in_linear_time() {
        let n = 64_000;
        let mut tar = Vec::new();
        {
            let mut b = tar::Builder::new(&mut tar);
            for i in 0..n {
                append(&mut b, &format!("{}.ovf", pair(i).0), b"<Envelope/>");
            }
            append(
                &mut b,
                &format!("{}.ovf", pair(5).0),
                b"<Envelope><Content><Name>again</Name></Content></Envelope>",
            );
            b.finish().unwrap();
        }
        let start = thread_cpu();
        let c = parse_store(&tar[..], tar.len() as u64).unwrap();
        let spent = thread_cpu() - start;
        assert_eq!(c.entities.len(), n);
        assert_eq!(c.entities[5].name, "again", "replaced in place");
        assert!(spent.as_secs_f64() < 10.0, "{spent:?} of CPU");
    }

    #[test]
    fn an_oversized_ovf_is_refused_before_it_is_read() {
        let mut hdr = raw_entry(&format!("{VM_ID}.ovf"), b'0', b"", "");
        let size = format!("{:011o}\0", MAX_OVF_SIZE + 1);
        hdr[124..136].copy_from_slice(size.as_bytes());
        fix_checksum(&mut hdr);
        let total = 512 + (MAX_OVF_SIZE + 1).div_ceil(512) * 512 + 1024;
        // Only the header is there: the refusal comes before any content.
        let e = parse_store(&hdr[..], total).unwrap_err();
        assert!(e.to_string().contains("more than"), "{e}");
    }
}
