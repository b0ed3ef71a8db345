//! Client paths, normalised and confined: nothing a client writes can name a key
//! outside its home.

use std::fmt;

/// S3's limit on key length, in bytes.
const MAX_KEY_BYTES: usize = 1024;

/// A normalised absolute path inside a user's home, e.g. "/shows/ep1.mp4" ("/" is home).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct VirtualPath {
    /// Segments without empty, "." or ".." entries.
    segments: Vec<String>,
}

/// Why a client path was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// ".." above "/".
    #[error("path {0:?} leaves your home directory")]
    EscapesHome(String),
    /// NUL or other control characters.
    #[error("path {0:?} contains control characters")]
    ControlCharacter(String),
    /// Longer than S3 keys may be.
    #[error("path is longer than S3's 1024-byte key limit")]
    TooLong,
}

impl VirtualPath {
    /// The home directory itself.
    pub fn root() -> VirtualPath {
        VirtualPath {
            segments: Vec::new(),
        }
    }

    /// Normalises a client path ("a/./b/../c", "/x//y"); relative paths start at home.
    pub fn parse(path: &str) -> Result<VirtualPath, PathError> {
        if path.chars().any(char::is_control) {
            return Err(PathError::ControlCharacter(path.escape_debug().to_string()));
        }
        let mut segments: Vec<String> = Vec::new();
        for segment in path.split(['/', '\\']) {
            match segment {
                "" | "." => {}
                ".." => {
                    if segments.pop().is_none() {
                        return Err(PathError::EscapesHome(path.to_string()));
                    }
                }
                s => segments.push(s.to_string()),
            }
        }
        let p = VirtualPath { segments };
        if p.relative().len() > MAX_KEY_BYTES {
            return Err(PathError::TooLong);
        }
        Ok(p)
    }

    /// True for "/".
    pub fn is_root(&self) -> bool {
        self.segments.is_empty()
    }

    /// The path without its leading "/": "shows/ep1.mp4", "" for home.
    pub fn relative(&self) -> String {
        self.segments.join("/")
    }

    /// The last segment, "" for home.
    pub fn file_name(&self) -> &str {
        self.segments.last().map_or("", String::as_str)
    }

    /// The key prefix that lists this directory's children: "shows/" ("" for home).
    pub fn dir_prefix(&self) -> String {
        if self.is_root() {
            String::new()
        } else {
            format!("{}/", self.relative())
        }
    }

    /// The parent directory ("/" stays "/").
    pub fn parent(&self) -> VirtualPath {
        let mut segments = self.segments.clone();
        segments.pop();
        VirtualPath { segments }
    }
}

impl fmt::Display for VirtualPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "/{}", self.relative())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises() {
        let p = VirtualPath::parse("/a/./b//c/../d.mp4").expect("valid");
        assert_eq!(p.to_string(), "/a/b/d.mp4");
        assert_eq!(p.relative(), "a/b/d.mp4");
        assert_eq!(p.file_name(), "d.mp4");
        assert_eq!(p.parent().dir_prefix(), "a/b/");
        assert!(VirtualPath::parse("/").expect("root").is_root());
        assert_eq!(VirtualPath::parse("x").expect("relative").to_string(), "/x");
    }

    #[test]
    fn refuses_escapes_and_control_characters() {
        assert!(matches!(
            VirtualPath::parse("/../etc/passwd"),
            Err(PathError::EscapesHome(_))
        ));
        assert!(matches!(
            VirtualPath::parse("a/../../b"),
            Err(PathError::EscapesHome(_))
        ));
        assert!(matches!(
            VirtualPath::parse("..\\x"),
            Err(PathError::EscapesHome(_))
        ));
        assert!(matches!(
            VirtualPath::parse("a\0b"),
            Err(PathError::ControlCharacter(_))
        ));
        assert!(matches!(
            VirtualPath::parse(&"x".repeat(1100)),
            Err(PathError::TooLong)
        ));
    }
}
