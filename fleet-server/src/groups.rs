//! Device groups: named label selectors (pure). A device belongs to a group when its labels
//! match the group's selector, so a newly enrolled robot with `site=depot` joins the depot
//! group without anyone adding it.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use fleet_proto::UnixMillis;
use serde::{Deserialize, Serialize};

/// One condition on a device's labels.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Requirement {
    /// `key=value`.
    Equals(String, String),
    /// `key!=value` (also true when the label is absent).
    NotEquals(String, String),
    /// `key`: the label is present.
    Exists(String),
    /// `!key`: the label is absent.
    Absent(String),
}

/// All requirements must hold (`site=depot,model!=r1,gpu`). An empty selector matches every
/// device.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Selector(pub Vec<Requirement>);

impl Selector {
    /// Parses `k=v,k!=v,k,!k`.
    pub fn parse(text: &str) -> Result<Selector, String> {
        let text = text.trim();
        if text.is_empty() {
            return Ok(Selector::default());
        }
        text.split(',')
            .map(|item| {
                let item = item.trim();
                let bad = |why: &str| format!("selector {text:?}: {item:?} {why}");
                let requirement = if let Some((k, v)) = item.split_once("!=") {
                    Requirement::NotEquals(k.trim().to_owned(), v.trim().to_owned())
                } else if let Some((k, v)) = item.split_once('=') {
                    Requirement::Equals(
                        k.trim().to_owned(),
                        v.trim().trim_start_matches('=').to_owned(),
                    )
                } else if let Some(k) = item.strip_prefix('!') {
                    Requirement::Absent(k.trim().to_owned())
                } else {
                    Requirement::Exists(item.to_owned())
                };
                let key = match &requirement {
                    Requirement::Equals(k, _)
                    | Requirement::NotEquals(k, _)
                    | Requirement::Exists(k)
                    | Requirement::Absent(k) => k,
                };
                check_label_key(key).map_err(|why| bad(&why))?;
                Ok(requirement)
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Selector)
    }

    /// Whether a device with `labels` matches.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.0.iter().all(|r| match r {
            Requirement::Equals(k, v) => labels.get(k) == Some(v),
            Requirement::NotEquals(k, v) => labels.get(k) != Some(v),
            Requirement::Exists(k) => labels.contains_key(k),
            Requirement::Absent(k) => !labels.contains_key(k),
        })
    }
}

/// Label keys: 1-63 of ASCII letters, digits, `-`, `_`, `.` and `/` (room for `site` as well as
/// `example.com/site`).
pub fn check_label_key(key: &str) -> Result<(), String> {
    if key.is_empty() || key.len() > 63 {
        return Err("needs a label key of 1 to 63 characters".to_owned());
    }
    if !key.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_./".contains(&b)) {
        return Err("has a label key with characters other than letters, digits, - _ . /".into());
    }
    Ok(())
}

/// Label values: at most 255 characters, no control characters and no `,` (it separates
/// selector items).
pub fn check_label_value(value: &str) -> Result<(), String> {
    if value.len() > 255 || value.chars().any(|c| c.is_control() || c == ',') {
        return Err(
            "label values are at most 255 characters, without commas or control characters"
                .to_owned(),
        );
    }
    Ok(())
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let items: Vec<String> = self
            .0
            .iter()
            .map(|r| match r {
                Requirement::Equals(k, v) => format!("{k}={v}"),
                Requirement::NotEquals(k, v) => format!("{k}!={v}"),
                Requirement::Exists(k) => k.clone(),
                Requirement::Absent(k) => format!("!{k}"),
            })
            .collect();
        f.write_str(&items.join(","))
    }
}

impl FromStr for Selector {
    type Err = String;
    fn from_str(s: &str) -> Result<Selector, String> {
        Selector::parse(s)
    }
}

impl TryFrom<String> for Selector {
    type Error = String;
    fn try_from(s: String) -> Result<Selector, String> {
        Selector::parse(&s)
    }
}

impl From<Selector> for String {
    fn from(s: Selector) -> String {
        s.to_string()
    }
}

/// A named selector.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Group {
    /// Unique name.
    pub name: String,
    /// Which devices belong.
    pub selector: Selector,
    /// What the group is for.
    #[serde(default)]
    pub description: String,
    /// When it was created.
    pub created_at: UnixMillis,
    /// Which token created it.
    pub created_by: String,
}

/// Group names: 1-63 of lowercase letters, digits, `-` and `_`.
pub fn check_group_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(format!("group name {name:?}: use 1-63 of lowercase letters, digits, '-' and '_'"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    #[test]
    fn selectors_match_every_requirement() {
        let s = Selector::parse("site=depot, model!=r1,gpu,!retired").unwrap();
        assert!(s.matches(&labels(&[("site", "depot"), ("model", "r2"), ("gpu", "")])));
        assert!(!s.matches(&labels(&[("site", "depot"), ("model", "r1"), ("gpu", "")])));
        assert!(!s.matches(&labels(&[("site", "depot"), ("gpu", "1"), ("retired", "yes")])));
        assert!(!s.matches(&labels(&[("site", "lab"), ("gpu", "1")])));
        assert!(Selector::parse("").unwrap().matches(&labels(&[])));
    }

    #[test]
    fn selectors_print_back_as_parsed() {
        for text in ["site=depot", "site=depot,model!=r1,gpu,!retired"] {
            assert_eq!(Selector::parse(text).unwrap().to_string(), text);
        }
    }

    #[test]
    fn bad_selectors_say_which_item() {
        let err = Selector::parse("site=depot,=x").unwrap_err();
        assert!(err.contains("\"=x\""), "{err}");
        assert!(Selector::parse("si te=x").is_err());
        assert!(check_group_name("Depot").is_err());
        assert!(check_group_name("depot-1").is_ok());
    }
}
