//! Writing a bundle: manifest, its signature, then every entry, as one tar
//! stream through multithreaded zstd into a temp file that is renamed into
//! place only when everything checked out.

use std::collections::BTreeMap;
use std::collections::HashSet;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::thread::JoinHandle;

use anyhow::{bail, Context, Result};

use crate::atomic;
use crate::format::{self, Entry, Manifest};
use crate::hashing::{HashingFile, VerifyingReader};
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

    let sink = HashingFile::new(file);
    let mut encoder = zstd::Encoder::new(sink, options.level)?;
    encoder.multithread(options.workers.max(1))?;
    // zstd's default job at level 3 is 8 MiB, and it keeps several per
    // worker: ~72 MiB peak. 4 MiB jobs halve that at +0.07% size (measured).
    encoder.set_parameter(zstd::stream::raw::CParameter::JobSize(4 << 20))?;
    encoder.include_checksum(true)?;
    let mut tar = TarWriter {
        out: encoder,
        mtime: options.mtime,
    };
    tar.append_bytes(format::MANIFEST_PATH, &manifest_bytes)?;
    tar.append_bytes(format::SIGNATURE_PATH, manifest_signature.as_bytes())?;
    let listed: Vec<(String, u64)> = entries.iter().map(|e| (e.path.clone(), e.size)).collect();
    let reader = EntryReader::spawn(entries);
    for (path, size) in listed {
        tar.header(&path, size)?;
        let mut left = size;
        while left > 0 {
            let Some((chunk, n)) = reader.next() else {
                return Err(reader.failure());
            };
            tar.out
                .write_all(&chunk[..n])
                .with_context(|| format!("packing {path}"))?;
            reader.give_back(chunk);
            progress(n as u64);
            left -= n as u64;
        }
        tar.pad(size)?;
    }
    reader.finish()?;
    let encoder = tar.finish().context("finishing the tar stream")?;
    let sink = encoder.finish().context("finishing the zstd stream")?;
    let digests = sink.finish().context("writing the bundle")?;

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

/// The tar stream, written as `tar::Builder` writes it (ustar header,
/// data, zero padding to 512, two zero blocks at the end) but with the
/// data handed to zstd in the reader's 256 KiB chunks rather than
/// `io::copy`'s 8 KiB: each write is a call into zstd.
struct TarWriter<W> {
    out: W,
    mtime: u64,
}

impl<W: Write> TarWriter<W> {
    fn header(&mut self, path: &str, size: u64) -> io::Result<()> {
        let mut header = tar::Header::new_ustar();
        header.set_path(path)?;
        header.set_size(size);
        header.set_mode(format::ENTRY_MODE);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(self.mtime);
        header.set_entry_type(tar::EntryType::Regular);
        header.set_cksum();
        self.out.write_all(header.as_bytes())
    }

    fn pad(&mut self, size: u64) -> io::Result<()> {
        let partial = (size % 512) as usize;
        if partial > 0 {
            self.out.write_all(&[0u8; 512][partial..])?;
        }
        Ok(())
    }

    fn append_bytes(&mut self, path: &str, data: &[u8]) -> io::Result<()> {
        self.header(path, data.len() as u64)?;
        self.out.write_all(data)?;
        self.pad(data.len() as u64)
    }

    fn finish(mut self) -> io::Result<W> {
        self.out.write_all(&[0u8; 1024])?;
        Ok(self.out)
    }
}

/// Bytes of an entry read at a time.
const READ_CHUNK: usize = 256 << 10;
/// Chunks in flight between the reading thread and the packing one.
const READ_BUFFERS: usize = 4;

/// A thread that opens each entry's source in turn, reads it in 256 KiB
/// chunks and checks its size and sha256 as they pass, so that hashing the
/// input runs beside zstd's feeding instead of before it. A source that
/// lies stops the thread with its error; [`EntryReader::failure`] returns it.
struct EntryReader {
    chunks: mpsc::Receiver<(Vec<u8>, usize)>,
    free: Option<mpsc::Sender<Vec<u8>>>,
    thread: Option<JoinHandle<Result<()>>>,
}

impl EntryReader {
    fn spawn(entries: Vec<PackEntry>) -> EntryReader {
        let (chunk_tx, chunks) = mpsc::channel();
        let (free, free_rx) = mpsc::channel::<Vec<u8>>();
        for _ in 0..READ_BUFFERS {
            free.send(vec![0u8; READ_CHUNK])
                .expect("the receiver is here");
        }
        let thread = std::thread::spawn(move || -> Result<()> {
            for entry in entries {
                let reader: Box<dyn Read + Send> = match entry.source {
                    Source::Bytes(data) => Box::new(io::Cursor::new(data)),
                    Source::Open(open) => {
                        open().with_context(|| format!("opening the source of {}", entry.path))?
                    }
                };
                let mut verified =
                    VerifyingReader::new(reader, &entry.path, entry.size, &entry.sha256);
                let mut left = entry.size;
                while left > 0 {
                    // The packing side stopped (an error of its own).
                    let Ok(mut chunk) = free_rx.recv() else {
                        return Ok(());
                    };
                    let want = usize::try_from(left).unwrap_or(usize::MAX).min(READ_CHUNK);
                    let mut filled = 0;
                    while filled < want {
                        // VerifyingReader fails a source that ends early.
                        filled += verified
                            .read(&mut chunk[filled..want])
                            .with_context(|| format!("packing {}", entry.path))?;
                    }
                    left -= want as u64;
                    if chunk_tx.send((chunk, want)).is_err() {
                        return Ok(());
                    }
                }
                // The read at the end checks that the source ends here and
                // hashes to the claim (for an empty entry, the only read).
                verified
                    .read(&mut [])
                    .with_context(|| format!("packing {}", entry.path))?;
            }
            Ok(())
        });
        EntryReader {
            chunks,
            free: Some(free),
            thread: Some(thread),
        }
    }

    /// The next chunk, or `None` once the thread stopped.
    fn next(&self) -> Option<(Vec<u8>, usize)> {
        self.chunks.recv().ok()
    }

    fn give_back(&self, chunk: Vec<u8>) {
        if let Some(free) = &self.free {
            // The thread may have stopped; its error comes from `finish`.
            let _ = free.send(chunk);
        }
    }

    fn join(&mut self) -> Result<()> {
        drop(self.free.take());
        match self.thread.take() {
            Some(thread) => thread
                .join()
                .map_err(|_| anyhow::anyhow!("the entry reading thread panicked"))?,
            None => Ok(()),
        }
    }

    /// Why the chunks stopped before the entries' sizes were read.
    fn failure(mut self) -> anyhow::Error {
        match self.join() {
            Err(e) => e,
            Ok(()) => anyhow::anyhow!("the entry reading thread stopped early"),
        }
    }

    /// Every entry read and checked, or the first error.
    fn finish(mut self) -> Result<()> {
        self.join()
    }
}

impl Drop for EntryReader {
    fn drop(&mut self) {
        // Stopped early by an error on the packing side: let the thread end.
        let _ = self.join();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::Arch;
    use crate::sign::{keygen, Protection};

    fn manifest() -> Manifest {
        Manifest {
            format_version: 1,
            bundle_id: String::new(),
            kubeedge_version: "v1.23.1".into(),
            arch: Arch::Amd64,
            sequence: 3,
            created: "2025-01-01T00:00:00Z".into(),
            builder: "test".into(),
            sample: true,
            files: vec![],
            images: vec![],
            entries: vec![],
            delta: None,
        }
    }

    /// An entry read from `data` through `Source::Open`, claiming `claim`.
    fn opened(path: &str, data: Vec<u8>, claim: &[u8]) -> PackEntry {
        let claimed = PackEntry::bytes(path, claim.to_vec());
        PackEntry {
            path: path.into(),
            size: claimed.size,
            sha256: claimed.sha256,
            source: Source::Open(Box::new(move || {
                Ok(Box::new(io::Cursor::new(data.clone())) as Box<dyn Read + Send>)
            })),
        }
    }

    fn content(n: usize, seed: u8) -> Vec<u8> {
        (0..n)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    }

    #[test]
    fn the_stream_is_the_tar_that_tar_builder_writes() {
        let dir = tempfile::tempdir().unwrap();
        let (secret, _) = keygen(&dir.path().join("keys"), Protection::Unencrypted).unwrap();
        let key = SigningKey::from_file(&secret).unwrap();
        // Empty, sub-block, block edges, and more than one read chunk.
        let sizes = [0, 1, 511, 512, 513, READ_CHUNK, 2 * READ_CHUNK + 7];
        let entries = sizes
            .iter()
            .enumerate()
            .map(|(i, &n)| {
                let data = content(n, i as u8);
                if i % 2 == 0 {
                    PackEntry::bytes(format!("files/{i}"), data)
                } else {
                    opened(&format!("files/{i}"), data.clone(), &data)
                }
            })
            .collect();
        let options = PackOptions {
            mtime: 1_767_225_600,
            ..PackOptions::default()
        };
        let mut progressed = 0;
        let packed = pack(
            manifest(),
            entries,
            &key,
            &dir.path().join("out"),
            &options,
            &mut |n| progressed += n,
        )
        .unwrap();
        assert_eq!(progressed, sizes.iter().sum::<usize>() as u64);
        let bytes = std::fs::read(&packed.bundle).unwrap();
        assert_eq!(bytes.len() as u64, packed.size);
        assert_eq!(crate::hashing::sha256_hex(&bytes), packed.sha256);
        let tar_bytes = zstd::decode_all(&bytes[..]).unwrap();

        let manifest_bytes = packed.manifest.to_bytes();
        let signature = key.sign_bytes(&manifest_bytes, &format::trusted_comment(&packed.manifest));
        let mut expected = tar::Builder::new(Vec::new());
        let mut add = |path: &str, data: &[u8]| {
            let mut header = tar::Header::new_ustar();
            header.set_path(path).unwrap();
            header.set_size(data.len() as u64);
            header.set_mode(format::ENTRY_MODE);
            header.set_uid(0);
            header.set_gid(0);
            header.set_mtime(options.mtime);
            header.set_entry_type(tar::EntryType::Regular);
            header.set_cksum();
            expected.append(&header, data).unwrap();
        };
        add(format::MANIFEST_PATH, &manifest_bytes);
        add(format::SIGNATURE_PATH, signature.as_bytes());
        for (i, &n) in sizes.iter().enumerate() {
            add(&format!("files/{i}"), &content(n, i as u8));
        }
        assert!(tar_bytes == expected.into_inner().unwrap());

        // The .minisig is over the file's BLAKE2b, as minisign -H signs.
        let keys =
            crate::sign::TrustedKeys::from_files(&[dir.path().join("keys/edgeferry.pub")]).unwrap();
        let sig = std::fs::read_to_string(&packed.signature).unwrap();
        keys.verify(&bytes, &sig).unwrap();
    }

    #[test]
    fn a_source_that_lies_aborts_the_pack_and_leaves_nothing() {
        let big = content(READ_CHUNK + 100, 9);
        let mut flipped = big.clone();
        flipped[READ_CHUNK + 50] ^= 1;
        let cases: [(&str, Vec<u8>, &str); 3] = [
            ("changed", flipped, "expected sha256"),
            (
                "short",
                big[..READ_CHUNK + 99].to_vec(),
                "source ended after",
            ),
            ("long", [&big[..], b"x"].concat(), "source is longer"),
        ];
        for (name, data, said) in cases {
            let dir = tempfile::tempdir().unwrap();
            let (secret, _) = keygen(&dir.path().join("keys"), Protection::Unencrypted).unwrap();
            let key = SigningKey::from_file(&secret).unwrap();
            let out = dir.path().join("out");
            // The liar sits between honest entries, the last one small.
            let entries = vec![
                PackEntry::bytes("files/before", content(3 * READ_CHUNK, 1)),
                opened("files/liar", data, &big),
                PackEntry::bytes("files/after", b"after".to_vec()),
            ];
            let err = pack(
                manifest(),
                entries,
                &key,
                &out,
                &PackOptions::default(),
                &mut |_| {},
            )
            .map(|_| ())
            .unwrap_err();
            let text = format!("{err:#}");
            assert!(
                text.contains("packing files/liar") && text.contains(said),
                "{name}: {text}"
            );
            let left: Vec<_> = std::fs::read_dir(&out).unwrap().collect();
            assert!(left.is_empty(), "{name}: {left:?}");
        }
    }
}
