//! The POSIX sh each step runs on a node. Plain functions of plain data,
//! so `--dry-run` prints exactly what would run (with secrets redacted).
//!
//! Every script is idempotent: run twice, it does its work once.

use std::collections::BTreeMap;

use super::hosts::{HostsFile, Mirror, Mirrors, MIRROR_CA_PATH, MIRROR_CONNECT_SECS};

/// Where edgeferry keeps its own files on a node. Not under a directory
/// `keadm reset edge` wipes (/etc/kubeedge, /var/lib/kubeedge, /var/log/kubeedge,
/// /var/lib/edged, /var/lib/kubelet).
pub const NODE_DIR: &str = "/var/lib/edgeferry";

/// Exit code of the fetch script when the node has neither curl nor wget,
/// so the control host uploads the tarball over SSH instead.
pub const NO_HTTP_CLIENT: u32 = 10;

/// Exit code of coreutils `timeout` when it stopped the command.
pub const TIMED_OUT: u32 = 124;

/// Exit code of the keadm join script when edgecore logged a fatal
/// certificate error and the script stopped keadm (which would otherwise
/// wait its full 300 s for certificates that cannot come). Its last output
/// line is `edgecore: <edgecore's message>`.
pub const EDGECORE_FAILED: u32 = 12;

/// What edgecore logs (through `klog.Exitf`, then it exits) when it cannot
/// get its certificates: `certmanager.go` in kubeedge/kubeedge, as an
/// extended regular expression.
pub const EDGECORE_FATAL: &str = "failed to validate CA certificate|token credentials are in the wrong format|failed to get CA certificate|failed to get edge certificate";

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
    /// Every image reference the store serves, normalized
    /// ([`super::offer::store_images`]): the node's sandbox image must be
    /// one of them.
    pub store_images: Vec<String>,
    pub cri_socket: String,
    pub mirrors: &'a Mirrors,
    pub cloud_host: &'a str,
    pub cloud_ports: Vec<u16>,
    pub min_free_mib: u64,
}

/// awk over containerd's configuration as `containerd config dump` (or
/// `config default`) prints it, with `'` turned into `"`: prints
/// `KEY|IMAGE|RESTRICT`, where KEY says where the sandbox image was set
/// (`sandbox_image`: containerd 1.x, `[plugins."io.containerd.grpc.v1.cri"]`;
/// `pinned_images`: containerd 2.x,
/// `[plugins.'io.containerd.cri.v1.images'.pinned_images] sandbox`) and
/// RESTRICT is `true` when `restrict_oom_score_adj = true` (1.x: the CRI
/// section; 2.x: `[plugins.'io.containerd.cri.v1.runtime']`).
pub const CONTAINERD_AWK: &str = r#"/^[ \t]*\[/ { sec = $0; gsub(/[ \t]/, "", sec); next }
$2 == "=" && $1 == "sandbox_image" && sec == "[plugins.\"io.containerd.grpc.v1.cri\"]" { key = "sandbox_image"; ref = $3 }
$2 == "=" && $1 == "sandbox" && sec == "[plugins.\"io.containerd.cri.v1.images\".pinned_images]" { key = "pinned_images"; ref = $3 }
$2 == "=" && $1 == "restrict_oom_score_adj" && $3 == "true" { restrict = "true" }
END { gsub(/"/, "", ref); print key "|" ref "|" restrict }"#;

/// sh function `ef_normalize REF`: prints REF normalized as
/// [`edgeferry_bundle::oci::normalize_reference`] does it (docker.io and
/// library/ implied, `:latest` when there is neither tag nor digest), which
/// is how containerd's CRI names the image it pulls. It does not validate:
/// a reference that is not one simply matches nothing in the store.
pub const NORMALIZE_SH: &str = r#"ef_normalize() {
	ref=$1 digest='' tag=''
	case $ref in *@*) digest=@${ref#*@} ref=${ref%%@*} ;; esac
	case ${ref##*/} in *:*) tag=${ref##*:} ref=${ref%:*} ;; esac
	case $ref in
	*/*)
		case ${ref%%/*} in
		*.* | *:* | localhost | *[A-Z]*) ;;
		*) ref=docker.io/$ref ;;
		esac
		;;
	*) ref=docker.io/$ref ;;
	esac
	case $ref in index.docker.io/*) ref=docker.io/${ref#index.docker.io/} ;; esac
	case $ref in docker.io/*/*) ;; docker.io/*) ref=docker.io/library/${ref#docker.io/} ;; esac
	[ -n "$tag" ] || [ -n "$digest" ] || tag=latest
	printf '%s
' "$ref${tag:+:$tag}$digest"
}"#;

/// The store's images a message names as the sandbox images it has: those
/// whose repository is called `pause`, else all of them.
fn sandbox_offer(store_images: &[String]) -> String {
    let pause: Vec<&str> = store_images
        .iter()
        .map(String::as_str)
        .filter(|r| {
            let name = r.split('@').next().unwrap_or(r);
            let repo = match name.rsplit_once(':') {
                Some((repo, tag)) if !tag.contains('/') => repo,
                _ => name,
            };
            repo.rsplit('/').next() == Some("pause")
        })
        .collect();
    match (pause.is_empty(), store_images.is_empty()) {
        (false, _) => pause.join(", "),
        (true, false) => format!("no pause image, only {}", store_images.join(", ")),
        (true, true) => "no images".to_string(),
    }
}

/// The sandbox-image and oom_score_adj part of [`preflight`]: reads
/// containerd's effective configuration (`containerd config dump`; without
/// /etc/containerd/config.toml containerd runs on its built-in defaults,
/// which `containerd config default` prints), else asks the CRI
/// (`crictl info`), and fails when the store lacks the sandbox image, or
/// when root cannot lower oom_score_adj and containerd does not restrict it.
/// When neither containerd nor crictl answers it says so and goes on: the
/// join then names the cause itself. Appends to `fails` through `fail`.
pub fn sandbox_check(store_images: &[String], cri_socket: &str) -> String {
    let images = store_images.join(" ");
    format!(
        r#"{NORMALIZE_SH}
ctd_conf='' ctd_from=''
if command -v containerd >/dev/null 2>&1; then
	if [ -f /etc/containerd/config.toml ]; then
		ctd_conf=$(containerd config dump 2>/dev/null) && ctd_from="containerd config dump"
	else
		ctd_conf=$(containerd config default 2>/dev/null) && ctd_from="containerd config default, no /etc/containerd/config.toml"
	fi
fi
sandbox_key='' sandbox='' restrict=''
if [ -n "$ctd_from" ]; then
	IFS='|' read -r sandbox_key sandbox restrict <<EF_CONF
$(printf '%s
' "$ctd_conf" | tr "'" '"' | awk {awk})
EF_CONF
fi
if [ -z "$sandbox" ] && command -v crictl >/dev/null 2>&1; then
	cri_info=$(timeout 10 crictl --runtime-endpoint unix://{cri} info 2>/dev/null | tr -d ' 	')
	sandbox=$(printf '%s
' "$cri_info" | sed -n 's/^"sandboxImage":"\([^"]*\)".*/\1/p' | head -n 1)
	case $cri_info in *'"restrictOOMScoreAdj":true'*) restrict=true ;; esac
	[ -z "$sandbox" ] || {{ ctd_from="crictl info"; sandbox_key=cri; }}
fi
case $sandbox_key in
sandbox_image) set_how="set sandbox_image in /etc/containerd/config.toml" ;;
pinned_images) set_how="set sandbox under [plugins.'io.containerd.cri.v1.images'.pinned_images] in /etc/containerd/config.toml" ;;
*) set_how="set containerd's sandbox image" ;;
esac
sandbox=$(printf '%s' "$sandbox" | tr -d '
' | cut -c1-300)
if [ -n "$sandbox" ]; then
	sandbox=$(ef_normalize "$sandbox")
	echo "sandbox=$sandbox ($ctd_from)"
	images={images_q}
	case " $images " in
	*" $sandbox "*) ;;
	*) fail "containerd on this node uses sandbox image $sandbox ($ctd_from) but the store has {offer}: load a bundle built with --pause-image $sandbox, or $set_how to one of them" ;;
	esac
else
	echo "sandbox=unknown: neither containerd config dump nor crictl info named containerd's sandbox image; keadm join fails after 20 s if the store lacks it"
fi
# runc writes oom_score_adj -998 for every CRI sandbox; lowering it needs
# CAP_SYS_RESOURCE, unless containerd is told not to ask for it.
if ! (echo -998 >/proc/self/oom_score_adj) 2>/dev/null && [ "$restrict" != true ]; then
	fail "root on this node cannot lower oom_score_adj (no CAP_SYS_RESOURCE, as in some containers and VMs), so runc cannot start keadm's pod sandbox: set restrict_oom_score_adj = true in containerd's CRI runtime section of /etc/containerd/config.toml and restart containerd"
fi"#,
        awk = quote(CONTAINERD_AWK),
        images_q = quote(&images),
        cri = quote(cri_socket),
        offer = sandbox_offer(store_images),
    )
}

/// sh that looks for a site mirror answering `/v2/` from the node, in the
/// node's order, with `$1` the HTTP client (curl or wget): the first that
/// answers is printed as `mirror=<url>`; those before it that do not are
/// named; `fail` is called only when none answers. Reachability only,
/// nothing is sent: the mirror's CA is installed by the containerd step,
/// and every transfer after it checks it.
fn mirror_probe(mirrors: &Mirrors) -> String {
    let tls = mirrors.first().tls();
    let none = if mirrors.site.len() == 1 {
        format!(
            "mirror {}/v2/ does not answer from this node: check --mirror and that edgeferry serve listens there",
            mirrors.first().url()
        )
    } else {
        format!(
            "no site mirror answers /v2/ from this node ({}): check --mirror and that edgeferry serve listens there",
            mirrors.site_urls_sh()
        )
    };
    format!(
        r#"ef_mirror_probe() {{
	mirrors={urls}
	for url in $mirrors; do
		case $1 in
		curl) curl -fsS {unverified_curl}-o /dev/null --connect-timeout {MIRROR_CONNECT_SECS} -m 10 "$url/v2/" 2>/dev/null ;;
		*) wget -q {unverified_wget}-T 10 -O /dev/null "$url/v2/" ;;
		esac && {{ echo "mirror=$url"; return 0; }}
		echo "mirror $url/v2/ does not answer from this node"
	done
	fail {none}
}}"#,
        urls = quote(&mirrors.site_urls_sh()),
        unverified_curl = if tls { "-k " } else { "" },
        unverified_wget = if tls { "--no-check-certificate " } else { "" },
        none = quote(&none),
    )
}

/// Checks everything keadm would trip over, and a few things it would not
/// notice until too late. Prints `arch=<arch>`, `sandbox=<image>` and
/// `http=<client>` for the control host and the node's log; reports every
/// failure, not just the first, on one line.
pub fn preflight(p: &PreflightParams) -> String {
    let arches = p.store_arches.join(" ");
    let sandbox = sandbox_check(&p.store_images, &p.cri_socket);
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
	arches={arches_q}
	case " $arches " in
	*" $arch "*) ;;
	*) fail "node is $arch but the store has only $arches: load the linux-$arch bundle" ;;
	esac
fi
if pidof edgecore >/dev/null 2>&1; then fail "edgecore is already running: run edgeferry reset on this node first"; fi
if [ -d /etc/kubeedge ] && [ -n "$(ls -A /etc/kubeedge 2>/dev/null)" ]; then
	fail "/etc/kubeedge is not empty: run edgeferry reset on this node, or remove it"
fi
[ -S {cri} ] || fail "no CRI socket at {cri}: install and start containerd, or set keadm remote-runtime-endpoint"
command -v systemctl >/dev/null 2>&1 || command -v openrc >/dev/null 2>&1 || fail "neither systemctl nor openrc: keadm needs an init system"
command -v sudo >/dev/null 2>&1 || fail "no sudo: keadm runs 'sudo systemctl ...' even as root; install sudo"
{sandbox}
{probe}
free=$(df -Pk /var/lib 2>/dev/null | awk 'NR==2 {{print $4}}')
[ "${{free:-0}}" -ge {min_kib} ] || fail "only ${{free:-0}} KiB free under /var/lib: free at least {min_mib} MiB"
if command -v curl >/dev/null 2>&1; then
	echo http=curl
	ef_mirror_probe curl
	for port in {ports}; do
		# Any answer means the port is reachable; 7 is "could not connect",
		# and a timeout before connecting leaves time_connect at zero. Plain
		# http: curl 7.88 reports time_connect 0 after a failed TLS handshake.
		t=$(curl -s -o /dev/null --connect-timeout 5 -m 5 -w '%{{time_connect}}' http://{cloud}:$port/ 2>/dev/null) && rc=0 || rc=$?
		case $rc:$t in 6:* | 7:* | 28:0.000000) fail "cloudcore {cloud}:$port is unreachable from this node: check the address and firewalls" ;; esac
	done
elif command -v wget >/dev/null 2>&1; then
	echo http=wget
	ef_mirror_probe wget
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
        probe = mirror_probe(p.mirrors),
        arches_q = quote(&arches),
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

/// Fetches the keadm tarball from the site mirrors, in the node's order
/// (the next one when a mirror does not answer within
/// [`MIRROR_CONNECT_SECS`] or fails mid-transfer, each starting over), checks
/// its sha256 against the signed store (on the node, after the transfer),
/// and unpacks keadm. `uploaded`: the control host has already put
/// `<file>.part` there.
pub fn fetch(version: &str, mirrors: &Mirrors, assets: &[KeadmAsset], uploaded: bool) -> String {
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
    let first = mirrors.first();
    let download = if uploaded {
        "echo \"using $file uploaded over SSH\"".to_string()
    } else {
        format!(
            r#"{install_ca}if command -v curl >/dev/null 2>&1; then
	get() {{ curl -fsS {curl_ca}--connect-timeout {MIRROR_CONNECT_SECS} -o "$d/$file.part" "$1/files/$file"; }}
elif command -v wget >/dev/null 2>&1; then
	get() {{ wget -q {wget_ca}-T 30 -O "$d/$file.part" "$1/files/$file"; }}
else
	echo "no curl or wget on this node: uploading over SSH instead" >&2
	exit {NO_HTTP_CLIENT}
fi
fetched=
mirrors={urls}
for url in $mirrors; do
	if get "$url"; then
		fetched=$url
		break
	fi
	echo "mirror $url: $file not fetched, trying the next mirror" >&2
done
[ -n "$fetched" ] || {{
	rm -f "$d/$file.part"
	echo "no site mirror served $file ($mirrors)" >&2
	exit 1
}}
echo "fetched $file from $fetched""#,
            install_ca = install_ca(first),
            urls = quote(&mirrors.site_urls_sh()),
            curl_ca = first.curl_ca(),
            wget_ca = first.wget_ca(),
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
    // An asynchronous command's stdin is /dev/null unless redirected, so
    // the arguments on our stdin go to keadm through fd 4.
    let from = match args {
        JoinArgs::Stdin => " <&4",
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
# keadm waits up to 300 s for the certificates edgecore fetches; edgecore
# gives up at once on a bad token or CA and says so in its log. Watch that
# log while keadm runs, and stop keadm when edgecore has failed.
rc_file={NODE_DIR}/work/keadm-join.rc
rm -f "$rc_file" "$rc_file.pid"
log={EDGECORE_LOG}
started=$(date +%s)
exec 4<&0
(
	if command -v timeout >/dev/null 2>&1; then
		timeout -k 10 {timeout_secs} sh -c {become_keadm} sh {keadm} join{from} &
	else
		sh -c {become_keadm} sh {keadm} join{from} &
	fi
	echo $! >"$rc_file.pid"
	wait $!
	echo $? >"$rc_file.part" && mv -f "$rc_file.part" "$rc_file"
) &
exec 4<&-
stop_keadm() {{
	pid=$(cat "$rc_file.pid" 2>/dev/null) && kill "$pid" 2>/dev/null
}}
trap 'stop_keadm; exit 143' HUP INT TERM
fatal=
while [ ! -e "$rc_file" ]; do
	if [ -d /run/systemd/system ] && command -v journalctl >/dev/null 2>&1; then
		fatal=$(journalctl -u edgecore -o cat --no-pager --since "@$started" 2>/dev/null | grep -E '{EDGECORE_FATAL}' | head -n 1)
	elif [ "$(stat -c %Y "$log" 2>/dev/null || echo 0)" -ge "$started" ]; then
		# keadm truncates the log when it starts edgecore: a log not
		# written since we began is an older attempt's.
		fatal=$(grep -E '{EDGECORE_FATAL}' "$log" 2>/dev/null | head -n 1)
	fi
	if [ -n "$fatal" ]; then
		stop_keadm
		break
	fi
	sleep 1
done
wait
rc=$(cat "$rc_file" 2>/dev/null) || rc=1
rm -f "$rc_file" "$rc_file.pid"
if [ -n "$fatal" ]; then
	# klog's prefix ("F1202 16:01:02.000000  1234 certmanager.go:104] ") off.
	echo "edgecore: ${{fatal#*\] }}" >&2
	exit {EDGECORE_FAILED}
fi
[ "$rc" != 0 ] || rm -f "$marker"
exit "$rc"
"#
    )
}

/// keadm's arguments as [`JoinArgs`] sends them: one per line.
pub fn args_text(args: &[String]) -> String {
    args.iter().map(|a| format!("{a}\n")).collect()
}

/// `keadm reset edge --force`; `yes` is not needed with --force.
pub fn keadm_reset(version: &str, args: &[String], timeout_secs: u64) -> String {
    let mut all = vec!["reset".to_string(), "edge".into(), "--force".into()];
    all.extend(args.iter().cloned());
    keadm_run(version, &all, "", timeout_secs)
}

/// Runs the version's keadm with `args` in the node's keadm working
/// directory, stopped by `timeout` on the node. `before` is sh run first
/// (it may `set --` more arguments, which are appended).
fn keadm_run(version: &str, args: &[String], before: &str, timeout_secs: u64) -> String {
    let mut cmd = format!("set -- {}/keadm", keadm_dir(version));
    for a in args {
        cmd.push(' ');
        cmd.push_str(&quote(a));
    }
    format!(
        "set -u\nmkdir -p {NODE_DIR}/work\ncd {NODE_DIR}/work\n{before}{cmd} \"$@\"\nif command -v timeout >/dev/null 2>&1; then\n\texec timeout -k 10 {timeout_secs} \"$@\"\nfi\nexec \"$@\"\n"
    )
}

/// Where the upgrade preflight records the version a node ran before the
/// upgrade, for `keadm rollback edge --historical-version` and the check
/// after it (the control host may be a different run by then).
/// How long a postcheck waits for edgecore to appear at all: without
/// systemd keadm starts it in the background (`edgecore > log 2>&1 &`) and
/// returns, and on a busy node the process may not have exec'd yet (seen
/// once in 50 stand-in upgrades at load 11).
const START_GRACE_SECS: u32 = 3;

pub const UPGRADE_FROM: &str = "/var/lib/edgeferry/upgrade-from";

/// sh function `ef_edgecore_version`: prints the version edgecore reports
/// (`KubeEdge v1.23.1`, Kubernetes' version printer), or nothing.
pub const EDGECORE_VERSION_SH: &str = r#"ef_edgecore_version() {
	bin=$(command -v edgecore 2>/dev/null) || bin=/usr/local/bin/edgecore
	[ -x "$bin" ] || return 0
	"$bin" --version 2>/dev/null | sed -n 's/^KubeEdge \(v[0-9][0-9A-Za-z.+-]*\).*/\1/p' | head -n 1
}"#;

/// sh that exits 0 when edgecore runs (systemd's unit, else `pidof`).
const EDGECORE_RUNS: &str = "if [ -d /run/systemd/system ] && systemctl cat edgecore >/dev/null 2>&1; then systemctl is-active --quiet edgecore; else pidof edgecore >/dev/null 2>&1; fi";

pub struct UpgradePreflightParams<'a> {
    pub to: &'a str,
    pub store_arches: Vec<String>,
    pub mirrors: &'a Mirrors,
    pub min_free_mib: u64,
}

/// Before an upgrade: the node's arch is one the store has, edgecore is
/// installed and running and says its version, there is disk, the mirror
/// answers. Prints `arch=`, `version=`; records the version in
/// [`UPGRADE_FROM`] unless it is the target. The control host applies the
/// version rules (`node::upgrade::judge`).
pub fn upgrade_preflight(p: &UpgradePreflightParams) -> String {
    let arches = p.store_arches.join(" ");
    format!(
        r#"set -u
fails=
fail() {{ fails="${{fails:+$fails; }}$1"; }}
{ARCH_CASE}
echo "arch=${{arch:-$(uname -m)}}"
arches={arches_q}
case " $arches " in
*" ${{arch:-none}} "*) ;;
*) fail "node is ${{arch:-$(uname -m)}} but the store has KubeEdge {to} only for {arches}: load the linux-${{arch:-$(uname -m)}} bundle" ;;
esac
{EDGECORE_VERSION_SH}
ver=$(ef_edgecore_version)
if [ -z "$ver" ]; then
	fail "edgecore is not installed or does not say its version (edgecore --version): join this node first"
else
	echo "version=$ver"
	{EDGECORE_RUNS} || fail "edgecore $ver is installed but not running: fix the node (or join it again) before upgrading"
fi
free=$(df -Pk /var/lib 2>/dev/null | awk 'NR==2 {{print $4}}')
[ "${{free:-0}}" -ge {min_kib} ] || fail "only ${{free:-0}} KiB free under /var/lib: free at least {min_mib} MiB for the backup and the new images"
{probe}
if command -v curl >/dev/null 2>&1; then
	ef_mirror_probe curl
fi
if [ -n "$fails" ]; then
	echo "preflight: $fails" >&2
	exit 1
fi
if [ "$ver" != {to} ]; then
	mkdir -p {NODE_DIR}
	echo "$ver" >{UPGRADE_FROM}.part && mv -f {UPGRADE_FROM}.part {UPGRADE_FROM}
fi
echo "preflight: ok"
"#,
        to = quote(p.to),
        probe = mirror_probe(p.mirrors),
        arches_q = quote(&arches),
        min_mib = p.min_free_mib,
        min_kib = p.min_free_mib * 1024,
    )
}

/// `keadm backup edge`, with the target version's keadm.
pub fn keadm_backup(version: &str, timeout_secs: u64) -> String {
    keadm_run(version, &["backup".into(), "edge".into()], "", timeout_secs)
}

pub struct KeadmUpgradeParams<'a> {
    pub to: &'a str,
    /// The installation-package repository, e.g.
    /// `docker.io/kubeedge/installation-package`.
    pub image: &'a str,
    /// Arch -> the installation-package manifest digest for it, from the
    /// signed store; empty when the version's keadm has no `--image-digest`.
    pub digests: &'a BTreeMap<String, String>,
    pub timeout_secs: u64,
}

/// `keadm upgrade edge --toVersion … --image … [--image-digest <the
/// manifest digest for this node's arch>] --force`.
pub fn keadm_upgrade(p: &KeadmUpgradeParams) -> String {
    let args: Vec<String> = [
        "upgrade",
        "edge",
        "--toVersion",
        p.to,
        "--image",
        p.image,
        "--force",
    ]
    .map(String::from)
    .to_vec();
    let before = if p.digests.is_empty() {
        String::new()
    } else {
        let mut cases = String::new();
        for (arch, digest) in p.digests {
            cases.push_str(&format!("{arch}) digest={} ;;\n", quote(digest)));
        }
        format!(
            "{ARCH_CASE}\ncase $arch in\n{cases}*) echo \"the store has no installation-package {to} for ${{arch:-$(uname -m)}}\" >&2; exit 1 ;;\nesac\nset -- --image-digest \"$digest\"\n",
            to = p.to
        )
    };
    keadm_run(p.to, &args, &before, p.timeout_secs)
}

/// `keadm rollback edge --historical-version <the version before>`.
pub fn keadm_rollback(version: &str, timeout_secs: u64) -> String {
    let before = format!(
        "from=$(cat {UPGRADE_FROM} 2>/dev/null) || {{ echo \"no {UPGRADE_FROM}: the preflight did not record the version to roll back to\" >&2; exit 1; }}\nset -- --historical-version \"$from\"\n"
    );
    keadm_run(
        version,
        &["rollback".into(), "edge".into()],
        &before,
        timeout_secs,
    )
}

/// The check after an upgrade (`want`: the target) or a rollback (`want`:
/// `None`, the version [`UPGRADE_FROM`] recorded): edgecore reports that
/// version, then everything the join's [`postcheck`] checks. Prints
/// `version=`.
pub fn version_postcheck(want: Option<&str>, p: &PostcheckParams) -> String {
    let want = match want {
        Some(v) => quote(v),
        None => format!("$(cat {UPGRADE_FROM} 2>/dev/null)"),
    };
    format!(
        r#"{EDGECORE_VERSION_SH}
want={want}
ver=$(ef_edgecore_version)
echo "version=${{ver:-unknown}}"
if [ -z "$want" ] || [ "$ver" != "$want" ]; then
	echo "postcheck: edgecore reports ${{ver:-no version}}, not ${{want:-the recorded version}}" >&2
	exit 1
fi
{}"#,
        postcheck(p)
    )
}

/// Where keadm sends edgecore's output when no systemd runs it (under
/// systemd it goes to the journal, `journalctl -u edgecore`).
pub const EDGECORE_LOG: &str = "/var/log/kubeedge/edgecore.log";

/// Where keadm writes edgecore's configuration, with the join token in
/// clear (`modules.edgeHub.token`, upstream's behaviour): the postcheck
/// makes it 0600 and root's.
pub const EDGECORE_YAML: &str = "/etc/kubeedge/config/edgecore.yaml";

/// How edgecore reaches cloudcore's hub (keadm's `--hub-protocol`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HubProtocol {
    /// TCP (TLS + websocket): the connection is visible in /proc/net/tcp.
    Websocket,
    /// UDP: edgecore's QUIC socket is not connected, so there is no
    /// established connection to look for.
    Quic,
}

pub struct PostcheckParams<'a> {
    /// cloudcore's address as the node's keadm gets it (an IP or a name).
    pub cloud_host: &'a str,
    /// The hub port (`--cloudcore-ipport`'s port).
    pub hub_port: u16,
    pub hub: HubProtocol,
    /// edgecore must still run (and hold its hub connection) this long
    /// after keadm said the join was complete.
    pub settle_secs: u64,
    /// After the settle time, how long a not yet connected edgecore may
    /// take to connect.
    pub connect_grace_secs: u64,
}

/// `ADDR:PORT` patterns for the hub in /proc/net/tcp and tcp6 notation
/// (each 32-bit word of the address in the kernel's byte order, which is
/// little-endian on every arch KubeEdge supports), or only `:PORT` when the
/// cloud address is a name the node resolves itself.
pub fn proc_net_patterns(cloud_host: &str, port: u16) -> Vec<String> {
    let word = |b: [u8; 4]| format!("{:08X}", u32::from_le_bytes(b));
    let v6 = |o: [u8; 16]| {
        o.chunks(4)
            .map(|c| word([c[0], c[1], c[2], c[3]]))
            .collect::<String>()
    };
    let host = cloud_host.trim_start_matches('[').trim_end_matches(']');
    match host.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V4(ip)) => vec![
            format!("{}:{port:04X}", word(ip.octets())),
            format!("{}:{port:04X}", v6(ip.to_ipv6_mapped().octets())),
        ],
        Ok(std::net::IpAddr::V6(ip)) => vec![format!("{}:{port:04X}", v6(ip.octets()))],
        Err(_) => vec![format!(":{port:04X}")],
    }
}

/// What keadm's success means, checked independently and made to last:
/// the three TLS files, edgecore.yaml private to root (it holds the
/// token), and edgecore still running after a settle time with an
/// established connection to cloudcore's hub port, held by edgecore or a
/// process it started. Real edgecore with certificates but no cloud to
/// register with connects and then exits about 17 s later, after keadm
/// has already said "Install Complete!".
///
/// Prints `hostname=<name>` (keadm's default node name), `fixed=<what>`
/// for what it repaired, and `hub=<state>` for the report.
pub fn postcheck(p: &PostcheckParams) -> String {
    let patterns = proc_net_patterns(p.cloud_host, p.hub_port).join(" ");
    let hub = format!(
        "{}:{}",
        if p.cloud_host.contains(':') && !p.cloud_host.starts_with('[') {
            format!("[{}]", p.cloud_host)
        } else {
            p.cloud_host.to_string()
        },
        p.hub_port
    );
    let check_hub = match p.hub {
        HubProtocol::Websocket => 1,
        HubProtocol::Quic => 0,
    };
    format!(
        r#"set -u
cfg={EDGECORE_YAML}
hub={hub}
check_hub={check_hub}
missing=
for f in /etc/kubeedge/ca/rootCA.crt /etc/kubeedge/certs/server.crt /etc/kubeedge/certs/server.key; do
	[ -s "$f" ] || missing="$missing $f"
done
if [ -n "$missing" ]; then
	echo "postcheck: missing cert files:$missing" >&2
	exit 1
fi
echo "hostname=$(uname -n | tr 'A-Z' 'a-z')"
# keadm writes the join token into edgecore.yaml in clear: keep it root's.
if [ -f "$cfg" ]; then
	was=$(stat -c '%a %u:%g' "$cfg")
	if [ "$was" != "600 0:0" ]; then
		chown 0:0 "$cfg" && chmod 600 "$cfg" || {{
			echo "postcheck: $cfg (it holds the join token) is mode ${{was% *}}, owner ${{was#* }}, and could not be made 0600 root" >&2
			exit 1
		}}
		echo "fixed=$cfg was mode ${{was% *}} owner ${{was#* }}, now 600 root:root"
	fi
fi
if [ -d /run/systemd/system ]; then
	how="systemctl is-active edgecore"
	pids() {{ systemctl is-active --quiet edgecore && systemctl show -p MainPID --value edgecore; }}
else
	how="pidof edgecore"
	pids() {{ pidof edgecore; }}
fi
# The pids of edgecore and every process under it.
tree() {{
	awk -v roots="$*" 'BEGIN {{ n = split(roots, r, " "); for (i = 1; i <= n; i++) keep[r[i]] = 1 }}
	{{ f = FILENAME; sub(/^\/proc\//, "", f); sub(/\/stat$/, "", f); s = $0; sub(/^.*\) /, "", s); split(s, a, " "); parent[f] = a[2] }}
	END {{ do {{ c = 0; for (p in parent) if (!(p in keep) && (parent[p] in keep)) {{ keep[p] = 1; c = 1 }} }} while (c); for (p in keep) print p }}' /proc/[0-9]*/stat 2>/dev/null
}}
# Succeeds when a process of that tree holds an established TCP connection
# to the hub (state 01 in /proc/net/tcp, matched by socket inode).
connected() {{
	inodes=$(for p in $(tree "$@"); do ls -l /proc/"$p"/fd 2>/dev/null; done | sed -n 's/.*socket:\[\([0-9]*\)\].*/\1/p' | tr '\n' ' ')
	[ -n "$inodes" ] || return 1
	cat /proc/net/tcp /proc/net/tcp6 2>/dev/null | awk -v want="{patterns}" -v inodes=" $inodes" '
	BEGIN {{ n = split(want, w, " ") }}
	$4 == "01" && index(inodes, " " $10 " ") {{ for (i = 1; i <= n; i++) if (substr($3, length($3) - length(w[i]) + 1) == w[i]) found = 1 }}
	END {{ exit !found }}'
}}
settle={settle}
limit=$((settle + {grace}))
waited=0
seen=0
ran=0
while :; do
	running=$(pids 2>/dev/null | tr '\n' ' ')
	case $running in *[0-9]*) ran=1 ;; *) running= ;; esac
	# Without systemd keadm starts edgecore in the background and returns:
	# on a busy node it may not have exec'd yet. Give it {START_GRACE_SECS}s to appear.
	if [ -z "$running" ] && [ $ran = 0 ] && [ $waited -lt {START_GRACE_SECS} ]; then
		sleep 1
		waited=$((waited + 1))
		continue
	fi
	if [ -z "$running" ]; then
		echo "--- last lines of the edgecore log" >&2
		if [ -d /run/systemd/system ]; then
			journalctl -u edgecore -n 20 --no-pager >&2 2>/dev/null || true
		else
			tail -n 20 {EDGECORE_LOG} >&2 2>/dev/null || true
		fi
		if [ $ran = 0 ]; then
			echo "postcheck: edgecore is not running ($how)" >&2
		else
			echo "postcheck: edgecore exited ${{waited}}s into the ${{settle}}s settle time after keadm's success ($how): see the edgecore log" >&2
		fi
		exit 1
	fi
	now=0
	if [ "$check_hub" = 1 ]; then
		# shellcheck disable=SC2086
		if connected $running; then now=1; seen=1; fi
	else
		now=1
	fi
	if [ $waited -ge $settle ] && [ $now = 1 ]; then break; fi
	if [ $waited -ge $limit ]; then
		if [ $seen = 1 ]; then
			echo "postcheck: edgecore runs but dropped its connection to cloudcore's hub $hub: check cloudcore and the node's edgecore log" >&2
		else
			echo "postcheck: edgecore runs but never connected to cloudcore's hub $hub within ${{limit}}s: check the cloudcore address, the hub port and firewalls" >&2
		fi
		exit 1
	fi
	sleep 1
	waited=$((waited + 1))
done
if [ "$check_hub" = 1 ]; then
	echo "hub=connected to $hub"
	echo "postcheck: certs present, edgecore running for ${{waited}}s and connected to cloudcore's hub $hub"
else
	echo "hub=not checked (quic)"
	echo "postcheck: certs present, edgecore running for ${{waited}}s (hub over quic: its connection is not visible in /proc/net)"
fi
"#,
        hub = quote(&hub),
        settle = p.settle_secs,
        grace = p.connect_grace_secs,
    )
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

/// What starts every line the step pipeline prints about itself: an ASCII
/// record separator, then `EF` and the batch's nonce (so a step's own
/// output cannot end a step by accident). See [`pipeline`].
pub const PIPE_MARK: &str = "\x1eEF";

/// One step inside a [`pipeline`]: its command exactly as it would run
/// alone, and whether it reads the channel's stdin (keadm join's
/// arguments); every other step reads /dev/null.
pub struct PipeStep<'a> {
    pub command: &'a str,
    pub stdin: bool,
}

/// Several steps in one SSH command, so a node costs one channel (one
/// login shell, one PAM session) instead of one per step. Each step runs
/// exactly as it would alone, its stderr merged into stdout so its output
/// stays in order, between two marker lines:
/// `<PIPE_MARK><nonce>:<i>:start` and `<PIPE_MARK><nonce>:<i>:end:<rc>`.
/// The first step to exit non-zero ends the pipeline: the control host
/// decides what happens next, as it would after that step alone.
pub fn pipeline(nonce: &str, steps: &[PipeStep]) -> String {
    let mut sh = format!("m() {{ printf '\\036EF{nonce}:%s\\n' \"$1\"; }}\n");
    for (i, st) in steps.iter().enumerate() {
        let input = if st.stdin { "" } else { " </dev/null" };
        sh.push_str(&format!(
            "m {i}:start\n{{ {}\n}}{input} 2>&1\nrc=$?\nm \"{i}:end:$rc\"\n[ \"$rc\" = 0 ] || exit 0\n",
            st.command
        ));
    }
    format!("sh -c {}", quote(&sh))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hub_patterns_are_proc_net_notation() {
        assert_eq!(
            proc_net_patterns("127.0.0.1", 10000),
            ["0100007F:2710", "0000000000000000FFFF00000100007F:2710"]
        );
        assert_eq!(
            proc_net_patterns("[::1]", 10000),
            ["00000000000000000000000001000000:2710"]
        );
        assert_eq!(proc_net_patterns("cloud.example", 443), [":01BB"]);
    }

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

    const DUMP_1_6: &str = include_str!("testdata/containerd-1.6.20-config-default.toml");
    const DUMP_2_0: &str = include_str!("testdata/containerd-2.0-config-dump.toml");

    fn sh(script: &str) -> String {
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(script)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{script}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// The awk, as preflight runs it, over a dump.
    fn parse(dump: &str) -> String {
        sh(&format!(
            "printf '%s\\n' {} | tr \"'\" '\"' | awk {}",
            quote(dump),
            quote(CONTAINERD_AWK)
        ))
        .trim_end()
        .to_string()
    }

    #[test]
    fn sandbox_image_is_read_from_containerd_1_and_2_dumps() {
        assert_eq!(parse(DUMP_1_6), "sandbox_image|registry.k8s.io/pause:3.6|");
        assert_eq!(parse(DUMP_2_0), "pinned_images|registry.k8s.io/pause:3.10|");
        let changed = DUMP_1_6
            .replace(
                "restrict_oom_score_adj = false",
                "restrict_oom_score_adj = true",
            )
            .replace("pause:3.6", "pause:3.5");
        assert_eq!(
            parse(&changed),
            "sandbox_image|registry.k8s.io/pause:3.5|true"
        );
        let changed = DUMP_2_0
            .replace(
                "restrict_oom_score_adj = false",
                "restrict_oom_score_adj = true",
            )
            .replace("'registry.k8s.io/pause:3.10'", "'easzlab/pause:3.9'");
        assert_eq!(parse(&changed), "pinned_images|easzlab/pause:3.9|true");
        // A key of the same name elsewhere is not the sandbox image.
        assert_eq!(
            parse("[plugins.\"other\"]\n  sandbox_image = \"x:1\"\n  sandbox = 'y:1'\n"),
            "||"
        );
    }

    #[test]
    fn sh_normalizes_references_as_bundle_oci_does() {
        let refs = [
            "registry.k8s.io/pause:3.6",
            "pause:3.9",
            "pause",
            "easzlab/pause:3.9",
            "docker.io/pause:3.1",
            "index.docker.io/kubeedge/pause:3.6",
            "localhost/pause:1",
            "localhost:5000/pause",
            "10.0.0.5:5000/kubeedge/pause:3.6",
            "registry.k8s.io/pause@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
            "registry.k8s.io/pause:3.10@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
            "[fd00::1]:5000/pause:3.6",
        ];
        let mut script = format!("{NORMALIZE_SH}\n");
        for r in refs {
            script.push_str(&format!("ef_normalize {}\n", quote(r)));
        }
        let got = sh(&script);
        let want: Vec<String> = refs
            .iter()
            .map(|r| edgeferry_bundle::oci::normalize_reference(r).unwrap())
            .collect();
        assert_eq!(got.lines().collect::<Vec<_>>(), want);
    }

    /// [`sandbox_check`] with a fake `containerd` that prints `dump`.
    fn run_sandbox_check(dump: &str, store: &[&str]) -> String {
        run_with_fakes(
            &[("containerd", format!("cat <<'EOF'\n{dump}\nEOF"))],
            store,
        )
    }

    /// [`sandbox_check`] with fake commands (name, sh body) first in PATH.
    fn run_with_fakes(fakes: &[(&str, String)], store: &[&str]) -> String {
        let dir = tempfile::tempdir().unwrap();
        for (name, body) in fakes {
            let fake = dir.path().join(name);
            std::fs::write(&fake, format!("#!/bin/sh\n{body}\n")).unwrap();
            std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755))
                .unwrap();
        }
        let store: Vec<String> = store.iter().map(|s| s.to_string()).collect();
        let script = format!(
            "PATH={}:$PATH\nfails=\nfail() {{ fails=\"${{fails:+$fails; }}$1\"; }}\n{}\necho \"fails=$fails\"\n",
            dir.path().display(),
            sandbox_check(&store, "/run/containerd/containerd.sock")
        );
        super::super::steps::assert_valid_sh(&script);
        sh(&script)
    }

    #[test]
    fn sandbox_check_names_both_images_and_the_remedy() {
        let store = [
            "docker.io/kubeedge/installation-package:v1.23.1",
            "registry.k8s.io/pause:3.6",
            "registry.k8s.io/pause:3.10",
        ];
        let restricted = DUMP_1_6.replace(
            "restrict_oom_score_adj = false",
            "restrict_oom_score_adj = true",
        );
        let out = run_sandbox_check(&restricted, &store);
        assert!(
            out.contains("sandbox=registry.k8s.io/pause:3.6 (containerd config"),
            "{out}"
        );
        assert!(out.ends_with("fails=\n"), "{out}");

        let out = run_sandbox_check(&restricted.replace("pause:3.6", "pause:3.5"), &store);
        assert!(out.contains(
            "fails=containerd on this node uses sandbox image registry.k8s.io/pause:3.5 (containerd config"
        ), "{out}");
        assert!(out.contains(
            " but the store has registry.k8s.io/pause:3.6, registry.k8s.io/pause:3.10: load a bundle built with --pause-image registry.k8s.io/pause:3.5, or set sandbox_image in /etc/containerd/config.toml to one of them\n"
        ), "{out}");

        let restricted = DUMP_2_0
            .replace(
                "restrict_oom_score_adj = false",
                "restrict_oom_score_adj = true",
            )
            .replace("'registry.k8s.io/pause:3.10'", "'pause:3.9'");
        let out = run_sandbox_check(&restricted, &store);
        assert!(
            out.contains("uses sandbox image docker.io/library/pause:3.9 (containerd config"),
            "{out}"
        );
        assert!(out.contains(
            "or set sandbox under [plugins.'io.containerd.cri.v1.images'.pinned_images] in /etc/containerd/config.toml to one of them"
        ), "{out}");
    }

    #[test]
    fn crictl_info_answers_when_containerd_cannot() {
        let info = r#"{
  "config": {
    "sandboxImage": "registry.k8s.io/pause:3.9",
    "restrictOOMScoreAdj": true
  }
}"#;
        let out = run_with_fakes(
            &[
                ("containerd", "exit 1".to_string()),
                ("crictl", format!("cat <<'EOF'\n{info}\nEOF")),
            ],
            &["registry.k8s.io/pause:3.6"],
        );
        assert!(
            out.contains("sandbox=registry.k8s.io/pause:3.9 (crictl info)\n"),
            "{out}"
        );
        assert!(
            out.ends_with(
                "fails=containerd on this node uses sandbox image registry.k8s.io/pause:3.9 (crictl info) \
                 but the store has registry.k8s.io/pause:3.6: load a bundle built with --pause-image \
                 registry.k8s.io/pause:3.9, or set containerd's sandbox image to one of them\n"
            ),
            "{out}"
        );
        // Neither answers: said in the log, not a failure (restrict unknown,
        // so only the oom_score_adj check may fail).
        let out = run_with_fakes(
            &[
                ("containerd", "exit 1".to_string()),
                ("crictl", "exit 1".to_string()),
            ],
            &["registry.k8s.io/pause:3.6"],
        );
        assert!(out.starts_with("sandbox=unknown: "), "{out}");
        assert!(!out.contains("uses sandbox image"), "{out}");
    }

    /// Whether root here may lower oom_score_adj (CAP_SYS_RESOURCE).
    fn can_lower_oom_score_adj() -> bool {
        std::process::Command::new("sh")
            .args(["-c", "(echo -998 >/proc/self/oom_score_adj) 2>/dev/null"])
            .status()
            .unwrap()
            .success()
    }

    #[test]
    fn oom_score_adj_fails_by_name_only_without_the_capability_and_restrict() {
        let store = ["registry.k8s.io/pause:3.6"];
        let out = run_sandbox_check(DUMP_1_6, &store);
        let refused = out.contains(
            "fails=root on this node cannot lower oom_score_adj (no CAP_SYS_RESOURCE, as in some containers and VMs), so runc cannot start keadm's pod sandbox: set restrict_oom_score_adj = true",
        );
        assert_eq!(refused, !can_lower_oom_score_adj(), "{out}");
        // With restrict_oom_score_adj = true it passes either way.
        let out = run_sandbox_check(
            &DUMP_1_6.replace(
                "restrict_oom_score_adj = false",
                "restrict_oom_score_adj = true",
            ),
            &store,
        );
        assert!(out.ends_with("fails=\n"), "{out}");
    }
}
