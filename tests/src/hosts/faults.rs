//! Faults a test injects on purpose: a host on the wrong architecture, a
//! host without CAP_SYS_RESOURCE, its containerd configuration, a changed
//! host key, and the stand-in keadm's fault, join-time and upgrade files.
//! (A host going down is [`TestHosts::stop_sshd`].)

use std::fs;
use std::io;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};

use super::keys::write_host_key;
#[cfg(doc)]
use super::TestHost;
use super::{count_in, lock, TestHosts};

impl TestHosts {
    /// Restarts host `i` (as [`TestHosts::stop_sshd`] and
    /// [`TestHosts::start_sshd`]) with sshd under `setarch linux32` (`on`)
    /// or not, so `uname -m` in its sessions says i686: the "wrong
    /// architecture" fault on an x86_64 machine. Later restarts keep it.
    pub fn restart_sshd_32bit(&self, i: usize, on: bool) -> Result<()> {
        self.hosts[i].linux32.store(on, Ordering::SeqCst);
        self.stop_sshd(i);
        self.start_sshd(i)
    }

    /// Restarts host `i` (as [`TestHosts::stop_sshd`] and
    /// [`TestHosts::start_sshd`]) with CAP_SYS_RESOURCE dropped from sshd's
    /// bounding set (`on`) or not, so root in its sessions cannot lower
    /// oom_score_adj, as in some containers and VMs: runc then cannot start
    /// a CRI sandbox unless containerd says `restrict_oom_score_adj = true`.
    /// [`TestHosts::run_on`] gets it too. Later restarts keep it.
    pub fn restart_sshd_without_sys_resource(&self, i: usize, on: bool) -> Result<()> {
        self.hosts[i].no_sys_resource.store(on, Ordering::SeqCst);
        self.stop_sshd(i);
        self.start_sshd(i)
    }

    /// Writes host `i`'s /etc/containerd/config.toml (`Some`), or removes
    /// it (`None`: containerd then runs on its built-in defaults). Every
    /// host starts with [`super::CONTAINERD_CONFIG`].
    pub fn write_containerd_config(&self, i: usize, text: Option<&str>) {
        let path = self.private(i, "/etc/containerd/config.toml");
        write_or_remove(&path, text.map(str::to_string));
    }

    /// The "changed host key" fault: a new host key for host `i`, and sshd
    /// reloaded (SIGHUP: same PID namespace, its processes keep running).
    /// [`TestHosts::known_hosts`] keeps the old key. Returns the new
    /// public key line (also in [`TestHost::host_key`]).
    pub fn regenerate_host_key(&self, i: usize) -> Result<String> {
        let host = &self.hosts[i];
        if !host.has_sshd {
            bail!("{} runs no sshd: it has no host key", host.name);
        }
        let key = host.key_path();
        let new = host.dir.join("ssh_host_ed25519_key.new");
        let line = write_host_key(&new, &host.name)?;
        // Whole files only: sshd reads the key for every connection.
        fs::rename(new.with_extension("new.pub"), key.with_extension("pub"))?;
        fs::rename(&new, &key)?;
        *lock(&host.host_key) = line.clone();
        let reloaded = {
            let mut guard = lock(&host.sshd);
            match guard.as_mut() {
                Some(sshd) => {
                    if !sshd.alive() {
                        None
                    } else {
                        let before = count_in(&host.log(), "Server listening on");
                        let init = sshd
                            .init_pid()
                            .ok_or_else(|| anyhow!("{}: sshd pid unknown", host.name))?;
                        // SAFETY: kill(2) takes no pointers and has no
                        // memory-safety preconditions. The pid is sshd's:
                        // unshare is alive (checked under the lock we
                        // hold), so it has not reaped it, and no other
                        // process can have that pid.
                        unsafe {
                            libc::kill(init as libc::pid_t, libc::SIGHUP);
                        }
                        Some(before)
                    }
                }
                None => None,
            }
        };
        if let Some(before) = reloaded {
            // sshd re-executes itself on SIGHUP and logs its listen
            // address again once it listens.
            let deadline = Instant::now() + Duration::from_secs(10);
            while count_in(&host.log(), "Server listening on") <= before {
                if Instant::now() >= deadline {
                    bail!(
                        "sshd on {} did not restart after SIGHUP; see {}",
                        host.name,
                        host.log().display()
                    );
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            self.wait_ready(&[i])?;
        }
        Ok(line)
    }

    /// Writes (`Some("fail")`, `Some("hang")`) or removes the stand-in
    /// keadm's fault file, `/var/lib/keadm-standin/fault`, on host `i`.
    pub fn set_fault(&self, i: usize, fault: Option<&str>) {
        let path = self.private(i, "/var/lib/keadm-standin/fault");
        write_or_remove(&path, fault.map(|f| format!("{f}\n")));
    }

    /// Writes or removes `/var/lib/keadm-standin/join-seconds` on host
    /// `i`: how long the stand-in keadm's join takes.
    pub fn set_join_seconds(&self, i: usize, secs: Option<u64>) {
        let path = self.private(i, "/var/lib/keadm-standin/join-seconds");
        write_or_remove(&path, secs.map(|s| format!("{s}\n")));
    }

    /// Writes (`Some("fail")`, `Some("crash")`, `Some("rollback-fail")`)
    /// or removes the stand-in keadm's upgrade fault file,
    /// `/var/lib/keadm-standin/upgrade-fault`, on host `i`
    /// (docs/standins.md says what each does).
    pub fn set_upgrade_fault(&self, i: usize, fault: Option<&str>) {
        let path = self.private(i, "/var/lib/keadm-standin/upgrade-fault");
        write_or_remove(&path, fault.map(|f| format!("{f}\n")));
    }

    /// Writes or removes `/var/lib/keadm-standin/upgrade-seconds` on host
    /// `i`: how long the stand-in keadm's upgrade takes.
    pub fn set_upgrade_seconds(&self, i: usize, secs: Option<u64>) {
        let path = self.private(i, "/var/lib/keadm-standin/upgrade-seconds");
        write_or_remove(&path, secs.map(|s| format!("{s}\n")));
    }
}

fn write_or_remove(path: &Path, text: Option<String>) {
    match text {
        Some(text) => {
            fs::write(path, text).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()))
        }
        None => match fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => panic!("removing {}: {e}", path.display()),
        },
    }
}
