//! TCP connect probe: a host is up when any port accepts or resets.

use std::net::{IpAddr, SocketAddr};

use async_trait::async_trait;

use super::{ConnectOutcome, Probe, ProbeContext, ProbeReport, Stage};

enum Port {
    Open,
    Closed,
    Silent,
    Failed(std::io::Error),
}

/// Connects to each port; open and closed (reset) ports both prove the host is up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcpConnectProbe {
    /// The ports to try.
    pub ports: Vec<u16>,
}

impl TcpConnectProbe {
    /// A probe of `ports`.
    #[must_use]
    pub fn new(ports: impl Into<Vec<u16>>) -> Self {
        Self { ports: ports.into() }
    }
}

#[async_trait]
impl Probe for TcpConnectProbe {
    fn name(&self) -> &str {
        "tcp"
    }

    fn stage(&self) -> Stage {
        Stage::Alive
    }

    async fn probe(&self, target: IpAddr, ctx: &ProbeContext) -> ProbeReport {
        // Long port lists are split over tasks so every core makes system calls.
        if self.ports.len() <= CHUNK {
            return report_of(probe_ports(target, &self.ports, ctx).await);
        }
        let tasks: Vec<_> = self
            .ports
            .chunks(CHUNK)
            .map(|chunk| {
                let (ctx, chunk, host) = (ctx.clone(), chunk.to_vec(), crate::neighbour::current_host());
                tokio::spawn(crate::neighbour::in_host(host, async move { probe_ports(target, &chunk, &ctx).await }))
            })
            .collect();
        let mut all = Vec::with_capacity(self.ports.len());
        for (task, chunk) in futures::future::join_all(tasks).await.into_iter().zip(self.ports.chunks(CHUNK)) {
            match task {
                Ok(part) => all.extend(part),
                Err(e) => all.extend(chunk.iter().map(|&p| (p, Port::Failed(std::io::Error::other(e.to_string()))))),
            }
        }
        report_of(all)
    }
}

/// Ports per task for long port lists.
const CHUNK: usize = 2048;

async fn probe_ports(target: IpAddr, ports: &[u16], ctx: &ProbeContext) -> Vec<(u16, Port)> {
    futures::future::join_all(ports.iter().map(|&port| async move {
        // The connection (and its budget) is dropped, with RST, as soon as it is open:
        // holding it until the other ports finish would pin the whole budget.
        let outcome = match ctx.connect(SocketAddr::new(target, port)).await {
            ConnectOutcome::Open(conn) => {
                drop(conn);
                Port::Open
            }
            ConnectOutcome::Refused => Port::Closed,
            ConnectOutcome::Timeout | ConnectOutcome::Unreachable => Port::Silent,
            ConnectOutcome::Failed(e) => Port::Failed(e),
        };
        (port, outcome)
    }))
    .await
}

fn report_of(outcomes: Vec<(u16, Port)>) -> ProbeReport {
    let mut report = ProbeReport::default();
    let mut asked = false;
    for (port, outcome) in outcomes {
        match outcome {
            Port::Open => report.open_ports.push(port),
            Port::Closed => report.closed_ports.push(port),
            Port::Silent => asked = true,
            Port::Failed(e) => report.errors.push(format!("tcp/{port}: {e}")),
        }
    }
    report.alive = if !report.open_ports.is_empty() || !report.closed_ports.is_empty() {
        Some(true)
    } else if asked && report.errors.is_empty() {
        Some(false)
    } else {
        None
    };
    report
}
