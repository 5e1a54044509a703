//! `edgeferry`: the isolated side. Verifies bundles, loads them into a
//! store, serves the store on the site LAN, and joins edge nodes.

mod config;
mod input;
mod join;
mod mirror;
mod pull;
mod status;
mod store;
mod sys;

use std::io::{IsTerminal, Read};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use edgeferry_bundle::sign::TrustedKeys;
use edgeferry_bundle::verify::{self, CheckOnly, Class, Trust, VerifyError};

use crate::config::Config;

const EXAMPLES: &str = "\
Examples:
  # Check a bundle (and its .minisig beside it) without writing anything
  edgeferry verify /media/usb/edgeferry-kubeedge-v1.23.1-linux-arm64.tar.zst --key edgeferry.pub

  # Verify and load in one pass; several bundles merge into one store
  edgeferry load /media/usb/edgeferry-kubeedge-v1.23.1-linux-arm64.tar.zst --key edgeferry.pub --store /srv/edgeferry
  edgeferry load /media/usb/ --key edgeferry.pub --store /srv/edgeferry     # a directory of volumes

  edgeferry store list --store /srv/edgeferry

Exit codes:
  0  success
  1  any other failure (I/O, a damaged store, a lock held by another load)
  2  bad command line
  3  signature: unsigned, unknown key, bad signature, swapped manifest, missing .minisig
  4  integrity: corrupt, truncated, tampered or unsafe content, bad or missing volume
  5  refused by policy: an older sequence (downgrade), not enough space";

#[derive(Parser)]
#[command(
    name = "edgeferry",
    version,
    about = "Put KubeEdge edge nodes on sites with no internet: verify, load, serve, join",
    after_help = EXAMPLES,
    arg_required_else_help = true
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check a bundle's signatures and every entry, in one pass; write nothing
    #[command(after_help = EXAMPLES)]
    Verify(VerifyArgs),
    /// Verify a bundle and load it into a store, atomically
    #[command(after_help = EXAMPLES)]
    Load(LoadArgs),
    /// Look at a store
    #[command(subcommand)]
    Store(StoreCommand),
    /// Serve a store on the LAN: release files and a read-only OCI registry
    #[command(after_help = SERVE_EXAMPLES)]
    Serve(ServeArgs),
    /// Join edge nodes over SSH from the mirror: verifiably, in parallel, resumably
    #[command(after_help = join::JOIN_EXAMPLES)]
    Join(join::JoinArgs),
    /// Run `keadm reset edge --force` on the nodes of an inventory
    #[command(after_help = join::RESET_EXAMPLES)]
    Reset(join::BatchArgs),
    /// Pull mode: enrollment codes for nodes that join themselves via /join.sh
    #[command(subcommand, after_help = ENROLL_EXAMPLES)]
    Enroll(EnrollCommand),
    /// One table of every node: SSH joins (journals) and pull-mode joins (reports)
    #[command(after_help = STATUS_EXAMPLES)]
    Status(status::StatusArgs),
}

const ENROLL_EXAMPLES: &str = "\
Examples:
  # The site's parameters (cloudcore, token source, keadm flags; docs/inventory.md)
  cat /srv/site/site.yaml
  edgeferry serve --store /srv/edgeferry --listen 10.0.0.5:5000 --site-dir /srv/site
  edgeferry enroll create --site-dir /srv/site --uses 50 --expires 24h
  edgeferry enroll create --site-dir /srv/site --names edge-berlin-1,edge-berlin-2 --uses 2
  edgeferry enroll list --site-dir /srv/site
  edgeferry enroll revoke --site-dir /srv/site 3f2a9c1d

Codes are shown once and stored as sha256 only. A node runs the one-liner
`serve` prints (download /join.sh, check its sha256, run it with the code);
the mirror answers a valid code with the site's keadm parameters, token
included, and refuses anything else with 403.";

const STATUS_EXAMPLES: &str = "\
Examples:
  edgeferry status --site-dir /srv/site --state-dir /srv/edgeferry-site-a
  edgeferry status --site-dir /srv/site --watch
  edgeferry status --state-dir /srv/edgeferry-site-a --json";

#[derive(Subcommand)]
enum EnrollCommand {
    /// Create a code (printed once)
    Create {
        #[arg(long, env = "EDGEFERRY_SITE_DIR")]
        site_dir: PathBuf,
        /// How many nodes may enroll with it
        #[arg(long, default_value_t = 1)]
        uses: u32,
        /// Lifetime: 90s, 10m, 24h, 7d
        #[arg(long, default_value = "24h")]
        expires: String,
        /// Node names to hand out, in order, one per use
        #[arg(long, value_delimiter = ',')]
        names: Vec<String>,
        #[arg(long)]
        json: bool,
    },
    /// Codes (without their values) and enrolled nodes
    List {
        #[arg(long, env = "EDGEFERRY_SITE_DIR")]
        site_dir: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Revoke a code by id; nodes already enrolled keep their report keys
    Revoke {
        #[arg(long, env = "EDGEFERRY_SITE_DIR")]
        site_dir: PathBuf,
        id: String,
    },
}

const SERVE_EXAMPLES: &str = "\
Examples:
  edgeferry serve --store /srv/edgeferry --listen 10.0.0.5:5000
  edgeferry serve --store /srv/edgeferry --listen 0.0.0.0:5000 --advertise 10.0.0.5:5000 --access-log /var/log/edgeferry.jsonl

On start it prints the containerd hosts.toml files and keadm flags nodes need.
Access log: one JSON line per request (client, method, path, status, bytes,
duration_ms) on stdout, or appended to --access-log. Stops on SIGINT/SIGTERM,
letting transfers in flight finish.";

#[derive(Args)]
struct ServeArgs {
    #[arg(long, env = "EDGEFERRY_STORE")]
    store: PathBuf,
    /// Address and port to listen on
    #[arg(long, default_value = "127.0.0.1:5000")]
    listen: std::net::SocketAddr,
    /// host:port the nodes reach this mirror at, for the printed settings
    #[arg(long)]
    advertise: Option<String>,
    /// Append the JSON-lines access log here instead of stdout
    #[arg(long)]
    access_log: Option<PathBuf>,
    /// Connections served at once
    #[arg(long)]
    max_connections: Option<usize>,
    /// Seconds without a byte moving before a connection is closed
    #[arg(long)]
    idle_timeout: Option<u64>,
    /// Pull mode: a directory holding site.yaml; serves /join.sh and takes
    /// enrollments and reports (see `edgeferry enroll --help`)
    #[arg(long, env = "EDGEFERRY_SITE_DIR")]
    site_dir: Option<PathBuf>,
}

#[derive(Args)]
struct SourceArgs {
    /// A bundle file, a volume list (*.volumes.json), a directory holding
    /// one of them, or - for standard input (then --signature is needed)
    bundle: PathBuf,
    /// A trusted minisign public key (repeatable)
    #[arg(long = "key", value_name = "PUB")]
    keys: Vec<PathBuf>,
    /// A file of trusted public keys, one minisign key per two lines
    #[arg(long, env = "EDGEFERRY_TRUST_FILE")]
    trust_file: Option<PathBuf>,
    /// The bundle's whole-file signature, if not <bundle>.minisig
    #[arg(long, value_name = "MINISIG")]
    signature: Option<PathBuf>,
    /// Accept an unsigned bundle or one from an unknown key (DANGEROUS)
    #[arg(long)]
    insecure_skip_signature: bool,
    /// Machine-readable result on stdout
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct VerifyArgs {
    #[command(flatten)]
    source: SourceArgs,
}

#[derive(Args)]
struct LoadArgs {
    #[command(flatten)]
    source: SourceArgs,
    /// The store directory (created on first load)
    #[arg(long, env = "EDGEFERRY_STORE")]
    store: PathBuf,
    /// Load a bundle older than one already loaded from the same key
    #[arg(long)]
    allow_downgrade: bool,
    /// Do not wait for the data to reach the disk before publishing it
    /// (faster; a power cut right after can corrupt the store)
    #[arg(long)]
    no_sync: bool,
}

#[derive(Subcommand)]
enum StoreCommand {
    /// Versions, arches, images, files and bundle ids in a store
    List {
        #[arg(long, env = "EDGEFERRY_STORE")]
        store: PathBuf,
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // For join and reset, 2 means "some nodes failed"; a bad
            // command line means nothing could start.
            let batch = matches!(std::env::args().nth(1).as_deref(), Some("join" | "reset"));
            if batch && e.use_stderr() {
                let _ = e.print();
                return ExitCode::from(join::report::EXIT_NOTHING_STARTED);
            }
            e.exit()
        }
    };
    let config = Config::default();
    match &cli.command {
        Command::Join(args) => return batch_exit(join::join_cmd(args, &config), args.batch.json),
        Command::Reset(args) => return batch_exit(join::reset_cmd(args, &config), args.json),
        _ => {}
    }
    let json = match &cli.command {
        Command::Verify(a) => a.source.json,
        Command::Load(a) => a.source.json,
        Command::Store(StoreCommand::List { json, .. }) => *json,
        Command::Enroll(EnrollCommand::Create { json, .. } | EnrollCommand::List { json, .. }) => {
            *json
        }
        Command::Status(a) => a.json,
        Command::Serve(_) | Command::Join(_) | Command::Reset(_) | Command::Enroll(_) => false,
    };
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            let class = classify(&err);
            let message = format!("{err:#}");
            if json {
                println!(
                    "{}",
                    serde_json::json!({"ok": false, "class": class, "error": message})
                );
            }
            eprintln!("error: {message}");
            ExitCode::from(exit_code(class))
        }
    }
}

/// join/reset: the report decides the code; an error before any node
/// started is exit 3.
fn batch_exit(result: Result<u8>, json: bool) -> ExitCode {
    match result {
        Ok(code) => ExitCode::from(code),
        Err(err) => {
            let message = format!("{err:#}");
            if json {
                println!("{}", serde_json::json!({"ok": false, "error": message}));
            }
            eprintln!("error: {message}");
            ExitCode::from(join::report::EXIT_NOTHING_STARTED)
        }
    }
}

fn classify(err: &anyhow::Error) -> Option<Class> {
    err.chain().find_map(|cause| {
        if let Some(v) = cause.downcast_ref::<VerifyError>() {
            return Some(v.class());
        }
        cause.downcast_ref::<input::InputError>().map(|i| i.class)
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

fn run(cli: Cli) -> Result<()> {
    let config = Config::default();
    match cli.command {
        Command::Verify(args) => verify_cmd(&args.source),
        Command::Load(args) => load_cmd(&args, &config),
        Command::Store(StoreCommand::List { store, json }) => store_list(&store, json),
        Command::Join(_) | Command::Reset(_) => unreachable!("handled in main"),
        Command::Enroll(command) => enroll_cmd(command),
        Command::Status(args) => status::run(&args),
        Command::Serve(args) => {
            let mut config = config;
            if let Some(n) = args.max_connections {
                config.max_connections = n.max(1);
            }
            if let Some(secs) = args.idle_timeout {
                config.idle_timeout = std::time::Duration::from_secs(secs.max(1));
            }
            mirror::serve(
                mirror::ServeOptions {
                    store: args.store,
                    listen: args.listen,
                    advertise: args.advertise,
                    access_log: args.access_log,
                    site_dir: args.site_dir,
                },
                &config,
            )
        }
    }
}

fn trusted_keys(source: &SourceArgs) -> Result<Option<TrustedKeys>> {
    if source.insecure_skip_signature {
        eprintln!("WARNING: --insecure-skip-signature: nobody vouches for this bundle; anyone could have made it");
        return Ok(None);
    }
    let mut files = source.keys.clone();
    files.extend(source.trust_file.clone());
    if files.is_empty() {
        anyhow::bail!("no trusted key: pass --key <edgeferry.pub> or --trust-file <file>");
    }
    Ok(Some(TrustedKeys::from_files(&files)?))
}

/// Opens the input and runs the single verifying pass into `sink`.
fn verify_into(source: &SourceArgs, sink: &mut dyn verify::Sink) -> Result<verify::Outcome> {
    let keys = trusted_keys(source)?;
    let opened = input::open(&source.bundle, keys.as_ref(), source.signature.as_deref())?;
    let reader: Box<dyn Read + Send> = if !source.json && std::io::stderr().is_terminal() {
        let bar = indicatif::ProgressBar::new(opened.size.unwrap_or(0)).with_style(
            indicatif::ProgressStyle::with_template(
                "verifying [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
            )
            .expect("static template")
            .progress_chars("=> "),
        );
        Box::new(bar.wrap_read(opened.reader))
    } else {
        opened.reader
    };
    let trust = match &keys {
        Some(keys) => Trust::Keys(keys),
        None => Trust::SkipSignature,
    };
    verify::verify(reader, trust, opened.file_signature.as_deref(), sink)
        .map_err(anyhow::Error::from)
        .with_context(|| format!("{} refused", opened.label))
}

fn verify_cmd(source: &SourceArgs) -> Result<()> {
    let outcome = verify_into(source, &mut CheckOnly)?;
    let m = &outcome.manifest;
    if source.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "ok": true,
                "bundle_id": m.bundle_id,
                "kubeedge_version": m.kubeedge_version,
                "arch": m.arch,
                "sequence": m.sequence,
                "created": m.created,
                "sample": m.sample,
                "signer": outcome.signer.as_ref().map(|s| &s.key_id),
                "entries": m.entries.len(),
                "bytes": outcome.bytes_in,
            }))?
        );
    } else {
        let signer = outcome
            .signer
            .as_ref()
            .map_or("NOBODY (signature skipped)".to_string(), |s| {
                format!("key {}", s.key_id)
            });
        let sample = if m.sample {
            " SAMPLE (stand-ins, not KubeEdge)"
        } else {
            ""
        };
        println!(
            "ok: bundle {} KubeEdge {} linux/{} sequence {}{sample}, signed by {signer}; {} entries checked",
            m.bundle_id,
            m.kubeedge_version,
            m.arch,
            m.sequence,
            m.entries.len()
        );
    }
    Ok(())
}

fn load_cmd(args: &LoadArgs, config: &Config) -> Result<()> {
    let mut loader = store::Loader::new(
        &args.store,
        config,
        store::LoadOptions {
            allow_downgrade: args.allow_downgrade,
            no_sync: args.no_sync,
        },
    )?;
    let outcome = verify_into(&args.source, &mut loader)?;
    let report = loader.commit(&outcome.manifest, outcome.signer.as_ref())?;
    let m = &outcome.manifest;
    if args.source.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "ok": true,
                "store": args.store,
                "bundle_id": m.bundle_id,
                "kubeedge_version": m.kubeedge_version,
                "arch": m.arch,
                "sequence": m.sequence,
                "changed": report.changed,
                "new_blobs": report.new_blobs,
                "new_bytes": report.new_bytes,
            }))?
        );
    } else if report.changed {
        println!(
            "loaded bundle {} (KubeEdge {} linux/{}) into {}: {} new blobs, {} bytes",
            m.bundle_id,
            m.kubeedge_version,
            m.arch,
            args.store.display(),
            report.new_blobs,
            report.new_bytes
        );
    } else {
        println!(
            "bundle {} is already in {}: nothing changed",
            m.bundle_id,
            args.store.display()
        );
    }
    Ok(())
}

fn store_list(store_dir: &std::path::Path, json: bool) -> Result<()> {
    if !store_dir.join(store::STATE_FILE).exists() {
        anyhow::bail!(
            "{} is not an edgeferry store: load a bundle into it first",
            store_dir.display()
        );
    }
    let state = store::State::read(store_dir)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&state)?);
        return Ok(());
    }
    println!("store {}", store_dir.display());
    println!("bundles:");
    for (id, b) in &state.bundles {
        let signer = b.signer.as_deref().unwrap_or("unsigned");
        let sample = if b.sample { "  SAMPLE" } else { "" };
        println!(
            "  {id}  KubeEdge {} linux/{}  sequence {}  key {signer}{sample}",
            b.kubeedge_version, b.arch, b.sequence
        );
    }
    println!("images:");
    for (reference, image) in &state.images {
        let platforms: Vec<&str> = image.platforms.keys().map(String::as_str).collect();
        println!(
            "  {reference}  {}  [{}]",
            image.digest,
            platforms.join(", ")
        );
    }
    println!("files:");
    for (name, file) in &state.files {
        println!("  {name}  {} bytes  sha256 {}", file.size, file.sha256);
    }
    Ok(())
}

fn enroll_cmd(command: EnrollCommand) -> Result<()> {
    use pull::enroll;
    match command {
        EnrollCommand::Create {
            site_dir,
            uses,
            expires,
            names,
            json,
        } => {
            if !site_dir.join(pull::SITE_FILE).exists() {
                anyhow::bail!(
                    "{} has no {}: write the site's parameters there first (docs/inventory.md)",
                    site_dir.display(),
                    pull::SITE_FILE
                );
            }
            let ttl = enroll::parse_duration(&expires)?;
            let new = enroll::create(&site_dir, uses, ttl, names)?;
            let expires_at = edgeferry_bundle::format::rfc3339_utc(new.record.expires);
            if json {
                println!(
                    "{}",
                    serde_json::json!({"id": new.id, "code": new.code, "uses": uses, "expires": expires_at, "names": new.record.names})
                );
            } else {
                println!("code: {}", new.code);
                println!("id: {}", new.id);
                eprintln!("{uses} use(s), expires {expires_at}; shown once, stored hashed. Revoke with: edgeferry enroll revoke --site-dir {} {}", site_dir.display(), new.id);
            }
            Ok(())
        }
        EnrollCommand::List { site_dir, json } => {
            let data = enroll::read(&site_dir)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&data)?);
                return Ok(());
            }
            println!("codes:");
            for c in &data.codes {
                let state = if c.revoked {
                    "revoked"
                } else if enroll::now() >= c.expires {
                    "expired"
                } else if c.uses_left == 0 {
                    "used up"
                } else {
                    "valid"
                };
                println!(
                    "  {}  {state}  {} used, {} left, expires {}",
                    c.id,
                    c.uses,
                    c.uses_left,
                    edgeferry_bundle::format::rfc3339_utc(c.expires)
                );
            }
            println!("nodes:");
            for n in &data.nodes {
                println!(
                    "  {}  hostname {}  code {}  from {}",
                    n.name, n.hostname, n.code_id, n.client
                );
            }
            Ok(())
        }
        EnrollCommand::Revoke { site_dir, id } => {
            enroll::revoke(&site_dir, &id)?;
            println!("revoked {id}");
            Ok(())
        }
    }
}
