//! Parser for tracefs `format` files (`/sys/kernel/tracing/events/<group>/<event>/format`).
//!
//! Field offsets differ between kernels (`oom:mark_victim` had only `pid` before 6.9), so they
//! are read from the running kernel and handed to the eBPF programs — never compiled in.

use std::{fs, io, path::Path};

use stress_common::Field;

/// One `field:` line.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct FieldDesc {
    pub name: String,
    /// The C declaration without the name, e.g. `unsigned long`, `__data_loc char[]`, `char[16]`.
    pub c_type: String,
    pub offset: u16,
    pub size: u16,
    pub signed: bool,
}

impl FieldDesc {
    pub fn is_data_loc(&self) -> bool {
        self.c_type.starts_with("__data_loc")
    }

    /// The location the eBPF side needs.
    pub fn to_field(&self) -> Field {
        Field {
            offset: self.offset,
            size: self.size,
            data_loc: u16::from(self.is_data_loc()),
            signed: u16::from(self.signed),
        }
    }
}

/// A whole `format` file: the event's name and id and its own fields (the `common_*` ones are
/// kept apart since every event has them).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Format {
    pub name: String,
    pub id: u32,
    pub common: Vec<FieldDesc>,
    pub fields: Vec<FieldDesc>,
    /// Lines that could not be read (`line N: why: text`): their field is absent, the rest of
    /// the tracepoint still works.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub skipped: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("tracepoint format has no `name:` line")]
    NoName,
}

impl Format {
    pub fn read(path: &Path) -> Result<Self, FormatError> {
        let text = fs::read_to_string(path).map_err(|source| FormatError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text)
    }

    /// A line that cannot be read is skipped and noted in `skipped` (and logged): one garbled
    /// field leaves that field absent, as on a kernel without it, instead of the whole tracer
    /// failing to start.
    pub fn parse(text: &str) -> Result<Self, FormatError> {
        let mut name = None;
        let mut id = 0;
        let mut common = Vec::new();
        let mut fields = Vec::new();
        let mut skipped = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim();
            let mut skip = |why: &str| {
                let note = format!("line {}: {why}: {raw:?}", i + 1);
                log::warn!("tracepoint format: skipping {note}");
                skipped.push(note);
            };
            if let Some(rest) = line.strip_prefix("name:") {
                name = Some(rest.trim().to_string());
            } else if let Some(rest) = line.strip_prefix("ID:") {
                match rest.trim().parse() {
                    Ok(n) => id = n,
                    Err(_) => skip("ID is not a number"),
                }
            } else if line.starts_with("field:") {
                match parse_field(line) {
                    Some(f) if f.name.starts_with("common_") => common.push(f),
                    Some(f) => fields.push(f),
                    None => skip("expected `field:TYPE NAME; offset:N; size:N; signed:N;`"),
                }
            }
        }
        Ok(Format {
            name: name.ok_or(FormatError::NoName)?,
            id,
            common,
            fields,
            skipped,
        })
    }

    pub fn field(&self, name: &str) -> Option<&FieldDesc> {
        self.fields.iter().find(|f| f.name == name)
    }

    /// Fills a layout array in the order `names` lists; a name this kernel lacks stays absent.
    pub fn layout<const N: usize>(&self, names: &[&str]) -> [Field; N] {
        let mut out = [Field::ABSENT; N];
        for (slot, name) in out.iter_mut().zip(names) {
            if let Some(f) = self.field(name) {
                *slot = f.to_field();
            }
        }
        out
    }
}

/// `field:unsigned long total_vm;\toffset:16;\tsize:8;\tsigned:0;`
fn parse_field(line: &str) -> Option<FieldDesc> {
    let mut decl = None;
    let (mut offset, mut size, mut signed) = (None, None, None);
    for part in line.split(';').map(str::trim).filter(|p| !p.is_empty()) {
        let (key, value) = part.split_once(':')?;
        match key.trim() {
            "field" => decl = Some(value.trim()),
            "offset" => offset = value.trim().parse().ok(),
            "size" => size = value.trim().parse().ok(),
            "signed" => signed = Some(value.trim() == "1"),
            _ => {}
        }
    }
    let decl = decl?;
    // The name is the last identifier; an array suffix (`comm[16]`) belongs to the type.
    let (head, name) = decl.rsplit_once(char::is_whitespace)?;
    let (name, suffix) = match name.find('[') {
        Some(i) => (&name[..i], &name[i..]),
        None => (name, ""),
    };
    Some(FieldDesc {
        name: name.to_string(),
        c_type: format!("{}{}", head.trim(), suffix),
        offset: offset?,
        size: size?,
        signed: signed?,
    })
}

#[cfg(test)]
mod tests {
    use stress_common::{adj_update, cgroup_attach, mark_victim};

    use super::*;
    use crate::trace::testing::{format_fixture, kernel_fixtures};

    fn load(kernel: &str, group: &str, event: &str) -> Format {
        format_fixture(kernel, group, event).expect("fixture exists")
    }

    #[test]
    fn every_fixture_parses_with_sane_fields() {
        let mut count = 0;
        for kernel in fs::read_dir(kernel_fixtures()).expect("fixtures dir") {
            let kernel = kernel.expect("entry").path();
            if !kernel.is_dir() {
                continue;
            }
            for group in fs::read_dir(&kernel).expect("group dir") {
                for file in fs::read_dir(group.expect("entry").path()).expect("event dir") {
                    let path = file.expect("entry").path();
                    let fmt = Format::read(&path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
                    let stem = path.file_stem().and_then(|s| s.to_str()).expect("name");
                    assert_eq!(fmt.name, stem, "{path:?}");
                    assert_eq!(fmt.common.len(), 4, "{path:?}: common_* fields");
                    assert!(!fmt.fields.is_empty(), "{path:?}: no own fields");
                    for f in &fmt.fields {
                        assert!(f.offset >= 8, "{path:?}: {f:?} overlaps the common header");
                        assert!(f.size > 0, "{path:?}: {f:?}");
                    }
                    count += 1;
                }
            }
        }
        assert_eq!(count, 3 * 19 + 1, "all fixtures seen");
    }

    #[test]
    fn mark_victim_on_6_18() {
        let fmt = load("6.18-host", "oom", "mark_victim");
        assert_eq!(fmt.id, 609);
        let comm = fmt.field("comm").expect("comm");
        assert!(comm.is_data_loc());
        assert_eq!((comm.offset, comm.size, comm.signed), (12, 4, false));
        let adj = fmt.field("oom_score_adj").expect("adj");
        assert_eq!((adj.offset, adj.size, adj.signed), (64, 2, true));
        assert_eq!(adj.c_type, "short");
        let layout: [Field; mark_victim::N] = fmt.layout(mark_victim::FIELDS);
        assert!(layout.iter().all(Field::is_present));
        assert_eq!(layout[mark_victim::PGTABLES].offset, 56);
        assert_eq!(layout[mark_victim::COMM].data_loc, 1);
    }

    #[test]
    fn data_loc_sign_flips_between_kernels_but_offsets_agree() {
        let old = load("6.1-debian", "oom", "mark_victim");
        let new = load("6.18-host", "oom", "mark_victim");
        assert!(old.field("comm").expect("comm").signed);
        assert!(!new.field("comm").expect("comm").signed);
        let a: [Field; mark_victim::N] = old.layout(mark_victim::FIELDS);
        let b: [Field; mark_victim::N] = new.layout(mark_victim::FIELDS);
        for i in 0..mark_victim::N {
            assert_eq!((a[i].offset, a[i].size), (b[i].offset, b[i].size));
        }
    }

    #[test]
    fn pre_6_9_mark_victim_has_only_pid() {
        let fmt = load("pre-6.9-layout", "oom", "mark_victim");
        let layout: [Field; mark_victim::N] = fmt.layout(mark_victim::FIELDS);
        assert!(layout[mark_victim::PID].is_present());
        assert_eq!(layout[mark_victim::PID].offset, 8);
        for (i, f) in layout.iter().enumerate().skip(1) {
            assert!(
                !f.is_present(),
                "{} should be absent",
                mark_victim::FIELDS[i]
            );
        }
    }

    #[test]
    fn fixed_char_array_keeps_its_suffix() {
        let fmt = load("6.12-debian", "oom", "oom_score_adj_update");
        let comm = fmt.field("comm").expect("comm");
        assert_eq!(comm.c_type, "char[16]");
        assert!(!comm.is_data_loc());
        assert_eq!((comm.offset, comm.size), (12, 16));
        let layout: [Field; adj_update::N] = fmt.layout(adj_update::FIELDS);
        assert_eq!(layout[adj_update::OOM_SCORE_ADJ].offset, 28);
    }

    #[test]
    fn cgroup_attach_has_two_strings() {
        let fmt = load("6.1-debian", "cgroup", "cgroup_attach_task");
        let layout: [Field; cgroup_attach::N] = fmt.layout(cgroup_attach::FIELDS);
        assert_eq!(layout[cgroup_attach::DST_PATH].data_loc, 1);
        assert_eq!(layout[cgroup_attach::COMM].data_loc, 1);
        assert_eq!(layout[cgroup_attach::DST_ID].size, 8);
    }

    #[test]
    fn malformed_lines_are_named() {
        let fmt = Format::parse(
            "name: x\nID: 1\nformat:\n\tfield:int pid;\toffset:eight;\tsize:4;\tsigned:1;\n",
        )
        .expect("a bad field is skipped");
        assert_eq!(fmt.skipped.len(), 1, "{:?}", fmt.skipped);
        assert!(fmt.skipped[0].starts_with("line 4: "), "{:?}", fmt.skipped);
        assert!(matches!(Format::parse("ID: 3\n"), Err(FormatError::NoName)));
    }

    #[test]
    fn one_garbage_line_leaves_the_other_fields() {
        let text = fs::read_to_string(kernel_fixtures().join("6.18-host/oom/mark_victim.format"))
            .expect("fixture");
        let good = Format::parse(&text).expect("fixture parses");
        let garbled = text.replacen("field:int pid;", "field:\u{1}\u{fffd};;;", 1);
        let garbled = garbled.replacen("ID: 609", "ID: six", 1);
        assert_ne!(garbled, text, "the fixture has the lines replaced");
        let fmt = Format::parse(&garbled).expect("still a format");
        assert_eq!(fmt.skipped.len(), 2, "{:?}", fmt.skipped);
        assert_eq!(fmt.field("pid"), None);
        assert_eq!(fmt.fields.len(), good.fields.len() - 1);
        for f in &fmt.fields {
            assert_eq!(good.field(&f.name), Some(f), "{} kept as it was", f.name);
        }
        // The tracepoint loses only that field's slot in the eBPF layout.
        let layout: [Field; mark_victim::N] = fmt.layout(mark_victim::FIELDS);
        let whole: [Field; mark_victim::N] = good.layout(mark_victim::FIELDS);
        assert!(!layout[mark_victim::PID].is_present());
        assert_eq!(layout[mark_victim::COMM], whole[mark_victim::COMM]);
    }
}
