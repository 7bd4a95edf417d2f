//! The `stickylb` command: CLI parsing, logging, signals and wiring. No logic.

use clap::{Parser, Subcommand};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use stickylb::config::{self, Config};
use stickylb::proxy::{Proxy, UpstreamOptions};
use stickylb::router::{Router, Snapshot};
use stickylb::{demo, server};
use tokio::net::TcpListener;

#[derive(Parser)]
#[command(
    name = "stickylb",
    version,
    about = "A reverse-proxy HTTP load balancer with sticky consistent hashing"
)]
struct Cli {
    /// The config file.
    #[arg(long, short, global = true, default_value = "config.toml")]
    config: PathBuf,
    /// Worker threads for the proxy (default: one per CPU).
    #[arg(long, global = true)]
    threads: Option<usize>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy (the default).
    Run,
    /// Validate the config and print each backend's share of the keyspace.
    Check,
    /// Print `KEY -> BACKEND` for each key, as the proxy routes it.
    Route {
        #[arg(required = true)]
        keys: Vec<String>,
    },
    /// Run the proxy with built-in echo backends on the config's loopback addresses.
    Demo,
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
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let result = match cli.command.unwrap_or(Command::Run) {
        Command::Check => check(&cli.config),
        Command::Route { keys } => route(&cli.config, &keys),
        Command::Run => serve(&cli.config, cli.threads, false),
        Command::Demo => serve(&cli.config, cli.threads, true),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure(msg)) => {
            eprintln!("stickylb: {msg}");
            ExitCode::from(1)
        }
    }
}

fn load(path: &Path) -> Result<Config, Failure> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    Ok(config::from_toml_str(&text, &path.display().to_string())?)
}

fn snapshot(path: &Path) -> Result<(Config, Snapshot), Failure> {
    let config = load(path)?;
    let snap = Snapshot::build(&config, 1, None).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok((config, snap))
}

fn check(path: &Path) -> Result<(), Failure> {
    let (config, snap) = snapshot(path)?;
    let shares = snap.ring.shares();
    println!(
        "{}: ok, {} backends, algorithm ring ({} vnodes per weight), seed {}, fingerprint {:016x}",
        path.display(),
        snap.backends.len(),
        match config.routing.algorithm {
            config::AlgorithmConfig::Ring { vnodes } => vnodes,
        },
        config.routing.seed,
        snap.ring.fingerprint()
    );
    let width = snap
        .backends
        .iter()
        .map(|b| b.name.len())
        .max()
        .unwrap_or(0);
    for (b, share) in snap.backends.iter().zip(shares) {
        println!(
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
    let (_, snap) = snapshot(path)?;
    for key in keys {
        println!("{key} -> {}", snap.owner(key.as_bytes()).name);
    }
    Ok(())
}

fn serve(path: &Path, threads: Option<usize>, with_demo: bool) -> Result<(), Failure> {
    let (config, snap) = snapshot(path)?;
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = threads {
        rt.worker_threads(n.max(1));
    }
    let rt = rt.enable_all().build()?;
    rt.block_on(async move {
        if with_demo {
            start_demo_backends(&config).await?;
        }
        let listener = TcpListener::bind(config.listen.address)
            .await
            .map_err(|e| format!("cannot listen on {}: {e}", config.listen.address))?;
        let router = Arc::new(Router::new(snap));
        let proxy = Arc::new(Proxy::new(
            router,
            UpstreamOptions {
                connect_timeout: config.timeouts.connect,
                pool_idle: config.timeouts.idle,
            },
        ));
        tracing::info!(
            "listening on http://{} with {} backends",
            config.listen.address,
            config.backends.len()
        );
        server::run(listener, proxy, shutdown_signal()).await?;
        tracing::info!("stopped");
        Ok(())
    })
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
async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!("cannot listen for Ctrl-C: {e}");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!("cannot listen for SIGTERM: {e}");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => tracing::info!("SIGINT received"),
        () = term => tracing::info!("SIGTERM received"),
    }
}
