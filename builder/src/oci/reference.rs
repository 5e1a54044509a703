//! Image reference normalization, the way Docker's `reference.ParseNormalizedNamed`
//! does it, so that a name written by hand in `manifests/`, a `RepoTags`
//! entry and an OCI annotation all meet on the same string.

use edgeferry_bundle::format::sha256_hex_of_digest;
use edgeferry_bundle::oci::{valid_domain, valid_path_component, valid_tag, MAX_NAME_LEN};

const DEFAULT_DOMAIN: &str = "docker.io";
/// Docker still accepts the old index host and files it under `docker.io`.
const LEGACY_DEFAULT_DOMAIN: &str = "index.docker.io";
const OFFICIAL_REPO_PREFIX: &str = "library/";
const DEFAULT_TAG: &str = "latest";

/// Normalizes an image reference to `registry/repository:tag`,
/// `registry/repository@sha256:<hex>` or both tag and digest, the way
/// Docker does: `eclipse-mosquitto:1.6.15` becomes
/// `docker.io/library/eclipse-mosquitto:1.6.15`.
pub fn normalize_reference(s: &str) -> Result<String, String> {
    let fail = |why: &str| Err(format!("image reference {s:?} {why}"));
    if s.is_empty() {
        return Err(
            "image reference is empty: give a name such as docker.io/library/eclipse-mosquitto:1.6.15"
                .into(),
        );
    }
    if s.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return fail("contains whitespace: remove it");
    }

    let (rest, digest) = match s.split_once('@') {
        Some((name, digest)) => (name, Some(digest)),
        None => (s, None),
    };
    if let Some(digest) = digest {
        if sha256_hex_of_digest(digest).is_none() {
            return fail(
                "has a digest that is not sha256:<64 lowercase hex digits>: fix the digest",
            );
        }
    }

    // A ':' after the last '/' starts the tag; one before it is a registry port.
    let (name, tag) = match rest.rfind(':') {
        Some(i) if !rest[i + 1..].contains('/') => (&rest[..i], Some(&rest[i + 1..])),
        _ => (rest, None),
    };
    if let Some(tag) = tag {
        if !valid_tag(tag) {
            return fail(
                "has an invalid tag: a tag is 1 to 128 of [A-Za-z0-9_.-] and does not start with '.' or '-'",
            );
        }
    }
    if name.is_empty() {
        return fail("names no repository: write it as repository:tag, e.g. docker.io/kubeedge/installation-package:v1.23.1");
    }

    let (domain, path) = match name.split_once('/') {
        Some((first, rest)) if is_domain_like(first) => (first, rest),
        _ => (DEFAULT_DOMAIN, name),
    };
    if !valid_domain(domain) {
        return fail("has an invalid registry host: write it as host[:port], e.g. registry.k8s.io or localhost:5000");
    }
    let domain = if domain == LEGACY_DEFAULT_DOMAIN {
        DEFAULT_DOMAIN
    } else {
        domain
    };

    for component in path.split('/') {
        if component.is_empty() {
            return fail("has an empty path component: remove the extra '/'");
        }
        if component.bytes().any(|b| b.is_ascii_uppercase()) {
            return fail(
                "has uppercase letters in its repository name: repository names are lowercase",
            );
        }
        if !valid_path_component(component) {
            return fail(
                "has an invalid repository name: components are [a-z0-9] joined by '.', '_', '__' or '-'",
            );
        }
    }

    let mut out = String::with_capacity(s.len() + DEFAULT_DOMAIN.len() + 16);
    out.push_str(domain);
    out.push('/');
    if domain == DEFAULT_DOMAIN && !path.contains('/') {
        out.push_str(OFFICIAL_REPO_PREFIX);
    }
    out.push_str(path);
    if out.len() > MAX_NAME_LEN {
        return fail("is longer than 255 characters without its tag: use a shorter name");
    }
    match (tag, digest) {
        (Some(tag), _) => {
            out.push(':');
            out.push_str(tag);
        }
        (None, None) => {
            out.push(':');
            out.push_str(DEFAULT_TAG);
        }
        (None, Some(_)) => {}
    }
    if let Some(digest) = digest {
        out.push('@');
        out.push_str(digest);
    }
    Ok(out)
}

/// Docker's rule for telling `host/repo` from `user/repo`: a first component
/// with a dot, a port or capitals cannot be a Docker Hub user.
fn is_domain_like(first: &str) -> bool {
    first.contains(['.', ':'])
        || first == "localhost"
        || first.bytes().any(|b| b.is_ascii_uppercase())
}

#[cfg(test)]
mod tests {
    use super::normalize_reference;

    const HEX: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn ok(input: &str, want: &str) {
        assert_eq!(normalize_reference(input).as_deref(), Ok(want), "{input}");
    }

    fn bad(input: &str) -> String {
        match normalize_reference(input) {
            Ok(got) => panic!("{input:?} accepted as {got}"),
            Err(e) => e,
        }
    }

    #[test]
    fn official_images_get_library_and_docker_io() {
        ok(
            "eclipse-mosquitto:1.6.15",
            "docker.io/library/eclipse-mosquitto:1.6.15",
        );
        ok("busybox", "docker.io/library/busybox:latest");
        ok("docker.io/busybox:1.36", "docker.io/library/busybox:1.36");
        ok(
            "docker.io/library/busybox:1.36",
            "docker.io/library/busybox:1.36",
        );
    }

    #[test]
    fn user_images_get_docker_io() {
        ok(
            "kubeedge/installation-package:v1.23.1",
            "docker.io/kubeedge/installation-package:v1.23.1",
        );
        ok("kubeedge/pause", "docker.io/kubeedge/pause:latest");
    }

    #[test]
    fn index_docker_io_is_docker_io() {
        ok(
            "index.docker.io/kubeedge/pause:3.6",
            "docker.io/kubeedge/pause:3.6",
        );
        ok(
            "index.docker.io/busybox",
            "docker.io/library/busybox:latest",
        );
    }

    #[test]
    fn other_registries_are_kept() {
        ok("registry.k8s.io/pause:3.10", "registry.k8s.io/pause:3.10");
        ok("localhost:5000/x:y", "localhost:5000/x:y");
        ok("localhost/x", "localhost/x:latest");
        ok("localhost:5000/x", "localhost:5000/x:latest");
        ok("quay.io/a/b/c:1.0-rc.1", "quay.io/a/b/c:1.0-rc.1");
        ok("[::1]:5000/x:1", "[::1]:5000/x:1");
    }

    #[test]
    fn digests_are_kept() {
        ok(
            &format!("busybox@sha256:{HEX}"),
            &format!("docker.io/library/busybox@sha256:{HEX}"),
        );
        ok(
            &format!("registry.k8s.io/pause:3.10@sha256:{HEX}"),
            &format!("registry.k8s.io/pause:3.10@sha256:{HEX}"),
        );
        bad("busybox@sha256:abc");
        bad(&format!("busybox@sha512:{HEX}"));
        bad(&format!("busybox@sha256:{}", HEX.to_uppercase()));
    }

    #[test]
    fn bad_references_are_rejected() {
        assert!(bad("").contains("empty"));
        assert!(bad(":v1.23.1").contains("no repository"));
        assert!(bad("Eclipse-Mosquitto:1.6.15").contains("lowercase"));
        assert!(bad("docker.io/Kubeedge/x:1").contains("lowercase"));
        assert!(bad("kubeedge//x:1").contains("empty path component"));
        assert!(bad("kubeedge/x/:1").contains("empty path component"));
        assert!(bad("registry.k8s.io/").contains("empty path component"));
        bad("busybox:");
        bad("busybox:-x");
        bad("busybox:a+b");
        bad("bu--sy..box");
        bad("-busybox");
        bad("busy box");
        bad("reg_istry.io/x");
        bad("localhost:port/x");
        bad(&format!("x:{}", "a".repeat(129)));
        bad(&format!("registry.example/{}", "a".repeat(250)));
        for e in [bad("Eclipse-Mosquitto"), bad("")] {
            assert!(!e.ends_with('.') && !e.contains('\n'), "{e}");
            assert!(e.starts_with(|c: char| c.is_lowercase()), "{e}");
        }
    }

    #[test]
    fn separators_follow_docker() {
        ok("a__b/c-d---e/f.g_h", "docker.io/a__b/c-d---e/f.g_h:latest");
        bad("a___b/c");
        bad("a._b/c");
    }

    #[test]
    fn a_bare_tag_is_a_repository_name_here() {
        // Telling a bare tag from a repository is the annotation reader's job;
        // as a reference, `v1.23.1` is a valid Docker Hub repository.
        ok("v1.23.1", "docker.io/library/v1.23.1:latest");
    }

    #[test]
    fn capitalised_first_component_is_a_registry() {
        // Docker reads `Foo/bar` as host `Foo`, not as an uppercase Hub user.
        ok("Registry/bar:1", "Registry/bar:1");
    }
}
