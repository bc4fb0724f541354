//! The sync's bulk group resolution for `group_of_names` with a group mapping: the groups the
//! rules name (mapped, required, denied, flagging) are the only ones that can matter, so each
//! is read once per run with every user DN in it, directly or through nested groups, instead
//! of a group search per user.

use std::collections::{HashSet, VecDeque};

use crate::backend::Inner;
use crate::config::{GroupType, LdapConfig, NestedGroups, SearchUnion};
use crate::conn::{Entry, PagedSearch};
use crate::groups::LdapGroup;
use crate::{Error, Result, dn};

/// The rule groups with their (transitive) members, as normalised DNs.
pub(super) struct MemberIndex {
    groups: Vec<(LdapGroup, HashSet<String>)>,
}

impl MemberIndex {
    /// The index, when it applies: `group_of_names`, a group mapping (so only the rules'
    /// groups give roles), and nesting followed on the client or not at all (with AD's in-chain
    /// rule the server resolves each user in one search anyway).
    pub(super) async fn build<S>(inner: &Inner<S>, use_matching_rule: bool) -> Result<Option<Self>> {
        let config = &inner.config;
        let Some(union) = &config.group_search else { return Ok(None) };
        if config.group_type != GroupType::GroupOfNames || config.group_mapping.is_empty() || use_matching_rule {
            return Ok(None);
        }
        let nested = config.nested_groups != NestedGroups::Off;
        // Every group DN the group search finds: a member that is one of them is a nested group.
        let all_groups = if nested { list_groups(inner, union).await? } else { HashSet::new() };
        let member_attr = config.group_member_attr.as_str();
        let attrs = [member_attr, config.group_name_attr.as_str()];
        let mut groups = Vec::new();
        let mut indexed: HashSet<String> = HashSet::new();
        for rule_dn in rule_dns(config) {
            let key = dn::normalize(rule_dn);
            // A group outside the group search would never be found by a user's group search.
            if !indexed.insert(key.clone()) {
                continue;
            }
            let Some(top) = read_group(inner, union, rule_dn, &attrs).await? else { continue };
            let mut members: HashSet<String> = HashSet::new();
            let mut visited: HashSet<String> = HashSet::from([key]);
            let mut queue: VecDeque<(Entry, usize)> = VecDeque::from([(top.clone(), 1)]);
            while let Some((group, depth)) = queue.pop_front() {
                for member in group.values(member_attr) {
                    let member_key = dn::normalize(member);
                    if nested
                        && depth < config.max_group_depth
                        && all_groups.contains(&member_key)
                        && visited.insert(member_key.clone())
                        && let Some(inner_group) = read_group(inner, union, member, &attrs).await?
                    {
                        queue.push_back((inner_group, depth + 1));
                    }
                    members.insert(member_key);
                }
            }
            groups.push((LdapGroup::from_entry(&top, &config.group_name_attr)?, members));
        }
        Ok(Some(Self { groups }))
    }

    /// The rule groups `user_dn` is in.
    pub(super) fn groups_of(&self, user_dn: &str) -> Vec<LdapGroup> {
        let key = dn::normalize(user_dn);
        self.groups.iter().filter(|(_, members)| members.contains(&key)).map(|(group, _)| group.clone()).collect()
    }
}

/// Every group DN the rules name, as written.
fn rule_dns(config: &LdapConfig) -> Vec<&str> {
    let flags = &config.flags_by_group;
    let queries = [&config.require_group, &config.deny_group, &flags.is_active, &flags.is_staff, &flags.is_superuser];
    config.group_mapping.keys().map(String::as_str).chain(queries.into_iter().flatten().flat_map(|q| q.dns())).collect()
}

/// One group entry as the group search union finds it: through the filter of each search
/// whose base and scope cover it, in order, until one returns it; `None` when none does (it
/// does not exist, is outside every search, or is not a group by their filters). A group that
/// is a referral fails the run (fail closed, as a login's group search does).
async fn read_group<S>(inner: &Inner<S>, union: &SearchUnion, group_dn: &str, attrs: &[&str]) -> Result<Option<Entry>> {
    for search in union.iter().filter(|s| s.covers(group_dn)) {
        let found = inner.service_search(group_dn, ldap3::Scope::Base, &search.filter, attrs).await?;
        if found.referred {
            return Err(Error::Result {
                op: "group search",
                rc: 10,
                text: format!("{group_dn} is a referral (not chased)"),
            });
        }
        if let Some(entry) = found.entries.into_iter().next() {
            return Ok(Some(entry));
        }
    }
    Ok(None)
}

/// The DNs of every group the group search union finds (paged: there may be more than a
/// size limit).
async fn list_groups<S>(inner: &Inner<S>, union: &SearchUnion) -> Result<HashSet<String>> {
    let page = i32::try_from(inner.config.page_size).map_err(|_| Error::Config("page_size too large".into()))?;
    let mut ldap = inner.service_connection().await?;
    let mut dns = HashSet::new();
    for search in union {
        let mut pages = PagedSearch::start(
            &mut ldap,
            inner.op_timeout(),
            page,
            (&search.base, search.scope.into(), &search.filter),
            vec!["1.1".to_owned()],
        )
        .await?;
        loop {
            let batch = pages.next_batch(inner.config.page_size as usize).await?;
            if batch.is_empty() {
                break;
            }
            dns.extend(batch.iter().map(|e| dn::normalize(&e.dn)));
        }
        pages.finish().await?;
    }
    Ok(dns)
}
