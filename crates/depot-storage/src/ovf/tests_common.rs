//! Test material: engine-shaped archives and OVFs (written for these tests
//! from the engine's documented format), hand-made tar headers for the bad
//! cases.

pub const VM_ID: &str = "3c1e5b7a-8f0d-4e6b-a1c2-9d8e7f6a5b40";
pub const TPL_ID: &str = "a7d3f1e2-5b6c-4d8e-9f0a-1b2c3d4e5f60";
pub const IMG1: &str = "c6f9f2b3-0d3c-4a8e-9a57-6f3c1b2a9e10";
pub const IMG2: &str = "d1e2f3a4-b5c6-4d7e-8f90-a1b2c3d4e5f6";
pub const VOL1: &str = "0f6e1d2c-3b4a-4958-8776-655443322110";
pub const VOL2: &str = "1a2b3c4d-5e6f-4a0b-9c1d-2e3f4a5b6c7d";
pub const VOL3: &str = "9e8d7c6b-5a49-4837-a261-5f4e3d2c1b0a";
pub const SD_ID: &str = "75f8a1bb-4504-4314-91ca-d9365a30692b";

/// An OVF with an external entity (XXE).
pub const XXE_OVF: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<!DOCTYPE foo [ <!ENTITY xxe SYSTEM "file:///etc/shadow"> ]>
<ovf:Envelope xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1/"><Content><Name>&xxe;</Name></Content></ovf:Envelope>"#;

/// The "billion laughs" entity expansion bomb.
pub const BOMB_OVF: &str = r#"<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
]>
<ovf:Envelope xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1/"><Content><Name>&lol4;</Name></Content></ovf:Envelope>"#;

const NS: &str = concat!(
    r#"xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1/" "#,
    r#"xmlns:rasd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData" "#,
    r#"xmlns:vssd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_VirtualSystemSettingData" "#,
    r#"xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance""#
);

/// An OVF shaped like the engine's for a VM or template: References,
/// NetworkSection, DiskSection (one Disk per volume), then Content with the
/// general data, the OS section and the hardware section.
fn ovf(id: &str, name: &str, disks: &[(&str, &str)], template: bool) -> String {
    let mut refs = String::new();
    let mut disk_elems = String::new();
    let mut items = String::new();
    for (img, vol) in disks {
        refs.push_str(&format!(
            r#"<File ovf:href="{img}/{vol}" ovf:id="{vol}" ovf:size="1073741824" ovf:description="" ovf:disk_storage_type="IMAGE" ovf:cinder_volume_type=""></File>"#
        ));
        disk_elems.push_str(&format!(
            r#"<Disk ovf:diskId="{vol}" ovf:size="10" ovf:actual_size="1" ovf:vm_snapshot_id="5e4f3a2b-1c0d-4e9f-8a7b-6c5d4e3f2a1b" ovf:parentRef="" ovf:fileRef="{img}/{vol}" ovf:format="http://www.vmware.com/specifications/vmdk.html#sparse" ovf:volume-format="COW" ovf:volume-type="Sparse" ovf:disk-interface="VirtIO_SCSI" ovf:read-only="false" ovf:shareable="false" ovf:boot="true" ovf:pass-discard="false" ovf:disk-alias="{name}_Disk1" ovf:disk-description="" ovf:wipe-after-delete="false"></Disk>"#
        ));
        items.push_str(&format!(
            r#"<Item><rasd:Caption>{name}_Disk1</rasd:Caption><rasd:InstanceId>{vol}</rasd:InstanceId><rasd:ResourceType>17</rasd:ResourceType><rasd:HostResource>{img}/{vol}</rasd:HostResource><rasd:Parent>00000000-0000-0000-0000-000000000000</rasd:Parent><rasd:Template>00000000-0000-0000-0000-000000000000</rasd:Template><rasd:ApplicationList></rasd:ApplicationList><rasd:StorageId>{SD_ID}</rasd:StorageId><rasd:StoragePoolId>b2c3d4e5-f6a7-4b8c-9d0e-1f2a3b4c5d6e</rasd:StoragePoolId><rasd:CreationDate>2024/01/02 03:04:05</rasd:CreationDate><rasd:LastModified>2024/01/02 03:04:05</rasd:LastModified></Item>"#
        ));
    }
    let kind_data = if template {
        format!(
            "<TemplateId>{id}</TemplateId><Origin>0</Origin><default_display_type>2</default_display_type><IsDisabled>false</IsDisabled><TrustedService>false</TrustedService><TemplateType>TEMPLATE</TemplateType><BaseTemplateId>{id}</BaseTemplateId><TemplateVersionNumber>1</TemplateVersionNumber><TemplateVersionName>base version</TemplateVersionName><IsSealed>false</IsSealed>"
        )
    } else {
        "<TemplateId>00000000-0000-0000-0000-000000000000</TemplateId><TemplateName>Blank</TemplateName><IsInitilized>true</IsInitilized><Origin>3</Origin><DefaultDisplayType>2</DefaultDisplayType><TrustedService>false</TrustedService><UseLatestVersion>false</UseLatestVersion>".to_string()
    };
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?><ovf:Envelope {NS} ovf:version="4.5.0.0"><References>{refs}</References><Section xsi:type="ovf:NetworkSection_Type"><Info>List of networks</Info><Network ovf:name="ovirtmgmt"></Network></Section><Section xsi:type="ovf:DiskSection_Type"><Info>List of Virtual Disks</Info>{disk_elems}</Section><Content ovf:id="out" xsi:type="ovf:VirtualSystem_Type"><Name>{name}</Name><Description></Description><Comment></Comment><CreationDate>2024/01/02 03:04:05</CreationDate><ExportDate>2024/05/06 07:08:09</ExportDate><DeleteProtected>false</DeleteProtected><IsSmartcardEnabled>false</IsSmartcardEnabled><TimeZone>Etc/GMT</TimeZone><default_boot_sequence>0</default_boot_sequence><Generation>3</Generation><ClusterCompatibilityVersion>4.7</ClusterCompatibilityVersion><VmType>1</VmType><MinAllocatedMem>1024</MinAllocatedMem><IsStateless>false</IsStateless><IsRunAndPause>false</IsRunAndPause><AutoStartup>false</AutoStartup><Priority>1</Priority><BiosType>2</BiosType><MaxMemorySizeMb>4096</MaxMemorySizeMb><ClusterName>Default</ClusterName>{kind_data}<Section ovf:id="{id}" ovf:required="false" xsi:type="ovf:OperatingSystemSection_Type"><Info>Guest Operating System</Info><Description>rhel_9x64</Description></Section><Section xsi:type="ovf:VirtualHardwareSection_Type"><Info>2 CPU, 1024 Memory</Info><System><vssd:VirtualSystemType>ENGINE 4.5.0.0</vssd:VirtualSystemType></System><Item><rasd:Caption>2 virtual cpu</rasd:Caption><rasd:Description>Number of virtual CPU</rasd:Description><rasd:InstanceId>1</rasd:InstanceId><rasd:ResourceType>3</rasd:ResourceType><rasd:num_of_sockets>2</rasd:num_of_sockets><rasd:cpu_per_socket>1</rasd:cpu_per_socket></Item>{items}<Item><rasd:Caption>Ethernet adapter on ovirtmgmt</rasd:Caption><rasd:InstanceId>7a6b5c4d-3e2f-4a1b-8c9d-0e1f2a3b4c5d</rasd:InstanceId><rasd:ResourceType>10</rasd:ResourceType><rasd:Name>nic1</rasd:Name><rasd:MACAddress>56:6f:11:22:33:44</rasd:MACAddress></Item></Section></Content></ovf:Envelope>"#
    )
}

pub fn vm_ovf(id: &str, name: &str, disks: &[(&str, &str)]) -> String {
    ovf(id, name, disks, false)
}

pub fn template_ovf(id: &str, name: &str, disks: &[(&str, &str)]) -> String {
    ovf(id, name, disks, true)
}

pub fn info_json() -> String {
    format!(
        "{{\n  \"Last Updated\" : \"Mon May 06 07:08:09 UTC 2024\",\n  \"Storage Domains\" : [ {{\n    \"uuid\" : \"{SD_ID}\"\n  }} ]\n}}"
    )
}

pub fn append<W: std::io::Write>(b: &mut tar::Builder<W>, name: &str, data: &[u8]) {
    let mut h = tar::Header::new_ustar();
    h.set_path(name).unwrap();
    h.set_size(data.len() as u64);
    h.set_mode(0o644);
    h.set_mtime(1_714_979_289);
    h.set_entry_type(tar::EntryType::Regular);
    h.set_cksum();
    b.append(&h, data).unwrap();
}

/// An archive like the engine's: info.json, `n` OVFs (the first a template,
/// the others VMs `vm-1`, `vm-2`, ...), metadata.json; its length is a
/// multiple of 512 and not of 4096. Returns the archive and the entity ids.
pub fn engine_tar(n: usize) -> (Vec<u8>, Vec<String>) {
    let ids: Vec<String> = (0..n)
        .map(|i| format!("{:08x}-1111-4222-8333-{:012x}", i + 1, (i + 1) * 7919))
        .collect();
    for pad in 0.. {
        let mut out = Vec::new();
        {
            let mut b = tar::Builder::new(&mut out);
            append(&mut b, "info.json", info_json().as_bytes());
            for (i, id) in ids.iter().enumerate() {
                let xml = if i == 0 {
                    template_ovf(id, "rhel9-base", &[(IMG2, VOL3)])
                } else {
                    vm_ovf(id, &format!("vm-{i}"), &[(IMG1, VOL1), (IMG1, VOL2)])
                };
                append(&mut b, &format!("{id}.ovf"), xml.as_bytes());
            }
            let statuses: Vec<String> = ids[1.min(n)..]
                .iter()
                .map(|id| format!("\"{id}\" : 1"))
                .collect();
            let meta = format!(
                "{{\n  \"VM Status\" : {{ {} }}{}\n}}",
                statuses.join(", "),
                " ".repeat(pad * 600)
            );
            append(&mut b, "metadata.json", meta.as_bytes());
            b.finish().unwrap();
        }
        if out.len() % 4096 != 0 {
            return (out, ids);
        }
    }
    unreachable!()
}

/// An engine-shaped archive of at least `min_size` bytes: info.json, as
/// many OVFs as it takes (every tenth a template), metadata.json; its
/// length is not a multiple of 4096. Returns the archive and the number of
/// OVFs.
pub fn big_engine_tar(min_size: usize) -> (Vec<u8>, usize) {
    for pad in 0.. {
        let mut out = Vec::with_capacity(min_size + (64 << 10));
        let mut n = 0;
        {
            let mut b = tar::Builder::new(&mut out);
            append(&mut b, "info.json", info_json().as_bytes());
            while b.get_ref().len() < min_size {
                let id = format!("{:08x}-2222-4333-8444-{:012x}", n + 1, (n + 1) * 104729);
                let xml = if n % 10 == 0 {
                    template_ovf(&id, &format!("tpl-{n}"), &[(IMG2, VOL3)])
                } else {
                    vm_ovf(&id, &format!("vm-{n}"), &[(IMG1, VOL1), (IMG1, VOL2)])
                };
                append(&mut b, &format!("{id}.ovf"), xml.as_bytes());
                n += 1;
            }
            let meta = format!("{{}}{}", " ".repeat(pad * 600));
            append(&mut b, "metadata.json", meta.as_bytes());
            b.finish().unwrap();
        }
        // Like the engine's, not a multiple of 4096.
        if out.len() % 4096 != 0 {
            return (out, n);
        }
    }
    unreachable!()
}

/// Fixes the checksum of the header in `block[..512]`.
pub fn fix_checksum(block: &mut [u8]) {
    block[148..156].copy_from_slice(b"        ");
    let sum: u32 = block[..512].iter().map(|&b| u32::from(b)).sum();
    block[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
}

/// A ustar header with any name and type, then `data` padded to 512.
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
    fix_checksum(&mut h);
    h.extend_from_slice(data);
    h.resize(h.len().div_ceil(512) * 512, 0);
    h
}

/// A pax extended header ('x') with these records.
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

/// Entries followed by the two end blocks.
pub fn raw_tar(entries: &[Vec<u8>]) -> Vec<u8> {
    let mut out: Vec<u8> = entries.concat();
    out.extend_from_slice(&[0u8; 1024]);
    out
}

/// A volume file in a temporary directory.
pub struct Vol {
    pub _dir: tempfile::TempDir,
    pub path: std::path::PathBuf,
}

/// A volume file of `size` bytes filled with a pattern (stale data, like a
/// reused volume), mode 0660 like depot's volumes.
pub fn volume(size: u64) -> Vol {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("6f1b4e0a-0d1c-4e4b-9c5e-2b7f3a9d1c00");
    let data: Vec<u8> = (0..size).map(|i| (i % 251) as u8 | 1).collect();
    std::fs::write(&path, data).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o660)).unwrap();
    Vol { _dir: dir, path }
}
