//! What every scan of a process shares: the socket budget, the pacer and the neighbour budget.

use std::sync::Arc;

use crate::budget::{SocketBudget, socket_budget};
use crate::neighbour::NeighbourGuard;
use crate::pacing::Pacer;
use crate::{Result, ScanConfig};

/// The shared limits of scanning: one socket budget (below the soft `RLIMIT_NOFILE`), one AIMD
/// pacer and one neighbour budget (itself part of a host-wide one). A [`crate::Scanner`] holds
/// one and its clones share it, so every scan and every worker job of the process draws from the
/// same limits; build one per process and hand it to differently configured scanners with
/// [`crate::Scanner::with_resources`].
///
/// ```
/// use ralph_discovery::{ScanConfig, ScanResources, Scanner};
///
/// # fn main() -> Result<(), ralph_discovery::Error> {
/// let config = ScanConfig::default().max_sockets(256);
/// let resources = std::sync::Arc::new(ScanResources::new(&config)?);
/// let web = Scanner::with_resources(config.clone().ports(vec![80, 443]), resources.clone())?;
/// let ssh = Scanner::with_resources(config.ports(vec![22]), resources)?;
/// assert!(std::sync::Arc::ptr_eq(web.resources(), ssh.resources()));
/// assert_eq!(web.resources().sockets().capacity(), 256);
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct ScanResources {
    sockets: SocketBudget,
    pacer: Arc<Pacer>,
    neighbour: NeighbourGuard,
}

impl ScanResources {
    /// Resources sized by `config`'s `max_sockets` and `fd_reserve` (capped by the descriptor
    /// limit now), `rate` and `neighbour`.
    ///
    /// # Errors
    /// [`crate::Error::Setting`] for a bad configuration ([`ScanConfig::validate`]);
    /// [`crate::Error::Io`] when an explicit neighbour slot file cannot be opened.
    pub fn new(config: &ScanConfig) -> Result<Self> {
        config.validate()?;
        Ok(Self {
            sockets: SocketBudget::new(socket_budget(config.max_sockets, config.fd_reserve)),
            pacer: Arc::new(Pacer::new(config.rate)?),
            neighbour: NeighbourGuard::new(&config.neighbour)?,
        })
    }

    /// The socket budget.
    #[must_use]
    pub fn sockets(&self) -> &SocketBudget {
        &self.sockets
    }

    /// The pacer.
    #[must_use]
    pub fn pacer(&self) -> &Pacer {
        &self.pacer
    }

    /// The neighbour budget.
    #[must_use]
    pub fn neighbour(&self) -> &NeighbourGuard {
        &self.neighbour
    }

    pub(crate) fn pacer_arc(&self) -> Arc<Pacer> {
        Arc::clone(&self.pacer)
    }
}
