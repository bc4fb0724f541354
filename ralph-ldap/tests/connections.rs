//! TLS (StartTLS, LDAPS, wrong CA), failover, timeouts, and secrets kept out of logs and errors.

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{fixture, ralph_config, store};
use ralph_core::{AuthBackend, AuthError, AuthOutcome, Credentials, UserStore};
use ralph_ldap::{LdapBackend, LdapConfig, TlsConfig, TlsMode};
use ralph_store::SqliteStore;

async fn backend(config: LdapConfig) -> (LdapBackend<SqliteStore>, tempfile::TempDir) {
    let (store, dir) = store().await;
    (LdapBackend::new(config, store).expect("backend"), dir)
}

async fn alice(b: &LdapBackend<SqliteStore>) -> Result<AuthOutcome, AuthError> {
    b.authenticate(&Credentials::new("alice", "alice-pw")).await
}

fn tls(mode: TlsMode, ca: &str, verify: bool) -> TlsConfig {
    TlsConfig { mode, ca_file: Some(ca.into()), verify }
}

#[tokio::test]
async fn starttls_and_ldaps_with_the_generated_ca() {
    let Some(fx) = fixture() else { return };
    let mut c = ralph_config(&fx);
    c.tls = tls(TlsMode::StartTls, &fx.ca, true);
    let (b, _d) = backend(c).await;
    assert!(matches!(alice(&b).await, Ok(AuthOutcome::Authenticated(_))), "StartTLS");

    let mut c = ralph_config(&fx);
    c.server_uris = vec![fx.ldaps_url.clone()];
    c.tls = tls(TlsMode::None, &fx.ca, true);
    let (b, _d) = backend(c).await;
    assert!(matches!(alice(&b).await, Ok(AuthOutcome::Authenticated(_))), "LDAPS");

    // The certificate names 127.0.0.1 and localhost: both verify.
    let mut c = ralph_config(&fx);
    c.server_uris = vec![fx.ldaps_url.replace("127.0.0.1", "localhost")];
    c.tls = tls(TlsMode::None, &fx.ca, true);
    let (b, _d) = backend(c).await;
    assert!(matches!(alice(&b).await, Ok(AuthOutcome::Authenticated(_))), "LDAPS by name");
}

#[tokio::test]
async fn wrong_ca_fails_verification_unless_explicitly_disabled() {
    let Some(fx) = fixture() else { return };
    for (uri, mode) in [(fx.url.clone(), TlsMode::StartTls), (fx.ldaps_url.clone(), TlsMode::None)] {
        let mut c = ralph_config(&fx);
        c.server_uris = vec![uri.clone()];
        c.tls = tls(mode, &fx.other_ca, true);
        let (b, _d) = backend(c).await;
        let outcome = alice(&b).await;
        assert!(matches!(&outcome, Err(e) if e.is_unavailable()), "{uri} {mode:?}: {outcome:?}");
        assert_eq!(b.store().get_user("alice").await.map(|u| u.is_some()).ok(), Some(false));

        // The system store does not know the test CA either: verification is on by default.
        let mut c = ralph_config(&fx);
        c.server_uris = vec![uri.clone()];
        c.tls = TlsConfig { mode, ca_file: None, verify: true };
        let (b, _d) = backend(c).await;
        assert!(alice(&b).await.is_err(), "{uri}: an unknown CA was trusted");

        let mut c = ralph_config(&fx);
        c.server_uris = vec![uri.clone()];
        c.tls = tls(mode, &fx.other_ca, false);
        let (b, _d) = backend(c).await;
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
    let (b, _d) = backend(c).await;
    assert!(matches!(alice(&b).await, Ok(AuthOutcome::Authenticated(_))));

    let mut c = ralph_config(&fx);
    c.server_uris = vec![format!("ldap://127.0.0.1:{}", closed_port()), format!("ldap://127.0.0.1:{}", closed_port())];
    let (b, _d) = backend(c).await;
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
    let (b, _d) = backend(c).await;
    let started = Instant::now();
    let outcome = alice(&b).await;
    let took = started.elapsed();
    assert!(matches!(&outcome, Err(AuthError::Unavailable(_))), "{outcome:?}");
    assert!(took < Duration::from_secs(3), "took {took:?}");

    // StartTLS against the silent server: the connect timeout covers the handshake.
    let mut c = ralph_config(&fx);
    c.server_uris = vec![uri, fx.url.clone()];
    c.connect_timeout_ms = 300;
    c.tls = tls(TlsMode::StartTls, &fx.ca, true);
    let (b, _d) = backend(c).await;
    let started = Instant::now();
    assert!(matches!(alice(&b).await, Ok(AuthOutcome::Authenticated(_))), "failover after a timeout");
    assert!(started.elapsed() < Duration::from_secs(3));
    drop(silent);
}

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().map_err(|_| std::io::Error::other("poisoned"))?.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn passwords_never_reach_logs_debug_or_errors() {
    let Some(fx) = fixture() else { return };
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let user_pw = "alice-pw";
    let wrong_pw = "Very-Wrong-Password-42";
    let mut texts = Vec::new();

    let (b, _d) = backend(ralph_config(&fx)).await;
    texts.push(format!("{b:?} {:?}", b.config()));
    texts.push(format!("{:?}", b.authenticate(&Credentials::new("alice", user_pw)).await));
    texts.push(format!("{:?}", b.authenticate(&Credentials::new("alice", wrong_pw)).await));
    texts.push(format!("{:?}", Credentials::new("alice", user_pw)));

    // A refused service bind, and a server that is down: errors in Display, Debug, and chain.
    let mut c = ralph_config(&fx);
    c.bind_password = Some(wrong_pw.into());
    let (b, _d) = backend(c).await;
    let e = b.authenticate(&Credentials::new("alice", user_pw)).await.expect_err("bad service password");
    texts.push(format!("{e} {e:?} {:?}", std::error::Error::source(&e).map(ToString::to_string)));

    let mut c = ralph_config(&fx);
    c.server_uris = vec![format!("ldap://127.0.0.1:{}", closed_port())];
    let (b, _d) = backend(c).await;
    let e = b.authenticate(&Credentials::new("alice", user_pw)).await.expect_err("down");
    let mut chain = format!("{e} {e:?}");
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        chain.push_str(&format!(" / {s} {s:?}"));
        source = s.source();
    }
    texts.push(chain);

    let logs = String::from_utf8(captured.0.lock().expect("lock").clone()).expect("utf8");
    assert!(logs.contains("ralph::ldap"), "expected ralph::ldap events, got: {logs}");
    for secret in [user_pw, wrong_pw, fx.bind_password.as_str()] {
        assert!(!logs.contains(secret), "secret in logs");
        for t in &texts {
            assert!(!t.contains(secret), "secret in {t}");
        }
    }
}
