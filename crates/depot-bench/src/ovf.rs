//! OVF_STORE upload: `PUT /` of an engine-shaped tar of about 100 MiB over
//! mutual TLS until the 200 (the store durable), against the command the
//! issue names as the bar, `dd if=the.tar of=<the volume's file> bs=1M
//! oflag=direct conv=fsync`, on the same volume of the same LOCALFS domain,
//! and against the transport's floor: the same PUT to a process that
//! throws the body away (ovf_sink.rs). Rotating order, medians; then the
//! medians of the phases depotd logged for each PUT (debug level).
//!
//! dd gets `iflag=fullblock` (whole 1 MiB blocks from the page cache) and
//! `conv=notrunc`: without it dd truncates the 128 MiB volume to the tar's
//! length, which destroys depot's trailer at the end of the volume (the next
//! PUT then works on a volume of the wrong size) and adds a truncate to dd's
//! time. If dd refuses the tar's last partial block with O_DIRECT, a copy of
//! the tar padded with zeros to 4096 is given to dd, and the output says so.

use depot_client::{Client, Endpoint};
use serde_json::{json, Value};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;
use uuid::Uuid;

use crate::daemon::{call, localfs_domain, Daemon, BLANK};
use crate::ovf_sink::Sink;
use crate::stats::median_f64;
use crate::sys::{fs_type, process_cpu_seconds, run_cmd};

const MIB: u64 = 1 << 20;
/// An OVF_STORE as the engine creates one on a file domain.
const STORE_SIZE: u64 = 128 * MIB;

#[derive(clap::Args)]
pub struct OvfArgs {
    /// Runs of each (PUT, dd), alternating.
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Approximate size of the tar, in MiB (the store holds 128 MiB).
    #[arg(long, default_value_t = 100)]
    tar_mib: u64,
    /// Bytes of description text in each OVF (each OVF is about 4.5 KiB
    /// plus this).
    #[arg(long, default_value_t = 1024)]
    ovf_pad: usize,
}

pub async fn run(depotd: &Path, args: OvfArgs) -> Result<(), String> {
    if args.runs == 0 {
        return Err("--runs must be at least 1".into());
    }
    if args.tar_mib * MIB + 64 * 1024 > STORE_SIZE {
        return Err("--tar-mib must leave room in the 128 MiB store".into());
    }
    // depot-storage logs each upload's phases at debug level: the report
    // below reads them back.
    let d = Daemon::start(
        depotd,
        "[log]\nlevel = \"warn,depot_storage::engine::ovf=debug\"\n",
    )
    .await?;
    measure(&d, args).await.map_err(|e| {
        let state = if d.alive() {
            "depotd is still running"
        } else {
            "depotd has exited"
        };
        format!("{e}\n{state}; the end of its log:\n{}", d.log_tail(20))
    })
}

async fn measure(d: &Daemon, args: OvfArgs) -> Result<(), String> {
    let storage = d.dir.path().join("storage");
    fs::create_dir(&storage).map_err(|e| format!("{}: {e}", storage.display()))?;
    let storage = storage.canonicalize().map_err(|e| e.to_string())?;
    let c = Client::connect(&d.unix())
        .await
        .map_err(|e| e.to_string())?;
    let sd = localfs_domain(&c, &storage, "depot-bench ovf").await?;
    // A disk the OVFs point at, and the store.
    let (disk_img, disk_vol) = (Uuid::new_v4().to_string(), Uuid::new_v4().to_string());
    create_volume(&c, &sd, &disk_img, &disk_vol, GIB_STR, "COW", "DATA").await?;
    let (img, vol) = (Uuid::new_v4().to_string(), Uuid::new_v4().to_string());
    create_volume(&c, &sd, &img, &vol, &STORE_SIZE.to_string(), "RAW", "OVFS").await?;
    let vol_path = storage.join(&sd).join("images").join(&img).join(&vol);
    if !vol_path.is_file() {
        return Err(format!("no volume file at {}", vol_path.display()));
    }

    let (tar_path, len) = write_archive(d, &args, &storage, &sd, &disk_img, &disk_vol)?;

    // Warm-up of both, outside the figures: the tar into the page cache,
    // the TLS path, and whether dd takes the unpadded tar.
    let dd_src = dd_source(d, &tar_path, &vol_path, len)?;
    put(d, &sd, &img, &vol, &tar_path, len).await?;

    // The transport floor: the same PUT over the same kind of connection to
    // a process that throws the body away (see ovf_sink.rs).
    let (sink, sink_ep) = start_sink(d)?;
    put_to(&sink_ep, &sd, &img, &vol, &tar_path, len).await?;

    let log_before = upload_log_lines(d).len();
    let mut put_s = Vec::new();
    let mut floor_s = Vec::new();
    let mut dd_s = Vec::new();
    // CPU seconds used during the PUTs: (client, server) summed over the
    // runs. The machine's other load does not change these much, unlike
    // the times.
    let mut put_cpu = (0.0, 0.0);
    let mut floor_cpu = (0.0, 0.0);
    for i in 0..args.runs {
        // Rotate which goes first.
        for k in 0..3 {
            let t = Instant::now();
            match (i + k) % 3 {
                0 => {
                    let (c0, s0) = (process_cpu_seconds("self"), d.cpu_seconds());
                    put(d, &sd, &img, &vol, &tar_path, len).await?;
                    put_s.push(t.elapsed().as_secs_f64());
                    put_cpu.0 += process_cpu_seconds("self") - c0;
                    put_cpu.1 += d.cpu_seconds() - s0;
                }
                1 => {
                    let (c0, s0) = (process_cpu_seconds("self"), sink.cpu_seconds());
                    put_to(&sink_ep, &sd, &img, &vol, &tar_path, len).await?;
                    floor_s.push(t.elapsed().as_secs_f64());
                    floor_cpu.0 += process_cpu_seconds("self") - c0;
                    floor_cpu.1 += sink.cpu_seconds() - s0;
                }
                _ => {
                    dd(&dd_src, &vol_path)?;
                    dd_s.push(t.elapsed().as_secs_f64());
                }
            }
        }
    }
    drop(sink);
    let phases = upload_log_lines(d).split_off(log_before);
    // The store is valid after the last PUT (check once, outside timing).
    put(d, &sd, &img, &vol, &tar_path, len).await?;
    let stores = call(
        &c,
        "StorageDomain.getOvfStores",
        json!({"storagedomainID": sd}),
    )
    .await?;

    let figures = Figures {
        put_s,
        floor_s,
        dd_s,
        put_cpu,
        floor_cpu,
    };
    print_figures(len, args.runs, &figures);
    print_phases(&phases);
    let listed = stores
        .as_array()
        .and_then(|a| a.iter().find(|s| s["volumeID"] == vol.as_str()))
        .cloned()
        .unwrap_or(Value::Null);
    println!("store after the last PUT: {listed}");
    Ok(())
}

/// What dd copies: the tar, or (when dd refuses its length with
/// `oflag=direct`) a copy padded to 4096 bytes. Copies it once (the
/// warm-up).
fn dd_source(d: &Daemon, tar_path: &Path, vol_path: &Path, len: u64) -> Result<PathBuf, String> {
    let mut dd_src = tar_path.to_path_buf();
    if let Err(e) = dd(&dd_src, vol_path) {
        let padded = d.dir.path().join("ovf-store.padded.tar");
        let mut bytes = fs::read(tar_path).map_err(|e| e.to_string())?;
        bytes.resize(bytes.len().div_ceil(4096) * 4096, 0);
        fs::write(&padded, &bytes).map_err(|e| e.to_string())?;
        println!(
            "dd refused the {len}-byte tar with oflag=direct ({e}); dd is given a copy padded to {} bytes",
            bytes.len()
        );
        dd_src = padded;
        dd(&dd_src, vol_path)?;
    }
    Ok(dd_src)
}

/// The sink of the transport floor, on depotd's address family, with
/// depotd's PKI.
fn start_sink(d: &Daemon) -> Result<(Sink, Endpoint), String> {
    let listen = fs::read_to_string(d.dir.path().join("dev/state/listen-address"))
        .map_err(|e| format!("depotd's listen address: {e}"))?;
    let host = depot_client::host_part(listen.trim()).to_string();
    let sink_listen = if host.contains(':') {
        format!("[{host}]:0")
    } else {
        format!("{host}:0")
    };
    let pki = d.dir.path().join("dev/state/pki");
    let sink = Sink::start(&pki, &sink_listen)?;
    let sink_ep = Endpoint::tls_from_pki_dir(sink.addr.clone(), &pki);
    Ok((sink, sink_ep))
}

/// The engine-like archive, written to the daemon's directory; prints
/// what it holds. Returns its path and length.
fn write_archive(
    d: &Daemon,
    args: &OvfArgs,
    storage: &Path,
    sd: &str,
    disk_img: &str,
    disk_vol: &str,
) -> Result<(PathBuf, u64), String> {
    let t = Instant::now();
    let (tar, entries) = engine_tar(sd, disk_img, disk_vol, args.tar_mib * MIB, args.ovf_pad);
    let tar_path = d.dir.path().join("ovf-store.tar");
    fs::write(&tar_path, &tar).map_err(|e| format!("{}: {e}", tar_path.display()))?;
    println!(
        "bench: OVF_STORE PUT over mutual TLS vs dd, LOCALFS domain on {} ({}), store {} MiB RAW SPARSE OVFS",
        storage.display(),
        fs_type(storage),
        STORE_SIZE / MIB
    );
    println!(
        "tar: {} bytes ({:.1} MiB, {} % 512 = {}, % 4096 = {}), {} entries ({} OVFs of about {} bytes), built in {:.2?}",
        tar.len(),
        tar.len() as f64 / MIB as f64,
        tar.len(),
        tar.len() % 512,
        tar.len() % 4096,
        entries + 2,
        entries,
        tar.len() / entries.max(1),
        t.elapsed()
    );
    let len = tar.len() as u64;

    Ok((tar_path, len))
}

/// The times and CPU of the measured rounds.
struct Figures {
    put_s: Vec<f64>,
    floor_s: Vec<f64>,
    dd_s: Vec<f64>,
    /// CPU seconds (client, server) summed over the runs.
    put_cpu: (f64, f64),
    floor_cpu: (f64, f64),
}

/// Prints the runs, their medians, the ratios and the CPU per PUT.
fn print_figures(len: u64, runs: usize, f: &Figures) {
    let (put_s, floor_s, dd_s) = (&f.put_s, &f.floor_s, &f.dd_s);
    let (put_cpu, floor_cpu) = (f.put_cpu, f.floor_cpu);
    let fmt = |v: &[f64]| {
        v.iter()
            .map(|s| format!("{:.3}", s))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let (pm, dm) = (median_f64(put_s.clone()), median_f64(dd_s.clone()));
    let fm = median_f64(floor_s.clone());
    let mibs = |s: f64| len as f64 / MIB as f64 / s;
    println!("PUT (connect + TLS + body + 200) runs, s: {}", fmt(put_s));
    println!("floor (same PUT, body discarded), s:     {}", fmt(floor_s));
    println!("dd runs, s:                             {}", fmt(dd_s));
    println!(
        "median PUT {:.3} s ({:.0} MiB/s), median floor {:.3} s ({:.0} MiB/s), median dd {:.3} s ({:.0} MiB/s)",
        pm,
        mibs(pm),
        fm,
        mibs(fm),
        dm,
        mibs(dm)
    );
    println!(
        "ratio dd_time / depot_time = {:.2} (target >= 1.0)",
        dm / pm
    );
    println!(
        "ratio floor_time / depot_time = {:.2} (1.0: depot costs nothing beyond moving the bytes over TLS)",
        fm / pm
    );
    println!(
        "ratio dd_time / floor_time = {:.2} (the best dd/depot ratio possible over this transport)",
        dm / fm
    );
    let runs = runs as f64;
    println!(
        "CPU per PUT, ms (mean; client = this process, 10 ms steps): depot: client {:.0} + depotd {:.0} = {:.0}; floor: client {:.0} + sink {:.0} = {:.0}",
        put_cpu.0 / runs * 1e3,
        put_cpu.1 / runs * 1e3,
        (put_cpu.0 + put_cpu.1) / runs * 1e3,
        floor_cpu.0 / runs * 1e3,
        floor_cpu.1 / runs * 1e3,
        (floor_cpu.0 + floor_cpu.1) / runs * 1e3,
    );
}

/// depotd's debug lines about OVF_STORE uploads, in order.
fn upload_log_lines(d: &Daemon) -> Vec<String> {
    fs::read_to_string(d.log_path())
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("OVF_STORE upload") && l.contains("strategy="))
        .map(str::to_string)
        .collect()
}

/// A `key=<Duration's Debug>` field of a log line, in seconds.
fn field_secs(line: &str, key: &str) -> Option<f64> {
    let at = line.find(&format!(" {key}="))? + key.len() + 2;
    let value = line[at..].split_whitespace().next()?;
    let digits = value.trim_end_matches(|c: char| c.is_alphabetic() || c == 'µ');
    let unit = &value[digits.len()..];
    let n: f64 = digits.parse().ok()?;
    Some(match unit {
        "s" => n,
        "ms" => n / 1e3,
        "µs" | "us" => n / 1e6,
        "ns" => n / 1e9,
        _ => return None,
    })
}

/// Medians of the phases depotd logged for the timed PUTs.
fn print_phases(lines: &[String]) {
    if lines.is_empty() {
        println!("(no phase timings in depotd's log)");
        return;
    }
    let strategy = lines[0]
        .split_whitespace()
        .find_map(|w| w.strip_prefix("strategy="))
        .unwrap_or("?")
        .trim_matches('"');
    println!(
        "depotd's phases (medians of {} PUTs, strategy {strategy}), ms:",
        lines.len()
    );
    for (key, what) in [
        ("receive", "first to last byte of the body, checked"),
        (
            "wait_source",
            "  of which waiting for the network (TLS, HTTP)",
        ),
        ("validate", "  of which tar rules"),
        ("wait_buffer", "  of which waiting for the next thread"),
        ("check", "OVF XML checks, on their own thread"),
        ("hash", "sha256, on its own thread"),
        ("write", "writes, on their own thread"),
        ("seal", "size, trailer, fsync of the new file"),
        ("rename", "rename over the volume, fsync of the directory"),
        ("commit", "commit (copy into the volume, flushes)"),
        ("after_last_byte", "last byte checked to durable"),
        ("total", "first byte asked for to durable"),
    ] {
        let v: Vec<f64> = lines.iter().filter_map(|l| field_secs(l, key)).collect();
        if !v.is_empty() {
            println!("  {:<16} {:>7.1}  {what}", key, median_f64(v) * 1e3);
        }
    }
}

const GIB_STR: &str = "1073741824";

async fn create_volume(
    c: &Client,
    sd: &str,
    img: &str,
    vol: &str,
    size: &str,
    format: &str,
    disk_type: &str,
) -> Result<(), String> {
    call(
        c,
        "Volume.create",
        json!({
            "volumeID": vol,
            "storagedomainID": sd,
            "imageID": img,
            "size": size,
            "volFormat": format,
            "preallocate": "SPARSE",
            "diskType": disk_type,
            "desc": if disk_type == "OVFS" { r#"{"Updated":false,"Disk Description":"OVF_STORE"}"# } else { "depot-bench" },
            "srcImgUUID": BLANK,
            "srcVolUUID": BLANK,
        }),
    )
    .await?;
    Ok(())
}

/// One PUT on a new TLS connection to depotd, until the 200.
async fn put(
    d: &Daemon,
    sd: &str,
    img: &str,
    vol: &str,
    tar: &Path,
    len: u64,
) -> Result<(), String> {
    put_to(&d.tls(), sd, img, vol, tar, len).await
}

/// One PUT on a new TLS connection to `ep`, until the 200.
async fn put_to(
    ep: &Endpoint,
    sd: &str,
    img: &str,
    vol: &str,
    tar: &Path,
    len: u64,
) -> Result<(), String> {
    let c = Client::connect(ep)
        .await
        .map_err(|e| format!("TLS connect to {ep}: {e}"))?;
    let pool = Uuid::new_v4().to_string();
    let headers = [
        ("Storage-Pool-Id", pool.as_str()),
        ("Storage-Domain-Id", sd),
        ("Image-Id", img),
        ("Volume-Id", vol),
    ];
    let f = tokio::fs::File::open(tar)
        .await
        .map_err(|e| e.to_string())?;
    let r = c
        .put_stream(&headers, len, f)
        .await
        .map_err(|e| format!("PUT to {ep}: {e}"))?;
    if r.status != 200 {
        return Err(format!("PUT to {ep}: status {}", r.status));
    }
    Ok(())
}

fn dd(src: &Path, dst: &Path) -> Result<(), String> {
    run_cmd(
        Command::new("dd")
            .arg(format!("if={}", src.display()))
            .arg(format!("of={}", dst.display()))
            .args([
                "bs=1M",
                "iflag=fullblock",
                "oflag=direct",
                "conv=notrunc,fsync",
            ]),
    )
}

fn append(b: &mut tar::Builder<&mut Vec<u8>>, name: &str, data: &[u8]) -> Result<(), String> {
    let mut h = tar::Header::new_ustar();
    h.set_path(name).map_err(|e| e.to_string())?;
    h.set_size(data.len() as u64);
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(1_714_979_289);
    h.set_entry_type(tar::EntryType::Regular);
    h.set_cksum();
    b.append(&h, data).map_err(|e| e.to_string())
}

/// info.json, OVFs until about `size` bytes, metadata.json, the end blocks
/// (512-blocked, as the engine's commons-compress writes). Returns the tar
/// and the number of OVFs.
fn engine_tar(sd: &str, img: &str, vol: &str, size: u64, pad: usize) -> (Vec<u8>, usize) {
    let mut out = Vec::with_capacity(size as usize + MIB as usize);
    let mut ids = Vec::new();
    let n = {
        let mut b = tar::Builder::new(&mut out);
        let info = format!(
            "{{\n  \"Last Updated\" : \"Mon May 06 07:08:09 UTC 2024\",\n  \"Storage Domains\" : [ {{\n    \"uuid\" : \"{sd}\"\n  }} ]\n}}"
        );
        append(&mut b, "info.json", info.as_bytes()).expect("info.json");
        let mut n = 0usize;
        loop {
            let id = Uuid::new_v4().to_string();
            let xml = ovf_xml(&id, &format!("vm-{n}"), n.is_multiple_of(10), img, vol, pad);
            append(&mut b, &format!("{id}.ovf"), xml.as_bytes()).expect("ovf");
            if !n.is_multiple_of(10) {
                ids.push(id);
            }
            n += 1;
            if b.get_ref().len() as u64 + 64 * 1024 >= size {
                break;
            }
        }
        let statuses: Vec<String> = ids.iter().map(|i| format!("\"{i}\" : 0")).collect();
        let meta = format!("{{\n  \"VM Status\" : {{ {} }}\n}}", statuses.join(", "));
        append(&mut b, "metadata.json", meta.as_bytes()).expect("metadata.json");
        b.finish().expect("tar end");
        n
    };
    (out, n)
}

fn ovf_xml(id: &str, name: &str, template: bool, img: &str, vol: &str, pad: usize) -> String {
    const NS: &str = concat!(
        r#"xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1/" "#,
        r#"xmlns:rasd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData" "#,
        r#"xmlns:vssd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_VirtualSystemSettingData" "#,
        r#"xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance""#
    );
    let snapshot = "5e4f3a2b-1c0d-4e9f-8a7b-6c5d4e3f2a1b";
    let kind = if template {
        format!("<TemplateId>{id}</TemplateId><Origin>0</Origin><IsDisabled>false</IsDisabled><TemplateType>TEMPLATE</TemplateType><BaseTemplateId>{id}</BaseTemplateId><TemplateVersionNumber>1</TemplateVersionNumber><TemplateVersionName>base version</TemplateVersionName>")
    } else {
        "<TemplateId>00000000-0000-0000-0000-000000000000</TemplateId><TemplateName>Blank</TemplateName><IsInitilized>true</IsInitilized><Origin>3</Origin><DefaultDisplayType>2</DefaultDisplayType><TrustedService>false</TrustedService>".to_string()
    };
    let description: String = "Restored from backup. ".repeat(pad / 22 + 1)[..pad].to_string();
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?><ovf:Envelope {NS} ovf:version="4.5.0.0"><References><File ovf:href="{img}/{vol}" ovf:id="{vol}" ovf:size="1073741824" ovf:description="Active VM" ovf:disk_storage_type="IMAGE" ovf:cinder_volume_type=""></File></References><Section xsi:type="ovf:NetworkSection_Type"><Info>List of networks</Info><Network ovf:name="ovirtmgmt"></Network></Section><Section xsi:type="ovf:DiskSection_Type"><Info>List of Virtual Disks</Info><Disk ovf:diskId="{vol}" ovf:size="1" ovf:actual_size="0" ovf:vm_snapshot_id="{snapshot}" ovf:parentRef="" ovf:fileRef="{img}/{vol}" ovf:format="http://www.vmware.com/specifications/vmdk.html#sparse" ovf:volume-format="COW" ovf:volume-type="Sparse" ovf:disk-interface="VirtIO_SCSI" ovf:read-only="false" ovf:shareable="false" ovf:boot="true" ovf:pass-discard="false" ovf:incremental-backup="false" ovf:disk-alias="{name}_Disk0" ovf:disk-description="" ovf:wipe-after-delete="false"></Disk></Section><Content ovf:id="out" xsi:type="ovf:VirtualSystem_Type"><Name>{name}</Name><Description>{description}</Description><Comment></Comment><CreationDate>2024/01/02 03:04:05</CreationDate><ExportDate>2024/05/06 07:08:09</ExportDate><DeleteProtected>false</DeleteProtected><SsoMethod>guest_agent</SsoMethod><IsSmartcardEnabled>false</IsSmartcardEnabled><NumOfIoThreads>1</NumOfIoThreads><TimeZone>Etc/GMT</TimeZone><default_boot_sequence>0</default_boot_sequence><Generation>3</Generation><ClusterCompatibilityVersion>4.7</ClusterCompatibilityVersion><VmType>1</VmType><ResumeBehavior>AUTO_RESUME</ResumeBehavior><MinAllocatedMem>1024</MinAllocatedMem><IsStateless>false</IsStateless><AutoStartup>false</AutoStartup><Priority>1</Priority><BiosType>2</BiosType><MaxMemorySizeMb>4096</MaxMemorySizeMb><ClusterName>Default</ClusterName>{kind}<Section ovf:id="{id}" ovf:required="false" xsi:type="ovf:OperatingSystemSection_Type"><Info>Guest Operating System</Info><Description>rhel_9x64</Description></Section><Section xsi:type="ovf:VirtualHardwareSection_Type"><Info>2 CPU, 1024 Memory</Info><System><vssd:VirtualSystemType>ENGINE 4.5.0.0</vssd:VirtualSystemType></System><Item><rasd:Caption>2 virtual cpu</rasd:Caption><rasd:Description>Number of virtual CPU</rasd:Description><rasd:InstanceId>1</rasd:InstanceId><rasd:ResourceType>3</rasd:ResourceType><rasd:num_of_sockets>2</rasd:num_of_sockets><rasd:cpu_per_socket>1</rasd:cpu_per_socket><rasd:threads_per_cpu>1</rasd:threads_per_cpu><rasd:VirtualQuantity>2</rasd:VirtualQuantity></Item><Item><rasd:Caption>1024 MB of memory</rasd:Caption><rasd:Description>Memory Size</rasd:Description><rasd:InstanceId>2</rasd:InstanceId><rasd:ResourceType>4</rasd:ResourceType><rasd:AllocationUnits>MegaBytes</rasd:AllocationUnits><rasd:VirtualQuantity>1024</rasd:VirtualQuantity></Item><Item><rasd:Caption>{name}_Disk0</rasd:Caption><rasd:InstanceId>{vol}</rasd:InstanceId><rasd:ResourceType>17</rasd:ResourceType><rasd:HostResource>{img}/{vol}</rasd:HostResource><rasd:Parent>00000000-0000-0000-0000-000000000000</rasd:Parent><rasd:Template>00000000-0000-0000-0000-000000000000</rasd:Template><rasd:StoragePoolId>b2c3d4e5-f6a7-4b8c-9d0e-1f2a3b4c5d6e</rasd:StoragePoolId><Type>disk</Type><Device>disk</Device><BootOrder>1</BootOrder><IsPlugged>true</IsPlugged><IsReadOnly>false</IsReadOnly></Item><Item><rasd:Caption>Ethernet adapter on ovirtmgmt</rasd:Caption><rasd:InstanceId>7a6b5c4d-3e2f-4a1b-8c9d-0e1f2a3b4c5d</rasd:InstanceId><rasd:ResourceType>10</rasd:ResourceType><rasd:Connection>ovirtmgmt</rasd:Connection><rasd:Name>nic1</rasd:Name><rasd:MACAddress>56:6f:11:22:33:44</rasd:MACAddress><Type>interface</Type><Device>bridge</Device><BootOrder>0</BootOrder><IsPlugged>true</IsPlugged></Item></Section><Section xsi:type="ovf:SnapshotsSection_Type"><Snapshot ovf:id="{snapshot}"><Type>ACTIVE</Type><Description>Active VM</Description><CreationDate>2024/01/02 03:04:05</CreationDate></Snapshot></Section></Content></ovf:Envelope>"#
    )
}
