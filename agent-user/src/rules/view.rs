//! What a rule sees of a record: its documented fields, read in place.
//!
//! Rules used to be evaluated on a `serde_json::Value` re-parsed from the line just written
//! and bound field by field into a fresh CEL context. A [`RecordView`] instead answers for one
//! field when an expression asks for it, from whatever the record already is: the pipeline's
//! typed [`AuditRecord`] (live), a [`ReplayRecord`] borrowed from the line being replayed, or
//! a `serde_json::Value` (rule examples, OCSF replay). Every view gives the same answers the
//! old binding gave: a documented string field that is absent or not a string reads as `""`,
//! an integer field as `0` (see [`super::STRING_FIELDS`], [`super::INT_FIELDS`]).
use std::borrow::Cow;

use serde::de::{self, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde_json::{Number, Value};

use crate::audit::{AuditRecord, Decision};

/// A record as rules read it.
pub trait RecordView: Sync {
    /// A documented string field (`kind`, `path`, ...), `None` when absent or not a string.
    fn str_field(&self, name: &str) -> Option<&str>;
    /// A documented integer field (`pid`, `port`, ...), `None` when absent or not an i64.
    fn int_field(&self, name: &str) -> Option<i64>;
    /// An unsigned integer field (`seq`, `pid` of findings), `None` when absent or not a u64.
    fn u64_field(&self, name: &str) -> Option<u64>;
    /// `ancestry`: the pids it lists.
    fn ancestry(&self) -> Vec<i64>;
    /// The whole record (for rules that use `event`); built only when asked for.
    fn json(&self) -> Value;
}

/// Where a rule field lives in the record: most are top-level keys; `intent` and
/// `intent_sha256` are `call_start`'s `intent.text` and `intent.sha256`.
fn intent_key(name: &str) -> Option<&'static str> {
    match name {
        "intent" => Some("text"),
        "intent_sha256" => Some("sha256"),
        _ => None,
    }
}

impl RecordView for Value {
    fn str_field(&self, name: &str) -> Option<&str> {
        match intent_key(name) {
            Some(k) => self.get("intent")?.get(k)?.as_str(),
            None => self.get(name).and_then(Value::as_str),
        }
    }
    fn int_field(&self, name: &str) -> Option<i64> {
        self.get(name).and_then(Value::as_i64)
    }
    fn u64_field(&self, name: &str) -> Option<u64> {
        self.get(name).and_then(Value::as_u64)
    }
    fn ancestry(&self) -> Vec<i64> {
        self.get("ancestry")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_i64).collect())
            .unwrap_or_default()
    }
    fn json(&self) -> Value {
        self.clone()
    }
}

/// A record the pipeline has just written: the typed record and its sealed line (which alone
/// has `hash`, so `event` is parsed from it, and only when a rule uses `event`).
pub struct LiveRecord<'a> {
    pub rec: &'a AuditRecord,
    pub line: &'a str,
}

fn decision_str(d: Decision) -> &'static str {
    match d {
        Decision::Allow => "allow",
        Decision::Deny => "deny",
        Decision::Audit => "audit",
    }
}

impl RecordView for LiveRecord<'_> {
    fn str_field(&self, name: &str) -> Option<&str> {
        let r = self.rec;
        match name {
            "time" => Some(&r.time),
            "task" => Some(&r.task),
            "kind" => Some(r.kind.as_str()),
            "decision" => r.decision.map(decision_str),
            "action" => r.action,
            "rule" => r.rule,
            "exe" => r.exe.as_deref(),
            "path" => r.path.as_deref(),
            "addr" => r.addr.as_deref(),
            "protocol" => r.protocol.as_deref(),
            "comm" => r.comm.as_deref(),
            "reason" => r.reason.as_deref(),
            "call" => r.call.as_deref(),
            "call_name" => r.call_name.as_deref(),
            "parent" => r.parent.as_deref(),
            "intent" => r.intent.as_ref().and_then(|i| i.text.as_deref()),
            "intent_sha256" => r.intent.as_ref().map(|i| i.sha256.as_str()),
            _ => None,
        }
    }
    fn int_field(&self, name: &str) -> Option<i64> {
        let r = self.rec;
        match name {
            "v" => Some(r.v.into()),
            "seq" => i64::try_from(r.seq).ok(),
            "pid" => r.pid.map(i64::from),
            "ppid" => r.ppid.map(i64::from),
            "port" => r.port.map(i64::from),
            "uid" => r.uid.map(i64::from),
            "cgroup_id" => r.cgroup_id.and_then(|v| i64::try_from(v).ok()),
            "dev" => r.dev.and_then(|v| i64::try_from(v).ok()),
            "ino" => r.ino.and_then(|v| i64::try_from(v).ok()),
            "child_pid" => r.child_pid.map(i64::from),
            "exit_status" => r.exit_status.map(i64::from),
            "signal" => r.signal.map(i64::from),
            "target_pid" => r.target_pid.map(i64::from),
            "arg" => r.arg.map(i64::from),
            "drops" => r.drops.and_then(|v| i64::try_from(v).ok()),
            _ => None,
        }
    }
    fn u64_field(&self, name: &str) -> Option<u64> {
        match name {
            "seq" => Some(self.rec.seq),
            "pid" => self.rec.pid.map(u64::from),
            _ => self.int_field(name).and_then(|v| u64::try_from(v).ok()),
        }
    }
    fn ancestry(&self) -> Vec<i64> {
        self.rec.ancestry.as_ref().map(|a| a.iter().map(|&p| i64::from(p)).collect()).unwrap_or_default()
    }
    fn json(&self) -> Value {
        serde_json::from_str(self.line).unwrap_or(Value::Null)
    }
}

/// A value of a replayed record's field, as much as rules need of it.
#[derive(Debug, Clone, Default, PartialEq)]
pub enum Field<'a> {
    Str(Cow<'a, str>),
    Num(Number),
    /// Present, but neither a string nor a number (reads as absent).
    #[default]
    Other,
}

impl<'de: 'a, 'a> de::Deserialize<'de> for Field<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = Field<'a>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Field::Str(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Field::Str(Cow::Owned(v.to_string())))
            }
            fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
                Ok(Field::Str(Cow::Owned(v)))
            }
            fn visit_u64<E>(self, v: u64) -> Result<Self::Value, E> {
                Ok(Field::Num(v.into()))
            }
            fn visit_i64<E>(self, v: i64) -> Result<Self::Value, E> {
                Ok(Field::Num(v.into()))
            }
            fn visit_f64<E>(self, v: f64) -> Result<Self::Value, E> {
                Ok(Number::from_f64(v).map_or(Field::Other, Field::Num))
            }
            fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
                Ok(Field::Other)
            }
            fn visit_unit<E>(self) -> Result<Self::Value, E> {
                Ok(Field::Other)
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut a: A) -> Result<Self::Value, A::Error> {
                while a.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Field::Other)
            }
            fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<Self::Value, A::Error> {
                while a.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(Field::Other)
            }
        }
        d.deserialize_any(V(std::marker::PhantomData))
    }
}

impl Field<'_> {
    fn as_str(&self) -> Option<&str> {
        match self {
            Field::Str(s) => Some(s),
            _ => None,
        }
    }
    fn as_i64(&self) -> Option<i64> {
        match self {
            Field::Num(n) => n.as_i64(),
            _ => None,
        }
    }
    fn as_u64(&self) -> Option<u64> {
        match self {
            Field::Num(n) => n.as_u64(),
            _ => None,
        }
    }
}

/// Names [`ReplayRecord`] keeps, in slot order: the documented string and integer fields.
const KEPT: &[&str] = &[
    "time",
    "task",
    "kind",
    "decision",
    "action",
    "rule",
    "exe",
    "path",
    "addr",
    "protocol",
    "comm",
    "reason",
    "v",
    "seq",
    "pid",
    "ppid",
    "port",
    "uid",
    "cgroup_id",
    "dev",
    "ino",
    "child_pid",
    "exit_status",
    "signal",
    "target_pid",
    "arg",
    "drops",
    "call",
    "call_name",
    "parent",
    "intent",
    "intent_sha256",
];

/// Slots of `intent.text` and `intent.sha256`, read from the nested `intent` object.
const INTENT: usize = 30;
const INTENT_SHA256: usize = 31;

/// The slot of a kept name (a `match`, which compiles to a switch on length and bytes: this
/// runs for every key of every replayed line).
fn slot(name: &str) -> Option<usize> {
    Some(match name {
        "time" => 0,
        "task" => 1,
        "kind" => 2,
        "decision" => 3,
        "action" => 4,
        "rule" => 5,
        "exe" => 6,
        "path" => 7,
        "addr" => 8,
        "protocol" => 9,
        "comm" => 10,
        "reason" => 11,
        "v" => 12,
        "seq" => 13,
        "pid" => 14,
        "ppid" => 15,
        "port" => 16,
        "uid" => 17,
        "cgroup_id" => 18,
        "dev" => 19,
        "ino" => 20,
        "child_pid" => 21,
        "exit_status" => 22,
        "signal" => 23,
        "target_pid" => 24,
        "arg" => 25,
        "drops" => 26,
        "call" => 27,
        "call_name" => 28,
        "parent" => 29,
        "intent" => INTENT,
        "intent_sha256" => INTENT_SHA256,
        _ => return None,
    })
}

/// The index of the first byte of `s` that ends or breaks a plain JSON string: a quote, a
/// backslash or a control character. Sixteen bytes at a time with SSE2 (part of every x86-64
/// CPU), then eight at a time ([`special_swar`]).
#[inline]
pub(crate) fn special(s: &[u8]) -> Option<usize> {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{
            __m128i, _mm_cmpeq_epi8, _mm_loadu_si128, _mm_min_epu8, _mm_movemask_epi8, _mm_or_si128,
            _mm_set1_epi8,
        };
        // SAFETY: SSE2 is in the x86-64 baseline; the load reads the 16 bytes of `b` (unaligned
        // loads are allowed).
        let hits = |b: &[u8; 16]| unsafe {
            let x = _mm_loadu_si128(b.as_ptr().cast::<__m128i>());
            // x <= 0x1f (unsigned) iff min(x, 0x1f) == x.
            let hit = _mm_or_si128(
                _mm_or_si128(
                    _mm_cmpeq_epi8(x, _mm_set1_epi8(b'"' as i8)),
                    _mm_cmpeq_epi8(x, _mm_set1_epi8(b'\\' as i8)),
                ),
                _mm_cmpeq_epi8(_mm_min_epu8(x, _mm_set1_epi8(0x1f)), x),
            );
            _mm_movemask_epi8(hit) as u32
        };
        let mut at = 0;
        while at + 16 <= s.len() {
            let mask = hits(s[at..at + 16].try_into().expect("16 bytes"));
            if mask != 0 {
                return Some(at + mask.trailing_zeros() as usize);
            }
            at += 16;
        }
        // The last 0..16 bytes (a whole short string, e.g. an OCSF key): copied into a block of
        // plain bytes, so one more step answers for them.
        let rest = &s[at..];
        if rest.is_empty() {
            return None;
        }
        let mut block = [b'a'; 16];
        block[..rest.len()].copy_from_slice(rest);
        let mask = hits(&block);
        (mask != 0).then(|| at + mask.trailing_zeros() as usize)
    }
    #[cfg(not(target_arch = "x86_64"))]
    special_swar(s)
}

/// [`special`] eight bytes at a time (other architectures; tests): in `(x - n…n) & !x & 0x80…80` the lowest flagged byte is
/// always one below `n` (a borrow only runs upwards), so the lowest flag of the three tests is
/// the first such byte.
#[cfg_attr(target_arch = "x86_64", allow(dead_code))]
#[inline]
fn special_swar(s: &[u8]) -> Option<usize> {
    const ONES: u64 = u64::from_ne_bytes([1; 8]);
    const HIGH: u64 = ONES << 7;
    let below = |x: u64, n: u64| x.wrapping_sub(ONES * n) & !x & HIGH;
    let mut at = 0;
    while let Some(w) = s.get(at..at + 8) {
        let x = u64::from_le_bytes(w.try_into().expect("8 bytes"));
        let m =
            below(x, 0x20) | below(x ^ (ONES * u64::from(b'"')), 1) | below(x ^ (ONES * u64::from(b'\\')), 1);
        if m != 0 {
            return Some(at + m.trailing_zeros() as usize / 8);
        }
        at += 8;
    }
    s[at..].iter().position(|&c| c < 0x20 || c == b'"' || c == b'\\').map(|p| at + p)
}

/// A plain JSON string starting at `i` (the byte after its opening quote) of `line`: its
/// contents and the index after its closing quote. `None` for escapes and control characters
/// (left to serde).
#[inline(always)]
fn plain_string(line: &str, i: usize) -> Option<(&str, usize)> {
    let b = line.as_bytes();
    let end = i + special(b.get(i..)?)?;
    if b[end] != b'"' {
        return None;
    }
    // Between two ASCII quotes of a valid UTF-8 line: a valid UTF-8 slice.
    Some((line.get(i..end)?, end + 1))
}

/// A replayed record, parsed from its line without building a JSON tree: the fields rules and
/// re-judging read, borrowed from the line where it has no escapes, and `ancestry`. Duplicate
/// keys keep the last value, as `serde_json::Value` does.
#[derive(Debug, Default, PartialEq)]
pub struct ReplayRecord<'a> {
    fields: [Field<'a>; KEPT.len()],
    ancestry: Vec<i64>,
    /// Whether the line was a JSON object at all.
    object: bool,
}

impl<'a> ReplayRecord<'a> {
    /// Parses one line. Errors are those of `serde_json` (not JSON, trailing characters).
    pub fn parse(line: &'a str) -> Result<Self, serde_json::Error> {
        match Self::parse_flat(line) {
            Some(r) => Ok(r),
            None => serde_json::from_str(line),
        }
    }

    /// The common case read without serde's machinery: a flat object whose values are strings
    /// without escapes, non-negative integers, booleans or null. `None` for anything else —
    /// nested values, escapes, numbers of other forms, and every malformed line — which
    /// [`ReplayRecord::parse`] then hands to `serde_json` (so errors, and every odd case, read
    /// as before). What it accepts, it reads as `serde_json` does (a test compares both).
    fn parse_flat(line: &'a str) -> Option<Self> {
        let b = line.as_bytes();
        let ws = |mut i: usize| {
            while i < b.len() && matches!(b[i], b' ' | b'\n' | b'\t' | b'\r') {
                i += 1;
            }
            i
        };
        let string = |i: usize| plain_string(line, i);
        let mut r = ReplayRecord { object: true, ..Default::default() };
        let mut i = ws(0);
        if b.get(i) != Some(&b'{') {
            return None;
        }
        i = ws(i + 1);
        if b.get(i) == Some(&b'}') {
            return (ws(i + 1) == b.len()).then_some(r);
        }
        loop {
            if b.get(i) != Some(&b'"') {
                return None;
            }
            let (key, next) = string(i + 1)?;
            i = ws(next);
            if b.get(i) != Some(&b':') {
                return None;
            }
            i = ws(i + 1);
            let (value, next) = match *b.get(i)? {
                b'"' => {
                    let (s, next) = string(i + 1)?;
                    (Field::Str(Cow::Borrowed(s)), next)
                }
                b'0' => {
                    if b.get(i + 1).is_some_and(|c| c.is_ascii_digit()) {
                        return None;
                    }
                    (Field::Num(0u64.into()), i + 1)
                }
                b'1'..=b'9' => {
                    let mut n: u64 = 0;
                    let mut j = i;
                    while let Some(d) = b.get(j).filter(|c| c.is_ascii_digit()) {
                        n = n.checked_mul(10)?.checked_add(u64::from(d - b'0'))?;
                        j += 1;
                    }
                    (Field::Num(n.into()), j)
                }
                b't' if b[i..].starts_with(b"true") => (Field::Other, i + 4),
                b'f' if b[i..].starts_with(b"false") => (Field::Other, i + 5),
                b'n' if b[i..].starts_with(b"null") => (Field::Other, i + 4),
                _ => return None,
            };
            // A number must end here (no fraction or exponent), a literal must not run on.
            if b.get(next).is_some_and(|c| !matches!(c, b' ' | b'\n' | b'\t' | b'\r' | b',' | b'}')) {
                return None;
            }
            match key {
                // Read through their own visitors (an object, a list): serde's way.
                "intent" | "ancestry" => return None,
                "intent_sha256" => {}
                _ => {
                    if let Some(s) = slot(key) {
                        r.fields[s] = value;
                    }
                }
            }
            i = ws(next);
            match b.get(i)? {
                b',' => i = ws(i + 1),
                b'}' => return (ws(i + 1) == b.len()).then_some(r),
                _ => return None,
            }
        }
    }

    /// Whether the line held a JSON object (anything else is not a record).
    pub fn is_object(&self) -> bool {
        self.object
    }
}

impl<'de: 'a, 'a> de::Deserialize<'de> for ReplayRecord<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = ReplayRecord<'a>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<Self::Value, A::Error> {
                let mut r = ReplayRecord { object: true, ..Default::default() };
                // Keys as borrowed strings: no allocation for a key without escapes.
                while let Some(key) = a.next_key::<Field<'de>>()? {
                    let key = key.as_str().unwrap_or_default();
                    if key == "intent" {
                        let i: IntentObject<'a> = a.next_value()?;
                        r.fields[INTENT] = i.text;
                        r.fields[INTENT_SHA256] = i.sha256;
                    } else if key == "intent_sha256" {
                        // Not a record key: the rule field is `intent.sha256`.
                        a.next_value::<IgnoredAny>()?;
                    } else if let Some(i) = slot(key) {
                        r.fields[i] = a.next_value()?;
                    } else if key == "ancestry" {
                        let list: AncestryList = a.next_value()?;
                        r.ancestry = list.0;
                    } else {
                        a.next_value::<IgnoredAny>()?;
                    }
                }
                Ok(r)
            }
            // Not an object: still valid JSON, but not a record; nothing to read.
            fn visit_borrowed_str<E>(self, _: &'de str) -> Result<Self::Value, E> {
                Ok(ReplayRecord::default())
            }
            fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
                Ok(ReplayRecord::default())
            }
            fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
                Ok(ReplayRecord::default())
            }
            fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
                Ok(ReplayRecord::default())
            }
            fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
                Ok(ReplayRecord::default())
            }
            fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
                Ok(ReplayRecord::default())
            }
            fn visit_unit<E>(self) -> Result<Self::Value, E> {
                Ok(ReplayRecord::default())
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut a: A) -> Result<Self::Value, A::Error> {
                while a.next_element::<IgnoredAny>()?.is_some() {}
                Ok(ReplayRecord::default())
            }
        }
        d.deserialize_any(V(std::marker::PhantomData))
    }
}

/// `call_start`'s `intent` object: its `text` and `sha256` (anything else reads as absent).
#[derive(Default)]
struct IntentObject<'a> {
    text: Field<'a>,
    sha256: Field<'a>,
}

impl<'de: 'a, 'a> de::Deserialize<'de> for IntentObject<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = IntentObject<'a>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<Self::Value, A::Error> {
                let mut i = IntentObject::default();
                while let Some(key) = a.next_key::<Field<'de>>()? {
                    match key.as_str().unwrap_or_default() {
                        "text" => i.text = a.next_value()?,
                        "sha256" => i.sha256 = a.next_value()?,
                        _ => {
                            a.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                Ok(i)
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut a: A) -> Result<Self::Value, A::Error> {
                while a.next_element::<IgnoredAny>()?.is_some() {}
                Ok(IntentObject::default())
            }
            fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
                Ok(IntentObject::default())
            }
            fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
                Ok(IntentObject::default())
            }
            fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
                Ok(IntentObject::default())
            }
            fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
                Ok(IntentObject::default())
            }
            fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
                Ok(IntentObject::default())
            }
            fn visit_unit<E>(self) -> Result<Self::Value, E> {
                Ok(IntentObject::default())
            }
        }
        d.deserialize_any(V(std::marker::PhantomData))
    }
}

/// `ancestry` as `Value::as_array` + `filter_map(as_i64)` reads it: a non-list is empty.
struct AncestryList(Vec<i64>);

impl<'de> de::Deserialize<'de> for AncestryList {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = <Value as de::Deserialize>::deserialize(d)?;
        Ok(AncestryList(
            v.as_array().map(|a| a.iter().filter_map(Value::as_i64).collect()).unwrap_or_default(),
        ))
    }
}

impl RecordView for ReplayRecord<'_> {
    fn str_field(&self, name: &str) -> Option<&str> {
        self.fields[slot(name)?].as_str()
    }
    fn int_field(&self, name: &str) -> Option<i64> {
        self.fields[slot(name)?].as_i64()
    }
    fn u64_field(&self, name: &str) -> Option<u64> {
        self.fields[slot(name)?].as_u64()
    }
    fn ancestry(&self) -> Vec<i64> {
        self.ancestry.clone()
    }
    /// Only the kept fields: replay parses the whole line as JSON instead when a rule uses
    /// `event` (see [`super::RuleSet::uses_event`]).
    fn json(&self) -> Value {
        let mut m = serde_json::Map::new();
        let mut intent = serde_json::Map::new();
        for (i, f) in self.fields.iter().enumerate() {
            let value = match f {
                Field::Str(s) => Value::from(s.as_ref()),
                Field::Num(n) => Value::Number(n.clone()),
                Field::Other => continue,
            };
            match i {
                INTENT => intent.insert("text".into(), value),
                INTENT_SHA256 => intent.insert("sha256".into(), value),
                _ => m.insert(KEPT[i].to_string(), value),
            };
        }
        if !intent.is_empty() {
            m.insert("intent".into(), Value::Object(intent));
        }
        Value::Object(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    /// Every documented field reads the same through each view as through the JSON tree.
    #[test]
    fn views_agree_with_the_json_tree() {
        let rec = AuditRecord {
            v: 2,
            seq: 7,
            time: "2026-01-01T00:00:00.000000001Z".into(),
            task: "t\"1".into(),
            kind: crate::audit::Kind::Connect,
            decision: Some(Decision::Deny),
            action: Some("refuse"),
            rule: Some("network.egress"),
            ancestry: Some(vec![5, 1]),
            pid: Some(5),
            ppid: Some(1),
            addr: Some("10.0.0.9".into()),
            port: Some(443),
            protocol: Some("tcp".into()),
            comm: Some("cu\\rl".into()),
            uid: Some(0),
            cgroup_id: Some(u64::MAX),
            exit_status: Some(-1),
            prev: Some("00".into()),
            ..Default::default()
        };
        let start = AuditRecord {
            kind: crate::audit::Kind::CallStart,
            call: Some("t/c\"1".into()),
            call_name: Some("fetch".into()),
            parent: Some("t".into()),
            depth: Some(1),
            intent: Some(crate::audit::Intent::new(b"get \"it\"", true, 4096)),
            ..rec.clone()
        };
        let digest = AuditRecord {
            intent: Some(crate::audit::Intent::new(b"secret plan", false, 4096)),
            ..start.clone()
        };
        for r in [&rec, &start, &digest] {
            agree(r);
        }
    }

    fn agree(rec: &AuditRecord) {
        let line = serde_json::to_string(rec).unwrap();
        let tree: Value = serde_json::from_str(&line).unwrap();
        let live = LiveRecord { rec, line: &line };
        let replay = ReplayRecord::parse(&line).unwrap();
        let whole = crate::audit::ocsf::Fields::parse(&line).unwrap().unwrap();
        for f in super::super::STRING_FIELDS {
            assert_eq!(live.str_field(f), tree.str_field(f), "{f}");
            assert_eq!(replay.str_field(f), tree.str_field(f), "{f}");
            assert_eq!(whole.str_field(f), tree.str_field(f), "{f}");
        }
        for f in super::super::INT_FIELDS {
            assert_eq!(live.int_field(f), tree.int_field(f), "{f}");
            assert_eq!(replay.int_field(f), tree.int_field(f), "{f}");
            assert_eq!(whole.int_field(f), tree.int_field(f), "{f}");
        }
        for f in ["seq", "pid"] {
            assert_eq!(live.u64_field(f), tree.u64_field(f), "{f}");
            assert_eq!(replay.u64_field(f), tree.u64_field(f), "{f}");
            assert_eq!(whole.u64_field(f), tree.u64_field(f), "{f}");
        }
        assert_eq!(whole.ancestry(), tree.ancestry());
        assert_eq!(whole.json(), tree);
        assert_eq!(live.str_field("parent"), replay.str_field("parent"));
        assert_eq!(live.str_field("intent_sha256").is_some(), rec.intent.is_some());
        assert_eq!(live.ancestry(), tree.ancestry());
        assert_eq!(replay.ancestry(), tree.ancestry());
        assert_eq!(live.json(), tree);
    }

    /// A call's fields, and `call_start`'s nested intent, read as rules see them.
    #[test]
    fn call_fields_read_through_every_view() {
        let line = r#"{"v":2,"seq":3,"kind":"call_start","call":"job/c1","call_name":"fetch","parent":"job","intent":{"sha256":"ab12","text":"get the page","truncated":false}}"#;
        let tree: Value = serde_json::from_str(line).unwrap();
        let replay = ReplayRecord::parse(line).unwrap();
        for v in [&tree as &dyn RecordView, &replay] {
            assert_eq!(v.str_field("call"), Some("job/c1"));
            assert_eq!(v.str_field("call_name"), Some("fetch"));
            assert_eq!(v.str_field("parent"), Some("job"));
            assert_eq!(v.str_field("intent"), Some("get the page"));
            assert_eq!(v.str_field("intent_sha256"), Some("ab12"));
        }
        // Digest only (`evidence.intent: digest`): the text reads as absent.
        let digest = r#"{"kind":"call_start","intent":{"sha256":"ab12","truncated":false}}"#;
        let r = ReplayRecord::parse(digest).unwrap();
        assert_eq!(r.str_field("intent"), None);
        assert_eq!(r.str_field("intent_sha256"), Some("ab12"));
        assert_eq!(r.json()["intent"]["sha256"], "ab12");
    }

    #[test]
    fn slots_follow_the_kept_names() {
        for (i, k) in KEPT.iter().enumerate() {
            assert_eq!(slot(k), Some(i), "{k}");
        }
        assert_eq!(slot("hash"), None);
    }

    /// The word-at-a-time scan finds the first quote, backslash or control byte.
    #[test]
    fn special_bytes_are_found_first() {
        for filler in [b'a', b' ', b'!', b'#', b'[', b']', 0x7f, 0x80, 0xff] {
            for len in 0..40 {
                let plain = vec![filler; len];
                let first = |s: &[u8]| s.iter().position(|&c| c < 0x20 || c == b'"' || c == b'\\');
                assert_eq!(special(&plain), first(&plain));
                for at in 0..len {
                    for c in 0..=255u8 {
                        let mut s = plain.clone();
                        s[at] = c;
                        assert_eq!(special(&s), first(&s), "{s:?}");
                        // And a second special byte later on does not hide the first.
                        if at + 3 < len {
                            s[at + 3] = b'"';
                            assert_eq!(special(&s), first(&s), "{s:?}");
                        }
                        assert_eq!(special_swar(&s), first(&s), "{s:?}");
                    }
                }
            }
        }
    }

    /// The flat reader accepts only what serde accepts, and reads it as serde does: every
    /// truncation and many one-byte changes of typical lines.
    #[test]
    fn the_flat_reader_agrees_with_serde() {
        let lines = [
            r#"{"cgroup_id":12345,"comm":"warden-bench","decision":"allow","exe":"/usr/local/bin/warden-bench","hash":"9e37","kind":"connect","pid":1003,"port":40000,"protocol":"tcp","seq":18446744073709551615,"task":"storm","time":"2026-12-03T10:00:01.000001000Z","uid":0,"v":2,"ok":true,"no":false,"x":null}"#,
            r#" { "kind" : "exec" , "path":"/bin/true","pid":0 , "kind":"open","port":7}  "#,
            r#"{"v":2,"exit_status":-1,"kind":"exit"}"#,
            r#"{"v":2,"kind":"exec","ancestry":[1,2],"intent":{"text":"a"}}"#,
            r#"{"v":2,"kind":"e\"x","path":"a\u0041"}"#,
            r#"{"port":1.5,"pid":1e3,"seq":18446744073709551616,"uid":01}"#,
            r#"{}"#,
            "{\"a\":\"\u{e9}t\u{e9}\",\"kind\":\"\u{1F600}\"}",
        ];
        let check = |line: &str| {
            let slow: Result<ReplayRecord<'_>, _> = serde_json::from_str(line);
            if let Some(fast) = ReplayRecord::parse_flat(line) {
                assert_eq!(Some(&fast), slow.as_ref().ok(), "{line}");
            }
            assert_eq!(ReplayRecord::parse(line).ok(), slow.ok(), "{line}");
        };
        for line in lines {
            check(line);
            for end in 0..line.len() {
                if let Some(l) = line.get(..end) {
                    check(l);
                }
            }
            for at in 0..line.len() {
                for c in [
                    " ", "\"", "\\", "{", "}", ",", ":", "0", "1", "-", ".", "e", "t", "n", "x", "\t",
                    "\u{1}",
                ] {
                    if line.is_char_boundary(at) {
                        let mut l = line.to_string();
                        if l.is_char_boundary(at + 1) {
                            l.replace_range(at..at + 1, c);
                            check(&l);
                        }
                        let mut l = line.to_string();
                        l.insert_str(at, c);
                        check(&l);
                    }
                }
            }
        }
    }

    #[test]
    fn replay_records_read_odd_lines_like_the_json_tree() {
        for line in [
            r#"{"kind":"exec","kind":"open","pid":"5","port":1.5,"path":null,"ancestry":"x"}"#,
            r#"{"pid":-3,"seq":18446744073709551615,"ancestry":[1,"a",2.0,3],"extra":{"a":[1,{}]}}"#,
            r#"[1,2]"#,
            r#""str""#,
            r#"{"kind":"call_start","call":"t/c1","call_name":"fe\"tch","parent":"t","intent":{"sha256":"ab","text":"get \"x\"","truncated":false}}"#,
            r#"{"intent":"str","intent_sha256":"zz","call":5}"#,
            r#"{"intent":{"text":1,"sha256":["a"],"x":{}},"intent":{"sha256":"cd"}}"#,
            r#"{"intent":[{"text":"a"}],"call_name":null}"#,
        ] {
            let tree: Value = serde_json::from_str(line).unwrap();
            let r = ReplayRecord::parse(line).unwrap();
            assert_eq!(r.is_object(), tree.is_object(), "{line}");
            // OCSF replay reads a line into all its fields and gives those to rules.
            let whole = crate::audit::ocsf::Fields::parse(line).unwrap();
            assert_eq!(whole.is_some(), tree.is_object(), "{line}");
            if let Some(w) = &whole {
                for f in super::super::STRING_FIELDS {
                    assert_eq!(w.str_field(f), tree.str_field(f), "{line} {f}");
                }
                for f in super::super::INT_FIELDS.iter().chain(&["seq", "pid", "v"]) {
                    assert_eq!(w.int_field(f), tree.int_field(f), "{line} {f}");
                    assert_eq!(w.u64_field(f), tree.u64_field(f), "{line} {f}");
                }
                assert_eq!(w.ancestry(), tree.ancestry(), "{line}");
                assert_eq!(&w.json(), &tree, "{line}");
            }
            for f in super::super::STRING_FIELDS {
                assert_eq!(r.str_field(f), tree.str_field(f), "{line} {f}");
            }
            for f in super::super::INT_FIELDS {
                assert_eq!(r.int_field(f), tree.int_field(f), "{line} {f}");
                assert_eq!(r.u64_field(f), tree.u64_field(f), "{line} {f}");
            }
            assert_eq!(r.ancestry(), tree.ancestry(), "{line}");
        }
        assert!(ReplayRecord::parse("{\"a\":1} x").is_err());
        assert!(ReplayRecord::parse("{\"a\":").is_err());
    }
}
