//! Typed row ids and the `Record` wrapper that pairs a stored value with its id.

use std::fmt;
use std::marker::PhantomData;

use serde::{Deserialize, Serialize};

/// The id of a stored `T`. Ids of different entity types do not mix.
#[derive(Serialize, Deserialize)]
#[serde(transparent)]
pub struct Id<T> {
    raw: i64,
    #[serde(skip)]
    _marker: PhantomData<fn() -> T>,
}

impl<T> Id<T> {
    /// Wraps a raw database id.
    #[must_use]
    pub const fn new(raw: i64) -> Self {
        Self { raw, _marker: PhantomData }
    }

    /// The raw database id.
    #[must_use]
    pub const fn get(self) -> i64 {
        self.raw
    }
}

// Manual impls: derives would demand `T: Clone` etc.
impl<T> Clone for Id<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for Id<T> {}
impl<T> PartialEq for Id<T> {
    fn eq(&self, other: &Self) -> bool {
        self.raw == other.raw
    }
}
impl<T> Eq for Id<T> {}
impl<T> PartialOrd for Id<T> {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl<T> Ord for Id<T> {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.raw.cmp(&other.raw)
    }
}
impl<T> std::hash::Hash for Id<T> {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.raw.hash(state);
    }
}
impl<T> fmt::Debug for Id<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.raw)
    }
}
impl<T> fmt::Display for Id<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.raw)
    }
}

/// A stored value with its id.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record<T> {
    /// The row id.
    pub id: Id<T>,
    /// The value.
    #[serde(flatten)]
    pub value: T,
}

impl<T> std::ops::Deref for Record<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.value
    }
}

/// A model type that can be stored: it has a name for errors and re-checks its own invariants
/// before every write, so a value built field by field cannot bypass validation.
pub trait Entity: Send + Sync + Sized + 'static {
    /// The entity's name in errors and logs (`"data centre"`, `"rack"`).
    const NAME: &'static str;

    /// Checks the invariants that involve only this value.
    ///
    /// # Errors
    /// The first rule the value breaks.
    fn validate(&self) -> Result<(), crate::ValidationError>;
}
