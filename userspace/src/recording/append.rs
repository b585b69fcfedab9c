//! Laying a log's blocks out for its file, and writing them.
//!
//! A pool job seals a batch of records into blocks here (appended to [`Appender::stage`]
//! and sealed in place there), and [`Appender::flush`] writes what is staged with one
//! positional write: the file only ever grows by whole blocks, so a daemon killed at any
//! moment leaves whole blocks (and a write a full disk took only part of is cut back).
//! [`WriteBehind`] then pushes the written bytes to disk and out of the page cache.
//!
//! Why not `O_DIRECT` (tried): it cut the kernel's part of a write, but on a virtual disk
//! each write waits for the device and traps to the hypervisor, and the relay waits for the
//! write before it passes bytes on — recorded transfers got slower, not faster.

use std::{fs::File, os::unix::fs::FileExt};

use super::write_behind::WriteBehind;

/// The staging buffer's size while a session streams: a publication's worth of blocks
/// (`writer::PUBLISH`) and one more block. It starts (and idles) empty, and grows further
/// only for a block that does not fit.
pub const STAGE: usize = 384 * 1024;

/// One log's end: the blocks staged and where the file ends.
pub struct Appender {
    stage: Vec<u8>,
    /// The file's length: where the staged bytes go.
    end: u64,
    behind: WriteBehind,
}

impl Appender {
    /// For a file that holds its `header_len`-byte header and nothing else.
    pub fn new(header_len: u64) -> Self {
        Self {
            stage: Vec::new(),
            end: header_len,
            behind: WriteBehind::new(header_len),
        }
    }

    /// The staged bytes, with room for `n` more to append (a whole block, which the caller
    /// seals in place there). Writes what is staged first if the block does not fit after it.
    pub fn stage(&mut self, file: &File, n: usize) -> std::io::Result<&mut Vec<u8>> {
        let at = self.stage.len();
        if at > 0 && at + n > self.stage.capacity() && self.stage.capacity() >= STAGE {
            self.flush(file)?;
        }
        let at = self.stage.len();
        if at + n > self.stage.capacity() {
            self.stage.reserve_exact(STAGE.max(at + n) - at);
        }
        Ok(&mut self.stage)
    }

    /// Writes what is staged.
    pub fn flush(&mut self, file: &File) -> std::io::Result<()> {
        if self.stage.is_empty() {
            return Ok(());
        }
        if let Err(e) = file.write_all_at(&self.stage, self.end) {
            // A full disk may have taken part of it: cut the file back to its last whole
            // block, so that the log stays whole blocks up to where it stopped.
            let _ = file.set_len(self.end);
            return Err(e);
        }
        let n = self.stage.len();
        self.end += n as u64;
        self.stage.clear();
        // Room a block bigger than usual took is given back at once.
        self.stage.shrink_to(STAGE);
        // The bytes are in the file; a write-back error of an earlier window fails the
        // recording from here on.
        self.behind.wrote(file, n)
    }

    /// Drops what is staged (a failed recording: it will not be written) and its room.
    pub fn discard(&mut self) {
        self.stage = Vec::new();
    }

    /// Gives back the staging buffer's room: for an idle log, once everything is written.
    pub fn shrink(&mut self) {
        if self.stage.is_empty() {
            self.stage = Vec::new();
        }
    }

    /// The file's length once what is staged is written.
    #[cfg(test)]
    fn end(&self) -> u64 {
        self.end + self.stage.len() as u64
    }

    /// The staging buffer's size, for the stated memory bound.
    #[cfg(test)]
    fn capacity(&self) -> usize {
        self.stage.capacity()
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    /// Blocks of any size, flushed or not in between, land in the file in order, after the
    /// header; the stage grows to a streaming size, past it only for a bigger block, and
    /// shrinks back when idle.
    #[test]
    fn the_file_holds_exactly_what_was_staged() {
        let p = std::env::temp_dir().join(format!("portcullis-append-{}", std::process::id()));
        let mut f = std::fs::File::create(&p).unwrap();
        let header = vec![b'h'; 4100];
        f.write_all(&header).unwrap();
        let mut a = Appender::new(header.len() as u64);
        let mut expect = header.clone();
        let mut k = 0u32;
        for n in [
            1usize,
            13,
            4096,
            70_001,
            131_072,
            7,
            300_000,
            200_000,
            3,
            1 << 20,
            5000,
        ] {
            let bytes: Vec<u8> = (0..n)
                .map(|i| {
                    k = k.wrapping_mul(31).wrapping_add(i as u32 + 1);
                    (k >> 7) as u8
                })
                .collect();
            a.stage(&f, n).unwrap().extend_from_slice(&bytes);
            expect.extend_from_slice(&bytes);
            assert_eq!(a.end(), expect.len() as u64);
            if n % 2 == 1 {
                a.flush(&f).unwrap();
                assert_eq!(f.metadata().unwrap().len(), expect.len() as u64, "after {n}");
            }
            assert!(
                a.capacity() <= STAGE.max(n + STAGE),
                "{} staged for {n}",
                a.capacity()
            );
        }
        a.flush(&f).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), expect);
        a.shrink();
        assert_eq!(a.capacity(), 0);
        std::fs::remove_file(p).unwrap();
    }
}
