//! `cargo xtask <task>`: the project's automation, in Rust, needing only
//! cargo. `bundle` and `keygen` are the builder's own command line.

mod bench;
mod bench_delta;
mod bench_hosts;
mod bench_input;
mod bench_join;
mod bench_join_scale;
mod bench_mirror;
mod bench_sync;
mod bench_upgrade;
mod bench_verify;
mod ci;
mod demo;
#[cfg(test)]
mod tidy;
mod util;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    about = "edgeferry's build, demo, test and benchmark tasks"
)]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Build a signed bundle (see `cargo xtask bundle --help`)
    Bundle(edgeferry_builder::cli::BundleArgs),
    /// Write a minisign-compatible key pair
    Keygen(edgeferry_builder::cli::KeygenArgs),
    /// Run the main job end to end on the built-in sample
    Demo,
    /// Install what the tests need, then fmt, clippy and every test
    Ci,
    /// Measure against the reference tools: `bundle`, `verify`, `mirror`, `join`, `upgrade`,
    /// `delta` or `sync` (tiered sync and mirror replicas; `upgrade` reads
    /// EDGEFERRY_BENCH_NODES, default 50)
    Bench {
        /// Which benchmark
        name: String,
        /// `join` only: the scale mode, N light hosts at --parallel 100 and 200, the growth
        /// curve below N, and the control process's cost per node
        #[arg(long, value_name = "N")]
        nodes: Option<usize>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.task {
        Task::Bundle(args) => edgeferry_builder::cli::run(edgeferry_builder::cli::Cli {
            command: edgeferry_builder::cli::Command::Bundle(args),
        }),
        Task::Keygen(args) => edgeferry_builder::cli::run(edgeferry_builder::cli::Cli {
            command: edgeferry_builder::cli::Command::Keygen(args),
        }),
        Task::Demo => demo::run(),
        Task::Ci => ci::run(),
        Task::Bench { name, nodes } => bench::run(&name, nodes),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
