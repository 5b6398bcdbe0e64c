//! `Host.fenceNode` through real fence agents: a small agent written here
//! that follows the fence-agents stdin protocol and records what it read
//! (the exact lines depotd sends, and proof that a refused request ran
//! nothing), and Debian's own `fence_dummy` (fence-agents) in the root
//! tier, whose power state is a file.

mod common;
mod storage_common;

use std::path::Path;

use common::Daemon;
use serde_json::{json, Value};
use storage_common::{call_err, call_ok, fence_agents};

/// An agent that writes its stdin to `<dir>/input` and answers as
/// `<dir>/answer` says (an exit code; 0 when absent), printing a line.
const RECORDING_AGENT: &str = "#!/bin/sh
dir=$(dirname \"$0\")
cat > \"$dir/input\"
code=0
[ -f \"$dir/answer\" ] && code=$(cat \"$dir/answer\")
echo \"recorded, answering $code\"
exit $code
";

fn agents_dir() -> tempfile::TempDir {
    fence_agents("recorder", RECORDING_AGENT)
}

fn daemon(agents: &Path) -> Daemon {
    Daemon::start(&format!(
        "[fencing]\nagents_dir = \"{}\"\ntimeout_s = 30\n",
        agents.display()
    ))
}

fn fence(agent: &str, action: &str) -> Value {
    json!({"addr": "10.0.0.9", "port": "623", "agent": agent, "username": "admin",
        "password": "s3cret", "action": action})
}

#[tokio::test]
async fn the_agent_reads_vdsms_lines_and_its_answer_is_mapped() {
    let agents = agents_dir();
    let d = daemon(agents.path());
    let c = d.client().await;
    let input = agents.path().join("input");

    let mut p = fence("recorder", "status");
    p["secure"] = json!(true);
    p["options"] = json!("lanplus=1\npower_wait=3");
    assert_eq!(
        call_ok(&c, "Host.fenceNode", p).await,
        json!({"power": "on"})
    );
    assert_eq!(
        std::fs::read_to_string(&input).unwrap(),
        "agent=fence_recorder\nipaddr=10.0.0.9\nlogin=admin\naction=status\npasswd=s3cret\n\
         port=623\nsecure=yes\nlanplus=1\npower_wait=3\n"
    );
    std::fs::write(agents.path().join("answer"), "2").unwrap();
    assert_eq!(
        call_ok(&c, "Host.fenceNode", fence("recorder", "status")).await,
        json!({"power": "off"})
    );
    // An action: initiated when the agent says 0, else code 1 with its
    // output.
    std::fs::write(agents.path().join("answer"), "0").unwrap();
    let mut p = fence("recorder", "off");
    p["port"] = json!("");
    assert_eq!(
        call_ok(&c, "Host.fenceNode", p).await,
        json!({"operationStatus": "initiated", "power": "unknown"})
    );
    let sent = std::fs::read_to_string(&input).unwrap();
    assert!(
        sent.contains("action=off\n") && !sent.contains("port="),
        "{sent}"
    );
    std::fs::write(agents.path().join("answer"), "1").unwrap();
    let e = call_err(&c, "Host.fenceNode", fence("recorder", "reboot"), 1).await;
    assert!(
        e.contains("exited with 1") && e.contains("recorded, answering 1"),
        "{e}"
    );
    // The password is in no log line.
    assert!(!d.log().contains("s3cret"), "{}", d.log());
}

/// Shell words, line breaks that would add an agent option, options that
/// would override depotd's own, an unknown action: 1000, and the agent
/// never runs. An agent that is not installed: 43.
#[tokio::test]
async fn bad_fence_parameters_are_refused_and_run_nothing() {
    let agents = agents_dir();
    let d = daemon(agents.path());
    let c = d.client().await;
    let input = agents.path().join("input");
    let mut bad = Vec::new();
    for agent in [
        "recorder; rm -rf /",
        "../fence_recorder",
        "$(reboot)",
        "RECORDER",
        "",
    ] {
        bad.push(fence(agent, "status"));
    }
    for (key, value) in [
        ("addr", "10.0.0.9\naction=off"),
        ("username", "admin\rx"),
        ("password", "s3cret\npasswd=other"),
        ("port", "623\naction=reboot"),
        ("options", "action=off"),
        ("options", "passwd=x"),
        ("options", "evil key=1"),
        ("action", "poweroff"),
    ] {
        let mut p = fence("recorder", "status");
        p[key] = json!(value);
        bad.push(p);
    }
    for p in bad {
        let e = call_err(&c, "Host.fenceNode", p.clone(), 1000).await;
        assert!(!e.contains("s3cret"), "{e}");
        assert!(!input.exists(), "{p}: the agent ran");
    }
    let e = call_err(&c, "Host.fenceNode", fence("nosuchagent", "status"), 43).await;
    assert!(e.contains("fence_nosuchagent"), "{e}");
    assert!(!input.exists());
    // Shell metacharacters in a value are data for the agent, never a shell.
    let mut p = fence("recorder", "status");
    p["addr"] = json!("$(touch /tmp/depot-fence-pwned);`id`|&");
    call_ok(&c, "Host.fenceNode", p).await;
    assert!(std::fs::read_to_string(&input)
        .unwrap()
        .contains("ipaddr=$(touch /tmp/depot-fence-pwned);`id`|&\n"));
    assert!(!Path::new("/tmp/depot-fence-pwned").exists());
}

/// Debian's fence_dummy (package fence-agents): its power state is a file.
#[tokio::test]
#[cfg_attr(not(depot_root_tier), ignore = "needs the root tier")]
async fn debians_fence_dummy_reports_and_switches_power() {
    depot_testkit::require_root();
    assert!(
        Path::new("/usr/sbin/fence_dummy").is_file(),
        "fence_dummy missing: apt-get install fence-agents"
    );
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("power");
    std::fs::write(&state, "on").unwrap();
    let d = Daemon::start("");
    let c = d.client().await;
    let dummy = |action: &str| {
        let mut p = fence("dummy", action);
        p["options"] = json!(format!("status_file={}", state.display()));
        p
    };
    assert_eq!(
        call_ok(&c, "Host.fenceNode", dummy("status")).await,
        json!({"power": "on"})
    );
    assert_eq!(
        call_ok(&c, "Host.fenceNode", dummy("off")).await,
        json!({"operationStatus": "initiated", "power": "unknown"})
    );
    assert_eq!(std::fs::read_to_string(&state).unwrap(), "off");
    assert_eq!(
        call_ok(&c, "Host.fenceNode", dummy("status")).await,
        json!({"power": "off"})
    );
}
