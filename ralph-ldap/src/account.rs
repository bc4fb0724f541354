//! Directory account state read on login and by the sync: Active Directory's
//! `userAccountControl`, `lockoutTime`, `accountExpires`, `pwdLastSet`, and OpenLDAP's password
//! policy overlay (`pwdAccountLockedTime`).

use std::time::{SystemTime, UNIX_EPOCH};

use ralph_core::DenyReason;
use tracing::warn;

use crate::TRACE_TARGET;
use crate::conn::Entry;

/// The attributes read for the account state (the ppolicy one is operational: it is only
/// returned when asked for by name).
pub(crate) const ATTRS: [&str; 5] =
    ["userAccountControl", "lockoutTime", "accountExpires", "pwdLastSet", "pwdAccountLockedTime"];

/// `ADS_UF_ACCOUNTDISABLE`.
const UF_ACCOUNT_DISABLE: i64 = 0x2;
/// `ADS_UF_LOCKOUT`.
const UF_LOCKOUT: i64 = 0x10;
/// `ADS_UF_PASSWORD_EXPIRED`.
const UF_PASSWORD_EXPIRED: i64 = 0x0080_0000;
/// `accountExpires` of an account that never expires (besides 0).
const NEVER: i64 = i64::MAX;
/// Seconds from the Windows FILETIME epoch (1601-01-01) to the Unix epoch.
const FILETIME_UNIX_OFFSET_SECS: i64 = 11_644_473_600;

/// Why the directory's own attributes refuse an account.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// Disabled or expired: the account is over, whatever the password. The store record is
    /// made inactive.
    Closed(Closed),
    /// Locked out: the directory refuses the bind until the lock ends. Only a refused bind is
    /// taken as locked, since a directory that accepts the bind has ended the lock (AD keeps
    /// `lockoutTime` set past the lockout duration until the next good logon).
    Locked,
    /// The password has expired or must be changed first.
    PasswordExpired,
}

/// The two closed states.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Closed {
    Disabled,
    Expired,
}

impl Refusal {
    pub(crate) fn reason(self) -> DenyReason {
        match self {
            Self::Closed(Closed::Disabled) => DenyReason::AccountDisabled,
            Self::Closed(Closed::Expired) => DenyReason::AccountExpired,
            Self::Locked => DenyReason::AccountLocked,
            Self::PasswordExpired => DenyReason::PasswordExpired,
        }
    }
}

/// An integer attribute; a value that does not parse is logged and treated as absent (the
/// directory enforces these states on the bind anyway).
fn int(entry: &Entry, attr: &str) -> Option<i64> {
    let value = entry.first(attr)?;
    match value.parse::<i64>() {
        Ok(n) => Some(n),
        Err(_) => {
            warn!(target: TRACE_TARGET, dn = %entry.dn, attribute = attr, "account state value is not an integer, ignored");
            None
        }
    }
}

/// The current time as a Windows FILETIME (100 ns intervals since 1601-01-01).
fn filetime(now: SystemTime) -> i64 {
    let unix = now.duration_since(UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    unix.saturating_add(FILETIME_UNIX_OFFSET_SECS).saturating_mul(10_000_000)
}

/// The first state that refuses the account, in the order disabled, expired, locked,
/// password expired; `None` for an account in good standing (or a directory without these
/// attributes).
pub(crate) fn refusal(entry: &Entry, now: SystemTime) -> Option<Refusal> {
    let uac = int(entry, "userAccountControl").unwrap_or(0);
    if uac & UF_ACCOUNT_DISABLE != 0 {
        return Some(Refusal::Closed(Closed::Disabled));
    }
    if let Some(expires) = int(entry, "accountExpires")
        && expires > 0
        && expires != NEVER
        && expires <= filetime(now)
    {
        return Some(Refusal::Closed(Closed::Expired));
    }
    let locked = uac & UF_LOCKOUT != 0
        || int(entry, "lockoutTime").is_some_and(|t| t > 0)
        || entry.first("pwdAccountLockedTime").is_some();
    if locked {
        return Some(Refusal::Locked);
    }
    if uac & UF_PASSWORD_EXPIRED != 0 || int(entry, "pwdLastSet") == Some(0) {
        return Some(Refusal::PasswordExpired);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(attrs: &[(&str, &str)]) -> Entry {
        Entry {
            dn: "cn=u,dc=x".into(),
            attrs: attrs.iter().map(|(a, v)| ((*a).to_owned(), vec![(*v).to_owned()])).collect(),
        }
    }

    #[test]
    fn states_and_their_order() {
        let now = SystemTime::now();
        let past = (filetime(now) - 10_000_000).to_string();
        let future = (filetime(now) + 3_600 * 10_000_000).to_string();
        let never = i64::MAX.to_string();
        type Attrs<'a> = &'a [(&'a str, &'a str)];
        let cases: [(Attrs<'_>, Option<Refusal>); 14] = [
            (&[], None),
            (&[("userAccountControl", "512")], None),
            (&[("userAccountControl", "514")], Some(Refusal::Closed(Closed::Disabled))),
            (&[("userAccountControl", "528")], Some(Refusal::Locked)),
            (&[("lockoutTime", "133000000000000000")], Some(Refusal::Locked)),
            (&[("lockoutTime", "0")], None),
            (&[("accountExpires", &past)], Some(Refusal::Closed(Closed::Expired))),
            (&[("accountExpires", &future)], None),
            (&[("accountExpires", "0")], None),
            (&[("accountExpires", &never)], None),
            (&[("userAccountControl", "8389120")], Some(Refusal::PasswordExpired)),
            (&[("pwdLastSet", "0")], Some(Refusal::PasswordExpired)),
            (&[("pwdAccountLockedTime", "000001010000Z")], Some(Refusal::Locked)),
            (&[("userAccountControl", "514"), ("lockoutTime", "1")], Some(Refusal::Closed(Closed::Disabled))),
        ];
        for (attrs, expect) in cases {
            assert_eq!(refusal(&entry(attrs), now), expect, "{attrs:?}");
        }
        // Garbage is ignored, never a panic.
        assert_eq!(refusal(&entry(&[("userAccountControl", "lots"), ("accountExpires", "-")]), now), None);
        assert_eq!(filetime(UNIX_EPOCH), FILETIME_UNIX_OFFSET_SECS * 10_000_000);
    }
}
