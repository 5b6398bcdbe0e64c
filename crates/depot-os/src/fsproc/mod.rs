//! File-system calls on storage mounts, made in helper processes.
//!
//! # Why
//!
//! A call on a hung NFS or GlusterFS mount puts the calling thread in
//! uninterruptible sleep (`D` state) until the server answers, perhaps
//! never. [`IoWorker`](crate::IoWorker) keeps the *caller* free with a
//! timeout, but its abandoned thread still belongs to depotd: the process
//! cannot exit while one of its threads is in `D` state, so a frozen mount
//! delayed depotd's shutdown past its grace (issue 15). Here the call runs
//! in a separate helper process instead (VDSM's ioprocess does the same);
//! depotd's thread only waits in `poll(2)` on the helper's pipe. A helper
//! that misses its deadline is sent SIGKILL and abandoned to a reaper
//! thread; depotd itself never enters the storage and can always exit.
//!
//! # What lives here
//!
//! - [`protocol`]: the typed requests and replies and their frames (a
//!   length-prefixed JSON header and raw data, capped before allocation,
//!   versioned by a hello; docs/formats.md).
//! - `server`: the helper's loop ([`serve_stdio`]): one request at a time
//!   on stdin/stdout, dies with its parent, keeps no inherited descriptor.
//! - `ops`: the calls themselves, every path confined to the helper's
//!   root with [`crate::confine`]'s walk and the `*at` calls.
//! - [`FsProc`] (`client`): one helper, a deadline on every call.
//! - [`FsPool`] (`pool`): the helpers of one mount, started on demand up to
//!   a maximum, with a [`Hung`](FsProcError::Hung) refusal when all are
//!   stuck, a [`PoolHealth`] report, and [`WriteStream`] for long writes
//!   with a deadline per step.
//!
//! No async runtime here: the API blocks, and async code calls it from
//! `spawn_blocking`. The helper command is a parameter ([`HelperCommand`]):
//! depotd re-executes itself (`depotd fsproc`), tests run the
//! `depot-fsproc` binary of this crate.

mod client;
mod error;
mod line_child;
mod ops;
mod pool;
pub mod protocol;
mod server;
mod shm;

pub use client::{kill_and_reap, spawn_child, FsProc, HelperCommand};
pub use error::FsProcError;
pub use line_child::{LineChild, MAX_LINE};
pub use pool::{BatchAnswers, FsPool, PoolConfig, PoolHealth, WriteStream, SHARED_MIN};
pub use protocol::{DirEntry, DirectProbe, FileKind, OpenWrite, Reply, Request, StatInfo, VfsInfo};
pub use server::{prepare_helper_process, serve, serve_stdio};
