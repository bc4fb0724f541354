//! The backend's configuration: every django-auth-ldap setting Ralph used, loadable from TOML
//! and buildable in code.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ralph_core::{Group, GroupScope, Secret};
use serde::Deserialize;

use crate::hooks::NormalizeUsername;
use crate::query::GroupQuery;
use crate::{Error, dn, filter};

/// Search scope (`ldap.SCOPE_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// The base entry only.
    Base,
    /// The base's direct children.
    #[serde(alias = "onelevel")]
    OneLevel,
    /// The base and everything below it.
    #[default]
    Subtree,
}

impl From<Scope> for ldap3::Scope {
    fn from(value: Scope) -> Self {
        match value {
            Scope::Base => Self::Base,
            Scope::OneLevel => Self::OneLevel,
            Scope::Subtree => Self::Subtree,
        }
    }
}

/// An `LDAPSearch(base, scope, filter)`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SearchSpec {
    /// Where the search starts.
    pub base: String,
    /// How deep it goes.
    #[serde(default)]
    pub scope: Scope,
    /// The filter; for the user search it holds the `%(user)s` (or `{user}`) placeholder.
    pub filter: String,
}

impl SearchSpec {
    /// A search of `base` with `scope` and `filter`.
    #[must_use]
    pub fn new(base: impl Into<String>, scope: Scope, filter: impl Into<String>) -> Self {
        Self { base: base.into(), scope, filter: filter.into() }
    }
}

/// One search (`LDAPSearch`) or a union of several (`LDAPSearchUnion`), for the user search
/// and the group search: several OUs, or several domains of one forest. Every search of a
/// union is run and the entries merged, one per DN (compared normalised): a login finds its
/// user when the searches together return exactly one entry, as with a single search.
///
/// In TOML, one search is a table (`[user_search]`) and a union a list of them
/// (`user_search = [{ base = "...", filter = "..." }, ...]` or `[[user_search]]` tables).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SearchUnion(Vec<SearchSpec>);

impl SearchUnion {
    /// A union of `searches` (an empty one is refused by [`LdapConfig::validate`]).
    pub fn new(searches: impl IntoIterator<Item = SearchSpec>) -> Self {
        Self(searches.into_iter().collect())
    }

    /// The searches, in the order they were written.
    #[must_use]
    pub fn searches(&self) -> &[SearchSpec] {
        &self.0
    }

    /// The searches, in order.
    pub fn iter(&self) -> std::slice::Iter<'_, SearchSpec> {
        self.0.iter()
    }

    /// The first search: the only one unless this is a union.
    #[must_use]
    pub fn first(&self) -> Option<&SearchSpec> {
        self.0.first()
    }

    /// Whether this is a union of more than one search.
    #[must_use]
    pub fn is_union(&self) -> bool {
        self.0.len() > 1
    }

    /// Whether some search of the union can return an entry at `entry_dn`, other than the
    /// search at `except` (by position): only then may two searches return the same entry.
    pub(crate) fn other_covers(&self, entry_dn: &str, except: usize) -> bool {
        self.0.iter().enumerate().any(|(i, s)| i != except && s.covers(entry_dn))
    }
}

impl From<SearchSpec> for SearchUnion {
    fn from(search: SearchSpec) -> Self {
        Self(vec![search])
    }
}

impl<'a> IntoIterator for &'a SearchUnion {
    type Item = &'a SearchSpec;
    type IntoIter = std::slice::Iter<'a, SearchSpec>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

impl<'de> Deserialize<'de> for SearchUnion {
    /// A table is one search, an array a union. Written by hand rather than as an untagged
    /// enum, so that a mistake inside a search (an unknown key, a missing filter) is reported
    /// as such, not as "matched no variant".
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = SearchUnion;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a search table { base, scope, filter } or an array of them")
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<SearchUnion, A::Error> {
                SearchSpec::deserialize(serde::de::value::MapAccessDeserializer::new(map)).map(SearchUnion::from)
            }

            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, seq: A) -> Result<SearchUnion, A::Error> {
                Vec::<SearchSpec>::deserialize(serde::de::value::SeqAccessDeserializer::new(seq)).map(SearchUnion)
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

impl SearchSpec {
    /// Whether this search can return an entry at `entry_dn`: it lies within the base at the
    /// search's scope. A DN that does not parse is taken as covered (the careful answer).
    pub(crate) fn covers(&self, entry_dn: &str) -> bool {
        let (Ok(entry), Ok(base)) = (dn::Dn::parse(entry_dn), dn::Dn::parse(&self.base)) else { return true };
        let Some(extra) = entry.0.len().checked_sub(base.0.len()) else { return false };
        let under = dn::Dn(entry.0[extra..].to_vec()).normalized() == base.normalized();
        under
            && match self.scope {
                Scope::Base => extra == 0,
                Scope::OneLevel => extra == 1,
                Scope::Subtree => true,
            }
    }
}

/// Where group membership comes from (`AUTH_LDAP_GROUP_TYPE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GroupType {
    /// The user entry's `memberOf` values (Active Directory; OpenLDAP's memberof overlay).
    #[default]
    MemberOf,
    /// A group search for groups whose `member` holds the user's DN (`GroupOfNamesType`,
    /// Ralph's `MappedGroupOfNamesType`).
    GroupOfNames,
    /// A group search for posixGroups whose `memberUid` holds the username.
    Posix,
}

/// How nested groups are resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NestedGroups {
    /// Only direct memberships.
    Off,
    /// Follow group-in-group memberships on the client, with a cycle guard and a depth limit.
    Recursive,
    /// Active Directory's `LDAP_MATCHING_RULE_IN_CHAIN` (1.2.840.113556.1.4.1941): one search,
    /// resolved by the server.
    MatchingRule,
    /// The matching rule when the server says it is Active Directory, recursion otherwise.
    #[default]
    Auto,
}

/// How the connection is secured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TlsMode {
    /// Plain `ldap://` (or TLS from the start for `ldaps://` URIs). Chosen explicitly, this is
    /// the opt-in to sending passwords in clear to non-loopback `ldap://` servers.
    None,
    /// The StartTLS extended operation on `ldap://` URIs (RFC 4513).
    StartTls,
}

/// TLS settings. Certificates are verified unless `verify = false` is written explicitly.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// StartTLS on `ldap://` URIs. `ldaps://` URIs always use TLS. Not set (the default), an
    /// `ldap://` URI to a host other than loopback is refused by [`LdapConfig::validate`]:
    /// passwords would cross the network in clear. `Some(TlsMode::None)` (`mode = "none"` in
    /// TOML) accepts that explicitly, as does [`LdapConfig::allow_plaintext`].
    #[serde(default)]
    pub mode: Option<TlsMode>,
    /// A PEM file of CA certificates to trust instead of the system store.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Verify the server certificate and host name (default: true).
    #[serde(default = "yes")]
    pub verify: bool,
}

impl Default for TlsConfig {
    fn default() -> Self {
        Self { mode: None, ca_file: None, verify: true }
    }
}

impl TlsConfig {
    /// StartTLS on `ldap://` URIs, verified against `ca_file` (the system store when `None`).
    #[must_use]
    pub fn start_tls(ca_file: Option<PathBuf>) -> Self {
        Self { mode: Some(TlsMode::StartTls), ca_file, verify: true }
    }

    /// Whether `ldap://` connections upgrade with StartTLS.
    #[must_use]
    pub fn uses_start_tls(&self) -> bool {
        self.mode == Some(TlsMode::StartTls)
    }
}

/// `AUTH_LDAP_USER_ATTR_MAP`: which directory attribute fills which user field.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserAttrMap {
    /// Given name (default `givenName`).
    #[serde(default)]
    pub first_name: Option<String>,
    /// Family name (default `sn`).
    #[serde(default)]
    pub last_name: Option<String>,
    /// E-mail (default `mail`).
    #[serde(default)]
    pub email: Option<String>,
}

impl Default for UserAttrMap {
    fn default() -> Self {
        Self { first_name: Some("givenName".into()), last_name: Some("sn".into()), email: Some("mail".into()) }
    }
}

/// `AUTH_LDAP_PROFILE_ATTR_MAP`: which directory attribute fills which profile field.
/// `manager` is a DN whose display name is stored; `country` must be an ISO 3166-1 code.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProfileAttrMap {
    /// Company.
    #[serde(default)]
    pub company: Option<String>,
    /// The manager's DN.
    #[serde(default)]
    pub manager: Option<String>,
    /// Department.
    #[serde(default)]
    pub department: Option<String>,
    /// Employee id.
    #[serde(default)]
    pub employee_id: Option<String>,
    /// Office or location.
    #[serde(default)]
    pub location: Option<String>,
    /// ISO 3166-1 alpha-2 country code.
    #[serde(default)]
    pub country: Option<String>,
}

impl ProfileAttrMap {
    /// Whether any profile field is mapped.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.attributes().next().is_none()
    }

    /// The mapped attribute names.
    pub fn attributes(&self) -> impl Iterator<Item = &str> {
        [&self.company, &self.manager, &self.department, &self.employee_id, &self.location, &self.country]
            .into_iter()
            .filter_map(|a| a.as_deref())
    }
}

/// `AUTH_LDAP_USER_FLAGS_BY_GROUP`: group queries that set a flag, on top of the `active`,
/// `staff` and `superuser` roles. Each is a [`GroupQuery`]: a DN, a list of DNs (any of
/// them), or `{ any | all | not = ... }`. An empty list is a configuration error.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlagsByGroup {
    /// Users the query matches are active.
    #[serde(default)]
    pub is_active: Option<GroupQuery>,
    /// Users the query matches are staff.
    #[serde(default)]
    pub is_staff: Option<GroupQuery>,
    /// Users the query matches are superusers.
    #[serde(default)]
    pub is_superuser: Option<GroupQuery>,
}

impl FlagsByGroup {
    /// Whether any flag is set by group.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.is_active.is_none() && self.is_staff.is_none() && self.is_superuser.is_none()
    }

    /// The flags with queries, by name.
    fn queries(&self) -> impl Iterator<Item = (&'static str, &GroupQuery)> {
        [
            ("flags_by_group.is_active", &self.is_active),
            ("flags_by_group.is_staff", &self.is_staff),
            ("flags_by_group.is_superuser", &self.is_superuser),
        ]
        .into_iter()
        .filter_map(|(name, q)| q.as_ref().map(|q| (name, q)))
    }
}

/// `AUTH_LDAP_MIRROR_GROUPS`: `true`, `false`, or the list of role names to mirror.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
#[non_exhaustive]
pub enum MirrorGroups {
    /// Every role (`true`), or none (`false`).
    All(bool),
    /// Only these role names; the user's other groups are kept.
    Only(Vec<String>),
}

impl Default for MirrorGroups {
    fn default() -> Self {
        Self::All(true)
    }
}

impl From<bool> for MirrorGroups {
    fn from(value: bool) -> Self {
        Self::All(value)
    }
}

impl MirrorGroups {
    /// Mirror only these role names (django-auth-ldap's `MIRROR_GROUPS = [...]`).
    pub fn only<I, S>(names: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self::Only(names.into_iter().map(Into::into).collect())
    }

    /// Whether any group is mirrored.
    #[must_use]
    pub fn is_on(&self) -> bool {
        !matches!(self, Self::All(false))
    }
}

/// The whole configuration. Load it with [`LdapConfig::from_toml_str`] /
/// [`LdapConfig::from_toml_file`], or build it with [`LdapConfig::builder`].
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct LdapConfig {
    /// `AUTH_LDAP_SERVER_URI`: `ldap://` or `ldaps://` URIs, tried in order (failover).
    pub server_uris: Vec<String>,
    /// The directory's name (its realm or domain, such as `corp` or `corp.example`), for an
    /// installation with several directories (no django-auth-ldap equivalent): users this
    /// backend mirrors are owned by it (`User::directory`), a login `user@realm` or
    /// `REALM\user` (any case) goes to this directory only and one naming another realm is
    /// not handled here, and its sync deactivates only the users it owns. The same username
    /// in two directories is never one account: the second directory's login is refused.
    /// Not set: one unnamed directory, logins taken as typed.
    #[serde(default)]
    pub realm: Option<String>,
    /// Other names a login may qualify this directory with, such as the NetBIOS name `CORP`
    /// of `corp.example` (any case). Needs `realm`.
    #[serde(default)]
    pub realm_aliases: Vec<String>,
    /// `AUTH_LDAP_BIND_DN`: the service account; anonymous when absent. Needs
    /// `bind_password`: a DN bound without one is an unauthenticated bind, which servers
    /// (Active Directory among them) accept as anonymous.
    #[serde(default)]
    pub bind_dn: Option<String>,
    /// `AUTH_LDAP_BIND_PASSWORD` (not empty).
    #[serde(default)]
    pub bind_password: Option<Secret>,
    /// Accept sending passwords (the service account's and every user's) in clear over
    /// `ldap://` to hosts other than loopback, without StartTLS (default false; writing
    /// `tls.mode = "none"` does the same). Django-auth-ldap did this silently; here it is a
    /// decision written down, and a warning at start.
    #[serde(default)]
    pub allow_plaintext: bool,
    /// `AUTH_LDAP_PROTOCOL_VERSION`: only 3 is supported.
    #[serde(default = "three")]
    pub protocol_version: u8,
    /// `AUTH_LDAP_USER_SEARCH`: where and how to find a user; the filter holds the placeholder.
    /// One search, or a union of several (`LDAPSearchUnion`, see [`SearchUnion`]): a login
    /// needs exactly one entry from all of them together, and the sync lists them all.
    #[serde(default)]
    pub user_search: Option<SearchUnion>,
    /// `AUTH_LDAP_USER_DN_TEMPLATE`, e.g. `uid=%(user)s,ou=people,dc=example,dc=com`: used
    /// instead of a search when set.
    #[serde(default)]
    pub user_dn_template: Option<String>,
    /// `AUTH_LDAP_BIND_AS_AUTHENTICATING_USER`: bind as the user and read the user's entry and
    /// groups on that connection, as the user (default false). For directories with no
    /// service account and no anonymous read (common with Active Directory): leave `bind_dn`
    /// out and set `bind_name_template` (or `user_dn_template`). With only a `user_search`,
    /// the entry is found with the service account (or anonymously) first, as django-auth-ldap
    /// does, and read again as the user after the bind.
    #[serde(default)]
    pub bind_as_authenticating_user: bool,
    /// With `bind_as_authenticating_user`: the name the user binds with, made from the login
    /// name: a UPN such as `%(user)s@corp.example` (inserted as typed) or a DN template such
    /// as `uid=%(user)s,ou=people,dc=example,dc=com` (DN-escaped). The entry is then read with
    /// `user_search`, which this setting needs. django-auth-ldap users write this as a
    /// `USER_DN_TEMPLATE` that is not a DN.
    #[serde(default)]
    pub bind_name_template: Option<String>,
    /// `AUTH_LDAP_USER_FILTER`: ANDed into every user lookup and into the bulk sync; users it
    /// does not match are not imported at all.
    #[serde(default)]
    pub user_filter: Option<String>,
    /// The attribute holding the login name (`sAMAccountName`, `uid`). The looked-up entry must
    /// carry the typed name in it (any case), and the stored username is always the
    /// directory's spelling, for logins and the bulk sync alike: the value of the entry's RDN
    /// when the RDN is this attribute, else its first value. When not set it is the attribute
    /// the user search filter compares the placeholder with (`(sAMAccountName=%(user)s)`),
    /// provided the filter holds exactly one such comparison, or the RDN attribute of the DN
    /// template (`uid=%(user)s,...`). Otherwise (`(|(mail=%(user)s)(uid=%(user)s))`) the
    /// entry's RDN value is the username, and the typed name must equal it or a value of one
    /// of the attributes the filter compares it with (any case).
    #[serde(default)]
    pub username_attr: Option<String>,
    /// How a typed login name is normalised before it is looked up (what a django-auth-ldap
    /// site did by overriding `ldap_to_django_username`): trim, strip a `DOMAIN\` prefix,
    /// lower-case. All off by default. A host app adds its own with
    /// [`Hooks::normalize_username`](crate::Hooks::normalize_username).
    #[serde(default)]
    pub normalize_username: NormalizeUsername,
    /// `AUTH_LDAP_USER_ATTR_MAP`.
    #[serde(default)]
    pub user_attr_map: UserAttrMap,
    /// `AUTH_LDAP_PROFILE_ATTR_MAP`.
    #[serde(default)]
    pub profile_attr_map: ProfileAttrMap,
    /// `AUTH_LDAP_GROUP_TYPE`.
    #[serde(default)]
    pub group_type: GroupType,
    /// The `name_attr` of the group type: the attribute naming a group (default `cn`).
    #[serde(default = "cn")]
    pub group_name_attr: String,
    /// The group attribute listing member DNs, for [`GroupType::GroupOfNames`] (default `member`).
    #[serde(default = "member")]
    pub group_member_attr: String,
    /// The user attribute listing group DNs, for [`GroupType::MemberOf`] (default `memberOf`).
    #[serde(default = "member_of")]
    pub member_of_attr: String,
    /// `AUTH_LDAP_GROUP_SEARCH`: where groups live (required for the group-search types and
    /// for the matching-rule nesting). One search, or a union of several (`LDAPSearchUnion`,
    /// see [`SearchUnion`]): every group lookup runs each and merges the groups found.
    #[serde(default)]
    pub group_search: Option<SearchUnion>,
    /// `AUTH_LDAP_FIND_GROUP_PERMS`-style nesting.
    #[serde(default)]
    pub nested_groups: NestedGroups,
    /// How deep client-side recursion goes (default 8).
    #[serde(default = "eight")]
    pub max_group_depth: usize,
    /// `AUTH_LDAP_GROUP_MAPPING`: group DN → Ralph role. When not empty, unmapped groups are
    /// ignored; when empty, group names are used as they are.
    #[serde(default)]
    pub group_mapping: BTreeMap<String, String>,
    /// `AUTH_LDAP_MIRROR_GROUPS`: store the user's roles as local groups. `true` (the default)
    /// mirrors every role: the user's group list in the store becomes the mapped roles; `false`
    /// leaves groups alone; a list of role names mirrors only those, and leaves the user's other
    /// groups (given by hand in the inventory) as they are.
    #[serde(default)]
    pub mirror_groups: MirrorGroups,
    /// `AUTH_LDAP_MIRROR_GROUPS_EXCEPT`: role names the mirror never adds or removes, so that
    /// memberships given by hand in the inventory (`assets-buyer`, say) survive every login and
    /// sync. Needs `mirror_groups = true` (as in django-auth-ldap, not with a list).
    #[serde(default)]
    pub mirror_groups_except: Vec<String>,
    /// `AUTH_LDAP_REQUIRE_GROUP`: a group DN, or a [`GroupQuery`] (`LDAPGroupQuery`), the
    /// user must match.
    #[serde(default)]
    pub require_group: Option<GroupQuery>,
    /// `AUTH_LDAP_DENY_GROUP`: a group DN, or a [`GroupQuery`], whose matches are refused.
    #[serde(default)]
    pub deny_group: Option<GroupQuery>,
    /// `AUTH_LDAP_USER_FLAGS_BY_GROUP`.
    #[serde(default)]
    pub flags_by_group: FlagsByGroup,
    /// Read the account state on login and in the sync (default true; no django-auth-ldap
    /// equivalent): Active Directory's `userAccountControl` (0x2 disabled, 0x10 locked out,
    /// 0x800000 password expired), `lockoutTime` > 0, `accountExpires` passed (a Windows
    /// FILETIME; 0 and 9223372036854775807 mean never) and `pwdLastSet` = 0 (must change), and
    /// OpenLDAP's ppolicy `pwdAccountLockedTime` and `pwdChangedTime` older than the policy's
    /// `pwdMaxAge` (see [`LdapConfig::ppolicy_default`]). Each refuses a login with its own
    /// [`DenyReason`](ralph_core::DenyReason) (`AccountDisabled`, `AccountLocked`,
    /// `AccountExpired`, `PasswordExpired`), after the bind was tried; a lock only counts when
    /// the directory refused the bind (AD leaves `lockoutTime` set after the lock has ended).
    /// Disabled and expired accounts are made inactive in the store, by logins and the sync.
    #[serde(default = "yes")]
    pub check_account_state: bool,
    /// The DN of the ppolicy overlay's default policy (`ppolicy_default` in slapd.conf,
    /// `olcPPolicyDefault`), for OpenLDAP: with `check_account_state`, a user's password has
    /// expired when its `pwdChangedTime` is older than the `pwdMaxAge` of the policy that
    /// applies, the user's `pwdPolicySubentry` or else this one. Policy entries are read with
    /// the service account (as the user under `bind_as_authenticating_user`) and kept for five
    /// minutes. Not set: only users with a `pwdPolicySubentry` are checked. No django-auth-ldap
    /// equivalent.
    #[serde(default)]
    pub ppolicy_default: Option<String>,
    /// `AUTH_LDAP_NO_NEW_USERS`: only users already in the store may log in (default false);
    /// others are refused with [`DenyReason::NotProvisioned`](ralph_core::DenyReason), and the
    /// bulk sync updates existing users without creating any.
    #[serde(default)]
    pub no_new_users: bool,
    /// `AUTH_LDAP_CACHE_TIMEOUT`: how long a user's groups are cached, in seconds (default
    /// 1200; 0 turns the cache off).
    #[serde(default = "cache_ttl")]
    pub cache_ttl_secs: u64,
    /// The oldest group memberships the group checks (require_group, deny_group,
    /// flags_by_group) may be decided on, in seconds (default 0: every login reads the user's
    /// groups again, so a user just added to the deny group is refused at once). Logins of a
    /// configuration without such checks (roles from the mapping only) keep `cache_ttl_secs`.
    /// Above `cache_ttl_secs` it is `cache_ttl_secs`. No django-auth-ldap equivalent (there
    /// the cache served both).
    #[serde(default)]
    pub group_check_ttl_secs: u64,
    /// TLS.
    #[serde(default)]
    pub tls: TlsConfig,
    /// Connect timeout per server URI, in milliseconds (default 2000), TLS handshake included.
    #[serde(default = "connect_timeout")]
    pub connect_timeout_ms: u64,
    /// Timeout of each LDAP operation, in milliseconds (default 5000).
    #[serde(default = "operation_timeout")]
    pub operation_timeout_ms: u64,
    /// Connections kept to the directory, per pool (service searches; user binds). Default 8.
    #[serde(default = "pool_size")]
    pub pool_size: usize,
    /// RFC 2696 page size for the bulk sync (default 500).
    #[serde(default = "page_size")]
    pub page_size: u32,
    /// Whether the bulk sync deactivates LDAP-owned users the directory no longer lists
    /// (default true). Skipped when the listing met referrals (see `SyncReport`).
    #[serde(default = "yes")]
    pub deactivate_missing: bool,
    /// The most the bulk sync deactivates in one run, in percent of the active LDAP-owned
    /// users (default 50; 100 lifts the limit), counting users missing from the listing and
    /// users the group rules (require/deny group) refuse together. A listing that comes back
    /// empty or nearly so, or a require group nobody seems to be in (a wrong base or filter, an
    /// ACL change, a server answering "success" with nothing) must not lock everyone out:
    /// above the limit nobody is deactivated, with a warning and
    /// `SyncReport::over_deactivation_limit`, unless the sync is forced
    /// (`SyncOptions::force_deactivation`).
    #[serde(default = "max_deactivate_percent")]
    pub max_deactivate_percent: u8,
}

fn yes() -> bool {
    true
}
fn three() -> u8 {
    3
}
fn cn() -> String {
    "cn".into()
}
fn member() -> String {
    "member".into()
}
fn member_of() -> String {
    "memberOf".into()
}
fn eight() -> usize {
    8
}
fn cache_ttl() -> u64 {
    1200
}
fn connect_timeout() -> u64 {
    2000
}
fn operation_timeout() -> u64 {
    5000
}
fn pool_size() -> usize {
    8
}
fn page_size() -> u32 {
    500
}
fn max_deactivate_percent() -> u8 {
    50
}

impl LdapConfig {
    /// A configuration for `server_uris` with every other setting at its default; set a user
    /// search or DN template before use.
    #[must_use]
    pub fn new<I, S>(server_uris: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self {
            server_uris: server_uris.into_iter().map(Into::into).collect(),
            realm: None,
            realm_aliases: Vec::new(),
            bind_dn: None,
            bind_password: None,
            allow_plaintext: false,
            protocol_version: three(),
            user_search: None,
            user_dn_template: None,
            bind_as_authenticating_user: false,
            bind_name_template: None,
            user_filter: None,
            username_attr: None,
            normalize_username: NormalizeUsername::default(),
            user_attr_map: UserAttrMap::default(),
            profile_attr_map: ProfileAttrMap::default(),
            group_type: GroupType::default(),
            group_name_attr: cn(),
            group_member_attr: member(),
            member_of_attr: member_of(),
            group_search: None,
            nested_groups: NestedGroups::default(),
            max_group_depth: eight(),
            group_mapping: BTreeMap::new(),
            mirror_groups: MirrorGroups::default(),
            mirror_groups_except: Vec::new(),
            require_group: None,
            deny_group: None,
            flags_by_group: FlagsByGroup::default(),
            check_account_state: true,
            ppolicy_default: None,
            no_new_users: false,
            cache_ttl_secs: cache_ttl(),
            group_check_ttl_secs: 0,
            tls: TlsConfig::default(),
            connect_timeout_ms: connect_timeout(),
            operation_timeout_ms: operation_timeout(),
            pool_size: pool_size(),
            page_size: page_size(),
            deactivate_missing: true,
            max_deactivate_percent: max_deactivate_percent(),
        }
    }

    /// A builder starting from [`LdapConfig::new`].
    pub fn builder<I, S>(server_uris: I) -> LdapConfigBuilder
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        LdapConfigBuilder(Self::new(server_uris))
    }

    /// Parses and validates a TOML document.
    ///
    /// # Errors
    /// [`Error::Config`] for a syntax error, an unknown key or an invalid setting. The message
    /// never contains the bind password.
    pub fn from_toml_str(text: &str) -> Result<Self, Error> {
        let config: Self = toml::from_str(text).map_err(|e| Error::Config(format!("invalid TOML: {}", e.message())))?;
        config.validate()?;
        Ok(config)
    }

    /// Reads, parses and validates a TOML file.
    ///
    /// # Errors
    /// [`Error::Config`] when the file cannot be read or is invalid.
    pub fn from_toml_file(path: impl AsRef<Path>) -> Result<Self, Error> {
        let path = path.as_ref();
        let text =
            std::fs::read_to_string(path).map_err(|e| Error::Config(format!("cannot read {}: {e}", path.display())))?;
        Self::from_toml_str(&text)
    }

    /// The connect timeout.
    #[must_use]
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms)
    }

    /// The per-operation timeout.
    #[must_use]
    pub fn operation_timeout(&self) -> Duration {
        Duration::from_millis(self.operation_timeout_ms)
    }

    /// The name a user binds with under `bind_as_authenticating_user`, when it comes from a
    /// template: `bind_name_template` (a DN template is DN-escaped, a UPN is not), else
    /// `user_dn_template`. `None` when the entry must be searched for first.
    #[must_use]
    pub fn bind_name(&self, login: &str) -> Option<String> {
        if let Some(template) = &self.bind_name_template {
            let value = if template.contains('=') { dn::escape_value(login).into_owned() } else { login.to_owned() };
            return Some(filter::fill(template, &value));
        }
        self.user_dn_template.as_ref().map(|t| filter::fill(t, &dn::escape_value(login)))
    }

    /// The group cache lifetime.
    #[must_use]
    pub fn cache_ttl(&self) -> Duration {
        Duration::from_secs(self.cache_ttl_secs)
    }

    /// How old the groups the group checks decide on may be.
    #[must_use]
    pub fn group_check_ttl(&self) -> Duration {
        Duration::from_secs(self.group_check_ttl_secs)
    }

    /// Checks that the settings make sense together.
    ///
    /// # Errors
    /// [`Error::Config`] naming the first problem.
    pub fn validate(&self) -> Result<(), Error> {
        let bad = |msg: String| Err(Error::Config(msg));
        if self.server_uris.is_empty() {
            return bad("server_uris is empty".into());
        }
        for uri in &self.server_uris {
            check_uri(uri)?;
        }
        if self.protocol_version != 3 {
            return bad(format!("protocol_version {} is not supported (only 3)", self.protocol_version));
        }
        if self.bind_password.is_some() && self.bind_dn.is_none() {
            return bad("bind_password is set but bind_dn is not".into());
        }
        if self.bind_dn.is_some() && self.bind_password.as_ref().is_none_or(Secret::is_empty) {
            // A DN with no password is an unauthenticated bind (RFC 4513 5.1.2): many servers,
            // Active Directory among them, let it through as anonymous.
            return bad("bind_dn is set without a bind_password: that bind would be unauthenticated \
                 (anonymous); set bind_password, or remove bind_dn for an explicit anonymous bind"
                .into());
        }
        if !self.allow_plaintext && self.tls.mode != Some(TlsMode::None) {
            let clear = self.server_uris.iter().find(|uri| sends_passwords_in_clear(uri, &self.tls));
            if let Some(uri) = clear {
                return bad(format!(
                    "server URI {} would send passwords in clear text (ldap:// without StartTLS to a \
                     host that is not loopback): set tls.mode = \"start_tls\", use ldaps://, or accept \
                     it explicitly with tls.mode = \"none\" or allow_plaintext = true",
                    shown_uri(uri)
                ));
            }
        }
        if let Some(dn) = &self.bind_dn {
            check_dn("bind_dn", dn)?;
        }
        if let Some(dn) = &self.ppolicy_default {
            check_dn("ppolicy_default", dn)?;
        }
        if let Some(realm) = &self.realm {
            for name in std::iter::once(realm).chain(&self.realm_aliases) {
                check_realm(name)?;
            }
        } else if !self.realm_aliases.is_empty() {
            return bad("realm_aliases needs realm".into());
        }
        self.check_mirror_groups()?;
        match (&self.user_search, &self.user_dn_template) {
            (None, None) => return bad("set user_search or user_dn_template".into()),
            (Some(_), Some(_)) => return bad("set only one of user_search and user_dn_template".into()),
            (Some(union), None) => {
                if union.searches().is_empty() {
                    return bad("user_search is an empty list".into());
                }
                for search in union {
                    check_dn("user_search.base", &search.base)?;
                    if !filter::has_placeholder(&search.filter) {
                        return bad("user_search.filter has no %(user)s or {user} placeholder".into());
                    }
                    filter::check(&filter::fill(&search.filter, "x"))
                        .map_err(|e| Error::Config(format!("user_search: {e}")))?;
                }
            }
            (None, Some(template)) => {
                if !filter::has_placeholder(template) {
                    return bad("user_dn_template has no %(user)s or {user} placeholder".into());
                }
                check_dn("user_dn_template", &filter::fill(template, "x"))?;
            }
        }
        if let Some(template) = &self.bind_name_template {
            if !self.bind_as_authenticating_user {
                return bad("bind_name_template needs bind_as_authenticating_user = true".into());
            }
            if self.user_search.is_none() {
                return bad("bind_name_template needs user_search, to read the entry after the bind".into());
            }
            if !filter::has_placeholder(template) {
                return bad("bind_name_template has no %(user)s or {user} placeholder".into());
            }
            if template.contains('=') {
                check_dn("bind_name_template", &filter::fill(template, "x"))?;
            }
        }
        if let Some(f) = &self.user_filter {
            filter::check(f).map_err(|e| Error::Config(format!("user_filter: {e}")))?;
        }
        if let Some(union) = &self.group_search {
            if union.searches().is_empty() {
                return bad("group_search is an empty list".into());
            }
            for search in union {
                check_dn("group_search.base", &search.base)?;
                filter::check(&search.filter).map_err(|e| Error::Config(format!("group_search: {e}")))?;
            }
        }
        if self.group_type != GroupType::MemberOf && self.group_search.is_none() {
            return bad(format!("group_type {:?} needs group_search", self.group_type));
        }
        if self.nested_groups == NestedGroups::MatchingRule
            && self.group_type == GroupType::MemberOf
            && self.group_search.is_none()
        {
            return bad("nested_groups = \"matching_rule\" needs group_search".into());
        }
        for attr in [&self.group_name_attr, &self.group_member_attr, &self.member_of_attr] {
            check_attr(attr)?;
        }
        if let Some(a) = &self.username_attr {
            check_attr(a)?;
        }
        for a in [&self.user_attr_map.first_name, &self.user_attr_map.last_name, &self.user_attr_map.email]
            .into_iter()
            .flatten()
        {
            check_attr(a)?;
        }
        for a in self.profile_attr_map.attributes() {
            check_attr(a)?;
        }
        for (group_dn, role) in &self.group_mapping {
            check_dn("group_mapping key", group_dn)?;
            Group::new(role).map_err(|e| Error::Config(format!("group_mapping role {role:?}: {e}")))?;
        }
        for (name, query) in [("require_group", &self.require_group), ("deny_group", &self.deny_group)] {
            if let Some(query) = query {
                query.validate(name)?;
            }
        }
        for (name, query) in self.flags_by_group.queries() {
            query.validate(name)?;
        }
        // A mapping is in use, so group names are not roles: unless a mapped role or a flag
        // query grants `active`, every login would be refused as inactive.
        let maps_active =
            self.group_mapping.values().any(|role| Group::new(role).is_ok_and(|g| g.as_str() == Group::ACTIVE));
        if !self.group_mapping.is_empty() && !maps_active && self.flags_by_group.is_active.is_none() {
            return bad("lock-out: no group_mapping entry maps to \"active\" and flags_by_group.is_active is \
                 not set, so every login would be refused as inactive; map a group to \"active\" or \
                 set flags_by_group.is_active"
                .into());
        }
        if let Some(ca) = &self.tls.ca_file
            && !ca.is_file()
        {
            return bad(format!("tls.ca_file {} is not a readable file", ca.display()));
        }
        if self.connect_timeout_ms == 0 || self.operation_timeout_ms == 0 {
            return bad("timeouts must be above zero".into());
        }
        if self.pool_size == 0 {
            return bad("pool_size must be at least 1".into());
        }
        if self.page_size == 0 || i32::try_from(self.page_size).is_err() {
            return bad("page_size must be between 1 and 2^31-1".into());
        }
        if self.max_group_depth == 0 {
            return bad("max_group_depth must be at least 1".into());
        }
        if self.max_deactivate_percent > 100 {
            return bad(format!("max_deactivate_percent {} is above 100", self.max_deactivate_percent));
        }
        Ok(())
    }

    fn check_mirror_groups(&self) -> Result<(), Error> {
        let names = match &self.mirror_groups {
            MirrorGroups::Only(names) => names.as_slice(),
            MirrorGroups::All(_) => &[],
        };
        for name in names.iter().chain(&self.mirror_groups_except) {
            Group::new(name).map_err(|e| Error::Config(format!("mirror_groups role {name:?}: {e}")))?;
        }
        if !self.mirror_groups_except.is_empty() && self.mirror_groups != MirrorGroups::All(true) {
            return Err(Error::Config(
                "mirror_groups_except needs mirror_groups = true (a list of roles to mirror and a list of \
                 roles not to mirror cannot both be set, as in django-auth-ldap)"
                    .into(),
            ));
        }
        Ok(())
    }

    /// Which of a user's groups a mirror replaces, or `None` when groups are not mirrored
    /// (`mirror_groups = false`).
    #[must_use]
    pub fn group_scope(&self) -> Option<GroupScope> {
        match &self.mirror_groups {
            MirrorGroups::All(false) => None,
            MirrorGroups::All(true) if self.mirror_groups_except.is_empty() => Some(GroupScope::All),
            MirrorGroups::All(true) => Some(GroupScope::Except(self.mirror_groups_except.iter().cloned().collect())),
            MirrorGroups::Only(names) => Some(GroupScope::Only(names.iter().cloned().collect())),
        }
    }

    /// Whether `qualifier` (the `realm` of `user@realm`, the `REALM` of `REALM\user`) names this
    /// directory: its realm or an alias, any case.
    #[must_use]
    pub fn is_realm(&self, qualifier: &str) -> bool {
        self.realm.iter().chain(&self.realm_aliases).any(|name| name.eq_ignore_ascii_case(qualifier))
    }

    /// The `ldap://` URIs to which passwords go in clear (no StartTLS, not loopback): empty
    /// unless plaintext was allowed explicitly, since [`LdapConfig::validate`] refuses them.
    pub(crate) fn plaintext_uris(&self) -> impl Iterator<Item = String> + '_ {
        self.server_uris.iter().filter(|uri| sends_passwords_in_clear(uri, &self.tls)).map(|uri| shown_uri(uri))
    }
}

/// Whether a bind over `uri` puts the password on the network unencrypted: an `ldap://` URI
/// without StartTLS whose host is not loopback (127.0.0.0/8, `::1`, `localhost`). `ldaps://`
/// is TLS from the start, and `ldapi://` (a Unix socket) never leaves the machine.
fn sends_passwords_in_clear(uri: &str, tls: &TlsConfig) -> bool {
    let Some(rest) = uri.strip_prefix("ldap://") else { return false };
    if tls.uses_start_tls() {
        return false;
    }
    let hostport = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host = if let Some(v6) = hostport.strip_prefix('[') {
        v6.split(']').next().unwrap_or_default()
    } else {
        hostport.rsplit_once(':').map_or(hostport, |(h, _)| h)
    };
    let loopback =
        host.eq_ignore_ascii_case("localhost") || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback());
    !loopback
}

/// A URI as it may be shown in errors and logs: scheme and host only, since whatever follows
/// may hold a password (an `X-BINDPW` extension).
fn shown_uri(uri: &str) -> String {
    match uri.find("://") {
        Some(i) => uri[..i + 3].chars().chain(uri[i + 3..].chars().take_while(|c| !"/?@#".contains(*c))).collect(),
        None => uri.chars().take_while(|c| !"/?@#".contains(*c)).take(16).collect(),
    }
}

fn check_uri(uri: &str) -> Result<(), Error> {
    // Quote only up to the host: whatever follows may hold a password.
    let shown = shown_uri(uri);
    let bad = || Error::Config(format!("server URI {shown:?} must be ldap://host[:port] or ldaps://host[:port]"));
    let rest = uri.strip_prefix("ldap://").or_else(|| uri.strip_prefix("ldaps://")).ok_or_else(bad)?;
    let (hostport, path) = rest.split_once('/').unwrap_or((rest, ""));
    // No DN, attributes or extensions (an `X-BINDPW` extension would put a password in a
    // string that ends up in logs and errors).
    if !path.is_empty() || hostport.contains(['?', '@', '#']) {
        return Err(bad());
    }
    let host = if let Some(v6) = hostport.strip_prefix('[') {
        v6.split(']').next().unwrap_or_default()
    } else {
        hostport.rsplit_once(':').map_or(hostport, |(h, _)| h)
    };
    if host.is_empty() {
        return Err(bad());
    }
    if let Some((_, port)) = hostport.rsplit_once(':')
        && !hostport.ends_with(']')
        && port.parse::<u16>().is_err()
    {
        return Err(bad());
    }
    Ok(())
}

/// A realm is a domain-like name: not blank, at most 64 characters (the store's limit), and
/// without the `@`, `\` or whitespace that would make `user@realm` / `REALM\user` ambiguous.
fn check_realm(name: &str) -> Result<(), Error> {
    let ok = !name.is_empty()
        && name.chars().count() <= 64
        && !name.chars().any(|c| c == '@' || c == '\\' || c.is_whitespace() || c.is_control());
    if ok {
        Ok(())
    } else {
        Err(Error::Config(format!("realm {name:?} must be a domain name (1-64 characters, no @, \\ or spaces)")))
    }
}

fn check_dn(what: &str, value: &str) -> Result<(), Error> {
    dn::Dn::parse(value).map(|_| ()).map_err(|e| Error::Config(format!("{what} {value:?} is not a DN: {e}")))
}

pub(crate) fn check_attr(attr: &str) -> Result<(), Error> {
    let ok = !attr.is_empty()
        && attr.as_bytes()[0].is_ascii_alphanumeric()
        && attr.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b';');
    if ok { Ok(()) } else { Err(Error::Config(format!("{attr:?} is not an attribute name"))) }
}

/// Builds an [`LdapConfig`] in code, by value: `LdapConfig::builder([uri]).bind(dn, pw)...build()`.
#[derive(Debug, Clone)]
#[must_use]
pub struct LdapConfigBuilder(LdapConfig);

impl LdapConfigBuilder {
    /// The service account.
    pub fn bind(mut self, dn: impl Into<String>, password: impl Into<Secret>) -> Self {
        self.0.bind_dn = Some(dn.into());
        self.0.bind_password = Some(password.into());
        self
    }

    /// Accept passwords in clear over `ldap://` to non-loopback hosts (see
    /// [`LdapConfig::allow_plaintext`]).
    pub fn allow_plaintext(mut self, allow: bool) -> Self {
        self.0.allow_plaintext = allow;
        self
    }

    /// The user search.
    pub fn user_search(mut self, base: impl Into<String>, scope: Scope, filter: impl Into<String>) -> Self {
        self.0.user_search = Some(SearchSpec::new(base, scope, filter).into());
        self
    }

    /// A union of user searches (`LDAPSearchUnion`, see [`SearchUnion`]), instead of one.
    pub fn user_search_union(mut self, searches: impl IntoIterator<Item = SearchSpec>) -> Self {
        self.0.user_search = Some(SearchUnion::new(searches));
        self
    }

    /// A DN template instead of a search.
    pub fn user_dn_template(mut self, template: impl Into<String>) -> Self {
        self.0.user_dn_template = Some(template.into());
        self
    }

    /// Bind as the user and read the entry and groups as the user (see
    /// [`LdapConfig::bind_as_authenticating_user`]).
    pub fn bind_as_authenticating_user(mut self, enabled: bool) -> Self {
        self.0.bind_as_authenticating_user = enabled;
        self
    }

    /// The bind name template (a UPN like `%(user)s@corp.example`, or a DN template) used with
    /// [`LdapConfigBuilder::bind_as_authenticating_user`]; sets that too.
    pub fn bind_name_template(mut self, template: impl Into<String>) -> Self {
        self.0.bind_as_authenticating_user = true;
        self.0.bind_name_template = Some(template.into());
        self
    }

    /// The user filter.
    pub fn user_filter(mut self, filter: impl Into<String>) -> Self {
        self.0.user_filter = Some(filter.into());
        self
    }

    /// The login-name attribute.
    pub fn username_attr(mut self, attr: impl Into<String>) -> Self {
        self.0.username_attr = Some(attr.into());
        self
    }

    /// How typed login names are normalised (see [`LdapConfig::normalize_username`]).
    pub fn normalize_username(mut self, normalize: NormalizeUsername) -> Self {
        self.0.normalize_username = normalize;
        self
    }

    /// The user attribute map.
    pub fn user_attr_map(mut self, map: UserAttrMap) -> Self {
        self.0.user_attr_map = map;
        self
    }

    /// The profile attribute map.
    pub fn profile_attr_map(mut self, map: ProfileAttrMap) -> Self {
        self.0.profile_attr_map = map;
        self
    }

    /// The group type and naming attribute.
    pub fn group_type(mut self, group_type: GroupType, name_attr: impl Into<String>) -> Self {
        self.0.group_type = group_type;
        self.0.group_name_attr = name_attr.into();
        self
    }

    /// The group attribute listing member DNs (see [`LdapConfig::group_member_attr`]).
    pub fn group_member_attr(mut self, attr: impl Into<String>) -> Self {
        self.0.group_member_attr = attr.into();
        self
    }

    /// The user attribute listing group DNs (see [`LdapConfig::member_of_attr`]).
    pub fn member_of_attr(mut self, attr: impl Into<String>) -> Self {
        self.0.member_of_attr = attr.into();
        self
    }

    /// How deep client-side group recursion goes, at least 1 (see [`LdapConfig::max_group_depth`]).
    pub fn max_group_depth(mut self, depth: usize) -> Self {
        self.0.max_group_depth = depth;
        self
    }

    /// The group search.
    pub fn group_search(mut self, base: impl Into<String>, scope: Scope, filter: impl Into<String>) -> Self {
        self.0.group_search = Some(SearchSpec::new(base, scope, filter).into());
        self
    }

    /// A union of group searches (`LDAPSearchUnion`, see [`SearchUnion`]), instead of one.
    pub fn group_search_union(mut self, searches: impl IntoIterator<Item = SearchSpec>) -> Self {
        self.0.group_search = Some(SearchUnion::new(searches));
        self
    }

    /// How nested groups are resolved.
    pub fn nested_groups(mut self, nested: NestedGroups) -> Self {
        self.0.nested_groups = nested;
        self
    }

    /// Maps a group DN to a Ralph role.
    pub fn map_group(mut self, group_dn: impl Into<String>, role: impl Into<String>) -> Self {
        self.0.group_mapping.insert(group_dn.into(), role.into());
        self
    }

    /// Whether roles are stored as local groups: `true`, `false`, or [`MirrorGroups::only`]
    /// a list of role names (see [`LdapConfig::mirror_groups`]).
    pub fn mirror_groups(mut self, mirror: impl Into<MirrorGroups>) -> Self {
        self.0.mirror_groups = mirror.into();
        self
    }

    /// Role names the mirror leaves alone (see [`LdapConfig::mirror_groups_except`]).
    pub fn mirror_groups_except<I, S>(mut self, names: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.0.mirror_groups_except = names.into_iter().map(Into::into).collect();
        self
    }

    /// The directory's realm (see [`LdapConfig::realm`]).
    pub fn realm(mut self, realm: impl Into<String>) -> Self {
        self.0.realm = Some(realm.into());
        self
    }

    /// Other names of the realm, such as a NetBIOS domain name (see [`LdapConfig::realm_aliases`]).
    pub fn realm_aliases<I, S>(mut self, names: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.0.realm_aliases = names.into_iter().map(Into::into).collect();
        self
    }

    /// A group DN, or a [`GroupQuery`], the user must match.
    pub fn require_group(mut self, query: impl Into<GroupQuery>) -> Self {
        self.0.require_group = Some(query.into());
        self
    }

    /// A group DN, or a [`GroupQuery`], whose matches are refused.
    pub fn deny_group(mut self, query: impl Into<GroupQuery>) -> Self {
        self.0.deny_group = Some(query.into());
        self
    }

    /// Flags set by group membership.
    pub fn flags_by_group(mut self, flags: FlagsByGroup) -> Self {
        self.0.flags_by_group = flags;
        self
    }

    /// Whether the account state is read (see [`LdapConfig::check_account_state`]).
    pub fn check_account_state(mut self, check: bool) -> Self {
        self.0.check_account_state = check;
        self
    }

    /// The ppolicy overlay's default policy DN (see [`LdapConfig::ppolicy_default`]).
    pub fn ppolicy_default(mut self, policy_dn: impl Into<String>) -> Self {
        self.0.ppolicy_default = Some(policy_dn.into());
        self
    }

    /// Only users already in the store may log in (see [`LdapConfig::no_new_users`]).
    pub fn no_new_users(mut self, no_new_users: bool) -> Self {
        self.0.no_new_users = no_new_users;
        self
    }

    /// The group cache lifetime (zero turns it off).
    pub fn cache_ttl(mut self, ttl: Duration) -> Self {
        self.0.cache_ttl_secs = ttl.as_secs();
        self
    }

    /// How old the groups that require / deny / flag checks decide on may be (see
    /// [`LdapConfig::group_check_ttl_secs`]).
    pub fn group_check_ttl(mut self, ttl: Duration) -> Self {
        self.0.group_check_ttl_secs = ttl.as_secs();
        self
    }

    /// TLS settings.
    pub fn tls(mut self, tls: TlsConfig) -> Self {
        self.0.tls = tls;
        self
    }

    /// Connect and operation timeouts.
    pub fn timeouts(mut self, connect: Duration, operation: Duration) -> Self {
        self.0.connect_timeout_ms = u64::try_from(connect.as_millis()).unwrap_or(u64::MAX);
        self.0.operation_timeout_ms = u64::try_from(operation.as_millis()).unwrap_or(u64::MAX);
        self
    }

    /// Connections per pool.
    pub fn pool_size(mut self, size: usize) -> Self {
        self.0.pool_size = size;
        self
    }

    /// The bulk sync's page size.
    pub fn page_size(mut self, size: u32) -> Self {
        self.0.page_size = size;
        self
    }

    /// Whether the bulk sync deactivates users gone from the directory.
    pub fn deactivate_missing(mut self, deactivate: bool) -> Self {
        self.0.deactivate_missing = deactivate;
        self
    }

    /// The most the bulk sync deactivates (missing or refused users) in one run, in percent of
    /// the active LDAP-owned users (see [`LdapConfig::max_deactivate_percent`]).
    pub fn max_deactivate_percent(mut self, percent: u8) -> Self {
        self.0.max_deactivate_percent = percent;
        self
    }

    /// Validates and returns the configuration.
    ///
    /// # Errors
    /// [`Error::Config`] as [`LdapConfig::validate`].
    pub fn build(self) -> Result<LdapConfig, Error> {
        self.0.validate()?;
        Ok(self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RALPH: &str = r#"
        server_uris = ["ldap://activedirectory.domain:389"]
        bind_dn = "CN=ralph,OU=Services,DC=allegrogroup,DC=internal"
        bind_password = "s3cret-bind"
        protocol_version = 3
        username_attr = "sAMAccountName"
        user_filter = "(|(memberOf=CN=_gr_ralph_group1,OU=something,DC=mygroup,DC=domain)(memberOf=CN=_gr_ralph_group2,OU=something else,DC=mygroups,DC=domain))"
        group_type = "group_of_names"
        group_name_attr = "cn"
        mirror_groups = true

        [user_search]
        base = "DC=allegrogroup,DC=internal"
        scope = "subtree"
        filter = "(&(objectClass=*)(sAMAccountName=%(user)s))"

        [user_attr_map]
        first_name = "givenName"
        last_name = "sn"
        email = "mail"

        [profile_attr_map]
        company = "company"
        manager = "manager"
        department = "department"
        employee_id = "employeeID"
        location = "officeName"
        country = "ISO-country-code"

        [group_search]
        base = "DC=organization,DC=internal"
        scope = "subtree"
        filter = "(objectClass=group)"

        [group_mapping]
        "CN=_gr_ralph,OU=Other,DC=mygroups,DC=domain" = "active"
        "CN=_gr_ralph_admin,OU=Other,DC=mygroups,DC=domain" = "superuser"
    "#;

    #[test]
    fn ralph_settings_load_with_defaults() {
        // Ralph's URI is plain ldap:// to a remote host: refused unless plaintext is accepted.
        let err = LdapConfig::from_toml_str(RALPH).expect_err("plaintext accepted silently");
        assert!(matches!(err, Error::Config(ref m) if m.contains("clear text")), "{err}");
        let c = LdapConfig::from_toml_str(&format!("allow_plaintext = true\n{RALPH}")).expect("valid");
        assert_eq!(c.server_uris, ["ldap://activedirectory.domain:389"]);
        assert_eq!(c.bind_password.as_ref().map(Secret::expose), Some("s3cret-bind"));
        assert_eq!(c.group_type, GroupType::GroupOfNames);
        assert_eq!(c.group_mapping.len(), 2);
        assert_eq!(c.cache_ttl(), Duration::from_secs(1200));
        assert!(c.tls.verify, "verification must default to on");
        assert_eq!(c.profile_attr_map.country.as_deref(), Some("ISO-country-code"));
        assert!(!format!("{c:?}").contains("s3cret-bind"), "bind password in Debug");
    }

    #[test]
    fn invalid_settings_are_typed_errors_without_the_password() {
        // (top-level lines replacing the defaults, extra tables, expected words in the error)
        let uris = "server_uris = [\"ldaps://h\"]\nbind_dn = \"cn=svc,dc=x\"\nbind_password = \"s3cret-bind\"";
        let search = "[user_search]\nbase = \"dc=x\"\nfilter = \"(uid=%(user)s)\"";
        let cases = [
            ("server_uris = []", search, "server_uris"),
            ("server_uris = [\"http://x\"]", search, "server URI"),
            ("server_uris = [\"ldap:///\"]", search, "server URI"),
            ("server_uris = [\"ldap://h:99999\"]", search, "server URI"),
            ("server_uris = [\"ldap://h/dc=x??sub?x-bindpw=s3cret-bind\"]", search, "server URI"),
            ("server_uris = [\"ldap://h\"]\nbind_password = \"s3cret-bind\"", search, "bind_dn"),
            (uris, "", "user_search"),
            (uris, "[user_search]\nbase = \"dc=x\"\nfilter = \"(uid=alice)\"", "placeholder"),
            (&format!("{uris}\nprotocol_version = 2"), search, "protocol_version"),
            (&format!("{uris}\nuser_filter = \"(&(a=1)\""), search, "user_filter"),
            (&format!("{uris}\nbogus_key = 1"), search, "invalid TOML"),
            (&format!("{uris}\ngroup_type = \"posix\""), search, "group_search"),
            (&format!("{uris}\npool_size = 0"), search, "pool_size"),
            (&format!("{uris}\nconnect_timeout_ms = 0"), search, "timeouts"),
            (uris, &format!("{search}\n[group_mapping]\n\"not a dn\" = \"active\""), "group_mapping"),
            (uris, &format!("{search}\n[group_mapping]\n\"cn=g,dc=x\" = \"  \""), "group_mapping"),
            (uris, &format!("{search}\n[tls]\nca_file = \"/nonexistent/ca.pem\""), "ca_file"),
            ("server_uris = [\"ldaps://h\"]\nbind_dn = \"cn=svc,dc=x\"", search, "without a bind_password"),
            ("server_uris = [\"ldaps://h\"]\nbind_dn = \"cn=svc,dc=x\"\nbind_password = \"\"", search, "bind_password"),
            ("server_uris = [\"ldap://ldap.example.com\"]", search, "clear text"),
            ("server_uris = [\"ldaps://h\", \"ldap://10.1.2.3:389\"]", search, "ldap://10.1.2.3:389"),
            ("server_uris = [\"ldap://[2001:db8::1]\"]", &format!("{search}\n[tls]\nverify = true"), "clear text"),
            (&format!("{uris}\nmax_deactivate_percent = 101"), search, "max_deactivate_percent"),
            (uris, &format!("{search}\n[group_mapping]\n\"cn=a,dc=x\" = \"superuser\""), "lock-out"),
            (uris, &format!("{search}\n[flags_by_group]\nis_staff = []"), "empty group list"),
            (uris, &format!("{search}\n[flags_by_group]\nis_active = {{ all = [] }}"), "empty group list"),
            (&format!("{uris}\nrequire_group = []"), search, "empty group list"),
        ];
        for (top, tables, expect) in cases {
            let text = format!("{top}\n{tables}\n");
            let err = LdapConfig::from_toml_str(&text).expect_err(&text);
            let msg = err.to_string();
            assert!(matches!(err, Error::Config(_)), "{text}: {err:?}");
            assert!(msg.contains(expect), "{text}: {msg}");
            assert!(!msg.contains("s3cret-bind") && !format!("{err:?}").contains("s3cret-bind"), "leak: {msg}");
        }
        let ok = format!("{uris}\n{search}\n");
        assert!(LdapConfig::from_toml_str(&ok).is_ok());
    }

    #[test]
    fn plaintext_is_an_explicit_choice_except_on_loopback() {
        let search = "[user_search]\nbase = \"dc=x\"\nfilter = \"(uid=%(user)s)\"";
        let load = |top: &str, tls: &str| LdapConfig::from_toml_str(&format!("{top}\n{search}\n{tls}\n"));
        let remote = "server_uris = [\"ldap://ldap.example.com:389\"]";
        assert!(load(remote, "").is_err(), "silent plaintext");
        assert!(load(remote, "[tls]\nverify = true").is_err(), "a [tls] table without mode is not a choice");
        assert!(load(remote, "[tls]\nmode = \"none\"").is_ok(), "explicit mode = none");
        assert!(load(&format!("{remote}\nallow_plaintext = true"), "").is_ok(), "allow_plaintext");
        assert!(load(remote, "[tls]\nmode = \"start_tls\"").is_ok(), "StartTLS");
        for uri in [
            "ldaps://ldap.example.com",
            "ldap://127.0.0.1:389",
            "ldap://127.8.9.10",
            "ldap://[::1]:389",
            "ldap://LOCALHOST",
        ] {
            assert!(load(&format!("server_uris = [\"{uri}\"]"), "").is_ok(), "{uri} refused");
        }
        let built =
            LdapConfig::builder(["ldap://ldap.example.com"]).user_search("dc=x", Scope::Subtree, "(uid={user})");
        assert!(matches!(built.clone().build(), Err(Error::Config(_))));
        assert!(built.clone().allow_plaintext(true).build().is_ok());
        assert!(built.tls(TlsConfig::start_tls(None)).build().is_ok());
    }

    #[test]
    fn readme_toml_is_valid_and_complete() {
        let readme = include_str!("../README.md");
        let start = readme.find("```toml\n").expect("toml block") + "```toml\n".len();
        let end = start + readme[start..].find("```").expect("block end");
        let c = LdapConfig::from_toml_str(&readme[start..end]).expect("README TOML is valid");
        assert_eq!(c.group_mapping.len(), 6);
        assert_eq!(c.group_type, GroupType::GroupOfNames);
        assert_eq!(
            c.user_search.as_ref().and_then(SearchUnion::first).map(|s| s.filter.as_str()),
            Some("(&(objectClass=*)(sAMAccountName=%(user)s))")
        );
        assert_eq!(c.profile_attr_map.attributes().count(), 6);
        assert_eq!(c.flags_by_group.is_staff.as_ref().map(|q| q.dns().count()), Some(1));
        assert!(matches!(&c.require_group, Some(GroupQuery::Any(items)) if items.len() == 2), "{:?}", c.require_group);
        assert!(c.check_account_state && !c.no_new_users && !c.bind_as_authenticating_user);
        assert_eq!(c.group_check_ttl_secs, 0);
    }

    #[test]
    fn readme_migration_example_parses_two_directories() {
        let readme = include_str!("../README.md");
        let example = &readme[readme.find("## A migration example").expect("example section")..];
        let example = &example[..example.find("\n## ").expect("section end")];
        let blocks: Vec<&str> =
            example.split("```toml\n").skip(1).map(|b| &b[..b.find("```").expect("block end")]).collect();
        assert_eq!(blocks.len(), 2, "corp.toml and lab.toml");
        let corp = LdapConfig::from_toml_str(blocks[0]).expect("corp.toml is valid");
        let lab = LdapConfig::from_toml_str(blocks[1]).expect("lab.toml is valid");
        assert_eq!((corp.realm.as_deref(), lab.realm.as_deref()), (Some("corp.example"), Some("lab.example")));
        assert!(corp.is_realm("CORP") && !corp.is_realm("lab") && lab.is_realm("lab"));
        // Ralph's block is all there.
        assert_eq!(corp.group_mapping.len(), 6);
        assert_eq!(corp.profile_attr_map.attributes().count(), 6);
        assert_eq!(corp.group_type, GroupType::GroupOfNames);
        // A boolean require group: any of [a DN, all of [a DN, not a DN]].
        let Some(GroupQuery::Any(items)) = &corp.require_group else { panic!("{:?}", corp.require_group) };
        assert!(matches!(&items[1], GroupQuery::All(inner) if matches!(inner[1], GroupQuery::Not(_))), "{items:?}");
        // A mirror exception list.
        let except: std::collections::BTreeSet<String> =
            ["assets-buyer".to_owned(), "licences-admin".to_owned()].into();
        assert_eq!(corp.group_scope(), Some(GroupScope::Except(except.clone())));
        assert_eq!(lab.group_scope(), Some(GroupScope::Except(except)));
        assert_eq!(lab.server_uris.len(), 2);
    }

    #[test]
    fn searches_are_one_table_or_a_union_in_either_list_form() {
        let top = "server_uris = [\"ldaps://h\"]";
        let (a, b) = (
            "{ base = \"ou=a,dc=x\", filter = \"(uid=%(user)s)\" }",
            "{ base = \"ou=b,dc=x\", scope = \"one_level\", filter = \"(uid=%(user)s)\" }",
        );
        let table = LdapConfig::from_toml_str(&format!(
            "{top}\n[user_search]\nbase = \"ou=a,dc=x\"\nfilter = \"(uid=%(user)s)\"\n"
        ))
        .expect("table");
        let one = table.user_search.expect("set");
        assert!(!one.is_union());
        assert_eq!(one.searches(), [SearchSpec::new("ou=a,dc=x", Scope::Subtree, "(uid=%(user)s)")]);
        let inline = LdapConfig::from_toml_str(&format!(
            "{top}\nuser_search = [{a}, {b}]\ngroup_search = [{{ base = \"ou=g1,dc=x\", filter = \"(objectClass=*)\" }}, {{ base = \"ou=g2,dc=x\", filter = \"(objectClass=*)\" }}]\n"
        ))
        .expect("inline array");
        let tables = LdapConfig::from_toml_str(&format!(
            "{top}\n[[user_search]]\nbase = \"ou=a,dc=x\"\nfilter = \"(uid=%(user)s)\"\n\
             [[user_search]]\nbase = \"ou=b,dc=x\"\nscope = \"one_level\"\nfilter = \"(uid=%(user)s)\"\n"
        ))
        .expect("array of tables");
        let union = inline.user_search.clone().expect("set");
        assert!(union.is_union());
        assert_eq!(Some(union.clone()), tables.user_search);
        assert_eq!(union.searches()[1].scope, Scope::OneLevel);
        assert_eq!(inline.group_search.as_ref().map(|g| g.searches().len()), Some(2));
        let built = LdapConfig::builder(["ldaps://h"])
            .user_search_union([
                SearchSpec::new("ou=a,dc=x", Scope::Subtree, "(uid=%(user)s)"),
                SearchSpec::new("ou=b,dc=x", Scope::OneLevel, "(uid=%(user)s)"),
            ])
            .build()
            .expect("valid");
        assert_eq!(built.user_search, Some(union));

        // Every member is validated, and a mistake inside one is named as such.
        let bad = |text: &str, expect: &str| {
            let err = LdapConfig::from_toml_str(&format!("{top}\n{text}\n")).expect_err(text);
            assert!(err.to_string().contains(expect), "{text}: {err}");
        };
        bad(&format!("user_search = [{a}, {{ base = \"ou=b,dc=x\", filter = \"(uid=bob)\" }}]"), "placeholder");
        bad(
            &format!("user_search = [{a}, {{ base = \"not a dn\", filter = \"(uid=%(user)s)\" }}]"),
            "user_search.base",
        );
        bad(
            &format!("user_search = [{a}, {{ base = \"ou=b,dc=x\", filter = \"(uid=%(user)s)\", bogus = 1 }}]"),
            "bogus",
        );
        bad("user_search = []", "empty list");
        bad(&format!("user_search = {a}\ngroup_search = []"), "group_search is an empty list");
        bad(
            &format!("user_search = {a}\ngroup_search = [{{ base = \"ou=g,dc=x\", filter = \"(&(a=1)\" }}]"),
            "group_search",
        );
        bad("user_search = \"ou=a,dc=x\"", "search table");
    }

    #[test]
    fn a_search_covers_its_base_at_its_scope() {
        let at = |scope| SearchSpec::new("ou=a,dc=x", scope, "(x=1)");
        for (scope, dn, covered) in [
            (Scope::Subtree, "uid=u,ou=sub,OU=A,dc=x", true),
            (Scope::Subtree, "ou=a,dc=x", true),
            (Scope::Subtree, "uid=u,ou=b,dc=x", false),
            (Scope::Subtree, "dc=x", false),
            (Scope::OneLevel, "uid=u,ou=a,dc=x", true),
            (Scope::OneLevel, "uid=u,ou=sub,ou=a,dc=x", false),
            (Scope::Base, "ou=a,dc=x", true),
            (Scope::Base, "uid=u,ou=a,dc=x", false),
        ] {
            assert_eq!(at(scope).covers(dn), covered, "{scope:?} {dn}");
        }
        let union = SearchUnion::new([at(Scope::Subtree), SearchSpec::new("ou=b,dc=x", Scope::Subtree, "(x=1)")]);
        assert!(!union.other_covers("uid=u,ou=a,dc=x", 0), "only its own search lists it");
        assert!(union.other_covers("uid=u,ou=a,dc=x", 1));
    }

    #[test]
    fn builder_matches_toml() {
        let built = LdapConfig::builder(["ldaps://127.0.0.1:636"])
            .bind("cn=svc,dc=x", "pw")
            .user_search("dc=x", Scope::Subtree, "(uid={user})")
            .map_group("cn=admins,dc=x", "superuser")
            .map_group("cn=users,dc=x", "active")
            .cache_ttl(Duration::ZERO)
            .build()
            .expect("valid");
        assert_eq!(built.group_mapping.get("cn=admins,dc=x").map(String::as_str), Some("superuser"));
        assert_eq!(built.cache_ttl_secs, 0);
        assert!(LdapConfig::builder(["ldaps://h"]).build().is_err(), "no user search accepted");
        assert!(
            LdapConfig::builder(["ldaps://h"]).user_dn_template("uid=%(user)s,dc=x").build().is_ok(),
            "dn template refused"
        );
    }
}
