//! Sealing one session's log while it runs. The relay hands records to a bounded channel
//! (a slow disk slows the session instead of growing memory); an async task per recording
//! batches them into blocks of whole records and seals each in place with the session's
//! HPKE context (about 25 µs for a full block: short enough to run on the runtime). Each
//! sealed block goes whole to the shared I/O pool (`disk.rs`), which writes it with one
//! `write` — a killed daemon leaves only whole blocks — and adds it to the log's digest.
//! At the end the header is rewritten in place with the exit data and the trailer
//! (`trailer.rs`), then the file is synced. No thread is held per recording.
//!
//! Memory per recording is bounded: at most [`QUEUE`] records waiting (each a chunk the
//! relay passed on, which holds its `Bytes` — at most 64 KiB) plus one block buffer of at
//! most [`BLOCK`] + one record + 20 bytes and, when the writer is behind, sealed blocks of
//! about 1 MiB awaiting one write, both shrunk back to [`IDLE_BUFFER`] whenever the
//! recording goes idle; and a task, a file descriptor, the header and a hash state.

use std::{
    fs::{File, OpenOptions},
    io::Write,
    os::unix::fs::{FileExt, OpenOptionsExt},
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
        Arc, OnceLock,
    },
    time::{Duration, Instant},
};

use aws_lc_rs::digest;
use bytes::Bytes;
use tokio::sync::{mpsc, watch, Notify};

use super::{
    disk,
    format::{self, ExitData, Header, PtyInfo},
    keys::PublicKey,
    seal::{SealError, Sealer},
    signing::{SigningError, SigningKey},
    trailer,
};

/// A block's plaintext grows to about this much before it is sealed.
pub const BLOCK: usize = 64 * 1024;
/// Records a recording may have waiting before the relay waits for it.
pub const QUEUE: usize = 64;
/// Sealed blocks written together when the writer is behind, at most about this much.
const BATCH: usize = 1024 * 1024;
/// What an idle recording keeps of its block buffer.
pub const IDLE_BUFFER: usize = 4096;
/// A block starts with its big-endian length, filled in once it is sealed.
const LEN: usize = 4;

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
    #[error(transparent)]
    Sign(#[from] SigningError),
    #[error("the recording stopped: {0}")]
    Stopped(String),
}

impl From<disk::PoolGone> for RecordingError {
    fn from(e: disk::PoolGone) -> Self {
        Self::Stopped(e.to_string())
    }
}

/// The recordings open in this process, so that a stopping daemon can close them all
/// ([`close_all`]) before its runtime drops their tasks — which would leave logs that look
/// like a crash's.
struct Open {
    count: AtomicUsize,
    /// Signalled when `count` drops to zero.
    none: Notify,
    closing: watch::Sender<bool>,
}

fn open() -> &'static Open {
    static OPEN: OnceLock<Open> = OnceLock::new();
    OPEN.get_or_init(|| Open {
        count: AtomicUsize::new(0),
        none: Notify::new(),
        closing: watch::channel(false).0,
    })
}

/// Counts one open recording for as long as it lives (its task may also be dropped).
struct Counted;

impl Counted {
    fn new() -> Self {
        open().count.fetch_add(1, Ordering::SeqCst);
        Self
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        if open().count.fetch_sub(1, Ordering::SeqCst) == 1 {
            open().none.notify_waiters();
        }
    }
}

/// Closes every open recording now, as if its session had ended (what was queued is
/// written, then the trailer), and waits for them up to `within`. Returns how many are
/// still open. For a stopping daemon: afterwards new recordings close as soon as they start.
pub async fn close_all(within: Duration) -> usize {
    let o = open();
    o.closing.send_replace(true);
    let _ = tokio::time::timeout(within, async {
        loop {
            // Created before the check: `notify_waiters` reaches it even if not yet polled.
            let none = o.none.notified();
            if o.count.load(Ordering::SeqCst) == 0 {
                return;
            }
            none.await;
        }
    })
    .await;
    o.count.load(Ordering::SeqCst)
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

impl Item {
    /// Counted in `portcullis_recording_queued_bytes` from here until dropped (taken into
    /// a block, or discarded with a stopped writer's queue).
    fn data(source: u8, code: u32, data: Bytes) -> Self {
        crate::metrics::get()
            .recording_queued_bytes
            .inc_by(data.len() as i64);
        Item::Data {
            source,
            code,
            at: Instant::now(),
            data,
        }
    }
}

impl Drop for Item {
    fn drop(&mut self) {
        if let Item::Data { data, .. } = self {
            crate::metrics::get()
                .recording_queued_bytes
                .dec_by(data.len() as i64);
        }
    }
}

/// The relay's end of a recording. Cloned into both directions' tasks; the log is finished
/// when every clone is dropped.
///
/// Each record handed over gets a position: the session bytes recorded so far, itself
/// included. The writer publishes the position its file holds ([`Recorder::written`]), so
/// the relay passes bytes on only once they are on disk: a daemon killed at any moment has
/// lost no byte a peer already saw.
#[derive(Clone)]
pub struct Recorder {
    tx: mpsc::Sender<Item>,
    pub path: PathBuf,
    failed: Arc<AtomicBool>,
    /// Session bytes handed to the writer so far.
    queued: Arc<AtomicU64>,
    /// Session bytes in the file (in blocks written whole).
    written: watch::Receiver<u64>,
}

/// Why [`Recorder::try_record`] did not take a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TryRecord {
    /// The writer is behind; try again after [`Recorder::ready`].
    Full,
    /// The writer stopped (its write failed).
    Stopped,
}

/// What a finished recording wrote.
#[derive(Debug, Clone)]
pub struct Summary {
    pub path: PathBuf,
    pub blocks: u64,
    pub data_bytes: u64,
    /// Hex SHA-256 of the blocks, as in the trailer (worth keeping apart from the log: it
    /// shows a log whose trailer and tail were both removed).
    pub digest: String,
    pub signed: bool,
}

impl Recorder {
    /// Creates `<dir>/<name>.log` (0600) and starts its writer task; `signer` signs the
    /// trailer at close (none: the trailer is unsigned). The returned handle resolves to the
    /// summary (or the error that stopped the recording). Must be called within a tokio
    /// runtime.
    pub fn start(
        dir: &Path,
        name: &str,
        key: &PublicKey,
        pty: Option<PtyInfo>,
        request: Option<String>,
        signer: Option<Arc<SigningKey>>,
    ) -> Result<(Self, tokio::task::JoinHandle<Result<Summary, RecordingError>>), RecordingError> {
        let path = dir.join(format!("{name}.log"));
        let io = |source| RecordingError::Io {
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(io)?;
        // Written under a temporary name and linked into place with its header: a daemon
        // killed at any instant leaves either no log or one that starts with a header (an
        // orphaned `.log.new` holds nothing of a session: none of its bytes passed yet).
        let fresh = dir.join(format!("{name}.log.new"));
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&fresh)
            .map_err(io)?;
        let (ctx, enc) = Sealer::new(key)?;
        let header = Header {
            started_at: crate::audit::unix_secs(),
            data_size: 0,
            encapsulated_key: enc.iter().map(|b| format!("{b:02x}")).collect(),
            pty,
            exit_data: None,
            request,
            trailer: None,
        };
        let placed = format::encode_header(&header)
            .map_err(RecordingError::from)
            .and_then(|h| {
                (&file).write_all(&h).map_err(io)?;
                // A link, not a rename: an existing log of that name is never replaced.
                std::fs::hard_link(&fresh, &path).map_err(io)
            });
        let _ = std::fs::remove_file(&fresh);
        placed?;
        let (written_tx, written_rx) = watch::channel(0u64);
        let w = Writer {
            file: Arc::new(file),
            path: path.clone(),
            ctx,
            header,
            signer,
            start: Instant::now(),
            block: vec![0; LEN],
            sealed: Vec::new(),
            digest: digest::Context::new(&digest::SHA256),
            blocks: 0,
            data_bytes: 0,
            closing: open().closing.subscribe(),
            _counted: Counted::new(),
            sealed_upto: 0,
            written: written_tx,
        };
        let (tx, rx) = mpsc::channel(QUEUE);
        let task = tokio::spawn(w.run(rx));
        Ok((
            Self {
                tx,
                path,
                failed: Default::default(),
                queued: Default::default(),
                written: written_rx,
            },
            task,
        ))
    }

    /// Records bytes that crossed the relay; waits when the writer is behind.
    pub async fn record(&self, source: u8, code: u32, data: Bytes) -> Result<(), RecordingError> {
        let n = data.len() as u64;
        self.tx
            .send(Item::data(source, code, data))
            .await
            .map_err(|_| RecordingError::Stopped("writer gone".into()))?;
        self.queued.fetch_add(n, Ordering::Relaxed);
        Ok(())
    }

    /// Records bytes without waiting: `Full` when the writer is behind (the relay holds the
    /// bytes, and the window they came with, until [`Recorder::ready`]).
    /// Returns the record's position: it is on disk once [`Recorder::written`] reaches it.
    pub fn try_record(&self, source: u8, code: u32, data: Bytes) -> Result<u64, TryRecord> {
        let n = data.len() as u64;
        let item = Item::data(source, code, data);
        match self.tx.try_send(item) {
            // Only the relay's task records data, one record at a time: positions follow
            // the queue's order.
            Ok(()) => Ok(self.queued.fetch_add(n, Ordering::Relaxed) + n),
            Err(mpsc::error::TrySendError::Full(_)) => Err(TryRecord::Full),
            Err(mpsc::error::TrySendError::Closed(_)) => Err(TryRecord::Stopped),
        }
    }

    /// The position the file holds: every record up to it is in blocks written whole.
    pub fn written(&self) -> u64 {
        *self.written.borrow()
    }

    /// Resolves once the file holds `position` (or the writer stopped: see
    /// [`Recorder::stopped`]).
    pub fn written_past(&self, position: u64) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut rx = self.written.clone();
        async move {
            let _ = rx.wait_for(|w| *w >= position).await;
        }
    }

    /// The writer is gone (a write failed, or the log was closed).
    pub fn stopped(&self) -> bool {
        self.tx.is_closed()
    }

    /// Resolves once the writer has room for half a queue of records (or is gone): waking
    /// the relay for every single free slot would make it and the writer take turns a
    /// record at a time.
    pub fn ready(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let tx = self.tx.clone();
        async move {
            let _ = tx.reserve_many(QUEUE / 2).await;
        }
    }

    /// The exit data, without waiting: if the queue is full it is handed over by a task
    /// (which keeps the log open until then).
    pub fn exit_now(&self, e: ExitData) {
        if let Err(mpsc::error::TrySendError::Full(item)) = self.tx.try_send(Item::Exit(e)) {
            let tx = self.tx.clone();
            tokio::spawn(async move {
                let _ = tx.send(item).await;
            });
        }
    }

    /// Whether a write already failed (the relay stops offering records).
    pub fn failed(&self) -> bool {
        self.failed.load(Ordering::Relaxed)
    }

    pub fn mark_failed(&self) {
        self.failed.store(true, Ordering::Relaxed);
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
    file: Arc<File>,
    path: PathBuf,
    ctx: Sealer,
    header: Header,
    signer: Option<Arc<SigningKey>>,
    start: Instant,
    /// The block being filled: `LEN` bytes for its length, then whole records. Sealed in
    /// place, lent to the I/O pool for the write and returned.
    block: Vec<u8>,
    /// Sealed blocks not written yet: when records are queued (the writer is behind), several
    /// blocks go to the pool in one job and one `write`, instead of a thread hand-off each.
    /// Lent to the pool for the write and returned.
    sealed: Vec<u8>,
    /// SHA-256 of the blocks written so far; travels with each write.
    digest: digest::Context,
    blocks: u64,
    data_bytes: u64,
    /// Set when the daemon stops: close now.
    closing: watch::Receiver<bool>,
    _counted: Counted,
    /// The position (`data_bytes`) the sealed blocks reach.
    sealed_upto: u64,
    /// Where the relay learns the position the file holds.
    written: watch::Sender<u64>,
}

impl Writer {
    fn io(&self) -> impl Fn(std::io::Error) -> RecordingError + Send + 'static {
        let path = self.path.clone();
        move |source| RecordingError::Io {
            path: path.clone(),
            source,
        }
    }

    async fn run(mut self, mut rx: mpsc::Receiver<Item>) -> Result<Summary, RecordingError> {
        loop {
            let item = tokio::select! {
                // First, so that a busy recording also closes when told to.
                biased;
                _ = self.closing.wait_for(|c| *c) => None,
                item = rx.recv() => item,
            };
            let Some(item) = item else { break };
            self.take(item);
            // Batch what is already queued: blocks of up to BLOCK, and up to BATCH of them
            // for one write.
            loop {
                while self.block.len() < LEN + BLOCK {
                    match rx.try_recv() {
                        Ok(item) => self.take(item),
                        Err(_) => break,
                    }
                }
                self.seal()?;
                if rx.is_empty() || self.sealed.len() >= BATCH {
                    break;
                }
            }
            self.write_sealed().await?;
            if rx.is_empty() {
                self.block.shrink_to(IDLE_BUFFER);
                self.sealed.shrink_to(IDLE_BUFFER);
            }
        }
        // Told to close while the session runs: what is queued still goes in.
        rx.close();
        while let Ok(item) = rx.try_recv() {
            self.take(item);
            if self.block.len() >= LEN + BLOCK {
                self.flush().await?;
            }
        }
        if self.header.exit_data.is_none() && *self.closing.borrow() {
            self.header.exit_data = Some(ExitData {
                timestamp: crate::audit::unix_secs(),
                error_msg: Some("the gateway stopped during the session".into()),
                ..Default::default()
            });
        }
        self.flush().await?;
        self.close().await
    }

    fn take(&mut self, item: Item) {
        match &item {
            Item::Data {
                source,
                code,
                at,
                data,
            } => {
                let us = at.saturating_duration_since(self.start).as_micros() as u64;
                self.data_bytes += data.len() as u64;
                format::push_record(&mut self.block, *source, *code, us, data);
            }
            Item::Exit(e) => self.header.exit_data = Some(e.clone()),
        }
    }

    /// Seals the pending records as one block and has the pool write it.
    async fn flush(&mut self) -> Result<(), RecordingError> {
        self.seal()?;
        self.write_sealed().await
    }

    /// Seals the pending records (if any) as one block, after the sealed ones.
    fn seal(&mut self) -> Result<(), RecordingError> {
        if self.block.len() == LEN {
            return Ok(());
        }
        let tag = self.ctx.seal_in_place(&mut self.block[LEN..])?;
        self.block.extend_from_slice(&tag);
        let len = u32::try_from(self.block.len() - LEN)
            .map_err(|_| RecordingError::Stopped("a block over 4 GiB".into()))?;
        self.block[..LEN].copy_from_slice(&len.to_be_bytes());
        if self.sealed.is_empty() {
            // The common case, one block: handed over as is, no copy.
            std::mem::swap(&mut self.sealed, &mut self.block);
        } else {
            self.sealed.extend_from_slice(&self.block);
        }
        self.block.clear();
        self.block.extend_from_slice(&[0; LEN]);
        self.blocks += 1;
        self.sealed_upto = self.data_bytes;
        crate::metrics::get().recording_blocks.inc();
        Ok(())
    }

    /// Has the pool write the sealed blocks, with one `write` (whole blocks only: a killed
    /// daemon leaves whole blocks), and add them to the digest.
    async fn write_sealed(&mut self) -> Result<(), RecordingError> {
        if self.sealed.is_empty() {
            return Ok(());
        }
        let mut sealed = std::mem::take(&mut self.sealed);
        let n = sealed.len() as u64;
        let mut hash = std::mem::replace(&mut self.digest, digest::Context::new(&digest::SHA256));
        let file = self.file.clone();
        let (sealed, hash, written) = disk::run(move || {
            // `write_all` is one `write` unless the kernel takes less (a full disk).
            let r = (&*file).write_all(&sealed);
            hash.update(&sealed);
            sealed.clear();
            (sealed, hash, r)
        })
        .await?;
        written.map_err(self.io())?;
        crate::metrics::get().recording_bytes.inc_by(n);
        self.sealed = sealed;
        self.digest = hash;
        self.written.send_replace(self.sealed_upto);
        Ok(())
    }

    /// Patches the header with the exit data and the trailer, and syncs the file.
    async fn close(mut self) -> Result<Summary, RecordingError> {
        self.header.data_size = self.data_bytes;
        if self.header.exit_data.is_none() {
            self.header.exit_data = Some(ExitData {
                timestamp: crate::audit::unix_secs(),
                ..Default::default()
            });
        }
        let io = self.io();
        let (file, signer, hash, blocks) = (self.file, self.signer, self.digest, self.blocks);
        // What is signed is what is written: the header as cut to fit.
        let mut header = format::fitted(&self.header);
        let trailer = disk::run(move || -> Result<format::Trailer, RecordingError> {
            let d: [u8; 32] = hash.finish().as_ref().try_into().expect("SHA-256 is 32 bytes");
            header.trailer = Some(trailer::make(&header, blocks, &d, signer.as_deref())?);
            file.write_all_at(&format::encode_header(&header)?, 0)
                .map_err(&io)?;
            file.sync_all().map_err(&io)?;
            Ok(header.trailer.take().unwrap_or_default())
        })
        .await??;
        Ok(Summary {
            path: self.path,
            blocks,
            data_bytes: self.data_bytes,
            signed: trailer.signature.is_some(),
            digest: trailer.digest,
        })
    }
}
