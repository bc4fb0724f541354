//! `GET metrics`: the overview, the workers and the running scans in the Prometheus text
//! exposition format (version 0.0.4).

use std::fmt::Write as _;
use std::sync::Arc;

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use chrono::Utc;

use crate::access::Reader;
use crate::error::WebError;
use crate::page::Shared;
use crate::view::{self, COUNTS, OverviewView, ScanView, WorkerView};

/// Escapes a label value: backslash, double quote and line feed.
pub(crate) fn escape_label(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// Writes one metric family; `samples` are (labels, value) with labels already rendered.
fn family(out: &mut String, name: &str, help: &str, samples: impl IntoIterator<Item = (String, f64)>) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} gauge");
    for (labels, value) in samples {
        if !value.is_finite() {
            continue;
        }
        if labels.is_empty() {
            let _ = writeln!(out, "{name} {value}");
        } else {
            let _ = writeln!(out, "{name}{{{labels}}} {value}");
        }
    }
}

/// `queue="…"`.
fn queue_label(queue: &str) -> String {
    format!("queue=\"{}\"", escape_label(queue))
}

#[allow(clippy::cast_precision_loss)] // counts far below 2^52
fn float(n: u64) -> f64 {
    n as f64
}

/// The whole exposition.
pub(crate) fn render(overview: &OverviewView, workers: &[WorkerView], scans: &[ScanView]) -> String {
    let mut out = String::new();
    let per_state = |capped: bool| {
        overview
            .queues
            .iter()
            .flat_map(move |q| {
                COUNTS.iter().zip(q.counts()).map(move |((state, _), count)| {
                    let labels = format!("{},state=\"{state}\"", queue_label(&q.queue));
                    (labels, if capped { f64::from(u8::from(count.capped)) } else { float(count.count) })
                })
            })
            .collect::<Vec<_>>()
    };
    family(&mut out, "ralph_queue_jobs", "Jobs per queue and state; a capped count shows the cap.", per_state(false));
    family(
        &mut out,
        "ralph_queue_count_capped",
        "1 when the count reached the cap (there are more jobs than ralph_queue_jobs says).",
        per_state(true),
    );
    family(
        &mut out,
        "ralph_queue_count_cap",
        "Where the status page stops counting.",
        [(String::new(), float(overview.cap))],
    );
    family(
        &mut out,
        "ralph_queue_oldest_pending_age_seconds",
        "How long the oldest claimable job has waited (0 when none waits).",
        overview.queues.iter().map(|q| (queue_label(&q.queue), q.oldest_pending_age_secs.unwrap_or(0.0))),
    );
    family(
        &mut out,
        "ralph_queue_paused",
        "1 when claims on the queue are paused.",
        overview.queues.iter().map(|q| (queue_label(&q.queue), f64::from(u8::from(q.paused)))),
    );
    let stale = workers.iter().filter(|w| w.stale).count();
    family(
        &mut out,
        "ralph_workers",
        "Workers with a heartbeat on record.",
        [(String::new(), float(workers.len() as u64))],
    );
    family(
        &mut out,
        "ralph_workers_stale",
        "Workers whose last heartbeat is older than the page's stale_after.",
        [(String::new(), float(stale as u64))],
    );
    let scan_labels = |s: &ScanView| format!("worker=\"{}\",job=\"{}\"", escape_label(&s.worker), s.job);
    family(
        &mut out,
        "ralph_scan_done",
        "Items a running scan has finished.",
        scans.iter().map(|s| (scan_labels(s), float(s.done))),
    );
    family(
        &mut out,
        "ralph_scan_total",
        "Items in a running scan, when known.",
        scans.iter().filter_map(|s| s.total.map(|t| (scan_labels(s), float(t)))),
    );
    family(
        &mut out,
        "ralph_scan_alive",
        "Items of a running scan that answered (hosts up).",
        scans.iter().map(|s| (scan_labels(s), float(s.alive))),
    );
    family(
        &mut out,
        "ralph_scan_rate_per_second",
        "Items a running scan finishes per second, so far.",
        scans.iter().filter_map(|s| s.per_sec.map(|r| (scan_labels(s), r))),
    );
    family(
        &mut out,
        "ralph_scan_congestion_events",
        "Congestion events a running scan met (ENOBUFS, rate halvings).",
        scans.iter().map(|s| (scan_labels(s), float(s.congestion_events))),
    );
    out
}

/// `GET metrics`.
pub(crate) async fn metrics(State(shared): State<Arc<Shared>>, _: Reader) -> Result<Response, WebError> {
    let (overview, beats) = futures::try_join!(shared.overview(), shared.admin.workers())?;
    let now = Utc::now();
    let workers: Vec<WorkerView> = beats.iter().map(|b| WorkerView::new(b, now, shared.stale_after)).collect();
    let scans = view::scans(&beats, now, shared.stale_after);
    let body = render(&overview, &workers, &scans);
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], body).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape_label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
        assert_eq!(escape_label("plain"), "plain");
    }
}
