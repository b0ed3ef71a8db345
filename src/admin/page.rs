//! `GET /`: the status page, one file embedded in the binary. It holds no data: it calls the
//! API with the token from `/#token=…` (or one it asks for), so serving it needs none.

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Response, StatusCode};

/// The page: HTML, CSS and plain JavaScript, nothing fetched from elsewhere.
pub const PAGE: &str = include_str!("page.html");

/// What the page may do: run its own inline script and style, call this origin, nothing
/// else (no outside host, no framing, no forms posted anywhere).
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'unsafe-inline'; \
    style-src 'unsafe-inline'; connect-src 'self'; img-src 'self' data:; base-uri 'none'; \
    form-action 'none'; frame-ancestors 'none'";

/// The page with headers that keep it to itself.
pub fn serve() -> Response<Full<Bytes>> {
    let mut resp = super::respond(StatusCode::OK, "text/html; charset=utf-8", PAGE);
    let headers = resp.headers_mut();
    headers.insert(
        hyper::header::CONTENT_SECURITY_POLICY,
        hyper::header::HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(
        hyper::header::REFERRER_POLICY,
        hyper::header::HeaderValue::from_static("no-referrer"),
    );
    headers.insert(
        hyper::header::X_FRAME_OPTIONS,
        hyper::header::HeaderValue::from_static("DENY"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::PAGE;

    /// The page must work with no outside network: no URL with a scheme or a host, no
    /// `//host` reference, no `@import`; its script talks to this origin only.
    #[test]
    fn the_page_references_no_outside_host() {
        let lower = PAGE.to_ascii_lowercase();
        for needle in ["http:", "https:", "ws:", "wss:", "ftp:", "@import", "xmlns"] {
            assert!(!lower.contains(needle), "the page contains {needle:?}");
        }
        for (i, _) in lower.match_indices("//") {
            // Comments in the script (`// …`) are fine; `//host` in an attribute or a
            // string is not.
            let before = lower[..i].chars().last().unwrap_or(' ');
            assert!(
                !matches!(before, '"' | '\'' | '(' | '=' | '`'),
                "a protocol-relative reference at byte {i}: {}",
                &PAGE[i.saturating_sub(20)..(i + 20).min(PAGE.len())]
            );
        }
        for attribute in ["src=", "href=", "action="] {
            for (i, _) in lower.match_indices(attribute) {
                let value = &lower[i + attribute.len()..];
                let value = value.trim_start_matches(['"', '\'']);
                assert!(
                    value.starts_with('#')
                        || value.starts_with("data:")
                        || value.starts_with("api/")
                        || value.starts_with('"')
                        || value.starts_with('\''),
                    "{attribute} points somewhere: {}",
                    &PAGE[i..(i + 40).min(PAGE.len())]
                );
            }
        }
    }

    #[test]
    fn the_page_never_writes_api_data_as_html() {
        let code: String = PAGE
            .lines()
            .filter(|l| !l.trim_start().starts_with("//"))
            .collect::<Vec<_>>()
            .join("\n");
        for sink in [
            "innerhtml",
            "outerhtml",
            "insertadjacenthtml",
            "document.write",
        ] {
            assert!(
                !code.to_ascii_lowercase().contains(sink),
                "the page uses {sink}: file names are chosen by clients"
            );
        }
    }
}
