//! The django-auth-ldap settings a site carries over (issue 13), each against the fixture
//! slapd: boolean group queries, NO_NEW_USERS, binding as the authenticating user, posixGroup
//! primary groups, hooks, lock-out validation, the group check TTL and account state.

mod common;

use common::{Fixture, fixture, ralph_toml, store};
use ralph_core::testing::MemoryStore;
use ralph_core::{AuthBackend, AuthError, AuthOutcome, Credentials, DenyReason, Identity, UserStore};
use ralph_ldap::{LdapBackend, LdapConfig};

fn backend_toml(fx: &Fixture, extra_top: &str) -> LdapBackend<MemoryStore> {
    let config = LdapConfig::from_toml_str(&format!("{extra_top}\n{}", ralph_toml(fx))).expect("valid config");
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

fn g(fx: &Fixture, cn: &str) -> String {
    format!("cn={cn},ou=groups,{}", fx.base)
}

/// The ralph fixture config has `deny_group` set; these tests replace it, so it is cut out.
fn without_deny(toml: &str) -> String {
    toml.lines().filter(|l| !l.starts_with("deny_group")).collect::<Vec<_>>().join("\n")
}

fn backend_without_deny(fx: &Fixture, extra_top: &str) -> LdapBackend<MemoryStore> {
    let config =
        LdapConfig::from_toml_str(&format!("{extra_top}\n{}", without_deny(&ralph_toml(fx)))).expect("valid config");
    LdapBackend::new(config, store()).expect("backend")
}

#[tokio::test]
async fn boolean_require_group_any_all_not() {
    let Some(fx) = fixture() else { return };
    // admin, or (staff and not in coffee-club): bob yes (admin); alice no (staff but coffee);
    // carol no (neither).
    let require = format!(
        r#"require_group = {{ any = ["{}", {{ all = ["{}", {{ not = "{}" }}] }}] }}"#,
        g(&fx, "_gr_ralph_admin"),
        g(&fx, "_gr_ralph_staff"),
        g(&fx, "coffee-club"),
    );
    let b = backend_toml(&fx, &require);
    identity(login(&b, "bob", "bob-pw").await);
    for user in ["alice", "carol"] {
        assert_eq!(
            login(&b, user, &format!("{user}-pw")).await.expect("decided"),
            AuthOutcome::Denied(DenyReason::MissingRequiredGroup),
            "{user}"
        );
    }
    // staff and not admin: alice yes, bob no.
    let require = format!(
        r#"require_group = {{ all = ["{}", {{ not = "{}" }}] }}"#,
        g(&fx, "_gr_ralph_staff"),
        g(&fx, "_gr_ralph_admin"),
    );
    let b = backend_toml(&fx, &require);
    identity(login(&b, "alice", "alice-pw").await);
    assert_eq!(
        login(&b, "bob", "bob-pw").await.expect("decided"),
        AuthOutcome::Denied(DenyReason::MissingRequiredGroup)
    );
}

#[tokio::test]
async fn boolean_deny_group_and_flags_by_group() {
    let Some(fx) = fixture() else { return };
    // Denied: in _gr_ralph and (through nesting) in _gr_ralph_assets_staff: carol only.
    let deny =
        format!(r#"deny_group = {{ all = ["{}", "{}"] }}"#, g(&fx, "_gr_ralph"), g(&fx, "_gr_ralph_assets_staff"));
    let b = backend_without_deny(&fx, &deny);
    assert_eq!(login(&b, "carol", "carol-pw").await.expect("decided"), AuthOutcome::Denied(DenyReason::DeniedGroup));
    identity(login(&b, "alice", "alice-pw").await);

    // Flags from queries: superuser = staff and coffee-club (alice); staff = not staff (bob).
    let flags = format!(
        "[flags_by_group]\nis_superuser = {{ all = [\"{}\", \"{}\"] }}\nis_staff = {{ not = \"{}\" }}\n",
        g(&fx, "_gr_ralph_staff"),
        g(&fx, "coffee-club"),
        g(&fx, "_gr_ralph_staff"),
    );
    let config = LdapConfig::from_toml_str(&format!("{}\n{flags}", ralph_toml(&fx))).expect("valid");
    let b = LdapBackend::new(config, store()).expect("backend");
    let alice = identity(login(&b, "alice", "alice-pw").await);
    assert!(alice.user.is_superuser && alice.user.is_staff, "superuser by query, staff by role");
    let bob = identity(login(&b, "bob", "bob-pw").await);
    assert!(bob.user.is_staff && bob.user.is_superuser, "staff by the not-query, superuser by role");
    let carol = identity(login(&b, "carol", "carol-pw").await);
    assert!(carol.user.is_staff && !carol.user.is_superuser);
}

#[tokio::test]
async fn no_new_users_refuses_users_not_in_the_store() {
    let Some(fx) = fixture() else { return };
    let b = backend_toml(&fx, "no_new_users = true");
    assert_eq!(login(&b, "alice", "alice-pw").await.expect("decided"), AuthOutcome::Denied(DenyReason::NotProvisioned));
    assert_eq!(b.store().get_user("alice").await.expect("store"), None, "nothing created");
    // A wrong password is still "not handled", not a hint that the account is unknown here.
    assert_eq!(login(&b, "alice", "wrong").await.expect("decided"), AuthOutcome::NotHandled);
    // Once the store has her (an admin created her), she logs in and is refreshed.
    let mut user = ralph_core::User::new("alice").expect("valid");
    user.source = ralph_core::UserSource::Ldap;
    b.store().create_user(&user).await.expect("create");
    let id = identity(login(&b, "alice", "alice-pw").await);
    assert_eq!(id.user.email.as_deref(), Some("alice@ralph.test"));
    // The builder says the same.
    let built = LdapConfig::builder([fx.url.as_str()])
        .bind(&fx.bind_dn, fx.bind_password.as_str())
        .user_search(&fx.base, ralph_ldap::Scope::Subtree, "(uid=%(user)s)")
        .map_group(g(&fx, "_gr_ralph"), "active")
        .no_new_users(true)
        .build()
        .expect("valid");
    let b = LdapBackend::new(built, store()).expect("backend");
    assert_eq!(login(&b, "bob", "bob-pw").await.expect("decided"), AuthOutcome::Denied(DenyReason::NotProvisioned));
}

/// The ralph fixture config without a service account: the fixture's ACL lets anonymous
/// read nothing (`by users read by * none`), so only a bind as the user can read entries.
fn anonymous_toml(fx: &Fixture) -> String {
    ralph_toml(fx)
        .lines()
        .filter(|l| !l.starts_with("bind_dn") && !l.starts_with("bind_password"))
        .collect::<Vec<_>>()
        .join("\n")
}

#[tokio::test]
async fn bind_as_authenticating_user_without_a_service_account() {
    let Some(fx) = fixture() else { return };
    // Without the setting, an anonymous service search sees nobody.
    let config = LdapConfig::from_toml_str(&anonymous_toml(&fx)).expect("valid");
    let b = LdapBackend::new(config, store()).expect("backend");
    assert_eq!(login(&b, "alice", "alice-pw").await.expect("decided"), AuthOutcome::NotHandled);

    // Bound as the user through a template, the entry is found again with the user search
    // (sAMAccountName, not the bind name) and the groups are read as the user.
    let top =
        format!("bind_as_authenticating_user = true\nbind_name_template = \"uid=%(user)s,ou=people,{}\"", fx.base);
    let config = LdapConfig::from_toml_str(&format!("{top}\n{}", anonymous_toml(&fx))).expect("valid");
    let b = LdapBackend::new(config, store()).expect("backend");
    let alice = identity(login(&b, "alice", "alice-pw").await);
    assert_eq!(alice.groups.iter().map(|g| g.as_str()).collect::<Vec<_>>(), ["active", "assets-buyer", "staff"]);
    assert_eq!(alice.profile.and_then(|p| p.manager).as_deref(), Some("Smith, John"), "manager read as alice");
    let carol = identity(login(&b, "carol", "carol-pw").await);
    assert!(carol.groups.iter().any(|g| g.as_str() == "assets-staff"), "nested group read as carol");
    assert_eq!(login(&b, "alice", "wrong").await.expect("decided"), AuthOutcome::NotHandled);
    assert_eq!(login(&b, "nobody", "x").await.expect("decided"), AuthOutcome::NotHandled);
    assert_eq!(
        login(&b, "mallory", "mallory-pw").await.expect("decided"),
        AuthOutcome::Denied(DenyReason::DeniedGroup)
    );
    // The user filter still applies to the entry read back: eve binds, but is not admitted.
    assert_eq!(login(&b, "eve", "eve-pw").await.expect("decided"), AuthOutcome::NotHandled);

    // A DN template alone (no search): the entry is the DN bound to, read back as the user.
    let mut c = LdapConfig::from_toml_str(&anonymous_toml(&fx)).expect("valid");
    c.user_search = None;
    c.user_dn_template = Some(format!("uid=%(user)s,ou=people,{}", fx.base));
    c.bind_as_authenticating_user = true;
    let b = LdapBackend::new(c, store()).expect("backend");
    identity(login(&b, "bob", "bob-pw").await);

    // A UPN bind name is not a DN: slapd answers invalidDNSyntax (34), a typed error (AD
    // takes it). Only Active Directory can show the UPN path end to end.
    let top = "bind_as_authenticating_user = true\nbind_name_template = \"%(user)s@ralph.test\"";
    let config = LdapConfig::from_toml_str(&format!("{top}\n{}", anonymous_toml(&fx))).expect("valid");
    let b = LdapBackend::new(config, store()).expect("backend");
    let err = login(&b, "alice", "alice-pw").await.expect_err("slapd refuses a UPN");
    assert!(matches!(&err, AuthError::Backend(m) if m.contains("34")), "{err:?}");
    assert!(!format!("{err:?}").contains("alice-pw"));
}

#[test]
fn bind_names_from_templates() {
    let upn = LdapConfig::builder(["ldaps://h"])
        .user_search("dc=x", ralph_ldap::Scope::Subtree, "(sAMAccountName=%(user)s)")
        .bind_name_template("%(user)s@corp.example")
        .build()
        .expect("valid");
    assert!(upn.bind_as_authenticating_user);
    assert_eq!(upn.bind_name("alice").as_deref(), Some("alice@corp.example"));
    let dn = LdapConfig::builder(["ldaps://h"])
        .user_search("dc=x", ralph_ldap::Scope::Subtree, "(uid=%(user)s)")
        .bind_name_template("uid=%(user)s,ou=people,dc=x")
        .build()
        .expect("valid");
    assert_eq!(dn.bind_name("a,b+c").as_deref(), Some("uid=a\\2cb\\2bc,ou=people,dc=x"), "DN-escaped");
    // A template without a user search to read the entry with is refused.
    let err = LdapConfig::builder(["ldaps://h"])
        .user_dn_template("uid=%(user)s,dc=x")
        .bind_name_template("%(user)s@corp.example")
        .build()
        .expect_err("no user_search");
    assert!(matches!(err, ralph_ldap::Error::Config(ref m) if m.contains("user_search")), "{err}");
}

/// An entry to add: its DN and attributes (name → values).
type NewEntry<'a> = (String, Vec<(&'a str, Vec<String>)>);

/// Entries a test adds to the fixture, deleted when dropped (even after a failed assert).
struct Added {
    fx: Fixture,
    dns: Vec<String>,
}

impl Added {
    async fn new(fx: &Fixture, entries: &[NewEntry<'_>]) -> Self {
        let mut admin = common::admin(fx).await;
        let mut added = Self { fx: fx.clone(), dns: Vec::new() };
        for (dn, attrs) in entries {
            let attrs: Vec<(&str, Vec<&str>)> =
                attrs.iter().map(|(a, v)| (*a, v.iter().map(String::as_str).collect())).collect();
            let attrs: Vec<(&str, &[&str])> = attrs.iter().map(|(a, v)| (*a, v.as_slice())).collect();
            common::add(&mut admin, dn, &attrs).await;
            added.dns.push(dn.clone());
        }
        added
    }
}

impl Drop for Added {
    fn drop(&mut self) {
        let fx = self.fx.clone();
        let dns = std::mem::take(&mut self.dns);
        // A thread of its own: Drop may run inside the test's runtime.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
            rt.block_on(async {
                let mut admin = common::admin(&fx).await;
                let refs: Vec<&str> = dns.iter().rev().map(String::as_str).collect();
                common::delete(&mut admin, &refs).await;
            });
        })
        .join();
    }
}

fn v(values: &[&str]) -> Vec<String> {
    values.iter().map(|s| (*s).to_owned()).collect()
}

#[tokio::test]
async fn posix_primary_group_through_gid_number() {
    let Some(fx) = fixture() else { return };
    let name = common::unique("posix");
    let gid = (std::process::id() % 20_000 + 60_000).to_string();
    let user_dn = format!("uid={name},ou=people,{}", fx.base);
    let group_dn = format!("cn={name}-primary,ou=posix,{}", fx.base);
    let _added = Added::new(
        &fx,
        &[
            (
                user_dn,
                vec![
                    ("objectClass", v(&["inetOrgPerson", "posixAccount", "ralphADUser"])),
                    ("uid", v(&[&name])),
                    ("sAMAccountName", v(&[&name])),
                    ("cn", v(&[&name])),
                    ("sn", v(&["Posix"])),
                    ("uidNumber", v(&["7001"])),
                    ("gidNumber", v(&[&gid])),
                    ("homeDirectory", v(&["/home/x"])),
                    ("userPassword", v(&["posix-pw"])),
                ],
            ),
            // The user's primary group: no memberUid naming the user.
            (
                group_dn.clone(),
                vec![
                    ("objectClass", v(&["posixGroup"])),
                    ("cn", v(&[&format!("{name}-primary")])),
                    ("gidNumber", v(&[&gid])),
                ],
            ),
        ],
    )
    .await;
    let mut c = common::ralph_config(&fx);
    c.user_filter = None;
    c.group_type = ralph_ldap::GroupType::Posix;
    c.group_search = Some(
        ralph_ldap::SearchSpec::new(
            format!("ou=posix,{}", fx.base),
            ralph_ldap::Scope::OneLevel,
            "(objectClass=posixGroup)",
        )
        .into(),
    );
    c.group_mapping.clear();
    c.group_mapping.insert(group_dn, "active".into());
    c.group_mapping.insert(format!("cn=posix-staff,ou=posix,{}", fx.base), "staff".into());
    let b = LdapBackend::new(c, store()).expect("backend");
    let id = identity(login(&b, &name, "posix-pw").await);
    assert!(id.user.is_active && !id.user.is_staff, "active through the primary gidNumber only");
    // memberUid still counts (alice: posix-staff by memberUid, no gidNumber).
    let alice = login(&b, "alice", "alice-pw").await.expect("decided");
    assert_eq!(alice, AuthOutcome::Denied(DenyReason::Inactive), "alice is staff by memberUid, not active");
    assert!(b.store().get_user("alice").await.expect("store").expect("mirrored").value.is_staff);
}

#[tokio::test]
async fn username_normaliser_from_toml_and_a_hook() {
    let Some(fx) = fixture() else { return };
    let b = backend_toml(&fx, "");
    assert_eq!(login(&b, "RALPH\\alice", "alice-pw").await.expect("decided"), AuthOutcome::NotHandled);
    let b = backend_toml(&fx, "normalize_username = { trim = true, strip_domain = true, lowercase = true }");
    for typed in [" RALPH\\alice ", "RALPH\\ALICE", "alice"] {
        let id = identity(login(&b, typed, "alice-pw").await);
        assert_eq!(id.user.username, "alice", "{typed:?}");
    }
    // A host app's own rule, after the configured ones.
    let config = LdapConfig::from_toml_str(&ralph_toml(&fx)).expect("valid");
    let hooks = ralph_ldap::Hooks::new().normalize_username(|n| n.trim_end_matches("@ralph.test").to_owned());
    let b = LdapBackend::with_hooks(config, store(), hooks).expect("backend");
    assert_eq!(identity(login(&b, "bob@ralph.test", "bob-pw").await).user.username, "bob");
}

#[tokio::test]
async fn populate_hook_error_hook_and_populate_user_without_a_password() {
    use std::sync::{Arc, Mutex};
    let Some(fx) = fixture() else { return };
    let errors: Arc<Mutex<Vec<(ralph_ldap::Operation, String)>>> = Arc::default();
    let seen = Arc::clone(&errors);
    let hooks = ralph_ldap::Hooks::new()
        // `cn` is not mapped: the hook asks for it and puts it in the first name.
        .populate(["cn"], |entry, user, profile| {
            user.first_name = entry.first("cn").unwrap_or_default().to_owned();
            user.username = "renamed".into();
            if let Some(p) = profile {
                p.location = Some("from the hook".into());
            }
        })
        .on_error(move |op, e| seen.lock().expect("lock").push((op, e.to_string())));
    let config = LdapConfig::from_toml_str(&ralph_toml(&fx)).expect("valid");
    let b = LdapBackend::with_hooks(config, store(), hooks.clone()).expect("backend");
    let alice = identity(login(&b, "alice", "alice-pw").await);
    assert_eq!((alice.user.username.as_str(), alice.user.first_name.as_str()), ("alice", "Alice Nowak"));
    assert_eq!(alice.profile.and_then(|p| p.location).as_deref(), Some("from the hook"));
    assert_eq!(b.store().get_user("alice").await.expect("store").expect("stored").value.first_name, "Alice Nowak");

    // populate_user: no password, same mapping and hooks; refusals and unknown names typed.
    match b.populate_user("bob").await.expect("populated") {
        ralph_ldap::Populated::Mirrored(id) => assert_eq!(id.user.first_name, "Bob Builder"),
        other => panic!("{other:?}"),
    }
    assert!(b.store().get_user("bob").await.expect("store").is_some(), "bob mirrored");
    assert_eq!(
        b.populate_user("mallory").await.expect("decided"),
        ralph_ldap::Populated::Refused(DenyReason::DeniedGroup)
    );
    assert_eq!(b.populate_user("nobody").await.expect("decided"), ralph_ldap::Populated::NotFound);
    assert!(errors.lock().expect("lock").is_empty());

    // The error hook sees a failing directory (a port nobody listens on), password-free.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let dead = format!("ldap://{}", listener.local_addr().expect("addr"));
    drop(listener);
    let mut config = LdapConfig::from_toml_str(&ralph_toml(&fx)).expect("valid");
    config.server_uris = vec![dead];
    let b = LdapBackend::with_hooks(config, store(), hooks).expect("backend");
    assert!(matches!(login(&b, "alice", "alice-pw").await, Err(AuthError::Unavailable(_))));
    assert!(b.populate_user("alice").await.is_err());
    let errors = errors.lock().expect("lock");
    let ops: Vec<_> = errors.iter().map(|(op, _)| *op).collect();
    assert_eq!(ops, [ralph_ldap::Operation::Authenticate, ralph_ldap::Operation::PopulateUser]);
    assert!(errors.iter().all(|(_, e)| !e.contains("alice-pw") && !e.contains(&fx.bind_password)));
}

#[tokio::test]
async fn group_checks_are_never_older_than_group_check_ttl() {
    use std::collections::HashSet;
    let Some(fx) = fixture() else { return };
    let name = common::unique("checkttl");
    let user_dn = format!("uid={name},ou=people,{}", fx.base);
    let ok_dn = g(&fx, &format!("{name}-ok"));
    let deny_dn = g(&fx, &format!("{name}-deny"));
    let _added = Added::new(
        &fx,
        &[
            (
                user_dn.clone(),
                vec![
                    ("objectClass", v(&["inetOrgPerson", "ralphADUser"])),
                    ("uid", v(&[&name])),
                    ("sAMAccountName", v(&[&name])),
                    ("cn", v(&[&name])),
                    ("sn", v(&["Check"])),
                    ("userPassword", v(&["check-pw"])),
                ],
            ),
            (
                ok_dn.clone(),
                vec![
                    ("objectClass", v(&["groupOfNames"])),
                    ("cn", v(&[&format!("{name}-ok")])),
                    ("member", v(&[&user_dn])),
                ],
            ),
            // groupOfNames needs a member: one that does not exist.
            (
                deny_dn.clone(),
                vec![
                    ("objectClass", v(&["groupOfNames"])),
                    ("cn", v(&[&format!("{name}-deny")])),
                    ("member", v(&[&format!("uid={name}-nobody,ou=people,{}", fx.base)])),
                ],
            ),
        ],
    )
    .await;
    let config = |check_ttl: Option<u64>| {
        let mut c = common::ralph_config(&fx);
        c.user_filter = None;
        c.group_mapping.clear();
        c.group_mapping.insert(ok_dn.clone(), "active".into());
        c.deny_group = Some(deny_dn.clone().into());
        c.cache_ttl_secs = 1200;
        if let Some(ttl) = check_ttl {
            c.group_check_ttl_secs = ttl;
        }
        LdapBackend::new(c, store()).expect("backend")
    };
    let default = config(None);
    let lenient = config(Some(600));
    identity(login(&default, &name, "check-pw").await);
    identity(login(&lenient, &name, "check-pw").await);

    let mut admin = common::admin(&fx).await;
    let add = vec![ldap3::Mod::Add("member", HashSet::from([user_dn.as_str()]))];
    admin.modify(&deny_dn, add).await.expect("modify").success().expect("added to the deny group");

    // Default (0): the deny group is read again although the groups are in the 1200 s cache.
    assert_eq!(
        login(&default, &name, "check-pw").await.expect("decided"),
        AuthOutcome::Denied(DenyReason::DeniedGroup)
    );
    // Allowed 600 s: the cached groups (read a moment ago) still decide.
    identity(login(&lenient, &name, "check-pw").await);
    // The builder says the same.
    let built = LdapConfig::builder([fx.url.as_str()])
        .user_search(&fx.base, ralph_ldap::Scope::Subtree, "(uid=%(user)s)")
        .map_group(ok_dn.clone(), "active")
        .group_check_ttl(std::time::Duration::from_secs(600))
        .build()
        .expect("valid");
    assert_eq!(built.group_check_ttl_secs, 600);
}

/// A backend over the private slapd's `ou=adstate` accounts (in no group: active through a
/// `not` query), sharing `store`.
fn adstate_backend(fx: &Fixture, store: &MemoryStore, check: bool) -> LdapBackend<MemoryStore> {
    let mut c = common::ralph_config(fx);
    c.user_filter = None;
    c.user_search = Some(
        ralph_ldap::SearchSpec::new(
            format!("ou=adstate,{}", fx.base),
            ralph_ldap::Scope::Subtree,
            "(sAMAccountName=%(user)s)",
        )
        .into(),
    );
    c.flags_by_group.is_active = Some(!ralph_ldap::GroupQuery::from(g(fx, "_gr_ralph_banned")));
    c.check_account_state = check;
    c.max_deactivate_percent = 100;
    LdapBackend::new(c, store.clone()).expect("backend")
}

#[tokio::test]
async fn account_state_refuses_with_its_own_reason() {
    // The AD attributes and the ppolicy overlay are in this worktree's fixture: a slapd of
    // our own, from scripts/services/slapd.
    if fixture().is_none() {
        return;
    }
    let slapd = common::PrivateSlapd::start();
    let fx = slapd.fixture();
    let store = store();
    let unchecked = adstate_backend(&fx, &store, false);
    let checked = adstate_backend(&fx, &store, true);

    // Mirrored active while nobody looked at the state.
    for user in ["ad-disabled", "ad-expired"] {
        identity(login(&unchecked, user, &format!("{user}-pw")).await);
    }
    // ppolicy refuses the bind itself: without the state it is only a refused password.
    assert_eq!(login(&unchecked, "pp-locked", "pp-locked-pw").await.expect("decided"), AuthOutcome::NotHandled);

    for user in ["ad-ok", "ad-never"] {
        identity(login(&checked, user, &format!("{user}-pw")).await);
    }
    assert_eq!(login(&checked, "ad-ok", "wrong").await.expect("decided"), AuthOutcome::NotHandled);
    for (user, password, reason) in [
        ("ad-disabled", "ad-disabled-pw", DenyReason::AccountDisabled),
        ("ad-expired", "ad-expired-pw", DenyReason::AccountExpired),
        ("ad-pwexpired", "ad-pwexpired-pw", DenyReason::PasswordExpired),
        ("ad-mustchange", "ad-mustchange-pw", DenyReason::PasswordExpired),
        // Locks count when the directory refused the bind (AD does while locked; here a
        // wrong password stands in for that, and ppolicy refuses on its own).
        ("ad-locked", "wrong", DenyReason::AccountLocked),
        ("ad-lockflag", "wrong", DenyReason::AccountLocked),
        ("pp-locked", "pp-locked-pw", DenyReason::AccountLocked),
    ] {
        assert_eq!(login(&checked, user, password).await.expect("decided"), AuthOutcome::Denied(reason), "{user}");
    }
    // lockoutTime set but the bind accepted: the lock is over (AD clears it at the next logon).
    identity(login(&checked, "ad-locked", "ad-locked-pw").await);
    // Disabled and expired accounts are made inactive in the store; the others are not touched.
    for (user, active) in [("ad-disabled", false), ("ad-expired", false), ("ad-ok", true)] {
        let stored = store.get_user(user).await.expect("store").expect("mirrored");
        assert_eq!(stored.value.is_active, active, "{user}");
    }

    // The sync deactivates disabled and expired accounts it lists.
    let fresh = ralph_core::testing::MemoryStore::new();
    let unchecked = adstate_backend(&fx, &fresh, false);
    unchecked.sync().await.expect("sync");
    assert!(fresh.get_user("ad-disabled").await.expect("store").expect("imported").value.is_active);
    let report = adstate_backend(&fx, &fresh, true).sync().await.expect("sync");
    assert_eq!((report.refused, report.deactivated), (2, 2), "{report:?}");
    for user in ["ad-disabled", "ad-expired"] {
        assert!(!fresh.get_user(user).await.expect("store").expect("kept").value.is_active, "{user}");
    }
    assert!(fresh.get_user("ad-pwexpired").await.expect("store").expect("kept").value.is_active);
}

#[tokio::test]
async fn ppolicy_password_expiry_refuses_with_password_expired() {
    // pwdChangedTime and the expiring policy are in this worktree's fixture: a slapd of our own.
    if fixture().is_none() {
        return;
    }
    let slapd = common::PrivateSlapd::start();
    let fx = slapd.fixture();
    let store = store();
    let unchecked = adstate_backend(&fx, &store, false);
    let checked = adstate_backend(&fx, &store, true);
    let expiring = format!("cn=expiring,ou=policies,{}", fx.base);

    // slapd refuses pp-expired's bind (its own policy's pwdMaxAge has passed): without the
    // state that is only a refused password; with it, the reason.
    assert_eq!(login(&unchecked, "pp-expired", "pp-expired-pw").await.expect("decided"), AuthOutcome::NotHandled);
    assert_eq!(
        login(&checked, "pp-expired", "pp-expired-pw").await.expect("decided"),
        AuthOutcome::Denied(DenyReason::PasswordExpired)
    );
    // A wrong password says nothing more than a right one would.
    assert_eq!(
        login(&checked, "pp-expired", "wrong").await.expect("decided"),
        AuthOutcome::Denied(DenyReason::PasswordExpired)
    );
    // Changed a minute ago under the same policy: in good standing.
    identity(login(&checked, "pp-fresh", "pp-fresh-pw").await);
    // An old password under the default policy, which has no maximum age unless the client is
    // told which policy the overlay's default is.
    identity(login(&checked, "pp-aged", "pp-aged-pw").await);
    let mut with_default = common::ralph_config(&fx);
    with_default.user_filter = None;
    with_default.user_search = Some(
        ralph_ldap::SearchSpec::new(format!("ou=adstate,{}", fx.base), ralph_ldap::Scope::Subtree, "(uid=%(user)s)")
            .into(),
    );
    with_default.flags_by_group.is_active = Some(!ralph_ldap::GroupQuery::from(g(&fx, "_gr_ralph_banned")));
    with_default.ppolicy_default = Some(expiring.clone());
    let with_default = LdapBackend::new(with_default, store.clone()).expect("backend");
    assert_eq!(
        login(&with_default, "pp-aged", "pp-aged-pw").await.expect("decided"),
        AuthOutcome::Denied(DenyReason::PasswordExpired)
    );
    // A user's own policy wins over the default.
    identity(login(&with_default, "pp-fresh", "pp-fresh-pw").await);
    // The policy is read once and kept a while: a backend that read it still goes by it after
    // it changed; a new backend reads the new one.
    let mut admin = common::admin(&fx).await;
    let no_expiry = vec![ldap3::Mod::Replace("pwdMaxAge", std::collections::HashSet::from(["0"]))];
    admin.modify(&expiring, no_expiry).await.expect("modify").success().expect("pwdMaxAge 0");
    assert_eq!(
        login(&with_default, "pp-aged", "pp-aged-pw").await.expect("decided"),
        AuthOutcome::Denied(DenyReason::PasswordExpired),
        "policy read again at once"
    );
    let mut reread = with_default.config().clone();
    reread.check_account_state = true;
    let reread = LdapBackend::new(reread, store.clone()).expect("backend");
    identity(login(&reread, "pp-aged", "pp-aged-pw").await);
    let back = vec![ldap3::Mod::Replace("pwdMaxAge", std::collections::HashSet::from(["2592000"]))];
    admin.modify(&expiring, back).await.expect("modify").success().expect("pwdMaxAge back");
    // An expired password is not a closed account: the record stays active.
    assert!(store.get_user("pp-aged").await.expect("store").expect("mirrored").value.is_active);
    assert!(store.get_user("pp-expired").await.expect("store").is_none(), "never admitted");

    // The sync treats it as Active Directory's expired password: imported, kept active.
    let fresh = MemoryStore::new();
    let report = adstate_backend(&fx, &fresh, true).sync().await.expect("sync");
    assert_eq!(report.refused, 0, "{report:?}");
    for user in ["pp-expired", "pp-aged", "pp-fresh"] {
        assert!(fresh.get_user(user).await.expect("store").expect("imported").value.is_active, "{user}");
    }

    // The builder and TOML carry the default policy; a DN that is not one is refused.
    let built = LdapConfig::builder([fx.url.as_str()])
        .user_search(&fx.base, ralph_ldap::Scope::Subtree, "(uid=%(user)s)")
        .ppolicy_default(expiring.as_str())
        .build()
        .expect("valid");
    assert_eq!(built.ppolicy_default.as_deref(), Some(expiring.as_str()));
    let loaded =
        LdapConfig::from_toml_str(&format!("ppolicy_default = \"{expiring}\"\n{}", ralph_toml(&fx))).expect("valid");
    assert_eq!(loaded.ppolicy_default, Some(expiring));
    let err =
        LdapConfig::from_toml_str(&format!("ppolicy_default = \"no dn\"\n{}", ralph_toml(&fx))).expect_err("not a DN");
    assert!(err.to_string().contains("ppolicy_default"), "{err}");
}

/// A host app's composition, through the public API only: settings from TOML (a boolean
/// require group, username normalisation, NO_NEW_USERS), hooks, an admin tool provisioning
/// users with `populate_user`, and the chain LDAP → local on one store.
#[tokio::test]
async fn host_app_composes_carried_over_settings_in_a_chain() {
    use std::sync::Arc;

    use ralph_core::auth::LoginError;
    use ralph_core::{AuthChain, LocalBackend, Secret};
    use ralph_ldap::{Hooks, Populated};

    let Some(fx) = fixture() else { return };
    let settings = format!(
        "no_new_users = true\n\
         normalize_username = {{ trim = true, strip_domain = true, lowercase = true }}\n\
         require_group = {{ any = [\"{}\", \"{}\"] }}\n{}",
        g(&fx, "_gr_ralph_admin"),
        g(&fx, "_gr_ralph_staff"),
        ralph_toml(&fx)
    );
    let config = LdapConfig::from_toml_str(&settings).expect("the site's settings load");
    let store = store();
    let hooks = Hooks::new().populate(["cn"], |entry, user, _| {
        user.first_name = entry.first("cn").unwrap_or_default().to_owned();
    });

    // The admin tool provisions users (it may create them: no_new_users off there).
    let mut admin_config = config.clone();
    admin_config.no_new_users = false;
    let admin_tool = LdapBackend::with_hooks(admin_config, store.clone(), hooks.clone()).expect("backend");
    assert!(matches!(admin_tool.populate_user("ALICE").await.expect("populated"), Populated::Mirrored(_)));
    assert_eq!(
        admin_tool.populate_user("carol").await.expect("decided"),
        Populated::Refused(DenyReason::MissingRequiredGroup)
    );

    let local = LocalBackend::new(store.clone());
    store.create_user(&ralph_core::User::new("root-local").expect("valid")).await.expect("create");
    let local_password = Secret::from("Local-admin-pw-1");
    local.set_password("root-local", &local_password).await.expect("password");

    let ldap = LdapBackend::with_hooks(config, store.clone(), hooks).expect("backend");
    let chain = AuthChain::new().with(Arc::new(ldap)).with(Arc::new(local));

    let alice = chain.authenticate(&Credentials::new(" RALPH\\Alice ", "alice-pw")).await.expect("alice logs in");
    assert_eq!((alice.backend.as_str(), alice.identity.user.username.as_str()), ("ldap", "alice"));
    assert_eq!(alice.identity.user.first_name, "Alice Nowak", "populate hook");
    let bob = chain.authenticate(&Credentials::new("bob", "bob-pw")).await;
    assert!(matches!(bob, Err(LoginError::Denied { reason: DenyReason::NotProvisioned, .. })), "{bob:?}");
    assert!(store.get_user("bob").await.expect("store").is_none());
    let root = chain.authenticate(&Credentials::new("root-local", "Local-admin-pw-1")).await.expect("local admin");
    assert_eq!(root.backend, "local");
    let wrong = chain.authenticate(&Credentials::new("alice", "nope")).await;
    assert!(matches!(wrong, Err(LoginError::InvalidCredentials)), "{wrong:?}");
}
