//! The rules `edgeferry upgrade` applies to the version a node runs
//! (`edgecore --version`, read by the `upgrade_preflight` step) before it
//! touches the node: at the target already, a downgrade, or a jump of more
//! than one minor version. Plain functions of plain data.

/// What to do with a node that runs `current` when the target is `target`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// It runs the target already: nothing to do, counted as done.
    UpToDate,
    Upgrade,
    /// Not without the operator's say-so: `kind` is the report's cause name.
    Refused {
        kind: &'static str,
        message: String,
    },
}

/// The cause names of the refusals.
pub const DOWNGRADE_REFUSED: &str = "downgrade_refused";
pub const SKIP_MINOR_REFUSED: &str = "skip_minor_refused";
pub const VERSION_UNKNOWN: &str = "version_unknown";

/// `vMAJOR.MINOR.PATCH[suffix]` -> the three numbers.
pub fn numbers(version: &str) -> Option<(u32, u32, u32)> {
    let rest = version.strip_prefix('v')?;
    let mut parts = rest.splitn(3, '.');
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    let patch = parts.next()?;
    let digits: String = patch.chars().take_while(char::is_ascii_digit).collect();
    Some((major, minor, digits.parse().ok()?))
}

/// KubeEdge moves one minor version at a time (docs/inventory.md says
/// where that rule comes from); a downgrade is a rollback by other means.
pub fn judge(
    current: &str,
    target: &str,
    allow_downgrade: bool,
    allow_skip_minor: bool,
) -> Verdict {
    if current == target {
        return Verdict::UpToDate;
    }
    let (Some(cur), Some(to)) = (numbers(current), numbers(target)) else {
        return Verdict::Refused {
            kind: VERSION_UNKNOWN,
            message: format!(
                "edgecore reports version {current:?}, which is not vMAJOR.MINOR.PATCH: upgrade this node by hand"
            ),
        };
    };
    if to < cur && !allow_downgrade {
        return Verdict::Refused {
            kind: DOWNGRADE_REFUSED,
            message: format!(
                "the node runs {current}, newer than {target}: pass --allow-downgrade to go back (keadm rollback edge restores the last backup instead)"
            ),
        };
    }
    let skips = to.0 != cur.0 || to.1 > cur.1 + 1;
    if to > cur && skips && !allow_skip_minor {
        return Verdict::Refused {
            kind: SKIP_MINOR_REFUSED,
            message: format!(
                "{current} to {target} skips a minor version; KubeEdge upgrades one minor at a time: upgrade to v{}.{}.x first, or pass --allow-skip-minor",
                cur.0,
                cur.1 + 1
            ),
        };
    }
    Verdict::Upgrade
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_judged_by_their_numbers() {
        assert_eq!(judge("v1.23.1", "v1.23.1", false, false), Verdict::UpToDate);
        assert_eq!(judge("v1.22.0", "v1.23.1", false, false), Verdict::Upgrade);
        assert_eq!(judge("v1.23.0", "v1.23.1", false, false), Verdict::Upgrade);
        assert_eq!(
            judge("v1.23.1-rc1", "v1.23.1", false, false),
            Verdict::Upgrade
        );
        let kind = |v: Verdict| match v {
            Verdict::Refused { kind, .. } => kind,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            kind(judge("v1.23.1", "v1.22.0", false, false)),
            DOWNGRADE_REFUSED
        );
        assert_eq!(judge("v1.23.1", "v1.22.0", true, false), Verdict::Upgrade);
        assert_eq!(
            kind(judge("v1.21.0", "v1.23.1", false, false)),
            SKIP_MINOR_REFUSED
        );
        assert_eq!(judge("v1.21.0", "v1.23.1", false, true), Verdict::Upgrade);
        assert_eq!(
            kind(judge("v1.23.1", "v2.0.0", false, false)),
            SKIP_MINOR_REFUSED
        );
        assert_eq!(
            kind(judge("garbage", "v1.23.1", true, true)),
            VERSION_UNKNOWN
        );
        assert_eq!(numbers("v1.23.1-rc.1"), Some((1, 23, 1)));
    }
}
