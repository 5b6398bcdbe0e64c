//! Power fencing through Debian's fence-agents (`/usr/sbin/fence_<agent>`),
//! as VDSM's `Host.fenceNode` runs them: the agent is run with no
//! arguments and reads its options from stdin, one `name=value` per line
//! (the fence-agents stdin protocol), through the command runner (argv
//! only, a timeout, the password never logged).
//!
//! Every value is checked before anything runs, because stdin is a list of
//! lines: a newline in an address would add an option of the caller's
//! choosing (`action=off` behind a `status`). The agent's name becomes a
//! file name, so it is a plain word. The caller's extra `options` may not
//! set what this module sets (agent, address, login, password, action,
//! port, secure).

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::command::{Cmd, CmdError, CommandRunner};

/// The exit codes of a fence agent that are answers, not failures: for
/// `status` 0 is on and 2 is off; for the other actions 0 is done.
const ANSWER_CODES: [i32; 3] = [0, 1, 2];

/// The options this module writes itself; `options` may not repeat them.
const OWN_KEYS: [&str; 7] = [
    "agent", "ipaddr", "login", "passwd", "action", "port", "secure",
];

/// What the agent is asked to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FenceAction {
    Status,
    On,
    Off,
    Reboot,
}

impl FenceAction {
    pub fn parse(s: &str) -> Option<FenceAction> {
        Some(match s {
            "status" => FenceAction::Status,
            "on" => FenceAction::On,
            "off" => FenceAction::Off,
            "reboot" => FenceAction::Reboot,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            FenceAction::Status => "status",
            FenceAction::On => "on",
            FenceAction::Off => "off",
            FenceAction::Reboot => "reboot",
        }
    }
}

/// A fence agent's name (`ipmilan` for `fence_ipmilan`): 1 to 64 of
/// `a-z`, `0-9`, `_`, so that it names a file in the agents' directory and
/// nothing else.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentName(String);

impl AgentName {
    pub fn parse(name: &str) -> Result<AgentName, FenceError> {
        let ok = !name.is_empty()
            && name.len() <= 64
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        if !ok {
            return Err(FenceError::Invalid {
                field: "agent",
                reason: format!("{name:?} is not an agent name (a-z, 0-9 and _, at most 64)"),
            });
        }
        Ok(AgentName(name.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// One `Host.fenceNode` request, checked.
#[derive(Clone)]
pub struct FenceRequest {
    agent: AgentName,
    lines: Vec<(String, String)>,
    action: FenceAction,
}

impl fmt::Debug for FenceRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FenceRequest")
            .field("agent", &self.agent)
            .field("action", &self.action)
            .field("options", &self.lines.len())
            .finish()
    }
}

/// The fields of a request as the engine sends them.
pub struct FenceParams<'a> {
    pub agent: &'a str,
    pub addr: &'a str,
    /// `None` or empty: no `port` line (VDSM skips an empty port).
    pub port: Option<&'a str>,
    pub username: &'a str,
    pub password: &'a str,
    pub action: FenceAction,
    pub secure: bool,
    /// More `name=value` lines for the agent (the engine's "options").
    pub options: &'a str,
}

impl FenceRequest {
    /// Checks every field; nothing is run.
    pub fn new(p: FenceParams<'_>) -> Result<FenceRequest, FenceError> {
        let agent = AgentName::parse(p.agent)?;
        let mut lines = vec![
            ("agent".to_owned(), format!("fence_{}", agent.as_str())),
            ("ipaddr".to_owned(), value("addr", p.addr)?),
            ("login".to_owned(), value("username", p.username)?),
            ("action".to_owned(), p.action.name().to_owned()),
            ("passwd".to_owned(), value("password", p.password)?),
        ];
        if let Some(port) = p.port.filter(|s| !s.is_empty()) {
            lines.push(("port".to_owned(), value("port", port)?));
        }
        if p.secure {
            lines.push(("secure".to_owned(), "yes".to_owned()));
        }
        for line in p.options.lines().map(str::trim).filter(|l| !l.is_empty()) {
            let (key, val) = line.split_once('=').unwrap_or((line, ""));
            let key_ok = !key.is_empty()
                && key.len() <= 64
                && key
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
            if !key_ok {
                return Err(FenceError::Invalid {
                    field: "options",
                    reason: format!("{key:?} is not an option name"),
                });
            }
            if OWN_KEYS.contains(&key) {
                return Err(FenceError::Invalid {
                    field: "options",
                    reason: format!("{key} is set from its own parameter, not from options"),
                });
            }
            lines.push((key.to_owned(), value("options", val)?));
        }
        Ok(FenceRequest {
            agent,
            lines,
            action: p.action,
        })
    }

    pub fn action(&self) -> FenceAction {
        self.action
    }

    pub fn agent(&self) -> &AgentName {
        &self.agent
    }

    /// What the agent reads on stdin.
    fn stdin(&self) -> String {
        self.lines
            .iter()
            .map(|(k, v)| format!("{k}={v}\n"))
            .collect()
    }
}

/// A value on one stdin line: no newline, carriage return or NUL (which
/// would start another line or cut this one), at most 4 KiB.
fn value(field: &'static str, v: &str) -> Result<String, FenceError> {
    if v.len() > 4096 || v.bytes().any(|b| matches!(b, b'\n' | b'\r' | 0)) {
        return Err(FenceError::Invalid {
            field,
            reason: "a value may not hold a line break or NUL, nor pass 4 KiB".into(),
        });
    }
    Ok(v.to_owned())
}

/// How the agent answered: its exit code (0, 1 or 2) and what it printed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentAnswer {
    pub code: i32,
    pub output: String,
}

#[derive(Debug, thiserror::Error)]
pub enum FenceError {
    #[error("invalid {field}: {reason}")]
    Invalid { field: &'static str, reason: String },
    /// No such agent in the agents' directory.
    #[error("no fence agent {}", path.display())]
    NoAgent { path: PathBuf },
    /// The agent could not run, was killed, timed out, or exited with a
    /// code that is no answer (over 2).
    #[error("fence agent failed: {source}")]
    Failed {
        #[source]
        source: Box<CmdError>,
    },
}

/// Runs the request's agent from `dir` with `timeout`.
pub fn run_agent(
    runner: &CommandRunner,
    dir: &Path,
    req: &FenceRequest,
    timeout: Duration,
) -> Result<AgentAnswer, FenceError> {
    let path = dir.join(format!("fence_{}", req.agent.as_str()));
    if !path.is_file() {
        return Err(FenceError::NoAgent { path });
    }
    let cmd = Cmd::new(&path, timeout)
        .stdin(req.stdin())
        .ok_codes(&ANSWER_CODES);
    let out = runner.run(&cmd).map_err(|e| FenceError::Failed {
        source: Box::new(e),
    })?;
    let mut output = out.stdout_lossy().into_owned();
    output.push_str(&out.stderr);
    Ok(AgentAnswer {
        code: out.code,
        output,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params<'a>(agent: &'a str, addr: &'a str, options: &'a str) -> FenceParams<'a> {
        FenceParams {
            agent,
            addr,
            port: Some("7"),
            username: "admin",
            password: "s3cret",
            action: FenceAction::Status,
            secure: true,
            options,
        }
    }

    #[test]
    fn the_agent_reads_vdsms_lines() {
        let r = FenceRequest::new(params("ipmilan", "10.0.0.9", "lanplus=1\n\n power_wait=3 "))
            .unwrap();
        assert_eq!(
            r.stdin(),
            "agent=fence_ipmilan\nipaddr=10.0.0.9\nlogin=admin\naction=status\npasswd=s3cret\nport=7\nsecure=yes\nlanplus=1\npower_wait=3\n"
        );
        assert!(!format!("{r:?}").contains("s3cret"));
    }

    #[test]
    fn shell_words_and_line_breaks_are_refused() {
        for agent in [
            "",
            "ipmilan; rm -rf /",
            "../../bin/sh",
            "IPMI",
            "a b",
            &"x".repeat(65),
        ] {
            assert!(
                FenceRequest::new(params(agent, "h", "")).is_err(),
                "{agent:?}"
            );
        }
        for addr in ["h\naction=off", "h\r", "h\0"] {
            let e = FenceRequest::new(params("ipmilan", addr, "")).unwrap_err();
            assert!(e.to_string().starts_with("invalid addr"), "{e}");
        }
        for opt in ["action=off", "passwd=x", "bad key=1", "=1", "k=v\0"] {
            assert!(
                FenceRequest::new(params("ipmilan", "h", opt)).is_err(),
                "{opt:?}"
            );
        }
        // Shell metacharacters in a value are only data: never a shell.
        assert!(FenceRequest::new(params("ipmilan", "$(reboot)`x`;|&", "")).is_ok());
    }
}
