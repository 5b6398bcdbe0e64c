//! The on-disk metadata formats of VDSM storage domains, as pure text
//! transformations (no I/O: callers read and write the files).
//!
//! - [`kv`]: the sealed `key=value` format of `dom_md/metadata`.
//! - [`domain`]: the typed keys of a V5 file domain on top of it.
//! - [`volume`]: the 512-byte `KEY=value`/`EOF` record of a volume.
//!
//! Byte compatibility with VDSM is the point: a domain depot writes must be
//! readable by VDSM and the other way round. docs/formats.md describes the
//! formats and where depot differs.

pub mod domain;
pub mod kv;
mod pytext;
pub mod volume;

pub use domain::DomainMetadata;
pub use kv::KvMetadata;
pub use volume::{next_generation, VolumeMetadata};
