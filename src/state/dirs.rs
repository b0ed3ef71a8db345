//! Directories clients made (`MKD`): S3 has no empty directories, so a directory made before
//! any file lands under it lives here, by its key prefix (`home/dir/`), until it is removed.

use super::StateError;

/// Made directories, keyed by prefix (`home/a/b/`, always ending in `/`).
#[async_trait::async_trait]
pub trait DirStore: Send + Sync + std::fmt::Debug {
    /// Remembers a made directory (nothing when it is already known).
    async fn add_dir(&self, prefix: String) -> Result<(), StateError>;

    /// Forgets the directory `prefix` and every made directory under it; whether `prefix`
    /// itself was known.
    async fn remove_dirs(&self, prefix: String) -> Result<bool, StateError>;

    /// Whether `prefix` is a made directory.
    async fn has_dir(&self, prefix: String) -> Result<bool, StateError>;

    /// Names of the made directories directly under `parent` (a prefix ending in `/`, or
    /// empty), in name order.
    async fn dirs_in(&self, parent: String) -> Result<Vec<String>, StateError>;
}

/// The parent prefix of a made directory's prefix: `a/b/` → `a/`, `a/` → ``.
pub(crate) fn parent_of(prefix: &str) -> &str {
    let trimmed = prefix.strip_suffix('/').unwrap_or(prefix);
    match trimmed.rfind('/') {
        Some(i) => &prefix[..=i],
        None => "",
    }
}

/// The name of a made directory under its parent: `a/b/` → `b`.
pub(crate) fn name_of(prefix: &str) -> &str {
    let trimmed = prefix.strip_suffix('/').unwrap_or(prefix);
    trimmed.rsplit('/').next().unwrap_or(trimmed)
}

#[cfg(test)]
mod tests {
    #[test]
    fn parents_and_names() {
        assert_eq!(super::parent_of("alice/a/b/"), "alice/a/");
        assert_eq!(super::parent_of("alice/"), "");
        assert_eq!(super::name_of("alice/a/b/"), "b");
        assert_eq!(super::name_of("alice/"), "alice");
    }
}
