//! Search filters (RFC 4515): value escaping, the `%(user)s` / `{user}` templates, and AND.

/// The placeholders a filter or DN template may use for the login name: Ralph's
/// (django-auth-ldap's) `%(user)s` and the shorter `{user}`.
pub const PLACEHOLDERS: [&str; 2] = ["%(user)s", "{user}"];

/// Escapes a value for use inside a filter (RFC 4515 section 3): `*`, `(`, `)`, `\` and NUL
/// become `\2a`, `\28`, `\29`, `\5c`, `\00`. Every other byte, UTF-8 included, stays as it is
/// (RFC 4515 requires no more). This is ldap3's `ldap_escape`, kept here under our name.
#[must_use]
pub fn escape(value: &str) -> std::borrow::Cow<'_, str> {
    ldap3::ldap_escape(value)
}

/// Whether `template` contains a user placeholder.
#[must_use]
pub fn has_placeholder(template: &str) -> bool {
    PLACEHOLDERS.iter().any(|p| template.contains(p))
}

/// Replaces every user placeholder in `template` with `value`, which the caller has already
/// escaped for where the template goes (a filter or a DN).
///
/// One pass over the template: the inserted value is never scanned again, so a login that
/// itself contains `{user}` or `%(user)s` is taken literally (replacing one placeholder after
/// the other would expand the second inside the value the first put there).
#[must_use]
pub fn fill(template: &str, value: &str) -> String {
    let mut out = String::with_capacity(template.len() + value.len());
    let mut rest = template;
    while !rest.is_empty() {
        if let Some(p) = PLACEHOLDERS.iter().find(|p| rest.starts_with(**p)) {
            out.push_str(value);
            rest = &rest[p.len()..];
        } else if let Some(c) = rest.chars().next() {
            out.push(c);
            rest = &rest[c.len_utf8()..];
        }
    }
    out
}

/// How a filter template uses the placeholder: the attributes it compares with the bare
/// placeholder (`uid` in `(uid={user})`), and whether it also uses it any other way (inside a
/// larger value, in another kind of assertion, or under a `!`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PlaceholderUse<'a> {
    /// The attributes compared for equality with the bare placeholder, outside any `!`, in
    /// order and each once (compared case-insensitively).
    pub attrs: Vec<&'a str>,
    /// How many times the placeholder appears in all.
    pub count: usize,
}

impl<'a> PlaceholderUse<'a> {
    /// Scans a (parenthesized) filter template.
    #[must_use]
    pub fn of(template: &'a str) -> Self {
        let bytes = template.as_bytes();
        // The open parenthesis of every enclosing item and whether it is a NOT.
        let mut stack: Vec<(usize, bool)> = Vec::new();
        let mut found = Self::default();
        let mut pos = 0;
        while pos < bytes.len() {
            // The placeholders hold parentheses of their own: skip them whole.
            if let Some(p) = PLACEHOLDERS.iter().find(|p| bytes[pos..].starts_with(p.as_bytes())) {
                found.count += 1;
                let negated = stack.iter().any(|&(_, not)| not);
                if let Some(attr) = stack.last().and_then(|&(open, _)| bare_item(template, open)).filter(|_| !negated)
                    && !found.attrs.iter().any(|a| a.eq_ignore_ascii_case(attr))
                {
                    found.attrs.push(attr);
                }
                pos += p.len();
                continue;
            }
            match bytes[pos] {
                b'(' => stack.push((pos, bytes.get(pos + 1) == Some(&b'!'))),
                b')' => {
                    stack.pop();
                }
                _ => {}
            }
            pos += 1;
        }
        found
    }

    /// The one attribute the login name is compared with, when that is the only use of the
    /// placeholder: `sAMAccountName` in `(&(objectClass=user)(sAMAccountName=%(user)s))`.
    /// `None` when the placeholder is compared with several attributes (`(|(mail={user})
    /// (uid={user}))`: a login may come in through either), only appears inside a larger value
    /// (`(uid=x-{user})`), in another kind of assertion (`~=`, extensible matches) or under a
    /// `!`.
    #[must_use]
    pub fn single_attr(&self) -> Option<&'a str> {
        match self.attrs.as_slice() {
            [attr] if self.count == 1 => Some(attr),
            _ => None,
        }
    }
}

/// The attribute of the item opened at `open` when the item is `(attr=<placeholder>)`.
fn bare_item(template: &str, open: usize) -> Option<&str> {
    let item = &template[open + 1..];
    let (attr, value) = item.split_once('=')?;
    let is_attr = attr.starts_with(|c: char| c.is_ascii_alphanumeric())
        && attr.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b';');
    let bare = PLACEHOLDERS.iter().any(|p| value.strip_prefix(p).is_some_and(|after| after.starts_with(')')));
    (is_attr && bare).then_some(attr)
}

/// The attribute a filter template compares the login name with, when it compares it with
/// exactly one (see [`PlaceholderUse::single_attr`]).
#[must_use]
pub fn placeholder_attr(template: &str) -> Option<&str> {
    PlaceholderUse::of(template).single_attr()
}

/// Wraps a filter in parentheses when it is a bare `attr=value` item.
#[must_use]
pub fn parenthesize(filter: &str) -> String {
    let f = filter.trim();
    if f.starts_with('(') { f.to_owned() } else { format!("({f})") }
}

/// ANDs the non-empty filters together; one filter is returned as it is.
#[must_use]
pub fn and(filters: &[&str]) -> String {
    let parts: Vec<String> = filters.iter().filter(|f| !f.trim().is_empty()).map(|f| parenthesize(f)).collect();
    match parts.len() {
        0 => "(objectClass=*)".to_owned(),
        1 => parts.into_iter().next().unwrap_or_default(),
        _ => format!("(&{})", parts.concat()),
    }
}

/// Checks that a configured filter parses (ldap3's parser), so a typo is a configuration
/// error at start, not a failed login later.
///
/// # Errors
/// A message naming the filter.
pub fn check(filter: &str) -> Result<(), String> {
    ldap3::parse_filter(parenthesize(filter)).map(|_| ()).map_err(|()| format!("invalid LDAP filter {filter:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn escapes_metacharacters() {
        assert_eq!(escape("alice"), "alice");
        assert_eq!(escape("*"), "\\2a");
        assert_eq!(escape("a)(uid=*"), "a\\29\\28uid=\\2a");
        assert_eq!(escape("back\\slash\0"), "back\\5cslash\\00");
        assert_eq!(escape("łukasz"), "łukasz");
    }

    #[test]
    fn templates_and_conjunction() {
        let t = "(&(objectClass=*)(sAMAccountName=%(user)s))";
        assert!(has_placeholder(t) && has_placeholder("uid={user}") && !has_placeholder("(uid=x)"));
        assert_eq!(fill(t, "bob"), "(&(objectClass=*)(sAMAccountName=bob))");
        assert_eq!(fill("uid={user}", "x"), "uid=x");
        assert_eq!(fill("{user}%(user)s{user", "ł"), "łł{user");
    }

    #[test]
    fn the_attribute_compared_with_the_placeholder() {
        assert_eq!(placeholder_attr("(&(objectClass=*)(sAMAccountName=%(user)s))"), Some("sAMAccountName"));
        assert_eq!(placeholder_attr("(uid={user})"), Some("uid"));
        assert_eq!(placeholder_attr("(|(mail=x)(uid={user}))"), Some("uid"));
        assert_eq!(placeholder_attr("(|(mail=x)(uid={user})(cn={user}))"), None, "two attributes");
        assert_eq!(placeholder_attr("(|(mail=%(user)s)(uid=%(user)s))"), None, "two attributes");
        assert_eq!(placeholder_attr("(&(uid={user})(!(cn={user})))"), None, "also under a NOT");
        assert_eq!(placeholder_attr("(!(uid={user}))"), None, "only under a NOT");
        assert_eq!(placeholder_attr("(|(uid={user})(mail={user}@corp.example))"), None, "also in a value");
        assert_eq!(placeholder_attr("(&(cn=a\\29b)(uid=%(user)s))"), Some("uid"), "escaped parenthesis");
        assert_eq!(placeholder_attr("(userPrincipalName={user}@corp.example)"), None);
        assert_eq!(placeholder_attr("(uid~={user})"), None);
        assert_eq!(placeholder_attr("(uid:caseExactMatch:={user})"), None);
        assert_eq!(placeholder_attr("uid={user}"), None, "validated filters are parenthesized first");
        let both = PlaceholderUse::of("(|(mail=%(user)s)(&(objectClass=*)(UID=%(user)s))(uid={user})(!(cn={user})))");
        assert_eq!((both.attrs, both.count), (vec!["mail", "UID"], 4));
    }

    #[test]
    fn placeholders_inside_the_value_are_literal() {
        // The value is inserted once and never expanded again, whichever placeholder it holds.
        assert_eq!(fill("(uid=%(user)s)", "a{user}b"), "(uid=a{user}b)");
        assert_eq!(fill("(uid={user})", "a%(user)sb"), "(uid=a%(user)sb)");
        assert_eq!(fill("(|(cn=%(user)s)(uid={user}))", "{user}"), "(|(cn={user})(uid={user}))");
        assert_eq!(fill("uid=%(user)s,dc=x", "%(user)s{user}"), "uid=%(user)s{user},dc=x");
        assert_eq!(and(&["(a=1)", "", "b=2"]), "(&(a=1)(b=2))");
        assert_eq!(and(&["(a=1)"]), "(a=1)");
        assert_eq!(and(&[]), "(objectClass=*)");
        assert!(check("(&(a=1)(b=2))").is_ok());
        assert!(check("uid=x").is_ok());
        assert!(check("(&(a=1)").is_err());
    }

    proptest! {
        /// However hostile, an escaped value stays one equality assertion: the filter still
        /// parses, and it has exactly the structure of the template with a harmless value.
        #[test]
        fn escaped_values_cannot_change_filter_structure(value in "\\PC{0,30}") {
            let filter = and(&[&fill("(uid=%(user)s)", &escape(&value)), "(memberOf=cn=g,dc=x)"]);
            prop_assert!(ldap3::parse_filter(&filter).is_ok(), "{} does not parse", filter);
            let unescaped_meta = filter
                .replace("\\2a", "").replace("\\28", "").replace("\\29", "").replace("\\5c", "").replace("\\00", "");
            prop_assert_eq!(unescaped_meta.matches('(').count(), 3);
            prop_assert_eq!(unescaped_meta.matches(')').count(), 3);
            prop_assert!(!value.contains('*') || !unescaped_meta.contains(&value), "wildcard survived");
            prop_assert!(!escape(&value).contains('*'));
        }

        /// Filling is one substitution per placeholder in the template, whatever the value.
        #[test]
        fn fill_inserts_the_value_verbatim(value in "(\\{user\\}|%\\(user\\)s|[a-z{}()%]){0,8}") {
            prop_assert_eq!(fill("(uid=%(user)s)", &value), format!("(uid={value})"));
            prop_assert_eq!(fill("[{user}|%(user)s]", &value), format!("[{value}|{value}]"));
        }
    }
}
