//! YAML text → a small tree with the line and column of every node.
//!
//! The converter walks this tree itself (rather than deserialising straight into typed
//! structs) so that it can report every problem in a file, each with its Compose path, instead
//! of stopping at the first one.
//!
//! Invariant: whatever the input, parsing ends quickly and within bounded memory. The size is
//! checked before the parser runs; serde-saphyr's budget bounds nesting depth, node count,
//! scalar bytes and alias replay (billion-laughs bombs), and refuses duplicate keys. Anchors,
//! aliases and `<<` merge keys work as in Compose.

use std::fmt;

use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_saphyr::Spanned;

/// Nesting deeper than this is refused; real Compose files stay below 10. It also bounds the
/// recursion of building the tree, which runs on the caller's (e.g. a 2 MiB tokio worker's)
/// stack.
const MAX_DEPTH: usize = 32;
/// Nodes (after alias expansion) in one file: a large release has a few thousand.
const MAX_NODES: usize = 100_000;
/// Events replayed from aliases across the whole file.
const MAX_ALIAS_REPLAY: usize = 100_000;

/// One YAML node and where it is in the text (1-based; of the use, for an alias).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Node {
    pub(crate) value: Value,
    pub(crate) line: u64,
}

/// What a [`Node`] holds. Plain scalars are typed by YAML 1.2's core schema (so `no` and
/// `on` stay strings, as in Compose); numbers with leading zeros or underscores stay strings.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Value {
    Null,
    Bool(bool),
    Int(i128),
    Float(f64),
    Str(String),
    Seq(Vec<Node>),
    /// Keys in document order (merged keys after the mapping's own).
    Map(Vec<(String, Node)>),
}

impl Node {
    /// The scalar as text, for fields that take a string but where YAML may have typed the
    /// value (`user: 1000`, `cpuset: 2`, environment values). `None` for null and collections.
    pub(crate) fn scalar_text(&self) -> Option<String> {
        match &self.value {
            Value::Str(s) => Some(s.clone()),
            Value::Int(i) => Some(i.to_string()),
            Value::Float(f) => Some(f.to_string()),
            Value::Bool(b) => Some(b.to_string()),
            Value::Null | Value::Seq(_) | Value::Map(_) => None,
        }
    }

    pub(crate) fn as_str(&self) -> Option<&str> {
        match &self.value {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    pub(crate) fn as_map(&self) -> Option<&[(String, Node)]> {
        match &self.value {
            Value::Map(m) => Some(m),
            _ => None,
        }
    }

    pub(crate) fn as_seq(&self) -> Option<&[Node]> {
        match &self.value {
            Value::Seq(s) => Some(s),
            _ => None,
        }
    }

    pub(crate) fn is_null(&self) -> bool {
        matches!(self.value, Value::Null)
    }

    /// What kind of node this is, for messages ("expected a string, found a list").
    pub(crate) fn kind(&self) -> &'static str {
        match self.value {
            Value::Null => "nothing (null)",
            Value::Bool(_) => "a boolean",
            Value::Int(_) => "an integer",
            Value::Float(_) => "a number",
            Value::Str(_) => "a string",
            Value::Seq(_) => "a list",
            Value::Map(_) => "a mapping",
        }
    }
}

/// Why the text is not a YAML document we can read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SyntaxError {
    pub(crate) line: Option<u64>,
    pub(crate) column: Option<u64>,
    pub(crate) message: String,
}

impl fmt::Display for SyntaxError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// Stack for the parser's thread. Building the tree recurses once per nesting level through
/// serde-saphyr's deserializer, whose frames are large (tens of KiB per level in debug
/// builds): more than a 2 MiB tokio worker can spare at [`MAX_DEPTH`].
const PARSE_STACK_BYTES: usize = 16 << 20;

/// Parses one YAML document, on a thread of its own with a known stack (so the caller's stack
/// size does not decide whether deep input overflows). Size limits are the caller's (checked
/// before this runs).
pub(crate) fn parse(bytes: &[u8]) -> Result<Node, SyntaxError> {
    std::thread::scope(|scope| {
        std::thread::Builder::new()
            .name("compose-yaml".to_owned())
            .stack_size(PARSE_STACK_BYTES)
            .spawn_scoped(scope, || parse_here(bytes))
            .map_err(|e| SyntaxError {
                line: None,
                column: None,
                message: format!("cannot start the YAML parser: {e}"),
            })?
            .join()
            .unwrap_or_else(|_| {
                Err(SyntaxError {
                    line: None,
                    column: None,
                    message: "the YAML parser failed on this input".to_owned(),
                })
            })
    })
}

fn parse_here(bytes: &[u8]) -> Result<Node, SyntaxError> {
    let options = serde_saphyr::options! {
        // YAML 1.2 booleans only: `restart: no` is the string "no", as Compose reads it.
        strict_booleans: true,
        leading_zero_numbers_as_strings: true,
        underscored_numbers_as_strings: true,
        with_snippet: false,
        budget: serde_saphyr::budget! {
            max_depth: MAX_DEPTH,
            flow_nesting_limit: MAX_DEPTH,
            max_nodes: MAX_NODES,
        },
        alias_limits: serde_saphyr::alias_limits! {
            max_total_replayed_events: MAX_ALIAS_REPLAY,
        },
    };
    serde_saphyr::from_slice_with_options::<Node>(bytes, options).map_err(syntax_error)
}

fn syntax_error(e: serde_saphyr::Error) -> SyntaxError {
    let location = e.location().filter(|l| l.line() > 0);
    let (line, column) = (location.map(|l| l.line()), location.map(|l| l.column()));
    let message = match &e {
        serde_saphyr::Error::DuplicateMappingKey { key, .. } => format!(
            "duplicate key {}: a key may appear only once in a mapping",
            key.as_deref().map_or_else(|| "(not a plain string)".to_owned(), |k| format!("{k:?}"))
        ),
        serde_saphyr::Error::MultipleDocuments { .. } => {
            "a Compose file holds one YAML document; remove the `---` separator".to_owned()
        }
        _ => {
            let full = e.to_string();
            // The location is reported separately; keep the message itself.
            let cut = full.find(" at line ").unwrap_or(full.len());
            full[..cut].to_owned()
        }
    };
    SyntaxError { line, column, message }
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Node, D::Error> {
        let spanned = Spanned::<Value>::deserialize(d)?;
        Ok(Node { value: spanned.value, line: spanned.referenced.line() })
    }
}

impl<'de> Deserialize<'de> for Value {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Value, D::Error> {
        d.deserialize_any(ValueVisitor)
    }
}

struct ValueVisitor;

impl<'de> Visitor<'de> for ValueVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a YAML value")
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        Value::deserialize(d)
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Int(v.into()))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Int(v.into()))
    }
    fn visit_i128<E>(self, v: i128) -> Result<Value, E> {
        Ok(Value::Int(v))
    }
    fn visit_u128<E: serde::de::Error>(self, v: u128) -> Result<Value, E> {
        i128::try_from(v).map(Value::Int).map_err(|_| E::custom("integer too large"))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Value::Float(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::Str(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::Str(v))
    }
    fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Value, E> {
        String::from_utf8(v.to_vec())
            .map(Value::Str)
            .map_err(|_| E::custom("binary values are not supported"))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element::<Node>()? {
            items.push(item);
        }
        Ok(Value::Seq(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut entries = Vec::new();
        while let Some((key, value)) = map.next_entry::<KeyText, Node>()? {
            entries.push((key.0, value));
        }
        Ok(Value::Map(entries))
    }
}

/// A mapping key: Compose keys are strings, but YAML may type them (`80: ...`, `1.0: ...`).
struct KeyText(String);

impl<'de> Deserialize<'de> for KeyText {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<KeyText, D::Error> {
        match Value::deserialize(d)? {
            Value::Str(s) => Ok(KeyText(s)),
            Value::Int(i) => Ok(KeyText(i.to_string())),
            Value::Float(f) => Ok(KeyText(f.to_string())),
            Value::Bool(b) => Ok(KeyText(b.to_string())),
            Value::Null => Err(serde::de::Error::custom("a mapping key is empty (null)")),
            Value::Seq(_) | Value::Map(_) => {
                Err(serde::de::Error::custom("a mapping key must be a string, not a collection"))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn map_keys(node: &Node) -> Vec<&str> {
        node.as_map().unwrap().iter().map(|(k, _)| k.as_str()).collect()
    }

    #[test]
    fn merge_keys_bring_in_the_anchor_and_explicit_keys_win() {
        let doc = parse(
            b"x-common: &common\n  restart: always\n  image: old\nweb:\n  <<: *common\n  image: new\n",
        )
        .unwrap();
        let web = &doc.as_map().unwrap()[1].1;
        assert_eq!(map_keys(web), ["image", "restart"]);
        assert_eq!(web.as_map().unwrap()[0].1.as_str(), Some("new"));
    }

    #[test]
    fn yaml_1_1_booleans_and_octal_looking_numbers_stay_strings() {
        let doc = parse(b"a: no\nb: on\nc: 0755\nd: true\ne: 1_000\nf: 8080:80\n").unwrap();
        let values: Vec<&Value> = doc.as_map().unwrap().iter().map(|(_, v)| &v.value).collect();
        assert_eq!(
            values,
            [
                &Value::Str("no".into()),
                &Value::Str("on".into()),
                &Value::Str("0755".into()),
                &Value::Bool(true),
                &Value::Str("1_000".into()),
                &Value::Str("8080:80".into()),
            ]
        );
    }

    #[test]
    fn nodes_know_their_line() {
        let doc = parse(b"a: 1\nb:\n  - x\n  - y\n").unwrap();
        let b = &doc.as_map().unwrap()[1].1;
        assert_eq!(b.as_seq().unwrap()[1].line, 4);
    }

    #[test]
    fn duplicate_keys_tabs_and_bad_utf8_are_refused_with_a_location() {
        let dup = parse(b"a: 1\nb: 2\na: 3\n").unwrap_err();
        assert_eq!(dup.line, Some(3), "{dup:?}");
        assert!(dup.message.contains("duplicate key \"a\""), "{dup:?}");
        let tab = parse(b"a:\n\tb: 1\n").unwrap_err();
        assert_eq!(tab.line, Some(2), "{tab:?}");
        assert!(tab.message.contains("tab"), "{tab:?}");
        let utf8 = parse(b"a: \xff\xfe\n").unwrap_err();
        assert!(utf8.message.contains("UTF-8"), "{utf8:?}");
        let two = parse(b"a: 1\n---\nb: 2\n").unwrap_err();
        assert!(two.message.contains("one YAML document"), "{two:?}");
    }

    #[test]
    fn a_billion_laughs_bomb_is_refused_quickly() {
        let mut bomb = String::from("a: &a [x,x,x,x,x,x,x,x,x,x]\n");
        for (prev, name) in ["a", "b", "c", "d", "e", "f", "g", "h"]
            .iter()
            .zip(["b", "c", "d", "e", "f", "g", "h", "i"])
        {
            bomb.push_str(&format!(
                "{name}: &{name} [{}]\n",
                vec![format!("*{prev}"); 10].join(",")
            ));
        }
        let started = std::time::Instant::now();
        let err = parse(bomb.as_bytes()).unwrap_err();
        assert!(started.elapsed() < std::time::Duration::from_secs(5), "{:?}", started.elapsed());
        assert!(err.message.contains("budget") || err.message.contains("alias"), "{err:?}");
    }

    #[test]
    fn nesting_up_to_the_limit_parses_on_a_small_caller_stack() {
        let flow = format!("{}1{}", "[".repeat(MAX_DEPTH - 1), "]".repeat(MAX_DEPTH - 1));
        let block: String = (0..MAX_DEPTH - 1).map(|i| format!("{}k:\n", "  ".repeat(i))).collect();
        std::thread::Builder::new()
            .stack_size(256 << 10)
            .spawn(move || {
                parse(flow.as_bytes()).unwrap();
                parse(block.as_bytes()).unwrap();
            })
            .unwrap()
            .join()
            .unwrap();
    }

    #[test]
    fn deep_nesting_is_refused_in_flow_and_block_style() {
        let flow = format!("{}1{}", "[".repeat(10_000), "]".repeat(10_000));
        assert!(parse(flow.as_bytes()).is_err());
        let block: String = (0..500).map(|i| format!("{}k:\n", " ".repeat(i))).collect();
        let started = std::time::Instant::now();
        assert!(parse(block.as_bytes()).is_err());
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
    }
}
