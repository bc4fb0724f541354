//! [`StatusPage`]: the builder a host application configures, and the router it returns.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::routing::{get, post};
use ralph_core::queue::MAX_CAP;
use ralph_core::{QueueAdmin, StoreError};

use crate::access::AccessHook;
use crate::live::LiveCache;
use crate::view::{OverviewView, QueueView};
use crate::{actions, assets, live, metrics, read};

/// Default [`StatusPage::count_cap`].
pub const DEFAULT_COUNT_CAP: u64 = 10_000;
/// Default [`StatusPage::stale_after`]: three missed beats of a 10 s heartbeat.
pub const DEFAULT_STALE_AFTER: Duration = Duration::from_secs(30);
/// Default [`StatusPage::refresh`].
pub const DEFAULT_REFRESH: Duration = Duration::from_secs(2);
/// Most jobs one action takes: ids named, or the bulk actions' `limit`.
pub const MAX_ACTION_JOBS: usize = 1_000;

/// The status page of the job queues, configured by value; [`StatusPage::router`] makes the
/// [`Router`] the host nests wherever it likes.
///
/// Access is closed until [`StatusPage::access`] installs a hook: without one, every route
/// but `healthz` answers 403.
#[derive(Clone)]
pub struct StatusPage {
    admin: Arc<dyn QueueAdmin>,
    hook: Option<Arc<dyn AccessHook>>,
    count_cap: u64,
    stale_after: Duration,
    refresh: Duration,
}

impl fmt::Debug for StatusPage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StatusPage")
            .field("hook", &self.hook.as_ref().map(|_| "installed"))
            .field("count_cap", &self.count_cap)
            .field("stale_after", &self.stale_after)
            .field("refresh", &self.refresh)
            .finish_non_exhaustive()
    }
}

impl StatusPage {
    /// A page over `admin`'s queues, with the defaults and no access hook (closed).
    #[must_use]
    pub fn new(admin: Arc<dyn QueueAdmin>) -> Self {
        Self {
            admin,
            hook: None,
            count_cap: DEFAULT_COUNT_CAP,
            stale_after: DEFAULT_STALE_AFTER,
            refresh: DEFAULT_REFRESH,
        }
    }

    /// Installs the hook that decides what each request may do (see [`AccessHook`]).
    #[must_use]
    pub fn access(mut self, hook: impl AccessHook) -> Self {
        self.hook = Some(Arc::new(hook));
        self
    }

    /// Where counting stops (default 10,000; clamped to 1 ..= [`MAX_CAP`]): a count that reaches
    /// it shows as `10k+`, and no count reads more than `cap + 1` index entries.
    #[must_use]
    pub fn count_cap(mut self, cap: u64) -> Self {
        self.count_cap = cap.clamp(1, MAX_CAP);
        self
    }

    /// How long after its last heartbeat a worker is marked stale (default 30 s).
    #[must_use]
    pub fn stale_after(mut self, after: Duration) -> Self {
        self.stale_after = after;
        self
    }

    /// How often live updates are pushed, and polled when server-sent events fail (default
    /// 2 s; at least 100 ms).
    #[must_use]
    pub fn refresh(mut self, every: Duration) -> Self {
        self.refresh = every.max(Duration::from_millis(100));
        self
    }

    /// The router: pages, JSON, live updates, metrics and `healthz`, every link relative, so
    /// it works at any prefix (`Router::new().nest("/ops/jobs", page.router())`) and for any
    /// host state `S`.
    pub fn router<S>(&self) -> Router<S>
    where
        S: Clone + Send + Sync + 'static,
    {
        let shared = Arc::new(Shared {
            admin: Arc::clone(&self.admin),
            hook: self.hook.clone(),
            count_cap: self.count_cap,
            stale_after: self.stale_after,
            refresh: self.refresh,
            live: LiveCache::default(),
        });
        Router::new()
            .route("/", get(read::root))
            .route("/queues", get(read::overview_page))
            .route("/queues/{queue}", get(read::queue_page))
            .route("/workers", get(read::workers_page))
            .route("/scans", get(read::scans_page))
            .route("/assets/app.css", get(assets::css))
            .route("/assets/app.js", get(assets::js))
            .route("/healthz", get(read::healthz))
            .route("/metrics", get(metrics::metrics))
            .route("/api/queues", get(read::api_queues))
            .route("/api/queues/{queue}/jobs", get(read::api_jobs))
            .route("/api/queues/{queue}/count", get(read::api_count))
            .route("/api/queues/{queue}/{action}", post(actions::act))
            .route("/api/workers", get(read::api_workers))
            .route("/api/scans", get(read::api_scans))
            .route("/api/events", get(live::events))
            .layer(axum::middleware::map_response(assets::security_headers))
            .with_state(shared)
    }
}

/// What every handler reads: the page's configuration and the live-update cache.
pub(crate) struct Shared {
    pub(crate) admin: Arc<dyn QueueAdmin>,
    pub(crate) hook: Option<Arc<dyn AccessHook>>,
    pub(crate) count_cap: u64,
    pub(crate) stale_after: Duration,
    pub(crate) refresh: Duration,
    pub(crate) live: LiveCache,
}

impl Shared {
    /// The overview, fresh from the store.
    pub(crate) async fn overview(&self) -> Result<OverviewView, StoreError> {
        let queues = self.admin.overview(self.count_cap).await?;
        Ok(OverviewView { cap: self.count_cap, queues: queues.into_iter().map(QueueView::from).collect() })
    }
}
