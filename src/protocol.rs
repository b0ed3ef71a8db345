//! The front-ends the bridge speaks: a domain type shared by sessions, uploads, the audit
//! trail, completions and metrics labels, so none of them depends on another for it.

/// Which front-end a session or upload came through; the `protocol` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// Plain FTP.
    Ftp,
    /// FTP with TLS on the control connection.
    Ftps,
    /// SFTP over SSH.
    Sftp,
}

impl Protocol {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Ftp => "ftp",
            Protocol::Ftps => "ftps",
            Protocol::Sftp => "sftp",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Protocol;

    #[test]
    fn the_label_and_the_audit_field_agree() {
        for p in [Protocol::Ftp, Protocol::Ftps, Protocol::Sftp] {
            let json = serde_json::to_string(&p).expect("a unit variant serialises");
            assert_eq!(json, format!("\"{}\"", p.as_str()));
        }
    }
}
