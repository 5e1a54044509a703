//! The read-only OCI distribution API over the store: `/v2/`, manifests by
//! tag and digest, blobs, tag lists and the catalog. Names resolve both as
//! a containerd mirror (`?ns=docker.io`) and directly
//! (`<mirror>/kubeedge/installation-package`).

use std::collections::{BTreeMap, BTreeSet};

use axum::body::Body;
use axum::http::{header, HeaderMap, Method, Response, StatusCode};

use super::body::{self, Stored};
use super::Snapshot;
use crate::store::{self, State};

/// Repositories (full names without tag) with their tags and digests.
#[derive(Default)]
pub struct Repos {
    /// Full repository name -> tag -> full reference.
    pub tags: BTreeMap<String, BTreeMap<String, String>>,
    /// Full repository name -> every manifest or index digest it may serve.
    pub digests: BTreeMap<String, BTreeSet<String>>,
}

impl Repos {
    pub fn from_state(state: &State) -> Repos {
        let mut repos = Repos::default();
        for (reference, image) in &state.images {
            let (repo, tag) = split_reference(reference);
            if let Some(tag) = tag {
                repos
                    .tags
                    .entry(repo.to_string())
                    .or_default()
                    .insert(tag.to_string(), reference.clone());
            } else {
                repos.tags.entry(repo.to_string()).or_default();
            }
            let digests = repos.digests.entry(repo.to_string()).or_default();
            digests.insert(image.digest.clone());
            digests.extend(image.platforms.values().cloned());
            digests.extend(image.upstream_indexes.iter().cloned());
            if let Some((_, pinned)) = reference.split_once('@') {
                digests.insert(pinned.to_string());
            }
        }
        repos
    }

    /// The full repository a request names, given containerd's `ns`.
    fn resolve(&self, name: &str, ns: Option<&str>) -> Option<String> {
        let single = !name.contains('/');
        let mut candidates = Vec::new();
        match ns {
            Some(ns) => {
                candidates.push(format!("{ns}/{name}"));
                if ns == "docker.io" && single {
                    candidates.push(format!("docker.io/library/{name}"));
                }
            }
            None => {
                let first = name.split('/').next().unwrap_or_default();
                if !single && (first.contains('.') || first.contains(':') || first == "localhost") {
                    candidates.push(name.to_string());
                } else {
                    candidates.push(format!("docker.io/{name}"));
                    if single {
                        candidates.push(format!("docker.io/library/{name}"));
                    }
                }
            }
        }
        if let Some(found) = candidates.into_iter().find(|c| self.tags.contains_key(c)) {
            return Some(found);
        }
        if ns.is_some() {
            return None;
        }
        // `<mirror>/pause` for `registry.k8s.io/pause`: the path after the
        // registry, if exactly one repository has it.
        let mut matches = self
            .tags
            .keys()
            .filter(|repo| repo.split_once('/').map(|(_, path)| path) == Some(name));
        match (matches.next(), matches.next()) {
            (Some(only), None) => Some(only.clone()),
            _ => None,
        }
    }

    /// How a client without `ns` addresses a repository.
    fn catalog_name(repo: &str) -> &str {
        repo.strip_prefix("docker.io/").unwrap_or(repo)
    }
}

/// `docker.io/x/y:tag` -> (`docker.io/x/y`, Some(`tag`)); digests have no tag.
pub fn split_reference(reference: &str) -> (&str, Option<&str>) {
    if let Some((repo, _digest)) = reference.split_once('@') {
        let repo = match repo.rsplit_once(':') {
            Some((r, tag)) if !tag.contains('/') => r,
            _ => repo,
        };
        return (repo, None);
    }
    match reference.rsplit_once(':') {
        Some((repo, tag)) if !tag.contains('/') => (repo, Some(tag)),
        _ => (reference, None),
    }
}

pub fn error(status: StatusCode, code: &str, message: &str) -> Response<Body> {
    let body = serde_json::json!({"errors": [{"code": code, "message": message, "detail": {}}]});
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .header("Docker-Distribution-API-Version", "registry/2.0")
        .body(Body::from(body.to_string()))
        .expect("valid response")
}

/// Handles everything under `/v2/`.
pub async fn handle(
    snapshot: &Snapshot,
    method: &Method,
    path: &str,
    query: Option<&str>,
    headers: &HeaderMap,
) -> Response<Body> {
    if method != Method::GET && method != Method::HEAD {
        let mut response = error(
            StatusCode::METHOD_NOT_ALLOWED,
            "UNSUPPORTED",
            "this mirror is read-only",
        );
        response
            .headers_mut()
            .insert(header::ALLOW, "GET, HEAD".parse().expect("static"));
        return response;
    }
    let rest = path.strip_prefix("/v2").unwrap_or(path);
    if rest == "/" || rest.is_empty() {
        return json(method, &serde_json::json!({}));
    }
    let params = parse_query(query);
    let ns = params.get("ns").map(String::as_str);
    if rest == "/_catalog" {
        let mut names: Vec<&str> = snapshot
            .repos
            .tags
            .keys()
            .map(|r| Repos::catalog_name(r))
            .collect();
        names.sort();
        let (names, next) = paginate(names, &params);
        let mut response = json(method, &serde_json::json!({"repositories": names}));
        link_next(&mut response, "/v2/_catalog", next, &params);
        return response;
    }
    let rest = rest.trim_start_matches('/');
    if let Some(name) = rest.strip_suffix("/tags/list") {
        let Some(repo) = snapshot.repos.resolve(name, ns) else {
            return error(
                StatusCode::NOT_FOUND,
                "NAME_UNKNOWN",
                &format!("repository {name} is not in this mirror"),
            );
        };
        let tags: Vec<&str> = snapshot.repos.tags[&repo]
            .keys()
            .map(String::as_str)
            .collect();
        let (tags, next) = paginate(tags, &params);
        let mut response = json(method, &serde_json::json!({"name": name, "tags": tags}));
        link_next(
            &mut response,
            &format!("/v2/{name}/tags/list"),
            next,
            &params,
        );
        return response;
    }
    if let Some((name, reference)) = rest.rsplit_once("/manifests/") {
        return manifest(snapshot, method, headers, name, reference, ns).await;
    }
    if let Some((name, digest)) = rest.rsplit_once("/blobs/") {
        if snapshot.repos.resolve(name, ns).is_none() {
            return error(
                StatusCode::NOT_FOUND,
                "NAME_UNKNOWN",
                &format!("repository {name} is not in this mirror"),
            );
        }
        if edgeferry_bundle::format::sha256_hex_of_digest(digest).is_none() {
            return error(
                StatusCode::BAD_REQUEST,
                "DIGEST_INVALID",
                "only sha256 digests are served",
            );
        }
        let path = store::blob_path(&snapshot.store, digest);
        let stored = Stored {
            source: body::Source::File(&path),
            digest,
            content_type: body::UNTYPED,
            registry: true,
            immutable: true,
        };
        return match body::serve(method, headers, stored).await {
            Some(response) => response,
            None => error(
                StatusCode::NOT_FOUND,
                "BLOB_UNKNOWN",
                &format!("blob {digest} is not in this mirror"),
            ),
        };
    }
    error(
        StatusCode::NOT_FOUND,
        "NAME_UNKNOWN",
        "unknown registry path",
    )
}

async fn manifest(
    snapshot: &Snapshot,
    method: &Method,
    headers: &HeaderMap,
    name: &str,
    reference: &str,
    ns: Option<&str>,
) -> Response<Body> {
    let Some(repo) = snapshot.repos.resolve(name, ns) else {
        return error(
            StatusCode::NOT_FOUND,
            "NAME_UNKNOWN",
            &format!("repository {name} is not in this mirror"),
        );
    };
    let by_digest = reference.starts_with("sha256:");
    let digest = if by_digest {
        if !snapshot.repos.digests[&repo].contains(reference) {
            return error(
                StatusCode::NOT_FOUND,
                "MANIFEST_UNKNOWN",
                &format!("manifest {reference} is not in {name}"),
            );
        }
        reference.to_string()
    } else {
        match snapshot.repos.tags[&repo].get(reference) {
            Some(full) => snapshot.state.images[full].digest.clone(),
            None => {
                return error(
                    StatusCode::NOT_FOUND,
                    "MANIFEST_UNKNOWN",
                    &format!("tag {reference} is not in {name}"),
                )
            }
        }
    };
    let Some(record) = snapshot.state.manifests.get(&digest) else {
        return error(
            StatusCode::NOT_FOUND,
            "MANIFEST_UNKNOWN",
            &format!("manifest {digest} is not in this mirror"),
        );
    };
    let Some(bytes) = snapshot.manifest_bytes.get(&digest) else {
        return error(
            StatusCode::NOT_FOUND,
            "MANIFEST_UNKNOWN",
            &format!("manifest {digest} is missing from the store"),
        );
    };
    let stored = Stored {
        source: body::Source::Memory(bytes),
        digest: &digest,
        content_type: &record.media_type,
        registry: true,
        immutable: by_digest,
    };
    match body::serve(method, headers, stored).await {
        Some(response) => response,
        None => error(
            StatusCode::NOT_FOUND,
            "MANIFEST_UNKNOWN",
            &format!("manifest {digest} is missing from the store"),
        ),
    }
}

fn json(method: &Method, value: &serde_json::Value) -> Response<Body> {
    let text = value.to_string();
    Response::builder()
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::CONTENT_LENGTH, text.len())
        .header("Docker-Distribution-API-Version", "registry/2.0")
        .body(if method == Method::HEAD {
            Body::empty()
        } else {
            Body::from(text)
        })
        .expect("valid response")
}

fn parse_query(query: Option<&str>) -> BTreeMap<String, String> {
    query
        .unwrap_or_default()
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .map(|(k, v)| (k.to_string(), v.replace("%2F", "/").replace("%3A", ":")))
        .collect()
}

/// `n` and `last`, as the spec's pagination. Also returns the last item
/// when the list was cut short, for the `Link` to the next page.
fn paginate<'a>(
    sorted: Vec<&'a str>,
    params: &BTreeMap<String, String>,
) -> (Vec<&'a str>, Option<&'a str>) {
    let after: Vec<&str> = match params.get("last") {
        Some(last) => sorted.into_iter().filter(|n| *n > last.as_str()).collect(),
        None => sorted,
    };
    match params.get("n").and_then(|n| n.parse::<usize>().ok()) {
        Some(n) if n < after.len() => {
            let page: Vec<&str> = after.into_iter().take(n).collect();
            let last = page.last().copied();
            (page, last)
        }
        _ => (after, None),
    }
}

/// The spec's `Link: <…?n=&last=>; rel="next"`, so clients know there is more.
fn link_next(
    response: &mut Response<Body>,
    path: &str,
    last: Option<&str>,
    params: &BTreeMap<String, String>,
) {
    let (Some(last), Some(n)) = (last, params.get("n")) else {
        return;
    };
    let mut link = format!("<{path}?n={n}&last={last}");
    if let Some(ns) = params.get("ns") {
        link.push_str(&format!("&ns={ns}"));
    }
    link.push_str(">; rel=\"next\"");
    if let Ok(value) = link.parse() {
        response.headers_mut().insert(header::LINK, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_split() {
        assert_eq!(
            split_reference("docker.io/kubeedge/x:v1"),
            ("docker.io/kubeedge/x", Some("v1"))
        );
        assert_eq!(
            split_reference("localhost:5000/x:v1"),
            ("localhost:5000/x", Some("v1"))
        );
        assert_eq!(
            split_reference("docker.io/x/y@sha256:ab"),
            ("docker.io/x/y", None)
        );
    }

    #[test]
    fn names_resolve_as_mirror_and_directly() {
        let mut repos = Repos::default();
        for repo in [
            "docker.io/kubeedge/installation-package",
            "docker.io/library/eclipse-mosquitto",
            "registry.k8s.io/pause",
        ] {
            repos.tags.entry(repo.to_string()).or_default();
        }
        let r = |name: &str, ns: Option<&str>| repos.resolve(name, ns);
        assert_eq!(
            r("kubeedge/installation-package", Some("docker.io")).as_deref(),
            Some("docker.io/kubeedge/installation-package")
        );
        assert_eq!(
            r("library/eclipse-mosquitto", Some("docker.io")).as_deref(),
            Some("docker.io/library/eclipse-mosquitto")
        );
        assert_eq!(
            r("pause", Some("registry.k8s.io")).as_deref(),
            Some("registry.k8s.io/pause")
        );
        assert_eq!(r("pause", Some("docker.io")), None);
        assert_eq!(
            r("kubeedge/installation-package", None).as_deref(),
            Some("docker.io/kubeedge/installation-package")
        );
        assert_eq!(
            r("eclipse-mosquitto", None).as_deref(),
            Some("docker.io/library/eclipse-mosquitto")
        );
        assert_eq!(
            r("registry.k8s.io/pause", None).as_deref(),
            Some("registry.k8s.io/pause")
        );
        assert_eq!(r("pause", None).as_deref(), Some("registry.k8s.io/pause"));
        assert_eq!(r("nothing", None), None);
    }
}
