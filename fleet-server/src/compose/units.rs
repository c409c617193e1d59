//! Compose's value syntaxes: durations, byte sizes, CPU counts and shell-like word splitting.

use std::time::Duration;

use fleet_api::units::{parse_duration_as, scaled_decimal, DurationSyntax};

/// `1m30s`, `10s`, `500ms`, `1h`, `2h45m`, `1.5s`: Go's duration syntax, as Compose uses it
/// (Fleet's one duration grammar in its Go dialect: a bare number is refused).
pub(crate) fn duration(text: &str) -> Result<Duration, String> {
    parse_duration_as(text, DurationSyntax::Go)
}

/// Compose byte sizes: a plain integer is bytes; otherwise a number with `b`, `k`, `m`, `g`,
/// `t` (binary multiples, case-insensitive, optional trailing `b` or `ib`: `64m`, `64mb`,
/// `1.5GiB`).
pub(crate) fn byte_size(text: &str) -> Result<u64, String> {
    let bad = || {
        format!("{text:?} is not a byte size; write it like 512m, 1g, 64kb or a number of bytes")
    };
    let s = text.trim().to_ascii_lowercase();
    let num_len = s.bytes().take_while(|b| b.is_ascii_digit() || *b == b'.').count();
    let (number, unit) = s.split_at(num_len);
    if number.is_empty() {
        return Err(bad());
    }
    let shift = match unit.trim_start() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        _ => return Err(bad()),
    };
    let bytes = scaled_decimal(number, 1u128 << shift).ok_or_else(bad)?;
    u64::try_from(bytes).map_err(|_| format!("{text:?} is too large"))
}

/// CPUs as Compose writes them (`0.5`, `"1.5"`, `2`) in thousandths of a CPU.
pub(crate) fn cpu_millis(text: &str) -> Result<u32, String> {
    let bad = || format!("{text:?} is not a number of CPUs; write it like 0.5 or 2");
    let millis = scaled_decimal(text.trim(), 1000).ok_or_else(bad)?;
    if millis == 0 {
        return Err(format!("{text:?} CPUs would never run; give at least 0.001"));
    }
    u32::try_from(millis).map_err(|_| bad())
}

/// Splits a command string into words the way Compose does (go-shellwords): whitespace
/// separates words, single quotes are literal, double quotes allow `\"`, `\\`, `\$` and
/// `` \` `` escapes, and a backslash outside quotes escapes the next character. No variable
/// expansion, globbing or operators: it is not a shell.
pub(crate) fn split_words(text: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match c {
            c if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => word.push(c),
                        None => return Err(format!("unterminated ' quote in {text:?}")),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(c @ ('"' | '\\' | '$' | '`')) => word.push(c),
                            Some(c) => {
                                word.push('\\');
                                word.push(c);
                            }
                            None => return Err(format!("unterminated \" quote in {text:?}")),
                        },
                        Some(c) => word.push(c),
                        None => return Err(format!("unterminated \" quote in {text:?}")),
                    }
                }
            }
            '\\' => {
                in_word = true;
                match chars.next() {
                    Some(c) => word.push(c),
                    None => return Err(format!("{text:?} ends in a lone backslash")),
                }
            }
            c => {
                in_word = true;
                word.push(c);
            }
        }
    }
    if in_word {
        words.push(word);
    }
    Ok(words)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn durations_in_compose_syntax() {
        assert_eq!(duration("1m30s").unwrap(), Duration::from_secs(90));
        assert_eq!(duration("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(duration("1h").unwrap(), Duration::from_secs(3600));
        assert_eq!(duration("2h45m").unwrap(), Duration::from_secs(2 * 3600 + 45 * 60));
        assert_eq!(duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(duration("250us").unwrap(), Duration::from_micros(250));
        assert_eq!(duration("0").unwrap(), Duration::ZERO);
    }

    #[test]
    fn durations_without_a_unit_or_with_a_wrong_one_are_refused() {
        assert!(duration("30").unwrap_err().contains("no unit; write it like 30s"));
        assert!(duration("3d").unwrap_err().contains("unknown duration unit \"d\""));
        for bad in ["", "s", "1..5s", "-5s", "1 s x"] {
            assert!(duration(bad).is_err(), "{bad:?}");
        }
        assert!(duration(&format!("{}h", "9".repeat(30))).is_err(), "overflow is an error");
    }

    #[test]
    fn byte_sizes_are_binary_multiples_and_case_insensitive() {
        assert_eq!(byte_size("1024").unwrap(), 1024);
        assert_eq!(byte_size("512b").unwrap(), 512);
        assert_eq!(byte_size("64k").unwrap(), 64 << 10);
        assert_eq!(byte_size("64KB").unwrap(), 64 << 10);
        assert_eq!(byte_size("256m").unwrap(), 256 << 20);
        assert_eq!(byte_size("256Mb").unwrap(), 256 << 20);
        assert_eq!(byte_size("1g").unwrap(), 1 << 30);
        assert_eq!(byte_size("1.5G").unwrap(), 3 << 29);
        assert_eq!(byte_size("2GiB").unwrap(), 2 << 30);
        assert_eq!(byte_size("1 g").unwrap(), 1 << 30);
    }

    #[test]
    fn malformed_byte_sizes_are_refused() {
        for bad in ["", "m", "12x", "1.2.3m", "-1m", "1e9"] {
            assert!(byte_size(bad).is_err(), "{bad:?}");
        }
        assert!(byte_size("99999999999t").unwrap_err().contains("too large"));
    }

    #[test]
    fn cpus_become_thousandths() {
        assert_eq!(cpu_millis("0.5").unwrap(), 500);
        assert_eq!(cpu_millis("2").unwrap(), 2000);
        assert_eq!(cpu_millis("1.25").unwrap(), 1250);
        assert_eq!(cpu_millis(".5").unwrap(), 500);
        assert!(cpu_millis("0").unwrap_err().contains("never run"));
        assert!(cpu_millis("half").is_err());
    }

    #[test]
    fn command_strings_split_like_compose() {
        assert_eq!(split_words("npm start").unwrap(), ["npm", "start"]);
        assert_eq!(
            split_words(r#"sh -c 'echo "hi there"; sleep 1'"#).unwrap(),
            ["sh", "-c", r#"echo "hi there"; sleep 1"#]
        );
        assert_eq!(split_words(r#"a "b \"c\" \d" e\ f"#).unwrap(), ["a", r#"b "c" \d"#, "e f"]);
        assert_eq!(split_words("  spaced   out ").unwrap(), ["spaced", "out"]);
        assert_eq!(split_words("''").unwrap(), [""]);
        assert!(split_words("").unwrap().is_empty());
        assert!(split_words("echo 'oops").unwrap_err().contains("unterminated"));
    }
}
