//! `edgeferry upgrade` against real sshd test hosts joined at v1.22 with the
//! sample bundle, the v1.23.1 sample bundle loaded into the same store, a
//! real `edgeferry serve`, and the sample's stand-in keadm and edgecore (the
//! only stand-ins: KubeEdge itself; docs/standins.md).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use edgeferry_tests::hosts::TestHosts;
use edgeferry_tests::{edgeferry, keygen, run, run_ok, sample_bundle, Ran, Reaped, Served};
use serde_json::Value;

const FROM: &str = "v1.22.1";
const TO: &str = "v1.23.1";

/// Hosts joined at [`FROM`], a store holding [`FROM`] and [`TO`], a mirror.
struct Fleet {
    tmp: tempfile::TempDir,
    store: PathBuf,
    hosts: TestHosts,
    mirror: Served,
    inventory: PathBuf,
    state: PathBuf,
}

impl Fleet {
    /// `count` hosts named n0, n1, …, joined at [`FROM`] (checked).
    fn joined(count: usize) -> Fleet {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        let (key, public) = keygen(&dir);
        let store = dir.join("store");
        let load =
            |version: &str, epoch: u64| load_sample(&dir, &key, &public, &store, version, epoch);
        load(FROM, 1_700_000_000);
        let hosts = TestHosts::create(count).unwrap();
        let mirror = Served::start_on(&store, hosts.control_ip(), std::iter::empty::<&str>());
        let inventory = dir.join("site.yaml");
        let mut nodes = String::new();
        for i in 0..count {
            nodes.push_str(&format!("  - host: {}\n    name: n{i}\n", hosts.host(i).ip));
        }
        std::fs::write(
            &inventory,
            format!(
                "cloudcore: {}\ntoken: {{env: EF_TEST_TOKEN}}\nkubeedge_version: {FROM}\n\
                 ssh: {{user: root, key: {}, known_hosts: {}}}\nnodes:\n{nodes}",
                hosts.cloudcore(),
                hosts.client_key().display(),
                hosts.known_hosts().display(),
            ),
        )
        .unwrap();
        let fleet = Fleet {
            state: dir.join("state"),
            tmp,
            store: store.clone(),
            hosts,
            mirror,
            inventory,
        };
        let joined = fleet.edgeferry("join", &["--settle", "0", "--parallel", "8"]);
        assert_eq!(joined.code, Some(0), "the join at {FROM} succeeds");
        load(TO, 1_700_000_100);
        fleet.wait_served(&fleet.mirror);
        fleet
    }

    /// Waits until `mirror` serves the store with [`TO`] (it looks for a
    /// swapped-in store every 2 s).
    fn wait_served(&self, mirror: &Served) {
        let url = mirror.url(&format!("/files/keadm-{TO}-linux-amd64.tar.gz"));
        edgeferry_tests::wait_for(
            "the mirror serves the new bundle",
            Duration::from_secs(20),
            || {
                std::process::Command::new("curl")
                    .args(["-fs", "-o", "/dev/null", "--head", &url])
                    .status()
                    .is_ok_and(|s| s.success())
            },
        );
    }

    fn command(&self, command: &str, extra: &[&str]) -> std::process::Command {
        let mut cmd = edgeferry();
        cmd.arg(command)
            .arg("-c")
            .arg(&self.inventory)
            .arg("--store")
            .arg(&self.store)
            .arg("--mirror")
            .arg(&self.mirror.addr)
            .arg("--state-dir")
            .arg(&self.state)
            .args(extra)
            .env("EF_TEST_TOKEN", self.hosts.token())
            .stdin(std::process::Stdio::null());
        cmd
    }

    fn edgeferry(&self, command: &str, extra: &[&str]) -> Ran {
        let ran = run(&mut self.command(command, extra));
        eprintln!(
            "--- edgeferry {command} {extra:?}: exit {:?}\n{}\n{}",
            ran.code, ran.stdout, ran.stderr
        );
        ran
    }

    /// `edgeferry upgrade --to TO --settle 0` plus `extra`.
    fn upgrade(&self, extra: &[&str]) -> Ran {
        let mut args = vec!["--to", TO, "--settle", "0"];
        args.extend_from_slice(extra);
        self.edgeferry("upgrade", &args)
    }

    /// The version host `i`'s edgecore reports, and whether it runs.
    fn version_on(&self, i: usize) -> (String, bool) {
        let out = self
            .hosts
            .run_on(
                i,
                "edgecore --version | sed -n 's/^KubeEdge \\(v[^ ]*\\).*/\\1/p'; pidof edgecore >/dev/null && echo running",
            )
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let mut lines = text.lines();
        let version = lines.next().unwrap_or("").to_string();
        (version, lines.next() == Some("running"))
    }

    fn report(&self) -> Value {
        serde_json::from_slice(&std::fs::read(self.state.join("report.json")).unwrap()).unwrap()
    }

    fn journal(&self) -> Vec<Value> {
        std::fs::read_to_string(self.state.join("journal.jsonl"))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// The upgrade's journal events (those with a target).
    fn upgrade_events(&self) -> Vec<Value> {
        self.journal()
            .into_iter()
            .filter(|e| e["to"] == TO)
            .collect()
    }

    fn status(&self) -> BTreeMap<String, Value> {
        let ran = run_ok(
            edgeferry()
                .args(["status", "--json", "--state-dir"])
                .arg(&self.state),
        );
        let v: Value = serde_json::from_str(&ran.stdout).unwrap();
        v["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| (n["name"].as_str().unwrap().to_string(), n.clone()))
            .collect()
    }

    fn path(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }
}

/// Builds the sample bundle of `version` and loads it into `store`.
fn load_sample(dir: &Path, key: &Path, public: &Path, store: &Path, version: &str, epoch: u64) {
    let bundle = sample_bundle("amd64", version, key, &dir.join("out"), epoch);
    run_ok(
        edgeferry()
            .arg("load")
            .arg(&bundle)
            .arg("--key")
            .arg(public)
            .arg("--store")
            .arg(store),
    );
}

fn node<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"] == name)
        .unwrap_or_else(|| panic!("{name} not in report"))
}

/// Six hosts at v1.22, one whose upgrade fails: five upgrade, that one is
/// rolled back and runs v1.22 again, exit 2; report and status say so. A
/// rerun over the five does nothing; a rollback that fails too is exit 4.
#[test]
fn fleet_upgrades_and_a_failed_node_is_rolled_back() {
    let f = Fleet::joined(6);
    f.hosts.set_upgrade_fault(5, Some("fail"));
    let ran = f.upgrade(&["--parallel", "6"]);
    assert_eq!(ran.code, Some(2), "one node failed and was rolled back");
    let r = f.report();
    assert_eq!(r["action"], "upgrade");
    assert_eq!(r["kubeedge_version"], TO);
    assert_eq!(r["counts"]["upgraded"], 5);
    assert_eq!(r["counts"]["rolled_back"], 1);
    assert_eq!(r["exit_code"], 2);
    for i in 0..5 {
        let n = node(&r, &format!("n{i}"));
        assert_eq!(n["status"], "upgraded", "{n}");
        assert_eq!(n["version_before"], FROM);
        assert_eq!(n["version"], TO);
        assert_eq!(f.version_on(i), (TO.to_string(), true), "host {i}");
    }
    let n5 = node(&r, "n5");
    assert_eq!(n5["status"], "rolled_back", "{n5}");
    assert_eq!(n5["failed_step"], "keadm_upgrade");
    assert_eq!(n5["version"], FROM);
    assert!(n5["rollback_error"].is_null());
    assert!(
        n5["error"].as_str().unwrap().starts_with(&format!(
            "failed, rolled back to {FROM}: keadm upgrade edge exited 1"
        )),
        "{n5}"
    );
    let steps: Vec<&str> = n5["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["step"].as_str().unwrap())
        .collect();
    assert_eq!(
        steps[steps.len() - 3..],
        ["keadm_upgrade", "keadm_rollback", "rollback_postcheck"]
    );
    assert_eq!(f.version_on(5), (FROM.to_string(), true));
    assert!(ran.stdout.contains("FAILED, rolled back"), "{}", ran.stdout);

    let status = f.status();
    for i in 0..5 {
        let s = &status[&format!("n{i}")];
        assert_eq!(s["version"], TO, "{s}");
        assert_eq!(s["upgrade"], format!("upgraded to {TO}"));
    }
    assert_eq!(status["n5"]["version"], FROM);
    assert_eq!(status["n5"]["upgrade"], format!("rolled back to {FROM}"));
    let table = run_ok(edgeferry().args(["status", "--state-dir"]).arg(&f.state));
    assert!(table.stdout.contains("VERSION") && table.stdout.contains("UPGRADE"));

    // A rerun over the upgraded five changes nothing: each is up to date.
    let before = f.upgrade_events().len();
    let rerun = f.upgrade(&["--limit", "n0,n1,n2,n3,n4"]);
    assert_eq!(rerun.code, Some(0));
    let r = f.report();
    assert_eq!(r["counts"]["up_to_date"], 5, "{r}");
    let rerun_steps: Vec<String> = f.upgrade_events()[before..]
        .iter()
        .map(|e| e["step"].as_str().unwrap().to_string())
        .collect();
    assert!(
        rerun_steps
            .iter()
            .all(|s| s == "connect" || s == "upgrade_preflight"),
        "a rerun only looks: {rerun_steps:?}"
    );

    // The upgrade and its rollback both fail: exit 4, loud in the table.
    f.hosts.set_upgrade_fault(5, Some("rollback-fail"));
    let ran = f.upgrade(&["--limit", "n5"]);
    assert_eq!(ran.code, Some(4));
    let n5 = node(&f.report(), "n5").clone();
    assert_eq!(n5["status"], "rollback_failed", "{n5}");
    assert!(
        n5["rollback_error"]
            .as_str()
            .unwrap()
            .starts_with("keadm rollback edge exited 1"),
        "{n5}"
    );
    assert!(ran.stdout.contains("ROLLBACK FAILED"), "{}", ran.stdout);
    assert_eq!(f.status()["n5"]["upgrade"], "ROLLBACK FAILED");
}

/// A canary that fails stops the run before any other node is touched;
/// and an installation-package whose digest is not the store's is refused
/// by keadm's --image-digest check.
#[test]
fn failing_canary_stops_the_run_and_a_wrong_digest_is_refused() {
    let f = Fleet::joined(3);
    f.hosts.set_upgrade_fault(0, Some("crash"));
    let dry = f.upgrade(&["--canary", "1", "--dry-run"]);
    assert_eq!(dry.code, Some(0));
    assert!(
        dry.stdout
            .contains("wave 1 (canary: a failure stops the run here): n0\n  wave 2: n1, n2\n"),
        "{}",
        dry.stdout
    );
    // The same nodes, image and digest as a NodeUpgradeJob, nothing touched.
    let events = std::fs::read(f.state.join("journal.jsonl")).unwrap();
    let emitted = f.upgrade(&["--emit-nodeupgradejob"]);
    assert_eq!(emitted.code, Some(0));
    edgeferry_tests::crd::validate_nodeupgradejob(&emitted.stdout)
        .unwrap_or_else(|e| panic!("{e}\n{}", emitted.stdout));
    let state: Value =
        serde_json::from_slice(&std::fs::read(f.store.join("state.json")).unwrap()).unwrap();
    let digest = state["images"][format!("docker.io/kubeedge/installation-package:{TO}")]
        ["platforms"]["linux/amd64"]
        .as_str()
        .unwrap()
        .to_string();
    for want in [
        "n0",
        "n1",
        "n2",
        TO,
        digest.as_str(),
        "installation-package",
    ] {
        assert!(emitted.stdout.contains(want), "{want}:\n{}", emitted.stdout);
    }
    assert_eq!(
        std::fs::read(f.state.join("journal.jsonl")).unwrap(),
        events,
        "no node was touched"
    );

    let ran = f.upgrade(&["--canary", "1"]);
    assert_eq!(ran.code, Some(2));
    let r = f.report();
    let n0 = node(&r, "n0");
    assert_eq!(n0["status"], "rolled_back", "{n0}");
    assert_eq!(n0["failed_step"], "upgrade_postcheck");
    for name in ["n1", "n2"] {
        let n = node(&r, name);
        assert_eq!(n["status"], "not_started", "{n}");
        assert_eq!(n["error"], "not started: a canary failed");
    }
    let touched: Vec<String> = f
        .upgrade_events()
        .iter()
        .map(|e| e["node"].as_str().unwrap().to_string())
        .collect();
    assert!(touched.iter().all(|n| n == "n0"), "{touched:?}");
    assert_eq!(f.version_on(1), (FROM.to_string(), true));
    assert_eq!(f.version_on(0), (FROM.to_string(), true));

    // The store the plan reads says the installation-package has another
    // digest (v1.22.1's) than the image the mirror really serves: keadm
    // pulls the real image and refuses it by that digest.
    f.hosts.set_upgrade_fault(0, None);
    let rigged = f.path("rigged-store");
    run_ok(
        std::process::Command::new("cp")
            .arg("-a")
            .arg(&f.store)
            .arg(&rigged),
    );
    let state_path = rigged.join("state.json");
    let mut state: Value = serde_json::from_slice(&std::fs::read(&state_path).unwrap()).unwrap();
    let image = |v: &str| format!("docker.io/kubeedge/installation-package:{v}");
    let old = state["images"][image(FROM)]["platforms"]["linux/amd64"].clone();
    let real = state["images"][image(TO)]["platforms"]["linux/amd64"].clone();
    assert_ne!(old, real);
    state["images"][image(TO)]["platforms"]["linux/amd64"] = old.clone();
    std::fs::write(&state_path, serde_json::to_vec_pretty(&state).unwrap()).unwrap();
    let mut cmd = edgeferry();
    cmd.args(["upgrade", "-c"])
        .arg(&f.inventory)
        .arg("--store")
        .arg(&rigged)
        .arg("--mirror")
        .arg(&f.mirror.addr)
        .arg("--state-dir")
        .arg(&f.state)
        .args(["--to", TO, "--settle", "0", "--limit", "n1"])
        .env("EF_TEST_TOKEN", f.hosts.token())
        .stdin(std::process::Stdio::null());
    let ran = run(&mut cmd);
    eprintln!(
        "--- upgrade with the rigged store: {:?}\n{}\n{}",
        ran.code, ran.stdout, ran.stderr
    );
    let n1 = node(&f.report(), "n1").clone();
    assert_eq!(ran.code, Some(2), "{n1}");
    assert_eq!(n1["status"], "rolled_back", "{n1}");
    assert_eq!(n1["failed_step"], "keadm_upgrade", "{n1}");
    assert!(
        n1["error"]
            .as_str()
            .unwrap()
            .contains("invalid installation-package image digest value"),
        "{n1}"
    );
    assert_eq!(f.version_on(1), (FROM.to_string(), true));
}

/// Ctrl-C while nodes are inside keadm upgrade: exit 130, then `--resume`
/// finishes every node and no step is done twice.
#[test]
fn interrupted_upgrade_resumes_without_doing_anything_twice() {
    let f = Fleet::joined(2);
    for i in 0..2 {
        f.hosts.set_upgrade_seconds(i, Some(4));
    }
    let mut child = Reaped::spawn(
        f.command("upgrade", &["--to", TO, "--settle", "0"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null()),
    );
    edgeferry_tests::wait_for(
        "both nodes inside keadm upgrade",
        Duration::from_secs(90),
        || {
            let text = std::fs::read_to_string(f.state.join("journal.jsonl")).unwrap_or_default();
            text.matches("\"step\":\"keadm_upgrade\",\"status\":\"started\"")
                .count()
                == 2
        },
    );
    std::thread::sleep(Duration::from_millis(500));
    // SAFETY: kill(2) takes no pointers and has no memory-safety
    // preconditions. `child` is ours and not yet reaped (Reaped waits only
    // below or on drop), so its pid cannot have been reused.
    unsafe { libc::kill(child.pid() as libc::pid_t, libc::SIGINT) };
    let status = child
        .wait_timeout(Duration::from_secs(30))
        .expect("upgrade exits promptly after Ctrl-C");
    assert_eq!(status.code(), Some(130));
    let r = f.report();
    assert_eq!(r["counts"]["interrupted"], 2, "{r}");
    assert!(
        f.upgrade_events()
            .iter()
            .all(|e| e["step"] != "keadm_rollback"),
        "an interrupted step is not rolled back"
    );
    for i in 0..2 {
        f.hosts.set_upgrade_seconds(i, None);
    }
    // Let the interrupted keadm on each node finish or die before resuming.
    std::thread::sleep(Duration::from_secs(5));
    let resumed = f.upgrade(&["--resume"]);
    assert_eq!(resumed.code, Some(0));
    assert_eq!(f.report()["counts"]["upgraded"], 2);
    for i in 0..2 {
        assert_eq!(f.version_on(i), (TO.to_string(), true), "host {i}");
    }
    let mut oks: BTreeMap<(String, String), usize> = BTreeMap::new();
    for e in f.upgrade_events() {
        if e["status"] == "ok" && e["step"] != "connect" {
            *oks.entry((
                e["node"].as_str().unwrap().to_string(),
                e["step"].as_str().unwrap().to_string(),
            ))
            .or_default() += 1;
        }
    }
    assert_eq!(oks.len(), 2 * 6, "{oks:?}");
    assert!(oks.values().all(|n| *n == 1), "nothing done twice: {oks:?}");
}
