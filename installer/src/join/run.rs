//! The executor: runs a `JoinPlan` with bounded parallelism. Each node is
//! a task whose result is a `NodeOutcome` value, never an error that stops
//! the batch. Every step is journaled before and after it runs.

use std::collections::{BTreeSet, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::journal::{Event, History, Journal, Status};
use super::pipe;
use super::plan::{JoinPlan, NodePlan, StepPlan};
use super::ready::{ApiClient, Readiness};
use super::ssh::{self, HostKeyPolicy, SshError};
use crate::config::JoinConfig;
use crate::node::inventory::AuthSpec;
use crate::node::script;
use crate::node::secret::Redactor;
use crate::node::steps::{self, Action, Step, EDGECORE_CERTIFICATE};
use crate::node::upgrade::{self, Verdict};
pub use crate::output::{HostKeyReport, NodeOutcome, NodeStatus, PostcheckReport, StepTiming};
use crate::printer::{node_cell, node_text, Printer};

/// How a node enters this run.
#[derive(Clone, Debug)]
pub enum Entry {
    /// Run these steps (all, or from the failed one on `--resume`).
    Run {
        skip: BTreeSet<Step>,
        arch: Option<String>,
        /// `upgrade --resume`: the version the skipped preflight saw.
        version_before: Option<String>,
    },
    /// Done in an earlier run: joined, or (upgrade) at the target.
    AlreadyJoined { arch: Option<String> },
}

impl Entry {
    /// `upgrade`: `to` is the target; `None` for a join.
    pub fn from_history(history: Option<&History>, resume: bool, to: Option<&str>) -> Entry {
        let done = |h: &History| match to {
            Some(to) => h.upgraded(to),
            None => h.joined(),
        };
        match history {
            Some(h) if resume && done(h) => Entry::AlreadyJoined {
                arch: h.arch.clone(),
            },
            Some(h) if resume => Entry::Run {
                skip: h.done.clone(),
                arch: h.arch.clone(),
                version_before: h.version_before.clone(),
            },
            _ => Entry::Run {
                skip: BTreeSet::new(),
                arch: None,
                version_before: None,
            },
        }
    }
}

pub struct Ctx {
    pub plan: JoinPlan,
    pub config: JoinConfig,
    pub redactor: Redactor,
    pub journal: Journal,
    pub run_id: String,
    pub policy: HostKeyPolicy,
    pub cancel: watch::Receiver<bool>,
    pub progress: Progress,
    /// `--verify-node-ready`: the cloud's API, read after each postcheck.
    pub api: Option<Arc<ApiClient>>,
}

struct Failure {
    step: Step,
    message: String,
    kind: String,
    interrupted: bool,
}

/// How a node's steps ended, short of a failure.
#[derive(Clone, Copy)]
enum Finish {
    Done,
    /// `upgrade`: it runs the target already; nothing was done.
    UpToDate,
}

/// A failed node, and the rollback that followed (upgrade only).
struct Failed {
    failure: Failure,
    rollback: Option<Result<(), Failure>>,
    /// The host did not answer and has connect attempts left: the node
    /// waits at the back of the queue instead of failing.
    try_later: bool,
}

impl From<Failure> for Failed {
    fn from(failure: Failure) -> Failed {
        Failed {
            failure,
            rollback: None,
            try_later: false,
        }
    }
}

/// The time now, as journals and reports write it.
pub fn now() -> String {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    edgeferry_bundle::format::rfc3339_utc(t.as_secs())
}

/// A node waiting for a slot: its first turn, or another connect attempt
/// after a host that did not answer (then with what its attempts so far
/// recorded).
struct Queued {
    idx: usize,
    skip: BTreeSet<Step>,
    arch: Option<String>,
    version_before: Option<String>,
    attempt: u32,
    prior: Option<NodeOutcome>,
    not_before: Option<tokio::time::Instant>,
}

const INTERRUPTED_BEFORE: &str = "interrupted (Ctrl-C) before it started";
const BUDGET_SPENT: &str = "not started: the --max-fail budget was spent";

/// Runs one wave: `parallel` nodes at a time, no new node once `max_fail`
/// of this wave's nodes have failed. A node whose host does not answer
/// gives its slot back and waits at the back of the queue for its next
/// connect attempt, so a dead host never holds up the live ones.
pub async fn execute(
    ctx: Arc<Ctx>,
    entries: Vec<(usize, Entry)>,
    parallel: usize,
    max_fail: Option<usize>,
) -> Vec<NodeOutcome> {
    let parallel = parallel.max(1);
    let mut outcomes: Vec<(usize, NodeOutcome)> = Vec::new();
    let mut queue: VecDeque<Queued> = VecDeque::new();
    for (idx, entry) in entries {
        match entry {
            Entry::AlreadyJoined { arch } => {
                let node = &ctx.plan.nodes[idx];
                let status = match ctx.plan.action {
                    Action::Upgrade => NodeStatus::UpToDate,
                    _ => NodeStatus::AlreadyJoined,
                };
                let mut o = blank_outcome(&ctx, node, status);
                if let Some(up) = &ctx.plan.upgrade {
                    o.version = Some(up.to.clone());
                }
                o.bundle_id = arch.as_ref().and_then(|a| ctx.plan.bundles.get(a).cloned());
                o.arch = arch;
                ctx.progress.finished(&o);
                outcomes.push((idx, o));
            }
            Entry::Run {
                skip,
                arch,
                version_before,
            } => queue.push_back(Queued {
                idx,
                skip,
                arch,
                version_before,
                attempt: 1,
                prior: None,
                not_before: None,
            }),
        }
    }
    let mut failures = 0;
    let mut running = 0;
    let mut tasks = tokio::task::JoinSet::new();
    let mut cancel = ctx.cancel.clone();
    let mut stop_reason: Option<&'static str> = None;
    loop {
        let cancelled = *ctx.cancel.borrow();
        if cancelled {
            stop_reason = Some(INTERRUPTED_BEFORE);
        } else if stop_reason.is_none() && max_fail.is_some_and(|budget| failures >= budget) {
            stop_reason = Some(BUDGET_SPENT);
        }
        if let Some(reason) = stop_reason {
            // No node starts now. One waiting for another connect attempt
            // has started, so it keeps its turn unless the run is stopped.
            for q in std::mem::take(&mut queue) {
                match q.prior {
                    Some(mut o) if cancelled => {
                        o.status = NodeStatus::Interrupted;
                        o.error_kind = Some("interrupted".into());
                        ctx.progress.finished(&o);
                        outcomes.push((q.idx, o));
                    }
                    Some(_) => queue.push_back(q),
                    None => {
                        outcomes.push((q.idx, not_started(&ctx, &ctx.plan.nodes[q.idx], reason)))
                    }
                }
            }
        }
        let now = tokio::time::Instant::now();
        while running < parallel {
            let Some(pos) = queue
                .iter()
                .position(|q| q.not_before.is_none_or(|t| t <= now))
            else {
                break;
            };
            let q = queue.remove(pos).expect("position is in the queue");
            let ctx2 = ctx.clone();
            running += 1;
            tasks.spawn(async move {
                let (outcome, again) = run_node(&ctx2, &q).await;
                (q, outcome, again)
            });
        }
        if running == 0 && queue.is_empty() {
            break;
        }
        let wake = (running < parallel)
            .then(|| queue.iter().filter_map(|q| q.not_before).min())
            .flatten();
        tokio::select! {
            Some(done) = tasks.join_next(), if running > 0 => {
                running -= 1;
                let (q, outcome, again) = done.expect("node task does not panic");
                if again && !*ctx.cancel.borrow() {
                    let backoff = ctx.config.retry_backoff * 2u32.saturating_pow(q.attempt - 1);
                    ctx.progress.requeued(&outcome.name);
                    queue.push_back(Queued {
                        attempt: q.attempt + 1,
                        prior: Some(outcome),
                        not_before: Some(tokio::time::Instant::now() + backoff),
                        ..q
                    });
                } else {
                    if outcome.status.is_failure() {
                        failures += 1;
                    }
                    ctx.progress.finished(&outcome);
                    outcomes.push((q.idx, outcome));
                }
            }
            _ = tokio::time::sleep_until(wake.unwrap_or_else(tokio::time::Instant::now)), if wake.is_some() => {}
            _ = cancel.wait_for(|c| *c), if !cancelled => {}
        }
    }
    outcomes.sort_by_key(|(i, _)| *i);
    outcomes.into_iter().map(|(_, o)| o).collect()
}

impl NodeOutcome {
    /// A node with nothing done yet; its log goes under the state dir.
    pub fn blank(plan: &JoinPlan, node: &NodePlan, status: NodeStatus) -> NodeOutcome {
        NodeOutcome {
            name: node.name.clone(),
            host: node.host.clone(),
            port: node.port,
            status,
            failed_step: None,
            error: None,
            error_kind: None,
            arch: None,
            bundle_id: None,
            steps: Vec::new(),
            host_key: None,
            postcheck: None,
            version_before: None,
            version: None,
            rollback_error: None,
            log: plan
                .state_dir
                .join("logs")
                .join(format!("{}.log", node.name)),
            ms: 0,
        }
    }
}

fn blank_outcome(ctx: &Ctx, node: &NodePlan, status: NodeStatus) -> NodeOutcome {
    NodeOutcome::blank(&ctx.plan, node, status)
}

pub fn not_started(ctx: &Ctx, node: &NodePlan, reason: &str) -> NodeOutcome {
    let mut o = blank_outcome(ctx, node, NodeStatus::NotStarted);
    o.error = Some(reason.to_string());
    ctx.progress.finished(&o);
    o
}

/// Per-node log: every command (redacted), its output and timing.
struct NodeLog {
    file: Option<File>,
    redactor: Redactor,
}

impl NodeLog {
    fn open(path: &Path, redactor: &Redactor) -> NodeLog {
        let file = path
            .parent()
            .map(std::fs::create_dir_all)
            .and_then(|r| r.ok())
            .and_then(|()| OpenOptions::new().create(true).append(true).open(path).ok());
        NodeLog {
            file,
            redactor: redactor.clone(),
        }
    }

    fn line(&mut self, text: &str) {
        if let Some(f) = &mut self.file {
            let text = self.redactor.scrub(text);
            let _ = writeln!(f, "{} {text}", now());
        }
    }

    /// A node's output: every line escaped and bounded (`node_text`), so
    /// the log shows what a node sent without obeying it.
    fn output(&mut self, bytes: &[u8]) {
        if let Some(f) = &mut self.file {
            let text = self.redactor.scrub_bytes(bytes);
            for l in text.split_terminator('\n') {
                let _ = writeln!(f, "  | {}", node_text(l));
            }
        }
    }
}

/// One turn of a node: its outcome, and whether it should wait at the back
/// of the queue for another connect attempt.
async fn run_node(ctx: &Ctx, q: &Queued) -> (NodeOutcome, bool) {
    let node = &ctx.plan.nodes[q.idx];
    let started = Instant::now();
    let mut out = match &q.prior {
        // The steps of its earlier attempts stay; their error does not.
        Some(prior) => NodeOutcome {
            status: NodeStatus::Failed,
            failed_step: None,
            error: None,
            error_kind: None,
            ..prior.clone()
        },
        None => {
            let mut o = blank_outcome(ctx, node, NodeStatus::Failed);
            o.arch = q.arch.clone();
            o.version_before = q.version_before.clone();
            o
        }
    };
    let ms_before = out.ms;
    let mut log = NodeLog::open(&out.log, &ctx.redactor);
    if q.prior.is_none() {
        log.line(&format!(
            "=== run {} {}: {} {}@{}:{}",
            ctx.run_id,
            ctx.plan.action.name(),
            node.name,
            node.user,
            node.host,
            node.port
        ));
    }
    ctx.progress.started(&node.name);

    let result = run_steps(ctx, node, &q.skip, q.attempt, &mut out, &mut log).await;
    let mut again = false;
    match result {
        Ok(finish) => {
            out.status = match (ctx.plan.action, finish) {
                (Action::Join, _) => NodeStatus::Joined,
                (Action::Reset, _) => NodeStatus::Reset,
                (Action::Upgrade, Finish::Done) => NodeStatus::Upgraded,
                (Action::Upgrade, Finish::UpToDate) => NodeStatus::UpToDate,
            };
            out.version = match ctx.plan.action {
                Action::Join | Action::Upgrade => Some(ctx.plan.kubeedge_version.clone()),
                Action::Reset => None,
            };
            log.line(match finish {
                Finish::Done => "=== done",
                Finish::UpToDate => "=== done: it runs the target version already",
            });
        }
        Err(Failed {
            failure: f,
            rollback,
            try_later,
        }) => {
            let message = node_cell(&ctx.redactor.scrub(&f.message));
            again = try_later;
            if try_later {
                log.line(&format!(
                    "=== connect attempt {} failed: {message}; the node waits at the back of the queue for the next",
                    q.attempt
                ));
            } else {
                log.line(&format!("=== FAILED at {}: {message}", f.step.name()));
            }
            out.status = if f.interrupted {
                NodeStatus::Interrupted
            } else {
                NodeStatus::Failed
            };
            out.failed_step = Some(f.step);
            out.error = Some(message.clone());
            out.error_kind = Some(f.kind);
            let before = out.version_before.clone().unwrap_or_else(|| "?".into());
            match rollback {
                None => {}
                Some(Ok(())) => {
                    out.status = NodeStatus::RolledBack;
                    out.version = out.version_before.clone();
                    out.error = Some(format!("failed, rolled back to {before}: {message}"));
                    log.line(&format!("=== rolled back to {before}"));
                }
                Some(Err(rf)) => {
                    let why = node_cell(&ctx.redactor.scrub(&rf.message));
                    log.line(&format!("=== ROLLBACK FAILED at {}: {why}", rf.step.name()));
                    out.status = if rf.interrupted {
                        NodeStatus::Interrupted
                    } else {
                        NodeStatus::RollbackFailed
                    };
                    out.error = Some(format!(
                        "failed, rollback failed too: {why} (the upgrade failed: {message})"
                    ));
                    out.rollback_error = Some(why);
                }
            }
        }
    }
    out.bundle_id = out
        .arch
        .as_ref()
        .and_then(|a| ctx.plan.bundles.get(a).cloned());
    out.ms = ms_before + started.elapsed().as_millis() as u64;
    (out, again)
}

/// What a step learned about the node, for the journal.
#[derive(Default)]
struct Facts<'a> {
    arch: Option<&'a str>,
    version: Option<&'a str>,
}

fn journal(
    ctx: &Ctx,
    node: &NodePlan,
    step: Step,
    status: Status,
    ms: Option<u64>,
    failure: Option<(&str, &str)>,
    facts: Facts,
) {
    let Facts { arch, version } = facts;
    let event = Event {
        ts: now(),
        run: ctx.run_id.clone(),
        node: node.name.clone(),
        step,
        status,
        ms,
        error: failure.map(|(m, _)| node_cell(&ctx.redactor.scrub(m))),
        kind: failure.map(|(_, k)| k.to_string()),
        arch: arch.map(node_cell),
        version: version.map(node_cell),
        to: ctx.plan.upgrade.as_ref().map(|u| u.to.clone()),
    };
    if let Err(e) = ctx.journal.record(&event) {
        // Without a journal, resume cannot be trusted: say so loudly.
        ctx.progress.out.warn(&format!("error: {e:#}"));
    }
}

async fn run_steps(
    ctx: &Ctx,
    node: &NodePlan,
    skip: &BTreeSet<Step>,
    attempt: u32,
    out: &mut NodeOutcome,
    log: &mut NodeLog,
) -> Result<Finish, Failed> {
    // Connect is always done anew.
    let connect_plan = &node.steps[0];
    ctx.progress.step(&node.name, Step::Connect);
    journal(
        ctx,
        node,
        Step::Connect,
        Status::Started,
        None,
        None,
        Facts::default(),
    );
    let t = Instant::now();
    let session = connect(ctx, node, connect_plan, attempt, log).await;
    let ms = t.elapsed().as_millis() as u64;
    let session = match session {
        Ok(s) => s,
        Err((f, again)) => {
            record_end(ctx, node, Step::Connect, ms, Err(&f), out);
            return Err(Failed {
                failure: f,
                rollback: None,
                try_later: again,
            });
        }
    };
    out.host_key = Some(HostKeyReport {
        fingerprint: session.host_key.fingerprint.clone(),
        learned: session.host_key.learned,
    });
    if session.host_key.learned {
        log.line(&format!(
            "host key {} recorded in {} (first contact, --accept-new-host-keys)",
            session.host_key.fingerprint,
            node.known_hosts.display()
        ));
    }
    record_end(ctx, node, Step::Connect, ms, Ok(()), out);

    let steps: Vec<&StepPlan> = node.steps[1..].iter().collect();
    let mut result = Ok(Finish::Done);
    let mut i = 0;
    while i < steps.len() {
        if skip.contains(&steps[i].step) {
            log.line(&format!(
                "--- {}: done in an earlier run, skipped",
                steps[i].step.name()
            ));
            out.steps.push(StepTiming {
                step: steps[i].step,
                status: "skipped",
                ms: 0,
            });
            i += 1;
            continue;
        }
        let batch = next_batch(node, &steps[i..], skip);
        match run_batch(ctx, node, batch, &session, out, log).await {
            Ok(done) => i += done,
            Err(f) if f.kind == UP_TO_DATE => {
                result = Ok(Finish::UpToDate);
                break;
            }
            Err(f) => {
                let rollback =
                    (!f.interrupted && steps::rolls_back(f.step) && !node.rollback.is_empty())
                        .then_some(());
                let rollback = match rollback {
                    Some(()) => {
                        log.line("--- the upgrade failed: rolling back");
                        Some(run_all(ctx, node, &node.rollback, &session, out, log).await)
                    }
                    None => None,
                };
                result = Err(Failed {
                    failure: f,
                    rollback,
                    try_later: false,
                });
                break;
            }
        }
    }
    session.close().await;
    result
}

/// Not a failure: the upgrade preflight found the node at the target.
const UP_TO_DATE: &str = "up_to_date";

/// The longest run of steps from the first of `steps` that can share one
/// SSH command: it ends at a skipped step, after the upgrade preflight
/// (its version is judged here before anything else runs), before a fetch
/// that uploads `copyFrom` files first, and before the command would
/// outgrow what one sh argument may hold.
fn next_batch<'a, 'b>(
    node: &NodePlan,
    steps: &'b [&'a StepPlan],
    skip: &BTreeSet<Step>,
) -> &'b [&'a StepPlan] {
    let mut bytes = 0;
    let mut n = 0;
    for st in steps {
        let starts_anew = st.step == Step::Fetch && node.spec.copy_from.is_some();
        bytes += st.exact_command.len() + PIPE_STEP_OVERHEAD;
        if n > 0 && (skip.contains(&st.step) || starts_anew || bytes > MAX_PIPELINE_BYTES) {
            break;
        }
        n += 1;
        if st.step == Step::UpgradePreflight {
            break;
        }
    }
    &steps[..n.max(1)]
}

/// One command line must fit one argument of the node's login shell
/// (Linux: 128 KiB); quoting grows it a little.
const MAX_PIPELINE_BYTES: usize = 96 * 1024;
/// The markers and redirections `script::pipeline` adds per step.
const PIPE_STEP_OVERHEAD: usize = 160;

/// Runs `steps` in order as batches, until one fails (the rollback).
async fn run_all(
    ctx: &Ctx,
    node: &NodePlan,
    steps: &[StepPlan],
    session: &ssh::Session,
    out: &mut NodeOutcome,
    log: &mut NodeLog,
) -> Result<(), Failure> {
    let steps: Vec<&StepPlan> = steps.iter().collect();
    let none = BTreeSet::new();
    let mut i = 0;
    while i < steps.len() {
        let batch = next_batch(node, &steps[i..], &none);
        i += run_batch(ctx, node, batch, session, out, log).await?;
    }
    Ok(())
}

/// Marks a step as begun: progress, the journal, the log.
fn begin(ctx: &Ctx, node: &NodePlan, st: &StepPlan, log: &mut NodeLog) {
    ctx.progress.step(&node.name, st.step);
    journal(
        ctx,
        node,
        st.step,
        Status::Started,
        None,
        None,
        Facts::default(),
    );
    log.line(&format!("$ {}", st.command));
    if !st.stdin.is_empty() {
        log.line(&format!("< {}", st.stdin.join(" ")));
    }
}

/// A step whose end needs the control host (a non-zero exit, or the
/// postcheck's readiness check), kept until the command is over.
struct Ended {
    i: usize,
    rc: u32,
    text: String,
    ms: u64,
}

/// Runs `batch` in one SSH command (`script::pipeline`): each step is
/// journaled as its start and end markers arrive and has its own timeout,
/// so a batch behaves as the same steps one command each, at one
/// channel's cost. Returns how many steps ended well; fewer than the batch
/// when a step's fallback (keadm uploaded over SSH) took over after it.
async fn run_batch(
    ctx: &Ctx,
    node: &NodePlan,
    batch: &[&StepPlan],
    session: &ssh::Session,
    out: &mut NodeOutcome,
    log: &mut NodeLog,
) -> Result<usize, Failure> {
    let limit = ctx.config.max_step_output;
    let mut begun = 0;
    let first = batch[0];
    if first.step == Step::Fetch {
        if let Some(dir) = &node.spec.copy_from {
            ctx.progress.step(&node.name, first.step);
            journal(
                ctx,
                node,
                first.step,
                Status::Started,
                None,
                None,
                Facts::default(),
            );
            begun = 1;
            let t = Instant::now();
            let timeout = Duration::from_secs(first.timeout_secs.max(1));
            if let Err(f) = upload_dir(ctx, session, node, dir, timeout, log).await {
                record_end(
                    ctx,
                    node,
                    first.step,
                    t.elapsed().as_millis() as u64,
                    Err(&f),
                    out,
                );
                return Err(f);
            }
        }
    }
    let nonce = format!("{:016x}", {
        use std::hash::{BuildHasher, Hasher};
        std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish()
    });
    let parts: Vec<script::PipeStep> = batch
        .iter()
        .map(|st| script::PipeStep {
            command: &st.exact_command,
            stdin: !st.secret_stdin.is_empty(),
        })
        .collect();
    let command = script::pipeline(&nonce, &parts);
    let stdin = batch
        .iter()
        .find(|st| !st.secret_stdin.is_empty())
        .map(|st| ssh::Stdin::Bytes(script::args_text(&st.secret_stdin).into_bytes()));

    let mut scanner = pipe::Scanner::new(&nonce);
    let mut current: Option<(usize, Instant)> = None;
    let mut next = 0;
    let mut captured = Captured::default();
    let mut done = 0;
    let mut ended: Option<Ended> = None;
    let mut stopped: Option<Failure> = None;
    let started = Instant::now();
    let r = {
        let mut on_output = |chunk: &[u8]| -> Option<Instant> {
            let mut deadline = None;
            for ev in scanner.feed(chunk) {
                match ev {
                    pipe::Event::Output(b) => captured.add(&b, limit),
                    pipe::Event::Start(i) if current.is_none() && i == next && i < batch.len() => {
                        if i >= begun {
                            begin(ctx, node, batch[i], log);
                        } else {
                            log.line(&format!("$ {}", batch[i].command));
                        }
                        let now = Instant::now();
                        // The first step's clock started with the command.
                        current = Some((i, if i == 0 { started } else { now }));
                        captured = Captured::default();
                        deadline = Some(now + channel_timeout(batch[i]));
                    }
                    pipe::Event::End(i, rc) if current.map(|c| c.0) == Some(i) => {
                        let (_, t) = current.take().expect("a step is running");
                        next = i + 1;
                        let st = batch[i];
                        let ms = t.elapsed().as_millis() as u64;
                        let text = observe(ctx, st, rc, &captured, ms, out, log);
                        captured = Captured::default();
                        let later = rc != 0 || (st.step == Step::Postcheck && ctx.api.is_some());
                        if later {
                            ended = Some(Ended { i, rc, text, ms });
                            continue;
                        }
                        let r = if st.step == Step::UpgradePreflight {
                            judge_version(ctx, out)
                        } else {
                            Ok(())
                        };
                        match r {
                            Ok(()) => {
                                record_end(ctx, node, st.step, ms, Ok(()), out);
                                done += 1;
                            }
                            Err(f) if f.kind == UP_TO_DATE => {
                                log.line(&f.message);
                                record_end(ctx, node, st.step, ms, Ok(()), out);
                                stopped = Some(f);
                            }
                            Err(f) => {
                                record_end(ctx, node, st.step, ms, Err(&f), out);
                                stopped = Some(f);
                            }
                        }
                    }
                    // Not in order: the node's own output, not ours.
                    pipe::Event::Start(i) => captured.add(
                        format!("[marker {i}:start out of order]\n").as_bytes(),
                        limit,
                    ),
                    pipe::Event::End(i, _) => {
                        captured.add(format!("[marker {i}:end out of order]\n").as_bytes(), limit)
                    }
                }
            }
            deadline
        };
        let deadline = started + channel_timeout(first);
        let mut cancel = ctx.cancel.clone();
        tokio::select! {
            r = session.exec_until(&command, stdin, deadline, channel_timeout(first), &mut on_output) => Ok(r),
            _ = cancel.wait_for(|c| *c) => Err(()),
        }
    };
    for ev in scanner.finish() {
        if let pipe::Event::Output(b) = ev {
            captured.add(&b, limit);
        }
    }
    // The step that was running, or the next one if none had started.
    let open = current.map(|c| c.0).unwrap_or(next);
    let fail_open = |f: Failure, out: &mut NodeOutcome, log: &mut NodeLog| {
        let st = batch[open];
        if current.is_none() && open >= begun {
            begin(ctx, node, st, log);
        }
        log.output(&captured.bytes);
        let ms = current.map_or(0, |c| c.1.elapsed().as_millis() as u64);
        record_end(ctx, node, st.step, ms, Err(&f), out);
        f
    };
    let status = match r {
        Err(()) if stopped.is_none() && open < batch.len() => {
            return Err(fail_open(interrupted(batch[open].step), out, log));
        }
        // Ctrl-C after every step had ended: the steps' own ends stand.
        Err(()) => Ok(ssh::ExitStatus::Unknown),
        Ok(r) => r,
    };
    if let Some(f) = stopped {
        return Err(f);
    }
    if let Some(e) = ended {
        let st = batch[e.i];
        let r = conclude(ctx, node, st, session, e.rc, &e.text, out, log).await;
        record_end(ctx, node, st.step, e.ms, r.as_ref().map(|_| ()), out);
        r?;
        return Ok(done + 1);
    }
    if open >= batch.len() {
        return Ok(done);
    }
    let st = batch[open];
    let f = match status {
        Err(e) => ssh_failure(st, e),
        Ok(status) => {
            let how = match status {
                ssh::ExitStatus::Code(c) => format!("exited {c}"),
                ssh::ExitStatus::Signal(s) => format!("was killed by signal {s}"),
                ssh::ExitStatus::Unknown => "ended without an exit status".to_string(),
            };
            let text = ctx.redactor.scrub_bytes(&captured.bytes);
            Failure {
                step: st.step,
                message: format!(
                    "the node's shell {how} before {} ended: {}",
                    st.step.name(),
                    explain(&text, "")
                ),
                kind: st.step.info().error_kind.to_string(),
                interrupted: false,
            }
        }
    };
    Err(fail_open(f, out, log))
}

/// How long the control host waits for a step: keadm's own timeout is
/// enforced on the node with `timeout`, so give it room to report.
fn channel_timeout(st: &StepPlan) -> Duration {
    let timeout = Duration::from_secs(st.timeout_secs.max(1));
    if st.step.runs_keadm() {
        timeout + Duration::from_secs(20)
    } else {
        timeout
    }
}

/// The version rules, on what the upgrade preflight read.
fn judge_version(ctx: &Ctx, out: &NodeOutcome) -> Result<(), Failure> {
    let Some(up) = &ctx.plan.upgrade else {
        return Ok(());
    };
    let fail = |kind: &str, message: String| Failure {
        step: Step::UpgradePreflight,
        message,
        kind: kind.to_string(),
        interrupted: false,
    };
    let Some(current) = out.version_before.as_deref() else {
        return Err(fail(
            upgrade::VERSION_UNKNOWN,
            "the preflight did not report edgecore's version".into(),
        ));
    };
    match upgrade::judge(current, &up.to, up.allow_downgrade, up.allow_skip_minor) {
        Verdict::Upgrade => Ok(()),
        Verdict::UpToDate => Err(fail(
            UP_TO_DATE,
            format!("--- edgecore runs {current}, the target: nothing to do"),
        )),
        Verdict::Refused { kind, message } => Err(fail(kind, message)),
    }
}

/// Journals a step's end and adds it to the node's outcome.
fn record_end(
    ctx: &Ctx,
    node: &NodePlan,
    step: Step,
    ms: u64,
    result: Result<(), &Failure>,
    out: &mut NodeOutcome,
) {
    let arch = matches!(step, Step::Preflight | Step::UpgradePreflight)
        .then_some(out.arch.as_deref())
        .flatten();
    let version = match step {
        Step::UpgradePreflight => out.version_before.clone(),
        Step::Postcheck | Step::UpgradePostcheck if result.is_ok() => {
            Some(ctx.plan.kubeedge_version.clone())
        }
        Step::RollbackPostcheck if result.is_ok() => out.version_before.clone(),
        _ => None,
    };
    let (status, word, failure) = match result {
        Ok(()) => (Status::Ok, "ok", None),
        Err(f) if f.interrupted => (
            Status::Interrupted,
            "interrupted",
            Some((f.message.as_str(), f.kind.as_str())),
        ),
        Err(f) => (
            Status::Failed,
            "failed",
            Some((f.message.as_str(), f.kind.as_str())),
        ),
    };
    let facts = Facts {
        arch,
        version: version.as_deref(),
    };
    journal(ctx, node, step, status, Some(ms), failure, facts);
    out.steps.push(StepTiming {
        step,
        status: word,
        ms,
    });
}

fn to_auth(a: &AuthSpec) -> ssh::Auth {
    match a {
        AuthSpec::Key { path, passphrase } => ssh::Auth::Key {
            path: path.clone(),
            passphrase: passphrase.clone(),
        },
        AuthSpec::Agent => ssh::Auth::Agent,
        AuthSpec::Password(p) => ssh::Auth::Password(p.clone()),
    }
}

/// One connect attempt. On failure, also says whether the node should try
/// again later (a transient error with attempts left).
async fn connect(
    ctx: &Ctx,
    node: &NodePlan,
    plan: &StepPlan,
    attempt: u32,
    log: &mut NodeLog,
) -> Result<ssh::Session, (Failure, bool)> {
    let spec = &node.spec;
    let target = ssh::Target {
        host: spec.host.clone(),
        port: spec.port,
        user: spec.user.clone(),
    };
    let auths: Vec<ssh::Auth> = spec.auths.iter().map(to_auth).collect();
    let timeout = Duration::from_secs(plan.timeout_secs.max(1));
    let opts = ssh::ConnectOptions {
        known_hosts: spec.known_hosts.clone(),
        policy: ctx.policy,
        dial_timeout: ctx.config.dial_timeout.min(timeout),
        connect_timeout: timeout,
        auth_timeout: timeout,
        jump: spec.jump.as_ref().map(|j| ssh::Hop {
            target: ssh::Target {
                host: j.host.clone(),
                port: j.port,
                user: j.user.clone(),
            },
            auths: j.auths.iter().map(to_auth).collect(),
        }),
    };
    let attempts = ctx.config.connect_attempts.max(1);
    let mut cancel = ctx.cancel.clone();
    log.line(&format!(
        "$ {} (attempt {attempt}/{attempts})",
        plan.command
    ));
    let r = tokio::select! {
        r = ssh::connect(&target, &auths, &opts) => r,
        _ = cancel.wait_for(|c| *c) => return Err((interrupted(Step::Connect), false)),
    };
    match r {
        Ok(s) => {
            log.line(&format!("connected, host key {}", s.host_key.fingerprint));
            Ok(s)
        }
        Err(e) => {
            let again = e.is_transient() && attempt < attempts;
            let after = if e.is_transient() && !again {
                format!(" (after {attempts} attempts)")
            } else {
                String::new()
            };
            Err((
                Failure {
                    step: Step::Connect,
                    message: format!("{e}{after}"),
                    kind: e.kind().to_string(),
                    interrupted: false,
                },
                again,
            ))
        }
    }
}

fn interrupted(step: Step) -> Failure {
    Failure {
        step,
        message: "interrupted (Ctrl-C); --resume continues here".to_string(),
        kind: "interrupted".to_string(),
        interrupted: true,
    }
}

/// Output of one remote command, bounded.
#[derive(Default)]
struct Captured {
    bytes: Vec<u8>,
    cut: bool,
}

impl Captured {
    fn add(&mut self, chunk: &[u8], limit: usize) {
        let room = limit.saturating_sub(self.bytes.len());
        if chunk.len() > room {
            self.cut = true;
        }
        self.bytes
            .extend_from_slice(&chunk[..chunk.len().min(room)]);
    }
}

/// One command on the node outside the step pipeline (uploads and their
/// check), counted as `step`.
async fn exec(
    ctx: &Ctx,
    session: &ssh::Session,
    step: Step,
    command: &str,
    stdin: Option<ssh::Stdin>,
    timeout: Duration,
) -> Result<(ssh::ExitStatus, Captured), Failure> {
    let limit = ctx.config.max_step_output;
    let mut captured = Captured::default();
    let mut on_output = |chunk: &[u8]| captured.add(chunk, limit);
    let mut cancel = ctx.cancel.clone();
    let r = tokio::select! {
        r = session.exec(command, stdin, timeout, &mut on_output) => r,
        _ = cancel.wait_for(|c| *c) => return Err(interrupted(step)),
    };
    match r {
        Ok(status) => Ok((status, captured)),
        Err(e) => Err(ssh_failure_after(step, timeout, e)),
    }
}

/// A step's command failed on the SSH side: it timed out, or the
/// connection went.
fn ssh_failure(st: &StepPlan, e: SshError) -> Failure {
    ssh_failure_after(st.step, channel_timeout(st), e)
}

fn ssh_failure_after(step: Step, timeout: Duration, e: SshError) -> Failure {
    match e {
        SshError::Timeout { .. } => Failure {
            step,
            message: format!(
                "{} did not finish within {}s: raise timeouts.{} in the inventory if the node is just slow",
                step.name(),
                timeout.as_secs(),
                step.name()
            ),
            kind: if step.runs_keadm() {
                "keadm_timeout".into()
            } else {
                "timeout".into()
            },
            interrupted: false,
        },
        e => Failure {
            step,
            message: e.to_string(),
            kind: e.kind().to_string(),
            interrupted: false,
        },
    }
}

/// The line that explains a failure: one starting with the step's own
/// prefix if the script printed one, else the last non-empty line.
fn explain(text: &str, prefix: &str) -> String {
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    lines
        .iter()
        .rev()
        .find(|l| l.starts_with(prefix))
        .or_else(|| lines.iter().rev().find(|l| !l.starts_with("---")))
        .map_or_else(|| "no output".to_string(), |l| l.to_string())
}

/// What a step's output says, as soon as it ends: the log gets it, and
/// the facts it printed (arch, version, the postcheck's findings) go into
/// the outcome. Returns the output as text, secrets scrubbed.
fn observe(
    ctx: &Ctx,
    st: &StepPlan,
    rc: u32,
    captured: &Captured,
    ms: u64,
    out: &mut NodeOutcome,
    log: &mut NodeLog,
) -> String {
    log.output(&captured.bytes);
    let text = ctx.redactor.scrub_bytes(&captured.bytes);
    log.line(&format!(
        "[{} {:?} after {} ms{}]",
        st.step.name(),
        ssh::ExitStatus::Code(rc),
        ms,
        if captured.cut { ", output cut" } else { "" }
    ));
    if matches!(st.step, Step::Preflight | Step::UpgradePreflight) {
        if let Some(arch) = text.lines().find_map(|l| l.strip_prefix("arch=")) {
            out.arch = Some(node_cell(arch.trim()));
        }
    }
    if st.step == Step::UpgradePreflight {
        if let Some(v) = text.lines().find_map(|l| l.strip_prefix("version=")) {
            out.version_before = Some(node_cell(v.trim()));
        }
    }
    if st.step.is_postcheck() {
        let report = postcheck_report(&text);
        for fixed in &report.fixed {
            log.line(&format!("postcheck repaired: {fixed}"));
        }
        out.postcheck = Some(report);
    }
    text
}

/// The end of a step that needs the control host: the postcheck's
/// readiness check, keadm uploaded over SSH when the node has no HTTP
/// client, or the failure named from the exit code and output.
#[allow(clippy::too_many_arguments)]
async fn conclude(
    ctx: &Ctx,
    node: &NodePlan,
    st: &StepPlan,
    session: &ssh::Session,
    code: u32,
    text: &str,
    out: &mut NodeOutcome,
    log: &mut NodeLog,
) -> Result<(), Failure> {
    let timeout = Duration::from_secs(st.timeout_secs.max(1));
    if code == 0 {
        if st.step == Step::Postcheck {
            return verify_node_ready(ctx, node, out, log).await;
        }
        return Ok(());
    }
    if st.step == Step::Fetch && code == script::NO_HTTP_CLIENT {
        return upload_keadm(ctx, session, node, out, timeout, log).await;
    }
    let fail = |kind: &str, message: String| Failure {
        step: st.step,
        message,
        kind: kind.to_string(),
        interrupted: false,
    };
    let how = format!("exited {code}");
    let info = st.step.info();
    if st.step.runs_keadm() && code == script::TIMED_OUT {
        return Err(fail(
            "keadm_timeout",
            format!(
                "keadm did not finish within {}s and was stopped on the node: check the node's log, or raise timeouts.{}",
                st.timeout_secs,
                info.name
            ),
        ));
    }
    if st.step == Step::KeadmJoin && code == script::EDGECORE_FAILED {
        return Err(fail(
            EDGECORE_CERTIFICATE,
            format!(
                "edgecore could not get its certificates, so keadm join was stopped: {}",
                explain(text, "edgecore:")
                    .trim_start_matches("edgecore:")
                    .trim_start()
            ),
        ));
    }
    let why = explain(text, info.explain_prefix);
    Err(fail(
        info.error_kind,
        match info.doing {
            Some(doing) => format!("{doing} {how}: {why}"),
            None => why,
        },
    ))
}

/// The `key=value` lines the postcheck prints for the report.
fn postcheck_report(text: &str) -> PostcheckReport {
    let mut r = PostcheckReport {
        node_ready: "not_checked",
        ..PostcheckReport::default()
    };
    for line in text.lines() {
        if let Some(v) = line.strip_prefix("hub=") {
            r.hub = Some(node_cell(v.trim()));
        } else if let Some(v) = line.strip_prefix("fixed=") {
            r.fixed.push(node_cell(v.trim()));
        } else if let Some(v) = line.strip_prefix("hostname=") {
            r.node_name = Some(node_cell(v.trim()));
        }
    }
    r
}

/// `--verify-node-ready`: polls the cloud's API until the Node is Ready,
/// within `node_ready_timeout`. A node that never gets there fails its
/// postcheck with `node_not_ready`; the journal then resumes at the
/// postcheck.
async fn verify_node_ready(
    ctx: &Ctx,
    node: &NodePlan,
    out: &mut NodeOutcome,
    log: &mut NodeLog,
) -> Result<(), Failure> {
    let Some(api) = ctx.api.clone() else {
        return Ok(());
    };
    let report = out.postcheck.get_or_insert_with(|| postcheck_report(""));
    // keadm names the Node --edgenode-name, else the lowercased hostname.
    let name = node
        .spec
        .edgenode_name
        .clone()
        .or_else(|| report.node_name.clone())
        .unwrap_or_default();
    report.node_name = Some(name.clone());
    let fail = |message: String| Failure {
        step: Step::Postcheck,
        message,
        kind: "node_not_ready".into(),
        interrupted: false,
    };
    let deadline = Instant::now() + ctx.config.node_ready_timeout;
    let mut cancel = ctx.cancel.clone();
    let mut last;
    loop {
        let (api2, name2) = (api.clone(), name.clone());
        let answer = tokio::task::spawn_blocking(move || api2.readiness(&name2))
            .await
            .map_err(|e| fail(format!("checking the Node's readiness: {e}")))?;
        match answer {
            Ok(Readiness::Ready) => {
                log.line(&format!("node {name} is Ready in the cloud's API"));
                report.node_ready = "ready";
                return Ok(());
            }
            Ok(Readiness::NotReady(why)) => last = format!("Node {name} is not Ready: {why}"),
            Ok(Readiness::Missing) => {
                last = format!("the cloud's API has no Node {name}: cloudcore did not register it")
            }
            Err(e) => last = format!("{e:#}"),
        }
        let last_line = ctx.redactor.scrub(&last);
        log.line(&last_line);
        if Instant::now() >= deadline {
            report.node_ready = "not_ready";
            return Err(fail(format!(
                "{last_line} (after {}s, --verify-node-ready)",
                ctx.config.node_ready_timeout.as_secs()
            )));
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
            _ = cancel.wait_for(|c| *c) => return Err(interrupted(Step::Postcheck)),
        }
    }
}

/// The node has no curl or wget: send the tarball over SSH, then let the
/// same script verify and unpack it.
async fn upload_keadm(
    ctx: &Ctx,
    session: &ssh::Session,
    node: &NodePlan,
    out: &NodeOutcome,
    timeout: Duration,
    log: &mut NodeLog,
) -> Result<(), Failure> {
    let fail = |message: String| Failure {
        step: Step::Fetch,
        message,
        kind: "fetch".into(),
        interrupted: false,
    };
    let arch = out
        .arch
        .clone()
        .ok_or_else(|| fail("the node's arch is unknown: rerun without --resume".into()))?;
    let asset = ctx
        .plan
        .keadm
        .iter()
        .find(|a| a.arch == arch)
        .ok_or_else(|| fail(format!("the store has no keadm for {arch}")))?;
    let local = ctx.plan.store.join("files").join(&asset.file);
    let version = &ctx.plan.kubeedge_version;
    let cmd = script::wrap(&script::upload_target(version, &asset.file), node.spec.sudo);
    if !send_file(ctx, session, &cmd, local, timeout, log).await? {
        return Err(fail(format!("uploading {} over SSH failed", asset.file)));
    }
    let verify = script::wrap(
        &script::fetch(version, &ctx.plan.endpoint, &ctx.plan.keadm, true),
        node.spec.sudo,
    );
    log.line(&format!("$ {verify}"));
    let (status, captured) = exec(ctx, session, Step::Fetch, &verify, None, timeout).await?;
    log.output(&captured.bytes);
    if matches!(status, ssh::ExitStatus::Code(0)) {
        Ok(())
    } else {
        Err(fail(explain(
            &ctx.redactor.scrub_bytes(&captured.bytes),
            "",
        )))
    }
}

/// Streams a local file into `cmd` on the node; true when it exits 0.
async fn send_file(
    ctx: &Ctx,
    session: &ssh::Session,
    cmd: &str,
    local: PathBuf,
    timeout: Duration,
    log: &mut NodeLog,
) -> Result<bool, Failure> {
    log.line(&format!("$ {cmd} < {}", local.display()));
    let stdin = Some(ssh::Stdin::File(local));
    let (status, captured) = exec(ctx, session, Step::Fetch, cmd, stdin, timeout).await?;
    log.output(&captured.bytes);
    Ok(matches!(status, ssh::ExitStatus::Code(0)))
}

/// keadm batch `copyFrom`: every file under the directory, recursively.
async fn upload_dir(
    ctx: &Ctx,
    session: &ssh::Session,
    node: &NodePlan,
    dir: &Path,
    timeout: Duration,
    log: &mut NodeLog,
) -> Result<(), Failure> {
    let fail = |message: String| Failure {
        step: Step::Fetch,
        message,
        kind: "copy_from".into(),
        interrupted: false,
    };
    let mut files = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let entries =
            std::fs::read_dir(&d).map_err(|e| fail(format!("copyFrom {}: {e}", d.display())))?;
        for e in entries {
            let e = e.map_err(|e| fail(format!("copyFrom {}: {e}", d.display())))?;
            let ft = e
                .file_type()
                .map_err(|e| fail(format!("copyFrom {}: {e}", e)))?;
            if ft.is_dir() {
                stack.push(e.path());
            } else if ft.is_file() {
                files.push(e.path());
            }
        }
    }
    files.sort();
    for f in files {
        use std::os::unix::fs::PermissionsExt;
        let rel = f
            .strip_prefix(dir)
            .unwrap_or(&f)
            .to_string_lossy()
            .to_string();
        let mode = std::fs::metadata(&f)
            .map(|m| m.permissions().mode() & 0o777)
            .unwrap_or(0o644)
            | 0o500;
        let cmd = script::wrap(&script::copy_target(&rel, mode), node.spec.sudo);
        if !send_file(ctx, session, &cmd, f.clone(), timeout, log).await? {
            return Err(fail(format!("uploading copyFrom file {rel} failed")));
        }
    }
    Ok(())
}

/// What the operator sees while a batch runs: on a terminal, one overall
/// bar plus a line per active node; otherwise one line per finished node,
/// never interleaved output.
pub struct Progress {
    bars: Option<Bars>,
    out: Printer,
    total: usize,
    done: AtomicUsize,
}

struct Bars {
    multi: indicatif::MultiProgress,
    overall: indicatif::ProgressBar,
    active: Mutex<std::collections::HashMap<String, indicatif::ProgressBar>>,
}

impl Progress {
    pub fn new(total: usize, out: &Printer) -> Progress {
        let bars = out.progress().then(|| {
            let multi = indicatif::MultiProgress::new();
            let overall = multi.add(indicatif::ProgressBar::new(total as u64));
            overall.set_style(
                indicatif::ProgressStyle::with_template(
                    "{elapsed_precise} [{bar:40}] {pos}/{len} nodes {msg}",
                )
                .expect("static template")
                .progress_chars("=> "),
            );
            Bars {
                multi,
                overall,
                active: Mutex::new(Default::default()),
            }
        });
        Progress {
            bars,
            out: *out,
            total,
            done: AtomicUsize::new(0),
        }
    }

    fn started(&self, name: &str) {
        if let Some(b) = &self.bars {
            let bar = b.multi.add(indicatif::ProgressBar::new_spinner());
            bar.set_style(
                indicatif::ProgressStyle::with_template("  {spinner} {prefix}: {msg}")
                    .expect("static template"),
            );
            bar.set_prefix(name.to_string());
            bar.enable_steady_tick(Duration::from_millis(200));
            b.active
                .lock()
                .expect("progress lock")
                .insert(name.to_string(), bar);
        }
    }

    /// The node gave its slot back to wait for another connect attempt.
    fn requeued(&self, name: &str) {
        if let Some(b) = &self.bars {
            if let Some(bar) = b.active.lock().expect("progress lock").remove(name) {
                bar.finish_and_clear();
                b.multi.remove(&bar);
            }
        }
    }

    fn step(&self, name: &str, step: Step) {
        if let Some(b) = &self.bars {
            if let Some(bar) = b.active.lock().expect("progress lock").get(name) {
                bar.set_message(step.name());
            }
        }
    }

    fn finished(&self, o: &NodeOutcome) {
        let n = self.done.fetch_add(1, Ordering::SeqCst) + 1;
        let line = match o.status {
            NodeStatus::Joined
            | NodeStatus::Reset
            | NodeStatus::AlreadyJoined
            | NodeStatus::Upgraded
            | NodeStatus::UpToDate => format!(
                "[{n}/{}] {} {}: {} ({:.1}s)",
                self.total,
                o.name,
                o.host,
                status_word(o.status),
                o.ms as f64 / 1000.0
            ),
            _ => format!(
                "[{n}/{}] {} {}: {}{}: {}",
                self.total,
                o.name,
                o.host,
                status_word(o.status),
                o.failed_step
                    .map_or(String::new(), |s| format!(" at {}", s.name())),
                // A not-started node's reason already says so; said once.
                node_cell(
                    o.error
                        .as_deref()
                        .map(|e| e.strip_prefix("not started: ").unwrap_or(e))
                        .unwrap_or("")
                )
            ),
        };
        match &self.bars {
            Some(b) => {
                if let Some(bar) = b.active.lock().expect("progress lock").remove(&o.name) {
                    bar.finish_and_clear();
                    b.multi.remove(&bar);
                }
                b.overall.inc(1);
                let _ = b.multi.println(line);
                if n == self.total {
                    b.overall.finish_and_clear();
                }
            }
            None => self.out.note(&line),
        }
    }
}

pub fn status_word(s: NodeStatus) -> &'static str {
    match s {
        NodeStatus::Joined => "joined",
        NodeStatus::AlreadyJoined => "already joined",
        NodeStatus::Reset => "reset",
        NodeStatus::Failed => "FAILED",
        NodeStatus::Interrupted => "INTERRUPTED",
        NodeStatus::NotStarted => "not started",
        NodeStatus::Upgraded => "upgraded",
        NodeStatus::UpToDate => "up to date",
        NodeStatus::RolledBack => "FAILED, rolled back",
        NodeStatus::RollbackFailed => "FAILED, ROLLBACK FAILED",
    }
}
