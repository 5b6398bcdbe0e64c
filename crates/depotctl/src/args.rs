//! Command-line arguments.

use clap::{Args, Parser, Subcommand};
use depot_api::types::Uuid;
use std::path::PathBuf;

const AFTER_HELP: &str = "\
Connection: the local socket by default (--socket, else $DEPOT_SOCKET, else
./depot-dev/depotd.sock when it exists, else /run/depot/depotd.sock).
--host switches to mutual TLS; certificates come from --ca/--cert/--key, else
from --pki DIR (default ./depot-dev/state/pki when it exists, else
/etc/pki/depot). --stomp speaks STOMP 1.2 on either, as the engine does.

Exit codes:
  0  success
  1  the call returned an error (printed as 'error <code>: <message>')
  2  usage error (bad arguments, unreadable parameter or input file,
     unwritable output file)
  3  cannot connect, or the transport failed (TLS, HTTP, timeout)
  130  interrupted (Ctrl-C)";

/// depot's admin CLI: calls the daemon's JSON-RPC verbs.
#[derive(Debug, Parser)]
#[command(name = "depotctl", version, about, after_help = AFTER_HELP)]
pub struct Cli {
    #[command(flatten)]
    pub conn: ConnArgs,
    #[command(subcommand)]
    pub cmd: Cmd,
}

#[derive(Debug, Clone, Default, Args)]
pub struct ConnArgs {
    /// The daemon's local socket.
    #[arg(long, global = true, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// Connect over TLS to HOST:PORT (port defaults to 54321) instead of the
    /// local socket.
    #[arg(long, global = true, value_name = "HOST:PORT")]
    pub host: Option<String>,
    /// CA certificate (PEM) that signed the server's certificate [TLS].
    #[arg(long, global = true, value_name = "FILE")]
    pub ca: Option<PathBuf>,
    /// Client certificate (PEM) [TLS].
    #[arg(long, global = true, value_name = "FILE")]
    pub cert: Option<PathBuf>,
    /// Client private key (PEM) [TLS].
    #[arg(long, global = true, value_name = "FILE")]
    pub key: Option<PathBuf>,
    /// Directory to take --ca/--cert/--key from: ca.pem, client.pem,
    /// client-key.pem (dev layout) or certs/cacert.pem, certs/client.pem,
    /// keys/client-key.pem (system layout) [TLS].
    #[arg(long, global = true, value_name = "DIR")]
    pub pki: Option<PathBuf>,
    /// Name to verify the server certificate against (default: the host
    /// part of --host) [TLS].
    #[arg(long, global = true, value_name = "NAME")]
    pub server_name: Option<String>,
    /// Seconds to wait for the connection and for each call (for OVF
    /// uploads and downloads: for each step of progress).
    #[arg(long, global = true, value_name = "SECS", default_value = "30",
          value_parser = positive_secs)]
    pub timeout: f64,
    /// Flow id sent with each call (ovirtCorrelationId), to find the call in
    /// the daemon's log.
    #[arg(long, global = true, value_name = "ID")]
    pub flow_id: Option<String>,
    /// Talk JSON-RPC over STOMP 1.2, as oVirt's engine does (calls to
    /// jms.topic.vdsm_requests, events from jms.queue.events), instead of
    /// HTTP POST and a WebSocket. OVF uploads and downloads stay HTTP.
    #[arg(long, global = true)]
    pub stomp: bool,
}

#[derive(Debug, Subcommand)]
pub enum Cmd {
    /// Checks that the daemon answers (Host.ping2); prints "ok".
    Ping,
    /// Calls any verb: `depotctl call Host.getJobs job_ids='["<uuid>"]'`.
    ///
    /// Each parameter is KEY=VALUE. VALUE is taken as JSON when it parses
    /// (5, true, null, ["a"], {"k": 1}, "quoted"), else as a string.
    /// KEY=@FILE reads the JSON value from FILE; KEY=@@text is the string
    /// "@text".
    Call {
        /// The verb, such as Host.getJobs.
        method: String,
        /// Named parameters.
        #[arg(value_name = "KEY=VALUE")]
        params: Vec<String>,
        /// Print the result as compact JSON, exactly as received.
        #[arg(long)]
        json: bool,
    },
    /// Lists host jobs with status, progress, and error or result.
    Jobs {
        /// Keep redrawing until no job is pending or running.
        #[arg(long)]
        watch: bool,
        /// Seconds between refreshes when watching (events, when the daemon
        /// sends them, update sooner).
        #[arg(long, value_name = "SECS", default_value = "2", value_parser = positive_secs)]
        interval: f64,
    },
    /// Prints the events the daemon pushes, one line each, until Ctrl-C.
    Events {
        /// Event name prefixes, such as '|jobs|status|' (all when none).
        prefixes: Vec<String>,
        /// Stop after this many events.
        #[arg(long, value_name = "N")]
        count: Option<u64>,
    },
    /// Copies one volume's data into an existing volume (SDM.copy_data),
    /// showing the job's progress until it ends; prints the checksum.
    ///
    /// Ctrl-C stops watching, not the copy: abort it with
    /// `depotctl call Host.abortJob job_id=<id>`.
    Copy {
        /// The source volume.
        #[arg(value_name = "SD/IMG/VOL", value_parser = vol_path)]
        src: VolPath,
        /// The destination volume (it must exist).
        #[arg(value_name = "SD/IMG/VOL", value_parser = vol_path)]
        dst: VolPath,
        /// The generation the destination must have (else error 911); it
        /// has generation+1 after the copy.
        #[arg(long, value_name = "N")]
        generation: Option<u64>,
        /// Print the job id and return without waiting.
        #[arg(long)]
        no_wait: bool,
    },
    /// Moves (or copies) a whole image to another domain (Image.move),
    /// showing the job's progress until it ends.
    ///
    /// Ctrl-C stops watching, not the move: abort it with
    /// `depotctl call Host.abortJob job_id=<id>`.
    Move {
        /// The source domain.
        #[arg(long, value_name = "UUID", value_parser = uuid_arg)]
        domain: Uuid,
        /// The destination domain.
        #[arg(long, value_name = "UUID", value_parser = uuid_arg)]
        to: Uuid,
        /// The image.
        #[arg(long, value_name = "UUID", value_parser = uuid_arg)]
        image: Uuid,
        /// Keep the source (operation COPY instead of MOVE).
        #[arg(long)]
        copy: bool,
        /// Wipe the source after moving.
        #[arg(long, conflicts_with = "copy")]
        post_zero: bool,
        /// Replace an existing image on the destination.
        #[arg(long)]
        force: bool,
        /// Print the job id and return without waiting.
        #[arg(long)]
        no_wait: bool,
    },
    /// OVF_STORE volumes: upload and download the engine's tar, list a
    /// domain's stores and the VMs and templates they describe.
    #[command(subcommand)]
    Ovf(OvfCmd),
    /// OVF backup providers: the copies of each VM's and template's OVF
    /// across them, the copy depot trusts, and a restore into a domain's
    /// OVF_STORE (docs/storage.md, "OVF backup providers").
    #[command(subcommand)]
    Backup(BackupCmd),
    /// Disaster recovery from a mapping file (docs/dr.md).
    #[command(subcommand)]
    Dr(DrCmd),
}

#[derive(Debug, Subcommand)]
pub enum BackupCmd {
    /// Lists every VM and template the providers hold: its copies, which
    /// agree, and the copy depot trusts.
    List {
        /// Print the daemon's answer as JSON.
        #[arg(long)]
        json: bool,
    },
    /// One entity's copies, the trusted copy and why, and its OVF.
    Show {
        /// The VM or template id.
        #[arg(value_name = "ENTITY_ID", value_parser = uuid_arg)]
        entity: Uuid,
        /// Print the daemon's answer as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Writes the trusted copies (or one provider's) into a domain's
    /// OVF_STORE as a new generation.
    Restore {
        /// The domain to restore into.
        #[arg(long, value_name = "UUID", value_parser = uuid_arg)]
        domain: Uuid,
        /// The OVF_STORE's image (with --volume; default: the domain's
        /// first OVF_STORE).
        #[arg(long, value_name = "UUID", value_parser = uuid_arg, requires = "volume")]
        image: Option<Uuid>,
        /// The OVF_STORE volume.
        #[arg(long, value_name = "UUID", value_parser = uuid_arg, requires = "image")]
        volume: Option<Uuid>,
        /// Restore only this entity (repeatable; default: all).
        #[arg(long = "entity", value_name = "UUID", value_parser = uuid_arg)]
        entities: Vec<Uuid>,
        /// Take this provider's newest copy instead of the trusted one.
        #[arg(long, value_name = "NAME")]
        provider: Option<String>,
        /// Print the daemon's answer as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Attaches an existing archive file: --resume records into it from
    /// now on; --fresh keeps it read only for restores.
    Attach {
        /// The archive (an absolute path on the daemon's host).
        #[arg(value_name = "PATH")]
        path: PathBuf,
        /// Continue from its latest generation.
        #[arg(long, conflicts_with = "fresh", required_unless_present = "fresh")]
        resume: bool,
        /// Keep it read only and go on with the configured archive.
        #[arg(long)]
        fresh: bool,
        /// Print the daemon's answer as JSON.
        #[arg(long)]
        json: bool,
    },
}

/// The formats of a DR mapping file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum MappingFormat {
    /// depot's own TOML.
    Toml,
    /// The oVirt Ansible role's var file (its dr_import_storages).
    Ansible,
}

#[derive(Debug, Subcommand)]
pub enum DrCmd {
    /// Shows what a failover with the mapping would do, changing nothing
    /// (DR.plan): per connection, what would be disconnected and
    /// connected; per domain, where this host sees it; and the fence
    /// check: the hosts other than this one that still renew their
    /// leases, which refuse the failover unless confirmed fenced.
    ///
    /// The file is read here and its text sent: the daemon opens no file
    /// a caller names.
    Plan {
        /// The mapping file.
        #[arg(long, value_name = "FILE")]
        mapping: PathBuf,
        /// Its format (default: ansible for a .yml or .yaml file, else
        /// toml).
        #[arg(long, value_enum)]
        format: Option<MappingFormat>,
        /// Plan the failback: the same mapping reversed.
        #[arg(long)]
        failback: bool,
        /// A host id confirmed fenced (repeat for each); the plan
        /// records nothing.
        #[arg(long, value_name = "HOST_ID")]
        confirm_fenced: Vec<u64>,
        /// The recovery pool's id, where the mapping names none (an
        /// Ansible var file knows the data centers by name only).
        #[arg(long, value_name = "POOL_UUID")]
        recovery_pool: Option<String>,
        /// Print the plan as JSON, exactly as received.
        #[arg(long)]
        json: bool,
    },
    /// Fails over to the mapping's secondaries (DR.failover): a host job
    /// in five steps, each journaled in the daemon's state directory, so
    /// that a rerun with the same mapping continues where a crash
    /// stopped it. Shows each step as it starts, then the report.
    Failover(DrRun),
    /// Fails back (DR.failback): the mapping reversed; refused while the
    /// site failed over to holds domain metadata its copy on the other
    /// site does not (not resynced).
    Failback(DrRun),
    /// The last failover or failback of this host (DR.status): its
    /// journal, or its report once finished.
    Status {
        /// Print the status as JSON, exactly as received.
        #[arg(long)]
        json: bool,
    },
}

/// What `dr failover` and `dr failback` take.
#[derive(Debug, Clone, Args)]
pub struct DrRun {
    /// The mapping file.
    #[arg(long, value_name = "FILE")]
    pub mapping: PathBuf,
    /// Its format (default: ansible for a .yml or .yaml file, else toml).
    #[arg(long, value_enum)]
    pub format: Option<MappingFormat>,
    /// Steps 1 and 3 read-only, and what 2, 4 and 5 would do; nothing is
    /// written, no job started.
    #[arg(long)]
    pub dry_run: bool,
    /// A host id confirmed fenced (repeat for each), recorded in the
    /// journal.
    #[arg(long, value_name = "HOST_ID")]
    pub confirm_fenced: Vec<u64>,
    /// This host's sanlock host id in the recovered domains (default:
    /// the mapping's hosts.this_host; a failback needs it).
    #[arg(long, value_name = "HOST_ID")]
    pub host_id: Option<u64>,
    /// The recovery pool's id, where the mapping names none (an
    /// Ansible var file knows the data centers by name only).
    #[arg(long, value_name = "POOL_UUID")]
    pub recovery_pool: Option<String>,
    /// Print the report (or the dry run) as JSON, exactly as received.
    #[arg(long)]
    pub json: bool,
}

/// The OVF_STORE volume a stream goes to or comes from.
#[derive(Debug, Clone, Args)]
pub struct OvfVolume {
    /// The storage pool (sent as Storage-Pool-Id).
    #[arg(long, value_name = "UUID", value_parser = uuid_arg)]
    pub pool: Uuid,
    /// The storage domain.
    #[arg(long, value_name = "UUID", value_parser = uuid_arg)]
    pub domain: Uuid,
    /// The OVF_STORE's image.
    #[arg(long, value_name = "UUID", value_parser = uuid_arg)]
    pub image: Uuid,
    /// The OVF_STORE's volume (RAW, DISKTYPE OVFS).
    #[arg(long, value_name = "UUID", value_parser = uuid_arg)]
    pub volume: Uuid,
}

#[derive(Debug, Subcommand)]
pub enum OvfCmd {
    /// Uploads FILE, the engine's tar (info.json, <uuid>.ovf files,
    /// metadata.json), into an OVF_STORE volume; prints the Task-Id.
    ///
    /// The daemon checks the archive as it arrives and replaces the store
    /// only when all of it is valid.
    Upload {
        #[command(flatten)]
        target: OvfVolume,
        /// The tar to upload (its size is sent as Content-Length).
        #[arg(value_name = "FILE")]
        file: PathBuf,
    },
    /// Downloads an OVF_STORE volume's tar into OUT ('-': standard output).
    Download {
        #[command(flatten)]
        target: OvfVolume,
        /// Bytes to read from the start of the volume (default: the size of
        /// the store's content, from StorageDomain.getOvfStores).
        #[arg(long, value_name = "N", value_parser = positive_size)]
        size: Option<u64>,
        /// Where to write the tar.
        #[arg(value_name = "OUT")]
        out: PathBuf,
    },
    /// Lists a domain's OVF_STORE volumes: ids, state (valid, torn or
    /// unknown), size, generation, last update.
    List {
        /// The storage domain.
        #[arg(long, value_name = "UUID", value_parser = uuid_arg)]
        domain: Uuid,
        /// Also list the VMs and templates of the best valid store, and
        /// whether all their disk images are on the domain.
        #[arg(long)]
        entities: bool,
    },
    /// Prints one VM's or template's OVF (XML) from the domain's best valid
    /// OVF_STORE.
    Show {
        /// The storage domain.
        #[arg(long, value_name = "UUID", value_parser = uuid_arg)]
        domain: Uuid,
        /// The VM or template id.
        #[arg(value_name = "ENTITY_ID", value_parser = uuid_arg)]
        entity: Uuid,
    },
}

/// A volume given as `SD/IMG/VOL`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VolPath {
    pub sd: Uuid,
    pub img: Uuid,
    pub vol: Uuid,
}

fn vol_path(s: &str) -> Result<VolPath, String> {
    let parts: Vec<&str> = s.split('/').collect();
    let [sd, img, vol] = parts[..] else {
        return Err(format!(
            "{s:?} is not SD/IMG/VOL (domain, image and volume UUIDs)"
        ));
    };
    Ok(VolPath {
        sd: uuid_arg(sd)?,
        img: uuid_arg(img)?,
        vol: uuid_arg(vol)?,
    })
}

fn uuid_arg(s: &str) -> Result<Uuid, String> {
    s.parse::<Uuid>()
        .map_err(|_| format!("{s:?} is not a UUID (8-4-4-4-12 hex digits)"))
}

fn positive_size(s: &str) -> Result<u64, String> {
    match s.parse::<u64>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(format!("{s:?} is not a positive number of bytes")),
    }
}

fn positive_secs(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 && v <= 1e6 => Ok(v),
        _ => Err(format!("{s:?} is not a positive number of seconds")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn global_flags_go_anywhere() {
        let c = Cli::try_parse_from([
            "depotctl",
            "call",
            "Host.getJobs",
            "n=1",
            "--json",
            "--timeout",
            "2.5",
        ])
        .unwrap();
        assert_eq!(c.conn.timeout, 2.5);
        let Cmd::Call {
            method,
            params,
            json,
        } = c.cmd
        else {
            panic!()
        };
        assert_eq!(
            (method.as_str(), params, json),
            ("Host.getJobs", vec!["n=1".into()], true)
        );
        assert!(Cli::try_parse_from(["depotctl", "--timeout", "0", "ping"]).is_err());
        assert!(Cli::try_parse_from(["depotctl"]).is_err());
    }

    const SP: &str = "5c1b1f0e-7a8d-4c1e-9b0a-3f2e1d0c9b8a";
    const SD: &str = "75f8a1bb-4504-4314-91ca-d9365a30692b";
    const IMG: &str = "c6f9f2b3-0d3c-4a8e-9a57-6f3c1b2a9e10";
    const VOL: &str = "0f6e1d2c-3b4a-4958-8776-655443322110";

    fn ovf(args: &[&str]) -> Result<OvfCmd, clap::Error> {
        let argv = ["depotctl", "ovf"].iter().chain(args).copied();
        Cli::try_parse_from(argv).map(|c| match c.cmd {
            Cmd::Ovf(o) => o,
            other => panic!("{other:?}"),
        })
    }

    fn ids(extra: &[&'static str]) -> Vec<&'static str> {
        let mut v = vec![
            "--pool", SP, "--domain", SD, "--image", IMG, "--volume", VOL,
        ];
        v.extend_from_slice(extra);
        v
    }

    #[test]
    fn ovf_upload_and_download() {
        let mut args = vec!["upload"];
        args.extend(ids(&["store.tar"]));
        let OvfCmd::Upload { target, file } = ovf(&args).unwrap() else {
            panic!()
        };
        assert_eq!(
            [target.pool, target.domain, target.image, target.volume].map(|u| u.to_string()),
            [SP, SD, IMG, VOL]
        );
        assert_eq!(file, PathBuf::from("store.tar"));

        // Options in any order, upper-case UUIDs read as the same ids.
        let upper = VOL.to_uppercase();
        let OvfCmd::Download { target, size, out } = ovf(&[
            "download", "out.tar", "--size", "10240", "--volume", &upper, "--image", IMG,
            "--domain", SD, "--pool", SP,
        ])
        .unwrap() else {
            panic!()
        };
        assert_eq!(
            (target.volume.to_string(), size),
            (VOL.to_string(), Some(10240))
        );
        assert_eq!(out, PathBuf::from("out.tar"));
        let mut args = vec!["download"];
        args.extend(ids(&["-"]));
        let OvfCmd::Download { size, out, .. } = ovf(&args).unwrap() else {
            panic!()
        };
        assert_eq!((size, out), (None, PathBuf::from("-")));
    }

    #[test]
    fn ovf_bad_arguments() {
        // Each id is required, and must be a UUID.
        assert!(ovf(&["upload", "--pool", SP, "--domain", SD, "--image", IMG, "f"]).is_err());
        let mut args = vec!["upload"];
        args.extend(ids(&[]));
        assert!(ovf(&args).is_err(), "no FILE");
        let e = ovf(&[
            "upload", "--pool", "sp", "--domain", SD, "--image", IMG, "--volume", VOL, "f",
        ])
        .unwrap_err();
        assert!(e.to_string().contains("not a UUID"), "{e}");
        for size in ["0", "-1", "1k", ""] {
            let mut args = vec!["download", "--size", size];
            args.extend(ids(&["out"]));
            assert!(ovf(&args).is_err(), "--size {size:?}");
        }
        assert!(ovf(&["list"]).is_err(), "no --domain");
        assert!(ovf(&["show", "--domain", SD]).is_err(), "no entity");
        assert!(ovf(&["show", "--domain", SD, "myvm"]).is_err());
        assert!(ovf(&["copy"]).is_err());
    }

    fn parse(args: &[&str]) -> Result<Cmd, clap::Error> {
        let argv = ["depotctl"].iter().chain(args).copied();
        Cli::try_parse_from(argv).map(|c| c.cmd)
    }

    #[test]
    fn copy_arguments() {
        let src = format!("{SD}/{IMG}/{VOL}");
        let dst = format!("{SP}/{IMG}/{}", VOL.to_uppercase());
        let Cmd::Copy {
            src: s,
            dst: d,
            generation,
            no_wait,
        } = parse(&["copy", &src, &dst]).unwrap()
        else {
            panic!()
        };
        assert_eq!(
            [s.sd, s.img, s.vol, d.sd, d.vol].map(|u| u.to_string()),
            [SD, IMG, VOL, SP, VOL]
        );
        assert_eq!((generation, no_wait), (None, false));
        let Cmd::Copy {
            generation,
            no_wait,
            ..
        } = parse(&["copy", "--no-wait", &src, &dst, "--generation", "3"]).unwrap()
        else {
            panic!()
        };
        assert_eq!((generation, no_wait), (Some(3), true));

        // Each part must be a UUID; exactly three parts; both volumes.
        for bad in [
            format!("{SD}/{IMG}"),
            format!("{SD}/{IMG}/{VOL}/{VOL}"),
            format!("{SD}/{IMG}/vol"),
            format!("{SD}//{VOL}"),
            format!("{SD}/{IMG}/{VOL}/"),
            String::new(),
        ] {
            let e = parse(&["copy", &bad, &dst]).unwrap_err();
            assert_eq!(e.exit_code(), 2, "{bad:?}");
        }
        assert!(parse(&["copy", &src]).is_err());
        assert!(parse(&["copy", &src, &dst, "--generation", "-1"]).is_err());
        assert!(parse(&["copy", &src, &dst, "--generation", "x"]).is_err());
    }

    #[test]
    fn move_arguments() {
        let Cmd::Move {
            domain,
            to,
            image,
            copy,
            post_zero,
            force,
            no_wait,
        } = parse(&["move", "--domain", SD, "--to", SP, "--image", IMG]).unwrap()
        else {
            panic!()
        };
        assert_eq!([domain, to, image].map(|u| u.to_string()), [SD, SP, IMG]);
        assert!(!(copy || post_zero || force || no_wait));
        let Cmd::Move {
            copy,
            force,
            no_wait,
            ..
        } = parse(&[
            "move",
            "--copy",
            "--force",
            "--no-wait",
            "--image",
            IMG,
            "--to",
            SP,
            "--domain",
            SD,
        ])
        .unwrap()
        else {
            panic!()
        };
        assert!(copy && force && no_wait);
        let Cmd::Move { post_zero, .. } = parse(&[
            "move",
            "--domain",
            SD,
            "--to",
            SP,
            "--image",
            IMG,
            "--post-zero",
        ])
        .unwrap() else {
            panic!()
        };
        assert!(post_zero);
        assert!(
            parse(&["move", "--domain", SD, "--to", SP]).is_err(),
            "no --image"
        );
        assert!(
            parse(&["move", "--domain", SD, "--image", IMG]).is_err(),
            "no --to"
        );
        assert!(parse(&["move", "--domain", SD, "--to", "c", "--image", IMG]).is_err());
        assert!(parse(&[
            "move",
            "--domain",
            SD,
            "--to",
            SP,
            "--image",
            IMG,
            "--copy",
            "--post-zero"
        ])
        .is_err());
    }

    #[test]
    fn ovf_list_and_show() {
        let OvfCmd::List { domain, entities } = ovf(&["list", "--domain", SD]).unwrap() else {
            panic!()
        };
        assert_eq!((domain.to_string(), entities), (SD.to_string(), false));
        let OvfCmd::List { entities, .. } = ovf(&["list", "--entities", "--domain", SD]).unwrap()
        else {
            panic!()
        };
        assert!(entities);
        let OvfCmd::Show { domain, entity } = ovf(&["show", "--domain", SD, IMG]).unwrap() else {
            panic!()
        };
        assert_eq!(
            (domain.to_string(), entity.to_string()),
            (SD.to_string(), IMG.to_string())
        );
        // Global flags after the subcommand too.
        let c = Cli::try_parse_from(["depotctl", "ovf", "list", "--domain", SD, "--timeout", "5"])
            .unwrap();
        assert_eq!(c.conn.timeout, 5.0);
    }
}
