//! Loading and validating the TOML configuration.
//!
//! Loading is two layers: [`file`] mirrors the TOML with serde (unknown keys rejected),
//! then `compile` resolves names, parses addresses, CIDRs and regexes, builds the
//! policies through the [`Registry`] and produces a [`Snapshot`]. Every error found is
//! reported, each with file, line, column and dotted key path; see [`ConfigError`].

pub mod diagnostic;
pub(crate) mod file;
pub mod units;

mod compile;

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

pub use diagnostic::{ConfigError, ConfigErrors};
pub use file::Balance;

use crate::policy::Registry;
use crate::runtime::Snapshot;

/// Where access log lines go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccessLog {
    /// Standard output.
    Stdout,
    /// Not written.
    Off,
    /// Appended to this file.
    File(PathBuf),
}

/// The `[server]` table, validated.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ServerSettings {
    /// Plain HTTP listeners. Default: `127.0.0.1:8080`.
    pub listen: Vec<SocketAddr>,
    /// The admin listener, if any.
    pub admin_listen: Option<SocketAddr>,
    /// Bearer token for `/admin/*`, if any.
    pub admin_token: Option<String>,
    /// Worker threads per listener service. Default: 1.
    pub threads: usize,
    /// Socket for graceful upgrades. Default: `/tmp/tollgate.sock`.
    pub upgrade_sock: String,
    /// PID file. Default: `/tmp/tollgate.pid`.
    pub pid_file: String,
    /// How long a draining instance keeps accepting. Default: 5 s.
    pub grace_period: Duration,
    /// How long a draining instance waits for in-flight requests. Default: 10 s.
    pub graceful_shutdown_timeout: Duration,
    /// Access log destination. Default: stdout.
    pub access_log: AccessLog,
}

impl Default for ServerSettings {
    fn default() -> Self {
        Self {
            listen: vec![SocketAddr::from(([127, 0, 0, 1], 8080))],
            admin_listen: None,
            admin_token: None,
            threads: 1,
            upgrade_sock: "/tmp/tollgate.sock".into(),
            pid_file: "/tmp/tollgate.pid".into(),
            grace_period: Duration::from_secs(5),
            graceful_shutdown_timeout: Duration::from_secs(10),
            access_log: AccessLog::Stdout,
        }
    }
}

/// A loaded, fully validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The `[server]` table.
    pub server: ServerSettings,
    /// The file it was loaded from, if any.
    pub path: Option<PathBuf>,
    pub(crate) snapshot: Arc<Snapshot>,
}

/// Why a configuration could not be loaded.
#[derive(Debug)]
#[non_exhaustive]
pub enum LoadError {
    /// The file could not be read.
    Unreadable {
        /// The path.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file was read but is invalid.
    Invalid(ConfigErrors),
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unreadable { path, source } => write!(f, "{}: cannot read: {source}", path.display()),
            Self::Invalid(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for LoadError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Unreadable { source, .. } => Some(source),
            Self::Invalid(e) => Some(e),
        }
    }
}

impl Config {
    /// Reads and validates a file with the built-in policies.
    ///
    /// # Errors
    /// [`LoadError::Unreadable`] or [`LoadError::Invalid`] with every error found.
    pub fn load(path: impl AsRef<Path>) -> Result<Self, LoadError> {
        Self::load_with(path, &Registry::with_builtins())
    }

    /// Reads and validates a file, building policies from `registry`.
    ///
    /// # Errors
    /// [`LoadError::Unreadable`] or [`LoadError::Invalid`] with every error found.
    pub fn load_with(path: impl AsRef<Path>, registry: &Registry) -> Result<Self, LoadError> {
        let path = path.as_ref();
        let src = std::fs::read_to_string(path)
            .map_err(|source| LoadError::Unreadable { path: path.to_path_buf(), source })?;
        let dir = path.parent().unwrap_or(Path::new("."));
        let mut config = Self::parse(&src, &path.display().to_string(), dir, registry)
            .map_err(LoadError::Invalid)?;
        config.path = Some(path.to_path_buf());
        Ok(config)
    }

    /// Validates configuration text. `file` names it in errors; relative paths in the
    /// config are resolved against `config_dir`.
    ///
    /// # Errors
    /// Every error found, in file order.
    pub fn parse(src: &str, file: &str, config_dir: &Path, registry: &Registry) -> Result<Self, ConfigErrors> {
        let (server, snapshot) = compile::compile(src, file, config_dir, registry)?;
        Ok(Self { server, path: None, snapshot: Arc::new(snapshot) })
    }

    /// The compiled routes, upstreams and consumers.
    pub fn snapshot(&self) -> &Arc<Snapshot> {
        &self.snapshot
    }

    /// `N routes, N upstreams, N consumers`.
    pub fn summary(&self) -> String {
        let s = &self.snapshot;
        let plural = |n: usize, what: &str| format!("{n} {what}{}", if n == 1 { "" } else { "s" });
        format!(
            "{}, {}, {}",
            plural(s.routes.len(), "route"),
            plural(s.upstreams.len(), "upstream"),
            plural(s.consumers.len(), "consumer")
        )
    }
}
