//! The store, read-only, over HTTP: plain files (`/files/`, `SHA256SUMS`,
//! `index.json`), the signed bundle manifests the store keeps
//! (`/v1/bundles/`, for `edgeferry sync` downstream) and an OCI registry containerd can use as a mirror
//! (`/v2/`). It answers one request at a time from a [`Snapshot`]; the
//! accept loop, limits and access log are `serve`'s, and it knows nothing
//! of joining nodes.

mod body;
mod registry;

#[cfg(test)]
pub(crate) use body::map_file;
pub use body::{file_behind, FileSlice};

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use anyhow::{Context, Result};
use axum::body::Body;
use axum::http::{header, HeaderMap, Method, Response, StatusCode};

use crate::node::hosts;
use crate::store::{self, State};

/// What one request sees: the store's state at one moment.
pub struct Snapshot {
    pub store: PathBuf,
    pub state: State,
    pub repos: registry::Repos,
    /// Every manifest and index, in memory: small, immutable, and the
    /// requests a pull waits on, so they never queue behind blob reads.
    pub manifest_bytes: std::collections::BTreeMap<String, bytes::Bytes>,
    index_json: String,
    /// `/v1/bundles/`: the bundles whose signed manifest the store keeps.
    bundles_json: String,
    /// Their ids, the only ones `/v1/bundles/<id>/` answers for.
    kept_bundles: BTreeSet<String>,
    /// `SHA256SUMS` and its digest (the ETag), read once per snapshot.
    sums: (bytes::Bytes, String),
    pub stamp: Option<(u64, i64, u64)>,
    /// Per release file, whether its bytes still have their sha256: found
    /// out on the first request in this snapshot, since `/files/` clients
    /// (curl in /join.sh, keadm) may not check what they get.
    files_intact: BTreeMap<String, Arc<OnceLock<bool>>>,
}

impl Snapshot {
    pub fn read(store: &Path) -> Result<Snapshot> {
        let stamp = state_stamp(store);
        let state = State::read(store)?;
        let index = serde_json::json!({
            "files": state.files.iter().map(|(name, f)| serde_json::json!({
                "name": name, "size": f.size, "sha256": f.sha256, "url": format!("/files/{name}"),
            })).collect::<Vec<_>>(),
            "images": state.images.iter().map(|(reference, i)| serde_json::json!({
                "reference": reference, "digest": i.digest, "platforms": i.platforms.keys().collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
            "bundles": state.bundles.iter().map(|(id, b)| serde_json::json!({
                "id": id, "kubeedge_version": b.kubeedge_version, "arch": b.arch, "sample": b.sample,
            })).collect::<Vec<_>>(),
        });
        let mut manifest_bytes = std::collections::BTreeMap::new();
        for digest in state.manifests.keys() {
            let path = store::blob_path(store, digest);
            let bytes = std::fs::read(&path).with_context(|| {
                format!(
                    "reading manifest {}: the store is damaged, load its bundles again",
                    path.display()
                )
            })?;
            manifest_bytes.insert(digest.clone(), bytes::Bytes::from(bytes));
        }
        // The release files are known now: one cell each, filled on demand.
        let files_intact = state
            .files
            .keys()
            .map(|n| (n.clone(), Arc::default()))
            .collect();
        let (bundles_json, kept_bundles) = kept_bundles(store, &state)?;
        Ok(Snapshot {
            bundles_json,
            kept_bundles,
            files_intact,
            manifest_bytes,
            store: store.to_path_buf(),
            repos: registry::Repos::from_state(&state),
            state,
            index_json: serde_json::to_string_pretty(&index)?,
            sums: {
                let bytes = std::fs::read(store.join("SHA256SUMS")).unwrap_or_default();
                let digest = format!("sha256:{}", edgeferry_bundle::hashing::sha256_hex(&bytes));
                (bytes::Bytes::from(bytes), digest)
            },
            stamp,
        })
    }

    /// Whether release file `name` still has the sha256 the store records,
    /// hashed once per snapshot off the request threads.
    async fn file_intact(&self, name: &str) -> bool {
        let (Some(record), Some(cell)) = (self.state.files.get(name), self.files_intact.get(name))
        else {
            return false;
        };
        let cell = Arc::clone(cell);
        if let Some(&known) = cell.get() {
            return known;
        }
        let path = store::blob_path(&self.store, &record.sha256);
        let (size, sha256) = (record.size, record.sha256.clone());
        tokio::task::spawn_blocking(move || {
            *cell.get_or_init(|| store::blob_is_intact(&path, size, &sha256).unwrap_or(false))
        })
        .await
        .unwrap_or(false)
    }

    pub fn registries(&self) -> BTreeSet<String> {
        self.state
            .images
            .keys()
            .map(|r| hosts::registry_of(r).to_string())
            .collect()
    }
}

/// The `/v1/bundles/` index: per bundle the store keeps a signed manifest
/// for, what state.json records of it and where its manifest and
/// signature are, with the manifest's size and sha256. Nothing here is
/// to be trusted downstream: `sync` checks every manifest's signature
/// with its own keys, and caps each read at the format's limits.
fn kept_bundles(store: &Path, state: &State) -> Result<(String, BTreeSet<String>)> {
    let mut list = Vec::new();
    let mut ids = BTreeSet::new();
    for (id, b) in &state.bundles {
        let (manifest, signature) = store::kept_manifest_paths(store, id);
        let (Ok(bytes), true) = (std::fs::read(&manifest), signature.exists()) else {
            continue;
        };
        list.push(serde_json::json!({
            "id": id,
            "kubeedge_version": b.kubeedge_version,
            "arch": b.arch,
            "sequence": b.sequence,
            "created": b.created,
            "manifest": {
                "url": format!("/v1/bundles/{id}/manifest.json"),
                "size": bytes.len(),
                "sha256": edgeferry_bundle::hashing::sha256_hex(&bytes),
            },
            "signature": format!("/v1/bundles/{id}/manifest.json.minisig"),
        }));
        ids.insert(id.clone());
    }
    let json = serde_json::to_string_pretty(&serde_json::json!({ "bundles": list }))?;
    Ok((json, ids))
}

/// Identifies the store's state.json as last written: a load swaps in a
/// new one, so a changed stamp means a changed store.
pub fn state_stamp(store: &Path) -> Option<(u64, i64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(store.join(store::STATE_FILE))
        .ok()
        .map(|m| (m.ino(), m.mtime_nsec() + m.mtime() * 1_000_000_000, m.len()))
}

/// Answers a request for the store's files or registry.
pub async fn route(
    snapshot: &Snapshot,
    method: &Method,
    path: &str,
    query: Option<&str>,
    headers: &HeaderMap,
) -> Response<Body> {
    if path == "/v2" || path.starts_with("/v2/") {
        return registry::handle(snapshot, method, path, query, headers).await;
    }
    if method != Method::GET && method != Method::HEAD {
        return Response::builder()
            .status(StatusCode::METHOD_NOT_ALLOWED)
            .header(header::ALLOW, "GET, HEAD")
            .body(Body::from("read-only mirror\n"))
            .expect("valid response");
    }
    match path {
        "/healthz" => text(method, "ok\n", "text/plain"),
        "/index.json" => text(method, &snapshot.index_json, "application/json"),
        "/SHA256SUMS" => {
            let (bytes, digest) = &snapshot.sums;
            let stored = body::Stored {
                source: body::Source::Memory(bytes),
                digest,
                content_type: "text/plain",
                registry: false,
                immutable: false,
            };
            body::serve(method, headers, stored)
                .await
                .unwrap_or_else(not_found)
        }
        "/v1/bundles/" | "/v1/bundles" => text(method, &snapshot.bundles_json, "application/json"),
        "/files/" | "/files" => {
            let listing: String = snapshot
                .state
                .files
                .keys()
                .map(|name| format!("{name}\n"))
                .collect();
            text(method, &listing, "text/plain")
        }
        _ if path.starts_with("/v1/bundles/") => {
            let rest = &path["/v1/bundles/".len()..];
            let Some((id, name)) = rest.split_once('/') else {
                return not_found();
            };
            if !snapshot.kept_bundles.contains(id) {
                return not_found();
            }
            let (manifest, signature) = store::kept_manifest_paths(&snapshot.store, id);
            let file = match name {
                edgeferry_bundle::format::MANIFEST_PATH => manifest,
                edgeferry_bundle::format::SIGNATURE_PATH => signature,
                _ => return not_found(),
            };
            // A kept file never changes (a new manifest means a new id), so
            // its own digest is its ETag.
            let Ok(bytes) = std::fs::read(&file) else {
                return not_found();
            };
            let digest = format!("sha256:{}", edgeferry_bundle::hashing::sha256_hex(&bytes));
            serve_file(method, headers, &file, &digest, body::UNTYPED).await
        }
        _ => match path.strip_prefix("/files/") {
            Some(name) if snapshot.state.files.contains_key(name) => {
                if !snapshot.file_intact(name).await {
                    return damaged(name);
                }
                let record = &snapshot.state.files[name];
                let digest = format!("sha256:{}", record.sha256);
                serve_file(
                    method,
                    headers,
                    &store::blob_path(&snapshot.store, &record.sha256),
                    &digest,
                    body::UNTYPED,
                )
                .await
            }
            _ => not_found(),
        },
    }
}

async fn serve_file(
    method: &Method,
    headers: &HeaderMap,
    path: &Path,
    digest: &str,
    content_type: &str,
) -> Response<Body> {
    let stored = body::Stored {
        source: body::Source::File(path),
        digest,
        content_type,
        registry: false,
        immutable: false,
    };
    body::serve(method, headers, stored)
        .await
        .unwrap_or_else(not_found)
}

fn text(method: &Method, body: &str, content_type: &str) -> Response<Body> {
    Response::builder()
        .header(header::CONTENT_TYPE, content_type)
        .header(header::CONTENT_LENGTH, body.len())
        .body(if method == Method::HEAD {
            Body::empty()
        } else {
            Body::from(body.to_string())
        })
        .expect("valid response")
}

/// A release file whose bytes no longer match: never sent.
fn damaged(name: &str) -> Response<Body> {
    Response::builder()
        .status(StatusCode::INTERNAL_SERVER_ERROR)
        .header(header::CONTENT_TYPE, "text/plain")
        .body(Body::from(format!(
            "files/{name} is damaged in this store (its sha256 does not match): the operator should run `edgeferry store check --repair <bundle>`\n"
        )))
        .expect("valid response")
}

fn not_found() -> Response<Body> {
    Response::builder()
        .status(StatusCode::NOT_FOUND)
        .header(header::CONTENT_TYPE, "text/plain")
        .body(Body::from("not found\n"))
        .expect("valid response")
}
