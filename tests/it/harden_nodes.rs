//! Hostile nodes and nosy node users: the join token stays off every
//! process list but keadm's own, and whatever bytes a node prints reach
//! the operator's terminal, logs, journal and report.json escaped and
//! bounded. Real sshd test hosts, the sample bundle's stand-in keadm.

use std::os::unix::fs::PermissionsExt;
use std::sync::atomic::{AtomicBool, Ordering};

use edgeferry_tests::hosts::EDGE_USER;
use edgeferry_tests::{edgeferry, list_files, run};

use crate::join::{journal, report, write, Site, VERSION};

/// The longest escaped field, plus room for its "… (N bytes cut)" note
/// and a log line's time stamp.
const FIELD_BOUND: usize = 4096 + 128;

/// Where the recording login shell and the sampler keep what they saw.
const RECORDS: &str = "/var/lib/keadm-standin/rec";

/// Makes `path` executable with `text`.
fn script(path: &std::path::Path, text: &str) {
    write(path, text);
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// Writes an inventory for host 0 alone, named `name`, logging in with
/// `ssh` (an inline YAML map's fields).
fn one_node(site: &Site, name: &str, ssh: &str) -> std::path::PathBuf {
    let h = &site.hosts;
    let path = site.path("site.yaml");
    write(
        &path,
        &format!(
            "cloudcore: {}\ntoken: {{env: EF_TEST_TOKEN}}\n\
             ssh: {{{ssh}, known_hosts: {}}}\nnodes:\n  - host: {}\n    name: {name}\n",
            h.cloudcore(),
            h.known_hosts().display(),
            h.host(0).ip
        ),
    );
    path
}

/// The edge user logs in through a shell that writes down its own argv
/// (what sshd hands it: the exec string) and then runs /bin/sh. While the
/// join runs, the test lists every process's argv and environment on the
/// node, as root, over and over. The token may show only in keadm's own
/// argv (upstream keadm takes it as --token and nothing else), and no
/// file of ours on the node keeps it.
#[test]
fn join_token_never_reaches_a_command_line_but_keadms() {
    let site = Site::new(1);
    let h = &site.hosts;
    let rec = h.private(0, RECORDS);
    std::fs::create_dir_all(&rec).unwrap();
    std::fs::set_permissions(&rec, std::fs::Permissions::from_mode(0o1777)).unwrap();
    script(
        &h.private(0, "/usr/local/bin").join("recsh"),
        &format!(
            "#!/bin/sh\nprintf '%s\\n' \"$0\" \"$@\" >\"{RECORDS}/argv.$$\"\nexec /bin/sh \"$@\"\n"
        ),
    );
    let passwd = h.private(0, "/etc/passwd");
    let text = std::fs::read_to_string(&passwd).unwrap();
    let text: String = text
        .lines()
        .map(|l| match l.strip_suffix(":/bin/sh") {
            Some(rest) if l.starts_with(&format!("{EDGE_USER}:")) => {
                format!("{rest}:/usr/local/bin/recsh\n")
            }
            _ => format!("{l}\n"),
        })
        .collect();
    assert!(text.contains(":/usr/local/bin/recsh\n"));
    write(&passwd, &text);
    // Long enough for many samples while keadm runs.
    h.set_join_seconds(0, Some(3));

    let state = site.path("state");
    let inventory = one_node(
        &site,
        "nosy",
        &format!("user: {EDGE_USER}, password: {{env: EF_TEST_EDGE_PASSWORD}}"),
    );

    let dry = site.join(
        &inventory,
        &["--dry-run", "--state-dir", state.to_str().unwrap()],
    );
    assert_eq!(dry.code, Some(0));
    assert!(
        dry.stdout.contains("--token=<redacted>") && !dry.stdout.contains(&site.token),
        "--dry-run still shows keadm's arguments, the token redacted:\n{}",
        dry.stdout
    );

    let sampling = AtomicBool::new(true);
    let mut samples = Vec::new();
    let joined = std::thread::scope(|s| {
        let sampler = s.spawn(|| {
            let mut seen = Vec::new();
            while sampling.load(Ordering::SeqCst) {
                let out = h
                    .run_on(
                        0,
                        "ps -eo args= | sed 's/^/ps: /'; for f in /proc/[0-9]*/environ; do tr '\\0' '\\n' <\"$f\" | sed 's/^/env: /'; done 2>/dev/null",
                    )
                    .unwrap();
                seen.push(String::from_utf8_lossy(&out.stdout).into_owned());
            }
            seen
        });
        let joined = site.join(&inventory, &["--state-dir", state.to_str().unwrap()]);
        sampling.store(false, Ordering::SeqCst);
        samples = sampler.join().unwrap();
        joined
    });
    assert_eq!(joined.code, Some(0), "the node joined through sudo");
    site.assert_joined(0);

    let keadm = format!("/var/lib/edgeferry/keadm-{VERSION}/keadm");
    let is_keadm = |args: &str| {
        let words: Vec<&str> = args.split_whitespace().collect();
        let prog = match words.first() {
            Some(&"/bin/sh" | &"sh") => words.get(1),
            w => w,
        };
        prog == Some(&keadm.as_str()) && words.contains(&"join")
    };
    let mut keadm_seen = 0;
    for sample in &samples {
        for line in sample.lines().filter(|l| l.contains(&site.token)) {
            match line.strip_prefix("ps: ") {
                Some(args) if is_keadm(args) => keadm_seen += 1,
                _ => panic!("the token is on the node outside keadm's argv: {line}"),
            }
        }
    }
    assert!(
        samples.len() >= 10 && keadm_seen > 0,
        "{} samples, keadm with its token seen in {keadm_seen}: the sampler missed the join",
        samples.len()
    );

    // After connect, a node's steps share one command, so one login shell
    // ran them all (`script::pipeline`).
    let argvs = list_files(&rec);
    assert_eq!(argvs.len(), 1, "one login shell for the steps: {argvs:?}");
    let mut saw_join = false;
    for name in &argvs {
        let argv = std::fs::read_to_string(rec.join(name)).unwrap();
        assert!(
            !argv.contains(&site.token),
            "the login shell was handed the token: {argv}"
        );
        saw_join |= argv.contains("keadm join") || argv.contains("keadm\" join");
    }
    assert!(saw_join, "keadm_join's exec string was recorded");

    for dir in ["/var/lib/edgeferry", "/root", "/var/lib/keadm-standin"] {
        let dir = h.private(0, dir);
        for rel in list_files(&dir) {
            let bytes = std::fs::read(dir.join(&rel)).unwrap_or_default();
            assert!(
                !String::from_utf8_lossy(&bytes).contains(&site.token),
                "{}/{rel} keeps the token after the join",
                dir.display()
            );
        }
    }
}

/// What a hostile node prints: a window title, a screen clear, a fake
/// line, NULs, invalid UTF-8, a C1 CSI, and one 3 MB line.
const HOSTILE_UNAME: &str = r#"#!/bin/sh
printf 'stderr \033[31mred\000nul\377\376\302\233csi\n' >&2
printf '\033]0;owned\007\033[2J'
head -c 3000000 /dev/zero | tr '\0' A
printf '\r\nall nodes joined\n'
"#;

/// Checks text that carries node-supplied fields: no control character
/// but newline and tab, and no line longer than `fields` escaped fields
/// (a table row holds a few, a log line or report field one).
fn assert_tame(what: &str, text: &str, fields: usize) {
    let bad: Vec<char> = text
        .chars()
        .filter(|c| c.is_control() && *c != '\n' && *c != '\t')
        .collect();
    assert!(
        bad.is_empty(),
        "{what} holds control characters {bad:?}: {:?}",
        text.chars().take(200).collect::<String>()
    );
    for line in text.lines() {
        assert!(
            line.len() <= fields * FIELD_BOUND,
            "{what} has a {}-byte line",
            line.len()
        );
    }
}

/// A node whose `uname` (so preflight's `arch=` and its failure message)
/// prints escape sequences, NULs, invalid UTF-8 and a 3 MB line: the
/// terminal, the log, report.json, the journal and `status` get it
/// escaped and cut to 4 KiB per field.
#[test]
fn node_output_is_escaped_and_bounded_everywhere() {
    let site = Site::new(1);
    let h = &site.hosts;
    script(&h.private(0, "/usr/local/bin").join("uname"), HOSTILE_UNAME);
    let state = site.path("state");
    let inventory = one_node(
        &site,
        "hostile",
        &format!("user: root, key: {}", h.client_key().display()),
    );
    let ran = site.join(&inventory, &["--state-dir", state.to_str().unwrap()]);
    assert_eq!(ran.code, Some(2), "the node failed");

    let r = report(&state);
    let n = &r["nodes"][0];
    assert_eq!(n["failed_step"], "preflight", "{n}");
    assert_eq!(n["error_kind"], "preflight");
    for field in ["arch", "error"] {
        let text = n[field]
            .as_str()
            .unwrap_or_else(|| panic!("no {field}: {n}"));
        assert_tame(&format!("report.json {field}"), text, 1);
        assert!(
            text.contains("\\x1b]0;owned") && text.ends_with(" bytes cut)"),
            "report.json {field} shows the escape and says it was cut: {:?}",
            text.chars().take(200).collect::<String>()
        );
    }

    let events = journal(&state);
    let failed = events
        .iter()
        .find(|e| e["step"] == "preflight" && e["status"] == "failed")
        .expect("a failed preflight event");
    for field in ["arch", "error"] {
        let text = failed[field]
            .as_str()
            .unwrap_or_else(|| panic!("no {field}"));
        assert_tame(&format!("journal {field}"), text, 1);
        assert!(text.contains("\\x1b]0;owned"));
    }

    let log_bytes = std::fs::read(n["log"].as_str().unwrap()).unwrap();
    let log = String::from_utf8(log_bytes).expect("the log is UTF-8");
    assert_tame("the node's log", &log, 1);
    for shown in [
        "\\x1b]0;owned\\x07",
        "\\x00",
        "\\x9b",
        "stderr \\x1b[31mred\\x00nul",
    ] {
        assert!(
            log.contains(shown),
            "the log shows {shown} as text: {:?}",
            log.chars().take(2000).collect::<String>()
        );
    }
    assert!(
        log.contains(" bytes cut)"),
        "the 3 MB line was cut in the log"
    );

    assert_tame("join's stdout", &ran.stdout, 3);
    assert_tame("join's stderr", &ran.stderr, 3);
    assert!(
        ran.stdout.contains("\\x1b]0;owned"),
        "the table shows the escape as text:\n{}",
        ran.stdout
    );
    let status = run(edgeferry().arg("status").arg("--state-dir").arg(&state));
    assert_eq!(status.code, Some(0), "{}", status.stderr);
    assert!(status.stdout.contains("\\x1b]0;owned"), "{}", status.stdout);
    assert_tame("status", &status.stdout, 3);
}
