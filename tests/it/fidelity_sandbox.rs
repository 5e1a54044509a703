//! What real keadm's copy step needs from a node's containerd, checked
//! before it runs (issue 17, parts 1 and 5): the sandbox image containerd
//! uses must be in the store, and root must be able to lower oom_score_adj
//! (CAP_SYS_RESOURCE) unless containerd says restrict_oom_score_adj = true.
//! One harness, one `edgeferry join`; the stand-in keadm's own sandbox
//! failures are tested beside it in builder/src/sample (unit tests).

use crate::join::{report, write, Site};
use serde_json::Value;

/// A node of the report by host address.
fn by_host<'a>(report: &'a Value, ip: &str) -> &'a Value {
    report["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["host"] == ip)
        .unwrap_or_else(|| panic!("{ip} not in report"))
}

#[test]
fn preflight_refuses_a_missing_sandbox_image_and_oom_score_adj_by_name() {
    let site = Site::new(4);
    let h = &site.hosts;
    // Host 0: containerd names a sandbox image the store lacks.
    h.write_containerd_config(
        0,
        Some(
            "version = 2\n\n[plugins.\"io.containerd.grpc.v1.cri\"]\n  \
             restrict_oom_score_adj = true\n  sandbox_image = \"registry.k8s.io/pause:3.5\"\n",
        ),
    );
    // Host 1: root without CAP_SYS_RESOURCE, containerd on its defaults.
    h.restart_sshd_without_sys_resource(1, true).unwrap();
    h.write_containerd_config(1, None);
    // Host 2: the same, but containerd restricts oom_score_adj (the
    // harness's config). Host 3: as every host starts.
    h.restart_sshd_without_sys_resource(2, true).unwrap();
    let out = h
        .run_on(
            1,
            "(echo -998 >/proc/self/oom_score_adj) 2>/dev/null && echo can || echo cannot",
        )
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "cannot\n",
        "the fault holds on the console too"
    );

    let mut nodes = String::new();
    for i in 0..4 {
        nodes.push_str(&format!(
            "  - host: {}\n    ssh: {{user: root, key: {}}}\n",
            h.host(i).ip,
            h.client_key().display()
        ));
    }
    let inventory = site.path("site.yaml");
    write(
        &inventory,
        &format!(
            "cloudcore: {cloud}\ntoken: {{env: EF_TEST_TOKEN}}\nname_prefix: edge\n\
             timeouts: {{keadm_join: 60}}\n\
             ssh:\n  known_hosts: {kh}\nnodes:\n{nodes}",
            cloud = h.cloudcore(),
            kh = h.known_hosts().display()
        ),
    );
    let state = site.path("state");
    let ran = site.join(&inventory, &["--state-dir", state.to_str().unwrap()]);
    assert_eq!(ran.code, Some(2), "two nodes refused -> exit 2");
    let r = report(&state);

    let refused = |i: usize| -> String {
        let n = by_host(&r, &h.host(i).ip);
        assert_eq!(n["status"], "failed", "host {i}: {n}");
        assert_eq!(n["failed_step"], "preflight", "host {i}: {n}");
        assert_eq!(n["error_kind"], "preflight", "host {i}: {n}");
        let error = n["error"].as_str().unwrap().to_string();
        assert!(!error.contains('\n'), "one line: {error:?}");
        error
    };
    assert_eq!(
        refused(0),
        "preflight: containerd on this node uses sandbox image registry.k8s.io/pause:3.5 \
         (containerd config dump) but the store has registry.k8s.io/pause:3.10, \
         registry.k8s.io/pause:3.6, registry.k8s.io/pause:3.8: load a bundle built with \
         --pause-image registry.k8s.io/pause:3.5, or set sandbox_image in \
         /etc/containerd/config.toml to one of them"
    );
    assert_eq!(
        refused(1),
        "preflight: root on this node cannot lower oom_score_adj (no CAP_SYS_RESOURCE, as in \
         some containers and VMs), so runc cannot start keadm's pod sandbox: set \
         restrict_oom_score_adj = true in containerd's CRI runtime section of \
         /etc/containerd/config.toml and restart containerd"
    );
    // Refused before anything was written on them.
    for i in [0, 1] {
        assert!(
            !h.private(i, "/etc/containerd").join("certs.d").exists(),
            "host {i}: the containerd step ran"
        );
    }
    for i in [2, 3] {
        let n = by_host(&r, &h.host(i).ip);
        assert_eq!(n["status"], "joined", "host {i}: {n}");
        site.assert_joined(i);
    }
    // The node log says which sandbox image preflight found, and where.
    let name = by_host(&r, &h.host(3).ip)["name"]
        .as_str()
        .unwrap()
        .to_string();
    let log = std::fs::read_to_string(state.join("logs").join(format!("{name}.log"))).unwrap();
    assert!(
        log.contains("sandbox=registry.k8s.io/pause:3.6 (containerd config dump)"),
        "{log}"
    );
}
