//! Directory account state read on login and by the sync: Active Directory's
//! `userAccountControl`, `lockoutTime`, `accountExpires`, `pwdLastSet`, and OpenLDAP's password
//! policy overlay (`pwdAccountLockedTime`; `pwdChangedTime` against the policy's `pwdMaxAge`).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ralph_core::DenyReason;
use tracing::warn;

use crate::TRACE_TARGET;
use crate::conn::Entry;

/// The attributes read for the account state (the ppolicy ones are operational: they are only
/// returned when asked for by name).
pub(crate) const ATTRS: [&str; 7] = [
    "userAccountControl",
    "lockoutTime",
    "accountExpires",
    "pwdLastSet",
    PWD_ACCOUNT_LOCKED_TIME,
    PWD_CHANGED_TIME,
    PWD_POLICY_SUBENTRY,
];

/// ppolicy: when the account was locked.
const PWD_ACCOUNT_LOCKED_TIME: &str = "pwdAccountLockedTime";
/// ppolicy: when the password was last set (GeneralizedTime).
const PWD_CHANGED_TIME: &str = "pwdChangedTime";
/// ppolicy: the DN of the user's own policy, in place of the overlay's default.
pub(crate) const PWD_POLICY_SUBENTRY: &str = "pwdPolicySubentry";
/// ppolicy: a policy's password lifetime in seconds (0: passwords never expire).
pub(crate) const PWD_MAX_AGE: &str = "pwdMaxAge";

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

/// A GeneralizedTime as OpenLDAP writes it (`YYYYmmddHHMMSSZ`, maybe with a fraction of a
/// second), as a point in time; `None` for anything else.
fn generalized_time(value: &str) -> Option<SystemTime> {
    let utc = value.strip_suffix('Z')?;
    let whole = utc.split_once(['.', ',']).map_or(utc, |(whole, _)| whole);
    let time = chrono::NaiveDateTime::parse_from_str(whole, "%Y%m%d%H%M%S").ok()?.and_utc();
    let secs = time.timestamp();
    if secs >= 0 {
        UNIX_EPOCH.checked_add(Duration::from_secs(secs.unsigned_abs()))
    } else {
        UNIX_EPOCH.checked_sub(Duration::from_secs(secs.unsigned_abs()))
    }
}

/// ppolicy: whether the password of `entry` has outlived `max_age` (the applicable policy's
/// `pwdMaxAge`): its `pwdChangedTime` is `max_age` or more before `now`. An entry without a
/// (readable) change time has no age, as ppolicy sees it.
fn ppolicy_password_expired(entry: &Entry, max_age: Option<Duration>, now: SystemTime) -> bool {
    let Some(max_age) = max_age.filter(|age| !age.is_zero()) else { return false };
    let Some(value) = entry.first(PWD_CHANGED_TIME) else { return false };
    let Some(changed) = generalized_time(value) else {
        warn!(target: TRACE_TARGET, dn = %entry.dn, attribute = PWD_CHANGED_TIME, "not a GeneralizedTime, ignored");
        return false;
    };
    changed.checked_add(max_age).is_some_and(|expires| expires <= now)
}

/// Whether the password age needs a policy read at all: ppolicy only ages passwords with a
/// change time.
pub(crate) fn has_password_age(entry: &Entry) -> bool {
    entry.first(PWD_CHANGED_TIME).is_some()
}

/// The policies' `pwdMaxAge`, by policy DN (normalised), read at most once per
/// [`PolicyCache::TTL`]; `None` is remembered too (a policy without a maximum age, or one
/// that cannot be read).
#[derive(Debug)]
pub(crate) struct PolicyCache {
    entries: moka::sync::Cache<String, Option<Duration>>,
}

impl Default for PolicyCache {
    fn default() -> Self {
        Self { entries: moka::sync::Cache::builder().max_capacity(Self::CAPACITY).time_to_live(Self::TTL).build() }
    }
}

impl PolicyCache {
    /// How long a policy read is kept: a changed `pwdMaxAge` is seen within five minutes.
    pub(crate) const TTL: Duration = Duration::from_secs(300);
    /// Directories have a handful of policies; this only bounds a pathological one.
    const CAPACITY: u64 = 1024;

    pub(crate) fn get(&self, policy_key: &str) -> Option<Option<Duration>> {
        self.entries.get(policy_key)
    }

    pub(crate) fn put(&self, policy_key: String, max_age: Option<Duration>) {
        self.entries.insert(policy_key, max_age);
    }
}

/// A policy entry's `pwdMaxAge` (seconds); 0, absent or garbage is no maximum.
pub(crate) fn max_age_of(policy: &Entry) -> Option<Duration> {
    let value = policy.first(PWD_MAX_AGE)?;
    match value.trim().parse::<u64>() {
        Ok(0) => None,
        Ok(secs) => Some(Duration::from_secs(secs)),
        Err(_) => {
            warn!(target: TRACE_TARGET, policy = %policy.dn, attribute = PWD_MAX_AGE, "not a number of seconds, ignored");
            None
        }
    }
}

/// The first state that refuses the account, in the order disabled, expired, locked,
/// password expired; `None` for an account in good standing (or a directory without these
/// attributes). `max_age` is the `pwdMaxAge` of the ppolicy policy that applies to the entry,
/// when one was read.
pub(crate) fn refusal(entry: &Entry, now: SystemTime, max_age: Option<Duration>) -> Option<Refusal> {
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
        || entry.first(PWD_ACCOUNT_LOCKED_TIME).is_some();
    if locked {
        return Some(Refusal::Locked);
    }
    if uac & UF_PASSWORD_EXPIRED != 0
        || int(entry, "pwdLastSet") == Some(0)
        || ppolicy_password_expired(entry, max_age, now)
    {
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
            assert_eq!(refusal(&entry(attrs), now, None), expect, "{attrs:?}");
        }
        // Garbage is ignored, never a panic.
        assert_eq!(refusal(&entry(&[("userAccountControl", "lots"), ("accountExpires", "-")]), now, None), None);
        assert_eq!(filetime(UNIX_EPOCH), FILETIME_UNIX_OFFSET_SECS * 10_000_000);
    }

    #[test]
    fn ppolicy_password_age() {
        let day = Duration::from_secs(86_400);
        // 2000-01-01T00:00:00Z.
        let changed = UNIX_EPOCH + Duration::from_secs(946_684_800);
        assert_eq!(generalized_time("20000101000000Z"), Some(changed));
        assert_eq!(generalized_time("20000101000000.123456Z"), Some(changed));
        for bad in ["", "20000101000000", "2000-01-01", "20001301000000Z", "garbageZ"] {
            assert_eq!(generalized_time(bad), None, "{bad:?}");
        }
        let user = entry(&[("pwdChangedTime", "20000101000000Z")]);
        let expired = Some(Refusal::PasswordExpired);
        assert_eq!(refusal(&user, changed + 30 * day, Some(30 * day)), expired, "at the maximum age");
        assert_eq!(refusal(&user, changed + 29 * day, Some(30 * day)), None, "younger");
        assert_eq!(refusal(&user, changed + 3650 * day, None), None, "no policy read");
        assert_eq!(refusal(&user, changed + 3650 * day, Some(Duration::ZERO)), None, "pwdMaxAge 0");
        let no_time = entry(&[]);
        assert!(!has_password_age(&no_time) && has_password_age(&user));
        assert_eq!(refusal(&no_time, changed + 3650 * day, Some(day)), None, "no change time");
        let garbage = entry(&[("pwdChangedTime", "yesterday")]);
        assert_eq!(refusal(&garbage, changed + 3650 * day, Some(day)), None);
        // A lock comes first.
        let locked = entry(&[("pwdChangedTime", "20000101000000Z"), ("pwdAccountLockedTime", "000001010000Z")]);
        assert_eq!(refusal(&locked, SystemTime::now(), Some(day)), Some(Refusal::Locked));

        let policy = |age: &str| Entry {
            dn: "cn=p,dc=x".into(),
            attrs: [("pwdMaxAge".to_owned(), vec![age.to_owned()])].into_iter().collect(),
        };
        assert_eq!(max_age_of(&policy("86400")), Some(day));
        assert_eq!(max_age_of(&policy("0")), None);
        assert_eq!(max_age_of(&policy("-5")), None);
        assert_eq!(max_age_of(&entry(&[])), None);
    }
}
