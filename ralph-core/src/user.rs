//! Users, their profiles and their groups (roles).

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::text::{blank_to_none, check_len, required};
use crate::{CountryCode, ValidationError};

/// Who owns an account: the local database, or an LDAP directory that it is mirrored from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum UserSource {
    /// A local account with a local password.
    #[default]
    Local,
    /// Mirrored from LDAP; never holds a usable local password.
    Ldap,
}

impl UserSource {
    /// `"local"` or `"ldap"`.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Local => "local",
            Self::Ldap => "ldap",
        }
    }

    /// Parses `"local"` / `"ldap"`.
    ///
    /// # Errors
    /// [`ValidationError::UnknownName`].
    pub fn parse(input: &str) -> Result<Self, ValidationError> {
        match input {
            "local" => Ok(Self::Local),
            "ldap" => Ok(Self::Ldap),
            _ => Err(ValidationError::UnknownName { what: "user source", input: input.to_owned() }),
        }
    }
}

/// A user account.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    /// Unique login name (1–150 characters, no whitespace or control characters).
    pub username: String,
    /// Given name.
    pub first_name: String,
    /// Family name.
    pub last_name: String,
    /// E-mail address.
    pub email: Option<String>,
    /// May log in (Ralph: member of `active`).
    pub is_active: bool,
    /// May use the admin views.
    pub is_staff: bool,
    /// Has every permission.
    pub is_superuser: bool,
    /// Where the account comes from.
    pub source: UserSource,
    /// The directory (LDAP realm, such as `corp` or `lab.example`) that owns an LDAP account
    /// when several are configured; `None` for local accounts and for a single unnamed
    /// directory. A mirror from one directory never takes over an account another one owns.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub directory: Option<String>,
}

impl User {
    /// An active local user with no names.
    ///
    /// # Errors
    /// [`ValidationError`] for a malformed username.
    pub fn new(username: &str) -> Result<Self, ValidationError> {
        Ok(Self {
            username: check_username(username)?,
            first_name: String::new(),
            last_name: String::new(),
            email: None,
            is_active: true,
            is_staff: false,
            is_superuser: false,
            source: UserSource::Local,
            directory: None,
        })
    }

    /// The user's "First Last" name, or the username when both are empty.
    #[must_use]
    pub fn display_name(&self) -> String {
        let full = format!("{} {}", self.first_name, self.last_name);
        let full = full.trim();
        if full.is_empty() { self.username.clone() } else { full.to_owned() }
    }

    /// Checks the user's own fields.
    ///
    /// # Errors
    /// The first rule a field breaks.
    pub fn validate(&self) -> Result<(), ValidationError> {
        check_username(&self.username)?;
        check_len("first_name", &self.first_name, 150)?;
        check_len("last_name", &self.last_name, 150)?;
        if let Some(email) = &self.email {
            check_len("email", email, 254)?;
        }
        if let Some(directory) = &self.directory {
            if directory.trim().is_empty() {
                return Err(ValidationError::Empty { field: "directory" });
            }
            check_len("directory", directory, 64)?;
        }
        Ok(())
    }
}

/// Validates a username: 1–150 characters, no whitespace or control characters.
///
/// # Errors
/// [`ValidationError::Empty`], [`ValidationError::TooLong`] or [`ValidationError::Invalid`].
pub fn check_username(username: &str) -> Result<String, ValidationError> {
    if username.is_empty() {
        return Err(ValidationError::Empty { field: "username" });
    }
    check_len("username", username, 150)?;
    if username.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(ValidationError::Invalid { field: "username", reason: "whitespace or control characters".into() });
    }
    Ok(username.to_owned())
}

/// Profile fields Ralph maps from the directory.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Profile {
    /// Company.
    pub company: Option<String>,
    /// The manager's display name (from a DN such as `CN=John Smith,OU=...` it is `John Smith`).
    pub manager: Option<String>,
    /// Department.
    pub department: Option<String>,
    /// Employee id.
    pub employee_id: Option<String>,
    /// Office or location.
    pub location: Option<String>,
    /// Country, ISO 3166-1 alpha-2.
    pub country: Option<CountryCode>,
}

impl Profile {
    /// Trims every text field, maps blanks to none and checks lengths.
    ///
    /// # Errors
    /// [`ValidationError::TooLong`].
    pub fn normalised(self) -> Result<Self, ValidationError> {
        let field = |name: &'static str, value: Option<String>| -> Result<Option<String>, ValidationError> {
            let value = blank_to_none(value.as_deref());
            if let Some(v) = &value {
                check_len(name, v, 255)?;
            }
            Ok(value)
        };
        Ok(Self {
            company: field("company", self.company)?,
            manager: field("manager", self.manager)?,
            department: field("department", self.department)?,
            employee_id: field("employee_id", self.employee_id)?,
            location: field("location", self.location)?,
            country: self.country,
        })
    }
}

/// A group, which Ralph uses as a role.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Group(String);

impl Group {
    /// Members may log in.
    pub const ACTIVE: &'static str = "active";
    /// Members are superusers.
    pub const SUPERUSER: &'static str = "superuser";
    /// Members are staff.
    pub const STAFF: &'static str = "staff";
    /// Asset buyers.
    pub const ASSETS_BUYER: &'static str = "assets-buyer";
    /// Asset helpers.
    pub const ASSETS_HELPER: &'static str = "assets-helper";
    /// Asset staff.
    pub const ASSETS_STAFF: &'static str = "assets-staff";
    /// The well-known role names.
    pub const WELL_KNOWN: [&'static str; 6] =
        [Self::ACTIVE, Self::SUPERUSER, Self::STAFF, Self::ASSETS_BUYER, Self::ASSETS_HELPER, Self::ASSETS_STAFF];

    /// A group name: 1–150 characters after trimming.
    ///
    /// # Errors
    /// An empty or overlong name.
    pub fn new(name: &str) -> Result<Self, ValidationError> {
        required("group", name, 150).map(Self)
    }

    /// The name.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether this is one of Ralph's well-known roles.
    #[must_use]
    pub fn is_well_known(&self) -> bool {
        Self::WELL_KNOWN.contains(&self.0.as_str())
    }
}

impl fmt::Display for Group {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for Group {
    type Error = ValidationError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::new(&value)
    }
}

impl From<Group> for String {
    fn from(value: Group) -> Self {
        value.0
    }
}

/// Sets `is_active`, `is_staff` and `is_superuser` from membership of `active`, `staff` and
/// `superuser`, as Ralph does for directory users.
pub fn apply_role_flags(user: &mut User, groups: &[Group]) {
    let has = |name: &str| groups.iter().any(|g| g.as_str() == name);
    user.is_active = has(Group::ACTIVE);
    user.is_staff = has(Group::STAFF);
    user.is_superuser = has(Group::SUPERUSER);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usernames_and_groups() {
        assert!(User::new("jan.kowalski").is_ok());
        assert!(User::new("żółw").is_ok());
        for bad in ["", "a b", "tab\t", "nl\n", &"x".repeat(151)] {
            assert!(User::new(bad).is_err(), "{bad:?} accepted");
        }
        assert!(Group::new(" ").is_err());
        assert!(Group::new("superuser").expect("valid").is_well_known());
        let mut u = User::new("x").expect("valid");
        apply_role_flags(&mut u, &[Group::new("staff").expect("valid")]);
        assert!(!u.is_active && u.is_staff && !u.is_superuser);
    }

    #[test]
    fn profile_normalises() {
        let p = Profile { company: Some("  ".into()), department: Some(" IT ".into()), ..Profile::default() };
        let p = p.normalised().expect("valid");
        assert_eq!((p.company, p.department.as_deref()), (None, Some("IT")));
    }
}
