//! `edgeferry-builder bundle`: what an operator can check with stock tools,
//! reproducibility, and clean failures.

use std::path::Path;
use std::process::Command;

use edgeferry_tests::*;

const EPOCH: u64 = 1_763_000_000;

#[test]
fn sample_arm64_bundle_passes_stock_tools() {
    for (cmd, pkg) in [
        ("minisign", "minisign"),
        ("skopeo", "skopeo"),
        ("zstd", "zstd"),
    ] {
        require_tool(cmd, pkg);
    }
    let tmp = tempfile::tempdir().unwrap();
    let (key, public) = keygen(&tmp.path().join("keys"));
    let out = tmp.path().join("out");
    let bundle = sample_bundle("arm64", "v1.23.1", &key, &out, EPOCH);
    assert_eq!(
        list_files(&out),
        [
            "SHA256SUMS",
            "edgeferry-kubeedge-v1.23.1-linux-arm64.tar.zst",
            "edgeferry-kubeedge-v1.23.1-linux-arm64.tar.zst.minisig",
            "edgeferry-kubeedge-v1.23.1-linux-arm64.tar.zst.sbom.cdx.json"
        ]
    );
    run_ok(
        Command::new("sha256sum")
            .args(["-c", "SHA256SUMS"])
            .current_dir(&out),
    );
    run_ok(
        Command::new("minisign")
            .arg("-Vm")
            .arg(&bundle)
            .arg("-p")
            .arg(&public),
    );

    let listing = run_ok(Command::new("tar").arg("--zstd").arg("-tf").arg(&bundle)).stdout;
    let names: Vec<&str> = listing.lines().collect();
    assert_eq!(names[0], "manifest.json");
    assert_eq!(names[1], "manifest.json.minisig");
    assert_eq!(names[2], "sbom.cdx.json");
    assert!(names.contains(&"files/keadm-v1.23.1-linux-arm64.tar.gz"));
    assert!(names.contains(&"files/checksum_keadm-v1.23.1-linux-arm64.tar.gz.txt"));
    assert!(names.contains(&"images/oci-layout"));
    assert!(names.contains(&"images/index.json"));
    let blobs: Vec<&&str> = names
        .iter()
        .filter(|n| n.starts_with("images/blobs/sha256/"))
        .collect();
    let unique: std::collections::BTreeSet<&&&str> = blobs.iter().collect();
    assert_eq!(blobs.len(), unique.len(), "a blob is stored twice");

    let unpacked = tmp.path().join("unpacked");
    std::fs::create_dir(&unpacked).unwrap();
    run_ok(
        Command::new("tar")
            .arg("--zstd")
            .arg("-xf")
            .arg(&bundle)
            .arg("-C")
            .arg(&unpacked),
    );
    run_ok(
        Command::new("minisign")
            .arg("-Vm")
            .arg(unpacked.join("manifest.json"))
            .arg("-x")
            .arg(unpacked.join("manifest.json.minisig"))
            .arg("-p")
            .arg(&public),
    );
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(unpacked.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["arch"], "arm64");
    assert_eq!(manifest["sample"], true);
    // The release tarball is byte-identical and matches its upstream-format checksum file.
    let tarball = std::fs::read(unpacked.join("files/keadm-v1.23.1-linux-arm64.tar.gz")).unwrap();
    let checksum = std::fs::read_to_string(
        unpacked.join("files/checksum_keadm-v1.23.1-linux-arm64.tar.gz.txt"),
    )
    .unwrap();
    let sha512 = run_ok(
        Command::new("sha512sum").arg(unpacked.join("files/keadm-v1.23.1-linux-arm64.tar.gz")),
    )
    .stdout;
    assert_eq!(checksum.trim(), sha512.split_whitespace().next().unwrap());
    assert!(!tarball.is_empty());

    let references: Vec<String> = manifest["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["reference"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        references,
        [
            "docker.io/kubeedge/installation-package:v1.23.1",
            "registry.k8s.io/pause:3.6",
            "registry.k8s.io/pause:3.8",
            "registry.k8s.io/pause:3.10",
            "docker.io/library/eclipse-mosquitto:1.6.15"
        ]
    );
    for (image, reference) in manifest["images"]
        .as_array()
        .unwrap()
        .iter()
        .zip(&references)
    {
        let inspected = run_ok(Command::new("skopeo").arg("inspect").arg(format!(
            "oci:{}:{reference}",
            unpacked.join("images").display()
        )));
        let inspected: serde_json::Value = serde_json::from_str(&inspected.stdout).unwrap();
        assert_eq!(inspected["Architecture"], "arm64", "{reference}");
        assert_eq!(inspected["Os"], "linux");
        assert_eq!(inspected["Digest"], image["manifest_digest"]);
        // The upstream multi-arch index is in the bundle, byte-exact, so a
        // pull by its digest can work after loading.
        let index_digest = image["index_digest"]
            .as_str()
            .expect("sample images are multi-arch");
        let index_path = unpacked
            .join("images/blobs/sha256")
            .join(&index_digest[7..]);
        let index_bytes = std::fs::read(index_path).unwrap();
        assert_eq!(format!("sha256:{}", sha256_hex(&index_bytes)), index_digest);
    }
}

#[test]
fn same_inputs_and_source_date_epoch_give_identical_bytes() {
    let tmp = tempfile::tempdir().unwrap();
    let (key, _) = keygen(&tmp.path().join("keys"));
    let first = tmp.path().join("first");
    let second = tmp.path().join("second");
    sample_bundle("amd64", "v1.22.0", &key, &first, EPOCH);
    sample_bundle("amd64", "v1.22.0", &key, &second, EPOCH);
    let names = list_files(&first);
    assert_eq!(names, list_files(&second));
    assert_eq!(names.len(), 4);
    for name in names {
        let a = std::fs::read(first.join(&name)).unwrap();
        let b = std::fs::read(second.join(&name)).unwrap();
        assert!(
            a == b,
            "{name} differs between two builds of the same inputs"
        );
    }
    // And a different time gives a different bundle (the sequence changes).
    let third = tmp.path().join("third");
    sample_bundle("amd64", "v1.22.0", &key, &third, EPOCH + 1);
    let name = "edgeferry-kubeedge-v1.22.0-linux-amd64.tar.zst";
    assert_ne!(
        std::fs::read(first.join(name)).unwrap(),
        std::fs::read(third.join(name)).unwrap()
    );
}

/// A sample artifact directory to break in a test.
fn sample_dir(dir: &Path) -> std::path::PathBuf {
    let from = dir.join("from");
    run_ok(builder().args(["sample", "--out"]).arg(&from));
    from
}

/// Builds from `from`, expects failure, and returns the one-line error.
fn build_fails(from: &Path, key: &Path, out: &Path, arch: &str) -> String {
    let ran = run(builder()
        .args([
            "bundle",
            "--arch",
            arch,
            "--kubeedge-version",
            "v1.23.1",
            "--from",
        ])
        .arg(from)
        .arg("--key")
        .arg(key)
        .arg("--out")
        .arg(out));
    assert!(
        !ran.ok,
        "build succeeded but should not have: {}",
        ran.stdout
    );
    assert_eq!(ran.code, Some(1));
    let lines: Vec<&str> = ran.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "error is not one line: {}", ran.stderr);
    let leftovers = list_files(out);
    assert!(
        leftovers.is_empty(),
        "a failed build left {leftovers:?} in --out"
    );
    lines[0].to_string()
}

#[test]
fn a_wrong_checksum_names_the_file_and_both_digests() {
    let tmp = tempfile::tempdir().unwrap();
    let (key, _) = keygen(&tmp.path().join("keys"));
    let from = sample_dir(tmp.path());
    let asset = from.join("files/keadm-v1.23.1-linux-arm64.tar.gz");
    let checksum = from.join("files/checksum_keadm-v1.23.1-linux-arm64.tar.gz.txt");
    let wrong = "ab".repeat(64);
    std::fs::write(&checksum, format!("{wrong}\n")).unwrap();
    let actual = run_ok(Command::new("sha512sum").arg(&asset)).stdout;
    let actual = actual.split_whitespace().next().unwrap();
    let err = build_fails(&from, &key, &tmp.path().join("out"), "arm64");
    assert!(err.contains("keadm-v1.23.1-linux-arm64.tar.gz"), "{err}");
    assert!(err.contains(&wrong), "{err}");
    assert!(err.contains(actual), "{err}");
}

#[test]
fn a_missing_asset_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let (key, _) = keygen(&tmp.path().join("keys"));
    let from = sample_dir(tmp.path());
    std::fs::remove_file(from.join("files/keadm-v1.23.1-linux-arm.tar.gz")).unwrap();
    let err = build_fails(&from, &key, &tmp.path().join("out"), "arm");
    assert!(err.contains("missing release asset"), "{err}");
    assert!(err.contains("keadm-v1.23.1-linux-arm.tar.gz"), "{err}");
}

#[test]
fn an_image_without_the_arch_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let (key, _) = keygen(&tmp.path().join("keys"));
    let from = sample_dir(tmp.path());
    let mosquitto = from.join("images/mosquitto");
    std::fs::remove_dir_all(&mosquitto).unwrap();
    write_single_arch_layout(
        &mosquitto,
        "docker.io/library/eclipse-mosquitto:1.6.15",
        "amd64",
    );
    let err = build_fails(&from, &key, &tmp.path().join("out"), "arm64");
    assert!(
        err.contains("docker.io/library/eclipse-mosquitto:1.6.15"),
        "{err}"
    );
    assert!(err.contains("arm64"), "{err}");
    assert!(err.contains("amd64"), "says what it does have: {err}");
}

#[test]
fn a_corrupt_layer_aborts_the_pack_and_leaves_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let (key, _) = keygen(&tmp.path().join("keys"));
    let from = sample_dir(tmp.path());
    // The largest blob of the installation-package layout is a layer, which
    // is only read while streaming into the bundle.
    let blobs = from.join("images/installation-package/blobs/sha256");
    let largest = std::fs::read_dir(&blobs)
        .unwrap()
        .flatten()
        .max_by_key(|e| e.metadata().unwrap().len())
        .unwrap()
        .path();
    let mut bytes = std::fs::read(&largest).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    std::fs::write(&largest, bytes).unwrap();
    let hex = largest.file_name().unwrap().to_string_lossy().into_owned();
    // Whichever arch's layer it is, one of the builds streams it.
    let mut errors = Vec::new();
    for arch in ["amd64", "arm64", "arm"] {
        let out = tmp.path().join(format!("out-{arch}"));
        let ran = run(builder()
            .args([
                "bundle",
                "--arch",
                arch,
                "--kubeedge-version",
                "v1.23.1",
                "--from",
            ])
            .arg(&from)
            .arg("--key")
            .arg(&key)
            .arg("--out")
            .arg(&out));
        if !ran.ok {
            assert!(
                list_files(&out).is_empty(),
                "failed build left files in {}",
                out.display()
            );
            errors.push(ran.stderr);
        }
    }
    assert_eq!(
        errors.len(),
        1,
        "exactly one arch uses that layer: {errors:?}"
    );
    assert!(errors[0].contains(&hex), "{}", errors[0]);
    assert!(errors[0].contains("expected sha256"), "{}", errors[0]);
}

#[test]
fn an_encrypted_key_needs_its_password_and_never_prompts_without_a_terminal() {
    let tmp = tempfile::tempdir().unwrap();
    let keys = tmp.path().join("keys");
    run_ok(
        builder()
            .args(["keygen", "--out"])
            .arg(&keys)
            .env("EDGEFERRY_KEY_PASSWORD", "correct horse"),
    );
    let secret = std::fs::read_to_string(keys.join("edgeferry.key")).unwrap();
    assert!(!secret.contains("correct horse"));
    let bundle = |password: Option<&str>| {
        let mut cmd = builder();
        cmd.args([
            "bundle",
            "--sample",
            "--arch",
            "amd64",
            "--kubeedge-version",
            "v1.23.1",
            "--key",
        ])
        .arg(keys.join("edgeferry.key"))
        .arg("--out")
        .arg(tmp.path().join("out"))
        .stdin(std::process::Stdio::null());
        if let Some(pw) = password {
            cmd.env("EDGEFERRY_KEY_PASSWORD", pw);
        }
        run(&mut cmd)
    };
    let no_password = bundle(None);
    assert!(!no_password.ok);
    assert!(
        no_password.stderr.contains("EDGEFERRY_KEY_PASSWORD"),
        "{}",
        no_password.stderr
    );
    let wrong = bundle(Some("wrong"));
    assert!(!wrong.ok);
    assert!(wrong.stderr.contains("wrong password"), "{}", wrong.stderr);
    assert!(!wrong.stderr.contains("wrong\n") && !wrong.stderr.contains("correct horse"));
    run_ok_ran(bundle(Some("correct horse")));
}

fn run_ok_ran(ran: Ran) {
    assert!(ran.ok, "stdout: {}\nstderr: {}", ran.stdout, ran.stderr);
}

#[test]
fn dry_run_json_prints_the_plan_and_writes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let ran = run_ok(
        builder()
            .args([
                "bundle",
                "--dry-run",
                "--json",
                "--arch",
                "arm",
                "--kubeedge-version",
                "v1.21.3",
                "--from",
            ])
            .arg(tmp.path().join("nowhere"))
            .arg("--out")
            .arg(&out)
            .arg("--pause-image")
            .arg("registry.k8s.io/pause:3.8")
            .arg("--image")
            .arg("nginx:1.27"),
    );
    let plan: serde_json::Value = serde_json::from_str(&ran.stdout).unwrap();
    assert_eq!(plan["arch"], "arm");
    assert_eq!(plan["files"][0]["name"], "keadm-v1.21.3-linux-arm.tar.gz");
    let refs: Vec<&str> = plan["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["reference"].as_str().unwrap())
        .collect();
    assert_eq!(
        refs,
        [
            "docker.io/kubeedge/installation-package:v1.21.3",
            "registry.k8s.io/pause:3.8",
            "docker.io/library/eclipse-mosquitto:1.6.15",
            "docker.io/library/nginx:1.27"
        ]
    );
    assert!(!out.exists());
}

/// A one-platform OCI layout carrying `reference`, written by hand.
fn write_single_arch_layout(dir: &Path, reference: &str, arch: &str) {
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    let put = |bytes: &[u8]| {
        let hex = sha256_hex(bytes);
        std::fs::write(blobs.join(&hex), bytes).unwrap();
        (format!("sha256:{hex}"), bytes.len())
    };
    let (layer, layer_size) = put(b"not really a layer, but the builder does not unpack layers");
    let config = format!(
        r#"{{"architecture":"{arch}","os":"linux","rootfs":{{"type":"layers","diff_ids":["{layer}"]}}}}"#
    );
    let (config_digest, config_size) = put(config.as_bytes());
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{config_digest}","size":{config_size}}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{layer}","size":{layer_size}}}]}}"#
    );
    let (manifest_digest, manifest_size) = put(manifest.as_bytes());
    std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    std::fs::write(
        dir.join("index.json"),
        format!(
            r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{manifest_digest}","size":{manifest_size},"annotations":{{"io.containerd.image.name":"{reference}"}}}}]}}"#
        ),
    )
    .unwrap();
}
