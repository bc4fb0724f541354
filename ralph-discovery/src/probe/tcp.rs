//! TCP connect probe: a host is up when any port accepts or resets.

use std::net::{IpAddr, SocketAddr};

use async_trait::async_trait;

use super::{ConnectOutcome, Probe, ProbeContext, ProbeReport, Stage};

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
        let outcomes = futures::future::join_all(self.ports.iter().map(|&port| async move {
            let outcome = ctx.connect(SocketAddr::new(target, port)).await;
            // Close (RST) right away; only the outcome matters here.
            let open = matches!(outcome, ConnectOutcome::Open(_));
            (port, open, outcome)
        }))
        .await;
        let mut report = ProbeReport::default();
        let mut asked = false;
        for (port, open, outcome) in outcomes {
            match outcome {
                _ if open => report.open_ports.push(port),
                ConnectOutcome::Refused => report.closed_ports.push(port),
                ConnectOutcome::Timeout | ConnectOutcome::Unreachable => asked = true,
                ConnectOutcome::Failed(e) => report.errors.push(format!("tcp/{port}: {e}")),
                ConnectOutcome::Open(_) => {}
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
}
