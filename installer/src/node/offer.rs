//! What the store offers a node, and the checks on what a node asks for:
//! the KubeEdge version and keadm tarballs to use, the containerd
//! `hosts.toml` files, the keadm flags of the version, and where the
//! preflight must reach. Shared by the SSH join planner and pull mode's
//! `/join.sh`, so both pick the same version, bundles and tarballs.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use anyhow::{bail, Context, Result};

use super::hosts::{self, HostsFile, Mirror, Mirrors};
use super::script::KeadmAsset;
use crate::store::State;

/// The mirror from a --mirror value (`host:port`, `http://…` or
/// `https://…`, a path ignored) and the CA PEM nodes trust for it, if the
/// mirror speaks TLS: a bare `host:port` is HTTPS when there is a CA,
/// plain HTTP otherwise; an explicit scheme decides.
pub fn mirror_from(value: &str, ca_pem: Option<String>) -> Result<Mirror> {
    let v = value.trim();
    let (scheme, rest) = match v.split_once("://") {
        Some((s, rest)) => (Some(s), rest),
        None => (None, v),
    };
    let address = rest.split('/').next().unwrap_or(rest);
    if address.is_empty() || !address.contains(':') {
        bail!("--mirror {value:?} is not host:port: give the address nodes reach edgeferry serve at, e.g. 10.0.0.5:5000");
    }
    let ca_pem = match (scheme, ca_pem) {
        (Some("http"), _) => None,
        (Some("https"), None) => bail!(
            "--mirror {v}: no CA for the mirror's certificate: serve made none beside --store; pass --mirror-ca FILE (what nodes trust), or http:// for a plain-HTTP mirror"
        ),
        (Some("https") | None, ca) => ca,
        (Some(other), _) => bail!("--mirror {v}: scheme {other}:// is not http:// or https://"),
    };
    Ok(Mirror {
        address: address.to_string(),
        ca_pem,
    })
}

/// Every `--mirror` value (in the order given) and `--node-mirror`, as
/// [`Mirrors`]. The site mirrors share one CA (`ca_pem`), so they must all
/// speak HTTPS or all plain HTTP; a mirror given twice is refused, as its
/// hosts.toml directory would be written twice.
pub fn mirrors_from(
    values: &[String],
    node: Option<&str>,
    ca_pem: Option<String>,
) -> Result<Mirrors> {
    if values.is_empty() {
        bail!("no mirror address: pass --mirror HOST:PORT (where nodes reach edgeferry serve; repeat it for several), set EDGEFERRY_MIRROR, or set mirrors: in the inventory");
    }
    let mut site: Vec<Mirror> = Vec::new();
    for value in values {
        let mirror = mirror_from(value, ca_pem.clone())?;
        if site.iter().any(|m| m.address == mirror.address) {
            bail!("--mirror {}: given twice", mirror.address);
        }
        if let Some(first) = site.first() {
            if first.tls() != mirror.tls() {
                bail!(
                    "--mirror {} and {}: one is HTTPS and one plain HTTP; a site's mirrors share one CA, so give them all the same scheme",
                    first.url(),
                    mirror.url()
                );
            }
        }
        site.push(mirror);
    }
    let node = match node {
        None => None,
        Some(value) => {
            let v = value.trim().trim_end_matches('/');
            let rest = v
                .strip_prefix("http://")
                .or_else(|| v.strip_prefix("https://"))
                .with_context(|| format!("--node-mirror {value:?} is not http://HOST:PORT or https://HOST:PORT (where containerd reaches the node-local mirror, e.g. http://127.0.0.1:30020)"))?;
            if rest.is_empty() || rest.contains('/') || !rest.contains(':') {
                bail!("--node-mirror {value:?} is not http://HOST:PORT or https://HOST:PORT: give the node-local mirror's address with its port and no path");
            }
            Some(v.to_string())
        }
    };
    Ok(Mirrors { node, site })
}

/// The host part of HOST:PORT, with IPv6 brackets removed.
fn split_host_port(value: &str) -> Result<(String, u16)> {
    let (host, port) = value
        .rsplit_once(':')
        .with_context(|| format!("cloudcore address {value:?} is not HOST:PORT"))?;
    let port: u16 = port
        .parse()
        .with_context(|| format!("cloudcore address {value:?} has no valid port"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        bail!("cloudcore address {value:?} has no host");
    }
    Ok((host.to_string(), port))
}

/// What the store offers for one KubeEdge version.
pub struct StoreOffer {
    pub version: String,
    /// The newest bundle id per arch.
    pub bundles: BTreeMap<String, String>,
    pub keadm: Vec<KeadmAsset>,
}

/// `wanted`, or the one version the store holds.
pub fn store_offer(state: &State, wanted: Option<&str>, store_dir: &Path) -> Result<StoreOffer> {
    let version = match wanted {
        Some(v) => v.to_string(),
        None => {
            let versions: BTreeSet<&str> = state
                .bundles
                .values()
                .map(|b| b.kubeedge_version.as_str())
                .collect();
            match versions.len() {
                1 => versions.into_iter().next().unwrap().to_string(),
                0 => bail!(
                    "the store {} is empty: load a bundle first",
                    store_dir.display()
                ),
                _ => bail!(
                    "the store holds KubeEdge {}: set kubeedge_version in the inventory",
                    versions.into_iter().collect::<Vec<_>>().join(", ")
                ),
            }
        }
    };
    let mut newest: BTreeMap<String, (u64, String)> = BTreeMap::new();
    for (id, b) in &state.bundles {
        if b.kubeedge_version == version {
            let arch = b.arch.as_str().to_string();
            let newer = newest.get(&arch).is_none_or(|(seq, _)| b.sequence > *seq);
            if newer {
                newest.insert(arch, (b.sequence, id.clone()));
            }
        }
    }
    if newest.is_empty() {
        bail!(
            "the store {} has no bundle for KubeEdge {version}: load one, or set kubeedge_version to what the store has",
            store_dir.display()
        );
    }
    let mut keadm = Vec::new();
    for arch in newest.keys() {
        let file = format!("keadm-{version}-linux-{arch}.tar.gz");
        let record = state.files.get(&file).with_context(|| {
            format!("the store has a {arch} bundle but no {file}: reload the bundle")
        })?;
        keadm.push(KeadmAsset {
            arch: arch.clone(),
            file,
            sha256: record.sha256.clone(),
            size: record.size,
        });
    }
    Ok(StoreOffer {
        version,
        bundles: newest.into_iter().map(|(a, (_, id))| (a, id)).collect(),
        keadm,
    })
}

/// The installation-package repository `keadm upgrade edge --image` names
/// (as the store has it, e.g. `docker.io/kubeedge/installation-package`)
/// and, per arch, the manifest digest of `<repository>:<version>` for that
/// platform: what `--image-digest` checks the pulled image against.
pub fn installation_package(
    state: &State,
    version: &str,
    arches: &[String],
    store_dir: &Path,
) -> Result<(String, BTreeMap<String, String>)> {
    let suffix = format!("/installation-package:{version}");
    let (reference, record) = state
        .images
        .iter()
        .find(|(r, _)| r.ends_with(&suffix) && r.matches('/').count() >= 2)
        .with_context(|| {
            format!(
                "the store {} has no kubeedge/installation-package:{version}, which keadm upgrade edge pulls: load a bundle of KubeEdge {version}",
                store_dir.display()
            )
        })?;
    let repository = reference
        .strip_suffix(&format!(":{version}"))
        .unwrap_or(reference)
        .to_string();
    let mut digests = BTreeMap::new();
    for arch in arches {
        let digest = record
            .platforms
            .get(&format!("linux/{arch}"))
            .with_context(|| {
                format!("the store's {reference} has no linux/{arch} manifest: load the linux-{arch} bundle of KubeEdge {version}")
            })?;
        digests.insert(arch.clone(), digest.clone());
    }
    Ok((repository, digests))
}

/// Every image reference the store serves, normalized (the loader keeps
/// references as bundles carry them: full and normalized). The node
/// preflight compares the node's containerd sandbox image with these.
pub fn store_images(state: &State) -> Vec<String> {
    state.images.keys().cloned().collect()
}

/// containerd `hosts.toml` for every registry the store's images come from.
pub fn hosts_toml_for(state: &State, mirrors: &Mirrors) -> Vec<HostsFile> {
    let registries: BTreeSet<String> = state
        .images
        .keys()
        .map(|r| hosts::registry_of(r).to_string())
        .collect();
    hosts::hosts_files(mirrors, &registries)
}

/// The flags `edgeferry upgrade` passes to the target's keadm (`upgrade
/// edge`, `backup edge`, `rollback edge`) must exist in its flag table;
/// true when its `upgrade edge` has `--image-digest` (v1.23 on), which is
/// otherwise left out.
pub fn check_upgrade_flags(version: &str) -> Result<bool> {
    let table = edgeferry_bundle::keadm::flags_for(version)?;
    let has = |flags: &[edgeferry_bundle::keadm::Flag], name: &str| {
        flags
            .iter()
            .any(|f| f.long == name && f.deprecated.is_none())
    };
    for name in ["toVersion", "image", "force"] {
        if !has(table.upgrade_edge, name) {
            bail!(
                "keadm upgrade edge {version} has no flag --{name}: edgeferry cannot upgrade to it"
            );
        }
    }
    if !has(table.rollback_edge, "historical-version") {
        bail!("keadm rollback edge {version} has no flag --historical-version: edgeferry cannot roll back with it");
    }
    if table.backup_edge.is_empty() {
        bail!("keadm {version} has no backup edge: edgeferry cannot upgrade with it");
    }
    Ok(has(table.upgrade_edge, "image-digest"))
}

/// Every `keadm join` flag must exist in the version; bools must be bools.
pub fn check_flags(version: &str, flags: &BTreeMap<String, Vec<String>>, who: &str) -> Result<()> {
    let table = edgeferry_bundle::keadm::flags_for(version)?;
    for (name, values) in flags {
        let flag = table
            .join_flag(name)
            .filter(|f| f.long == name)
            .with_context(|| format!("{who}: keadm join {version} has no flag --{name}"))?;
        if flag.kind == edgeferry_bundle::keadm::FlagKind::Bool
            && values.iter().any(|v| v != "true" && v != "false")
        {
            bail!("{who}: --{name} takes true or false");
        }
    }
    Ok(())
}

/// How the node's edgecore will reach the hub: keadm's `--hub-protocol`
/// (websocket unless it says quic).
pub fn hub_protocol(flags: &BTreeMap<String, Vec<String>>) -> super::script::HubProtocol {
    match flags
        .get("hub-protocol")
        .and_then(|v| v.last())
        .map(String::as_str)
    {
        Some("quic") => super::script::HubProtocol::Quic,
        _ => super::script::HubProtocol::Websocket,
    }
}

/// The preflight's view of a node's keadm settings: the cloudcore host,
/// the ports it must reach (hub, then cert), and the CRI socket.
pub fn preflight_target(
    cloudcore: &str,
    flags: &BTreeMap<String, Vec<String>>,
    who: &str,
) -> Result<(String, Vec<u16>, String)> {
    let (cloud_host, cloud_port) = split_host_port(cloudcore).with_context(|| who.to_string())?;
    let certport: u16 = match flags.get("certport").and_then(|v| v.last()) {
        Some(p) => p
            .parse()
            .with_context(|| format!("{who}: certport {p:?} is not a port"))?,
        None => 10002,
    };
    let endpoint = flags
        .get("remote-runtime-endpoint")
        .and_then(|v| v.last())
        .map_or("unix:///run/containerd/containerd.sock", String::as_str);
    let cri_socket = endpoint
        .strip_prefix("unix://")
        .unwrap_or(endpoint)
        .to_string();
    let mut ports = vec![cloud_port];
    if certport != cloud_port {
        ports.push(certport);
    }
    Ok((cloud_host, ports, cri_socket))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mirror_scheme_follows_the_value_then_whether_there_is_a_ca() {
        let ca = || Some("PEM".to_string());
        let m = mirror_from("10.0.0.5:5000", ca()).unwrap();
        assert_eq!(m.url(), "https://10.0.0.5:5000");
        let m = mirror_from("https://10.0.0.5:5000/v2/", ca()).unwrap();
        assert_eq!((m.address.as_str(), m.tls()), ("10.0.0.5:5000", true));
        assert_eq!(
            mirror_from("10.0.0.5:5000", None).unwrap().url(),
            "http://10.0.0.5:5000"
        );
        assert_eq!(
            mirror_from("http://10.0.0.5:5000", ca()).unwrap(),
            Mirror::plain("10.0.0.5:5000")
        );
        let err = mirror_from("https://10.0.0.5:5000", None).unwrap_err();
        assert!(err.to_string().contains("pass --mirror-ca FILE"), "{err}");
        let err = mirror_from("ftp://10.0.0.5:5000", None).unwrap_err();
        assert!(
            err.to_string().contains("is not http:// or https://"),
            "{err}"
        );
        assert!(mirror_from("10.0.0.5", None).is_err());
    }

    #[test]
    fn several_mirrors_share_a_scheme_and_the_node_mirror_is_a_url() {
        let v = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let ca = || Some("PEM".to_string());
        let m = mirrors_from(
            &v(&["10.0.0.5:5000", "10.0.0.6:5000"]),
            Some("http://127.0.0.1:30020/"),
            ca(),
        )
        .unwrap();
        assert_eq!(
            m.urls(),
            [
                "http://127.0.0.1:30020",
                "https://10.0.0.5:5000",
                "https://10.0.0.6:5000"
            ]
        );
        let err =
            mirrors_from(&v(&["http://10.0.0.5:5000", "10.0.0.6:5000"]), None, ca()).unwrap_err();
        assert!(
            err.to_string().contains("give them all the same scheme"),
            "{err}"
        );
        let err =
            mirrors_from(&v(&["10.0.0.5:5000", "http://10.0.0.5:5000/"]), None, None).unwrap_err();
        assert!(err.to_string().contains("given twice"), "{err}");
        assert!(mirrors_from(&[], None, None).is_err());
        for bad in [
            "127.0.0.1:30020",
            "http://127.0.0.1",
            "http://127.0.0.1:30020/v2",
        ] {
            let err = mirrors_from(&v(&["10.0.0.5:5000"]), Some(bad), None).unwrap_err();
            assert!(err.to_string().contains("--node-mirror"), "{bad}: {err}");
        }
    }
}
