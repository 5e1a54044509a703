//! Pulling images with the OCI distribution protocol: anonymous bearer
//! tokens the way Docker Hub hands them out, basic auth, credentials from a
//! docker `config.json`, the multi-arch index resolved to one platform (and
//! kept), every digest checked while the bytes arrive, blobs cached by
//! digest.

use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use edgeferry_bundle::format::{sha256_hex_of_digest, Arch};
use edgeferry_bundle::hashing::sha256_hex;
use edgeferry_bundle::sign::{base64, unbase64};
use serde::Serialize;

use super::cache::Cache;
use super::http::{self, Download, Expected, Http, HttpError, Method, Response, MAX_SMALL_BODY};
use edgeferry_bundle::oci::{
    Descriptor, DocKind, ImageConfig, ManifestDoc, ACCEPT_MANIFESTS, MEDIA_DOCKER_CONFIG,
    MEDIA_DOCKER_LAYER_GZIP, MEDIA_DOCKER_LIST, MEDIA_DOCKER_MANIFEST, MEDIA_OCI_CONFIG,
    MEDIA_OCI_INDEX, MEDIA_OCI_LAYER_GZIP, MEDIA_OCI_MANIFEST,
};

use crate::oci::platform::{available_platforms, canonical_platform, check_config, pick_platform};
use crate::oci::{Blob, BlobSource, ResolvedImage};
use crate::plan::Mirror;
const DOCKER_HUB: &str = "docker.io";
const DOCKER_HUB_ENDPOINT: &str = "https://registry-1.docker.io";
/// The names `docker login` files Docker Hub credentials under.
const DOCKER_HUB_ALIASES: &[&str] = &[
    "docker.io",
    "index.docker.io",
    "registry-1.docker.io",
    "registry.hub.docker.com",
];

// ---------------------------------------------------------------------------
// Credentials

/// A user name and password from a docker `config.json`. Debug output
/// never shows the password.
#[derive(Clone)]
pub struct Credentials {
    user: String,
    password: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Credentials {{ user: {:?}, password: <hidden> }}",
            self.user
        )
    }
}

impl Credentials {
    fn basic(&self) -> String {
        format!(
            "Basic {}",
            base64(format!("{}:{}", self.user, self.password).as_bytes())
        )
    }
}

/// The `auths` of a docker `config.json`, by host.
#[derive(Debug, Default)]
pub struct DockerConfig {
    path: Option<PathBuf>,
    auths: Vec<(String, Credentials)>,
    /// The file names a `credsStore` or `credHelpers`, which we do not run.
    helpers: bool,
}

/// `https://index.docker.io/v1/` -> `index.docker.io`; `host:5000` stays.
fn auth_key_host(key: &str) -> String {
    let rest = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    rest.split('/').next().unwrap_or("").to_ascii_lowercase()
}

impl DockerConfig {
    /// Reads `path`; `None` means no credentials at all.
    pub fn load(path: Option<&Path>) -> Result<DockerConfig> {
        let Some(path) = path else {
            return Ok(DockerConfig::default());
        };
        let text = std::fs::read(path).with_context(|| {
            format!(
                "reading docker config {}: fix the path given to --docker-config or DOCKER_CONFIG",
                path.display()
            )
        })?;
        let value: serde_json::Value = serde_json::from_slice(&text).map_err(|e| {
            anyhow::anyhow!(
                "docker config {} is not valid JSON ({e}): fix it or run docker login again",
                path.display()
            )
        })?;
        let mut config = DockerConfig {
            path: Some(path.to_path_buf()),
            auths: Vec::new(),
            helpers: value.get("credsStore").is_some() || value.get("credHelpers").is_some(),
        };
        let Some(auths) = value.get("auths").and_then(|a| a.as_object()) else {
            return Ok(config);
        };
        for (key, entry) in auths {
            let field = |name: &str| entry.get(name).and_then(|v| v.as_str()).unwrap_or("");
            let credentials = if !field("auth").is_empty() {
                let decoded = unbase64(field("auth").trim())
                    .and_then(|raw| String::from_utf8(raw).ok())
                    .and_then(|s| {
                        s.split_once(':').map(|(u, p)| Credentials {
                            user: u.to_string(),
                            password: p.to_string(),
                        })
                    });
                match decoded {
                    Some(c) => c,
                    None => bail!(
                        "docker config {}: auths.{key}.auth is not base64 of user:password: run docker login {key} again",
                        path.display()
                    ),
                }
            } else if !field("username").is_empty() {
                Credentials {
                    user: field("username").to_string(),
                    password: field("password").to_string(),
                }
            } else {
                continue;
            };
            config.auths.push((auth_key_host(key), credentials));
        }
        Ok(config)
    }

    fn lookup(&self, hosts: &[&str]) -> Option<&Credentials> {
        hosts.iter().find_map(|host| {
            let host = host.to_ascii_lowercase();
            self.auths
                .iter()
                .find(|(h, _)| *h == host)
                .map(|(_, credentials)| credentials)
        })
    }

    fn describe(&self) -> String {
        match &self.path {
            Some(path) => path.display().to_string(),
            None => "no docker config.json".into(),
        }
    }
}

// ---------------------------------------------------------------------------
// WWW-Authenticate

#[derive(Debug, PartialEq, Eq)]
struct Challenge {
    scheme: String,
    params: Vec<(String, String)>,
}

impl Challenge {
    fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// `Bearer realm="…",service="…",scope="…"` (RFC 9110 §11.6.1, one challenge).
fn parse_challenge(header: &str) -> Option<Challenge> {
    let header = header.trim();
    let (scheme, mut rest) = match header.split_once(char::is_whitespace) {
        Some((s, r)) => (s, r.trim_start()),
        None => (header, ""),
    };
    if scheme.is_empty() {
        return None;
    }
    let mut params = Vec::new();
    while !rest.is_empty() {
        let (key, after) = rest.split_once('=')?;
        let key = key.trim().trim_start_matches(',').trim().to_string();
        let after = after.trim_start();
        let (value, remaining) = if let Some(quoted) = after.strip_prefix('"') {
            let mut value = String::new();
            let mut chars = quoted.char_indices();
            let mut end = None;
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => {
                        if let Some((_, escaped)) = chars.next() {
                            value.push(escaped);
                        }
                    }
                    '"' => {
                        end = Some(i + 1);
                        break;
                    }
                    c => value.push(c),
                }
            }
            (value, &quoted[end?..])
        } else {
            let end = after.find(',').unwrap_or(after.len());
            (after[..end].trim().to_string(), &after[end..])
        };
        params.push((key, value));
        rest = remaining.trim_start().trim_start_matches(',').trim_start();
    }
    Some(Challenge {
        scheme: scheme.to_ascii_lowercase(),
        params,
    })
}

fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

// ---------------------------------------------------------------------------
// Where an image lives

/// `docker.io=http://host:port` and the like.
pub fn parse_mirror(s: &str) -> Result<Mirror, String> {
    let Some((registry, url)) = s.split_once('=') else {
        return Err(format!(
            "{s:?} is not REGISTRY=URL: write e.g. docker.io=http://127.0.0.1:5000"
        ));
    };
    let registry = registry.trim().to_ascii_lowercase();
    let registry = if registry == "index.docker.io" {
        DOCKER_HUB.to_string()
    } else {
        registry
    };
    if registry.is_empty() || registry.contains('/') {
        return Err(format!(
            "{s:?}: {registry:?} is not a registry host: write e.g. docker.io=http://127.0.0.1:5000"
        ));
    }
    let url = url.trim().trim_end_matches('/');
    let host = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"));
    if host.is_none_or(|h| h.is_empty() || h.starts_with('/')) {
        return Err(format!(
            "{s:?}: the mirror URL must start with http:// or https:// and name a host"
        ));
    }
    Ok(Mirror {
        registry,
        url: url.to_string(),
    })
}

/// One image reference, split, and the endpoint we talk to for it.
struct Target<'a> {
    /// Normalized, e.g. `docker.io/library/eclipse-mosquitto:1.6.15`.
    reference: &'a str,
    arch: Arch,
    repository: String,
    tag: Option<String>,
    digest: Option<String>,
    /// `https://registry-1.docker.io`, or the mirror's URL.
    endpoint: String,
    /// Hosts to look credentials up under, in order.
    credential_hosts: Vec<String>,
}

impl<'a> Target<'a> {
    fn new(reference: &'a str, arch: Arch, mirrors: &[Mirror]) -> Result<Target<'a>> {
        let (name_tag, digest) = match reference.split_once('@') {
            Some((n, d)) => (n, Some(d.to_string())),
            None => (reference, None),
        };
        let (name, tag) = match name_tag.rfind(':') {
            Some(i) if !name_tag[i + 1..].contains('/') => {
                (&name_tag[..i], Some(name_tag[i + 1..].to_string()))
            }
            _ => (name_tag, None),
        };
        let (registry, repository) = name
            .split_once('/')
            .with_context(|| format!("image reference {reference} names no registry"))?;
        let mirror = mirrors.iter().rev().find(|m| m.registry == registry);
        let endpoint = match mirror {
            Some(m) => m.url.clone(),
            None if registry == DOCKER_HUB => DOCKER_HUB_ENDPOINT.to_string(),
            None => format!("https://{registry}"),
        };
        let endpoint_host = auth_key_host(&endpoint);
        // A mirror gets the mirror's credentials only: never send Docker
        // Hub's password to some other host.
        let credential_hosts = if mirror.is_none() && registry == DOCKER_HUB {
            DOCKER_HUB_ALIASES.iter().map(|s| s.to_string()).collect()
        } else {
            vec![endpoint_host]
        };
        Ok(Target {
            reference,
            arch,
            repository: repository.to_string(),
            tag,
            digest,
            endpoint,
            credential_hosts,
        })
    }

    fn manifest_url(&self, reference: &str) -> String {
        format!(
            "{}/v2/{}/manifests/{reference}",
            self.endpoint, self.repository
        )
    }

    fn blob_url(&self, digest: &str) -> String {
        format!("{}/v2/{}/blobs/{digest}", self.endpoint, self.repository)
    }

    fn auth_key(&self) -> String {
        format!("{} {}", self.endpoint, self.repository)
    }
}

// ---------------------------------------------------------------------------
// The client

/// A manifest or index, verified, with the media type it was served as.
struct Doc {
    digest: String,
    size: u64,
    media_type: String,
    bytes: Vec<u8>,
    /// Where it is in the cache, when it was stored.
    path: Option<PathBuf>,
}

/// An image resolved to one platform, up to (not including) its blobs.
struct Manifests {
    index: Option<Doc>,
    manifest: Doc,
    doc: ManifestDoc,
}

/// What `--dry-run` says about one image.
#[derive(Clone, Debug, Serialize)]
pub struct SurveyImage {
    pub reference: String,
    pub platform: String,
    pub endpoint: String,
    pub index_digest: Option<String>,
    pub manifest_digest: String,
    /// Index, manifest, config and layers.
    pub blobs: Vec<SurveyBlob>,
}

#[derive(Clone, Debug, Serialize)]
pub struct SurveyBlob {
    pub digest: String,
    pub size: u64,
    pub media_type: String,
    pub cached: bool,
}

pub struct Registry<'a> {
    http: &'a Http,
    cache: &'a Cache,
    mirrors: &'a [Mirror],
    config: DockerConfig,
    /// `Authorization` values that worked, by endpoint and repository.
    auth: RefCell<HashMap<String, String>>,
}

fn strip_params(content_type: &str) -> &str {
    content_type.split(';').next().unwrap_or("").trim()
}

fn is_manifest_type(media_type: &str) -> bool {
    matches!(
        media_type,
        MEDIA_OCI_INDEX | MEDIA_OCI_MANIFEST | MEDIA_DOCKER_LIST | MEDIA_DOCKER_MANIFEST
    )
}

impl<'a> Registry<'a> {
    pub fn new(
        http: &'a Http,
        cache: &'a Cache,
        mirrors: &'a [Mirror],
        config: DockerConfig,
    ) -> Self {
        Registry {
            http,
            cache,
            mirrors,
            config,
            auth: RefCell::new(HashMap::new()),
        }
    }

    /// Fetches `reference` for `arch` into the cache and returns it in the
    /// form the local sources give, so the packer cannot tell the difference.
    pub fn fetch(&self, reference: &str, arch: Arch) -> Result<ResolvedImage> {
        let t = Target::new(reference, arch, self.mirrors)?;
        let m = self.manifests(&t, arch, true)?;
        let manifest_type = m.manifest.media_type.clone();
        let (default_config, default_layer) = if manifest_type == MEDIA_DOCKER_MANIFEST {
            (MEDIA_DOCKER_CONFIG, MEDIA_DOCKER_LAYER_GZIP)
        } else {
            (MEDIA_OCI_CONFIG, MEDIA_OCI_LAYER_GZIP)
        };
        let config_desc = self.config_descriptor(&t, &m)?;
        let config = self.blob(&t, config_desc, default_config, "config")?;
        let layers = m
            .doc
            .layers
            .as_deref()
            .unwrap_or_default()
            .iter()
            .enumerate()
            .map(|(i, desc)| self.blob(&t, desc, default_layer, &format!("layer {}", i + 1)))
            .collect::<Result<Vec<_>>>()?;
        let to_blob = |d: Doc| Blob {
            digest: d.digest,
            size: d.size,
            media_type: d.media_type,
            source: BlobSource::File(d.path.expect("stored when fetching")),
        };
        Ok(ResolvedImage {
            reference: reference.to_string(),
            index: m.index.map(to_blob),
            manifest: to_blob(m.manifest),
            config,
            layers,
            platform: canonical_platform(arch),
        })
    }

    /// What [`Registry::fetch`] would download; writes nothing.
    pub fn survey(&self, reference: &str, arch: Arch) -> Result<SurveyImage> {
        let t = Target::new(reference, arch, self.mirrors)?;
        let m = self.manifests(&t, arch, false)?;
        let cached = |digest: &str| self.cache.sha256_path(digest).is_some_and(|p| p.is_file());
        let mut blobs = Vec::new();
        for doc in m.index.iter().chain(std::iter::once(&m.manifest)) {
            blobs.push(SurveyBlob {
                digest: doc.digest.clone(),
                size: doc.size,
                media_type: doc.media_type.clone(),
                cached: cached(&doc.digest),
            });
        }
        let config = self.config_descriptor(&t, &m)?;
        for desc in std::iter::once(config).chain(m.doc.layers.as_deref().unwrap_or_default()) {
            blobs.push(SurveyBlob {
                digest: desc.digest.clone(),
                size: desc.size,
                media_type: desc.media_type.clone().unwrap_or_default(),
                cached: cached(&desc.digest),
            });
        }
        Ok(SurveyImage {
            reference: reference.to_string(),
            platform: canonical_platform(arch),
            endpoint: t.endpoint.clone(),
            index_digest: m.index.as_ref().map(|d| d.digest.clone()),
            manifest_digest: m.manifest.digest.clone(),
            blobs,
        })
    }

    fn config_descriptor<'m>(&self, t: &Target, m: &'m Manifests) -> Result<&'m Descriptor> {
        m.doc.config.as_ref().with_context(|| {
            format!(
                "image {}: manifest {} from {} has no config: the registry serves a broken image",
                t.reference, m.manifest.digest, t.endpoint
            )
        })
    }

    // -- requests and auth ---------------------------------------------------

    /// Sends with whatever authorization worked before for this repository,
    /// answering one 401 challenge. Other statuses are the caller's.
    fn call(&self, t: &Target, method: Method, url: &str, accept: bool) -> Result<Response> {
        let key = t.auth_key();
        let mut answered = false;
        loop {
            let mut headers: Vec<(&str, String)> = Vec::new();
            if accept {
                headers.push(("Accept", ACCEPT_MANIFESTS.to_string()));
            }
            if let Some(value) = self.auth.borrow().get(&key) {
                headers.push(("Authorization", value.clone()));
            }
            let response = self
                .http
                .send(method, url, &headers)
                .map_err(|e| anyhow::anyhow!("image {}: {e}", t.reference))?;
            if response.status() != 401 || answered {
                return Ok(response);
            }
            let challenge = http::header(&response, "www-authenticate").unwrap_or("");
            let value = self.authenticate(t, challenge)?;
            self.auth.borrow_mut().insert(key.clone(), value);
            answered = true;
        }
    }

    fn refused(&self, t: &Target, status: u16) -> anyhow::Error {
        let host = &t.credential_hosts[0];
        let hosts: Vec<&str> = t.credential_hosts.iter().map(String::as_str).collect();
        if self.config.lookup(&hosts).is_some() {
            return anyhow::anyhow!(
                "image {} for linux/{}: {} refused the credentials for {host} from {} (HTTP {status}): check them (docker login {host}) and the image name",
                t.reference,
                t.arch,
                t.endpoint,
                self.config.describe()
            );
        }
        let helpers = if self.config.helpers {
            " (credential helpers are not run: put the auth in the file itself)"
        } else {
            ""
        };
        anyhow::anyhow!(
            "image {} for linux/{}: {} refused access (HTTP {status}): the repository does not exist there, or it needs credentials: put auths.{host}.auth in {}{helpers} (docker login writes it), or pass --docker-config FILE",
            t.reference,
            t.arch,
            t.endpoint,
            self.default_config_name()
        )
    }

    fn default_config_name(&self) -> String {
        if self.config.path.is_some() {
            self.config.describe()
        } else {
            "~/.docker/config.json".into()
        }
    }

    /// Answers a `WWW-Authenticate` challenge with an `Authorization` value.
    fn authenticate(&self, t: &Target, header: &str) -> Result<String> {
        let hosts: Vec<&str> = t.credential_hosts.iter().map(String::as_str).collect();
        let credentials = self.config.lookup(&hosts);
        let challenge = parse_challenge(header).with_context(|| {
            format!(
                "image {}: {} asks for authentication with a challenge we cannot read: {header:?}",
                t.reference, t.endpoint
            )
        })?;
        match challenge.scheme.as_str() {
            "basic" => match credentials {
                Some(c) => Ok(c.basic()),
                None => bail!(
                    "image {}: {} needs a user name and password: put auths.{}.auth in {} (docker login writes it), or pass --docker-config FILE",
                    t.reference,
                    t.endpoint,
                    t.credential_hosts[0],
                    self.default_config_name()
                ),
            },
            "bearer" => {
                let realm = challenge.param("realm").filter(|r| {
                    r.starts_with("https://") || r.starts_with("http://")
                });
                let Some(realm) = realm else {
                    bail!(
                        "image {}: {} asks for a bearer token without a usable realm: the registry is misconfigured",
                        t.reference,
                        t.endpoint
                    );
                };
                let mut query = Vec::new();
                if let Some(service) = challenge.param("service") {
                    query.push(format!("service={}", percent_encode(service)));
                }
                let scope = challenge
                    .param("scope")
                    .map(str::to_string)
                    .unwrap_or_else(|| format!("repository:{}:pull", t.repository));
                query.push(format!("scope={}", percent_encode(&scope)));
                let separator = if realm.contains('?') { '&' } else { '?' };
                let url = format!("{realm}{separator}{}", query.join("&"));
                let headers: Vec<(&str, String)> = credentials
                    .map(|c| vec![("Authorization", c.basic())])
                    .unwrap_or_default();
                let (_, body) = match self.http.get_small(&url, &headers, 1024 * 1024) {
                    Ok(ok) => ok,
                    Err(HttpError::Status {
                        status: status @ (401 | 403),
                        ..
                    }) => return Err(self.refused(t, status)),
                    Err(e) => bail!("image {}: getting a pull token: {e}", t.reference),
                };
                #[derive(serde::Deserialize)]
                struct Token {
                    #[serde(default)]
                    token: Option<String>,
                    #[serde(default)]
                    access_token: Option<String>,
                }
                let token: Token = serde_json::from_slice(&body).map_err(|e| {
                    anyhow::anyhow!(
                        "image {}: the token service {realm} answered with something other than a token ({e})",
                        t.reference
                    )
                })?;
                match token.token.or(token.access_token).filter(|s| !s.is_empty()) {
                    Some(token) => Ok(format!("Bearer {token}")),
                    None => bail!(
                        "image {}: the token service {realm} gave no token",
                        t.reference
                    ),
                }
            }
            other => bail!(
                "image {}: {} asks for {other} authentication, which is not supported (only Basic and Bearer)",
                t.reference,
                t.endpoint
            ),
        }
    }

    // -- manifests -----------------------------------------------------------

    fn not_found(&self, t: &Target, arch: Arch, what: &str, url: &str) -> anyhow::Error {
        anyhow::anyhow!(
            "image {} for linux/{arch}: {what} not found at {url} (HTTP 404): check the tag, and that --registry-mirror points at a registry that has it",
            t.reference
        )
    }

    /// Fails unless the manifest or index is served as what its JSON says
    /// it is; returns the one media type they agree on.
    fn media_type(
        &self,
        t: &Target,
        digest: &str,
        content_type: Option<&str>,
        descriptor: Option<&str>,
        doc: &ManifestDoc,
    ) -> Result<String> {
        let content_type = content_type.map(strip_params).filter(|s| !s.is_empty());
        if let Some(ct) = content_type {
            if !is_manifest_type(ct) {
                bail!(
                    "image {}: {} served {digest} as {ct}, not as an image manifest or index: the registry or a proxy in between is broken",
                    t.reference,
                    t.endpoint
                );
            }
        }
        let inner = doc.media_type.as_deref().filter(|s| !s.is_empty());
        let descriptor = descriptor.filter(|s| !s.is_empty());
        let said: Vec<(&str, &str)> = [
            ("Content-Type", content_type),
            ("its mediaType", inner),
            ("the index", descriptor),
        ]
        .into_iter()
        .filter_map(|(who, v)| v.map(|v| (who, v)))
        .collect();
        if let Some(((who_a, a), (who_b, b))) = said
            .iter()
            .zip(said.iter().skip(1))
            .find(|((_, a), (_, b))| a != b)
            .map(|(x, y)| (*x, *y))
        {
            bail!(
                "image {}: {digest} from {}: {who_a} says {a} but {who_b} says {b}: the registry serves an inconsistent image",
                t.reference,
                t.endpoint
            );
        }
        if let Some((_, media_type)) = said.first() {
            return Ok(media_type.to_string());
        }
        Ok(match doc.kind(None) {
            Ok(DocKind::Index) => MEDIA_OCI_INDEX,
            _ => MEDIA_OCI_MANIFEST,
        }
        .to_string())
    }

    fn parse(&self, t: &Target, digest: &str, bytes: &[u8]) -> Result<ManifestDoc> {
        serde_json::from_slice(bytes).map_err(|e| {
            anyhow::anyhow!(
                "image {}: {digest} from {} is not valid JSON ({e}): the registry serves a broken image",
                t.reference,
                t.endpoint
            )
        })
    }

    /// A manifest or index by digest: from the cache, or fetched and checked.
    fn by_digest(
        &self,
        t: &Target,
        arch: Arch,
        digest: &str,
        size: Option<u64>,
        descriptor_type: Option<&str>,
        store: bool,
    ) -> Result<Doc> {
        if sha256_hex_of_digest(digest).is_none() {
            bail!(
                "image {}: {digest} is not a sha256 digest; only sha256 is supported",
                t.reference
            );
        }
        if let Some(bytes) = self.cache.read_verified(digest, MAX_SMALL_BODY)? {
            if size.is_none_or(|s| s == bytes.len() as u64) {
                let doc = self.parse(t, digest, &bytes)?;
                let media_type = self.media_type(t, digest, None, descriptor_type, &doc)?;
                return Ok(Doc {
                    digest: digest.to_string(),
                    size: bytes.len() as u64,
                    media_type,
                    path: self.cache.sha256_path(digest),
                    bytes,
                });
            }
        }
        let url = t.manifest_url(digest);
        let mut response = self.call(t, Method::Get, &url, true)?;
        self.check_status(t, arch, &response, digest, &url)?;
        let content_type = http::header(&response, "content-type").map(str::to_string);
        let bytes = read_small(&mut response, &url)?;
        let actual = format!("sha256:{}", sha256_hex(&bytes));
        if actual != digest {
            bail!(
                "image {}: {url} sent bytes with digest {actual}, not {digest}: the registry or a proxy in between corrupts data, try again",
                t.reference
            );
        }
        if let Some(size) = size {
            if size != bytes.len() as u64 {
                bail!(
                    "image {}: {digest} is {} bytes but its index says {size}: the registry serves an inconsistent image",
                    t.reference,
                    bytes.len()
                );
            }
        }
        let doc = self.parse(t, digest, &bytes)?;
        let media_type =
            self.media_type(t, digest, content_type.as_deref(), descriptor_type, &doc)?;
        let path = if store {
            Some(self.cache.put_sha256(digest, &bytes)?)
        } else {
            None
        };
        Ok(Doc {
            digest: digest.to_string(),
            size: bytes.len() as u64,
            media_type,
            bytes,
            path,
        })
    }

    fn check_status(
        &self,
        t: &Target,
        arch: Arch,
        response: &Response,
        what: &str,
        url: &str,
    ) -> Result<()> {
        match response.status().as_u16() {
            200..=299 => Ok(()),
            404 => Err(self.not_found(t, arch, what, url)),
            status @ (401 | 403) => Err(self.refused(t, status)),
            status => bail!(
                "image {}: {url} answered HTTP {status}: check --registry-mirror and the registry",
                t.reference
            ),
        }
    }

    /// What the reference names: by digest if it pins one, else by tag.
    /// A HEAD comes first, so a digest already in the cache costs no GET
    /// (Docker Hub counts GETs against its pull limit).
    fn top(&self, t: &Target, arch: Arch, store: bool) -> Result<Doc> {
        if let Some(digest) = &t.digest {
            return self.by_digest(t, arch, digest, None, None, store);
        }
        let tag = t.tag.as_deref().unwrap_or("latest");
        let what = format!("tag {tag}");
        let url = t.manifest_url(tag);
        let head = self.call(t, Method::Head, &url, true)?;
        match head.status().as_u16() {
            200..=299 => {
                let digest = http::header(&head, "docker-content-digest");
                let content_type = http::header(&head, "content-type");
                if let (Some(digest), Some(content_type)) = (digest, content_type) {
                    if let Some(bytes) = self.cache.read_verified(digest, MAX_SMALL_BODY)? {
                        let doc = self.parse(t, digest, &bytes)?;
                        let media_type =
                            self.media_type(t, digest, Some(content_type), None, &doc)?;
                        return Ok(Doc {
                            digest: digest.to_string(),
                            size: bytes.len() as u64,
                            media_type,
                            path: self.cache.sha256_path(digest),
                            bytes,
                        });
                    }
                }
            }
            404 => return Err(self.not_found(t, arch, &what, &url)),
            status @ (401 | 403) => return Err(self.refused(t, status)),
            // Some registries do not answer HEAD well; GET decides.
            _ => {}
        }
        let mut response = self.call(t, Method::Get, &url, true)?;
        self.check_status(t, arch, &response, &what, &url)?;
        let content_type = http::header(&response, "content-type").map(str::to_string);
        let said_digest = http::header(&response, "docker-content-digest").map(str::to_string);
        let bytes = read_small(&mut response, &url)?;
        let digest = format!("sha256:{}", sha256_hex(&bytes));
        if let Some(said) = said_digest.filter(|d| d.starts_with("sha256:")) {
            if said != digest {
                bail!(
                    "image {}: {url} says Docker-Content-Digest {said} but sent bytes with digest {digest}: the registry or a proxy in between corrupts data, try again",
                    t.reference
                );
            }
        }
        let doc = self.parse(t, &digest, &bytes)?;
        let media_type = self.media_type(t, &digest, content_type.as_deref(), None, &doc)?;
        let path = if store {
            Some(self.cache.put_sha256(&digest, &bytes)?)
        } else {
            None
        };
        Ok(Doc {
            digest,
            size: bytes.len() as u64,
            media_type,
            bytes,
            path,
        })
    }

    fn no_platform(&self, t: &Target, arch: Arch, available: &str) -> anyhow::Error {
        anyhow::anyhow!(
            "image {} has no linux/{arch} platform at {} (it has {available}): use a tag that is built for {arch}, or push the multi-arch image (skopeo copy --all)",
            t.reference,
            t.endpoint
        )
    }

    fn manifests(&self, t: &Target, arch: Arch, store: bool) -> Result<Manifests> {
        let top = self.top(t, arch, store)?;
        let top_doc = self.parse(t, &top.digest, &top.bytes)?;
        match top_doc.kind(Some(&top.media_type)) {
            Err(detail) => bail!("image {}: {} {detail}", t.reference, top.digest),
            Ok(DocKind::Manifest) => {
                // A single-platform image: its config says which platform.
                let config = top_doc.config.as_ref().with_context(|| {
                    format!(
                        "image {}: manifest {} has no config: the registry serves a broken image",
                        t.reference, top.digest
                    )
                })?;
                let bytes = self.small_blob(t, config, store)?;
                let config: ImageConfig = serde_json::from_slice(&bytes).map_err(|e| {
                    anyhow::anyhow!(
                        "image {}: config {} is not valid JSON ({e}): the registry serves a broken image",
                        t.reference,
                        config.digest
                    )
                })?;
                if let Err(available) = check_config(&config, arch) {
                    return Err(self.no_platform(t, arch, &available));
                }
                Ok(Manifests {
                    index: None,
                    manifest: top,
                    doc: top_doc,
                })
            }
            Ok(DocKind::Index) => {
                let entries = top_doc.manifests.as_deref().unwrap_or_default();
                let Some(chosen) = pick_platform(entries, arch) else {
                    return Err(self.no_platform(t, arch, &available_platforms(entries)));
                };
                let child = self.by_digest(
                    t,
                    arch,
                    &chosen.digest,
                    Some(chosen.size),
                    chosen.media_type.as_deref(),
                    store,
                )?;
                let child_doc = self.parse(t, &child.digest, &child.bytes)?;
                match child_doc.kind(Some(&child.media_type)) {
                    Ok(DocKind::Manifest) => {}
                    Ok(DocKind::Index) => bail!(
                        "image {}: its index points to another index ({}) for {}; nested indexes are not supported",
                        t.reference,
                        child.digest,
                        canonical_platform(arch)
                    ),
                    Err(detail) => bail!("image {}: {} {detail}", t.reference, child.digest),
                }
                Ok(Manifests {
                    index: Some(top),
                    manifest: child,
                    doc: child_doc,
                })
            }
        }
    }

    // -- blobs -----------------------------------------------------------------

    /// A config read whole: from the cache, downloaded into it, or (not
    /// storing) fetched into memory; checked before anyone parses it.
    fn small_blob(&self, t: &Target, desc: &Descriptor, store: bool) -> Result<Vec<u8>> {
        if store {
            let blob = self.blob(t, desc, MEDIA_OCI_CONFIG, "config")?;
            let BlobSource::File(path) = &blob.source else {
                unreachable!("fetched blobs are files");
            };
            let bytes =
                std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
            if sha256_hex(&bytes) != sha256_hex_of_digest(&desc.digest).unwrap_or_default() {
                bail!(
                    "cached blob {} changed on disk: delete it and run again",
                    path.display()
                );
            }
            return Ok(bytes);
        }
        if let Some(bytes) = self.cache.read_verified(&desc.digest, MAX_SMALL_BODY)? {
            return Ok(bytes);
        }
        let url = t.blob_url(&desc.digest);
        let mut response = self.call(t, Method::Get, &url, false)?;
        if !response.status().is_success() {
            bail!(
                "image {}: {url} answered HTTP {}: the registry is missing a blob of the image",
                t.reference,
                response.status().as_u16()
            );
        }
        let bytes = read_small(&mut response, &url)?;
        let actual = format!("sha256:{}", sha256_hex(&bytes));
        if actual != desc.digest || bytes.len() as u64 != desc.size {
            bail!(
                "image {}: {url} sent {} bytes with digest {actual}, expected {} bytes with {}: try again",
                t.reference,
                bytes.len(),
                desc.size,
                desc.digest
            );
        }
        Ok(bytes)
    }

    /// Downloads one blob into the cache (resuming, verifying) unless it is
    /// there already.
    fn blob(&self, t: &Target, desc: &Descriptor, default_type: &str, what: &str) -> Result<Blob> {
        let Some(dest) = self.cache.sha256_path(&desc.digest) else {
            bail!(
                "image {}: blob {} is not a sha256 digest; only sha256 is supported",
                t.reference,
                desc.digest
            );
        };
        let url = t.blob_url(&desc.digest);
        let short = t.reference.rsplit('/').next().unwrap_or(t.reference);
        let label = format!("{short} {what}");
        let mut answered = false;
        loop {
            let mut headers: Vec<(&'static str, String)> = Vec::new();
            if let Some(value) = self.auth.borrow().get(&t.auth_key()) {
                headers.push(("Authorization", value.clone()));
            }
            let download = Download {
                url: &url,
                headers: &headers,
                label: &label,
                expected: Expected::Sha256(
                    sha256_hex_of_digest(&desc.digest)
                        .expect("checked above")
                        .to_string(),
                ),
                size: Some(desc.size),
                dest: &dest,
            };
            match self.http.download(&download) {
                Ok(_) => break,
                // A token can expire during a long pull: answer again, resume.
                Err(HttpError::Status {
                    status: 401,
                    challenge,
                    ..
                }) if !answered => {
                    let value = self.authenticate(t, challenge.as_deref().unwrap_or(""))?;
                    self.auth.borrow_mut().insert(t.auth_key(), value);
                    answered = true;
                }
                Err(HttpError::Status {
                    status: status @ (401 | 403),
                    ..
                }) => return Err(self.refused(t, status)),
                Err(HttpError::Status { status: 404, .. }) => bail!(
                    "image {}: {what} blob {} is missing at {url} (HTTP 404): the registry has an incomplete copy, push the image again",
                    t.reference,
                    desc.digest
                ),
                Err(HttpError::Mismatch { actual, .. }) => bail!(
                    "image {}: {url} sent bytes with sha256 {actual}, not {}: the registry or a proxy in between corrupts data; nothing was kept, run again",
                    t.reference,
                    desc.digest
                ),
                Err(e) => bail!("image {}: downloading {what}: {e}", t.reference),
            }
        }
        let on_disk = std::fs::metadata(&dest)
            .with_context(|| format!("reading {}", dest.display()))?
            .len();
        if on_disk != desc.size {
            bail!(
                "image {}: blob {} is {on_disk} bytes but the manifest says {}: the registry serves an inconsistent image",
                t.reference,
                desc.digest,
                desc.size
            );
        }
        Ok(Blob {
            digest: desc.digest.clone(),
            size: desc.size,
            media_type: desc.media_type_or(default_type),
            source: BlobSource::File(dest),
        })
    }
}

fn read_small(response: &mut Response, url: &str) -> Result<Vec<u8>> {
    response
        .body_mut()
        .with_config()
        .limit(MAX_SMALL_BODY)
        .read_to_vec()
        .map_err(|e| anyhow::anyhow!("reading {url}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges_parse_the_way_registries_write_them() {
        let c = parse_challenge(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/busybox:pull""#,
        )
        .unwrap();
        assert_eq!(c.scheme, "bearer");
        assert_eq!(c.param("realm"), Some("https://auth.docker.io/token"));
        assert_eq!(c.param("service"), Some("registry.docker.io"));
        assert_eq!(c.param("scope"), Some("repository:library/busybox:pull"));

        let c = parse_challenge(r#"Basic realm="edgeferry-test""#).unwrap();
        assert_eq!(c.scheme, "basic");
        assert_eq!(c.param("realm"), Some("edgeferry-test"));

        let c = parse_challenge(
            r#"Bearer realm="https://r/t", scope="repository:a/b:pull,push", error="x\"y""#,
        )
        .unwrap();
        assert_eq!(c.param("scope"), Some("repository:a/b:pull,push"));
        assert_eq!(c.param("error"), Some("x\"y"));
        assert_eq!(c.param("REALM"), Some("https://r/t"));
        assert_eq!(parse_challenge("Basic").unwrap().params, vec![]);
        assert!(parse_challenge("").is_none());
    }

    #[test]
    fn mirrors() {
        let m = parse_mirror("docker.io=http://127.0.0.1:5000/").unwrap();
        assert_eq!(
            (m.registry.as_str(), m.url.as_str()),
            ("docker.io", "http://127.0.0.1:5000")
        );
        assert_eq!(
            parse_mirror("index.docker.io=https://m.example")
                .unwrap()
                .registry,
            "docker.io"
        );
        for bad in [
            "docker.io",
            "docker.io=ftp://x",
            "=http://x",
            "docker.io=http://",
        ] {
            assert!(parse_mirror(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn targets_split_and_map_to_endpoints() {
        let mirrors = vec![Mirror {
            registry: "registry.k8s.io".into(),
            url: "http://127.0.0.1:9".into(),
        }];
        let t = Target::new(
            "docker.io/library/eclipse-mosquitto:1.6.15",
            Arch::Amd64,
            &mirrors,
        )
        .unwrap();
        assert_eq!(t.endpoint, "https://registry-1.docker.io");
        assert_eq!(t.repository, "library/eclipse-mosquitto");
        assert_eq!(t.tag.as_deref(), Some("1.6.15"));
        assert!(t.credential_hosts.contains(&"index.docker.io".to_string()));
        assert_eq!(
            t.manifest_url("1.6.15"),
            "https://registry-1.docker.io/v2/library/eclipse-mosquitto/manifests/1.6.15"
        );
        let t = Target::new("registry.k8s.io/pause:3.10", Arch::Amd64, &mirrors).unwrap();
        assert_eq!(t.endpoint, "http://127.0.0.1:9");
        assert_eq!(t.credential_hosts, ["127.0.0.1:9"]);
        let digest = format!("sha256:{}", "a".repeat(64));
        let reference = format!("localhost:5000/x/y:1@{digest}");
        let t = Target::new(&reference, Arch::Amd64, &mirrors).unwrap();
        assert_eq!(t.endpoint, "https://localhost:5000");
        assert_eq!(t.repository, "x/y");
        assert_eq!(t.tag.as_deref(), Some("1"));
        assert_eq!(t.digest.as_deref(), Some(digest.as_str()));
    }

    #[test]
    fn docker_config_auths_and_no_password_in_debug() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("config.json");
        std::fs::write(
            &path,
            format!(
                r#"{{"auths":{{"https://index.docker.io/v1/":{{"auth":"{}"}},"127.0.0.1:5000":{{"username":"bob","password":"pw2"}},"empty.example":{{}}}},"credsStore":"desktop"}}"#,
                base64(b"alice:s3cret:with:colons")
            ),
        )
        .unwrap();
        let config = DockerConfig::load(Some(&path)).unwrap();
        assert!(config.helpers);
        let hub = config.lookup(DOCKER_HUB_ALIASES).unwrap();
        assert_eq!(
            (hub.user.as_str(), hub.password.as_str()),
            ("alice", "s3cret:with:colons")
        );
        assert_eq!(config.lookup(&["127.0.0.1:5000"]).unwrap().user, "bob");
        assert!(config.lookup(&["empty.example"]).is_none());
        let shown = format!("{config:?}");
        assert!(
            !shown.contains("s3cret") && !shown.contains("pw2"),
            "{shown}"
        );

        std::fs::write(&path, r#"{"auths":{"h":{"auth":"!!!"}}}"#).unwrap();
        let err = DockerConfig::load(Some(&path)).unwrap_err().to_string();
        assert!(
            err.contains("auths.h.auth") && !err.contains("!!!"),
            "{err}"
        );
        assert!(DockerConfig::load(Some(&tmp.path().join("nope.json"))).is_err());
    }

    use super::super::fake::{Req, Resp, Server};
    use super::super::http::{Retry, Timeouts};
    use std::sync::{Arc, OnceLock};

    fn put(
        blobs: &mut HashMap<String, (Vec<u8>, &'static str)>,
        media_type: &'static str,
        bytes: Vec<u8>,
    ) -> (String, usize) {
        let digest = format!("sha256:{}", sha256_hex(&bytes));
        let size = bytes.len();
        blobs.insert(digest.clone(), (bytes, media_type));
        (digest, size)
    }

    /// `library/demo:1` for amd64 and arm64, Docker Hub style: anonymous
    /// bearer tokens, blobs redirected to a "CDN" that must not see them.
    /// `index_type` is the Content-Type the index is served with.
    fn hub(index_type: &'static str) -> (Server, String) {
        let mut blobs = HashMap::new();
        let mut entries = Vec::new();
        for arch in ["amd64", "arm64"] {
            let (layer, layer_size) = put(&mut blobs, "", format!("layer-{arch}").into_bytes());
            let config = serde_json::json!({"architecture": arch, "os": "linux"});
            let (config, config_size) = put(&mut blobs, "", serde_json::to_vec(&config).unwrap());
            let manifest = serde_json::json!({
                "schemaVersion": 2,
                "mediaType": MEDIA_OCI_MANIFEST,
                "config": {"mediaType": MEDIA_OCI_CONFIG, "digest": config, "size": config_size},
                "layers": [{"mediaType": MEDIA_OCI_LAYER_GZIP, "digest": layer, "size": layer_size}],
            });
            let (digest, size) = put(
                &mut blobs,
                MEDIA_OCI_MANIFEST,
                serde_json::to_vec(&manifest).unwrap(),
            );
            entries.push(serde_json::json!({
                "mediaType": MEDIA_OCI_MANIFEST, "digest": digest, "size": size,
                "platform": {"architecture": arch, "os": "linux"},
            }));
        }
        let index = serde_json::json!({"schemaVersion": 2, "mediaType": MEDIA_OCI_INDEX, "manifests": entries});
        let (index_digest, _) = put(&mut blobs, index_type, serde_json::to_vec(&index).unwrap());
        let addr: Arc<OnceLock<String>> = Arc::new(OnceLock::new());
        let realm_addr = Arc::clone(&addr);
        let tag_digest = index_digest.clone();
        let server = Server::start(move |req: &Req| {
            let addr = realm_addr.get().expect("set after start");
            if let Some(query) = req.target.strip_prefix("/token?") {
                assert_eq!(
                    query,
                    "service=fake-hub&scope=repository%3Alibrary%2Fdemo%3Apull"
                );
                assert!(req.header("authorization").is_none(), "anonymous");
                return Resp::new(200, r#"{"token":"tok-1","expires_in":300}"#);
            }
            if let Some(digest) = req.target.strip_prefix("/cdn/") {
                if req.header("authorization").is_some() {
                    return Resp::new(400, "the registry token leaked to the CDN");
                }
                return Resp::new(200, blobs[digest].0.clone());
            }
            if req.header("authorization") != Some("Bearer tok-1") {
                return Resp::new(401, "{}").with(
                    "WWW-Authenticate",
                    &format!(r#"Bearer realm="http://{addr}/token",service="fake-hub",scope="repository:library/demo:pull""#),
                );
            }
            if let Some(reference) = req.target.strip_prefix("/v2/library/demo/manifests/") {
                let digest = if reference == "1" {
                    tag_digest.as_str()
                } else {
                    reference
                };
                return match blobs.get(digest) {
                    Some((bytes, media_type)) => Resp::new(200, bytes.clone())
                        .with("Content-Type", media_type)
                        .with("Docker-Content-Digest", digest),
                    None => Resp::new(404, r#"{"errors":[{"code":"MANIFEST_UNKNOWN"}]}"#),
                };
            }
            if let Some(digest) = req.target.strip_prefix("/v2/library/demo/blobs/") {
                return Resp::new(307, "").with("Location", &format!("http://{addr}/cdn/{digest}"));
            }
            Resp::new(404, "")
        });
        addr.set(server.addr.clone()).unwrap();
        (server, index_digest)
    }

    fn quick_http() -> Http {
        let retry = Retry {
            attempts: 2,
            first_delay: std::time::Duration::from_millis(5),
            max_delay: std::time::Duration::from_millis(5),
        };
        Http::new(Timeouts::default(), retry, false)
    }

    #[test]
    fn bearer_tokens_are_fetched_once_and_never_sent_to_the_blob_cdn() {
        let (server, index_digest) = hub(MEDIA_OCI_INDEX);
        let tmp = tempfile::tempdir().unwrap();
        let cache = Cache::at(tmp.path());
        let http = quick_http();
        let mirrors = vec![Mirror {
            registry: "docker.io".into(),
            url: server.url(),
        }];
        let registry = Registry::new(&http, &cache, &mirrors, DockerConfig::default());
        let image = registry
            .fetch("docker.io/library/demo:1", Arch::Arm64)
            .unwrap();
        let index = image.index.as_ref().unwrap();
        assert_eq!(index.digest, index_digest);
        assert_eq!(index.media_type, MEDIA_OCI_INDEX);
        assert_eq!(image.manifest.media_type, MEDIA_OCI_MANIFEST);
        assert_eq!(image.platform, "linux/arm64");
        for blob in image.blobs() {
            let BlobSource::File(path) = &blob.source else {
                panic!("{blob:?} is not a file")
            };
            let bytes = std::fs::read(path).unwrap();
            assert_eq!(format!("sha256:{}", sha256_hex(&bytes)), blob.digest);
        }
        assert_eq!(
            std::fs::read(match &image.layers[0].source {
                BlobSource::File(p) => p,
                _ => unreachable!(),
            })
            .unwrap(),
            b"layer-arm64"
        );
        // A second arch on the same client: the token is reused, the index
        // comes from the cache after a HEAD.
        registry
            .fetch("docker.io/library/demo:1", Arch::Amd64)
            .unwrap();
        let requests = server.requests();
        let tokens = requests
            .iter()
            .filter(|r| r.target.starts_with("/token"))
            .count();
        assert_eq!(tokens, 1, "{requests:?}");
        let tag_gets = requests
            .iter()
            .filter(|r| r.method == "GET" && r.target.ends_with("/manifests/1"))
            .count();
        assert_eq!(tag_gets, 1, "{requests:?}");

        let err = registry
            .fetch("docker.io/library/demo:1", Arch::Arm)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("docker.io/library/demo:1") && err.contains("linux/arm "),
            "{err}"
        );
        assert!(err.contains("linux/amd64, linux/arm64"), "{err}");
        let err = registry
            .fetch("docker.io/library/demo:2", Arch::Arm)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("docker.io/library/demo:2 for linux/arm") && err.contains("not found"),
            "{err}"
        );
    }

    #[test]
    fn a_content_type_that_contradicts_the_json_is_refused() {
        let (server, _) = hub(MEDIA_DOCKER_LIST);
        let tmp = tempfile::tempdir().unwrap();
        let cache = Cache::at(tmp.path());
        let http = quick_http();
        let mirrors = vec![Mirror {
            registry: "docker.io".into(),
            url: server.url(),
        }];
        let registry = Registry::new(&http, &cache, &mirrors, DockerConfig::default());
        let err = registry
            .fetch("docker.io/library/demo:1", Arch::Amd64)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(MEDIA_DOCKER_LIST) && err.contains(MEDIA_OCI_INDEX),
            "{err}"
        );
        assert!(!err.contains('\n'));
    }

    #[test]
    fn query_values_are_encoded() {
        assert_eq!(
            percent_encode("repository:library/busybox:pull"),
            "repository%3Alibrary%2Fbusybox%3Apull"
        );
    }
}
