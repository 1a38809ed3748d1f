//! flowgate: a self-hosted, OpenAI-compatible LLM gateway.
#![deny(clippy::unwrap_used)]
#![cfg_attr(test, allow(clippy::unwrap_used))]

#[cfg(feature = "mimalloc")]
mod alloc;
mod bench_cli;
mod config;
mod evals;
mod http;
mod keys_cli;
mod ui;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::Config;

/// mimalloc: the request path allocates and frees many small objects, often on different
/// threads (a run is built by a worker and freed by the recorder); glibc's malloc spent a
/// seventh of the CPU on it. The `mimalloc` feature (default) selects it; without it
/// (`--no-default-features`) the system allocator is used, for heap profilers (heaptrack).
/// Its 2.x line (the `v2` feature in `Cargo.toml`): 3.x kept ~15 MB more resident under
/// `bench/memory.sh`, for the same instructions per request. Large blocks asked for zeroed are
/// mapped on their own ([`alloc`]): 2.x made sled's never-written metrics resident (~21 MB).
#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: alloc::ZeroedMapped<mimalloc::MiMalloc> =
    alloc::ZeroedMapped::new(mimalloc::MiMalloc);

/// mimalloc asks the kernel for transparent huge pages on its arenas: each 2 MiB page is
/// zeroed and counted whole as soon as one byte of it is touched. Over 1M requests of mixed
/// traffic (`bench/memory.sh`) that was most of the difference between the heap flowgate
/// uses and its RSS, and the page zeroing was a few percent of its CPU (`perf`).
fn no_transparent_huge_pages() {
    #[cfg(target_os = "linux")]
    // SAFETY: PR_SET_THP_DISABLE takes plain integers and only sets a flag of this process.
    unsafe {
        libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
    }
}

#[derive(Parser)]
#[command(name = "flowgate", version, about = "An OpenAI-compatible LLM gateway")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the gateway (the default command).
    Serve {
        /// The config file.
        #[arg(long, default_value = "config/flowgate.toml")]
        config: PathBuf,
        /// Overrides `server.listen` (e.g. `127.0.0.1:0` for any free port).
        #[arg(long)]
        listen: Option<String>,
    },
    /// Validate the config file and exit.
    CheckConfig {
        #[arg(long, default_value = "config/flowgate.toml")]
        config: PathBuf,
    },
    /// Apply the storage schema migrations (PostgreSQL) and exit. `serve` applies them too;
    /// this is for deploys that migrate before they start instances.
    Migrate {
        #[arg(long, default_value = "config/flowgate.toml")]
        config: PathBuf,
    },
    /// Manages virtual API keys through a running flowgate's admin API.
    Keys(keys_cli::KeysCommand),
    /// Runs a benchmark on a running flowgate: its progress, then its table.
    Bench(bench_cli::BenchCommand),
    /// Internal: a template render worker, started by `serve` (jobs on stdin, answers on
    /// stdout, within an address-space limit).
    #[command(hide = true)]
    RenderWorker {
        #[arg(long)]
        memory_bytes: u64,
    },
}

/// Changes the log filter once the config is read.
type LogFilter =
    tracing_subscriber::reload::Handle<tracing_subscriber::EnvFilter, tracing_subscriber::Registry>;

/// Logs to stderr, filtered by `FLOWGATE_LOG` or `RUST_LOG` (e.g. `info`,
/// `flowgate_actors=debug` for the request and attempt spans); without either, `info` until
/// the config's `server.log` says otherwise. Returns whether an environment variable decided.
fn init_tracing() -> (LogFilter, bool) {
    use tracing_subscriber::prelude::*;
    let from_env = ["FLOWGATE_LOG", "RUST_LOG"]
        .iter()
        .find_map(|var| tracing_subscriber::EnvFilter::try_from_env(var).ok());
    let decided = from_env.is_some();
    let filter = from_env.unwrap_or_else(|| tracing_subscriber::EnvFilter::new("info"));
    let (filter, handle) = tracing_subscriber::reload::Layer::new(filter);
    tracing_subscriber::registry()
        .with(filter)
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                // Colours for a terminal only: not in files and journals.
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
                // A line per closed span: each request and attempt with its fields and time.
                .with_span_events(tracing_subscriber::fmt::format::FmtSpan::CLOSE),
        )
        .init();
    (handle, decided)
}

/// `flowgate migrate`: the config's PostgreSQL database gets the migrations it lacks.
fn migrate(path: &std::path::Path) -> ExitCode {
    use flowgate_actors::storage::{postgres, Backend};
    let config = match Config::load(path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    match &config.gateway.storage {
        Backend::Sled => {
            println!("storage.backend is sled: nothing to migrate (sled needs no migrations)");
            ExitCode::SUCCESS
        }
        Backend::Postgres(settings) => match postgres::migrate_blocking(settings) {
            Ok(applied) if applied.is_empty() => {
                println!("PostgreSQL schema up to date: nothing to apply");
                ExitCode::SUCCESS
            }
            Ok(applied) => {
                println!("applied migrations {applied:?}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("migration failed: {e}");
                ExitCode::FAILURE
            }
        },
    }
}

fn main() -> ExitCode {
    no_transparent_huge_pages();
    let cli = Cli::parse();
    if let Some(Command::RenderWorker { memory_bytes }) = cli.command {
        return match flowgate_actors::templates::sandbox::serve_worker(memory_bytes) {
            Ok(()) => ExitCode::SUCCESS,
            Err(_) => ExitCode::FAILURE,
        };
    }
    let (log_filter, log_from_env) = init_tracing();
    let command = cli.command.unwrap_or(Command::Serve {
        config: PathBuf::from("config/flowgate.toml"),
        listen: None,
    });
    match command {
        Command::CheckConfig { config } => match Config::load(&config) {
            Ok(c) => {
                println!(
                    "{}: ok ({} providers, {} models)",
                    config.display(),
                    c.gateway.providers.len(),
                    c.gateway.catalog.models().len()
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::from(2)
            }
        },
        Command::Migrate { config } => migrate(&config),
        Command::RenderWorker { .. } => ExitCode::SUCCESS,
        Command::Bench(bench) => match bench_cli::run(bench) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("{e}");
                ExitCode::FAILURE
            }
        },
        Command::Keys(keys) => match keys_cli::run(keys) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("{e}");
                ExitCode::FAILURE
            }
        },
        Command::Serve { config, listen } => {
            let mut loaded = match Config::load(&config) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("{e}");
                    return ExitCode::from(2);
                }
            };
            if !log_from_env {
                if let Some(level) = &loaded.server.log {
                    match tracing_subscriber::EnvFilter::try_new(level) {
                        Ok(filter) => {
                            let _ = log_filter.reload(filter);
                        }
                        Err(e) => {
                            eprintln!("invalid config at `server.log`: {e}");
                            return ExitCode::from(2);
                        }
                    }
                }
            }
            if let Some(listen) = listen {
                match listen.parse() {
                    Ok(addr)
                        if loaded.auth.api_keys.is_empty()
                            && !std::net::SocketAddr::ip(&addr).is_loopback() =>
                    {
                        eprintln!("refusing to listen on {addr} with no API key configured");
                        return ExitCode::from(2);
                    }
                    Ok(addr) => loaded.server.listen = addr,
                    Err(e) => {
                        eprintln!("--listen `{listen}`: {e}");
                        return ExitCode::from(2);
                    }
                }
            }
            match actix_rt::System::new().block_on(http::serve(loaded)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("{e}");
                    let _ = std::io::stderr().flush();
                    ExitCode::FAILURE
                }
            }
        }
    }
}
