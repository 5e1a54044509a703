//! KubeEdge release assets: the upstream `checksum_<asset>.txt` files and
//! the check of an asset against its checksum. Both origins use these: a
//! `--from` directory's assets are checked here before packing, and the
//! online fetcher (`crate::fetch::release`) reads the checksum file with
//! [`parse_checksum_file`] before it downloads the asset.

use std::io::Read;
use std::path::Path;

use anyhow::{bail, Context, Result};
use edgeferry_bundle::hashing::hex;
use sha2::{Digest, Sha256, Sha512};

/// A release asset whose SHA-512 matched its checksum file.
pub struct CheckedAsset {
    pub size: u64,
    pub sha256: String,
    pub sha512: String,
}

/// The digest in an upstream `checksum_<asset>.txt`: the bare lowercase
/// SHA-512 hex KubeEdge writes (a `sha512sum`-style trailing name is
/// tolerated), or `None` if the file holds no such digest.
pub fn parse_checksum_file(text: &str) -> Option<String> {
    let expected = text.split_whitespace().next()?.to_ascii_lowercase();
    (expected.len() == 128 && expected.bytes().all(|b| b.is_ascii_hexdigit())).then_some(expected)
}

/// Streams `path` once through sha512 and sha256 and compares the sha512
/// with the bare hex in the upstream checksum file.
pub fn check_release_asset(path: &Path, checksum_path: &Path) -> Result<CheckedAsset> {
    let text = std::fs::read_to_string(checksum_path).map_err(|e| {
        anyhow::anyhow!(
            "missing or unreadable checksum file {} for {}: {e}: put the checksum file from the same KubeEdge release next to it",
            checksum_path.display(),
            path.display()
        )
    })?;
    let Some(expected) = parse_checksum_file(&text) else {
        bail!(
            "checksum file {} does not hold a SHA-512 hex digest: fetch it again from the KubeEdge release",
            checksum_path.display()
        );
    };
    let mut file =
        std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut sha512 = Sha512::new();
    let mut sha256 = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut size = 0u64;
    loop {
        let n = file
            .read(&mut buf)
            .with_context(|| format!("reading {}", path.display()))?;
        if n == 0 {
            break;
        }
        sha512.update(&buf[..n]);
        sha256.update(&buf[..n]);
        size += n as u64;
    }
    let actual = hex(&sha512.finalize());
    if actual != expected {
        bail!(
            "release asset {} has sha512 {actual} but {} says {expected}: the download is corrupt or not from this release, fetch both again",
            path.display(),
            checksum_path.display()
        );
    }
    Ok(CheckedAsset {
        size,
        sha256: hex(&sha256.finalize()),
        sha512: actual,
    })
}
