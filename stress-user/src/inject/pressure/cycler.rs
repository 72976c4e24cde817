//! The cycler: the worker that turns a squeezed cgroup into memory stall. It keeps a clean
//! page-cache file larger than the room the squeeze leaves, and reads it one page at a time in a
//! loop at the pace the agent sets. Every read past the room is a refault: the kernel must
//! reclaim at the limit to make space (direct reclaim, counted as a memory stall) and, once the
//! pages are detected as thrashing (evicted while part of the workingset), counts the whole
//! re-read as a stall too. The pace is what the controller steers; zero pace costs nothing.
//!
//! Protocol as every worker's (`inject::worker`), plus `P <pages per second>`: `T <bytes>` sizes
//! the cycled set (the file grows to it, written and synced so its pages are clean and
//! reclaimable), `H`/`D <bytes>` report the set in place, and `C <pages>` (every 250 ms while it
//! reads) the pages read so far.

use std::{
    fs::File,
    io::{self, Read, Write},
    os::{
        fd::{AsRawFd, FromRawFd},
        unix::fs::FileExt,
    },
    time::{Duration, Instant},
};

use crate::{
    inject::{
        alloc::tmpfile,
        worker::{parse_command, readable, Order, WorkerArgs},
    },
    sys::{page_align, page_size},
};

/// How often the cycler wakes to read its share of pages.
const SLICE: Duration = Duration::from_millis(10);
/// Reads owed after a long stall are forgotten beyond this much time's worth, so a stall does
/// not turn into a burst.
const MAX_DEBT: f64 = 0.1;
/// How often the cycler says how many pages it has read (`C <total>`): the agent learns from
/// the pace made, which a starved CPU holds below the pace asked.
const REPORT_EVERY: Duration = Duration::from_millis(250);

/// Runs the cycler in the worker process; returns its exit code.
pub fn cycler_main(args: &WorkerArgs) -> i32 {
    // SAFETY: fds 0 and 1 are the pipes the agent set up and nothing else in this process uses.
    let mut stdin = unsafe { File::from_raw_fd(0) };
    let mut out = unsafe { File::from_raw_fd(1) };
    let file = match tmpfile(&args.file_dir) {
        Ok(f) => f,
        Err(e) => {
            let _ = writeln!(out, "E cycler file in {}: {e}", args.file_dir.display());
            return 1;
        }
    };
    // No readahead: each read brings in one page, so the stall follows the pace closely.
    // SAFETY: plain syscall on a descriptor we own.
    unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_RANDOM) };
    let mut c = Cycler {
        map: None,
        mglru: mglru_enabled(),
        file,
        len: 0,
        set: 0,
        pace: 0,
        cursor: 0,
        debt: 0.0,
        page: page_size().max(1),
        pages: 0,
    };
    let _ = out.write_all(b"R\n");
    let mut inbuf = Vec::new();
    let mut last = Instant::now();
    let (mut reported, mut reported_at) = (0u64, Instant::now());
    loop {
        let timeout = if c.pace == 0 {
            -1
        } else {
            SLICE.as_millis() as i32
        };
        if readable(0, timeout) {
            let mut tmp = [0u8; 1024];
            match stdin.read(&mut tmp) {
                Ok(0) | Err(_) => return 0,
                Ok(k) => inbuf.extend_from_slice(&tmp[..k]),
            }
            while let Some(nl) = inbuf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = inbuf.drain(..=nl).collect();
                match parse_command(String::from_utf8_lossy(&line).trim()) {
                    Some(Order::Target(t)) => match c.resize(t) {
                        Ok(()) => {
                            let _ = writeln!(out, "D {}", c.set);
                        }
                        Err(e) => {
                            let _ = writeln!(out, "E growing the cycled file: {e}");
                        }
                    },
                    Some(Order::Pace(p)) => c.pace = p,
                    Some(Order::Quit) => return 0,
                    None => {}
                }
            }
        }
        let now = Instant::now();
        c.cycle(now.duration_since(last));
        last = now;
        if c.pages != reported && now.duration_since(reported_at) >= REPORT_EVERY {
            let _ = writeln!(out, "C {}", c.pages);
            (reported, reported_at) = (c.pages, now);
        }
    }
}

struct Cycler {
    /// The file mapped shared and read-only: each page is first touched through it, so that
    /// its refault comes through a page fault, which the multi-generational LRU (6.1+, on by
    /// default in Debian's 6.12) counts as workingset (and its stall) where a read(2) refault
    /// of a page read a few times is not.
    map: Option<Mapping>,
    /// The multi-generational LRU is on: the fault is enough, no reads.
    mglru: bool,
    file: File,
    /// Bytes written to the file so far.
    len: u64,
    /// Bytes cycled through (≤ len).
    set: u64,
    pace: u64,
    cursor: u64,
    /// Pages owed at the current pace.
    debt: f64,
    page: u64,
    /// Pages read so far, in all.
    pages: u64,
}

impl Cycler {
    /// Grows the file to `bytes` (written, then synced: dirty pages could not be reclaimed at
    /// once and would stall writeback, not memory) and cycles through that much of it.
    fn resize(&mut self, bytes: u64) -> io::Result<()> {
        let bytes = page_align(bytes as usize) as u64;
        let chunk = vec![0x5au8; 1 << 20];
        while self.len < bytes {
            let n = (bytes - self.len).min(chunk.len() as u64) as usize;
            self.file.write_all_at(&chunk[..n], self.len)?;
            self.len += n as u64;
        }
        self.file.sync_data()?;
        self.map = None;
        self.map = Some(Mapping::new(&self.file, self.len as usize)?);
        self.set = bytes;
        if self.cursor >= self.set {
            self.cursor = 0;
        }
        Ok(())
    }

    /// Reads what the pace owes for `dt`, one page at a time, round the set.
    fn cycle(&mut self, dt: Duration) {
        if self.pace == 0 || self.set == 0 {
            self.debt = 0.0;
            return;
        }
        let pace = self.pace as f64;
        self.debt = (self.debt + pace * dt.as_secs_f64()).min(pace * MAX_DEBT);
        let mut buf = [0u8; 4096];
        let len = (self.page as usize).min(buf.len());
        while self.debt >= 1.0 {
            // Each page is read twice, the second time one step later (after its successor):
            // the second read marks it accessed again and activates it (the kernel ignores a
            // re-read of the page it just read, `filemap_read` compares with `prev_pos`).
            // Active pages are what reclaim later deactivates with PG_workingset set, and only
            // the refault of such a page is thrashing, counted as a memory stall for the whole
            // read; a page read once and evicted costs only the cheap reclaim of a clean page.
            // Measured on the 6.18 host: one read per page gave < 1 % some at 6,000 pages/s.
            if let Some(m) = &self.map {
                m.touch(self.cursor as usize);
            }
            // Under MGLRU the fault alone makes the refault count; the reads would only cost
            // CPU (in the 1-vCPU VM they held the stall at 20 % where 30 % was asked).
            if !self.mglru {
                let _ = self.file.read_at(&mut buf[..len], self.cursor);
                if self.cursor >= self.page {
                    let _ = self.file.read_at(&mut buf[..len], self.cursor - self.page);
                }
            }
            self.cursor += self.page;
            if self.cursor >= self.set {
                self.cursor = 0;
            }
            self.debt -= 1.0;
            self.pages += 1;
        }
    }
}

/// A shared read-only mapping of the cycled file, unmapped on drop.
struct Mapping {
    ptr: std::ptr::NonNull<u8>,
    len: usize,
}

impl Mapping {
    fn new(file: &File, len: usize) -> io::Result<Mapping> {
        let nz = std::num::NonZeroUsize::new(len).ok_or_else(|| io::Error::other("empty file"))?;
        // SAFETY: a fresh read-only shared mapping of a file we own; nothing else aliases it.
        let ptr = unsafe {
            nix::sys::mman::mmap(
                None,
                nz,
                nix::sys::mman::ProtFlags::PROT_READ,
                nix::sys::mman::MapFlags::MAP_SHARED,
                file,
                0,
            )
        }
        .map_err(io::Error::from)?
        .cast::<u8>();
        // No read-around (one fault, one page) — except under the multi-generational LRU:
        // MADV_RANDOM marks the mapping VM_RAND_READ, and MGLRU then treats its faults as
        // having no recency and never counts their refaults as workingset (`vma_has_recency`).
        // On the classic LRU the read-around cut the stall a page brings by ~3x (6.18 host:
        // 4.5 % some where 20 % was asked, at the pace limit). Advice only: failure changes
        // nothing.
        if !mglru_enabled() {
            // SAFETY: advice on our own mapping.
            let _ = unsafe {
                nix::sys::mman::madvise(ptr.cast(), len, nix::sys::mman::MmapAdvise::MADV_RANDOM)
            };
        }
        Ok(Mapping { ptr, len })
    }

    /// Reads one byte at `off` (faulting the page in if it is not resident).
    fn touch(&self, off: usize) {
        if off < self.len {
            // SAFETY: off is inside the mapping, which lives as long as self.
            let b = unsafe { std::ptr::read_volatile(self.ptr.as_ptr().add(off)) };
            std::hint::black_box(b);
        }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: our own mapping; no reference into it outlives self.
        let _ = unsafe { nix::sys::mman::munmap(self.ptr.cast(), self.len) };
    }
}

/// The multi-generational LRU is on (`/sys/kernel/mm/lru_gen/enabled` non-zero).
fn mglru_enabled() -> bool {
    std::fs::read_to_string("/sys/kernel/mm/lru_gen/enabled")
        .ok()
        .and_then(|t| u32::from_str_radix(t.trim().trim_start_matches("0x"), 16).ok())
        .is_some_and(|v| v != 0)
}
