use super::*;
use depot_api::storage::{SdUuid, SpUuid};
use depot_api::Code;

const EXAMPLE: &str = include_str!("../../../docs/examples/dr-mapping.toml");

const SD1: &str = "f0a1b2c3-d4e5-4f60-8172-93a4b5c6d7e8";
const SD2: &str = "0b1c2d3e-4f50-4617-8293-a4b5c6d7e8f9";

/// A small valid file: the example's pools and hosts (all it has before
/// its first connection) and `connections`; each refusal test changes
/// one thing in it.
fn small(connections: &str) -> String {
    let head = EXAMPLE
        .find("[[connections]]")
        .expect("the example file has connections");
    format!("{}\n{connections}", &EXAMPLE[..head])
}

fn nfs(name: &str, sd: &str, primary: &str, secondary: &str) -> String {
    format!(
        r#"
[[connections]]
name = "{name}"
type = "NFS"
domains = ["{sd}"]
primary = {primary}
secondary = {secondary}
"#
    )
}

const P: &str = r#"{ address = "nfs1.example.com", path = "/export/a" }"#;
const S: &str = r#"{ address = "nfs2.example.com", path = "/export/a" }"#;

fn refused(text: &str) -> MappingError {
    match parse_toml(text) {
        Ok(m) => panic!("accepted: {m:#?}"),
        Err(e) => e,
    }
}

fn refused_ansible(text: &str) -> MappingError {
    match parse_ansible(text) {
        Ok(m) => panic!("accepted: {m:#?}"),
        Err(e) => e,
    }
}

#[test]
fn the_example_file_parses() {
    let m = parse_toml(EXAMPLE).unwrap();
    assert_eq!(m.format(), Format::Toml);
    assert_eq!(m.primary_pool().name.as_deref(), Some("Prod"));
    assert_eq!(m.secondary_pool().name.as_deref(), Some("Recovery"));
    assert_eq!(m.hosts().this_host().map(HostId::get), Some(3));
    assert_eq!(m.hosts().primary_site().len(), 2);
    let types: Vec<_> = m
        .connections()
        .iter()
        .map(|c| c.connection_type())
        .collect();
    assert_eq!(
        types,
        [
            ConnectionType::Nfs,
            ConnectionType::GlusterFs,
            ConnectionType::PosixFs,
            ConnectionType::Iscsi,
            ConnectionType::Fcp,
            ConnectionType::LocalFs
        ]
    );
    let nfs = &m.connections()[0];
    assert_eq!(
        nfs.primary().connection(),
        "nfs.prod.example.com:/exports/data"
    );
    assert_eq!(
        nfs.secondary().connection(),
        "nfs.dr.example.com:/exports/data"
    );
    assert_eq!(nfs.domains(), [SD1.parse::<SdUuid>().unwrap()]);
    let Endpoint::Iscsi {
        port,
        targets,
        luns,
        ..
    } = m.connections()[3].secondary()
    else {
        panic!("not iSCSI");
    };
    assert_eq!(*port, ISCSI_PORT, "the default port");
    assert_eq!(targets[0].as_str(), "iqn.2017-07.com.example.dr:444");
    assert_eq!(luns[0].as_str(), "36001405961a7f95e6aa461b8dba53052");
    assert!(m.connections()[4].backup());
    assert!(m.warnings().is_empty());
}

#[test]
fn paths_are_normalized() {
    let m = parse_toml(&small(&nfs(
        "a",
        SD1,
        r#"{ address = "NFS1.example.com", path = "/export//a/./" }"#,
        S,
    )))
    .unwrap();
    assert_eq!(
        m.connections()[0].primary().connection(),
        "nfs1.example.com:/export/a"
    );
}

#[test]
fn failback_is_the_mapping_reversed() {
    let m = parse_toml(EXAMPLE).unwrap();
    let back = m.reversed();
    assert_eq!(back.primary_pool(), m.secondary_pool());
    assert_eq!(back.secondary_pool(), m.primary_pool());
    assert_eq!(back.hosts().primary_site(), m.hosts().secondary_site());
    assert_eq!(back.hosts().secondary_site(), m.hosts().primary_site());
    assert_eq!(
        back.hosts().this_host(),
        None,
        "this host is of the other site"
    );
    for (f, b) in m.connections().iter().zip(back.connections()) {
        assert_eq!(b.primary(), f.secondary());
        assert_eq!(b.secondary(), f.primary());
        assert_eq!(b.domains(), f.domains());
        assert_eq!(b.backup(), f.backup());
        assert_eq!(b.name(), f.name());
    }
    // Twice is the original, but for this host's id.
    let again = back.reversed();
    assert_eq!(again.connections(), m.connections());
    assert_eq!(again.primary_pool(), m.primary_pool());
    assert_eq!(again.hosts().primary_site(), m.hosts().primary_site());
}

#[test]
fn refuses_a_missing_secondary() {
    let text = small(
        r#"
[[connections]]
name = "lonely"
type = "NFS"
domains = ["f0a1b2c3-d4e5-4f60-8172-93a4b5c6d7e8"]
primary = { address = "nfs1.example.com", path = "/export/a" }
"#,
    );
    let e = refused(&text);
    assert_eq!(e.problem, Problem::MissingSecondary);
    assert_eq!(e.entry, "connection 'lonely'");
    assert_eq!(e.code(), Code::DrMissingSecondary);
    assert!(
        e.to_string().contains("connection 'lonely': no secondary"),
        "{e}"
    );
}

#[test]
fn refuses_a_domain_listed_twice() {
    let text = small(&format!(
        "{}{}",
        nfs("a", SD1, P, S),
        nfs(
            "b",
            SD1,
            r#"{ address = "nfs1.example.com", path = "/export/b" }"#,
            r#"{ address = "nfs2.example.com", path = "/export/b" }"#
        )
    ));
    let e = refused(&text);
    assert_eq!(e.entry, "connection 'b'");
    assert_eq!(
        e.problem,
        Problem::DuplicateDomain {
            sd: SD1.parse().unwrap(),
            other: "connection 'a'".into()
        }
    );
    assert_eq!(e.code(), Code::DrDuplicateEntry);
    // And twice in one entry.
    let text = small(&nfs("a", SD1, P, S).replace(
        &format!(r#"domains = ["{SD1}"]"#),
        &format!(r#"domains = ["{SD1}", "{SD1}"]"#),
    ));
    assert!(matches!(
        refused(&text).problem,
        Problem::DuplicateDomain { .. }
    ));
}

#[test]
fn refuses_the_same_primary_or_secondary_twice() {
    let other = r#"{ address = "nfs3.example.com", path = "/export/a" }"#;
    let e = refused(&small(&format!(
        "{}{}",
        nfs("a", SD1, P, S),
        nfs("b", SD2, P, other)
    )));
    assert_eq!(e.entry, "connection 'b'");
    assert_eq!(
        e.problem,
        Problem::DuplicatePrimary("connection 'a'".into())
    );
    assert_eq!(e.code(), Code::DrDuplicateEntry);
    let e = refused(&small(&format!(
        "{}{}",
        nfs("a", SD1, P, S),
        nfs("b", SD2, other, S)
    )));
    assert_eq!(
        e.problem,
        Problem::DuplicateSecondary("connection 'a'".into())
    );
    // Two entries of one name are ambiguous too.
    let e = refused(&small(&format!(
        "{}{}",
        nfs("a", SD1, P, S),
        nfs("a", SD2, other, other)
    )));
    assert_eq!(e.code(), Code::DrMappingInvalid);
}

#[test]
fn refuses_an_unknown_type() {
    let e = refused(&small(&nfs("a", SD1, P, S).replace("\"NFS\"", "\"CIFS\"")));
    assert_eq!(e.problem, Problem::UnknownType("CIFS".into()));
    assert_eq!(e.entry, "connection 'a'");
    assert_eq!(e.code(), Code::DrUnknownConnectionType);
    // Case does not matter for a known one.
    parse_toml(&small(&nfs("a", SD1, P, S).replace("\"NFS\"", "\"nfs\""))).unwrap();
}

#[test]
fn refuses_path_escapes() {
    for (primary, secondary, side, why) in [
        (
            r#"{ address = "a.example.com", path = "export/a" }"#,
            S,
            "primary",
            "not an absolute path",
        ),
        (
            r#"{ address = "a.example.com", path = "/export/../etc" }"#,
            S,
            "primary",
            "'..'",
        ),
        (
            P,
            r#"{ address = "b.example.com", path = "export/a" }"#,
            "secondary",
            "not an absolute path",
        ),
        (
            P,
            r#"{ address = "b.example.com", path = "/export/a/.." }"#,
            "secondary",
            "'..'",
        ),
    ] {
        let e = refused(&small(&nfs("a", SD1, primary, secondary)));
        assert_eq!(e.entry, format!("connection 'a' {side}"), "{e}");
        assert_eq!(e.code(), Code::DrPathEscape, "{e}");
        assert!(e.to_string().contains(why), "{e}");
    }
    // LOCALFS the same.
    let local = small(
        r#"
[[connections]]
name = "l"
type = "LOCALFS"
domains = ["f0a1b2c3-d4e5-4f60-8172-93a4b5c6d7e8"]
primary = { path = "/srv/a" }
secondary = { path = "srv/b" }
"#,
    );
    let e = refused(&local);
    assert_eq!(
        (e.entry.as_str(), e.code()),
        ("connection 'l' secondary", Code::DrPathEscape)
    );
}

#[test]
fn refuses_a_secondary_equal_to_its_primary() {
    let e = refused(&small(&nfs(
        "a",
        SD1,
        P,
        r#"{ address = "NFS1.example.com", path = "/export//a/" }"#,
    )));
    assert_eq!(e.entry, "connection 'a'");
    assert_eq!(e.code(), Code::DrSecondaryIsPrimary);
    assert!(e.to_string().contains("nfs1.example.com:/export/a"), "{e}");
}

fn iscsi(primary_extra: &str) -> String {
    small(&format!(
        r#"
[[connections]]
name = "san"
type = "iSCSI"
domains = ["{SD1}"]
[connections.primary]
address = "10.0.0.1"
{primary_extra}
[connections.secondary]
address = "10.0.0.2"
targets = ["iqn.2017-07.com.example:dr"]
luns = ["36001405961a7f95e6aa461b8dba53052"]
"#
    ))
}

#[test]
fn refuses_iscsi_without_target_or_luns() {
    parse_toml(&iscsi(
        r#"targets = ["iqn.2017-10.com.example:prod"]
luns = ["360014056a2be431c0fd46c4bdce92b66"]"#,
    ))
    .unwrap();
    let e = refused(&iscsi(r#"luns = ["360014056a2be431c0fd46c4bdce92b66"]"#));
    assert_eq!(e.problem, Problem::IscsiNoTarget);
    assert_eq!(e.entry, "connection 'san' primary");
    assert_eq!(e.code(), Code::DrBlockConnectionIncomplete);
    let e = refused(&iscsi(r#"targets = ["iqn.2017-10.com.example:prod"]"#));
    assert_eq!(e.problem, Problem::NoLuns("iSCSI"));
    assert_eq!(e.code(), Code::DrBlockConnectionIncomplete);
    let e = refused(&iscsi(
        r#"targets = ["not-an-iqn"]
luns = ["360014056a2be431c0fd46c4bdce92b66"]"#,
    ));
    assert_eq!(e.code(), Code::DrMappingInvalid);
    let e = refused(&iscsi(
        r#"port = 70000
targets = ["iqn.2017-10.com.example:prod"]
luns = ["360014056a2be431c0fd46c4bdce92b66"]"#,
    ));
    assert!(e.to_string().contains("port"), "{e}");
}

#[test]
fn iscsi_chap_takes_both_credentials_and_never_prints_the_password() {
    const T: &str = r#"targets = ["iqn.2017-10.com.example:prod"]
luns = ["360014056a2be431c0fd46c4bdce92b66"]"#;
    let m = parse_toml(&iscsi(&format!(
        "{T}\nusername = \"dr\"\npassword = \"s3cret-of-the-site\""
    )))
    .unwrap();
    let Endpoint::Iscsi {
        chap: Some(chap), ..
    } = m.connections()[0].primary()
    else {
        panic!("no CHAP: {m:?}");
    };
    assert_eq!(chap.username, "dr");
    assert_eq!(chap.password.expose(), "s3cret-of-the-site");
    let shown = format!("{m:?} {}", m.connections()[0].primary().describe());
    assert!(!shown.contains("s3cret"), "{shown}");
    // One without the other: named, the other's value never quoted.
    let e = refused(&iscsi(&format!("{T}\nusername = \"dr\"")));
    assert_eq!(e.problem, Problem::Missing("password"));
    assert_eq!(e.code(), Code::DrMappingInvalid);
    let e = refused(&iscsi(&format!("{T}\npassword = \"s3cret-of-the-site\"")));
    assert_eq!(e.problem, Problem::Missing("username"));
    assert!(!e.to_string().contains("s3cret"), "{e}");
    // Not a string: refused without quoting it.
    let e = refused(&iscsi(&format!(
        "{T}\nusername = \"dr\"\npassword = 12345678"
    )));
    assert_eq!(e.code(), Code::DrMappingUnreadable);
    assert!(!e.to_string().contains("12345678"), "{e}");
    // Credentials belong to an iSCSI login only.
    let e = refused(&small(&nfs(
        "data",
        SD1,
        r#"{ address = "nfs1.example.com", path = "/export/a", username = "u", password = "p" }"#,
        S,
    )));
    assert_eq!(e.code(), Code::DrMappingInvalid);
    assert!(e.to_string().contains("CHAP"), "{e}");
    // The same target twice is a duplicate whatever the credentials.
    let twice = format!(
        "{}{}",
        iscsi(&format!("{T}\nusername = \"a\"\npassword = \"x\"")),
        r#"
[[connections]]
name = "san2"
type = "iSCSI"
domains = ["0b1c2d3e-4f50-4617-8293-a4b5c6d7e8f9"]
[connections.primary]
address = "10.0.0.1"
targets = ["iqn.2017-10.com.example:prod"]
luns = ["360014056a2be431c0fd46c4bdce92b66"]
[connections.secondary]
address = "10.0.0.3"
targets = ["iqn.2017-07.com.example:dr2"]
luns = ["36001405961a7f95e6aa461b8dba53053"]
"#
    );
    assert_eq!(refused(&twice).code(), Code::DrDuplicateEntry);
}

#[test]
fn refuses_a_localfs_secondary_that_is_not_a_directory_path() {
    for (secondary, why) in [
        (
            r#"{ address = "nfs2.example.com", path = "/srv/b" }"#,
            "address",
        ),
        (r#"{ path = "nfs2.example.com:/srv/b" }"#, "remote spec"),
        (r#"{ path = "/" }"#, "root"),
        (r#"{ path = "/dev/sdb" }"#, "/dev"),
    ] {
        let text = small(&format!(
            r#"
[[connections]]
name = "l"
type = "LOCALFS"
domains = ["{SD1}"]
primary = {{ path = "/srv/a" }}
secondary = {secondary}
"#
        ));
        let e = refused(&text);
        assert_eq!(e.entry, "connection 'l' secondary", "{e}");
        assert_eq!(e.code(), Code::DrLocalNotDirectory, "{e}");
        assert!(e.to_string().contains(why), "{why}: {e}");
    }
}

#[test]
fn refuses_other_bad_values() {
    // A typo in a key is refused, not skipped.
    let e = refused(&small(&nfs("a", SD1, P, S)).replace("primary = {", "primray = {"));
    assert_eq!(e.code(), Code::DrMappingUnreadable);
    // Not TOML at all.
    assert_eq!(refused("version = ").code(), Code::DrMappingUnreadable);
    // Another version.
    let e = refused(&small(&nfs("a", SD1, P, S)).replace("version = 1", "version = 2"));
    assert_eq!(e.problem, Problem::Version(2));
    // A bad UUID, no domains, no connections, no pool id.
    let e = refused(&small(&nfs("a", "not-a-uuid", P, S)));
    assert_eq!(
        (e.entry.as_str(), e.code()),
        ("connection 'a'", Code::DrMappingInvalid)
    );
    let e = refused(&small(
        &nfs("a", SD1, P, S).replace(&format!("\"{SD1}\""), ""),
    ));
    assert_eq!(e.problem, Problem::Missing("domains"));
    assert_eq!(refused(&small("")).problem, Problem::Missing("connections"));
    let e = refused(
        &small(&nfs("a", SD1, P, S)).replace("id = \"5849b030-626e-47cb-ad90-3ce782d831b3\"\n", ""),
    );
    assert_eq!(
        (e.entry.as_str(), e.problem.clone()),
        ("pool.primary", Problem::Missing("id"))
    );
    // Hosts: out of range, in both sites, this host on the lost site.
    for (from, to) in [
        ("primary_site = [1, 2]", "primary_site = [1, 2001]"),
        ("primary_site = [1, 2]", "primary_site = [1, 3]"),
        ("this_host = 3", "this_host = 1"),
        ("primary_site = [1, 2]", "primary_site = [1, 1]"),
    ] {
        let e = refused(&small(&nfs("a", SD1, P, S)).replace(from, to));
        assert_eq!(
            (e.entry.as_str(), e.code()),
            ("hosts", Code::DrMappingInvalid),
            "{to}: {e}"
        );
    }
    // A missing address.
    let e = refused(&small(&nfs("a", SD1, r#"{ path = "/export/a" }"#, S)));
    assert_eq!(e.problem, Problem::Missing("address"));
}

// ---- the Ansible role's var file ----

/// A var file as `ovirt-dr generate` writes it and an admin fills it in
/// (the keys of roles/disaster_recovery: examples/disaster_recovery_vars.yml
/// and files/generate_mapping.py).
const ANSIBLE: &str = r#"---
dr_sites_primary_url: "https://engine1.example.com/ovirt-engine/api"
dr_sites_primary_username: "admin@internal"
dr_sites_primary_ca_file: "/etc/pki/ovirt-engine/ca.pem"

dr_sites_secondary_url: "https://engine2.example.com/ovirt-engine/api"
dr_sites_secondary_username: "admin@internal"
dr_sites_secondary_ca_file: "/etc/pki/ovirt-engine/ca.pem"

dr_import_storages:
  - dr_domain_type: nfs
    dr_wipe_after_delete: False
    dr_backup: False
    dr_critical_space_action_blocker: 5
    dr_storage_domain_type: data
    dr_warning_low_space: 10
    dr_primary_name: primary_master_storage
    dr_primary_master_domain: True
    dr_primary_dc_name: Prod
    dr_primary_path: /export/path1
    dr_primary_address: 10.35.0.1
    # Fill in the empty properties related to the secondary site
    dr_secondary_name: secondary_master_storage
    dr_secondary_master_domain: True
    dr_secondary_dc_name: Recovery
    dr_secondary_path: /export/path1
    dr_secondary_address: 10.35.8.1

  - dr_domain_type: glusterfs
    dr_wipe_after_delete: False
    dr_backup: "True"
    dr_critical_space_action_blocker: 5
    dr_storage_domain_type: data
    dr_warning_low_space: 10
    dr_primary_name: gluster_vms
    dr_primary_master_domain: False
    dr_primary_dc_name: Prod
    dr_primary_path: vmstore
    dr_primary_address: gluster1.prod.example.com
    dr_secondary_name: gluster_vms
    dr_secondary_master_domain: False
    dr_secondary_dc_name: Recovery
    dr_secondary_path: /vmstore
    dr_secondary_address: gluster1.dr.example.com

  - dr_domain_type: posixfs
    dr_primary_name: ceph_data
    dr_primary_dc_name: Prod
    dr_primary_path: /volumes/ovirt
    dr_primary_address: ceph-mon.prod.example.com
    dr_primary_vfs_type: ceph
    dr_secondary_name: ceph_data
    dr_secondary_dc_name: Recovery
    dr_secondary_path: /volumes/ovirt
    dr_secondary_address: ceph-mon.dr.example.com
    dr_secondary_vfs_type: ceph

  - dr_domain_type: iscsi
    dr_wipe_after_delete: False
    dr_backup: False
    dr_critical_space_action_blocker: 1
    dr_storage_domain_type: data
    dr_warning_low_space: 5
    dr_primary_name: scsi_domain
    dr_primary_master_domain: False
    dr_primary_dc_name: Prod
    dr_discard_after_delete: False
    dr_domain_id: aa92cc71-1b88-4998-a755-970ef8a638ea
    dr_primary_address: 10.35.1.10
    dr_primary_port: 3260
    dr_primary_target: ["iqn.2017-10.com.primary.redhat:444"]
    dr_secondary_name: scsi_domain
    dr_secondary_master_domain: False
    dr_secondary_dc_name: Recovery
    dr_secondary_address: 10.35.9.10
    dr_secondary_port: "3260"
    # target example: ["target1","target2","target3"]
    dr_secondary_target: ["iqn.2017-07.com.recovery.redhat:444", "iqn.2017-07.com.recovery.redhat:445"]
    dr_secondary_username: chap-user
    dr_secondary_password: chap-secret

  - dr_domain_type: fcp
    dr_wipe_after_delete: False
    dr_backup: False
    dr_critical_space_action_blocker: 5
    dr_storage_domain_type: data
    dr_warning_low_space: 10
    dr_primary_name: fc_domain
    dr_primary_master_domain: False
    dr_primary_dc_name: Prod
    dr_discard_after_delete: False
    dr_domain_id: 3e4f5061-7283-494a-b5c6-d7e8f90a1b2c
    dr_secondary_name: fc_domain
    dr_secondary_master_domain: False
    dr_secondary_dc_name: Recovery

# Mapping for cluster
dr_cluster_mappings:
  - primary_name: cluster_prod
    secondary_name: cluster_recovery

dr_affinity_group_mappings:
  - primary_name: primary_affinity
    secondary_name: secondary_affinity

dr_network_mappings:
  - primary_network_name: ovirtmgmt
    primary_profile_name: ovirtmgmt
    primary_profile_id: e368cbd4-59d9-4a7e-86c1-e405c916a836
    secondary_network_name: ovirtmgmt
    secondary_profile_name: ovirtmgmt
    secondary_profile_id: e368cbd4-59d9-4a7e-86c1-e405c916a836

dr_lun_mappings:
  - primary_logical_unit_id: 360014056a2be431c0fd46c4bdce92b66
    primary_storage_type: iscsi
    secondary_logical_unit_id: 36001405961a7f95e6aa461b8dba53052
    secondary_storage_type: iscsi
"#;

#[test]
fn the_ansible_var_file_reads_into_the_same_mapping() {
    let m = parse_ansible(ANSIBLE).unwrap();
    assert_eq!(m.format(), Format::Ansible);
    assert_eq!(m.primary_pool().name.as_deref(), Some("Prod"));
    assert_eq!(
        m.primary_pool().id,
        None,
        "the role knows data centers by name"
    );
    assert_eq!(m.secondary_pool().name.as_deref(), Some("Recovery"));
    assert_eq!(m.hosts().this_host(), None);
    let c = m.connections();
    assert_eq!(c.len(), 5);
    assert_eq!(
        c[0].name(),
        "dr_import_storages[0] ('primary_master_storage')"
    );
    assert_eq!(c[0].connection_type(), ConnectionType::Nfs);
    assert_eq!(c[0].primary().connection(), "10.35.0.1:/export/path1");
    assert_eq!(c[0].secondary().connection(), "10.35.8.1:/export/path1");
    assert!(c[0].domains().is_empty(), "file entries name no UUID");
    // A gluster volume with or without its slash.
    assert_eq!(
        c[1].primary().connection(),
        "gluster1.prod.example.com:/vmstore"
    );
    assert_eq!(
        c[1].secondary().connection(),
        "gluster1.dr.example.com:/vmstore"
    );
    assert!(c[1].backup());
    let Endpoint::PosixFs { vfs_type, .. } = c[2].secondary() else {
        panic!("not POSIXFS")
    };
    assert_eq!(vfs_type, "ceph");
    assert_eq!(
        c[3].domains(),
        ["aa92cc71-1b88-4998-a755-970ef8a638ea"
            .parse::<SdUuid>()
            .unwrap()]
    );
    let Endpoint::Iscsi {
        address,
        port,
        targets,
        luns,
        chap,
    } = c[3].secondary()
    else {
        panic!("not iSCSI")
    };
    assert_eq!((address.as_str(), *port), ("10.35.9.10", 3260));
    let chap = chap.as_ref().expect("the secondary's CHAP credentials");
    assert_eq!(
        (chap.username.as_str(), chap.password.expose()),
        ("chap-user", "chap-secret")
    );
    assert!(
        matches!(c[3].primary(), Endpoint::Iscsi { chap: None, .. }),
        "the primary has none"
    );
    assert!(!format!("{m:?}").contains("chap-secret"));
    assert!(c[3].secondary().describe().ends_with("(CHAP)"));
    assert_eq!(targets.len(), 2);
    assert!(luns.is_empty(), "found by the domain's VG");
    assert_eq!(c[4].connection_type(), ConnectionType::Fcp);
    assert_eq!(c[4].domains().len(), 1);
    // The engine's part of the file, named.
    assert_eq!(m.warnings().len(), 1, "{:?}", m.warnings());
    for key in [
        "dr_sites_primary_url",
        "dr_cluster_mappings",
        "dr_network_mappings",
        "dr_lun_mappings",
    ] {
        assert!(m.warnings()[0].contains(key), "{key}: {:?}", m.warnings());
    }
    assert!(!m.warnings()[0].contains(STORAGES_KEY));
    // Failback works on it the same.
    assert_eq!(
        m.reversed().connections()[0].primary().connection(),
        "10.35.8.1:/export/path1"
    );
}

#[test]
fn a_recovery_pool_id_is_given_where_the_mapping_has_none() {
    let id: SpUuid = "5e7a1c2b-3d4e-4f50-8a61-b72c83d94e05".parse().unwrap();
    let m = parse_ansible(ANSIBLE)
        .unwrap()
        .with_recovery_pool(id, "recoveryPoolID")
        .unwrap();
    assert_eq!(m.secondary_pool().id, Some(id));
    assert_eq!(
        m.secondary_pool().name.as_deref(),
        Some("Recovery"),
        "the name is kept"
    );
    // depot's file names its pools: the same id is fine, another refused.
    let toml = parse_toml(EXAMPLE).unwrap();
    let named = toml.secondary_pool().id.unwrap();
    assert_eq!(
        toml.clone()
            .with_recovery_pool(named, "recoveryPoolID")
            .unwrap(),
        toml
    );
    let e = toml
        .clone()
        .with_recovery_pool(id, "recoveryPoolID")
        .unwrap_err();
    assert_eq!(e.code(), Code::DrMappingInvalid);
    assert_eq!(e.entry, "recoveryPoolID");
    assert!(e.to_string().contains(&named.to_string()), "{e}");
}

/// The first entry of [`ANSIBLE`] alone, with `change` applied.
fn one_nfs(change: impl Fn(String) -> String) -> String {
    change(
        r#"
dr_import_storages:
  - dr_domain_type: nfs
    dr_primary_name: data
    dr_primary_dc_name: Prod
    dr_primary_path: /export/path1
    dr_primary_address: 10.35.0.1
    dr_secondary_name: data
    dr_secondary_dc_name: Recovery
    dr_secondary_path: /export/path1
    dr_secondary_address: 10.35.8.1
"#
        .to_string(),
    )
}

#[test]
fn ansible_refusals_name_the_entry() {
    const E: &str = "dr_import_storages[0] ('data')";
    parse_ansible(&one_nfs(|s| s)).unwrap();
    // The generator leaves the secondary for the admin: `key: # value`.
    let e = refused_ansible(&one_nfs(|s| {
        s.replace(
            "dr_secondary_path: /export/path1",
            "dr_secondary_path: # /export/path1",
        )
        .replace(
            "dr_secondary_address: 10.35.8.1",
            "dr_secondary_address: # 10.35.8.1",
        )
    }));
    assert_eq!(
        (e.entry.as_str(), e.problem.clone()),
        (E, Problem::MissingSecondary)
    );
    let e = refused_ansible(&one_nfs(|s| s.replace("nfs", "cifs")));
    assert_eq!(
        (e.entry.as_str(), e.code()),
        (E, Code::DrUnknownConnectionType)
    );
    let e = refused_ansible(&one_nfs(|s| {
        s.replace(
            "dr_secondary_path: /export/path1",
            "dr_secondary_path: export/path1",
        )
    }));
    assert_eq!(
        (e.entry.as_str(), e.code()),
        (format!("{E} secondary").as_str(), Code::DrPathEscape)
    );
    let e = refused_ansible(&one_nfs(|s| s.replace("10.35.8.1", "10.35.0.1")));
    assert_eq!(
        (e.entry.as_str(), e.code()),
        (E, Code::DrSecondaryIsPrimary)
    );
    // Two data centers on one site.
    let two = one_nfs(|s| {
        let second = s
            .split_once("  - ")
            .unwrap()
            .1
            .replace("path1", "path2")
            .replace("name: data", "name: other")
            .replace(
                "dr_secondary_dc_name: Recovery",
                "dr_secondary_dc_name: Elsewhere",
            );
        format!("{s}  - {second}")
    });
    let e = refused_ansible(&two);
    assert_eq!(e.entry, "dr_import_storages[1] ('other')");
    assert!(e.to_string().contains("Elsewhere"), "{e}");
    // The same primary twice.
    let dup = one_nfs(|s| {
        let second = s.split_once("  - ").unwrap().1.replace(
            "dr_secondary_path: /export/path1",
            "dr_secondary_path: /export/x",
        );
        format!("{s}  - {second}")
    });
    let e = refused_ansible(&dup);
    assert_eq!(e.code(), Code::DrDuplicateEntry);
    assert_eq!(e.problem, Problem::DuplicatePrimary(E.into()));
}

#[test]
fn ansible_block_entries_need_their_domain_id_and_target() {
    let iscsi = r#"
dr_import_storages:
  - dr_domain_type: iscsi
    dr_primary_name: san
    dr_primary_dc_name: Prod
    dr_domain_id: aa92cc71-1b88-4998-a755-970ef8a638ea
    dr_primary_address: 10.35.1.10
    dr_primary_target: ["iqn.2017-10.com.primary.redhat:444"]
    dr_secondary_dc_name: Recovery
    dr_secondary_address: 10.35.9.10
    dr_secondary_target: ["iqn.2017-07.com.recovery.redhat:444"]
"#;
    parse_ansible(iscsi).unwrap();
    let e = refused_ansible(&iscsi.replace(
        r#"dr_secondary_target: ["iqn.2017-07.com.recovery.redhat:444"]"#,
        "dr_secondary_target: []",
    ));
    assert_eq!(e.problem, Problem::IscsiNoTarget);
    assert_eq!(e.entry, "dr_import_storages[0] ('san') secondary");
    let e = refused_ansible(&iscsi.replace(
        "    dr_domain_id: aa92cc71-1b88-4998-a755-970ef8a638ea\n",
        "",
    ));
    assert_eq!(e.problem, Problem::Missing("dr_domain_id"));
    // A domain in two entries.
    let twice = format!(
        "{iscsi}{}",
        iscsi
            .split_once("dr_import_storages:\n")
            .unwrap()
            .1
            .replace("name: san", "name: san2")
    );
    assert_eq!(refused_ansible(&twice).code(), Code::DrDuplicateEntry);
}

#[test]
fn ansible_file_without_storages_or_not_yaml() {
    let e = refused_ansible("dr_cluster_mappings: []\n");
    assert_eq!(e.problem, Problem::Missing(STORAGES_KEY));
    assert_eq!(
        refused_ansible("dr_import_storages: [").code(),
        Code::DrMappingUnreadable
    );
    assert_eq!(
        refused_ansible("- a\n- b\n").code(),
        Code::DrMappingUnreadable
    );
    let e = refused_ansible(&one_nfs(|s| {
        s.replace("dr_primary_path:", "dr_primary_pth:")
    }));
    // The typo leaves the primary without its path, and is named.
    assert_eq!(e.problem, Problem::Missing("path"));
}

#[test]
fn unknown_entry_keys_are_named_in_a_warning() {
    let m = parse_ansible(&one_nfs(|s| s + "    dr_colour: blue\n")).unwrap();
    assert_eq!(m.warnings().len(), 1);
    assert!(m.warnings()[0].contains("dr_colour"), "{:?}", m.warnings());
}

#[test]
fn the_format_names_round_trip() {
    for f in [Format::Toml, Format::Ansible] {
        assert_eq!(Format::parse(f.name()), Some(f));
    }
    assert_eq!(parse(EXAMPLE, Format::Toml).unwrap().connections().len(), 6);
}

#[test]
fn an_ansible_entry_without_its_secondary_is_named_not_the_pool() {
    // No secondary at all: no dr_secondary_dc_name either, so no
    // secondary data center; the entry is what is wrong.
    let e = refused_ansible(
        "dr_import_storages:\n  - dr_domain_type: nfs\n    dr_primary_name: data\n    \
         dr_primary_dc_name: Prod\n    dr_primary_address: 192.0.2.1\n    dr_primary_path: /export/data\n",
    );
    assert_eq!(e.entry, "dr_import_storages[0] ('data')");
    assert_eq!(e.problem, Problem::MissingSecondary);
}

#[test]
fn docs_dr_md_shows_the_example_file_as_it_is() {
    let doc = include_str!("../../../docs/dr.md");
    let start = doc.find("```toml\n").expect("a toml block in docs/dr.md") + "```toml\n".len();
    let end = start + doc[start..].find("```").expect("the block closes");
    assert_eq!(
        &doc[start..end],
        EXAMPLE,
        "docs/dr.md's example is not docs/examples/dr-mapping.toml"
    );
}
