//! The path behind an open descriptor, for error messages. Its own module
//! because both `direct` and `fsutil` name files in their errors and
//! `fsutil` builds on `direct`'s aligned buffers: here it imports neither.

use std::fs;
use std::os::fd::AsRawFd;
use std::path::PathBuf;

/// The path an open file was opened as, for error messages; `fd N` when it
/// cannot be found.
pub(crate) fn fd_path(file: &impl AsRawFd) -> PathBuf {
    let fd = file.as_raw_fd();
    fs::read_link(format!("/proc/self/fd/{fd}"))
        .unwrap_or_else(|_| PathBuf::from(format!("fd {fd}")))
}
