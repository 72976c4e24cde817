//! A run's report as files: `report.json` (the whole model), `timeline.svg` (the plot) and
//! `report.md` (the story, for people), side by side in one directory.

use std::{fs, io::Write as _, path::Path};

use super::{markdown, plot, timeline::RunReport};

/// Writes `report.json`, `timeline.svg` and `report.md` into `dir` (created if missing).
pub fn write_files(dir: &Path, report: &RunReport) -> Result<(), String> {
    fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let json = serde_json::to_string_pretty(report).map_err(|e| e.to_string())?;
    let write = |name: &str, text: &str| {
        let p = dir.join(name);
        fs::File::create(&p)
            .and_then(|mut f| f.write_all(text.as_bytes()))
            .map_err(|e| format!("writing {}: {e}", p.display()))
    };
    write("report.json", &json)?;
    let svg = plot::timeline_svg(report).map_err(|e| e.to_string())?;
    write("timeline.svg", &svg)?;
    write("report.md", &markdown::render(report))?;
    Ok(())
}
