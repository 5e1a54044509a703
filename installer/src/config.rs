//! Every default limit in one place.

use std::time::Duration;

/// A delta refused for lack of its base names this many of the missing
/// digests (and how many there are in all).
pub const MAX_MISSING_DIGESTS_SHOWN: usize = 8;

/// Defaults for the installer's bounded work. Commands take their values
/// from here; flags override individual fields.
#[derive(Clone, Debug)]
pub struct Config {
    /// Free space a load keeps in hand beyond what it writes.
    pub load_space_margin_bytes: u64,
    /// Mirror: connections served at once; more wait in the listen backlog.
    pub max_connections: usize,
    /// Mirror: connections served at once from one source address, so one
    /// client (a slowloris, a runaway script) cannot hold the whole cap;
    /// more from that address are answered 503 and closed.
    pub max_connections_per_client: usize,
    /// Mirror: a client must send its request headers within this.
    pub header_read_timeout: Duration,
    /// Mirror over TLS: a client must send its first byte within this, and
    /// then finish the TLS handshake within it again, or it is dropped.
    pub tls_handshake_timeout: Duration,
    /// Mirror: a connection with no byte moving either way is closed. There
    /// is no whole-request timeout: multi-GB downloads must finish.
    pub idle_timeout: Duration,
    /// Mirror: on SIGINT/SIGTERM, transfers in flight get this long.
    pub shutdown_grace: Duration,
    /// Mirror: how often it looks for a store swapped in by a load.
    pub state_reload_interval: Duration,
    /// Mirror: kernel send buffer per connection. Loopback autotuning grows
    /// it to megabytes, and then one poll of a blob transfer copies
    /// megabytes while small manifest requests wait their turn; a bounded
    /// buffer keeps each poll short.
    pub send_buffer_bytes: usize,
    /// Mirror: task polls between checks for newly readable sockets (tokio
    /// defaults to 61), so a manifest request is noticed between blob polls.
    pub io_event_interval: u32,
    /// Mirror: async worker threads. More than the core count, so one
    /// worker busy copying a blob does not hold up the connections queued
    /// on it, and the mirror keeps its share of CPU beside busy clients.
    pub mirror_workers: usize,
    /// `edgeferry join` and `reset`.
    pub join: JoinConfig,
    /// Pull mode's `/v1/enroll` and `/v1/report`.
    pub pull: PullConfig,
    /// `edgeferry sync` from an upstream mirror.
    pub sync: SyncConfig,
}

/// Bounds on what an upstream mirror can make `sync` wait for or read. A
/// blob's bytes are capped by its signed size, a manifest and its
/// signature by the bundle format's own limits.
#[derive(Clone, Debug)]
pub struct SyncConfig {
    /// Name resolution and TCP (and TLS) connect.
    pub connect_timeout: Duration,
    /// Sending a request and receiving the response head.
    pub response_timeout: Duration,
    /// No byte arriving for this long breaks the transfer (then retried
    /// with Range); there is no whole-transfer timeout, so large blobs on
    /// slow links finish.
    pub idle_timeout: Duration,
    /// Tries per request while no byte arrives; progress resets the count.
    pub attempts: u32,
    /// The `/v1/bundles/` index.
    pub max_index_bytes: u64,
    /// Bundles the index may list.
    pub max_bundles: usize,
}

impl Default for SyncConfig {
    fn default() -> Self {
        SyncConfig {
            connect_timeout: Duration::from_secs(10),
            response_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(30),
            attempts: 3,
            max_index_bytes: 4 << 20,
            max_bundles: 1024,
        }
    }
}

/// Bounds on what LAN clients and enrolled nodes may make the mirror do.
#[derive(Clone, Debug)]
pub struct PullConfig {
    /// Refused enrollments and reports (bad code, bad key) one client
    /// address may make at once; then it gets 429 until the bucket refills.
    pub refused_burst: u32,
    /// One more refused request is allowed per this interval.
    pub refused_refill: Duration,
    /// Client addresses and nodes whose buckets are kept; beyond it the
    /// least recently seen is forgotten, so memory stays bounded.
    pub max_tracked: usize,
    /// Reports one node may send at once (a join sends two per step).
    pub report_burst: u32,
    /// One more report per node is allowed per this interval.
    pub report_refill: Duration,
    /// `reports.jsonl` keeps each node's latest report and this many of
    /// the most recent ones; it is rewritten to that when it grows past
    /// it by as many again.
    pub report_history: usize,
}

impl Default for PullConfig {
    fn default() -> Self {
        PullConfig {
            refused_burst: 20,
            refused_refill: Duration::from_secs(3),
            max_tracked: 4096,
            report_burst: 64,
            report_refill: Duration::from_secs(1),
            report_history: 1000,
        }
    }
}

/// Defaults for joins: fan-out caps, retries and a timeout for every step.
/// The inventory's `timeouts:` and `--parallel` override them.
#[derive(Clone, Debug)]
pub struct JoinConfig {
    /// Nodes worked on at once (keadm batch: 5).
    pub parallel: usize,
    /// Upper bound on `--parallel`: each active node holds an SSH session.
    pub max_parallel: usize,
    /// The TCP connect alone: a host that does not answer gives its slot
    /// back this soon and waits at the back of the queue for its next
    /// attempt.
    pub dial_timeout: Duration,
    /// TCP connect + SSH handshake + authentication.
    pub connect_timeout: Duration,
    /// Connection attempts for transient network errors (refused, timed
    /// out, reset); auth and host-key failures are never retried. Each
    /// retry waits at the back of the queue, not in a slot.
    pub connect_attempts: u32,
    /// The least wait before the second attempt; doubles after each.
    pub retry_backoff: Duration,
    pub preflight_timeout: Duration,
    pub containerd_timeout: Duration,
    /// A keadm tarball over the LAN, or over SSH when the node has no curl.
    pub fetch_timeout: Duration,
    /// keadm itself waits up to 300 s for edgecore's certificates.
    pub keadm_join_timeout: Duration,
    /// The postcheck's own work; the settle time and the connect grace
    /// are added to it.
    pub postcheck_timeout: Duration,
    /// How long edgecore must keep running (and stay connected to the hub)
    /// after keadm reports success: real edgecore without a cloud to
    /// register with exits about 17 s after connecting. `--settle`.
    pub postcheck_settle: Duration,
    /// After the settle time, how long the postcheck waits for an edgecore
    /// that is running but not yet connected to the hub.
    pub postcheck_connect_grace: Duration,
    /// `--verify-node-ready`: how long the Node may take to become Ready in
    /// the cloud's API after the postcheck passed.
    pub node_ready_timeout: Duration,
    /// `--verify-node-ready`: one request to the API server.
    pub node_ready_request_timeout: Duration,
    pub keadm_reset_timeout: Duration,
    /// `edgeferry upgrade`: edgecore's version, state and disk.
    pub upgrade_preflight_timeout: Duration,
    /// `keadm backup edge`: copies the config and the edgecore binary.
    pub keadm_backup_timeout: Duration,
    /// `keadm upgrade edge`: pulls the installation-package through the
    /// node's CRI and restarts edgecore.
    pub keadm_upgrade_timeout: Duration,
    /// `keadm rollback edge`: restores the backup and restarts edgecore.
    pub keadm_rollback_timeout: Duration,
    /// Free space a node needs under /var/lib.
    pub min_free_mib: u64,
    /// Output kept per step for the log; more is cut (keadm prints little).
    pub max_step_output: usize,
}

impl Default for JoinConfig {
    fn default() -> Self {
        JoinConfig {
            parallel: 20,
            max_parallel: 1000,
            dial_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(15),
            connect_attempts: 3,
            retry_backoff: Duration::from_secs(1),
            preflight_timeout: Duration::from_secs(60),
            containerd_timeout: Duration::from_secs(60),
            fetch_timeout: Duration::from_secs(600),
            keadm_join_timeout: Duration::from_secs(420),
            postcheck_timeout: Duration::from_secs(60),
            postcheck_settle: Duration::from_secs(20),
            postcheck_connect_grace: Duration::from_secs(30),
            node_ready_timeout: Duration::from_secs(120),
            node_ready_request_timeout: Duration::from_secs(10),
            keadm_reset_timeout: Duration::from_secs(180),
            upgrade_preflight_timeout: Duration::from_secs(60),
            keadm_backup_timeout: Duration::from_secs(120),
            keadm_upgrade_timeout: Duration::from_secs(600),
            keadm_rollback_timeout: Duration::from_secs(300),
            min_free_mib: 512,
            max_step_output: 1 << 20,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            load_space_margin_bytes: 64 << 20,
            max_connections: 4096,
            max_connections_per_client: 64,
            header_read_timeout: Duration::from_secs(10),
            tls_handshake_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            shutdown_grace: Duration::from_secs(10),
            state_reload_interval: Duration::from_secs(2),
            send_buffer_bytes: 128 * 1024,
            io_event_interval: 2,
            mirror_workers: 8,
            join: JoinConfig::default(),
            pull: PullConfig::default(),
            sync: SyncConfig::default(),
        }
    }
}
