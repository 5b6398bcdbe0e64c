//! The few Python 3 text rules VDSM's metadata code depends on.
//!
//! VDSM reads the domain metadata file with `str.splitlines()` and
//! `str.strip()`, and the volume metadata with `bytes.splitlines()` and
//! `str.strip()`. Rust's `lines()` and `trim()` differ from those at the
//! edges (Python splits on more characters, and counts U+001C..U+001F as
//! whitespace), so a file that VDSM and depot must read the same way needs
//! Python's rules, written here once.

/// True for the characters `str.splitlines()` breaks a line at.
pub(crate) fn is_str_line_break(c: char) -> bool {
    matches!(
        c,
        '\n' | '\r'
            | '\u{0b}'
            | '\u{0c}'
            | '\u{1c}'
            | '\u{1d}'
            | '\u{1e}'
            | '\u{85}'
            | '\u{2028}'
            | '\u{2029}'
    )
}

/// Python's `str.splitlines()` (no `keepends`): `\r\n` is one break, a
/// break at the very end does not start an empty last line.
pub(crate) fn str_splitlines(text: &str) -> Vec<&str> {
    let mut lines = Vec::new();
    let mut start = 0;
    let mut chars = text.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        if !is_str_line_break(c) {
            continue;
        }
        lines.push(&text[start..i]);
        let mut end = i + c.len_utf8();
        if c == '\r' {
            if let Some(&(j, '\n')) = chars.peek() {
                chars.next();
                end = j + 1;
            }
        }
        start = end;
    }
    if start < text.len() {
        lines.push(&text[start..]);
    }
    lines
}

/// Python's `bytes.splitlines()`: only `\n`, `\r` and `\r\n` break lines.
pub(crate) fn bytes_splitlines(data: &[u8]) -> Vec<&[u8]> {
    let mut lines = Vec::new();
    let mut start = 0;
    let mut i = 0;
    while i < data.len() {
        match data[i] {
            b'\n' => {
                lines.push(&data[start..i]);
                start = i + 1;
            }
            b'\r' => {
                lines.push(&data[start..i]);
                if data.get(i + 1) == Some(&b'\n') {
                    i += 1;
                }
                start = i + 1;
            }
            _ => {}
        }
        i += 1;
    }
    if start < data.len() {
        lines.push(&data[start..]);
    }
    lines
}

/// Python's `str.isspace()` for one character.
pub(crate) fn is_py_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// Python's `str.strip()` without arguments.
pub(crate) fn py_strip(s: &str) -> &str {
    s.trim_matches(is_py_space)
}

/// Appends `s` as Python's `s.encode("ascii", "xmlcharrefreplace")`: ASCII
/// as is, every other character as `&#<decimal code point>;`.
pub(crate) fn push_xmlcharref_ascii(out: &mut Vec<u8>, s: &str) {
    for c in s.chars() {
        if c.is_ascii() {
            out.push(c as u8);
        } else {
            out.extend_from_slice(format!("&#{};", u32::from(c)).as_bytes());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn str_splitlines_like_python() {
        assert_eq!(str_splitlines(""), Vec::<&str>::new());
        assert_eq!(str_splitlines("a\n"), vec!["a"]);
        assert_eq!(str_splitlines("a\n\nb"), vec!["a", "", "b"]);
        assert_eq!(str_splitlines("a\r\nb\rc"), vec!["a", "b", "c"]);
        assert_eq!(
            str_splitlines("a\u{2028}b\u{0c}c\u{85}"),
            vec!["a", "b", "c"]
        );
        assert_eq!(str_splitlines("a\r\r\nb"), vec!["a", "", "b"]);
        // U+001F is whitespace to Python but not a line break.
        assert_eq!(str_splitlines("a\u{1f}b"), vec!["a\u{1f}b"]);
    }

    #[test]
    fn bytes_splitlines_like_python() {
        assert_eq!(
            bytes_splitlines(b"a\nb\r\nc\rd"),
            vec![&b"a"[..], b"b", b"c", b"d"]
        );
        assert_eq!(bytes_splitlines(b"a\x0bb\n"), vec![&b"a\x0bb"[..]]);
        assert_eq!(bytes_splitlines(b"\n"), vec![&b""[..]]);
    }

    #[test]
    fn strip_and_charrefs() {
        assert_eq!(py_strip("\u{1f} a b\t\u{3000}"), "a b");
        let mut out = Vec::new();
        push_xmlcharref_ascii(&mut out, "é-日-😀");
        assert_eq!(out, b"&#233;-&#26085;-&#128512;");
    }
}
