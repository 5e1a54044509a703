//! The test-host harness (`edgeferry_tests::hosts`) itself, driven with
//! the real OpenSSH client: hosts are separate machines as far as a join
//! can tell, every fault does what the join tests rely on, and dropping
//! the harness leaves nothing behind.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Instant;

use edgeferry_tests::hosts::*;
use edgeferry_tests::{require_tool, said};

fn text(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// `ssh user@host i script`, whatever the outcome.
fn ssh(hosts: &TestHosts, i: usize, user: &str, script: &str) -> Output {
    hosts
        .ssh_command(i, user)
        .arg(script)
        .output()
        .expect("running ssh")
}

/// `ssh root@host i script`, which must succeed; its stdout, trimmed.
fn ssh_ok(hosts: &TestHosts, i: usize, script: &str) -> String {
    let out = ssh(hosts, i, "root", script);
    assert!(
        out.status.success(),
        "ssh root@{} {script:?}: {}",
        hosts.host(i).ip,
        said(&out)
    );
    text(&out)
}

fn ifindex(link: &str) -> Option<String> {
    std::fs::read_to_string(format!("/sys/class/net/{link}/ifindex"))
        .ok()
        .map(|i| i.trim().to_string())
}

fn run_on_ok(hosts: &TestHosts, i: usize, script: &str) -> String {
    let out = hosts.run_on(i, script).expect("run_on");
    assert!(
        out.status.success(),
        "run_on {i} {script:?}: {}",
        said(&out)
    );
    text(&out)
}

#[test]
fn test_hosts_are_separate_ssh_machines_and_clean_up() {
    require_tool("ssh", "openssh-client");
    require_tool("curl", "curl");
    let started = Instant::now();
    let hosts = TestHosts::create(3).expect("creating 3 test hosts");
    let created = started.elapsed();

    // Each host (all at once): its own name, the machine's architecture,
    // a CRI socket; host 0 also gets a file in /etc/kubeedge and a daemon.
    let marker = format!("marker-{}", std::process::id());
    let host0 =
        format!("echo hello > /etc/kubeedge/{marker}; sleep 1000 </dev/null >/dev/null 2>&1 &");
    let sessions: Vec<_> = (0..3)
        .map(|i| {
            let extra = if i == 0 { host0.as_str() } else { "ls -A /etc/kubeedge; pidof sleep || true" };
            hosts
                .ssh_command(i, "root")
                .arg(format!(
                    "hostname; uname -m; test -S /run/containerd/containerd.sock && echo cri; {extra}"
                ))
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for (i, session) in sessions.into_iter().enumerate() {
        let out = session.wait_with_output().unwrap();
        assert!(out.status.success(), "host {i}: {}", said(&out));
        let host = hosts.host(i);
        assert_eq!(host.index, i);
        // Hosts 1 and 2: nothing in /etc/kubeedge, no sleep (PID isolation).
        assert_eq!(text(&out), format!("{}\nx86_64\ncri", host.name));
        assert_eq!(run_on_ok(&hosts, i, "hostname"), host.name);
    }

    // Private /etc/kubeedge, seen from the control side too.
    assert_eq!(
        std::fs::read_to_string(hosts.private(0, &format!("/etc/kubeedge/{marker}"))).unwrap(),
        "hello\n"
    );
    assert_eq!(
        std::fs::read_dir(hosts.private(1, "/etc/kubeedge"))
            .unwrap()
            .count(),
        0
    );
    assert!(!Path::new("/etc/kubeedge").join(&marker).exists());

    // Private PIDs: the daemon started on host 0 runs there only.
    assert!(!run_on_ok(&hosts, 0, "pidof sleep").is_empty());
    assert_eq!(text(&hosts.run_on(1, "pidof sleep").unwrap()), "");

    // The edge user: key login, passwordless sudo, a private home.
    let edge = ssh(&hosts, 2, EDGE_USER, "id -un; sudo -n id -u; echo $HOME");
    assert!(edge.status.success(), "edge login: {}", said(&edge));
    assert_eq!(
        text(&edge),
        format!(
            "{EDGE_USER}\n0\n{}",
            hosts.host(2).root.join("home/edge").display()
        )
    );

    // Passwords: the private shadow holds hashes of the documented ones.
    let shadow = std::fs::read_to_string(hosts.private(1, "/etc/shadow")).unwrap();
    for (user, password) in [(EDGE_USER, EDGE_PASSWORD), ("root", ROOT_PASSWORD)] {
        let line = shadow
            .lines()
            .find(|l| l.starts_with(&format!("{user}:")))
            .unwrap_or_else(|| panic!("no {user} in the private shadow"));
        let want = Command::new("openssl")
            .args(["passwd", "-6", "-salt", PASSWORD_SALT, password])
            .output()
            .unwrap();
        assert_eq!(
            line.split(':').nth(1).unwrap(),
            text(&want),
            "{user}'s hash"
        );
    }
    let system = std::fs::read_to_string("/etc/shadow").unwrap();
    assert!(!system
        .lines()
        .any(|l| l.starts_with(&format!("{EDGE_USER}:"))));

    // The encrypted key: opens with the passphrase only, and is authorized.
    let encrypted = hosts.client_key_encrypted();
    let wrong = Command::new("ssh-keygen")
        .args(["-y", "-P", ""])
        .arg("-f")
        .arg(&encrypted)
        .output()
        .unwrap();
    assert!(
        !wrong.status.success(),
        "the encrypted key opened without a passphrase"
    );
    let public = Command::new("ssh-keygen")
        .args(["-y", "-P", CLIENT_KEY_PASSPHRASE])
        .arg("-f")
        .arg(&encrypted)
        .output()
        .unwrap();
    assert!(public.status.success(), "{}", said(&public));
    let authorized = std::fs::read_to_string(hosts.dir().join("authorized_keys/root")).unwrap();
    let public = text(&public);
    let key_fields: Vec<&str> = public.split_whitespace().take(2).collect();
    assert!(authorized.contains(&key_fields.join(" ")));

    // The agent: no -i, the agent's key gets in; without it, nothing does.
    let sock = hosts.start_agent().unwrap();
    let via_agent = |with_agent: bool| {
        let mut cmd = Command::new("ssh");
        cmd.args(hosts.ssh_options())
            .args(["-o", "IdentitiesOnly=no"])
            .arg(format!("root@{}", hosts.host(1).ip))
            .arg("hostname");
        if with_agent {
            cmd.env("SSH_AUTH_SOCK", &sock);
        } else {
            cmd.env_remove("SSH_AUTH_SOCK");
        }
        cmd.output().unwrap()
    };
    let out = via_agent(true);
    assert!(out.status.success(), "via the agent: {}", said(&out));
    assert_eq!(text(&out), hosts.host(1).name);
    assert!(!via_agent(false).status.success());

    // A host as a jump host (TCP forwarding on).
    let options = hosts.ssh_options().join(" ");
    let key = hosts.client_key();
    let jumped = Command::new("ssh")
        .args(hosts.ssh_options())
        .arg("-i")
        .arg(&key)
        .arg("-o")
        .arg(format!(
            "ProxyCommand=ssh {options} -i {} -W %h:%p root@{}",
            key.display(),
            hosts.host(0).ip
        ))
        .arg(format!("root@{}", hosts.host(2).ip))
        .arg("hostname")
        .output()
        .unwrap();
    assert!(jumped.status.success(), "through host 0: {}", said(&jumped));
    assert_eq!(text(&jumped), hosts.host(2).name);

    // The stand-in cloudcore speaks TLS: the certificate service answers
    // keadm's node-name check and hands out its CA; the hub wants a
    // client certificate.
    assert!(hosts.cloudcore().starts_with(hosts.control_ip()));
    let ip = hosts.control_ip();
    let got = ssh_ok(
        &hosts,
        2,
        &format!(
            "curl -sk -o /dev/null -w '%{{http_code}}\\n' https://{ip}:10002/node/efhost-02; \
             curl -sk https://{ip}:10002/ca.crt | openssl dgst -sha256 -r | cut -d' ' -f1; \
             curl -sk -o /dev/null --max-time 5 https://{ip}:10000/p/efhost-02/events; echo $?"
        ),
    );
    let lines: Vec<&str> = got.lines().collect();
    assert_eq!(lines[0], "404", "{got}");
    assert_eq!(lines[1], hosts.cloudcore_ca().hash(), "{got}");
    assert_ne!(lines[2], "0", "no client certificate, no hub: {got}");
    assert_eq!(hosts.token().split('.').count(), 4);

    // The stand-in keadm's knobs.
    hosts.set_fault(1, Some("hang"));
    hosts.set_join_seconds(1, Some(7));
    assert_eq!(
        ssh_ok(
            &hosts,
            1,
            "cat /var/lib/keadm-standin/fault /var/lib/keadm-standin/join-seconds"
        ),
        "hang\n7"
    );
    hosts.set_fault(1, None);
    hosts.set_join_seconds(1, None);
    let standin = hosts.private(1, "/var/lib/keadm-standin");
    assert_eq!(std::fs::read_dir(standin).unwrap().count(), 0);

    // Wrong architecture.
    hosts.restart_sshd_32bit(2, true).unwrap();
    assert_eq!(ssh_ok(&hosts, 2, "uname -m"), "i686");
    assert_eq!(run_on_ok(&hosts, 2, "uname -m"), "i686");

    // Host down: refused; back up: fine, and its files are still there.
    hosts.stop_sshd(1);
    assert!(hosts.sshd_pid(1).is_none());
    let down = ssh(&hosts, 1, "root", "true");
    assert!(
        !down.status.success()
            && String::from_utf8_lossy(&down.stderr).contains("Connection refused"),
        "{}",
        said(&down)
    );
    assert!(hosts.run_on(1, "true").is_err());
    hosts.start_sshd(1).unwrap();
    assert_eq!(ssh_ok(&hosts, 1, "hostname"), hosts.host(1).name);

    // Changed host key: strict checking refuses; the host's processes live.
    let old_key = hosts.host(0).host_key();
    let new_key = hosts.regenerate_host_key(0).unwrap();
    assert_ne!(old_key, new_key);
    assert_eq!(hosts.host(0).host_key(), new_key);
    let changed = ssh(&hosts, 0, "root", "true");
    let stderr = String::from_utf8_lossy(&changed.stderr);
    assert!(
        !changed.status.success() && stderr.contains("REMOTE HOST IDENTIFICATION HAS CHANGED"),
        "{}",
        said(&changed)
    );
    assert!(
        !run_on_ok(&hosts, 0, "pidof sleep").is_empty(),
        "a reload ended the host's processes"
    );

    // Drop: no namespace, veth, bridge, process or record left. Other
    // tests may create hosts meanwhile and get the same bridge number (so
    // the same names): links are told apart by ifindex (never reused),
    // namespace names only count while nobody holds the bridge name.
    let netns: Vec<String> = hosts.hosts().iter().map(|h| h.netns.clone()).collect();
    let bridge = hosts.bridge().to_string();
    let k = bridge.trim_start_matches("efbr").to_string();
    let mut ours: Vec<String> = vec![bridge.clone()];
    ours.extend((0..3).map(|i| format!("ef{k}v{i}")));
    let ifindexes: Vec<String> = ours.iter().map(|name| ifindex(name).unwrap()).collect();
    let pids: Vec<u32> = (0..3).filter_map(|i| hosts.sshd_pid(i)).collect();
    assert_eq!(pids.len(), 3);
    let dir = hosts.dir().to_path_buf();
    drop(hosts);
    let list = text(&Command::new("ip").args(["netns", "list"]).output().unwrap());
    let reused = ifindex(&bridge).is_some();
    for ns in &netns {
        let left = list
            .lines()
            .any(|l| l.split_whitespace().next() == Some(ns.as_str()));
        assert!(!left || reused, "{ns} left: {list}");
    }
    let now: Vec<String> = std::fs::read_dir("/sys/class/net")
        .unwrap()
        .flatten()
        .filter_map(|e| ifindex(&e.file_name().to_string_lossy()))
        .collect();
    for (name, index) in ours.iter().zip(&ifindexes) {
        assert!(!now.contains(index), "{name} (ifindex {index}) left behind");
    }
    for pid in pids {
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "sshd {pid} still there"
        );
    }
    let record = std::fs::read_to_string(Path::new(RECORDS).join(&bridge)).unwrap_or_default();
    assert!(
        !record.contains(&dir.display().to_string()),
        "record left: {record}"
    );
    assert!(!dir.exists());
    eprintln!(
        "test hosts: created 3 in {created:.2?}; whole test {:.2?}",
        started.elapsed()
    );
}

/// Past one /24 (240 hosts) a host lives in the next block, 10.214.K.0/24,
/// on the same bridge: the control side reaches it over SSH and it reaches
/// the control address, where the mirror and the stand-in cloudcore
/// listen. Above MAX_HOSTS (a bridge's ports) the harness refuses.
#[test]
fn hosts_past_one_block_reach_the_control_address() {
    require_tool("ssh", "openssh-client");
    require_tool("curl", "curl");
    let err = TestHosts::create(MAX_HOSTS + 1).err().expect("a refusal");
    assert_eq!(
        err.to_string(),
        format!(
            "TestHosts::create({}): between 1 and {MAX_HOSTS} hosts",
            MAX_HOSTS + 1
        )
    );
    let n = HOSTS_PER_BLOCK + 1;
    let hosts = TestHosts::create(n).expect("creating the test hosts");
    let k: u16 = hosts.bridge().trim_start_matches("efbr").parse().unwrap();
    let last = n - 1;
    assert_eq!(hosts.host(0).ip, format!("10.213.{k}.10"));
    assert_eq!(hosts.host(last - 1).ip, format!("10.213.{k}.249"));
    assert_eq!(hosts.host(last).ip, format!("10.214.{k}.10"));
    assert_eq!(host_ip(k, last), hosts.host(last).ip);
    assert_eq!(ssh_ok(&hosts, last, "hostname"), hosts.host(last).name);
    let ca = ssh_ok(
        &hosts,
        last,
        &format!(
            "curl -fsS -k https://{}:{CERT_PORT}/ca.crt | wc -c",
            hosts.control_ip()
        ),
    );
    assert_eq!(ca, hosts.cloudcore_ca().der().len().to_string());
}
