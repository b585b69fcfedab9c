//! Sealing one session's log while it runs, with no thread and no hand-off per block.
//!
//! The relay hands each record it passes on to the recording ([`Recorder::try_record`]):
//! a reference to the bytes it received, not a copy (it holds them until the file does
//! anyway). Once it waits for the file (or 256 KiB are pending) a job starts on the shared
//! I/O pool (`disk.rs`), unless one is running for this recording. The job takes whatever
//! is pending, lays the records out as blocks in the log's staging buffer (`append.rs`),
//! seals each in place with the session's HPKE context, adds it to the log's digest, writes
//! the staged blocks with one `write` — a killed daemon leaves only whole blocks —
//! publishes the session position the file now holds (the relay sends bytes on only once
//! they are there), and goes on until nothing is pending. So a streaming session costs one
//! pool hand-off per relay wake-up, not several per block, and the relay's thread does not
//! touch the bytes for the recording at all. A small task per recording takes the exit
//! data and, once the session ends (or the daemon stops), has a last job write what is
//! left, rewrites the header in place with the exit data and the trailer (`trailer.rs`),
//! and syncs the file.
//!
//! Memory per recording is bounded: the pending records cost at most [`PENDING`] plus one
//! record (the relay waits past that: a slow disk slows the session instead of growing
//! memory) — their bytes are the relay's, counted in its channel windows; what is added is
//! the list of them — and the staging buffer is `append::STAGE` (more only for a single
//! record that does not fit); both are given back once the recording has been idle for
//! [`IDLE_AFTER`]. Besides: a task, a file descriptor, the header and a hash state.

use std::{
    collections::VecDeque,
    fs::{File, OpenOptions},
    io::Write,
    os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt},
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc, Mutex, OnceLock,
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use tokio::sync::{mpsc, watch, Notify};

use super::{
    append::Appender,
    disk,
    format::{self, ExitData, Header, PtyInfo},
    keys::PublicKey,
    seal::{SealError, Sealer, TAG_LEN},
    signing::{SigningError, SigningKey},
    trailer::{self, BlockHash},
};

/// A block's plaintext grows to about this much before it is sealed.
pub const BLOCK: usize = 64 * 1024;
/// What the pending records may cost (see `Rec::cost`) before the relay waits for the writer.
pub const PENDING: usize = 1024 * 1024;
/// Bytes pending that start a write job without waiting for the relay to ask.
const KICK: usize = 256 * 1024;
/// Bytes written between two publications of the file's position to the relay.
const PUBLISH: usize = 256 * 1024;
/// How long a recording waits for records before it shrinks its buffers. Not at once: a
/// busy session empties its pending blocks between most writes, and giving the buffers back
/// each time had the allocator map and fault in fresh pages for every block — it doubled
/// what recording cost a transfer.
pub const IDLE_AFTER: Duration = Duration::from_millis(500);
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

/// Whether the daemon is stopping ([`close_all`] ran): recordings no longer take records.
pub fn stopping() -> bool {
    *open().closing.borrow()
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
    // The logs closed here skipped their own `sync_all` (thousands of them, one at a time on
    // the pool's few threads, took longer than the daemon may take to stop): one sync for all.
    let _ = tokio::task::spawn_blocking(|| {
        // SAFETY: sync(2) takes no arguments and cannot fail.
        unsafe { libc::sync() }
    })
    .await;
    o.count.load(Ordering::SeqCst)
}

/// What the relay hands the writer task besides data: the exit data, for the header.
/// (Data goes to the recording's pending records: see [`Recorder::try_record`].)
enum Item {
    Exit(ExitData),
}

/// The relay's end of a recording. Cloned into both directions' tasks; the log is finished
/// when every clone is dropped.
///
/// Each record handed over gets a position: the session bytes recorded so far, itself
/// included. The file's progress is published ([`Recorder::written`]), so the relay passes
/// bytes on only once they are on disk: a daemon killed at any moment has lost no byte a
/// peer already saw.
#[derive(Clone)]
pub struct Recorder {
    shared: Arc<Shared>,
    /// Exit data to the writer task; its closing tells the task the session ended.
    tx: mpsc::Sender<Item>,
    pub path: PathBuf,
    failed: Arc<AtomicBool>,
    progress: watch::Receiver<Progress>,
}

/// How far the file is, as the relay sees it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Progress {
    /// Session bytes in the file (in blocks written whole).
    written: u64,
    /// No more records are taken: a write failed, or the log is closing.
    stopped: bool,
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
    /// Hex BLAKE3 of the blocks, as in the trailer (worth keeping apart from the log: it
    /// shows a log whose trailer and tail were both removed).
    pub digest: String,
    pub signed: bool,
}

/// One recording's state shared by the relay (which lays records out), the I/O pool
/// (which seals and writes them) and the writer task (which closes the log).
struct Shared {
    file: File,
    path: PathBuf,
    start: Instant,
    /// A job ended while the writer task had no timer to shrink idle buffers: it arms one.
    activity: Notify,
    pending: Mutex<Pending>,
    progress: watch::Sender<Progress>,
}

/// A record taken from the relay, not yet sealed: the bytes are the relay's own (a
/// reference, not a copy; the relay holds them until the file does anyway).
struct Rec {
    source: u8,
    code: u32,
    us: u64,
    data: Bytes,
}

impl Rec {
    /// What the record costs until it is written: its framing in the block, its entry here,
    /// and its bytes.
    fn cost(&self) -> usize {
        format::record_len(self.data.len()) + std::mem::size_of::<Rec>()
    }
}

/// The records not yet written; a pool job takes them all and seals them into blocks.
struct Pending {
    records: VecDeque<Rec>,
    /// What `records` cost (see [`Rec::cost`]), bounded by [`PENDING`].
    cost: usize,
    data_bytes: u64,
    /// The position `records` start at (where the last batch taken ended).
    batch_start: u64,
    /// The list a pool job works from, lent to it while `busy` (it keeps its room).
    spare: VecDeque<Rec>,
    /// A pool job is sealing and writing this recording's blocks; it takes whatever is
    /// pending until nothing is, so the relay and the pool hand over work without a thread
    /// switch per block (and no task sits between them).
    busy: bool,
    /// The HPKE context, the digest of the blocks written and the file's end, here while no
    /// job has them.
    sealing: Option<Sealing>,
    blocks: u64,
    /// What stopped the recording (a failed write), for the writer task to report.
    error: Option<RecordingError>,
    /// The log is closing: no record is taken any more.
    closed: bool,
    /// `data_bytes` when the writer task last looked, to tell an idle recording.
    seen: u64,
    /// The writer task has a timer armed to shrink the buffers once idle.
    timer: bool,
}

impl Drop for Pending {
    fn drop(&mut self) {
        crate::metrics::get()
            .recording_queued_bytes
            .dec_by(self.cost as i64);
    }
}

/// Records taken for a write, the position they start at, and the context to seal them.
type Batch = (VecDeque<Rec>, u64, Sealing);

/// What a write job needs besides the records.
struct Sealing {
    ctx: Sealer,
    digest: BlockHash,
    out: Appender,
}

fn lock(m: &Mutex<Pending>) -> std::sync::MutexGuard<'_, Pending> {
    // A job that panicked left whole state behind (every change is a single assignment).
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Pending {
    /// Takes a record.
    fn push(&mut self, rec: Rec) {
        self.data_bytes += rec.data.len() as u64;
        let cost = rec.cost();
        self.cost += cost;
        crate::metrics::get().recording_queued_bytes.inc_by(cost as i64);
        self.records.push_back(rec);
    }

    /// The pending records with the context to seal them, for a write; `None` if nothing is
    /// pending (or a job has the context).
    fn take(&mut self) -> Option<Batch> {
        if self.records.is_empty() {
            return None;
        }
        let sealing = self.sealing.take()?;
        let records = std::mem::replace(&mut self.records, std::mem::take(&mut self.spare));
        crate::metrics::get()
            .recording_queued_bytes
            .dec_by(std::mem::take(&mut self.cost) as i64);
        let start = std::mem::replace(&mut self.batch_start, self.data_bytes);
        Some((records, start, sealing))
    }
}

/// What one write job writes before it gives its pool thread to the jobs queued behind it
/// and queues again. A bulk transfer keeps its recording's records pending all the time, so
/// its job would otherwise keep a thread for the transfer's length, and four such transfers
/// would hold every other recording (and, fail-closed, its session) until one ended.
const TURN: u64 = 1 << 20;

impl Shared {
    /// Seals and writes what is pending until nothing is, or for one [`TURN`]; runs on the
    /// I/O pool.
    fn drain(self: &Arc<Self>) {
        let mut turn = 0;
        loop {
            if turn >= TURN {
                // Behind whatever else waits now; `busy` stays set for it.
                return self.spawn_job();
            }
            let taken = {
                let mut p = lock(&self.pending);
                match p.take() {
                    Some(t) => t,
                    None => {
                        p.busy = false;
                        let arm = !std::mem::replace(&mut p.timer, true);
                        drop(p);
                        if arm {
                            self.activity.notify_one();
                        }
                        // Wakes a writer task waiting for the job to end.
                        self.progress.send_modify(|_| {});
                        return;
                    }
                }
            };
            let (mut records, start, mut sealing) = taken;
            let mut written = (0, 0);
            let r = write_blocks(&mut sealing, self, &records, start, &mut written);
            records.clear();
            let mut p = lock(&self.pending);
            p.sealing = Some(sealing);
            // Keep the emptied list's room for the next batch.
            p.spare = records;
            p.blocks += written.0;
            drop(p);
            crate::metrics::get().recording_blocks.inc_by(written.0);
            crate::metrics::get().recording_bytes.inc_by(written.1);
            turn += written.1;
            if let Err(e) = r {
                self.fail(e);
                return;
            }
        }
    }

    /// Starts a job for what is pending, unless one runs (it takes it) or nothing is.
    fn write_now(self: &Arc<Self>) {
        let mut p = lock(&self.pending);
        let start = !p.busy && p.sealing.is_some() && !p.records.is_empty();
        if start {
            p.busy = true;
        }
        drop(p);
        if start {
            self.spawn_job();
        }
    }

    /// Queues this recording's write job on the pool (`busy` is set).
    fn spawn_job(self: &Arc<Self>) {
        let shared = self.clone();
        let job = move || {
            // The pool survives a panicking job, but this recording's job would then
            // never end: the relay and the writer task would wait for it for good.
            let run = std::panic::AssertUnwindSafe(|| shared.drain());
            if std::panic::catch_unwind(run).is_err() {
                shared.fail(RecordingError::Stopped("its write job panicked".into()));
            }
        };
        if let Err(e) = disk::spawn(job) {
            self.fail(e.into());
        }
    }

    /// Stops the recording: no job runs and no record is taken any more; the relay and
    /// the writer task learn it from the published progress. The first error is kept.
    fn fail(&self, e: RecordingError) {
        let mut p = lock(&self.pending);
        p.error.get_or_insert(e);
        p.closed = true;
        p.busy = false;
        // They will not be written: the relay's buffers they hold go back now, not when the
        // session ends.
        p.records = VecDeque::new();
        if let Some(s) = &mut p.sealing {
            s.out.discard();
        }
        crate::metrics::get()
            .recording_queued_bytes
            .dec_by(std::mem::take(&mut p.cost) as i64);
        drop(p);
        self.progress.send_modify(|g| g.stopped = true);
    }
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
        env: Vec<String>,
        signer: Option<Arc<SigningKey>>,
    ) -> Result<(Self, tokio::task::JoinHandle<Result<Summary, RecordingError>>), RecordingError> {
        let path = dir.join(format!("{name}.log"));
        let io = |source| RecordingError::Io {
            path: path.clone(),
            source,
        };
        // Private: the names and sizes of logs say who worked when (an existing directory
        // keeps the mode its operator gave it).
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io)?;
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
        let (ctx, enc) = Sealer::new(key).inspect_err(|_| {
            let _ = std::fs::remove_file(&fresh);
        })?;
        let header = Header {
            started_at: crate::audit::unix_secs(),
            data_size: 0,
            encapsulated_key: enc.iter().map(|b| format!("{b:02x}")).collect(),
            pty,
            exit_data: None,
            request,
            env,
            trailer: None,
        };
        let placed = format::encode_header(&header)
            .map_err(RecordingError::from)
            .and_then(|h| {
                (&file).write_all(&h).map_err(io)?;
                // A link, not a rename: an existing log of that name is never replaced.
                std::fs::hard_link(&fresh, &path).map_err(io)?;
                Ok(h.len())
            });
        let _ = std::fs::remove_file(&fresh);
        let header_len = placed?;
        let (progress, progress_rx) = watch::channel(Progress::default());
        let out = Appender::new(header_len as u64);
        let shared = Arc::new(Shared {
            file,
            path: path.clone(),
            start: Instant::now(),
            activity: Notify::new(),
            pending: Mutex::new(Pending {
                records: VecDeque::new(),
                cost: 0,
                data_bytes: 0,
                batch_start: 0,
                spare: VecDeque::new(),
                busy: false,
                sealing: Some(Sealing {
                    ctx,
                    digest: BlockHash::current(),
                    out,
                }),
                blocks: 0,
                error: None,
                closed: false,
                seen: 0,
                timer: false,
            }),
            progress,
        });
        let w = Writer {
            shared: shared.clone(),
            header,
            signer,
            closing: open().closing.subscribe(),
            _counted: Counted::new(),
        };
        let (tx, rx) = mpsc::channel(4);
        let task = tokio::spawn(w.run(rx));
        Ok((
            Self {
                shared,
                tx,
                path,
                failed: Default::default(),
                progress: progress_rx,
            },
            task,
        ))
    }

    /// Records bytes that crossed the relay; waits when the writer is behind.
    pub async fn record(&self, source: u8, code: u32, data: Bytes) -> Result<(), RecordingError> {
        loop {
            match self.try_record(source, code, &data) {
                Ok(_) => return Ok(()),
                Err(TryRecord::Full) => self.ready().await,
                Err(TryRecord::Stopped) => return Err(RecordingError::Stopped("the log is closed".into())),
            }
        }
    }

    /// Records bytes without waiting (a reference to them is kept): `Full` when
    /// the writer is behind (the relay holds the bytes, and the window they came with,
    /// until [`Recorder::ready`]). Returns the record's position: it is on disk once
    /// [`Recorder::written`] reaches it.
    pub fn try_record(&self, source: u8, code: u32, data: &Bytes) -> Result<u64, TryRecord> {
        let us = self.shared.start.elapsed().as_micros() as u64;
        let mut p = lock(&self.shared.pending);
        if p.closed {
            return Err(TryRecord::Stopped);
        }
        if p.cost >= PENDING {
            return Err(TryRecord::Full);
        }
        p.push(Rec {
            source,
            code,
            us,
            data: data.clone(),
        });
        let position = p.data_bytes;
        // A job once enough is pending; before that, when the relay waits for the file
        // ([`Recorder::written_past`]): one pool hand-off for all the records of a relay's
        // wake-up instead of one per record.
        let kick = p.cost >= KICK;
        drop(p);
        if kick {
            self.shared.write_now();
        }
        Ok(position)
    }

    /// The position the file holds: every record up to it is in blocks written whole.
    pub fn written(&self) -> u64 {
        self.progress.borrow().written
    }

    /// Resolves once the file holds `position`, or the recording stopped (see
    /// [`Recorder::stopped`]). Has what is pending written now.
    pub fn written_past(&self, position: u64) -> impl std::future::Future<Output = ()> + Send + 'static {
        self.shared.write_now();
        let mut rx = self.progress.clone();
        async move {
            let _ = rx.wait_for(|g| g.written >= position || g.stopped).await;
        }
    }

    /// The recording takes no more records (a write failed, or the log was closed).
    pub fn stopped(&self) -> bool {
        self.progress.borrow().stopped
    }

    /// Resolves once the writer made progress (it wrote a block, or stopped): there is room
    /// for records again.
    pub fn ready(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        self.shared.write_now();
        let mut rx = self.progress.clone();
        rx.borrow_and_update();
        let shared = self.shared.clone();
        async move {
            loop {
                {
                    let p = lock(&shared.pending);
                    if p.closed || p.cost < PENDING {
                        return;
                    }
                }
                if rx.changed().await.is_err() {
                    return;
                }
            }
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

/// The task that closes a recording: it takes the exit data, shrinks an idle recording's
/// buffers, and once the session ended (or the daemon stops) writes what is pending, the
/// header with the exit data and the trailer.
struct Writer {
    shared: Arc<Shared>,
    header: Header,
    signer: Option<Arc<SigningKey>>,
    /// Set when the daemon stops: close now.
    closing: watch::Receiver<bool>,
    _counted: Counted,
}

impl Writer {
    fn io(&self) -> impl Fn(std::io::Error) -> RecordingError + Send + 'static {
        let path = self.shared.path.clone();
        move |source| RecordingError::Io {
            path: path.clone(),
            source,
        }
    }

    async fn run(mut self, mut rx: mpsc::Receiver<Item>) -> Result<Summary, RecordingError> {
        let mut stopped = self.shared.progress.subscribe();
        let mut armed = false;
        let shared = self.shared.clone();
        loop {
            let item = tokio::select! {
                // First, so that a busy recording also closes when told to.
                biased;
                _ = self.closing.wait_for(|c| *c) => None,
                _ = stopped.wait_for(|g| g.stopped) => None,
                item = rx.recv() => item,
                // No timer while the recording is idle and small: 10 000 idle sessions
                // must not wake twice a second each.
                _ = shared.activity.notified(), if !armed => {
                    armed = true;
                    continue;
                }
                _ = tokio::time::sleep(IDLE_AFTER), if armed => {
                    armed = !shrink_if_idle(&shared);
                    continue;
                }
            };
            match item {
                Some(Item::Exit(e)) => self.header.exit_data = Some(e),
                None => break,
            }
        }
        // No record is taken from here on; what is pending still goes in.
        lock(&self.shared.pending).closed = true;
        self.shared.progress.send_modify(|g| g.stopped = true);
        while let Ok(Item::Exit(e)) = rx.try_recv() {
            self.header.exit_data = Some(e);
        }
        // What is pending goes in through a pool job, as during the session; wait until
        // none runs and nothing is left.
        let mut progress = self.shared.progress.subscribe();
        let (sealing, blocks, data_bytes) = loop {
            {
                let mut p = lock(&self.shared.pending);
                if let Some(e) = p.error.take() {
                    return Err(e);
                }
                if !p.busy && p.records.is_empty() {
                    let sealing = p
                        .sealing
                        .take()
                        .ok_or_else(|| RecordingError::Stopped("an earlier write did not return".into()))?;
                    break (sealing, p.blocks, p.data_bytes);
                }
            }
            self.shared.write_now();
            if progress.changed().await.is_err() {
                return Err(RecordingError::Stopped("the recording's state is gone".into()));
            }
        };
        if self.header.exit_data.is_none() && *self.closing.borrow() {
            self.header.exit_data = Some(ExitData {
                timestamp: crate::audit::unix_secs(),
                error_msg: Some("the gateway stopped during the session".into()),
                ..Default::default()
            });
        }
        self.close(sealing, blocks, data_bytes).await
    }

    /// Patches the header with the exit data and the trailer, and syncs the file.
    async fn close(
        mut self,
        sealing: Sealing,
        blocks: u64,
        data_bytes: u64,
    ) -> Result<Summary, RecordingError> {
        self.header.data_size = data_bytes;
        if self.header.exit_data.is_none() {
            self.header.exit_data = Some(ExitData {
                timestamp: crate::audit::unix_secs(),
                ..Default::default()
            });
        }
        let io = self.io();
        let (shared, signer) = (self.shared.clone(), self.signer.clone());
        // A stopping daemon syncs all its logs at once (`close_all`).
        let sync = !*self.closing.borrow();
        // What is signed is what is written: the header as cut to fit.
        let mut header = format::fitted(&self.header);
        let Sealing { digest, mut out, .. } = sealing;
        let trailer = disk::run(move || -> Result<format::Trailer, RecordingError> {
            // Everything is written already.
            out.flush(&shared.file).map_err(&io)?;
            let d = digest.finish();
            header.trailer = Some(trailer::make(&header, blocks, &d, signer.as_deref())?);
            shared
                .file
                .write_all_at(&format::encode_header(&header)?, 0)
                .map_err(&io)?;
            if sync {
                shared.file.sync_all().map_err(&io)?;
            }
            Ok(header.trailer.take().unwrap_or_default())
        })
        .await??;
        Ok(Summary {
            path: self.shared.path.clone(),
            blocks,
            data_bytes,
            signed: trailer.signature.is_some(),
            digest: trailer.digest,
        })
    }
}

/// Gives back the buffers of a recording that took no record since the last look;
/// returns whether it did (the timer is then disarmed until the next job).
fn shrink_if_idle(shared: &Shared) -> bool {
    let mut p = lock(&shared.pending);
    let idle = p.data_bytes == p.seen && !p.busy && p.records.is_empty();
    if idle {
        p.records.shrink_to(0);
        p.spare.shrink_to(0);
        if let Some(s) = &mut p.sealing {
            s.out.shrink();
        }
        p.timer = false;
    }
    p.seen = p.data_bytes;
    idle
}

/// Seals the records into blocks — each its length, its records encrypted, its tag — in
/// the log's staging buffer, adds each to the digest, and has the file take them
/// ([`Appender`]: whole blocks only, so a killed daemon leaves whole blocks). The position
/// the file holds is published every [`PUBLISH`] bytes and after the last block, since each
/// publication may wake the relay; so the relay passes on the first blocks' bytes while the
/// next ones are sealed. `start`: the position the first record starts at. `written`
/// counts the blocks and bytes written (also those before a failure).
fn write_blocks(
    sealing: &mut Sealing,
    shared: &Shared,
    records: &VecDeque<Rec>,
    start: u64,
    written: &mut (u64, u64),
) -> Result<(), RecordingError> {
    let file = &shared.file;
    let io = |source| RecordingError::Io {
        path: shared.path.clone(),
        source,
    };
    let (mut position, mut staged, mut unpublished) = (start, (0, 0), 0);
    let mut i = 0;
    while i < records.len() {
        // A block takes records until its plaintext reaches `BLOCK`.
        let mut plain = 0;
        let mut end = i;
        while end < records.len() && plain < BLOCK {
            plain += format::record_len(records[end].data.len());
            end += 1;
        }
        let len = u32::try_from(plain + TAG_LEN)
            .map_err(|_| RecordingError::Stopped("a block over 4 GiB".into()))?;
        let total = LEN + plain + TAG_LEN;
        let stage = sealing.out.stage(file, total).map_err(io)?;
        let at = stage.len();
        stage.extend_from_slice(&len.to_be_bytes());
        for r in records.range(i..end) {
            format::push_record(stage, r.source, r.code, r.us, &r.data);
            position += r.data.len() as u64;
        }
        let tag = sealing.ctx.seal_in_place(&mut stage[at + LEN..])?;
        stage.extend_from_slice(&tag);
        sealing.digest.update(&stage[at..]);
        staged.0 += 1;
        staged.1 += total as u64;
        unpublished += total;
        i = end;
        if unpublished >= PUBLISH || i == records.len() {
            sealing.out.flush(file).map_err(io)?;
            *written = staged;
            shared.progress.send_modify(|g| g.written = position);
            unpublished = 0;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::Barrier;

    use super::*;
    use crate::recording::{format::CODE_DATA, keys, reader};

    /// With every pool thread busy elsewhere, the relay's records pile up only to the
    /// bound; then the pool writes them in order, the published position reaches each, and
    /// the log holds exactly what was taken.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn pending_records_stay_under_the_bound_and_reach_the_file_in_order() {
        let d = std::env::temp_dir().join(format!("portcullis-writer-bound-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        keys::generate(&d).unwrap();
        let pk = keys::load_public(&d.join("sshkey.pub")).unwrap();
        let (r, task) =
            Recorder::start(&d, "s1", &pk, None, Some("exec x".into()), Vec::new(), None).unwrap();
        // Hold every pool thread.
        let gate = Arc::new(Barrier::new(disk::THREADS + 1));
        for _ in 0..disk::THREADS {
            let g = gate.clone();
            disk::spawn(move || {
                g.wait();
            })
            .unwrap();
        }
        let chunk = Bytes::from(vec![5u8; 32 * 1024]);
        let mut taken = 0u64;
        let mut last = 0;
        loop {
            match r.try_record(SOURCE, CODE_DATA, &chunk) {
                Ok(position) => {
                    taken += chunk.len() as u64;
                    assert_eq!(position, taken);
                    last = position;
                }
                Err(TryRecord::Full) => break,
                Err(TryRecord::Stopped) => panic!("stopped"),
            }
            assert!(taken <= (PENDING + chunk.len()) as u64, "{taken} bytes taken");
        }
        assert!(
            taken >= PENDING as u64 - chunk.len() as u64,
            "only {taken} bytes taken"
        );
        assert_eq!(r.written(), 0, "nothing can be written while the pool is held");
        let ready = r.ready();
        gate.wait();
        tokio::time::timeout(Duration::from_secs(10), ready)
            .await
            .unwrap();
        tokio::time::timeout(Duration::from_secs(10), r.written_past(last))
            .await
            .unwrap();
        assert_eq!(r.written(), last);
        assert!(!r.stopped());
        let path = r.path.clone();
        drop(r);
        let sum = task.await.unwrap().unwrap();
        assert_eq!(sum.data_bytes, taken);
        let sk = keys::load_private(&d.join("sshkey")).unwrap();
        let out = reader::decrypt(&path, &sk).unwrap();
        assert!(out.damage.is_none());
        assert_eq!(out.records.len() as u64, taken / chunk.len() as u64);
        assert!(out.records.iter().all(|rec| rec.data == chunk));
        std::fs::remove_dir_all(d).unwrap();
    }

    const SOURCE: u8 = 1;
}
