//! Small text rules shared by the model: required names and "empty means none" fields.

use serde::{Deserialize, Deserializer};

use crate::ValidationError;

/// Trims `value` and refuses it when empty or longer than `max` characters.
///
/// # Errors
/// [`ValidationError::Empty`] or [`ValidationError::TooLong`].
pub fn required(field: &'static str, value: &str, max: usize) -> Result<String, ValidationError> {
    let trimmed = value.trim();
    if trimmed.is_empty() {
        return Err(ValidationError::Empty { field });
    }
    check_len(field, trimmed, max)?;
    Ok(trimmed.to_owned())
}

/// Refuses a value longer than `max` characters (Unicode scalar values, not bytes).
///
/// # Errors
/// [`ValidationError::TooLong`].
pub fn check_len(field: &'static str, value: &str, max: usize) -> Result<(), ValidationError> {
    if value.chars().count() > max {
        return Err(ValidationError::TooLong { field, max });
    }
    Ok(())
}

/// Ralph v3 stores an empty serial number or barcode as NULL so uniqueness ignores blanks:
/// trims the value and maps an empty result to `None`.
#[must_use]
pub fn blank_to_none(value: Option<&str>) -> Option<String> {
    value.map(str::trim).filter(|v| !v.is_empty()).map(str::to_owned)
}

/// Serde helper applying [`blank_to_none`] while deserializing.
///
/// # Errors
/// Whatever the deserializer reports for a value that is not a string or null.
pub fn deserialize_blank_as_none<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<String>, D::Error> {
    let value = Option::<String>::deserialize(deserializer)?;
    Ok(blank_to_none(value.as_deref()))
}

/// Serializes a validated text type as its `Display` form and deserializes it through its
/// `FromStr` (so serde input is validated exactly like any other input).
macro_rules! serde_as_validated_str {
    ($ty:ty) => {
        impl serde::Serialize for $ty {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.collect_str(self)
            }
        }

        impl<'de> serde::Deserialize<'de> for $ty {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let text = <String as serde::Deserialize>::deserialize(deserializer)?;
                text.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}
pub(crate) use serde_as_validated_str;
