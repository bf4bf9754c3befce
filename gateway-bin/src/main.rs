//! `tollgate`: run or check a gateway configuration.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

// Measured faster than glibc's malloc for the gateway's many small, short-lived
// allocations (docs/benchmarks.md).
#[cfg(not(feature = "system-allocator"))]
#[allow(unsafe_code)] // audited: a GlobalAlloc over mimalloc's C calls
mod allocator;
#[cfg(not(feature = "system-allocator"))]
#[global_allocator]
static GLOBAL: allocator::MiMalloc = allocator::MiMalloc;
use tollgate::{Config, GatewayBuilder, LoadError};

#[derive(Parser)]
#[command(
    name = "tollgate",
    version,
    about = "A programmable API gateway built on Pingora"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start serving the routes of a config file.
    Run {
        /// The TOML config file.
        #[arg(short, long)]
        config: PathBuf,
        /// Take over the sockets of the running instance (graceful upgrade).
        #[arg(long)]
        upgrade: bool,
    },
    /// Parse and validate a config file; prints `ok` and a summary. Never contacts DNS
    /// unless `--resolve` is given.
    Check {
        /// The TOML config file.
        #[arg(short, long)]
        config: PathBuf,
        /// Also look every backend name up once, as `run` would; a name that does not
        /// resolve is an error.
        #[arg(long)]
        resolve: bool,
    },
}

fn load(path: &PathBuf) -> Result<Config, ExitCode> {
    Config::load(path).map_err(|e| {
        eprintln!("{e}");
        match e {
            LoadError::Unreadable { .. } => ExitCode::from(2),
            _ => ExitCode::from(1),
        }
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Check {
            config,
            resolve: true,
        } => match Config::load_resolving(&config, &tollgate::policy::Registry::with_builtins()) {
            Ok(r) => match r.summary {
                Some(summary) => {
                    println!("ok: {summary}");
                    for l in r.resolved {
                        println!("{l}");
                    }
                    ExitCode::SUCCESS
                }
                None => {
                    for e in r.errors {
                        eprintln!("{e}");
                    }
                    ExitCode::from(1)
                }
            },
            Err(e) => {
                eprintln!("{e}");
                ExitCode::from(2)
            }
        },
        Command::Check { config, .. } => match load(&config) {
            Ok(c) => {
                println!("ok: {}", c.summary());
                ExitCode::SUCCESS
            }
            Err(code) => code,
        },
        Command::Run { config, upgrade } => {
            tracing_subscriber::fmt()
                .with_writer(std::io::stderr)
                .with_env_filter(
                    tracing_subscriber::EnvFilter::try_from_default_env()
                        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
                )
                .init();
            let c = match load(&config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            let handle = match GatewayBuilder::new().exit_on_bind_error(true).build(&c) {
                Ok(h) => h,
                Err(e) => {
                    eprintln!("{}: cannot open access log: {e}", config.display());
                    return ExitCode::from(1);
                }
            };
            let mut server = handle.pingora_server(upgrade);
            handle.add_to(&mut server);
            tracing::info!(
                "tollgate {} serving {}",
                env!("CARGO_PKG_VERSION"),
                c.summary()
            );
            // the gateway holds the snapshot it serves; a reload must be able to free it
            drop(c);
            release_free_memory();
            handle.run(server);
            ExitCode::SUCCESS
        }
    }
}

/// Gives the memory the config parser used and freed back to the OS. mimalloc keeps a
/// thread's freed pages until that thread allocates again, and from here on the main
/// thread only waits: without this, a config of 100,000 consumers leaves ~300 MiB of
/// freed parser memory in the RSS (docs/benchmarks.md).
#[cfg(not(feature = "system-allocator"))]
#[allow(unsafe_code)]
fn release_free_memory() {
    // SAFETY: mi_collect takes no pointers; it only walks mimalloc's own heaps
    unsafe { libmimalloc_sys::mi_collect(true) }
}

#[cfg(feature = "system-allocator")]
fn release_free_memory() {}
