//! Distinguished names (RFC 4514): parsing, escaping, comparison and display names.
//!
//! Active Directory and OpenLDAP write the same DN in several ways (`CN=Smith\, John`,
//! `cn=Smith\2C John`, `cn=#0c0b536d6974682c204a6f686e`); [`Dn::parse`] decodes all of them to
//! the same attribute values, and [`Dn::normalized`] gives a key that compares equal for DNs a
//! directory would consider equal (attribute types case-insensitive, values with insignificant
//! spaces and case folded, multi-valued RDNs in a fixed order).

use std::borrow::Cow;
use std::fmt::{self, Write as _};

/// Why a DN could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid DN at byte {position}: {reason}")]
pub struct DnError {
    /// Byte offset in the input where parsing failed.
    pub position: usize,
    /// What was wrong.
    pub reason: &'static str,
}

/// One `type=value` pair of an RDN, with the value decoded (escapes and `#hex` resolved).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ava {
    /// The attribute type as written (`CN`, `cn`, `2.5.4.3`).
    pub attr: String,
    /// The decoded value.
    pub value: String,
}

/// A relative distinguished name: one or more AVAs joined by `+`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rdn(pub Vec<Ava>);

impl Rdn {
    /// The value of the first AVA whose type is `attr` (case-insensitive).
    #[must_use]
    pub fn value_of(&self, attr: &str) -> Option<&str> {
        self.0.iter().find(|a| a.attr.eq_ignore_ascii_case(attr)).map(|a| a.value.as_str())
    }
}

/// A parsed distinguished name, most specific RDN first (as written).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dn(pub Vec<Rdn>);

impl Dn {
    /// Parses an RFC 4514 string. The empty string is the root DN (no RDNs).
    ///
    /// Accepts the legacy separators `;` between RDNs and spaces around `,`, `+` and `=` that
    /// Active Directory and older servers emit.
    ///
    /// # Errors
    /// [`DnError`] for a malformed DN (a missing `=`, a dangling escape, bad hex, non-UTF-8 bytes).
    pub fn parse(input: &str) -> Result<Self, DnError> {
        Parser { bytes: input.as_bytes(), pos: 0 }.dn()
    }

    /// The first (most specific) RDN.
    #[must_use]
    pub fn first(&self) -> Option<&Rdn> {
        self.0.first()
    }

    /// A comparison key: equal for DNs a directory treats as equal under case-insensitive
    /// matching (the usual rule for `cn`, `ou`, `dc`, `uid`).
    #[must_use]
    pub fn normalized(&self) -> String {
        let mut out = String::new();
        for (i, rdn) in self.0.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            let mut avas: Vec<(String, String)> =
                rdn.0.iter().map(|a| (normalize_attr(&a.attr), normalize_value(&a.value))).collect();
            avas.sort();
            for (j, (attr, value)) in avas.iter().enumerate() {
                if j > 0 {
                    out.push('+');
                }
                out.push_str(attr);
                out.push('=');
                out.push_str(&escape_value(value));
            }
        }
        out
    }

    /// The display name of the entry this DN names: the value of its `cn` (or, when the first
    /// RDN has no `cn`, its first value). `CN=Smith\, John,OU=...` gives `Smith, John`.
    #[must_use]
    pub fn display_name(&self) -> Option<&str> {
        let rdn = self.first()?;
        rdn.value_of("cn").or_else(|| rdn.0.first().map(|a| a.value.as_str()))
    }
}

impl fmt::Display for Dn {
    /// The RFC 4514 string form, with values escaped as needed.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, rdn) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            for (j, ava) in rdn.0.iter().enumerate() {
                if j > 0 {
                    f.write_str("+")?;
                }
                write!(f, "{}={}", ava.attr, escape_value(&ava.value))?;
            }
        }
        Ok(())
    }
}

/// Normalises a DN string for comparison; a string that is not a valid DN is compared as
/// lower-cased text, so it can only ever equal itself.
#[must_use]
pub fn normalize(dn: &str) -> String {
    Dn::parse(dn).map_or_else(|_| format!("\u{0}invalid:{}", dn.to_lowercase()), |d| d.normalized())
}

/// Whether two DN strings name the same entry (see [`Dn::normalized`]).
#[must_use]
pub fn same_dn(a: &str, b: &str) -> bool {
    normalize(a) == normalize(b)
}

/// The manager display name Ralph stores for a `manager` DN value: `CN=John Smith,OU=...` is
/// `John Smith`. A value that is not a DN is returned trimmed, as it is.
#[must_use]
pub fn display_name(value: &str) -> Option<String> {
    let value = value.trim();
    if value.is_empty() {
        return None;
    }
    match Dn::parse(value) {
        Ok(dn) => dn.display_name().map(|s| s.trim().to_owned()).filter(|s| !s.is_empty()),
        Err(_) => Some(value.to_owned()),
    }
}

/// The attribute of a DN template's first RDN when its value is the bare placeholder: `uid` in
/// `uid=%(user)s,ou=people,dc=example,dc=com`; `None` for `cn=x-{user},...`.
#[must_use]
pub fn template_attr(template: &str) -> Option<&str> {
    let (attr, value) = template.split_once('=')?;
    let attr = attr.trim();
    let is_attr = attr.starts_with(|c: char| c.is_ascii_alphanumeric())
        && attr.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
    let value = value.trim_start();
    let bare = crate::filter::PLACEHOLDERS.iter().any(|p| {
        value.strip_prefix(p).is_some_and(|after| {
            let after = after.trim_start();
            after.is_empty() || after.starts_with([',', '+', ';'])
        })
    });
    (is_attr && bare).then_some(attr)
}

/// Escapes a string for use as an attribute value in a DN (RFC 4514 section 2.4): `"`, `+`,
/// `,`, `;`, `<`, `>`, `\\` and `=` always, a leading `#` or space, a trailing space, NUL and other
/// control characters, all as `\\XX` hex.
#[must_use]
pub fn escape_value(value: &str) -> Cow<'_, str> {
    let escaped = ldap3::dn_escape(value);
    // ldap3 escapes NUL but no other control character (RFC 4514 allows them raw); we escape
    // them too, so a DN built from a login never carries a raw newline or terminal escape to
    // the server or into a log.
    if !escaped.contains(char::is_control) {
        return escaped;
    }
    let mut out = String::with_capacity(escaped.len() + 8);
    for c in escaped.chars() {
        if c.is_control() {
            let mut buf = [0u8; 4];
            for b in c.encode_utf8(&mut buf).bytes() {
                let _ = write!(out, "\\{b:02x}");
            }
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

fn normalize_attr(attr: &str) -> String {
    let lower = attr.trim().to_ascii_lowercase();
    // The OIDs of the types that appear in group and manager DNs, so `2.5.4.3=x` equals `cn=x`.
    match lower.as_str() {
        "2.5.4.3" => "cn".to_owned(),
        "2.5.4.11" => "ou".to_owned(),
        "2.5.4.10" => "o".to_owned(),
        "0.9.2342.19200300.100.1.25" => "dc".to_owned(),
        "0.9.2342.19200300.100.1.1" => "uid".to_owned(),
        _ => lower,
    }
}

fn normalize_value(value: &str) -> String {
    // Insignificant space handling (RFC 4518, simplified): trim and collapse inner runs.
    value.split_whitespace().collect::<Vec<_>>().join(" ").to_lowercase()
}

struct Parser<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl Parser<'_> {
    fn err(&self, reason: &'static str) -> DnError {
        DnError { position: self.pos, reason }
    }

    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.pos).copied()
    }

    fn skip_spaces(&mut self) {
        while self.peek() == Some(b' ') {
            self.pos += 1;
        }
    }

    fn dn(mut self) -> Result<Dn, DnError> {
        let mut rdns = Vec::new();
        self.skip_spaces();
        if self.peek().is_none() {
            return Ok(Dn(rdns));
        }
        loop {
            rdns.push(self.rdn()?);
            match self.peek() {
                None => return Ok(Dn(rdns)),
                Some(b',' | b';') => self.pos += 1,
                Some(_) => return Err(self.err("expected ',' between RDNs")),
            }
        }
    }

    fn rdn(&mut self) -> Result<Rdn, DnError> {
        let mut avas = Vec::new();
        loop {
            avas.push(self.ava()?);
            if self.peek() == Some(b'+') {
                self.pos += 1;
            } else {
                return Ok(Rdn(avas));
            }
        }
    }

    fn ava(&mut self) -> Result<Ava, DnError> {
        self.skip_spaces();
        let start = self.pos;
        while let Some(b) = self.peek() {
            if b.is_ascii_alphanumeric() || b == b'-' || b == b'.' {
                self.pos += 1;
            } else {
                break;
            }
        }
        if self.pos == start {
            return Err(self.err("expected an attribute type"));
        }
        let attr = String::from_utf8_lossy(&self.bytes[start..self.pos]).into_owned();
        if !attr.as_bytes()[0].is_ascii_alphabetic() && !attr.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
            return Err(DnError { position: start, reason: "attribute type is neither a name nor an OID" });
        }
        self.skip_spaces();
        if self.peek() != Some(b'=') {
            return Err(self.err("expected '='"));
        }
        self.pos += 1;
        self.skip_spaces();
        let value = if self.peek() == Some(b'#') { self.hex_value()? } else { self.string_value()? };
        Ok(Ava { attr, value })
    }

    fn hex_value(&mut self) -> Result<String, DnError> {
        self.pos += 1;
        let start = self.pos;
        while self.peek().is_some_and(|b| b.is_ascii_hexdigit()) {
            self.pos += 1;
        }
        let hex = &self.bytes[start..self.pos];
        if hex.is_empty() || !hex.len().is_multiple_of(2) {
            return Err(self.err("'#' must be followed by an even number of hex digits"));
        }
        self.skip_spaces();
        if !matches!(self.peek(), None | Some(b',' | b';' | b'+')) {
            return Err(self.err("unexpected character after '#' value"));
        }
        let der: Vec<u8> = hex.chunks(2).map(|pair| (hex_digit(pair[0]) << 4) | hex_digit(pair[1])).collect();
        // The value is a BER-encoded string (usually a UTF8String, 0x0c, or a PrintableString,
        // 0x13, with a short length); show its contents, or the raw bytes when they are not that.
        let content = match der.as_slice() {
            [_tag, len, rest @ ..] if usize::from(*len) == rest.len() && *len < 0x80 => rest,
            other => other,
        };
        String::from_utf8(content.to_vec()).map_err(|_| DnError { position: start, reason: "hex value is not UTF-8" })
    }

    fn string_value(&mut self) -> Result<String, DnError> {
        let mut bytes = Vec::new();
        // Bytes that came from escapes are significant even when they are spaces.
        let mut significant_len = 0;
        while let Some(b) = self.peek() {
            match b {
                b',' | b';' | b'+' => break,
                b'\\' => {
                    self.pos += 1;
                    match self.peek() {
                        Some(h) if h.is_ascii_hexdigit() => {
                            let lo = self.bytes.get(self.pos + 1).copied();
                            match lo {
                                Some(l) if l.is_ascii_hexdigit() => {
                                    bytes.push((hex_digit(h) << 4) | hex_digit(l));
                                    self.pos += 2;
                                }
                                _ => return Err(self.err("incomplete hex escape")),
                            }
                        }
                        Some(c) if c.is_ascii_punctuation() || c == b' ' => {
                            bytes.push(c);
                            self.pos += 1;
                        }
                        _ => return Err(self.err("invalid escape")),
                    }
                    significant_len = bytes.len();
                }
                b'"' | b'<' | b'>' | 0 => return Err(self.err("unescaped special character in value")),
                _ => {
                    bytes.push(b);
                    self.pos += 1;
                    if b != b' ' {
                        significant_len = bytes.len();
                    }
                }
            }
        }
        // Unescaped trailing spaces are not part of the value.
        bytes.truncate(significant_len);
        String::from_utf8(bytes).map_err(|_| self.err("value is not UTF-8"))
    }
}

fn hex_digit(b: u8) -> u8 {
    match b {
        b'0'..=b'9' => b - b'0',
        b'a'..=b'f' => b - b'a' + 10,
        b'A'..=b'F' => b - b'A' + 10,
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn name(dn: &str) -> Option<String> {
        display_name(dn)
    }

    #[test]
    fn value_escaping_edges() {
        assert_eq!(escape_value("Jan Kowalski"), "Jan Kowalski");
        assert_eq!(escape_value("Łukasz"), "Łukasz", "non-ASCII stays as it is");
        assert_eq!(escape_value("Smith, John"), "Smith\\2c John");
        assert_eq!(escape_value("a+b=c;d<e>f\"g\\h"), "a\\2bb\\3dc\\3bd\\3ce\\3ef\\22g\\5ch");
        assert_eq!(escape_value("#x#"), "\\23x#", "only a leading #");
        assert_eq!(escape_value(" a b "), "\\20a b\\20", "leading and trailing space");
        assert_eq!(escape_value(" "), "\\20");
        // Beyond ldap3's dn_escape (NUL only): every control character, by its UTF-8 bytes.
        assert_eq!(escape_value("a\0b\nc\u{1b}d\u{85}"), "a\\00b\\0ac\\1bd\\c2\\85");
        let dn = Dn::parse(&format!("cn={},dc=x", escape_value(" a\nb\u{85} "))).expect("parses");
        assert_eq!(dn.display_name(), Some(" a\nb\u{85} "));
    }

    #[test]
    fn template_rdn_attribute() {
        assert_eq!(template_attr("uid=%(user)s,ou=people,dc=x"), Some("uid"));
        assert_eq!(template_attr("CN = {user} , OU=x"), Some("CN"));
        assert_eq!(template_attr("uid={user}"), Some("uid"));
        assert_eq!(template_attr("cn=x-{user},dc=x"), None);
        assert_eq!(template_attr("cn={user}-x,dc=x"), None);
        assert_eq!(template_attr("ou=people,uid={user}"), None);
    }

    #[test]
    fn manager_display_names() {
        assert_eq!(name("CN=John Smith,OU=TOR,OU=Corp-Users,DC=mydomain,DC=internal").as_deref(), Some("John Smith"));
        assert_eq!(name("CN=Smith\\, John,OU=TOR,DC=mydomain,DC=internal").as_deref(), Some("Smith, John"));
        assert_eq!(name("cn=Smith\\2C John,ou=people,dc=x").as_deref(), Some("Smith, John"));
        assert_eq!(name("cn=Smith\\2c John,ou=people,dc=x").as_deref(), Some("Smith, John"));
        assert_eq!(name("uid=jk+cn=Jan Kowalski,ou=people").as_deref(), Some("Jan Kowalski"));
        assert_eq!(name("cn=Jan Kowalski+employeeNumber=42,ou=people").as_deref(), Some("Jan Kowalski"));
        // #hex: a BER UTF8String holding "Smith, John".
        assert_eq!(name("cn=#0c0b536d6974682c204a6f686e,dc=x").as_deref(), Some("Smith, John"));
        assert_eq!(name("CN=Łukasz Żółć,OU=Kraków,DC=pl").as_deref(), Some("Łukasz Żółć"));
        assert_eq!(name("cn=\\C5\\81ukasz,dc=pl").as_deref(), Some("Łukasz"));
        assert_eq!(name("OU=Only Unit,DC=x").as_deref(), Some("Only Unit"));
        assert_eq!(name("  not a dn  ").as_deref(), Some("not a dn"));
        assert_eq!(name(""), None);
        assert_eq!(name("cn=,dc=x"), None);
    }

    #[test]
    fn spaces_escapes_and_legacy_separators() {
        let dn = Dn::parse("CN = Smith\\, John ; OU=x").expect("parses");
        assert_eq!(dn.0.len(), 2);
        assert_eq!(dn.display_name(), Some("Smith, John"));
        let dn = Dn::parse("cn=\\ lead and trail\\ ,dc=x").expect("parses");
        assert_eq!(dn.display_name(), Some(" lead and trail "));
        let dn = Dn::parse("cn=a\\+b\\=c\\\\d\\\"e,dc=x").expect("parses");
        assert_eq!(dn.display_name(), Some("a+b=c\\d\"e"));
        assert_eq!(Dn::parse("").expect("root").0.len(), 0);
    }

    #[test]
    fn malformed_dns_are_errors_not_panics() {
        for bad in
            ["cn", "=x", "cn=x,", "cn=x\\", "cn=x\\4", "cn=x\\zz", "cn=#abc", "cn=#zz", "cn=a\"b", "1x=y", "cn=x,,dc=y"]
        {
            assert!(Dn::parse(bad).is_err(), "{bad:?} parsed");
        }
        assert!(Dn::parse("cn=\\ff\\fe").is_err(), "invalid UTF-8 accepted");
    }

    #[test]
    fn comparison_ignores_case_spacing_escaping_and_ava_order() {
        let same = [
            ("CN=_gr_ralph,OU=Other,DC=mygroups,DC=domain", "cn=_GR_RALPH, ou=other, dc=MyGroups, dc=Domain"),
            ("cn=Smith\\, John,dc=x", "CN=Smith\\2C John,DC=x"),
            ("cn=Smith\\, John,dc=x", "cn=#0c0b536d6974682c204a6f686e,dc=x"),
            ("cn=a+uid=b,dc=x", "UID=b+CN=a,dc=x"),
            ("2.5.4.3=team,dc=x", "cn=team,dc=x"),
            ("cn=two  spaces,dc=x", "cn=two spaces,dc=x"),
        ];
        for (a, b) in same {
            assert!(same_dn(a, b), "{a} != {b}");
        }
        let different = [
            ("cn=a,dc=x", "cn=a,dc=y"),
            ("cn=a,dc=x", "cn=a\\,dc=x"),
            ("cn=a+uid=b,dc=x", "cn=a,uid=b,dc=x"),
            ("cn=a", "not a dn"),
        ];
        for (a, b) in different {
            assert!(!same_dn(a, b), "{a} == {b}");
        }
    }

    proptest! {
        #[test]
        fn escaped_values_round_trip(value in "\\PC{0,24}", tail in "[a-z]{1,8}") {
            let dn = format!("cn={},dc={tail}", escape_value(&value));
            let parsed = Dn::parse(&dn).expect("escaped value parses");
            prop_assert_eq!(parsed.0.len(), 2);
            prop_assert_eq!(parsed.0[0].0.len(), 1);
            prop_assert_eq!(&parsed.0[0].0[0].value, &value);
            prop_assert_eq!(Dn::parse(&parsed.to_string()).expect("display parses"), parsed);
        }

        #[test]
        fn any_value_with_controls_round_trips(value in any::<String>()) {
            let dn = format!("uid={},ou=people", escape_value(&value));
            let parsed = Dn::parse(&dn).expect("escaped value parses");
            prop_assert_eq!(parsed.0.len(), 2);
            prop_assert_eq!(&parsed.0[0].0[0].value, &value);
        }

        #[test]
        fn parser_never_panics(input in "\\PC{0,40}") {
            let _ = Dn::parse(&input);
            let _ = display_name(&input);
            let _ = normalize(&input);
        }

        #[test]
        fn distinct_values_never_compare_equal(a in "[a-zA-Z0-9 ,+=#\\\\]{1,12}", b in "[a-zA-Z0-9 ,+=#\\\\]{1,12}") {
            let da = format!("cn={},dc=x", escape_value(&a));
            let db = format!("cn={},dc=x", escape_value(&b));
            let equal_norm = normalize_value(&a) == normalize_value(&b);
            prop_assert_eq!(same_dn(&da, &db), equal_norm);
        }
    }
}
