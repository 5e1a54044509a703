//! The SSH client `join` and `reset` drive edge nodes with: connect (with
//! an optional ProxyJump hop), check the host key against a known_hosts
//! file, authenticate, run shell commands with streamed stdin and output.
//!
//! Every failure is an [`SshError`] naming the node and what to do, and
//! [`SshError::is_transient`] tells the caller whether a retry can help.
//! russh gives no connect timeout and no typed host-key errors, so both
//! are added here.

use std::fmt;
use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use russh::client::{self, Handle};
use russh::keys::agent::client::AgentClient;
use russh::keys::agent::AgentIdentity;
use russh::keys::known_hosts::known_host_keys_path;
use russh::keys::{Algorithm, HashAlg, PrivateKeyWithHashAlg, PublicKey, PublicKeyOrCertificate};
use russh::{ChannelMsg, ChannelOpenFailure, ChannelReadHalf, ChannelWriteHalf, Disconnect, Sig};
use tokio::io::AsyncReadExt as _;

use crate::node::secret::Secret;

/// Stdin is sent in pieces this big, so a 64 MiB upload never sits in memory.
const STDIN_CHUNK: usize = 64 * 1024;

/// Where to log in. `host` is written to known_hosts exactly as given, so
/// a node is always addressed the same way (name or IP) across runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub host: String,
    pub port: u16,
    pub user: String,
}

impl Target {
    /// `host:port` (`[v6]:port`) as every error message shows it, so a
    /// report line can be matched to the inventory at a glance.
    pub fn addr(&self) -> String {
        addr_of(&self.host, self.port)
    }
}

/// One way to authenticate. A node gets a list, tried in order, so an
/// inventory can say "this key, else the password" once for all nodes.
#[derive(Clone, Debug)]
pub enum Auth {
    /// An OpenSSH/PEM/PKCS#8 private key file; `passphrase` for an
    /// encrypted one. RSA keys sign with the best rsa-sha2 hash the
    /// server announces, since OpenSSH >= 8.8 refuses SHA-1.
    Key {
        path: PathBuf,
        passphrase: Option<Secret>,
    },
    Password(Secret),
    /// The agent named by `SSH_AUTH_SOCK`, as an operator's `ssh` would use.
    Agent,
    /// An agent at an explicit socket, so tests need not change the
    /// process environment, which concurrent tests share. Test-only until
    /// the inventory can name a socket (dead code in the binary otherwise).
    #[cfg(test)]
    AgentAt(PathBuf),
}

impl Auth {
    fn method(&self) -> &'static str {
        match self {
            Auth::Key { .. } => "publickey",
            Auth::Password(_) => "password",
            Auth::Agent => "agent",
            #[cfg(test)]
            Auth::AgentAt(_) => "agent",
        }
    }
}

/// What to do with a host key that known_hosts does not list. A key that
/// differs from a listed one is refused under both.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum HostKeyPolicy {
    /// Only listed keys (OpenSSH `StrictHostKeyChecking yes`).
    Strict,
    /// Record a host never seen before (OpenSSH `accept-new`), for first
    /// contact with freshly installed nodes.
    AcceptNew,
}

/// A ProxyJump host: isolated sites often reach their nodes through one
/// bastion. It has its own credentials but shares known_hosts and policy.
#[derive(Clone, Debug)]
pub struct Hop {
    pub target: Target,
    pub auths: Vec<Auth>,
}

/// Everything about a connection that is not the node itself, shared by
/// all nodes of a run.
#[derive(Clone, Debug)]
pub struct ConnectOptions {
    /// OpenSSH format: plain `host` for port 22, `[host]:port` otherwise;
    /// hashed (`|1|`) entries are understood.
    pub known_hosts: PathBuf,
    pub policy: HostKeyPolicy,
    /// The TCP connect alone: a host that drops packets fails here, fast.
    pub dial_timeout: Duration,
    /// TCP connect plus SSH handshake (for a hop: each of the two).
    pub connect_timeout: Duration,
    /// All authentication attempts together.
    pub auth_timeout: Duration,
    pub jump: Option<Hop>,
}

/// The host key a session was verified with, for the run report: an
/// operator should see which keys were learned rather than trusted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostKeyInfo {
    /// `SHA256:<base64>` as `ssh-keygen -l` prints it, for comparison.
    pub fingerprint: String,
    /// True when this connection recorded the key (policy AcceptNew).
    pub learned: bool,
}

/// What a command sends on stdin. Files are streamed so an upload costs
/// one chunk of memory whatever its size (nodes without curl/wget get the
/// tarball this way).
#[derive(Clone)]
pub enum Stdin {
    /// Bytes that may hold a secret (keadm's arguments): `Debug` shows
    /// only their length.
    Bytes(Vec<u8>),
    File(PathBuf),
}

impl fmt::Debug for Stdin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Stdin::Bytes(b) => write!(f, "Bytes(<{} bytes>)", b.len()),
            Stdin::File(p) => f.debug_tuple("File").field(p).finish(),
        }
    }
}

/// How a remote command ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExitStatus {
    Code(u32),
    /// Killed by this signal (`TERM`, `KILL`, ...).
    Signal(String),
    /// The channel closed without a status (sshd sends none, e.g., when
    /// the session is torn down); treat as failure.
    Unknown,
}

impl fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExitStatus::Code(c) => write!(f, "exit code {c}"),
            ExitStatus::Signal(s) => write!(f, "killed by signal {s}"),
            ExitStatus::Unknown => f.write_str("no exit status"),
        }
    }
}

/// Why an SSH step failed. Each message is one line that starts with the
/// node (`host:port`) and ends with what to do, because it goes verbatim
/// into a per-node report. None ever contains a password or passphrase.
#[derive(thiserror::Error, Debug)]
pub enum SshError {
    /// TCP connect failed (transient: the node may be booting).
    #[error("{addr}: {}", connect_hint(.source))]
    Connect {
        addr: String,
        source: std::io::Error,
    },
    /// The TCP connect got no answer (transient: the host may be down).
    #[error("{addr}: no answer to the TCP connect within {after:?}: is the host up, and does a firewall drop packets to the SSH port?")]
    DialTimeout { addr: String, after: Duration },
    /// TCP connect plus handshake took too long (transient).
    #[error("{addr}: no SSH handshake within {after:?}: check the address, firewalls and that sshd is running")]
    ConnectTimeout { addr: String, after: Duration },
    /// The key differs from the recorded one: reinstall or attack, which
    /// only a human can tell apart.
    #[error("{addr}: host key CHANGED (now {fingerprint}), known_hosts {} line {line} says otherwise: if the node was reinstalled, remove that line; otherwise suspect an attack", .known_hosts.display())]
    HostKeyChanged {
        addr: String,
        known_hosts: PathBuf,
        line: usize,
        fingerprint: String,
    },
    /// Not recorded, and the policy is Strict.
    #[error("{addr}: host key {fingerprint} is not in {}: add it, or pass --accept-new-host-keys to record it on first contact", .known_hosts.display())]
    HostKeyUnknown {
        addr: String,
        known_hosts: PathBuf,
        fingerprint: String,
    },
    /// The server rejected every method in `tried`.
    #[error("{addr}: authentication failed for user {user} (tried: {}): check the credentials", tried_list(.tried))]
    Auth {
        addr: String,
        user: String,
        tried: Vec<&'static str>,
    },
    /// A private key (or the known_hosts file) could not be used.
    #[error("{}: {reason}", .path.display())]
    KeyFile { path: PathBuf, reason: String },
    /// No agent, an unreachable agent, or one without keys.
    #[error("ssh-agent: {reason}")]
    Agent { reason: String },
    /// Failure at the ProxyJump host; the inner error names it.
    #[error("jump host {source}")]
    Jump { hop: String, source: Box<SshError> },
    /// Authentication or a command took too long.
    #[error("{addr}: {what} timed out after {after:?}: check the node, or allow more time")]
    Timeout {
        addr: String,
        what: String,
        after: Duration,
    },
    /// The connection dropped after it was up (transient).
    #[error("{addr}: connection lost ({reason}): the node may be rebooting or the network unstable; retry")]
    Disconnected { addr: String, reason: String },
    /// Anything else the server or russh objected to.
    #[error("{addr}: SSH protocol error: {reason}")]
    Protocol { addr: String, reason: String },
    /// A local file meant for a command's stdin could not be read.
    #[error("{}: cannot read the file to send: {reason}", .path.display())]
    LocalFile { path: PathBuf, reason: String },
}

impl SshError {
    /// Whether retrying the same step later can succeed: the network or
    /// sshd was briefly unavailable. Credentials, host keys and commands
    /// that time out do not fix themselves.
    pub fn is_transient(&self) -> bool {
        match self {
            SshError::Connect { .. }
            | SshError::DialTimeout { .. }
            | SshError::ConnectTimeout { .. }
            | SshError::Disconnected { .. } => true,
            SshError::Jump { source, .. } => source.is_transient(),
            _ => false,
        }
    }

    /// A stable short name for reports and tallies; a jump host failure is
    /// counted by what went wrong there.
    pub fn kind(&self) -> &'static str {
        match self {
            SshError::Connect { .. } => "connect",
            SshError::DialTimeout { .. } | SshError::ConnectTimeout { .. } => "connect_timeout",
            SshError::HostKeyChanged { .. } => "host_key_changed",
            SshError::HostKeyUnknown { .. } => "host_key_unknown",
            SshError::Auth { .. } => "auth",
            SshError::KeyFile { .. } => "key_file",
            SshError::Agent { .. } => "agent",
            SshError::Jump { source, .. } => source.kind(),
            SshError::Timeout { .. } => "timeout",
            SshError::Disconnected { .. } => "disconnected",
            SshError::Protocol { .. } => "protocol",
            SshError::LocalFile { .. } => "local_file",
        }
    }
}

fn connect_hint(e: &std::io::Error) -> String {
    use std::io::ErrorKind as K;
    match e.kind() {
        K::ConnectionRefused => "connection refused: is sshd running and the address right?".into(),
        K::TimedOut => format!("TCP connect failed ({e}): check the address and firewalls"),
        K::HostUnreachable | K::NetworkUnreachable => {
            format!("unreachable ({e}): check the address and the route to it")
        }
        _ => format!("cannot connect ({e}): check the address and the network"),
    }
}

fn tried_list(tried: &[&'static str]) -> String {
    if tried.is_empty() {
        "no method configured".into()
    } else {
        tried.join(", ")
    }
}

fn addr_of(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// An authenticated connection to one node. It owns the jump host's
/// connection too, because the tunnel dies with it.
pub struct Session {
    // Declared before `jump` so it is dropped first.
    handle: Handle<Checker>,
    addr: String,
    jump: Option<Box<Session>>,
    pub host_key: HostKeyInfo,
}

/// Opens an authenticated session to `target`, through `opts.jump` if set.
/// Credentials are tried in order; the first to succeed wins.
pub async fn connect(
    target: &Target,
    auths: &[Auth],
    opts: &ConnectOptions,
) -> Result<Session, SshError> {
    let jump = match &opts.jump {
        None => None,
        Some(hop) => {
            let session = connect_via(&hop.target, &hop.auths, opts, None)
                .await
                .map_err(|e| SshError::Jump {
                    hop: hop.target.addr(),
                    source: Box::new(e),
                })?;
            Some(Box::new(session))
        }
    };
    let mut session = connect_via(target, auths, opts, jump.as_deref()).await?;
    session.jump = jump;
    Ok(session)
}

async fn connect_via(
    target: &Target,
    auths: &[Auth],
    opts: &ConnectOptions,
    via: Option<&Session>,
) -> Result<Session, SshError> {
    let addr = target.addr();
    let seen = Arc::new(Mutex::new(None));
    let checker = Checker {
        host: target.host.clone(),
        port: target.port,
        addr: addr.clone(),
        known_hosts: opts.known_hosts.clone(),
        policy: opts.policy,
        seen: seen.clone(),
    };
    let config = client_config(&known_algorithms(target, &opts.known_hosts));
    let handshake = async {
        let handle = match via {
            None => {
                let dial = tokio::net::TcpStream::connect((target.host.as_str(), target.port));
                let tcp = tokio::time::timeout(opts.dial_timeout, dial)
                    .await
                    .map_err(|_| SshError::DialTimeout {
                        addr: addr.clone(),
                        after: opts.dial_timeout,
                    })?
                    .map_err(|source| SshError::Connect {
                        addr: addr.clone(),
                        source,
                    })?;
                // Commands are small and interactive; Nagle only adds latency.
                let _ = tcp.set_nodelay(true);
                client::connect_stream(config, tcp, checker).await
            }
            Some(hop) => {
                let channel = hop
                    .handle
                    .channel_open_direct_tcpip(
                        target.host.as_str(),
                        target.port.into(),
                        "127.0.0.1",
                        0,
                    )
                    .await
                    .map_err(|e| tunnel_error(e, &addr, hop))?;
                client::connect_stream(config, channel.into_stream(), checker).await
            }
        };
        handle.map_err(|e| match e {
            HandlerError::Ssh(e) => e,
            HandlerError::Russh(e) => russh_error(e, &addr),
        })
    };
    let mut handle = tokio::time::timeout(opts.connect_timeout, handshake)
        .await
        .map_err(|_| SshError::ConnectTimeout {
            addr: addr.clone(),
            after: opts.connect_timeout,
        })??;
    let host_key =
        seen.lock()
            .expect("host key slot")
            .take()
            .ok_or_else(|| SshError::Protocol {
                addr: addr.clone(),
                reason: "the server's host key was never checked".into(),
            })?;
    tokio::time::timeout(
        opts.auth_timeout,
        authenticate(&mut handle, &target.user, auths, &addr),
    )
    .await
    .map_err(|_| SshError::Timeout {
        addr: addr.clone(),
        what: "authentication".into(),
        after: opts.auth_timeout,
    })??;
    Ok(Session {
        handle,
        addr,
        jump: None,
        host_key,
    })
}

fn tunnel_error(e: russh::Error, addr: &str, hop: &Session) -> SshError {
    match e {
        russh::Error::ChannelOpenFailure(ChannelOpenFailure::AdministrativelyProhibited) => {
            SshError::Jump {
                hop: hop.addr.clone(),
                source: Box::new(SshError::Protocol {
                    addr: hop.addr.clone(),
                    reason:
                        "it refuses TCP forwarding: set AllowTcpForwarding yes in its sshd_config"
                            .into(),
                }),
            }
        }
        russh::Error::ChannelOpenFailure(failure) => SshError::Connect {
            addr: addr.to_string(),
            source: std::io::Error::other(format!(
                "jump host {} could not reach it: {failure:?}",
                hop.addr
            )),
        },
        other => SshError::Jump {
            hop: hop.addr.clone(),
            source: Box::new(russh_error(other, &hop.addr)),
        },
    }
}

/// Sorts russh's generic errors into the transient (the connection went
/// away) and the rest.
fn russh_error(e: russh::Error, addr: &str) -> SshError {
    use russh::Error as E;
    let addr = addr.to_string();
    match e {
        E::Disconnect | E::HUP | E::SendError | E::RecvError | E::KeepaliveTimeout => {
            SshError::Disconnected {
                addr,
                reason: e.to_string(),
            }
        }
        E::IO(io) => SshError::Disconnected {
            addr,
            reason: io.to_string(),
        },
        E::Version => SshError::Protocol {
            addr,
            reason: "the server did not answer as SSH: is this the SSH port?".into(),
        },
        other => SshError::Protocol {
            addr,
            reason: other.to_string(),
        },
    }
}

fn client_config(known: &[Algorithm]) -> Arc<client::Config> {
    let mut preferred = russh::Preferred::DEFAULT.clone();
    // Like OpenSSH, ask first for host key types known_hosts already has,
    // so a node with several keys is not mistaken for a changed one.
    let mut keys = preferred.key.to_vec();
    keys.sort_by_key(|a| !known.iter().any(|k| same_key_type(k, a)));
    preferred.key = keys.into();
    Arc::new(client::Config {
        // Keepalives notice a dead peer; an inactivity timeout would also
        // cut long quiet commands (russh #316), so each step has its own.
        keepalive_interval: Some(Duration::from_secs(15)),
        keepalive_max: 3,
        inactivity_timeout: None,
        preferred,
        ..Default::default()
    })
}

fn same_key_type(a: &Algorithm, b: &Algorithm) -> bool {
    matches!((a, b), (Algorithm::Rsa { .. }, Algorithm::Rsa { .. })) || a == b
}

fn known_algorithms(target: &Target, known_hosts: &Path) -> Vec<Algorithm> {
    known_host_keys_path(&target.host, target.port, known_hosts)
        .map(|keys| keys.into_iter().map(|(_, k)| k.algorithm()).collect())
        .unwrap_or_default()
}

/// Serializes appends to known_hosts across all sessions of the process,
/// so two first contacts never interleave or duplicate a line.
static LEARN: Mutex<()> = Mutex::new(());

/// The russh handler: checks the host key and stores what it decided.
struct Checker {
    host: String,
    port: u16,
    addr: String,
    known_hosts: PathBuf,
    policy: HostKeyPolicy,
    seen: Arc<Mutex<Option<HostKeyInfo>>>,
}

/// Lets a host key verdict leave russh as our typed error rather than its
/// generic "Unknown server key".
#[derive(Debug)]
enum HandlerError {
    Russh(russh::Error),
    Ssh(SshError),
}

impl From<russh::Error> for HandlerError {
    fn from(e: russh::Error) -> Self {
        HandlerError::Russh(e)
    }
}

impl client::Handler for Checker {
    type Error = HandlerError;

    async fn check_server_key(
        &mut self,
        key: &PublicKeyOrCertificate,
    ) -> Result<bool, HandlerError> {
        // No certificate algorithms are offered, so this is a plain key.
        let key = key.public_key();
        let learned = self.verify(&key).map_err(HandlerError::Ssh)?;
        *self.seen.lock().expect("host key slot") = Some(HostKeyInfo {
            fingerprint: key.fingerprint(HashAlg::Sha256).to_string(),
            learned,
        });
        Ok(true)
    }
}

enum Known {
    Yes,
    Unknown,
    Changed { line: usize },
}

impl Checker {
    /// Ok(true) when the key was just learned.
    fn verify(&self, key: &PublicKey) -> Result<bool, SshError> {
        match self.lookup(key)? {
            Known::Yes => return Ok(false),
            Known::Changed { line } => return Err(self.changed(key, line)),
            Known::Unknown if self.policy == HostKeyPolicy::Strict => {
                return Err(SshError::HostKeyUnknown {
                    addr: self.addr.clone(),
                    known_hosts: self.known_hosts.clone(),
                    fingerprint: key.fingerprint(HashAlg::Sha256).to_string(),
                })
            }
            Known::Unknown => {}
        }
        let _guard = LEARN.lock().unwrap_or_else(|e| e.into_inner());
        // Another session may have learned this host while we waited.
        match self.lookup(key)? {
            Known::Yes => Ok(false),
            Known::Changed { line } => Err(self.changed(key, line)),
            Known::Unknown => {
                append_known_host(&self.known_hosts, &self.host, self.port, key).map_err(|e| {
                    SshError::KeyFile {
                        path: self.known_hosts.clone(),
                        reason: format!("cannot record the host key of {}: {e}", self.addr),
                    }
                })?;
                Ok(true)
            }
        }
    }

    /// A host with any recorded key is "changed" unless this key is among
    /// them: otherwise AcceptNew would let an attacker with a key of another
    /// type in. Recorded types are asked for first, so a genuine node
    /// presents a recorded key.
    fn lookup(&self, key: &PublicKey) -> Result<Known, SshError> {
        let recorded =
            known_host_keys_path(&self.host, self.port, &self.known_hosts).map_err(|e| {
                SshError::KeyFile {
                    path: self.known_hosts.clone(),
                    reason: format!("cannot use this known_hosts file: {e}"),
                }
            })?;
        if recorded.iter().any(|(_, k)| k.key_data() == key.key_data()) {
            return Ok(Known::Yes);
        }
        let line = recorded
            .iter()
            .find(|(_, k)| k.algorithm() == key.algorithm())
            .or(recorded.first())
            .map(|(line, _)| *line);
        Ok(match line {
            Some(line) => Known::Changed {
                line: physical_line(&self.known_hosts, line),
            },
            None => Known::Unknown,
        })
    }

    fn changed(&self, key: &PublicKey, line: usize) -> SshError {
        SshError::HostKeyChanged {
            addr: self.addr.clone(),
            known_hosts: self.known_hosts.clone(),
            line,
            fingerprint: key.fingerprint(HashAlg::Sha256).to_string(),
        }
    }
}

/// russh numbers known_hosts lines without counting `#` comments; the
/// operator needs the number an editor shows.
fn physical_line(path: &Path, russh_line: usize) -> usize {
    let Ok(text) = std::fs::read_to_string(path) else {
        return russh_line;
    };
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.starts_with('#'))
        .nth(russh_line.saturating_sub(1))
        .map_or(russh_line, |(i, _)| i + 1)
}

/// Appends one entry in a single write, creating the file 0600 (and its
/// directory 0700) like OpenSSH; russh's own helper uses the umask.
fn append_known_host(path: &Path, host: &str, port: u16, key: &PublicKey) -> std::io::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
    }
    let file = std::fs::OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .mode(0o600)
        .open(path)?;
    let mut line = String::new();
    let len = file.metadata()?.len();
    let mut last = [0u8];
    if len > 0 && file.read_at(&mut last, len - 1)? == 1 && last[0] != b'\n' {
        line.push('\n');
    }
    let host_port = if port == 22 {
        host.to_string()
    } else {
        format!("[{host}]:{port}")
    };
    let key = key.to_openssh().map_err(std::io::Error::other)?;
    line.push_str(&format!("{host_port} {key}\n"));
    (&file).write_all(line.as_bytes())
}

async fn authenticate(
    handle: &mut Handle<Checker>,
    user: &str,
    auths: &[Auth],
    addr: &str,
) -> Result<(), SshError> {
    let mut tried = Vec::new();
    let mut local = None;
    let mut rejected = false;
    for auth in auths {
        if !tried.contains(&auth.method()) {
            tried.push(auth.method());
        }
        let outcome = match auth {
            Auth::Key { path, passphrase } => {
                key_auth(handle, user, path, passphrase.as_ref(), addr).await
            }
            Auth::Password(password) => handle
                .authenticate_password(user, password.expose())
                .await
                .map(|r| r.success())
                .map_err(|e| russh_error(e, addr)),
            Auth::Agent => match std::env::var_os("SSH_AUTH_SOCK") {
                Some(sock) => agent_auth(handle, user, Path::new(&sock), addr).await,
                None => Err(SshError::Agent {
                    reason: "SSH_AUTH_SOCK is not set: start ssh-agent and ssh-add a key, or use a key file".into(),
                }),
            },
            #[cfg(test)]
            Auth::AgentAt(sock) => agent_auth(handle, user, sock, addr).await,
        };
        match outcome {
            Ok(true) => return Ok(()),
            Ok(false) => rejected = true,
            // sshd hangs up after MaxAuthTries rejections; that is an auth
            // failure, not a flaky network worth retrying.
            Err(SshError::Disconnected { .. }) if rejected => break,
            // A local problem is the more useful report, but later
            // methods may still work.
            Err(e @ (SshError::KeyFile { .. } | SshError::Agent { .. })) => {
                local.get_or_insert(e);
            }
            Err(e) => return Err(e),
        }
    }
    Err(local.unwrap_or_else(|| SshError::Auth {
        addr: addr.to_string(),
        user: user.to_string(),
        tried,
    }))
}

async fn key_auth(
    handle: &mut Handle<Checker>,
    user: &str,
    path: &Path,
    passphrase: Option<&Secret>,
    addr: &str,
) -> Result<bool, SshError> {
    let key = russh::keys::load_secret_key(path, passphrase.map(Secret::expose)).map_err(|e| {
        use russh::keys::Error as K;
        let reason = match (e, passphrase) {
            (K::IO(io), _) => format!("cannot read the private key: {io}"),
            (K::KeyIsEncrypted, None) => {
                "the private key is encrypted: give its passphrase".to_string()
            }
            (_, Some(_)) => "cannot decrypt the private key: wrong passphrase?".to_string(),
            (e, None) => format!("not a usable private key: {e}"),
        };
        SshError::KeyFile {
            path: path.to_path_buf(),
            reason,
        }
    })?;
    let hash = rsa_hash(handle, key.algorithm(), addr).await?;
    handle
        .authenticate_publickey(user, PrivateKeyWithHashAlg::new(Arc::new(key), hash))
        .await
        .map(|r| r.success())
        .map_err(|e| russh_error(e, addr))
}

/// rsa-sha2-512/256 as the server announces; legacy SHA-1 `ssh-rsa` only
/// for servers too old to announce anything, as OpenSSH does.
async fn rsa_hash(
    handle: &Handle<Checker>,
    algorithm: Algorithm,
    addr: &str,
) -> Result<Option<HashAlg>, SshError> {
    if !algorithm.is_rsa() {
        return Ok(None);
    }
    let best = handle
        .best_supported_rsa_hash()
        .await
        .map_err(|e| russh_error(e, addr))?;
    Ok(best.flatten())
}

async fn agent_auth(
    handle: &mut Handle<Checker>,
    user: &str,
    socket: &Path,
    addr: &str,
) -> Result<bool, SshError> {
    let agent_error = |what: &str, e: &dyn fmt::Display| SshError::Agent {
        reason: format!("{what} {}: {e}", socket.display()),
    };
    let mut agent = AgentClient::connect_uds(socket)
        .await
        .map_err(|e| agent_error("cannot reach the agent at", &e))?;
    // OpenSSH agents only offer destination-constrained keys to a bound
    // session; older agents refuse the extension, which is harmless.
    if let Some(binding) = handle.agent_session_binding() {
        let _ = agent.bind_session(binding, false).await;
    }
    let identities = agent
        .request_identities()
        .await
        .map_err(|e| agent_error("cannot list the keys of the agent at", &e))?;
    let mut sign_error = None;
    let mut offered = 0;
    for identity in identities {
        // Certificates need the CA setup this tool does not manage.
        let AgentIdentity::PublicKey { key, .. } = identity else {
            continue;
        };
        offered += 1;
        let hash = rsa_hash(handle, key.algorithm(), addr).await?;
        match handle
            .authenticate_publickey_with(user, key, hash, &mut agent)
            .await
        {
            Ok(r) if r.success() => return Ok(true),
            Ok(_) => {}
            Err(russh::AgentAuthError::Send(_)) => {
                return Err(SshError::Disconnected {
                    addr: addr.to_string(),
                    reason: "closed during agent authentication".into(),
                })
            }
            Err(russh::AgentAuthError::Key(e)) => {
                sign_error.get_or_insert(agent_error("the agent could not sign, at", &e));
            }
        }
    }
    if offered == 0 {
        return Err(SshError::Agent {
            reason: format!(
                "the agent at {} holds no keys: ssh-add one",
                socket.display()
            ),
        });
    }
    sign_error.map_or(Ok(false), Err)
}

impl Session {
    /// Runs `command` (a shell command line, run by the remote user's shell), feeding stdin if given then EOF,
    /// calling `output` with each chunk of stdout and stderr as it arrives (merged, in arrival order).
    /// Returns the exit status. On timeout, signals TERM, closes the channel and returns SshError::Timeout.
    ///
    /// Output is merged because it goes to one per-node log where the order
    /// of messages matters more than their stream.
    pub async fn exec(
        &self,
        command: &str,
        stdin: Option<Stdin>,
        timeout: Duration,
        output: &mut (dyn FnMut(&[u8]) + Send),
    ) -> Result<ExitStatus, SshError> {
        let mut watch = |chunk: &[u8]| {
            output(chunk);
            None
        };
        self.exec_until(
            command,
            stdin,
            Instant::now() + timeout,
            timeout,
            &mut watch,
        )
        .await
    }

    /// [`Session::exec`] with a deadline the output can move: `output`
    /// returns a new deadline when what it read starts a new stage (a
    /// pipelined step), `None` to keep the current one. `timeout` is what
    /// a timeout error reports.
    pub async fn exec_until(
        &self,
        command: &str,
        stdin: Option<Stdin>,
        deadline: Instant,
        timeout: Duration,
        output: &mut (dyn FnMut(&[u8]) -> Option<Instant> + Send),
    ) -> Result<ExitStatus, SshError> {
        let timed_out = || SshError::Timeout {
            addr: self.addr.clone(),
            // Not the command itself: it may carry the join token.
            what: "the command".into(),
            after: timeout,
        };
        // Open the file first: a missing file should not start the command.
        let stdin: Option<Feed> = match stdin {
            None => None,
            Some(Stdin::Bytes(b)) => Some((PathBuf::new(), Box::new(std::io::Cursor::new(b)))),
            Some(Stdin::File(path)) => match tokio::fs::File::open(&path).await {
                Ok(f) => Some((path, Box::new(f))),
                Err(e) => {
                    return Err(SshError::LocalFile {
                        path,
                        reason: e.to_string(),
                    })
                }
            },
        };
        let deadline = tokio::time::Instant::from_std(deadline);
        let channel = tokio::time::timeout_at(deadline, self.handle.channel_open_session())
            .await
            .map_err(|_| timed_out())?
            .map_err(|e| russh_error(e, &self.addr))?;
        let (mut rx, tx) = channel.split();
        match self
            .run(&mut rx, &tx, command, stdin, deadline, output)
            .await
        {
            Some(result) => result,
            None => {
                // OpenSSH leaves a command without a terminal running when
                // its channel closes, so ask it to stop first.
                let _ = tx.signal(Sig::TERM).await;
                let _ = tx.close().await;
                Err(timed_out())
            }
        }
    }

    /// `None` when the deadline passed first.
    async fn run(
        &self,
        rx: &mut ChannelReadHalf,
        tx: &ChannelWriteHalf<client::Msg>,
        command: &str,
        stdin: Option<Feed>,
        mut deadline: tokio::time::Instant,
        output: &mut (dyn FnMut(&[u8]) -> Option<Instant> + Send),
    ) -> Option<Result<ExitStatus, SshError>> {
        match tokio::time::timeout_at(deadline, tx.exec(true, command)).await {
            Err(_) => return None,
            Ok(Err(e)) => return Some(Err(russh_error(e, &self.addr))),
            Ok(Ok(())) => {}
        }
        let writer = async {
            if let Some(feed) = stdin {
                send_stdin(feed, tx).await?;
            }
            // Send errors mean the channel is gone; the reader reports that.
            let _ = tx.eof().await;
            Ok::<(), SshError>(())
        };
        tokio::pin!(writer);
        let mut writing = true;
        let mut status = None;
        loop {
            tokio::select! {
                done = &mut writer, if writing => {
                    writing = false;
                    if let Err(e) = done {
                        let _ = tx.close().await;
                        return Some(Err(e));
                    }
                }
                _ = tokio::time::sleep_until(deadline) => return None,
                msg = rx.wait() => match msg {
                    Some(ChannelMsg::Data { data }) | Some(ChannelMsg::ExtendedData { data, .. }) => {
                        if let Some(d) = output(&data) {
                            deadline = tokio::time::Instant::from_std(d);
                        }
                    }
                    Some(ChannelMsg::ExitStatus { exit_status }) => {
                        status = Some(ExitStatus::Code(exit_status));
                    }
                    Some(ChannelMsg::ExitSignal { signal_name, .. }) => {
                        status = Some(ExitStatus::Signal(signal_name_of(signal_name)));
                    }
                    Some(ChannelMsg::Failure) => {
                        let _ = tx.close().await;
                        return Some(Err(SshError::Protocol {
                            addr: self.addr.clone(),
                            reason: "the server refused to run the command".into(),
                        }));
                    }
                    // The exit status may follow EOF, so only the end of the
                    // channel ends the loop. A command that exits without
                    // reading all of stdin leaves the writer pending; it is
                    // dropped here.
                    Some(ChannelMsg::Close) | None => break,
                    Some(_) => {}
                },
            }
        }
        Some(match status {
            Some(status) => Ok(status),
            None if self.handle.is_closed() => Err(SshError::Disconnected {
                addr: self.addr.clone(),
                reason: "closed while a command ran".into(),
            }),
            None => Ok(ExitStatus::Unknown),
        })
    }

    /// Says goodbye to the node (and then the jump host) instead of just
    /// dropping the TCP connection, so sshd logs a clean disconnect.
    pub async fn close(self) {
        let _ = self
            .handle
            .disconnect(Disconnect::ByApplication, "", "en")
            .await;
        if let Some(jump) = self.jump {
            let _ = jump
                .handle
                .disconnect(Disconnect::ByApplication, "", "en")
                .await;
        }
    }
}

/// Stdin to send: the file it comes from (for errors), and its bytes.
type Feed = (PathBuf, Box<dyn tokio::io::AsyncRead + Send + Unpin>);

async fn send_stdin(
    (path, mut from): Feed,
    tx: &ChannelWriteHalf<client::Msg>,
) -> Result<(), SshError> {
    loop {
        let mut chunk = vec![0; STDIN_CHUNK];
        let n = from
            .read(&mut chunk)
            .await
            .map_err(|e| SshError::LocalFile {
                path: path.clone(),
                reason: e.to_string(),
            })?;
        if n == 0 {
            return Ok(());
        }
        chunk.truncate(n);
        // Waits for the remote window, so memory stays bounded. An error
        // means the channel is gone, which the reader reports.
        if tx.data_bytes(chunk).await.is_err() {
            return Ok(());
        }
    }
}

fn signal_name_of(sig: Sig) -> String {
    match sig {
        Sig::Custom(name) => name,
        other => format!("{other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::{Child, Command, Stdio};

    const SSHD: &str = "/usr/sbin/sshd";

    /// Fails loudly: a skipped SSH test would hide a broken client.
    fn tool(path: &str, package: &str) -> &'static str {
        assert!(
            Path::new(path).exists(),
            "{path} not found: install the Debian package {package}"
        );
        Box::leak(path.to_string().into_boxed_str())
    }

    fn run(cmd: &mut Command) -> String {
        let out = cmd.output().expect("spawn");
        assert!(out.status.success(), "{cmd:?}: {out:?}");
        String::from_utf8(out.stdout).unwrap()
    }

    fn keygen(path: &Path, passphrase: &str) {
        let _ = std::fs::remove_file(path);
        run(Command::new(tool("/usr/bin/ssh-keygen", "openssh-client"))
            .args(["-q", "-t", "ed25519", "-N", passphrase, "-C", "", "-f"])
            .arg(path));
    }

    fn free_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    /// A real OpenSSH sshd on 127.0.0.1, killed on drop.
    struct Sshd {
        child: Child,
        port: u16,
        dir: tempfile::TempDir,
    }

    impl Sshd {
        fn start() -> Sshd {
            tool(SSHD, "openssh-server");
            std::fs::create_dir_all("/run/sshd").unwrap();
            let dir = tempfile::tempdir().unwrap();
            let d = dir.path();
            keygen(&d.join("host_ed25519"), "");
            std::fs::write(d.join("authorized_keys"), "").unwrap();
            let port = free_port();
            std::fs::write(
                d.join("sshd_config"),
                format!(
                    "ListenAddress 127.0.0.1:{port}\nHostKey {d}/host_ed25519\nPidFile {d}/pid\n\
                     UsePAM no\nStrictModes no\nAuthorizedKeysFile {d}/authorized_keys\n\
                     PasswordAuthentication no\nKbdInteractiveAuthentication no\n\
                     PermitRootLogin yes\nAllowTcpForwarding yes\n",
                    d = d.display()
                ),
            )
            .unwrap();
            let log = std::fs::File::create(d.join("sshd.log")).unwrap();
            let child = Command::new(SSHD)
                .args(["-D", "-e", "-f"])
                .arg(d.join("sshd_config"))
                .stderr(log)
                .spawn()
                .unwrap();
            let sshd = Sshd { child, port, dir };
            for _ in 0..100 {
                if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return sshd;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            panic!("sshd did not listen: {}", sshd.log());
        }

        fn log(&self) -> String {
            std::fs::read_to_string(self.dir.path().join("sshd.log")).unwrap_or_default()
        }

        fn target(&self) -> Target {
            Target {
                host: "127.0.0.1".into(),
                port: self.port,
                user: "root".into(),
            }
        }

        /// A client key this sshd accepts; `name` keeps keys apart.
        fn client_key(&self, name: &str, passphrase: &str) -> PathBuf {
            let key = self.dir.path().join(name);
            keygen(&key, passphrase);
            let public = std::fs::read_to_string(key.with_extension("pub")).unwrap();
            let mut f = std::fs::OpenOptions::new()
                .append(true)
                .open(self.dir.path().join("authorized_keys"))
                .unwrap();
            f.write_all(public.as_bytes()).unwrap();
            key
        }

        fn host_pub(&self) -> String {
            let path = self.dir.path().join("host_ed25519.pub");
            std::fs::read_to_string(path).unwrap().trim().to_string()
        }

        fn fingerprint(&self) -> String {
            let out = run(Command::new("/usr/bin/ssh-keygen")
                .arg("-lf")
                .arg(self.dir.path().join("host_ed25519.pub")));
            out.split(' ').nth(1).unwrap().to_string()
        }

        fn known_line(&self) -> String {
            format!("[127.0.0.1]:{} {}\n", self.port, self.host_pub())
        }
    }

    impl Drop for Sshd {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    fn options(known_hosts: &Path, policy: HostKeyPolicy) -> ConnectOptions {
        ConnectOptions {
            known_hosts: known_hosts.to_path_buf(),
            policy,
            dial_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(10),
            auth_timeout: Duration::from_secs(10),
            jump: None,
        }
    }

    fn key(path: &Path, passphrase: Option<&str>) -> Auth {
        Auth::Key {
            path: path.to_path_buf(),
            passphrase: passphrase.map(Secret::new),
        }
    }

    /// A session on a fresh sshd whose key is already trusted.
    async fn trusted() -> (Sshd, Session) {
        let sshd = Sshd::start();
        let id = sshd.client_key("id", "");
        let known = sshd.dir.path().join("known_hosts");
        std::fs::write(&known, sshd.known_line()).unwrap();
        let opts = options(&known, HostKeyPolicy::Strict);
        let session = connect(&sshd.target(), &[key(&id, None)], &opts)
            .await
            .unwrap_or_else(|e| panic!("{e}\n{}", sshd.log()));
        (sshd, session)
    }

    async fn exec(s: &Session, cmd: &str, stdin: Option<Stdin>) -> (ExitStatus, String) {
        let mut out = Vec::new();
        let status = s
            .exec(cmd, stdin, Duration::from_secs(30), &mut |b| {
                out.extend_from_slice(b)
            })
            .await
            .unwrap();
        (status, String::from_utf8(out).unwrap())
    }

    #[tokio::test]
    async fn exec_reports_status_output_and_takes_stdin() {
        let (sshd, s) = trusted().await;
        assert!(!s.host_key.learned);
        assert_eq!(s.host_key.fingerprint, sshd.fingerprint());
        assert_eq!(exec(&s, "exit 3", None).await.0, ExitStatus::Code(3));
        let (status, out) = exec(&s, "echo out; sleep 0.2; echo err >&2", None).await;
        assert_eq!(status, ExitStatus::Code(0));
        assert_eq!(out, "out\nerr\n");
        let (status, _) = exec(&s, "kill -TERM $$", None).await;
        assert_eq!(status, ExitStatus::Signal("TERM".into()));
        let (_, out) = exec(&s, "cat", Some(Stdin::Bytes(b"hello\n".to_vec()))).await;
        assert_eq!(out, "hello\n");

        // Bigger than the channel window, so flow control is exercised.
        let file = sshd.dir.path().join("payload");
        let data: Vec<u8> = (0..5u32 << 20)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect();
        std::fs::write(&file, &data).unwrap();
        let local = run(Command::new("sha256sum").arg(&file));
        let (status, remote) = exec(&s, "sha256sum", Some(Stdin::File(file.clone()))).await;
        assert_eq!(status, ExitStatus::Code(0));
        assert_eq!(remote.split(' ').next(), local.split(' ').next());
        // A command that ignores its stdin still ends promptly.
        let (status, _) = exec(&s, "exit 4", Some(Stdin::File(file))).await;
        assert_eq!(status, ExitStatus::Code(4));

        let missing = s
            .exec(
                "cat",
                Some(Stdin::File("/nonexistent".into())),
                Duration::from_secs(5),
                &mut |_| {},
            )
            .await
            .unwrap_err();
        assert_eq!(missing.kind(), "local_file");
        s.close().await;
    }

    #[tokio::test]
    async fn exec_timeout_is_fast_and_session_survives() {
        let (_sshd, s) = trusted().await;
        let started = Instant::now();
        let err = s
            .exec("sleep 30", None, Duration::from_secs(1), &mut |_| {})
            .await
            .unwrap_err();
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(err.kind(), "timeout");
        assert!(!err.is_transient());
        assert!(err.to_string().starts_with("127.0.0.1:"), "{err}");
        assert_eq!(exec(&s, "true", None).await.0, ExitStatus::Code(0));
    }

    #[tokio::test]
    async fn encrypted_key_needs_its_passphrase() {
        let sshd = Sshd::start();
        let id = sshd.client_key("id_enc", "correct horse");
        let known = sshd.dir.path().join("known_hosts");
        std::fs::write(&known, sshd.known_line()).unwrap();
        let opts = options(&known, HostKeyPolicy::Strict);
        let t = sshd.target();
        connect(&t, &[key(&id, Some("correct horse"))], &opts)
            .await
            .unwrap();
        for pass in [Some("wrong horse"), None] {
            let err = connect(&t, &[key(&id, pass)], &opts).await.err().unwrap();
            assert_eq!(err.kind(), "key_file", "{err}");
            assert!(!err.is_transient());
            let text = format!("{err} {err:?}");
            assert!(!text.contains("horse"), "{text}");
        }
        // A later method still gets its turn after a local key problem.
        let good = sshd.client_key("id_plain", "");
        let auths = [key(&id, None), key(&good, None)];
        connect(&t, &auths, &opts).await.unwrap();
    }

    #[tokio::test]
    async fn unauthorized_key_is_an_auth_failure() {
        let sshd = Sshd::start();
        let stranger = sshd.dir.path().join("stranger");
        keygen(&stranger, "");
        let known = sshd.dir.path().join("known_hosts");
        std::fs::write(&known, sshd.known_line()).unwrap();
        let opts = options(&known, HostKeyPolicy::Strict);
        // This sshd refuses passwords, so the attempt fails quickly.
        let auths = [
            Auth::Password(Secret::new("hunter2-pw")),
            key(&stranger, None),
        ];
        let err = connect(&sshd.target(), &auths, &opts).await.err().unwrap();
        assert!(!format!("{err} {err:?}").contains("hunter2"));
        assert!(
            matches!(&err, SshError::Auth { tried, .. } if *tried == ["password", "publickey"]),
            "{err}"
        );
        let err = connect(&sshd.target(), &[key(&stranger, None)], &opts)
            .await
            .err()
            .unwrap();
        assert!(
            matches!(&err, SshError::Auth { tried, .. } if *tried == ["publickey"]),
            "{err}"
        );
        assert!(!err.is_transient());
        assert_eq!(
            err.to_string(),
            format!(
                "127.0.0.1:{}: authentication failed for user root (tried: publickey): check the credentials",
                sshd.port
            )
        );
    }

    #[tokio::test]
    async fn agent_auth() {
        let sshd = Sshd::start();
        let id = sshd.client_key("id_agent", "");
        let sock = sshd.dir.path().join("agent.sock");
        let mut agent = Command::new(tool("/usr/bin/ssh-agent", "openssh-client"))
            .arg("-D")
            .arg("-a")
            .arg(&sock)
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        for _ in 0..100 {
            if sock.exists() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let added = Command::new(tool("/usr/bin/ssh-add", "openssh-client"))
            .arg("-q")
            .arg(&id)
            .env("SSH_AUTH_SOCK", &sock)
            .output();
        let known = sshd.dir.path().join("known_hosts");
        std::fs::write(&known, sshd.known_line()).unwrap();
        let opts = options(&known, HostKeyPolicy::Strict);
        let ok = connect(&sshd.target(), &[Auth::AgentAt(sock.clone())], &opts).await;
        let missing = Auth::AgentAt(sshd.dir.path().join("no.sock"));
        let err = connect(&sshd.target(), &[missing], &opts).await.err();
        let _ = agent.kill();
        let _ = agent.wait();
        assert!(added.unwrap().status.success());
        let s = ok.unwrap();
        assert_eq!(exec(&s, "true", None).await.0, ExitStatus::Code(0));
        assert_eq!(err.unwrap().kind(), "agent");
    }

    #[tokio::test]
    async fn strict_refuses_an_unknown_host() {
        let sshd = Sshd::start();
        let id = sshd.client_key("id", "");
        let known = sshd.dir.path().join("known_hosts");
        let opts = options(&known, HostKeyPolicy::Strict);
        let err = connect(&sshd.target(), &[key(&id, None)], &opts)
            .await
            .err()
            .unwrap();
        match &err {
            SshError::HostKeyUnknown { fingerprint, .. } => {
                assert_eq!(*fingerprint, sshd.fingerprint())
            }
            other => panic!("{other}"),
        }
        assert!(!err.is_transient());
        assert!(!known.exists());
    }

    // Several threads, so the first contacts really race.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn accept_new_learns_once_then_strict_passes() {
        let sshd = Sshd::start();
        let id = sshd.client_key("id", "");
        let known = sshd.dir.path().join("new/dir/known_hosts");
        let opts = options(&known, HostKeyPolicy::AcceptNew);
        let t = sshd.target();
        let auths = [key(&id, None)];
        // First contacts race; exactly one may write.
        let all = futures_util::future::join_all((0..6).map(|_| connect(&t, &auths, &opts))).await;
        let learned = all
            .into_iter()
            .map(|s| s.unwrap().host_key.learned)
            .filter(|l| *l)
            .count();
        assert_eq!(learned, 1);
        assert_eq!(std::fs::read_to_string(&known).unwrap(), sshd.known_line());
        let mode = std::fs::metadata(&known).unwrap().permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
            0o600
        );

        let strict = options(&known, HostKeyPolicy::Strict);
        let s = connect(&t, &auths, &strict).await.unwrap();
        assert!(!s.host_key.learned);
        assert_eq!(s.host_key.fingerprint, sshd.fingerprint());

        // Hashed entries (ssh-keygen -H, HashKnownHosts) match too.
        run(Command::new("/usr/bin/ssh-keygen").arg("-Hf").arg(&known));
        assert!(std::fs::read_to_string(&known).unwrap().starts_with("|1|"));
        connect(&t, &auths, &strict).await.unwrap();
    }

    #[tokio::test]
    async fn changed_host_key_is_refused_even_with_accept_new() {
        let sshd = Sshd::start();
        let id = sshd.client_key("id", "");
        let other = sshd.dir.path().join("other_host");
        keygen(&other, "");
        let other_pub = std::fs::read_to_string(other.with_extension("pub")).unwrap();
        let known = sshd.dir.path().join("known_hosts");
        std::fs::write(
            &known,
            format!(
                "# comment\nexample.org {other_pub}[127.0.0.1]:{} {other_pub}",
                sshd.port
            ),
        )
        .unwrap();
        for policy in [HostKeyPolicy::AcceptNew, HostKeyPolicy::Strict] {
            let err = connect(&sshd.target(), &[key(&id, None)], &options(&known, policy))
                .await
                .err()
                .unwrap();
            match &err {
                SshError::HostKeyChanged {
                    line, fingerprint, ..
                } => {
                    assert_eq!(*line, 3);
                    assert_eq!(*fingerprint, sshd.fingerprint());
                }
                other => panic!("{other}"),
            }
            assert!(!err.is_transient());
            assert!(err.to_string().contains("line 3"), "{err}");
        }
        assert_eq!(std::fs::read_to_string(&known).unwrap().lines().count(), 3);
    }

    #[tokio::test]
    async fn refused_connection_is_transient() {
        let port = free_port();
        let t = Target {
            host: "127.0.0.1".into(),
            port,
            user: "root".into(),
        };
        let dir = tempfile::tempdir().unwrap();
        let opts = options(&dir.path().join("kh"), HostKeyPolicy::Strict);
        let err = connect(&t, &[], &opts).await.err().unwrap();
        assert_eq!(err.kind(), "connect");
        assert!(err.is_transient());
        assert_eq!(
            err.to_string(),
            format!("127.0.0.1:{port}: connection refused: is sshd running and the address right?")
        );
    }

    #[tokio::test]
    async fn silent_server_hits_the_connect_timeout() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let t = Target {
            host: "127.0.0.1".into(),
            port,
            user: "root".into(),
        };
        let dir = tempfile::tempdir().unwrap();
        let mut opts = options(&dir.path().join("kh"), HostKeyPolicy::Strict);
        opts.connect_timeout = Duration::from_millis(300);
        let err = connect(&t, &[], &opts).await.err().unwrap();
        assert_eq!(err.kind(), "connect_timeout");
        assert!(err.is_transient());
        drop(listener);
    }

    #[tokio::test]
    async fn jump_host() {
        let hop = Sshd::start();
        let node = Sshd::start();
        let hop_id = hop.client_key("id", "");
        let node_id = node.client_key("id", "");
        let known = hop.dir.path().join("known_hosts");
        std::fs::write(&known, node.known_line()).unwrap();
        let mut opts = options(&known, HostKeyPolicy::Strict);
        opts.jump = Some(Hop {
            target: hop.target(),
            auths: vec![key(&hop_id, None)],
        });
        // The hop is checked against the same file and policy.
        let err = connect(&node.target(), &[key(&node_id, None)], &opts)
            .await
            .err()
            .unwrap();
        assert!(matches!(err, SshError::Jump { .. }), "{err}");
        assert_eq!(err.kind(), "host_key_unknown");
        assert!(err.to_string().starts_with("jump host 127.0.0.1:"), "{err}");

        opts.policy = HostKeyPolicy::AcceptNew;
        let s = connect(&node.target(), &[key(&node_id, None)], &opts)
            .await
            .unwrap_or_else(|e| panic!("{e}\n{}", hop.log()));
        assert!(s.jump.as_ref().unwrap().host_key.learned);
        assert!(!s.host_key.learned);
        assert_eq!(s.host_key.fingerprint, node.fingerprint());
        let (status, out) = exec(&s, "echo via; echo $SSH_CONNECTION", None).await;
        assert_eq!(status, ExitStatus::Code(0));
        // The node sees the connection coming from the hop's sshd.
        assert!(out.starts_with("via\n127.0.0.1 "), "{out}");
        s.close().await;

        // The hop is up but the node is not: a transient failure of the node.
        let mut gone = node.target();
        gone.port = free_port();
        let err = connect(&gone, &[key(&node_id, None)], &opts)
            .await
            .err()
            .unwrap();
        assert_eq!(err.kind(), "connect", "{err}");
        assert!(err.is_transient());
        assert!(err.to_string().starts_with(&gone.addr()), "{err}");
    }

    #[test]
    fn transient_and_kind_see_through_jump() {
        let inner = SshError::Disconnected {
            addr: "10.0.0.1:22".into(),
            reason: "reset".into(),
        };
        let e = SshError::Jump {
            hop: "10.0.0.1:22".into(),
            source: Box::new(inner),
        };
        assert!(e.is_transient());
        assert_eq!(e.kind(), "disconnected");
        assert!(!e.to_string().contains('\n'));
    }
}
