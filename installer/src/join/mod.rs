//! `edgeferry join` and `edgeferry reset`: many edge nodes over SSH.
//!
//! inventory (our YAML or keadm batch) -> plan (node × step, plain data)
//! -> run (bounded fan-out over russh, journal per step) -> report.

pub mod journal;
mod pipe;
pub mod plan;
pub mod ready;
pub mod report;
pub mod run;
pub mod ssh;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::cli::{BatchArgs, JoinArgs, UpgradeArgs};
use crate::config::Config;
use crate::node::steps::{self, Action, Step};
use crate::node::{inventory, secret};
use crate::printer::Printer;
use run::{Entry, NodeStatus};

/// What a batch command asks beyond [`BatchArgs`].
struct Mode<'a> {
    action: Action,
    /// Continue the journal's run.
    resume: bool,
    /// `join --retry-failed`.
    only_failed: bool,
    /// `join --fresh` (a reset always starts fresh).
    fresh: bool,
    settle: Option<u64>,
    verify_node_ready: Option<&'a Path>,
    upgrade: Option<&'a UpgradeArgs>,
}

/// Reads the inventory and the store and builds the plan. Errors here mean
/// nothing could start (exit 3).
fn prepare(
    args: &BatchArgs,
    mode: &Mode,
    config: &Config,
    redactor: &secret::Redactor,
) -> Result<plan::JoinPlan> {
    let inv = inventory::read(&args.inventory, redactor)?;
    if !args.store.join(crate::store::STATE_FILE).exists() {
        bail!(
            "{} is not an edgeferry store: load a bundle into it first (edgeferry load ... --store {})",
            args.store.display(),
            args.store.display()
        );
    }
    let state = crate::store::State::read(&args.store)?;
    let mut timeouts: BTreeMap<Step, Duration> = BTreeMap::new();
    for (name, secs) in &inv.timeouts {
        let step = Step::from_name(name).with_context(|| {
            format!(
                "timeouts: unknown step {name:?}: use one of {}",
                steps::all_names()
            )
        })?;
        timeouts.insert(step, Duration::from_secs((*secs).max(1)));
    }
    let state_dir = args.state_dir.clone().unwrap_or_else(|| {
        let stem = args
            .inventory
            .file_stem()
            .map_or("inventory".into(), |s| s.to_string_lossy().to_string());
        args.inventory
            .parent()
            .unwrap_or(Path::new("."))
            .join(format!("edgeferry-{stem}"))
    });
    let limit: BTreeSet<String> = args.limit.iter().cloned().collect();
    plan::build(
        &plan::PlanInput {
            action: mode.action,
            inventory_path: &args.inventory,
            inventory: &inv,
            store_dir: &args.store,
            state: &state,
            mirrors: &args.mirror,
            node_mirror: args.node_mirror.as_deref(),
            mirror_ca: crate::tls::node_ca(&args.store, args.mirror_ca.as_deref())?,
            state_dir,
            parallel: args.parallel,
            accept_new_host_keys: args.accept_new_host_keys,
            limit: (!limit.is_empty()).then_some(&limit),
            timeouts: &timeouts,
            settle: mode.settle.or(inv.settle).map(Duration::from_secs),
            verify_node_ready: mode.verify_node_ready,
            upgrade: mode.upgrade.map(|u| plan::UpgradeRequest {
                to: &u.to,
                allow_downgrade: u.allow_downgrade,
                allow_skip_minor: u.allow_skip_minor,
                rollback: !u.no_rollback,
                canary: u.canary.unwrap_or(0),
            }),
        },
        config,
        redactor,
    )
}

fn max_fail(value: Option<&str>, nodes: usize) -> Result<Option<usize>> {
    let Some(v) = value else { return Ok(None) };
    let n = if let Some(p) = v.strip_suffix('%') {
        let p: f64 = p
            .parse()
            .ok()
            .filter(|p: &f64| *p > 0.0 && *p <= 100.0)
            .with_context(|| format!("--max-fail {v}: give a percentage between 0 and 100"))?;
        ((nodes as f64) * p / 100.0).ceil() as usize
    } else {
        v.parse().ok().filter(|n: &usize| *n > 0).with_context(|| {
            format!("--max-fail {v}: give a number of nodes (at least 1) or a percentage")
        })?
    };
    Ok(Some(n.max(1)))
}

pub fn join_cmd(args: &JoinArgs, config: &Config, out: &Printer) -> Result<u8> {
    let mode = Mode {
        action: Action::Join,
        resume: args.resume || args.retry_failed,
        only_failed: args.retry_failed,
        fresh: args.fresh,
        settle: args.settle,
        verify_node_ready: args.verify_node_ready.as_deref(),
        upgrade: None,
    };
    batch(&args.batch, &mode, config, out)
}

/// A reset always starts fresh and runs every step.
pub fn reset_cmd(args: &BatchArgs, config: &Config, out: &Printer) -> Result<u8> {
    let mode = Mode {
        action: Action::Reset,
        resume: false,
        only_failed: false,
        fresh: true,
        settle: None,
        verify_node_ready: None,
        upgrade: None,
    };
    batch(args, &mode, config, out)
}

/// An upgrade appends to the join's journal, its events marked with the
/// target; `--resume` reads those back.
pub fn upgrade_cmd(args: &UpgradeArgs, config: &Config, out: &Printer) -> Result<u8> {
    let mode = Mode {
        action: Action::Upgrade,
        resume: args.resume,
        only_failed: false,
        fresh: false,
        settle: args.settle,
        verify_node_ready: None,
        upgrade: Some(args),
    };
    batch(&args.batch, &mode, config, out)
}

fn batch(args: &BatchArgs, mode: &Mode, config: &Config, out: &Printer) -> Result<u8> {
    let Mode {
        action,
        resume,
        only_failed,
        fresh,
        ..
    } = *mode;
    let redactor = secret::Redactor::default();
    let plan = prepare(args, mode, config, &redactor)?;
    if mode.upgrade.is_some_and(|u| u.emit_nodeupgradejob) {
        out.text(&emit_nodeupgradejob(&plan)?);
        return Ok(report::EXIT_ALL_OK);
    }
    // Read before anything runs: a kubeconfig we cannot use stops the run
    // here (exit 3), not after every node has joined.
    let api = match &plan.verify_node_ready {
        Some(path) => {
            let api =
                ready::ApiClient::from_kubeconfig(path, config.join.node_ready_request_timeout)?;
            if let Some(token) = api.token() {
                redactor.add(token);
            }
            Some(Arc::new(api))
        }
        None => None,
    };
    let budget = max_fail(args.max_fail.as_deref(), plan.nodes.len())?;
    if args.dry_run {
        let mut plan = plan;
        if resume {
            // Read-only: show what this resume would run and skip.
            let histories = journal::histories_for(
                &journal::read(&plan.state_dir)?,
                plan.upgrade.as_ref().map(|u| u.to.as_str()),
            );
            let (entries, excluded) = entries(&plan, &histories, action, resume, only_failed);
            plan.note_resume(&entries, &excluded);
        }
        if out.json() {
            out.data(&plan)?;
        } else {
            out.text(&plan.render());
        }
        return Ok(report::EXIT_ALL_OK);
    }

    let events = journal::read(&plan.state_dir)?;
    let journal_path = plan.state_dir.join(journal::JOURNAL_FILE);
    if action == Action::Join && !events.is_empty() && !resume {
        if !fresh {
            bail!(
                "{} holds an earlier run: pass --resume to continue it, --retry-failed to rerun its failures, or --fresh to start over",
                journal_path.display()
            );
        }
        let aside = plan
            .state_dir
            .join(format!("journal.{}.jsonl", run_id().replace(':', "")));
        std::fs::rename(&journal_path, &aside)
            .with_context(|| format!("cannot move {} aside", journal_path.display()))?;
        out.note(&format!("previous journal kept as {}", aside.display()));
    }
    let events = if resume {
        events
    } else {
        journal::read(&plan.state_dir)?
    };
    let histories = journal::histories_for(&events, plan.upgrade.as_ref().map(|u| u.to.as_str()));
    let (entries, excluded) = entries(&plan, &histories, action, resume, only_failed);

    let journal = journal::Journal::open(&plan.state_dir)?;
    let run_id = run_id();
    let started = run::now();
    let (cancel_tx, cancel_rx) = tokio::sync::watch::channel(false);
    let total = plan.nodes.len() - excluded.len();
    let ctx = Arc::new(run::Ctx {
        config: config.join.clone(),
        redactor: redactor.clone(),
        journal,
        run_id: run_id.clone(),
        policy: if args.accept_new_host_keys {
            ssh::HostKeyPolicy::AcceptNew
        } else {
            ssh::HostKeyPolicy::Strict
        },
        cancel: cancel_rx,
        progress: run::Progress::new(total, out),
        api,
        plan,
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let ctx2 = ctx.clone();
    let mut outcomes = runtime.block_on(async move {
        let out = *out;
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                out.warn(
                    "interrupted: stopping; the journal stays consistent and --resume continues",
                );
                let _ = cancel_tx.send(true);
            }
        });
        waves(ctx2, entries, budget).await
    });
    runtime.shutdown_timeout(Duration::from_secs(1));
    let plan = &ctx.plan;
    for i in excluded {
        let node = &plan.nodes[i];
        let mut o = run::NodeOutcome::blank(plan, node, NodeStatus::NotStarted);
        o.error = Some("not retried: it had not failed (--resume runs it)".into());
        o.arch = histories.get(&node.name).and_then(|h| h.arch.clone());
        outcomes.push(o);
    }
    let interrupted = *ctx.cancel.borrow();
    let code = report::exit_code(&outcomes, interrupted);
    let report = report::build(plan, &run_id, &started, &outcomes, code);
    report::write(&report, &plan.state_dir)?;
    if out.json() {
        out.data(&report)?;
    } else {
        out.text(&report::table(&report));
        out.line(&format!(
            "report: {}  logs: {}",
            plan.state_dir.join(report::REPORT_FILE).display(),
            plan.state_dir.join("logs").display()
        ));
    }
    Ok(code)
}

type Entries = (Vec<(usize, Entry)>, Vec<usize>);

/// How each node of the plan enters this run, from the journal's
/// histories; and the nodes `--retry-failed` leaves out.
fn entries(
    plan: &plan::JoinPlan,
    histories: &BTreeMap<String, journal::History>,
    action: Action,
    resume: bool,
    only_failed: bool,
) -> Entries {
    let mut entries = Vec::new();
    let mut excluded = Vec::new();
    for (i, node) in plan.nodes.iter().enumerate() {
        let h = histories.get(&node.name);
        if only_failed && !h.is_some_and(|h| h.failed() || h.joined()) {
            excluded.push(i);
            continue;
        }
        let entry = match action {
            Action::Join => Entry::from_history(h, resume, None),
            Action::Upgrade => {
                Entry::from_history(h, resume, plan.upgrade.as_ref().map(|u| u.to.as_str()))
            }
            // A reset runs every step, and the journal still knows the arch.
            Action::Reset => Entry::Run {
                skip: BTreeSet::new(),
                arch: h.and_then(|h| h.arch.clone()),
                version_before: None,
            },
        };
        entries.push((i, entry));
    }
    (entries, excluded)
}

/// Runs the nodes: with `--canary N`, the first N entries as a wave of
/// their own that stops everything when one fails; then the rest at
/// `--parallel` within `--max-fail`.
async fn waves(
    ctx: Arc<run::Ctx>,
    mut entries: Vec<(usize, Entry)>,
    budget: Option<usize>,
) -> Vec<run::NodeOutcome> {
    let parallel = ctx.plan.parallel;
    let canary = ctx.plan.upgrade.as_ref().map_or(0, |u| u.canary);
    if canary == 0 {
        return run::execute(ctx, entries, parallel, budget).await;
    }
    let rest = entries.split_off(canary.min(entries.len()));
    let mut outcomes = run::execute(ctx.clone(), entries, parallel.min(canary), Some(1)).await;
    let stop = if *ctx.cancel.borrow() {
        Some("interrupted (Ctrl-C) before it started")
    } else if outcomes
        .iter()
        .any(|o| o.status.is_failure() || o.status == NodeStatus::Interrupted)
    {
        Some("not started: a canary failed")
    } else {
        None
    };
    match stop {
        Some(reason) => {
            for (i, _) in rest {
                outcomes.push(run::not_started(&ctx, &ctx.plan.nodes[i], reason));
            }
        }
        None => outcomes.extend(run::execute(ctx.clone(), rest, parallel, budget).await),
    }
    outcomes
}

/// The NodeUpgradeJob for the plan's nodes (their Node names: keadm's
/// `--edgenode-name`, else the inventory's name), image and digests.
fn emit_nodeupgradejob(plan: &plan::JoinPlan) -> Result<String> {
    let up = plan.upgrade.as_ref().context("not an upgrade")?;
    let names: Vec<String> = plan
        .nodes
        .iter()
        .map(|n| {
            n.spec
                .edgenode_name
                .clone()
                .unwrap_or_else(|| n.name.clone())
        })
        .collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let mut digests = Vec::new();
    for (arch, digest) in &up.image_digests {
        let arch: edgeferry_bundle::format::Arch = arch
            .parse()
            .map_err(|e| anyhow::anyhow!("arch {arch}: {e}"))?;
        digests.push((arch, digest.as_str()));
    }
    crate::nodeupgradejob::render(&names, &up.to, &up.image, &digests)
}

/// Names one run in the journal. The time alone is not unique: two short
/// runs can fall in the same second.
fn run_id() -> String {
    format!("{}-{}", run::now(), std::process::id())
}
