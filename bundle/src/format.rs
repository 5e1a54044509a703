//! The bundle format, version 2: names, the manifest, and the rules every
//! entry obeys. `docs/bundle-format.md` is the prose version of this file;
//! keep the two in step.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Bumped on any change an older reader could misread. Version 2 added
/// delta bundles (`Manifest::delta`); readers still accept version 1.
pub const FORMAT_VERSION: u32 = 2;
/// Every format version a reader accepts.
pub const READABLE_FORMAT_VERSIONS: [u32; 2] = [1, 2];
/// The most bundle ids a delta's base may name.
pub const MAX_BASE_BUNDLE_IDS: usize = 1024;
/// First tar entry: the manifest, as JSON.
pub const MANIFEST_PATH: &str = "manifest.json";
/// Second tar entry: a minisign signature over the manifest's exact bytes.
pub const SIGNATURE_PATH: &str = "manifest.json.minisig";
/// The CycloneDX SBOM entry, first after the signature (issue 14). A delta
/// and the full bundle describe the same content but mark omitted parts,
/// so this entry is left out of the bundle id.
pub const SBOM_PATH: &str = "sbom.cdx.json";
/// Readers refuse a larger manifest before reading it, so a hostile bundle
/// cannot make them buffer gigabytes ahead of the signature check.
pub const MAX_MANIFEST_BYTES: u64 = 16 * 1024 * 1024;
/// A minisign signature is four short lines.
pub const MAX_SIGNATURE_BYTES: u64 = 4096;
/// Paths fit the 100-byte ustar name field, so no PAX or GNU extension
/// headers are ever needed and readers can refuse them outright.
pub const MAX_PATH_BYTES: usize = 100;
/// After the two zero blocks that end the tar stream, readers accept at
/// most this many more zero bytes (one 10240-byte record, as `tar`
/// pads archives) before the zstd frame must end: more is refused as it
/// arrives, so a small file cannot make a reader inflate gigabytes.
pub const MAX_ZEROS_AFTER_TAR_END: u64 = 10240;
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
    /// Format 2, delta bundles only: what the base was and the entries left
    /// out because it has them. Absent (no key at all) in a full bundle.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delta: Option<Delta>,
}

/// A delta bundle's promise: these entries are not in the stream, and the
/// store that loads it must already hold each of them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Delta {
    pub base: BaseInfo,
    /// Each omitted entry (a blob under `images/blobs/sha256/` or a release
    /// file under `files/`), sorted by path.
    pub expected_present: Vec<Entry>,
}

/// What a delta was built against.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BaseInfo {
    /// `inventory` (a store's `edgeferry store inventory`) or `bundle` (an
    /// older bundle's signed manifest).
    pub kind: BaseKind,
    /// The bundles the base holds (an inventory: every bundle in the store;
    /// a bundle: its own id), sorted.
    pub bundle_ids: Vec<String>,
    /// A bundle base's KubeEdge version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubeedge_version: Option<String>,
    /// A bundle base's sequence.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sequence: Option<u64>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BaseKind {
    Inventory,
    Bundle,
}

impl fmt::Display for BaseKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BaseKind::Inventory => "inventory",
            BaseKind::Bundle => "bundle",
        })
    }
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
    ///
    /// Format 1: over the manifest as it is. Format 2: over its full
    /// content, so a delta and the full bundle of the same input share one
    /// id: the omitted entries put back into `entries`, `delta` cleared,
    /// the SBOM entry (which marks what a delta omitted) left out, and
    /// `entries` sorted by path.
    pub fn compute_id(&self) -> String {
        let mut copy = self.clone();
        copy.bundle_id = String::new();
        if copy.format_version >= 2 {
            if let Some(delta) = copy.delta.take() {
                copy.entries.extend(delta.expected_present);
            }
            copy.entries.retain(|e| e.path != SBOM_PATH);
            copy.entries.sort_by(|a, b| a.path.cmp(&b.path));
        }
        crate::hashing::sha256_hex(&copy.to_bytes())[..32].to_string()
    }

    /// Every entry the bundle describes: those in the stream, then those a
    /// delta left out.
    pub fn all_entries(&self) -> impl Iterator<Item = &Entry> {
        self.entries
            .iter()
            .chain(self.delta.iter().flat_map(|d| d.expected_present.iter()))
    }

    /// The entries a delta left out (none for a full bundle).
    pub fn expected_present(&self) -> &[Entry] {
        self.delta
            .as_ref()
            .map_or(&[][..], |d| d.expected_present.as_slice())
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
        "edgeferry-bundle format={} id={} kubeedge={} arch={} sequence={}{}{}",
        m.format_version,
        m.bundle_id,
        m.kubeedge_version,
        m.arch,
        m.sequence,
        if m.sample { " sample" } else { "" },
        if m.delta.is_some() { " delta" } else { "" }
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
    #[error("path {0:?} is outside manifest.json, sbom.cdx.json, files/ and images/")]
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
        || path == SBOM_PATH
        || path.starts_with("files/")
        || path.starts_with("images/");
    if !allowed {
        return Err(PathError::OutsideLayout(path.into()));
    }
    Ok(())
}

/// The longest `kubeedge_version` a reader accepts.
pub const MAX_VERSION_BYTES: usize = 64;
/// The longest free text (`builder`) a reader accepts.
pub const MAX_TEXT_BYTES: usize = 200;
/// How much of a refused value an error message shows.
const MAX_SHOWN_CHARS: usize = 80;

/// A manifest field outside its grammar: which field, its value (escaped
/// and cut short) and the rule it breaks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field} {value} {rule}")]
pub struct FieldError {
    pub field: String,
    pub value: String,
    pub rule: &'static str,
}

impl FieldError {
    pub fn new(field: impl Into<String>, value: &str, rule: &'static str) -> FieldError {
        let mut shown: String = value
            .chars()
            .take(MAX_SHOWN_CHARS)
            .collect::<String>()
            .escape_debug()
            .to_string();
        if value.chars().nth(MAX_SHOWN_CHARS).is_some() {
            shown.push_str("...");
        }
        FieldError {
            field: field.into(),
            value: format!("\"{shown}\""),
            rule,
        }
    }
}

/// `len` lowercase hex digits.
pub fn valid_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// A KubeEdge tag: `v<major>.<minor>.<patch>`, optionally `-<pre-release>`
/// of `[0-9A-Za-z.-]`, at most [`MAX_VERSION_BYTES`].
pub fn valid_version(version: &str) -> bool {
    let Some(rest) = version.strip_prefix('v') else {
        return false;
    };
    let (core, pre) = match rest.split_once('-') {
        Some((core, pre)) => (core, Some(pre)),
        None => (rest, None),
    };
    let number = |n: &str| !n.is_empty() && n.len() <= 9 && n.bytes().all(|b| b.is_ascii_digit());
    version.len() <= MAX_VERSION_BYTES
        && core.split('.').count() == 3
        && core.split('.').all(number)
        && pre.is_none_or(|p| {
            !p.is_empty()
                && p.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
        })
}

/// RFC 3339 in UTC: `YYYY-MM-DDTHH:MM:SS`, optional `.fraction`, then `Z`.
pub fn valid_created(created: &str) -> bool {
    let b = created.as_bytes();
    let digits = |range: std::ops::Range<usize>| {
        b.get(range)
            .is_some_and(|d| d.iter().all(u8::is_ascii_digit))
    };
    let fixed = b.len() >= 20
        && digits(0..4)
        && b[4] == b'-'
        && digits(5..7)
        && b[7] == b'-'
        && digits(8..10)
        && b[10] == b'T'
        && digits(11..13)
        && b[13] == b':'
        && digits(14..16)
        && b[16] == b':'
        && digits(17..19);
    if !fixed || b[b.len() - 1] != b'Z' {
        return false;
    }
    match &b[19..b.len() - 1] {
        [] => true,
        [b'.', fraction @ ..] => {
            (1..=9).contains(&fraction.len()) && fraction.iter().all(u8::is_ascii_digit)
        }
        _ => false,
    }
}

/// Printable ASCII (space to `~`), 1 to [`MAX_TEXT_BYTES`] bytes: safe to
/// print on any terminal.
pub fn valid_text(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= MAX_TEXT_BYTES
        && text.bytes().all(|b| (b' '..=b'~').contains(&b))
}

/// `os/architecture[/variant]`, each 1 to 32 of `[a-z0-9]`.
pub fn valid_platform(platform: &str) -> bool {
    let parts = platform.split('/').count();
    (2..=3).contains(&parts)
        && platform.split('/').all(|p| {
            !p.is_empty()
                && p.len() <= 32
                && p.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        })
}

/// `sha256:<64 hex>` → the hex part, or `None` if malformed.
pub fn sha256_hex_of_digest(digest: &str) -> Option<&str> {
    let hex = digest.strip_prefix("sha256:")?;
    valid_hex(hex, 64).then_some(hex)
}

/// Bundle path of a blob in the image layout.
pub fn blob_path(digest: &str) -> Option<String> {
    sha256_hex_of_digest(digest).map(|hex| format!("images/blobs/sha256/{hex}"))
}

/// The civil date (year, month 1-12, day 1-31) `days` days after
/// 1970-01-01, UTC: Howard Hinnant's civil_from_days.
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(month <= 2), month, day)
}

/// Formats unix seconds as RFC 3339 UTC without pulling in a date crate.
pub fn rfc3339_utc(unix_seconds: u64) -> String {
    let (year, month, day) = civil_from_days((unix_seconds / 86_400) as i64);
    let secs_of_day = unix_seconds % 86_400;
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
    fn field_grammar() {
        for good in ["v1.23.1", "v1.22.0-rc.1", "v10.0.0"] {
            assert!(valid_version(good), "{good:?} refused");
        }
        for bad in [
            "",
            "1.23.1",
            "v1.23",
            "v1.23.x",
            "v1.23.1\n",
            "v1.23.1 x",
            "v1.23.1-",
            "v1.2.3-$(x)",
        ] {
            assert!(!valid_version(bad), "{bad:?} accepted");
        }
        assert!(valid_created("2025-11-13T02:13:20Z"));
        assert!(valid_created("2025-11-13T02:13:20.5Z"));
        for bad in [
            "",
            "2025-11-13",
            "2025-11-13T02:13:20",
            "2025-11-13T02:13:20Z\u{1b}",
            "2025-11-13T02:13:20.Z",
        ] {
            assert!(!valid_created(bad), "{bad:?} accepted");
        }
        assert!(valid_text("edgeferry-builder 0.1.0"));
        assert!(!valid_text("a\u{1b}[2J") && !valid_text("") && !valid_text(&"a".repeat(201)));
        assert!(valid_platform("linux/arm/v7") && valid_platform("linux/amd64"));
        assert!(
            !valid_platform("linux") && !valid_platform("linux/../x") && !valid_platform("a/b/c/d")
        );
        let shown =
            FieldError::new("builder", &format!("\u{1b}{}", "x".repeat(200)), "r").to_string();
        assert!(!shown.contains('\u{1b}') && shown.len() < 120, "{shown}");
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
