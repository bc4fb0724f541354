//! Which directory a login names: `user@realm` and `REALM\user` go to the directory whose
//! `realm` (or alias) that is, a bare name to every directory in the chain's order.

use crate::config::LdapConfig;

/// Where a typed login name belongs, for one directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Addressed<'a> {
    /// To this directory: the name without its qualifier (or as typed, when bare or when the
    /// directory has no realm).
    Here(&'a str),
    /// Qualified with another realm: not this directory's login.
    Elsewhere,
}

/// Splits a qualified login for a directory with a `realm`. Read before the username
/// normalisation (so `strip_domain` never sees a qualifier this directory answers to), after
/// trimming when `normalize_username.trim` is on. A directory without a realm takes every
/// name as typed, as before: its `strip_domain` and hooks decide.
pub(crate) fn address<'a>(config: &LdapConfig, typed: &'a str) -> Addressed<'a> {
    if config.realm.is_none() {
        return Addressed::Here(typed);
    }
    let name = if config.normalize_username.trim { typed.trim() } else { typed };
    let qualified = name.split_once('\\').or_else(|| name.rsplit_once('@').map(|(user, realm)| (realm, user)));
    match qualified {
        None => Addressed::Here(name),
        Some((realm, user)) if config.is_realm(realm) => Addressed::Here(user),
        Some(_) => Addressed::Elsewhere,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qualified_logins_go_to_their_realm_only() {
        let base = LdapConfig::builder(["ldaps://h"]).user_search("dc=x", crate::Scope::Subtree, "(uid=%(user)s)");
        let plain = base.clone().build().expect("valid");
        assert_eq!(address(&plain, "CORP\\alice"), Addressed::Here("CORP\\alice"), "no realm: as typed");
        let corp = base.realm("corp.example").realm_aliases(["CORP"]).build().expect("valid");
        assert_eq!(address(&corp, "alice"), Addressed::Here("alice"));
        assert_eq!(address(&corp, "alice@Corp.Example"), Addressed::Here("alice"));
        assert_eq!(address(&corp, "corp\\alice"), Addressed::Here("alice"));
        assert_eq!(address(&corp, "CORP.EXAMPLE\\alice"), Addressed::Here("alice"));
        assert_eq!(address(&corp, "LAB\\alice"), Addressed::Elsewhere);
        assert_eq!(address(&corp, "alice@lab.example"), Addressed::Elsewhere);
        assert_eq!(address(&corp, "a@b@corp.example"), Addressed::Here("a@b"), "the last @ qualifies");
        assert_eq!(address(&corp, " CORP\\alice"), Addressed::Elsewhere, "no trim asked for");
        let trimmed = LdapConfig { normalize_username: crate::NormalizeUsername::all(), ..corp };
        assert_eq!(address(&trimmed, " CORP\\alice "), Addressed::Here("alice"));
    }
}
