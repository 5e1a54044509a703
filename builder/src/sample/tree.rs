//! Reproducible tar and gzip for the sample: fixed mtime, owner and
//! order, and gzip headers with no name or time.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result};
use flate2::{Compression, GzBuilder};

use super::MTIME;

/// Fixed so that output does not depend on flate2's default.
const GZIP_LEVEL: u32 = 6;

#[derive(Clone, Debug)]
pub(super) enum Node {
    Dir,
    File { mode: u32, data: Vec<u8> },
    Symlink(String),
}

/// Entries by path; parents get directory entries on insertion, and the
/// `BTreeMap` order puts each directory before its contents.
#[derive(Default)]
pub(super) struct Tree(BTreeMap<String, Node>);

impl Tree {
    pub(super) fn add(&mut self, path: &str, node: Node) {
        let trimmed = path.trim_end_matches('/');
        let mut at = 0;
        while let Some(i) = trimmed[at..].find('/') {
            at += i + 1;
            self.0.insert(trimmed[..at].to_string(), Node::Dir);
        }
        let key = match node {
            Node::Dir => format!("{trimmed}/"),
            _ => trimmed.to_string(),
        };
        self.0.insert(key, node);
    }

    pub(super) fn file(&mut self, path: &str, mode: u32, data: impl Into<Vec<u8>>) {
        self.add(
            path,
            Node::File {
                mode,
                data: data.into(),
            },
        );
    }

    pub(super) fn exe(&mut self, path: &str, data: impl Into<Vec<u8>>) {
        self.file(path, 0o755, data);
    }

    /// Uncompressed tar. GNU headers match upstream's `tar -czvf`; ustar is
    /// what image layers conventionally use.
    pub(super) fn to_tar(&self, gnu: bool) -> Result<Vec<u8>> {
        let mut builder = tar::Builder::new(Vec::new());
        for (path, node) in &self.0 {
            let mut header = if gnu {
                tar::Header::new_gnu()
            } else {
                tar::Header::new_ustar()
            };
            header.set_mtime(MTIME);
            header.set_uid(0);
            header.set_gid(0);
            header.set_username("root")?;
            header.set_groupname("root")?;
            header.set_size(0);
            let appended = match node {
                Node::Dir => {
                    header.set_entry_type(tar::EntryType::Directory);
                    header.set_mode(0o755);
                    builder.append_data(&mut header, path, std::io::empty())
                }
                Node::File { mode, data } => {
                    header.set_entry_type(tar::EntryType::Regular);
                    header.set_mode(*mode);
                    header.set_size(data.len() as u64);
                    builder.append_data(&mut header, path, data.as_slice())
                }
                Node::Symlink(target) => {
                    header.set_entry_type(tar::EntryType::Symlink);
                    header.set_mode(0o777);
                    builder.append_link(&mut header, path, target)
                }
            };
            appended.with_context(|| format!("cannot add {path} to a sample tar"))?;
        }
        Ok(builder.into_inner()?)
    }
}

/// gzip with no file name and mtime 0 in the header.
pub(super) fn gzip(data: &[u8]) -> Result<Vec<u8>> {
    let mut encoder = GzBuilder::new()
        .mtime(0)
        .write(Vec::new(), Compression::new(GZIP_LEVEL));
    encoder.write_all(data)?;
    Ok(encoder.finish()?)
}

pub(super) fn write_file(path: &Path, data: &[u8]) -> Result<()> {
    fs::write(path, data).with_context(|| {
        format!(
            "cannot write {}: check that the directory is writable",
            path.display()
        )
    })
}

pub(super) fn create_dir(path: &Path) -> Result<()> {
    fs::create_dir_all(path).with_context(|| {
        format!(
            "cannot create {}: check that the parent is writable",
            path.display()
        )
    })
}
