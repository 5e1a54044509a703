//! One integration-test binary for the whole project, so the real
//! binaries and the host-heavy fixtures are built and set up once.

mod bundle;
mod delta;
mod diff;
mod fetch;
mod fidelity_certs;
mod fidelity_postcheck;
mod fidelity_sandbox;
mod harden_bundle;
mod harden_nodes;
mod harden_pull;
mod harden_store;
mod hosts;
mod inspect;
mod join;
mod join_queue;
mod load;
mod mirrors;
mod pull;
mod pull_upgrade;
mod sbom;
mod serve;
mod sync;
mod tls;
mod upgrade;
mod upgrade_standin;
