//! What a node is and what is run on it, for every way of reaching it:
//! SSH join and reset (`join/`), pull mode's `/join.sh` (`pull/`) and the
//! settings `serve` prints. Nothing here opens a connection.
//!
//! - `inventory`: our YAML and keadm batch config.yaml -> `NodeSpec`s
//! - `secret`: `Secret` and the redactor every log line passes through
//! - `steps`: the step table (names, order, timeouts, failure names, sh)
//! - `script`: the POSIX sh of each step
//! - `hosts`: containerd `hosts.toml` files for the mirror
//! - `offer`: what the store offers a node; keadm flag and address checks
//! - `upgrade`: the version rules of `edgeferry upgrade`

pub mod hosts;
pub mod inventory;
pub mod offer;
pub mod script;
pub mod secret;
pub mod steps;
pub mod upgrade;
