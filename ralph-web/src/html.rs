//! The pages, rendered with maud (which escapes every value it is given: payloads and queue
//! names are arbitrary text). Every link is relative to the page it is on: `base` leads from
//! the page to the mount point (`./` or `../`).

use std::time::Duration;

use maud::{DOCTYPE, Markup, html};
use ralph_core::{JobInfo, JobState};

use crate::access::{Access, AccessLevel};
use crate::assets::VERSION;
use crate::format;
use crate::links::{encode, query};
use crate::page::MAX_ACTION_JOBS;
use crate::query::{Notice, Selection};
use crate::view::{COUNTS, CountView, OverviewView, QueueView, ScanView, WorkerView};

/// Jobs per page of the HTML list, by default and at most.
pub(crate) const PAGE_LIMIT: (usize, usize) = (50, 500);

/// Which page the navigation marks as current.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Nav {
    Queues,
    Workers,
    Scans,
}

/// The frame of every page: head, navigation, live status.
fn layout(base: &str, title: &str, nav: Nav, access: &Access, refresh: Duration, content: &Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                meta name="referrer" content="same-origin";
                title { (title) " – job queues" }
                link rel="stylesheet" href={ (base) "assets/app.css?v=" (VERSION) };
                script src={ (base) "assets/app.js?v=" (VERSION) } defer {}
            }
            body data-base=(base) data-refresh-ms=(refresh.as_millis()) {
                header.top {
                    span.brand { "Job queues" }
                    nav {
                        a class=[(nav == Nav::Queues).then_some("current")] href={ (base) "queues" } { "Queues" }
                        a class=[(nav == Nav::Workers).then_some("current")] href={ (base) "workers" } { "Workers" }
                        a class=[(nav == Nav::Scans).then_some("current")] href={ (base) "scans" } { "Scans" }
                    }
                    span #live {}
                }
                main {
                    (content)
                    footer {
                        "Signed in as " (access.actor)
                        @if access.level == AccessLevel::Read { " (read only)" }
                        " · "
                        a href={ (base) "api/queues" } { "JSON" }
                        " · "
                        a href={ (base) "metrics" } { "metrics" }
                    }
                }
            }
        }
    }
}

/// A count cell that live updates find by queue and field.
fn count_cell(queue: &str, field: &str, count: &CountView) -> Markup {
    html! {
        td.num.capped[count.capped] data-queue=(queue) data-field=(field)
            title=[count.capped.then(|| format!("more than {} (counting stops there)", count.count))] {
            (count.display)
        }
    }
}

/// Pause or resume, for those who may act.
fn pause_form(base: &str, queue: &QueueView, return_to: &str) -> Markup {
    let action = if queue.paused { "resume" } else { "pause" };
    html! {
        form.inline method="post" action={ (base) "api/queues/" (encode(&queue.queue)) "/" (action) } {
            input type="hidden" name="return_to" value=(return_to);
            button type="submit" { @if queue.paused { "Resume" } @else { "Pause" } }
        }
    }
}

/// The table of queue counts (the overview's, or one queue's).
fn counts_table(base: &str, queues: &[QueueView], access: &Access, link: bool) -> Markup {
    let act = access.level == AccessLevel::Act;
    html! {
        table.queues {
            thead {
                tr {
                    th { "Queue" }
                    @for (_, title) in COUNTS { th.num { (title) } }
                    th { "Oldest pending" }
                    th { "Claims" }
                    @if act && link { th {} }
                }
            }
            tbody {
                @for q in queues {
                    tr {
                        td {
                            @if link { a href={ (base) "queues/" (encode(&q.queue)) } { (q.queue) } }
                            @else { (q.queue) }
                        }
                        @for ((field, _), count) in COUNTS.iter().zip(q.counts()) { (count_cell(&q.queue, field, count)) }
                        td data-queue=(q.queue) data-field="oldest_pending_age" {
                            (q.oldest_pending_age.as_deref().unwrap_or("–"))
                        }
                        td.paused[q.paused] data-queue=(q.queue) data-field="paused" {
                            @if q.paused { "paused" } @else { "active" }
                        }
                        @if act && link { td { (pause_form(base, q, "overview")) } }
                    }
                }
            }
        }
    }
}

/// What an action that redirected here did.
fn notice(notice: Option<Notice>) -> Markup {
    html! {
        @if let Some(n) = notice {
            p.notice role="status" {
                (n.action) ": " (n.changed) " of " (n.requested) " changed."
            }
        }
    }
}

/// `queues`: every queue's counts.
pub(crate) fn overview(view: &OverviewView, access: &Access, refresh: Duration, done: Option<Notice>) -> Markup {
    let base = "./";
    let content = html! {
        h1 { "Queues" }
        (notice(done))
        @if view.queues.is_empty() {
            p.empty { "No queue holds jobs or is paused." }
        } @else {
            (counts_table(base, &view.queues, access, true))
        }
        p.note {
            "Counts stop at " (view.cap) "; a count shown with + has reached it. "
            "Pending jobs are claimable now; scheduled and retrying ones wait for their time."
        }
    };
    layout(base, "Queues", Nav::Queues, access, refresh, &content)
}

/// What the page of one queue shows.
pub(crate) struct QueuePage<'a> {
    pub(crate) counts: &'a QueueView,
    pub(crate) selection: &'a Selection,
    pub(crate) jobs: &'a [JobInfo],
    /// The cursor of the next page.
    pub(crate) next: Option<&'a str>,
    /// Jobs matching the state and filter, capped.
    pub(crate) matching: CountView,
    pub(crate) notice: Option<Notice>,
}

/// `queues/{queue}`: counts, jobs by state, filter, paging and actions.
pub(crate) fn queue(page: &QueuePage<'_>, access: &Access, refresh: Duration) -> Markup {
    let base = "../";
    let queue = page.counts.queue.as_str();
    let here = format!("{base}queues/{}", encode(queue));
    let api = format!("{base}api/queues/{}", encode(queue));
    let state = page.selection.state.as_str();
    let q = page.selection.q.as_deref().unwrap_or("");
    let after = page.selection.after.map(|c| crate::cursor::encode(&c)).unwrap_or_default();
    // Paging links keep a limit the reader chose.
    let limit = if page.selection.limit == PAGE_LIMIT.0 { String::new() } else { page.selection.limit.to_string() };
    let act = access.level == AccessLevel::Act;
    let actionable = matches!(page.selection.state, JobState::Dead | JobState::Pending);
    let bulk_limit = page.matching.count.clamp(1, MAX_ACTION_JOBS as u64);
    let content = html! {
        p.crumbs { a href={ (base) "queues" } { "Queues" } " /" }
        h1 { (queue) @if page.counts.paused { " " span.badge.paused { "paused" } } }
        (notice(page.notice))
        (counts_table(base, std::slice::from_ref(page.counts), access, false))
        @if act { (pause_form(base, page.counts, "queue")) }

        nav.tabs {
            @for s in JobState::ALL {
                a class=[(s == page.selection.state).then_some("current")] href={ (here) (query(&[("state", s.as_str()), ("q", q)])) } {
                    (s.as_str())
                }
            }
        }
        form.filter method="get" action=(here) {
            input type="hidden" name="state" value=(state);
            label { "Payload contains " input type="search" name="q" value=(q) maxlength="255"; }
            button type="submit" { "Filter" }
            @if !q.is_empty() { a href={ (here) (query(&[("state", state)])) } { "clear" } }
        }
        p {
            (page.matching.display) " " (state) " job" @if page.matching.count != 1 || page.matching.capped { "s" }
            @if !q.is_empty() { " whose payload contains “" (q) "”" }
            @if page.selection.after.is_some() {
                " · " a href={ (here) (query(&[("state", state), ("q", q), ("limit", &limit)])) } { "first page" }
            }
        }
        @if page.jobs.is_empty() {
            p.empty { "No jobs here." }
        } @else {
            @if act && actionable {
                form #jobs method="post" action={ (api) "/retry" } {
                    input type="hidden" name="state" value=(state);
                    input type="hidden" name="q" value=(q);
                    input type="hidden" name="after" value=(after);
                    (jobs_table(page.jobs, true))
                    div.actions {
                        button type="submit" formaction={ (api) "/retry" } { "Retry selected" }
                        button.danger type="submit" formaction={ (api) "/discard" } { "Discard selected" }
                    }
                }
            } @else {
                (jobs_table(page.jobs, false))
            }
            nav.pages {
                @if let Some(next) = page.next {
                    a rel="next" href={ (here) (query(&[("state", state), ("q", q), ("limit", &limit), ("after", next)])) } { "Next page →" }
                }
            }
        }
        @if act && actionable && page.matching.count > 0 {
            section.bulk {
                h2 { "All matching" }
                p {
                    (page.matching.display) " " (state) " job" @if page.matching.count != 1 || page.matching.capped { "s" }
                    " match" @if !q.is_empty() { " “" (q) "”" } ". "
                    "One action takes at most " (MAX_ACTION_JOBS) ", oldest first."
                }
                @for (action, label, danger) in [("bulk-retry", "Retry", false), ("bulk-discard", "Discard", true)] {
                    form.inline method="post" action={ (api) "/" (action) } {
                        input type="hidden" name="state" value=(state);
                        input type="hidden" name="q" value=(q);
                        label { (label) " up to " input type="number" name="limit" min="1" max=(MAX_ACTION_JOBS) value=(bulk_limit) required; }
                        button class=[danger.then_some("danger")] type="submit" { (label) " matching" }
                    }
                }
            }
        }
    };
    layout(base, queue, Nav::Queues, access, refresh, &content)
}

/// The jobs of one page; with a checkbox per job when they can be selected for an action.
fn jobs_table(jobs: &[JobInfo], selectable: bool) -> Markup {
    html! {
        table.jobs {
            thead {
                tr {
                    @if selectable { th { span.note { "select" } } }
                    th.num { "Id" } th { "Payload" } th.num { "Attempts" } th { "Worker" }
                    th { "Last error" } th { "Due / lease until" } th { "Enqueued" } th { "Finished" }
                }
            }
            tbody {
                @for job in jobs {
                    tr {
                        @if selectable {
                            td { input type="checkbox" name="id" value=(job.id) aria-label={ "job " (job.id) }; }
                        }
                        td.num { (job.id) }
                        td { code.payload title=(format::truncate(&job.payload, 2000)) { (format::truncate(&job.payload, 200)) } }
                        td.num { (job.attempts) }
                        td { (job.worker.as_deref().unwrap_or("")) }
                        td { (job.last_error.as_deref().map(|e| format::truncate(e, 200)).unwrap_or_default()) }
                        td { time datetime=(format::rfc3339(job.due_at)) { (format::time(job.due_at)) } }
                        td { time datetime=(format::rfc3339(job.enqueued_at)) { (format::time(job.enqueued_at)) } }
                        td { @if let Some(at) = job.finished_at { time datetime=(format::rfc3339(at)) { (format::time(at)) } } }
                    }
                }
            }
        }
    }
}

/// `workers`: the heartbeats.
pub(crate) fn workers(workers: &[WorkerView], stale_after: Duration, access: &Access, refresh: Duration) -> Markup {
    let base = "./";
    let now = chrono::Utc::now();
    let content = html! {
        h1 { "Workers" }
        @if workers.is_empty() {
            p.empty { "No worker has sent a heartbeat." }
        } @else {
            table.workers {
                thead { tr { th { "Name" } th { "Host" } th.num { "PID" } th { "Queues" } th { "Current jobs" } th { "Started" } th { "Last seen" } } }
                tbody {
                    @for w in workers {
                        tr.stale[w.stale] {
                            td { (w.name) @if w.stale { " " span.badge.stale { "stale" } } }
                            td { (w.host) }
                            td.num { (w.pid) }
                            td {
                                @for (i, q) in w.queues.iter().enumerate() {
                                    @if i > 0 { ", " }
                                    a href={ (base) "queues/" (encode(q)) } { (q) }
                                }
                            }
                            td { (w.current_jobs.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")) }
                            td { time datetime=(format::rfc3339(w.started_at)) { (format::time(w.started_at)) } }
                            td {
                                time datetime=(format::rfc3339(w.last_seen)) { (format::duration(format::age(w.last_seen, now))) " ago" }
                            }
                        }
                    }
                }
            }
        }
        p.note { "A worker is stale when its last heartbeat is older than " (format::duration(stale_after)) "." }
    };
    layout(base, "Workers", Nav::Workers, access, refresh, &content)
}

/// `scans`: the running jobs that report progress.
pub(crate) fn scans(scans: &[ScanView], access: &Access, refresh: Duration) -> Markup {
    let base = "./";
    let secs = |s: f64| format::duration(Duration::try_from_secs_f64(s).unwrap_or_default());
    let content = html! {
        h1 { "Live scans" }
        @if scans.is_empty() {
            p.empty { "No running job reports progress." }
        } @else {
            table.scans {
                thead {
                    tr {
                        th { "Worker" } th.num { "Job" } th { "Progress" } th.num { "Done / total" } th.num { "Alive" }
                        th.num { "Rate" } th.num { "ETA" } th.num { "Congestion" } th.num { "Elapsed" }
                    }
                }
                tbody {
                    @for s in scans {
                        tr.stale[s.stale] {
                            td { (s.worker) " on " (s.host) @if s.stale { " " span.badge.stale { "stale" } } }
                            td.num { (s.job) }
                            td {
                                @if let Some(total) = s.total { progress value=(s.done.min(total)) max=(total) {} }
                                @if let Some(p) = s.percent { " " (format!("{p:.1}")) " %" }
                            }
                            td.num { (s.done) " / " @if let Some(t) = s.total { (t) } @else { "?" } }
                            td.num { (s.alive) }
                            td.num { @if let Some(r) = s.per_sec { (format!("{r:.1}")) "/s" } @else { "–" } }
                            td.num { @if let Some(e) = s.eta_secs { (secs(e)) } @else { "–" } }
                            td.num { (s.congestion_events) }
                            td.num { (secs(s.elapsed_secs)) }
                        }
                    }
                }
            }
        }
    };
    layout(base, "Scans", Nav::Scans, access, refresh, &content)
}
