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
//! the namespaces have no default route. A /24 holds [`HOSTS_PER_BLOCK`]
//! hosts; a larger harness (a bench at 1,000 nodes) puts host `i` in block
//! `b = i / 240` at `10.(213+b).K.(10 + i % 240)` ([`host_ip`]), still on
//! the one bridge: the control side holds `10.(213+b).K.1/24` too, and a
//! host outside block 0 has a link route to the control address, so the
//! mirror and the stand-in cloudcore on `10.213.K.1` serve every host.
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
//!
//! The pieces: `netns.rs` (bridge, namespaces, veths, the owner records
//! and the sweep), `accounts.rs` (each host's private tree and account
//! files), `sshd.rs` (starting, watching and stopping each host's PID
//! namespace), `keys.rs` (host and client keys, the agent), `faults.rs`
//! (what a test breaks on purpose), `cloudcore.rs` (the stand-in
//! cloudcore: certificate service, hub and a kube-apiserver, with a test
//! CA made per harness; docs/standins.md says what each copies).

use std::fmt::Write as _;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};

use accounts::{prepare_host, Accounts};
use cloudcore::{unix_now, StandinCloudcore};
pub use cloudcore::{TestCa, APISERVER_PORT, CERT_PORT, HUB_PORT};
use netns::{allocate_bridge, sweep_stale};
use sshd::{Spawner, Sshd};

mod accounts;
pub mod cloudcore;
mod faults;
mod keys;
mod netns;
mod sshd;

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
/// Hosts per /24 block: addresses 10.(213+b).K.10 ..= 10.(213+b).K.249.
pub const HOSTS_PER_BLOCK: usize = 240;
/// Hosts per harness: a Linux bridge takes at most 1,023 ports
/// (BR_MAX_PORTS, port 0 reserved), one per host's veth; the pid limit
/// and memory of a test machine come before that.
pub const MAX_HOSTS: usize = 1000;
/// Ports of the stand-in cloudcore (KubeEdge's cloudhub and its cert port).
pub const CLOUDCORE_PORTS: [u16; 2] = [HUB_PORT, CERT_PORT];
/// How long [`TestHosts::token`]'s JWT is valid: cloudcore's tokens live
/// 2 x `tokenRefreshDuration` (12 h by default).
pub const TOKEN_SECONDS: u64 = 24 * 3600;
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
/// Every host's /etc/containerd/config.toml unless a test writes its own
/// ([`TestHosts::write_containerd_config`]). Test machines (containers,
/// VMs) often lack CAP_SYS_RESOURCE, where runc cannot start a CRI sandbox
/// unless containerd restricts oom_score_adj: configured as an operator of
/// such nodes would, so joins do not depend on the machine the tests run
/// on. The sandbox image stays containerd's default.
pub const CONTAINERD_CONFIG: &str =
    "version = 2\n\n[plugins.\"io.containerd.grpc.v1.cri\"]\n  restrict_oom_score_adj = true\n";
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
    /// Whether sshd (and so every session) runs without CAP_SYS_RESOURCE
    /// in its bounding set.
    no_sys_resource: AtomicBool,
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
            .map(|i| (i, format!("efhost-{i:02}"), host_ip(k, i)))
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
                    let made = prepare_host(&dir, k, (*i, name, ip), &accounts, with_sshd);
                    lock(&results)[*i] = Some(made);
                });
            }
        });
        for made in results.into_inner().unwrap_or_else(|e| e.into_inner()) {
            let host = made.ok_or_else(|| anyhow!("a host was not prepared"))??;
            self.hosts.push(host);
        }

        self.create_network()?;

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

    /// The bridge address on the control side, e.g. `10.213.7.1`: what the
    /// hosts reach the mirror and the stand-in cloudcore at. Listeners
    /// bound here are reachable from every host.
    pub fn control_ip(&self) -> &str {
        &self.control_ip
    }

    /// The stand-in cloudcore's address, `<control_ip>:10000` (its hub;
    /// the certificate service listens on 10002).
    pub fn cloudcore(&self) -> String {
        format!("{}:{}", self.control_ip, HUB_PORT)
    }

    fn standin_cloudcore(&self) -> &StandinCloudcore {
        self.cloudcore
            .as_ref()
            .expect("the stand-in cloudcore starts with the harness")
    }

    /// A join token the stand-in cloudcore accepts, made as cloudcore
    /// makes one: hex sha256 of its CA's DER, `.`, a JWT (HS256, signed
    /// with the CA key) that expires in [`TOKEN_SECONDS`].
    pub fn token(&self) -> String {
        self.standin_cloudcore()
            .ca()
            .token(unix_now() + TOKEN_SECONDS)
    }

    /// A well-formed token for another cloud: its first part is the hash
    /// of a different CA, so edgecore refuses this cloudcore's CA.
    pub fn wrong_token(&self) -> String {
        let other = TestCa::new("another cloud").expect("making a test CA");
        other.token(unix_now() + TOKEN_SECONDS)
    }

    /// The stand-in cloudcore's CA certificate, PEM.
    pub fn cloudcore_ca_pem(&self) -> String {
        self.standin_cloudcore().ca().pem()
    }

    /// The stand-in cloudcore's CA (to make tokens a test needs, such as
    /// expired ones).
    pub fn cloudcore_ca(&self) -> &TestCa {
        self.standin_cloudcore().ca()
    }

    /// Whether node `name` holds a hub connection right now.
    pub fn hub_connected(&self, name: &str) -> bool {
        self.hub_nodes().iter().any(|n| n == name)
    }

    /// The node names holding a hub connection right now, sorted.
    pub fn hub_nodes(&self) -> Vec<String> {
        self.standin_cloudcore().connected()
    }

    /// Cloudcore goes down: its listeners close (connections to its ports
    /// are refused) and every hub connection is dropped.
    pub fn stop_cloudcore(&self) {
        self.standin_cloudcore().stop();
    }

    /// Cloudcore comes back, with the same CA and registered nodes.
    pub fn start_cloudcore(&self) -> Result<()> {
        self.standin_cloudcore().start_listeners()
    }

    /// While `refuse` holds, the hub closes every connection, open ones
    /// within a second and new ones at once (the stand-in edgecore then
    /// retries and exits, as the real one does without a cloud).
    pub fn set_hub_refuse(&self, refuse: bool) {
        self.standin_cloudcore().set_refuse_hub(refuse);
    }

    /// The stand-in kube-apiserver's URL, `https://<control_ip>:6443`.
    pub fn apiserver(&self) -> String {
        format!("https://{}:{APISERVER_PORT}", self.control_ip)
    }

    /// Writes a standard kubeconfig for the stand-in kube-apiserver (its
    /// CA inline as `certificate-authority-data`, a bearer token) and
    /// returns its path. `GET /api/v1/nodes/<name>` there answers the Node
    /// with Ready=True while it holds a hub connection.
    pub fn kubeconfig(&self) -> PathBuf {
        let path = self.path.join("kubeconfig");
        let cloudcore = self.standin_cloudcore();
        let text = format!(
            "# A kubeconfig for the edgeferry test harness's stand-in kube-apiserver.\n\
             apiVersion: v1\n\
             kind: Config\n\
             clusters:\n\
             - name: edgeferry-test\n  \
               cluster:\n    \
                 server: {server}\n    \
                 certificate-authority-data: {ca}\n\
             users:\n\
             - name: edgeferry-test-admin\n  \
               user:\n    \
                 token: {token}\n\
             contexts:\n\
             - name: edgeferry-test\n  \
               context:\n    \
                 cluster: edgeferry-test\n    \
                 user: edgeferry-test-admin\n\
             current-context: edgeferry-test\n",
            server = self.apiserver(),
            ca = edgeferry_bundle::sign::base64(cloudcore.ca().pem().as_bytes()),
            token = cloudcore.api_token(),
        );
        fs::write(&path, text).expect("writing the test kubeconfig");
        path
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
        if host.no_sys_resource.load(Ordering::SeqCst) {
            cmd.args(["setpriv", "--bounding-set", "-sys_resource"]);
        }
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
        if let Some(cloudcore) = self.cloudcore.take() {
            cloudcore.stop();
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
        self.delete_network();
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

/// Fails, naming the Debian package, when a tool the harness runs is
/// missing. We are root (namespaces need it).
fn check_tools(with_sshd: bool) -> Result<()> {
    // SAFETY: geteuid(2) takes no arguments and cannot fail.
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

/// Host `i`'s address on the bridge `efbr<k>`: `10.(213+b).k.(10+j)`,
/// block `b = i / HOSTS_PER_BLOCK`, `j = i % HOSTS_PER_BLOCK` (so
/// `10.213.k.(10+i)` for the first 240).
pub fn host_ip(k: u16, i: usize) -> String {
    let (b, j) = (i / HOSTS_PER_BLOCK, i % HOSTS_PER_BLOCK);
    format!("10.{}.{k}.{}", 213 + b, 10 + j)
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
