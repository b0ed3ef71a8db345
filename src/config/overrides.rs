//! `INGEST_BRIDGE__SECTION__KEY=value` environment variables override keys of the config file
//! (twelve-factor): `INGEST_BRIDGE__STORAGE__MEMORY_LIMIT=1GiB` sets `storage.memory_limit`,
//! `INGEST_BRIDGE__FTP__TLS__CERT=/tls/tls.crt` sets `ftp.tls.cert`.
//!
//! The overrides are written into the TOML document before it is validated, so an override
//! is checked exactly like the file's own keys. A value is taken as TOML (`true`, `8`,
//! `["a", "b"]`) when it parses as such and the key is not a string in the file; otherwise
//! as a string, so `1GiB` and `0.0.0.0:2121` need no quotes.

use super::Problem;
use toml_edit::{DocumentMut, Item, Value};

/// What every override variable starts with.
pub const PREFIX: &str = "INGEST_BRIDGE__";

/// The config text with the overrides written in, and how to read problems against it.
#[derive(Debug, Default)]
pub struct Applied {
    /// The document to validate.
    pub text: String,
    /// `(dotted key, variable)` for each override.
    pub keys: Vec<(String, String)>,
    /// 1-based lines of `text` that overrides added (they shift later lines of the file).
    added_lines: Vec<usize>,
}

/// Marks a line an override wrote, so it can be found in the rendered document.
const MARK: &str = "# set by ";

impl Applied {
    /// `text` with no override written in.
    fn unchanged(text: &str) -> Applied {
        Applied {
            text: text.to_string(),
            ..Applied::default()
        }
    }

    /// The variable that set `key`, if one did.
    pub fn variable_for(&self, key: &str) -> Option<&str> {
        self.keys
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, var)| var.as_str())
    }

    /// The file's own line for `line` of [`Applied::text`]; `None` for a line an override added.
    pub fn file_line(&self, line: usize) -> Option<usize> {
        if self.added_lines.contains(&line) {
            return None;
        }
        Some(line - self.added_lines.iter().filter(|&&l| l < line).count())
    }
}

/// Writes every `INGEST_BRIDGE__…` variable of `vars` into `text`. A text that is not TOML is
/// returned as it is: the parser reports it.
pub fn apply(
    text: &str,
    vars: impl IntoIterator<Item = (String, String)>,
) -> Result<Applied, Vec<Problem>> {
    let mut vars: Vec<(String, String)> = vars
        .into_iter()
        .filter(|(name, _)| name.starts_with(PREFIX))
        .collect();
    if vars.is_empty() {
        return Ok(Applied::unchanged(text));
    }
    vars.sort();
    let Ok(mut doc) = text.parse::<DocumentMut>() else {
        return Ok(Applied::unchanged(text));
    };
    let mut problems = Vec::new();
    let mut keys = Vec::new();
    let mut added = Vec::new();
    for (var, value) in vars {
        let path: Vec<String> = var[PREFIX.len()..]
            .split("__")
            .map(str::to_ascii_lowercase)
            .collect();
        let dotted = path.join(".");
        let problem = |message: String| Problem {
            key: dotted.clone(),
            line: None,
            message: format!("{message} (from the environment variable {var})"),
        };
        if path.len() < 2 || path.iter().any(String::is_empty) {
            problems.push(problem(format!(
                "{var} does not name a key: write {PREFIX}SECTION__KEY, e.g. {PREFIX}STORAGE__MEMORY_LIMIT=1GiB"
            )));
            continue;
        }
        match set(&mut doc, &path, &value, &var) {
            Ok(inserted) => {
                if inserted {
                    added.push(var.clone());
                }
                keys.push((dotted, var));
            }
            Err(message) => problems.push(problem(message)),
        }
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    let text = doc.to_string();
    let added_lines = text
        .lines()
        .enumerate()
        .filter(|(_, line)| {
            added
                .iter()
                .any(|var| line.ends_with(&format!("{MARK}{var}")))
        })
        .map(|(i, _)| i + 1)
        .collect();
    Ok(Applied {
        text,
        keys,
        added_lines,
    })
}

/// Sets `path` to `value` in `doc`; returns whether the key is new (on a line of its own).
fn set(doc: &mut DocumentMut, path: &[String], value: &str, var: &str) -> Result<bool, String> {
    let (key, sections) = path.split_last().ok_or("empty key")?;
    let mut table = doc.as_table_mut() as &mut dyn toml_edit::TableLike;
    let mut in_inline = false;
    for (depth, section) in sections.iter().enumerate() {
        let item = table
            .entry(section)
            .or_insert(Item::Table(toml_edit::Table::new()));
        in_inline |= item.is_inline_table();
        let listed = item.is_array_of_tables();
        table = item.as_table_like_mut().ok_or_else(|| {
            let name = sections[..=depth].join(".");
            if listed {
                format!(
                    "[[{name}]] entries cannot be set from the environment; set them in the file"
                )
            } else {
                format!("{name} is a value, not a section")
            }
        })?;
    }
    let existing = table.get(key);
    if existing.is_some_and(|item| item.is_table_like() || item.is_array_of_tables()) {
        return Err(format!(
            "{} is a section, not a value: name one of its keys",
            path.join(".")
        ));
    }
    let was_string = existing.and_then(Item::as_value).is_some_and(Value::is_str);
    let inserted = existing.is_none() && !in_inline;
    let mut new = if was_string {
        Value::from(value)
    } else {
        value
            .parse::<Value>()
            .unwrap_or_else(|_| Value::from(value))
    };
    if !in_inline {
        new.decor_mut().set_suffix(format!(" {MARK}{var}"));
    }
    table.insert(key, Item::Value(new));
    Ok(inserted)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn values_are_strings_unless_they_read_as_toml_for_a_key_that_is_not_a_string() {
        let text = "[storage]\nbucket = \"a\"\npart_size = \"16MiB\"\n\n[ftp]\nlisten = \"x\"\n";
        let applied = apply(
            text,
            vars(&[
                ("INGEST_BRIDGE__STORAGE__BUCKET", "123"),
                ("INGEST_BRIDGE__STORAGE__UPLOAD_CONCURRENCY", "8"),
                ("INGEST_BRIDGE__SFTP__ENABLED", "false"),
                ("INGEST_BRIDGE__FTP__TLS__CERT", "/tls/tls.crt"),
                ("INGEST_BRIDGE_CONFIG", "/not/an/override"),
            ]),
        )
        .expect("applies");
        let doc: toml::Table = toml::from_str(&applied.text).expect("valid TOML");
        assert_eq!(doc["storage"]["bucket"].as_str(), Some("123"));
        assert_eq!(doc["storage"]["upload_concurrency"].as_integer(), Some(8));
        assert_eq!(doc["storage"]["part_size"].as_str(), Some("16MiB"));
        assert_eq!(doc["sftp"]["enabled"].as_bool(), Some(false));
        assert_eq!(doc["ftp"]["tls"]["cert"].as_str(), Some("/tls/tls.crt"));
        assert_eq!(
            applied.variable_for("storage.upload_concurrency"),
            Some("INGEST_BRIDGE__STORAGE__UPLOAD_CONCURRENCY")
        );
        assert_eq!(applied.keys.len(), 4);
    }

    #[test]
    fn lines_of_the_file_are_found_again_past_added_keys() {
        let text = "[storage]\nbucket = \"a\"\n\n[ftp]\nlisten = \"x\"\n";
        let applied = apply(
            text,
            vars(&[("INGEST_BRIDGE__STORAGE__MEMORY_LIMIT", "1GiB")]),
        )
        .expect("applies");
        let listen = applied
            .text
            .lines()
            .position(|l| l.starts_with("listen"))
            .expect("kept")
            + 1;
        assert_eq!(applied.file_line(listen), Some(5));
        let added = applied
            .text
            .lines()
            .position(|l| l.starts_with("memory_limit"))
            .expect("added")
            + 1;
        assert_eq!(applied.file_line(added), None);
    }

    #[test]
    fn bad_names_and_shapes_are_refused_with_what_to_write() {
        let text = "[storage]\nbucket = \"a\"\n\n[[users]]\nusername = \"u\"\n";
        let problems = apply(
            text,
            vars(&[
                ("INGEST_BRIDGE__STORAGE", "x"),
                ("INGEST_BRIDGE__STORAGE____BUCKET", "x"),
                ("INGEST_BRIDGE__USERS__USERNAME", "x"),
                ("INGEST_BRIDGE__STORAGE__BUCKET__NAME", "x"),
            ]),
        )
        .expect_err("refused");
        let said = |key: &str, what: &str| {
            problems
                .iter()
                .any(|p| p.key == key && p.message.contains(what))
        };
        assert_eq!(problems.len(), 4, "{problems:?}");
        assert!(said("storage", "does not name a key"), "{problems:?}");
        assert!(
            said("storage..bucket", "does not name a key"),
            "{problems:?}"
        );
        assert!(said("storage.bucket.name", "is a value, not a section"));
        assert!(said("users.username", "cannot be set from the environment"));
    }

    #[test]
    fn no_variables_leave_the_text_as_it_is() {
        let text = "not toml [";
        assert_eq!(apply(text, Vec::new()).expect("nothing to do").text, text);
    }
}
