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
pub use crate::output::{CodeKind, CodeRecord, Enrollments, NodeRecord};

use crate::node::upgrade::{self, Verdict};

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

/// What a new code is for: enrollment, or an upgrade with the version
/// rules the operator relaxed for it.
#[derive(Clone, Copy, Debug, Default)]
pub struct Grant {
    pub kind: CodeKind,
    pub allow_downgrade: bool,
    pub allow_skip_minor: bool,
}

pub fn create(
    site_dir: &Path,
    uses: u32,
    ttl_secs: u64,
    names: Vec<String>,
    grant: Grant,
) -> Result<NewCode> {
    if grant.kind == CodeKind::Enroll && (grant.allow_downgrade || grant.allow_skip_minor) {
        bail!("--allow-downgrade and --allow-skip-minor are for upgrade codes: add --upgrade");
    }
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
        kind: grant.kind,
        allow_downgrade: grant.allow_downgrade,
        allow_skip_minor: grant.allow_skip_minor,
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
/// The same for `/v1/upgrade`.
pub const UPGRADE_REFUSED: &str = "upgrade refused: not a valid upgrade code";

/// Why a code was refused; never shown with the code itself.
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    Unknown,
    Expired,
    UsedUp,
    Revoked,
    /// A valid code of the other kind: an enrollment code sent to upgrade,
    /// or an upgrade code sent to enroll.
    WrongKind(CodeKind),
    NoName,
    /// A node of this name is enrolled already.
    Taken(String),
    /// `enroll revoke-node` refused this node: it may not upgrade either.
    NodeRevoked(String),
    /// The version rules (`node::upgrade::judge`) refused the upgrade.
    Version {
        kind: &'static str,
        message: String,
    },
}

impl Refusal {
    /// For the operator's log.
    pub fn reason(&self) -> String {
        match self {
            Refusal::Unknown => "unknown code".into(),
            Refusal::Expired => "the code has expired".into(),
            Refusal::UsedUp => "the code is used up".into(),
            Refusal::Revoked => "the code was revoked".into(),
            Refusal::WrongKind(kind) => format!("the code is an {} code", kind.name()),
            Refusal::NoName => "no valid node name for its hostname".into(),
            Refusal::Taken(name) => format!("node {name} is enrolled already"),
            Refusal::NodeRevoked(name) => format!("node {name} was revoked"),
            Refusal::Version { kind, message } => format!("{kind}: {message}"),
        }
    }

    /// For the client, which holds a valid code for the last four; `want`
    /// is what it asked to do with the code.
    pub fn answer(&self, want: CodeKind) -> String {
        let what = match want {
            CodeKind::Enroll => "enrollment",
            CodeKind::Upgrade => "upgrade",
        };
        match self {
            Refusal::NoName => format!("{what} refused: no valid node name for this hostname"),
            Refusal::Taken(name) => format!(
                "enrollment refused: node {name} is already enrolled; the operator can free the name with `edgeferry enroll reset {name}`"
            ),
            Refusal::NodeRevoked(name) => format!(
                "{what} refused: node {name} was revoked; the operator can free the name with `edgeferry enroll reset {name}`"
            ),
            Refusal::Version { kind, message } => format!("{what} refused: {kind}: {message}"),
            _ => match want {
                CodeKind::Enroll => REFUSED.to_string(),
                CodeKind::Upgrade => UPGRADE_REFUSED.to_string(),
            },
        }
    }
}

/// The code of `hash` if it may be spent for `want` now.
fn usable(
    data: &mut Enrollments,
    hash: &str,
    want: CodeKind,
    now: u64,
) -> std::result::Result<usize, Refusal> {
    let Some(i) = data.codes.iter().position(|c| c.sha256 == hash) else {
        return Err(Refusal::Unknown);
    };
    let c = &data.codes[i];
    if c.kind != want {
        return Err(Refusal::WrongKind(c.kind));
    }
    if c.revoked {
        return Err(Refusal::Revoked);
    }
    if now >= c.expires {
        return Err(Refusal::Expired);
    }
    if c.uses_left == 0 {
        return Err(Refusal::UsedUp);
    }
    Ok(i)
}

/// The name a use of code `i` gives the node: the code's next listed
/// name, else one made from its hostname.
fn name_for(
    data: &Enrollments,
    i: usize,
    hostname: &str,
    name_prefix: Option<&str>,
) -> std::result::Result<String, Refusal> {
    let c = &data.codes[i];
    if c.names.is_empty() {
        crate::node::inventory::node_name_from_hostname(name_prefix, hostname)
            .ok_or(Refusal::NoName)
    } else {
        Ok(c.names[c.uses as usize].clone())
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
        let i = match usable(data, &hash, CodeKind::Enroll, now) {
            Ok(i) => i,
            Err(refusal) => return Ok(Err(refusal)),
        };
        let name = match name_for(data, i, hostname, name_prefix) {
            Ok(n) => n,
            Err(refusal) => return Ok(Err(refusal)),
        };
        // A second node with the same name would take over the first one's
        // identity; the operator frees a name with `enroll reset`.
        if data.nodes.iter().any(|n| n.name == name) {
            return Ok(Err(Refusal::Taken(name)));
        }
        let c = &mut data.codes[i];
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

/// What `/v1/upgrade` tells a node with a valid upgrade code.
#[derive(Debug, PartialEq, Eq)]
pub enum Upgrading {
    /// It runs the target already: no use spent, no key issued.
    UpToDate { name: String },
    /// Go ahead; `key` signs its reports (one use spent).
    Upgrade { name: String, key: String },
}

/// Checks an upgrade code, names the node as enrollment does and applies
/// the version rules SSH mode applies (`node::upgrade::judge`, relaxed as
/// the code says) to the version the node reports. A node that goes ahead
/// spends one use and gets a fresh report key: an enrolled node of that
/// name keeps its record with the new key (the join's key is never kept on
/// the node); a node joined another way is recorded now. A refusal or an
/// up-to-date node changes nothing.
pub fn upgrade(
    site_dir: &Path,
    code: &str,
    hostname: &str,
    client: &str,
    name_prefix: Option<&str>,
    current: &str,
    target: &str,
) -> Result<std::result::Result<Upgrading, Refusal>> {
    let hash = sha256_hex(code.as_bytes());
    let key = random_hex()?;
    update(site_dir, |data| {
        let now = now();
        let i = match usable(data, &hash, CodeKind::Upgrade, now) {
            Ok(i) => i,
            Err(refusal) => return Ok(Err(refusal)),
        };
        let name = match name_for(data, i, hostname, name_prefix) {
            Ok(n) => n,
            Err(refusal) => return Ok(Err(refusal)),
        };
        if data.nodes.iter().any(|n| n.name == name && n.revoked) {
            return Ok(Err(Refusal::NodeRevoked(name)));
        }
        let c = &data.codes[i];
        match upgrade::judge(current, target, c.allow_downgrade, c.allow_skip_minor) {
            Verdict::UpToDate => return Ok(Ok(Upgrading::UpToDate { name })),
            Verdict::Refused { kind, message } => {
                return Ok(Err(Refusal::Version { kind, message }))
            }
            Verdict::Upgrade => {}
        }
        let c = &mut data.codes[i];
        c.uses_left -= 1;
        c.uses += 1;
        let code_id = c.id.clone();
        let key_sha256 = sha256_hex(key.as_bytes());
        match data.nodes.iter_mut().find(|n| n.name == name) {
            Some(n) => {
                n.key_sha256 = key_sha256;
                n.client = client.to_string();
            }
            None => data.nodes.push(NodeRecord {
                name: name.clone(),
                hostname: hostname.to_string(),
                code_id,
                key_sha256,
                enrolled: now,
                client: client.to_string(),
                revoked: false,
            }),
        }
        Ok(Ok(Upgrading::Upgrade {
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
        let c = create(dir.path(), 2, 3600, vec![], Grant::default()).unwrap();
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
        let d = create(dir.path(), 1, 0, vec![], Grant::default()).unwrap();
        assert_eq!(
            enroll(dir.path(), &d.code, "c", "x", None).unwrap().err(),
            Some(Refusal::Expired)
        );
        let e = create(dir.path(), 1, 60, vec!["edge-x".into()], Grant::default()).unwrap();
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

    #[test]
    fn upgrade_and_enrollment_codes_are_not_interchangeable_and_versions_are_judged() {
        let dir = tempfile::tempdir().unwrap();
        let up = |uses| {
            let grant = Grant {
                kind: CodeKind::Upgrade,
                ..Grant::default()
            };
            create(dir.path(), uses, 3600, vec![], grant).unwrap()
        };
        let join = create(dir.path(), 1, 3600, vec![], Grant::default()).unwrap();
        let u = up(2);
        let file = || std::fs::read(dir.path().join(ENROLL_FILE)).unwrap();
        let before = file();
        let go = |code: &str, host: &str, current: &str| {
            upgrade(
                dir.path(),
                code,
                host,
                "x",
                Some("edge"),
                current,
                "v1.23.1",
            )
            .unwrap()
        };
        assert_eq!(
            go(&join.code, "a", "v1.22.1").err(),
            Some(Refusal::WrongKind(CodeKind::Enroll)),
            "an enrollment code does not upgrade"
        );
        assert_eq!(
            enroll(dir.path(), &u.code, "a", "x", None).unwrap().err(),
            Some(Refusal::WrongKind(CodeKind::Upgrade)),
            "an upgrade code does not enroll"
        );
        assert_eq!(
            go(&u.code, "a", "v1.21.0").err().map(|r| r.answer(CodeKind::Upgrade)),
            Some(
                "upgrade refused: skip_minor_refused: v1.21.0 to v1.23.1 skips a minor version; \
                 KubeEdge upgrades one minor at a time: upgrade to v1.22.x first, or pass --allow-skip-minor"
                    .to_string()
            )
        );
        assert!(matches!(
            go(&u.code, "a", "v1.24.0"),
            Err(Refusal::Version {
                kind: upgrade::DOWNGRADE_REFUSED,
                ..
            })
        ));
        assert!(matches!(
            go(&u.code, "a", "v1.23.1"),
            Ok(Upgrading::UpToDate { .. })
        ));
        assert_eq!(
            file(),
            before,
            "refusals and an up-to-date node spend nothing"
        );
        // An enrolled node keeps its record, with a new key.
        let joined = enroll(dir.path(), &join.code, "b", "x", Some("edge"))
            .unwrap()
            .unwrap();
        let Ok(Upgrading::Upgrade { name, key }) = go(&u.code, "b", "v1.22.1") else {
            panic!("not an upgrade")
        };
        assert_eq!(name, joined.name);
        assert_eq!(node_for_key(dir.path(), &joined.key).unwrap(), None);
        assert_eq!(node_for_key(dir.path(), &key).unwrap(), Some(name));
        // A node joined another way is recorded; then the code is used up.
        let Ok(Upgrading::Upgrade { name, .. }) = go(&u.code, "c", "v1.22.1") else {
            panic!("not an upgrade")
        };
        assert_eq!(read(dir.path()).unwrap().nodes.len(), 2, "{name}");
        assert_eq!(go(&u.code, "d", "v1.22.1").err(), Some(Refusal::UsedUp));
        revoke_node(dir.path(), &name).unwrap();
        let u2 = up(1);
        assert_eq!(
            go(&u2.code, "c", "v1.22.1").err(),
            Some(Refusal::NodeRevoked(name))
        );
        assert!(create(
            dir.path(),
            1,
            60,
            vec![],
            Grant {
                allow_downgrade: true,
                ..Grant::default()
            }
        )
        .is_err());
    }
}
