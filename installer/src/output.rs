//! Every machine-readable output of `edgeferry`, as named types: what
//! `--json` prints for each command and what `report.json` holds. This is
//! the stable interface scripts build on (docs/output.md): a field may be
//! added, none is renamed or removed without a format note there.
//!
//! Two outputs are on-disk formats printed as they are: `store list --json`
//! prints the store's `state.json` ([`StoreState`]) and `enroll list
//! --json` prints `enrollments.json` ([`Enrollments`], hashes only).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use edgeferry_bundle::format::Arch;
use edgeferry_bundle::verify::Class;
use serde::{Deserialize, Serialize};

use crate::node::hosts::{HostsFile, Mirrors};
use crate::node::inventory::{Format, NodeSpec};
use crate::node::script::KeadmAsset;
use crate::node::steps::{Action, Step};

pub use crate::store::State as StoreState;

// ---- verify, load: --json

/// `verify --json` on success.
#[derive(Debug, Serialize)]
pub struct Verified<'a> {
    pub ok: bool,
    pub bundle_id: &'a str,
    pub kubeedge_version: &'a str,
    pub arch: Arch,
    pub sequence: u64,
    pub created: &'a str,
    pub sample: bool,
    /// The signing key's id; `null` when the signature was skipped.
    pub signer: Option<&'a str>,
    pub entries: usize,
    pub bytes: u64,
    /// Whether `<bundle>.minisig` was checked over the file (`--whole-file`).
    pub whole_file: bool,
}

/// `load --json` on success.
#[derive(Debug, Serialize)]
pub struct Loaded<'a> {
    pub ok: bool,
    pub store: &'a Path,
    pub bundle_id: &'a str,
    pub kubeedge_version: &'a str,
    pub arch: Arch,
    pub sequence: u64,
    /// false: the bundle was already in the store.
    pub changed: bool,
    pub new_blobs: usize,
    pub new_bytes: u64,
    /// Blobs the store had but found damaged on disk, replaced by the
    /// bundle's good copies.
    pub repaired_blobs: usize,
}

// ---- sync: --json

/// One bundle the upstream mirror offers, as its verified manifest says.
#[derive(Debug, Clone, Serialize)]
pub struct SyncBundle {
    pub bundle_id: String,
    pub kubeedge_version: String,
    pub arch: Arch,
    pub sequence: u64,
    pub created: String,
    /// The site key that verified its manifest.
    pub signer: String,
    /// A delta bundle: its left-out entries are fetched too.
    pub delta: bool,
    /// `load` (the store lacks it) or `present` (the store holds it).
    pub action: &'static str,
}

/// `sync --dry-run --json`, and `plan` in `sync --json`.
#[derive(Debug, Serialize)]
pub struct SyncPlan {
    pub from: String,
    pub store: PathBuf,
    /// In the order they are committed: by creation time, as loads must be.
    pub bundles: Vec<SyncBundle>,
    /// Offered by the mirror but outside `--only`/`--arch`.
    pub skipped: usize,
    /// Blobs and release files the store lacks, once per sha256.
    pub fetch_blobs: usize,
    pub fetch_bytes: u64,
    /// Of `fetch_bytes`, what an earlier run already staged beside the store.
    pub staged_bytes: u64,
}

/// `sync --json` on success.
#[derive(Debug, Serialize)]
pub struct Synced {
    pub ok: bool,
    pub plan: SyncPlan,
    /// Bundle ids committed, in order.
    pub loaded: Vec<String>,
    /// Bytes that came over the network.
    pub fetched_bytes: u64,
    /// Bytes of partial downloads an earlier run left, re-hashed and
    /// resumed with Range.
    pub resumed_bytes: u64,
    /// Whole blobs an earlier run staged (re-hashed, not fetched again).
    pub staged_blobs: usize,
}

// ---- inspect: --json

/// `inspect --json`: what a verified bundle holds.
#[derive(Debug, Serialize)]
pub struct Inspected<'a> {
    pub ok: bool,
    pub bundle_id: &'a str,
    pub format_version: u32,
    pub kubeedge_version: &'a str,
    pub arch: Arch,
    pub sequence: u64,
    pub created: &'a str,
    pub builder: &'a str,
    pub sample: bool,
    /// The signing key's id; `null` when the signature was skipped.
    pub signer: Option<&'a str>,
    pub images: Vec<InspectedImage<'a>>,
    pub files: Vec<InspectedFile<'a>>,
    /// A delta's base; `null` for a full bundle.
    pub delta: Option<InspectedDelta<'a>>,
    /// Entries in the stream, and the compressed bytes read.
    pub entries: usize,
    pub bytes: u64,
}

#[derive(Debug, Serialize)]
pub struct InspectedImage<'a> {
    pub reference: &'a str,
    pub platform: &'a str,
    pub manifest_digest: &'a str,
    /// The upstream multi-arch index, when there was one.
    pub index_digest: Option<&'a str>,
    /// Manifest + config + layers, in bytes; `null` when a delta left the
    /// image manifest out (it is in the base).
    pub size: Option<u64>,
}

#[derive(Debug, Serialize)]
pub struct InspectedFile<'a> {
    /// `files/<asset>`; its checksum file is listed as a file of its own.
    pub path: &'a str,
    pub size: u64,
    pub sha256: &'a str,
    /// The upstream SHA-512 the checksum file states (release assets only).
    pub sha512: Option<&'a str>,
    /// true: a delta left it out; the store must already hold it.
    pub omitted: bool,
}

#[derive(Debug, Serialize)]
pub struct InspectedDelta<'a> {
    pub base: &'a edgeferry_bundle::format::BaseInfo,
    /// Entries left out and their bytes.
    pub omitted_entries: usize,
    pub omitted_bytes: u64,
}

// ---- store inventory

/// `store inventory` without `-o` prints the inventory itself, the format
/// the builder's `--base` reads (docs/output.md).
pub use edgeferry_bundle::inventory::Inventory as StoreInventory;

/// `store inventory -o FILE --json`: what was written.
#[derive(Debug, Serialize)]
pub struct InventoryWritten<'a> {
    pub ok: bool,
    pub store: &'a Path,
    pub out: &'a Path,
    pub bundles: usize,
    pub blobs: usize,
    pub bytes: u64,
    pub files: usize,
}

// ---- store check: --json

pub use crate::store::Damage;

/// `store check --json`: what was read and what is damaged.
#[derive(Debug, Serialize)]
pub struct StoreChecked<'a> {
    /// true: nothing damaged (after a repair, if one ran).
    pub ok: bool,
    pub store: &'a Path,
    /// Blobs hashed and their bytes; release files checked.
    pub blobs: usize,
    pub bytes: u64,
    pub files: usize,
    /// What is still damaged.
    pub damaged: &'a [Damage],
    /// sha256 of the blobs `--repair` replaced (empty without it).
    pub repaired: &'a [String],
}

// ---- diff: --json

/// `diff --json`: what B has that A does not, and the other way round.
#[derive(Debug, Serialize)]
pub struct Diff {
    /// The first side (the old one).
    pub a: DiffSide,
    /// The second side (the new one).
    pub b: DiffSide,
    /// Set when one side is a bundle and the other a store: only this
    /// arch of the store was compared (images of its platform, release
    /// files named for it), so other arches are not listed as removed.
    pub compared_arch: Option<Arch>,
    /// No image, tag or file differs and B adds no bytes.
    pub identical: bool,
    pub images: Changes<ImageChange>,
    pub files: Changes<FileChange>,
    /// Blobs (image blobs and release files) B holds that A does not.
    pub added_blobs: usize,
    /// Their bytes: what carrying B to a site holding A would add.
    pub added_bytes: u64,
}

/// One side of a diff.
#[derive(Debug, Serialize)]
pub struct DiffSide {
    /// `bundle` or `store`.
    pub kind: &'static str,
    pub path: PathBuf,
    /// KubeEdge versions it holds (one for a bundle).
    pub kubeedge_versions: Vec<String>,
    /// Arches it holds (one for a bundle).
    pub arches: Vec<Arch>,
    /// The bundle's id; `null` for a store.
    pub bundle_id: Option<String>,
}

/// Added (only in B), removed (only in A), changed (in both, differing).
#[derive(Debug, Serialize)]
pub struct Changes<T> {
    pub added: Vec<T>,
    pub removed: Vec<T>,
    pub changed: Vec<T>,
}

/// An image tag (full reference) on one platform, by its platform
/// manifest digest: `old_digest` in A, `new_digest` in B.
#[derive(Debug, Serialize, PartialEq)]
pub struct ImageChange {
    pub reference: String,
    pub platform: String,
    pub old_digest: Option<String>,
    pub new_digest: Option<String>,
}

/// A release file (or its checksum file) by name.
#[derive(Debug, Serialize, PartialEq)]
pub struct FileChange {
    pub name: String,
    pub old_sha256: Option<String>,
    pub new_sha256: Option<String>,
    pub old_size: Option<u64>,
    pub new_size: Option<u64>,
}

/// Any command but join/reset, with `--json`, when it fails (one line).
#[derive(Debug, Serialize)]
pub struct Failed {
    pub ok: bool,
    /// signature | integrity | policy | io; `null` for anything else.
    pub class: Option<Class>,
    pub error: String,
}

/// join/reset with `--json`, when nothing could start (one line, exit 3).
#[derive(Debug, Serialize)]
pub struct BatchFailed {
    pub ok: bool,
    pub error: String,
}

// ---- enroll list --json: enrollments.json as it is (hashes only)

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Enrollments {
    pub codes: Vec<CodeRecord>,
    pub nodes: Vec<NodeRecord>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CodeRecord {
    pub id: String,
    pub sha256: String,
    pub created: u64,
    pub expires: u64,
    pub uses_left: u32,
    pub uses: u32,
    /// Node names this code hands out, in order; empty: names come from
    /// the site's name_prefix and the node's hostname.
    pub names: Vec<String>,
    pub revoked: bool,
    /// What the code is good for: `enroll` (`/join.sh`) or `upgrade`
    /// (`/upgrade.sh`); never both. Files written before upgrades existed
    /// hold enrollment codes only.
    #[serde(default)]
    pub kind: CodeKind,
    /// `enroll create --upgrade --allow-downgrade`: the node may go back.
    #[serde(default)]
    pub allow_downgrade: bool,
    /// `enroll create --upgrade --allow-skip-minor`: more than one minor.
    #[serde(default)]
    pub allow_skip_minor: bool,
}

/// What an operator-issued code lets a node do.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CodeKind {
    /// Enroll and join (`/v1/enroll`).
    #[default]
    Enroll,
    /// Upgrade a node that runs edgecore already (`/v1/upgrade`).
    Upgrade,
}

impl CodeKind {
    pub fn name(self) -> &'static str {
        match self {
            CodeKind::Enroll => "enroll",
            CodeKind::Upgrade => "upgrade",
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeRecord {
    pub name: String,
    pub hostname: String,
    pub code_id: String,
    pub key_sha256: String,
    pub enrolled: u64,
    pub client: String,
    /// `enroll revoke-node`: its report key is refused, its name stays taken.
    #[serde(default)]
    pub revoked: bool,
}

// ---- enroll create --json

/// `enroll create --json`: the code, shown this once.
#[derive(Debug, Serialize)]
pub struct EnrollCreated<'a> {
    pub id: &'a str,
    pub code: &'a str,
    pub uses: u32,
    pub expires: &'a str,
    pub names: &'a [String],
    /// `enroll` or `upgrade`.
    pub kind: CodeKind,
}

// ---- join/reset: --dry-run --json

#[derive(Clone, Debug, Serialize)]
pub struct JoinPlan {
    pub action: Action,
    pub inventory: PathBuf,
    pub inventory_format: Format,
    pub kubeedge_version: String,
    /// host:port the nodes reach the (first) site mirror at.
    pub mirror: String,
    /// `https://host:port` (TLS, the CA from `--mirror-ca` or the one
    /// `serve` made beside the store) or `http://host:port`.
    pub mirror_url: String,
    /// Every site mirror's URL, as given (`--mirror` ×N or `mirrors:`);
    /// each node tries them in its own rotation (`NodePlan::mirrors`).
    pub mirrors: Vec<String>,
    /// `--node-mirror`: the node-local mirror every hosts.toml lists first.
    pub node_mirror: Option<String>,
    /// What the steps use to reach the mirrors, CA included (unrotated).
    #[serde(skip)]
    pub endpoint: Mirrors,
    pub store: PathBuf,
    pub state_dir: PathBuf,
    pub parallel: usize,
    pub host_keys: &'static str,
    /// Bundle id per arch for this version.
    pub bundles: BTreeMap<String, String>,
    pub keadm: Vec<KeadmAsset>,
    pub hosts_toml: Vec<HostsFile>,
    /// How long edgecore must keep running and connected after keadm's
    /// success before the postcheck passes.
    pub settle_secs: u64,
    /// `--verify-node-ready`: the kubeconfig the Node's Ready condition is
    /// read with after the postcheck; `null`: not checked.
    pub verify_node_ready: Option<PathBuf>,
    /// `upgrade` only: the target, the image, the rules and the waves.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upgrade: Option<UpgradePlan>,
    pub nodes: Vec<NodePlan>,
}

/// What `edgeferry upgrade` will do beyond the steps of each node.
#[derive(Clone, Debug, Serialize)]
pub struct UpgradePlan {
    /// The target KubeEdge version (`--to`).
    pub to: String,
    /// The installation-package repository keadm pulls `<image>:<to>` from,
    /// through the node's containerd hosts.toml (the mirror).
    pub image: String,
    /// Arch -> the installation-package manifest digest for it, from the
    /// signed store: keadm's `--image-digest`. Empty when the target's
    /// keadm has no `--image-digest`.
    pub image_digests: BTreeMap<String, String>,
    pub allow_downgrade: bool,
    pub allow_skip_minor: bool,
    /// false with `--no-rollback`.
    pub rollback: bool,
    /// `--canary N`: the first wave's size; 0 without canaries.
    pub canary: usize,
    /// Node names per wave, in order: the canaries (if any), then the rest.
    /// A failed canary stops the run before the next wave starts.
    pub waves: Vec<Vec<String>>,
}

#[derive(Clone, Debug, Serialize)]
pub struct NodePlan {
    pub name: String,
    pub host: String,
    pub port: u16,
    pub user: String,
    pub sudo: bool,
    pub auth: Vec<&'static str>,
    pub jump: Option<String>,
    pub known_hosts: PathBuf,
    /// The URLs this node pulls through, in the order it tries them: the
    /// node-local mirror, then the site mirrors rotated by its place in
    /// the inventory.
    pub mirrors: Vec<String>,
    pub steps: Vec<StepPlan>,
    /// `upgrade` only: what runs when `keadm_upgrade` or
    /// `upgrade_postcheck` fails (empty with `--no-rollback`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub rollback: Vec<StepPlan>,
    /// Only with `--resume`/`--retry-failed --dry-run`: what that run
    /// would do with this node, from the journal.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resume: Option<ResumePlan>,
    #[serde(skip)]
    pub spec: NodeSpec,
}

/// What a resume would do with one node.
#[derive(Clone, Debug, Serialize)]
pub struct ResumePlan {
    /// run | skip
    pub action: &'static str,
    /// Why a node is skipped: "already joined", "not failed".
    pub reason: Option<&'static str>,
    /// Steps done in an earlier run that would not run again.
    pub skip_steps: Vec<Step>,
}

#[derive(Clone, Debug, Serialize)]
pub struct StepPlan {
    pub step: Step,
    pub timeout_secs: u64,
    /// What runs on the node, secrets redacted. Never holds a secret
    /// itself: secrets go on `stdin`.
    pub command: String,
    /// `command` byte for byte, for the executor: the redactor could
    /// alter a word of the script that happens to equal a password.
    #[serde(skip)]
    pub exact_command: String,
    /// What the command gets on its stdin, one line per element, secrets
    /// redacted: keadm's arguments for `keadm_join`, empty otherwise.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub stdin: Vec<String>,
    /// The same with secrets, for the executor only.
    #[serde(skip)]
    pub secret_stdin: Vec<String>,
}

// ---- join/reset: report.json and --json

#[derive(Debug, Default, Serialize)]
pub struct Counts {
    pub total: usize,
    pub joined: usize,
    pub already_joined: usize,
    pub reset: usize,
    pub failed: usize,
    pub interrupted: usize,
    pub not_started: usize,
    pub upgraded: usize,
    /// `upgrade`: at the target already (skipped as done).
    pub up_to_date: usize,
    /// `upgrade`: failed, rolled back to the version before.
    pub rolled_back: usize,
    /// `upgrade`: failed, and the rollback failed too (exit 4).
    pub rollback_failed: usize,
}

#[derive(Serialize)]
pub struct Report<'a> {
    pub edgeferry: &'static str,
    pub action: Action,
    pub run: &'a str,
    pub started: &'a str,
    pub finished: String,
    pub inventory: &'a Path,
    pub kubeedge_version: &'a str,
    /// The first site mirror (host:port).
    pub mirror: &'a str,
    /// Every site mirror's URL, as given.
    pub mirrors: &'a [String],
    pub state_dir: &'a Path,
    /// strict | accept-new
    pub host_key_policy: &'static str,
    /// Host keys recorded into known_hosts on first contact in this run.
    pub host_keys_learned: usize,
    pub counts: Counts,
    pub exit_code: u8,
    pub nodes: &'a [NodeOutcome],
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeStatus {
    Joined,
    /// Joined in an earlier run; `--resume` left it alone.
    AlreadyJoined,
    Reset,
    Failed,
    /// Ctrl-C arrived while it ran; `--resume` continues it.
    Interrupted,
    /// Not started: the failure budget was spent, a canary failed, or
    /// Ctrl-C came first.
    NotStarted,
    /// `upgrade`: runs the target version now.
    Upgraded,
    /// `upgrade`: ran the target version already; nothing was done.
    UpToDate,
    /// `upgrade`: failed, and `keadm rollback edge` brought back the
    /// version before (`version`); counted as failed (exit 2).
    RolledBack,
    /// `upgrade`: failed, and the rollback failed too (`rollback_error`;
    /// exit 4).
    RollbackFailed,
}

impl NodeStatus {
    /// Whether the node counts against `--max-fail` and a canary.
    pub fn is_failure(self) -> bool {
        matches!(
            self,
            NodeStatus::Failed | NodeStatus::RolledBack | NodeStatus::RollbackFailed
        )
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct StepTiming {
    pub step: Step,
    /// ok | failed | interrupted | skipped (done in an earlier run)
    pub status: &'static str,
    pub ms: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct HostKeyReport {
    pub fingerprint: String,
    /// Recorded into known_hosts on first contact (--accept-new-host-keys).
    pub learned: bool,
}

#[derive(Clone, Debug, Serialize)]
pub struct NodeOutcome {
    pub name: String,
    pub host: String,
    pub port: u16,
    pub status: NodeStatus,
    pub failed_step: Option<Step>,
    pub error: Option<String>,
    /// Stable cause names: connect, connect_timeout, auth, host_key_changed,
    /// host_key_unknown, preflight, containerd, fetch, keadm_failed,
    /// keadm_timeout, edgecore_certificate, timeout, postcheck,
    /// interrupted, ...
    pub error_kind: Option<String>,
    pub arch: Option<String>,
    pub bundle_id: Option<String>,
    pub steps: Vec<StepTiming>,
    pub host_key: Option<HostKeyReport>,
    /// What this run's postcheck proved and repaired; `null` when the
    /// postcheck did not run in this run (failed earlier, or done before).
    pub postcheck: Option<PostcheckReport>,
    /// `upgrade`: the version edgecore reported before (`null` for join
    /// and reset, or when the preflight did not get that far).
    pub version_before: Option<String>,
    /// The KubeEdge version the node runs at the end, when known: the
    /// target after an upgrade, the version before after a rollback.
    pub version: Option<String>,
    /// `upgrade`: why the rollback failed (state `rollback_failed`).
    pub rollback_error: Option<String>,
    pub log: PathBuf,
    pub ms: u64,
}

/// The postcheck's findings for one node.
#[derive(Clone, Debug, Default, Serialize)]
pub struct PostcheckReport {
    /// `connected to HOST:PORT`, or `not checked (quic)`.
    pub hub: Option<String>,
    /// What the postcheck repaired, e.g. edgecore.yaml's mode.
    pub fixed: Vec<String>,
    /// The name the Node has in the cloud (keadm's --edgenode-name, else
    /// the node's lowercased hostname).
    pub node_name: Option<String>,
    /// `--verify-node-ready`: `ready`, `not_ready`, or `not_checked`.
    pub node_ready: &'static str,
}

// ---- status --json

#[derive(Debug, Serialize)]
pub struct StatusNode {
    pub name: String,
    /// ssh | pull
    pub mode: &'static str,
    /// joined | failed | running | enrolled | interrupted
    pub state: &'static str,
    pub step: Option<String>,
    pub error: Option<String>,
    pub last_report: Option<String>,
    pub host: Option<String>,
    /// The KubeEdge version the node ran when last seen (join: the joined
    /// version; upgrade: after its last step).
    pub version: Option<String>,
    /// The last `upgrade` outcome: `upgraded to vX`, `up to date`,
    /// `rolled back to vA`, `ROLLBACK FAILED`, `failed at STEP`,
    /// `interrupted`, `running`; `null`: never upgraded.
    pub upgrade: Option<String>,
}

/// `status --json`.
#[derive(Debug, Serialize)]
pub struct Status<'a> {
    pub nodes: &'a [StatusNode],
}
