//! Reading images from local sources (OCI layout directories, oci-archive
//! tarballs, `docker save` tarballs) and resolving one reference to one
//! platform, without copying blob bytes anywhere: a [`Blob`] says where its
//! bytes live and the packer streams them straight into the bundle.
//!
//! INTERFACE CONTRACT (owned by the builder; the helper implementing the
//! bodies must keep these signatures):
//! - `scan(dir)` finds every image source below `dir` and indexes it by
//!   normalized reference.
//! - `ImageCatalog::resolve(reference, arch)` returns a [`ResolvedImage`]
//!   for exactly that platform, or an [`ImageError`] naming the image and arch.
//! - Small JSON blobs (index, manifest, config) are read whole, their sha256
//!   and size checked against the descriptor *before* they are parsed.
//!   Layer blobs are not read here; the packer verifies them while streaming.

pub(crate) mod platform;
mod reference;
mod source;

use std::io::{self, Read};
use std::path::PathBuf;
use std::sync::Arc;

use edgeferry_bundle::format::Arch;

pub use reference::normalize_reference;
pub use source::{scan, ImageCatalog};

/// Where a blob's bytes live.
#[derive(Clone, Debug)]
pub enum BlobSource {
    /// A file of its own (a blob in an OCI layout directory).
    File(PathBuf),
    /// A member of an uncompressed tar archive (oci-archive, docker save).
    TarMember {
        archive: PathBuf,
        offset: u64,
        size: u64,
    },
    /// Bytes we made (the manifest synthesized for a legacy `docker save`).
    Bytes(Arc<Vec<u8>>),
}

impl BlobSource {
    pub fn open(&self) -> io::Result<Box<dyn Read + Send>> {
        use std::io::{Seek, SeekFrom};
        match self {
            BlobSource::File(path) => Ok(Box::new(std::fs::File::open(path)?)),
            BlobSource::TarMember {
                archive,
                offset,
                size,
            } => {
                let mut file = std::fs::File::open(archive)?;
                file.seek(SeekFrom::Start(*offset))?;
                Ok(Box::new(file.take(*size)))
            }
            BlobSource::Bytes(bytes) => Ok(Box::new(io::Cursor::new(Arc::clone(bytes).to_vec()))),
        }
    }
}

/// One content-addressed blob and where to read it.
#[derive(Clone, Debug)]
pub struct Blob {
    /// `sha256:<hex>`.
    pub digest: String,
    pub size: u64,
    pub media_type: String,
    pub source: BlobSource,
}

/// One image resolved to one platform, ready to pack.
#[derive(Clone, Debug)]
pub struct ResolvedImage {
    /// Full upstream name, e.g. `docker.io/library/eclipse-mosquitto:1.6.15`.
    pub reference: String,
    /// The upstream multi-arch index or manifest list, byte-exact, when the
    /// source had one. Kept so that pulls by the upstream index digest work.
    pub index: Option<Blob>,
    /// The platform manifest (OCI or Docker schema 2).
    pub manifest: Blob,
    pub config: Blob,
    pub layers: Vec<Blob>,
    /// `linux/amd64`, `linux/arm64`, `linux/arm/v7`.
    pub platform: String,
}

impl ResolvedImage {
    /// Every blob of the image, index first; duplicates are the caller's to drop.
    pub fn blobs(&self) -> impl Iterator<Item = &Blob> {
        self.index
            .iter()
            .chain(std::iter::once(&self.manifest))
            .chain(std::iter::once(&self.config))
            .chain(self.layers.iter())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("image {reference} not found in {searched}: put an OCI layout, oci-archive or docker-save tarball carrying that name under images/")]
    NotFound { reference: String, searched: String },
    #[error("image {reference} has no linux/{arch} platform (it has {available}): fetch the multi-arch image or one built for {arch}")]
    NoPlatform {
        reference: String,
        arch: Arch,
        available: String,
    },
    #[error("image {reference} blob {digest} in {location}: expected sha256 {expected}, got {actual}: the source is corrupt, fetch it again")]
    DigestMismatch {
        reference: String,
        digest: String,
        location: String,
        expected: String,
        actual: String,
    },
    #[error("image {reference}: {detail}")]
    Invalid { reference: String, detail: String },
    #[error("reading image source {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: io::Error,
    },
}
