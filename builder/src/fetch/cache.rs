//! The download cache: content-addressed, so a rerun, a second arch or a
//! second version takes what it already has.
//!
//! ```text
//! <cache>/blobs/sha256/<hex>           OCI blobs (indexes, manifests, configs, layers)
//!                                      and release checksum files
//! <cache>/blobs/sha512/<hex>           release assets, by the SHA-512 upstream publishes
//! <cache>/blobs/<alg>/<hex>.partial    a download in progress; never read as complete
//! ```
//!
//! A file gets its final name only after its digest checked, so whatever
//! has one is complete. JSON is checked again before it is parsed.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use edgeferry_bundle::format::sha256_hex_of_digest;
use edgeferry_bundle::hashing::sha256_hex;

use super::http::partial_path;

#[derive(Clone, Debug)]
pub struct Cache {
    root: PathBuf,
}

fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

impl Cache {
    /// A cache at `root`; nothing is created until something is stored.
    pub fn at(root: &Path) -> Cache {
        Cache {
            root: root.to_path_buf(),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where the blob `sha256:<hex>` lives; `None` for anything else.
    pub fn sha256_path(&self, digest: &str) -> Option<PathBuf> {
        let hex = sha256_hex_of_digest(digest)?;
        Some(self.root.join("blobs/sha256").join(hex))
    }

    /// Where the release asset whose SHA-512 is `hex` lives.
    pub fn sha512_path(&self, hex: &str) -> Option<PathBuf> {
        is_hex(hex, 128).then(|| self.root.join("blobs/sha512").join(hex))
    }

    /// The bytes of `sha256:<hex>` if the cache has them and they still hash
    /// to it; a file that does not is removed, and counts as missing.
    pub fn read_verified(&self, digest: &str, limit: u64) -> Result<Option<Vec<u8>>> {
        let Some(path) = self.sha256_path(digest) else {
            return Ok(None);
        };
        match fs::metadata(&path) {
            Ok(meta) if meta.len() <= limit => {}
            Ok(_) => return Ok(None),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        }
        let bytes = fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        if Some(sha256_hex(&bytes).as_str()) == sha256_hex_of_digest(digest) {
            Ok(Some(bytes))
        } else {
            let _ = fs::remove_file(&path);
            Ok(None)
        }
    }

    /// Stores bytes already checked against `digest` (`sha256:<hex>`) and
    /// returns the path.
    pub fn put_sha256(&self, digest: &str, bytes: &[u8]) -> Result<PathBuf> {
        let path = self
            .sha256_path(digest)
            .with_context(|| format!("{digest} is not a sha256 digest"))?;
        debug_assert_eq!(
            Some(sha256_hex(bytes).as_str()),
            sha256_hex_of_digest(digest)
        );
        if path.is_file() {
            return Ok(path);
        }
        let dir = path.parent().expect("blob paths have a parent");
        fs::create_dir_all(dir).with_context(|| {
            format!(
                "creating the cache directory {}: pass --cache DIR",
                dir.display()
            )
        })?;
        let partial = partial_path(&path);
        fs::write(&partial, bytes)
            .and_then(|()| fs::File::open(&partial)?.sync_all())
            .and_then(|()| fs::rename(&partial, &path))
            .with_context(|| format!("writing {}", path.display()))?;
        Ok(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_only_for_real_digests() {
        let cache = Cache::at(Path::new("/c"));
        let hex = "ab".repeat(32);
        assert_eq!(
            cache.sha256_path(&format!("sha256:{hex}")).unwrap(),
            PathBuf::from(format!("/c/blobs/sha256/{hex}"))
        );
        assert!(cache.sha256_path("sha256:../../etc/passwd").is_none());
        assert!(cache.sha256_path(&format!("sha512:{hex}")).is_none());
        assert!(cache.sha512_path(&"ab".repeat(64)).is_some());
        assert!(cache.sha512_path(&"AB".repeat(64)).is_none());
        assert!(cache.sha512_path("../x").is_none());
    }

    #[test]
    fn a_corrupt_entry_is_a_miss_and_goes_away() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = Cache::at(tmp.path());
        let bytes = b"{\"schemaVersion\":2}";
        let digest = format!("sha256:{}", sha256_hex(bytes));
        let path = cache.put_sha256(&digest, bytes).unwrap();
        assert_eq!(
            cache.read_verified(&digest, 1024).unwrap().unwrap(),
            bytes.to_vec()
        );
        assert!(!partial_path(&path).exists());
        fs::write(&path, b"tampered").unwrap();
        assert!(cache.read_verified(&digest, 1024).unwrap().is_none());
        assert!(!path.exists());
    }
}
