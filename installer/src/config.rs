//! Every default limit in one place.

/// Defaults for the installer's bounded work. Commands take their values
/// from here; flags override individual fields.
#[derive(Clone, Debug)]
pub struct Config {
    /// Free space a load keeps in hand beyond what it writes.
    pub load_space_margin_bytes: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            load_space_margin_bytes: 64 << 20,
        }
    }
}
