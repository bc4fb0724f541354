//! # ralph-web
//!
//! An operator status page for ralph-rs's durable job queues, as an axum [`Router`] a host
//! application nests at any path: the queues' counts, the jobs of each queue by state (filter
//! by payload text, keyset paging), retry / discard / pause actions, the workers' heartbeats,
//! the running scans' progress, live updates, a JSON API, Prometheus metrics and `healthz`.
//! It reads and acts only through ralph-core's [`QueueAdmin`](ralph_core::QueueAdmin), so any
//! store works (ralph-store's SQLite, PostgreSQL and MariaDB, or the host's own).
//!
//! ```
//! use std::sync::Arc;
//!
//! use axum::Router;
//! use axum::http::request::Parts;
//! use ralph_core::testing::MemoryStore;
//! use ralph_web::{Access, StatusPage};
//!
//! let store = Arc::new(MemoryStore::new()); // a host passes its ralph-store store here
//! let page = StatusPage::new(store)
//!     // Closed by default: the host says who may read and who may act. Here, a header its
//!     // authenticating proxy sets (check your real session instead).
//!     .access(|request: &Parts| match request.headers.get("x-ops-user").and_then(|v| v.to_str().ok()) {
//!         Some(user) => Access::act(user),
//!         None => Access::none(),
//!     })
//!     .count_cap(10_000);
//! let app: Router = Router::new().nest("/ops/jobs", page.router());
//! # drop(app);
//! ```
//!
//! ## Routes (relative to the mount point)
//!
//! | route | what |
//! |---|---|
//! | `GET ` (the mount itself) | redirects to `queues` |
//! | `GET queues` | every queue: pending, scheduled, retrying, running, expired, dead, done in the last hour, oldest pending age, paused |
//! | `GET queues/{queue}?state=&q=&after=&limit=` | one queue's jobs by state, filtered by payload text, one page at a time, with the actions |
//! | `GET workers`, `GET scans` | heartbeats (stale ones marked), running scans' progress |
//! | `GET api/queues` | the overview as JSON (what live updates push) |
//! | `GET api/queues/{queue}/jobs?state=&q=&after=&limit=` | `{queue, state, q, jobs, next}`; pass `next` as `after` for the next page |
//! | `GET api/queues/{queue}/count?state=&q=` | `{queue, state, q, count: {count, capped, display}}` |
//! | `GET api/workers`, `GET api/scans` | the same data as the pages |
//! | `GET api/events` | server-sent `overview` events every refresh period (the hook is asked again before each) |
//! | `POST api/queues/{queue}/retry`, `…/discard` | `ids` (JSON) or `id=…&id=…` (form): at most 1000; `state` they must still be in: `dead` (the default) or `pending` |
//! | `POST api/queues/{queue}/bulk-retry`, `…/bulk-discard` | `state` (`dead`, the default, or `pending`), `q`, `limit` (required, 1 to 1000) |
//! | `POST api/queues/{queue}/pause`, `…/resume` | |
//! | `GET metrics` | Prometheus text format |
//! | `GET healthz` | 200 `ok` when the store answers, else 503; needs no access |
//!
//! `after` is a keyset cursor, `<RFC 3339 time>_<job id>`; one that does not parse is a 400.
//!
//! ## Access and safety
//!
//! Without an [`AccessHook`] every route but `healthz` answers 403. [`AccessLevel::Read`]
//! opens the pages, JSON, live updates and metrics; [`AccessLevel::Act`] also the actions.
//! Actions are POST only and refused with 403 when the browser marks them cross-site: an
//! `Origin` header must match `Host`, a `Sec-Fetch-Site` header must be `same-origin` or
//! `none` (a proxy in front must pass `Host` through unchanged). Every action leaves an
//! event on the `ralph::web::audit` tracing target with `actor`, `action`, `queue`,
//! `requested`, `changed` and `outcome`, invalid and failed ones included (requests refused
//! by the access or origin checks are logged as warnings on `ralph::web`); what an action
//! changed is also recorded by the store in its change history, as done by the hook's actor
//! (a user), in the same transaction as the change (see [`QueueAdmin::retry_jobs`]).
//! Retry and discard act only on jobs still in the state the page showed (`state`, default
//! `dead`): a job that another operator retried, or a worker claimed, since the page was read
//! is left alone (one retried and dead again by then is dead, and is acted on).
//!
//! [`QueueAdmin::retry_jobs`]: ralph_core::QueueAdmin::retry_jobs
//!
//! Everything shown is HTML-escaped; the pages carry no inline script or style, so they work
//! under `Content-Security-Policy: default-src 'self'` (which they send). Store errors are
//! logged on the `ralph::web` target and answered with a generic text. Without JavaScript the
//! pages still work: links and forms; with it, counts update in place.

mod access;
mod actions;
mod assets;
mod cursor;
mod error;
mod format;
mod html;
mod links;
mod live;
mod metrics;
mod page;
mod query;
mod read;
mod view;

pub use access::{Access, AccessHook, AccessLevel};
pub use page::{DEFAULT_COUNT_CAP, DEFAULT_REFRESH, DEFAULT_STALE_AFTER, MAX_ACTION_JOBS, StatusPage};

#[doc(no_inline)]
pub use axum::Router;
