//! Pull mode: nodes nobody can SSH into join and upgrade themselves with
//! one command against the mirror. `/join.sh` and `/upgrade.sh` (no
//! secrets in them), `/v1/enroll` (site parameters, token included, only
//! for a valid enrollment code), `/v1/upgrade` (the version rules' verdict
//! and a report key, only for a valid upgrade code) and `/v1/report`
//! (bounded status from enrolled nodes).

pub mod command;
pub mod enroll;
pub mod limit;
pub mod script;

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use anyhow::{Context, Result};
use axum::body::Body;
use axum::http::{header, HeaderMap, Method, Response, StatusCode};
use http_body_util::BodyExt;
use serde::{Deserialize, Serialize};

use crate::config::{Config, PullConfig};
use crate::node::hosts::{Mirror, Mirrors};
use crate::node::inventory::{self, SiteSpec};
use crate::node::offer;
use crate::node::script::{
    self as node_script, JoinArgs, KeadmUpgradeParams, PostcheckParams, PreflightParams,
    UpgradePreflightParams,
};
use crate::node::secret::Redactor;
use crate::node::steps::{self, Action, StepInput, UpgradeInput};
use crate::node::upgrade;
use crate::printer::Printer;
use crate::store::State;

pub const SITE_FILE: &str = "site.yaml";
pub const REPORTS_FILE: &str = "reports.jsonl";
/// A report is a few short fields; anything bigger is refused unread.
pub const MAX_REPORT_BYTES: usize = 4096;
pub const MAX_MESSAGE_CHARS: usize = 1024;

/// `/join.sh` or `/upgrade.sh` for the store as last seen, and the
/// KubeEdge version it joins or upgrades to.
#[derive(Clone, Default)]
struct Script {
    bytes: bytes::Bytes,
    sha256: String,
    version: String,
}

pub struct Site {
    pub dir: PathBuf,
    spec: SiteSpec,
    redactor: Redactor,
    /// This mirror first, then its `--peer-mirror`s (and the node-local
    /// one ahead of all): what `/join.sh` writes and fetches through.
    mirrors: Mirrors,
    keadm_timeout: std::time::Duration,
    min_free_mib: u64,
    settle: std::time::Duration,
    connect_grace: std::time::Duration,
    timeouts: crate::config::JoinConfig,
    /// The script and its sha256, rebuilt when the store changes.
    script: RwLock<Script>,
    /// `/upgrade.sh`, or why the store offers none.
    upgrade: RwLock<std::result::Result<Script, String>>,
    out: Printer,
    limits: PullConfig,
    /// Refused enrollments and reports per client address.
    refused: limit::Buckets<IpAddr>,
    /// Accepted reports per node.
    reports: limit::Buckets<String>,
    /// Lines in `reports.jsonl`; `None` until the first report compacts it.
    report_lines: Arc<Mutex<Option<ReportLines>>>,
}

#[derive(Clone, Copy)]
struct ReportLines {
    now: usize,
    compact_at: usize,
}

/// The printed one-liner for `script` (`join.sh`, `upgrade.sh`):
/// download, check the pinned sha256, run. A fresh
/// mktemp directory (mode 0700), not a fixed /tmp name another local user
/// could create first and rewrite between the check and the run.
///
/// Over TLS, `pin` (`sha256//…` of the mirror's public key) is the only
/// trust: `-k` drops curl's CA-chain check, which a site certificate would
/// fail, and `--pinnedpubkey` still aborts unless the server's key is the
/// mirror's. The script then trusts the mirror's CA for everything else.
pub fn one_liner(mirror: &Mirror, pin: Option<&str>, script: &str, sha256: &str) -> String {
    let trust = match pin {
        Some(pin) if mirror.tls() => format!("-k --pinnedpubkey '{pin}' "),
        _ => String::new(),
    };
    format!(
        "d=$(mktemp -d) && curl -fsS {trust}-o \"$d/{script}\" {}/{script} && echo \"{sha256}  $d/{script}\" | sha256sum -c - && sh \"$d/{script}\" <CODE>",
        mirror.url()
    )
}

/// The newest KubeEdge version the store holds: what `/upgrade.sh`
/// upgrades to (an operator who wants another target loads that bundle
/// last, or keeps newer ones out of the site's store).
fn newest_version(state: &State) -> Option<String> {
    state
        .bundles
        .values()
        .map(|b| b.kubeedge_version.as_str())
        .filter_map(|v| upgrade::numbers(v).map(|n| (n, v)))
        .max()
        .map(|(_, v)| v.to_string())
}

impl Site {
    pub fn open(
        dir: &Path,
        mirrors: &Mirrors,
        state: &State,
        config: &Config,
        out: Printer,
    ) -> Result<Site> {
        let redactor = Redactor::default();
        let spec = inventory::read_site(&dir.join(SITE_FILE), &redactor)
            .with_context(|| format!("pull mode: {}", dir.join(SITE_FILE).display()))?;
        let settle = spec
            .settle
            .map_or(config.join.postcheck_settle, std::time::Duration::from_secs);
        let site = Site {
            dir: dir.to_path_buf(),
            spec,
            redactor,
            mirrors: mirrors.clone(),
            keadm_timeout: config.join.keadm_join_timeout,
            min_free_mib: config.join.min_free_mib,
            settle,
            connect_grace: config.join.postcheck_connect_grace,
            timeouts: config.join.clone(),
            script: RwLock::new(Script::default()),
            upgrade: RwLock::new(Err(String::new())),
            out,
            limits: config.pull.clone(),
            refused: limit::Buckets::new(
                config.pull.refused_burst,
                config.pull.refused_refill,
                config.pull.max_tracked,
            ),
            reports: limit::Buckets::new(
                config.pull.report_burst,
                config.pull.report_refill,
                config.pull.max_tracked,
            ),
            report_lines: Arc::new(Mutex::new(None)),
        };
        site.rebuild(state)?;
        Ok(site)
    }

    pub fn script_sha256(&self) -> String {
        self.script.read().expect("script lock").sha256.clone()
    }

    /// `/upgrade.sh`'s (sha256, target version), or why there is none.
    pub fn upgrade_script(&self) -> std::result::Result<(String, String), String> {
        match &*self.upgrade.read().expect("script lock") {
            Ok(s) => Ok((s.sha256.clone(), s.version.clone())),
            Err(why) => Err(why.clone()),
        }
    }

    /// Regenerates `/join.sh` and `/upgrade.sh` for the store as it is
    /// now; returns whether either changed. A store that offers no upgrade
    /// leaves `/upgrade.sh` absent, with the reason, and `/join.sh` served.
    pub fn rebuild(&self, state: &State) -> Result<bool> {
        let joined = self.rebuild_join(state)?;
        let upgrade = self.render_upgrade(state).map_err(|e| format!("{e:#}"));
        let mut current = self.upgrade.write().expect("script lock");
        let changed = match (&*current, &upgrade) {
            (Ok(a), Ok(b)) => a.sha256 != b.sha256,
            (Err(a), Err(b)) => a != b,
            _ => true,
        };
        *current = upgrade;
        Ok(joined || changed)
    }

    /// `/upgrade.sh` to the newest version in the store, from the same
    /// offer, flag checks and installation-package digests as `edgeferry
    /// upgrade` plans with.
    fn render_upgrade(&self, state: &State) -> Result<Script> {
        let who = format!("site.yaml ({})", self.dir.display());
        let to = newest_version(state)
            .context("the store holds no KubeEdge version of the form vMAJOR.MINOR.PATCH")?;
        // It goes into the script and into reports' JSON as it is.
        if !to
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-.+".contains(c))
        {
            anyhow::bail!("KubeEdge version {to:?} holds characters a version does not");
        }
        let offer = offer::store_offer(state, Some(&to), &self.dir)?;
        let with_digest = offer::check_upgrade_flags(&to)?;
        let arches: Vec<String> = offer.bundles.keys().cloned().collect();
        let (image, mut digests) = offer::installation_package(state, &to, &arches, &self.dir)?;
        if !with_digest {
            digests.clear();
        }
        let (cloud_host, ports, cri_socket) =
            offer::preflight_target(&self.spec.cloudcore, &self.spec.flags, &who)?;
        let hosts_files = offer::hosts_toml_for(state, &self.mirrors);
        let t = &self.timeouts;
        let text = script::render_upgrade(&StepInput {
            version: &to,
            mirrors: &self.mirrors,
            keadm: &offer.keadm,
            hosts: &hosts_files,
            preflight: PreflightParams {
                store_arches: arches.clone(),
                store_images: offer::store_images(state),
                cri_socket,
                mirrors: &self.mirrors,
                cloud_host: &cloud_host,
                cloud_ports: ports.clone(),
                min_free_mib: self.min_free_mib,
            },
            postcheck: self.postcheck(&cloud_host, ports[0]),
            join_args: JoinArgs::FromFile,
            reset_args: &[],
            keadm_join_timeout: t.keadm_join_timeout,
            keadm_reset_timeout: t.keadm_reset_timeout,
            upgrade: Some(UpgradeInput {
                preflight: UpgradePreflightParams {
                    to: &to,
                    store_arches: arches.clone(),
                    mirrors: &self.mirrors,
                    min_free_mib: self.min_free_mib,
                },
                keadm: KeadmUpgradeParams {
                    to: &to,
                    image: &image,
                    digests: &digests,
                    timeout_secs: t.keadm_upgrade_timeout.as_secs(),
                },
                backup_timeout: t.keadm_backup_timeout,
                rollback_timeout: t.keadm_rollback_timeout,
            }),
        });
        Ok(Script {
            sha256: edgeferry_bundle::hashing::sha256_hex(text.as_bytes()),
            bytes: bytes::Bytes::from(text),
            version: to,
        })
    }

    /// The postcheck both scripts run, with this site's settle and grace.
    fn postcheck<'a>(&self, cloud_host: &'a str, hub_port: u16) -> PostcheckParams<'a> {
        PostcheckParams {
            cloud_host,
            hub_port,
            hub: offer::hub_protocol(&self.spec.flags),
            settle_secs: self.settle.as_secs(),
            connect_grace_secs: self.connect_grace.as_secs(),
        }
    }

    /// Regenerates `/join.sh`; returns whether it changed.
    fn rebuild_join(&self, state: &State) -> Result<bool> {
        let who = format!("site.yaml ({})", self.dir.display());
        let offer = offer::store_offer(state, self.spec.kubeedge_version.as_deref(), &self.dir)
            .with_context(|| who.clone())?;
        offer::check_flags(&offer.version, &self.spec.flags, &who)?;
        let (cloud_host, ports, cri_socket) =
            offer::preflight_target(&self.spec.cloudcore, &self.spec.flags, &who)?;
        let hosts_files = offer::hosts_toml_for(state, &self.mirrors);
        let (version, keadm) = (offer.version, offer.keadm);
        let text = script::render(&StepInput {
            version: &version,
            mirrors: &self.mirrors,
            keadm: &keadm,
            hosts: &hosts_files,
            preflight: PreflightParams {
                store_arches: keadm.iter().map(|a| a.arch.clone()).collect(),
                store_images: offer::store_images(state),
                cri_socket,
                mirrors: &self.mirrors,
                cloud_host: &cloud_host,
                cloud_ports: ports.clone(),
                min_free_mib: self.min_free_mib,
            },
            postcheck: self.postcheck(&cloud_host, ports[0]),
            join_args: JoinArgs::FromFile,
            reset_args: &[],
            keadm_join_timeout: self.keadm_timeout,
            keadm_reset_timeout: self.keadm_timeout,
            upgrade: None,
        });
        let sha = edgeferry_bundle::hashing::sha256_hex(text.as_bytes());
        let mut current = self.script.write().expect("script lock");
        let changed = current.sha256 != sha;
        *current = Script {
            bytes: bytes::Bytes::from(text),
            sha256: sha,
            version,
        };
        Ok(changed)
    }

    fn keadm_args(&self, state_version: &str, name: &str) -> Vec<String> {
        node_script::join_args(
            state_version,
            &self.spec.cloudcore,
            Some(name),
            self.spec.token.as_ref().map(|t| t.expose()),
            &self.spec.flags,
        )
    }
}

fn plain(status: StatusCode, text: &str) -> Response<Body> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "text/plain")
        .header(header::CACHE_CONTROL, "no-store")
        .body(Body::from(format!("{text}\n")))
        .expect("valid response")
}

/// Pull-mode routes; `None` when the path is not one of them.
pub async fn route(
    site: &Site,
    method: &Method,
    path: &str,
    headers: &HeaderMap,
    body: hyper::body::Incoming,
    client: SocketAddr,
) -> Option<Response<Body>> {
    match (path, method) {
        ("/join.sh", &Method::GET | &Method::HEAD) => {
            let bytes = site.script.read().expect("script lock").bytes.clone();
            Some(script_response(method, bytes))
        }
        ("/upgrade.sh", &Method::GET | &Method::HEAD) => {
            let upgrade = site.upgrade.read().expect("script lock").clone();
            Some(match upgrade {
                Ok(script) => script_response(method, script.bytes),
                Err(why) => plain(StatusCode::NOT_FOUND, &format!("no upgrade script: {why}")),
            })
        }
        ("/v1/enroll", &Method::POST) => Some(enroll_route(site, headers, client).await),
        ("/v1/upgrade", &Method::POST) => Some(upgrade_route(site, headers, client).await),
        ("/v1/report", &Method::POST) => Some(report_route(site, headers, body, client).await),
        ("/join.sh" | "/upgrade.sh" | "/v1/enroll" | "/v1/upgrade" | "/v1/report", _) => {
            Some(plain(StatusCode::METHOD_NOT_ALLOWED, "method not allowed"))
        }
        _ => None,
    }
}

fn script_response(method: &Method, bytes: bytes::Bytes) -> Response<Body> {
    Response::builder()
        .header(header::CONTENT_TYPE, "text/x-shellscript")
        .header(header::CONTENT_LENGTH, bytes.len())
        .header(header::CACHE_CONTROL, "no-store")
        .body(if method == Method::HEAD {
            Body::empty()
        } else {
            Body::from(bytes)
        })
        .expect("valid response")
}

/// 429 with Retry-After.
fn too_many(text: &str, wait_secs: u64) -> Response<Body> {
    let mut response = plain(
        StatusCode::TOO_MANY_REQUESTS,
        &format!("{text}: retry after {wait_secs} s"),
    );
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, header::HeaderValue::from(wait_secs));
    response
}

impl Site {
    /// A client address that made too many refused requests waits.
    fn throttled(&self, client: SocketAddr) -> Option<Response<Body>> {
        self.refused
            .check(&client.ip())
            .err()
            .map(|wait| too_many("refused: too many refused requests from this address", wait))
    }

    /// Counts a refused request against the client's address.
    fn refuse(&self, client: SocketAddr, status: StatusCode, text: &str) -> Response<Body> {
        let _ = self.refused.take(&client.ip());
        plain(status, text)
    }
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
}

async fn enroll_route(site: &Site, headers: &HeaderMap, client: SocketAddr) -> Response<Body> {
    if let Some(response) = site.throttled(client) {
        return response;
    }
    let Some(code) =
        header_str(headers, "x-edgeferry-code").filter(|c| !c.is_empty() && c.len() <= 128)
    else {
        site.out.note(&format!(
            "mirror: enrollment from {client} refused: no code (header X-Edgeferry-Code)"
        ));
        return site.refuse(client, StatusCode::FORBIDDEN, enroll::REFUSED);
    };
    let hostname = header_str(headers, "x-edgeferry-hostname")
        .unwrap_or("")
        .chars()
        .take(128)
        .collect::<String>();
    // The version /join.sh was built for, so keadm's flags match the script.
    let version = site.script.read().expect("script lock").version.clone();
    let dir = site.dir.clone();
    let code = code.to_string();
    let client_text = client.to_string();
    let prefix = site.spec.name_prefix.clone();
    let outcome = tokio::task::spawn_blocking(move || {
        enroll::enroll(&dir, &code, &hostname, &client_text, prefix.as_deref())
    })
    .await;
    match outcome {
        Ok(Ok(Ok(enrolled))) => {
            let mut body = format!("node={}\nkey={}\n", enrolled.name, enrolled.key);
            for arg in site.keadm_args(&version, &enrolled.name) {
                if arg.contains('\n') {
                    return plain(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "site.yaml holds a keadm value with a newline",
                    );
                }
                body.push_str(&format!("arg={arg}\n"));
            }
            site.out
                .note(&format!("mirror: enrolled node {}", enrolled.name));
            Response::builder()
                .header(header::CONTENT_TYPE, "text/plain")
                .header(header::CACHE_CONTROL, "no-store")
                .body(Body::from(body))
                .expect("valid response")
        }
        Ok(Ok(Err(refusal))) => {
            site.out.note(&format!(
                "mirror: enrollment from {client} refused: {}",
                crate::printer::node_text(&refusal.reason())
            ));
            let status = match refusal {
                enroll::Refusal::Taken(_) => StatusCode::CONFLICT,
                _ => StatusCode::FORBIDDEN,
            };
            site.refuse(client, status, &refusal.answer(enroll::CodeKind::Enroll))
        }
        Ok(Err(e)) => {
            site.out.warn(&format!(
                "mirror: enrollment store: {}",
                site.redactor.scrub(&format!("{e:#}"))
            ));
            plain(
                StatusCode::INTERNAL_SERVER_ERROR,
                "enrollment store unavailable",
            )
        }
        Err(_) => plain(StatusCode::INTERNAL_SERVER_ERROR, "enrollment failed"),
    }
}

/// `POST /v1/upgrade` with the code, the node's hostname and the version
/// its edgecore reports: `verdict=upgrade` with the node's name, a report
/// key and the target; `verdict=up_to_date`; or a refusal that names the
/// rule (409) or says only that the code is not valid (403).
async fn upgrade_route(site: &Site, headers: &HeaderMap, client: SocketAddr) -> Response<Body> {
    if let Some(response) = site.throttled(client) {
        return response;
    }
    let to = match &*site.upgrade.read().expect("script lock") {
        Ok(script) => script.version.clone(),
        Err(why) => return plain(StatusCode::NOT_FOUND, &format!("no upgrade script: {why}")),
    };
    let Some(code) =
        header_str(headers, "x-edgeferry-code").filter(|c| !c.is_empty() && c.len() <= 128)
    else {
        site.out.note(&format!(
            "mirror: upgrade from {client} refused: no code (header X-Edgeferry-Code)"
        ));
        return site.refuse(client, StatusCode::FORBIDDEN, enroll::UPGRADE_REFUSED);
    };
    let hostname = header_str(headers, "x-edgeferry-hostname")
        .unwrap_or("")
        .chars()
        .take(128)
        .collect::<String>();
    // What edgecore said, kept to the characters a version has: it is
    // echoed in refusals and logs.
    let current: String = header_str(headers, "x-edgeferry-version")
        .unwrap_or("")
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || "-.+".contains(*c))
        .take(64)
        .collect();
    let dir = site.dir.clone();
    let code = code.to_string();
    let client_text = client.to_string();
    let prefix = site.spec.name_prefix.clone();
    let target = to.clone();
    let from = current.clone();
    let outcome = tokio::task::spawn_blocking(move || {
        enroll::upgrade(
            &dir,
            &code,
            &hostname,
            &client_text,
            prefix.as_deref(),
            &from,
            &target,
        )
    })
    .await;
    match outcome {
        Ok(Ok(Ok(enroll::Upgrading::Upgrade { name, key }))) => {
            site.out.note(&format!(
                "mirror: node {name} upgrades from {current} to {to}"
            ));
            answer(format!(
                "verdict=upgrade\nnode={name}\nkey={key}\nto={to}\nfrom={current}\n"
            ))
        }
        Ok(Ok(Ok(enroll::Upgrading::UpToDate { name }))) => {
            site.out
                .note(&format!("mirror: node {name} runs {to} already"));
            answer(format!("verdict=up_to_date\nnode={name}\nto={to}\n"))
        }
        Ok(Ok(Err(refusal))) => {
            site.out.note(&format!(
                "mirror: upgrade from {client} refused: {}",
                crate::printer::node_text(&refusal.reason())
            ));
            let status = match refusal {
                enroll::Refusal::Version { .. } => StatusCode::CONFLICT,
                _ => StatusCode::FORBIDDEN,
            };
            site.refuse(client, status, &refusal.answer(enroll::CodeKind::Upgrade))
        }
        Ok(Err(e)) => {
            site.out.warn(&format!(
                "mirror: enrollment store: {}",
                site.redactor.scrub(&format!("{e:#}"))
            ));
            plain(
                StatusCode::INTERNAL_SERVER_ERROR,
                "enrollment store unavailable",
            )
        }
        Err(_) => plain(StatusCode::INTERNAL_SERVER_ERROR, "upgrade failed"),
    }
}

/// A 200 `text/plain` answer of `key=value` lines, never cached.
fn answer(body: String) -> Response<Body> {
    Response::builder()
        .header(header::CONTENT_TYPE, "text/plain")
        .header(header::CACHE_CONTROL, "no-store")
        .body(Body::from(body))
        .expect("valid response")
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReportIn {
    node: String,
    step: String,
    status: String,
    #[serde(default)]
    message: String,
    /// An upgrade's reports name its target, as the journal's upgrade
    /// events do; a join's have none.
    #[serde(default)]
    to: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ReportLine {
    pub ts: String,
    pub node: String,
    pub step: String,
    pub status: String,
    #[serde(default)]
    pub message: String,
    pub client: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
}

async fn report_route(
    site: &Site,
    headers: &HeaderMap,
    body: hyper::body::Incoming,
    client: SocketAddr,
) -> Response<Body> {
    if let Some(response) = site.throttled(client) {
        return response;
    }
    let key = header_str(headers, "authorization")
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|k| !k.is_empty() && k.len() <= 128)
        .map(str::to_string);
    let Some(key) = key else {
        return site.refuse(client, StatusCode::FORBIDDEN, "report refused: no node key");
    };
    // Refuse oversized bodies by their declared length, and never buffer
    // more than the limit whatever they declare.
    let declared = header_str(headers, "content-length").and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_REPORT_BYTES as u64) {
        return plain(StatusCode::PAYLOAD_TOO_LARGE, "report too large");
    }
    let limited = http_body_util::Limited::new(body, MAX_REPORT_BYTES);
    let bytes =
        match tokio::time::timeout(std::time::Duration::from_secs(10), limited.collect()).await {
            Ok(Ok(collected)) => collected.to_bytes(),
            Ok(Err(_)) => return plain(StatusCode::PAYLOAD_TOO_LARGE, "report too large"),
            Err(_) => return plain(StatusCode::REQUEST_TIMEOUT, "report body too slow"),
        };
    let report: ReportIn = match serde_json::from_slice(&bytes) {
        Ok(r) => r,
        Err(_) => {
            return plain(
                StatusCode::BAD_REQUEST,
                "report refused: expected JSON {node, step, status, message}",
            )
        }
    };
    let action = match &report.to {
        None => Action::Join,
        Some(to)
            if to.len() <= 64
                && upgrade::numbers(to).is_some()
                && to
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-.+".contains(c)) =>
        {
            Action::Upgrade
        }
        Some(_) => {
            return plain(
                StatusCode::BAD_REQUEST,
                "report refused: to is not a KubeEdge version",
            )
        }
    };
    if !steps::report_step_names(action).contains(&report.step.as_str()) {
        return plain(StatusCode::BAD_REQUEST, "report refused: unknown step");
    }
    if !matches!(report.status.as_str(), "started" | "ok" | "failed") {
        return plain(StatusCode::BAD_REQUEST, "report refused: unknown status");
    }
    if report.message.chars().count() > MAX_MESSAGE_CHARS {
        return plain(StatusCode::BAD_REQUEST, "report refused: message too long");
    }
    let dir = site.dir.clone();
    let lookup_key = key.clone();
    let owner = tokio::task::spawn_blocking(move || enroll::node_for_key(&dir, &lookup_key)).await;
    match owner {
        Ok(Ok(Some(node))) if node == report.node => {}
        Ok(Ok(_)) => {
            return site.refuse(
                client,
                StatusCode::FORBIDDEN,
                "report refused: not an enrolled node, or not this key's node",
            )
        }
        _ => return plain(StatusCode::INTERNAL_SERVER_ERROR, "report not stored"),
    }
    if let Err(wait) = site.reports.take(&report.node) {
        return too_many(
            &format!("report refused: node {} sent too many reports", report.node),
            wait,
        );
    }
    let dir = site.dir.clone();
    let redactor = site.redactor.clone();
    let client = client.to_string();
    let lines = Arc::clone(&site.report_lines);
    let history = site.limits.report_history;
    let result = tokio::task::spawn_blocking(move || -> Result<()> {
        let message: String = redactor
            .scrub(&report.message)
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect();
        let line = ReportLine {
            ts: edgeferry_bundle::format::rfc3339_utc(enroll::now()),
            node: report.node,
            step: report.step,
            status: report.status,
            message,
            client,
            to: report.to,
        };
        let mut text = serde_json::to_string(&line)?;
        text.push('\n');
        let _lock = crate::sys::lock_dir_wait(&dir)?;
        let mut count = lines.lock().expect("report lines lock");
        let mut now = match *count {
            Some(c) if c.now < c.compact_at => c,
            _ => {
                let kept = compact_reports(&dir, history)?;
                ReportLines {
                    now: kept,
                    compact_at: kept + history.max(1),
                }
            }
        };
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join(REPORTS_FILE))?;
        f.write_all(text.as_bytes())?;
        now.now += 1;
        *count = Some(now);
        Ok(())
    })
    .await;
    match result {
        Ok(Ok(())) => Response::builder()
            .status(StatusCode::NO_CONTENT)
            .body(Body::empty())
            .expect("valid response"),
        _ => plain(StatusCode::INTERNAL_SERVER_ERROR, "report not stored"),
    }
}

/// Rewrites `reports.jsonl` (temp file + rename) to each node's latest
/// report plus the `history` most recent ones, in their order; returns
/// the lines kept. Lines that do not parse are dropped.
fn compact_reports(site_dir: &Path, history: usize) -> Result<usize> {
    let path = site_dir.join(REPORTS_FILE);
    let text = reports_text(site_dir)?;
    let parsed: Vec<(&str, ReportLine)> = text
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok().map(|r| (l, r)))
        .collect();
    let mut latest = std::collections::HashMap::new();
    for (i, (_, r)) in parsed.iter().enumerate() {
        latest.insert(r.node.as_str(), i);
    }
    let recent = parsed.len().saturating_sub(history);
    let mut kept = String::new();
    let mut count = 0;
    for (i, (line, r)) in parsed.iter().enumerate() {
        if i >= recent || latest.get(r.node.as_str()) == Some(&i) {
            kept.push_str(line);
            kept.push('\n');
            count += 1;
        }
    }
    if count != text.lines().count() {
        edgeferry_bundle::atomic::write_file(&path, kept.as_bytes(), 0o600)
            .with_context(|| format!("compacting {}", path.display()))?;
    }
    Ok(count)
}

/// `reports.jsonl` as text; empty when no node has reported yet.
fn reports_text(site_dir: &Path) -> Result<String> {
    let path = site_dir.join(REPORTS_FILE);
    match std::fs::read_to_string(&path) {
        Ok(t) => Ok(t),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

pub fn read_reports(site_dir: &Path) -> Result<Vec<ReportLine>> {
    let text = reports_text(site_dir)?;
    Ok(text
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect())
}
