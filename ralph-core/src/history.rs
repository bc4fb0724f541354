//! Change history: who changed which object's fields, from what to what, when, as part of
//! which operation; and the store trait that reads and prunes it.
//!
//! A store writes history rows in the same transaction as the change they describe, so a
//! change and its record are committed (or lost) together. An empty change writes no row,
//! and volatile fields ([`NOISY_FIELDS`], such as `last_seen`) are never recorded.
//!
//! ```
//! use ralph_core::history::{Action, Actor, FieldChange, HistoryRecord};
//!
//! let record = HistoryRecord::new("device", 7, Action::Update, Actor::source("snmp"))
//!     .with_changes(vec![
//!         FieldChange::new("serial_number", Some("CZ1"), Some("CZ2")),
//!         FieldChange::new("model", Some("R640"), Some("R640")), // unchanged: dropped
//!         FieldChange::new("last_seen", None, Some("2026-11-30")), // noisy: dropped
//!     ]);
//! assert_eq!(record.changes.len(), 1);
//! assert!(!record.is_empty());
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::{Id, Job, JobQueue, RetryPolicy, StoreError, ValidationError};

/// Fields never recorded: they change on every scan and say nothing about the object.
pub const NOISY_FIELDS: &[&str] = &["last_seen", "dead_ping_count", "scan_checksum"];

/// What kind of actor made a change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActorKind {
    /// A person, by username.
    User,
    /// A discovery or sync source (`snmp`, `ldap`), by name.
    Source,
    /// The system itself (a migration, a write through a handle with no actor given).
    System,
}

impl ActorKind {
    /// `"user"`, `"source"` or `"system"`, as stored.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::User => "user",
            Self::Source => "source",
            Self::System => "system",
        }
    }

    /// Parses the stored name.
    ///
    /// # Errors
    /// [`ValidationError::UnknownName`].
    pub fn parse(input: &str) -> Result<Self, ValidationError> {
        [Self::User, Self::Source, Self::System]
            .into_iter()
            .find(|k| k.as_str() == input)
            .ok_or_else(|| ValidationError::UnknownName { what: "actor kind", input: input.to_owned() })
    }
}

/// Who made a change.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Actor {
    /// What kind of actor.
    pub kind: ActorKind,
    /// The username or source name.
    pub name: String,
}

impl Actor {
    /// A person.
    #[must_use]
    pub fn user(name: &str) -> Self {
        Self { kind: ActorKind::User, name: name.to_owned() }
    }

    /// A discovery or sync source.
    #[must_use]
    pub fn source(name: &str) -> Self {
        Self { kind: ActorKind::Source, name: name.to_owned() }
    }

    /// The system.
    #[must_use]
    pub fn system() -> Self {
        Self { kind: ActorKind::System, name: "system".to_owned() }
    }
}

impl Default for Actor {
    fn default() -> Self {
        Self::system()
    }
}

impl fmt::Display for Actor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.kind.as_str(), self.name)
    }
}

/// What happened to the object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// It was created; every change's `before` is `None`.
    Create,
    /// Fields changed.
    Update,
    /// It was deleted; every change's `after` is `None`.
    Delete,
    /// It moved to another parent (a component to another device).
    Move,
}

impl Action {
    /// `"create"`, `"update"`, `"delete"` or `"move"`, as stored.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Create => "create",
            Self::Update => "update",
            Self::Delete => "delete",
            Self::Move => "move",
        }
    }

    /// Parses the stored name.
    ///
    /// # Errors
    /// [`ValidationError::UnknownName`].
    pub fn parse(input: &str) -> Result<Self, ValidationError> {
        [Self::Create, Self::Update, Self::Delete, Self::Move]
            .into_iter()
            .find(|a| a.as_str() == input)
            .ok_or_else(|| ValidationError::UnknownName { what: "history action", input: input.to_owned() })
    }
}

/// One field's change, as text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FieldChange {
    /// The field's name (a column or reconciler field name).
    pub field: String,
    /// The value before (`None`: no value).
    pub before: Option<String>,
    /// The value after (`None`: no value).
    pub after: Option<String>,
}

impl FieldChange {
    /// A change of `field` from `before` to `after`.
    #[must_use]
    pub fn new(field: &str, before: Option<&str>, after: Option<&str>) -> Self {
        Self { field: field.to_owned(), before: before.map(str::to_owned), after: after.map(str::to_owned) }
    }

    /// Whether it changes nothing, or touches a [noisy](NOISY_FIELDS) field.
    #[must_use]
    pub fn is_noise(&self) -> bool {
        self.before == self.after || NOISY_FIELDS.contains(&self.field.as_str())
    }
}

/// A history row to write: an object's change, before the store gives it an id and a time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryRecord {
    /// The object's type (`device`, `component`, `rack`, ...).
    pub object_type: String,
    /// The object's id.
    pub object_id: i64,
    /// A related object (type, id): a component's device.
    pub related: Option<(String, i64)>,
    /// What happened.
    pub action: Action,
    /// The changed fields (never an unchanged or noisy one).
    pub changes: Vec<FieldChange>,
    /// Who did it.
    pub actor: Actor,
    /// A free-form note (the scan, the reason).
    pub message: Option<String>,
}

impl HistoryRecord {
    /// A record with no field changes yet.
    #[must_use]
    pub fn new(object_type: &str, object_id: i64, action: Action, actor: Actor) -> Self {
        Self {
            object_type: object_type.to_owned(),
            object_id,
            related: None,
            action,
            changes: Vec::new(),
            actor,
            message: None,
        }
    }

    /// Sets the changed fields, dropping unchanged and noisy ones.
    #[must_use]
    pub fn with_changes(mut self, changes: Vec<FieldChange>) -> Self {
        self.changes = changes.into_iter().filter(|c| !c.is_noise()).collect();
        self
    }

    /// Names a related object.
    #[must_use]
    pub fn with_related(mut self, object_type: &str, id: i64) -> Self {
        self.related = Some((object_type.to_owned(), id));
        self
    }

    /// Adds a note.
    #[must_use]
    pub fn with_message(mut self, message: &str) -> Self {
        self.message = Some(message.to_owned());
        self
    }

    /// Whether the record says nothing: an update or move with no changed field. Creates and
    /// deletes are never empty. A store writes no row for an empty record.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        matches!(self.action, Action::Update | Action::Move) && self.changes.is_empty()
    }
}

/// A stored history row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryEntry {
    /// Its id; ascending in commit order within one object.
    pub id: Id<HistoryEntry>,
    /// When it was written.
    pub at: DateTime<Utc>,
    /// The operation it belongs to: every row one apply or one write made shares it.
    pub correlation: String,
    /// What was recorded.
    pub record: HistoryRecord,
}

/// How much history to keep. Rows are pruned in chunks of [`Retention::chunk`] rows, each
/// chunk its own short transaction, so pruning never holds locks for long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Retention {
    /// Rows older than this are pruned.
    pub max_age: Option<Duration>,
    /// Only the newest this many rows of each object are kept.
    pub max_per_object: Option<u32>,
    /// Rows deleted per transaction.
    pub chunk: u32,
}

impl Default for Retention {
    fn default() -> Self {
        Self { max_age: None, max_per_object: None, chunk: 1000 }
    }
}

impl Retention {
    /// Keeps rows younger than `age`.
    #[must_use]
    pub fn with_max_age(mut self, age: Duration) -> Self {
        self.max_age = Some(age);
        self
    }

    /// Keeps the newest `count` rows of each object.
    #[must_use]
    pub fn with_max_per_object(mut self, count: u32) -> Self {
        self.max_per_object = Some(count);
        self
    }

    /// Deletes `rows` rows per transaction (at least 1).
    #[must_use]
    pub fn with_chunk(mut self, rows: u32) -> Self {
        self.chunk = rows.max(1);
        self
    }
}

/// Reads and prunes the change history a store writes beside its changes.
#[async_trait]
pub trait HistoryStore: Send + Sync {
    /// The history of one object, newest first, at most `limit` rows.
    async fn object_history(
        &self,
        object_type: &str,
        object_id: i64,
        limit: u32,
    ) -> Result<Vec<HistoryEntry>, StoreError>;
    /// The changes of one field of one object ("when did this serial change"), newest first;
    /// each entry holds only that field's change.
    async fn field_history(
        &self,
        object_type: &str,
        object_id: i64,
        field: &str,
        limit: u32,
    ) -> Result<Vec<HistoryEntry>, StoreError>;
    /// Deletions of objects of `object_type`, newest first: the deleted objects' last values.
    async fn deleted_objects(&self, object_type: &str, limit: u32) -> Result<Vec<HistoryEntry>, StoreError>;
    /// Every row of one operation, in the order written.
    async fn correlated(&self, correlation: &str) -> Result<Vec<HistoryEntry>, StoreError>;
    /// The object as its history says it was at `at`: its rows up to then, replayed
    /// ([`ObjectState::at`]).
    async fn object_at(&self, object_type: &str, object_id: i64, at: DateTime<Utc>) -> Result<ObjectState, StoreError>;
    /// Deletes what `retention` does not keep, in short transactions; returns how many rows
    /// went.
    async fn prune_history(&self, retention: &Retention) -> Result<u64, StoreError>;
}

/// The queue [`run_prune_jobs`] usually serves.
pub const PRUNE_QUEUE: &str = "ralph.history.prune";

/// A queued pruning of the change history: the [`Retention`] to apply, as a job payload
/// (JSON: `{"max_age_secs": 7776000, "max_per_object": null, "chunk": 1000}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PruneJob {
    /// [`Retention::max_age`] in seconds.
    pub max_age_secs: Option<u64>,
    /// [`Retention::max_per_object`].
    pub max_per_object: Option<u32>,
    /// [`Retention::chunk`].
    pub chunk: u32,
}

impl From<&Retention> for PruneJob {
    fn from(r: &Retention) -> Self {
        Self { max_age_secs: r.max_age.map(|a| a.as_secs()), max_per_object: r.max_per_object, chunk: r.chunk }
    }
}

impl PruneJob {
    /// The retention it applies.
    #[must_use]
    pub fn retention(&self) -> Retention {
        Retention {
            max_age: self.max_age_secs.map(Duration::from_secs),
            max_per_object: self.max_per_object,
            chunk: self.chunk.max(1),
        }
    }

    /// The job's payload.
    #[must_use]
    pub fn to_payload(&self) -> String {
        // Three plain fields: serialising cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Reads a payload.
    ///
    /// # Errors
    /// [`ValidationError::Invalid`] for anything but a prune job's JSON.
    pub fn from_payload(payload: &str) -> Result<Self, ValidationError> {
        serde_json::from_str(payload)
            .map_err(|e| ValidationError::Invalid { field: "prune job", reason: e.to_string() })
    }
}

/// Enqueues a pruning of the change history with `retention` on `queue` (usually
/// [`PRUNE_QUEUE`]); a host schedules it (daily, say), and whichever process runs
/// [`run_prune_jobs`] does it.
///
/// # Errors
/// As [`JobQueue::enqueue`].
pub async fn enqueue_prune<Q: JobQueue + ?Sized>(
    jobs: &Q,
    queue: &str,
    retention: &Retention,
) -> Result<Id<Job>, StoreError> {
    let ids = jobs.enqueue(queue, &[PruneJob::from(retention).to_payload()]).await?;
    ids.into_iter().next().ok_or_else(|| StoreError::Corrupt { entity: "job", detail: "enqueue returned no id".into() })
}

/// What one [`run_prune_jobs`] call did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PruneRun {
    /// Prune jobs done.
    pub jobs: u64,
    /// History rows they deleted.
    pub rows: u64,
    /// Jobs dead-lettered because their payload was not a prune job.
    pub rejected: u64,
    /// Prunes that finished after their lease had run out: another runner may have taken
    /// the job again (pruning twice deletes nothing twice). Give a longer lease.
    pub lease_lost: u64,
}

/// Claims the prune jobs waiting on `queue`, one at a time under `lease`, and runs each: the
/// store deletes in chunks of [`Retention::chunk`] rows, each its own short transaction, so
/// pruning never holds locks for long. Returns when none is left. Several runners (tasks or
/// processes) may serve one queue: each job is claimed by one of them at a time. A prune that
/// outlasts `lease` may be taken again by another runner (the job is then done at least once,
/// not exactly once: harmless, since a second prune deletes nothing the first did); it is
/// counted in [`PruneRun::lease_lost`], and `lease` should exceed the longest prune.
///
/// # Errors
/// A store error: the job it happened in is failed (the queue retries it later, with back-off)
/// and the error returned.
pub async fn run_prune_jobs<S: JobQueue + HistoryStore + ?Sized>(
    store: &S,
    queue: &str,
    worker: &str,
    lease: Duration,
) -> Result<PruneRun, StoreError> {
    let mut run = PruneRun::default();
    loop {
        let Some(job) = store.claim(queue, 1, lease, worker).await?.into_iter().next() else {
            return Ok(run);
        };
        match PruneJob::from_payload(&job.payload) {
            Ok(prune) => match store.prune_history(&prune.retention()).await {
                Ok(rows) => {
                    run.rows += rows;
                    if store.ack(&job).await? {
                        tracing::info!(target: "ralph::history", job = %job.id, rows, "history pruned");
                        run.jobs += 1;
                    } else {
                        tracing::warn!(target: "ralph::history", job = %job.id, rows, "history pruned after the job's lease ran out");
                        run.lease_lost += 1;
                    }
                }
                Err(error) => {
                    if let Err(fail) = store.fail(&job, &error.to_string(), &RetryPolicy::default()).await {
                        tracing::warn!(target: "ralph::history", job = %job.id, error = %fail, "prune job not failed");
                    }
                    return Err(error);
                }
            },
            Err(error) => {
                let never = RetryPolicy { max_attempts: 1, ..RetryPolicy::default() };
                store.fail(&job, &error.to_string(), &never).await?;
                tracing::warn!(target: "ralph::history", job = %job.id, %error, "not a prune job: dead-lettered");
                run.rejected += 1;
            }
        }
    }
}

/// An object's fields at a moment, rebuilt from its history ([`HistoryStore::object_at`]).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ObjectState {
    /// Its fields then, by name (a field without a value is absent). Empty when it did not
    /// exist.
    pub fields: BTreeMap<String, String>,
    /// Whether it existed then: created (or changed, when its creation is no longer on record)
    /// and not deleted since.
    pub existed: bool,
    /// Whether the record reaches back to its creation. When older rows were pruned, a field
    /// not changed since is missing from `fields`, and this is `false`; with `existed` also
    /// `false` it means "not known" (no row on record reaches back to that time).
    pub complete: bool,
    /// The newest row replayed: the state holds from its time on.
    pub as_of: Option<(Id<HistoryEntry>, DateTime<Utc>)>,
}

impl ObjectState {
    /// The object at `at` from all its rows (oldest first, in the order written): the rows
    /// written up to the first one dated after `at` are replayed, so the state is always one
    /// the object really had, even when times and write order disagree (clocks of several
    /// hosts). Before its first row: not existing when that row is its creation, unknown
    /// (`complete: false`) when older rows were pruned.
    #[must_use]
    pub fn at(entries: &[HistoryEntry], at: DateTime<Utc>) -> Self {
        let written = entries.iter().take_while(|e| e.at <= at).count();
        let mut state = Self::replay(&entries[..written]);
        if written == 0 {
            state.complete = entries.first().is_some_and(|e| e.record.action == Action::Create);
        }
        state
    }

    /// Replays `entries`, one object's rows oldest first: a create sets every field it
    /// records, an update or move changes its fields, a delete ends the object.
    #[must_use]
    pub fn replay<'a>(entries: impl IntoIterator<Item = &'a HistoryEntry>) -> Self {
        let mut state = Self::default();
        for (n, entry) in entries.into_iter().enumerate() {
            match entry.record.action {
                Action::Create => {
                    state.fields.clear();
                    state.existed = true;
                    state.complete = true;
                }
                Action::Update | Action::Move => {
                    // The first row on record is not the creation: older ones were pruned.
                    if n == 0 {
                        state.existed = true;
                    }
                }
                Action::Delete => {
                    state.fields.clear();
                    state.existed = false;
                    state.complete = true;
                }
            }
            if state.existed {
                for change in &entry.record.changes {
                    match &change.after {
                        Some(value) => state.fields.insert(change.field.clone(), value.clone()),
                        None => state.fields.remove(&change.field),
                    };
                }
            }
            state.as_of = Some((entry.id, entry.at));
        }
        state
    }
}

/// A fresh correlation id: 32 hex digits.
#[must_use]
pub fn new_correlation() -> String {
    let mut bytes = [0u8; 16];
    // The system's RNG does not fail on Linux once booted; should it, the id is still unique
    // within the process (a counter) and over time (the clock), only guessable.
    if let Err(error) = getrandom::fill(&mut bytes) {
        static WARNED: std::sync::Once = std::sync::Once::new();
        WARNED.call_once(
            || tracing::warn!(target: "ralph::history", %error, "no system randomness; correlation ids from the clock"),
        );
        static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        bytes = ((nanos << 32) ^ u128::from(n) ^ (u128::from(std::process::id()) << 96)).to_be_bytes();
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_bad_ones_are_typed_errors() {
        for a in [Action::Create, Action::Update, Action::Delete, Action::Move] {
            assert_eq!(Action::parse(a.as_str()).ok(), Some(a));
        }
        for k in [ActorKind::User, ActorKind::Source, ActorKind::System] {
            assert_eq!(ActorKind::parse(k.as_str()).ok(), Some(k));
        }
        assert!(Action::parse("explode").is_err());
        assert!(ActorKind::parse("robot").is_err());
    }

    #[test]
    fn empty_updates_are_empty_creates_are_not() {
        let r = HistoryRecord::new("device", 1, Action::Update, Actor::system()).with_changes(vec![FieldChange::new(
            "last_seen",
            None,
            Some("x"),
        )]);
        assert!(r.is_empty());
        assert!(!HistoryRecord::new("device", 1, Action::Create, Actor::system()).is_empty());
        assert_ne!(new_correlation(), new_correlation());
        assert_eq!(new_correlation().len(), 32);
    }

    #[test]
    fn replay_rebuilds_the_state_and_says_when_it_cannot_be_whole() {
        let entry = |id: i64, action: Action, changes: Vec<FieldChange>| HistoryEntry {
            id: Id::new(id),
            at: DateTime::from_timestamp(id, 0).unwrap_or_default(),
            correlation: String::new(),
            record: HistoryRecord { changes, ..HistoryRecord::new("device", 7, action, Actor::system()) },
        };
        let create = entry(
            1,
            Action::Create,
            vec![FieldChange::new("serial", None, Some("CZ1")), FieldChange::new("model", None, Some("R640"))],
        );
        let update = entry(
            2,
            Action::Update,
            vec![FieldChange::new("serial", Some("CZ1"), Some("CZ2")), FieldChange::new("model", Some("R640"), None)],
        );
        let delete = entry(3, Action::Delete, vec![FieldChange::new("serial", Some("CZ2"), None)]);

        let whole = ObjectState::replay([&create, &update]);
        assert!(whole.existed && whole.complete);
        assert_eq!(whole.fields.into_iter().collect::<Vec<_>>(), [("serial".to_owned(), "CZ2".to_owned())]);
        assert_eq!(whole.as_of.map(|(id, _)| id), Some(Id::new(2)));
        let gone = ObjectState::replay([&create, &update, &delete]);
        assert!(!gone.existed && gone.complete && gone.fields.is_empty());
        let pruned = ObjectState::replay([&update]);
        assert!(pruned.existed && !pruned.complete, "the creation is no longer on record");
        assert_eq!(pruned.fields.get("serial").map(String::as_str), Some("CZ2"));
        let nothing = ObjectState::replay([]);
        assert!(!nothing.existed && nothing.as_of.is_none());

        // At a time: the rows written up to the first one dated later.
        let all = [create, update.clone(), delete];
        let at = |secs: i64| ObjectState::at(&all, DateTime::from_timestamp(secs, 0).unwrap_or_default());
        assert_eq!(at(2).fields.get("serial").map(String::as_str), Some("CZ2"));
        let before = at(0);
        assert!(!before.existed && before.complete, "known not to exist before its creation");
        let pruned = ObjectState::at(std::slice::from_ref(&update), DateTime::from_timestamp(1, 0).unwrap_or_default());
        assert!(!pruned.existed && !pruned.complete, "before the oldest row left: unknown");
        // A row dated earlier than one written before it (another host's clock): the state
        // stops at the later-dated row, never skipping it.
        let mut skewed = all.clone();
        skewed[1].at = DateTime::from_timestamp(5, 0).unwrap_or_default();
        let mid = ObjectState::at(&skewed, DateTime::from_timestamp(3, 0).unwrap_or_default());
        assert_eq!(
            mid.fields.get("serial").map(String::as_str),
            Some("CZ1"),
            "the delete at 3 s is not applied without the update"
        );
        assert!(mid.existed);
    }
}
