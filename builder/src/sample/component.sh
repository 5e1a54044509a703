#!/bin/sh
# edgeferry SAMPLE stand-in for @NAME@ @VERSION@ — not KubeEdge
#
# Written by edgeferry for tests and demos; it can only report its version.
case ${1-} in
--version | --version=true | -version)
	echo "KubeEdge @VERSION@ (@NAME@: edgeferry SAMPLE stand-in, not KubeEdge)"
	;;
*)
	echo "@NAME@ @VERSION@ is an edgeferry SAMPLE stand-in and cannot run; only --version works" >&2
	exit 1
	;;
esac
