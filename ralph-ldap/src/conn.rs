//! Connections: TLS settings, failover across server URIs, the two connection pools, and
//! searches that skip referrals and never panic on a malformed entry.
//!
//! Two pools, both [`deadpool`]: the *service* pool holds connections bound as the service
//! account, used for every search; the *bind* pool holds connections used only to check user
//! passwords. A connection in the bind pool may be left bound as the last user who logged in,
//! so it is never given service-account work; the service pool never sees a user bind.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use deadpool::managed::{self, Metrics, Object, RecycleError, RecycleResult};
use ldap3::adapters::PagedResults;
use ldap3::asn1::{PL, StructureTag};
use ldap3::{Ldap, LdapConnAsync, LdapConnSettings, ResultEntry};
use ralph_core::Secret;
use tracing::{debug, warn};

use crate::config::LdapConfig;
use crate::{Error, Result, TRACE_TARGET};

/// One directory entry: its DN and text attributes (names as the server spelled them).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Entry {
    /// The entry's DN.
    pub dn: String,
    /// Attribute values; binary (non-UTF-8) values are left out.
    pub attrs: HashMap<String, Vec<String>>,
}

impl Entry {
    /// The values of `attr` (case-insensitive name).
    #[must_use]
    pub fn values(&self, attr: &str) -> &[String] {
        self.attrs.iter().find(|(k, _)| k.eq_ignore_ascii_case(attr)).map_or(&[], |(_, v)| v.as_slice())
    }

    /// The first value of `attr`, trimmed, when not blank.
    #[must_use]
    pub fn first(&self, attr: &str) -> Option<&str> {
        self.values(attr).iter().map(|v| v.trim()).find(|v| !v.is_empty())
    }
}

/// Decodes a SearchResultEntry without the panics of `ldap3::SearchEntry::construct`: a
/// malformed entry from a broken or hostile server is an error.
pub(crate) fn parse_entry(entry: ResultEntry) -> Result<Entry> {
    let malformed = |what: &str| Error::Protocol(format!("search result entry: {what}"));
    let tag = entry.0;
    let PL::C(mut parts) = tag.payload else { return Err(malformed("not constructed")) };
    if parts.len() != 2 {
        return Err(malformed("expected DN and attributes"));
    }
    let attrs_tag = parts.pop().ok_or_else(|| malformed("no attributes"))?;
    let dn_tag = parts.pop().ok_or_else(|| malformed("no DN"))?;
    let dn = primitive_string(dn_tag).ok_or_else(|| malformed("DN is not a UTF-8 string"))?;
    let PL::C(attr_list) = attrs_tag.payload else { return Err(malformed("attribute list")) };
    let mut attrs: HashMap<String, Vec<String>> = HashMap::new();
    for partial in attr_list {
        let PL::C(mut pair) = partial.payload else { return Err(malformed("attribute")) };
        if pair.len() != 2 {
            return Err(malformed("attribute needs a type and values"));
        }
        let values_tag = pair.pop().ok_or_else(|| malformed("values"))?;
        let name = pair.pop().and_then(primitive_string).ok_or_else(|| malformed("attribute type"))?;
        let PL::C(values) = values_tag.payload else { return Err(malformed("value set")) };
        let slot = attrs.entry(name).or_default();
        for value in values {
            match value.payload {
                PL::P(bytes) => {
                    if let Ok(text) = String::from_utf8(bytes) {
                        slot.push(text);
                    }
                }
                PL::C(_) => return Err(malformed("attribute value")),
            }
        }
    }
    Ok(Entry { dn, attrs })
}

fn primitive_string(tag: StructureTag) -> Option<String> {
    match tag.payload {
        PL::P(bytes) => String::from_utf8(bytes).ok(),
        PL::C(_) => None,
    }
}

/// How to open connections: URIs in failover order, TLS, timeouts.
#[derive(Clone)]
pub(crate) struct Connector {
    uris: Arc<[String]>,
    settings: LdapConnSettings,
    starttls: bool,
    connect_timeout: Duration,
    op_timeout: Duration,
}

impl Connector {
    pub(crate) fn new(config: &LdapConfig) -> Result<Self> {
        let starttls = config.tls.uses_start_tls();
        for uri in config.plaintext_uris() {
            // Allowed explicitly (validate refuses it otherwise), but never silent.
            warn!(target: TRACE_TARGET, uri = %uri, "passwords go to this server in clear text (allowed by configuration)");
        }
        let settings = tls_settings(config, LdapConnSettings::new().set_conn_timeout(config.connect_timeout()))?;
        Ok(Self {
            uris: config.server_uris.clone().into(),
            settings,
            starttls,
            connect_timeout: config.connect_timeout(),
            op_timeout: config.operation_timeout(),
        })
    }

    pub(crate) fn op_timeout(&self) -> Duration {
        self.op_timeout
    }

    /// Opens a connection to the first URI that answers (and, with `bind`, accepts the bind).
    pub(crate) async fn connect(&self, bind: Option<(&str, &Secret)>) -> Result<Ldap> {
        let mut last = None;
        for uri in self.uris.iter() {
            match self.connect_one(uri, bind).await {
                Ok(ldap) => return Ok(ldap),
                // A refused service bind is the same on every replica: do not hide it.
                Err(e @ Error::ServiceBind { .. }) => return Err(e),
                Err(e) => {
                    warn!(target: TRACE_TARGET, uri = %uri, error = %e, "LDAP server failed, trying the next one");
                    last = Some(e);
                }
            }
        }
        Err(Error::Unreachable {
            tried: self.uris.join(", "),
            source: Box::new(last.unwrap_or_else(|| Error::Config("no server URIs".into()))),
        })
    }

    async fn connect_one(&self, uri: &str, bind: Option<(&str, &Secret)>) -> Result<Ldap> {
        let started = std::time::Instant::now();
        let (conn, mut ldap) =
            LdapConnAsync::with_settings(self.settings.clone(), uri).await.map_err(|source| match source {
                ldap3::LdapError::Timeout { .. } => Error::Timeout { op: "connect" },
                source => Error::Connect { uri: uri.to_owned(), source: Box::new(source) },
            })?;
        let uri_owned = uri.to_owned();
        tokio::spawn(async move {
            if let Err(e) = conn.drive().await {
                debug!(target: TRACE_TARGET, uri = %uri_owned, error = %e, "LDAP connection closed");
            }
        });
        if let Some((dn, password)) = bind {
            let result = ldap
                .with_timeout(self.op_timeout)
                .simple_bind(dn, password.expose())
                .await
                .map_err(|e| Error::from_ldap("service bind", e))?;
            if result.rc != 0 {
                return Err(Error::ServiceBind { rc: result.rc });
            }
        }
        debug!(
            target: TRACE_TARGET,
            uri = %uri,
            starttls = self.starttls,
            elapsed_secs = started.elapsed().as_secs_f64(),
            "LDAP connection opened"
        );
        Ok(ldap)
    }

    /// The longest a `connect` can take: every URI's connect timeout plus a bind.
    pub(crate) fn worst_connect(&self) -> Duration {
        let uris = u32::try_from(self.uris.len()).unwrap_or(u32::MAX);
        (self.connect_timeout + self.op_timeout).saturating_mul(uris)
    }
}

/// The TLS part of the connection settings: one rustls client configuration, built here once
/// and shared by every connection of both pools.
#[cfg(feature = "rustls")]
fn tls_settings(config: &LdapConfig, settings: LdapConnSettings) -> Result<LdapConnSettings> {
    Ok(settings
        .set_config(tls::client_config(&config.tls)?)
        .set_starttls(config.tls.uses_start_tls())
        .set_no_tls_verify(!config.tls.verify))
}

/// Built without a TLS backend: a configuration that needs TLS is refused, never downgraded.
#[cfg(not(feature = "rustls"))]
fn tls_settings(config: &LdapConfig, settings: LdapConnSettings) -> Result<LdapConnSettings> {
    let ldaps = config.server_uris.iter().find(|uri| uri.get(..8).is_some_and(|s| s.eq_ignore_ascii_case("ldaps://")));
    if config.tls.uses_start_tls() || ldaps.is_some() {
        return Err(Error::Config(
            "TLS (StartTLS or ldaps://) needs ralph-ldap's `rustls` feature, which this build leaves out".into(),
        ));
    }
    Ok(settings)
}

/// rustls client configurations from [`crate::TlsConfig`], on the ring provider (passed in,
/// so nothing is installed process-wide).
#[cfg(feature = "rustls")]
mod tls {
    use std::sync::Arc;

    use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
    use rustls::crypto::WebPkiSupportedAlgorithms;
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
    use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
    use tracing::warn;

    use crate::config::TlsConfig;
    use crate::{Error, Result, TRACE_TARGET};

    pub(super) fn client_config(tls: &TlsConfig) -> Result<Arc<ClientConfig>> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let algorithms = provider.signature_verification_algorithms;
        let builder = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::Config(format!("TLS setup failed: {e}")))?;
        let config = if tls.verify {
            builder.with_root_certificates(roots(tls)?).with_no_client_auth()
        } else {
            warn!(target: TRACE_TARGET, "TLS certificate verification is disabled by configuration");
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AnyCertificate(algorithms)))
                .with_no_client_auth()
        };
        Ok(Arc::new(config))
    }

    /// The configured CA file only (a certificate from any public CA is not enough), else the
    /// system store.
    fn roots(tls: &TlsConfig) -> Result<RootCertStore> {
        if let Some(path) = &tls.ca_file {
            let pem = std::fs::read(path)
                .map_err(|e| Error::Config(format!("cannot read tls.ca_file {}: {e}", path.display())))?;
            return pem_roots(&pem).map_err(|e| Error::Config(format!("tls.ca_file {}: {e}", path.display())));
        }
        let found = rustls_native_certs::load_native_certs();
        for error in &found.errors {
            warn!(target: TRACE_TARGET, %error, "reading the system CA store");
        }
        let mut store = RootCertStore::empty();
        let (added, refused) = store.add_parsable_certificates(found.certs);
        if refused > 0 {
            warn!(target: TRACE_TARGET, refused, "system CA certificates that cannot be used were skipped");
        }
        if added == 0 {
            warn!(target: TRACE_TARGET, "no system CA certificates found: TLS servers cannot be verified");
        }
        Ok(store)
    }

    /// The certificates of a PEM bundle as trust anchors (other PEM blocks and text between
    /// them are skipped); a malformed certificate, or none at all, is an error.
    pub(super) fn pem_roots(pem: &[u8]) -> std::result::Result<RootCertStore, String> {
        let mut store = RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(pem) {
            let cert = cert.map_err(|e| e.to_string())?;
            store.add(cert).map_err(|e| e.to_string())?;
        }
        if store.is_empty() {
            return Err("no certificates found".to_owned());
        }
        Ok(store)
    }

    /// `verify = false`: any certificate for any name. The handshake signature is still
    /// checked, as native-tls did with invalid certificates accepted.
    #[derive(Debug)]
    struct AnyCertificate(WebPkiSupportedAlgorithms);

    impl ServerCertVerifier for AnyCertificate {
        fn verify_server_cert(
            &self,
            _: &CertificateDer<'_>,
            _: &[CertificateDer<'_>],
            _: &ServerName<'_>,
            _: &[u8],
            _: UnixTime,
        ) -> std::result::Result<ServerCertVerified, rustls::Error> {
            Ok(ServerCertVerified::assertion())
        }

        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0)
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0)
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.0.supported_schemes()
        }
    }
}

/// What a pool's connections are for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Role {
    /// Bound as the service account; searches only.
    Service,
    /// User binds only.
    UserBind,
}

/// deadpool manager. `create` runs in the caller's task and returns its own error, so an
/// unreachable directory is reported at once with its cause (bb8 0.8 connects in the
/// background and reports only a timeout); `recycle` drops connections whose driver ended.
pub(crate) struct Manager {
    connector: Connector,
    role: Role,
    bind_dn: Option<String>,
    bind_password: Secret,
}

impl managed::Manager for Manager {
    type Type = Ldap;
    type Error = Error;

    async fn create(&self) -> Result<Ldap> {
        match (self.role, &self.bind_dn) {
            (Role::Service, Some(dn)) => self.connector.connect(Some((dn, &self.bind_password))).await,
            _ => self.connector.connect(None).await,
        }
    }

    async fn recycle(&self, conn: &mut Ldap, _: &Metrics) -> RecycleResult<Error> {
        if conn.is_closed() { Err(RecycleError::message("connection closed")) } else { Ok(()) }
    }
}

pub(crate) type Pool = managed::Pool<Manager>;

pub(crate) fn pool(config: &LdapConfig, connector: &Connector, role: Role) -> Result<Pool> {
    let manager = Manager {
        connector: connector.clone(),
        role,
        bind_dn: config.bind_dn.clone(),
        bind_password: config.bind_password.clone().unwrap_or_default(),
    };
    managed::Pool::builder(manager)
        .max_size(config.pool_size)
        .runtime(deadpool::Runtime::Tokio1)
        .wait_timeout(Some(connector.op_timeout()))
        .create_timeout(Some(connector.worst_connect()))
        .recycle_timeout(Some(connector.op_timeout()))
        .build()
        .map_err(|e| Error::Config(format!("connection pool: {e}")))
}

/// Takes a connection from `pool`, mapping pool errors to ours.
pub(crate) async fn checkout(pool: &Pool) -> Result<Object<Manager>> {
    pool.get().await.map_err(|e| match e {
        managed::PoolError::Backend(e) => e,
        managed::PoolError::Timeout(_) => Error::Timeout { op: "connection checkout" },
        other => Error::Config(format!("connection pool: {other}")),
    })
}

/// Whether an error means this connection is dead and a fresh one may succeed.
pub(crate) fn is_stale(error: &Error) -> bool {
    matches!(error, Error::ConnectionLost { .. })
}

/// A finished search: the entries, with continuation references dropped (never chased).
pub(crate) struct Found {
    pub(crate) entries: Vec<Entry>,
    /// Continuation references met (and ignored).
    pub(crate) referrals: usize,
    /// The server answered `referral`: the base itself is elsewhere.
    pub(crate) referred: bool,
    /// The server answered `noSuchObject`: the base does not exist.
    pub(crate) missing: bool,
}

/// One search on `ldap`, collecting entries; `sizeLimitExceeded` and any other non-success
/// result is an error (so a partial answer is never mistaken for the whole answer). A result
/// of `referral` (the base is elsewhere) or `noSuchObject` (the base does not exist) is an empty
/// answer flagged as such ([`Found::referred`], [`Found::missing`]): the caller decides whether
/// that means "nothing there" (a user lookup) or an error (a group lookup, which fails closed).
pub(crate) async fn search(
    ldap: &mut Ldap,
    op_timeout: Duration,
    base: &str,
    scope: ldap3::Scope,
    filter: &str,
    attrs: &[&str],
) -> Result<Found> {
    let mut stream = ldap
        .with_timeout(op_timeout)
        .streaming_search(base, scope, filter, attrs.to_vec())
        .await
        .map_err(|e| Error::from_ldap("search", e))?;
    let mut found = Found { entries: Vec::new(), referrals: 0, referred: false, missing: false };
    loop {
        match stream.next().await {
            Ok(Some(item)) if item.is_ref() => found.referrals += 1,
            Ok(Some(item)) if item.is_intermediate() => {}
            Ok(Some(item)) => found.entries.push(parse_entry(item)?),
            Ok(None) => break,
            Err(e) => return Err(Error::from_ldap("search", e)),
        }
    }
    let result = stream.finish().await;
    finish_search(result, found)
}

fn finish_search(result: ldap3::LdapResult, found: Found) -> Result<Found> {
    match result.rc {
        0 => Ok(found),
        // The base is elsewhere (not chased) or does not exist: nothing here, flagged.
        10 | 32 => Ok(Found {
            entries: Vec::new(),
            referrals: found.referrals,
            referred: result.rc == 10,
            missing: result.rc == 32,
        }),
        rc => Err(Error::Result { op: "search", rc, text: result.text }),
    }
}

/// An RFC 2696 paged search read a batch at a time. ldap3's paged-results adapter asks for the
/// next page only once the current one has been read, so what is held at any time is about one
/// page, however large the listing. Referrals are counted and skipped, never chased.
pub(crate) struct PagedSearch {
    stream: ldap3::SearchStream<'static, String, Vec<String>>,
    referrals: usize,
    done: bool,
}

impl PagedSearch {
    /// Starts the search on `ldap` (a service connection) with pages of `page_size`.
    pub(crate) async fn start(
        ldap: &mut Ldap,
        op_timeout: Duration,
        page_size: i32,
        search: (&str, ldap3::Scope, &str),
        attrs: Vec<String>,
    ) -> Result<Self> {
        let (base, scope, filter) = search;
        let stream = ldap
            .with_timeout(op_timeout)
            .streaming_search_with(PagedResults::new(page_size), base, scope, filter, attrs)
            .await
            .map_err(|e| Error::from_ldap("paged search", e))?;
        Ok(Self { stream, referrals: 0, done: false })
    }

    /// The next (at most) `max` entries; empty once the listing is over.
    pub(crate) async fn next_batch(&mut self, max: usize) -> Result<Vec<Entry>> {
        let mut batch = Vec::with_capacity(max.min(4096));
        while !self.done && batch.len() < max {
            match self.stream.next().await {
                Ok(Some(item)) if item.is_ref() => self.referrals += 1,
                Ok(Some(item)) if item.is_intermediate() => {}
                Ok(Some(item)) => batch.push(parse_entry(item)?),
                Ok(None) => self.done = true,
                Err(e) => return Err(Error::from_ldap("paged search", e)),
            }
        }
        Ok(batch)
    }

    /// Ends the search: the number of continuation references skipped, or the error the server
    /// ended it with (a search cut short is an error, never a complete listing).
    pub(crate) async fn finish(mut self) -> Result<usize> {
        let result = self.stream.finish().await;
        if result.rc != 0 {
            return Err(Error::Result { op: "paged search", rc: result.rc, text: result.text });
        }
        Ok(self.referrals)
    }
}

#[cfg(all(test, feature = "rustls"))]
mod tests {
    /// The number of trust anchors read from a PEM bundle.
    fn pem_certificates(pem: &[u8]) -> Result<usize, String> {
        super::tls::pem_roots(pem).map(|store| store.len())
    }

    /// The test directory's two CA certificates, when the services are running.
    fn cas() -> Option<(String, String)> {
        let read = |var: &str| std::fs::read_to_string(std::env::var(var).ok()?).ok();
        Some((read("RALPH_TEST_LDAP_CA")?, read("RALPH_TEST_LDAP_OTHER_CA")?))
    }

    #[test]
    fn ca_bundles_are_split_and_bad_ones_refused() {
        for bad in [&b""[..], b"not a certificate", b"\xff\xfe\x00binary"] {
            assert!(pem_certificates(bad).is_err(), "{bad:?} accepted");
        }
        let Some((ca, other)) = cas() else { return };
        assert_eq!(pem_certificates(ca.as_bytes()), Ok(1));
        // Text and other PEM blocks between the certificates are skipped, as before.
        let key = "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n";
        let bundle = format!("# corp CA\n{ca}\n{key}some text\n{other}");
        assert_eq!(pem_certificates(bundle.as_bytes()), Ok(2));
        let unterminated = &ca[..ca.find("-----END").expect("PEM")];
        assert!(pem_certificates(unterminated.as_bytes()).is_err(), "unterminated certificate accepted");
        let corrupt = ca.replacen("MII", "M!I", 1);
        assert!(pem_certificates(corrupt.as_bytes()).is_err(), "corrupt certificate accepted");
    }
}
