//! The SPM mailbox (docs/storage.md, "Thin volume extension"; the bytes
//! in docs/formats.md, "SPM mailbox (version 1)"): how a host asks the SPM
//! to extend a thin block volume's LV through the master domain's `inbox`
//! and `outbox`, in VDSM's format.
//!
//! * [`format`]: the messages and mailboxes, parsed from untrusted bytes;
//! * [`io`]: `O_DIRECT` reads and writes with a timeout;
//! * [`host`]: a host's requests and the wait for their answers;
//! * [`spm`]: the SPM's thread that answers them.

pub mod format;
pub mod host;
pub mod io;
pub mod spm;

#[cfg(test)]
pub(crate) mod test_areas;
#[cfg(test)]
mod tests;
