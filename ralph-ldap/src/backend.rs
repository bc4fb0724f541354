//! [`LdapBackend`]: the [`AuthBackend`] that checks passwords against the directory and
//! mirrors users, profiles and roles through a [`UserStore`].

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use deadpool::managed::Object;
use ralph_core::store::{MirrorChange, UserMirror};
use ralph_core::{AuthBackend, AuthError, AuthOutcome, Credentials, DenyReason, Identity, Secret, UserStore};
use tokio::sync::OnceCell;
use tracing::{Instrument, debug, info_span, warn};

use crate::account::{self, Refusal};
use crate::config::{LdapConfig, NestedGroups};
use crate::conn::{self, Connector, Entry, Pool, Role};
use crate::groups::{self, Directory, GroupCache, LdapGroup};
use crate::hooks::{Hooks, Operation};
use crate::mapping::{self, GroupRules, NameSource, Verdict};
use crate::realm::{self, Addressed};
use crate::{Error, Result, TRACE_TARGET, dn, filter};

/// The [`DenyReason::Policy`] text of a login refused because the store's account of that
/// username is owned by another directory (see [`LdapConfig::realm`]): the same name in two
/// directories is two people, never merged into one account.
pub const OWNED_BY_ANOTHER_DIRECTORY: &str = "this username belongs to an account of another directory";

/// An LDAP / Active Directory authentication backend.
///
/// Cheap to clone (the pools, cache and store are shared). See the crate docs for the login
/// flow; every step emits events under the `ralph::ldap` target, never with a password.
pub struct LdapBackend<S> {
    inner: Arc<Inner<S>>,
}

impl<S> Clone for LdapBackend<S> {
    fn clone(&self) -> Self {
        Self { inner: Arc::clone(&self.inner) }
    }
}

impl<S> std::fmt::Debug for LdapBackend<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LdapBackend").field("config", &self.inner.config).finish_non_exhaustive()
    }
}

pub(crate) struct Inner<S> {
    pub(crate) config: LdapConfig,
    pub(crate) store: S,
    service: Pool,
    binds: Pool,
    op_timeout: std::time::Duration,
    pub(crate) cache: GroupCache,
    /// ppolicy policies' `pwdMaxAge`, read once per few minutes.
    policies: account::PolicyCache,
    pub(crate) rules: GroupRules,
    is_ad: OnceCell<bool>,
    pub(crate) attrs: Vec<String>,
    /// Where usernames come from, shared by logins and the sync so both store one spelling.
    pub(crate) names: NameSource,
    pub(crate) hooks: Hooks,
    /// The backend's name in the chain.
    name: String,
}

/// What [`LdapBackend::populate_user`] did.
// Returned once per call and moved straight into the result, as `AuthOutcome`: boxing would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Populated {
    /// The user was found and mirrored; they may log in.
    Mirrored(Identity),
    /// The user was found and refused: by the group rules (a user mirrored before is then
    /// made inactive), as inactive (mirrored inactive), by `no_new_users` or the account state.
    Refused(DenyReason),
    /// No single directory entry for this name.
    NotFound,
}

/// The outcome of looking a login name up.
pub(crate) enum Lookup {
    Found { entry: Entry, username: String },
    NotFound,
}

impl<S: UserStore> LdapBackend<S> {
    /// A backend for `config`, mirroring into `store`. Connections are opened on first use,
    /// so this succeeds while the directory is down.
    ///
    /// # Errors
    /// [`Error::Config`] for an invalid configuration or an unreadable CA file.
    pub fn new(config: LdapConfig, store: S) -> Result<Self> {
        Self::with_hooks(config, store, Hooks::new())
    }

    /// [`LdapBackend::new`] with a host app's [`Hooks`].
    ///
    /// # Errors
    /// As [`LdapBackend::new`]; [`Error::Config`] for a populate attribute that is not an
    /// attribute name.
    pub fn with_hooks(config: LdapConfig, store: S, hooks: Hooks) -> Result<Self> {
        config.validate()?;
        for attr in &hooks.populate_attrs {
            crate::config::check_attr(attr)?;
        }
        let connector = Connector::new(&config)?;
        let service = conn::pool(&config, &connector, Role::Service)?;
        let binds = conn::pool(&config, &connector, Role::UserBind)?;
        let rules = GroupRules::new(&config)?;
        let names = NameSource::new(&config);
        if matches!(names, NameSource::Rdn(_)) {
            debug!(target: TRACE_TARGET, "no username attribute known: usernames are the entries' RDN values");
        }
        let mut attrs = mapping::user_attributes(&config, &names);
        attrs.extend(hooks.populate_attrs.iter().cloned());
        if config.check_account_state {
            attrs.extend(account::ATTRS.iter().map(|a| (*a).to_owned()));
        }
        attrs.sort();
        attrs.dedup();
        if attrs.len() > 1 {
            attrs.retain(|a| a != "1.1");
        }
        let config_name = config.realm.as_ref().map_or_else(|| "ldap".to_owned(), |realm| format!("ldap:{realm}"));
        Ok(Self {
            inner: Arc::new(Inner {
                cache: GroupCache::new(config.cache_ttl()),
                policies: account::PolicyCache::default(),
                op_timeout: config.operation_timeout(),
                config,
                store,
                service,
                binds,
                rules,
                is_ad: OnceCell::new(),
                attrs,
                names,
                hooks,
                name: config_name,
            }),
        })
    }

    /// The configuration.
    #[must_use]
    pub fn config(&self) -> &LdapConfig {
        &self.inner.config
    }

    /// The store users are mirrored into.
    #[must_use]
    pub fn store(&self) -> &S {
        &self.inner.store
    }

    /// Reads one user from the directory and mirrors them into the store, without a password
    /// (django-auth-ldap's `LDAPBackend().populate_user(username)`), for admin tools: the same
    /// lookup (service account), group rules, mapping, hooks and `no_new_users` as a login.
    /// Needs a service account (or anonymous read): with `bind_as_authenticating_user` and
    /// no `bind_dn`, nobody can be read and every name is [`Populated::NotFound`].
    ///
    /// # Errors
    /// Directory and store errors, as a login; reported to [`Hooks::on_error`] too.
    pub async fn populate_user(&self, username: &str) -> Result<Populated> {
        let result = self.populate(username).await;
        if let Err(e) = &result {
            self.inner.hooks.report(Operation::PopulateUser, e);
        }
        result
    }

    async fn populate(&self, username: &str) -> Result<Populated> {
        let inner = &*self.inner;
        let Addressed::Here(typed) = realm::address(&inner.config, username) else {
            return Ok(Populated::NotFound);
        };
        let login = inner.hooks.login_name(inner.config.normalize_username, typed);
        if ralph_core::check_username(&login).is_err() {
            return Ok(Populated::NotFound);
        }
        let Lookup::Found { entry, username } = inner.lookup(&login).await? else {
            return Ok(Populated::NotFound);
        };
        // No bind here: only a closed account (disabled, expired) refuses; a lock or an
        // expired password is the user's to sort out at their next login.
        if let Some(refusal @ Refusal::Closed(_)) = inner.state_refusal(&entry, true, None) {
            let AuthOutcome::Denied(reason) = inner.refuse(&entry, &username, refusal).await? else {
                return Ok(Populated::NotFound);
            };
            return Ok(Populated::Refused(reason));
        }
        Ok(match inner.admit(inner, &entry, &username).await? {
            AuthOutcome::Authenticated(identity) => Populated::Mirrored(identity),
            AuthOutcome::Denied(reason) => Populated::Refused(reason),
            // admit never passes a user on; nothing was found for the chain's purposes.
            AuthOutcome::NotHandled => Populated::NotFound,
        })
    }

    /// Forgets every cached group membership.
    pub fn clear_group_cache(&self) {
        self.inner.cache.clear();
    }

    pub(crate) fn inner(&self) -> &Inner<S> {
        &self.inner
    }

    async fn login(&self, credentials: &Credentials) -> Result<AuthOutcome> {
        let inner = &*self.inner;
        // An empty password would be an unauthenticated bind, which many servers accept as
        // anonymous: refuse it before anything reaches the directory.
        if credentials.password.is_empty() {
            debug!(target: TRACE_TARGET, "empty password refused before any bind");
            return Ok(AuthOutcome::NotHandled);
        }
        let Addressed::Here(typed) = realm::address(&inner.config, &credentials.username) else {
            debug!(target: TRACE_TARGET, "login qualified with another realm, not this directory's");
            return Ok(AuthOutcome::NotHandled);
        };
        let login = inner.hooks.login_name(inner.config.normalize_username, typed);
        if ralph_core::check_username(&login).is_err() {
            debug!(target: TRACE_TARGET, "username is not valid, not looked up");
            return Ok(AuthOutcome::NotHandled);
        }
        if inner.config.bind_as_authenticating_user {
            return self.login_as_user(&login, &credentials.password).await;
        }
        let (entry, username) = match inner.lookup(&login).await? {
            Lookup::Found { entry, username } => (entry, username),
            Lookup::NotFound => {
                // Spend the bind round trip anyway, so the time a refusal takes does not tell
                // whether the account exists.
                inner.dummy_bind(&credentials.password).await;
                return Ok(AuthOutcome::NotHandled);
            }
        };
        let bound = inner.bind_as(&entry.dn, &credentials.password).await?.is_some();
        // The state is looked at after the bind was tried, whatever its outcome: the
        // directory refuses most of these binds itself, and the reason is what a user needs.
        let max_age = inner.password_max_age(inner, &entry).await?;
        if let Some(refusal) = inner.state_refusal(&entry, bound, max_age) {
            return inner.refuse(&entry, &username, refusal).await;
        }
        if !bound {
            debug!(target: TRACE_TARGET, dn = %entry.dn, "directory refused the password");
            return Ok(AuthOutcome::NotHandled);
        }
        inner.admit(inner, &entry, &username).await
    }

    /// `bind_as_authenticating_user`: bind with the templated name (or the DN the lookup
    /// found), then read the entry and the groups on that connection, as the user.
    async fn login_as_user(&self, login: &str, password: &Secret) -> Result<AuthOutcome> {
        let inner = &*self.inner;
        let bind_name = match inner.config.bind_name(login) {
            Some(name) => name,
            None => match inner.lookup(login).await? {
                Lookup::Found { entry, .. } => entry.dn,
                Lookup::NotFound => {
                    inner.dummy_bind(password).await;
                    return Ok(AuthOutcome::NotHandled);
                }
            },
        };
        let Some(ldap) = inner.bind_as(&bind_name, password).await? else {
            debug!(target: TRACE_TARGET, "directory refused the password");
            return Ok(AuthOutcome::NotHandled);
        };
        let as_user = AsUser { ldap: tokio::sync::Mutex::new(ldap), op_timeout: inner.op_timeout };
        // A UPN is no DN: the entry is found with the user search. Otherwise the entry is the
        // DN just bound to, read back (through the user filter) as the user.
        let entries = if inner.config.bind_name_template.is_some() {
            let union = inner
                .config
                .user_search
                .as_ref()
                .ok_or_else(|| Error::Config("bind_name_template needs user_search".into()))?;
            let mut merged = Merged::default();
            for search in union {
                let f = inner.user_search_filter(search, login);
                merged.extend(as_user.search(&search.base, search.scope.into(), &f, &inner.attr_refs()).await?);
            }
            merged.into_entries()
        } else {
            let f = filter::and(&[inner.config.user_filter.as_deref().unwrap_or_default()]);
            as_user.search(&bind_name, ldap3::Scope::Base, &f, &inner.attr_refs()).await?
        };
        let (entry, username) = match inner.pick(entries, login) {
            Lookup::Found { entry, username } => (entry, username),
            Lookup::NotFound => return Ok(AuthOutcome::NotHandled),
        };
        // Read after the bind (nothing could be read before it): a refused bind never gets here.
        let max_age = inner.password_max_age(&as_user, &entry).await?;
        if let Some(refusal) = inner.state_refusal(&entry, true, max_age) {
            return inner.refuse(&entry, &username, refusal).await;
        }
        inner.admit(&as_user, &entry, &username).await
    }
}

/// A user-bind connection bound as the user who logs in: the entry and the groups are read on
/// it, with the user's rights (`bind_as_authenticating_user`).
struct AsUser {
    ldap: tokio::sync::Mutex<Object<conn::Manager>>,
    op_timeout: std::time::Duration,
}

impl Directory for AsUser {
    async fn search(&self, base: &str, scope: ldap3::Scope, filter: &str, attrs: &[&str]) -> Result<Vec<Entry>> {
        let mut ldap = self.ldap.lock().await;
        let found = conn::search(&mut ldap, self.op_timeout, base, scope, filter, attrs).await?;
        fail_closed(found, base)
    }
}

/// The entries of a union's searches, one per DN (normalised), in the order first found: an
/// entry two searches both return is one entry, as django-auth-ldap's `LDAPSearchUnion` merges
/// its results by DN.
#[derive(Default)]
pub(crate) struct Merged {
    entries: Vec<Entry>,
    seen: std::collections::HashSet<String>,
}

impl Merged {
    pub(crate) fn extend(&mut self, entries: Vec<Entry>) {
        for entry in entries {
            if self.seen.insert(dn::normalize(&entry.dn)) {
                self.entries.push(entry);
            }
        }
    }

    pub(crate) fn into_entries(self) -> Vec<Entry> {
        self.entries
    }
}

/// Group lookups fail closed: a base that refers elsewhere or does not exist is an error.
fn fail_closed(found: conn::Found, base: &str) -> Result<Vec<Entry>> {
    if found.referred {
        return Err(Error::Result { op: "group search", rc: 10, text: format!("{base} is a referral (not chased)") });
    }
    if found.missing {
        return Err(Error::Result { op: "group search", rc: 32, text: format!("{base} does not exist") });
    }
    Ok(found.entries)
}

impl<S: UserStore> Inner<S> {
    /// The account state that refuses this login, when `check_account_state` is on: a closed
    /// account or an expired password always; a lock only when the directory refused the bind
    /// (`bound` false), since one that accepted it has ended the lock.
    /// `max_age` is the ppolicy `pwdMaxAge` that applies to the entry
    /// ([`Inner::password_max_age`]).
    pub(crate) fn state_refusal(&self, entry: &Entry, bound: bool, max_age: Option<Duration>) -> Option<Refusal> {
        if !self.config.check_account_state {
            return None;
        }
        match account::refusal(entry, SystemTime::now(), max_age)? {
            Refusal::Locked if bound => {
                debug!(target: TRACE_TARGET, dn = %entry.dn, "lock attributes set, but the directory accepted the bind");
                None
            }
            refusal => Some(refusal),
        }
    }

    /// The `pwdMaxAge` of the ppolicy policy that applies to `entry` (its `pwdPolicySubentry`,
    /// else `ppolicy_default`), read through `dir` and cached for a few minutes; `None` when the
    /// state is not checked, the entry has no `pwdChangedTime`, no policy applies, or it has
    /// no maximum age. A policy that cannot be read (missing, hidden, a referral) counts as no
    /// maximum age, with a warning: the directory enforces it on the bind anyway.
    pub(crate) async fn password_max_age<D: Directory>(&self, dir: &D, entry: &Entry) -> Result<Option<Duration>> {
        if !self.config.check_account_state || !account::has_password_age(entry) {
            return Ok(None);
        }
        let Some(policy) = entry.first(account::PWD_POLICY_SUBENTRY).or(self.config.ppolicy_default.as_deref()) else {
            return Ok(None);
        };
        let key = dn::normalize(policy);
        if let Some(max_age) = self.policies.get(&key) {
            return Ok(max_age);
        }
        let max_age = match dir.search(policy, ldap3::Scope::Base, "(objectClass=*)", &[account::PWD_MAX_AGE]).await {
            Ok(entries) => {
                if entries.is_empty() {
                    warn!(target: TRACE_TARGET, policy = %policy, "password policy not readable, its pwdMaxAge ignored");
                }
                entries.first().and_then(account::max_age_of)
            }
            // A referral, noSuchObject, insufficientAccessRights.
            Err(Error::Result { rc: 10 | 32 | 50, .. }) => {
                warn!(target: TRACE_TARGET, policy = %policy, "password policy not found, its pwdMaxAge ignored");
                None
            }
            Err(e) => return Err(e),
        };
        self.policies.put(key, max_age);
        Ok(max_age)
    }

    /// Refuses for the account state; a closed account's LDAP-owned record is made inactive.
    async fn refuse(&self, entry: &Entry, username: &str, refusal: Refusal) -> Result<AuthOutcome> {
        debug!(target: TRACE_TARGET, dn = %entry.dn, reason = ?refusal, "refused for the account state");
        if matches!(refusal, Refusal::Closed(_)) {
            self.deactivate_refused(entry, username).await?;
        }
        Ok(AuthOutcome::Denied(refusal.reason()))
    }

    /// Everything after the password was checked: `no_new_users`, groups (read through `dir`),
    /// require / deny, roles, flags, the mirror.
    pub(crate) async fn admit<D: Directory>(&self, dir: &D, entry: &Entry, username: &str) -> Result<AuthOutcome> {
        if self.config.no_new_users && self.store.get_user(username).await?.is_none() {
            debug!(target: TRACE_TARGET, username = %username, "not in the store and no_new_users is set");
            return Ok(AuthOutcome::Denied(DenyReason::NotProvisioned));
        }
        let mut groups = match self.groups_of(dir, entry, username).await {
            Ok(groups) => groups,
            Err(e) => {
                // Fail closed: a login never proceeds as if the user had no groups.
                warn!(target: TRACE_TARGET, dn = %entry.dn, error = %e, "reading groups failed, login refused");
                return Err(e);
            }
        };
        // Require / deny first, on every group found: naming groups comes after, and only
        // when names become roles.
        let flags = match self.rules.decide(&groups) {
            Verdict::Allowed(flags) => flags,
            refused => {
                let reason =
                    if refused == Verdict::Denied { DenyReason::DeniedGroup } else { DenyReason::MissingRequiredGroup };
                // A user mirrored before and refused now must not stay active in the store.
                if let Err(e) = self.deactivate_refused(entry, username).await {
                    warn!(target: TRACE_TARGET, dn = %entry.dn, error = %e, "deactivating a refused user failed");
                    return Err(e);
                }
                return Ok(AuthOutcome::Denied(reason));
            }
        };
        let roles = match self.roles_of(dir, entry, &mut groups).await {
            Ok(roles) => roles,
            Err(e) => {
                warn!(target: TRACE_TARGET, dn = %entry.dn, error = %e, "naming groups failed, login refused");
                return Err(e);
            }
        };
        let mut user = mapping::user(&self.config, entry, username, &roles, flags);
        let mut profile = mapping::profile(&self.config, entry);
        if let Some(populate) = &self.hooks.populate {
            populate(entry, &mut user, &mut profile);
            // The stored identity is the directory's: a hook fills fields, it does not rename.
            username.clone_into(&mut user.username);
        }
        let mirror = mapping::mirror(&self.config, user.clone(), profile.clone(), &roles);
        // No process-local "already mirrored" shortcut: it cannot see another process's (or a
        // person's) writes. An unchanged mirror is a read in the store, not a write.
        match self.store.mirror_user(&mirror).await {
            Ok(_) => {}
            Err(e) if e.is_conflict() && self.owned_by_another_directory(username).await? => {
                // The same username in two directories is two people: the store wrote nothing,
                // and this directory's user is refused rather than merged into the other's.
                debug!(target: TRACE_TARGET, username = %username, realm = ?self.config.realm,
                    "username owned by another directory, refused");
                return Ok(AuthOutcome::Denied(DenyReason::Policy(OWNED_BY_ANOTHER_DIRECTORY.into())));
            }
            // A local account of the same name: an error, as before, so that the chain's
            // error policy decides whether the local backend gets its turn.
            Err(e) => return Err(e.into()),
        }
        if !user.is_active {
            debug!(target: TRACE_TARGET, username = %username, "user is not in the active group");
            return Ok(AuthOutcome::Denied(DenyReason::Inactive));
        }
        Ok(AuthOutcome::Authenticated(Identity { user, profile, groups: roles }))
    }
}

impl<S: UserStore> Inner<S> {
    /// Whether the store's account of this name is an LDAP account of another directory.
    async fn owned_by_another_directory(&self, username: &str) -> Result<bool> {
        let existing = self.store.get_user(username).await?;
        Ok(existing
            .is_some_and(|u| u.value.source == ralph_core::UserSource::Ldap && u.value.directory != self.config.realm))
    }

    /// For a user the group rules refuse (deny group, missing require group): an LDAP-owned
    /// record already in the store is rewritten inactive, without flags or roles. Nothing is
    /// created for a user never mirrored, and a local account of the same name is left alone.
    /// Returns whether the store was written.
    pub(crate) async fn deactivate_refused(&self, entry: &Entry, username: &str) -> Result<bool> {
        let Some(existing) = self.store.get_user(username).await? else {
            return Ok(false);
        };
        // A local account, or one another directory owns, is not this directory's to change.
        if existing.value.source != ralph_core::UserSource::Ldap || existing.value.directory != self.config.realm {
            return Ok(false);
        }
        // The store compares: an already refused user costs one read and no write.
        let mirrored = self.store.mirror_user(&refused_mirror(&self.config, entry, username)).await?;
        let written = mirrored.change != MirrorChange::Unchanged;
        if written {
            debug!(target: TRACE_TARGET, username = %username, "refused by the group rules, mirrored inactive");
        }
        Ok(written)
    }
}

/// The mirror of a user refused by the group rules: inactive, no flags, no mirrored roles
/// (groups outside the mirror's scope are kept).
pub(crate) fn refused_mirror(config: &LdapConfig, entry: &Entry, username: &str) -> UserMirror {
    mapping::mirror(
        config,
        mapping::user(config, entry, username, &[], [false; 3]),
        mapping::profile(config, entry),
        &[],
    )
}

impl<S> Inner<S> {
    /// A search over the service pool. A connection found dead (the server restarted) is
    /// dropped and the search retried once on a fresh one; any other error is returned.
    pub(crate) async fn service_search(
        &self,
        base: &str,
        scope: ldap3::Scope,
        filter: &str,
        attrs: &[&str],
    ) -> Result<conn::Found> {
        // One immediate retry when the pooled connection was dead, not a back-off: so no backon.
        let mut retried = false;
        loop {
            let mut ldap = conn::checkout(&self.service).await?;
            match conn::search(&mut ldap, self.op_timeout, base, scope, filter, attrs).await {
                Ok(found) => {
                    if found.referrals > 0 || found.referred {
                        debug!(target: TRACE_TARGET, referrals = found.referrals, "referrals ignored (not chased)");
                    }
                    return Ok(found);
                }
                Err(e) => {
                    if e.is_unavailable() {
                        drop(Object::take(ldap));
                    }
                    if conn::is_stale(&e) && !retried {
                        retried = true;
                        continue;
                    }
                    return Err(e);
                }
            }
        }
    }

    /// A service connection for a long operation (the bulk sync).
    pub(crate) async fn service_connection(&self) -> Result<Object<conn::Manager>> {
        conn::checkout(&self.service).await
    }

    pub(crate) fn op_timeout(&self) -> std::time::Duration {
        self.op_timeout
    }

    /// Finds the entry for a login name: a user search (escaped, ANDed with the user filter)
    /// or a DN template (escaped as a DN value). Zero or several matches are "not found". The
    /// username is the directory's spelling ([`NameSource::username`]), never the typed one,
    /// so `Alice`, `alice` and `ALICE` are one stored user.
    pub(crate) async fn lookup(&self, login: &str) -> Result<Lookup> {
        let attrs = self.attr_refs();
        let user_filter = self.config.user_filter.as_deref().unwrap_or_default();
        let entries = if let Some(union) = &self.config.user_search {
            // The searches of a union run side by side, each on its own pooled connection.
            let searches = union.iter().map(|search| {
                let f = self.user_search_filter(search, login);
                let attrs = &attrs;
                async move { self.service_search(&search.base, search.scope.into(), &f, attrs).await }
            });
            let mut merged = Merged::default();
            for found in futures::future::try_join_all(searches).await? {
                merged.extend(found.entries);
            }
            merged.into_entries()
        } else if let Some(template) = &self.config.user_dn_template {
            let user_dn = filter::fill(template, &dn::escape_value(login));
            let f = filter::and(&[user_filter]);
            self.service_search(&user_dn, ldap3::Scope::Base, &f, &attrs).await?.entries
        } else {
            return Err(Error::Config("no user search or DN template".into()));
        };
        Ok(self.pick(entries, login))
    }

    /// The attributes a user lookup asks for.
    fn attr_refs(&self) -> Vec<&str> {
        self.attrs.iter().map(String::as_str).collect()
    }

    /// The user search filter for `login` (escaped), ANDed with the user filter.
    fn user_search_filter(&self, search: &crate::SearchSpec, login: &str) -> String {
        let user_filter = self.config.user_filter.as_deref().unwrap_or_default();
        filter::and(&[&filter::fill(&search.filter, &filter::escape(login)), user_filter])
    }

    /// The one entry of a lookup that carries `login`, with its username.
    fn pick(&self, entries: Vec<Entry>, login: &str) -> Lookup {
        let mut entries = entries.into_iter();
        let (Some(entry), None) = (entries.next(), entries.next()) else {
            debug!(target: TRACE_TARGET, "no single directory entry for this login");
            return Lookup::NotFound;
        };
        if !self.names.carries(&entry, login) {
            warn!(target: TRACE_TARGET, dn = %entry.dn, "entry found does not carry the login name, ignored");
            return Lookup::NotFound;
        }
        let Some(username) = self.names.username(&entry) else {
            warn!(target: TRACE_TARGET, dn = %entry.dn, "entry found has no username value, ignored");
            return Lookup::NotFound;
        };
        if ralph_core::check_username(&username).is_err() {
            warn!(target: TRACE_TARGET, dn = %entry.dn, "directory username is not a valid Ralph username");
            return Lookup::NotFound;
        }
        Lookup::Found { entry, username }
    }

    /// Binds as the user on a bind-only connection, and hands that connection back (bound as
    /// the user). `Ok(None)` for a refused password.
    async fn bind_as(&self, user_dn: &str, password: &Secret) -> Result<Option<Object<conn::Manager>>> {
        if password.is_empty() {
            return Ok(None);
        }
        // As in `service_search`: one immediate retry after a dead pooled connection, no back-off.
        let mut retried = false;
        loop {
            let mut ldap = conn::checkout(&self.binds).await?;
            let result = ldap.with_timeout(self.op_timeout).simple_bind(user_dn, password.expose()).await;
            let error = match result {
                Ok(r) => match r.rc {
                    0 => return Ok(Some(ldap)),
                    // invalidCredentials; inappropriateAuthentication; insufficientAccessRights;
                    // unwillingToPerform; constraintViolation (locked by a password policy).
                    49 | 48 | 50 | 53 | 19 => {
                        debug!(target: TRACE_TARGET, rc = r.rc, "user bind refused");
                        return Ok(None);
                    }
                    rc => Error::Result { op: "user bind", rc, text: r.text },
                },
                Err(e) => Error::from_ldap("user bind", e),
            };
            if error.is_unavailable() {
                drop(Object::take(ldap));
            }
            if conn::is_stale(&error) && !retried {
                retried = true;
                continue;
            }
            return Err(error);
        }
    }

    /// A bind as an entry that does not exist, for timing only; its outcome is ignored.
    async fn dummy_bind(&self, password: &Secret) {
        let base = self.config.user_search.as_ref().and_then(crate::SearchUnion::first).map_or("", |s| s.base.as_str());
        let dn = if base.is_empty() {
            "cn=ralph-ldap-no-such-user".to_owned()
        } else {
            format!("cn=ralph-ldap-no-such-user,{base}")
        };
        if let Ok(mut ldap) = conn::checkout(&self.binds).await {
            let _ = ldap.with_timeout(self.op_timeout).simple_bind(&dn, password.expose()).await;
        }
    }

    /// The user's groups, from the cache or the directory. When the group rules check
    /// membership (require, deny, `flags_by_group`), the cache serves only groups read within
    /// `group_check_ttl_secs` (by default none: every login reads them again); otherwise
    /// (roles only) within `cache_ttl_secs`. Fresh groups refresh the cache either way.
    pub(crate) async fn groups_of<D: Directory>(
        &self,
        dir: &D,
        entry: &Entry,
        username: &str,
    ) -> Result<Vec<LdapGroup>> {
        let key = dn::normalize(&entry.dn);
        let cached = if self.rules.has_checks() {
            self.cache.get_within(&key, self.config.group_check_ttl())
        } else {
            self.cache.get(&key)
        };
        if let Some(groups) = cached {
            return Ok(groups);
        }
        let use_rule = self.use_matching_rule(dir).await?;
        let member_of = entry.values(&self.config.member_of_attr);
        let gid = entry.first(groups::GID_NUMBER);
        let groups = groups::resolve(&self.config, dir, &entry.dn, username, member_of, gid, use_rule).await?;
        self.cache.put(key, groups.clone());
        Ok(groups)
    }

    /// The roles the user's groups give. Without a mapping they are group names: groups not
    /// named by the lookup are named now (and the cache updated), and one that cannot be
    /// named is an error.
    pub(crate) async fn roles_of<D: Directory>(
        &self,
        dir: &D,
        entry: &Entry,
        groups: &mut [LdapGroup],
    ) -> Result<Vec<ralph_core::Group>> {
        if self.rules.needs_names() && groups.iter().any(|g| g.name.is_none()) {
            groups::name_all(&self.config, dir, groups).await?;
            self.cache.put(dn::normalize(&entry.dn), groups.to_vec());
        }
        Ok(self.rules.roles(groups))
    }

    pub(crate) async fn use_matching_rule<D: Directory>(&self, dir: &D) -> Result<bool> {
        match self.config.nested_groups {
            NestedGroups::MatchingRule => Ok(true),
            NestedGroups::Off | NestedGroups::Recursive => Ok(false),
            NestedGroups::Auto if self.config.group_search.is_none() => Ok(false),
            NestedGroups::Auto => {
                let is_ad = self
                    .is_ad
                    .get_or_try_init(|| async {
                        let root =
                            dir.search("", ldap3::Scope::Base, "(objectClass=*)", &["supportedCapabilities"]).await?;
                        let is_ad = root
                            .iter()
                            .any(|e| e.values("supportedCapabilities").iter().any(|c| c == groups::AD_CAPABILITY));
                        debug!(target: TRACE_TARGET, is_ad, "directory type detected for nested groups");
                        Ok::<_, Error>(is_ad)
                    })
                    .await?;
                Ok(*is_ad)
            }
        }
    }
}

impl<S> Directory for Inner<S> {
    /// Group lookups fail closed: a base that refers elsewhere or does not exist (a mistyped
    /// `group_search.base`, a deleted group) is an error, never "no groups", since a deny group
    /// would otherwise be bypassed (continuation references below the base are ignored).
    async fn search(&self, base: &str, scope: ldap3::Scope, filter: &str, attrs: &[&str]) -> Result<Vec<Entry>> {
        fail_closed(self.service_search(base, scope, filter, attrs).await?, base)
    }
}

#[async_trait]
impl<S: UserStore> AuthBackend for LdapBackend<S> {
    /// `ldap`, or `ldap:REALM` for a directory with a [`realm`](LdapConfig::realm), so a
    /// chain's [`Login::backend`](ralph_core::auth::Login) says which directory accepted a login.
    fn name(&self) -> &str {
        &self.inner.name
    }

    async fn authenticate(&self, credentials: &Credentials) -> Result<AuthOutcome, AuthError> {
        let span = info_span!(target: TRACE_TARGET, "ldap_login", username = %credentials.username);
        self.login(credentials).instrument(span).await.map_err(|e| {
            self.inner.hooks.report(Operation::Authenticate, &e);
            AuthError::from(e)
        })
    }
}
