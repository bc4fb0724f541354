//! The auth chain against the real SQLite store: local logins, refusals, a backend that is down
//! under both error policies, and no password in any log line.

use std::io;
use std::sync::Arc;

use async_trait::async_trait;
use ralph_core::auth::{ErrorPolicy, LoginError};
use ralph_core::{
    AuthBackend, AuthChain, AuthError, AuthOutcome, Credentials, DenyReason, Group, LocalBackend, Secret, User,
    UserMirror, UserSource, UserStore,
};
use ralph_store::SqliteStore;

mod store_common;
use store_common::Capture;

const ADMIN_PASSWORD: &str = "correct-Horse-battery-7!";
const WRONG_PASSWORD: &str = "Tr0ub4dor&3-not-it";
const INACTIVE_PASSWORD: &str = "inactive-Secret-42";
const LDAP_PASSWORD: &str = "ldap-Only-Password-9";

/// A backend whose directory is unreachable.
struct Down;

#[async_trait]
impl AuthBackend for Down {
    fn name(&self) -> &str {
        "down"
    }

    async fn authenticate(&self, _credentials: &Credentials) -> Result<AuthOutcome, AuthError> {
        Err(AuthError::Unavailable(Box::new(io::Error::new(io::ErrorKind::ConnectionRefused, "directory down"))))
    }
}

async fn store_with_users() -> (Arc<SqliteStore>, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite://{}", dir.path().join("auth.sqlite3").display());
    let store = Arc::new(SqliteStore::connect(&url).await.expect("open store"));
    let local = LocalBackend::new(store.clone());

    let mut admin = User::new("admin").expect("user");
    admin.is_staff = true;
    admin.is_superuser = true;
    store.create_user(&admin).await.expect("admin");
    store.set_user_groups("admin", &[Group::new("superuser").expect("group")]).await.expect("groups");
    local.set_password("admin", &Secret::new(ADMIN_PASSWORD)).await.expect("admin password");

    let mut inactive = User::new("inactive").expect("user");
    inactive.is_active = false;
    store.create_user(&inactive).await.expect("inactive");
    local.set_password("inactive", &Secret::new(INACTIVE_PASSWORD)).await.expect("inactive password");

    let ldap = User { source: UserSource::Ldap, ..User::new("ldapuser").expect("user") };
    store
        .mirror_user(&UserMirror { user: ldap, profile: None, groups: None, group_scope: Default::default() })
        .await
        .expect("ldap user");
    (store, dir)
}

#[tokio::test]
async fn the_chain_on_the_sqlite_store() {
    let capture = Capture::default();
    let _guard = capture.install();

    let (store, _dir) = store_with_users().await;
    let local: Arc<dyn AuthBackend> = Arc::new(LocalBackend::new(store.clone()));
    let chain = AuthChain::new().with(local.clone());
    let login = |user: &str, password: &str| Credentials::new(user, password);

    // Success, with flags and groups from the store.
    let ok = chain.authenticate(&login("admin", ADMIN_PASSWORD)).await.expect("admin logs in");
    assert_eq!(ok.backend, "local");
    assert!(ok.identity.user.is_superuser);
    assert_eq!(ok.identity.groups, [Group::new("superuser").expect("group")]);

    // Wrong password, unknown user, empty password: invalid credentials, all alike.
    for (user, password) in [("admin", WRONG_PASSWORD), ("nobody", WRONG_PASSWORD), ("admin", "")] {
        let refused = chain.authenticate(&login(user, password)).await;
        assert!(matches!(refused, Err(LoginError::InvalidCredentials)), "{user}: {refused:?}");
    }

    // Inactive user with the right password: denied, the chain stops.
    let denied = chain.authenticate(&login("inactive", INACTIVE_PASSWORD)).await;
    assert!(matches!(denied, Err(LoginError::Denied { reason: DenyReason::Inactive, .. })), "{denied:?}");

    // An LDAP-owned account holds no local password and cannot be given one.
    let ldap = chain.authenticate(&login("ldapuser", LDAP_PASSWORD)).await;
    assert!(matches!(ldap, Err(LoginError::InvalidCredentials)), "{ldap:?}");
    let set = LocalBackend::new(store.clone()).set_password("ldapuser", &Secret::new(LDAP_PASSWORD)).await;
    assert!(matches!(set, Err(AuthError::Config(_))), "{set:?}");
    assert!(store.set_password_hash("ldapuser", Some("$argon2id$v=19$forged")).await.expect_err("ldap").is_invalid());
    assert_eq!(store.password_hash("ldapuser").await.expect("hash"), None);

    // A backend that is down: by default the chain goes on to the local accounts...
    let tolerant = AuthChain::new().with(Arc::new(Down)).with(local.clone());
    let ok = tolerant.authenticate(&login("admin", ADMIN_PASSWORD)).await.expect("local admin still logs in");
    assert_eq!(ok.backend, "local");
    // ...and a failed local check then reports the outage rather than a wrong password.
    let failed = tolerant.authenticate(&login("admin", WRONG_PASSWORD)).await;
    assert!(matches!(&failed, Err(LoginError::Unavailable { backend, .. }) if backend == "down"), "{failed:?}");
    // With ErrorPolicy::Stop the chain stops at the outage.
    let strict = AuthChain::new().with(Arc::new(Down)).with(local).on_error(ErrorPolicy::Stop);
    let stopped = strict.authenticate(&login("admin", ADMIN_PASSWORD)).await;
    assert!(matches!(&stopped, Err(LoginError::Unavailable { backend, .. }) if backend == "down"), "{stopped:?}");
    if let Err(error) = stopped {
        assert!(!format!("{error:?} {error}").contains(ADMIN_PASSWORD));
    }

    // Nothing above wrote a password into the log, though plenty was logged.
    let log = capture.text();
    assert!(log.contains("ralph::auth") && log.contains("login succeeded"), "log was:\n{log}");
    assert!(log.contains("login denied") && log.contains("authentication backend failed"), "log was:\n{log}");
    assert!(log.contains("admin"), "usernames are logged");
    for password in [ADMIN_PASSWORD, WRONG_PASSWORD, INACTIVE_PASSWORD, LDAP_PASSWORD] {
        assert!(!log.contains(password), "password {password:?} leaked into the log:\n{log}");
    }
    // Nor any password hash.
    assert!(!log.contains("$argon2id$"), "a hash leaked into the log:\n{log}");
}
