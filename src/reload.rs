//! Live reload, in one pipeline: read -> parse -> validate -> build ->
//! compare -> `ArcSwap::store` -> metrics -> one log line. Triggered by
//! notify events on the config file's directory (debounced) and by SIGHUP.
//! An invalid file changes nothing: the old snapshot keeps serving. Also
//! the remap report behind `stickylb diff`.

use crate::config::{self, Config};
use crate::metrics::Metrics;
use crate::ring::Ring;
use crate::router::{ring_of, Router, Snapshot};
use crate::tls;
use notify::{EventKind, RecursiveMode, Watcher};
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, watch};

/// Quiet time after the last file event before reloading: one editor save
/// (write temp, rename, chmod) is one reload.
const DEBOUNCE: Duration = Duration::from_millis(20);
/// Upper bound on the wait for quiet, so a busy directory still reloads.
const DEBOUNCE_MAX: Duration = Duration::from_millis(250);

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
    /// Addresses bound at start-up: changing them needs a restart.
    listen: Option<SocketAddr>,
    admin: SocketAddr,
    tls_listener: Option<SocketAddr>,
    /// Hash of the file bytes (and certificate files) last applied, to skip
    /// events that changed nothing.
    applied: AtomicU64,
    /// The certificate files of the config last applied.
    tls_files: Mutex<Option<config::TlsFiles>>,
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
    let snap = Snapshot::build(&config, None, metrics)
        .map_err(|e| format!("{}: {e}", path.display()))?
        .with_tls(tls);
    publish(metrics, &snap, None);
    Ok((config, snap))
}

/// The TLS server config of `config` (read from `config_path`), if it has
/// `listen.tls`; relative certificate paths start at the file's directory.
pub fn load_tls(
    config_path: &Path,
    config: &Config,
) -> Result<Option<Arc<rustls::ServerConfig>>, String> {
    config
        .listen
        .tls
        .as_ref()
        .map(|files| tls::load(&tls::resolve(files, tls::base_dir(config_path))))
        .transpose()
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
            path: path.to_path_buf(),
            router,
            metrics,
            listen: Some(config.listen.address),
            admin: config.admin.address,
            tls_listener: config.listen.tls_listener(),
            applied: AtomicU64::new(applied),
            tls_files: Mutex::new(tls_files),
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
                tracing::error!("config reload rejected, the current config keeps serving: {e}");
            }
            Outcome::Unchanged => return outcome,
            Outcome::Applied { .. } => {}
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
            Err(e) => return Outcome::Failed(e),
        };
        let applied_tls = self
            .tls_files
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if !force
            && input_hash(&self.path, &text, applied_tls.as_ref())
                == self.applied.load(Ordering::Relaxed)
        {
            return Outcome::Unchanged;
        }
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
            Ok(s) => s.with_tls(tls),
            Err(e) => return Outcome::Failed(format!("{origin}: {e}")),
        };
        for (what, now, configured) in [
            ("listen.address", self.listen, Some(config.listen.address)),
            (
                "admin.address",
                Some(self.admin),
                Some(config.admin.address),
            ),
            (
                "the TLS listen address",
                self.tls_listener,
                config.listen.tls_listener(),
            ),
        ] {
            if now != configured {
                let show = |a: Option<SocketAddr>| a.map_or("none".to_string(), |a| a.to_string());
                tracing::warn!(
                    "{what} changed from {} to {}: restart stickylb to apply it; the rest of the file is applied",
                    show(now),
                    show(configured)
                );
            }
        }
        let routing_changed = snap.generation != old.generation;
        let moved = if routing_changed {
            old.ring.moved_fraction(&snap.ring)
        } else {
            0.0
        };
        let line = summary(&old.ring, &snap.ring);
        let generation = snap.generation;
        publish(&self.metrics, &snap, Some((&old, moved)));
        self.router.store(snap);
        self.applied.store(hash, Ordering::Relaxed);
        *self.tls_files.lock().unwrap_or_else(|p| p.into_inner()) = config.listen.tls.clone();
        if routing_changed {
            tracing::info!(
                "generation {generation}: {line}, {:.1}% of keyspace changed owner",
                moved * 100.0
            );
        } else {
            tracing::info!("generation {generation}: config reloaded, routing unchanged");
        }
        Outcome::Applied { generation, moved }
    }

    /// Watches the config file's directory and listens for SIGHUP until
    /// `shutdown` resolves. Watching the directory, not the file, survives
    /// editors that replace the file by rename and symlink swaps.
    ///
    /// The watch and the signal handler are in place when this returns, so
    /// a change made after it is never missed; the loop runs in a task.
    pub fn start(
        self: Arc<Self>,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> tokio::task::JoinHandle<()> {
        let (tx, rx) = mpsc::unbounded_channel::<()>();
        let dir = match self.path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let watcher =
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| match event {
                Ok(e) if matches!(e.kind, EventKind::Access(_)) => {}
                // The receiver is gone only when the reloader stopped.
                Ok(_) => drop(tx.send(())),
                Err(e) => tracing::warn!("config watcher: {e}"),
            });
        let watcher = match watcher
            .and_then(|mut w| w.watch(&dir, RecursiveMode::NonRecursive).map(|()| w))
        {
            Ok(w) => {
                tracing::info!("watching {} for changes", dir.display());
                Some(w)
            }
            Err(e) => {
                tracing::error!("cannot watch {}: {e}; reload with SIGHUP", dir.display());
                None
            }
        };
        let hangup = hangup_signal();
        tokio::spawn(self.run(watcher, rx, hangup, shutdown))
    }

    async fn run(
        self: Arc<Self>,
        _watcher: Option<notify::RecommendedWatcher>,
        mut rx: mpsc::UnboundedReceiver<()>,
        mut hangup: Hangup,
        shutdown: impl Future<Output = ()>,
    ) {
        tokio::pin!(shutdown);
        loop {
            let force = tokio::select! {
                () = &mut shutdown => return,
                event = rx.recv() => {
                    if event.is_none() {
                        return;
                    }
                    debounce(&mut rx).await;
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
        }
    }
}

/// Waits until no event arrived for `DEBOUNCE`, or `DEBOUNCE_MAX` passed.
async fn debounce(rx: &mut mpsc::UnboundedReceiver<()>) {
    let until = tokio::time::Instant::now() + DEBOUNCE_MAX;
    loop {
        tokio::select! {
            () = tokio::time::sleep(DEBOUNCE) => return,
            () = tokio::time::sleep_until(until) => return,
            event = rx.recv() => if event.is_none() { return },
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
    for (b, share) in snap.backends.iter().zip(snap.ring.shares()) {
        b.metrics.share.set(share);
    }
    metrics.set_ring(
        snap.generation,
        snap.ring.algorithm().name(),
        snap.ring.fingerprint(),
    );
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
