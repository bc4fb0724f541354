//! The bulk sync (Ralph's `ldap_sync`): page through every user the user filter admits,
//! mirror each one, and deactivate LDAP-owned users the directory no longer lists (unless the
//! listing met a referral, which makes it incomplete, or would deactivate more than
//! `max_deactivate_percent` of the active LDAP users, which makes it suspect).

use std::collections::{HashMap, HashSet};
use std::time::Instant;

use ralph_core::store::{MirrorChange, UserMirror};
use ralph_core::{UserSource, UserStore};
use serde::Serialize;
use tracing::{info, warn};

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
    /// Entries skipped: no usable or an ambiguous username, refused by require/deny group, or
    /// a username held by a local account.
    pub skipped: usize,
    /// LDAP-owned users deactivated: the directory no longer lists them, or the group rules
    /// (require/deny group) now refuse them.
    pub deactivated: u64,
    /// Mirrored users that are active.
    pub active: usize,
    /// Pages of `page_size` the search needed (at least).
    pub pages: usize,
    /// Continuation references (referrals, e.g. to an AD child domain) returned by the server
    /// and not chased.
    pub referrals_ignored: usize,
    /// Active LDAP-owned users in the store that the listing did not return (deactivated as
    /// missing unless [`SyncReport::deactivation_skipped`]).
    pub missing: usize,
    /// `deactivate_missing` is on but missing users were left alone: the listing met
    /// referrals ([`SyncReport::referrals_ignored`]), so users living behind them were not
    /// seen and may well still exist; or deactivating them would have gone over the limit
    /// ([`SyncReport::over_deactivation_limit`]).
    pub deactivation_skipped: bool,
    /// The missing users were more than `max_deactivate_percent` of the active LDAP-owned
    /// users, and the sync was not forced: a listing that comes back (nearly) empty is far
    /// more often a wrong base, filter or ACL than an emptied directory, so nobody was
    /// deactivated as missing.
    pub over_deactivation_limit: bool,
}

/// How one sync run behaves, beyond the configuration.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SyncOptions {
    /// Deactivate the missing users even above `max_deactivate_percent` (after checking that
    /// the directory really lost them). Referrals still skip deactivation.
    pub force_deactivation: bool,
}

impl SyncOptions {
    /// The default options: the deactivation limit applies.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether to deactivate missing users above the configured limit.
    #[must_use]
    pub fn force_deactivation(mut self, force: bool) -> Self {
        self.force_deactivation = force;
        self
    }
}

impl<S: UserStore> LdapBackend<S> {
    /// Imports every user matching the user search (placeholder replaced by `*`) and the user
    /// filter with an RFC 2696 paged search, creating or updating users, profiles and groups;
    /// then, if `deactivate_missing` is on, deactivates LDAP-owned users not seen.
    ///
    /// Deactivation only happens after the whole listing was read: a search cut short (a size
    /// limit, a lost connection) is an error and deactivates nobody. A listing that met
    /// continuation references (referrals, not chased) is incomplete too: missing users are then
    /// left active, with a warning and [`SyncReport::deactivation_skipped`] set. So are they
    /// when they are more than `max_deactivate_percent` of the active LDAP-owned users (see
    /// [`LdapBackend::sync_with`] to force it). (Users the group rules refuse are still
    /// deactivated: their entry was read.)
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
        let mut holders: HashMap<String, usize> = HashMap::new();
        for entry in &entries {
            if let Some(name) = inner.names.username(entry) {
                *holders.entry(name.to_lowercase()).or_default() += 1;
            }
        }
        let mut present: HashSet<String> = HashSet::new();
        for entry in &entries {
            let Some(username) = inner.names.username(entry) else {
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
            let mut groups = inner.groups_of(entry, &username).await?;
            let Verdict::Allowed(flags) = inner.rules.decide(&groups) else {
                // Refused by the group rules: not imported, and deactivated if mirrored before.
                report.skipped += 1;
                let was_active = inner.store.get_user(&username).await?.is_some_and(|u| u.value.is_active);
                match inner.deactivate_refused(entry, &username).await {
                    Ok(true) if was_active => report.deactivated += 1,
                    Ok(_) => {}
                    Err(Error::Store(e)) if e.is_conflict() => {
                        warn!(target: TRACE_TARGET, dn = %entry.dn, "a local account holds this username, left alone");
                    }
                    Err(e) => return Err(e),
                }
                continue;
            };
            let roles = inner.roles_of(entry, &mut groups).await?;
            let user = mapping::user(config, entry, &username, &roles, flags);
            let profile = mapping::profile(config, entry);
            let groups = config.mirror_groups.then(|| roles.clone());
            match inner.store.mirror_user(&UserMirror { user: user.clone(), profile, groups }).await {
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
            let active: Vec<String> = inner
                .store
                .list_users(Some(UserSource::Ldap))
                .await?
                .into_iter()
                .filter(|u| u.value.is_active)
                .map(|u| u.value.username)
                .collect();
            let gone: Vec<String> = active.iter().filter(|u| !present.contains(*u)).cloned().collect();
            report.missing = gone.len();
            let limit = usize::from(config.max_deactivate_percent);
            // In integers: gone / active > limit / 100.
            let over = gone.len().saturating_mul(100) > active.len().saturating_mul(limit);
            if over && !options.force_deactivation {
                warn!(
                    target: TRACE_TARGET,
                    missing = gone.len(),
                    active = active.len(),
                    seen = report.seen,
                    max_deactivate_percent = limit,
                    "the listing misses more active LDAP users than max_deactivate_percent allows: \
                     nobody is deactivated as missing (check the base and filter, or force the sync)"
                );
                report.over_deactivation_limit = true;
                report.deactivation_skipped = true;
            } else if !gone.is_empty() {
                if over {
                    warn!(
                        target: TRACE_TARGET,
                        missing = gone.len(),
                        active = active.len(),
                        max_deactivate_percent = limit,
                        "forced: deactivating more missing LDAP users than max_deactivate_percent allows"
                    );
                }
                report.deactivated += inner.store.deactivate_users(&gone).await?;
            }
        }
        info!(
            target: TRACE_TARGET,
            seen = report.seen,
            created = report.created,
            updated = report.updated,
            skipped = report.skipped,
            deactivated = report.deactivated,
            referrals = report.referrals_ignored,
            missing = report.missing,
            deactivation_skipped = report.deactivation_skipped,
            over_deactivation_limit = report.over_deactivation_limit,
            elapsed_secs = started.elapsed().as_secs_f64(),
            "LDAP sync finished"
        );
        Ok(report)
    }
}
