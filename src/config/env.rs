//! Values from the environment (CONTRACT §6): in any string value of the config, `${NAME}`
//! is the environment variable NAME and `${NAME:-default}` is NAME or, when NAME is unset or
//! empty, `default`; `$${` writes a literal `${`. Keys, tokens and base URLs can so stay out
//! of the file (Kubernetes secrets, systemd credentials) and one file serves every account.

use super::Problem;
use std::ops::Range;
use toml_edit::{Item, TableLike, Value};

/// Replaces every `${NAME}` and `${NAME:-default}` with the variable (or the default) from
/// `lookup`; `$${` writes a literal `${`. Any other `$` is kept as written (secrets and argon2
/// hashes contain them). Fails, naming the variable, when one without a default is unset or
/// empty, or a `${` is not closed.
pub fn expand_env(text: &str, lookup: impl Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let tail = &rest[at..];
        if let Some(after) = tail.strip_prefix("$${") {
            out.push_str("${");
            rest = after;
        } else if let Some(after) = tail.strip_prefix("${") {
            let Some(end) = after.find('}') else {
                return Err(format!("\"${{\" without a closing \"}}\" in {text:?}"));
            };
            let reference = &after[..end];
            let (name, default) = match reference.split_once(":-") {
                Some((name, default)) => (name, Some(default)),
                None => (reference, None),
            };
            let valid = !name.is_empty()
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                && !name.starts_with(|c: char| c.is_ascii_digit());
            if !valid {
                return Err(format!(
                    "\"${{{reference}}}\" is not an environment variable name (letters, digits, '_'; a default follows \":-\")"
                ));
            }
            match (lookup(name).filter(|v| !v.is_empty()), default) {
                (Some(value), _) => out.push_str(&value),
                (None, Some(default)) => out.push_str(default),
                (None, None) => {
                    return Err(format!(
                        "environment variable {name} is not set or empty (the config refers to it as ${{{name}}}; write ${{{name}:-default}} for a default)"
                    ));
                }
            }
            rest = &after[end + 1..];
        } else {
            out.push('$');
            rest = &tail[1..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// `text` with [`expand_env`] applied to every string value (in tables, inline tables and
/// arrays, at any depth). Only the expanded values are rewritten, so the rest of the text,
/// and the lines problems are reported on, stay as written. A text that is not TOML is
/// returned as it is (the parser reports it). Problems name each value's key and line.
pub fn expand_document(
    text: &str,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<String, Vec<Problem>> {
    if !text.contains("${") {
        return Ok(text.to_string());
    }
    let Ok(doc) = toml_edit::ImDocument::parse(text) else {
        return Ok(text.to_string());
    };
    let mut walk = Walk {
        text,
        lookup: &lookup,
        problems: Vec::new(),
        edits: Vec::new(),
    };
    walk.table(doc.as_table(), "");
    if !walk.problems.is_empty() {
        return Err(walk.problems);
    }
    let mut out = text.to_string();
    // Later spans first, so earlier ones stay valid.
    walk.edits
        .sort_by_key(|(span, _)| std::cmp::Reverse(span.start));
    for (span, expanded) in walk.edits {
        let repr = toml_edit::Formatted::new(expanded)
            .display_repr()
            .to_string();
        out.replace_range(span, &repr);
    }
    Ok(out)
}

/// One pass over a parsed document: the values to rewrite, and the problems.
struct Walk<'a, F> {
    text: &'a str,
    lookup: &'a F,
    problems: Vec<Problem>,
    /// The span of a string value's representation, and its expanded value.
    edits: Vec<(Range<usize>, String)>,
}

impl<F: Fn(&str) -> Option<String>> Walk<'_, F> {
    fn table(&mut self, table: &dyn TableLike, prefix: &str) {
        for (key, item) in table.iter() {
            let dotted = if prefix.is_empty() {
                key.to_string()
            } else {
                format!("{prefix}.{key}")
            };
            match item {
                Item::Value(value) => self.value(value, &dotted),
                Item::Table(table) => self.table(table, &dotted),
                Item::ArrayOfTables(tables) => {
                    for table in tables.iter() {
                        self.table(table, &dotted);
                    }
                }
                Item::None => {}
            }
        }
    }

    fn value(&mut self, value: &Value, key: &str) {
        match value {
            Value::String(text) if text.value().contains('$') => {
                let span = text.span();
                match expand_env(text.value(), self.lookup) {
                    Ok(expanded) if expanded == *text.value() => {}
                    Ok(expanded) => match span {
                        Some(span) => self.edits.push((span, expanded)),
                        None => self.problem(key, None, "cannot locate this value to expand it"),
                    },
                    Err(message) => self.problem(key, span, &message),
                }
            }
            Value::Array(array) => {
                for value in array.iter() {
                    self.value(value, key);
                }
            }
            Value::InlineTable(table) => self.table(table, key),
            _ => {}
        }
    }

    fn problem(&mut self, key: &str, span: Option<Range<usize>>, message: &str) {
        let line = span.map(|s| {
            self.text[..s.start.min(self.text.len())]
                .lines()
                .count()
                .max(1)
        });
        self.problems.push(Problem {
            key: key.to_string(),
            line,
            message: message.to_string(),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::expand_env;

    fn lookup(name: &str) -> Option<String> {
        (name == "TOKEN").then(|| "s3cr$t".to_string())
    }

    #[test]
    fn expands_braced_names_only() {
        assert_eq!(
            expand_env("Bearer ${TOKEN}", lookup).as_deref(),
            Ok("Bearer s3cr$t")
        );
        assert_eq!(
            expand_env("${TOKEN}${TOKEN}", lookup).as_deref(),
            Ok("s3cr$ts3cr$t")
        );
        assert_eq!(
            expand_env("a$b $TOKEN $", lookup).as_deref(),
            Ok("a$b $TOKEN $")
        );
        assert_eq!(expand_env("$${TOKEN}", lookup).as_deref(), Ok("${TOKEN}"));
        assert_eq!(
            expand_env("$argon2id$v=19$m=19456", lookup).as_deref(),
            Ok("$argon2id$v=19$m=19456")
        );
    }

    #[test]
    fn unset_unclosed_and_bad_names_are_errors() {
        let unset = expand_env("${MISSING}", lookup).unwrap_err();
        assert!(
            unset.contains("MISSING") && unset.contains("not set"),
            "{unset}"
        );
        let empty = expand_env("${EMPTY}", |_| Some(String::new())).unwrap_err();
        assert!(
            empty.contains("EMPTY") && empty.contains("empty"),
            "{empty}"
        );
        assert!(expand_env("${TOKEN", lookup).is_err());
        assert!(expand_env("${}", lookup).is_err());
        assert!(expand_env("${A-B}", lookup).is_err());
        assert!(expand_env("${1A}", lookup).is_err());
    }

    #[test]
    fn defaults_apply_when_unset_or_empty() {
        assert_eq!(
            expand_env("${MISSING:-https://api.example.com}/v1", lookup).as_deref(),
            Ok("https://api.example.com/v1")
        );
        assert_eq!(expand_env("${TOKEN:-x}", lookup).as_deref(), Ok("s3cr$t"));
        assert_eq!(
            expand_env("[${EMPTY:-}]", |_| Some(String::new())).as_deref(),
            Ok("[]")
        );
        assert!(expand_env("${:-x}", lookup).is_err());
    }

    #[test]
    fn every_string_of_a_document_is_expanded() {
        let text = "[a]\nx = \"${TOKEN}\"\nlist = [\"${MISSING:-d}\", 3]\n[[b]]\nt = { k = \"$${TOKEN}\" }\nm = \'\'\'\n${TOKEN}\nline\'\'\'\n";
        let out = super::expand_document(text, lookup).unwrap();
        let doc: toml::Table = toml::from_str(&out).unwrap();
        assert_eq!(doc["a"]["x"].as_str(), Some("s3cr$t"));
        assert_eq!(doc["a"]["list"][0].as_str(), Some("d"));
        assert_eq!(doc["b"][0]["t"]["k"].as_str(), Some("${TOKEN}"));
        assert_eq!(doc["b"][0]["m"].as_str(), Some("s3cr$t\nline"));
        let problems = super::expand_document("[s]\nk = [\"${MISSING}\"]\n", lookup).unwrap_err();
        assert_eq!(problems[0].key, "s.k");
        assert_eq!(problems[0].line, Some(2));
        assert!(problems[0].message.contains("MISSING"));
        let untouched = "# $ comment\nk = \"no refs\"\n";
        assert_eq!(
            super::expand_document(untouched, lookup).unwrap(),
            untouched
        );
    }
}
