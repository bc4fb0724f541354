//! User and group search unions (django-auth-ldap's `LDAPSearchUnion`), against a slapd of
//! this test's own from scripts/services/slapd: users in two OUs (`ou=people`,
//! `ou=contractors`) and one outside (`ou=external`), groups in two OUs (`ou=groups`,
//! `ou=groups2`).

mod common;

use common::{Fixture, PrivateSlapd, fixture, ralph_toml, store};
use ralph_core::testing::MemoryStore;
use ralph_core::{AuthBackend, AuthOutcome, Credentials, DenyReason, Identity, UserStore};
use ralph_ldap::{GroupQuery, GroupType, LdapBackend, LdapConfig, NestedGroups, Scope, SearchSpec};

/// The fixture config's single user search, cut out where a test writes a union instead.
fn user_search_block(fx: &Fixture) -> String {
    format!(
        "[user_search]\nbase = \"{}\"\nscope = \"subtree\"\nfilter = \"(&(objectClass=*)(sAMAccountName=%(user)s))\"\n",
        fx.base
    )
}

/// Ralph's settings with the user search replaced by `user_search` (TOML appended at the end)
/// and no user filter; users are active unless banned (the contractors are in no mapped group).
fn config_with(fx: &Fixture, user_search: &str) -> LdapConfig {
    let toml = ralph_toml(fx);
    let block = user_search_block(fx);
    assert!(toml.contains(&block), "the fixture config's user search moved");
    let toml: String =
        toml.replace(&block, "").lines().filter(|l| !l.starts_with("user_filter")).collect::<Vec<_>>().join("\n");
    // A key (the inline-array form) goes above the tables, tables below them.
    let text = if user_search.starts_with('[') {
        format!("{toml}\n{user_search}\n")
    } else {
        format!("{user_search}\n{toml}\n")
    };
    let mut c = LdapConfig::from_toml_str(&text).expect("valid config");
    c.flags_by_group.is_active = Some(!GroupQuery::from(format!("cn=_gr_ralph_banned,ou=groups,{}", fx.base)));
    c.max_deactivate_percent = 100;
    c
}

fn ou(fx: &Fixture, name: &str) -> String {
    format!("ou={name},{}", fx.base)
}

/// People and contractors, plus a second search of the contractors that returns the same
/// entries (another filter): a DN two searches return is one entry.
fn union_toml(fx: &Fixture) -> String {
    format!(
        "[[user_search]]\nbase = \"{people}\"\nfilter = \"(sAMAccountName=%(user)s)\"\n\n\
         [[user_search]]\nbase = \"{contractors}\"\nscope = \"one_level\"\nfilter = \"(sAMAccountName=%(user)s)\"\n\n\
         [[user_search]]\nbase = \"{contractors}\"\nfilter = \"(&(objectClass=inetOrgPerson)(sAMAccountName=%(user)s))\"\n",
        people = ou(fx, "people"),
        contractors = ou(fx, "contractors"),
    )
}

async fn login(b: &LdapBackend<MemoryStore>, user: &str, pw: &str) -> AuthOutcome {
    b.authenticate(&Credentials::new(user, pw)).await.expect("decided")
}

fn identity(outcome: AuthOutcome) -> Identity {
    match outcome {
        AuthOutcome::Authenticated(identity) => identity,
        other => panic!("expected a successful login, got {other:?}"),
    }
}

fn roles(identity: &Identity) -> Vec<&str> {
    identity.groups.iter().map(|g| g.as_str()).collect()
}

#[tokio::test]
async fn a_user_search_union_logs_in_users_of_every_ou_and_no_other() {
    if fixture().is_none() {
        return;
    }
    let slapd = PrivateSlapd::start();
    let fx = slapd.fixture();
    let config = config_with(&fx, &union_toml(&fx));
    assert_eq!(config.user_search.as_ref().map(|u| u.searches().len()), Some(3));
    let b = LdapBackend::new(config, store()).expect("backend");

    let alice = identity(login(&b, "alice", "alice-pw").await);
    assert!(roles(&alice).contains(&"staff"), "{alice:?}");
    // In two of the union's searches: one entry, not an ambiguous name.
    let conny = identity(login(&b, "conny", "conny-pw").await);
    assert_eq!(conny.user.first_name, "Conny");
    assert_eq!(login(&b, "conny", "wrong").await, AuthOutcome::NotHandled);
    // Outside the union: not found, whatever the password.
    assert_eq!(login(&b, "exty", "exty-pw").await, AuthOutcome::NotHandled);
    // Mallory is in the union (ou=people) and still denied: the rules apply as before.
    assert_eq!(login(&b, "mallory", "mallory-pw").await, AuthOutcome::Denied(DenyReason::DeniedGroup));

    // The inline-array form and the builder say the same as the [[user_search]] tables.
    let inline = format!(
        "user_search = [{{ base = \"{}\", filter = \"(sAMAccountName=%(user)s)\" }}, \
         {{ base = \"{}\", scope = \"subtree\", filter = \"(sAMAccountName=%(user)s)\" }}]",
        ou(&fx, "people"),
        ou(&fx, "contractors")
    );
    let inline = LdapBackend::new(config_with(&fx, &inline), store()).expect("backend");
    identity(login(&inline, "cora", "cora-pw").await);
    let built = LdapConfig::builder([fx.url.as_str()])
        .bind(fx.bind_dn.as_str(), fx.bind_password.as_str())
        .user_search_union([
            SearchSpec::new(ou(&fx, "people"), Scope::Subtree, "(uid=%(user)s)"),
            SearchSpec::new(ou(&fx, "contractors"), Scope::Subtree, "(uid=%(user)s)"),
        ])
        .flags_by_group(ralph_ldap::FlagsByGroup {
            is_active: Some(!GroupQuery::from(format!("cn=_gr_ralph_banned,ou=groups,{}", fx.base))),
            ..Default::default()
        })
        .build()
        .expect("valid");
    let built = LdapBackend::new(built, store()).expect("backend");
    for (user, pw) in [("bob", "bob-pw"), ("conny", "conny-pw")] {
        identity(login(&built, user, pw).await);
    }
    assert_eq!(login(&built, "exty", "exty-pw").await, AuthOutcome::NotHandled);
}

#[tokio::test]
async fn a_union_sync_imports_both_ous_and_an_entry_two_searches_list_once() {
    if fixture().is_none() {
        return;
    }
    let slapd = PrivateSlapd::start();
    let fx = slapd.fixture();
    // Each OU alone, for the counts.
    let search = |base: &str| format!("[user_search]\nbase = \"{base}\"\nfilter = \"(sAMAccountName=%(user)s)\"\n");
    let people = LdapBackend::new(config_with(&fx, &search(&ou(&fx, "people"))), store()).expect("backend");
    let people = people.sync().await.expect("people sync");
    let contractors = LdapBackend::new(config_with(&fx, &search(&ou(&fx, "contractors"))), store()).expect("backend");
    let contractors = contractors.sync().await.expect("contractors sync");
    assert_eq!(contractors.seen, 2, "{contractors:?}");

    let store = store();
    let union = LdapBackend::new(config_with(&fx, &union_toml(&fx)), store.clone()).expect("backend");
    let report = union.sync().await.expect("union sync");
    // conny and cora, listed by two searches, are seen once and are not "ambiguous".
    assert_eq!(report.seen, people.seen + contractors.seen, "{report:?}");
    assert_eq!(report.skipped, people.skipped + contractors.skipped, "{report:?}");
    assert_eq!(report.deactivated, 0, "{report:?}");
    for user in ["alice", "bob", "conny", "cora"] {
        let stored = store.get_user(user).await.expect("store").unwrap_or_else(|| panic!("{user} not imported"));
        assert!(stored.value.is_active, "{user}");
    }
    assert_eq!(store.get_user("exty").await.expect("store"), None, "outside the union");

    // A second run changes nothing and deactivates nobody.
    let again = union.sync().await.expect("second sync");
    assert_eq!((again.seen, again.created, again.updated, again.deactivated), (report.seen, 0, 0, 0), "{again:?}");
}

/// group_of_names over a group search union: conny's group is in `ou=groups2`, its parent
/// (nested) in `ou=groups`.
fn group_union_config(fx: &Fixture, union: bool) -> LdapConfig {
    let mut c = config_with(fx, &union_toml(fx));
    c.group_type = GroupType::GroupOfNames;
    c.nested_groups = NestedGroups::Recursive;
    let groups = SearchSpec::new(ou(fx, "groups"), Scope::Subtree, "(objectClass=groupOfNames)");
    let groups2 = SearchSpec::new(ou(fx, "groups2"), Scope::OneLevel, "(objectClass=groupOfNames)");
    c.group_search = Some(if union { ralph_ldap::SearchUnion::new([groups2, groups]) } else { groups.into() });
    c.group_mapping.insert(format!("cn=contractor-staff,ou=groups2,{}", fx.base), "contractor-staff".into());
    c.group_mapping.insert(format!("cn=vendors,ou=groups,{}", fx.base), "vendors".into());
    c
}

#[tokio::test]
async fn a_group_search_union_finds_groups_in_both_ous() {
    if fixture().is_none() {
        return;
    }
    let slapd = PrivateSlapd::start();
    let fx = slapd.fixture();

    // One group search: neither the direct group (in ou=groups2) nor, through it, its parent.
    let single = LdapBackend::new(group_union_config(&fx, false), store()).expect("backend");
    let conny = identity(login(&single, "conny", "conny-pw").await);
    assert!(roles(&conny).iter().all(|r| *r != "vendors" && *r != "contractor-staff"), "{conny:?}");

    // The union: the direct group from one search, its parent from the other.
    let union = LdapBackend::new(group_union_config(&fx, true), store()).expect("backend");
    let conny = identity(login(&union, "conny", "conny-pw").await);
    assert!(roles(&conny).contains(&"contractor-staff") && roles(&conny).contains(&"vendors"), "{conny:?}");
    // Users whose groups are all in ou=groups keep them.
    let alice = identity(login(&union, "alice", "alice-pw").await);
    assert!(roles(&alice).contains(&"staff"), "{alice:?}");

    // The sync's bulk group index reads the union too.
    let store = store();
    let sync = LdapBackend::new(group_union_config(&fx, true), store.clone()).expect("backend");
    sync.sync().await.expect("sync");
    let groups: Vec<String> =
        store.user_groups("conny").await.expect("store").iter().map(|g| g.as_str().to_owned()).collect();
    assert!(groups.iter().any(|g| g == "contractor-staff") && groups.iter().any(|g| g == "vendors"), "{groups:?}");
    // And a deny group found only through the second search refuses.
    let mut denied = group_union_config(&fx, true);
    denied.deny_group = Some(GroupQuery::from(format!("cn=contractor-staff,ou=groups2,{}", fx.base)));
    let denied = LdapBackend::new(denied, store.clone()).expect("backend");
    let report = denied.sync().await.expect("sync");
    assert_eq!((report.refused, report.deactivated), (1, 1), "{report:?}");
    assert!(!store.get_user("conny").await.expect("store").expect("kept").value.is_active);
    assert_eq!(login(&denied, "conny", "conny-pw").await, AuthOutcome::Denied(DenyReason::DeniedGroup));
}

#[tokio::test]
async fn binding_as_the_user_reads_the_entry_back_through_the_union() {
    if fixture().is_none() {
        return;
    }
    let slapd = PrivateSlapd::start();
    let fx = slapd.fixture();
    // No service account: the user binds with the templated DN and reads their entry back with
    // the union, where two searches return it.
    let mut c = config_with(&fx, &union_toml(&fx));
    c.bind_dn = None;
    c.bind_password = None;
    c.bind_as_authenticating_user = true;
    c.bind_name_template = Some(format!("uid=%(user)s,ou=contractors,{}", fx.base));
    c.validate().expect("valid");
    let b = LdapBackend::new(c, store()).expect("backend");
    let conny = identity(login(&b, "conny", "conny-pw").await);
    assert_eq!(conny.user.username, "conny");
    assert_eq!(login(&b, "conny", "wrong").await, AuthOutcome::NotHandled);
    assert_eq!(login(&b, "exty", "exty-pw").await, AuthOutcome::NotHandled, "no such DN under the template");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn many_tasks_log_in_through_a_union_at_once() {
    if fixture().is_none() {
        return;
    }
    let slapd = PrivateSlapd::start();
    let fx = slapd.fixture();
    // Three OUs (the account-state one too, with the expiring policy as the default): the
    // union's searches and the first, concurrent, reads of the policy.
    let adstate =
        format!("\n[[user_search]]\nbase = \"{}\"\nfilter = \"(sAMAccountName=%(user)s)\"\n", ou(&fx, "adstate"));
    let mut c = config_with(&fx, &format!("{}{adstate}", union_toml(&fx)));
    c.ppolicy_default = Some(format!("cn=expiring,ou=policies,{}", fx.base));
    let store = store();
    let b = LdapBackend::new(c, store.clone()).expect("backend");
    let cases: [(&str, Option<DenyReason>); 6] = [
        ("alice", None),
        ("conny", None),
        ("cora", None),
        ("pp-fresh", None),
        ("pp-expired", Some(DenyReason::PasswordExpired)),
        ("pp-aged", Some(DenyReason::PasswordExpired)),
    ];
    let tasks: Vec<_> = (0..60)
        .map(|i| {
            let b = b.clone();
            let (user, expect) = cases[i % cases.len()].clone();
            tokio::spawn(async move {
                let outcome = login(&b, user, &format!("{user}-pw")).await;
                (user, expect, outcome)
            })
        })
        .chain((0..6).map(|_| {
            let b = b.clone();
            tokio::spawn(async move { ("exty", None, login(&b, "exty", "exty-pw").await) })
        }))
        .collect();
    for task in tasks {
        let (user, expect, outcome) = task.await.expect("task");
        match (user, expect, outcome) {
            ("exty", _, outcome) => assert_eq!(outcome, AuthOutcome::NotHandled, "exty"),
            (user, None, AuthOutcome::Authenticated(identity)) => assert_eq!(identity.user.username, user),
            (user, Some(reason), outcome) => assert_eq!(outcome, AuthOutcome::Denied(reason), "{user}"),
            (user, None, outcome) => panic!("{user}: {outcome:?}"),
        }
    }
    for user in ["alice", "conny", "cora", "pp-fresh"] {
        assert!(store.get_user(user).await.expect("store").expect("mirrored").value.is_active, "{user}");
    }
}
