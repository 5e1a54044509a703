#!/bin/sh
# edgeferry SAMPLE stand-in for keadm @VERSION@ — not KubeEdge
#
# Written by edgeferry for tests and demos, where no KubeEdge release can be
# downloaded. It checks command lines against the flags of the real keadm
# @VERSION@, and on a test host `keadm join` and `keadm reset edge` do what
# the real ones do, with the same step lines and messages, except that:
#   - the installation-package image is fetched the way containerd would
#     fetch it through the mirror that /etc/containerd/certs.d/<registry>/
#     hosts.toml names, over HTTP or HTTPS (trusting the file its ca = line
#     names, as containerd does) with curl (or wget), and only
#     /usr/local/bin/edgecore is taken out of it: there is no CRI and no
#     copy container;
#   - the copy step's pod sandbox is not run, but what it needs is checked
#     as containerd and runc would: containerd's sandbox image (from
#     `containerd config dump`, or `config default` without
#     /etc/containerd/config.toml; containerd 1.6's registry.k8s.io/pause:3.6,
#     with a note, where containerd is not installed) is fetched through the
#     mirror the same way, and a mirror without it fails with containerd's
#     "failed to get sandbox image" error at once, where the real one fails
#     after keadm's 20 s RunPodSandbox timeout; and where root cannot lower
#     oom_score_adj (no CAP_SYS_RESOURCE) and containerd's config does not
#     say restrict_oom_score_adj = true, it fails with the error runc 1.1
#     gives containerd for the sandbox's oom_score_adj -998;
#   - without /run/systemd/system no unit file is written and edgecore is
#     started in the background;
#   - the edgecore it starts is the stand-in from the same sample set.
# `keadm reset edge` stops edgecore and removes /etc/kubeedge/,
# /var/log/kubeedge/, /var/lib/kubeedge/ and /var/lib/edged (a mount point
# is emptied instead), but not /usr/local/bin/edgecore, as the real one.
# `keadm backup edge` copies edgecore.db (when there is one: the stand-in
# edgecore keeps no database), the --config file and /usr/local/bin/edgecore
# into /etc/kubeedge/backup/<edgecore's version>/. `keadm upgrade edge`
# pulls <--image>:<--toVersion> through the hosts.toml mirror as join does,
# checks --image-digest (when given) against the digest of the manifest it
# pulled for this node's platform, stages the new edgecore in
# /etc/kubeedge/upgrade/<toVersion>/, stops edgecore, installs it and starts
# it again. `keadm rollback edge` copies the files of the backup
# --historical-version (default: the newest backup) back and restarts
# edgecore. No idempotency lock and no JSON result file are written.
#
# Environment:
#   EDGEFERRY_SAMPLE_ROOT   put in front of every host path, so that unit tests
#                can run this in a temporary directory; edgecore is then
#                found through its pid file (/var/lib/keadm-standin/edgecore.pid)
#                instead of pidof
#   EDGEFERRY_STANDIN_WAIT   seconds join waits for edgecore's TLS files (default 300,
#                as the real keadm's wait.Poll(10s, 300s))
#   EDGEFERRY_STANDIN_NO_CLOUD   1, only together with EDGEFERRY_SAMPLE_ROOT: unit
#                tests without a certificate service; the node-name check
#                passes on any listener, and edgecore writes stand-in text
#                instead of certificates (see edgecore)
#
# Fault injection: a test harness writes these files on a host.
#   /var/lib/keadm-standin/fault          "fail": join exits 1 right after copying
#                              edgecore out of the image; "hang": join
#                              sleeps there until it is killed
#   /var/lib/keadm-standin/join-seconds   a whole number N: join sleeps N seconds at
#                              that point (models how long a real join
#                              takes)
#   /var/lib/keadm-standin/upgrade-fault  "fail": upgrade stops the old edgecore,
#                              installs the new one and then exits 1 with
#                              "failed to start edgecore" (edgecore is not
#                              running: a rollback is needed); "crash": the
#                              new edgecore is installed and started but
#                              exits at once (upgrade exits 0, a postcheck
#                              fails); "rollback-fail": upgrade fails as
#                              with "fail", and rollback exits 1 before
#                              changing anything
#   /var/lib/keadm-standin/upgrade-seconds   a whole number N: upgrade sleeps N
#                              seconds after the pull (how long a real
#                              upgrade takes; a signal ends it at once)
set -u

KEADM_VERSION='@VERSION@'
ROOT=${EDGEFERRY_SAMPLE_ROOT:-}
STANDIN="keadm $KEADM_VERSION (edgeferry SAMPLE stand-in, not KubeEdge)"
STATE=$ROOT/var/lib/keadm-standin
ACCEPT='application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.docker.distribution.manifest.v2+json'
tmp=
bootstrap=
sleeper=

# Errors look like cobra's, which real keadm prints through.
fail() {
	printf 'Error: %s\n' "$1" >&2
	exit 1
}

note() {
	printf '%s: %s\n' "$STANDIN" "$*"
}

# Progress lines, numbered like the real keadm's common.Step.
n=0
step() {
	n=$((n + 1))
	printf '%s. %s\n' "$n" "$*"
}

cleanup() {
	[ -z "$sleeper" ] || kill "$sleeper" 2>/dev/null
	[ -z "$tmp" ] || rm -rf "$tmp"
	# Real keadm removes the bootstrap file when join returns (a defer).
	[ -z "$bootstrap" ] || rm -f "$bootstrap"
}
trap cleanup EXIT
trap 'exit 129' HUP
trap 'exit 130' INT
trap 'exit 143' TERM

# strconv.ParseBool, as pflag uses it.
parse_bool() {
	case $1 in
	1 | t | T | TRUE | true | True) echo true ;;
	0 | f | F | FALSE | false | False) echo false ;;
	*) fail "invalid argument \"$1\" for \"$2\" flag: strconv.ParseBool: parsing \"$1\": invalid syntax" ;;
	esac
}

usage() {
	cat <<'USAGE'
@USAGE@
USAGE
}

@JOIN_PARSER@
join_check_required() {
	missing=
@REQUIRED@	[ -z "$missing" ] || fail "required flag(s) $missing not set"
}

# Real keadm validates these values too, only later; checking them first
# lets a dry run catch them.
join_check_values() {
	case $opt_kubeedge_version in
	v[0-9]*.[0-9]*.[0-9]* | [0-9]*.[0-9]*.[0-9]*) ;;
	*) fail "--kubeedge-version \"$opt_kubeedge_version\" is not a version: offline, keadm would fail to fetch https://kubeedge.io/latestversion" ;;
	esac
	# net.SplitHostPort's rules, plus a non-empty host and a numeric port.
	case $opt_cloudcore_ipport in
	\[*\]:* | [!:]*:*) ;;
	\[*\] | [!:]*) fail "address $opt_cloudcore_ipport: missing port in address" ;;
	esac
	case $opt_cloudcore_ipport in
	\[*\]:*) ;;
	*:*:*) fail "address $opt_cloudcore_ipport: too many colons in address" ;;
	esac
	case ${opt_cloudcore_ipport##*:} in
	'' | *[!0-9]*) fail "address $opt_cloudcore_ipport: expected HOST:PORT for --cloudcore-ipport" ;;
	esac
	[ -n "${opt_cloudcore_ipport%:*}" ] || fail "address $opt_cloudcore_ipport: expected HOST:PORT for --cloudcore-ipport"
	case $opt_hub_protocol in
	websocket | quic) ;;
	*) fail "unsupported hub of protocol: $opt_hub_protocol" ;;
	esac
	case $opt_cgroupdriver in
	cgroupfs | systemd) ;;
	*) fail "unsupported cgroupdriver $opt_cgroupdriver: use cgroupfs or systemd" ;;
	esac
}

# --pre-run and --post-run: real keadm runs `bash <script>`.
run_script() {
	step "Executing $1-run script: $2"
	/bin/bash "$2"
}

# The PIDs of running edgecore processes; fails when there are none. Real
# keadm runs `pidof edgecore`. With EDGEFERRY_SAMPLE_ROOT set (unit tests) the PID
# namespace is shared with the whole machine, so the stand-in edgecore's
# pid file under $ROOT takes the place of pidof.
edgecore_pids() {
	if [ -z "$ROOT" ]; then
		pidof edgecore
		return
	fi
	[ -f "$STATE/edgecore.pid" ] || return 1
	pid=$(cat "$STATE/edgecore.pid") || return 1
	case $pid in '' | *[!0-9]*) return 1 ;; esac
	[ "$(cat "/proc/$pid/comm" 2>/dev/null)" = edgecore ] || return 1
	# Like pidof, skip a zombie nobody has reaped yet.
	case $(sed 's/^.*) //' "/proc/$pid/stat" 2>/dev/null) in Z*) return 1 ;; esac
	echo "$pid"
}

# runEdgeCore: with systemd, real keadm's shell command; without, edgecore
# in the background with its log in /var/log/kubeedge/edgecore.log.
run_edgecore() {
	if [ -d "$ROOT/run/systemd/system" ]; then
		echo "sudo systemctl daemon-reload && sudo systemctl enable edgecore && sudo systemctl start edgecore"
		sudo systemctl daemon-reload && sudo systemctl enable edgecore && sudo systemctl start edgecore
		return
	fi
	echo "/usr/local/bin/edgecore > /var/log/kubeedge/edgecore.log 2>&1 &"
	mkdir -p "$ROOT/var/log/kubeedge" || return 1
	# A new session and no inherited descriptors: edgecore has to outlive
	# the SSH session that runs keadm.
	if command -v setsid >/dev/null 2>&1; then
		setsid "$ROOT/usr/local/bin/edgecore" >"$ROOT/var/log/kubeedge/edgecore.log" 2>&1 </dev/null &
	else
		nohup "$ROOT/usr/local/bin/edgecore" >"$ROOT/var/log/kubeedge/edgecore.log" 2>&1 </dev/null &
	fi
}

# Kills edgecore, waiting up to 10 s for it to go before SIGKILL.
stop_edgecore() {
	pids=$(edgecore_pids 2>/dev/null) || return 0
	# shellcheck disable=SC2086
	kill $pids 2>/dev/null
	waited=0
	while [ "$waited" -lt 10 ] && edgecore_pids >/dev/null 2>&1; do
		sleep 1
		waited=$((waited + 1))
	done
	# shellcheck disable=SC2086
	if pids=$(edgecore_pids 2>/dev/null); then kill -9 $pids 2>/dev/null; fi
	return 0
}

# node_check URL: real keadm GETs https://<host>:<certport>/node/<name>
# without verifying the server (InsecureSkipVerify) and goes on only when
# cloudcore answers 404; any other answer is "node already exists or
# internal error occurred, cannot register again", and a request that
# fails is "error making request: <Go's error>". Go's default client has no
# timeout; the stand-in gives up after 30 s to connect and 60 s in all.
# With EDGEFERRY_SAMPLE_ROOT and EDGEFERRY_STANDIN_NO_CLOUD=1 (unit tests
# without a certificate service) a listener that only accepts passes.
node_check() {
	hostport=${1#https://}
	hostport=${hostport%%/*}
	no_cloud=
	[ -z "$ROOT" ] || [ "${EDGEFERRY_STANDIN_NO_CLOUD-}" != 1 ] || no_cloud=1
	if command -v curl >/dev/null 2>&1; then
		# -v: curl names the connect error (refused, no route) only there.
		code=$(curl -v -sS -k -g --noproxy '*' --connect-timeout 30 -m 60 -o /dev/null -w '%{http_code}' "$1" 2>"$tmp/node.err")
		rc=$?
		case $rc:$(cat "$tmp/node.err") in
		0:*) ;;
		35:* | 52:* | 56:*)
			[ -z "$no_cloud" ] || return 0
			echo "Get \"$1\": EOF"
			return 1
			;;
		7:*"No route to host"*) echo "Get \"$1\": dial tcp $hostport: connect: no route to host" && return 1 ;;
		7:*"Network is unreachable"*) echo "Get \"$1\": dial tcp $hostport: connect: network is unreachable" && return 1 ;;
		7:*) echo "Get \"$1\": dial tcp $hostport: connect: connection refused" && return 1 ;;
		28:*) echo "Get \"$1\": dial tcp $hostport: i/o timeout" && return 1 ;;
		6:*) echo "Get \"$1\": dial tcp: lookup ${hostport%:*}: no such host" && return 1 ;;
		*) echo "Get \"$1\": curl exit code $rc: $(tr '\n' ' ' <"$tmp/node.err")" && return 1 ;;
		esac
	elif command -v wget >/dev/null 2>&1; then
		out=$(timeout 60 env -u https_proxy -u HTTPS_PROXY wget --no-check-certificate -S -T 30 -O /dev/null "$1" 2>&1)
		code=$(printf '%s\n' "$out" | sed -n 's/^ *HTTP\/[0-9.]* \([0-9]*\).*/\1/p' | tail -n 1)
		if [ -z "$code" ]; then
			case $out in
			*[Rr]efused*) echo "Get \"$1\": dial tcp $hostport: connect: connection refused" ;;
			*"No route"*) echo "Get \"$1\": dial tcp $hostport: connect: no route to host" ;;
			*"timed out"* | *[Tt]imeout*) echo "Get \"$1\": dial tcp $hostport: i/o timeout" ;;
			*)
				[ -z "$no_cloud" ] || return 0
				echo "Get \"$1\": EOF"
				;;
			esac
			return 1
		fi
	else
		note "neither curl nor wget is installed: the node-name check is skipped" >&2
		return 0
	fi
	[ "$code" = 404 ] && return 0
	echo "status $code"
	return 2
}

# http_get URL FILE ACCEPT: GETs URL into FILE; on failure says why.
# Proxies are bypassed, since containerd reaches the site mirror directly.
# $mirror_ca, if set, is the only CA an https:// mirror is checked against.
http_get() {
	if command -v curl >/dev/null 2>&1; then
		code=$(curl -sS -g --noproxy '*' ${mirror_ca:+--cacert "$mirror_ca"} --connect-timeout 10 -y 60 -Y 1 -H "Accept: $3" -o "$2" -w '%{http_code}' "$1" 2>"$tmp/http.err") || {
			echo "GET $1: $(tr '\n' ' ' <"$tmp/http.err")"
			return 1
		}
		[ "$code" = 200 ] || {
			echo "GET $1: HTTP $code $(head -c 300 "$2" 2>/dev/null | tr '\n' ' ')"
			return 1
		}
	elif command -v wget >/dev/null 2>&1; then
		env -u http_proxy -u https_proxy -u HTTP_PROXY -u HTTPS_PROXY wget -q ${mirror_ca:+--ca-certificate="$mirror_ca"} -O "$2" --header "Accept: $3" "$1" 2>"$tmp/http.err" || {
			echo "GET $1: wget failed $(tr '\n' ' ' <"$tmp/http.err")"
			return 1
		}
	else
		echo "GET $1: neither curl nor wget is installed"
		return 1
	fi
}

# containerd checks every blob, and every manifest it fetches by digest.
valid_digest() {
	case $1 in sha256:*) ;; *) return 1 ;; esac
	hex=${1#sha256:}
	[ ${#hex} -eq 64 ] || return 1
	case $hex in *[!0-9a-f]*) return 1 ;; esac
}

digest_matches() {
	[ "sha256:$(sha256sum "$1" | cut -d ' ' -f 1)" = "$2" ]
}

# The JSON on stdin as one line without whitespace, annotations or the
# braces of platform objects, so that each descriptor is one flat {...}.
# Enough for the compact indexes and manifests the sample builder writes,
# which have no braces inside strings; key order does not matter.
json_flat() {
	tr -d ' \t\r\n' | sed -e 's/"annotations":{[^{}]*}//g' -e 's/"platform":{\([^{}]*\)}/"platform":(\1)/g'
}

# json_field NAME: the string value of "NAME" on each line of stdin.
json_field() {
	sed -n "s/.*\"$1\":\"\([^\"]*\)\".*/\1/p"
}

# The mirrors a hosts.toml sends pulls to, space-separated in the order
# containerd tries them: every [host."..."], else its server when that is
# plain HTTP.
mirrors_of() {
	urls=$(sed -n 's/^[[:space:]]*\[host\."\([^"]*\)"\].*$/\1/p' "$1")
	[ -n "$urls" ] || urls=$(sed -n 's/^[[:space:]]*server[[:space:]]*=[[:space:]]*"\(http:\/\/[^"]*\)".*$/\1/p' "$1" | head -n 1)
	for url in $urls; do printf '%s ' "${url%/}"; done
}

# GET /v2/$repo$1 into $2 (Accept: $3) as containerd does with several
# hosts: each in order, the next when one cannot be reached or answers an
# error; a mirror asked for another registry's images gets ?ns=.
mirrors_get() {
	errs=
	for m in $mirrors; do
		authority=${m#*://}
		authority=${authority%%/*}
		q="?ns=$registry"
		[ "$authority" != "$registry" ] || q=
		if e=$(http_get "$m/v2/$repo$1$q" "$2" "$3"); then
			return 0
		fi
		errs="${errs:+$errs; }$e"
	done
	echo "$errs"
	return 1
}

# Fetches $repo:$tag from $registry as containerd with config_path
# /etc/containerd/certs.d would: through the mirror in the registry's (or
# _default's) hosts.toml, the tag's index, this node's manifest, then every
# layer into $tmp/layer1..$layer_count, each checked against its digest.
pull_image() {
	case $(uname -m) in
	x86_64 | amd64) arch=amd64 variant= ;;
	aarch64 | arm64) arch=arm64 variant= ;;
	armv7* | armv6* | armv8l) arch=arm variant=v7 ;;
	*) fail "failed to pull image \"$image\": $STANDIN knows no OCI platform for machine $(uname -m)" ;;
	esac
	certs=$ROOT/etc/containerd/certs.d
	mirrors=
	for dir in "$registry" _default; do
		[ -f "$certs/$dir/hosts.toml" ] || continue
		mirrors=$(mirrors_of "$certs/$dir/hosts.toml")
		[ -z "$mirrors" ] || break
	done
	if [ -z "$mirrors" ]; then
		upstream=$registry
		[ "$registry" != docker.io ] || upstream=registry-1.docker.io
		fail "failed to pull image \"$image\": no mirror for $registry in /etc/containerd/certs.d/$registry/hosts.toml, so containerd would go to https://$upstream, which an isolated site cannot reach (real keadm fails there, or after 20 s with DeadlineExceeded when the sandbox image is missing too)"
	fi
	# The CA file hosts.toml names (ca = "..."), as containerd trusts it.
	mirror_ca=$(sed -n 's/^[[:space:]]*ca[[:space:]]*=[[:space:]]*"\([^"]*\)".*$/\1/p' "$certs/$dir/hosts.toml" | head -n 1)
	[ -z "$mirror_ca" ] || mirror_ca=$ROOT$mirror_ca
	note "pulling $image from ${mirrors% } (certs.d/$dir/hosts.toml) for linux/$arch${variant:+/$variant}"

	why=$(mirrors_get "/manifests/$tag" "$tmp/top.json" "$ACCEPT") || fail "failed to pull image \"$image\": $why"
	manifest=$(json_flat <"$tmp/top.json")
	# The digest of the manifest for this platform, for --image-digest.
	image_digest=sha256:$(sha256sum "$tmp/top.json" | cut -d ' ' -f 1)
	case $manifest in
	*'"manifests":['*)
		candidates=$(printf '%s\n' "$manifest" | tr '{}' '\n\n' | grep '"digest":' | grep "\"architecture\":\"$arch\"" | grep '"os":"linux"')
		if [ -n "$variant" ]; then
			pick=$(printf '%s\n' "$candidates" | grep "\"variant\":\"$variant\"" | head -n 1)
			[ -n "$pick" ] || pick=$(printf '%s\n' "$candidates" | grep -v '"variant":' | head -n 1)
		else
			pick=$(printf '%s\n' "$candidates" | head -n 1)
		fi
		digest=$(printf '%s\n' "$pick" | json_field digest)
		[ -n "$digest" ] || fail "failed to pull image \"$image\": no match for platform in manifest: not found (linux/$arch${variant:+/$variant})"
		valid_digest "$digest" || fail "failed to pull image \"$image\": invalid digest \"$digest\" in the index"
		why=$(mirrors_get "/manifests/$digest" "$tmp/manifest.json" "$ACCEPT") || fail "failed to pull image \"$image\": $why"
		digest_matches "$tmp/manifest.json" "$digest" || fail "failed to pull image \"$image\": manifest $digest: digest mismatch: the mirror sent other bytes"
		image_digest=$digest
		manifest=$(json_flat <"$tmp/manifest.json")
		;;
	esac
	case $manifest in
	*'"layers":['*) ;;
	*) fail "failed to pull image \"$image\": /v2/$repo/manifests/$tag is neither an image index nor an image manifest" ;;
	esac
	layer_digests=$(printf '%s\n' "$manifest" | sed -n 's/.*"layers":\[\([^]]*\)\].*/\1/p' | tr '{},' '\n\n\n' | json_field digest)
	[ -n "$layer_digests" ] || fail "failed to pull image \"$image\": its manifest lists no layers"
	layer_count=0
	for digest in $layer_digests; do
		valid_digest "$digest" || fail "failed to pull image \"$image\": invalid layer digest \"$digest\""
		layer_count=$((layer_count + 1))
		why=$(mirrors_get "/blobs/$digest" "$tmp/layer$layer_count" '*/*') || fail "failed to pull image \"$image\": $why"
		digest_matches "$tmp/layer$layer_count" "$digest" || fail "failed to pull image \"$image\": layer $digest: digest mismatch: the mirror sent other bytes"
	done
}

# The node's containerd as the copy step's RunPodSandbox meets it: its
# sandbox image in $sandbox_ref and whether it restricts oom_score_adj in
# $restrict. `containerd config dump` shows /etc/containerd/config.toml
# merged over the defaults; without that file containerd runs on its
# built-in defaults, which `containerd config default` prints.
containerd_sandbox() {
	sandbox_ref= restrict= conf=
	if command -v containerd >/dev/null 2>&1; then
		if [ -f "$ROOT/etc/containerd/config.toml" ]; then
			conf=$(containerd --config "$ROOT/etc/containerd/config.toml" config dump 2>/dev/null) ||
				note "containerd cannot load /etc/containerd/config.toml: the real containerd would not be running"
		else
			conf=$(containerd config default 2>/dev/null)
		fi
		# 1.x: sandbox_image in the CRI plugin's section; 2.x: sandbox in
		# [plugins.'io.containerd.cri.v1.images'.pinned_images].
		parsed=$(printf '%s\n' "$conf" | tr "'" '"' | awk '
			/^[ \t]*\[/ { sec = $0; gsub(/[ \t]/, "", sec); next }
			$2 == "=" && $1 == "sandbox_image" && sec == "[plugins.\"io.containerd.grpc.v1.cri\"]" { ref = $3 }
			$2 == "=" && $1 == "sandbox" && sec == "[plugins.\"io.containerd.cri.v1.images\".pinned_images]" { ref = $3 }
			$2 == "=" && $1 == "restrict_oom_score_adj" && $3 == "true" { restrict = "true" }
			END { gsub(/"/, "", ref); print ref "|" restrict }')
		sandbox_ref=${parsed%%|*}
		restrict=${parsed#*|}
	fi
	if [ -z "$sandbox_ref" ]; then
		note "containerd's configuration cannot be read here: taking containerd 1.6's built-in sandbox image registry.k8s.io/pause:3.6"
		sandbox_ref=registry.k8s.io/pause:3.6
	fi
}

# klog's line for a failed CRI call, then cobra's, as real keadm prints them.
cri_fail() {
	printf 'E%s %7s remote_runtime.go:193] "RunPodSandbox from runtime service failed" err="%s"\n' \
		"$(date -u '+%m%d %H:%M:%S.000000')" "$$" "$(printf '%s' "$1" | sed 's/["\\]/\\&/g')" >&2
	fail "edge node join failed: copy resources failed: $1"
}

# CopyResources' RunPodSandbox: containerd ensures its sandbox image (a pull
# through the mirror, as pull_image does it; the stand-in has no image
# store, so it always asks the mirror), then runc starts the sandbox with
# oom_score_adj -998.
run_sandbox() {
	containerd_sandbox
	# Normalized as containerd's CRI does (docker.io, library/, :latest).
	ref=$sandbox_ref s_digest= s_tag=
	case $ref in *@*) s_digest=${ref#*@} ref=${ref%%@*} ;; esac
	case ${ref##*/} in *:*) s_tag=${ref##*:} ref=${ref%:*} ;; esac
	case $ref in
	*/*)
		case ${ref%%/*} in
		*.* | *:* | localhost | *[A-Z]*) s_registry=${ref%%/*} s_repo=${ref#*/} ;;
		*) s_registry=docker.io s_repo=$ref ;;
		esac
		;;
	*) s_registry=docker.io s_repo=$ref ;;
	esac
	[ "$s_registry" != index.docker.io ] || s_registry=docker.io
	case $s_registry:$s_repo in docker.io:*/*) ;; docker.io:*) s_repo=library/$s_repo ;; esac
	[ -n "$s_tag" ] || [ -n "$s_digest" ] || s_tag=latest
	s_image=$s_registry/$s_repo${s_tag:+:$s_tag}${s_digest:+@$s_digest}
	upstream=$s_registry
	[ "$upstream" != docker.io ] || upstream=registry-1.docker.io
	# In a subshell: its own layers, and pull_image's fail ends only it.
	why=$( (
		image=$s_image registry=$s_registry repo=$s_repo tag=${s_digest:-$s_tag}
		tmp=$tmp/sandbox
		mkdir "$tmp" && pull_image >/dev/null
	) 2>&1) || {
		why=${why#Error: }
		note "the sandbox image did not come through the mirror: ${why#failed to pull image \"$s_image\": }"
		cri_fail "rpc error: code = DeadlineExceeded desc = failed to get sandbox image \"$sandbox_ref\": failed to pull image \"$sandbox_ref\": failed to pull and unpack image \"$s_image\": failed to resolve reference \"$s_image\": failed to do request: Head \"https://$upstream/v2/$s_repo/manifests/${s_digest:-$s_tag}\": context deadline exceeded"
	}
	if ! (echo -998 >/proc/self/oom_score_adj) 2>/dev/null && [ "$restrict" != true ]; then
		cri_fail "rpc error: code = Unknown desc = failed to create containerd task: failed to create shim task: OCI runtime create failed: runc create failed: unable to start container process: can't get final child's PID from pipe: EOF: unknown"
	fi
}

# Takes /usr/local/bin/edgecore out of the pulled layers (the last layer
# that has it wins, as in the unpacked image) and installs it atomically.
copy_edgecore() {
	mkdir "$tmp/rootfs" || fail "cannot create $tmp/rootfs"
	i=1
	while [ "$i" -le "$layer_count" ]; do
		layer=$tmp/layer$i
		if [ "$(head -c 2 "$layer" | od -An -tx1 | tr -d ' \n')" = 1f8b ]; then
			gzip -dc <"$layer" | tar -xf - -C "$tmp/rootfs" usr/local/bin/edgecore 2>/dev/null
		else
			tar -xf "$layer" -C "$tmp/rootfs" usr/local/bin/edgecore 2>/dev/null
		fi
		i=$((i + 1))
	done
	[ -f "$tmp/rootfs/usr/local/bin/edgecore" ] || fail "failed to copy resources: image \"$image\" has no /usr/local/bin/edgecore"
	install_file "$tmp/rootfs/usr/local/bin/edgecore" "${1:-/usr/local/bin}/edgecore" 755 ||
		fail "failed to copy edgecore to ${1:-/usr/local/bin}/edgecore"
}

# install_file SRC DEST MODE: copies SRC to $ROOT/DEST atomically (a temp
# file beside it, then a rename).
install_file() {
	dest=$ROOT$2
	part=${dest%/*}/.${dest##*/}.keadm-standin.$$
	mkdir -p "${dest%/*}" && cp "$1" "$part" && chmod "$3" "$part" && mv -f "$part" "$dest" || {
		rm -f "$part"
		return 1
	}
}

# The files a test harness writes to make this join fail, hang or take long.
standin_faults() {
	if [ -f "$STATE/fault" ]; then
		case $(tr -d ' \t\r\n' <"$STATE/fault") in
		fail)
			echo "keadm (edgeferry SAMPLE stand-in): failing on purpose (fault file)" >&2
			exit 1
			;;
		hang)
			echo "keadm (edgeferry SAMPLE stand-in): hanging on purpose (fault file)" >&2
			cleanup
			exec sleep 2147483647
			;;
		'') ;;
		*) note "ignoring $STATE/fault: it says neither fail nor hang" ;;
		esac
	fi
	if [ -f "$STATE/join-seconds" ]; then
		seconds=$(tr -d ' \t\r\n' <"$STATE/join-seconds")
		case $seconds in
		'' | *[!0-9]*) note "ignoring $STATE/join-seconds: not a whole number of seconds" ;;
		*)
			note "taking $seconds more seconds (join-seconds file)"
			# In the background, so that a signal ends the join at once.
			sleep "$seconds" &
			sleeper=$!
			wait "$sleeper"
			sleeper=
			;;
		esac
	fi
}

# A YAML scalar for the string $1: plain where that reads back as the same
# string, as Go's YAML marshalling writes it, else double-quoted.
yaml_str() {
	plain=1
	case $1 in
	'' | *[!A-Za-z0-9._/:=+@-]* | [!A-Za-z0-9_/]* | *: | 0[xXoO]*) plain= ;;
	[Tt]rue | TRUE | [Ff]alse | FALSE | [Yy]es | YES | [Nn]o | NO) plain= ;;
	[Oo]n | ON | [Oo]ff | OFF | [YyNn] | [Nn]ull | NULL) plain= ;;
	esac
	# Numbers, dates and the like: digits, dots and signs only.
	case $1 in *[!0-9.+-]*) ;; *) plain= ;; esac
	if [ -n "$plain" ]; then
		printf '%s' "$1"
	else
		printf '"%s"' "$(printf '%s' "$1" | sed -e 's/\\/\\\\/g' -e 's/"/\\"/g')"
	fi
}

# The fields the real `keadm join` sets from its flags, not the full
# default configuration of the real edgecore.
write_edgecore_yaml() {
	if [ "$opt_hub_protocol" = quic ]; then
		websocket_enable=false websocket_server=$host:10000
		quic_enable=true quic_server=$opt_cloudcore_ipport
	else
		websocket_enable=true websocket_server=$opt_cloudcore_ipport
		quic_enable=false quic_server=$host:10001
	fi
	{
		cat <<EOF
# edgecore.yaml written by $STANDIN.
# A stand-in: only the fields keadm join sets, not the real edgecore's full
# default configuration.
apiVersion: edgecore.config.kubeedge.io/v1alpha2
kind: EdgeCore
edgeCoreVersion: $(yaml_str "$version")
modules:
  edgeHub:
    enable: true
    httpServer: $(yaml_str "https://$host:$certport")
    token: $(yaml_str "$opt_token")
    tlsCaFile: /etc/kubeedge/ca/rootCA.crt
    tlsCertFile: /etc/kubeedge/certs/server.crt
    tlsPrivateKeyFile: /etc/kubeedge/certs/server.key
    websocket:
      enable: $websocket_enable
      server: $(yaml_str "$websocket_server")
    quic:
      enable: $quic_enable
      server: $(yaml_str "$quic_server")
  edgeStream:
    tunnelServer: $(yaml_str "$host:10004")
  edged:
    hostnameOverride: $(yaml_str "$node")
    tailoredKubeletConfig:
      cgroupDriver: $opt_cgroupdriver
      containerRuntimeEndpoint: $(yaml_str "$opt_remote_runtime_endpoint")
      imageServiceEndpoint: $(yaml_str "$opt_remote_runtime_endpoint")
EOF
		set -f
		old_ifs=$IFS
		IFS=,
		if [ -n "$opt_labels" ]; then
			echo "    nodeLabels:"
			for label in $opt_labels; do
				key=${label%%=*}
				value=
				case $label in *=*) value=${label#*=} ;; esac
				[ -z "$key" ] || echo "      $(yaml_str "$key"): $(yaml_str "$value")"
			done
		fi
		if [ -n "$opt_set" ]; then
			echo "# --set values, which real keadm merges in with Helm strvals; the"
			echo "# stand-in only lists them:"
			for value in $opt_set; do
				echo "#   $value"
			done
		fi
		IFS=$old_ifs
		set +f
	} >"$1.tmp" && mv -f "$1.tmp" "$1"
}

# Waits for the three edgeHub TLS files that edgecore fetches from
# cloudcore: real keadm's success criterion.
wait_for_certs() {
	waited=0
	while :; do
		[ -f "$ROOT/etc/kubeedge/ca/rootCA.crt" ] &&
			[ -f "$ROOT/etc/kubeedge/certs/server.crt" ] &&
			[ -f "$ROOT/etc/kubeedge/certs/server.key" ] && return 0
		[ "$waited" -lt "$wait_limit" ] || return 1
		sleep 1
		waited=$((waited + 1))
	done
}

do_join() {
	version=$opt_kubeedge_version
	case $version in v*) ;; *) version=v$version ;; esac
	host=${opt_cloudcore_ipport%:*}
	certport=${opt_certport:-10002}
	node=${opt_edgenode_name:-$(uname -n)}
	wait_limit=${EDGEFERRY_STANDIN_WAIT:-300}
	case $wait_limit in
	'' | *[!0-9]*) fail "EDGEFERRY_STANDIN_WAIT=$wait_limit is not a whole number of seconds" ;;
	esac
	# As keadm's util.EdgeSet and reference.ParseAnyReference do it: the
	# repository replaces the first path component, and a first component
	# with a dot or a colon, or localhost, names the registry.
	ref=kubeedge/installation-package
	[ -z "$opt_image_repository" ] || ref=$opt_image_repository/installation-package
	tag=$version
	case ${ref%%/*} in
	*.* | *:* | localhost) registry=${ref%%/*} repo=${ref#*/} ;;
	*) registry=docker.io repo=$ref ;;
	esac
	image=$registry/$repo:$tag
	tmp=$(mktemp -d "${TMPDIR:-/tmp}/keadm-standin.XXXXXX") || fail "cannot create a temporary directory"
	note "joining this node; images come from the site mirror over HTTP, not through containerd"

	if [ -n "$opt_pre_run" ]; then
		run_script pre "$opt_pre_run" || fail "failed to execute the pre-run script $opt_pre_run: exit status $?"
	fi

	step "Check KubeEdge edgecore process status"
	if edgecore_pids >/dev/null 2>&1; then
		fail "EdgeCore is already running on this node, please run reset to clean up first"
	fi

	step "Check if the management directory is clean"
	if [ -d "$ROOT/etc/kubeedge" ] && [ -n "$(ls -A "$ROOT/etc/kubeedge")" ]; then
		fail "the management directory /etc/kubeedge/ is not clean, please remove it first"
	fi

	step "Check if the node name is valid"
	why=$(node_check "https://$host:$certport/node/$node")
	case $? in
	0) ;;
	2) fail "node already exists or internal error occurred, cannot register again" ;;
	*) fail "error making request: $why" ;;
	esac

	step "Create the necessary directories"
	mkdir -p "$ROOT/etc/kubeedge/config" "$ROOT/var/log/kubeedge" "$ROOT/var/lib/kubeedge" ||
		fail "failed to create the directories /etc/kubeedge/config, /var/log/kubeedge and /var/lib/kubeedge"

	step "Pull Images"
	pull_image

	step "Copy resources from the image to the management directory"
	run_sandbox
	copy_edgecore
	standin_faults

	step "Generate systemd service file"
	# Real keadm writes the unit whenever systemctl is in PATH. Test hosts
	# have systemctl but no systemd, and no private, writable /etc/systemd,
	# so the stand-in asks what util.HasSystemd asks: is /run/systemd/system
	# a directory?
	if [ -d "$ROOT/run/systemd/system" ]; then
		mkdir -p "$ROOT/etc/systemd/system" && cat >"$ROOT/etc/systemd/system/edgecore.service" <<'UNIT' || fail "failed to create /etc/systemd/system/edgecore.service"
# Written by the edgeferry SAMPLE stand-in keadm, not KubeEdge.
[Unit]
Description=edgecore.service

[Service]
Type=simple
ExecStart=/usr/local/bin/edgecore
Restart=always
RestartSec=10
Environment=
KillMode=process

[Install]
WantedBy=multi-user.target
UNIT
	else
		note "no systemd on this node (/run/systemd/system is not a directory): no service file written"
	fi

	bootstrap=$ROOT/etc/kubeedge/bootstrap-edgecore.conf
	(umask 137 && printf '%s' "$opt_token" >"$bootstrap") || fail "failed to write /etc/kubeedge/bootstrap-edgecore.conf"
	step "Generate EdgeCore default configuration"
	write_edgecore_yaml "$ROOT/etc/kubeedge/config/edgecore.yaml" || fail "failed to write /etc/kubeedge/config/edgecore.yaml"

	step "Run EdgeCore daemon"
	run_edgecore || fail "failed to run edgecore with systemd: exit status $?"

	wait_for_certs || fail "edge node join failed: timed out waiting for the condition"
	rm -f "$bootstrap"
	bootstrap=
	echo "Install Complete!"

	if [ -n "$opt_post_run" ]; then
		run_script post "$opt_post_run" || echo "failed to execute the post-run script $opt_post_run: exit status $?"
	fi
}

@EDGE_PARSERS@
do_reset_edge() {
	if [ -n "$opt_pre_run" ]; then
		run_script pre "$opt_pre_run" || fail "failed to execute the pre-run script $opt_pre_run: exit status $?"
	fi
	if [ "$opt_force" != true ]; then
		printf '[reset] Are you sure you want to proceed? [y/N]: '
		read -r answer || answer=
		case $answer in
		y | Y) ;;
		*) fail "aborted reset operation" ;;
		esac
	fi
	note "resetting this node"
	# TearDownEdgeCore: the service, if systemd runs it, then the process.
	if [ -d "$ROOT/run/systemd/system" ]; then
		systemctl stop edgecore
		systemctl disable edgecore
		rm -f "$ROOT/etc/systemd/system/edgecore.service"
	fi
	stop_edgecore
	note "no containers to remove: the stand-in uses no container runtime"
	# CleanDirectories(isEdge=true), which only warns about what it cannot
	# remove. Real keadm v1.21+ also removes /var/lib/kubelet, which test
	# hosts share with the machine. A directory that is a mount point (as
	# on test hosts) cannot go itself, but is emptied.
	for dir in /etc/kubeedge/ /var/log/kubeedge/ /var/lib/kubeedge/ /var/lib/edged; do
		path=$ROOT${dir%/}
		rm -rf "$path" 2>/dev/null
		if [ -e "$path" ] && [ -n "$(ls -A "$path" 2>/dev/null)" ]; then
			echo "$STANDIN: warning: failed to delete directory $dir" >&2
		fi
	done
	note "removed /etc/kubeedge/, /var/log/kubeedge/, /var/lib/kubeedge/ and /var/lib/edged; /usr/local/bin/edgecore stays, as with the real keadm"
	if [ -n "$opt_post_run" ]; then
		run_script post "$opt_post_run" || echo "failed to execute the post-run script $opt_post_run: exit status $?"
	fi
}

# klog.Info's line: I, mmdd hh:mm:ss.uuuuuu, pid, file:line] text.
klog_info() {
	printf 'I%s %7s %s] %s\n' "$(date -u '+%m%d %H:%M:%S.000000')" "$$" "$1" "$2"
}

# util.EdgeCoreVersion: the version `edgecore --version` prints
# ("KubeEdge vX.Y.Z"); fails when there is none.
edgecore_version() {
	ver=$("$ROOT/usr/local/bin/edgecore" --version 2>/dev/null | sed -n 's/^KubeEdge \(v[0-9][^ ]*\).*$/\1/p' | head -n 1)
	[ -n "$ver" ] || return 1
	echo "$ver"
}

# KillKubeEdgeBinary: the service with systemd, else the process.
kill_edgecore() {
	if [ -d "$ROOT/run/systemd/system" ]; then
		systemctl stop edgecore || return 1
	fi
	stop_edgecore
}

# prePreRun, shared by upgrade, backup and rollback: edgecore's version
# (or "unknown", with a warning as real keadm logs it) and the config.
upgrade_prerun() {
	if ! current=$(edgecore_version); then
		printf 'W%s %7s upgrade_common.go:1] failed to get edgecore version, err: %s\n' \
			"$(date -u '+%m%d %H:%M:%S.000000')" "$$" "/usr/local/bin/edgecore --version printed no version" >&2
		current=unknown
	fi
	[ -f "$ROOT$opt_config" ] ||
		fail "failed to parse the edgecore config file $opt_config, err: open $opt_config: no such file or directory"
}

# postPreRun and runPostRunHook of the upgrade commands.
upgrade_pre_script() {
	[ -n "$opt_pre_run" ] || return 0
	echo "Executing pre-run script: $opt_pre_run"
	/bin/bash "$opt_pre_run" || fail "failed to run the pre-run script $opt_pre_run, err: exit status $?"
}
upgrade_post_script() {
	[ -n "$opt_post_run" ] || return 0
	echo "Executing post-run script: $opt_post_run"
	/bin/bash "$opt_post_run" || echo "Execute post-run script: $opt_post_run failed: exit status $?"
}

# The test harness's upgrade-fault file: fail, crash or rollback-fail.
upgrade_fault() {
	[ -f "$STATE/upgrade-fault" ] || return 0
	tr -d ' \t\r\n' <"$STATE/upgrade-fault"
}

do_backup_edge() {
	upgrade_prerun
	[ "$current" != unknown ] || fail "cannot get the required current version"
	upgrade_pre_script
	klog_info backup.go:1 "backup process start ..."
	backup=/etc/kubeedge/backup/$current
	mkdir -p "$ROOT$backup" || fail "failed to create backup path $backup, err: cannot create it"
	# Real keadm copies edgecore.db too, which the real edgecore always
	# has; the stand-in edgecore keeps no database.
	db=/var/lib/kubeedge/edgecore.db
	if [ -f "$ROOT$db" ]; then
		install_file "$ROOT$db" "$backup/edgecore.db" 600 || fail "failed to backup file $db, err: cannot copy it"
	else
		note "no $db on this node (the stand-in edgecore keeps none): not backed up"
	fi
	for file in "$opt_config" /usr/local/bin/edgecore; do
		# The configuration holds the join token: only root reads the copy.
		mode=600
		[ "$file" != /usr/local/bin/edgecore ] || mode=755
		install_file "$ROOT$file" "$backup/${file##*/}" "$mode" || fail "failed to backup file $file, err: open $file: no such file or directory"
	done
	klog_info backup.go:1 "backup process successful"
	upgrade_post_script
}

do_upgrade_edge() {
	to=$opt_toVersion
	case $to in v*) ;; *) to=v$to ;; esac
	case $to in
	v[0-9]*.[0-9]*.[0-9]*) ;;
	*) fail "--toVersion \"$opt_toVersion\" is not a version" ;;
	esac
	digest_want=${opt_image_digest-}
	upgrade_prerun
	upgrade_pre_script
	if [ "$opt_force" != true ]; then
		printf '[upgrade] Are you sure you want to proceed? [y/N]: '
		read -r answer || answer=
		case $answer in
		y | Y) ;;
		*) fail "aborted upgrade operation" ;;
		esac
	fi
	fault=$(upgrade_fault)
	rm -f "$STATE/edgecore-crash"
	# As the NodeUpgradeJob controller does it: the tag of --image is
	# replaced by --toVersion.
	ref=${opt_image%@*}
	case ${ref##*/} in *:*) ref=${ref%:*} ;; esac
	case ${ref%%/*} in
	*.* | *:* | localhost) registry=${ref%%/*} repo=${ref#*/} ;;
	*) registry=docker.io repo=$ref ;;
	esac
	case $registry:$repo in docker.io:*/*) ;; docker.io:*) repo=library/$repo ;; esac
	tag=$to
	image=$registry/$repo:$tag
	tmp=$(mktemp -d "${TMPDIR:-/tmp}/keadm-standin.XXXXXX") || fail "cannot create a temporary directory"
	note "upgrading this node from $current to $to; images come from the site mirror over HTTP, not through containerd"
	klog_info upgrade.go:1 "upgrade process start ..."
	pull_image
	# The message of the edge NodeUpgradeJob handler's check (prepareKeadm):
	# keadm's own --image-digest message was not found in the searched source.
	if [ -n "$digest_want" ] && [ "$digest_want" != "$image_digest" ]; then
		fail "invalid installation-package image digest value: $image_digest"
	fi
	upgrade_dir=/etc/kubeedge/upgrade/$to
	copy_edgecore "$upgrade_dir"
	if [ -f "$STATE/upgrade-seconds" ]; then
		seconds=$(tr -d ' \t\r\n' <"$STATE/upgrade-seconds")
		case $seconds in
		'' | *[!0-9]*) note "ignoring $STATE/upgrade-seconds: not a whole number of seconds" ;;
		*)
			note "taking $seconds more seconds (upgrade-seconds file)"
			sleep "$seconds" &
			sleeper=$!
			wait "$sleeper"
			sleeper=
			;;
		esac
	fi
	kill_edgecore || fail "failed to stop edgecore, err: systemctl stop edgecore failed"
	install_file "$ROOT$upgrade_dir/edgecore" /usr/local/bin/edgecore 755 ||
		fail "failed to copy edgecore to /usr/local/bin/edgecore"
	case $fault in
	fail | rollback-fail)
		echo "keadm (edgeferry SAMPLE stand-in): failing on purpose (upgrade-fault $fault)" >&2
		fail "failed to start edgecore, err: exit status 1"
		;;
	crash)
		# The new edgecore reads this at start and exits.
		mkdir -p "$STATE" && echo "$to" >"$STATE/edgecore-crash"
		;;
	'') ;;
	*) note "ignoring $STATE/upgrade-fault: it says neither fail, crash nor rollback-fail" ;;
	esac
	run_edgecore || fail "failed to start edgecore, err: exit status $?"
	klog_info upgrade.go:1 "upgrade process successful"
	upgrade_post_script
}

do_rollback_edge() {
	upgrade_prerun
	backups=/etc/kubeedge/backup
	[ -d "$ROOT$backups" ] ||
		fail "failed to get backup dirs from $backups/, err: open $backups/: no such file or directory"
	version=$opt_historical_version
	if [ -n "$version" ]; then
		[ -d "$ROOT$backups/$version" ] ||
			fail "the historical version $version is not exist in backup dir $backups/"
	else
		# The newest backup: sorted by modification time, newest first.
		version=$(ls -t "$ROOT$backups" | head -n 1)
		[ -n "$version" ] || fail "no historical version is found in backup dir $backups/"
	fi
	upgrade_pre_script
	if [ "$(upgrade_fault)" = rollback-fail ]; then
		echo "keadm (edgeferry SAMPLE stand-in): failing on purpose (upgrade-fault rollback-fail)" >&2
		fail "failed to stop edgecore, err: exit status 1"
	fi
	klog_info rollback.go:1 "rollback process start ..."
	kill_edgecore || fail "failed to stop edgecore, err: systemctl stop edgecore failed"
	from=$backups/$version
	if [ -f "$ROOT$from/edgecore.db" ]; then
		install_file "$ROOT$from/edgecore.db" /var/lib/kubeedge/edgecore.db 600 ||
			fail "failed to rollback file /var/lib/kubeedge/edgecore.db, err: cannot copy it"
	fi
	install_file "$ROOT$from/${opt_config##*/}" "$opt_config" 644 ||
		fail "failed to rollback file $opt_config, err: open $from/${opt_config##*/}: no such file or directory"
	install_file "$ROOT$from/edgecore" /usr/local/bin/edgecore 755 ||
		fail "failed to rollback file /usr/local/bin/edgecore, err: open $from/edgecore: no such file or directory"
	rm -f "$STATE/edgecore-crash"
	run_edgecore || fail "failed to start edgecore, err: exit status $?"
	klog_info rollback.go:1 "rollback process successful"
	upgrade_post_script
}

case ${1-} in
version)
	echo "version: version.Info{GitVersion:\"$KEADM_VERSION\"} (edgeferry SAMPLE stand-in, not KubeEdge)"
	;;
join)
	shift
	join_defaults
	join_parse "$@"
	join_check_required
	join_check_values
	do_join
	;;
@EDGE_COMMANDS@)
	command=$1
	[ "${2-}" = edge ] || {
		usage >&2
		exit 1
	}
	shift 2
	"${command}_edge_defaults"
	"${command}_edge_parse" "$@"
	"do_${command}_edge"
	;;
help | -h | --help) usage ;;
*)
	usage >&2
	exit 1
	;;
esac
