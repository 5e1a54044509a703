//! The network side of the harness: the bridge `efbr<K>` (K picked free),
//! each host's network namespace `ef<K>h<i>` and veth `ef<K>v<i>`, and the
//! record under [`RECORDS`] through which a later harness sweeps what a
//! killed test process left.

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

use super::{ok_output, TestHosts, RECORDS};

impl TestHosts {
    /// Records this harness (owner pid, its start time, the harness
    /// directory) under [`RECORDS`], for [`sweep_stale`] in a later one.
    pub(super) fn write_record(&mut self) -> Result<()> {
        fs::create_dir_all(RECORDS)?;
        let path = Path::new(RECORDS).join(&self.bridge);
        let me = std::process::id();
        let start = start_time(me).ok_or_else(|| anyhow!("no start time for pid {me}"))?;
        fs::write(&path, format!("{me} {start} {}\n", self.path.display()))?;
        self.record = Some(path);
        Ok(())
    }

    /// Creates the bridge (with the control address), and each host's
    /// network namespace and veth: in one `ip` process.
    pub(super) fn create_network(&mut self) -> Result<()> {
        let k = self.k;
        let bridge = &self.bridge;
        let mut batch = format!(
            "link set dev {bridge} address 02:ef:00:00:{k:02x}:01\n\
             addr add {}/24 dev {bridge}\nlink set dev {bridge} up\n",
            self.control_ip
        );
        // Blocks past the first (see `host_ip`): a control address in each.
        for b in 1..self.hosts.len().div_ceil(super::HOSTS_PER_BLOCK) {
            let _ = writeln!(batch, "addr add 10.{}.{k}.1/24 dev {bridge}", 213 + b);
        }
        for host in &self.hosts {
            let i = host.index;
            let _ = write!(
                batch,
                "netns add {ns}\nlink add ef{k}v{i} type veth peer name eth0 netns {ns}\n\
                 link set dev ef{k}v{i} master {bridge} up\n",
                ns = host.netns
            );
        }
        self.netns_made = self.hosts.len();
        let batch_file = self.path.join("network.batch");
        fs::write(&batch_file, batch)?;
        ok_output(Command::new("ip").arg("-batch").arg(&batch_file))
            .context("creating the bridge and the host namespaces")?;
        Ok(())
    }

    /// Deletes the host namespaces, their veths and the bridge (names
    /// never created are fine).
    pub(super) fn delete_network(&self) {
        // Unnamed, a namespace with no process left is destroyed by the
        // kernel, with its end of each veth and so our end too. Batched
        // that way it is ~20 times faster than deleting the veths one by
        // one (each waits for RCU), so delete only the names, then wait
        // for the veths to go and delete stragglers explicitly. -force:
        // names never created are fine.
        let k = self.k;
        let mut batch = String::new();
        for i in 0..self.netns_made {
            let _ = writeln!(batch, "netns del ef{k}h{i}");
        }
        let _ = writeln!(batch, "link del {}", self.bridge);
        ip_batch_force(&self.path.join("cleanup.batch"), &batch);
        let veths = || -> Vec<String> {
            let prefix = format!("ef{k}v");
            fs::read_dir("/sys/class/net")
                .map(|d| {
                    d.flatten()
                        .map(|e| e.file_name().to_string_lossy().into_owned())
                        .filter(|n| {
                            n.strip_prefix(&prefix)
                                .is_some_and(|i| i.parse::<u32>().is_ok())
                        })
                        .collect()
                })
                .unwrap_or_default()
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !veths().is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let left: String = veths().iter().map(|v| format!("link del {v}\n")).collect();
        if !left.is_empty() {
            ip_batch_force(&self.path.join("cleanup-veths.batch"), &left);
        }
    }
}

/// Creates the first free bridge `efbr<K>`; the kernel makes the name
/// ours atomically, so concurrent harnesses never pick the same K.
pub(super) fn allocate_bridge() -> Result<u16> {
    let mut last = String::new();
    for k in 1..=250u16 {
        let out = Command::new("ip")
            .args(["link", "add", &format!("efbr{k}"), "type", "bridge"])
            .output()
            .context("running ip")?;
        if out.status.success() {
            return Ok(k);
        }
        last = String::from_utf8_lossy(&out.stderr).trim().to_string();
        if !last.contains("exists") {
            bail!("ip link add efbr{k} type bridge: {last}");
        }
    }
    bail!("no free bridge name efbr1..efbr250 (last error: {last}); leftovers? see `ip link`")
}

/// Removes what harnesses of dead processes left: their namespaces (and
/// any process still in them), veths, bridge and directory, found by their
/// records (`<owner pid> <its start time> <harness dir>`).
pub(super) fn sweep_stale() {
    let Ok(records) = fs::read_dir(RECORDS) else {
        return;
    };
    let mut netns_list: Option<String> = None;
    for record in records.flatten() {
        let name = record.file_name().to_string_lossy().into_owned();
        let Some(k) = name
            .strip_prefix("efbr")
            .and_then(|k| k.parse::<u16>().ok())
        else {
            continue;
        };
        let text = fs::read_to_string(record.path()).unwrap_or_default();
        let mut fields = text.split_whitespace();
        let (Some(pid), Some(start)) = (
            fields.next().and_then(|p| p.parse::<u32>().ok()),
            fields.next().and_then(|s| s.parse::<u64>().ok()),
        ) else {
            continue;
        };
        if start_time(pid) == Some(start) {
            continue; // its owner lives
        }
        // Its directory too, if it is one of ours (name checked).
        let dir = fields.next().map(PathBuf::from);
        let list = netns_list.get_or_insert_with(|| {
            Command::new("ip")
                .args(["netns", "list"])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default()
        });
        let prefix = format!("ef{k}h");
        for ns in list.lines().filter_map(|l| l.split_whitespace().next()) {
            let ours = ns.strip_prefix(&prefix).map(|i| i.parse::<u32>());
            if !matches!(ours, Some(Ok(_))) {
                continue;
            }
            if let Ok(out) = Command::new("ip").args(["netns", "pids", ns]).output() {
                for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                    if let Ok(pid) = pid.parse::<libc::pid_t>() {
                        // SAFETY: kill(2) takes no pointers and has no
                        // memory-safety preconditions. The pid was just
                        // listed in a namespace of a dead harness; should it
                        // exit and its pid be reused in between, a stranger
                        // gets SIGKILL: a race as narrow as `kill $(ip netns
                        // pids)` in a shell, accepted for a test sweep.
                        unsafe {
                            libc::kill(pid, libc::SIGKILL);
                        }
                    }
                }
            }
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
        let _ = fs::remove_file(record.path());
        if let Some(dir) = dir.filter(|d| {
            d.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("edgeferry-hosts-"))
        }) {
            let _ = fs::remove_dir_all(dir);
        }
        let _ = Command::new("ip")
            .args(["link", "del", &format!("efbr{k}")])
            .output();
    }
}

/// Field 22 of /proc/<pid>/stat: with the pid, identifies a process.
pub(super) fn start_time(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_whitespace().nth(19)?.parse().ok()
}

/// `ip -force -batch`: every line tried, errors ignored (for cleanup).
fn ip_batch_force(file: &Path, batch: &str) {
    if fs::write(file, batch).is_ok() {
        let _ = Command::new("ip")
            .args(["-force", "-batch"])
            .arg(file)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}
