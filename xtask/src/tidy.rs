//! The architecture invariants of ARCHITECTURE.md, checked by reading the
//! sources, so a broken rule fails `cargo test` instead of drifting. Each
//! test names the rule it keeps; a failure lists every offending line.

use std::fs;
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

/// Every `.rs` file under `dir` (relative to the workspace), sorted.
fn rust_files(dir: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root().join(dir)];
    while let Some(d) = stack.pop() {
        for entry in fs::read_dir(&d).unwrap_or_else(|e| panic!("{}: {e}", d.display())) {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

/// [`rust_files`] without one file.
fn rust_files_but(dir: &str, but: &str) -> Vec<PathBuf> {
    rust_files(dir)
        .into_iter()
        .filter(|f| !f.ends_with(but))
        .collect()
}

fn relative(path: &Path) -> String {
    path.strip_prefix(root())
        .unwrap_or(path)
        .display()
        .to_string()
}

/// Lines of code (comments and `#[cfg(test)]` modules included) that
/// contain any of `needles`, as "file:line: text".
fn lines_with(files: &[PathBuf], needles: &[&str]) -> Vec<String> {
    let mut hits = Vec::new();
    for file in files {
        let text = fs::read_to_string(file).unwrap();
        for (i, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            if needles.iter().any(|n| code.contains(n)) {
                hits.push(format!("{}:{}: {}", relative(file), i + 1, line.trim()));
            }
        }
    }
    hits
}

fn assert_none(rule: &str, hits: Vec<String>) {
    assert!(hits.is_empty(), "{rule}:\n  {}", hits.join("\n  "));
}

#[test]
fn mirror_knows_neither_joining_nor_serving() {
    assert_none(
        "installer/src/mirror/ serves the store; it imports nothing of join/, pull/ or serve",
        lines_with(
            &rust_files("installer/src/mirror"),
            &[
                "crate::join",
                "crate::pull",
                "crate::serve",
                "crate::status",
            ],
        ),
    );
}

#[test]
fn node_is_below_the_ways_of_reaching_a_node() {
    assert_none(
        "installer/src/node/ is what join/, pull/ and serve stand on; it imports none of them",
        lines_with(
            &rust_files("installer/src/node"),
            &[
                "crate::join",
                "crate::pull",
                "crate::serve",
                "crate::mirror",
                "crate::status",
            ],
        ),
    );
}

#[test]
fn join_and_pull_are_peers() {
    assert_none(
        "join/ (SSH) and pull/ (/join.sh) share node/, not each other",
        lines_with(&rust_files("installer/src/join"), &["crate::pull"])
            .into_iter()
            .chain(lines_with(
                &rust_files("installer/src/pull"),
                &["crate::join"],
            ))
            .collect(),
    );
}

#[test]
fn only_sys_calls_libc_in_the_installer() {
    let files = rust_files_but("installer/src", "installer/src/sys.rs");
    assert_none(
        "installer: only sys.rs calls libc (each call behind a safe function)",
        lines_with(&files, &["libc::", "unsafe {", "unsafe impl", "unsafe fn"]),
    );
}

#[test]
fn only_the_printer_talks_to_the_terminal() {
    let files = rust_files_but("installer/src", "installer/src/printer.rs");
    assert_none(
        "installer: output goes through printer.rs (stdout for data, --quiet, progress, node text)",
        lines_with(
            &files,
            &[
                "println!",
                "eprintln!",
                "print!(",
                "eprint!(",
                ".is_terminal()",
            ],
        ),
    );
}

#[test]
fn crates_without_unsafe_forbid_it() {
    for krate in ["bundle", "builder"] {
        let lib = fs::read_to_string(root().join(krate).join("src/lib.rs")).unwrap();
        assert!(
            lib.contains("#![forbid(unsafe_code)]"),
            "{krate}/src/lib.rs: a crate without unsafe code says #![forbid(unsafe_code)]"
        );
    }
}

#[test]
fn every_unsafe_block_says_why_it_is_sound() {
    let mut hits = Vec::new();
    for dir in [
        "installer/src",
        "tests",
        "xtask/src",
        "bundle/src",
        "builder/src",
    ] {
        for file in rust_files(dir) {
            if file.ends_with("xtask/src/tidy.rs") {
                continue;
            }
            let text = fs::read_to_string(&file).unwrap();
            let lines: Vec<&str> = text.lines().collect();
            for (i, line) in lines.iter().enumerate() {
                let code = line.split("//").next().unwrap_or("");
                if !code.contains("unsafe {") && !code.contains("unsafe impl") {
                    continue;
                }
                if !has_safety_comment(&lines, i) {
                    hits.push(format!("{}:{}: {}", relative(&file), i + 1, line.trim()));
                }
            }
        }
    }
    assert_none("every unsafe block has a `// SAFETY:` comment", hits);
}

/// Whether line `i` holds, or the comment block just above it ends in,
/// a `SAFETY:` note; one code line (`let x =`, a match arm) may stand
/// between the comment and the `unsafe`.
fn has_safety_comment(lines: &[&str], i: usize) -> bool {
    if lines[i].contains("SAFETY:") {
        return true;
    }
    let is_comment = |l: &str| l.trim_start().starts_with("//");
    let mut k = i;
    if k > 0 && !is_comment(lines[k - 1]) {
        k -= 1; // the one code line
    }
    while k > 0 && is_comment(lines[k - 1]) {
        k -= 1;
        if lines[k].contains("SAFETY:") {
            return true;
        }
    }
    false
}

/// The `[dependencies]` names of a Cargo.toml (workspace = true or not).
fn dependencies(manifest: &str) -> Vec<String> {
    let text = fs::read_to_string(root().join(manifest)).unwrap();
    let mut deps = Vec::new();
    let mut in_deps = false;
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            in_deps = line == "[dependencies]" || line == "[dev-dependencies]";
            continue;
        }
        if in_deps && !line.starts_with('#') {
            if let Some((name, _)) = line.split_once(['=', '.']) {
                let name = name.trim();
                if !name.is_empty() {
                    deps.push(name.to_string());
                }
            }
        }
    }
    deps
}

#[test]
fn bundle_depends_on_no_crate_of_ours_and_nothing_imports_upward() {
    let ours = |manifest: &str| -> Vec<String> {
        dependencies(manifest)
            .into_iter()
            .filter(|d| d.starts_with("edgeferry"))
            .collect()
    };
    assert_eq!(
        ours("bundle/Cargo.toml"),
        Vec::<String>::new(),
        "bundle/ is the bottom crate"
    );
    assert_eq!(ours("builder/Cargo.toml"), ["edgeferry-bundle"]);
    assert_eq!(ours("installer/Cargo.toml"), ["edgeferry-bundle"]);
}

#[test]
fn every_declared_dependency_is_used() {
    let mut unused = Vec::new();
    for (krate, dirs) in [
        ("bundle", &["bundle/src"][..]),
        ("builder", &["builder/src"][..]),
        ("installer", &["installer/src"][..]),
        ("tests", &["tests/src", "tests/it"][..]),
        ("xtask", &["xtask/src"][..]),
    ] {
        let sources: String = dirs
            .iter()
            .flat_map(|d| rust_files(d))
            .map(|f| fs::read_to_string(f).unwrap())
            .collect();
        for dep in dependencies(&format!("{krate}/Cargo.toml")) {
            let path = dep.replace('-', "_");
            if !sources.contains(&format!("{path}::")) && !sources.contains(&format!("use {path}"))
            {
                unused.push(format!("{krate}/Cargo.toml: {dep}"));
            }
        }
    }
    assert_none("a dependency is declared only where it is used", unused);
}

#[test]
fn comments_stand_on_their_own() {
    let files: Vec<PathBuf> = [
        "bundle/src",
        "builder/src",
        "installer/src",
        "tests",
        "xtask/src",
    ]
    .iter()
    .flat_map(|d| rust_files(d))
    .filter(|f| !f.ends_with("xtask/src/tidy.rs"))
    .collect();
    let mut hits = Vec::new();
    for file in &files {
        let text = fs::read_to_string(file).unwrap();
        for (i, line) in text.lines().enumerate() {
            if line.contains("research §")
                || line.contains("research/")
                || line.contains("(research ")
            {
                hits.push(format!("{}:{}: {}", relative(file), i + 1, line.trim()));
            }
        }
    }
    assert_none(
        "comments cite no notes outside the repository (state the fact instead)",
        hits,
    );
}

#[test]
fn architecture_md_names_every_installer_module() {
    let map = fs::read_to_string(root().join("ARCHITECTURE.md")).unwrap();
    let mut missing = Vec::new();
    for file in rust_files("installer/src") {
        let rel = file
            .strip_prefix(root().join("installer/src"))
            .unwrap()
            .display()
            .to_string();
        let name = if rel.ends_with("/mod.rs") {
            format!("{}/", rel.trim_end_matches("/mod.rs"))
        } else {
            rel.rsplit('/').next().unwrap().to_string()
        };
        if !map.contains(&name) {
            missing.push(format!("installer/src/{rel} (as {name})"));
        }
    }
    assert_none(
        "ARCHITECTURE.md's map names every installer module",
        missing,
    );
}

/// The crate's top-level modules each file imports (`crate::x`, in code,
/// not comments), as (importer, imported) pairs of top-level names.
fn module_edges(src: &str) -> Vec<(String, String)> {
    let base = root().join(src);
    let mut edges = Vec::new();
    for file in rust_files(src) {
        let rel = file
            .strip_prefix(&base)
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let from = rel
            .split('/')
            .next()
            .unwrap()
            .trim_end_matches(".rs")
            .to_string();
        let text = fs::read_to_string(&file).unwrap();
        for line in text.lines() {
            let code = line.split("//").next().unwrap_or("");
            for piece in code.split("crate::").skip(1) {
                let to: String = piece
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                if !to.is_empty() && to != from {
                    edges.push((from.clone(), to));
                }
            }
            if let Some(list) = code.trim().strip_prefix("use crate::{") {
                for to in list.split([',', '}', ';']).map(|t| t.trim()) {
                    let to = to.split("::").next().unwrap_or("");
                    if !to.is_empty() && to != from && !to.contains(' ') {
                        edges.push((from.clone(), to.to_string()));
                    }
                }
            }
        }
    }
    edges.sort();
    edges.dedup();
    edges
}

/// A cycle among the edges, if there is one, as "a -> b -> a".
fn find_cycle(edges: &[(String, String)]) -> Option<String> {
    fn visit(
        node: &str,
        edges: &[(String, String)],
        path: &mut Vec<String>,
        done: &mut Vec<String>,
    ) -> Option<String> {
        if let Some(start) = path.iter().position(|p| p == node) {
            let mut cycle = path[start..].to_vec();
            cycle.push(node.to_string());
            return Some(cycle.join(" -> "));
        }
        if done.iter().any(|d| d == node) {
            return None;
        }
        path.push(node.to_string());
        for (_, to) in edges.iter().filter(|(from, _)| from == node) {
            if let Some(cycle) = visit(to, edges, path, done) {
                return Some(cycle);
            }
        }
        path.pop();
        done.push(node.to_string());
        None
    }
    let mut done = Vec::new();
    edges
        .iter()
        .find_map(|(from, _)| visit(from, edges, &mut Vec::new(), &mut done))
}

#[test]
fn module_imports_form_no_cycle() {
    let mut cycles = Vec::new();
    for src in ["bundle/src", "builder/src", "installer/src"] {
        let edges = module_edges(src);
        if let Some(cycle) = find_cycle(&edges) {
            cycles.push(format!("{src}: {cycle}"));
        }
    }
    assert_none(
        "each crate's top-level modules import one another one way (no loop)",
        cycles,
    );
}
