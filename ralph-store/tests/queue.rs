//! Single-process queue tests run against SQLite, PostgreSQL and MariaDB: claim, ack, retry
//! with back-off, dead letters, lease expiry and reclaim, statistics, exclusive claims.

mod queue_common;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use ralph_core::history::Actor;
use ralph_core::{
    CappedCount, FailOutcome, JobFilter, JobProgress, JobQueue, JobState, QueueAdmin, RetryPolicy, WorkerBeat,
};

fn payloads(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{{\"n\":{i},\"name\":\"Zażółć gęślą jaźń 🚀 {i}\"}}")).collect()
}

const LEASE: Duration = Duration::from_secs(30);

/// Now, to the microsecond (what every backend keeps).
fn micros_now() -> chrono::DateTime<Utc> {
    chrono::DateTime::from_timestamp_micros(Utc::now().timestamp_micros()).expect("now")
}

/// The job `id` of `queue` as an operator's list shows it, whatever its state.
async fn job_info<Q: QueueAdmin>(q: &Q, queue: &str, id: ralph_core::Id<ralph_core::Job>) -> ralph_core::JobInfo {
    for state in JobState::ALL {
        let jobs = q.list_jobs(queue, state, 1000).await.expect("list");
        if let Some(job) = jobs.into_iter().find(|j| j.id == id) {
            return job;
        }
    }
    panic!("job {id:?} is not listed");
}

/// The operator's calls: list by state, retry and discard (pending and dead jobs only, of the
/// named queue only), pause and resume, purge by age, worker heartbeats.
async fn admin_lists_retries_discards_pauses_and_purges<Q: JobQueue + QueueAdmin>(q: &Q) {
    let op = Actor::user("op");
    let ids = q.enqueue("admin", &payloads(4)).await.expect("enqueue");
    let pending = q.list_jobs("admin", JobState::Pending, 10).await.expect("list");
    assert_eq!(pending.iter().map(|j| j.id).collect::<Vec<_>>(), ids, "oldest first");
    assert_eq!(q.list_jobs("admin", JobState::Pending, 2).await.expect("list").len(), 2, "limit");
    assert!(q.list_jobs("other", JobState::Pending, 10).await.expect("list").is_empty());

    let first = q.claim("admin", 1, LEASE, "worker-a").await.expect("claim").remove(0);
    let once = RetryPolicy { max_attempts: 1, ..RetryPolicy::default() };
    assert_eq!(q.fail(&first, "boom", &once).await.expect("fail"), FailOutcome::Dead);
    let dead = q.list_jobs("admin", JobState::Dead, 10).await.expect("dead");
    assert_eq!(dead.len(), 1);
    assert_eq!((dead[0].id, dead[0].attempts), (first.id, 1));
    assert_eq!((dead[0].worker.as_deref(), dead[0].last_error.as_deref()), (Some("worker-a"), Some("boom")));
    assert!(dead[0].finished_at.is_some());

    let running = q.claim("admin", 1, LEASE, "worker-b").await.expect("claim").remove(0);
    assert_eq!(
        q.retry_jobs("admin", &[running.id], JobState::Dead, &op).await.expect("retry"),
        0,
        "a running job is its worker's"
    );
    assert_eq!(q.discard_jobs("admin", &[running.id], JobState::Pending, &op).await.expect("discard"), 0);
    assert_eq!(
        q.retry_jobs("other", &[first.id], JobState::Dead, &op).await.expect("retry"),
        0,
        "only jobs of the named queue"
    );
    assert_eq!(q.retry_jobs("admin", &[first.id], JobState::Pending, &op).await.expect("retry"), 0, "not pending");
    assert!(q.retry_jobs("admin", &[first.id], JobState::Running, &op).await.is_err_and(|e| e.is_invalid()));
    assert!(q.discard_jobs("admin", &[first.id], JobState::Done, &op).await.is_err_and(|e| e.is_invalid()));
    assert_eq!(q.retry_jobs("admin", &[first.id], JobState::Dead, &op).await.expect("retry"), 1);
    let again = q.list_jobs("admin", JobState::Pending, 10).await.expect("list");
    let retried = again.iter().find(|j| j.id == first.id).expect("dead job is pending again");
    assert_eq!(retried.attempts, 0, "a fresh attempt count");
    assert_eq!(q.discard_jobs("admin", &[ids[3]], JobState::Pending, &op).await.expect("discard"), 1);
    assert_eq!(q.discard_jobs("admin", &[ids[3]], JobState::Pending, &op).await.expect("discard again"), 0);
    assert_eq!(q.stats("admin").await.expect("stats").pending, 2);

    assert!(q.set_paused("admin", true, &op).await.expect("pause"), "a change");
    assert!(!q.set_paused("admin", true, &op).await.expect("pause again"), "no change");
    assert!(!q.set_paused("never", false, &op).await.expect("resume"), "never paused");
    assert!(q.set_paused("idle", true, &op).await.expect("pause a queue without jobs"));
    assert!(q.claim("admin", 10, LEASE, "w").await.expect("claim").is_empty(), "a paused queue hands out nothing");
    assert!(q.stats("admin").await.expect("stats").paused);
    let all = q.all_stats().await.expect("all");
    let paused: Vec<(&str, bool)> = all.iter().map(|s| (s.queue.as_str(), s.paused)).collect();
    assert_eq!(paused, [("admin", true), ("idle", true)]);
    assert!(q.set_paused("admin", false, &op).await.expect("resume"));
    assert!(!q.stats("admin").await.expect("stats").paused);
    assert_eq!(q.claim("admin", 10, LEASE, "w").await.expect("claim").len(), 2);
    assert!(q.set_paused(" ", true, &op).await.is_err_and(|e| e.is_invalid()));

    assert!(q.ack(&running).await.expect("ack"));
    let done_dead = q.claim("admin", 0, LEASE, "w").await.expect("nothing");
    assert!(done_dead.is_empty());
    assert_eq!(q.purge(Duration::from_secs(3600), Duration::from_secs(3600)).await.expect("purge"), 0, "too young");
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(q.purge(Duration::ZERO, Duration::ZERO).await.expect("purge"), 1, "the done job");
    assert_eq!(q.stats("admin").await.expect("stats").done, 0);

    let started = micros_now() - chrono::Duration::hours(1);
    let mut beat = WorkerBeat {
        name: "worker-a".into(),
        host: "scanner-1".into(),
        pid: 4242,
        queues: vec!["admin".into(), "discovery.dc1".into()],
        current_jobs: vec![running.id],
        started_at: started,
        last_seen: chrono::DateTime::UNIX_EPOCH,
        progress: vec![JobProgress {
            job: running.id,
            total: Some(4096),
            done: 1024,
            alive: 700,
            congestion_events: 2,
            elapsed: Duration::from_millis(2500),
        }],
    };
    q.heartbeat(&beat).await.expect("first beat");
    let workers = q.workers().await.expect("workers");
    assert_eq!(workers.len(), 1);
    assert_eq!(
        (&workers[0].queues, &workers[0].current_jobs, workers[0].started_at),
        (&beat.queues, &beat.current_jobs, started)
    );
    assert!(workers[0].last_seen > Utc::now() - chrono::Duration::minutes(1), "the store's clock, not ours");
    assert_eq!(workers[0].progress, beat.progress, "progress round-trips");
    assert_eq!(workers[0].progress[0].eta(), Some(Duration::from_millis(7500)));
    beat.current_jobs.clear();
    beat.progress.clear();
    q.heartbeat(&beat).await.expect("second beat");
    let workers = q.workers().await.expect("workers");
    assert_eq!((workers.len(), workers[0].current_jobs.len()), (1, 0), "one row per worker, updated");
    assert!(workers[0].progress.is_empty());
    assert!(q.heartbeat(&WorkerBeat { name: " ".into(), ..beat }).await.is_err_and(|e| e.is_invalid()));
}

/// The status page's reads: the capped overview of every queue, jobs found by payload text and
/// paged by cursor, and capped counts of what a bulk action would touch.
async fn overview_finds_and_counts<Q: JobQueue + QueueAdmin>(q: &Q) {
    let mut payloads: Vec<String> = (0..30).map(|i| format!("{{\"target\":\"198.18.{i}.0/24\"}}")).collect();
    payloads.push("{\"target\":\"Rack_50%!\"}".into());
    let ids = q.enqueue("ov.scan", &payloads).await.expect("enqueue");
    q.enqueue("ov.other", &payloads[..2]).await.expect("enqueue");
    q.set_paused("ov.idle", true, &Actor::user("op")).await.expect("pause");
    // 31 pending; claim 5 (2 of them fail for a retry, 1 dies, 1 is acked, 1 keeps running).
    let claimed = q.claim("ov.scan", 5, LEASE, "w").await.expect("claim");
    assert_eq!(claimed.len(), 5);
    let later = RetryPolicy { max_attempts: 3, base_backoff: Duration::from_secs(600), ..RetryPolicy::default() };
    let once = RetryPolicy { max_attempts: 1, ..RetryPolicy::default() };
    assert!(matches!(q.fail(&claimed[0], "x", &later).await.expect("fail"), FailOutcome::Retry { .. }));
    assert!(matches!(q.fail(&claimed[1], "x", &later).await.expect("fail"), FailOutcome::Retry { .. }));
    assert_eq!(q.fail(&claimed[2], "x", &once).await.expect("fail"), FailOutcome::Dead);
    assert!(q.ack(&claimed[3]).await.expect("ack"));

    let all = q.overview(1_000).await.expect("overview");
    let names: Vec<&str> = all.iter().map(|o| o.queue.as_str()).collect();
    assert_eq!(names, ["ov.idle", "ov.other", "ov.scan"], "queues with jobs and paused ones, by name");
    assert!(all[0].paused && !all[2].paused);
    assert_eq!(all[0].pending, CappedCount::exact(0));
    let scan = &all[2];
    let exact = |o: &ralph_core::QueueOverview| {
        [o.pending, o.scheduled, o.retrying, o.running, o.expired, o.dead, o.done_last_hour].map(|c| c.count)
    };
    assert_eq!(exact(scan), [26, 0, 2, 1, 0, 1, 1], "{scan:?}");
    // One queue alone: the same counts (the oldest age grows between the reads).
    let alone = q.queue_overview("ov.scan", 1_000).await.expect("one queue");
    assert_eq!((alone.queue.as_str(), exact(&alone), alone.paused), ("ov.scan", exact(scan), false));
    assert!(alone.oldest_pending_age >= scan.oldest_pending_age);
    let idle = q.queue_overview("ov.idle", 1_000).await.expect("paused queue");
    assert!(idle.paused && exact(&idle) == [0; 7]);
    let none = q.queue_overview("ov.none", 1_000).await.expect("unknown queue");
    assert_eq!((none.queue.as_str(), exact(&none), none.paused), ("ov.none", [0; 7], false));
    let capped = q.queue_overview("ov.scan", 5).await.expect("capped");
    assert_eq!((capped.pending.count, capped.pending.capped), (5, true));
    assert!(scan.oldest_pending_age.is_some());
    assert_eq!(all[1].pending, CappedCount::exact(2));

    // Capped: 26 pending seen as "10+", the smaller counts exact.
    let capped = q.overview(10).await.expect("overview").remove(2);
    assert_eq!(capped.pending, CappedCount { count: 10, capped: true });
    assert_eq!(capped.pending.to_string(), "10+");
    assert_eq!(capped.retrying, CappedCount::exact(2));

    // Payload text, case-insensitive; `%`, `_` and `!` are plain characters.
    let pending = JobFilter::state(JobState::Pending);
    let hits = q.find_jobs("ov.scan", &pending.clone().containing("RACK_50%!"), None, 10).await.expect("find");
    assert_eq!(hits.iter().map(|j| j.id).collect::<Vec<_>>(), [ids[30]]);
    assert!(q.find_jobs("ov.scan", &pending.clone().containing("rack%50"), None, 10).await.expect("find").is_empty());
    assert!(q.find_jobs("ov.scan", &pending.clone().containing("_"), None, 10).await.expect("find").len() == 1);
    let in_18_1 = pending.clone().containing("198.18.1");
    // 198.18.1.x, 198.18.10-19.x: 11 jobs, of which claimed[1] (198.18.1.0) waits for a retry
    // (still pending) and is due last.
    assert_eq!(q.count_jobs("ov.scan", &in_18_1, 100).await.expect("count"), CappedCount::exact(11));
    assert_eq!(q.count_jobs("ov.scan", &in_18_1, 5).await.expect("count"), CappedCount { count: 5, capped: true });
    assert_eq!(q.count_jobs("ov.scan", &pending, 1_000).await.expect("count"), CappedCount::exact(28));
    assert_eq!(
        q.count_jobs("ov.scan", &JobFilter::state(JobState::Dead), 1_000).await.expect("count"),
        CappedCount::exact(1)
    );

    // Pages by (due_at, id): every pending job once, in order, however the page size falls.
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let page = q.find_jobs("ov.scan", &pending, after, 4).await.expect("page");
        let Some(last) = page.last() else { break };
        after = Some(last.cursor());
        seen.extend(page.iter().map(|j| (j.due_at, j.id)));
    }
    assert_eq!(seen.len(), 28);
    assert!(seen.windows(2).all(|w| w[0] < w[1]), "strictly ordered: {seen:?}");
    assert_eq!(seen[26..].iter().map(|s| s.1).collect::<Vec<_>>(), [claimed[0].id, claimed[1].id], "retries due last");

    let long = JobFilter::state(JobState::Pending).containing("x".repeat(256));
    assert!(q.find_jobs("ov.scan", &long, None, 10).await.is_err_and(|e| e.is_invalid()));
    assert!(q.count_jobs("ov.scan", &long, 10).await.is_err_and(|e| e.is_invalid()));
    assert_eq!(q.count_jobs("ov.scan", &pending.containing(""), 1).await.expect("no filter").count, 1);
}

/// A job whose worker dies on every attempt is dead-lettered once its lease expired after the
/// last allowed attempt (`q` allows two), instead of being claimed for ever.
async fn spent_leases_are_dead_lettered<Q: JobQueue + QueueAdmin>(q: &Q) {
    let short = Duration::from_millis(50);
    q.enqueue("poison", &payloads(1)).await.expect("enqueue");
    for attempt in 1..=2 {
        let jobs = q.claim("poison", 1, short, "dies").await.expect("claim");
        assert_eq!(jobs.len(), 1, "attempt {attempt}");
        assert_eq!(jobs[0].attempts, attempt);
        tokio::time::sleep(Duration::from_millis(120)).await;
    }
    assert!(q.claim("poison", 1, LEASE, "lives").await.expect("claim").is_empty(), "out of attempts");
    let dead = q.list_jobs("poison", JobState::Dead, 10).await.expect("dead");
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].last_error.as_deref(), Some("lease expired 2 times"));
    let stats = q.stats("poison").await.expect("stats");
    assert_eq!((stats.dead, stats.running, stats.expired, stats.pending), (1, 0, 0, 0));
}

async fn claim_ack_and_stats<Q: JobQueue + QueueAdmin>(q: &Q) {
    let ids = q.enqueue("discovery.dc1", &payloads(3)).await.expect("enqueue");
    assert_eq!(ids.len(), 3);
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids in order: {ids:?}");
    q.enqueue("discovery.dc2", &payloads(1)).await.expect("enqueue other queue");

    let stats = q.stats("discovery.dc1").await.expect("stats");
    assert_eq!((stats.pending, stats.running, stats.expired, stats.dead, stats.done), (3, 0, 0, 0, 0));
    assert!(stats.oldest_pending_age.is_some());

    let before = Utc::now();
    let jobs = q.claim("discovery.dc1", 2, LEASE, "w1").await.expect("claim");
    assert_eq!(jobs.iter().map(|j| j.id).collect::<Vec<_>>(), ids[..2].to_vec(), "oldest first");
    assert_eq!(jobs[0].payload, payloads(1)[0], "payload round-trips byte for byte");
    assert!(jobs.iter().all(|j| j.attempts == 1 && j.queue == "discovery.dc1"));
    assert!(jobs[0].lease_until > before + chrono::Duration::seconds(25), "lease {:?}", jobs[0].lease_until);

    let stats = q.stats("discovery.dc1").await.expect("stats");
    assert_eq!((stats.pending, stats.running), (1, 2));

    assert!(q.ack(&jobs[0]).await.expect("ack"));
    let acked = job_info(q, "discovery.dc1", jobs[0].id).await;
    // An ack repeated by the same claim (a retry after its reply was lost) reports the job
    // done and changes nothing.
    assert!(q.ack(&jobs[0]).await.expect("second ack"), "a repeated ack reports the job done");
    assert_eq!(job_info(q, "discovery.dc1", jobs[0].id).await, acked, "a repeated ack changes nothing");
    let stats = q.stats("discovery.dc1").await.expect("stats");
    assert_eq!((stats.pending, stats.running, stats.done), (1, 1, 1));

    let all = q.all_stats().await.expect("all stats");
    let names: Vec<_> = all.iter().map(|s| (s.queue.as_str(), s.pending)).collect();
    assert_eq!(names, vec![("discovery.dc1", 1), ("discovery.dc2", 1)]);

    let empty = q.stats("nobody").await.expect("stats of an empty queue");
    assert_eq!((empty.pending, empty.done, empty.oldest_pending_age), (0, 0, None));
}

async fn retry_backoff_and_dead_letter<Q: JobQueue + QueueAdmin>(q: &Q) {
    // A back-off of seconds: the checks made while the job waits take milliseconds, so they
    // run well before it is due even on a slow, loaded machine.
    let policy =
        RetryPolicy { max_attempts: 2, base_backoff: Duration::from_secs(3), max_backoff: Duration::from_secs(10) };
    q.enqueue("retry", &payloads(1)).await.expect("enqueue");
    let job = q.claim("retry", 1, LEASE, "w").await.expect("claim").remove(0);
    let before = Utc::now();
    let FailOutcome::Retry { at } = q.fail(&job, "boom", &policy).await.expect("fail") else {
        panic!("first failure must be retried");
    };
    let after = Utc::now();
    // The store computes `at` from its own clock while `fail` runs; allow for timestamp rounding.
    let slop = chrono::Duration::milliseconds(250);
    let backoff = chrono::Duration::from_std(policy.base_backoff).expect("backoff");
    assert!(at > before + backoff - slop && at < after + backoff + slop, "{:?}", at - before);
    assert!(q.claim("retry", 1, LEASE, "w").await.expect("claim").is_empty(), "back-off is honoured");
    let stats = q.stats("retry").await.expect("stats");
    assert_eq!((stats.pending, stats.running), (1, 0), "a job waiting for its retry counts as pending");
    // A fail repeated by the same claim reports what the first did and changes nothing; an
    // ack by that claim does not turn the failed job into a done one.
    let failed = job_info(q, "retry", job.id).await;
    assert_eq!(q.fail(&job, "again", &policy).await.expect("repeated fail"), FailOutcome::Retry { at });
    assert!(!q.ack(&job).await.expect("ack after fail"), "a failed job is not acked");
    assert_eq!(job_info(q, "retry", job.id).await, failed, "nothing changed");
    assert_eq!(failed.last_error.as_deref(), Some("boom"));

    let due = (at - Utc::now()).to_std().unwrap_or_default();
    tokio::time::sleep(due + Duration::from_millis(500)).await;
    let again = q.claim("retry", 1, LEASE, "w").await.expect("claim").remove(0);
    assert_eq!((again.id, again.attempts), (job.id, 2));
    assert_ne!(again.lease_token, job.lease_token);
    assert_eq!(q.fail(&again, "boom twice", &policy).await.expect("fail"), FailOutcome::Dead);
    assert_eq!(q.fail(&again, "boom thrice", &policy).await.expect("repeated fail"), FailOutcome::Dead);
    assert_eq!(q.fail(&job, "stale", &policy).await.expect("stale fail"), FailOutcome::LeaseLost);
    let stats = q.stats("retry").await.expect("stats");
    assert_eq!((stats.pending, stats.running, stats.dead), (0, 0, 1));
    assert!(q.claim("retry", 1, LEASE, "w").await.expect("claim").is_empty(), "dead jobs are not delivered");
}

/// A job an operator retried belongs to no claim: a fail or ack its old claim repeats is
/// told the lease is lost, not what it did before.
async fn operator_retry_ends_the_claim<Q: JobQueue + QueueAdmin>(q: &Q) {
    let policy = RetryPolicy { max_attempts: 3, ..RetryPolicy::default() };
    let ids = q.enqueue("reset", &payloads(1)).await.expect("enqueue");
    let job = q.claim("reset", 1, LEASE, "w").await.expect("claim").remove(0);
    assert!(matches!(q.fail(&job, "boom", &policy).await.expect("fail"), FailOutcome::Retry { .. }));
    let op = Actor::user("op");
    assert_eq!(q.retry_jobs("reset", &ids, JobState::Pending, &op).await.expect("retry"), 1);
    assert_eq!(q.fail(&job, "boom", &policy).await.expect("repeated fail"), FailOutcome::LeaseLost);
    assert!(!q.ack(&job).await.expect("ack"));
    let again = q.claim("reset", 1, LEASE, "w").await.expect("claim").remove(0);
    assert_eq!((again.id, again.attempts), (job.id, 1), "the operator's retry reset the attempts");
    assert!(q.ack(&again).await.expect("ack"));
    assert_eq!(q.fail(&job, "late", &policy).await.expect("stale fail"), FailOutcome::LeaseLost);
}

/// A job handed back with the rest of its work waits, pending, as the same job with the new
/// payload, without the claim counting as an attempt; a repeated hand-back changes nothing; a
/// stale or finished claim cannot hand it back.
async fn requeue_hands_the_rest_back<Q: JobQueue + QueueAdmin>(q: &Q) {
    let ids = q.enqueue("rest", &payloads(1)).await.expect("enqueue");
    let job = q.claim("rest", 1, LEASE, "w").await.expect("claim").remove(0);
    assert!(q.requeue(&job, "{\"rest\":\"żółw\"}").await.expect("requeue"));
    let waiting = job_info(q, "rest", ids[0]).await;
    assert_eq!((waiting.state, waiting.attempts), (JobState::Pending, 0), "{waiting:?}");
    assert_eq!(waiting.payload, "{\"rest\":\"żółw\"}");
    assert!(q.requeue(&job, "{\"rest\":\"żółw\"}").await.expect("repeat"), "a repeat reports it done");
    assert_eq!(q.fail(&job, "late", &RetryPolicy::default()).await.expect("fail"), FailOutcome::LeaseLost);
    assert_eq!(job_info(q, "rest", ids[0]).await, waiting, "a repeat changes nothing");
    assert!(!q.ack(&job).await.expect("ack"), "a handed-back job is not done");
    let stats = q.stats("rest").await.expect("stats");
    assert_eq!((stats.pending, stats.running, stats.done), (1, 0, 0), "one job, not two");

    let again = q.claim("rest", 1, LEASE, "w").await.expect("claim").remove(0);
    assert_eq!((again.id, again.attempts, again.payload.as_str()), (job.id, 1, "{\"rest\":\"żółw\"}"));
    assert!(!q.requeue(&job, "stale").await.expect("stale requeue"), "the old claim is over");
    assert!(q.ack(&again).await.expect("ack"));
    assert!(!q.requeue(&again, "late").await.expect("requeue after ack"), "a done job stays done");
    assert_eq!(job_info(q, "rest", ids[0]).await.state, JobState::Done);

    // A claim that failed its job cannot then hand it back, nor is a repeated fail taken for
    // a hand-back.
    let policy = RetryPolicy { max_attempts: 3, base_backoff: Duration::from_secs(60), ..RetryPolicy::default() };
    let ids = q.enqueue("rest.failed", &payloads(1)).await.expect("enqueue");
    let job = q.claim("rest.failed", 1, LEASE, "w").await.expect("claim").remove(0);
    assert!(matches!(q.fail(&job, "boom", &policy).await.expect("fail"), FailOutcome::Retry { .. }));
    assert!(!q.requeue(&job, &job.payload).await.expect("requeue after fail"), "the failure stands");
    let failed = job_info(q, "rest.failed", ids[0]).await;
    assert_eq!((failed.attempts, failed.last_error.as_deref()), (1, Some("boom")), "{failed:?}");
    assert!(q.claim("rest.failed", 1, LEASE, "w").await.expect("claim").is_empty(), "the back-off holds");
}

async fn lease_expiry_and_reclaim<Q: JobQueue + QueueAdmin>(q: &Q) {
    q.enqueue("lease", &payloads(2)).await.expect("enqueue");
    let short = Duration::from_millis(300);
    let first = q.claim("lease", 2, short, "dies").await.expect("claim");
    assert_eq!(first.len(), 2);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let stats = q.stats("lease").await.expect("stats");
    assert_eq!((stats.running, stats.expired, stats.pending), (0, 2, 0));

    // One is taken back by a claim directly, the other by reclaim.
    let retaken = q.claim("lease", 1, LEASE, "lives").await.expect("claim");
    assert_eq!(retaken.len(), 1);
    assert_eq!(retaken[0].attempts, 2);
    assert_eq!(q.reclaim_expired("lease").await.expect("reclaim"), 1);
    assert_eq!(q.reclaim_expired("lease").await.expect("reclaim again"), 0);
    let stats = q.stats("lease").await.expect("stats");
    assert_eq!((stats.pending, stats.running, stats.expired), (1, 1, 0));

    // The dead worker's leases no longer hold.
    let stale = first.iter().find(|j| j.id == retaken[0].id).expect("same job");
    assert!(!q.ack(stale).await.expect("stale ack"));
    assert!(!q.extend_lease(stale, LEASE).await.expect("stale extend"));
    assert!(q.extend_lease(&retaken[0], Duration::from_secs(120)).await.expect("extend"));
    assert!(q.ack(&retaken[0]).await.expect("ack"));
    assert!(!q.ack(stale).await.expect("stale ack"), "a job another claim acked is not the stale claim's");
    let rest = q.claim("lease", 5, LEASE, "lives").await.expect("claim");
    assert_eq!(rest.len(), 1);
    assert!(q.ack(&rest[0]).await.expect("ack"));
    let stats = q.stats("lease").await.expect("stats");
    assert_eq!((stats.pending, stats.running, stats.done), (0, 0, 2));
}

async fn exclusive_concurrent_claims<Q: JobQueue + QueueAdmin + 'static>(q: Arc<Q>) {
    let ids = q.enqueue("race", &payloads(300)).await.expect("enqueue");
    let mut tasks = Vec::new();
    for w in 0..8 {
        let q = Arc::clone(&q);
        tasks.push(tokio::spawn(async move {
            let mut seen = Vec::new();
            loop {
                let jobs = q.claim("race", 7, LEASE, &format!("w{w}")).await.expect("claim");
                if jobs.is_empty() {
                    break;
                }
                for job in jobs {
                    assert!(q.ack(&job).await.expect("ack"));
                    seen.push(job.id);
                }
            }
            seen
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.expect("task"));
    }
    let unique: HashSet<_> = all.iter().copied().collect();
    assert_eq!(all.len(), 300, "every job once");
    assert_eq!(unique, ids.into_iter().collect::<HashSet<_>>());
    assert_eq!(q.stats("race").await.expect("stats").done, 300);
}

async fn batch_ack<Q: JobQueue + QueueAdmin>(q: &Q) {
    q.enqueue("acks", &payloads(6)).await.expect("enqueue");
    let a = q.claim("acks", 3, LEASE, "a").await.expect("claim");
    let b = q.claim("acks", 3, Duration::from_millis(300), "b").await.expect("claim");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let c = q.claim("acks", 3, LEASE, "c").await.expect("claim");
    assert_eq!(c.iter().map(|j| j.id).collect::<Vec<_>>(), b.iter().map(|j| j.id).collect::<Vec<_>>());
    let stale_and_live: Vec<_> = a.iter().chain(&b).cloned().collect();
    assert_eq!(q.ack_batch(&stale_and_live).await.expect("ack a+b"), 3, "only a's leases hold");
    assert_eq!(q.ack_batch(&c).await.expect("ack c"), 3);
    assert_eq!(q.ack_batch(&c).await.expect("ack c again"), 3, "a repeated ack by the same claim");
    let twice = [c[0].clone(), c[0].clone()];
    assert_eq!(q.ack_batch(&twice).await.expect("ack one job twice"), 1, "a job named twice counts once");
    assert_eq!(q.ack_batch(&b).await.expect("ack b again"), 0, "b's jobs are done, but by c's claim");
    let mixed: Vec<_> = c.iter().chain(&b).cloned().collect();
    assert_eq!(q.ack_batch(&mixed).await.expect("ack c+b"), 3, "one transaction over two claims");
    assert_eq!(q.ack_batch(&[]).await.expect("nothing"), 0);
    let stats = q.stats("acks").await.expect("stats");
    assert_eq!((stats.done, stats.running, stats.expired, stats.pending), (6, 0, 0, 0));
}

async fn bad_input<Q: JobQueue + QueueAdmin>(q: &Q) {
    assert!(q.enqueue("", &payloads(1)).await.is_err_and(|e| e.is_invalid()));
    assert!(q.enqueue(&"q".repeat(300), &payloads(1)).await.is_err_and(|e| e.is_invalid()));
    assert!(q.claim(" ", 1, LEASE, "w").await.is_err_and(|e| e.is_invalid()));
    assert!(q.claim("bad", 0, LEASE, "w").await.expect("max 0").is_empty());
    assert!(q.enqueue("bad", &[]).await.expect("nothing").is_empty());
    // Enormous leases are clamped, not overflowed.
    q.enqueue("bad", &payloads(1)).await.expect("enqueue");
    let job = q.claim("bad", usize::MAX, Duration::MAX, "w").await.expect("huge lease").remove(0);
    assert!(q.ack(&job).await.expect("ack"));
}

async fn many_jobs_in_one_batch<Q: JobQueue + QueueAdmin>(q: &Q) {
    // More rows than one statement's bind-parameter budget on SQLite.
    let ids = q.enqueue("bulk", &payloads(40_000)).await.expect("enqueue");
    assert_eq!(ids.len(), 40_000);
    assert!(ids.windows(2).all(|w| w[0] < w[1]));
    assert_eq!(q.stats("bulk").await.expect("stats").pending, 40_000);
    let jobs = q.claim("bulk", 1000, LEASE, "w").await.expect("claim");
    assert_eq!(jobs.iter().map(|j| j.id).collect::<Vec<_>>(), ids[..1000].to_vec());
}

#[cfg(feature = "sqlite")]
mod sqlite {
    use super::*;
    use ralph_store::queue::SqliteQueue;

    async fn queue() -> (SqliteQueue, tempfile::TempDir) {
        let (pool, dir) = queue_common::lite::pool(8).await;
        let q = SqliteQueue::new(pool);
        q.migrate().await.expect("migrate");
        (q, dir)
    }

    #[tokio::test]
    async fn sqlite_claim_ack_and_stats() {
        let (q, _dir) = queue().await;
        claim_ack_and_stats(&q).await;
    }
    #[tokio::test]
    async fn sqlite_retry_backoff_and_dead_letter() {
        let (q, _dir) = queue().await;
        retry_backoff_and_dead_letter(&q).await;
    }
    #[tokio::test]
    async fn sqlite_lease_expiry_and_reclaim() {
        let (q, _dir) = queue().await;
        lease_expiry_and_reclaim(&q).await;
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn sqlite_exclusive_concurrent_claims() {
        let (q, _dir) = queue().await;
        exclusive_concurrent_claims(Arc::new(q)).await;
    }
    #[tokio::test]
    async fn sqlite_batch_ack() {
        let (q, _dir) = queue().await;
        batch_ack(&q).await;
    }
    #[tokio::test]
    async fn sqlite_bad_input() {
        let (q, _dir) = queue().await;
        bad_input(&q).await;
    }
    #[tokio::test]
    async fn sqlite_admin() {
        let (q, _dir) = queue().await;
        admin_lists_retries_discards_pauses_and_purges(&q).await;
    }
    #[tokio::test]
    async fn sqlite_spent_leases_are_dead_lettered() {
        let (q, _dir) = queue().await;
        spent_leases_are_dead_lettered(&q.with_job_policy(RetryPolicy { max_attempts: 2, ..RetryPolicy::default() }))
            .await;
    }
    #[tokio::test]
    async fn sqlite_overview_finds_and_counts() {
        let (q, _dir) = queue().await;
        overview_finds_and_counts(&q).await;
    }
    #[tokio::test]
    async fn memory_overview_finds_and_counts() {
        overview_finds_and_counts(&ralph_core::testing::MemoryStore::new()).await;
    }
    #[tokio::test]
    async fn memory_claim_ack_and_stats() {
        claim_ack_and_stats(&ralph_core::testing::MemoryStore::new()).await;
    }
    #[tokio::test]
    async fn memory_retry_backoff_and_dead_letter() {
        retry_backoff_and_dead_letter(&ralph_core::testing::MemoryStore::new()).await;
    }
    #[tokio::test]
    async fn memory_lease_expiry_and_reclaim() {
        lease_expiry_and_reclaim(&ralph_core::testing::MemoryStore::new()).await;
    }
    #[tokio::test]
    async fn memory_batch_ack() {
        batch_ack(&ralph_core::testing::MemoryStore::new()).await;
    }
    #[tokio::test]
    async fn memory_requeue_hands_the_rest_back() {
        requeue_hands_the_rest_back(&ralph_core::testing::MemoryStore::new()).await;
    }
    #[tokio::test]
    async fn sqlite_requeue_hands_the_rest_back() {
        let (q, _dir) = queue().await;
        requeue_hands_the_rest_back(&q).await;
    }
    #[tokio::test]
    async fn memory_operator_retry_ends_the_claim() {
        operator_retry_ends_the_claim(&ralph_core::testing::MemoryStore::new()).await;
    }
    #[tokio::test]
    async fn sqlite_operator_retry_ends_the_claim() {
        let (q, _dir) = queue().await;
        operator_retry_ends_the_claim(&q).await;
    }
    #[tokio::test]
    async fn memory_admin() {
        admin_lists_retries_discards_pauses_and_purges(&ralph_core::testing::MemoryStore::new()).await;
    }
    #[tokio::test]
    async fn memory_spent_leases_are_dead_lettered() {
        let policy = RetryPolicy { max_attempts: 2, ..RetryPolicy::default() };
        spent_leases_are_dead_lettered(&ralph_core::testing::MemoryStore::new().with_job_policy(policy)).await;
    }
    #[tokio::test]
    async fn sqlite_many_jobs_in_one_batch() {
        let (q, _dir) = queue().await;
        many_jobs_in_one_batch(&q).await;
    }
    /// A row the driver cannot decode is reported as corrupt, not as an opaque backend failure.
    #[tokio::test]
    async fn sqlite_undecodable_job_is_corrupt() {
        let (q, _dir) = queue().await;
        q.enqueue("broken", &payloads(1)).await.expect("enqueue");
        sqlx::query("UPDATE queue_jobs SET payload = x'ff00'").execute(q.pool()).await.expect("break the payload");
        let error = q.claim("broken", 1, LEASE, "w").await.expect_err("undecodable payload");
        assert!(matches!(error, ralph_core::StoreError::Corrupt { entity: "job", .. }), "{error:?}");
    }
}

#[cfg(feature = "postgres")]
mod postgres {
    use super::*;
    use queue_common::pg;
    use ralph_store::queue::PgQueue;

    macro_rules! pg_test {
        ($name:ident, $tag:literal, |$q:ident| $body:expr) => {
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $name() {
                let Some(db) = pg::fresh($tag).await else { return };
                let $q = PgQueue::new(pg::pool(&db, 8).await);
                $q.migrate().await.expect("migrate");
                $body.await;
                $q.pool().close().await;
                pg::drop_db(db).await;
            }
        };
    }

    pg_test!(pg_claim_ack_and_stats, "qstats", |q| claim_ack_and_stats(&q));
    pg_test!(pg_retry_backoff_and_dead_letter, "qretry", |q| retry_backoff_and_dead_letter(&q));
    pg_test!(pg_lease_expiry_and_reclaim, "qlease", |q| lease_expiry_and_reclaim(&q));
    pg_test!(pg_exclusive_concurrent_claims, "qrace", |q| exclusive_concurrent_claims(Arc::new(q.clone())));
    pg_test!(pg_batch_ack, "qacks", |q| batch_ack(&q));
    pg_test!(pg_operator_retry_ends_the_claim, "qreset", |q| operator_retry_ends_the_claim(&q));
    pg_test!(pg_requeue_hands_the_rest_back, "qrest", |q| requeue_hands_the_rest_back(&q));
    pg_test!(pg_bad_input, "qbad", |q| bad_input(&q));
    pg_test!(pg_many_jobs_in_one_batch, "qbulk", |q| many_jobs_in_one_batch(&q));
    pg_test!(pg_admin, "qadmin", |q| admin_lists_retries_discards_pauses_and_purges(&q));
    pg_test!(pg_overview_finds_and_counts, "qoverview", |q| overview_finds_and_counts(&q));
    pg_test!(pg_spent_leases_are_dead_lettered, "qspent", |q| spent_leases_are_dead_lettered(
        &q.clone().with_job_policy(RetryPolicy { max_attempts: 2, ..RetryPolicy::default() })
    ));
}

#[cfg(feature = "mysql")]
mod mysql {
    use super::*;
    use queue_common::my;
    use ralph_store::queue::MySqlQueue;

    macro_rules! my_test {
        ($name:ident, $tag:literal, |$q:ident| $body:expr) => {
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $name() {
                let Some(db) = my::fresh($tag).await else { return };
                let $q = MySqlQueue::new(my::pool(&db, 8).await);
                $q.migrate().await.expect("migrate");
                $body.await;
                $q.pool().close().await;
                my::drop_db(db).await;
            }
        };
    }

    my_test!(mysql_claim_ack_and_stats, "qstats", |q| claim_ack_and_stats(&q));
    my_test!(mysql_retry_backoff_and_dead_letter, "qretry", |q| retry_backoff_and_dead_letter(&q));
    my_test!(mysql_lease_expiry_and_reclaim, "qlease", |q| lease_expiry_and_reclaim(&q));
    my_test!(mysql_exclusive_concurrent_claims, "qrace", |q| exclusive_concurrent_claims(Arc::new(q.clone())));
    my_test!(mysql_batch_ack, "qacks", |q| batch_ack(&q));
    my_test!(mysql_operator_retry_ends_the_claim, "qreset", |q| operator_retry_ends_the_claim(&q));
    my_test!(mysql_requeue_hands_the_rest_back, "qrest", |q| requeue_hands_the_rest_back(&q));
    my_test!(mysql_bad_input, "qbad", |q| bad_input(&q));
    my_test!(mysql_many_jobs_in_one_batch, "qbulk", |q| many_jobs_in_one_batch(&q));
    my_test!(mysql_admin, "qadmin", |q| admin_lists_retries_discards_pauses_and_purges(&q));
    my_test!(mysql_overview_finds_and_counts, "qoverview", |q| overview_finds_and_counts(&q));
    my_test!(mysql_spent_leases_are_dead_lettered, "qspent", |q| spent_leases_are_dead_lettered(
        &q.clone().with_job_policy(RetryPolicy { max_attempts: 2, ..RetryPolicy::default() })
    ));

    /// With `auto_increment_increment = 3` (as on Galera), the ids enqueue returns are the rows'
    /// ids, both from `INSERT ... RETURNING` and from `LAST_INSERT_ID()`, and each acks its job.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn mysql_enqueue_ids_with_auto_increment_step() {
        let Some(db) = my::fresh("qstep").await else { return };
        // One connection, so every statement runs in the session the hook configured.
        let pool = sqlx::mysql::MySqlPoolOptions::new()
            .max_connections(1)
            .after_connect(|conn, _| {
                Box::pin(async move {
                    sqlx::query("SET SESSION auto_increment_increment = 3").execute(&mut *conn).await?;
                    Ok(())
                })
            })
            .connect(&db.url)
            .await
            .expect("connect");
        let plain = MySqlQueue::new(pool.clone());
        plain.migrate().await.expect("migrate");
        for (name, q) in [("returning", plain.clone()), ("last_insert_id", plain.with_last_insert_id_ids())] {
            let mut ids = q.enqueue(name, &payloads(5)).await.expect("enqueue");
            ids.extend(q.enqueue(name, &payloads(4)).await.expect("enqueue"));
            let stored: Vec<i64> = sqlx::query_scalar("SELECT id FROM queue_jobs WHERE queue = ? ORDER BY id")
                .bind(name)
                .fetch_all(&pool)
                .await
                .expect("ids");
            assert_eq!(ids.iter().map(|id| id.get()).collect::<Vec<_>>(), stored, "{name}");
            assert!(stored.windows(2).all(|w| w[1] - w[0] == 3), "{name}: step 3 in effect: {stored:?}");
            let jobs = q.claim(name, 100, LEASE, "w").await.expect("claim");
            assert_eq!(jobs.iter().map(|j| j.id).collect::<Vec<_>>(), ids, "{name}");
            for job in &jobs {
                assert!(q.ack(job).await.expect("ack"), "{name}: ack {:?}", job.id);
            }
            assert_eq!(q.stats(name).await.expect("stats").done, 9, "{name}");
        }
        pool.close().await;
        my::drop_db(db).await;
    }
}
