//! The input of `cargo xtask bench bundle`: about 1 GiB of realistic
//! artifacts as a `--from` directory (docs/artifact-dir.md). Most bytes are
//! gzip'd tar layers of real files from this machine, the rest an
//! uncompressed tar layer of real ELF binaries, as KubeEdge's images are.
//!
//! It is made once under `target/bench/bundle-input` and reused while its
//! marker (written last) says it is complete and of the current spec.

use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use edgeferry_bundle::oci::{
    MEDIA_OCI_CONFIG as MEDIA_CONFIG, MEDIA_OCI_INDEX as MEDIA_INDEX,
    MEDIA_OCI_LAYER as MEDIA_LAYER_TAR, MEDIA_OCI_LAYER_GZIP as MEDIA_LAYER_GZIP,
    MEDIA_OCI_MANIFEST as MEDIA_MANIFEST,
};
use flate2::write::GzEncoder;
use flate2::Compression;
use sha2::{Digest, Sha256, Sha512};

/// Bump when the generated content changes so old inputs are regenerated.
const SPEC: &str = "edgeferry bench bundle-input v2";
/// Written last; holds SPEC and the summary printed on reuse.
const MARKER: &str = ".complete";
const MIB: u64 = 1024 * 1024;
/// Fast to generate; for zstd a level-1 layer is as incompressible as
/// Docker's default level 6, so the bench measures the same thing.
const GZIP_LEVEL: u32 = 1;
/// Bigger files are left out of gzip layers so one cannot overshoot a
/// layer's target by much.
const MAX_GZIP_FILE: u64 = 32 * MIB;
/// Bigger ELF files are left out (they are read whole).
const MAX_ELF_FILE: u64 = 128 * MIB;

pub const KUBEEDGE_VERSION: &str = "v1.23.1";
const KEADM: &str = "keadm-v1.23.1-linux-amd64.tar.gz";

/// One image: its layout directory under `images/`, full reference, tag,
/// and layers in order.
struct ImageSpec {
    dir: &'static str,
    reference: &'static str,
    tag: &'static str,
    layers: &'static [LayerSpec],
}

#[derive(Clone, Copy)]
enum LayerSpec {
    /// A tar+gzip layer of about this many compressed bytes.
    Gzip(u64),
    /// An uncompressed tar layer of about this many bytes of ELF binaries.
    Elf(u64),
}

/// The keadm release tarball, compressed size.
const KEADM_TARGET: u64 = 64 * MIB;

const IMAGES: &[ImageSpec] = &[
    ImageSpec {
        dir: "installation-package",
        reference: "docker.io/kubeedge/installation-package:v1.23.1",
        tag: "v1.23.1",
        layers: &[
            LayerSpec::Gzip(208 * MIB),
            LayerSpec::Gzip(208 * MIB),
            LayerSpec::Gzip(128 * MIB),
            LayerSpec::Elf(224 * MIB),
        ],
    },
    ImageSpec {
        dir: "pause",
        reference: "registry.k8s.io/pause:3.10",
        tag: "3.10",
        layers: &[LayerSpec::Gzip(MIB / 4)],
    },
    ImageSpec {
        dir: "mosquitto",
        reference: "docker.io/library/eclipse-mosquitto:1.6.15",
        tag: "1.6.15",
        layers: &[LayerSpec::Gzip(144 * MIB), LayerSpec::Gzip(48 * MIB)],
    },
];

/// What `ensure` hands back.
pub struct Input {
    pub dir: PathBuf,
    pub bytes: u64,
    pub files: u64,
}

/// Returns the bench input, generating it first unless a complete one of
/// the current spec is already there.
pub fn ensure(dir: &Path) -> Result<Input> {
    let marker = dir.join(MARKER);
    if let Ok(text) = fs::read_to_string(&marker) {
        if text.lines().next() == Some(SPEC) {
            println!("bench input: reusing {} ({SPEC})", dir.display());
            for line in text.lines().skip(1) {
                println!("{line}");
            }
            return measure(dir);
        }
    }
    if dir.exists() {
        println!(
            "bench input: {} is incomplete or stale, regenerating",
            dir.display()
        );
        fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    let started = Instant::now();
    let summary = generate(dir)?;
    let mut text = format!("{SPEC}\n");
    for line in &summary {
        println!("{line}");
        text.push_str(line);
        text.push('\n');
    }
    fs::write(&marker, text).with_context(|| format!("writing {}", marker.display()))?;
    println!(
        "bench input: generated in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    measure(dir)
}

/// Total size and count of the regular files in `dir`, the marker aside.
fn measure(dir: &Path) -> Result<Input> {
    let mut files = Vec::new();
    walk(dir, &mut files);
    let files: Vec<_> = files
        .into_iter()
        .filter(|f| f.path.file_name() != Some(MARKER.as_ref()))
        .collect();
    if files.is_empty() {
        bail!("bench input {} is empty", dir.display());
    }
    Ok(Input {
        dir: dir.to_path_buf(),
        bytes: files.iter().map(|f| f.size).sum(),
        files: files.len() as u64,
    })
}

/// A regular file found on this machine.
struct Found {
    path: PathBuf,
    size: u64,
    mode: u32,
}

/// Appends every non-empty regular file under `dir` in sorted order;
/// symlinks are not followed and unreadable directories are skipped.
fn walk(dir: &Path, out: &mut Vec<Found>) {
    let Ok(read_dir) = fs::read_dir(dir) else {
        return;
    };
    let mut children: Vec<PathBuf> = read_dir.filter_map(|e| e.ok().map(|e| e.path())).collect();
    children.sort();
    for path in children {
        let Ok(meta) = fs::symlink_metadata(&path) else {
            continue;
        };
        if meta.is_dir() {
            walk(&path, out);
        } else if meta.is_file() && meta.len() > 0 {
            out.push(Found {
                path,
                size: meta.len(),
                mode: meta.permissions().mode() & 0o7777,
            });
        }
    }
}

/// Real files of this machine, in a fixed order.
fn source_files() -> Vec<Found> {
    let mut roots: Vec<PathBuf> = ["/usr/bin", "/usr/lib", "/usr/share"]
        .iter()
        .map(PathBuf::from)
        .collect();
    if let Some(home) = std::env::var_os("HOME") {
        roots.push(Path::new(&home).join(".rustup/toolchains"));
    }
    let mut files = Vec::new();
    for root in roots {
        walk(&root, &mut files);
    }
    files
}

/// One piece of content to make, on a worker thread.
#[derive(Clone, Copy)]
enum Job {
    /// A tar.gz of files from gzip pool `pool`, entry names under `prefix`.
    Gzip {
        pool: usize,
        target: u64,
        prefix: &'static str,
        sha512: bool,
    },
    Elf {
        target: u64,
    },
}

impl Job {
    fn target(&self) -> u64 {
        match *self {
            Job::Gzip { target, .. } | Job::Elf { target } => target,
        }
    }
}

/// A finished blob, still at its temporary path.
struct Made {
    tmp: PathBuf,
    size: u64,
    sha256: String,
    sha512: Option<String>,
    diff_id: String,
    raw: u64,
    files: u64,
}

fn generate(dir: &Path) -> Result<Vec<String>> {
    println!(
        "bench input: generating about 1 GiB under {} from this machine's files",
        dir.display()
    );
    let tmp = dir.join("tmp");
    fs::create_dir_all(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    let sources = source_files();
    println!(
        "bench input: {} candidate files ({:.0} MiB) under /usr/bin, /usr/lib, /usr/share, ~/.rustup/toolchains",
        sources.len(),
        sources.iter().map(|f| f.size).sum::<u64>() as f64 / MIB as f64
    );

    // Jobs: the keadm tarball, then each image's layers in order. Every
    // gzip job draws from its own pool (file index modulo the number of
    // gzip jobs), so jobs are independent, parallel and repeatable.
    let mut jobs = vec![Job::Gzip {
        pool: 0,
        target: KEADM_TARGET,
        prefix: "keadm-v1.23.1-linux-amd64/",
        sha512: true,
    }];
    let mut pools = 1;
    for image in IMAGES {
        for layer in image.layers {
            jobs.push(match *layer {
                LayerSpec::Gzip(target) => {
                    pools += 1;
                    Job::Gzip {
                        pool: pools - 1,
                        target,
                        prefix: "",
                        sha512: false,
                    }
                }
                LayerSpec::Elf(target) => Job::Elf { target },
            });
        }
    }
    // Biggest first, so two workers finish at about the same time.
    let mut order: Vec<usize> = (0..jobs.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(jobs[i].target()));
    let next = AtomicUsize::new(0);
    let results: Vec<Mutex<Option<Result<Made>>>> = jobs.iter().map(|_| Mutex::new(None)).collect();
    let workers = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .min(4);
    std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| {
                while let Some(&i) = order.get(next.fetch_add(1, Ordering::Relaxed)) {
                    let out = tmp.join(format!("job-{i}"));
                    let made = match jobs[i] {
                        Job::Gzip {
                            pool,
                            target,
                            prefix,
                            sha512,
                        } => {
                            let files = sources
                                .iter()
                                .enumerate()
                                .filter(|(n, f)| n % pools == pool && f.size <= MAX_GZIP_FILE)
                                .map(|(_, f)| f);
                            gzip_tar(files, target, prefix, &out, sha512)
                        }
                        Job::Elf { target } => elf_tar(&sources, target, &out),
                    };
                    *results[i].lock().expect("no worker panics") = Some(made);
                }
            });
        }
    });
    let mut made = Vec::new();
    for (i, result) in results.into_iter().enumerate() {
        let result = result
            .into_inner()
            .expect("no worker panics")
            .with_context(|| format!("job {i} never ran"))?;
        made.push(result.with_context(|| format!("generating bench input part {i}"))?);
    }
    let mut made = made.into_iter();
    let mut summary = Vec::new();

    // files/: the keadm tarball and its bare sha512 checksum.
    let keadm = made.next().expect("keadm job");
    let files_dir = dir.join("files");
    fs::create_dir_all(&files_dir)?;
    fs::rename(&keadm.tmp, files_dir.join(KEADM))?;
    let sha512 = keadm.sha512.clone().expect("keadm hashed with sha512");
    fs::write(
        files_dir.join(format!("checksum_{KEADM}.txt")),
        format!("{sha512}\n"),
    )?;
    summary.push(describe(&format!("files/{KEADM}"), "tar+gzip", &keadm));

    // images/: one OCI layout per image, each a single linux/amd64 manifest.
    for image in IMAGES {
        let layout = dir.join("images").join(image.dir);
        let blobs = layout.join("blobs/sha256");
        fs::create_dir_all(&blobs)?;
        let mut layers = Vec::new();
        let mut diff_ids = Vec::new();
        for (n, spec) in image.layers.iter().enumerate() {
            let layer = made.next().expect("one job per layer");
            fs::rename(&layer.tmp, blobs.join(&layer.sha256))?;
            let (media_type, kind) = match spec {
                LayerSpec::Gzip(_) => (MEDIA_LAYER_GZIP, "tar+gzip"),
                LayerSpec::Elf(_) => (MEDIA_LAYER_TAR, "tar (ELF)"),
            };
            summary.push(describe(
                &format!(
                    "images/{} layer {}/{}",
                    image.dir,
                    n + 1,
                    image.layers.len()
                ),
                kind,
                &layer,
            ));
            layers.push(serde_json::json!({
                "mediaType": media_type,
                "digest": format!("sha256:{}", layer.sha256),
                "size": layer.size,
            }));
            diff_ids.push(format!("sha256:{}", layer.diff_id));
        }
        let config = serde_json::json!({
            "architecture": "amd64",
            "os": "linux",
            "config": {
                "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            },
            "rootfs": { "type": "layers", "diff_ids": diff_ids },
            "history": diff_ids.iter().map(|_| serde_json::json!({
                "created": "1970-01-01T00:00:00Z",
                "created_by": "edgeferry bench input",
            })).collect::<Vec<_>>(),
        });
        let config = write_json_blob(&blobs, &config)?;
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": MEDIA_MANIFEST,
            "config": { "mediaType": MEDIA_CONFIG, "digest": config.0, "size": config.1 },
            "layers": layers,
        });
        let manifest = write_json_blob(&blobs, &manifest)?;
        let index = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": MEDIA_INDEX,
            "manifests": [{
                "mediaType": MEDIA_MANIFEST,
                "digest": manifest.0,
                "size": manifest.1,
                "platform": { "architecture": "amd64", "os": "linux" },
                "annotations": {
                    "io.containerd.image.name": image.reference,
                    "org.opencontainers.image.ref.name": image.tag,
                },
            }],
        });
        fs::write(layout.join("index.json"), serde_json::to_vec(&index)?)?;
        fs::write(
            layout.join("oci-layout"),
            br#"{"imageLayoutVersion":"1.0.0"}"#,
        )?;
    }
    fs::remove_dir(&tmp)?;
    Ok(summary)
}

fn describe(what: &str, kind: &str, made: &Made) -> String {
    format!(
        "  {what:<38} {kind:<10} {:>7.1} MiB  ({:>7.1} MiB raw, {:>5} files)  sha256:{}…",
        made.size as f64 / MIB as f64,
        made.raw as f64 / MIB as f64,
        made.files,
        &made.sha256[..12]
    )
}

/// Writes a JSON blob by digest; returns (digest, size).
fn write_json_blob(blobs: &Path, value: &serde_json::Value) -> Result<(String, u64)> {
    let bytes = serde_json::to_vec(value)?;
    let hex = format!("{:x}", Sha256::digest(&bytes));
    fs::write(blobs.join(&hex), &bytes)?;
    Ok((format!("sha256:{hex}"), bytes.len() as u64))
}

/// Passes writes through, hashing and counting what got through.
struct Hashing<W> {
    inner: W,
    sha256: Sha256,
    sha512: Option<Sha512>,
    written: u64,
}

impl<W> Hashing<W> {
    fn new(inner: W, sha512: bool) -> Self {
        Hashing {
            inner,
            sha256: Sha256::new(),
            sha512: sha512.then(Sha512::new),
            written: 0,
        }
    }

    fn finish(self) -> (W, String, Option<String>) {
        (
            self.inner,
            format!("{:x}", self.sha256.finalize()),
            self.sha512.map(|h| format!("{:x}", h.finalize())),
        )
    }
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.sha256.update(&buf[..n]);
        if let Some(h) = &mut self.sha512 {
            h.update(&buf[..n]);
        }
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Reads a whole file, so the tar header's size is the size read. `None`
/// if it cannot be read (it is then left out).
fn read_whole(path: &Path) -> Option<Vec<u8>> {
    let mut bytes = Vec::new();
    File::open(path).ok()?.read_to_end(&mut bytes).ok()?;
    (!bytes.is_empty()).then_some(bytes)
}

/// Appends one file with deterministic metadata, named after its path
/// below `/`, under `prefix`.
fn append<W: Write>(
    tar: &mut tar::Builder<W>,
    prefix: &str,
    file: &Found,
    data: &[u8],
) -> Result<()> {
    let name = format!(
        "{prefix}{}",
        file.path.strip_prefix("/").unwrap_or(&file.path).display()
    );
    let mut header = tar::Header::new_gnu();
    header.set_size(data.len() as u64);
    header.set_mode(file.mode);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(0);
    header.set_entry_type(tar::EntryType::Regular);
    tar.append_data(&mut header, &name, data)
        .with_context(|| format!("adding {name}"))
}

/// A tar.gz of `files`, in order, until about `target` compressed bytes.
fn gzip_tar<'a>(
    files: impl Iterator<Item = &'a Found>,
    target: u64,
    prefix: &str,
    out: &Path,
    sha512: bool,
) -> Result<Made> {
    let file = File::create(out).with_context(|| format!("creating {}", out.display()))?;
    let compressed = Hashing::new(BufWriter::with_capacity(1 << 20, file), sha512);
    let gzip = GzEncoder::new(compressed, Compression::new(GZIP_LEVEL));
    let mut tar = tar::Builder::new(Hashing::new(gzip, false));
    let (mut raw, mut count) = (0, 0);
    for found in files {
        if tar.get_ref().inner.get_ref().written >= target {
            break;
        }
        let Some(data) = read_whole(&found.path) else {
            continue;
        };
        append(&mut tar, prefix, found, &data)?;
        raw += data.len() as u64;
        count += 1;
    }
    let (gzip, diff_id, _) = tar.into_inner()?.finish();
    let (buffered, sha256, sha512) = gzip.finish()?.finish();
    let file = buffered.into_inner().map_err(|e| e.into_error())?;
    let size = file.metadata()?.len();
    Ok(Made {
        tmp: out.to_path_buf(),
        size,
        sha256,
        sha512,
        diff_id,
        raw,
        files: count,
    })
}

/// An uncompressed tar of real ELF binaries, in walk order, skipping any
/// that would overshoot `target`.
fn elf_tar(files: &[Found], target: u64, out: &Path) -> Result<Made> {
    let file = File::create(out).with_context(|| format!("creating {}", out.display()))?;
    let mut tar = tar::Builder::new(Hashing::new(BufWriter::with_capacity(1 << 20, file), false));
    let (mut raw, mut count) = (0u64, 0);
    for found in files {
        if target - raw < 64 * 1024 {
            break;
        }
        if found.size > MAX_ELF_FILE || raw + found.size > target || !is_elf(&found.path) {
            continue;
        }
        let Some(data) = read_whole(&found.path) else {
            continue;
        };
        if raw + data.len() as u64 > target {
            continue;
        }
        append(&mut tar, "", found, &data)?;
        raw += data.len() as u64;
        count += 1;
    }
    let (buffered, sha256, _) = tar.into_inner()?.finish();
    let file = buffered.into_inner().map_err(|e| e.into_error())?;
    let size = file.metadata()?.len();
    Ok(Made {
        tmp: out.to_path_buf(),
        size,
        diff_id: sha256.clone(),
        sha256,
        sha512: None,
        raw,
        files: count,
    })
}

fn is_elf(path: &Path) -> bool {
    let mut magic = [0u8; 4];
    File::open(path)
        .and_then(|mut f| f.read_exact(&mut magic))
        .is_ok()
        && magic == *b"\x7fELF"
}
