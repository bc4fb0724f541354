//! Status lifecycles: asset statuses and a transition graph held as data.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::ValidationError;

/// The status of a data-centre asset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AssetStatus {
    /// Just bought or registered.
    New,
    /// Deployed and serving.
    InUse,
    /// Working, not in use.
    Free,
    /// Broken.
    Damaged,
    /// Disposed of.
    Liquidated,
    /// Waiting to be deployed.
    ToDeploy,
    /// Wiped.
    Cleaned,
    /// Waiting for disposal.
    PreLiquidated,
}

impl AssetStatus {
    /// Every status.
    pub const ALL: [Self; 8] = [
        Self::New,
        Self::InUse,
        Self::Free,
        Self::Damaged,
        Self::Liquidated,
        Self::ToDeploy,
        Self::Cleaned,
        Self::PreLiquidated,
    ];

    /// The snake_case name, as serialized and stored.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::New => "new",
            Self::InUse => "in_use",
            Self::Free => "free",
            Self::Damaged => "damaged",
            Self::Liquidated => "liquidated",
            Self::ToDeploy => "to_deploy",
            Self::Cleaned => "cleaned",
            Self::PreLiquidated => "pre_liquidated",
        }
    }

    /// Parses the snake_case name.
    ///
    /// # Errors
    /// [`ValidationError::UnknownName`].
    pub fn parse(input: &str) -> Result<Self, ValidationError> {
        Self::ALL
            .into_iter()
            .find(|s| s.as_str() == input)
            .ok_or_else(|| ValidationError::UnknownName { what: "asset status", input: input.to_owned() })
    }
}

impl fmt::Display for AssetStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One allowed move: from any of `from` to `to`, under a name such as `deploy`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transition {
    /// The name users pick, e.g. `deploy`.
    pub name: String,
    /// Statuses the move may start from.
    pub from: Vec<AssetStatus>,
    /// The status it ends in.
    pub to: AssetStatus,
}

/// A status lifecycle: the transitions that are allowed, as data a host app can load or change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransitionGraph {
    /// The transitions, looked up by name.
    pub transitions: Vec<Transition>,
}

impl TransitionGraph {
    /// Ralph's default lifecycle for data-centre assets.
    #[must_use]
    pub fn data_center_assets() -> Self {
        use AssetStatus::{Cleaned, Damaged, Free, InUse, Liquidated, New, PreLiquidated, ToDeploy};
        let t = |name: &str, from: &[AssetStatus], to| Transition { name: name.to_owned(), from: from.to_vec(), to };
        Self {
            transitions: vec![
                t("prepare_deployment", &[New, Free, Cleaned], ToDeploy),
                t("deploy", &[New, Free, ToDeploy, Cleaned], InUse),
                t("release", &[InUse, ToDeploy], Free),
                t("report_damage", &[New, InUse, Free, ToDeploy, Cleaned], Damaged),
                t("repair", &[Damaged], Free),
                t("clean", &[Free, Damaged], Cleaned),
                t("prepare_liquidation", &[Free, Damaged, Cleaned], PreLiquidated),
                t("liquidate", &[PreLiquidated], Liquidated),
            ],
        }
    }

    /// The status that transition `name` leads to from `current`.
    ///
    /// # Errors
    /// [`ValidationError::UnknownTransition`] for a name not in the graph,
    /// [`ValidationError::Transition`] when `current` is not one of its sources.
    pub fn apply(&self, name: &str, current: AssetStatus) -> Result<AssetStatus, ValidationError> {
        let transition = self
            .transitions
            .iter()
            .find(|t| t.name == name)
            .ok_or_else(|| ValidationError::UnknownTransition(name.to_owned()))?;
        if transition.from.contains(&current) {
            Ok(transition.to)
        } else {
            Err(ValidationError::Transition { transition: name.to_owned(), from: current.to_string() })
        }
    }

    /// The transitions that can start from `current`.
    pub fn available(&self, current: AssetStatus) -> impl Iterator<Item = &Transition> {
        self.transitions.iter().filter(move |t| t.from.contains(&current))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn default_lifecycle() {
        let g = TransitionGraph::data_center_assets();
        assert_eq!(g.apply("deploy", AssetStatus::New), Ok(AssetStatus::InUse));
        assert!(matches!(g.apply("liquidate", AssetStatus::InUse), Err(ValidationError::Transition { .. })));
        assert!(matches!(g.apply("teleport", AssetStatus::New), Err(ValidationError::UnknownTransition(_))));
        assert!(g.available(AssetStatus::Liquidated).next().is_none(), "liquidated is final");
    }

    proptest! {
        #[test]
        fn apply_agrees_with_the_data(ti in 0usize..8, si in 0usize..8) {
            let g = TransitionGraph::data_center_assets();
            let t = &g.transitions[ti];
            let s = AssetStatus::ALL[si];
            prop_assert_eq!(g.apply(&t.name, s).is_ok(), t.from.contains(&s));
            prop_assert_eq!(AssetStatus::parse(s.as_str()), Ok(s));
        }
    }
}
