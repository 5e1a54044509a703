//! `edgeferry`: the isolated side. Parses the command line, runs the
//! command from the library, and turns the result into an exit code (one
//! per failure class; `--help` lists them).

use std::process::ExitCode;

use clap::Parser;
use edgeferry::cli::{Cli, Command, EnrollCommand, StoreCommand};
use edgeferry::config::Config;
use edgeferry::input::InputError;
use edgeferry::join::report::EXIT_NOTHING_STARTED;
use edgeferry::output;
use edgeferry::printer::Printer;
use edgeferry::{diff, inspect, join, load, pull, serve, status, sync};
use edgeferry_bundle::verify::{Class, VerifyError};

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // For join and reset, 2 means "some nodes failed"; a bad
            // command line means nothing could start.
            let command = std::env::args().skip(1).find(|a| !a.starts_with('-'));
            let batch = matches!(command.as_deref(), Some("join" | "reset" | "upgrade"));
            if batch && e.use_stderr() {
                let _ = e.print();
                return ExitCode::from(EXIT_NOTHING_STARTED);
            }
            e.exit()
        }
    };
    let config = Config::default();
    let json = match &cli.command {
        Command::Verify(a) => a.source.json,
        Command::Load(a) => a.source.json,
        Command::Diff(a) => a.json,
        Command::Inspect(a) => a.source.json,
        Command::Store(StoreCommand::Inventory(a)) => a.json,
        Command::Store(StoreCommand::List { json, .. }) => *json,
        Command::Store(StoreCommand::Check(a)) => a.json,
        Command::Enroll(EnrollCommand::Create { json, .. } | EnrollCommand::List { json, .. }) => {
            *json
        }
        Command::Status(a) => a.json,
        Command::Sync(a) => a.json,
        Command::Join(a) => a.batch.json,
        Command::Reset(a) => a.json,
        Command::Upgrade(a) => a.batch.json,
        Command::Serve(_) | Command::Enroll(_) => false,
    };
    let out = Printer::new(json, cli.quiet);
    match &cli.command {
        Command::Join(args) => return batch_exit(join::join_cmd(args, &config, &out), &out),
        Command::Reset(args) => return batch_exit(join::reset_cmd(args, &config, &out), &out),
        Command::Upgrade(args) => return batch_exit(join::upgrade_cmd(args, &config, &out), &out),
        _ => {}
    }
    let result = match &cli.command {
        Command::Store(StoreCommand::Check(args)) => {
            load::store_check(args, &config, &out).map(|intact| intact.then_some(()))
        }
        _ => run(cli.command, config, &out).map(Some),
    };
    match result {
        Ok(Some(())) => ExitCode::SUCCESS,
        // store check found damage: the report says what; integrity's code.
        Ok(None) => ExitCode::from(exit_code(Some(Class::Integrity))),
        Err(err) => {
            let class = classify(&err);
            let message = format!("{err:#}");
            if json {
                let _ = out.data_line(&output::Failed {
                    ok: false,
                    class,
                    error: message.clone(),
                });
            }
            out.warn(&format!("error: {message}"));
            ExitCode::from(exit_code(class))
        }
    }
}

/// join/reset/upgrade: the report decides the code; an error before any node
/// started is exit 3.
fn batch_exit(result: anyhow::Result<u8>, out: &Printer) -> ExitCode {
    match result {
        Ok(code) => ExitCode::from(code),
        Err(err) => {
            let message = format!("{err:#}");
            if out.json() {
                let _ = out.data_line(&output::BatchFailed {
                    ok: false,
                    error: message.clone(),
                });
            }
            out.warn(&format!("error: {message}"));
            ExitCode::from(EXIT_NOTHING_STARTED)
        }
    }
}

fn classify(err: &anyhow::Error) -> Option<Class> {
    // A full disk is the "not enough space" refusal, wherever it struck.
    if edgeferry::store::is_no_space(err) {
        return Some(Class::Policy);
    }
    err.chain().find_map(|cause| {
        if let Some(v) = cause.downcast_ref::<VerifyError>() {
            return Some(v.class());
        }
        cause.downcast_ref::<InputError>().map(|i| i.class)
    })
}

fn exit_code(class: Option<Class>) -> u8 {
    match class {
        None | Some(Class::Io) => 1,
        Some(Class::Signature) => 3,
        Some(Class::Integrity) => 4,
        Some(Class::Policy) => 5,
    }
}

fn run(command: Command, config: Config, out: &Printer) -> anyhow::Result<()> {
    match command {
        Command::Verify(args) => load::verify_cmd(&args.source, out),
        Command::Load(args) => load::load_cmd(&args, &config, out),
        Command::Diff(args) => diff::diff_cmd(&args, out),
        Command::Inspect(args) => inspect::inspect_cmd(&args.source, out),
        Command::Store(StoreCommand::Inventory(args)) => load::store_inventory(&args, out),
        Command::Store(StoreCommand::List { store, .. }) => load::store_list(&store, out),
        Command::Store(StoreCommand::Check(_)) => unreachable!("handled in main"),
        Command::Join(_) | Command::Reset(_) | Command::Upgrade(_) => {
            unreachable!("handled in main")
        }
        Command::Enroll(command) => pull::command::enroll_cmd(command, out),
        Command::Status(args) => status::run(&args, out),
        Command::Sync(args) => sync::sync_cmd(&args, &config, out),
        Command::Serve(args) => {
            let mut config = config;
            if let Some(n) = args.max_connections {
                config.max_connections = n.max(1);
            }
            if let Some(n) = args.max_connections_per_client {
                config.max_connections_per_client = n.max(1);
            }
            if let Some(secs) = args.idle_timeout {
                config.idle_timeout = std::time::Duration::from_secs(secs.max(1));
            }
            serve::serve(
                serve::ServeOptions {
                    store: args.store,
                    listen: args.listen,
                    advertise: args.advertise,
                    peers: args.peer_mirror,
                    node_mirror: args.node_mirror,
                    access_log: args.access_log,
                    site_dir: args.site_dir,
                    tls: match (args.plain_http, args.tls_cert, args.tls_key) {
                        (true, _, _) => serve::TlsChoice::Plain,
                        (false, Some(cert), Some(key)) => serve::TlsChoice::Files {
                            cert,
                            key,
                            ca: args.tls_ca,
                        },
                        _ => serve::TlsChoice::Site {
                            names: args.tls_name,
                        },
                    },
                },
                &config,
                out,
            )
        }
    }
}
