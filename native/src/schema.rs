//! The shape of a writer schema, as much as checking a body against it needs.
//!
//! arrow-avro parses the schemas for decoding; this is the small model the body check in
//! `check.rs` walks. Nodes live in one arena and refer to each other by index, so a named type
//! used twice (or a recursive one) is one node.

use std::collections::HashMap;

use serde_json::{Map, Value};

#[derive(Debug)]
pub enum Node {
    Null,
    Boolean,
    Int,
    Long,
    Float,
    Double,
    Bytes,
    String,
    Fixed(usize),
    /// The number of symbols.
    Enum(usize),
    Array(usize),
    Map(usize),
    Union(Vec<usize>),
    Record(Vec<usize>),
}

#[derive(Debug)]
pub struct Schema {
    pub nodes: Vec<Node>,
    /// For each field of the root record: whether the reader has no such field and skips it.
    /// fastavro skips a field's bytes without reading them as text or symbols, so a skipped
    /// field is checked for its shape only. (A nested record has no Arrow column, so only the
    /// root record's fields can be skipped in this project's schemas.)
    pub skipped: Vec<bool>,
    /// Fewest bytes a value of each node takes: a block count larger than the bytes left over
    /// this is a truncated body, found before looping over the count.
    pub min_size: Vec<usize>,
    pub root: usize,
}

impl Schema {
    /// Parse a writer schema's JSON text; `reader_json` says which root fields are skipped.
    pub fn parse(json: &str, reader_json: &str) -> Result<Schema, String> {
        let value: Value = serde_json::from_str(json).map_err(|e| format!("not JSON: {e}"))?;
        let reader: Value = serde_json::from_str(reader_json).map_err(|e| format!("reader: not JSON: {e}"))?;
        let mut parser = Parser { nodes: Vec::new(), names: HashMap::new() };
        let root = parser.node(&value, "")?;
        // A reader field takes the writer field of its name or of one of its aliases.
        let mut read: Vec<&str> = Vec::new();
        for field in reader.get("fields").and_then(Value::as_array).into_iter().flatten() {
            read.extend(field.get("name").and_then(Value::as_str));
            let aliases = field.get("aliases").and_then(Value::as_array);
            read.extend(aliases.into_iter().flatten().filter_map(Value::as_str));
        }
        let names = value.get("fields").and_then(Value::as_array).into_iter().flatten();
        let skipped = names.map(|f| !f.get("name").and_then(Value::as_str).is_some_and(|n| read.contains(&n))).collect();
        let mut schema = Schema { nodes: parser.nodes, skipped, min_size: Vec::new(), root };
        schema.min_size = (0..schema.nodes.len()).map(|i| schema.min_bytes(i, 0)).collect();
        Ok(schema)
    }

    fn min_bytes(&self, node: usize, depth: usize) -> usize {
        match &self.nodes[node] {
            Node::Null => 0,
            Node::Float => 4,
            Node::Double => 8,
            Node::Fixed(n) => *n,
            // A record nested in itself without a union or array in between has no finite
            // value; stop counting rather than recurse forever.
            Node::Record(fields) if depth < 64 => {
                fields.iter().map(|f| self.min_bytes(*f, depth + 1)).sum()
            }
            Node::Record(_) => 0,
            _ => 1,
        }
    }
}

struct Parser {
    nodes: Vec<Node>,
    names: HashMap<String, usize>,
}

impl Parser {
    fn push(&mut self, node: Node) -> usize {
        self.nodes.push(node);
        self.nodes.len() - 1
    }

    fn node(&mut self, value: &Value, namespace: &str) -> Result<usize, String> {
        match value {
            Value::String(name) => self.named_or_primitive(name, namespace),
            Value::Array(branches) => {
                let branches = branches
                    .iter()
                    .map(|b| self.node(b, namespace))
                    .collect::<Result<Vec<_>, _>>()?;
                Ok(self.push(Node::Union(branches)))
            }
            Value::Object(object) => self.complex(object, namespace),
            other => Err(format!("not a schema: {other}")),
        }
    }

    fn named_or_primitive(&mut self, name: &str, namespace: &str) -> Result<usize, String> {
        let primitive = match name {
            "null" => Some(Node::Null),
            "boolean" => Some(Node::Boolean),
            "int" => Some(Node::Int),
            "long" => Some(Node::Long),
            "float" => Some(Node::Float),
            "double" => Some(Node::Double),
            "bytes" => Some(Node::Bytes),
            "string" => Some(Node::String),
            _ => None,
        };
        if let Some(node) = primitive {
            return Ok(self.push(node));
        }
        let full = full_name(name, namespace);
        self.names
            .get(&full)
            .or_else(|| self.names.get(name))
            .copied()
            .ok_or_else(|| format!("unknown type {name:?}"))
    }

    fn complex(&mut self, object: &Map<String, Value>, namespace: &str) -> Result<usize, String> {
        let kind = object.get("type").ok_or("a schema object without \"type\"")?;
        let kind = match kind {
            Value::String(kind) => kind.as_str(),
            // {"type": {...}} or {"type": [...]}: the inner schema, with these attributes.
            other => return self.node(other, namespace),
        };
        match kind {
            "record" | "error" | "enum" | "fixed" => {
                let name = object.get("name").and_then(Value::as_str).ok_or("a named type without a name")?;
                let own_namespace = object.get("namespace").and_then(Value::as_str).unwrap_or(namespace);
                let full = full_name(name, own_namespace);
                let inner_namespace = full.rsplit_once('.').map_or("", |(ns, _)| ns).to_string();
                // Registered before its fields are read, so a field may refer to it.
                let index = self.push(Node::Null);
                self.names.insert(full, index);
                self.nodes[index] = match kind {
                    "enum" => {
                        let symbols = object.get("symbols").and_then(Value::as_array).ok_or("an enum without symbols")?;
                        Node::Enum(symbols.len())
                    }
                    "fixed" => {
                        let size = object.get("size").and_then(Value::as_u64).ok_or("a fixed without a size")?;
                        Node::Fixed(usize::try_from(size).map_err(|_| "fixed size too large")?)
                    }
                    _ => {
                        let fields = object.get("fields").and_then(Value::as_array).ok_or("a record without fields")?;
                        let mut nodes = Vec::with_capacity(fields.len());
                        for field in fields {
                            let field_type = field.get("type").ok_or("a field without a type")?;
                            nodes.push(self.node(field_type, &inner_namespace)?);
                        }
                        Node::Record(nodes)
                    }
                };
                Ok(index)
            }
            "array" => {
                let items = object.get("items").ok_or("an array without items")?;
                let items = self.node(items, namespace)?;
                Ok(self.push(Node::Array(items)))
            }
            "map" => {
                let values = object.get("values").ok_or("a map without values")?;
                let values = self.node(values, namespace)?;
                Ok(self.push(Node::Map(values)))
            }
            primitive => self.named_or_primitive(primitive, namespace),
        }
    }
}

fn full_name(name: &str, namespace: &str) -> String {
    if name.contains('.') || namespace.is_empty() {
        name.to_string()
    } else {
        format!("{namespace}.{name}")
    }
}
