use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    edgeferry_builder::cli::main_with(edgeferry_builder::cli::Cli::parse())
}
