//! Kill slapd in the middle of a login loop: clean errors within the timeouts, local users
//! keep logging in through the same chain, LDAP logins recover once slapd is back.
//!
//! The test starts its own slapd (scripts/services/slapd/up.sh with a private run directory
//! and no bulk users) so that killing it cannot disturb tests using the shared one; a guard
//! stops it at the end, even when the test fails.

mod common;

use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::PrivateSlapd;
use ralph_core::auth::LoginError;
use ralph_core::{AuthChain, Credentials, LocalBackend, User, UserStore};
use ralph_ldap::LdapBackend;

/// What this test does to its private slapd.
trait Control {
    fn pid(&self) -> Option<u32>;
    fn kill(&self);
    fn restart(&self);
}

impl Control for PrivateSlapd {
    fn pid(&self) -> Option<u32> {
        std::fs::read_to_string(self.var("RALPH_TEST_LDAP_PID_FILE")).ok()?.trim().parse().ok()
    }

    fn kill(&self) {
        let pid = self.pid().expect("slapd pid");
        let status = Command::new("kill").args(["-9", &pid.to_string()]).status().expect("kill");
        assert!(status.success());
        let proc_dir = format!("/proc/{pid}");
        let deadline = Instant::now() + Duration::from_secs(5);
        while std::path::Path::new(&proc_dir).exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn restart(&self) {
        let status = Command::new("sh").args(["-c", &self.var("RALPH_TEST_LDAP_RESTART")]).status().expect("restart");
        assert!(status.success(), "restart failed");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serial_kill_slapd_during_login_loop() {
    // Runs wherever the shared fixture runs (slapd is installed there).
    let Some(_) = common::fixture() else { return };
    let slapd = PrivateSlapd::start();
    let fx = common::Fixture {
        url: slapd.var("RALPH_TEST_LDAP_URL"),
        base: slapd.var("RALPH_TEST_LDAP_BASE"),
        bind_dn: slapd.var("RALPH_TEST_LDAP_BIND_DN"),
        bind_password: slapd.var("RALPH_TEST_LDAP_BIND_PASSWORD"),
        ..common::fixture().expect("fixture")
    };
    let mut config = common::ralph_config(&fx);
    config.connect_timeout_ms = 2000;
    config.operation_timeout_ms = 3000;
    let store = common::store();
    store.create_user(&User::new("local-admin").expect("valid")).await.expect("local user");
    let local = LocalBackend::new(store.clone());
    local.set_password("local-admin", &"local-pw".into()).await.expect("password");
    let chain = AuthChain::new()
        .with(Arc::new(LdapBackend::new(config, store.clone()).expect("backend")))
        .with(Arc::new(local));
    let alice = Credentials::new("alice", "alice-pw");
    let admin = Credentials::new("local-admin", "local-pw");

    for _ in 0..20 {
        assert_eq!(chain.authenticate(&alice).await.expect("alice").backend, "ldap");
    }

    slapd.kill();
    // Worst case per attempt: a dead pooled connection, then a connect refused (fast on
    // loopback) or timed out (5 s at most with these timeouts); the bound is generous for a
    // loaded 2-core machine, and still catches a login that waits for the server to return.
    let limit = Duration::from_secs(15);
    for round in 0..5 {
        let started = Instant::now();
        let outcome = chain.authenticate(&alice).await;
        let took = started.elapsed();
        assert!(
            matches!(&outcome, Err(LoginError::Unavailable { backend, .. }) if backend == "ldap"),
            "round {round}: {outcome:?}"
        );
        assert!(took < limit, "round {round}: took {took:?}");
        let local = chain.authenticate(&admin).await.expect("local users log in while LDAP is down");
        assert_eq!(local.backend, "local");
    }
    // Wrong local password while LDAP is down: still an error, never a success.
    assert!(chain.authenticate(&Credentials::new("local-admin", "nope")).await.is_err());

    slapd.restart();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match chain.authenticate(&alice).await {
            Ok(login) => {
                assert_eq!(login.backend, "ldap");
                break;
            }
            Err(e) => assert!(Instant::now() < deadline, "logins did not recover: {e:?}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for _ in 0..20 {
        assert_eq!(chain.authenticate(&alice).await.expect("recovered").backend, "ldap");
    }
}
