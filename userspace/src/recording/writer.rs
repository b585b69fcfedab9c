//! Sealing one session's log while it runs. The relay hands records to a bounded channel
//! (a slow disk slows the session instead of growing memory); a task batches them into
//! blocks of whole records, seals each with the session's HPKE context — in place, into
//! buffers reused from block to block — and writes each block with one `write`, so a
//! killed daemon leaves only whole blocks. At the end the header is rewritten in place with
//! the exit data.

use std::{
    fs::{File, OpenOptions},
    io::{IoSlice, Write},
    os::unix::fs::{FileExt, OpenOptionsExt},
    path::{Path, PathBuf},
    time::Instant,
};

use bytes::Bytes;
use tokio::sync::mpsc;

use super::{
    format::{self, ExitData, Header, PtyInfo},
    keys::PublicKey,
    seal::{SealError, Sealer},
};

/// A block's plaintext grows to about this much before it is sealed.
pub const BLOCK: usize = 64 * 1024;
const QUEUE: usize = 256;

#[derive(Debug, thiserror::Error)]
pub enum RecordingError {
    #[error("recording file {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("sealing the recording failed: {0}")]
    Seal(#[from] SealError),
    #[error(transparent)]
    Format(#[from] format::FormatError),
    #[error("the recording stopped: {0}")]
    Stopped(String),
}

enum Item {
    Data {
        source: u8,
        code: u32,
        at: Instant,
        data: Bytes,
    },
    Exit(ExitData),
}

/// The relay's end of a recording. Cloned into both directions' tasks; the log is finished
/// when every clone is dropped.
#[derive(Clone)]
pub struct Recorder {
    tx: mpsc::Sender<Item>,
    pub path: PathBuf,
    failed: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

/// What a finished recording wrote.
#[derive(Debug, Clone)]
pub struct Summary {
    pub path: PathBuf,
    pub blocks: u64,
    pub data_bytes: u64,
}

impl Recorder {
    /// Creates `<dir>/<name>.log` (0600) and starts its writer task. The returned handle
    /// resolves to the summary (or the error that stopped the recording).
    pub fn start(
        dir: &Path,
        name: &str,
        key: &PublicKey,
        pty: Option<PtyInfo>,
        request: Option<String>,
    ) -> Result<(Self, tokio::task::JoinHandle<Result<Summary, RecordingError>>), RecordingError> {
        let path = dir.join(format!("{name}.log"));
        let io = |source| RecordingError::Io {
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(io)?;
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(io)?;
        let (ctx, enc) = Sealer::new(key)?;
        let header = Header {
            started_at: crate::audit::unix_secs(),
            data_size: 0,
            encapsulated_key: enc.iter().map(|b| format!("{b:02x}")).collect(),
            pty,
            exit_data: None,
            request,
        };
        let w = Writer {
            file,
            path: path.clone(),
            ctx,
            header,
            start: Instant::now(),
            plain: Vec::with_capacity(BLOCK + 4096),
            out: Vec::with_capacity(BLOCK + 4096),
            blocks: 0,
            data_bytes: 0,
        };
        let h = format::encode_header(&w.header)?;
        (&w.file).write_all(&h).map_err(|source| RecordingError::Io {
            path: path.clone(),
            source,
        })?;
        let (tx, rx) = mpsc::channel(QUEUE);
        let task = tokio::task::spawn_blocking(move || w.run(rx));
        Ok((
            Self {
                tx,
                path,
                failed: Default::default(),
            },
            task,
        ))
    }

    /// Records bytes that crossed the relay; waits when the writer is behind.
    pub async fn record(&self, source: u8, code: u32, data: Bytes) -> Result<(), RecordingError> {
        self.tx
            .send(Item::Data {
                source,
                code,
                at: Instant::now(),
                data,
            })
            .await
            .map_err(|_| RecordingError::Stopped("writer gone".into()))
    }

    /// Whether a write already failed (the relay stops offering records).
    pub fn failed(&self) -> bool {
        self.failed.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn mark_failed(&self) {
        self.failed.store(true, std::sync::atomic::Ordering::Relaxed);
    }

    pub async fn exit(&self, e: ExitData) {
        let _ = self.tx.send(Item::Exit(e)).await;
    }

    pub fn exit_status(status: u32) -> ExitData {
        ExitData {
            timestamp: crate::audit::unix_secs(),
            status: Some(status),
            ..Default::default()
        }
    }

    pub fn exit_signal(signal: String, core_dumped: bool, error_msg: Option<String>) -> ExitData {
        ExitData {
            timestamp: crate::audit::unix_secs(),
            signal: Some(signal),
            core_dumped,
            error_msg,
            ..Default::default()
        }
    }
}

struct Writer {
    file: File,
    path: PathBuf,
    ctx: Sealer,
    header: Header,
    start: Instant,
    plain: Vec<u8>,
    out: Vec<u8>,
    blocks: u64,
    data_bytes: u64,
}

impl Writer {
    fn io(&self) -> impl FnOnce(std::io::Error) -> RecordingError + '_ {
        |source| RecordingError::Io {
            path: self.path.clone(),
            source,
        }
    }

    /// Rewrites the header in place (same size: the JSON is padded to a fixed length).
    fn rewrite_header(&mut self) -> Result<(), RecordingError> {
        let h = format::encode_header(&self.header)?;
        self.file.write_all_at(&h, 0).map_err(self.io())
    }

    fn run(mut self, mut rx: mpsc::Receiver<Item>) -> Result<Summary, RecordingError> {
        while let Some(item) = rx.blocking_recv() {
            self.take(item);
            // Batch what is already queued, up to a block.
            while self.plain.len() < BLOCK {
                match rx.try_recv() {
                    Ok(item) => self.take(item),
                    Err(_) => break,
                }
            }
            self.flush()?;
        }
        self.flush()?;
        self.header.data_size = self.data_bytes;
        if self.header.exit_data.is_none() {
            self.header.exit_data = Some(ExitData {
                timestamp: crate::audit::unix_secs(),
                ..Default::default()
            });
        }
        self.rewrite_header()?;
        self.file.sync_all().map_err(self.io())?;
        Ok(Summary {
            path: self.path,
            blocks: self.blocks,
            data_bytes: self.data_bytes,
        })
    }

    fn take(&mut self, item: Item) {
        match item {
            Item::Data {
                source,
                code,
                at,
                data,
            } => {
                let us = at.saturating_duration_since(self.start).as_micros() as u64;
                self.data_bytes += data.len() as u64;
                format::push_record(&mut self.plain, source, code, us, &data);
            }
            Item::Exit(e) => self.header.exit_data = Some(e),
        }
    }

    /// Seals the pending records as one block and writes it.
    fn flush(&mut self) -> Result<(), RecordingError> {
        if self.plain.is_empty() {
            return Ok(());
        }
        let tag = self.ctx.seal_in_place(&mut self.plain)?;
        let len = ((self.plain.len() + tag.len()) as u32).to_be_bytes();
        // One writev per block, straight from the sealed buffer: a crash leaves whole
        // blocks or a cut last one, never an interleaving.
        let parts = [IoSlice::new(&len), IoSlice::new(&self.plain), IoSlice::new(&tag)];
        let total = 4 + self.plain.len() + tag.len();
        let n = (&self.file).write_vectored(&parts).map_err(self.io())?;
        if n != total {
            // A short write (a full disk, usually): finish it the slow way or fail.
            self.out.clear();
            for p in &parts {
                self.out.extend_from_slice(p);
            }
            (&self.file).write_all(&self.out[n..]).map_err(self.io())?;
        }
        self.plain.clear();
        self.blocks += 1;
        Ok(())
    }
}
