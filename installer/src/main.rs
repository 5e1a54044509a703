//! `edgeferry`: the isolated side. Verifies bundles, loads them into a
//! store, serves the store on the site LAN, and joins edge nodes.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

const EXAMPLES: &str = "\
Examples:
  edgeferry --version
  edgeferry verify edgeferry-kubeedge-v1.23.1-linux-arm64.tar.zst --key edgeferry.pub

Exit codes: 0 success, 1 failure (one line on stderr says what and what to do),
2 bad command line.";

#[derive(Parser)]
#[command(
    name = "edgeferry",
    version,
    about = "Put KubeEdge edge nodes on sites with no internet: verify, load, serve, join",
    after_help = EXAMPLES
)]
#[command(arg_required_else_help = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        None => ExitCode::SUCCESS,
        Some(command) => match command {},
    }
}
