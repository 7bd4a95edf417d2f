//! The `stickylb` command: CLI parsing, logging, signals and wiring. No logic.

use clap::{Parser, Subcommand};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use stickylb::config::{self, Config};
use stickylb::control::admin::{self, Admin};
use stickylb::control::reload::{self, Reloader};
use stickylb::control::{health, slow_start};
use stickylb::http::proxy::Proxy;
use stickylb::http::server;
use stickylb::observe::metrics::Metrics;
use stickylb::routing::snapshot::{ring_of, Router};
use stickylb::tools::{demo, simulate, stdio};
use tokio::net::TcpListener;
use tokio::sync::watch;

#[derive(Parser)]
#[command(
    name = "stickylb",
    version,
    about = "A reverse-proxy HTTP load balancer with sticky consistent hashing"
)]
struct Cli {
    /// The config file (default: $STICKYLB_CONFIG, else ./config.toml).
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// The application log's format on stderr (the access log's is
    /// `[log] format`).
    #[arg(
        long,
        global = true,
        env = "STICKYLB_LOG_FORMAT",
        value_enum,
        default_value = "text"
    )]
    log_format: LogFormat,
    /// Worker threads for the proxy (default: one per CPU; 1 to 1024).
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=1024))]
    threads: Option<u16>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    /// One JSON object a line: timestamp, level, target, fields.
    Json,
}

/// `--config`, for the commands that read one.
#[derive(clap::Args, Default)]
struct ConfigArg {
    /// The config file (default: $STICKYLB_CONFIG, else ./config.toml).
    #[arg(long, short)]
    config: Option<PathBuf>,
}

/// The flags of the commands that run the proxy.
#[derive(clap::Args, Default)]
struct RunArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// Worker threads for the proxy (default: one per CPU; 1 to 1024).
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=1024))]
    threads: Option<u16>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy (the default).
    Run(RunArgs),
    /// Validate the config and print each backend's share of the keyspace.
    Check(ConfigArg),
    /// Print `KEY -> BACKEND` for each key, as the proxy routes it.
    Route {
        #[command(flatten)]
        config: ConfigArg,
        #[arg(required = true)]
        keys: Vec<String>,
    },
    /// Run the proxy with built-in echo backends on the config's loopback addresses.
    Demo(RunArgs),
    /// Preview a pool change: the exact keyspace that changes owner, per backend.
    Diff {
        old: PathBuf,
        new: PathBuf,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Speak the JSON-lines routing protocol on stdin/stdout.
    Stdio,
    /// Replay a key workload against the pool, each backend with an LRU
    /// cache, and print the cache hit rate per algorithm (and round robin).
    Simulate(SimulateArgs),
}

#[derive(clap::Args)]
struct SimulateArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// Change the pool to this config's halfway through, as a reload would.
    #[arg(long)]
    to: Option<PathBuf>,
    /// Distinct keys of the synthetic workload.
    #[arg(long, default_value_t = 100_000)]
    keys: u64,
    /// The Zipf exponent of the synthetic workload (0: uniform).
    #[arg(long, default_value_t = 1.0)]
    zipf: f64,
    /// Requests of the synthetic workload.
    #[arg(long, default_value_t = 1_000_000)]
    requests: u64,
    /// Keys each backend's LRU cache holds (default: 2% of the keys).
    #[arg(long)]
    cache: Option<usize>,
    /// Replay this file instead: one key a line, or the proxy's JSON
    /// access log (by its key_hash).
    #[arg(long)]
    replay: Option<PathBuf>,
    /// Draw the hit rate over the requests as SVG or PNG (by the name's
    /// extension).
    #[arg(long)]
    plot: Option<PathBuf>,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// The synthetic workload's random seed.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Ramp the backends that join at the change over this long, as
    /// `routing.slow_start` does (e.g. "60s").
    #[arg(long, value_parser = humantime::parse_duration)]
    slow_start: Option<std::time::Duration>,
    /// Requests a second, to map the requests onto time (for the miss
    /// burst, the recovery and `--slow-start`).
    #[arg(long, default_value_t = 10_000.0)]
    rate: f64,
}

/// `println!` that treats a closed stdout (`stickylb route ... | head`) as
/// the end of the command rather than an error.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let mut stdout = std::io::stdout().lock();
        if let Err(e) = writeln!(stdout, $($arg)*) {
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                std::process::exit(0);
            }
            return Err(Failure(format!("cannot write to stdout: {e}")));
        }
    }};
}

/// A failure to report as one sentence, with exit code 1.
struct Failure(String);

impl<E: std::fmt::Display> From<E> for Failure {
    fn from(e: E) -> Self {
        Failure(e.to_string())
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,rustls=error,notify=error"));
    let log = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let log_format = cli.log_format;
    match log_format {
        LogFormat::Text => log
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        LogFormat::Json => log.json().with_current_span(false).init(),
    }
    let command = cli.command.unwrap_or(Command::Run(RunArgs::default()));
    // `stickylb --config F check` still works; a flag the command does not
    // use is a usage error, never silently ignored.
    let unused = match &command {
        Command::Diff { .. } | Command::Stdio => {
            (cli.config.is_some() || cli.threads.is_some()).then_some("--config or --threads")
        }
        Command::Check(_) | Command::Route { .. } | Command::Simulate(_) => {
            cli.threads.is_some().then_some("--threads")
        }
        Command::Run(_) | Command::Demo(_) => None,
    };
    if let Some(flag) = unused {
        use clap::CommandFactory;
        let e = Cli::command().error(
            clap::error::ErrorKind::ArgumentConflict,
            format!("this command does not take {flag}"),
        );
        e.exit();
    }
    let top = cli.config;
    let config = |own: ConfigArg| {
        own.config
            .or(top.clone())
            .or_else(|| std::env::var_os("STICKYLB_CONFIG").map(PathBuf::from))
            .unwrap_or_else(|| PathBuf::from("config.toml"))
    };
    let threads = |own: Option<u16>| own.or(cli.threads).map(usize::from);
    let result = match command {
        Command::Check(c) => check(&config(c)),
        Command::Route { config: c, keys } => route(&config(c), &keys),
        Command::Diff { old, new, json } => diff(&old, &new, json),
        Command::Run(r) => serve(&config(r.config), threads(r.threads), false),
        Command::Demo(r) => serve(&config(r.config), threads(r.threads), true),
        Command::Simulate(mut a) => {
            let path = config(std::mem::take(&mut a.config));
            simulate(&path, a)
        }
        Command::Stdio => stdio::run(std::io::stdin().lock(), std::io::stdout().lock())
            .map_err(|e| Failure(format!("stdio: {e}"))),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure(msg)) => {
            match log_format {
                // One JSON object a line, as every other line on stderr.
                LogFormat::Json => tracing::error!("{msg}"),
                LogFormat::Text => eprintln!("stickylb: {msg}"),
            }
            ExitCode::from(1)
        }
    }
}

fn load(path: &Path) -> Result<Config, Failure> {
    let text = stickylb::files::read_config(path)?;
    Ok(config::from_toml_str(&text, &path.display().to_string())?)
}

fn check(path: &Path) -> Result<(), Failure> {
    let config = load(path)?;
    let ring = ring_of(&config).map_err(|e| format!("{}: {e}", path.display()))?;
    reload::load_tls(path, &config)?;
    for w in &config.warnings {
        eprintln!("stickylb: warning: {w}");
    }
    let algorithm = match config.routing.algorithm {
        config::Algorithm::Ring { vnodes } => format!("ring ({vnodes} vnodes per weight)"),
        config::Algorithm::Maglev { table_size } => {
            format!("maglev (table size {table_size})")
        }
        config::Algorithm::Rendezvous => "rendezvous".to_string(),
    };
    out!(
        "{}: ok, {}, algorithm {algorithm}, seed {}, fingerprint {:016x}",
        path.display(),
        backends(config.backends.len()),
        config.routing.seed,
        ring.fingerprint()
    );
    let width = config
        .backends
        .iter()
        .map(|b| b.name.len())
        .max()
        .unwrap_or(0);
    for (b, share) in config.backends.iter().zip(ring.shares()) {
        out!(
            "  {:width$}  {:21}  weight {:<3}  share {:6.2}%",
            b.name,
            b.address,
            b.weight,
            share * 100.0
        );
    }
    Ok(())
}

fn route(path: &Path, keys: &[String]) -> Result<(), Failure> {
    let config = load(path)?;
    let ring = ring_of(&config).map_err(|e| format!("{}: {e}", path.display()))?;
    for key in keys {
        let owner = ring.owner(ring.hash(key.as_bytes()));
        out!("{key} -> {}", ring.members()[owner].name);
    }
    Ok(())
}

fn diff(old: &Path, new: &Path, json: bool) -> Result<(), Failure> {
    let d = reload::diff(&load(old)?, &load(new)?)?;
    if json {
        out!("{}", serde_json::to_string(&d)?);
    } else {
        out!("{}", d.to_text().trim_end());
    }
    Ok(())
}

fn serve(path: &Path, threads: Option<usize>, with_demo: bool) -> Result<(), Failure> {
    let metrics = Arc::new(Metrics::new());
    let workers = threads.unwrap_or_else(|| {
        std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
    });
    // One upstream pool per worker: set before any backend is made.
    stickylb::http::upstream::set_workers(workers);
    let (config, mut snap) = reload::load_initial(path, &metrics)?;
    if let Some(open_files) = raise_open_files_limit() {
        let listeners = [config.listen.plain_listener(), config.listen.tls_listener()]
            .iter()
            .flatten()
            .count();
        let budget = server::FdBudget {
            open_files,
            listeners,
            backend_caps: config.limits.max_backend_connections * config.backends.len(),
        };
        let wanted = snap.limits.max_connections;
        let fitted = budget.fit(wanted);
        if fitted < wanted {
            tracing::warn!(
                "limits.max_connections = {wanted} does not fit in the open files limit of {open_files} \
                 beside {} backend connections (limits.max_backend_connections × backends) and {} reserved: \
                 serving at most {fitted} client connections per listener; raise the limit (ulimit -n, LimitNOFILE) to serve more",
                budget.backend_caps,
                server::FdBudget::RESERVED,
            );
            snap.limits.max_connections = fitted;
        }
    }
    // Workers, NGINX-style: each a thread with a current-thread runtime and
    // its own listening socket (SO_REUSEPORT: the kernel spreads the
    // connections). A current-thread runtime serves its run queue in order;
    // the multi-thread scheduler's LIFO slot let a task that woke another
    // hand the thread back and forth with it while other connections
    // waited (a 90 ms tail at 512 connections). The admin
    // listener, health checks, reloads and slow start run on this thread.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let shutdown = shutdown_signal();
        if with_demo {
            start_demo_backends(&config).await?;
        }
        // Every worker's sockets, bound now so that an error stops the start.
        let mut urls = Vec::new();
        let mut sockets: Vec<Vec<(std::net::TcpListener, server::Transport)>> =
            (0..workers).map(|_| Vec::new()).collect();
        for (addr, transport) in [
            (config.listen.plain_listener(), server::Transport::Plain),
            (config.listen.tls_listener(), server::Transport::Tls),
        ] {
            let Some(addr) = addr else { continue };
            for worker in sockets.iter_mut() {
                let listener = listen(addr, config.listen.backlog, workers > 1)
                    .and_then(|l| l.into_std())
                    .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
                worker.push((listener, transport));
            }
            let scheme = match transport {
                server::Transport::Plain => "http",
                server::Transport::Tls => "https",
            };
            urls.push(format!("{scheme}://{addr}"));
        }
        let admin_listener = TcpListener::bind(config.admin.address).await.map_err(|e| {
            format!(
                "cannot listen on admin address {}: {e}",
                config.admin.address
            )
        })?;
        let router = Arc::new(Router::new(snap));
        let proxy = Arc::new(Proxy::new(router.clone(), metrics.clone()));
        let (stop_tx, stop_rx) = watch::channel(false);
        let admin = Arc::new(Admin::new(router.clone(), metrics.clone()));
        // The admin listener outlives the proxy listeners, so `/healthz`
        // answers `draining` through the whole shutdown.
        let (admin_stop_tx, admin_stop_rx) = watch::channel(false);
        let admin_task = tokio::spawn(admin::run(
            admin_listener,
            admin.clone(),
            stopped(admin_stop_rx),
        ));
        let health_task = tokio::spawn(health::run(router.clone(), stopped(stop_rx.clone())));
        let ramp_task = tokio::spawn(slow_start::run(router.clone(), stopped(stop_rx.clone())));
        let reloader = Arc::new(Reloader::new(path, &config, router, metrics));
        let reload_task = reloader.start(stopped(stop_rx.clone()));
        let servers: Vec<std::thread::JoinHandle<Result<(), String>>> = sockets
            .into_iter()
            .enumerate()
            .map(|(i, sockets)| {
                let (proxy, stop_rx) = (proxy.clone(), stop_rx.clone());
                let proxy_protocol = config.listen.proxy_protocol;
                std::thread::Builder::new()
                    .name(format!("worker-{i}"))
                    .spawn(move || worker(sockets, proxy, proxy_protocol, (i, workers), stop_rx))
                    .map_err(|e| format!("cannot start worker thread {i}: {e}"))
            })
            .collect::<Result<_, _>>()?;
        tracing::info!(
            "listening on {} with {}, {workers} worker thread{}; admin on http://{}",
            urls.join(" and "),
            backends(config.backends.len()),
            if workers == 1 { "" } else { "s" },
            config.admin.address
        );
        shutdown.await;
        admin.draining.store(true, Ordering::Relaxed);
        let delay = admin.router.load().timeouts.shutdown_delay;
        tracing::info!(
            "draining: /healthz answers 503; serving for {delay:?} (timeouts.shutdown_delay) before closing the listeners"
        );
        tokio::time::sleep(delay).await;
        stop_tx.send_replace(true);
        for s in servers {
            let joined = tokio::task::spawn_blocking(move || s.join())
                .await
                .map_err(|e| format!("worker thread: {e}"))?;
            joined.map_err(|_| "a worker thread panicked".to_string())??;
        }
        admin_stop_tx.send_replace(true);
        for task in [admin_task, reload_task, health_task, ramp_task] {
            if let Err(e) = task.await {
                tracing::warn!("background task ended abnormally: {e}");
            }
        }
        tracing::info!("stopped");
        Ok(())
    })
}

/// Every connection is a file descriptor: raise the soft limit to the hard
/// one; the limit now in force, if it could be read.
fn raise_open_files_limit() -> Option<u64> {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => {
            tracing::info!("open files limit: {n}");
            Some(n)
        }
        Err(e) => {
            tracing::warn!("cannot raise the open files limit: {e}");
            rlimit::getrlimit(rlimit::Resource::NOFILE)
                .ok()
                .map(|(soft, _)| soft)
        }
    }
}

/// Resolves once `rx` turns true (or its sender is gone).
async fn stopped(mut rx: watch::Receiver<bool>) {
    // An error means the sender is gone, which is a stop too.
    let _ = rx.wait_for(|stop| *stop).await;
}

/// Starts an echo backend on every loopback backend address of the config.
async fn start_demo_backends(config: &Config) -> Result<(), Failure> {
    let mut started = 0;
    for b in &config.backends {
        let Ok(addr) = b.address.parse::<SocketAddr>() else {
            continue;
        };
        if !addr.ip().is_loopback() {
            continue;
        }
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|e| format!("demo backend {} cannot listen on {addr}: {e}", b.name))?;
        tokio::spawn(demo::serve_echo(listener, b.name.as_str().into()));
        started += 1;
    }
    if started == 0 {
        return Err(Failure(
            "demo needs at least one backend on a loopback address (like 127.0.0.1:9001)".into(),
        ));
    }
    tracing::info!(
        "demo: {started} echo backends up; try: curl -H 'X-Client-Id: alice' http://{}/",
        config.listen.address
    );
    Ok(())
}

/// Resolves on SIGINT or SIGTERM.
/// Registers the SIGINT and SIGTERM handlers at once (so a signal that
/// arrives right after start-up is never the default, abrupt exit) and
/// returns what resolves at the first of them.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let term = signal(SignalKind::terminate());
        let int = signal(SignalKind::interrupt());
        async move {
            let wait = |s: std::io::Result<tokio::signal::unix::Signal>, name: &'static str| async move {
                match s {
                    Ok(mut s) => {
                        s.recv().await;
                    }
                    Err(e) => {
                        tracing::error!("cannot listen for {name}: {e}");
                        std::future::pending::<()>().await;
                    }
                }
            };
            tokio::select! {
                () = wait(int, "SIGINT") => tracing::info!("SIGINT received"),
                () = wait(term, "SIGTERM") => tracing::info!("SIGTERM received"),
            }
        }
    }
    #[cfg(not(unix))]
    async {
        if tokio::signal::ctrl_c().await.is_ok() {
            tracing::info!("SIGINT received");
        }
    }
}

/// "1 backend", "3 backends".
fn backends(n: usize) -> String {
    if n == 1 {
        "1 backend".into()
    } else {
        format!("{n} backends")
    }
}

/// A listening socket with `backlog` places in the kernel's accept queue
/// (clients waiting while `max_connections` are open wait there); with
/// `shared`, one of several on the address (SO_REUSEPORT), one per worker.
fn listen(addr: SocketAddr, backlog: u32, shared: bool) -> std::io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    if shared {
        socket.set_reuseport(true)?;
    }
    socket.bind(addr)?;
    socket.listen(backlog)
}

/// One worker thread: a current-thread runtime serving its own sockets
/// until `stop` turns true, then draining them.
fn worker(
    sockets: Vec<(std::net::TcpListener, server::Transport)>,
    proxy: Arc<Proxy>,
    proxy_protocol: bool,
    (index, workers): (usize, usize),
    stop: watch::Receiver<bool>,
) -> Result<(), String> {
    stickylb::http::upstream::set_worker(index);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("worker runtime: {e}"))?;
    rt.block_on(async move {
        let mut servers = Vec::new();
        for (socket, transport) in sockets {
            let listener = TcpListener::from_std(socket).map_err(|e| e.to_string())?;
            let how = server::Listening {
                transport,
                proxy_protocol,
                workers,
                worker: index,
            };
            let stop = stopped(stop.clone());
            servers.push(tokio::spawn(server::run_listener(
                listener,
                proxy.clone(),
                how,
                stop,
            )));
        }
        for s in servers {
            s.await
                .map_err(|e| format!("server task failed: {e}"))?
                .map_err(|e| e.to_string())?;
        }
        Ok(())
    })
}

fn pool_of(config: &Config) -> simulate::Pool {
    simulate::Pool {
        members: config
            .backends
            .iter()
            .map(|b| stickylb::ring::Member {
                name: b.name.as_str().into(),
                weight: b.weight,
            })
            .collect(),
        algorithm: config.routing.algorithm,
        seed: config.routing.seed,
        balance_factor: config.routing.balance_factor,
    }
}

fn simulate(path: &Path, a: SimulateArgs) -> Result<(), Failure> {
    if !(a.zipf.is_finite() && a.zipf >= 0.0) {
        return Err(Failure(format!(
            "--zipf must be a number of at least 0, not {}",
            a.zipf
        )));
    }
    if a.requests > simulate::MAX_REQUESTS || a.keys > simulate::MAX_KEYS {
        return Err(Failure(format!(
            "--requests is at most {} and --keys at most {}",
            simulate::MAX_REQUESTS,
            simulate::MAX_KEYS
        )));
    }
    if !(a.rate.is_finite() && a.rate >= 1.0) {
        return Err(Failure(format!(
            "--rate must be at least 1 request a second, not {}",
            a.rate
        )));
    }
    if a.requests as f64 / a.rate > simulate::MAX_SECONDS as f64 {
        return Err(Failure(format!(
            "--requests {} at --rate {} last over {} simulated seconds; raise --rate",
            a.requests,
            a.rate,
            simulate::MAX_SECONDS
        )));
    }
    if let Some(d) = a.slow_start {
        if d < std::time::Duration::from_secs(1) || d > config::MAX_DURATION {
            return Err(Failure(
                "--slow-start must be from 1s to 1y, as routing.slow_start".into(),
            ));
        }
        if a.to.is_none() {
            return Err(Failure(
                "--slow-start ramps the backends that join: it needs --to".into(),
            ));
        }
    }
    let extension = a.plot.as_ref().map(|p| {
        p.extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase)
    });
    let png = match extension.as_ref().map(|e| e.as_deref()) {
        None | Some(Some("svg")) => false,
        Some(Some("png")) => true,
        Some(_) => {
            return Err(Failure(
                "--plot: name the file *.svg or *.png (the format follows the name)".into(),
            ))
        }
    };
    let before = pool_of(&load(path)?);
    let after = a.to.as_deref().map(load).transpose()?.map(|c| pool_of(&c));
    let workload = match &a.replay {
        Some(file) => {
            let f = std::fs::File::open(file).map_err(|e| format!("{}: {e}", file.display()))?;
            simulate::Workload::replay(std::io::BufReader::new(f), before.seed)
                .map_err(|e| format!("{}: {e}", file.display()))?
        }
        None => simulate::Workload::zipf(a.keys, a.zipf, a.requests, a.seed, before.seed)?,
    };
    if workload.requests.len() as f64 / a.rate > simulate::MAX_SECONDS as f64 {
        return Err(Failure(format!(
            "{} requests at --rate {} last over {} simulated seconds; raise --rate",
            workload.requests.len(),
            a.rate,
            simulate::MAX_SECONDS
        )));
    }
    // A cache larger than the keys holds them all.
    let cache = a
        .cache
        .unwrap_or_else(|| (workload.hashes.len() / 50).max(1))
        .min(workload.hashes.len());
    let time = simulate::Ramp {
        rate: a.rate,
        slow_start: a.slow_start,
    };
    let started = std::time::Instant::now();
    let outcomes = simulate::policies(&before)
        .into_iter()
        .map(|p| simulate::run(p, &workload, cache, &before, after.as_ref(), time))
        .collect::<Result<Vec<_>, _>>()?;
    tracing::debug!("simulated in {:?}", started.elapsed());
    if let Some(plot) = &a.plot {
        let at = |e: String| format!("{}: {e}", plot.display());
        if png {
            simulate::plot_png(&outcomes, after.is_some(), plot).map_err(at)?;
        } else {
            let svg = simulate::plot_svg(&outcomes, after.is_some())?;
            std::fs::write(plot, svg).map_err(|e| at(e.to_string()))?;
        }
    }
    let requests = workload.requests.len();
    if a.json {
        let v = serde_json::json!({
            "requests": requests,
            "keys": workload.hashes.len(),
            "cache": cache,
            "skipped": workload.skipped,
            "algorithms": outcomes,
        });
        out!("{v}");
    } else {
        out!(
            "{} keys, {cache} cached per backend{}",
            workload.hashes.len(),
            if workload.skipped > 0 {
                format!(", {} lines without a key skipped", workload.skipped)
            } else {
                String::new()
            }
        );
        out!(
            "{}",
            simulate::table(&outcomes, requests, after.is_some()).trim_end()
        );
    }
    Ok(())
}
