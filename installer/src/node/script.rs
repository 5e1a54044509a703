//! The POSIX sh each step runs on a node. Plain functions of plain data,
//! so `--dry-run` prints exactly what would run (with secrets redacted).
//!
//! Every script is idempotent: run twice, it does its work once.

use std::collections::BTreeMap;

use super::hosts::{HostsFile, Mirror, MIRROR_CA_PATH};

/// Where edgeferry keeps its own files on a node. Not under a directory
/// `keadm reset edge` wipes (/etc/kubeedge, /var/lib/kubeedge, /var/log/kubeedge,
/// /var/lib/edged, /var/lib/kubelet).
pub const NODE_DIR: &str = "/var/lib/edgeferry";

/// Exit code of the fetch script when the node has neither curl nor wget,
/// so the control host uploads the tarball over SSH instead.
pub const NO_HTTP_CLIENT: u32 = 10;

/// Exit code of coreutils `timeout` when it stopped the command.
pub const TIMED_OUT: u32 = 124;

/// Single-quotes `s` for sh.
pub fn quote(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:=,@+%".contains(c))
    {
        return s.to_string();
    }
    format!("'{}'", s.replace('\'', r#"'\''"#))
}

/// Wraps a script for the login user: as is for root, through
/// non-interactive sudo otherwise (sudo must not prompt: no terminal).
pub fn wrap(script: &str, sudo: bool) -> String {
    if sudo {
        format!("sudo -n sh -c {}", quote(script))
    } else {
        format!("sh -c {}", quote(script))
    }
}

/// The keadm release tarball for one arch, as the store has it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct KeadmAsset {
    pub arch: String,
    pub file: String,
    pub sha256: String,
    pub size: u64,
}

/// `uname -m` to KubeEdge's arch names, as keadm batch maps them.
const ARCH_CASE: &str = "case $(uname -m) in
x86_64 | amd64) arch=amd64 ;;
aarch64 | arm64) arch=arm64 ;;
armv7l | armv6l | arm32 | arm) arch=arm ;;
*) arch= ;;
esac";

pub struct PreflightParams<'a> {
    pub store_arches: Vec<String>,
    pub cri_socket: String,
    pub mirror: &'a Mirror,
    pub cloud_host: &'a str,
    pub cloud_ports: Vec<u16>,
    pub min_free_mib: u64,
}

/// Checks everything keadm would trip over, and a few things it would not
/// notice until too late. Prints `arch=<arch>` and `http=<client>` for the
/// control host; reports every failure, not just the first, on one line.
pub fn preflight(p: &PreflightParams) -> String {
    let arches = p.store_arches.join(" ");
    let ports: Vec<String> = p.cloud_ports.iter().map(u16::to_string).collect();
    format!(
        r#"set -u
fails=
fail() {{ fails="${{fails:+$fails; }}$1"; }}
{ARCH_CASE}
echo "arch=${{arch:-$(uname -m)}}"
if [ -z "$arch" ]; then
	fail "uname -m says $(uname -m), which KubeEdge does not support (amd64, arm64, arm)"
else
	case " {arches} " in
	*" $arch "*) ;;
	*) fail "node is $arch but the store has only {arches}: load the linux-$arch bundle" ;;
	esac
fi
if pidof edgecore >/dev/null 2>&1; then fail "edgecore is already running: run edgeferry reset on this node first"; fi
if [ -d /etc/kubeedge ] && [ -n "$(ls -A /etc/kubeedge 2>/dev/null)" ]; then
	fail "/etc/kubeedge is not empty: run edgeferry reset on this node, or remove it"
fi
[ -S {cri} ] || fail "no CRI socket at {cri}: install and start containerd, or set keadm remote-runtime-endpoint"
command -v systemctl >/dev/null 2>&1 || command -v openrc >/dev/null 2>&1 || fail "neither systemctl nor openrc: keadm needs an init system"
command -v sudo >/dev/null 2>&1 || fail "no sudo: keadm runs 'sudo systemctl ...' even as root; install sudo"
free=$(df -Pk /var/lib 2>/dev/null | awk 'NR==2 {{print $4}}')
[ "${{free:-0}}" -ge {min_kib} ] || fail "only ${{free:-0}} KiB free under /var/lib: free at least {min_mib} MiB"
if command -v curl >/dev/null 2>&1; then
	echo http=curl
	curl -fsS {unverified_curl}-o /dev/null --connect-timeout 5 -m 10 {mirror}/v2/ 2>/dev/null || fail "mirror {mirror}/v2/ does not answer from this node: check --mirror and that edgeferry serve listens there"
	for port in {ports}; do
		# Any answer means the port is reachable; 7 is "could not connect",
		# and a timeout before connecting leaves time_connect at zero. Plain
		# http: curl 7.88 reports time_connect 0 after a failed TLS handshake.
		t=$(curl -s -o /dev/null --connect-timeout 5 -m 5 -w '%{{time_connect}}' http://{cloud}:$port/ 2>/dev/null) && rc=0 || rc=$?
		case $rc:$t in 6:* | 7:* | 28:0.000000) fail "cloudcore {cloud}:$port is unreachable from this node: check the address and firewalls" ;; esac
	done
elif command -v wget >/dev/null 2>&1; then
	echo http=wget
	wget -q {unverified_wget}-T 10 -O /dev/null {mirror}/v2/ || fail "mirror {mirror}/v2/ does not answer from this node: check --mirror and that edgeferry serve listens there"
else
	echo http=none
fi
if [ -n "$fails" ]; then
	echo "preflight: $fails" >&2
	exit 1
fi
echo "preflight: ok"
"#,
        cri = quote(&p.cri_socket),
        mirror = p.mirror.url(),
        // Reachability only, nothing is sent: the mirror's CA is installed
        // by the containerd step, and every transfer after it checks it.
        unverified_curl = if p.mirror.tls() { "-k " } else { "" },
        unverified_wget = if p.mirror.tls() {
            "--no-check-certificate "
        } else {
            ""
        },
        cloud = if p.cloud_host.contains(':') {
            format!("[{}]", p.cloud_host)
        } else {
            p.cloud_host.to_string()
        },
        ports = ports.join(" "),
        min_mib = p.min_free_mib,
        min_kib = p.min_free_mib * 1024,
    )
}

/// Installs the mirror's CA at [`MIRROR_CA_PATH`] (over TLS; nothing for
/// plain HTTP): written only when it differs, an existing file backed up
/// once. The containerd step and the fetch step both run it, so a reset
/// on a node whose CA file is gone still fetches keadm.
pub fn install_ca(mirror: &Mirror) -> String {
    let Some(pem) = &mirror.ca_pem else {
        return String::new();
    };
    format!(
        r#"ca={MIRROR_CA_PATH}
mkdir -p "${{ca%/*}}"
printf '%s' {pem} >"$ca.edgeferry-tmp"
if [ -f "$ca" ] && cmp -s "$ca.edgeferry-tmp" "$ca"; then
	rm -f "$ca.edgeferry-tmp"
else
	if [ -f "$ca" ] && [ ! -e "$ca.before-edgeferry" ]; then cp -p "$ca" "$ca.before-edgeferry"; fi
	chmod 644 "$ca.edgeferry-tmp"
	mv -f "$ca.edgeferry-tmp" "$ca"
	echo "wrote $ca"
fi
"#,
        pem = quote(pem)
    )
}

/// Writes containerd `hosts.toml` files for the mirror, and over TLS the
/// CA file they name. Existing files are backed up once; containerd reads
/// hosts.toml on each pull, so only a changed `config.toml` needs a restart.
pub fn containerd(files: &[HostsFile], mirror: &Mirror) -> String {
    let mut s = String::from(
        "set -eu\nchanged=0\nwrite() {\n\tdir=/etc/containerd/certs.d/$1\n\tmkdir -p \"$dir\"\n\ttmp=$dir/.hosts.toml.edgeferry\n\tprintf '%s' \"$2\" >\"$tmp\"\n\tif [ -f \"$dir/hosts.toml\" ] && cmp -s \"$tmp\" \"$dir/hosts.toml\"; then\n\t\trm -f \"$tmp\"\n\t\treturn\n\tfi\n\tif [ -f \"$dir/hosts.toml\" ] && [ ! -e \"$dir/hosts.toml.before-edgeferry\" ]; then\n\t\tcp -p \"$dir/hosts.toml\" \"$dir/hosts.toml.before-edgeferry\"\n\tfi\n\tmv -f \"$tmp\" \"$dir/hosts.toml\"\n\tchanged=$((changed + 1))\n\techo \"wrote $dir/hosts.toml\"\n}\n",
    );
    s.push_str(&install_ca(mirror));
    for f in files {
        s.push_str(&format!("write {} {}\n", quote(&f.dir), quote(&f.content)));
    }
    s.push_str(concat!(
        "# containerd 1.x ignores certs.d unless config_path points at it.\n",
        "cfg=/etc/containerd/config.toml\n",
        "restart=0\n",
        "if [ -f $cfg ] && ! grep -q 'config_path' $cfg; then\n",
        "\tif grep -q '^\\[plugins.\"io.containerd.grpc.v1.cri\".registry\\]' $cfg; then\n",
        "\t\techo \"$cfg has a registry section without config_path: add config_path = \\\"/etc/containerd/certs.d\\\" to it\" >&2\n",
        "\t\texit 1\n",
        "\tfi\n",
        "\t[ -e $cfg.before-edgeferry ] || cp -p $cfg $cfg.before-edgeferry\n",
        "\tprintf '\\n# Added by edgeferry: read mirrors from certs.d\\n[plugins.\"io.containerd.grpc.v1.cri\".registry]\\n  config_path = \"/etc/containerd/certs.d\"\\n' >>$cfg\n",
        "\trestart=1\n",
        "fi\n",
        "if [ $restart = 1 ] && [ -d /run/systemd/system ] && systemctl is-active --quiet containerd; then\n",
        "\tsystemctl restart containerd\n",
        "\techo 'restarted containerd for config_path'\n",
        "fi\n",
        "echo \"containerd: $changed hosts.toml changed\"\n",
    ));
    s
}

/// The node's keadm directory for a version; `keadm` inside it links to
/// the binary of the node's arch.
pub fn keadm_dir(version: &str) -> String {
    format!("{NODE_DIR}/keadm-{version}")
}

/// Fetches the keadm tarball from the mirror, checks its sha256 against the
/// signed store (on the node, after the transfer), and unpacks keadm.
/// `uploaded`: the control host has already put `<file>.part` there.
pub fn fetch(version: &str, mirror: &Mirror, assets: &[KeadmAsset], uploaded: bool) -> String {
    let dir = keadm_dir(version);
    let mut cases = String::new();
    for a in assets {
        cases.push_str(&format!(
            "{}) file={}; sum={} ;;\n",
            a.arch,
            quote(&a.file),
            a.sha256
        ));
    }
    let download = if uploaded {
        "echo \"using $file uploaded over SSH\"".to_string()
    } else {
        format!(
            r#"{install_ca}if command -v curl >/dev/null 2>&1; then
	curl -fsS {curl_ca}--connect-timeout 10 -o "$d/$file.part" "{url}/files/$file"
elif command -v wget >/dev/null 2>&1; then
	wget -q {wget_ca}-T 30 -O "$d/$file.part" "{url}/files/$file"
else
	echo "no curl or wget on this node: uploading over SSH instead" >&2
	exit {NO_HTTP_CLIENT}
fi"#,
            install_ca = install_ca(mirror),
            url = mirror.url(),
            curl_ca = mirror.curl_ca(),
            wget_ca = mirror.wget_ca(),
        )
    };
    format!(
        r#"set -eu
{ARCH_CASE}
case $arch in
{cases}*) echo "the store has no keadm for ${{arch:-$(uname -m)}}" >&2; exit 1 ;;
esac
d={dir}
mkdir -p "$d" {NODE_DIR}/work
if [ -x "$d/keadm" ] && [ "$(cat "$d/.verified" 2>/dev/null)" = "$sum" ]; then
	echo "keadm {version} already fetched and verified"
	exit 0
fi
{download}
# openssl hashes several times faster than coreutils where it is installed.
if command -v openssl >/dev/null 2>&1; then
	got=$(openssl dgst -sha256 -r "$d/$file.part" | cut -d' ' -f1)
else
	got=$(sha256sum "$d/$file.part" | cut -d' ' -f1)
fi
if [ "$got" != "$sum" ]; then
	rm -f "$d/$file.part"
	echo "$file arrived with sha256 $got but the signed bundle says $sum: the mirror or the network corrupted it; check the mirror's store with edgeferry verify" >&2
	exit 1
fi
top=${{file%.tar.gz}}
# Only the binary and its version file: the tarball may carry more.
tar -xzf "$d/$file.part" -C "$d" "$top/keadm/keadm" "$top/version"
ln -sfn "$top/keadm/keadm" "$d/keadm"
rm -f "$d/$file.part"
echo "$sum" >"$d/.verified"
echo "keadm {version} fetched, sha256 $sum verified"
"#
    )
}

/// Path of `<file>.part` for an upload over SSH (no curl or wget).
pub fn upload_target(version: &str, file: &str) -> String {
    format!(
        "mkdir -p {d} && cat > {d}/{f}.part",
        d = keadm_dir(version),
        f = quote(file)
    )
}

/// Where `keadm join` gets its arguments, one per line: from its stdin
/// (SSH join: the control host sends them over the channel) or from the
/// file named by `$EF_ARGS` (pull mode, where they arrive at run time).
/// Either way they hold the token, so they are never part of a command
/// line: see [`keadm_join`].
#[derive(Clone, Copy)]
pub enum JoinArgs {
    Stdin,
    FromFile,
}

/// The sh that `timeout` runs for `keadm join`: it reads keadm's arguments
/// one per line from its stdin and becomes keadm with `exec`, so they are
/// in keadm's argv only, never in this sh's, `timeout`'s or `sudo`'s.
const BECOME_KEADM: &str =
    r#"while IFS= read -r arg; do set -- "$@" "$arg"; done; exec "$@" </dev/null"#;

/// `keadm join` with a pinned version; stopped by `timeout` on the node so
/// a hung keadm does not linger after we give up.
///
/// The arguments (with the token) reach keadm without ever being on a
/// command line of ours, where every user of the node could read them in
/// `ps`: [`BECOME_KEADM`] reads them and execs keadm. Upstream keadm takes
/// the token only as `--token`, so it is in keadm's own argv while keadm
/// runs; nothing else holds it and no file of ours keeps it.
///
/// Idempotent: preflight saw /etc/kubeedge empty, so if an earlier attempt
/// of ours was cut short, whatever it left belongs to that attempt, and a
/// `keadm reset edge --force` clears it before keadm, which refuses a
/// non-empty /etc/kubeedge, runs again.
pub fn keadm_join(version: &str, args: JoinArgs, timeout_secs: u64) -> String {
    let keadm = format!("{}/keadm", keadm_dir(version));
    let from = match args {
        JoinArgs::Stdin => "",
        JoinArgs::FromFile => " <\"$EF_ARGS\"",
    };
    let become_keadm = quote(BECOME_KEADM);
    format!(
        r#"set -u
cd {NODE_DIR}/work
marker={NODE_DIR}/keadm-join.attempted
if [ -e "$marker" ]; then
	echo "an earlier keadm join attempt did not finish: keadm reset edge --force first"
	{keadm} reset edge --force </dev/null || true
fi
: >"$marker"
if command -v timeout >/dev/null 2>&1; then
	timeout -k 10 {timeout_secs} sh -c {become_keadm} sh {keadm} join{from}
else
	sh -c {become_keadm} sh {keadm} join{from}
fi
rc=$?
[ $rc != 0 ] || rm -f "$marker"
exit $rc
"#
    )
}

/// keadm's arguments as [`JoinArgs`] sends them: one per line.
pub fn args_text(args: &[String]) -> String {
    args.iter().map(|a| format!("{a}\n")).collect()
}

/// `keadm reset edge --force`; `yes` is not needed with --force.
pub fn keadm_reset(version: &str, args: &[String], timeout_secs: u64) -> String {
    let mut cmd = format!("set -- {}/keadm reset edge --force", keadm_dir(version));
    for a in args {
        cmd.push(' ');
        cmd.push_str(&quote(a));
    }
    format!(
        "set -u\nmkdir -p {NODE_DIR}/work\ncd {NODE_DIR}/work\n{cmd}\nif command -v timeout >/dev/null 2>&1; then\n\texec timeout -k 10 {timeout_secs} \"$@\"\nfi\nexec \"$@\"\n"
    )
}

/// What keadm's success means, checked independently: the three TLS files
/// and a running edgecore.
pub fn postcheck() -> String {
    r#"set -u
missing=
for f in /etc/kubeedge/ca/rootCA.crt /etc/kubeedge/certs/server.crt /etc/kubeedge/certs/server.key; do
	[ -s "$f" ] || missing="$missing $f"
done
if [ -d /run/systemd/system ]; then
	systemctl is-active --quiet edgecore && active=1 || active=0
	how="systemctl is-active edgecore"
else
	pidof edgecore >/dev/null 2>&1 && active=1 || active=0
	how="pidof edgecore"
fi
if [ -n "$missing" ] || [ $active = 0 ]; then
	[ $active = 1 ] || echo "--- last lines of the edgecore log" >&2
	[ $active = 1 ] || tail -n 20 /var/log/kubeedge/edgecore.log >&2 2>/dev/null || true
	msg=
	[ -z "$missing" ] || msg="missing cert files:$missing"
	[ $active = 1 ] || msg="${msg:+$msg; }edgecore is not running ($how)"
	echo "postcheck: $msg" >&2
	exit 1
fi
echo "postcheck: certs present, edgecore running"
"#
    .to_string()
}

/// Uploads keadm batch `copyFrom` files (recursive, unlike keadm batch)
/// into the node's keadm working directory: one command per file.
pub fn copy_target(relative: &str, mode: u32) -> String {
    let path = format!("{NODE_DIR}/work/{relative}");
    let dir = path
        .rsplit_once('/')
        .map_or(NODE_DIR.to_string(), |(d, _)| d.to_string());
    format!(
        "mkdir -p {d} && cat > {p}.part && chmod {mode:o} {p}.part && mv -f {p}.part {p}",
        d = quote(&dir),
        p = quote(&path)
    )
}

/// The keadm join arguments for a node, long flags with `=` so each is one
/// word (and one line of [`args_text`]: the join planner refuses a value
/// with a newline); the version is always pinned: without --kubeedge-version keadm
/// asks the internet for the latest release.
pub fn join_args(
    version: &str,
    cloudcore: &str,
    edgenode_name: Option<&str>,
    token: Option<&str>,
    flags: &BTreeMap<String, Vec<String>>,
) -> Vec<String> {
    let mut args = vec![
        format!("--kubeedge-version={version}"),
        format!("--cloudcore-ipport={cloudcore}"),
    ];
    if let Some(name) = edgenode_name {
        args.push(format!("--edgenode-name={name}"));
    }
    for (name, values) in flags {
        for v in values {
            args.push(format!("--{name}={v}"));
        }
    }
    if let Some(t) = token {
        args.push(format!("--token={t}"));
    }
    args
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_survives_sh() {
        let nasty = "a b'c\"$d`e";
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("printf %s {}", quote(nasty)))
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), nasty);
        assert_eq!(quote("--labels=a=b,c=d"), "--labels=a=b,c=d");
    }
}
