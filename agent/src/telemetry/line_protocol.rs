//! What applications post to the agent: InfluxDB line protocol (what most telemetry libraries
//! already speak) and a small JSON form. Pure parsing; every refusal names the line and why.
//!
//! Line protocol: `measurement[,tag=value...] field=value[,field=value...] [timestamp]`, one
//! point per line; `#` comments and blank lines are skipped. Each field becomes one
//! [`Point`]: metric `measurement.field`, or just `measurement` for a field named `value`;
//! tags become labels. Field values: floats (`1.5`, `1e3`), integers (`42i`, unsigned `42u`),
//! booleans (`t`, `true`, `F`, ...) and double-quoted strings. Timestamps are in the request's
//! `precision` (ns by default, as InfluxDB); without one the point gets the time of arrival.
//!
//! JSON: `{"points": [{"metric": "motor.temp", "value": 41.5, "labels": {"joint": "2"},
//! "at": 1700000000000}]}` (`at` in Unix milliseconds, optional; `labels` optional; `value` a
//! number, boolean or string), or the array alone.

use std::collections::BTreeMap;

use fleet_proto::telemetry::{Point, Value};
use fleet_proto::UnixMillis;

// One set of limits for every point, agent and server alike.
pub use fleet_proto::telemetry::{MAX_LABELS, MAX_METRIC, MAX_TEXT};
/// Most label bytes one request may add up to across its points. Every field of a line
/// becomes a point carrying the line's tags, so 8 tags of 4 KB on a line of 40,000 fields
/// would copy 1.3 GB out of a 381 KB body; the budget stops that while parsing.
pub const MAX_LABEL_BYTES: usize = 1 << 20;

/// What one request may make.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// Most points.
    pub max_points: usize,
    /// Most label bytes, summed over every point ([`MAX_LABEL_BYTES`]).
    pub max_label_bytes: usize,
}

/// Why a body was refused: malformed (`too_large` false: 400), or over its [`Budget`]
/// (413), found while parsing, before the excess is built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Refusal {
    /// Over the budget rather than malformed.
    pub too_large: bool,
    /// What is wrong, naming the line.
    pub message: String,
}

impl From<String> for Refusal {
    fn from(message: String) -> Refusal {
        Refusal { too_large: false, message }
    }
}

impl From<&str> for Refusal {
    fn from(message: &str) -> Refusal {
        Refusal::from(message.to_owned())
    }
}

/// Units of line protocol timestamps (`?precision=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precision {
    /// Nanoseconds (the default).
    Nanos,
    /// Microseconds.
    Micros,
    /// Milliseconds.
    Millis,
    /// Seconds.
    Secs,
}

impl Precision {
    /// From the query value (`ns`, `us`, `ms`, `s`; InfluxDB v1 also says `n`, `u`).
    pub fn parse(text: &str) -> Result<Precision, String> {
        match text {
            "ns" | "n" => Ok(Precision::Nanos),
            "us" | "u" => Ok(Precision::Micros),
            "ms" => Ok(Precision::Millis),
            "s" => Ok(Precision::Secs),
            other => Err(format!("precision {other:?} is not one of ns, us, ms, s")),
        }
    }

    fn to_millis(self, t: i64) -> i64 {
        match self {
            Precision::Nanos => t / 1_000_000,
            Precision::Micros => t / 1_000,
            Precision::Millis => t,
            Precision::Secs => t.saturating_mul(1000),
        }
    }
}

/// Parses a line protocol body into points; `now` stamps points without a timestamp. Stops
/// at the first point over `budget`.
pub fn parse_lines(
    body: &str,
    precision: Precision,
    now: UnixMillis,
    budget: Budget,
) -> Result<Vec<Point>, Refusal> {
    let mut out = vec![];
    let mut label_bytes = 0;
    for (i, line) in body.lines().enumerate() {
        let line = line.trim_end_matches('\r');
        let trimmed = line.trim_start();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        parse_line(trimmed, precision, now, budget, &mut label_bytes, &mut out).map_err(
            |mut r: Refusal| {
                r.message = format!("line {}: {}", i + 1, r.message);
                r
            },
        )?;
    }
    Ok(out)
}

/// Splits at the first unescaped, unquoted `sep`.
fn split_unescaped(s: &str, sep: char, quotes: bool) -> (&str, Option<&str>) {
    let mut escaped = false;
    let mut in_quotes = false;
    for (i, c) in s.char_indices() {
        if escaped {
            escaped = false;
        } else if c == '\\' {
            escaped = true;
        } else if quotes && c == '"' {
            in_quotes = !in_quotes;
        } else if c == sep && !in_quotes {
            return (&s[..i], Some(&s[i + c.len_utf8()..]));
        }
    }
    (s, None)
}

fn split_all(s: &str, sep: char, quotes: bool) -> Vec<&str> {
    let mut parts = vec![];
    let mut rest = s;
    loop {
        let (part, after) = split_unescaped(rest, sep, quotes);
        parts.push(part);
        match after {
            Some(a) => rest = a,
            None => return parts,
        }
    }
}

fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next() {
                Some(n @ (',' | '=' | ' ' | '"' | '\\')) => out.push(n),
                Some(n) => {
                    out.push('\\');
                    out.push(n);
                }
                None => out.push('\\'),
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn parse_line(
    line: &str,
    precision: Precision,
    now: UnixMillis,
    budget: Budget,
    label_bytes: &mut usize,
    out: &mut Vec<Point>,
) -> Result<(), Refusal> {
    let (series, rest) = split_unescaped(line, ' ', false);
    let rest =
        rest.ok_or("no fields: expected `measurement[,tag=value] field=value [timestamp]`")?;
    let (fields, timestamp) = split_unescaped(rest.trim_start(), ' ', true);
    let mut series_parts = split_all(series, ',', false).into_iter();
    let measurement = unescape(series_parts.next().unwrap_or_default());
    if measurement.is_empty() {
        return Err("the measurement name is empty".into());
    }
    let mut labels = BTreeMap::new();
    for tag in series_parts {
        let (k, v) = split_unescaped(tag, '=', false);
        let v = v.ok_or_else(|| format!("tag {tag:?} has no `=value`"))?;
        let (k, v) = (unescape(k), unescape(v));
        if k.is_empty() || v.is_empty() {
            return Err(format!("tag {tag:?} has an empty key or value").into());
        }
        check_text("tag", &k)?;
        check_text("tag value", &v)?;
        labels.insert(k, v);
    }
    if labels.len() > MAX_LABELS {
        return Err(format!("{} tags, more than {MAX_LABELS}", labels.len()).into());
    }
    let line_label_bytes: usize = labels.iter().map(|(k, v)| k.len() + v.len()).sum();
    let at = match timestamp.map(str::trim).filter(|t| !t.is_empty()) {
        None => now,
        Some(t) => {
            let n: i64 = t.parse().map_err(|_| format!("timestamp {t:?} is not an integer"))?;
            if n < 0 {
                return Err(format!("timestamp {t} is before 1970").into());
            }
            UnixMillis(precision.to_millis(n).unsigned_abs())
        }
    };
    let fields: Vec<&str> = split_all(fields, ',', true);
    if fields.iter().all(|f| f.is_empty()) {
        return Err("no fields".to_owned().into());
    }
    for field in fields {
        let (k, v) = split_unescaped(field, '=', true);
        let v = v.ok_or_else(|| format!("field {field:?} has no `=value`"))?;
        let key = unescape(k);
        if key.is_empty() {
            return Err(format!("field {field:?} has an empty name").into());
        }
        let value = field_value(v).map_err(|e| format!("field {key:?}: {e}"))?;
        let metric =
            if key == "value" { measurement.clone() } else { format!("{measurement}.{key}") };
        check_metric(&metric)?;
        *label_bytes += line_label_bytes;
        if out.len() >= budget.max_points || *label_bytes > budget.max_label_bytes {
            let message = if out.len() >= budget.max_points {
                format!(
                    "more than {} points in one request; send smaller batches",
                    budget.max_points
                )
            } else {
                format!(
                    "the points' labels add up to more than {} bytes in one request (each field of a line carries its tags); send fewer fields per line or smaller batches",
                    budget.max_label_bytes
                )
            };
            return Err(Refusal { too_large: true, message });
        }
        out.push(Point { at, metric, value, labels: labels.clone() });
    }
    Ok(())
}

fn field_value(v: &str) -> Result<Value, String> {
    if let Some(inner) = v.strip_prefix('"') {
        let inner =
            inner.strip_suffix('"').ok_or_else(|| format!("string {v:?} is not closed with \""))?;
        let s = unescape(inner);
        check_text("string value", &s)?;
        return Ok(Value::Str(s));
    }
    match v {
        "t" | "T" | "true" | "True" | "TRUE" => return Ok(Value::Bool(true)),
        "f" | "F" | "false" | "False" | "FALSE" => return Ok(Value::Bool(false)),
        _ => {}
    }
    if let Some(int) = v.strip_suffix('i') {
        return int.parse().map(Value::I64).map_err(|_| format!("{v:?} is not a 64-bit integer"));
    }
    if let Some(uint) = v.strip_suffix('u') {
        let n: u64 = uint.parse().map_err(|_| format!("{v:?} is not an unsigned integer"))?;
        return i64::try_from(n).map(Value::I64).map_err(|_| format!("{v:?} is beyond 2^63-1"));
    }
    match v.parse::<f64>() {
        Ok(x) if x.is_finite() => Ok(Value::F64(x)),
        Ok(_) => Err(format!("{v:?} is not a finite number")),
        Err(_) => Err(format!("{v:?} is not a number, boolean or quoted string")),
    }
}

fn check_metric(m: &str) -> Result<(), String> {
    if m.len() > MAX_METRIC {
        return Err(format!("metric name of {} bytes, more than {MAX_METRIC}", m.len()));
    }
    Ok(())
}

fn check_text(what: &str, s: &str) -> Result<(), String> {
    if s.len() > MAX_TEXT {
        return Err(format!("{what} of {} bytes, more than {MAX_TEXT}", s.len()));
    }
    Ok(())
}

#[derive(serde::Deserialize)]
#[serde(untagged)]
enum JsonBody {
    Wrapped { points: Vec<JsonPoint> },
    Bare(Vec<JsonPoint>),
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonPoint {
    metric: String,
    value: serde_json::Value,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    at: Option<u64>,
}

/// Parses the JSON form.
pub fn parse_json(body: &[u8], now: UnixMillis) -> Result<Vec<Point>, String> {
    let parsed: JsonBody = serde_json::from_slice(body).map_err(|e| {
        format!("not the JSON form {{\"points\": [{{\"metric\", \"value\", \"labels\", \"at\"}}]}}: {e}")
    })?;
    let points = match parsed {
        JsonBody::Wrapped { points } | JsonBody::Bare(points) => points,
    };
    points
        .into_iter()
        .enumerate()
        .map(|(i, p)| {
            let at = |e: String| format!("points[{i}]: {e}");
            if p.metric.is_empty() {
                return Err(at("metric is empty".into()));
            }
            check_metric(&p.metric).map_err(at)?;
            if p.labels.len() > MAX_LABELS {
                return Err(at(format!("{} labels, more than {MAX_LABELS}", p.labels.len())));
            }
            for (k, v) in &p.labels {
                check_text("label", k).and_then(|()| check_text("label value", v)).map_err(at)?;
            }
            let value = match &p.value {
                serde_json::Value::Bool(b) => Value::Bool(*b),
                serde_json::Value::Number(n) => match n.as_i64() {
                    Some(i) => Value::I64(i),
                    None => {
                        Value::F64(n.as_f64().ok_or_else(|| at(format!("value {n} out of range")))?)
                    }
                },
                serde_json::Value::String(s) => {
                    check_text("string value", s).map_err(at)?;
                    Value::Str(s.clone())
                }
                other => {
                    return Err(at(format!("value {other} is not a number, boolean or string")))
                }
            };
            Ok(Point {
                at: p.at.map_or(now, UnixMillis),
                metric: p.metric,
                value,
                labels: p.labels,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: UnixMillis = UnixMillis(5_000);
    const AMPLE: Budget = Budget { max_points: 10_000, max_label_bytes: MAX_LABEL_BYTES };

    fn one(line: &str) -> Vec<Point> {
        parse_lines(line, Precision::Nanos, NOW, AMPLE).unwrap()
    }

    #[test]
    fn parses_measurements_tags_fields_and_timestamps() {
        let p = one("motor,joint=2,side=left temp=41.5,current=3i,ok=t,state=\"run ning\" 1700000000000000000");
        assert_eq!(p.len(), 4);
        assert_eq!(p[0].metric, "motor.temp");
        assert_eq!(p[0].value, Value::F64(41.5));
        assert_eq!(p[0].labels["joint"], "2");
        assert_eq!(p[0].at, UnixMillis(1_700_000_000_000));
        assert_eq!(p[1].value, Value::I64(3));
        assert_eq!(p[2].value, Value::Bool(true));
        assert_eq!(p[3].value, Value::Str("run ning".into()));
        // `value` fields name the measurement itself; no timestamp: now.
        let q = one("battery value=87.5");
        assert_eq!((q[0].metric.as_str(), q[0].at), ("battery", NOW));
        // Escapes, comments, blank lines, CRLF.
        let r =
            parse_lines("# hi\n\nmy\\ metric,a\\,b=c\\=d f=1u\r\n", Precision::Secs, NOW, AMPLE)
                .unwrap();
        assert_eq!(r[0].metric, "my metric.f");
        assert_eq!(r[0].labels["a,b"], "c=d");
        let s = parse_lines("m f=1 1700000000", Precision::Secs, NOW, AMPLE).unwrap();
        assert_eq!(s[0].at, UnixMillis(1_700_000_000_000));
    }

    #[test]
    fn a_body_that_would_multiply_its_tags_stops_at_the_budget_while_parsing() {
        // 8 tags of 4 KB and 40,000 fields: 381 KB that would copy 1.3 GB of labels.
        let tags: String = (0..8).map(|i| format!(",t{i}={}", "v".repeat(4000))).collect();
        let fields: Vec<String> = (0..40_000).map(|i| format!("f{i}=1")).collect();
        let body = format!("m{tags} {}", fields.join(","));
        let refused = parse_lines(&body, Precision::Nanos, NOW, AMPLE).unwrap_err();
        assert!(refused.too_large, "{refused:?}");
        assert!(refused.message.starts_with("line 1: the points' labels add up to more than"));
        // The point count is a budget too, checked as points are made.
        let many = (0..50).map(|i| format!("m f={i}")).collect::<Vec<_>>().join("\n");
        let small = Budget { max_points: 10, max_label_bytes: MAX_LABEL_BYTES };
        let refused = parse_lines(&many, Precision::Nanos, NOW, small).unwrap_err();
        assert_eq!(
            (refused.too_large, refused.message.as_str()),
            (true, "line 11: more than 10 points in one request; send smaller batches")
        );
        // A malformed body is not "too large".
        assert!(!parse_lines("bad", Precision::Nanos, NOW, small).unwrap_err().too_large);
    }

    #[test]
    fn refusals_name_the_line_and_the_problem() {
        let err = |body: &str| parse_lines(body, Precision::Nanos, NOW, AMPLE).unwrap_err().message;
        assert_eq!(
            err("ok f=1\nbad"),
            "line 2: no fields: expected `measurement[,tag=value] field=value [timestamp]`"
        );
        assert!(
            err("m f=abc").contains("\"abc\" is not a number, boolean or quoted string"),
            "{}",
            err("m f=abc")
        );
        assert!(err("m f=\"open").contains("not closed"));
        assert!(err("m,t f=1").contains("tag \"t\" has no `=value`"));
        assert!(err("m f=1 soon").contains("timestamp \"soon\" is not an integer"));
        assert!(err("m f=1 -5").contains("before 1970"));
        assert!(err("m f=99999999999999999999i").contains("not a 64-bit integer"));
        assert!(err(&format!("{} f=1", "m".repeat(300))).contains("more than 200"));
        assert!(err("m f=inf").contains("finite"));
    }

    #[test]
    fn parses_the_json_form() {
        let p = parse_json(br#"{"points":[{"metric":"a","value":1},{"metric":"b","value":2.5,"labels":{"x":"y"},"at":7},{"metric":"c","value":"s"}]}"#, NOW).unwrap();
        assert_eq!(p[0].value, Value::I64(1));
        assert_eq!((p[1].value.clone(), p[1].at), (Value::F64(2.5), UnixMillis(7)));
        assert_eq!(p[2].value, Value::Str("s".into()));
        assert_eq!(
            parse_json(br#"[{"metric":"a","value":true}]"#, NOW).unwrap()[0].value,
            Value::Bool(true)
        );
        let e = parse_json(br#"[{"metric":"a","value":[1]}]"#, NOW).unwrap_err();
        assert_eq!(e, "points[0]: value [1] is not a number, boolean or string");
        assert!(parse_json(b"{", NOW).unwrap_err().starts_with("not the JSON form"));
    }
}
