//! The configuration reference checked against the code: every key the parser accepts is
//! documented, and every key the documentation names is accepted.
//!
//! The code's keys are not listed here a second time: a recording [`Deserializer`] walks
//! [`RawConfig`] itself, taking the field names serde hands to `deserialize_struct` and
//! descending into nested tables, arrays of tables and optional values.
//!
//! The documented keys are the first column of every table whose header's first cell ends in
//! "key", in `docs/configuration.md` (full dotted names, e.g. `ftp.tls.cert`) and in
//! `docs/connectors-reference.md` (keys of one connector step, e.g. `parts.size`). In that
//! column each `` `name` `` or `` `name = …` `` is a key; `` `name = { a, b }` `` (or
//! `[{ a, b }]`) also documents `name.a` and `name.b`; `` `[table]` `` and `` `[[table]]` ``
//! name a table, and a table named in `configuration.md` holds the step keys of
//! `connectors-reference.md` (`[notify.auth]`, `[notify.create]`, `[[notify.steps]]`).

use super::RawConfig;
use serde::Deserialize;
use serde::de::{
    self, DeserializeSeed, Deserializer, IntoDeserializer, MapAccess, SeqAccess, Visitor,
};
use std::cell::RefCell;
use std::collections::BTreeMap;

/// The reference of every key but connector steps'.
const CONFIGURATION_MD: &str = include_str!("../../docs/configuration.md");
/// The reference of a connector step's keys.
const CONNECTORS_MD: &str = include_str!("../../docs/connectors-reference.md");

/// What a dotted key holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// A value: string, number, boolean, list of values or a map with free-form names.
    Value,
    /// A table (or array of tables) whose keys are fixed.
    Table,
}

/// Every dotted key `T` accepts, with what it holds; array elements share their array's name.
fn keys_of<T: for<'de> Deserialize<'de>>() -> BTreeMap<String, Kind> {
    let keys = RefCell::new(BTreeMap::new());
    T::deserialize(Recorder {
        path: String::new(),
        keys: &keys,
    })
    .expect("the recorder hands every field a value of the type it asks for");
    keys.into_inner()
}

/// A deserializer that records the keys asked for instead of reading any document.
#[derive(Clone)]
struct Recorder<'a> {
    /// The dotted key being deserialized ("" at the top).
    path: String,
    keys: &'a RefCell<BTreeMap<String, Kind>>,
}

impl Recorder<'_> {
    fn record(&self, kind: Kind) {
        if !self.path.is_empty() {
            self.keys.borrow_mut().insert(self.path.clone(), kind);
        }
    }

    fn child(&self, field: &str) -> Self {
        let path = if self.path.is_empty() {
            field.to_string()
        } else {
            format!("{}.{field}", self.path)
        };
        Recorder {
            path,
            keys: self.keys,
        }
    }
}

impl<'de> Deserializer<'de> for Recorder<'_> {
    type Error = de::value::Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        self.record(Kind::Value);
        visitor.visit_unit()
    }

    fn deserialize_bool<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        self.record(Kind::Value);
        visitor.visit_bool(false)
    }

    fn deserialize_i64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        self.record(Kind::Value);
        visitor.visit_i64(0)
    }

    fn deserialize_u64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        self.record(Kind::Value);
        visitor.visit_u64(0)
    }

    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        self.record(Kind::Value);
        visitor.visit_str("")
    }

    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        self.deserialize_str(visitor)
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        visitor.visit_some(self)
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        // One element is enough to learn what the array holds.
        visitor.visit_seq(OneElement(Some(self)))
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        // A map's names are the user's (headers, metadata, extract): the map is one key.
        self.record(Kind::Value);
        visitor.visit_map(Fields {
            fields: &[],
            next: 0,
            recorder: self,
            spanned: false,
        })
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        // `Spanned<T>` is a struct to serde but no table to the user: it stands for its value.
        let spanned = serde_spanned::__unstable::is_spanned(name, fields);
        if !spanned {
            self.record(Kind::Table);
        }
        visitor.visit_map(Fields {
            fields,
            next: 0,
            recorder: self,
            spanned,
        })
    }

    serde::forward_to_deserialize_any! {
        i8 i16 i32 i128 u8 u16 u32 u128 f32 f64 char bytes byte_buf unit unit_struct
        newtype_struct tuple tuple_struct enum identifier ignored_any
    }
}

/// An array of one element, recorded under the array's own key.
struct OneElement<'a>(Option<Recorder<'a>>);

impl<'de> SeqAccess<'de> for OneElement<'_> {
    type Error = de::value::Error;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, Self::Error> {
        self.0.take().map(|r| seed.deserialize(r)).transpose()
    }
}

/// A struct's fields, each given once, its value recorded under its dotted key.
struct Fields<'a> {
    fields: &'static [&'static str],
    next: usize,
    recorder: Recorder<'a>,
    /// The fields are `Spanned`'s: its value is recorded under the key itself, the span
    /// fields are just numbers.
    spanned: bool,
}

impl<'de> MapAccess<'de> for Fields<'_> {
    type Error = de::value::Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Self::Error> {
        let Some(field) = self.fields.get(self.next) else {
            return Ok(None);
        };
        // Borrowed: `Spanned` takes only borrowed field names.
        seed.deserialize(de::value::BorrowedStrDeserializer::new(field))
            .map(Some)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(
        &mut self,
        seed: V,
    ) -> Result<V::Value, Self::Error> {
        let field = self.fields[self.next];
        self.next += 1;
        if !self.spanned {
            seed.deserialize(self.recorder.child(field))
        } else if field == serde_spanned::__unstable::VALUE_FIELD {
            seed.deserialize(self.recorder.clone())
        } else {
            seed.deserialize(0_u64.into_deserializer())
        }
    }
}

/// A key the documentation names, and where.
#[derive(Debug)]
struct Documented {
    /// Dotted key (relative to a step in `connectors-reference.md`).
    key: String,
    /// Written as `[key]` or `[[key]]`.
    table: bool,
    /// 1-based line in its file.
    line: usize,
}

/// The keys in the first column of every key table of `markdown`.
fn documented(markdown: &str) -> Vec<Documented> {
    let lines: Vec<&str> = markdown.lines().collect();
    let mut found = Vec::new();
    let mut in_key_table = false;
    for (i, line) in lines.iter().enumerate() {
        let Some(row) = line.trim().strip_prefix('|') else {
            in_key_table = false;
            continue;
        };
        let first_cell = row.split('|').next().unwrap_or("").trim();
        let next_is_separator = lines
            .get(i + 1)
            .is_some_and(|l| l.trim_start().starts_with("|-") || l.trim_start().starts_with("| -"));
        if next_is_separator {
            in_key_table = first_cell.to_ascii_lowercase().ends_with("key");
            continue;
        }
        if !in_key_table || first_cell.starts_with('-') {
            continue;
        }
        // Between backticks: odd pieces of the split.
        for span in first_cell.split('`').skip(1).step_by(2) {
            for (key, table) in keys_in_span(span) {
                found.push(Documented {
                    key,
                    table,
                    line: i + 1,
                });
            }
        }
    }
    found
}

/// `name`, `name = …`, `name = { a, b }`, `name = [{ a, b }]`, `[table]`, `[[table]]`.
fn keys_in_span(span: &str) -> Vec<(String, bool)> {
    let span = span.trim();
    if span.starts_with('[') {
        let name = span.trim_matches(|c| c == '[' || c == ']');
        return vec![(name.to_string(), true)];
    }
    let end = span
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '.'))
        .unwrap_or(span.len());
    let name = &span[..end];
    if name.is_empty() {
        return Vec::new();
    }
    let mut keys = vec![(name.to_string(), false)];
    let value = span[end..].trim_start().strip_prefix('=').map(str::trim);
    if let Some(inner) = value
        .and_then(|v| v.trim_start_matches('[').strip_prefix('{'))
        .and_then(|v| v.split('}').next())
        .filter(|inner| !inner.contains(['=', '"', '\'']))
    {
        for sub in inner.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            keys.push((format!("{name}.{sub}"), false));
        }
    }
    keys
}

/// The problems between the code's keys and the documented ones, one line each.
fn mismatches(configuration_md: &str, connectors_md: &str) -> Vec<String> {
    let code = keys_of::<RawConfig>();
    let steps = documented(connectors_md);
    let mut docs: BTreeMap<String, String> = BTreeMap::new();
    let mut problems = Vec::new();
    for d in documented(configuration_md) {
        let at = format!("docs/configuration.md line {}", d.line);
        if d.table {
            if code.get(&d.key) != Some(&Kind::Table) {
                problems.push(format!("{at} names [{}], which is no table", d.key));
            }
            for s in &steps {
                let at = format!("docs/connectors-reference.md line {}", s.line);
                docs.insert(format!("{}.{}", d.key, s.key), at);
            }
        }
        docs.insert(d.key, at);
    }
    for (key, at) in &docs {
        if !code.contains_key(key) {
            problems.push(format!(
                "{at} documents `{key}`, which the config does not accept"
            ));
        }
    }
    for (key, kind) in &code {
        if *kind == Kind::Value && !docs.contains_key(key) {
            problems.push(format!(
                "`{key}` is accepted but not documented (docs/configuration.md, or docs/connectors-reference.md for a connector step's keys)"
            ));
        }
    }
    problems
}

#[test]
fn the_recorder_sees_values_tables_and_arrays_of_tables() {
    let keys = keys_of::<RawConfig>();
    assert_eq!(keys.get("server.data_dir"), Some(&Kind::Value));
    assert_eq!(keys.get("ftp.tls"), Some(&Kind::Table));
    assert_eq!(keys.get("ftp.tls.required"), Some(&Kind::Value));
    assert_eq!(keys.get("notify.headers"), Some(&Kind::Value));
    assert_eq!(keys.get("notify.steps.rules.outcome"), Some(&Kind::Value));
    assert_eq!(keys.get("users.notify.vars"), Some(&Kind::Value));
    assert!(!keys.contains_key("notify.headers.authorization"));
    assert!(
        !keys.keys().any(|k| k.contains("serde_spanned")),
        "{keys:?}"
    );
}

#[test]
fn spans_name_keys_subkeys_and_tables() {
    let names = |span| {
        keys_in_span(span)
            .into_iter()
            .map(|(k, _)| k)
            .collect::<Vec<_>>()
    };
    assert_eq!(names("ftp.tls.cert"), ["ftp.tls.cert"]);
    assert_eq!(names("json = \"…\""), ["json"]);
    assert_eq!(names("form = { field = \"…\" }"), ["form"]);
    assert_eq!(
        names("rules = [{ status, step }]"),
        ["rules", "rules.status", "rules.step"]
    );
    assert_eq!(
        keys_in_span("[[notify.steps]]"),
        [("notify.steps".into(), true)]
    );
    assert!(names("\"data\"").is_empty());
}

#[test]
fn every_accepted_key_is_documented_and_every_documented_key_accepted() {
    let problems = mismatches(CONFIGURATION_MD, CONNECTORS_MD);
    assert!(problems.is_empty(), "\n{}", problems.join("\n"));
}

#[test]
fn a_missing_or_invented_row_is_caught() {
    let without = CONFIGURATION_MD
        .lines()
        .filter(|l| !l.starts_with("| `server.login_timeout`"))
        .collect::<Vec<_>>()
        .join("\n");
    assert_ne!(without, CONFIGURATION_MD.trim_end(), "the row exists");
    let problems = mismatches(&without, CONNECTORS_MD);
    assert!(
        problems
            .iter()
            .any(|p| p.contains("`server.login_timeout` is accepted but not documented")),
        "{problems:?}"
    );
    let invented = CONNECTORS_MD.replace(
        "| `message` |",
        "| `retry_after` | invented |\n| `message` |",
    );
    let problems = mismatches(CONFIGURATION_MD, &invented);
    assert!(
        problems
            .iter()
            .any(|p| p.contains("`notify.steps.retry_after`, which the config does not accept")),
        "{problems:?}"
    );
}
