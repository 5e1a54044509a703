//! Inventory + store -> `JoinPlan`: node × step with the exact command
//! each step runs. Plain data: `--dry-run` prints it, tests snapshot it,
//! and the executor runs it. Nothing here does I/O beyond reading the
//! store's state.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use super::inventory::{Format, Inventory, NodeSpec};
use super::script::{self, KeadmAsset};
use super::secret::Redactor;
use crate::config::Config;
use crate::mirror::hosts::{self, HostsFile};
use crate::store::State;

/// The per-node steps, in order. Names are stable: journals, reports and
/// `timeouts:` in inventories use them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Step {
    Connect,
    Preflight,
    Containerd,
    Fetch,
    KeadmJoin,
    Postcheck,
    /// `edgeferry reset`: `keadm reset edge --force`.
    KeadmReset,
}

impl Step {
    pub fn name(self) -> &'static str {
        match self {
            Step::Connect => "connect",
            Step::Preflight => "preflight",
            Step::Containerd => "containerd",
            Step::Fetch => "fetch",
            Step::KeadmJoin => "keadm_join",
            Step::Postcheck => "postcheck",
            Step::KeadmReset => "keadm_reset",
        }
    }

    pub fn from_name(name: &str) -> Option<Step> {
        ALL_STEPS.iter().copied().find(|s| s.name() == name)
    }
}

const ALL_STEPS: [Step; 7] = [
    Step::Connect,
    Step::Preflight,
    Step::Containerd,
    Step::Fetch,
    Step::KeadmJoin,
    Step::Postcheck,
    Step::KeadmReset,
];

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Join,
    Reset,
}

#[derive(Clone, Debug, Serialize)]
pub struct JoinPlan {
    pub action: Action,
    pub inventory: PathBuf,
    pub inventory_format: Format,
    pub kubeedge_version: String,
    /// host:port the nodes reach the mirror at.
    pub mirror: String,
    pub store: PathBuf,
    pub state_dir: PathBuf,
    pub parallel: usize,
    pub host_keys: &'static str,
    /// Bundle id per arch for this version.
    pub bundles: BTreeMap<String, String>,
    pub keadm: Vec<KeadmAsset>,
    pub hosts_toml: Vec<HostsFile>,
    pub nodes: Vec<NodePlan>,
}

#[derive(Clone, Debug, Serialize)]
pub struct NodePlan {
    pub name: String,
    pub host: String,
    pub port: u16,
    pub user: String,
    pub sudo: bool,
    pub auth: Vec<&'static str>,
    pub jump: Option<String>,
    pub known_hosts: PathBuf,
    pub steps: Vec<StepPlan>,
    #[serde(skip)]
    pub spec: NodeSpec,
}

#[derive(Clone, Debug, Serialize)]
pub struct StepPlan {
    pub step: Step,
    pub timeout_secs: u64,
    /// What runs on the node, secrets redacted.
    pub command: String,
    /// The same with secrets, for the executor only.
    #[serde(skip)]
    pub secret_command: String,
}

pub struct PlanInput<'a> {
    pub action: Action,
    pub inventory_path: &'a Path,
    pub inventory: &'a Inventory,
    pub store_dir: &'a Path,
    pub state: &'a State,
    pub mirror: Option<&'a str>,
    pub state_dir: PathBuf,
    pub parallel: Option<usize>,
    pub accept_new_host_keys: bool,
    pub limit: Option<&'a BTreeSet<String>>,
    pub timeouts: &'a BTreeMap<Step, Duration>,
}

pub fn timeout_for(step: Step, config: &Config, overrides: &BTreeMap<Step, Duration>) -> Duration {
    if let Some(t) = overrides.get(&step) {
        return *t;
    }
    let j = &config.join;
    match step {
        Step::Connect => j.connect_timeout,
        Step::Preflight => j.preflight_timeout,
        Step::Containerd => j.containerd_timeout,
        Step::Fetch => j.fetch_timeout,
        Step::KeadmJoin => j.keadm_join_timeout,
        Step::Postcheck => j.postcheck_timeout,
        Step::KeadmReset => j.keadm_reset_timeout,
    }
}

/// "host:port" from a --mirror value that may carry a scheme or a path.
pub fn mirror_address(value: &str) -> Result<String> {
    let v = value.trim();
    if v.starts_with("https://") {
        bail!("--mirror {v}: the mirror speaks plain HTTP; give host:port or http://host:port");
    }
    let v = v.strip_prefix("http://").unwrap_or(v);
    let v = v.split('/').next().unwrap_or(v);
    if v.is_empty() || !v.contains(':') {
        bail!("--mirror {value:?} is not host:port: give the address nodes reach edgeferry serve at, e.g. 10.0.0.5:5000");
    }
    Ok(v.to_string())
}

/// The host part of HOST:PORT, with IPv6 brackets removed.
fn split_host_port(value: &str) -> Result<(String, u16)> {
    let (host, port) = value
        .rsplit_once(':')
        .with_context(|| format!("cloudcore address {value:?} is not HOST:PORT"))?;
    let port: u16 = port
        .parse()
        .with_context(|| format!("cloudcore address {value:?} has no valid port"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        bail!("cloudcore address {value:?} has no host");
    }
    Ok((host.to_string(), port))
}

/// What the store offers for one KubeEdge version. Shared by the join
/// planner and pull mode's `/join.sh`, so both pick the same version,
/// bundles and keadm tarballs.
pub struct StoreOffer {
    pub version: String,
    /// The newest bundle id per arch.
    pub bundles: BTreeMap<String, String>,
    pub keadm: Vec<KeadmAsset>,
}

/// `wanted`, or the one version the store holds.
pub fn store_offer(state: &State, wanted: Option<&str>, store_dir: &Path) -> Result<StoreOffer> {
    let version = match wanted {
        Some(v) => v.to_string(),
        None => {
            let versions: BTreeSet<&str> = state
                .bundles
                .values()
                .map(|b| b.kubeedge_version.as_str())
                .collect();
            match versions.len() {
                1 => versions.into_iter().next().unwrap().to_string(),
                0 => bail!(
                    "the store {} is empty: load a bundle first",
                    store_dir.display()
                ),
                _ => bail!(
                    "the store holds KubeEdge {}: set kubeedge_version in the inventory",
                    versions.into_iter().collect::<Vec<_>>().join(", ")
                ),
            }
        }
    };
    let mut newest: BTreeMap<String, (u64, String)> = BTreeMap::new();
    for (id, b) in &state.bundles {
        if b.kubeedge_version == version {
            let arch = b.arch.as_str().to_string();
            let newer = newest.get(&arch).is_none_or(|(seq, _)| b.sequence > *seq);
            if newer {
                newest.insert(arch, (b.sequence, id.clone()));
            }
        }
    }
    if newest.is_empty() {
        bail!(
            "the store {} has no bundle for KubeEdge {version}: load one, or set kubeedge_version to what the store has",
            store_dir.display()
        );
    }
    let mut keadm = Vec::new();
    for arch in newest.keys() {
        let file = format!("keadm-{version}-linux-{arch}.tar.gz");
        let record = state.files.get(&file).with_context(|| {
            format!("the store has a {arch} bundle but no {file}: reload the bundle")
        })?;
        keadm.push(KeadmAsset {
            arch: arch.clone(),
            file,
            sha256: record.sha256.clone(),
            size: record.size,
        });
    }
    Ok(StoreOffer {
        version,
        bundles: newest.into_iter().map(|(a, (_, id))| (a, id)).collect(),
        keadm,
    })
}

/// containerd `hosts.toml` for every registry the store's images come from.
pub fn hosts_toml_for(state: &State, mirror: &str) -> Vec<HostsFile> {
    let registries: BTreeSet<String> = state
        .images
        .keys()
        .map(|r| hosts::registry_of(r).to_string())
        .collect();
    hosts::hosts_files(mirror, &registries)
}

/// Every `keadm join` flag must exist in the version; bools must be bools.
pub fn check_flags(version: &str, flags: &BTreeMap<String, Vec<String>>, who: &str) -> Result<()> {
    let table = edgeferry_bundle::keadm::flags_for(version)?;
    for (name, values) in flags {
        let flag = table
            .join_flag(name)
            .filter(|f| f.long == name)
            .with_context(|| format!("{who}: keadm join {version} has no flag --{name}"))?;
        if flag.kind == edgeferry_bundle::keadm::FlagKind::Bool
            && values.iter().any(|v| v != "true" && v != "false")
        {
            bail!("{who}: --{name} takes true or false");
        }
    }
    Ok(())
}

/// The preflight's view of a node's keadm settings: the cloudcore host,
/// the ports it must reach (hub, then cert), and the CRI socket.
pub fn preflight_target(
    cloudcore: &str,
    flags: &BTreeMap<String, Vec<String>>,
    who: &str,
) -> Result<(String, Vec<u16>, String)> {
    let (cloud_host, cloud_port) = split_host_port(cloudcore).with_context(|| who.to_string())?;
    let certport: u16 = match flags.get("certport").and_then(|v| v.last()) {
        Some(p) => p
            .parse()
            .with_context(|| format!("{who}: certport {p:?} is not a port"))?,
        None => 10002,
    };
    let endpoint = flags
        .get("remote-runtime-endpoint")
        .and_then(|v| v.last())
        .map_or("unix:///run/containerd/containerd.sock", String::as_str);
    let cri_socket = endpoint
        .strip_prefix("unix://")
        .unwrap_or(endpoint)
        .to_string();
    let mut ports = vec![cloud_port];
    if certport != cloud_port {
        ports.push(certport);
    }
    Ok((cloud_host, ports, cri_socket))
}

pub fn build(input: &PlanInput, config: &Config, redactor: &Redactor) -> Result<JoinPlan> {
    let inv = input.inventory;
    let state = input.state;
    let StoreOffer {
        version,
        bundles,
        keadm,
    } = store_offer(state, inv.kubeedge_version.as_deref(), input.store_dir)?;

    let mirror = match input.mirror.or(inv.mirror.as_deref()) {
        Some(m) => mirror_address(m)?,
        None => bail!(
            "no mirror address: pass --mirror HOST:PORT (where nodes reach edgeferry serve), set EDGEFERRY_MIRROR, or set mirror: in the inventory"
        ),
    };
    let hosts_toml = hosts_toml_for(state, &mirror);
    let store_arches: Vec<String> = bundles.keys().cloned().collect();

    let mut nodes = Vec::new();
    for spec in &inv.nodes {
        if let Some(limit) = input.limit {
            if !limit.contains(&spec.label) && !limit.contains(&spec.host) {
                continue;
            }
        }
        let who = format!("node {}", spec.label);
        check_flags(&version, &spec.flags, &who)?;
        let (cloud_host, ports, cri_socket) = preflight_target(&spec.cloudcore, &spec.flags, &who)?;

        let timeout = |s: Step| timeout_for(s, config, input.timeouts);
        let mut steps = Vec::new();
        let target = format!("{}@{}:{}", spec.user, spec.host, spec.port);
        let connect = match &spec.jump {
            Some(j) => format!("ssh {target} via {}@{}:{}", j.user, j.host, j.port),
            None => format!("ssh {target}"),
        };
        steps.push(StepPlan {
            step: Step::Connect,
            timeout_secs: timeout(Step::Connect).as_secs(),
            command: connect.clone(),
            secret_command: connect,
        });
        let mut push = |step: Step, script: String| {
            let secret_command = script::wrap(&script, spec.sudo);
            steps.push(StepPlan {
                step,
                timeout_secs: timeout(step).as_secs(),
                command: redactor.scrub(&secret_command),
                secret_command,
            });
        };
        match input.action {
            Action::Join => {
                push(
                    Step::Preflight,
                    script::preflight(&script::PreflightParams {
                        store_arches: store_arches.clone(),
                        cri_socket,
                        mirror: &mirror,
                        cloud_host: &cloud_host,
                        cloud_ports: ports,
                        min_free_mib: config.join.min_free_mib,
                    }),
                );
                push(Step::Containerd, script::containerd(&hosts_toml));
                push(Step::Fetch, script::fetch(&version, &mirror, &keadm, false));
                let args = script::join_args(
                    &version,
                    &spec.cloudcore,
                    spec.edgenode_name.as_deref(),
                    spec.token.as_ref().map(|t| t.expose()),
                    &spec.flags,
                );
                push(
                    Step::KeadmJoin,
                    script::keadm_join(
                        &version,
                        script::JoinArgs::Inline(&args),
                        timeout(Step::KeadmJoin).as_secs(),
                    ),
                );
                push(Step::Postcheck, script::postcheck());
            }
            Action::Reset => {
                push(Step::Fetch, script::fetch(&version, &mirror, &keadm, false));
                let mut args = Vec::new();
                if let Some(e) = spec
                    .flags
                    .get("remote-runtime-endpoint")
                    .and_then(|v| v.last())
                {
                    args.push(format!("--remote-runtime-endpoint={e}"));
                }
                push(
                    Step::KeadmReset,
                    script::keadm_reset(&version, &args, timeout(Step::KeadmReset).as_secs()),
                );
            }
        }
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
            steps,
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
    Ok(JoinPlan {
        action: input.action,
        inventory: input.inventory_path.to_path_buf(),
        inventory_format: inv.format,
        kubeedge_version: version,
        mirror,
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
        nodes,
    })
}

impl JoinPlan {
    /// Human-readable plan for `--dry-run`.
    pub fn render(&self) -> String {
        let mut s = format!(
            "plan: {} {} node(s), KubeEdge {}, {} at a time, mirror http://{}, host keys {}\n",
            match self.action {
                Action::Join => "join",
                Action::Reset => "reset",
            },
            self.nodes.len(),
            self.kubeedge_version,
            self.parallel,
            self.mirror,
            self.host_keys
        );
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
            for st in &n.steps {
                s.push_str(&format!(
                    "  {} (timeout {}s):\n",
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
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("site.yaml");
        std::fs::write(&path, yaml).unwrap();
        let redactor = Redactor::default();
        std::env::set_var("PLAN_TEST_TOKEN", "tok-abcdef-123456");
        let inv = super::super::inventory::read(&path, &redactor)?;
        build(
            &PlanInput {
                action: Action::Join,
                inventory_path: &path,
                inventory: &inv,
                store_dir: Path::new("/srv/store"),
                state: &state(),
                mirror: Some("http://10.0.0.5:5000/"),
                state_dir: dir.path().join("state"),
                parallel: None,
                accept_new_host_keys: false,
                limit,
                timeouts: &BTreeMap::new(),
            },
            &Config::default(),
            &redactor,
        )
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
        assert!(join.command.contains("--token=<redacted>"));
        assert!(!join.command.contains("tok-abcdef"));
        assert!(join.secret_command.contains("--token=tok-abcdef-123456"));
        assert!(join.command.contains("--edgenode-name=edge-two"));
        assert!(join.command.contains("--labels=c=d") && !join.command.contains("--labels=a=b"));
        assert!(join.command.contains("--cgroupdriver=systemd"));
        assert!(plan.nodes[0].name.starts_with("edge-"));
        let json = serde_json::to_string(&plan).unwrap();
        assert!(!json.contains("tok-abcdef") && !json.contains("secret_command"));
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
