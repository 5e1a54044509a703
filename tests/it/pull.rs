//! Pull mode: edge nodes that nothing can reach (test hosts without sshd,
//! tests/src/hosts/) join themselves by running the one-liner `edgeferry
//! serve --site-dir` prints, typed on their console ([`TestHosts::run_on`]).
//! The mirror hands the site's parameters (cloudcore token included) only
//! for a valid enrollment code, checks what nodes report, and `edgeferry
//! status` shows every node.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use edgeferry_tests::hosts::{TestHosts, HOST_PATH};
use edgeferry_tests::tamper::TamperProxy;
use edgeferry_tests::{
    access_log, edgeferry, list_files, loaded_sample_store, require_tool, run, run_ok, said,
    sha256_hex, Served,
};
use serde_json::Value;

const VERSION: &str = "v1.23.1";
/// The cloudcore token: only the serve process's environment has it.
const TOKEN_ENV: &str = "EF_PULL_TEST_TOKEN";

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Hosts without sshd are consoles only: port 22 closed, their own name,
/// PID 1, /tmp and files, and a console (`run_on`) that runs as root with
/// a clean environment.
#[test]
fn hosts_without_sshd_are_reached_only_at_the_console() {
    let started = Instant::now();
    let hosts = TestHosts::create_without_sshd(2).expect("creating 2 hosts without sshd");
    let created = started.elapsed();
    assert!(!hosts.with_sshd() && !hosts.host(0).has_sshd());
    for i in 0..2 {
        let host = hosts.host(i);
        let refused = std::net::TcpStream::connect_timeout(
            &host.addr().parse().unwrap(),
            Duration::from_secs(2),
        );
        assert!(refused.is_err(), "{}: port 22 accepts", host.name);
        let out = hosts
            .run_on(
                i,
                "hostname; id -u; echo \"$PATH\"; env | sort | tr '\\n' ' '; echo; \
                 tr '\\0' ' ' </proc/1/cmdline; echo; pwd; ip -4 -o addr show eth0",
            )
            .unwrap();
        assert!(out.status.success(), "{}", said(&out));
        let text = stdout(&out);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], host.name);
        assert_eq!(lines[1], "0", "console runs as root");
        assert_eq!(lines[2], HOST_PATH);
        // Nothing of the test process's environment (cargo's, a token's).
        let names: Vec<&str> = lines[3]
            .split_whitespace()
            .filter_map(|kv| kv.split_once('=').map(|(k, _)| k))
            .collect();
        for name in &names {
            assert!(
                ["PATH", "HOME", "USER", "LOGNAME", "SHELL", "LANG", "TERM", "PWD", "SHLVL", "_"]
                    .contains(name),
                "{name} leaked onto the host: {}",
                lines[3]
            );
        }
        assert!(names.contains(&"HOME"), "{}", lines[3]);
        assert!(lines[4].starts_with("sh -c "), "PID 1: {}", lines[4]);
        assert_eq!(lines[5], "/");
        assert!(
            lines[6].contains(&format!("{}/24", host.ip)),
            "{}",
            lines[6]
        );
    }
    // Private /tmp: a file made on host 0 is not on host 1 nor here.
    let marker = format!("/tmp/pull-marker-{}", std::process::id());
    let out = hosts
        .run_on(0, &format!("echo zero > {marker} && cat {marker}"))
        .unwrap();
    assert_eq!(stdout(&out), "zero", "{}", said(&out));
    assert!(hosts.private(0, &marker).exists());
    assert!(!Path::new(&marker).exists(), "host /tmp is the control's");
    let out = hosts.run_on(1, &format!("cat {marker}")).unwrap();
    assert!(!out.status.success(), "host 1 sees host 0's /tmp");
    // A daemon left by a console session lives on, and PID 1 reaps it
    // when it ends (no zombies).
    let out = hosts
        .run_on(
            0,
            "setsid sh -c 'sleep 1' </dev/null >/dev/null 2>&1 & \
             setsid sleep 600 </dev/null >/dev/null 2>&1 & echo started",
        )
        .unwrap();
    assert_eq!(stdout(&out), "started");
    std::thread::sleep(Duration::from_millis(1500));
    let out = hosts
        .run_on(0, "ps -eo stat=,args= | grep -v ' ps ' ")
        .unwrap();
    let ps = stdout(&out);
    assert!(ps.contains("sleep 600"), "daemon gone:\n{ps}");
    assert!(
        !ps.lines().any(|l| l.trim_start().starts_with('Z')),
        "zombies on the host:\n{ps}"
    );
    // Down and up again: a fresh PID namespace, same files.
    hosts.stop_sshd(0);
    assert!(hosts.run_on(0, "true").is_err());
    hosts.start_sshd(0).unwrap();
    let out = hosts
        .run_on(0, &format!("cat {marker}; pidof sleep | wc -w"))
        .unwrap();
    assert_eq!(stdout(&out), "zero\n1", "{}", said(&out));
    assert!(hosts.regenerate_host_key(0).is_err());
    let dir = hosts.dir().to_path_buf();
    drop(hosts);
    assert!(!dir.exists(), "harness directory left behind");
    eprintln!(
        "hosts without sshd: created in {created:.2?}, test in {:.2?}",
        started.elapsed()
    );
}

/// A loaded store, hosts without sshd, a site directory and the mirror
/// serving it (pull mode) on the hosts' bridge.
struct PullSite {
    tmp: tempfile::TempDir,
    store: PathBuf,
    site: PathBuf,
    access_log: PathBuf,
    hosts: TestHosts,
    mirror: Served,
    /// A join token the hosts' stand-in cloudcore accepts.
    token: String,
}

impl PullSite {
    fn new(count: usize) -> PullSite {
        require_tool("curl", "curl");
        let started = Instant::now();
        let tmp = tempfile::tempdir().unwrap();
        let store = loaded_sample_store(tmp.path(), "amd64", VERSION);
        let hosts = TestHosts::create_without_sshd(count).unwrap();
        let site = tmp.path().join("site");
        std::fs::create_dir(&site).unwrap();
        std::fs::write(
            site.join("site.yaml"),
            format!(
                "cloudcore: {}\ntoken: {{env: {TOKEN_ENV}}}\nname_prefix: pull\n\
                 keadm: {{labels: [site=test]}}\n",
                hosts.cloudcore()
            ),
        )
        .unwrap();
        let access_log = tmp.path().join("access.log");
        let token = hosts.token();
        let mirror = Served::start_site(
            &store,
            hosts.control_ip(),
            &site,
            &["--access-log", access_log.to_str().unwrap()],
            &[(TOKEN_ENV, token.as_str())],
        );
        eprintln!(
            "pull site with {count} hosts ready in {:.2?}\n{}",
            started.elapsed(),
            mirror.banner
        );
        PullSite {
            tmp,
            store,
            site,
            access_log,
            hosts,
            mirror,
            token,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }

    /// `edgeferry enroll create --site-dir D <args> --json`: (id, code).
    fn enroll(&self, args: &[&str]) -> (String, String) {
        let ran = run_ok(
            edgeferry()
                .args(["enroll", "create", "--site-dir"])
                .arg(&self.site)
                .args(args)
                .arg("--json"),
        );
        let v: Value = serde_json::from_str(&ran.stdout)
            .unwrap_or_else(|e| panic!("enroll create --json: {e}: {}", ran.stdout));
        let id = v["id"].as_str().expect("id").to_string();
        let code = v["code"].as_str().expect("code").to_string();
        assert!(!id.is_empty() && code.len() >= 16, "{v}");
        (id, code)
    }

    /// The printed one-liner with `code` in place of `<CODE>`.
    fn one_liner(&self, code: &str) -> String {
        let line = self.mirror.one_liner().expect("a one-liner in the banner");
        assert!(line.contains("<CODE>"), "{line}");
        line.replace("<CODE>", code)
    }

    /// What the operator types on host `i`'s console.
    fn console(&self, i: usize, command: &str) -> Output {
        self.hosts.run_on(i, command).unwrap()
    }

    fn status_json(&self) -> Value {
        let ran = run_ok(
            edgeferry()
                .args(["status", "--json", "--site-dir"])
                .arg(&self.site),
        );
        serde_json::from_str(&ran.stdout)
            .unwrap_or_else(|e| panic!("status --json: {e}: {}", ran.stdout))
    }

    fn status_table(&self) -> String {
        let ran = run_ok(edgeferry().args(["status", "--site-dir"]).arg(&self.site));
        ran.stdout
    }

    /// `curl -X <method>` from the control side: (status, body).
    fn http(
        &self,
        method: &str,
        path: &str,
        headers: &[String],
        body: Option<&[u8]>,
    ) -> (u16, String) {
        let mut cmd = Command::new("curl");
        cmd.args([
            "-sS",
            "--noproxy",
            "*",
            "-m",
            "30",
            "-o",
            "-",
            "-w",
            "\n%{http_code}",
            "-X",
        ])
        .arg(method);
        for h in headers {
            cmd.arg("-H").arg(h);
        }
        if let Some(body) = body {
            let file = self.path(&format!("body-{}", sha256_hex(body)));
            std::fs::write(&file, body).unwrap();
            cmd.arg("--data-binary").arg(format!("@{}", file.display()));
        }
        cmd.arg(self.mirror.url(path));
        let ran = run(&mut cmd);
        let (body, code) = ran
            .stdout
            .rsplit_once('\n')
            .unwrap_or_else(|| panic!("curl {method} {path}: {}", ran.stderr));
        let code = code.trim().parse().unwrap_or(0);
        (code, body.to_string())
    }

    /// POST /v1/enroll as the script does: (status, body).
    fn post_enroll(&self, code: &str, hostname: &str) -> (u16, String) {
        self.http(
            "POST",
            "/v1/enroll",
            &[
                format!("X-Edgeferry-Code: {code}"),
                format!("X-Edgeferry-Hostname: {hostname}"),
            ],
            Some(b""),
        )
    }

    /// POST /v1/report: the status.
    fn report(&self, key: Option<&str>, body: &[u8], extra: &[&str]) -> u16 {
        let mut headers = vec!["Content-Type: application/json".to_string()];
        headers.extend(key.map(|k| format!("Authorization: Bearer {k}")));
        headers.extend(extra.iter().map(|h| h.to_string()));
        self.http("POST", "/v1/report", &headers, Some(body)).0
    }

    /// A joined node, checked inside it: edgecore runs, certificates are
    /// there, containerd pulls through the mirror.
    fn assert_joined(&self, i: usize) {
        let name = &self.hosts.host(i).name;
        let out = self.console(i, "pidof edgecore");
        assert!(
            out.status.success(),
            "{name}: edgecore not running: {}",
            said(&out)
        );
        for f in ["certs/server.crt", "certs/server.key", "ca/rootCA.crt"] {
            assert!(
                self.hosts.private(i, "/etc/kubeedge").join(f).exists(),
                "{name}: no /etc/kubeedge/{f}"
            );
        }
        let hosts_toml = std::fs::read_to_string(
            self.hosts
                .private(i, "/etc/containerd")
                .join("certs.d/docker.io/hosts.toml"),
        )
        .unwrap_or_else(|e| panic!("{name}: docker.io hosts.toml: {e}"));
        assert!(
            hosts_toml.contains(&format!("[host.\"http://{}\"]", self.mirror.addr)),
            "{name}: hosts.toml:\n{hosts_toml}"
        );
    }

    /// Nothing of a join happened on host `i`.
    fn assert_untouched(&self, i: usize) {
        let name = &self.hosts.host(i).name;
        for dir in ["/etc/kubeedge", "/usr/local/bin"] {
            let files = list_files(&self.hosts.private(i, dir));
            assert!(files.is_empty(), "{name}: {dir} holds {files:?}");
        }
        // Only the harness's own containerd config, as it wrote it.
        let dir = self.hosts.private(i, "/etc/containerd");
        let files = list_files(&dir);
        assert_eq!(files.len(), 1, "{name}: /etc/containerd holds {files:?}");
        assert_eq!(
            std::fs::read_to_string(dir.join("config.toml")).unwrap(),
            edgeferry_tests::hosts::CONTAINERD_CONFIG,
            "{name}: /etc/containerd/config.toml changed"
        );
        let out = self.console(i, "pidof edgecore");
        assert!(!out.status.success(), "{name}: edgecore runs");
    }

    /// The mirror's logs (access log, stdout, stderr), the site directory
    /// and `texts` hold neither the token nor any of `secrets`.
    fn assert_no_secrets(&self, secrets: &[&str], texts: &[&str]) {
        let access = std::fs::read_to_string(&self.access_log).unwrap();
        assert!(
            access.lines().count() > 0,
            "the access log {} is empty",
            self.access_log.display()
        );
        let mut sources = vec![
            ("access log".to_string(), access),
            ("mirror stderr".to_string(), self.mirror.stderr()),
            ("mirror stdout".to_string(), self.mirror.stdout()),
        ];
        for rel in list_files(&self.site) {
            let bytes = std::fs::read(self.site.join(&rel)).unwrap();
            sources.push((
                format!("site dir {rel}"),
                String::from_utf8_lossy(&bytes).into_owned(),
            ));
        }
        for (i, t) in texts.iter().enumerate() {
            sources.push((format!("output #{i}"), t.to_string()));
        }
        assert!(
            sources[1].1.contains("one-liner:"),
            "mirror stderr was captured"
        );
        for (what, text) in &sources {
            assert!(
                !text.contains(&self.token),
                "{what} contains the token:\n{text}"
            );
            for s in secrets {
                assert!(!text.contains(s), "{what} contains the secret {s}:\n{text}");
            }
        }
    }
}

fn nodes(status: &Value) -> &Vec<Value> {
    status["nodes"].as_array().expect("status lists nodes")
}

/// 20 nodes nothing can reach run the one-liner at once; all join, and
/// `edgeferry status` shows them joined by pull.
#[test]
fn pull_twenty_nodes_join_at_once() {
    let started = Instant::now();
    let site = PullSite::new(20);
    let set_up = started.elapsed();
    let (script_url, sha) = site.mirror.join_script().expect("join script line");
    assert_eq!(script_url, site.mirror.url("/join.sh"));
    assert_eq!(sha.len(), 64, "{sha}");
    let (_, code) = site.enroll(&["--uses", "20", "--expires", "1h"]);
    let line = site.one_liner(&code);
    // The one-liner downloads, checks the pinned sha256, and only then runs.
    assert!(
        line.contains(&sha) && line.contains("sha256sum -c"),
        "{line}"
    );
    assert!(
        !line
            .split('|')
            .skip(1)
            .any(|p| matches!(p.split_whitespace().next(), Some("sh" | "bash"))),
        "a bare curl | sh: {line}"
    );

    let joining = Instant::now();
    let outputs: Vec<(Output, Duration)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..20)
            .map(|i| {
                let site = &site;
                let line = &line;
                s.spawn(move || {
                    let t = Instant::now();
                    (site.console(i, line), t.elapsed())
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let joined_in = joining.elapsed();
    for (i, (out, _)) in outputs.iter().enumerate() {
        assert!(
            out.status.success(),
            "{}: the one-liner failed: {}",
            site.hosts.host(i).name,
            said(out)
        );
    }
    let slowest = outputs.iter().map(|(_, d)| *d).max().unwrap();
    for i in 0..20 {
        site.assert_joined(i);
    }

    let status = site.status_json();
    let listed = nodes(&status);
    assert_eq!(listed.len(), 20, "{status:#}");
    for n in listed {
        assert_eq!(n["mode"], "pull", "{n}");
        assert_eq!(n["state"], "joined", "{n}");
        assert_eq!(n["step"], "done", "{n}");
        assert!(n["error"].is_null(), "{n}");
        assert!(n["last_report"].is_string(), "{n}");
    }
    // One node per host, seen from its address, named with the prefix.
    let mut names = std::collections::BTreeSet::new();
    for h in site.hosts.hosts() {
        let n = listed
            .iter()
            .find(|n| n["host"] == h.ip.as_str())
            .unwrap_or_else(|| panic!("{} ({}) not in status: {status:#}", h.name, h.ip));
        let name = n["name"].as_str().unwrap();
        assert!(name.starts_with("pull-"), "{name} for {}", h.name);
        names.insert(name.to_string());
    }
    assert_eq!(names.len(), 20, "{status:#}");
    let table = site.status_table();
    eprintln!("{table}");
    assert!(table.contains("20 node(s): 20 joined"), "{table}");

    let consoles: Vec<String> = outputs.iter().map(|(o, _)| said(o)).collect();
    let mut texts: Vec<&str> = consoles.iter().map(String::as_str).collect();
    texts.push(&table);
    site.assert_no_secrets(&[&code], &texts);
    eprintln!(
        "pull: 20 nodes: site set up in {set_up:.2?}, joined at once in {joined_in:.2?} \
         (slowest console {slowest:.2?}), test {:.2?}",
        started.elapsed()
    );
}

/// A one-liner run on host `i` that the mirror refused: it fails, says
/// the mirror refused with 403, and nothing of a join happened.
fn assert_refused_on_console(site: &PullSite, i: usize, code: &str, why: &str) -> String {
    let out = site.console(i, &site.one_liner(code));
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success(),
        "{why}: the one-liner succeeded: {}",
        said(&out)
    );
    assert!(
        stderr.contains("403") && stderr.contains("refused"),
        "{why}: no refusal on stderr: {}",
        said(&out)
    );
    site.assert_untouched(i);
    said(&out)
}

/// Codes the mirror must refuse, a script changed in transit, and reports
/// that are malformed, oversized or from the wrong node: each refused,
/// nothing leaks, and the mirror keeps serving.
#[test]
fn pull_refuses_bad_codes_tampered_scripts_and_bad_reports() {
    let started = Instant::now();
    let mut site = PullSite::new(3);
    let set_up = started.elapsed();
    let (_, sha) = site.mirror.join_script().expect("join script line");
    let mut outputs: Vec<String> = Vec::new();
    let mut codes: Vec<String> = Vec::new();
    let refused = |(status, body): (u16, String), why: &str| {
        assert_eq!(status, 403, "{why}: {body}");
        assert!(
            !body.contains(&site.token),
            "{why}: the 403 body holds the token"
        );
        assert!(!body.contains("arg="), "{why}: {body}");
        body
    };

    // A code for one node: host 0 joins with it; then it is used up, for
    // host 1's console and for a direct request alike.
    let (_, once) = site.enroll(&["--uses", "1"]);
    codes.push(once.clone());
    let out = site.console(0, &site.one_liner(&once));
    assert!(out.status.success(), "host 0: {}", said(&out));
    outputs.push(said(&out));
    site.assert_joined(0);
    outputs.push(assert_refused_on_console(&site, 1, &once, "used-up code"));
    outputs.push(refused(
        site.post_enroll(&once, "direct-used"),
        "used-up code",
    ));

    // Used up by direct requests: the first gets the site's parameters
    // (the token among them), the second a 403.
    let (_, direct) = site.enroll(&["--uses", "1", "--expires", "10m"]);
    codes.push(direct.clone());
    let (status, body) = site.post_enroll(&direct, "direct-a");
    assert_eq!(status, 200, "{body}");
    let field = |name: &str| -> String {
        body.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}=")))
            .unwrap_or_else(|| panic!("no {name}= in the enrollment answer"))
            .to_string()
    };
    let (node_a, key_a) = (field("node"), field("key"));
    assert!(
        body.lines()
            .any(|l| l.starts_with("arg=") && l.contains(&site.token)),
        "the enrollment answer passes the token to keadm"
    );
    outputs.push(refused(
        site.post_enroll(&direct, "direct-b"),
        "used-up code",
    ));

    // Wrong, expired, revoked, none.
    let wrong = "0123456789abcdef0123456789abcdef";
    outputs.push(refused(
        site.post_enroll(wrong, "direct-wrong"),
        "wrong code",
    ));
    outputs.push(assert_refused_on_console(&site, 1, wrong, "wrong code"));
    let (_, expired) = site.enroll(&["--expires", "1s", "--uses", "5"]);
    codes.push(expired.clone());
    let (revoked_id, revoked) = site.enroll(&["--uses", "5"]);
    codes.push(revoked.clone());
    run_ok(
        edgeferry()
            .args(["enroll", "revoke", "--site-dir"])
            .arg(&site.site)
            .arg(&revoked_id),
    );
    std::thread::sleep(Duration::from_secs(2));
    outputs.push(refused(
        site.post_enroll(&expired, "direct-expired"),
        "expired code",
    ));
    outputs.push(assert_refused_on_console(
        &site,
        1,
        &expired,
        "expired code",
    ));
    outputs.push(refused(
        site.post_enroll(&revoked, "direct-revoked"),
        "revoked code",
    ));
    outputs.push(assert_refused_on_console(
        &site,
        1,
        &revoked,
        "revoked code",
    ));
    outputs.push(refused(
        site.http(
            "POST",
            "/v1/enroll",
            &["X-Edgeferry-Hostname: direct-none".into()],
            Some(b""),
        ),
        "no code",
    ));
    // Codes are kept hashed: neither the file nor the listing shows them.
    let list = run_ok(
        edgeferry()
            .args(["enroll", "list", "--site-dir"])
            .arg(&site.site),
    );
    let list_json = run_ok(
        edgeferry()
            .args(["enroll", "list", "--json", "--site-dir"])
            .arg(&site.site),
    );
    assert!(list.stdout.contains(&revoked_id), "{}", list.stdout);
    outputs.push(list.stdout);
    outputs.push(list_json.stdout);

    // A byte of /join.sh changed in transit: the sha256 check stops it
    // before it runs, so the code is not even spent.
    let proxy = TamperProxy::start(site.hosts.control_ip(), &site.mirror.addr).unwrap();
    let (_, spare) = site.enroll(&["--uses", "1"]);
    codes.push(spare.clone());
    let through_proxy = site.one_liner(&spare).replace(
        &format!("http://{}/", site.mirror.addr),
        &format!("http://{}/", proxy.addr()),
    );
    assert!(through_proxy.contains(proxy.addr()), "{through_proxy}");
    let out = site.console(2, &through_proxy);
    outputs.push(said(&out));
    assert!(!out.status.success(), "tampered script ran: {}", said(&out));
    assert_eq!(proxy.tampered(), 1, "{:?}", proxy.seen());
    assert_eq!(proxy.seen(), ["GET /join.sh -> 200"]);
    let text = said(&out);
    assert!(
        text.contains("FAILED"),
        "not stopped by sha256sum -c: {text}"
    );
    let tmp = site.hosts.private(2, "/tmp");
    let script = list_files(&tmp)
        .into_iter()
        .find(|f| f.ends_with("/join.sh"))
        .expect("the one-liner downloaded join.sh into a mktemp directory");
    let fetched = std::fs::read(tmp.join(script)).unwrap();
    assert_ne!(sha256_hex(&fetched), sha, "the proxy changed nothing");
    site.assert_untouched(2);
    let work = list_files(&site.hosts.private(2, "/var/lib/edgeferry"));
    assert!(work.is_empty(), "the tampered script ran: {work:?}");
    let (status, body) = site.post_enroll(&spare, "direct-spare");
    assert_eq!(status, 200, "the tampered run spent the code: {body}");
    let node_b = body
        .lines()
        .find_map(|l| l.strip_prefix("node="))
        .unwrap()
        .to_string();
    drop(proxy);

    // Reports: bounded, well-formed, from enrolled nodes only.
    let report = |node: &str, step: &str, status: &str, message: &str| -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({
            "node": node, "step": step, "status": status, "message": message
        }))
        .unwrap()
    };
    let k = Some(key_a.as_str());
    assert_eq!(
        site.report(k, &report(&node_a, "preflight", "started", ""), &[]),
        204
    );
    let mut big = report(&node_a, "preflight", "failed", "x");
    big.resize(1 << 20, b' ');
    assert_eq!(site.report(k, &big, &[]), 413, "1 MiB report");
    assert_eq!(
        site.report(k, &big, &["Transfer-Encoding: chunked"]),
        413,
        "1 MiB chunked report"
    );
    let mut just_over = report(&node_a, "preflight", "failed", "x");
    just_over.resize(4097, b' ');
    assert_eq!(site.report(k, &just_over, &[]), 413, "4097-byte report");
    assert_eq!(site.report(k, b"{\"node\": \"", &[]), 400, "garbage JSON");
    assert_eq!(
        site.report(k, b"\xff\xfe\x00binary", &[]),
        400,
        "binary body"
    );
    assert_eq!(site.report(k, b"", &[]), 400, "empty body");
    assert_eq!(site.report(k, b"[1,2,3]", &[]), 400, "a JSON array");
    let unknown_field =
        format!(r#"{{"node":"{node_a}","step":"done","status":"ok","message":"","extra":1}}"#);
    assert_eq!(
        site.report(k, unknown_field.as_bytes(), &[]),
        400,
        "unknown field"
    );
    assert_eq!(
        site.report(k, &report(&node_a, "reboot", "ok", ""), &[]),
        400,
        "unknown step"
    );
    assert_eq!(
        site.report(k, &report(&node_a, "done", "great", ""), &[]),
        400,
        "unknown status"
    );
    let long = "m".repeat(1025);
    assert_eq!(
        site.report(k, &report(&node_a, "done", "failed", &long), &[]),
        400,
        "long message"
    );
    assert_eq!(
        site.report(k, &report(&node_b, "done", "ok", ""), &[]),
        403,
        "another node's name"
    );
    assert_eq!(
        site.report(k, &report("no-such-node", "done", "ok", ""), &[]),
        403,
        "unknown node"
    );
    assert_eq!(
        site.report(None, &report(&node_a, "done", "ok", ""), &[]),
        403,
        "no key"
    );
    assert_eq!(
        site.report(Some(wrong), &report(&node_a, "done", "ok", ""), &[]),
        403,
        "wrong key"
    );
    assert_eq!(
        site.report(Some(&once), &report(&node_a, "done", "ok", ""), &[]),
        403,
        "an enrollment code as the key"
    );

    // The mirror is unharmed: it serves, and takes a valid report, whose
    // message is scrubbed of the token should a node send it.
    assert!(
        site.mirror.process.0.try_wait().unwrap().is_none(),
        "the mirror died"
    );
    assert_eq!(site.http("GET", "/v2/", &[], None).0, 200);
    let (status, script) = site.http("GET", "/join.sh", &[], None);
    assert_eq!(status, 200);
    assert_eq!(sha256_hex(script.as_bytes()), sha);
    let leaky = format!("keadm said --token={}", site.token);
    assert_eq!(
        site.report(k, &report(&node_a, "keadm_join", "failed", &leaky), &[]),
        204
    );
    let reports = std::fs::read_to_string(site.site.join("reports.jsonl")).unwrap();
    let mine: Vec<Value> = reports
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|r| r["node"] == node_a.as_str())
        .collect();
    assert_eq!(
        mine.len(),
        2,
        "only the two valid reports were kept:\n{reports}"
    );

    let status = site.status_json();
    let listed = nodes(&status);
    let find = |name: &str| {
        listed
            .iter()
            .find(|n| n["name"] == name)
            .unwrap_or_else(|| panic!("{name} not in status {status:#}"))
    };
    let host0 = listed
        .iter()
        .find(|n| n["host"] == site.hosts.host(0).ip.as_str())
        .unwrap_or_else(|| panic!("host 0 not in status {status:#}"));
    assert_eq!(host0["state"], "joined", "{host0}");
    assert_eq!(host0["mode"], "pull");
    let a = find(&node_a);
    assert_eq!(a["state"], "failed", "{a}");
    assert_eq!(a["step"], "keadm_join", "{a}");
    assert!(a["error"].as_str().unwrap().contains("keadm said"), "{a}");
    let table = site.status_table();
    eprintln!("{table}");
    outputs.push(table);
    outputs.push(status.to_string());

    // The access log has a line per request, refusals included.
    let log = access_log(&std::fs::read_to_string(&site.access_log).unwrap());
    for l in &log {
        assert!(
            l["method"].is_string() && l["path"].is_string() && l["status"].is_u64(),
            "{l}"
        );
    }
    let logged = |path: &str, status: u64| {
        log.iter()
            .filter(|l| l["path"] == path && l["status"] == status)
            .count()
    };
    assert!(logged("/v1/enroll", 403) >= 10, "{log:?}");
    assert!(logged("/v1/report", 413) >= 3 && logged("/v1/report", 400) >= 8);

    // A mirror without --site-dir has no pull mode.
    let plain = Served::start(&site.store);
    for path in ["/join.sh", "/v1/enroll", "/v1/report"] {
        let method = if path == "/join.sh" { "GET" } else { "POST" };
        let ran = run_ok(Command::new("curl").args([
            "-sS",
            "--noproxy",
            "*",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-X",
            method,
            &plain.url(path),
        ]));
        // POST to a path it does not know: 405, like any non-GET.
        let want: &[&str] = if method == "GET" {
            &["404"]
        } else {
            &["404", "405"]
        };
        assert!(
            want.contains(&ran.stdout.as_str()),
            "{method} {path} without --site-dir: {}",
            ran.stdout
        );
    }
    assert!(plain.join_script().is_none() && plain.one_liner().is_none());
    drop(plain);

    let texts: Vec<&str> = outputs.iter().map(String::as_str).collect();
    let mut secrets: Vec<&str> = codes.iter().map(String::as_str).collect();
    secrets.push(&key_a);
    site.assert_no_secrets(&secrets, &texts);
    eprintln!(
        "pull refusals: site set up in {set_up:.2?}, test {:.2?}",
        started.elapsed()
    );
}
