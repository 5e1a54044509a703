//! Validation of custom resources against the CRD schemas kept in
//! `manifests/crds/`, with python3-jsonschema (the real validator; the
//! Rust side only turns YAML into JSON).
//!
//! An OpenAPI v3 schema of a CRD reads as JSON Schema draft 4 for what it
//! uses here (`type`, `properties`, `items`, `required`,
//! `additionalProperties`, `format`). Two things are added, as the API
//! server applies them: an object schema without `additionalProperties`
//! refuses unknown fields (the apiserver's strict field validation, which
//! `kubectl apply` asks for by default), and `format: int32` bounds the
//! integer.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The kept schema of NodeUpgradeJob v1alpha2.
pub fn nodeupgradejob_schema() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../manifests/crds/nodeupgradejob-v1alpha2.schema.yaml")
}

const VALIDATE_PY: &str = r#"
import json, sys
import jsonschema

def strict(node):
    if isinstance(node, dict):
        if node.get("type") == "object" and "properties" in node and "additionalProperties" not in node:
            node["additionalProperties"] = False
        if node.get("format") == "int32":
            node["minimum"], node["maximum"] = -2**31, 2**31 - 1
        for value in list(node.values()):
            strict(value)
    elif isinstance(node, list):
        for value in node:
            strict(value)

schema = json.load(open(sys.argv[1]))
document = json.load(open(sys.argv[2]))
strict(schema)
errors = sorted(jsonschema.Draft4Validator(schema).iter_errors(document), key=lambda e: list(e.absolute_path))
for e in errors:
    print("/".join(str(p) for p in e.absolute_path) + ": " + e.message)
sys.exit(1 if errors else 0)
"#;

/// Validates the YAML document `yaml` against the CRD schema at `schema`
/// (a YAML openAPIV3Schema): `Err` lists each violation, one a line.
pub fn validate(schema: &Path, yaml: &str) -> Result<(), String> {
    let schema: serde_json::Value = serde_norway::from_str(
        &std::fs::read_to_string(schema).map_err(|e| format!("{}: {e}", schema.display()))?,
    )
    .map_err(|e| format!("schema: {e}"))?;
    let document: serde_json::Value =
        serde_norway::from_str(yaml).map_err(|e| format!("not YAML: {e}"))?;
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let (s, d) = (dir.path().join("schema.json"), dir.path().join("doc.json"));
    std::fs::write(&s, schema.to_string()).map_err(|e| e.to_string())?;
    std::fs::write(&d, document.to_string()).map_err(|e| e.to_string())?;
    let out = Command::new("python3")
        .arg("-c")
        .arg(VALIDATE_PY)
        .arg(&s)
        .arg(&d)
        .output()
        .map_err(|e| format!("python3: {e}"))?;
    match out.status.code() {
        Some(0) => Ok(()),
        Some(1) if out.stderr.is_empty() => Err(String::from_utf8_lossy(&out.stdout).into_owned()),
        _ => panic!(
            "python3-jsonschema did not run (xtask ci installs it): {}",
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

/// [`validate`] against the kept NodeUpgradeJob v1alpha2 schema.
pub fn validate_nodeupgradejob(yaml: &str) -> Result<(), String> {
    validate(&nodeupgradejob_schema(), yaml)
}
