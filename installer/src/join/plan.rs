//! Inventory + store -> `JoinPlan`: node × step with the exact command
//! each step runs. Plain data: `--dry-run` prints it, tests snapshot it,
//! and the executor runs it. Nothing here does I/O beyond reading the
//! store's state.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Result};

use super::run::Entry;
use crate::config::Config;
use crate::node::inventory::Inventory;
use crate::node::offer::{self, StoreOffer};
use crate::node::script::{
    self, KeadmUpgradeParams, PostcheckParams, PreflightParams, UpgradePreflightParams,
};
use crate::node::secret::Redactor;
use crate::node::steps::{self, Action, Step, StepInput, UpgradeInput};
use crate::store::State;

pub use crate::output::{JoinPlan, NodePlan, ResumePlan, StepPlan, UpgradePlan};

/// `edgeferry upgrade`'s choices.
pub struct UpgradeRequest<'a> {
    pub to: &'a str,
    pub allow_downgrade: bool,
    pub allow_skip_minor: bool,
    /// false with `--no-rollback`.
    pub rollback: bool,
    /// `--canary N`; 0 for none.
    pub canary: usize,
}

pub struct PlanInput<'a> {
    pub action: Action,
    pub inventory_path: &'a Path,
    pub inventory: &'a Inventory,
    pub store_dir: &'a Path,
    pub state: &'a State,
    /// `--mirror` values, in order; empty: the inventory's.
    pub mirrors: &'a [String],
    /// `--node-mirror`; `None`: the inventory's.
    pub node_mirror: Option<&'a str>,
    /// The CA PEM nodes trust for the mirror, if it speaks TLS.
    pub mirror_ca: Option<String>,
    pub state_dir: PathBuf,
    pub parallel: Option<usize>,
    pub accept_new_host_keys: bool,
    pub limit: Option<&'a BTreeSet<String>>,
    pub timeouts: &'a BTreeMap<Step, Duration>,
    /// `--settle`: the postcheck's settle time, instead of the default.
    pub settle: Option<Duration>,
    /// `--verify-node-ready KUBECONFIG`.
    pub verify_node_ready: Option<&'a Path>,
    /// `upgrade` (with `action: Action::Upgrade`).
    pub upgrade: Option<UpgradeRequest<'a>>,
}

pub fn build(input: &PlanInput, config: &Config, redactor: &Redactor) -> Result<JoinPlan> {
    let inv = input.inventory;
    let state = input.state;
    let StoreOffer {
        version,
        bundles,
        keadm,
    } = match &input.upgrade {
        // The inventory's kubeedge_version is what the nodes were joined at.
        Some(up) => {
            edgeferry_bundle::keadm::minor_of(up.to)?;
            offer::store_offer(state, Some(up.to), input.store_dir)?
        }
        None => offer::store_offer(state, inv.kubeedge_version.as_deref(), input.store_dir)?,
    };
    let upgrade_plan = match &input.upgrade {
        Some(up) => {
            let arches: Vec<String> = bundles.keys().cloned().collect();
            let with_digest = offer::check_upgrade_flags(&version)?;
            let (image, mut image_digests) =
                offer::installation_package(state, &version, &arches, input.store_dir)?;
            if !with_digest {
                image_digests.clear();
            }
            Some(UpgradePlan {
                to: version.clone(),
                image,
                image_digests,
                allow_downgrade: up.allow_downgrade,
                allow_skip_minor: up.allow_skip_minor,
                rollback: up.rollback,
                canary: up.canary,
                waves: Vec::new(),
            })
        }
        None => None,
    };

    let given = if input.mirrors.is_empty() {
        &inv.mirrors[..]
    } else {
        input.mirrors
    };
    let mirrors = offer::mirrors_from(
        given,
        input.node_mirror.or(inv.node_mirror.as_deref()),
        input.mirror_ca.clone(),
    )?;
    let hosts_toml = offer::hosts_toml_for(state, &mirrors);
    let store_arches: Vec<String> = bundles.keys().cloned().collect();
    let store_images = offer::store_images(state);
    let settle = input.settle.unwrap_or(config.join.postcheck_settle);
    let grace = config.join.postcheck_connect_grace;

    let mut nodes = Vec::new();
    for (index, spec) in inv.nodes.iter().enumerate() {
        // By the place in the whole inventory, so --limit and --resume
        // give a node the same order as the full run.
        let order = mirrors.for_node(index, &spec.host);
        let node_hosts = offer::hosts_toml_for(state, &order);
        if let Some(limit) = input.limit {
            if !limit.contains(&spec.label) && !limit.contains(&spec.host) {
                continue;
            }
        }
        let who = format!("node {}", spec.label);
        if upgrade_plan.is_none() {
            offer::check_flags(&version, &spec.flags, &who)?;
        }
        let (cloud_host, ports, cri_socket) =
            offer::preflight_target(&spec.cloudcore, &spec.flags, &who)?;

        // The postcheck's own budget, plus the time it waits on purpose.
        let timeout = |s: Step| match s.is_postcheck() {
            true => s.timeout(config, input.timeouts) + settle + grace,
            false => s.timeout(config, input.timeouts),
        };
        let target = format!("{}@{}:{}", spec.user, spec.host, spec.port);
        let connect = match &spec.jump {
            Some(j) => format!("ssh {target} via {}@{}:{}", j.user, j.host, j.port),
            None => format!("ssh {target}"),
        };
        let join_args = script::join_args(
            &version,
            &spec.cloudcore,
            spec.edgenode_name.as_deref(),
            spec.token.as_ref().map(|t| t.expose()),
            &spec.flags,
        );
        if let Some(bad) = join_args.iter().find(|a| a.contains(['\n', '\r'])) {
            bail!(
                "{who}: keadm argument {} holds a line break: keadm's arguments go to the node one per line; remove it from the inventory",
                redactor.scrub(bad.split('=').next().unwrap_or(bad))
            );
        }
        let reset_args: Vec<String> = spec
            .flags
            .get("remote-runtime-endpoint")
            .and_then(|v| v.last())
            .map(|e| format!("--remote-runtime-endpoint={e}"))
            .into_iter()
            .collect();
        let step_input = StepInput {
            version: &version,
            mirrors: &order,
            keadm: &keadm,
            hosts: &node_hosts,
            preflight: PreflightParams {
                store_arches: store_arches.clone(),
                store_images: store_images.clone(),
                cri_socket,
                mirrors: &order,
                cloud_host: &cloud_host,
                cloud_ports: ports.clone(),
                min_free_mib: config.join.min_free_mib,
            },
            postcheck: PostcheckParams {
                cloud_host: &cloud_host,
                hub_port: ports[0],
                hub: offer::hub_protocol(&spec.flags),
                settle_secs: settle.as_secs(),
                connect_grace_secs: grace.as_secs(),
            },
            join_args: script::JoinArgs::Stdin,
            reset_args: &reset_args,
            keadm_join_timeout: timeout(Step::KeadmJoin),
            keadm_reset_timeout: timeout(Step::KeadmReset),
            upgrade: upgrade_plan.as_ref().map(|up| UpgradeInput {
                preflight: UpgradePreflightParams {
                    to: &up.to,
                    store_arches: store_arches.clone(),
                    mirrors: &order,
                    min_free_mib: config.join.min_free_mib,
                },
                keadm: KeadmUpgradeParams {
                    to: &up.to,
                    image: &up.image,
                    digests: &up.image_digests,
                    timeout_secs: timeout(Step::KeadmUpgrade).as_secs(),
                },
                backup_timeout: timeout(Step::KeadmBackup),
                rollback_timeout: timeout(Step::KeadmRollback),
            }),
        };
        let rollback: &[Step] = match &upgrade_plan {
            Some(up) if up.rollback => steps::ROLLBACK_STEPS,
            _ => &[],
        };
        let plan_step = |step: Step| {
            let command = match steps::script(step, &step_input) {
                Some(sh) => script::wrap(&sh, spec.sudo),
                None => connect.clone(),
            };
            let secret_stdin = if step == Step::KeadmJoin {
                join_args.clone()
            } else {
                Vec::new()
            };
            StepPlan {
                step,
                timeout_secs: timeout(step).as_secs(),
                command: redactor.scrub(&command),
                exact_command: command,
                stdin: secret_stdin.iter().map(|a| redactor.scrub(a)).collect(),
                secret_stdin,
            }
        };
        let steps = steps::steps(input.action)
            .iter()
            .map(|&s| plan_step(s))
            .collect();
        let rollback = rollback.iter().map(|&s| plan_step(s)).collect();
        nodes.push(NodePlan {
            name: spec.label.clone(),
            host: spec.host.clone(),
            port: spec.port,
            user: spec.user.clone(),
            sudo: spec.sudo,
            auth: spec.auths.iter().map(|a| a.kind()).collect(),
            jump: spec
                .jump
                .as_ref()
                .map(|j| format!("{}@{}:{}", j.user, j.host, j.port)),
            known_hosts: spec.known_hosts.clone(),
            mirrors: order.urls(),
            steps,
            rollback,
            resume: None,
            spec: spec.clone(),
        });
    }
    if let Some(limit) = input.limit {
        let unknown: Vec<&str> = limit
            .iter()
            .filter(|l| !inv.nodes.iter().any(|n| &n.label == *l || &n.host == *l))
            .map(String::as_str)
            .collect();
        if !unknown.is_empty() {
            bail!(
                "--limit {}: no such node in the inventory; give node names or addresses from it",
                unknown.join(",")
            );
        }
    }
    let parallel = input
        .parallel
        .or(inv.parallel)
        .unwrap_or(config.join.parallel)
        .clamp(1, config.join.max_parallel);
    let mut upgrade_plan = upgrade_plan;
    if let Some(up) = &mut upgrade_plan {
        let names: Vec<String> = nodes.iter().map(|n| n.name.clone()).collect();
        let canary = up.canary.min(names.len());
        up.waves = [names[..canary].to_vec(), names[canary..].to_vec()]
            .into_iter()
            .filter(|w| !w.is_empty())
            .collect();
    }
    Ok(JoinPlan {
        action: input.action,
        inventory: input.inventory_path.to_path_buf(),
        inventory_format: inv.format,
        kubeedge_version: version,
        mirror: mirrors.first().address.clone(),
        mirror_url: mirrors.first().url(),
        mirrors: mirrors.site.iter().map(|m| m.url()).collect(),
        node_mirror: mirrors.node.clone(),
        endpoint: mirrors,
        store: input.store_dir.to_path_buf(),
        state_dir: input.state_dir.clone(),
        parallel,
        host_keys: if input.accept_new_host_keys {
            "accept-new"
        } else {
            "strict"
        },
        bundles,
        keadm,
        hosts_toml,
        settle_secs: settle.as_secs(),
        verify_node_ready: input.verify_node_ready.map(Path::to_path_buf),
        upgrade: upgrade_plan,
        nodes,
    })
}

impl JoinPlan {
    /// Records, per node, what a resume with these entries would do.
    pub fn note_resume(&mut self, entries: &[(usize, Entry)], excluded: &[usize]) {
        for (i, entry) in entries {
            self.nodes[*i].resume = Some(match entry {
                Entry::AlreadyJoined { .. } => ResumePlan {
                    action: "skip",
                    reason: Some("already joined"),
                    skip_steps: Vec::new(),
                },
                Entry::Run { skip, .. } => ResumePlan {
                    action: "run",
                    reason: None,
                    skip_steps: skip.iter().copied().collect(),
                },
            });
        }
        for i in excluded {
            self.nodes[*i].resume = Some(ResumePlan {
                action: "skip",
                reason: Some("not failed"),
                skip_steps: Vec::new(),
            });
        }
    }

    /// Human-readable plan for `--dry-run`.
    pub fn render(&self) -> String {
        let mut s = format!(
            "plan: {} {} node(s), KubeEdge {}, {} at a time, mirror {}, host keys {}\n",
            self.action.name(),
            self.nodes.len(),
            self.kubeedge_version,
            self.parallel,
            self.mirrors.join(", "),
            self.host_keys
        );
        let several = self.mirrors.len() > 1 || self.node_mirror.is_some();
        if several {
            s.push_str(&format!(
                "  mirrors: each node tries {}{} in its own order (below), the site mirrors rotated by its place in the inventory\n",
                self.node_mirror
                    .as_ref()
                    .map_or(String::new(), |n| format!("the node-local mirror {n}, then ")),
                if self.mirrors.len() > 1 { "the site mirrors" } else { "the site mirror" }
            ));
        }
        for a in &self.keadm {
            s.push_str(&format!(
                "  keadm {}: {} sha256 {} (bundle {})\n",
                a.arch,
                a.file,
                a.sha256,
                self.bundles.get(&a.arch).map_or("?", String::as_str)
            ));
        }
        s.push_str(&format!("  state: {}\n", self.state_dir.display()));
        if let Some(up) = &self.upgrade {
            s.push_str(&format!("  image: {}:{}\n", up.image, up.to));
            for (arch, digest) in &up.image_digests {
                s.push_str(&format!("  image digest {arch}: {digest}\n"));
            }
            s.push_str(&format!(
                "  rules: downgrade {}, skipping a minor version {}, rollback on failure {}\n",
                if up.allow_downgrade {
                    "allowed"
                } else {
                    "refused"
                },
                if up.allow_skip_minor {
                    "allowed"
                } else {
                    "refused"
                },
                if up.rollback {
                    "on"
                } else {
                    "off (--no-rollback)"
                },
            ));
            for (i, wave) in up.waves.iter().enumerate() {
                let canary = i == 0 && up.canary > 0;
                s.push_str(&format!(
                    "  wave {}{}: {}\n",
                    i + 1,
                    if canary {
                        " (canary: a failure stops the run here)"
                    } else {
                        ""
                    },
                    wave.join(", ")
                ));
            }
        }
        for n in &self.nodes {
            s.push_str(&format!(
                "\nnode {} ({}@{}:{}{}{}, auth {})\n",
                n.name,
                n.user,
                n.host,
                n.port,
                n.jump
                    .as_ref()
                    .map_or(String::new(), |j| format!(" via {j}")),
                if n.sudo { ", sudo" } else { "" },
                n.auth.join("+")
            ));
            if several {
                s.push_str(&format!("  mirrors: {}\n", n.mirrors.join(" > ")));
            }
            match &n.resume {
                Some(r) if r.action == "skip" => {
                    s.push_str(&format!(
                        "  resume: skipped ({})\n",
                        r.reason.unwrap_or("done")
                    ));
                    continue;
                }
                Some(r) if !r.skip_steps.is_empty() => {
                    let done: Vec<&str> = r.skip_steps.iter().map(|st| st.name()).collect();
                    s.push_str(&format!(
                        "  resume: runs the rest; done in an earlier run: {}\n",
                        done.join(", ")
                    ));
                }
                Some(_) => s.push_str("  resume: runs every step\n"),
                None => {}
            }
            for st in &n.steps {
                if n.resume
                    .as_ref()
                    .is_some_and(|r| r.skip_steps.contains(&st.step))
                {
                    s.push_str(&format!(
                        "  {} (skipped: done in an earlier run)\n",
                        st.step.name()
                    ));
                    continue;
                }
                s.push_str(&format!(
                    "  {} (timeout {}s):\n",
                    st.step.name(),
                    st.timeout_secs
                ));
                for line in st.command.lines() {
                    s.push_str(&format!("    {line}\n"));
                }
                if !st.stdin.is_empty() {
                    s.push_str("    on its stdin, one per line:\n");
                    for line in &st.stdin {
                        s.push_str(&format!("      {line}\n"));
                    }
                }
            }
            for st in &n.rollback {
                s.push_str(&format!(
                    "  if keadm_upgrade or upgrade_postcheck fails: {} (timeout {}s):\n",
                    st.step.name(),
                    st.timeout_secs
                ));
                for line in st.command.lines() {
                    s.push_str(&format!("    {line}\n"));
                }
            }
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{BundleRecord, FileRecord};

    fn state() -> State {
        let mut state = State::default();
        state.bundles.insert(
            "b1".into(),
            BundleRecord {
                kubeedge_version: "v1.23.1".into(),
                arch: edgeferry_bundle::format::Arch::Arm64,
                sequence: 1,
                created: String::new(),
                builder: String::new(),
                sample: true,
                signer: None,
            },
        );
        state.files.insert(
            "keadm-v1.23.1-linux-arm64.tar.gz".into(),
            FileRecord {
                sha256: "cd".repeat(32),
                size: 10,
                bundle_id: "b1".into(),
            },
        );
        state
    }

    fn plan_of(yaml: &str, limit: Option<&BTreeSet<String>>) -> Result<JoinPlan> {
        plan_with(yaml, limit, None)
    }

    fn plan_with(
        yaml: &str,
        limit: Option<&BTreeSet<String>>,
        upgrade: Option<UpgradeRequest>,
    ) -> Result<JoinPlan> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("site.yaml");
        std::fs::write(&path, yaml).unwrap();
        let redactor = Redactor::default();
        std::env::set_var("PLAN_TEST_TOKEN", "tok-abcdef-123456");
        let inv = crate::node::inventory::read(&path, &redactor)?;
        build(
            &PlanInput {
                action: if upgrade.is_some() {
                    Action::Upgrade
                } else {
                    Action::Join
                },
                inventory_path: &path,
                inventory: &inv,
                store_dir: Path::new("/srv/store"),
                state: &state(),
                mirrors: &["http://10.0.0.5:5000/".to_string()],
                node_mirror: None,
                mirror_ca: None,
                state_dir: dir.path().join("state"),
                parallel: None,
                accept_new_host_keys: false,
                limit,
                timeouts: &BTreeMap::new(),
                settle: None,
                verify_node_ready: None,
                upgrade,
            },
            &Config::default(),
            &redactor,
        )
    }

    #[test]
    fn an_upgrade_plan_names_image_digest_waves_and_rollback() {
        let request = |canary| UpgradeRequest {
            to: "v1.23.1",
            allow_downgrade: false,
            allow_skip_minor: false,
            rollback: true,
            canary,
        };
        // The store has no installation-package: refused before anything runs.
        let err = plan_with(SITE, None, Some(request(1))).unwrap_err();
        assert!(
            format!("{err:#}").contains("has no kubeedge/installation-package:v1.23.1"),
            "{err:#}"
        );
        let mut st = state();
        let digest = format!("sha256:{}", "ef".repeat(32));
        st.images.insert(
            "docker.io/kubeedge/installation-package:v1.23.1".into(),
            crate::store::ImageRecord {
                platforms: [("linux/arm64".to_string(), digest.clone())].into(),
                ..Default::default()
            },
        );
        let offer = offer::installation_package(
            &st,
            "v1.23.1",
            &["arm64".to_string()],
            Path::new("/srv/store"),
        )
        .unwrap();
        assert_eq!(offer.0, "docker.io/kubeedge/installation-package");
        assert_eq!(offer.1["arm64"], digest);
        assert!(offer::check_upgrade_flags("v1.23.1").unwrap());
        assert!(!offer::check_upgrade_flags("v1.22.0").unwrap());
    }

    const SITE: &str = "cloudcore: 10.0.0.2:10000\ntoken: {env: PLAN_TEST_TOKEN}\nname_prefix: edge\n\
        keadm: {labels: [a=b], cgroupdriver: systemd}\nssh: {key: /k, user: ops}\n\
        nodes:\n  - host: 10.0.1.1\n  - host: 10.0.1.2\n    name: edge-two\n    keadm: {labels: [c=d]}\n";

    #[test]
    fn plan_is_plain_data_with_secrets_redacted() {
        let plan = plan_of(SITE, None).unwrap();
        assert_eq!(plan.mirror, "10.0.0.5:5000");
        assert_eq!(plan.kubeedge_version, "v1.23.1");
        assert_eq!(plan.bundles["arm64"], "b1");
        assert_eq!(plan.nodes.len(), 2);
        let steps: Vec<&str> = plan.nodes[0].steps.iter().map(|s| s.step.name()).collect();
        assert_eq!(
            steps,
            [
                "connect",
                "preflight",
                "containerd",
                "fetch",
                "keadm_join",
                "postcheck"
            ]
        );
        let join = &plan.nodes[1].steps[4];
        assert!(
            join.command.starts_with("sudo -n sh -c"),
            "non-root goes through sudo"
        );
        assert!(
            !join.command.contains("--token"),
            "the token never rides on the command line"
        );
        assert!(join.stdin.contains(&"--token=<redacted>".to_string()));
        assert!(!join.stdin.iter().any(|a| a.contains("tok-abcdef")));
        assert!(join
            .secret_stdin
            .contains(&"--token=tok-abcdef-123456".to_string()));
        let has = |a: &str| join.stdin.iter().any(|s| s == a);
        assert!(has("--edgenode-name=edge-two"));
        assert!(has("--labels=c=d") && !has("--labels=a=b"));
        assert!(has("--cgroupdriver=systemd"));
        assert!(plan.render().contains("      --token=<redacted>\n"));
        assert!(plan.nodes[0].name.starts_with("edge-"));
        let json = serde_json::to_string(&plan).unwrap();
        assert!(!json.contains("tok-abcdef") && !json.contains("secret_stdin"));
        assert!(plan
            .render()
            .contains("keadm arm64: keadm-v1.23.1-linux-arm64.tar.gz"));
    }

    #[test]
    fn bad_flags_versions_and_limits_are_refused_before_anything_runs() {
        let err = plan_of(&SITE.replace("cgroupdriver", "with-mqtt"), None).unwrap_err();
        assert!(
            format!("{err:#}").contains("has no flag --with-mqtt"),
            "{err:#}"
        );
        let err = plan_of(&SITE.replace("labels: [a=b]", "token: x1234"), None).unwrap_err();
        assert!(
            format!("{err:#}").contains("`token (from env or file)` field"),
            "{err:#}"
        );
        let err = plan_of(&format!("kubeedge_version: v1.22.0\n{SITE}"), None).unwrap_err();
        assert!(
            format!("{err:#}").contains("no bundle for KubeEdge v1.22.0"),
            "{err:#}"
        );
        let limit: BTreeSet<String> = ["edge-two".to_string(), "edge-nope".to_string()].into();
        let err = plan_of(SITE, Some(&limit)).unwrap_err();
        assert!(format!("{err:#}").contains("--limit edge-nope"), "{err:#}");
        let limit: BTreeSet<String> = ["edge-two".to_string()].into();
        assert_eq!(plan_of(SITE, Some(&limit)).unwrap().nodes.len(), 1);
    }
}
