//! Boolean group queries (django-auth-ldap's `LDAPGroupQuery`): group DNs combined with
//! any / all / not, for the require and deny groups and for `flags_by_group`.

use std::collections::HashSet;
use std::fmt;

use serde::Deserialize;

use crate::{Error, dn};

/// How deep a query may nest. Written by hand, real ones are two or three levels; the limit
/// keeps evaluation (which recurses) far from the stack's end whatever a config file holds.
pub const MAX_DEPTH: usize = 16;

/// A membership test over the groups a user is in: one group DN, or any / all / not of other
/// queries, nested freely. `LDAPGroupQuery("a") | (LDAPGroupQuery("b") & ~LDAPGroupQuery("c"))`
/// is, in TOML:
///
/// ```toml
/// require_group = { any = ["cn=a,dc=x", { all = ["cn=b,dc=x", { not = "cn=c,dc=x" }] }] }
/// ```
///
/// and in code `GroupQuery::from("cn=a,dc=x") | (GroupQuery::from("cn=b,dc=x") & !GroupQuery::from("cn=c,dc=x"))`.
/// A plain string is one group; a list of strings is "any of them" (as `flags_by_group` lists
/// always were). DNs compare case-insensitively and however they are escaped. Empty `any` /
/// `all` lists are refused by [`LdapConfig::validate`](crate::LdapConfig::validate): whether
/// "none of nothing" should let everyone in is not something to guess.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(from = "Repr")]
pub enum GroupQuery {
    /// Member of this group (a DN).
    Group(String),
    /// At least one of these holds.
    Any(Vec<GroupQuery>),
    /// Every one of these holds.
    All(Vec<GroupQuery>),
    /// This does not hold.
    Not(Box<GroupQuery>),
}

/// The TOML shapes: `"dn"`, `["dn", ...]`, `{ any = [...] }`, `{ all = [...] }`, `{ not = ... }`.
#[derive(Deserialize)]
#[serde(untagged, expecting = "a group DN, a list of group DNs, or a table with one key: any, all or not")]
enum Repr {
    Dn(String),
    List(Vec<GroupQuery>),
    Op(Op),
}

#[derive(Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
enum Op {
    Any(Vec<GroupQuery>),
    All(Vec<GroupQuery>),
    Not(Box<GroupQuery>),
}

impl From<Repr> for GroupQuery {
    fn from(repr: Repr) -> Self {
        match repr {
            Repr::Dn(dn) => Self::Group(dn),
            Repr::List(items) | Repr::Op(Op::Any(items)) => Self::Any(items),
            Repr::Op(Op::All(items)) => Self::All(items),
            Repr::Op(Op::Not(inner)) => Self::Not(inner),
        }
    }
}

impl From<&str> for GroupQuery {
    fn from(dn: &str) -> Self {
        Self::Group(dn.to_owned())
    }
}

impl From<String> for GroupQuery {
    fn from(dn: String) -> Self {
        Self::Group(dn)
    }
}

impl std::ops::BitOr for GroupQuery {
    type Output = Self;
    /// `a | b`: either holds (lists are flattened).
    fn bitor(self, rhs: Self) -> Self {
        match self {
            Self::Any(mut items) => {
                items.push(rhs);
                Self::Any(items)
            }
            lhs => Self::Any(vec![lhs, rhs]),
        }
    }
}

impl std::ops::BitAnd for GroupQuery {
    type Output = Self;
    /// `a & b`: both hold (lists are flattened).
    fn bitand(self, rhs: Self) -> Self {
        match self {
            Self::All(mut items) => {
                items.push(rhs);
                Self::All(items)
            }
            lhs => Self::All(vec![lhs, rhs]),
        }
    }
}

impl std::ops::Not for GroupQuery {
    type Output = Self;
    /// `!a`: does not hold.
    fn not(self) -> Self {
        Self::Not(Box::new(self))
    }
}

impl fmt::Display for GroupQuery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let list = |f: &mut fmt::Formatter<'_>, op: &str, items: &[GroupQuery]| {
            write!(f, "{op}(")?;
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    f.write_str(", ")?;
                }
                write!(f, "{item}")?;
            }
            f.write_str(")")
        };
        match self {
            Self::Group(dn) => write!(f, "{dn:?}"),
            Self::Any(items) => list(f, "any", items),
            Self::All(items) => list(f, "all", items),
            Self::Not(inner) => write!(f, "not({inner})"),
        }
    }
}

impl GroupQuery {
    /// Every group DN the query names.
    pub fn dns(&self) -> Box<dyn Iterator<Item = &str> + '_> {
        match self {
            Self::Group(dn) => Box::new(std::iter::once(dn.as_str())),
            Self::Any(items) | Self::All(items) => Box::new(items.iter().flat_map(Self::dns)),
            Self::Not(inner) => inner.dns(),
        }
    }

    /// Checks every DN, refuses empty lists and nesting deeper than [`MAX_DEPTH`]. `what`
    /// names the setting in the error.
    ///
    /// # Errors
    /// [`Error::Config`] naming the setting and the problem.
    pub fn validate(&self, what: &str) -> Result<(), Error> {
        self.check(what, 1)
    }

    fn check(&self, what: &str, depth: usize) -> Result<(), Error> {
        if depth > MAX_DEPTH {
            return Err(Error::Config(format!("{what} nests deeper than {MAX_DEPTH} levels")));
        }
        match self {
            Self::Group(group_dn) => dn::Dn::parse(group_dn)
                .map(|_| ())
                .map_err(|e| Error::Config(format!("{what}: {group_dn:?} is not a DN: {e}"))),
            Self::Any(items) | Self::All(items) if items.is_empty() => Err(Error::Config(format!(
                "{what} holds an empty group list (which would match {} user): name at least one group",
                if matches!(self, Self::Any(_)) { "no" } else { "every" }
            ))),
            Self::Any(items) | Self::All(items) => items.iter().try_for_each(|q| q.check(what, depth + 1)),
            Self::Not(inner) => inner.check(what, depth + 1),
        }
    }

    /// The same query with every DN normalised ([`dn::normalize`]), ready for [`GroupQuery::matches`].
    #[must_use]
    pub fn normalized(&self) -> Self {
        match self {
            Self::Group(group_dn) => Self::Group(dn::normalize(group_dn)),
            Self::Any(items) => Self::Any(items.iter().map(Self::normalized).collect()),
            Self::All(items) => Self::All(items.iter().map(Self::normalized).collect()),
            Self::Not(inner) => Self::Not(Box::new(inner.normalized())),
        }
    }

    /// Whether a user in the groups `member_of` (normalised DNs) satisfies a
    /// [normalised](GroupQuery::normalized) query.
    #[must_use]
    pub fn matches(&self, member_of: &HashSet<String>) -> bool {
        match self {
            Self::Group(group_dn) => member_of.contains(group_dn),
            Self::Any(items) => items.iter().any(|q| q.matches(member_of)),
            Self::All(items) => items.iter().all(|q| q.matches(member_of)),
            Self::Not(inner) => !inner.matches(member_of),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize)]
    struct Holder {
        q: GroupQuery,
    }

    fn parse(text: &str) -> Result<GroupQuery, toml::de::Error> {
        toml::from_str::<Holder>(&format!("q = {text}")).map(|h| h.q)
    }

    fn set(dns: &[&str]) -> HashSet<String> {
        dns.iter().map(|d| dn::normalize(d)).collect()
    }

    #[test]
    fn toml_forms_parse_and_evaluate() {
        let q = parse(r#"{ any = ["CN=a,DC=x", { all = ["cn=b,dc=x", { not = "cn=c,dc=x" }] }] }"#).expect("parses");
        let built = GroupQuery::from("CN=a,DC=x") | (GroupQuery::from("cn=b,dc=x") & !GroupQuery::from("cn=c,dc=x"));
        assert_eq!(q, built);
        q.validate("require_group").expect("valid");
        let q = q.normalized();
        assert!(q.matches(&set(&["cn=A, dc=X"])));
        assert!(q.matches(&set(&["cn=b,dc=x"])));
        assert!(!q.matches(&set(&["cn=b,dc=x", "cn=c,dc=x"])));
        assert!(!q.matches(&set(&["cn=c,dc=x"])));
        assert!(!q.matches(&set(&[])));
        assert_eq!(parse(r#""cn=a,dc=x""#).expect("plain string"), GroupQuery::Group("cn=a,dc=x".into()));
        assert_eq!(
            parse(r#"["cn=a,dc=x", "cn=b,dc=x"]"#).expect("list"),
            GroupQuery::Any(vec!["cn=a,dc=x".into(), "cn=b,dc=x".into()])
        );
    }

    #[test]
    fn bad_queries_are_typed_errors() {
        assert!(parse(r#"{ either = ["cn=a,dc=x"] }"#).is_err(), "unknown operator");
        assert!(parse(r#"{ any = ["cn=a,dc=x"], all = ["cn=b,dc=x"] }"#).is_err(), "two operators in one table");
        assert!(parse("3").is_err());
        for (text, expect) in [
            ("[]", "empty"),
            ("{ all = [] }", "empty"),
            (r#"{ not = { any = [] } }"#, "empty"),
            (r#"{ any = ["not a dn"] }"#, "not a DN"),
        ] {
            let err = parse(text).expect("parses").validate("deny_group").expect_err(text);
            assert!(matches!(&err, Error::Config(m) if m.contains(expect) && m.contains("deny_group")), "{err}");
        }
        let mut deep = GroupQuery::from("cn=a,dc=x");
        for _ in 0..MAX_DEPTH {
            deep = !deep;
        }
        assert!(deep.validate("q").is_err(), "too deep");
    }
}
