//! VDSM's schema of its storage verbs and a checker of depot's answers
//! against it.
//!
//! The schema is `tests/data/vdsm-api-storage.json`: the names and types of
//! VDSM's 113 storage verbs and of the types they use, taken from
//! `vdsm-api.yml` (its `source` and `corrections` keys say from where and
//! what was mended). The checker walks a real answer of depotd along the
//! verb's return type (property names, JSON value types, enum values, list
//! and map elements) and fails on every difference that
//! `depot_api::conformance::DIFFERENCES` does not list for that verb. It
//! also records which listed differences it met, so that a test can fail
//! on an entry that no longer differs.
//!
//! Used by tests/conformance.rs and by the VM-tier tests of the SAN verbs
//! (`mod vdsm_schema;`).

#![allow(dead_code)]

use std::collections::BTreeSet;
use std::sync::Mutex;

use depot_api::conformance::{Difference, Item, DIFFERENCES};
use serde_json::{Map, Value};

const SCHEMA: &str = include_str!("../data/vdsm-api-storage.json");

/// One parameter of a VDSM verb.
#[derive(Debug, Clone)]
pub struct Param {
    pub name: String,
    /// A type name, or a one-element list for a list type.
    pub ty: Value,
    pub optional: bool,
}

/// One property of an object type (also a union's common properties).
#[derive(Debug, Clone)]
pub struct Prop {
    pub name: String,
    pub ty: Value,
    pub optional: bool,
}

/// VDSM's storage verbs and types.
pub struct Schema {
    types: Map<String, Value>,
    verbs: Map<String, Value>,
}

/// The shape of a type, resolved.
#[derive(Debug, Clone)]
pub enum Shape {
    String,
    /// int, uint, long, ulong: a JSON number (no fraction for int and
    /// uint), not negative when `unsigned`.
    Integer {
        unsigned: bool,
    },
    Number {
        unsigned: bool,
    },
    Boolean,
    List(Value),
    Enum(Vec<Value>),
    /// Key type (as named) and value type.
    Map(Value, Value),
    Object(Vec<Prop>),
    /// The members, each an object of the union's common properties and
    /// its own.
    Union(Vec<Vec<Prop>>),
}

fn props(v: Option<&Value>) -> Vec<Prop> {
    v.and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .map(|p| Prop {
                    name: p["name"].as_str().expect("property name").to_owned(),
                    ty: p["type"].clone(),
                    optional: p["optional"] == Value::Bool(true),
                })
                .collect()
        })
        .unwrap_or_default()
}

impl Schema {
    pub fn load() -> Schema {
        let v: Value = serde_json::from_str(SCHEMA).expect("vdsm-api-storage.json");
        let obj = |k: &str| v[k].as_object().cloned().expect(k);
        Schema {
            types: obj("types"),
            verbs: obj("verbs"),
        }
    }

    pub fn verb_names(&self) -> BTreeSet<String> {
        self.verbs.keys().cloned().collect()
    }

    pub fn has_verb(&self, verb: &str) -> bool {
        self.verbs.contains_key(verb)
    }

    pub fn params(&self, verb: &str) -> Vec<Param> {
        let v = self
            .verbs
            .get(verb)
            .unwrap_or_else(|| panic!("no verb {verb}"));
        v["params"]
            .as_array()
            .expect("params")
            .iter()
            .map(|p| Param {
                name: p["name"].as_str().expect("param name").to_owned(),
                ty: p["type"].clone(),
                optional: p["optional"] == Value::Bool(true),
            })
            .collect()
    }

    /// The return type; `Value::Null` when the verb returns nothing.
    pub fn returns(&self, verb: &str) -> Value {
        self.verbs
            .get(verb)
            .unwrap_or_else(|| panic!("no verb {verb}"))["return"]
            .clone()
    }

    /// Resolves a type to its shape (aliases followed).
    pub fn shape(&self, ty: &Value) -> Shape {
        if let Some(list) = ty.as_array() {
            return Shape::List(list[0].clone());
        }
        let name = ty
            .as_str()
            .unwrap_or_else(|| panic!("type is neither a name nor a list: {ty}"));
        match name {
            "string" => return Shape::String,
            "int" => return Shape::Integer { unsigned: false },
            "uint" => return Shape::Integer { unsigned: true },
            "long" | "float" => return Shape::Number { unsigned: false },
            "ulong" => return Shape::Number { unsigned: true },
            "boolean" => return Shape::Boolean,
            _ => {}
        }
        let t = self
            .types
            .get(name)
            .unwrap_or_else(|| panic!("no type {name} in the schema"));
        match t["kind"].as_str() {
            Some("alias") => self.shape(&t["sourcetype"]),
            Some("enum") => Shape::Enum(t["values"].as_array().expect("values").clone()),
            Some("map") => Shape::Map(t["key"].clone(), t["value"].clone()),
            Some("union") => {
                let common = props(t.get("properties"));
                let members = t["values"]
                    .as_array()
                    .expect("union members")
                    .iter()
                    .map(|m| match self.shape(m) {
                        Shape::Object(own) => common.iter().cloned().chain(own).collect(),
                        other => panic!("union member {m} is {other:?}"),
                    })
                    .collect();
                Shape::Union(members)
            }
            // "object", and the few types vdsm-api.yml leaves without a kind.
            _ => Shape::Object(props(t.get("properties"))),
        }
    }

    // ---- checking a value ----

    /// Every way `value` departs from `ty`, at `path`.
    pub fn walk(&self, ty: &Value, value: &Value, path: &str, out: &mut Vec<Finding>) {
        let mismatch = |want: String, out: &mut Vec<Finding>| {
            out.push(Finding::Type {
                path: path.to_owned(),
                want,
                got: value.clone(),
            })
        };
        match self.shape(ty) {
            Shape::String => {
                if !value.is_string() {
                    mismatch(format!("a string ({ty})"), out)
                }
            }
            Shape::Integer { unsigned } => {
                let ok = if unsigned {
                    value.is_u64()
                } else {
                    value.is_i64() || value.is_u64()
                };
                if !ok {
                    mismatch(format!("a whole number ({ty})"), out)
                }
            }
            Shape::Number { unsigned } => {
                let ok = value.is_number() && !(unsigned && value.as_f64() < Some(0.0));
                if !ok {
                    mismatch(format!("a number ({ty})"), out)
                }
            }
            Shape::Boolean => {
                if !value.is_boolean() {
                    mismatch("a boolean".into(), out)
                }
            }
            Shape::Enum(values) => {
                if !values.contains(value) {
                    mismatch(format!("one of {ty} {}", Value::Array(values)), out)
                }
            }
            Shape::List(elem) => match value.as_array() {
                None => mismatch(format!("a list of {elem}"), out),
                Some(items) => {
                    for v in items {
                        self.walk(&elem, v, &format!("{path}[]"), out);
                    }
                }
            },
            Shape::Map(_, val) => match value.as_object() {
                None => mismatch(format!("a map ({ty})"), out),
                Some(m) => {
                    for v in m.values() {
                        self.walk(&val, v, &format!("{path}{{}}"), out);
                    }
                }
            },
            Shape::Object(props) => match value.as_object() {
                None => mismatch(format!("an object ({ty})"), out),
                Some(m) => self.walk_object(&props, m, path, out),
            },
            Shape::Union(members) => match value.as_object() {
                None => mismatch(format!("an object ({ty})"), out),
                Some(m) => {
                    let best = members
                        .iter()
                        .map(|props| {
                            let mut f = Vec::new();
                            self.walk_object(props, m, path, &mut f);
                            f
                        })
                        .min_by_key(Vec::len)
                        .unwrap_or_default();
                    out.extend(best);
                }
            },
        }
    }

    fn walk_object(
        &self,
        props: &[Prop],
        m: &Map<String, Value>,
        path: &str,
        out: &mut Vec<Finding>,
    ) {
        let at = |name: &str| {
            if path.is_empty() {
                name.to_owned()
            } else {
                format!("{path}.{name}")
            }
        };
        for p in props {
            match m.get(&p.name) {
                None | Some(Value::Null) if p.optional => {}
                None => out.push(Finding::Missing(at(&p.name))),
                Some(v) => self.walk(&p.ty, v, &at(&p.name), out),
            }
        }
        for k in m.keys() {
            if !props.iter().any(|p| &p.name == k) {
                out.push(Finding::Extra(at(k)));
            }
        }
    }

    /// Every way a result of `verb` departs from VDSM's return type. A verb
    /// that returns nothing answers `true` on VDSM's wire (yajsonrpc's
    /// `JsonRpcServer`: `res = True if res is None else res`).
    pub fn result_findings(&self, verb: &str, value: &Value) -> Vec<Finding> {
        let ty = self.returns(verb);
        let mut out = Vec::new();
        if ty.is_null() {
            if value != &Value::Bool(true) {
                out.push(Finding::Type {
                    path: String::new(),
                    want: "true (VDSM's answer of a verb that returns nothing)".into(),
                    got: value.clone(),
                });
            }
        } else {
            self.walk(&ty, value, "", &mut out);
        }
        out
    }

    // ---- sample values of a type (parameters) ----

    /// A value of `ty` as VDSM's callers could send it: every property of
    /// objects (optional ones too when `all`), the first value of enums,
    /// one element in lists and maps. Strings are "1": a valid size, name,
    /// description or number alike.
    pub fn sample(&self, ty: &Value, all: bool) -> Value {
        match self.shape(ty) {
            Shape::String => {
                if ty.as_str() == Some("UUID") {
                    Value::String(new_uuid())
                } else {
                    Value::String("1".into())
                }
            }
            Shape::Integer { .. } | Shape::Number { .. } => Value::from(1),
            Shape::Boolean => Value::Bool(true),
            Shape::Enum(values) => values[0].clone(),
            Shape::List(elem) => Value::Array(vec![self.sample(&elem, all)]),
            Shape::Map(key, val) => {
                let k = match self.sample(&key, all) {
                    Value::String(s) => s,
                    other => other.to_string(),
                };
                let mut m = Map::new();
                m.insert(k, self.sample(&val, all));
                Value::Object(m)
            }
            Shape::Object(props) => self.sample_object(&props, all),
            Shape::Union(members) => self.sample_object(&members[0], all),
        }
    }

    pub fn sample_object(&self, props: &[Prop], all: bool) -> Value {
        Value::Object(
            props
                .iter()
                .filter(|p| all || !p.optional)
                .map(|p| (p.name.clone(), self.sample(&p.ty, all)))
                .collect(),
        )
    }

    /// Every enum value a caller could put somewhere inside a value of
    /// `ty`, each in `base` (a sample depot takes) with only that value
    /// changed: (path inside the value, the enum value, the sample). Union
    /// members are each sampled whole.
    pub fn variants(&self, ty: &Value, base: &Value) -> Vec<(String, Value, Value)> {
        match self.shape(ty) {
            Shape::Enum(values) => values
                .into_iter()
                .map(|v| (String::new(), v.clone(), v))
                .collect(),
            Shape::List(elem) => {
                let inner = base
                    .get(0)
                    .cloned()
                    .unwrap_or_else(|| self.sample(&elem, true));
                self.variants(&elem, &inner)
                    .into_iter()
                    .map(|(p, v, s)| (format!("[]{p}"), v, Value::Array(vec![s])))
                    .collect()
            }
            Shape::Map(key, val) => {
                let (k, inner) = match base.as_object().and_then(|m| m.iter().next()) {
                    Some((k, v)) => (k.clone(), v.clone()),
                    None => (
                        match self.sample(&key, true) {
                            Value::String(s) => s,
                            other => other.to_string(),
                        },
                        self.sample(&val, true),
                    ),
                };
                self.variants(&val, &inner)
                    .into_iter()
                    .map(|(p, v, s)| {
                        let mut m = Map::new();
                        m.insert(k.clone(), s);
                        (format!("{{}}{p}"), v, Value::Object(m))
                    })
                    .collect()
            }
            Shape::Object(props) => self.object_variants(&props, base),
            Shape::Union(members) => members
                .iter()
                .flat_map(|m| self.object_variants(m, &self.sample_object(m, true)))
                .collect(),
            _ => Vec::new(),
        }
    }

    fn object_variants(&self, props: &[Prop], base: &Value) -> Vec<(String, Value, Value)> {
        let mut out = Vec::new();
        for p in props {
            let inner = base
                .get(&p.name)
                .cloned()
                .unwrap_or_else(|| self.sample(&p.ty, true));
            for (sub, v, s) in self.variants(&p.ty, &inner) {
                let mut whole = base.clone();
                whole[&p.name] = s;
                out.push((format!(".{}{sub}", p.name), v, whole));
            }
        }
        out
    }

    /// The properties of an object parameter, each present and absent in
    /// `base` (a sample depot takes): (path inside the value, sample with,
    /// sample without). Lists are entered; each union member counts.
    pub fn property_probes(&self, ty: &Value, base: &Value) -> Vec<(String, Value, Value)> {
        match self.shape(ty) {
            Shape::List(elem) => {
                let inner = base
                    .get(0)
                    .cloned()
                    .unwrap_or_else(|| self.sample(&elem, true));
                self.property_probes(&elem, &inner)
                    .into_iter()
                    .map(|(p, with, without)| {
                        (
                            format!("[]{p}"),
                            Value::Array(vec![with]),
                            Value::Array(vec![without]),
                        )
                    })
                    .collect()
            }
            Shape::Object(props) => self.object_probes(&props, base),
            Shape::Union(members) => members
                .iter()
                .flat_map(|m| self.object_probes(m, &self.sample_object(m, true)))
                .collect(),
            _ => Vec::new(),
        }
    }

    fn object_probes(&self, props: &[Prop], base: &Value) -> Vec<(String, Value, Value)> {
        props
            .iter()
            .map(|p| {
                let mut with = base.clone();
                if with.get(&p.name).is_none() {
                    with[&p.name] = self.sample(&p.ty, true);
                }
                let mut without = base.clone();
                if let Some(m) = without.as_object_mut() {
                    m.remove(&p.name);
                }
                (format!(".{}", p.name), with, without)
            })
            .collect()
    }

    /// Other values of `ty` to try when depot refuses `current`: each enum
    /// value changed, only the required properties, each property left out.
    pub fn alternatives(&self, ty: &Value, current: &Value) -> Vec<Value> {
        let mut out: Vec<Value> = self
            .variants(ty, current)
            .into_iter()
            .map(|(_, _, s)| s)
            .collect();
        out.push(self.sample(ty, false));
        out.extend(
            self.property_probes(ty, current)
                .into_iter()
                .map(|(_, _, without)| without),
        );
        out
    }
}

pub fn new_uuid() -> String {
    depot_api::types::Uuid::new_v4().to_string()
}

/// One departure of a value from VDSM's type.
#[derive(Debug, Clone, PartialEq)]
pub enum Finding {
    /// A property the type requires is not there.
    Missing(String),
    /// A property the type does not have.
    Extra(String),
    /// The value is not of the type (or not one of the enum's values).
    Type {
        path: String,
        want: String,
        got: Value,
    },
}

impl Finding {
    /// Whether a listed difference excuses this finding.
    pub fn excused_by(&self, item: &Item) -> bool {
        match (self, item) {
            (Finding::Missing(p), Item::MissingProperty(q)) => p == q,
            (Finding::Missing(p), Item::OnlyProperties(sent)) => {
                !p.contains(['.', '[', '{']) && !sent.contains(&p.as_str())
            }
            (Finding::Extra(p), Item::ExtraProperty(q)) => p == q,
            (Finding::Type { path, got, .. }, Item::NumberList(q)) => {
                path == q && got.as_array().is_some_and(|a| a.iter().all(Value::is_u64))
            }
            (Finding::Type { path, got, .. }, Item::DecimalString(q)) => {
                path == q
                    && got
                        .as_str()
                        .is_some_and(|s| s.bytes().all(|b| b.is_ascii_digit()))
            }
            _ => false,
        }
    }
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Finding::Missing(p) => write!(f, "`{p}` is missing"),
            Finding::Extra(p) => write!(f, "`{p}` is not in VDSM's type"),
            Finding::Type { path, want, got } => {
                let got: String = got.to_string().chars().take(200).collect();
                write!(f, "`{path}` should be {want}, is {got}")
            }
        }
    }
}

/// Checks results against the schema, excusing the listed differences and
/// remembering which ones it met.
pub struct Checker {
    pub schema: Schema,
    used: Mutex<BTreeSet<usize>>,
    checked: Mutex<BTreeSet<String>>,
    /// What [`record`](Checker::record) found, for one report at the end.
    recorded: Mutex<Vec<String>>,
}

impl Default for Checker {
    fn default() -> Self {
        Checker::new()
    }
}

impl Checker {
    pub fn new() -> Checker {
        Checker {
            schema: Schema::load(),
            used: Mutex::default(),
            checked: Mutex::default(),
            recorded: Mutex::default(),
        }
    }

    /// The findings of one result that no listed difference excuses.
    pub fn unexcused(&self, verb: &str, value: &Value) -> Vec<Finding> {
        self.checked.lock().unwrap().insert(verb.to_owned());
        let mut left = Vec::new();
        for f in self.schema.result_findings(verb, value) {
            let hit = DIFFERENCES
                .iter()
                .enumerate()
                .find(|(_, d)| d.is_for(verb) && f.excused_by(&d.item));
            match hit {
                Some((i, _)) => {
                    self.used.lock().unwrap().insert(i);
                }
                None => left.push(f),
            }
        }
        left
    }

    /// Fails on every difference of `value` (a result of `verb`) from
    /// VDSM's return type that the list does not excuse.
    pub fn check(&self, verb: &str, value: &Value) {
        let left = self.unexcused(verb, value);
        assert!(
            left.is_empty(),
            "{verb}: the result departs from VDSM's type ({}):\n  {}\nresult: {value}",
            self.schema.returns(verb),
            left.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("\n  "),
        );
    }

    /// Like [`check`](Checker::check), but keeps the findings for
    /// [`assert_recorded_clean`](Checker::assert_recorded_clean), so that
    /// one run reports every verb's.
    pub fn record(&self, verb: &str, value: &Value) {
        let left = self.unexcused(verb, value);
        if left.is_empty() {
            return;
        }
        let mut r = self.recorded.lock().unwrap();
        for f in left {
            let line = format!("{verb}: {f}");
            if !r.contains(&line) {
                r.push(line);
            }
        }
        let shown: String = value.to_string().chars().take(400).collect();
        r.push(format!("    ({verb} answered {shown})"));
    }

    pub fn assert_recorded_clean(&self) {
        let r = self.recorded.lock().unwrap();
        assert!(
            r.is_empty(),
            "results depart from VDSM's types (fix depot or list the difference with its reason in depot_api::conformance):\n  {}",
            r.join("\n  ")
        );
    }

    pub fn checked_verbs(&self) -> BTreeSet<String> {
        self.checked.lock().unwrap().clone()
    }

    /// The result differences listed as seen by `test` for verbs it
    /// checked, that none of its checks met: entries that no longer differ.
    pub fn unused(&self, test: &str) -> Vec<Difference> {
        let used = self.used.lock().unwrap();
        let checked = self.checked.lock().unwrap();
        DIFFERENCES
            .iter()
            .enumerate()
            .filter(|(i, d)| {
                d.item.is_result()
                    && d.seen_by == test
                    && checked.contains(d.verb)
                    && !used.contains(i)
            })
            .map(|(_, d)| *d)
            .collect()
    }

    /// Fails when an entry seen by `test` was not met (see [`unused`]).
    pub fn assert_all_used(&self, test: &str) {
        let unused = self.unused(test);
        assert!(
            unused.is_empty(),
            "listed differences that no longer differ (remove them from depot_api::conformance):\n  {}",
            unused
                .iter()
                .map(|d| format!("{}: {}", d.verb, d.item.describe()))
                .collect::<Vec<_>>()
                .join("\n  ")
        );
    }
}
