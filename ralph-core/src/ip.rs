//! IP address records: what Ralph knows about one address, including discovery facts.

use std::net::IpAddr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::{Device, Entity, Hostname, Id, Secret, ValidationError};

/// Whether an address is in use or only reserved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum IpStatus {
    /// Assigned and in use.
    #[default]
    Used,
    /// Reserved, not to be handed out.
    Reserved,
}

impl IpStatus {
    /// `"used"` or `"reserved"`.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Used => "used",
            Self::Reserved => "reserved",
        }
    }

    /// Parses `"used"` / `"reserved"`.
    ///
    /// # Errors
    /// [`ValidationError::UnknownName`].
    pub fn parse(input: &str) -> Result<Self, ValidationError> {
        match input {
            "used" => Ok(Self::Used),
            "reserved" => Ok(Self::Reserved),
            _ => Err(ValidationError::UnknownName { what: "IP status", input: input.to_owned() }),
        }
    }
}

/// SNMP protocol versions discovery can use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum SnmpVersion {
    /// SNMPv1.
    #[serde(rename = "1")]
    V1,
    /// SNMPv2c.
    #[serde(rename = "2c")]
    V2c,
    /// SNMPv3.
    #[serde(rename = "3")]
    V3,
}

impl SnmpVersion {
    /// `"1"`, `"2c"` or `"3"`.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::V1 => "1",
            Self::V2c => "2c",
            Self::V3 => "3",
        }
    }

    /// Parses `"1"`, `"2c"` or `"3"`.
    ///
    /// # Errors
    /// [`ValidationError::UnknownName`].
    pub fn parse(input: &str) -> Result<Self, ValidationError> {
        match input {
            "1" => Ok(Self::V1),
            "2c" | "2" => Ok(Self::V2c),
            "3" => Ok(Self::V3),
            _ => Err(ValidationError::UnknownName { what: "SNMP version", input: input.to_owned() }),
        }
    }
}

/// What Ralph knows about one IP address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpAddress {
    /// The address; unique.
    pub address: IpAddr,
    /// DNS name, RFC 1123 checked.
    pub hostname: Option<Hostname>,
    /// A management (BMC, iLO, iDRAC) address.
    pub is_management: bool,
    /// The gateway of its network.
    pub is_gateway: bool,
    /// Used or reserved.
    pub status: IpStatus,
    /// When discovery last saw it answer.
    pub last_seen: Option<DateTime<Utc>>,
    /// Consecutive scans it did not answer.
    pub dead_ping_count: u32,
    /// Retired: discovery skips buried addresses.
    pub is_buried: bool,
    /// SNMP `sysName` as last read.
    pub snmp_name: Option<String>,
    /// The SNMP community that answered. A secret: never serialized, redacted in `Debug`.
    #[serde(skip_serializing, default)]
    pub snmp_community: Option<Secret>,
    /// The SNMP version that answered.
    pub snmp_version: Option<SnmpVersion>,
    /// HTTP server family (`Apache`, `Sun`, `Cisco`...) from the `Server` header.
    pub http_family: Option<String>,
    /// The device it belongs to.
    pub device: Option<Id<Device>>,
    /// Checksum of the last scan's normalised results, to flag change.
    pub scan_checksum: Option<String>,
}

impl IpAddress {
    /// A used, unburied address with no discovery facts.
    #[must_use]
    pub fn new(address: IpAddr) -> Self {
        Self {
            address,
            hostname: None,
            is_management: false,
            is_gateway: false,
            status: IpStatus::Used,
            last_seen: None,
            dead_ping_count: 0,
            is_buried: false,
            snmp_name: None,
            snmp_community: None,
            snmp_version: None,
            http_family: None,
            device: None,
            scan_checksum: None,
        }
    }

    /// Parses the address and the optional host name.
    ///
    /// # Errors
    /// A malformed address or host name.
    pub fn parse(address: &str, hostname: Option<&str>) -> Result<Self, ValidationError> {
        let mut ip = Self::new(crate::parse_ip(address)?);
        ip.hostname = hostname.map(Hostname::parse).transpose()?;
        Ok(ip)
    }
}

impl Entity for IpAddress {
    const NAME: &'static str = "IP address";
    fn validate(&self) -> Result<(), ValidationError> {
        if self.address.to_canonical() != self.address {
            return Err(ValidationError::Invalid {
                field: "address",
                reason: format!("{} is IPv4-mapped; store it as {}", self.address, self.address.to_canonical()),
            });
        }
        if let Some(community) = &self.snmp_community {
            // The community is a secret: the error names the rule, never the value.
            if community.expose().chars().count() > 255 {
                return Err(ValidationError::TooLong { field: "snmp_community", max: 255 });
            }
        }
        if let Some(checksum) = &self.scan_checksum {
            crate::text::check_len("scan_checksum", checksum, 128)?;
        }
        if let Some(name) = &self.snmp_name {
            crate::text::check_len("snmp_name", name, 255)?;
        }
        if let Some(family) = &self.http_family {
            crate::text::check_len("http_family", family, 64)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_refuses_mapped_addresses_and_overlong_facts() {
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().expect("ip");
        assert!(IpAddress::new(mapped).validate().is_err());
        assert!(IpAddress::parse("::ffff:10.0.0.1", None).expect("canonicalised").validate().is_ok());
        let mut ip = IpAddress::parse("10.0.0.1", Some("web-01.dc1")).expect("valid");
        ip.snmp_community = Some(Secret::new("c".repeat(256)));
        let error = ip.validate().expect_err("too long");
        assert!(!error.to_string().contains("ccc"), "the community never appears in the error");
        ip.snmp_community = None;
        ip.scan_checksum = Some("x".repeat(129));
        assert!(ip.validate().is_err());
        assert!(IpAddress::parse("10.0.0.1", Some("bad_name")).is_err());
    }
}
