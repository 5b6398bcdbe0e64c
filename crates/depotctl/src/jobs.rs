//! `depotctl jobs`: the job table, and watching it change.

use depot_api::types::{JobInfo, JobStatus};
use depot_api::JOB_STATUS_EVENT;
use depot_client::{ClientError, Endpoint, Options};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::time::{Duration, Instant};

use crate::rpc::{Events, Rpc};
use crate::Failure;

pub const BAR_WIDTH: usize = 10;
const HEADER: [&str; 5] = [
    "JOB ID",
    "STATUS",
    "PROGRESS",
    "DESCRIPTION",
    "ERROR/RESULT",
];

/// `[####......]  42%`: ten cells, rounded to the nearest; a done job that
/// reports no progress is full, any other job without progress shows `--`.
pub fn progress_bar(progress: Option<u8>, status: JobStatus) -> String {
    let p = match (progress, status) {
        (Some(p), _) => Some(p.min(100) as usize),
        (None, JobStatus::Done) => Some(100),
        (None, _) => None,
    };
    match p {
        Some(p) => {
            let filled = (p * BAR_WIDTH + 50) / 100;
            format!(
                "[{}{}] {:>4}",
                "#".repeat(filled),
                ".".repeat(BAR_WIDTH - filled),
                format!("{p}%")
            )
        }
        None => format!("[{}] {:>4}", ".".repeat(BAR_WIDTH), "--"),
    }
}

/// The last column: the error of a failed or aborted job, the result of a
/// done one (compact JSON).
pub fn outcome(job: &JobInfo) -> String {
    match (&job.error, &job.result) {
        (Some(e), _) => format!("error {}: {}", e.code, e.message),
        (None, Some(r)) if job.status.is_final() => r.to_string(),
        _ => String::new(),
    }
}

fn cells(job: &JobInfo) -> [String; 5] {
    [
        job.id.to_string(),
        job.status.to_string(),
        progress_bar(job.progress, job.status),
        job.description.clone(),
        outcome(job),
    ]
}

/// Pads each cell to its column's width (0: no padding), two spaces apart.
fn format_row(cells: &[String; 5], widths: &[usize; 4]) -> String {
    let mut line = String::new();
    for (i, c) in cells.iter().enumerate() {
        if i > 0 {
            line.push_str("  ");
        }
        line.push_str(c);
        if let Some(&w) = widths.get(i) {
            line.push_str(&" ".repeat(w.saturating_sub(c.chars().count())));
        }
    }
    line.trim_end().to_string()
}

/// Widths that line rows up without knowing the other rows: a job id is 36
/// characters, a status at most 7, a progress bar 17.
const LINE_WIDTHS: [usize; 4] = [36, 7, BAR_WIDTH + 7, 0];

/// The jobs as a table, header first, one job per line, sorted by id.
pub fn render_table(jobs: &BTreeMap<String, JobInfo>) -> String {
    if jobs.is_empty() {
        return "no jobs\n".to_string();
    }
    let header = HEADER.map(String::from);
    let rows: Vec<[String; 5]> = jobs.values().map(cells).collect();
    let mut widths = [0usize; 4];
    for r in std::iter::once(&header).chain(&rows) {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    for r in std::iter::once(&header).chain(&rows) {
        out.push_str(&format_row(r, &widths));
        out.push('\n');
    }
    out
}

/// The jobs `Host.getJobs` returned, by id.
pub fn parse_jobs(v: Value) -> Result<BTreeMap<String, JobInfo>, String> {
    let Value::Object(m) = v else {
        return Err(format!("Host.getJobs returned {v}, not an object"));
    };
    m.into_iter()
        .map(|(id, info)| {
            serde_json::from_value::<JobInfo>(info)
                .map(|j| (id.clone(), j))
                .map_err(|e| format!("job {id}: {e}"))
        })
        .collect()
}

/// The jobs as last seen, updated by full listings and by events.
#[derive(Debug, Default)]
pub struct Board {
    pub jobs: BTreeMap<String, JobInfo>,
}

impl Board {
    /// True while some job is pending or running.
    pub fn active(&self) -> bool {
        self.jobs.values().any(|j| !j.status.is_final())
    }

    /// Applies a `|jobs|status|<id>` event. Returns false when the event is
    /// not one (or is malformed): the caller should then list the jobs
    /// again. An event older than what is known (a live status for a job
    /// already ended) is ignored.
    pub fn apply_event(&mut self, method: &str, params: Value) -> bool {
        let Some(id) = method.strip_prefix(JOB_STATUS_EVENT) else {
            return false;
        };
        let Ok(info) = serde_json::from_value::<JobInfo>(params) else {
            return false;
        };
        if info.id.to_string() != id {
            return false;
        }
        match self.jobs.get(id) {
            Some(old) if old.status.is_final() && !info.status.is_final() => {}
            _ => {
                self.jobs.insert(id.to_string(), info);
            }
        }
        true
    }
}

/// What makes a new line worth printing when not on a terminal: anything
/// but a progress step too small to move the bar (so a job prints at most
/// a dozen lines, not one per percent).
fn change_key(job: &JobInfo) -> String {
    let mut c = cells(job);
    c[2] = c[2].chars().take(BAR_WIDTH + 2).collect();
    c.join("\t")
}

/// Shows the board: redrawn in place on a terminal, else one line per job
/// whose line changed.
pub struct Printer {
    tty: bool,
    last_screen: String,
    /// Per job, the [`change_key`] of the line last printed.
    last_lines: Option<HashMap<String, String>>,
}

impl Printer {
    pub fn new(tty: bool) -> Printer {
        Printer {
            tty,
            last_screen: String::new(),
            last_lines: None,
        }
    }

    /// What to print for `board` (empty when nothing changed). `footer` is
    /// shown under the table on a terminal.
    pub fn update(&mut self, board: &Board, footer: Option<&str>) -> String {
        if self.tty {
            let mut screen = render_table(&board.jobs);
            if let Some(f) = footer {
                screen.push('\n');
                screen.push_str(f);
                screen.push('\n');
            }
            if screen == self.last_screen {
                return String::new();
            }
            self.last_screen = screen.clone();
            // Home, clear the screen, draw.
            return format!("\x1b[H\x1b[2J{screen}");
        }
        let mut out = String::new();
        let first = self.last_lines.is_none();
        let last = self.last_lines.get_or_insert_with(HashMap::new);
        if first {
            if board.jobs.is_empty() {
                out.push_str("no jobs\n");
            } else {
                out.push_str(&format_row(&HEADER.map(String::from), &LINE_WIDTHS));
                out.push('\n');
            }
        }
        for (id, job) in &board.jobs {
            let key = change_key(job);
            if last.get(id) != Some(&key) {
                out.push_str(&format_row(&cells(job), &LINE_WIDTHS));
                out.push('\n');
                last.insert(id.clone(), key);
            }
        }
        let gone: Vec<String> = last
            .keys()
            .filter(|id| !board.jobs.contains_key(*id))
            .cloned()
            .collect();
        for id in gone {
            out.push_str(&format!("{id}  deleted\n"));
            last.remove(&id);
        }
        out
    }
}

/// The host's jobs, or only job `only` (absent when the daemon has no such
/// job).
async fn fetch(client: &Rpc, only: Option<&str>) -> Result<BTreeMap<String, JobInfo>, ClientError> {
    let params = match only {
        Some(id) => json!({"job_ids": [id]}),
        None => json!({}),
    };
    let v = client.call("Host.getJobs", params).await?;
    parse_jobs(v).map_err(ClientError::Protocol)
}

fn print(s: &str) {
    if !s.is_empty() {
        let mut out = std::io::stdout().lock();
        let _ = out.write_all(s.as_bytes());
        let _ = out.flush();
    }
}

/// `depotctl jobs [--watch]`.
pub async fn run(
    ep: &Endpoint,
    opts: Options,
    flow_id: Option<&str>,
    watch: bool,
    interval: Duration,
    tty: bool,
) -> Result<(), Failure> {
    if !watch {
        let client = Rpc::connect(ep, opts, flow_id).await?;
        let jobs = fetch(&client, None).await?;
        print(&render_table(&jobs));
        return Ok(());
    }
    watch_jobs(ep, opts, flow_id, interval, tty, None)
        .await
        .map(|_| ())
}

/// Shows the jobs (or only job `only`) until none is pending or running;
/// returns the board as it ended. Watching one job that the daemon does
/// not (or no longer) list fails.
pub async fn watch_jobs(
    ep: &Endpoint,
    opts: Options,
    flow_id: Option<&str>,
    interval: Duration,
    tty: bool,
    only: Option<&str>,
) -> Result<Board, Failure> {
    let mut client = Rpc::connect(ep, opts, flow_id).await?;
    let prefix = match only {
        Some(id) => format!("{JOB_STATUS_EVENT}{id}"),
        None => JOB_STATUS_EVENT.to_string(),
    };
    // Subscribe before the first listing so no change falls in between.
    let mut ws = match Events::connect(ep, opts, flow_id, &[prefix.as_str()]).await {
        Ok(ws) => Some(ws),
        Err(e) => {
            eprintln!("depotctl: no job events ({e}); polling every {interval:?}");
            None
        }
    };
    let mut board = Board {
        jobs: fetch(&client, only).await?,
    };
    let mut last_fetch = Instant::now();
    let mut printer = Printer::new(tty);
    loop {
        if let Some(id) = only {
            // An event for another job (the subscription is by prefix).
            board.jobs.retain(|k, _| k == id);
            if !board.jobs.contains_key(id) {
                return Err(Failure::Failed(format!("job {id} not found")));
            }
        }
        let active = board.active();
        let footer = match (&ws, active) {
            (_, false) => None,
            (Some(_), true) => Some(format!(
                "watching job events, refreshing every {interval:?}; Ctrl-C to stop"
            )),
            (None, true) => Some(format!("refreshing every {interval:?}; Ctrl-C to stop")),
        };
        print(&printer.update(&board, footer.as_deref()));
        if !active {
            return Ok(board);
        }

        let mut refetch = false;
        match &ws {
            Some(w) => {
                let wait = interval.saturating_sub(last_fetch.elapsed());
                match w.next_event(wait).await {
                    Some((method, params)) => {
                        refetch |= !board.apply_event(&method, params);
                        while let Some((method, params)) = w.next_event(Duration::ZERO).await {
                            refetch |= !board.apply_event(&method, params);
                        }
                        // Confirm the end with a full listing (results and
                        // errors exactly as the daemon keeps them).
                        refetch |= !board.active();
                    }
                    None => {
                        if let Some(why) = w.closed_reason() {
                            eprintln!(
                                "depotctl: job events stopped ({why}); polling every {interval:?}"
                            );
                            ws = None;
                        }
                        refetch = true;
                    }
                }
                refetch |= last_fetch.elapsed() >= interval;
            }
            None => {
                tokio::time::sleep(interval).await;
                refetch = true;
            }
        }
        if refetch {
            board.jobs = match fetch(&client, only).await {
                Ok(jobs) => jobs,
                // The daemon may close an idle connection: reconnect once.
                Err(e) if !e.is_rpc() => {
                    client = Rpc::connect(ep, opts, flow_id).await?;
                    fetch(&client, only).await?
                }
                Err(e) => return Err(e.into()),
            };
            last_fetch = Instant::now();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use depot_api::types::JobType;
    use depot_api::WireError;

    const ID: &str = "5c1b1f0e-7a8d-4c1e-9b0a-3f2e1d0c9b8a";
    const ID2: &str = "00000000-0000-4000-8000-000000000002";

    fn job(id: &str, status: JobStatus, progress: Option<u8>) -> JobInfo {
        JobInfo {
            id: id.parse().unwrap(),
            status,
            progress,
            description: "sleep".into(),
            job_type: JobType::Storage,
            error: None,
            result: None,
        }
    }

    #[test]
    fn bars() {
        use JobStatus::*;
        assert_eq!(progress_bar(Some(42), Running), "[####......]  42%");
        assert_eq!(progress_bar(Some(45), Running), "[#####.....]  45%");
        assert_eq!(progress_bar(Some(0), Running), "[..........]   0%");
        assert_eq!(progress_bar(Some(100), Done), "[##########] 100%");
        assert_eq!(progress_bar(Some(250), Running), "[##########] 100%");
        assert_eq!(progress_bar(None, Done), "[##########] 100%");
        assert_eq!(progress_bar(None, Pending), "[..........]   --");
        assert_eq!(progress_bar(Some(7), Failed), "[#.........]   7%");
        for p in 0..=100u8 {
            assert_eq!(
                progress_bar(Some(p), Running).chars().count(),
                BAR_WIDTH + 7
            );
        }
    }

    #[test]
    fn table() {
        let mut failed = job(ID2, JobStatus::Failed, Some(30));
        failed.error = Some(WireError {
            code: 411,
            message: "Task is aborted".into(),
        });
        failed.description = "copy".into();
        let mut done = job(ID, JobStatus::Done, Some(100));
        done.result = Some(json!({"checksum": "abc", "n": 1}));
        let jobs: BTreeMap<_, _> = [(ID.to_string(), done), (ID2.to_string(), failed)].into();
        let t = render_table(&jobs);
        let expected = "\
JOB ID                                STATUS  PROGRESS           DESCRIPTION  ERROR/RESULT
00000000-0000-4000-8000-000000000002  failed  [###.......]  30%  copy         error 411: Task is aborted
5c1b1f0e-7a8d-4c1e-9b0a-3f2e1d0c9b8a  done    [##########] 100%  sleep        {\"checksum\":\"abc\",\"n\":1}
";
        assert_eq!(t, expected);
        assert_eq!(render_table(&BTreeMap::new()), "no jobs\n");
    }

    #[test]
    fn parse_listing() {
        let v = json!({ID: {"id": ID, "status": "running", "progress": 5,
            "description": "sleep", "job_type": "storage", "future_field": 1}});
        let jobs = parse_jobs(v).unwrap();
        assert_eq!(jobs[ID].progress, Some(5));
        assert!(parse_jobs(json!([])).is_err());
        assert!(parse_jobs(json!({ID: {"id": ID}})).is_err());
    }

    #[test]
    fn events_update_the_board_but_never_revive_a_job() {
        let mut b = Board::default();
        b.jobs
            .insert(ID.into(), job(ID, JobStatus::Running, Some(10)));
        assert!(b.active());
        let ev = |status: &str, progress: u8| {
            json!({"id": ID, "status": status, "progress": progress, "description": "sleep",
                   "job_type": "storage", "notify_time": 123})
        };
        let name = format!("{JOB_STATUS_EVENT}{ID}");
        assert!(b.apply_event(&name, ev("running", 50)));
        assert_eq!(b.jobs[ID].progress, Some(50));
        assert!(b.apply_event(&name, ev("done", 100)));
        assert!(!b.active());
        assert!(b.apply_event(&name, ev("running", 60)));
        assert_eq!(b.jobs[ID].status, JobStatus::Done);
        assert!(!b.apply_event("|other|x", json!({})));
        assert!(!b.apply_event(&name, json!({"id": ID})));
        assert!(!b.apply_event(&format!("{JOB_STATUS_EVENT}{ID2}"), ev("done", 1)));
    }

    #[test]
    fn lines_per_change_without_a_terminal() {
        let mut p = Printer::new(false);
        let mut b = Board::default();
        b.jobs
            .insert(ID.into(), job(ID, JobStatus::Running, Some(10)));
        let first = p.update(&b, Some("footer"));
        assert_eq!(first.lines().count(), 2, "{first}");
        assert!(first.starts_with("JOB ID"));
        assert!(!first.contains("footer"));
        assert_eq!(p.update(&b, None), "");
        // A step that does not move the bar prints nothing; one that does
        // prints the job's line.
        b.jobs.get_mut(ID).unwrap().progress = Some(12);
        assert_eq!(p.update(&b, None), "");
        b.jobs.get_mut(ID).unwrap().progress = Some(20);
        assert!(p.update(&b, None).contains("[##........]  20%"));
        b.jobs.get_mut(ID).unwrap().status = JobStatus::Done;
        let next = p.update(&b, None);
        assert_eq!(next.lines().count(), 1);
        assert!(next.contains(" done ") && next.contains(ID), "{next}");
        b.jobs.clear();
        assert_eq!(p.update(&b, None), format!("{ID}  deleted\n"));
    }

    #[test]
    fn redraw_on_a_terminal() {
        let mut p = Printer::new(true);
        let mut b = Board::default();
        b.jobs
            .insert(ID.into(), job(ID, JobStatus::Running, Some(10)));
        let s = p.update(&b, Some("footer"));
        assert!(
            s.starts_with("\x1b[H\x1b[2J") && s.ends_with("footer\n"),
            "{s:?}"
        );
        assert_eq!(p.update(&b, Some("footer")), "");
        assert!(!p.update(&b, None).contains("footer"));
    }
}
