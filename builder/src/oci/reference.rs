//! Image reference normalization, the way Docker's `reference.ParseNormalizedNamed`
//! does it: the function is [`edgeferry_bundle::oci::normalize_reference`]
//! (the bundle crate owns the reference grammar; the installer's node
//! preflight compares against it too). Its tests stay here, beside the
//! builder's other reference handling.

pub use edgeferry_bundle::oci::normalize_reference;

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
