//! What each host has of its own: a private tree under the harness
//! directory (bind-mounted over [`PRIVATE_DIRS`] and [`PRIVATE_FILES`]),
//! with account files that add [`EDGE_USER`] (passwordless sudo) and known
//! passwords for it and root.

use std::fmt::Write as _;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize};
use std::sync::Mutex;

use anyhow::{anyhow, Context, Result};

use super::sshd::write_sshd_config;
use super::{
    ok_output, TestHost, EDGE_PASSWORD, EDGE_USER, PASSWORD_SALT, PRIVATE_DIRS, PRIVATE_FILES,
    ROOT_PASSWORD,
};

/// The account files every host shares, plus per-host details.
pub(super) struct Accounts {
    passwd: String,
    shadow: String,
    group: String,
    sudoers: String,
    hosts: String,
    uid: u32,
}

impl Accounts {
    pub(super) fn new() -> Result<Accounts> {
        let read = |p: &str| fs::read_to_string(p).with_context(|| format!("reading {p}"));
        let hash = |pw: &str| -> Result<String> {
            let out = ok_output(Command::new("openssl").args([
                "passwd",
                "-6",
                "-salt",
                PASSWORD_SALT,
                pw,
            ]))?;
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
        };
        let (passwd, group, shadow) = (
            read("/etc/passwd")?,
            read("/etc/group")?,
            read("/etc/shadow")?,
        );
        let not_edge = |text: &str| -> String {
            text.lines()
                .filter(|l| !l.starts_with(&format!("{EDGE_USER}:")))
                .map(|l| format!("{l}\n"))
                .collect()
        };
        let ids = |text: &str| -> Vec<u32> {
            text.lines()
                .filter_map(|l| l.split(':').nth(2)?.parse().ok())
                .collect()
        };
        let taken: Vec<u32> = ids(&not_edge(&passwd))
            .into_iter()
            .chain(ids(&not_edge(&group)))
            .collect();
        let uid = (1000..60000)
            .find(|u| !taken.contains(u))
            .ok_or_else(|| anyhow!("no free uid for {EDGE_USER}"))?;
        let root_hash = hash(ROOT_PASSWORD)?;
        let mut shadow: String = not_edge(&shadow)
            .lines()
            .map(|l| match l.split_once(':') {
                Some(("root", rest)) => {
                    let rest = rest.split_once(':').map_or("", |(_, r)| r);
                    format!("root:{root_hash}:{rest}\n")
                }
                _ => format!("{l}\n"),
            })
            .collect();
        let edge_hash = hash(EDGE_PASSWORD)?;
        let _ = writeln!(shadow, "{EDGE_USER}:{edge_hash}:19000:0:99999:7:::");
        let mut group = not_edge(&group);
        let _ = writeln!(group, "{EDGE_USER}:x:{uid}:");
        let mut sudoers = read("/etc/sudoers")?;
        let _ = write!(sudoers, "\n{EDGE_USER} ALL=(ALL) NOPASSWD: ALL\n");
        Ok(Accounts {
            passwd: not_edge(&passwd),
            shadow,
            group,
            sudoers,
            hosts: read("/etc/hosts").unwrap_or_default(),
            uid,
        })
    }
}

/// Writes host `i`'s private tree, sshd config and host key.
pub(super) fn prepare_host(
    dir: &Path,
    k: u16,
    (i, name, ip): (usize, &str, &str),
    acc: &Accounts,
    with_sshd: bool,
) -> Result<TestHost> {
    let hdir = dir.join(name);
    let root = hdir.join("root");
    for d in PRIVATE_DIRS {
        fs::create_dir_all(root.join(d.trim_start_matches('/')))?;
    }
    if !with_sshd {
        let tmp = root.join("tmp");
        fs::create_dir_all(&tmp)?;
        fs::set_permissions(&tmp, fs::Permissions::from_mode(0o1777))?;
    }
    let home = root.join("home").join(EDGE_USER);
    fs::create_dir_all(&home)?;
    std::os::unix::fs::chown(&home, Some(acc.uid), Some(acc.uid))?;
    let etc = root.join("etc");
    let mut passwd = acc.passwd.clone();
    let _ = writeln!(
        passwd,
        "{EDGE_USER}:x:{uid}:{uid}:edge node admin:{}:/bin/sh",
        home.display(),
        uid = acc.uid
    );
    let files = [
        ("passwd", passwd, 0o644),
        ("shadow", acc.shadow.clone(), 0o640),
        ("group", acc.group.clone(), 0o644),
        ("sudoers", acc.sudoers.clone(), 0o440),
        ("hosts", format!("{}{ip} {name}\n", acc.hosts), 0o644),
    ];
    for (file, text, mode) in files {
        let path = etc.join(file);
        fs::write(&path, text)?;
        fs::set_permissions(&path, fs::Permissions::from_mode(mode))?;
    }
    fs::write(
        root.join("etc/containerd/config.toml"),
        super::CONTAINERD_CONFIG,
    )?;
    // A socket file where containerd's would be, for a "CRI socket
    // exists" check (nothing answers on it).
    drop(std::os::unix::net::UnixListener::bind(
        root.join("run/containerd/containerd.sock"),
    )?);
    for d in [&hdir, &root, &root.join("home")] {
        fs::set_permissions(d, fs::Permissions::from_mode(0o755))?;
    }

    let mut host_key = String::new();
    if with_sshd {
        host_key = write_sshd_config(dir, &hdir, name, ip)?;
    }
    // Outside block 0 the control address is in another /24 on the same
    // link: a route says so.
    let control = format!("10.213.{k}.1");
    let route = if ip.starts_with(&format!("10.213.{k}.")) {
        String::new()
    } else {
        format!("route replace {control}/32 dev eth0 scope link\n")
    };
    fs::write(
        hdir.join("net.batch"),
        format!("addr replace {ip}/24 dev eth0\nlink set dev eth0 up\nlink set dev lo up\n{route}"),
    )?;
    let mut fstab = String::new();
    for p in PRIVATE_DIRS.iter().chain(PRIVATE_FILES) {
        let _ = writeln!(
            fstab,
            "{} {p} none bind 0 0",
            root.join(p.trim_start_matches('/')).display()
        );
    }
    if !with_sshd {
        // Last: every source above lives under the control machine's /tmp.
        let _ = writeln!(fstab, "{} /tmp none bind 0 0", root.join("tmp").display());
    }
    fs::write(hdir.join("fstab"), fstab)?;
    Ok(TestHost {
        index: i,
        name: name.to_string(),
        ip: ip.to_string(),
        root,
        netns: format!("ef{k}h{i}"),
        dir: hdir,
        has_sshd: with_sshd,
        boots: AtomicUsize::new(0),
        host_key: Mutex::new(host_key),
        linux32: AtomicBool::new(false),
        no_sys_resource: AtomicBool::new(false),
        sshd: Mutex::new(None),
    })
}
