//! Client paths, normalised and confined: nothing a client writes can name a key
//! outside its home, and every key it can name is one S3 accepts. "." and ".." are
//! resolved and empty segments dropped (clients send "./x" and "a//b"), so no key ever
//! holds them; names are stored in Unicode NFC, so "é" is one key however a client's OS
//! composes it.

use std::fmt;
use unicode_normalization::UnicodeNormalization;

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
    /// Bytes that are not UTF-8 (FTP's parser turns them into U+FFFD).
    #[error(
        "path {0:?} is not valid UTF-8; set the client's file name encoding to UTF-8 (lftp: set ftp:charset utf-8; FileZilla: force UTF-8)"
    )]
    NotUtf8(String),
    /// Longer than S3 keys may be (home prefix included).
    #[error("path is too long: its S3 key would be {0} bytes, over S3's 1024-byte limit")]
    TooLong(usize),
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
        VirtualPath::parse_under(path, "")
    }

    /// Like [`parse`](Self::parse), for keys that start with `home`: `home` + path must fit
    /// S3's key limit.
    pub fn parse_under(path: &str, home: &str) -> Result<VirtualPath, PathError> {
        if path.chars().any(char::is_control) {
            return Err(PathError::ControlCharacter(path.escape_debug().to_string()));
        }
        // No client names a file with U+FFFD on purpose: it is what lossy decoding left of
        // bytes in another encoding, and storing it would lose the real name for good.
        if path.contains(char::REPLACEMENT_CHARACTER) {
            return Err(PathError::NotUtf8(path.to_string()));
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
                s => segments.push(s.nfc().collect()),
            }
        }
        let p = VirtualPath { segments };
        let key_bytes = home.len() + p.relative().len();
        if key_bytes > MAX_KEY_BYTES {
            return Err(PathError::TooLong(key_bytes));
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
            Err(PathError::TooLong(1100))
        ));
        assert!(VirtualPath::parse_under(&"x".repeat(1020), "").is_ok());
        assert!(matches!(
            VirtualPath::parse_under(&"x".repeat(1020), "users/al/"),
            Err(PathError::TooLong(1029))
        ));
        assert!(matches!(
            VirtualPath::parse("a\u{7f}b"),
            Err(PathError::ControlCharacter(_))
        ));
        assert!(matches!(
            VirtualPath::parse("caf\u{fffd}.mov"),
            Err(PathError::NotUtf8(_))
        ));
    }

    #[test]
    fn stores_names_in_nfc() {
        let decomposed = VirtualPath::parse("/cafe\u{301}/e\u{301}te\u{301}.mp4").expect("valid");
        assert_eq!(decomposed.relative(), "caf\u{e9}/\u{e9}t\u{e9}.mp4");
        let composed = VirtualPath::parse("/caf\u{e9}/\u{e9}t\u{e9}.mp4").expect("valid");
        assert_eq!(decomposed, composed);
    }
}
