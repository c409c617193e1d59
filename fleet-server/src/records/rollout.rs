//! A stored rollout and the target it was asked for.

use fleet_proto::DeviceId;
use serde::{Deserialize, Serialize};

use crate::groups::Selector;
use crate::rollout::Rollout;

/// What a rollout goes to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Target {
    /// The devices of a group (as the group's selector matches them at creation).
    Group {
        /// The group.
        name: String,
    },
    /// The devices whose labels match.
    Selector {
        /// The selector.
        selector: Selector,
    },
    /// These devices.
    Devices {
        /// Their ids.
        ids: Vec<DeviceId>,
    },
}

impl Target {
    /// Parses `group:NAME`, `selector:k=v,...`, `devices:a,b,c`; a bare `k=v,...` is a selector
    /// and a bare name a group.
    pub fn parse(text: &str) -> Result<Target, String> {
        let text = text.trim();
        if let Some(name) = text.strip_prefix("group:") {
            return Ok(Target::Group { name: name.to_owned() });
        }
        if let Some(sel) = text.strip_prefix("selector:") {
            return Ok(Target::Selector { selector: Selector::parse(sel)? });
        }
        if let Some(ids) = text.strip_prefix("devices:") {
            let ids = ids
                .split(',')
                .map(|id| {
                    DeviceId::new(id.trim()).map_err(|e| format!("target device {id:?}: {e}"))
                })
                .collect::<Result<Vec<_>, _>>()?;
            return Ok(Target::Devices { ids });
        }
        if text.is_empty() {
            return Err("empty target: give group:NAME, selector:k=v or devices:ID,ID".to_owned());
        }
        if text.contains('=') || text.starts_with('!') {
            return Ok(Target::Selector { selector: Selector::parse(text)? });
        }
        Ok(Target::Group { name: text.to_owned() })
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Group { name } => write!(f, "group:{name}"),
            Target::Selector { selector } => write!(f, "selector:{selector}"),
            Target::Devices { ids } => {
                let ids: Vec<&str> = ids.iter().map(DeviceId::as_str).collect();
                write!(f, "devices:{}", ids.join(","))
            }
        }
    }
}

/// A stored rollout: the engine's state plus how it was asked for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RolloutRecord {
    /// The engine.
    pub rollout: Rollout,
    /// The target as given.
    pub target: Target,
    /// Which token created it.
    pub created_by: String,
    /// Devices left out at creation because they could not satisfy the release.
    #[serde(default)]
    pub excluded: Vec<(DeviceId, Vec<String>)>,
}

impl RolloutRecord {
    /// Its id.
    pub fn id(&self) -> u64 {
        self.rollout.spec().id.0
    }
}
