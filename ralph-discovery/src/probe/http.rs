//! HTTP family probe: the `Server` header mapped to a family the way Ralph did.

use std::net::{IpAddr, SocketAddr};

use async_trait::async_trait;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{ConnectOutcome, Probe, ProbeContext, ProbeReport, Stage};

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

/// Asks `GET /` on each URL in turn (Ralph: `http://`, then `https://`, then `:8006`) and
/// records the family of the first `Server` header. HTTPS needs TLS, which this crate does
/// not link; the default list is `http://:80` then `http://:8006`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpProbe {
    /// Plain-HTTP ports, in order.
    pub ports: Vec<u16>,
}

impl Default for HttpProbe {
    fn default() -> Self {
        Self { ports: vec![80, 8006] }
    }
}

/// Finds the `Server` header in a response head.
fn server_header(head: &str) -> Option<String> {
    head.lines().skip(1).take_while(|l| !l.trim().is_empty()).find_map(|l| {
        let (name, value) = l.split_once(':')?;
        name.trim().eq_ignore_ascii_case("server").then(|| value.trim().to_owned())
    })
}

async fn fetch_head(ctx: &ProbeContext, addr: SocketAddr) -> Result<Option<String>, String> {
    let ConnectOutcome::Open(mut conn) = ctx.connect(addr).await else { return Ok(None) };
    let host = match addr.ip() {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => format!("[{v6}]"),
    };
    let request = format!("GET / HTTP/1.0\r\nHost: {host}\r\nUser-Agent: ralph-discovery\r\nConnection: close\r\n\r\n");
    let read = async {
        conn.stream.write_all(request.as_bytes()).await?;
        let mut buf = Vec::with_capacity(1024);
        let mut chunk = [0u8; 2048];
        loop {
            let n = conn.stream.read(&mut chunk).await?;
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
            if buf.windows(4).any(|w| w == b"\r\n\r\n") || buf.len() >= MAX_HEAD {
                break;
            }
        }
        Ok::<_, std::io::Error>(buf)
    };
    let head = match tokio::time::timeout(ctx.timeouts.read, read).await {
        Ok(Ok(buf)) => buf,
        Ok(Err(e)) => return Err(format!("http {addr}: {e}")),
        Err(_) => return Ok(None),
    };
    // `conn` drops here: SO_LINGER 0 resets it, even with unread body bytes.
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
        for &port in &self.ports {
            match fetch_head(ctx, SocketAddr::new(target, port)).await {
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
