//! Audit records and findings mapped to [OCSF] 1.8.0 events (`docs/ocsf.md` has the table).
//!
//! Pure functions: a record (schema v2, see `docs/events.md`) in, an OCSF event out; no I/O.
//! What the mapping does not place in an OCSF attribute is kept, verbatim, under `unmapped`
//! (the hash chain among it), so nothing in the record is lost.
//!
//! Records are converted without building a JSON tree on either side: a line is read into its
//! fields ([`Fields`], strings borrowed from the line where they have no escapes), the event is
//! built from borrowed pieces ([`Event`]) and serialized straight to the output
//! ([`write_line`]). The bytes are those `serde_json` writes for the equivalent
//! `serde_json::Value` (every object's keys in sorted order, compact), which is what
//! [`record`] returns for callers that want a tree; a test holds the previous, tree-building
//! mapping as the reference and compares both byte for byte on a corpus of every record kind.
//!
//! Decisions (the `security_control` profile):
//!
//! | decision | `action_id` | `disposition_id` | `status_id` | `severity_id` |
//! |---|---|---|---|---|
//! | `allow` | 1 Allowed | 1 Allowed | 1 Success | 1 Informational |
//! | `deny` | 2 Denied | 2 Blocked | 2 Failure | 2 Low |
//! | `audit` | 3 Observed | 15 Detected | 1 Success | 3 Medium |
//!
//! [OCSF]: https://schema.ocsf.io
use std::{borrow::Cow, collections::BTreeMap, fmt};

use serde::{
    Serialize, Serializer,
    de::{self, Deserializer, MapAccess, SeqAccess, Visitor, value::MapAccessDeserializer},
    ser::{Error as _, SerializeMap, SerializeSeq},
};
use serde_json::{Value, json};

use crate::rules::{Severity, engine::Finding};

#[cfg(test)]
#[path = "ocsf_legacy.rs"]
mod legacy;

/// The OCSF schema version events are written against (`metadata.version`).
pub const OCSF_VERSION: &str = "1.8.0";

/// What a single record does not carry but an OCSF event wants: `device.hostname`, which only
/// a task's `task_start` names (`node`).
///
/// The host name of an event of task T is, in this order: [`Context::hostname`] (`--host`, an
/// explicit override), the `node` of T's `task_start` (learnt by [`Context::learn`]), then
/// [`Context::fallback_hostname`] (the host doing the conversion), else none.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Context {
    /// Overrides `device.hostname` of every event, whatever the records say.
    pub hostname: Option<String>,
    /// `device.hostname` of events whose task's node is unknown: logs from before `task_start`
    /// named the node, or a replay that starts after the task's `task_start`.
    pub fallback_hostname: Option<String>,
    /// Task id → the node its `task_start` names.
    nodes: BTreeMap<String, String>,
}

impl Context {
    /// `hostname` overrides every event's host name; `fallback_hostname` names the host of tasks
    /// whose node is unknown.
    pub fn new(hostname: Option<String>, fallback_hostname: Option<String>) -> Self {
        Self { hostname, fallback_hostname, nodes: BTreeMap::new() }
    }

    /// Notes what a record tells about the events after it: a `task_start`'s `node`. Call it for
    /// every record, in log order, before mapping it.
    pub fn learn(&mut self, rec: &Value) {
        if let Some((task, node)) = Self::teaches(rec) {
            self.learn_node(task, node);
        }
    }

    /// What [`Context::learn`] would note from `rec`: a `task_start`'s task and node.
    pub fn teaches(rec: &Value) -> Option<(&str, &str)> {
        if rec["kind"] == "task_start"
            && let (Some(task), Some(node)) = (rec["task"].as_str(), rec["node"].as_str())
            && !node.is_empty()
        {
            return Some((task, node));
        }
        None
    }

    /// Notes that `task` runs on `node` (what [`Context::learn`] does with a `task_start`).
    pub fn learn_node(&mut self, task: &str, node: &str) {
        self.nodes.insert(task.to_string(), node.to_string());
    }

    /// `device.hostname` of an event of `task`.
    pub fn hostname_of(&self, task: &str) -> Option<&str> {
        self.hostname
            .as_deref()
            .or_else(|| self.nodes.get(task).map(String::as_str))
            .or(self.fallback_hostname.as_deref())
    }
}

/// An OCSF event class.
#[derive(Debug, Clone, Copy)]
struct Class {
    uid: u32,
    name: &'static str,
    category_uid: u32,
    category_name: &'static str,
}

const SYSTEM: (u32, &str) = (1, "System Activity");
const NETWORK: (u32, &str) = (4, "Network Activity");

const fn class(uid: u32, name: &'static str, category: (u32, &'static str)) -> Class {
    Class { uid, name, category_uid: category.0, category_name: category.1 }
}

pub const FILE_SYSTEM_ACTIVITY: u32 = 1001;
pub const KERNEL_EXTENSION_ACTIVITY: u32 = 1002;
pub const KERNEL_ACTIVITY: u32 = 1003;
pub const PROCESS_ACTIVITY: u32 = 1007;
pub const EVENT_LOG_ACTIVITY: u32 = 1008;
pub const DETECTION_FINDING: u32 = 2004;
pub const NETWORK_ACTIVITY: u32 = 4001;
pub const DNS_ACTIVITY: u32 = 4003;

const FILE: Class = class(FILE_SYSTEM_ACTIVITY, "File System Activity", SYSTEM);
const KEXT: Class = class(KERNEL_EXTENSION_ACTIVITY, "Kernel Extension Activity", SYSTEM);
const KERNEL: Class = class(KERNEL_ACTIVITY, "Kernel Activity", SYSTEM);
const PROCESS: Class = class(PROCESS_ACTIVITY, "Process Activity", SYSTEM);
const EVENT_LOG: Class = class(EVENT_LOG_ACTIVITY, "Event Log Activity", SYSTEM);
const FINDING: Class = class(DETECTION_FINDING, "Detection Finding", (2, "Findings"));
const NET: Class = class(NETWORK_ACTIVITY, "Network Activity", NETWORK);
const DNS: Class = class(DNS_ACTIVITY, "DNS Activity", NETWORK);

/// `activity_id` 99: the class has no activity for it; `activity_name` says what it was.
const OTHER: i64 = 99;

// ---------------------------------------------------------------------------------------------
// The record side: a line's fields, without a JSON tree.

/// One field's value as `serde_json` read it: scalars as they are (strings borrowed from the
/// line when they have no escapes), lists and objects as trees (few records have them, and the
/// mapping reads them whole).
#[derive(Debug, Clone, PartialEq)]
pub enum FieldValue<'a> {
    Null,
    Bool(bool),
    /// A non-negative integer (JSON reads those as u64, like `serde_json::Number`).
    U64(u64),
    /// A negative integer.
    I64(i64),
    F64(f64),
    Str(Cow<'a, str>),
    Tree(Cow<'a, Value>),
}

impl FieldValue<'_> {
    fn as_str(&self) -> Option<&str> {
        match self {
            Self::Str(s) => Some(s),
            _ => None,
        }
    }
    /// As `serde_json::Value::as_i64`.
    fn as_i64(&self) -> Option<i64> {
        match *self {
            Self::U64(u) => i64::try_from(u).ok(),
            Self::I64(i) => Some(i),
            _ => None,
        }
    }
    fn tree(&self) -> Option<&Value> {
        match self {
            Self::Tree(v) => Some(v),
            _ => None,
        }
    }
    fn of_value(v: &Value) -> FieldValue<'_> {
        match v {
            Value::Null => FieldValue::Null,
            Value::Bool(b) => FieldValue::Bool(*b),
            Value::Number(n) => match (n.as_u64(), n.as_i64(), n.as_f64()) {
                (Some(u), _, _) => FieldValue::U64(u),
                (None, Some(i), _) => FieldValue::I64(i),
                (_, _, f) => FieldValue::F64(f.unwrap_or(0.0)),
            },
            Value::String(s) => FieldValue::Str(Cow::Borrowed(s)),
            _ => FieldValue::Tree(Cow::Borrowed(v)),
        }
    }
}

/// A key, borrowed from the line when it has no escapes.
struct Key<'a>(Cow<'a, str>);

impl<'de> de::Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Self::Value, E> {
                Ok(Key(Cow::Borrowed(s)))
            }
            fn visit_str<E>(self, s: &str) -> Result<Self::Value, E> {
                Ok(Key(Cow::Owned(s.to_string())))
            }
            fn visit_string<E>(self, s: String) -> Result<Self::Value, E> {
                Ok(Key(Cow::Owned(s)))
            }
        }
        d.deserialize_str(V)
    }
}

impl<'de> de::Deserialize<'de> for FieldValue<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = FieldValue<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON value")
            }
            fn visit_unit<E>(self) -> Result<Self::Value, E> {
                Ok(FieldValue::Null)
            }
            fn visit_bool<E>(self, b: bool) -> Result<Self::Value, E> {
                Ok(FieldValue::Bool(b))
            }
            fn visit_u64<E>(self, u: u64) -> Result<Self::Value, E> {
                Ok(FieldValue::U64(u))
            }
            fn visit_i64<E>(self, i: i64) -> Result<Self::Value, E> {
                // As `serde_json::Number::from(i64)`: non-negative is a u64.
                Ok(u64::try_from(i).map_or(FieldValue::I64(i), FieldValue::U64))
            }
            fn visit_f64<E>(self, f: f64) -> Result<Self::Value, E> {
                // As `serde_json::Value`: a non-finite float is null.
                Ok(if f.is_finite() { FieldValue::F64(f) } else { FieldValue::Null })
            }
            fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Self::Value, E> {
                Ok(FieldValue::Str(Cow::Borrowed(s)))
            }
            fn visit_str<E>(self, s: &str) -> Result<Self::Value, E> {
                Ok(FieldValue::Str(Cow::Owned(s.to_string())))
            }
            fn visit_string<E>(self, s: String) -> Result<Self::Value, E> {
                Ok(FieldValue::Str(Cow::Owned(s)))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> Result<Self::Value, A::Error> {
                let mut v = Vec::new();
                while let Some(x) = a.next_element::<Value>()? {
                    v.push(x);
                }
                Ok(FieldValue::Tree(Cow::Owned(Value::Array(v))))
            }
            fn visit_map<A: MapAccess<'de>>(self, a: A) -> Result<Self::Value, A::Error> {
                let v = <Value as de::Deserialize>::deserialize(MapAccessDeserializer::new(a))?;
                Ok(FieldValue::Tree(Cow::Owned(v)))
            }
        }
        d.deserialize_any(V)
    }
}

/// `a.cmp(b)` for the short strings keys are, without a call to `memcmp` per comparison
/// (keys mostly differ in their first byte).
#[inline]
fn key_cmp(a: &str, b: &str) -> std::cmp::Ordering {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    for (x, y) in a.iter().zip(b) {
        if x != y {
            return x.cmp(y);
        }
    }
    a.len().cmp(&b.len())
}

/// A record's fields, sorted by name, each name once (a repeated key keeps its last value, as
/// `serde_json::Value` does). `None` from [`Fields::parse`] when the line is not an object.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Fields<'a>(Vec<(Cow<'a, str>, FieldValue<'a>)>);

impl<'a> Fields<'a> {
    /// Reads a line. Errors are `serde_json`'s; `Ok(None)`: valid JSON, but not an object.
    pub fn parse(line: &'a str) -> Result<Option<Self>, serde_json::Error> {
        Ok(serde_json::from_str::<MaybeFields<'a>>(line)?.0)
    }

    /// The fields of a record already read as a tree (`None` if it is not an object).
    pub fn of_value(v: &'a Value) -> Option<Self> {
        let m = v.as_object()?;
        // A `serde_json::Map` is sorted and has each key once.
        Some(Fields(m.iter().map(|(k, v)| (Cow::Borrowed(k.as_str()), FieldValue::of_value(v))).collect()))
    }

    fn from_unsorted(mut f: Vec<(Cow<'a, str>, FieldValue<'a>)>) -> Self {
        f.sort_by(|a, b| key_cmp(&a.0, &b.0));
        // Stable sort: of equal keys the last one read is last; keep its value.
        f.dedup_by(|later, kept| {
            if later.0 == kept.0 {
                std::mem::swap(later, kept);
                true
            } else {
                false
            }
        });
        Fields(f)
    }

    fn index(&self, k: &str) -> Option<usize> {
        self.0.binary_search_by(|(n, _)| key_cmp(n, k)).ok()
    }

    /// A field by name.
    pub fn get(&self, k: &str) -> Option<&FieldValue<'a>> {
        self.index(k).map(|i| &self.0[i].1)
    }

    /// A string field by name.
    pub fn str(&self, k: &str) -> Option<&str> {
        self.get(k)?.as_str()
    }

    /// What [`Context::learn`] would note from this record: a `task_start`'s task and node.
    pub fn teaches(&self) -> Option<(&str, &str)> {
        if self.str("kind") == Some("task_start")
            && let (Some(task), Some(node)) = (self.str("task"), self.str("node"))
            && !node.is_empty()
        {
            return Some((task, node));
        }
        None
    }
}

impl FieldValue<'_> {
    /// As `serde_json::Value::as_u64`.
    fn as_u64(&self) -> Option<u64> {
        match *self {
            Self::U64(u) => Some(u),
            _ => None,
        }
    }

    /// As `serde_json::Value` of the same JSON.
    fn to_value(&self) -> Value {
        match self {
            Self::Null => Value::Null,
            Self::Bool(b) => Value::Bool(*b),
            Self::U64(u) => Value::from(*u),
            Self::I64(i) => Value::from(*i),
            Self::F64(f) => Value::from(*f),
            Self::Str(s) => Value::from(s.as_ref()),
            Self::Tree(v) => v.as_ref().clone(),
        }
    }
}

/// Rules read a record's fields as they read its JSON tree (the `serde_json::Value` view, field
/// for field), so OCSF replay parses each line once for both.
impl crate::rules::view::RecordView for Fields<'_> {
    fn str_field(&self, name: &str) -> Option<&str> {
        match name {
            "intent" => self.get("intent")?.tree()?.get("text")?.as_str(),
            "intent_sha256" => self.get("intent")?.tree()?.get("sha256")?.as_str(),
            _ => self.get(name)?.as_str(),
        }
    }
    fn int_field(&self, name: &str) -> Option<i64> {
        self.get(name)?.as_i64()
    }
    fn u64_field(&self, name: &str) -> Option<u64> {
        self.get(name)?.as_u64()
    }
    fn ancestry(&self) -> Vec<i64> {
        self.get("ancestry")
            .and_then(FieldValue::tree)
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_i64).collect())
            .unwrap_or_default()
    }
    fn json(&self) -> Value {
        Value::Object(self.0.iter().map(|(k, v)| (k.to_string(), v.to_value())).collect())
    }
}

/// A line's top-level value: fields if it is an object.
struct MaybeFields<'a>(Option<Fields<'a>>);

impl<'de> de::Deserialize<'de> for MaybeFields<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = MaybeFields<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON value")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<Self::Value, A::Error> {
                let mut f = Vec::with_capacity(24);
                while let Some(Key(k)) = a.next_key::<Key<'de>>()? {
                    f.push((k, a.next_value::<FieldValue<'de>>()?));
                }
                Ok(MaybeFields(Some(Fields::from_unsorted(f))))
            }
            fn visit_unit<E>(self) -> Result<Self::Value, E> {
                Ok(MaybeFields(None))
            }
            fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
                Ok(MaybeFields(None))
            }
            fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
                Ok(MaybeFields(None))
            }
            fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
                Ok(MaybeFields(None))
            }
            fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
                Ok(MaybeFields(None))
            }
            fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
                Ok(MaybeFields(None))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> Result<Self::Value, A::Error> {
                while a.next_element::<de::IgnoredAny>()?.is_some() {}
                Ok(MaybeFields(None))
            }
        }
        d.deserialize_any(V)
    }
}

// ---------------------------------------------------------------------------------------------
// The event side: borrowed pieces, serialized as serde_json serializes a `Value`.

/// A JSON value of an event, borrowing from the record and the context.
#[derive(Debug, Clone)]
enum J<'r> {
    Null,
    Bool(bool),
    I(i64),
    U(u64),
    F(f64),
    S(Cow<'r, str>),
    O(Obj<'r>),
    A(Vec<J<'r>>),
    V(&'r Value),
    /// An event's `unmapped` object: the record's own field names, which (unlike the mapping's
    /// names) may need escaping.
    Unmapped(Obj<'r>),
    /// JSON written as is: a constant object of the mapping ([`product`]).
    Raw(&'static str),
    /// The string `"{0}: {1}"` of two of the mapping's constants (`type_name`).
    Caption(&'static str, &'static str),
    /// An integer as a JSON string (`user.uid`).
    IntStr(i64),
    /// The string `"{0}/{1}"`: an event uid ([`event_uid`]).
    Uid(&'r str, u64),
}

/// A JSON object of an event. Inserting a key that is there replaces its value, as a map
/// does: the last value inserted is the one read and written. It is written in key order
/// ([`Obj::for_each_sorted`]), as a `serde_json::Map` (sorted by key) would be.
#[derive(Debug, Clone, Default)]
struct Obj<'r>(Vec<(&'r str, J<'r>)>);

impl<'r> Obj<'r> {
    fn with(entries: Vec<(&'r str, J<'r>)>) -> Self {
        Obj(entries)
    }
    fn insert(&mut self, k: &'r str, v: impl Into<J<'r>>) {
        // Replaced values are skipped when the object is written.
        self.0.push((k, v.into()));
    }
    fn get(&self, k: &str) -> Option<&J<'r>> {
        self.0.iter().rev().find(|e| e.0 == k).map(|e| &e.1)
    }
    /// Visits the entries in key order, each key once with the value inserted last: the order
    /// and values of a `serde_json::Map` built by inserting them one by one.
    ///
    /// Objects are built in key order as far as they can be (every small one, and an event's
    /// common part, [`base`]): the strictly increasing prefix is taken as it is (no key in it
    /// was inserted twice), and the entries after it (an event's class-specific ones, a few)
    /// are merged into it by index, nothing moved.
    fn for_each_sorted(&self, mut f: impl FnMut(&'r str, &J<'r>)) {
        let e = &self.0;
        let head = e.windows(2).position(|w| !key_cmp(w[0].0, w[1].0).is_lt()).map_or(e.len(), |i| i + 1);
        if head == e.len() {
            e.iter().for_each(|(k, v)| f(k, v));
            return;
        }
        let mut small = [0usize; 32];
        let mut large = Vec::new();
        let rest: &mut [usize] = if e.len() - head <= small.len() {
            &mut small[..e.len() - head]
        } else {
            large.resize(e.len() - head, 0);
            &mut large
        };
        for (slot, i) in rest.iter_mut().zip(head..) {
            *slot = i;
        }
        // Stable: of equal keys, the one inserted last stays last.
        rest.sort_by(|&a, &b| key_cmp(e[a].0, e[b].0));
        let (mut i, mut j) = (0, 0);
        while i < head || j < rest.len() {
            // A key inserted again later in the rest: only its last value counts.
            if j + 1 < rest.len() && e[rest[j]].0 == e[rest[j + 1]].0 {
                j += 1;
                continue;
            }
            let take_head = match (i < head, j < rest.len()) {
                (true, true) => match key_cmp(e[i].0, e[rest[j]].0) {
                    std::cmp::Ordering::Less => true,
                    std::cmp::Ordering::Greater => false,
                    // Inserted again after the prefix: the later value replaces this one.
                    std::cmp::Ordering::Equal => {
                        i += 1;
                        continue;
                    }
                },
                (head_left, _) => head_left,
            };
            let (k, v) = if take_head {
                i += 1;
                &e[i - 1]
            } else {
                j += 1;
                &e[rest[j - 1]]
            };
            f(k, v);
        }
    }
}

impl<'r> From<&'r str> for J<'r> {
    fn from(s: &'r str) -> Self {
        J::S(Cow::Borrowed(s))
    }
}
impl From<String> for J<'_> {
    fn from(s: String) -> Self {
        J::S(Cow::Owned(s))
    }
}
impl From<i64> for J<'_> {
    fn from(n: i64) -> Self {
        J::I(n)
    }
}
impl From<u32> for J<'_> {
    fn from(n: u32) -> Self {
        J::U(u64::from(n))
    }
}
impl From<usize> for J<'_> {
    fn from(n: usize) -> Self {
        J::U(n as u64)
    }
}
impl From<bool> for J<'_> {
    fn from(b: bool) -> Self {
        J::Bool(b)
    }
}
impl<'r> From<Obj<'r>> for J<'r> {
    fn from(o: Obj<'r>) -> Self {
        J::O(o)
    }
}
impl<'r> From<Vec<J<'r>>> for J<'r> {
    fn from(a: Vec<J<'r>>) -> Self {
        J::A(a)
    }
}
impl<'r> From<&'r FieldValue<'_>> for J<'r> {
    fn from(f: &'r FieldValue<'_>) -> Self {
        match f {
            FieldValue::Null => J::Null,
            FieldValue::Bool(b) => J::Bool(*b),
            FieldValue::U64(u) => J::U(*u),
            FieldValue::I64(i) => J::I(*i),
            FieldValue::F64(x) => J::F(*x),
            FieldValue::Str(s) => J::S(Cow::Borrowed(s)),
            FieldValue::Tree(v) => J::V(v),
        }
    }
}

/// `{k: v}`.
fn one<'r>(k: &'r str, v: impl Into<J<'r>>) -> J<'r> {
    J::O(Obj(vec![(k, v.into())]))
}

impl Serialize for J<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            J::Null => s.serialize_unit(),
            J::Bool(b) => s.serialize_bool(*b),
            J::I(n) => s.serialize_i64(*n),
            J::U(n) => s.serialize_u64(*n),
            J::F(x) => s.serialize_f64(*x),
            J::S(t) => s.serialize_str(t),
            J::O(o) => o.serialize(s),
            J::A(a) => {
                let mut seq = s.serialize_seq(Some(a.len()))?;
                for x in a {
                    seq.serialize_element(x)?;
                }
                seq.end()
            }
            J::V(v) => v.serialize(s),
            J::Unmapped(o) => o.serialize(s),
            J::Raw(json) => serde_json::from_str::<Value>(json).map_err(S::Error::custom)?.serialize(s),
            J::Caption(a, b) => s.serialize_str(&format!("{a}: {b}")),
            J::IntStr(n) => s.serialize_str(&n.to_string()),
            J::Uid(task, seq) => s.serialize_str(&event_uid(task, *seq)),
        }
    }
}

impl Serialize for Obj<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(None)?;
        let mut r = Ok(());
        self.for_each_sorted(|k, v| {
            if r.is_ok() {
                r = m.serialize_entry(k, v);
            }
        });
        r?;
        m.end()
    }
}

/// Bytes `serde_json` escapes in a string (the reference for [`has_escape`]'s test).
#[cfg(test)]
fn needs_escape(b: u8) -> bool {
    b < 0x20 || b == b'"' || b == b'\\'
}

/// Whether `s` holds a byte `serde_json` escapes ([`needs_escape`]): the bytes that end or
/// break a plain string for the replay reader too (`rules::view::special`, 16 bytes at a time).
#[inline]
fn has_escape(s: &[u8]) -> bool {
    crate::rules::view::special(s).is_some()
}

/// A JSON string as `serde_json` writes it: as is between quotes when nothing needs escaping
/// (nearly always), else by `serde_json` itself.
fn write_str(out: &mut Vec<u8>, s: &str) {
    if has_escape(s.as_bytes()) {
        serde_json::to_writer(&mut *out, s).expect("writing to memory");
    } else {
        write_plain(out, s);
    }
}

/// A string known to need no escaping (the mapping's own names and constants) between quotes.
#[inline]
fn write_plain(out: &mut Vec<u8>, s: &str) {
    debug_assert!(!has_escape(s.as_bytes()), "{s:?} needs escaping");
    out.push(b'"');
    out.extend_from_slice(s.as_bytes());
    out.push(b'"');
}

fn write_u64(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

impl J<'_> {
    /// Appends the value as `serde_json::to_writer` writes the equivalent `Value`.
    fn write(&self, out: &mut Vec<u8>) {
        match self {
            J::Null => out.extend_from_slice(b"null"),
            J::Bool(true) => out.extend_from_slice(b"true"),
            J::Bool(false) => out.extend_from_slice(b"false"),
            J::I(n) => {
                if *n < 0 {
                    out.push(b'-');
                }
                write_u64(out, n.unsigned_abs());
            }
            J::U(n) => write_u64(out, *n),
            J::F(x) => serde_json::to_writer(&mut *out, x).expect("writing to memory"),
            J::S(t) => write_str(out, t),
            J::O(o) => o.write(out),
            J::A(a) => {
                out.push(b'[');
                for (i, x) in a.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    x.write(out);
                }
                out.push(b']');
            }
            J::V(v) => serde_json::to_writer(&mut *out, v).expect("writing to memory"),
            J::Unmapped(o) => o.write_with(out, write_str),
            J::Raw(json) => out.extend_from_slice(json.as_bytes()),
            J::Caption(a, b) => {
                debug_assert!(!has_escape(a.as_bytes()) && !has_escape(b.as_bytes()));
                out.push(b'"');
                out.extend_from_slice(a.as_bytes());
                out.extend_from_slice(b": ");
                out.extend_from_slice(b.as_bytes());
                out.push(b'"');
            }
            J::IntStr(n) => {
                out.push(b'"');
                J::I(*n).write(out);
                out.push(b'"');
            }
            J::Uid(task, seq) => {
                if has_escape(task.as_bytes()) {
                    write_str(out, &event_uid(task, *seq));
                } else {
                    out.push(b'"');
                    out.extend_from_slice(task.as_bytes());
                    out.push(b'/');
                    write_u64(out, *seq);
                    out.push(b'"');
                }
            }
        }
    }
}

impl Obj<'_> {
    /// Writes the object; its keys are the mapping's own names, which need no escaping.
    fn write(&self, out: &mut Vec<u8>) {
        self.write_with(out, write_plain);
    }

    fn write_with(&self, out: &mut Vec<u8>, key: fn(&mut Vec<u8>, &str)) {
        out.push(b'{');
        let mut first = true;
        self.for_each_sorted(|k, v| {
            if !first {
                out.push(b',');
            }
            first = false;
            key(out, k);
            out.push(b':');
            v.write(out);
        });
        out.push(b'}');
    }
}

/// One OCSF event, ready to be serialized (keys sorted).
#[derive(Debug, Clone)]
pub struct Event<'r>(Obj<'r>);

impl Serialize for Event<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

// ---------------------------------------------------------------------------------------------
// The mapping.

/// The record, with the fields the mapping consumed marked (the rest goes to `unmapped`).
struct Rec<'r> {
    v: &'r Fields<'r>,
    used: Vec<bool>,
}

impl<'r> Rec<'r> {
    fn new(v: &'r Fields<'r>) -> Self {
        Rec { v, used: vec![false; v.0.len()] }
    }
    fn field(&mut self, k: &str) -> Option<&'r FieldValue<'r>> {
        let i = self.v.index(k)?;
        self.used[i] = true;
        Some(&self.v.0[i].1)
    }
    fn mark(&mut self, k: &str, used: bool) {
        if let Some(i) = self.v.index(k) {
            self.used[i] = used;
        }
    }
    fn str(&mut self, k: &str) -> Option<&'r str> {
        let i = self.v.index(k)?;
        let s = self.v.0[i].1.as_str()?;
        self.used[i] = true;
        Some(s)
    }
    fn int(&mut self, k: &str) -> Option<i64> {
        let i = self.v.index(k)?;
        let n = self.v.0[i].1.as_i64()?;
        self.used[i] = true;
        Some(n)
    }
    fn peek_str(&self, k: &str) -> Option<&'r str> {
        self.v.get(k)?.as_str()
    }
    fn peek_int(&self, k: &str) -> Option<i64> {
        self.v.get(k)?.as_i64()
    }
    fn peek(&self, k: &str) -> Option<&'r FieldValue<'r>> {
        self.v.get(k)
    }
    fn unmapped(&self) -> Obj<'r> {
        Obj(self
            .v
            .0
            .iter()
            .zip(&self.used)
            .filter(|(_, used)| !**used)
            .map(|((k, v), _)| (k.as_ref(), J::from(v)))
            .collect())
    }
}

/// RFC 3339 → milliseconds since the epoch (OCSF `timestamp_t`); 0 if absent or invalid.
pub fn epoch_ms(rfc3339: &str) -> i64 {
    fast_epoch_ms(rfc3339).unwrap_or_else(|| {
        time::OffsetDateTime::parse(rfc3339, &time::format_description::well_known::Rfc3339)
            .map_or(0, |t| (t.unix_timestamp_nanos() / 1_000_000) as i64)
    })
}

/// The form every record's `time` has, `YYYY-MM-DDTHH:MM:SS[.f...]Z` (UTC), read without the
/// general parser; `None` for anything else (offsets, leap seconds, lower-case separators:
/// the general parser decides those).
fn fast_epoch_ms(t: &str) -> Option<i64> {
    let b = t.as_bytes();
    if b.len() < 20
        || b.len() > 30
        || b[4] != b'-'
        || b[7] != b'-'
        || b[10] != b'T'
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        b[r].iter().try_fold(0i64, |n, c| c.is_ascii_digit().then(|| n * 10 + i64::from(c - b'0')))
    };
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, s) = (num(11..13)?, num(14..16)?, num(17..19)?);
    let rest = &b[19..];
    let frac = match rest {
        [b'Z'] => &[][..],
        [b'.', digits @ .., b'Z']
            if (1..=9).contains(&digits.len()) && digits.iter().all(u8::is_ascii_digit) =>
        {
            digits
        }
        _ => return None,
    };
    // Before 1970 the general parser truncates towards zero; leave those to it.
    if y < 1970 {
        return None;
    }
    let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let days_in = [31, if leap { 29 } else { 28 }, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];
    if !(1..=12).contains(&mo) || d < 1 || d > days_in[(mo - 1) as usize] || h > 23 || mi > 59 || s > 59 {
        return None;
    }
    // Days from the civil date (Howard Hinnant's algorithm).
    let (yy, m) = if mo <= 2 { (y - 1, mo + 9) } else { (y, mo - 3) };
    let era = yy.div_euclid(400);
    let yoe = yy - era * 400;
    let doy = (153 * m + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let ms = frac.iter().take(3).fold(0i64, |n, c| n * 10 + i64::from(c - b'0'))
        * 10i64.pow(3 - frac.len().min(3) as u32);
    Some(((days * 24 + h) * 60 + mi) * 60_000 + s * 1000 + ms)
}

fn basename(path: &str) -> &str {
    path.rsplit('/').find(|s| !s.is_empty()).unwrap_or(path)
}

/// An OCSF `file` object (`name` and `type_id` are required).
fn file_obj<'r>(path: Option<&'r str>, type_id: i64, dev_ino: Option<(i64, i64)>) -> J<'r> {
    // Inserted in key order (see `Obj::for_each_sorted`).
    let mut f = Obj(Vec::with_capacity(5));
    f.insert("name", path.map_or("unknown", basename));
    if let Some(p) = path {
        f.insert("path", p);
    }
    f.insert("type", file_type_name(type_id));
    f.insert("type_id", type_id);
    if let Some((dev, ino)) = dev_ino {
        // The file system's own identity: st_dev and inode.
        f.insert("uid", format!("{dev}:{ino}"));
    }
    J::O(f)
}

fn file_type_name(id: i64) -> &'static str {
    match id {
        1 => "Regular File",
        2 => "Folder",
        7 => "Symbolic Link",
        8 => "Executable File",
        _ => "Unknown",
    }
}

/// `file.type_id` 0: the record does not say (a `mknod` may create a device or a pipe).
const UNKNOWN_FILE: i64 = 0;
const REGULAR_FILE: i64 = 1;
const FOLDER: i64 = 2;
const SYMBOLIC_LINK: i64 = 7;

/// `file.type_id` 8: a file that was executed or mapped executable.
const EXECUTABLE_FILE: i64 = 8;

/// The process a record is about: pid, comm, executable, parent, user, sandbox (task).
fn process_obj<'r>(r: &mut Rec<'r>) -> Obj<'r> {
    let pid = r.int("pid");
    let comm = r.str("comm");
    let exe = r.str("exe");
    let ppid = r.int("ppid");
    let uid = r.int("uid");
    // Inserted in key order (see `Obj::for_each_sorted`).
    let mut p = Obj(Vec::with_capacity(8));
    if let Some(a) = r.peek("ancestry").and_then(FieldValue::tree).and_then(Value::as_array) {
        r.mark("ancestry", true);
        let chain: Vec<J<'r>> = a.iter().filter_map(Value::as_i64).map(|pid| one("pid", pid)).collect();
        p.insert("ancestry", chain);
    }
    if let Some(exe) = exe {
        p.insert("file", file_obj(Some(exe), EXECUTABLE_FILE, None));
    }
    if let Some(name) = comm.or(exe.map(basename)) {
        p.insert("name", name);
    }
    if let Some(ppid) = ppid {
        p.insert("parent_process", one("pid", ppid));
    }
    if let Some(pid) = pid {
        p.insert("pid", pid);
    }
    if let Some(task) = r.peek_str("task") {
        p.insert("sandbox", task);
    }
    if let Some(uid) = uid {
        p.insert("user", one("uid", J::IntStr(uid)));
    }
    p
}

/// What the control decided, in OCSF terms.
struct Control {
    action_id: i64,
    action: &'static str,
    disposition_id: i64,
    disposition: &'static str,
    status_id: i64,
    status: &'static str,
    severity_id: i64,
    detail: Option<String>,
}

fn control(r: &mut Rec<'_>) -> Option<Control> {
    // The BPF LSM engine refuses files with EACCES (as Landlock does), everything else with EPERM.
    let errno =
        if matches!(r.peek_str("kind"), Some("open" | "file" | "unix_connect")) { "EACCES" } else { "EPERM" };
    let decision = r.str("decision")?;
    let rule = r.str("rule");
    let how = r.str("action");
    let c = match decision {
        "allow" => Control {
            action_id: 1,
            action: "Allowed",
            disposition_id: 1,
            disposition: "Allowed",
            status_id: 1,
            status: "Success",
            severity_id: 1,
            detail: None,
        },
        "deny" => Control {
            action_id: 2,
            action: "Denied",
            disposition_id: 2,
            disposition: "Blocked",
            status_id: 2,
            status: "Failure",
            severity_id: 2,
            detail: Some(match how {
                Some("kill") => format!(
                    "killed (SIGKILL) before its first instruction: not allowed by the task scope's {}",
                    rule.unwrap_or("rules")
                ),
                _ => {
                    format!("refused ({errno}): not allowed by the task scope's {}", rule.unwrap_or("rules"))
                }
            }),
        },
        "audit" => Control {
            action_id: 3,
            action: "Observed",
            disposition_id: 15,
            disposition: "Detected",
            status_id: 1,
            status: "Success",
            severity_id: 3,
            detail: Some(format!(
                "audit mode: the task scope's {} would have refused this",
                rule.unwrap_or("rules")
            )),
        },
        _ => return None,
    };
    Some(c)
}

fn severity_name(id: i64) -> &'static str {
    match id {
        1 => "Informational",
        2 => "Low",
        3 => "Medium",
        4 => "High",
        5 => "Critical",
        _ => "Unknown",
    }
}

/// `log_version`: the record's schema version as a string (small ones without formatting).
fn version_str(v: i64) -> Cow<'static, str> {
    match v {
        0 => Cow::Borrowed("0"),
        1 => Cow::Borrowed("1"),
        2 => Cow::Borrowed("2"),
        3 => Cow::Borrowed("3"),
        n => Cow::Owned(n.to_string()),
    }
}

/// An event of `class` with everything every class carries: classification, time, metadata,
/// device, and the control's decision.
fn base<'r>(
    r: &mut Rec<'r>,
    class: Class,
    activity_id: i64,
    activity_name: &'r str,
    type_caption: &'static str,
    ctx: &'r Context,
) -> Obj<'r> {
    let time = r.str("time").unwrap_or("");
    let task = r.str("task").unwrap_or("");
    let seq = r.int("seq");
    let kind = r.str("kind").unwrap_or("");
    // A task_start names its own node, learnt or not; `node` is consumed only when it is the
    // host name given (an `--host` override keeps it in `unmapped`).
    let own = if kind == "task_start" { r.peek_str("node").filter(|n| !n.is_empty()) } else { None };
    let hostname = ctx.hostname.as_deref().or(own).or_else(|| ctx.hostname_of(task));
    if own.is_some() && own == hostname {
        r.mark("node", true);
    }
    r.mark("v", true);
    let mut profiles: Vec<J<'r>> = vec!["host".into()];
    let c = control(r);
    if c.is_some() {
        profiles.push("security_control".into());
    }
    let container = container_obj(r);
    if container.is_some() {
        profiles.push("container".into());
    }
    // A record of a process inside a call: the call, as a tool invocation of the agent's
    // task, in the `ai_operation` profile's `message_context` (the classes OCSF 1.8.0 gives
    // that profile: here, Process Activity). Elsewhere `call` and `call_name` stay unmapped.
    let call = if class.uid == PROCESS_ACTIVITY
        && let Some(call) = r.str("call")
    {
        profiles.push("ai_operation".into());
        Some(message_context(call, r.str("call_name"), task))
    } else {
        None
    };
    // Inserted in key order (see `Obj::for_each_sorted`).
    let mut md = Obj(Vec::with_capacity(11));
    md.insert("correlation_uid", task);
    md.insert("event_code", kind);
    md.insert("log_name", "warden-audit");
    md.insert("log_version", J::S(version_str(r.peek_int("v").unwrap_or(0))));
    md.insert("original_time", time);
    md.insert("product", product());
    md.insert("profiles", profiles);
    if let Some(seq) = seq {
        md.insert("sequence", seq);
        md.insert("uid", J::Uid(task, seq as u64));
    }
    md.insert("version", OCSF_VERSION);
    // Inserted in key order (see `Obj::for_each_sorted`).
    let mut e = Obj(Vec::with_capacity(32));
    if let Some(c) = &c {
        e.insert("action", c.action);
        e.insert("action_id", c.action_id);
    }
    e.insert("activity_id", activity_id);
    e.insert("activity_name", activity_name);
    e.insert("category_name", class.category_name);
    e.insert("category_uid", class.category_uid);
    e.insert("class_name", class.name);
    e.insert("class_uid", class.uid);
    if let Some(ct) = container {
        e.insert("container", ct);
    }
    e.insert("device", device(hostname));
    if let Some(c) = &c {
        e.insert("disposition", c.disposition);
        e.insert("disposition_id", c.disposition_id);
        e.insert("is_alert", c.action_id != 1);
    }
    if let Some(m) = call {
        e.insert("message_context", m);
    }
    e.insert("metadata", md);
    match c {
        Some(c) => {
            if let Some(rule) = r.peek_str("rule") {
                e.insert(
                    "policy",
                    Obj::with(vec![
                        ("is_applied", (c.action_id == 2).into()),
                        ("name", rule.into()),
                        ("type", "Warden task scope".into()),
                    ]),
                );
            }
            e.insert("severity", severity_name(c.severity_id));
            e.insert("severity_id", c.severity_id);
            e.insert("status", c.status);
            if let Some(d) = c.detail {
                e.insert("status_detail", d);
            }
            e.insert("status_id", c.status_id);
        }
        None => {
            e.insert("severity", "Informational");
            e.insert("severity_id", 1i64);
        }
    }
    e.insert("time", epoch_ms(time));
    e.insert("timezone_offset", 0i64);
    e.insert("type_name", J::Caption(class.name, type_caption));
    e.insert("type_uid", i64::from(class.uid) * 100 + activity_id);
    e
}

/// The `container` object (container profile) of a pod's task: `uid` the runtime's
/// container id, `name` the container's name in the pod, `pod_uuid` the pod's UID,
/// `orchestrator` Kubernetes, `runtime`, and the pod's namespace and name as the kubelet's
/// container labels (`io.kubernetes.pod.namespace=...`, `io.kubernetes.pod.name=...`).
fn container_obj<'r>(r: &mut Rec<'r>) -> Option<Obj<'r>> {
    let pod = r.peek("pod")?.tree()?.as_object()?;
    r.mark("pod", true);
    let s = |k: &str| pod.get(k).and_then(Value::as_str).filter(|v| !v.is_empty());
    let mut c = Obj::default();
    if let Some(v) = s("container_id") {
        c.insert("uid", v);
    }
    if let Some(v) = s("container") {
        c.insert("name", v);
    }
    if let Some(v) = s("uid") {
        c.insert("pod_uuid", v);
    }
    c.insert("orchestrator", "Kubernetes");
    if let Some(v) = s("runtime") {
        c.insert("runtime", v);
    }
    let labels: Vec<J<'r>> =
        [("io.kubernetes.pod.namespace", s("namespace")), ("io.kubernetes.pod.name", s("name"))]
            .into_iter()
            .filter_map(|(k, v)| v.map(|v| J::from(format!("{k}={v}"))))
            .collect();
    if !labels.is_empty() {
        c.insert("labels", labels);
    }
    Some(c)
}

/// `message_context` (OCSF 1.8.0, `ai_operation` profile) of a record made inside a call: the
/// call (`uid`, `name`) as a tool invocation (`ai_role_id` 3 Tool) of the agent that the task
/// runs (`application.uid` = the task).
fn message_context<'r>(call: &'r str, name: Option<&'r str>, task: &'r str) -> Obj<'r> {
    // Inserted in key order (see `Obj::for_each_sorted`).
    let mut m = Obj(Vec::with_capacity(5));
    m.insert("ai_role", "Tool");
    m.insert("ai_role_id", 3i64);
    m.insert("application", one("uid", task));
    if let Some(n) = name {
        m.insert("name", n);
    }
    m.insert("uid", call);
    m
}

/// The OCSF event uid of a record: task and sequence number, unique per log.
pub fn event_uid(task: &str, seq: u64) -> String {
    format!("{task}/{seq}")
}

/// `metadata.product`, written as is.
fn product<'r>() -> J<'r> {
    J::Raw(concat!(
        r#"{"name":"Warden","vendor_name":"Warden","version":""#,
        env!("CARGO_PKG_VERSION"),
        r#""}"#
    ))
}

fn device(hostname: Option<&str>) -> Obj<'_> {
    // Inserted in key order (see `Obj::for_each_sorted`).
    let mut d = Obj(Vec::with_capacity(3));
    if let Some(h) = hostname {
        d.insert("hostname", h);
    }
    d.insert("type", "Unknown");
    d.insert("type_id", 0i64);
    d
}

fn finish<'r>(mut e: Obj<'r>, r: &Rec<'r>, message: String) -> Event<'r> {
    e.insert("message", message);
    let rest = r.unmapped();
    if !rest.0.is_empty() {
        e.insert("unmapped", J::Unmapped(rest));
    }
    Event(e)
}

/// A verb for messages: "exec /usr/bin/id (refused)".
fn outcome(r: &Rec<'_>) -> &'static str {
    match (r.peek_str("decision"), r.peek_str("action")) {
        (Some("deny"), Some("kill")) => " (killed)",
        (Some("deny"), _) => " (refused)",
        (Some("audit"), _) => " (audit: would have been refused)",
        _ => "",
    }
}

/// `x.to_string()` of an integer field of an event, as `serde_json::Value::to_string` writes it
/// (`?` when absent).
fn num_text(v: Option<&J<'_>>) -> String {
    match v {
        Some(J::I(n)) => n.to_string(),
        Some(J::U(n)) => n.to_string(),
        Some(other) => serde_json::to_string(other).unwrap_or_default(),
        None => "?".into(),
    }
}

/// Maps one audit record to an OCSF event. `None` for records with no OCSF counterpart
/// (`checkpoint`: signed chain heads, checked by `warden verify`) and for non-objects.
pub fn record(rec: &Value, ctx: &Context) -> Option<Value> {
    let fields = Fields::of_value(rec)?;
    let e = event(&fields, ctx)?;
    Some(serde_json::to_value(&e).expect("an event serializes"))
}

/// Appends the OCSF event of a record, and a newline, to `out`; `false` when the record has
/// none (see [`record`]). The bytes are those of `serde_json::to_writer(record(..))`.
pub fn write_line(fields: &Fields<'_>, ctx: &Context, out: &mut Vec<u8>) -> bool {
    let Some(e) = event(fields, ctx) else {
        return false;
    };
    e.0.write(out);
    out.push(b'\n');
    true
}

/// Maps one record's fields to an OCSF event (see [`record`]).
pub fn event<'r>(fields: &'r Fields<'r>, ctx: &'r Context) -> Option<Event<'r>> {
    let mut r = Rec::new(fields);
    let kind = r.peek_str("kind")?;
    let out = outcome(&r);
    Some(match kind {
        "exec" => {
            let mut e = base(&mut r, PROCESS, 1, "Launch", "Launch", ctx);
            e.insert("launch_type_id", 3i64);
            e.insert("launch_type", "Exec");
            let path = r.str("path");
            let id = r.int("dev").zip(r.int("ino"));
            let mut p = process_obj(&mut r);
            // The file exec was asked to run, with its identity. `exe` (the process table's
            // view) stays unmapped when it names something else (a symlink's target).
            if path.is_some() && r.peek_str("exe") != path {
                r.mark("exe", false);
            }
            p.insert("file", file_obj(path.or(r.peek_str("exe")), EXECUTABLE_FILE, id));
            if let Some(t) = r.field("path_truncated") {
                p.insert("xattributes", one("path_truncated", t));
            }
            let mut actor = Obj::default();
            for k in ["pid", "parent_process", "user", "sandbox", "ancestry"] {
                if let Some(x) = p.get(k) {
                    actor.insert(k, x.clone());
                }
            }
            e.insert("actor", one("process", actor));
            e.insert("process", p);
            finish(e, &r, format!("exec {}{out}", path.unwrap_or("?")))
        }
        "fork" => {
            let mut e = base(&mut r, PROCESS, 1, "Launch", "Launch", ctx);
            e.insert("launch_type_id", 2i64);
            e.insert("launch_type", "Fork");
            let parent = process_obj(&mut r);
            let child = r.int("child_pid");
            let mut p = Obj::default();
            if let Some(c) = child {
                p.insert("pid", c);
            }
            for k in ["name", "file", "user", "sandbox"] {
                if let Some(x) = parent.get(k) {
                    p.insert(k, x.clone());
                }
            }
            if let Some(pid) = parent.get("pid") {
                p.insert("parent_process", one("pid", pid.clone()));
            }
            let msg = format!(
                "fork: {} created {}{out}",
                num_text(parent.get("pid")),
                child.map_or("?".into(), |c| c.to_string())
            );
            e.insert("actor", one("process", parent));
            e.insert("process", p);
            finish(e, &r, msg)
        }
        "exit" | "task_end" => {
            let mut e = base(&mut r, PROCESS, 2, "Terminate", "Terminate", ctx);
            let p = process_obj(&mut r);
            let status = r.int("exit_status");
            let signal = r.int("signal");
            if let Some(s) = status {
                e.insert("exit_code", s);
            }
            let how = match (status, signal) {
                (_, Some(sig)) => format!("killed by signal {sig}"),
                (Some(s), _) => format!("exited with status {s}"),
                _ => "ended".into(),
            };
            let msg = if kind == "task_end" {
                let reason = r.str("reason").unwrap_or("ended");
                format!("task ended ({reason}): {how}")
            } else {
                format!("process {} {how}", num_text(p.get("pid")))
            };
            e.insert("actor", one("process", p.clone()));
            e.insert("process", p);
            finish(e, &r, msg)
        }
        "task_start" => {
            let mut e = base(&mut r, PROCESS, 1, "Launch", "Launch", ctx);
            e.insert("launch_type_id", 1i64);
            e.insert("launch_type", "Spawn");
            let mut p = process_obj(&mut r);
            if let Some(cmd) = r.peek("cmd").and_then(FieldValue::tree).and_then(Value::as_array) {
                r.mark("cmd", true);
                let words: Vec<&str> = cmd.iter().filter_map(Value::as_str).collect();
                p.insert("cmd_line", words.join(" "));
            }
            let ppid = p.get("parent_process").cloned();
            let mut actor = Obj::with(vec![("app_name", "Warden".into())]);
            if let Some(pp) = ppid {
                actor.insert("process", pp);
            }
            let scope = r.str("scope").unwrap_or("?");
            let mode = r.peek_str("mode").unwrap_or("enforce");
            e.insert("actor", actor);
            e.insert("process", p);
            finish(e, &r, format!("task started under scope {scope} ({mode} mode)"))
        }
        "call_start" => {
            // Warden starts the call's command in the call's own cgroup, under its own scope.
            let mut e = base(&mut r, PROCESS, 1, "Launch", "Launch", ctx);
            e.insert("launch_type_id", 1i64);
            e.insert("launch_type", "Spawn");
            let mut p = Obj::default();
            if let Some(cmd) = r.peek("cmd").and_then(FieldValue::tree).and_then(Value::as_array) {
                r.mark("cmd", true);
                let words: Vec<&str> = cmd.iter().filter_map(Value::as_str).collect();
                p.insert("cmd_line", words.join(" "));
            }
            if let Some(cwd) = r.str("cwd") {
                p.insert("working_directory", cwd);
            }
            if let Some(task) = r.peek_str("task") {
                p.insert("sandbox", task);
            }
            let msg = format!(
                "call {} ({}) started under {}",
                r.peek_str("call_name").unwrap_or("?"),
                r.peek_str("call").unwrap_or("?"),
                r.peek_str("parent").unwrap_or("?")
            );
            e.insert("actor", one("app_name", "Warden"));
            e.insert("process", p);
            finish(e, &r, msg)
        }
        "call_end" => {
            let mut e = base(&mut r, PROCESS, 2, "Terminate", "Terminate", ctx);
            let status = r.int("exit_status");
            let signal = r.int("signal");
            if let Some(s) = status {
                e.insert("exit_code", s);
            }
            if let Some(d) = r.int("duration_ms") {
                e.insert("duration", d);
            }
            let how = match (status, signal) {
                (_, Some(sig)) => format!("killed by signal {sig}"),
                (Some(s), _) => format!("exited with status {s}"),
                _ => "ended".into(),
            };
            let msg = format!(
                "call {} ({}) {how} after {} ms, {} refusal(s)",
                r.peek_str("call_name").unwrap_or("?"),
                r.peek_str("call").unwrap_or("?"),
                r.peek_int("duration_ms").map_or("?".into(), |d| d.to_string()),
                r.peek_int("denials").map_or("?".into(), |d| d.to_string()),
            );
            let mut p = Obj::default();
            if let Some(task) = r.peek_str("task") {
                p.insert("sandbox", task);
            }
            e.insert("actor", one("app_name", "Warden"));
            e.insert("process", p);
            finish(e, &r, msg)
        }
        "bind_failed" => {
            // A pod's container that could not be bound: its start refused (or, fail-open,
            // let through unbound).
            let mut e = base(&mut r, PROCESS, 1, "Launch", "Launch", ctx);
            let reason = r.str("reason").unwrap_or("");
            e.insert("status_detail", format!("container not bound to its scope: {reason}"));
            e.insert("actor", one("app_name", "Warden"));
            let verdict = if r.peek_str("decision") == Some("allow") {
                "started unbound (warden.dev/on-failure: open)"
            } else {
                "refused its start"
            };
            finish(e, &r, format!("container {verdict}: {reason}"))
        }
        "signal" | "ptrace" => {
            let (id, name, caption) =
                if kind == "ptrace" { (3, "Open", "Open") } else { (OTHER, "Signal", "Other") };
            let mut e = base(&mut r, PROCESS, id, name, caption, ctx);
            let actor = process_obj(&mut r);
            let target = r.int("target_pid");
            let mut p = Obj::default();
            if let Some(t) = target {
                p.insert("pid", t);
            }
            let what = if kind == "ptrace" {
                if let Some(mode) = r.int("arg") {
                    e.insert("requested_permissions", mode);
                }
                "ptrace access to".to_string()
            } else {
                format!("signal {} to", r.int("signal").map_or("?".into(), |s| s.to_string()))
            };
            let msg = format!("{what} process {}{out}", target.map_or("?".into(), |t| t.to_string()));
            e.insert("actor", one("process", actor));
            e.insert("process", p);
            finish(e, &r, msg)
        }
        "open" | "mmap" | "mount" | "unix_connect" => {
            let (id, name, caption, type_id) = match kind {
                "open" => (14, "Open", "Open", 0),
                // A connection to a path-named unix socket: the socket file is opened.
                "unix_connect" => (14, "Open", "Open", 5),
                "mount" => (12, "Mount", "Mount", 2),
                _ => (OTHER, "Map Executable", "Other", EXECUTABLE_FILE),
            };
            let mut e = base(&mut r, FILE, id, name, caption, ctx);
            let actor = process_obj(&mut r);
            let path = r.str("path");
            let identity = r.int("dev").zip(r.int("ino"));
            if let Some(mask) = r.int("arg") {
                // open: f_mode; mmap: prot; mount: flags.
                e.insert("access_mask", mask);
            }
            e.insert("actor", one("process", actor));
            e.insert("file", file_obj(path, type_id, identity));
            finish(e, &r, format!("{kind} {}{out}", path.unwrap_or("?")))
        }
        "file" => {
            let (id, name, caption, type_id, verb) = file_change(r.peek_int("arg"));
            let mut e = base(&mut r, FILE, id, name, caption, ctx);
            let actor = process_obj(&mut r);
            let path = r.str("path");
            let identity = r.int("dev").zip(r.int("ino"));
            // `arg` (the operation) stays in `unmapped`: several operations share an activity.
            e.insert("actor", one("process", actor));
            e.insert("file", file_obj(path, type_id, identity));
            finish(e, &r, format!("{verb} {}{out}", path.unwrap_or("?")))
        }
        "module" => {
            let mut e = base(&mut r, KEXT, 1, "Load", "Load", ctx);
            let actor = process_obj(&mut r);
            let path = r.str("path");
            let identity = r.int("dev").zip(r.int("ino"));
            e.insert("actor", one("process", actor));
            e.insert("driver", one("file", file_obj(path, 1, identity)));
            finish(e, &r, format!("kernel module load {}{out}", path.unwrap_or("(from memory)")))
        }
        "bpf" => {
            let mut e = base(&mut r, KERNEL, 4, "Invoke", "Invoke", ctx);
            let actor = process_obj(&mut r);
            let cmd = r.int("arg");
            let mut k = Obj::with(vec![
                ("name", "bpf".into()),
                ("type_id", 2i64.into()),
                ("type", "System Call".into()),
                ("system_call", "bpf".into()),
            ]);
            if let Some(c) = cmd {
                k.insert("name", format!("bpf cmd {c}"));
            }
            e.insert("actor", one("process", actor));
            e.insert("kernel", k);
            finish(e, &r, format!("bpf() command {}{out}", cmd.map_or("?".into(), |c| c.to_string())))
        }
        "connect" | "sendmsg" => network(&mut r, kind, out, ctx),
        "dns" => dns(&mut r, out, ctx),
        "gap" => {
            let mut e = base(&mut r, EVENT_LOG, OTHER, "Records Lost", "Other", ctx);
            let drops = r.int("drops").unwrap_or(0);
            let errors = r.int("decode_errors").unwrap_or(0);
            e.insert("severity_id", 3i64);
            e.insert("severity", "Medium");
            e.insert("status_id", 2i64);
            e.insert("status", "Failure");
            e.insert("status_detail", format!("{drops} record(s) dropped in the kernel, {errors} malformed"));
            e.insert("actor", one("app_name", "Warden"));
            e.insert("log_provider", "Warden");
            finish(e, &r, format!("evidence gap: {drops} record(s) lost, {errors} malformed"))
        }
        _ => return None,
    })
}

/// A `file` record's operation (`arg`, docs/events.md) → File System Activity `activity_id`,
/// `activity_name`, type caption, `file.type_id` and the verb for `message`.
fn file_change(op: Option<i64>) -> (i64, &'static str, &'static str, i64, &'static str) {
    match op {
        Some(1) => (1, "Create", "Create", UNKNOWN_FILE, "create"),
        Some(2) => (1, "Create", "Create", FOLDER, "mkdir"),
        Some(3) => (1, "Create", "Create", SYMBOLIC_LINK, "symlink"),
        // The record names the existing file, not the new name: not a Create of that file.
        Some(4) => (OTHER, "Link", "Other", UNKNOWN_FILE, "hard link to"),
        Some(5) => (5, "Rename", "Rename", UNKNOWN_FILE, "rename"),
        Some(6) => (4, "Delete", "Delete", UNKNOWN_FILE, "unlink"),
        Some(7) => (4, "Delete", "Delete", FOLDER, "rmdir"),
        Some(8) => (3, "Update", "Update", REGULAR_FILE, "truncate"),
        Some(9) => (5, "Rename", "Rename", UNKNOWN_FILE, "rename (exchange)"),
        Some(10) => (7, "Set Security", "Set Security", UNKNOWN_FILE, "chmod"),
        _ => (OTHER, "File Change", "Other", UNKNOWN_FILE, "file change"),
    }
}

/// connect/sendmsg: Network Activity Open (a connect) or Traffic (a datagram), whatever the
/// port: a query's name is in the `dns` record. A refused connect is Open with action Denied
/// and disposition Blocked (activity Refuse would say the remote side refused).
fn network<'r>(r: &mut Rec<'r>, kind: &str, out: &str, ctx: &'r Context) -> Event<'r> {
    let mut e = if kind == "sendmsg" {
        base(r, NET, 6, "Traffic", "Traffic", ctx)
    } else {
        base(r, NET, 1, "Open", "Open", ctx)
    };
    let actor = process_obj(r);
    let addr = r.str("addr");
    let port = r.int("port");
    let proto = r.str("protocol");
    let mut dst = Obj::default();
    if let Some(a) = addr {
        dst.insert("ip", a);
    }
    if let Some(p) = port {
        dst.insert("port", p);
    }
    // Inserted in key order (see `Obj::for_each_sorted`).
    let mut conn = Obj(Vec::with_capacity(6));
    conn.insert("direction", "Outbound");
    conn.insert("direction_id", 2i64);
    let num = match proto {
        Some("tcp") => Some(6),
        Some("udp") => Some(17),
        Some(n) => n.parse::<i64>().ok(),
        None => None,
    };
    if let Some(p) = proto {
        conn.insert("protocol_name", p);
    }
    if let Some(n) = num {
        conn.insert("protocol_num", n);
    }
    if let Some(a) = addr {
        let ver = if a.contains(':') { 6i64 } else { 4 };
        conn.insert(
            "protocol_ver",
            if ver == 6 {
                "Internet Protocol version 6 (IPv6)"
            } else {
                "Internet Protocol version 4 (IPv4)"
            },
        );
        conn.insert("protocol_ver_id", ver);
    }
    e.insert("actor", one("process", actor));
    e.insert("dst_endpoint", dst);
    e.insert("connection_info", conn);
    let what = kind;
    let host = match addr {
        Some(a) if a.contains(':') => format!("[{a}]"),
        a => a.unwrap_or("?").to_string(),
    };
    let msg = format!(
        "{what} to {host}:{} {}{out}",
        port.map_or("?".into(), |p| p.to_string()),
        proto.unwrap_or("?")
    );
    finish(e, r, msg)
}

/// dns: DNS Activity Traffic (the task's query and Warden's answer, in one record), with
/// `query`, the kept `answers`, `rcode` and `response_time` (ms). Dropped answers, the
/// granting host rule and the exact latency stay in `unmapped`.
fn dns<'r>(r: &mut Rec<'r>, out: &str, ctx: &'r Context) -> Event<'r> {
    let mut e = base(r, DNS, 6, "Traffic", "Traffic", ctx);
    let name = r.str("query").unwrap_or("");
    let qtype = r.str("qtype").unwrap_or("");
    e.insert(
        "query",
        Obj::with(vec![("hostname", name.into()), ("type", qtype.into()), ("class", "IN".into())]),
    );
    let answers: Vec<J<'r>> = r
        .peek("answers")
        .and_then(FieldValue::tree)
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(|ip| {
                    J::O(Obj::with(vec![
                        ("rdata", ip.into()),
                        ("type", (if ip.contains(':') { "AAAA" } else { "A" }).into()),
                        ("class", "IN".into()),
                    ]))
                })
                .collect()
        })
        .unwrap_or_default();
    r.mark("answers", true);
    e.insert("answers", answers);
    let rcode = r.str("rcode");
    let (rcode_id, caption) = match rcode {
        Some("NOERROR") => (0, "NoError"),
        Some("FORMERR") => (1, "FormError"),
        Some("SERVFAIL") => (2, "ServError"),
        Some("NXDOMAIN") => (3, "NXDomain"),
        Some("NOTIMP") => (4, "NotImp"),
        Some("REFUSED") => (5, "Refused"),
        _ => (OTHER, "Other"),
    };
    e.insert("rcode_id", rcode_id);
    e.insert("rcode", caption);
    if let Some(us) = r.peek_int("latency_us") {
        e.insert("response_time", us / 1000);
    }
    let actor = process_obj(r);
    e.insert("actor", one("process", actor));
    if let Some(p) = r.str("protocol") {
        e.insert(
            "connection_info",
            Obj::with(vec![
                ("protocol_name", p.into()),
                ("direction_id", 2i64.into()),
                ("direction", "Outbound".into()),
            ]),
        );
    }
    finish(e, r, format!("DNS {qtype} {name}: {}{out}", rcode.unwrap_or("?")))
}

/// OCSF `severity_id` of a rule severity.
fn finding_severity(s: Severity) -> i64 {
    match s {
        Severity::Info => 1,
        Severity::Low => 2,
        Severity::Medium => 3,
        Severity::High => 4,
        Severity::Critical => 5,
    }
}

/// Maps a rule finding to a Detection Finding (2004), activity Create. `finding_info.uid` is
/// `task/rule/seq` (the record that completed it: unique, and the same on every replay);
/// `related_events` name the records that made it fire by their event uids.
pub fn finding(f: &Finding, ctx: &Context) -> Value {
    let severity_id = finding_severity(f.severity);
    let time = epoch_ms(&f.time);
    let last = f.seqs.last().copied().unwrap_or(0);
    let related: Vec<Value> = f.seqs.iter().map(|s| json!({ "uid": event_uid(&f.task, *s) })).collect();
    let mut e = json!({
        "class_uid": FINDING.uid,
        "class_name": FINDING.name,
        "category_uid": FINDING.category_uid,
        "category_name": FINDING.category_name,
        "activity_id": 1,
        "activity_name": "Create",
        "type_uid": i64::from(FINDING.uid) * 100 + 1,
        "type_name": format!("{}: Create", FINDING.name),
        "time": time,
        "timezone_offset": 0,
        "severity_id": severity_id,
        "severity": severity_name(severity_id),
        "status_id": 1,
        "status": "New",
        "is_alert": true,
        "message": f.description,
        "metadata": {
            "version": OCSF_VERSION,
            "product": product(),
            "profiles": ["host"],
            "uid": format!("{}/{}/{last}", f.task, f.rule),
            "correlation_uid": f.task,
            "event_code": "finding",
            "original_time": f.time,
            "log_name": "warden-findings",
        },
        "finding_info": {
            "uid": format!("{}/{}/{last}", f.task, f.rule),
            "title": f.description,
            "desc": f.description,
            "analytic": { "uid": f.rule, "name": f.rule, "type_id": 1, "type": "Rule" },
            "last_seen_time": time,
            "related_events": related,
            "related_events_count": f.seqs.len(),
        },
        "device": device(ctx.hostname_of(&f.task)),
    });
    if let Some(pid) = f.pid {
        let p = json!({ "pid": pid, "sandbox": f.task });
        e["actor"] = json!({ "process": p.clone() });
        e["evidences"] = json!([{ "process": p }]);
    }
    e
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        /// Keys compare as strings do, NUL bytes, shared prefixes and non-ASCII included.
        #[test]
        fn keys_compare_as_strings(a in "[a\\x00_é]{0,12}", b in "[a\\x00_é]{0,12}") {
            proptest::prop_assert_eq!(key_cmp(&a, &b), a.cmp(&b));
        }

        /// An object written in key order: each key once, the value inserted last, as a
        /// `serde_json::Map` built from the same insertions.
        #[test]
        fn objects_write_as_a_map_of_their_insertions(
            keys in proptest::collection::vec("[ab_]{0,3}", 0..40),
            presorted in 0usize..40,
        ) {
            let mut keys = keys;
            let n = presorted.min(keys.len());
            keys[..n].sort();
            let mut o = Obj::default();
            let mut m = serde_json::Map::new();
            for (i, k) in keys.iter().enumerate() {
                o.insert(k, i);
                m.insert(k.clone(), Value::from(i));
            }
            let mut got = Vec::new();
            o.write(&mut got);
            proptest::prop_assert_eq!(String::from_utf8(got).unwrap(), Value::Object(m).to_string());
        }
    }

    fn ctx() -> Context {
        Context { hostname: Some("node-1".into()), ..Default::default() }
    }

    fn rec(extra: Value) -> Value {
        let mut r = json!({
            "v": 2, "seq": 7, "time": "2026-11-22T14:57:36.190211562Z", "task": "t-00", "decision": "allow",
            "pid": 100, "ppid": 99, "exe": "/usr/bin/sh", "comm": "sh", "uid": 0, "cgroup_id": 5,
            "prev": "p", "hash": "h",
        });
        r.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        r
    }

    #[test]
    fn a_pods_records_carry_the_container_profile() {
        let pod = json!({"pod": {"uid": "3d1f0b8e-5c2a-4f6e-9a7b-0c1d2e3f4a5b", "namespace": "agents",
            "name": "agent-1", "container": "runner", "container_id": "ab12", "runtime": "containerd"},
            "kind": "exec", "path": "/usr/bin/id", "decision": "deny", "action": "kill", "rule": "exec.allow"});
        let e = record(&rec(pod), &ctx()).unwrap();
        assert_common(&e, 1007, 1);
        let c = &e["container"];
        assert_eq!(c["uid"], "ab12");
        assert_eq!(c["name"], "runner");
        assert_eq!(c["pod_uuid"], "3d1f0b8e-5c2a-4f6e-9a7b-0c1d2e3f4a5b");
        assert_eq!(c["orchestrator"], "Kubernetes");
        assert_eq!(
            c["labels"],
            json!(["io.kubernetes.pod.namespace=agents", "io.kubernetes.pod.name=agent-1"])
        );
        assert!(e["metadata"]["profiles"].as_array().unwrap().iter().any(|p| p == "container"));
        assert!(e["unmapped"].get("pod").is_none(), "the pod is mapped, not repeated");
        let failed = json!({"v": 2, "seq": 1, "time": "2026-11-22T14:57:36.190211562Z", "task": "unbound-ab12",
            "kind": "bind_failed", "decision": "deny", "reason": "no scope x", "prev": "p", "hash": "h",
            "pod": {"uid": "u", "container_id": "ab12"}});
        let e = record(&failed, &ctx()).unwrap();
        assert_eq!((e["class_uid"].as_i64(), e["action"].as_str()), (Some(1007), Some("Denied")));
        assert_eq!(e["container"]["uid"], "ab12");
        assert!(e["status_detail"].as_str().unwrap().contains("no scope x"), "{e}");
        // Without a pod: no container object, no container profile.
        let e = record(&rec(json!({"kind": "exec", "path": "/usr/bin/id"})), &ctx()).unwrap();
        assert!(e.get("container").is_none());
        assert!(!e["metadata"]["profiles"].as_array().unwrap().iter().any(|p| p == "container"));
    }

    /// Fields every event carries, whatever its class.
    fn assert_common(e: &Value, class_uid: u64, activity_id: u64) {
        assert_eq!(e["class_uid"], class_uid);
        assert_eq!(e["activity_id"], activity_id);
        assert_eq!(e["type_uid"], class_uid * 100 + activity_id);
        assert_eq!(e["category_uid"], class_uid / 1000);
        assert_eq!(e["time"], 1_795_359_456_190_i64, "epoch ms");
        assert_eq!(e["metadata"]["version"], OCSF_VERSION);
        assert_eq!(e["metadata"]["product"]["name"], "Warden");
        assert_eq!(e["metadata"]["correlation_uid"], "t-00");
        assert_eq!(e["metadata"]["uid"], "t-00/7");
        assert_eq!(e["metadata"]["original_time"], "2026-11-22T14:57:36.190211562Z");
        assert_eq!(e["device"]["hostname"], "node-1");
        assert!(e["severity_id"].is_i64() && e["message"].is_string());
        // The chain fields are not mapped, so they are kept.
        assert_eq!(e["unmapped"]["hash"], "h");
        assert_eq!(e["unmapped"]["cgroup_id"], 5);
        assert!(e["unmapped"].get("pid").is_none() && e["unmapped"].get("task").is_none());
    }

    #[test]
    fn exec_is_a_process_launch_of_type_exec() {
        let e = record(&rec(json!({"kind": "exec", "path": "/usr/bin/id", "exe": "/usr/bin/id", "comm": "id", "dev": 2049, "ino": 77})), &ctx()).unwrap();
        assert_common(&e, 1007, 1);
        assert_eq!(e["activity_name"], "Launch");
        assert_eq!(e["type_name"], "Process Activity: Launch");
        assert_eq!(e["launch_type_id"], 3);
        assert_eq!(e["process"]["pid"], 100);
        assert_eq!(e["process"]["name"], "id");
        assert_eq!(e["process"]["parent_process"]["pid"], 99);
        assert_eq!(e["process"]["user"]["uid"], "0");
        assert_eq!(e["process"]["sandbox"], "t-00");
        assert_eq!(e["process"]["file"]["path"], "/usr/bin/id");
        assert_eq!(e["process"]["file"]["name"], "id");
        assert_eq!(e["process"]["file"]["type_id"], 8);
        assert_eq!(e["process"]["file"]["uid"], "2049:77");
        assert_eq!(e["actor"]["process"]["pid"], 100);
        assert!(e["actor"]["process"].get("file").is_none(), "same image: not repeated");
        assert_eq!((e["action_id"].clone(), e["disposition_id"].clone()), (json!(1), json!(1)));
        assert_eq!(e["status_id"], 1);
        assert_eq!(e["is_alert"], false);
        assert_eq!(e["metadata"]["profiles"], json!(["host", "security_control"]));
        assert!(e.get("unmapped").unwrap().get("exe").is_none(), "exe is the exec'd path");
        // A symlink: exec'd as /bin/sh, the process table says /usr/bin/dash.
        let s =
            record(&rec(json!({"kind": "exec", "path": "/bin/sh", "exe": "/usr/bin/dash"})), &ctx()).unwrap();
        assert_eq!(s["process"]["file"]["path"], "/bin/sh");
        assert_eq!(s["unmapped"]["exe"], "/usr/bin/dash");
    }

    #[test]
    fn decisions_map_to_action_disposition_status_and_policy() {
        let deny = record(
            &rec(json!({"kind": "exec", "decision": "deny", "action": "kill", "rule": "exec.allow", "ancestry": [99, 1], "path": "/usr/bin/id"})),
            &ctx(),
        )
        .unwrap();
        assert_eq!(deny["action_id"], 2);
        assert_eq!(deny["action"], "Denied");
        assert_eq!(deny["disposition_id"], 2);
        assert_eq!(deny["disposition"], "Blocked");
        assert_eq!(deny["status_id"], 2);
        assert_eq!(deny["severity_id"], 2);
        assert_eq!(deny["is_alert"], true);
        assert_eq!(deny["policy"]["name"], "exec.allow");
        assert!(deny["status_detail"].as_str().unwrap().contains("SIGKILL"));
        assert_eq!(deny["process"]["ancestry"], json!([{"pid": 99}, {"pid": 1}]));
        assert!(deny["message"].as_str().unwrap().ends_with("(killed)"));
        assert!(deny.get("unmapped").unwrap().get("action").is_none(), "action is mapped");

        let audit = record(
            &rec(json!({"kind": "connect", "decision": "audit", "rule": "network.egress", "addr": "10.0.0.1", "port": 443, "protocol": "tcp"})),
            &ctx(),
        )
        .unwrap();
        assert_eq!((audit["action_id"].clone(), audit["action"].clone()), (json!(3), json!("Observed")));
        assert_eq!(
            (audit["disposition_id"].clone(), audit["disposition"].clone()),
            (json!(15), json!("Detected"))
        );
        assert_eq!(audit["status_id"], 1, "the call went through");
        assert_eq!(audit["severity_id"], 3);
        assert_eq!(audit["policy"]["is_applied"], false);
    }

    #[test]
    fn fork_launches_the_child_with_the_parent_as_actor() {
        let e = record(&rec(json!({"kind": "fork", "child_pid": 101})), &ctx()).unwrap();
        assert_common(&e, 1007, 1);
        assert_eq!(e["launch_type_id"], 2);
        assert_eq!(e["launch_type"], "Fork");
        assert_eq!(e["actor"]["process"]["pid"], 100);
        assert_eq!(e["actor"]["process"]["file"]["path"], "/usr/bin/sh");
        assert_eq!(e["process"]["pid"], 101);
        assert_eq!(e["process"]["parent_process"]["pid"], 100);
        assert_eq!(e["process"]["file"]["path"], "/usr/bin/sh");
    }

    #[test]
    fn exit_terminates_with_exit_code_or_signal() {
        let e = record(&rec(json!({"kind": "exit", "exit_status": 3})), &ctx()).unwrap();
        assert_common(&e, 1007, 2);
        assert_eq!(e["activity_name"], "Terminate");
        assert_eq!(e["exit_code"], 3);
        assert_eq!(e["process"]["pid"], 100);
        assert_eq!(e["actor"]["process"]["pid"], 100, "reflexive");
        let k = record(&rec(json!({"kind": "exit", "signal": 9})), &ctx()).unwrap();
        assert!(k.get("exit_code").is_none());
        assert!(k["message"].as_str().unwrap().contains("signal 9"));
        let end = record(
            &rec(json!({"kind": "task_end", "exit_status": 0, "reason": "exited", "killed": 0, "drops": 0})),
            &ctx(),
        )
        .unwrap();
        assert_eq!(end["type_uid"], 100702);
        assert_eq!(end["unmapped"]["drops"], 0);
    }

    #[test]
    fn task_start_is_a_spawn_with_the_command_line() {
        let e = record(
            &rec(json!({"kind": "task_start", "scope": "s.yaml", "cmd": ["/bin/sh", "-c", "id"], "mode": "enforce", "cgroup": "/sys/fs/cgroup/warden/t-00"})),
            &ctx(),
        )
        .unwrap();
        assert_common(&e, 1007, 1);
        assert_eq!(e["launch_type_id"], 1);
        assert_eq!(e["process"]["cmd_line"], "/bin/sh -c id");
        assert_eq!(e["actor"]["process"]["pid"], 99);
        assert_eq!(e["unmapped"]["cgroup"], "/sys/fs/cgroup/warden/t-00");
    }

    #[test]
    fn open_and_mmap_are_file_system_activity() {
        let e = record(
            &rec(json!({"kind": "open", "decision": "deny", "action": "refuse", "rule": "secrets", "path": "/run/secrets/gh", "dev": 2049, "ino": 9, "arg": 1})),
            &ctx(),
        )
        .unwrap();
        assert_common(&e, 1001, 14);
        assert_eq!(e["activity_name"], "Open");
        assert_eq!(e["file"]["path"], "/run/secrets/gh");
        assert_eq!(e["file"]["name"], "gh");
        assert_eq!(e["file"]["type_id"], 0);
        assert_eq!(e["file"]["uid"], "2049:9");
        assert_eq!(e["access_mask"], 1);
        assert_eq!(e["actor"]["process"]["pid"], 100);
        assert_eq!(e["disposition_id"], 2);
        let m = record(&rec(json!({"kind": "mmap", "path": "/tmp/lib.so", "arg": 4})), &ctx()).unwrap();
        assert_common(&m, 1001, 99);
        assert_eq!(m["activity_name"], "Map Executable");
        assert_eq!(m["type_name"], "File System Activity: Other");
        assert_eq!(m["file"]["type_id"], 8);
        let mt = record(
            &rec(json!({"kind": "mount", "decision": "deny", "action": "refuse", "rule": "protected.mount"})),
            &ctx(),
        )
        .unwrap();
        assert_eq!(mt["type_uid"], 100112);
        assert_eq!(mt["file"]["name"], "unknown");
    }

    #[test]
    fn file_tree_changes_are_file_system_activity() {
        // A refused unlink (BPF LSM `path_unlink`): Delete, Denied/Blocked, EACCES.
        let e = record(
            &rec(json!({"kind": "file", "decision": "deny", "action": "refuse", "rule": "files.write", "path": "/etc/passwd", "dev": 2049, "ino": 12, "arg": 6, "ancestry": [99, 1]})),
            &ctx(),
        )
        .unwrap();
        assert_common(&e, 1001, 4);
        assert_eq!(e["class_name"], "File System Activity");
        assert_eq!(e["activity_name"], "Delete");
        assert_eq!(e["type_name"], "File System Activity: Delete");
        assert_eq!(e["file"]["path"], "/etc/passwd");
        assert_eq!(e["file"]["name"], "passwd");
        assert_eq!(e["file"]["type_id"], 0);
        assert_eq!(e["file"]["uid"], "2049:12");
        assert_eq!(e["actor"]["process"]["pid"], 100);
        assert_eq!(e["actor"]["process"]["ancestry"], json!([{"pid": 99}, {"pid": 1}]));
        assert_eq!((e["action_id"].clone(), e["action"].clone()), (json!(2), json!("Denied")));
        assert_eq!((e["disposition_id"].clone(), e["disposition"].clone()), (json!(2), json!("Blocked")));
        assert_eq!(e["status_id"], 2);
        assert_eq!(e["is_alert"], true);
        assert_eq!(
            e["status_detail"], "refused (EACCES): not allowed by the task scope's files.write",
            "files are refused with EACCES"
        );
        assert_eq!(
            e["policy"],
            json!({"name": "files.write", "type": "Warden task scope", "is_applied": true})
        );
        assert_eq!(e["message"], "unlink /etc/passwd (refused)");
        assert_eq!(e["unmapped"]["arg"], 6, "the operation is kept verbatim");
        assert!(e["unmapped"].get("path").is_none() && e["unmapped"].get("dev").is_none());
        // Audit mode: Observed/Detected, the call went through.
        let a = record(
            &rec(json!({"kind": "file", "decision": "audit", "action": "refuse", "rule": "files.deny", "path": "/work/.git", "arg": 2, "path_truncated": true})),
            &ctx(),
        )
        .unwrap();
        assert_common(&a, 1001, 1);
        assert_eq!((a["action_id"].clone(), a["disposition_id"].clone()), (json!(3), json!(15)));
        assert_eq!(a["status_id"], 1);
        assert_eq!(a["file"]["type_id"], 2);
        assert_eq!(a["file"]["type"], "Folder");
        assert!(a["file"].get("uid").is_none(), "no identity for a file that does not exist yet");
        assert_eq!(a["message"], "mkdir /work/.git (audit: would have been refused)");
        assert_eq!(a["unmapped"]["path_truncated"], true);
        // Every operation of docs/events.md.
        for (op, activity_id, activity_name, type_id, verb) in [
            (1, 1, "Create", 0, "create"),
            (2, 1, "Create", 2, "mkdir"),
            (3, 1, "Create", 7, "symlink"),
            (4, 99, "Link", 0, "hard link to"),
            (5, 5, "Rename", 0, "rename"),
            (6, 4, "Delete", 0, "unlink"),
            (7, 4, "Delete", 2, "rmdir"),
            (8, 3, "Update", 1, "truncate"),
            (9, 5, "Rename", 0, "rename (exchange)"),
            (42, 99, "File Change", 0, "file change"),
        ] {
            let e = record(
                &rec(json!({"kind": "file", "decision": "deny", "action": "refuse", "rule": "files.deny", "path": "/x/y", "arg": op})),
                &ctx(),
            )
            .unwrap();
            assert_common(&e, 1001, activity_id);
            assert_eq!(e["activity_name"], activity_name, "op {op}");
            assert_eq!(e["file"]["type_id"], type_id, "op {op}");
            assert_eq!(e["message"], format!("{verb} /x/y (refused)"), "op {op}");
        }
    }

    #[test]
    fn device_hostname_is_the_tasks_node_unless_overridden() {
        let start = json!({"v": 2, "seq": 1, "time": "2026-11-22T14:57:36.190211562Z", "task": "t-00", "kind": "task_start", "decision": "allow", "pid": 100, "ppid": 99, "node": "build-7", "scope": "s.yaml", "cmd": ["true"]});
        let exec = rec(json!({"kind": "exec", "path": "/usr/bin/id"}));
        let other = json!({"v": 2, "seq": 1, "time": "2026-11-22T14:57:36.190211562Z", "task": "t-01", "kind": "exit", "decision": "allow", "pid": 5, "exit_status": 0});
        let mut ctx = Context { fallback_hostname: Some("replayer".into()), ..Default::default() };
        // task_start names its own node, learnt or not; `node` is then consumed.
        let s = record(&start, &ctx).unwrap();
        assert_eq!(s["device"]["hostname"], "build-7");
        assert!(s["unmapped"].get("node").is_none(), "{s}");
        // Before the task's task_start is seen: the fallback (the replaying host).
        assert_eq!(record(&exec, &ctx).unwrap()["device"]["hostname"], "replayer");
        for r in [&start, &exec, &other] {
            ctx.learn(r);
        }
        assert_eq!(record(&exec, &ctx).unwrap()["device"]["hostname"], "build-7");
        // Another task whose node is unknown.
        assert_eq!(record(&other, &ctx).unwrap()["device"]["hostname"], "replayer");
        let f = Finding {
            rule: "r".into(),
            severity: Severity::Low,
            description: "d".into(),
            task: "t-00".into(),
            pid: None,
            seqs: vec![7],
            time: "2026-11-22T14:57:36.190211562Z".into(),
        };
        assert_eq!(finding(&f, &ctx)["device"]["hostname"], "build-7");
        // --host overrides; the recorded node is kept in `unmapped`.
        ctx.hostname = Some("node-1".into());
        assert_eq!(record(&exec, &ctx).unwrap()["device"]["hostname"], "node-1");
        let s = record(&start, &ctx).unwrap();
        assert_eq!(s["device"]["hostname"], "node-1");
        assert_eq!(s["unmapped"]["node"], "build-7");
        assert_eq!(finding(&f, &ctx)["device"]["hostname"], "node-1");
        // Nothing known, no fallback: no hostname.
        let bare = Context::default();
        assert!(record(&exec, &bare).unwrap()["device"].get("hostname").is_none());
        // An empty node (gethostname failed) names nothing.
        let mut c = Context::default();
        let mut blank = start.clone();
        blank["node"] = "".into();
        c.learn(&blank);
        assert!(record(&exec, &c).unwrap()["device"].get("hostname").is_none());
    }

    #[test]
    fn connect_and_sendmsg_are_network_activity() {
        let c = record(
            &rec(json!({"kind": "connect", "addr": "10.1.2.3", "port": 443, "protocol": "tcp"})),
            &ctx(),
        )
        .unwrap();
        assert_common(&c, 4001, 1);
        assert_eq!(c["dst_endpoint"], json!({"ip": "10.1.2.3", "port": 443}));
        assert_eq!(c["connection_info"]["direction_id"], 2);
        assert_eq!(c["connection_info"]["protocol_num"], 6);
        assert_eq!(c["connection_info"]["protocol_ver_id"], 4);
        assert_eq!(c["actor"]["process"]["pid"], 100);
        let d = record(
            &rec(json!({"kind": "connect", "decision": "deny", "action": "refuse", "rule": "network.egress", "addr": "::1", "port": 8080, "protocol": "tcp"})),
            &ctx(),
        )
        .unwrap();
        assert_eq!(d["activity_id"], 1, "a refused connect is an Open that was denied");
        assert_eq!((d["action_id"].clone(), d["disposition_id"].clone()), (json!(2), json!(2)));
        assert_eq!(d["connection_info"]["protocol_ver_id"], 6);
        assert_eq!(d["message"], "connect to [::1]:8080 tcp (refused)");
        let s = record(
            &rec(json!({"kind": "sendmsg", "addr": "10.1.2.3", "port": 9, "protocol": "udp"})),
            &ctx(),
        )
        .unwrap();
        assert_common(&s, 4001, 6);
        assert_eq!(s["connection_info"]["protocol_num"], 17);
    }

    #[test]
    fn port_53_is_network_activity_and_dns_records_are_dns_activity() {
        let e = record(
            &rec(json!({"kind": "sendmsg", "addr": "8.8.8.8", "port": 53, "protocol": "udp"})),
            &ctx(),
        )
        .unwrap();
        assert_common(&e, 4001, 6);
        let q = record(
            &rec(json!({"kind": "dns", "decision": "allow", "rule": "network.egress", "protocol": "udp",
                "query": "api.github.com", "qtype": "A", "host": "api.github.com",
                "answers": ["140.82.112.3", "2606:4700::1"], "dropped": ["10.0.0.1 (private)"],
                "rcode": "NOERROR", "latency_us": 2500})),
            &ctx(),
        )
        .unwrap();
        assert_common(&q, 4003, 6);
        assert_eq!(q["query"], json!({"hostname": "api.github.com", "type": "A", "class": "IN"}));
        assert_eq!(q["answers"][1], json!({"rdata": "2606:4700::1", "type": "AAAA", "class": "IN"}));
        assert_eq!((q["rcode_id"].clone(), q["response_time"].clone()), (json!(0), json!(2)));
        assert_eq!(q["unmapped"]["dropped"], json!(["10.0.0.1 (private)"]));
        let d = record(
            &rec(json!({"kind": "dns", "decision": "deny", "action": "refuse", "rule": "network.egress",
                "query": "x.evil.example", "qtype": "TXT", "answers": [], "rcode": "REFUSED"})),
            &ctx(),
        )
        .unwrap();
        assert_eq!(
            (d["rcode_id"].clone(), d["action_id"].clone(), d["disposition_id"].clone()),
            (json!(5), json!(2), json!(2))
        );
        assert_eq!(d["message"], "DNS TXT x.evil.example: REFUSED (refused)");
    }

    #[test]
    fn lsm_process_and_kernel_records() {
        let p = record(&rec(json!({"kind": "ptrace", "target_pid": 1, "arg": 2})), &ctx()).unwrap();
        assert_common(&p, 1007, 3);
        assert_eq!(p["process"]["pid"], 1);
        assert_eq!(p["requested_permissions"], 2);
        let s = record(&rec(json!({"kind": "signal", "target_pid": 1, "signal": 9})), &ctx()).unwrap();
        assert_common(&s, 1007, 99);
        assert_eq!(s["activity_name"], "Signal");
        let b = record(&rec(json!({"kind": "bpf", "arg": 5})), &ctx()).unwrap();
        assert_common(&b, 1003, 4);
        assert_eq!(b["kernel"]["type_id"], 2);
        let m = record(&rec(json!({"kind": "module", "path": "/tmp/x.ko"})), &ctx()).unwrap();
        assert_common(&m, 1002, 1);
        assert_eq!(m["driver"]["file"]["name"], "x.ko");
    }

    #[test]
    fn gaps_are_reported_and_checkpoints_have_no_counterpart() {
        let g = record(&json!({"v": 2, "seq": 7, "time": "2026-11-22T14:57:36.190211562Z", "task": "t-00", "kind": "gap", "drops": 4, "decode_errors": 0}), &ctx()).unwrap();
        assert_eq!(g["class_uid"], 1008);
        assert_eq!(g["status_id"], 2);
        assert!(g["message"].as_str().unwrap().contains("4 record(s) lost"));
        let c = json!({"v": 2, "seq": 8, "time": "t", "task": "t-00", "kind": "checkpoint", "key": "k", "sig": "s"});
        assert!(record(&c, &ctx()).is_none());
        assert!(record(&json!({"kind": "future-kind"}), &ctx()).is_none());
        assert!(record(&json!("not an object"), &ctx()).is_none());
    }

    #[test]
    fn findings_are_detection_findings() {
        let f = Finding {
            rule: "denial-burst".into(),
            severity: Severity::High,
            description: "five refusals".into(),
            task: "t-00".into(),
            pid: Some(100),
            seqs: vec![4, 7],
            time: "2026-11-22T14:57:36.190211562Z".into(),
        };
        let e = finding(&f, &ctx());
        assert_eq!(e["class_uid"], 2004);
        assert_eq!(e["category_uid"], 2);
        assert_eq!(e["type_uid"], 200401);
        assert_eq!(e["severity_id"], 4);
        assert_eq!(e["severity"], "High");
        assert_eq!(e["status_id"], 1);
        assert_eq!(e["time"], 1_795_359_456_190_i64);
        assert_eq!(e["finding_info"]["uid"], "t-00/denial-burst/7");
        assert_eq!(e["finding_info"]["analytic"]["uid"], "denial-burst");
        assert_eq!(e["finding_info"]["analytic"]["type_id"], 1);
        assert_eq!(e["finding_info"]["related_events"], json!([{"uid": "t-00/4"}, {"uid": "t-00/7"}]));
        assert_eq!(e["evidences"][0]["process"]["pid"], 100);
        assert_eq!(e["metadata"]["version"], OCSF_VERSION);
        let quiet = Finding { pid: None, severity: Severity::Info, ..f };
        let e = finding(&quiet, &Context::default());
        assert_eq!(e["severity_id"], 1);
        assert!(e.get("evidences").is_none());
        assert!(e["device"].get("hostname").is_none());
    }

    /// Calls: call_start/call_end are Process Activity Launch/Terminate; every Process
    /// Activity event of a process inside a call names the call in `message_context` (the
    /// `ai_operation` profile); other classes keep `call`/`call_name` in `unmapped`. The
    /// writer and the tree agree on them.
    #[test]
    fn calls_map_to_the_ai_operation_message_context() {
        let call = json!({"call": "t-00/c1", "call_name": "fetch"});
        let mut start = call.clone();
        start.as_object_mut().unwrap().extend(
            json!({"kind": "call_start", "parent": "t-00", "depth": 1, "cmd": ["curl", "-s", "x"], "cwd": "/work",
                   "scope_hash": "ab", "intent": {"sha256": "cd", "text": "get x", "truncated": false}})
            .as_object()
            .unwrap()
            .clone(),
        );
        let mut r = rec(start);
        for k in ["pid", "ppid", "exe", "comm", "uid", "cgroup_id", "decision"] {
            r.as_object_mut().unwrap().remove(k);
        }
        let e = record(&r, &ctx()).unwrap();
        assert_eq!((e["class_uid"].as_u64(), e["activity_id"].as_u64()), (Some(1007), Some(1)));
        assert_eq!(e["launch_type_id"], 1);
        assert_eq!(e["process"]["cmd_line"], "curl -s x");
        assert_eq!(e["process"]["working_directory"], "/work");
        let m = &e["message_context"];
        assert_eq!(m["uid"], "t-00/c1");
        assert_eq!(m["name"], "fetch");
        assert_eq!((m["ai_role_id"].as_u64(), m["ai_role"].as_str()), (Some(3), Some("Tool")));
        assert_eq!(m["application"]["uid"], "t-00");
        assert!(e["metadata"]["profiles"].as_array().unwrap().contains(&json!("ai_operation")));
        // The intent, parent and depth are kept verbatim.
        assert_eq!(e["unmapped"]["intent"]["text"], "get x");
        assert_eq!(e["unmapped"]["parent"], "t-00");
        assert!(e["unmapped"].get("call").is_none());
        assert_eq!(e["message"], "call fetch (t-00/c1) started under t-00");

        let mut end = call.clone();
        end.as_object_mut().unwrap().extend(
            json!({"kind": "call_end", "exit_status": 7, "duration_ms": 1250, "events": 8, "denials": 2, "drops": 0})
                .as_object()
                .unwrap()
                .clone(),
        );
        let e = record(&rec(end), &ctx()).unwrap();
        assert_eq!((e["class_uid"].as_u64(), e["activity_id"].as_u64()), (Some(1007), Some(2)));
        assert_eq!((e["exit_code"].as_i64(), e["duration"].as_i64()), (Some(7), Some(1250)));
        assert_eq!(e["message_context"]["uid"], "t-00/c1");
        assert_eq!(e["unmapped"]["denials"], 2);
        assert_eq!(e["message"], "call fetch (t-00/c1) exited with status 7 after 1250 ms, 2 refusal(s)");

        let mut exec = call.clone();
        exec.as_object_mut().unwrap().insert("kind".into(), json!("exec"));
        exec.as_object_mut().unwrap().insert("path".into(), json!("/usr/bin/curl"));
        let e = record(&rec(exec), &ctx()).unwrap();
        assert_eq!(e["message_context"]["name"], "fetch");
        let mut conn = call;
        conn.as_object_mut().unwrap().extend(
            json!({"kind": "connect", "addr": "10.0.0.9", "port": 80, "protocol": "tcp"})
                .as_object()
                .unwrap()
                .clone(),
        );
        let e = record(&rec(conn), &ctx()).unwrap();
        assert_eq!(e["class_uid"], 4001);
        assert!(e.get("message_context").is_none());
        assert_eq!(e["unmapped"]["call"], "t-00/c1");
        assert!(!e["metadata"]["profiles"].as_array().unwrap().contains(&json!("ai_operation")));
        // No call: no profile, no context.
        let e = record(&rec(json!({"kind": "exec", "path": "/usr/bin/id"})), &ctx()).unwrap();
        assert!(e.get("message_context").is_none());
        // The writer gives the tree's bytes for every record of the calls fixture.
        let fixture = include_str!("../../../tests/fixtures/calls/calls.jsonl");
        for line in fixture.lines() {
            let tree: Value = serde_json::from_str(line).unwrap();
            let want = serde_json::to_string(&record(&tree, &ctx()).unwrap()).unwrap() + "\n";
            let mut got = Vec::new();
            assert!(write_line(&Fields::parse(line).unwrap().unwrap(), &ctx(), &mut got));
            assert_eq!(String::from_utf8(got).unwrap(), want, "{line}");
        }
    }

    #[test]
    fn mapping_is_deterministic() {
        let r = rec(json!({"kind": "exec", "path": "/usr/bin/id"}));
        assert_eq!(
            serde_json::to_string(&record(&r, &ctx())).unwrap(),
            serde_json::to_string(&record(&r, &ctx())).unwrap()
        );
    }

    /// Every kind of record, with the variations the mapping branches on, and fields it does
    /// not know (nested, escaped, repeated, odd numbers): what both mappings are compared on.
    fn corpus() -> Vec<String> {
        let mut lines = Vec::new();
        let base = r#""v":2,"seq":7,"time":"2026-11-22T14:57:36.190211562Z","task":"t-00","pid":100,"ppid":99,"exe":"/usr/bin/sh","comm":"sh","uid":0,"cgroup_id":5,"prev":"p","hash":"h""#;
        let kinds = [
            r#""kind":"exec","path":"/usr/bin/id","dev":2049,"ino":77"#,
            r#""kind":"exec","path":"/bin/sh","exe":"/usr/bin/dash","path_truncated":true"#,
            r#""kind":"exec","path":"/usr/bin/sh","decision":"deny","action":"kill","rule":"exec.allow","ancestry":[99,1]"#,
            r#""kind":"fork","child_pid":101"#,
            r#""kind":"exit","exit_status":3"#,
            r#""kind":"exit","signal":9"#,
            r#""kind":"task_end","exit_status":0,"reason":"exited","killed":0,"drops":0"#,
            r#""kind":"task_start","scope":"s.yaml","cmd":["/bin/sh","-c","id"],"mode":"enforce","cgroup":"/sys/fs/cgroup/warden/t-00","node":"build-7""#,
            r#""kind":"task_start","scope":"s.yaml","cmd":["x"],"node":"""#,
            r#""kind":"bind_failed","reason":"no scope x","pod":{"uid":"u","container_id":"ab12"}"#,
            r#""kind":"bind_failed","reason":"r","decision":"allow""#,
            r#""kind":"ptrace","target_pid":1,"arg":2"#,
            r#""kind":"signal","target_pid":1,"signal":9,"decision":"audit","rule":"process.signal""#,
            r#""kind":"open","decision":"deny","action":"refuse","rule":"secrets","path":"/run/secrets/gh","dev":2049,"ino":9,"arg":1"#,
            r#""kind":"mmap","path":"/tmp/lib.so","arg":4"#,
            r#""kind":"mount","decision":"deny","action":"refuse","rule":"protected.mount""#,
            r#""kind":"unix_connect","path":"/run/docker.sock","decision":"deny","rule":"files.deny""#,
            r#""kind":"file","decision":"audit","action":"refuse","rule":"files.deny","path":"/work/.git","arg":2,"path_truncated":true"#,
            r#""kind":"file","decision":"deny","action":"refuse","rule":"files.write","path":"/etc/passwd","dev":2049,"ino":12,"arg":6,"ancestry":[99,1]"#,
            r#""kind":"file","path":"/x","arg":42"#,
            r#""kind":"module","path":"/tmp/x.ko","dev":1,"ino":2"#,
            r#""kind":"module""#,
            r#""kind":"bpf","arg":5"#,
            r#""kind":"bpf""#,
            r#""kind":"connect","addr":"10.1.2.3","port":443,"protocol":"tcp""#,
            r#""kind":"connect","decision":"deny","action":"refuse","rule":"network.egress","addr":"::1","port":8080,"protocol":"tcp""#,
            r#""kind":"sendmsg","addr":"8.8.8.8","port":53,"protocol":"udp""#,
            r#""kind":"sendmsg","addr":"10.0.0.1","port":9,"protocol":"132""#,
            r#""kind":"dns","decision":"allow","rule":"network.egress","protocol":"udp","query":"api.github.com","qtype":"A","host":"api.github.com","answers":["140.82.112.3","2606:4700::1"],"dropped":["10.0.0.1 (private)"],"rcode":"NOERROR","latency_us":2500"#,
            r#""kind":"dns","decision":"deny","action":"refuse","rule":"network.egress","query":"x.evil.example","qtype":"TXT","answers":[],"rcode":"REFUSED""#,
            r#""kind":"gap","drops":4,"decode_errors":0"#,
            r#""kind":"checkpoint","key":"k","sig":"s""#,
            r#""kind":"future-kind""#,
            r#""kind":"exec","path":"/usr/bin/id","pod":{"uid":"3d1f","namespace":"agents","name":"agent-1","container":"runner","container_id":"ab12","runtime":"containerd"},"decision":"deny","action":"kill","rule":"exec.allow""#,
        ];
        for k in kinds {
            lines.push(format!("{{{base},{k}}}"));
            // The same with an allow decision, where the kind has none.
            if !k.contains("decision") {
                lines.push(format!("{{{base},\"decision\":\"allow\",{k}}}"));
            }
        }
        // Fields the mapping does not know, escapes, repeated keys, numbers of every kind.
        lines.extend([
            format!(r#"{{{base},"kind":"exec","path":"/tmp/a \"b\"\\c\u00e9\n","zz":{{"b":1,"a":[1.5,null,false]}},"aa":-3,"big":18446744073709551615,"neg":-9223372036854775808,"f":1e3,"g":0.1,"n":null,"t":true}}"#),
            format!(r#"{{{base},"kind":"connect","addr":"10.0.0.1","addr":"10.0.0.2","port":80,"port":"x","protocol":"tcp"}}"#),
            format!(r#"{{{base},"kind":"exit","pid":-1,"exit_status":9223372036854775808}}"#),
            format!(r#"{{{base},"kind":"open","path":"/\ud83d\ude00","comm":"a\/b","\u006b\u0065y":"v"}}"#),
            format!(r#"{{{base},"kind":"fork","pid":"100","child_pid":1.0}}"#),
            r#"{"v":2,"seq":1,"task":"t","kind":"exec","time":"2026-11-22T14:57:36Z"}"#.into(),
            r#"{"v":2,"kind":"exec","time":"2026-11-22T14:57:36.5+02:00"}"#.into(),
            r#"{"v":2,"kind":"exec","time":"2016-12-31T23:59:60.123Z"}"#.into(),
            r#"{"v":2,"kind":"exec","time":"2024-02-29T00:00:00.9999999999Z"}"#.into(),
            r#"{"v":2,"kind":"exec","time":"2023-02-29T00:00:00Z"}"#.into(),
            r#"{"v":2,"kind":"exec","time":"1969-12-31T23:59:59.5009Z"}"#.into(),
            r#"{"v":2,"kind":"exec","time":"2026-11-22t14:57:36.1z"}"#.into(),
            r#"{"v":2,"kind":"exec","time":"not a time"}"#.into(),
            r#"{"v":2,"kind":"exec","time":7}"#.into(),
            r#"{"kind":"gap"}"#.into(),
            r#"{"v":1,"seq":3,"task":"t","kind":"exec","path":"/bin/ls","unchained":true}"#.into(),
            r#"["not","an","object"]"#.into(),
            r#""a string""#.into(),
        ]);
        lines
    }

    /// The word-at-a-time escape test agrees with the byte test for every byte at every
    /// position, next to bytes that are close to the limits.
    #[test]
    fn escape_test_agrees_with_the_byte_test() {
        for filler in [b'a', b' ', b'!', b'#', b'[', b']', 0x7f, 0x80, 0xff] {
            for len in 0..40 {
                let clean = vec![filler; len];
                assert_eq!(has_escape(&clean), needs_escape(filler), "{filler:#x} × {len}");
                for at in 0..len {
                    for b in 0..=255u8 {
                        let mut s = clean.clone();
                        s[at] = b;
                        assert_eq!(has_escape(&s), s.iter().any(|&c| needs_escape(c)), "{s:?}");
                    }
                }
            }
        }
    }

    /// The writer's bytes are those of the tree-building mapping it replaced, record for
    /// record, with and without a host override and learnt nodes; and [`record`] (the tree)
    /// agrees with both.
    #[test]
    fn writer_matches_the_tree_mapping() {
        let lines = corpus();
        let contexts = [
            Context::default(),
            Context { hostname: Some("node-1".into()), ..Default::default() },
            Context { fallback_hostname: Some("replayer".into()), ..Default::default() },
        ];
        let mut compared = 0;
        for ctx in contexts {
            let (mut old_ctx, mut new_ctx) = (ctx.clone(), ctx);
            for line in &lines {
                let tree: Value = serde_json::from_str(line).unwrap();
                old_ctx.learn(&tree);
                let want = legacy::record(&tree, &old_ctx).map(|e| serde_json::to_string(&e).unwrap() + "\n");
                let fields = Fields::parse(line).unwrap();
                if let Some(f) = &fields
                    && let Some((task, node)) = f.teaches()
                {
                    new_ctx.learn_node(task, node);
                }
                let mut got = Vec::new();
                let wrote = match &fields {
                    Some(f) => write_line(f, &new_ctx, &mut got),
                    None => false,
                };
                let got = wrote.then(|| String::from_utf8(got).unwrap());
                assert_eq!(got, want, "line {line}");
                let via_tree = record(&tree, &new_ctx).map(|e| serde_json::to_string(&e).unwrap() + "\n");
                assert_eq!(via_tree, want, "tree of line {line}");
                compared += usize::from(want.is_some());
            }
            assert_eq!(old_ctx, new_ctx);
        }
        assert!(compared > 100, "{compared}");
    }

    #[test]
    fn fast_time_parse_agrees_with_the_general_parser() {
        for t in [
            "2026-11-22T14:57:36.190211562Z",
            "2026-11-22T14:57:36Z",
            "2026-11-22T14:57:36.1Z",
            "2026-11-22T14:57:36.12Z",
            "1970-01-01T00:00:00Z",
            "2000-02-29T23:59:59.999Z",
            "2100-03-01T00:00:00.000000001Z",
            "2400-12-31T12:00:00Z",
        ] {
            let general = time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339)
                .map(|t| (t.unix_timestamp_nanos() / 1_000_000) as i64)
                .unwrap();
            assert_eq!(fast_epoch_ms(t), Some(general), "{t}");
        }
        for t in
            ["2023-02-29T00:00:00Z", "2026-13-01T00:00:00Z", "2026-11-22T24:00:00Z", "1969-12-31T23:59:59Z"]
        {
            assert_eq!(fast_epoch_ms(t), None, "{t}");
        }
    }
}
