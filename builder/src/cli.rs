//! The builder's command line, shared by `cargo xtask bundle|keygen` and
//! the `edgeferry-builder` binary.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use edgeferry_bundle::format::Arch;
use edgeferry_bundle::sign::{self, Protection, SigningKey, TrustedKeys};

use crate::build::{self, Progress, Silent};
use crate::plan::{self, Origin, Request};

const EXAMPLES: &str = "\
Examples:
  # A key pair for signing (password from EDGEFERRY_KEY_PASSWORD or a prompt)
  cargo xtask keygen --out keys/

  # Online: fetch the release assets and images by itself (cached in ~/.cache/edgeferry)
  cargo xtask bundle --arch arm64 --kubeedge-version v1.23.1 \\
      --key keys/edgeferry.key --out bundles/

  # Online through local mirrors, with credentials from a docker config.json
  cargo xtask bundle --arch arm64 --kubeedge-version v1.23.1 \\
      --registry-mirror docker.io=http://mirror.lan:5000 \\
      --release-base-url http://files.lan/kubeedge --docker-config ~/.docker/config.json \\
      --key keys/edgeferry.key --out bundles/

  # A bundle from artifacts you already have (layout: docs/artifact-dir.md)
  cargo xtask bundle --arch arm64 --kubeedge-version v1.23.1 \\
      --from artifacts/ --key keys/edgeferry.key --out bundles/

  # The built-in SAMPLE set (stand-ins for KubeEdge, for trying things out)
  cargo xtask bundle --arch amd64 --kubeedge-version v1.23.1 --sample \\
      --key keys/edgeferry.key --out bundles/

  # What would go in, without reading anything
  cargo xtask bundle --arch arm --kubeedge-version v1.22.0 --from artifacts/ --dry-run --json

  # A delta: leave out what the site already has (its `edgeferry store
  # inventory`, or the bundle it last loaded, verified with --base-key)
  cargo xtask bundle --arch arm64 --kubeedge-version v1.23.1 --from artifacts/ \
      --base site-a.inventory.json --key keys/edgeferry.key --out bundles/
  cargo xtask bundle --arch arm64 --kubeedge-version v1.23.1 --from artifacts/ \
      --base bundles/edgeferry-kubeedge-v1.22.0-linux-arm64.tar.zst --key keys/edgeferry.key --out delta/

  # What would be downloaded, with sizes (asks the servers, writes nothing)
  cargo xtask bundle --arch arm64 --kubeedge-version v1.23.1 --dry-run

Exit codes: 0 success, 1 the build failed (the message says why; nothing is
left in --out), 2 bad command line.";

#[derive(Parser, Debug)]
#[command(
    name = "edgeferry-builder",
    version,
    about = "Pack what KubeEdge edge nodes need into one signed bundle per arch",
    after_help = EXAMPLES
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Build a signed bundle for one KubeEdge version and arch
    #[command(after_help = EXAMPLES)]
    Bundle(BundleArgs),
    /// Write a minisign-compatible key pair (edgeferry.key, edgeferry.pub)
    Keygen(KeygenArgs),
    /// Write the built-in SAMPLE artifact directory (stand-ins, all arches) to look at or edit
    Sample(SampleArgs),
}

#[derive(Args, Debug)]
pub struct SampleArgs {
    /// Directory to create; it must not exist yet
    #[arg(long)]
    pub out: PathBuf,
    /// KubeEdge release the sample stands in for
    #[arg(long, default_value = "v1.23.1")]
    pub kubeedge_version: String,
}

#[derive(Args, Debug)]
pub struct BundleArgs {
    /// Target architecture (arm means 32-bit ARMv7)
    #[arg(long, value_parser = parse_arch)]
    pub arch: Arch,
    /// KubeEdge release, e.g. v1.23.1 (v1.21.x, v1.22.x and v1.23.x are covered)
    #[arg(long)]
    pub kubeedge_version: String,
    /// Local artifact directory (see docs/artifact-dir.md); without it (and
    /// without --sample) everything is fetched online
    #[arg(long, conflicts_with = "sample")]
    pub from: Option<PathBuf>,
    /// Use the built-in SAMPLE artifacts: stand-ins with the real names and layouts
    #[arg(long)]
    pub sample: bool,
    /// Where and how to fetch when neither --from nor --sample is given
    #[command(flatten)]
    pub online: Box<OnlineArgs>,
    /// minisign secret key (encrypted keys read EDGEFERRY_KEY_PASSWORD)
    #[arg(long, required_unless_present = "dry_run")]
    pub key: Option<PathBuf>,
    /// Output directory for the bundle, its .minisig and SHA256SUMS
    #[arg(long, default_value = "bundles")]
    pub out: PathBuf,
    /// A sandbox (pause) image the nodes' containerd uses (repeatable); given,
    /// it replaces the default set (registry.k8s.io/pause:3.6, 3.8 and 3.10:
    /// the built-in defaults of containerd 1.6, 1.7 and 2.x)
    #[arg(long = "pause-image", value_name = "REF")]
    pub pause_images: Vec<String>,
    /// An extra workload image to carry (repeatable)
    #[arg(long = "image", value_name = "REF")]
    pub images: Vec<String>,
    /// zstd level (gzip'd layers do not recompress; 3 is fast and as small)
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(i32).range(1..=19))]
    pub level: i32,
    /// Bundle sequence number (default: SOURCE_DATE_EPOCH, or now)
    #[arg(long)]
    pub sequence: Option<u64>,
    /// Split into volumes for removable media: fat32 (4 GiB - 1 byte), exfat (one volume) or bytes
    #[arg(long, value_parser = edgeferry_bundle::volumes::parse_volume_size, value_name = "fat32|exfat|BYTES")]
    pub volume_size: Option<u64>,
    /// A delta bundle: what the site already has
    #[command(flatten)]
    pub delta: Box<DeltaArgs>,
    /// Print the plan and stop: nothing is written (online, the servers are
    /// asked for sizes)
    #[arg(long)]
    pub dry_run: bool,
    /// Machine-readable output on stdout
    #[arg(long)]
    pub json: bool,
}

/// The base of a delta bundle (boxed in [`BundleArgs`] to keep it small).
#[derive(Args, Debug, Default)]
pub struct DeltaArgs {
    /// Make a delta: leave out every blob and release file FILE holds. FILE
    /// is an inventory (`edgeferry store inventory`) or an older bundle
    /// (its .minisig beside it; verified first, see --base-key)
    #[arg(long, value_name = "FILE")]
    pub base: Option<PathBuf>,
    /// A public key that may have signed the --base bundle (repeatable)
    /// [default: the public half of --key]
    #[arg(long = "base-key", value_name = "PUB", requires = "base")]
    pub base_keys: Vec<PathBuf>,
}

/// The online origin's options (boxed in [`BundleArgs`] to keep it small).
#[derive(Args, Debug, Default)]
pub struct OnlineArgs {
    /// Online: fetch release assets from URL/<version>/<asset>
    /// [default: https://github.com/kubeedge/kubeedge/releases/download]
    #[arg(long, value_name = "URL", conflicts_with_all = ["from", "sample"])]
    pub release_base_url: Option<String>,
    /// Online: pull images of REGISTRY from URL instead, e.g.
    /// docker.io=http://127.0.0.1:5000 (repeatable)
    #[arg(long = "registry-mirror", value_name = "REGISTRY=URL", value_parser = crate::fetch::parse_mirror, conflicts_with_all = ["from", "sample"])]
    pub registry_mirrors: Vec<crate::plan::Mirror>,
    /// Online: download cache, content-addressed and shared by all builds
    /// [default: $XDG_CACHE_HOME/edgeferry or ~/.cache/edgeferry]
    #[arg(long, value_name = "DIR", conflicts_with_all = ["from", "sample"])]
    pub cache: Option<PathBuf>,
    /// Online: docker config.json (or its directory) with registry credentials
    /// [default: $DOCKER_CONFIG/config.json or ~/.docker/config.json]
    #[arg(long, value_name = "PATH", conflicts_with_all = ["from", "sample"])]
    pub docker_config: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct KeygenArgs {
    /// Directory for edgeferry.key and edgeferry.pub
    #[arg(long)]
    pub out: PathBuf,
    /// Leave the secret key unencrypted (tests only)
    #[arg(long)]
    pub unencrypted: bool,
}

fn parse_arch(s: &str) -> Result<Arch, String> {
    s.parse()
}

/// Runs a parsed command and turns an error into one line on stderr.
pub fn main_with(cli: Cli) -> ExitCode {
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Bundle(args) => bundle(args),
        Command::Keygen(args) => keygen(args),
        Command::Sample(args) => sample_dir(args),
    }
}

fn bundle(args: BundleArgs) -> Result<()> {
    let created_unix = match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(v) => v
            .trim()
            .parse()
            .with_context(|| format!("SOURCE_DATE_EPOCH={v:?} is not a unix time"))?,
        Err(_) => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_secs(),
    };
    // Loaded early only when the base is checked by its public half.
    let mut key = None;
    let base = match &args.delta.base {
        Some(path) => {
            let keys = if !args.delta.base_keys.is_empty() {
                TrustedKeys::from_files(&args.delta.base_keys)?
            } else if let Some(key_path) = &args.key {
                let loaded = SigningKey::from_file(key_path)?;
                let keys = TrustedKeys::from_strings(&[&loaded.public_key_file()])?;
                key = Some(loaded);
                keys
            } else {
                // --dry-run without --key: an inventory needs no key.
                TrustedKeys::from_strings(&[])?
            };
            Some(crate::delta::read_base(path, &keys)?)
        }
        None => None,
    };
    let request = Request {
        kubeedge_version: args.kubeedge_version,
        arch: args.arch,
        origin: match (args.from, args.sample) {
            (Some(dir), _) => Origin::Dir(dir),
            (None, true) => Origin::Sample,
            (None, false) => Origin::Online(crate::plan::Online {
                release_base_url: args
                    .online
                    .release_base_url
                    .unwrap_or_else(|| crate::fetch::DEFAULT_RELEASE_BASE_URL.to_string())
                    .trim_end_matches('/')
                    .to_string(),
                registry_mirrors: args.online.registry_mirrors,
                cache: match args.online.cache {
                    Some(dir) => dir,
                    None => default_cache_dir()?,
                },
                docker_config: docker_config_path(args.online.docker_config)?,
            }),
        },
        pause_images: args.pause_images,
        extra_images: args.images,
        out_dir: args.out,
        level: args.level,
        sequence: args.sequence,
        created_unix,
        base: base.as_ref().map(|b| b.planned.clone()),
    };
    let plan = plan::plan(&request)?;
    if args.dry_run {
        let survey = match &plan.origin {
            Origin::Online(online) => Some(crate::fetch::survey(&plan, online)?),
            _ => None,
        };
        if args.json {
            let mut value = serde_json::to_value(&plan)?;
            if let Some(survey) = &survey {
                value["fetch"] = serde_json::to_value(survey)?;
            }
            println!("{}", serde_json::to_string_pretty(&value)?);
        } else {
            print_plan(&plan);
            if let Some(survey) = &survey {
                print_survey(survey);
            }
        }
        return Ok(());
    }
    let key = match key {
        Some(key) => key,
        None => SigningKey::from_file(
            args.key
                .as_deref()
                .expect("clap requires --key without --dry-run"),
        )?,
    };
    let (packed, omitted) = if !args.json && std::io::stderr().is_terminal() {
        build::build(&plan, &key, base.as_ref(), &mut Bar::default())?
    } else {
        build::build(&plan, &key, base.as_ref(), &mut Silent)?
    };
    let volumes = match args.volume_size {
        Some(size) => edgeferry_bundle::volumes::split(&packed, size, &key)?,
        None => Vec::new(),
    };
    let summary = serde_json::json!({
        "volumes": volumes,
        "bundle": packed.bundle,
        "signature": packed.signature,
        "sbom": crate::sbom::path_beside(&packed.bundle),
        "sha256sums": packed.sums,
        "sha256": packed.sha256,
        "size": packed.size,
        "bundle_id": packed.manifest.bundle_id,
        "kubeedge_version": packed.manifest.kubeedge_version,
        "arch": packed.manifest.arch,
        "sequence": packed.manifest.sequence,
        "sample": packed.manifest.sample,
        "entries": packed.manifest.entries.len(),
        "images": packed.manifest.images.iter().map(|i| &i.reference).collect::<Vec<_>>(),
    });
    let mut summary = summary;
    if let Some(delta) = &packed.manifest.delta {
        summary["delta"] = serde_json::json!({
            "base": delta.base,
            "omitted_entries": omitted.0.len(),
            "omitted_bytes": omitted.bytes(),
        });
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        let label = if packed.manifest.sample {
            "SAMPLE bundle (stand-ins, not KubeEdge)"
        } else {
            "bundle"
        };
        println!("{label} {}", packed.bundle.display());
        for volume in &volumes {
            println!("  volume {}", volume.display());
        }
        println!(
            "  id {}  sequence {}  {} bytes  sha256 {}",
            packed.manifest.bundle_id, packed.manifest.sequence, packed.size, packed.sha256
        );
        if let Some(delta) = &packed.manifest.delta {
            println!(
                "  DELTA against {} {}: {} entries ({} bytes) left out; a store needs them to load it",
                delta.base.kind,
                args.delta.base.as_deref().unwrap_or(Path::new("")).display(),
                omitted.0.len(),
                omitted.bytes()
            );
        }
        println!("  signature {}", packed.signature.display());
        println!(
            "  sbom {}",
            crate::sbom::path_beside(&packed.bundle).display()
        );
        println!("  checksums {}", packed.sums.display());
        println!("check it with stock tools:");
        println!(
            "  (cd {} && sha256sum -c --ignore-missing SHA256SUMS)",
            plan.out_dir().display()
        );
        println!("  minisign -Vm {} -p <your .pub>", packed.bundle.display());
    }
    Ok(())
}

fn sample_dir(args: SampleArgs) -> Result<()> {
    if args.out.exists() {
        anyhow::bail!(
            "{} already exists: pick a new directory for the sample",
            args.out.display()
        );
    }
    let plan = plan::plan(&Request {
        kubeedge_version: args.kubeedge_version,
        arch: Arch::Amd64,
        origin: Origin::Sample,
        pause_images: Vec::new(),
        extra_images: Vec::new(),
        out_dir: PathBuf::from("."),
        level: 3,
        sequence: Some(0),
        created_unix: 0,
        base: None,
    })?;
    crate::sample::write_sample_dir(&args.out, &build::sample_spec(&plan))?;
    println!(
        "SAMPLE artifacts (stand-ins, not KubeEdge) in {}",
        args.out.display()
    );
    Ok(())
}

/// `$XDG_CACHE_HOME/edgeferry`, or `~/.cache/edgeferry`.
fn default_cache_dir() -> Result<PathBuf> {
    let env = |name: &str| {
        std::env::var_os(name)
            .map(PathBuf::from)
            .filter(|p| p.is_absolute())
    };
    if let Some(xdg) = env("XDG_CACHE_HOME") {
        return Ok(xdg.join("edgeferry"));
    }
    match env("HOME") {
        Some(home) => Ok(home.join(".cache").join("edgeferry")),
        None => anyhow::bail!(
            "no cache directory: neither XDG_CACHE_HOME nor HOME is set, pass --cache DIR"
        ),
    }
}

/// The docker `config.json` to take credentials from: `--docker-config`
/// (a file, or a directory holding one; it must exist), else
/// `$DOCKER_CONFIG/config.json`, else `~/.docker/config.json` (if there).
fn docker_config_path(given: Option<PathBuf>) -> Result<Option<PathBuf>> {
    let in_dir = |p: PathBuf| if p.is_dir() { p.join("config.json") } else { p };
    if let Some(given) = given {
        let path = in_dir(given);
        if !path.is_file() {
            anyhow::bail!(
                "--docker-config {}: no such file: give a docker config.json or the directory holding one",
                path.display()
            );
        }
        return Ok(Some(path));
    }
    let default = match std::env::var_os("DOCKER_CONFIG") {
        Some(dir) => Some(PathBuf::from(dir).join("config.json")),
        None => std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".docker/config.json")),
    };
    Ok(default.filter(|p| p.is_file()))
}

fn print_survey(survey: &crate::fetch::Survey) {
    use indicatif::HumanBytes;
    let state = |cached: bool| if cached { " (cached)" } else { "" };
    println!("would fetch:");
    for f in &survey.files {
        match (f.found, f.size) {
            (false, _) => println!("  {} (optional, not in the release)", f.url),
            (true, Some(size)) => println!("  {} {}{}", f.url, HumanBytes(size), state(f.cached)),
            (true, None) => println!("  {} (size unknown){}", f.url, state(f.cached)),
        }
    }
    for image in &survey.images {
        let total: u64 = image.blobs.iter().map(|b| b.size).sum();
        let cached: u64 = image
            .blobs
            .iter()
            .filter(|b| b.cached)
            .map(|b| b.size)
            .sum();
        println!(
            "  {} {} from {}: {} blobs, {} ({} cached)",
            image.reference,
            image.platform,
            image.endpoint,
            image.blobs.len(),
            HumanBytes(total),
            HumanBytes(cached)
        );
    }
    let unknown = match survey.unknown_sizes {
        0 => String::new(),
        n => format!(" and {n} release assets of unknown size"),
    };
    println!(
        "to download: {}{unknown}",
        HumanBytes(survey.download_bytes)
    );
}

fn print_plan(plan: &plan::Plan) {
    let origin = match &plan.origin {
        Origin::Dir(d) => d.display().to_string(),
        Origin::Sample => "built-in SAMPLE artifacts (stand-ins, not KubeEdge)".into(),
        Origin::Online(online) => {
            let mirrors: Vec<String> = online
                .registry_mirrors
                .iter()
                .map(|m| format!("{}={}", m.registry, m.url))
                .collect();
            format!(
                "online: release assets from {}/{}/, images from their registries{}; cache {}",
                online.release_base_url,
                plan.kubeedge_version,
                if mirrors.is_empty() {
                    String::new()
                } else {
                    format!(" (mirrors {})", mirrors.join(", "))
                },
                online.cache.display()
            )
        }
    };
    println!(
        "bundle {} (sequence {}, created {})",
        plan.out_file.display(),
        plan.sequence,
        plan.created
    );
    println!("from {origin}");
    println!("release assets:");
    for f in &plan.files {
        let need = if f.required { "required" } else { "optional" };
        println!(
            "  files/{} ({need}, checked against {})",
            f.name, f.checksum
        );
    }
    if let Some(base) = &plan.base {
        println!(
            "delta against {} {} (bundles {}): leaves out whichever of its {} blobs ({} bytes) this bundle would carry",
            base.info.kind,
            base.path.display(),
            base.info.bundle_ids.join(", "),
            base.blobs,
            base.bytes
        );
    }
    println!("images for linux/{}:", plan.arch);
    for i in &plan.images {
        println!("  {} ({})", i.reference, i.role);
    }
    println!("steps:");
    for (n, step) in plan.steps.iter().enumerate() {
        println!("  {}. {step}", n + 1);
    }
}

fn keygen(args: KeygenArgs) -> Result<()> {
    let protection = if args.unencrypted {
        Protection::Unencrypted
    } else if let Ok(pw) = std::env::var(sign::PASSWORD_ENV) {
        if pw.is_empty() {
            anyhow::bail!(
                "{} is empty: pick a password, or pass --unencrypted",
                sign::PASSWORD_ENV
            );
        }
        Protection::Password(pw)
    } else if std::io::stdin().is_terminal() {
        Protection::Prompt
    } else {
        anyhow::bail!(
            "no password for the secret key: set {} or pass --unencrypted (stdin is not a terminal, so no prompt)",
            sign::PASSWORD_ENV
        )
    };
    let (secret, public) = sign::keygen(&args.out, protection)?;
    println!("secret key {}", secret.display());
    println!("public key {}", public.display());
    Ok(())
}

#[derive(Default)]
struct Bar(Option<indicatif::ProgressBar>);

impl Progress for Bar {
    fn start(&mut self, total_bytes: u64) {
        let bar = indicatif::ProgressBar::new(total_bytes);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "packing [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
            )
            .expect("static template")
            .progress_chars("=> "),
        );
        self.0 = Some(bar);
    }
    fn advance(&mut self, bytes: u64) {
        if let Some(bar) = &self.0 {
            bar.inc(bytes);
        }
    }
    fn finish(&mut self) {
        if let Some(bar) = self.0.take() {
            bar.finish_and_clear();
        }
    }
    fn show_downloads(&self) -> bool {
        true
    }
}
