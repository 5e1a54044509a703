//! `/join.sh` and `/upgrade.sh`: the pull-mode scripts. They run the same
//! step scripts as `edgeferry join` and `edgeferry upgrade` do over SSH
//! (node/steps.rs), so both paths configure a node identically. Only what
//! is per node arrives at run time: the join's keadm arguments from
//! `/v1/enroll` (they hold the token), the upgrade's go-ahead and report
//! key from `/v1/upgrade` (which applies SSH mode's version rules).

use crate::node::script::{install_ca, quote, EDGECORE_VERSION_SH, NODE_DIR, UPGRADE_FROM};
use crate::node::steps::{self, Action, StepInput, DONE};

/// The `ef_<step>` functions of an action's node steps (and, for an
/// upgrade, its rollback steps), and the names of the node steps in order.
fn functions(action: Action, input: &StepInput) -> (String, String) {
    let mut functions = String::new();
    let mut names = Vec::new();
    let rollback: &[steps::Step] = match action {
        Action::Upgrade => steps::ROLLBACK_STEPS,
        Action::Join | Action::Reset => &[],
    };
    for step in steps::node_steps(action).chain(rollback.iter().copied()) {
        let body = steps::script(step, input).expect("node steps are sh");
        functions.push_str(&format!(
            "ef_{}() (\n{}\n)\n\n",
            step.name(),
            body.trim_end()
        ));
        if !rollback.contains(&step) {
            names.push(step.name());
        }
    }
    (functions, names.join(" "))
}

/// What both scripts start with after their usage text: the code, root,
/// an HTTP client, the work directory, the mirror's CA and `post`.
fn prelude(script: &str, usage: &str, input: &StepInput) -> String {
    format!(
        r#"set -u
MIRROR={mirror}
code=${{1:-${{EDGEFERRY_CODE:-}}}}
die() {{
	echo "edgeferry {script}: $*" >&2
	exit 1
}}
[ -n "$code" ] || die "usage: sh {script} <{usage}>"
[ "$(id -u)" = 0 ] || die "run as root, e.g. sudo sh {script} <code>"
if command -v curl >/dev/null 2>&1; then
	http=curl
elif command -v wget >/dev/null 2>&1; then
	http=wget
else
	die "neither curl nor wget on this node"
fi
work={node_dir}/pull
mkdir -p "$work" {node_dir}/work || die "cannot create $work"
chmod 700 "$work"
{install_ca}"#,
        mirror = input.mirrors.first().url(),
        node_dir = NODE_DIR,
        install_ca = install_ca(input.mirrors.first()),
    )
}

/// sh function `post`: POST to the mirror.
fn post_fn(input: &StepInput) -> String {
    format!(
        r#"# POST to the mirror: url, response file, body, then "Name: value" headers.
# Prints the HTTP status (000 when the mirror cannot be reached).
post() {{
	url=$1 out=$2 body=$3
	shift 3
	n=$#
	for h in "$@"; do
		if [ $http = curl ]; then set -- "$@" -H "$h"; else set -- "$@" "--header=$h"; fi
	done
	shift $n
	if [ $http = curl ]; then
		curl -sS {curl_ca}-m 30 -X POST -o "$out" -w '%{{http_code}}' --data-binary "$body" "$@" "$MIRROR$url" 2>/dev/null || true
	else
		# wget hides the status: exit 8 is "the server answered with an error".
		wget -q {wget_ca}-T 30 -O "$out" --post-data="$body" "$@" "$MIRROR$url" 2>/dev/null
		case $? in
		0) echo 200 ;;
		8) echo 4xx/5xx ;;
		*) echo 000 ;;
		esac
	fi
}}
"#,
        curl_ca = input.mirrors.first().curl_ca(),
        wget_ca = input.mirrors.first().wget_ca(),
    )
}

/// sh function `report STEP STATUS MESSAGE`: one report to `/v1/report`
/// as `$node` with `$key`; `extra` is more JSON (`,"to":"v…"`).
fn report_fn(extra: &str) -> String {
    format!(
        r#"report() {{
	msg=$(printf '%s' "$3" | tr -d '"\\' | tr '\n\t\r' '   ' | cut -c1-900)
	post /v1/report /dev/null "{{\"node\":\"$node\",\"step\":\"$1\",\"status\":\"$2\",\"message\":\"$msg\"{extra}}}" \
		"Authorization: Bearer $key" "Content-Type: application/json" >/dev/null
}}
"#
    )
}

/// `/join.sh` for one site. `input.join_args` must be
/// [`JoinArgs::FromFile`](crate::node::script::JoinArgs::FromFile): the
/// token is never in the script.
pub fn render(input: &StepInput) -> String {
    let (functions, names) = functions(Action::Join, input);
    format!(
        r#"#!/bin/sh
# edgeferry pull-mode join for KubeEdge {version}, from the site mirror {mirror}.
#
# Check this file's sha256 against the one `edgeferry serve` printed, then:
#   sh join.sh <ENROLLMENT-CODE>      (or EDGEFERRY_CODE=<code> sh join.sh)
# As root. Needs curl or wget. It enrolls with the code (the mirror hands out
# the site's keadm parameters only for a valid code), runs the same steps
# as `edgeferry join` over SSH, and reports each step to the mirror.
{prelude}EF_ARGS=$work/keadm-args
export EF_ARGS

{post}
hostname=$(uname -n)
status=$(post /v1/enroll "$work/enroll" "" "X-Edgeferry-Code: $code" "X-Edgeferry-Hostname: $hostname")
if [ "$status" != 200 ]; then
	reason=$(head -c 200 "$work/enroll" 2>/dev/null | tr -d '\r\n')
	rm -f "$work/enroll"
	die "the mirror refused enrollment (HTTP $status${{reason:+: $reason}}): ask the operator for a valid code (edgeferry enroll create)"
fi
node=$(sed -n 's/^node=//p' "$work/enroll")
key=$(sed -n 's/^key=//p' "$work/enroll")
(umask 077 && sed -n 's/^arg=//p' "$work/enroll" >"$EF_ARGS")
rm -f "$work/enroll"
[ -n "$node" ] && [ -n "$key" ] || die "the mirror's enrollment answer is incomplete"
echo "edgeferry join.sh: enrolled as $node"

{report}
{functions}step() {{
	report "$1" started ""
	echo "--- $1"
	out=$(ef_$1 2>&1)
	rc=$?
	printf '%s\n' "$out"
	if [ $rc = 0 ]; then
		report "$1" ok ""
	else
		msg=$(printf '%s\n' "$out" | grep -v '^---' | grep -v '^ *$' | tail -n 1)
		report "$1" failed "$msg"
		rm -f "$EF_ARGS"
		die "$1 failed: $msg"
	fi
}}

for s in {names}; do
	step $s
done
rm -f "$EF_ARGS"
report "{DONE}" ok "joined as $node"
echo "edgeferry join.sh: $node joined"
"#,
        version = input.version,
        mirror = input.mirrors.first().url(),
        prelude = prelude("join.sh", "enrollment code", input),
        post = post_fn(input),
        report = report_fn(""),
    )
}

/// Exit codes of `/upgrade.sh` beyond 0 (upgraded, or up to date) and 1
/// (refused, or failed before anything changed): the same numbers
/// `edgeferry upgrade` exits with for these outcomes.
pub const UPGRADE_ROLLED_BACK: u8 = 2;
pub const UPGRADE_ROLLBACK_FAILED: u8 = 4;

/// `/upgrade.sh` for one site, to `input.version` (`input.upgrade` set).
/// The image and the installation-package digests are in its
/// `keadm_upgrade` step, so the printed sha256 pins them too.
pub fn render_upgrade(input: &StepInput) -> String {
    let (functions, names) = functions(Action::Upgrade, input);
    let rolls_back: Vec<&str> = steps::node_steps(Action::Upgrade)
        .filter(|s| steps::rolls_back(*s))
        .map(|s| s.name())
        .collect();
    let rollback: Vec<&str> = steps::ROLLBACK_STEPS.iter().map(|s| s.name()).collect();
    format!(
        r#"#!/bin/sh
# edgeferry pull-mode upgrade to KubeEdge {to}, from the site mirror {mirror}.
#
# Check this file's sha256 against the one `edgeferry serve` printed, then:
#   sh upgrade.sh <UPGRADE-CODE>      (or EDGEFERRY_CODE=<code> sh upgrade.sh)
# As root, on a node whose edgecore runs. Needs curl or wget. It sends the
# code and edgecore's version to the mirror, which applies the version rules
# of `edgeferry upgrade` (up to date, downgrade, one minor at a time); then it
# runs the same steps as `edgeferry upgrade` over SSH, rolls back when keadm
# upgrade or the check after it fails, and reports each step to the mirror.
# Exits 0 upgraded or up to date, 1 refused or failed before the upgrade,
# {rolled_back} failed and rolled back, {rollback_failed} failed and the rollback failed too.
{prelude}TO={to_q}

{post}
{EDGECORE_VERSION_SH}
current=$(ef_edgecore_version)
hostname=$(uname -n)
status=$(post /v1/upgrade "$work/upgrade" "" "X-Edgeferry-Code: $code" "X-Edgeferry-Hostname: $hostname" "X-Edgeferry-Version: $current")
if [ "$status" != 200 ]; then
	reason=$(head -c 400 "$work/upgrade" 2>/dev/null | tr -d '\r\n')
	rm -f "$work/upgrade"
	die "the mirror refused the upgrade (HTTP $status${{reason:+: $reason}})"
fi
verdict=$(sed -n 's/^verdict=//p' "$work/upgrade")
node=$(sed -n 's/^node=//p' "$work/upgrade")
key=$(sed -n 's/^key=//p' "$work/upgrade")
to=$(sed -n 's/^to=//p' "$work/upgrade")
rm -f "$work/upgrade"
[ "$to" = "$TO" ] || die "the mirror upgrades to ${{to:-nothing}} now, this script to $TO: download upgrade.sh again (its sha256 changed)"
case $verdict in
up_to_date)
	echo "edgeferry upgrade.sh: $node runs $TO already: nothing to do"
	exit 0
	;;
upgrade) [ -n "$node" ] && [ -n "$key" ] || die "the mirror's upgrade answer is incomplete" ;;
*) die "the mirror's upgrade answer is incomplete" ;;
esac
echo "edgeferry upgrade.sh: upgrading $node from $current to $TO"

{report}
{functions}# Runs a step and reports it: ok with the step's last version= line, or
# failed with the line that explains it (also left in $msg).
step() {{
	report "$1" started ""
	echo "--- $1"
	out=$(ef_$1 2>&1)
	rc=$?
	printf '%s\n' "$out"
	if [ $rc = 0 ]; then
		report "$1" ok "$(printf '%s\n' "$out" | grep '^version=' | tail -n 1)"
		return 0
	fi
	msg=$(printf '%s\n' "$out" | grep -v '^---' | grep -v '^ *$' | tail -n 1)
	report "$1" failed "$msg"
	return 1
}}

rolls_back={rolls_back}
for s in {names}; do
	step $s && continue
	why=$msg
	case " $rolls_back " in
	*" $s "*) ;;
	*)
		report "{DONE}" failed "failed at $s: $why"
		die "$s failed: $why"
		;;
	esac
	from=$(cat {UPGRADE_FROM} 2>/dev/null)
	echo "edgeferry upgrade.sh: $s failed: rolling back to ${{from:-the version before}}"
	for r in {rollback}; do
		if ! step $r; then
			report "{DONE}" failed "failed, rollback failed too: $msg (the upgrade failed: $why)"
			echo "edgeferry upgrade.sh: failed, rollback failed too: $msg (the upgrade failed: $why)" >&2
			exit {rollback_failed}
		fi
	done
	report "{DONE}" failed "failed, rolled back to $from: $why"
	echo "edgeferry upgrade.sh: failed, rolled back to $from: $why" >&2
	exit {rolled_back}
done
report "{DONE}" ok "upgraded to $TO"
echo "edgeferry upgrade.sh: $node upgraded to $TO"
"#,
        to = input.version,
        to_q = quote(input.version),
        mirror = input.mirrors.first().url(),
        prelude = prelude("upgrade.sh", "upgrade code", input),
        post = post_fn(input),
        report = report_fn(r#",\"to\":\"$TO\""#),
        rolls_back = quote(&rolls_back.join(" ")),
        rollback = rollback.join(" "),
        rolled_back = UPGRADE_ROLLED_BACK,
        rollback_failed = UPGRADE_ROLLBACK_FAILED,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::steps::{assert_valid_sh, fixture};

    #[test]
    fn join_script_is_valid_sh_and_holds_no_secret_parameters() {
        let site = fixture::site();
        let text = render(&site.input(crate::node::script::JoinArgs::FromFile));
        assert_valid_sh(&text);
        assert!(
            text.contains(&"ab".repeat(32)),
            "the keadm sha256 is pinned in the script"
        );
        assert!(
            !text.contains("--token"),
            "keadm arguments arrive from /v1/enroll"
        );
        assert!(
            text.contains("for s in preflight containerd fetch keadm_join postcheck; do"),
            "the steps come from the node step table"
        );
    }

    #[test]
    fn over_tls_the_script_installs_the_ca_before_it_enrolls_and_trusts_only_it() {
        let site = fixture::tls_site();
        let text = render(&site.input(crate::node::script::JoinArgs::FromFile));
        assert_valid_sh(&text);
        assert!(text.contains("MIRROR=https://10.0.0.5:5000\n"));
        let ca = text
            .find("ca=/etc/containerd/certs.d/edgeferry-mirror-ca.crt")
            .unwrap();
        let enroll = text.find("status=$(post /v1/enroll").unwrap();
        assert!(ca < enroll, "the CA is in place before the code is sent");
        assert!(text
            .contains("curl -sS --cacert /etc/containerd/certs.d/edgeferry-mirror-ca.crt -m 30"));
        assert!(text.contains(
            "wget -q --ca-certificate=/etc/containerd/certs.d/edgeferry-mirror-ca.crt -T 30"
        ));
        assert!(
            !text.contains("http://10.0.0.5"),
            "nothing to the mirror over plain HTTP"
        );
    }

    #[test]
    fn upgrade_script_is_valid_sh_runs_the_upgrade_steps_and_holds_no_secret() {
        let site = fixture::tls_site();
        let text = render_upgrade(&site.input(crate::node::script::JoinArgs::FromFile));
        assert_valid_sh(&text);
        assert!(text.contains("TO=v1.23.1\n"));
        assert!(
            text.contains(
                "for s in upgrade_preflight containerd fetch keadm_backup keadm_upgrade upgrade_postcheck; do"
            ),
            "the steps come from the node step table"
        );
        assert!(text.contains("rolls_back='keadm_upgrade upgrade_postcheck'\n"));
        assert!(text.contains("for r in keadm_rollback rollback_postcheck; do"));
        assert!(
            text.contains(&format!("sha256:{}", "ef".repeat(32))),
            "the installation-package digest is pinned in the script"
        );
        let ca = text.find("ca=/etc/containerd/certs.d/").unwrap();
        let ask = text.find("status=$(post /v1/upgrade").unwrap();
        assert!(ca < ask, "the CA is in place before the code is sent");
        assert!(text.contains(r#"\"message\":\"$msg\",\"to\":\"$TO\"}"#));
        assert!(!text.contains("--token") && !text.contains("http://10.0.0.5"));
    }

    /// Both scripts, over plain HTTP and TLS, as shellcheck reads POSIX sh.
    #[test]
    fn both_scripts_pass_shellcheck() {
        let dir = tempfile::tempdir().unwrap();
        for (i, site) in [fixture::site(), fixture::tls_site()].iter().enumerate() {
            let input = site.input(crate::node::script::JoinArgs::FromFile);
            for (name, text) in [
                ("join", render(&input)),
                ("upgrade", render_upgrade(&input)),
            ] {
                let path = dir.path().join(format!("{name}-{i}.sh"));
                std::fs::write(&path, text).unwrap();
                let out = std::process::Command::new("shellcheck")
                    .args(["-s", "sh", "-S", "warning"])
                    .arg(&path)
                    .output()
                    .expect("shellcheck (Debian package shellcheck)");
                assert!(
                    out.status.success(),
                    "{}",
                    String::from_utf8_lossy(&out.stdout)
                );
            }
        }
    }
}
