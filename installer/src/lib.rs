//! edgeferry, the isolated side, as a library: `main.rs` parses the
//! command line and maps results to exit codes; everything else is here.
//! ARCHITECTURE.md draws the map and lists the rules the layers keep.

pub mod cli;
pub mod config;
pub mod diff;
pub mod input;
pub mod inspect;
pub mod join;
pub mod load;
pub mod mirror;
pub mod node;
pub mod nodeupgradejob;
pub mod output;
pub mod printer;
pub mod pull;
pub mod serve;
pub mod status;
pub mod store;
pub mod sync;
pub mod sys;
pub mod tls;
