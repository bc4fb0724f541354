//! Live updates: `api/events` pushes the overview as server-sent events every refresh period.
//! Every open page shares one store read per half period ([`LiveCache`]), so ten open tabs
//! cost what one does.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use axum::extract::State;
use axum::http::HeaderName;
use axum::http::request::Parts;
use axum::response::sse::{Event, Sse};
use futures::Stream;
use ralph_core::StoreError;

use crate::AccessLevel;
use crate::access::{Reader, ask};
use crate::error::Chain;
use crate::page::Shared;
use crate::view::OverviewView;

/// The last overview read for live updates, reused while younger than half the refresh
/// period and no action has changed the queues since.
#[derive(Default)]
pub(crate) struct LiveCache {
    /// Bumped by every action: a cached overview from an older generation is not reused.
    generation: AtomicU64,
    /// (generation, read at, overview). Held across the store read, so concurrent streams
    /// wait for one read instead of each making their own.
    slot: tokio::sync::Mutex<Option<(u64, Instant, Arc<OverviewView>)>>,
}

impl LiveCache {
    /// Forgets the cached overview (an action changed the queues).
    pub(crate) fn invalidate(&self) {
        self.generation.fetch_add(1, Ordering::Relaxed);
    }

    /// The overview, cached or fresh.
    async fn get(&self, shared: &Shared) -> Result<Arc<OverviewView>, StoreError> {
        let mut slot = self.slot.lock().await;
        let generation = self.generation.load(Ordering::Relaxed);
        if let Some((cached_generation, at, view)) = slot.as_ref()
            && *cached_generation == generation
            && at.elapsed() < shared.refresh / 2
        {
            return Ok(Arc::clone(view));
        }
        let view = Arc::new(shared.overview().await?);
        *slot = Some((generation, Instant::now(), Arc::clone(&view)));
        Ok(view)
    }
}

/// One event: `overview` with the JSON of `api/queues`, or `store-error` with a generic text.
async fn next_event(shared: &Shared) -> Event {
    let unavailable = || Event::default().event("store-error").data("the job store is unavailable");
    match shared.live.get(shared).await {
        Ok(view) => match serde_json::to_string(&*view) {
            Ok(json) => Event::default().event("overview").data(json),
            Err(error) => {
                tracing::error!(target: "ralph::web", %error, "live update: overview does not serialize");
                unavailable()
            }
        },
        Err(error) => {
            tracing::warn!(target: "ralph::web", error = %Chain(&error), "live update: the job store failed");
            unavailable()
        }
    }
}

/// `GET api/events`: an `overview` event at once, then one every refresh period, until the
/// client goes away or loses access: the hook is asked again, with the parts of the request
/// that opened the stream, before every event (a session that expired or a permission that
/// was withdrawn ends the stream; the page's script then polls `api/queues` once, gets the
/// 403 and stops).
pub(crate) async fn events(
    State(shared): State<Arc<Shared>>,
    _: Reader,
    parts: Parts,
) -> ([(HeaderName, &'static str); 1], Sse<impl Stream<Item = Result<Event, Infallible>>>) {
    let stream = futures::stream::unfold((shared, parts, true), |(shared, parts, first)| async move {
        let event = if first {
            // Tells the browser how soon to reconnect after a drop.
            next_event(&shared).await.retry(shared.refresh)
        } else {
            tokio::time::sleep(shared.refresh).await;
            if ask(&parts, &shared).await.level < AccessLevel::Read {
                tracing::info!(target: "ralph::web", "live updates ended: access withdrawn");
                return None;
            }
            next_event(&shared).await
        };
        Some((Ok(event), (shared, parts, false)))
    });
    // Proxies that buffer responses (nginx) would hold the events back.
    ([(HeaderName::from_static("x-accel-buffering"), "no")], Sse::new(stream))
}
