//! The shared store (`[server.redis]`) for limits that span gateway instances.
//!
//! One connection (a redis-rs `ConnectionManager`, which reconnects by itself) is opened
//! on first use. Every operation is bounded by the store's `timeout`, so an unreachable
//! or slow Redis costs a request at most that long; the caller decides what an error
//! means (`on_store_error`).

use std::fmt;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::sync::OnceCell;

/// Why the store could not answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("shared store unavailable: {0}")]
pub struct StoreError(pub String);

/// A Redis server shared by every gateway instance that names it.
pub struct RedisStore {
    client: redis::Client,
    conn: OnceCell<ConnectionManager>,
    timeout: Duration,
    script: redis::Script,
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// Counts one hit in a window key and sets the key's expiry on its first hit, atomically.
const INCR_WINDOW: &str = r"
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
return n
";

impl RedisStore {
    /// A store for `url` (`redis://host:port/db`, `rediss://…`, `redis+unix:///path`).
    /// Nothing is connected until first use.
    ///
    /// # Errors
    /// The URL is not a Redis URL.
    pub fn new(url: &str, timeout: Duration) -> Result<Self, String> {
        let client = redis::Client::open(url).map_err(|e| format!("invalid Redis URL: {e}"))?;
        Ok(Self {
            client,
            conn: OnceCell::new(),
            timeout,
            script: redis::Script::new(INCR_WINDOW),
        })
    }

    async fn connection(&self) -> Result<ConnectionManager, StoreError> {
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(Some(self.timeout))
            .set_number_of_retries(1);
        self.conn
            .get_or_try_init(|| ConnectionManager::new_with_config(self.client.clone(), config))
            .await
            .cloned()
            .map_err(|e| StoreError(e.to_string()))
    }

    /// Adds one hit to `key` and returns the count; the key expires after `ttl`.
    ///
    /// # Errors
    /// Redis did not answer within the timeout, or answered with an error.
    pub async fn incr_window(&self, key: &[u8], ttl: Duration) -> Result<u64, StoreError> {
        let work = async {
            let mut conn = self.connection().await?;
            self.script
                .key(key)
                .arg(ttl.as_millis() as u64)
                .invoke_async::<u64>(&mut conn)
                .await
                .map_err(|e| StoreError(e.to_string()))
        };
        tokio::time::timeout(self.timeout, work)
            .await
            .map_err(|_| StoreError(format!("no answer within {:?}", self.timeout)))?
    }
}
