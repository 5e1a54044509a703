//! A host that does not answer gives its slot back: its connect fails at
//! the dial timeout (5 s) and it waits at the back of the queue for its
//! next attempt, while the live hosts join.

use serde_json::Value;

use crate::join::{journal, report, write, Site};

#[test]
fn a_silent_host_waits_at_the_back_of_the_queue() {
    let site = Site::new(3);
    let h = &site.hosts;
    // Host 0 gets our SYN and answers into a black hole: the packets are
    // dropped without a word, as a firewall or a dead link does.
    let blackhole = format!("ip route add blackhole {}/32", h.control_ip());
    let out = h.run_on(0, &blackhole).unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let state = site.path("state");
    let inventory = site.path("site.yaml");
    write(
        &inventory,
        &format!(
            "cloudcore: {}\ntoken: {{env: EF_TEST_TOKEN}}\nname_prefix: edge\nsettle: 0\n\
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
        &["--parallel", "1", "--state-dir", state.to_str().unwrap()],
    );
    assert_eq!(ran.code, Some(2), "one node failed -> exit 2");
    let r = report(&state);
    assert_eq!(r["counts"]["joined"], 2);
    assert_eq!(r["counts"]["failed"], 1);
    let nodes = r["nodes"].as_array().unwrap();
    let dead = &nodes[0];
    assert_eq!(dead["status"], "failed");
    assert_eq!(dead["failed_step"], "connect");
    assert_eq!(dead["error_kind"], "connect_timeout");
    let error = dead["error"].as_str().unwrap();
    assert!(
        error.contains("no answer to the TCP connect within 5s")
            && error.ends_with("(after 3 attempts)"),
        "{error}"
    );
    // Every attempt is in the report, each ended by the 5 s dial timeout
    // rather than the 15 s connect timeout.
    let steps = dead["steps"].as_array().unwrap();
    assert_eq!(steps.len(), 3, "{steps:?}");
    for s in steps {
        assert_eq!(s["step"], "connect");
        assert_eq!(s["status"], "failed");
        assert!(s["ms"].as_u64().unwrap() < 10_000, "{s}");
    }
    for n in &nodes[1..] {
        assert_eq!(n["status"], "joined", "{n}");
    }
    site.assert_joined(1);
    site.assert_joined(2);

    // With one slot, host 1 started right after host 0's first attempt:
    // the retry went to the back of the queue instead of holding the slot.
    let events = journal(&state);
    let name = |n: &Value| n["name"].as_str().unwrap().to_string();
    let connects: Vec<(String, String)> = events
        .iter()
        .filter(|e| e["step"] == "connect")
        .map(|e| {
            (
                e["node"].as_str().unwrap().to_string(),
                e["status"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let (d, l1, l2) = (name(dead), name(&nodes[1]), name(&nodes[2]));
    let started = |node: &str| -> Vec<usize> {
        connects
            .iter()
            .enumerate()
            .filter(|(_, (n, s))| n == node && s == "started")
            .map(|(i, _)| i)
            .collect()
    };
    let dead_starts = started(&d);
    assert_eq!(dead_starts.len(), 3, "{connects:?}");
    assert!(
        started(&l1)[0] < dead_starts[1] && started(&l2)[0] < dead_starts[1],
        "the live hosts connect before the silent one's second attempt: {connects:?}"
    );
    let log = std::fs::read_to_string(dead["log"].as_str().unwrap()).unwrap();
    assert_eq!(
        log.matches("the node waits at the back of the queue")
            .count(),
        2,
        "{log}"
    );
}
