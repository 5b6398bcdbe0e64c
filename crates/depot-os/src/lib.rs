//! depot-os: the one layer of depot that talks to the operating system.
//!
//! Every external program depot runs (mount, lvm, iscsiadm, multipath,
//! qemu-img, ...) goes through [`CommandRunner::run`], so that argv handling,
//! secret redaction, timeouts, output limits and logging are done once, here.

pub mod command;

pub use command::{
    Cmd, CmdError, CommandRunner, ExitStatus, Output, DEFAULT_STDOUT_LIMIT, STDERR_TAIL_LIMIT,
};
