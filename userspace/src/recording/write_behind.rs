//! Streams a log to disk right behind its writer, and out of the page cache.
//!
//! A log is written once and read rarely, yet buffered writes leave every byte of it dirty
//! in the page cache until the kernel's flusher gets to it. Measured here (ext4, 2 GiB runs):
//! writing gets dearer as dirty pages pile up — 0.8, then 2.0, then 4.9 CPU-seconds for three
//! 2 GiB files in a row — and the sync at close waits for all of it. So, every [`WINDOW`]
//! bytes, the writer starts the writeback of the window it just filled, waits for the one
//! before (long done at disk speed: 8 MiB is ~5 ms here) and drops that one from the cache:
//! 3 GiB then cost 1.0–1.3 CPU-seconds against 1.7–2.8 buffered, and each log holds at most
//! two windows of dirty or in-flight pages. A recording cannot outrun its disk for long
//! anyway; this makes the wait steady instead of a stall at the dirty limit or at close.
//!
//! A write-back error of a window (EIO, or ENOSPC/EDQUOT where space is only taken at
//! write-back, as on NFS or thin storage) is returned, so that the recording fails then
//! (a fail-closed session stops) rather than at the `sync_all` at close.

use std::{fs::File, os::fd::AsRawFd};

/// Bytes between write-behind steps.
pub const WINDOW: u64 = 8 << 20;

/// Where one log stands: where its blocks start, its end, and where the window not yet
/// pushed to disk starts.
pub struct WriteBehind {
    blocks: u64,
    end: u64,
    window: u64,
}

impl WriteBehind {
    /// For a file whose first `end` bytes (the header) are already written.
    pub fn new(end: u64) -> Self {
        Self {
            blocks: end,
            end,
            window: end,
        }
    }

    /// `n` more bytes were appended; pushes the windows they completed. An error: the
    /// window before could not be written back.
    pub fn wrote(&mut self, file: &File, n: usize) -> std::io::Result<()> {
        self.end += n as u64;
        while self.end - self.window >= WINDOW {
            let (start, len) = (self.window, WINDOW);
            let fd = file.as_raw_fd();
            // SAFETY: plain syscalls on a descriptor `file` keeps open; offsets and lengths
            // lie within what was written. Starting a writeback may fail harmlessly (the
            // wait below reports what matters).
            unsafe {
                libc::sync_file_range(fd, start as i64, len as i64, libc::SYNC_FILE_RANGE_WRITE);
                if let Some(prev) = start.checked_sub(WINDOW).filter(|&p| p >= self.blocks) {
                    let waited = libc::sync_file_range(
                        fd,
                        prev as i64,
                        len as i64,
                        libc::SYNC_FILE_RANGE_WAIT_BEFORE
                            | libc::SYNC_FILE_RANGE_WRITE
                            | libc::SYNC_FILE_RANGE_WAIT_AFTER,
                    );
                    if waited != 0 {
                        // Not dropped from the cache: the pages are what is left of them.
                        return Err(std::io::Error::last_os_error());
                    }
                    libc::posix_fadvise(fd, prev as i64, len as i64, libc::POSIX_FADV_DONTNEED);
                }
            }
            self.window += WINDOW;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    /// What a log holds is what was written, window steps or not, and the windows advance
    /// only over complete ones.
    #[test]
    fn the_file_is_unchanged_and_windows_advance_by_whole_steps() {
        let p = std::env::temp_dir().join(format!("portcullis-write-behind-{}", std::process::id()));
        let mut f = File::create(&p).unwrap();
        let header = vec![b'h'; 4100];
        f.write_all(&header).unwrap();
        let mut wb = WriteBehind::new(header.len() as u64);
        let mut expect = header.clone();
        let chunk: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        for _ in 0..60 {
            f.write_all(&chunk).unwrap();
            wb.wrote(&f, chunk.len()).unwrap();
            expect.extend_from_slice(&chunk);
        }
        let total = expect.len() as u64;
        assert_eq!(wb.end, total);
        assert_eq!((wb.window - header.len() as u64) % WINDOW, 0);
        assert!(total - wb.window < WINDOW, "every complete window was pushed");
        f.sync_all().unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), expect);
        let _ = std::fs::remove_file(&p);
    }
}
