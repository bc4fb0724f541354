//! The typed errors of the domain model and of the storage traits.

use std::error::Error as StdError;
use std::net::IpAddr;

/// Why a value was refused by a validating constructor or a model invariant.
///
/// Every variant names the offending input so a caller can show it to a person; none of them
/// ever carries a secret (passwords and SNMP communities are never validated through here).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ValidationError {
    /// A required text field was empty or only whitespace.
    #[error("{field} must not be empty")]
    Empty {
        /// The field that was empty.
        field: &'static str,
    },
    /// A text field was longer than its limit.
    #[error("{field} is longer than {max} characters")]
    TooLong {
        /// The field that was too long.
        field: &'static str,
        /// The limit in characters.
        max: usize,
    },
    /// Not an ISO 3166-1 alpha-2 country code.
    #[error("{input:?} is not an ISO 3166-1 alpha-2 country code")]
    Country {
        /// The text that was given.
        input: String,
    },
    /// Not a hostname per RFC 1123.
    #[error("{input:?} is not a valid RFC 1123 hostname: {reason}")]
    Hostname {
        /// The text that was given.
        input: String,
        /// Which rule it broke.
        reason: &'static str,
    },
    /// Not a MAC address in any accepted notation.
    #[error("{input:?} is not a MAC address")]
    Mac {
        /// The text that was given.
        input: String,
    },
    /// Not an IPv4 or IPv6 address.
    #[error("{input:?} is not an IP address")]
    IpAddress {
        /// The text that was given.
        input: String,
    },
    /// Not a CIDR network (`10.0.0.0/24`, `2001:db8::/64`).
    #[error("{input:?} is not a CIDR network")]
    Cidr {
        /// The text that was given.
        input: String,
    },
    /// A CIDR whose address has host bits set (`10.0.0.1/24`).
    #[error("{input} has host bits set; the network is {network}")]
    CidrHostBits {
        /// The text that was given.
        input: String,
        /// The network it should have been.
        network: String,
    },
    /// The gateway is outside its network.
    #[error("gateway {gateway} is not inside network {network}")]
    GatewayOutsideNetwork {
        /// The gateway address.
        gateway: IpAddr,
        /// The network.
        network: String,
    },
    /// More addresses reserved than the network holds.
    #[error("network {network} has {size} addresses, cannot reserve {reserved}")]
    ReservedTooMany {
        /// The network.
        network: String,
        /// Its size (saturated at `u128::MAX`).
        size: u128,
        /// How many were asked to be reserved.
        reserved: u128,
    },
    /// A VLAN id outside 1–4094.
    #[error("VLAN {0} is outside 1-4094")]
    Vlan(u32),
    /// A height in rack units outside what is allowed.
    #[error("height {height}U is outside {min}-{max}U")]
    Height {
        /// The height given.
        height: u32,
        /// Smallest allowed.
        min: u32,
        /// Largest allowed.
        max: u32,
    },
    /// The device does not fit in the rack at that position.
    #[error("a {height}U device at U{position} does not fit in a {rack_height}U rack")]
    OutOfRack {
        /// The requested lowest unit (1-based).
        position: u32,
        /// The device's height.
        height: u32,
        /// The rack's height.
        rack_height: u32,
    },
    /// The device would overlap another device on the same face of the rack.
    #[error("U{from}-U{to} on the {face} face of the rack are taken by device {other}")]
    RackOverlap {
        /// The first overlapping unit.
        from: u32,
        /// The last overlapping unit.
        to: u32,
        /// The face of the rack.
        face: &'static str,
        /// The id of the device already there.
        other: i64,
    },
    /// A rack position was given without a rack, or a rack without a position for a racked type.
    #[error("invalid placement: {0}")]
    Placement(&'static str),
    /// A status transition that is not allowed from the current status.
    #[error("transition {transition:?} is not allowed from status {from}")]
    Transition {
        /// The transition's name.
        transition: String,
        /// The current status.
        from: String,
    },
    /// A transition name the graph does not know.
    #[error("unknown transition {0:?}")]
    UnknownTransition(String),
    /// A value that is not one of the allowed names.
    #[error("{input:?} is not a valid {what}")]
    UnknownName {
        /// What kind of value was expected.
        what: &'static str,
        /// The text that was given.
        input: String,
    },
    /// Any other rule, described in words.
    #[error("{field}: {reason}")]
    Invalid {
        /// The field.
        field: &'static str,
        /// The rule it broke.
        reason: String,
    },
}

/// An error from a storage backend, as seen through the core storage traits.
///
/// Backends map their driver errors onto these variants so callers can react to the class of
/// failure (`is_not_found`, `is_conflict`) without knowing the database.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// No row with that key.
    #[error("{entity} {key} not found")]
    NotFound {
        /// The entity type.
        entity: &'static str,
        /// The key that was looked up.
        key: String,
    },
    /// A uniqueness rule was violated (duplicate serial number, MAC, rack name...).
    #[error("{entity} conflicts with an existing row ({constraint})")]
    Conflict {
        /// The entity type.
        entity: &'static str,
        /// The constraint or column that was violated.
        constraint: String,
    },
    /// A reference points at a row that does not exist, or a row is still referenced.
    #[error("{entity} has a broken or blocking reference ({detail})")]
    Reference {
        /// The entity type.
        entity: &'static str,
        /// What the database said.
        detail: String,
    },
    /// The value broke a model invariant; nothing was written.
    #[error("invalid {entity}")]
    Invalid {
        /// The entity type.
        entity: &'static str,
        /// The rule that was broken.
        #[source]
        source: ValidationError,
    },
    /// A row read back from the database did not decode into the model.
    #[error("corrupt {entity} row: {detail}")]
    Corrupt {
        /// The entity type.
        entity: &'static str,
        /// What could not be decoded.
        detail: String,
    },
    /// The backend failed (connection, I/O, pool time-out...).
    #[error("storage backend error")]
    Backend(#[source] Box<dyn StdError + Send + Sync + 'static>),
    /// A transient conflict (deadlock, serialization failure, busy database) outlasted the
    /// store's retry policy; nothing was written. Retrying later may succeed.
    #[error("{entity} write kept conflicting with concurrent writes ({attempts} attempts)")]
    Contended {
        /// The entity type.
        entity: &'static str,
        /// How many times the write was tried.
        attempts: u32,
        /// The last conflict the database reported.
        #[source]
        source: Box<dyn StdError + Send + Sync + 'static>,
    },
}

impl StoreError {
    /// True when the row that was asked for does not exist.
    #[must_use]
    pub fn is_not_found(&self) -> bool {
        matches!(self, Self::NotFound { .. })
    }

    /// True when a uniqueness rule refused the write.
    #[must_use]
    pub fn is_conflict(&self) -> bool {
        matches!(self, Self::Conflict { .. })
    }

    /// True when concurrent writes kept conflicting past the store's retry policy.
    #[must_use]
    pub fn is_contended(&self) -> bool {
        matches!(self, Self::Contended { .. })
    }

    /// True when a model invariant refused the write.
    #[must_use]
    pub fn is_invalid(&self) -> bool {
        matches!(self, Self::Invalid { .. })
    }

    /// The validation error behind an [`StoreError::Invalid`], if that is what this is.
    #[must_use]
    pub fn validation(&self) -> Option<&ValidationError> {
        match self {
            Self::Invalid { source, .. } => Some(source),
            _ => None,
        }
    }

    /// Wraps a validation error for `entity`.
    #[must_use]
    pub fn invalid(entity: &'static str, source: ValidationError) -> Self {
        Self::Invalid { entity, source }
    }
}
