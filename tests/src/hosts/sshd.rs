//! Each host's PID namespace: started under `unshare` from one spawner
//! thread (so the parent-death signal follows the harness, not a caller's
//! thread), watched until sshd listens (or, without sshd, until the
//! stand-in init says it is ready), and ended by killing its PID 1.

use std::fs;
use std::io;
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

use super::keys::write_host_key;
use super::{count_in, lock, sh_quote, tail, TestHosts, HOST_READY};

/// Starts our long-lived children (sshd namespaces, agents) from one thread
/// that lives as long as the harness, so their parent-death signal (which
/// follows the *thread* that spawned them) fires exactly when the test
/// process dies, not when some caller's thread ends.
pub(super) struct Spawner {
    jobs: Option<mpsc::Sender<(Command, mpsc::Sender<io::Result<Child>>)>>,
    thread: Option<JoinHandle<()>>,
}

impl Spawner {
    pub(super) fn new() -> Result<Spawner> {
        let (jobs, rx) = mpsc::channel::<(Command, mpsc::Sender<io::Result<Child>>)>();
        let thread = std::thread::Builder::new()
            .name("testhosts-spawner".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    let _ = reply.send(cmd.spawn());
                }
            })?;
        Ok(Spawner {
            jobs: Some(jobs),
            thread: Some(thread),
        })
    }

    /// Spawns `cmd`, made by [`Spawner::command`], from the spawner
    /// thread.
    pub(super) fn spawn(&self, cmd: Command) -> Result<Child> {
        let what = format!("{cmd:?}");
        let (tx, rx) = mpsc::channel();
        self.jobs
            .as_ref()
            .ok_or_else(|| anyhow!("spawner stopped"))?
            .send((cmd, tx))
            .map_err(|_| anyhow!("spawner thread gone"))?;
        rx.recv()
            .map_err(|_| anyhow!("spawner thread gone"))?
            .with_context(|| format!("starting {what}"))
    }

    /// `setpriv --pdeathsig KILL -- <program>`: setpriv rather than a
    /// `pre_exec` hook, which would make std fork instead of posix_spawn
    /// (4 times slower for 200 hosts).
    pub(super) fn command(program: &str) -> Command {
        let mut cmd = Command::new("setpriv");
        cmd.args(["--pdeathsig", "KILL", "--", program]);
        cmd
    }

    pub(super) fn stop(&mut self) {
        self.jobs.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// One host's running PID namespace: `unshare` (our child) and, once it
/// has forked, the sshd it started (or, on a host without sshd, the shell
/// that stands in for init), PID 1 of the host's PID namespace.
pub(super) struct Sshd {
    pub(super) unshare: Child,
    pub(super) init: Option<u32>,
}

impl Sshd {
    /// The sshd's pid as the control side sees it, once it exists.
    pub(super) fn init_pid(&mut self) -> Option<u32> {
        if self.init.is_none() {
            self.init = child_of(self.unshare.id());
        }
        self.init
    }

    pub(super) fn alive(&mut self) -> bool {
        matches!(self.unshare.try_wait(), Ok(None))
    }

    /// SIGKILL to the namespace's PID 1 ends every process in it; unshare
    /// reaps it and exits. Without a PID 1 yet, kill unshare itself.
    pub(super) fn signal_kill(&mut self) {
        if !self.alive() {
            return;
        }
        match self.init_pid() {
            Some(init) => {
                // SAFETY: kill(2) takes no pointers and has no memory-safety
                // preconditions. And it hits the right process: unshare is
                // alive, so it has not reaped `init`; the pid is still that
                // process (at worst a zombie), never a reused one.
                unsafe {
                    libc::kill(init as libc::pid_t, libc::SIGKILL);
                }
            }
            None => {
                let _ = self.unshare.kill();
            }
        }
    }

    pub(super) fn reap(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while matches!(self.unshare.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        let _ = self.unshare.kill();
        let _ = self.unshare.wait();
    }
}

impl TestHosts {
    /// Starts host `i`'s namespaces and sshd (or its stand-in init),
    /// without waiting for it.
    pub(super) fn spawn_sshd(&self, i: usize) -> Result<()> {
        let host = &self.hosts[i];
        let mut sshd = lock(&host.sshd);
        if let Some(running) = sshd.as_mut() {
            if running.alive() {
                return Ok(());
            }
            running.reap();
        }
        // Left by a killed sshd; a new one writes it once it listens.
        let _ = fs::remove_file(host.dir.join("sshd.pid"));
        let setarch = if host.linux32.load(Ordering::SeqCst) {
            "setarch linux32 "
        } else {
            ""
        };
        let setpriv = if host.no_sys_resource.load(Ordering::SeqCst) {
            "setpriv --bounding-set -sys_resource "
        } else {
            ""
        };
        // Without sshd, this shell stays PID 1: its `wait` reaps any
        // child, so also the orphans (daemons) a console session leaves.
        let init = if host.has_sshd {
            format!(
                "exec {setpriv}{setarch}/usr/sbin/sshd -D -e -f {cfg}",
                cfg = sh_quote(&host.dir.join("sshd_config")),
            )
        } else {
            format!("echo '{HOST_READY}'; while :; do sleep 3600 & wait; done")
        };
        let script = format!(
            "ip -batch {net} && mount -a -T {fstab} && \
             echo {name} > /proc/sys/kernel/hostname && {init}",
            net = sh_quote(&host.dir.join("net.batch")),
            fstab = sh_quote(&host.dir.join("fstab")),
            name = host.name,
        );
        host.boots.fetch_add(1, Ordering::SeqCst);
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(host.log())?;
        let mut cmd = Spawner::command("ip");
        cmd.args(["netns", "exec", &host.netns, "unshare", "--mount", "--uts"])
            .args(["--pid", "--fork", "--kill-child", "--mount-proc"])
            .args(["--propagation", "private", "sh", "-c", &script])
            .current_dir("/")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        let unshare = self.spawner.spawn(cmd)?;
        *sshd = Some(Sshd {
            unshare,
            init: None,
        });
        Ok(())
    }

    /// Waits until each listed host's sshd listens on its address (seen
    /// in /proc/<pid>/net/tcp of its namespace), and the first and last
    /// accept a TCP connection from the control side. A host without sshd:
    /// until its start-up script said [`HOST_READY`] for this boot.
    pub(super) fn wait_ready(&self, which: &[usize]) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30 + which.len() as u64 / 4);
        let mut pending: Vec<usize> = which.to_vec();
        while !pending.is_empty() {
            let mut still = Vec::new();
            for &i in &pending {
                let host = &self.hosts[i];
                let mut guard = lock(&host.sshd);
                let Some(sshd) = guard.as_mut() else {
                    bail!("{}: sshd is not running", host.name);
                };
                if let Ok(Some(status)) = sshd.unshare.try_wait() {
                    bail!(
                        "{} on {} ({}) exited ({status}) before it was ready; \
                         its log {}:\n{}",
                        if host.has_sshd {
                            "sshd"
                        } else {
                            "the host's init"
                        },
                        host.name,
                        host.ip,
                        host.log().display(),
                        tail(&host.log(), 20)
                    );
                }
                // sshd writes its pid file once it listens: a stat per
                // round is all a starting host costs us. A listening socket
                // accepts; a real connection (each costs an sshd re-exec,
                // ~10 ms of CPU) proves the path over the bridge for the
                // first and last host.
                let connect = i == which[0] || i == which[which.len() - 1];
                if !host.has_sshd {
                    let ready = sshd.init_pid().is_some()
                        && count_in(&host.log(), HOST_READY) >= host.boots.load(Ordering::SeqCst);
                    if !ready {
                        still.push(i);
                    }
                    continue;
                }
                let listening = host.dir.join("sshd.pid").exists()
                    && sshd.init_pid().is_some()
                    && listens(sshd.unshare.id(), &host.ip, 22)
                    && (!connect
                        || TcpStream::connect_timeout(
                            &host.addr().parse().expect("an address"),
                            Duration::from_secs(1),
                        )
                        .is_ok());
                if !listening {
                    still.push(i);
                }
            }
            pending = still;
            if pending.is_empty() {
                break;
            }
            if Instant::now() >= deadline {
                let host = &self.hosts[pending[0]];
                bail!(
                    "timed out waiting for {} on {} host(s), first {} ({}); its log {}:\n{}",
                    if self.with_sshd {
                        "sshd"
                    } else {
                        "the host's init"
                    },
                    pending.len(),
                    host.name,
                    host.addr(),
                    host.log().display(),
                    tail(&host.log(), 20)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// Host `i` goes down: its PID namespace ends (sshd and every process
    /// started in it, like powering the machine off), its files stay, its
    /// address stays, so connections are refused.
    pub fn stop_sshd(&self, i: usize) {
        let host = &self.hosts[i];
        if let Some(mut sshd) = lock(&host.sshd).take() {
            sshd.signal_kill();
            sshd.reap();
        }
    }

    /// Host `i` comes back (fresh PID namespace, same files); returns once
    /// sshd accepts connections. Does nothing if it is up.
    pub fn start_sshd(&self, i: usize) -> Result<()> {
        self.spawn_sshd(i)?;
        self.wait_ready(&[i])
    }

    /// The control-side pid of host `i`'s sshd (PID 1 of its PID
    /// namespace; on a host without sshd, the shell standing in for init),
    /// while it runs.
    pub fn sshd_pid(&self, i: usize) -> Option<u32> {
        let mut guard = lock(&self.hosts[i].sshd);
        let sshd = guard.as_mut()?;
        if !sshd.alive() {
            return None;
        }
        sshd.init_pid()
    }
}

/// Writes the host key and sshd_config of the host `name` into `hdir`;
/// returns the public key line.
pub(super) fn write_sshd_config(dir: &Path, hdir: &Path, name: &str, ip: &str) -> Result<String> {
    let key = hdir.join("ssh_host_ed25519_key");
    let host_key = write_host_key(&key, name)?;
    let config = format!(
        "ListenAddress {ip}:22\n\
         HostKey {key}\n\
         PidFile {pid}\n\
         UsePAM no\n\
         StrictModes no\n\
         PermitRootLogin yes\n\
         PasswordAuthentication yes\n\
         KbdInteractiveAuthentication no\n\
         AuthorizedKeysFile {dir}/authorized_keys/%u\n\
         MaxStartups 1000:30:1000\n\
         PerSourceMaxStartups none\n\
         MaxSessions 50\n\
         AllowTcpForwarding yes\n\
         PrintMotd no\n\
         PrintLastLog no\n\
         Subsystem sftp internal-sftp\n\
         LogLevel INFO\n",
        key = key.display(),
        pid = hdir.join("sshd.pid").display(),
        dir = dir.display(),
    );
    fs::write(hdir.join("sshd_config"), config)?;
    Ok(host_key)
}

/// The (only) child of `pid`: unshare's forked child is the namespace's
/// PID 1.
fn child_of(pid: u32) -> Option<u32> {
    let tasks = fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    for task in tasks.flatten() {
        if let Ok(children) = fs::read_to_string(task.path().join("children")) {
            if let Some(child) = children.split_whitespace().next() {
                return child.parse().ok();
            }
        }
    }
    None
}

/// Whether a socket in `pid`'s network namespace listens on `ip:port`.
fn listens(pid: u32, ip: &str, port: u16) -> bool {
    let Ok(addr) = ip.parse::<std::net::Ipv4Addr>() else {
        return false;
    };
    // The kernel prints the network-order address as a host-order u32.
    let want = format!("{:08X}:{port:04X}", u32::from_ne_bytes(addr.octets()));
    fs::read_to_string(format!("/proc/{pid}/net/tcp"))
        .map(|t| {
            t.lines().skip(1).any(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                f.len() > 3 && f[1] == want && f[3] == "0A"
            })
        })
        .unwrap_or(false)
}
