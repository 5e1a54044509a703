//! Turning what the operator points at (a bundle, a volume list, a
//! directory, stdin) into one stream plus its whole-file signature.

use std::io::Read;
use std::path::{Path, PathBuf};

use edgeferry_bundle::sign::TrustedKeys;
use edgeferry_bundle::verify::Class;
use edgeferry_bundle::volumes;

pub struct Opened {
    /// How to name the input in messages.
    pub label: String,
    pub reader: Box<dyn Read + Send>,
    pub file_signature: Option<String>,
    pub size: Option<u64>,
}

/// An input problem, classed for the exit code.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct InputError {
    pub class: Class,
    pub message: String,
}

fn fail(class: Class, message: String) -> anyhow::Error {
    InputError { class, message }.into()
}

/// Which whole-file signature to check, if any.
#[derive(Clone, Copy)]
pub enum WholeFile<'a> {
    /// Only the signed manifest and the entries it lists (the default).
    Skip,
    /// `--whole-file`: `<bundle>.minisig` beside the input.
    Beside,
    /// `--signature FILE`.
    At(&'a Path),
}

pub fn open(
    path: &Path,
    keys: Option<&TrustedKeys>,
    whole_file: WholeFile<'_>,
) -> anyhow::Result<Opened> {
    // Read only when it is to be checked, and then it must be there: a
    // missing one is a signature failure, not a silent skip.
    let read_signature = |default: PathBuf| -> anyhow::Result<Option<String>> {
        let sig_path = match whole_file {
            WholeFile::Skip => return Ok(None),
            WholeFile::Beside => default,
            WholeFile::At(path) => path.to_path_buf(),
        };
        if keys.is_none() {
            return Ok(None);
        }
        match std::fs::read_to_string(&sig_path) {
            Ok(text) => Ok(Some(text)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(fail(
                Class::Signature,
                format!(
                    "--whole-file: the bundle's signature file {} is missing: copy it along with the bundle",
                    sig_path.display()
                ),
            )),
            Err(e) => Err(fail(
                Class::Io,
                format!("reading {}: {e}", sig_path.display()),
            )),
        }
    };
    if path == Path::new("-") {
        if matches!(whole_file, WholeFile::Beside) && keys.is_some() {
            return Err(fail(
                Class::Signature,
                "--whole-file with a bundle from stdin needs --signature <bundle>.minisig".into(),
            ));
        }
        return Ok(Opened {
            label: "bundle from stdin".into(),
            reader: Box::new(std::io::stdin()),
            file_signature: read_signature(PathBuf::new())?,
            size: None,
        });
    }
    let meta = std::fs::metadata(path).map_err(|e| {
        fail(
            Class::Io,
            format!(
                "{}: {e}: check the path (is the media mounted?)",
                path.display()
            ),
        )
    })?;
    if meta.is_dir() {
        return open(&pick_in_dir(path)?, keys, whole_file);
    }
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if let Some(bundle_name) = name.strip_suffix(".volumes.json") {
        let opened = volumes::open(path, keys).map_err(|e| {
            let message = format!("{e:#}");
            let class =
                if message.contains("signature") || message.contains("signed by unknown key") {
                    Class::Signature
                } else {
                    Class::Integrity
                };
            fail(class, message)
        })?;
        let dir = path.parent().unwrap_or(Path::new("."));
        let reader = opened
            .reader()
            .map_err(|e| fail(Class::Io, format!("opening volumes: {e}")))?;
        return Ok(Opened {
            label: format!(
                "bundle {bundle_name} ({} volumes)",
                opened.list.volumes.len()
            ),
            reader,
            file_signature: read_signature(dir.join(format!("{bundle_name}.minisig")))?,
            size: Some(opened.list.size),
        });
    }
    let file = std::fs::File::open(path)
        .map_err(|e| fail(Class::Io, format!("opening {}: {e}", path.display())))?;
    Ok(Opened {
        label: format!("bundle {}", path.display()),
        reader: Box::new(file),
        file_signature: read_signature(PathBuf::from(format!("{}.minisig", path.display())))?,
        size: Some(meta.len()),
    })
}

/// A directory must hold exactly one bundle or volume list.
fn pick_in_dir(dir: &Path) -> anyhow::Result<PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir)
        .map_err(|e| fail(Class::Io, format!("reading {}: {e}", dir.display())))?
    {
        let entry = entry.map_err(|e| fail(Class::Io, e.to_string()))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.ends_with(".tar.zst") || name.ends_with(".volumes.json") {
            found.push(entry.path());
        }
    }
    found.sort();
    match found.len() {
        1 => Ok(found.remove(0)),
        0 => Err(fail(
            Class::Integrity,
            format!(
                "{} holds no bundle (*.tar.zst) or volume list (*.volumes.json)",
                dir.display()
            ),
        )),
        _ => Err(fail(
            Class::Io,
            format!(
                "{} holds several bundles ({}): name the one to use",
                dir.display(),
                found
                    .iter()
                    .map(|p| p
                        .file_name()
                        .unwrap_or_default()
                        .to_string_lossy()
                        .into_owned())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )),
    }
}
