//! The `connection` string: parsing, normalizing, and the mount point name.
//!
//! Grammar (checked before anything runs):
//!
//! ```text
//! remote  = host ":" [port ":"] path      port only for POSIXFS (e.g. CephFS)
//! gluster = host ":" ["/"] volume *("/" component)
//! local   = path                          LOCALFS; POSIXFS devices
//! host    = hostname | IPv4 | "[" IPv6 "]"
//! path    = "/" *(component "/")          absolute, no ".." component
//! ```
//!
//! Hostnames are ASCII letters, digits, `-` and `_` in dot-separated labels
//! of at most 63 bytes, 253 in all, none starting or ending with `-` (so no
//! host can be read as a command-line option). An all-numeric dotted host
//! must be a valid IPv4 address. IPv6 needs brackets and may not have a zone
//! (`%eth0`). Paths may hold any UTF-8 except control characters, `,` (the
//! mount option separator: VDSM and mount(8) would split on it) and `\`
//! (the mount table's escape character). `.` components, repeated and
//! trailing slashes are normalized away as VDSM does (its bug 1300749:
//! `srv:/a/` and `srv:/a` are one mount); `..` is refused rather than
//! resolved.

use std::net::{Ipv4Addr, Ipv6Addr};

/// The longest file name Linux accepts (NAME_MAX); the mount point name is
/// one file name.
pub const NAME_MAX: usize = 255;

/// Why a connection string was refused. The caller adds the field name.
pub type SpecResult<T> = Result<T, String>;

/// A parsed `host:[port:]path` remote spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Remote {
    /// The host as written, IPv6 without its brackets.
    pub host: String,
    pub port: Option<u16>,
    /// Normalized; for gluster the volume part, with or without the leading
    /// `/` as given.
    pub path: String,
}

impl Remote {
    /// `host:[port:]path`, IPv6 bracketed: the form given to mount(8) and
    /// shown in the mount table.
    pub fn spec(&self) -> String {
        let mut s = if self.host.contains(':') {
            format!("[{}]:", self.host)
        } else {
            format!("{}:", self.host)
        };
        if let Some(p) = self.port {
            s.push_str(&format!("{p}:"));
        }
        s.push_str(&self.path);
        s
    }
}

/// VDSM's `transformPath`: `_` becomes `__`, then `/` becomes `_`, so a
/// remote path becomes one directory name (`srv:/export/data_1` ->
/// `srv:_export_data__1`).
pub fn transform(spec: &str) -> String {
    spec.replace('_', "__").replace('/', "_")
}

/// Checks the characters every connection string must avoid.
fn check_chars(s: &str) -> SpecResult<()> {
    if s.is_empty() {
        return Err("is empty".into());
    }
    if let Some(c) = s.chars().find(|c| c.is_control()) {
        return Err(format!("contains the control character {c:?}"));
    }
    if s.contains(',') {
        return Err("contains ',' (the mount option separator)".into());
    }
    if s.contains('\\') {
        return Err("contains '\\'".into());
    }
    Ok(())
}

/// Normalizes an absolute path: drops `.` components, repeated and
/// trailing slashes; refuses relative paths and `..`.
pub fn normalize_abs_path(path: &str) -> SpecResult<String> {
    check_chars(path)?;
    if !path.starts_with('/') {
        return Err(format!("path {path:?} is not absolute"));
    }
    let mut parts = Vec::new();
    for c in path.split('/') {
        match c {
            "" | "." => {}
            ".." => return Err(format!("path {path:?} has a '..' component")),
            c => parts.push(c),
        }
    }
    Ok(format!("/{}", parts.join("/")))
}

/// Checks a host name or address; returns it without IPv6 brackets.
pub fn check_host(host: &str) -> SpecResult<String> {
    if let Some(inner) = host.strip_prefix('[') {
        let inner = inner
            .strip_suffix(']')
            .ok_or_else(|| format!("IPv6 address {host:?} lacks its closing ']'"))?;
        return match inner.parse::<Ipv6Addr>() {
            Ok(_) => Ok(inner.to_owned()),
            Err(_) => Err(format!("{inner:?} is not an IPv6 address")),
        };
    }
    check_hostname(host)?;
    Ok(host.to_owned())
}

/// A host name or IPv4 address (no brackets, no IPv6).
pub fn check_hostname(host: &str) -> SpecResult<()> {
    if host.is_empty() {
        return Err("host is empty".into());
    }
    if !host.is_ascii() {
        return Err(format!(
            "host {host:?} is not ASCII (use the punycode form of an international name)"
        ));
    }
    if host.len() > 253 {
        return Err(format!("host {host:?} is longer than 253 characters"));
    }
    let numeric = host.bytes().all(|b| b.is_ascii_digit() || b == b'.');
    if numeric {
        return host
            .parse::<Ipv4Addr>()
            .map(drop)
            .map_err(|_| format!("{host:?} is not a valid IPv4 address"));
    }
    for label in host.split('.') {
        let ok = !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !ok {
            return Err(format!("{host:?} is not a valid host name"));
        }
    }
    Ok(())
}

/// Splits `host:tail` (`[v6]:tail` for IPv6) and checks the host.
fn split_host(spec: &str) -> SpecResult<(String, &str)> {
    let (host, tail) = if spec.starts_with('[') {
        let end = spec
            .find("]:")
            .ok_or_else(|| format!("{spec:?} is not '[IPv6]:path'"))?;
        (&spec[..=end], &spec[end + 2..])
    } else {
        spec.split_once(':')
            .ok_or_else(|| format!("{spec:?} is not 'server:/path'"))?
    };
    if tail.is_empty() {
        return Err(format!("{spec:?} has no path after the server"));
    }
    if tail.starts_with(':') {
        return Err(format!(
            "{spec:?}: an IPv6 address needs brackets: '[address]:/path'"
        ));
    }
    Ok((check_host(host)?, tail))
}

/// `server:/path` (NFS; POSIXFS with `allow_port`, which also accepts
/// `server:port:/path`).
pub fn parse_remote(spec: &str, allow_port: bool) -> SpecResult<Remote> {
    check_chars(spec)?;
    let (host, tail) = split_host(spec)?;
    let (port, path) = match tail.split_once(':') {
        Some((p, rest)) if allow_port => {
            let port = parse_port(p).ok_or_else(|| format!("{p:?} is not a port number"))?;
            (Some(port), rest)
        }
        _ => (None, tail),
    };
    if !path.starts_with('/') {
        return Err(format!(
            "{spec:?}: the path {path:?} after the server is not absolute"
        ));
    }
    Ok(Remote {
        host,
        port,
        path: normalize_abs_path(path)?,
    })
}

/// VDSM's port rule: 1..=65535 written without a leading zero.
fn parse_port(p: &str) -> Option<u16> {
    if p.starts_with('0') || p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    p.parse::<u16>().ok().filter(|&n| n > 0)
}

/// `server:/volume[/subdir]` or `server:volume[/subdir]` (GlusterFS).
/// The leading `/` is kept as given: VDSM names the mount point after the
/// spec as written, so `srv:vol` and `srv:/vol` are different mounts.
pub fn parse_gluster(spec: &str) -> SpecResult<Remote> {
    check_chars(spec)?;
    let (host, tail) = split_host(spec)?;
    let slash = tail.starts_with('/');
    let mut parts = Vec::new();
    for c in tail.split('/') {
        match c {
            "" | "." => {}
            ".." => return Err(format!("{spec:?} has a '..' component")),
            c => parts.push(c),
        }
    }
    let volume = parts
        .first()
        .ok_or_else(|| format!("{spec:?} names no volume"))?;
    let ok = !volume.starts_with(['-', '.'])
        && volume
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    if !ok {
        return Err(format!(
            "{volume:?} is not a gluster volume name (letters, digits, '-', '_', '.')"
        ));
    }
    let joined = parts.join("/");
    Ok(Remote {
        host,
        port: None,
        path: if slash { format!("/{joined}") } else { joined },
    })
}

/// Normalizes a spec read back from the mount table so it compares with a
/// parsed one; `None` if it does not parse (then it matches nothing).
pub fn normalize_table_source(source: &str, gluster: bool) -> Option<String> {
    if source.starts_with('/') {
        return normalize_abs_path(source).ok();
    }
    if gluster {
        // The FUSE client may add ".rdma" for the rdma transport.
        let s = source.strip_suffix(".rdma").unwrap_or(source);
        return parse_gluster(s).ok().map(|r| gluster_key(&r));
    }
    parse_remote(source, true).ok().map(|r| r.spec())
}

/// Gluster specs compare without the optional leading `/`: `srv:vol` and
/// `srv:/vol` are the same volume.
pub fn gluster_key(r: &Remote) -> String {
    let host = if r.host.contains(':') {
        format!("[{}]", r.host)
    } else {
        r.host.clone()
    };
    format!("{host}:{}", r.path.trim_start_matches('/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transform_is_vdsms() {
        assert_eq!(transform("srv:/export/data_1"), "srv:_export_data__1");
        assert_eq!(transform("srv:/a__b/c"), "srv:_a____b_c");
        assert_eq!(transform("[fd00::1]:/e"), "[fd00::1]:_e");
        assert_eq!(transform("/data/local_sd"), "_data_local__sd");
        assert_eq!(transform("gl:vol"), "gl:vol");
    }

    #[test]
    fn remote_good() {
        let r = parse_remote("srv:/export/data", false).unwrap();
        assert_eq!((r.host.as_str(), r.path.as_str()), ("srv", "/export/data"));
        assert_eq!(r.spec(), "srv:/export/data");
        // Normalized like VDSM.
        assert_eq!(
            parse_remote("srv.example.com://a/./b//", false)
                .unwrap()
                .spec(),
            "srv.example.com:/a/b"
        );
        assert_eq!(
            parse_remote("10.0.0.1:/", false).unwrap().spec(),
            "10.0.0.1:/"
        );
        let r = parse_remote("[fd00::1]:/exp", false).unwrap();
        assert_eq!(r.host, "fd00::1");
        assert_eq!(r.spec(), "[fd00::1]:/exp");
        let r = parse_remote("mon1:6789:/vol", true).unwrap();
        assert_eq!((r.port, r.spec().as_str()), (Some(6789), "mon1:6789:/vol"));
        assert_eq!(
            parse_remote("srv:/données", false).unwrap().path,
            "/données"
        );
        assert_eq!(
            parse_remote("my_host-1:/x", false).unwrap().host,
            "my_host-1"
        );
    }

    #[test]
    fn remote_bad() {
        let bad = [
            ("", "empty"),
            ("srv:/a/../b", "'..'"),
            ("srv:/x,y", "','"),
            ("srv,rw:/x", "','"),
            ("srv:relative", "not absolute"),
            ("srv:", "no path"),
            ("/local/path", "not 'server:/path'"),
            ("srv:/a\nb", "control"),
            ("srv:/a\0b", "control"),
            ("srv:/a\\b", "'\\'"),
            ("-oexec:/x", "host name"),
            ("srv-:/x", "host name"),
            ("sr v:/x", "host name"),
            ("sérveur:/x", "not ASCII"),
            ("1.2.3.999:/x", "IPv4"),
            ("fd00::1:/x", "brackets"),
            ("[fd00::1:/x", "[IPv6]"),
            ("[fd00::zz]:/x", "IPv6"),
            ("[fd00::1%eth0]:/x", "IPv6"),
            ("mon:6789:/x", "not absolute"),
        ];
        for (spec, why) in bad {
            let err = parse_remote(spec, false).unwrap_err();
            assert!(err.contains(why), "{spec:?}: {err}");
        }
        for (spec, why) in [
            ("mon:0789:/x", "port"),
            ("mon:65536:/x", "port"),
            ("mon:0:/x", "port"),
        ] {
            let err = parse_remote(spec, true).unwrap_err();
            assert!(err.contains(why), "{spec:?}: {err}");
        }
        let long = format!("{}.x", "a".repeat(64));
        assert!(parse_remote(&format!("{long}:/x"), false).is_err());
    }

    #[test]
    fn gluster_forms() {
        let r = parse_gluster("gl1:/vol").unwrap();
        assert_eq!(r.spec(), "gl1:/vol");
        let r = parse_gluster("gl1:vol").unwrap();
        assert_eq!(r.spec(), "gl1:vol");
        assert_eq!(gluster_key(&r), "gl1:vol");
        assert_eq!(gluster_key(&parse_gluster("gl1:/vol/").unwrap()), "gl1:vol");
        assert_eq!(
            parse_gluster("gl1:/vol/sub//d").unwrap().spec(),
            "gl1:/vol/sub/d"
        );
        for bad in [
            "gl1:/",
            "gl1:/-vol",
            "gl1:/v ol",
            "gl1:/vol/../x",
            "gl1:/v,x",
            "gl1",
        ] {
            assert!(parse_gluster(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn table_sources() {
        assert_eq!(
            normalize_table_source("srv://export/", false).as_deref(),
            Some("srv:/export")
        );
        assert_eq!(
            normalize_table_source("gl:/vol.rdma", true).as_deref(),
            Some("gl:vol")
        );
        assert_eq!(
            normalize_table_source("/dev/loop0", false).as_deref(),
            Some("/dev/loop0")
        );
        assert_eq!(normalize_table_source("tmpfs", false), None);
    }

    #[test]
    fn abs_paths() {
        assert_eq!(normalize_abs_path("/a//b/./c/").unwrap(), "/a/b/c");
        assert_eq!(normalize_abs_path("/").unwrap(), "/");
        assert!(normalize_abs_path("a/b").is_err());
        assert!(normalize_abs_path("/a/..").is_err());
    }
}
