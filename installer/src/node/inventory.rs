//! Inventories: our own YAML (site defaults + per-node overrides) and the
//! upstream `keadm batch` config.yaml, read as it is. Both become the same
//! list of `NodeSpec`s; nothing here touches the network.
//!
//! The format is documented in docs/inventory.md.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::Deserialize;

use super::secret::{Redactor, Secret};

/// Where a secret comes from. Inline values work (keadm batch configs have
/// them) but `env`/`file` keep them out of the inventory.
#[derive(Clone, Debug, Deserialize)]
#[serde(untagged)]
pub enum SecretSource {
    Env { env: String },
    File { file: PathBuf },
    Inline(String),
}

/// A `keadm join` flag value: a string, a list, or a bool.
#[derive(Clone, Debug, Deserialize)]
#[serde(untagged)]
pub enum FlagValue {
    Bool(bool),
    Int(i64),
    Str(String),
    List(Vec<String>),
}

impl FlagValue {
    fn values(&self) -> Vec<String> {
        match self {
            FlagValue::Bool(b) => vec![b.to_string()],
            FlagValue::Int(i) => vec![i.to_string()],
            FlagValue::Str(s) => vec![s.clone()],
            FlagValue::List(l) => l.clone(),
        }
    }
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct SshFields {
    user: Option<String>,
    port: Option<u16>,
    key: Option<PathBuf>,
    key_passphrase: Option<SecretSource>,
    password: Option<SecretSource>,
    agent: Option<bool>,
    sudo: Option<bool>,
    jump: Option<JumpFields>,
    known_hosts: Option<PathBuf>,
}

impl SshFields {
    /// `self` with every field `over` sets replaced.
    fn merged(&self, over: &SshFields) -> SshFields {
        SshFields {
            user: over.user.clone().or_else(|| self.user.clone()),
            port: over.port.or(self.port),
            key: over.key.clone().or_else(|| self.key.clone()),
            key_passphrase: over
                .key_passphrase
                .clone()
                .or_else(|| self.key_passphrase.clone()),
            password: over.password.clone().or_else(|| self.password.clone()),
            agent: over.agent.or(self.agent),
            sudo: over.sudo.or(self.sudo),
            jump: over.jump.clone().or_else(|| self.jump.clone()),
            known_hosts: over
                .known_hosts
                .clone()
                .or_else(|| self.known_hosts.clone()),
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct JumpFields {
    host: String,
    port: Option<u16>,
    user: Option<String>,
    key: Option<PathBuf>,
    key_passphrase: Option<SecretSource>,
    password: Option<SecretSource>,
    agent: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct OurInventory {
    kubeedge_version: Option<String>,
    mirror: Option<String>,
    /// Several site mirrors, in order (instead of `mirror:`).
    #[serde(default)]
    mirrors: Vec<String>,
    node_mirror: Option<String>,
    cloudcore: Option<String>,
    token: Option<SecretSource>,
    name_prefix: Option<String>,
    parallel: Option<usize>,
    /// Seconds per step name (connect, preflight, ..., keadm_join).
    #[serde(default)]
    timeouts: BTreeMap<String, u64>,
    /// Seconds edgecore must keep running and connected after keadm's
    /// success (the postcheck's settle time).
    settle: Option<u64>,
    #[serde(default)]
    keadm: BTreeMap<String, FlagValue>,
    #[serde(default)]
    ssh: SshFields,
    #[serde(default)]
    nodes: Vec<OurNode>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct OurNode {
    host: String,
    name: Option<String>,
    cloudcore: Option<String>,
    token: Option<SecretSource>,
    #[serde(default)]
    keadm: BTreeMap<String, FlagValue>,
    #[serde(default)]
    ssh: SshFields,
}

/// How to log in, in the order tried.
#[derive(Clone, Debug)]
pub enum AuthSpec {
    Key {
        path: PathBuf,
        passphrase: Option<Secret>,
    },
    Agent,
    Password(Secret),
}

impl AuthSpec {
    pub fn kind(&self) -> &'static str {
        match self {
            AuthSpec::Key { .. } => "key",
            AuthSpec::Agent => "agent",
            AuthSpec::Password(_) => "password",
        }
    }
}

#[derive(Clone, Debug)]
pub struct HopSpec {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub auths: Vec<AuthSpec>,
}

/// One node, with every default applied.
#[derive(Clone, Debug)]
pub struct NodeSpec {
    /// The node's label in journals, logs and the report: the KubeEdge
    /// node name when there is one, else the keadm batch `nodeName`, else
    /// the address.
    pub label: String,
    /// `--edgenode-name`, when set or generated.
    pub edgenode_name: Option<String>,
    pub host: String,
    pub port: u16,
    pub user: String,
    pub auths: Vec<AuthSpec>,
    pub sudo: bool,
    pub jump: Option<HopSpec>,
    pub known_hosts: PathBuf,
    pub cloudcore: String,
    pub token: Option<Secret>,
    /// Further `keadm join` flags by long name, each with its values.
    pub flags: BTreeMap<String, Vec<String>>,
    /// keadm batch `copyFrom`: a local directory uploaded to the node's
    /// keadm working directory, so `--pre-run=./script.sh` finds it.
    pub copy_from: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Format {
    Edgeferry,
    KeadmBatch,
}

#[derive(Debug)]
pub struct Inventory {
    pub format: Format,
    pub kubeedge_version: Option<String>,
    /// `mirror:` or `mirrors:`, in order; empty when neither is set.
    pub mirrors: Vec<String>,
    /// `node_mirror:`.
    pub node_mirror: Option<String>,
    pub parallel: Option<usize>,
    pub timeouts: BTreeMap<String, u64>,
    /// `settle:` seconds, if the inventory sets it.
    pub settle: Option<u64>,
    pub nodes: Vec<NodeSpec>,
}

/// Flags with a dedicated inventory field; setting them under `keadm:`
/// would let two values disagree.
const OWN_FIELDS: &[(&str, &str)] = &[
    (
        "kubeedge-version",
        "kubeedge_version (or leave it to the store)",
    ),
    ("cloudcore-ipport", "cloudcore"),
    ("token", "token (from env or file)"),
    ("edgenode-name", "name or name_prefix"),
];

pub fn read(path: &Path, redactor: &Redactor) -> Result<Inventory> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read inventory {}", path.display()))?;
    let base = path.parent().unwrap_or(Path::new("."));
    let value: serde_norway::Value = serde_norway::from_str(&text)
        .with_context(|| format!("inventory {} is not valid YAML", path.display()))?;
    let is_batch = value
        .get("keadm")
        .and_then(|k| k.get("keadmVersion"))
        .is_some();
    let inventory = if is_batch {
        let config: BatchConfig = serde_norway::from_value(value).with_context(|| {
            format!(
                "{} looks like a keadm batch config but is not one",
                path.display()
            )
        })?;
        from_batch(config, base, redactor)
    } else {
        let ours: OurInventory = serde_norway::from_value(value).with_context(|| {
            format!(
                "inventory {} does not match the edgeferry format (docs/inventory.md)",
                path.display()
            )
        })?;
        from_ours(ours, base, redactor)
    }
    .with_context(|| format!("inventory {}", path.display()))?;
    check_unique(&inventory.nodes)?;
    Ok(inventory)
}

/// The site-wide part of an inventory, for pull mode: what every node that
/// joins itself gets. `nodes:` and `ssh:` are ignored.
#[derive(Debug)]
pub struct SiteSpec {
    pub kubeedge_version: Option<String>,
    pub cloudcore: String,
    pub token: Option<Secret>,
    pub name_prefix: Option<String>,
    pub flags: BTreeMap<String, Vec<String>>,
    /// `settle:` seconds for the postcheck in `/join.sh`, if set.
    pub settle: Option<u64>,
}

pub fn read_site(path: &Path, redactor: &Redactor) -> Result<SiteSpec> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read site file {}", path.display()))?;
    let base = path.parent().unwrap_or(Path::new("."));
    let inv: OurInventory = serde_norway::from_str(&text).with_context(|| {
        format!(
            "site file {} does not match the edgeferry inventory format (docs/inventory.md)",
            path.display()
        )
    })?;
    let cloudcore = inv.cloudcore.clone().with_context(|| {
        format!(
            "{}: no cloudcore address (set `cloudcore: HOST:PORT`)",
            path.display()
        )
    })?;
    let token = inv
        .token
        .as_ref()
        .map(|s| load_secret(s, base, "token", redactor))
        .transpose()?;
    let mut flags = BTreeMap::new();
    for (name, value) in &inv.keadm {
        let name = name.trim_start_matches('-').to_string();
        if let Some((_, field)) = OWN_FIELDS.iter().find(|(f, _)| *f == name) {
            bail!(
                "{}: set {name} with the `{field}` field, not under keadm:",
                path.display()
            );
        }
        flags.insert(name, value.values());
    }
    Ok(SiteSpec {
        kubeedge_version: inv.kubeedge_version,
        cloudcore,
        token,
        name_prefix: inv.name_prefix,
        flags,
        settle: inv.settle,
    })
}

/// A Kubernetes node name from a hostname a node reported about itself.
pub fn node_name_from_hostname(prefix: Option<&str>, hostname: &str) -> Option<String> {
    let clean: String = hostname
        .to_ascii_lowercase()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '-'
            }
        })
        .take(60)
        .collect();
    let clean = clean.trim_matches('-').to_string();
    let name = match prefix {
        Some(p) => generated_name(p, &clean, 0),
        None => clean,
    };
    check_node_name(&name).ok().map(|()| name)
}

fn from_ours(inv: OurInventory, base: &Path, redactor: &Redactor) -> Result<Inventory> {
    if inv.nodes.is_empty() {
        bail!("no nodes: list them under `nodes:`");
    }
    let mirrors = match (inv.mirror, inv.mirrors) {
        (Some(_), m) if !m.is_empty() => {
            bail!("both mirror: and mirrors: are set: list every mirror under mirrors:")
        }
        (Some(one), _) => vec![one],
        (None, m) => m,
    };
    let site_token = inv
        .token
        .as_ref()
        .map(|s| load_secret(s, base, "token", redactor))
        .transpose()?;
    let mut nodes = Vec::new();
    for node in &inv.nodes {
        let ssh = inv.ssh.merged(&node.ssh);
        let (user, port, auths, sudo, jump, known_hosts) =
            resolve_ssh(&ssh, base, redactor, &node.host)?;
        let cloudcore = node
            .cloudcore
            .clone()
            .or_else(|| inv.cloudcore.clone())
            .with_context(|| {
                format!(
                    "node {}: no cloudcore address (set `cloudcore: HOST:PORT`)",
                    node.host
                )
            })?;
        let token = match &node.token {
            Some(s) => Some(load_secret(s, base, "token", redactor)?),
            None => site_token.clone(),
        };
        let mut flags = BTreeMap::new();
        for (name, value) in inv.keadm.iter().chain(node.keadm.iter()) {
            let name = name.trim_start_matches('-').to_string();
            if let Some((_, field)) = OWN_FIELDS.iter().find(|(f, _)| *f == name) {
                bail!(
                    "node {}: set {name} with the `{field}` field, not under keadm:",
                    node.host
                );
            }
            flags.insert(name, value.values());
        }
        let edgenode_name = match (&node.name, &inv.name_prefix) {
            (Some(n), _) => Some(n.clone()),
            (None, Some(prefix)) => Some(generated_name(prefix, &node.host, port)),
            (None, None) => None,
        };
        nodes.push(NodeSpec {
            label: edgenode_name.clone().unwrap_or_else(|| node.host.clone()),
            edgenode_name,
            host: node.host.clone(),
            port,
            user,
            auths,
            sudo,
            jump,
            known_hosts,
            cloudcore,
            token,
            flags,
            copy_from: None,
        });
    }
    Ok(Inventory {
        format: Format::Edgeferry,
        kubeedge_version: inv.kubeedge_version,
        mirrors,
        node_mirror: inv.node_mirror,
        parallel: inv.parallel,
        timeouts: inv.timeouts,
        settle: inv.settle,
        nodes,
    })
}

type ResolvedSsh = (String, u16, Vec<AuthSpec>, bool, Option<HopSpec>, PathBuf);

fn resolve_ssh(
    ssh: &SshFields,
    base: &Path,
    redactor: &Redactor,
    host: &str,
) -> Result<ResolvedSsh> {
    let user = ssh.user.clone().unwrap_or_else(|| "root".to_string());
    let auths = auths(
        ssh.key.as_deref(),
        ssh.key_passphrase.as_ref(),
        ssh.agent,
        ssh.password.as_ref(),
        base,
        redactor,
    )?;
    if auths.is_empty() {
        bail!("node {host}: no SSH credentials: set ssh.key, ssh.agent: true or ssh.password");
    }
    let jump = match &ssh.jump {
        None => None,
        Some(j) => {
            let auths = auths_or(
                self::auths(
                    j.key.as_deref(),
                    j.key_passphrase.as_ref(),
                    j.agent,
                    j.password.as_ref(),
                    base,
                    redactor,
                )?,
                &auths,
            );
            Some(HopSpec {
                host: j.host.clone(),
                port: j.port.unwrap_or(22),
                user: j.user.clone().unwrap_or_else(|| user.clone()),
                auths,
            })
        }
    };
    let known_hosts = match &ssh.known_hosts {
        Some(p) => resolve_path(p, base),
        None => home().join(".ssh/known_hosts"),
    };
    // Non-root users need sudo for everything a join does.
    let sudo = ssh.sudo.unwrap_or(user != "root");
    Ok((user, ssh.port.unwrap_or(22), auths, sudo, jump, known_hosts))
}

fn auths_or(own: Vec<AuthSpec>, fallback: &[AuthSpec]) -> Vec<AuthSpec> {
    if own.is_empty() {
        fallback.to_vec()
    } else {
        own
    }
}

fn auths(
    key: Option<&Path>,
    passphrase: Option<&SecretSource>,
    agent: Option<bool>,
    password: Option<&SecretSource>,
    base: &Path,
    redactor: &Redactor,
) -> Result<Vec<AuthSpec>> {
    let mut out = Vec::new();
    if let Some(key) = key {
        out.push(AuthSpec::Key {
            path: resolve_path(key, base),
            passphrase: passphrase
                .map(|p| load_secret(p, base, "key_passphrase", redactor))
                .transpose()?,
        });
    }
    if agent == Some(true) {
        out.push(AuthSpec::Agent);
    }
    if let Some(p) = password {
        out.push(AuthSpec::Password(load_secret(
            p, base, "password", redactor,
        )?));
    }
    Ok(out)
}

fn load_secret(
    source: &SecretSource,
    base: &Path,
    what: &str,
    redactor: &Redactor,
) -> Result<Secret> {
    let value = match source {
        SecretSource::Inline(v) => v.clone(),
        SecretSource::Env { env } => std::env::var(env)
            .with_context(|| format!("{what}: environment variable {env} is not set: export it"))?,
        SecretSource::File { file } => {
            let path = resolve_path(file, base);
            std::fs::read_to_string(&path)
                .with_context(|| format!("{what}: cannot read {}", path.display()))?
                .trim_end_matches(['\r', '\n'])
                .to_string()
        }
    };
    if value.is_empty() {
        bail!("{what} is empty");
    }
    if value.len() < 4 {
        // The redactor could not tell such a value from ordinary text.
        bail!("{what} is shorter than 4 characters: edgeferry cannot keep it out of logs");
    }
    let secret = Secret::new(value);
    redactor.add(&secret);
    Ok(secret)
}

fn home() -> PathBuf {
    std::env::var_os("HOME").map_or_else(|| PathBuf::from("/root"), PathBuf::from)
}

fn resolve_path(p: &Path, base: &Path) -> PathBuf {
    if let Ok(rest) = p.strip_prefix("~") {
        return home().join(rest);
    }
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    }
}

/// `<prefix>-<6 hex>` from the address, so the same node gets the same
/// name on every run without any saved state (as Penetrator's
/// `nodeNamePrefix`, but stable).
pub fn generated_name(prefix: &str, host: &str, port: u16) -> String {
    let digest = edgeferry_bundle::hashing::sha256_hex(format!("{host}:{port}").as_bytes());
    format!("{}-{}", prefix.to_ascii_lowercase(), &digest[..6])
}

fn check_unique(nodes: &[NodeSpec]) -> Result<()> {
    let mut labels = BTreeSet::new();
    let mut addrs = BTreeSet::new();
    for n in nodes {
        if !labels.insert(n.label.as_str()) {
            bail!("node name {} appears twice: names must be unique", n.label);
        }
        if !addrs.insert((n.host.as_str(), n.port)) {
            bail!("node address {}:{} appears twice", n.host, n.port);
        }
        if let Some(name) = &n.edgenode_name {
            check_node_name(name)?;
        }
    }
    Ok(())
}

/// Kubernetes node names are RFC 1123 subdomains.
fn check_node_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 253
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric());
    if !ok {
        bail!("node name {name:?} is not a valid Kubernetes node name: use lowercase letters, digits, '-' and '.'");
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// The config.yaml of upstream `keadm batch -c`, read as it is

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct BatchConfig {
    keadm: BatchKeadm,
    nodes: Vec<BatchNode>,
    #[serde(default)]
    max_run_num: usize,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
#[allow(dead_code)] // download/archGroup/offlinePackageDir are keadm's ways to get keadm; ours is the store
struct BatchKeadm {
    download: Option<serde_norway::Value>,
    keadm_version: String,
    #[serde(default)]
    arch_group: Vec<String>,
    offline_package_dir: Option<String>,
    #[serde(default)]
    cmd_tpl_args: BTreeMap<String, String>,
    keadm_bin_dir: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct BatchNode {
    node_name: String,
    keadm_cmd: String,
    copy_from: Option<String>,
    #[allow(dead_code)]
    keadm_bin_dir: Option<String>,
    ssh: BatchSsh,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct BatchSsh {
    ip: String,
    username: Option<String>,
    port: Option<u16>,
    auth: BatchAuth,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct BatchAuth {
    #[serde(rename = "type")]
    kind: String,
    password_auth: Option<BatchPassword>,
    private_key_auth: Option<BatchKey>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct BatchPassword {
    password: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct BatchKey {
    private_key_path: String,
}

fn from_batch(config: BatchConfig, base: &Path, redactor: &Redactor) -> Result<Inventory> {
    if config.nodes.is_empty() {
        bail!("no nodes: list them under `nodes:`");
    }
    let version = &config.keadm.keadm_version;
    let flags_table = edgeferry_bundle::keadm::flags_for(version)?;
    // Template values named like secrets are secrets wherever they end up
    // (the token is also caught as --token below).
    for (key, value) in &config.keadm.cmd_tpl_args {
        let k = key.to_ascii_lowercase();
        if ["token", "pass", "secret", "key"]
            .iter()
            .any(|s| k.contains(s))
            && value.len() >= 4
        {
            redactor.add(&Secret::new(value.clone()));
        }
    }
    let mut nodes = Vec::new();
    for node in &config.nodes {
        let label = &node.node_name;
        let rendered = render_template(&node.keadm_cmd, &config.keadm.cmd_tpl_args)
            .with_context(|| format!("node {label}: keadmCmd"))?;
        let words = shell_words(&rendered).with_context(|| format!("node {label}: keadmCmd"))?;
        let Some((first, args)) = words.split_first() else {
            bail!("node {label}: keadmCmd is empty");
        };
        if first != "join" {
            bail!("node {label}: keadmCmd runs `keadm {first}`; edgeferry join runs joins only (use edgeferry reset for resets)");
        }
        let parsed = parse_join_args(args, &flags_table)
            .with_context(|| format!("node {label}: keadmCmd"))?;
        let mut flags = BTreeMap::new();
        let mut cloudcore = None;
        let mut token = None;
        let mut edgenode_name = None;
        for (name, value) in parsed {
            match name.as_str() {
                "cloudcore-ipport" => cloudcore = Some(value),
                "token" => {
                    let s = Secret::new(value);
                    redactor.add(&s);
                    token = Some(s);
                }
                "edgenode-name" => edgenode_name = Some(value),
                "kubeedge-version" => {
                    let v = if value.starts_with('v') {
                        value
                    } else {
                        format!("v{value}")
                    };
                    if &v != version {
                        bail!("node {label}: keadmCmd asks for --kubeedge-version={v} but keadmVersion is {version}");
                    }
                }
                _ => flags.entry(name).or_insert_with(Vec::new).push(value),
            }
        }
        let cloudcore = cloudcore
            .with_context(|| format!("node {label}: keadmCmd has no --cloudcore-ipport"))?;
        let auth = &node.ssh.auth;
        let auths = match auth.kind.as_str() {
            "password" => {
                let p = auth.password_auth.as_ref().with_context(|| {
                    format!("node {label}: auth type password without passwordAuth")
                })?;
                vec![AuthSpec::Password(load_secret(
                    &SecretSource::Inline(p.password.clone()),
                    base,
                    "password",
                    redactor,
                )?)]
            }
            "privateKey" => {
                let k = auth.private_key_auth.as_ref().with_context(|| {
                    format!("node {label}: auth type privateKey without privateKeyAuth")
                })?;
                vec![AuthSpec::Key {
                    path: resolve_path(Path::new(&k.private_key_path), base),
                    passphrase: None,
                }]
            }
            other => bail!("node {label}: unknown auth type {other:?}: use password or privateKey"),
        };
        let port = node.ssh.port.unwrap_or(22);
        let user = node
            .ssh
            .username
            .clone()
            .unwrap_or_else(|| "root".to_string());
        nodes.push(NodeSpec {
            label: label.clone(),
            edgenode_name,
            host: node.ssh.ip.clone(),
            port,
            sudo: user != "root",
            user,
            auths,
            jump: None,
            known_hosts: home().join(".ssh/known_hosts"),
            cloudcore,
            token,
            flags,
            copy_from: node
                .copy_from
                .as_deref()
                .filter(|s| !s.is_empty())
                .map(|s| resolve_path(Path::new(s), base)),
        });
    }
    Ok(Inventory {
        format: Format::KeadmBatch,
        kubeedge_version: Some(version.clone()),
        mirrors: Vec::new(),
        node_mirror: None,
        // keadm batch treats 0 as its default of 5.
        parallel: Some(if config.max_run_num == 0 {
            5
        } else {
            config.max_run_num
        }),
        timeouts: BTreeMap::new(),
        settle: None,
        nodes,
    })
}

/// Go text/template's `{{.key}}` with map data, the only form keadm batch
/// configs use. A missing key is an error here; Go would print "<no value>"
/// into the command line.
fn render_template(template: &str, args: &BTreeMap<String, String>) -> Result<String> {
    let mut out = String::new();
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find("}}")
            .with_context(|| format!("unclosed {{{{ in {template:?}"))?;
        let inner = after[..end]
            .trim()
            .trim_start_matches('-')
            .trim_end_matches('-')
            .trim();
        let key = inner
            .strip_prefix('.')
            .filter(|k| k.chars().all(|c| c.is_alphanumeric() || c == '_'))
            .with_context(|| {
                format!("template action {{{{{inner}}}}} is not of the form {{{{.key}}}}")
            })?;
        let value = args
            .get(key)
            .with_context(|| format!("template uses .{key} but cmdTplArgs has no {key}"))?;
        out.push_str(value);
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Splits a command line as sh would: whitespace, single and double
/// quotes, backslash escapes. No expansions.
pub fn shell_words(line: &str) -> Result<Vec<String>> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            c if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => word.push(c),
                        None => bail!("unclosed single quote"),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(c @ ('"' | '\\' | '$' | '`')) => word.push(c),
                            Some(c) => {
                                word.push('\\');
                                word.push(c);
                            }
                            None => bail!("unclosed double quote"),
                        },
                        Some(c) => word.push(c),
                        None => bail!("unclosed double quote"),
                    }
                }
            }
            '\\' => {
                in_word = true;
                if let Some(c) = chars.next() {
                    word.push(c);
                }
            }
            c => {
                in_word = true;
                word.push(c);
            }
        }
    }
    if in_word {
        words.push(word);
    }
    Ok(words)
}

/// Parses `keadm join` arguments the way pflag would, against the flag
/// table of the version: long and short forms, `=` or separate values.
fn parse_join_args(
    args: &[String],
    table: &edgeferry_bundle::keadm::KeadmFlags,
) -> Result<Vec<(String, String)>> {
    use edgeferry_bundle::keadm::FlagKind;
    let mut out = Vec::new();
    let mut i = 0;
    while i < args.len() {
        let arg = &args[i];
        let (name, inline) = if let Some(long) = arg.strip_prefix("--") {
            match long.split_once('=') {
                Some((n, v)) => (n.to_string(), Some(v.to_string())),
                None => (long.to_string(), None),
            }
        } else if let Some(short) = arg.strip_prefix('-').filter(|s| !s.is_empty()) {
            let (c, rest) = short.split_at(1);
            let rest = rest.strip_prefix('=').unwrap_or(rest);
            (c.to_string(), (!rest.is_empty()).then(|| rest.to_string()))
        } else {
            bail!("unexpected argument {arg:?}");
        };
        let flag = table
            .join_flag(&name)
            .with_context(|| format!("keadm join has no flag {arg:?} in this KubeEdge version"))?;
        let value = match (flag.kind, inline) {
            (_, Some(v)) => v,
            (FlagKind::Bool, None) => "true".to_string(),
            (_, None) => {
                i += 1;
                args.get(i)
                    .cloned()
                    .with_context(|| format!("flag needs an argument: --{}", flag.long))?
            }
        };
        out.push((flag.long.to_string(), value));
        i += 1;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shell_words_split_like_sh() {
        assert_eq!(
            shell_words(r#"join --a='x y' -b "q\"r" c\ d"#).unwrap(),
            ["join", "--a=x y", "-b", "q\"r", "c d"]
        );
    }

    #[test]
    fn templates_render_and_missing_keys_fail() {
        let args: BTreeMap<String, String> = [
            ("cmd".to_string(), "join".to_string()),
            ("token".to_string(), "T0KEN".to_string()),
        ]
        .into_iter()
        .collect();
        assert_eq!(
            render_template("{{.cmd}} --token={{ .token }}", &args).unwrap(),
            "join --token=T0KEN"
        );
        let err = render_template("{{.nope}}", &args).unwrap_err().to_string();
        assert!(err.contains("cmdTplArgs has no nope"), "{err}");
    }

    #[test]
    fn generated_names_are_stable_and_valid() {
        let a = generated_name("Edge", "10.0.0.1", 22);
        assert_eq!(a, generated_name("Edge", "10.0.0.1", 22));
        assert_ne!(a, generated_name("Edge", "10.0.0.2", 22));
        assert!(a.starts_with("edge-") && a.len() == 11);
        check_node_name(&a).unwrap();
        assert!(check_node_name("Bad_Name").is_err());
    }
}
