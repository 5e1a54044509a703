//! The sample's stand-in `keadm upgrade edge`, `backup edge` and
//! `rollback edge` on a real sshd test host: joined at v1.22 with
//! `edgeferry join` through the mirror, then upgraded to v1.23.1 with the
//! v1.23.1 keadm from the same store, as an operator on the node would;
//! and the NodeUpgradeJob renderer against the kept CRD schema.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use edgeferry_bundle::format::Arch;
use edgeferry_tests::crd::validate_nodeupgradejob;
use edgeferry_tests::hosts::TestHosts;
use edgeferry_tests::{edgeferry, keygen, run, run_ok, sample_bundle, Served};
use serde_json::Value;

const OLD: &str = "v1.22.0";
const NEW: &str = "v1.23.1";
/// Where the test puts the v1.23.1 keadm on the node (a private dir).
const KEADM_DIR: &str = "/var/lib/edgeferry/upgrade-standin";
const KEADM: &str = "/var/lib/edgeferry/upgrade-standin/keadm";

struct Ran {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

fn on(hosts: &TestHosts, script: &str) -> Ran {
    let out = hosts.run_on(0, script).unwrap();
    let ran = Ran {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    eprintln!(
        "--- {script}: exit {:?}\n{}{}",
        ran.code, ran.stdout, ran.stderr
    );
    ran
}

/// `edgecore --version` on the node, and whether edgecore runs.
fn edgecore(hosts: &TestHosts) -> (String, bool) {
    let version = on(hosts, "/usr/local/bin/edgecore --version").stdout;
    let running = !on(hosts, "pidof edgecore || true").stdout.trim().is_empty();
    (version, running)
}

fn wait_for(hosts: &TestHosts, what: &str, want_running: bool, version: &str) {
    let start = Instant::now();
    loop {
        let (v, running) = edgecore(hosts);
        if running == want_running && v.starts_with(&format!("KubeEdge {version} ")) {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "{what}: edgecore {v:?}, running {running}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The digest of the v1.23.1 installation-package manifest for amd64, as
/// the mirror serves it from the signed store.
fn amd64_digest(mirror: &str) -> String {
    let out = Command::new("curl")
        .args(["-fsS", "--noproxy", "*", "-H"])
        .arg("Accept: application/vnd.oci.image.index.v1+json")
        .arg(format!(
            "http://{mirror}/v2/kubeedge/installation-package/manifests/{NEW}?ns=docker.io"
        ))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let index: Value = serde_json::from_slice(&out.stdout).unwrap();
    index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["platform"]["architecture"] == "amd64")
        .unwrap()["digest"]
        .as_str()
        .unwrap()
        .to_string()
}

fn load(bundle: &Path, public: &Path, store: &Path) {
    run_ok(
        edgeferry()
            .arg("load")
            .arg(bundle)
            .arg("--key")
            .arg(public)
            .arg("--store")
            .arg(store),
    );
}

#[test]
fn standin_backup_upgrade_and_rollback_on_a_joined_host() {
    let tmp = tempfile::tempdir().unwrap();
    let (key, public) = keygen(tmp.path());
    let store = tmp.path().join("store");
    for (version, epoch) in [(OLD, 1_700_000_000), (NEW, 1_700_000_100)] {
        let bundle = sample_bundle("amd64", version, &key, &tmp.path().join("out"), epoch);
        load(&bundle, &public, &store);
    }
    let hosts = TestHosts::create(1).unwrap();
    let mirror = Served::start_on(&store, hosts.control_ip(), std::iter::empty::<&str>());

    // Joined at v1.22 by edgeferry, as a site is today.
    let inventory = tmp.path().join("site.yaml");
    std::fs::write(
        &inventory,
        format!(
            "cloudcore: {}\ntoken: {{env: EF_TEST_TOKEN}}\nkubeedge_version: {OLD}\n\
             ssh: {{user: root, key: {}, known_hosts: {}}}\nnodes:\n  - host: {}\n    name: edge-up\n",
            hosts.cloudcore(),
            hosts.client_key().display(),
            hosts.known_hosts().display(),
            hosts.host(0).ip
        ),
    )
    .unwrap();
    let joined = run(edgeferry()
        .arg("join")
        .arg("-c")
        .arg(&inventory)
        .arg("--store")
        .arg(&store)
        .arg("--mirror")
        .arg(&mirror.addr)
        .arg("--state-dir")
        .arg(tmp.path().join("state"))
        .env("EF_TEST_TOKEN", hosts.token())
        .stdin(std::process::Stdio::null()));
    assert_eq!(joined.code, Some(0), "{}\n{}", joined.stdout, joined.stderr);
    wait_for(&hosts, "joined", true, OLD);

    // The v1.23.1 keadm from the mirror (edgeferry's upgrade fetches and
    // checks it the same way; here only the stand-in is under test).
    let fetched = on(
        &hosts,
        &format!(
            "set -e; d={KEADM_DIR}; mkdir -p $d; \
             curl -fsS --noproxy '*' -o $d/k.tgz http://{m}/files/keadm-{NEW}-linux-amd64.tar.gz; \
             tar -xzf $d/k.tgz -C $d; ln -sf $d/keadm-{NEW}-linux-amd64/keadm/keadm {KEADM}; \
             {KEADM} version",
            m = mirror.addr
        ),
    );
    assert_eq!(fetched.code, Some(0));
    assert!(fetched.stdout.contains(&format!("GitVersion:\"{NEW}\"")));

    // backup edge: /etc/kubeedge/backup/<current version>/.
    let ran = on(&hosts, &format!("{KEADM} backup edge"));
    assert_eq!(ran.code, Some(0), "{}", ran.stderr);
    let backup = hosts.private(0, "/etc/kubeedge").join("backup").join(OLD);
    assert_eq!(
        std::fs::read(backup.join("edgecore")).unwrap(),
        std::fs::read(hosts.private(0, "/usr/local/bin").join("edgecore")).unwrap()
    );
    assert!(backup.join("edgecore.yaml").is_file());

    // An unknown flag: cobra's refusal, nothing done.
    let ran = on(&hosts, &format!("{KEADM} upgrade edge --to-version {NEW}"));
    assert_eq!(ran.code, Some(1));
    assert_eq!(ran.stderr, "Error: unknown flag: --to-version\n");

    // A digest other than the pulled image's: refused, v1.22 still runs.
    let right = amd64_digest(&mirror.addr);
    let wrong = format!("sha256:{}", "0".repeat(64));
    let upgrade = |digest: &str| {
        format!(
            "{KEADM} upgrade edge --toVersion {NEW} --image kubeedge/installation-package \
             --image-digest {digest} --force"
        )
    };
    let ran = on(&hosts, &upgrade(&wrong));
    assert_eq!(ran.code, Some(1));
    assert_eq!(
        ran.stderr.lines().last().unwrap(),
        format!("Error: invalid installation-package image digest value: {right}")
    );
    wait_for(&hosts, "after the refused digest", true, OLD);

    // The right digest: v1.23.1 runs.
    let ran = on(&hosts, &upgrade(&right));
    assert_eq!(ran.code, Some(0), "{}", ran.stderr);
    wait_for(&hosts, "upgraded", true, NEW);

    // crash: keadm succeeds, the new edgecore does not run.
    hosts.set_upgrade_fault(0, Some("crash"));
    let ran = on(&hosts, &upgrade(&right));
    assert_eq!(ran.code, Some(0), "{}", ran.stderr);
    wait_for(&hosts, "crashed", false, NEW);
    hosts.set_upgrade_fault(0, None);

    // rollback edge, no flags: the newest backup, v1.22, runs again.
    let ran = on(&hosts, &format!("{KEADM} rollback edge"));
    assert_eq!(ran.code, Some(0), "{}", ran.stderr);
    wait_for(&hosts, "rolled back", true, OLD);
}

/// What `edgeferry upgrade --emit-nodeupgradejob` prints is rendered here;
/// it validates against the CRD schema kept in manifests/crds/, and the
/// validator refuses what the API server would.
#[test]
fn nodeupgradejob_validates_against_the_kept_crd_schema() {
    let a = format!("sha256:{}", "a".repeat(64));
    let b = format!("sha256:{}", "b".repeat(64));
    let yaml = edgeferry::nodeupgradejob::render(
        &["edge-1", "edge-2.site"],
        NEW,
        "10.0.0.5:5000/kubeedge/installation-package",
        &[(Arch::Amd64, &a), (Arch::Arm64, &b)],
    )
    .unwrap();
    assert_eq!(validate_nodeupgradejob(&yaml), Ok(()));

    let unknown = yaml.replace("  version: ", "  versions: x\n  version: ");
    let err = validate_nodeupgradejob(&unknown).unwrap_err();
    assert!(
        err.contains("spec: Additional properties are not allowed ('versions' was unexpected)"),
        "{err}"
    );
    let wrong_type = yaml.replace(
        "  nodeNames:\n  - edge-1\n  - edge-2.site\n",
        "  nodeNames: edge-1\n",
    );
    assert_ne!(wrong_type, yaml);
    let err = validate_nodeupgradejob(&wrong_type).unwrap_err();
    assert!(
        err.contains("spec/nodeNames: 'edge-1' is not of type 'array'"),
        "{err}"
    );
}
