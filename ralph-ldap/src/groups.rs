//! Group membership: `memberOf`, groupOfNames and posixGroup lookups, nested groups (AD's
//! in-chain matching rule or client-side recursion with a cycle guard), and the TTL cache.

use std::collections::{HashSet, VecDeque};
use std::time::{Duration, Instant};

use tracing::debug;

use crate::config::{GroupType, LdapConfig, NestedGroups, SearchUnion};
use crate::{Error, Result, TRACE_TARGET, dn, filter};

/// Active Directory's `LDAP_MATCHING_RULE_IN_CHAIN`.
pub const IN_CHAIN_RULE: &str = "1.2.840.113556.1.4.1941";
/// The root DSE capability Active Directory advertises (`LDAP_CAP_ACTIVE_DIRECTORY_OID`).
pub const AD_CAPABILITY: &str = "1.2.840.113556.1.4.800";

/// The posixAccount attribute holding the user's primary group number.
pub(crate) const GID_NUMBER: &str = "gidNumber";

/// A group the user is in, directly or through nesting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LdapGroup {
    /// The group's DN as the server wrote it.
    pub dn: String,
    /// Its name (the `group_name_attr` value), when known without another round trip: from
    /// the search result or the DN's first RDN. `None` is a group whose name could not be read
    /// (an ACL may hide it): it still counts for every DN-based rule.
    pub name: Option<String>,
}

impl LdapGroup {
    /// A group known by DN, named from its first RDN when that is the name attribute. A DN
    /// that does not parse is an error: it cannot be compared with the deny group, so it must
    /// not be passed over.
    fn from_dn(group_dn: &str, name_attr: &str) -> Result<Self> {
        let parsed = dn::Dn::parse(group_dn).map_err(|e| Error::Protocol(format!("group DN {group_dn:?}: {e}")))?;
        let name = parsed.first().and_then(|rdn| rdn.value_of(name_attr)).map(str::to_owned);
        Ok(Self { dn: group_dn.to_owned(), name })
    }

    /// A group from a search result: named by the attribute when the server returned it, else
    /// as [`LdapGroup::from_dn`]. The DN must parse either way: a name does not make an
    /// unreadable DN comparable with the deny group.
    pub(crate) fn from_entry(entry: &crate::conn::Entry, name_attr: &str) -> Result<Self> {
        let mut group = Self::from_dn(&entry.dn, name_attr)?;
        if let Some(name) = entry.first(name_attr) {
            group.name = Some(name.to_owned());
        }
        Ok(group)
    }
}

/// Caches each user's resolved groups for the configured TTL (django-auth-ldap's
/// `AUTH_LDAP_CACHE_TIMEOUT`); a TTL of zero turns it off. Failures are never cached. Each
/// entry remembers when it was read, so a caller may ask for one younger than the TTL (the
/// group checks' `group_check_ttl_secs`).
#[derive(Debug, Default)]
pub(crate) struct GroupCache {
    entries: Option<moka::sync::Cache<String, (Instant, Vec<LdapGroup>)>>,
}

impl GroupCache {
    /// At most this many users' groups are kept; past it moka evicts the least useful.
    const CAPACITY: u64 = 100_000;
    /// moka refuses a TTL over 1000 years; a longer one is "forever" all the same.
    const MAX_TTL: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

    pub(crate) fn new(ttl: Duration) -> Self {
        let entries = (!ttl.is_zero()).then(|| {
            moka::sync::Cache::builder().max_capacity(Self::CAPACITY).time_to_live(ttl.min(Self::MAX_TTL)).build()
        });
        Self { entries }
    }

    pub(crate) fn get(&self, key: &str) -> Option<Vec<LdapGroup>> {
        self.get_within(key, Duration::MAX)
    }

    /// The cached groups when they were read no longer than `max_age` ago.
    pub(crate) fn get_within(&self, key: &str, max_age: Duration) -> Option<Vec<LdapGroup>> {
        let (read_at, groups) = self.entries.as_ref()?.get(key)?;
        (read_at.elapsed() <= max_age).then_some(groups)
    }

    pub(crate) fn put(&self, key: String, groups: Vec<LdapGroup>) {
        if let Some(entries) = &self.entries {
            entries.insert(key, (Instant::now(), groups));
        }
    }

    pub(crate) fn clear(&self) {
        if let Some(entries) = &self.entries {
            entries.invalidate_all();
        }
    }
}

/// What to look groups up with: a search function over the service connection.
pub(crate) trait Directory {
    /// Searches `base` with `scope` and `filter`, returning entries with `attrs`.
    async fn search(
        &self,
        base: &str,
        scope: ldap3::Scope,
        filter: &str,
        attrs: &[&str],
    ) -> Result<Vec<crate::conn::Entry>>;

    /// A search about a group rather than a user (its parents, its name): the same answer for
    /// every user, so the bulk sync remembers it for the run. Searches by default.
    async fn group_search(
        &self,
        base: &str,
        scope: ldap3::Scope,
        filter: &str,
        attrs: &[&str],
    ) -> Result<Vec<crate::conn::Entry>> {
        self.search(base, scope, filter, attrs).await
    }
}

/// Resolves a user's groups per the configuration: every group found, named or not (the
/// require/deny/mapping rules go by DN; see [`name_all`] for names). `direct_member_of` holds
/// the user entry's `memberOf` values when the group type is [`GroupType::MemberOf`];
/// `use_matching_rule` says whether the in-chain rule is to be used for nesting.
/// `primary_gid` is the user entry's `gidNumber`: for [`GroupType::Posix`], the posixGroup
/// with that `gidNumber` is one of the user's groups even when it does not list the user in
/// `memberUid` (a user's primary group usually does not), as django-auth-ldap's
/// `PosixGroupType` does. A value that is not a number is ignored.
pub(crate) async fn resolve<D: Directory>(
    config: &LdapConfig,
    directory: &D,
    user_dn: &str,
    username: &str,
    direct_member_of: &[String],
    primary_gid: Option<&str>,
    use_matching_rule: bool,
) -> Result<Vec<LdapGroup>> {
    let name_attr = config.group_name_attr.as_str();
    let nested = config.nested_groups != NestedGroups::Off && config.group_type != GroupType::Posix;
    if nested && use_matching_rule {
        let union =
            config.group_search.as_ref().ok_or_else(|| Error::Config("matching rule needs group_search".into()))?;
        let member = match config.group_type {
            GroupType::GroupOfNames | GroupType::MemberOf => config.group_member_attr.as_str(),
            GroupType::Posix => "memberUid",
        };
        let item = format!("({member}:{IN_CHAIN_RULE}:={})", filter::escape(user_dn));
        return search_groups(directory, union, &item, name_attr, false).await;
    }

    // Direct groups first.
    let mut groups: Vec<LdapGroup> = Vec::new();
    match config.group_type {
        GroupType::MemberOf => {
            for group_dn in direct_member_of {
                groups.push(LdapGroup::from_dn(group_dn, name_attr)?);
            }
        }
        GroupType::GroupOfNames | GroupType::Posix => {
            let union =
                config.group_search.as_ref().ok_or_else(|| Error::Config("group type needs group_search".into()))?;
            let item = if config.group_type == GroupType::Posix {
                let member_uid = format!("(memberUid={})", filter::escape(username));
                match primary_gid.map(str::trim).filter(|g| !g.is_empty() && g.bytes().all(|b| b.is_ascii_digit())) {
                    Some(gid) => format!("(|{member_uid}(gidNumber={gid}))"),
                    None => member_uid,
                }
            } else {
                format!("({}={})", config.group_member_attr, filter::escape(user_dn))
            };
            groups = search_groups(directory, union, &item, name_attr, false).await?;
        }
    }
    if !nested {
        return Ok(groups);
    }

    // Client-side recursion, breadth first, each group visited once (cycles end), depth-limited.
    let mut seen: HashSet<String> = groups.iter().map(|g| dn::normalize(&g.dn)).collect();
    let mut queue: VecDeque<(String, usize)> = groups.iter().map(|g| (g.dn.clone(), 1)).collect();
    while let Some((group_dn, depth)) = queue.pop_front() {
        if depth >= config.max_group_depth {
            debug!(target: TRACE_TARGET, group = %group_dn, "group nesting deeper than max_group_depth, not followed");
            continue;
        }
        let parents = parents_of(config, directory, &group_dn).await?;
        for parent in parents {
            if seen.insert(dn::normalize(&parent.dn)) {
                queue.push_back((parent.dn.clone(), depth + 1));
                groups.push(parent);
            }
        }
    }
    Ok(groups)
}

/// The groups that `group_dn` is itself a member of.
async fn parents_of<D: Directory>(config: &LdapConfig, directory: &D, group_dn: &str) -> Result<Vec<LdapGroup>> {
    let name_attr = config.group_name_attr.as_str();
    match config.group_type {
        GroupType::MemberOf => {
            let attr = config.member_of_attr.as_str();
            let entries = directory.group_search(group_dn, ldap3::Scope::Base, "(objectClass=*)", &[attr]).await?;
            entries.iter().flat_map(|e| e.values(attr)).map(|parent| LdapGroup::from_dn(parent, name_attr)).collect()
        }
        GroupType::GroupOfNames => {
            let union =
                config.group_search.as_ref().ok_or_else(|| Error::Config("group type needs group_search".into()))?;
            let item = format!("({}={})", config.group_member_attr, filter::escape(group_dn));
            search_groups(directory, union, &item, name_attr, true).await
        }
        GroupType::Posix => Ok(Vec::new()),
    }
}

/// The groups every search of the group search union finds with `item` ANDed into its filter,
/// one per DN (normalised). `about_group` says the search depends on a group, not on the user
/// (a group's parents), so the sync may remember it for the run.
async fn search_groups<D: Directory>(
    directory: &D,
    union: &SearchUnion,
    item: &str,
    name_attr: &str,
    about_group: bool,
) -> Result<Vec<LdapGroup>> {
    let mut groups = Vec::new();
    let mut seen: HashSet<String> = HashSet::new();
    for search in union {
        let f = filter::and(&[&search.filter, item]);
        let (base, scope, attrs) = (search.base.as_str(), search.scope.into(), &[name_attr]);
        let entries = if about_group {
            directory.group_search(base, scope, &f, attrs).await?
        } else {
            directory.search(base, scope, &f, attrs).await?
        };
        for entry in &entries {
            let group = LdapGroup::from_entry(entry, name_attr)?;
            if seen.insert(dn::normalize(&group.dn)) {
                groups.push(group);
            }
        }
    }
    Ok(groups)
}

/// Names every group not named yet by reading its `group_name_attr`; only needed when group
/// names become roles (no mapping). A group whose name cannot be read is an error: the login
/// fails closed rather than go on with roles silently missing.
pub(crate) async fn name_all<D: Directory>(config: &LdapConfig, directory: &D, groups: &mut [LdapGroup]) -> Result<()> {
    let name_attr = config.group_name_attr.as_str();
    for group in groups.iter_mut().filter(|g| g.name.is_none()) {
        let entries = directory.group_search(&group.dn, ldap3::Scope::Base, "(objectClass=*)", &[name_attr]).await?;
        let name = entries.iter().find_map(|e| e.first(name_attr)).map(str::to_owned);
        if name.is_none() {
            debug!(target: TRACE_TARGET, group = %group.dn, "group name not readable");
            return Err(Error::Protocol(format!("group {:?} has no readable {name_attr}", group.dn)));
        }
        group.name = name;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conn::Entry;

    /// A directory that answers every search with the same entries.
    struct Fixed(Vec<Entry>);

    impl Directory for Fixed {
        async fn search(&self, _: &str, _: ldap3::Scope, _: &str, _: &[&str]) -> Result<Vec<Entry>> {
            Ok(self.0.clone())
        }
    }

    fn group(dn: &str, cn: Option<&str>) -> Entry {
        Entry { dn: dn.into(), attrs: cn.map(|cn| ("cn".to_owned(), vec![cn.to_owned()])).into_iter().collect() }
    }

    #[test]
    fn the_cache_expires_clears_and_can_be_off() {
        let groups = vec![LdapGroup { dn: "cn=g,dc=x".into(), name: Some("g".into()) }];
        let off = GroupCache::new(Duration::ZERO);
        off.put("u".into(), groups.clone());
        assert_eq!(off.get("u"), None, "TTL 0 caches nothing");
        off.clear();

        // A TTL of seconds: the checks before the sleep must run within it on a loaded machine.
        let cache = GroupCache::new(Duration::from_secs(2));
        cache.put("u".into(), groups.clone());
        assert_eq!(cache.get("u").as_deref(), Some(&groups[..]));
        assert_eq!(cache.get("other"), None);
        cache.clear();
        assert_eq!(cache.get("u"), None, "cleared");
        cache.put("u".into(), groups.clone());
        assert_eq!(cache.get("u").as_deref(), Some(&groups[..]), "usable after clear");
        std::thread::sleep(Duration::from_millis(2500));
        assert_eq!(cache.get("u"), None, "expired");

        // A TTL past moka's 1000-year limit is "forever", not a panic.
        let forever = GroupCache::new(Duration::from_secs(u64::MAX));
        forever.put("u".into(), groups.clone());
        assert_eq!(forever.get("u").as_deref(), Some(&groups[..]));
    }

    #[tokio::test]
    async fn a_group_dn_that_does_not_parse_is_an_error_even_with_a_name() {
        let config = LdapConfig::builder(["ldaps://h"])
            .user_search("dc=x", crate::Scope::Subtree, "(uid=%(user)s)")
            .group_type(GroupType::GroupOfNames, "cn")
            .group_search("dc=x", crate::Scope::Subtree, "(objectClass=groupOfNames)")
            .nested_groups(NestedGroups::Off)
            .deny_group("cn=banned,dc=x")
            .build()
            .expect("valid");
        // Unparseable (no `=`, a dangling escape): it could be the deny group, so not passed over.
        for bad in ["cn=banned,dc=x,garbage", "cn=banned\\"] {
            for name in [Some("banned"), None] {
                let directory = Fixed(vec![group("cn=ok,dc=x", Some("ok")), group(bad, name)]);
                let groups = resolve(&config, &directory, "uid=u,dc=x", "u", &[], None, false).await;
                assert!(matches!(groups, Err(Error::Protocol(_))), "{bad:?} named {name:?}: {groups:?}");
            }
        }
        let directory = Fixed(vec![group("CN=Banned,DC=X", Some("Banned")), group("cn=other,dc=x", None)]);
        let groups = resolve(&config, &directory, "uid=u,dc=x", "u", &[], None, false).await.expect("parses");
        let names: Vec<_> = groups.iter().map(|g| g.name.as_deref()).collect();
        assert_eq!(names, [Some("Banned"), Some("other")]);
    }
}
