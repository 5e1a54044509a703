//! Pull-mode upgrades: two hosts nothing can reach join at v1.22 with
//! `/join.sh`, the v1.23.1 bundle is in the same store, and each host
//! upgrades itself with the `/upgrade.sh` one-liner `serve` prints: only
//! with an upgrade code, under the same version rules as `edgeferry
//! upgrade`, rolled back when the stand-in keadm's upgrade fails, every
//! step reported and shown by `edgeferry status`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use edgeferry_tests::hosts::TestHosts;
use edgeferry_tests::{
    edgeferry, keygen, list_files, require_tool, run, run_ok, said, sample_bundle, sha256_hex,
    Served,
};
use serde_json::Value;

const FROM: &str = "v1.22.1";
const TO: &str = "v1.23.1";
const TOKEN_ENV: &str = "EF_PULL_UPGRADE_TOKEN";

/// A store with both versions, two hosts without sshd, a site joining at
/// [`FROM`], and the mirror in pull mode.
struct Site {
    tmp: tempfile::TempDir,
    site: PathBuf,
    access_log: PathBuf,
    hosts: TestHosts,
    mirror: Served,
    token: String,
}

impl Site {
    fn new() -> Site {
        require_tool("curl", "curl");
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let (key, public) = keygen(dir);
        let store = dir.join("store");
        for (version, epoch) in [(FROM, 1_700_000_000), (TO, 1_700_000_100)] {
            let bundle = sample_bundle("amd64", version, &key, &dir.join("out"), epoch);
            run_ok(
                edgeferry()
                    .arg("load")
                    .arg(&bundle)
                    .arg("--key")
                    .arg(&public)
                    .arg("--store")
                    .arg(&store),
            );
        }
        let hosts = TestHosts::create_without_sshd(2).unwrap();
        let site = dir.join("site");
        std::fs::create_dir(&site).unwrap();
        std::fs::write(
            site.join("site.yaml"),
            format!(
                "cloudcore: {}\ntoken: {{env: {TOKEN_ENV}}}\nname_prefix: pull\n\
                 kubeedge_version: {FROM}\nsettle: 0\n",
                hosts.cloudcore()
            ),
        )
        .unwrap();
        let access_log = dir.join("access.log");
        let token = hosts.token();
        let mirror = Served::start_site(
            &store,
            hosts.control_ip(),
            &site,
            &["--access-log", access_log.to_str().unwrap()],
            &[(TOKEN_ENV, token.as_str())],
        );
        Site {
            tmp,
            site,
            access_log,
            hosts,
            mirror,
            token,
        }
    }

    /// The banner's `upgrade script: <url> sha256 <hex> (to KubeEdge v)` and
    /// `upgrade one-liner:` lines (printed after the join's).
    fn upgrade_lines(&self) -> (String, String, String) {
        let find = |prefix: &str| {
            self.mirror
                .stderr()
                .lines()
                .find_map(|l| l.strip_prefix(prefix).map(str::to_string))
        };
        edgeferry_tests::wait_for(
            "the upgrade one-liner in the banner",
            Duration::from_secs(10),
            || find("upgrade one-liner: ").is_some(),
        );
        let script = find("upgrade script: ").unwrap();
        let (url, rest) = script.split_once(" sha256 ").unwrap();
        let (sha, to) = rest.split_once(' ').unwrap();
        assert_eq!(to, format!("(to KubeEdge {TO})"), "{script}");
        (
            url.to_string(),
            sha.to_string(),
            find("upgrade one-liner: ").unwrap(),
        )
    }

    /// `edgeferry enroll create --site-dir D <args> --json`: the code.
    fn code(&self, args: &[&str]) -> String {
        let ran = run_ok(
            edgeferry()
                .args(["enroll", "create", "--json", "--site-dir"])
                .arg(&self.site)
                .args(args),
        );
        let v: Value = serde_json::from_str(&ran.stdout).unwrap();
        v["code"].as_str().unwrap().to_string()
    }

    /// How many uses of each code were spent, in creation order.
    fn uses(&self) -> Vec<u64> {
        let ran = run_ok(
            edgeferry()
                .args(["enroll", "list", "--json", "--site-dir"])
                .arg(&self.site),
        );
        let v: Value = serde_json::from_str(&ran.stdout).unwrap();
        v["codes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["uses"].as_u64().unwrap())
            .collect()
    }

    /// Runs `line` with `code` for `<CODE>` on every host in `hosts` at once.
    fn consoles(&self, hosts: &[usize], line: &str, code: &str) -> Vec<Output> {
        let line = line.replace("<CODE>", code);
        std::thread::scope(|s| {
            let handles: Vec<_> = hosts
                .iter()
                .map(|&i| {
                    let line = &line;
                    s.spawn(move || self.hosts.run_on(i, line).unwrap())
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        })
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

    /// `curl -X POST` to the mirror: (status, body).
    fn post(&self, path: &str, headers: &[String]) -> (u16, String) {
        let mut cmd = Command::new("curl");
        cmd.args(["-sS", "--noproxy", "*", "-m", "30", "-X", "POST"])
            .args(["-o", "-", "-w", "\n%{http_code}", "--data-binary", ""]);
        for h in headers {
            cmd.arg("-H").arg(h);
        }
        let ran = run(cmd.arg(self.mirror.url(path)));
        let (body, code) = ran.stdout.rsplit_once('\n').unwrap();
        (code.trim().parse().unwrap_or(0), body.to_string())
    }

    fn status(&self) -> Vec<Value> {
        let ran = run_ok(
            edgeferry()
                .args(["status", "--json", "--site-dir"])
                .arg(&self.site),
        );
        let v: Value = serde_json::from_str(&ran.stdout).unwrap();
        v["nodes"].as_array().unwrap().clone()
    }

    /// Host `i`'s node in `status --json`.
    fn node(&self, status: &[Value], i: usize) -> Value {
        let ip = &self.hosts.host(i).ip;
        status
            .iter()
            .find(|n| n["host"] == ip.as_str())
            .unwrap_or_else(|| panic!("host {i} not in status {status:?}"))
            .clone()
    }

    /// The upgrade reports of `node`: (step, status, message).
    fn upgrade_reports(&self, node: &str) -> Vec<(String, String, String)> {
        std::fs::read_to_string(self.site.join("reports.jsonl"))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            .filter(|r| r["node"] == node && r["to"] == TO)
            .map(|r| {
                let s = |k: &str| r[k].as_str().unwrap().to_string();
                (s("step"), s("status"), s("message"))
            })
            .collect()
    }
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Shellcheck's verdict on a script served by the mirror, as POSIX sh.
fn shellcheck(path: &Path) {
    require_tool("shellcheck", "shellcheck");
    let ran = run(Command::new("shellcheck")
        .args(["-s", "sh", "-S", "warning"])
        .arg(path));
    assert_eq!(
        ran.code,
        Some(0),
        "shellcheck {}:\n{}",
        path.display(),
        ran.stdout
    );
}

/// Two hosts joined at v1.22 by pull upgrade themselves with the printed
/// one-liner and an upgrade code: one to v1.23.1, one whose keadm upgrade
/// fails rolled back to v1.22.1; wrong codes, an enrollment code and the
/// version rules refuse without spending anything.
#[test]
fn pull_nodes_upgrade_themselves_and_a_failed_one_rolls_back() {
    let started = Instant::now();
    let site = Site::new();
    let (url, sha, line) = site.upgrade_lines();
    assert_eq!(url, site.mirror.url("/upgrade.sh"));
    assert_eq!(
        line,
        format!(
            "d=$(mktemp -d) && curl -fsS -o \"$d/upgrade.sh\" {url} && echo \"{sha}  $d/upgrade.sh\" \
             | sha256sum -c - && sh \"$d/upgrade.sh\" <CODE>"
        )
    );

    // Joined at v1.22 by /join.sh.
    let join_line = site.mirror.one_liner().unwrap();
    let join_code = site.code(&["--uses", "2"]);
    for (i, out) in site
        .consoles(&[0, 1], &join_line, &join_code)
        .iter()
        .enumerate()
    {
        assert!(out.status.success(), "join on host {i}: {}", said(out));
        assert_eq!(site.version_on(i), (FROM.to_string(), true));
    }
    let joined_in = started.elapsed();

    // The scripts as served: the printed sha256, and clean under shellcheck.
    let dir = site.tmp.path();
    for (name, want) in [("upgrade.sh", Some(sha.as_str())), ("join.sh", None)] {
        let path = dir.join(name);
        run_ok(
            Command::new("curl")
                .args(["-fsS", "--noproxy", "*", "-o"])
                .arg(&path)
                .arg(site.mirror.url(&format!("/{name}"))),
        );
        if let Some(sha) = want {
            assert_eq!(sha256_hex(&std::fs::read(&path).unwrap()), sha);
        }
        shellcheck(&path);
    }
    let script = std::fs::read_to_string(dir.join("upgrade.sh")).unwrap();
    assert!(!script.contains(&site.token) && !script.contains(&join_code));

    // Refused without spending anything: a wrong code, an enrollment code
    // (one with a use left), and the version rules; an upgrade code does
    // not enroll.
    let spare_join = site.code(&["--uses", "1"]);
    let up = site.code(&["--upgrade", "--uses", "2"]);
    for (code, why) in [
        ("0123456789abcdef0123456789abcdef", "a wrong code"),
        (spare_join.as_str(), "an enrollment code"),
    ] {
        let out = &site.consoles(&[0], &line, code)[0];
        assert_eq!(out.status.code(), Some(1), "{why}: {}", said(out));
        assert!(
            stderr(out).contains(
                "the mirror refused the upgrade (HTTP 403: upgrade refused: not a valid upgrade code)"
            ),
            "{why}: {}",
            said(out)
        );
    }
    let (status, body) = site.post(
        "/v1/enroll",
        &[
            format!("X-Edgeferry-Code: {up}"),
            "X-Edgeferry-Hostname: x".into(),
        ],
    );
    assert_eq!(
        (status, body.trim()),
        (403, "enrollment refused: not a valid enrollment code")
    );
    let (status, body) = site.post(
        "/v1/upgrade",
        &[
            format!("X-Edgeferry-Code: {up}"),
            "X-Edgeferry-Hostname: x".into(),
            "X-Edgeferry-Version: v1.21.0".into(),
        ],
    );
    assert_eq!(status, 409, "{body}");
    assert!(
        body.starts_with(
            "upgrade refused: skip_minor_refused: v1.21.0 to v1.23.1 skips a minor version"
        ),
        "{body}"
    );
    assert_eq!(site.uses(), [2, 0, 0], "nothing spent by the refusals");
    assert_eq!(site.version_on(0), (FROM.to_string(), true));

    // Both at once; host 1's keadm upgrade fails and it is rolled back.
    site.hosts.set_upgrade_fault(1, Some("fail"));
    let upgrading = Instant::now();
    let outs = site.consoles(&[0, 1], &line, &up);
    let upgraded_in = upgrading.elapsed();
    assert_eq!(outs[0].status.code(), Some(0), "{}", said(&outs[0]));
    assert!(said(&outs[0]).contains(&format!(" upgraded to {TO}")));
    assert_eq!(site.version_on(0), (TO.to_string(), true));
    assert_eq!(outs[1].status.code(), Some(2), "{}", said(&outs[1]));
    assert!(
        stderr(&outs[1]).contains(&format!(
            "edgeferry upgrade.sh: failed, rolled back to {FROM}: "
        )),
        "{}",
        said(&outs[1])
    );
    assert_eq!(site.version_on(1), (FROM.to_string(), true));
    assert_eq!(site.uses(), [2, 0, 2]);

    // Every step reported, under the node's enrolled name; status shows it.
    let status = site.status();
    let (n0, n1) = (site.node(&status, 0), site.node(&status, 1));
    let ok = |steps: &[&str]| -> Vec<(String, String)> {
        steps
            .iter()
            .flat_map(|s| {
                [
                    (s.to_string(), "started".into()),
                    (s.to_string(), "ok".into()),
                ]
            })
            .collect()
    };
    let before = ["upgrade_preflight", "containerd", "fetch", "keadm_backup"];
    let pairs = |node: &Value| -> Vec<(String, String)> {
        site.upgrade_reports(node["name"].as_str().unwrap())
            .into_iter()
            .map(|(s, st, _)| (s, st))
            .collect()
    };
    let mut want = ok(&before);
    want.extend(ok(&["keadm_upgrade", "upgrade_postcheck"]));
    want.push(("done".into(), "ok".into()));
    assert_eq!(pairs(&n0), want);
    let mut want = ok(&before);
    want.push(("keadm_upgrade".into(), "started".into()));
    want.push(("keadm_upgrade".into(), "failed".into()));
    want.extend(ok(&["keadm_rollback", "rollback_postcheck"]));
    want.push(("done".into(), "failed".into()));
    assert_eq!(pairs(&n1), want);
    let last = site.upgrade_reports(n1["name"].as_str().unwrap());
    let done = &last.last().unwrap().2;
    // The stand-in keadm's last line when its upgrade fault is set.
    assert_eq!(
        done,
        &format!(
            "failed, rolled back to {FROM}: Error: failed to start edgecore, err: exit status 1"
        )
    );
    for (n, version, upgrade) in [
        (&n0, TO, format!("upgraded to {TO}")),
        (&n1, FROM, format!("rolled back to {FROM}")),
    ] {
        assert_eq!(n["mode"], "pull", "{n}");
        assert_eq!(n["state"], "joined", "{n}");
        assert_eq!(n["version"], version, "{n}");
        assert_eq!(n["upgrade"], upgrade.as_str(), "{n}");
    }
    assert_eq!(status.len(), 2, "the upgrade kept each node's record");

    // Host 0 again, with a fresh code: up to date, nothing spent.
    let again = site.code(&["--upgrade"]);
    let out = &site.consoles(&[0], &line, &again)[0];
    assert_eq!(out.status.code(), Some(0), "{}", said(out));
    assert!(said(out).contains(&format!("runs {TO} already: nothing to do")));
    assert_eq!(site.uses(), [2, 0, 2, 0]);

    // No code, key or token in the mirror's logs or the site directory.
    let mut texts = vec![
        std::fs::read_to_string(&site.access_log).unwrap(),
        site.mirror.stderr(),
        site.mirror.stdout(),
    ];
    for rel in list_files(&site.site) {
        texts.push(std::fs::read_to_string(site.site.join(rel)).unwrap());
    }
    for secret in [&site.token, &join_code, &spare_join, &up, &again] {
        for t in &texts {
            assert!(!t.contains(secret.as_str()), "a secret leaked:\n{t}");
        }
    }
    eprintln!(
        "pull upgrade: joined in {joined_in:.2?}, upgraded in {upgraded_in:.2?}, test {:.2?}",
        started.elapsed()
    );
}
