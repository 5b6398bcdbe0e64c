//! Frames, commands, header escaping and encoding.

use std::borrow::Cow;
use std::fmt;

use crate::error::FrameError;

/// The commands of STOMP 1.2, client and server frames alike. Which ones a
/// side accepts is the session's business; anything else is not a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Command {
    // Client frames.
    Connect,
    Stomp,
    Send,
    Subscribe,
    Unsubscribe,
    Ack,
    Nack,
    Begin,
    Commit,
    Abort,
    Disconnect,
    // Server frames.
    Connected,
    Message,
    Receipt,
    Error,
}

const ALL: [Command; 15] = [
    Command::Connect,
    Command::Stomp,
    Command::Send,
    Command::Subscribe,
    Command::Unsubscribe,
    Command::Ack,
    Command::Nack,
    Command::Begin,
    Command::Commit,
    Command::Abort,
    Command::Disconnect,
    Command::Connected,
    Command::Message,
    Command::Receipt,
    Command::Error,
];

impl Command {
    pub fn as_str(self) -> &'static str {
        match self {
            Command::Connect => "CONNECT",
            Command::Stomp => "STOMP",
            Command::Send => "SEND",
            Command::Subscribe => "SUBSCRIBE",
            Command::Unsubscribe => "UNSUBSCRIBE",
            Command::Ack => "ACK",
            Command::Nack => "NACK",
            Command::Begin => "BEGIN",
            Command::Commit => "COMMIT",
            Command::Abort => "ABORT",
            Command::Disconnect => "DISCONNECT",
            Command::Connected => "CONNECTED",
            Command::Message => "MESSAGE",
            Command::Receipt => "RECEIPT",
            Command::Error => "ERROR",
        }
    }

    /// The command a line names, exactly (STOMP commands are upper case).
    pub fn from_bytes(line: &[u8]) -> Option<Command> {
        ALL.into_iter().find(|c| c.as_str().as_bytes() == line)
    }

    /// CONNECT and CONNECTED frames carry their headers unescaped, so that
    /// STOMP 1.0 peers can read them; every other frame escapes them.
    pub fn escapes_headers(self) -> bool {
        !matches!(self, Command::Connect | Command::Stomp | Command::Connected)
    }
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One frame. Headers keep their order and repeats; [`Frame::get`] gives
/// the first, which is the one that counts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub command: Command,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Frame {
    pub fn new(command: Command) -> Frame {
        Frame {
            command,
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    /// Adds a header (builder style).
    pub fn with(mut self, name: impl Into<String>, value: impl Into<String>) -> Frame {
        self.headers.push((name.into(), value.into()));
        self
    }

    pub fn with_body(mut self, body: impl Into<Vec<u8>>) -> Frame {
        self.body = body.into();
        self
    }

    /// The value of the first header called `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The frame's bytes: command, headers (escaped when the command
    /// escapes them), `content-length` of the body (any given one is
    /// replaced), a blank line, the body and NUL.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64 + self.body.len() + 32 * self.headers.len());
        self.encode_into(&mut out);
        out
    }

    /// [`Frame::encode`], appended to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        let esc = self.command.escapes_headers();
        out.extend_from_slice(self.command.as_str().as_bytes());
        out.push(b'\n');
        for (name, value) in &self.headers {
            if name == "content-length" {
                continue;
            }
            if esc {
                out.extend_from_slice(escape(name).as_bytes());
                out.push(b':');
                out.extend_from_slice(escape(value).as_bytes());
            } else {
                // Unescaped frames cannot carry these; drop them rather
                // than emit a line that breaks the frame.
                let clean = |s: &str| s.replace(['\n', '\r'], " ");
                out.extend_from_slice(clean(name).replace(':', " ").as_bytes());
                out.push(b':');
                out.extend_from_slice(clean(value).as_bytes());
            }
            out.push(b'\n');
        }
        out.extend_from_slice(b"content-length:");
        out.extend_from_slice(self.body.len().to_string().as_bytes());
        out.extend_from_slice(b"\n\n");
        out.extend_from_slice(&self.body);
        out.push(0);
    }
}

/// A header name or value as it goes on the wire: `\\`, `\n`, `\r` and `:`
/// escaped.
pub fn escape(s: &str) -> Cow<'_, str> {
    if !s.contains(['\\', '\n', '\r', ':']) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            ':' => out.push_str("\\c"),
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// A header name or value off the wire. Only the four escapes of STOMP 1.2
/// exist; any other backslash is a fatal error, as the specification says.
pub fn unescape(raw: &[u8]) -> Result<String, FrameError> {
    let bad = || FrameError::BadEscape(printable(raw));
    let text = if memchr::memchr(b'\\', raw).is_none() {
        raw.to_vec()
    } else {
        let mut out = Vec::with_capacity(raw.len());
        let mut it = raw.iter();
        while let Some(&b) = it.next() {
            if b != b'\\' {
                out.push(b);
                continue;
            }
            out.push(match it.next() {
                Some(b'\\') => b'\\',
                Some(b'n') => b'\n',
                Some(b'r') => b'\r',
                Some(b'c') => b':',
                _ => return Err(bad()),
            });
        }
        out
    };
    String::from_utf8(text).map_err(|_| FrameError::NotUtf8)
}

/// At most 64 characters of untrusted bytes, for error messages.
pub(crate) fn printable(raw: &[u8]) -> String {
    let s = String::from_utf8_lossy(&raw[..raw.len().min(64)]);
    s.chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_round_trip_and_unknown_ones_are_none() {
        for c in ALL {
            assert_eq!(Command::from_bytes(c.as_str().as_bytes()), Some(c));
        }
        for bad in [&b"send"[..], b"SEND ", b"", b"FOO", b"CONNECTX"] {
            assert_eq!(Command::from_bytes(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn escapes_both_ways() {
        let s = "a:b\\c\nd\re";
        let e = escape(s);
        assert_eq!(e, "a\\cb\\\\c\\nd\\re");
        assert_eq!(unescape(e.as_bytes()).unwrap(), s);
        assert!(matches!(escape("plain"), Cow::Borrowed(_)));
        for bad in [&b"a\\t"[..], b"\\", b"x\\"] {
            assert!(
                matches!(unescape(bad), Err(FrameError::BadEscape(_))),
                "{bad:?}"
            );
        }
        assert!(matches!(unescape(b"\xff"), Err(FrameError::NotUtf8)));
    }

    #[test]
    fn encodes_with_content_length_and_escapes_except_in_connected() {
        let f = Frame::new(Command::Message)
            .with("destination", "a:b")
            .with("content-length", "999")
            .with_body(&b"x\0y"[..]);
        assert_eq!(
            f.encode(),
            b"MESSAGE\ndestination:a\\cb\ncontent-length:3\n\nx\0y\0".to_vec()
        );
        let f = Frame::new(Command::Connected).with("server", "depot:1");
        assert_eq!(
            f.encode(),
            b"CONNECTED\nserver:depot:1\ncontent-length:0\n\n\0".to_vec()
        );
    }
}
