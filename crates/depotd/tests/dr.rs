//! `DR.plan` end to end on LOCALFS (temporary directories, no root
//! needed): the plan of a valid mapping, before and after the sides are
//! switched by hand and as failback, each changing nothing on the storage,
//! in the repository or in the daemon's state directory; and every bad
//! mapping refused with its stable code, naming the entry.

mod common;
mod storage_common;

use std::path::{Path, PathBuf};

use common::Daemon;
use depot_client::Client;
use serde_json::{json, Value};
use storage_common::*;

struct Site {
    dir: tempfile::TempDir,
}

impl Site {
    fn new() -> Site {
        Site {
            dir: tempfile::tempdir().unwrap(),
        }
    }
    fn path(&self) -> PathBuf {
        self.dir.path().canonicalize().unwrap()
    }
    fn conn(&self) -> ConnectionSpec {
        ConnectionSpec::local(&self.path())
    }
}

fn mapping(primary: &Path, secondary: &Path, sd: &str) -> String {
    dr_mapping::localfs_mapping(dr_mapping::PROD, primary, secondary, &[sd])
}

async fn connect(c: &Client, conn: &ConnectionSpec, id: &str) {
    let st = call_ok(
        c,
        "StoragePool.connectStorageServer",
        connect_params(LOCALFS, vec![conn.params(id)]),
    )
    .await;
    assert_eq!(statuses(&st), [0]);
}

/// Everything a plan must leave alone.
struct Disk<'a> {
    d: &'a Daemon,
    sites: [&'a Site; 2],
}

impl Disk<'_> {
    fn snapshot(&self) -> Vec<Tree> {
        vec![
            snapshot(&self.sites[0].path()),
            snapshot(&self.sites[1].path()),
            snapshot(&repository(self.d)),
            snapshot(&self.d.state_dir()),
        ]
    }

    async fn plan(&self, c: &Client, params: Value) -> Value {
        let before = self.snapshot();
        let plan = call_ok(c, "DR.plan", params.clone()).await;
        let after = self.snapshot();
        for (what, (b, a)) in ["primary", "secondary", "repository", "state dir"]
            .iter()
            .zip(before.iter().zip(&after))
        {
            assert_same_tree(b, a, &format!("DR.plan ({what})"));
        }
        plan
    }

    async fn refused(&self, c: &Client, params: Value, code: i32) -> String {
        let before = self.snapshot();
        let msg = call_err(c, "DR.plan", params.clone(), code).await;
        let after = self.snapshot();
        for (b, a) in before.iter().zip(&after) {
            assert_same_tree(b, a, &format!("DR.plan({params})"));
        }
        msg
    }
}

#[tokio::test]
async fn plan_of_a_localfs_mapping_changes_nothing() {
    let d = Daemon::start(CONFIG);
    let c = d.client().await;
    let (prod, replica) = (Site::new(), Site::new());
    let (prod_id, replica_id) = (new_id(), new_id());
    connect(&c, &prod.conn(), &prod_id).await;
    let (sd, other) = (new_id(), new_id());
    for (id, what) in [(&sd, "replicated"), (&other, "not in the mapping")] {
        call_ok(
            &c,
            "StorageDomain.create",
            create_domain_params(id, LOCALFS, &prod.conn().connection, what, 512),
        )
        .await;
    }
    // The replica: a copy of the domain, as replication leaves it.
    let cp = std::process::Command::new("cp")
        .arg("-a")
        .arg(prod.path().join(&sd))
        .arg(replica.path())
        .status()
        .unwrap();
    assert!(cp.success());
    let text = mapping(&prod.path(), &replica.path(), &sd);
    let disk = Disk {
        d: &d,
        sites: [&prod, &replica],
    };

    // Before failover: the primary is connected, the replica is not.
    let plan = disk.plan(&c, json!({"mapping": text})).await;
    assert_eq!(plan["format"], "toml");
    assert_eq!(plan["failback"], false);
    assert_eq!(plan["primary_pool"]["name"], "Prod");
    assert_eq!(
        plan["secondary_pool"]["id"],
        "a1f2c3d4-0e5f-4a6b-8c7d-9e0f1a2b3c4d"
    );
    let conn = &plan["connections"][0];
    assert_eq!(conn["name"], "connection 'local'");
    assert_eq!(conn["type"], "LOCALFS");
    assert_eq!(
        conn["primary"]["connection"],
        prod.path().display().to_string()
    );
    assert_eq!(conn["primary"]["state"], "connected", "{conn}");
    assert_eq!(conn["primary"]["action"], "disconnect");
    assert_eq!(
        conn["primary"]["mount_point"],
        mount_point(&d, LOCALFS, &prod.conn().connection)
            .display()
            .to_string()
    );
    assert_eq!(conn["secondary"]["state"], "not connected");
    assert_eq!(conn["secondary"]["action"], "connect");
    let domains = conn["domains"].as_array().unwrap();
    assert_eq!(domains.len(), 2, "{domains:?}");
    assert_eq!(
        domains[0],
        json!({"sd_id": sd, "expected": true, "visible": true, "on": "primary"})
    );
    assert_eq!(
        domains[1],
        json!({"sd_id": other, "expected": false, "visible": true, "on": "primary"})
    );
    // No sanlock for an unprivileged daemon: the lockspaces cannot be
    // read, and the verdict says so rather than pass.
    let fence = &plan["fence"];
    assert_eq!(fence["verdict"], "unknown", "{fence}");
    assert_eq!(fence["live_hosts"], json!([]));
    let checked: Vec<&Value> = fence["domains"].as_array().unwrap().iter().collect();
    assert_eq!(checked.len(), 2, "both visible domains: {fence}");
    assert!(checked
        .iter()
        .all(|d| d["checked"] == false && d["detail"].is_string()));
    assert_eq!(checked[0]["this_host"], 3, "the mapping's this_host");
    assert!(fence["message"].as_str().unwrap().contains(&sd), "{fence}");

    // Step 2 by hand: the primary gone, the replica connected.
    disconnect_ok(&c, &d, LOCALFS, &prod.conn(), &prod_id).await;
    connect(&c, &replica.conn(), &replica_id).await;
    let plan = disk.plan(&c, json!({"mapping": text})).await;
    let conn = &plan["connections"][0];
    assert_eq!(
        (&conn["primary"]["state"], &conn["primary"]["action"]),
        (&json!("not connected"), &json!("none"))
    );
    assert_eq!(
        (&conn["secondary"]["state"], &conn["secondary"]["action"]),
        (&json!("connected"), &json!("none"))
    );
    assert_eq!(
        conn["domains"],
        json!([{"sd_id": sd, "expected": true, "visible": true, "on": "secondary"}])
    );

    // Failback: the same mapping reversed.
    let plan = disk
        .plan(&c, json!({"mapping": text, "failback": true}))
        .await;
    assert_eq!(plan["failback"], true);
    assert_eq!(plan["primary_pool"]["name"], "Recovery");
    let conn = &plan["connections"][0];
    assert_eq!(
        conn["primary"]["connection"],
        replica.path().display().to_string()
    );
    assert_eq!(conn["primary"]["action"], "disconnect");
    assert_eq!(conn["secondary"]["action"], "connect");
    assert_eq!(conn["domains"][0]["on"], "primary");
    assert_eq!(
        plan["fence"]["domains"][0].get("this_host"),
        None,
        "this host's id is not carried to the other site"
    );
}

#[tokio::test]
async fn an_ansible_var_file_plans_the_same_way() {
    let d = Daemon::start(CONFIG);
    let c = d.client().await;
    let text = r#"
dr_sites_primary_url: "https://engine1.example.com/ovirt-engine/api"
dr_import_storages:
  - dr_domain_type: nfs
    dr_primary_name: data
    dr_primary_dc_name: Prod
    dr_primary_address: 192.0.2.1
    dr_primary_path: /export/data
    dr_secondary_name: data
    dr_secondary_dc_name: Recovery
    dr_secondary_address: 192.0.2.2
    dr_secondary_path: /export/data
dr_cluster_mappings: []
"#;
    let (a, b) = (Site::new(), Site::new());
    let disk = Disk {
        d: &d,
        sites: [&a, &b],
    };
    let plan = disk
        .plan(&c, json!({"mapping": text, "format": "ansible"}))
        .await;
    assert_eq!(plan["format"], "ansible");
    assert_eq!(plan["primary_pool"], json!({"name": "Prod"}));
    let warnings = plan["warnings"].to_string();
    assert!(warnings.contains("dr_sites_primary_url") && warnings.contains("dr_cluster_mappings"));
    let conn = &plan["connections"][0];
    assert_eq!(conn["name"], "dr_import_storages[0] ('data')");
    assert_eq!(conn["type"], "NFS");
    assert_eq!(conn["primary"]["connection"], "192.0.2.1:/export/data");
    assert_eq!(conn["primary"]["action"], "none", "{conn}");
    assert_eq!(conn["secondary"]["action"], "connect");
    assert_eq!(conn["domains"], json!([]));
    assert_eq!(plan["fence"]["verdict"], "unknown");
    assert_eq!(plan["secondary_pool"], json!({"name": "Recovery"}));
    // The file names no pool id: the caller gives the recovery pool's,
    // and on a failback it is the other site's (the primary's name).
    let sp = "5e7a1c2b-3d4e-4f50-8a61-b72c83d94e05";
    let plan = disk
        .plan(
            &c,
            json!({"mapping": text, "format": "ansible", "recoveryPoolID": sp}),
        )
        .await;
    assert_eq!(
        plan["secondary_pool"],
        json!({"id": sp, "name": "Recovery"})
    );
    assert_eq!(plan["primary_pool"], json!({"name": "Prod"}));
    let plan = disk
        .plan(
            &c,
            json!({"mapping": text, "format": "ansible", "recoveryPoolID": sp, "failback": true}),
        )
        .await;
    assert_eq!(plan["secondary_pool"], json!({"id": sp, "name": "Prod"}));
    // The failover's dry run takes the domains over into that pool.
    let dry = call_ok(
        &c,
        "DR.failover",
        json!({"mapping": text, "format": "ansible", "recoveryPoolID": sp, "dryRun": true}),
    )
    .await;
    let would = dry["dry_run"]["would"][0].as_str().unwrap();
    assert!(would.contains(&format!("master of {sp}")), "{would}");
    // Not a UUID: refused as a bad parameter.
    disk.refused(
        &c,
        json!({"mapping": text, "format": "ansible", "recoveryPoolID": "pool-1"}),
        -32602,
    )
    .await;
}

#[tokio::test]
async fn bad_mappings_are_refused_with_their_codes() {
    let d = Daemon::start(CONFIG);
    let c = d.client().await;
    let (a, b) = (Site::new(), Site::new());
    let sd = new_id();
    let good = mapping(&a.path(), &b.path(), &sd);
    let disk = Disk {
        d: &d,
        sites: [&a, &b],
    };
    call_ok(&c, "DR.plan", json!({"mapping": good})).await;
    let secondary_line = format!("secondary = {{ path = \"{}\" }}\n", b.path().display());
    let nfs = |primary: &str, secondary: &str| {
        good.replace("type = \"LOCALFS\"", "type = \"NFS\"")
            .replace(
                &format!("primary = {{ path = \"{}\" }}", a.path().display()),
                &format!("primary = {primary}"),
            )
            .replace(
                secondary_line.trim_end(),
                &format!("secondary = {secondary}"),
            )
    };
    let second_entry = |sd2: &str, p: &str, s: &str| {
        format!(
            "{good}\n[[connections]]\nname = \"two\"\ntype = \"LOCALFS\"\ndomains = [\"{sd2}\"]\nprimary = {{ path = \"{p}\" }}\nsecondary = {{ path = \"{s}\" }}\n"
        )
    };
    let cases: Vec<(&str, String, i32, &str)> = vec![
        ("not TOML", "version = ".into(), 9040, "file"),
        ("an unknown key", good.replace("name = \"local\"", "name = \"local\"\ncolour = 1"), 9040, "colour"),
        ("a missing secondary", good.replace(&secondary_line, ""), 9041, "connection 'local': no secondary"),
        ("a duplicate domain", second_entry(&sd, "/srv/x", "/srv/y"), 9042, "connection 'two'"),
        ("the same primary twice", second_entry(&new_id(), &a.path().display().to_string(), "/srv/y"), 9042, "connection 'two'"),
        ("an unknown type", good.replace("\"LOCALFS\"", "\"CEPHFS\""), 9043, "CEPHFS"),
        ("a relative path", good.replace(&secondary_line, "secondary = { path = \"srv/replica\" }\n"), 9044, "connection 'local' secondary"),
        ("a '..' path", good.replace(&secondary_line, "secondary = { path = \"/srv/../etc\" }\n"), 9044, "'..'"),
        ("a secondary equal to its primary", good.replace(&secondary_line, &format!("secondary = {{ path = \"{}/\" }}\n", a.path().display())), 9045, "connection 'local'"),
        (
            "iSCSI without a target",
            good.replace("type = \"LOCALFS\"", "type = \"ISCSI\"")
                .replace(&format!("primary = {{ path = \"{}\" }}", a.path().display()), "primary = { address = \"10.0.0.1\", luns = [\"36001405aa\"] }")
                .replace(secondary_line.trim_end(), "secondary = { address = \"10.0.0.2\", targets = [\"iqn.2020-01.com.example:dr\"], luns = [\"36001405bb\"] }"),
            9046,
            "connection 'local' primary",
        ),
        ("a LOCALFS secondary with an address", good.replace(&secondary_line, "secondary = { address = \"nfs.example.com\", path = \"/srv/b\" }\n"), 9047, "connection 'local' secondary"),
        ("an NFS path escape", nfs("{ address = \"nfs1.example.com\", path = \"/export/a\" }", "{ address = \"nfs2.example.com\", path = \"../a\" }"), 9044, "connection 'local' secondary"),
        ("a bad domain UUID", good.replace(&sd, "not-a-uuid"), 9048, "not-a-uuid"),
        ("a host in both sites", good.replace("secondary_site = [3]", "secondary_site = [2, 3]"), 9048, "hosts"),
    ];
    for (what, text, code, names) in cases {
        let msg = disk.refused(&c, json!({"mapping": text}), code).await;
        assert!(
            msg.contains(names),
            "{what}: {msg:?} does not name {names:?}"
        );
    }
    // The Ansible form's refusals are the same codes.
    let ansible = "dr_import_storages:\n  - dr_domain_type: nfs\n    dr_primary_name: data\n    dr_primary_dc_name: Prod\n    dr_primary_address: 192.0.2.1\n    dr_primary_path: /export/data\n";
    let msg = disk
        .refused(&c, json!({"mapping": ansible, "format": "ansible"}), 9041)
        .await;
    assert!(msg.contains("dr_import_storages[0] ('data')"), "{msg}");
    disk.refused(
        &c,
        json!({"mapping": "dr_import_storages: [", "format": "ansible"}),
        9040,
    )
    .await;
    // A format it does not know, and a mapping too large to read.
    disk.refused(&c, json!({"mapping": good, "format": "yaml"}), -32602)
        .await;
    let huge = format!("{good}\n#{}\n", "x".repeat(1 << 20));
    disk.refused(&c, json!({"mapping": huge}), 9040).await;
}

/// The fence check against the real sanlock daemon: this host holds id 1
/// in the domain's lockspace; a mapping that says this host is 3 and 1 is
/// the lost site's sees host 1 renewing its lease, and refuses naming it
/// (as it would for an old site still alive), unless 1 is confirmed
/// fenced. A mapping that does not say which host this is takes the id
/// this host holds (1), and passes.
#[tokio::test]
#[cfg_attr(not(depot_root_tier), ignore = "needs the root tier")]
async fn the_fence_check_names_a_host_that_still_renews_its_lease() {
    depot_testkit::require_root();
    use storage_common::sanlock_pool::{pool, pool_connect, until_acquired, SANLOCK_CONFIG};
    let _sanlock = depot_testkit::sanlock::SanlockDaemon::start().expect("sanlock daemon");
    let d = Daemon::start(SANLOCK_CONFIG);
    let p = pool(&d).await;
    let primary = p.dom.parent().unwrap().to_path_buf();
    let replica = Site::new();
    let text = mapping(&primary, &replica.path(), &p.sd)
        .replace("primary_site = [1, 2]", "primary_site = [1]");

    // Before this host is in the lockspace: nothing can be read.
    let plan = call_ok(&p.c, "DR.plan", json!({"mapping": text})).await;
    assert_eq!(plan["fence"]["verdict"], "unknown", "{plan}");
    let detail = plan["fence"]["domains"][0]["detail"].as_str().unwrap_or("");
    assert!(detail.contains("no host id acquired"), "{plan}");

    call_ok(&p.c, "StoragePool.connect", pool_connect(&p, 1)).await;
    until_acquired(&p.c, &p.sd).await;

    let plan = call_ok(&p.c, "DR.plan", json!({"mapping": text})).await;
    let fence = &plan["fence"];
    assert_eq!(fence["verdict"], "refuse", "{fence}");
    let hosts = fence["live_hosts"].as_array().unwrap();
    assert_eq!(hosts.len(), 1, "{fence}");
    assert_eq!(hosts[0]["host_id"], 1, "{fence}");
    assert_eq!(hosts[0]["site"], "primary", "{fence}");
    assert_eq!(hosts[0]["domains"], json!([p.sd]), "{fence}");
    assert!(
        matches!(hosts[0]["status"].as_str(), Some("live" | "unknown")),
        "{fence}"
    );
    let message = fence["message"].as_str().unwrap();
    assert!(
        message.contains("host 1 (") && message.contains("primary site"),
        "{message}"
    );
    assert_eq!(fence["domains"][0]["checked"], true, "{fence}");
    assert_eq!(fence["domains"][0]["this_host"], 3, "{fence}");

    // Confirmed fenced by id: it passes, the host still named.
    let plan = call_ok(
        &p.c,
        "DR.plan",
        json!({"mapping": text, "confirmedFenced": [1]}),
    )
    .await;
    assert_eq!(
        plan["fence"]["verdict"], "pass (confirmed fenced)",
        "{plan}"
    );
    assert_eq!(plan["fence"]["live_hosts"][0]["confirmed"], true, "{plan}");

    // Without this_host, the id this host holds is this host.
    let own = text.replace("this_host = 3\n", "");
    let plan = call_ok(&p.c, "DR.plan", json!({"mapping": own})).await;
    assert_eq!(plan["fence"]["verdict"], "pass", "{plan}");
    assert_eq!(plan["fence"]["domains"][0]["this_host"], 1, "{plan}");
    assert_eq!(plan["fence"]["live_hosts"], json!([]), "{plan}");
}
