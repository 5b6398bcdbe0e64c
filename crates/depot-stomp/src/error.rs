//! The one error of STOMP framing, in a module of its own so that the
//! frame and the parser both use it without importing each other.

/// Why the bytes are not a STOMP stream. After one, the parser gives the
/// same error again: a stream cannot be resynchronised.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("unknown command {0:?}")]
    UnknownCommand(String),
    #[error("the command and headers exceed the limit of {limit} bytes")]
    HeaderTooLarge { limit: usize },
    #[error("more than {limit} headers in one frame")]
    TooManyHeaders { limit: usize },
    #[error("the body exceeds the limit of {limit} bytes")]
    BodyTooLarge { limit: usize },
    #[error("malformed header line {0:?}")]
    MalformedHeader(String),
    #[error("invalid escape sequence in header {0:?}")]
    BadEscape(String),
    #[error("a header is not UTF-8")]
    NotUtf8,
    #[error("invalid content-length {0:?}")]
    BadContentLength(String),
    #[error("the body does not end with NUL")]
    MissingNul,
}
