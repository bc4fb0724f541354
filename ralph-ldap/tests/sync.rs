//! The bulk sync against a slapd whose size limit (1,000) is far below the user count.

mod common;

use common::{Captured, fixture, ralph_config, store};
use ralph_core::store::UserMirror;
use ralph_core::testing::MemoryStore;
use ralph_core::{AuthBackend, AuthOutcome, Credentials, User, UserSource, UserStore};
use ralph_ldap::{LdapBackend, SyncOptions};

#[tokio::test]
async fn unpaged_search_hits_the_size_limit() {
    let Some(fx) = fixture() else { return };
    // Proves the fixture really needs paging: the service account cannot list everyone at once.
    let (conn, mut ldap) = ldap3::LdapConnAsync::new(&fx.url).await.expect("connect");
    ldap3::drive!(conn);
    ldap.simple_bind(&fx.bind_dn, &fx.bind_password).await.expect("bind").success().expect("bind ok");
    let filter = format!("(memberOf=cn=ralph-users,ou=groups,{})", fx.base);
    let result = ldap.search(&fx.base, ldap3::Scope::Subtree, &filter, vec!["1.1"]).await.expect("search");
    assert_eq!(result.1.rc, 4, "expected sizeLimitExceeded");
    assert_eq!(result.0.len(), 1000);
}

// serial_: the referral tests add referrals under the base, which make a sync skip deactivation.
#[tokio::test]
async fn serial_sync_pages_through_every_user_then_deactivates_the_missing() {
    let Some(fx) = fixture() else { return };
    let store = store();
    let mut config = ralph_config(&fx);
    config.page_size = 400;
    let backend = LdapBackend::new(config, store).expect("backend");

    // An LDAP-owned user the directory does not know, and a local one the sync must not touch.
    let mut ghost = User::new("ghost").expect("valid");
    ghost.source = UserSource::Ldap;
    backend
        .store()
        .mirror_user(&UserMirror { user: ghost, profile: None, groups: None, group_scope: Default::default() })
        .await
        .expect("ghost");
    backend.store().create_user(&User::new("local-admin").expect("valid")).await.expect("local");
    // mallory, mirrored active (with a role) before the deny group banned her.
    let mut mallory = User::new("mallory").expect("valid");
    mallory.source = UserSource::Ldap;
    mallory.is_staff = true;
    let roles = Some(vec![ralph_core::Group::new("staff").expect("valid")]);
    backend
        .store()
        .mirror_user(&UserMirror { user: mallory, profile: None, groups: roles, group_scope: Default::default() })
        .await
        .expect("mallory");

    let report = backend.sync().await.expect("sync");
    let expected = fx.bulk_users + 12; // named users in ralph-users (twins count twice)
    assert!(report.seen >= expected, "{report:?}");
    assert!(report.pages >= expected / 400, "{report:?}");
    // mallory is refused by the deny group; the two twins share one username.
    assert_eq!(report.skipped, 3, "{report:?}");
    assert_eq!(report.created, report.seen - report.skipped, "{report:?}");
    assert_eq!(report.deactivated, 2, "ghost (missing) and mallory (denied): {report:?}");

    let users = backend.store().list_users(Some(UserSource::Ldap)).await.expect("list");
    assert!(users.len() >= fx.bulk_users + 8);
    assert_eq!(backend.store().get_user("twin").await.expect("store"), None, "ambiguous username imported");
    let bulk_active = users.iter().filter(|u| u.value.username.starts_with("bulk") && u.value.is_active).count();
    assert_eq!(bulk_active, 1000.min(fx.bulk_users), "bulk00000..00999 are in _gr_ralph");
    let last = format!("bulk{:05}", fx.bulk_users - 1);
    let last = backend.store().get_user(&last).await.expect("store").expect("the last page was read");
    assert!(!last.value.is_active);
    let p = backend.store().get_profile("bulk00003").await.expect("store").expect("profile");
    assert_eq!(p.country, None, "XX is not a country");
    assert_eq!(p.company.as_deref(), Some("Bulk Co"));
    assert_eq!(
        backend.store().get_profile("bulk00000").await.expect("store").and_then(|p| p.country).map(|c| c.as_str()),
        Some("PL")
    );
    assert!(!backend.store().get_user("ghost").await.expect("store").expect("kept").value.is_active);
    assert!(backend.store().get_user("local-admin").await.expect("store").expect("kept").value.is_active);
    let mallory = backend.store().get_user("mallory").await.expect("store").expect("kept");
    assert!(!mallory.value.is_active && !mallory.value.is_staff, "a denied user stays active: {mallory:?}");
    assert!(backend.store().user_groups("mallory").await.expect("store").is_empty());
    assert_eq!(backend.store().get_user("eve").await.expect("store"), None, "outside the user filter");
    let carol = backend.store().user_groups("carol").await.expect("store");
    assert!(carol.iter().any(|g| g.as_str() == "assets-staff"), "nested groups in the sync too");

    // A second run changes nothing.
    let again = backend.sync().await.expect("second sync");
    assert_eq!((again.created, again.updated, again.deactivated), (0, 0, 0), "{again:?}");
    assert_eq!(again.seen, report.seen);
}

#[tokio::test]
async fn sync_can_leave_missing_users_active() {
    let Some(fx) = fixture() else { return };
    let store = store();
    let mut config = ralph_config(&fx);
    config.deactivate_missing = false;
    config.user_filter = Some(format!("(memberOf=cn=_gr_ralph_admin,ou=groups,{})", fx.base));
    let backend = LdapBackend::new(config, store).expect("backend");
    let mut ghost = User::new("ghost").expect("valid");
    ghost.source = UserSource::Ldap;
    backend
        .store()
        .mirror_user(&UserMirror { user: ghost, profile: None, groups: None, group_scope: Default::default() })
        .await
        .expect("ghost");
    let report = backend.sync().await.expect("sync");
    assert_eq!((report.seen, report.created, report.deactivated), (1, 1, 0), "{report:?}");
    assert!(backend.store().get_user("ghost").await.expect("store").expect("kept").value.is_active);
    assert!(backend.store().get_user("bob").await.expect("store").expect("bob").value.is_superuser);
}

#[tokio::test]
async fn a_failed_listing_deactivates_nobody() {
    let Some(fx) = fixture() else { return };
    let store = store();
    let mut config = ralph_config(&fx);
    // The directory is unreachable: the sync fails and nobody is deactivated.
    config.server_uris = vec![format!("ldap://127.0.0.1:{}", {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    })];
    let backend = LdapBackend::new(config, store).expect("backend");
    let mut ghost = User::new("ghost").expect("valid");
    ghost.source = UserSource::Ldap;
    backend
        .store()
        .mirror_user(&UserMirror { user: ghost, profile: None, groups: None, group_scope: Default::default() })
        .await
        .expect("ghost");
    let err = backend.sync().await.expect_err("directory down");
    assert!(err.is_unavailable(), "{err:?}");
    assert!(backend.store().get_user("ghost").await.expect("store").expect("kept").value.is_active);
}

#[tokio::test]
async fn sync_leaves_a_local_account_of_the_same_name_alone() {
    let Some(fx) = fixture() else { return };
    let store = store();
    let mut config = ralph_config(&fx);
    config.user_filter = Some(format!("(memberOf=cn=_gr_ralph_admin,ou=groups,{})", fx.base));
    let backend = LdapBackend::new(config, store).expect("backend");
    backend.store().create_user(&User::new("bob").expect("valid")).await.expect("local bob");
    let report = backend.sync().await.expect("a local namesake does not abort the sync");
    assert_eq!((report.seen, report.created, report.skipped), (1, 0, 1), "{report:?}");
    let bob = backend.store().get_user("bob").await.expect("store").expect("kept");
    assert!(bob.value.source == UserSource::Local && !bob.value.is_superuser, "{bob:?}");
}

#[tokio::test]
async fn sync_with_a_missing_group_search_base_fails_closed() {
    let Some(fx) = fixture() else { return };
    let store = store();
    let mut config = ralph_config(&fx);
    config.user_filter = Some(format!("(memberOf=cn=_gr_ralph_banned,ou=groups,{})", fx.base));
    config.group_type = ralph_ldap::GroupType::GroupOfNames;
    config.group_search = Some(
        ralph_ldap::SearchSpec::new(
            format!("ou=no-such-groups,{}", fx.base),
            ralph_ldap::Scope::Subtree,
            "(objectClass=groupOfNames)",
        )
        .into(),
    );
    let backend = LdapBackend::new(config, store).expect("backend");
    let err = backend.sync().await.expect_err("groups cannot be read");
    assert!(err.to_string().contains("32"), "{err}");
    assert_eq!(backend.store().get_user("mallory").await.expect("store"), None, "mallory imported without groups");
}

// serial_: the referral it adds under the base would make a concurrent sync skip deactivation.
#[tokio::test]
async fn serial_a_listing_that_met_a_referral_deactivates_no_missing_user() {
    let Some(fx) = fixture() else { return };
    // Where the referral points: a listener that must never see a connection (not chased).
    let target = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    target.set_nonblocking(true).expect("nonblocking");
    let target_addr = target.local_addr().expect("addr");
    let mut admin = common::admin(&fx).await;
    let ou = common::unique("child-domain");
    let referral = format!("ou={ou},{}", fx.base);
    let ref_url = format!("ldap://{target_addr}/ou=child,{}", fx.base);
    common::add(
        &mut admin,
        &referral,
        &[("objectClass", &["referral", "extensibleObject"]), ("ou", &[&ou]), ("ref", &[&ref_url])],
    )
    .await;

    let store = store();
    let mut config = ralph_config(&fx);
    config.user_filter = Some(format!("(memberOf=cn=_gr_ralph_admin,ou=groups,{})", fx.base));
    assert!(config.deactivate_missing);
    let backend = LdapBackend::new(config, store).expect("backend");
    // A user living behind the referral (the child domain): the listing cannot see it.
    let mut child = User::new("child-user").expect("valid");
    child.source = UserSource::Ldap;
    backend
        .store()
        .mirror_user(&UserMirror { user: child, profile: None, groups: None, group_scope: Default::default() })
        .await
        .expect("child");

    let report = backend.sync().await;
    common::delete(&mut admin, &[&referral]).await;
    let report = report.expect("sync");
    assert!(report.referrals_ignored >= 1, "{report:?}");
    assert!(report.deactivation_skipped, "{report:?}");
    assert_eq!((report.seen, report.created, report.deactivated), (1, 1, 0), "{report:?}");
    assert!(backend.store().get_user("child-user").await.expect("store").expect("kept").value.is_active);
    assert!(backend.store().get_user("bob").await.expect("store").expect("bob").value.is_superuser);
    assert!(matches!(target.accept(), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock), "the referral was chased");

    // With the referral gone the listing is complete: the missing user is deactivated.
    let again = backend.sync().await.expect("second sync");
    assert_eq!((again.referrals_ignored, again.deactivation_skipped, again.deactivated), (0, false, 1), "{again:?}");
    assert!(!backend.store().get_user("child-user").await.expect("store").expect("kept").value.is_active);
}

#[tokio::test]
async fn sync_and_login_store_one_spelling_without_username_attr() {
    let Some(fx) = fixture() else { return };
    let store = store();
    let mut config = ralph_config(&fx);
    // The username comes from the attribute the user search compares the login with.
    config.username_attr = None;
    config.user_filter = Some(format!("(memberOf=cn=_gr_ralph_admin,ou=groups,{})", fx.base));
    let backend = LdapBackend::new(config, store).expect("backend");
    let report = backend.sync().await.expect("the sync names users without username_attr");
    assert_eq!((report.seen, report.created), (1, 1), "{report:?}");
    for typed in ["BOB", "Bob", "bob"] {
        match backend.authenticate(&Credentials::new(typed, "bob-pw")).await {
            Ok(AuthOutcome::Authenticated(id)) => assert_eq!(id.user.username, "bob", "{typed}"),
            other => panic!("{typed}: {other:?}"),
        }
    }
    let users = backend.store().list_users(Some(UserSource::Ldap)).await.expect("list");
    assert_eq!(users.iter().map(|u| u.value.username.as_str()).collect::<Vec<_>>(), ["bob"]);
    let again = backend.sync().await.expect("second sync");
    assert_eq!((again.created, again.updated, again.deactivated), (0, 0, 0), "{again:?}");
}

/// `n` LDAP-owned, active users the directory does not know.
async fn ghosts(backend: &LdapBackend<MemoryStore>, n: usize) -> Vec<String> {
    let mut names = Vec::new();
    for i in 0..n {
        let mut ghost = User::new(&format!("ghost{i}")).expect("valid");
        ghost.source = UserSource::Ldap;
        names.push(ghost.username.clone());
        backend
            .store()
            .mirror_user(&UserMirror { user: ghost, profile: None, groups: None, group_scope: Default::default() })
            .await
            .expect("ghost");
    }
    names
}

async fn active(backend: &LdapBackend<MemoryStore>, names: &[String]) -> usize {
    let mut n = 0;
    for name in names {
        n += usize::from(backend.store().get_user(name).await.expect("store").expect("kept").value.is_active);
    }
    n
}

// serial_: the referral tests add referrals under the base, which make a sync skip deactivation.
#[tokio::test]
async fn serial_a_listing_that_lost_most_users_deactivates_nobody_unless_forced() {
    let Some(fx) = fixture() else { return };
    let (captured, _guard) = Captured::start();
    // A listing that succeeds with nothing in it (here a user filter no entry matches; in
    // life a wrong base, a changed ACL): every LDAP user would be "missing".
    let store = store();
    let mut empty = ralph_config(&fx);
    empty.user_filter = Some(format!("(memberOf=cn=no-such-group,ou=groups,{})", fx.base));
    let backend = LdapBackend::new(empty.clone(), store.clone()).expect("backend");
    let names = ghosts(&backend, 3).await;
    let report = backend.sync().await.expect("sync");
    assert_eq!((report.seen, report.missing, report.deactivated), (0, 3, 0), "{report:?}");
    assert!(report.over_deactivation_limit && report.deactivation_skipped, "{report:?}");
    assert_eq!(active(&backend, &names).await, 3, "users deactivated by an empty listing");
    let logs = captured.text();
    assert!(logs.contains("WARN") && logs.contains("max_deactivate_percent"), "no warning: {logs}");

    // Very few: bob is listed, three of four active users are missing (75 % > 50 %).
    let mut few = ralph_config(&fx);
    few.user_filter = Some(format!("(memberOf=cn=_gr_ralph_admin,ou=groups,{})", fx.base));
    let backend = LdapBackend::new(few.clone(), store.clone()).expect("backend");
    let report = backend.sync().await.expect("sync");
    assert_eq!((report.seen, report.missing, report.deactivated), (1, 3, 0), "{report:?}");
    assert!(report.over_deactivation_limit, "{report:?}");
    assert_eq!(active(&backend, &names).await, 3);

    // A limit that allows it, set in the configuration (and in the builder).
    let mut lenient = few.clone();
    lenient.max_deactivate_percent = 75;
    let other_store = common::store();
    let b = LdapBackend::new(lenient, other_store).expect("backend");
    let other_names = ghosts(&b, 3).await;
    let report = b.sync().await.expect("sync");
    assert_eq!((report.missing, report.deactivated, report.over_deactivation_limit), (3, 3, false), "{report:?}");
    assert_eq!(active(&b, &other_names).await, 0);
    let built = ralph_ldap::LdapConfig::builder([fx.url.as_str()])
        .user_search(&fx.base, ralph_ldap::Scope::Subtree, "(uid={user})")
        .max_deactivate_percent(75)
        .build()
        .expect("valid");
    assert_eq!(built.max_deactivate_percent, 75);
    let too_much = ralph_ldap::LdapConfig::builder([fx.url.as_str()])
        .user_search(&fx.base, ralph_ldap::Scope::Subtree, "(uid={user})")
        .max_deactivate_percent(101)
        .build();
    assert!(matches!(too_much, Err(ralph_ldap::Error::Config(ref m)) if m.contains("max_deactivate_percent")));

    // Forced for one run: the missing users go.
    let report = backend.sync_with(SyncOptions::new().force_deactivation(true)).await.expect("forced sync");
    assert_eq!((report.missing, report.deactivated, report.over_deactivation_limit), (3, 3, false), "{report:?}");
    assert_eq!(active(&backend, &names).await, 0);
}

#[tokio::test]
async fn a_require_group_nobody_is_in_deactivates_nobody_unless_forced() {
    let Some(fx) = fixture() else { return };
    let (captured, _guard) = Captured::start();
    let store = store();
    let mut config = ralph_config(&fx);
    config.user_filter =
        Some(format!("(&(memberOf=cn=ralph-users,ou=groups,{})(|(uid=alice)(uid=bob)(uid=carol)(uid=dave)))", fx.base));
    // A require group under a base that does not exist (in life: a typo, or an ACL hiding the
    // group): every listed user is refused by the group rules, none is missing.
    let mut wrong = config.clone();
    wrong.require_group = Some(format!("cn=_gr_ralph,ou=no-such-groups,{}", fx.base).into());
    let backend = LdapBackend::new(wrong, store.clone()).expect("backend");
    let names: Vec<String> = ["alice", "bob", "carol", "dave"].map(str::to_owned).to_vec();
    for name in &names {
        let mut user = User::new(name).expect("valid");
        user.source = UserSource::Ldap;
        user.is_active = true;
        backend
            .store()
            .mirror_user(&UserMirror { user, profile: None, groups: None, group_scope: Default::default() })
            .await
            .expect("mirror");
    }
    let report = backend.sync().await.expect("sync");
    assert_eq!((report.seen, report.skipped, report.refused, report.missing), (4, 4, 4, 0), "{report:?}");
    assert_eq!(report.deactivated, 0, "{report:?}");
    assert!(report.over_deactivation_limit && report.deactivation_skipped, "{report:?}");
    assert_eq!(active(&backend, &names).await, 4, "users deactivated by a require group nobody is in");
    let logs = captured.text();
    assert!(logs.contains("WARN") && logs.contains("max_deactivate_percent"), "no warning: {logs}");

    // The right require group: only dave (not in _gr_ralph) is refused, 1 of 4 is under the limit.
    let mut right = config.clone();
    right.require_group = Some(format!("cn=_gr_ralph,ou=groups,{}", fx.base).into());
    let report = LdapBackend::new(right, store.clone()).expect("backend").sync().await.expect("sync");
    assert_eq!((report.refused, report.deactivated, report.over_deactivation_limit), (1, 1, false), "{report:?}");
    assert!(!backend.store().get_user("dave").await.expect("store").expect("kept").value.is_active);
    assert_eq!(active(&backend, &names).await, 3);

    // Forced for one run: the wrong require group deactivates the three still active.
    let report = backend.sync_with(SyncOptions::new().force_deactivation(true)).await.expect("forced sync");
    assert_eq!((report.refused, report.deactivated, report.over_deactivation_limit), (3, 3, false), "{report:?}");
    assert_eq!(active(&backend, &names).await, 0);
}

/// A store that counts the calls a sync makes, around the in-memory store.
#[derive(Clone, Default)]
struct Counting {
    inner: MemoryStore,
    calls: std::sync::Arc<std::sync::Mutex<std::collections::BTreeMap<&'static str, usize>>>,
}

impl Counting {
    fn count(&self, call: &'static str) {
        *self.calls.lock().expect("lock").entry(call).or_default() += 1;
    }

    fn take(&self) -> std::collections::BTreeMap<&'static str, usize> {
        std::mem::take(&mut *self.calls.lock().expect("lock"))
    }
}

#[async_trait::async_trait]
impl UserStore for Counting {
    async fn create_user(&self, user: &User) -> Result<ralph_core::Id<User>, ralph_core::StoreError> {
        self.count("create_user");
        self.inner.create_user(user).await
    }
    async fn get_user(&self, username: &str) -> Result<Option<ralph_core::Record<User>>, ralph_core::StoreError> {
        self.count("get_user");
        self.inner.get_user(username).await
    }
    async fn update_user(&self, user: &User) -> Result<(), ralph_core::StoreError> {
        self.count("update_user");
        self.inner.update_user(user).await
    }
    async fn delete_user(&self, username: &str) -> Result<(), ralph_core::StoreError> {
        self.count("delete_user");
        self.inner.delete_user(username).await
    }
    async fn list_users(
        &self,
        source: Option<UserSource>,
    ) -> Result<Vec<ralph_core::Record<User>>, ralph_core::StoreError> {
        self.count("list_users");
        self.inner.list_users(source).await
    }
    async fn password_hash(&self, username: &str) -> Result<Option<String>, ralph_core::StoreError> {
        self.inner.password_hash(username).await
    }
    async fn set_password_hash(&self, username: &str, hash: Option<&str>) -> Result<(), ralph_core::StoreError> {
        self.inner.set_password_hash(username, hash).await
    }
    async fn get_profile(&self, username: &str) -> Result<Option<ralph_core::Profile>, ralph_core::StoreError> {
        self.count("get_profile");
        self.inner.get_profile(username).await
    }
    async fn set_profile(&self, username: &str, profile: &ralph_core::Profile) -> Result<(), ralph_core::StoreError> {
        self.count("set_profile");
        self.inner.set_profile(username, profile).await
    }
    async fn user_groups(&self, username: &str) -> Result<Vec<ralph_core::Group>, ralph_core::StoreError> {
        self.count("user_groups");
        self.inner.user_groups(username).await
    }
    async fn set_user_groups(
        &self,
        username: &str,
        groups: &[ralph_core::Group],
    ) -> Result<(), ralph_core::StoreError> {
        self.count("set_user_groups");
        self.inner.set_user_groups(username, groups).await
    }
    async fn mirror_user(&self, mirror: &UserMirror) -> Result<ralph_core::Mirrored, ralph_core::StoreError> {
        self.count("mirror_user");
        self.inner.mirror_user(mirror).await
    }
    async fn mirror_users(
        &self,
        mirrors: &[UserMirror],
    ) -> Result<Vec<Result<ralph_core::Mirrored, ralph_core::StoreError>>, ralph_core::StoreError> {
        self.count("mirror_users");
        self.inner.mirror_users(mirrors).await
    }
    async fn deactivate_users(&self, usernames: &[String]) -> Result<u64, ralph_core::StoreError> {
        self.count("deactivate_users");
        self.inner.deactivate_users(usernames).await
    }
}

// serial_: the referral tests add referrals under the base, which make a sync skip deactivation.
#[tokio::test]
async fn serial_sync_mirrors_a_page_at_a_time_and_reports_progress() {
    let Some(fx) = fixture() else { return };
    let store = Counting::default();
    let mut config = ralph_config(&fx);
    config.page_size = 400;
    let backend = LdapBackend::new(config, store.clone()).expect("backend");

    let (captured, guard) = Captured::start();
    let report = backend.sync().await.expect("sync");
    drop(guard);
    let pages = report.seen.div_ceil(400);
    assert_eq!(report.pages, pages, "{report:?}");
    assert_eq!(report.created, report.seen - report.skipped, "{report:?}");
    assert!(report.users_per_sec > 0 && report.elapsed_ms > 0, "{report:?}");
    // One store call per page, one list at the start; nothing per user.
    let calls = store.take();
    assert_eq!(calls.get("mirror_users").copied(), Some(pages), "{calls:?}");
    assert_eq!(calls.get("list_users").copied(), Some(1), "{calls:?}");
    for per_user in ["mirror_user", "get_user", "get_profile", "user_groups", "set_user_groups", "update_user"] {
        assert_eq!(calls.get(per_user), None, "{per_user} called: {calls:?}");
    }
    // A progress event per page, with the rate.
    let text = captured.text();
    assert_eq!(text.matches("LDAP sync page mirrored").count(), pages, "{text}");
    assert!(text.contains("users_per_sec="), "{text}");

    // A second run finds every user unchanged and writes nothing.
    let again = backend.sync().await.expect("second sync");
    assert_eq!((again.created, again.updated, again.deactivated), (0, 0, 0), "{again:?}");
    assert_eq!(again.unchanged, again.seen - again.skipped, "{again:?}");
    let calls = store.take();
    assert_eq!(calls.get("mirror_users").copied(), Some(pages), "{calls:?}");
}

// serial_: the referral tests add referrals under the base, which make a sync skip deactivation.
#[tokio::test]
async fn serial_group_of_names_sync_from_the_rule_groups_gives_the_roles_a_login_gives() {
    let Some(fx) = fixture() else { return };
    let toml = format!(
        "{}\n[group_search]\nbase = \"ou=groups,{}\"\nfilter = \"(objectClass=groupOfNames)\"\n",
        common::ralph_toml(&fx).replace("group_type = \"member_of\"", "group_type = \"group_of_names\""),
        fx.base
    );
    let config = ralph_ldap::LdapConfig::from_toml_str(&toml).expect("group_of_names config");
    let backend = LdapBackend::new(config.clone(), store()).expect("backend");
    let report = backend.sync().await.expect("sync");
    assert_eq!(report.skipped, 3, "mallory (deny group) and the twins: {report:?}");

    // The sync's roles are a login's roles, nested groups included.
    let login = LdapBackend::new(config, store()).expect("backend");
    for (user, roles) in [
        ("alice", &["active", "assets-buyer", "staff"][..]),
        ("bob", &["active", "superuser"]),
        ("carol", &["active", "assets-staff"]),
        ("bulk00001", &["active"]),
        ("bulk04000", &[]),
    ] {
        let synced: Vec<String> =
            backend.store().user_groups(user).await.expect("store").iter().map(|g| g.as_str().to_owned()).collect();
        assert_eq!(synced, roles, "{user} after the sync");
        if !user.starts_with("bulk") {
            let password = format!("{user}-pw");
            let outcome = login.authenticate(&Credentials::new(user, password.as_str())).await.expect("login");
            let AuthOutcome::Authenticated(identity) = outcome else { panic!("{user}: {outcome:?}") };
            let logged: Vec<&str> = identity.groups.iter().map(|g| g.as_str()).collect();
            assert_eq!(logged, roles, "{user} at login");
        }
    }
    assert!(backend.store().get_user("mallory").await.expect("store").is_none(), "denied user imported");
}

#[tokio::test]
async fn a_username_held_in_two_pages_leaves_nobody_active_under_it() {
    let Some(fx) = fixture() else { return };
    let mut config = ralph_config(&fx);
    // One entry per page: the twins (one username, two entries) come in different pages, so
    // the first is mirrored before the second shows the name to be ambiguous.
    config.page_size = 1;
    config.user_filter =
        Some(format!("(&(memberOf=cn=ralph-users,ou=groups,{b})(|(uid=twin)(cn=Twin Two)))", b = fx.base));
    let backend = LdapBackend::new(config, store()).expect("backend");
    let report = backend.sync().await.expect("sync");
    assert_eq!((report.seen, report.pages, report.skipped, report.deactivated), (2, 2, 1, 1), "{report:?}");
    let twin = backend.store().get_user("twin").await.expect("store").expect("mirrored from the first page");
    assert!(!twin.value.is_active, "an ambiguous username left active: {twin:?}");
}
