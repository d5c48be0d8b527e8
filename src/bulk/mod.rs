//! `orgprov bulk FILE`: onboard many organizations from a CSV or NDJSON file.
//!
//! A run has four steps, and keeps only a few bytes per row in memory ([`ledger`]) whatever
//! the size of the file; the rows are streamed from the file each time they are needed
//! ([`rows`]):
//!
//! 1. **Check.** Every row goes through what the worker checks before any HTTP call, offline
//!    ([`crate::plan::Checks`]: the v1 schema via `contract::decode`, the template render and
//!    the provider's documented rules), and request ids repeated within the file are found.
//!    Every bad row is reported (line, column, reason); then the run stops with exit 2 and
//!    publishes nothing, unless `--skip-invalid`.
//! 2. **Resume.** Postgres, the record of truth, is asked where the rows' request ids stand:
//!    a row with an outcome, or one a worker already holds, is not published again.
//! 3. **Publish and wait.** The other rows are published (`Nats-Msg-Id` = request_id, at
//!    `--rate` per second if given) while the outcome events are counted; Postgres is swept
//!    every few seconds for outcomes an event did not bring. Ctrl-C stops publishing.
//! 4. **Results.** The results file is written from Postgres, one row per input row, and a
//!    summary printed; a stopped run prints the command that resumes it.

pub mod ledger;
mod progress;
pub mod results;
pub mod rows;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use futures::StreamExt;
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use self::ledger::{Ledger, State};
use self::progress::{Progress, Snapshot, clock};
use self::results::{ResultRow, ResultsFile, Status};
use self::rows::{Mapping, Row, Rows, column_of_field};
use crate::contract::{ErrorCode, FAILED_TYPE, PROVISIONED_TYPE};
use crate::plan::Checks;
use crate::providers::Settings;
use crate::store::{EventNaming, RequestOutcome, RequestState, Store};
use crate::template::Templates;

pub use self::results::Counts;
pub use self::rows::{Format, derived_request_id};

/// Exit codes of `orgprov bulk`.
pub mod exit {
    /// Every row is provisioned.
    pub const PROVISIONED: u8 = 0;
    /// Some row failed (or, with `--skip-invalid`, was invalid and not published).
    pub const FAILED: u8 = 1;
    /// Invalid input (bad rows, a bad header, an unreadable file): nothing was published.
    pub const INVALID: u8 = 2;
    /// Rows still pending when `--timeout` ran out.
    pub const PENDING: u8 = 3;
    /// NATS or Postgres could not be reached, or JetStream refused a publish.
    pub const UNREACHABLE: u8 = 4;
    /// Stopped by Ctrl-C (SIGINT) or SIGTERM; the resume command is printed.
    pub const INTERRUPTED: u8 = 130;
}

#[derive(Args, Debug, Clone)]
pub struct BulkArgs {
    /// CSV with a header row, or NDJSON with one request object per line.
    pub file: PathBuf,
    /// The file's format; by default from its extension (.csv, .ndjson, .jsonl).
    #[arg(long, value_enum)]
    pub format: Option<Format>,
    /// Target of rows that name none.
    #[arg(long)]
    pub target: Option<String>,
    /// Template of rows that name none (name or name@version).
    #[arg(long)]
    pub template: Option<String>,
    /// Column whose value, with the target, derives the request_id of a row without one.
    #[arg(long, default_value = "name")]
    pub key_column: String,
    /// Publish the valid rows even when some are invalid (those are `invalid` in the results).
    #[arg(long)]
    pub skip_invalid: bool,
    /// Only check the file: report every bad row, publish nothing (exit 0 or 2).
    #[arg(long)]
    pub check_only: bool,
    /// Publishes per second (default: as fast as JetStream confirms them).
    #[arg(long, value_parser = positive_rate)]
    pub rate: Option<f64>,
    /// Seconds to wait for outcomes once every row is published; exit 3 if rows are still
    /// pending then.
    #[arg(long, default_value_t = 3600)]
    pub timeout: u64,
    /// Results file (default: `<file stem>.results.csv` beside the input).
    #[arg(long)]
    pub results: Option<PathBuf>,
}

fn positive_rate(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(r) if r > 0.0 && r.is_finite() => Ok(r),
        _ => Err(format!("{s:?} is not a positive number of publishes per second")),
    }
}

/// What a run did.
#[derive(Clone, Debug, Default)]
pub struct Report {
    pub exit: u8,
    /// Rows in the file.
    pub rows: u64,
    /// Rows that broke a rule (including repeated request ids).
    pub invalid: u64,
    /// Rows with an outcome before this run: not published.
    pub had_outcome: u64,
    /// Rows a worker already held before this run: not published again.
    pub in_work: u64,
    /// Rows published by this run.
    pub published: u64,
    /// Of those, the ones JetStream dropped as duplicates (still queued from an earlier run).
    pub duplicates: u64,
    /// What the results file says.
    pub counts: Option<Counts>,
    pub results: Option<PathBuf>,
    /// The command that resumes a run that stopped early.
    pub resume: Option<String>,
}

/// Publishes waiting for their confirmation at once.
const MAX_PUBLISHING: usize = 256;
/// Request ids per Postgres query.
const LOOKUP_BATCH: usize = 2_000;
/// How often Postgres is swept for outcomes no event brought.
const SWEEP_EVERY: Duration = Duration::from_secs(5);
/// Without any outcome for this long, say what may be wrong (once).
const QUIET_WARNING: Duration = Duration::from_secs(30);

/// Runs `orgprov bulk`. `invocation` is the command line (for the resume command);
/// `interrupt` stops publishing.
pub async fn run(
    settings: &Settings,
    args: &BulkArgs,
    invocation: &[String],
    interrupt: CancellationToken,
) -> anyhow::Result<Report> {
    let started = Instant::now();
    let resume = resume_command(invocation, args);
    let mut report = Report::default();
    let Some(format) = args.format.or_else(|| Format::of_path(&args.file)) else {
        eprintln!(
            "error: cannot tell the format of {} from its extension; pass --format csv or --format ndjson",
            args.file.display()
        );
        return Ok(Report { exit: exit::INVALID, ..report });
    };
    let templates = match Templates::load_dir(&settings.templates_dir) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("configuration error: templates_dir: {e:#}");
            return Ok(Report { exit: exit::INVALID, ..report });
        }
    };
    let checks = match Checks::new(settings, templates) {
        Ok(c) => Arc::new(c),
        Err(e) => {
            eprintln!("configuration error: {e}");
            return Ok(Report { exit: exit::INVALID, ..report });
        }
    };
    if let Some(name) = &args.target
        && checks.target(name).is_none()
    {
        eprintln!("error: --target {name:?} is not a configured target");
        return Ok(Report { exit: exit::INVALID, ..report });
    }
    if let Some(name) = &args.template
        && checks.templates().get(name).is_err()
    {
        eprintln!("error: --template {name:?} is not in templates_dir {}", settings.templates_dir.display());
        return Ok(Report { exit: exit::INVALID, ..report });
    }
    let mapping =
        Mapping { target: args.target.clone(), template: args.template.clone(), key_column: args.key_column.clone() };
    let input = Input { path: args.file.clone(), format, mapping };

    // 1. Check every row, offline.
    println!("checking {} ...", args.file.display());
    let (ledger, stopped) = {
        let (input, checks, stop) = (input.clone(), checks.clone(), interrupt.clone());
        match tokio::task::spawn_blocking(move || check_file(&input, &checks, &stop)).await? {
            Ok(checked) => checked,
            Err(e) => {
                eprintln!("error: {e}");
                return Ok(Report { exit: exit::INVALID, ..report });
            }
        }
    };
    report.rows = ledger.entries.len() as u64;
    report.invalid = ledger.count(State::Invalid);
    if stopped {
        println!("interrupted while checking; nothing was published");
        return Ok(Report { exit: exit::INTERRUPTED, ..report });
    }
    let valid = report.rows - report.invalid;
    if report.invalid > 0 {
        eprintln!("{} of {} rows are invalid (listed above).", report.invalid, report.rows);
        if !args.skip_invalid || args.check_only {
            eprintln!(
                "Nothing was published. Fix the rows and run again, or pass --skip-invalid to publish the {valid} \
                 valid rows."
            );
            return Ok(Report { exit: exit::INVALID, ..report });
        }
    }
    if args.check_only {
        println!("all {} rows are valid; nothing was published (--check-only)", report.rows);
        return Ok(Report { exit: exit::PROVISIONED, ..report });
    }
    println!("{valid} valid rows{}", if report.invalid > 0 { ", the invalid ones skipped" } else { "" });

    let results_path = args.results.clone().unwrap_or_else(|| results::default_path(&args.file));
    match deliver(settings, &input, &checks, ledger, args, &interrupt, &mut report, &results_path).await {
        Ok(()) => {}
        Err(e) => {
            eprintln!("error: {e:#}");
            eprintln!("Resume with:\n  {resume}");
            return Ok(Report { exit: exit::UNREACHABLE, resume: Some(resume), ..report });
        }
    }
    let counts = report.counts.clone().unwrap_or_default();
    report.exit = if report.exit == exit::INTERRUPTED || report.exit == exit::UNREACHABLE {
        report.exit
    } else if counts.pending > 0 {
        exit::PENDING
    } else if counts.failed > 0 || counts.invalid > 0 {
        exit::FAILED
    } else {
        exit::PROVISIONED
    };
    print_summary(&args.file, &report, started.elapsed());
    match report.exit {
        exit::INTERRUPTED => {
            println!("Interrupted: publishing stopped, {} rows have no outcome yet. Resume with:", counts.pending);
            println!("  {resume}");
            report.resume = Some(resume);
        }
        exit::UNREACHABLE => {
            println!("Publishing failed (see above); {} rows have no outcome yet. Resume with:", counts.pending);
            println!("  {resume}");
            report.resume = Some(resume);
        }
        exit::PENDING => {
            println!(
                "{} rows still have no outcome after --timeout {} s. Run the same command again to wait for them \
                 (nothing is published twice):",
                counts.pending, args.timeout
            );
            println!("  {resume}");
            report.resume = Some(resume);
        }
        _ => {}
    }
    Ok(report)
}

/// The file and how its rows become requests.
#[derive(Clone, Debug)]
struct Input {
    path: PathBuf,
    format: Format,
    mapping: Mapping,
}

impl Input {
    fn rows(&self) -> Result<Rows, rows::FileError> {
        Rows::open(&self.path, self.format, &self.mapping)
    }

    /// The name of a row's "column" in messages: CSV columns, NDJSON fields.
    fn column_word(&self) -> &'static str {
        match self.format {
            Format::Csv => "column",
            Format::Ndjson => "field",
        }
    }
}

/// One broken rule of a row, and the error code it would fail with.
#[derive(Clone, Debug)]
struct RowProblem {
    column: String,
    reason: String,
    code: ErrorCode,
}

/// A row's verdict: its request_id and target, or what is wrong with it.
fn verdict(row: &Row, input: &Input, checks: &Checks) -> Result<(String, String), Vec<RowProblem>> {
    let document = row.document.as_ref().map_err(|problems| {
        problems
            .iter()
            .map(|p| RowProblem { column: p.column.clone(), reason: p.reason.clone(), code: ErrorCode::InvalidRequest })
            .collect::<Vec<_>>()
    })?;
    let checked = checks.check(&document.payload());
    match checked.prepared() {
        Some(prepared) if checked.violations.is_empty() => Ok((document.request_id.clone(), prepared.target.clone())),
        _ => Err(checked
            .violations
            .iter()
            .map(|v| {
                let column = match (&v.field, input.format) {
                    (Some(f), Format::Csv) => column_of_field(f),
                    (Some(f), Format::Ndjson) => f.clone(),
                    (None, _) => "-".to_owned(),
                };
                // Schema messages start with the field; the column already says it.
                let reason = v
                    .field
                    .as_ref()
                    .and_then(|f| v.message.strip_prefix(&format!("{f}: ")))
                    .unwrap_or(&v.message)
                    .to_owned();
                RowProblem { column, reason, code: v.code }
            })
            .collect()),
    }
}

/// Step 1: every row checked, every problem printed; the ledger of the file, and whether the
/// check was interrupted.
fn check_file(input: &Input, checks: &Checks, stop: &CancellationToken) -> Result<(Ledger, bool), rows::FileError> {
    let mut ledger = Ledger::default();
    let word = input.column_word();
    for row in input.rows()? {
        if stop.is_cancelled() {
            return Ok((ledger, true));
        }
        match verdict(&row, input, checks) {
            Ok((request_id, target)) => {
                if let Err(first) = ledger.push_valid(row.line, &request_id, &target) {
                    eprintln!("  line {}, {word} request_id: {}", row.line, repeated(&request_id, first));
                }
            }
            Err(problems) => {
                ledger.push_invalid(row.line);
                for p in problems {
                    eprintln!("  line {}, {word} {}: {}", row.line, p.column, p.reason);
                }
            }
        }
    }
    Ok((ledger, false))
}

fn repeated(request_id: &str, first_line: u64) -> String {
    format!("request_id {request_id:?} repeats the one of line {first_line}; each row must be its own request")
}

/// Steps 2 to 4: resume, publish and wait, write the results.
#[allow(clippy::too_many_arguments)]
async fn deliver(
    settings: &Settings,
    input: &Input,
    checks: &Checks,
    mut ledger: Ledger,
    args: &BulkArgs,
    interrupt: &CancellationToken,
    report: &mut Report,
    results_path: &Path,
) -> anyhow::Result<()> {
    let naming = EventNaming {
        source: settings.worker.event_source.clone(),
        subject_prefix: settings.nats.subject_prefix.clone(),
    };
    if settings.postgres.migrate {
        crate::store::ensure_database(&settings.postgres.url).await?;
    }
    let store = Store::connect(&settings.postgres.url, 4, naming).await?;
    if settings.postgres.migrate {
        store.migrate().await?;
    }

    // 2. Resume: what Postgres already knows is not published again.
    for batch in ledger.ids_in(&[State::Ready], LOOKUP_BATCH) {
        for outcome in store.outcomes(&batch).await? {
            let state = match outcome.state {
                RequestState::Succeeded => State::Provisioned,
                RequestState::Failed => State::Failed,
                RequestState::Active => State::InWork,
            };
            ledger.set(&outcome.request_id, state);
            if state == State::InWork {
                report.in_work += 1;
            } else {
                report.had_outcome += 1;
            }
        }
    }
    let to_publish = ledger.count(State::Ready);
    if report.had_outcome + report.in_work > 0 {
        println!(
            "resuming: {} rows already have an outcome and {} are in work; publishing the other {to_publish}",
            report.had_outcome, report.in_work
        );
    }

    // 3. Publish and wait.
    let client = crate::bus::connect(&settings.nats.url).await?;
    let js = crate::bus::context(client.clone());
    let n = &settings.nats;
    // Subscribed before publishing, so no outcome slips past.
    let mut events = futures::stream::select(
        client.subscribe(n.event_subject(PROVISIONED_TYPE)).await?,
        client.subscribe(n.event_subject(FAILED_TYPE)).await?,
    );
    client.flush().await?;
    let subject = n.requests_subject();
    let rates: Vec<f64> =
        ledger.targets.iter().map(|t| checks.target(t).map_or(f64::INFINITY, |t| t.rate_limit.per_second)).collect();

    let publish: Vec<bool> = ledger.entries.iter().map(|e| e.state == State::Ready).collect();
    let (tx, mut rx) = tokio::sync::mpsc::channel::<(usize, String, Vec<u8>)>(1024);
    let reader_input = input.clone();
    std::thread::spawn(move || {
        let Ok(rows) = reader_input.rows() else { return };
        for (ordinal, row) in rows.enumerate() {
            if !publish.get(ordinal).copied().unwrap_or(false) {
                continue;
            }
            if let Ok(doc) = row.document
                && tx.blocking_send((ordinal, doc.request_id.clone(), doc.payload())).is_err()
            {
                return;
            }
        }
    });

    let mut open = ledger.entries.iter().filter(|e| e.state.is_open()).count() as u64;
    let mut progress = Progress::new(ledger.entries.len() as u64 - report.invalid);
    let mut publishing: FuturesUnordered<BoxFuture<'_, (String, anyhow::Result<bool>)>> = FuturesUnordered::new();
    let mut next_row: Option<(usize, String, Vec<u8>)> = None;
    let mut reader_done = to_publish == 0;
    let mut publish_error: Option<String> = None;
    let mut interrupted = false;
    let mut sent = 0u64;
    let publish_start = tokio::time::Instant::now();
    let mut next_at = publish_start;
    let mut wait_deadline: Option<tokio::time::Instant> = None;
    let mut last_sweep = Instant::now();
    let mut last_outcome = Instant::now();
    let mut warned_quiet = false;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let snapshot = |ledger: &Ledger, report: &Report| {
        let eta = ledger
            .open_per_target()
            .iter()
            .zip(&rates)
            .map(|(open, rate)| Duration::from_secs_f64(*open as f64 / rate))
            .max();
        Snapshot {
            valid: ledger.entries.len() as u64 - report.invalid,
            to_publish,
            published: report.published,
            provisioned: ledger.count(State::Provisioned),
            failed: ledger.count(State::Failed),
            eta,
        }
    };

    loop {
        let publishing_over = reader_done && next_row.is_none() && publishing.is_empty();
        if publishing_over && (interrupted || publish_error.is_some()) {
            break;
        }
        if publishing_over {
            if open == 0 {
                break;
            }
            let deadline =
                *wait_deadline.get_or_insert_with(|| tokio::time::Instant::now() + Duration::from_secs(args.timeout));
            if tokio::time::Instant::now() >= deadline {
                break;
            }
        }
        tokio::select! {
            _ = interrupt.cancelled(), if !interrupted => {
                interrupted = true;
                rx.close();
                next_row = None;
                reader_done = true;
                progress.note("interrupted: publishing stops; writing the results so far");
            }
            Some((id, result)) = publishing.next(), if !publishing.is_empty() => match result {
                Ok(duplicate) => {
                    report.published += 1;
                    report.duplicates += u64::from(duplicate);
                }
                Err(e) => {
                    // Not published after all (unless an outcome arrived meanwhile: keep it).
                    if let Some(row) = ledger.row_of(&id)
                        && ledger.entries[row].state == State::Published
                    {
                        ledger.entries[row].state = State::Ready;
                    }
                    if publish_error.is_none() {
                        progress.note(&format!("publishing {id} failed: {e:#}; publishing stops"));
                        publish_error = Some(format!("{e:#}"));
                        rx.close();
                        next_row = None;
                        reader_done = true;
                    }
                }
            },
            Some(msg) = events.next() => {
                if let Some((id, provisioned)) = outcome_of(&msg.payload)
                    && let Some(row) = ledger.row_of(&id)
                    && ledger.entries[row].state.is_open()
                {
                    ledger.entries[row].state = if provisioned { State::Provisioned } else { State::Failed };
                    open -= 1;
                    last_outcome = Instant::now();
                }
            }
            row = rx.recv(), if next_row.is_none() && !reader_done => match row {
                Some(row) => next_row = Some(row),
                None => reader_done = true,
            },
            _ = tokio::time::sleep_until(next_at), if next_row.is_some() && publishing.len() < MAX_PUBLISHING => {
                let Some((ordinal, id, payload)) = next_row.take() else { continue };
                if ledger.row_of(&id) != Some(ordinal) {
                    anyhow::bail!("{} changed while bulk was running (row {} is not the one checked)",
                        input.path.display(), ordinal + 1);
                }
                if ledger.entries[ordinal].state != State::Ready {
                    continue;
                }
                ledger.entries[ordinal].state = State::Published;
                publishing.push(Box::pin(publish_one(&js, &subject, id, payload)));
                sent += 1;
                if let Some(rate) = args.rate {
                    next_at = publish_start + Duration::from_secs_f64(sent as f64 / rate);
                }
            }
            _ = tick.tick() => {
                if last_sweep.elapsed() >= SWEEP_EVERY {
                    last_sweep = Instant::now();
                    let before = open;
                    open -= sweep(&store, &mut ledger).await?;
                    if open < before {
                        last_outcome = Instant::now();
                    }
                }
                if !warned_quiet && open > 0 && report.published > 0 && last_outcome.elapsed() >= QUIET_WARNING {
                    warned_quiet = true;
                    progress.note(&format!(
                        "no outcome for {} s: is `orgprov worker` running with this configuration (consuming \
                         {subject} on {})? Waiting on.", QUIET_WARNING.as_secs(), n.url
                    ));
                }
                progress.show(&snapshot(&ledger, report), false);
            }
        }
    }
    if interrupted {
        report.exit = exit::INTERRUPTED;
    } else if publish_error.is_some() {
        report.exit = exit::UNREACHABLE;
    }
    open -= sweep(&store, &mut ledger).await?;
    let _ = open;
    progress.show(&snapshot(&ledger, report), true);
    progress.finish();

    // 4. The results, from Postgres.
    let (path, counts) = write_results(input, checks, &ledger, &store, results_path).await?;
    report.results = Some(path);
    report.counts = Some(counts);
    Ok(())
}

/// Publishes one row, retrying a failed publish a few times (safe: `Nats-Msg-Id` is the
/// request_id, so JetStream drops a copy). `Ok(true)` when JetStream dropped it as a duplicate.
async fn publish_one(
    js: &async_nats::jetstream::Context,
    subject: &str,
    id: String,
    payload: Vec<u8>,
) -> (String, anyhow::Result<bool>) {
    let mut delay = Duration::from_millis(500);
    let mut attempt = 0;
    loop {
        attempt += 1;
        match crate::bus::publish_request(js, subject, payload.clone(), Some(&id)).await {
            Ok(ack) => return (id, Ok(ack.duplicate)),
            Err(e) if attempt >= 4 => {
                let e = e.context(format!(
                    "JetStream did not take the request on {subject} (is the requests stream there? `orgprov worker` \
                     creates it)"
                ));
                return (id, Err(e));
            }
            Err(_) => {
                tokio::time::sleep(delay).await;
                delay *= 2;
            }
        }
    }
}

#[derive(Deserialize)]
struct EventPeek {
    #[serde(rename = "type")]
    event_type: String,
    data: EventData,
}

#[derive(Deserialize)]
struct EventData {
    request_id: Option<String>,
}

/// The request_id of an outcome event, and whether it is `org.provisioned`.
fn outcome_of(payload: &[u8]) -> Option<(String, bool)> {
    let event: EventPeek = serde_json::from_slice(payload).ok()?;
    Some((event.data.request_id?, event.event_type == PROVISIONED_TYPE))
}

/// Asks Postgres about every open row that was published or is in work; records the
/// outcomes found. Returns how many rows it closed.
async fn sweep(store: &Store, ledger: &mut Ledger) -> anyhow::Result<u64> {
    let mut closed = 0;
    for batch in ledger.ids_in(&[State::Published, State::InWork], LOOKUP_BATCH) {
        for outcome in store.outcomes(&batch).await? {
            let state = match outcome.state {
                RequestState::Succeeded => State::Provisioned,
                RequestState::Failed => State::Failed,
                RequestState::Active => continue,
            };
            if ledger.set(&outcome.request_id, state).is_some_and(State::is_open) {
                closed += 1;
            }
        }
    }
    Ok(closed)
}

/// Step 4: one results row per input row, in order; outcomes from Postgres.
async fn write_results(
    input: &Input,
    checks: &Checks,
    ledger: &Ledger,
    store: &Store,
    path: &Path,
) -> anyhow::Result<(PathBuf, Counts)> {
    let mut file = ResultsFile::create(path)
        .map_err(|e| anyhow::anyhow!("cannot write the results to {}: {e}", path.display()))?;
    let mut batch: Vec<ResultRow> = Vec::with_capacity(LOOKUP_BATCH);
    for (ordinal, row) in input.rows()?.enumerate() {
        let Some(entry) = ledger.entries.get(ordinal) else {
            anyhow::bail!("{} changed while bulk was running (it has more rows)", input.path.display());
        };
        let mut result = ResultRow { line: row.line, ..ResultRow::default() };
        if entry.state == State::Invalid {
            result.status = Some(Status::Invalid);
            let (id, problems) = match verdict(&row, input, checks) {
                Ok((id, _)) => {
                    let first = ledger.row_of(&id).map_or(0, |r| ledger.entries[r].line);
                    let p = RowProblem {
                        column: "request_id".into(),
                        reason: repeated(&id, first),
                        code: ErrorCode::InvalidRequest,
                    };
                    (id, vec![p])
                }
                Err(problems) => (row.document.as_ref().map(|d| d.request_id.clone()).unwrap_or_default(), problems),
            };
            result.request_id = id;
            result.error_code = problems.first().map(|p| p.code.as_str().to_owned());
            let word = input.column_word();
            let text: Vec<String> = problems.iter().map(|p| format!("{word} {}: {}", p.column, p.reason)).collect();
            result.error_message = Some(text.join("; "));
        } else {
            result.request_id = row.document.as_ref().map(|d| d.request_id.clone()).unwrap_or_default();
        }
        batch.push(result);
        if batch.len() == LOOKUP_BATCH {
            flush(&mut file, &mut batch, store).await?;
        }
    }
    flush(&mut file, &mut batch, store).await?;
    file.finish().map_err(|e| anyhow::anyhow!("cannot write the results to {}: {e}", path.display()))
}

/// Looks the batch's valid rows up in Postgres and writes the batch.
async fn flush(file: &mut ResultsFile, batch: &mut Vec<ResultRow>, store: &Store) -> anyhow::Result<()> {
    let ids: Vec<String> = batch.iter().filter(|r| r.status.is_none()).map(|r| r.request_id.clone()).collect();
    let outcomes: HashMap<String, RequestOutcome> = if ids.is_empty() {
        HashMap::new()
    } else {
        store.outcomes(&ids).await?.into_iter().map(|o| (o.request_id.clone(), o)).collect()
    };
    for mut row in batch.drain(..) {
        if row.status.is_none() {
            match outcomes.get(&row.request_id) {
                Some(o) if o.state == RequestState::Succeeded => {
                    row.status = Some(Status::Provisioned);
                    row.organization_id = o.organization_id.clone();
                    row.created = o.created;
                }
                Some(o) if o.state == RequestState::Failed => {
                    row.status = Some(Status::Failed);
                    let error = o.error.as_ref();
                    let text = |k: &str| error.and_then(|e| e.get(k)).and_then(|v| v.as_str()).map(str::to_owned);
                    row.error_code = text("code");
                    row.error_message = text("message");
                }
                _ => row.status = Some(Status::Pending),
            }
        }
        file.write(&row).map_err(|e| anyhow::anyhow!("cannot write the results: {e}"))?;
    }
    Ok(())
}

fn print_summary(file: &Path, report: &Report, took: Duration) {
    let c = report.counts.clone().unwrap_or_default();
    let failed_codes: Vec<String> = c.failed_by_code.iter().map(|(code, n)| format!("{code} {n}")).collect();
    let mut lines = vec![
        String::new(),
        format!("bulk summary: {}", file.display()),
        format!("  rows                {:>8}", c.rows),
        format!("  provisioned         {:>8}   ({} adopted after a lost response)", c.provisioned, c.adopted),
        format!("  failed              {:>8}   {}", c.failed, failed_codes.join(", ")),
        format!(
            "  invalid             {:>8}   {}",
            c.invalid,
            if c.invalid > 0 { "not published (--skip-invalid)" } else { "" }
        ),
        format!("  pending             {:>8}", c.pending),
        format!(
            "  published this run  {:>8}   ({} already queued, dropped by JetStream's dedupe)",
            report.published, report.duplicates
        ),
        format!(
            "  not published       {:>8}   (had an outcome or were in work before this run)",
            report.had_outcome + report.in_work
        ),
        format!("  took                {:>8}", clock(took)),
    ];
    if let Some(path) = &report.results {
        lines.push(format!("  results             {}", path.display()));
    }
    if c.failed > 0 {
        lines.push(
            "Failed rows keep their outcome when the file is run again. Retry those that ran out of attempts with \
             `orgprov replay --code exhausted`; a row fixed in the file needs a new request_id."
                .into(),
        );
    }
    for line in lines {
        println!("{}", line.trim_end());
    }
}

/// The command line that resumes this run: the same command (with the same results file).
fn resume_command(invocation: &[String], args: &BulkArgs) -> String {
    let words: Vec<String> = if invocation.is_empty() {
        vec!["orgprov".into(), "bulk".into(), args.file.display().to_string()]
    } else {
        invocation.to_vec()
    };
    words.iter().map(|w| shell_quote(w)).collect::<Vec<_>>().join(" ")
}

/// `word` as a POSIX shell reads it back.
fn shell_quote(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/' | ':' | '=' | '@' | ','));
    if plain { word.to_owned() } else { format!("'{}'", word.replace('\'', "'\\''")) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_resume_command_reads_back_in_a_shell() {
        assert_eq!(shell_quote("customers.csv"), "customers.csv");
        assert_eq!(shell_quote("my file.csv"), "'my file.csv'");
        assert_eq!(shell_quote("it's"), "'it'\\''s'");
        let args = BulkArgs {
            file: "a b.csv".into(),
            format: None,
            target: None,
            template: None,
            key_column: "name".into(),
            skip_invalid: false,
            check_only: false,
            rate: None,
            timeout: 1,
            results: None,
        };
        let words = ["orgprov", "--config", "x.toml", "bulk", "a b.csv", "--rate", "5"].map(String::from);
        assert_eq!(resume_command(&words, &args), "orgprov --config x.toml bulk 'a b.csv' --rate 5");
        assert_eq!(resume_command(&[], &args), "orgprov bulk 'a b.csv'");
    }

    #[test]
    fn outcome_events_are_read_for_their_request_id() {
        let ok = br#"{"type":"org.provisioned","data":{"request_id":"r1","organization_id":"o"}}"#;
        assert_eq!(outcome_of(ok), Some(("r1".into(), true)));
        let failed = br#"{"type":"org.failed","data":{"request_id":"r2"}}"#;
        assert_eq!(outcome_of(failed), Some(("r2".into(), false)));
        assert_eq!(outcome_of(br#"{"type":"org.failed","data":{"request_id":null}}"#), None);
        assert_eq!(outcome_of(b"nope"), None);
    }
}
