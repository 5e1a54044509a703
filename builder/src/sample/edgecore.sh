#!/bin/sh
# edgeferry SAMPLE stand-in for edgecore @VERSION@ — not KubeEdge
#
# Written by edgeferry for tests and demos. Started with no arguments on a
# node that the stand-in `keadm join` prepared, it does what the real keadm
# waits for: it writes the three edgeHub TLS files (labelled stand-in text
# in PEM armour, not certificates; the real edgecore gets them from
# cloudcore with the join token) and keeps running, so that
# `pidof edgecore` finds it. It writes its pid to /var/lib/keadm-standin/edgecore.pid
# and stops on SIGTERM. EDGEFERRY_SAMPLE_ROOT, if set, is put in front of every host
# path.
set -u

ROOT=${EDGEFERRY_SAMPLE_ROOT:-}
STANDIN="edgecore @VERSION@ (edgeferry SAMPLE stand-in, not KubeEdge)"

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

if [ ! -f "$ROOT/etc/kubeedge/config/edgecore.yaml" ]; then
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
echo "$STANDIN: starting with /etc/kubeedge/config/edgecore.yaml"

pidfile=$ROOT/var/lib/keadm-standin/edgecore.pid
mkdir -p "${pidfile%/*}" && echo $$ >"$pidfile" || {
	echo "$STANDIN: cannot write /var/lib/keadm-standin/edgecore.pid" >&2
	exit 1
}

# pem FILE TYPE WHAT MODE: labelled stand-in text in PEM armour, written
# atomically so that keadm never sees half a file.
pem() {
	part=$1.part.$$
	mkdir -p "${1%/*}" && (
		umask 077
		printf '%s\n' "-----BEGIN $2-----" \
			"edgeferry SAMPLE stand-in, written by the stand-in edgecore @VERSION@:" \
			"not a $3, and not from KubeEdge." \
			"-----END $2-----" >"$part"
	) && chmod "$4" "$part" && mv -f "$part" "$1" || {
		echo "$STANDIN: cannot write $1" >&2
		exit 1
	}
}
pem "$ROOT/etc/kubeedge/ca/rootCA.crt" CERTIFICATE certificate 644
pem "$ROOT/etc/kubeedge/certs/server.crt" CERTIFICATE certificate 644
pem "$ROOT/etc/kubeedge/certs/server.key" "PRIVATE KEY" "private key" 600
echo "$STANDIN: wrote stand-in /etc/kubeedge/ca/rootCA.crt, /etc/kubeedge/certs/server.crt and server.key; running until stopped"

# The shell itself keeps running, named edgecore: `exec sleep` would rename
# the process. `wait` returns as soon as a signal comes.
sleeper=
stop() {
	[ -z "$sleeper" ] || kill "$sleeper" 2>/dev/null
	[ "$(cat "$pidfile" 2>/dev/null)" != $$ ] || rm -f "$pidfile"
	exit 0
}
trap stop HUP INT TERM
while :; do
	sleep 3600 &
	sleeper=$!
	wait "$sleeper"
done
