#!/bin/sh
# edgeferry SAMPLE stand-in for edgecore @VERSION@ — not KubeEdge
#
# Written by edgeferry for tests and demos. Started with no arguments on a
# node that the stand-in `keadm join` prepared, it does what the real
# edgecore's edgeHub does on its first start (docs/standins.md compares the
# two line by line), with curl and openssl on the node:
#   1. reads httpServer, token, the websocket server, hostnameOverride and
#      the three TLS paths from /etc/kubeedge/config/edgecore.yaml;
#   2. unless a certificate and key are already there, fetches
#      <httpServer>/ca.crt without verifying the server (DER), checks that
#      the token has four "."-separated parts and that its first is the hex
#      sha256 of that DER, writes the CA, makes a P-256 key and a CSR, sends
#      the CSR to <httpServer>/edge.crt with the rest of the token as a
#      bearer token and a NodeName header, trusting only that CA, and
#      writes the certificate and key (0600), each file atomically; any
#      failure is logged as klog's Exitf logs it ("F... Error: ...") and
#      ends edgecore with exit status 1;
#   3. opens the cloudhub websocket (wss://<server>/<project>/<node>/events)
#      with its certificate, with `openssl s_client`, and runs while the hub
#      holds the connection. When the hub refuses or drops it, it tries
#      again every $EDGEFERRY_STANDIN_HUB_RETRY_SECONDS seconds (default 2),
#      and after $EDGEFERRY_STANDIN_HUB_RETRIES failures in a row (default 3)
#      it exits 1, saying why. (The real edgecore exited about 17 s after
#      connecting to a cloud that did not register it; the stand-in's delay
#      is shorter so tests stay fast.)
# It names itself edgecore so that `pidof edgecore` finds it, writes its pid
# to /var/lib/keadm-standin/edgecore.pid and stops on SIGTERM. When
# /var/lib/keadm-standin/edgecore-crash holds its own version (written by
# the stand-in keadm's upgrade for the fault "crash") it exits 1 at start.
# `edgecore --version` prints "KubeEdge <version>" first, as the real
# one's verflag does, then says it is a stand-in.
#
# EDGEFERRY_SAMPLE_ROOT, if set, is put in front of every host path (unit
# tests); only then, EDGEFERRY_STANDIN_NO_CLOUD=1 skips steps 2 and 3: it
# writes labelled stand-in text in PEM armour instead of certificates and
# connects nowhere.
set -u

ROOT=${EDGEFERRY_SAMPLE_ROOT:-}
STANDIN="edgecore @VERSION@ (edgeferry SAMPLE stand-in, not KubeEdge)"
# edgeHub's default projectID, the first part of the hub's websocket path.
PROJECT=e632aba927ea4ac2b575ec1603d56f10

case ${1-} in
--version | --version=true | -version)
	echo "KubeEdge @VERSION@ (edgecore: edgeferry SAMPLE stand-in, not KubeEdge)"
	exit 0
	;;
'') ;;
*)
	echo "$STANDIN: unknown argument $1: run it with no arguments, or with --version" >&2
	exit 1
	;;
esac

config=$ROOT/etc/kubeedge/config/edgecore.yaml
if [ ! -f "$config" ]; then
	echo "$STANDIN: cannot read /etc/kubeedge/config/edgecore.yaml: run keadm join first" >&2
	exit 1
fi

# The real edgecore is a binary, which `pidof edgecore` finds by name. A
# script's argv[0] is its shell, so sysvinit's pidof finds it only with -x.
# The stand-in therefore runs itself again through a symlink called
# edgecore to the shell: argv[0] and the process name are then edgecore.
if [ "${EDGEFERRY_STANDIN_EDGECORE_RELAUNCHED-}" != 1 ]; then
	link=$ROOT/var/lib/keadm-standin/shell/edgecore
	for shell in /bin/dash /bin/bash; do
		# Not busybox, which would take "edgecore" for an applet name.
		[ -x "$shell" ] && mkdir -p "${link%/*}" && ln -sf "$shell" "$link" || continue
		export EDGEFERRY_STANDIN_EDGECORE_RELAUNCHED=1
		exec "$link" "$0"
	done
fi
unset EDGEFERRY_STANDIN_EDGECORE_RELAUNCHED

# klog's line format: severity, mmdd hh:mm:ss.uuuuuu, pid, file:line] text.
klog() {
	printf '%s%s %7d %s] %s\n' "$1" "$(date -u '+%m%d %H:%M:%S.000000')" $$ "$2" "$3"
}
# klog.Exitf: the line at severity F, then exit status 1.
exitf() {
	klog F "$1" "Error: $2"
	exit 1
}

# The stand-in keadm's upgrade-fault "crash" names the version that is to
# die at start, so that a rollback to the old version runs again.
crash=$ROOT/var/lib/keadm-standin/edgecore-crash
if [ -f "$crash" ] && [ "$(cat "$crash" 2>/dev/null)" = "@VERSION@" ]; then
	exitf server.go:1 "$STANDIN: exiting at start on purpose (keadm's upgrade-fault file says crash)"
fi

klog I server.go:1 "$STANDIN: starting with /etc/kubeedge/config/edgecore.yaml"

pidfile=$ROOT/var/lib/keadm-standin/edgecore.pid
mkdir -p "${pidfile%/*}" && echo $$ >"$pidfile" || {
	echo "$STANDIN: cannot write /var/lib/keadm-standin/edgecore.pid" >&2
	exit 1
}

tmp=
hub=
sleeper=
cleanup() {
	[ -z "$hub" ] || kill "$hub" 2>/dev/null
	[ -z "$sleeper" ] || kill "$sleeper" 2>/dev/null
	[ -z "$tmp" ] || rm -rf "$tmp"
	[ "$(cat "$pidfile" 2>/dev/null)" != $$ ] || rm -f "$pidfile"
}
trap cleanup EXIT
trap 'exit 0' HUP INT TERM
# A hub that went away must not kill us through a write to its pipe.
trap '' PIPE

# yaml VALUE: a scalar as the stand-in keadm writes it (plain, or
# double-quoted with \" and \\), unquoted.
unyaml() {
	case $1 in
	\"*\")
		v=${1#\"}
		printf '%s' "${v%\"}" | sed -e 's/\\"/"/g' -e 's/\\\\/\\/g'
		;;
	*) printf '%s' "$1" ;;
	esac
}
# field KEY [SECTION]: the value of "KEY:" in edgecore.yaml, inside the
# block "SECTION:" when given.
field() {
	if [ -n "${2-}" ]; then
		line=$(sed -n "/^ *$2:\$/,/^ *[a-zA-Z]*:\$/p" "$config" | sed -n "s/^ *$1: //p" | head -n 1)
	else
		line=$(sed -n "s/^ *$1: //p" "$config" | head -n 1)
	fi
	unyaml "$line"
}

http_server=$(field httpServer)
token=$(field token)
# Unset paths keep edgecore's defaults.
ca_path=$(field tlsCaFile)
cert_path=$(field tlsCertFile)
key_path=$(field tlsPrivateKeyFile)
ca_file=$ROOT${ca_path:-/etc/kubeedge/ca/rootCA.crt}
cert_file=$ROOT${cert_path:-/etc/kubeedge/certs/server.crt}
key_file=$ROOT${key_path:-/etc/kubeedge/certs/server.key}
websocket_enable=$(field enable websocket)
websocket_server=$(field server websocket)
node=$(field hostnameOverride)
[ -n "$node" ] || node=$(uname -n)

# put FILE MODE: moves $FILE.part.$$ into place (atomic rename).
put() {
	mkdir -p "${1%/*}" && chmod "$2" "$1.part.$$" && mv -f "$1.part.$$" "$1"
}

# The no-cloud path, for unit tests that run this under EDGEFERRY_SAMPLE_ROOT
# without a certificate service.
if [ -n "$ROOT" ] && [ "${EDGEFERRY_STANDIN_NO_CLOUD-}" = 1 ]; then
	for f in "$ca_file:CERTIFICATE:certificate:644" "$cert_file:CERTIFICATE:certificate:644" "$key_file:PRIVATE KEY:private key:600"; do
		path=${f%%:*} rest=${f#*:}
		mkdir -p "${path%/*}" && (
			umask 077
			printf '%s\n' "-----BEGIN ${rest%%:*}-----" \
				"edgeferry SAMPLE stand-in, written by the stand-in edgecore @VERSION@ without a cloud:" \
				"not a $(echo "$rest" | cut -d: -f2), and not from KubeEdge." \
				"-----END ${rest%%:*}-----" >"$path.part.$$"
		) && put "$path" "${rest##*:}" || exitf certmanager.go:1 "cannot write $path"
	done
	klog I certmanager.go:1 "no cloud (EDGEFERRY_STANDIN_NO_CLOUD=1): wrote stand-in TLS files; running until stopped"
	while :; do
		sleep 3600 &
		sleeper=$!
		wait "$sleeper"
	done
fi

for tool in curl openssl; do
	command -v "$tool" >/dev/null 2>&1 ||
		exitf certmanager.go:1 "$STANDIN needs $tool on the node to apply for certificates and reach the hub: install it"
done
tmp=$(mktemp -d "${TMPDIR:-/tmp}/edgecore-standin.XXXXXX") || exitf certmanager.go:1 "cannot create a temporary directory"

# go_error URL CURL_EXIT STDERR_FILE: the error Go's http.Client.Do returns.
go_error() {
	hostport=${1#https://}
	hostport=${hostport%%/*}
	case $2:$(cat "$3") in
	7:*"No route to host"*) why="dial tcp $hostport: connect: no route to host" ;;
	7:*"Network is unreachable"*) why="dial tcp $hostport: connect: network is unreachable" ;;
	7:*) why="dial tcp $hostport: connect: connection refused" ;;
	28:*) why="dial tcp $hostport: i/o timeout" ;;
	6:*) why="dial tcp: lookup ${hostport%:*}: no such host" ;;
	35:* | 56:* | 52:*) why="EOF" ;;
	60:*) why="tls: failed to verify certificate: x509: certificate signed by unknown authority" ;;
	*) why="curl exit code $2: $(grep '^curl: ' "$3" | tr '\n' ' ')" ;;
	esac
	printf 'Get "%s": %s' "$1" "$why"
}

# CertManager.Start: apply for certificates unless a pair is there.
if ! openssl x509 -in "$cert_file" -noout >/dev/null 2>&1 || ! openssl pkey -in "$key_file" -noout >/dev/null 2>&1; then
	url=$http_server/ca.crt
	# http.NewHTTPClient: InsecureSkipVerify, 30 s to connect; the status
	# is not checked, the body is the CA.
	# -v: curl names the connect error (refused, no route) only there.
	curl -v -sS -k -g --noproxy '*' --connect-timeout 30 -m 300 -o "$tmp/ca.der" "$url" 2>"$tmp/err"
	rc=$?
	[ $rc = 0 ] || exitf certmanager.go:104 "failed to get CA certificate, err: $(go_error "$url" $rc "$tmp/err")"
	parts=$(printf '%s' "$token" | awk -F. '{ print NF } END { if (NR == 0) print 1 }')
	[ "$parts" = 4 ] || exitf certmanager.go:104 "token credentials are in the wrong format"
	token_hash=${token%%.*}
	ca_hash=$(openssl dgst -sha256 -r "$tmp/ca.der" | cut -d' ' -f1)
	if ! { [ ! -s "$tmp/ca.der" ] && [ -z "$token_hash" ]; } && [ "$token_hash" != "$ca_hash" ]; then
		exitf certmanager.go:104 "failed to validate CA certificate. tokenCAhash: $token_hash, CAhash: $ca_hash"
	fi
	openssl x509 -inform DER -in "$tmp/ca.der" -out "$tmp/ca.pem" 2>/dev/null ||
		exitf certmanager.go:104 "failed to parse the CA certificate, error: x509: malformed certificate"
	mkdir -p "${ca_file%/*}" "${cert_file%/*}" "${key_file%/*}" 2>/dev/null
	cp "$tmp/ca.pem" "$ca_file.part.$$" 2>/dev/null && put "$ca_file" 644 ||
		exitf certmanager.go:104 "failed to save the CA certificate to file: $ca_file, error: cannot write it"

	# getCSR: a P-256 key and a CSR with NewCertManager's subject.
	(umask 077 && openssl ecparam -name prime256v1 -genkey -noout -out "$tmp/key.pem") 2>/dev/null &&
		openssl req -new -key "$tmp/key.pem" -subj "/C=CN/ST=Zhejiang/L=Hangzhou/O=kubeEdge/CN=kubeedge.io" \
			-outform DER -out "$tmp/csr.der" 2>/dev/null ||
		exitf certmanager.go:104 "failed to get edge certificate from the cloudcore, error: failed to create CSR: openssl failed"
	# The bearer token goes to curl in a file, never on a command line.
	(umask 077 && printf 'Authorization: Bearer %s\nNodeName: %s\n' "${token#*.}" "$node" >"$tmp/headers")
	url=$http_server/edge.crt
	code=$(curl -sS -g --noproxy '*' --cacert "$tmp/ca.pem" --connect-timeout 30 -m 30 -X GET \
		-H "@$tmp/headers" -H 'Content-Type:' --data-binary "@$tmp/csr.der" \
		-o "$tmp/edge.der" -w '%{http_code}' "$url" 2>"$tmp/err")
	rc=$?
	rm -f "$tmp/headers"
	[ $rc = 0 ] || exitf certmanager.go:104 "failed to get edge certificate from the cloudcore, error: $(go_error "$url" $rc "$tmp/err")"
	[ "$code" = 200 ] ||
		exitf certmanager.go:104 "failed to get edge certificate from the cloudcore, error: $(head -c 300 "$tmp/edge.der" | tr '\n' ' ')"
	openssl x509 -inform DER -in "$tmp/edge.der" -out "$cert_file.part.$$" 2>/dev/null ||
		exitf certmanager.go:104 "failed to save the edge key and certificate to file: $cert_file, error: the cloudcore sent no certificate"
	cp "$tmp/key.pem" "$key_file.part.$$" && put "$key_file" 600 && put "$cert_file" 644 ||
		exitf certmanager.go:104 "failed to save the edge key and certificate to file: $cert_file, error: cannot write it"
	klog I certmanager.go:1 "wrote ${ca_file#"$ROOT"}, ${cert_file#"$ROOT"} and ${key_file#"$ROOT"} from $http_server"
fi

[ "$websocket_enable" = true ] ||
	exitf edgehub.go:1 "$STANDIN speaks only websocket to the hub: keadm join --hub-protocol=websocket"

# connect: one websocket session with the hub; returns when it ends.
# Sets $held when the upgrade succeeded, $why to why it ended.
connect() {
	held=
	rm -f "$tmp/hub.in" "$tmp/hub.out" "$tmp/hub.err"
	mkfifo "$tmp/hub.in" || exitf edgehub.go:1 "cannot create $tmp/hub.in"
	host=${websocket_server%:*}
	verify_ip=
	case $host in *[!0-9.]*) ;; *) verify_ip="-verify_ip $host" ;; esac
	# shellcheck disable=SC2086
	openssl s_client -quiet -connect "$websocket_server" -cert "$cert_file" -key "$key_file" \
		-CAfile "$ca_file" -verify_return_error $verify_ip <"$tmp/hub.in" >"$tmp/hub.out" 2>"$tmp/hub.err" &
	hub=$!
	exec 3>"$tmp/hub.in"
	key=$(openssl rand -base64 16)
	path=/$PROJECT/$node/events
	printf 'GET %s HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\nnode_id: %s\r\nproject_id: %s\r\n\r\n' \
		"$path" "$websocket_server" "$key" "$node" "$PROJECT" >&3 2>/dev/null
	want=$(printf '%s' "${key}258EAFA5-E914-47DA-95CA-C5AB0DC85B11" | openssl dgst -sha1 -binary | openssl base64)
	# Up to 10 s for the answer's head (it ends with an empty line).
	waited=0
	while kill -0 "$hub" 2>/dev/null && ! tr -d '\r' <"$tmp/hub.out" | grep -q '^$'; do
		[ $waited -lt 100 ] || break
		sleep 0.1
		waited=$((waited + 1))
	done
	status=$(head -n 1 "$tmp/hub.out" 2>/dev/null | tr -d '\r')
	accept=$(tr -d '\r' <"$tmp/hub.out" 2>/dev/null | sed -n 's/^[Ss]ec-[Ww]eb[Ss]ocket-[Aa]ccept: *//p' | head -n 1)
	case $status in
	"HTTP/1.1 101 "*)
		if [ "$accept" = "$want" ]; then
			held=1
			klog I ws.go:1 "websocket connection to wss://$websocket_server$path is established"
			wait "$hub"
			why="the hub closed the connection"
		else
			why="the hub answered the upgrade with Sec-WebSocket-Accept \"$accept\", not \"$want\""
		fi
		;;
	HTTP/*) why="the hub answered $status" ;;
	*)
		why=$(grep -v '^$' "$tmp/hub.err" 2>/dev/null | tail -n 1)
		why="could not connect: ${why:-no answer from the hub}"
		;;
	esac
	exec 3>&-
	kill "$hub" 2>/dev/null
	wait "$hub" 2>/dev/null
	hub=
}

retries=${EDGEFERRY_STANDIN_HUB_RETRIES:-3}
delay=${EDGEFERRY_STANDIN_HUB_RETRY_SECONDS:-2}
case $retries$delay in *[!0-9]*) exitf edgehub.go:1 "EDGEFERRY_STANDIN_HUB_RETRIES and EDGEFERRY_STANDIN_HUB_RETRY_SECONDS must be whole numbers" ;; esac
failures=0
while :; do
	connect
	if [ -n "$held" ]; then failures=1; else failures=$((failures + 1)); fi
	klog E ws.go:1 "websocket connection to wss://$websocket_server/$PROJECT/$node/events ended: $why"
	[ "$failures" -lt "$retries" ] ||
		exitf edgehub.go:1 "failed to connect to the cloudhub wss://$websocket_server $failures times in a row, last: $why"
	sleep "$delay" &
	sleeper=$!
	wait "$sleeper"
	sleeper=
done
