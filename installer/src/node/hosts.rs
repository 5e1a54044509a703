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

/// Where nodes find the CA file that vouches for the mirror's certificate:
/// the containerd step installs it, hosts.toml, the fetch step and
/// `/join.sh` name it. One path for every mirror address: a node joins one site.
pub const MIRROR_CA_PATH: &str = "/etc/containerd/certs.d/edgeferry-mirror-ca.crt";

/// How nodes reach the mirror: its address and, over TLS, what to trust.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mirror {
    /// host:port
    pub address: String,
    /// PEM of the CA nodes install at [`MIRROR_CA_PATH`]; `None`: plain HTTP.
    pub ca_pem: Option<String>,
}

impl Mirror {
    pub fn plain(address: &str) -> Mirror {
        Mirror {
            address: address.to_string(),
            ca_pem: None,
        }
    }

    pub fn tls(&self) -> bool {
        self.ca_pem.is_some()
    }

    /// `https://host:port` or `http://host:port`.
    pub fn url(&self) -> String {
        let scheme = if self.tls() { "https" } else { "http" };
        format!("{scheme}://{}", self.address)
    }

    /// curl's trust option for the mirror, with a trailing space; empty
    /// for plain HTTP.
    pub fn curl_ca(&self) -> String {
        if self.tls() {
            format!("--cacert {MIRROR_CA_PATH} ")
        } else {
            String::new()
        }
    }

    /// wget's trust option for the mirror, with a trailing space.
    pub fn wget_ca(&self) -> String {
        if self.tls() {
            format!("--ca-certificate={MIRROR_CA_PATH} ")
        } else {
            String::new()
        }
    }
}

/// `hosts.toml` for every upstream registry the store's images come from,
/// plus one for the mirror's own address so direct names
/// (`keadm join --image-repository=<mirror>/kubeedge`) pull from it too.
/// Over TLS each names the mirror `https://` with its CA file.
pub fn hosts_files(mirror: &Mirror, registries: &BTreeSet<String>) -> Vec<HostsFile> {
    let url = mirror.url();
    let ca = if mirror.tls() {
        format!("  ca = \"{MIRROR_CA_PATH}\"\n")
    } else {
        String::new()
    };
    let mut files: Vec<HostsFile> = registries
        .iter()
        .map(|registry| HostsFile {
            dir: registry.clone(),
            content: format!(
                "# Written by edgeferry: pull {registry} images from the site mirror.\n\
                 server = \"{}\"\n\n\
                 [host.\"{url}\"]\n  capabilities = [\"pull\", \"resolve\"]\n{ca}",
                upstream_server(registry)
            ),
        })
        .collect();
    let (what, server_ca) = if mirror.tls() {
        (
            "speaks HTTPS with the site's own CA",
            format!("ca = \"{MIRROR_CA_PATH}\"\n"),
        )
    } else {
        ("speaks plain HTTP", String::new())
    };
    files.push(HostsFile {
        dir: mirror.address.clone(),
        content: format!(
            "# Written by edgeferry: the site mirror {what}.\n\
             server = \"{url}\"\n{server_ca}\n\
             [host.\"{url}\"]\n  capabilities = [\"pull\", \"resolve\"]\n{ca}"
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
        let files = hosts_files(&Mirror::plain("10.0.0.5:5000"), &registries);
        let dirs: Vec<&str> = files.iter().map(|f| f.dir.as_str()).collect();
        assert_eq!(dirs, ["docker.io", "registry.k8s.io", "10.0.0.5:5000"]);
        assert!(files[0]
            .content
            .contains("server = \"https://registry-1.docker.io\""));
        assert!(files[0].content.contains("[host.\"http://10.0.0.5:5000\"]"));
        assert_eq!(registry_of("registry.k8s.io/pause:3.10"), "registry.k8s.io");
    }

    #[test]
    fn over_tls_every_file_names_the_mirror_https_with_its_ca() {
        let registries: BTreeSet<String> = ["docker.io".to_string()].into_iter().collect();
        let mirror = Mirror {
            address: "10.0.0.5:5000".into(),
            ca_pem: Some("PEM".into()),
        };
        let files = hosts_files(&mirror, &registries);
        assert_eq!(
            files[0].content,
            "# Written by edgeferry: pull docker.io images from the site mirror.\n\
             server = \"https://registry-1.docker.io\"\n\n\
             [host.\"https://10.0.0.5:5000\"]\n  capabilities = [\"pull\", \"resolve\"]\n  \
             ca = \"/etc/containerd/certs.d/edgeferry-mirror-ca.crt\"\n"
        );
        assert_eq!(
            files[1].content,
            "# Written by edgeferry: the site mirror speaks HTTPS with the site's own CA.\n\
             server = \"https://10.0.0.5:5000\"\n\
             ca = \"/etc/containerd/certs.d/edgeferry-mirror-ca.crt\"\n\n\
             [host.\"https://10.0.0.5:5000\"]\n  capabilities = [\"pull\", \"resolve\"]\n  \
             ca = \"/etc/containerd/certs.d/edgeferry-mirror-ca.crt\"\n"
        );
    }
}
