//! Test hosts for `edgeferry join`: real OpenSSH servers, each in network,
//! mount, UTS and PID namespaces of its own, on a bridge this harness
//! creates. Used by the integration tests, `cargo xtask demo` and
//! `cargo xtask bench join`.
//!
//! Why namespaces and not containers or mocks: the join talks real SSH to
//! real `sshd`s and runs real shell on them, so what we test is what an
//! operator gets; namespaces need nothing but iproute2 and util-linux on
//! the test machine, and 200 of them start in seconds.
//!
//! Layout: the bridge `efbr<K>` holds the control address `10.213.K.1/24`;
//! host `i` lives in the network namespace `ef<K>h<i>` at `10.213.K.(10+i)`,
//! joined to the bridge by the veth `ef<K>v<i>` (called `eth0` inside). K is
//! the first bridge name the kernel lets us create, so concurrent tests and
//! processes never share a subnet. Test traffic never leaves this machine:
//! the namespaces have no default route.
//!
//! Each host's `sshd` runs as PID 1 of the host's PID namespace, under
//! `unshare` (our child). The mount namespace bind-mounts private copies of
//! the directories the join writes ([`PRIVATE_DIRS`], all starting empty)
//! and of the account files ([`PRIVATE_FILES`]: a user [`EDGE_USER`] with
//! passwordless sudo, known passwords for it and root). Everything else
//! (binaries, libraries, /tmp, /root) is the control machine's own. Bind
//! mounts need mount points, so the first harness creates the missing
//! [`PRIVATE_DIRS`] on the control machine, empty, and leaves them (one
//! may be in use by a concurrent harness).
//!
//! Hosts without sshd ([`TestHosts::create_without_sshd`]), for nodes an
//! operator reaches only at the console (pull mode: the node fetches a
//! join script from the mirror): the same namespaces, private directories
//! and bridge address, but PID 1 is a shell that only reaps orphans, so
//! nothing listens on port 22; [`TestHosts::run_on`] is the console. They
//! also get a private `/tmp` (mounted last, so the harness files under the
//! control machine's /tmp stay visible to the mounts before it): the join
//! one-liner writes a fixed `/tmp` path, and 20 nodes at once must not
//! share it.
//!
//! A host "going down" ([`TestHosts::stop_sshd`]) ends its PID namespace,
//! so every process in it, like a machine powered off; its files and its
//! address stay (connections are refused). A host key change reloads sshd
//! in place, so daemons started on the host survive it.
//!
//! Cleanup is by pid and by the names this harness created: dropping
//! [`TestHosts`] (also while unwinding from a panic, even one in the middle
//! of [`TestHosts::create`]) kills each host's PID namespace, deletes its
//! network namespace, veth and the bridge. Our long-lived children get
//! `PR_SET_PDEATHSIG`, so a test process killed outright (Ctrl-C) takes its
//! hosts along; the namespaces and bridge it leaves are swept by the next
//! [`TestHosts::create`], which finds them through a record under
//! [`RECORDS`] naming the dead owner.

use std::fmt::Write as _;
use std::fs;
use std::io::{self, Read};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

/// The unprivileged account on every host (passwordless sudo).
pub const EDGE_USER: &str = "edge";
/// Password of [`EDGE_USER`] (sshd allows password authentication).
pub const EDGE_PASSWORD: &str = "edge-test-password";
/// Password of root (sshd allows root login).
pub const ROOT_PASSWORD: &str = "root-test-password";
/// Passphrase of [`TestHosts::client_key_encrypted`].
pub const CLIENT_KEY_PASSPHRASE: &str = "client-key-passphrase";
/// The salt of both password hashes, so a test can recompute them with
/// `openssl passwd -6 -salt PASSWORD_SALT <password>`.
pub const PASSWORD_SALT: &str = "edgeferrytests";
/// Hosts per harness: addresses 10.213.K.10 ..= 10.213.K.249.
pub const MAX_HOSTS: usize = 240;
/// Ports of the stand-in cloudcore (KubeEdge's cloudhub and its cert port).
pub const CLOUDCORE_PORTS: [u16; 2] = [10000, 10002];
/// Directories each host has its own (empty) copy of.
pub const PRIVATE_DIRS: &[&str] = &[
    "/etc/kubeedge",
    "/etc/containerd",
    "/usr/local/bin",
    "/var/lib/kubeedge",
    "/var/log/kubeedge",
    "/var/lib/edgeferry",
    "/var/lib/keadm-standin",
    "/run/containerd",
    // The control machine's root dotfiles (a .bashrc that runs pyenv, say)
    // would run on every SSH command and slow every host down.
    "/root",
];
/// Files each host has its own copy of (the system's, plus our accounts).
pub const PRIVATE_FILES: &[&str] = &[
    "/etc/passwd",
    "/etc/shadow",
    "/etc/group",
    "/etc/sudoers",
    "/etc/hosts",
];
/// Printed by a host without sshd once its namespaces are set up (to its
/// log, [`TestHost::log`]); [`TestHosts::create_without_sshd`] waits for it.
const HOST_READY: &str = "edgeferry test host ready";
/// PATH of everything [`TestHosts::run_on`] runs (the environment is
/// otherwise empty: nothing of the test process's leaks onto a host).
pub const HOST_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Where each live harness records its owner, so a later one can sweep
/// what a killed test process left behind. /run: gone at reboot, like the
/// namespaces themselves.
pub const RECORDS: &str = "/run/edgeferry-testhosts";

/// (command, Debian package, needed by hosts without sshd too): checked
/// before anything is created.
const TOOLS: &[(&str, &str, bool)] = &[
    ("ip", "iproute2", true),
    ("unshare", "util-linux", true),
    ("nsenter", "util-linux", true),
    ("setpriv", "util-linux", true),
    ("setarch", "util-linux", true),
    ("mount", "mount", true),
    ("/usr/sbin/sshd", "openssh-server", false),
    ("ssh-keygen", "openssh-client", false),
    ("ssh-agent", "openssh-client", false),
    ("ssh-add", "openssh-client", false),
    ("openssl", "openssl", true),
    ("sudo", "sudo", true),
];

/// Stand-in for KubeEdge's cloudcore: TCP listeners on the control address
/// at [`CLOUDCORE_PORTS`] that accept and close, so a node's "cloudcore
/// ports reachable" checks and the stand-in keadm's connection check pass.
/// It speaks no protocol; the real cloudcore is out of scope of the tests.
struct StandinCloudcore {
    stop: Arc<AtomicBool>,
    threads: Vec<(SocketAddr, JoinHandle<()>)>,
}

impl StandinCloudcore {
    fn start(ip: &str) -> Result<StandinCloudcore> {
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        for port in CLOUDCORE_PORTS {
            let addr: SocketAddr = format!("{ip}:{port}").parse()?;
            let listener = TcpListener::bind(addr)
                .with_context(|| format!("stand-in cloudcore: binding {addr}"))?;
            let stop = Arc::clone(&stop);
            let thread = std::thread::Builder::new()
                .name(format!("cloudcore-{port}"))
                .spawn(move || {
                    for conn in listener.incoming() {
                        if stop.load(Ordering::SeqCst) {
                            break;
                        }
                        // Close our side at once, but drain what the
                        // client sent so the close is a FIN, not a RST
                        // (a client that already wrote sees a clean EOF).
                        if let Ok(conn) = conn {
                            let _ = std::thread::Builder::new()
                                .name("cloudcore-conn".into())
                                .spawn(move || {
                                    let _ = conn.shutdown(std::net::Shutdown::Write);
                                    let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
                                    let _ = io::copy(&mut (&conn).take(1 << 20), &mut io::sink());
                                });
                        }
                    }
                })?;
            threads.push((addr, thread));
        }
        Ok(StandinCloudcore { stop, threads })
    }

    fn shut(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for (addr, thread) in self.threads.drain(..) {
            // Wakes the blocking accept; it sees the flag and returns.
            let _ = TcpStream::connect_timeout(&addr, Duration::from_secs(1));
            let _ = thread.join();
        }
    }
}

/// Starts our long-lived children (sshd namespaces, agents) from one thread
/// that lives as long as the harness, so their parent-death signal (which
/// follows the *thread* that spawned them) fires exactly when the test
/// process dies, not when some caller's thread ends.
struct Spawner {
    jobs: Option<mpsc::Sender<(Command, mpsc::Sender<io::Result<Child>>)>>,
    thread: Option<JoinHandle<()>>,
}

impl Spawner {
    fn new() -> Result<Spawner> {
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
    fn spawn(&self, cmd: Command) -> Result<Child> {
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
    fn command(program: &str) -> Command {
        let mut cmd = Command::new("setpriv");
        cmd.args(["--pdeathsig", "KILL", "--", program]);
        cmd
    }

    fn stop(&mut self) {
        self.jobs.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// One host's running PID namespace: `unshare` (our child) and, once it
/// has forked, the sshd it started (or, on a host without sshd, the shell
/// that stands in for init), PID 1 of the host's PID namespace.
struct Sshd {
    unshare: Child,
    init: Option<u32>,
}

impl Sshd {
    /// The sshd's pid as the control side sees it, once it exists.
    fn init_pid(&mut self) -> Option<u32> {
        if self.init.is_none() {
            self.init = child_of(self.unshare.id());
        }
        self.init
    }

    fn alive(&mut self) -> bool {
        matches!(self.unshare.try_wait(), Ok(None))
    }

    /// SIGKILL to the namespace's PID 1 ends every process in it; unshare
    /// reaps it and exits. Without a PID 1 yet, kill unshare itself.
    fn signal_kill(&mut self) {
        if !self.alive() {
            return;
        }
        match self.init_pid() {
            // unshare is alive, so it has not reaped `init`: the pid is
            // still that process (at worst a zombie), never a reused one.
            Some(init) => unsafe {
                libc::kill(init as libc::pid_t, libc::SIGKILL);
            },
            None => {
                let _ = self.unshare.kill();
            }
        }
    }

    fn reap(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while matches!(self.unshare.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        let _ = self.unshare.kill();
        let _ = self.unshare.wait();
    }
}

/// One test host. Its private directories and files live under `root`
/// (see [`TestHosts::private`]); its sshd's config, keys and log under
/// `dir`.
pub struct TestHost {
    pub index: usize,
    /// Hostname inside the host, e.g. `efhost-03`.
    pub name: String,
    /// Its address on the bridge; sshd listens on port 22 there (unless
    /// the host has none: [`TestHost::has_sshd`]).
    pub ip: String,
    /// Control-side directory whose subdirectories are bind-mounted over
    /// the host's [`PRIVATE_DIRS`] and [`PRIVATE_FILES`].
    pub root: PathBuf,
    /// The network namespace (`ip netns exec <netns> …`, e.g. for `tc`).
    pub netns: String,
    /// sshd_config, host key, `sshd.log` (a host without sshd: only its
    /// `init.log`).
    pub dir: PathBuf,
    /// Whether PID 1 is sshd (false: [`TestHosts::create_without_sshd`]).
    has_sshd: bool,
    /// How many times the host's PID namespace was started: a host
    /// without sshd is up once its log says [`HOST_READY`] that often.
    boots: AtomicUsize,
    /// Current public host key line (`ssh-ed25519 AAAA…`); changes with
    /// [`TestHosts::regenerate_host_key`].
    host_key: Mutex<String>,
    /// Whether sshd runs under `setarch linux32`.
    linux32: AtomicBool,
    sshd: Mutex<Option<Sshd>>,
}

impl TestHost {
    /// The current public host key line, `ssh-ed25519 AAAA…`.
    pub fn host_key(&self) -> String {
        lock(&self.host_key).clone()
    }

    /// `<ip>:22`.
    pub fn addr(&self) -> String {
        format!("{}:22", self.ip)
    }

    /// Whether sshd runs on the host (PID 1). Without it nothing listens
    /// on port 22 and [`TestHosts::run_on`] is the only way in.
    pub fn has_sshd(&self) -> bool {
        self.has_sshd
    }

    /// Everything sshd (and the start-up script before it) wrote; on a
    /// host without sshd, what its start-up script wrote.
    pub fn log(&self) -> PathBuf {
        if self.has_sshd {
            self.dir.join("sshd.log")
        } else {
            self.dir.join("init.log")
        }
    }

    fn key_path(&self) -> PathBuf {
        self.dir.join("ssh_host_ed25519_key")
    }
}

/// A set of test hosts on one private bridge; see the module docs. Drop
/// cleans up everything it created. Send + Sync: threads may share one.
pub struct TestHosts {
    path: PathBuf,
    /// Whether the hosts run sshd (see [`TestHosts::create_without_sshd`]).
    with_sshd: bool,
    tmp: Option<tempfile::TempDir>,
    k: u16,
    bridge: String,
    control_ip: String,
    hosts: Vec<TestHost>,
    /// How many `ef<K>h<i>`/`ef<K>v<i>` names the network batch may have
    /// created (all of them ours: they carry our bridge's number).
    netns_made: usize,
    agents: Mutex<Vec<Child>>,
    cloudcore: Option<StandinCloudcore>,
    spawner: Spawner,
    record: Option<PathBuf>,
}

const _: () = {
    const fn shareable<T: Send + Sync>() {}
    shareable::<TestHosts>();
};

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl TestHosts {
    /// Creates the bridge and `count` hosts (1..=[`MAX_HOSTS`]); returns
    /// once every sshd accepts connections on its address.
    pub fn create(count: usize) -> Result<TestHosts> {
        TestHosts::create_with(count, true)
    }

    /// As [`TestHosts::create`], but the hosts run no sshd: nodes behind
    /// NAT that only their console reaches. Each is still its own network
    /// (on the bridge), mount (the same [`PRIVATE_DIRS`] and
    /// [`PRIVATE_FILES`], plus a private `/tmp`), UTS and PID namespace;
    /// PID 1 is a shell that reaps orphans (so daemons started with
    /// [`TestHosts::run_on`] are real processes there), and port 22 is
    /// closed. No client keys or known_hosts are made. Returns once every
    /// host's namespaces are set up.
    pub fn create_without_sshd(count: usize) -> Result<TestHosts> {
        TestHosts::create_with(count, false)
    }

    fn create_with(count: usize, with_sshd: bool) -> Result<TestHosts> {
        if count == 0 || count > MAX_HOSTS {
            bail!("TestHosts::create({count}): between 1 and {MAX_HOSTS} hosts");
        }
        let started = Instant::now();
        check_tools(with_sshd)?;
        sweep_stale();
        let tmp = tempfile::Builder::new()
            .prefix("edgeferry-hosts-")
            .tempdir()
            .context("creating the harness directory")?;
        // Tempdirs are 0700; sshd reads authorized keys as the edge user.
        fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o755))?;
        let k = allocate_bridge()?;
        let mut hosts = TestHosts {
            path: tmp.path().to_path_buf(),
            with_sshd,
            tmp: Some(tmp),
            k,
            bridge: format!("efbr{k}"),
            control_ip: format!("10.213.{k}.1"),
            hosts: Vec::new(),
            netns_made: 0,
            agents: Mutex::new(Vec::new()),
            cloudcore: None,
            spawner: Spawner::new()?,
            record: None,
        };
        // From here on, Drop undoes whatever was done.
        hosts.write_record()?;
        hosts.setup(count)?;
        eprintln!(
            "test hosts{}: {count} on {} ({}/24) ready in {:.2?}; files in {}",
            if with_sshd { "" } else { " (no sshd)" },
            hosts.bridge,
            hosts.control_ip,
            started.elapsed(),
            hosts.path.display()
        );
        Ok(hosts)
    }

    fn write_record(&mut self) -> Result<()> {
        fs::create_dir_all(RECORDS)?;
        let path = Path::new(RECORDS).join(&self.bridge);
        let me = std::process::id();
        let start = start_time(me).ok_or_else(|| anyhow!("no start time for pid {me}"))?;
        fs::write(&path, format!("{me} {start} {}\n", self.path.display()))?;
        self.record = Some(path);
        Ok(())
    }

    /// The client keys sshd hosts authorize for root and [`EDGE_USER`].
    fn client_keys(&self) -> Result<()> {
        let dir = &self.path;
        let keygen = |path: &Path, passphrase: &str, comment: &str| -> Result<String> {
            ok_output(
                Command::new("ssh-keygen")
                    .args(["-q", "-t", "ed25519", "-N"])
                    .arg(passphrase)
                    .arg("-C")
                    .arg(comment)
                    .arg("-f")
                    .arg(path),
            )?;
            public_line(&path.with_extension("pub"))
        };
        let client = keygen(&dir.join("client_ed25519"), "", "edgeferry-tests")?;
        let encrypted = keygen(
            &dir.join("client_ed25519_encrypted"),
            CLIENT_KEY_PASSPHRASE,
            "edgeferry-tests-encrypted",
        )?;
        let keys_dir = dir.join("authorized_keys");
        fs::create_dir(&keys_dir)?;
        for user in ["root", EDGE_USER] {
            let file = keys_dir.join(user);
            fs::write(&file, format!("{client}\n{encrypted}\n"))?;
            fs::set_permissions(&file, fs::Permissions::from_mode(0o644))?;
        }
        fs::set_permissions(&keys_dir, fs::Permissions::from_mode(0o755))?;
        Ok(())
    }

    fn setup(&mut self, count: usize) -> Result<()> {
        let dir = self.path.clone();
        // Mount points for the private binds. They must exist on the shared
        // filesystem; we create missing ones (empty) and never remove them
        // (another harness may be using them).
        for d in PRIVATE_DIRS.iter().chain(["/run/sshd"].iter()) {
            fs::create_dir_all(d).with_context(|| format!("creating mount point {d}"))?;
        }
        if self.with_sshd {
            self.client_keys()?;
        }
        let accounts = Accounts::new()?;
        let k = self.k;
        let with_sshd = self.with_sshd;
        let specs: Vec<(usize, String, String)> = (0..count)
            .map(|i| {
                (
                    i,
                    format!("efhost-{i:02}"),
                    format!("10.213.{k}.{}", 10 + i),
                )
            })
            .collect();

        // Files and host keys, in parallel.
        let next = AtomicUsize::new(0);
        let results: Mutex<Vec<Option<Result<TestHost>>>> =
            Mutex::new((0..count).map(|_| None).collect());
        let workers = std::thread::available_parallelism()
            .map(|n| n.get() * 2)
            .unwrap_or(4)
            .clamp(2, 16)
            .min(count);
        std::thread::scope(|s| {
            for _ in 0..workers {
                s.spawn(|| loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    let Some((i, name, ip)) = specs.get(i) else {
                        break;
                    };
                    let made = prepare_host(&dir, k, *i, name, ip, &accounts, with_sshd);
                    lock(&results)[*i] = Some(made);
                });
            }
        });
        for made in results.into_inner().unwrap_or_else(|e| e.into_inner()) {
            let host = made.ok_or_else(|| anyhow!("a host was not prepared"))??;
            self.hosts.push(host);
        }

        // Bridge, namespaces and veths in one `ip` process.
        let bridge = &self.bridge;
        let mut batch = format!(
            "link set dev {bridge} address 02:ef:00:00:{k:02x}:01\n\
             addr add {}/24 dev {bridge}\nlink set dev {bridge} up\n",
            self.control_ip
        );
        for host in &self.hosts {
            let i = host.index;
            let _ = write!(
                batch,
                "netns add {ns}\nlink add ef{k}v{i} type veth peer name eth0 netns {ns}\n\
                 link set dev ef{k}v{i} master {bridge} up\n",
                ns = host.netns
            );
        }
        self.netns_made = count;
        let batch_file = dir.join("network.batch");
        fs::write(&batch_file, batch)?;
        ok_output(Command::new("ip").arg("-batch").arg(&batch_file))
            .context("creating the bridge and the host namespaces")?;

        self.cloudcore = Some(StandinCloudcore::start(&self.control_ip)?);

        if self.with_sshd {
            let mut known = String::new();
            for host in &self.hosts {
                let _ = writeln!(known, "{} {}", host.ip, host.host_key());
            }
            fs::write(self.known_hosts(), known)?;
        }

        for i in 0..count {
            self.spawn_sshd(i)?;
        }
        self.wait_ready(&(0..count).collect::<Vec<_>>())
    }

    /// Starts host `i`'s namespaces and sshd (or its stand-in init),
    /// without waiting for it.
    fn spawn_sshd(&self, i: usize) -> Result<()> {
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
        // Without sshd, this shell stays PID 1: its `wait` reaps any
        // child, so also the orphans (daemons) a console session leaves.
        let init = if host.has_sshd {
            format!(
                "exec {setarch}/usr/sbin/sshd -D -e -f {cfg}",
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
    fn wait_ready(&self, which: &[usize]) -> Result<()> {
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

    /// The bridge address on the control side, e.g. `10.213.7.1`: what the
    /// hosts reach the mirror and the stand-in cloudcore at. Listeners
    /// bound here are reachable from every host.
    pub fn control_ip(&self) -> &str {
        &self.control_ip
    }

    /// The stand-in cloudcore's address, `<control_ip>:10000` (it also
    /// listens on 10002).
    pub fn cloudcore(&self) -> String {
        format!("{}:{}", self.control_ip, CLOUDCORE_PORTS[0])
    }

    /// The bridge's name, `efbr<K>`.
    pub fn bridge(&self) -> &str {
        &self.bridge
    }

    pub fn hosts(&self) -> &[TestHost] {
        &self.hosts
    }

    pub fn host(&self, i: usize) -> &TestHost {
        &self.hosts[i]
    }

    /// The harness directory: client keys, known_hosts, per-host dirs.
    pub fn dir(&self) -> &Path {
        &self.path
    }

    /// Whether the hosts run sshd ([`TestHosts::create`]) or not
    /// ([`TestHosts::create_without_sshd`]).
    pub fn with_sshd(&self) -> bool {
        self.with_sshd
    }

    /// Unencrypted ed25519 private key, authorized for root and
    /// [`EDGE_USER`] on every host (not made for hosts without sshd).
    pub fn client_key(&self) -> PathBuf {
        self.path.join("client_ed25519")
    }

    /// A different ed25519 key, encrypted with [`CLIENT_KEY_PASSPHRASE`],
    /// also authorized everywhere (different so a test can tell which key
    /// got a client in).
    pub fn client_key_encrypted(&self) -> PathBuf {
        self.path.join("client_ed25519_encrypted")
    }

    /// `<ip> ssh-ed25519 …` for every host, as created. Not updated by
    /// [`TestHosts::regenerate_host_key`]: that is the point of the fault.
    pub fn known_hosts(&self) -> PathBuf {
        self.path.join("known_hosts")
    }

    /// The OpenSSH client, set up to reach host `i` as `user` with
    /// [`TestHosts::client_key`], checking its key against
    /// [`TestHosts::known_hosts`]. Append the remote command.
    pub fn ssh_command(&self, i: usize, user: &str) -> Command {
        let mut cmd = Command::new("ssh");
        cmd.args(self.ssh_options())
            .arg("-i")
            .arg(self.client_key())
            .arg(format!("{user}@{}", self.hosts[i].ip));
        cmd
    }

    /// The options of [`TestHosts::ssh_command`] without key or target.
    pub fn ssh_options(&self) -> Vec<String> {
        let mut out = vec!["-F".to_string(), "/dev/null".to_string()];
        for opt in [
            "BatchMode=yes".to_string(),
            format!("UserKnownHostsFile={}", self.known_hosts().display()),
            "GlobalKnownHostsFile=/dev/null".to_string(),
            "StrictHostKeyChecking=yes".to_string(),
            "ConnectTimeout=10".to_string(),
            "LogLevel=ERROR".to_string(),
        ] {
            out.push("-o".to_string());
            out.push(opt);
        }
        out
    }

    /// Starts `ssh-agent -D` holding [`TestHosts::client_key`]; returns its
    /// socket. Killed on drop.
    pub fn start_agent(&self) -> Result<PathBuf> {
        let mut agents = lock(&self.agents);
        let sock = self.path.join(format!("agent-{}.sock", agents.len()));
        let mut cmd = Spawner::command("ssh-agent");
        cmd.arg("-D")
            .arg("-a")
            .arg(&sock)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let mut agent = self.spawner.spawn(cmd)?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while !sock.exists() {
            if let Ok(Some(status)) = agent.try_wait() {
                bail!(
                    "ssh-agent exited ({status}) before creating {}",
                    sock.display()
                );
            }
            if Instant::now() >= deadline {
                let _ = agent.kill();
                let _ = agent.wait();
                bail!("ssh-agent did not create {} in 10s", sock.display());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        agents.push(agent);
        ok_output(
            Command::new("ssh-add")
                .arg("-q")
                .arg(self.client_key())
                .env("SSH_AUTH_SOCK", &sock)
                .stdin(Stdio::null()),
        )?;
        Ok(sock)
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

    /// Restarts host `i` (as [`TestHosts::stop_sshd`] and
    /// [`TestHosts::start_sshd`]) with sshd under `setarch linux32` (`on`)
    /// or not, so `uname -m` in its sessions says i686: the "wrong
    /// architecture" fault on an x86_64 machine. Later restarts keep it.
    pub fn restart_sshd_32bit(&self, i: usize, on: bool) -> Result<()> {
        self.hosts[i].linux32.store(on, Ordering::SeqCst);
        self.stop_sshd(i);
        self.start_sshd(i)
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

    /// The control-side path of `path` on host `i`, which must be one of
    /// [`PRIVATE_FILES`] or inside one of [`PRIVATE_DIRS`] (or `/tmp` on a
    /// host without sshd; anything else is shared with the control
    /// machine, so this panics).
    pub fn private(&self, i: usize, path: &str) -> PathBuf {
        let tmp: &[&str] = if self.hosts[i].has_sshd {
            &[]
        } else {
            &["/tmp"]
        };
        let private = PRIVATE_FILES.contains(&path)
            || PRIVATE_DIRS
                .iter()
                .chain(tmp)
                .any(|d| path == *d || path.strip_prefix(d).is_some_and(|r| r.starts_with('/')));
        assert!(
            private && !path.contains("/../"),
            "{path} is not private to a test host (private: {PRIVATE_DIRS:?} and {PRIVATE_FILES:?})"
        );
        self.hosts[i].root.join(path.trim_start_matches('/'))
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

    /// Runs `sh -c script` inside host `i`'s network, mount, UTS and PID
    /// namespaces (with its architecture), as root, for assertions like
    /// `pidof edgecore`, and as the console of a host without sshd (what
    /// an operator types there). Nothing of the test process's
    /// environment goes along: the script sees only `PATH` ([`HOST_PATH`]),
    /// `HOME=/root`, `USER`/`LOGNAME=root`, `SHELL=/bin/sh`, `LANG=C` and
    /// `TERM=dumb`, with its working directory `/` and stdin empty. The
    /// output whatever the exit status; Err only if it could not run (e.g.
    /// the host is down). A daemon started here must not keep
    /// stdout/stderr open, or this waits for it.
    pub fn run_on(&self, i: usize, script: &str) -> Result<Output> {
        let host = &self.hosts[i];
        let pid = self
            .sshd_pid(i)
            .ok_or_else(|| anyhow!("{} is down: no PID 1 to enter", host.name))?;
        let mut cmd = Command::new("nsenter");
        cmd.env_clear()
            .env("PATH", HOST_PATH)
            .env("HOME", "/root")
            .env("USER", "root")
            .env("LOGNAME", "root")
            .env("SHELL", "/bin/sh")
            .env("LANG", "C")
            .env("TERM", "dumb")
            .arg("--target")
            .arg(pid.to_string())
            .args(["--net", "--mount", "--uts", "--pid", "--"]);
        if host.linux32.load(Ordering::SeqCst) {
            cmd.args(["setarch", "linux32"]);
        }
        cmd.args(["sh", "-c", script])
            .current_dir("/")
            .stdin(Stdio::null());
        cmd.output()
            .with_context(|| format!("running {script:?} on {}", host.name))
    }
}

impl Drop for TestHosts {
    fn drop(&mut self) {
        if let Some(mut cloudcore) = self.cloudcore.take() {
            cloudcore.shut();
        }
        for mut agent in lock(&self.agents).drain(..) {
            let _ = agent.kill();
            let _ = agent.wait();
        }
        // Kill every PID namespace first, then reap: stops run in parallel.
        let mut running: Vec<Sshd> = self
            .hosts
            .iter()
            .filter_map(|h| lock(&h.sshd).take())
            .collect();
        for sshd in &mut running {
            sshd.signal_kill();
        }
        for sshd in &mut running {
            sshd.reap();
        }
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
        if let Some(record) = self.record.take() {
            let _ = fs::remove_file(record);
        }
        self.spawner.stop();
        if let Some(tmp) = self.tmp.take() {
            if std::thread::panicking() {
                eprintln!(
                    "test hosts: kept {} (logs) after a panic",
                    tmp.keep().display()
                );
            }
        }
    }
}

/// The account files every host shares, plus per-host details.
struct Accounts {
    passwd: String,
    shadow: String,
    group: String,
    sudoers: String,
    hosts: String,
    uid: u32,
}

impl Accounts {
    fn new() -> Result<Accounts> {
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
fn prepare_host(
    dir: &Path,
    k: u16,
    i: usize,
    name: &str,
    ip: &str,
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
    fs::write(
        hdir.join("net.batch"),
        format!("addr replace {ip}/24 dev eth0\nlink set dev eth0 up\nlink set dev lo up\n"),
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
        sshd: Mutex::new(None),
    })
}

/// Writes the host key and sshd_config of the host `name` into `hdir`;
/// returns the public key line.
fn write_sshd_config(dir: &Path, hdir: &Path, name: &str, ip: &str) -> Result<String> {
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

/// Fails, naming the Debian package, when a tool the harness runs is
/// missing. We are root (namespaces need it).
fn check_tools(with_sshd: bool) -> Result<()> {
    if unsafe { libc::geteuid() } != 0 {
        bail!("test hosts need root (network namespaces, bind mounts)");
    }
    let mut missing = Vec::new();
    for (cmd, pkg, always) in TOOLS {
        if !with_sshd && !always {
            continue;
        }
        let found = if cmd.starts_with('/') {
            Path::new(cmd).exists()
        } else {
            std::env::var_os("PATH")
                .map(|p| std::env::split_paths(&p).any(|d| d.join(cmd).is_file()))
                .unwrap_or(false)
        };
        if !found {
            missing.push(format!("`{cmd}` (apt-get install {pkg})"));
        }
    }
    if !missing.is_empty() {
        bail!(
            "test hosts need {} (`cargo xtask ci` installs them)",
            missing.join(", ")
        );
    }
    Ok(())
}

/// Creates the first free bridge `efbr<K>`; the kernel makes the name
/// ours atomically, so concurrent harnesses never pick the same K.
fn allocate_bridge() -> Result<u16> {
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
fn sweep_stale() {
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
fn start_time(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_whitespace().nth(19)?.parse().ok()
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

/// Writes a new ed25519 host key to `path` (0600) and `<path>.pub` in
/// OpenSSH's formats; returns the public line `ssh-ed25519 AAAA…`. Made
/// in-process: one ssh-keygen per host was most of the set-up time of 200.
fn write_host_key(path: &Path, comment: &str) -> Result<String> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt;
    fn put(buf: &mut Vec<u8>, bytes: &[u8]) {
        buf.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
        buf.extend_from_slice(bytes);
    }
    let mut random = [0u8; 36];
    fs::File::open("/dev/urandom")?.read_exact(&mut random)?;
    let seed: [u8; 32] = random[..32].try_into().expect("32 bytes");
    let key = ed25519_dalek::SigningKey::from_bytes(&seed);
    let public = key.verifying_key().to_bytes();
    let mut blob = Vec::new();
    put(&mut blob, b"ssh-ed25519");
    put(&mut blob, &public);
    // PROTOCOL.key: unencrypted, one key, check ints, padded to 8.
    let mut private = Vec::new();
    private.extend_from_slice(&random[32..36]);
    private.extend_from_slice(&random[32..36]);
    put(&mut private, b"ssh-ed25519");
    put(&mut private, &public);
    put(&mut private, &key.to_keypair_bytes());
    put(&mut private, comment.as_bytes());
    let mut pad = 1u8;
    while private.len() % 8 != 0 {
        private.push(pad);
        pad += 1;
    }
    let mut file = b"openssh-key-v1\0".to_vec();
    put(&mut file, b"none");
    put(&mut file, b"none");
    put(&mut file, b"");
    file.extend_from_slice(&1u32.to_be_bytes());
    put(&mut file, &blob);
    put(&mut file, &private);
    let mut text = String::from("-----BEGIN OPENSSH PRIVATE KEY-----\n");
    for line in base64(&file).as_bytes().chunks(70) {
        text.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
        text.push('\n');
    }
    text.push_str("-----END OPENSSH PRIVATE KEY-----\n");
    let _ = fs::remove_file(path);
    fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?
        .write_all(text.as_bytes())?;
    let line = format!("ssh-ed25519 {}", base64(&blob));
    let mut pub_path = path.as_os_str().to_owned();
    pub_path.push(".pub");
    fs::write(pub_path, format!("{line} {comment}\n"))?;
    Ok(line)
}

fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | (*b as u32) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn public_line(pub_file: &Path) -> Result<String> {
    let line = fs::read_to_string(pub_file)?;
    Ok(line
        .split_whitespace()
        .take(2)
        .collect::<Vec<_>>()
        .join(" "))
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

fn ok_output(cmd: &mut Command) -> Result<Output> {
    let out = cmd.output().with_context(|| format!("starting {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out)
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

fn count_in(path: &Path, needle: &str) -> usize {
    fs::read_to_string(path)
        .map(|t| t.matches(needle).count())
        .unwrap_or(0)
}

fn tail(path: &Path, lines: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn sh_quote(path: &Path) -> String {
    format!("'{}'", path.display().to_string().replace('\'', r"'\''"))
}
