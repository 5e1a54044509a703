//! The one place that decides how edgeferry talks to the operator.
//!
//! - stdout carries data only: a command's result, its `--json`, a table.
//! - stderr carries notes, warnings and progress; `--quiet` drops the notes.
//! - Progress bars appear only on a terminal, never with `--json` or
//!   `--quiet`, and never when `EDGEFERRY_NO_PROGRESS` is set (to anything
//!   but an empty string or `0`), so logs and CI stay clean.
//! - Text that came from a node (its output, its arch, an error it caused)
//!   passes through [`node_text`] before it reaches a terminal.

use std::io::IsTerminal;

use anyhow::Result;
use serde::Serialize;

/// Turns progress bars off whatever the terminal says.
pub const NO_PROGRESS_ENV: &str = "EDGEFERRY_NO_PROGRESS";

/// The longest node-supplied field we print (a table cell, an error).
pub const MAX_NODE_FIELD: usize = 4096;

#[derive(Clone, Copy, Debug)]
pub struct Printer {
    json: bool,
    quiet: bool,
    progress: bool,
}

impl Printer {
    pub fn new(json: bool, quiet: bool) -> Printer {
        let disabled = std::env::var_os(NO_PROGRESS_ENV).is_some_and(|v| !v.is_empty() && v != "0");
        Printer {
            json,
            quiet,
            progress: !json && !quiet && !disabled && std::io::stderr().is_terminal(),
        }
    }

    /// Machine-readable output was asked for.
    pub fn json(&self) -> bool {
        self.json
    }

    /// Progress bars may be drawn on stderr.
    pub fn progress(&self) -> bool {
        self.progress
    }

    /// A result as pretty JSON on stdout.
    pub fn data<T: Serialize + ?Sized>(&self, value: &T) -> Result<()> {
        println!("{}", serde_json::to_string_pretty(value)?);
        Ok(())
    }

    /// A result as one compact JSON line on stdout.
    pub fn data_line<T: Serialize + ?Sized>(&self, value: &T) -> Result<()> {
        println!("{}", serde_json::to_string(value)?);
        Ok(())
    }

    /// Human-readable result text on stdout, printed as is.
    pub fn text(&self, text: &str) {
        print!("{text}");
    }

    /// One line of result on stdout.
    pub fn line(&self, text: &str) {
        println!("{text}");
    }

    /// Something the operator may want to know; not with `--quiet`.
    pub fn note(&self, text: &str) {
        if !self.quiet {
            eprintln!("{text}");
        }
    }

    /// Always shown on stderr.
    pub fn warn(&self, text: &str) {
        eprintln!("{text}");
    }

    /// Whether stdout is a terminal (for redraws such as `status --watch`).
    pub fn stdout_is_terminal(&self) -> bool {
        std::io::stdout().is_terminal()
    }

    /// A byte-counting bar, or `None` when progress is off.
    pub fn bytes_bar(&self, total: u64, verb: &str) -> Option<indicatif::ProgressBar> {
        self.progress.then(|| {
            indicatif::ProgressBar::new(total).with_style(
                indicatif::ProgressStyle::with_template(&format!(
                    "{verb} [{{bar:40}}] {{bytes}}/{{total_bytes}} {{bytes_per_sec}} eta {{eta}}"
                ))
                .expect("static template")
                .progress_chars("=> "),
            )
        })
    }
}

/// Room kept past [`MAX_NODE_FIELD`] for the "… (N bytes cut)" note.
const CUT_NOTE_ROOM: usize = 32;

/// Node-supplied text made safe for a terminal and bounded: control
/// characters (C0 but newline and tab, DEL, C1, so every escape sequence)
/// are shown as `\x1b`-style escapes rather than dropped, so an operator
/// still sees what was sent; past [`MAX_NODE_FIELD`] bytes the rest is cut
/// with a note of how much. Applying it twice changes nothing, so a field
/// escaped when it was stored (journal, report.json) prints as stored.
pub fn node_text(text: &str) -> String {
    let mut out = String::with_capacity(text.len().min(MAX_NODE_FIELD + CUT_NOTE_ROOM));
    // Where a cut would go: the output length and input offset at which
    // the output first reached MAX_NODE_FIELD.
    let mut cut_at = None;
    for (i, c) in text.char_indices() {
        if out.len() >= MAX_NODE_FIELD && cut_at.is_none() {
            cut_at = Some((out.len(), i));
        }
        if out.len() >= MAX_NODE_FIELD + CUT_NOTE_ROOM {
            let (keep, from) = cut_at.expect("set at MAX_NODE_FIELD");
            out.truncate(keep);
            return format!("{out}… ({} bytes cut)", text.len() - from);
        }
        match c {
            '\n' | '\t' => out.push(c),
            c if c.is_control() => out.push_str(&format!("\\x{:02x}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

/// [`node_text`] for one table cell: newlines and tabs become spaces too.
pub fn node_cell(text: &str) -> String {
    node_text(&text.replace(['\n', '\t', '\r'], " "))
}

/// Rows as aligned columns, every cell through [`node_cell`]: the summary
/// table of join/reset and `status` share it.
pub fn table<const N: usize>(rows: &[[String; N]]) -> String {
    let rows: Vec<[String; N]> = rows
        .iter()
        .map(|r| std::array::from_fn(|i| node_cell(&r[i])))
        .collect();
    let mut widths = [0usize; N];
    for r in &rows {
        for (w, cell) in widths.iter_mut().zip(r.iter()) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut s = String::new();
    for r in &rows {
        for (cell, w) in r.iter().zip(widths).take(N - 1) {
            s.push_str(&format!("{cell:w$}  "));
        }
        s.push_str(&r[N - 1]);
        s.push('\n');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_are_shown_not_obeyed_and_long_fields_are_cut() {
        assert_eq!(
            node_text("a\x1b]0;owned\x07b\u{9b}c\0"),
            "a\\x1b]0;owned\\x07b\\x9bc\\x00"
        );
        assert_eq!(node_text("two\nlines\tok"), "two\nlines\tok");
        assert_eq!(node_cell("two\nlines"), "two lines");
        let long = "x".repeat(MAX_NODE_FIELD + 100);
        let cut = node_text(&long);
        assert!(
            cut.ends_with("… (100 bytes cut)"),
            "{}",
            &cut[cut.len() - 30..]
        );
        assert!(cut.len() < MAX_NODE_FIELD + 30);
        assert_eq!(node_text(&cut), cut, "escaping twice changes nothing");
        let hostile = format!("\x1b[2J{}", "\0".repeat(3 * MAX_NODE_FIELD));
        let once = node_text(&hostile);
        assert!(
            once.ends_with(" bytes cut)") && !once.contains('\0'),
            "{once}"
        );
        assert_eq!(node_text(&once), once);
    }
}
