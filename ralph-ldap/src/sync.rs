//! The bulk sync (Ralph's `ldap_sync`): page through every user the user filter admits,
//! mirror each page, and deactivate this directory's users it no longer lists (unless the
//! listing met a referral, which makes it incomplete), and those the group rules now refuse;
//! unless the two together are more than `max_deactivate_percent` of its active users, which
//! makes the run suspect.
//!
//! It scales with the page, not the directory: entries are read a page at a time (RFC 2696,
//! the next page is asked for once this one is mirrored), group lookups that are the same for
//! every user (a group's parents, its name) are made once per run, and each page is mirrored
//! with one [`UserStore::mirror_users`] call, which writes only the users that changed. What is
//! kept for the whole run is one name per listed user and the store's list of this directory's
//! users, for the deactivations.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Instant, SystemTime};

use ralph_core::store::{MirrorChange, UserMirror};
use ralph_core::{UserSource, UserStore};
use serde::Serialize;
use tracing::{info, warn};

use crate::account::{self, Refusal};
use crate::backend::{Inner, LdapBackend, refused_mirror};
use crate::config::SearchUnion;
use crate::conn::{Entry, PagedSearch};
use crate::groups::{self, Directory, LdapGroup};
use crate::mapping::{self, Verdict};
use crate::{Error, Result, TRACE_TARGET, dn, filter};

mod index;

/// What a sync did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SyncReport {
    /// Entries the paged search returned (an entry two searches of a user search union both
    /// return counts once).
    pub seen: usize,
    /// Users created.
    pub created: usize,
    /// Existing users whose record, profile or groups were rewritten.
    pub updated: usize,
    /// Users mirrored with nothing to write (the store already held exactly this).
    pub unchanged: usize,
    /// Entries skipped: no usable or an ambiguous username, refused by require/deny group, a
    /// disabled or expired account (`check_account_state`), not in the store while
    /// `no_new_users` is set, or a username held by a local account or another directory's.
    pub skipped: usize,
    /// Users of this directory deactivated (active before, inactive now): the group rules
    /// (require/deny group) refuse them ([`SyncReport::refused`]), or the directory no longer
    /// lists them ([`SyncReport::missing`]) (0 for both when
    /// [`SyncReport::over_deactivation_limit`]); and users mirrored from an earlier page whose
    /// username a later page showed to be held by several entries.
    pub deactivated: u64,
    /// Mirrored users that are active.
    pub active: usize,
    /// Pages of `page_size` the listing was read and mirrored in.
    pub pages: usize,
    /// How long the run took, in milliseconds.
    pub elapsed_ms: u64,
    /// Listed entries per second over the whole run.
    pub users_per_sec: u64,
    /// Continuation references (referrals, e.g. to an AD child domain) returned by the server
    /// and not chased.
    pub referrals_ignored: usize,
    /// Listed entries the group rules refused, or whose account is disabled or expired
    /// (`check_account_state`), whose record in the store (owned by this directory) is active
    /// (a subset of [`SyncReport::skipped`]): deactivated unless
    /// [`SyncReport::over_deactivation_limit`].
    pub refused: usize,
    /// Active users of this directory in the store that the listing did not return
    /// (deactivated as missing unless [`SyncReport::deactivation_skipped`]). 0 when
    /// `deactivate_missing` is off or the listing met referrals.
    pub missing: usize,
    /// Some users were left active that would otherwise have been deactivated: the listing met
    /// referrals ([`SyncReport::referrals_ignored`]), so missing users living behind them were
    /// not seen and may well still exist (refused users are still deactivated then); or
    /// deactivating would have gone over the limit ([`SyncReport::over_deactivation_limit`]).
    pub deactivation_skipped: bool,
    /// The refused and missing users together were more than `max_deactivate_percent` of this
    /// directory's active users, and the sync was not forced: a listing that comes back (nearly)
    /// empty, or a require group nobody seems to be in, is far more often a wrong base, filter
    /// or ACL than a directory emptied overnight, so nobody was deactivated, neither kind.
    pub over_deactivation_limit: bool,
}

/// How one sync run behaves, beyond the configuration.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SyncOptions {
    /// Deactivate the refused and missing users even above `max_deactivate_percent` (after
    /// checking that the directory really lost them, or the group rules really refuse them).
    /// Referrals still skip deactivating missing users.
    pub force_deactivation: bool,
}

impl SyncOptions {
    /// The default options: the deactivation limit applies.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether to deactivate refused and missing users above the configured limit.
    #[must_use]
    pub fn force_deactivation(mut self, force: bool) -> Self {
        self.force_deactivation = force;
        self
    }
}

impl<S: UserStore> LdapBackend<S> {
    /// Imports every user matching the user search (placeholder replaced by `*`; each search
    /// of a union in turn, an entry two of them return imported once) and the user filter with
    /// an RFC 2696 paged search, creating or updating users, profiles and groups
    /// a page at a time; then deactivates this directory's users (those it owns, see
    /// [`LdapConfig::realm`](crate::LdapConfig::realm)) that the group rules refuse and, if
    /// `deactivate_missing` is on, those not seen. Each page is reported as a `tracing` event
    /// (`pages`, `seen`, `users_per_sec`) under the `ralph::ldap` target.
    ///
    /// Deactivation only happens after the whole listing was read: a search cut short (a size
    /// limit, a lost connection) is an error and deactivates nobody. A listing that met
    /// continuation references (referrals, not chased) is incomplete too: missing users are then
    /// left active, with a warning and [`SyncReport::deactivation_skipped`] set.
    ///
    /// Users the group rules (require/deny group) refuse are deactivated too, referrals or not
    /// and whatever `deactivate_missing` says: their entry was read. But when the refused and
    /// missing users together are more than `max_deactivate_percent` of the active LDAP-owned
    /// users, nobody is deactivated, with a warning and [`SyncReport::over_deactivation_limit`]
    /// set (see [`LdapBackend::sync_with`] to force it).
    ///
    /// Usernames are derived exactly as for a login (the directory's spelling of
    /// `username_attr`, or of the attribute the user search filter compares), so a user the
    /// sync created and the same user logging in are one stored record.
    ///
    /// # Errors
    /// [`Error::Config`] without `user_search`; directory and store errors.
    pub async fn sync(&self) -> Result<SyncReport> {
        self.sync_with(SyncOptions::default()).await
    }

    /// [`LdapBackend::sync`] with options for this run (forcing deactivation above the limit).
    ///
    /// # Errors
    /// As [`LdapBackend::sync`].
    pub async fn sync_with(&self, options: SyncOptions) -> Result<SyncReport> {
        let inner = self.inner();
        let config = &inner.config;
        let started = Instant::now();
        let union = config
            .user_search
            .as_ref()
            .ok_or_else(|| Error::Config("the sync needs user_search (a DN template cannot list users)".into()))?;
        let page_size = i32::try_from(config.page_size).map_err(|_| Error::Config("page_size too large".into()))?;

        // This directory's users in the store, read once: who exists (no_new_users, refused
        // users to rewrite) and who is active (the deactivations). Users of other directories
        // and local accounts are none of this sync's business.
        let owned: HashMap<String, bool> = inner
            .store
            .list_users(Some(UserSource::Ldap))
            .await?
            .into_iter()
            .filter(|u| u.value.directory == config.realm)
            .map(|u| (u.value.username, u.value.is_active))
            .collect();
        let active_before = owned.values().filter(|active| **active).count();

        let mut run = Run {
            inner,
            owned: &owned,
            groups: SyncDirectory { inner, memo: Mutex::default() },
            active_now: active_before,
            use_rule: false,
            index: None,
            report: SyncReport::default(),
            listed: HashMap::new(),
            overlap: HashSet::new(),
            ambiguous: Vec::new(),
            refused: Vec::new(),
            started,
        };
        run.use_rule = inner.use_matching_rule(&run.groups).await?;
        run.index = index::MemberIndex::build(inner, run.use_rule).await?;
        {
            let mut ldap = inner.service_connection().await?;
            // A union's searches are listed one after the other, on the one connection.
            let listing = async {
                let mut referrals = 0;
                for (at, search) in union.iter().enumerate() {
                    let user_filter = config.user_filter.as_deref().unwrap_or_default();
                    let f = filter::and(&[&filter::fill(&search.filter, "*"), user_filter]);
                    let mut pages = PagedSearch::start(
                        &mut ldap,
                        inner.op_timeout(),
                        page_size,
                        (&search.base, search.scope.into(), &f),
                        inner.attrs.clone(),
                    )
                    .await?;
                    loop {
                        let batch = pages.next_batch(config.page_size as usize).await?;
                        if batch.is_empty() {
                            break;
                        }
                        let batch = run.first_listed(batch, union, at);
                        if !batch.is_empty() {
                            run.page(batch).await?;
                        }
                    }
                    referrals += pages.finish().await?;
                }
                Ok::<_, Error>(referrals)
            }
            .await;
            if let Err(e) = &listing
                && e.is_unavailable()
            {
                drop(deadpool::managed::Object::take(ldap));
            }
            run.report.referrals_ignored = listing?;
        }
        let Run { mut report, listed, mut ambiguous, refused, active_now, .. } = run;
        report.pages = report.pages.max(1);

        // Users mirrored from an earlier page before a later one showed their username to be
        // held by several entries: a login refuses such a name, so neither may stay active.
        ambiguous.sort();
        ambiguous.dedup();
        let mut earlier: Vec<String> = Vec::new();
        for name in ambiguous {
            // Only this directory's: the earlier holder may have been refused, or met a local
            // account or another directory's, which are none of this sync's business.
            let owner = inner.store.get_user(&name).await?;
            if owner.is_some_and(|u| u.value.source == UserSource::Ldap && u.value.directory == config.realm) {
                earlier.push(name);
            }
        }
        if !earlier.is_empty() {
            report.deactivated += inner.store.deactivate_users(&earlier).await?;
        }

        // Who would be deactivated: refused users whose record is active, and (if
        // deactivate_missing is on and the listing is complete) active users not listed.
        report.refused = refused.iter().filter(|m| owned.get(&m.user.username) == Some(&true)).count();
        let mut gone: Vec<String> = Vec::new();
        if config.deactivate_missing && report.referrals_ignored > 0 {
            // Users behind a referral (an AD child domain, another server) were not listed:
            // "not seen" does not mean "gone", so nobody is deactivated as missing.
            warn!(
                target: TRACE_TARGET,
                referrals = report.referrals_ignored,
                "the user listing met referrals (not chased): missing users are not deactivated"
            );
            report.deactivation_skipped = true;
        } else if config.deactivate_missing {
            gone = owned
                .iter()
                .filter(|(name, active)| **active && !listed.contains_key(&name.to_lowercase()))
                .map(|(name, _)| name.clone())
                .collect();
            report.missing = gone.len();
        }
        drop(listed);

        // One limit for both kinds: a require group whose base is wrong (or hidden by an ACL)
        // refuses everyone just as surely as a wrong user base lists no one.
        let doomed = report.refused + report.missing;
        let limit = usize::from(config.max_deactivate_percent);
        // In integers: doomed / active > limit / 100, over this directory's users active after
        // the listing was mirrored (those it created or re-activated count).
        let over = doomed.saturating_mul(100) > active_now.saturating_mul(limit);
        if over && !options.force_deactivation {
            warn!(
                target: TRACE_TARGET,
                refused = report.refused,
                missing = report.missing,
                active = active_now,
                seen = report.seen,
                max_deactivate_percent = limit,
                "the sync would deactivate more active LDAP users (refused by the group rules or missing \
                 from the listing) than max_deactivate_percent allows: nobody is deactivated (check the \
                 base, filter and group settings, or force the sync)"
            );
            report.over_deactivation_limit = true;
            report.deactivation_skipped = true;
            return Ok(finish(report, started));
        }
        if over {
            warn!(
                target: TRACE_TARGET,
                refused = report.refused,
                missing = report.missing,
                active = active_now,
                max_deactivate_percent = limit,
                "forced: deactivating more LDAP users than max_deactivate_percent allows"
            );
        }
        // Refused users are rewritten inactive without flags or mirrored roles, a page at a
        // time; the store writes only those not refused already.
        for chunk in refused.chunks(config.page_size as usize) {
            for (mirror, result) in chunk.iter().zip(inner.store.mirror_users(chunk).await?) {
                match result {
                    Ok(m) if m.change != MirrorChange::Unchanged && owned.get(&mirror.user.username) == Some(&true) => {
                        report.deactivated += 1;
                    }
                    Ok(_) => {}
                    Err(e) if e.is_conflict() => {
                        warn!(target: TRACE_TARGET, username = %mirror.user.username,
                            "another account holds this username, left alone");
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        }
        if !gone.is_empty() {
            report.deactivated += inner.store.deactivate_users(&gone).await?;
        }
        Ok(finish(report, started))
    }
}

/// The state of one sync run while it reads the listing.
struct Run<'a, S> {
    inner: &'a Inner<S>,
    /// This directory's users in the store when the run started, with their `is_active`.
    owned: &'a HashMap<String, bool>,
    /// This directory's active users in the store, as the run changes them.
    active_now: usize,
    groups: SyncDirectory<'a, S>,
    use_rule: bool,
    /// The rule groups' members, read once, when that replaces a group search per user.
    index: Option<index::MemberIndex>,
    report: SyncReport,
    /// Every username listed so far, lower-cased, with its spelling: a user still listed is
    /// never missing, and a name met twice is ambiguous.
    listed: HashMap<String, String>,
    /// The DNs (normalised) listed so far that another search of a user search union could
    /// list again (its base and scope cover them): an entry two searches return is one user,
    /// listed once. Empty for one search, or a union of disjoint bases.
    overlap: HashSet<String>,
    /// Names listed before a later page showed them to be ambiguous (once per extra holder).
    ambiguous: Vec<String>,
    /// The mirrors that refuse this directory's users the group rules or the account state now
    /// refuse (only users in the store: nobody refused is created).
    refused: Vec<UserMirror>,
    started: Instant,
}

impl<S: UserStore> Run<'_, S> {
    /// The entries of a page of search `at` of the union that no other search listed before.
    fn first_listed(&mut self, mut batch: Vec<Entry>, union: &SearchUnion, at: usize) -> Vec<Entry> {
        if union.is_union() {
            batch.retain(|entry| !union.other_covers(&entry.dn, at) || self.overlap.insert(dn::normalize(&entry.dn)));
        }
        batch
    }

    /// Mirrors one page of the listing.
    async fn page(&mut self, batch: Vec<Entry>) -> Result<()> {
        let inner = self.inner;
        self.report.seen += batch.len();
        self.report.pages += 1;

        // A login name held by several entries is ambiguous: like a login, the sync refuses
        // to pick one (but still counts the name as present).
        let names: Vec<Option<String>> = batch.iter().map(|entry| inner.names.username(entry)).collect();
        let mut in_page: HashMap<String, usize> = HashMap::new();
        for name in names.iter().flatten() {
            *in_page.entry(name.to_lowercase()).or_default() += 1;
        }
        let mut mirrors: Vec<UserMirror> = Vec::with_capacity(batch.len());
        for (entry, username) in batch.iter().zip(&names) {
            let Some(username) = username else {
                self.report.skipped += 1;
                continue;
            };
            if ralph_core::check_username(username).is_err() {
                warn!(target: TRACE_TARGET, dn = %entry.dn, "directory username is not a valid Ralph username, skipped");
                self.report.skipped += 1;
                continue;
            }
            let key = username.to_lowercase();
            if let Some(earlier) = self.listed.get(&key) {
                warn!(target: TRACE_TARGET, dn = %entry.dn, "several entries hold this username, skipped");
                self.ambiguous.push(earlier.clone());
                self.report.skipped += 1;
                continue;
            }
            if in_page.get(&key).copied().unwrap_or(0) > 1 {
                warn!(target: TRACE_TARGET, dn = %entry.dn, "several entries hold this username, skipped");
                self.report.skipped += 1;
                continue;
            }
            if let Some(mirror) = self.mirror_of(entry, username).await? {
                mirrors.push(mirror);
            }
        }
        // Names of this page count as listed from now on (the ambiguous ones too: a user still
        // in the directory is never deactivated as missing, even if skipped).
        drop(batch);
        for name in names.into_iter().flatten() {
            self.listed.entry(name.to_lowercase()).or_insert(name);
        }

        for (mirror, result) in mirrors.iter().zip(inner.store.mirror_users(&mirrors).await?) {
            match result {
                Ok(mirrored) => {
                    match mirrored.change {
                        MirrorChange::Created => self.report.created += 1,
                        MirrorChange::Updated => self.report.updated += 1,
                        MirrorChange::Unchanged => self.report.unchanged += 1,
                        // A kind of change this version does not know: written, so an update.
                        _ => self.report.updated += 1,
                    }
                    let was_active = self.owned.get(&mirror.user.username) == Some(&true);
                    if mirror.user.is_active {
                        self.report.active += 1;
                        if !was_active {
                            self.active_now += 1;
                        }
                    } else if was_active {
                        self.active_now = self.active_now.saturating_sub(1);
                    }
                }
                Err(e) if e.is_conflict() => {
                    // A directory account never takes over a local one, nor another directory's.
                    warn!(target: TRACE_TARGET, username = %mirror.user.username,
                        "a local account or another directory's holds this username, skipped");
                    self.report.skipped += 1;
                }
                Err(e) => return Err(e.into()),
            }
        }
        let elapsed = self.started.elapsed().as_secs_f64();
        info!(
            target: TRACE_TARGET,
            pages = self.report.pages,
            seen = self.report.seen,
            created = self.report.created,
            updated = self.report.updated,
            unchanged = self.report.unchanged,
            skipped = self.report.skipped,
            users_per_sec = per_sec(self.report.seen, elapsed),
            elapsed_secs = elapsed,
            "LDAP sync page mirrored"
        );
        Ok(())
    }

    /// The mirror of one listed user, or `None` when skipped (a refused user is remembered for
    /// the deactivation step).
    async fn mirror_of(&mut self, entry: &Entry, username: &str) -> Result<Option<UserMirror>> {
        let inner = self.inner;
        let config = &inner.config;
        let refuse = |this: &mut Self| {
            // Refused: not imported, and rewritten inactive after the listing if this directory
            // mirrored them before (within the limit: a wrong require group refuses everyone).
            this.report.skipped += 1;
            if this.owned.contains_key(username) {
                this.refused.push(refused_mirror(config, entry, username));
            }
        };
        if config.check_account_state
            && matches!(account::refusal(entry, SystemTime::now(), None), Some(Refusal::Closed(_)))
        {
            // Disabled or expired: deactivated with the users the group rules refuse.
            refuse(self);
            return Ok(None);
        }
        let mut groups = self.groups_of(entry, username).await?;
        let Verdict::Allowed(flags) = inner.rules.decide(&groups) else {
            refuse(self);
            return Ok(None);
        };
        if config.no_new_users && !self.owned.contains_key(username) {
            // NO_NEW_USERS: the sync refreshes the users the store has, and creates none.
            self.report.skipped += 1;
            return Ok(None);
        }
        if inner.rules.needs_names() && groups.iter().any(|g| g.name.is_none()) {
            groups::name_all(config, &self.groups, &mut groups).await?;
        }
        let roles = inner.rules.roles(&groups);
        let user = mapping::user(config, entry, username, &roles, flags);
        Ok(Some(mapping::mirror(config, user, mapping::profile(config, entry), &roles)))
    }

    /// A user's groups, read for this run: the login cache is neither read (the sync decides on
    /// fresh groups) nor filled (it would grow with the directory).
    async fn groups_of(&self, entry: &Entry, username: &str) -> Result<Vec<LdapGroup>> {
        if let Some(index) = &self.index {
            return Ok(index.groups_of(&entry.dn));
        }
        let config = &self.inner.config;
        let member_of = entry.values(&config.member_of_attr);
        let gid = entry.first(groups::GID_NUMBER);
        groups::resolve(config, &self.groups, &entry.dn, username, member_of, gid, self.use_rule).await
    }
}

/// The service directory as the sync sees it: searches about a group (its parents, its name)
/// are made once per run and remembered, so nested groups and group names cost a search per
/// group, not per user. Searches about a user are not remembered.
struct SyncDirectory<'a, S> {
    inner: &'a Inner<S>,
    memo: Mutex<HashMap<String, Vec<Entry>>>,
}

impl<S> Directory for SyncDirectory<'_, S> {
    async fn search(&self, base: &str, scope: ldap3::Scope, filter: &str, attrs: &[&str]) -> Result<Vec<Entry>> {
        self.inner.search(base, scope, filter, attrs).await
    }

    async fn group_search(&self, base: &str, scope: ldap3::Scope, filter: &str, attrs: &[&str]) -> Result<Vec<Entry>> {
        let key = format!("{base}\u{0}{scope:?}\u{0}{filter}\u{0}{}", attrs.join(","));
        if let Some(found) = self.memo.lock().map_err(|_| Error::Protocol("group memo poisoned".into()))?.get(&key) {
            return Ok(found.clone());
        }
        let found = self.inner.search(base, scope, filter, attrs).await?;
        self.memo.lock().map_err(|_| Error::Protocol("group memo poisoned".into()))?.insert(key, found.clone());
        Ok(found)
    }
}

/// `count` per second over `secs`, rounded down.
fn per_sec(count: usize, secs: f64) -> u64 {
    if secs <= 0.0 {
        return 0;
    }
    // Counts and rates far below 2^52: the float round trip is exact enough for a report.
    #[allow(clippy::cast_precision_loss, clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let rate = (count as f64 / secs) as u64;
    rate
}

/// Logs the end of a sync and hands its report back.
fn finish(mut report: SyncReport, started: Instant) -> SyncReport {
    let elapsed = started.elapsed();
    report.elapsed_ms = u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX);
    report.users_per_sec = per_sec(report.seen, elapsed.as_secs_f64());
    info!(
        target: TRACE_TARGET,
        seen = report.seen,
        pages = report.pages,
        created = report.created,
        updated = report.updated,
        unchanged = report.unchanged,
        skipped = report.skipped,
        deactivated = report.deactivated,
        referrals = report.referrals_ignored,
        refused = report.refused,
        missing = report.missing,
        deactivation_skipped = report.deactivation_skipped,
        over_deactivation_limit = report.over_deactivation_limit,
        users_per_sec = report.users_per_sec,
        elapsed_secs = elapsed.as_secs_f64(),
        "LDAP sync finished"
    );
    report
}
