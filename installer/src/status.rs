//! `edgeferry status`: one table of every node, whether it joined over SSH
//! (the join journals) or by pull mode (the mirror's reports).

use std::collections::BTreeMap;

use anyhow::Result;

use crate::cli::StatusArgs;
use crate::join::journal::{self, Status};
use crate::node::steps::Step;
use crate::output::{self, StatusNode};
use crate::printer::Printer;
use crate::pull;

pub fn collect(args: &StatusArgs) -> Result<Vec<StatusNode>> {
    let mut nodes: BTreeMap<String, StatusNode> = BTreeMap::new();
    for dir in &args.state_dirs {
        let events = journal::read(dir)?;
        let mut last: BTreeMap<String, (Step, Status, String, Option<String>)> = BTreeMap::new();
        let mut versions: BTreeMap<String, String> = BTreeMap::new();
        let mut upgrades: BTreeMap<String, String> = BTreeMap::new();
        for e in &events {
            last.insert(
                e.node.clone(),
                (e.step, e.status, e.ts.clone(), e.error.clone()),
            );
            if let Some(v) = &e.version {
                versions.insert(e.node.clone(), v.clone());
            }
            if let Some(to) = &e.to {
                if let Some(outcome) = upgrade_outcome(e.step, e.status, e.version.as_deref(), to) {
                    upgrades.insert(e.node.clone(), outcome);
                }
            }
        }
        for (name, h) in journal::histories(&events) {
            let (step, status, ts, error) = last.remove(&name).expect("every history has events");
            let key = name.clone();
            let state = if h.joined() {
                "joined"
            } else if status == Status::Interrupted {
                "interrupted"
            } else if h.failed() {
                "failed"
            } else {
                "running"
            };
            nodes.insert(
                name.clone(),
                StatusNode {
                    name,
                    mode: "ssh",
                    state,
                    step: Some(step.name().to_string()),
                    error: if h.joined() {
                        None
                    } else {
                        error.or(h.last_error)
                    },
                    last_report: Some(ts),
                    host: None,
                    version: versions.remove(&key),
                    upgrade: upgrades.remove(&key),
                },
            );
        }
    }
    if let Some(site) = &args.site_dir {
        let enrolled = pull::enroll::read(site)?;
        for n in &enrolled.nodes {
            nodes.insert(
                n.name.clone(),
                StatusNode {
                    name: n.name.clone(),
                    mode: "pull",
                    state: if n.revoked { "revoked" } else { "enrolled" },
                    step: None,
                    error: None,
                    last_report: Some(edgeferry_bundle::format::rfc3339_utc(n.enrolled)),
                    host: Some(n.client.split(':').next().unwrap_or("").to_string()),
                    version: None,
                    upgrade: None,
                },
            );
        }
        for r in pull::read_reports(site)? {
            let Some(n) = nodes
                .get_mut(&r.node)
                .filter(|n| n.mode == "pull" && n.state != "revoked")
            else {
                continue;
            };
            n.step = Some(r.step.clone());
            n.last_report = Some(r.ts.clone());
            if let Some(to) = &r.to {
                // An upgrade's reports, read as SSH mode reads its journal:
                // they set the version and the upgrade outcome; the state
                // stays the join's.
                let status = match r.status.as_str() {
                    "ok" => Status::Ok,
                    "failed" => Status::Failed,
                    _ => Status::Started,
                };
                let version = r
                    .message
                    .strip_prefix("version=")
                    .filter(|_| status == Status::Ok);
                if let Some(step) = Step::from_name(&r.step) {
                    if let Some(v) = version {
                        n.version = Some(v.to_string());
                    }
                    if let Some(outcome) = upgrade_outcome(step, status, version, to) {
                        n.upgrade = Some(outcome);
                    }
                }
                continue;
            }
            n.state = match (r.step.as_str(), r.status.as_str()) {
                ("done", "ok") => "joined",
                (_, "failed") => "failed",
                _ => "running",
            };
            n.error = (r.status == "failed").then(|| r.message.clone());
        }
    }
    Ok(nodes.into_values().collect())
}

/// What one upgrade event (a journal line, or a pull-mode report) says of
/// the node's last upgrade (`None`: no change); `version` is the one the
/// step saw.
fn upgrade_outcome(step: Step, status: Status, version: Option<&str>, to: &str) -> Option<String> {
    Some(match (step, status) {
        (Step::UpgradePreflight, Status::Ok) if version == Some(to) => "up to date".to_string(),
        (Step::UpgradePostcheck, Status::Ok) => format!("upgraded to {to}"),
        (Step::KeadmRollback, Status::Started) => "rolling back".to_string(),
        (Step::RollbackPostcheck, Status::Ok) => {
            format!("rolled back to {}", version.unwrap_or("the version before"))
        }
        (Step::KeadmRollback | Step::RollbackPostcheck, Status::Failed) => {
            "ROLLBACK FAILED".to_string()
        }
        (_, Status::Interrupted) => "interrupted".to_string(),
        (step, Status::Failed) => format!("failed at {} (to {to})", step.name()),
        // Pull-mode nodes do not connect: their first step is the preflight.
        (Step::Connect | Step::UpgradePreflight, Status::Started) => {
            format!("running (to {to})")
        }
        _ => return None,
    })
}

fn table(nodes: &[StatusNode]) -> String {
    let mut rows = vec![[
        "NODE",
        "MODE",
        "STATE",
        "VERSION",
        "UPGRADE",
        "STEP",
        "LAST REPORT",
        "ERROR",
    ]
    .map(String::from)];
    for n in nodes {
        rows.push([
            n.name.clone(),
            n.mode.to_string(),
            n.state.to_string(),
            n.version.clone().unwrap_or_else(|| "-".into()),
            n.upgrade.clone().unwrap_or_else(|| "-".into()),
            n.step.clone().unwrap_or_else(|| "-".into()),
            n.last_report.clone().unwrap_or_else(|| "-".into()),
            n.error.clone().unwrap_or_default(),
        ]);
    }
    let mut s = crate::printer::table(&rows);
    let joined = nodes.iter().filter(|n| n.state == "joined").count();
    let failed = nodes.iter().filter(|n| n.state == "failed").count();
    s.push_str(&format!(
        "\n{} node(s): {joined} joined, {failed} failed, {} other\n",
        nodes.len(),
        nodes.len() - joined - failed
    ));
    s
}

pub fn run(args: &StatusArgs, out: &Printer) -> Result<()> {
    if args.site_dir.is_none() && args.state_dirs.is_empty() {
        anyhow::bail!(
            "nothing to show: pass --site-dir (pull mode) and/or --state-dir (join journals)"
        );
    }
    loop {
        let nodes = collect(args)?;
        if out.json() {
            out.data(&output::Status { nodes: &nodes })?;
        } else {
            if args.watch && out.stdout_is_terminal() {
                out.text("\x1b[2J\x1b[H");
            }
            out.text(&table(&nodes));
        }
        if !args.watch {
            return Ok(());
        }
        std::thread::sleep(std::time::Duration::from_secs(2));
    }
}
