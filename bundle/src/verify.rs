//! Reading a bundle without trusting it: the manifest's signature is
//! checked before the manifest is parsed, and every later entry is checked
//! against the manifest while it streams, in one pass. The tar headers are
//! parsed here, strictly, rather than by a general tar library: the format
//! allows only plain ustar regular files, and anything a lenient parser
//! would quietly accept (PAX headers, links, prefixes) is refused.

use std::collections::HashMap;
use std::io::{self, Read, Write};

use sha2::{Digest, Sha256};

use crate::format::{self, Entry, Manifest};
use crate::hashing::hex;
use crate::oci;
use crate::sign::{SignatureError, TrustedKeys, Verified};

/// Why a bundle was refused. `class()` groups them for exit codes.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("bundle is unsigned: {MANIFEST_SIG} is missing; refuse it, or pass --insecure-skip-signature if you built it yourself", MANIFEST_SIG = format::SIGNATURE_PATH)]
    Unsigned,
    #[error(transparent)]
    Signature(#[from] SignatureError),
    #[error("the signed comment says {signed:?} but the manifest says {manifest:?}: the manifest was swapped")]
    CommentMismatch { signed: String, manifest: String },
    #[error("manifest: {0}")]
    Manifest(String),
    #[error("entry {path}: {detail}")]
    Entry { path: String, detail: String },
    #[error("entry {path}: expected sha256 {expected}, got {actual}: the bundle is corrupt, copy it again")]
    Hash {
        path: String,
        expected: String,
        actual: String,
    },
    #[error("entry {path}: expected {expected} bytes, the tar header says {actual}: the bundle was altered")]
    Size {
        path: String,
        expected: u64,
        actual: u64,
    },
    #[error("bundle is truncated ({0}): copy it again")]
    Truncated(String),
    #[error("bundle has data after its end ({0}): it was altered or two files were joined")]
    Trailing(String),
    #[error("bundle is not a valid zstd stream ({0}): it is corrupt, copy it again")]
    Decompress(String),
    #[error("writing entry {path}")]
    Sink {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("{0}")]
    Refused(String),
}

/// Failure classes, for exit codes and `--json`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Class {
    /// Unsigned, unknown key, bad signature, swapped manifest.
    Signature,
    /// Corrupt, truncated, tampered or unsafe content.
    Integrity,
    /// Refused by policy (the caller's `Refused`).
    Policy,
    /// Writing what was read failed.
    Io,
}

impl VerifyError {
    pub fn class(&self) -> Class {
        match self {
            VerifyError::Unsigned
            | VerifyError::Signature(_)
            | VerifyError::CommentMismatch { .. } => Class::Signature,
            VerifyError::Sink { .. } => Class::Io,
            VerifyError::Refused(_) => Class::Policy,
            _ => Class::Integrity,
        }
    }
}

/// What to trust.
pub enum Trust<'a> {
    Keys(&'a TrustedKeys),
    /// `--insecure-skip-signature`: structure and hashes are still checked
    /// against the manifest, but nothing says who made it.
    SkipSignature,
}

/// Receives verified content. Bytes handed to `write` are not yet known
/// good: an entry is good only once `end_entry` is called for it, and the
/// whole bundle only when `verify` returns `Ok`. Implementations stage
/// everything and publish nothing before that.
pub trait Sink {
    /// Called once the manifest is verified and parsed, before any entry.
    /// Returning an error refuses the bundle (anti-rollback, space checks).
    fn manifest(&mut self, manifest: &Manifest, signer: Option<&Verified>) -> Result<(), String>;
    /// Called just before [`Sink::manifest`] when a trusted key signed the
    /// manifest: its exact bytes and the signature, for a store to keep.
    fn signed(&mut self, _manifest_bytes: &[u8], _signature: &[u8]) {}
    /// Where this entry's bytes should go; `None` to only verify them.
    fn begin_entry(&mut self, entry: &Entry) -> io::Result<Option<Box<dyn Write + '_>>>;
    fn end_entry(&mut self, entry: &Entry) -> io::Result<()>;
}

/// A sink that keeps nothing: `edgeferry verify`.
pub struct CheckOnly;

impl Sink for CheckOnly {
    fn manifest(&mut self, _: &Manifest, _: Option<&Verified>) -> Result<(), String> {
        Ok(())
    }
    fn begin_entry(&mut self, _: &Entry) -> io::Result<Option<Box<dyn Write + '_>>> {
        Ok(None)
    }
    fn end_entry(&mut self, _: &Entry) -> io::Result<()> {
        Ok(())
    }
}

#[derive(Debug, Clone)]
pub struct Outcome {
    pub manifest: Manifest,
    pub signer: Option<Verified>,
    /// Compressed bytes read.
    pub bytes_in: u64,
    /// Whether the whole-file signature was checked too.
    pub whole_file: bool,
}

/// Verifies a compressed bundle stream, handing content to `sink`.
///
/// With `Trust::Keys` and a `file_signature` (the text of `<bundle>.minisig`),
/// that signature is checked over the compressed bytes in the same pass, so
/// even a flip that decodes to the same content (a zstd header bit) is
/// caught. Without it, every installed byte is still authenticated: the
/// signed manifest names each entry's size and sha256, and the framing
/// rules admit nothing else (docs/security.md, "The whole-file signature").
/// The caller decides whether the whole file must match too
/// (`--whole-file`); hashing it costs about a third of a load's CPU.
pub fn verify(
    input: impl Read + Send,
    trust: Trust<'_>,
    file_signature: Option<&str>,
    sink: &mut dyn Sink,
) -> Result<Outcome, VerifyError> {
    let file_check = match (&trust, file_signature) {
        (Trust::Keys(keys), Some(text)) => Some(keys.stream_check(text)?),
        (Trust::Keys(_), None) | (Trust::SkipSignature, _) => None,
    };
    let hash_file = file_check.is_some();
    // Three threads, one pass: one reads the compressed bytes and hashes them
    // for the whole-file signature, one decompresses, and the caller's
    // thread checks every entry and writes. Each chunk is touched once by
    // each stage, and on two cores no stage waits for another's hashing.
    let (manifest, signer, bytes_in, prehash) = std::thread::scope(|scope| {
        let (compressed, compressed_reader) = stage();
        let (plain, plain_reader) = stage();
        let reader = scope.spawn(move || read_and_hash(input, hash_file, compressed));
        scope.spawn(move || decompress(compressed_reader, plain));
        let checked = verify_stream(plain_reader, &trust, sink);
        let (bytes_in, prehash) = reader.join().expect("reader thread does not panic");
        checked.map(|(manifest, signer)| (manifest, signer, bytes_in, prehash))
    })?;
    if let (Some(check), Some(prehash)) = (&file_check, prehash) {
        check.verify_prehashed(&prehash)?;
        let id = check
            .trusted_comment()
            .split(' ')
            .find_map(|t| t.strip_prefix("id="));
        if id != Some(manifest.bundle_id.as_str()) {
            return Err(VerifyError::CommentMismatch {
                signed: check.trusted_comment().to_string(),
                manifest: format!("id={}", manifest.bundle_id),
            });
        }
    }
    Ok(Outcome {
        manifest,
        signer,
        bytes_in,
        whole_file: hash_file,
    })
}

/// Chunks in flight between two stages: bounds memory.
const READ_AHEAD_CHUNKS: usize = 4;
const READ_CHUNK: usize = 1 << 20;

/// A chunk and how many of its bytes are filled. Buffers travel back to
/// the producer once read, so each is zeroed once, when first allocated,
/// not per chunk (that memset was ~9% of a load's CPU).
type Chunk = io::Result<(Vec<u8>, usize)>;

/// The producing end of a stage.
struct ChunkSender {
    chunks: std::sync::mpsc::SyncSender<Chunk>,
    spare: std::sync::mpsc::Receiver<Vec<u8>>,
}

impl ChunkSender {
    fn buffer(&self) -> Vec<u8> {
        self.spare
            .try_recv()
            .unwrap_or_else(|_| vec![0u8; READ_CHUNK])
    }

    /// False when the consumer hung up.
    fn send(&self, chunk: Chunk) -> bool {
        self.chunks.send(chunk).is_ok()
    }
}

fn stage() -> (ChunkSender, ChannelReader) {
    let (chunks, receiver) = std::sync::mpsc::sync_channel(READ_AHEAD_CHUNKS);
    let (recycle, spare) = std::sync::mpsc::channel();
    (
        ChunkSender { chunks, spare },
        ChannelReader {
            receiver,
            recycle,
            current: Vec::new(),
            filled: 0,
            position: 0,
        },
    )
}

/// Reads the input in chunks for the decoder, hashing them (BLAKE2b-512,
/// minisign's prehash) when `hash` is set. Returns the byte count and hash.
fn read_and_hash(mut input: impl Read, hash: bool, output: ChunkSender) -> (u64, Option<[u8; 64]>) {
    let mut count = 0u64;
    let mut hasher = hash.then(blake2b_simd::State::new);
    loop {
        // One read per chunk: a pipe hands over what it has, and the next
        // stage should not wait for more than that.
        let mut buf = output.buffer();
        let n = match input.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                output.send(Err(e));
                break;
            }
        };
        count += n as u64;
        if let Some(h) = hasher.as_mut() {
            h.update(&buf[..n]);
        }
        // The decoder hung up: it has its answer, stop reading.
        if !output.send(Ok((buf, n))) {
            break;
        }
    }
    (count, hasher.map(|h| *h.finalize().as_array()))
}

/// Marks the decompressor's "bytes after the zstd frame" error.
#[derive(Debug)]
struct TrailingAfterFrame;

impl std::fmt::Display for TrailingAfterFrame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("bytes after the zstd frame")
    }
}

impl std::error::Error for TrailingAfterFrame {}

/// The middle stage: one zstd frame in, plain chunks out; then the input
/// must end. Errors travel down the channel to the checking stage.
fn decompress(input: ChannelReader, output: ChunkSender) {
    let mut decoder = match zstd::stream::read::Decoder::with_buffer(input) {
        Ok(d) => d.single_frame(),
        Err(e) => {
            output.send(Err(e));
            return;
        }
    };
    loop {
        let mut buf = output.buffer();
        match decoder.read(&mut buf) {
            Ok(0) => {
                let mut rest = decoder.finish();
                let mut probe = [0u8; 1];
                let end = match rest.read(&mut probe) {
                    Ok(0) => return,
                    Ok(_) => io::Error::new(io::ErrorKind::InvalidData, TrailingAfterFrame),
                    Err(e) => e,
                };
                output.send(Err(end));
                return;
            }
            Ok(n) => {
                if !output.send(Ok((buf, n))) {
                    return;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                output.send(Err(e));
                return;
            }
        }
    }
}

/// A stage's view of the previous stage's chunks.
struct ChannelReader {
    receiver: std::sync::mpsc::Receiver<Chunk>,
    recycle: std::sync::mpsc::Sender<Vec<u8>>,
    current: Vec<u8>,
    filled: usize,
    position: usize,
}

/// Consumers read the chunks in place through `BufRead` (zstd takes its
/// input that way, the tar reader hashes and writes entry bodies that way):
/// no copy between stages.
impl io::BufRead for ChannelReader {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        while self.position == self.filled {
            match self.receiver.recv() {
                Ok(Ok((chunk, filled))) => {
                    let used = std::mem::replace(&mut self.current, chunk);
                    if !used.is_empty() {
                        let _ = self.recycle.send(used);
                    }
                    self.filled = filled;
                    self.position = 0;
                }
                Ok(Err(e)) => return Err(e),
                Err(_) => return Ok(&[]),
            }
        }
        Ok(&self.current[self.position..self.filled])
    }

    fn consume(&mut self, amount: usize) {
        self.position = (self.position + amount).min(self.filled);
    }
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let available = io::BufRead::fill_buf(self)?;
        let n = buf.len().min(available.len());
        buf[..n].copy_from_slice(&available[..n]);
        io::BufRead::consume(self, n);
        Ok(n)
    }
}

fn verify_stream(
    input: ChannelReader,
    trust: &Trust<'_>,
    sink: &mut dyn Sink,
) -> Result<(Manifest, Option<Verified>), VerifyError> {
    let mut tar = TarReader {
        inner: input,
        position: 0,
    };

    let first = tar
        .next_header()?
        .ok_or_else(|| VerifyError::Truncated("no entries".into()))?;
    if first.path != format::MANIFEST_PATH {
        return Err(VerifyError::Manifest(format!(
            "the first entry is {:?}, not {}: this is not an edgeferry bundle",
            first.path,
            format::MANIFEST_PATH
        )));
    }
    if first.size > format::MAX_MANIFEST_BYTES {
        return Err(VerifyError::Manifest(format!(
            "it is {} bytes, more than the {} allowed",
            first.size,
            format::MAX_MANIFEST_BYTES
        )));
    }
    let manifest_bytes = tar.read_body(&first)?;

    let second = tar
        .next_header()?
        .ok_or_else(|| VerifyError::Truncated("nothing after the manifest".into()))?;
    let (signer, signature, pending) = if second.path == format::SIGNATURE_PATH {
        if second.size > format::MAX_SIGNATURE_BYTES {
            return Err(VerifyError::Manifest(
                "its signature is implausibly large".into(),
            ));
        }
        let signature = tar.read_body(&second)?;
        let signer = match trust {
            Trust::Keys(keys) => Some(check_signature(&manifest_bytes, &signature, keys)?),
            Trust::SkipSignature => None,
        };
        (signer, Some(signature), None)
    } else {
        if matches!(trust, Trust::Keys(_)) {
            return Err(VerifyError::Unsigned);
        }
        (None, None, Some(second))
    };

    // Only now is the manifest parsed.
    let manifest = parse_manifest(&manifest_bytes, signer.as_ref())?;
    if let (Some(_), Some(signature)) = (&signer, &signature) {
        sink.signed(&manifest_bytes, signature);
    }
    sink.manifest(&manifest, signer.as_ref())
        .map_err(VerifyError::Refused)?;

    let mut next = pending;
    for expected in &manifest.entries {
        let header = match next.take() {
            Some(h) => h,
            None => tar.next_header()?.ok_or_else(|| {
                VerifyError::Truncated(format!("entry {} is missing", expected.path))
            })?,
        };
        if header.path != expected.path {
            let detail = if manifest.entries.iter().any(|e| e.path == header.path) {
                format!(
                    "appears where {} should be: entries are out of order or duplicated",
                    expected.path
                )
            } else {
                unlisted(&manifest, &header.path)
            };
            return Err(VerifyError::Entry {
                path: header.path,
                detail,
            });
        }
        if header.size != expected.size {
            return Err(VerifyError::Size {
                path: header.path,
                expected: expected.size,
                actual: header.size,
            });
        }
        let mut writer = sink
            .begin_entry(expected)
            .map_err(|source| VerifyError::Sink {
                path: expected.path.clone(),
                source,
            })?;
        let actual = tar.stream_body(&header, writer.as_deref_mut())?;
        drop(writer);
        if actual != expected.sha256 {
            return Err(VerifyError::Hash {
                path: expected.path.clone(),
                expected: expected.sha256.clone(),
                actual,
            });
        }
        sink.end_entry(expected)
            .map_err(|source| VerifyError::Sink {
                path: expected.path.clone(),
                source,
            })?;
    }
    if let Some(extra) = next.take() {
        let detail = unlisted(&manifest, &extra.path);
        return Err(VerifyError::Entry {
            path: extra.path,
            detail,
        });
    }
    if let Some(extra) = tar.next_header()? {
        let detail = if manifest.entries.iter().any(|e| e.path == extra.path) {
            "appears twice".to_string()
        } else {
            unlisted(&manifest, &extra.path)
        };
        return Err(VerifyError::Entry {
            path: extra.path,
            detail,
        });
    }
    tar.finish()?;
    Ok((manifest, signer))
}

/// A signed manifest on its own, checked exactly as the stream reader
/// checks the first two entries: the signature over the exact bytes, then
/// the parse, the grammar, the id and the signed comment. `edgeferry sync`
/// reads the manifests a mirror publishes this way.
pub fn verify_manifest(
    manifest_bytes: &[u8],
    signature: &[u8],
    keys: &TrustedKeys,
) -> Result<(Manifest, Verified), VerifyError> {
    if manifest_bytes.len() as u64 > format::MAX_MANIFEST_BYTES {
        return Err(VerifyError::Manifest(format!(
            "it is {} bytes, more than the {} allowed",
            manifest_bytes.len(),
            format::MAX_MANIFEST_BYTES
        )));
    }
    if signature.len() as u64 > format::MAX_SIGNATURE_BYTES {
        return Err(VerifyError::Manifest(
            "its signature is implausibly large".into(),
        ));
    }
    let signer = check_signature(manifest_bytes, signature, keys)?;
    let manifest = parse_manifest(manifest_bytes, Some(&signer))?;
    Ok((manifest, signer))
}

fn check_signature(
    manifest_bytes: &[u8],
    signature: &[u8],
    keys: &TrustedKeys,
) -> Result<Verified, VerifyError> {
    let text = std::str::from_utf8(signature)
        .map_err(|_| SignatureError::Malformed("not UTF-8".into()))?;
    Ok(keys.verify(manifest_bytes, text)?)
}

/// Parses manifest bytes (already checked against their signature, if
/// any) and holds them to the format's rules and the signed comment.
fn parse_manifest(bytes: &[u8], signer: Option<&Verified>) -> Result<Manifest, VerifyError> {
    let manifest: Manifest = serde_json::from_slice(bytes).map_err(|e| {
        VerifyError::Manifest(format!("not a version-1 or version-2 manifest: {e}"))
    })?;
    check_manifest(&manifest)?;
    if let Some(signer) = signer {
        let expected = format::trusted_comment(&manifest);
        if signer.trusted_comment != expected {
            return Err(VerifyError::CommentMismatch {
                signed: signer.trusted_comment.clone(),
                manifest: expected,
            });
        }
    }
    Ok(manifest)
}

/// Why an entry in the stream that `entries` does not list is refused.
fn unlisted(manifest: &Manifest, path: &str) -> String {
    if manifest.expected_present().iter().any(|e| e.path == path) {
        "is in the stream but the signed manifest lists it as left out of this delta".into()
    } else {
        "is not listed in the signed manifest".into()
    }
}

fn check_manifest(manifest: &Manifest) -> Result<(), VerifyError> {
    if !format::READABLE_FORMAT_VERSIONS.contains(&manifest.format_version) {
        return Err(VerifyError::Manifest(format!(
            "format version {} is not one this edgeferry reads ({:?}): use an edgeferry that reads it",
            manifest.format_version,
            format::READABLE_FORMAT_VERSIONS
        )));
    }
    if manifest.format_version < 2 && manifest.delta.is_some() {
        return Err(VerifyError::Manifest(
            "a format 1 manifest has a delta field, which format 2 introduced".into(),
        ));
    }
    if manifest.bundle_id != manifest.compute_id() {
        return Err(VerifyError::Manifest(
            "its bundle id does not match its content".into(),
        ));
    }
    // The SBOM, when listed, is the first entry after the signature, so a
    // reviewer can read it first (docs/bundle-format.md, "The stream").
    if let Some(i) = manifest
        .entries
        .iter()
        .position(|e| e.path == format::SBOM_PATH)
    {
        if i != 0 {
            return Err(VerifyError::Entry {
                path: format::SBOM_PATH.into(),
                detail: format!("listed as entry {}, not first after the signature", i + 1),
            });
        }
    }
    let mut seen = HashMap::new();
    for entry in &manifest.entries {
        check_entry(entry, "")?;
        if seen.insert(entry.path.as_str(), ()).is_some() {
            return Err(VerifyError::Entry {
                path: entry.path.clone(),
                detail: "listed twice in the manifest".into(),
            });
        }
    }
    if let Some(delta) = &manifest.delta {
        check_base(&delta.base).map_err(|e| VerifyError::Manifest(e.to_string()))?;
        for entry in &delta.expected_present {
            check_entry(entry, " (expected present)")?;
            if !(entry.path.starts_with("images/blobs/sha256/") || entry.path.starts_with("files/"))
            {
                return Err(VerifyError::Entry {
                    path: entry.path.clone(),
                    detail: "is listed as expected present, but only blobs and release files may be left out of a delta".into(),
                });
            }
            if seen.insert(entry.path.as_str(), ()).is_some() {
                return Err(VerifyError::Entry {
                    path: entry.path.clone(),
                    detail: "listed twice in the manifest (as an entry and as expected present, or twice as expected present)".into(),
                });
            }
        }
    }
    check_fields(manifest).map_err(|e| VerifyError::Manifest(e.to_string()))
}

/// One entry's path and hash rules; `role` says which list it is in.
fn check_entry(entry: &Entry, role: &str) -> Result<(), VerifyError> {
    format::check_entry_path(&entry.path).map_err(|e| VerifyError::Entry {
        path: entry.path.clone(),
        detail: format!("unsafe path in the manifest{role}: {e}"),
    })?;
    if entry.path == format::MANIFEST_PATH || entry.path == format::SIGNATURE_PATH {
        return Err(VerifyError::Entry {
            path: entry.path.clone(),
            detail: format!("listed as an ordinary entry{role}"),
        });
    }
    if !format::valid_hex(&entry.sha256, 64) {
        return Err(VerifyError::Entry {
            path: entry.path.clone(),
            detail: format!("its sha256 in the manifest{role} is not 64 lowercase hex digits"),
        });
    }
    // A blob's name is its digest; a mismatch would let one blob pose
    // as another in the store.
    if let Some(name) = entry.path.strip_prefix("images/blobs/sha256/") {
        if name != entry.sha256 {
            return Err(VerifyError::Entry {
                path: entry.path.clone(),
                detail: format!("blob is named {name} but its sha256 is {}", entry.sha256),
            });
        }
    }
    Ok(())
}

/// A delta's base description: printed by `inspect`, so held to the same
/// grammar as every other field.
fn check_base(base: &format::BaseInfo) -> Result<(), format::FieldError> {
    if base.bundle_ids.len() > format::MAX_BASE_BUNDLE_IDS {
        return Err(format::FieldError::new(
            "delta.base.bundle_ids",
            &base.bundle_ids.len().to_string(),
            "names more bundles than a reader accepts",
        ));
    }
    for (i, id) in base.bundle_ids.iter().enumerate() {
        if !format::valid_hex(id, 32) {
            return Err(format::FieldError::new(
                format!("delta.base.bundle_ids[{i}]"),
                id,
                "is not 32 lowercase hex digits",
            ));
        }
    }
    if let Some(version) = &base.kubeedge_version {
        if !format::valid_version(version) {
            return Err(format::FieldError::new(
                "delta.base.kubeedge_version",
                version,
                "is not a KubeEdge version such as v1.23.1",
            ));
        }
    }
    Ok(())
}

/// An optional image field: its name, value, grammar and the rule's text.
type OptionalField<'a> = (
    &'static str,
    Option<&'a String>,
    &'a dyn Fn(&str) -> bool,
    &'static str,
);

/// Every field against its grammar (docs/bundle-format.md, "Field
/// grammar"): a signature says who made a manifest, not that its text
/// is safe to print, to put in an HTTP header or to make a directory of.
/// Entry paths and hashes are checked above, in [`check_manifest`].
fn check_fields(manifest: &Manifest) -> Result<(), format::FieldError> {
    let check = |ok: bool, field: &dyn Fn() -> String, value: &str, rule: &'static str| {
        if ok {
            Ok(())
        } else {
            Err(format::FieldError::new(field(), value, rule))
        }
    };
    let scalars = [
        (
            "bundle_id",
            &manifest.bundle_id,
            format::valid_hex(&manifest.bundle_id, 32),
            "is not 32 lowercase hex digits",
        ),
        (
            "kubeedge_version",
            &manifest.kubeedge_version,
            format::valid_version(&manifest.kubeedge_version),
            "is not a KubeEdge version such as v1.23.1",
        ),
        (
            "created",
            &manifest.created,
            format::valid_created(&manifest.created),
            "is not an RFC 3339 UTC time such as 2025-11-13T02:13:20Z",
        ),
        (
            "builder",
            &manifest.builder,
            format::valid_text(&manifest.builder),
            "is not 1 to 200 printable ASCII characters",
        ),
    ];
    for (field, value, ok, rule) in scalars {
        check(ok, &|| field.into(), value, rule)?;
    }
    let listed =
        |path: &str| path.starts_with("files/") && manifest.all_entries().any(|e| e.path == path);
    for (i, file) in manifest.files.iter().enumerate() {
        check(
            listed(&file.path),
            &|| format!("files[{i}].path"),
            &file.path,
            "is not an entry under files/ listed in entries",
        )?;
        if let Some(path) = &file.checksum_path {
            check(
                listed(path),
                &|| format!("files[{i}].checksum_path"),
                path,
                "is not an entry under files/ listed in entries",
            )?;
        }
        if let Some(sha512) = &file.sha512 {
            check(
                format::valid_hex(sha512, 128),
                &|| format!("files[{i}].sha512"),
                sha512,
                "is not 128 lowercase hex digits",
            )?;
        }
    }
    for (i, image) in manifest.images.iter().enumerate() {
        if let Err(rule) = oci::check_full_reference(&image.reference) {
            return Err(format::FieldError::new(
                format!("images[{i}].reference"),
                &image.reference,
                rule,
            ));
        }
        let is_digest = |d: &str| format::sha256_hex_of_digest(d).is_some();
        const DIGEST_RULE: &str = "is not sha256:<64 lowercase hex digits>";
        const MEDIA_RULE: &str = "is not an RFC 6838 media type type/subtype";
        let optional: [OptionalField<'_>; 4] = [
            (
                "manifest_digest",
                Some(&image.manifest_digest),
                &is_digest,
                DIGEST_RULE,
            ),
            (
                "index_digest",
                image.index_digest.as_ref(),
                &is_digest,
                DIGEST_RULE,
            ),
            (
                "manifest_media_type",
                Some(&image.manifest_media_type),
                &oci::valid_media_type,
                MEDIA_RULE,
            ),
            (
                "index_media_type",
                image.index_media_type.as_ref(),
                &oci::valid_media_type,
                MEDIA_RULE,
            ),
        ];
        for (name, value, valid, rule) in optional {
            if let Some(value) = value {
                check(valid(value), &|| format!("images[{i}].{name}"), value, rule)?;
            }
        }
        check(
            format::valid_platform(&image.platform),
            &|| format!("images[{i}].platform"),
            &image.platform,
            "is not os/architecture[/variant] of [a-z0-9]",
        )?;
    }
    Ok(())
}

#[derive(Debug)]
struct Header {
    path: String,
    size: u64,
}

struct TarReader<R> {
    inner: R,
    /// Decompressed bytes consumed so far, for messages.
    position: u64,
}

impl<R: io::BufRead> TarReader<R> {
    fn read_exact(&mut self, buf: &mut [u8], what: &str) -> Result<(), VerifyError> {
        let mut filled = 0;
        while filled < buf.len() {
            match self.inner.read(&mut buf[filled..]) {
                Ok(0) => {
                    return Err(VerifyError::Truncated(format!(
                        "ended inside {what} at byte {}",
                        self.position + filled as u64
                    )))
                }
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(decode_error(e, self.position + filled as u64)),
            }
        }
        self.position += buf.len() as u64;
        Ok(())
    }

    /// The next header, or `None` at the end-of-archive zero block.
    fn next_header(&mut self) -> Result<Option<Header>, VerifyError> {
        let mut block = [0u8; 512];
        self.read_exact(&mut block, "a tar header")?;
        if block.iter().all(|&b| b == 0) {
            return Ok(None);
        }
        parse_header(&block).map(Some)
    }

    fn read_body(&mut self, header: &Header) -> Result<Vec<u8>, VerifyError> {
        let mut body = vec![0u8; header.size as usize];
        self.read_exact(&mut body, &format!("entry {}", header.path))?;
        self.skip_padding(header)?;
        Ok(body)
    }

    /// Streams the body through sha256 (and `out`), returning the hex digest.
    fn stream_body(
        &mut self,
        header: &Header,
        mut out: Option<&mut (dyn Write + '_)>,
    ) -> Result<String, VerifyError> {
        let mut hasher = Sha256::new();
        let mut left = header.size;
        while left > 0 {
            // Hash and write straight from the decompressed chunk.
            let available = loop {
                match self.inner.fill_buf() {
                    Ok(available) => break available,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(decode_error(e, self.position)),
                }
            };
            if available.is_empty() {
                return Err(VerifyError::Truncated(format!(
                    "ended inside entry {} at byte {}",
                    header.path, self.position
                )));
            }
            let take = available
                .len()
                .min(usize::try_from(left).unwrap_or(usize::MAX));
            hasher.update(&available[..take]);
            if let Some(out) = out.as_deref_mut() {
                out.write_all(&available[..take])
                    .map_err(|source| VerifyError::Sink {
                        path: header.path.clone(),
                        source,
                    })?;
            }
            self.inner.consume(take);
            self.position += take as u64;
            left -= take as u64;
        }
        self.skip_padding(header)?;
        Ok(hex(&hasher.finalize()))
    }

    fn skip_padding(&mut self, header: &Header) -> Result<(), VerifyError> {
        let padding = (512 - header.size % 512) % 512;
        let mut pad = [0u8; 512];
        self.read_exact(&mut pad[..padding as usize], "padding")?;
        if pad[..padding as usize].iter().any(|&b| b != 0) {
            return Err(VerifyError::Entry {
                path: header.path.clone(),
                detail: "has non-zero padding: the bundle was altered".into(),
            });
        }
        Ok(())
    }

    /// After the first zero block: the second one, then at most
    /// [`format::MAX_ZEROS_AFTER_TAR_END`] zero bytes; then the zstd frame
    /// must end and so must the input. The bound is checked per chunk, so
    /// a frame of gigabytes of zeros is refused after a few kilobytes.
    fn finish(mut self) -> Result<(), VerifyError> {
        let mut block = [0u8; 512];
        self.read_exact(
            &mut block,
            "the second of the two zero blocks that end the tar archive",
        )?;
        if block.iter().any(|&b| b != 0) {
            return Err(VerifyError::Trailing(format!(
                "a non-zero block after the end of the tar archive at byte {}",
                self.position - 512
            )));
        }
        let mut buf = vec![0u8; 64 * 1024];
        let mut zeros = 0u64;
        loop {
            match self.inner.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    if buf[..n].iter().any(|&b| b != 0) {
                        return Err(VerifyError::Trailing(format!(
                            "non-zero bytes after the end of the tar archive at byte {}",
                            self.position
                        )));
                    }
                    zeros += n as u64;
                    if zeros > format::MAX_ZEROS_AFTER_TAR_END {
                        return Err(VerifyError::Trailing(format!(
                            "more than {} zero bytes after the end of the tar archive at byte {}, refused unread",
                            format::MAX_ZEROS_AFTER_TAR_END,
                            self.position
                        )));
                    }
                    self.position += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(decode_error(e, self.position)),
            }
        }
        Ok(())
    }
}

fn decode_error(e: io::Error, at: u64) -> VerifyError {
    if e.get_ref()
        .is_some_and(|inner| inner.is::<TrailingAfterFrame>())
    {
        return VerifyError::Trailing(e.to_string());
    }
    match e.kind() {
        io::ErrorKind::UnexpectedEof => VerifyError::Truncated(format!("at byte {at}")),
        _ => VerifyError::Decompress(format!("{e} near byte {at}")),
    }
}

fn parse_header(block: &[u8; 512]) -> Result<Header, VerifyError> {
    let raw_name = field_str(&block[0..100]);
    let name_for_errors = || {
        if raw_name.is_empty() {
            "<unnamed>".to_string()
        } else {
            raw_name.escape_debug().to_string()
        }
    };
    let bad = |detail: String| VerifyError::Entry {
        path: name_for_errors(),
        detail,
    };
    let stored_sum = parse_octal(&block[148..156])
        .ok_or_else(|| bad("header checksum is not a number".into()))?;
    let actual_sum: u64 = block
        .iter()
        .enumerate()
        .map(|(i, &b)| {
            if (148..156).contains(&i) {
                u64::from(b' ')
            } else {
                u64::from(b)
            }
        })
        .sum();
    if stored_sum != actual_sum {
        return Err(bad(
            "tar header checksum does not match: the bundle is corrupt".into(),
        ));
    }
    if &block[257..263] != b"ustar\0" || &block[263..265] != b"00" {
        return Err(bad("is not a POSIX ustar header".into()));
    }
    let kind = match block[156] {
        b'0' | 0 => None,
        b'1' => Some("a hard link"),
        b'2' => Some("a symlink"),
        b'3' | b'4' => Some("a device"),
        b'5' => Some("a directory"),
        b'6' => Some("a FIFO"),
        b'x' | b'g' => Some("a PAX extended header"),
        b'L' | b'K' => Some("a GNU long-name header"),
        _ => Some("of an unknown tar type"),
    };
    if let Some(kind) = kind {
        return Err(bad(format!(
            "is {kind}: bundles hold only regular files, refusing it"
        )));
    }
    if block[345..500].iter().any(|&b| b != 0) {
        return Err(bad(
            "uses the ustar prefix field, which bundles never do".into()
        ));
    }
    if block[0..100]
        .iter()
        .skip_while(|&&b| b != 0)
        .any(|&b| b != 0)
    {
        return Err(bad("has bytes after the end of its name".into()));
    }
    let path = raw_name.to_string();
    format::check_entry_path(&path).map_err(|e| VerifyError::Entry {
        path: name_for_errors(),
        detail: format!("unsafe path, refusing it: {e}"),
    })?;
    let size =
        parse_size(&block[124..136]).ok_or_else(|| bad("size field is not a number".into()))?;
    Ok(Header { path, size })
}

fn field_str(field: &[u8]) -> &str {
    let end = field.iter().position(|&b| b == 0).unwrap_or(field.len());
    std::str::from_utf8(&field[..end]).unwrap_or("\u{fffd}")
}

fn parse_octal(field: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(field).ok()?;
    let text = text.trim_matches(|c| c == ' ' || c == '\0');
    if text.is_empty() {
        return Some(0);
    }
    u64::from_str_radix(text, 8).ok()
}

/// Octal, or GNU base-256 for entries of 8 GiB and more.
fn parse_size(field: &[u8]) -> Option<u64> {
    if field[0] & 0x80 != 0 {
        if field[0] != 0x80 || field[1..4].iter().any(|&b| b != 0) {
            return None;
        }
        return Some(
            field[4..]
                .iter()
                .fold(0u64, |acc, &b| (acc << 8) | u64::from(b)),
        );
    }
    parse_octal(field)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::{Arch, Manifest};
    use crate::pack::{pack, PackEntry, PackOptions};
    use crate::sign::{keygen, Protection, SigningKey};

    fn sample(dir: &std::path::Path) -> (std::path::PathBuf, String, TrustedKeys) {
        let (secret, public) = keygen(&dir.join("keys"), Protection::Unencrypted).unwrap();
        let key = SigningKey::from_file(&secret).unwrap();
        let manifest = Manifest {
            format_version: 1,
            bundle_id: String::new(),
            kubeedge_version: "v1.23.1".into(),
            arch: Arch::Arm64,
            sequence: 7,
            created: "2025-01-01T00:00:00Z".into(),
            builder: "test".into(),
            sample: true,
            files: vec![],
            images: vec![],
            entries: vec![],
            delta: None,
        };
        let entries = vec![
            PackEntry::bytes("files/a", b"hello".to_vec()),
            PackEntry::bytes("files/b", vec![7u8; 1000]),
        ];
        let packed = pack(
            manifest,
            entries,
            &key,
            &dir.join("out"),
            &PackOptions::default(),
            &mut |_| {},
        )
        .unwrap();
        let signature = std::fs::read_to_string(&packed.signature).unwrap();
        (
            packed.bundle,
            signature,
            TrustedKeys::from_files(&[public]).unwrap(),
        )
    }

    struct Collect(Vec<(String, Vec<u8>)>);
    impl Sink for Collect {
        fn manifest(&mut self, _: &Manifest, _: Option<&Verified>) -> Result<(), String> {
            Ok(())
        }
        fn begin_entry(&mut self, entry: &Entry) -> io::Result<Option<Box<dyn Write + '_>>> {
            self.0.push((entry.path.clone(), Vec::new()));
            Ok(Some(Box::new(&mut self.0.last_mut().unwrap().1)))
        }
        fn end_entry(&mut self, _: &Entry) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn round_trip_and_every_flipped_byte_is_caught() {
        let dir = tempfile::tempdir().unwrap();
        let (bundle, sig, keys) = sample(dir.path());
        let sig = Some(sig.as_str());
        let bytes = std::fs::read(&bundle).unwrap();
        let mut collect = Collect(Vec::new());
        let outcome = verify(&bytes[..], Trust::Keys(&keys), sig, &mut collect).unwrap();
        assert_eq!(outcome.manifest.sequence, 7);
        assert_eq!(collect.0[0], ("files/a".to_string(), b"hello".to_vec()));
        assert_eq!(outcome.bytes_in, bytes.len() as u64);
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x20;
            assert!(
                verify(&bad[..], Trust::Keys(&keys), sig, &mut CheckOnly).is_err(),
                "flip at {i} accepted"
            );
        }
        for cut in [0, 1, bytes.len() / 2, bytes.len() - 1] {
            assert!(
                verify(&bytes[..cut], Trust::Keys(&keys), sig, &mut CheckOnly).is_err(),
                "cut at {cut} accepted"
            );
        }
        // Without the whole-file signature (the caller's choice) the
        // manifest and every entry are still checked.
        assert!(verify(&bytes[..], Trust::Keys(&keys), None, &mut CheckOnly).is_ok());
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(matches!(
            verify(&longer[..], Trust::Keys(&keys), sig, &mut CheckOnly),
            Err(VerifyError::Trailing(_))
        ));
    }
}
