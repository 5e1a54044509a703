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

/// containerd's `dial_timeout` for each mirror in `hosts.toml`, and the
/// fetch step's connect timeout per mirror: how long a node waits on a
/// mirror that does not answer before it tries the next. A refused
/// connection (a stopped mirror) falls through at once either way.
pub const MIRROR_CONNECT_SECS: u64 = 5;

/// In a `--node-mirror` URL, the node's own address from the inventory
/// (`http://{host}:30020`).
pub const NODE_HOST: &str = "{host}";

/// Every mirror one node pulls through, in the order it tries them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mirrors {
    /// `--node-mirror`: a registry mirror on the node itself (Spegel,
    /// Dragonfly's dfdaemon), tried first for images. It serves no release
    /// files, so the fetch step skips it. A URL (`http://127.0.0.1:30020`);
    /// trusted by the node's own CA bundle when it is https.
    pub node: Option<String>,
    /// The site's `edgeferry serve` mirrors, never empty, all plain HTTP or
    /// all HTTPS with the one site CA ([`MIRROR_CA_PATH`]).
    pub site: Vec<Mirror>,
}

impl Mirrors {
    /// One site mirror and no node-local one.
    pub fn one(mirror: Mirror) -> Mirrors {
        Mirrors {
            node: None,
            site: vec![mirror],
        }
    }

    /// The site mirror this node tries first (and, in pull mode, the one
    /// that served `/join.sh`).
    pub fn first(&self) -> &Mirror {
        &self.site[0]
    }

    /// The order for the node at `index` in the inventory: the site mirrors
    /// rotated left by `index`, so node 0 starts at the first, node 1 at the
    /// second, and N nodes over M mirrors put ceil(N/M) or floor(N/M) first
    /// pulls on each. Deterministic, so a rerun writes the same files. The
    /// node-local mirror stays ahead of them.
    pub fn rotated(&self, index: usize) -> Mirrors {
        let mut site = self.site.clone();
        let by = index % site.len();
        site.rotate_left(by);
        Mirrors {
            node: self.node.clone(),
            site,
        }
    }

    /// What the node at `index` in the inventory, reached at `host`, pulls
    /// through: [`Mirrors::rotated`], with [`NODE_HOST`] in the node-local
    /// mirror's URL replaced by `host` (Spegel, for one, listens on each
    /// node's own address, not on loopback).
    pub fn for_node(&self, index: usize, host: &str) -> Mirrors {
        let mut order = self.rotated(index);
        if let Some(url) = &mut order.node {
            let host = if host.contains(':') {
                format!("[{host}]")
            } else {
                host.to_string()
            };
            *url = url.replace(NODE_HOST, &host);
        }
        order
    }

    /// Every URL in the order containerd tries them (node-local first).
    pub fn urls(&self) -> Vec<String> {
        self.node
            .iter()
            .cloned()
            .chain(self.site.iter().map(Mirror::url))
            .collect()
    }

    /// The site mirrors' URLs, space-separated, for an sh `for` loop
    /// (addresses are host:port, checked by `offer::mirrors_from`).
    pub fn site_urls_sh(&self) -> String {
        self.site
            .iter()
            .map(Mirror::url)
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// The `[host."…"]` tables for one registry: the node-local mirror, then
/// each site mirror in this node's order (with the site CA over TLS).
/// containerd tries hosts "in the order listed" and `server` only after
/// all of them (containerd docs/hosts.md), so a mirror that is down costs
/// one failed connection and the next one serves the pull.
fn host_tables(mirrors: &Mirrors) -> String {
    let mut s = String::new();
    let timeout = format!("  dial_timeout = \"{MIRROR_CONNECT_SECS}s\"\n");
    let several = mirrors.node.is_some() || mirrors.site.len() > 1;
    // One mirror keeps containerd's default: nothing to fall through to.
    let timeout = if several { timeout.as_str() } else { "" };
    if let Some(node) = &mirrors.node {
        s.push_str(&format!(
            "\n[host.\"{node}\"]\n  capabilities = [\"pull\", \"resolve\"]\n{timeout}"
        ));
    }
    for mirror in &mirrors.site {
        let ca = if mirror.tls() {
            format!("  ca = \"{MIRROR_CA_PATH}\"\n")
        } else {
            String::new()
        };
        s.push_str(&format!(
            "\n[host.\"{}\"]\n  capabilities = [\"pull\", \"resolve\"]\n{ca}{timeout}",
            mirror.url()
        ));
    }
    s
}

/// `hosts.toml` for every upstream registry the store's images come from,
/// listing every mirror in this node's order, plus one for each site
/// mirror's own address so direct names
/// (`keadm join --image-repository=<mirror>/kubeedge`) pull from it too
/// (that one names only itself: another mirror would be asked with
/// `?ns=<the first mirror's address>`, a registry it does not hold).
/// Over TLS each names the mirror `https://` with its CA file.
pub fn hosts_files(mirrors: &Mirrors, registries: &BTreeSet<String>) -> Vec<HostsFile> {
    let (whose, order) = match (mirrors.node.is_some(), mirrors.site.len()) {
        (false, 1) => ("the site mirror", ""),
        (true, 1) => ("the node-local mirror, then the site mirror", ""),
        (false, _) => ("the site mirrors", ", tried in this node's order"),
        (true, _) => (
            "the node-local mirror, then the site mirrors",
            ", tried in this node's order",
        ),
    };
    let tables = host_tables(mirrors);
    let mut files: Vec<HostsFile> = registries
        .iter()
        .map(|registry| HostsFile {
            dir: registry.clone(),
            content: format!(
                "# Written by edgeferry: pull {registry} images from {whose}{order}.\n\
                 server = \"{}\"\n{tables}",
                upstream_server(registry)
            ),
        })
        .collect();
    for mirror in &mirrors.site {
        let url = mirror.url();
        let (what, server_ca, ca) = if mirror.tls() {
            (
                "speaks HTTPS with the site's own CA",
                format!("ca = \"{MIRROR_CA_PATH}\"\n"),
                format!("  ca = \"{MIRROR_CA_PATH}\"\n"),
            )
        } else {
            ("speaks plain HTTP", String::new(), String::new())
        };
        files.push(HostsFile {
            dir: mirror.address.clone(),
            content: format!(
                "# Written by edgeferry: the site mirror {what}.\n\
                 server = \"{url}\"\n{server_ca}\n\
                 [host.\"{url}\"]\n  capabilities = [\"pull\", \"resolve\"]\n{ca}"
            ),
        });
    }
    files
}

/// The registry part of a full reference (`docker.io/x/y:t` -> `docker.io`).
pub fn registry_of(reference: &str) -> &str {
    reference.split('/').next().unwrap_or(reference)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn one_file_per_registry_and_one_for_the_mirror() {
        let registries: BTreeSet<String> = ["docker.io", "registry.k8s.io"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let files = hosts_files(&Mirrors::one(Mirror::plain("10.0.0.5:5000")), &registries);
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
        let files = hosts_files(&Mirrors::one(mirror), &registries);
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

    #[test]
    fn rotation_starts_each_node_at_the_next_mirror_and_spreads_evenly() {
        let mirrors = Mirrors {
            node: Some("http://127.0.0.1:30020".into()),
            site: ["10.0.0.5:5000", "10.0.0.6:5000", "10.0.0.7:5000"]
                .map(Mirror::plain)
                .to_vec(),
        };
        let order = |i: usize| mirrors.rotated(i).urls();
        assert_eq!(
            order(0),
            [
                "http://127.0.0.1:30020",
                "http://10.0.0.5:5000",
                "http://10.0.0.6:5000",
                "http://10.0.0.7:5000"
            ]
        );
        assert_eq!(
            order(1),
            [
                "http://127.0.0.1:30020",
                "http://10.0.0.6:5000",
                "http://10.0.0.7:5000",
                "http://10.0.0.5:5000"
            ]
        );
        assert_eq!(order(5), order(2));
        let spegel = Mirrors {
            node: Some("http://{host}:30020".into()),
            ..mirrors.clone()
        };
        assert_eq!(
            spegel.for_node(1, "10.0.1.12").urls()[..2],
            ["http://10.0.1.12:30020", "http://10.0.0.6:5000"]
        );
        assert_eq!(
            spegel.for_node(0, "fd00::12").urls()[0],
            "http://[fd00::12]:30020"
        );
        // 1,000 nodes over 3 mirrors: 334, 333, 333 first pulls.
        let mut first = BTreeMap::new();
        for i in 0..1000 {
            *first
                .entry(mirrors.rotated(i).first().address.clone())
                .or_insert(0) += 1;
        }
        assert_eq!(
            first.values().copied().collect::<Vec<u32>>(),
            [334, 333, 333]
        );
        assert_eq!(
            mirrors.rotated(1).site_urls_sh(),
            "http://10.0.0.6:5000 http://10.0.0.7:5000 http://10.0.0.5:5000"
        );
    }

    #[test]
    fn several_mirrors_are_hosts_in_the_nodes_order_after_the_node_local_one() {
        let registries: BTreeSet<String> = ["docker.io".to_string()].into_iter().collect();
        let pem = Some("PEM".to_string());
        let mirrors = Mirrors {
            node: Some("http://127.0.0.1:30020".into()),
            site: ["10.0.0.5:5000", "10.0.0.6:5000"]
                .map(|a| Mirror {
                    address: a.into(),
                    ca_pem: pem.clone(),
                })
                .to_vec(),
        };
        let files = hosts_files(&mirrors.rotated(1), &registries);
        let dirs: Vec<&str> = files.iter().map(|f| f.dir.as_str()).collect();
        assert_eq!(dirs, ["docker.io", "10.0.0.6:5000", "10.0.0.5:5000"]);
        assert_eq!(
            files[0].content,
            "# Written by edgeferry: pull docker.io images from the node-local mirror, then the site mirrors, tried in this node's order.\n\
             server = \"https://registry-1.docker.io\"\n\
             \n[host.\"http://127.0.0.1:30020\"]\n  capabilities = [\"pull\", \"resolve\"]\n  dial_timeout = \"5s\"\n\
             \n[host.\"https://10.0.0.6:5000\"]\n  capabilities = [\"pull\", \"resolve\"]\n  \
             ca = \"/etc/containerd/certs.d/edgeferry-mirror-ca.crt\"\n  dial_timeout = \"5s\"\n\
             \n[host.\"https://10.0.0.5:5000\"]\n  capabilities = [\"pull\", \"resolve\"]\n  \
             ca = \"/etc/containerd/certs.d/edgeferry-mirror-ca.crt\"\n  dial_timeout = \"5s\"\n"
        );
        // Each mirror's own name is served by that mirror alone.
        assert_eq!(
            files[2].content,
            "# Written by edgeferry: the site mirror speaks HTTPS with the site's own CA.\n\
             server = \"https://10.0.0.5:5000\"\n\
             ca = \"/etc/containerd/certs.d/edgeferry-mirror-ca.crt\"\n\n\
             [host.\"https://10.0.0.5:5000\"]\n  capabilities = [\"pull\", \"resolve\"]\n  \
             ca = \"/etc/containerd/certs.d/edgeferry-mirror-ca.crt\"\n"
        );
    }
}
