//! The HTTPS probe's TLS client: one per process, built on first use, accepting any certificate.
//!
//! Only the `Server` header is read, and BMCs ship self-signed certificates, so nothing is
//! verified. The backend is a feature: `rustls` (ring provider, the default) or `native-tls`;
//! with both enabled, rustls is used.

use std::net::IpAddr;
use std::sync::LazyLock;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

/// A TLS stream the probe reads and writes.
pub(super) trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}

impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// The shared client, or why it could not be built (reported by every HTTPS probe).
static CLIENT: LazyLock<Result<Client, String>> = LazyLock::new(Client::new);

/// Runs the TLS handshake on `stream` with the shared client. `Err(Some(_))` is a local
/// failure (no TLS client could be built); `Err(None)` means the peer did not complete a
/// handshake (a port that speaks no TLS), which is no error of ours.
pub(super) async fn handshake(ip: IpAddr, stream: TcpStream) -> Result<Box<dyn Stream>, Option<String>> {
    let client = CLIENT.as_ref().map_err(|e| Some(e.clone()))?;
    client.connect(ip, stream).await.map_err(|_| None)
}

#[cfg(feature = "rustls")]
mod backend {
    use std::net::IpAddr;
    use std::sync::Arc;

    use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
    use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
    use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};
    use tokio::net::TcpStream;

    use super::Stream;

    /// tokio-rustls over one shared [`ClientConfig`] on the ring provider (passed in: nothing
    /// is installed process-wide).
    pub(super) struct Client(tokio_rustls::TlsConnector);

    impl Client {
        pub(super) fn new() -> Result<Self, String> {
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let config = ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map_err(|e| format!("TLS client setup: {e}"))?
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AnyServer))
                .with_no_client_auth();
            Ok(Self(tokio_rustls::TlsConnector::from(Arc::new(config))))
        }

        pub(super) async fn connect(&self, ip: IpAddr, stream: TcpStream) -> std::io::Result<Box<dyn Stream>> {
            let tls = self.0.connect(ServerName::IpAddress(ip.into()), stream).await?;
            Ok(Box::new(tls))
        }
    }

    /// Accepts any certificate and any handshake signature. Checking the signature would prove
    /// only that the peer holds the key of a certificate nobody vouches for, and would turn
    /// away old BMCs whose keys the verifier refuses (1024-bit RSA, SHA-1).
    #[derive(Debug)]
    struct AnyServer;

    impl ServerCertVerifier for AnyServer {
        fn verify_server_cert(
            &self,
            _: &CertificateDer<'_>,
            _: &[CertificateDer<'_>],
            _: &ServerName<'_>,
            _: &[u8],
            _: UnixTime,
        ) -> Result<ServerCertVerified, rustls::Error> {
            Ok(ServerCertVerified::assertion())
        }

        fn verify_tls12_signature(
            &self,
            _: &[u8],
            _: &CertificateDer<'_>,
            _: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            Ok(HandshakeSignatureValid::assertion())
        }

        fn verify_tls13_signature(
            &self,
            _: &[u8],
            _: &CertificateDer<'_>,
            _: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            Ok(HandshakeSignatureValid::assertion())
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            use SignatureScheme as S;
            vec![
                S::RSA_PKCS1_SHA1,
                S::ECDSA_SHA1_Legacy,
                S::RSA_PKCS1_SHA256,
                S::ECDSA_NISTP256_SHA256,
                S::RSA_PKCS1_SHA384,
                S::ECDSA_NISTP384_SHA384,
                S::RSA_PKCS1_SHA512,
                S::ECDSA_NISTP521_SHA512,
                S::RSA_PSS_SHA256,
                S::RSA_PSS_SHA384,
                S::RSA_PSS_SHA512,
                S::ED25519,
            ]
        }
    }
}

#[cfg(all(feature = "native-tls", not(feature = "rustls")))]
mod backend {
    use std::net::IpAddr;

    use tokio::net::TcpStream;

    use super::Stream;

    /// tokio-native-tls over one shared connector that accepts invalid certificates and names.
    pub(super) struct Client(tokio_native_tls::TlsConnector);

    impl Client {
        pub(super) fn new() -> Result<Self, String> {
            let connector = native_tls::TlsConnector::builder()
                .danger_accept_invalid_certs(true)
                .danger_accept_invalid_hostnames(true)
                .build()
                .map_err(|e| format!("TLS client setup: {e}"))?;
            Ok(Self(connector.into()))
        }

        pub(super) async fn connect(&self, ip: IpAddr, stream: TcpStream) -> std::io::Result<Box<dyn Stream>> {
            let tls = self.0.connect(&ip.to_string(), stream).await.map_err(std::io::Error::other)?;
            Ok(Box::new(tls))
        }
    }
}

#[cfg(not(any(feature = "rustls", feature = "native-tls")))]
mod backend {
    use std::net::IpAddr;

    use tokio::net::TcpStream;

    use super::Stream;

    /// Built without a TLS feature: every HTTPS endpoint reports that.
    pub(super) enum Client {}

    impl Client {
        pub(super) fn new() -> Result<Self, String> {
            Err("HTTPS needs ralph-discovery's `rustls` or `native-tls` feature".to_owned())
        }

        #[allow(clippy::unused_async)]
        pub(super) async fn connect(&self, _: IpAddr, _: TcpStream) -> std::io::Result<Box<dyn Stream>> {
            match *self {}
        }
    }
}

use backend::Client;
