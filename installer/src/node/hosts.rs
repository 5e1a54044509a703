//! What a node needs to pull through the mirror: containerd `hosts.toml`
//! files and keadm flags, as plain data. `serve` prints them, `join` writes
//! them, and the pull-mode script embeds them.

use std::collections::BTreeSet;

/// One `/etc/containerd/certs.d/<dir>/hosts.toml`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct HostsFile {
    /// The directory under `certs.d`, e.g. `docker.io` or `10.0.0.5:5000`.
    pub dir: String,
    pub content: String,
}

/// The upstream server containerd would use without a mirror.
fn upstream_server(registry: &str) -> String {
    match registry {
        "docker.io" => "https://registry-1.docker.io".to_string(),
        other => format!("https://{other}"),
    }
}

/// `hosts.toml` for every upstream registry the store's images come from,
/// plus one for the mirror's own address so direct names
/// (`keadm join --image-repository=<mirror>/kubeedge`) pull over plain HTTP.
pub fn hosts_files(mirror: &str, registries: &BTreeSet<String>) -> Vec<HostsFile> {
    let mut files: Vec<HostsFile> = registries
        .iter()
        .map(|registry| HostsFile {
            dir: registry.clone(),
            content: format!(
                "# Written by edgeferry: pull {registry} images from the site mirror.\n\
                 server = \"{}\"\n\n\
                 [host.\"http://{mirror}\"]\n  capabilities = [\"pull\", \"resolve\"]\n",
                upstream_server(registry)
            ),
        })
        .collect();
    files.push(HostsFile {
        dir: mirror.to_string(),
        content: format!(
            "# Written by edgeferry: the site mirror speaks plain HTTP.\n\
             server = \"http://{mirror}\"\n\n\
             [host.\"http://{mirror}\"]\n  capabilities = [\"pull\", \"resolve\"]\n"
        ),
    });
    files
}

/// The registry part of a full reference (`docker.io/x/y:t` -> `docker.io`).
pub fn registry_of(reference: &str) -> &str {
    reference.split('/').next().unwrap_or(reference)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_file_per_registry_and_one_for_the_mirror() {
        let registries: BTreeSet<String> = ["docker.io", "registry.k8s.io"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let files = hosts_files("10.0.0.5:5000", &registries);
        let dirs: Vec<&str> = files.iter().map(|f| f.dir.as_str()).collect();
        assert_eq!(dirs, ["docker.io", "registry.k8s.io", "10.0.0.5:5000"]);
        assert!(files[0]
            .content
            .contains("server = \"https://registry-1.docker.io\""));
        assert!(files[0].content.contains("[host.\"http://10.0.0.5:5000\"]"));
        assert_eq!(registry_of("registry.k8s.io/pause:3.10"), "registry.k8s.io");
    }
}
