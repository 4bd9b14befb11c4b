//! JSON objects -> Avro bodies of the reader version, which the reader's own decoder then reads.
//!
//! A JSON message is checked against the reader schema while it is written as the Avro body a
//! producer of that version would have written, so its row comes out of the same arrow-avro
//! decoder, typed as an Avro row is, and no column is built twice. The rules, and the failure
//! messages word for word, are those of `connectors/kafka/jsonrecord.py` (the reference):
//!
//! - the value is one JSON object; a field of the reader is taken by its name; one left out
//!   takes its default, and is an error when it has none; a field no version of the event has
//!   is an error (a misspelt field would lose its value silently), one of another version is
//!   ignored, as Avro resolution skips a writer's field the reader lacks;
//! - `int` and `long` take a JSON integer in range (no fraction, no exponent); `float` and
//!   `double` any number; a `timestamp-millis` epoch milliseconds (an integer) or an RFC 3339
//!   string, which must carry its offset (`Z` or `+hh:mm`); a `uuid` string 8-4-4-4-12 hex
//!   digits; an enum symbol the schema lacks is read as the enum's default, and is an error
//!   when it has none; `bytes` and `fixed` a string of code points up to U+00FF (Avro's JSON);
//! - a union takes null in its null branch, other values in the first branch that takes them.

use std::collections::{HashMap, HashSet};
use std::fmt;

use serde_json::{Map, Value};

use crate::convert::is_uuid;

enum Kind {
    Null,
    Boolean,
    Int,
    Long,
    Float,
    Double,
    Bytes,
    String,
    Uuid,
    Timestamp,
    Fixed(usize),
    Enum { symbols: HashMap<String, usize>, default: Option<usize> },
    Array(usize),
    Map(usize),
    Union(Vec<usize>),
    Record(Vec<Field>),
}

struct Field {
    name: String,
    node: usize,
    /// The field's default as the body bytes it writes.
    default: Option<Vec<u8>>,
}

/// The reader schema as JSON messages are checked and written against it.
pub struct JsonSchema {
    nodes: Vec<Kind>,
    root: usize,
    /// Top-level fields of other versions of the event, ignored in a message.
    ignored: HashSet<String>,
}

/// Most characters of a string value a failure message quotes.
const QUOTED_CHARS: usize = 40;
/// Nesting deeper than this is refused (serde_json itself stops at 128).
const MAX_DEPTH: usize = 200;

impl JsonSchema {
    /// Parse the reader schema, logical types included; `ignored`: see the field.
    pub fn parse(schema_json: &str, ignored: Vec<String>) -> Result<JsonSchema, String> {
        let value: Value = serde_json::from_str(schema_json).map_err(|e| format!("not JSON: {e}"))?;
        let mut parser = Parser { nodes: Vec::new(), names: HashMap::new(), defaults: Vec::new() };
        let root = parser.node(&value, "")?;
        if !matches!(parser.nodes[root], Kind::Record(_)) {
            return Err("the reader schema is not a record".into());
        }
        let mut schema = JsonSchema { nodes: parser.nodes, root, ignored: ignored.into_iter().collect() };
        // Defaults are written once, here, with the rules a message's values are.
        for (node, field, default) in parser.defaults {
            let mut bytes = Vec::new();
            let Kind::Record(fields) = &schema.nodes[node] else { unreachable!("defaults are a record's") };
            let name = fields[field].name.clone();
            schema
                .value(fields[field].node, &default, &mut bytes, &Path::Field(&Path::Root, &name), 0)
                .map_err(|e| format!("the default of {e}"))?;
            let Kind::Record(fields) = &mut schema.nodes[node] else { unreachable!() };
            fields[field].default = Some(bytes);
        }
        Ok(schema)
    }

    /// Check `value` (one parsed message) and append its Avro body to `out`; on failure the
    /// reason, naming the field, and `out` holds a partial body the caller drops.
    pub fn encode(&self, value: &Value, out: &mut Vec<u8>) -> Result<(), String> {
        let Value::Object(object) = value else {
            return Err(format!("expected a JSON object, got {}", show(value)));
        };
        self.record(self.root, object, out, &Path::Root, 0)
    }

    fn record(&self, node: usize, object: &Map<String, Value>, out: &mut Vec<u8>, path: &Path, depth: usize) -> Result<(), String> {
        let Kind::Record(fields) = &self.nodes[node] else { unreachable!("a record") };
        for field in fields {
            let here = Path::Field(path, &field.name);
            match object.get(&field.name) {
                Some(value) => self.value(field.node, value, out, &here, depth + 1)?,
                None => match &field.default {
                    Some(bytes) => out.extend_from_slice(bytes),
                    None => return Err(format!("{here}: missing, and the field has no default")),
                },
            }
        }
        if object.len() > fields.len() || fields.iter().any(|f| !object.contains_key(&f.name)) {
            let top = matches!(path, Path::Root);
            for key in object.keys() {
                let known = fields.iter().any(|f| &f.name == key) || (top && self.ignored.contains(key));
                if !known {
                    return Err(format!("{}: unknown field", Path::Field(path, key)));
                }
            }
        }
        Ok(())
    }

    fn value(&self, node: usize, value: &Value, out: &mut Vec<u8>, path: &Path, depth: usize) -> Result<(), String> {
        if depth > MAX_DEPTH {
            return Err(format!("{path}: nested more than {MAX_DEPTH} deep"));
        }
        let mismatch = || Err(format!("{path}: expected {}, got {}", self.describe(node), show(value)));
        match (&self.nodes[node], value) {
            (Kind::Null, Value::Null) => {}
            (Kind::Boolean, Value::Bool(b)) => out.push(u8::from(*b)),
            (Kind::Int, Value::Number(n)) if !n.is_f64() => match n.as_i64().and_then(|i| i32::try_from(i).ok()) {
                Some(i) => long(out, i64::from(i)),
                None => return Err(format!("{path}: {n} is out of the int range")),
            },
            (Kind::Long | Kind::Timestamp, Value::Number(n)) if !n.is_f64() => match n.as_i64() {
                Some(i) => long(out, i),
                None => return Err(format!("{path}: {n} is out of the long range")),
            },
            (Kind::Float, Value::Number(n)) => out.extend_from_slice(&(n.as_f64().expect("a number") as f32).to_le_bytes()),
            (Kind::Double, Value::Number(n)) => out.extend_from_slice(&n.as_f64().expect("a number").to_le_bytes()),
            (Kind::String, Value::String(s)) => text(out, s.as_bytes()),
            (Kind::Uuid, Value::String(s)) => {
                if !is_uuid(s.as_bytes()) {
                    return Err(format!("{path}: not a UUID: {}", show(value)));
                }
                text(out, s.as_bytes());
            }
            (Kind::Timestamp, Value::String(s)) => match parse_timestamp(s) {
                Some(ms) => long(out, ms),
                None => {
                    return Err(format!(
                        "{path}: {} is not an ISO 8601 timestamp with an offset (like 2026-11-20T08:00:00.000Z)",
                        show(value)))
                }
            },
            (Kind::Bytes, Value::String(s)) => match latin1(s) {
                Some(bytes) => text(out, &bytes),
                None => return mismatch(),
            },
            (Kind::Fixed(size), Value::String(s)) => match latin1(s) {
                Some(bytes) if bytes.len() == *size => out.extend_from_slice(&bytes),
                _ => return mismatch(),
            },
            (Kind::Enum { symbols, default }, Value::String(s)) => match symbols.get(s.as_str()).or(default.as_ref()) {
                Some(&index) => long(out, index as i64),
                None => return Err(format!("{path}: unknown symbol {}", show(value))),
            },
            (Kind::Array(items), Value::Array(values)) => {
                if !values.is_empty() {
                    long(out, values.len() as i64);
                    for (i, item) in values.iter().enumerate() {
                        self.value(*items, item, out, &Path::Item(path, i), depth + 1)?;
                    }
                }
                out.push(0);
            }
            (Kind::Map(values), Value::Object(entries)) => {
                if !entries.is_empty() {
                    long(out, entries.len() as i64);
                    for (key, item) in entries {
                        text(out, key.as_bytes());
                        self.value(*values, item, out, &Path::Key(path, key), depth + 1)?;
                    }
                }
                out.push(0);
            }
            (Kind::Record(_), Value::Object(object)) => self.record(node, object, out, path, depth)?,
            (Kind::Union(branches), _) => {
                let start = out.len();
                let mut last = None;
                for (i, &branch) in branches.iter().enumerate() {
                    if matches!(self.nodes[branch], Kind::Null) != value.is_null() {
                        continue;
                    }
                    long(out, i as i64);
                    match self.value(branch, value, out, path, depth + 1) {
                        Ok(()) => return Ok(()),
                        Err(e) => {
                            out.truncate(start);
                            last = Some(e);
                        }
                    }
                }
                let fitting = branches.iter().filter(|&&b| matches!(self.nodes[b], Kind::Null) != value.is_null()).count();
                return match last {
                    // One branch could take it: its reason is the one that says most.
                    Some(e) if fitting == 1 => Err(e),
                    _ => mismatch(),
                };
            }
            _ => return mismatch(),
        }
        Ok(())
    }

    /// A type as failure messages name it.
    fn describe(&self, node: usize) -> String {
        match &self.nodes[node] {
            Kind::Null => "null".into(),
            Kind::Boolean => "boolean".into(),
            Kind::Int => "int".into(),
            Kind::Long => "long".into(),
            Kind::Float => "float".into(),
            Kind::Double => "double".into(),
            Kind::Bytes => "bytes".into(),
            Kind::String => "string".into(),
            Kind::Uuid => "a UUID string".into(),
            Kind::Timestamp => "epoch milliseconds or an ISO 8601 string".into(),
            Kind::Fixed(size) => format!("fixed({size})"),
            Kind::Enum { .. } => "a symbol (string)".into(),
            Kind::Array(_) => "an array".into(),
            Kind::Map(_) | Kind::Record(_) => "an object".into(),
            Kind::Union(branches) => branches.iter().map(|&b| self.describe(b)).collect::<Vec<_>>().join(" or "),
        }
    }
}

/// Where a value is in a message, written out only for a failure: `details["k"]`, `items[3]`.
enum Path<'a> {
    Root,
    Field(&'a Path<'a>, &'a str),
    Item(&'a Path<'a>, usize),
    Key(&'a Path<'a>, &'a str),
}

impl fmt::Display for Path<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Path::Root => Ok(()),
            Path::Field(Path::Root, name) => f.write_str(name),
            Path::Field(parent, name) => write!(f, "{parent}.{name}"),
            Path::Item(parent, index) => write!(f, "{parent}[{index}]"),
            Path::Key(parent, key) => write!(f, "{parent}[{}]", serde_json::to_string(key).expect("a string serializes")),
        }
    }
}

/// A value as failure messages quote it: text cut to its first characters, containers by kind.
fn show(value: &Value) -> String {
    match value {
        Value::String(s) => {
            let mut chars = s.char_indices();
            match chars.nth(QUOTED_CHARS) {
                Some((cut, _)) => format!("{}…", serde_json::to_string(&s[..cut]).expect("a string serializes")),
                None => serde_json::to_string(s).expect("a string serializes"),
            }
        }
        Value::Number(n) if n.is_f64() => python_float(n.as_f64().expect("a float")),
        Value::Array(_) => "an array".into(),
        Value::Object(_) => "an object".into(),
        other => other.to_string(),
    }
}

/// A (finite) float as Python's `repr` writes it, so both decoders quote a value alike: the
/// shortest digits that read back the same, in positional notation from 1e-4 up to 1e16 and
/// with a signed two-digit exponent otherwise (`12.5`, `1000.0`, `1e+16`, `1.5e-07`).
fn python_float(value: f64) -> String {
    let sign = if value.is_sign_negative() { "-" } else { "" };
    if value == 0.0 {
        return format!("{sign}0.0");
    }
    // Rust's `{:e}` writes the shortest round-trip digits: `1.25e1`, `1e16`.
    let scientific = format!("{:e}", value.abs());
    let (mantissa, exponent) = scientific.split_once('e').expect("{:e} has an exponent");
    let digits = mantissa.replace('.', "");
    let exponent: i32 = exponent.parse().expect("an integer exponent");
    let point = exponent + 1; // digits before the decimal point
    let n = digits.len() as i32;
    let body = if -4 < point && point <= 16 {
        if point <= 0 {
            format!("0.{}{digits}", "0".repeat(-point as usize))
        } else if point >= n {
            format!("{digits}{}.0", "0".repeat((point - n) as usize))
        } else {
            format!("{}.{}", &digits[..point as usize], &digits[point as usize..])
        }
    } else {
        let rest = if n > 1 { format!(".{}", &digits[1..]) } else { String::new() };
        let exp_sign = if exponent < 0 { '-' } else { '+' };
        format!("{}{rest}e{exp_sign}{:02}", &digits[..1], exponent.abs())
    };
    format!("{sign}{body}")
}

#[inline]
fn long(out: &mut Vec<u8>, value: i64) {
    let mut zigzag = ((value << 1) ^ (value >> 63)) as u64;
    while zigzag >= 0x80 {
        out.push((zigzag as u8) | 0x80);
        zigzag >>= 7;
    }
    out.push(zigzag as u8);
}

#[inline]
fn text(out: &mut Vec<u8>, bytes: &[u8]) {
    long(out, bytes.len() as i64);
    out.extend_from_slice(bytes);
}

fn latin1(s: &str) -> Option<Vec<u8>> {
    s.chars().map(|c| u8::try_from(u32::from(c)).ok()).collect()
}

/// Whether a message is a JSON object: its first byte that is not JSON whitespace is `{`
/// (an Avro single-object message starts with C3 01).
#[inline]
pub fn looks_like_json(message: &[u8]) -> bool {
    message.iter().find(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r')) == Some(&b'{')
}

/// Epoch milliseconds of an RFC 3339 timestamp `YYYY-MM-DDTHH:MM:SS[.fraction](Z|±HH:MM)` (`T`
/// may be `t` or a space, `Z` may be `z`); digits past the milliseconds are dropped.
pub fn parse_timestamp(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    let digits = |range: std::ops::Range<usize>| -> Option<i64> {
        let part = b.get(range)?;
        part.iter().all(u8::is_ascii_digit).then(|| part.iter().fold(0i64, |n, d| n * 10 + i64::from(d - b'0')))
    };
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') || b[13] != b':' || b[16] != b':' {
        return None;
    }
    let (year, month, day) = (digits(0..4)?, digits(5..7)?, digits(8..10)?);
    let (hour, minute, second) = (digits(11..13)?, digits(14..16)?, digits(17..19)?);
    let mut at = 19;
    let mut millis = 0;
    if b[at] == b'.' {
        let end = at + 1 + b[at + 1..].iter().take_while(|c| c.is_ascii_digit()).count();
        if end == at + 1 {
            return None;
        }
        for i in 0..3 {
            millis = millis * 10 + b.get(at + 1 + i).filter(|_| at + 1 + i < end).map_or(0, |d| i64::from(d - b'0'));
        }
        at = end;
    }
    let offset = match b.get(at..)? {
        [b'Z' | b'z'] => 0,
        [sign @ (b'+' | b'-'), _, _, b':', _, _] => {
            let (hours, minutes) = (digits(at + 1..at + 3)?, digits(at + 4..at + 6)?);
            if hours > 23 || minutes > 59 {
                return None;
            }
            (hours * 60 + minutes) * if *sign == b'+' { 1 } else { -1 }
        }
        _ => return None,
    };
    let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
    let month_days = [31, if leap { 29 } else { 28 }, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];
    if year == 0 || !(1..=12).contains(&month) || day < 1 || day > month_days[month as usize - 1] || hour > 23 || minute > 59 || second > 59 {
        return None;
    }
    // Days since 1970-01-01 in the proleptic Gregorian calendar (Howard Hinnant's days_from_civil).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(((days * 24 + hour) * 60 + minute - offset) * 60_000 + second * 1000 + millis)
}

struct Parser {
    nodes: Vec<Kind>,
    names: HashMap<String, usize>,
    /// (record node, field index, default) of every field with a default, written after parsing.
    defaults: Vec<(usize, usize, Value)>,
}

impl Parser {
    fn push(&mut self, kind: Kind) -> usize {
        self.nodes.push(kind);
        self.nodes.len() - 1
    }

    fn node(&mut self, value: &Value, namespace: &str) -> Result<usize, String> {
        match value {
            Value::String(name) => self.named_or_primitive(name, namespace),
            Value::Array(branches) => {
                let branches = branches.iter().map(|b| self.node(b, namespace)).collect::<Result<Vec<_>, _>>()?;
                Ok(self.push(Kind::Union(branches)))
            }
            Value::Object(object) => self.complex(object, namespace),
            other => Err(format!("not a schema: {other}")),
        }
    }

    fn named_or_primitive(&mut self, name: &str, namespace: &str) -> Result<usize, String> {
        let primitive = match name {
            "null" => Kind::Null,
            "boolean" => Kind::Boolean,
            "int" => Kind::Int,
            "long" => Kind::Long,
            "float" => Kind::Float,
            "double" => Kind::Double,
            "bytes" => Kind::Bytes,
            "string" => Kind::String,
            _ => {
                let full = if name.contains('.') || namespace.is_empty() { name.to_string() } else { format!("{namespace}.{name}") };
                return self.names.get(&full).or_else(|| self.names.get(name)).copied().ok_or_else(|| format!("unknown type {name:?}"));
            }
        };
        Ok(self.push(primitive))
    }

    fn complex(&mut self, object: &Map<String, Value>, namespace: &str) -> Result<usize, String> {
        let kind = match object.get("type").ok_or("a schema object without \"type\"")? {
            Value::String(kind) => kind.as_str(),
            other => return self.node(other, namespace),
        };
        match (kind, object.get("logicalType").and_then(Value::as_str)) {
            ("string", Some("uuid")) => return Ok(self.push(Kind::Uuid)),
            ("long", Some("timestamp-millis")) => return Ok(self.push(Kind::Timestamp)),
            _ => {}
        }
        match kind {
            "record" | "error" | "enum" | "fixed" => {
                let name = object.get("name").and_then(Value::as_str).ok_or("a named type without a name")?;
                let own_namespace = object.get("namespace").and_then(Value::as_str).unwrap_or(namespace);
                let full = if name.contains('.') || own_namespace.is_empty() { name.to_string() } else { format!("{own_namespace}.{name}") };
                let inner_namespace = full.rsplit_once('.').map_or("", |(ns, _)| ns).to_string();
                // Registered before its fields are read, so a field may refer to it.
                let index = self.push(Kind::Null);
                self.names.insert(full, index);
                self.nodes[index] = match kind {
                    "enum" => {
                        let list = object.get("symbols").and_then(Value::as_array).ok_or("an enum without symbols")?;
                        let symbols: HashMap<String, usize> =
                            list.iter().enumerate().filter_map(|(i, s)| Some((s.as_str()?.to_string(), i))).collect();
                        let default = match object.get("default").and_then(Value::as_str) {
                            Some(d) => Some(*symbols.get(d).ok_or_else(|| format!("enum {name}: default {d:?} is no symbol"))?),
                            None => None,
                        };
                        Kind::Enum { symbols, default }
                    }
                    "fixed" => {
                        let size = object.get("size").and_then(Value::as_u64).ok_or("a fixed without a size")?;
                        Kind::Fixed(usize::try_from(size).map_err(|_| "fixed size too large")?)
                    }
                    _ => {
                        let list = object.get("fields").and_then(Value::as_array).ok_or("a record without fields")?;
                        let mut fields = Vec::with_capacity(list.len());
                        for (i, field) in list.iter().enumerate() {
                            let name = field.get("name").and_then(Value::as_str).ok_or("a field without a name")?;
                            let node = self.node(field.get("type").ok_or("a field without a type")?, &inner_namespace)?;
                            if let Some(default) = field.get("default") {
                                self.defaults.push((index, i, default.clone()));
                            }
                            fields.push(Field { name: name.to_string(), node, default: None });
                        }
                        Kind::Record(fields)
                    }
                };
                Ok(index)
            }
            "array" => {
                let items = self.node(object.get("items").ok_or("an array without items")?, namespace)?;
                Ok(self.push(Kind::Array(items)))
            }
            "map" => {
                let values = self.node(object.get("values").ok_or("a map without values")?, namespace)?;
                Ok(self.push(Kind::Map(values)))
            }
            primitive => self.named_or_primitive(primitive, namespace),
        }
    }
}
