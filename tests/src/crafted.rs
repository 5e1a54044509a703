//! Bundles no honest builder would write, validly signed: raw tar entries,
//! a signed manifest of the test's choosing, and the whole-file signature,
//! so that only the reader's inner checks can refuse them.

use std::io::Write;

use edgeferry_bundle::format::{self, Manifest};
use edgeferry_bundle::sign::SigningKey;

/// The mtime of every raw entry (readers ignore it).
pub const RAW_MTIME: u64 = 1_763_000_000;

/// A raw tar entry, for archives no honest builder would write.
pub struct Raw {
    pub name: Vec<u8>,
    pub kind: u8,
    pub data: Vec<u8>,
    pub link: Vec<u8>,
}

pub fn regular(name: &str, data: &[u8]) -> Raw {
    Raw {
        name: name.as_bytes().to_vec(),
        kind: b'0',
        data: data.to_vec(),
        link: Vec::new(),
    }
}

pub fn special(name: &str, kind: u8, link: &str) -> Raw {
    Raw {
        name: name.as_bytes().to_vec(),
        kind,
        data: Vec::new(),
        link: link.as_bytes().to_vec(),
    }
}

/// Appends `raw` as a ustar header, its data and the zero padding.
pub fn append_raw(tar: &mut Vec<u8>, raw: &Raw) {
    let mut h = [0u8; 512];
    h[..raw.name.len().min(100)].copy_from_slice(&raw.name[..raw.name.len().min(100)]);
    h[100..108].copy_from_slice(b"0000644\0");
    h[108..116].copy_from_slice(b"0000000\0");
    h[116..124].copy_from_slice(b"0000000\0");
    h[124..136].copy_from_slice(format!("{:011o}\0", raw.data.len()).as_bytes());
    h[136..148].copy_from_slice(format!("{:011o}\0", RAW_MTIME).as_bytes());
    h[156] = raw.kind;
    h[157..157 + raw.link.len()].copy_from_slice(&raw.link);
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
    h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    tar.extend_from_slice(&h);
    tar.extend_from_slice(&raw.data);
    tar.resize(tar.len().div_ceil(512) * 512, 0);
}

/// The tar stream of a bundle up to its end marker: `manifest` (its id
/// computed here) signed by `key`, its signature, then `stream`. Returns
/// the stream and the bundle id.
pub fn signed_tar(key: &SigningKey, mut manifest: Manifest, stream: &[Raw]) -> (Vec<u8>, String) {
    manifest.bundle_id = manifest.compute_id();
    let manifest_bytes = manifest.to_bytes();
    let signature = key.sign_bytes(&manifest_bytes, &format::trusted_comment(&manifest));
    let mut tar = Vec::new();
    append_raw(&mut tar, &regular(format::MANIFEST_PATH, &manifest_bytes));
    append_raw(
        &mut tar,
        &regular(format::SIGNATURE_PATH, signature.as_bytes()),
    );
    for raw in stream {
        append_raw(&mut tar, raw);
    }
    (tar, manifest.bundle_id)
}

/// Compresses `tar` into one zstd frame and signs the result as a whole
/// file: (bundle bytes, `<bundle>.minisig` text).
pub fn sign_whole(key: &SigningKey, tar: Vec<u8>, id: &str) -> (Vec<u8>, String) {
    let mut encoder = zstd::Encoder::new(Vec::new(), 3).unwrap();
    encoder.include_checksum(true).unwrap();
    encoder.write_all(&tar).unwrap();
    let compressed = encoder.finish().unwrap();
    let sig = key.sign_bytes(
        &compressed,
        &format!("edgeferry-bundle-file name=crafted id={id}"),
    );
    (compressed, sig)
}
