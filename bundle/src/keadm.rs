//! The `keadm join` and `keadm reset edge` flags of each KubeEdge version
//! edgeferry supports, as plain data, copied from the upstream sources
//! (`AddJoinOtherFlags` in `keadm/cmd/keadm/app/cmd/edge/join_others.go`,
//! and `reset edge`) and checked against the real
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
}

/// The flags of one KubeEdge version's keadm.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeadmFlags {
    /// Linux `keadm join`.
    pub join: &'static [Flag],
    /// `keadm reset edge`.
    pub reset_edge: &'static [Flag],
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
}

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

const V1_21_TO_V1_23: KeadmFlags = KeadmFlags {
    join: JOIN_FLAGS_V1_21_TO_V1_23,
    reset_edge: RESET_EDGE_FLAGS_V1_21_TO_V1_23,
};

/// Per KubeEdge minor version (of 1.x): the keadm flags.
const FLAG_TABLE: &[(u32, KeadmFlags)] = &[
    (21, V1_21_TO_V1_23),
    (22, V1_21_TO_V1_23),
    (23, V1_21_TO_V1_23),
];

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
