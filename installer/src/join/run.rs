//! The executor: runs a `JoinPlan` with bounded parallelism. Each node is
//! a task whose result is a `NodeOutcome` value, never an error that stops
//! the batch. Every step is journaled before and after it runs.

use std::collections::BTreeSet;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{watch, Semaphore};

use super::journal::{Event, History, Journal, Status};
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
}

impl From<Failure> for Failed {
    fn from(failure: Failure) -> Failed {
        Failed {
            failure,
            rollback: None,
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

/// Runs one wave: `parallel` nodes at a time, no new node once `max_fail`
/// of this wave's nodes have failed.
pub async fn execute(
    ctx: Arc<Ctx>,
    entries: Vec<(usize, Entry)>,
    parallel: usize,
    max_fail: Option<usize>,
) -> Vec<NodeOutcome> {
    let sem = Arc::new(Semaphore::new(parallel.max(1)));
    let failures = Arc::new(AtomicUsize::new(0));
    let mut outcomes: Vec<(usize, NodeOutcome)> = Vec::new();
    let mut tasks = tokio::task::JoinSet::new();
    let mut stop_reason: Option<&'static str> = None;
    for (idx, entry) in entries {
        let node = &ctx.plan.nodes[idx];
        if let Some(reason) = stop_reason {
            outcomes.push((idx, not_started(&ctx, node, reason)));
            continue;
        }
        let (skip, arch, version_before) = match entry {
            Entry::AlreadyJoined { arch } => {
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
                continue;
            }
            Entry::Run {
                skip,
                arch,
                version_before,
            } => (skip, arch, version_before),
        };
        let mut cancel = ctx.cancel.clone();
        let permit = tokio::select! {
            p = sem.clone().acquire_owned() => p.expect("semaphore open"),
            _ = cancel.wait_for(|c| *c) => {
                stop_reason = Some("interrupted (Ctrl-C) before it started");
                outcomes.push((idx, not_started(&ctx, node, stop_reason.unwrap())));
                continue;
            }
        };
        if *ctx.cancel.borrow() {
            stop_reason = Some("interrupted (Ctrl-C) before it started");
            outcomes.push((idx, not_started(&ctx, node, stop_reason.unwrap())));
            continue;
        }
        if let Some(budget) = max_fail {
            if failures.load(Ordering::SeqCst) >= budget {
                stop_reason = Some("not started: the --max-fail budget was spent");
                outcomes.push((idx, not_started(&ctx, node, stop_reason.unwrap())));
                continue;
            }
        }
        let ctx2 = ctx.clone();
        let failures2 = failures.clone();
        tasks.spawn(async move {
            let outcome = run_node(&ctx2, idx, skip, arch, version_before).await;
            if outcome.status.is_failure() {
                failures2.fetch_add(1, Ordering::SeqCst);
            }
            drop(permit);
            ctx2.progress.finished(&outcome);
            (idx, outcome)
        });
        // Let finished tasks report so the failure count is current.
        while let Some(done) = tasks.try_join_next() {
            outcomes.push(done.expect("node task does not panic"));
        }
    }
    while let Some(done) = tasks.join_next().await {
        outcomes.push(done.expect("node task does not panic"));
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

async fn run_node(
    ctx: &Ctx,
    idx: usize,
    skip: BTreeSet<Step>,
    arch: Option<String>,
    version_before: Option<String>,
) -> NodeOutcome {
    let node = &ctx.plan.nodes[idx];
    let started = Instant::now();
    let mut out = blank_outcome(ctx, node, NodeStatus::Failed);
    out.arch = arch;
    out.version_before = version_before;
    let mut log = NodeLog::open(&out.log, &ctx.redactor);
    log.line(&format!(
        "=== run {} {}: {} {}@{}:{}",
        ctx.run_id,
        ctx.plan.action.name(),
        node.name,
        node.user,
        node.host,
        node.port
    ));
    ctx.progress.started(&node.name);

    let result = run_steps(ctx, node, &skip, &mut out, &mut log).await;
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
        }) => {
            let message = node_cell(&ctx.redactor.scrub(&f.message));
            log.line(&format!("=== FAILED at {}: {message}", f.step.name()));
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
    out.ms = started.elapsed().as_millis() as u64;
    out
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
    let session = connect(ctx, node, connect_plan, log).await;
    let ms = t.elapsed().as_millis() as u64;
    let session = match session {
        Ok(s) => s,
        Err(f) => {
            record_end(ctx, node, Step::Connect, ms, Err(&f), out);
            return Err(f.into());
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

    let mut result = Ok(Finish::Done);
    for st in &node.steps[1..] {
        if skip.contains(&st.step) {
            log.line(&format!(
                "--- {}: done in an earlier run, skipped",
                st.step.name()
            ));
            out.steps.push(StepTiming {
                step: st.step,
                status: "skipped",
                ms: 0,
            });
            continue;
        }
        match run_one(ctx, node, st, &session, out, log).await {
            Ok(()) => {}
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
                        let mut r = Ok(());
                        for rb in &node.rollback {
                            if let Err(rf) = run_one(ctx, node, rb, &session, out, log).await {
                                r = Err(rf);
                                break;
                            }
                        }
                        Some(r)
                    }
                    None => None,
                };
                result = Err(Failed {
                    failure: f,
                    rollback,
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

/// Runs one step, journaled before and after; the upgrade preflight's
/// version rules apply here, so a refusal is that step's failure.
async fn run_one(
    ctx: &Ctx,
    node: &NodePlan,
    st: &StepPlan,
    session: &ssh::Session,
    out: &mut NodeOutcome,
    log: &mut NodeLog,
) -> Result<(), Failure> {
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
    let t = Instant::now();
    let mut r = run_step(ctx, node, st, session, out, log).await;
    if r.is_ok() && st.step == Step::UpgradePreflight {
        r = judge_version(ctx, out);
    }
    let ms = t.elapsed().as_millis() as u64;
    match r {
        Ok(()) => {
            record_end(ctx, node, st.step, ms, Ok(()), out);
            Ok(())
        }
        Err(f) if f.kind == UP_TO_DATE => {
            log.line(&f.message);
            record_end(ctx, node, st.step, ms, Ok(()), out);
            Err(f)
        }
        Err(f) => {
            record_end(ctx, node, st.step, ms, Err(&f), out);
            Err(f)
        }
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

async fn connect(
    ctx: &Ctx,
    node: &NodePlan,
    plan: &StepPlan,
    log: &mut NodeLog,
) -> Result<ssh::Session, Failure> {
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
    let mut backoff = ctx.config.retry_backoff;
    let mut cancel = ctx.cancel.clone();
    for attempt in 1..=attempts {
        log.line(&format!(
            "$ {} (attempt {attempt}/{attempts})",
            plan.command
        ));
        let r = tokio::select! {
            r = ssh::connect(&target, &auths, &opts) => r,
            _ = cancel.wait_for(|c| *c) => return Err(interrupted(Step::Connect)),
        };
        match r {
            Ok(s) => {
                log.line(&format!("connected, host key {}", s.host_key.fingerprint));
                return Ok(s);
            }
            Err(e) if e.is_transient() && attempt < attempts => {
                log.line(&format!(
                    "attempt {attempt} failed: {e}; retrying in {}s",
                    backoff.as_secs_f32()
                ));
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = cancel.wait_for(|c| *c) => return Err(interrupted(Step::Connect)),
                }
                backoff *= 2;
            }
            Err(e) => {
                let after = if e.is_transient() {
                    format!(" (after {attempts} attempts)")
                } else {
                    String::new()
                };
                return Err(Failure {
                    step: Step::Connect,
                    message: format!("{e}{after}"),
                    kind: e.kind().to_string(),
                    interrupted: false,
                });
            }
        }
    }
    unreachable!("the last attempt returns")
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
struct Captured {
    bytes: Vec<u8>,
    cut: bool,
}

async fn exec(
    ctx: &Ctx,
    session: &ssh::Session,
    step: Step,
    command: &str,
    stdin: Option<ssh::Stdin>,
    timeout: Duration,
) -> Result<(ssh::ExitStatus, Captured), Failure> {
    let limit = ctx.config.max_step_output;
    let captured = Arc::new(Mutex::new(Captured {
        bytes: Vec::new(),
        cut: false,
    }));
    let sink = captured.clone();
    let mut on_output = move |chunk: &[u8]| {
        let mut c = sink.lock().expect("capture lock");
        let room = limit.saturating_sub(c.bytes.len());
        if chunk.len() > room {
            c.cut = true;
        }
        c.bytes.extend_from_slice(&chunk[..chunk.len().min(room)]);
    };
    let mut cancel = ctx.cancel.clone();
    let r = tokio::select! {
        r = session.exec(command, stdin, timeout, &mut on_output) => r,
        _ = cancel.wait_for(|c| *c) => return Err(interrupted(step)),
    };
    let captured = std::mem::replace(
        &mut *captured.lock().expect("capture lock"),
        Captured {
            bytes: Vec::new(),
            cut: false,
        },
    );
    match r {
        Ok(status) => Ok((status, captured)),
        Err(SshError::Timeout { .. }) => Err(Failure {
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
        }),
        Err(e) => Err(Failure {
            step,
            message: e.to_string(),
            kind: e.kind().to_string(),
            interrupted: false,
        }),
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

async fn run_step(
    ctx: &Ctx,
    node: &NodePlan,
    st: &StepPlan,
    session: &ssh::Session,
    out: &mut NodeOutcome,
    log: &mut NodeLog,
) -> Result<(), Failure> {
    let timeout = Duration::from_secs(st.timeout_secs.max(1));
    if st.step == Step::Fetch {
        if let Some(dir) = &node.spec.copy_from {
            upload_dir(ctx, session, node, dir, timeout, log).await?;
        }
    }
    // The remote side enforces keadm's own timeout with `timeout`; give it
    // room to report before the channel is cut.
    let channel_timeout = if st.step.runs_keadm() {
        timeout + Duration::from_secs(20)
    } else {
        timeout
    };
    log.line(&format!("$ {}", st.command));
    let stdin = (!st.secret_stdin.is_empty()).then(|| {
        log.line(&format!("< {}", st.stdin.join(" ")));
        ssh::Stdin::Bytes(script::args_text(&st.secret_stdin).into_bytes())
    });
    let t = Instant::now();
    let (status, captured) = exec(
        ctx,
        session,
        st.step,
        &st.exact_command,
        stdin,
        channel_timeout,
    )
    .await?;
    log.output(&captured.bytes);
    let text = ctx.redactor.scrub_bytes(&captured.bytes);
    log.line(&format!(
        "[{} {:?} after {} ms{}]",
        st.step.name(),
        status,
        t.elapsed().as_millis(),
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
    let code = match status {
        ssh::ExitStatus::Code(c) => Some(c),
        _ => None,
    };
    if st.step.is_postcheck() {
        let report = postcheck_report(&text);
        for fixed in &report.fixed {
            log.line(&format!("postcheck repaired: {fixed}"));
        }
        out.postcheck = Some(report);
    }
    if code == Some(0) {
        if st.step == Step::Postcheck {
            return verify_node_ready(ctx, node, out, log).await;
        }
        return Ok(());
    }
    if st.step == Step::Fetch && code == Some(script::NO_HTTP_CLIENT) {
        return upload_keadm(ctx, session, node, out, timeout, log).await;
    }
    let fail = |kind: &str, message: String| Failure {
        step: st.step,
        message,
        kind: kind.to_string(),
        interrupted: false,
    };
    let how = match status {
        ssh::ExitStatus::Code(c) => format!("exited {c}"),
        ssh::ExitStatus::Signal(s) => format!("was killed by signal {s}"),
        ssh::ExitStatus::Unknown => "ended without an exit status".to_string(),
    };
    let info = st.step.info();
    if st.step.runs_keadm() && code == Some(script::TIMED_OUT) {
        return Err(fail(
            "keadm_timeout",
            format!(
                "keadm did not finish within {}s and was stopped on the node: check the node's log, or raise timeouts.{}",
                st.timeout_secs,
                info.name
            ),
        ));
    }
    if st.step == Step::KeadmJoin && code == Some(script::EDGECORE_FAILED) {
        return Err(fail(
            EDGECORE_CERTIFICATE,
            format!(
                "edgecore could not get its certificates, so keadm join was stopped: {}",
                explain(&text, "edgecore:")
                    .trim_start_matches("edgecore:")
                    .trim_start()
            ),
        ));
    }
    let why = explain(&text, info.explain_prefix);
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
