//! One region of memory that is actually charged to the caller's cgroup: mapped, populated and
//! written, so no lazy allocation or zero page can make the numbers lie.

use std::{io, num::NonZeroUsize, ptr::NonNull};

use nix::sys::mman::{madvise, mmap_anonymous, munmap, MapFlags, MmapAdvise, ProtFlags};

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

#[derive(Debug, Clone, Copy, Default)]
pub struct AllocOptions {
    pub thp: bool,
    pub fill: Fill,
    pub mlock: bool,
}

/// A private anonymous mapping, populated on creation and unmapped on drop.
#[derive(Debug)]
pub struct Region {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the region is plain memory owned by this value.
unsafe impl Send for Region {}

pub fn page_size() -> usize {
    nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .map_or(4096, |p| p as usize)
}

impl Region {
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
        let region = Region { ptr, len };
        if opts.thp {
            // SAFETY: the range is our mapping.
            unsafe { madvise(ptr.cast(), len, MmapAdvise::MADV_HUGEPAGE) }
                .map_err(io::Error::from)?;
        }
        if opts.mlock {
            // SAFETY: the range is our mapping.
            unsafe { nix::sys::mman::mlock(ptr.cast(), len) }.map_err(io::Error::from)?;
        }
        match opts.fill {
            Fill::Zero => region.populate()?,
            Fill::Random => region.fill_random(),
        }
        Ok(region)
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Faults every page in, writable: MADV_POPULATE_WRITE (Linux ≥ 5.14) in one call, else a
    /// write to each page.
    fn populate(&self) -> io::Result<()> {
        // SAFETY: the range is our mapping.
        let rc = unsafe {
            libc::madvise(
                self.ptr.as_ptr().cast(),
                self.len,
                libc::MADV_POPULATE_WRITE,
            )
        };
        if rc == 0 {
            return Ok(());
        }
        let err = io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EINVAL) {
            // ENOMEM/EFAULT: the cgroup could not give us the memory (the OOM killer may be on
            // its way); report it rather than touch pages one by one into the same wall.
            return Err(err);
        }
        self.touch();
        Ok(())
    }

    /// Writes one byte in every page, making each dirty (and charged) again.
    pub fn touch(&self) {
        let page = page_size();
        let base = self.ptr.as_ptr();
        let mut off = 0;
        while off < self.len {
            // SAFETY: off < len, inside our mapping.
            unsafe { base.add(off).write_volatile(1) };
            off += page;
        }
    }

    fn fill_random(&self) {
        // xorshift64*: fast, and incompressible enough for zswap/zram.
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15 ^ (self.ptr.as_ptr() as u64);
        let words = self.len / 8;
        let base = self.ptr.as_ptr().cast::<u64>();
        for i in 0..words {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            // SAFETY: i < len / 8, inside our (page-aligned) mapping.
            unsafe { base.add(i).write(x.wrapping_mul(0x2545_F491_4F6C_DD1D)) };
        }
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: ptr/len came from mmap and nothing borrows the region any more.
        let _ = unsafe { munmap(self.ptr.cast(), self.len) };
    }
}
