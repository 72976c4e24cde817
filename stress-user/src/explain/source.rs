//! Where a saved log comes from — a file, standard input, or this node's kernel ring buffer —
//! and the check that it is text: a log holds a few invalid bytes at most (a cut multi-byte
//! name), never NUL bytes.

use std::{
    fs::File,
    io::{self, Read},
    os::unix::fs::OpenOptionsExt,
    path::PathBuf,
};

use super::ExplainError;

/// Invalid UTF-8 sequences tolerated (replaced) before the input is called binary.
const MAX_INVALID: usize = 4;

/// What `oomlab explain` reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    File(PathBuf),
    Stdin,
    /// `/dev/kmsg` from its oldest record to the newest.
    RingBuffer,
}

impl Source {
    /// `-` is standard input; no argument is the live ring buffer.
    pub fn from_arg(arg: Option<PathBuf>) -> Source {
        match arg {
            None => Source::RingBuffer,
            Some(p) if p.as_os_str() == "-" => Source::Stdin,
            Some(p) => Source::File(p),
        }
    }

    pub fn name(&self) -> String {
        match self {
            Source::File(p) => p.display().to_string(),
            Source::Stdin => "standard input".into(),
            Source::RingBuffer => "/dev/kmsg".into(),
        }
    }

    /// The whole input as text.
    pub fn read(&self) -> Result<String, ExplainError> {
        let read_err = |e| ExplainError::Read {
            name: self.name(),
            source: e,
        };
        let bytes = match self {
            Source::File(p) => std::fs::read(p).map_err(read_err)?,
            Source::Stdin => {
                let mut b = Vec::new();
                io::stdin().read_to_end(&mut b).map_err(read_err)?;
                b
            }
            Source::RingBuffer => return ring_buffer(),
        };
        text(&bytes, &self.name())
    }
}

/// `bytes` as text, or where they stop being text.
pub fn text(bytes: &[u8], name: &str) -> Result<String, ExplainError> {
    if let Some(offset) = bytes.iter().position(|&b| b == 0) {
        return Err(ExplainError::Binary {
            name: name.into(),
            offset,
            what: "a NUL byte",
        });
    }
    let (mut invalid, mut first, mut at) = (0usize, None, 0usize);
    for chunk in bytes.utf8_chunks() {
        at = at.saturating_add(chunk.valid().len());
        if !chunk.invalid().is_empty() {
            invalid = invalid.saturating_add(1);
            first.get_or_insert(at);
        }
        at = at.saturating_add(chunk.invalid().len());
    }
    match first {
        Some(offset) if invalid > MAX_INVALID => Err(ExplainError::Binary {
            name: name.into(),
            offset,
            what: "invalid UTF-8",
        }),
        _ => Ok(String::from_utf8_lossy(bytes).into_owned()),
    }
}

/// Every record `/dev/kmsg` still holds, oldest first, as a kmsg dump: opened non-blocking at
/// its start and read until it has nothing more (`EAGAIN`).
fn ring_buffer() -> Result<String, ExplainError> {
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open("/dev/kmsg")
        .map_err(ExplainError::RingBuffer)?;
    let mut out = String::new();
    read_records(&mut file, &mut out).map_err(ExplainError::RingBuffer)?;
    Ok(out)
}

fn read_records(file: &mut File, out: &mut String) -> io::Result<()> {
    // One read returns one record; 8 KiB is the kernel's record limit.
    let mut buf = vec![0u8; 8192];
    loop {
        match file.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => {
                let rec = String::from_utf8_lossy(buf.get(..n).unwrap_or_default());
                out.push_str(rec.trim_end_matches('\n'));
                out.push('\n');
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            // EPIPE: the ring overwrote the record about to be read; the next one follows.
            Err(e) if e.raw_os_error() == Some(libc::EPIPE) => {}
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_or_the_offset_where_it_stops() {
        assert_eq!(text(b"a\nb", "x").expect("text"), "a\nb");
        assert_eq!(
            text(b"name \xe5\x90 cut", "x")
                .expect("a few bad bytes")
                .len(),
            12
        );
        let e = text(b"abc\0def", "x").expect_err("NUL");
        assert!(matches!(e, ExplainError::Binary { offset: 3, .. }), "{e}");
        let junk: Vec<u8> = b"ok"
            .iter()
            .copied()
            .chain([0xff, b' '].repeat(9))
            .collect();
        let e = text(&junk, "x").expect_err("garbage");
        assert!(matches!(e, ExplainError::Binary { offset: 2, .. }), "{e}");
        assert!(e.to_string().contains("offset 2"), "{e}");
    }

    #[test]
    fn arguments() {
        assert_eq!(Source::from_arg(None), Source::RingBuffer);
        assert_eq!(Source::from_arg(Some("-".into())), Source::Stdin);
        assert_eq!(
            Source::from_arg(Some("/x".into())),
            Source::File("/x".into())
        );
    }
}
