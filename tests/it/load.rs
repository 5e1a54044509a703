//! `edgeferry verify` and `edgeferry load`: nothing is trusted before it
//! is checked, the store changes atomically, and bundles merge.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use edgeferry_bundle::format::{self, Arch, Entry, Manifest};
use edgeferry_bundle::sign::{SigningKey, TrustedKeys};
use edgeferry_tests::crafted::{regular, sign_whole, signed_tar, special, Raw};
use edgeferry_tests::*;

const EPOCH: u64 = 1_763_000_000;
const VERSION: &str = "v1.23.1";

struct Site {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    key: PathBuf,
    public: PathBuf,
}

fn site() -> Site {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().to_path_buf();
    let (key, public) = keygen(&root.join("keys"));
    Site {
        _tmp: tmp,
        root,
        key,
        public,
    }
}

fn load(bundle: &Path, public: &Path, store: &Path) -> Ran {
    run(edgeferry()
        .arg("load")
        .arg(bundle)
        .arg("--key")
        .arg(public)
        .arg("--store")
        .arg(store)
        .arg("--json"))
}

/// `load --whole-file`: the `.minisig` over the compressed file is checked too.
fn load_whole_file(bundle: &Path, public: &Path, store: &Path) -> Ran {
    run(edgeferry()
        .arg("load")
        .arg(bundle)
        .arg("--key")
        .arg(public)
        .arg("--store")
        .arg(store)
        .arg("--whole-file")
        .arg("--json"))
}

/// Why a mutant is refused only under `--whole-file`: its installed
/// content is the original's (docs/security.md, "The whole-file signature").
const ONLY_WHOLE_FILE: &str = "only the whole-file signature sees the change";

fn bundle_name(arch: &str) -> String {
    format!("edgeferry-kubeedge-{VERSION}-linux-{arch}.tar.zst")
}

/// A bundle whose manifest (listing `listed`) is signed by `key` and whose
/// stream after the signature is `stream`, with a valid whole-file
/// signature: only the inner checks can refuse it.
fn crafted(
    key: &SigningKey,
    arch: Arch,
    sequence: u64,
    listed: &[(&str, &[u8])],
    stream: &[Raw],
) -> (Vec<u8>, String) {
    let manifest = Manifest {
        format_version: 1,
        bundle_id: String::new(),
        kubeedge_version: VERSION.into(),
        arch,
        sequence,
        created: format::rfc3339_utc(sequence),
        builder: "tamper-suite".into(),
        sample: true,
        files: Vec::new(),
        images: Vec::new(),
        entries: listed
            .iter()
            .map(|(path, data)| Entry {
                path: path.to_string(),
                size: data.len() as u64,
                sha256: sha256_hex(data),
            })
            .collect(),
        delta: None,
    };
    let (mut tar, id) = signed_tar(key, manifest, stream);
    tar.extend_from_slice(&[0u8; 1024]);
    sign_whole(key, tar, &id)
}

fn decompress(bundle: &[u8]) -> Vec<u8> {
    zstd::decode_all(bundle).unwrap()
}

/// The chunk size the installer reads and decompresses in
/// (bundle/src/verify.rs), so [`as_the_reader_sees_it`] stops where it does.
const READ_CHUNK: usize = 1 << 20;

/// Decompresses one zstd frame the way the installer's one-pass reader
/// does: 1 MiB in, 1 MiB out per read, nothing allowed after the frame.
/// Returns what came out before the first error, and whether one came.
fn as_the_reader_sees_it(bundle: &[u8]) -> (Vec<u8>, bool) {
    use std::io::Read;
    let input = std::io::BufReader::with_capacity(READ_CHUNK, bundle);
    let Ok(decoder) = zstd::stream::read::Decoder::with_buffer(input) else {
        return (Vec::new(), true);
    };
    let mut decoder = decoder.single_frame();
    let mut out = Vec::new();
    let mut buf = vec![0u8; READ_CHUNK];
    loop {
        match decoder.read(&mut buf) {
            Ok(0) => {
                let trailing = decoder.finish().read(&mut [0u8; 1]).map_or(true, |n| n > 0);
                return (out, trailing);
            }
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(_) => return (out, true),
        }
    }
}

/// The exit class a load must give a bundle with one byte changed, derived
/// from what the change does to the stream the installer reads (tar inside
/// zstd: the manifest, its signature, then the entries; the whole file is
/// signed too, but that signature is checked last, once the stream was
/// read):
/// - the manifest or its signature no longer verify, with the tar framing
///   up to there intact: signature (3), found when the signature is read;
/// - the stream decodes to the same entries (a zstd header bit, or text
///   minisign does not sign): signature (3) with `--whole-file`, only the
///   whole-file signature sees it; a plain load accepts it, and what it
///   installs is the original's;
/// - anything else (a tar header, an entry's bytes, a zstd block that no
///   longer decodes, the frame's checksum): integrity (4).
fn flip_class(plain: &[u8], mutant: &[u8], keys: &TrustedKeys) -> Expected {
    let (decoded, failed) = as_the_reader_sees_it(mutant);
    let entries = tar_entries(plain);
    let (manifest, signature) = (&entries[0], &entries[1]);
    let size = |chunk: &[u8]| {
        let field = std::str::from_utf8(&chunk[124..135]).unwrap();
        usize::from_str_radix(field.trim_matches('\0'), 8).unwrap()
    };
    let manifest_body = 512..512 + size(manifest);
    let signature_at = manifest.len();
    let signature_body = signature_at + 512..signature_at + 512 + size(signature);
    let signed_end = signature_at + signature.len();
    if decoded.len() >= signed_end {
        let framing_intact = (0..signed_end)
            .filter(|i| !manifest_body.contains(i) && !signature_body.contains(i))
            .all(|i| decoded[i] == plain[i]);
        if framing_intact {
            let verifies = std::str::from_utf8(&decoded[signature_body])
                .is_ok_and(|text| keys.verify(&decoded[manifest_body], text).is_ok());
            if !verifies {
                return (SIGNATURE, "the manifest or its signature changed");
            }
            if !failed && decoded[signed_end..] == plain[signed_end..] {
                return (SIGNATURE, ONLY_WHOLE_FILE);
            }
        }
    }
    (
        INTEGRITY,
        "the stream decodes to other bytes, or not at all",
    )
}

/// The mutants the store must refuse, each checked the same way.
struct Refusals {
    store: PathBuf,
    site_dir: PathBuf,
    public: PathBuf,
    work: PathBuf,
    before: std::collections::BTreeMap<String, String>,
    beside: Vec<String>,
    count: usize,
    /// How many mutants were refused per expected class and reason.
    classes: std::collections::BTreeMap<String, usize>,
    /// A store holding the unmutated bundle, and its snapshot: a mutant
    /// only `--whole-file` refuses must load into it and change nothing.
    scratch: PathBuf,
    scratch_before: std::collections::BTreeMap<String, String>,
    /// Such mutants loaded without `--whole-file`.
    identical_loaded: usize,
}

/// The installer's exit codes for a refused bundle (installer/src/main.rs)
/// and the `class` its `--json` result names.
const SIGNATURE: (i32, &str) = (3, "signature");
const INTEGRITY: (i32, &str) = (4, "integrity");
const POLICY: (i32, &str) = (5, "policy");

/// What a mutant must be refused as: the exit class, and why.
type Expected = ((i32, &'static str), &'static str);

/// A bundle's bytes and the text of its whole-file signature.
type Mutant = (Vec<u8>, String);

impl Refusals {
    fn check(&mut self, label: &str, expected: Expected, bundle: &[u8], signature: &str) {
        let path = self.work.join(format!("{}.tar.zst", self.count));
        std::fs::write(&path, bundle).unwrap();
        std::fs::write(format!("{}.minisig", path.display()), signature).unwrap();
        self.check_path(label, expected, &path);
        std::fs::remove_file(&path).unwrap();
    }

    fn check_path(&mut self, label: &str, expected: Expected, path: &Path) {
        let ((code, class), why) = expected;
        // The whole-file signature is checked only when asked for; every
        // other refusal must come from a plain load.
        let ran = if why.contains("whole-file") {
            load_whole_file(path, &self.public, &self.store)
        } else {
            load(path, &self.public, &self.store)
        };
        if why == ONLY_WHOLE_FILE && self.identical_loaded < 3 {
            let plain = load(path, &self.public, &self.scratch);
            assert!(plain.ok, "mutant {label}: {}", plain.stderr);
            assert!(
                snapshot(&self.scratch) == self.scratch_before,
                "mutant {label} installed something other than the original"
            );
            self.identical_loaded += 1;
        }
        assert!(
            !ran.ok,
            "mutant {} ({label}) was accepted: {}",
            self.count, ran.stdout
        );
        assert_eq!(
            ran.code,
            Some(code),
            "mutant {label}: expected exit {code} ({class}: {why}): {}",
            ran.stderr
        );
        assert_eq!(
            ran.stderr.lines().count(),
            1,
            "mutant {label}: error is not one line: {}",
            ran.stderr
        );
        let result: serde_json::Value = serde_json::from_str(ran.stdout.trim())
            .unwrap_or_else(|_| panic!("mutant {label}: no JSON: {}", ran.stdout));
        assert_eq!(
            result["class"], class,
            "mutant {label}: --json class ({why}): {}",
            ran.stdout
        );
        *self.classes.entry(format!("{class}: {why}")).or_default() += 1;
        if !label.starts_with("flip") && !label.starts_with("truncated") {
            eprintln!("refused {label}: {}", ran.stderr.trim());
        }
        assert!(
            snapshot(&self.store) == self.before,
            "mutant {label} changed the store"
        );
        assert_eq!(
            names_in(&self.site_dir),
            self.beside,
            "mutant {label} left something beside the store"
        );
        self.count += 1;
    }
}

#[test]
fn tamper_suite_accepts_none_of_over_1000_mutants() {
    let s = site();
    let key = SigningKey::from_file(&s.key).unwrap();
    let bundles = s.root.join("bundles");
    // The store already holds an arm64 bundle of a later sequence, so an
    // older arm64 bundle is a downgrade.
    let later = sample_bundle("arm64", VERSION, &s.key, &s.root.join("later"), EPOCH + 100);
    let good = sample_bundle("amd64", VERSION, &s.key, &bundles, EPOCH);
    let older = sample_bundle("arm64", VERSION, &s.key, &s.root.join("older"), EPOCH);
    let site_dir = s.root.join("site");
    std::fs::create_dir(&site_dir).unwrap();
    let store = site_dir.join("store");
    assert!(load(&later, &s.public, &store).ok);
    // Sanity: the unmutated bundle loads, into a scratch store.
    let scratch = s.root.join("scratch/store");
    let ok = load(&good, &s.public, &scratch);
    assert!(ok.ok, "{}", ok.stderr);

    let work = s.root.join("mutants");
    std::fs::create_dir(&work).unwrap();
    let mut refusals = Refusals {
        before: snapshot(&store),
        beside: names_in(&site_dir),
        store,
        site_dir,
        public: s.public.clone(),
        work,
        count: 0,
        classes: Default::default(),
        scratch_before: snapshot(&scratch),
        scratch,
        identical_loaded: 0,
    };
    let bytes = std::fs::read(&good).unwrap();
    let signature = std::fs::read_to_string(format!("{}.minisig", good.display())).unwrap();
    let keys = TrustedKeys::from_files(std::slice::from_ref(&s.public)).unwrap();
    let plain = decompress(&bytes);
    let mut rng = Rng(0x5eed_cafe);

    for _ in 0..650 {
        let mut mutant = bytes.clone();
        let at = rng.below(mutant.len() as u64) as usize;
        mutant[at] ^= (rng.below(255) + 1) as u8;
        let expected = flip_class(&plain, &mutant, &keys);
        refusals.check(&format!("flip at {at}"), expected, &mutant, &signature);
    }
    // Two files that differ from the signed one yet decode to its tar
    // stream (random flips rarely land in the few header bytes): a plain
    // load installs the original content, `--whole-file` refuses them.
    let mut unused_bit = bytes.clone();
    // The frame header descriptor's unused bit (RFC 8878, 3.1.1.1.1.4:
    // "a decoder ... shall not interpret it").
    unused_bit[4] ^= 0x10;
    let mut recompressed = zstd::stream::write::Encoder::new(Vec::new(), 1).unwrap();
    recompressed.include_checksum(true).unwrap();
    std::io::Write::write_all(&mut recompressed, &plain).unwrap();
    let recompressed = recompressed.finish().unwrap();
    for (label, mutant) in [
        ("zstd header's unused bit", unused_bit),
        ("the same tar at another zstd level", recompressed),
    ] {
        let expected = flip_class(&plain, &mutant, &keys);
        assert_eq!(expected.1, ONLY_WHOLE_FILE, "{label}");
        refusals.check(label, expected, &mutant, &signature);
    }
    for _ in 0..330 {
        let cut = rng.below(bytes.len() as u64) as usize;
        // The stream ends early (at worst inside the frame's checksum):
        // the one-pass reader sees that before the whole-file signature
        // is checked at the end.
        let expected = (INTEGRITY, "the file ends early");
        refusals.check(
            &format!("truncated at {cut}"),
            expected,
            &bytes[..cut],
            &signature,
        );
    }

    // Crafted archives, signed with the trusted test key.
    let escape = s.root.join("escaped");
    let escape_str = escape.to_str().unwrap();
    let a: &[u8] = b"payload";
    let traversal = format!("files/../../../../../../..{escape_str}");
    // Each signed with a valid whole-file signature: only the checks
    // inside can refuse them.
    let cases: Vec<(&str, Expected, Mutant)> = vec![
        (
            "path traversal, listed",
            (INTEGRITY, "an unsafe path in the signed manifest"),
            crafted(
                &key,
                Arch::Amd64,
                EPOCH,
                &[("files/../x", a)],
                &[regular("files/../x", a)],
            ),
        ),
        (
            "path traversal, unlisted",
            (INTEGRITY, "an unsafe path in the stream"),
            crafted(
                &key,
                Arch::Amd64,
                EPOCH,
                &[("files/x", a)],
                &[regular(&traversal, a)],
            ),
        ),
        (
            "absolute path",
            (INTEGRITY, "an unsafe path in the stream"),
            crafted(
                &key,
                Arch::Amd64,
                EPOCH,
                &[("files/x", a)],
                &[regular(escape_str, a)],
            ),
        ),
        (
            "symlink escape",
            (INTEGRITY, "not a regular file"),
            crafted(
                &key,
                Arch::Amd64,
                EPOCH,
                &[("files/x", a)],
                &[special("files/x", b'2', "/etc/passwd")],
            ),
        ),
        (
            "symlink then write through it",
            (INTEGRITY, "not a regular file"),
            crafted(
                &key,
                Arch::Amd64,
                EPOCH,
                &[("files/d", b""), ("files/d/x", a)],
                &[
                    special("files/d", b'2', escape_str),
                    regular("files/d/x", a),
                ],
            ),
        ),
        (
            "hard link",
            (INTEGRITY, "not a regular file"),
            crafted(
                &key,
                Arch::Amd64,
                EPOCH,
                &[("files/x", a)],
                &[special("files/x", b'1', "/etc/shadow")],
            ),
        ),
        (
            "device",
            (INTEGRITY, "not a regular file"),
            crafted(
                &key,
                Arch::Amd64,
                EPOCH,
                &[("files/x", a)],
                &[special("files/x", b'3', "")],
            ),
        ),
        (
            "fifo",
            (INTEGRITY, "not a regular file"),
            crafted(
                &key,
                Arch::Amd64,
                EPOCH,
                &[("files/x", a)],
                &[special("files/x", b'6', "")],
            ),
        ),
        (
            "directory",
            (INTEGRITY, "not a regular file"),
            crafted(
                &key,
                Arch::Amd64,
                EPOCH,
                &[("files/x", a)],
                &[special("files/x", b'5', "")],
            ),
        ),
        (
            "pax header",
            (INTEGRITY, "not a plain ustar entry"),
            crafted(
                &key,
                Arch::Amd64,
                EPOCH,
                &[("files/x", a)],
                &[regular("files/x", a).with_kind(b'x')],
            ),
        ),
        (
            "duplicate entry",
            (INTEGRITY, "the stream does not match the signed manifest"),
            crafted(
                &key,
                Arch::Amd64,
                EPOCH,
                &[("files/x", a)],
                &[regular("files/x", a), regular("files/x", a)],
            ),
        ),
        (
            "listed twice",
            (INTEGRITY, "a malformed signed manifest"),
            crafted(
                &key,
                Arch::Amd64,
                EPOCH,
                &[("files/x", a), ("files/x", a)],
                &[regular("files/x", a), regular("files/x", a)],
            ),
        ),
        (
            "extra entry at the end",
            (INTEGRITY, "the stream does not match the signed manifest"),
            crafted(
                &key,
                Arch::Amd64,
                EPOCH,
                &[("files/x", a)],
                &[regular("files/x", a), regular("files/y", a)],
            ),
        ),
        (
            "extra entry first",
            (INTEGRITY, "the stream does not match the signed manifest"),
            crafted(
                &key,
                Arch::Amd64,
                EPOCH,
                &[("files/x", a)],
                &[regular("files/y", a), regular("files/x", a)],
            ),
        ),
        (
            "missing entry",
            (INTEGRITY, "the stream does not match the signed manifest"),
            crafted(
                &key,
                Arch::Amd64,
                EPOCH,
                &[("files/x", a), ("files/y", a)],
                &[regular("files/x", a)],
            ),
        ),
        (
            "wrong content",
            (INTEGRITY, "the stream does not match the signed manifest"),
            crafted(
                &key,
                Arch::Amd64,
                EPOCH,
                &[("files/x", a)],
                &[regular("files/x", b"PAYLOAD")],
            ),
        ),
        (
            "wrong size",
            (INTEGRITY, "the stream does not match the signed manifest"),
            crafted(
                &key,
                Arch::Amd64,
                EPOCH,
                &[("files/x", a)],
                &[regular("files/x", b"payload!")],
            ),
        ),
        (
            "blob named for another digest",
            (INTEGRITY, "content does not match its name"),
            crafted(
                &key,
                Arch::Amd64,
                EPOCH,
                &[(&format!("images/blobs/sha256/{}", "0".repeat(64)), a)],
                &[regular(
                    &format!("images/blobs/sha256/{}", "0".repeat(64)),
                    a,
                )],
            ),
        ),
        (
            "swapped manifest",
            // Every signature in it is genuine (the manifest's and, as if
            // the attacker held the key, the whole file's); what is wrong
            // is that the entries are not the ones the manifest lists.
            (INTEGRITY, "the stream does not match the signed manifest"),
            swapped_manifest(&key, &bytes, &std::fs::read(&later).unwrap()),
        ),
        (
            "edited manifest, old signature",
            (SIGNATURE, "the manifest's signature does not match it"),
            edited_manifest(&key, &bytes),
        ),
        (
            "unsigned",
            (SIGNATURE, "the manifest has no signature"),
            unsigned(&key, &bytes),
        ),
        (
            "signed by another key",
            (SIGNATURE, "an untrusted key"),
            other_key(&s.root, &bytes),
        ),
    ];
    for (label, expected, (bundle, signature)) in &cases {
        refusals.check(label, *expected, bundle, signature);
    }
    // The whole-file signature missing, or from another bundle.
    refusals.check(
        "whole-file signature of another bundle",
        (SIGNATURE, "the whole-file signature does not match"),
        &bytes,
        &std::fs::read_to_string(format!("{}.minisig", later.display())).unwrap(),
    );
    let no_sig = refusals.work.join("nosig.tar.zst");
    std::fs::write(&no_sig, &bytes).unwrap();
    refusals.check_path(
        "no whole-file signature",
        (SIGNATURE, "the whole-file signature is missing"),
        &no_sig,
    );
    // An older sequence, properly signed.
    refusals.check_path(
        "older sequence",
        (POLICY, "a downgrade of what the store holds"),
        &older,
    );
    // A volume swapped in from another build: the signed volume list
    // names each volume's sha256, and this one's differs. Integrity, not
    // signature: the list's signature is good, a volume does not match it.
    let swapped = swapped_volume(&s);
    refusals.check_path(
        "volume from another build",
        (INTEGRITY, "a volume does not match the signed volume list"),
        &swapped,
    );

    assert!(!escape.exists(), "something was written outside the store");
    assert!(refusals.count >= 1000, "only {} mutants", refusals.count);
    assert!(
        refusals.identical_loaded >= 2,
        "the mutants that decode to the original content were not loaded"
    );
    eprintln!(
        "tamper suite: {} mutants refused, by class and reason {:#?}",
        refusals.count, refusals.classes
    );
}

trait WithKind {
    fn with_kind(self, kind: u8) -> Self;
}

impl WithKind for Raw {
    fn with_kind(mut self, kind: u8) -> Raw {
        self.kind = kind;
        self
    }
}

/// Splits a tar stream into (header+body) chunks per entry.
fn tar_entries(tar: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut at = 0;
    while at + 512 <= tar.len() && tar[at..at + 512].iter().any(|&b| b != 0) {
        let size = u64::from_str_radix(
            std::str::from_utf8(&tar[at + 124..at + 135])
                .unwrap()
                .trim_matches('\0'),
            8,
        )
        .unwrap() as usize;
        let end = at + 512 + size.div_ceil(512) * 512;
        out.push(tar[at..end].to_vec());
        at = end;
    }
    out
}

fn reassemble(chunks: &[Vec<u8>]) -> Vec<u8> {
    let mut tar: Vec<u8> = chunks.concat();
    tar.extend_from_slice(&[0u8; 1024]);
    tar
}

fn manifest_id(chunk: &[u8]) -> String {
    let m: Manifest = serde_json::from_slice(&chunk[512..]).unwrap_or_else(|_| {
        let end = chunk[512..].iter().rposition(|&b| b != 0).unwrap() + 513;
        serde_json::from_slice(&chunk[512..end]).unwrap()
    });
    m.bundle_id
}

/// Bundle A's signed manifest in front of bundle B's entries.
fn swapped_manifest(key: &SigningKey, a: &[u8], b: &[u8]) -> (Vec<u8>, String) {
    let a = tar_entries(&decompress(a));
    let b = tar_entries(&decompress(b));
    let mut chunks = vec![a[0].clone(), a[1].clone()];
    chunks.extend(b[2..].iter().cloned());
    sign_whole(key, reassemble(&chunks), &manifest_id(&a[0]))
}

/// The manifest with one digit of its sequence changed, same length, old signature.
fn edited_manifest(key: &SigningKey, bundle: &[u8]) -> (Vec<u8>, String) {
    let mut chunks = tar_entries(&decompress(bundle));
    let id = manifest_id(&chunks[0]);
    let text = String::from_utf8(chunks[0][512..].to_vec()).unwrap();
    let edited = text.replacen(
        &format!("\"sequence\": {EPOCH}"),
        &format!("\"sequence\": {}", EPOCH + 9),
        1,
    );
    assert_ne!(text, edited);
    chunks[0].truncate(512);
    chunks[0].extend_from_slice(edited.as_bytes());
    sign_whole(key, reassemble(&chunks), &id)
}

/// The signature entry removed.
fn unsigned(key: &SigningKey, bundle: &[u8]) -> (Vec<u8>, String) {
    let mut chunks = tar_entries(&decompress(bundle));
    let id = manifest_id(&chunks[0]);
    chunks.remove(1);
    sign_whole(key, reassemble(&chunks), &id)
}

/// A real bundle made with a key the store does not trust.
fn other_key(root: &Path, _: &[u8]) -> (Vec<u8>, String) {
    let (key, _) = keygen(&root.join("other-keys"));
    let bundle = sample_bundle("amd64", VERSION, &key, &root.join("other"), EPOCH);
    (
        std::fs::read(&bundle).unwrap(),
        std::fs::read_to_string(format!("{}.minisig", bundle.display())).unwrap(),
    )
}

/// Two builds split into volumes; the second volume of one swapped into the other.
fn swapped_volume(s: &Site) -> PathBuf {
    let split = |dir: &str, epoch: u64| {
        let out = s.root.join(dir);
        run_ok(
            builder()
                .args([
                    "bundle",
                    "--sample",
                    "--arch",
                    "amd64",
                    "--kubeedge-version",
                    VERSION,
                    "--volume-size",
                    "300000",
                    "--key",
                ])
                .arg(&s.key)
                .arg("--out")
                .arg(&out)
                .env("SOURCE_DATE_EPOCH", epoch.to_string()),
        );
        out
    };
    let mine = split("vol-a", EPOCH);
    let theirs = split("vol-b", EPOCH + 1);
    let part = format!("{}.part-002-of-005", bundle_name("amd64"));
    assert!(
        mine.join(&part).exists(),
        "expected 5 volumes: {:?}",
        list_files(&mine)
    );
    std::fs::copy(theirs.join(&part), mine.join(&part)).unwrap();
    mine
}

#[test]
fn a_killed_load_leaves_the_store_byte_identical_and_a_rerun_succeeds() {
    let s = site();
    let site_dir = s.root.join("site");
    let store = site_dir.join("store");
    let first = sample_bundle("amd64", VERSION, &s.key, &s.root.join("b"), EPOCH);
    let second = sample_bundle("arm64", VERSION, &s.key, &s.root.join("b"), EPOCH);
    assert!(load(&first, &s.public, &store).ok);
    let before = snapshot(&store);

    // Feed the bundle through stdin and stop half-way, so the load is
    // certainly mid-stream (its work directory exists) when it is killed.
    let bytes = std::fs::read(&second).unwrap();
    let mut child = edgeferry()
        .args(["load", "-", "--key"])
        .arg(&s.public)
        .arg("--signature")
        .arg(format!("{}.minisig", second.display()))
        .arg("--store")
        .arg(&store)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(&bytes[..bytes.len() / 2]).unwrap();
    stdin.flush().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let staged = loop {
        let work: Vec<String> = names_in(&site_dir)
            .into_iter()
            .filter(|n| n.starts_with(".store.load-"))
            .collect();
        if let Some(name) = work.first() {
            let blobs = site_dir.join(name).join("blobs/sha256");
            if names_in(&blobs).iter().any(|n| !n.ends_with(".partial")) {
                break name.clone();
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the load never started writing"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    };
    // SIGKILL: no cleanup code runs.
    child.kill().unwrap();
    child.wait().unwrap();
    drop(stdin);
    assert!(
        snapshot(&store) == before,
        "a killed load changed the store"
    );
    assert!(
        site_dir.join(&staged).exists(),
        "the killed load's work directory should be left for the next run to clean"
    );

    let rerun = load(&second, &s.public, &store);
    assert!(rerun.ok, "{}", rerun.stderr);
    assert_eq!(
        names_in(&site_dir),
        [".store.lock", "store"],
        "the rerun cleans up the killed load's work directory (the store's lock file stays)"
    );
    let listed: serde_json::Value = serde_json::from_str(
        &run_ok(
            edgeferry()
                .args(["store", "list", "--json", "--store"])
                .arg(&store),
        )
        .stdout,
    )
    .unwrap();
    assert_eq!(listed["bundles"].as_object().unwrap().len(), 2);
}

#[test]
fn amd64_and_arm64_merge_into_one_multi_arch_index() {
    require_tool("skopeo", "skopeo");
    let s = site();
    let store = s.root.join("site/store");
    for arch in ["amd64", "arm64"] {
        let bundle = sample_bundle(arch, VERSION, &s.key, &s.root.join("b"), EPOCH);
        let ran = load(&bundle, &s.public, &store);
        assert!(ran.ok, "{}", ran.stderr);
    }
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(store.join("index.json")).unwrap()).unwrap();
    let reference = "docker.io/kubeedge/installation-package:v1.23.1";
    let entry = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == reference)
        .expect("the tag is in the store's index");
    let digest = entry["digest"].as_str().unwrap();
    let merged_bytes = std::fs::read(store.join("blobs/sha256").join(&digest[7..])).unwrap();
    assert_eq!(format!("sha256:{}", sha256_hex(&merged_bytes)), digest);
    let merged: serde_json::Value = serde_json::from_slice(&merged_bytes).unwrap();
    let platforms: Vec<String> = merged["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            format!(
                "{}/{}",
                m["platform"]["os"].as_str().unwrap(),
                m["platform"]["architecture"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(platforms, ["linux/amd64", "linux/arm64"]);
    // Every platform manifest the merged index lists is in the store.
    for m in merged["manifests"].as_array().unwrap() {
        assert!(store
            .join("blobs/sha256")
            .join(&m["digest"].as_str().unwrap()[7..])
            .exists());
    }
    // The store is itself an OCI layout a stock tool reads, per arch.
    for arch in ["amd64", "arm64"] {
        let inspected = run_ok(
            Command::new("skopeo")
                .args(["inspect", "--override-arch", arch])
                .arg(format!("oci:{}:{reference}", store.display())),
        );
        let inspected: serde_json::Value = serde_json::from_str(&inspected.stdout).unwrap();
        assert_eq!(inspected["Architecture"], arch);
    }
    let listed = run_ok(edgeferry().args(["store", "list", "--store"]).arg(&store)).stdout;
    assert!(
        listed.contains("linux/amd64") && listed.contains("linux/arm64"),
        "{listed}"
    );
    assert!(
        listed.contains("keadm-v1.23.1-linux-amd64.tar.gz")
            && listed.contains("keadm-v1.23.1-linux-arm64.tar.gz"),
        "{listed}"
    );
    // The release files are served from files/, and SHA256SUMS checks them.
    run_ok(
        Command::new("sha256sum")
            .args(["-c", "SHA256SUMS"])
            .current_dir(&store),
    );
}

#[test]
fn loading_the_same_bundle_twice_changes_nothing() {
    let s = site();
    let store = s.root.join("site/store");
    let bundle = sample_bundle("arm", VERSION, &s.key, &s.root.join("b"), EPOCH);
    let first = load(&bundle, &s.public, &store);
    assert!(first.ok, "{}", first.stderr);
    let before = snapshot(&store);
    let inode_before = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&store).unwrap());
    let second = load(&bundle, &s.public, &store);
    assert!(second.ok, "{}", second.stderr);
    let report: serde_json::Value = serde_json::from_str(&second.stdout).unwrap();
    assert_eq!(report["changed"], false);
    assert!(snapshot(&store) == before);
    assert_eq!(
        inode_before,
        std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&store).unwrap()),
        "the store was swapped"
    );
}

#[test]
fn an_older_bundle_needs_allow_downgrade() {
    let s = site();
    let store = s.root.join("site/store");
    let newer = sample_bundle("amd64", VERSION, &s.key, &s.root.join("new"), EPOCH + 10);
    let older = sample_bundle("amd64", VERSION, &s.key, &s.root.join("old"), EPOCH);
    assert!(load(&newer, &s.public, &store).ok);
    let refused = load(&older, &s.public, &store);
    assert_eq!(refused.code, Some(5), "{}", refused.stderr);
    assert!(
        refused.stderr.contains("downgrade") && refused.stderr.contains("--allow-downgrade"),
        "{}",
        refused.stderr
    );
    let allowed = run(edgeferry()
        .arg("load")
        .arg(&older)
        .arg("--key")
        .arg(&s.public)
        .arg("--store")
        .arg(&store)
        .arg("--allow-downgrade"));
    assert!(allowed.ok, "{}", allowed.stderr);
}

#[test]
fn verify_names_the_class_and_skip_signature_warns() {
    let s = site();
    let bundle = sample_bundle("amd64", VERSION, &s.key, &s.root.join("b"), EPOCH);
    let ok = run_ok(
        edgeferry()
            .arg("verify")
            .arg(&bundle)
            .arg("--key")
            .arg(&s.public)
            .arg("--json"),
    );
    let ok: serde_json::Value = serde_json::from_str(&ok.stdout).unwrap();
    assert_eq!(ok["ok"], true);
    assert_eq!(ok["arch"], "amd64");
    assert_eq!(ok["sample"], true);
    assert_eq!(ok["whole_file"], false);
    let whole = run_ok(
        edgeferry()
            .arg("verify")
            .arg(&bundle)
            .arg("--key")
            .arg(&s.public)
            .arg("--whole-file")
            .arg("--json"),
    );
    let whole: serde_json::Value = serde_json::from_str(&whole.stdout).unwrap();
    assert_eq!(whole["whole_file"], true);

    let (other, other_pub) = keygen(&s.root.join("other"));
    let _ = other;
    let unknown = run(edgeferry()
        .arg("verify")
        .arg(&bundle)
        .arg("--key")
        .arg(&other_pub));
    assert_eq!(unknown.code, Some(3), "{}", unknown.stderr);
    assert!(unknown.stderr.contains("unknown key"), "{}", unknown.stderr);

    let skipped = run(edgeferry()
        .arg("verify")
        .arg(&bundle)
        .arg("--insecure-skip-signature"));
    assert!(skipped.ok, "{}", skipped.stderr);
    assert!(skipped.stderr.contains("WARNING"), "{}", skipped.stderr);
    assert!(skipped.stdout.contains("NOBODY"), "{}", skipped.stdout);

    let mut flipped = std::fs::read(&bundle).unwrap();
    let middle = flipped.len() / 2;
    flipped[middle] ^= 0xff;
    let path = s.root.join("flipped.tar.zst");
    std::fs::write(&path, &flipped).unwrap();
    std::fs::copy(
        format!("{}.minisig", bundle.display()),
        format!("{}.minisig", path.display()),
    )
    .unwrap();
    let bad = run(edgeferry()
        .arg("verify")
        .arg(&path)
        .arg("--key")
        .arg(&s.public)
        .arg("--json"));
    let keys = TrustedKeys::from_files(std::slice::from_ref(&s.public)).unwrap();
    let ((code, class), why) = flip_class(
        &decompress(&std::fs::read(&bundle).unwrap()),
        &flipped,
        &keys,
    );
    assert_eq!(bad.code, Some(code), "{class} ({why}): {}", bad.stderr);
    let bad: serde_json::Value = serde_json::from_str(bad.stdout.trim()).unwrap();
    assert_eq!(bad["ok"], false);
    assert_eq!(bad["class"], class, "{why}");
}

/// A read-only bind mount of `dir`, removed on drop.
struct ReadOnly(PathBuf);

impl ReadOnly {
    fn mount(dir: &Path, at: &Path) -> ReadOnly {
        std::fs::create_dir_all(at).unwrap();
        run_ok(Command::new("mount").arg("--bind").arg(dir).arg(at));
        let guard = ReadOnly(at.to_path_buf());
        run_ok(
            Command::new("mount")
                .args(["-o", "remount,bind,ro"])
                .arg(at),
        );
        guard
    }
}

impl Drop for ReadOnly {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn a_split_bundle_loads_from_read_only_media_and_bad_volumes_are_named() {
    let s = site();
    let out = s.root.join("volumes");
    run_ok(
        builder()
            .args([
                "bundle",
                "--sample",
                "--arch",
                "arm64",
                "--kubeedge-version",
                VERSION,
                "--volume-size",
                "250000",
                "--key",
            ])
            .arg(&s.key)
            .arg("--out")
            .arg(&out)
            .env("SOURCE_DATE_EPOCH", EPOCH.to_string()),
    );
    let files = list_files(&out);
    let parts: Vec<&String> = files.iter().filter(|f| f.contains(".part-")).collect();
    assert!(parts.len() >= 3, "{files:?}");
    assert!(
        !files.contains(&bundle_name("arm64")),
        "the whole bundle is replaced by its volumes"
    );
    // Stock tools still work on the volumes: sums, and the joined file's signature.
    run_ok(
        Command::new("sha256sum")
            .args(["-c", "SHA256SUMS"])
            .current_dir(&out),
    );
    let joined = s.root.join(bundle_name("arm64"));
    let mut cat = Command::new("sh");
    cat.arg("-c").arg(format!(
        "cat {}/*.part-* > {}",
        out.display(),
        joined.display()
    ));
    run_ok(&mut cat);
    require_tool("minisign", "minisign");
    run_ok(
        Command::new("minisign")
            .arg("-Vm")
            .arg(&joined)
            .arg("-x")
            .arg(out.join(format!("{}.minisig", bundle_name("arm64"))))
            .arg("-p")
            .arg(&s.public),
    );

    let media = s.root.join("media");
    let before = snapshot(&out);
    {
        let _ro = ReadOnly::mount(&out, &media);
        assert!(
            std::fs::write(media.join("probe"), b"x").is_err(),
            "the bind mount is not read-only"
        );
        let store = s.root.join("site/store");
        let ran = load(&media, &s.public, &store);
        assert!(ran.ok, "{}", ran.stderr);
        let listed = run_ok(edgeferry().args(["store", "list", "--store"]).arg(&store)).stdout;
        assert!(listed.contains("linux/arm64"), "{listed}");
    }
    assert!(snapshot(&out) == before, "the volumes were modified");

    // A missing volume and a corrupt one are named before anything is unpacked.
    let store = s.root.join("site2/store");
    let part = out.join(parts[1]);
    let saved = std::fs::read(&part).unwrap();
    std::fs::remove_file(&part).unwrap();
    let missing = load(&out, &s.public, &store);
    assert_eq!(missing.code, Some(4), "{}", missing.stderr);
    assert!(
        missing.stderr.contains(parts[1].as_str()) && missing.stderr.contains("missing"),
        "{}",
        missing.stderr
    );
    let mut corrupt = saved.clone();
    corrupt[10] ^= 1;
    std::fs::write(&part, corrupt).unwrap();
    let bad = load(&out, &s.public, &store);
    assert_eq!(bad.code, Some(4), "{}", bad.stderr);
    assert!(
        bad.stderr.contains(parts[1].as_str()) && bad.stderr.contains("sha256"),
        "{}",
        bad.stderr
    );
    assert!(!store.exists(), "nothing was unpacked");
}

/// The printer draws progress only for a terminal, and never with
/// EDGEFERRY_NO_PROGRESS, --quiet or --json; stdout keeps the result. A
/// real pseudo-terminal comes from util-linux's `script`.
#[test]
fn progress_shows_on_a_terminal_only_and_can_be_turned_off() {
    require_tool("script", "bsdutils");
    let s = site();
    let bundle = sample_bundle("amd64", VERSION, &s.key, &s.root.join("b"), EPOCH);
    let verify = format!(
        "{} verify {} --key {}",
        bin("edgeferry").display(),
        bundle.display(),
        s.public.display()
    );
    let on_a_tty = |extra: &str, env: Option<(&str, &str)>| -> String {
        let mut cmd = Command::new("script");
        cmd.args(["-qec", &format!("{verify} {extra}"), "/dev/null"]);
        cmd.env_remove("EDGEFERRY_NO_PROGRESS");
        if let Some((k, v)) = env {
            cmd.env(k, v);
        }
        let ran = run_ok(&mut cmd);
        ran.stdout
    };
    let bar = "verifying [";
    let plain = on_a_tty("", None);
    assert!(plain.contains(bar), "a terminal gets a bar: {plain:?}");
    assert!(plain.contains("ok: bundle"), "{plain:?}");
    for (extra, env) in [
        ("", Some(("EDGEFERRY_NO_PROGRESS", "1"))),
        ("--quiet", None),
        ("--json", None),
    ] {
        let out = on_a_tty(extra, env);
        assert!(!out.contains(bar), "no bar with {extra:?} {env:?}: {out:?}");
        assert!(out.contains("ok"), "{out:?}");
    }
    // Not a terminal: no bar, and stdout is the result alone.
    let piped = run_ok(
        edgeferry()
            .arg("verify")
            .arg(&bundle)
            .arg("--key")
            .arg(&s.public),
    );
    assert!(!piped.stderr.contains(bar), "{}", piped.stderr);
    assert!(piped.stdout.starts_with("ok: bundle"), "{}", piped.stdout);
    assert_eq!(piped.stdout.lines().count(), 1);
}
