//! The `keadm join`, `reset edge`, `upgrade edge`, `backup edge` and
//! `rollback edge` flags of each KubeEdge version edgeferry supports, as
//! plain data, copied from the upstream sources (`AddJoinOtherFlags` in
//! `keadm/cmd/keadm/app/cmd/edge/join_others.go`, `reset edge`, and
//! `AddBaseFlags` / `AddUpgradeFlags` / `AddRollbackFlags` in
//! `keadm/cmd/keadm/app/cmd/edge/options.go`) and checked against the real
//! v1.23.1 keadm's `--help`.
//!
//! Two users: the builder's stand-in keadm (`builder::sample`) parses
//! command lines with them exactly as the real keadm would, and the
//! installer's join planner validates and renders join flags with them.
//! A new KubeEdge version is a new row in [`FLAG_TABLE`].

use anyhow::{bail, Context, Result};

/// How pflag parses a flag's value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlagKind {
    /// pflag `string`
    Str,
    /// pflag `stringSlice` / `stringArray`; the stand-in joins values with commas.
    List,
    /// pflag `bool`: `--flag` or `--flag=<bool>`, never `--flag <bool>`.
    Bool,
}

/// One flag as the real keadm registers it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Flag {
    /// Name without the dashes, e.g. `cloudcore-ipport`.
    pub long: &'static str,
    /// pflag shorthand, e.g. `e` for `-e`.
    pub short: Option<char>,
    pub kind: FlagKind,
    /// The default as `--help` shows it; `""` for none.
    pub default: &'static str,
    /// The help text, verbatim.
    pub help: &'static str,
    /// pflag `MarkDeprecated`: the flag is still accepted, hidden from
    /// `--help`, and using it prints `Flag --<long> has been deprecated,
    /// <message>` on stderr.
    pub deprecated: Option<&'static str>,
}

/// The flags of one KubeEdge version's keadm.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeadmFlags {
    /// Linux `keadm join`.
    pub join: &'static [Flag],
    /// `keadm reset edge`.
    pub reset_edge: &'static [Flag],
    /// `keadm upgrade edge`.
    pub upgrade_edge: &'static [Flag],
    /// `keadm backup edge`.
    pub backup_edge: &'static [Flag],
    /// `keadm rollback edge`.
    pub rollback_edge: &'static [Flag],
}

impl KeadmFlags {
    /// The join flag called `name`: a long name (`cloudcore-ipport`) or a
    /// single-character shorthand (`e`), without dashes.
    pub fn join_flag(&self, name: &str) -> Option<&'static Flag> {
        let mut chars = name.chars();
        let short = match (chars.next(), chars.next()) {
            (Some(c), None) => Some(c),
            _ => None,
        };
        self.join
            .iter()
            .find(|f| f.long == name || (short.is_some() && f.short == short))
    }

    /// The flags of `keadm <command> edge` for `command` one of `reset`,
    /// `upgrade`, `backup`, `rollback`; `None` for any other word.
    pub fn edge_command(&self, command: &str) -> Option<&'static [Flag]> {
        EDGE_COMMANDS
            .iter()
            .find(|(name, _)| *name == command)
            .map(|(_, get)| get(self))
    }
}

/// The `keadm <command> edge` commands, each with its table: the one list
/// the stand-in's dispatcher and usage are written from.
#[allow(clippy::type_complexity)]
pub const EDGE_COMMANDS: &[(&str, fn(&KeadmFlags) -> &'static [Flag])] = &[
    ("reset", |f| f.reset_edge),
    ("upgrade", |f| f.upgrade_edge),
    ("backup", |f| f.backup_edge),
    ("rollback", |f| f.rollback_edge),
];

const fn flag(
    long: &'static str,
    short: Option<char>,
    kind: FlagKind,
    default: &'static str,
    help: &'static str,
) -> Flag {
    Flag {
        long,
        short,
        kind,
        default,
        help,
        deprecated: None,
    }
}

/// A flag registered and then marked deprecated with `message`.
const fn deprecated(
    long: &'static str,
    kind: FlagKind,
    default: &'static str,
    help: &'static str,
    message: &'static str,
) -> Flag {
    Flag {
        long,
        short: None,
        kind,
        default,
        help,
        deprecated: Some(message),
    }
}

/// Linux `keadm join` from v1.21 (which dropped `--with-mqtt`) to v1.23:
/// upstream's `AddJoinOtherFlags` registers the same flags in each.
#[rustfmt::skip]
const JOIN_FLAGS_V1_21_TO_V1_23: &[Flag] = &[
    flag("kubeedge-version", None, FlagKind::Str, "", "Use this key to download and use the required KubeEdge version"),
    flag("cgroupdriver", None, FlagKind::Str, "cgroupfs", "CGroupDriver that uses to manipulate cgroups on the host (cgroupfs or systemd), the default value is cgroupfs"),
    flag("certPath", None, FlagKind::Str, "/etc/kubeedge/certs", "The certPath used by edgecore, the default value is /etc/kubeedge/certs"),
    flag("cloudcore-ipport", Some('e'), FlagKind::Str, "", "IP:Port address of KubeEdge CloudCore"),
    flag("edgenode-name", Some('i'), FlagKind::Str, "", "KubeEdge Node unique identification string, if flag not used then the command will generate a unique id on its own"),
    flag("remote-runtime-endpoint", Some('p'), FlagKind::Str, "unix:///run/containerd/containerd.sock", "KubeEdge Edge Node RemoteRuntimeEndpoint string."),
    flag("token", Some('t'), FlagKind::Str, "", "Used for edge to apply for the certificate"),
    flag("certport", Some('s'), FlagKind::Str, "", "The port where to apply for the edge certificate"),
    flag("tarballpath", None, FlagKind::Str, "", "Use this key to set the temp directory path for KubeEdge release assets, if not exist, download it"),
    flag("labels", Some('l'), FlagKind::List, "", "Use this key to set the customized labels for node, you can input customized labels like key1=value1,key2=value2"),
    flag("image-repository", None, FlagKind::Str, "", "Use this key to decide which image repository to pull images from"),
    flag("hub-protocol", None, FlagKind::Str, "websocket", "Use this key to decide which communication protocol the edge node adopts."),
    flag("set", None, FlagKind::List, "", "Set values on the command line (can specify multiple or separate values with commas: key1=val1,key2=val2)"),
    flag("pre-run", None, FlagKind::Str, "", "Execute the prescript before joining the node. (for example: keadm join --pre-run=./test-script.sh ...)"),
    flag("post-run", None, FlagKind::Str, "", "Execute the postscript after joining the node. (for example: keadm join --post-run=./test-script.sh ...)"),
];

/// `keadm reset edge`: the same flags in every version from v1.20 on.
#[rustfmt::skip]
const RESET_EDGE_FLAGS_V1_21_TO_V1_23: &[Flag] = &[
    flag("force", None, FlagKind::Bool, "false", "Reset the node without prompting for confirmation"),
    flag("remote-runtime-endpoint", None, FlagKind::Str, "", "Use this key to set container runtime endpoint"),
    flag("pre-run", None, FlagKind::Str, "", "Execute the prescript before resetting the node."),
    flag("post-run", None, FlagKind::Str, "", "Execute the postscript after resetting the node."),
];

/// `AddBaseFlags` (`options.go`): `--config`, `--pre-run`, `--post-run`,
/// shared by `upgrade edge`, `backup edge` and `rollback edge`.
macro_rules! base_flags {
    () => {
        [
            flag("config", None, FlagKind::Str, "/etc/kubeedge/config/edgecore.yaml", "Use this key to specify the path to the edgecore configuration file."),
            flag("pre-run", None, FlagKind::Str, "", "Execute the prescript before upgrading the node. (for example: keadm upgrade edge --pre-run=./test-script.sh ...)"),
            flag("post-run", None, FlagKind::Str, "", "Execute the postscript after upgrading the node. (for example: keadm upgrade edge --post-run=./test-script.sh ...)"),
        ]
    };
}

/// `keadm backup edge` (`backup.go`: `AddBaseFlags` only), v1.21 to v1.23.
#[rustfmt::skip]
const BACKUP_EDGE_FLAGS_V1_21_TO_V1_23: &[Flag] = &base_flags!();

/// `keadm rollback edge` (`AddRollbackFlags`), v1.21 to v1.23.
#[rustfmt::skip]
const ROLLBACK_EDGE_FLAGS_V1_21_TO_V1_23: &[Flag] = &{
    let [config, pre, post] = base_flags!();
    [
        config, pre, post,
        flag("historical-version", None, FlagKind::Str, "", "Use this key to roll back the KubeEdge version, If not set, get the latest backup version."),
    ]
};

/// What v1.21 and v1.22 print for a deprecated upgrade flag.
const UPGRADE_DEPRECATED: &str =
    "For compatibility with historical versions, It will be removed in v1.23";

/// `keadm upgrade edge` of v1.21 and v1.22 (`AddUpgradeFlags` in
/// `options.go`, kubeedge/kubeedge commit 1eecc0356f5f): the base flags,
/// `--toVersion` (default `v` + `DefaultKubeEdgeVersion`, so per minor),
/// `--image`, `--force`, and five flags kept for old callers but marked
/// deprecated ("It will be removed in v1.23"). No `--image-digest`.
macro_rules! upgrade_flags_v1_21_v1_22 {
    ($to_version:literal) => {{
        let [config, pre, post] = base_flags!();
        [
            config,
            pre,
            post,
            flag(
                "toVersion",
                None,
                FlagKind::Str,
                $to_version,
                "Use this key to upgrade the required KubeEdge version.",
            ),
            flag(
                "image",
                None,
                FlagKind::Str,
                "kubeedge/installation-package",
                "Use this key to specify installation image to download.",
            ),
            flag(
                "force",
                None,
                FlagKind::Bool,
                "false",
                "Upgrade the node without prompting for confirmation",
            ),
            deprecated(
                "upgradeID",
                FlagKind::Str,
                "",
                "Use this key to specify Upgrade CR ID",
                UPGRADE_DEPRECATED,
            ),
            deprecated(
                "historyID",
                FlagKind::Str,
                "",
                "Use this key to specify Upgrade CR status history ID.",
                UPGRADE_DEPRECATED,
            ),
            deprecated(
                "fromVersion",
                FlagKind::Str,
                "",
                "Use this key to specify the origin version before upgrade",
                UPGRADE_DEPRECATED,
            ),
            deprecated(
                "type",
                FlagKind::Str,
                "upgrade",
                "Use this key to specify the task type for reporting status.",
                UPGRADE_DEPRECATED,
            ),
            deprecated(
                "disable-backup",
                FlagKind::Bool,
                "false",
                "Use this key to specify the backup enable for upgrade.",
                UPGRADE_DEPRECATED,
            ),
        ]
    }};
}

#[rustfmt::skip]
const UPGRADE_EDGE_FLAGS_V1_21: &[Flag] = &upgrade_flags_v1_21_v1_22!("v1.21.0");
#[rustfmt::skip]
const UPGRADE_EDGE_FLAGS_V1_22: &[Flag] = &upgrade_flags_v1_21_v1_22!("v1.22.0");

/// `keadm upgrade edge` of v1.23: the deprecated flags are gone and
/// `--image-digest` is new. The flag set and the `--image-digest` help
/// text are the v1.23.1 `--help` output as quoted in issue 13; upstream's
/// v1.23 `options.go` was not in the searched source.
#[rustfmt::skip]
const UPGRADE_EDGE_FLAGS_V1_23: &[Flag] = &{
    let [config, pre, post] = base_flags!();
    [
        config, pre, post,
        flag("toVersion", None, FlagKind::Str, "v1.23.0", "Use this key to upgrade the required KubeEdge version."),
        flag("image", None, FlagKind::Str, "kubeedge/installation-package", "Use this key to specify installation image to download."),
        flag("image-digest", None, FlagKind::Str, "", "specify the correct image digest to verify the local image"),
        flag("force", None, FlagKind::Bool, "false", "Upgrade the node without prompting for confirmation"),
    ]
};

const V1_21: KeadmFlags = KeadmFlags {
    join: JOIN_FLAGS_V1_21_TO_V1_23,
    reset_edge: RESET_EDGE_FLAGS_V1_21_TO_V1_23,
    upgrade_edge: UPGRADE_EDGE_FLAGS_V1_21,
    backup_edge: BACKUP_EDGE_FLAGS_V1_21_TO_V1_23,
    rollback_edge: ROLLBACK_EDGE_FLAGS_V1_21_TO_V1_23,
};

const V1_22: KeadmFlags = KeadmFlags {
    upgrade_edge: UPGRADE_EDGE_FLAGS_V1_22,
    ..V1_21
};

const V1_23: KeadmFlags = KeadmFlags {
    upgrade_edge: UPGRADE_EDGE_FLAGS_V1_23,
    ..V1_21
};

/// Per KubeEdge minor version (of 1.x): the keadm flags.
const FLAG_TABLE: &[(u32, KeadmFlags)] = &[(21, V1_21), (22, V1_22), (23, V1_23)];

/// Join flags the stand-in keadm requires, sorted as cobra reports missing
/// flags in name order. Real keadm requires only `--cloudcore-ipport`; the
/// stand-in also requires `--kubeedge-version` because without it real
/// keadm asks the internet (https://kubeedge.io/latestversion) for the
/// latest version, which an isolated site cannot reach.
pub const JOIN_REQUIRED: &[&str] = &["cloudcore-ipport", "kubeedge-version"];

/// The minor version of `vMAJOR.MINOR.PATCH[suffix]`, checking that the
/// whole string is safe to embed in scripts and file names.
pub fn minor_of(version: &str) -> Result<u32> {
    let malformed = || {
        anyhow::anyhow!(
            "kubeedge version {version:?} is not of the form vMAJOR.MINOR.PATCH: pass e.g. v1.23.1"
        )
    };
    let rest = version.strip_prefix('v').ok_or_else(malformed)?;
    let mut parts = rest.splitn(3, '.');
    let major = parts.next().and_then(|p| p.parse::<u32>().ok());
    let minor = parts.next().and_then(|p| p.parse::<u32>().ok());
    let patch = parts.next().unwrap_or("");
    let patch_ok = patch.starts_with(|c: char| c.is_ascii_digit())
        && patch
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '+'));
    match (major, minor) {
        (Some(1), Some(minor)) if patch_ok => Ok(minor),
        (Some(_), Some(_)) if patch_ok => {
            bail!("kubeedge version {version} is not a 1.x release: edgeferry knows KubeEdge v1.21 to v1.23")
        }
        _ => Err(malformed()),
    }
}

/// The keadm flags of KubeEdge `version` (`vMAJOR.MINOR.PATCH`).
pub fn flags_for(version: &str) -> Result<KeadmFlags> {
    let minor = minor_of(version)?;
    FLAG_TABLE
        .iter()
        .find(|(m, _)| *m == minor)
        .map(|(_, flags)| *flags)
        .with_context(|| {
            format!(
                "edgeferry knows the keadm flags of KubeEdge v1.21 to v1.23, not {version}: pick one of those"
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn supported_versions_map_to_their_flags() {
        for (version, minor) in [
            ("v1.21.0", 21),
            ("v1.22.2", 22),
            ("v1.23.1", 23),
            ("v1.22.0-rc.1", 22),
            ("v1.23.1+build.5", 23),
        ] {
            assert_eq!(minor_of(version).unwrap(), minor, "{version}");
            let flags = flags_for(version).unwrap();
            assert_eq!(flags.join.len(), 15);
            assert!(flags.join_flag("with-mqtt").is_none(), "dropped in v1.21");
            assert_eq!(flags.reset_edge[0].long, "force");
            assert_eq!(flags.reset_edge[0].kind, FlagKind::Bool);
        }
        for name in JOIN_REQUIRED {
            assert!(flags_for("v1.23.1").unwrap().join_flag(name).is_some());
        }
        assert!(JOIN_REQUIRED.windows(2).all(|w| w[0] < w[1]), "sorted");
    }

    #[test]
    fn unsupported_versions_are_refused_clearly() {
        let err = flags_for("v1.20.0").unwrap_err().to_string();
        assert_eq!(
            err,
            "edgeferry knows the keadm flags of KubeEdge v1.21 to v1.23, not v1.20.0: pick one of those"
        );
        let err = flags_for("v2.0.0").unwrap_err().to_string();
        assert_eq!(
            err,
            "kubeedge version v2.0.0 is not a 1.x release: edgeferry knows KubeEdge v1.21 to v1.23"
        );
        for garbage in [
            "1.23.1",
            "v1.23",
            "v1.x.0",
            "",
            "v1.23.1 x",
            "v1.23.1;rm",
            "v1.23.a",
        ] {
            let err = flags_for(garbage).unwrap_err().to_string();
            assert_eq!(
                err,
                format!(
                    "kubeedge version {garbage:?} is not of the form vMAJOR.MINOR.PATCH: pass e.g. v1.23.1"
                )
            );
            assert!(!err.contains('\n'));
        }
    }

    #[test]
    fn upgrade_backup_rollback_flags_per_version() {
        let names = |flags: &[Flag]| flags.iter().map(|f| f.long).collect::<Vec<_>>();
        for (version, to_version) in [("v1.21.3", "v1.21.0"), ("v1.22.0", "v1.22.0")] {
            let flags = flags_for(version).unwrap();
            let upgrade = flags.edge_command("upgrade").unwrap();
            assert_eq!(
                names(upgrade),
                [
                    "config",
                    "pre-run",
                    "post-run",
                    "toVersion",
                    "image",
                    "force",
                    "upgradeID",
                    "historyID",
                    "fromVersion",
                    "type",
                    "disable-backup"
                ],
                "{version}"
            );
            assert_eq!(upgrade[3].default, to_version);
            assert!(upgrade[..6].iter().all(|f| f.deprecated.is_none()));
            assert!(upgrade[6..].iter().all(|f| f.deprecated.is_some()));
            assert!(!names(upgrade).contains(&"image-digest"), "{version}");
        }
        let flags = flags_for("v1.23.1").unwrap();
        let upgrade = flags.edge_command("upgrade").unwrap();
        assert_eq!(
            names(upgrade),
            [
                "config",
                "pre-run",
                "post-run",
                "toVersion",
                "image",
                "image-digest",
                "force"
            ]
        );
        assert_eq!(upgrade[3].default, "v1.23.0");
        assert_eq!(upgrade[4].default, "kubeedge/installation-package");
        assert_eq!(upgrade[6].kind, FlagKind::Bool);
        for version in ["v1.21.0", "v1.22.2", "v1.23.1"] {
            let flags = flags_for(version).unwrap();
            assert_eq!(
                names(flags.edge_command("backup").unwrap()),
                ["config", "pre-run", "post-run"]
            );
            assert_eq!(
                names(flags.edge_command("rollback").unwrap()),
                ["config", "pre-run", "post-run", "historical-version"]
            );
            assert_eq!(flags.edge_command("reset"), Some(flags.reset_edge));
            assert_eq!(
                flags.edge_command("backup").unwrap()[0].default,
                "/etc/kubeedge/config/edgecore.yaml"
            );
            assert!(flags.edge_command("join").is_none());
            assert!(flags.edge_command("").is_none());
        }
    }

    #[test]
    fn join_flags_are_found_by_long_and_short_name() {
        let flags = flags_for("v1.23.1").unwrap();
        let by_long = flags.join_flag("cloudcore-ipport").unwrap();
        assert_eq!(by_long.short, Some('e'));
        assert_eq!(by_long.kind, FlagKind::Str);
        assert_eq!(flags.join_flag("e"), Some(by_long));
        assert_eq!(flags.join_flag("l").unwrap().long, "labels");
        assert_eq!(flags.join_flag("labels").unwrap().kind, FlagKind::List);
        assert_eq!(
            flags.join_flag("certPath").unwrap().default,
            "/etc/kubeedge/certs"
        );
        assert_eq!(
            flags.join_flag("p").unwrap().default,
            "unix:///run/containerd/containerd.sock"
        );
        for unknown in ["x", "", "--token", "certpath", "force", "ee"] {
            assert!(flags.join_flag(unknown).is_none(), "{unknown}");
        }
    }
}
