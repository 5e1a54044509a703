//! The postcheck proves that a join lasts (issue 17, part 3 and 4): edgecore
//! still running after the settle time and connected to the stand-in
//! cloudcore's hub, edgecore.yaml (it holds the token) made 0600 root, and
//! with `--verify-node-ready` the Node Ready in the cloud's API. Real sshd
//! test hosts, the stand-in keadm and edgecore of the sample bundle, and the
//! harness's stand-in cloudcore (certificate service, hub, Node API).

use std::path::Path;

use edgeferry_tests::hosts::TestHosts;
use serde_json::Value;

use crate::join::{report, write, Site};

fn inventory(site: &Site, file: &str, host: usize, name: &str) -> std::path::PathBuf {
    let h: &TestHosts = &site.hosts;
    let path = site.path(file);
    write(
        &path,
        &format!(
            "cloudcore: {}\ntoken: {{env: EF_TEST_TOKEN}}\n\
             ssh: {{user: root, key: {}, known_hosts: {}}}\nnodes:\n  - host: {}\n    name: {name}\n",
            h.cloudcore(),
            h.client_key().display(),
            h.known_hosts().display(),
            h.host(host).ip,
        ),
    );
    path
}

fn only_node(state: &Path) -> Value {
    let r = report(state);
    assert_eq!(r["nodes"].as_array().unwrap().len(), 1, "{r}");
    r["nodes"][0].clone()
}

#[test]
fn joined_means_connected_private_config_and_ready() {
    let site = Site::new(3);
    let h = &site.hosts;

    // A node that joins: connected to the hub after the settle time,
    // edgecore.yaml repaired to 0600 root, the Node Ready in the API.
    let state = site.path("state-ok");
    let kubeconfig = h.kubeconfig();
    let ran = site.join(
        &inventory(&site, "ok.yaml", 0, "pc-ok"),
        &[
            "--settle",
            "3",
            "--verify-node-ready",
            kubeconfig.to_str().unwrap(),
            "--state-dir",
            state.to_str().unwrap(),
        ],
    );
    assert_eq!(ran.code, Some(0), "{}", ran.stderr);
    let n = only_node(&state);
    assert_eq!(n["status"], "joined", "{n}");
    let pc = &n["postcheck"];
    assert_eq!(
        pc["hub"],
        format!("connected to {}", h.cloudcore()).as_str(),
        "{n}"
    );
    assert_eq!(pc["node_name"], "pc-ok");
    assert_eq!(pc["node_ready"], "ready");
    let fixed = pc["fixed"].as_array().unwrap();
    assert_eq!(fixed.len(), 1, "{n}");
    assert!(
        fixed[0].as_str().unwrap().starts_with(
            "/etc/kubeedge/config/edgecore.yaml was mode 644 owner 0:0, now 600 root:root"
        ),
        "{n}"
    );
    assert_eq!(
        site.on(0, "stat -c '%a %u:%g' /etc/kubeedge/config/edgecore.yaml"),
        "600 0:0"
    );
    assert!(
        h.hub_connected("pc-ok"),
        "the hub sees pc-ok: {:?}",
        h.hub_nodes()
    );
    assert!(
        ran.stdout.contains("Node Ready in the cloud's API: 1 of 1"),
        "{}",
        ran.stdout
    );

    // A node whose edgecore cannot keep a hub connection: keadm succeeds
    // (the certificates came), edgecore gives up and exits, and the
    // postcheck fails it instead of counting it joined.
    h.set_hub_refuse(true);
    let state = site.path("state-dies");
    let ran = site.join(
        &inventory(&site, "dies.yaml", 1, "pc-dies"),
        &["--settle", "3", "--state-dir", state.to_str().unwrap()],
    );
    h.set_hub_refuse(false);
    assert_eq!(ran.code, Some(2), "{}", ran.stderr);
    let n = only_node(&state);
    assert_eq!(n["failed_step"], "postcheck", "{n}");
    assert_eq!(n["error_kind"], "postcheck", "{n}");
    let error = n["error"].as_str().unwrap();
    assert!(
        error.starts_with("postcheck: edgecore exited")
            || error.starts_with("postcheck: edgecore runs but never connected to cloudcore's hub"),
        "{error}"
    );
    let keadm = n["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["step"] == "keadm_join")
        .unwrap();
    assert_eq!(keadm["status"], "ok", "keadm itself said the join worked");

    // Without --verify-node-ready the report says it was not checked.
    let state = site.path("state-plain");
    let ran = site.join(
        &inventory(&site, "plain.yaml", 2, "pc-plain"),
        &["--settle", "2", "--state-dir", state.to_str().unwrap()],
    );
    assert_eq!(ran.code, Some(0), "{}", ran.stderr);
    let n = only_node(&state);
    assert_eq!(n["postcheck"]["node_ready"], "not_checked", "{n}");
    assert!(
        ran.stdout.contains(
            "Node Ready in the cloud's API: not checked (pass --verify-node-ready KUBECONFIG)"
        ),
        "{}",
        ran.stdout
    );
}
