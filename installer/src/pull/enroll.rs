//! Enrollment codes and the nodes enrolled with them, in
//! `<site-dir>/enrollments.json`. Codes and report keys are stored as
//! sha256 only: the file never holds a secret. `enroll` (CLI) and the
//! mirror share it under a lock on the site directory.

use std::path::Path;

use anyhow::{bail, Context, Result};

use edgeferry_bundle::hashing::sha256_hex;

pub const ENROLL_FILE: &str = "enrollments.json";

/// The file's format is also `enroll list --json`'s, so it lives with the
/// other outputs.
pub use crate::output::{CodeRecord, Enrollments, NodeRecord};

pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// 128 random bits, hex.
pub fn random_hex() -> Result<String> {
    use std::io::Read;
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .context("reading /dev/urandom")?;
    Ok(edgeferry_bundle::hashing::hex(&bytes))
}

/// `24h`, `90s`, `10m`, `7d`.
pub fn parse_duration(text: &str) -> Result<u64> {
    let (number, unit) = text.split_at(
        text.find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len()),
    );
    let n: u64 = number
        .parse()
        .with_context(|| format!("duration {text:?}: use e.g. 90s, 10m, 24h or 7d"))?;
    let scale = match unit {
        "s" | "" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => bail!("duration {text:?}: use e.g. 90s, 10m, 24h or 7d"),
    };
    Ok(n * scale)
}

/// Runs `f` on the file's contents under the site-directory lock and
/// writes the result back (temp file + rename) if `f` changed it.
pub fn update<T>(site_dir: &Path, f: impl FnOnce(&mut Enrollments) -> Result<T>) -> Result<T> {
    let _lock = crate::sys::lock_dir_wait(site_dir)
        .with_context(|| format!("locking site directory {}", site_dir.display()))?;
    let mut data = read_unlocked(site_dir)?;
    // Compared in the form it is written in, so an `f` that changes
    // nothing (a refused code) writes nothing.
    let before = serde_json::to_vec_pretty(&data)?;
    let out = f(&mut data)?;
    let after = serde_json::to_vec_pretty(&data)?;
    if after != before {
        edgeferry_bundle::atomic::write_file(&site_dir.join(ENROLL_FILE), &after, 0o600)?;
    }
    Ok(out)
}

pub fn read(site_dir: &Path) -> Result<Enrollments> {
    let _lock = crate::sys::lock_dir_wait(site_dir)
        .with_context(|| format!("locking site directory {}", site_dir.display()))?;
    read_unlocked(site_dir)
}

fn read_unlocked(site_dir: &Path) -> Result<Enrollments> {
    let path = site_dir.join(ENROLL_FILE);
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .with_context(|| format!("{} is damaged: fix or remove it", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Enrollments::default()),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

pub struct NewCode {
    pub id: String,
    pub code: String,
    pub record: CodeRecord,
}

pub fn create(site_dir: &Path, uses: u32, ttl_secs: u64, names: Vec<String>) -> Result<NewCode> {
    if uses == 0 {
        bail!("--uses must be at least 1");
    }
    if !names.is_empty() && names.len() < uses as usize {
        bail!(
            "--names lists {} names for {uses} uses: give one name per use",
            names.len()
        );
    }
    let code = random_hex()?;
    let id = random_hex()?[..8].to_string();
    let created = now();
    let record = CodeRecord {
        id: id.clone(),
        sha256: sha256_hex(code.as_bytes()),
        created,
        expires: created + ttl_secs,
        uses_left: uses,
        uses: 0,
        names,
        revoked: false,
    };
    let stored = record.clone();
    update(site_dir, |data| {
        data.codes.push(stored);
        Ok(())
    })?;
    Ok(NewCode { id, code, record })
}

pub fn revoke(site_dir: &Path, id: &str) -> Result<()> {
    update(site_dir, |data| {
        let code = data
            .codes
            .iter_mut()
            .find(|c| c.id == id)
            .with_context(|| {
                format!("no enrollment code with id {id}: see `edgeferry enroll list`")
            })?;
        code.revoked = true;
        Ok(())
    })
}

/// The one answer to a client without a valid code, whatever the reason:
/// it does not learn whether a code ever existed.
pub const REFUSED: &str = "enrollment refused: not a valid enrollment code";

/// Why a code was refused; never shown with the code itself.
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    Unknown,
    Expired,
    UsedUp,
    Revoked,
    NoName,
    /// A node of this name is enrolled already.
    Taken(String),
}

impl Refusal {
    /// For the operator's log.
    pub fn reason(&self) -> String {
        match self {
            Refusal::Unknown => "unknown code".into(),
            Refusal::Expired => "the code has expired".into(),
            Refusal::UsedUp => "the code is used up".into(),
            Refusal::Revoked => "the code was revoked".into(),
            Refusal::NoName => "no valid node name for its hostname".into(),
            Refusal::Taken(name) => format!("node {name} is enrolled already"),
        }
    }

    /// For the client, which holds a valid code for the last two.
    pub fn answer(&self) -> String {
        match self {
            Refusal::NoName => {
                "enrollment refused: no valid node name for this hostname".to_string()
            }
            Refusal::Taken(name) => format!(
                "enrollment refused: node {name} is already enrolled; the operator can free the name with `edgeferry enroll reset {name}`"
            ),
            _ => REFUSED.to_string(),
        }
    }
}

fn find_node<'a>(data: &'a mut Enrollments, name: &str) -> Result<&'a mut NodeRecord> {
    data.nodes
        .iter_mut()
        .find(|n| n.name == name)
        .with_context(|| format!("no enrolled node {name}: see `edgeferry enroll list`"))
}

/// Forgets an enrolled node: its report key stops working and its name
/// may enroll again.
pub fn reset(site_dir: &Path, name: &str) -> Result<()> {
    update(site_dir, |data| {
        find_node(data, name)?;
        data.nodes.retain(|n| n.name != name);
        Ok(())
    })
}

/// Refuses a node's report key from now on; its name stays taken.
pub fn revoke_node(site_dir: &Path, name: &str) -> Result<()> {
    update(site_dir, |data| {
        find_node(data, name)?.revoked = true;
        Ok(())
    })
}

pub struct Enrolled {
    pub name: String,
    pub key: String,
}

/// Spends one use of `code` and enrolls a node under a name; returns the
/// node's report key (only its hash is kept).
pub fn enroll(
    site_dir: &Path,
    code: &str,
    hostname: &str,
    client: &str,
    name_prefix: Option<&str>,
) -> Result<std::result::Result<Enrolled, Refusal>> {
    let hash = sha256_hex(code.as_bytes());
    let key = random_hex()?;
    update(site_dir, |data| {
        let now = now();
        let Some(c) = data.codes.iter_mut().find(|c| c.sha256 == hash) else {
            return Ok(Err(Refusal::Unknown));
        };
        if c.revoked {
            return Ok(Err(Refusal::Revoked));
        }
        if now >= c.expires {
            return Ok(Err(Refusal::Expired));
        }
        if c.uses_left == 0 {
            return Ok(Err(Refusal::UsedUp));
        }
        let name = if c.names.is_empty() {
            match crate::node::inventory::node_name_from_hostname(name_prefix, hostname) {
                Some(n) => n,
                None => return Ok(Err(Refusal::NoName)),
            }
        } else {
            c.names[c.uses as usize].clone()
        };
        // A second node with the same name would take over the first one's
        // identity; the operator frees a name with `enroll reset`.
        if data.nodes.iter().any(|n| n.name == name) {
            return Ok(Err(Refusal::Taken(name)));
        }
        let Some(c) = data.codes.iter_mut().find(|c| c.sha256 == hash) else {
            return Ok(Err(Refusal::Unknown));
        };
        c.uses_left -= 1;
        c.uses += 1;
        let code_id = c.id.clone();
        data.nodes.push(NodeRecord {
            name: name.clone(),
            hostname: hostname.to_string(),
            code_id,
            key_sha256: sha256_hex(key.as_bytes()),
            enrolled: now,
            client: client.to_string(),
            revoked: false,
        });
        Ok(Ok(Enrolled {
            name,
            key: key.clone(),
        }))
    })
}

/// The node a report key belongs to, unless the key was revoked.
pub fn node_for_key(site_dir: &Path, key: &str) -> Result<Option<String>> {
    let hash = sha256_hex(key.as_bytes());
    Ok(read(site_dir)?
        .nodes
        .into_iter()
        .find(|n| n.key_sha256 == hash && !n.revoked)
        .map(|n| n.name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_spent_expire_and_revoke() {
        let dir = tempfile::tempdir().unwrap();
        let c = create(dir.path(), 2, 3600, vec![]).unwrap();
        let text = std::fs::read_to_string(dir.path().join(ENROLL_FILE)).unwrap();
        assert!(!text.contains(&c.code), "stored hashed");
        let a = enroll(dir.path(), &c.code, "Node_A.local", "1.2.3.4", Some("edge"))
            .unwrap()
            .unwrap();
        assert!(a.name.starts_with("edge-"));
        assert!(!std::fs::read_to_string(dir.path().join(ENROLL_FILE))
            .unwrap()
            .contains(&a.key));
        assert_eq!(
            node_for_key(dir.path(), &a.key).unwrap(),
            Some(a.name.clone())
        );
        let before = std::fs::read(dir.path().join(ENROLL_FILE)).unwrap();
        assert_eq!(
            enroll(dir.path(), &c.code, "Node_A.local", "5.6.7.8", Some("edge"))
                .unwrap()
                .err(),
            Some(Refusal::Taken(a.name.clone())),
            "a second node does not take the first one's name"
        );
        assert_eq!(
            std::fs::read(dir.path().join(ENROLL_FILE)).unwrap(),
            before,
            "a refusal writes nothing"
        );
        enroll(dir.path(), &c.code, "b", "x", None)
            .unwrap()
            .unwrap();
        assert_eq!(
            enroll(dir.path(), &c.code, "c", "x", None).unwrap().err(),
            Some(Refusal::UsedUp)
        );
        assert_eq!(
            enroll(dir.path(), "nope", "c", "x", None).unwrap().err(),
            Some(Refusal::Unknown)
        );
        let d = create(dir.path(), 1, 0, vec![]).unwrap();
        assert_eq!(
            enroll(dir.path(), &d.code, "c", "x", None).unwrap().err(),
            Some(Refusal::Expired)
        );
        let e = create(dir.path(), 1, 60, vec!["edge-x".into()]).unwrap();
        revoke(dir.path(), &e.id).unwrap();
        assert_eq!(
            enroll(dir.path(), &e.code, "c", "x", None).unwrap().err(),
            Some(Refusal::Revoked)
        );
        revoke_node(dir.path(), &a.name).unwrap();
        assert_eq!(node_for_key(dir.path(), &a.key).unwrap(), None);
        reset(dir.path(), &a.name).unwrap();
        assert!(reset(dir.path(), &a.name).is_err());
        assert_eq!(parse_duration("24h").unwrap(), 86_400);
        assert!(parse_duration("3w").is_err());
    }
}
