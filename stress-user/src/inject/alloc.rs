//! One region of memory that is actually charged to the caller's cgroup: mapped, populated and
//! written, so no lazy allocation or zero page can make the numbers lie. Three backings: private
//! anonymous memory, shmem (a memfd) and page cache (an unlinked file on a real filesystem).

use std::{
    ffi::CString,
    fs::File,
    io,
    num::NonZeroUsize,
    os::{
        fd::{AsRawFd, FromRawFd},
        unix::fs::FileExt,
    },
    path::Path,
    ptr::NonNull,
};

use nix::sys::mman::{madvise, mmap, mmap_anonymous, munmap, MapFlags, MmapAdvise, ProtFlags};

use crate::sys::page_align;

/// What the pages are filled with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Fill {
    /// Zero pages written by the kernel (fastest).
    #[default]
    Zero,
    /// Incompressible bytes, so zswap/zram cannot shrink them.
    Random,
}

/// Which kind of memory a region is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// Private anonymous memory (what most applications use).
    #[default]
    Anon,
    /// Page cache: a file on a real filesystem, written and read back (removed at the end).
    File,
    /// Shared memory (a memfd on the kernel's internal tmpfs).
    Shmem,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Anon => "anon",
            Kind::File => "file",
            Kind::Shmem => "shmem",
        }
    }
}

#[derive(Debug, Clone, Copy, Default)]
pub struct AllocOptions {
    pub thp: bool,
    pub fill: Fill,
    pub mlock: bool,
}

/// What backs a region, and owns the file descriptor when there is one.
#[derive(Debug)]
enum Backing {
    Anon,
    /// A memfd or an unlinked file: truncating it is what gives pages back.
    Fd(File),
}

/// Below this a region is populated by one thread: a thread costs ~30 µs to start, and 16 MiB
/// of 4 KiB faults take ~4 ms.
const POPULATE_PART_MIN: usize = 16 << 20;

/// How many threads populate an anonymous region of `len` bytes: one per CPU this process may
/// run on, at most 4 and one per [`POPULATE_PART_MIN`].
fn populate_parts(len: usize) -> usize {
    let cpus = std::thread::available_parallelism().map_or(1, usize::from);
    cpus.min(4).min(len / POPULATE_PART_MIN).max(1)
}

/// A populated mapping, unmapped (and its pages freed) on drop.
#[derive(Debug)]
pub struct Region {
    ptr: NonNull<u8>,
    len: usize,
    backing: Backing,
}

// SAFETY: the region is plain memory owned by this value.
unsafe impl Send for Region {}

impl Region {
    /// A region of `kind`; `dir` is where `Kind::File` puts its (immediately unlinked) file.
    pub fn new(kind: Kind, len: usize, opts: AllocOptions, dir: &Path) -> io::Result<Region> {
        match kind {
            Kind::Anon => Region::anon(len, opts),
            Kind::Shmem => Region::shmem(len, opts),
            Kind::File => Region::file(len, opts, dir),
        }
    }

    pub fn anon(len: usize, opts: AllocOptions) -> io::Result<Region> {
        let nz = NonZeroUsize::new(len).ok_or_else(|| io::Error::other("zero-sized region"))?;
        // SAFETY: a fresh anonymous mapping aliases nothing.
        let ptr = unsafe {
            mmap_anonymous(
                None,
                nz,
                ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
                MapFlags::MAP_PRIVATE | MapFlags::MAP_NORESERVE,
            )
        }
        .map_err(io::Error::from)?
        .cast::<u8>();
        let region = Region {
            ptr,
            len,
            backing: Backing::Anon,
        };
        region.populate(opts)?;
        Ok(region)
    }

    /// Shared memory: a memfd mapped shared, populated through the mapping.
    pub fn shmem(len: usize, opts: AllocOptions) -> io::Result<Region> {
        let name = CString::new("oomlab-shmem").expect("no NUL in a literal");
        // SAFETY: plain syscall with a valid C string.
        let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is a fresh descriptor we own.
        let file = unsafe { File::from_raw_fd(fd) };
        file.set_len(len as u64)?;
        let region = Region::map_shared(file, len)?;
        region.populate(opts)?;
        Ok(region)
    }

    /// Page cache: an unlinked file in `dir` (so it disappears with the process, even on
    /// SIGKILL), written with `write(2)` and read back, then mapped for mlock and redirty.
    pub fn file(len: usize, opts: AllocOptions, dir: &Path) -> io::Result<Region> {
        let file = tmpfile(dir)?;
        // Small: the buffer is charged too, and a transient MiB per worker would show in the peak.
        let mut buf = vec![0u8; 64 << 10];
        let mut rng = Xorshift::new(len as u64 ^ buf.as_ptr() as u64);
        let mut off = 0usize;
        while off < len {
            let n = buf.len().min(len - off);
            if opts.fill == Fill::Random {
                rng.fill(&mut buf[..n]);
            }
            file.write_all_at(&buf[..n], off as u64)?;
            off += n;
        }
        // Read back: pages that writeback or reclaim dropped come back into the cache.
        off = 0;
        while off < len {
            let n = buf.len().min(len - off);
            file.read_exact_at(&mut buf[..n], off as u64)?;
            off += n;
        }
        let region = Region::map_shared(file, len)?;
        if opts.mlock {
            region.lock()?;
        }
        Ok(region)
    }

    fn map_shared(file: File, len: usize) -> io::Result<Region> {
        let nz = NonZeroUsize::new(len).ok_or_else(|| io::Error::other("zero-sized region"))?;
        // SAFETY: a fresh shared mapping of a file only this region uses.
        let ptr = unsafe {
            mmap(
                None,
                nz,
                ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
                MapFlags::MAP_SHARED,
                &file,
                0,
            )
        }
        .map_err(io::Error::from)?
        .cast::<u8>();
        Ok(Region {
            ptr,
            len,
            backing: Backing::Fd(file),
        })
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn populate(&self, opts: AllocOptions) -> io::Result<()> {
        if opts.thp {
            // SAFETY: the range is our mapping.
            unsafe { madvise(self.ptr.cast(), self.len, MmapAdvise::MADV_HUGEPAGE) }
                .map_err(io::Error::from)?;
        }
        self.populate_write(opts.thp)?;
        if opts.fill == Fill::Random {
            self.fill_random();
        }
        if opts.mlock {
            self.lock()?;
        }
        Ok(())
    }

    fn lock(&self) -> io::Result<()> {
        // SAFETY: the range is our mapping.
        unsafe { nix::sys::mman::mlock(self.ptr.cast(), self.len) }.map_err(io::Error::from)
    }

    /// Faults every page in, writable: MADV_POPULATE_WRITE (Linux ≥ 5.14) in one call, else a
    /// write to each page (for `thp`, without reading it first).
    fn populate_write(&self, thp: bool) -> io::Result<()> {
        let parts = match self.backing {
            Backing::Anon => populate_parts(self.len),
            Backing::Fd(_) => 1,
        };
        let Err(err) = self.populate_in_parts(parts) else {
            return Ok(());
        };
        if err.raw_os_error() != Some(libc::EINVAL) {
            // ENOMEM/EFAULT: the cgroup could not give us the memory (the OOM killer may be on
            // its way); report it rather than touch pages one by one into the same wall.
            return Err(err);
        }
        // Read-then-write everywhere else: writing zeroes instead changed how much the demo's
        // workers were charged on 6.12, for a reason not yet understood.
        if thp {
            self.fault_in();
        } else {
            self.touch();
        }
        Ok(())
    }

    /// MADV_POPULATE_WRITE of `parts` page-aligned slices at once, one thread each (one part: a
    /// single call here, no thread): private anonymous faults in one mapping take only the VMA's
    /// lock (per-VMA locks, 6.4+; the mmap lock for reading before), so they run in parallel.
    /// The first error wins.
    fn populate_in_parts(&self, parts: usize) -> io::Result<()> {
        let page = crate::sys::page_size() as usize;
        let step = (self.len / parts).div_ceil(page) * page;
        let base = self.ptr.as_ptr() as usize;
        let len = self.len;
        let one = move |i: usize| -> io::Result<()> {
            let start = i * step;
            let n = step.min(len.saturating_sub(start));
            if n == 0 {
                return Ok(());
            }
            // SAFETY: a slice of our mapping.
            let rc = unsafe {
                libc::madvise(
                    (base + start) as *mut libc::c_void,
                    n,
                    libc::MADV_POPULATE_WRITE,
                )
            };
            if rc == 0 {
                Ok(())
            } else {
                Err(io::Error::last_os_error())
            }
        };
        std::thread::scope(|scope| {
            let others: Vec<_> = (1..parts).map(|i| scope.spawn(move || one(i))).collect();
            let mut result = one(0);
            for h in others {
                let r = h
                    .join()
                    .unwrap_or_else(|_| Err(io::Error::other("populate thread panicked")));
                if result.is_ok() {
                    result = r;
                }
            }
            result
        })
    }

    /// Writes one byte in every page, making each dirty (and charged) again.
    pub fn touch(&self) {
        let page = crate::sys::page_size() as usize;
        let base = self.ptr.as_ptr();
        let mut off = 0;
        while off < self.len {
            // SAFETY: off < len, inside our mapping.
            unsafe {
                let p = base.add(off);
                p.write_volatile(p.read_volatile());
            }
            off += page;
        }
    }

    /// Writes a zero into every page of the fresh, zero-filled mapping, without reading it
    /// first: a read fault maps the huge zero page, and the write after it splits that into
    /// small pages (since 5.8), so `--thp` would get no huge page where MADV_POPULATE_WRITE is
    /// missing.
    fn fault_in(&self) {
        let page = crate::sys::page_size() as usize;
        let mut off = 0;
        while off < self.len {
            // SAFETY: off < len, inside our fresh mapping, which holds only zeroes.
            unsafe { self.ptr.as_ptr().add(off).write_volatile(0) };
            off += page;
        }
    }

    /// Gives back everything past `new_len` (rounded up to a page): the tail is unmapped and,
    /// for a memfd or file, truncated away so its pages are freed at once.
    pub fn truncate(&mut self, new_len: usize) -> io::Result<()> {
        let new_len = page_align(new_len);
        if new_len >= self.len {
            return Ok(());
        }
        if new_len == 0 {
            return Err(io::Error::other(
                "truncate to zero: drop the region instead",
            ));
        }
        // SAFETY: the tail [new_len, len) is part of our mapping and nothing borrows it.
        unsafe {
            let tail = NonNull::new_unchecked(self.ptr.as_ptr().add(new_len)).cast();
            munmap(tail, self.len - new_len)
        }
        .map_err(io::Error::from)?;
        self.len = new_len;
        if let Backing::Fd(f) = &self.backing {
            f.set_len(new_len as u64)?;
        }
        Ok(())
    }

    fn fill_random(&self) {
        let mut rng = Xorshift::new(self.ptr.as_ptr() as u64);
        let words = self.len / 8;
        let base = self.ptr.as_ptr().cast::<u64>();
        for i in 0..words {
            // SAFETY: i < len / 8, inside our (page-aligned) mapping.
            unsafe { base.add(i).write(rng.next()) };
        }
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: ptr/len came from mmap and nothing borrows the region any more.
        let _ = unsafe { munmap(self.ptr.cast(), self.len) };
        // The fd (memfd or unlinked file) closes after this and its pages go with it.
        if let Backing::Fd(f) = &self.backing {
            let _ = f.set_len(0);
        }
    }
}

/// xorshift64*: fast, and incompressible enough for zswap/zram.
struct Xorshift(u64);

impl Xorshift {
    fn new(seed: u64) -> Self {
        Xorshift((0x9E37_79B9_7F4A_7C15 ^ seed) | 1)
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let v = self.next().to_ne_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

/// An anonymous file in `dir`: O_TMPFILE where the filesystem has it, else created and unlinked
/// at once. Either way no name is left behind, even if the process is killed.
pub(crate) fn tmpfile(dir: &Path) -> io::Result<File> {
    let cdir = CString::new(dir.as_os_str().as_encoded_bytes())
        .map_err(|_| io::Error::other("directory path contains a NUL byte"))?;
    // SAFETY: plain syscall with a valid C string.
    let fd = unsafe {
        libc::open(
            cdir.as_ptr(),
            libc::O_TMPFILE | libc::O_RDWR | libc::O_CLOEXEC,
            0o600,
        )
    };
    if fd >= 0 {
        // SAFETY: fd is a fresh descriptor we own.
        return Ok(unsafe { File::from_raw_fd(fd) });
    }
    let path = dir.join(format!(
        ".oomlab-file-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    ));
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)?;
    std::fs::remove_file(&path)?;
    debug_assert!(file.as_raw_fd() >= 0);
    Ok(file)
}

/// True when `dir` is on tmpfs/ramfs, whose "page cache" is shmem and never written back.
pub fn is_memory_fs(dir: &Path) -> io::Result<bool> {
    let st = nix::sys::statfs::statfs(dir).map_err(io::Error::from)?;
    let t = st.filesystem_type().0;
    const RAMFS_MAGIC: libc::__fsword_t = 0x8584_58f6;
    Ok(t == libc::TMPFS_MAGIC || t == RAMFS_MAGIC)
}

/// Free bytes on the filesystem holding `dir` (for unprivileged users, as `df` shows).
pub fn fs_available(dir: &Path) -> io::Result<u64> {
    let st = nix::sys::statvfs::statvfs(dir).map_err(io::Error::from)?;
    Ok(st.blocks_available() as u64 * st.fragment_size() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_allocate_and_truncate() {
        let dir = std::env::temp_dir();
        for kind in [Kind::Anon, Kind::Shmem, Kind::File] {
            let mut r = Region::new(kind, 1 << 20, AllocOptions::default(), &dir)
                .unwrap_or_else(|e| panic!("{kind:?}: {e}"));
            assert_eq!(r.len(), 1 << 20);
            r.touch();
            r.truncate(5000).expect("truncate");
            assert_eq!(r.len(), page_align(5000));
            r.truncate(1 << 20).expect("growing is a no-op");
            assert_eq!(r.len(), page_align(5000));
        }
    }

    #[test]
    fn random_fill_is_not_zero() {
        let r = Region::anon(
            1 << 16,
            AllocOptions {
                fill: Fill::Random,
                ..AllocOptions::default()
            },
        )
        .expect("anon");
        // SAFETY: reading our own mapping.
        let bytes = unsafe { std::slice::from_raw_parts(r.ptr.as_ptr(), r.len()) };
        assert!(bytes.iter().filter(|&&b| b == 0).count() < bytes.len() / 100);
    }
}
