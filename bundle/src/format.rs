//! The bundle format, version 1: names, the manifest, and the rules every
//! entry obeys. `docs/bundle-format.md` is the prose version of this file;
//! keep the two in step.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Bumped on any change a version-1 reader could misread.
pub const FORMAT_VERSION: u32 = 1;
/// First tar entry: the manifest, as JSON.
pub const MANIFEST_PATH: &str = "manifest.json";
/// Second tar entry: a minisign signature over the manifest's exact bytes.
pub const SIGNATURE_PATH: &str = "manifest.json.minisig";
/// Readers refuse a larger manifest before reading it, so a hostile bundle
/// cannot make them buffer gigabytes ahead of the signature check.
pub const MAX_MANIFEST_BYTES: u64 = 16 * 1024 * 1024;
/// A minisign signature is four short lines.
pub const MAX_SIGNATURE_BYTES: u64 = 4096;
/// Paths fit the 100-byte ustar name field, so no PAX or GNU extension
/// headers are ever needed and readers can refuse them outright.
pub const MAX_PATH_BYTES: usize = 100;
/// Every entry's mtime is this value (or `SOURCE_DATE_EPOCH`-derived
/// creation time); readers ignore it.
pub const ENTRY_MODE: u32 = 0o644;

/// The three Linux architectures KubeEdge releases for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    Amd64,
    Arm64,
    /// 32-bit ARM; KubeEdge builds it with GOARM=7, so images select `arm/v7`.
    Arm,
}

impl Arch {
    pub const ALL: [Arch; 3] = [Arch::Amd64, Arch::Arm64, Arch::Arm];

    /// Go's GOARCH name, which is also the name in release asset file names.
    pub fn as_str(self) -> &'static str {
        match self {
            Arch::Amd64 => "amd64",
            Arch::Arm64 => "arm64",
            Arch::Arm => "arm",
        }
    }

    /// OCI platform `architecture` and `variant` this arch selects.
    pub fn oci_platform(self) -> (&'static str, Option<&'static str>) {
        match self {
            Arch::Amd64 => ("amd64", None),
            Arch::Arm64 => ("arm64", None),
            Arch::Arm => ("arm", Some("v7")),
        }
    }

    /// Maps `uname -m` output the way `keadm batch` does.
    pub fn from_uname(machine: &str) -> Option<Arch> {
        match machine.trim() {
            "x86_64" | "amd64" => Some(Arch::Amd64),
            "aarch64" | "arm64" | "aarch64_be" | "armv8b" | "armv8l" => Some(Arch::Arm64),
            "armv7l" | "armv7" | "armhf" | "arm" => Some(Arch::Arm),
            _ => None,
        }
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Arch {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "amd64" => Ok(Arch::Amd64),
            "arm64" => Ok(Arch::Arm64),
            "arm" => Ok(Arch::Arm),
            other => Err(format!("unknown arch {other:?}: use amd64, arm64 or arm")),
        }
    }
}

/// `edgeferry-kubeedge-<version>-linux-<arch>.tar.zst`.
pub fn bundle_file_name(kubeedge_version: &str, arch: Arch) -> String {
    format!("edgeferry-kubeedge-{kubeedge_version}-linux-{arch}.tar.zst")
}

/// The signed description of a bundle. Readers trust nothing in the stream
/// until this has been checked against its signature.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format_version: u32,
    /// Content-derived: sha256 over the identifying fields and entry list,
    /// first 32 hex digits. Two builds of the same inputs share it.
    pub bundle_id: String,
    pub kubeedge_version: String,
    pub arch: Arch,
    /// Monotonic per signer; the installer refuses to go backwards.
    pub sequence: u64,
    /// RFC 3339 UTC, from `SOURCE_DATE_EPOCH` when set.
    pub created: String,
    /// `edgeferry-builder <version>`.
    pub builder: String,
    /// True when built from the built-in sample artifacts (stand-ins, not KubeEdge).
    pub sample: bool,
    /// Upstream release assets under `files/`.
    pub files: Vec<FileRecord>,
    /// Images in `images/`, by full upstream reference.
    pub images: Vec<ImageRecord>,
    /// Every entry after the signature, in stream order.
    pub entries: Vec<Entry>,
}

impl Manifest {
    /// The manifest's exact bytes in the bundle: pretty JSON, fields in
    /// declaration order, trailing newline. Readers hash and verify these
    /// bytes and never re-serialise them.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut bytes = serde_json::to_vec_pretty(self).expect("manifest serialises");
        bytes.push(b'\n');
        bytes
    }

    /// sha256 over the manifest with an empty id, first 32 hex digits: the
    /// same content gives the same id, any change gives another.
    pub fn compute_id(&self) -> String {
        let mut copy = self.clone();
        copy.bundle_id = String::new();
        crate::hashing::sha256_hex(&copy.to_bytes())[..32].to_string()
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    pub path: String,
    pub size: u64,
    /// Lowercase hex.
    pub sha256: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileRecord {
    /// Path inside the bundle, `files/<asset name>`.
    pub path: String,
    /// The upstream checksum file that vouches for it, if it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checksum_path: Option<String>,
    /// Upstream SHA-512 (lowercase hex), as the checksum file states it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha512: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageRecord {
    /// Full upstream name, e.g. `docker.io/kubeedge/installation-package:v1.23.1`.
    pub reference: String,
    /// The platform manifest for this bundle's arch.
    pub manifest_digest: String,
    pub manifest_media_type: String,
    /// The upstream multi-arch index, kept byte-exact so pulls by the
    /// upstream digest still work. Absent for single-arch sources.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index_digest: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index_media_type: Option<String>,
    /// `linux/arm64`, `linux/arm/v7`, ...
    pub platform: String,
}

/// The trusted comment signed along with the manifest. It repeats the
/// identifying fields so a reader can show them from the signature alone,
/// and checks them against the manifest once it parses it.
pub fn trusted_comment(m: &Manifest) -> String {
    format!(
        "edgeferry-bundle format={} id={} kubeedge={} arch={} sequence={}{}",
        m.format_version,
        m.bundle_id,
        m.kubeedge_version,
        m.arch,
        m.sequence,
        if m.sample { " sample" } else { "" }
    )
}

/// Why a path may not appear in a bundle.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("path is empty")]
    Empty,
    #[error("path {0:?} is absolute")]
    Absolute(String),
    #[error("path {0:?} has a `..`, `.` or empty component")]
    Traversal(String),
    #[error("path {0:?} is longer than {MAX_PATH_BYTES} bytes")]
    TooLong(String),
    #[error("path {0:?} has a character outside [A-Za-z0-9._+-/]")]
    BadChar(String),
    #[error("path {0:?} is outside manifest.json, files/ and images/")]
    OutsideLayout(String),
}

/// The one rule for entry paths, applied by the packer and every reader.
pub fn check_entry_path(path: &str) -> Result<(), PathError> {
    if path.is_empty() {
        return Err(PathError::Empty);
    }
    if path.starts_with('/') {
        return Err(PathError::Absolute(path.into()));
    }
    if path.len() > MAX_PATH_BYTES {
        return Err(PathError::TooLong(path.into()));
    }
    if !path
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"._+-/".contains(&b))
    {
        return Err(PathError::BadChar(path.into()));
    }
    if path
        .split('/')
        .any(|c| c.is_empty() || c == "." || c == "..")
    {
        return Err(PathError::Traversal(path.into()));
    }
    let allowed = path == MANIFEST_PATH
        || path == SIGNATURE_PATH
        || path.starts_with("files/")
        || path.starts_with("images/");
    if !allowed {
        return Err(PathError::OutsideLayout(path.into()));
    }
    Ok(())
}

/// `sha256:<64 hex>` → the hex part, or `None` if malformed.
pub fn sha256_hex_of_digest(digest: &str) -> Option<&str> {
    let hex = digest.strip_prefix("sha256:")?;
    (hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))).then_some(hex)
}

/// Bundle path of a blob in the image layout.
pub fn blob_path(digest: &str) -> Option<String> {
    sha256_hex_of_digest(digest).map(|hex| format!("images/blobs/sha256/{hex}"))
}

/// Formats unix seconds as RFC 3339 UTC without pulling in a date crate.
pub fn rfc3339_utc(unix_seconds: u64) -> String {
    let days = (unix_seconds / 86_400) as i64;
    let secs_of_day = unix_seconds % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        secs_of_day / 3600,
        secs_of_day / 60 % 60,
        secs_of_day % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_paths() {
        assert!(check_entry_path("files/keadm-v1.23.1-linux-arm64.tar.gz").is_ok());
        assert!(check_entry_path("images/blobs/sha256/ab").is_ok());
        for bad in [
            "",
            "/etc/passwd",
            "files/../../etc/passwd",
            "files//x",
            "files/./x",
            "other/x",
            "files/a b",
            "files/x\\y",
        ] {
            assert!(check_entry_path(bad).is_err(), "{bad:?} accepted");
        }
        assert!(check_entry_path(&format!("files/{}", "a".repeat(100))).is_err());
    }

    #[test]
    fn dates() {
        assert_eq!(rfc3339_utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339_utc(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(rfc3339_utc(951_782_400), "2000-02-29T00:00:00Z");
    }

    #[test]
    fn uname_mapping() {
        assert_eq!(Arch::from_uname("x86_64\n"), Some(Arch::Amd64));
        assert_eq!(Arch::from_uname("aarch64"), Some(Arch::Arm64));
        assert_eq!(Arch::from_uname("armv7l"), Some(Arch::Arm));
        assert_eq!(Arch::from_uname("riscv64"), None);
    }
}
