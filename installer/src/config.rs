//! Every default limit in one place.

use std::time::Duration;

/// Defaults for the installer's bounded work. Commands take their values
/// from here; flags override individual fields.
#[derive(Clone, Debug)]
pub struct Config {
    /// Free space a load keeps in hand beyond what it writes.
    pub load_space_margin_bytes: u64,
    /// Mirror: connections served at once; more wait in the listen backlog.
    pub max_connections: usize,
    /// Mirror: a client must send its request headers within this.
    pub header_read_timeout: Duration,
    /// Mirror: a connection with no byte moving either way is closed. There
    /// is no whole-request timeout: multi-GB downloads must finish.
    pub idle_timeout: Duration,
    /// Mirror: on SIGINT/SIGTERM, transfers in flight get this long.
    pub shutdown_grace: Duration,
    /// Mirror: how often it looks for a store swapped in by a load.
    pub state_reload_interval: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            load_space_margin_bytes: 64 << 20,
            max_connections: 4096,
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            shutdown_grace: Duration::from_secs(10),
            state_reload_interval: Duration::from_secs(2),
        }
    }
}
