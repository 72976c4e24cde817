//! `--save-captures`: the kernel-log captures `tests/explain.rs` writes to a guest's console
//! (`@@oomlab-capture FILE|LINE`, after two real kills with `oomlab trace` running) become
//! `tests/data/explain/<kernel>/FILE`, the fixtures `oomlab explain` is compared against.
//! The journald and syslog renderings are made from them on the host by
//! `tests/data/explain/make-journal-formats.py`.

use std::{collections::BTreeMap, fs, path::Path};

use anyhow::{Context as _, Result};

use crate::workspace_root;

const MARK: &str = "@@oomlab-capture ";

/// The files in one console log, each with its lines in order.
fn parse(console: &str) -> BTreeMap<String, String> {
    let mut files: BTreeMap<String, String> = BTreeMap::new();
    for line in console.lines() {
        let Some(at) = line.find(MARK) else {
            continue;
        };
        let Some((file, text)) = line[at + MARK.len()..].split_once('|') else {
            continue;
        };
        // Only plain names: a console line must not choose where it is written.
        if file.is_empty()
            || !file
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
        {
            continue;
        }
        let body = files.entry(file.to_string()).or_default();
        body.push_str(text.trim_end_matches('\r'));
        body.push('\n');
    }
    files
}

/// Writes the captures found in `out/<series>/console.log` for each series; says what it did.
pub(super) fn save(out: &Path, series: &[&str]) -> Result<()> {
    for s in series {
        let console = out.join(s).join("console.log");
        let Ok(text) = fs::read_to_string(&console) else {
            eprintln!("xtask vm-test: no {}; no capture saved", console.display());
            continue;
        };
        let files = parse(&text);
        if files.is_empty() {
            eprintln!("xtask vm-test: [{s}] printed no capture (run with --test explain)");
            continue;
        }
        let dir = workspace_root().join("tests/data/explain").join(s);
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        for (name, body) in &files {
            fs::write(dir.join(name), body)
                .with_context(|| format!("writing {}", dir.join(name).display()))?;
        }
        eprintln!(
            "xtask vm-test: [{s}] saved {} to {}",
            files.keys().cloned().collect::<Vec<_>>().join(", "),
            dir.display()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capture_lines_become_files_and_nothing_else() {
        let console = "boot\n\
            [  3.1] x @@oomlab-capture kmsg.txt|6,1,2,-;a|b\r\n\
            noise\n\
            @@oomlab-capture kmsg.txt| SUBSYSTEM=x\n\
            @@oomlab-capture ../evil|no\n\
            @@oomlab-capture trace.json|{}\n";
        let files = parse(console);
        assert_eq!(files.len(), 2);
        assert_eq!(files["kmsg.txt"], "6,1,2,-;a|b\n SUBSYSTEM=x\n");
        assert_eq!(files["trace.json"], "{}\n");
    }
}
