//! The content-addressed store the mirror serves from.
//!
//! ```text
//! <store>/
//!   oci-layout, index.json   an OCI layout: one entry per image reference
//!   blobs/sha256/<hex>       every blob and every release file, once
//!   files/<asset>            hard links to the blobs of the release files
//!   SHA256SUMS               for files/
//!   bundles/<id>/manifest.json(.minisig)
//!                            each signed bundle's manifest and signature,
//!                            byte-exact, for `serve` to publish and
//!                            `sync` to check with its own keys
//!   state.json               what the store holds and what it has seen
//! ```
//!
//! A load never changes the store in place. It builds the next store in a
//! sibling work directory (new blobs streamed in as they are verified,
//! existing ones hard-linked), then swaps the two directories with one
//! `renameat2(RENAME_EXCHANGE)`. Killed before the swap, the store is
//! byte-identical to before; after it, it is complete. Loads lock
//! `.<store name>.lock` beside the store, so loads into other stores in the
//! same directory run alongside.
//!
//! Blobs rot on disk. A load re-hashes every blob it would reuse from the
//! store and stages the bundle's copy of any that no longer match (a first
//! load into an empty store reuses nothing and pays nothing); [`check`]
//! hashes the whole store.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use edgeferry_bundle::format::{self, Entry, Manifest};
use edgeferry_bundle::sign::Verified;
use edgeferry_bundle::verify::Sink;
use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::sys;

pub const STATE_FILE: &str = "state.json";
/// Where a store keeps each signed bundle's manifest and signature.
pub const BUNDLES_DIR: &str = "bundles";

/// Whether a bundle entry's bytes go into the store: not the SBOM (it
/// sits beside the bundle) nor the bundle's own `images/index.json` and
/// `oci-layout` (the store writes its own).
pub fn is_stored(path: &str) -> bool {
    path != format::SBOM_PATH && path != "images/index.json" && path != "images/oci-layout"
}

/// `bundles/<id>/manifest.json` and its `.minisig` in `store`.
pub fn kept_manifest_paths(store: &Path, bundle_id: &str) -> (PathBuf, PathBuf) {
    let dir = store.join(BUNDLES_DIR).join(bundle_id);
    (
        dir.join(format::MANIFEST_PATH),
        dir.join(format::SIGNATURE_PATH),
    )
}
pub use edgeferry_bundle::oci::MEDIA_OCI_INDEX;
use edgeferry_bundle::oci::{Descriptor, Index, Platform, ANNOTATION_REF_NAME as REF_ANNOTATION};

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct State {
    pub format_version: u32,
    /// Every bundle loaded, by id.
    pub bundles: BTreeMap<String, BundleRecord>,
    /// Highest sequence loaded, keyed `<signer key id>/<arch>`.
    pub sequences: BTreeMap<String, u64>,
    /// Release assets by file name.
    pub files: BTreeMap<String, FileRecord>,
    /// Images by full upstream reference.
    pub images: BTreeMap<String, ImageRecord>,
    /// Every manifest and index the registry may serve, by digest.
    pub manifests: BTreeMap<String, ManifestRecord>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BundleRecord {
    pub kubeedge_version: String,
    pub arch: format::Arch,
    pub sequence: u64,
    pub created: String,
    pub builder: String,
    pub sample: bool,
    /// minisign key id; `None` if loaded with --insecure-skip-signature.
    pub signer: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileRecord {
    pub sha256: String,
    pub size: u64,
    pub bundle_id: String,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageRecord {
    /// What the tag resolves to: the upstream index when the store has
    /// every platform it lists, else an index of the platforms present.
    pub digest: String,
    pub media_type: String,
    /// Platform (`linux/arm64`) to its manifest digest.
    pub platforms: BTreeMap<String, String>,
    /// Upstream multi-arch indexes seen for this reference, kept byte-exact
    /// so pulls by those digests keep working.
    pub upstream_indexes: BTreeSet<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManifestRecord {
    pub media_type: String,
    pub size: u64,
}

impl State {
    pub fn read(store: &Path) -> Result<State> {
        let path = store.join(STATE_FILE);
        match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).with_context(|| {
                format!(
                    "{} is damaged: restore the store from a backup or load it anew",
                    path.display()
                )
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                if store.exists() && fs::read_dir(store)?.next().is_some() {
                    bail!(
                        "{} is not an edgeferry store (no {STATE_FILE}) and not empty: pick another --store",
                        store.display()
                    );
                }
                Ok(State {
                    format_version: 1,
                    ..State::default()
                })
            }
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    fn to_bytes(&self) -> Vec<u8> {
        let mut bytes = serde_json::to_vec_pretty(self).expect("state serialises");
        bytes.push(b'\n');
        bytes
    }
}

/// Whether `err` comes from a full filesystem (no bytes or no inodes left).
pub fn is_no_space(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        cause.downcast_ref::<io::Error>().is_some_and(|e| {
            matches!(
                e.kind(),
                io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded
            )
        })
    })
}

pub fn blob_path(store: &Path, digest_or_hex: &str) -> PathBuf {
    let hex = digest_or_hex
        .strip_prefix("sha256:")
        .unwrap_or(digest_or_hex);
    store.join("blobs/sha256").join(hex)
}

/// Options for one load.
pub struct LoadOptions {
    pub allow_downgrade: bool,
    /// Skip the flush to disk before the swap. A power cut soon after can
    /// then leave a store whose files are not what its state says.
    pub no_sync: bool,
    /// `store check --repair`: take only good copies of damaged or missing
    /// blobs from a bundle already loaded; what the store holds stays as
    /// it is.
    pub repair_only: bool,
}

/// A load in progress: the [`Sink`] that stages verified entries, then
/// [`Loader::commit`] to publish them.
pub struct Loader<'a> {
    store: PathBuf,
    parent: PathBuf,
    config: &'a Config,
    options: LoadOptions,
    state: State,
    /// Declared before `_lock`: it removes a lock file this load created
    /// while the lock is still held.
    _lock_file: LockFile,
    _lock: sys::Lock,
    work: Option<WorkDir>,
    /// Small entries needed after verification (the bundle's index.json).
    captured: BTreeMap<String, Vec<u8>>,
    open: Option<(PathBuf, PathBuf)>,
    /// Store blobs this bundle also carries, found damaged on disk: staged
    /// again from the bundle.
    repaired: BTreeSet<String>,
    /// The manifest's exact bytes and signature, when a trusted key signed it.
    signed: Option<(Vec<u8>, Vec<u8>)>,
    /// `sync`: blobs fetched and verified beside the store (sha256 -> path),
    /// which count as present for a delta's base and the space check.
    provided: BTreeMap<String, PathBuf>,
}

/// What a load does with one entry: the one rule for a bundle stream and
/// for `sync`.
enum Take {
    /// Verified and dropped: the SBOM, or a blob the next store has intact.
    Skip,
    /// Buffered, not stored (the bundle's own index.json and oci-layout).
    Capture,
    /// Written into the next store.
    Stage,
}

/// The lock file beside a store. A first load that fails (the store was
/// never created) removes the lock file it made, so a refused load leaves
/// nothing behind; once the store exists its lock file stays.
struct LockFile {
    path: PathBuf,
    store: PathBuf,
    created: bool,
}

impl Drop for LockFile {
    fn drop(&mut self) {
        if self.created && !self.store.exists() {
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// The sibling directory a load builds in; removed unless committed.
struct WorkDir {
    path: PathBuf,
    committed: bool,
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        if !self.committed {
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}

/// What a commit did.
#[derive(Debug, Serialize)]
pub struct LoadReport {
    pub bundle_id: String,
    pub changed: bool,
    pub new_blobs: usize,
    pub new_bytes: u64,
    /// Store blobs found damaged and replaced by the bundle's copies (sha256).
    pub repaired: Vec<String>,
}

impl<'a> Loader<'a> {
    pub fn new(store: &Path, config: &'a Config, options: LoadOptions) -> Result<Loader<'a>> {
        let store = absolute(store)?;
        let parent = store
            .parent()
            .context("the store cannot be the root directory")?
            .to_path_buf();
        fs::create_dir_all(&parent).with_context(|| format!("creating {}", parent.display()))?;
        // One lock per store, beside it (the store itself is swapped out).
        let lock_path = parent.join(format!(
            ".{}.lock",
            store.file_name().unwrap_or_default().to_string_lossy()
        ));
        let lock_existed = lock_path.exists();
        let lock = sys::lock_file(&lock_path).map_err(|e| {
            if e.kind() == io::ErrorKind::WouldBlock {
                anyhow::anyhow!(
                    "another load holds the lock on {} ({}): wait for it to finish",
                    store.display(),
                    lock_path.display()
                )
            } else {
                anyhow::Error::new(e).context(format!("locking {}", lock_path.display()))
            }
        })?;
        let lock_file = LockFile {
            path: lock_path,
            store: store.clone(),
            created: !lock_existed,
        };
        let state = State::read(&store)?;
        let loader = Loader {
            store,
            parent,
            config,
            options,
            state,
            _lock_file: lock_file,
            _lock: lock,
            work: None,
            captured: BTreeMap::new(),
            open: None,
            repaired: BTreeSet::new(),
            signed: None,
            provided: BTreeMap::new(),
        };
        loader.remove_stale_work_dirs();
        Ok(loader)
    }

    fn work_prefix(&self) -> String {
        let name = self
            .store
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        format!(".{name}.load-")
    }

    /// Work directories of loads that were killed; safe to remove under the lock.
    fn remove_stale_work_dirs(&self) {
        let prefix = self.work_prefix();
        if let Ok(read) = fs::read_dir(&self.parent) {
            for entry in read.flatten() {
                if entry.file_name().to_string_lossy().starts_with(&prefix) {
                    let _ = fs::remove_dir_all(entry.path());
                }
            }
        }
    }

    fn work_path(&self) -> &Path {
        &self
            .work
            .as_ref()
            .expect("work dir exists after the manifest")
            .path
    }

    fn have_blob(&self, hex: &str) -> bool {
        blob_path(&self.store, hex).exists()
            || self
                .work
                .as_ref()
                .is_some_and(|w| blob_path(&w.path, hex).exists())
    }

    /// Publishes what was staged. Returns without touching the store when the
    /// bundle adds nothing (loading the same bundle twice).
    pub fn commit(self, manifest: &Manifest, signer: Option<&Verified>) -> Result<LoadReport> {
        if self.options.repair_only {
            if !self.state.bundles.contains_key(&manifest.bundle_id) {
                bail!(
                    "bundle {} was never loaded into {}: repair from a bundle the store holds (store list names them), or load this one",
                    manifest.bundle_id,
                    self.store.display()
                );
            }
            let next = self.state.clone();
            return self.publish(manifest, next, Vec::new());
        }
        let mut next = self.state.clone();
        next.record_bundle(manifest, signer.map(|s| s.key_id.as_str()));
        // A delta's omitted entries are in the store (checked before the
        // first byte was staged): they count as the bundle's own.
        let sizes: BTreeMap<&str, u64> = manifest
            .all_entries()
            .map(|e| (e.sha256.as_str(), e.size))
            .collect();
        let by_path: BTreeMap<&str, &Entry> = manifest
            .all_entries()
            .map(|e| (e.path.as_str(), e))
            .collect();
        for file in &manifest.files {
            let names = std::iter::once(file.path.as_str()).chain(file.checksum_path.as_deref());
            for path in names {
                let entry = by_path
                    .get(path)
                    .with_context(|| format!("manifest lists {path} but has no entry for it"))?;
                let name = path.strip_prefix("files/").unwrap_or(path).to_string();
                // The mirror serves files/ flat, as KubeEdge publishes them.
                if name.contains('/') {
                    bail!("bundle lists release file {path} in a subdirectory of files/: rebuild it with a current edgeferry-builder");
                }
                if let Some(existing) = next.files.get(&name) {
                    if existing.sha256 != entry.sha256 {
                        bail!(
                            "files/{name} in this bundle (sha256 {}) differs from the one in the store from bundle {} (sha256 {}): refusing to replace a release asset",
                            entry.sha256,
                            existing.bundle_id,
                            existing.sha256
                        );
                    }
                    continue;
                }
                next.files.insert(
                    name,
                    FileRecord {
                        sha256: entry.sha256.clone(),
                        size: entry.size,
                        bundle_id: manifest.bundle_id.clone(),
                    },
                );
            }
        }
        for image in &manifest.images {
            let size_of = |digest: &str| {
                format::sha256_hex_of_digest(digest)
                    .and_then(|hex| sizes.get(hex).copied())
                    .with_context(|| {
                        format!(
                            "image {} names {digest}, which the bundle does not carry",
                            image.reference
                        )
                    })
            };
            next.manifests.insert(
                image.manifest_digest.clone(),
                ManifestRecord {
                    media_type: image.manifest_media_type.clone(),
                    size: size_of(&image.manifest_digest)?,
                },
            );
            let record = next.images.entry(image.reference.clone()).or_default();
            record
                .platforms
                .insert(image.platform.clone(), image.manifest_digest.clone());
            if let (Some(digest), Some(media_type)) = (&image.index_digest, &image.index_media_type)
            {
                next.manifests.insert(
                    digest.clone(),
                    ManifestRecord {
                        media_type: media_type.clone(),
                        size: size_of(digest)?,
                    },
                );
                record.upstream_indexes.insert(digest.clone());
            }
        }
        // Tags: the upstream index when it is complete here, else a merged one.
        let mut synthesized = Vec::new();
        let references: Vec<String> = next.images.keys().cloned().collect();
        for reference in references {
            let record = next.images.get(&reference).cloned().expect("listed");
            let (digest, media_type, bytes) = self.tag_target(&record, &next)?;
            if let Some(bytes) = bytes {
                next.manifests.insert(
                    digest.clone(),
                    ManifestRecord {
                        media_type: media_type.clone(),
                        size: bytes.len() as u64,
                    },
                );
                synthesized.push((digest.clone(), bytes));
            }
            let record = next.images.get_mut(&reference).expect("listed");
            record.digest = digest;
            record.media_type = media_type;
        }

        self.publish(manifest, next, synthesized)
    }

    /// Builds the next store in the work directory and swaps it in; returns
    /// without touching the store when nothing changes.
    fn publish(
        mut self,
        manifest: &Manifest,
        next: State,
        synthesized: Vec<(String, Vec<u8>)>,
    ) -> Result<LoadReport> {
        let repaired: Vec<String> = self.repaired.iter().cloned().collect();
        // A store loaded before manifests were kept gains one on a reload.
        let keeps_new = self.signed.is_some()
            && !kept_manifest_paths(&self.store, &manifest.bundle_id)
                .0
                .exists();
        if next == self.state && repaired.is_empty() && !keeps_new {
            return Ok(LoadReport {
                bundle_id: manifest.bundle_id.clone(),
                changed: false,
                new_blobs: 0,
                new_bytes: 0,
                repaired,
            });
        }
        let work = self.work_path().to_path_buf();
        let (mut new_blobs, mut new_bytes) = (0, 0);
        for entry in fs::read_dir(work.join("blobs/sha256"))? {
            let entry = entry?;
            if !self
                .repaired
                .contains(entry.file_name().to_string_lossy().as_ref())
            {
                new_blobs += 1;
                new_bytes += entry.metadata()?.len();
            }
        }
        for (digest, bytes) in &synthesized {
            let path = blob_path(&work, digest);
            if !path.exists() && !blob_path(&self.store, digest).exists() {
                write_small(&path, bytes)?;
            }
        }
        // Everything the current store has, linked (not copied) into the next.
        if self.store.join("blobs/sha256").exists() {
            for entry in fs::read_dir(self.store.join("blobs/sha256"))? {
                let entry = entry?;
                let target = work.join("blobs/sha256").join(entry.file_name());
                if !target.exists() {
                    fs::hard_link(entry.path(), &target).with_context(|| {
                        format!("linking {} into the next store", entry.path().display())
                    })?;
                }
            }
        }
        self.keep_manifests(&work, manifest)?;
        fs::create_dir_all(work.join("files"))?;
        let mut sums = String::new();
        for (name, file) in &next.files {
            fs::hard_link(
                blob_path(&work, &file.sha256),
                work.join("files").join(name),
            )
            .with_context(|| format!("linking files/{name}"))?;
            sums.push_str(&format!("{}  files/{name}\n", file.sha256));
        }
        write_small(&work.join("SHA256SUMS"), sums.as_bytes())?;
        write_small(
            &work.join("oci-layout"),
            br#"{"imageLayoutVersion":"1.0.0"}"#,
        )?;
        write_small(&work.join("index.json"), &layout_index(&next))?;
        write_small(&work.join(STATE_FILE), &next.to_bytes())?;
        // Everything staged reaches the disk before the swap publishes it.
        if !self.options.no_sync {
            sys::syncfs(&work).with_context(|| format!("syncing {}", work.display()))?;
        }

        // The one step that changes the store.
        if self.store.exists() {
            sys::exchange(&work, &self.store)
                .with_context(|| format!("swapping the new store into {}", self.store.display()))?;
            // `work` now holds the previous store; the Drop guard removes it.
        } else {
            fs::rename(&work, &self.store)
                .with_context(|| format!("moving the new store to {}", self.store.display()))?;
            self.work.as_mut().expect("work dir").committed = true;
        }
        edgeferry_bundle::atomic::sync_dir(&self.parent)?;
        Ok(LoadReport {
            bundle_id: manifest.bundle_id.clone(),
            changed: true,
            new_blobs,
            new_bytes,
            repaired,
        })
    }

    /// The signed manifests the store keeps, linked into the next store,
    /// and this bundle's when a key signed it and none is kept for its id
    /// (a delta and its full bundle share the id: the first loaded stays).
    fn keep_manifests(&self, work: &Path, manifest: &Manifest) -> Result<()> {
        let kept = self.store.join(BUNDLES_DIR);
        if kept.exists() {
            for entry in fs::read_dir(&kept)? {
                let entry = entry?;
                let dir = work.join(BUNDLES_DIR).join(entry.file_name());
                fs::create_dir_all(&dir)?;
                for file in fs::read_dir(entry.path())? {
                    let file = file?;
                    fs::hard_link(file.path(), dir.join(file.file_name())).with_context(|| {
                        format!("linking {} into the next store", file.path().display())
                    })?;
                }
            }
        }
        if let Some((bytes, signature)) = &self.signed {
            let (path, sig_path) = kept_manifest_paths(work, &manifest.bundle_id);
            if !path.exists() {
                fs::create_dir_all(path.parent().expect("in a directory"))?;
                write_small(&path, bytes)?;
                write_small(&sig_path, signature)?;
            }
        }
        Ok(())
    }

    /// `sync`: verified blobs beside the store that this load may link in.
    pub fn provide(&mut self, staged: BTreeMap<String, PathBuf>) {
        self.provided = staged;
    }

    /// `sync`: an entry fetched and verified into `staged` stands in for
    /// its bytes in a bundle stream. The same rule as a stream's decides
    /// whether the next store needs it; if so it is linked, not copied.
    pub fn adopt(&mut self, entry: &Entry) -> Result<()> {
        match self.take(entry)? {
            Take::Skip | Take::Capture => Ok(()),
            Take::Stage => {
                let staged = self.provided.get(&entry.sha256).with_context(|| {
                    format!(
                        "{} (sha256 {}) is damaged in {} and was not fetched: run `edgeferry store check --store {}` and sync again",
                        entry.path,
                        entry.sha256,
                        self.store.display(),
                        self.store.display()
                    )
                })?;
                let target = blob_path(self.work_path(), &entry.sha256);
                fs::hard_link(staged, &target)
                    .with_context(|| format!("linking {} into the next store", staged.display()))?;
                Ok(())
            }
        }
    }

    /// Whether the next store needs `entry`'s bytes. A blob the store
    /// already has is reused only if it still has its hash: one read of
    /// it, paid only for blobs a reload shares; a damaged one is staged
    /// again and reported as repaired.
    fn take(&mut self, entry: &Entry) -> io::Result<Take> {
        // The SBOM is verified like every entry but not kept: the mirror
        // serves what nodes pull, and the SBOM sits beside the bundle.
        if !is_stored(&entry.path) {
            return Ok(if entry.path == format::SBOM_PATH {
                Take::Skip
            } else {
                Take::Capture
            });
        }
        let staged = self
            .work
            .as_ref()
            .is_some_and(|w| blob_path(&w.path, &entry.sha256).exists());
        if staged {
            return Ok(Take::Skip);
        }
        let kept = blob_path(&self.store, &entry.sha256);
        if kept.exists() {
            if blob_is_intact(&kept, entry.size, &entry.sha256)? {
                return Ok(Take::Skip);
            }
            self.repaired.insert(entry.sha256.clone());
        }
        Ok(Take::Stage)
    }

    /// The digest a tag resolves to, and the bytes of an index to write if
    /// it has to be made.
    fn tag_target(
        &self,
        record: &ImageRecord,
        next: &State,
    ) -> Result<(String, String, Option<Vec<u8>>)> {
        if record.upstream_indexes.len() == 1 {
            let digest = record.upstream_indexes.iter().next().expect("one");
            let listed = self.upstream_platform_manifests(digest)?;
            if listed.iter().all(|d| self.have_blob(d)) {
                let media_type = next.manifests[digest].media_type.clone();
                return Ok((digest.clone(), media_type, None));
            }
        }
        let mut manifests = Vec::new();
        for (platform, digest) in &record.platforms {
            let info = &next.manifests[digest];
            let mut descriptor = Descriptor::new(&info.media_type, digest, info.size);
            descriptor.platform = Some(Platform::parse(platform));
            manifests.push(descriptor);
        }
        let index = Index {
            schema_version: 2,
            media_type: Some(MEDIA_OCI_INDEX.to_string()),
            manifests,
            annotations: Some(BTreeMap::from([(
                "io.edgeferry.merged".to_string(),
                "platforms present in this store".to_string(),
            )])),
        };
        // Through a Value, whose keys are sorted: the bytes (and digests)
        // of indexes made by earlier releases stay the same.
        let bytes = serde_json::to_vec(&serde_json::to_value(&index)?)?;
        let digest = format!("sha256:{}", edgeferry_bundle::hashing::sha256_hex(&bytes));
        Ok((digest, MEDIA_OCI_INDEX.to_string(), Some(bytes)))
    }

    /// Digests of the platform manifests an upstream index lists (attestations
    /// aside). The index was verified against its digest when it was loaded.
    fn upstream_platform_manifests(&self, digest: &str) -> Result<Vec<String>> {
        let path = [&self.store, self.work_path()]
            .iter()
            .map(|root| blob_path(root, digest))
            .find(|p| p.exists())
            .with_context(|| format!("upstream index {digest} is missing from the store"))?;
        let index: serde_json::Value = serde_json::from_slice(&fs::read(&path)?)
            .with_context(|| format!("upstream index {digest} is not JSON"))?;
        Ok(index["manifests"]
            .as_array()
            .map(|list| {
                list.iter()
                    .filter(|m| m["platform"]["os"] != "unknown")
                    .filter_map(|m| m["digest"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default())
    }
}

impl State {
    /// The rollback rules, for a load and for each bundle a sync plans.
    /// Per signer and arch, the sequence never goes back. Across keys, per
    /// arch, the store never goes back to a bundle built before the newest
    /// one it has loaded, whoever signed either (another trusted key, or
    /// nobody with --insecure-skip-signature).
    pub fn refuse_downgrade(
        &self,
        manifest: &Manifest,
        signer: Option<&str>,
    ) -> Result<(), String> {
        if let Some(key_id) = signer {
            let key = format!("{key_id}/{}", manifest.arch);
            if let Some(&seen) = self.sequences.get(&key) {
                if manifest.sequence < seen {
                    return Err(format!(
                        "bundle {} has sequence {} but the store has loaded sequence {seen} from key {key_id} for {}: refusing a downgrade (pass --allow-downgrade if you mean it)",
                        manifest.bundle_id, manifest.sequence, manifest.arch
                    ));
                }
            }
        }
        let newest = self
            .bundles
            .iter()
            .filter(|(_, b)| b.arch == manifest.arch)
            .max_by(|a, b| a.1.created.cmp(&b.1.created));
        let Some((id, newest)) = newest else {
            return Ok(());
        };
        if !is_utc_timestamp(&manifest.created) {
            return Err(format!(
                "bundle {} has created time {:?}, not YYYY-MM-DDTHH:MM:SSZ: it cannot be ordered against the bundles in the store, refusing a possible downgrade (pass --allow-downgrade if you mean it)",
                manifest.bundle_id,
                manifest.created.chars().take(40).collect::<String>()
            ));
        }
        if manifest.created < newest.created {
            return Err(format!(
                "bundle {} was created {} but the store has loaded bundle {id} for {} created {} (signed by {}): refusing a downgrade (pass --allow-downgrade if you mean it)",
                manifest.bundle_id,
                manifest.created,
                manifest.arch,
                newest.created,
                newest.signer.as_deref().unwrap_or("nobody")
            ));
        }
        Ok(())
    }

    /// What a load of `manifest` records of it: the bundle, and its
    /// signer's sequence for the arch.
    pub fn record_bundle(&mut self, manifest: &Manifest, signer: Option<&str>) {
        self.bundles.insert(
            manifest.bundle_id.clone(),
            BundleRecord {
                kubeedge_version: manifest.kubeedge_version.clone(),
                arch: manifest.arch,
                sequence: manifest.sequence,
                created: manifest.created.clone(),
                builder: manifest.builder.clone(),
                sample: manifest.sample,
                signer: signer.map(str::to_string),
            },
        );
        if let Some(key_id) = signer {
            let key = format!("{key_id}/{}", manifest.arch);
            let seen = self.sequences.entry(key).or_insert(0);
            *seen = (*seen).max(manifest.sequence);
        }
    }
}

impl Loader<'_> {
    /// A delta loads only into a store holding every entry it left out.
    /// Each is re-hashed, as a reused blob is (a damaged one cannot be
    /// repaired from a bundle that does not carry it): one read of the
    /// base's blobs this bundle shares.
    fn refuse_delta_without_base(&self, manifest: &Manifest) -> Result<(), String> {
        let Some(delta) = &manifest.delta else {
            return Ok(());
        };
        let mut missing = Vec::new();
        for entry in &delta.expected_present {
            if self.provided.contains_key(&entry.sha256) {
                continue;
            }
            let path = blob_path(&self.store, &entry.sha256);
            let intact = path.exists()
                && blob_is_intact(&path, entry.size, &entry.sha256)
                    .map_err(|e| format!("reading {}: {e}", path.display()))?;
            if !intact {
                missing.push(format!("sha256:{}", entry.sha256));
            }
        }
        if missing.is_empty() {
            return Ok(());
        }
        let shown = crate::config::MAX_MISSING_DIGESTS_SHOWN;
        let more = match missing.len().saturating_sub(shown) {
            0 => String::new(),
            n => format!(" and {n} more"),
        };
        let base = match delta.base.bundle_ids.as_slice() {
            [] => String::new(),
            ids => format!(" (bundle {})", ids.join(", ")),
        };
        Err(format!(
            "delta bundle {} needs {} entries it left out that {} does not hold (missing or damaged): {}{more}: load its base {}{base} first, or carry the full bundle",
            manifest.bundle_id,
            missing.len(),
            self.store.display(),
            missing[..missing.len().min(shown)].join(", "),
            delta.base.kind,
        ))
    }
}

/// What the store holds, for a delta's `--base`: every blob by its name
/// and size (the names are the store's content addressing; `store check`
/// re-hashes them), every release file, every bundle and sequence.
pub fn inventory(store: &Path) -> Result<edgeferry_bundle::inventory::Inventory> {
    use edgeferry_bundle::inventory::{Blob, File, Inventory};
    if !store.join(STATE_FILE).exists() {
        bail!(
            "{} is not an edgeferry store: load a bundle into it first",
            store.display()
        );
    }
    let state = State::read(store)?;
    let dir = store.join("blobs/sha256");
    let mut blobs = Vec::new();
    for entry in fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
        let entry = entry.with_context(|| format!("reading {}", dir.display()))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if !format::valid_hex(&name, 64) {
            continue;
        }
        blobs.push(Blob {
            sha256: name,
            size: entry.metadata()?.len(),
        });
    }
    let files = state
        .files
        .iter()
        .map(|(name, f)| File {
            name: name.clone(),
            sha256: f.sha256.clone(),
            size: f.size,
        })
        .collect();
    Ok(Inventory::new(
        state.bundles.keys().cloned().collect(),
        state.sequences.clone(),
        blobs,
        files,
    ))
}

/// `YYYY-MM-DDTHH:MM:SSZ`, the one form the builder writes: such strings
/// order as the times they name.
fn is_utc_timestamp(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 20
        && b.iter().enumerate().all(|(i, c)| match i {
            4 | 7 => *c == b'-',
            10 => *c == b'T',
            13 | 16 => *c == b':',
            19 => *c == b'Z',
            _ => c.is_ascii_digit(),
        })
}

impl Sink for Loader<'_> {
    fn manifest(&mut self, manifest: &Manifest, signer: Option<&Verified>) -> Result<(), String> {
        if !self.options.allow_downgrade {
            self.state
                .refuse_downgrade(manifest, signer.map(|s| s.key_id.as_str()))?;
        }
        self.refuse_delta_without_base(manifest)?;
        let needed: u64 = manifest
            .entries
            .iter()
            .filter(|e| e.path != format::SBOM_PATH)
            .filter(|e| !self.provided.contains_key(&e.sha256))
            .filter(|e| !blob_path(&self.store, &e.sha256).exists())
            .map(|e| e.size)
            .sum::<u64>()
            + self.config.load_space_margin_bytes;
        let available = sys::available_bytes(&self.parent)
            .map_err(|e| format!("checking free space in {}: {e}", self.parent.display()))?;
        if available < needed {
            return Err(format!(
                "not enough space in {}: the load needs {} MiB, {} MiB are free: free some space or pick another --store",
                self.parent.display(),
                needed.div_ceil(1 << 20),
                available >> 20
            ));
        }
        let path = self.parent.join(format!(
            "{}{}-{}",
            self.work_prefix(),
            std::process::id(),
            manifest.bundle_id
        ));
        fs::create_dir_all(path.join("blobs/sha256"))
            .map_err(|e| format!("creating {}: {e}", path.display()))?;
        self.work = Some(WorkDir {
            path,
            committed: false,
        });
        Ok(())
    }

    fn signed(&mut self, manifest_bytes: &[u8], signature: &[u8]) {
        self.signed = Some((manifest_bytes.to_vec(), signature.to_vec()));
    }

    fn begin_entry(&mut self, entry: &Entry) -> io::Result<Option<Box<dyn Write + '_>>> {
        match self.take(entry)? {
            Take::Skip => return Ok(None),
            Take::Capture => {
                let buffer = self.captured.entry(entry.path.clone()).or_default();
                return Ok(Some(Box::new(buffer)));
            }
            Take::Stage => {}
        }
        let target = blob_path(self.work_path(), &entry.sha256);
        let partial = target.with_extension("partial");
        let file = fs::File::create(&partial)?;
        self.open = Some((partial.clone(), target));
        Ok(Some(Box::new(BlobWriter {
            // Entry bodies arrive in chunks of up to 1 MiB, which go straight
            // through; only small pieces are gathered.
            writer: Some(BufWriter::with_capacity(64 << 10, file)),
            start_writeback: !self.options.no_sync,
        })))
    }

    fn end_entry(&mut self, _entry: &Entry) -> io::Result<()> {
        if let Some((partial, target)) = self.open.take() {
            fs::rename(partial, target)?;
        }
        Ok(())
    }
}

/// Whether the file at `path` has `size` bytes whose sha256 is `sha256`.
pub fn blob_is_intact(path: &Path, size: u64, sha256: &str) -> io::Result<bool> {
    let file = fs::File::open(path)?;
    if file.metadata()?.len() != size {
        return Ok(false);
    }
    let (actual, _) = edgeferry_bundle::hashing::sha256_reader(file)?;
    Ok(actual == sha256)
}

/// One damaged thing `store check` found.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Damage {
    /// The path in the store, e.g. `blobs/sha256/<hex>` or `files/<name>`.
    pub path: String,
    /// The sha256 the thing is named or recorded by.
    pub sha256: String,
    /// `hash` (bytes changed), `missing` (referenced but absent), `stray`
    /// (a name in blobs/ that is no sha256).
    pub problem: &'static str,
}

/// What `check` read.
#[derive(Debug, Default)]
pub struct Checked {
    pub blobs: usize,
    pub bytes: u64,
    pub files: usize,
    pub damaged: Vec<Damage>,
}

/// Hashes every blob of the store and checks that every blob its state
/// and manifests name is there and every release file is its blob.
pub fn check(store: &Path) -> Result<Checked> {
    use std::os::unix::fs::MetadataExt;
    if !store.join(STATE_FILE).exists() {
        bail!(
            "{} is not an edgeferry store: load a bundle into it first",
            store.display()
        );
    }
    let state = State::read(store)?;
    let mut checked = Checked::default();
    let blobs = store.join("blobs/sha256");
    let mut present = BTreeSet::new();
    let mut names: Vec<_> = fs::read_dir(&blobs)
        .with_context(|| format!("reading {}", blobs.display()))?
        .collect::<io::Result<Vec<_>>>()
        .with_context(|| format!("reading {}", blobs.display()))?;
    names.sort_by_key(|e| e.file_name());
    for entry in names {
        let name = entry.file_name().to_string_lossy().into_owned();
        let path = format!("blobs/sha256/{name}");
        if format::sha256_hex_of_digest(&format!("sha256:{name}")).is_none() {
            checked.damaged.push(Damage {
                path,
                sha256: String::new(),
                problem: "stray",
            });
            continue;
        }
        let file = fs::File::open(entry.path())
            .with_context(|| format!("opening {}", entry.path().display()))?;
        let (actual, len) = edgeferry_bundle::hashing::sha256_reader(file)
            .with_context(|| format!("reading {}", entry.path().display()))?;
        checked.blobs += 1;
        checked.bytes += len;
        if actual != name {
            checked.damaged.push(Damage {
                path,
                sha256: name.clone(),
                problem: "hash",
            });
        }
        present.insert(name);
    }
    // Everything the state and the manifests it lists refer to.
    let mut wanted: BTreeSet<String> = state.files.values().map(|f| f.sha256.clone()).collect();
    for digest in state.manifests.keys() {
        let Some(hex) = format::sha256_hex_of_digest(digest) else {
            continue;
        };
        wanted.insert(hex.to_string());
        let doc = fs::read(blob_path(store, hex)).ok().and_then(|bytes| {
            serde_json::from_slice::<edgeferry_bundle::oci::ManifestDoc>(&bytes).ok()
        });
        if let Some(doc) = doc {
            let parts = doc
                .config
                .into_iter()
                .chain(doc.layers.into_iter().flatten());
            for part in parts {
                if let Some(hex) = format::sha256_hex_of_digest(&part.digest) {
                    wanted.insert(hex.to_string());
                }
            }
        }
    }
    for hex in wanted.difference(&present) {
        checked.damaged.push(Damage {
            path: format!("blobs/sha256/{hex}"),
            sha256: hex.clone(),
            problem: "missing",
        });
    }
    for (name, record) in &state.files {
        checked.files += 1;
        let path = store.join("files").join(name);
        let same_inode = match (
            fs::metadata(&path),
            fs::metadata(blob_path(store, &record.sha256)),
        ) {
            (Ok(a), Ok(b)) => Some(a.dev() == b.dev() && a.ino() == b.ino()),
            (Err(_), _) => None,
            (Ok(_), Err(_)) => Some(false),
        };
        let problem = match same_inode {
            None => Some("missing"),
            Some(true) => None,
            Some(false) => (!blob_is_intact(&path, record.size, &record.sha256)
                .with_context(|| format!("reading {}", path.display()))?)
            .then_some("hash"),
        };
        if let Some(problem) = problem {
            checked.damaged.push(Damage {
                path: format!("files/{name}"),
                sha256: record.sha256.clone(),
                problem,
            });
        }
    }
    Ok(checked)
}

/// Flushes a staged blob and starts its writeback when the verifier is done
/// with it.
struct BlobWriter {
    writer: Option<BufWriter<fs::File>>,
    start_writeback: bool,
}

impl Write for BlobWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.writer.as_mut().expect("open").write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.writer.as_mut().expect("open").flush()
    }
}

impl Drop for BlobWriter {
    fn drop(&mut self) {
        if let Some(writer) = self.writer.take() {
            if let Ok(file) = writer.into_inner() {
                if self.start_writeback {
                    sys::start_writeback(&file);
                }
            }
        }
    }
}

/// Small files of the next store; `commit` syncs the filesystem once after.
fn write_small(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut file =
        fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    file.write_all(bytes)?;
    file.sync_all()?;
    Ok(())
}

/// The store's own `index.json`: one descriptor per image reference, so
/// `skopeo inspect oci:<store>:<reference>` works on the store itself.
fn layout_index(state: &State) -> Vec<u8> {
    let manifests = state
        .images
        .iter()
        .map(|(reference, image)| {
            let size = state.manifests[&image.digest].size;
            let mut descriptor = Descriptor::new(&image.media_type, &image.digest, size);
            descriptor.annotations = Some(BTreeMap::from([(
                REF_ANNOTATION.to_string(),
                reference.clone(),
            )]));
            descriptor
        })
        .collect();
    let index = Index {
        schema_version: 2,
        media_type: Some(MEDIA_OCI_INDEX.to_string()),
        manifests,
        annotations: None,
    };
    // Through a Value, whose keys are sorted, as this file has always been.
    let value = serde_json::to_value(&index).expect("index serialises");
    let mut bytes = serde_json::to_vec_pretty(&value).expect("index serialises");
    bytes.push(b'\n');
    bytes
}

fn absolute(path: &Path) -> Result<PathBuf> {
    let path = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir()?.join(path)
    };
    // Normalise `.` and trailing slashes so the parent is the real parent.
    Ok(path.components().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_builders_utc_form_is_ordered() {
        assert!(is_utc_timestamp("2025-11-13T02:13:20Z"));
        for bad in [
            "2025-11-13T02:13:20+00:00",
            "2025-11-13 02:13:20Z",
            "9999",
            "2025-11-13T02:13:20.5Z",
            "２025-11-13T02:13:20Z",
            "",
        ] {
            assert!(!is_utc_timestamp(bad), "{bad}");
        }
        // The form orders as the times it names.
        assert!("2025-11-13T02:13:20Z" < "2025-11-13T10:00:00Z");
    }
}
