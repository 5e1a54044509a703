//! The built-in SAMPLE artifact set: a complete `--from DIR` layout
//! (`docs/artifact-dir.md`) for all three arches, with the real KubeEdge
//! asset names, tarball layouts and image references but stand-in contents.
//!
//! No KubeEdge release can be downloaded where tests and the demo run, so
//! these take their place. Every stand-in says so in its first lines, its
//! labels and its annotations, so a sample bundle can never pass for a real
//! one. Output is byte-for-byte reproducible for a given spec and build host.
//!
//! The parts: `scripts` (the stand-in keadm, edgecore and friends, real
//! `.sh` files beside this one), `assets` (release tarballs and checksum
//! files), `image` (OCI layouts, written with `bundle::oci`), `tree`
//! (reproducible tar and gzip) and `busybox` (the host's static busybox).

mod assets;
mod busybox;
mod image;
mod scripts;
mod tree;

use std::path::Path;

use anyhow::{bail, Result};
use edgeferry_bundle::keadm;

pub use busybox::busybox_path;
use image::{write_image, ImageKind, SampleImage};
use tree::create_dir;

/// Fixed timestamp for every tar entry and image config, so that builds on
/// different days produce the same bytes.
const MTIME: u64 = 1_700_000_000;

/// Label and annotation that mark every sample image, manifest and index.
pub const SAMPLE_MARKER: &str = "io.edgeferry.sample";

/// Variable the stand-in scripts put in front of every host path they touch,
/// so unit tests can run `keadm join` and `keadm reset edge` in a temporary
/// directory.
pub const SAMPLE_ROOT_ENV: &str = "EDGEFERRY_SAMPLE_ROOT";
/// Variable with the seconds the stand-in `keadm join` waits for edgecore's
/// TLS files; 300 when unset, as the real keadm.
pub const STANDIN_WAIT_ENV: &str = "EDGEFERRY_STANDIN_WAIT";
/// Variable that, together with [`SAMPLE_ROOT_ENV`] only, lets unit tests
/// run the stand-ins without a certificate service: the stand-in keadm's
/// node-name check passes on any listener and the stand-in edgecore writes
/// labelled stand-in text instead of certificates, connecting nowhere.
pub const STANDIN_NO_CLOUD_ENV: &str = "EDGEFERRY_STANDIN_NO_CLOUD";
/// The stand-ins' own directory on a node: fault files and edgecore's pid.
pub const STANDIN_STATE_DIR: &str = "/var/lib/keadm-standin";
/// Fault file: `fail` makes the stand-in `keadm join` exit 1 after it has
/// copied edgecore out of the image, `hang` makes it sleep there until
/// killed.
pub const STANDIN_FAULT_FILE: &str = "/var/lib/keadm-standin/fault";
/// A whole number N of seconds the stand-in `keadm join` sleeps at the
/// same point, to model how long a real join takes.
pub const STANDIN_JOIN_SECONDS_FILE: &str = "/var/lib/keadm-standin/join-seconds";
/// Where the stand-in edgecore writes its pid.
pub const STANDIN_EDGECORE_PID_FILE: &str = "/var/lib/keadm-standin/edgecore.pid";
/// Fault file of the stand-in `keadm upgrade edge` / `rollback edge`:
/// `fail` (upgrade installs the new edgecore, then exits 1 without starting
/// it), `crash` (the new edgecore is started and exits at once; upgrade
/// exits 0), `rollback-fail` (upgrade fails as with `fail`, and rollback
/// exits 1 before changing anything).
pub const STANDIN_UPGRADE_FAULT_FILE: &str = "/var/lib/keadm-standin/upgrade-fault";
/// A whole number N of seconds the stand-in `keadm upgrade edge` sleeps
/// after its pull, to model how long a real upgrade takes.
pub const STANDIN_UPGRADE_SECONDS_FILE: &str = "/var/lib/keadm-standin/upgrade-seconds";
/// Written by the stand-in upgrade for the fault `crash`: the version of
/// edgecore that exits at start.
pub const STANDIN_EDGECORE_CRASH_FILE: &str = "/var/lib/keadm-standin/edgecore-crash";

/// What the sample set stands in for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SampleSpec {
    /// e.g. `v1.23.1`
    pub kubeedge_version: String,
    /// Full references of the sandbox images, e.g. `registry.k8s.io/pause:3.10`;
    /// each gets a pause stand-in, in `images/pause` then `images/pause-2`, ….
    pub pause_images: Vec<String>,
    /// Full reference, e.g. `docker.io/library/eclipse-mosquitto:1.6.15`.
    pub mosquitto_image: String,
    /// Full reference, e.g. `docker.io/kubeedge/installation-package:v1.23.1`.
    pub installation_package_image: String,
    /// Full references of extra workload images; each gets a tiny sample image.
    pub extra_images: Vec<String>,
}

impl SampleSpec {
    /// The images a KubeEdge version's edge side needs, with the usual
    /// upstream references and no extras.
    pub fn for_version(kubeedge_version: &str) -> SampleSpec {
        SampleSpec {
            kubeedge_version: kubeedge_version.to_string(),
            pause_images: ["3.6", "3.8", "3.10"]
                .iter()
                .map(|tag| format!("registry.k8s.io/pause:{tag}"))
                .collect(),
            mosquitto_image: "docker.io/library/eclipse-mosquitto:1.6.15".to_string(),
            installation_package_image: format!(
                "docker.io/kubeedge/installation-package:{kubeedge_version}"
            ),
            extra_images: Vec::new(),
        }
    }
}

/// `images/pause`, `images/pause-2`, …: where the `i`th sandbox image goes.
fn pause_dir_name(i: usize) -> String {
    match i {
        0 => "pause".to_string(),
        _ => format!("pause-{}", i + 1),
    }
}

/// Writes a complete `--from` artifact directory (`docs/artifact-dir.md`)
/// for all three arches into `dir`, creating it. The same spec on the same
/// host gives byte-identical files.
pub fn write_sample_dir(dir: &Path, spec: &SampleSpec) -> Result<()> {
    let version = spec.kubeedge_version.as_str();
    keadm::flags_for(version)?;
    let mut images = vec![
        SampleImage {
            dir_name: "installation-package".into(),
            reference: &spec.installation_package_image,
            kind: ImageKind::InstallationPackage,
        },
        SampleImage {
            dir_name: "mosquitto".into(),
            reference: &spec.mosquitto_image,
            kind: ImageKind::Workload,
        },
    ];
    for (i, reference) in spec.pause_images.iter().enumerate() {
        images.push(SampleImage {
            dir_name: pause_dir_name(i),
            reference,
            kind: ImageKind::Pause,
        });
    }
    for (i, reference) in spec.extra_images.iter().enumerate() {
        images.push(SampleImage {
            dir_name: format!("extra-{}", i + 1),
            reference,
            kind: ImageKind::Workload,
        });
    }
    for image in &images {
        let r = image.reference;
        if r.is_empty() || r.chars().any(|c| c.is_whitespace() || c.is_control()) {
            bail!(
                "sample image reference {r:?} for images/{} is not a reference: pass a full one such as docker.io/library/busybox:1.36",
                image.dir_name
            );
        }
    }
    let (_, busybox) = busybox::load_busybox()?;

    let files = dir.join("files");
    create_dir(&files)?;
    assets::write_release_assets(&files, version)?;
    let images_dir = dir.join("images");
    for image in &images {
        write_image(&images_dir, image, version, &busybox)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::busybox::check_static_elf;
    use super::scripts::{edgecore_script, keadm_script};
    use super::*;
    use std::collections::BTreeMap;
    use std::fs;
    use std::io::{Read, Write};
    use std::path::PathBuf;
    use std::process::{Command, Output, Stdio};

    use edgeferry_bundle::format::Arch;
    use edgeferry_bundle::hashing::sha256_hex;
    use edgeferry_bundle::oci::{
        ANNOTATION_CONTAINERD_NAME, ANNOTATION_DESCRIPTION, ANNOTATION_REF_NAME,
        MEDIA_OCI_INDEX as MEDIA_INDEX, MEDIA_OCI_LAYER_GZIP as MEDIA_LAYER_GZIP,
        MEDIA_OCI_MANIFEST as MEDIA_MANIFEST,
    };
    use sha2::{Digest, Sha512};

    use flate2::read::GzDecoder;
    use serde_json::Value;

    const V: &str = "v1.23.1";

    fn spec() -> SampleSpec {
        let mut spec = SampleSpec::for_version(V);
        spec.extra_images = vec!["docker.io/library/nginx:1.27".into()];
        spec
    }

    fn sample_dir() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        write_sample_dir(dir.path(), &spec()).unwrap();
        dir
    }

    fn all_files(root: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
        walkdir::WalkDir::new(root)
            .into_iter()
            .map(Result::unwrap)
            .filter(|e| e.file_type().is_file())
            .map(|e| {
                let rel = e.path().strip_prefix(root).unwrap().to_path_buf();
                (rel, fs::read(e.path()).unwrap())
            })
            .collect()
    }

    /// (path, entry type, mode, contents or link target) of every entry.
    fn tar_entries(tar_bytes: &[u8]) -> Vec<(String, tar::EntryType, u32, Vec<u8>)> {
        let mut archive = tar::Archive::new(tar_bytes);
        archive
            .entries()
            .unwrap()
            .map(|e| {
                let mut e = e.unwrap();
                let path = String::from_utf8(e.path_bytes().to_vec()).unwrap();
                let header = e.header().clone();
                assert_eq!(header.mtime().unwrap(), MTIME, "{path}");
                assert_eq!(
                    (header.uid().unwrap(), header.gid().unwrap()),
                    (0, 0),
                    "{path}"
                );
                let mut data = Vec::new();
                if header.entry_type() == tar::EntryType::Symlink {
                    data = e.link_name_bytes().unwrap().to_vec();
                } else {
                    e.read_to_end(&mut data).unwrap();
                }
                (path, header.entry_type(), header.mode().unwrap(), data)
            })
            .collect()
    }

    fn gunzip(data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        GzDecoder::new(data).read_to_end(&mut out).unwrap();
        out
    }

    fn json(path: &Path) -> Value {
        serde_json::from_slice(&fs::read(path).unwrap()).unwrap()
    }

    fn blob(image: &Path, digest: &Value) -> Vec<u8> {
        let hex = digest.as_str().unwrap().strip_prefix("sha256:").unwrap();
        let data = fs::read(image.join("blobs/sha256").join(hex)).unwrap();
        assert_eq!(sha256_hex(&data), hex);
        data
    }

    #[test]
    fn same_spec_gives_byte_identical_dirs() {
        let (a, b) = (sample_dir(), sample_dir());
        let (fa, fb) = (all_files(a.path()), all_files(b.path()));
        assert_eq!(fa.keys().collect::<Vec<_>>(), fb.keys().collect::<Vec<_>>());
        for (path, data) in &fa {
            assert!(data == &fb[path], "{} differs between runs", path.display());
        }
        // 4 release assets and their checksums per arch, 6 images.
        assert_eq!(fa.keys().filter(|p| p.starts_with("files")).count(), 12);
        let images: Vec<_> = fs::read_dir(a.path().join("images"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        assert_eq!(
            images,
            [
                "extra-1",
                "installation-package",
                "mosquitto",
                "pause",
                "pause-2",
                "pause-3"
            ]
        );
        for image in ["installation-package", "pause", "mosquitto", "extra-1"] {
            assert!(fa.contains_key(&Path::new("images").join(image).join("index.json")));
        }
    }

    #[test]
    fn checksum_files_hold_sha512_of_tarballs() {
        let dir = sample_dir();
        let files = dir.path().join("files");
        for arch in Arch::ALL {
            for what in ["keadm", "kubeedge"] {
                let asset = format!("{what}-{V}-linux-{arch}.tar.gz", arch = arch.as_str());
                let tarball = fs::read(files.join(&asset)).unwrap();
                let sum = fs::read_to_string(files.join(format!("checksum_{asset}.txt"))).unwrap();
                assert_eq!(sum, format!("{:x}\n", Sha512::digest(&tarball)));
                assert_eq!(sum.len(), 129);
            }
        }
    }

    #[test]
    fn tarballs_have_upstream_layout() {
        let dir = sample_dir();
        let files = dir.path().join("files");
        for arch in Arch::ALL {
            let top = format!("keadm-{V}-linux-{}", arch.as_str());
            let tarball = fs::read(files.join(format!("{top}.tar.gz"))).unwrap();
            assert_eq!(&tarball[4..8], &[0, 0, 0, 0], "gzip mtime must be 0");
            let entries = tar_entries(&gunzip(&tarball));
            let paths: Vec<_> = entries.iter().map(|e| e.0.as_str()).collect();
            let want = [
                format!("{top}/"),
                format!("{top}/keadm/"),
                format!("{top}/keadm/keadm"),
                format!("{top}/version"),
            ];
            assert_eq!(paths, want);
            assert_eq!(entries[2].2, 0o755);
            assert!(entries[2].3.starts_with(
                format!("#!/bin/sh\n# edgeferry SAMPLE stand-in for keadm {V} — not KubeEdge\n")
                    .as_bytes()
            ));
            assert_eq!(
                (entries[3].2, entries[3].3.as_slice()),
                (0o644, b"v1.23.1\n".as_slice())
            );

            let top = format!("kubeedge-{V}-linux-{}", arch.as_str());
            let tarball = fs::read(files.join(format!("{top}.tar.gz"))).unwrap();
            let entries = tar_entries(&gunzip(&tarball));
            let paths: Vec<_> = entries.iter().map(|e| e.0.clone()).collect();
            assert!(paths.iter().all(|p| p.starts_with(&format!("{top}/"))));
            for want in [
                "edge/edgecore",
                "cloud/cloudcore/cloudcore",
                "cloud/admission/admission",
                "cloud/csidriver/csidriver",
                "cloud/iptablesmanager/iptablesmanager",
                "cloud/controllermanager/controllermanager",
                "version",
            ] {
                assert!(paths.contains(&format!("{top}/{want}")), "{want} missing");
            }
        }
    }

    #[test]
    fn images_are_multi_arch_sample_layouts() {
        let dir = sample_dir();
        let spec = spec();
        for (name, reference) in [
            ("installation-package", &spec.installation_package_image),
            ("pause", &spec.pause_images[0]),
            ("pause-2", &spec.pause_images[1]),
            ("pause-3", &spec.pause_images[2]),
            ("mosquitto", &spec.mosquitto_image),
            ("extra-1", &spec.extra_images[0]),
        ] {
            let image = dir.path().join("images").join(name);
            assert_eq!(
                fs::read_to_string(image.join("oci-layout")).unwrap(),
                r#"{"imageLayoutVersion":"1.0.0"}"#
            );
            let layout = json(&image.join("index.json"));
            let tops = layout["manifests"].as_array().unwrap();
            assert_eq!(tops.len(), 1, "{name}");
            let top = &tops[0];
            assert_eq!(top["mediaType"], MEDIA_INDEX);
            assert_eq!(
                top["annotations"][ANNOTATION_CONTAINERD_NAME],
                reference.as_str()
            );
            assert_eq!(top["annotations"][ANNOTATION_REF_NAME], reference.as_str());

            let index: Value = serde_json::from_slice(&blob(&image, &top["digest"])).unwrap();
            assert_eq!(index["annotations"][SAMPLE_MARKER], "true");
            let mut platforms = Vec::new();
            for m in index["manifests"].as_array().unwrap() {
                let p = &m["platform"];
                platforms.push(format!(
                    "{}/{}{}",
                    p["os"].as_str().unwrap(),
                    p["architecture"].as_str().unwrap(),
                    p["variant"]
                        .as_str()
                        .map(|v| format!("/{v}"))
                        .unwrap_or_default()
                ));
                let manifest: Value = serde_json::from_slice(&blob(&image, &m["digest"])).unwrap();
                assert_eq!(manifest["mediaType"], MEDIA_MANIFEST);
                assert_eq!(manifest["annotations"][SAMPLE_MARKER], "true");
                let config: Value =
                    serde_json::from_slice(&blob(&image, &manifest["config"]["digest"])).unwrap();
                assert_eq!(config["architecture"], p["architecture"]);
                assert_eq!(config["variant"], p["variant"]);
                let labels = &config["config"]["Labels"];
                assert_eq!(labels[SAMPLE_MARKER], "true");
                assert!(labels[ANNOTATION_DESCRIPTION]
                    .as_str()
                    .unwrap()
                    .contains("not the real image"));
                let layers = manifest["layers"].as_array().unwrap();
                assert_eq!(layers.len(), 1);
                assert_eq!(layers[0]["mediaType"], MEDIA_LAYER_GZIP);
                let layer_tar = gunzip(&blob(&image, &layers[0]["digest"]));
                assert_eq!(
                    config["rootfs"]["diff_ids"][0],
                    format!("sha256:{}", sha256_hex(&layer_tar))
                );
                let entries = tar_entries(&layer_tar);
                let find = |path: &str| entries.iter().find(|e| e.0 == path).cloned();
                if name == "installation-package" {
                    for applet in ["sh", "sleep", "cp", "cat"] {
                        let e = find(&format!("bin/{applet}")).unwrap();
                        assert_eq!(
                            (e.1, e.3.as_slice()),
                            (tar::EntryType::Symlink, b"busybox".as_slice())
                        );
                    }
                    assert_eq!(find("bin/busybox").unwrap().2, 0o755);
                    assert_eq!(find("etc/kubeedge/").unwrap().1, tar::EntryType::Directory);
                    assert!(find("usr/local/bin/edgecore").is_some());
                    assert!(find("usr/local/bin/keadm").is_some());
                }
                if name.starts_with("pause") {
                    assert!(find("bin/busybox").is_some());
                    assert_eq!(config["config"]["Cmd"][0], "/pause");
                }
            }
            assert_eq!(
                platforms,
                ["linux/amd64", "linux/arm64", "linux/arm/v7"],
                "{name}"
            );
        }
    }

    fn run_keadm(shell: &[&str], version: &str, root: &Path, args: &[&str], stdin: &str) -> Output {
        run_keadm_env(shell, version, root, args, stdin, &[])
    }

    fn run_keadm_env(
        shell: &[&str],
        version: &str,
        root: &Path,
        args: &[&str],
        stdin: &str,
        envs: &[(&str, &str)],
    ) -> Output {
        let script = root.join("keadm");
        fs::write(&script, keadm_script(version).unwrap()).unwrap();
        let mut child = Command::new(shell[0])
            .args(&shell[1..])
            .arg(&script)
            .args(args)
            .env(SAMPLE_ROOT_ENV, root)
            .env(STANDIN_NO_CLOUD_ENV, "1")
            .envs(envs.iter().copied())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(stdin.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    }

    const SHELLS: [&[&str]; 2] = [&["/bin/sh"], &["/bin/busybox", "sh"]];

    fn stderr(o: &Output) -> String {
        String::from_utf8_lossy(&o.stderr).into_owned()
    }

    fn stdout(o: &Output) -> String {
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    #[test]
    fn standin_keadm_rejects_bad_command_lines() {
        let tmp = tempfile::tempdir().unwrap();
        let base = [
            "join",
            "--cloudcore-ipport=10.0.0.1:10000",
            "--kubeedge-version",
            V,
        ];
        let cases: &[(&[&str], &str)] = &[
            (&["--foo=bar"], "Error: unknown flag: --foo\n"),
            (&["--with-mqtt"], "Error: unknown flag: --with-mqtt\n"),
            (&["-x"], "Error: unknown shorthand flag: 'x' in -x\n"),
            (&["--token"], "Error: flag needs an argument: --token\n"),
            (&["-t"], "Error: flag needs an argument: 't' in -t\n"),
            (
                &["--hub-protocol=http"],
                "Error: unsupported hub of protocol: http\n",
            ),
        ];
        for shell in SHELLS {
            for (extra, want) in cases {
                let args: Vec<&str> = base.iter().chain(extra.iter()).copied().collect();
                let out = run_keadm(shell, V, tmp.path(), &args, "");
                assert_eq!(out.status.code(), Some(1), "{args:?}");
                assert_eq!(stderr(&out), *want, "{shell:?} {args:?}");
                assert_eq!(stdout(&out), "", "nothing ran: {args:?}");
            }
            let out = run_keadm(shell, V, tmp.path(), &["join", "--token=x"], "");
            assert_eq!(out.status.code(), Some(1));
            assert_eq!(
                stderr(&out),
                "Error: required flag(s) \"cloudcore-ipport\", \"kubeedge-version\" not set\n"
            );
            let out = run_keadm(
                shell,
                V,
                tmp.path(),
                &["reset", "edge", "--force=maybe"],
                "",
            );
            assert_eq!(out.status.code(), Some(1));
            assert!(stderr(&out).contains("invalid argument \"maybe\" for \"--force\" flag"));
            let out = run_keadm(shell, V, tmp.path(), &["init"], "");
            assert_eq!(out.status.code(), Some(1));
            assert!(stderr(&out).contains("Usage:"));
        }
        // Nothing was created on the "host".
        let left: Vec<_> = fs::read_dir(tmp.path()).unwrap().collect();
        assert_eq!(left.len(), 1, "only the script itself");
    }

    /// Every flag of the real keadm is accepted; the join then stops at the
    /// management-directory check with the real message.
    #[test]
    fn standin_keadm_accepts_real_join_command_lines() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        fs::create_dir_all(root.join("etc/kubeedge")).unwrap();
        fs::write(root.join("etc/kubeedge/.leftover"), "x").unwrap();
        let pre = root.join("pre.sh");
        fs::write(&pre, "echo pre-run ran\n").unwrap();
        let pre_run = format!("--pre-run={}", pre.display());
        for version in ["v1.21.0", "v1.22.2", V] {
            for shell in SHELLS {
                let args = [
                    "join",
                    "-e",
                    "[fd00::1]:10000",
                    &format!("--kubeedge-version={version}"),
                    "--token",
                    "abc.def",
                    "-iedge-1",
                    "-l=a=b",
                    "--labels",
                    "c=d",
                    "--set=modules.edgeHub.enable=true",
                    "--cgroupdriver",
                    "systemd",
                    "--image-repository=10.0.0.5:5000/kubeedge",
                    "--remote-runtime-endpoint=unix:///run/containerd/containerd.sock",
                    "--certPath=/etc/kubeedge/certs",
                    "--certport",
                    "10002",
                    "--tarballpath=/tmp",
                    "--hub-protocol=quic",
                    &pre_run,
                    "--post-run",
                    "./post.sh",
                ];
                let out = run_keadm(shell, version, root, &args, "");
                assert_eq!(out.status.code(), Some(1), "{shell:?} {version}");
                assert_eq!(
                    stderr(&out),
                    "Error: the management directory /etc/kubeedge/ is not clean, please remove it first\n"
                );
                let stdout = stdout(&out);
                assert!(stdout.starts_with(&format!(
                    "keadm {version} (edgeferry SAMPLE stand-in, not KubeEdge): joining"
                )));
                assert!(stdout.ends_with(&format!(
                    "1. Executing pre-run script: {}\npre-run ran\n\
                     2. Check KubeEdge edgecore process status\n\
                     3. Check if the management directory is clean\n",
                    pre.display()
                )));

                let out = run_keadm(shell, version, root, &["version"], "");
                let stdout = String::from_utf8_lossy(&out.stdout);
                assert!(out.status.success());
                assert!(stdout.contains(version) && stdout.contains("stand-in"));
            }
        }
        assert!(root.join("etc/kubeedge/.leftover").exists());
    }

    /// A read-only registry, as `edgeferry serve` answers: manifests by tag
    /// or digest and blobs, with `?ns=` (ignored), for
    /// `kubeedge/installation-package` from one OCI layout and `pause` (tag
    /// 3.6, containerd 1.6's sandbox image) from the `pause` layout beside
    /// it. Records every request line with its Accept header.
    struct Mirror {
        addr: String,
        requests: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    }

    impl Mirror {
        fn start(layout: PathBuf, corrupt_blobs: bool) -> Mirror {
            use std::io::{BufRead, BufReader};
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = listener.local_addr().unwrap().to_string();
            let requests = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
            let log = requests.clone();
            let top_of = |layout: &Path| -> Option<String> {
                let top: Value =
                    serde_json::from_slice(&fs::read(layout.join("index.json")).ok()?).ok()?;
                Some(top["manifests"][0]["digest"].as_str()?.to_string())
            };
            let pause = layout.parent().unwrap().join("pause");
            let repos = [
                (
                    "/v2/kubeedge/installation-package/",
                    V,
                    top_of(&layout).unwrap(),
                    layout.clone(),
                ),
                (
                    "/v2/pause/",
                    "3.6",
                    top_of(&pause).unwrap_or_default(),
                    pause,
                ),
            ];
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    let Ok(mut stream) = stream else { continue };
                    let mut reader = BufReader::new(stream.try_clone().unwrap());
                    let mut line = String::new();
                    reader.read_line(&mut line).unwrap();
                    let mut accept = String::new();
                    loop {
                        let mut header = String::new();
                        if reader.read_line(&mut header).unwrap() == 0 || header == "\r\n" {
                            break;
                        }
                        if let Some(v) = header.strip_prefix("Accept: ") {
                            accept = v.trim().to_string();
                        }
                    }
                    let target = line.split(' ').nth(1).unwrap_or("").to_string();
                    log.lock()
                        .unwrap()
                        .push(format!("{target} Accept: {accept}"));
                    let path = target.split('?').next().unwrap();
                    let body = repos.iter().find_map(|(name, tag, top, layout)| {
                        let rest = path.strip_prefix(name)?;
                        let (kind, reference) = rest.split_once('/')?;
                        let digest = match (kind, reference) {
                            ("manifests", r) if r == *tag => top.clone(),
                            ("manifests" | "blobs", d) if d.starts_with("sha256:") => d.into(),
                            _ => return None,
                        };
                        let mut data =
                            fs::read(layout.join("blobs/sha256").join(&digest["sha256:".len()..]))
                                .ok()?;
                        if corrupt_blobs && kind == "blobs" {
                            let last = data.len() - 1;
                            data[last] ^= 1;
                        }
                        Some(data)
                    });
                    let (status, body) = match body {
                        Some(data) => ("200 OK", data),
                        None => (
                            "404 Not Found",
                            br#"{"errors":[{"code":"NAME_UNKNOWN"}]}"#.to_vec(),
                        ),
                    };
                    let head = format!(
                        "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                        body.len()
                    );
                    let _ = stream.write_all(head.as_bytes());
                    let _ = stream.write_all(&body);
                }
            });
            Mirror { addr, requests }
        }
    }

    /// The stand-in cloudcore of the test sites: a port that accepts
    /// connections and closes them.
    fn cloudcore_listener() -> u16 {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                drop(stream);
            }
        });
        port
    }

    /// A port nothing listens on.
    fn closed_port() -> u16 {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    }

    /// The node's containerd for the copy step's sandbox: registry.k8s.io
    /// through `mirror`, and a config.toml (containerd 1.6 layout) with
    /// `extra` in its CRI section; restrict_oom_score_adj = true unless
    /// `extra` says otherwise, since test machines often lack
    /// CAP_SYS_RESOURCE.
    fn write_containerd(root: &Path, mirror: &str, extra: &str) {
        write_hosts_toml(root, "registry.k8s.io", mirror);
        let restrict = if extra.contains("restrict_oom_score_adj") {
            ""
        } else {
            "  restrict_oom_score_adj = true\n"
        };
        fs::write(
            root.join("etc/containerd/config.toml"),
            format!("version = 2\n[plugins.\"io.containerd.grpc.v1.cri\"]\n{restrict}{extra}"),
        )
        .unwrap();
    }

    fn write_hosts_toml(root: &Path, registry: &str, mirror: &str) {
        let dir = root.join("etc/containerd/certs.d").join(registry);
        fs::create_dir_all(&dir).unwrap();
        let server = if registry == "docker.io" {
            "https://registry-1.docker.io".to_string()
        } else {
            format!("http://{mirror}")
        };
        fs::write(
            dir.join("hosts.toml"),
            format!(
                "# Written by edgeferry: pull {registry} images from the site mirror.\n\
                 server = \"{server}\"\n\n\
                 [host.\"http://{mirror}\"]\n  capabilities = [\"pull\", \"resolve\"]\n"
            ),
        )
        .unwrap();
    }

    /// The pid in the stand-in edgecore's pid file, if that process lives
    /// (and is not a zombie).
    fn live_edgecore(root: &Path) -> Option<u32> {
        let pid: u32 = fs::read_to_string(root.join(&STANDIN_EDGECORE_PID_FILE[1..]))
            .ok()?
            .trim()
            .parse()
            .ok()?;
        let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let state = stat.rsplit_once(") ")?.1.chars().next()?;
        (state != 'Z').then_some(pid)
    }

    /// Kills a stand-in edgecore a failed test left running.
    struct KillEdgecore<'a>(&'a Path);

    impl Drop for KillEdgecore<'_> {
        fn drop(&mut self) {
            if let Some(pid) = live_edgecore(self.0) {
                let _ = Command::new("kill").arg(pid.to_string()).status();
            }
        }
    }

    fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
        for _ in 0..200 {
            if done() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        panic!("timed out waiting until {what}");
    }

    /// The whole join against a mirror serving the sample
    /// installation-package image, then `keadm reset edge`.
    #[test]
    fn standin_keadm_joins_through_the_mirror_and_resets() {
        let sample = sample_dir();
        let layout = sample.path().join("images/installation-package");
        let mirror = Mirror::start(layout.clone(), false);
        let certport = cloudcore_listener().to_string();
        for (shell, image_repository) in [
            (SHELLS[0], None),
            (SHELLS[1], None),
            (SHELLS[0], Some(format!("{}/kubeedge", mirror.addr))),
        ] {
            let tmp = tempfile::tempdir().unwrap();
            let root = tmp.path();
            let _guard = KillEdgecore(root);
            let registry = match &image_repository {
                Some(_) => mirror.addr.clone(),
                None => "docker.io".to_string(),
            };
            write_hosts_toml(root, &registry, &mirror.addr);
            write_containerd(root, &mirror.addr, "");
            // A management directory that exists but is empty is fine.
            fs::create_dir_all(root.join("etc/kubeedge")).unwrap();
            mirror.requests.lock().unwrap().clear();

            let mut args = vec![
                "join".to_string(),
                "--cloudcore-ipport=127.0.0.1:10000".into(),
                format!("--certport={certport}"),
                format!("--kubeedge-version={V}"),
                "--token=ca.jwt\"x".into(),
                "--edgenode-name=edge-1".into(),
                "--labels=site=a,role=edge".into(),
                "--set=modules.edgeHub.enable=true".into(),
                format!("--post-run={}", root.join("post.sh").display()),
            ];
            if let Some(r) = &image_repository {
                args.push(format!("--image-repository={r}"));
            }
            fs::write(root.join("post.sh"), "echo post-run ran; exit 3\n").unwrap();
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let out = run_keadm_env(shell, V, root, &args, "", &[(STANDIN_WAIT_ENV, "20")]);
            let (out_text, err_text) = (stdout(&out), stderr(&out));
            assert_eq!(
                out.status.code(),
                Some(0),
                "{shell:?}: {out_text}{err_text}"
            );
            assert_eq!(err_text, "");
            let steps: Vec<&str> = out_text
                .lines()
                .filter(|l| l.starts_with(|c: char| c.is_ascii_digit()))
                .collect();
            assert_eq!(
                steps,
                [
                    "1. Check KubeEdge edgecore process status",
                    "2. Check if the management directory is clean",
                    "3. Check if the node name is valid",
                    "4. Create the necessary directories",
                    "5. Pull Images",
                    "6. Copy resources from the image to the management directory",
                    "7. Generate systemd service file",
                    "8. Generate EdgeCore default configuration",
                    "9. Run EdgeCore daemon",
                    &format!(
                        "10. Executing post-run script: {}",
                        root.join("post.sh").display()
                    ),
                ]
            );
            assert!(
                out_text.contains("\nInstall Complete!\n10. Executing post-run script"),
                "{out_text}"
            );
            assert!(out_text.ends_with(&format!(
                "\npost-run ran\nfailed to execute the post-run script {}: exit status 3\n",
                root.join("post.sh").display()
            )));

            // The mirror was asked as containerd asks it.
            let requests = mirror.requests.lock().unwrap().clone();
            let ns = match image_repository {
                Some(_) => String::new(),
                None => "?ns=docker.io".to_string(),
            };
            // Then containerd's sandbox image, for the copy step's sandbox.
            assert_eq!(requests.len(), 6, "{requests:?}");
            let want_accept = "Accept: application/vnd.oci.image.index.v1+json, \
                application/vnd.oci.image.manifest.v1+json, \
                application/vnd.docker.distribution.manifest.list.v2+json, \
                application/vnd.docker.distribution.manifest.v2+json";
            assert_eq!(
                requests[0],
                format!("/v2/kubeedge/installation-package/manifests/{V}{ns} {want_accept}")
            );
            assert_eq!(
                requests[3],
                format!("/v2/pause/manifests/3.6?ns=registry.k8s.io {want_accept}")
            );
            let index: Value = serde_json::from_slice(&blob(
                &layout,
                &json(&layout.join("index.json"))["manifests"][0]["digest"],
            ))
            .unwrap();
            let amd64 = &index["manifests"][0];
            assert_eq!(amd64["platform"]["architecture"], "amd64");
            let digest = amd64["digest"].as_str().unwrap();
            assert_eq!(
                requests[1],
                format!("/v2/kubeedge/installation-package/manifests/{digest}{ns} {want_accept}")
            );
            let manifest: Value = serde_json::from_slice(&blob(&layout, &amd64["digest"])).unwrap();
            let layer = manifest["layers"][0]["digest"].as_str().unwrap();
            assert!(requests[2].starts_with(&format!(
                "/v2/kubeedge/installation-package/blobs/{layer}{ns} "
            )));

            // What join leaves on the node.
            let edgecore = fs::read(root.join("usr/local/bin/edgecore")).unwrap();
            assert_eq!(edgecore, edgecore_script(V).as_bytes());
            use std::os::unix::fs::PermissionsExt;
            let mode = |p: &str| fs::metadata(root.join(p)).unwrap().permissions().mode() & 0o7777;
            assert_eq!(mode("usr/local/bin/edgecore"), 0o755);
            assert_eq!(mode("etc/kubeedge/certs/server.key"), 0o600);
            for dir in [
                "etc/kubeedge/config",
                "var/log/kubeedge",
                "var/lib/kubeedge",
            ] {
                assert!(root.join(dir).is_dir(), "{dir}");
            }
            assert!(
                !root.join("etc/kubeedge/bootstrap-edgecore.conf").exists(),
                "removed when join returns, as by real keadm"
            );
            assert!(!root.join("etc/systemd").exists());
            let config =
                fs::read_to_string(root.join("etc/kubeedge/config/edgecore.yaml")).unwrap();
            for want in [
                "stand-in",
                &format!("edgeCoreVersion: {V}\n"),
                "    httpServer: https://127.0.0.1:",
                "    token: \"ca.jwt\\\"x\"\n",
                "    websocket:\n      enable: true\n      server: 127.0.0.1:10000\n",
                "    quic:\n      enable: false\n      server: 127.0.0.1:10001\n",
                "    tunnelServer: 127.0.0.1:10004\n",
                "    hostnameOverride: edge-1\n",
                "      cgroupDriver: cgroupfs\n",
                "    nodeLabels:\n      site: a\n      role: edge\n",
                "      containerRuntimeEndpoint: unix:///run/containerd/containerd.sock\n",
                "#   modules.edgeHub.enable=true\n",
            ] {
                assert!(config.contains(want), "{want:?} not in\n{config}");
            }
            let log = fs::read_to_string(root.join("var/log/kubeedge/edgecore.log")).unwrap();
            assert!(log.contains("edgeferry SAMPLE stand-in"), "{log}");

            // edgecore runs, under its own name.
            let pid = live_edgecore(root).expect("edgecore runs");
            assert_eq!(
                fs::read_to_string(format!("/proc/{pid}/comm")).unwrap(),
                "edgecore\n"
            );

            // A second join refuses, as real keadm does.
            let out = run_keadm(shell, V, root, &args, "");
            assert_eq!(out.status.code(), Some(1));
            assert_eq!(
                stderr(&out),
                "Error: EdgeCore is already running on this node, please run reset to clean up first\n"
            );

            let out = run_keadm(shell, V, root, &["reset", "edge", "--force"], "");
            assert!(out.status.success(), "{}", stderr(&out));
            wait_until("edgecore has stopped", || live_edgecore(root).is_none());
            for dir in ["etc/kubeedge", "var/log/kubeedge", "var/lib/kubeedge"] {
                assert!(!root.join(dir).exists(), "{dir}");
            }
            assert!(
                root.join("usr/local/bin/edgecore").exists(),
                "reset leaves it"
            );
            assert!(root.join("etc/containerd/certs.d").exists());
        }
    }

    fn standin_join(root: &Path, certport: u16, envs: &[(&str, &str)]) -> Output {
        run_keadm_env(
            SHELLS[0],
            V,
            root,
            &[
                "join",
                "--cloudcore-ipport=127.0.0.1:10000",
                &format!("--certport={certport}"),
                "--kubeedge-version",
                V,
                "--token=t",
            ],
            "",
            envs,
        )
    }

    /// `keadm backup edge`, `upgrade edge` (a wrong and a right
    /// --image-digest, the faults) and `rollback edge` on a joined root.
    #[test]
    fn standin_keadm_backs_up_upgrades_and_rolls_back() {
        let sample = sample_dir();
        let mirror = Mirror::start(sample.path().join("images/installation-package"), false);
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        let _guard = KillEdgecore(root);
        write_hosts_toml(root, "docker.io", &mirror.addr);
        write_containerd(root, &mirror.addr, "");
        let out = standin_join(root, cloudcore_listener(), &[]);
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        let keadm = |args: &[&str]| run_keadm(SHELLS[0], V, root, args, "");
        let old_pid = live_edgecore(root).expect("joined");

        let out = keadm(&["backup", "edge"]);
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        let backup = root.join("etc/kubeedge/backup").join(V);
        for f in ["edgecore.yaml", "edgecore"] {
            assert_eq!(
                fs::read(backup.join(f)).unwrap(),
                fs::read(root.join(if f == "edgecore" {
                    "usr/local/bin/edgecore"
                } else {
                    "etc/kubeedge/config/edgecore.yaml"
                }))
                .unwrap(),
                "{f}"
            );
        }

        // Unknown flags, as cobra refuses them; --image-digest is new in v1.23.
        let out = keadm(&["upgrade", "edge", "--foo"]);
        assert_eq!(out.status.code(), Some(1));
        assert_eq!(stderr(&out), "Error: unknown flag: --foo\n");
        let out = run_keadm(
            SHELLS[0],
            "v1.22.2",
            root,
            &["upgrade", "edge", "--image-digest=x"],
            "",
        );
        assert_eq!(stderr(&out), "Error: unknown flag: --image-digest\n");
        let out = run_keadm(
            SHELLS[0],
            "v1.22.2",
            root,
            &["upgrade", "edge", "--upgradeID=x"],
            "n\n",
        );
        assert_eq!(out.status.code(), Some(1));
        assert!(stderr(&out).starts_with(
            "Flag --upgradeID has been deprecated, For compatibility with historical versions, It will be removed in v1.23\n"
        ), "{}", stderr(&out));
        assert!(stderr(&out).ends_with("Error: aborted upgrade operation\n"));
        assert_eq!(live_edgecore(root), Some(old_pid), "nothing changed");

        // A wrong digest: refused after the pull, edgecore untouched.
        let wrong = format!("sha256:{}", "0".repeat(64));
        let out = keadm(&[
            "upgrade",
            "edge",
            "--toVersion",
            V,
            "--image-digest",
            &wrong,
            "--force",
        ]);
        assert_eq!(out.status.code(), Some(1));
        let prefix = "Error: invalid installation-package image digest value: sha256:";
        let err = stderr(&out);
        let last = err.lines().last().unwrap();
        assert!(last.starts_with(prefix), "{err}");
        let right = &last["Error: invalid installation-package image digest value: ".len()..];
        let manifest: Value = serde_json::from_slice(
            &fs::read(
                sample
                    .path()
                    .join("images/installation-package/blobs/sha256")
                    .join(&right[7..]),
            )
            .unwrap(),
        )
        .unwrap();
        assert!(
            manifest["layers"].is_array(),
            "the platform manifest's digest"
        );
        assert_eq!(live_edgecore(root), Some(old_pid), "nothing changed");

        let out = keadm(&[
            "upgrade",
            "edge",
            "--toVersion",
            V,
            "--image-digest",
            right,
            "--force",
        ]);
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        assert!(root
            .join("etc/kubeedge/upgrade")
            .join(V)
            .join("edgecore")
            .exists());
        wait_until("the new edgecore runs", || {
            live_edgecore(root).is_some_and(|pid| pid != old_pid)
        });

        // crash: upgrade exits 0, the new edgecore dies; rollback restarts.
        fs::write(root.join(&STANDIN_UPGRADE_FAULT_FILE[1..]), "crash\n").unwrap();
        let out = keadm(&["upgrade", "edge", "--toVersion", V, "--force"]);
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        wait_until("edgecore died", || live_edgecore(root).is_none());
        fs::remove_file(root.join(&STANDIN_UPGRADE_FAULT_FILE[1..])).unwrap();
        let out = keadm(&["rollback", "edge"]);
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        wait_until("edgecore runs again", || live_edgecore(root).is_some());

        // rollback-fail: upgrade fails with edgecore stopped, rollback fails.
        fs::write(root.join(&STANDIN_UPGRADE_FAULT_FILE[1..]), "rollback-fail").unwrap();
        let out = keadm(&["upgrade", "edge", "--toVersion", V, "--force"]);
        assert_eq!(out.status.code(), Some(1));
        assert!(stderr(&out).ends_with("Error: failed to start edgecore, err: exit status 1\n"));
        assert_eq!(live_edgecore(root), None);
        let out = keadm(&["rollback", "edge", "--historical-version", V]);
        assert_eq!(out.status.code(), Some(1));
        assert_eq!(live_edgecore(root), None);
        let out = keadm(&["rollback", "edge", "--historical-version", "v1.0.0"]);
        assert_eq!(
            stderr(&out),
            "Error: the historical version v1.0.0 is not exist in backup dir /etc/kubeedge/backup/\n"
        );
        fs::remove_file(root.join(&STANDIN_UPGRADE_FAULT_FILE[1..])).unwrap();
        let out = keadm(&["rollback", "edge", "--historical-version", V]);
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        wait_until("edgecore runs after the rollback", || {
            live_edgecore(root).is_some()
        });
    }

    #[test]
    fn standin_keadm_join_fails_like_the_real_one() {
        let sample = sample_dir();
        let layout = sample.path().join("images/installation-package");
        let mirror = Mirror::start(layout.clone(), false);
        let certport = cloudcore_listener();
        let fresh = || {
            let tmp = tempfile::tempdir().unwrap();
            write_hosts_toml(tmp.path(), "docker.io", &mirror.addr);
            write_containerd(tmp.path(), &mirror.addr, "");
            tmp
        };

        // No cloudcore listening.
        let tmp = fresh();
        let port = closed_port();
        let out = standin_join(tmp.path(), port, &[]);
        assert_eq!(out.status.code(), Some(1));
        assert_eq!(
            stderr(&out),
            format!(
                "Error: error making request: Get \"https://127.0.0.1:{port}/node/{node}\": \
                 dial tcp 127.0.0.1:{port}: connect: connection refused\n",
                node = uname_n()
            )
        );

        // No hosts.toml: containerd would go to the internet.
        let tmp = tempfile::tempdir().unwrap();
        let out = standin_join(tmp.path(), certport, &[]);
        assert_eq!(out.status.code(), Some(1));
        let err = stderr(&out);
        assert!(
            err.starts_with(&format!(
                "Error: failed to pull image \"docker.io/kubeedge/installation-package:{V}\": \
                 no mirror for docker.io in /etc/containerd/certs.d/docker.io/hosts.toml"
            )),
            "{err}"
        );
        assert!(err.contains("https://registry-1.docker.io") && err.contains("DeadlineExceeded"));
        assert!(!tmp.path().join("usr/local/bin/edgecore").exists());

        // A mirror that sends other bytes than the digest says.
        let tmp = fresh();
        let bad = Mirror::start(layout.clone(), true);
        write_hosts_toml(tmp.path(), "docker.io", &bad.addr);
        let out = standin_join(tmp.path(), certport, &[]);
        assert_eq!(out.status.code(), Some(1));
        assert!(stderr(&out).contains("digest mismatch"), "{}", stderr(&out));
        assert!(!tmp.path().join("usr/local/bin/edgecore").exists());

        // The fault file makes it fail after the image is in.
        let tmp = fresh();
        let state = tmp.path().join(&STANDIN_STATE_DIR[1..]);
        fs::create_dir_all(&state).unwrap();
        fs::write(tmp.path().join(&STANDIN_FAULT_FILE[1..]), "fail\n").unwrap();
        let out = standin_join(tmp.path(), certport, &[]);
        assert_eq!(out.status.code(), Some(1));
        assert_eq!(
            stderr(&out),
            "keadm (edgeferry SAMPLE stand-in): failing on purpose (fault file)\n"
        );
        assert!(stdout(&out)
            .ends_with("6. Copy resources from the image to the management directory\n"));
        assert!(tmp.path().join("usr/local/bin/edgecore").exists());
        assert!(!tmp
            .path()
            .join("etc/kubeedge/config/edgecore.yaml")
            .exists());

        // join-seconds delays it; an edgecore that cannot start times it out.
        let tmp = fresh();
        fs::create_dir_all(tmp.path().join(&STANDIN_STATE_DIR[1..])).unwrap();
        fs::write(tmp.path().join(&STANDIN_JOIN_SECONDS_FILE[1..]), "1\n").unwrap();
        // The log "file" is a directory, so the redirection fails and
        // edgecore never runs.
        fs::create_dir_all(tmp.path().join("var/log/kubeedge/edgecore.log")).unwrap();
        let started = std::time::Instant::now();
        let out = standin_join(tmp.path(), certport, &[(STANDIN_WAIT_ENV, "1")]);
        assert!(started.elapsed() >= std::time::Duration::from_secs(2));
        assert_eq!(out.status.code(), Some(1));
        assert!(
            stderr(&out)
                .ends_with("Error: edge node join failed: timed out waiting for the condition\n"),
            "{}",
            stderr(&out)
        );
        assert!(stdout(&out).contains("taking 1 more seconds (join-seconds file)"));
        assert!(!tmp
            .path()
            .join("etc/kubeedge/bootstrap-edgecore.conf")
            .exists());

        // A pre-run script that fails stops the join before any check.
        let tmp = fresh();
        let pre = tmp.path().join("pre.sh");
        fs::write(&pre, "exit 4\n").unwrap();
        let out = run_keadm(
            SHELLS[0],
            V,
            tmp.path(),
            &[
                "join",
                "-e",
                "127.0.0.1:10000",
                "--kubeedge-version",
                V,
                &format!("--pre-run={}", pre.display()),
            ],
            "",
        );
        assert_eq!(out.status.code(), Some(1));
        assert_eq!(
            stderr(&out),
            format!(
                "Error: failed to execute the pre-run script {}: exit status 4\n",
                pre.display()
            )
        );
    }

    /// The copy step's sandbox fails as containerd and runc make it fail:
    /// a sandbox image the mirror lacks, and oom_score_adj without
    /// CAP_SYS_RESOURCE unless containerd restricts it.
    #[test]
    fn standin_keadm_sandbox_fails_like_the_real_one() {
        let sample = sample_dir();
        let mirror = Mirror::start(sample.path().join("images/installation-package"), false);
        let certport = cloudcore_listener();
        let node = |extra: &str| {
            let tmp = tempfile::tempdir().unwrap();
            write_hosts_toml(tmp.path(), "docker.io", &mirror.addr);
            write_containerd(tmp.path(), &mirror.addr, extra);
            tmp
        };
        let last_line = |o: &Output| stderr(o).lines().last().unwrap_or("").to_string();

        let tmp = node("  sandbox_image = \"registry.k8s.io/pause:3.5\"\n");
        let out = standin_join(tmp.path(), certport, &[]);
        assert_eq!(out.status.code(), Some(1));
        let desc = "rpc error: code = DeadlineExceeded desc = failed to get sandbox image \"registry.k8s.io/pause:3.5\": \
            failed to pull image \"registry.k8s.io/pause:3.5\": \
            failed to pull and unpack image \"registry.k8s.io/pause:3.5\": \
            failed to resolve reference \"registry.k8s.io/pause:3.5\": \
            failed to do request: Head \"https://registry.k8s.io/v2/pause/manifests/3.5\": context deadline exceeded";
        assert_eq!(
            last_line(&out),
            format!("Error: edge node join failed: copy resources failed: {desc}")
        );
        let err = stderr(&out);
        assert!(
            err.starts_with('E')
                && err.contains(" remote_runtime.go:193] \"RunPodSandbox from runtime service failed\" err=\"rpc error: code = DeadlineExceeded desc = failed to get sandbox image \\\"registry.k8s.io/pause:3.5\\\""),
            "{err}"
        );
        assert!(stdout(&out).contains("HTTP 404"), "{}", stdout(&out));
        assert!(!tmp.path().join("usr/local/bin/edgecore").exists());

        // An unqualified name is Docker Hub's.
        let tmp = tempfile::tempdir().unwrap();
        write_hosts_toml(tmp.path(), "docker.io", &mirror.addr);
        fs::write(
            tmp.path().join("etc/containerd/config.toml"),
            "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\"]\n  restrict_oom_score_adj = true\n  sandbox_image = \"easzlab/pause:3.9\"\n",
        )
        .unwrap();
        let out = standin_join(tmp.path(), certport, &[]);
        assert!(
            last_line(&out).contains(
                "failed to get sandbox image \"easzlab/pause:3.9\": failed to pull image \"easzlab/pause:3.9\": failed to pull and unpack image \"docker.io/easzlab/pause:3.9\""
            ),
            "{}",
            stderr(&out)
        );
        assert!(last_line(&out)
            .contains("Head \"https://registry-1.docker.io/v2/easzlab/pause/manifests/3.9\""));

        // Without CAP_SYS_RESOURCE (dropped from the bounding set here) and
        // without restrict_oom_score_adj: runc 1.1's error.
        for (extra, refused) in [
            ("  restrict_oom_score_adj = false\n", true),
            ("  restrict_oom_score_adj = true\n", false),
        ] {
            let tmp = node(extra);
            let script = tmp.path().join("keadm");
            fs::write(&script, keadm_script(V).unwrap()).unwrap();
            let out = Command::new("setpriv")
                .args(["--bounding-set", "-sys_resource", "/bin/sh"])
                .arg(&script)
                .args([
                    "join",
                    "--cloudcore-ipport=127.0.0.1:10000",
                    "--kubeedge-version",
                    V,
                ])
                .arg(format!("--certport={certport}"))
                .env(SAMPLE_ROOT_ENV, tmp.path())
                .env(STANDIN_NO_CLOUD_ENV, "1")
                .env(STANDIN_WAIT_ENV, "0")
                .output()
                .unwrap();
            let _guard = KillEdgecore(tmp.path());
            let want = "Error: edge node join failed: copy resources failed: rpc error: code = Unknown desc = \
                failed to create containerd task: failed to create shim task: OCI runtime create failed: \
                runc create failed: unable to start container process: can't get final child's PID from pipe: EOF: unknown";
            if refused {
                assert_eq!(out.status.code(), Some(1));
                assert_eq!(last_line(&out), want, "{extra}");
                assert!(!tmp.path().join("usr/local/bin/edgecore").exists());
            } else {
                // Past the sandbox: edgecore was copied out of the image.
                assert!(
                    !stderr(&out).contains("copy resources failed"),
                    "{}",
                    stderr(&out)
                );
                assert!(tmp.path().join("usr/local/bin/edgecore").exists());
            }
        }
    }

    #[test]
    fn standin_keadm_hangs_on_purpose_until_killed() {
        let sample = sample_dir();
        let mirror = Mirror::start(sample.path().join("images/installation-package"), false);
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        write_hosts_toml(root, "docker.io", &mirror.addr);
        write_containerd(root, &mirror.addr, "");
        fs::create_dir_all(root.join(&STANDIN_STATE_DIR[1..])).unwrap();
        fs::write(root.join(&STANDIN_FAULT_FILE[1..]), "hang").unwrap();
        let script = root.join("keadm");
        fs::write(&script, keadm_script(V).unwrap()).unwrap();
        let mut child = Command::new("/bin/sh")
            .arg(&script)
            .args(["join", "-e", "127.0.0.1:10000", "--kubeedge-version", V])
            .arg(format!("--certport={}", cloudcore_listener()))
            .env(SAMPLE_ROOT_ENV, root)
            .env(STANDIN_NO_CLOUD_ENV, "1")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut err = std::io::BufReader::new(child.stderr.take().unwrap());
        let mut line = String::new();
        std::io::BufRead::read_line(&mut err, &mut line).unwrap();
        assert_eq!(
            line,
            "keadm (edgeferry SAMPLE stand-in): hanging on purpose (fault file)\n"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
        assert!(child.try_wait().unwrap().is_none(), "still hanging");
        child.kill().unwrap();
        assert!(!child.wait().unwrap().success());
    }

    fn uname_n() -> String {
        let out = Command::new("uname").arg("-n").output().unwrap();
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    }

    #[test]
    fn standin_keadm_reset_edge_removes_what_join_made() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        let made = [
            "etc/kubeedge/config",
            "etc/kubeedge/certs",
            "var/log/kubeedge",
            "var/lib/kubeedge",
            "var/lib/edged",
        ];
        for shell in SHELLS {
            for dir in made {
                fs::create_dir_all(root.join(dir)).unwrap();
            }
            fs::write(root.join("etc/kubeedge/.hidden"), "x").unwrap();
            fs::create_dir_all(root.join("usr/local/bin")).unwrap();
            fs::write(root.join("usr/local/bin/edgecore"), "x").unwrap();

            let out = run_keadm(shell, V, root, &["reset", "edge"], "n\n");
            assert_eq!(out.status.code(), Some(1));
            assert_eq!(stderr(&out), "Error: aborted reset operation\n");
            assert!(made.iter().all(|d| root.join(d).exists()));

            let out = run_keadm(shell, V, root, &["reset", "edge"], "y\n");
            assert!(out.status.success(), "{}", stderr(&out));
            assert_eq!(stderr(&out), "");
            assert!(stdout(&out).contains("stand-in"));
            for dir in [
                "etc/kubeedge",
                "var/log/kubeedge",
                "var/lib/kubeedge",
                "var/lib/edged",
            ] {
                assert!(!root.join(dir).exists(), "{shell:?} {dir}");
            }
            assert!(root.join("usr/local/bin/edgecore").exists());
            // Nothing to remove is fine too.
            let out = run_keadm(shell, V, root, &["reset", "edge", "--force"], "");
            assert!(out.status.success(), "{}", stderr(&out));
        }
    }

    #[test]
    fn standin_edgecore_writes_tls_files_and_keeps_running() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        let _guard = KillEdgecore(root);
        let bin = root.join("usr/local/bin");
        fs::create_dir_all(&bin).unwrap();
        let script = bin.join("edgecore");
        fs::write(&script, edgecore_script(V)).unwrap();
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).unwrap();

        let out = Command::new(&script).arg("--version").output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success());
        assert!(stdout.contains(V) && stdout.contains("stand-in"));

        let out = Command::new(&script)
            .env(SAMPLE_ROOT_ENV, root)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1));
        assert!(stderr(&out).contains("cannot read /etc/kubeedge/config/edgecore.yaml"));

        fs::create_dir_all(root.join("etc/kubeedge/config")).unwrap();
        fs::write(root.join("etc/kubeedge/config/edgecore.yaml"), "x: 1\n").unwrap();
        let mut child = Command::new(&script)
            .env(SAMPLE_ROOT_ENV, root)
            .env(STANDIN_NO_CLOUD_ENV, "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let files = [
            "etc/kubeedge/ca/rootCA.crt",
            "etc/kubeedge/certs/server.crt",
            "etc/kubeedge/certs/server.key",
        ];
        wait_until("the TLS files are there", || {
            files.iter().all(|f| root.join(f).exists())
        });
        for f in files {
            let text = fs::read_to_string(root.join(f)).unwrap();
            assert!(text.starts_with("-----BEGIN "), "{f}");
            assert!(text.contains("edgeferry SAMPLE stand-in"), "{f}");
            assert!(text.contains("not a "), "{f}");
        }
        let mode = fs::metadata(root.join(files[2]))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        wait_until("the pid file is there", || live_edgecore(root).is_some());
        assert_eq!(live_edgecore(root), Some(child.id()), "relaunched in place");
        std::thread::sleep(std::time::Duration::from_millis(300));
        assert!(child.try_wait().unwrap().is_none(), "keeps running");
        let cmdline = fs::read(format!("/proc/{}/cmdline", child.id())).unwrap();
        let argv0 = cmdline.split(|b| *b == 0).next().unwrap();
        assert!(argv0.ends_with(b"/edgecore"), "pidof finds it by argv[0]");
        assert_eq!(
            fs::read_to_string(format!("/proc/{}/comm", child.id())).unwrap(),
            "edgecore\n"
        );

        Command::new("kill")
            .arg(child.id().to_string())
            .status()
            .unwrap();
        let status = child.wait().unwrap();
        assert!(status.success(), "SIGTERM stops it cleanly: {status:?}");
        assert!(!root.join(&STANDIN_EDGECORE_PID_FILE[1..]).exists());
    }

    #[test]
    fn standin_paths_share_one_state_dir() {
        for file in [
            STANDIN_FAULT_FILE,
            STANDIN_JOIN_SECONDS_FILE,
            STANDIN_EDGECORE_PID_FILE,
            STANDIN_UPGRADE_FAULT_FILE,
            STANDIN_UPGRADE_SECONDS_FILE,
            STANDIN_EDGECORE_CRASH_FILE,
        ] {
            assert_eq!(Path::new(file).parent(), Some(Path::new(STANDIN_STATE_DIR)));
        }
        let (keadm, edgecore) = (keadm_script(V).unwrap(), edgecore_script(V));
        for placeholder in [
            "@VERSION@",
            "@ROOT_ENV@",
            "@WAIT_ENV@",
            "@STATE_DIR@",
            "@JOIN_PARSER@",
            "@RESET_PARSER@",
            "@EDGE_PARSERS@",
            "@EDGE_COMMANDS@",
            "@REQUIRED@",
            "@USAGE@",
        ] {
            assert!(!keadm.contains(placeholder) && !edgecore.contains(placeholder));
        }
        assert!(keadm.contains("\nSTATE=$ROOT/var/lib/keadm-standin\n"));
        assert!(keadm.contains("\"$STATE/fault\""));
        assert!(keadm.contains("\"$STATE/join-seconds\""));
        assert!(keadm.contains("\"$STATE/upgrade-fault\""));
        assert!(keadm.contains("\"$STATE/upgrade-seconds\""));
        assert!(keadm.contains("\"$STATE/edgecore-crash\""));
        assert!(edgecore.contains("\npidfile=$ROOT/var/lib/keadm-standin/edgecore.pid\n"));
        assert!(edgecore.contains("\ncrash=$ROOT/var/lib/keadm-standin/edgecore-crash\n"));
    }

    #[test]
    fn versions_outside_the_flag_table_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        for bad in ["v1.20.0", "1.23.1", "v1.23", "v2.0.0", "v1.23.1 x"] {
            let err = write_sample_dir(tmp.path(), &SampleSpec::for_version(bad)).unwrap_err();
            let msg = err.to_string();
            assert!(!msg.contains('\n') && msg.contains(bad.trim()), "{msg}");
        }
        assert!(keadm_script("v1.20.0").is_err());
        assert_eq!(keadm::minor_of("v1.22.0-rc.1").unwrap(), 22);
    }

    #[test]
    fn elf_interpreter_is_detected() {
        // Minimal ELF64 little-endian header with one program header at 64.
        let mut elf = vec![0u8; 64 + 56];
        elf[..6].copy_from_slice(b"\x7fELF\x02\x01");
        elf[0x20] = 64;
        elf[0x36] = 56;
        elf[0x38] = 1;
        elf[64] = 1; // PT_LOAD
        assert_eq!(check_static_elf(&elf), Ok(()));
        elf[64] = 3; // PT_INTERP
        assert!(check_static_elf(&elf)
            .unwrap_err()
            .contains("dynamically linked"));
        elf[64] = 1;
        elf[0x38] = 2;
        assert!(check_static_elf(&elf).unwrap_err().contains("truncated"));
        assert!(check_static_elf(b"#!/bin/sh\n").is_err());
        assert!(check_static_elf(&fs::read("/bin/busybox").unwrap()).is_ok());
        assert_eq!(busybox_path().unwrap(), Path::new("/bin/busybox"));
    }
}
