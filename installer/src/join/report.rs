//! `report.json` and the summary table: what happened to every node.

use std::path::Path;

use anyhow::Result;

use super::plan::JoinPlan;
use super::run::{status_word, NodeOutcome, NodeStatus};

pub use crate::output::{Counts, Report};

pub const REPORT_FILE: &str = "report.json";

/// Exit codes of `join`, `reset` and `upgrade` (also in `--help`).
pub const EXIT_ALL_OK: u8 = 0;
pub const EXIT_SOME_FAILED: u8 = 2;
pub const EXIT_NOTHING_STARTED: u8 = 3;
/// `upgrade`: a node's upgrade failed and its rollback failed too.
pub const EXIT_ROLLBACK_FAILED: u8 = 4;
pub const EXIT_INTERRUPTED: u8 = 130;

pub fn counts(outcomes: &[NodeOutcome]) -> Counts {
    let mut c = Counts {
        total: outcomes.len(),
        ..Counts::default()
    };
    for o in outcomes {
        match o.status {
            NodeStatus::Joined => c.joined += 1,
            NodeStatus::AlreadyJoined => c.already_joined += 1,
            NodeStatus::Reset => c.reset += 1,
            NodeStatus::Failed => c.failed += 1,
            NodeStatus::Interrupted => c.interrupted += 1,
            NodeStatus::NotStarted => c.not_started += 1,
            NodeStatus::Upgraded => c.upgraded += 1,
            NodeStatus::UpToDate => c.up_to_date += 1,
            NodeStatus::RolledBack => c.rolled_back += 1,
            NodeStatus::RollbackFailed => c.rollback_failed += 1,
        }
    }
    c
}

pub fn exit_code(outcomes: &[NodeOutcome], interrupted: bool) -> u8 {
    if interrupted {
        return EXIT_INTERRUPTED;
    }
    if outcomes
        .iter()
        .any(|o| o.status == NodeStatus::RollbackFailed)
    {
        return EXIT_ROLLBACK_FAILED;
    }
    let all_ok = outcomes.iter().all(|o| {
        matches!(
            o.status,
            NodeStatus::Joined
                | NodeStatus::AlreadyJoined
                | NodeStatus::Reset
                | NodeStatus::Upgraded
                | NodeStatus::UpToDate
        )
    });
    if all_ok {
        EXIT_ALL_OK
    } else {
        EXIT_SOME_FAILED
    }
}

pub fn build<'a>(
    plan: &'a JoinPlan,
    run: &'a str,
    started: &'a str,
    outcomes: &'a [NodeOutcome],
    exit_code: u8,
) -> Report<'a> {
    Report {
        edgeferry: env!("CARGO_PKG_VERSION"),
        action: plan.action,
        run,
        started,
        finished: super::run::now(),
        inventory: &plan.inventory,
        kubeedge_version: &plan.kubeedge_version,
        mirror: &plan.mirror,
        mirrors: &plan.mirrors,
        state_dir: &plan.state_dir,
        host_key_policy: plan.host_keys,
        host_keys_learned: outcomes
            .iter()
            .filter(|o| o.host_key.as_ref().is_some_and(|k| k.learned))
            .count(),
        counts: counts(outcomes),
        exit_code,
        nodes: outcomes,
    }
}

/// Written whole to a temp file and renamed: a reader never sees half.
pub fn write(report: &Report, state_dir: &Path) -> Result<()> {
    let mut bytes = serde_json::to_vec_pretty(report)?;
    bytes.push(b'\n');
    edgeferry_bundle::atomic::write_file(&state_dir.join(REPORT_FILE), &bytes, 0o600)
}

/// Rows of N cells, as `printer::table` takes them.
fn fixed<const N: usize>(rows: Vec<Vec<String>>) -> Vec<[String; N]> {
    rows.into_iter()
        .map(|r| r.try_into().expect("every row has the header's cells"))
        .collect()
}

pub fn table(report: &Report) -> String {
    let upgrade = report.action == crate::node::steps::Action::Upgrade;
    let mut head = vec!["NODE", "HOST", "ARCH", "STATUS"];
    if upgrade {
        head.extend(["BEFORE", "VERSION"]);
    }
    head.extend(["STEP", "TIME", "ERROR"]);
    let mut rows = vec![head.into_iter().map(String::from).collect::<Vec<_>>()];
    for o in report.nodes {
        let mut row = vec![
            o.name.clone(),
            o.host.clone(),
            o.arch.clone().unwrap_or_else(|| "-".into()),
            status_word(o.status).to_string(),
        ];
        if upgrade {
            row.push(o.version_before.clone().unwrap_or_else(|| "-".into()));
            row.push(o.version.clone().unwrap_or_else(|| "-".into()));
        }
        row.extend([
            o.failed_step.map_or("-".into(), |s| s.name().to_string()),
            format!("{:.1}s", o.ms as f64 / 1000.0),
            o.error.clone().unwrap_or_default(),
        ]);
        rows.push(row);
    }
    let mut s = if upgrade {
        crate::printer::table(&fixed::<9>(rows))
    } else {
        crate::printer::table(&fixed::<7>(rows))
    };
    let c = &report.counts;
    if upgrade {
        s.push_str(&format!(
            "\n{} node(s): {} upgraded, {} up to date, {} failed, {} rolled back, {} ROLLBACK FAILED, {} interrupted, {} not started",
            c.total, c.upgraded, c.up_to_date, c.failed, c.rolled_back, c.rollback_failed, c.interrupted, c.not_started
        ));
    } else {
        s.push_str(&format!(
            "\n{} node(s): {} joined, {} already joined, {} reset, {} failed, {} interrupted, {} not started",
            c.total, c.joined, c.already_joined, c.reset, c.failed, c.interrupted, c.not_started
        ));
    }
    if report.host_keys_learned > 0 {
        s.push_str(&format!(
            "; {} new host key(s) recorded (--accept-new-host-keys)",
            report.host_keys_learned
        ));
    }
    s.push('\n');
    let checked: Vec<&crate::output::PostcheckReport> = report
        .nodes
        .iter()
        .filter_map(|o| o.postcheck.as_ref())
        .collect();
    if !checked.is_empty() {
        let ready = checked.iter().filter(|p| p.node_ready == "ready").count();
        if checked.iter().all(|p| p.node_ready == "not_checked") {
            s.push_str("Node Ready in the cloud's API: not checked (pass --verify-node-ready KUBECONFIG)\n");
        } else {
            s.push_str(&format!(
                "Node Ready in the cloud's API: {ready} of {} postchecked node(s)\n",
                checked.len()
            ));
        }
        let repaired = checked.iter().filter(|p| !p.fixed.is_empty()).count();
        if repaired > 0 {
            s.push_str(&format!(
                "postcheck repaired {repaired} node(s) (see report.json postcheck.fixed): keadm leaves the token readable in edgecore.yaml\n"
            ));
        }
    }
    s
}
