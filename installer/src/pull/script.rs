//! `/join.sh`: the pull-mode join script. It runs the same step scripts
//! as `edgeferry join` does over SSH (node/steps.rs), so both paths
//! configure a node identically; only the keadm arguments arrive at run
//! time, from `/v1/enroll`, because they hold the token.

use crate::node::script::{install_ca, NODE_DIR};
use crate::node::steps::{self, Action, StepInput, DONE};

/// `/join.sh` for one site. `input.join_args` must be
/// [`JoinArgs::FromFile`](crate::node::script::JoinArgs::FromFile): the
/// token is never in the script.
pub fn render(input: &StepInput) -> String {
    let mut functions = String::new();
    let mut names = Vec::new();
    for step in steps::node_steps(Action::Join) {
        let body = steps::script(step, input).expect("node steps are sh");
        functions.push_str(&format!(
            "ef_{}() (\n{}\n)\n\n",
            step.name(),
            body.trim_end()
        ));
        names.push(step.name());
    }
    let names = names.join(" ");
    format!(
        r#"#!/bin/sh
# edgeferry pull-mode join for KubeEdge {version}, from the site mirror {mirror}.
#
# Check this file's sha256 against the one `edgeferry serve` printed, then:
#   sh join.sh <ENROLLMENT-CODE>      (or EDGEFERRY_CODE=<code> sh join.sh)
# As root. Needs curl or wget. It enrolls with the code (the mirror hands out
# the site's keadm parameters only for a valid code), runs the same steps
# as `edgeferry join` over SSH, and reports each step to the mirror.
set -u
MIRROR={mirror}
code=${{1:-${{EDGEFERRY_CODE:-}}}}
die() {{
	echo "edgeferry join.sh: $*" >&2
	exit 1
}}
[ -n "$code" ] || die "usage: sh join.sh <enrollment code>"
[ "$(id -u)" = 0 ] || die "run as root, e.g. sudo sh join.sh <code>"
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
{install_ca}
EF_ARGS=$work/keadm-args
export EF_ARGS

# POST to the mirror: url, response file, body, then "Name: value" headers.
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

report() {{
	msg=$(printf '%s' "$3" | tr -d '"\\' | tr '\n\t\r' '   ' | cut -c1-900)
	post /v1/report /dev/null "{{\"node\":\"$node\",\"step\":\"$1\",\"status\":\"$2\",\"message\":\"$msg\"}}" \
		"Authorization: Bearer $key" "Content-Type: application/json" >/dev/null
}}

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
report {DONE} ok "joined as $node"
echo "edgeferry join.sh: $node joined"
"#,
        version = input.version,
        mirror = input.mirrors.first().url(),
        node_dir = NODE_DIR,
        install_ca = install_ca(input.mirrors.first()),
        curl_ca = input.mirrors.first().curl_ca(),
        wget_ca = input.mirrors.first().wget_ca(),
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
}
