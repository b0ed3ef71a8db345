//! Content-Type of an upload: from the file name, else from the first bytes.

/// The MIME type for `name`, sniffing `head` when the extension says nothing.
pub fn detect(name: &str, head: &[u8]) -> String {
    if let Some(mime) = mime_guess::from_path(name).first() {
        return mime.essence_str().to_string();
    }
    infer::get(head)
        .map(|t| t.mime_type().to_string())
        .unwrap_or_else(|| "application/octet-stream".to_string())
}

#[cfg(test)]
mod tests {
    #[test]
    fn by_name_then_by_magic() {
        assert_eq!(super::detect("ep1.mp4", b""), "video/mp4");
        assert_eq!(
            super::detect("noext", b"\x89PNG\r\n\x1a\n0000"),
            "image/png"
        );
        assert_eq!(super::detect("noext", b"hello"), "application/octet-stream");
    }
}
