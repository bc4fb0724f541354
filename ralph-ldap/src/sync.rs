//! The bulk sync (Ralph's `ldap_sync`): page through every user the user filter admits,
//! mirror each one, and deactivate LDAP-owned users the directory no longer lists (unless the
//! listing met a referral, which makes it incomplete), and those the group rules now refuse;
//! unless the two together are more than `max_deactivate_percent` of the active LDAP users,
//! which makes the run suspect.

use std::collections::{HashMap, HashSet};
use std::time::{Instant, SystemTime};

use ralph_core::store::{MirrorChange, UserMirror};
use ralph_core::{UserSource, UserStore};
use serde::Serialize;
use tracing::{info, warn};

use crate::account::{self, Refusal};
use crate::backend::LdapBackend;
use crate::conn::{self, Entry};
use crate::mapping::{self, Verdict};
use crate::{Error, Result, TRACE_TARGET, filter};

/// What a sync did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SyncReport {
    /// Entries the paged search returned.
    pub seen: usize,
    /// Users created.
    pub created: usize,
    /// Existing users whose record, profile or groups were rewritten.
    pub updated: usize,
    /// Entries skipped: no usable or an ambiguous username, refused by require/deny group, a
    /// disabled or expired account (`check_account_state`), not in the store while
    /// `no_new_users` is set, or a username held by a local account.
    pub skipped: usize,
    /// LDAP-owned users deactivated (active before, inactive now): the group rules
    /// (require/deny group) refuse them ([`SyncReport::refused`]), or the directory no longer
    /// lists them ([`SyncReport::missing`]). 0 when [`SyncReport::over_deactivation_limit`].
    pub deactivated: u64,
    /// Mirrored users that are active.
    pub active: usize,
    /// Pages of `page_size` the search needed (at least).
    pub pages: usize,
    /// Continuation references (referrals, e.g. to an AD child domain) returned by the server
    /// and not chased.
    pub referrals_ignored: usize,
    /// Listed entries the group rules refused, or whose account is disabled or expired
    /// (`check_account_state`), whose LDAP-owned record in the store is active
    /// (a subset of [`SyncReport::skipped`]): deactivated unless
    /// [`SyncReport::over_deactivation_limit`].
    pub refused: usize,
    /// Active LDAP-owned users in the store that the listing did not return (deactivated as
    /// missing unless [`SyncReport::deactivation_skipped`]). 0 when `deactivate_missing` is off
    /// or the listing met referrals.
    pub missing: usize,
    /// Some users were left active that would otherwise have been deactivated: the listing met
    /// referrals ([`SyncReport::referrals_ignored`]), so missing users living behind them were
    /// not seen and may well still exist (refused users are still deactivated then); or
    /// deactivating would have gone over the limit ([`SyncReport::over_deactivation_limit`]).
    pub deactivation_skipped: bool,
    /// The refused and missing users together were more than `max_deactivate_percent` of the
    /// active LDAP-owned users, and the sync was not forced: a listing that comes back (nearly)
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
    /// Imports every user matching the user search (placeholder replaced by `*`) and the user
    /// filter with an RFC 2696 paged search, creating or updating users, profiles and groups;
    /// then deactivates LDAP-owned users the group rules refuse and, if `deactivate_missing` is
    /// on, those not seen.
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
        let search = config
            .user_search
            .as_ref()
            .ok_or_else(|| Error::Config("the sync needs user_search (a DN template cannot list users)".into()))?;
        let f = filter::and(&[&filter::fill(&search.filter, "*"), config.user_filter.as_deref().unwrap_or_default()]);
        let page_size = i32::try_from(config.page_size).map_err(|_| Error::Config("page_size too large".into()))?;

        let mut entries: Vec<Entry> = Vec::new();
        let referrals = {
            let mut ldap = inner.service_connection().await?;
            let result = conn::paged_search(
                &mut ldap,
                inner.op_timeout(),
                page_size,
                (&search.base, search.scope.into(), &f),
                inner.attrs.clone(),
                |entry| entries.push(entry),
            )
            .await;
            if let Err(e) = &result
                && e.is_unavailable()
            {
                drop(deadpool::managed::Object::take(ldap));
            }
            result?
        };
        let mut report = SyncReport {
            seen: entries.len(),
            pages: entries.len().div_ceil(config.page_size as usize).max(1),
            referrals_ignored: referrals,
            ..SyncReport::default()
        };

        // A login name held by several entries is ambiguous: like a login, the sync refuses
        // to pick one (but still counts the name as present).
        let names: Vec<Option<String>> = entries.iter().map(|entry| inner.names.username(entry)).collect();
        let mut holders: HashMap<String, usize> = HashMap::new();
        for name in names.iter().flatten() {
            *holders.entry(name.to_lowercase()).or_default() += 1;
        }
        let mut present: HashSet<String> = HashSet::new();
        let mut refused: Vec<(&Entry, String)> = Vec::new();
        for (entry, username) in entries.iter().zip(names) {
            let Some(username) = username else {
                report.skipped += 1;
                continue;
            };
            if ralph_core::check_username(&username).is_err() {
                warn!(target: TRACE_TARGET, dn = %entry.dn, "directory username is not a valid Ralph username, skipped");
                report.skipped += 1;
                continue;
            }
            // A user still in the directory is never deactivated as missing, even if skipped.
            present.insert(username.clone());
            if holders.get(&username.to_lowercase()).copied().unwrap_or(0) > 1 {
                warn!(target: TRACE_TARGET, dn = %entry.dn, "several entries hold this username, skipped");
                report.skipped += 1;
                continue;
            }
            if config.check_account_state
                && matches!(account::refusal(entry, SystemTime::now()), Some(Refusal::Closed(_)))
            {
                // Disabled or expired: deactivated with the users the group rules refuse.
                report.skipped += 1;
                refused.push((entry, username));
                continue;
            }
            let mut groups = inner.groups_of(inner, entry, &username).await?;
            let Verdict::Allowed(flags) = inner.rules.decide(&groups) else {
                // Refused by the group rules: not imported, and deactivated after the loop if
                // mirrored before (and within the limit: a wrong require group refuses everyone).
                report.skipped += 1;
                refused.push((entry, username));
                continue;
            };
            if config.no_new_users && inner.store.get_user(&username).await?.is_none() {
                // NO_NEW_USERS: the sync refreshes the users the store has, and creates none.
                report.skipped += 1;
                continue;
            }
            let roles = inner.roles_of(inner, entry, &mut groups).await?;
            let user = mapping::user(config, entry, &username, &roles, flags);
            let profile = mapping::profile(config, entry);
            let groups = config.mirror_groups.then(|| roles.clone());
            match inner
                .store
                .mirror_user(&UserMirror { user: user.clone(), profile, groups, group_scope: Default::default() })
                .await
            {
                Ok(mirrored) => match mirrored.change {
                    MirrorChange::Created => report.created += 1,
                    MirrorChange::Updated => report.updated += 1,
                    _ => {}
                },
                Err(e) if e.is_conflict() => {
                    // A directory account never takes over a local one of the same name.
                    warn!(target: TRACE_TARGET, dn = %entry.dn, "a local account holds this username, skipped");
                    report.skipped += 1;
                    continue;
                }
                Err(e) => return Err(e.into()),
            }
            if user.is_active {
                report.active += 1;
            }
        }

        // Who would be deactivated: refused users whose LDAP-owned record is active, and (if
        // deactivate_missing is on and the listing is complete) active LDAP users not listed.
        let active: Vec<String> = inner
            .store
            .list_users(Some(UserSource::Ldap))
            .await?
            .into_iter()
            .filter(|u| u.value.is_active)
            .map(|u| u.value.username)
            .collect();
        let active_set: HashSet<&str> = active.iter().map(String::as_str).collect();
        let refused_active: HashSet<&str> =
            refused.iter().map(|(_, username)| username.as_str()).filter(|u| active_set.contains(u)).collect();
        report.refused = refused_active.len();
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
            gone = active.iter().filter(|u| !present.contains(*u)).cloned().collect();
            report.missing = gone.len();
        }

        // One limit for both kinds: a require group whose base is wrong (or hidden by an ACL)
        // refuses everyone just as surely as a wrong user base lists no one.
        let doomed = report.refused + report.missing;
        let limit = usize::from(config.max_deactivate_percent);
        // In integers: doomed / active > limit / 100.
        let over = doomed.saturating_mul(100) > active.len().saturating_mul(limit);
        if over && !options.force_deactivation {
            warn!(
                target: TRACE_TARGET,
                refused = report.refused,
                missing = report.missing,
                active = active.len(),
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
                active = active.len(),
                max_deactivate_percent = limit,
                "forced: deactivating more LDAP users than max_deactivate_percent allows"
            );
        }
        for (entry, username) in &refused {
            match inner.deactivate_refused(entry, username).await {
                Ok(true) if refused_active.contains(username.as_str()) => report.deactivated += 1,
                Ok(_) => {}
                Err(Error::Store(e)) if e.is_conflict() => {
                    warn!(target: TRACE_TARGET, dn = %entry.dn, "a local account holds this username, left alone");
                }
                Err(e) => return Err(e),
            }
        }
        if !gone.is_empty() {
            report.deactivated += inner.store.deactivate_users(&gone).await?;
        }
        Ok(finish(report, started))
    }
}

/// Logs the end of a sync and hands its report back.
fn finish(report: SyncReport, started: Instant) -> SyncReport {
    info!(
        target: TRACE_TARGET,
        seen = report.seen,
        created = report.created,
        updated = report.updated,
        skipped = report.skipped,
        deactivated = report.deactivated,
        referrals = report.referrals_ignored,
        refused = report.refused,
        missing = report.missing,
        deactivation_skipped = report.deactivation_skipped,
        over_deactivation_limit = report.over_deactivation_limit,
        elapsed_secs = started.elapsed().as_secs_f64(),
        "LDAP sync finished"
    );
    report
}
