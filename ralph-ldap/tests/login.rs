//! Logins against the fixture slapd: mapping, profile, flags, nesting, refusals, escaping.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use common::{Fixture, fixture, ralph_config, store};
use ralph_core::{
    AuthBackend, AuthError, AuthOutcome, Credentials, DenyReason, Group, Identity, UserSource, UserStore,
};
use ralph_ldap::{GroupType, LdapBackend, LdapConfig, NestedGroups, Scope, SearchSpec};
use ralph_store::SqliteStore;

async fn backend(config: LdapConfig) -> (LdapBackend<SqliteStore>, tempfile::TempDir) {
    let (store, dir) = store().await;
    (LdapBackend::new(config, store).expect("backend"), dir)
}

async fn login(b: &LdapBackend<SqliteStore>, user: &str, pw: &str) -> Result<AuthOutcome, AuthError> {
    b.authenticate(&Credentials::new(user, pw)).await
}

fn identity(outcome: Result<AuthOutcome, AuthError>) -> Identity {
    match outcome {
        Ok(AuthOutcome::Authenticated(identity)) => identity,
        other => panic!("expected a successful login, got {other:?}"),
    }
}

fn roles(identity: &Identity) -> Vec<&str> {
    identity.groups.iter().map(Group::as_str).collect()
}

#[tokio::test]
async fn alice_gets_mapped_roles_flags_and_profile_mirrored() {
    let Some(fx) = fixture() else { return };
    let (b, _dir) = backend(ralph_config(&fx)).await;
    let id = identity(login(&b, "alice", "alice-pw").await);
    // coffee-club is not mapped: with a mapping, unmapped groups are ignored.
    assert_eq!(roles(&id), ["active", "assets-buyer", "staff"]);
    let u = &id.user;
    assert_eq!((u.username.as_str(), u.first_name.as_str(), u.last_name.as_str()), ("alice", "Alice", "Nowak"));
    assert_eq!(u.email.as_deref(), Some("alice@ralph.test"));
    assert!(u.is_active && u.is_staff && !u.is_superuser);
    assert_eq!(u.source, UserSource::Ldap);
    let p = id.profile.clone().expect("profile mapped");
    assert_eq!(p.manager.as_deref(), Some("Smith, John"));
    assert_eq!(p.country.map(|c| c.as_str()), Some("PL"));
    assert_eq!(
        (p.company.as_deref(), p.department.as_deref(), p.employee_id.as_deref(), p.location.as_deref()),
        (Some("Allegro"), Some("IT"), Some("E-001"), Some("Poznań"))
    );
    // Mirrored into SQLite.
    let stored = b.store().get_user("alice").await.expect("store").expect("alice mirrored");
    assert_eq!(stored.value, id.user);
    assert_eq!(b.store().get_profile("alice").await.expect("store"), Some(p));
    let stored_groups = b.store().user_groups("alice").await.expect("store");
    assert_eq!(stored_groups.iter().map(Group::as_str).collect::<Vec<_>>(), ["active", "assets-buyer", "staff"]);
    assert_eq!(b.store().password_hash("alice").await.expect("store"), None);
}

#[tokio::test]
async fn superuser_invalid_country_and_hex_escaped_manager() {
    let Some(fx) = fixture() else { return };
    let (b, _dir) = backend(ralph_config(&fx)).await;
    let id = identity(login(&b, "bob", "bob-pw").await);
    assert!(id.user.is_superuser && id.user.is_active && !id.user.is_staff);
    assert_eq!(roles(&id), ["active", "superuser"]);
    let p = id.profile.expect("profile");
    assert_eq!(p.country, None, "XX is not a country");
    assert_eq!(p.manager.as_deref(), Some("Smith, John"), "cn=Smith\\2C John");
}

#[tokio::test]
async fn nested_group_gives_role_and_multivalued_rdn_manager() {
    let Some(fx) = fixture() else { return };
    let (b, _dir) = backend(ralph_config(&fx)).await;
    let id = identity(login(&b, "carol", "carol-pw").await);
    assert_eq!(roles(&id), ["active", "assets-staff"], "assets-staff only through team-assets");
    let p = id.profile.expect("profile");
    assert_eq!(p.manager.as_deref(), Some("Jan Kowalski"));
    assert_eq!(p.country, None, "'Poland' is a name, not a code");

    let mut flat = ralph_config(&fx);
    flat.nested_groups = NestedGroups::Off;
    let (b, _dir) = backend(flat).await;
    assert_eq!(roles(&identity(login(&b, "carol", "carol-pw").await)), ["active"]);
}

#[tokio::test]
async fn group_cycles_terminate() {
    let Some(fx) = fixture() else { return };
    for group_type in [GroupType::MemberOf, GroupType::GroupOfNames] {
        let mut c = ralph_config(&fx);
        c.group_mapping.clear();
        c.flags_by_group.is_active = vec![format!("cn=_gr_ralph,ou=groups,{}", fx.base)];
        c.group_type = group_type;
        c.group_search =
            Some(SearchSpec::new(format!("ou=groups,{}", fx.base), Scope::Subtree, "(objectClass=groupOfNames)"));
        let (b, _dir) = backend(c).await;
        let id = identity(login(&b, "cycler", "cycler-pw").await);
        let r = roles(&id);
        assert!(r.contains(&"cycle-a") && r.contains(&"cycle-b"), "{group_type:?}: {r:?}");
        assert_eq!(r.iter().filter(|g| **g == "cycle-a").count(), 1);
    }
}

#[tokio::test]
async fn group_of_names_search_with_nesting_matches_member_of() {
    let Some(fx) = fixture() else { return };
    let mut c = ralph_config(&fx);
    c.group_type = GroupType::GroupOfNames;
    c.group_search = Some(SearchSpec::new(&fx.base, Scope::Subtree, "(objectClass=groupOfNames)"));
    c.nested_groups = NestedGroups::Auto; // slapd is not AD: recursion
    let (b, _dir) = backend(c).await;
    assert_eq!(roles(&identity(login(&b, "carol", "carol-pw").await)), ["active", "assets-staff"]);
    assert_eq!(roles(&identity(login(&b, "alice", "alice-pw").await)), ["active", "assets-buyer", "staff"]);
}

#[tokio::test]
async fn posix_groups_by_member_uid() {
    let Some(fx) = fixture() else { return };
    let mut c = ralph_config(&fx);
    c.group_type = GroupType::Posix;
    c.group_search =
        Some(SearchSpec::new(format!("ou=posix,{}", fx.base), Scope::OneLevel, "(objectClass=posixGroup)"));
    c.group_mapping.clear();
    c.group_mapping.insert(format!("cn=ralph-posix,ou=posix,{}", fx.base), "active".into());
    c.group_mapping.insert(format!("cn=posix-staff,ou=posix,{}", fx.base), "staff".into());
    let (b, _dir) = backend(c).await;
    let alice = identity(login(&b, "alice", "alice-pw").await);
    assert!(alice.user.is_active && alice.user.is_staff);
    assert_eq!(roles(&identity(login(&b, "carol", "carol-pw").await)), ["active"]);
}

#[tokio::test]
async fn without_mapping_group_names_are_roles() {
    let Some(fx) = fixture() else { return };
    let mut c = ralph_config(&fx);
    c.group_mapping.clear();
    let (b, _dir) = backend(c).await;
    let rolf = identity(login(&b, "rolf", "rolf-pw").await);
    assert_eq!(roles(&rolf), ["active", "ralph-users", "readers", "staff"]);
    assert!(rolf.user.is_active && rolf.user.is_staff && !rolf.user.is_superuser);
}

#[tokio::test]
async fn inactive_user_is_mirrored_then_denied() {
    let Some(fx) = fixture() else { return };
    let (b, _dir) = backend(ralph_config(&fx)).await;
    assert_eq!(login(&b, "dave", "dave-pw").await.expect("decided"), AuthOutcome::Denied(DenyReason::Inactive));
    let dave = b.store().get_user("dave").await.expect("store").expect("dave mirrored although refused");
    assert!(!dave.value.is_active);
    assert_eq!(
        b.store().get_profile("dave").await.expect("store").and_then(|p| p.country).map(|c| c.as_str()),
        Some("DE")
    );
}

#[tokio::test]
async fn require_and_deny_groups_refuse() {
    let Some(fx) = fixture() else { return };
    let (b, _dir) = backend(ralph_config(&fx)).await;
    assert_eq!(
        login(&b, "mallory", "mallory-pw").await.expect("decided"),
        AuthOutcome::Denied(DenyReason::DeniedGroup)
    );
    assert_eq!(b.store().get_user("mallory").await.expect("store"), None, "denied users are not imported");

    let mut c = ralph_config(&fx);
    c.require_group = Some(format!("cn=_gr_ralph_staff,ou=groups,{}", fx.base));
    let (b, _dir) = backend(c).await;
    assert_eq!(
        login(&b, "bob", "bob-pw").await.expect("decided"),
        AuthOutcome::Denied(DenyReason::MissingRequiredGroup)
    );
    identity(login(&b, "alice", "alice-pw").await);
}

#[tokio::test]
async fn unknown_filtered_wrong_password_and_ambiguous_are_not_handled() {
    let Some(fx) = fixture() else { return };
    let (b, _dir) = backend(ralph_config(&fx)).await;
    for (user, pw, why) in [
        ("alice", "wrong", "wrong password"),
        ("alice", "ALICE-PW", "password case"),
        ("nobody", "x", "unknown user"),
        ("eve", "eve-pw", "outside the user filter"),
        ("nopass", "anything", "entry without password"),
        ("twin", "twin-pw", "two entries share the login"),
        ("jsmith", "jsmith-pw", "not in ralph-users"),
    ] {
        assert_eq!(login(&b, user, pw).await.expect(why), AuthOutcome::NotHandled, "{why}");
    }
    assert_eq!(b.store().get_user("eve").await.expect("store"), None, "user filter limits imports");
}

#[tokio::test]
async fn non_ascii_login_and_names() {
    let Some(fx) = fixture() else { return };
    let (b, _dir) = backend(ralph_config(&fx)).await;
    let id = identity(login(&b, "łukasz", "zażółć-gęślą-jaźń").await);
    assert_eq!(id.user.username, "łukasz");
    assert_eq!((id.user.first_name.as_str(), id.user.last_name.as_str()), ("Łukasz", "Gęślą-Jaźń Żółć"));
    assert_eq!(id.profile.and_then(|p| p.location).as_deref(), Some("Kraków"));
    // The directory's spelling is stored, whatever case was typed.
    let again = identity(login(&b, "ŁUKASZ", "zażółć-gęślą-jaźń").await);
    assert_eq!(again.user.username, "łukasz");
}

#[tokio::test]
async fn filter_metacharacters_in_logins_are_literal() {
    let Some(fx) = fixture() else { return };
    let (b, _dir) = backend(ralph_config(&fx)).await;
    let id = identity(login(&b, "w*ld(c)ard\\", "wildcard-pw").await);
    assert_eq!(id.user.username, "w*ld(c)ard\\");
    for hostile in ["w*", "*", "w*ld(c)ard", "*)(sAMAccountName=alice", "alice)(|(a=*", "al*", "alice\0"] {
        assert_eq!(login(&b, hostile, "wildcard-pw").await.expect("decided"), AuthOutcome::NotHandled, "{hostile:?}");
        assert_eq!(login(&b, hostile, "alice-pw").await.expect("decided"), AuthOutcome::NotHandled, "{hostile:?}");
    }
}

#[tokio::test]
async fn dn_template_mode_escapes_the_value() {
    let Some(fx) = fixture() else { return };
    let mut c = ralph_config(&fx);
    c.user_search = None;
    c.user_dn_template = Some(format!("uid=%(user)s,ou=people,{}", fx.base));
    let (b, _dir) = backend(c).await;
    identity(login(&b, "alice", "alice-pw").await);
    identity(login(&b, "w*ld(c)ard\\", "wildcard-pw").await);
    assert_eq!(login(&b, "alice,ou=people", "alice-pw").await.expect("decided"), AuthOutcome::NotHandled);
    assert_eq!(login(&b, "eve", "eve-pw").await.expect("decided"), AuthOutcome::NotHandled, "user filter applies");
}

/// A TCP listener that counts the connections made to it.
async fn counting_listener() -> (String, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let count = Arc::new(AtomicUsize::new(0));
    let c = Arc::clone(&count);
    tokio::spawn(async move {
        while let Ok((sock, _)) = listener.accept().await {
            c.fetch_add(1, Ordering::SeqCst);
            drop(sock);
        }
    });
    (format!("ldap://{addr}"), count)
}

#[tokio::test]
async fn empty_password_is_refused_before_any_bind() {
    let Some(fx) = fixture() else { return };
    // The fixture accepts unauthenticated binds, so a naive client would let this user in.
    let (conn, mut raw) = ldap3::LdapConnAsync::new(&fx.url).await.expect("connect");
    ldap3::drive!(conn);
    let naive = raw.simple_bind(&format!("uid=alice,ou=people,{}", fx.base), "").await.expect("bind");
    assert_eq!(naive.rc, 0, "fixture must accept unauthenticated binds for this test to mean anything");

    let (b, _dir) = backend(ralph_config(&fx)).await;
    assert_eq!(login(&b, "alice", "").await.expect("decided"), AuthOutcome::NotHandled);
    assert_eq!(b.store().get_user("alice").await.expect("store"), None);

    // Against a listener that counts connections: not even a connection is made.
    let (uri, count) = counting_listener().await;
    let mut c = ralph_config(&fx);
    c.server_uris = vec![uri];
    let (b, _dir) = backend(c).await;
    assert_eq!(login(&b, "alice", "").await.expect("decided"), AuthOutcome::NotHandled);
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    assert_eq!(count.load(Ordering::SeqCst), 0);
}

// serial_: the referral it adds under the base would make a concurrent sync skip deactivation.
#[tokio::test]
async fn serial_referrals_are_not_chased_and_fail_closed_for_groups() {
    let Some(fx) = fixture() else { return };
    let (target, count) = counting_listener().await;
    let mut admin = common::admin(&fx).await;
    let ou = common::unique("ref");
    let referral = format!("ou={ou},ou=groups,{}", fx.base);
    let ref_url = format!("{target}/ou=elsewhere,{}", fx.base);
    common::add(
        &mut admin,
        &referral,
        &[("objectClass", &["referral", "extensibleObject"]), ("ou", &[&ou]), ("ref", &[&ref_url])],
    )
    .await;

    // The subtree user search passes over the referral: logins work, nothing is chased.
    let (b, _dir) = backend(ralph_config(&fx)).await;
    identity(login(&b, "alice", "alice-pw").await);
    assert_eq!(login(&b, "ghost", "x").await.expect("decided"), AuthOutcome::NotHandled);

    // Groups behind a referral cannot be read: the login is refused (fail closed).
    let mut c = ralph_config(&fx);
    c.group_type = GroupType::GroupOfNames;
    c.group_search = Some(SearchSpec::new(&referral, Scope::Subtree, "(objectClass=groupOfNames)"));
    let (b2, _dir2) = backend(c).await;
    let outcome = login(&b2, "alice", "alice-pw").await;
    common::delete(&mut admin, &[&referral]).await;
    assert!(matches!(outcome, Err(AuthError::Backend(_))), "{outcome:?}");
    assert_eq!(b2.store().get_user("alice").await.expect("store"), None, "nothing mirrored on a failed group read");
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    assert_eq!(count.load(Ordering::SeqCst), 0, "a referral was chased");
}

#[tokio::test]
async fn unreadable_group_names_fail_closed() {
    let Some(fx) = fixture() else { return };
    let mut c = ralph_config(&fx);
    // Groups have no `description`, so no group can be named: refuse, never "no groups".
    c.group_name_attr = "description".into();
    let (b, _dir) = backend(c).await;
    let outcome = login(&b, "alice", "alice-pw").await;
    assert!(matches!(outcome, Err(AuthError::Backend(_))), "{outcome:?}");
    assert_eq!(b.store().get_user("alice").await.expect("store"), None);
}

#[tokio::test]
async fn group_cache_honours_ttl() {
    let Some(fx) = fixture() else { return };
    let mut admin = common::admin(&fx).await;
    let name = common::unique("cache");
    let user_dn = format!("uid={name},ou=people,{}", fx.base);
    let group_dn = format!("cn={name}-active,ou=groups,{}", fx.base);
    common::add(
        &mut admin,
        &user_dn,
        &[
            ("objectClass", &["inetOrgPerson", "ralphADUser"]),
            ("uid", &[&name]),
            ("sAMAccountName", &[&name]),
            ("cn", &["Cache Test"]),
            ("sn", &["Test"]),
            ("userPassword", &["cache-pw"]),
        ],
    )
    .await;
    // groupOfNames needs a member even after ours is removed: keep a second one.
    let other = format!("uid=bob,ou=people,{}", fx.base);
    let cn = format!("{name}-active");
    let attrs: [(&str, &[&str]); 3] =
        [("objectClass", &["groupOfNames"]), ("cn", &[&cn]), ("member", &[&user_dn, &other])];
    common::add(&mut admin, &group_dn, &attrs).await;

    let config = |ttl: u64| {
        let mut c = ralph_config(&fx);
        c.user_filter = None;
        c.group_mapping.clear();
        c.group_mapping.insert(group_dn.clone(), "active".into());
        c.cache_ttl_secs = ttl;
        c
    };
    let (cached, _d1) = backend(config(1200)).await;
    let (uncached, _d2) = backend(config(0)).await;
    identity(login(&cached, &name, "cache-pw").await);
    identity(login(&uncached, &name, "cache-pw").await);

    common::remove_value(&mut admin, &group_dn, "member", &user_dn).await;
    let from_cache = login(&cached, &name, "cache-pw").await;
    let fresh = login(&uncached, &name, "cache-pw").await;
    cached.clear_group_cache();
    let after_clear = login(&cached, &name, "cache-pw").await;
    common::delete(&mut admin, &[&group_dn, &user_dn]).await;

    identity(from_cache);
    assert_eq!(fresh.expect("decided"), AuthOutcome::Denied(DenyReason::Inactive));
    assert_eq!(after_clear.expect("decided"), AuthOutcome::Denied(DenyReason::Inactive));
}

fn fixture_for_proptest() -> Option<Fixture> {
    fixture()
}

mod hostile {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 48, .. ProptestConfig::default() })]

        /// Whatever the login name, it authenticates only as the entry whose name it is: with
        /// alice's or the wildcard user's password, only "alice" (any case) or the exact
        /// wildcard name gets in, and only as that user.
        #[test]
        fn no_hostile_username_authenticates_as_another_user(
            parts in proptest::collection::vec(
                prop_oneof![
                    Just("*".to_owned()), Just("(".to_owned()), Just(")".to_owned()), Just("\\".to_owned()),
                    Just("\0".to_owned()), Just("|".to_owned()), Just("&".to_owned()), Just("=".to_owned()),
                    Just("alice".to_owned()), Just("w".to_owned()), Just("ld".to_owned()), Just("c".to_owned()),
                    Just("ard".to_owned()), Just("sAMAccountName".to_owned()), Just(",".to_owned()), "[a-z]{1,3}",
                ],
                1..8,
            )
        ) {
            let Some(fx) = fixture_for_proptest() else { return Ok(()) };
            let username: String = parts.concat();
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
            rt.block_on(async {
                let (by_search, _d1) = backend(ralph_config(&fx)).await;
                let mut template = ralph_config(&fx);
                template.user_search = None;
                template.user_dn_template = Some(format!("uid=%(user)s,ou=people,{}", fx.base));
                let (by_dn, _d2) = backend(template).await;
                for (b, (password, owner)) in [&by_search, &by_dn]
                    .into_iter()
                    .flat_map(|b| [("alice-pw", "alice"), ("wildcard-pw", "w*ld(c)ard\\")].map(|p| (b, p)))
                {
                    let outcome = login(b, &username, password).await.expect("decided");
                    let is_owner = username.to_lowercase() == owner;
                    match outcome {
                        AuthOutcome::Authenticated(id) => {
                            assert!(is_owner, "{username:?} authenticated with {owner}'s password");
                            assert_eq!(id.user.username, owner);
                        }
                        other => assert!(!is_owner || username != owner, "{username:?}: {other:?}"),
                    }
                }
            });
        }
    }
}

#[tokio::test]
async fn auto_nesting_avoids_the_ad_rule_on_openldap() {
    let Some(fx) = fixture() else { return };
    let mut c = ralph_config(&fx);
    c.group_type = GroupType::GroupOfNames;
    c.group_search = Some(SearchSpec::new(&fx.base, Scope::Subtree, "(objectClass=groupOfNames)"));
    // Forced, the in-chain rule is unknown to slapd and silently matches nothing, so carol
    // would lose every group; `auto` sees from the root DSE that this is not AD and recurses.
    c.nested_groups = NestedGroups::MatchingRule;
    let (forced, _d1) = backend(c.clone()).await;
    assert_eq!(login(&forced, "carol", "carol-pw").await.expect("decided"), AuthOutcome::Denied(DenyReason::Inactive));
    c.nested_groups = NestedGroups::Auto;
    let (auto, _d2) = backend(c).await;
    assert_eq!(roles(&identity(login(&auto, "carol", "carol-pw").await)), ["active", "assets-staff"]);
}

#[tokio::test]
async fn missing_group_search_base_fails_closed() {
    let Some(fx) = fixture() else { return };
    // A mistyped group base: noSuchObject must refuse the login, never read as "no groups"
    // (which would let mallory past the deny group).
    let mut c = ralph_config(&fx);
    c.group_type = GroupType::GroupOfNames;
    c.group_search =
        Some(SearchSpec::new(format!("ou=no-such-groups,{}", fx.base), Scope::Subtree, "(objectClass=groupOfNames)"));
    let (b, _dir) = backend(c).await;
    for (user, pw) in [("mallory", "mallory-pw"), ("alice", "alice-pw")] {
        let outcome = login(&b, user, pw).await;
        assert!(matches!(outcome, Err(AuthError::Backend(ref m)) if m.contains("32")), "{user}: {outcome:?}");
        assert_eq!(b.store().get_user(user).await.expect("store"), None, "{user} mirrored");
    }

    // Through a chain with a local backend behind it: the login is refused with the error.
    let local = Arc::new(ralph_core::LocalBackend::new(b.store().clone()));
    let chain = ralph_core::AuthChain::new().with(Arc::new(b.clone())).with(local);
    let refused = chain.authenticate(&Credentials::new("mallory", "mallory-pw")).await;
    assert!(
        matches!(refused, Err(ralph_core::auth::LoginError::Unavailable { ref backend, .. }) if backend == "ldap"),
        "{refused:?}"
    );

    // A user search base that does not exist still means "no such user".
    let mut c = ralph_config(&fx);
    c.user_search =
        Some(SearchSpec::new(format!("ou=no-such-people,{}", fx.base), Scope::Subtree, "(sAMAccountName=%(user)s)"));
    let (b, _dir) = backend(c).await;
    assert_eq!(login(&b, "alice", "alice-pw").await.expect("decided"), AuthOutcome::NotHandled);
}

#[tokio::test]
async fn users_refused_by_group_rules_are_deactivated_in_the_store() {
    let Some(fx) = fixture() else { return };
    let (store, _dir) = store().await;
    // Before the ban: mallory is in _gr_ralph and gets mirrored active.
    let mut open = ralph_config(&fx);
    open.deny_group = None;
    let before = LdapBackend::new(open, store.clone()).expect("backend");
    assert!(identity(login(&before, "mallory", "mallory-pw").await).user.is_active);
    assert!(store.get_user("mallory").await.expect("store").expect("mirrored").value.is_active);
    assert!(!store.user_groups("mallory").await.expect("store").is_empty());

    // The deny group now refuses her: the stored record goes inactive, roles dropped.
    let banned = LdapBackend::new(ralph_config(&fx), store.clone()).expect("backend");
    assert_eq!(
        login(&banned, "mallory", "mallory-pw").await.expect("decided"),
        AuthOutcome::Denied(DenyReason::DeniedGroup)
    );
    let stored = store.get_user("mallory").await.expect("store").expect("kept");
    assert!(!stored.value.is_active && !stored.value.is_staff && !stored.value.is_superuser, "{stored:?}");
    assert_eq!(stored.value.source, UserSource::Ldap);
    assert!(store.user_groups("mallory").await.expect("store").is_empty());

    // Same for a missing require group (alice is active and staff before).
    identity(login(&before, "alice", "alice-pw").await);
    let mut strict = ralph_config(&fx);
    strict.require_group = Some(format!("cn=_gr_ralph_admin,ou=groups,{}", fx.base));
    let strict = LdapBackend::new(strict, store.clone()).expect("backend");
    assert_eq!(
        login(&strict, "alice", "alice-pw").await.expect("decided"),
        AuthOutcome::Denied(DenyReason::MissingRequiredGroup)
    );
    let alice = store.get_user("alice").await.expect("store").expect("kept");
    assert!(!alice.value.is_active && !alice.value.is_staff, "{alice:?}");

    // A local account of the same name is never touched by a refusal.
    store.create_user(&ralph_core::User::new("dave").expect("valid")).await.expect("local dave");
    assert_eq!(
        login(&strict, "dave", "dave-pw").await.expect("decided"),
        AuthOutcome::Denied(DenyReason::MissingRequiredGroup)
    );
    let dave = store.get_user("dave").await.expect("store").expect("kept");
    assert!(dave.value.is_active && dave.value.source == UserSource::Local, "{dave:?}");
}

#[tokio::test]
async fn ldap_login_over_a_local_account_is_an_error_and_the_chain_goes_on() {
    let Some(fx) = fixture() else { return };
    let (store, _dir) = store().await;
    // A local "alice" with her own password: the directory's alice must not take it over.
    store.create_user(&ralph_core::User::new("alice").expect("valid")).await.expect("local alice");
    let b = LdapBackend::new(ralph_config(&fx), store.clone()).expect("backend");
    let outcome = login(&b, "alice", "alice-pw").await;
    assert!(matches!(outcome, Err(AuthError::Store(ref e)) if e.is_conflict()), "{outcome:?}");
    let kept = store.get_user("alice").await.expect("store").expect("kept");
    assert_eq!(kept.value.source, UserSource::Local);
}
