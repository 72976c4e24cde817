//! Follows `/dev/kmsg` from its end in a tokio task and sends each new kernel record on a
//! channel. The file is opened at once, so no record logged after [`KmsgReader::start`] is missed.

use std::{
    fs::File,
    io::{self, Read},
    os::unix::fs::OpenOptionsExt,
};

use tokio::{io::unix::AsyncFd, sync::mpsc};

use super::Record;

#[derive(Debug, thiserror::Error)]
pub enum KmsgError {
    #[error("cannot open /dev/kmsg (root or CAP_SYSLOG needed, and kernel.dmesg_restrict may forbid it): {0}")]
    Open(#[source] io::Error),
    #[error("cannot watch /dev/kmsg with the async runtime: {0}")]
    Register(#[source] io::Error),
}

/// Reads `/dev/kmsg` from its end (new records only) in a tokio task and sends each record.
pub struct KmsgReader {
    task: tokio::task::JoinHandle<()>,
}

impl KmsgReader {
    /// Opens `/dev/kmsg` now (so records logged after this call are not missed) and starts the
    /// reading task. Must be called inside a tokio runtime.
    pub fn start() -> Result<(KmsgReader, mpsc::Receiver<Record>), KmsgError> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open("/dev/kmsg")
            .map_err(KmsgError::Open)?;
        // SEEK_END on /dev/kmsg moves to the next record to be logged.
        // SAFETY: lseek on a file descriptor we own; no memory is touched.
        let r = unsafe { libc::lseek(std::os::fd::AsRawFd::as_raw_fd(&file), 0, libc::SEEK_END) };
        if r < 0 {
            return Err(KmsgError::Open(io::Error::last_os_error()));
        }
        // SAFETY: the File is owned by the AsyncFd for its whole life, so the fd stays open and
        // refers to /dev/kmsg until the AsyncFd is dropped.
        let fd = unsafe { AsyncFd::register(file) }
            .map_err(|e| KmsgError::Register(e.into_parts().1))?;
        let (tx, rx) = mpsc::channel(4096);
        let task = tokio::spawn(read_loop(fd, tx));
        Ok((KmsgReader { task }, rx))
    }
}

impl Drop for KmsgReader {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn read_loop(fd: AsyncFd<File>, tx: mpsc::Sender<Record>) {
    // One read returns one record; 8 KiB is the kernel's record limit (CONSOLE_EXT_LOG_MAX).
    let mut buf = vec![0u8; 8192];
    loop {
        let Ok(mut guard) = fd.readable().await else {
            return;
        };
        loop {
            match (&mut guard.get_inner()).read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    let rec = buf.get(..n).map(String::from_utf8_lossy);
                    // What user space writes here (any facility but the kernel's) is not sent
                    // on: a tenant logging in a loop must not queue ahead of a real report.
                    let rec = rec.as_deref().and_then(Record::parse);
                    if let Some(rec) = rec.filter(Record::from_kernel) {
                        if tx.send(rec).await.is_err() {
                            return;
                        }
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    guard.clear_ready();
                    break;
                }
                // EPIPE: the ring overwrote records we had not read; carry on from the next.
                Err(e) if e.raw_os_error() == Some(libc::EPIPE) => continue,
                Err(e) => {
                    log::warn!("reading /dev/kmsg stopped: {e}");
                    return;
                }
            }
        }
    }
}
