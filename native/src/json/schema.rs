//! The reader schema as the JSON rules need it: field names, defaults, symbols, logical types.

use std::collections::HashMap;

use serde_json::{Map, Value};

/// Field name -> its index in the record: one hash of each key of a message.
pub(super) type FieldIndex = HashMap<String, usize, foldhash::fast::FixedState>;

pub(super) enum Kind {
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
    /// Few symbols: found by comparing, faster than hashing.
    Enum { symbols: Vec<String>, default: Option<usize> },
    Array(usize),
    Map(usize),
    Union(Vec<usize>),
    Record(Vec<Field>, FieldIndex),
}

pub(super) struct Field {
    pub(super) name: String,
    pub(super) node: usize,
    /// The field's default as the body bytes it writes.
    pub(super) default: Option<Vec<u8>>,
}

/// Parses a schema into nodes of one arena; a named type used twice is one node.
pub(super) struct Parser {
    pub(super) nodes: Vec<Kind>,
    pub(super) names: HashMap<String, usize>,
    /// (record node, field index, default) of every field with a default, written after parsing.
    pub(super) defaults: Vec<(usize, usize, Value)>,
}

impl Parser {
    fn push(&mut self, kind: Kind) -> usize {
        self.nodes.push(kind);
        self.nodes.len() - 1
    }

    pub(super) fn node(&mut self, value: &Value, namespace: &str) -> Result<usize, String> {
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
                        let symbols: Vec<String> = list.iter().map(|s| s.as_str().unwrap_or_default().to_string()).collect();
                        let default = match object.get("default").and_then(Value::as_str) {
                            Some(d) => Some(symbols.iter().position(|s| s == d).ok_or_else(|| format!("enum {name}: default {d:?} is no symbol"))?),
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
                        let index = fields.iter().enumerate().map(|(i, f)| (f.name.clone(), i)).collect();
                        Kind::Record(fields, index)
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
