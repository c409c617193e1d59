//! Variable interpolation with Compose's rules, on one string.
//!
//! `$VAR`, `${VAR}`, `${VAR:-default}` (unset or empty), `${VAR-default}` (unset),
//! `${VAR:?message}` / `${VAR?message}` (required), `${VAR:+alt}` / `${VAR+alt}`
//! (replacement when set), and `$$` for a literal `$`. Defaults may themselves hold variables.
//! An unset variable without a default is an error: the device has no environment to take it
//! from.

use std::collections::BTreeMap;

/// Nested `${A:-${B:-...}}` deeper than this is refused (it is never needed, and bounds work).
const MAX_NESTING: usize = 8;
/// The most one Compose file may grow to by interpolation, per string and in total: `$A`
/// repeated through a 1 MiB file with a long value of `A` would otherwise expand to gigabytes
/// in the server (and again per device variable set).
pub(crate) const MAX_EXPANDED_BYTES: usize = 4 << 20;

/// Why a string could not be interpolated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct InterpolationError(pub(crate) String);

/// Replaces the variables in `input` from `vars`.
pub(crate) fn interpolate(
    input: &str,
    vars: &BTreeMap<String, String>,
) -> Result<String, InterpolationError> {
    if !input.contains('$') {
        return Ok(input.to_owned());
    }
    expand(input, vars, 0)
}

fn expand(
    input: &str,
    vars: &BTreeMap<String, String>,
    depth: usize,
) -> Result<String, InterpolationError> {
    if depth > MAX_NESTING {
        return Err(InterpolationError(format!(
            "variables are nested more than {MAX_NESTING} levels deep"
        )));
    }
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(at) = rest.find('$') {
        if out.len() > MAX_EXPANDED_BYTES {
            return Err(too_large());
        }
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(body) = after.strip_prefix('{') {
            let end = closing_brace(body).ok_or_else(|| {
                InterpolationError(format!(
                    "unterminated ${{ in {input:?}; close it with }} or write $$ for a literal $"
                ))
            })?;
            out.push_str(&braced(&body[..end], vars, depth)?);
            rest = &body[end + 1..];
        } else {
            let len = name_len(after);
            if len == 0 {
                return Err(InterpolationError(format!(
                    "a lone $ in {input:?} starts no variable; write $$ for a literal $"
                )));
            }
            let name = &after[..len];
            out.push_str(lookup(name, vars)?);
            rest = &after[len..];
        }
    }
    out.push_str(rest);
    if out.len() > MAX_EXPANDED_BYTES {
        return Err(too_large());
    }
    Ok(out)
}

pub(crate) fn too_large() -> InterpolationError {
    InterpolationError(format!(
        "interpolation makes the file larger than {} MiB; use shorter values or fewer references",
        MAX_EXPANDED_BYTES >> 20
    ))
}

/// The index of the `}` that closes a `${`, counting nested `${...}` in defaults.
fn closing_brace(body: &str) -> Option<usize> {
    let bytes = body.as_bytes();
    let mut depth = 0usize;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'$' if bytes.get(i + 1) == Some(&b'$') => i += 1,
            b'$' if bytes.get(i + 1) == Some(&b'{') => {
                depth += 1;
                i += 1;
            }
            b'}' if depth == 0 => return Some(i),
            b'}' => depth -= 1,
            _ => {}
        }
        i += 1;
    }
    None
}

fn name_len(s: &str) -> usize {
    let bytes = s.as_bytes();
    if !bytes.first().is_some_and(|b| b.is_ascii_alphabetic() || *b == b'_') {
        return 0;
    }
    bytes.iter().take_while(|b| b.is_ascii_alphanumeric() || **b == b'_').count()
}

fn lookup<'v>(
    name: &str,
    vars: &'v BTreeMap<String, String>,
) -> Result<&'v str, InterpolationError> {
    vars.get(name).map(String::as_str).ok_or_else(|| {
        InterpolationError(format!(
            "variable {name} is not set; give a default with ${{{name}:-value}}"
        ))
    })
}

fn braced(
    body: &str,
    vars: &BTreeMap<String, String>,
    depth: usize,
) -> Result<String, InterpolationError> {
    let len = name_len(body);
    let name = &body[..len];
    if len == 0 {
        return Err(InterpolationError(format!(
            "${{{body}}} names no variable (names are letters, digits and _, not starting with a digit)"
        )));
    }
    let op = &body[len..];
    let value = vars.get(name);
    let set_nonempty = value.is_some_and(|v| !v.is_empty());
    let (kind, arg) = if op.is_empty() {
        return lookup(name, vars).map(str::to_owned);
    } else if let Some(arg) = op.strip_prefix(":-") {
        ("default-if-empty", arg)
    } else if let Some(arg) = op.strip_prefix('-') {
        ("default-if-unset", arg)
    } else if let Some(arg) = op.strip_prefix(":?") {
        ("required-nonempty", arg)
    } else if let Some(arg) = op.strip_prefix('?') {
        ("required", arg)
    } else if let Some(arg) = op.strip_prefix(":+") {
        ("alt-if-nonempty", arg)
    } else if let Some(arg) = op.strip_prefix('+') {
        ("alt-if-set", arg)
    } else {
        return Err(InterpolationError(format!(
            "${{{body}}}: unknown operator {op:?}; use :-, -, :?, ?, :+ or +"
        )));
    };
    let required = |msg: &str| {
        let why = if msg.is_empty() {
            "it is required".to_owned()
        } else {
            expand(msg, vars, depth + 1).unwrap_or_else(|_| msg.to_owned())
        };
        InterpolationError(format!("variable {name} is not set: {why}"))
    };
    match kind {
        "default-if-empty" if !set_nonempty => expand(arg, vars, depth + 1),
        "default-if-unset" if value.is_none() => expand(arg, vars, depth + 1),
        "required-nonempty" if !set_nonempty => Err(required(arg)),
        "required" if value.is_none() => Err(required(arg)),
        "alt-if-nonempty" => {
            if set_nonempty {
                expand(arg, vars, depth + 1)
            } else {
                Ok(String::new())
            }
        }
        "alt-if-set" => {
            if value.is_some() {
                expand(arg, vars, depth + 1)
            } else {
                Ok(String::new())
            }
        }
        _ => Ok(value.cloned().unwrap_or_default()),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn vars() -> BTreeMap<String, String> {
        [("SITE", "berlin"), ("EMPTY", ""), ("PORT", "8080")]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect()
    }

    fn ok(s: &str) -> String {
        interpolate(s, &vars()).unwrap()
    }

    fn err(s: &str) -> String {
        interpolate(s, &vars()).unwrap_err().0
    }

    #[test]
    fn plain_and_braced_variables_are_replaced() {
        assert_eq!(ok("$SITE-1"), "berlin-1");
        assert_eq!(ok("${SITE}_x:${PORT}"), "berlin_x:8080");
        assert_eq!(ok("no variables"), "no variables");
    }

    #[test]
    fn double_dollar_is_a_literal_dollar() {
        assert_eq!(ok("echo $$HOME $${X}"), "echo $HOME ${X}");
    }

    #[test]
    fn defaults_follow_the_colon_rule() {
        assert_eq!(ok("${UNSET:-a}"), "a");
        assert_eq!(ok("${EMPTY:-a}"), "a");
        assert_eq!(ok("${EMPTY-a}"), "");
        assert_eq!(ok("${UNSET-a}"), "a");
        assert_eq!(ok("${SITE:-a}"), "berlin");
        assert_eq!(ok("${UNSET:-${SITE}-x}"), "berlin-x", "defaults are interpolated too");
        assert_eq!(ok("${UNSET:-}"), "");
    }

    #[test]
    fn replacements_apply_only_when_set() {
        assert_eq!(ok("${SITE:+on}"), "on");
        assert_eq!(ok("${EMPTY:+on}"), "");
        assert_eq!(ok("${EMPTY+on}"), "on");
        assert_eq!(ok("${UNSET+on}"), "");
    }

    #[test]
    fn required_variables_carry_their_message() {
        assert_eq!(err("${UNSET:?set the site}"), "variable UNSET is not set: set the site");
        assert_eq!(err("${EMPTY:?}"), "variable EMPTY is not set: it is required");
        assert_eq!(ok("${EMPTY?must exist}"), "");
        assert!(err("${UNSET?x}").contains("variable UNSET is not set: x"));
    }

    #[test]
    fn an_unknown_variable_without_a_default_names_itself_and_the_fix() {
        assert_eq!(err("$SITEX"), "variable SITEX is not set; give a default with ${SITEX:-value}");
        assert_eq!(err("${NOPE}"), "variable NOPE is not set; give a default with ${NOPE:-value}");
    }

    #[test]
    fn malformed_references_are_refused() {
        assert!(err("${SITE").contains("unterminated"));
        assert!(err("cost: 5$").contains("lone $"));
        assert!(err("${}").contains("names no variable"));
        assert!(err("${SITE/x/y}").contains("unknown operator"));
        let deep = format!("{}x{}", "${U:-".repeat(20), "}".repeat(20));
        assert!(err(&deep).contains("nested"));
    }
}
