//! Validated identifiers that appear in topics, container labels and file names.
//!
//! Invariant: a value of these types has already passed validation, so code that holds a
//! [`DeviceId`] can put it into an MQTT topic, a certificate common name or a path without
//! further checks. Decoding re-validates: bytes from the wire cannot smuggle in an invalid id.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize};

/// Why an identifier was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// The identifier was empty.
    #[error("{what} is empty")]
    Empty {
        /// Which kind of identifier.
        what: &'static str,
    },
    /// The identifier is longer than allowed.
    #[error("{what} is {len} characters long; at most {max} are allowed")]
    TooLong {
        /// Which kind of identifier.
        what: &'static str,
        /// Its length in bytes.
        len: usize,
        /// The maximum length.
        max: usize,
    },
    /// The identifier holds a character outside its charset.
    #[error("{what} {value:?} contains {ch:?} at byte {at}; allowed are {allowed}")]
    BadChar {
        /// Which kind of identifier.
        what: &'static str,
        /// The refused value (escaped when printed).
        value: String,
        /// The offending character.
        ch: char,
        /// Its byte offset.
        at: usize,
        /// A description of the allowed characters.
        allowed: &'static str,
    },
    /// The identifier does not start with a letter or digit.
    #[error("{what} {value:?} must start with a letter or digit")]
    BadStart {
        /// Which kind of identifier.
        what: &'static str,
        /// The refused value.
        value: String,
    },
}

/// One validation rule shared by the identifier types below.
struct Rule {
    what: &'static str,
    max: usize,
    extra: &'static [char],
    allowed: &'static str,
}

impl Rule {
    fn check(&self, value: &str) -> Result<(), IdError> {
        let what = self.what;
        if value.is_empty() {
            return Err(IdError::Empty { what });
        }
        if value.len() > self.max {
            return Err(IdError::TooLong { what, len: value.len(), max: self.max });
        }
        if let Some((at, ch)) = value
            .char_indices()
            .find(|(_, c)| !(c.is_ascii_alphanumeric() || self.extra.contains(c)))
        {
            return Err(IdError::BadChar {
                what,
                value: value.to_owned(),
                ch,
                at,
                allowed: self.allowed,
            });
        }
        if !value.starts_with(|c: char| c.is_ascii_alphanumeric()) {
            return Err(IdError::BadStart { what, value: value.to_owned() });
        }
        Ok(())
    }
}

#[cfg(feature = "schema")]
impl Rule {
    /// The same rule for JSON Schema: `pattern` is an ECMA-262 regex over the whole value.
    fn schema(&self) -> schemars::Schema {
        // Inside a class only `-` needs care: last, it is literal in every regex dialect.
        let mut extra: String = self.extra.iter().filter(|c| **c != '-').collect();
        if self.extra.contains(&'-') {
            extra.push('-');
        }
        schemars::json_schema!({
            "type": "string",
            "description": format!("a {}: 1 to {} {}, starting with a letter or digit", self.what, self.max, self.allowed),
            "minLength": 1,
            "maxLength": self.max,
            "pattern": format!("^[A-Za-z0-9][A-Za-z0-9{extra}]{{0,{}}}$", self.max - 1),
        })
    }
}

macro_rules! validated_id {
    ($(#[$doc:meta])* $name:ident, $rule:expr) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            const RULE: Rule = $rule;

            /// Validates `value` and wraps it.
            pub fn new(value: impl Into<String>) -> Result<Self, IdError> {
                let value = value.into();
                Self::RULE.check(&value)?;
                Ok(Self(value))
            }

            /// The identifier as a string slice.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(&self.0, f)
            }
        }

        impl std::str::FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, IdError> {
                Self::new(s)
            }
        }

        impl TryFrom<String> for $name {
            type Error = IdError;
            fn try_from(s: String) -> Result<Self, IdError> {
                Self::new(s)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        /// The rule as a JSON Schema string (pattern and length), so API clients can check
        /// an id before sending it.
        #[cfg(feature = "schema")]
        impl schemars::JsonSchema for $name {
            fn schema_name() -> std::borrow::Cow<'static, str> {
                stringify!($name).into()
            }
            fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
                Self::RULE.schema()
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                Self::new(s).map_err(serde::de::Error::custom)
            }
        }
    };
}

validated_id!(
    /// A device's identity: its MQTT client id, the common name of its certificate, and one
    /// level of its topics.
    ///
    /// 1 to 64 ASCII letters, digits, `-`, `_` or `.`, starting with a letter or digit. 64 is the
    /// X.509 upper bound for a common name; the charset keeps `/`, `+`, `#`, spaces and control
    /// characters out, so an id can never add a topic level or a wildcard.
    DeviceId,
    Rule { what: "device id", max: 64, extra: &['-', '_', '.'], allowed: "ASCII letters, digits, '-', '_' and '.'" }
);

validated_id!(
    /// The name of a service within a release; also its DNS name on the release's network.
    ///
    /// 1 to 63 ASCII letters, digits, `-` and `_`, starting with a letter or digit: a DNS label,
    /// plus `_` because Compose allows it in service names.
    ServiceName,
    Rule { what: "service name", max: 63, extra: &['-', '_'], allowed: "ASCII letters, digits, '-' and '_'" }
);

validated_id!(
    /// A release's identity as the server assigned it, e.g. `robot-stack@1.4.2`.
    ///
    /// 1 to 128 ASCII letters, digits, `-`, `_`, `.`, `@` or `+`, starting with a letter or digit;
    /// safe as a container label value and a file name.
    ReleaseId,
    Rule { what: "release id", max: 128, extra: &['-', '_', '.', '@', '+'], allowed: "ASCII letters, digits, '-', '_', '.', '@' and '+'" }
);

#[cfg(test)]
mod arbitrary_impls {
    use proptest::prelude::*;

    use super::*;

    impl Arbitrary for DeviceId {
        type Parameters = ();
        type Strategy = BoxedStrategy<Self>;
        fn arbitrary_with((): ()) -> Self::Strategy {
            "[a-zA-Z0-9][a-zA-Z0-9._-]{0,63}".prop_map(|s| DeviceId::new(s).unwrap()).boxed()
        }
    }

    impl Arbitrary for ServiceName {
        type Parameters = ();
        type Strategy = BoxedStrategy<Self>;
        fn arbitrary_with((): ()) -> Self::Strategy {
            "[a-z0-9][a-z0-9_-]{0,20}".prop_map(|s| ServiceName::new(s).unwrap()).boxed()
        }
    }

    impl Arbitrary for ReleaseId {
        type Parameters = ();
        type Strategy = BoxedStrategy<Self>;
        fn arbitrary_with((): ()) -> Self::Strategy {
            "[a-z0-9][a-z0-9._@+-]{0,40}".prop_map(|s| ReleaseId::new(s).unwrap()).boxed()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_ids_that_could_break_a_topic_are_refused() {
        for bad in ["a/b", "#", "+", "", "dev ice", "dev\n", "-leading", ".hidden", "é"] {
            assert!(DeviceId::new(bad).is_err(), "{bad:?} was accepted");
        }
        let long = "a".repeat(300);
        assert!(matches!(DeviceId::new(long), Err(IdError::TooLong { len: 300, max: 64, .. })));
        assert!(DeviceId::new("a".repeat(64)).is_ok());
    }

    #[test]
    fn ordinary_device_ids_are_accepted() {
        for good in ["robot-17", "gw_eu.west.3", "A1", "0"] {
            assert_eq!(DeviceId::new(good).unwrap().as_str(), good);
        }
    }

    #[test]
    fn refusal_names_the_character_and_where() {
        let err = DeviceId::new("ab/c").unwrap_err();
        assert_eq!(
            err.to_string(),
            "device id \"ab/c\" contains '/' at byte 2; allowed are ASCII letters, digits, '-', '_' and '.'"
        );
    }

    #[test]
    fn decoding_revalidates_ids() {
        let bytes = postcard::to_allocvec("a/b").unwrap();
        assert!(postcard::from_bytes::<DeviceId>(&bytes).is_err());
    }
}
