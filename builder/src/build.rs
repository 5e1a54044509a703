//! Carrying out a [`Plan`], step by step in the order it lists them: get
//! the artifacts (sample, directory or fetches), check every release asset
//! against its upstream checksum, resolve every image to the plan's arch,
//! lay the images out as one OCI layout ([`gather`]); for a delta, leave
//! out what the base holds ([`Gathered::split`]); and pack it all.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use edgeferry_bundle::format::{self, Delta, FileRecord, ImageRecord, Manifest};
use edgeferry_bundle::oci::{
    Descriptor, ImageLayout, Index, Platform, ANNOTATION_INDEX_DIGEST, ANNOTATION_REF_NAME,
    MEDIA_OCI_INDEX,
};
use edgeferry_bundle::pack::{self, PackEntry, PackOptions, Packed, Source};
use edgeferry_bundle::sign::SigningKey;

use crate::delta::{Base, Omitted};
use crate::fetch;
use crate::oci::{self, Blob, ImageCatalog, ResolvedImage};
use crate::plan::{Origin, Plan, Step};
use crate::release::check_release_asset;
use crate::sample;
use crate::sbom::{self, SbomInput};

pub const VERSION: &str = env!("CARGO_PKG_VERSION");
pub const BUILDER: &str = concat!("edgeferry-builder ", env!("CARGO_PKG_VERSION"));

/// Runs the plan's steps in order. `progress` learns the total once known,
/// then each chunk. With a `base` (the plan then has an omit step), the
/// bundle is a delta; the entries it left out are returned.
pub fn build(
    plan: &Plan,
    key: &SigningKey,
    base: Option<&Base>,
    progress: &mut dyn Progress,
) -> Result<(Packed, Omitted)> {
    let gathered = gather(plan, progress)?;
    let (gathered, omitted) = match base {
        Some(base) => gathered.split(base)?,
        None => (gathered, Omitted::default()),
    };
    let packed = gathered.pack(plan, key, progress)?;
    Ok((packed, omitted))
}

/// Everything a bundle will hold, before packing: its manifest (entries
/// not yet filled in) and its entries, in stream order.
pub struct Gathered {
    pub manifest: Manifest,
    pub entries: Vec<PackEntry>,
    /// The SBOM's view of the full content, made when gathering.
    pub sbom_input: SbomInput,
    /// The sample directory the entries read from lives as long as they do.
    _sample_dir: Option<tempfile::TempDir>,
}

impl Gathered {
    /// Moves the entries `base` holds into the manifest's
    /// `delta.expected_present`; returns them as a value too.
    pub fn split(mut self, base: &Base) -> Result<(Gathered, Omitted)> {
        let (kept, omitted) = base.split(std::mem::take(&mut self.entries))?;
        self.entries = kept;
        self.manifest.delta = Some(Delta {
            base: base.planned.info.clone(),
            expected_present: omitted.0.clone(),
        });
        Ok((self, omitted))
    }

    pub fn pack(
        self,
        plan: &Plan,
        key: &SigningKey,
        progress: &mut dyn Progress,
    ) -> Result<Packed> {
        // The SBOM is the first entry; a delta's marks what it left out.
        let sbom_bytes = sbom::sbom(&self.sbom_input, self.manifest.expected_present());
        let mut entries = self.entries;
        entries.insert(0, PackEntry::bytes(format::SBOM_PATH, sbom_bytes.clone()));
        progress.start(entries.iter().map(|e| e.size).sum());
        let options = PackOptions {
            level: plan.level,
            mtime: plan.created_unix,
            ..PackOptions::default()
        };
        let packed = pack::pack(
            self.manifest,
            entries,
            key,
            plan.out_dir(),
            &options,
            &mut |n| progress.advance(n),
        )?;
        sbom::write_beside(&packed.bundle, &sbom_bytes)?;
        progress.finish();
        drop(self._sample_dir);
        Ok(packed)
    }
}

/// Runs the plan's steps up to the pack: the artifacts read, checked and
/// laid out, nothing written but the sample's temp dir.
pub fn gather(plan: &Plan, progress: &mut dyn Progress) -> Result<Gathered> {
    // The sample directory lives exactly as long as the build needs it.
    let mut sample_dir = None;
    // Where `--from`-style steps read: the directory, or the sample's.
    let mut from = PathBuf::new();
    let mut fetched: Option<fetch::Fetched> = None;
    let mut catalog: Option<ImageCatalog> = None;
    let mut entries = Vec::new();
    let mut files = Vec::new();
    let mut resolved = Vec::new();
    for step in &plan.steps {
        match step {
            Step::WriteSample => {
                let dir = tempfile::tempdir().context("creating a temp dir for the sample")?;
                sample::write_sample_dir(dir.path(), &sample_spec(plan))?;
                from = dir.path().to_path_buf();
                sample_dir = Some(dir);
            }
            Step::ReadDir { dir } => from = dir.clone(),
            Step::FetchFile { .. } | Step::FetchImage { .. } => {
                // The fetch steps run together, in plan order, the first
                // time one comes up: they share one client and its tokens.
                if fetched.is_none() {
                    let Origin::Online(online) = &plan.origin else {
                        bail!("the plan fetches, but its origin is not online");
                    };
                    let done = fetch::fetch(plan, online, progress.show_downloads())?;
                    from = online.cache.clone();
                    resolved.extend(done.images.iter().cloned());
                    fetched = Some(done);
                }
            }
            Step::CheckFile {
                name,
                checksum,
                required,
            } => {
                let (path, checksum_path) = match &fetched {
                    // The fetcher checked what the release has; an optional
                    // asset it lacks is simply not there.
                    Some(fetched) => match fetched.files.get(name) {
                        Some(f) => (f.path.clone(), f.checksum_path.clone()),
                        None => continue,
                    },
                    None => (
                        from.join("files").join(name),
                        from.join("files").join(checksum),
                    ),
                };
                if !path.exists() {
                    if *required {
                        bail!(
                            "missing release asset {}: put it and {} from the KubeEdge {} release into {}",
                            path.display(),
                            checksum,
                            plan.kubeedge_version,
                            from.join("files").display()
                        );
                    }
                    continue;
                }
                let checked = check_release_asset(&path, &checksum_path)?;
                let checksum_bytes = std::fs::read(&checksum_path)?;
                files.push(FileRecord {
                    path: format!("files/{name}"),
                    checksum_path: Some(format!("files/{checksum}")),
                    sha512: Some(checked.sha512.clone()),
                });
                let asset_path = path.clone();
                entries.push(PackEntry {
                    path: format!("files/{name}"),
                    size: checked.size,
                    sha256: checked.sha256,
                    source: Source::Open(Box::new(move || {
                        Ok(Box::new(std::fs::File::open(&asset_path)?) as Box<dyn Read + Send>)
                    })),
                });
                entries.push(PackEntry::bytes(
                    format!("files/{checksum}"),
                    checksum_bytes,
                ));
            }
            Step::ResolveImage { reference } => {
                if catalog.is_none() {
                    catalog = Some(oci::scan(&from.join("images"))?);
                }
                let catalog = catalog.as_ref().expect("scanned above");
                resolved.push(catalog.resolve(reference, plan.arch)?);
            }
            Step::Pack { .. } => {
                let (layout_entries, images) = image_layout(&resolved)?;
                entries.extend(layout_entries);
                let manifest = Manifest {
                    format_version: format::FORMAT_VERSION,
                    bundle_id: String::new(),
                    kubeedge_version: plan.kubeedge_version.clone(),
                    arch: plan.arch,
                    sequence: plan.sequence,
                    created: plan.created.clone(),
                    builder: BUILDER.to_string(),
                    sample: matches!(plan.origin, Origin::Sample),
                    files: std::mem::take(&mut files),
                    images,
                    entries: Vec::new(),
                    delta: None,
                };
                let entries = std::mem::take(&mut entries);
                // What the SBOM describes: the full content, whatever a
                // delta later leaves out of the stream.
                let sbom_input = SbomInput::from_build(&manifest, &entries, &resolved, VERSION);
                return Ok(Gathered {
                    manifest,
                    entries,
                    sbom_input,
                    _sample_dir: sample_dir,
                });
            }
            // Done after gathering, by `Gathered::split`.
            Step::Omit { .. } => {}
        }
    }
    bail!("the plan has no pack step")
}

pub trait Progress {
    fn start(&mut self, total_bytes: u64);
    fn advance(&mut self, bytes: u64);
    fn finish(&mut self);
    /// Whether the online origin draws a progress bar per download.
    fn show_downloads(&self) -> bool {
        false
    }
}

/// No progress display (tests, `--json`, non-terminals).
pub struct Silent;

impl Progress for Silent {
    fn start(&mut self, _: u64) {}
    fn advance(&mut self, _: u64) {}
    fn finish(&mut self) {}
}

pub fn sample_spec(plan: &Plan) -> sample::SampleSpec {
    let by_role = |role: &str| {
        plan.images
            .iter()
            .find(|i| i.role == role)
            .map(|i| i.reference.clone())
            .unwrap_or_default()
    };
    let all_of = |role: &str| {
        plan.images
            .iter()
            .filter(|i| i.role == role)
            .map(|i| i.reference.clone())
            .collect()
    };
    sample::SampleSpec {
        kubeedge_version: plan.kubeedge_version.clone(),
        installation_package_image: by_role("installation-package"),
        pause_images: all_of("pause"),
        mosquitto_image: by_role("mqtt"),
        extra_images: all_of("extra"),
    }
}

/// One OCI layout for all images: `index.json` lists each image's platform
/// manifest under its full upstream name; every blob (the upstream index
/// included, byte-exact) is stored once.
fn image_layout(resolved: &[ResolvedImage]) -> Result<(Vec<PackEntry>, Vec<ImageRecord>)> {
    let mut blobs: BTreeMap<String, &Blob> = BTreeMap::new();
    let mut descriptors = Vec::new();
    let mut records = Vec::new();
    for image in resolved {
        for blob in image.blobs() {
            blobs.entry(blob.digest.clone()).or_insert(blob);
        }
        let mut annotations =
            BTreeMap::from([(ANNOTATION_REF_NAME.to_string(), image.reference.clone())]);
        if let Some(index) = &image.index {
            annotations.insert(ANNOTATION_INDEX_DIGEST.to_string(), index.digest.clone());
        }
        let mut descriptor = Descriptor::new(
            &image.manifest.media_type,
            &image.manifest.digest,
            image.manifest.size,
        );
        descriptor.platform = Some(Platform::parse(&image.platform));
        descriptor.annotations = Some(annotations);
        descriptors.push(descriptor);
        records.push(ImageRecord {
            reference: image.reference.clone(),
            manifest_digest: image.manifest.digest.clone(),
            manifest_media_type: image.manifest.media_type.clone(),
            index_digest: image.index.as_ref().map(|b| b.digest.clone()),
            index_media_type: image.index.as_ref().map(|b| b.media_type.clone()),
            platform: image.platform.clone(),
        });
    }
    let index = Index {
        schema_version: 2,
        media_type: Some(MEDIA_OCI_INDEX.to_string()),
        manifests: descriptors,
        annotations: None,
    };
    let mut index_bytes = serde_json::to_vec(&index)?;
    index_bytes.push(b'\n');
    let mut entries = vec![
        PackEntry::bytes("images/oci-layout", ImageLayout::bytes()),
        PackEntry::bytes("images/index.json", index_bytes),
    ];
    for (digest, blob) in blobs {
        let path = format::blob_path(&digest)
            .with_context(|| format!("blob digest {digest} is not a sha256 digest"))?;
        let source = blob.source.clone();
        entries.push(PackEntry {
            path,
            size: blob.size,
            sha256: format::sha256_hex_of_digest(&digest)
                .expect("checked above")
                .to_string(),
            source: Source::Open(Box::new(move || source.open())),
        });
    }
    Ok((entries, records))
}
