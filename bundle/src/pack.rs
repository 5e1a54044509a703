//! Writing a bundle: manifest, its signature, then every entry, as one tar
//! stream through multithreaded zstd into a temp file that is renamed into
//! place only when everything checked out.

use std::collections::BTreeMap;
use std::collections::HashSet;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::atomic;
use crate::format::{self, Entry, Manifest};
use crate::hashing::{HashingWriter, VerifyingReader};
use crate::sign::SigningKey;

/// Where an entry's bytes come from; opened once, when it is its turn.
pub enum Source {
    Bytes(Vec<u8>),
    Open(Box<dyn Fn() -> io::Result<Box<dyn Read + Send>> + Send + Sync>),
}

/// One entry to pack. `size` and `sha256` are claimed in the manifest before
/// the bytes are read, then checked while they stream; a source that lies
/// aborts the pack.
pub struct PackEntry {
    pub path: String,
    pub size: u64,
    pub sha256: String,
    pub source: Source,
}

impl PackEntry {
    pub fn bytes(path: impl Into<String>, data: Vec<u8>) -> PackEntry {
        PackEntry {
            path: path.into(),
            size: data.len() as u64,
            sha256: crate::hashing::sha256_hex(&data),
            source: Source::Bytes(data),
        }
    }
}

#[derive(Clone, Debug)]
pub struct PackOptions {
    /// zstd level; gzip'd layers do not recompress, so 3 is the sweet spot.
    pub level: i32,
    /// zstd worker threads; always at least 1, because zstd's output is the
    /// same for any worker count >= 1 but differs from single-threaded mode.
    pub workers: u32,
    /// mtime of every tar entry.
    pub mtime: u64,
}

impl Default for PackOptions {
    fn default() -> Self {
        PackOptions {
            level: 3,
            workers: std::thread::available_parallelism()
                .map(|n| n.get() as u32)
                .unwrap_or(1),
            mtime: 0,
        }
    }
}

/// What a successful pack published.
#[derive(Clone, Debug)]
pub struct Packed {
    pub bundle: PathBuf,
    pub signature: PathBuf,
    pub sums: PathBuf,
    pub sha256: String,
    pub size: u64,
    pub manifest: Manifest,
}

/// Packs `entries` under `manifest` (whose `entries` and `bundle_id` are
/// filled in here) into `out_dir`. `progress` is told each chunk's size.
pub fn pack(
    mut manifest: Manifest,
    entries: Vec<PackEntry>,
    key: &SigningKey,
    out_dir: &Path,
    options: &PackOptions,
    progress: &mut dyn FnMut(u64),
) -> Result<Packed> {
    let mut seen = HashSet::new();
    for entry in &entries {
        format::check_entry_path(&entry.path)?;
        if entry.path == format::MANIFEST_PATH || entry.path == format::SIGNATURE_PATH {
            bail!(
                "entry {} collides with the manifest or its signature",
                entry.path
            );
        }
        if !seen.insert(entry.path.as_str()) {
            bail!("entry {} is listed twice", entry.path);
        }
    }
    for omitted in manifest.expected_present() {
        format::check_entry_path(&omitted.path)?;
        if !seen.insert(omitted.path.as_str()) {
            bail!(
                "entry {} is both packed and listed as expected present",
                omitted.path
            );
        }
    }
    manifest.entries = entries
        .iter()
        .map(|e| Entry {
            path: e.path.clone(),
            size: e.size,
            sha256: e.sha256.clone(),
        })
        .collect();
    manifest.bundle_id = manifest.compute_id();
    let manifest_bytes = manifest.to_bytes();
    let manifest_signature = key.sign_bytes(&manifest_bytes, &format::trusted_comment(&manifest));

    std::fs::create_dir_all(out_dir)
        .with_context(|| format!("creating output directory {}", out_dir.display()))?;
    let name = format::bundle_file_name(&manifest.kubeedge_version, manifest.arch);
    let bundle_path = out_dir.join(&name);
    let tmp = atomic::temp_beside(&bundle_path)?;
    let file = tmp.as_file().try_clone()?;

    let hashing = HashingWriter::new(io::BufWriter::with_capacity(1 << 20, file));
    let mut encoder = zstd::Encoder::new(hashing, options.level)?;
    encoder.multithread(options.workers.max(1))?;
    // zstd's default job at level 3 is 8 MiB, and it keeps several per
    // worker: ~72 MiB peak. 4 MiB jobs halve that at +0.07% size (measured).
    encoder.set_parameter(zstd::stream::raw::CParameter::JobSize(4 << 20))?;
    encoder.include_checksum(true)?;
    let mut tar = tar::Builder::new(encoder);
    append(
        &mut tar,
        format::MANIFEST_PATH,
        &manifest_bytes[..],
        manifest_bytes.len() as u64,
        options.mtime,
    )?;
    append(
        &mut tar,
        format::SIGNATURE_PATH,
        manifest_signature.as_bytes(),
        manifest_signature.len() as u64,
        options.mtime,
    )?;
    for entry in entries {
        let reader: Box<dyn Read + Send> = match entry.source {
            Source::Bytes(data) => Box::new(io::Cursor::new(data)),
            Source::Open(open) => {
                open().with_context(|| format!("opening the source of {}", entry.path))?
            }
        };
        // tar copies through an 8 KiB buffer; read the source in 1 MiB.
        let reader = io::BufReader::with_capacity(1 << 20, reader);
        let verified = VerifyingReader::new(reader, &entry.path, entry.size, &entry.sha256);
        let counted = ProgressReader {
            inner: verified,
            progress: &mut *progress,
        };
        append(&mut tar, &entry.path, counted, entry.size, options.mtime)
            .with_context(|| format!("packing {}", entry.path))?;
    }
    let encoder = tar.into_inner().context("finishing the tar stream")?;
    let hashing = encoder.finish().context("finishing the zstd stream")?;
    let (buffered, digests) = hashing.finish();
    buffered
        .into_inner()
        .map_err(|e| e.into_error())
        .context("flushing the bundle")?;

    let signature_path = out_dir.join(format!("{name}.minisig"));
    let file_comment = format!(
        "edgeferry-bundle-file name={name} id={} kubeedge={} arch={} sequence={}{}",
        manifest.bundle_id,
        manifest.kubeedge_version,
        manifest.arch,
        manifest.sequence,
        if manifest.sample { " sample" } else { "" }
    );
    let file_signature = key.sign_prehashed(&digests.blake2b, &file_comment);
    // The signature goes first: a bundle is never visible without it.
    atomic::write_file(&signature_path, file_signature.as_bytes(), 0o644)?;
    atomic::persist(tmp, &bundle_path, 0o644)?;
    let sums = out_dir.join("SHA256SUMS");
    update_sums(&sums, &[(name.clone(), digests.sha256.clone())])?;
    Ok(Packed {
        bundle: bundle_path,
        signature: signature_path,
        sums,
        sha256: digests.sha256,
        size: digests.size,
        manifest,
    })
}

/// Rewrites `SHA256SUMS` with `updates` replacing lines of the same name,
/// so bundles for several arches can share one output directory.
pub fn update_sums(path: &Path, updates: &[(String, String)]) -> Result<()> {
    let mut lines = BTreeMap::new();
    if let Ok(text) = std::fs::read_to_string(path) {
        for line in text.lines() {
            if let Some((hash, name)) = line.split_once("  ") {
                lines.insert(name.to_string(), hash.to_string());
            }
        }
    }
    for (name, hash) in updates {
        lines.insert(name.clone(), hash.clone());
    }
    let text: String = lines
        .iter()
        .map(|(name, hash)| format!("{hash}  {name}\n"))
        .collect();
    atomic::write_file(path, text.as_bytes(), 0o644)
}

fn append<W: Write>(
    tar: &mut tar::Builder<W>,
    path: &str,
    data: impl Read,
    size: u64,
    mtime: u64,
) -> io::Result<()> {
    let mut header = tar::Header::new_ustar();
    header.set_path(path)?;
    header.set_size(size);
    header.set_mode(format::ENTRY_MODE);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(mtime);
    header.set_entry_type(tar::EntryType::Regular);
    header.set_cksum();
    tar.append(&header, data)
}

struct ProgressReader<'a, R> {
    inner: R,
    progress: &'a mut dyn FnMut(u64),
}

impl<R: Read> Read for ProgressReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        (self.progress)(n as u64);
        Ok(n)
    }
}
