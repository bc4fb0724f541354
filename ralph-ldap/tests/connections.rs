//! TLS (StartTLS, LDAPS, wrong CA), failover, timeouts, and secrets kept out of logs and errors.

mod common;

use std::time::{Duration, Instant};

use common::{Captured, fixture, ralph_config, store};
use ralph_core::testing::MemoryStore;
use ralph_core::{AuthBackend, AuthError, AuthOutcome, Credentials, UserStore};
use ralph_ldap::{LdapBackend, LdapConfig, TlsConfig, TlsMode};

fn backend(config: LdapConfig) -> LdapBackend<MemoryStore> {
    LdapBackend::new(config, store()).expect("backend")
}

async fn alice(b: &LdapBackend<MemoryStore>) -> Result<AuthOutcome, AuthError> {
    b.authenticate(&Credentials::new("alice", "alice-pw")).await
}

fn tls(mode: TlsMode, ca: &str, verify: bool) -> TlsConfig {
    TlsConfig { mode: Some(mode), ca_file: Some(ca.into()), verify }
}

#[tokio::test]
async fn starttls_and_ldaps_with_the_generated_ca() {
    let Some(fx) = fixture() else { return };
    let mut c = ralph_config(&fx);
    c.tls = tls(TlsMode::StartTls, &fx.ca, true);
    let b = backend(c);
    assert!(matches!(alice(&b).await, Ok(AuthOutcome::Authenticated(_))), "StartTLS");

    let mut c = ralph_config(&fx);
    c.server_uris = vec![fx.ldaps_url.clone()];
    c.tls = tls(TlsMode::None, &fx.ca, true);
    let b = backend(c);
    assert!(matches!(alice(&b).await, Ok(AuthOutcome::Authenticated(_))), "LDAPS");

    // The certificate names 127.0.0.1 and localhost: both verify.
    let mut c = ralph_config(&fx);
    c.server_uris = vec![fx.ldaps_url.replace("127.0.0.1", "localhost")];
    c.tls = tls(TlsMode::None, &fx.ca, true);
    let b = backend(c);
    assert!(matches!(alice(&b).await, Ok(AuthOutcome::Authenticated(_))), "LDAPS by name");
}

#[tokio::test]
async fn wrong_ca_fails_verification_unless_explicitly_disabled() {
    let Some(fx) = fixture() else { return };
    for (uri, mode) in [(fx.url.clone(), TlsMode::StartTls), (fx.ldaps_url.clone(), TlsMode::None)] {
        let mut c = ralph_config(&fx);
        c.server_uris = vec![uri.clone()];
        c.tls = tls(mode, &fx.other_ca, true);
        let b = backend(c);
        let outcome = alice(&b).await;
        assert!(matches!(&outcome, Err(e) if e.is_unavailable()), "{uri} {mode:?}: {outcome:?}");
        assert_eq!(b.store().get_user("alice").await.map(|u| u.is_some()).ok(), Some(false));

        // The system store does not know the test CA either: verification is on by default.
        let mut c = ralph_config(&fx);
        c.server_uris = vec![uri.clone()];
        c.tls = TlsConfig { mode: Some(mode), ca_file: None, verify: true };
        let b = backend(c);
        assert!(alice(&b).await.is_err(), "{uri}: an unknown CA was trusted");

        let mut c = ralph_config(&fx);
        c.server_uris = vec![uri.clone()];
        c.tls = tls(mode, &fx.other_ca, false);
        let b = backend(c);
        assert!(matches!(alice(&b).await, Ok(AuthOutcome::Authenticated(_))), "{uri}: verify = false");
    }
}

/// A loopback port nothing listens on (bound, then closed).
fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

#[tokio::test]
async fn failover_to_the_next_uri() {
    let Some(fx) = fixture() else { return };
    let mut c = ralph_config(&fx);
    c.server_uris = vec![format!("ldap://127.0.0.1:{}", closed_port()), fx.url.clone()];
    let b = backend(c);
    assert!(matches!(alice(&b).await, Ok(AuthOutcome::Authenticated(_))));

    let mut c = ralph_config(&fx);
    c.server_uris = vec![format!("ldap://127.0.0.1:{}", closed_port()), format!("ldap://127.0.0.1:{}", closed_port())];
    let b = backend(c);
    let outcome = alice(&b).await;
    assert!(matches!(&outcome, Err(AuthError::Unavailable(_))), "{outcome:?}");
}

#[tokio::test]
async fn silent_servers_time_out_cleanly() {
    let Some(fx) = fixture() else { return };
    // Accepts connections (the kernel completes the handshake) but never answers.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let uri = format!("ldap://{}", silent.local_addr().expect("addr"));
    let mut c = ralph_config(&fx);
    c.server_uris = vec![uri.clone()];
    c.connect_timeout_ms = 300;
    c.operation_timeout_ms = 400;
    let b = backend(c);
    let started = Instant::now();
    let outcome = alice(&b).await;
    let took = started.elapsed();
    assert!(matches!(&outcome, Err(AuthError::Unavailable(_))), "{outcome:?}");
    // Generous for a loaded machine, and still far from "never": a missing timeout hangs.
    assert!(took < Duration::from_secs(15), "took {took:?}");

    // StartTLS against the silent server: the connect timeout covers the handshake. It also
    // covers the real server's TLS handshake after the failover, hence not too short.
    let mut c = ralph_config(&fx);
    c.server_uris = vec![uri, fx.url.clone()];
    c.connect_timeout_ms = 1500;
    c.tls = tls(TlsMode::StartTls, &fx.ca, true);
    let b = backend(c);
    let started = Instant::now();
    assert!(matches!(alice(&b).await, Ok(AuthOutcome::Authenticated(_))), "failover after a timeout");
    assert!(started.elapsed() < Duration::from_secs(15), "took {:?}", started.elapsed());
    drop(silent);
}

#[tokio::test]
async fn passwords_never_reach_logs_debug_or_errors() {
    let Some(fx) = fixture() else { return };
    let (captured, _guard) = Captured::start();

    let user_pw = "alice-pw";
    let wrong_pw = "Very-Wrong-Password-42";
    let mut texts = Vec::new();

    let b = backend(ralph_config(&fx));
    texts.push(format!("{b:?} {:?}", b.config()));
    texts.push(format!("{:?}", b.authenticate(&Credentials::new("alice", user_pw)).await));
    texts.push(format!("{:?}", b.authenticate(&Credentials::new("alice", wrong_pw)).await));
    texts.push(format!("{:?}", Credentials::new("alice", user_pw)));

    // A refused service bind, and a server that is down: errors in Display, Debug, and chain.
    let mut c = ralph_config(&fx);
    c.bind_password = Some(wrong_pw.into());
    let b = backend(c);
    let e = b.authenticate(&Credentials::new("alice", user_pw)).await.expect_err("bad service password");
    texts.push(format!("{e} {e:?} {:?}", std::error::Error::source(&e).map(ToString::to_string)));

    let mut c = ralph_config(&fx);
    c.server_uris = vec![format!("ldap://127.0.0.1:{}", closed_port())];
    let b = backend(c);
    let e = b.authenticate(&Credentials::new("alice", user_pw)).await.expect_err("down");
    let mut chain = format!("{e} {e:?}");
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        chain.push_str(&format!(" / {s} {s:?}"));
        source = s.source();
    }
    texts.push(chain);

    let logs = captured.text();
    assert!(logs.contains("ralph::ldap"), "expected ralph::ldap events, got: {logs}");
    for secret in [user_pw, wrong_pw, fx.bind_password.as_str()] {
        assert!(!logs.contains(secret), "secret in logs");
        for t in &texts {
            assert!(!t.contains(secret), "secret in {t}");
        }
    }
}

#[tokio::test]
async fn plaintext_to_a_remote_server_must_be_chosen_and_is_never_silent() {
    let Some(fx) = fixture() else { return };
    // The same settings pointed at a host that is not loopback, without StartTLS: every
    // password would cross the network in clear, so the configuration is refused.
    let remote = "ldap://ldap.example.invalid:389";
    let text = common::ralph_toml(&fx).replace(&fx.url, remote);
    let err = LdapConfig::from_toml_str(&text).expect_err("plaintext to a remote host accepted silently");
    assert!(matches!(&err, ralph_ldap::Error::Config(m) if m.contains("clear text")), "{err}");
    assert!(!err.to_string().contains(&fx.bind_password), "secret in {err}");
    let mut c = ralph_config(&fx);
    c.server_uris = vec![fx.url.clone(), remote.to_owned()];
    let store = store();
    let err = LdapBackend::new(c.clone(), store.clone()).expect_err("backend built for a plaintext remote");
    assert!(matches!(err, ralph_ldap::Error::Config(_)), "{err:?}");

    // Chosen explicitly (either way), it is accepted with a warning naming the server.
    let mut no_tls = c.clone();
    no_tls.tls = TlsConfig { mode: Some(TlsMode::None), ..TlsConfig::default() };
    let mut allow_plaintext = c.clone();
    allow_plaintext.allow_plaintext = true;
    for (how, config) in [("tls.mode = none", no_tls), ("allow_plaintext", allow_plaintext)] {
        let (captured, guard) = Captured::start();
        let b = LdapBackend::new(config, store.clone()).unwrap_or_else(|e| panic!("{how}: {e}"));
        drop(guard);
        let logs = captured.text();
        assert!(
            logs.contains("WARN") && logs.contains("clear text") && logs.contains("ldap.example.invalid"),
            "{how}: {logs}"
        );
        assert!(!logs.contains(&fx.url), "{how}: loopback reported as plaintext: {logs}");
        // The loopback server comes first: logins work as before.
        assert!(matches!(alice(&b).await, Ok(AuthOutcome::Authenticated(_))), "{how}");
    }
    let text = format!("allow_plaintext = true\n{text}");
    assert!(LdapConfig::from_toml_str(&text).is_ok());

    // Loopback is exempt: the fixture itself is plain ldap:// on 127.0.0.1, without opt-in.
    let c = ralph_config(&fx);
    assert!(c.tls.mode.is_none() && !c.allow_plaintext);
    let b = backend(c);
    assert!(matches!(alice(&b).await, Ok(AuthOutcome::Authenticated(_))));
}

#[tokio::test]
async fn a_service_bind_dn_without_password_is_refused() {
    let Some(fx) = fixture() else { return };
    // What such a bind does: the fixture, like Active Directory, lets a DN with no password
    // through as anonymous.
    let (conn, mut raw) = ldap3::LdapConnAsync::new(&fx.url).await.expect("connect");
    ldap3::drive!(conn);
    assert_eq!(raw.simple_bind(&fx.bind_dn, "").await.expect("bind").rc, 0, "fixture refuses unauthenticated binds");

    let text = common::ralph_toml(&fx).replace(&format!("bind_password = \"{}\"", fx.bind_password), "");
    assert!(!text.contains("bind_password"), "{text}");
    let err = LdapConfig::from_toml_str(&text).expect_err("bind_dn without bind_password accepted");
    assert!(matches!(&err, ralph_ldap::Error::Config(m) if m.contains("bind_password")), "{err}");
    let empty = common::ralph_toml(&fx).replace(&fx.bind_password, "");
    assert!(matches!(LdapConfig::from_toml_str(&empty), Err(ralph_ldap::Error::Config(_))), "empty bind_password");

    let store = store();
    for password in [None, Some("".into())] {
        let mut c = ralph_config(&fx);
        c.bind_password = password;
        let err = LdapBackend::new(c, store.clone()).expect_err("backend with an unauthenticated service bind");
        assert!(matches!(err, ralph_ldap::Error::Config(_)), "{err:?}");
    }
    // Anonymous on purpose (no bind_dn at all) stays possible.
    let mut c = ralph_config(&fx);
    c.bind_dn = None;
    c.bind_password = None;
    assert!(LdapBackend::new(c, store).is_ok());
}
