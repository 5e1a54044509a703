//! Finding image sources under `images/` and resolving a reference to one
//! platform. Sources are indexed by name at scan time; JSON blobs are read
//! and verified only when an image is resolved, so a directory full of
//! images costs one pass over each tar header and nothing more.

use edgeferry_bundle::hashing::sha256_hex;
use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::{self, Read};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use edgeferry_bundle::format::{sha256_hex_of_digest, Arch};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use edgeferry_bundle::oci::{
    Descriptor, DocKind, DockerDescriptor, ImageConfig, ImageLayout, Index, Manifest, ManifestDoc,
    ANNOTATION_CONTAINERD_NAME, ANNOTATION_REF_NAME, MEDIA_DOCKER_CONFIG, MEDIA_DOCKER_LAYER,
    MEDIA_DOCKER_LAYER_GZIP, MEDIA_DOCKER_MANIFEST, MEDIA_OCI_CONFIG, MEDIA_OCI_INDEX,
    MEDIA_OCI_LAYER_GZIP, MEDIA_OCI_MANIFEST,
};

use super::platform::{available_platforms, canonical_platform, check_config, pick_platform};
use super::{normalize_reference, Blob, BlobSource, ImageError, ResolvedImage};

/// Index, manifest and config blobs are read whole; anything bigger than
/// this is not one of them and would only make us buffer an attacker's file.
const MAX_JSON_BYTES: u64 = 16 * 1024 * 1024;
/// Bounds symlink chains inside a tar so a loop cannot hang the scan.
const MAX_LINK_HOPS: usize = 16;

/// Every image source found under one directory, by normalized reference.
#[derive(Debug)]
pub struct ImageCatalog {
    dir: PathBuf,
    /// Several sources may carry one name (say, one `docker save` per arch);
    /// resolution picks the one that has the requested platform.
    images: BTreeMap<String, Vec<Source>>,
}

#[derive(Clone, Debug)]
struct Source {
    store: Arc<Store>,
    kind: SourceKind,
}

#[derive(Clone, Debug)]
enum SourceKind {
    /// An `index.json` entry of an OCI layout (directory or archive).
    Layout(Descriptor),
    /// A legacy `docker save` entry: member paths of its config and layers;
    /// the manifest is synthesized when it is resolved.
    DockerSave { config: String, layers: Vec<String> },
}

impl SourceKind {
    /// Two sources with the same identity are the same image.
    fn identity(&self) -> String {
        match self {
            SourceKind::Layout(desc) => desc.digest.clone(),
            SourceKind::DockerSave { config, layers } => format!("{config} {}", layers.join(" ")),
        }
    }
}

#[derive(Debug)]
enum Store {
    /// An OCI layout directory.
    Dir(PathBuf),
    /// An uncompressed tar archive: member path to where its bytes are.
    Tar {
        archive: PathBuf,
        members: HashMap<String, Member>,
    },
}

#[derive(Clone, Copy, Debug)]
struct Member {
    offset: u64,
    size: u64,
}

/// A blob found in a store, not yet read.
struct Located {
    source: BlobSource,
    size: u64,
    location: String,
}

impl Store {
    fn origin(&self) -> &Path {
        match self {
            Store::Dir(dir) => dir,
            Store::Tar { archive, .. } => archive,
        }
    }

    fn member(&self, path: &str) -> Result<Option<Located>, ImageError> {
        match self {
            Store::Dir(dir) => {
                let full = dir.join(path);
                match fs::metadata(&full) {
                    Ok(meta) if meta.is_file() => Ok(Some(Located {
                        location: full.display().to_string(),
                        source: BlobSource::File(full),
                        size: meta.len(),
                    })),
                    Ok(_) => Ok(None),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
                    Err(e) => Err(io_error(&full, e)),
                }
            }
            Store::Tar { archive, members } => Ok(members.get(path).map(|m| Located {
                source: BlobSource::TarMember {
                    archive: archive.clone(),
                    offset: m.offset,
                    size: m.size,
                },
                size: m.size,
                location: format!("{} ({path})", archive.display()),
            })),
        }
    }
}

/// One entry of a `docker save` `manifest.json`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerSaveEntry {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    #[serde(default)]
    layers: Vec<String>,
}

fn io_error(path: &Path, source: io::Error) -> ImageError {
    ImageError::Io {
        path: path.display().to_string(),
        source,
    }
}

fn source_error(path: &Path, detail: impl Into<String>) -> ImageError {
    ImageError::Invalid {
        reference: format!("source {}", path.display()),
        detail: detail.into(),
    }
}

/// Finds every image source directly under `dir`. A missing `dir` is an
/// empty catalog: the caller reports each image it cannot find.
pub fn scan(dir: &Path) -> Result<ImageCatalog, ImageError> {
    let mut catalog = ImageCatalog {
        dir: dir.to_path_buf(),
        images: BTreeMap::new(),
    };
    let read_dir = match fs::read_dir(dir) {
        Ok(read_dir) => read_dir,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(catalog),
        Err(e) => return Err(io_error(dir, e)),
    };
    let mut children = Vec::new();
    for entry in read_dir {
        children.push(entry.map_err(|e| io_error(dir, e))?.path());
    }
    // Sorted so that resolution, which prefers earlier sources, is repeatable.
    children.sort();

    for path in children {
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        if name.starts_with('.') {
            continue;
        }
        let meta = fs::metadata(&path).map_err(|e| io_error(&path, e))?;
        let found = if meta.is_dir() {
            if !path.join("index.json").is_file() {
                continue;
            }
            scan_layout_dir(&path)?
        } else if meta.is_file() {
            let lower = name.to_ascii_lowercase();
            if lower.ends_with(".tar.gz") || lower.ends_with(".tgz") {
                return Err(source_error(
                    &path,
                    "is gzip-compressed: decompress it with gunzip and keep the .tar",
                ));
            }
            if lower.ends_with(".tar.zst") || lower.ends_with(".tar.xz") {
                return Err(source_error(
                    &path,
                    "is compressed: decompress it (zstd -d or xz -d) and keep the .tar",
                ));
            }
            if !lower.ends_with(".tar") {
                continue;
            }
            scan_tar(&path)?
        } else {
            continue;
        };
        for (reference, source) in found {
            catalog.add(reference, source);
        }
    }
    Ok(catalog)
}

impl ImageCatalog {
    fn add(&mut self, reference: String, source: Source) {
        let sources = self.images.entry(reference).or_default();
        let identity = source.kind.identity();
        let duplicate = sources
            .iter()
            .any(|s| s.kind.identity() == identity && s.store.origin() == source.store.origin());
        if !duplicate {
            sources.push(source);
        }
    }

    /// Every normalized reference found, sorted.
    pub fn references(&self) -> Vec<String> {
        self.images.keys().cloned().collect()
    }

    /// Resolves `reference` to the platform of `arch`, reading and verifying
    /// the index, manifest and config, and locating (not reading) the layers.
    pub fn resolve(&self, reference: &str, arch: Arch) -> Result<ResolvedImage, ImageError> {
        let normalized = normalize_reference(reference).map_err(|detail| ImageError::Invalid {
            reference: reference.to_string(),
            detail,
        })?;
        let sources = self
            .images
            .get(&normalized)
            .ok_or_else(|| ImageError::NotFound {
                reference: normalized.clone(),
                searched: self.dir.display().to_string(),
            })?;

        let mut found: Vec<(ResolvedImage, &Path)> = Vec::new();
        let mut available: Vec<String> = Vec::new();
        let mut failure = None;
        for source in sources {
            let reader = Reader {
                reference: &normalized,
                store: &source.store,
            };
            match reader.resolve(&source.kind, arch) {
                Ok(image) => found.push((image, source.store.origin())),
                Err(ImageError::NoPlatform {
                    available: theirs, ..
                }) => {
                    for platform in theirs.split(", ") {
                        if !available.iter().any(|p| p == platform) {
                            available.push(platform.to_string());
                        }
                    }
                }
                Err(e) => {
                    failure.get_or_insert(e);
                }
            }
        }

        let mut found = found.into_iter();
        if let Some((image, origin)) = found.next() {
            if let Some((_, other)) =
                found.find(|(o, _)| o.manifest.digest != image.manifest.digest)
            {
                return Err(ImageError::Invalid {
                    reference: normalized,
                    detail: format!(
                        "{} and {} both carry it for {} with different content: keep only one of them",
                        origin.display(),
                        other.display(),
                        image.platform
                    ),
                });
            }
            return Ok(image);
        }
        if let Some(e) = failure {
            return Err(e);
        }
        Err(ImageError::NoPlatform {
            reference: normalized,
            arch,
            available: if available.is_empty() {
                "no platforms".into()
            } else {
                available.join(", ")
            },
        })
    }
}

/// Reads blobs of one store on behalf of one reference, which every error
/// names.
struct Reader<'a> {
    reference: &'a str,
    store: &'a Store,
}

impl Reader<'_> {
    fn invalid(&self, detail: impl Into<String>) -> ImageError {
        ImageError::Invalid {
            reference: self.reference.to_string(),
            detail: detail.into(),
        }
    }

    fn hex_of<'d>(&self, digest: &'d str) -> Result<&'d str, ImageError> {
        sha256_hex_of_digest(digest).ok_or_else(|| {
            self.invalid(format!(
                "has a blob with digest {digest}, but only sha256 digests are supported: export it again with skopeo or docker save"
            ))
        })
    }

    /// Finds a blob by digest and checks its size against the descriptor.
    fn locate(&self, digest: &str, size: u64) -> Result<Located, ImageError> {
        let hex = self.hex_of(digest)?;
        let located = self
            .store
            .member(&format!("blobs/sha256/{hex}"))?
            .ok_or_else(|| {
                self.invalid(format!(
                    "blob {digest} is missing from {}: the source is incomplete, export it again with all platforms (skopeo copy --all)",
                    self.store.origin().display()
                ))
            })?;
        if located.size != size {
            return Err(self.invalid(format!(
                "blob {digest} in {} is {} bytes but its descriptor says {size}: the source is corrupt, fetch it again",
                located.location, located.size
            )));
        }
        Ok(located)
    }

    fn read_located(&self, located: &Located) -> Result<Vec<u8>, ImageError> {
        if located.size > MAX_JSON_BYTES {
            return Err(self.invalid(format!(
                "{} is {} bytes, too big for an index, manifest or config: the source is corrupt, fetch it again",
                located.location, located.size
            )));
        }
        let io_err = |e| ImageError::Io {
            path: located.location.clone(),
            source: e,
        };
        let mut bytes = Vec::with_capacity(located.size as usize);
        located
            .source
            .open()
            .map_err(io_err)?
            .take(located.size + 1)
            .read_to_end(&mut bytes)
            .map_err(io_err)?;
        if bytes.len() as u64 != located.size {
            return Err(self.invalid(format!(
                "{} changed size while being read: leave the source alone during the build",
                located.location
            )));
        }
        Ok(bytes)
    }

    /// Reads a JSON blob whole and checks size and sha256 before anyone
    /// parses it.
    fn read_verified(&self, digest: &str, size: u64) -> Result<(Located, Vec<u8>), ImageError> {
        let located = self.locate(digest, size)?;
        let bytes = self.read_located(&located)?;
        let expected = self.hex_of(digest)?;
        let actual = sha256_hex(&bytes);
        if actual != expected {
            return Err(ImageError::DigestMismatch {
                reference: self.reference.to_string(),
                digest: digest.to_string(),
                location: located.location,
                expected: expected.to_string(),
                actual,
            });
        }
        Ok((located, bytes))
    }

    fn parse<T: for<'de> Deserialize<'de>>(
        &self,
        bytes: &[u8],
        what: &str,
        location: &str,
    ) -> Result<T, ImageError> {
        serde_json::from_slice(bytes).map_err(|e| {
            self.invalid(format!(
                "{what} {location} is not valid JSON ({e}): export the image again"
            ))
        })
    }

    fn blob(&self, desc: &Descriptor, default_media_type: &str) -> Result<Blob, ImageError> {
        let located = self.locate(&desc.digest, desc.size)?;
        Ok(Blob {
            digest: desc.digest.clone(),
            size: desc.size,
            media_type: desc.media_type_or(default_media_type),
            source: located.source,
        })
    }

    fn resolve(&self, kind: &SourceKind, arch: Arch) -> Result<ResolvedImage, ImageError> {
        match kind {
            SourceKind::Layout(desc) => self.resolve_layout(desc, arch),
            SourceKind::DockerSave { config, layers } => {
                self.resolve_docker_save(config, layers, arch)
            }
        }
    }

    fn resolve_layout(&self, top: &Descriptor, arch: Arch) -> Result<ResolvedImage, ImageError> {
        let (located, bytes) = self.read_verified(&top.digest, top.size)?;
        let doc: ManifestDoc = self.parse(&bytes, "image document", &located.location)?;
        let kind = doc
            .kind(top.media_type.as_deref())
            .map_err(|d| self.invalid(d))?;
        if kind == DocKind::Manifest {
            let manifest = Blob {
                digest: top.digest.clone(),
                size: top.size,
                media_type: manifest_media_type(top, &doc),
                source: located.source,
            };
            return self.finish(None, manifest, &doc, arch, true);
        }

        let index = Blob {
            digest: top.digest.clone(),
            size: top.size,
            media_type: top
                .media_type
                .clone()
                .filter(|m| !m.is_empty())
                .or(doc.media_type.clone())
                .unwrap_or_else(|| MEDIA_OCI_INDEX.to_string()),
            source: located.source,
        };
        let entries = doc.manifests.as_deref().unwrap_or_default();
        let chosen = pick_platform(entries, arch).ok_or_else(|| ImageError::NoPlatform {
            reference: self.reference.to_string(),
            arch,
            available: available_platforms(entries),
        })?;
        let (located, bytes) = self.read_verified(&chosen.digest, chosen.size)?;
        let doc: ManifestDoc = self.parse(&bytes, "image manifest", &located.location)?;
        match doc.kind(chosen.media_type.as_deref()).map_err(|d| self.invalid(d))? {
            DocKind::Manifest => {}
            DocKind::Index => {
                return Err(self.invalid(format!(
                    "its index points to another index ({}) for {}; nested indexes are not supported: copy the image with skopeo copy --all",
                    chosen.digest,
                    canonical_platform(arch)
                )))
            }
        }
        let manifest = Blob {
            digest: chosen.digest.clone(),
            size: chosen.size,
            media_type: manifest_media_type(chosen, &doc),
            source: located.source,
        };
        // The index already chose the platform; the config need not repeat it.
        self.finish(Some(index), manifest, &doc, arch, false)
    }

    /// Reads the config of a platform manifest and locates its layers.
    fn finish(
        &self,
        index: Option<Blob>,
        manifest: Blob,
        doc: &ManifestDoc,
        arch: Arch,
        check_config_platform: bool,
    ) -> Result<ResolvedImage, ImageError> {
        let config_desc = doc.config.as_ref().ok_or_else(|| {
            self.invalid(format!(
                "manifest {} has no config: export the image again",
                manifest.digest
            ))
        })?;
        let (located, bytes) = self.read_verified(&config_desc.digest, config_desc.size)?;
        let config: ImageConfig = self.parse(&bytes, "image config", &located.location)?;
        if check_config_platform {
            self.check_config_platform(&config, arch)?;
        }
        let default_config_type = if manifest.media_type == MEDIA_DOCKER_MANIFEST {
            MEDIA_DOCKER_CONFIG
        } else {
            MEDIA_OCI_CONFIG
        };
        let config = Blob {
            digest: config_desc.digest.clone(),
            size: config_desc.size,
            media_type: config_desc.media_type_or(default_config_type),
            source: located.source,
        };
        let default_layer_type = if manifest.media_type == MEDIA_DOCKER_MANIFEST {
            MEDIA_DOCKER_LAYER_GZIP
        } else {
            MEDIA_OCI_LAYER_GZIP
        };
        let layers = doc
            .layers
            .as_deref()
            .unwrap_or_default()
            .iter()
            .map(|desc| self.blob(desc, default_layer_type))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(ResolvedImage {
            reference: self.reference.to_string(),
            index,
            manifest,
            config,
            layers,
            platform: canonical_platform(arch),
        })
    }

    fn check_config_platform(&self, config: &ImageConfig, arch: Arch) -> Result<(), ImageError> {
        check_config(config, arch).map_err(|available| ImageError::NoPlatform {
            reference: self.reference.to_string(),
            arch,
            available,
        })
    }

    fn member(&self, path: &str) -> Result<Located, ImageError> {
        self.store.member(path)?.ok_or_else(|| {
            self.invalid(format!(
                "{} lists {path} but the tarball has no such file: the tarball is incomplete, save it again",
                self.store.origin().display()
            ))
        })
    }

    /// Turns a legacy `docker save` entry into a Docker schema 2 image. The
    /// digests come from hashing: layer directory names are not digests.
    fn resolve_docker_save(
        &self,
        config_path: &str,
        layer_paths: &[String],
        arch: Arch,
    ) -> Result<ResolvedImage, ImageError> {
        let located = self.member(config_path)?;
        let bytes = self.read_located(&located)?;
        let config_hex = sha256_hex(&bytes);
        if let Some(expected) = hex_named_by(config_path) {
            if expected != config_hex {
                return Err(ImageError::DigestMismatch {
                    reference: self.reference.to_string(),
                    digest: format!("sha256:{expected}"),
                    location: located.location,
                    expected: expected.to_string(),
                    actual: config_hex,
                });
            }
        }
        let config_doc: ImageConfig = self.parse(&bytes, "image config", &located.location)?;
        // Before hashing layers: a wrong-arch tarball should fail fast.
        self.check_config_platform(&config_doc, arch)?;
        let config = Blob {
            digest: format!("sha256:{config_hex}"),
            size: located.size,
            media_type: MEDIA_DOCKER_CONFIG.to_string(),
            source: located.source,
        };

        let mut layers = Vec::with_capacity(layer_paths.len());
        for path in layer_paths {
            let located = self.member(path)?;
            let (hex, gzip) = hash_stream(&located)?;
            if let Some(expected) = path.strip_prefix("blobs/sha256/") {
                if expected != hex {
                    return Err(ImageError::DigestMismatch {
                        reference: self.reference.to_string(),
                        digest: format!("sha256:{expected}"),
                        location: located.location,
                        expected: expected.to_string(),
                        actual: hex,
                    });
                }
            }
            layers.push(Blob {
                digest: format!("sha256:{hex}"),
                size: located.size,
                media_type: if gzip {
                    MEDIA_DOCKER_LAYER_GZIP
                } else {
                    MEDIA_DOCKER_LAYER
                }
                .to_string(),
                source: located.source,
            });
        }

        // Docker's field order, fixed so the same input always gives the
        // same digest.
        let synth = Manifest {
            schema_version: 2,
            media_type: MEDIA_DOCKER_MANIFEST.to_string(),
            config: DockerDescriptor {
                media_type: MEDIA_DOCKER_CONFIG.to_string(),
                size: config.size,
                digest: config.digest.clone(),
            },
            layers: layers
                .iter()
                .map(|l| DockerDescriptor {
                    media_type: l.media_type.clone(),
                    size: l.size,
                    digest: l.digest.clone(),
                })
                .collect(),
            annotations: None,
        };
        let bytes = serde_json::to_vec(&synth).expect("a struct of strings serializes");
        let manifest = Blob {
            digest: format!("sha256:{}", sha256_hex(&bytes)),
            size: bytes.len() as u64,
            media_type: MEDIA_DOCKER_MANIFEST.to_string(),
            source: BlobSource::Bytes(Arc::new(bytes)),
        };
        Ok(ResolvedImage {
            reference: self.reference.to_string(),
            index: None,
            manifest,
            config,
            layers,
            platform: canonical_platform(arch),
        })
    }

    /// The config digests an `index.json` entry leads to, so `RepoTags` of a
    /// Docker 25 save can be matched to entries that carry no name.
    fn config_digests(&self, top: &Descriptor) -> Result<Vec<String>, ImageError> {
        let (located, bytes) = self.read_verified(&top.digest, top.size)?;
        let doc: ManifestDoc = self.parse(&bytes, "image document", &located.location)?;
        match doc
            .kind(top.media_type.as_deref())
            .map_err(|d| self.invalid(d))?
        {
            DocKind::Manifest => Ok(doc.config.into_iter().map(|c| c.digest).collect()),
            DocKind::Index => {
                let mut out = Vec::new();
                for child in doc.manifests.as_deref().unwrap_or_default() {
                    let Some(hex) = sha256_hex_of_digest(&child.digest) else {
                        continue;
                    };
                    // Docker saves only the platforms it has; skip the rest.
                    if self.store.member(&format!("blobs/sha256/{hex}"))?.is_none() {
                        continue;
                    }
                    let (located, bytes) = self.read_verified(&child.digest, child.size)?;
                    let child: ManifestDoc =
                        self.parse(&bytes, "image manifest", &located.location)?;
                    out.extend(child.config.map(|c| c.digest));
                }
                Ok(out)
            }
        }
    }
}

fn manifest_media_type(desc: &Descriptor, doc: &ManifestDoc) -> String {
    desc.media_type
        .clone()
        .filter(|m| !m.is_empty())
        .or(doc.media_type.clone().filter(|m| !m.is_empty()))
        .unwrap_or_else(|| MEDIA_OCI_MANIFEST.to_string())
}

/// The sha256 hex a `docker save` member path promises: `<hex>.json`
/// (legacy config) or `blobs/sha256/<hex>` (Docker 25 and newer).
fn hex_named_by(path: &str) -> Option<&str> {
    let candidate = path
        .strip_prefix("blobs/sha256/")
        .or_else(|| path.strip_suffix(".json"))?;
    (candidate.len() == 64
        && candidate
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
    .then_some(candidate)
}

/// Hashes a layer member and says whether it is gzip-compressed, which
/// decides the media type Docker would have given it.
fn hash_stream(located: &Located) -> Result<(String, bool), ImageError> {
    let io_err = |e| ImageError::Io {
        path: located.location.clone(),
        source: e,
    };
    let mut reader = located.source.open().map_err(io_err)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut head = Vec::with_capacity(2);
    loop {
        let n = reader.read(&mut buf).map_err(io_err)?;
        if n == 0 {
            break;
        }
        if head.len() < 2 {
            let take = (2 - head.len()).min(n);
            head.extend_from_slice(&buf[..take]);
        }
        hasher.update(&buf[..n]);
    }
    Ok((format!("{:x}", hasher.finalize()), head == [0x1f, 0x8b]))
}

/// The names an `index.json` entry carries. A bare tag in
/// `org.opencontainers.image.ref.name` (`v1.23.1`, `latest`) names no
/// repository, so it is not a name here.
fn names_of(desc: &Descriptor, origin: &Path) -> Result<Vec<String>, ImageError> {
    if let Some(name) = desc.annotation(ANNOTATION_CONTAINERD_NAME) {
        let normalized = normalize_reference(name).map_err(|e| {
            source_error(
                origin,
                format!("has an unusable {ANNOTATION_CONTAINERD_NAME} annotation: {e}"),
            )
        })?;
        return Ok(vec![normalized]);
    }
    match desc.annotation(ANNOTATION_REF_NAME) {
        // A tag cannot hold '/' or ':', so either means a repository is named.
        // The annotation is free-form, so an unparsable one is not ours to reject.
        Some(name) if name.contains(['/', ':']) => {
            Ok(normalize_reference(name).into_iter().collect())
        }
        _ => Ok(Vec::new()),
    }
}

fn check_layout_marker(origin: &Path, bytes: Option<&[u8]>) -> Result<(), ImageError> {
    let Some(bytes) = bytes else {
        return Ok(());
    };
    let marker: ImageLayout = serde_json::from_slice(bytes).map_err(|e| {
        source_error(
            origin,
            format!("has an unreadable oci-layout file ({e}): export it again with skopeo"),
        )
    })?;
    if !marker.image_layout_version.starts_with("1.") {
        return Err(source_error(
            origin,
            format!(
                "is OCI image layout version {}, only 1.x is supported: export it again with skopeo",
                marker.image_layout_version
            ),
        ));
    }
    Ok(())
}

fn parse_layout_index(origin: &Path, bytes: &[u8]) -> Result<Index, ImageError> {
    serde_json::from_slice(bytes).map_err(|e| {
        source_error(
            origin,
            format!("has an unreadable index.json ({e}): export it again with skopeo"),
        )
    })
}

fn scan_layout_dir(dir: &Path) -> Result<Vec<(String, Source)>, ImageError> {
    let index_path = dir.join("index.json");
    let index_bytes = read_small_file(&index_path)?;
    let marker_path = dir.join("oci-layout");
    let marker = match fs::read(&marker_path) {
        Ok(bytes) => Some(bytes),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(io_error(&marker_path, e)),
    };
    check_layout_marker(dir, marker.as_deref())?;
    let index = parse_layout_index(dir, &index_bytes)?;
    let store = Arc::new(Store::Dir(dir.to_path_buf()));
    let mut found = Vec::new();
    for desc in index.manifests {
        for name in names_of(&desc, dir)? {
            found.push((
                name,
                Source {
                    store: Arc::clone(&store),
                    kind: SourceKind::Layout(desc.clone()),
                },
            ));
        }
    }
    Ok(found)
}

fn read_small_file(path: &Path) -> Result<Vec<u8>, ImageError> {
    let file = fs::File::open(path).map_err(|e| io_error(path, e))?;
    let mut bytes = Vec::new();
    file.take(MAX_JSON_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| io_error(path, e))?;
    if bytes.len() as u64 > MAX_JSON_BYTES {
        return Err(source_error(
            path,
            "is too big for an OCI index: the source is corrupt, export it again",
        ));
    }
    Ok(bytes)
}

/// Turns a member path into the form lookups use (`blobs/sha256/…`),
/// resolving `.` and `..`; `None` if it escapes the archive root.
fn clean_member_path(path: &Path) -> Option<String> {
    let mut parts: Vec<&str> = Vec::new();
    for component in path.components() {
        match component {
            Component::Normal(part) => parts.push(part.to_str()?),
            Component::CurDir | Component::RootDir => {}
            Component::ParentDir => {
                parts.pop()?;
            }
            Component::Prefix(_) => return None,
        }
    }
    (!parts.is_empty()).then(|| parts.join("/"))
}

enum LinkKind {
    /// Target relative to the link's directory.
    Symbolic,
    /// Target is an archive path.
    Hard,
}

fn resolve_link(
    path: &str,
    members: &HashMap<String, Member>,
    links: &HashMap<String, (LinkKind, PathBuf)>,
) -> Option<Member> {
    let mut current = path.to_string();
    for _ in 0..MAX_LINK_HOPS {
        if let Some(member) = members.get(&current) {
            return Some(*member);
        }
        let (kind, target) = links.get(&current)?;
        current = match kind {
            LinkKind::Hard => clean_member_path(target)?,
            LinkKind::Symbolic => {
                if target.is_absolute() {
                    return None;
                }
                let parent = Path::new(&current).parent().unwrap_or(Path::new(""));
                clean_member_path(&parent.join(target))?
            }
        };
    }
    None
}

/// Indexes an uncompressed tar in one pass over its headers, reading only
/// the top-level JSON files; blobs stay in place and are read by offset.
fn scan_tar(path: &Path) -> Result<Vec<(String, Source)>, ImageError> {
    let mut file = fs::File::open(path).map_err(|e| io_error(path, e))?;
    let mut magic = [0u8; 4];
    let n = read_up_to(&mut file, &mut magic).map_err(|e| io_error(path, e))?;
    if magic[..n].starts_with(&[0x1f, 0x8b]) {
        return Err(source_error(
            path,
            "is gzip-compressed despite its .tar name: rename it to .tar.gz and decompress it with gunzip",
        ));
    }
    if magic[..n] == [0x28, 0xb5, 0x2f, 0xfd] {
        return Err(source_error(
            path,
            "is zstd-compressed despite its .tar name: decompress it with zstd -d",
        ));
    }
    let file = fs::File::open(path).map_err(|e| io_error(path, e))?;
    let not_tar = |e: io::Error| {
        source_error(
            path,
            format!("is not a readable tar archive ({e}): save or export it again"),
        )
    };

    let mut members = HashMap::new();
    let mut links = HashMap::new();
    let mut small: HashMap<&'static str, Vec<u8>> = HashMap::new();
    let mut archive = tar::Archive::new(file);
    for entry in archive.entries_with_seek().map_err(not_tar)? {
        let mut entry = entry.map_err(not_tar)?;
        let Some(name) = clean_member_path(&entry.path().map_err(not_tar)?) else {
            continue;
        };
        match entry.header().entry_type() {
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let member = Member {
                    offset: entry.raw_file_position(),
                    size: entry.size(),
                };
                let small_name = ["index.json", "manifest.json", "oci-layout"]
                    .into_iter()
                    .find(|n| *n == name);
                if let Some(small_name) = small_name {
                    if member.size > MAX_JSON_BYTES {
                        return Err(source_error(
                            path,
                            format!("has a {small_name} of {} bytes, too big to be real: save or export it again", member.size),
                        ));
                    }
                    let mut bytes = Vec::with_capacity(member.size as usize);
                    entry.read_to_end(&mut bytes).map_err(not_tar)?;
                    small.insert(small_name, bytes);
                }
                links.remove(&name);
                members.insert(name, member);
            }
            kind @ (tar::EntryType::Symlink | tar::EntryType::Link) => {
                if let Some(target) = entry.link_name().map_err(not_tar)? {
                    let kind = if kind == tar::EntryType::Link {
                        LinkKind::Hard
                    } else {
                        LinkKind::Symbolic
                    };
                    members.remove(&name);
                    links.insert(name, (kind, target.into_owned()));
                }
            }
            _ => {}
        }
    }
    // Docker 25 saves `<id>/layer.tar` as symlinks into `blobs/`; older
    // ones may hard-link repeated layers.
    let resolved: Vec<(String, Member)> = links
        .keys()
        .filter_map(|name| Some((name.clone(), resolve_link(name, &members, &links)?)))
        .collect();
    members.extend(resolved);

    let store = Arc::new(Store::Tar {
        archive: path.to_path_buf(),
        members,
    });
    let mut found: Vec<(String, Source)> = Vec::new();

    let index = match small.get("index.json") {
        Some(bytes) => {
            check_layout_marker(path, small.get("oci-layout").map(Vec::as_slice))?;
            Some(parse_layout_index(path, bytes)?)
        }
        None => None,
    };
    if let Some(index) = &index {
        for desc in &index.manifests {
            for name in names_of(desc, path)? {
                found.push((
                    name,
                    Source {
                        store: Arc::clone(&store),
                        kind: SourceKind::Layout(desc.clone()),
                    },
                ));
            }
        }
    }

    let Some(manifest_bytes) = small.get("manifest.json") else {
        if index.is_none() {
            return Err(source_error(
                path,
                "has neither index.json nor manifest.json at its top: it is not an oci-archive or docker save tarball",
            ));
        }
        return Ok(found);
    };
    let entries: Vec<DockerSaveEntry> = serde_json::from_slice(manifest_bytes).map_err(|e| {
        source_error(
            path,
            format!("has an unreadable manifest.json ({e}): save it again with docker save"),
        )
    })?;
    // Config digest -> index.json entry, built only if some tag needs it.
    let mut by_config: Option<HashMap<String, Descriptor>> = None;
    for entry in entries {
        for tag in entry.repo_tags.iter().flatten() {
            let name = normalize_reference(tag)
                .map_err(|e| source_error(path, format!("has an unusable RepoTags entry: {e}")))?;
            if found.iter().any(|(n, _)| *n == name) {
                continue;
            }
            let mut kind = None;
            if let (Some(index), Some(hex)) = (&index, hex_named_by(&entry.config)) {
                if by_config.is_none() {
                    let reader = Reader {
                        reference: &name,
                        store: &store,
                    };
                    let mut map = HashMap::new();
                    for desc in &index.manifests {
                        for config in reader.config_digests(desc)? {
                            map.entry(config).or_insert_with(|| desc.clone());
                        }
                    }
                    by_config = Some(map);
                }
                let map = by_config.as_ref().expect("filled above");
                kind = map
                    .get(&format!("sha256:{hex}"))
                    .map(|desc| SourceKind::Layout(desc.clone()));
            }
            let kind = match kind {
                Some(kind) => kind,
                None => docker_save_kind(path, &entry)?,
            };
            found.push((
                name,
                Source {
                    store: Arc::clone(&store),
                    kind,
                },
            ));
        }
    }
    Ok(found)
}

/// Member paths of a legacy entry, in the form the member index uses.
fn docker_save_kind(path: &Path, entry: &DockerSaveEntry) -> Result<SourceKind, ImageError> {
    let clean = |member: &str| {
        clean_member_path(Path::new(member)).ok_or_else(|| {
            source_error(
                path,
                format!("has a manifest.json naming {member:?}, outside the tarball: save it again with docker save"),
            )
        })
    };
    Ok(SourceKind::DockerSave {
        config: clean(&entry.config)?,
        layers: entry
            .layers
            .iter()
            .map(|l| clean(l))
            .collect::<Result<_, _>>()?,
    })
}

fn read_up_to(file: &mut fs::File, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match file.read(&mut buf[filled..])? {
            0 => break,
            n => filled += n,
        }
    }
    Ok(filled)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::fs;
    use std::io::Read;
    use std::path::Path;

    use edgeferry_bundle::format::Arch;
    use serde_json::{json, Value};
    use tempfile::TempDir;

    use super::{scan, sha256_hex};
    use crate::oci::{Blob, ImageError, ResolvedImage};
    use edgeferry_bundle::oci::{
        MEDIA_DOCKER_CONFIG, MEDIA_DOCKER_LAYER, MEDIA_DOCKER_MANIFEST, MEDIA_OCI_CONFIG,
        MEDIA_OCI_INDEX, MEDIA_OCI_LAYER_GZIP as MEDIA_OCI_LAYER, MEDIA_OCI_MANIFEST,
    };

    /// Blobs of a layout under construction, by hex digest.
    #[derive(Default)]
    struct Blobs(BTreeMap<String, Vec<u8>>);

    impl Blobs {
        fn add(&mut self, bytes: Vec<u8>) -> Value {
            let hex = sha256_hex(&bytes);
            let size = bytes.len();
            self.0.insert(hex.clone(), bytes);
            json!({ "digest": format!("sha256:{hex}"), "size": size })
        }

        fn add_typed(&mut self, media_type: &str, bytes: Vec<u8>) -> Value {
            let mut desc = self.add(bytes);
            desc["mediaType"] = json!(media_type);
            desc
        }

        /// One platform image: returns the manifest descriptor with platform.
        fn image(&mut self, architecture: &str, variant: Option<&str>) -> Value {
            let mut config = json!({
                "architecture": architecture,
                "os": "linux",
                "rootfs": { "type": "layers", "diff_ids": [] },
            });
            let mut platform = json!({ "architecture": architecture, "os": "linux" });
            if let Some(v) = variant {
                config["variant"] = json!(v);
                platform["variant"] = json!(v);
            }
            let layer = self.add_typed(
                MEDIA_OCI_LAYER,
                format!("layer for {architecture}{variant:?}").into_bytes(),
            );
            let config = self.add_typed(MEDIA_OCI_CONFIG, serde_json::to_vec(&config).unwrap());
            let manifest = json!({
                "schemaVersion": 2,
                "mediaType": MEDIA_OCI_MANIFEST,
                "config": config,
                "layers": [layer],
            });
            let mut desc = self.add_typed(
                MEDIA_OCI_MANIFEST,
                serde_json::to_vec_pretty(&manifest).unwrap(),
            );
            desc["platform"] = platform;
            desc
        }

        fn index(&mut self, manifests: Vec<Value>) -> Value {
            let index = json!({
                "schemaVersion": 2,
                "mediaType": MEDIA_OCI_INDEX,
                "manifests": manifests,
            });
            self.add_typed(MEDIA_OCI_INDEX, serde_json::to_vec_pretty(&index).unwrap())
        }

        /// An attestation entry, as BuildKit adds to multi-arch indexes.
        fn attestation(&mut self) -> Value {
            let mut desc = self.add_typed(MEDIA_OCI_MANIFEST, b"{}".to_vec());
            desc["platform"] = json!({ "architecture": "unknown", "os": "unknown" });
            desc["annotations"] = json!({ "vnd.docker.reference.type": "attestation-manifest" });
            desc
        }
    }

    fn named(mut desc: Value, annotations: Value) -> Value {
        desc["annotations"] = annotations;
        desc
    }

    /// Files of an OCI layout (relative path -> bytes).
    fn layout_files(blobs: &Blobs, top: Vec<Value>) -> Vec<(String, Vec<u8>)> {
        let index = json!({ "schemaVersion": 2, "manifests": top });
        let mut files = vec![
            (
                "oci-layout".to_string(),
                br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec(),
            ),
            (
                "index.json".to_string(),
                serde_json::to_vec(&index).unwrap(),
            ),
        ];
        for (hex, bytes) in &blobs.0 {
            files.push((format!("blobs/sha256/{hex}"), bytes.clone()));
        }
        files
    }

    fn write_dir(dir: &Path, files: &[(String, Vec<u8>)]) {
        for (path, bytes) in files {
            let path = dir.join(path);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(path, bytes).unwrap();
        }
    }

    fn write_tar(path: &Path, files: &[(String, Vec<u8>)], symlinks: &[(&str, &str)]) {
        let mut builder = tar::Builder::new(fs::File::create(path).unwrap());
        for (name, bytes) in files {
            let mut header = tar::Header::new_gnu();
            header.set_size(bytes.len() as u64);
            header.set_mode(0o644);
            header.set_cksum();
            builder
                .append_data(&mut header, name, bytes.as_slice())
                .unwrap();
        }
        for (name, target) in symlinks {
            let mut header = tar::Header::new_gnu();
            header.set_entry_type(tar::EntryType::Symlink);
            header.set_size(0);
            header.set_mode(0o777);
            builder.append_link(&mut header, name, target).unwrap();
        }
        builder.finish().unwrap();
    }

    fn read_all(blob: &Blob) -> Vec<u8> {
        let mut bytes = Vec::new();
        blob.source.open().unwrap().read_to_end(&mut bytes).unwrap();
        bytes
    }

    /// Every blob reads back as exactly the bytes its digest and size promise.
    fn assert_blobs_intact(image: &ResolvedImage) {
        for blob in image.blobs() {
            let bytes = read_all(blob);
            assert_eq!(bytes.len() as u64, blob.size, "{}", blob.digest);
            assert_eq!(format!("sha256:{}", sha256_hex(&bytes)), blob.digest);
        }
    }

    fn config_arch(image: &ResolvedImage) -> (String, Option<String>) {
        let config: Value = serde_json::from_slice(&read_all(&image.config)).unwrap();
        (
            config["architecture"].as_str().unwrap().to_string(),
            config["variant"].as_str().map(str::to_string),
        )
    }

    const INSTALLER: &str = "docker.io/kubeedge/installation-package:v1.23.1";

    /// A three-arch image (plus an attestation) named the way skopeo names it.
    fn multi_arch() -> (Blobs, Value) {
        let mut blobs = Blobs::default();
        let manifests = vec![
            blobs.image("amd64", None),
            blobs.image("arm64", Some("v8")),
            blobs.image("arm", Some("v7")),
            blobs.attestation(),
        ];
        let index = blobs.index(manifests);
        let top = named(
            index,
            json!({ "org.opencontainers.image.ref.name": INSTALLER }),
        );
        (blobs, top)
    }

    fn check_multi_arch(dir: &Path) {
        let catalog = scan(dir).unwrap();
        assert_eq!(catalog.references(), vec![INSTALLER.to_string()]);
        for (arch, platform, want) in [
            (Arch::Amd64, "linux/amd64", ("amd64", None)),
            (Arch::Arm64, "linux/arm64", ("arm64", Some("v8"))),
            (Arch::Arm, "linux/arm/v7", ("arm", Some("v7"))),
        ] {
            // Resolution takes the short name too: it is normalized first.
            let image = catalog
                .resolve("kubeedge/installation-package:v1.23.1", arch)
                .unwrap();
            assert_eq!(image.reference, INSTALLER);
            assert_eq!(image.platform, platform);
            let index = image.index.as_ref().expect("index kept");
            assert_eq!(index.media_type, MEDIA_OCI_INDEX);
            assert_eq!(image.manifest.media_type, MEDIA_OCI_MANIFEST);
            assert_eq!(image.config.media_type, MEDIA_OCI_CONFIG);
            assert_eq!(image.layers.len(), 1);
            assert_eq!(image.layers[0].media_type, MEDIA_OCI_LAYER);
            let (a, v) = config_arch(&image);
            assert_eq!((a.as_str(), v.as_deref()), want);
            assert_blobs_intact(&image);
        }
    }

    #[test]
    fn oci_layout_multi_arch_resolves_each_arch() {
        let tmp = TempDir::new().unwrap();
        let (blobs, top) = multi_arch();
        write_dir(
            &tmp.path().join("installer"),
            &layout_files(&blobs, vec![top]),
        );
        check_multi_arch(tmp.path());
    }

    #[test]
    fn oci_archive_multi_arch_resolves_each_arch() {
        let tmp = TempDir::new().unwrap();
        let (blobs, top) = multi_arch();
        // Some tools prefix members with "./"; lookups must not care.
        let files: Vec<_> = layout_files(&blobs, vec![top])
            .into_iter()
            .enumerate()
            .map(|(i, (p, b))| {
                if i % 2 == 0 {
                    (format!("./{p}"), b)
                } else {
                    (p, b)
                }
            })
            .collect();
        write_tar(&tmp.path().join("installer.tar"), &files, &[]);
        check_multi_arch(tmp.path());
        let image = scan(tmp.path())
            .unwrap()
            .resolve(INSTALLER, Arch::Arm64)
            .unwrap();
        assert!(matches!(
            image.manifest.source,
            crate::oci::BlobSource::TarMember { .. }
        ));
    }

    #[test]
    fn containerd_name_is_preferred_and_bare_tag_ignored() {
        let tmp = TempDir::new().unwrap();
        let mut blobs = Blobs::default();
        let a = blobs.image("amd64", None);
        let b = blobs.image("arm64", None);
        let top = vec![
            named(
                a,
                json!({
                    "io.containerd.image.name": "registry.k8s.io/pause:3.10",
                    "org.opencontainers.image.ref.name": "3.10",
                }),
            ),
            named(b, json!({ "org.opencontainers.image.ref.name": "v1.23.1" })),
        ];
        write_dir(&tmp.path().join("mixed"), &layout_files(&blobs, top));
        let catalog = scan(tmp.path()).unwrap();
        assert_eq!(catalog.references(), vec!["registry.k8s.io/pause:3.10"]);
        let err = catalog.resolve("v1.23.1", Arch::Arm64).unwrap_err();
        assert!(matches!(err, ImageError::NotFound { .. }), "{err}");
        assert!(err.to_string().contains("docker.io/library/v1.23.1:latest"));
    }

    #[test]
    fn single_platform_manifest_checks_config_arch() {
        let tmp = TempDir::new().unwrap();
        let mut blobs = Blobs::default();
        let manifest = blobs.image("arm", None);
        let top = named(
            manifest,
            json!({ "org.opencontainers.image.ref.name": "eclipse-mosquitto:1.6.15" }),
        );
        write_dir(
            &tmp.path().join("mosquitto"),
            &layout_files(&blobs, vec![top]),
        );
        let catalog = scan(tmp.path()).unwrap();
        let image = catalog
            .resolve("docker.io/library/eclipse-mosquitto:1.6.15", Arch::Arm)
            .unwrap();
        assert!(image.index.is_none());
        assert_eq!(image.platform, "linux/arm/v7");
        assert_blobs_intact(&image);
        let err = catalog
            .resolve("eclipse-mosquitto:1.6.15", Arch::Arm64)
            .unwrap_err();
        assert!(matches!(err, ImageError::NoPlatform { .. }), "{err}");
        assert!(err.to_string().contains("(it has linux/arm)"), "{err}");
    }

    #[test]
    fn missing_platform_names_image_arch_and_platforms() {
        let tmp = TempDir::new().unwrap();
        let mut blobs = Blobs::default();
        let manifests = vec![
            blobs.image("amd64", None),
            blobs.image("arm", Some("v6")),
            blobs.attestation(),
        ];
        let index = blobs.index(manifests);
        let top = named(
            index,
            json!({ "io.containerd.image.name": "eclipse-mosquitto:1.6.15" }),
        );
        write_dir(&tmp.path().join("m"), &layout_files(&blobs, vec![top]));
        let catalog = scan(tmp.path()).unwrap();
        let err = catalog
            .resolve("eclipse-mosquitto:1.6.15", Arch::Arm)
            .unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, ImageError::NoPlatform { .. }), "{msg}");
        assert!(
            msg.contains("docker.io/library/eclipse-mosquitto:1.6.15"),
            "{msg}"
        );
        assert!(msg.contains("linux/arm "), "{msg}");
        assert!(msg.contains("linux/amd64, linux/arm/v6)"), "{msg}");
        assert!(!msg.contains("unknown"), "{msg}");
        assert!(catalog
            .resolve("eclipse-mosquitto:1.6.15", Arch::Amd64)
            .is_ok());
    }

    #[test]
    fn arm_without_variant_is_taken_only_without_v7() {
        let tmp = TempDir::new().unwrap();
        let mut blobs = Blobs::default();
        let plain = blobs.image("arm", None);
        let v7 = blobs.image("arm", Some("v7"));
        let v7_digest = v7["digest"].clone();
        let both = blobs.index(vec![plain.clone(), v7]);
        let only_plain = blobs.index(vec![plain.clone()]);
        let top = vec![
            named(both, json!({ "io.containerd.image.name": "x/both:1" })),
            named(
                only_plain,
                json!({ "io.containerd.image.name": "x/plain:1" }),
            ),
        ];
        write_dir(&tmp.path().join("l"), &layout_files(&blobs, top));
        let catalog = scan(tmp.path()).unwrap();
        let image = catalog.resolve("x/both:1", Arch::Arm).unwrap();
        assert_eq!(json!(image.manifest.digest), v7_digest);
        let image = catalog.resolve("x/plain:1", Arch::Arm).unwrap();
        assert_eq!(json!(image.manifest.digest), plain["digest"]);
    }

    #[test]
    fn corrupt_json_blob_is_a_digest_mismatch() {
        let tmp = TempDir::new().unwrap();
        let (blobs, top) = multi_arch();
        let dir = tmp.path().join("installer");
        write_dir(&dir, &layout_files(&blobs, vec![top.clone()]));
        // Same size, different bytes: only the hash can tell.
        let hex = top["digest"]
            .as_str()
            .unwrap()
            .strip_prefix("sha256:")
            .unwrap();
        let path = dir.join("blobs/sha256").join(hex);
        let mut bytes = fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0x01;
        fs::write(&path, &bytes).unwrap();
        let err = scan(tmp.path())
            .unwrap()
            .resolve(INSTALLER, Arch::Amd64)
            .unwrap_err();
        let msg = err.to_string();
        let ImageError::DigestMismatch {
            expected, actual, ..
        } = &err
        else {
            panic!("{msg}");
        };
        assert_eq!(expected, hex);
        assert_eq!(actual, &sha256_hex(&bytes));
        assert!(msg.contains(hex) && msg.contains(actual.as_str()), "{msg}");
        assert!(msg.contains(INSTALLER), "{msg}");
    }

    #[test]
    fn corrupt_config_in_archive_is_a_digest_mismatch() {
        let tmp = TempDir::new().unwrap();
        let (mut blobs, top) = multi_arch();
        let image = tmp.path().join("a");
        write_dir(&image, &layout_files(&blobs, vec![top.clone()]));
        let amd64 = scan(tmp.path())
            .unwrap()
            .resolve(INSTALLER, Arch::Amd64)
            .unwrap();
        fs::remove_dir_all(&image).unwrap();
        let hex = amd64.config.digest.strip_prefix("sha256:").unwrap();
        let config = blobs.0.get_mut(hex).unwrap();
        config[0] = b' ';
        write_tar(
            &tmp.path().join("a.tar"),
            &layout_files(&blobs, vec![top]),
            &[],
        );
        let catalog = scan(tmp.path()).unwrap();
        let err = catalog.resolve(INSTALLER, Arch::Amd64).unwrap_err();
        assert!(matches!(err, ImageError::DigestMismatch { .. }), "{err}");
        assert!(err.to_string().contains("a.tar"), "{err}");
        assert!(catalog.resolve(INSTALLER, Arch::Arm64).is_ok());
    }

    #[test]
    fn nested_index_is_invalid() {
        let tmp = TempDir::new().unwrap();
        let mut blobs = Blobs::default();
        let inner = blobs.image("amd64", None);
        let mut inner_index = blobs.index(vec![inner]);
        inner_index["platform"] = json!({ "architecture": "amd64", "os": "linux" });
        let outer = blobs.index(vec![inner_index]);
        let top = named(outer, json!({ "io.containerd.image.name": "x/nested:1" }));
        write_dir(&tmp.path().join("n"), &layout_files(&blobs, vec![top]));
        let err = scan(tmp.path())
            .unwrap()
            .resolve("x/nested:1", Arch::Amd64)
            .unwrap_err();
        assert!(matches!(err, ImageError::Invalid { .. }), "{err}");
        assert!(err.to_string().contains("nested"), "{err}");
    }

    /// A `docker save` from before Docker 25: config `<hex>.json`, layers
    /// `<id>/layer.tar`, no index.json.
    fn legacy_save(path: &Path, tag: &str, architecture: &str) -> (Vec<u8>, Vec<u8>) {
        let config = serde_json::to_vec(&json!({
            "architecture": architecture,
            "os": "linux",
            "rootfs": { "type": "layers", "diff_ids": [] },
        }))
        .unwrap();
        let config_hex = sha256_hex(&config);
        let layer = format!("a plain tar layer for {architecture}").into_bytes();
        let id = "1111111111111111111111111111111111111111111111111111111111111111";
        let manifest = json!([{
            "Config": format!("{config_hex}.json"),
            "RepoTags": [tag],
            "Layers": [format!("{id}/layer.tar")],
        }]);
        let files = vec![
            (format!("{id}/VERSION"), b"1.0".to_vec()),
            (format!("{id}/json"), b"{}".to_vec()),
            (format!("{id}/layer.tar"), layer.clone()),
            (format!("{config_hex}.json"), config.clone()),
            (
                "manifest.json".to_string(),
                serde_json::to_vec(&manifest).unwrap(),
            ),
            ("repositories".to_string(), b"{}".to_vec()),
        ];
        write_tar(path, &files, &[]);
        (config, layer)
    }

    #[test]
    fn legacy_docker_save_gets_a_synthesized_manifest() {
        let tmp = TempDir::new().unwrap();
        let (config, layer) = legacy_save(
            &tmp.path().join("mosquitto.tar"),
            "eclipse-mosquitto:1.6.15",
            "arm64",
        );
        let catalog = scan(tmp.path()).unwrap();
        assert_eq!(
            catalog.references(),
            vec!["docker.io/library/eclipse-mosquitto:1.6.15"]
        );
        let image = catalog
            .resolve("eclipse-mosquitto:1.6.15", Arch::Arm64)
            .unwrap();
        assert!(image.index.is_none());
        assert_eq!(image.platform, "linux/arm64");
        assert_eq!(image.manifest.media_type, MEDIA_DOCKER_MANIFEST);
        assert_eq!(read_all(&image.config), config);
        assert_eq!(read_all(&image.layers[0]), layer);
        assert_eq!(image.layers[0].media_type, MEDIA_DOCKER_LAYER);
        assert_blobs_intact(&image);
        let manifest: Value = serde_json::from_slice(&read_all(&image.manifest)).unwrap();
        assert_eq!(
            manifest,
            json!({
                "schemaVersion": 2,
                "mediaType": MEDIA_DOCKER_MANIFEST,
                "config": {
                    "mediaType": MEDIA_DOCKER_CONFIG,
                    "size": config.len(),
                    "digest": format!("sha256:{}", sha256_hex(&config)),
                },
                "layers": [{
                    "mediaType": MEDIA_DOCKER_LAYER,
                    "size": layer.len(),
                    "digest": format!("sha256:{}", sha256_hex(&layer)),
                }],
            })
        );
        // Same input, same bytes: the bundle id depends on it.
        let again = catalog
            .resolve("eclipse-mosquitto:1.6.15", Arch::Arm64)
            .unwrap();
        assert_eq!(read_all(&again.manifest), read_all(&image.manifest));

        let err = catalog
            .resolve("eclipse-mosquitto:1.6.15", Arch::Amd64)
            .unwrap_err();
        assert!(matches!(err, ImageError::NoPlatform { .. }), "{err}");
        assert!(err.to_string().contains("(it has linux/arm64)"), "{err}");
    }

    #[test]
    fn one_docker_save_per_arch_under_the_same_name() {
        let tmp = TempDir::new().unwrap();
        legacy_save(
            &tmp.path().join("pause-amd64.tar"),
            "registry.k8s.io/pause:3.10",
            "amd64",
        );
        legacy_save(
            &tmp.path().join("pause-arm64.tar"),
            "registry.k8s.io/pause:3.10",
            "arm64",
        );
        let catalog = scan(tmp.path()).unwrap();
        for arch in [Arch::Amd64, Arch::Arm64] {
            let image = catalog.resolve("registry.k8s.io/pause:3.10", arch).unwrap();
            assert_eq!(config_arch(&image).0, arch.as_str());
        }
        let err = catalog
            .resolve("registry.k8s.io/pause:3.10", Arch::Arm)
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("(it has linux/amd64, linux/arm64)"),
            "{err}"
        );
    }

    #[test]
    fn docker_25_save_uses_the_oci_layout_inside() {
        let tmp = TempDir::new().unwrap();
        let mut blobs = Blobs::default();
        let manifest = blobs.image("amd64", None);
        let manifest_digest = manifest["digest"].as_str().unwrap().to_string();
        let doc: Value =
            serde_json::from_slice(&blobs.0[manifest_digest.strip_prefix("sha256:").unwrap()])
                .unwrap();
        let config_hex = doc["config"]["digest"].as_str().unwrap()[7..].to_string();
        let layer_hex = doc["layers"][0]["digest"].as_str().unwrap()[7..].to_string();
        let mut entry = manifest.clone();
        entry.as_object_mut().unwrap().remove("platform");
        let top = named(
            entry,
            json!({
                "io.containerd.image.name": "docker.io/library/busybox:1.36",
                "org.opencontainers.image.ref.name": "1.36",
            }),
        );
        let mut files = layout_files(&blobs, vec![top]);
        let save_manifest = json!([{
            "Config": format!("blobs/sha256/{config_hex}"),
            // The second tag has no annotation: it is matched by config digest.
            "RepoTags": ["busybox:1.36", "registry.example:5000/tools/busybox:stable"],
            "Layers": [format!("blobs/sha256/{layer_hex}")],
            "LayerSources": {},
        }]);
        files.push((
            "manifest.json".to_string(),
            serde_json::to_vec(&save_manifest).unwrap(),
        ));
        let link = format!("{layer_hex}/layer.tar");
        let link_target = format!("../blobs/sha256/{layer_hex}");
        write_tar(
            &tmp.path().join("busybox.tar"),
            &files,
            &[(link.as_str(), link_target.as_str())],
        );

        let catalog = scan(tmp.path()).unwrap();
        assert_eq!(
            catalog.references(),
            vec![
                "docker.io/library/busybox:1.36".to_string(),
                "registry.example:5000/tools/busybox:stable".to_string(),
            ]
        );
        for reference in catalog.references() {
            let image = catalog.resolve(&reference, Arch::Amd64).unwrap();
            assert_eq!(image.manifest.digest, manifest_digest, "{reference}");
            assert_eq!(image.manifest.media_type, MEDIA_OCI_MANIFEST);
            assert!(image.index.is_none());
            assert_blobs_intact(&image);
        }
    }

    #[test]
    fn docker_25_save_with_unnamed_index_matches_by_config() {
        // Old-style paths that are symlinks into blobs/, and an index.json
        // entry with no usable name: the RepoTags name it via the config.
        let tmp = TempDir::new().unwrap();
        let mut blobs = Blobs::default();
        let amd64 = blobs.image("amd64", None);
        let arm64 = blobs.image("arm64", None);
        let amd64_doc: Value =
            serde_json::from_slice(&blobs.0[&amd64["digest"].as_str().unwrap()[7..]]).unwrap();
        let config_hex = amd64_doc["config"]["digest"].as_str().unwrap()[7..].to_string();
        let layer_hex = amd64_doc["layers"][0]["digest"].as_str().unwrap()[7..].to_string();
        let index = blobs.index(vec![amd64, arm64.clone()]);
        let index_digest = index["digest"].clone();
        let top = named(
            index,
            json!({ "org.opencontainers.image.ref.name": "latest" }),
        );
        // Docker keeps only the platform it has: drop arm64's manifest.
        blobs.0.remove(&arm64["digest"].as_str().unwrap()[7..]);
        let mut files = layout_files(&blobs, vec![top]);
        files.push((
            "manifest.json".to_string(),
            serde_json::to_vec(&json!([{
                "Config": format!("blobs/sha256/{config_hex}"),
                "RepoTags": ["kubeedge/pause:3.6"],
                "Layers": ["0000/layer.tar"],
            }]))
            .unwrap(),
        ));
        let target = format!("../blobs/sha256/{layer_hex}");
        write_tar(
            &tmp.path().join("pause.tar"),
            &files,
            &[("0000/layer.tar", target.as_str())],
        );
        let catalog = scan(tmp.path()).unwrap();
        let image = catalog.resolve("kubeedge/pause:3.6", Arch::Amd64).unwrap();
        assert_eq!(json!(image.index.as_ref().unwrap().digest), index_digest);
        assert_blobs_intact(&image);
        let err = catalog
            .resolve("kubeedge/pause:3.6", Arch::Arm64)
            .unwrap_err();
        assert!(matches!(err, ImageError::Invalid { .. }), "{err}");
        assert!(err.to_string().contains("missing"), "{err}");
    }

    #[test]
    fn legacy_layer_paths_may_be_symlinks() {
        let tmp = TempDir::new().unwrap();
        let config = br#"{"architecture":"amd64","os":"linux"}"#.to_vec();
        let config_hex = sha256_hex(&config);
        let layer = b"layer bytes".to_vec();
        let layer_hex = sha256_hex(&layer);
        let files = vec![
            (format!("blobs/sha256/{config_hex}"), config),
            (format!("blobs/sha256/{layer_hex}"), layer.clone()),
            (
                "manifest.json".to_string(),
                serde_json::to_vec(&json!([{
                    "Config": format!("blobs/sha256/{config_hex}"),
                    "RepoTags": ["x/y:1"],
                    "Layers": ["abc/layer.tar"],
                }]))
                .unwrap(),
            ),
        ];
        let target = format!("../blobs/sha256/{layer_hex}");
        write_tar(
            &tmp.path().join("y.tar"),
            &files,
            &[("abc/layer.tar", target.as_str())],
        );
        let image = scan(tmp.path())
            .unwrap()
            .resolve("x/y:1", Arch::Amd64)
            .unwrap();
        assert_eq!(read_all(&image.layers[0]), layer);
        assert_blobs_intact(&image);
    }

    #[test]
    fn compressed_tarballs_are_refused_with_advice() {
        let tmp = TempDir::new().unwrap();
        fs::write(tmp.path().join("x.tar.gz"), b"\x1f\x8b\x08\x00").unwrap();
        let err = scan(tmp.path()).unwrap_err();
        assert!(matches!(err, ImageError::Invalid { .. }), "{err}");
        let msg = err.to_string();
        assert!(msg.contains("x.tar.gz") && msg.contains("gunzip"), "{msg}");
        assert!(!msg.ends_with('.') && !msg.contains('\n'), "{msg}");

        fs::remove_file(tmp.path().join("x.tar.gz")).unwrap();
        fs::write(tmp.path().join("x.tar"), b"\x1f\x8b\x08\x00\x00\x00").unwrap();
        let msg = scan(tmp.path()).unwrap_err().to_string();
        assert!(msg.contains("gzip-compressed"), "{msg}");
    }

    #[test]
    fn missing_dir_is_an_empty_catalog_and_others_are_ignored() {
        let tmp = TempDir::new().unwrap();
        let catalog = scan(&tmp.path().join("nope")).unwrap();
        assert!(catalog.references().is_empty());
        let err = catalog.resolve("busybox", Arch::Amd64).unwrap_err();
        assert!(matches!(err, ImageError::NotFound { .. }), "{err}");
        assert!(err.to_string().contains("docker.io/library/busybox:latest"));

        fs::write(tmp.path().join("README.md"), b"hi").unwrap();
        fs::create_dir(tmp.path().join("not-a-layout")).unwrap();
        assert!(scan(tmp.path()).unwrap().references().is_empty());
    }

    #[test]
    fn a_tar_that_is_no_image_is_refused() {
        let tmp = TempDir::new().unwrap();
        write_tar(
            &tmp.path().join("junk.tar"),
            &[("hello.txt".to_string(), b"hi".to_vec())],
            &[],
        );
        let msg = scan(tmp.path()).unwrap_err().to_string();
        assert!(msg.contains("junk.tar") && msg.contains("neither"), "{msg}");
    }
}
