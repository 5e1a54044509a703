//! Pull mode's endpoints under abuse from LAN clients and hostile nodes:
//! refused guesses write nothing and all read alike, guessing and report
//! floods are throttled per client and per node, an enrolled name cannot be
//! taken over, node keys can be revoked, and `reports.jsonl` stays bounded.
//! The mirror listens on loopback; a second client address is 127.0.0.2.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use edgeferry_tests::{edgeferry, loaded_sample_store, require_tool, run, run_ok, Served};
use serde_json::Value;

const VERSION: &str = "v1.23.1";
const TOKEN: &str = "5c2e9b7a01d4f836.eyJhbGciOiJIUzI1NiJ9.edgeferry-harden-token";
const TOKEN_ENV: &str = "EF_HARDEN_PULL_TOKEN";
/// The one body every refused code gets, whatever the reason.
const REFUSED: &str = "enrollment refused: not a valid enrollment code";
/// `Config::default()`: refused requests one client address may make at once.
const CLIENT_BURST: usize = 20;
/// `Config::default()`: reports one node may send at once.
const NODE_BURST: usize = 64;
/// `Config::default()`: seconds per refused request regained.
const CLIENT_REFILL_SECS: f64 = 3.0;
/// `Config::default()`: seconds per report regained.
const NODE_REFILL_SECS: f64 = 1.0;
/// `Config::default()`: reports kept beyond each node's latest.
const REPORT_HISTORY: usize = 1000;

struct Site {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    mirror: Served,
}

impl Site {
    /// A loaded store and a site directory; `prepare` may fill the site
    /// directory before the mirror starts.
    fn new(prepare: impl FnOnce(&Path)) -> Site {
        require_tool("curl", "curl");
        let tmp = tempfile::tempdir().unwrap();
        let store = loaded_sample_store(tmp.path(), "amd64", VERSION);
        let dir = tmp.path().join("site");
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(
            dir.join("site.yaml"),
            format!("cloudcore: 127.0.0.1:10000\ntoken: {{env: {TOKEN_ENV}}}\nname_prefix: pull\n"),
        )
        .unwrap();
        prepare(&dir);
        let mirror = Served::start_site(&store, "127.0.0.1", &dir, &[], &[(TOKEN_ENV, TOKEN)]);
        Site {
            _tmp: tmp,
            dir,
            mirror,
        }
    }

    /// `edgeferry enroll <args> --site-dir D`, which must succeed.
    fn enroll_cmd(&self, args: &[&str]) -> String {
        run_ok(
            edgeferry()
                .arg("enroll")
                .args(args)
                .arg("--site-dir")
                .arg(&self.dir),
        )
        .stdout
    }

    /// A new code: (id, code).
    fn code(&self, args: &[&str]) -> (String, String) {
        let mut all = vec!["create", "--json"];
        all.extend_from_slice(args);
        let v: Value = serde_json::from_str(&self.enroll_cmd(&all)).unwrap();
        (
            v["id"].as_str().unwrap().to_string(),
            v["code"].as_str().unwrap().to_string(),
        )
    }

    fn list(&self) -> Value {
        serde_json::from_str(&self.enroll_cmd(&["list", "--json"])).unwrap()
    }

    /// curl POSTing `body` with `headers` from the address `from`.
    fn curl_post(&self, from: &str, headers: &[String], body: &[u8]) -> Command {
        let file = self
            .dir
            .parent()
            .unwrap()
            .join(format!("body-{}", edgeferry_tests::sha256_hex(body)));
        std::fs::write(&file, body).unwrap();
        let mut cmd = Command::new("curl");
        cmd.args(["-sS", "--noproxy", "*", "-m", "30", "--interface", from]);
        for h in headers {
            cmd.arg("-H").arg(h);
        }
        cmd.arg("--data-binary").arg(format!("@{}", file.display()));
        cmd
    }

    /// One curl request from `from`: (status, Retry-After, body).
    fn request(&self, from: &str, path: &str, headers: &[String], body: &[u8]) -> Reply {
        let mut cmd = self.curl_post(from, headers, body);
        cmd.args(["-o", "-", "-w", "\n%{http_code} %header{retry-after}"])
            .arg(self.mirror.url(path));
        let ran = run(&mut cmd);
        let (body, tail) = ran
            .stdout
            .rsplit_once('\n')
            .unwrap_or_else(|| panic!("curl {path}: {}", ran.stderr));
        let (code, retry) = tail.split_once(' ').unwrap_or((tail, ""));
        Reply {
            status: code.parse().unwrap_or(0),
            retry_after: retry.trim().to_string(),
            body: body.to_string(),
        }
    }

    /// `n` identical POSTs over one curl process (fast, one connection):
    /// each one's (status, Retry-After).
    fn flood(
        &self,
        from: &str,
        path: &str,
        headers: &[String],
        body: &[u8],
        n: usize,
    ) -> Vec<(u16, String)> {
        let mut cmd = self.curl_post(from, headers, body);
        cmd.args(["-w", "%{http_code} %header{retry-after}\n"]);
        for _ in 0..n {
            cmd.args(["-o", "/dev/null"]).arg(self.mirror.url(path));
        }
        let ran = run(&mut cmd);
        let got: Vec<(u16, String)> = ran
            .stdout
            .lines()
            .map(|l| {
                let (code, retry) = l.split_once(' ').unwrap_or((l, ""));
                (code.parse().unwrap_or(0), retry.trim().to_string())
            })
            .collect();
        assert_eq!(got.len(), n, "{}", ran.stderr);
        got
    }

    fn enroll(&self, from: &str, code: &str, hostname: &str) -> Reply {
        self.request(
            from,
            "/v1/enroll",
            &[
                format!("X-Edgeferry-Code: {code}"),
                format!("X-Edgeferry-Hostname: {hostname}"),
            ],
            b"",
        )
    }

    fn report(&self, key: &str, node: &str, step: &str, status: &str) -> Reply {
        self.request(
            "127.0.0.1",
            "/v1/report",
            &[
                format!("Authorization: Bearer {key}"),
                "Content-Type: application/json".into(),
            ],
            &report_body(node, step, status),
        )
    }

    fn status_json(&self) -> Value {
        let ran = run_ok(
            edgeferry()
                .args(["status", "--json", "--site-dir"])
                .arg(&self.dir),
        );
        serde_json::from_str(&ran.stdout).unwrap()
    }
}

struct Reply {
    status: u16,
    retry_after: String,
    body: String,
}

impl Reply {
    fn field(&self, name: &str) -> String {
        self.body
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name}=")))
            .unwrap_or_else(|| panic!("no {name}= in {}", self.body))
            .to_string()
    }
}

/// The first `burst` statuses are `first`; after them only as many more
/// pass as the bucket regained while the flood ran, the rest are 429.
fn assert_throttled(statuses: &[u16], burst: usize, first: u16, took: f64, refill_secs: f64) {
    assert!(
        statuses[..burst].iter().all(|s| *s == first),
        "{statuses:?}"
    );
    let rest = &statuses[burst..];
    let passed = rest.iter().filter(|s| **s != 429).count();
    let regained = (took / refill_secs).ceil() as usize + 1;
    assert!(
        rest.iter().all(|s| *s == 429 || *s == first) && passed <= regained,
        "{passed} passed after the burst in {took:.1} s (at most {regained}): {statuses:?}"
    );
}

fn report_body(node: &str, step: &str, status: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "node": node, "step": step, "status": status, "message": ""
    }))
    .unwrap()
}

/// (inode, mtime in ns, bytes) of a file.
fn fingerprint(path: &Path) -> (u64, i128, Vec<u8>) {
    let meta = std::fs::metadata(path).unwrap();
    let mtime = meta.mtime() as i128 * 1_000_000_000 + meta.mtime_nsec() as i128;
    (meta.ino(), mtime, std::fs::read(path).unwrap())
}

/// Unknown, used-up, expired and revoked codes (and none) get one and the
/// same 403 body, the reason goes to the mirror's log, and none of them
/// writes `enrollments.json`.
#[test]
fn refused_enrollments_write_nothing_and_read_alike() {
    let site = Site::new(|_| {});
    let (_, once) = site.code(&["--uses", "1"]);
    let first = site.enroll("127.0.0.1", &once, "first");
    assert_eq!(first.status, 200, "{}", first.body);
    let (_, expired) = site.code(&["--uses", "3", "--expires", "1s"]);
    let (revoked_id, revoked) = site.code(&["--uses", "3"]);
    site.enroll_cmd(&["revoke", &revoked_id]);
    std::thread::sleep(std::time::Duration::from_secs(2));

    let file = site.dir.join("enrollments.json");
    let before = fingerprint(&file);
    std::thread::sleep(std::time::Duration::from_millis(20));
    let unknown = "0123456789abcdef0123456789abcdef";
    for (code, why) in [
        (unknown, "unknown code"),
        (once.as_str(), "used-up code"),
        (expired.as_str(), "expired code"),
        (revoked.as_str(), "revoked code"),
    ] {
        let r = site.enroll("127.0.0.1", code, "guess");
        assert_eq!((r.status, r.body.trim_end()), (403, REFUSED), "{why}");
        assert!(!r.body.contains(TOKEN), "{why}");
    }
    let none = site.request(
        "127.0.0.1",
        "/v1/enroll",
        &["X-Edgeferry-Hostname: guess".into()],
        b"",
    );
    assert_eq!(
        (none.status, none.body.trim_end()),
        (403, REFUSED),
        "no code"
    );
    let after = fingerprint(&file);
    assert_eq!(before.0, after.0, "enrollments.json was replaced");
    assert_eq!(before.1, after.1, "enrollments.json was written");
    assert_eq!(before.2, after.2, "enrollments.json changed");

    // The operator's log tells the reasons apart; it never holds the code.
    // The mirror writes each line before it answers, but the harness reads
    // its stderr on another thread: wait (bounded) for the last one.
    let reasons = ["unknown code", "used up", "expired", "revoked", "no code"];
    let logged = |log: &str| {
        reasons.iter().all(|reason| {
            log.lines()
                .any(|l| l.contains("enrollment from 127.0.0.1") && l.contains(reason))
        })
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !logged(&site.mirror.stderr()) && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let log = site.mirror.stderr();
    for reason in reasons {
        assert!(
            log.lines()
                .any(|l| l.contains("enrollment from 127.0.0.1") && l.contains(reason)),
            "no {reason:?} in the mirror's log:\n{log}"
        );
    }
    for code in [unknown, &once, &expired, &revoked] {
        assert!(!log.contains(code), "the log holds a code:\n{log}");
    }
}

/// One client address guessing codes or keys is throttled after a burst
/// (429 with Retry-After, even for a valid code); another address is not.
#[test]
fn guessing_is_throttled_per_client_address() {
    let site = Site::new(|_| {});
    let (_, code) = site.code(&["--uses", "2"]);
    let started = std::time::Instant::now();
    let guesses = site.flood(
        "127.0.0.1",
        "/v1/enroll",
        &["X-Edgeferry-Code: 0123456789abcdef0123456789abcdef".into()],
        b"",
        CLIENT_BURST + 30,
    );
    let took = started.elapsed().as_secs_f64();
    let statuses: Vec<u16> = guesses.iter().map(|g| g.0).collect();
    assert_throttled(&statuses, CLIENT_BURST, 403, took, CLIENT_REFILL_SECS);
    let throttled = guesses.iter().find(|g| g.0 == 429).unwrap();
    let wait: u64 = throttled.1.parse().expect("Retry-After in seconds");
    assert!((1..=60).contains(&wait), "Retry-After {wait}");

    // The same address with a valid code still waits; its key guesses too.
    let valid = site.enroll("127.0.0.1", &code, "patient");
    assert_eq!(valid.status, 429, "{}", valid.body);
    assert!(!valid.body.contains("key="), "{}", valid.body);
    let keyed = site.report("0123", "pull-patient", "done", "ok");
    assert_eq!(keyed.status, 429, "{}", keyed.body);
    assert!(!keyed.retry_after.is_empty());

    // Another client address is untouched by the first one's guesses.
    let other = site.enroll("127.0.0.2", &code, "other");
    assert_eq!(other.status, 200, "{}", other.body);
    let started = std::time::Instant::now();
    let wrong_keys = site.flood(
        "127.0.0.2",
        "/v1/report",
        &["Authorization: Bearer 0123456789abcdef".into()],
        &report_body("pull-other", "done", "ok"),
        CLIENT_BURST + 10,
    );
    let took = started.elapsed().as_secs_f64();
    let statuses: Vec<u16> = wrong_keys.iter().map(|g| g.0).collect();
    assert_throttled(&statuses, CLIENT_BURST, 403, took, CLIENT_REFILL_SECS);
}

/// A second node claiming an enrolled name gets 409 and takes nothing (the
/// first node's key keeps working, the code's use is not spent) until the
/// operator resets the name on purpose.
#[test]
fn an_enrolled_name_is_not_taken_over() {
    let site = Site::new(|_| {});
    let (id, code) = site.code(&["--uses", "3"]);
    let first = site.enroll("127.0.0.1", &code, "edge-a");
    assert_eq!(first.status, 200, "{}", first.body);
    let (name, key) = (first.field("node"), first.field("key"));

    let file = site.dir.join("enrollments.json");
    let before = fingerprint(&file);
    let second = site.enroll("127.0.0.2", &code, "edge-a");
    assert_eq!(second.status, 409, "{}", second.body);
    assert_eq!(
        second.body.trim(),
        format!(
            "enrollment refused: node {name} is already enrolled; the operator can free the name with `edgeferry enroll reset {name}`"
        )
    );
    assert!(!second.body.contains("key=") && !second.body.contains(TOKEN));
    assert_eq!(fingerprint(&file), before, "a refused claim wrote");
    assert_eq!(site.report(&key, &name, "done", "ok").status, 204);
    let list = site.list();
    let c = list["codes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == id.as_str())
        .unwrap();
    assert_eq!(
        (c["uses"].as_u64(), c["uses_left"].as_u64()),
        (Some(1), Some(2))
    );

    // The operator re-enrolls it on purpose: the old key stops working.
    let said = site.enroll_cmd(&["reset", &name]);
    assert!(said.contains(&name), "{said}");
    let again = site.enroll("127.0.0.2", &code, "edge-a");
    assert_eq!(again.status, 200, "{}", again.body);
    assert_eq!(again.field("node"), name);
    assert_eq!(site.report(&key, &name, "done", "ok").status, 403);
    assert_eq!(
        site.report(&again.field("key"), &name, "done", "ok").status,
        204
    );
    let missing = run(edgeferry()
        .args(["enroll", "reset", "no-such-node", "--site-dir"])
        .arg(&site.dir));
    assert_eq!(missing.code, Some(1), "{}", missing.stderr);
    assert!(
        missing.stderr.contains("no enrolled node no-such-node"),
        "{}",
        missing.stderr
    );
}

/// `enroll revoke-node NAME`: the node's report key is refused from then
/// on, the listing says so, and the name stays taken.
#[test]
fn node_keys_can_be_revoked() {
    let site = Site::new(|_| {});
    let (_, code) = site.code(&["--uses", "2"]);
    let r = site.enroll("127.0.0.1", &code, "edge-r");
    assert_eq!(r.status, 200, "{}", r.body);
    let (name, key) = (r.field("node"), r.field("key"));
    assert_eq!(site.report(&key, &name, "preflight", "started").status, 204);
    let said = site.enroll_cmd(&["revoke-node", &name]);
    assert!(said.contains(&name), "{said}");
    let refused = site.report(&key, &name, "done", "ok");
    assert_eq!(refused.status, 403, "{}", refused.body);
    let list = site.list();
    let node = &list["nodes"][0];
    assert_eq!(
        (node["name"].as_str(), node["revoked"].as_bool()),
        (Some(name.as_str()), Some(true))
    );
    assert_eq!(site.enroll("127.0.0.1", &code, "edge-r").status, 409);
    let status = site.status_json();
    let shown = &status["nodes"][0];
    assert_eq!(
        (shown["name"].as_str(), shown["state"].as_str()),
        (Some(name.as_str()), Some("revoked"))
    );
}

/// A site that ran a long time: 10,000 nodes and 50,000 reports. A flood
/// from one node's key is throttled after a burst, the file is compacted
/// to each node's latest report plus a bounded history, and `status` shows
/// every node's latest state from the compacted file.
#[test]
fn report_floods_are_throttled_and_the_file_stays_compacted() {
    const NODES: usize = 10_000;
    let site = Site::new(|dir| {
        let nodes: Vec<Value> = (0..NODES)
            .map(|i| {
                serde_json::json!({
                    "name": format!("old-{i:05}"), "hostname": format!("old-{i:05}"),
                    "code_id": "00000000", "key_sha256": format!("{i:064x}"),
                    "enrolled": 1_700_000_000u64, "client": "10.0.0.1:1234"
                })
            })
            .collect();
        let data = serde_json::json!({"codes": [], "nodes": nodes});
        std::fs::write(
            dir.join("enrollments.json"),
            serde_json::to_vec_pretty(&data).unwrap(),
        )
        .unwrap();
        let mut text = String::new();
        for round in 0..5 {
            for i in 0..NODES {
                let (step, status) = match (round, i % 2) {
                    (4, 0) => ("done", "ok"),
                    (4, _) => ("preflight", "failed"),
                    _ => ("preflight", "started"),
                };
                text.push_str(&format!(
                    "{{\"ts\":\"2026-01-01T00:00:0{round}Z\",\"node\":\"old-{i:05}\",\"step\":\"{step}\",\"status\":\"{status}\",\"message\":\"round {round}\",\"client\":\"10.0.0.1:1234\"}}\n"
                ));
            }
        }
        std::fs::write(dir.join("reports.jsonl"), text).unwrap();
    });
    let (_, code) = site.code(&["--uses", "1"]);
    let r = site.enroll("127.0.0.1", &code, "flooder");
    assert_eq!(r.status, 200, "{}", r.body);
    let (name, key) = (r.field("node"), r.field("key"));
    let started = std::time::Instant::now();
    let sent = site.flood(
        "127.0.0.1",
        "/v1/report",
        &[
            format!("Authorization: Bearer {key}"),
            "Content-Type: application/json".into(),
        ],
        &report_body(&name, "done", "ok"),
        NODE_BURST + 200,
    );
    let took = started.elapsed().as_secs_f64();
    let statuses: Vec<u16> = sent.iter().map(|s| s.0).collect();
    assert_throttled(&statuses, NODE_BURST, 204, took, NODE_REFILL_SECS);
    let throttled = sent.iter().find(|s| s.0 == 429).unwrap();
    assert_eq!(throttled.1, "1", "Retry-After");
    let accepted = statuses.iter().filter(|s| **s == 204).count();

    let text = std::fs::read_to_string(site.dir.join("reports.jsonl")).unwrap();
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(
        lines.len() <= NODES + 1 + REPORT_HISTORY,
        "reports.jsonl holds {} lines",
        lines.len()
    );
    let mine = lines.iter().filter(|l| l["node"] == name.as_str()).count();
    assert_eq!(mine, accepted, "each accepted report is kept");
    let old = lines.iter().filter(|l| l["node"] != name.as_str()).count();
    assert_eq!(old, NODES, "one line per old node: its latest");

    let status = site.status_json();
    let nodes = status["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), NODES + 1);
    let state = |n: &str| {
        nodes.iter().find(|v| v["name"] == n).unwrap()["state"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert_eq!(state("old-00000"), "joined");
    assert_eq!(state("old-00001"), "failed");
    assert_eq!(state("old-09998"), "joined");
    assert_eq!(state(&name), "joined");
}
