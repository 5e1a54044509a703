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
/// so tests can run `keadm reset edge` against a temporary directory.
pub const SAMPLE_ROOT_ENV: &str = "EDGEFERRY_SAMPLE_ROOT";

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
// keadm flag tables

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum FlagKind {
    /// pflag `string`
    Str,
    /// pflag `stringSlice` / `stringArray`; the stand-in joins values with commas.
    List,
    /// pflag `bool`: `--flag` or `--flag=<bool>`, never `--flag <bool>`.
    Bool,
}

#[derive(Clone, Copy, Debug)]
struct Flag {
    long: &'static str,
    short: Option<char>,
    kind: FlagKind,
    default: &'static str,
    help: &'static str,
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
/// `AddJoinOtherFlags` registers the same flags in each (research §1.1, §1.2).
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

/// `keadm reset edge`, the same from v1.20 on (research §2.5).
const RESET_EDGE_FLAGS_V1_21_TO_V1_23: &[Flag] = &[
    flag(
        "force",
        None,
        FlagKind::Bool,
        "false",
        "Reset the node without prompting for confirmation",
    ),
    flag(
        "remote-runtime-endpoint",
        None,
        FlagKind::Str,
        "",
        "Use this key to set container runtime endpoint",
    ),
    flag(
        "pre-run",
        None,
        FlagKind::Str,
        "",
        "Execute the prescript before resetting the node.",
    ),
    flag(
        "post-run",
        None,
        FlagKind::Str,
        "",
        "Execute the postscript after resetting the node.",
    ),
];

/// Per KubeEdge minor version: the `keadm join` and `keadm reset edge` flags.
const FLAG_TABLE: &[(u32, &[Flag], &[Flag])] = &[
    (
        21,
        JOIN_FLAGS_V1_21_TO_V1_23,
        RESET_EDGE_FLAGS_V1_21_TO_V1_23,
    ),
    (
        22,
        JOIN_FLAGS_V1_21_TO_V1_23,
        RESET_EDGE_FLAGS_V1_21_TO_V1_23,
    ),
    (
        23,
        JOIN_FLAGS_V1_21_TO_V1_23,
        RESET_EDGE_FLAGS_V1_21_TO_V1_23,
    ),
];

/// Real keadm requires only `--cloudcore-ipport`; the stand-in also requires
/// `--kubeedge-version` because without it keadm goes to the internet.
/// Sorted, as cobra reports missing flags in name order.
const JOIN_REQUIRED: &[&str] = &["cloudcore-ipport", "kubeedge-version"];

/// The minor version of `vMAJOR.MINOR.PATCH[suffix]`, checking that the
/// whole string is safe to embed in scripts and file names.
fn kubeedge_minor(version: &str) -> Result<u32> {
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
            bail!("kubeedge version {version} is not a 1.x release: the sample set knows KubeEdge v1.21 to v1.23")
        }
        _ => Err(malformed()),
    }
}

fn flags_for(version: &str) -> Result<(&'static [Flag], &'static [Flag])> {
    let minor = kubeedge_minor(version)?;
    FLAG_TABLE
        .iter()
        .find(|(m, _, _)| *m == minor)
        .map(|(_, join, reset)| (*join, *reset))
        .with_context(|| {
            format!("the sample keadm knows the flags of KubeEdge v1.21 to v1.23 only, not {version}: pick one of those")
        })
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

/// The stand-in `keadm`: validates command lines exactly as the real keadm
/// of `version` would, and only reports what it would do.
fn keadm_script(version: &str) -> Result<String> {
    let (join, reset) = flags_for(version)?;
    let mut required = String::new();
    for name in JOIN_REQUIRED {
        let v = sh_var(name);
        required.push_str(&format!(
            "\t[ -n \"$seen_{v}\" ] || missing=\"${{missing:+$missing, }}\\\"{name}\\\"\"\n"
        ));
    }
    let usage = format!(
        "keadm {version} (edgeferry SAMPLE stand-in, not KubeEdge)\n\n\
         Usage:\n  keadm version\n  keadm join --cloudcore-ipport=HOST:PORT --kubeedge-version=VERSION [flags]\n  keadm reset edge [--force] [flags]\n\n\
         Join flags:\n{}\nReset edge flags:\n{}",
        usage_lines(join),
        usage_lines(reset)
    );
    Ok(format!(
        r#"#!/bin/sh
# edgeferry SAMPLE stand-in for keadm {version} — not KubeEdge
#
# Written by edgeferry for tests and demos, where no KubeEdge release can be
# downloaded. It checks command lines against the flags of the real keadm
# {version} and reports what a join would do; it changes nothing except that
# `keadm reset edge` empties /etc/kubeedge. ${SAMPLE_ROOT_ENV}, if set, is
# put in front of every host path.
set -u

KEADM_VERSION='{version}'
ROOT=${{{SAMPLE_ROOT_ENV}:-}}

# Errors look like cobra's, which real keadm prints through.
fail() {{
	printf 'Error: %s\n' "$1" >&2
	exit 1
}}

# strconv.ParseBool, as pflag uses it.
parse_bool() {{
	case $1 in
	1 | t | T | TRUE | true | True) echo true ;;
	0 | f | F | FALSE | false | False) echo false ;;
	*) fail "invalid argument \"$1\" for \"$2\" flag: strconv.ParseBool: parsing \"$1\": invalid syntax" ;;
	esac
}}

usage() {{
	cat <<'USAGE'
{usage}USAGE
}}

{join_parser}
join_check_required() {{
	missing=
{required}	[ -z "$missing" ] || fail "required flag(s) $missing not set"
}}

# Real keadm validates these values too, only later; checking them first
# lets a dry run catch them.
join_check_values() {{
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
	case ${{opt_cloudcore_ipport##*:}} in
	'' | *[!0-9]*) fail "address $opt_cloudcore_ipport: expected HOST:PORT for --cloudcore-ipport" ;;
	esac
	[ -n "${{opt_cloudcore_ipport%:*}}" ] || fail "address $opt_cloudcore_ipport: expected HOST:PORT for --cloudcore-ipport"
	case $opt_hub_protocol in
	websocket | quic) ;;
	*) fail "unsupported hub of protocol: $opt_hub_protocol" ;;
	esac
	case $opt_cgroupdriver in
	cgroupfs | systemd) ;;
	*) fail "unsupported cgroupdriver $opt_cgroupdriver: use cgroupfs or systemd" ;;
	esac
}}

# The place to add real join behaviour for test hosts.
do_join() {{
	version=$opt_kubeedge_version
	case $version in v*) ;; *) version=v$version ;; esac
	host=${{opt_cloudcore_ipport%:*}}
	certport=${{opt_certport:-10002}}
	node=${{opt_edgenode_name:-$(uname -n)}}
	image=kubeedge/installation-package:$version
	[ -z "$opt_image_repository" ] || image=$opt_image_repository/installation-package:$version
	echo "keadm $KEADM_VERSION (edgeferry SAMPLE stand-in, not KubeEdge): would join this node, changing nothing"
	n=0
	step() {{
		n=$((n + 1))
		echo "$n. $*"
	}}
	[ -z "$opt_pre_run" ] || step "Executing pre-run script: $opt_pre_run"
	step "Check KubeEdge edgecore process status"
	step "Check if the management directory is clean: $ROOT/etc/kubeedge/"
	step "Check if the node name is valid: GET https://$host:$certport/node/$node"
	step "Create the necessary directories"
	step "Pull Images: $image via $opt_remote_runtime_endpoint"
	step "Copy resources from the image to the management directory: /usr/local/bin/edgecore"
	step "Generate systemd service file"
	step "Generate EdgeCore default configuration: edgeCoreVersion $version, hub $opt_hub_protocol to $opt_cloudcore_ipport, cgroup driver $opt_cgroupdriver, labels [$opt_labels], set [$opt_set]"
	step "Run EdgeCore daemon"
	[ -z "$opt_post_run" ] || step "Executing post-run script: $opt_post_run"
}}

{reset_parser}
do_reset_edge() {{
	if [ "$opt_force" != true ]; then
		printf '[reset] Are you sure you want to proceed? [y/N]: '
		read -r answer || answer=
		case $answer in
		y | Y) ;;
		*) fail "aborted reset operation" ;;
		esac
	fi
	dir=$ROOT/etc/kubeedge
	if [ -d "$dir" ]; then
		rm -rf "$dir"/* "$dir"/.[!.]* "$dir"/..?* || fail "cannot empty $dir"
	fi
	echo "keadm $KEADM_VERSION (edgeferry SAMPLE stand-in, not KubeEdge): reset edge removed the contents of $dir/"
}}

case ${{1-}} in
version)
	echo "version: version.Info{{GitVersion:\"$KEADM_VERSION\"}} (edgeferry SAMPLE stand-in, not KubeEdge)"
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
	[ "${{2-}}" = edge ] || {{
		usage >&2
		exit 1
	}}
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
"#,
        join_parser = sh_parser("join", join),
        reset_parser = sh_parser("reset_edge", reset),
    ))
}

/// Stand-in for a KubeEdge daemon such as `edgecore` or `cloudcore`: it
/// reports its version and refuses to run.
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
            ("edge/edgecore", "edgecore"),
        ] {
            tree.exe(
                &format!("{kubeedge_name}/{path}"),
                component_script(component, version),
            );
        }
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
            tree.exe(
                "usr/local/bin/edgecore",
                component_script("edgecore", version),
            );
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
    flags_for(version)?;
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
        let script = root.join("keadm");
        fs::write(&script, keadm_script(version).unwrap()).unwrap();
        let mut child = Command::new(shell[0])
            .args(&shell[1..])
            .arg(&script)
            .args(args)
            .env(SAMPLE_ROOT_ENV, root)
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
    }

    #[test]
    fn standin_keadm_accepts_real_join_command_lines() {
        let tmp = tempfile::tempdir().unwrap();
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
                    "--pre-run=./pre.sh",
                    "--post-run",
                    "./post.sh",
                ];
                let out = run_keadm(shell, version, tmp.path(), &args, "");
                let stdout = String::from_utf8_lossy(&out.stdout);
                assert_eq!(
                    out.status.code(),
                    Some(0),
                    "{shell:?} {version}: {}",
                    stderr(&out)
                );
                assert!(stdout.contains("stand-in"));
                assert!(stdout.contains(&format!(
                    "10.0.0.5:5000/kubeedge/installation-package:{version}"
                )));
                assert!(stdout.contains("labels [a=b,c=d]"), "{stdout}");
                assert!(stdout.contains("/node/edge-1"), "{stdout}");

                let out = run_keadm(shell, version, tmp.path(), &["version"], "");
                let stdout = String::from_utf8_lossy(&out.stdout);
                assert!(out.status.success());
                assert!(stdout.contains(version) && stdout.contains("stand-in"));
            }
        }
    }

    #[test]
    fn standin_keadm_reset_edge_empties_etc_kubeedge() {
        let tmp = tempfile::tempdir().unwrap();
        let etc = tmp.path().join("etc/kubeedge");
        for shell in SHELLS {
            fs::create_dir_all(etc.join("config")).unwrap();
            fs::write(etc.join(".hidden"), "x").unwrap();
            let out = run_keadm(shell, V, tmp.path(), &["reset", "edge"], "n\n");
            assert_eq!(out.status.code(), Some(1));
            assert!(etc.join("config").exists());

            let out = run_keadm(shell, V, tmp.path(), &["reset", "edge", "--force"], "");
            assert!(out.status.success(), "{}", stderr(&out));
            assert!(etc.is_dir());
            assert_eq!(fs::read_dir(&etc).unwrap().count(), 0);
        }
    }

    #[test]
    fn standin_edgecore_reports_version() {
        let tmp = tempfile::tempdir().unwrap();
        let script = tmp.path().join("edgecore");
        fs::write(&script, component_script("edgecore", V)).unwrap();
        let out = Command::new("/bin/sh")
            .arg(&script)
            .arg("--version")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success());
        assert!(stdout.contains(V) && stdout.contains("stand-in"));
        let out = Command::new("/bin/sh").arg(&script).output().unwrap();
        assert_eq!(out.status.code(), Some(1));
    }

    #[test]
    fn versions_outside_the_flag_table_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        for bad in ["v1.20.0", "1.23.1", "v1.23", "v2.0.0", "v1.23.1 x"] {
            let err = write_sample_dir(tmp.path(), &SampleSpec::for_version(bad)).unwrap_err();
            let msg = err.to_string();
            assert!(!msg.contains('\n') && msg.contains(bad.trim()), "{msg}");
        }
        assert_eq!(kubeedge_minor("v1.22.0-rc.1").unwrap(), 22);
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
