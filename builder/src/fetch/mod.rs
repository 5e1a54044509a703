//! The online origin: fetch what `manifests/` lists for one version and
//! arch (release assets over HTTPS, images over the OCI distribution
//! protocol) into a content-addressed cache, and hand `build` the same
//! types the local sources give: asset paths for
//! [`crate::build::check_release_asset`] and [`crate::oci::ResolvedImage`]s
//! whose blobs are files in the cache. A bundle built online is therefore
//! byte-identical to one built `--from` a directory with the same content.
//!
//! Release assets are fetched first (they are small and fail fast), then
//! images in plan order; downloads run one at a time.

pub mod cache;
#[cfg(test)]
mod fake;
pub mod http;
pub mod registry;
pub mod release;

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::Result;
use serde::Serialize;

use crate::oci::ResolvedImage;
use crate::plan::Plan;

pub use registry::parse_mirror;
pub use release::FetchedFile;

/// Upstream KubeEdge release assets.
pub const DEFAULT_RELEASE_BASE_URL: &str = "https://github.com/kubeedge/kubeedge/releases/download";

/// `--registry-mirror REGISTRY=URL`: fetch images of REGISTRY from URL.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Mirror {
    /// As it appears in normalized references: `docker.io`, `registry.k8s.io`.
    pub registry: String,
    /// `http(s)://host[:port][/prefix]`, without a trailing slash.
    pub url: String,
}

/// Where and how the online origin fetches. Plain data: `--dry-run --json`
/// prints it. Credentials are read from `docker_config` only when needed
/// and are never part of this.
#[derive(Clone, Debug, Serialize)]
pub struct Online {
    pub release_base_url: String,
    pub registry_mirrors: Vec<Mirror>,
    pub cache: PathBuf,
    /// The docker `config.json` whose `auths` are used, if there is one.
    pub docker_config: Option<PathBuf>,
}

/// Everything the plan needs, in the cache.
pub struct Fetched {
    /// By planned file name; an optional asset the release lacks is absent.
    pub files: BTreeMap<String, FetchedFile>,
    /// In plan order.
    pub images: Vec<ResolvedImage>,
}

/// What `--dry-run` prints for the online origin.
#[derive(Clone, Debug, Serialize)]
pub struct Survey {
    pub files: Vec<release::SurveyFile>,
    pub images: Vec<registry::SurveyImage>,
    /// Bytes not in the cache yet, as far as the servers said.
    pub download_bytes: u64,
    /// Release assets whose size the server did not say.
    pub unknown_sizes: usize,
}

fn client(bars: bool) -> http::Http {
    http::Http::new(http::Timeouts::default(), http::Retry::default(), bars)
}

/// Fetches (or takes from the cache) everything `plan` lists. `bars`: one
/// progress bar per download on stderr.
pub fn fetch(plan: &Plan, online: &Online, bars: bool) -> Result<Fetched> {
    let http = client(bars);
    let cache = cache::Cache::at(&online.cache);
    let files = release::fetch(&http, &cache, &online.release_base_url, plan)?;
    let config = registry::DockerConfig::load(online.docker_config.as_deref())?;
    let registry = registry::Registry::new(&http, &cache, &online.registry_mirrors, config);
    let images = plan
        .images
        .iter()
        .map(|image| registry.fetch(&image.reference, plan.arch))
        .collect::<Result<Vec<_>>>()?;
    Ok(Fetched { files, images })
}

/// What [`fetch`] would download, with sizes: HEAD for release assets, the
/// manifests for images. Nothing is written.
pub fn survey(plan: &Plan, online: &Online) -> Result<Survey> {
    let http = client(false);
    let cache = cache::Cache::at(&online.cache);
    let files = release::survey(&http, &cache, &online.release_base_url, plan)?;
    let config = registry::DockerConfig::load(online.docker_config.as_deref())?;
    let registry = registry::Registry::new(&http, &cache, &online.registry_mirrors, config);
    let images = plan
        .images
        .iter()
        .map(|image| registry.survey(&image.reference, plan.arch))
        .collect::<Result<Vec<_>>>()?;
    let mut seen = std::collections::BTreeSet::new();
    let blob_bytes: u64 = images
        .iter()
        .flat_map(|i| &i.blobs)
        .filter(|b| !b.cached && seen.insert(b.digest.clone()))
        .map(|b| b.size)
        .sum();
    let file_bytes: u64 = files
        .iter()
        .filter(|f| !f.cached)
        .filter_map(|f| f.size)
        .sum();
    let unknown_sizes = files
        .iter()
        .filter(|f| f.found && !f.cached && f.size.is_none())
        .count();
    Ok(Survey {
        files,
        images,
        download_bytes: blob_bytes + file_bytes,
        unknown_sizes,
    })
}
