//! `edgeferry join` / `reset` against real sshd test hosts (network, mount
//! and PID namespaces; tests/src/hosts/), a real `edgeferry serve` on the
//! hosts' bridge, and the sample bundle's stand-in keadm (the only
//! stand-in: KubeEdge itself).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use edgeferry_tests::hosts::{TestHosts, CLIENT_KEY_PASSPHRASE, EDGE_PASSWORD, ROOT_PASSWORD};
use edgeferry_tests::{edgeferry, list_files, loaded_sample_store, run, run_ok, Ran, Served};
use serde_json::Value;

pub(crate) const VERSION: &str = "v1.23.1";
const WRONG_PASSWORD: &str = "not-the-edge-password";

/// A loaded store, test hosts, and a mirror on the hosts' bridge.
pub(crate) struct Site {
    tmp: tempfile::TempDir,
    store: PathBuf,
    pub(crate) hosts: TestHosts,
    mirror: Served,
    /// A join token the hosts' stand-in cloudcore accepts.
    pub(crate) token: String,
}

impl Site {
    pub(crate) fn new(count: usize) -> Site {
        let tmp = tempfile::tempdir().unwrap();
        let store = loaded_sample_store(tmp.path(), "amd64", VERSION);
        let hosts = TestHosts::create(count).unwrap();
        let mirror = Served::start_on(&store, hosts.control_ip(), std::iter::empty::<&str>());
        let token = hosts.token();
        Site {
            tmp,
            store,
            hosts,
            mirror,
            token,
        }
    }

    pub(crate) fn store(&self) -> &Path {
        &self.store
    }

    pub(crate) fn mirror_addr(&self) -> &str {
        &self.mirror.addr
    }

    pub(crate) fn path(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }

    pub(crate) fn join(&self, inventory: &Path, extra: &[&str]) -> Ran {
        self.batch("join", inventory, extra)
    }

    fn batch(&self, command: &str, inventory: &Path, extra: &[&str]) -> Ran {
        let agent = self.hosts.start_agent().unwrap();
        let ran = run(edgeferry()
            .arg(command)
            .arg("-c")
            .arg(inventory)
            .arg("--store")
            .arg(&self.store)
            .arg("--mirror")
            .arg(&self.mirror.addr)
            .args(extra)
            .env("EF_TEST_TOKEN", &self.token)
            .env("EF_TEST_EDGE_PASSWORD", EDGE_PASSWORD)
            .env("EF_TEST_PASSPHRASE", CLIENT_KEY_PASSPHRASE)
            .env("SSH_AUTH_SOCK", agent)
            .stdin(std::process::Stdio::null()));
        eprintln!(
            "--- edgeferry {command} {extra:?}: exit {:?}\n{}\n{}",
            ran.code, ran.stdout, ran.stderr
        );
        ran
    }

    pub(crate) fn on(&self, i: usize, script: &str) -> String {
        let out = self.hosts.run_on(i, script).unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// What a joined host must look like, checked inside the host.
    pub(crate) fn assert_joined(&self, i: usize) {
        let ip = &self.hosts.host(i).ip;
        let pid = self.on(i, "pidof edgecore || true");
        assert!(!pid.is_empty(), "host {i} ({ip}): edgecore not running");
        for f in ["ca/rootCA.crt", "certs/server.crt", "certs/server.key"] {
            assert!(
                self.hosts.private(i, "/etc/kubeedge").join(f).exists(),
                "host {i} ({ip}): no /etc/kubeedge/{f}"
            );
        }
        let hosts_toml = std::fs::read_to_string(
            self.hosts
                .private(i, "/etc/containerd")
                .join("certs.d/docker.io/hosts.toml"),
        )
        .unwrap();
        assert!(hosts_toml.contains(&format!("[host.\"http://{}\"]", self.mirror.addr)));
        let edgecore =
            std::fs::read_to_string(self.hosts.private(i, "/usr/local/bin").join("edgecore"))
                .unwrap();
        assert!(
            edgecore.contains("stand-in"),
            "edgecore came from the sample installation-package image"
        );
    }
}

pub(crate) fn report(state_dir: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(state_dir.join("report.json")).unwrap()).unwrap()
}

pub(crate) fn journal(state_dir: &Path) -> Vec<Value> {
    std::fs::read_to_string(state_dir.join("journal.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn node<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"] == name)
        .unwrap_or_else(|| panic!("{name} not in report"))
}

/// Every file under `dir` and every text given: none holds a secret.
fn assert_no_secrets(token: &str, dir: &Path, texts: &[&str]) {
    let secrets = [
        token,
        EDGE_PASSWORD,
        ROOT_PASSWORD,
        CLIENT_KEY_PASSPHRASE,
        WRONG_PASSWORD,
    ];
    let mut checked = 0;
    for rel in list_files(dir) {
        let bytes = std::fs::read(dir.join(&rel)).unwrap();
        let text = String::from_utf8_lossy(&bytes);
        for s in secrets {
            assert!(!text.contains(s), "{rel} contains a secret");
        }
        checked += 1;
    }
    assert!(
        checked >= 3,
        "expected logs, journal and report in {}",
        dir.display()
    );
    for t in texts {
        for s in secrets {
            assert!(!t.contains(s), "command output contains a secret:\n{t}");
        }
    }
}

pub(crate) fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
}

/// 20 hosts, the first 7 with one fault each; then the faults are fixed
/// and `--resume` finishes exactly those; then one node is reinstalled.
#[test]
fn join_twenty_hosts_with_faults_then_resume() {
    let site = Site::new(20);
    let h = &site.hosts;
    let key = h.client_key();
    let known_hosts = site.path("known_hosts");
    std::fs::copy(h.known_hosts(), &known_hosts).unwrap();
    let password_file = site.path("edge1.pass");
    write(&password_file, &format!("{WRONG_PASSWORD}\n"));
    let state = site.path("state");

    let ip = |i: usize| h.host(i).ip.clone();
    let root_key = format!("{{user: root, key: {}}}", key.display());
    let mut nodes = String::new();
    for i in 0..20 {
        let ssh = match i {
            1 => format!(
                "{{user: edge, password: {{file: {}}}}}",
                password_file.display()
            ),
            7 => "{user: edge, password: {env: EF_TEST_EDGE_PASSWORD}}".to_string(),
            8 => format!(
                "{{user: root, key: {}, key_passphrase: {{env: EF_TEST_PASSPHRASE}}}}",
                h.client_key_encrypted().display()
            ),
            9 => "{user: root, agent: true}".to_string(),
            10 => format!(
                "{{user: root, key: {}, jump: {{host: {}, user: root, key: {}}}}}",
                key.display(),
                ip(11),
                key.display()
            ),
            _ => root_key.clone(),
        };
        let name = if i == 13 {
            "\n    name: edge-custom-13"
        } else {
            ""
        };
        nodes.push_str(&format!("  - host: {}{name}\n    ssh: {ssh}\n", ip(i)));
    }
    let inventory = site.path("site.yaml");
    write(
        &inventory,
        &format!(
            "cloudcore: {cloud}\ntoken: {{env: EF_TEST_TOKEN}}\nname_prefix: edge\nparallel: 8\n\
             timeouts: {{connect: 20, keadm_join: 15}}\n\
             keadm:\n  labels: [site=test, rack=7]\n  hub-protocol: websocket\n\
             ssh:\n  known_hosts: {kh}\nnodes:\n{nodes}",
            cloud = h.cloudcore(),
            kh = known_hosts.display()
        ),
    );

    // Faults, one per host.
    h.stop_sshd(0); // host down
                    // host 1: wrong password (the file above)
    h.regenerate_host_key(2).unwrap(); // changed host key
    h.restart_sshd_32bit(3, true).unwrap(); // wrong arch
    h.set_fault(4, Some("fail")); // keadm fails
    h.set_fault(5, Some("hang")); // keadm hangs past its timeout
    write(
        &h.private(6, "/etc/kubeedge").join("leftover.yaml"),
        "old: config\n",
    ); // not clean

    // --dry-run: the whole plan, and nothing touched anywhere.
    let roots_before: Vec<Vec<String>> = (0..20).map(|i| list_files(&h.host(i).root)).collect();
    let known_before = std::fs::read(&known_hosts).unwrap();
    let dry = site.join(
        &inventory,
        &["--dry-run", "--state-dir", state.to_str().unwrap()],
    );
    assert_eq!(dry.code, Some(0), "{}", dry.stderr);
    for step in [
        "connect",
        "preflight",
        "containerd",
        "fetch",
        "keadm_join",
        "postcheck",
    ] {
        assert_eq!(
            dry.stdout.matches(&format!("  {step} (timeout")).count(),
            20,
            "{step} per node"
        );
    }
    assert!(
        dry.stdout.contains("--token=<redacted>")
            && dry.stdout.contains("--kubeedge-version=v1.23.1")
    );
    assert!(!state.exists(), "--dry-run created the state directory");
    assert_eq!(std::fs::read(&known_hosts).unwrap(), known_before);
    let roots_after: Vec<Vec<String>> = (0..20).map(|i| list_files(&h.host(i).root)).collect();
    assert_eq!(roots_before, roots_after, "--dry-run changed a host");
    let dry_json = site.join(
        &inventory,
        &[
            "--dry-run",
            "--json",
            "--state-dir",
            state.to_str().unwrap(),
        ],
    );
    let plan: Value = serde_json::from_str(&dry_json.stdout).unwrap();
    assert_eq!(plan["nodes"].as_array().unwrap().len(), 20);
    assert_eq!(plan["kubeedge_version"], VERSION);

    // Run 1: 13 join, 7 fail, each with its own step and cause.
    let first = site.join(&inventory, &["--state-dir", state.to_str().unwrap()]);
    assert_eq!(first.code, Some(2), "some nodes failed -> exit 2");
    let r1 = report(&state);
    let name = |i: usize| -> String {
        r1["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["host"] == ip(i))
            .unwrap()["name"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let expect: [(usize, &str, &str, &str); 7] = [
        (0, "connect", "connect", "refused"),
        (1, "connect", "auth", "authentication failed"),
        (2, "connect", "host_key_changed", "CHANGED"),
        (3, "preflight", "preflight", "i686"),
        (4, "keadm_join", "keadm_failed", "fault"),
        (
            5,
            "keadm_join",
            "keadm_timeout",
            "did not finish within 15s",
        ),
        (6, "preflight", "preflight", "/etc/kubeedge is not empty"),
    ];
    for (i, step, kind, text) in expect {
        let n = node(&r1, &name(i));
        assert_eq!(n["status"], "failed", "host {i}: {n}");
        assert_eq!(n["failed_step"], step, "host {i}: {n}");
        assert_eq!(n["error_kind"], kind, "host {i}: {n}");
        let error = n["error"].as_str().unwrap();
        assert!(
            error.contains(text),
            "host {i}: {error:?} should mention {text:?}"
        );
        assert!(!error.contains('\n'), "one-line error: {error:?}");
    }
    let bundle_id = std::fs::read_to_string(site.store.join("state.json")).unwrap();
    let state_json: Value = serde_json::from_str(&bundle_id).unwrap();
    let bundle_id = state_json["bundles"]
        .as_object()
        .unwrap()
        .keys()
        .next()
        .unwrap()
        .clone();
    for i in 7..20 {
        let n = node(&r1, &name(i));
        assert_eq!(n["status"], "joined", "host {i}: {n}");
        assert_eq!(n["arch"], "amd64");
        assert_eq!(n["bundle_id"], bundle_id.as_str());
        assert_eq!(n["steps"].as_array().unwrap().len(), 6);
        site.assert_joined(i);
    }
    assert_eq!(name(13), "edge-custom-13");
    assert!(
        name(12).starts_with("edge-") && name(12).len() == 11,
        "generated from the prefix"
    );
    assert_eq!(r1["counts"]["joined"], 13);
    assert_eq!(r1["counts"]["failed"], 7);
    assert!(
        first.stdout.contains("FAILED") && first.stdout.contains("report:"),
        "summary table"
    );
    // The node-side keadm got the flags from the inventory.
    let yaml = std::fs::read_to_string(h.private(14, "/etc/kubeedge").join("config/edgecore.yaml"))
        .unwrap();
    assert!(
        yaml.contains("site=test") || yaml.contains("site: test"),
        "{yaml}"
    );
    // Per-node logs hold the commands and their output.
    let log14 =
        std::fs::read_to_string(state.join("logs").join(format!("{}.log", name(14)))).unwrap();
    assert!(
        log14.contains("keadm join") && log14.contains("Install Complete"),
        "{log14}"
    );
    // A node that hung left no keadm behind once the timeout fired.
    assert_eq!(site.on(5, "pgrep -f '[k]eadm join' || true"), "");

    // Fix the faults, then resume.
    h.start_sshd(0).unwrap();
    write(&password_file, &format!("{EDGE_PASSWORD}\n"));
    let fixed: String = std::fs::read_to_string(&known_hosts)
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with(&format!("{} ", ip(2))))
        .map(|l| format!("{l}\n"))
        .collect();
    write(
        &known_hosts,
        &format!("{fixed}{} {}\n", ip(2), h.host(2).host_key()),
    );
    h.restart_sshd_32bit(3, false).unwrap();
    h.set_fault(4, None);
    h.set_fault(5, None);
    std::fs::remove_file(h.private(6, "/etc/kubeedge").join("leftover.yaml")).unwrap();

    let refused = site.join(&inventory, &["--state-dir", state.to_str().unwrap()]);
    assert_eq!(
        refused.code,
        Some(3),
        "a journal exists: --resume or --fresh needed"
    );
    assert!(refused.stderr.contains("--resume"));

    // A resume's dry run reads the journal and shows what it would skip,
    // touching nothing: the journal keeps its bytes.
    let journal_before = std::fs::read(state.join("journal.jsonl")).unwrap();
    let preview = site.join(
        &inventory,
        &[
            "--resume",
            "--dry-run",
            "--json",
            "--state-dir",
            state.to_str().unwrap(),
        ],
    );
    assert_eq!(preview.code, Some(0), "{}", preview.stderr);
    let preview: serde_json::Value = serde_json::from_str(&preview.stdout).unwrap();
    let resume_of = |i: usize| -> serde_json::Value {
        preview["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["name"] == name(i).as_str())
            .unwrap()["resume"]
            .clone()
    };
    assert_eq!(resume_of(4)["action"], "run");
    assert_eq!(
        resume_of(4)["skip_steps"],
        serde_json::json!(["preflight", "containerd", "fetch"]),
        "keadm failed: the steps before it are skipped"
    );
    assert_eq!(resume_of(7)["action"], "skip");
    assert_eq!(resume_of(7)["reason"], "already joined");
    assert_eq!(
        std::fs::read(state.join("journal.jsonl")).unwrap(),
        journal_before
    );

    let second = site.join(
        &inventory,
        &["--resume", "--state-dir", state.to_str().unwrap()],
    );
    assert_eq!(second.code, Some(0), "every node joined");
    let r2 = report(&state);
    assert_eq!(r2["counts"]["joined"], 7);
    assert_eq!(r2["counts"]["already_joined"], 13);
    let run2 = r2["run"].as_str().unwrap();
    let events = journal(&state);
    let rerun: BTreeSet<String> = events
        .iter()
        .filter(|e| e["run"] == run2)
        .map(|e| e["node"].as_str().unwrap().to_string())
        .collect();
    let failed_before: BTreeSet<String> = (0..7).map(name).collect();
    assert_eq!(rerun, failed_before, "no step reran on the joined nodes");
    let steps_of = |i: usize| -> Vec<String> {
        events
            .iter()
            .filter(|e| e["run"] == run2 && e["node"] == name(i).as_str() && e["status"] == "ok")
            .map(|e| e["step"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(
        steps_of(4),
        ["connect", "keadm_join", "postcheck"],
        "resumed at the failed step"
    );
    assert_eq!(
        steps_of(6),
        [
            "connect",
            "preflight",
            "containerd",
            "fetch",
            "keadm_join",
            "postcheck"
        ]
    );
    for i in 0..20 {
        site.assert_joined(i);
    }

    // Reinstall one node: reset, then join again.
    let reset = site.batch(
        "reset",
        &inventory,
        &["--limit", &name(15), "--state-dir", state.to_str().unwrap()],
    );
    assert_eq!(reset.code, Some(0));
    assert_eq!(site.on(15, "pidof edgecore || true"), "");
    assert!(
        list_files(&h.private(15, "/etc/kubeedge")).is_empty(),
        "reset emptied /etc/kubeedge"
    );
    let third = site.join(
        &inventory,
        &["--resume", "--state-dir", state.to_str().unwrap()],
    );
    assert_eq!(third.code, Some(0));
    let r3 = report(&state);
    assert_eq!(r3["counts"]["joined"], 1);
    assert_eq!(node(&r3, &name(15))["status"], "joined");
    site.assert_joined(15);

    let outputs = [
        dry.stdout.as_str(),
        dry.stderr.as_str(),
        dry_json.stdout.as_str(),
        first.stdout.as_str(),
        first.stderr.as_str(),
        second.stdout.as_str(),
        second.stderr.as_str(),
        reset.stdout.as_str(),
        third.stdout.as_str(),
    ];
    assert_no_secrets(&site.token, &state, &outputs);
}

/// A `keadm batch` config.yaml, unchanged: templating, copyFrom with a
/// pre-run script, password and key auth, maxRunNum; store and mirror from
/// the environment; host keys recorded on first contact.
#[test]
fn keadm_batch_config_works_unchanged() {
    let site = Site::new(3);
    let h = &site.hosts;
    let copy = site.path("copy");
    std::fs::create_dir_all(copy.join("sub")).unwrap();
    write(
        &copy.join("pre.sh"),
        "#!/bin/bash\necho pre-run ran > /var/lib/edgeferry/work/pre-ran\n",
    );
    write(&copy.join("sub/data.txt"), "nested\n");
    let mut nodes = String::new();
    for i in 0..3 {
        let auth = if i == 1 {
            format!("type: password\n        passwordAuth:\n          password: {ROOT_PASSWORD}")
        } else {
            format!(
                "type: privateKey\n        privateKeyAuth:\n          privateKeyPath: {}",
                h.client_key().display()
            )
        };
        let pre = if i == 2 { " --pre-run=./pre.sh" } else { "" };
        nodes.push_str(&format!(
            "  - nodeName: edge-node-{i}\n    keadmCmd: '{{{{.cmd}}}} --edgenode-name=edge-node-{i} --token={{{{.token}}}}{pre}'\n    copyFrom: {copy}\n    ssh:\n      ip: {ip}\n      username: root\n      port: 22\n      auth:\n        {auth}\n",
            copy = copy.display(),
            ip = h.host(i).ip
        ));
    }
    let config = site.path("config.yaml");
    write(
        &config,
        &format!(
            "keadm:\n  download:\n    enable: false\n  keadmVersion: {VERSION}\n  archGroup:\n    - amd64\n  offlinePackageDir: /opt/keadm\n  cmdTplArgs:\n    cmd: join --cloudcore-ipport={cloud} --kubeedge-version={VERSION}\n    token: {token}\nnodes:\n{nodes}maxRunNum: 2\n",
            cloud = h.cloudcore(),
            token = site.token
        ),
    );
    let home = site.path("home");
    std::fs::create_dir_all(&home).unwrap();
    let ran = run(edgeferry()
        .args(["join", "-c"])
        .arg(&config)
        .arg("--accept-new-host-keys")
        .env("EDGEFERRY_STORE", &site.store)
        .env("EDGEFERRY_MIRROR", &site.mirror.addr)
        .env("HOME", &home)
        .stdin(std::process::Stdio::null()));
    assert_eq!(ran.code, Some(0), "{}\n{}", ran.stdout, ran.stderr);
    let state = site.path("edgeferry-config");
    let r = report(&state);
    assert_eq!(r["counts"]["joined"], 3);
    assert_eq!(r["host_keys_learned"], 3, "first contact is reported");
    for i in 0..3 {
        let n = node(&r, &format!("edge-node-{i}"));
        assert_eq!(n["host_key"]["learned"], true);
        site.assert_joined(i);
        let uploaded = h.private(i, "/var/lib/edgeferry").join("work/sub/data.txt");
        assert_eq!(
            std::fs::read_to_string(uploaded).unwrap(),
            "nested\n",
            "copyFrom is recursive"
        );
    }
    assert!(
        h.private(2, "/var/lib/edgeferry")
            .join("work/pre-ran")
            .exists(),
        "--pre-run=./pre.sh ran"
    );
    let learned = std::fs::read_to_string(home.join(".ssh/known_hosts")).unwrap();
    assert_eq!(learned.lines().count(), 3, "{learned}");
    assert!(ran.stdout.contains("3 new host key(s) recorded"));
    assert_no_secrets(&site.token, &state, &[&ran.stdout, &ran.stderr]);

    // The same command again with --resume: every node is done, nothing runs.
    let again = run(edgeferry()
        .args(["join", "-c"])
        .arg(&config)
        .arg("--resume")
        .env("EDGEFERRY_STORE", &site.store)
        .env("EDGEFERRY_MIRROR", &site.mirror.addr)
        .env("HOME", &home)
        .stdin(std::process::Stdio::null()));
    assert_eq!(again.code, Some(0), "{}", again.stderr);
    assert_eq!(report(&state)["counts"]["already_joined"], 3);

    // `edgeferry status` reads the same journal.
    let status = run_ok(
        edgeferry()
            .args(["status", "--json", "--state-dir"])
            .arg(&state),
    );
    let status: Value = serde_json::from_str(&status.stdout).unwrap();
    let nodes = status["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 3);
    for n in nodes {
        assert_eq!(n["mode"], "ssh");
        assert_eq!(n["state"], "joined", "{n}");
        assert_eq!(n["step"], "postcheck");
    }
}

/// Ctrl-C mid-batch: exit 130, a journal whose every line parses, the
/// interrupted step recorded, and `--resume` finishes the job.
#[test]
fn interrupt_leaves_a_consistent_journal() {
    let site = Site::new(2);
    let h = &site.hosts;
    h.set_fault(1, Some("hang"));
    let state = site.path("state");
    let inventory = site.path("site.yaml");
    write(
        &inventory,
        &format!(
            "cloudcore: {}\ntoken: {{env: EF_TEST_TOKEN}}\nname_prefix: edge\ntimeouts: {{keadm_join: 120}}\n\
             ssh: {{user: root, key: {}, known_hosts: {}}}\nnodes:\n  - host: {}\n  - host: {}\n",
            h.cloudcore(),
            h.client_key().display(),
            h.known_hosts().display(),
            h.host(0).ip,
            h.host(1).ip
        ),
    );
    let mut child = edgeferry_tests::Reaped::spawn(
        edgeferry()
            .args(["join", "-c"])
            .arg(&inventory)
            .arg("--store")
            .arg(&site.store)
            .arg("--mirror")
            .arg(&site.mirror.addr)
            .arg("--state-dir")
            .arg(&state)
            .env("EF_TEST_TOKEN", &site.token)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null()),
    );
    // Wait until host 0 has joined and host 1 is inside keadm join.
    edgeferry_tests::wait_for(
        "host 0 joined, host 1 in keadm join",
        std::time::Duration::from_secs(60),
        || {
            let text = std::fs::read_to_string(state.join("journal.jsonl")).unwrap_or_default();
            text.contains("\"step\":\"postcheck\",\"status\":\"ok\"")
                && text.contains("\"step\":\"keadm_join\",\"status\":\"started\"")
                && text.matches("keadm_join\",\"status\":\"started\"").count() == 2
        },
    );
    std::thread::sleep(std::time::Duration::from_millis(500));
    // SAFETY: kill(2) takes no pointers and has no memory-safety
    // preconditions. `child` is ours and not yet reaped (Reaped waits only
    // below or on drop), so its pid cannot have been reused.
    unsafe { libc::kill(child.pid() as libc::pid_t, libc::SIGINT) };
    let status = child
        .wait_timeout(std::time::Duration::from_secs(30))
        .expect("join exits promptly after Ctrl-C");
    assert_eq!(status.code(), Some(130));
    let events = journal(&state);
    let last = events.last().unwrap();
    assert_eq!(last["step"], "keadm_join");
    assert_eq!(last["status"], "interrupted");
    let r = report(&state);
    assert_eq!(r["counts"]["joined"], 1);
    assert_eq!(r["counts"]["interrupted"], 1);

    h.set_fault(1, None);
    let resumed = site.join(
        &inventory,
        &["--resume", "--state-dir", state.to_str().unwrap()],
    );
    assert_eq!(resumed.code, Some(0));
    let r = report(&state);
    assert_eq!(r["counts"]["joined"], 1);
    assert_eq!(r["counts"]["already_joined"], 1);
    site.assert_joined(1);
}

/// `--max-fail 1` with one node at a time: the first failure spends the
/// budget, and the rest are reported as not started, never attempted.
/// (Changed host keys: a failure no retry can fix, so it is final at once;
/// a host that does not answer would wait at the back of the queue.)
#[test]
fn max_fail_stops_starting_new_nodes() {
    let site = Site::new(3);
    let h = &site.hosts;
    for i in 0..3 {
        h.regenerate_host_key(i).unwrap();
    }
    let state = site.path("state");
    let inventory = site.path("site.yaml");
    write(
        &inventory,
        &format!(
            "cloudcore: {}\ntoken: {{env: EF_TEST_TOKEN}}\n\
             ssh: {{user: root, key: {}, known_hosts: {}}}\nnodes:\n  - host: {}\n  - host: {}\n  - host: {}\n",
            h.cloudcore(),
            h.client_key().display(),
            h.known_hosts().display(),
            h.host(0).ip,
            h.host(1).ip,
            h.host(2).ip
        ),
    );
    let ran = site.join(
        &inventory,
        &[
            "--parallel",
            "1",
            "--max-fail",
            "1",
            "--state-dir",
            state.to_str().unwrap(),
        ],
    );
    assert_eq!(ran.code, Some(2));
    let r = report(&state);
    assert_eq!(r["counts"]["failed"], 1);
    assert_eq!(r["counts"]["not_started"], 2);
    let nodes = r["nodes"].as_array().unwrap();
    assert_eq!(nodes[0]["error_kind"], "host_key_changed");
    for n in &nodes[1..] {
        assert_eq!(n["status"], "not_started");
        assert!(n["error"].as_str().unwrap().contains("--max-fail"), "{n}");
        assert!(n["steps"].as_array().unwrap().is_empty());
    }
    let names: BTreeSet<String> = journal(&state)
        .iter()
        .map(|e| e["node"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names.len(), 1, "only the first node was attempted");
}

/// A node with neither curl nor wget: keadm goes over SSH instead, and is
/// still checked against the store's sha256 on the node. (The stand-in
/// keadm then cannot pull its image without an HTTP client, as a node
/// without containerd's own client would fail; --resume finishes once the
/// node has one.)
#[test]
fn node_without_http_client_gets_keadm_over_ssh() {
    let site = Site::new(1);
    let h = &site.hosts;
    let blank = site.path("not-executable");
    write(&blank, "");
    let hide = format!(
        "for b in /usr/bin/curl /usr/bin/wget; do [ ! -e $b ] || mount --bind {} $b || exit 1; done; command -v curl wget || true",
        blank.display()
    );
    assert_eq!(
        site.on(0, &hide),
        "",
        "curl and wget are hidden on the node"
    );
    let state = site.path("state");
    let inventory = site.path("site.yaml");
    write(
        &inventory,
        &format!(
            "cloudcore: {}\ntoken: {{env: EF_TEST_TOKEN}}\nname_prefix: edge\n\
             ssh: {{user: root, key: {}, known_hosts: {}}}\nnodes:\n  - host: {}\n",
            h.cloudcore(),
            h.client_key().display(),
            h.known_hosts().display(),
            h.host(0).ip
        ),
    );
    let first = site.join(&inventory, &["--state-dir", state.to_str().unwrap()]);
    assert_eq!(first.code, Some(2));
    let r = report(&state);
    let n = &r["nodes"][0];
    assert_eq!(n["failed_step"], "keadm_join", "{n}");
    let fetch = n["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["step"] == "fetch")
        .unwrap();
    assert_eq!(fetch["status"], "ok");
    let log = std::fs::read_to_string(n["log"].as_str().unwrap()).unwrap();
    assert!(
        log.contains("uploading over SSH instead") && log.contains("cat >"),
        "{log}"
    );
    let state_json: Value =
        serde_json::from_slice(&std::fs::read(site.store.join("state.json")).unwrap()).unwrap();
    let sha = state_json["files"]["keadm-v1.23.1-linux-amd64.tar.gz"]["sha256"]
        .as_str()
        .unwrap();
    let keadm_dir = h.private(0, "/var/lib/edgeferry").join("keadm-v1.23.1");
    assert_eq!(
        std::fs::read_to_string(keadm_dir.join(".verified"))
            .unwrap()
            .trim(),
        sha
    );
    assert!(keadm_dir.join("keadm").exists());

    assert_eq!(
        site.on(
            0,
            "umount /usr/bin/curl; umount /usr/bin/wget 2>/dev/null; command -v curl"
        ),
        "/usr/bin/curl"
    );
    let second = site.join(
        &inventory,
        &["--resume", "--state-dir", state.to_str().unwrap()],
    );
    assert_eq!(second.code, Some(0));
    let run2 = report(&state)["run"].as_str().unwrap().to_string();
    let steps: Vec<String> = journal(&state)
        .iter()
        .filter(|e| e["run"] == run2.as_str() && e["status"] == "ok")
        .map(|e| e["step"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(steps, ["connect", "keadm_join", "postcheck"]);
    site.assert_joined(0);
}
