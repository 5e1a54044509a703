//! The stand-in scripts: real `.sh` files next to this one, compiled in
//! with `include_str!` and filled in by plain text replacement.
//!
//! Placeholders (`@NAME@`, replaced everywhere it occurs):
//! - `keadm.sh`: `@VERSION@` (the KubeEdge version), `@USAGE@` (the help
//!   text, without its last newline), `@JOIN_PARSER@` and `@EDGE_PARSERS@`
//!   (the sh flag parsers [`sh_parser`] writes from `bundle::keadm`'s
//!   flags: `join_parse`, and `<command>_edge_parse` for each of
//!   `keadm::EDGE_COMMANDS`), `@EDGE_COMMANDS@` (those commands as an sh
//!   case pattern), `@REQUIRED@` (a check per required join flag).
//! - `edgecore.sh`: `@VERSION@`.
//! - `component.sh`: `@NAME@` (cloudcore, admission, ...) and `@VERSION@`.
//! - `pause.sh`, `entrypoint.sh`: `@REFERENCE@` (the image's reference).
//!
//! The environment variable and state directory names
//! (`SAMPLE_ROOT_ENV`, `STANDIN_WAIT_ENV`, `STANDIN_STATE_DIR` in `super`) are
//! written out in the scripts, so that `sh -n` and shellcheck can read the
//! files as they are; a test checks that they match the constants.

use anyhow::Result;
use edgeferry_bundle::keadm::{self, Flag, FlagKind};

#[cfg(test)]
use super::{SAMPLE_ROOT_ENV, STANDIN_NO_CLOUD_ENV, STANDIN_STATE_DIR, STANDIN_WAIT_ENV};

/// The stand-in keadm. POSIX sh plus coreutils, sed, grep, tar, gzip and
/// curl (or wget), so that it runs under dash and busybox alike.
pub(super) const KEADM_SH: &str = include_str!("keadm.sh");
/// The stand-in edgecore, shipped in the installation-package image and the
/// kubeedge tarball.
pub(super) const EDGECORE_SH: &str = include_str!("edgecore.sh");
/// A stand-in for a KubeEdge daemon such as `cloudcore`: it reports its
/// version and refuses to run.
pub(super) const COMPONENT_SH: &str = include_str!("component.sh");
pub(super) const PAUSE_SH: &str = include_str!("pause.sh");
pub(super) const ENTRYPOINT_SH: &str = include_str!("entrypoint.sh");

/// Every script file, by name, for the checks below and in `super::tests`.
#[cfg(test)]
pub(super) const ALL: [(&str, &str); 5] = [
    ("keadm.sh", KEADM_SH),
    ("edgecore.sh", EDGECORE_SH),
    ("component.sh", COMPONENT_SH),
    ("pause.sh", PAUSE_SH),
    ("entrypoint.sh", ENTRYPOINT_SH),
];

pub(super) fn sh_var(long: &str) -> String {
    long.replace('-', "_")
}

/// Single-quotes `s` for sh.
pub(super) fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r#"'\''"#))
}

/// Statement that stores `value` (an sh expression) for flag `f`.
/// For a deprecated flag, the statement printing pflag's notice on stderr
/// (with `; ` after it); for any other flag nothing.
pub(super) fn sh_notice(f: &Flag) -> String {
    match f.deprecated {
        Some(message) => format!(
            "printf '%s\\n' {} >&2; ",
            sh_quote(&format!("Flag --{} has been deprecated, {message}", f.long))
        ),
        None => String::new(),
    }
}

/// A deprecated flag first prints pflag's notice on stderr.
pub(super) fn sh_assign(f: &Flag, value: &str) -> String {
    let v = sh_var(f.long);
    let notice = sh_notice(f);
    match f.kind {
        FlagKind::List => {
            format!("{notice}opt_{v}=${{opt_{v}:+$opt_{v},}}{value}; seen_{v}=1")
        }
        FlagKind::Str | FlagKind::Bool => format!("{notice}opt_{v}={value}; seen_{v}=1"),
    }
}

/// An sh function `<name>_parse` that parses its arguments the way pflag
/// does for `flags`, with pflag's error messages, into `opt_*` / `seen_*`.
pub(super) fn sh_parser(name: &str, flags: &[Flag]) -> String {
    let mut s = String::new();
    s.push_str(&format!("{name}_defaults() {{\n"));
    for f in flags {
        let v = sh_var(f.long);
        s.push_str(&format!("\topt_{v}={}; seen_{v}=\n", sh_quote(f.default)));
    }
    s.push_str("}\n\n");

    s.push_str(&format!(
        "{name}_parse() {{\n\twhile [ $# -gt 0 ]; do\n\t\tcase $1 in\n"
    ));
    s.push_str("\t\t--) break ;;\n\t\t-h | --help)\n\t\t\tusage\n\t\t\texit 0\n\t\t\t;;\n");
    for f in flags {
        let long = f.long;
        match f.kind {
            FlagKind::Str | FlagKind::List => {
                s.push_str(&format!("\t\t--{long}=*) {} ;;\n", sh_assign(f, "${1#*=}")));
                s.push_str(&format!(
                    "\t\t--{long})\n\t\t\t[ $# -ge 2 ] || fail \"flag needs an argument: --{long}\"\n\t\t\t{}\n\t\t\tshift\n\t\t\t;;\n",
                    sh_assign(f, "$2")
                ));
                if let Some(c) = f.short {
                    s.push_str(&format!(
                        "\t\t-{c})\n\t\t\t[ $# -ge 2 ] || fail \"flag needs an argument: '{c}' in -{c}\"\n\t\t\t{}\n\t\t\tshift\n\t\t\t;;\n",
                        sh_assign(f, "$2")
                    ));
                    s.push_str(&format!(
                        "\t\t-{c}=*) {} ;;\n",
                        sh_assign(f, &format!("${{1#-{c}=}}"))
                    ));
                    s.push_str(&format!(
                        "\t\t-{c}?*) {} ;;\n",
                        sh_assign(f, &format!("${{1#-{c}}}"))
                    ));
                }
            }
            FlagKind::Bool => {
                s.push_str(&format!("\t\t--{long}) {} ;;\n", sh_assign(f, "true")));
                let v = sh_var(long);
                s.push_str(&format!(
                    "\t\t--{long}=*)\n\t\t\topt_{v}=$(parse_bool \"${{1#*=}}\" --{long}) || exit 1\n\t\t\t{}seen_{v}=1\n\t\t\t;;\n",
                    sh_notice(f)
                ));
                if let Some(c) = f.short {
                    s.push_str(&format!("\t\t-{c}) {} ;;\n", sh_assign(f, "true")));
                }
            }
        }
    }
    s.push_str(concat!(
        "\t\t--*) fail \"unknown flag: ${1%%=*}\" ;;\n",
        "\t\t-?*)\n",
        "\t\t\trest=${1#-}\n",
        "\t\t\tfail \"unknown shorthand flag: '${rest%\"${rest#?}\"}' in $1\"\n",
        "\t\t\t;;\n",
        // Cobra passes positional arguments to join, which ignores them.
        "\t\t*) ;;\n",
        "\t\tesac\n\t\tshift\n\tdone\n}\n",
    ));
    s
}

pub(super) fn usage_lines(flags: &[Flag]) -> String {
    let mut rows = Vec::new();
    // pflag hides deprecated flags from the help.
    for f in flags.iter().filter(|f| f.deprecated.is_none()) {
        let names = match f.short {
            Some(c) => format!("  -{c}, --{}", f.long),
            None => format!("      --{}", f.long),
        };
        let kind = match f.kind {
            FlagKind::Str => " string",
            FlagKind::List => " strings",
            FlagKind::Bool => "",
        };
        let default = match (f.kind, f.default) {
            (FlagKind::Bool, _) | (_, "") => String::new(),
            (_, d) => format!(" (default \"{d}\")"),
        };
        rows.push((format!("{names}{kind}"), format!("{}{default}", f.help)));
    }
    let width = rows.iter().map(|(l, _)| l.len()).max().unwrap_or(0);
    rows.iter()
        .map(|(l, r)| format!("{l:width$}   {r}\n"))
        .collect()
}

/// The stand-in `keadm`: checks command lines exactly as the real keadm of
/// `version` would and, on a test host, joins and resets the node the way
/// the real one does (the same steps, messages and files as keadm's
/// `join edge` and `reset edge` commands), pulling the
/// installation-package image over HTTP from the site mirror instead of
/// through containerd. The header of `keadm.sh` lists the differences.
pub(super) fn keadm_script(version: &str) -> Result<String> {
    let flags = keadm::flags_for(version)?;
    let mut required = String::new();
    for name in keadm::JOIN_REQUIRED {
        let v = sh_var(name);
        required.push_str(&format!(
            "\t[ -n \"$seen_{v}\" ] || missing=\"${{missing:+$missing, }}\\\"{name}\\\"\"\n"
        ));
    }
    let mut usage = format!(
        "keadm {version} (edgeferry SAMPLE stand-in, not KubeEdge)\n\n\
         Usage:\n  keadm version\n  keadm join --cloudcore-ipport=HOST:PORT --kubeedge-version=VERSION [flags]\n"
    );
    for (command, _) in keadm::EDGE_COMMANDS {
        usage.push_str(&format!("  keadm {command} edge [flags]\n"));
    }
    usage.push_str(&format!("\nJoin flags:\n{}", usage_lines(flags.join)));
    let mut parsers = String::new();
    let mut commands = Vec::new();
    for (command, table) in keadm::EDGE_COMMANDS {
        let table = table(&flags);
        let title = format!("{}{}", command[..1].to_uppercase(), &command[1..]);
        usage.push_str(&format!("\n{title} edge flags:\n{}", usage_lines(table)));
        parsers.push_str(&sh_parser(&format!("{command}_edge"), table));
        parsers.push('\n');
        commands.push(*command);
    }
    // The heredoc's terminator follows the placeholder on its own line.
    let usage = usage.strip_suffix('\n').unwrap_or(&usage);
    // The version is checked by flags_for and the rest is ours, so no
    // replacement can bring in another placeholder.
    Ok(KEADM_SH
        .replace("@VERSION@", version)
        .replace("@JOIN_PARSER@", &sh_parser("join", flags.join))
        .replace("@EDGE_PARSERS@", &parsers)
        .replace("@EDGE_COMMANDS@", &commands.join(" | "))
        .replace("@REQUIRED@", &required)
        .replace("@USAGE@", usage))
}

/// The stand-in `edgecore`, shipped in the installation-package image and
/// the kubeedge tarball: started by the stand-in keadm, it writes what the
/// real keadm waits for and keeps running.
pub(super) fn edgecore_script(version: &str) -> String {
    EDGECORE_SH.replace("@VERSION@", version)
}

/// Stand-in for a KubeEdge daemon such as `cloudcore`: it reports its
/// version and refuses to run.
pub(super) fn component_script(name: &str, version: &str) -> String {
    COMPONENT_SH
        .replace("@NAME@", name)
        .replace("@VERSION@", version)
}

/// The stand-in `/pause` of the pause image.
pub(super) fn pause_script(reference: &str) -> String {
    PAUSE_SH.replace("@REFERENCE@", reference)
}

/// The stand-in `/entrypoint` of mosquitto and the extra workload images.
pub(super) fn entrypoint_script(reference: &str) -> String {
    ENTRYPOINT_SH.replace("@REFERENCE@", reference)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    /// `program args... FILE` on `script` saved as `name`: its output when
    /// it fails, `None` when it passes or cannot be started.
    fn run_check(program: &str, args: &[&str], name: &str, script: &str) -> Option<String> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(name);
        std::fs::write(&path, script).unwrap();
        let out = Command::new(program).args(args).arg(&path).output().ok()?;
        Some(format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
        .filter(|_| !out.status.success())
    }

    /// Every file as it is, and every script as filled in.
    fn all_scripts() -> Vec<(String, String)> {
        let mut scripts: Vec<(String, String)> = ALL
            .iter()
            .map(|(name, text)| (name.to_string(), text.to_string()))
            .collect();
        for version in ["v1.21.3", "v1.22.0", "v1.23.1"] {
            scripts.push((format!("keadm {version}"), keadm_script(version).unwrap()));
        }
        scripts.push(("edgecore".into(), edgecore_script("v1.23.1")));
        scripts.push(("cloudcore".into(), component_script("cloudcore", "v1.23.1")));
        scripts.push(("pause".into(), pause_script("registry.k8s.io/pause:3.10")));
        scripts.push((
            "entrypoint".into(),
            entrypoint_script("docker.io/library/nginx:1.27"),
        ));
        scripts
    }

    /// With `sh`, `dash` and busybox's sh; a shell that is not installed
    /// is skipped (`run_check` cannot start it).
    #[test]
    fn scripts_parse_with_sh_n() {
        assert!(
            run_check("sh", &["-n"], "broken.sh", "if true; then\n").is_some(),
            "sh -n must report a syntax error"
        );
        let scripts = all_scripts();
        for shell in ["sh", "dash", "busybox"] {
            let args: &[&str] = if shell == "busybox" {
                &["sh", "-n"]
            } else {
                &["-n"]
            };
            for (name, text) in &scripts {
                let file = name.replace(' ', "-");
                if let Some(err) = run_check(shell, args, &file, text) {
                    panic!("{shell} -n {name}: {err}");
                }
            }
        }
    }

    /// shellcheck, when it is installed, finds no errors (warnings and
    /// style notes are not checked: the scripts mirror keadm's behaviour,
    /// not shellcheck's taste).
    #[test]
    fn scripts_pass_shellcheck_if_installed() {
        if Command::new("shellcheck")
            .arg("--version")
            .output()
            .is_err()
        {
            eprintln!("shellcheck is not installed: skipped");
            return;
        }
        for (name, text) in all_scripts() {
            let file = name.replace(' ', "-");
            if let Some(err) = run_check("shellcheck", &["-s", "sh", "-S", "error"], &file, &text) {
                panic!("shellcheck {name}: {err}");
            }
        }
    }

    #[test]
    fn scripts_name_the_constants() {
        for needle in [
            format!("${{{SAMPLE_ROOT_ENV}:-}}"),
            format!("${{{STANDIN_WAIT_ENV}:-300}}"),
            format!("$ROOT{STANDIN_STATE_DIR}"),
            format!("${{{STANDIN_NO_CLOUD_ENV}-}}"),
        ] {
            assert!(KEADM_SH.contains(&needle), "keadm.sh lacks {needle}");
        }
        for needle in [
            format!("${{{SAMPLE_ROOT_ENV}:-}}"),
            format!("$ROOT{STANDIN_STATE_DIR}/edgecore.pid"),
            format!("${{{STANDIN_NO_CLOUD_ENV}-}}"),
        ] {
            assert!(EDGECORE_SH.contains(&needle), "edgecore.sh lacks {needle}");
        }
        // No placeholder is left for a value that is no longer replaced.
        for (name, text) in ALL {
            for old in ["@ROOT_ENV@", "@WAIT_ENV@", "@STATE_DIR@"] {
                assert!(!text.contains(old), "{name} still has {old}");
            }
        }
    }
}
