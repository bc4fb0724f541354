//! From a directory entry and its groups to Ralph's user, flags, roles and profile.

use std::collections::{BTreeSet, HashMap, HashSet};

use ralph_core::{CountryCode, Group, Profile, User, UserSource, apply_role_flags};
use tracing::debug;

use crate::config::LdapConfig;
use crate::conn::Entry;
use crate::groups::LdapGroup;
use crate::{Error, Result, TRACE_TARGET, dn};

/// The configuration's group rules with every DN normalised once, at start.
#[derive(Debug, Clone, Default)]
pub(crate) struct GroupRules {
    mapping: HashMap<String, Group>,
    require: Option<String>,
    deny: Option<String>,
    active: HashSet<String>,
    staff: HashSet<String>,
    superuser: HashSet<String>,
}

/// What the group rules decided for one user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Required group missing.
    MissingRequired,
    /// In the denied group.
    Denied,
    /// Allowed so far, with these roles and extra flags (active, staff, superuser).
    Roles(Vec<Group>, [bool; 3]),
}

impl GroupRules {
    pub(crate) fn new(config: &LdapConfig) -> Result<Self> {
        let mut mapping = HashMap::new();
        for (group_dn, role) in &config.group_mapping {
            let role = Group::new(role).map_err(|e| Error::Config(format!("group_mapping role {role:?}: {e}")))?;
            mapping.insert(dn::normalize(group_dn), role);
        }
        let set = |dns: &[String]| dns.iter().map(|d| dn::normalize(d)).collect::<HashSet<_>>();
        Ok(Self {
            mapping,
            require: config.require_group.as_deref().map(dn::normalize),
            deny: config.deny_group.as_deref().map(dn::normalize),
            active: set(&config.flags_by_group.is_active),
            staff: set(&config.flags_by_group.is_staff),
            superuser: set(&config.flags_by_group.is_superuser),
        })
    }

    /// Applies require/deny, then maps groups to roles: with a mapping, only mapped groups
    /// count; without one, group names are used as they are (so an LDAP group called `active`
    /// is Ralph's `active` role).
    pub(crate) fn decide(&self, groups: &[LdapGroup]) -> Verdict {
        let dns: HashSet<String> = groups.iter().map(|g| dn::normalize(&g.dn)).collect();
        if let Some(required) = &self.require
            && !dns.contains(required)
        {
            return Verdict::MissingRequired;
        }
        if let Some(denied) = &self.deny
            && dns.contains(denied)
        {
            return Verdict::Denied;
        }
        let mut roles = BTreeSet::new();
        if self.mapping.is_empty() {
            for group in groups {
                match Group::new(&group.name) {
                    Ok(role) => {
                        roles.insert(role);
                    }
                    Err(e) => {
                        debug!(target: TRACE_TARGET, group = %group.dn, error = %e, "group name not usable as a role");
                    }
                }
            }
        } else {
            roles.extend(dns.iter().filter_map(|d| self.mapping.get(d).cloned()));
        }
        let any = |set: &HashSet<String>| !set.is_disjoint(&dns);
        Verdict::Roles(roles.into_iter().collect(), [any(&self.active), any(&self.staff), any(&self.superuser)])
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
    };
    apply_role_flags(&mut user, roles);
    user.is_active |= flags[0];
    user.is_staff |= flags[1];
    user.is_superuser |= flags[2];
    user
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
pub(crate) fn user_attributes(config: &LdapConfig) -> Vec<String> {
    let map = &config.user_attr_map;
    let mut attrs: Vec<String> = [&map.first_name, &map.last_name, &map.email, &config.username_attr]
        .into_iter()
        .flatten()
        .cloned()
        .chain(config.profile_attr_map.attributes().map(str::to_owned))
        .collect();
    if config.group_type == crate::config::GroupType::MemberOf {
        attrs.push(config.member_of_attr.clone());
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
        LdapConfig::builder(["ldap://h"])
            .user_search("dc=x", crate::Scope::Subtree, "(uid=%(user)s)")
            .map_group("CN=_gr_ralph,OU=Other,DC=x", "active")
            .map_group("cn=admins,dc=x", "superuser")
            .deny_group("cn=banned,dc=x")
            .build()
            .expect("valid")
    }

    fn g(dn: &str, name: &str) -> LdapGroup {
        LdapGroup { dn: dn.into(), name: name.into() }
    }

    #[test]
    fn mapping_ignores_unmapped_and_compares_dns_normalised() {
        let rules = GroupRules::new(&config()).expect("rules");
        let verdict = rules.decide(&[g("cn=_GR_RALPH, ou=other, dc=X", "_gr_ralph"), g("cn=coffee,dc=x", "coffee")]);
        assert_eq!(verdict, Verdict::Roles(vec![Group::new("active").expect("valid")], [false; 3]));
        assert_eq!(rules.decide(&[g("CN=Banned,DC=X", "banned")]), Verdict::Denied);
    }

    #[test]
    fn without_mapping_names_are_roles() {
        let mut c = config();
        c.group_mapping.clear();
        c.deny_group = None;
        c.require_group = Some("cn=staff,dc=x".into());
        let rules = GroupRules::new(&c).expect("rules");
        assert_eq!(rules.decide(&[g("cn=active,dc=x", "active")]), Verdict::MissingRequired);
        let Verdict::Roles(roles, _) = rules.decide(&[g("cn=active,dc=x", "active"), g("cn=staff,dc=x", "staff")])
        else {
            panic!("refused")
        };
        let mut user = User::new("u").expect("valid");
        apply_role_flags(&mut user, &roles);
        assert!(user.is_active && user.is_staff && !user.is_superuser);
    }
}
