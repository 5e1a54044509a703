//! The journal: one JSON line per step event, appended and synced before
//! the step's effect is relied on. `--resume` reads it back. A line is
//! written with one `write` and a torn last line (power cut) is ignored,
//! so the journal is consistent whenever the process stops.
//!
//! Syncs are shared (group commit): a `record` returns once a sync that
//! began after its line was written has finished, and one sync covers
//! every line written before it began. At 1,000 nodes a join writes some
//! 12,000 lines; one sync each (a few ms on a VM's disk) would serialise
//! the whole fan-out behind the disk. On the join's multi-threaded
//! runtime the wait tells tokio the thread blocks (`block_in_place`), so
//! the other nodes' tasks run meanwhile.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::node::steps::Step;

pub const JOURNAL_FILE: &str = "journal.jsonl";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Started,
    Ok,
    Failed,
    Interrupted,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Event {
    pub ts: String,
    pub run: String,
    pub node: String,
    pub step: Step,
    pub status: Status,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arch: Option<String>,
    /// The KubeEdge version the node reported or runs after this step
    /// (upgrade preflight and postchecks, the join's postcheck).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// `upgrade` events: the target version. Join and reset events have
    /// none, so each keeps its own history in the same journal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
}

pub struct Journal {
    path: PathBuf,
    /// The appending handle and how many lines it has written.
    file: Mutex<(File, u64)>,
    /// Another handle on the same file, synced without holding `file`, and
    /// how many lines the last finished sync covered. Held while syncing:
    /// one sync at a time, the next waiter usually finds its line covered.
    synced: Mutex<(File, u64)>,
    /// Syncs done, for tests.
    syncs: AtomicU64,
}

impl Journal {
    pub fn open(state_dir: &Path) -> Result<Journal> {
        fs::create_dir_all(state_dir)
            .with_context(|| format!("cannot create state directory {}", state_dir.display()))?;
        let path = state_dir.join(JOURNAL_FILE);
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .with_context(|| format!("cannot open journal {}", path.display()))?;
        let sync = file
            .try_clone()
            .with_context(|| format!("cannot open journal {}", path.display()))?;
        Ok(Journal {
            path,
            file: Mutex::new((file, 0)),
            synced: Mutex::new((sync, 0)),
            syncs: AtomicU64::new(0),
        })
    }

    /// Appends one event and waits for it to reach the disk: a step that
    /// changed a node is only "ok" once the journal says so durably.
    pub fn record(&self, event: &Event) -> Result<()> {
        let mut line = serde_json::to_vec(event).expect("event serialises");
        line.push(b'\n');
        let seq = {
            let mut file = self.file.lock().expect("journal lock");
            file.0
                .write_all(&line)
                .with_context(|| format!("cannot write journal {}", self.path.display()))?;
            file.1 += 1;
            file.1
        };
        let wait = || self.sync_through(seq);
        let multi_thread = tokio::runtime::Handle::try_current()
            .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
        if multi_thread {
            tokio::task::block_in_place(wait)
        } else {
            wait()
        }
    }

    /// Returns once line `seq` (1-based) is on the disk: covered by a sync
    /// that finished already, or by one this call makes, covering every
    /// line written so far.
    fn sync_through(&self, seq: u64) -> Result<()> {
        let mut synced = self.synced.lock().expect("journal sync lock");
        if synced.1 >= seq {
            return Ok(());
        }
        let through = self.file.lock().expect("journal lock").1;
        synced
            .0
            .sync_data()
            .with_context(|| format!("cannot sync journal {}", self.path.display()))?;
        self.syncs.fetch_add(1, Ordering::Relaxed);
        synced.1 = through;
        Ok(())
    }
}

pub fn read(state_dir: &Path) -> Result<Vec<Event>> {
    let path = state_dir.join(JOURNAL_FILE);
    let text = match fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    let mut events = Vec::new();
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    for (i, line) in lines.iter().enumerate() {
        if !line.ends_with('\n') {
            // A torn final write; the step it described did not complete.
            break;
        }
        let event: Event = serde_json::from_str(line).with_context(|| {
            format!(
                "{} line {} is damaged: move the file away to start over",
                path.display(),
                i + 1
            )
        })?;
        events.push(event);
    }
    Ok(events)
}

/// What the journal says about one node.
#[derive(Clone, Debug, Default)]
pub struct History {
    /// Steps finished ok since the last reset (connect is never counted:
    /// every run must connect again).
    pub done: BTreeSet<Step>,
    /// The step that failed or was interrupted last, if the node is not done.
    pub failed_step: Option<Step>,
    pub last_error: Option<String>,
    pub arch: Option<String>,
    /// `upgrade`: the version the preflight saw before the upgrade.
    pub version_before: Option<String>,
}

impl History {
    pub fn joined(&self) -> bool {
        self.done.contains(&Step::Postcheck)
    }

    pub fn failed(&self) -> bool {
        self.failed_step.is_some() && !self.joined()
    }

    /// `upgrade`: done for this target (upgraded, or found at it).
    pub fn upgraded(&self, to: &str) -> bool {
        self.done.contains(&Step::UpgradePostcheck) || self.version_before.as_deref() == Some(to)
    }
}

/// The join and reset histories (events without an upgrade target).
pub fn histories(events: &[Event]) -> BTreeMap<String, History> {
    histories_for(events, None)
}

/// The histories of the events toward `to` (`None`: join and reset).
pub fn histories_for(events: &[Event], to: Option<&str>) -> BTreeMap<String, History> {
    let mut map: BTreeMap<String, History> = BTreeMap::new();
    for e in events.iter().filter(|e| e.to.as_deref() == to) {
        let h = map.entry(e.node.clone()).or_default();
        if let Some(a) = &e.arch {
            h.arch = Some(a.clone());
        }
        match (e.step, e.status) {
            // A reset undoes the join: the next join starts from scratch.
            // A reset undoes the join; a rollback undoes the upgrade, so
            // the next upgrade starts from the preflight again.
            (Step::KeadmReset | Step::KeadmRollback | Step::RollbackPostcheck, Status::Ok) => {
                let arch = h.arch.take();
                *h = History {
                    arch,
                    ..History::default()
                };
            }
            (Step::UpgradePreflight, Status::Ok) => {
                h.done.insert(Step::UpgradePreflight);
                h.version_before = e.version.clone();
                if h.failed_step == Some(Step::UpgradePreflight) {
                    h.failed_step = None;
                    h.last_error = None;
                }
            }
            (Step::Connect, Status::Ok) => {}
            (step, Status::Ok) => {
                h.done.insert(step);
                if h.failed_step == Some(step) {
                    h.failed_step = None;
                    h.last_error = None;
                }
            }
            (step, Status::Failed | Status::Interrupted) => {
                h.done.remove(&step);
                h.failed_step = Some(step);
                h.last_error = e.error.clone();
            }
            (_, Status::Started) => {}
        }
    }
    map
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(node: &str, step: Step, status: Status) -> Event {
        Event {
            ts: String::new(),
            run: "r".into(),
            node: node.into(),
            step,
            status,
            ms: None,
            error: None,
            kind: None,
            arch: None,
            version: None,
            to: None,
        }
    }

    #[test]
    fn resume_state_follows_the_events() {
        let events = vec![
            ev("a", Step::Connect, Status::Ok),
            ev("a", Step::Preflight, Status::Ok),
            ev("a", Step::KeadmJoin, Status::Failed),
            ev("b", Step::Postcheck, Status::Ok),
            ev("c", Step::Preflight, Status::Ok),
            ev("c", Step::KeadmReset, Status::Ok),
        ];
        let h = histories(&events);
        assert_eq!(h["a"].failed_step, Some(Step::KeadmJoin));
        assert!(h["a"].failed() && !h["a"].joined());
        assert!(h["b"].joined());
        assert!(h["c"].done.is_empty());
    }

    /// Lines written while a sync runs share the next one: two records
    /// waiting behind a held sync lock cost one sync, and both are read
    /// back whole.
    #[test]
    fn records_waiting_for_a_sync_share_the_next() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::open(dir.path()).unwrap();
        j.record(&ev("a", Step::Connect, Status::Ok)).unwrap();
        assert_eq!(j.syncs.load(Ordering::Relaxed), 1);
        std::thread::scope(|s| {
            let held = j.synced.lock().unwrap();
            let waiters: Vec<_> = ["b", "c"]
                .into_iter()
                .map(|n| {
                    let j = &j;
                    s.spawn(move || j.record(&ev(n, Step::Preflight, Status::Ok)))
                })
                .collect();
            while j.file.lock().unwrap().1 < 3 {
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            drop(held);
            for w in waiters {
                w.join().unwrap().unwrap();
            }
        });
        assert_eq!(j.syncs.load(Ordering::Relaxed), 2);
        let nodes: BTreeSet<String> = read(dir.path())
            .unwrap()
            .into_iter()
            .map(|e| e.node)
            .collect();
        assert_eq!(nodes, BTreeSet::from(["a", "b", "c"].map(String::from)));
    }

    /// On the join's multi-threaded runtime a record blocks in place (the
    /// other tasks move on), on a current-thread runtime and outside one
    /// it simply blocks: all three land.
    #[test]
    fn records_from_any_runtime_land() {
        let dir = tempfile::tempdir().unwrap();
        let j = std::sync::Arc::new(Journal::open(dir.path()).unwrap());
        let multi = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .build()
            .unwrap();
        let j2 = j.clone();
        multi
            .block_on(
                multi.spawn(async move { j2.record(&ev("multi", Step::Connect, Status::Ok)) }),
            )
            .unwrap()
            .unwrap();
        let current = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        current
            .block_on(async { j.record(&ev("current", Step::Connect, Status::Ok)) })
            .unwrap();
        j.record(&ev("none", Step::Connect, Status::Ok)).unwrap();
        let nodes: Vec<String> = read(dir.path())
            .unwrap()
            .into_iter()
            .map(|e| e.node)
            .collect();
        assert_eq!(nodes, ["multi", "current", "none"]);
    }

    #[test]
    fn torn_last_line_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::open(dir.path()).unwrap();
        j.record(&ev("a", Step::Preflight, Status::Ok)).unwrap();
        let mut f = OpenOptions::new()
            .append(true)
            .open(dir.path().join(JOURNAL_FILE))
            .unwrap();
        f.write_all(b"{\"ts\":\"x\",\"ru").unwrap();
        assert_eq!(read(dir.path()).unwrap().len(), 1);
    }
}
