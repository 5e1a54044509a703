//! The built-in SAMPLE artifact set: a complete `--from DIR` layout
//! (`docs/artifact-dir.md`) for all three arches, with the real KubeEdge
//! asset names, tarball layouts and image references but stand-in contents.
//!
//! No KubeEdge release can be downloaded where tests and the demo run, so
//! these take their place. Every stand-in says so in its first lines, its
//! labels and its annotations, so a sample bundle can never pass for a real
//! one. Output is byte-for-byte reproducible for a given spec and build host.

use edgeferry_bundle::hashing::sha256_hex;
use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use edgeferry_bundle::format::{rfc3339_utc, Arch};
use edgeferry_bundle::keadm::{self, Flag, FlagKind};
use flate2::{Compression, GzBuilder};
use serde::Serialize;
use sha2::{Digest, Sha512};

/// Fixed timestamp for every tar entry and image config, so that builds on
/// different days produce the same bytes.
const MTIME: u64 = 1_700_000_000;
/// Fixed so that output does not depend on flate2's default.
const GZIP_LEVEL: u32 = 6;
const BUSYBOX: &str = "/bin/busybox";
const BUSYBOX_PACKAGE: &str = "busybox-static";

const MEDIA_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const MEDIA_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const MEDIA_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const MEDIA_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

/// Label and annotation that mark every sample image, manifest and index.
pub const SAMPLE_MARKER: &str = "io.edgeferry.sample";
const ANNOTATION_DESCRIPTION: &str = "org.opencontainers.image.description";
const ANNOTATION_REF_NAME: &str = "org.opencontainers.image.ref.name";
const ANNOTATION_CONTAINERD_NAME: &str = "io.containerd.image.name";

/// Variable the stand-in scripts put in front of every host path they touch,
/// so unit tests can run `keadm join` and `keadm reset edge` in a temporary
/// directory.
pub const SAMPLE_ROOT_ENV: &str = "EDGEFERRY_SAMPLE_ROOT";
/// Variable with the seconds the stand-in `keadm join` waits for edgecore's
/// TLS files; 300 when unset, as the real keadm.
pub const STANDIN_WAIT_ENV: &str = "EDGEFERRY_STANDIN_WAIT";
/// The stand-ins' own directory on a node: fault files and edgecore's pid.
pub const STANDIN_STATE_DIR: &str = "/var/lib/keadm-standin";
/// Fault file: `fail` makes the stand-in `keadm join` exit 1 after it has
/// copied edgecore out of the image, `hang` makes it sleep there until
/// killed.
pub const STANDIN_FAULT_FILE: &str = "/var/lib/keadm-standin/fault";
/// A whole number N of seconds the stand-in `keadm join` sleeps at the
/// same point, to model how long a real join takes.
pub const STANDIN_JOIN_SECONDS_FILE: &str = "/var/lib/keadm-standin/join-seconds";
/// Where the stand-in edgecore writes its pid.
pub const STANDIN_EDGECORE_PID_FILE: &str = "/var/lib/keadm-standin/edgecore.pid";

/// What the sample set stands in for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SampleSpec {
    /// e.g. `v1.23.1`
    pub kubeedge_version: String,
    /// Full reference, e.g. `registry.k8s.io/pause:3.10`.
    pub pause_image: String,
    /// Full reference, e.g. `docker.io/library/eclipse-mosquitto:1.6.15`.
    pub mosquitto_image: String,
    /// Full reference, e.g. `docker.io/kubeedge/installation-package:v1.23.1`.
    pub installation_package_image: String,
    /// Full references of extra workload images; each gets a tiny sample image.
    pub extra_images: Vec<String>,
}

impl SampleSpec {
    /// The images a KubeEdge version's edge side needs, with the usual
    /// upstream references and no extras.
    pub fn for_version(kubeedge_version: &str) -> SampleSpec {
        SampleSpec {
            kubeedge_version: kubeedge_version.to_string(),
            pause_image: "registry.k8s.io/pause:3.10".to_string(),
            mosquitto_image: "docker.io/library/eclipse-mosquitto:1.6.15".to_string(),
            installation_package_image: format!(
                "docker.io/kubeedge/installation-package:{kubeedge_version}"
            ),
            extra_images: Vec::new(),
        }
    }
}

// ---------------------------------------------------------------------------
// busybox

/// The host's static busybox, which the sample images carry so that the
/// amd64 installation-package image can really run `sh`, `sleep` and `cp`.
pub fn busybox_path() -> Result<PathBuf> {
    load_busybox().map(|(path, _)| path)
}

fn load_busybox() -> Result<(PathBuf, Vec<u8>)> {
    let path = PathBuf::from(BUSYBOX);
    let bytes = match fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            bail!("busybox not found at {BUSYBOX}: install the Debian package {BUSYBOX_PACKAGE}")
        }
        Err(e) => {
            return Err(e).with_context(|| {
                format!("cannot read {BUSYBOX}: make it readable or reinstall {BUSYBOX_PACKAGE}")
            })
        }
    };
    if let Err(why) = check_static_elf(&bytes) {
        bail!("{BUSYBOX} {why}: install the Debian package {BUSYBOX_PACKAGE}, which replaces it with a static build");
    }
    Ok((path, bytes))
}

/// `Err` says why `bytes` is not a statically linked ELF executable: a
/// PT_INTERP program header means it needs a dynamic loader, which the
/// sample images do not have.
fn check_static_elf(bytes: &[u8]) -> std::result::Result<(), &'static str> {
    const PT_INTERP: u32 = 3;
    if bytes.len() < 52 || &bytes[..4] != b"\x7fELF" {
        return Err("is not an ELF executable");
    }
    let little = match bytes[5] {
        1 => true,
        2 => false,
        _ => return Err("is an ELF file of unknown byte order"),
    };
    let uint = |at: usize, len: usize| -> Option<u64> {
        let field = bytes.get(at..at.checked_add(len)?)?;
        let mut value = 0u64;
        for i in 0..len {
            let byte = if little { field[len - 1 - i] } else { field[i] };
            value = (value << 8) | u64::from(byte);
        }
        Some(value)
    };
    // Offsets of e_phoff, e_phentsize and e_phnum differ by ELF class.
    let (phoff, phentsize, phnum) = match bytes[4] {
        1 => (uint(0x1c, 4), uint(0x2a, 2), uint(0x2c, 2)),
        2 => (uint(0x20, 8), uint(0x36, 2), uint(0x38, 2)),
        _ => return Err("is an ELF file of unknown class"),
    };
    let (Some(phoff), Some(phentsize), Some(phnum)) = (phoff, phentsize, phnum) else {
        return Err("has a truncated ELF header");
    };
    for i in 0..phnum {
        let at = i
            .checked_mul(phentsize)
            .and_then(|o| o.checked_add(phoff))
            .and_then(|o| usize::try_from(o).ok());
        match at.and_then(|at| uint(at, 4)) {
            Some(p_type) if p_type == u64::from(PT_INTERP) => {
                return Err("is dynamically linked (it names an ELF interpreter)")
            }
            Some(_) => {}
            None => return Err("has truncated ELF program headers"),
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// stand-in scripts

fn sh_var(long: &str) -> String {
    long.replace('-', "_")
}

/// Single-quotes `s` for sh.
fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r#"'\''"#))
}

/// Statement that stores `value` (an sh expression) for flag `f`.
fn sh_assign(f: &Flag, value: &str) -> String {
    let v = sh_var(f.long);
    match f.kind {
        FlagKind::List => format!("opt_{v}=${{opt_{v}:+$opt_{v},}}{value}; seen_{v}=1"),
        FlagKind::Str | FlagKind::Bool => format!("opt_{v}={value}; seen_{v}=1"),
    }
}

/// An sh function `<name>_parse` that parses its arguments the way pflag
/// does for `flags`, with pflag's error messages, into `opt_*` / `seen_*`.
fn sh_parser(name: &str, flags: &[Flag]) -> String {
    let mut s = String::new();
    s.push_str(&format!("{name}_defaults() {{\n"));
    for f in flags {
        let v = sh_var(f.long);
        s.push_str(&format!("\topt_{v}={}; seen_{v}=\n", sh_quote(f.default)));
    }
    s.push_str("}\n\n");

    s.push_str(&format!(
        "{name}_parse() {{\n\twhile [ $# -gt 0 ]; do\n\t\tcase $1 in\n"
    ));
    s.push_str("\t\t--) break ;;\n\t\t-h | --help)\n\t\t\tusage\n\t\t\texit 0\n\t\t\t;;\n");
    for f in flags {
        let long = f.long;
        match f.kind {
            FlagKind::Str | FlagKind::List => {
                s.push_str(&format!("\t\t--{long}=*) {} ;;\n", sh_assign(f, "${1#*=}")));
                s.push_str(&format!(
                    "\t\t--{long})\n\t\t\t[ $# -ge 2 ] || fail \"flag needs an argument: --{long}\"\n\t\t\t{}\n\t\t\tshift\n\t\t\t;;\n",
                    sh_assign(f, "$2")
                ));
                if let Some(c) = f.short {
                    s.push_str(&format!(
                        "\t\t-{c})\n\t\t\t[ $# -ge 2 ] || fail \"flag needs an argument: '{c}' in -{c}\"\n\t\t\t{}\n\t\t\tshift\n\t\t\t;;\n",
                        sh_assign(f, "$2")
                    ));
                    s.push_str(&format!(
                        "\t\t-{c}=*) {} ;;\n",
                        sh_assign(f, &format!("${{1#-{c}=}}"))
                    ));
                    s.push_str(&format!(
                        "\t\t-{c}?*) {} ;;\n",
                        sh_assign(f, &format!("${{1#-{c}}}"))
                    ));
                }
            }
            FlagKind::Bool => {
                s.push_str(&format!("\t\t--{long}) {} ;;\n", sh_assign(f, "true")));
                let v = sh_var(long);
                s.push_str(&format!(
                    "\t\t--{long}=*)\n\t\t\topt_{v}=$(parse_bool \"${{1#*=}}\" --{long}) || exit 1\n\t\t\tseen_{v}=1\n\t\t\t;;\n"
                ));
                if let Some(c) = f.short {
                    s.push_str(&format!("\t\t-{c}) {} ;;\n", sh_assign(f, "true")));
                }
            }
        }
    }
    s.push_str(concat!(
        "\t\t--*) fail \"unknown flag: ${1%%=*}\" ;;\n",
        "\t\t-?*)\n",
        "\t\t\trest=${1#-}\n",
        "\t\t\tfail \"unknown shorthand flag: '${rest%\"${rest#?}\"}' in $1\"\n",
        "\t\t\t;;\n",
        // Cobra passes positional arguments to join, which ignores them.
        "\t\t*) ;;\n",
        "\t\tesac\n\t\tshift\n\tdone\n}\n",
    ));
    s
}

fn usage_lines(flags: &[Flag]) -> String {
    let mut rows = Vec::new();
    for f in flags {
        let names = match f.short {
            Some(c) => format!("  -{c}, --{}", f.long),
            None => format!("      --{}", f.long),
        };
        let kind = match f.kind {
            FlagKind::Str => " string",
            FlagKind::List => " strings",
            FlagKind::Bool => "",
        };
        let default = match (f.kind, f.default) {
            (FlagKind::Bool, _) | (_, "") => String::new(),
            (_, d) => format!(" (default \"{d}\")"),
        };
        rows.push((format!("{names}{kind}"), format!("{}{default}", f.help)));
    }
    let width = rows.iter().map(|(l, _)| l.len()).max().unwrap_or(0);
    rows.iter()
        .map(|(l, r)| format!("{l:width$}   {r}\n"))
        .collect()
}

/// The stand-in `keadm`: checks command lines exactly as the real keadm of
/// `version` would and, on a test host, joins and resets the node the way
/// the real one does (research §2.1, §2.5), pulling the
/// installation-package image over HTTP from the site mirror instead of
/// through containerd. The header of [`KEADM_SH`] lists the differences.
fn keadm_script(version: &str) -> Result<String> {
    let flags = keadm::flags_for(version)?;
    let mut required = String::new();
    for name in keadm::JOIN_REQUIRED {
        let v = sh_var(name);
        required.push_str(&format!(
            "\t[ -n \"$seen_{v}\" ] || missing=\"${{missing:+$missing, }}\\\"{name}\\\"\"\n"
        ));
    }
    let usage = format!(
        "keadm {version} (edgeferry SAMPLE stand-in, not KubeEdge)\n\n\
         Usage:\n  keadm version\n  keadm join --cloudcore-ipport=HOST:PORT --kubeedge-version=VERSION [flags]\n  keadm reset edge [--force] [flags]\n\n\
         Join flags:\n{}\nReset edge flags:\n{}",
        usage_lines(flags.join),
        usage_lines(flags.reset_edge)
    );
    // The version is checked by flags_for and the rest is ours, so no
    // replacement can bring in another placeholder.
    Ok(KEADM_SH
        .replace("@VERSION@", version)
        .replace("@ROOT_ENV@", SAMPLE_ROOT_ENV)
        .replace("@WAIT_ENV@", STANDIN_WAIT_ENV)
        .replace("@STATE_DIR@", STANDIN_STATE_DIR)
        .replace("@JOIN_PARSER@", &sh_parser("join", flags.join))
        .replace("@RESET_PARSER@", &sh_parser("reset_edge", flags.reset_edge))
        .replace("@REQUIRED@", &required)
        .replace("@USAGE@", &usage))
}

/// The stand-in keadm, with `@NAME@` placeholders that [`keadm_script`]
/// fills in. POSIX sh plus coreutils, sed, grep, tar, gzip and curl (or
/// wget), so that it runs under dash and busybox alike.
const KEADM_SH: &str = r##"#!/bin/sh
# edgeferry SAMPLE stand-in for keadm @VERSION@ — not KubeEdge
#
# Written by edgeferry for tests and demos, where no KubeEdge release can be
# downloaded. It checks command lines against the flags of the real keadm
# @VERSION@, and on a test host `keadm join` and `keadm reset edge` do what
# the real ones do, with the same step lines and messages, except that:
#   - the installation-package image is fetched the way containerd would
#     fetch it through the mirror that /etc/containerd/certs.d/<registry>/
#     hosts.toml names, over HTTP with curl (or wget), and only
#     /usr/local/bin/edgecore is taken out of it: there is no CRI, no
#     sandbox and no copy container;
#   - the node-name check only connects to cloudcore's certificate port;
#   - without /run/systemd/system no unit file is written and edgecore is
#     started in the background;
#   - the edgecore it starts is the stand-in from the same sample set.
# `keadm reset edge` stops edgecore and removes /etc/kubeedge/,
# /var/log/kubeedge/, /var/lib/kubeedge/ and /var/lib/edged (a mount point
# is emptied instead), but not /usr/local/bin/edgecore, as the real one.
#
# Environment:
#   @ROOT_ENV@   put in front of every host path, so that unit tests
#                can run this in a temporary directory; edgecore is then
#                found through its pid file (@STATE_DIR@/edgecore.pid)
#                instead of pidof
#   @WAIT_ENV@   seconds join waits for edgecore's TLS files (default 300,
#                as the real keadm's wait.Poll(10s, 300s))
#
# Fault injection: a test harness writes these files on a host.
#   @STATE_DIR@/fault          "fail": join exits 1 right after copying
#                              edgecore out of the image; "hang": join
#                              sleeps there until it is killed
#   @STATE_DIR@/join-seconds   a whole number N: join sleeps N seconds at
#                              that point (models how long a real join
#                              takes)
set -u

KEADM_VERSION='@VERSION@'
ROOT=${@ROOT_ENV@:-}
STANDIN="keadm $KEADM_VERSION (edgeferry SAMPLE stand-in, not KubeEdge)"
STATE=$ROOT@STATE_DIR@
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
@USAGE@USAGE
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
# keadm runs `pidof edgecore`. With @ROOT_ENV@ set (unit tests) the PID
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

# reachable HOST:PORT: real keadm GETs https://<host>:<certport>/node/<name>
# and goes on only when cloudcore answers 404. Test sites have no
# cloudcore, only a stand-in listener on the certificate port that accepts
# connections and closes them, so the stand-in only checks that a TCP
# connection to that port succeeds. On failure it says why, in the words
# of Go's net package.
reachable() {
	if command -v curl >/dev/null 2>&1; then
		# Plain http://: curl forgets time_connect when a TLS handshake fails.
		connect=$(curl -s -g --noproxy '*' -o /dev/null --connect-timeout 5 -m 5 -w '%{time_connect}' "http://$1/" 2>/dev/null)
		rc=$?
		# time_connect stays zero unless the TCP connection was made.
		case $connect in *[1-9]*) return 0 ;; esac
		case $rc in
		6) echo "lookup: no such host" ;;
		7) echo "connect: connection refused" ;;
		28) echo "i/o timeout" ;;
		*) echo "connect failed (curl exit code $rc)" ;;
		esac
		return 1
	fi
	if command -v wget >/dev/null 2>&1; then
		out=$(timeout 10 env -u http_proxy -u HTTP_PROXY wget -O /dev/null "http://$1/" 2>&1)
		case $out in
		*[Rr]efused*) echo "connect: connection refused" ;;
		*"timed out"* | *[Tt]imeout* | *unreachable*) echo "i/o timeout" ;;
		*resolve* | *"bad address"*) echo "lookup: no such host" ;;
		*) return 0 ;;
		esac
		return 1
	fi
	note "neither curl nor wget is installed: the node-name check is skipped" >&2
}

# http_get URL FILE ACCEPT: GETs URL into FILE; on failure says why.
# Proxies are bypassed, since containerd reaches the site mirror directly.
http_get() {
	if command -v curl >/dev/null 2>&1; then
		code=$(curl -sS -g --noproxy '*' --connect-timeout 10 -y 60 -Y 1 -H "Accept: $3" -o "$2" -w '%{http_code}' "$1" 2>"$tmp/http.err") || {
			echo "GET $1: $(tr '\n' ' ' <"$tmp/http.err")"
			return 1
		}
		[ "$code" = 200 ] || {
			echo "GET $1: HTTP $code $(head -c 300 "$2" 2>/dev/null | tr '\n' ' ')"
			return 1
		}
	elif command -v wget >/dev/null 2>&1; then
		env -u http_proxy -u https_proxy -u HTTP_PROXY -u HTTPS_PROXY wget -q -O "$2" --header "Accept: $3" "$1" 2>"$tmp/http.err" || {
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

# The mirror a hosts.toml sends pulls to: its first [host."..."], else its
# server when that is plain HTTP.
mirror_of() {
	url=$(sed -n 's/^[[:space:]]*\[host\."\([^"]*\)"\].*$/\1/p' "$1" | head -n 1)
	[ -n "$url" ] || url=$(sed -n 's/^[[:space:]]*server[[:space:]]*=[[:space:]]*"\(http:\/\/[^"]*\)".*$/\1/p' "$1" | head -n 1)
	echo "${url%/}"
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
	mirror=
	for dir in "$registry" _default; do
		[ -f "$certs/$dir/hosts.toml" ] || continue
		mirror=$(mirror_of "$certs/$dir/hosts.toml")
		[ -z "$mirror" ] || break
	done
	if [ -z "$mirror" ]; then
		upstream=$registry
		[ "$registry" != docker.io ] || upstream=registry-1.docker.io
		fail "failed to pull image \"$image\": no mirror for $registry in /etc/containerd/certs.d/$registry/hosts.toml, so containerd would go to https://$upstream, which an isolated site cannot reach (real keadm fails there, or after 20 s with DeadlineExceeded when the sandbox image is missing too)"
	fi
	# containerd asks a mirror for another registry's images with ?ns=.
	authority=${mirror#*://}
	authority=${authority%%/*}
	query="?ns=$registry"
	[ "$authority" != "$registry" ] || query=
	base=$mirror/v2/$repo
	note "pulling $image from $mirror (certs.d/$dir/hosts.toml) for linux/$arch${variant:+/$variant}"

	why=$(http_get "$base/manifests/$tag$query" "$tmp/top.json" "$ACCEPT") || fail "failed to pull image \"$image\": $why"
	manifest=$(json_flat <"$tmp/top.json")
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
		why=$(http_get "$base/manifests/$digest$query" "$tmp/manifest.json" "$ACCEPT") || fail "failed to pull image \"$image\": $why"
		digest_matches "$tmp/manifest.json" "$digest" || fail "failed to pull image \"$image\": manifest $digest: digest mismatch: the mirror sent other bytes"
		manifest=$(json_flat <"$tmp/manifest.json")
		;;
	esac
	case $manifest in
	*'"layers":['*) ;;
	*) fail "failed to pull image \"$image\": $base/manifests/$tag is neither an image index nor an image manifest" ;;
	esac
	layer_digests=$(printf '%s\n' "$manifest" | sed -n 's/.*"layers":\[\([^]]*\)\].*/\1/p' | tr '{},' '\n\n\n' | json_field digest)
	[ -n "$layer_digests" ] || fail "failed to pull image \"$image\": its manifest lists no layers"
	layer_count=0
	for digest in $layer_digests; do
		valid_digest "$digest" || fail "failed to pull image \"$image\": invalid layer digest \"$digest\""
		layer_count=$((layer_count + 1))
		why=$(http_get "$base/blobs/$digest$query" "$tmp/layer$layer_count" '*/*') || fail "failed to pull image \"$image\": $why"
		digest_matches "$tmp/layer$layer_count" "$digest" || fail "failed to pull image \"$image\": layer $digest: digest mismatch: the mirror sent other bytes"
	done
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
	bin=$ROOT/usr/local/bin
	part=$bin/.edgecore.keadm-standin.$$
	mkdir -p "$bin" && cp "$tmp/rootfs/usr/local/bin/edgecore" "$part" && chmod 755 "$part" && mv -f "$part" "$bin/edgecore" || {
		rm -f "$part"
		fail "failed to copy edgecore to /usr/local/bin/edgecore"
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

# The fields `keadm join` sets (research §1.1), not the full default
# configuration of the real edgecore.
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
	wait_limit=${@WAIT_ENV@:-300}
	case $wait_limit in
	'' | *[!0-9]*) fail "@WAIT_ENV@=$wait_limit is not a whole number of seconds" ;;
	esac
	# util.EdgeSet and reference.ParseAnyReference (research §2.3): the
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
	url="https://$host:$certport/node/$node"
	why=$(reachable "$host:$certport") || fail "error making request: Get \"$url\": dial tcp $host:$certport: $why"

	step "Create the necessary directories"
	mkdir -p "$ROOT/etc/kubeedge/config" "$ROOT/var/log/kubeedge" "$ROOT/var/lib/kubeedge" ||
		fail "failed to create the directories /etc/kubeedge/config, /var/log/kubeedge and /var/lib/kubeedge"

	step "Pull Images"
	pull_image

	step "Copy resources from the image to the management directory"
	copy_edgecore
	standin_faults

	step "Generate systemd service file"
	systemd=
	# Real keadm writes the unit whenever systemctl is in PATH. Test hosts
	# have systemctl but no systemd, and no private, writable /etc/systemd,
	# so the stand-in asks what util.HasSystemd asks: is /run/systemd/system
	# a directory?
	if [ -d "$ROOT/run/systemd/system" ]; then
		systemd=1
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
	if [ -n "$systemd" ]; then
		echo "sudo systemctl daemon-reload && sudo systemctl enable edgecore && sudo systemctl start edgecore"
		sudo systemctl daemon-reload && sudo systemctl enable edgecore && sudo systemctl start edgecore ||
			fail "failed to run edgecore with systemd: exit status $?"
	else
		echo "/usr/local/bin/edgecore > /var/log/kubeedge/edgecore.log 2>&1 &"
		# A new session and no inherited descriptors: edgecore has to outlive
		# the SSH session that runs keadm.
		if command -v setsid >/dev/null 2>&1; then
			setsid "$bin/edgecore" >"$ROOT/var/log/kubeedge/edgecore.log" 2>&1 </dev/null &
		else
			nohup "$bin/edgecore" >"$ROOT/var/log/kubeedge/edgecore.log" 2>&1 </dev/null &
		fi
	fi

	wait_for_certs || fail "edge node join failed: timed out waiting for the condition"
	rm -f "$bootstrap"
	bootstrap=
	echo "Install Complete!"

	if [ -n "$opt_post_run" ]; then
		run_script post "$opt_post_run" || echo "failed to execute the post-run script $opt_post_run: exit status $?"
	fi
}

@RESET_PARSER@
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
reset)
	[ "${2-}" = edge ] || {
		usage >&2
		exit 1
	}
	shift 2
	reset_edge_defaults
	reset_edge_parse "$@"
	do_reset_edge
	;;
help | -h | --help) usage ;;
*)
	usage >&2
	exit 1
	;;
esac
"##;

/// The stand-in `edgecore`, shipped in the installation-package image and
/// the kubeedge tarball: started by the stand-in keadm, it writes what the
/// real keadm waits for and keeps running.
fn edgecore_script(version: &str) -> String {
    EDGECORE_SH
        .replace("@VERSION@", version)
        .replace("@ROOT_ENV@", SAMPLE_ROOT_ENV)
        .replace("@STATE_DIR@", STANDIN_STATE_DIR)
}

const EDGECORE_SH: &str = r##"#!/bin/sh
# edgeferry SAMPLE stand-in for edgecore @VERSION@ — not KubeEdge
#
# Written by edgeferry for tests and demos. Started with no arguments on a
# node that the stand-in `keadm join` prepared, it does what the real keadm
# waits for: it writes the three edgeHub TLS files (labelled stand-in text
# in PEM armour, not certificates; the real edgecore gets them from
# cloudcore with the join token) and keeps running, so that
# `pidof edgecore` finds it. It writes its pid to @STATE_DIR@/edgecore.pid
# and stops on SIGTERM. @ROOT_ENV@, if set, is put in front of every host
# path.
set -u

ROOT=${@ROOT_ENV@:-}
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
	link=$ROOT@STATE_DIR@/shell/edgecore
	for shell in /bin/dash /bin/bash; do
		# Not busybox, which would take "edgecore" for an applet name.
		[ -x "$shell" ] && mkdir -p "${link%/*}" && ln -sf "$shell" "$link" || continue
		export EDGEFERRY_STANDIN_EDGECORE_RELAUNCHED=1
		exec "$link" "$0"
	done
fi
unset EDGEFERRY_STANDIN_EDGECORE_RELAUNCHED
echo "$STANDIN: starting with /etc/kubeedge/config/edgecore.yaml"

pidfile=$ROOT@STATE_DIR@/edgecore.pid
mkdir -p "${pidfile%/*}" && echo $$ >"$pidfile" || {
	echo "$STANDIN: cannot write @STATE_DIR@/edgecore.pid" >&2
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
"##;

/// Stand-in for a KubeEdge daemon such as `cloudcore`: it reports its
/// version and refuses to run.
fn component_script(name: &str, version: &str) -> String {
    format!(
        r#"#!/bin/sh
# edgeferry SAMPLE stand-in for {name} {version} — not KubeEdge
#
# Written by edgeferry for tests and demos; it can only report its version.
case ${{1-}} in
--version | --version=true | -version)
	echo "KubeEdge {version} ({name}: edgeferry SAMPLE stand-in, not KubeEdge)"
	;;
*)
	echo "{name} {version} is an edgeferry SAMPLE stand-in and cannot run; only --version works" >&2
	exit 1
	;;
esac
"#
    )
}

fn pause_script(reference: &str) -> String {
    format!(
        "#!/bin/sh\n# edgeferry SAMPLE stand-in for {reference} — not the real pause\n\
         exec /bin/busybox sleep 2147483647\n"
    )
}

fn entrypoint_script(reference: &str) -> String {
    format!(
        "#!/bin/sh\n# edgeferry SAMPLE stand-in for {reference} — not the real image\n\
         echo 'edgeferry SAMPLE stand-in for {reference}: nothing to run'\n"
    )
}

// ---------------------------------------------------------------------------
// reproducible tar and gzip

#[derive(Clone, Debug)]
enum Node {
    Dir,
    File { mode: u32, data: Vec<u8> },
    Symlink(String),
}

/// Entries by path; parents get directory entries on insertion, and the
/// `BTreeMap` order puts each directory before its contents.
#[derive(Default)]
struct Tree(BTreeMap<String, Node>);

impl Tree {
    fn add(&mut self, path: &str, node: Node) {
        let trimmed = path.trim_end_matches('/');
        let mut at = 0;
        while let Some(i) = trimmed[at..].find('/') {
            at += i + 1;
            self.0.insert(trimmed[..at].to_string(), Node::Dir);
        }
        let key = match node {
            Node::Dir => format!("{trimmed}/"),
            _ => trimmed.to_string(),
        };
        self.0.insert(key, node);
    }

    fn file(&mut self, path: &str, mode: u32, data: impl Into<Vec<u8>>) {
        self.add(
            path,
            Node::File {
                mode,
                data: data.into(),
            },
        );
    }

    fn exe(&mut self, path: &str, data: impl Into<Vec<u8>>) {
        self.file(path, 0o755, data);
    }

    /// Uncompressed tar. GNU headers match upstream's `tar -czvf`; ustar is
    /// what image layers conventionally use.
    fn to_tar(&self, gnu: bool) -> Result<Vec<u8>> {
        let mut builder = tar::Builder::new(Vec::new());
        for (path, node) in &self.0 {
            let mut header = if gnu {
                tar::Header::new_gnu()
            } else {
                tar::Header::new_ustar()
            };
            header.set_mtime(MTIME);
            header.set_uid(0);
            header.set_gid(0);
            header.set_username("root")?;
            header.set_groupname("root")?;
            header.set_size(0);
            let appended = match node {
                Node::Dir => {
                    header.set_entry_type(tar::EntryType::Directory);
                    header.set_mode(0o755);
                    builder.append_data(&mut header, path, std::io::empty())
                }
                Node::File { mode, data } => {
                    header.set_entry_type(tar::EntryType::Regular);
                    header.set_mode(*mode);
                    header.set_size(data.len() as u64);
                    builder.append_data(&mut header, path, data.as_slice())
                }
                Node::Symlink(target) => {
                    header.set_entry_type(tar::EntryType::Symlink);
                    header.set_mode(0o777);
                    builder.append_link(&mut header, path, target)
                }
            };
            appended.with_context(|| format!("cannot add {path} to a sample tar"))?;
        }
        Ok(builder.into_inner()?)
    }
}

/// gzip with no file name and mtime 0 in the header.
fn gzip(data: &[u8]) -> Result<Vec<u8>> {
    let mut encoder = GzBuilder::new()
        .mtime(0)
        .write(Vec::new(), Compression::new(GZIP_LEVEL));
    encoder.write_all(data)?;
    Ok(encoder.finish()?)
}

fn write_file(path: &Path, data: &[u8]) -> Result<()> {
    fs::write(path, data).with_context(|| {
        format!(
            "cannot write {}: check that the directory is writable",
            path.display()
        )
    })
}

fn create_dir(path: &Path) -> Result<()> {
    fs::create_dir_all(path).with_context(|| {
        format!(
            "cannot create {}: check that the parent is writable",
            path.display()
        )
    })
}

// ---------------------------------------------------------------------------
// release assets

fn write_release_assets(files: &Path, version: &str) -> Result<()> {
    let keadm = keadm_script(version)?;
    let version_file = format!("{version}\n");
    for arch in Arch::ALL {
        let keadm_name = format!("keadm-{version}-linux-{}", arch.as_str());
        let mut tree = Tree::default();
        tree.exe(&format!("{keadm_name}/keadm/keadm"), keadm.as_bytes());
        tree.file(
            &format!("{keadm_name}/version"),
            0o644,
            version_file.as_bytes(),
        );
        write_asset(files, &keadm_name, &tree)?;

        let kubeedge_name = format!("kubeedge-{version}-linux-{}", arch.as_str());
        let mut tree = Tree::default();
        for (path, component) in [
            ("cloud/admission/admission", "admission"),
            ("cloud/cloudcore/cloudcore", "cloudcore"),
            ("cloud/csidriver/csidriver", "csidriver"),
            ("cloud/iptablesmanager/iptablesmanager", "iptablesmanager"),
            (
                "cloud/controllermanager/controllermanager",
                "controllermanager",
            ),
        ] {
            tree.exe(
                &format!("{kubeedge_name}/{path}"),
                component_script(component, version),
            );
        }
        tree.exe(
            &format!("{kubeedge_name}/edge/edgecore"),
            edgecore_script(version),
        );
        tree.file(
            &format!("{kubeedge_name}/version"),
            0o644,
            version_file.as_bytes(),
        );
        write_asset(files, &kubeedge_name, &tree)?;
    }
    Ok(())
}

fn write_asset(files: &Path, name: &str, tree: &Tree) -> Result<()> {
    let tarball = gzip(&tree.to_tar(true)?)?;
    let asset = format!("{name}.tar.gz");
    write_file(&files.join(&asset), &tarball)?;
    let checksum = format!("{:x}\n", Sha512::digest(&tarball));
    write_file(
        &files.join(format!("checksum_{asset}.txt")),
        checksum.as_bytes(),
    )
}

// ---------------------------------------------------------------------------
// OCI image layouts

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Descriptor {
    media_type: &'static str,
    digest: String,
    size: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    platform: Option<Platform>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    annotations: BTreeMap<String, String>,
}

#[derive(Serialize)]
struct Platform {
    architecture: &'static str,
    os: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    variant: Option<&'static str>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Index {
    schema_version: u32,
    media_type: &'static str,
    manifests: Vec<Descriptor>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    annotations: BTreeMap<String, String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Manifest {
    schema_version: u32,
    media_type: &'static str,
    config: Descriptor,
    layers: Vec<Descriptor>,
    annotations: BTreeMap<String, String>,
}

#[derive(Serialize)]
struct ImageConfig {
    created: String,
    architecture: &'static str,
    os: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    variant: Option<&'static str>,
    config: RunConfig,
    rootfs: RootFs,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct RunConfig {
    env: Vec<String>,
    cmd: Vec<String>,
    #[serde(skip_serializing_if = "String::is_empty")]
    working_dir: String,
    labels: BTreeMap<String, String>,
}

#[derive(Serialize)]
struct RootFs {
    #[serde(rename = "type")]
    kind: &'static str,
    diff_ids: Vec<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct OciLayout {
    image_layout_version: &'static str,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ImageKind {
    InstallationPackage,
    Pause,
    /// mosquitto and the extra workload images
    Workload,
}

impl ImageKind {
    fn carries_busybox(self) -> bool {
        matches!(self, ImageKind::InstallationPackage | ImageKind::Pause)
    }
}

struct SampleImage<'a> {
    dir_name: String,
    reference: &'a str,
    kind: ImageKind,
}

/// Blobs of one OCI image layout, stored under their sha256.
struct Blobs {
    dir: PathBuf,
}

impl Blobs {
    fn put(&self, media_type: &'static str, data: &[u8]) -> Result<Descriptor> {
        let hex = sha256_hex(data);
        write_file(&self.dir.join(&hex), data)?;
        Ok(Descriptor {
            media_type,
            digest: format!("sha256:{hex}"),
            size: data.len() as u64,
            platform: None,
            annotations: BTreeMap::new(),
        })
    }

    fn put_json(&self, media_type: &'static str, value: &impl Serialize) -> Result<Descriptor> {
        self.put(media_type, &serde_json::to_vec(value)?)
    }
}

fn platform_name(arch: Arch) -> String {
    match arch.oci_platform() {
        (a, Some(v)) => format!("linux/{a}/{v}"),
        (a, None) => format!("linux/{a}"),
    }
}

fn description(image: &SampleImage, platform: Option<&str>) -> String {
    let what = match platform {
        Some(p) => format!("{} ({p})", image.reference),
        None => image.reference.to_string(),
    };
    let mut text = format!("edgeferry SAMPLE stand-in for {what}, not the real image.");
    if image.kind.carries_busybox() {
        text.push_str(
            " Images of every arch carry the build host's busybox, since tests execute only amd64.",
        );
    }
    text
}

fn sample_annotations(text: String) -> BTreeMap<String, String> {
    BTreeMap::from([
        (ANNOTATION_DESCRIPTION.to_string(), text),
        (SAMPLE_MARKER.to_string(), "true".to_string()),
    ])
}

fn layer_tree(image: &SampleImage, arch: Arch, version: &str, busybox: &[u8]) -> Result<Tree> {
    let mut tree = Tree::default();
    // Makes each arch's layer distinct, as in a real multi-arch image, so a
    // consumer that picks the wrong platform is caught.
    tree.file(
        "edgeferry-sample.txt",
        0o644,
        format!("{}\n", description(image, Some(&platform_name(arch)))),
    );
    match image.kind {
        ImageKind::InstallationPackage => {
            tree.exe("bin/busybox", busybox);
            // keadm's copy step runs `/bin/sh -c "sleep infinity"` and `cp`.
            for applet in ["cat", "cp", "sh", "sleep"] {
                tree.add(&format!("bin/{applet}"), Node::Symlink("busybox".into()));
            }
            tree.add("etc/kubeedge", Node::Dir);
            tree.exe("usr/local/bin/edgecore", edgecore_script(version));
            tree.exe("usr/local/bin/keadm", keadm_script(version)?);
        }
        ImageKind::Pause => {
            tree.exe("bin/busybox", busybox);
            tree.add("bin/sh", Node::Symlink("busybox".into()));
            tree.exe("pause", pause_script(image.reference));
        }
        ImageKind::Workload => {
            tree.exe("entrypoint", entrypoint_script(image.reference));
        }
    }
    Ok(tree)
}

fn run_config(image: &SampleImage, arch: Arch) -> RunConfig {
    let (cmd, working_dir): (&[&str], &str) = match image.kind {
        ImageKind::InstallationPackage => (&["/bin/sh"], "/etc/kubeedge"),
        ImageKind::Pause => (&["/pause"], ""),
        ImageKind::Workload => (&["/entrypoint"], ""),
    };
    let labels = sample_annotations(description(image, Some(&platform_name(arch))));
    RunConfig {
        env: vec!["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_string()],
        cmd: cmd.iter().map(|s| s.to_string()).collect(),
        working_dir: working_dir.to_string(),
        labels,
    }
}

fn write_image(images: &Path, image: &SampleImage, version: &str, busybox: &[u8]) -> Result<()> {
    let root = images.join(&image.dir_name);
    let blobs = Blobs {
        dir: root.join("blobs").join("sha256"),
    };
    create_dir(&blobs.dir)?;

    let mut manifests = Vec::new();
    for arch in Arch::ALL {
        let (architecture, variant) = arch.oci_platform();
        let layer_tar = layer_tree(image, arch, version, busybox)?.to_tar(false)?;
        let layer = blobs.put(MEDIA_LAYER_GZIP, &gzip(&layer_tar)?)?;
        let config = ImageConfig {
            created: rfc3339_utc(MTIME),
            architecture,
            os: "linux",
            variant,
            config: run_config(image, arch),
            rootfs: RootFs {
                kind: "layers",
                diff_ids: vec![format!("sha256:{}", sha256_hex(&layer_tar))],
            },
        };
        let manifest = Manifest {
            schema_version: 2,
            media_type: MEDIA_MANIFEST,
            config: blobs.put_json(MEDIA_CONFIG, &config)?,
            layers: vec![layer],
            annotations: sample_annotations(description(image, Some(&platform_name(arch)))),
        };
        let mut descriptor = blobs.put_json(MEDIA_MANIFEST, &manifest)?;
        descriptor.platform = Some(Platform {
            architecture,
            os: "linux",
            variant,
        });
        manifests.push(descriptor);
    }

    let index = Index {
        schema_version: 2,
        media_type: MEDIA_INDEX,
        manifests,
        annotations: sample_annotations(description(image, None)),
    };
    let mut top = blobs.put_json(MEDIA_INDEX, &index)?;
    top.annotations = BTreeMap::from([
        (
            ANNOTATION_CONTAINERD_NAME.to_string(),
            image.reference.to_string(),
        ),
        (ANNOTATION_REF_NAME.to_string(), image.reference.to_string()),
    ]);
    let layout_index = Index {
        schema_version: 2,
        media_type: MEDIA_INDEX,
        manifests: vec![top],
        annotations: BTreeMap::new(),
    };
    write_file(
        &root.join("index.json"),
        &serde_json::to_vec(&layout_index)?,
    )?;
    write_file(
        &root.join("oci-layout"),
        &serde_json::to_vec(&OciLayout {
            image_layout_version: "1.0.0",
        })?,
    )
}

/// Writes a complete `--from` artifact directory (`docs/artifact-dir.md`)
/// for all three arches into `dir`, creating it. The same spec on the same
/// host gives byte-identical files.
pub fn write_sample_dir(dir: &Path, spec: &SampleSpec) -> Result<()> {
    let version = spec.kubeedge_version.as_str();
    keadm::flags_for(version)?;
    let mut images = vec![
        SampleImage {
            dir_name: "installation-package".into(),
            reference: &spec.installation_package_image,
            kind: ImageKind::InstallationPackage,
        },
        SampleImage {
            dir_name: "pause".into(),
            reference: &spec.pause_image,
            kind: ImageKind::Pause,
        },
        SampleImage {
            dir_name: "mosquitto".into(),
            reference: &spec.mosquitto_image,
            kind: ImageKind::Workload,
        },
    ];
    for (i, reference) in spec.extra_images.iter().enumerate() {
        images.push(SampleImage {
            dir_name: format!("extra-{}", i + 1),
            reference,
            kind: ImageKind::Workload,
        });
    }
    for image in &images {
        let r = image.reference;
        if r.is_empty() || r.chars().any(|c| c.is_whitespace() || c.is_control()) {
            bail!(
                "sample image reference {r:?} for images/{} is not a reference: pass a full one such as docker.io/library/busybox:1.36",
                image.dir_name
            );
        }
    }
    let (_, busybox) = load_busybox()?;

    let files = dir.join("files");
    create_dir(&files)?;
    write_release_assets(&files, version)?;
    let images_dir = dir.join("images");
    for image in &images {
        write_image(&images_dir, image, version, &busybox)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::process::{Command, Output, Stdio};

    use flate2::read::GzDecoder;
    use serde_json::Value;

    const V: &str = "v1.23.1";

    fn spec() -> SampleSpec {
        let mut spec = SampleSpec::for_version(V);
        spec.extra_images = vec!["docker.io/library/nginx:1.27".into()];
        spec
    }

    fn sample_dir() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        write_sample_dir(dir.path(), &spec()).unwrap();
        dir
    }

    fn all_files(root: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
        walkdir::WalkDir::new(root)
            .into_iter()
            .map(Result::unwrap)
            .filter(|e| e.file_type().is_file())
            .map(|e| {
                let rel = e.path().strip_prefix(root).unwrap().to_path_buf();
                (rel, fs::read(e.path()).unwrap())
            })
            .collect()
    }

    /// (path, entry type, mode, contents or link target) of every entry.
    fn tar_entries(tar_bytes: &[u8]) -> Vec<(String, tar::EntryType, u32, Vec<u8>)> {
        let mut archive = tar::Archive::new(tar_bytes);
        archive
            .entries()
            .unwrap()
            .map(|e| {
                let mut e = e.unwrap();
                let path = String::from_utf8(e.path_bytes().to_vec()).unwrap();
                let header = e.header().clone();
                assert_eq!(header.mtime().unwrap(), MTIME, "{path}");
                assert_eq!(
                    (header.uid().unwrap(), header.gid().unwrap()),
                    (0, 0),
                    "{path}"
                );
                let mut data = Vec::new();
                if header.entry_type() == tar::EntryType::Symlink {
                    data = e.link_name_bytes().unwrap().to_vec();
                } else {
                    e.read_to_end(&mut data).unwrap();
                }
                (path, header.entry_type(), header.mode().unwrap(), data)
            })
            .collect()
    }

    fn gunzip(data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        GzDecoder::new(data).read_to_end(&mut out).unwrap();
        out
    }

    fn json(path: &Path) -> Value {
        serde_json::from_slice(&fs::read(path).unwrap()).unwrap()
    }

    fn blob(image: &Path, digest: &Value) -> Vec<u8> {
        let hex = digest.as_str().unwrap().strip_prefix("sha256:").unwrap();
        let data = fs::read(image.join("blobs/sha256").join(hex)).unwrap();
        assert_eq!(sha256_hex(&data), hex);
        data
    }

    #[test]
    fn same_spec_gives_byte_identical_dirs() {
        let (a, b) = (sample_dir(), sample_dir());
        let (fa, fb) = (all_files(a.path()), all_files(b.path()));
        assert_eq!(fa.keys().collect::<Vec<_>>(), fb.keys().collect::<Vec<_>>());
        for (path, data) in &fa {
            assert!(data == &fb[path], "{} differs between runs", path.display());
        }
        // 4 release assets and their checksums per arch, 4 images.
        assert_eq!(fa.keys().filter(|p| p.starts_with("files")).count(), 12);
        for image in ["installation-package", "pause", "mosquitto", "extra-1"] {
            assert!(fa.contains_key(&Path::new("images").join(image).join("index.json")));
        }
    }

    #[test]
    fn checksum_files_hold_sha512_of_tarballs() {
        let dir = sample_dir();
        let files = dir.path().join("files");
        for arch in Arch::ALL {
            for what in ["keadm", "kubeedge"] {
                let asset = format!("{what}-{V}-linux-{arch}.tar.gz", arch = arch.as_str());
                let tarball = fs::read(files.join(&asset)).unwrap();
                let sum = fs::read_to_string(files.join(format!("checksum_{asset}.txt"))).unwrap();
                assert_eq!(sum, format!("{:x}\n", Sha512::digest(&tarball)));
                assert_eq!(sum.len(), 129);
            }
        }
    }

    #[test]
    fn tarballs_have_upstream_layout() {
        let dir = sample_dir();
        let files = dir.path().join("files");
        for arch in Arch::ALL {
            let top = format!("keadm-{V}-linux-{}", arch.as_str());
            let tarball = fs::read(files.join(format!("{top}.tar.gz"))).unwrap();
            assert_eq!(&tarball[4..8], &[0, 0, 0, 0], "gzip mtime must be 0");
            let entries = tar_entries(&gunzip(&tarball));
            let paths: Vec<_> = entries.iter().map(|e| e.0.as_str()).collect();
            let want = [
                format!("{top}/"),
                format!("{top}/keadm/"),
                format!("{top}/keadm/keadm"),
                format!("{top}/version"),
            ];
            assert_eq!(paths, want);
            assert_eq!(entries[2].2, 0o755);
            assert!(entries[2].3.starts_with(
                format!("#!/bin/sh\n# edgeferry SAMPLE stand-in for keadm {V} — not KubeEdge\n")
                    .as_bytes()
            ));
            assert_eq!(
                (entries[3].2, entries[3].3.as_slice()),
                (0o644, b"v1.23.1\n".as_slice())
            );

            let top = format!("kubeedge-{V}-linux-{}", arch.as_str());
            let tarball = fs::read(files.join(format!("{top}.tar.gz"))).unwrap();
            let entries = tar_entries(&gunzip(&tarball));
            let paths: Vec<_> = entries.iter().map(|e| e.0.clone()).collect();
            assert!(paths.iter().all(|p| p.starts_with(&format!("{top}/"))));
            for want in [
                "edge/edgecore",
                "cloud/cloudcore/cloudcore",
                "cloud/admission/admission",
                "cloud/csidriver/csidriver",
                "cloud/iptablesmanager/iptablesmanager",
                "cloud/controllermanager/controllermanager",
                "version",
            ] {
                assert!(paths.contains(&format!("{top}/{want}")), "{want} missing");
            }
        }
    }

    #[test]
    fn images_are_multi_arch_sample_layouts() {
        let dir = sample_dir();
        let spec = spec();
        for (name, reference) in [
            ("installation-package", &spec.installation_package_image),
            ("pause", &spec.pause_image),
            ("mosquitto", &spec.mosquitto_image),
            ("extra-1", &spec.extra_images[0]),
        ] {
            let image = dir.path().join("images").join(name);
            assert_eq!(
                fs::read_to_string(image.join("oci-layout")).unwrap(),
                r#"{"imageLayoutVersion":"1.0.0"}"#
            );
            let layout = json(&image.join("index.json"));
            let tops = layout["manifests"].as_array().unwrap();
            assert_eq!(tops.len(), 1, "{name}");
            let top = &tops[0];
            assert_eq!(top["mediaType"], MEDIA_INDEX);
            assert_eq!(
                top["annotations"][ANNOTATION_CONTAINERD_NAME],
                reference.as_str()
            );
            assert_eq!(top["annotations"][ANNOTATION_REF_NAME], reference.as_str());

            let index: Value = serde_json::from_slice(&blob(&image, &top["digest"])).unwrap();
            assert_eq!(index["annotations"][SAMPLE_MARKER], "true");
            let mut platforms = Vec::new();
            for m in index["manifests"].as_array().unwrap() {
                let p = &m["platform"];
                platforms.push(format!(
                    "{}/{}{}",
                    p["os"].as_str().unwrap(),
                    p["architecture"].as_str().unwrap(),
                    p["variant"]
                        .as_str()
                        .map(|v| format!("/{v}"))
                        .unwrap_or_default()
                ));
                let manifest: Value = serde_json::from_slice(&blob(&image, &m["digest"])).unwrap();
                assert_eq!(manifest["mediaType"], MEDIA_MANIFEST);
                assert_eq!(manifest["annotations"][SAMPLE_MARKER], "true");
                let config: Value =
                    serde_json::from_slice(&blob(&image, &manifest["config"]["digest"])).unwrap();
                assert_eq!(config["architecture"], p["architecture"]);
                assert_eq!(config["variant"], p["variant"]);
                let labels = &config["config"]["Labels"];
                assert_eq!(labels[SAMPLE_MARKER], "true");
                assert!(labels[ANNOTATION_DESCRIPTION]
                    .as_str()
                    .unwrap()
                    .contains("not the real image"));
                let layers = manifest["layers"].as_array().unwrap();
                assert_eq!(layers.len(), 1);
                assert_eq!(layers[0]["mediaType"], MEDIA_LAYER_GZIP);
                let layer_tar = gunzip(&blob(&image, &layers[0]["digest"]));
                assert_eq!(
                    config["rootfs"]["diff_ids"][0],
                    format!("sha256:{}", sha256_hex(&layer_tar))
                );
                let entries = tar_entries(&layer_tar);
                let find = |path: &str| entries.iter().find(|e| e.0 == path).cloned();
                if name == "installation-package" {
                    for applet in ["sh", "sleep", "cp", "cat"] {
                        let e = find(&format!("bin/{applet}")).unwrap();
                        assert_eq!(
                            (e.1, e.3.as_slice()),
                            (tar::EntryType::Symlink, b"busybox".as_slice())
                        );
                    }
                    assert_eq!(find("bin/busybox").unwrap().2, 0o755);
                    assert_eq!(find("etc/kubeedge/").unwrap().1, tar::EntryType::Directory);
                    assert!(find("usr/local/bin/edgecore").is_some());
                    assert!(find("usr/local/bin/keadm").is_some());
                }
                if name == "pause" {
                    assert!(find("bin/busybox").is_some());
                    assert_eq!(config["config"]["Cmd"][0], "/pause");
                }
            }
            assert_eq!(
                platforms,
                ["linux/amd64", "linux/arm64", "linux/arm/v7"],
                "{name}"
            );
        }
    }

    fn run_keadm(shell: &[&str], version: &str, root: &Path, args: &[&str], stdin: &str) -> Output {
        run_keadm_env(shell, version, root, args, stdin, &[])
    }

    fn run_keadm_env(
        shell: &[&str],
        version: &str,
        root: &Path,
        args: &[&str],
        stdin: &str,
        envs: &[(&str, &str)],
    ) -> Output {
        let script = root.join("keadm");
        fs::write(&script, keadm_script(version).unwrap()).unwrap();
        let mut child = Command::new(shell[0])
            .args(&shell[1..])
            .arg(&script)
            .args(args)
            .env(SAMPLE_ROOT_ENV, root)
            .envs(envs.iter().copied())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(stdin.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    }

    const SHELLS: [&[&str]; 2] = [&["/bin/sh"], &["/bin/busybox", "sh"]];

    fn stderr(o: &Output) -> String {
        String::from_utf8_lossy(&o.stderr).into_owned()
    }

    fn stdout(o: &Output) -> String {
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    #[test]
    fn standin_keadm_rejects_bad_command_lines() {
        let tmp = tempfile::tempdir().unwrap();
        let base = [
            "join",
            "--cloudcore-ipport=10.0.0.1:10000",
            "--kubeedge-version",
            V,
        ];
        let cases: &[(&[&str], &str)] = &[
            (&["--foo=bar"], "Error: unknown flag: --foo\n"),
            (&["--with-mqtt"], "Error: unknown flag: --with-mqtt\n"),
            (&["-x"], "Error: unknown shorthand flag: 'x' in -x\n"),
            (&["--token"], "Error: flag needs an argument: --token\n"),
            (&["-t"], "Error: flag needs an argument: 't' in -t\n"),
            (
                &["--hub-protocol=http"],
                "Error: unsupported hub of protocol: http\n",
            ),
        ];
        for shell in SHELLS {
            for (extra, want) in cases {
                let args: Vec<&str> = base.iter().chain(extra.iter()).copied().collect();
                let out = run_keadm(shell, V, tmp.path(), &args, "");
                assert_eq!(out.status.code(), Some(1), "{args:?}");
                assert_eq!(stderr(&out), *want, "{shell:?} {args:?}");
                assert_eq!(stdout(&out), "", "nothing ran: {args:?}");
            }
            let out = run_keadm(shell, V, tmp.path(), &["join", "--token=x"], "");
            assert_eq!(out.status.code(), Some(1));
            assert_eq!(
                stderr(&out),
                "Error: required flag(s) \"cloudcore-ipport\", \"kubeedge-version\" not set\n"
            );
            let out = run_keadm(
                shell,
                V,
                tmp.path(),
                &["reset", "edge", "--force=maybe"],
                "",
            );
            assert_eq!(out.status.code(), Some(1));
            assert!(stderr(&out).contains("invalid argument \"maybe\" for \"--force\" flag"));
            let out = run_keadm(shell, V, tmp.path(), &["init"], "");
            assert_eq!(out.status.code(), Some(1));
            assert!(stderr(&out).contains("Usage:"));
        }
        // Nothing was created on the "host".
        let left: Vec<_> = fs::read_dir(tmp.path()).unwrap().collect();
        assert_eq!(left.len(), 1, "only the script itself");
    }

    /// Every flag of the real keadm is accepted; the join then stops at the
    /// management-directory check with the real message.
    #[test]
    fn standin_keadm_accepts_real_join_command_lines() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        fs::create_dir_all(root.join("etc/kubeedge")).unwrap();
        fs::write(root.join("etc/kubeedge/.leftover"), "x").unwrap();
        let pre = root.join("pre.sh");
        fs::write(&pre, "echo pre-run ran\n").unwrap();
        let pre_run = format!("--pre-run={}", pre.display());
        for version in ["v1.21.0", "v1.22.2", V] {
            for shell in SHELLS {
                let args = [
                    "join",
                    "-e",
                    "[fd00::1]:10000",
                    &format!("--kubeedge-version={version}"),
                    "--token",
                    "abc.def",
                    "-iedge-1",
                    "-l=a=b",
                    "--labels",
                    "c=d",
                    "--set=modules.edgeHub.enable=true",
                    "--cgroupdriver",
                    "systemd",
                    "--image-repository=10.0.0.5:5000/kubeedge",
                    "--remote-runtime-endpoint=unix:///run/containerd/containerd.sock",
                    "--certPath=/etc/kubeedge/certs",
                    "--certport",
                    "10002",
                    "--tarballpath=/tmp",
                    "--hub-protocol=quic",
                    &pre_run,
                    "--post-run",
                    "./post.sh",
                ];
                let out = run_keadm(shell, version, root, &args, "");
                assert_eq!(out.status.code(), Some(1), "{shell:?} {version}");
                assert_eq!(
                    stderr(&out),
                    "Error: the management directory /etc/kubeedge/ is not clean, please remove it first\n"
                );
                let stdout = stdout(&out);
                assert!(stdout.starts_with(&format!(
                    "keadm {version} (edgeferry SAMPLE stand-in, not KubeEdge): joining"
                )));
                assert!(stdout.ends_with(&format!(
                    "1. Executing pre-run script: {}\npre-run ran\n\
                     2. Check KubeEdge edgecore process status\n\
                     3. Check if the management directory is clean\n",
                    pre.display()
                )));

                let out = run_keadm(shell, version, root, &["version"], "");
                let stdout = String::from_utf8_lossy(&out.stdout);
                assert!(out.status.success());
                assert!(stdout.contains(version) && stdout.contains("stand-in"));
            }
        }
        assert!(root.join("etc/kubeedge/.leftover").exists());
    }

    /// A read-only registry for one OCI layout, as `edgeferry serve`
    /// answers: manifests by tag or digest and blobs, with `?ns=`. Records
    /// every request line with its Accept header.
    struct Mirror {
        addr: String,
        requests: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    }

    impl Mirror {
        fn start(layout: PathBuf, corrupt_blobs: bool) -> Mirror {
            use std::io::{BufRead, BufReader};
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = listener.local_addr().unwrap().to_string();
            let requests = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
            let log = requests.clone();
            let top: Value =
                serde_json::from_slice(&fs::read(layout.join("index.json")).unwrap()).unwrap();
            let top = top["manifests"][0]["digest"].as_str().unwrap().to_string();
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    let Ok(mut stream) = stream else { continue };
                    let mut reader = BufReader::new(stream.try_clone().unwrap());
                    let mut line = String::new();
                    reader.read_line(&mut line).unwrap();
                    let mut accept = String::new();
                    loop {
                        let mut header = String::new();
                        if reader.read_line(&mut header).unwrap() == 0 || header == "\r\n" {
                            break;
                        }
                        if let Some(v) = header.strip_prefix("Accept: ") {
                            accept = v.trim().to_string();
                        }
                    }
                    let target = line.split(' ').nth(1).unwrap_or("").to_string();
                    log.lock()
                        .unwrap()
                        .push(format!("{target} Accept: {accept}"));
                    let path = target.split('?').next().unwrap();
                    let name = "/v2/kubeedge/installation-package/";
                    let body = path.strip_prefix(name).and_then(|rest| {
                        let (kind, reference) = rest.split_once('/')?;
                        let digest = match (kind, reference) {
                            ("manifests", V) => top.clone(),
                            ("manifests" | "blobs", d) if d.starts_with("sha256:") => d.into(),
                            _ => return None,
                        };
                        let mut data =
                            fs::read(layout.join("blobs/sha256").join(&digest["sha256:".len()..]))
                                .ok()?;
                        if corrupt_blobs && kind == "blobs" {
                            let last = data.len() - 1;
                            data[last] ^= 1;
                        }
                        Some(data)
                    });
                    let (status, body) = match body {
                        Some(data) => ("200 OK", data),
                        None => (
                            "404 Not Found",
                            br#"{"errors":[{"code":"NAME_UNKNOWN"}]}"#.to_vec(),
                        ),
                    };
                    let head = format!(
                        "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                        body.len()
                    );
                    let _ = stream.write_all(head.as_bytes());
                    let _ = stream.write_all(&body);
                }
            });
            Mirror { addr, requests }
        }
    }

    /// The stand-in cloudcore of the test sites: a port that accepts
    /// connections and closes them.
    fn cloudcore_listener() -> u16 {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                drop(stream);
            }
        });
        port
    }

    /// A port nothing listens on.
    fn closed_port() -> u16 {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    }

    fn write_hosts_toml(root: &Path, registry: &str, mirror: &str) {
        let dir = root.join("etc/containerd/certs.d").join(registry);
        fs::create_dir_all(&dir).unwrap();
        let server = if registry == "docker.io" {
            "https://registry-1.docker.io".to_string()
        } else {
            format!("http://{mirror}")
        };
        fs::write(
            dir.join("hosts.toml"),
            format!(
                "# Written by edgeferry: pull {registry} images from the site mirror.\n\
                 server = \"{server}\"\n\n\
                 [host.\"http://{mirror}\"]\n  capabilities = [\"pull\", \"resolve\"]\n"
            ),
        )
        .unwrap();
    }

    /// The pid in the stand-in edgecore's pid file, if that process lives
    /// (and is not a zombie).
    fn live_edgecore(root: &Path) -> Option<u32> {
        let pid: u32 = fs::read_to_string(root.join(&STANDIN_EDGECORE_PID_FILE[1..]))
            .ok()?
            .trim()
            .parse()
            .ok()?;
        let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let state = stat.rsplit_once(") ")?.1.chars().next()?;
        (state != 'Z').then_some(pid)
    }

    /// Kills a stand-in edgecore a failed test left running.
    struct KillEdgecore<'a>(&'a Path);

    impl Drop for KillEdgecore<'_> {
        fn drop(&mut self) {
            if let Some(pid) = live_edgecore(self.0) {
                let _ = Command::new("kill").arg(pid.to_string()).status();
            }
        }
    }

    fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
        for _ in 0..200 {
            if done() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        panic!("timed out waiting until {what}");
    }

    /// The whole join against a mirror serving the sample
    /// installation-package image, then `keadm reset edge`.
    #[test]
    fn standin_keadm_joins_through_the_mirror_and_resets() {
        let sample = sample_dir();
        let layout = sample.path().join("images/installation-package");
        let mirror = Mirror::start(layout.clone(), false);
        let certport = cloudcore_listener().to_string();
        for (shell, image_repository) in [
            (SHELLS[0], None),
            (SHELLS[1], None),
            (SHELLS[0], Some(format!("{}/kubeedge", mirror.addr))),
        ] {
            let tmp = tempfile::tempdir().unwrap();
            let root = tmp.path();
            let _guard = KillEdgecore(root);
            let registry = match &image_repository {
                Some(_) => mirror.addr.clone(),
                None => "docker.io".to_string(),
            };
            write_hosts_toml(root, &registry, &mirror.addr);
            // A management directory that exists but is empty is fine.
            fs::create_dir_all(root.join("etc/kubeedge")).unwrap();
            mirror.requests.lock().unwrap().clear();

            let mut args = vec![
                "join".to_string(),
                "--cloudcore-ipport=127.0.0.1:10000".into(),
                format!("--certport={certport}"),
                format!("--kubeedge-version={V}"),
                "--token=ca.jwt\"x".into(),
                "--edgenode-name=edge-1".into(),
                "--labels=site=a,role=edge".into(),
                "--set=modules.edgeHub.enable=true".into(),
                format!("--post-run={}", root.join("post.sh").display()),
            ];
            if let Some(r) = &image_repository {
                args.push(format!("--image-repository={r}"));
            }
            fs::write(root.join("post.sh"), "echo post-run ran; exit 3\n").unwrap();
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let out = run_keadm_env(shell, V, root, &args, "", &[(STANDIN_WAIT_ENV, "20")]);
            let (out_text, err_text) = (stdout(&out), stderr(&out));
            assert_eq!(
                out.status.code(),
                Some(0),
                "{shell:?}: {out_text}{err_text}"
            );
            assert_eq!(err_text, "");
            let steps: Vec<&str> = out_text
                .lines()
                .filter(|l| l.starts_with(|c: char| c.is_ascii_digit()))
                .collect();
            assert_eq!(
                steps,
                [
                    "1. Check KubeEdge edgecore process status",
                    "2. Check if the management directory is clean",
                    "3. Check if the node name is valid",
                    "4. Create the necessary directories",
                    "5. Pull Images",
                    "6. Copy resources from the image to the management directory",
                    "7. Generate systemd service file",
                    "8. Generate EdgeCore default configuration",
                    "9. Run EdgeCore daemon",
                    &format!(
                        "10. Executing post-run script: {}",
                        root.join("post.sh").display()
                    ),
                ]
            );
            assert!(
                out_text.contains("\nInstall Complete!\n10. Executing post-run script"),
                "{out_text}"
            );
            assert!(out_text.ends_with(&format!(
                "\npost-run ran\nfailed to execute the post-run script {}: exit status 3\n",
                root.join("post.sh").display()
            )));

            // The mirror was asked as containerd asks it.
            let requests = mirror.requests.lock().unwrap().clone();
            let ns = match image_repository {
                Some(_) => String::new(),
                None => "?ns=docker.io".to_string(),
            };
            assert_eq!(requests.len(), 3, "{requests:?}");
            let want_accept = "Accept: application/vnd.oci.image.index.v1+json, \
                application/vnd.oci.image.manifest.v1+json, \
                application/vnd.docker.distribution.manifest.list.v2+json, \
                application/vnd.docker.distribution.manifest.v2+json";
            assert_eq!(
                requests[0],
                format!("/v2/kubeedge/installation-package/manifests/{V}{ns} {want_accept}")
            );
            let index: Value = serde_json::from_slice(&blob(
                &layout,
                &json(&layout.join("index.json"))["manifests"][0]["digest"],
            ))
            .unwrap();
            let amd64 = &index["manifests"][0];
            assert_eq!(amd64["platform"]["architecture"], "amd64");
            let digest = amd64["digest"].as_str().unwrap();
            assert_eq!(
                requests[1],
                format!("/v2/kubeedge/installation-package/manifests/{digest}{ns} {want_accept}")
            );
            let manifest: Value = serde_json::from_slice(&blob(&layout, &amd64["digest"])).unwrap();
            let layer = manifest["layers"][0]["digest"].as_str().unwrap();
            assert!(requests[2].starts_with(&format!(
                "/v2/kubeedge/installation-package/blobs/{layer}{ns} "
            )));

            // What join leaves on the node.
            let edgecore = fs::read(root.join("usr/local/bin/edgecore")).unwrap();
            assert_eq!(edgecore, edgecore_script(V).as_bytes());
            use std::os::unix::fs::PermissionsExt;
            let mode = |p: &str| fs::metadata(root.join(p)).unwrap().permissions().mode() & 0o7777;
            assert_eq!(mode("usr/local/bin/edgecore"), 0o755);
            assert_eq!(mode("etc/kubeedge/certs/server.key"), 0o600);
            for dir in [
                "etc/kubeedge/config",
                "var/log/kubeedge",
                "var/lib/kubeedge",
            ] {
                assert!(root.join(dir).is_dir(), "{dir}");
            }
            assert!(
                !root.join("etc/kubeedge/bootstrap-edgecore.conf").exists(),
                "removed when join returns, as by real keadm"
            );
            assert!(!root.join("etc/systemd").exists());
            let config =
                fs::read_to_string(root.join("etc/kubeedge/config/edgecore.yaml")).unwrap();
            for want in [
                "stand-in",
                &format!("edgeCoreVersion: {V}\n"),
                "    httpServer: https://127.0.0.1:",
                "    token: \"ca.jwt\\\"x\"\n",
                "    websocket:\n      enable: true\n      server: 127.0.0.1:10000\n",
                "    quic:\n      enable: false\n      server: 127.0.0.1:10001\n",
                "    tunnelServer: 127.0.0.1:10004\n",
                "    hostnameOverride: edge-1\n",
                "      cgroupDriver: cgroupfs\n",
                "    nodeLabels:\n      site: a\n      role: edge\n",
                "      containerRuntimeEndpoint: unix:///run/containerd/containerd.sock\n",
                "#   modules.edgeHub.enable=true\n",
            ] {
                assert!(config.contains(want), "{want:?} not in\n{config}");
            }
            let log = fs::read_to_string(root.join("var/log/kubeedge/edgecore.log")).unwrap();
            assert!(log.contains("edgeferry SAMPLE stand-in"), "{log}");

            // edgecore runs, under its own name.
            let pid = live_edgecore(root).expect("edgecore runs");
            assert_eq!(
                fs::read_to_string(format!("/proc/{pid}/comm")).unwrap(),
                "edgecore\n"
            );

            // A second join refuses, as real keadm does.
            let out = run_keadm(shell, V, root, &args, "");
            assert_eq!(out.status.code(), Some(1));
            assert_eq!(
                stderr(&out),
                "Error: EdgeCore is already running on this node, please run reset to clean up first\n"
            );

            let out = run_keadm(shell, V, root, &["reset", "edge", "--force"], "");
            assert!(out.status.success(), "{}", stderr(&out));
            wait_until("edgecore has stopped", || live_edgecore(root).is_none());
            for dir in ["etc/kubeedge", "var/log/kubeedge", "var/lib/kubeedge"] {
                assert!(!root.join(dir).exists(), "{dir}");
            }
            assert!(
                root.join("usr/local/bin/edgecore").exists(),
                "reset leaves it"
            );
            assert!(root.join("etc/containerd/certs.d").exists());
        }
    }

    fn standin_join(root: &Path, certport: u16, envs: &[(&str, &str)]) -> Output {
        run_keadm_env(
            SHELLS[0],
            V,
            root,
            &[
                "join",
                "--cloudcore-ipport=127.0.0.1:10000",
                &format!("--certport={certport}"),
                "--kubeedge-version",
                V,
                "--token=t",
            ],
            "",
            envs,
        )
    }

    #[test]
    fn standin_keadm_join_fails_like_the_real_one() {
        let sample = sample_dir();
        let layout = sample.path().join("images/installation-package");
        let mirror = Mirror::start(layout.clone(), false);
        let certport = cloudcore_listener();
        let fresh = || {
            let tmp = tempfile::tempdir().unwrap();
            write_hosts_toml(tmp.path(), "docker.io", &mirror.addr);
            tmp
        };

        // No cloudcore listening.
        let tmp = fresh();
        let port = closed_port();
        let out = standin_join(tmp.path(), port, &[]);
        assert_eq!(out.status.code(), Some(1));
        assert_eq!(
            stderr(&out),
            format!(
                "Error: error making request: Get \"https://127.0.0.1:{port}/node/{node}\": \
                 dial tcp 127.0.0.1:{port}: connect: connection refused\n",
                node = uname_n()
            )
        );

        // No hosts.toml: containerd would go to the internet.
        let tmp = tempfile::tempdir().unwrap();
        let out = standin_join(tmp.path(), certport, &[]);
        assert_eq!(out.status.code(), Some(1));
        let err = stderr(&out);
        assert!(
            err.starts_with(&format!(
                "Error: failed to pull image \"docker.io/kubeedge/installation-package:{V}\": \
                 no mirror for docker.io in /etc/containerd/certs.d/docker.io/hosts.toml"
            )),
            "{err}"
        );
        assert!(err.contains("https://registry-1.docker.io") && err.contains("DeadlineExceeded"));
        assert!(!tmp.path().join("usr/local/bin/edgecore").exists());

        // A mirror that sends other bytes than the digest says.
        let tmp = fresh();
        let bad = Mirror::start(layout.clone(), true);
        write_hosts_toml(tmp.path(), "docker.io", &bad.addr);
        let out = standin_join(tmp.path(), certport, &[]);
        assert_eq!(out.status.code(), Some(1));
        assert!(stderr(&out).contains("digest mismatch"), "{}", stderr(&out));
        assert!(!tmp.path().join("usr/local/bin/edgecore").exists());

        // The fault file makes it fail after the image is in.
        let tmp = fresh();
        let state = tmp.path().join(&STANDIN_STATE_DIR[1..]);
        fs::create_dir_all(&state).unwrap();
        fs::write(tmp.path().join(&STANDIN_FAULT_FILE[1..]), "fail\n").unwrap();
        let out = standin_join(tmp.path(), certport, &[]);
        assert_eq!(out.status.code(), Some(1));
        assert_eq!(
            stderr(&out),
            "keadm (edgeferry SAMPLE stand-in): failing on purpose (fault file)\n"
        );
        assert!(stdout(&out)
            .ends_with("6. Copy resources from the image to the management directory\n"));
        assert!(tmp.path().join("usr/local/bin/edgecore").exists());
        assert!(!tmp
            .path()
            .join("etc/kubeedge/config/edgecore.yaml")
            .exists());

        // join-seconds delays it; an edgecore that cannot start times it out.
        let tmp = fresh();
        fs::create_dir_all(tmp.path().join(&STANDIN_STATE_DIR[1..])).unwrap();
        fs::write(tmp.path().join(&STANDIN_JOIN_SECONDS_FILE[1..]), "1\n").unwrap();
        // The log "file" is a directory, so the redirection fails and
        // edgecore never runs.
        fs::create_dir_all(tmp.path().join("var/log/kubeedge/edgecore.log")).unwrap();
        let started = std::time::Instant::now();
        let out = standin_join(tmp.path(), certport, &[(STANDIN_WAIT_ENV, "1")]);
        assert!(started.elapsed() >= std::time::Duration::from_secs(2));
        assert_eq!(out.status.code(), Some(1));
        assert!(
            stderr(&out)
                .ends_with("Error: edge node join failed: timed out waiting for the condition\n"),
            "{}",
            stderr(&out)
        );
        assert!(stdout(&out).contains("taking 1 more seconds (join-seconds file)"));
        assert!(!tmp
            .path()
            .join("etc/kubeedge/bootstrap-edgecore.conf")
            .exists());

        // A pre-run script that fails stops the join before any check.
        let tmp = fresh();
        let pre = tmp.path().join("pre.sh");
        fs::write(&pre, "exit 4\n").unwrap();
        let out = run_keadm(
            SHELLS[0],
            V,
            tmp.path(),
            &[
                "join",
                "-e",
                "127.0.0.1:10000",
                "--kubeedge-version",
                V,
                &format!("--pre-run={}", pre.display()),
            ],
            "",
        );
        assert_eq!(out.status.code(), Some(1));
        assert_eq!(
            stderr(&out),
            format!(
                "Error: failed to execute the pre-run script {}: exit status 4\n",
                pre.display()
            )
        );
    }

    #[test]
    fn standin_keadm_hangs_on_purpose_until_killed() {
        let sample = sample_dir();
        let mirror = Mirror::start(sample.path().join("images/installation-package"), false);
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        write_hosts_toml(root, "docker.io", &mirror.addr);
        fs::create_dir_all(root.join(&STANDIN_STATE_DIR[1..])).unwrap();
        fs::write(root.join(&STANDIN_FAULT_FILE[1..]), "hang").unwrap();
        let script = root.join("keadm");
        fs::write(&script, keadm_script(V).unwrap()).unwrap();
        let mut child = Command::new("/bin/sh")
            .arg(&script)
            .args(["join", "-e", "127.0.0.1:10000", "--kubeedge-version", V])
            .arg(format!("--certport={}", cloudcore_listener()))
            .env(SAMPLE_ROOT_ENV, root)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut err = std::io::BufReader::new(child.stderr.take().unwrap());
        let mut line = String::new();
        std::io::BufRead::read_line(&mut err, &mut line).unwrap();
        assert_eq!(
            line,
            "keadm (edgeferry SAMPLE stand-in): hanging on purpose (fault file)\n"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
        assert!(child.try_wait().unwrap().is_none(), "still hanging");
        child.kill().unwrap();
        assert!(!child.wait().unwrap().success());
    }

    fn uname_n() -> String {
        let out = Command::new("uname").arg("-n").output().unwrap();
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    }

    #[test]
    fn standin_keadm_reset_edge_removes_what_join_made() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        let made = [
            "etc/kubeedge/config",
            "etc/kubeedge/certs",
            "var/log/kubeedge",
            "var/lib/kubeedge",
            "var/lib/edged",
        ];
        for shell in SHELLS {
            for dir in made {
                fs::create_dir_all(root.join(dir)).unwrap();
            }
            fs::write(root.join("etc/kubeedge/.hidden"), "x").unwrap();
            fs::create_dir_all(root.join("usr/local/bin")).unwrap();
            fs::write(root.join("usr/local/bin/edgecore"), "x").unwrap();

            let out = run_keadm(shell, V, root, &["reset", "edge"], "n\n");
            assert_eq!(out.status.code(), Some(1));
            assert_eq!(stderr(&out), "Error: aborted reset operation\n");
            assert!(made.iter().all(|d| root.join(d).exists()));

            let out = run_keadm(shell, V, root, &["reset", "edge"], "y\n");
            assert!(out.status.success(), "{}", stderr(&out));
            assert_eq!(stderr(&out), "");
            assert!(stdout(&out).contains("stand-in"));
            for dir in [
                "etc/kubeedge",
                "var/log/kubeedge",
                "var/lib/kubeedge",
                "var/lib/edged",
            ] {
                assert!(!root.join(dir).exists(), "{shell:?} {dir}");
            }
            assert!(root.join("usr/local/bin/edgecore").exists());
            // Nothing to remove is fine too.
            let out = run_keadm(shell, V, root, &["reset", "edge", "--force"], "");
            assert!(out.status.success(), "{}", stderr(&out));
        }
    }

    #[test]
    fn standin_edgecore_writes_tls_files_and_keeps_running() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        let _guard = KillEdgecore(root);
        let bin = root.join("usr/local/bin");
        fs::create_dir_all(&bin).unwrap();
        let script = bin.join("edgecore");
        fs::write(&script, edgecore_script(V)).unwrap();
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).unwrap();

        let out = Command::new(&script).arg("--version").output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success());
        assert!(stdout.contains(V) && stdout.contains("stand-in"));

        let out = Command::new(&script)
            .env(SAMPLE_ROOT_ENV, root)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1));
        assert!(stderr(&out).contains("cannot read /etc/kubeedge/config/edgecore.yaml"));

        fs::create_dir_all(root.join("etc/kubeedge/config")).unwrap();
        fs::write(root.join("etc/kubeedge/config/edgecore.yaml"), "x: 1\n").unwrap();
        let mut child = Command::new(&script)
            .env(SAMPLE_ROOT_ENV, root)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let files = [
            "etc/kubeedge/ca/rootCA.crt",
            "etc/kubeedge/certs/server.crt",
            "etc/kubeedge/certs/server.key",
        ];
        wait_until("the TLS files are there", || {
            files.iter().all(|f| root.join(f).exists())
        });
        for f in files {
            let text = fs::read_to_string(root.join(f)).unwrap();
            assert!(text.starts_with("-----BEGIN "), "{f}");
            assert!(text.contains("edgeferry SAMPLE stand-in"), "{f}");
            assert!(text.contains("not a "), "{f}");
        }
        let mode = fs::metadata(root.join(files[2]))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        wait_until("the pid file is there", || live_edgecore(root).is_some());
        assert_eq!(live_edgecore(root), Some(child.id()), "relaunched in place");
        std::thread::sleep(std::time::Duration::from_millis(300));
        assert!(child.try_wait().unwrap().is_none(), "keeps running");
        let cmdline = fs::read(format!("/proc/{}/cmdline", child.id())).unwrap();
        let argv0 = cmdline.split(|b| *b == 0).next().unwrap();
        assert!(argv0.ends_with(b"/edgecore"), "pidof finds it by argv[0]");
        assert_eq!(
            fs::read_to_string(format!("/proc/{}/comm", child.id())).unwrap(),
            "edgecore\n"
        );

        Command::new("kill")
            .arg(child.id().to_string())
            .status()
            .unwrap();
        let status = child.wait().unwrap();
        assert!(status.success(), "SIGTERM stops it cleanly: {status:?}");
        assert!(!root.join(&STANDIN_EDGECORE_PID_FILE[1..]).exists());
    }

    #[test]
    fn standin_paths_share_one_state_dir() {
        for file in [
            STANDIN_FAULT_FILE,
            STANDIN_JOIN_SECONDS_FILE,
            STANDIN_EDGECORE_PID_FILE,
        ] {
            assert_eq!(Path::new(file).parent(), Some(Path::new(STANDIN_STATE_DIR)));
        }
        let (keadm, edgecore) = (keadm_script(V).unwrap(), edgecore_script(V));
        for placeholder in [
            "@VERSION@",
            "@ROOT_ENV@",
            "@WAIT_ENV@",
            "@STATE_DIR@",
            "@JOIN_PARSER@",
            "@RESET_PARSER@",
            "@REQUIRED@",
            "@USAGE@",
        ] {
            assert!(!keadm.contains(placeholder) && !edgecore.contains(placeholder));
        }
        assert!(keadm.contains("\nSTATE=$ROOT/var/lib/keadm-standin\n"));
        assert!(keadm.contains("\"$STATE/fault\""));
        assert!(keadm.contains("\"$STATE/join-seconds\""));
        assert!(edgecore.contains("\npidfile=$ROOT/var/lib/keadm-standin/edgecore.pid\n"));
    }

    #[test]
    fn versions_outside_the_flag_table_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        for bad in ["v1.20.0", "1.23.1", "v1.23", "v2.0.0", "v1.23.1 x"] {
            let err = write_sample_dir(tmp.path(), &SampleSpec::for_version(bad)).unwrap_err();
            let msg = err.to_string();
            assert!(!msg.contains('\n') && msg.contains(bad.trim()), "{msg}");
        }
        assert!(keadm_script("v1.20.0").is_err());
        assert_eq!(keadm::minor_of("v1.22.0-rc.1").unwrap(), 22);
    }

    #[test]
    fn elf_interpreter_is_detected() {
        // Minimal ELF64 little-endian header with one program header at 64.
        let mut elf = vec![0u8; 64 + 56];
        elf[..6].copy_from_slice(b"\x7fELF\x02\x01");
        elf[0x20] = 64;
        elf[0x36] = 56;
        elf[0x38] = 1;
        elf[64] = 1; // PT_LOAD
        assert_eq!(check_static_elf(&elf), Ok(()));
        elf[64] = 3; // PT_INTERP
        assert!(check_static_elf(&elf)
            .unwrap_err()
            .contains("dynamically linked"));
        elf[64] = 1;
        elf[0x38] = 2;
        assert!(check_static_elf(&elf).unwrap_err().contains("truncated"));
        assert!(check_static_elf(b"#!/bin/sh\n").is_err());
        assert!(check_static_elf(&fs::read("/bin/busybox").unwrap()).is_ok());
        assert_eq!(busybox_path().unwrap(), Path::new("/bin/busybox"));
    }
}
