//! Logins against the fixture slapd: mapping, profile, flags, nesting, refusals, escaping.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use common::{Fixture, fixture, ralph_config, store};
use ralph_core::testing::MemoryStore;
use ralph_core::{
    AuthBackend, AuthError, AuthOutcome, Credentials, DenyReason, Group, Identity, UserSource, UserStore,
};
use ralph_ldap::{GroupType, LdapBackend, LdapConfig, NestedGroups, Scope, SearchSpec};

fn backend(config: LdapConfig) -> LdapBackend<MemoryStore> {
    LdapBackend::new(config, store()).expect("backend")
}

async fn login(b: &LdapBackend<MemoryStore>, user: &str, pw: &str) -> Result<AuthOutcome, AuthError> {
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
    let b = backend(ralph_config(&fx));
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
    // Mirrored into the store.
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
    let b = backend(ralph_config(&fx));
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
    let b = backend(ralph_config(&fx));
    let id = identity(login(&b, "carol", "carol-pw").await);
    assert_eq!(roles(&id), ["active", "assets-staff"], "assets-staff only through team-assets");
    let p = id.profile.expect("profile");
    assert_eq!(p.manager.as_deref(), Some("Jan Kowalski"));
    assert_eq!(p.country, None, "'Poland' is a name, not a code");

    let mut flat = ralph_config(&fx);
    flat.nested_groups = NestedGroups::Off;
    let b = backend(flat);
    assert_eq!(roles(&identity(login(&b, "carol", "carol-pw").await)), ["active"]);
}

#[tokio::test]
async fn group_cycles_terminate() {
    let Some(fx) = fixture() else { return };
    for group_type in [GroupType::MemberOf, GroupType::GroupOfNames] {
        let mut c = ralph_config(&fx);
        c.group_mapping.clear();
        c.flags_by_group.is_active = Some(format!("cn=_gr_ralph,ou=groups,{}", fx.base).into());
        c.group_type = group_type;
        c.group_search = Some(
            SearchSpec::new(format!("ou=groups,{}", fx.base), Scope::Subtree, "(objectClass=groupOfNames)").into(),
        );
        let b = backend(c);
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
    c.group_search = Some(SearchSpec::new(&fx.base, Scope::Subtree, "(objectClass=groupOfNames)").into());
    c.nested_groups = NestedGroups::Auto; // slapd is not AD: recursion
    let b = backend(c);
    assert_eq!(roles(&identity(login(&b, "carol", "carol-pw").await)), ["active", "assets-staff"]);
    assert_eq!(roles(&identity(login(&b, "alice", "alice-pw").await)), ["active", "assets-buyer", "staff"]);
}

#[tokio::test]
async fn posix_groups_by_member_uid() {
    let Some(fx) = fixture() else { return };
    let mut c = ralph_config(&fx);
    c.group_type = GroupType::Posix;
    c.group_search =
        Some(SearchSpec::new(format!("ou=posix,{}", fx.base), Scope::OneLevel, "(objectClass=posixGroup)").into());
    c.group_mapping.clear();
    c.group_mapping.insert(format!("cn=ralph-posix,ou=posix,{}", fx.base), "active".into());
    c.group_mapping.insert(format!("cn=posix-staff,ou=posix,{}", fx.base), "staff".into());
    let b = backend(c);
    let alice = identity(login(&b, "alice", "alice-pw").await);
    assert!(alice.user.is_active && alice.user.is_staff);
    assert_eq!(roles(&identity(login(&b, "carol", "carol-pw").await)), ["active"]);
}

#[tokio::test]
async fn without_mapping_group_names_are_roles() {
    let Some(fx) = fixture() else { return };
    let mut c = ralph_config(&fx);
    c.group_mapping.clear();
    let b = backend(c);
    let rolf = identity(login(&b, "rolf", "rolf-pw").await);
    assert_eq!(roles(&rolf), ["active", "ralph-users", "readers", "staff"]);
    assert!(rolf.user.is_active && rolf.user.is_staff && !rolf.user.is_superuser);
}

#[tokio::test]
async fn inactive_user_is_mirrored_then_denied() {
    let Some(fx) = fixture() else { return };
    let b = backend(ralph_config(&fx));
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
    let b = backend(ralph_config(&fx));
    assert_eq!(
        login(&b, "mallory", "mallory-pw").await.expect("decided"),
        AuthOutcome::Denied(DenyReason::DeniedGroup)
    );
    assert_eq!(b.store().get_user("mallory").await.expect("store"), None, "denied users are not imported");

    let mut c = ralph_config(&fx);
    c.require_group = Some(format!("cn=_gr_ralph_staff,ou=groups,{}", fx.base).into());
    let b = backend(c);
    assert_eq!(
        login(&b, "bob", "bob-pw").await.expect("decided"),
        AuthOutcome::Denied(DenyReason::MissingRequiredGroup)
    );
    identity(login(&b, "alice", "alice-pw").await);
}

#[tokio::test]
async fn unknown_filtered_wrong_password_and_ambiguous_are_not_handled() {
    let Some(fx) = fixture() else { return };
    let b = backend(ralph_config(&fx));
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
    let b = backend(ralph_config(&fx));
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
    let b = backend(ralph_config(&fx));
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
    let b = backend(c);
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

    let b = backend(ralph_config(&fx));
    assert_eq!(login(&b, "alice", "").await.expect("decided"), AuthOutcome::NotHandled);
    assert_eq!(b.store().get_user("alice").await.expect("store"), None);

    // Against a listener that counts connections: not even a connection is made.
    let (uri, count) = counting_listener().await;
    let mut c = ralph_config(&fx);
    c.server_uris = vec![uri];
    let b = backend(c);
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
    let b = backend(ralph_config(&fx));
    identity(login(&b, "alice", "alice-pw").await);
    assert_eq!(login(&b, "ghost", "x").await.expect("decided"), AuthOutcome::NotHandled);

    // Groups behind a referral cannot be read: the login is refused (fail closed).
    let mut c = ralph_config(&fx);
    c.group_type = GroupType::GroupOfNames;
    c.group_search = Some(SearchSpec::new(&referral, Scope::Subtree, "(objectClass=groupOfNames)").into());
    let b2 = backend(c);
    let outcome = login(&b2, "alice", "alice-pw").await;
    common::delete(&mut admin, &[&referral]).await;
    assert!(matches!(outcome, Err(AuthError::Backend(_))), "{outcome:?}");
    assert_eq!(b2.store().get_user("alice").await.expect("store"), None, "nothing mirrored on a failed group read");
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    assert_eq!(count.load(Ordering::SeqCst), 0, "a referral was chased");
}

#[tokio::test]
async fn unreadable_group_names_fail_closed_when_names_are_roles() {
    let Some(fx) = fixture() else { return };
    // Groups have no `description`, so no group can be named. With a mapping, names are not
    // needed (every rule goes by DN): the login works.
    let mut c = ralph_config(&fx);
    c.group_name_attr = "description".into();
    let b = backend(c.clone());
    assert_eq!(roles(&identity(login(&b, "alice", "alice-pw").await)), ["active", "assets-buyer", "staff"]);
    // Without one, names are the roles: refuse, never "no roles".
    c.group_mapping.clear();
    let b = backend(c);
    let outcome = login(&b, "alice", "alice-pw").await;
    assert!(matches!(outcome, Err(AuthError::Backend(_))), "{outcome:?}");
    assert_eq!(b.store().get_user("alice").await.expect("store"), None);
}

/// Extra attributes of an entry: (name, values).
type Attrs<'a> = &'a [(&'a str, &'a [&'a str])];

/// A user of its own (not in the fixture's user filter) with groups of its own, removed at the
/// end whatever happens: `groups` are (DN, extra attributes) and get the user as member.
struct Scratch {
    fx: Fixture,
    name: String,
    user_dn: String,
    dns: Vec<String>,
}

impl Scratch {
    async fn new(fx: &Fixture, prefix: &str, password: &str, groups: &[(&str, Attrs<'_>)]) -> Self {
        let mut admin = common::admin(fx).await;
        let name = common::unique(prefix);
        let user_dn = format!("uid={name},ou=people,{}", fx.base);
        let mut scratch = Self { fx: fx.clone(), name: name.clone(), user_dn: user_dn.clone(), dns: Vec::new() };
        let attrs: [(&str, &[&str]); 6] = [
            ("objectClass", &["inetOrgPerson", "ralphADUser"]),
            ("uid", &[&name]),
            ("sAMAccountName", &[&name]),
            ("cn", &["Scratch User"]),
            ("sn", &["User"]),
            ("userPassword", &[password]),
        ];
        common::add(&mut admin, &user_dn, &attrs).await;
        scratch.dns.push(user_dn.clone());
        for (group_dn, extra) in groups {
            let cn = [group_dn.split([',', '=']).nth(1).unwrap_or_default()];
            let member = [user_dn.as_str()];
            let mut attrs: Vec<(&str, &[&str])> =
                vec![("objectClass", &["groupOfNames"]), ("cn", &cn), ("member", &member)];
            attrs.extend_from_slice(extra);
            common::add(&mut admin, group_dn, &attrs).await;
            scratch.dns.insert(0, (*group_dn).to_owned());
        }
        scratch
    }

    fn config(&self) -> LdapConfig {
        let mut c = ralph_config(&self.fx);
        c.user_filter = None;
        c.group_mapping.clear();
        c.deny_group = None;
        c
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let (fx, dns) = (self.fx.clone(), std::mem::take(&mut self.dns));
        // Drop cannot await: clean up on a thread of its own with its own runtime.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
            rt.block_on(async {
                let mut admin = common::admin(&fx).await;
                let dns: Vec<&str> = dns.iter().map(String::as_str).collect();
                common::delete(&mut admin, &dns).await;
            });
        })
        .join();
    }
}

/// The group-search configurations of the deny tests: group_of_names over `ou=groups`, with
/// and without nesting; and member_of.
fn group_types(mut c: LdapConfig, base: &str) -> Vec<(&'static str, LdapConfig)> {
    c.group_search =
        Some(SearchSpec::new(format!("ou=groups,{base}"), Scope::Subtree, "(objectClass=groupOfNames)").into());
    let mut out = Vec::new();
    for (what, group_type, nested) in [
        ("group_of_names", GroupType::GroupOfNames, NestedGroups::Off),
        ("group_of_names, recursive", GroupType::GroupOfNames, NestedGroups::Recursive),
        ("member_of, recursive", GroupType::MemberOf, NestedGroups::Recursive),
    ] {
        let mut c = c.clone();
        c.group_type = group_type;
        c.nested_groups = nested;
        out.push((what, c));
    }
    out
}

#[tokio::test]
async fn a_deny_group_without_a_readable_name_still_denies() {
    let Some(fx) = fixture() else { return };
    // Groups are named by `description` here; the deny group has none, so it cannot be named
    // (as when an ACL hides its name). Denying goes by DN: it must deny all the same.
    let tag = common::unique("nameless");
    let active = format!("cn={tag}-active,ou=groups,{}", fx.base);
    let banned = format!("cn={tag}-banned,ou=groups,{}", fx.base);
    let user =
        Scratch::new(&fx, "nameless", "nameless-pw", &[(&active, &[("description", &["active"])]), (&banned, &[])])
            .await;
    let mut base = user.config();
    base.group_name_attr = "description".into();
    base.deny_group = Some(banned.clone().into());

    let mut mapped = base.clone();
    mapped.group_mapping.insert(active.clone(), "active".into());
    // Without a mapping, names are roles (`active` from the description), and flags by DN.
    let mut by_name = base.clone();
    by_name.flags_by_group.is_active = Some(active.clone().into());
    for (rules, config) in [("mapping", mapped), ("names", by_name)] {
        for (what, c) in group_types(config, &fx.base) {
            let mut open = c.clone();
            open.deny_group = None;
            let b = backend(open);
            let outcome = login(&b, &user.name, "nameless-pw").await;
            if rules == "mapping" {
                // Names are not needed: the unnamed group is no obstacle.
                assert!(identity(outcome).user.is_active, "{rules}, {what}: not let in");
            } else {
                // Names are roles, and one cannot be read: refused (fail closed).
                assert!(matches!(outcome, Err(AuthError::Backend(_))), "{rules}, {what}: {outcome:?}");
            }
            let b = backend(c);
            let outcome = login(&b, &user.name, "nameless-pw").await;
            assert_eq!(outcome.ok(), Some(AuthOutcome::Denied(DenyReason::DeniedGroup)), "{rules}, {what}");
        }
    }
}

#[tokio::test]
async fn a_deny_group_hidden_by_an_acl_still_denies() {
    let Some(_) = fixture() else { return };
    // A slapd made by the current scripts, whose ACL hides `cn` under ou=hidden,ou=groups
    // from everyone but the rootdn (the shared one may predate that ACL).
    let slapd = common::PrivateSlapd::start();
    let fx = slapd.fixture();
    let hidden = format!("ou=hidden,ou=groups,{}", fx.base);
    let active = format!("cn=scratch-active,ou=groups,{}", fx.base);
    let banned = format!("cn=scratch-banned,{hidden}");
    let team = format!("cn=scratch-team,{hidden}");
    let denied = Scratch::new(&fx, "hidden", "hidden-pw", &[(&active, &[]), (&banned, &[])]).await;
    let allowed = Scratch::new(&fx, "team", "team-pw", &[(&team, &[])]).await;
    let mut admin = common::admin(&fx).await;
    let m = vec![ldap3::Mod::Add("member", std::collections::HashSet::from([allowed.user_dn.as_str()]))];
    admin.modify(&active, m).await.expect("modify").success().expect("add to active");

    // The ACL is in force: the service account finds the group, but not its name.
    let (conn, mut service) = ldap3::LdapConnAsync::new(&fx.url).await.expect("connect");
    ldap3::drive!(conn);
    service.simple_bind(&fx.bind_dn, &fx.bind_password).await.expect("bind").success().expect("service bind");
    let (found, _) = service
        .search(&hidden, ldap3::Scope::Subtree, "(objectClass=groupOfNames)", vec!["cn", "member"])
        .await
        .expect("search")
        .success()
        .expect("search ok");
    assert_eq!(found.len(), 2, "hidden groups not found");
    for entry in found {
        let entry = ldap3::SearchEntry::construct(entry);
        assert!(!entry.attrs.contains_key("cn") && entry.attrs.contains_key("member"), "ACL not in force: {entry:?}");
    }

    let mut base = denied.config();
    base.deny_group = Some(banned.clone().into());
    let mut mapped = base.clone();
    mapped.group_mapping.insert(active.clone(), "active".into());
    let mut by_name = base.clone();
    by_name.flags_by_group.is_active = Some(active.clone().into());
    for (rules, config) in [("mapping", mapped), ("names", by_name)] {
        for (what, c) in group_types(config, &fx.base) {
            let b = backend(c);
            let outcome = login(&b, &denied.name, "hidden-pw").await;
            assert_eq!(outcome.ok(), Some(AuthOutcome::Denied(DenyReason::DeniedGroup)), "{rules}, {what}");
            // A hidden group that denies nothing does not get in the way; its RDN names it.
            let id = identity(login(&b, &allowed.name, "team-pw").await);
            if rules == "names" {
                assert!(roles(&id).contains(&"scratch-team"), "{what}: {:?}", roles(&id));
            }
        }
    }
    drop((denied, allowed));
}

#[tokio::test]
async fn every_spelling_of_a_login_is_one_stored_user() {
    let Some(fx) = fixture() else { return };
    // No username_attr: the stored name must still be the directory's spelling, taken from
    // the attribute the filter (or the DN template's RDN) compares the login with.
    let mut by_search = ralph_config(&fx);
    by_search.username_attr = None;
    let mut by_dn = by_search.clone();
    by_dn.user_search = None;
    by_dn.user_dn_template = Some(format!("uid=%(user)s,ou=people,{}", fx.base));
    for (what, c) in [("search", by_search), ("DN template", by_dn)] {
        let b = backend(c);
        for typed in ["ALICE", "Alice", "alice", "aLiCe"] {
            assert_eq!(identity(login(&b, typed, "alice-pw").await).user.username, "alice", "{what}: {typed}");
        }
        let id = identity(login(&b, "ŁUKASZ", "zażółć-gęślą-jaźń").await);
        assert_eq!(id.user.username, "łukasz", "{what}");
        let users = b.store().list_users(Some(UserSource::Ldap)).await.expect("store");
        let names: Vec<&str> = users.iter().map(|u| u.value.username.as_str()).collect();
        assert_eq!(names, ["alice", "łukasz"], "{what}");
    }
}

#[tokio::test]
async fn a_filter_comparing_several_attributes_logs_in_through_each() {
    let Some(fx) = fixture() else { return };
    // No username_attr and a filter that admits the mail or the uid: neither attribute alone
    // names the user, so the username is the RDN value, whichever one was typed.
    let mut c = ralph_config(&fx);
    c.username_attr = None;
    c.user_search = Some(
        ralph_ldap::SearchSpec::new(fx.base.clone(), ralph_ldap::Scope::Subtree, "(|(mail=%(user)s)(uid=%(user)s))")
            .into(),
    );
    let b = backend(c);
    for typed in ["alice", "ALICE", "alice@ralph.test", "Alice@Ralph.Test"] {
        assert_eq!(identity(login(&b, typed, "alice-pw").await).user.username, "alice", "{typed}");
    }
    assert_eq!(login(&b, "alice", "bob-pw").await.ok(), Some(AuthOutcome::NotHandled), "a wrong password");
    let users = b.store().list_users(Some(UserSource::Ldap)).await.expect("store");
    assert_eq!(users.iter().map(|u| u.value.username.as_str()).collect::<Vec<_>>(), ["alice"]);
}

#[tokio::test]
async fn placeholder_text_in_a_login_is_literal() {
    let Some(fx) = fixture() else { return };
    // `x{user}y` must look up exactly that name, never `xx{user}yy` (the value expanded
    // again): here both exist, with different passwords.
    let tag = common::unique("ph").replace('-', "");
    let typed = format!("{tag}{{user}}z");
    let expanded = format!("{tag}{tag}{{user}}zz");
    let mut admin = common::admin(&fx).await;
    let mut dns = Vec::new();
    for (name, pw) in [(&typed, "typed-pw"), (&expanded, "expanded-pw")] {
        let user_dn = format!("uid={},ou=people,{}", ralph_ldap::dn::escape_value(name), fx.base);
        let attrs: [(&str, &[&str]); 6] = [
            ("objectClass", &["inetOrgPerson", "ralphADUser"]),
            ("uid", &[name]),
            ("sAMAccountName", &[name]),
            ("cn", &["Placeholder"]),
            ("sn", &["Placeholder"]),
            ("userPassword", &[pw]),
        ];
        common::add(&mut admin, &user_dn, &attrs).await;
        dns.push(user_dn);
    }
    let mut results = Vec::new();
    let mut by_search = ralph_config(&fx);
    by_search.user_filter = None;
    let mut by_dn = by_search.clone();
    by_dn.user_search = None;
    by_dn.user_dn_template = Some(format!("uid=%(user)s,ou=people,{}", fx.base));
    let mut no_attr = by_search.clone();
    no_attr.username_attr = None;
    for (what, c) in [("search", by_search), ("DN template", by_dn), ("search, no username_attr", no_attr)] {
        let b = backend(c);
        let own = login(&b, &typed, "typed-pw").await;
        let other = login(&b, &typed, "expanded-pw").await;
        let stored =
            b.store().list_users(None).await.map(|u| u.into_iter().map(|u| u.value.username).collect::<Vec<_>>());
        results.push((what, own, other, stored));
    }
    let dns: Vec<&str> = dns.iter().map(String::as_str).collect();
    common::delete(&mut admin, &dns).await;
    for (what, own, other, stored) in results {
        // In no group: mirrored and denied as inactive, but found and named exactly.
        assert_eq!(own.as_ref().ok(), Some(&AuthOutcome::Denied(DenyReason::Inactive)), "{what}: {own:?}");
        assert_eq!(other.ok(), Some(AuthOutcome::NotHandled), "{what}: another entry's password");
        assert_eq!(stored.expect("store"), std::slice::from_ref(&typed), "{what}");
    }
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
        // Roles only: a group check (the fixture's deny group) would read groups afresh at
        // every login (group_check_ttl_secs = 0, see carry_over.rs).
        c.deny_group = None;
        c.cache_ttl_secs = ttl;
        c
    };
    let cached = backend(config(1200));
    let uncached = backend(config(0));
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
                let by_search = backend(ralph_config(&fx));
                let mut template = ralph_config(&fx);
                template.user_search = None;
                template.user_dn_template = Some(format!("uid=%(user)s,ou=people,{}", fx.base));
                let by_dn = backend(template);
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
    c.group_search = Some(SearchSpec::new(&fx.base, Scope::Subtree, "(objectClass=groupOfNames)").into());
    // Forced, the in-chain rule is unknown to slapd and silently matches nothing, so carol
    // would lose every group; `auto` sees from the root DSE that this is not AD and recurses.
    c.nested_groups = NestedGroups::MatchingRule;
    let forced = backend(c.clone());
    assert_eq!(login(&forced, "carol", "carol-pw").await.expect("decided"), AuthOutcome::Denied(DenyReason::Inactive));
    c.nested_groups = NestedGroups::Auto;
    let auto = backend(c);
    assert_eq!(roles(&identity(login(&auto, "carol", "carol-pw").await)), ["active", "assets-staff"]);
}

#[tokio::test]
async fn missing_group_search_base_fails_closed() {
    let Some(fx) = fixture() else { return };
    // A mistyped group base: noSuchObject must refuse the login, never read as "no groups"
    // (which would let mallory past the deny group).
    let mut c = ralph_config(&fx);
    c.group_type = GroupType::GroupOfNames;
    c.group_search = Some(
        SearchSpec::new(format!("ou=no-such-groups,{}", fx.base), Scope::Subtree, "(objectClass=groupOfNames)").into(),
    );
    let b = backend(c);
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
    c.user_search = Some(
        SearchSpec::new(format!("ou=no-such-people,{}", fx.base), Scope::Subtree, "(sAMAccountName=%(user)s)").into(),
    );
    let b = backend(c);
    assert_eq!(login(&b, "alice", "alice-pw").await.expect("decided"), AuthOutcome::NotHandled);
}

#[tokio::test]
async fn users_refused_by_group_rules_are_deactivated_in_the_store() {
    let Some(fx) = fixture() else { return };
    let store = store();
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
    strict.require_group = Some(format!("cn=_gr_ralph_admin,ou=groups,{}", fx.base).into());
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
    let store = store();
    // A local "alice" with her own password: the directory's alice must not take it over.
    store.create_user(&ralph_core::User::new("alice").expect("valid")).await.expect("local alice");
    let b = LdapBackend::new(ralph_config(&fx), store.clone()).expect("backend");
    let outcome = login(&b, "alice", "alice-pw").await;
    assert!(matches!(outcome, Err(AuthError::Store(ref e)) if e.is_conflict()), "{outcome:?}");
    let kept = store.get_user("alice").await.expect("store").expect("kept");
    assert_eq!(kept.value.source, UserSource::Local);
}
