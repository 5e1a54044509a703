//! The command line: every command, flag and `--help` text. `main.rs`
//! parses it and maps results to exit codes; the commands live in the
//! library's modules.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

pub const EXAMPLES: &str = "\
Examples:
  # Check a bundle's signed manifest and every entry without writing anything
  edgeferry verify /media/usb/edgeferry-kubeedge-v1.23.1-linux-arm64.tar.zst --key edgeferry.pub
  # ... and that the file is byte for byte the one signed (its .minisig beside it)
  edgeferry verify /media/usb/edgeferry-kubeedge-v1.23.1-linux-arm64.tar.zst --key edgeferry.pub --whole-file

  # Verify and load in one pass; several bundles merge into one store
  edgeferry load /media/usb/edgeferry-kubeedge-v1.23.1-linux-arm64.tar.zst --key edgeferry.pub --store /srv/edgeferry
  edgeferry load /media/usb/ --key edgeferry.pub --store /srv/edgeferry     # a directory of volumes

  edgeferry store list --store /srv/edgeferry
  edgeferry store check --store /srv/edgeferry   # hash every blob and file

  # What is inside a bundle (verified first), and what the site already has
  edgeferry inspect /media/usb/edgeferry-kubeedge-v1.23.1-linux-arm64.tar.zst --key edgeferry.pub
  edgeferry store inventory --store /srv/edgeferry -o /media/usb/site-a.inventory.json

Exit codes:
  0  success
  1  any other failure (I/O, an unreadable store, a lock held by a load into the same store)
  2  bad command line
  3  signature: unsigned, unknown key, bad signature, swapped manifest, missing .minisig
     (with --whole-file)
  4  integrity: corrupt, truncated, tampered or unsafe content, bad or missing volume
  5  refused by policy: a downgrade (a bundle built before the newest one
     loaded for its arch, by any key; or a lower sequence from the same
     key), not enough space or no space left mid-load, a delta bundle
     whose base the store does not hold";

#[derive(Parser)]
#[command(
    name = "edgeferry",
    version,
    about = "Put KubeEdge edge nodes on sites with no internet: verify, load, serve, join",
    after_help = EXAMPLES,
    arg_required_else_help = true
)]
pub struct Cli {
    /// Only results and errors: no notes and no progress bars (progress is
    /// also off with EDGEFERRY_NO_PROGRESS=1, and whenever stderr is not a
    /// terminal)
    #[arg(long, short = 'q', global = true)]
    pub quiet: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Check a bundle's signatures and every entry, in one pass; write nothing
    #[command(after_help = EXAMPLES)]
    Verify(VerifyArgs),
    /// Verify a bundle and load it into a store, atomically
    #[command(after_help = EXAMPLES)]
    Load(LoadArgs),
    /// Verify a bundle, then show what is inside: signer, version, images,
    /// files, delta base; write nothing
    #[command(after_help = INSPECT_EXAMPLES)]
    Inspect(InspectArgs),
    /// Look at a store
    #[command(subcommand)]
    Store(StoreCommand),
    /// What differs between two bundles or stores: images, tags, files, bytes
    #[command(after_help = DIFF_EXAMPLES)]
    Diff(DiffArgs),
    /// Serve a store on the LAN: release files and a read-only OCI registry
    #[command(after_help = SERVE_EXAMPLES)]
    Serve(ServeArgs),
    /// Make a store hold what an upstream mirror's store holds: signed
    /// manifests checked with your keys, only missing blobs fetched
    #[command(after_help = SYNC_EXAMPLES)]
    Sync(SyncArgs),
    /// Join edge nodes over SSH from the mirror: verifiably, in parallel, resumably
    #[command(after_help = JOIN_EXAMPLES)]
    Join(JoinArgs),
    /// Run `keadm reset edge --force` on the nodes of an inventory
    #[command(after_help = RESET_EXAMPLES)]
    Reset(BatchArgs),
    /// Upgrade joined edge nodes over SSH to a KubeEdge version in the store,
    /// with a backup and a rollback on failure
    #[command(after_help = UPGRADE_EXAMPLES)]
    Upgrade(UpgradeArgs),
    /// Pull mode: enrollment codes for nodes that join themselves via /join.sh
    #[command(subcommand, after_help = ENROLL_EXAMPLES)]
    Enroll(EnrollCommand),
    /// One table of every node: SSH joins (journals) and pull-mode joins (reports)
    #[command(after_help = STATUS_EXAMPLES)]
    Status(StatusArgs),
}

pub const ENROLL_EXAMPLES: &str = "\
Examples:
  # The site's parameters (cloudcore, token source, keadm flags; docs/inventory.md)
  cat /srv/site/site.yaml
  edgeferry serve --store /srv/edgeferry --listen 10.0.0.5:5000 --site-dir /srv/site
  edgeferry enroll create --site-dir /srv/site --uses 50 --expires 24h
  edgeferry enroll create --site-dir /srv/site --names edge-berlin-1,edge-berlin-2 --uses 2
  edgeferry enroll list --site-dir /srv/site
  edgeferry enroll revoke --site-dir /srv/site 3f2a9c1d
  edgeferry enroll revoke-node --site-dir /srv/site pull-3b9e1a
  edgeferry enroll reset --site-dir /srv/site pull-3b9e1a
  edgeferry enroll create --site-dir /srv/site --upgrade --uses 50   # for /upgrade.sh

Codes are shown once and stored as sha256 only. A node runs the one-liner
`serve` prints (download /join.sh, check its sha256, run it with the code);
the mirror answers a valid code with the site's keadm parameters, token
included, and refuses anything else with one 403 (the reason goes to the
mirror's log). A node name is enrolled once: a second node claiming it gets
409 until `enroll reset` frees it. A client address that keeps being refused
gets 429 with Retry-After, and so does a node sending too many reports.

Upgrade codes (--upgrade) are for /upgrade.sh only, and enrollment codes for
/join.sh only. The mirror judges the version the node reports as `edgeferry
upgrade` does; --allow-downgrade and --allow-skip-minor relax that per code.
A node already at the target spends nothing.";

pub const STATUS_EXAMPLES: &str = "\
Examples:
  edgeferry status --site-dir /srv/site --state-dir /srv/edgeferry-site-a
  edgeferry status --site-dir /srv/site --watch
  edgeferry status --state-dir /srv/edgeferry-site-a --json";

#[derive(Subcommand)]
pub enum EnrollCommand {
    /// Create a code (printed once)
    Create {
        #[arg(long, env = "EDGEFERRY_SITE_DIR")]
        site_dir: PathBuf,
        /// How many nodes may enroll with it
        #[arg(long, default_value_t = 1)]
        uses: u32,
        /// Lifetime: 90s, 10m, 24h, 7d
        #[arg(long, default_value = "24h")]
        expires: String,
        /// Node names to hand out, in order, one per use
        #[arg(long, value_delimiter = ',')]
        names: Vec<String>,
        /// An upgrade code, for /upgrade.sh (it cannot enroll; an
        /// enrollment code cannot upgrade)
        #[arg(long)]
        upgrade: bool,
        /// Upgrade code: let a node newer than the target go back to it
        #[arg(long, requires = "upgrade")]
        allow_downgrade: bool,
        /// Upgrade code: let a node skip minor versions
        #[arg(long, requires = "upgrade")]
        allow_skip_minor: bool,
        #[arg(long)]
        json: bool,
    },
    /// Codes (without their values) and enrolled nodes
    List {
        #[arg(long, env = "EDGEFERRY_SITE_DIR")]
        site_dir: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Revoke a code by id; nodes already enrolled keep their report keys
    Revoke {
        #[arg(long, env = "EDGEFERRY_SITE_DIR")]
        site_dir: PathBuf,
        id: String,
    },
    /// Revoke an enrolled node's report key; its name stays taken
    RevokeNode {
        #[arg(long, env = "EDGEFERRY_SITE_DIR")]
        site_dir: PathBuf,
        /// The node's name, as `enroll list` shows it
        name: String,
    },
    /// Forget an enrolled node so its name can enroll again (re-enrolling
    /// it on purpose); its old report key stops working
    Reset {
        #[arg(long, env = "EDGEFERRY_SITE_DIR")]
        site_dir: PathBuf,
        /// The node's name, as `enroll list` shows it
        name: String,
    },
}

pub const SERVE_EXAMPLES: &str = "\
Examples:
  edgeferry serve --store /srv/edgeferry --listen 10.0.0.5:5000
  edgeferry serve --store /srv/edgeferry --listen 0.0.0.0:5000 --advertise 10.0.0.5:5000 --access-log /var/log/edgeferry.jsonl
  edgeferry serve --store /srv/edgeferry --listen 10.0.0.5:5000 --tls-cert mirror.crt --tls-key mirror.key --tls-ca site-ca.crt
  edgeferry serve --store /srv/edgeferry --listen 10.0.0.5:5000 --plain-http
  # Two mirrors of one site (docs/scale.md): each lists itself, then its peer
  edgeferry serve --store /srv/edgeferry --listen 10.0.0.5:5000 --peer-mirror 10.0.0.6:5000 --tls-name 10.0.0.6

HTTPS by default, with no PKI to build: the first start makes a site key
and a self-signed certificate beside the store (/srv/edgeferry.tls/, key
mode 0600) for the listen address, --advertise and every --tls-name; a
later start issues the certificate again, same key, only for a name it
does not cover. The banner prints the CA file nodes install and the key's
pin. With TLS on there is no plain-HTTP port: a plain request gets 400.
--plain-http serves without TLS (the pull-mode token then crosses the LAN
in cleartext: serve warns).

On start it prints the containerd hosts.toml files and keadm flags nodes need.
Access log: one JSON line per request (client, method, path, status, bytes,
duration_ms) on stdout, or appended to --access-log. Stops on SIGINT/SIGTERM,
letting transfers in flight finish.

Each release file is hashed once per store state, before the first /files/
answer; a file whose sha256 no longer matches gets 500, never its bytes
(repair with `edgeferry store check --repair`).";

#[derive(Args)]
pub struct ServeArgs {
    #[arg(long, env = "EDGEFERRY_STORE")]
    pub store: PathBuf,
    /// Address and port to listen on
    #[arg(long, default_value = "127.0.0.1:5000")]
    pub listen: std::net::SocketAddr,
    /// host:port the nodes reach this mirror at, for the printed settings
    #[arg(long)]
    pub advertise: Option<String>,
    /// The site's other mirrors (host:port; repeat or comma-separate):
    /// the printed hosts.toml and /join.sh list them after this one, so
    /// nodes fall through to them when this one is down. They share this
    /// mirror's scheme and CA
    #[arg(long, value_delimiter = ',', value_name = "HOST:PORT")]
    pub peer_mirror: Vec<String>,
    /// A node-local registry mirror (Spegel, Dragonfly's dfdaemon) listed
    /// ahead of the site mirrors, e.g. http://127.0.0.1:30020
    #[arg(long, value_name = "URL")]
    pub node_mirror: Option<String>,
    /// Append the JSON-lines access log here instead of stdout
    #[arg(long)]
    pub access_log: Option<PathBuf>,
    /// Connections served at once
    #[arg(long)]
    pub max_connections: Option<usize>,
    /// Connections served at once from one source address (more are
    /// answered 503 and closed), so one client cannot hold them all
    #[arg(long)]
    pub max_connections_per_client: Option<usize>,
    /// Seconds without a byte moving before a connection is closed
    #[arg(long)]
    pub idle_timeout: Option<u64>,
    /// Pull mode: a directory holding site.yaml; serves /join.sh and takes
    /// enrollments and reports (see `edgeferry enroll --help`)
    #[arg(long, env = "EDGEFERRY_SITE_DIR")]
    pub site_dir: Option<PathBuf>,
    /// Serve plain HTTP instead of HTTPS
    #[arg(long, conflicts_with_all = ["tls_cert", "tls_name"])]
    pub plain_http: bool,
    /// The mirror's certificate (PEM, chain after it) instead of the site's own
    #[arg(long, requires = "tls_key", value_name = "PEM")]
    pub tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM)
    #[arg(long, requires = "tls_cert", value_name = "PEM")]
    pub tls_key: Option<PathBuf>,
    /// The CA nodes trust for --tls-cert (PEM; default: --tls-cert itself)
    #[arg(long, requires = "tls_cert", value_name = "PEM")]
    pub tls_ca: Option<PathBuf>,
    /// More names or addresses for the site certificate (comma-separated)
    #[arg(long, value_delimiter = ',', conflicts_with = "tls_cert")]
    pub tls_name: Vec<String>,
}

pub const SYNC_EXAMPLES: &str = "\
Examples:
  # What the site lacks, fetched from the regional hub's mirror
  edgeferry sync --from https://hub.example:5000 --mirror-ca hub-ca.pem \\
    --key edgeferry.pub --store /srv/edgeferry --dry-run
  edgeferry sync --from https://hub.example:5000 --mirror-ca hub-ca.pem \\
    --key edgeferry.pub --store /srv/edgeferry --only v1.23 --arch arm64

The hub is not trusted: each bundle's signed manifest is checked with the
site's own keys before anything is fetched, each blob against its size and
sha256 in that manifest as it streams, and each bundle is committed with the
same atomic swap and rollback rules as `load`. A killed sync leaves the
store as it was (or with whole bundles added); run it again and it resumes
from what it staged beside the store (.<store>.sync/), Range requests
included.

Exit codes:
  0  the store holds every bundle asked for
  1  the mirror could not be read, or I/O failed
  3  a manifest's signature was refused (unknown key, altered)
  4  a blob was not what its signed manifest says
  5  refused by policy: an older bundle than the store has (rollback), or
     not enough space";

/// `edgeferry sync`.
#[derive(Args)]
pub struct SyncArgs {
    /// The upstream mirror: http(s)://host:port of a hub's `edgeferry serve`
    #[arg(long, value_name = "URL")]
    pub from: String,
    /// A trusted minisign public key (repeatable): the site's own, never the hub's word
    #[arg(long = "key", value_name = "PUB")]
    pub keys: Vec<PathBuf>,
    /// A file of trusted public keys, one minisign key per two lines
    #[arg(long, env = "EDGEFERRY_TRUST_FILE")]
    pub trust_file: Option<PathBuf>,
    /// The store to fill (created on first sync)
    #[arg(long, env = "EDGEFERRY_STORE")]
    pub store: PathBuf,
    /// Only this KubeEdge line or version (v1.23 or v1.23.1)
    #[arg(long, value_name = "VERSION")]
    pub only: Option<String>,
    /// Only bundles for this arch (amd64, arm64, arm)
    #[arg(long)]
    pub arch: Option<edgeferry_bundle::format::Arch>,
    /// The CA (PEM) the mirror's HTTPS certificate must chain to
    #[arg(long, value_name = "PEM")]
    pub mirror_ca: Option<PathBuf>,
    /// Print the plan (bundles, blobs and bytes to fetch) and change nothing
    #[arg(long)]
    pub dry_run: bool,
    /// Machine-readable plan or result on stdout
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
pub struct SourceArgs {
    /// A bundle file, a volume list (*.volumes.json), a directory holding
    /// one of them, or - for standard input (then --signature is needed)
    pub bundle: PathBuf,
    #[command(flatten)]
    pub trust: TrustArgs,
    /// Machine-readable result on stdout
    #[arg(long)]
    pub json: bool,
}

/// Who vouches for a bundle.
#[derive(Args, Clone)]
pub struct TrustArgs {
    /// A trusted minisign public key (repeatable)
    #[arg(long = "key", value_name = "PUB")]
    pub keys: Vec<PathBuf>,
    /// A file of trusted public keys, one minisign key per two lines
    #[arg(long, env = "EDGEFERRY_TRUST_FILE")]
    pub trust_file: Option<PathBuf>,
    /// Also check the whole-file signature (<bundle>.minisig) over the
    /// compressed bytes, as `minisign -V` does. The signed manifest already
    /// covers every byte that is installed; this also refuses a file that
    /// differs yet decodes to the same content, for one more pass of CPU
    #[arg(long)]
    pub whole_file: bool,
    /// The bundle's whole-file signature, if not <bundle>.minisig (implies
    /// --whole-file)
    #[arg(long, value_name = "MINISIG")]
    pub signature: Option<PathBuf>,
    /// Accept an unsigned bundle or one from an unknown key (DANGEROUS)
    #[arg(long)]
    pub insecure_skip_signature: bool,
}

#[derive(Args)]
pub struct VerifyArgs {
    #[command(flatten)]
    pub source: SourceArgs,
}

#[derive(Args)]
pub struct LoadArgs {
    #[command(flatten)]
    pub source: SourceArgs,
    /// The store directory (created on first load)
    #[arg(long, env = "EDGEFERRY_STORE")]
    pub store: PathBuf,
    /// Load a bundle built before one already loaded for its arch (by any
    /// key, or unsigned), or with a lower sequence from the same key
    #[arg(long)]
    pub allow_downgrade: bool,
    /// Do not wait for the data to reach the disk before publishing it
    /// (faster; a power cut right after can corrupt the store)
    #[arg(long)]
    pub no_sync: bool,
}

pub const DIFF_EXAMPLES: &str = "\
Examples:
  # What a new bundle changes, against the one the site has
  edgeferry diff old/edgeferry-kubeedge-v1.22.2-linux-arm64.tar.zst \\
    new/edgeferry-kubeedge-v1.23.1-linux-arm64.tar.zst --key edgeferry.pub

  # What a bundle would add to a store (only the bundle's arch is compared)
  edgeferry diff /srv/edgeferry /media/usb/ --key edgeferry.pub --json

  edgeferry diff /srv/edgeferry /srv/edgeferry-staging

Each side is a bundle (file, volume list or a directory of volumes; verified
as `verify` does, writing nothing) or a store directory (one holding
state.json). Images are compared per tag and platform by their platform
manifest digest; release files by name and sha256. \"B adds\" counts the
image blobs and release files B holds that A lacks. When one side is a
bundle and the other a store, only the bundle's arch of the store is
compared, and the output says so.

Exit codes (like `git diff` without --exit-code, a difference is not an error):
  0  the comparison ran (identical or not: see `identical` in --json)
  1  a side could not be read (not a store, unreadable)
  3, 4  a bundle side was refused (signature, integrity), as for `verify`";

/// `edgeferry diff A B`.
#[derive(Args)]
pub struct DiffArgs {
    /// The old side: a bundle, a volume list, a directory of volumes, or a store
    pub a: PathBuf,
    /// The new side, the same kinds
    pub b: PathBuf,
    /// A trusted minisign public key for bundle sides (repeatable)
    #[arg(long = "key", value_name = "PUB")]
    pub keys: Vec<PathBuf>,
    /// A file of trusted public keys, one minisign key per two lines
    #[arg(long, env = "EDGEFERRY_TRUST_FILE")]
    pub trust_file: Option<PathBuf>,
    /// Read unsigned bundles or ones from an unknown key (DANGEROUS)
    #[arg(long)]
    pub insecure_skip_signature: bool,
    /// Machine-readable result on stdout
    #[arg(long)]
    pub json: bool,
}

pub const INSPECT_EXAMPLES: &str = "\
Examples:
  edgeferry inspect /media/usb/edgeferry-kubeedge-v1.23.1-linux-arm64.tar.zst --key edgeferry.pub
  edgeferry inspect /media/usb/ --key edgeferry.pub --json     # a directory of volumes

The bundle is verified exactly as `verify` does (same exit codes) before
anything is shown. An image's size is its manifest, config and layers;
in a delta whose image manifest was left out, it is shown as unknown.";

#[derive(Args)]
pub struct InspectArgs {
    #[command(flatten)]
    pub source: SourceArgs,
}

pub const STORE_INVENTORY_EXAMPLES: &str = "\
Examples:
  edgeferry store inventory --store /srv/edgeferry -o /media/usb/site-a.inventory.json
  edgeferry store inventory --store /srv/edgeferry > site-a.inventory.json

  # then, on the connected side: a bundle without what the site has
  cargo xtask bundle --arch arm64 --kubeedge-version v1.23.1 --from artifacts/ \\
      --base site-a.inventory.json --key keys/edgeferry.key --out bundles/

Without -o the inventory is printed on stdout; with -o it is written
atomically and a summary is printed (--json: as JSON). It lists digests
and sizes only: no secrets, nothing from the site's nodes.";

#[derive(Args)]
pub struct StoreInventoryArgs {
    #[arg(long, env = "EDGEFERRY_STORE")]
    pub store: PathBuf,
    /// Write the inventory to FILE (atomically) instead of stdout
    #[arg(long = "out", short = 'o', value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// With -o: the summary as JSON
    #[arg(long)]
    pub json: bool,
}

#[derive(Subcommand)]
pub enum StoreCommand {
    /// Versions, arches, images, files and bundle ids in a store
    List {
        #[arg(long, env = "EDGEFERRY_STORE")]
        store: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Hash every blob and release file in a store; --repair takes good
    /// copies of damaged ones from a bundle
    #[command(after_help = STORE_CHECK_EXAMPLES)]
    Check(StoreCheckArgs),
    /// Every blob and release file digest with its size, every bundle and
    /// the highest sequence per signer and arch: the --base of a delta bundle
    #[command(after_help = STORE_INVENTORY_EXAMPLES)]
    Inventory(StoreInventoryArgs),
}

pub const STORE_CHECK_EXAMPLES: &str = "\
Examples:
  edgeferry store check --store /srv/edgeferry
  edgeferry store check --store /srv/edgeferry --repair /media/usb/ --key edgeferry.pub

Reads every byte of the store. A repair verifies the bundle as `load` does
and swaps in a store whose damaged blobs are replaced; the bundle must be
one already loaded into the store.

Exit codes:
  0  every blob and file has the hash it is named by (after --repair: again)
  1  the check could not run (not a store, unreadable, a lock held by a load)
  3, 4, 5  the --repair bundle was refused, as for `load`
  4  damage found (and, with --repair, not all of it repaired)";

#[derive(Args)]
pub struct StoreCheckArgs {
    #[arg(long, env = "EDGEFERRY_STORE")]
    pub store: PathBuf,
    /// Machine-readable report on stdout
    #[arg(long)]
    pub json: bool,
    /// A bundle (file, volume list or directory) holding good copies of
    /// the damaged blobs
    #[arg(long, value_name = "BUNDLE")]
    pub repair: Option<PathBuf>,
    #[command(flatten)]
    pub trust: TrustArgs,
}

pub const JOIN_EXAMPLES: &str = "\
Examples:
  # See exactly what would run on every node, touching nothing
  edgeferry join -c site.yaml --store /srv/edgeferry --mirror 10.0.0.5:5000 --dry-run

  # Join every node, 50 at a time, recording host keys on first contact
  export KUBEEDGE_TOKEN=$(kubectl get secret -n kubeedge tokensecret -o=jsonpath='{.data.tokendata}' | base64 -d)
  edgeferry join -c site.yaml --store /srv/edgeferry --mirror 10.0.0.5:5000 --parallel 50 --accept-new-host-keys

  # After fixing what failed: continue, skipping nodes and steps already done
  edgeferry join -c site.yaml --store /srv/edgeferry --mirror 10.0.0.5:5000 --resume

  # A keadm batch config.yaml works as it is
  edgeferry join -c config.yaml --store /srv/edgeferry --mirror 10.0.0.5:5000

  # Count a node as joined only once the cloud's API shows its Node Ready
  edgeferry join -c site.yaml --store /srv/edgeferry --mirror 10.0.0.5:5000 --verify-node-ready ~/.kube/config

  # A mirror with the site's own certificate (serve --tls-cert): the CA nodes trust
  edgeferry join -c site.yaml --store /srv/edgeferry --mirror 10.0.0.5:5000 --mirror-ca site-ca.crt

  # Two mirrors of the site, and Spegel on every node ahead of them
  edgeferry join -c site.yaml --store /srv/edgeferry --mirror 10.0.0.5:5000 --mirror 10.0.0.6:5000 --node-mirror 'http://{host}:30020'

The mirror is reached over HTTPS when serve made its certificate beside
--store (/srv/edgeferry.tls/) or with --mirror-ca; each node gets that CA
at /etc/containerd/certs.d/edgeferry-mirror-ca.crt and trusts only it.
--mirror http://HOST:PORT forces plain HTTP (serve --plain-http).
With several mirrors (one site CA for all), each node lists them all,
rotated by its place in the inventory, and falls through to the next when
one is down; --dry-run shows each node's order (docs/scale.md).

Inventory format: docs/inventory.md. State (journal.jsonl, report.json,
logs/<node>.log) goes to --state-dir, by default edgeferry-<inventory name>/
beside the inventory.

A node is joined when keadm succeeded and the postcheck saw the three
edgeHub TLS files, edgecore.yaml private to root (0600; it holds the token,
so the postcheck repairs its mode and says so), and edgecore still running
after the settle time with an established connection to cloudcore's hub.

The token goes to each node on the SSH channel's stdin, never on a command
line (keadm itself takes it as --token while it runs; docs/inventory.md).
What a node prints reaches the table, logs, journal and report.json with
control characters escaped (\\x1b) and each field cut past 4 KiB.

Exit codes:
  0    every node joined (or had joined before)
  2    some nodes failed or were not started; see report.json
  3    nothing could start: bad inventory, store, mirror, or command line
  130  interrupted (Ctrl-C); the journal is consistent, --resume continues";

pub const RESET_EXAMPLES: &str = "\
Examples:
  edgeferry reset -c site.yaml --store /srv/edgeferry --mirror 10.0.0.5:5000 --limit edge-a1,edge-a2
  # Reinstall = reset, then join again
  edgeferry reset -c site.yaml --store /srv/edgeferry --mirror 10.0.0.5:5000 && \\
    edgeferry join -c site.yaml --store /srv/edgeferry --mirror 10.0.0.5:5000 --resume

Runs `keadm reset edge --force` on each node (keadm comes from the mirror,
checked against the store). The cloud's Node objects stay: delete them with
kubectl before joining again under the same names.

Exit codes: 0 all reset, 2 some failed, 3 nothing could start, 130 interrupted.";

#[derive(Args, Debug)]
pub struct BatchArgs {
    /// Inventory: edgeferry YAML (docs/inventory.md) or a keadm batch config.yaml
    #[arg(short = 'c', long = "config", value_name = "INVENTORY")]
    pub inventory: PathBuf,
    /// The store `edgeferry serve` serves
    #[arg(long, env = "EDGEFERRY_STORE")]
    pub store: PathBuf,
    /// host:port where nodes reach `edgeferry serve` (else the inventory's
    /// mirror: or mirrors:). Repeat it (or separate with commas) for
    /// several mirrors of one site: each node lists them all, rotated so
    /// load spreads, and falls through to the next when one is down. HTTPS
    /// when `serve` made its certificate beside --store or with
    /// --mirror-ca (one site CA for every mirror); http://host:port for a
    /// --plain-http mirror
    #[arg(long, env = "EDGEFERRY_MIRROR", value_delimiter = ',')]
    pub mirror: Vec<String>,
    /// A node-local registry mirror (Spegel, Dragonfly's dfdaemon) every
    /// node's hosts.toml lists ahead of the site mirrors, e.g.
    /// http://127.0.0.1:30020 (else the inventory's node_mirror:)
    #[arg(long, env = "EDGEFERRY_NODE_MIRROR", value_name = "URL")]
    pub node_mirror: Option<String>,
    /// The CA nodes trust for the mirror's certificate (PEM), when it is
    /// not the one `serve` made beside --store (serve --tls-cert)
    #[arg(long, env = "EDGEFERRY_MIRROR_CA", value_name = "PEM")]
    pub mirror_ca: Option<PathBuf>,
    /// Nodes worked on at once (default 20; keadm batch configs: maxRunNum)
    #[arg(long)]
    pub parallel: Option<usize>,
    /// Print the per-node plan and touch nothing: no connections, no files
    #[arg(long)]
    pub dry_run: bool,
    /// Only these nodes (names or addresses, comma-separated)
    #[arg(long, value_delimiter = ',')]
    pub limit: Vec<String>,
    /// Stop starting new nodes after N failures, or P% of the nodes (e.g. 10%)
    #[arg(long, value_name = "N|P%")]
    pub max_fail: Option<String>,
    /// Record unknown host keys into known_hosts (first contact); a changed
    /// key still fails
    #[arg(long)]
    pub accept_new_host_keys: bool,
    /// Journal, report and per-node logs (default: edgeferry-<inventory name>/ beside it)
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// Print report.json on stdout instead of the table
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct JoinArgs {
    #[command(flatten)]
    pub batch: BatchArgs,
    /// Continue the journal's run: skip joined nodes, resume failed and
    /// interrupted ones at the step that failed
    #[arg(long, conflicts_with = "fresh")]
    pub resume: bool,
    /// Like --resume, but only for the nodes that failed or were interrupted
    #[arg(long, conflicts_with = "fresh")]
    pub retry_failed: bool,
    /// Set the journal aside (kept as journal.<time>.jsonl) and start over
    #[arg(long)]
    pub fresh: bool,
    /// Seconds edgecore must keep running and connected to cloudcore's hub
    /// after keadm's success before a node counts as joined (default 20;
    /// else the inventory's settle:)
    #[arg(long, value_name = "SECONDS")]
    pub settle: Option<u64>,
    /// After the postcheck, wait until the cloud's API shows each Node
    /// Ready, reading it with this kubeconfig (token or client
    /// certificate; its CA). Without it the report says "not checked"
    #[arg(long, value_name = "KUBECONFIG")]
    pub verify_node_ready: Option<PathBuf>,
}

pub const UPGRADE_EXAMPLES: &str = "\
Examples:
  # Load the new release's bundle beside the old one; serve keeps serving
  edgeferry load /media/usb/edgeferry-kubeedge-v1.23.1-linux-arm64.tar.zst --key edgeferry.pub --store /srv/edgeferry

  # The plan: waves, the image and its digest per arch, every step's sh
  edgeferry upgrade -c site.yaml --to v1.23.1 --store /srv/edgeferry --mirror 10.0.0.5:5000 --canary 2 --dry-run

  # Two canaries first; if either fails nobody else is touched
  edgeferry upgrade -c site.yaml --to v1.23.1 --store /srv/edgeferry --mirror 10.0.0.5:5000 --canary 2 --parallel 20 --max-fail 5%

  # After Ctrl-C or a fix: continue, nothing done twice
  edgeferry upgrade -c site.yaml --to v1.23.1 --store /srv/edgeferry --mirror 10.0.0.5:5000 --resume

  # Upgrade from the cloud instead: print a NodeUpgradeJob, touch no node
  edgeferry upgrade -c site.yaml --to v1.23.1 --store /srv/edgeferry --mirror 10.0.0.5:5000 --emit-nodeupgradejob >nuj.yaml

  edgeferry status --state-dir edgeferry-site

Per node (journaled; docs/inventory.md): connect (host key checked),
upgrade_preflight (edgecore installed, running, its version from
`edgecore --version`, disk, the mirror), containerd (the join's hosts.toml
step), fetch (the target's keadm from the mirror, sha256 checked),
keadm_backup (`keadm backup edge`), keadm_upgrade (`keadm upgrade edge
--toVersion V --image <installation-package> --image-digest <its manifest
digest for the node's arch, from the signed store> --force`),
upgrade_postcheck (edgecore reports V and the join's postcheck passes).
When keadm_upgrade or upgrade_postcheck fails: keadm_rollback (`keadm
rollback edge --historical-version <before>`) and rollback_postcheck,
unless --no-rollback.

A node at the target already is skipped as done. A target older than the
node is refused unless --allow-downgrade; a jump of more than one minor
version unless --allow-skip-minor (KubeEdge upgrades one minor at a time).

Exit codes:
  0    every node upgraded (or at the target already)
  2    some nodes failed (rolled back, or not rolled back) or were not started
  3    nothing could start: bad inventory, store, mirror, version, or command line
  4    a node failed and its rollback failed too: see ROLLBACK FAILED in the table
  130  interrupted (Ctrl-C); the journal is consistent, --resume continues";

#[derive(Args, Debug)]
pub struct UpgradeArgs {
    #[command(flatten)]
    pub batch: BatchArgs,
    /// The KubeEdge version to upgrade to; the store must hold its bundle
    #[arg(long, value_name = "VERSION")]
    pub to: String,
    /// Continue the journal's upgrade to this version: skip nodes already
    /// upgraded and the steps done
    #[arg(long)]
    pub resume: bool,
    /// Upgrade the first N nodes first; if one of them fails, stop before
    /// any other node is touched
    #[arg(long, value_name = "N")]
    pub canary: Option<usize>,
    /// Allow a target older than what a node runs
    #[arg(long)]
    pub allow_downgrade: bool,
    /// Allow a jump of more than one minor version
    #[arg(long)]
    pub allow_skip_minor: bool,
    /// Leave a failed node as it is: no keadm rollback edge
    #[arg(long)]
    pub no_rollback: bool,
    /// Seconds edgecore must keep running and connected after the upgrade
    /// (default 20; else the inventory's settle:)
    #[arg(long, value_name = "SECONDS")]
    pub settle: Option<u64>,
    /// Print the KubeEdge NodeUpgradeJob for the same nodes, image and
    /// digest, for an upgrade driven by cloudcore, and touch no node
    #[arg(long)]
    pub emit_nodeupgradejob: bool,
}

#[derive(Args, Debug)]
pub struct StatusArgs {
    /// A pull-mode site directory (`edgeferry serve --site-dir`)
    #[arg(long, env = "EDGEFERRY_SITE_DIR")]
    pub site_dir: Option<PathBuf>,
    /// A join state directory (repeatable; where journal.jsonl is)
    #[arg(long = "state-dir")]
    pub state_dirs: Vec<PathBuf>,
    /// Redraw every 2 seconds until Ctrl-C
    #[arg(long)]
    pub watch: bool,
    #[arg(long)]
    pub json: bool,
}
