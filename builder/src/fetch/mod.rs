//! The online origin: carry out the plan's fetch steps
//! ([`Step::FetchFile`], [`Step::FetchImage`]: release assets over HTTPS,
//! images over the OCI distribution protocol) into a content-addressed
//! cache, and hand `build` the same types the local sources give: asset
//! paths for [`crate::release::check_release_asset`] and
//! [`crate::oci::ResolvedImage`]s whose blobs are files in the cache. A
//! bundle built online is therefore byte-identical to one built `--from` a
//! directory with the same content.
//!
//! The plan lists release assets first (they are small and fail fast), then
//! images; downloads run one at a time, in that order, sharing one HTTP
//! client and one set of registry tokens.

pub mod cache;
#[cfg(test)]
mod fake;
pub mod http;
pub mod registry;
pub mod release;

use std::collections::BTreeMap;

use anyhow::Result;
use serde::Serialize;

use crate::oci::ResolvedImage;
use crate::plan::{Online, Plan, Step};

pub use registry::parse_mirror;
pub use release::FetchedFile;

/// Upstream KubeEdge release assets.
pub const DEFAULT_RELEASE_BASE_URL: &str = "https://github.com/kubeedge/kubeedge/releases/download";

/// Everything the plan needs, in the cache.
pub struct Fetched {
    /// By planned file name; an optional asset the release lacks is absent.
    pub files: BTreeMap<String, FetchedFile>,
    /// In plan order.
    pub images: Vec<ResolvedImage>,
}

/// The references of the plan's [`Step::FetchImage`]s, in plan order.
fn image_steps(plan: &Plan) -> impl Iterator<Item = &str> {
    plan.steps.iter().filter_map(|step| match step {
        Step::FetchImage { reference } => Some(reference.as_str()),
        _ => None,
    })
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

/// Runs every fetch step of `plan`, each fetching into (or taking from)
/// the cache. `bars`: one progress bar per download on stderr.
pub fn fetch(plan: &Plan, online: &Online, bars: bool) -> Result<Fetched> {
    let http = client(bars);
    let cache = cache::Cache::at(&online.cache);
    let files = release::fetch(&http, &cache, plan)?;
    let config = registry::DockerConfig::load(online.docker_config.as_deref())?;
    let registry = registry::Registry::new(&http, &cache, &online.registry_mirrors, config);
    let images = image_steps(plan)
        .map(|reference| registry.fetch(reference, plan.arch))
        .collect::<Result<Vec<_>>>()?;
    Ok(Fetched { files, images })
}

/// What [`fetch`] would download, with sizes: HEAD for release assets, the
/// manifests for images. Nothing is written.
pub fn survey(plan: &Plan, online: &Online) -> Result<Survey> {
    let http = client(false);
    let cache = cache::Cache::at(&online.cache);
    let files = release::survey(&http, &cache, plan)?;
    let config = registry::DockerConfig::load(online.docker_config.as_deref())?;
    let registry = registry::Registry::new(&http, &cache, &online.registry_mirrors, config);
    let images = image_steps(plan)
        .map(|reference| registry.survey(reference, plan.arch))
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
