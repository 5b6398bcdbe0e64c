//! Helpers of the OVF_STORE end-to-end tests (`tests/ovf.rs`):
//!
//! - engine-shaped archives built with the `tar` crate (info.json, one
//!   `<uuid>.ovf` per VM or template with oVirt's OVF XML, metadata.json,
//!   the two end blocks; length a multiple of 512, not of 4096), and
//!   hand-made headers for the archives depot must refuse;
//! - a raw HTTP/1.1 client over the local socket or mutual TLS, so a test
//!   controls Content-Length, can stop mid-body, half-close or disconnect;
//! - a file domain with OVF_STORE and data volumes, and the checks that a
//!   store is exactly as it was.
//!
//! A test file uses it with `mod common; mod storage_common; mod ovf_common;`.

#![allow(dead_code)]

use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use depot_client::{Client, Endpoint};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpStream, UnixStream};

use crate::common::{Daemon, WAIT};
use crate::storage_common::*;

/// The size of the engine's OVF_STORE volumes.
pub const STORE_SIZE: u64 = 128 * MIB;
/// depot's trailer: the volume's last 4 KiB.
pub const TRAILER: u64 = 4096;

// ---------------------------------------------------------------------------
// Archives
// ---------------------------------------------------------------------------

/// One VM or template of an archive.
#[derive(Debug, Clone)]
pub struct Entity {
    pub id: String,
    /// The name as the engine shows it (escaped in the XML).
    pub name: String,
    pub template: bool,
    /// `(image, volume)` of each disk volume, base first.
    pub disks: Vec<(String, String)>,
    /// The OVF text as uploaded.
    pub xml: String,
}

impl Entity {
    pub fn vm(name: &str, disks: &[(&str, &str)]) -> Entity {
        Entity::new(name, false, disks, 0)
    }

    pub fn template(name: &str, disks: &[(&str, &str)]) -> Entity {
        Entity::new(name, true, disks, 0)
    }

    /// `pad`: bytes of extra description text (a bigger OVF).
    pub fn new(name: &str, template: bool, disks: &[(&str, &str)], pad: usize) -> Entity {
        let id = new_id();
        let disks: Vec<(String, String)> = disks
            .iter()
            .map(|(i, v)| (i.to_string(), v.to_string()))
            .collect();
        let xml = ovf_xml(&id, name, template, &disks, pad);
        Entity {
            id,
            name: name.to_owned(),
            template,
            disks,
            xml,
        }
    }
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&apos;")
}

const NS: &str = concat!(
    r#"xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1/" "#,
    r#"xmlns:rasd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData" "#,
    r#"xmlns:vssd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_VirtualSystemSettingData" "#,
    r#"xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance""#
);

/// The engine's OVF of a VM or template (OvfVmWriter / OvfTemplateWriter):
/// References, NetworkSection, DiskSection with one `Disk` per volume
/// (`ovf:fileRef="<img>/<vol>"`, `ovf:parentRef` naming the parent volume
/// in a chain), then `Content ovf:id="out"` with the general data, the OS
/// and the hardware sections.
pub fn ovf_xml(
    id: &str,
    name: &str,
    template: bool,
    disks: &[(String, String)],
    pad: usize,
) -> String {
    let ename = xml_escape(name);
    let snapshot = "5e4f3a2b-1c0d-4e9f-8a7b-6c5d4e3f2a1b";
    let mut refs = String::new();
    let mut disk_elems = String::new();
    let mut items = String::new();
    let mut parent: Option<&(String, String)> = None;
    for (n, d @ (img, vol)) in disks.iter().enumerate() {
        let parent_ref = match parent {
            Some((pi, pv)) if pi == img => format!("{pi}/{pv}"),
            _ => String::new(),
        };
        let boot = n == 0;
        refs.push_str(&format!(
            r#"<File ovf:href="{img}/{vol}" ovf:id="{vol}" ovf:size="1073741824" ovf:description="Active VM" ovf:disk_storage_type="IMAGE" ovf:cinder_volume_type=""></File>"#
        ));
        disk_elems.push_str(&format!(
            r#"<Disk ovf:diskId="{vol}" ovf:size="1" ovf:actual_size="0" ovf:vm_snapshot_id="{snapshot}" ovf:parentRef="{parent_ref}" ovf:fileRef="{img}/{vol}" ovf:format="http://www.vmware.com/specifications/vmdk.html#sparse" ovf:volume-format="COW" ovf:volume-type="Sparse" ovf:disk-interface="VirtIO_SCSI" ovf:read-only="false" ovf:shareable="false" ovf:boot="{boot}" ovf:pass-discard="false" ovf:incremental-backup="false" ovf:disk-alias="{ename}_Disk{n}" ovf:disk-description="" ovf:wipe-after-delete="false"></Disk>"#
        ));
        items.push_str(&format!(
            r#"<Item><rasd:Caption>{ename}_Disk{n}</rasd:Caption><rasd:InstanceId>{vol}</rasd:InstanceId><rasd:ResourceType>17</rasd:ResourceType><rasd:HostResource>{img}/{vol}</rasd:HostResource><rasd:Parent>00000000-0000-0000-0000-000000000000</rasd:Parent><rasd:Template>00000000-0000-0000-0000-000000000000</rasd:Template><rasd:ApplicationList></rasd:ApplicationList><rasd:StoragePoolId>b2c3d4e5-f6a7-4b8c-9d0e-1f2a3b4c5d6e</rasd:StoragePoolId><rasd:CreationDate>2024/01/02 03:04:05</rasd:CreationDate><rasd:LastModified>2024/01/02 03:04:05</rasd:LastModified><rasd:last_modified_date>2024/01/02 03:04:05</rasd:last_modified_date><Type>disk</Type><Device>disk</Device><rasd:Address></rasd:Address><BootOrder>{b}</BootOrder><IsPlugged>true</IsPlugged><IsReadOnly>false</IsReadOnly><Alias></Alias></Item>"#,
            b = if boot { 1 } else { 0 }
        ));
        parent = Some(d);
    }
    let kind = if template {
        format!(
            "<TemplateId>{id}</TemplateId><Origin>0</Origin><default_display_type>2</default_display_type><IsDisabled>false</IsDisabled><TrustedService>false</TrustedService><TemplateType>TEMPLATE</TemplateType><BaseTemplateId>{id}</BaseTemplateId><TemplateVersionNumber>1</TemplateVersionNumber><TemplateVersionName>base version</TemplateVersionName><AutoRecoveryAllowed>true</AutoRecoveryAllowed><IsSealed>false</IsSealed>"
        )
    } else {
        "<TemplateId>00000000-0000-0000-0000-000000000000</TemplateId><TemplateName>Blank</TemplateName><IsInitilized>true</IsInitilized><Origin>3</Origin><quota_id>5f3e9c0a-1b2c-4d5e-8f90-a1b2c3d4e5f6</quota_id><DefaultDisplayType>2</DefaultDisplayType><TrustedService>false</TrustedService><OriginalTemplateId>00000000-0000-0000-0000-000000000000</OriginalTemplateId><OriginalTemplateName>Blank</OriginalTemplateName><UseLatestVersion>false</UseLatestVersion>".to_string()
    };
    // Engine descriptions are free text; a long one makes a bigger OVF.
    let description: String = "Restored from backup. ".repeat(pad / 22 + 1)[..pad].to_string();
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?><ovf:Envelope {NS} ovf:version="4.5.0.0"><References>{refs}</References><Section xsi:type="ovf:NetworkSection_Type"><Info>List of networks</Info><Network ovf:name="ovirtmgmt"></Network></Section><Section xsi:type="ovf:DiskSection_Type"><Info>List of Virtual Disks</Info>{disk_elems}</Section><Content ovf:id="out" xsi:type="ovf:VirtualSystem_Type"><Name>{ename}</Name><Description>{description}</Description><Comment></Comment><CreationDate>2024/01/02 03:04:05</CreationDate><ExportDate>2024/05/06 07:08:09</ExportDate><DeleteProtected>false</DeleteProtected><SsoMethod>guest_agent</SsoMethod><IsSmartcardEnabled>false</IsSmartcardEnabled><NumOfIoThreads>1</NumOfIoThreads><TimeZone>Etc/GMT</TimeZone><default_boot_sequence>0</default_boot_sequence><Generation>3</Generation><ClusterCompatibilityVersion>4.7</ClusterCompatibilityVersion><VmType>1</VmType><ResumeBehavior>AUTO_RESUME</ResumeBehavior><MinAllocatedMem>1024</MinAllocatedMem><IsStateless>false</IsStateless><IsRunAndPause>false</IsRunAndPause><AutoStartup>false</AutoStartup><Priority>1</Priority><BiosType>2</BiosType><MaxMemorySizeMb>4096</MaxMemorySizeMb><ClusterName>Default</ClusterName>{kind}<Section ovf:id="{id}" ovf:required="false" xsi:type="ovf:OperatingSystemSection_Type"><Info>Guest Operating System</Info><Description>rhel_9x64</Description></Section><Section xsi:type="ovf:VirtualHardwareSection_Type"><Info>2 CPU, 1024 Memory</Info><System><vssd:VirtualSystemType>ENGINE 4.5.0.0</vssd:VirtualSystemType></System><Item><rasd:Caption>2 virtual cpu</rasd:Caption><rasd:Description>Number of virtual CPU</rasd:Description><rasd:InstanceId>1</rasd:InstanceId><rasd:ResourceType>3</rasd:ResourceType><rasd:num_of_sockets>2</rasd:num_of_sockets><rasd:cpu_per_socket>1</rasd:cpu_per_socket><rasd:threads_per_cpu>1</rasd:threads_per_cpu><rasd:max_num_of_vcpus>16</rasd:max_num_of_vcpus><rasd:VirtualQuantity>2</rasd:VirtualQuantity></Item><Item><rasd:Caption>1024 MB of memory</rasd:Caption><rasd:Description>Memory Size</rasd:Description><rasd:InstanceId>2</rasd:InstanceId><rasd:ResourceType>4</rasd:ResourceType><rasd:AllocationUnits>MegaBytes</rasd:AllocationUnits><rasd:VirtualQuantity>1024</rasd:VirtualQuantity></Item>{items}<Item><rasd:Caption>Ethernet adapter on ovirtmgmt</rasd:Caption><rasd:InstanceId>7a6b5c4d-3e2f-4a1b-8c9d-0e1f2a3b4c5d</rasd:InstanceId><rasd:ResourceType>10</rasd:ResourceType><rasd:OtherResourceType>ovirtmgmt</rasd:OtherResourceType><rasd:ResourceSubType>3</rasd:ResourceSubType><rasd:Connection>ovirtmgmt</rasd:Connection><rasd:Linked>true</rasd:Linked><rasd:Name>nic1</rasd:Name><rasd:ElementName>nic1</rasd:ElementName><rasd:MACAddress>56:6f:11:22:33:44</rasd:MACAddress><rasd:speed>10000</rasd:speed><Type>interface</Type><Device>bridge</Device><rasd:Address></rasd:Address><BootOrder>0</BootOrder><IsPlugged>true</IsPlugged><IsReadOnly>false</IsReadOnly><Alias></Alias></Item></Section><Section xsi:type="ovf:SnapshotsSection_Type"><Snapshot ovf:id="{snapshot}"><Type>ACTIVE</Type><Description>Active VM</Description><CreationDate>2024/01/02 03:04:05</CreationDate></Snapshot></Section></Content></ovf:Envelope>"#
    )
}

/// A ustar header as commons-compress writes it, then `data` padded to 512.
pub fn append<W: io::Write>(b: &mut tar::Builder<W>, name: &str, data: &[u8]) {
    let mut h = tar::Header::new_ustar();
    h.set_path(name).unwrap();
    h.set_size(data.len() as u64);
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(1_714_979_289);
    h.set_entry_type(tar::EntryType::Regular);
    h.set_cksum();
    b.append(&h, data).unwrap();
}

pub fn info_json(sd: &str) -> String {
    format!(
        "{{\n  \"Last Updated\" : \"Mon May 06 07:08:09 UTC 2024\",\n  \"Storage Domains\" : [ {{\n    \"uuid\" : \"{sd}\"\n  }} ]\n}}"
    )
}

/// The engine's archive: info.json, one `<id>.ovf` per entity, metadata.json
/// (the VMs' status), then the OVFs of `unregistered` entities, then the two
/// 512-byte end blocks. metadata.json is padded so that the length is a
/// multiple of 512 but not of 4096.
pub fn engine_tar(sd: &str, entities: &[Entity], unregistered: &[Entity]) -> Vec<u8> {
    for pad in 0.. {
        let mut out = Vec::new();
        {
            let mut b = tar::Builder::new(&mut out);
            append(&mut b, "info.json", info_json(sd).as_bytes());
            for e in entities {
                append(&mut b, &format!("{}.ovf", e.id), e.xml.as_bytes());
            }
            let statuses: Vec<String> = entities
                .iter()
                .filter(|e| !e.template)
                .map(|e| format!("\"{}\" : 0", e.id))
                .collect();
            let meta = format!(
                "{{\n  \"VM Status\" : {{ {} }}{}\n}}",
                statuses.join(", "),
                " ".repeat(pad * 700)
            );
            append(&mut b, "metadata.json", meta.as_bytes());
            for e in unregistered {
                append(&mut b, &format!("{}.ovf", e.id), e.xml.as_bytes());
            }
            b.finish().unwrap();
        }
        if out.len() % 4096 != 0 {
            assert_eq!(out.len() % 512, 0);
            assert!(
                out[out.len() - 1024..].iter().all(|&b| b == 0),
                "ends with the two zero blocks"
            );
            return out;
        }
    }
    unreachable!()
}

/// A big engine-shaped archive of about `size` bytes (OVFs of ~32 KiB).
pub fn big_tar(sd: &str, size: usize, disks: &[(&str, &str)]) -> (Vec<u8>, Vec<Entity>) {
    let n = size / (32 << 10);
    let entities: Vec<Entity> = (0..n)
        .map(|i| Entity::new(&format!("bulk-{i}"), false, disks, 28 << 10))
        .collect();
    (engine_tar(sd, &entities, &[]), entities)
}

/// Fixes the checksum of the header in `block[..512]`.
pub fn fix_checksum(block: &mut [u8]) {
    block[148..156].copy_from_slice(b"        ");
    let sum: u32 = block[..512].iter().map(|&b| u32::from(b)).sum();
    block[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
}

/// A ustar header with any name, type and link name, then `data` padded
/// to 512 (the `tar` crate refuses to write such names).
pub fn raw_entry(name: &str, typeflag: u8, data: &[u8], linkname: &str) -> Vec<u8> {
    let mut h = vec![0u8; 512];
    h[..name.len()].copy_from_slice(name.as_bytes());
    h[100..108].copy_from_slice(b"0000644\0");
    h[108..116].copy_from_slice(b"0000000\0");
    h[116..124].copy_from_slice(b"0000000\0");
    h[124..136].copy_from_slice(format!("{:011o}\0", data.len()).as_bytes());
    h[136..148].copy_from_slice(b"14606000000\0");
    h[156] = typeflag;
    h[157..157 + linkname.len()].copy_from_slice(linkname.as_bytes());
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h[265..269].copy_from_slice(b"root");
    h[297..301].copy_from_slice(b"root");
    if typeflag == b'3' || typeflag == b'4' {
        // Device major/minor: /dev/mem is 1,1.
        h[329..337].copy_from_slice(b"0000001\0");
        h[337..345].copy_from_slice(b"0000001\0");
    }
    fix_checksum(&mut h);
    h.extend_from_slice(data);
    h.resize(h.len().div_ceil(512) * 512, 0);
    h
}

/// A pax extended header ('x') with these records; they apply to the
/// next entry.
pub fn pax_entry(records: &[(&str, &str)]) -> Vec<u8> {
    let mut data = String::new();
    for (k, v) in records {
        let body = format!(" {k}={v}\n");
        // The length counts its own digits.
        let mut len = body.len() + 1;
        while format!("{len}").len() + body.len() != len {
            len += 1;
        }
        data.push_str(&format!("{len}{body}"));
    }
    raw_entry("PaxHeaders.0/x", b'x', data.as_bytes(), "")
}

/// info.json, the given raw entries, then the two end blocks.
pub fn raw_tar(sd: &str, entries: &[Vec<u8>]) -> Vec<u8> {
    let mut out = raw_entry("info.json", b'0', info_json(sd).as_bytes(), "");
    for e in entries {
        out.extend_from_slice(e);
    }
    out.extend_from_slice(&[0u8; 1024]);
    out
}

pub fn sha256_hex(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

// ---------------------------------------------------------------------------
// Raw HTTP/1.1
// ---------------------------------------------------------------------------

/// A byte stream to the daemon: the local socket or TLS.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}
pub type BoxIo = Box<dyn Io>;

/// Which listener to talk to.
#[derive(Debug, Clone)]
pub enum Via {
    Unix(PathBuf),
    /// Mutual TLS with the dev PKI's client certificate.
    Tls(Endpoint),
}

impl Via {
    pub fn unix(d: &Daemon) -> Via {
        Via::Unix(d.socket())
    }

    pub fn tls(d: &Daemon) -> Via {
        Via::Tls(d.tls())
    }

    pub async fn connect(&self) -> BoxIo {
        match self {
            Via::Unix(p) => Box::new(
                UnixStream::connect(p)
                    .await
                    .unwrap_or_else(|e| panic!("connect {}: {e}", p.display())),
            ),
            Via::Tls(Endpoint::Tls {
                addr,
                server_name,
                ca,
                identity,
            }) => {
                let config = depot_client::tls::client_config(ca, identity.as_ref())
                    .expect("TLS client config");
                let name = depot_client::tls::server_name(server_name).expect("server name");
                let tcp = TcpStream::connect(addr.as_str())
                    .await
                    .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
                let tls = tokio_rustls::TlsConnector::from(config)
                    .connect(name, tcp)
                    .await
                    .unwrap_or_else(|e| panic!("TLS handshake with {addr}: {e}"));
                Box::new(tls)
            }
            Via::Tls(other) => panic!("not a TLS endpoint: {other}"),
        }
    }
}

/// The engine's id headers of one volume.
#[derive(Debug, Clone)]
pub struct Ids {
    pub pool: String,
    pub sd: String,
    pub img: String,
    pub vol: String,
}

impl Ids {
    fn headers(&self) -> [(&'static str, &str); 4] {
        [
            ("Storage-Pool-Id", &self.pool),
            ("Storage-Domain-Id", &self.sd),
            ("Image-Id", &self.img),
            ("Volume-Id", &self.vol),
        ]
    }
}

/// A request head. `omit` leaves out one of the id headers.
pub fn head(method: &str, ids: &Ids, omit: Option<&str>, extra: &[(&str, String)]) -> String {
    let mut h = format!("{method} / HTTP/1.1\r\nHost: localhost\r\n");
    for (k, v) in ids.headers() {
        if Some(k) != omit {
            h.push_str(&format!("{k}: {v}\r\n"));
        }
    }
    for (k, v) in extra {
        h.push_str(&format!("{k}: {v}\r\n"));
    }
    h.push_str("\r\n");
    h
}

pub fn put_head(ids: &Ids, content_length: u64) -> String {
    head(
        "PUT",
        ids,
        None,
        &[
            ("Content-Type", "application/octet-stream".into()),
            ("Content-Length", content_length.to_string()),
        ],
    )
}

pub fn get_head(ids: &Ids, start: u64, end: u64) -> String {
    head(
        "GET",
        ids,
        None,
        &[("Range", format!("bytes={start}-{end}"))],
    )
}

#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    /// Lower-case names.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The `{"status": {"code", "message"}}` of an error.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "{} body is not JSON ({e}): {}",
                self.status,
                String::from_utf8_lossy(&self.body[..self.body.len().min(400)])
            )
        })
    }

    pub fn code(&self) -> i64 {
        let v = self.json();
        v["status"]["code"]
            .as_i64()
            .unwrap_or_else(|| panic!("no status.code in {v}"))
    }

    pub fn message(&self) -> String {
        self.json()["status"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// Short text for assertion messages.
    pub fn show(&self) -> String {
        let body = if self.body.len() > 600 {
            format!("<{} bytes>", self.body.len())
        } else {
            String::from_utf8_lossy(&self.body).into_owned()
        };
        format!("{} {:?} {body}", self.status, self.headers)
    }

    /// Asserts an error answer with this status and code.
    pub fn assert_error(&self, status: u16, code: i64, what: &str) {
        assert_eq!(self.status, status, "{what}: {}", self.show());
        assert_eq!(
            self.header("content-type"),
            Some("application/json"),
            "{what}: {}",
            self.show()
        );
        assert_eq!(self.code(), code, "{what}: {}", self.show());
        assert!(!self.message().is_empty(), "{what}: {}", self.show());
    }
}

/// Reads one response: status line, headers, and the body by
/// Content-Length, chunks, or up to EOF.
pub async fn read_response<R: AsyncRead + Unpin>(r: R) -> io::Result<Resp> {
    let mut r = BufReader::new(r);
    let mut line = String::new();
    if r.read_line(&mut line).await? == 0 {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "connection closed before a response",
        ));
    }
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| io::Error::other(format!("bad status line {line:?}")))?;
    let mut headers = Vec::new();
    loop {
        line.clear();
        r.read_line(&mut line).await?;
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        let (k, v) = l
            .split_once(':')
            .ok_or_else(|| io::Error::other(format!("bad header {l:?}")))?;
        headers.push((k.trim().to_ascii_lowercase(), v.trim().to_owned()));
    }
    let get = |n: &str| headers.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
    let mut body = Vec::new();
    if let Some(len) = get("content-length") {
        let len: usize = len
            .parse()
            .map_err(|_| io::Error::other("bad Content-Length"))?;
        body.resize(len, 0);
        r.read_exact(&mut body).await?;
    } else if get("transfer-encoding").is_some_and(|t| t.contains("chunked")) {
        loop {
            line.clear();
            r.read_line(&mut line).await?;
            let n = usize::from_str_radix(line.trim().split(';').next().unwrap_or(""), 16)
                .map_err(|_| io::Error::other(format!("bad chunk size {line:?}")))?;
            let at = body.len();
            body.resize(at + n, 0);
            r.read_exact(&mut body[at..]).await?;
            line.clear();
            r.read_line(&mut line).await?;
            if n == 0 {
                break;
            }
        }
    } else if status != 204 && status != 304 {
        r.read_to_end(&mut body).await?;
    }
    Ok(Resp {
        status,
        headers,
        body,
    })
}

async fn timed<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(WAIT, f)
        .await
        .unwrap_or_else(|_| panic!("{what}: no answer in {WAIT:?}"))
}

/// Sends `head` and `body` (writing while reading, so an early answer is
/// seen), half-closes when `close` is set, and reads the answer. `Err` when
/// the daemon closed the connection without one.
pub async fn exchange(via: &Via, head: String, body: Vec<u8>, close: bool) -> io::Result<Resp> {
    let io = via.connect().await;
    let (r, mut w) = tokio::io::split(io);
    let writer = tokio::spawn(async move {
        w.write_all(head.as_bytes()).await?;
        for chunk in body.chunks(256 << 10) {
            w.write_all(chunk).await?;
        }
        w.flush().await?;
        if close {
            w.shutdown().await?;
        }
        // Keep the write half open until the answer is read.
        Ok::<_, io::Error>(w)
    });
    let resp = timed("HTTP exchange", read_response(r)).await;
    // The daemon may answer before it read the whole body.
    let _ = tokio::time::timeout(Duration::from_secs(5), writer).await;
    resp
}

/// `PUT /` of `body` with its own length.
pub async fn put(via: &Via, ids: &Ids, body: &[u8]) -> Resp {
    put_len(via, ids, body.len() as u64, body).await
}

/// `PUT /` with any Content-Length.
pub async fn put_len(via: &Via, ids: &Ids, content_length: u64, body: &[u8]) -> Resp {
    exchange(via, put_head(ids, content_length), body.to_vec(), false)
        .await
        .expect("an answer to PUT")
}

/// `GET /` of `start..=end`.
pub async fn get(via: &Via, ids: &Ids, start: u64, end: u64) -> Resp {
    exchange(via, get_head(ids, start, end), Vec::new(), false)
        .await
        .expect("an answer to GET")
}

/// A PUT whose body is sent piece by piece: the test holds it open.
pub struct OpenUpload {
    io: BoxIo,
    pub sent: u64,
    pub content_length: u64,
}

impl OpenUpload {
    pub async fn start(via: &Via, ids: &Ids, content_length: u64) -> OpenUpload {
        let mut io = via.connect().await;
        io.write_all(put_head(ids, content_length).as_bytes())
            .await
            .unwrap();
        io.flush().await.unwrap();
        OpenUpload {
            io,
            sent: 0,
            content_length,
        }
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        timed("sending upload data", self.io.write_all(bytes))
            .await
            .expect("send upload data");
        self.io.flush().await.unwrap();
        self.sent += bytes.len() as u64;
    }

    /// Reads the answer (after the whole body was sent).
    pub async fn finish(mut self) -> Resp {
        timed("upload answer", read_response(&mut self.io))
            .await
            .expect("an answer to the upload")
    }
}

// ---------------------------------------------------------------------------
// A domain with OVF stores
// ---------------------------------------------------------------------------

/// A connected file domain on the daemon `d`.
pub struct Domain {
    pub c: Client,
    pub domain_type: i64,
    pub conn: ConnectionSpec,
    pub conn_id: String,
    pub sd: String,
    /// The domain directory, through the mount point (or LOCALFS's link).
    pub dom: PathBuf,
}

impl Vol {
    pub fn ids(&self) -> Ids {
        Ids {
            pool: new_id(),
            sd: self.sd.clone(),
            img: self.img.clone(),
            vol: self.vol.clone(),
        }
    }

    /// depot's staging file next to the volume.
    pub fn staging(&self) -> PathBuf {
        self.path.with_file_name(format!("{}.ovf-upload", self.vol))
    }

    pub fn bytes(&self) -> Vec<u8> {
        std::fs::read(&self.path).unwrap_or_else(|e| panic!("{}: {e}", self.path.display()))
    }

    /// Writes `block` over the trailer block (the last 4 KiB) and syncs.
    pub fn write_trailer_block(&self, block: &[u8]) {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&self.path)
            .unwrap();
        let size = f.metadata().unwrap().len();
        f.write_all_at(block, size / TRAILER * TRAILER - TRAILER)
            .unwrap();
        f.sync_all().unwrap();
    }
}

impl Domain {
    /// Connects `conn` and creates a data domain on it.
    pub async fn create(
        d: &Daemon,
        domain_type: i64,
        conn: ConnectionSpec,
        block_size: u32,
    ) -> Domain {
        let c = d.client().await;
        let conn_id = new_id();
        let st = call_ok(
            &c,
            "StoragePool.connectStorageServer",
            connect_params(domain_type, vec![conn.params(&conn_id)]),
        )
        .await;
        assert_eq!(st, json!([{"id": conn_id, "status": 0}]));
        let sd = new_id();
        call_ok(
            &c,
            "StorageDomain.create",
            create_domain_params(&sd, domain_type, &conn.connection, "ovf", block_size),
        )
        .await;
        let dom = mount_point(d, domain_type, &conn.connection).join(&sd);
        assert!(dom.is_dir(), "{}", dom.display());
        Domain {
            c,
            domain_type,
            conn,
            conn_id,
            sd,
            dom,
        }
    }

    /// After a restart: a new client, and the connection again (the
    /// engine does this after a host restart).
    pub async fn reconnect(&mut self, d: &Daemon) {
        self.c = d.client().await;
        let st = call_ok(
            &self.c,
            "StoragePool.connectStorageServer",
            connect_params(self.domain_type, vec![self.conn.params(&self.conn_id)]),
        )
        .await;
        assert_eq!(st, json!([{"id": self.conn_id, "status": 0}]));
    }

    pub fn vol(&self, img: &str, vol: &str) -> Vol {
        Vol::in_domain(&self.sd, &self.dom, img, vol)
    }

    /// A volume; `parent` in the same image.
    pub async fn create_volume(
        &self,
        img: &str,
        size: u64,
        format: &str,
        disk_type: &str,
        parent: Option<&str>,
    ) -> Vol {
        let vol = new_id();
        let mut p = volume_params(&self.sd, img, &vol, size, format, "SPARSE", "", parent);
        p["diskType"] = json!(disk_type);
        call_ok(&self.c, "Volume.create", p).await;
        self.vol(img, &vol)
    }

    /// An OVF_STORE as the engine makes one on a file domain: 128 MiB RAW
    /// SPARSE, DISKTYPE OVFS, description "OVF_STORE" until it is written.
    pub async fn create_store(&self) -> Vol {
        let img = new_id();
        let v = self
            .create_volume(&img, STORE_SIZE, "RAW", "OVFS", None)
            .await;
        self.set_description(&v, r#"{"Updated":false,"Disk Description":"OVF_STORE"}"#)
            .await;
        v
    }

    pub async fn set_description(&self, v: &Vol, desc: &str) {
        let mut p = vol_ref(&self.sd, &v.img, &v.vol);
        p["description"] = json!(desc);
        assert_eq!(
            call_ok(&self.c, "Volume.setDescription", p).await,
            json!(true)
        );
    }

    /// The engine's description of a written store.
    pub fn store_description(&self, size: usize) -> String {
        format!(
            r#"{{"Updated":true,"Size":{size},"Last Updated":"Mon May 06 07:08:09 UTC 2024","Storage Domains":[{{"uuid":"{}"}}],"Disk Description":"OVF_STORE"}}"#,
            self.sd
        )
    }

    pub async fn stores(&self) -> Vec<Value> {
        let v = call_ok(
            &self.c,
            "StorageDomain.getOvfStores",
            json!({"storagedomainID": self.sd}),
        )
        .await;
        v.as_array().expect("a list").clone()
    }

    /// The listing entry of `v`.
    pub async fn store(&self, v: &Vol) -> Value {
        self.stores()
            .await
            .into_iter()
            .find(|s| s["volumeID"] == v.vol.as_str())
            .unwrap_or_else(|| panic!("store {} not listed", v.vol))
    }

    pub async fn entities(&self) -> Value {
        call_ok(
            &self.c,
            "StorageDomain.getOvfEntities",
            json!({"storagedomainID": self.sd}),
        )
        .await
    }

    pub async fn entity(&self, id: &str) -> Value {
        call_ok(
            &self.c,
            "StorageDomain.getOvfEntity",
            json!({"storagedomainID": self.sd, "entityID": id}),
        )
        .await
    }
}

/// A PUT that must succeed: 200, a Task-Id that is a UUID.
pub async fn put_ok(via: &Via, v: &Vol, tar: &[u8]) -> Resp {
    let r = put(via, &v.ids(), tar).await;
    assert_eq!(r.status, 200, "PUT: {}", r.show());
    let task = r.header("task-id").expect("Task-Id header");
    assert!(
        task.parse::<depot_api::types::Uuid>().is_ok(),
        "Task-Id {task} is not a UUID"
    );
    assert!(!v.staging().exists(), "staging file left after a PUT");
    r
}

/// A GET of the first `len` bytes that must succeed; the bytes.
pub async fn get_ok(via: &Via, v: &Vol, len: usize) -> Vec<u8> {
    let r = get(via, &v.ids(), 0, len as u64 - 1).await;
    assert_eq!(r.status, 206, "GET: {}", r.show());
    let size = std::fs::metadata(&v.path).unwrap().len();
    assert_eq!(
        r.header("content-range"),
        Some(format!("bytes 0-{}/{size}", len - 1).as_str()),
        "{}",
        r.show()
    );
    assert_eq!(r.header("content-length"), Some(len.to_string().as_str()));
    assert_eq!(r.body.len(), len, "exactly the requested bytes");
    r.body
}

/// What a store looks like from outside: its listing entry and bytes.
pub struct Seen {
    pub tar: Vec<u8>,
    pub generation: u64,
    pub volume: Vec<u8>,
    pub tree: Tree,
}

impl Seen {
    /// Checks that `v` serves `tar` as a valid store of `generation` and
    /// takes a copy of the volume and of the image directory.
    pub async fn take(dom: &Domain, via: &Via, v: &Vol, tar: &[u8], generation: u64) -> Seen {
        let st = dom.store(v).await;
        assert_eq!(st["state"], "valid", "{st}");
        assert_eq!(st["valid"], true, "{st}");
        assert_eq!(st["generation"], generation, "{st}");
        assert_eq!(st["size"], tar.len() as u64, "{st}");
        assert_eq!(st["sha256"], sha256_hex(tar).as_str(), "{st}");
        assert_eq!(get_ok(via, v, tar.len()).await, tar, "GET serves the tar");
        Seen {
            tar: tar.to_vec(),
            generation,
            volume: v.bytes(),
            tree: snapshot(v.path.parent().unwrap()),
        }
    }

    /// Asserts nothing changed: same listing, same GET bytes, the volume's
    /// bytes and the image directory as they were (no staging file left).
    pub async fn assert_same(&self, dom: &Domain, via: &Via, v: &Vol, what: &str) {
        let st = dom.store(v).await;
        assert_eq!(st["valid"], true, "{what}: {st}");
        assert_eq!(st["generation"], self.generation, "{what}: {st}");
        assert_eq!(st["size"], self.tar.len() as u64, "{what}: {st}");
        let r = get(via, &v.ids(), 0, self.tar.len() as u64 - 1).await;
        assert_eq!(r.status, 206, "{what}: GET {}", r.show());
        assert!(r.body == self.tar, "{what}: GET serves other bytes");
        assert!(!v.staging().exists(), "{what}: staging file left");
        assert_same_tree(&self.tree, &snapshot(v.path.parent().unwrap()), what);
        let now = v.bytes();
        assert_eq!(now.len(), self.volume.len(), "{what}: volume size");
        if now != self.volume {
            let first = now
                .iter()
                .zip(&self.volume)
                .position(|(a, b)| a != b)
                .unwrap();
            panic!("{what}: the volume's bytes changed (first at offset {first})");
        }
    }
}

/// Waits until no upload holds `v`: its staging file is gone and a PUT
/// with a Content-Length of 512 (refused as too short once the upload
/// slot is taken, before anything is written) is not answered 409.
pub async fn wait_idle(via: &Via, v: &Vol) {
    let deadline = Instant::now() + WAIT;
    loop {
        if !v.staging().exists() {
            let r = put(via, &v.ids(), &[0u8; 512]).await;
            if r.status != 409 {
                assert_eq!(r.status, 400, "idle probe: {}", r.show());
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "upload to {} still running",
            v.vol
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A PUT whose Content-Length is larger than the volume: the head, then
/// zeros as long as the daemon reads them (an honest client sends its
/// body; the daemon answers once it has refused). The answer.
pub async fn put_oversized(via: &Via, ids: &Ids, content_length: u64) -> Resp {
    let io = via.connect().await;
    let (r, mut w) = tokio::io::split(io);
    let head = put_head(ids, content_length);
    let writer = tokio::spawn(async move {
        w.write_all(head.as_bytes()).await?;
        let zeros = vec![0u8; 1 << 20];
        let mut sent = 0u64;
        while sent < content_length {
            let n = (content_length - sent).min(zeros.len() as u64) as usize;
            w.write_all(&zeros[..n]).await?;
            sent += n as u64;
        }
        Ok::<_, io::Error>(sent)
    });
    let resp = timed("oversized PUT", read_response(r)).await;
    writer.abort();
    resp.expect("an answer to the oversized PUT")
}

// ---------------------------------------------------------------------------
// Root tier: a loop device with a file system
// ---------------------------------------------------------------------------

pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|e| e == "0"))
        })
        .unwrap_or(false)
}

/// Prints `SKIP: needs the root tier` and returns false when not root (or
/// when DEPOT_TEST_TIER names another tier).
pub fn root_tier() -> bool {
    let tier = std::env::var("DEPOT_TEST_TIER").ok();
    if !is_root() || tier.as_deref().is_some_and(|t| t != "root") {
        eprintln!("SKIP: needs the root tier");
        return false;
    }
    true
}

pub fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

// Not every test file that includes this module needs it.
#[allow(unused_imports)]
pub use crate::support::loopfs::LoopFs;

pub fn path_str(p: &Path) -> &str {
    p.to_str().expect("UTF-8 path")
}
