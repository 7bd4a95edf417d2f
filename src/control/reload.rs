//! Live reload, in one pipeline: read -> parse -> validate -> build ->
//! compare -> `ArcSwap::store` -> metrics -> one log line. Triggered by
//! notify events on the config file's directory (debounced) and by SIGHUP.
//! An invalid file changes nothing: the old snapshot keeps serving. Also
//! the remap report behind `stickylb diff`.

use crate::config::{self, Config};
use crate::http::tls;
use crate::observe::metrics::Metrics;
use crate::ring::Ring;
use crate::routing::snapshot::{ring_of, Router, Snapshot};
use notify::{EventKind, RecursiveMode, Watcher};
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, watch};

/// Quiet time after the last file event before reloading: one editor save
/// (write temp, rename, chmod) is one reload.
const DEBOUNCE: Duration = Duration::from_millis(20);
/// Upper bound on the wait for quiet, so a busy directory still reloads.
const DEBOUNCE_MAX: Duration = Duration::from_millis(250);

/// Mixed into the hash of a read error, so it never equals a content hash.
const READ_FAILURE: u64 = 0x5eed_f00d_dead_beef;

/// What one reload attempt did.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The file's bytes are those already applied (a file event without a
    /// change); nothing was rebuilt.
    Unchanged,
    /// A new snapshot is live.
    Applied {
        generation: u64,
        /// Exact fraction of the keyspace whose owner changed (0 if routing did not change).
        moved: f64,
    },
    /// The file was rejected; the old snapshot keeps serving.
    Failed(String),
}

/// Reload attempts so far and the last one's outcome, for whoever waits on them.
#[derive(Debug, Clone, PartialEq)]
pub struct Status {
    pub attempts: u64,
    pub last: Outcome,
}

pub struct Reloader {
    path: PathBuf,
    router: Arc<Router>,
    metrics: Arc<Metrics>,
    /// The settings read once at start, as they were then (see `restart_only`).
    restart_only: [(&'static str, String); 6],
    tls_listener: Option<SocketAddr>,
    /// Hash of the file bytes (and certificate files) last applied.
    applied: AtomicU64,
    /// Hash of the inputs last looked at, applied or rejected: the same
    /// inputs are never read, logged or counted twice (a rejected file is
    /// reported once however long it stays on disk).
    seen: AtomicU64,
    /// Whether the last attempt was rejected (so the next success says so).
    rejected: AtomicBool,
    /// The certificate files of the config last applied.
    tls_files: Mutex<Option<config::TlsFiles>>,
    /// The digest of the leaf certificate serving (0: none).
    certificate: AtomicU64,
    /// Serialises reloads (watcher and SIGHUP); never touched by requests.
    busy: Mutex<()>,
    status: watch::Sender<Status>,
}

/// Reads and validates the config (and its certificate files), then builds
/// the first snapshot and publishes it in the metrics.
pub fn load_initial(path: &Path, metrics: &Metrics) -> Result<(Config, Snapshot), String> {
    let text = read(path)?;
    let config =
        config::from_toml_str(&text, &path.display().to_string()).map_err(|e| e.to_string())?;
    for w in &config.warnings {
        tracing::warn!("{w}");
    }
    let tls = load_tls(path, &config)?;
    if let Some(t) = &tls {
        certificate_loaded(metrics, &t.leaf, "serving");
    }
    let snap = Snapshot::build(&config, None, metrics)
        .map_err(|e| format!("{}: {e}", path.display()))?
        .with_tls(tls.map(|t| t.server));
    publish(metrics, &snap, None);
    Ok((config, snap))
}

/// The TLS server config of `config` (read from `config_path`), if it has
/// `listen.tls`; relative certificate paths start at the file's directory.
pub fn load_tls(config_path: &Path, config: &Config) -> Result<Option<tls::Loaded>, String> {
    config
        .listen
        .tls
        .as_ref()
        .map(|files| {
            tls::load_which(&tls::resolve(files, tls::base_dir(config_path))).map_err(
                |(which, e)| {
                    // Placed at the setting that names the file.
                    let at = config.listen.tls_at.map(|[cert, key]| match which {
                        tls::Which::Cert => cert,
                        tls::Which::Key => key,
                    });
                    match at {
                        Some((line, column)) => {
                            format!("{}:{line}:{column}: {e}", config_path.display())
                        }
                        None => e,
                    }
                },
            )
        })
        .transpose()
}

/// Logs the certificate now served and publishes its expiry.
fn certificate_loaded(metrics: &Metrics, leaf: &tls::Leaf, how: &str) {
    tracing::info!(
        "listen.tls: {how} certificate {}, valid until {}",
        leaf.subject,
        leaf.expires()
    );
    metrics.set_certificate_expiry(leaf.not_after);
}

fn read(path: &Path) -> Result<String, String> {
    crate::files::read_config(path)
}

/// A hash of the config text and the bytes of the certificate files it
/// names, so a renewed certificate in the watched directory is a change.
fn input_hash(config_path: &Path, text: &str, tls: Option<&config::TlsFiles>) -> u64 {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    h.update(text.as_bytes());
    if let Some(files) = tls {
        let files = tls::resolve(files, tls::base_dir(config_path));
        for file in [&files.cert, &files.key] {
            // Unreadable now: hash nothing; the reload itself reports it.
            h.update(
                &crate::files::read_bounded(file, crate::files::MAX_TLS_BYTES).unwrap_or_default(),
            );
        }
    }
    h.digest()
}

impl Reloader {
    /// `config` is the one the running proxy started with (from `load_initial`).
    pub fn new(path: &Path, config: &Config, router: Arc<Router>, metrics: Arc<Metrics>) -> Self {
        let tls_files = config.listen.tls.clone();
        let applied = read(path)
            .map(|t| input_hash(path, &t, tls_files.as_ref()))
            .unwrap_or(0);
        let (status, _) = watch::channel(Status {
            attempts: 0,
            last: Outcome::Unchanged,
        });
        Reloader {
            path: std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf()),
            router,
            metrics,
            restart_only: restart_only(config),
            tls_listener: config.listen.tls_listener(),
            applied: AtomicU64::new(applied),
            seen: AtomicU64::new(applied),
            rejected: AtomicBool::new(false),
            tls_files: Mutex::new(tls_files),
            // The certificate load_initial read (read again: a few KiB, once).
            certificate: AtomicU64::new(
                load_tls(path, config)
                    .ok()
                    .flatten()
                    .map_or(0, |t| t.leaf.digest),
            ),
            busy: Mutex::new(()),
            status,
        }
    }

    /// Follows reload attempts (tests and tools wait on this instead of sleeping).
    pub fn subscribe(&self) -> watch::Receiver<Status> {
        self.status.subscribe()
    }

    /// Runs the pipeline once. Without `force`, a file whose bytes were
    /// already applied is left alone.
    pub fn reload(&self, force: bool) -> Outcome {
        let _one_at_a_time = self.busy.lock().unwrap_or_else(|p| p.into_inner());
        let outcome = self.try_reload(force);
        match &outcome {
            Outcome::Failed(e) => {
                self.metrics.reload_failures.inc();
                self.metrics.last_reload_successful.set(0);
                self.rejected.store(true, Ordering::Relaxed);
                tracing::error!("config reload rejected, the current config keeps serving: {e}");
            }
            Outcome::Unchanged => return outcome,
            Outcome::Applied { .. } => {
                if self.rejected.swap(false, Ordering::Relaxed) {
                    tracing::info!(
                        "{}: the rejected config was replaced; the file on disk is serving again",
                        self.path.display()
                    );
                }
            }
        }
        self.status.send_modify(|s| {
            s.attempts += 1;
            s.last = outcome.clone();
        });
        outcome
    }

    fn try_reload(&self, force: bool) -> Outcome {
        let text = match read(&self.path) {
            Ok(t) => t,
            Err(e) => {
                // Unreadable the same way as last time: already told.
                let failure = xxhash_rust::xxh3::xxh3_64(e.as_bytes()) ^ READ_FAILURE;
                if !force && failure == self.seen.load(Ordering::Relaxed) {
                    return Outcome::Unchanged;
                }
                self.seen.store(failure, Ordering::Relaxed);
                return Outcome::Failed(e);
            }
        };
        let applied_tls = self
            .tls_files
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let inputs = input_hash(&self.path, &text, applied_tls.as_ref());
        if !force && inputs == self.seen.load(Ordering::Relaxed) {
            return Outcome::Unchanged;
        }
        self.seen.store(inputs, Ordering::Relaxed);
        let origin = self.path.display().to_string();
        let config = match config::from_toml_str(&text, &origin) {
            Ok(c) => c,
            Err(e) => return Outcome::Failed(e.to_string()),
        };
        let hash = input_hash(&self.path, &text, config.listen.tls.as_ref());
        let tls = match load_tls(&self.path, &config) {
            Ok(t) => t,
            Err(e) => return Outcome::Failed(e),
        };
        if self.tls_listener.is_some() != tls.is_some() {
            return Outcome::Failed(format!(
                "{origin}: adding or removing listen.tls needs a restart"
            ));
        }
        for w in &config.warnings {
            tracing::warn!("{w}");
        }
        let old = self.router.load_full();
        let snap = match Snapshot::build(&config, Some(&old), &self.metrics) {
            Ok(s) => s.with_tls(tls.as_ref().map(|t| t.server.clone())),
            Err(e) => return Outcome::Failed(format!("{origin}: {e}")),
        };
        for ((what, now), (_, configured)) in self.restart_only.iter().zip(restart_only(&config)) {
            if *now != configured {
                tracing::warn!(
                    "{what} changed from {now} to {configured}: restart stickylb to apply it; the rest of the file is applied"
                );
            }
        }
        let routing_changed = snap.generation != old.generation;
        let moved = if routing_changed {
            // The configured rings: what the change moves once any slow
            // start is over (what `stickylb diff` says).
            old.full_ring.moved_fraction(&snap.full_ring)
        } else {
            0.0
        };
        let line = summary(&old.ring, &snap.ring);
        // Whether a backend this change adds is ramping in (slow start).
        let snap_ramping = snap.backends.iter().enumerate().any(|(i, b)| {
            snap.ring.ramp(i) < 1.0
                && !old
                    .backends
                    .iter()
                    .any(|o| Arc::ptr_eq(&o.health, &b.health))
        });
        let generation = snap.generation;
        publish(&self.metrics, &snap, Some((&old, moved)));
        self.router.store(snap);
        self.applied.store(hash, Ordering::Relaxed);
        // As the next look will compute it (with these certificate paths).
        self.seen.store(hash, Ordering::Relaxed);
        *self.tls_files.lock().unwrap_or_else(|p| p.into_inner()) = config.listen.tls.clone();
        if let Some(t) = &tls {
            if self.certificate.swap(t.leaf.digest, Ordering::Relaxed) != t.leaf.digest {
                certificate_loaded(&self.metrics, &t.leaf, "new");
            }
        }
        if routing_changed {
            let gradually = match config.routing.slow_start {
                Some(w) if snap_ramping => format!(" (slow start: moving over {w:?})"),
                _ => String::new(),
            };
            tracing::info!(
                "generation {generation}: {line}, {:.1}% of keyspace changed owner{gradually}",
                moved * 100.0
            );
        } else {
            tracing::info!("generation {generation}: config reloaded, routing unchanged");
        }
        Outcome::Applied { generation, moved }
    }

    /// The files whose changes are changes of the config, and so the only
    /// ones whose events start a reload: the config file, the symlink
    /// chain leading to it, and the certificate and key it names (with
    /// theirs), wherever they are.
    fn watch_set(&self) -> WatchSet {
        let mut files = Vec::new();
        symlink_chain(&self.path, &mut files);
        let tls = self
            .tls_files
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if let Some(tls) = tls {
            let tls = tls::resolve(&tls, tls::base_dir(&self.path));
            for f in [&tls.cert, &tls.key] {
                symlink_chain(
                    &std::path::absolute(f).unwrap_or_else(|_| f.clone()),
                    &mut files,
                );
            }
        }
        WatchSet::new(files)
    }

    /// Watches the directories of the config's files (and their parents,
    /// to see a directory removed and made again) and listens for SIGHUP
    /// until `shutdown` resolves. Events on other files in those
    /// directories are ignored. On Linux a file counts as changed when its
    /// writer closes it (or it is renamed, created or removed), so a file
    /// still being written is never read.
    ///
    /// The watch and the signal handler are in place when this returns, so
    /// a change made after it is never missed; the loop runs in a task.
    pub fn start(
        self: Arc<Self>,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> tokio::task::JoinHandle<()> {
        let (tx, rx) = mpsc::unbounded_channel::<(FileEvent, Vec<PathBuf>)>();
        let set = self.watch_set();
        let filter = Arc::new(Mutex::new(set.clone()));
        let watcher = {
            let filter = filter.clone();
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| match event {
                // The kernel's queue overflowed: anything may have changed.
                Ok(e) if e.need_rescan() => {
                    tracing::warn!("config watcher: events were lost; looking at the files again");
                    tx.send((FileEvent::Done, Vec::new())).ok();
                }
                Ok(e) => {
                    let Some(what) = file_event(&e.kind) else {
                        return;
                    };
                    let set = filter.lock().unwrap_or_else(|p| p.into_inner());
                    if e.paths.iter().any(|p| set.concerns(p)) {
                        // The receiver is gone only when the reloader stopped.
                        tx.send((what, e.paths)).ok();
                    }
                }
                Err(e) => {
                    tracing::warn!("config watcher: {e}");
                    tx.send((FileEvent::Done, Vec::new())).ok();
                }
            })
        };
        let watches = match watcher {
            Ok(w) => {
                let mut watches = Watches {
                    watcher: w,
                    dirs: Vec::new(),
                };
                watches.sync(&set);
                Some(watches)
            }
            Err(e) => {
                tracing::error!("cannot watch the config files: {e}; reload with SIGHUP");
                None
            }
        };
        let hangup = hangup_signal();
        tokio::spawn(self.run(watches, filter, rx, hangup, shutdown))
    }

    async fn run(
        self: Arc<Self>,
        mut watches: Option<Watches>,
        filter: Arc<Mutex<WatchSet>>,
        mut rx: mpsc::UnboundedReceiver<(FileEvent, Vec<PathBuf>)>,
        mut hangup: Hangup,
        shutdown: impl Future<Output = ()>,
    ) {
        tokio::pin!(shutdown);
        // The config's files a writer has written to and not yet closed:
        // nothing is read while one is open.
        let mut writing = Writing::default();
        loop {
            let force = tokio::select! {
                () = &mut shutdown => return,
                event = rx.recv() => {
                    let Some(event) = event else { return };
                    writing.note(event);
                    debounce(&mut rx, &mut writing).await;
                    if writing.any() {
                        continue;
                    }
                    false
                }
                () = next_hangup(&mut hangup) => {
                    tracing::info!("SIGHUP received: reloading {}", self.path.display());
                    true
                }
            };
            let me = self.clone();
            if let Err(e) = tokio::task::spawn_blocking(move || me.reload(force)).await {
                tracing::error!("config reload task failed: {e}");
            }
            // The files may have moved (a symlink swapped, a directory made
            // again, new certificate paths): watch what the config is now.
            let set = self.watch_set();
            if let Some(w) = watches.as_mut() {
                w.sync(&set);
            }
            *filter.lock().unwrap_or_else(|p| p.into_inner()) = set;
            // A change made while the watches were being renewed has no
            // event: look once more (the same inputs are not read twice).
            let me = self.clone();
            if let Err(e) = tokio::task::spawn_blocking(move || me.reload(false)).await {
                tracing::error!("config reload task failed: {e}");
            }
        }
    }
}

/// The settings that only a restart applies (listeners are bound, and
/// connection slots sized, once), in one place: a reload that changes one
/// says so and applies the rest. Adding or removing TLS is refused outright.
fn restart_only(config: &Config) -> [(&'static str, String); 6] {
    let show = |a: Option<SocketAddr>| a.map_or("none".to_string(), |a| a.to_string());
    [
        ("listen.address", config.listen.address.to_string()),
        ("listen.tls_address", show(config.listen.tls_listener())),
        ("admin.address", config.admin.address.to_string()),
        (
            "limits.max_connections",
            config.limits.max_connections.to_string(),
        ),
        (
            "listen.proxy_protocol",
            config.listen.proxy_protocol.to_string(),
        ),
        ("listen.backlog", config.listen.backlog.to_string()),
    ]
}

/// What a file event says about the config's files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FileEvent {
    /// A change is complete: a writer closed the file, or it was renamed,
    /// created, removed or had its attributes changed.
    Done,
    /// A writer is writing (Linux): wait for its close.
    Writing,
}

/// The meaning of a file event, if it has one. On Linux a write counts
/// when the writer closes the file, never while it writes.
fn file_event(kind: &EventKind) -> Option<FileEvent> {
    use notify::event::{AccessKind, AccessMode, ModifyKind};
    match kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => Some(FileEvent::Done),
        EventKind::Access(_) => None,
        EventKind::Modify(ModifyKind::Data(_)) if cfg!(target_os = "linux") => {
            Some(FileEvent::Writing)
        }
        _ => Some(FileEvent::Done),
    }
}

/// Adds `path` and the symlink chain it leads through: each link, and for
/// a relative target the entry it starts with (Kubernetes' `..data`),
/// whose swap changes what the path reads. At most 16 links.
fn symlink_chain(path: &Path, out: &mut Vec<PathBuf>) {
    let mut p = path.to_path_buf();
    for _ in 0..16 {
        out.push(p.clone());
        let Ok(target) = std::fs::read_link(&p) else {
            return;
        };
        // The link's own directory without `..` or links in it, so that a
        // relative target such as `../m/x.toml` names the real place.
        let dir = p
            .parent()
            .map_or_else(|| PathBuf::from("/"), Path::to_path_buf);
        let dir = std::fs::canonicalize(&dir).unwrap_or(dir);
        if target.is_relative() {
            if let Some(first) = target.components().next() {
                out.push(dir.join(first));
            }
        }
        p = dir.join(target);
    }
}

/// The config's files, and the directories holding them.
#[derive(Debug, Clone, Default)]
struct WatchSet {
    files: Vec<PathBuf>,
    /// Each file's directory, and that directory's parent (where its own
    /// removal and return show).
    dirs: Vec<PathBuf>,
}

impl WatchSet {
    fn new(mut files: Vec<PathBuf>) -> Self {
        files.sort();
        files.dedup();
        let mut dirs: Vec<PathBuf> = files
            .iter()
            .filter_map(|f| f.parent())
            .flat_map(|d| [Some(d), d.parent()])
            .flatten()
            .map(Path::to_path_buf)
            .collect();
        dirs.sort();
        dirs.dedup();
        WatchSet { files, dirs }
    }

    /// Whether an event on `path` concerns the config: one of its files,
    /// or a directory of theirs appearing or going.
    fn concerns(&self, path: &Path) -> bool {
        self.files.iter().any(|f| f.starts_with(path))
    }
}

/// The live notify watches, one per directory of a `WatchSet`.
struct Watches {
    watcher: notify::RecommendedWatcher,
    dirs: Vec<PathBuf>,
}

impl Watches {
    /// Watches exactly the directories of `set` that exist now (watching
    /// again those that may have been replaced); says when one is lost.
    fn sync(&mut self, set: &WatchSet) {
        for d in std::mem::take(&mut self.dirs) {
            // Gone with its directory already, or replaced: watched anew below.
            let _ = self.watcher.unwatch(&d);
        }
        for d in &set.dirs {
            // A directory that is gone is watched from its nearest
            // ancestor that exists, where its return shows.
            let Some(existing) = d.ancestors().find(|a| a.is_dir()) else {
                continue;
            };
            if self.dirs.iter().any(|w| w == existing) {
                continue;
            }
            match self.watcher.watch(existing, RecursiveMode::NonRecursive) {
                Ok(()) => self.dirs.push(existing.to_path_buf()),
                Err(e) => tracing::warn!(
                    "cannot watch {}: {e}; reload with SIGHUP",
                    existing.display()
                ),
            }
        }
    }
}

/// The config's files being written now (written to, not yet closed).
#[derive(Debug, Default)]
struct Writing(Vec<PathBuf>);

impl Writing {
    fn note(&mut self, (event, paths): (FileEvent, Vec<PathBuf>)) {
        for path in paths {
            self.0.retain(|p| *p != path);
            if event == FileEvent::Writing {
                self.0.push(path);
            }
        }
    }

    fn any(&self) -> bool {
        !self.0.is_empty()
    }
}

/// Waits until no event arrived for `DEBOUNCE`, or `DEBOUNCE_MAX` passed,
/// keeping `writing` up to date with the events seen meanwhile.
async fn debounce(
    rx: &mut mpsc::UnboundedReceiver<(FileEvent, Vec<PathBuf>)>,
    writing: &mut Writing,
) {
    let until = tokio::time::Instant::now() + DEBOUNCE_MAX;
    loop {
        tokio::select! {
            () = tokio::time::sleep(DEBOUNCE) => return,
            () = tokio::time::sleep_until(until) => return,
            event = rx.recv() => match event {
                Some(event) => writing.note(event),
                None => return,
            },
        }
    }
}

#[cfg(unix)]
type Hangup = Option<tokio::signal::unix::Signal>;
#[cfg(not(unix))]
type Hangup = ();

#[cfg(unix)]
fn hangup_signal() -> Hangup {
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::error!("cannot listen for SIGHUP: {e}");
            None
        }
    }
}

#[cfg(not(unix))]
fn hangup_signal() -> Hangup {}

#[cfg(unix)]
async fn next_hangup(h: &mut Hangup) {
    let received = match h {
        Some(s) => s.recv().await.is_some(),
        None => false,
    };
    if !received {
        // No signal stream (or it ended): never fires.
        std::future::pending::<()>().await;
    }
}

#[cfg(not(unix))]
async fn next_hangup(_: &mut Hangup) {
    std::future::pending().await
}

/// Publishes a live snapshot in the metrics; `previous` is the snapshot it
/// replaces and the exact fraction of keyspace that moved.
fn publish(metrics: &Metrics, snap: &Snapshot, previous: Option<(&Snapshot, f64)>) {
    if let Some((old, moved)) = previous {
        metrics.rebuilds.inc();
        for b in old.backends.iter() {
            if !snap.backends.iter().any(|n| n.name == b.name) {
                metrics.forget_backend(&b.name);
            }
        }
        if old.generation != snap.generation {
            metrics.last_remap_fraction.set(moved);
        }
    }
    publish_shares(snap);
    metrics.last_reload_successful.set(1);
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
    metrics
        .last_reload_success_time
        .set(now.map_or(0.0, |d| d.as_secs_f64()));
    metrics.set_ring(
        snap.generation,
        snap.ring.algorithm().name(),
        snap.ring.fingerprint(),
    );
}

/// Each backend's keyspace share and effective weight, as the live ring
/// routes (also at each slow-start step).
pub fn publish_shares(snap: &Snapshot) {
    for (i, (b, share)) in snap.backends.iter().zip(snap.ring.shares()).enumerate() {
        b.metrics.share.set(share);
        let weight = f64::from(b.weight.get()) * snap.ring.ramp(i);
        b.metrics.effective_weight.set(weight);
    }
}

/// `+backend-4, -backend-2, backend-1 weight 1->2`: what changed in the pool.
fn summary(old: &Ring, new: &Ring) -> String {
    let mut parts = Vec::new();
    for m in new.members() {
        match old.members().iter().find(|o| o.name == m.name) {
            None => parts.push(format!("+{}", m.name)),
            Some(o) if o.weight != m.weight => {
                parts.push(format!("{} weight {}->{}", m.name, o.weight, m.weight))
            }
            Some(_) => {}
        }
    }
    for o in old.members() {
        if !new.members().iter().any(|m| m.name == o.name) {
            parts.push(format!("-{}", o.name));
        }
    }
    if old.algorithm() != new.algorithm() || old.seed() != new.seed() {
        parts.push("ring parameters changed".into());
    }
    if parts.is_empty() {
        "pool unchanged".into()
    } else {
        parts.join(", ")
    }
}

/// A pool change previewed: the exact keyspace that changes owner, overall
/// and per backend.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Diff {
    pub moved_fraction: f64,
    pub backends: Vec<DiffRow>,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct DiffRow {
    pub name: String,
    pub before: f64,
    pub after: f64,
    pub gained: f64,
    pub lost: f64,
}

/// What applying `new` in place of `old` would move.
pub fn diff(old: &Config, new: &Config) -> Result<Diff, String> {
    let (a, b) = (ring_of(old)?, ring_of(new)?);
    let remap = a.remap(&b);
    let (sa, sb) = (a.shares(), b.shares());
    let mut rows: Vec<DiffRow> = Vec::new();
    for (i, m) in a.members().iter().enumerate() {
        rows.push(DiffRow {
            name: m.name.to_string(),
            before: sa[i],
            after: 0.0,
            gained: 0.0,
            lost: remap.lost[i],
        });
    }
    for (i, m) in b.members().iter().enumerate() {
        let row = match rows.iter_mut().position(|r| *r.name == *m.name) {
            Some(p) => &mut rows[p],
            None => {
                rows.push(DiffRow {
                    name: m.name.to_string(),
                    before: 0.0,
                    after: 0.0,
                    gained: 0.0,
                    lost: 0.0,
                });
                rows.last_mut().expect("just pushed")
            }
        };
        row.after = sb[i];
        row.gained = remap.gained[i];
    }
    Ok(Diff {
        moved_fraction: remap.moved,
        backends: rows,
    })
}

impl Diff {
    /// The table a person reads before saving a pool change.
    pub fn to_text(&self) -> String {
        let pct = |x: f64| format!("{:.2}%", x * 100.0);
        let width = self
            .backends
            .iter()
            .map(|r| r.name.len())
            .max()
            .unwrap_or(0)
            .max(7);
        let mut out = format!("keyspace moved: {}\n", pct(self.moved_fraction));
        out.push_str(&format!(
            "{:width$}  {:>8}  {:>8}  {:>8}  {:>8}\n",
            "backend", "before", "after", "gained", "lost"
        ));
        for r in &self.backends {
            out.push_str(&format!(
                "{:width$}  {:>8}  {:>8}  {:>8}  {:>8}\n",
                r.name,
                pct(r.before),
                pct(r.after),
                pct(r.gained),
                pct(r.lost)
            ));
        }
        out
    }
}
