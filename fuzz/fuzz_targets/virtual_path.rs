//! Client paths: never a panic, and every accepted path maps to a key S3 accepts and that
//! stays inside the home.
#![no_main]

use ingest_bridge_fuzz::path::VirtualPath;
use libfuzzer_sys::fuzz_target;
use unicode_normalization::UnicodeNormalization;

fuzz_target!(|data: &[u8]| {
    // The first byte picks a home prefix, as `[[users]].home` would set it.
    let long_home = "h/".repeat(300);
    let homes = ["", "alice/", "tenants/7/", long_home.as_str()];
    let (home, rest) = match data.split_first() {
        Some((h, rest)) => (homes[usize::from(*h) % homes.len()], rest),
        None => ("", data),
    };
    // FTP decodes lossily, SFTP strictly: both shapes reach the parser.
    let text = String::from_utf8_lossy(rest);
    let Ok(path) = VirtualPath::parse_under(&text, home) else {
        return;
    };
    let relative = path.relative();
    let key = format!("{home}{relative}");
    assert!(
        key.len() <= 1024,
        "key over S3's limit: {} bytes",
        key.len()
    );
    assert!(
        !relative.starts_with('/') && !relative.ends_with('/'),
        "{relative:?}"
    );
    for segment in relative.split('/').filter(|_| !path.is_root()) {
        assert!(
            !matches!(segment, "" | "." | ".."),
            "segment {segment:?} in {relative:?}"
        );
        assert!(!segment.contains('\\'), "{segment:?}");
    }
    assert!(!key.chars().any(char::is_control), "{key:?}");
    assert!(!key.contains(char::REPLACEMENT_CHARACTER), "{key:?}");
    assert_eq!(relative.nfc().collect::<String>(), relative, "not NFC");
    // Normalising is idempotent: the path the client is shown parses to itself.
    let again = VirtualPath::parse_under(&path.to_string(), home).expect("a shown path parses");
    assert_eq!(again, path);
    assert!(path.parent().to_string().len() <= path.to_string().len());
});
