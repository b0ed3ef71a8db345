//! Every route of the admin listener, in one table: the dispatcher matches requests against
//! it, and a test holds `openapi.json` to it, so the description cannot drift from the API.

use http::Method;

/// What a request asks for; path parameters are percent-decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// `GET /`: the status page.
    Page,
    /// `GET /api/v1/openapi.json`
    OpenApi,
    /// `GET /api/v1/status`
    Status,
    /// `GET /api/v1/transfers`
    Transfers,
    /// `GET /api/v1/sessions`
    Sessions,
    /// `DELETE /api/v1/sessions/{id}`
    CloseSession(String),
    /// `GET /api/v1/outbox`
    Outbox,
    /// `POST /api/v1/outbox/{id}/retry`
    Retry(String),
    /// `GET /api/v1/bans`
    Bans,
    /// `DELETE /api/v1/bans/{address}`
    LiftBan(String),
    /// `POST /api/v1/reload`
    Reload,
}

/// One route: method, path template (`{name}` is one path segment) and the name of its
/// action in metrics and the audit trail.
pub struct RouteSpec {
    /// The HTTP method.
    pub method: Method,
    /// The path as OpenAPI writes it.
    pub path: &'static str,
    /// The `action` label.
    pub action: &'static str,
}

/// Every route the listener serves.
pub const ROUTES: &[RouteSpec] = &[
    spec(Method::GET, "/", "page"),
    spec(Method::GET, "/api/v1/openapi.json", "openapi"),
    spec(Method::GET, "/api/v1/status", "status"),
    spec(Method::GET, "/api/v1/transfers", "list_transfers"),
    spec(Method::GET, "/api/v1/sessions", "list_sessions"),
    spec(Method::DELETE, "/api/v1/sessions/{id}", "close_session"),
    spec(Method::GET, "/api/v1/outbox", "list_outbox"),
    spec(Method::POST, "/api/v1/outbox/{id}/retry", "retry_outbox"),
    spec(Method::GET, "/api/v1/bans", "list_bans"),
    spec(Method::DELETE, "/api/v1/bans/{address}", "lift_ban"),
    spec(Method::POST, "/api/v1/reload", "reload"),
];

const fn spec(method: Method, path: &'static str, action: &'static str) -> RouteSpec {
    RouteSpec {
        method,
        path,
        action,
    }
}

/// Why a request matches no route.
#[derive(Debug, PartialEq, Eq)]
pub enum Unmatched {
    /// No route has this path.
    NotFound,
    /// The path exists with other methods (for `Allow`).
    Method(Vec<Method>),
}

/// The route `method` and `path` ask for, and its action name.
pub fn route(method: &Method, path: &str) -> Result<(Route, &'static str), Unmatched> {
    let mut allowed = Vec::new();
    for spec in ROUTES {
        let Some(params) = match_path(spec.path, path) else {
            continue;
        };
        // HEAD is GET without the body, which hyper drops for us.
        if spec.method != *method && !(spec.method == Method::GET && method == Method::HEAD) {
            allowed.push(spec.method.clone());
            continue;
        }
        let param = params.into_iter().next().unwrap_or_default();
        let route = match spec.action {
            "page" => Route::Page,
            "openapi" => Route::OpenApi,
            "status" => Route::Status,
            "list_transfers" => Route::Transfers,
            "list_sessions" => Route::Sessions,
            "close_session" => Route::CloseSession(param),
            "list_outbox" => Route::Outbox,
            "retry_outbox" => Route::Retry(param),
            "list_bans" => Route::Bans,
            "lift_ban" => Route::LiftBan(param),
            _ => Route::Reload,
        };
        return Ok((route, spec.action));
    }
    if allowed.is_empty() {
        Err(Unmatched::NotFound)
    } else {
        Err(Unmatched::Method(allowed))
    }
}

/// The decoded `{…}` segments when `path` fits `template`.
fn match_path(template: &str, path: &str) -> Option<Vec<String>> {
    let mut wanted = template.split('/');
    let mut given = path.split('/');
    let mut params = Vec::new();
    loop {
        match (wanted.next(), given.next()) {
            (None, None) => return Some(params),
            (Some(w), Some(g)) if w.starts_with('{') => {
                let decoded = percent_encoding::percent_decode_str(g)
                    .decode_utf8()
                    .ok()?
                    .into_owned();
                if decoded.is_empty() {
                    return None;
                }
                params.push(decoded);
            }
            (Some(w), Some(g)) if w == g => {}
            _ => return None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_match_with_decoded_parameters() {
        assert_eq!(route(&Method::GET, "/"), Ok((Route::Page, "page")));
        assert_eq!(
            route(&Method::DELETE, "/api/v1/bans/2001%3Adb8%3A%3A1"),
            Ok((Route::LiftBan("2001:db8::1".into()), "lift_ban"))
        );
        assert_eq!(
            route(&Method::POST, "/api/v1/outbox/abc/retry"),
            Ok((Route::Retry("abc".into()), "retry_outbox"))
        );
        assert_eq!(
            route(&Method::HEAD, "/api/v1/status"),
            Ok((Route::Status, "status"))
        );
    }

    #[test]
    fn other_paths_and_methods_are_told_apart() {
        assert_eq!(
            route(&Method::GET, "/api/v1/nothing"),
            Err(Unmatched::NotFound)
        );
        assert_eq!(
            route(&Method::GET, "/api/v1/sessions/"),
            Err(Unmatched::NotFound),
            "an empty id is no id"
        );
        assert_eq!(
            route(&Method::POST, "/api/v1/transfers"),
            Err(Unmatched::Method(vec![Method::GET]))
        );
        assert_eq!(
            route(&Method::GET, "/api/v1/outbox/%FF/retry"),
            Err(Unmatched::NotFound),
            "not UTF-8"
        );
    }

    /// `openapi.json` describes exactly the routes served, each under its action's name,
    /// and every schema it refers to exists.
    #[test]
    fn the_openapi_description_matches_the_routes() {
        let doc: serde_json::Value =
            serde_json::from_str(include_str!("openapi.json")).expect("openapi.json is JSON");
        assert!(doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")));
        let mut described = Vec::new();
        for (path, item) in doc["paths"].as_object().expect("paths") {
            for (method, operation) in item.as_object().expect("path item") {
                let id = operation["operationId"].as_str().expect("operationId");
                described.push((method.to_uppercase(), path.clone(), id.to_string()));
            }
        }
        let mut served: Vec<_> = ROUTES
            .iter()
            .map(|r| {
                (
                    r.method.to_string(),
                    r.path.to_string(),
                    r.action.to_string(),
                )
            })
            .collect();
        described.sort();
        served.sort();
        assert_eq!(described, served);

        let text = include_str!("openapi.json");
        for (i, _) in text.match_indices("#/components/schemas/") {
            let name: String = text[i + 21..]
                .chars()
                .take_while(|c| c.is_alphanumeric())
                .collect();
            assert!(
                doc["components"]["schemas"].get(&name).is_some(),
                "schema {name} is referred to but not defined"
            );
        }
    }
}
