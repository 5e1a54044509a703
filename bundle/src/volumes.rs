//! Splitting a bundle into volumes for removable media, and reading them
//! back in place.
//!
//! Volumes are plain byte ranges of the bundle file (`cat` joins them), named
//! `<bundle>.part-001-of-003`. A signed sidecar, `<bundle>.volumes.json` and
//! its `.minisig`, lists each volume's name, size and sha256 and the bundle
//! id, so a missing, corrupt or foreign volume is named before anything is
//! unpacked.

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::atomic;
use crate::hashing::hex;
use crate::pack::{update_sums, Packed};
use crate::sign::{SigningKey, TrustedKeys};

/// FAT32's largest file: 4 GiB minus one byte.
pub const FAT32_MAX: u64 = (4 << 30) - 1;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VolumeList {
    pub format_version: u32,
    /// File name of the whole bundle the volumes join into.
    pub bundle: String,
    pub bundle_id: String,
    pub size: u64,
    pub sha256: String,
    pub volumes: Vec<Volume>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Volume {
    pub name: String,
    pub size: u64,
    pub sha256: String,
}

/// `fat32`, `exfat` (no limit: one volume) or a byte count.
pub fn parse_volume_size(text: &str) -> Result<u64, String> {
    match text {
        "fat32" => Ok(FAT32_MAX),
        "exfat" => Ok(u64::MAX),
        other => match other.parse::<u64>() {
            Ok(0) | Err(_) => Err(format!(
                "volume size {other:?}: use fat32, exfat or a positive number of bytes"
            )),
            Ok(n) => Ok(n),
        },
    }
}

pub fn sidecar_name(bundle_name: &str) -> String {
    format!("{bundle_name}.volumes.json")
}

/// Splits a packed bundle into volumes of at most `volume_size` bytes,
/// writes the signed sidecar, rewrites `SHA256SUMS`, and removes the whole
/// bundle file. The bundle's own `.minisig` stays: it covers the joined file.
pub fn split(packed: &Packed, volume_size: u64, key: &SigningKey) -> Result<Vec<PathBuf>> {
    let out_dir = packed.bundle.parent().context("bundle has a directory")?;
    let bundle_name = packed
        .bundle
        .file_name()
        .context("bundle has a name")?
        .to_string_lossy()
        .into_owned();
    let count = packed.size.div_ceil(volume_size).max(1);
    if count > 999 {
        bail!("volume size {volume_size} makes {count} volumes, more than 999: pick a larger --volume-size");
    }
    let mut input = File::open(&packed.bundle)
        .with_context(|| format!("opening {}", packed.bundle.display()))?;
    let mut written = Vec::new();
    let result = (|| -> Result<Vec<Volume>> {
        let mut volumes = Vec::new();
        for index in 1..=count {
            let name = format!("{bundle_name}.part-{index:03}-of-{count:03}");
            let path = out_dir.join(&name);
            let mut tmp = atomic::temp_beside(&path)?;
            let mut hasher = Sha256::new();
            let offset = (index - 1).saturating_mul(volume_size);
            let mut left = volume_size.min(packed.size - offset);
            let mut size = 0u64;
            let mut buf = vec![0u8; 1 << 20];
            while left > 0 {
                let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
                input.read_exact(&mut buf[..want])?;
                hasher.update(&buf[..want]);
                tmp.write_all(&buf[..want])?;
                left -= want as u64;
                size += want as u64;
            }
            atomic::persist(tmp, &path, 0o644)?;
            written.push(path);
            volumes.push(Volume {
                name,
                size,
                sha256: hex(&hasher.finalize()),
            });
        }
        Ok(volumes)
    })();
    let volumes = match result {
        Ok(v) => v,
        Err(e) => {
            for path in &written {
                let _ = std::fs::remove_file(path);
            }
            return Err(e);
        }
    };
    let list = VolumeList {
        format_version: 1,
        bundle: bundle_name.clone(),
        bundle_id: packed.manifest.bundle_id.clone(),
        size: packed.size,
        sha256: packed.sha256.clone(),
        volumes,
    };
    let mut bytes = serde_json::to_vec_pretty(&list)?;
    bytes.push(b'\n');
    let sidecar = out_dir.join(sidecar_name(&bundle_name));
    let comment = format!(
        "edgeferry-volumes bundle={bundle_name} id={} count={count}",
        packed.manifest.bundle_id
    );
    atomic::write_file(
        &PathBuf::from(format!("{}.minisig", sidecar.display())),
        key.sign_bytes(&bytes, &comment).as_bytes(),
        0o644,
    )?;
    atomic::write_file(&sidecar, &bytes, 0o644)?;
    let mut sums: Vec<(String, String)> = list
        .volumes
        .iter()
        .map(|v| (v.name.clone(), v.sha256.clone()))
        .collect();
    sums.push((
        sidecar_name(&bundle_name),
        crate::hashing::sha256_hex(&bytes),
    ));
    update_sums(&packed.sums, &sums)?;
    remove_sums_line(&packed.sums, &bundle_name)?;
    std::fs::remove_file(&packed.bundle)
        .with_context(|| format!("removing {}", packed.bundle.display()))?;
    Ok(written)
}

fn remove_sums_line(path: &Path, name: &str) -> Result<()> {
    let text = std::fs::read_to_string(path)?;
    let kept: String = text
        .lines()
        .filter(|l| l.split_once("  ").map(|(_, n)| n) != Some(name))
        .map(|l| format!("{l}\n"))
        .collect();
    atomic::write_file(path, kept.as_bytes(), 0o644)
}

/// Volumes checked and ready to read in order, as one stream.
pub struct OpenVolumes {
    pub list: VolumeList,
    pub paths: Vec<PathBuf>,
}

/// Reads and checks the sidecar (its signature, unless `keys` is `None`),
/// then every volume's presence, size and sha256, naming the first bad one.
/// Volumes are only read, never modified: they may sit on read-only media.
pub fn open(sidecar: &Path, keys: Option<&TrustedKeys>) -> Result<OpenVolumes> {
    let dir = sidecar.parent().unwrap_or(Path::new("."));
    let bytes = std::fs::read(sidecar)
        .with_context(|| format!("reading volume list {}", sidecar.display()))?;
    if let Some(keys) = keys {
        let sig_path = PathBuf::from(format!("{}.minisig", sidecar.display()));
        let sig = std::fs::read_to_string(&sig_path).with_context(|| {
            format!(
                "volume list signature {} is missing: copy it along with the volumes",
                sig_path.display()
            )
        })?;
        keys.verify(&bytes, &sig)
            .map_err(|e| anyhow::anyhow!("volume list {}: {e}", sidecar.display()))?;
    }
    let list: VolumeList = serde_json::from_slice(&bytes)
        .with_context(|| format!("volume list {} is not valid", sidecar.display()))?;
    let mut paths = Vec::new();
    let mut total = 0u64;
    for volume in &list.volumes {
        if volume.name.contains('/') || volume.name.starts_with('.') {
            bail!(
                "volume list {} names an unsafe file {:?}",
                sidecar.display(),
                volume.name
            );
        }
        let path = dir.join(&volume.name);
        let meta = std::fs::metadata(&path).map_err(|_| {
            anyhow::anyhow!(
                "volume {} is missing from {}: copy all {} volumes of bundle {} into one directory",
                volume.name,
                dir.display(),
                list.volumes.len(),
                list.bundle_id
            )
        })?;
        if meta.len() != volume.size {
            bail!(
                "volume {} is {} bytes but the signed list says {}: it is truncated or from another build (bundle {}), copy it again",
                volume.name,
                meta.len(),
                volume.size,
                list.bundle_id
            );
        }
        total += volume.size;
        paths.push(path);
    }
    if total != list.size {
        bail!(
            "volume list {} does not add up to the bundle size",
            sidecar.display()
        );
    }
    for (volume, path) in list.volumes.iter().zip(&paths) {
        let (actual, _) = crate::hashing::sha256_reader(File::open(path)?)
            .with_context(|| format!("reading volume {}", path.display()))?;
        if actual != volume.sha256 {
            bail!(
                "volume {}: sha256 is {actual} but the signed list says {}: it is corrupt or from another build (bundle {}), copy it again",
                volume.name,
                volume.sha256,
                list.bundle_id
            );
        }
    }
    Ok(OpenVolumes { list, paths })
}

impl OpenVolumes {
    /// The joined bundle bytes.
    pub fn reader(&self) -> io::Result<Box<dyn Read + Send>> {
        let mut chained: Box<dyn Read + Send> = Box::new(io::empty());
        for path in &self.paths {
            chained = Box::new(chained.chain(File::open(path)?));
        }
        Ok(chained)
    }
}
