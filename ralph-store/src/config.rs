//! Pool configuration: a serde-loadable struct with by-value builder methods.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// How the store's one connection pool behaves, and how its writes retry transient conflicts.
///
/// Load it from the host application's configuration (durations are whole or fractional
/// seconds) or build it in code:
///
/// ```
/// use std::time::Duration;
/// use ralph_store::PoolConfig;
///
/// let from_toml: PoolConfig = serde_json::from_str(r#"{"max_connections": 32, "idle_timeout": 30}"#)?;
/// assert_eq!(from_toml.max_connections, 32);
/// assert_eq!(from_toml.idle_timeout, Some(Duration::from_secs(30)));
///
/// let built = PoolConfig::default().max_connections(32).idle_timeout(Some(Duration::from_secs(30)));
/// assert_eq!(built, from_toml);
/// # Ok::<(), serde_json::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct PoolConfig {
    /// Most connections open at once (default 10).
    pub max_connections: u32,
    /// Connections kept open even when idle (default 0).
    pub min_connections: u32,
    /// Close a connection idle this long (default 10 minutes; `None`: never).
    #[serde(with = "opt_secs")]
    pub idle_timeout: Option<Duration>,
    /// Close a connection this old (default 30 minutes; `None`: never).
    #[serde(with = "opt_secs")]
    pub max_lifetime: Option<Duration>,
    /// How long a caller waits for a free connection before [`ralph_core::StoreError::Backend`]
    /// (default 30 seconds).
    #[serde(with = "secs")]
    pub acquire_timeout: Duration,
    /// SQLite only: how long a writer waits for the database lock (default 5 seconds).
    #[serde(with = "secs")]
    pub busy_timeout: Duration,
    /// Ping a pooled connection before handing it out (default `true`, as sqlx does).
    ///
    /// The ping is one more round trip per checkout: on PostgreSQL and MariaDB it is most of
    /// the cost of a short read (turned off, an unchanged LDAP login with cached groups went
    /// from about 2,100 to 3,300 logins/s at c=1 in `benches/benches/ldap_login.rs`). sqlx also
    /// checks every connection when it is returned, so turned off, only a connection that broke
    /// while idle (the server restarted) reaches a caller, whose call then fails once with
    /// [`StoreError::Backend`](ralph_core::StoreError::Backend). Turn it off where that is
    /// acceptable and the database is reached over a reliable network.
    pub test_before_acquire: bool,
    /// How write transactions that hit a transient conflict are retried.
    pub conflict_retry: ConflictRetry,
}

/// The store-wide retry policy for transient conflicts: a deadlock or lock wait time-out
/// (MySQL/MariaDB 1213, 1205), a serialization failure or deadlock (PostgreSQL 40001, 40P01),
/// a busy or locked database (SQLite `SQLITE_BUSY`, `SQLITE_LOCKED`).
///
/// The whole write transaction is rolled back and run again after a jittered, exponentially
/// growing delay, so a caller never sees a conflict that a second try would have resolved.
/// Any other error is returned at once. Every retry is a `ralph::store` tracing event and
/// counted in [`SqlStore::conflict_retries`](crate::SqlStore::conflict_retries); a write
/// that still conflicts after `max_attempts` fails with
/// [`StoreError::Contended`](ralph_core::StoreError::Contended), nothing written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct ConflictRetry {
    /// Attempts in all, the first one included (default 10; 1 turns retries off).
    pub max_attempts: u32,
    /// Delay before the first retry, doubled for each further one, with random jitter
    /// (default 2 ms).
    #[serde(with = "secs")]
    pub min_delay: Duration,
    /// Longest delay between two attempts (default 250 ms).
    #[serde(with = "secs")]
    pub max_delay: Duration,
    /// No retry is scheduled once this long has passed since the first attempt began (default
    /// 10 s).
    /// A lock wait time-out (MySQL 1205) or a busy SQLite file is reported only after the
    /// server's own wait (`innodb_lock_wait_timeout`, 50 s by default; `busy_timeout`): this
    /// keeps one stuck lock holder from holding callers and pool connections for minutes.
    #[serde(with = "secs")]
    pub max_elapsed: Duration,
}

impl Default for ConflictRetry {
    fn default() -> Self {
        Self {
            max_attempts: 10,
            min_delay: Duration::from_millis(2),
            max_delay: Duration::from_millis(250),
            max_elapsed: Duration::from_secs(10),
        }
    }
}

impl ConflictRetry {
    /// No retries: the first transient conflict is returned as
    /// [`StoreError::Contended`](ralph_core::StoreError::Contended).
    #[must_use]
    pub fn none() -> Self {
        Self { max_attempts: 1, ..Self::default() }
    }

    /// Sets [`ConflictRetry::max_attempts`] (0 is taken as 1: one attempt, no retries).
    #[must_use]
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = attempts;
        self
    }

    /// Sets [`ConflictRetry::max_elapsed`].
    #[must_use]
    pub fn max_elapsed(mut self, elapsed: Duration) -> Self {
        self.max_elapsed = elapsed;
        self
    }

    /// Sets [`ConflictRetry::min_delay`] and [`ConflictRetry::max_delay`].
    #[must_use]
    pub fn delays(mut self, min: Duration, max: Duration) -> Self {
        self.min_delay = min;
        self.max_delay = max.max(min);
        self
    }
}

impl Default for PoolConfig {
    fn default() -> Self {
        Self {
            max_connections: 10,
            min_connections: 0,
            idle_timeout: Some(Duration::from_secs(600)),
            max_lifetime: Some(Duration::from_secs(1800)),
            acquire_timeout: Duration::from_secs(30),
            busy_timeout: Duration::from_secs(5),
            test_before_acquire: true,
            conflict_retry: ConflictRetry::default(),
        }
    }
}

impl PoolConfig {
    /// Sets [`PoolConfig::max_connections`] (0 is taken as 1; SQLite in memory always uses 1).
    #[must_use]
    pub fn max_connections(mut self, max: u32) -> Self {
        self.max_connections = max;
        self
    }

    /// Sets [`PoolConfig::min_connections`] (a value above `max_connections` is taken as
    /// `max_connections`).
    #[must_use]
    pub fn min_connections(mut self, min: u32) -> Self {
        self.min_connections = min;
        self
    }

    /// Sets [`PoolConfig::idle_timeout`].
    #[must_use]
    pub fn idle_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.idle_timeout = timeout;
        self
    }

    /// Sets [`PoolConfig::max_lifetime`].
    #[must_use]
    pub fn max_lifetime(mut self, lifetime: Option<Duration>) -> Self {
        self.max_lifetime = lifetime;
        self
    }

    /// Sets [`PoolConfig::acquire_timeout`].
    #[must_use]
    pub fn acquire_timeout(mut self, timeout: Duration) -> Self {
        self.acquire_timeout = timeout;
        self
    }

    /// Sets [`PoolConfig::busy_timeout`] (SQLite).
    #[must_use]
    pub fn busy_timeout(mut self, timeout: Duration) -> Self {
        self.busy_timeout = timeout;
        self
    }

    /// Sets [`PoolConfig::test_before_acquire`].
    #[must_use]
    pub fn test_before_acquire(mut self, test: bool) -> Self {
        self.test_before_acquire = test;
        self
    }

    /// Sets [`PoolConfig::conflict_retry`].
    #[must_use]
    pub fn conflict_retry(mut self, retry: ConflictRetry) -> Self {
        self.conflict_retry = retry;
        self
    }

    /// The sqlx pool options these settings describe.
    pub(crate) fn pool_options<DB: sqlx::Database>(&self) -> sqlx::pool::PoolOptions<DB> {
        sqlx::pool::PoolOptions::new()
            .max_connections(self.max_connections.max(1))
            .min_connections(self.min_connections.min(self.max_connections.max(1)))
            .idle_timeout(self.idle_timeout)
            .max_lifetime(self.max_lifetime)
            .acquire_timeout(self.acquire_timeout)
            .test_before_acquire(self.test_before_acquire)
    }
}

mod secs {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(value: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_f64(value.as_secs_f64())
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        let secs = f64::deserialize(deserializer)?;
        Duration::try_from_secs_f64(secs).map_err(serde::de::Error::custom)
    }
}

mod opt_secs {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    // `serialize_with` hands over the field by reference, so the `&Option` is not ours to change.
    #[allow(clippy::ref_option)]
    pub(super) fn serialize<S: Serializer>(value: &Option<Duration>, serializer: S) -> Result<S::Ok, S::Error> {
        match value {
            Some(d) => serializer.serialize_some(&d.as_secs_f64()),
            None => serializer.serialize_none(),
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Duration>, D::Error> {
        Option::<f64>::deserialize(deserializer)?
            .map(|secs| Duration::try_from_secs_f64(secs).map_err(serde::de::Error::custom))
            .transpose()
    }
}
