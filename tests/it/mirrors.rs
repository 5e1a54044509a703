//! Several mirrors per site (`--mirror` ×N, `serve --peer-mirror`): a real
//! containerd pulls through our hosts.toml when the first listed mirror is
//! down, and a join of real sshd hosts completes when one of two mirrors
//! on the same store is killed mid-run.

use std::ffi::OsStr;
use std::path::Path;
use std::time::{Duration, Instant};

use edgeferry_tests::hosts::TestHosts;
use edgeferry_tests::{
    access_log, edgeferry, loaded_sample_store, printed_hosts_files, run, run_ok, wait_for, Reaped,
    Served,
};
use serde_json::Value;

use crate::join::{journal, report, write, VERSION};
use crate::serve::Containerd;

const PACKAGE: &str = "docker.io/kubeedge/installation-package:v1.23.1";

/// `METHOD path` of each request in an access log answered 200.
fn served_paths(log: &Path) -> Vec<String> {
    access_log(&std::fs::read_to_string(log).unwrap_or_default())
        .iter()
        .filter(|e| e["status"] == 200)
        .map(|e| {
            format!(
                "{} {}",
                e["method"].as_str().unwrap(),
                e["path"].as_str().unwrap()
            )
        })
        .collect()
}

#[test]
fn containerd_pulls_from_the_second_mirror_when_the_first_is_down() {
    let tmp = tempfile::tempdir().unwrap();
    let store = loaded_sample_store(tmp.path(), "amd64", VERSION);
    let log_b = tmp.path().join("b.jsonl");
    let b = Served::start_with(&store, [OsStr::new("--access-log"), log_b.as_os_str()]);
    let mut a = Served::start_with(&store, ["--peer-mirror", b.addr.as_str()]);

    // A's banner: A first, then its peer B, in every upstream registry's
    // file; each mirror's own address names only itself.
    let printed = printed_hosts_files(&a.banner);
    let dirs: Vec<&str> = printed.iter().map(|(d, _)| d.as_str()).collect();
    assert_eq!(
        dirs,
        [
            "docker.io",
            "registry.k8s.io",
            a.addr.as_str(),
            b.addr.as_str()
        ],
        "{}",
        a.banner
    );
    assert_eq!(
        printed[0].1,
        format!(
            "# Written by edgeferry: pull docker.io images from the site mirrors, tried in this node's order.\n\
             server = \"https://registry-1.docker.io\"\n\
             \n[host.\"http://{}\"]\n  capabilities = [\"pull\", \"resolve\"]\n  dial_timeout = \"5s\"\n\
             \n[host.\"http://{}\"]\n  capabilities = [\"pull\", \"resolve\"]\n  dial_timeout = \"5s\"\n",
            a.addr, b.addr
        )
    );

    // Written as printed, the upstream fallback pointed at a closed port so
    // that a failed fall-through fails the test instead of going online.
    let certs = tmp.path().join("certs.d");
    for (dir, content) in &printed {
        let written = content.replace(
            "server = \"https://registry-1.docker.io\"",
            "server = \"http://127.0.0.1:9\"",
        );
        std::fs::create_dir_all(certs.join(dir)).unwrap();
        std::fs::write(certs.join(dir).join("hosts.toml"), written).unwrap();
    }

    let (status, _) = a.terminate(Duration::from_secs(10));
    assert_eq!(status.map(|s| s.code()), Some(Some(0)), "mirror A stopped");
    let refused = run(std::process::Command::new("curl")
        .args(["-sS", "-o", "/dev/null"])
        .arg(a.url("/v2/")));
    assert_eq!(refused.code, Some(7), "A is down: {}", refused.stderr);

    let containerd = Containerd::start(&tmp.path().join("containerd"));
    let started = Instant::now();
    let pulled = run_ok(
        containerd
            .ctr()
            .args(["image", "pull", "--hosts-dir"])
            .arg(&certs)
            .arg(PACKAGE),
    );
    let took = started.elapsed();
    assert!(
        format!("{}{}", pulled.stdout, pulled.stderr).contains("unpacking linux/amd64"),
        "{}{}",
        pulled.stdout,
        pulled.stderr
    );
    // A refused connection falls through at once: no dial timeout waited.
    assert!(took < Duration::from_secs(20), "the pull took {took:?}");

    // B resolved the tag (containerd asks with HEAD) and served the
    // layers, under containerd's ns=.
    let paths = served_paths(&log_b);
    assert!(
        paths
            .iter()
            .any(|p| p == "HEAD /v2/kubeedge/installation-package/manifests/v1.23.1?ns=docker.io"),
        "{paths:?}"
    );
    assert!(
        paths
            .iter()
            .any(|p| p.starts_with("GET /v2/kubeedge/installation-package/blobs/sha256:")),
        "{paths:?}"
    );
}

/// Three hosts, two `edgeferry serve` on the same store: the plan rotates
/// the order per node; mirror A is killed once the run has started, and
/// every node still joins through B (preflight, keadm fetch and the image
/// pull all fall through).
#[test]
fn join_completes_when_one_of_two_mirrors_is_killed_mid_run() {
    let tmp = tempfile::tempdir().unwrap();
    let store = loaded_sample_store(tmp.path(), "amd64", VERSION);
    let hosts = TestHosts::create(3).unwrap();
    let ip = hosts.control_ip().to_string();
    let log_b = tmp.path().join("b.jsonl");
    let mut a = Served::start_on(&store, &ip, std::iter::empty::<&str>());
    let b = Served::start_on(&store, &ip, [OsStr::new("--access-log"), log_b.as_os_str()]);
    let (url_a, url_b) = (a.url(""), b.url(""));

    let inventory = tmp.path().join("site.yaml");
    write(
        &inventory,
        &format!(
            "cloudcore: {}\ntoken: {{env: EF_TEST_TOKEN}}\nname_prefix: edge\n\
             mirrors: [{}, {}]\n\
             ssh: {{user: root, key: {}, known_hosts: {}}}\nnodes:\n  - host: {}\n  - host: {}\n  - host: {}\n",
            hosts.cloudcore(),
            a.addr,
            b.addr,
            hosts.client_key().display(),
            hosts.known_hosts().display(),
            hosts.host(0).ip,
            hosts.host(1).ip,
            hosts.host(2).ip
        ),
    );
    let token = hosts.token();
    let batch = |extra: &[&str]| {
        let mut cmd = edgeferry();
        cmd.args(["join", "-c"])
            .arg(&inventory)
            .arg("--store")
            .arg(&store)
            .args(extra)
            .env("EF_TEST_TOKEN", &token)
            .env_remove("EDGEFERRY_MIRROR")
            .stdin(std::process::Stdio::null());
        cmd
    };

    // The plan: each node's order, rotated by its place in the inventory.
    let plan: Value =
        serde_json::from_str(&run_ok(&mut batch(&["--dry-run", "--json"])).stdout).unwrap();
    assert_eq!(plan["mirrors"], serde_json::json!([url_a, url_b]));
    let orders: Vec<Value> = plan["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["mirrors"].clone())
        .collect();
    assert_eq!(
        orders,
        [
            serde_json::json!([url_a, url_b]),
            serde_json::json!([url_b, url_a]),
            serde_json::json!([url_a, url_b]),
        ]
    );

    let state = tmp.path().join("state");
    let mut child = Reaped::spawn(
        batch(&["--state-dir", state.to_str().unwrap()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null()),
    );
    wait_for("a node connected", Duration::from_secs(60), || {
        std::fs::read_to_string(state.join("journal.jsonl"))
            .unwrap_or_default()
            .contains("\"step\":\"connect\",\"status\":\"ok\"")
    });
    a.process.kill();
    let status = child
        .wait_timeout(Duration::from_secs(300))
        .expect("join finishes");
    let r = report(&state);
    assert_eq!(status.code(), Some(0), "{r:#}");
    assert_eq!(r["counts"]["joined"], 3, "{r:#}");
    assert_eq!(r["mirrors"], serde_json::json!([url_a, url_b]));
    let events = journal(&state);
    assert!(events.iter().all(|e| e["status"] != "failed"), "{events:?}");

    for i in 0..3 {
        let first = if i == 1 { &url_b } else { &url_a };
        let second = if i == 1 { &url_a } else { &url_b };
        let written = std::fs::read_to_string(
            hosts
                .private(i, "/etc/containerd")
                .join("certs.d/docker.io/hosts.toml"),
        )
        .unwrap();
        let at = |url: &str| {
            written
                .find(&format!("[host.\"{url}\"]"))
                .unwrap_or_else(|| panic!("host {i}: no {url} in\n{written}"))
        };
        assert!(at(first) < at(second), "host {i}:\n{written}");
        assert!(
            !hosts.run_on(i, "pidof edgecore").unwrap().stdout.is_empty(),
            "host {i}: edgecore runs"
        );
    }

    // Nodes 0 and 2 listed A first; with A gone, B served their keadm and
    // their installation-package: three keadm downloads in all.
    let paths = served_paths(&log_b);
    let keadm = format!("GET /files/keadm-{VERSION}-linux-amd64.tar.gz");
    assert_eq!(
        paths.iter().filter(|p| **p == keadm).count(),
        3,
        "{paths:?}"
    );
    assert_eq!(
        paths
            .iter()
            .filter(|p| p.starts_with("GET /v2/kubeedge/installation-package/manifests/v1.23.1"))
            .count(),
        3,
        "{paths:?}"
    );
    let fell_through =
        std::fs::read_to_string(r["nodes"][0]["log"].as_str().expect("node 0's log")).unwrap();
    assert!(
        fell_through.contains(&format!(
            "mirror {url_a}/v2/ does not answer from this node"
        )),
        "{fell_through}"
    );
}
