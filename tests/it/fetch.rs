//! `edgeferry-builder bundle` without `--from`: release assets from an HTTP
//! server, images from a real `docker-registry` filled with skopeo, and the
//! result compared with a `--from` build of the same content.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use edgeferry_tests::fetch_fixtures::*;
use edgeferry_tests::*;

const EPOCH: u64 = 1_763_000_000;
const VERSION: &str = "v1.23.1";
const SHARED_IMAGE: &str = "docker.io/edgeferry/shared-base:1";

/// A connected site: a sample artifact directory, the same content on a
/// release server and in a registry, and a signing key.
struct Site {
    tmp: tempfile::TempDir,
    key: PathBuf,
    from: PathBuf,
    release: ReleaseServer,
    registry: Option<Registry>,
}

/// `tweak` may change the sample directory before anything is served.
fn site(registry: RegistryKind, tweak: impl FnOnce(&Path)) -> Site {
    let tmp = tempfile::tempdir().unwrap();
    let (key, _) = keygen(&tmp.path().join("keys"));
    let from = tmp.path().join("from");
    run_ok(builder().args(["sample", "--out"]).arg(&from));
    tweak(&from);
    let release_root = tmp.path().join("release");
    release_tree(&from.join("files"), &release_root, VERSION);
    let release = ReleaseServer::start(&release_root);
    let registry = match registry {
        RegistryKind::None => None,
        RegistryKind::Anonymous => Some(Registry::start(&tmp.path().join("registry"))),
        RegistryKind::Basic(user, password) => Some(Registry::start_with_basic_auth(
            &tmp.path().join("registry"),
            user,
            password,
        )),
    };
    if let Some(registry) = &registry {
        for layout in std::fs::read_dir(from.join("images")).unwrap() {
            let layout = layout.unwrap().path();
            registry.push(&layout, &registry_name(&layout));
        }
    }
    std::fs::create_dir_all(tmp.path().join("home")).unwrap();
    Site {
        tmp,
        key,
        from,
        release,
        registry,
    }
}

enum RegistryKind {
    None,
    Anonymous,
    Basic(&'static str, &'static str),
}

/// The name a layout carries, without its registry host: what the mirror
/// serves it as (`docker.io/kubeedge/x:1` -> `kubeedge/x:1`).
fn registry_name(layout: &Path) -> String {
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    let name = index["manifests"][0]["annotations"]["io.containerd.image.name"]
        .as_str()
        .unwrap();
    name.split_once('/').unwrap().1.to_string()
}

impl Site {
    fn path(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }

    fn registry(&self) -> &Registry {
        self.registry.as_ref().expect("this site has a registry")
    }

    /// `bundle` online, with both registries mirrored to the test registry
    /// and a HOME of its own (no docker config unless a test adds one).
    fn online(&self, arch: &str, out: &str, cache: &str) -> Command {
        self.online_from(&self.release.url(), arch, out, cache)
    }

    /// As [`Site::online`], with another `--release-base-url`.
    fn online_from(&self, release_url: &str, arch: &str, out: &str, cache: &str) -> Command {
        let registry_url = match &self.registry {
            Some(r) => r.url(),
            // Never reached: the tests without a registry fail earlier.
            None => self.release.url(),
        };
        let mut cmd = builder();
        cmd.args(["bundle", "--arch", arch, "--kubeedge-version", VERSION])
            .arg("--registry-mirror")
            .arg(format!("docker.io={registry_url}"))
            .arg("--registry-mirror")
            .arg(format!("registry.k8s.io={registry_url}"))
            .arg("--release-base-url")
            .arg(release_url)
            .arg("--cache")
            .arg(self.path(cache))
            .arg("--key")
            .arg(&self.key)
            .arg("--out")
            .arg(self.path(out))
            .env("SOURCE_DATE_EPOCH", EPOCH.to_string())
            .env("HOME", self.path("home"))
            .env_remove("DOCKER_CONFIG")
            .env_remove("XDG_CACHE_HOME");
        for proxy in [
            "HTTPS_PROXY",
            "https_proxy",
            "HTTP_PROXY",
            "http_proxy",
            "ALL_PROXY",
            "all_proxy",
        ] {
            cmd.env_remove(proxy);
        }
        cmd
    }

    /// The same bundle `--from` the sample directory.
    fn build_from(&self, arch: &str, out: &str, extra: &[&str]) {
        run_ok(
            builder()
                .args(["bundle", "--arch", arch, "--kubeedge-version", VERSION])
                .arg("--from")
                .arg(&self.from)
                .args(extra)
                .arg("--key")
                .arg(&self.key)
                .arg("--out")
                .arg(self.path(out))
                .env("SOURCE_DATE_EPOCH", EPOCH.to_string()),
        );
    }

    fn assert_identical(&self, a: &str, b: &str) {
        let names = list_files(&self.path(a));
        assert_eq!(names, list_files(&self.path(b)));
        // The bundle, its signature, its SBOM beside it, SHA256SUMS.
        assert_eq!(names.len(), 4, "{names:?}");
        for name in names {
            let x = std::fs::read(self.path(a).join(&name)).unwrap();
            let y = std::fs::read(self.path(b).join(&name)).unwrap();
            assert!(x == y, "{a}/{name} and {b}/{name} differ");
        }
    }
}

/// Runs, expects exit 1 with a one-line error and nothing in `out`.
fn fails(cmd: &mut Command, out: &Path) -> String {
    let ran = run(cmd);
    assert!(!ran.ok, "succeeded but should not have: {}", ran.stdout);
    assert_eq!(ran.code, Some(1), "{}", ran.stderr);
    let lines: Vec<&str> = ran.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "error is not one line: {}", ran.stderr);
    let left = list_files(out);
    assert!(left.is_empty(), "a failed build left {left:?}");
    eprintln!("expected error: {}", lines[0]);
    lines[0].to_string()
}

/// Every file name below `dir` ending in `.partial`.
fn partial_files(dir: &Path) -> Vec<String> {
    list_files(dir)
        .into_iter()
        .filter(|f| f.ends_with(".partial"))
        .collect()
}

fn sha512_hex(data: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha512::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[test]
fn online_bundle_is_byte_identical_to_a_from_bundle() {
    let site = site(RegistryKind::Anonymous, |_| {});

    // --dry-run asks the servers for sizes and writes nothing.
    let ran = run_ok(
        site.online("amd64", "dry", "cache")
            .args(["--dry-run", "--json"]),
    );
    let plan: serde_json::Value = serde_json::from_str(&ran.stdout).unwrap();
    assert_eq!(
        plan["origin"]["online"]["release_base_url"],
        site.release.url()
    );
    let keadm = std::fs::read(site.from.join("files/keadm-v1.23.1-linux-amd64.tar.gz")).unwrap();
    let files = plan["fetch"]["files"].as_array().unwrap();
    assert_eq!(
        files[0]["url"],
        format!(
            "{}/v1.23.1/keadm-v1.23.1-linux-amd64.tar.gz",
            site.release.url()
        )
    );
    assert_eq!(files[0]["size"], keadm.len());
    assert_eq!(files[0]["cached"], false);
    let images = plan["fetch"]["images"].as_array().unwrap();
    assert_eq!(images.len(), 5, "three of them pause images");
    for image in images {
        assert!(image["index_digest"].is_string(), "{image}");
        let blobs = image["blobs"].as_array().unwrap();
        assert!(blobs.len() >= 4, "index, manifest, config, layer: {image}");
        assert!(blobs
            .iter()
            .all(|b| b["size"].as_u64().unwrap() > 0 && b["cached"] == false));
    }
    assert!(plan["fetch"]["download_bytes"].as_u64().unwrap() > keadm.len() as u64);
    assert!(!site.path("cache").exists(), "--dry-run wrote the cache");
    assert!(!site.path("dry").exists(), "--dry-run wrote --out");

    let ran = run_ok(site.online("amd64", "online", "cache").arg("--json"));
    let summary: serde_json::Value = serde_json::from_str(&ran.stdout).unwrap();
    assert_eq!(summary["sample"], false);
    site.build_from("amd64", "from-out", &[]);
    site.assert_identical("online", "from-out");
    assert!(partial_files(&site.path("cache")).is_empty());
}

#[test]
fn an_interrupted_download_resumes_instead_of_restarting() {
    let site = site(RegistryKind::Anonymous, |_| {});
    let path = "/v1.23.1/keadm-v1.23.1-linux-amd64.tar.gz";
    let size = std::fs::metadata(site.from.join("files/keadm-v1.23.1-linux-amd64.tar.gz"))
        .unwrap()
        .len();
    let cut = size / 2;
    site.release.cut_once(path, cut);
    run_ok(&mut site.online("amd64", "online", "cache"));

    let gets: Vec<ServedRequest> = site
        .release
        .requests_for(path)
        .into_iter()
        .filter(|r| r.method == "GET")
        .collect();
    assert_eq!(gets.len(), 2, "one cut download and one resume: {gets:?}");
    assert_eq!(
        (gets[0].status, gets[0].range_start, gets[0].bytes),
        (200, None, cut)
    );
    assert_eq!(
        (gets[1].status, gets[1].range_start, gets[1].bytes),
        (206, Some(cut), size - cut),
        "the second request asks only for the rest: {gets:?}"
    );
    // And the result is right: the same bundle as from the files themselves.
    site.build_from("amd64", "from-out", &[]);
    site.assert_identical("online", "from-out");
    assert!(partial_files(&site.path("cache")).is_empty());
}

#[test]
fn a_wrong_checksum_file_names_both_digests_and_leaves_nothing() {
    // Release assets are fetched before any image, so no registry is needed.
    let site = site(RegistryKind::None, |_| {});
    let asset = "keadm-v1.23.1-linux-arm64.tar.gz";
    let actual = sha512_hex(&std::fs::read(site.from.join("files").join(asset)).unwrap());
    let wrong = "ab".repeat(64);
    std::fs::write(
        site.path("release/v1.23.1")
            .join(format!("checksum_{asset}.txt")),
        format!("{wrong}\n"),
    )
    .unwrap();
    let err = fails(&mut site.online("arm64", "out", "cache"), &site.path("out"));
    assert!(err.contains(asset), "{err}");
    assert!(err.contains(&wrong), "{err}");
    assert!(err.contains(&actual), "{err}");
    // Neither a complete nor a partial asset is kept.
    let cached = list_files(&site.path("cache"));
    assert!(
        cached.iter().all(|f| !f.starts_with("blobs/sha512/")),
        "{cached:?}"
    );
    assert!(partial_files(&site.path("cache")).is_empty(), "{cached:?}");
}

#[test]
fn a_second_arch_reuses_cached_blobs() {
    let mut shared = String::new();
    let site = site(RegistryKind::Anonymous, |from| {
        shared = write_shared_base_image(
            &from.join("images/shared-base"),
            SHARED_IMAGE,
            &["amd64", "arm64"],
        );
    });
    let registry = site.registry();

    run_ok(
        site.online("amd64", "amd64", "cache")
            .args(["--image", SHARED_IMAGE]),
    );
    let first = registry.blob_gets();
    let unique: BTreeSet<&String> = first.iter().collect();
    assert_eq!(
        unique.len(),
        first.len(),
        "a blob was fetched twice: {first:?}"
    );
    assert!(first.contains(&shared), "{first:?}");
    let keadm_gets = |arch: &str| {
        site.release
            .requests_for(&format!("/v1.23.1/keadm-v1.23.1-linux-{arch}.tar.gz"))
            .iter()
            .filter(|r| r.method == "GET")
            .count()
    };
    assert_eq!(keadm_gets("amd64"), 1);

    // A rerun downloads nothing: no blob, no manifest, no release asset.
    let before = registry.builder_requests().len();
    run_ok(
        site.online("amd64", "amd64-again", "cache")
            .args(["--image", SHARED_IMAGE]),
    );
    let rerun: Vec<Logged> = registry.builder_requests().split_off(before);
    assert!(
        rerun.iter().all(|r| r.method == "HEAD"),
        "a rerun only asks which digest each tag names: {rerun:?}"
    );
    // One per image: installation-package, three pause, mosquitto, the extra.
    assert_eq!(rerun.len(), 6, "{rerun:?}");
    assert_eq!(keadm_gets("amd64"), 1);
    site.assert_identical("amd64", "amd64-again");

    // The dry run for arm64 knows what is cached already...
    let ran = run_ok(site.online("arm64", "dry", "cache").args([
        "--image",
        SHARED_IMAGE,
        "--dry-run",
        "--json",
    ]));
    let plan: serde_json::Value = serde_json::from_str(&ran.stdout).unwrap();
    let mut expected = BTreeSet::new();
    for image in plan["fetch"]["images"].as_array().unwrap() {
        for blob in image["blobs"].as_array().unwrap() {
            let digest = blob["digest"].as_str().unwrap().to_string();
            let manifest = digest == image["manifest_digest"] || digest == image["index_digest"];
            if digest == shared {
                assert_eq!(blob["cached"], true, "{blob}");
            }
            if !manifest && blob["cached"] == false {
                expected.insert(digest);
            }
        }
    }
    // ...and the arm64 build fetches exactly the blobs it did not have.
    let before = registry.blob_gets().len();
    run_ok(
        site.online("arm64", "arm64", "cache")
            .args(["--image", SHARED_IMAGE]),
    );
    let second: Vec<String> = registry.blob_gets().split_off(before);
    let fetched: BTreeSet<String> = second.iter().cloned().collect();
    assert_eq!(
        fetched.len(),
        second.len(),
        "a blob was fetched twice: {second:?}"
    );
    assert!(
        !fetched.contains(&shared),
        "the shared layer was fetched again"
    );
    assert_eq!(fetched, expected);
    assert_eq!(keadm_gets("arm64"), 1);

    site.build_from("arm64", "arm64-from", &["--image", SHARED_IMAGE]);
    site.assert_identical("arm64", "arm64-from");
}

#[test]
fn basic_auth_takes_credentials_from_a_docker_config() {
    const USER: &str = "edge";
    const PASSWORD: &str = "c0rrect:horse battery";
    let site = site(RegistryKind::Basic(USER, PASSWORD), |_| {});
    let host = site.registry().addr.clone();
    let encoded = edgeferry_bundle::sign::base64(format!("{USER}:{PASSWORD}").as_bytes());
    let write_config = |dir: &str, auth: &str| {
        let dir = site.path(dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("config.json"),
            format!(r#"{{"auths":{{"{host}":{{"auth":"{auth}"}}}}}}"#),
        )
        .unwrap();
        dir
    };
    let no_secrets = |text: &str| {
        assert!(
            !text.contains(PASSWORD) && !text.contains(&encoded),
            "credentials printed: {text}"
        );
    };

    // Without credentials: one line saying what to do.
    let err = fails(
        &mut site.online("amd64", "none", "cache-none"),
        &site.path("none"),
    );
    assert!(err.contains(&site.registry().url()), "{err}");
    assert!(err.contains("--docker-config"), "{err}");
    assert!(
        err.contains("docker.io/kubeedge/installation-package:v1.23.1"),
        "{err}"
    );

    // Wrong password, through DOCKER_CONFIG: refused, and the password is not shown.
    let wrong = edgeferry_bundle::sign::base64(format!("{USER}:not-{PASSWORD}").as_bytes());
    let bad = write_config("docker-bad", &wrong);
    let err = fails(
        site.online("amd64", "bad", "cache-bad")
            .env("DOCKER_CONFIG", &bad),
        &site.path("bad"),
    );
    assert!(err.contains("refused"), "{err}");
    assert!(
        !err.contains(&wrong) && !err.contains("not-c0rrect"),
        "{err}"
    );

    // Right password with --docker-config FILE, and with DOCKER_CONFIG=DIR.
    let good = write_config("docker-good", &encoded);
    let ran = run_ok(
        site.online("amd64", "flag", "cache-flag")
            .arg("--docker-config")
            .arg(good.join("config.json")),
    );
    no_secrets(&(ran.stdout + &ran.stderr));
    let ran = run_ok(
        site.online("amd64", "env", "cache-env")
            .env("DOCKER_CONFIG", &good),
    );
    no_secrets(&(ran.stdout + &ran.stderr));
    site.build_from("amd64", "from-out", &[]);
    site.assert_identical("flag", "from-out");
    site.assert_identical("env", "from-out");
    let requests = site.registry().builder_requests();
    assert!(
        requests
            .iter()
            .any(|r| r.message.contains("basic authentication challenge")),
        "the registry did ask for credentials"
    );
}

#[test]
fn https_proxy_is_used_and_no_proxy_bypasses_it() {
    let site = site(RegistryKind::Anonymous, |_| {});
    let proxy = ConnectProxy::start();
    // Release assets through the proxy (as localhost), images direct (127.0.0.1).
    let release_port = site.release.addr.rsplit(':').next().unwrap();
    let via_proxy = format!("http://localhost:{release_port}");
    run_ok(
        site.online_from(&via_proxy, "amd64", "online", "cache")
            .env("HTTPS_PROXY", proxy.url())
            .env("NO_PROXY", "127.0.0.1"),
    );
    let targets = proxy.targets();
    assert!(!targets.is_empty(), "the proxy was not used");
    assert!(
        targets
            .iter()
            .all(|t| *t == format!("localhost:{release_port}")),
        "only the release server goes through the proxy: {targets:?}"
    );
    assert!(!site.registry().blob_gets().is_empty());
    site.build_from("amd64", "from-out", &[]);
    site.assert_identical("online", "from-out");
}

#[test]
fn a_missing_tag_or_platform_is_one_line_naming_image_and_arch() {
    let site = site(RegistryKind::Anonymous, |from| {
        drop_platform(&from.join("images/mosquitto"), "arm64");
    });
    let err = fails(&mut site.online("arm64", "out", "cache"), &site.path("out"));
    assert!(
        err.contains("docker.io/library/eclipse-mosquitto:1.6.15"),
        "{err}"
    );
    assert!(err.contains("linux/arm64"), "{err}");
    assert!(err.contains("linux/amd64"), "says what it does have: {err}");

    let err = fails(
        site.online("amd64", "out", "cache")
            .args(["--image", "docker.io/library/nope:1"]),
        &site.path("out"),
    );
    assert!(err.contains("docker.io/library/nope:1"), "{err}");
    assert!(err.contains("linux/amd64"), "{err}");
    assert!(err.contains("not found"), "{err}");
}
