//! Several directories in one chain (`realm`), and mirroring only part of a user's groups
//! (`mirror_groups` as a list, `mirror_groups_except`), against real slapd instances: the
//! fixture (`RALPH_TEST_LDAP_*`) and a second one (`RALPH_TEST_LDAP2_*`, scripts/services/slapd2).

mod common;

use std::collections::HashSet;
use std::sync::Arc;

use common::{fixture, fixture2, ralph_config, ralph_toml, store, unique};
use ralph_core::auth::LoginError;
use ralph_core::store::UserMirror;
use ralph_core::{AuthChain, Credentials, DenyReason, Group, LocalBackend, User, UserSource, UserStore};
use ralph_ldap::{LdapBackend, LdapConfig, MirrorGroups, OWNED_BY_ANOTHER_DIRECTORY, SyncOptions};

fn groups(names: &[&str]) -> Vec<Group> {
    names.iter().map(|n| Group::new(n).expect("valid group")).collect()
}

async fn group_names<S: UserStore>(store: &S, username: &str) -> Vec<String> {
    store.user_groups(username).await.expect("store").iter().map(|g| g.as_str().to_owned()).collect()
}

#[tokio::test]
async fn roles_given_by_hand_survive_a_login_outside_the_mirror_scope() {
    let Some(fx) = fixture() else { return };
    let login = Credentials::new("carol", "carol-pw");

    // Without a scope (Ralph's MIRROR_GROUPS = True), a login makes the user's group list the
    // mapped roles: a role given by hand is wiped. This is what the scope settings fix.
    let all = LdapBackend::new(ralph_config(&fx), store()).expect("backend");
    ralph_core::AuthBackend::authenticate(&all, &login).await.expect("first login");
    let by_hand = groups(&["active", "assets-buyer", "assets-staff", "auditor"]);
    all.store().set_user_groups("carol", &by_hand).await.expect("by hand");
    ralph_core::AuthBackend::authenticate(&all, &login).await.expect("login");
    assert_eq!(group_names(all.store(), "carol").await, ["active", "assets-staff"], "whole list replaced");

    // MIRROR_GROUPS_EXCEPT: assets-buyer and auditor are the inventory's, never the mirror's.
    let toml = format!("mirror_groups_except = [\"assets-buyer\", \"auditor\"]\n{}", ralph_toml(&fx));
    let except = LdapBackend::new(LdapConfig::from_toml_str(&toml).expect("valid"), store()).expect("backend");
    ralph_core::AuthBackend::authenticate(&except, &login).await.expect("first login");
    except.store().set_user_groups("carol", &by_hand).await.expect("by hand");
    let outcome = ralph_core::AuthBackend::authenticate(&except, &login).await.expect("login");
    assert!(matches!(outcome, ralph_core::AuthOutcome::Authenticated(_)), "{outcome:?}");
    assert_eq!(group_names(except.store(), "carol").await, ["active", "assets-buyer", "assets-staff", "auditor"]);
    // ...and alice, in the directory's assets-buyer group, is not given it by the mirror.
    ralph_core::AuthBackend::authenticate(&except, &Credentials::new("alice", "alice-pw")).await.expect("alice");
    assert_eq!(group_names(except.store(), "alice").await, ["active", "staff"]);

    // MIRROR_GROUPS as a list: only active and assets-staff are the mirror's; a role the
    // directory stops giving (assets-staff taken away by hand here stands for that) comes back,
    // the others stay.
    let toml = ralph_toml(&fx).replace("mirror_groups = true", "mirror_groups = [\"active\", \"assets-staff\"]");
    let only = LdapConfig::from_toml_str(&toml).expect("valid");
    assert_eq!(only.mirror_groups, MirrorGroups::only(["active", "assets-staff"]));
    let only = LdapBackend::new(only, store()).expect("backend");
    ralph_core::AuthBackend::authenticate(&only, &login).await.expect("first login");
    only.store().set_user_groups("carol", &groups(&["active", "assets-buyer", "auditor"])).await.expect("by hand");
    ralph_core::AuthBackend::authenticate(&only, &login).await.expect("login");
    assert_eq!(group_names(only.store(), "carol").await, ["active", "assets-buyer", "assets-staff", "auditor"]);

    // The sync keeps them too, and a user refused by the group rules loses only mirrored roles.
    let mut config = LdapConfig::from_toml_str(&format!(
        "mirror_groups_except = [\"assets-buyer\", \"auditor\"]\n{}",
        ralph_toml(&fx)
    ))
    .expect("valid");
    config.user_filter = Some(format!("(&(|(uid=carol)(uid=mallory))(memberOf=cn=ralph-users,ou=groups,{}))", fx.base));
    let synced = LdapBackend::new(config, store()).expect("backend");
    let mut mallory = User::new("mallory").expect("valid");
    mallory.source = UserSource::Ldap;
    mallory.is_active = true;
    let mirror = UserMirror { groups: Some(groups(&["active", "auditor"])), ..UserMirror::new(mallory) };
    synced.store().mirror_user(&mirror).await.expect("mallory");
    // mallory is the only active user before: deactivating her is over the limit unless forced.
    let first = synced.sync_with(SyncOptions::new().force_deactivation(true)).await.expect("first sync");
    assert_eq!(first.deactivated, 1, "{first:?}");
    synced.store().set_user_groups("carol", &by_hand).await.expect("by hand");
    let report = synced.sync().await.expect("sync");
    assert_eq!(report.deactivated, 0, "{report:?}");
    assert_eq!(group_names(synced.store(), "carol").await, ["active", "assets-buyer", "assets-staff", "auditor"]);
    let mallory = synced.store().get_user("mallory").await.expect("store").expect("kept");
    assert!(!mallory.value.is_active, "denied by the deny group: {mallory:?}");
    assert_eq!(group_names(synced.store(), "mallory").await, ["auditor"], "only mirrored roles removed");
}

#[test]
fn mirror_scope_settings_are_checked() {
    let base = "server_uris = [\"ldaps://h\"]\n[user_search]\nbase = \"dc=x\"\nfilter = \"(uid=%(user)s)\"\n";
    for (top, expect) in [
        ("mirror_groups = [\"active\"]\nmirror_groups_except = [\"auditor\"]", "mirror_groups_except"),
        ("mirror_groups = false\nmirror_groups_except = [\"auditor\"]", "mirror_groups_except"),
        ("mirror_groups = [\"  \"]", "mirror_groups role"),
        ("realm = \"corp example\"", "realm"),
        ("realm = \"a@b\"", "realm"),
        ("realm_aliases = [\"CORP\"]", "realm_aliases needs realm"),
    ] {
        let err = LdapConfig::from_toml_str(&format!("{top}\n{base}")).expect_err(top);
        assert!(err.to_string().contains(expect), "{top}: {err}");
    }
    let c = LdapConfig::from_toml_str(&format!("mirror_groups = false\n{base}")).expect("bool");
    assert_eq!(c.group_scope(), None);
    let c = LdapConfig::from_toml_str(&format!("mirror_groups_except = [\"auditor\"]\n{base}")).expect("except");
    assert_eq!(c.group_scope(), Some(ralph_core::GroupScope::Except(["auditor".to_owned()].into())));
    let built = LdapConfig::builder(["ldaps://h"])
        .user_search("dc=x", ralph_ldap::Scope::Subtree, "(uid=%(user)s)")
        .mirror_groups(MirrorGroups::only(["active"]))
        .realm("corp.example")
        .realm_aliases(["CORP"])
        .build()
        .expect("valid");
    assert_eq!(built.group_scope(), Some(ralph_core::GroupScope::Only(["active".to_owned()].into())));
    assert!(built.is_realm("corp") && built.is_realm("Corp.Example") && !built.is_realm("lab"));
}

/// Adds a user to a fixture directory, in ralph-users and _gr_ralph (so active), with `password`.
async fn add_active_user(fx: &common::Fixture, uid: &str, password: &str) {
    let mut ldap = common::admin(fx).await;
    let dn = format!("uid={uid},ou=people,{}", fx.base);
    common::add(
        &mut ldap,
        &dn,
        &[
            ("objectClass", &["inetOrgPerson", "ralphADUser"]),
            ("uid", &[uid]),
            ("sAMAccountName", &[uid]),
            ("cn", &[uid]),
            ("sn", &["Lab"]),
            ("userPassword", &[password]),
        ],
    )
    .await;
    for group in ["ralph-users", "_gr_ralph"] {
        let group = format!("cn={group},ou=groups,{}", fx.base);
        let add = vec![ldap3::Mod::Add("member", HashSet::from([dn.as_str()]))];
        ldap.modify(&group, add).await.expect("modify").success().expect("member added");
    }
}

fn corp_config(fx: &common::Fixture) -> LdapConfig {
    let toml = format!("realm = \"corp.example\"\nrealm_aliases = [\"CORP\"]\n{}", ralph_toml(fx));
    LdapConfig::from_toml_str(&toml).expect("corp config")
}

/// lab as a host app would load it: Ralph's settings plus a realm, a boolean require group
/// and a mirror exception list, from TOML.
fn lab_config(fx: &common::Fixture) -> LdapConfig {
    let b = &fx.base;
    let toml = format!(
        "realm = \"lab\"\nmirror_groups_except = [\"auditor\"]\n\
         require_group = {{ any = [\"cn=_gr_ralph_admin,ou=groups,{b}\", {{ all = [\"cn=ralph-users,ou=groups,{b}\", \
         {{ not = \"cn=team-assets,ou=groups,{b}\" }}] }}] }}\n{}",
        ralph_toml(fx)
    );
    LdapConfig::from_toml_str(&toml).expect("lab config")
}

fn ldap_user(username: &str, directory: &str) -> UserMirror {
    let mut user = User::new(username).expect("valid");
    user.source = UserSource::Ldap;
    user.is_active = true;
    user.directory = Some(directory.to_owned());
    UserMirror::new(user)
}

// serial_: adds users to both directories' ralph-users, which other sync tests count.
#[tokio::test]
async fn serial_logins_go_to_their_realm_and_never_merge_two_directories_users() {
    let Some(fx1) = fixture() else { return };
    let Some(fx2) = fixture2() else { return };
    let store = store();
    let corp = LdapBackend::new(corp_config(&fx1), store.clone()).expect("corp");
    let lab = LdapBackend::new(lab_config(&fx2), store.clone()).expect("lab");
    let chain = AuthChain::new()
        .with(Arc::new(corp.clone()))
        .with(Arc::new(lab.clone()))
        .with(Arc::new(LocalBackend::new(store.clone())));
    assert_eq!(chain.backend_names(), ["ldap:corp.example", "ldap:lab", "local"]);

    // A bare name tries the directories in order: alice is corp's (the first).
    let login = chain.authenticate(&Credentials::new("alice", "alice-pw")).await.expect("alice");
    assert_eq!(login.backend, "ldap:corp.example");
    assert_eq!(login.identity.user.directory.as_deref(), Some("corp.example"));
    let stored = store.get_user("alice").await.expect("store").expect("mirrored");
    assert_eq!(stored.value.directory.as_deref(), Some("corp.example"));

    // lab's alice is another person: refused with a typed reason, never merged into corp's.
    for typed in ["LAB\\alice", "alice@lab", "alice@LAB"] {
        match chain.authenticate(&Credentials::new(typed, "alice-pw")).await {
            Err(LoginError::Denied { backend, reason: DenyReason::Policy(text) }) => {
                assert_eq!(backend, "ldap:lab", "{typed}");
                assert_eq!(text, OWNED_BY_ANOTHER_DIRECTORY);
            }
            other => panic!("{typed}: {other:?}"),
        }
    }
    assert_eq!(store.get_user("alice").await.expect("store").expect("kept"), stored, "corp's alice changed");

    // Qualified names go to their directory only, whatever the case or the alias.
    for typed in ["CORP\\alice", "corp.example\\alice", "alice@Corp.Example"] {
        let login = chain.authenticate(&Credentials::new(typed, "alice-pw")).await.expect(typed);
        assert_eq!(login.backend, "ldap:corp.example", "{typed}");
        assert_eq!(login.identity.user.username, "alice");
    }
    let only_lab = unique("labonly");
    add_active_user(&fx2, &only_lab, "lab-pw").await;
    let in_corp = format!("CORP\\{only_lab}");
    let refused = chain.authenticate(&Credentials::new(&in_corp, "lab-pw")).await;
    assert!(matches!(refused, Err(LoginError::InvalidCredentials)), "asked the wrong directory: {refused:?}");
    for typed in [only_lab.clone(), format!("lab\\{only_lab}"), format!("{only_lab}@lab")] {
        let login = chain.authenticate(&Credentials::new(&typed, "lab-pw")).await.expect(&typed);
        assert_eq!(login.backend, "ldap:lab", "{typed}");
        assert_eq!(login.identity.user.directory.as_deref(), Some("lab"));
    }
    // lab's require group is a query: ralph-users but not team-assets (contractors, say), or an admin.
    let carol_lab = unique("carol");
    add_active_user(&fx2, &carol_lab, "lab-pw").await;
    let mut ldap = common::admin(&fx2).await;
    let contractors = format!("cn=team-assets,ou=groups,{}", fx2.base);
    let member = format!("uid={carol_lab},ou=people,{}", fx2.base);
    let add = vec![ldap3::Mod::Add("member", HashSet::from([member.as_str()]))];
    ldap.modify(&contractors, add).await.expect("modify").success().expect("team-assets member");
    match chain.authenticate(&Credentials::new(format!("LAB\\{carol_lab}"), "lab-pw")).await {
        Err(LoginError::Denied { backend, reason: DenyReason::MissingRequiredGroup }) => {
            assert_eq!(backend, "ldap:lab");
        }
        other => panic!("require group query not applied: {other:?}"),
    }
    // A role given by hand in the inventory survives lab's logins (mirror_groups_except).
    let mut by_hand = store.user_groups(&only_lab).await.expect("store");
    by_hand.push(Group::new("auditor").expect("valid"));
    store.set_user_groups(&only_lab, &by_hand).await.expect("by hand");
    chain.authenticate(&Credentials::new(format!("{only_lab}@LAB"), "lab-pw")).await.expect("again");
    assert!(group_names(&store, &only_lab).await.contains(&"auditor".to_owned()), "hand role wiped");

    // An unknown realm is nobody's: no directory is asked, and the local backend fails too.
    let nobody = chain.authenticate(&Credentials::new("alice@elsewhere.example", "alice-pw")).await;
    assert!(matches!(nobody, Err(LoginError::InvalidCredentials)), "{nobody:?}");

    // bob logs in to lab first: corp's bob (same name, same password) is then refused.
    let login = chain.authenticate(&Credentials::new("bob@lab", "bob-pw")).await.expect("lab bob");
    assert_eq!(login.backend, "ldap:lab");
    match chain.authenticate(&Credentials::new("bob", "bob-pw")).await {
        Err(LoginError::Denied { backend, reason: DenyReason::Policy(text) }) => {
            assert_eq!((backend.as_str(), text.as_str()), ("ldap:corp.example", OWNED_BY_ANOTHER_DIRECTORY));
        }
        other => panic!("corp's bob merged into lab's: {other:?}"),
    }
    // populate_user takes qualified names the same way.
    assert!(matches!(lab.populate_user("corp\\carol").await.expect("populate"), ralph_ldap::Populated::NotFound));

    // The sync of one directory deactivates only its own users: corp's users are not "missing"
    // from lab's listing, and lab's alice is skipped, not merged.
    store.mirror_user(&ldap_user("corp-ghost", "corp.example")).await.expect("corp ghost");
    store.mirror_user(&ldap_user("lab-ghost", "lab")).await.expect("lab ghost");
    let report = lab.sync().await.expect("lab sync");
    assert_eq!(report.missing, 1, "{report:?}");
    assert_eq!(report.deactivated, 1, "lab-ghost only: {report:?}");
    assert!(store.get_user("corp-ghost").await.expect("store").expect("kept").value.is_active, "{report:?}");
    assert!(!store.get_user("lab-ghost").await.expect("store").expect("kept").value.is_active);
    assert_eq!(store.get_user("alice").await.expect("store").expect("kept"), stored, "lab's sync took alice over");
    assert_eq!(store.get_user(&only_lab).await.expect("store").expect("kept").value.directory.as_deref(), Some("lab"));
    assert!(group_names(&store, &only_lab).await.contains(&"auditor".to_owned()), "hand role wiped by the sync");
}
