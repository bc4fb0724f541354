//! From a directory entry and its groups to Ralph's user, flags, roles and profile.

use std::collections::{BTreeSet, HashMap, HashSet};

use ralph_core::store::UserMirror;
use ralph_core::{CountryCode, Group, Profile, User, UserSource, apply_role_flags};
use tracing::debug;

use crate::config::LdapConfig;
use crate::conn::Entry;
use crate::groups::LdapGroup;
use crate::query::GroupQuery;
use crate::{Error, Result, TRACE_TARGET, dn, filter};

/// The configuration's group rules with every DN normalised once, at start.
#[derive(Debug, Clone, Default)]
pub(crate) struct GroupRules {
    mapping: HashMap<String, Group>,
    require: Option<GroupQuery>,
    deny: Option<GroupQuery>,
    active: Option<GroupQuery>,
    staff: Option<GroupQuery>,
    superuser: Option<GroupQuery>,
}

/// What the group rules decided for one user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Required group missing.
    MissingRequired,
    /// In the denied group.
    Denied,
    /// Allowed so far, with these extra flags (active, staff, superuser).
    Allowed([bool; 3]),
}

impl GroupRules {
    pub(crate) fn new(config: &LdapConfig) -> Result<Self> {
        let mut mapping = HashMap::new();
        for (group_dn, role) in &config.group_mapping {
            let role = Group::new(role).map_err(|e| Error::Config(format!("group_mapping role {role:?}: {e}")))?;
            mapping.insert(dn::normalize(group_dn), role);
        }
        let norm = |q: &Option<GroupQuery>| q.as_ref().map(GroupQuery::normalized);
        let flags = &config.flags_by_group;
        Ok(Self {
            mapping,
            require: norm(&config.require_group),
            deny: norm(&config.deny_group),
            active: norm(&flags.is_active),
            staff: norm(&flags.is_staff),
            superuser: norm(&flags.is_superuser),
        })
    }

    /// Whether any rule reads group membership to allow, refuse or flag a user (require, deny,
    /// `flags_by_group`), as opposed to only naming roles.
    pub(crate) fn has_checks(&self) -> bool {
        [&self.require, &self.deny, &self.active, &self.staff, &self.superuser].iter().any(|q| q.is_some())
    }

    /// Applies require/deny and `flags_by_group`. Every rule names groups by DN, so this looks
    /// at every group found, named or not: a group whose name the service account cannot
    /// read (an ACL hiding `cn`) still denies, requires and sets flags.
    pub(crate) fn decide(&self, groups: &[LdapGroup]) -> Verdict {
        // The user's group DN set, built once per decision; every query is evaluated on it.
        let dns: HashSet<String> = groups.iter().map(|g| dn::normalize(&g.dn)).collect();
        if let Some(required) = &self.require
            && !required.matches(&dns)
        {
            return Verdict::MissingRequired;
        }
        if let Some(denied) = &self.deny
            && denied.matches(&dns)
        {
            return Verdict::Denied;
        }
        let flag = |q: &Option<GroupQuery>| q.as_ref().is_some_and(|q| q.matches(&dns));
        Verdict::Allowed([flag(&self.active), flag(&self.staff), flag(&self.superuser)])
    }

    /// Whether roles come from group names (no mapping configured), so groups must be named
    /// before [`GroupRules::roles`].
    pub(crate) fn needs_names(&self) -> bool {
        self.mapping.is_empty()
    }

    /// Maps groups to roles: with a mapping, by DN, and only mapped groups count; without one,
    /// group names are used as they are (so an LDAP group called `active` is Ralph's `active`
    /// role). Unnamed groups give no role: the caller names them first (see
    /// [`GroupRules::needs_names`]), failing the login when it cannot.
    pub(crate) fn roles(&self, groups: &[LdapGroup]) -> Vec<Group> {
        let mut roles = BTreeSet::new();
        if self.mapping.is_empty() {
            for group in groups {
                let Some(name) = &group.name else { continue };
                match Group::new(name) {
                    Ok(role) => {
                        roles.insert(role);
                    }
                    Err(e) => {
                        debug!(target: TRACE_TARGET, group = %group.dn, error = %e, "group name not usable as a role");
                    }
                }
            }
        } else {
            roles.extend(groups.iter().filter_map(|g| self.mapping.get(&dn::normalize(&g.dn)).cloned()));
        }
        roles.into_iter().collect()
    }
}

/// Where the stored username comes from: the attribute holding the login name, or (when no
/// attribute can be told from the configuration) the entry's RDN value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum NameSource {
    /// `username_attr`, or the one attribute the user search filter / DN template puts the
    /// login in.
    Attr(String),
    /// The value of the entry's first RDN. A login must be that value or a value of one of
    /// these attributes: those the user search filter compares the login with, when there
    /// are several (`(|(mail={user})(uid={user}))`), so no single one names the user.
    Rdn(Vec<String>),
}

impl NameSource {
    pub(crate) fn new(config: &LdapConfig) -> Self {
        if let Some(attr) = &config.username_attr {
            return Self::Attr(attr.clone());
        }
        if let Some(union) = &config.user_search {
            // A union names its users by one attribute only when every search compares the
            // login with that same single attribute; otherwise the RDN, with every attribute
            // any search compares the login with.
            let mut single: Option<Option<String>> = None;
            let mut attrs: Vec<String> = Vec::new();
            for search in union {
                let template = filter::parenthesize(&search.filter);
                let used = filter::PlaceholderUse::of(&template);
                let this = used.single_attr().map(str::to_owned);
                single = match single {
                    None => Some(this),
                    Some(before)
                        if before.as_deref().map(str::to_lowercase) == this.as_deref().map(str::to_lowercase) =>
                    {
                        Some(before)
                    }
                    Some(_) => Some(None),
                };
                for attr in used.attrs {
                    if !attrs.iter().any(|a| a.eq_ignore_ascii_case(attr)) {
                        attrs.push(attr.to_owned());
                    }
                }
            }
            return match single.flatten() {
                Some(attr) => Self::Attr(attr),
                None => Self::Rdn(attrs),
            };
        }
        match config.user_dn_template.as_deref().and_then(dn::template_attr) {
            Some(attr) => Self::Attr(attr.to_owned()),
            None => Self::Rdn(Vec::new()),
        }
    }

    /// The attributes to ask for.
    pub(crate) fn attrs(&self) -> &[String] {
        match self {
            Self::Attr(a) => std::slice::from_ref(a),
            Self::Rdn(login_attrs) => login_attrs,
        }
    }

    /// The entry's username in the directory's spelling, the same whichever spelling was typed
    /// and for a login and the bulk sync alike: the RDN value when the RDN is the username
    /// attribute (unique under its parent, and stable), else the attribute's first value.
    pub(crate) fn username(&self, entry: &Entry) -> Option<String> {
        let parsed = dn::Dn::parse(&entry.dn).ok();
        let rdn = parsed.as_ref().and_then(dn::Dn::first);
        let name = match self {
            Self::Attr(attr) => rdn
                .and_then(|r| r.value_of(attr))
                .map(str::trim)
                .filter(|v| !v.is_empty())
                .or_else(|| entry.first(attr)),
            Self::Rdn(_) => rdn.and_then(|r| r.0.first()).map(|a| a.value.trim()).filter(|v| !v.is_empty()),
        };
        name.map(str::to_owned)
    }

    /// Whether the entry holds `login` as a login name (case-insensitive): a filter that
    /// matched on something else (another branch of an OR) must not log in under this name.
    /// The RDN counts too, for a server that lets the attribute be searched but not read.
    pub(crate) fn carries(&self, entry: &Entry, login: &str) -> bool {
        let wanted = login.to_lowercase();
        let in_values =
            self.attrs().iter().any(|attr| entry.values(attr).iter().any(|v| v.trim().to_lowercase() == wanted));
        in_values || self.username(entry).is_some_and(|v| v.to_lowercase() == wanted)
    }
}

/// Builds the mirrored user: names from the attribute map, flags from roles (and
/// `flags_by_group`), source LDAP. Overlong names are cut to the model's limits so that a
/// directory quirk never blocks a login.
pub(crate) fn user(config: &LdapConfig, entry: &Entry, username: &str, roles: &[Group], flags: [bool; 3]) -> User {
    let map = &config.user_attr_map;
    let text = |attr: &Option<String>, max: usize| -> String {
        attr.as_deref().and_then(|a| entry.first(a)).map(|v| v.chars().take(max).collect()).unwrap_or_default()
    };
    let email =
        map.email.as_deref().and_then(|a| entry.first(a)).filter(|e| e.chars().count() <= 254).map(str::to_owned);
    let mut user = User {
        username: username.to_owned(),
        first_name: text(&map.first_name, 150),
        last_name: text(&map.last_name, 150),
        email,
        is_active: false,
        is_staff: false,
        is_superuser: false,
        source: UserSource::Ldap,
        directory: config.realm.clone(),
    };
    apply_role_flags(&mut user, roles);
    user.is_active |= flags[0];
    user.is_staff |= flags[1];
    user.is_superuser |= flags[2];
    user
}

/// The mirror of a mapped user: groups within the configured scope (`mirror_groups`,
/// `mirror_groups_except`), or left alone when groups are not mirrored.
pub(crate) fn mirror(config: &LdapConfig, user: User, profile: Option<Profile>, roles: &[Group]) -> UserMirror {
    let scope = config.group_scope();
    let groups = scope.is_some().then(|| roles.to_vec());
    UserMirror { user, profile, groups, group_scope: scope.unwrap_or_default() }
}

/// Builds the profile from the profile attribute map: `manager` DN → display name, `country`
/// validated (an empty or invalid code is none, logged at debug), over-long text left out.
pub(crate) fn profile(config: &LdapConfig, entry: &Entry) -> Option<Profile> {
    let map = &config.profile_attr_map;
    if map.is_empty() {
        return None;
    }
    let text = |attr: &Option<String>| -> Option<String> {
        let value = attr.as_deref().and_then(|a| entry.first(a))?;
        if value.chars().count() > 255 {
            debug!(target: TRACE_TARGET, attribute = attr.as_deref().unwrap_or_default(), "profile value too long, ignored");
            return None;
        }
        Some(value.to_owned())
    };
    let manager = map
        .manager
        .as_deref()
        .and_then(|a| entry.first(a))
        .and_then(dn::display_name)
        .filter(|m| m.chars().count() <= 255);
    let country = map.country.as_deref().and_then(|a| entry.first(a)).and_then(|c| {
        let code = CountryCode::parse_lenient(c);
        if code.is_none() {
            debug!(target: TRACE_TARGET, dn = %entry.dn, "country attribute is not an ISO 3166-1 alpha-2 code, ignored");
        }
        code
    });
    Some(Profile {
        company: text(&map.company),
        manager,
        department: text(&map.department),
        employee_id: text(&map.employee_id),
        location: text(&map.location),
        country,
    })
}

/// The attributes a user lookup has to ask for.
pub(crate) fn user_attributes(config: &LdapConfig, names: &NameSource) -> Vec<String> {
    let map = &config.user_attr_map;
    let mut attrs: Vec<String> = [&map.first_name, &map.last_name, &map.email]
        .into_iter()
        .flatten()
        .cloned()
        .chain(names.attrs().iter().cloned())
        .chain(config.profile_attr_map.attributes().map(str::to_owned))
        .collect();
    match config.group_type {
        crate::config::GroupType::MemberOf => attrs.push(config.member_of_attr.clone()),
        crate::config::GroupType::Posix => attrs.push(crate::groups::GID_NUMBER.to_owned()),
        crate::config::GroupType::GroupOfNames => {}
    }
    if attrs.is_empty() {
        // An empty list means "all user attributes"; ask for none instead.
        attrs.push("1.1".to_owned());
    }
    attrs.sort();
    attrs.dedup();
    attrs
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> LdapConfig {
        LdapConfig::builder(["ldaps://h"])
            .user_search("dc=x", crate::Scope::Subtree, "(uid=%(user)s)")
            .map_group("CN=_gr_ralph,OU=Other,DC=x", "active")
            .map_group("cn=admins,dc=x", "superuser")
            .deny_group("cn=banned,dc=x")
            .build()
            .expect("valid")
    }

    fn g(dn: &str, name: &str) -> LdapGroup {
        LdapGroup { dn: dn.into(), name: Some(name.into()) }
    }

    fn unnamed(dn: &str) -> LdapGroup {
        LdapGroup { dn: dn.into(), name: None }
    }

    #[test]
    fn mapping_ignores_unmapped_and_compares_dns_normalised() {
        let rules = GroupRules::new(&config()).expect("rules");
        let groups = [g("cn=_GR_RALPH, ou=other, dc=X", "_gr_ralph"), g("cn=coffee,dc=x", "coffee")];
        assert_eq!(rules.decide(&groups), Verdict::Allowed([false; 3]));
        assert_eq!(rules.roles(&groups), vec![Group::new("active").expect("valid")]);
        assert_eq!(rules.decide(&[g("CN=Banned,DC=X", "banned")]), Verdict::Denied);
    }

    #[test]
    fn unnamed_groups_still_deny_require_map_and_flag() {
        let mut c = config();
        c.require_group = Some("cn=users,dc=x".into());
        c.flags_by_group.is_staff = Some("cn=it,dc=x".into());
        let rules = GroupRules::new(&c).expect("rules");
        let users = unnamed("cn=users,dc=x");
        assert_eq!(rules.decide(&[users.clone(), unnamed("cn=banned,dc=x")]), Verdict::Denied);
        assert_eq!(rules.decide(&[unnamed("cn=it,dc=x")]), Verdict::MissingRequired);
        let groups = [users, unnamed("cn=it,dc=x"), unnamed("cn=_gr_ralph,ou=other,dc=x")];
        assert_eq!(rules.decide(&groups), Verdict::Allowed([false, true, false]));
        assert_eq!(rules.roles(&groups), vec![Group::new("active").expect("valid")]);
    }

    #[test]
    fn without_mapping_names_are_roles() {
        let mut c = config();
        c.group_mapping.clear();
        c.deny_group = None;
        c.require_group = Some("cn=staff,dc=x".into());
        let rules = GroupRules::new(&c).expect("rules");
        assert_eq!(rules.decide(&[g("cn=active,dc=x", "active")]), Verdict::MissingRequired);
        let groups = [g("cn=active,dc=x", "active"), g("cn=staff,dc=x", "staff")];
        assert!(rules.needs_names());
        assert_eq!(rules.decide(&groups), Verdict::Allowed([false; 3]));
        let roles = rules.roles(&groups);
        let mut user = User::new("u").expect("valid");
        apply_role_flags(&mut user, &roles);
        assert!(user.is_active && user.is_staff && !user.is_superuser);
    }

    fn entry(dn: &str, attrs: &[(&str, &[&str])]) -> Entry {
        Entry {
            dn: dn.into(),
            attrs: attrs.iter().map(|(a, v)| ((*a).to_owned(), v.iter().map(|s| (*s).to_owned()).collect())).collect(),
        }
    }

    #[test]
    fn username_source_is_configured_or_inferred() {
        let mut c = config();
        assert_eq!(NameSource::new(&c), NameSource::Attr("uid".into()), "from the user search filter");
        c.username_attr = Some("sAMAccountName".into());
        assert_eq!(NameSource::new(&c), NameSource::Attr("sAMAccountName".into()), "configured wins");
        c.username_attr = None;
        c.user_search = None;
        c.user_dn_template = Some("cn=%(user)s,ou=people,dc=x".into());
        assert_eq!(NameSource::new(&c), NameSource::Attr("cn".into()), "from the DN template");
        c.user_dn_template = Some("cn=u-%(user)s,ou=people,dc=x".into());
        assert_eq!(NameSource::new(&c), NameSource::Rdn(vec![]));
    }

    #[test]
    fn a_filter_comparing_several_attributes_names_users_by_rdn() {
        let mut c = config();
        c.user_search =
            Some(crate::SearchSpec::new("dc=x", crate::Scope::Subtree, "(|(mail=%(user)s)(uid=%(user)s))").into());
        let names = NameSource::new(&c);
        assert_eq!(names, NameSource::Rdn(vec!["mail".into(), "uid".into()]));
        assert!(user_attributes(&c, &names).iter().any(|a| a == "mail"), "mail is not asked for");
        let e = entry("uid=alice,ou=people,dc=x", &[("mail", &["alice@x.example"]), ("uid", &["alice", "anowak"])]);
        assert_eq!(names.username(&e).as_deref(), Some("alice"));
        for login in ["alice", "ALICE", "anowak", "Alice@X.example"] {
            assert!(names.carries(&e, login), "{login}");
        }
        assert!(!names.carries(&e, "bob"));
        c.user_search =
            Some(crate::SearchSpec::new("dc=x", crate::Scope::Subtree, "(|(uid=%(user)s)(uid={user}))").into());
        assert_eq!(NameSource::new(&c), NameSource::Rdn(vec!["uid".into()]), "one comparison only");
    }

    #[test]
    fn a_union_names_users_by_the_attribute_all_its_searches_compare() {
        let mut c = config();
        let search = |base: &str, f: &str| crate::SearchSpec::new(base, crate::Scope::Subtree, f);
        c.user_search = Some(crate::SearchUnion::new([
            search("ou=a,dc=x", "(uid=%(user)s)"),
            search("ou=b,dc=x", "(&(objectClass=person)(UID={user}))"),
        ]));
        assert_eq!(NameSource::new(&c), NameSource::Attr("uid".into()));
        c.user_search = Some(crate::SearchUnion::new([
            search("ou=a,dc=x", "(uid=%(user)s)"),
            search("ou=b,dc=x", "(sAMAccountName=%(user)s)"),
        ]));
        assert_eq!(NameSource::new(&c), NameSource::Rdn(vec!["uid".into(), "sAMAccountName".into()]));
    }

    #[test]
    fn usernames_are_the_directory_spelling() {
        let uid = NameSource::Attr("uid".into());
        let e = entry("uid=Alice,ou=people,dc=x", &[("UID", &["anowak", "Alice"])]);
        assert_eq!(uid.username(&e).as_deref(), Some("Alice"), "the RDN value, not the first one");
        assert!(uid.carries(&e, "ALICE") && uid.carries(&e, "ANowak") && !uid.carries(&e, "alic"));
        let sam = NameSource::Attr("sAMAccountName".into());
        let e = entry("CN=Smith\\, John,OU=x,DC=x", &[("sAMAccountName", &[" jsmith "])]);
        assert_eq!(sam.username(&e).as_deref(), Some("jsmith"));
        let rdn = NameSource::Rdn(vec![]);
        assert_eq!(rdn.username(&e).as_deref(), Some("Smith, John"));
        assert!(rdn.carries(&e, "smith, JOHN") && !rdn.carries(&e, "jsmith"));
        assert_eq!(sam.username(&entry("cn=x,dc=x", &[])), None);
    }
}
