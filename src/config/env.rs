//! `${NAME}` in secret-bearing config values, replaced by the environment variable, so
//! keys and tokens can stay out of the file (Kubernetes secrets, systemd credentials).

/// Replaces every `${NAME}` with `lookup(NAME)`; `$${` writes a literal `${`. Any other `$`
/// is kept as written (secrets and argon2 hashes contain them). Fails, naming the variable,
/// when one is unset or a `${` is not closed.
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
            let name = &after[..end];
            let valid = !name.is_empty()
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                && !name.starts_with(|c: char| c.is_ascii_digit());
            if !valid {
                return Err(format!(
                    "\"${{{name}}}\" is not an environment variable name (letters, digits, '_')"
                ));
            }
            let Some(value) = lookup(name) else {
                return Err(format!(
                    "environment variable {name} is not set (the config refers to it as ${{{name}}})"
                ));
            };
            out.push_str(&value);
            rest = &after[end + 1..];
        } else {
            out.push('$');
            rest = &tail[1..];
        }
    }
    out.push_str(rest);
    Ok(out)
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
        assert!(expand_env("${TOKEN", lookup).is_err());
        assert!(expand_env("${}", lookup).is_err());
        assert!(expand_env("${A-B}", lookup).is_err());
        assert!(expand_env("${1A}", lookup).is_err());
    }
}
