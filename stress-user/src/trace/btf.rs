//! Finds one function's type id in the kernel's BTF by streaming `/sys/kernel/btf/vmlinux`.
//!
//! fentry needs the BTF id of the function it attaches to. aya's `Btf::from_sys_fs` builds the
//! whole type graph for that (9.4 MiB of heap on 6.18, most of oomlab's peak RSS), and on kernels
//! that then refuse the program (EPERM) all of it is for nothing. This reader keeps one
//! string and one type record in memory at a time. Format: `Documentation/bpf/btf.rst`.

use std::{
    collections::HashSet,
    fs::File,
    io::{self, BufRead, BufReader, Read, Seek, SeekFrom},
    path::Path,
};

/// The kernel's own BTF.
pub const VMLINUX: &str = "/sys/kernel/btf/vmlinux";

const MAGIC: u16 = 0xeb9f;
const KIND_FUNC: u32 = 12;

#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("{path} is not raw BTF (magic {magic:#06x}; big-endian BTF is not supported)")]
    Magic { path: String, magic: u16 },
    #[error("{path}: unknown BTF kind {kind} at type id {id}")]
    Kind { path: String, kind: u32, id: u32 },
    #[error("no function named {name} in {path}")]
    NotFound { path: String, name: String },
}

/// Extra bytes that follow a type record of `kind` with `vlen` entries.
fn extra_len(kind: u32, vlen: u32) -> Option<u64> {
    let vlen = u64::from(vlen);
    Some(match kind {
        // INT: one u32 of encoding/offset/bits.
        1 => 4,
        // PTR, FWD, TYPEDEF, VOLATILE, CONST, RESTRICT, FUNC, FLOAT, TYPE_TAG.
        2 | 7 | 8 | 9 | 10 | 11 | 12 | 16 | 18 => 0,
        // ARRAY: type, index_type, nelems.
        3 => 12,
        // STRUCT, UNION: members (name_off, type, offset); DATASEC: (type, offset, size);
        // ENUM64: (name_off, val_lo32, val_hi32).
        4 | 5 | 15 | 19 => 12 * vlen,
        // ENUM: (name_off, val); FUNC_PROTO: params (name_off, type).
        6 | 13 => 8 * vlen,
        // VAR: linkage; DECL_TAG: component_idx.
        14 | 17 => 4,
        _ => return None,
    })
}

/// The type id of the `FUNC` named `name` in the raw BTF file at `path`.
pub fn func_id(path: &Path, name: &str) -> Result<u32, BtfError> {
    find_func(path, name).map_err(|fault| {
        let path = path.display().to_string();
        match fault {
            Fault::Io(source) => BtfError::Io { path, source },
            Fault::Magic(magic) => BtfError::Magic { path, magic },
            Fault::Kind { kind, id } => BtfError::Kind { path, kind, id },
            Fault::NotFound => BtfError::NotFound {
                path,
                name: name.to_string(),
            },
        }
    })
}

/// What went wrong, before the path is added to it.
enum Fault {
    Io(io::Error),
    Magic(u16),
    Kind { kind: u32, id: u32 },
    NotFound,
}

impl From<io::Error> for Fault {
    fn from(e: io::Error) -> Self {
        Fault::Io(e)
    }
}

/// Where the type and string sections are, from the start of the file: `(offset, length)`.
struct Sections {
    types: (u64, u64),
    strings: (u64, u64),
}

fn u32_at(b: &[u8], i: usize) -> u32 {
    u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]])
}

fn find_func(path: &Path, name: &str) -> Result<u32, Fault> {
    let mut r = BufReader::with_capacity(64 << 10, File::open(path)?);
    let sections = read_header(&mut r)?;
    let offsets = name_offsets(&mut r, sections.strings, name)?;
    if offsets.is_empty() {
        return Err(Fault::NotFound);
    }
    func_named(&mut r, sections.types, &offsets)
}

/// `struct btf_header`: magic, version, flags, hdr_len, then the two sections.
fn read_header(r: &mut impl Read) -> Result<Sections, Fault> {
    let mut head = [0u8; 24];
    r.read_exact(&mut head)?;
    let magic = u16::from_le_bytes([head[0], head[1]]);
    if magic != MAGIC {
        return Err(Fault::Magic(magic));
    }
    let hdr_len = u64::from(u32_at(&head, 4));
    let section = |at: usize| {
        (
            hdr_len + u64::from(u32_at(&head, at)),
            u64::from(u32_at(&head, at + 4)),
        )
    };
    Ok(Sections {
        types: section(8),
        strings: section(16),
    })
}

/// Every string offset at which `name` is a whole string: a string that ends with it counts
/// too (a name may point into the tail of a longer string).
fn name_offsets(
    r: &mut (impl BufRead + Seek),
    (start, len): (u64, u64),
    name: &str,
) -> io::Result<HashSet<u64>> {
    let mut offsets = HashSet::new();
    r.seek(SeekFrom::Start(start))?;
    let mut strings = r.take(len);
    let mut s = Vec::with_capacity(256);
    let mut at = 0u64;
    loop {
        s.clear();
        let n = strings.read_until(0, &mut s)?;
        if n == 0 {
            break;
        }
        let text = s.strip_suffix(&[0]).unwrap_or(&s);
        if text.ends_with(name.as_bytes()) {
            offsets.insert(at + (text.len() - name.len()) as u64);
        }
        at += n as u64;
    }
    Ok(offsets)
}

/// The id of the first `FUNC` record whose name is at one of `offsets`.
fn func_named(
    r: &mut BufReader<File>,
    (start, len): (u64, u64),
    offsets: &HashSet<u64>,
) -> Result<u32, Fault> {
    r.seek(SeekFrom::Start(start))?;
    let mut left = len;
    let mut rec = [0u8; 12];
    // Type ids count from 1; 0 is `void`.
    let mut id = 1u32;
    while left >= 12 {
        r.read_exact(&mut rec)?;
        let name_off = u64::from(u32_at(&rec, 0));
        let info = u32_at(&rec, 4);
        let (kind, vlen) = ((info >> 24) & 0x1f, info & 0xffff);
        if kind == KIND_FUNC && offsets.contains(&name_off) {
            return Ok(id);
        }
        let extra = extra_len(kind, vlen).ok_or(Fault::Kind { kind, id })?;
        r.seek_relative(extra as i64)?;
        left = left.saturating_sub(12 + extra);
        id += 1;
    }
    Err(Fault::NotFound)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A raw BTF blob with the given type records and string table.
    fn blob(types: &[u8], strings: &[u8]) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&MAGIC.to_le_bytes());
        b.extend_from_slice(&[1, 0]);
        for v in [
            24,
            0,
            types.len() as u32,
            types.len() as u32,
            strings.len() as u32,
        ] {
            b.extend_from_slice(&v.to_le_bytes());
        }
        b.extend_from_slice(types);
        b.extend_from_slice(strings);
        b
    }

    fn ty(types: &mut Vec<u8>, name_off: u32, kind: u32, vlen: u32, size_or_type: u32) {
        for v in [name_off, (kind << 24) | vlen, size_or_type] {
            types.extend_from_slice(&v.to_le_bytes());
        }
    }

    /// A file holding `bytes`, removed on drop.
    struct Blob(std::path::PathBuf);

    impl Blob {
        fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for Blob {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    fn write(bytes: &[u8]) -> Blob {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("oomlab-btf-{}-{n}", std::process::id()));
        std::fs::write(&path, bytes).expect("write blob");
        Blob(path)
    }

    #[test]
    fn skips_every_kind_of_record_to_reach_the_function() {
        // Strings: "" at 0, "int" at 1, "task" at 5, "oom_kill_process" at 10, "x" at 27.
        let strings = b"\0int\0task\0oom_kill_process\0x\0";
        let mut t = Vec::new();
        ty(&mut t, 1, 1, 0, 4); // 1: INT
        t.extend_from_slice(&[0; 4]);
        ty(&mut t, 5, 4, 2, 16); // 2: STRUCT task, two members
        t.extend_from_slice(&[0; 24]);
        ty(&mut t, 0, 13, 3, 1); // 3: FUNC_PROTO, three params
        t.extend_from_slice(&[0; 24]);
        ty(&mut t, 27, 12, 0, 3); // 4: FUNC x (another name)
        ty(&mut t, 10, 4, 0, 0); // 5: STRUCT named like the function: not a FUNC
        ty(&mut t, 0, 19, 1, 8); // 6: ENUM64, one value
        t.extend_from_slice(&[0; 12]);
        ty(&mut t, 10, 12, 0, 3); // 7: FUNC oom_kill_process
        let f = write(&blob(&t, strings));
        assert_eq!(func_id(f.path(), "oom_kill_process").expect("found"), 7);
        assert_eq!(func_id(f.path(), "x").expect("found"), 4);
        assert!(matches!(
            func_id(f.path(), "task"),
            Err(BtfError::NotFound { .. })
        ));
        assert!(matches!(
            func_id(f.path(), "absent"),
            Err(BtfError::NotFound { .. })
        ));
    }

    #[test]
    fn a_name_in_the_tail_of_a_longer_string_is_found() {
        let strings = b"\0__oom_kill_process\0";
        let mut t = Vec::new();
        ty(&mut t, 3, 12, 0, 0); // 1: FUNC pointing at "oom_kill_process" inside the string
        let f = write(&blob(&t, strings));
        assert_eq!(func_id(f.path(), "oom_kill_process").expect("found"), 1);
    }

    #[test]
    fn rejects_what_is_not_btf() {
        let f = write(&[0u8; 64]);
        assert!(matches!(
            func_id(f.path(), "x"),
            Err(BtfError::Magic { .. })
        ));
        let mut t = Vec::new();
        ty(&mut t, 0, 30, 0, 0);
        let f = write(&blob(&t, b"\0x\0"));
        assert!(matches!(
            func_id(f.path(), "x"),
            Err(BtfError::Kind { kind: 30, .. })
        ));
        assert!(matches!(
            func_id(Path::new("/nonexistent/btf"), "x"),
            Err(BtfError::Io { .. })
        ));
    }

    /// The running kernel's BTF: the same ids as aya's full parse.
    #[test]
    fn agrees_with_aya_on_the_running_kernel() {
        if !Path::new(VMLINUX).exists() {
            eprintln!("no {VMLINUX}: skipped");
            return;
        }
        let btf = aya::Btf::from_sys_fs().expect("aya parses the kernel BTF");
        let mut compared = 0;
        for name in [
            "oom_kill_process",
            "__oom_kill_process",
            "out_of_memory",
            "schedule",
        ] {
            let Ok(want) = btf.id_by_type_name_kind(name, aya_obj::btf::BtfKind::Func) else {
                continue;
            };
            assert_eq!(
                func_id(Path::new(VMLINUX), name).expect("found by streaming"),
                want,
                "{name}"
            );
            compared += 1;
        }
        assert!(compared >= 2, "the kernel's BTF lacks the OOM functions");
    }
}
