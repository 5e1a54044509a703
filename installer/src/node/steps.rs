//! The per-node steps, in one table: their names, their order for each
//! action, their timeouts, how a failure of each is named, and the sh each
//! runs. The SSH join planner (`join::plan`) and pull mode's `/join.sh`
//! (`pull::script`) both walk [`steps`], so adding a step is one edit here:
//! a variant, its row in [`Step::info`], its place in [`steps`] and its sh
//! in [`script`]. Journals, reports, resume and `/v1/report` follow by name.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::hosts::{HostsFile, Mirrors};
use super::script::{
    self, JoinArgs, KeadmAsset, KeadmUpgradeParams, PostcheckParams, PreflightParams,
    UpgradePreflightParams,
};
use crate::config::Config;

/// One step on one node. Names are stable: journals, reports, pull-mode
/// reports and `timeouts:` in inventories use them.
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
    /// `edgeferry upgrade`: edgecore installed, running, its version; disk.
    UpgradePreflight,
    /// `keadm backup edge`.
    KeadmBackup,
    /// `keadm upgrade edge --toVersion … --image … --image-digest … --force`.
    KeadmUpgrade,
    /// edgecore at the target version, then the join's postcheck.
    UpgradePostcheck,
    /// After a failed upgrade: `keadm rollback edge`.
    KeadmRollback,
    /// edgecore at the version before, then the join's postcheck.
    RollbackPostcheck,
}

/// The cause name of a `keadm_join` that was stopped because edgecore
/// logged that it cannot get its certificates (a token for another CA, a
/// malformed or expired token, a certificate service that does not
/// answer): see `script::EDGECORE_FAILED`.
pub const EDGECORE_CERTIFICATE: &str = "edgecore_certificate";

/// What to do to the nodes of an inventory.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Join,
    Reset,
    Upgrade,
}

impl Action {
    pub fn name(self) -> &'static str {
        match self {
            Action::Join => "join",
            Action::Reset => "reset",
            Action::Upgrade => "upgrade",
        }
    }
}

/// The facts about one step that are not its sh.
pub struct StepInfo {
    pub name: &'static str,
    /// The stable cause name a failure of this step gets in reports.
    pub error_kind: &'static str,
    /// The output line that best explains a failure starts with this
    /// (else the last line of output is used).
    pub explain_prefix: &'static str,
    /// What failed, for messages that say how it ended ("keadm join exited 1").
    pub doing: Option<&'static str>,
}

impl Step {
    pub fn info(self) -> StepInfo {
        let (name, error_kind, explain_prefix, doing) = match self {
            Step::Connect => ("connect", "connect", "", None),
            Step::Preflight => ("preflight", "preflight", "preflight:", None),
            Step::Containerd => (
                "containerd",
                "containerd",
                "",
                Some("configuring containerd"),
            ),
            Step::Fetch => ("fetch", "fetch", "", None),
            Step::KeadmJoin => ("keadm_join", "keadm_failed", "Error:", Some("keadm join")),
            Step::Postcheck => ("postcheck", "postcheck", "postcheck:", None),
            Step::KeadmReset => (
                "keadm_reset",
                "keadm_failed",
                "Error:",
                Some("keadm reset edge"),
            ),
            Step::UpgradePreflight => ("upgrade_preflight", "preflight", "preflight:", None),
            Step::KeadmBackup => (
                "keadm_backup",
                "keadm_failed",
                "Error:",
                Some("keadm backup edge"),
            ),
            Step::KeadmUpgrade => (
                "keadm_upgrade",
                "keadm_failed",
                "Error:",
                Some("keadm upgrade edge"),
            ),
            Step::UpgradePostcheck => ("upgrade_postcheck", "postcheck", "postcheck:", None),
            Step::KeadmRollback => (
                "keadm_rollback",
                "keadm_failed",
                "Error:",
                Some("keadm rollback edge"),
            ),
            Step::RollbackPostcheck => ("rollback_postcheck", "postcheck", "postcheck:", None),
        };
        StepInfo {
            name,
            error_kind,
            explain_prefix,
            doing,
        }
    }

    pub fn name(self) -> &'static str {
        self.info().name
    }

    pub fn from_name(name: &str) -> Option<Step> {
        all_steps().find(|s| s.name() == name)
    }

    /// Runs keadm, whose own timeout is enforced on the node by `timeout`.
    pub fn runs_keadm(self) -> bool {
        matches!(
            self,
            Step::KeadmJoin
                | Step::KeadmReset
                | Step::KeadmBackup
                | Step::KeadmUpgrade
                | Step::KeadmRollback
        )
    }

    /// A postcheck: its settle time and connect grace add to its timeout.
    pub fn is_postcheck(self) -> bool {
        matches!(
            self,
            Step::Postcheck | Step::UpgradePostcheck | Step::RollbackPostcheck
        )
    }

    /// The default timeout, unless the inventory overrides it.
    pub fn timeout(self, config: &Config, overrides: &BTreeMap<Step, Duration>) -> Duration {
        if let Some(t) = overrides.get(&self) {
            return *t;
        }
        let j = &config.join;
        match self {
            Step::Connect => j.connect_timeout,
            Step::Preflight => j.preflight_timeout,
            Step::Containerd => j.containerd_timeout,
            Step::Fetch => j.fetch_timeout,
            Step::KeadmJoin => j.keadm_join_timeout,
            Step::Postcheck => j.postcheck_timeout,
            Step::KeadmReset => j.keadm_reset_timeout,
            Step::UpgradePreflight => j.upgrade_preflight_timeout,
            Step::KeadmBackup => j.keadm_backup_timeout,
            Step::KeadmUpgrade => j.keadm_upgrade_timeout,
            Step::UpgradePostcheck | Step::RollbackPostcheck => j.postcheck_timeout,
            Step::KeadmRollback => j.keadm_rollback_timeout,
        }
    }
}

/// The steps of an action, in order.
pub fn steps(action: Action) -> &'static [Step] {
    match action {
        Action::Join => &[
            Step::Connect,
            Step::Preflight,
            Step::Containerd,
            Step::Fetch,
            Step::KeadmJoin,
            Step::Postcheck,
        ],
        Action::Reset => &[Step::Connect, Step::Fetch, Step::KeadmReset],
        // The containerd and fetch steps are the join's, unchanged: the
        // hosts.toml files stay current and the target's keadm is checked.
        Action::Upgrade => &[
            Step::Connect,
            Step::UpgradePreflight,
            Step::Containerd,
            Step::Fetch,
            Step::KeadmBackup,
            Step::KeadmUpgrade,
            Step::UpgradePostcheck,
        ],
    }
}

/// The steps an upgrade runs when `keadm_upgrade` or its postcheck failed
/// (unless `--no-rollback`), in order.
pub const ROLLBACK_STEPS: &[Step] = &[Step::KeadmRollback, Step::RollbackPostcheck];

/// Whether a failure of this step is followed by [`ROLLBACK_STEPS`].
pub fn rolls_back(step: Step) -> bool {
    matches!(step, Step::KeadmUpgrade | Step::UpgradePostcheck)
}

/// Every step of every action, once each, in order.
pub fn all_steps() -> impl Iterator<Item = Step> {
    let mut all: Vec<Step> = Vec::new();
    for step in [Action::Join, Action::Reset, Action::Upgrade]
        .iter()
        .flat_map(|a| steps(*a).iter())
        .chain(ROLLBACK_STEPS)
    {
        if !all.contains(step) {
            all.push(*step);
        }
    }
    all.into_iter()
}

/// The steps of an action that run sh on the node: all but connecting,
/// which pull mode's nodes do not need.
pub fn node_steps(action: Action) -> impl Iterator<Item = Step> {
    steps(action)
        .iter()
        .copied()
        .filter(|s| *s != Step::Connect)
}

/// The last word of a pull-mode node's reports, after its final step.
pub const DONE: &str = "done";

/// The step names a pull-mode node may report: the node steps of its
/// action (join, or upgrade and its rollback), then [`DONE`].
pub fn report_step_names(action: Action) -> Vec<&'static str> {
    let rollback: &[Step] = match action {
        Action::Upgrade => ROLLBACK_STEPS,
        Action::Join | Action::Reset => &[],
    };
    node_steps(action)
        .chain(rollback.iter().copied())
        .map(Step::name)
        .chain([DONE])
        .collect()
}

/// "connect, preflight, …": for messages that list the valid names.
pub fn all_names() -> String {
    all_steps().map(Step::name).collect::<Vec<_>>().join(", ")
}

/// Everything any step's sh is made from, for one node (or, in pull mode,
/// for every node: the keadm arguments then arrive at run time).
pub struct StepInput<'a> {
    pub version: &'a str,
    /// This node's mirrors, in the order it tries them.
    pub mirrors: &'a Mirrors,
    pub keadm: &'a [KeadmAsset],
    pub hosts: &'a [HostsFile],
    pub preflight: PreflightParams<'a>,
    pub postcheck: PostcheckParams<'a>,
    pub join_args: JoinArgs,
    /// `keadm reset edge` arguments beyond `--force`.
    pub reset_args: &'a [String],
    pub keadm_join_timeout: Duration,
    pub keadm_reset_timeout: Duration,
    /// `edgeferry upgrade`'s steps; `None` for join and reset.
    pub upgrade: Option<UpgradeInput<'a>>,
}

/// What the upgrade's steps are made from.
pub struct UpgradeInput<'a> {
    pub preflight: UpgradePreflightParams<'a>,
    pub keadm: KeadmUpgradeParams<'a>,
    pub backup_timeout: Duration,
    pub rollback_timeout: Duration,
}

/// The sh a step runs on the node; `None` for connecting, which is not sh.
pub fn script(step: Step, input: &StepInput) -> Option<String> {
    let i = input;
    Some(match step {
        Step::Connect => return None,
        Step::Preflight => script::preflight(&i.preflight),
        Step::Containerd => script::containerd(i.hosts, i.mirrors.first()),
        Step::Fetch => script::fetch(i.version, i.mirrors, i.keadm, false),
        Step::KeadmJoin => {
            script::keadm_join(i.version, i.join_args, i.keadm_join_timeout.as_secs())
        }
        Step::Postcheck => script::postcheck(&i.postcheck),
        Step::KeadmReset => {
            script::keadm_reset(i.version, i.reset_args, i.keadm_reset_timeout.as_secs())
        }
        Step::UpgradePreflight => script::upgrade_preflight(&i.upgrade.as_ref()?.preflight),
        Step::KeadmBackup => {
            script::keadm_backup(i.version, i.upgrade.as_ref()?.backup_timeout.as_secs())
        }
        Step::KeadmUpgrade => script::keadm_upgrade(&i.upgrade.as_ref()?.keadm),
        Step::UpgradePostcheck => script::version_postcheck(Some(i.version), &i.postcheck),
        Step::KeadmRollback => {
            script::keadm_rollback(i.version, i.upgrade.as_ref()?.rollback_timeout.as_secs())
        }
        Step::RollbackPostcheck => script::version_postcheck(None, &i.postcheck),
    })
}

/// A made-up site for unit tests of the sh and of `/join.sh`.
#[cfg(test)]
pub mod fixture {
    use super::*;
    use crate::node::hosts::Mirror;

    pub struct Site {
        pub keadm: Vec<KeadmAsset>,
        pub hosts: Vec<HostsFile>,
        pub mirrors: Mirrors,
        pub digests: BTreeMap<String, String>,
    }

    pub fn site() -> Site {
        with_mirror(Mirror::plain("10.0.0.5:5000"))
    }

    /// The site with its mirror over TLS (a made-up CA).
    pub fn tls_site() -> Site {
        with_mirror(Mirror {
            address: "10.0.0.5:5000".into(),
            ca_pem: Some("-----BEGIN CERTIFICATE-----\nMIIB'x\n-----END CERTIFICATE-----\n".into()),
        })
    }

    fn with_mirror(mirror: Mirror) -> Site {
        with_mirrors(Mirrors::one(mirror))
    }

    /// Two plain-HTTP site mirrors as the second node of an inventory
    /// sees them (rotated), behind a node-local mirror.
    pub fn two_mirrors() -> Site {
        let mirrors = Mirrors {
            node: Some("http://127.0.0.1:30020".into()),
            site: vec![
                Mirror::plain("10.0.0.5:5000"),
                Mirror::plain("10.0.0.6:5000"),
            ],
        };
        with_mirrors(mirrors.rotated(1))
    }

    pub fn with_mirrors(mirrors: Mirrors) -> Site {
        Site {
            keadm: vec![KeadmAsset {
                arch: "amd64".into(),
                file: "keadm-v1.23.1-linux-amd64.tar.gz".into(),
                sha256: "ab".repeat(32),
                size: 1,
            }],
            hosts: super::super::hosts::hosts_files(
                &mirrors,
                &["docker.io".to_string()].into_iter().collect(),
            ),
            mirrors,
            digests: [("amd64".to_string(), format!("sha256:{}", "ef".repeat(32)))].into(),
        }
    }

    impl Site {
        pub fn input(&self, args: JoinArgs) -> StepInput<'_> {
            StepInput {
                version: "v1.23.1",
                mirrors: &self.mirrors,
                keadm: &self.keadm,
                hosts: &self.hosts,
                preflight: PreflightParams {
                    store_arches: vec!["amd64".into()],
                    store_images: vec![
                        "docker.io/kubeedge/installation-package:v1.23.1".into(),
                        "registry.k8s.io/pause:3.6".into(),
                        "registry.k8s.io/pause:3.10".into(),
                    ],
                    cri_socket: "/run/containerd/containerd.sock".into(),
                    mirrors: &self.mirrors,
                    cloud_host: "10.0.0.2",
                    cloud_ports: vec![10000, 10002],
                    min_free_mib: 512,
                },
                postcheck: PostcheckParams {
                    cloud_host: "10.0.0.2",
                    hub_port: 10000,
                    hub: script::HubProtocol::Websocket,
                    settle_secs: 20,
                    connect_grace_secs: 30,
                },
                join_args: args,
                reset_args: &[],
                keadm_join_timeout: Duration::from_secs(300),
                keadm_reset_timeout: Duration::from_secs(60),
                upgrade: Some(UpgradeInput {
                    preflight: UpgradePreflightParams {
                        to: "v1.23.1",
                        store_arches: vec!["amd64".into()],
                        mirrors: &self.mirrors,
                        min_free_mib: 512,
                    },
                    keadm: KeadmUpgradeParams {
                        to: "v1.23.1",
                        image: "docker.io/kubeedge/installation-package",
                        digests: &self.digests,
                        timeout_secs: 600,
                    },
                    backup_timeout: Duration::from_secs(60),
                    rollback_timeout: Duration::from_secs(60),
                }),
            }
        }
    }
}

/// Fails the test with sh's complaint when `text` is not valid sh.
#[cfg(test)]
pub fn assert_valid_sh(text: &str) {
    let out = std::process::Command::new("sh")
        .arg("-n")
        .arg("-c")
        .arg(text)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_step_but_connect_is_valid_sh_either_way_its_arguments_come() {
        for (site, args) in [
            (fixture::site(), JoinArgs::Stdin),
            (fixture::site(), JoinArgs::FromFile),
            (fixture::tls_site(), JoinArgs::Stdin),
            (fixture::two_mirrors(), JoinArgs::Stdin),
        ] {
            for step in all_steps() {
                match script(step, &site.input(args)) {
                    Some(sh) => assert_valid_sh(&sh),
                    None => assert_eq!(step, Step::Connect),
                }
            }
        }
    }

    #[test]
    fn with_two_mirrors_preflight_and_fetch_try_them_in_the_nodes_order() {
        let site = fixture::two_mirrors();
        let input = site.input(JoinArgs::Stdin);
        let order = "mirrors='http://10.0.0.6:5000 http://10.0.0.5:5000'";
        for step in [Step::Preflight, Step::Fetch, Step::UpgradePreflight] {
            let sh = script(step, &input).unwrap();
            assert!(sh.contains(order), "{step:?}:\n{sh}");
        }
        let fetch = script(Step::Fetch, &input).unwrap();
        assert!(
            fetch.contains("curl -fsS --connect-timeout 5 -o \"$d/$file.part\" \"$1/files/$file\""),
            "{fetch}"
        );
        // The node-local mirror serves images only: never asked for keadm.
        assert!(!fetch.contains("30020"), "{fetch}");
        let containerd = script(Step::Containerd, &input).unwrap();
        assert!(
            containerd.contains("[host.\"http://127.0.0.1:30020\"]"),
            "{containerd}"
        );
    }

    #[test]
    fn names_round_trip_and_every_step_belongs_to_an_action() {
        for step in all_steps() {
            assert_eq!(Step::from_name(step.name()), Some(step));
            assert!(
                steps(Action::Join).contains(&step)
                    || steps(Action::Reset).contains(&step)
                    || steps(Action::Upgrade).contains(&step)
                    || ROLLBACK_STEPS.contains(&step),
                "{} is in no action",
                step.name()
            );
        }
        assert_eq!(
            report_step_names(Action::Upgrade),
            [
                "upgrade_preflight",
                "containerd",
                "fetch",
                "keadm_backup",
                "keadm_upgrade",
                "upgrade_postcheck",
                "keadm_rollback",
                "rollback_postcheck",
                "done"
            ]
        );
        assert_eq!(
            report_step_names(Action::Join),
            [
                "preflight",
                "containerd",
                "fetch",
                "keadm_join",
                "postcheck",
                "done"
            ]
        );
    }
}
