//! HTTP family probe: the `Server` header mapped to a family the way Ralph did.

use std::net::{IpAddr, SocketAddr};

use std::io;

use async_trait::async_trait;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::{ConnectOutcome, Connection, Probe, ProbeContext, ProbeReport, Stage};

/// Largest response head read.
const MAX_HEAD: usize = 16 * 1024;

/// `Server` header prefixes and the family Ralph recorded for them.
const FAMILIES: &[(&str, &str)] = &[
    ("Apache", "Apache"),
    ("GoAhead-Webs", "Thomas-Krenn"),
    ("Sun-ILOM-Web-Server", "Sun"),
    ("cisco-IOS", "Cisco"),
    ("Cisco", "Cisco"),
    ("HP-iLO-Server", "HP"),
    ("HPE-iLO-Server", "HP"),
    ("Mbedthis-Appweb", "Dell"),
    ("Embedthis-Appweb", "Dell"),
    ("IBM_HTTP_Server", "IBM"),
    ("Microsoft-IIS", "Microsoft-IIS"),
    ("nginx", "nginx"),
    ("lighttpd", "lighttpd"),
];

/// Maps a `Server` header to a family: the known prefixes as in Ralph, else the product
/// token before the first `/` or space. `None` for an empty header.
///
/// ```
/// use ralph_discovery::http_family;
/// assert_eq!(http_family("GoAhead-Webs").as_deref(), Some("Thomas-Krenn"));
/// assert_eq!(http_family("Apache/2.4.57 (Debian)").as_deref(), Some("Apache"));
/// assert_eq!(http_family("Sun-ILOM-Web-Server/1.0").as_deref(), Some("Sun"));
/// assert_eq!(http_family("thttpd/2.29").as_deref(), Some("thttpd"));
/// ```
#[must_use]
pub fn http_family(server: &str) -> Option<String> {
    let server = server.trim();
    if server.is_empty() {
        return None;
    }
    let lower = server.to_ascii_lowercase();
    if let Some((_, family)) = FAMILIES.iter().find(|(prefix, _)| lower.starts_with(&prefix.to_ascii_lowercase())) {
        return Some((*family).to_owned());
    }
    let token = server.split(['/', ' ']).next().unwrap_or(server);
    Some(token.chars().take(64).collect())
}

/// HTTP or HTTPS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scheme {
    /// Plain HTTP.
    Http,
    /// HTTP over TLS; certificates are not verified (BMCs ship self-signed ones) since only
    /// the `Server` header is read. One TLS client, built on first use, serves every probe of
    /// the process: rustls (the `rustls` feature, default) or native-tls (`native-tls`).
    Https,
}

/// Asks `GET /` on each endpoint in turn, as Ralph did (`http://`, then `https://`, then
/// `http://:8006`), and records the family of the first `Server` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpProbe {
    /// Endpoints in order.
    pub endpoints: Vec<(Scheme, u16)>,
}

impl Default for HttpProbe {
    fn default() -> Self {
        Self { endpoints: vec![(Scheme::Http, 80), (Scheme::Https, 443), (Scheme::Http, 8006)] }
    }
}

impl HttpProbe {
    /// Plain HTTP on these ports, in order.
    #[must_use]
    pub fn http(ports: impl IntoIterator<Item = u16>) -> Self {
        Self { endpoints: ports.into_iter().map(|p| (Scheme::Http, p)).collect() }
    }
}

/// Finds the `Server` header in a response head.
fn server_header(head: &str) -> Option<String> {
    head.lines().skip(1).take_while(|l| !l.trim().is_empty()).find_map(|l| {
        let (name, value) = l.split_once(':')?;
        name.trim().eq_ignore_ascii_case("server").then(|| value.trim().to_owned())
    })
}

fn request(addr: SocketAddr) -> String {
    let host = match addr.ip() {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => format!("[{v6}]"),
    };
    format!("GET / HTTP/1.0\r\nHost: {host}\r\nUser-Agent: ralph-discovery\r\nConnection: close\r\n\r\n")
}

fn head_complete(buf: &[u8]) -> bool {
    buf.windows(4).any(|w| w == b"\r\n\r\n") || buf.len() >= MAX_HEAD
}

/// Sends the request and reads until the end of the response head (or [`MAX_HEAD`] bytes, or
/// the peer closing).
async fn exchange<S: AsyncRead + AsyncWrite + Unpin + ?Sized>(stream: &mut S, addr: SocketAddr) -> io::Result<Vec<u8>> {
    stream.write_all(request(addr).as_bytes()).await?;
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 2048];
    loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
        if head_complete(&buf) {
            break;
        }
    }
    Ok(buf)
}

async fn fetch_plain(ctx: &ProbeContext, addr: SocketAddr) -> Result<Option<Vec<u8>>, String> {
    let ConnectOutcome::Open(mut conn) = ctx.connect(addr).await else { return Ok(None) };
    match tokio::time::timeout(ctx.timeouts.read, exchange(&mut conn.stream, addr)).await {
        Ok(Ok(buf)) => Ok(Some(buf)),
        Ok(Err(e)) => Err(format!("http {addr}: {e}")),
        Err(_) => Ok(None),
    }
    // `conn` drops here: SO_LINGER 0 resets it, even with unread body bytes.
}

/// TLS on the runtime with the one shared client of [`super::tls`]. The handshake, request and
/// response head together get `connect + read` timeouts, so a peer trickling bytes cannot
/// stretch the exchange past that. The socket keeps SO_LINGER 0: dropping the TLS stream
/// resets the connection, and the budget unit goes with it.
async fn fetch_tls(ctx: &ProbeContext, addr: SocketAddr) -> Result<Option<Vec<u8>>, String> {
    let ConnectOutcome::Open(conn) = ctx.connect(addr).await else { return Ok(None) };
    let Connection { stream, _permit: permit } = conn;
    let total = ctx.timeouts.connect.saturating_add(ctx.timeouts.read);
    let outcome = tokio::time::timeout(total, async {
        let mut tls = super::tls::handshake(addr.ip(), stream).await?;
        // An open port that speaks no TLS or HTTP, or breaks off: no family from it.
        exchange(&mut *tls, addr).await.map_err(|_| None::<String>)
    })
    .await;
    drop(permit);
    match outcome {
        Ok(Ok(buf)) => Ok(Some(buf)),
        Ok(Err(Some(local))) => Err(format!("https {addr}: {local}")),
        Ok(Err(None)) | Err(_) => Ok(None),
    }
}

async fn fetch_head(ctx: &ProbeContext, scheme: Scheme, addr: SocketAddr) -> Result<Option<String>, String> {
    let head = match scheme {
        Scheme::Http => fetch_plain(ctx, addr).await?,
        Scheme::Https => fetch_tls(ctx, addr).await?,
    };
    let Some(head) = head else { return Ok(None) };
    let text = String::from_utf8_lossy(&head);
    if !text.starts_with("HTTP/") {
        return Ok(None);
    }
    Ok(Some(server_header(&text).unwrap_or_default()))
}

#[async_trait]
impl Probe for HttpProbe {
    fn name(&self) -> &str {
        "http"
    }

    fn stage(&self) -> Stage {
        Stage::Facts
    }

    async fn probe(&self, target: IpAddr, ctx: &ProbeContext) -> ProbeReport {
        let mut report = ProbeReport::default();
        for &(scheme, port) in &self.endpoints {
            match fetch_head(ctx, scheme, SocketAddr::new(target, port)).await {
                Ok(Some(server)) => {
                    report.alive = Some(true);
                    report.http_family = http_family(&server);
                    report.http_server = Some(server).filter(|s| !s.is_empty());
                    break;
                }
                Ok(None) => {}
                Err(e) => report.errors.push(e),
            }
        }
        report
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_as_ralph_mapped_them() {
        for (server, family) in [
            ("Apache", "Apache"),
            ("Apache-Coyote/1.1", "Apache"),
            ("GoAhead-Webs", "Thomas-Krenn"),
            ("Sun-ILOM-Web-Server/1.0", "Sun"),
            ("cisco-IOS", "Cisco"),
            ("HP-iLO-Server/1.30", "HP"),
            ("Mbedthis-Appweb/2.4.2", "Dell"),
            ("Microsoft-IIS/10.0", "Microsoft-IIS"),
            ("nginx/1.25", "nginx"),
        ] {
            assert_eq!(http_family(server).as_deref(), Some(family), "{server}");
        }
        assert_eq!(http_family("  "), None);
    }

    #[test]
    fn server_header_is_found_case_insensitively() {
        let head = "HTTP/1.1 200 OK\r\nDate: x\r\nsErVeR:  GoAhead-Webs \r\n\r\nServer: body";
        assert_eq!(server_header(head).as_deref(), Some("GoAhead-Webs"));
        assert_eq!(server_header("HTTP/1.0 200 OK\r\n\r\nServer: x"), None);
    }
}
