//! STOMP 1.2 framing (<https://stomp.github.io/stomp-specification-1.2.html>),
//! shared by depotd's STOMP transport and depot-client's.
//!
//! - [`Parser`]: bytes in, frames out, for untrusted input. It is
//!   incremental (a frame may arrive in pieces, several frames in one
//!   piece) and strict: an unknown command, a malformed header, an
//!   undefined escape, a bad `content-length`, a body that does not end in
//!   NUL, or a frame over its [`Limits`] is an error, found while reading,
//!   so no more than one frame's limit plus the piece being read is ever
//!   held.
//! - [`Frame::encode`]: the bytes of a frame, headers escaped (except in
//!   CONNECT and CONNECTED, as the specification says), `content-length`
//!   always set, `\n` line ends.
//!
//! No I/O: the transports read and write. [`fuzz_parser`] is the body of
//! the fuzz target.

mod error;
mod frame;
mod fuzz;
mod parser;

pub use error::FrameError;
pub use frame::{escape, unescape, Command, Frame};
pub use fuzz::fuzz_parser;
pub use parser::{Limits, Parser};

/// The heart-beat a peer sends: one end of line between frames.
pub const HEARTBEAT: &[u8] = b"\n";
