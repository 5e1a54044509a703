//! `--verify-node-ready`: after a node's postcheck, ask the cloud's
//! Kubernetes API whether its Node object is Ready. The postcheck proves
//! what the node can see (edgecore running and connected to the hub);
//! only the API shows that cloudcore registered the node and the node
//! reports itself healthy.
//!
//! The kubeconfig is read once, before any node is touched, so a bad one
//! stops the run before it starts. Supported: the current context's
//! cluster (`server`, `certificate-authority(-data)`) and user (`token`,
//! `tokenFile`, `client-certificate(-data)` + `client-key(-data)`). Exec
//! and auth-provider plugins are refused by name: they would run
//! programs edgeferry does not control.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use edgeferry_bundle::sign::unbase64;
use serde::Deserialize;

use crate::node::secret::Secret;

/// A Node's Ready condition, as the API server reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Readiness {
    Ready,
    /// The condition's status and reason, e.g. `False (KubeletNotReady)`.
    NotReady(String),
    /// No Node object of that name (cloudcore never registered it).
    Missing,
}

/// A client for one API server, made from a kubeconfig.
pub struct ApiClient {
    agent: ureq::Agent,
    server: String,
    token: Option<Secret>,
    /// Where the settings came from, for messages.
    source: PathBuf,
}

#[derive(Deserialize)]
struct Kubeconfig {
    #[serde(rename = "current-context")]
    current_context: Option<String>,
    #[serde(default)]
    clusters: Vec<Named<Cluster>>,
    #[serde(default)]
    users: Vec<Named<User>>,
    #[serde(default)]
    contexts: Vec<Named<ContextRef>>,
}

#[derive(Deserialize)]
struct Named<T> {
    name: String,
    #[serde(alias = "cluster", alias = "user", alias = "context")]
    value: T,
}

#[derive(Deserialize)]
struct Cluster {
    server: String,
    #[serde(rename = "certificate-authority")]
    ca_file: Option<PathBuf>,
    #[serde(rename = "certificate-authority-data")]
    ca_data: Option<String>,
}

#[derive(Deserialize, Default)]
struct User {
    token: Option<String>,
    #[serde(rename = "tokenFile")]
    token_file: Option<PathBuf>,
    #[serde(rename = "client-certificate")]
    cert_file: Option<PathBuf>,
    #[serde(rename = "client-certificate-data")]
    cert_data: Option<String>,
    #[serde(rename = "client-key")]
    key_file: Option<PathBuf>,
    #[serde(rename = "client-key-data")]
    key_data: Option<String>,
    exec: Option<serde_norway::Value>,
    #[serde(rename = "auth-provider")]
    auth_provider: Option<serde_norway::Value>,
}

#[derive(Deserialize)]
struct ContextRef {
    cluster: String,
    user: Option<String>,
}

/// Kubeconfigs are small; anything bigger is not one.
const MAX_KUBECONFIG: u64 = 1 << 20;
/// A Node object is a few KiB; its JSON is read up to this.
const MAX_NODE_JSON: u64 = 1 << 20;

/// PEM from a `*-data` field (base64 of the PEM) or from a file, which a
/// relative path names from the kubeconfig's directory, as kubectl does.
fn pem_of(
    data: Option<&str>,
    file: Option<&Path>,
    base: &Path,
    what: &str,
) -> Result<Option<Vec<u8>>> {
    if let Some(d) = data {
        let bytes: String = d.split_whitespace().collect();
        return unbase64(&bytes)
            .map(Some)
            .with_context(|| format!("{what}-data is not base64"));
    }
    match file {
        Some(f) => {
            let path = base.join(f);
            std::fs::read(&path)
                .map(Some)
                .with_context(|| format!("cannot read {what} {}", path.display()))
        }
        None => Ok(None),
    }
}

/// The certificates in a PEM text, in order; other blocks are skipped.
fn certificates(pem: &[u8]) -> Vec<ureq::tls::Certificate<'static>> {
    ureq::tls::parse_pem(pem)
        .filter_map(|item| match item {
            Ok(ureq::tls::PemItem::Certificate(c)) => Some(c),
            _ => None,
        })
        .collect()
}

impl ApiClient {
    pub fn from_kubeconfig(path: &Path, request_timeout: Duration) -> Result<ApiClient> {
        let who = format!("--verify-node-ready {}", path.display());
        let meta = std::fs::metadata(path).with_context(|| format!("{who}: cannot read it"))?;
        if meta.len() > MAX_KUBECONFIG {
            bail!("{who}: {} bytes is too big for a kubeconfig", meta.len());
        }
        let text =
            std::fs::read_to_string(path).with_context(|| format!("{who}: cannot read it"))?;
        let config: Kubeconfig =
            serde_norway::from_str(&text).with_context(|| format!("{who}: not a kubeconfig"))?;
        let base = path.parent().unwrap_or(Path::new("."));
        let context = match (&config.current_context, config.contexts.as_slice()) {
            (Some(name), contexts) => {
                contexts.iter().find(|c| &c.name == name).with_context(|| {
                    format!("{who}: current-context {name:?} is not among its contexts")
                })?
            }
            (None, [only]) => only,
            (None, _) => bail!("{who}: no current-context: set one (kubectl config use-context)"),
        };
        let cluster = &config
            .clusters
            .iter()
            .find(|c| c.name == context.value.cluster)
            .with_context(|| format!("{who}: no cluster {:?}", context.value.cluster))?
            .value;
        let no_user = User::default();
        let user = match &context.value.user {
            Some(name) => {
                &config
                    .users
                    .iter()
                    .find(|u| &u.name == name)
                    .with_context(|| format!("{who}: no user {name:?}"))?
                    .value
            }
            None => &no_user,
        };
        if user.exec.is_some() || user.auth_provider.is_some() {
            bail!("{who}: its user authenticates through an exec or auth-provider plugin, which edgeferry does not run: use a kubeconfig with a token or a client certificate");
        }
        if !cluster.server.starts_with("https://") {
            bail!(
                "{who}: server {} is not https://: the Node's state must come from an authenticated API server",
                cluster.server
            );
        }
        let ca = pem_of(
            cluster.ca_data.as_deref(),
            cluster.ca_file.as_deref(),
            base,
            "certificate-authority",
        )
        .with_context(|| who.clone())?
        .with_context(|| format!("{who}: its cluster has no certificate-authority(-data): edgeferry trusts only the CA the kubeconfig names"))?;
        let roots = certificates(&ca);
        if roots.is_empty() {
            bail!("{who}: its certificate-authority holds no PEM certificate");
        }
        let mut tls = ureq::tls::TlsConfig::builder()
            .root_certs(ureq::tls::RootCerts::Specific(Arc::new(roots)));
        let cert = pem_of(
            user.cert_data.as_deref(),
            user.cert_file.as_deref(),
            base,
            "client-certificate",
        )
        .with_context(|| who.clone())?;
        let key = pem_of(
            user.key_data.as_deref(),
            user.key_file.as_deref(),
            base,
            "client-key",
        )
        .with_context(|| who.clone())?;
        match (cert, key) {
            (Some(cert), Some(key)) => {
                let chain = certificates(&cert);
                let key = ureq::tls::PrivateKey::from_pem(&key).map_err(|_| {
                    anyhow::anyhow!("{who}: its client-key is not a PEM private key")
                })?;
                tls = tls.client_cert(Some(ureq::tls::ClientCert::new_with_certs(&chain, key)));
            }
            (None, None) => {}
            _ => bail!("{who}: its user has a client certificate or a client key, not both"),
        }
        let token = match (&user.token, &user.token_file) {
            (Some(t), _) => Some(Secret::new(t.trim().to_string())),
            (None, Some(f)) => {
                let path = base.join(f);
                let t = std::fs::read_to_string(&path)
                    .with_context(|| format!("{who}: cannot read tokenFile {}", path.display()))?;
                Some(Secret::new(t.trim().to_string()))
            }
            (None, None) => None,
        };
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .tls_config(tls.build())
            .timeout_global(Some(request_timeout))
            .http_status_as_error(false)
            .max_redirects(0)
            .build()
            .into();
        Ok(ApiClient {
            agent,
            server: cluster.server.trim_end_matches('/').to_string(),
            token,
            source: path.to_path_buf(),
        })
    }

    /// The bearer token, for the redactor.
    pub fn token(&self) -> Option<&Secret> {
        self.token.as_ref()
    }

    /// The Node's Ready condition now. Errors are the API server's or the
    /// network's, one line, without the token.
    pub fn readiness(&self, node: &str) -> Result<Readiness> {
        if node.is_empty()
            || !node
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
        {
            bail!("{node:?} is not a Kubernetes node name");
        }
        let url = format!("{}/api/v1/nodes/{node}", self.server);
        let mut request = self.agent.get(&url).header("Accept", "application/json");
        if let Some(t) = &self.token {
            request = request.header("Authorization", &format!("Bearer {}", t.expose()));
        }
        let mut response = request
            .call()
            .map_err(|e| anyhow::anyhow!("GET {url} (from {}): {e}", self.source.display()))?;
        let status = response.status().as_u16();
        let body = response
            .body_mut()
            .with_config()
            .limit(MAX_NODE_JSON)
            .read_to_vec()
            .map_err(|e| anyhow::anyhow!("GET {url}: reading the answer: {e}"))?;
        match status {
            200 => {}
            404 => return Ok(Readiness::Missing),
            401 | 403 => bail!(
                "GET {url}: HTTP {status}: the kubeconfig's user may not read nodes (needs get on nodes)"
            ),
            s => bail!("GET {url}: HTTP {s}"),
        }
        parse_ready(&body).with_context(|| format!("GET {url}: not a Node object"))
    }
}

#[derive(Deserialize)]
struct NodeJson {
    #[serde(default)]
    status: NodeStatusJson,
}

#[derive(Deserialize, Default)]
struct NodeStatusJson {
    #[serde(default)]
    conditions: Vec<Condition>,
}

#[derive(Deserialize)]
struct Condition {
    #[serde(rename = "type")]
    kind: String,
    status: String,
    #[serde(default)]
    reason: Option<String>,
}

fn parse_ready(body: &[u8]) -> Result<Readiness> {
    let node: NodeJson = serde_json::from_slice(body)?;
    Ok(
        match node.status.conditions.iter().find(|c| c.kind == "Ready") {
            Some(c) if c.status == "True" => Readiness::Ready,
            Some(c) => Readiness::NotReady(match &c.reason {
                Some(r) => format!("{} ({r})", c.status),
                None => c.status.clone(),
            }),
            None => Readiness::NotReady("no Ready condition yet".into()),
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_condition_is_read_from_the_node_status() {
        let ready = br#"{"kind":"Node","status":{"conditions":[{"type":"MemoryPressure","status":"False"},{"type":"Ready","status":"True","reason":"EdgeReady"}]}}"#;
        assert_eq!(parse_ready(ready).unwrap(), Readiness::Ready);
        let not = br#"{"status":{"conditions":[{"type":"Ready","status":"Unknown","reason":"NodeStatusUnknown"}]}}"#;
        assert_eq!(
            parse_ready(not).unwrap(),
            Readiness::NotReady("Unknown (NodeStatusUnknown)".into())
        );
        assert_eq!(
            parse_ready(br#"{"status":{}}"#).unwrap(),
            Readiness::NotReady("no Ready condition yet".into())
        );
        assert!(parse_ready(b"<html>").is_err());
    }

    fn write(dir: &Path, text: &str) -> PathBuf {
        let p = dir.join("kubeconfig");
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn kubeconfigs_that_cannot_be_trusted_are_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let t = Duration::from_secs(1);
        let exec = "apiVersion: v1\nkind: Config\ncurrent-context: c\ncontexts: [{name: c, context: {cluster: k, user: u}}]\nclusters: [{name: k, cluster: {server: 'https://10.0.0.1:6443', certificate-authority-data: eA==}}]\nusers: [{name: u, user: {exec: {command: aws}}}]\n";
        let e = ApiClient::from_kubeconfig(&write(dir.path(), exec), t)
            .err()
            .unwrap();
        assert!(
            format!("{e:#}").contains("exec or auth-provider plugin"),
            "{e:#}"
        );
        let plain = "current-context: c\ncontexts: [{name: c, context: {cluster: k}}]\nclusters: [{name: k, cluster: {server: 'http://10.0.0.1:8080'}}]\n";
        let e = ApiClient::from_kubeconfig(&write(dir.path(), plain), t)
            .err()
            .unwrap();
        assert!(format!("{e:#}").contains("is not https://"), "{e:#}");
        let no_ca = "current-context: c\ncontexts: [{name: c, context: {cluster: k}}]\nclusters: [{name: k, cluster: {server: 'https://10.0.0.1:6443'}}]\n";
        let e = ApiClient::from_kubeconfig(&write(dir.path(), no_ca), t)
            .err()
            .unwrap();
        assert!(
            format!("{e:#}").contains("no certificate-authority"),
            "{e:#}"
        );
        let lost =
            "current-context: other\ncontexts: [{name: c, context: {cluster: k}}]\nclusters: []\n";
        let e = ApiClient::from_kubeconfig(&write(dir.path(), lost), t)
            .err()
            .unwrap();
        assert!(
            format!("{e:#}").contains("current-context \"other\""),
            "{e:#}"
        );
    }
}
