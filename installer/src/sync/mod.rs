//! `edgeferry sync`: make a store (a site) hold what an upstream mirror's
//! store (a regional hub) holds, trusting only the site's own keys.
//!
//! 1. Read the mirror's `/v1/bundles/` index and, for each bundle in
//!    `--only`/`--arch`, its kept manifest and signature, capped at the
//!    bundle format's limits. Each is checked as a bundle reader checks
//!    its first two entries (`verify::verify_manifest`); the index itself
//!    is only a list of ids to ask for.
//! 2. Plan (plain data, `--dry-run` prints it): the bundles the store
//!    lacks, in creation order, each held to the store's rollback rules
//!    as if the ones before it were loaded; the blobs and release files
//!    they name that the store lacks, once per digest.
//! 3. Fetch each into `.<store>.sync/` beside the store by digest, over
//!    the mirror's own blob and file routes, with Range resume, hashed as
//!    it streams and capped at its signed size (`fetch`).
//! 4. Commit each bundle with `load`'s own [`store::Loader`]: the same
//!    rollback, delta-base and space checks, the same atomic swap; the
//!    staged blobs are linked into the next store, not copied.
//!
//! Killed before a commit, the store is as it was; a rerun re-hashes what
//! was staged and resumes.

mod fetch;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use edgeferry_bundle::format::{self, Entry, Manifest};
use edgeferry_bundle::sign::{TrustedKeys, Verified};
use edgeferry_bundle::verify::{self, Sink, VerifyError};
use serde::Deserialize;

use crate::cli::SyncArgs;
use crate::config::Config;
use crate::output::{SyncBundle, SyncPlan, Synced};
use crate::printer::Printer;
use crate::{store, sys};

/// What the index says; only the ids are used, to ask for manifests.
#[derive(Deserialize)]
struct Index {
    bundles: Vec<Listed>,
}

#[derive(Deserialize)]
struct Listed {
    id: String,
    #[serde(default)]
    kubeedge_version: String,
    #[serde(default)]
    arch: String,
}

/// A bundle the mirror offers, its manifest verified with a site key.
struct Offered {
    bytes: Vec<u8>,
    signature: Vec<u8>,
    manifest: Manifest,
    signer: Verified,
}

/// One blob to fetch and the mirror path it is served at.
struct Wanted {
    entry: Entry,
    path: String,
}

/// The plan and what it needs to run.
struct Plan {
    shown: SyncPlan,
    /// Bundles to commit, in order.
    load: Vec<Offered>,
    fetch: BTreeMap<String, Wanted>,
}

pub fn sync_cmd(args: &SyncArgs, config: &Config, out: &Printer) -> Result<()> {
    let mut files = args.keys.clone();
    files.extend(args.trust_file.clone());
    if files.is_empty() {
        bail!("no trusted key: pass --key <edgeferry.pub> or --trust-file <file>: the site's own keys decide what it takes, never the mirror");
    }
    let keys = TrustedKeys::from_files(&files)?;
    let client = fetch::Client::new(&args.from, args.mirror_ca.as_deref(), &config.sync)?;
    let offered = read_offers(args, &client, &keys, config)?;
    let plan = plan(args, offered)?;
    if args.dry_run {
        if out.json() {
            return out.data(&plan.shown);
        }
        out.text(&plan_text(&plan.shown));
        return Ok(());
    }
    run(args, config, &client, plan, out)
}

fn matches_only(version: &str, only: Option<&str>) -> bool {
    only.is_none_or(|only| {
        let only = only.trim_end_matches('.');
        version == only || version.starts_with(&format!("{only}."))
    })
}

fn read_offers(
    args: &SyncArgs,
    client: &fetch::Client,
    keys: &TrustedKeys,
    config: &Config,
) -> Result<(Vec<Offered>, usize)> {
    let bytes = client.get_small("/v1/bundles/", config.sync.max_index_bytes)?;
    let index: Index = serde_json::from_slice(&bytes).with_context(|| {
        format!(
            "{} is not a bundle index: is {} an `edgeferry serve` of this version?",
            client.url("/v1/bundles/"),
            args.from
        )
    })?;
    if index.bundles.len() > config.sync.max_bundles {
        bail!(
            "{} lists {} bundles, more than the {} a sync takes",
            client.url("/v1/bundles/"),
            index.bundles.len(),
            config.sync.max_bundles
        );
    }
    let arch = args.arch.map(|a| a.to_string());
    let mut offered = Vec::new();
    let mut skipped = 0;
    for listed in index.bundles {
        // The id goes into a URL path: only the format's own id shape.
        if !format::valid_hex(&listed.id, 32) {
            bail!(
                "{} lists a bundle id that is not 32 lowercase hex digits: {:?}",
                client.url("/v1/bundles/"),
                listed.id.chars().take(40).collect::<String>()
            );
        }
        // The index's word only saves fetches; the signed manifest decides.
        let listed_in = matches_only(&listed.kubeedge_version, args.only.as_deref())
            && arch.as_ref().is_none_or(|a| *a == listed.arch);
        if !listed_in {
            skipped += 1;
            continue;
        }
        let base = format!("/v1/bundles/{}/", listed.id);
        let bytes = client.get_small(
            &format!("{base}{}", format::MANIFEST_PATH),
            format::MAX_MANIFEST_BYTES,
        )?;
        let signature = client.get_small(
            &format!("{base}{}", format::SIGNATURE_PATH),
            format::MAX_SIGNATURE_BYTES,
        )?;
        let (manifest, signer) = verify::verify_manifest(&bytes, &signature, keys)
            .map_err(anyhow::Error::from)
            .with_context(|| {
                format!(
                    "the manifest of bundle {} from {} refused",
                    listed.id, args.from
                )
            })?;
        if manifest.bundle_id != listed.id {
            bail!(
                "{} serves the manifest of bundle {} under id {}: the mirror is mislabelled or lying",
                args.from,
                manifest.bundle_id,
                listed.id
            );
        }
        let wanted = matches_only(&manifest.kubeedge_version, args.only.as_deref())
            && args.arch.is_none_or(|a| a == manifest.arch);
        if !wanted {
            skipped += 1;
            continue;
        }
        offered.push(Offered {
            bytes,
            signature,
            manifest,
            signer,
        });
    }
    Ok((offered, skipped))
}

fn plan(args: &SyncArgs, (mut offered, skipped): (Vec<Offered>, usize)) -> Result<Plan> {
    let site = store::State::read(&args.store)?;
    // Loads must go in creation order (the rollback rule); a delta comes
    // after the bundle it was built against.
    offered.sort_by(|a, b| {
        (
            &a.manifest.created,
            a.manifest.sequence,
            &a.manifest.bundle_id,
        )
            .cmp(&(
                &b.manifest.created,
                b.manifest.sequence,
                &b.manifest.bundle_id,
            ))
    });
    let mut after = site.clone();
    let mut bundles = Vec::new();
    let mut load = Vec::new();
    let mut fetch = BTreeMap::new();
    for offer in offered {
        let m = &offer.manifest;
        let present = site.bundles.contains_key(&m.bundle_id);
        bundles.push(SyncBundle {
            bundle_id: m.bundle_id.clone(),
            kubeedge_version: m.kubeedge_version.clone(),
            arch: m.arch,
            sequence: m.sequence,
            created: m.created.clone(),
            signer: offer.signer.key_id.clone(),
            delta: m.delta.is_some(),
            action: if present { "present" } else { "load" },
        });
        if present {
            continue;
        }
        // The load will check this again; refusing here fetches nothing.
        after
            .refuse_downgrade(m, Some(&offer.signer.key_id))
            .map_err(VerifyError::Refused)
            .with_context(|| {
                format!(
                    "{} offers a bundle older than {} holds",
                    args.from,
                    args.store.display()
                )
            })?;
        after.record_bundle(m, Some(&offer.signer.key_id));
        let repo = m
            .images
            .first()
            .map(|i| repository_of(&i.reference).to_string());
        for entry in m.all_entries().filter(|e| store::is_stored(&e.path)) {
            if fetch.contains_key(&entry.sha256)
                || store::blob_path(&args.store, &entry.sha256).exists()
            {
                continue;
            }
            let path = match (entry.path.strip_prefix("files/"), &repo) {
                (Some(name), _) => format!("/files/{name}"),
                (None, Some(repo)) => format!("/v2/{repo}/blobs/sha256:{}", entry.sha256),
                (None, None) => bail!(
                    "bundle {} lists blob {} but no image to fetch it under",
                    m.bundle_id,
                    entry.path
                ),
            };
            fetch.insert(
                entry.sha256.clone(),
                Wanted {
                    entry: entry.clone(),
                    path,
                },
            );
        }
        load.push(offer);
    }
    let staging = staging_dir(&args.store)?;
    let staged_bytes = fetch
        .values()
        .map(|w| {
            let done = fetch::staged_blob(&staging, &w.entry.sha256);
            let partial = done.with_extension("partial");
            fs::metadata(&done)
                .or_else(|_| fs::metadata(&partial))
                .map_or(0, |m| m.len().min(w.entry.size))
        })
        .sum();
    Ok(Plan {
        shown: SyncPlan {
            from: args.from.clone(),
            store: args.store.clone(),
            bundles,
            skipped,
            fetch_blobs: fetch.len(),
            fetch_bytes: fetch.values().map(|w| w.entry.size).sum(),
            staged_bytes,
        },
        load,
        fetch,
    })
}

/// `docker.io/kubeedge/x:v1` or `...@sha256:...` -> `docker.io/kubeedge/x`:
/// the mirror serves any of its blobs under any repository it has.
fn repository_of(reference: &str) -> &str {
    let name = reference.split('@').next().unwrap_or(reference);
    match name.rsplit_once(':') {
        Some((repo, tag)) if !tag.contains('/') => repo,
        _ => name,
    }
}

/// `.<store name>.sync/` beside the store: what a killed sync fetched.
fn staging_dir(store: &Path) -> Result<PathBuf> {
    let name = store
        .file_name()
        .context("the store cannot be the root directory")?
        .to_string_lossy();
    let parent = store.parent().unwrap_or(Path::new("."));
    Ok(parent.join(format!(".{name}.sync")))
}

fn run(
    args: &SyncArgs,
    config: &Config,
    client: &fetch::Client,
    plan: Plan,
    out: &Printer,
) -> Result<()> {
    let staging = staging_dir(&args.store)?;
    let mut result = Synced {
        ok: true,
        plan: plan.shown,
        loaded: Vec::new(),
        fetched_bytes: 0,
        resumed_bytes: 0,
        staged_blobs: 0,
    };
    if !plan.load.is_empty() {
        fs::create_dir_all(staging.join("blobs/sha256"))
            .with_context(|| format!("creating {}", staging.display()))?;
        // One sync per store at a time; loads take the store's own lock.
        let _lock = sys::lock_file(&staging.join("lock")).map_err(|e| {
            anyhow::anyhow!(
                "another sync into {} holds {}: wait for it to finish ({e})",
                args.store.display(),
                staging.join("lock").display()
            )
        })?;
        let needed =
            result.plan.fetch_bytes - result.plan.staged_bytes + config.load_space_margin_bytes;
        let parent = staging.parent().unwrap_or(Path::new("."));
        let available = sys::available_bytes(parent)
            .with_context(|| format!("checking free space in {}", parent.display()))?;
        if available < needed {
            return Err(VerifyError::Refused(format!(
                "not enough space in {}: the sync needs {} MiB, {} MiB are free: free some space or pick another --store",
                parent.display(),
                needed.div_ceil(1 << 20),
                available >> 20
            ))
            .into());
        }
        let mut provided = BTreeMap::new();
        for (sha256, wanted) in &plan.fetch {
            let got = client.download(&wanted.path, &wanted.entry, &staging)?;
            result.fetched_bytes += got.fetched;
            result.resumed_bytes += got.resumed;
            result.staged_blobs += usize::from(got.staged);
            provided.insert(sha256.clone(), fetch::staged_blob(&staging, sha256));
        }
        for offer in &plan.load {
            commit(args, config, offer, &provided)?;
            out.note(&format!(
                "loaded bundle {} (KubeEdge {} linux/{}) into {}",
                offer.manifest.bundle_id,
                offer.manifest.kubeedge_version,
                offer.manifest.arch,
                args.store.display()
            ));
            result.loaded.push(offer.manifest.bundle_id.clone());
        }
        fs::remove_dir_all(&staging).with_context(|| format!("removing {}", staging.display()))?;
    }
    if out.json() {
        return out.data(&result);
    }
    out.line(&format!(
        "synced {} from {}: {} bundles loaded, {} already present; {} bytes fetched ({} resumed, {} blobs staged earlier)",
        args.store.display(),
        args.from,
        result.loaded.len(),
        result.plan.bundles.len() - result.loaded.len(),
        result.fetched_bytes,
        result.resumed_bytes,
        result.staged_blobs
    ));
    Ok(())
}

/// One bundle through `load`'s own checks and swap, its entries taken
/// from the staged blobs instead of a bundle stream.
fn commit(
    args: &SyncArgs,
    config: &Config,
    offer: &Offered,
    provided: &BTreeMap<String, PathBuf>,
) -> Result<()> {
    let mut loader = store::Loader::new(
        &args.store,
        config,
        store::LoadOptions {
            allow_downgrade: false,
            no_sync: false,
            repair_only: false,
        },
    )?;
    loader.provide(provided.clone());
    loader.signed(&offer.bytes, &offer.signature);
    loader
        .manifest(&offer.manifest, Some(&offer.signer))
        .map_err(VerifyError::Refused)
        .with_context(|| format!("bundle {} refused", offer.manifest.bundle_id))?;
    for entry in offer.manifest.all_entries() {
        loader.adopt(entry)?;
    }
    loader.commit(&offer.manifest, Some(&offer.signer))?;
    Ok(())
}

fn plan_text(plan: &SyncPlan) -> String {
    let mut s = format!("sync {} from {}:\n", plan.store.display(), plan.from);
    for b in &plan.bundles {
        s.push_str(&format!(
            "  {:<8} {}  KubeEdge {} linux/{}  sequence {}  created {}  key {}{}\n",
            b.action,
            b.bundle_id,
            b.kubeedge_version,
            b.arch,
            b.sequence,
            b.created,
            b.signer,
            if b.delta { "  delta" } else { "" }
        ));
    }
    if plan.bundles.is_empty() {
        s.push_str("  (the mirror offers no bundle that matches)\n");
    }
    s.push_str(&format!(
        "fetch: {} blobs and files, {} bytes ({} bytes staged by an earlier run)\n",
        plan.fetch_blobs, plan.fetch_bytes, plan.staged_bytes
    ));
    if plan.skipped > 0 {
        s.push_str(&format!(
            "skipped: {} bundles outside --only/--arch\n",
            plan.skipped
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_matches_a_line_or_a_version() {
        assert!(matches_only("v1.23.1", Some("v1.23")));
        assert!(matches_only("v1.23.1", Some("v1.23.1")));
        assert!(!matches_only("v1.23.10", Some("v1.23.1")));
        assert!(!matches_only("v1.230.0", Some("v1.23")));
        assert!(matches_only("v1.22.0", None));
    }

    #[test]
    fn repositories_without_tag_or_digest() {
        assert_eq!(
            repository_of("docker.io/kubeedge/installation-package:v1.23.1"),
            "docker.io/kubeedge/installation-package"
        );
        assert_eq!(
            repository_of("localhost:5000/pause@sha256:ab"),
            "localhost:5000/pause"
        );
        assert_eq!(
            repository_of("localhost:5000/pause"),
            "localhost:5000/pause"
        );
    }
}
