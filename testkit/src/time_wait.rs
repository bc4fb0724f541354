//! Counting TCP sockets in TIME_WAIT from `/proc/net/tcp` and `/proc/net/tcp6`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The kernel's state number for TIME_WAIT in `/proc/net/tcp{,6}`.
const TIME_WAIT: &str = "06";

/// Sockets in TIME_WAIT (IPv4 and IPv6) for which `filter(local, remote)` holds.
///
/// The count is host-wide: tests using it are named `serial_*` unless the filter only
/// matches endpoints the test owns.
#[must_use]
pub fn time_wait(filter: impl Fn(SocketAddr, SocketAddr) -> bool) -> usize {
    ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|file| std::fs::read_to_string(file).ok())
        .map(|table| count(&table, &filter))
        .sum()
}

/// Sockets in TIME_WAIT with `port` at either end (IPv4 and IPv6).
#[must_use]
pub fn time_wait_on_port(port: u16) -> usize {
    time_wait(|local, remote| local.port() == port || remote.port() == port)
}

/// The TIME_WAIT lines of one `/proc/net/tcp{,6}` table (header first) matching `filter`.
fn count(table: &str, filter: &impl Fn(SocketAddr, SocketAddr) -> bool) -> usize {
    table
        .lines()
        .skip(1)
        .filter(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() < 4 || fields[3] != TIME_WAIT {
                return false;
            }
            matches!((endpoint(fields[1]), endpoint(fields[2])), (Some(l), Some(r)) if filter(l, r))
        })
        .count()
}

/// `0100007F:1F90` or a 32-digit IPv6 address: hex, each 32-bit word in host (little-endian)
/// byte order, then the port in hex.
fn endpoint(text: &str) -> Option<SocketAddr> {
    let (addr, port) = text.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let word = |hex: &str| u32::from_str_radix(hex, 16).ok().map(u32::swap_bytes);
    let ip = match addr.len() {
        8 => IpAddr::V4(Ipv4Addr::from(word(addr)?)),
        32 => {
            let mut bytes = [0u8; 16];
            for (i, chunk) in bytes.chunks_exact_mut(4).enumerate() {
                chunk.copy_from_slice(&word(addr.get(i * 8..i * 8 + 8)?)?.to_be_bytes());
            }
            IpAddr::V6(Ipv6Addr::from(bytes))
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TCP: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0 100 0 0 10 0
   1: 0100007F:D431 0100007F:1F90 06 00000000:00000000 03:00000F3B 00000000     0        0 0 3 0
   2: 0A00000A:D432 0100007F:1F90 06 00000000:00000000 03:00000F3B 00000000     0        0 0 3 0
";
    const TCP6: &str = "  sl  local_address                         remote_address                        st
   0: 00000000000000000000000001000000:D431 00000000000000000000000001000000:0185 06 00000000:00000000
   1: 0000000000000000FFFF00000100007F:D432 0000000000000000FFFF00000100007F:0185 01 00000000:00000000
";

    #[test]
    fn parses_ipv4_and_ipv6_endpoints() {
        assert_eq!(endpoint("0100007F:1F90"), Some("127.0.0.1:8080".parse().expect("addr")));
        assert_eq!(endpoint("00000000000000000000000001000000:0185"), Some("[::1]:389".parse().expect("addr")));
        assert_eq!(
            endpoint("0000000000000000FFFF00000100007F:0185"),
            Some("[::ffff:127.0.0.1]:389".parse().expect("addr"))
        );
        assert_eq!(endpoint("0100007F"), None);
        assert_eq!(endpoint("01007F:0185"), None);
    }

    #[test]
    fn counts_only_time_wait_lines_the_filter_accepts() {
        let loopback = |l: SocketAddr, r: SocketAddr| l.ip().is_loopback() && r.ip().is_loopback();
        assert_eq!(count(TCP, &|_, _| true), 2, "the listener (0A) is not TIME_WAIT");
        assert_eq!(count(TCP, &loopback), 1);
        assert_eq!(count(TCP, &|_, r| r.port() == 8080), 2);
        assert_eq!(count(TCP6, &|_, r| r.port() == 389), 1, "the established (01) one is not counted");
    }

    #[test]
    fn a_client_close_is_counted_on_its_port() {
        use std::io::Read as _;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let client = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
        let (mut server, _) = listener.accept().expect("accept");
        // The side that closes first is left in TIME_WAIT: the client here.
        drop(client);
        let _ = server.read(&mut [0u8; 1]);
        drop(server);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        while time_wait_on_port(port) == 0 && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert!(time_wait_on_port(port) >= 1, "a normal close leaves TIME_WAIT");
    }
}
