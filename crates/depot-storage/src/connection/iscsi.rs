//! An ISCSI (domainType 3) connection, checked: the engine's
//! `{connection, port, iqn, tpgt, user, password, ifaceName}` as a
//! [`Target`], an iface and optional CHAP, plus the [`SessionKey`] that
//! says which iSCSI session it is.
//!
//! Nothing here runs a command; [`super::san`] logs in and out.

use std::fmt;
use std::net::{IpAddr, ToSocketAddrs};

use depot_api::types::Uuid;
use depot_api::Code;
use depot_os::iscsi::{Chap, Portal, Session, Target, DEFAULT_IFACE};
use depot_os::sysfs_block::IscsiSessionAttrs;
use depot_os::Secret;

use super::params::ConnectionParams;
use crate::error::{StorageError, StorageResult};

/// iSCSI's well-known port.
pub const DEFAULT_PORT: u16 = 3260;
/// VDSM's default target portal group tag.
pub const DEFAULT_TPGT: u32 = 1;
/// RFC 3720: an iSCSI name is at most 223 bytes.
pub const IQN_MAX: usize = 223;

const OP: &str = "validate iSCSI connection";

/// One session of this host: target, portal group, portal and iface. Two
/// connections with the same key share one session (and one login).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionKey {
    pub iqn: String,
    pub portal: Portal,
    pub tpgt: u32,
    pub iface: String,
}

impl fmt::Display for SessionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{},{} {} (iface {})",
            self.portal, self.tpgt, self.iqn, self.iface
        )
    }
}

impl SessionKey {
    /// Whether `s` is this key's session: same target, portal group and
    /// iface, logged in to the same portal. A portal given by name matches
    /// the address it resolves to (iscsiadm shows addresses).
    pub fn matches(&self, s: &Session) -> bool {
        self.matches_parts(&s.target.iqn, s.target.tpgt, &s.iface, &s.target.portal)
    }

    /// The same test on a session's sysfs attributes.
    pub fn matches_attrs(&self, a: &IscsiSessionAttrs) -> bool {
        let portal = Portal::new(a.persistent_address.clone(), a.persistent_port);
        self.matches_parts(&a.target_name, a.tpgt, &a.iface_name, &portal)
    }

    fn matches_parts(&self, iqn: &str, tpgt: u32, iface: &str, portal: &Portal) -> bool {
        iqn == self.iqn
            && tpgt == self.tpgt
            && iface == self.iface
            && portal.port == self.portal.port
            && same_host(&self.portal.host, &portal.host)
    }
}

/// `want` (as the engine gave it) names the address `shown` (iscsiadm's).
fn same_host(want: &str, shown: &str) -> bool {
    if want == shown {
        return true;
    }
    let Ok(shown_ip) = shown.parse::<IpAddr>() else {
        return false;
    };
    if let Ok(ip) = want.parse::<IpAddr>() {
        // Different spellings of one IPv6 address.
        return ip == shown_ip;
    }
    // A name: resolve it (the system resolver; may take a moment).
    (want, 0)
        .to_socket_addrs()
        .map(|mut addrs| addrs.any(|a| a.ip() == shown_ip))
        .unwrap_or(false)
}

/// A checked ISCSI connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IscsiConnection {
    id: String,
    target: Target,
    iface: String,
    chap: Option<Chap>,
}

fn invalid(field: &str, value: &str, why: impl fmt::Display) -> StorageError {
    invalid_in(OP, field, value, why)
}

fn invalid_in(op: &'static str, field: &str, value: &str, why: impl fmt::Display) -> StorageError {
    let shown: String = value.chars().take(200).collect();
    StorageError::new(
        Code::InvalidParameterException,
        op,
        format!("{field}={shown:?}: {why}"),
    )
}

/// The CHAP settings of an iSCSI login or discovery, checked the same way
/// for both: user and password both or neither (an empty one counts as
/// not given); the user a name iscsiadm takes as an argument value; the
/// password at most 255 bytes without a newline or NUL. Every refusal is
/// 1000 naming the field, and never quotes the password.
pub fn check_chap(
    op: &'static str,
    user: Option<&str>,
    password: Option<Secret>,
) -> StorageResult<Option<Chap>> {
    let user = user.unwrap_or("");
    let password = password.unwrap_or_default();
    match (user.is_empty(), password.is_empty()) {
        (true, true) => Ok(None),
        (false, false) => {
            check_name_in(op, "user", user, 255)?;
            if password.expose().len() > 255 || password.expose().contains(['\n', '\0']) {
                return Err(StorageError::new(
                    Code::InvalidParameterException,
                    op,
                    "password: longer than 255 bytes or holds a newline",
                ));
            }
            Ok(Some(Chap {
                username: user.to_owned(),
                password,
            }))
        }
        (true, false) => Err(StorageError::new(
            Code::InvalidParameterException,
            op,
            "user: a CHAP password needs a user",
        )),
        (false, true) => Err(invalid_in(op, "user", user, "a CHAP user needs a password")),
    }
}

impl IscsiConnection {
    /// Checks the engine's fields (nothing runs). Every bad field is 1000
    /// InvalidParameterException naming the field; the password is never
    /// quoted.
    pub fn new(p: &ConnectionParams) -> StorageResult<IscsiConnection> {
        if p.id.parse::<Uuid>().is_err() {
            return Err(invalid("id", &p.id, "not a UUID"));
        }
        let host = check_host(&p.connection)?;
        let port = match p.port {
            None => DEFAULT_PORT,
            Some(n) => u16::try_from(n)
                .ok()
                .filter(|&n| n != 0)
                .ok_or_else(|| invalid("port", &n.to_string(), "must be 1..65535"))?,
        };
        let iqn = p.iqn.as_deref().unwrap_or("").trim();
        check_iqn(iqn)?;
        let tpgt = match p.tpgt {
            None => DEFAULT_TPGT,
            Some(n) => u32::try_from(n)
                .ok()
                .filter(|&n| n <= 65535)
                .ok_or_else(|| invalid("tpgt", &n.to_string(), "must be 0..65535"))?,
        };
        let iface = p.iface.as_deref().unwrap_or(DEFAULT_IFACE).trim();
        check_name("ifaceName", iface, 64)?;
        let chap = check_chap(OP, p.user.as_deref(), p.password.clone())?;
        Ok(IscsiConnection {
            id: p.id.clone(),
            target: Target {
                portal: Portal::new(host, port),
                tpgt,
                iqn: iqn.to_owned(),
            },
            iface: iface.to_owned(),
            chap,
        })
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn target(&self) -> &Target {
        &self.target
    }

    pub fn iface(&self) -> &str {
        &self.iface
    }

    pub fn chap(&self) -> Option<&Chap> {
        self.chap.as_ref()
    }

    pub fn key(&self) -> SessionKey {
        SessionKey {
            iqn: self.target.iqn.clone(),
            portal: self.target.portal.clone(),
            tpgt: self.target.tpgt,
            iface: self.iface.clone(),
        }
    }

    /// Whether an existing session was made with this connection's CHAP
    /// user and password. `session_password` is what the kernel holds for
    /// it (sysfs; `None` when unreadable or unset).
    pub fn same_credentials(&self, session: &Session, session_password: Option<&Secret>) -> bool {
        match &self.chap {
            None => session.username.is_none(),
            Some(c) => {
                session.username.as_deref() == Some(c.username.as_str())
                    && session_password.is_some_and(|p| p == &c.password)
            }
        }
    }
}

/// The portal host: an IPv4 or IPv6 address (brackets allowed) or a DNS
/// name. Returned without brackets.
pub fn check_host(raw: &str) -> StorageResult<String> {
    let v = raw.trim();
    if let Some(inner) = v.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        // Brackets only around an IPv6 address.
        if inner.parse::<std::net::Ipv6Addr>().is_ok() {
            return Ok(inner.to_owned());
        }
        return Err(invalid(
            "connection",
            raw,
            "brackets hold an IPv6 address only",
        ));
    }
    let bare = v;
    if bare.parse::<IpAddr>().is_ok() {
        return Ok(bare.to_owned());
    }
    let name_ok = !bare.is_empty()
        && bare.len() <= 253
        && bare.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    if name_ok {
        Ok(bare.to_owned())
    } else {
        Err(invalid(
            "connection",
            raw,
            "not an IP address or host name of the iSCSI portal",
        ))
    }
}

/// An iSCSI name: `iqn.`, `eui.` or `naa.` form, at most 223 bytes, of
/// the characters RFC 3722's stringprep leaves (lower case is not enforced:
/// targets compare names case-insensitively, iscsiadm keeps them as given).
pub fn check_iqn(iqn: &str) -> StorageResult<()> {
    if iqn.is_empty() {
        return Err(invalid("iqn", iqn, "required for an ISCSI connection"));
    }
    let lower = iqn.to_ascii_lowercase();
    let form = ["iqn.", "eui.", "naa."]
        .iter()
        .any(|p| lower.starts_with(p));
    let chars = iqn
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"-.:".contains(&b));
    if !form || !chars || iqn.len() > IQN_MAX {
        return Err(invalid(
            "iqn",
            iqn,
            "not an iSCSI name (iqn./eui./naa., letters, digits, '-', '.', ':', at most 223 bytes)",
        ));
    }
    Ok(())
}

/// A name passed to iscsiadm as an argument value.
fn check_name(field: &str, v: &str, max: usize) -> StorageResult<()> {
    check_name_in(OP, field, v, max)
}

fn check_name_in(op: &'static str, field: &str, v: &str, max: usize) -> StorageResult<()> {
    let ok = !v.is_empty()
        && v.len() <= max
        && !v.starts_with('-')
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._:@".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(invalid_in(
            op,
            field,
            v,
            format!("letters, digits, '-', '.', '_', ':', '@', at most {max} bytes, not starting with '-'"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use depot_os::iscsi::parse_sessions;

    const ID: &str = "3c4e0bde-7c3f-4f9a-9d1a-2b2a3f3e4d5c";
    const IQN: &str = "iqn.2026-11.org.depot:target1";

    fn params() -> ConnectionParams {
        ConnectionParams {
            id: ID.into(),
            connection: "10.0.2.15".into(),
            iqn: Some(IQN.into()),
            ..Default::default()
        }
    }

    #[test]
    fn defaults_and_key() {
        let c = IscsiConnection::new(&params()).unwrap();
        assert_eq!(c.target().to_string(), format!("10.0.2.15:3260,1 {IQN}"));
        assert_eq!(c.iface(), "default");
        assert!(c.chap().is_none());
        assert_eq!(
            c.key().to_string(),
            format!("10.0.2.15:3260,1 {IQN} (iface default)")
        );
        let mut p = params();
        p.connection = "[fd00::1]".into();
        p.port = Some(3261);
        p.tpgt = Some(2);
        p.iface = Some("iser".into());
        p.user = Some("depot".into());
        p.password = Some(Secret::new("pw"));
        let c = IscsiConnection::new(&p).unwrap();
        assert_eq!(c.target().address(), "[fd00::1]:3261,2");
        assert_eq!(c.chap().unwrap().username, "depot");
        assert!(!format!("{c:?}").contains("\"pw\""));
    }

    #[test]
    fn bad_fields_are_1000_and_name_the_field() {
        type Case = (fn(&mut ConnectionParams), &'static str);
        let cases: [Case; 12] = [
            (|p| p.id = "x".into(), "id="),
            (|p| p.connection = "".into(), "connection="),
            (|p| p.connection = "-oops".into(), "connection="),
            (|p| p.connection = "a b".into(), "connection="),
            (|p| p.port = Some(0), "port="),
            (|p| p.port = Some(70000), "port="),
            (|p| p.iqn = None, "iqn="),
            (|p| p.iqn = Some("target1".into()), "iqn="),
            (|p| p.iqn = Some("iqn.x:y z".into()), "iqn="),
            (|p| p.tpgt = Some(-1), "tpgt="),
            (|p| p.iface = Some("-I".into()), "ifaceName="),
            (|p| p.user = Some("u".into()), "user="),
        ];
        for (set, field) in cases {
            let mut p = params();
            set(&mut p);
            let e = IscsiConnection::new(&p).unwrap_err();
            assert_eq!(e.code, Code::InvalidParameterException, "{e}");
            assert!(e.detail.starts_with(field), "{field}: {e}");
        }
        // A password without a user: refused without quoting it.
        let mut p = params();
        p.password = Some(Secret::new("hunter2"));
        let e = IscsiConnection::new(&p).unwrap_err();
        assert!(!e.to_string().contains("hunter2"), "{e}");
        p.user = Some("u".into());
        p.password = Some(Secret::new("hunter2\nx"));
        let e = IscsiConnection::new(&p).unwrap_err();
        assert!(!e.to_string().contains("hunter2"), "{e}");
    }

    #[test]
    fn host_forms() {
        assert_eq!(check_host(" 127.0.0.1 ").unwrap(), "127.0.0.1");
        assert_eq!(check_host("[fd00::1]").unwrap(), "fd00::1");
        assert_eq!(check_host("fd00::1").unwrap(), "fd00::1");
        assert_eq!(
            check_host("san-1.example.org").unwrap(),
            "san-1.example.org"
        );
        for bad in ["", "a..b", "-a", "a_b", "a/b", "[x]", "a b"] {
            assert!(check_host(bad).is_err(), "{bad:?}");
        }
    }

    fn session(username: &str) -> Session {
        let text = format!(
            "Target: {IQN} (non-flash)\n\
             \tCurrent Portal: 10.0.2.15:3260,1\n\
             \tPersistent Portal: 10.0.2.15:3260,1\n\
             \t\tIface Name: default\n\
             \t\tSID: 4\n\
             \t\tusername: {username}\n\
             \t\tpassword: ********\n"
        );
        parse_sessions(&text).unwrap().remove(0)
    }

    #[test]
    fn key_matches_sessions_and_credentials() {
        let mut p = params();
        p.user = Some("depot".into());
        p.password = Some(Secret::new("pw"));
        let c = IscsiConnection::new(&p).unwrap();
        let s = session("depot");
        assert!(c.key().matches(&s));
        assert!(c.same_credentials(&s, Some(&Secret::new("pw"))));
        assert!(!c.same_credentials(&s, Some(&Secret::new("other"))));
        assert!(!c.same_credentials(&s, None));
        assert!(!c.same_credentials(&session("<empty>"), Some(&Secret::new("pw"))));
        let plain = IscsiConnection::new(&params()).unwrap();
        assert!(plain.same_credentials(&session("<empty>"), None));

        let mut other = params();
        other.tpgt = Some(2);
        assert!(!IscsiConnection::new(&other).unwrap().key().matches(&s));
        let mut other = params();
        other.connection = "127.0.0.1".into();
        assert!(!IscsiConnection::new(&other).unwrap().key().matches(&s));
        let mut other = params();
        other.iface = Some("iser".into());
        assert!(!IscsiConnection::new(&other).unwrap().key().matches(&s));
        // IPv6 spellings.
        assert!(same_host("fd00:0::1", "fd00::1"));
        assert!(!same_host("fd00::2", "fd00::1"));
        assert!(same_host("localhost", "127.0.0.1"));
    }
}
