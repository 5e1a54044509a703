//! Publishing files so that readers see the old version or the new one,
//! never half of either: write a temp file in the same directory, fsync,
//! rename, fsync the directory.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use anyhow::{Context, Result};

/// A temp file next to `dest`; dropped without `persist`, it disappears.
pub fn temp_beside(dest: &Path) -> Result<tempfile::NamedTempFile> {
    let dir = parent_dir(dest);
    tempfile::Builder::new()
        .prefix(".edgeferry-")
        .suffix(".partial")
        .tempfile_in(dir)
        .with_context(|| format!("creating a temp file in {}", dir.display()))
}

/// Flushes, fsyncs and renames `tmp` to `dest`, then fsyncs the directory.
pub fn persist(tmp: tempfile::NamedTempFile, dest: &Path, mode: u32) -> Result<()> {
    tmp.as_file()
        .set_permissions(std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("setting mode on {}", tmp.path().display()))?;
    tmp.as_file()
        .sync_all()
        .with_context(|| format!("syncing {}", tmp.path().display()))?;
    tmp.persist(dest)
        .map_err(|e| e.error)
        .with_context(|| format!("renaming into {}", dest.display()))?;
    sync_dir(parent_dir(dest))
}

pub fn write_file(dest: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    let mut tmp = temp_beside(dest)?;
    tmp.write_all(bytes)
        .with_context(|| format!("writing {}", tmp.path().display()))?;
    persist(tmp, dest, mode)
}

pub fn sync_dir(dir: &Path) -> Result<()> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("syncing directory {}", dir.display()))
}

fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}
