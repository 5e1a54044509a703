//! The join against the stand-in cloudcore's certificate service and hub
//! (tests/src/hosts/cloudcore.rs), failing the way real sites fail: a
//! token for another cloud, a cloudcore that is down, a wrong cloud
//! address. One harness of four hosts, one scenario per host.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::join::{report, write, Site};
use edgeferry_tests::{edgeferry, run, Ran};

/// An inventory for host `i` alone, named `name`, with `cloudcore`.
fn inventory(site: &Site, i: usize, name: &str, cloudcore: &str) -> PathBuf {
    let h = &site.hosts;
    let path = site.path(&format!("{name}.yaml"));
    write(
        &path,
        &format!(
            "cloudcore: {cloudcore}\ntoken: {{env: EF_FIDELITY_TOKEN}}\n\
             timeouts: {{keadm_join: 60}}\n\
             ssh: {{user: root, key: {}, known_hosts: {}}}\n\
             nodes:\n  - host: {}\n    name: {name}\n",
            h.client_key().display(),
            h.known_hosts().display(),
            h.host(i).ip
        ),
    );
    path
}

fn join(site: &Site, inventory: &PathBuf, token: &str, state: &str) -> (Ran, PathBuf) {
    let state = site.path(state);
    let ran = run(edgeferry()
        .args(["join", "-c"])
        .arg(inventory)
        .arg("--store")
        .arg(site.store())
        .arg("--mirror")
        .arg(site.mirror_addr())
        .arg("--state-dir")
        .arg(&state)
        .env("EF_FIDELITY_TOKEN", token)
        .stdin(std::process::Stdio::null()));
    eprintln!(
        "--- edgeferry join {}: exit {:?}\n{}\n{}",
        inventory.display(),
        ran.code,
        ran.stdout,
        ran.stderr
    );
    (ran, state)
}

fn only_node(state: &std::path::Path) -> serde_json::Value {
    report(state)["nodes"][0].clone()
}

#[test]
fn joins_reach_the_certificate_service_and_fail_as_real_sites_fail() {
    let site = Site::new(4);
    let h = &site.hosts;
    let cloud = h.cloudcore();

    // A good token: certificates from the test CA, and a hub connection.
    // An older attempt's log with a fatal line does not stop this join.
    let stale = h.private(0, "/var/log/kubeedge/edgecore.log");
    write(
        &stale,
        "F0101 00:00:00.000000       1 certmanager.go:104] Error: token credentials are in the wrong format\n",
    );
    let touched = run(std::process::Command::new("touch")
        .args(["-d", "2020-01-01"])
        .arg(&stale));
    assert_eq!(touched.code, Some(0));
    let inv = inventory(&site, 0, "edge-good", &cloud);
    let (ran, state) = join(&site, &inv, &site.token, "good");
    assert_eq!(ran.code, Some(0), "{}", ran.stderr);
    assert_eq!(only_node(&state)["status"], "joined");
    site.assert_joined(0);
    edgeferry_tests::wait_for("edge-good on the hub", Duration::from_secs(20), || {
        h.hub_connected("edge-good")
    });
    assert_eq!(h.hub_nodes(), ["edge-good"]);
    let ca = std::fs::read_to_string(h.private(0, "/etc/kubeedge/ca/rootCA.crt")).unwrap();
    assert_eq!(ca, h.cloudcore_ca_pem(), "rootCA.crt is the cloud's CA");
    let certs = h.private(0, "/etc/kubeedge/certs");
    let subject = run(std::process::Command::new("openssl")
        .args(["x509", "-noout", "-subject", "-in"])
        .arg(certs.join("server.crt")));
    assert_eq!(
        subject.stdout.trim(),
        "subject=CN = system:node:edge-good, O = kubeEdge"
    );
    let verified = run(std::process::Command::new("openssl")
        .args(["verify", "-CAfile"])
        .arg(h.private(0, "/etc/kubeedge/ca/rootCA.crt"))
        .arg(certs.join("server.crt")));
    assert_eq!(verified.code, Some(0), "{}", verified.stderr);
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(certs.join("server.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    // The node name is now taken: keadm's pre-check gets 200.
    let taken = run(std::process::Command::new("curl")
        .args(["-sk", "-o", "/dev/null", "-w", "%{http_code}"])
        .arg(format!("https://{}:10002/node/edge-good", h.control_ip())));
    assert_eq!(taken.stdout, "200");
    // The stand-in kube-apiserver, reached as the kubeconfig says, reports
    // the Node Ready.
    let kubeconfig = std::fs::read_to_string(h.kubeconfig()).unwrap();
    assert!(kubeconfig.contains(&format!("server: {}", h.apiserver())));
    let value = |key: &str| {
        kubeconfig
            .lines()
            .find_map(|l| l.trim().strip_prefix(key))
            .unwrap()
            .trim()
            .to_string()
    };
    let ca_pem = edgeferry_bundle::sign::unbase64(&value("certificate-authority-data:")).unwrap();
    assert_eq!(String::from_utf8(ca_pem).unwrap(), h.cloudcore_ca_pem());
    let ca_file = site.path("kube-ca.pem");
    write(&ca_file, &h.cloudcore_ca_pem());
    let node_ready = |name: &str| {
        let headers = site.path("kube-headers");
        write(
            &headers,
            &format!("Authorization: Bearer {}\n", value("token:")),
        );
        let got = run(std::process::Command::new("curl")
            .args(["-sS", "--cacert"])
            .arg(&ca_file)
            .arg("-H")
            .arg(format!("@{}", headers.display()))
            .arg(format!("{}/api/v1/nodes/{name}", h.apiserver())));
        assert_eq!(got.code, Some(0), "{}", got.stderr);
        let node: serde_json::Value = serde_json::from_str(&got.stdout).unwrap();
        node["status"]["conditions"][0]["status"]
            .as_str()
            .map(String::from)
            .unwrap_or_else(|| format!("{}", node["code"]))
    };
    assert_eq!(node_ready("edge-good"), "True");
    assert_eq!(node_ready("edge-never"), "404");

    // A token for another cloud: edgecore refuses the CA and keadm is
    // stopped long before its 300 s.
    let wrong = h.wrong_token();
    let inv = inventory(&site, 1, "edge-wrong-token", &cloud);
    let started = Instant::now();
    let (ran, state) = join(&site, &inv, &wrong, "wrong-token");
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(ran.code, Some(2), "{}", ran.stderr);
    let n = only_node(&state);
    assert_eq!(n["failed_step"], "keadm_join");
    assert_eq!(n["error_kind"], "edgecore_certificate");
    let (want_hash, got_hash) = (wrong.split('.').next().unwrap(), h.cloudcore_ca().hash());
    assert_eq!(
        n["error"],
        format!(
            "edgecore could not get its certificates, so keadm join was stopped: \
             Error: failed to validate CA certificate. tokenCAhash: {want_hash}, CAhash: {got_hash}"
        )
    );
    assert!(!h.hub_connected("edge-wrong-token"));
    let text = std::fs::read_to_string(state.join("report.json")).unwrap();
    assert!(!text.contains(&wrong) && !text.contains(&site.token));

    // A hub that refuses: the joined node's edgecore loses its connection,
    // retries and exits; its Node is no longer Ready.
    h.set_hub_refuse(true);
    edgeferry_tests::wait_for("edge-good off the hub", Duration::from_secs(10), || {
        !h.hub_connected("edge-good")
    });
    assert_eq!(node_ready("edge-good"), "Unknown");
    edgeferry_tests::wait_for(
        "edge-good's edgecore exits",
        Duration::from_secs(30),
        || site.on(0, "pidof edgecore || true").is_empty(),
    );
    let log = std::fs::read_to_string(h.private(0, "/var/log/kubeedge/edgecore.log")).unwrap();
    assert!(
        log.contains(&format!(
            "Error: failed to connect to the cloudhub wss://{cloud} 3 times in a row, last: "
        )),
        "{log}"
    );
    h.set_hub_refuse(false);

    // Cloudcore down: preflight finds its ports closed.
    h.stop_cloudcore();
    let inv = inventory(&site, 2, "edge-cloud-down", &cloud);
    let started = Instant::now();
    let (ran, state) = join(&site, &inv, &site.token, "cloud-down");
    assert!(started.elapsed() < Duration::from_secs(60));
    assert_eq!(ran.code, Some(2), "every node failed");
    let n = only_node(&state);
    assert_eq!(n["failed_step"], "preflight");
    assert_eq!(n["error_kind"], "preflight");
    let ip = h.control_ip();
    assert_eq!(
        n["error"],
        format!(
            "preflight: cloudcore {ip}:10000 is unreachable from this node: check the address and firewalls; \
             cloudcore {ip}:10002 is unreachable from this node: check the address and firewalls"
        )
    );
    h.start_cloudcore().unwrap();

    // A wrong cloud address: an unused address on the bridge.
    let nowhere = format!("{}.250:10000", ip.rsplit_once('.').unwrap().0);
    let inv = inventory(&site, 3, "edge-nowhere", &nowhere);
    let (ran, state) = join(&site, &inv, &site.token, "nowhere");
    assert_eq!(ran.code, Some(2), "every node failed");
    let n = only_node(&state);
    assert_eq!(n["failed_step"], "preflight");
    let host = nowhere.rsplit_once(':').unwrap().0;
    assert_eq!(
        n["error"],
        format!(
            "preflight: cloudcore {host}:10000 is unreachable from this node: check the address and firewalls; \
             cloudcore {host}:10002 is unreachable from this node: check the address and firewalls"
        )
    );
}
