//! Reading fields out of an API's answer: JSON or XML, by a dotted path (`data.items.0.id`).
//! For XML the path starts below the root element and array indices pick the n-th child of
//! that name, so `<xml><result><id>0_a</id></result></xml>` answers `result.id`. A name
//! with no exact match falls back to one that differs only in case, so the default error
//! path `message` also reads S3's `<Error><Message>` and a `{"Message": …}`.

use serde_json::Value;

/// A parsed response body.
pub enum Document {
    /// A JSON body.
    Json(Value),
    /// An XML body, kept as text and parsed per lookup.
    Xml(String),
    /// Neither.
    Other,
}

impl Document {
    /// Parses `body` as JSON, else XML, else nothing.
    pub fn parse(body: &[u8]) -> Document {
        if let Ok(v) = serde_json::from_slice::<Value>(body) {
            return Document::Json(v);
        }
        match std::str::from_utf8(body) {
            Ok(text) if text.trim_start().starts_with('<') => {
                if roxmltree::Document::parse(text).is_ok() {
                    Document::Xml(text.to_string())
                } else {
                    Document::Other
                }
            }
            _ => Document::Other,
        }
    }

    /// The value at `path`, if present (XML values are strings).
    pub fn get(&self, path: &str) -> Option<Value> {
        match self {
            Document::Json(v) => json_get(v, path).cloned(),
            Document::Xml(text) => xml_get(text, path).map(Value::String),
            Document::Other => None,
        }
    }

    /// The value at `path` as display text (strings unquoted).
    pub fn text(&self, path: &str) -> Option<String> {
        match self.get(path)? {
            Value::String(s) => Some(s),
            Value::Null => None,
            other => Some(other.to_string()),
        }
    }
}

fn json_get<'a>(mut v: &'a Value, path: &str) -> Option<&'a Value> {
    for segment in path.split('.').filter(|s| !s.is_empty()) {
        v = match v {
            Value::Object(map) => map.get(segment).or_else(|| {
                map.iter()
                    .find(|(key, _)| key.eq_ignore_ascii_case(segment))
                    .map(|(_, value)| value)
            })?,
            Value::Array(items) => items.get(segment.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(v)
}

fn xml_get(text: &str, path: &str) -> Option<String> {
    let doc = roxmltree::Document::parse(text).ok()?;
    let mut node = doc.root_element();
    let mut segments = path.split('.').filter(|s| !s.is_empty()).peekable();
    while let Some(name) = segments.next() {
        let index = match segments.peek().and_then(|s| s.parse::<usize>().ok()) {
            Some(i) => {
                segments.next();
                i
            }
            None => 0,
        };
        let named = |exact: bool| {
            node.children()
                .filter(move |c| {
                    let tag = c.tag_name().name();
                    c.is_element() && (tag == name || !exact && tag.eq_ignore_ascii_case(name))
                })
                .nth(index)
        };
        node = named(true).or_else(|| named(false))?;
    }
    let text: String = node
        .descendants()
        .filter(|d| d.is_text())
        .filter_map(|d| d.text())
        .collect();
    Some(text.trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_paths() {
        let d =
            Document::parse(br#"{"data":{"id":"e1","inputs":[{"url":"u0"},{"url":"u1"}],"n":3}}"#);
        assert_eq!(d.text("data.id").as_deref(), Some("e1"));
        assert_eq!(d.text("data.inputs.1.url").as_deref(), Some("u1"));
        assert_eq!(d.text("data.n").as_deref(), Some("3"));
        assert_eq!(d.text("data.missing"), None);
        assert_eq!(d.text("data.inputs.9.url"), None);
    }

    #[test]
    fn xml_paths() {
        let d = Document::parse(
            b"<?xml version=\"1.0\"?><xml><result><id>0_abc</id><item>a</item><item>b</item></result></xml>",
        );
        assert_eq!(d.text("result.id").as_deref(), Some("0_abc"));
        assert_eq!(d.text("result.item.1").as_deref(), Some("b"));
        assert_eq!(d.text("result.nope"), None);
    }

    #[test]
    fn names_fall_back_to_a_case_insensitive_match() {
        let s3 = Document::parse(
            b"<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>AccessDenied</Code><Message>Request has expired</Message></Error>",
        );
        assert_eq!(s3.text("message").as_deref(), Some("Request has expired"));
        let json =
            Document::parse(br#"{"Message":"upper","message2":"x","data":{"ID":"7","id":"8"}}"#);
        assert_eq!(json.text("message").as_deref(), Some("upper"));
        assert_eq!(
            json.text("data.id").as_deref(),
            Some("8"),
            "an exact match wins"
        );
        assert_eq!(json.text("data.Id").as_deref(), Some("7"));
    }

    #[test]
    fn an_empty_path_is_the_whole_answer() {
        // Kaltura's session.start answers a bare JSON string (format=1).
        let ks = Document::parse(br#""djJ8MTIzfDEyMw==""#);
        assert_eq!(ks.text("").as_deref(), Some("djJ8MTIzfDEyMw=="));
    }

    #[test]
    fn neither() {
        assert!(Document::parse(b"plain text").get("a").is_none());
        assert!(Document::parse(b"<unclosed").get("a").is_none());
    }
}
