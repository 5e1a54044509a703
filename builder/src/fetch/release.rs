//! Release assets from `<release-base-url>/<version>/<asset>`, each checked
//! against its upstream `checksum_<asset>.txt` (bare SHA-512 hex) while it
//! downloads, and cached by that SHA-512.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{bail, Result};
use edgeferry_bundle::hashing::sha256_hex;
use serde::Serialize;

use super::cache::Cache;
use super::http::{self, Download, Expected, Http, HttpError, Method};
use crate::plan::{Plan, Step};
use crate::release::parse_checksum_file;

/// A checksum file is one line; anything much bigger is not one.
const MAX_CHECKSUM_BYTES: u64 = 64 * 1024;

/// A release asset and its checksum file, both in the cache.
#[derive(Clone, Debug)]
pub struct FetchedFile {
    pub path: PathBuf,
    pub checksum_path: PathBuf,
}

/// What `--dry-run` says about one release asset.
#[derive(Clone, Debug, Serialize)]
pub struct SurveyFile {
    pub name: String,
    pub url: String,
    /// Whether the release has it (optional assets may be missing).
    pub found: bool,
    /// From `Content-Length`, when the server says.
    pub size: Option<u64>,
    pub cached: bool,
}

/// One [`Step::FetchFile`] of the plan.
struct FileStep<'p> {
    name: &'p str,
    checksum: &'p str,
    url: &'p str,
    checksum_url: &'p str,
    required: bool,
}

/// The plan's release-asset downloads, in plan order.
fn file_steps(plan: &Plan) -> impl Iterator<Item = FileStep<'_>> {
    plan.steps.iter().filter_map(|step| match step {
        Step::FetchFile {
            name,
            checksum,
            url,
            checksum_url,
            required,
        } => Some(FileStep {
            name,
            checksum,
            url,
            checksum_url,
            required: *required,
        }),
        _ => None,
    })
}

/// The checksum file's bytes and the SHA-512 hex it holds, or `None` when
/// the release has no such file and the asset is optional.
fn checksum(
    http: &Http,
    plan: &Plan,
    file: &FileStep,
    url: &str,
) -> Result<Option<(Vec<u8>, String)>> {
    let bytes = match http.get_small(url, &[], MAX_CHECKSUM_BYTES) {
        Ok((_, bytes)) => bytes,
        Err(HttpError::Status { status: 404, .. }) if !file.required => return Ok(None),
        Err(HttpError::Status { status: 404, .. }) => bail!(
            "release asset {} of KubeEdge {}: {url} is not there (HTTP 404): check --kubeedge-version and --release-base-url",
            file.name,
            plan.kubeedge_version
        ),
        Err(e) => bail!("fetching the checksum file {}: {e}", file.checksum),
    };
    let text = String::from_utf8_lossy(&bytes);
    let Some(expected) = parse_checksum_file(&text) else {
        bail!(
            "{url} does not hold a SHA-512 hex digest: check --release-base-url (it must serve the KubeEdge release files)"
        );
    };
    Ok(Some((bytes, expected)))
}

/// Runs every [`Step::FetchFile`] of the plan: downloads each release
/// asset (or takes it from the cache).
pub fn fetch(http: &Http, cache: &Cache, plan: &Plan) -> Result<BTreeMap<String, FetchedFile>> {
    let mut out = BTreeMap::new();
    for file in file_steps(plan) {
        let url = file.url;
        let Some((checksum_bytes, expected)) = checksum(http, plan, &file, file.checksum_url)?
        else {
            continue;
        };
        let checksum_digest = format!("sha256:{}", sha256_hex(&checksum_bytes));
        let checksum_path = cache.put_sha256(&checksum_digest, &checksum_bytes)?;
        let dest = cache
            .sha512_path(&expected)
            .expect("checked to be 128 hex digits");
        let download = Download {
            url,
            headers: &[],
            label: file.name,
            expected: Expected::Sha512(expected.clone()),
            size: None,
            dest: &dest,
        };
        match http.download(&download) {
            Ok(_) => {}
            Err(HttpError::Mismatch { actual, .. }) => bail!(
                "release asset {} from {url} has sha512 {actual} but {} says {expected}: the download is corrupt or the checksum file is not from this release; nothing was kept, run again",
                file.name,
                file.checksum
            ),
            Err(HttpError::Status { status: 404, .. }) => bail!(
                "release asset {} of KubeEdge {}: {url} is not there (HTTP 404) though {} is: check --release-base-url",
                file.name,
                plan.kubeedge_version,
                file.checksum
            ),
            Err(e) => bail!("downloading release asset {}: {e}", file.name),
        }
        out.insert(
            file.name.to_string(),
            FetchedFile {
                path: dest,
                checksum_path,
            },
        );
    }
    Ok(out)
}

/// What `fetch` would do, with sizes from HEAD requests; nothing is written.
pub fn survey(http: &Http, cache: &Cache, plan: &Plan) -> Result<Vec<SurveyFile>> {
    let mut out = Vec::new();
    for file in file_steps(plan) {
        let url = file.url.to_string();
        let Some((_, expected)) = checksum(http, plan, &file, file.checksum_url)? else {
            out.push(SurveyFile {
                name: file.name.to_string(),
                url,
                found: false,
                size: None,
                cached: false,
            });
            continue;
        };
        let cached_path = cache.sha512_path(&expected).filter(|p| p.is_file());
        let size = match &cached_path {
            Some(path) => std::fs::metadata(path).ok().map(|m| m.len()),
            None => {
                let response = http
                    .send(Method::Head, &url, &[])
                    .map_err(|e| anyhow::anyhow!("asking for the size of {}: {e}", file.name))?;
                if response.status() == 404 {
                    bail!(
                        "release asset {} of KubeEdge {}: {url} is not there (HTTP 404) though {} is: check --release-base-url",
                        file.name,
                        plan.kubeedge_version,
                        file.checksum
                    );
                }
                http::content_length(&response).filter(|_| response.status().is_success())
            }
        };
        out.push(SurveyFile {
            name: file.name.to_string(),
            url,
            found: true,
            size,
            cached: cached_path.is_some(),
        });
    }
    Ok(out)
}
