//! Who may call the API, and which requests are refused as cross-site.
//!
//! - **Token.** With a token set, every route but `/livez`, `/api/openapi.json`, `/login` and
//!   the assets needs the token: `Authorization: Bearer TOKEN`, or the cookie the dashboard's
//!   sign-in sets (HttpOnly, SameSite=Strict); compared in constant time. Without it a page
//!   redirects to the sign-in form, and anything else is answered 401.
//! - **Cross-site actions.** A web page the user visits can make their browser send requests
//!   to the service. So an action (any method but `GET`, `HEAD` and `OPTIONS`) is refused with
//!   403 when the browser says it comes from another site (`Sec-Fetch-Site`), or when its
//!   `Origin` is not the service's own; and actions take JSON bodies only, which a page cannot
//!   send to another origin without the service's consent (it gives none: no CORS).
//! - **DNS rebinding.** Without a token the service listens on loopback only; a page whose
//!   host name was made to resolve to 127.0.0.1 reaches it as "same origin", so without a
//!   token a request must name this machine in `Host` (`localhost`, `127.0.0.1`, `[::1]`).

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use subtle::ConstantTimeEq;

use crate::{ApiError, Service};

/// The cookie that carries the token for the dashboard's pages.
pub(crate) const COOKIE: &str = "loom_token";

/// Whether two tokens are the same, in time independent of where they differ.
pub(crate) fn same(given: &str, token: &str) -> bool {
    bool::from(given.as_bytes().ct_eq(token.as_bytes()))
}

/// The middleware every route passes through.
pub async fn guard(State(service): State<Arc<Service>>, request: Request, next: Next) -> Response {
    let path = request.uri().path();
    match check(&service, request.method(), path, request.headers()) {
        Ok(()) => next.run(request).await,
        // A page asked for without the token: the sign-in form, then back.
        Err(e)
            if e.status() == 401
                && request.method() == Method::GET
                && !path.starts_with("/api/") =>
        {
            let back = request
                .uri()
                .path_and_query()
                .map_or("/workflows", |p| p.as_str());
            let next: String = form_urlencoded::byte_serialize(back.as_bytes()).collect();
            Redirect::to(&format!("/login?next={next}")).into_response()
        }
        Err(e) => e.into_response(),
    }
}

/// The token in the request's cookie, if it carries one.
fn cookie_token(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .and_then(|(_, value)| {
            percent_encoding::percent_decode_str(value)
                .decode_utf8()
                .ok()
                .map(|v| v.into_owned())
        })
}

fn check(
    service: &Service,
    method: &Method,
    path: &str,
    headers: &HeaderMap,
) -> Result<(), ApiError> {
    let open =
        matches!(path, "/livez" | "/api/openapi.json" | "/login") || path.starts_with("/assets/");
    match service.token() {
        Some(token) if !open => {
            let bearer = headers
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
                .map(str::to_owned);
            match bearer.or_else(|| cookie_token(headers)) {
                None => {
                    return Err(ApiError::unauthorized(
                        "this service needs a token: send Authorization: Bearer TOKEN",
                    ));
                }
                Some(given) if !same(&given, token) => {
                    return Err(ApiError::unauthorized("the token is not this service's"));
                }
                Some(_) => {}
            }
        }
        Some(_) => {}
        None => {
            let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
            if !host.is_some_and(is_this_machine) {
                return Err(ApiError::forbidden(format!(
                    "Host {:?} is not this machine: without a token the service answers \
                     requests for localhost only",
                    host.unwrap_or("")
                )));
            }
        }
    }
    let safe = matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS);
    if !safe {
        if let Some(site) = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok())
            && !matches!(site, "same-origin" | "none")
        {
            return Err(ApiError::forbidden(format!(
                "an action sent from another site ({site}) is refused"
            )));
        }
        if let Some(origin) = headers.get(header::ORIGIN) {
            let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
            let origin = origin.to_str().unwrap_or("");
            let own = host.is_some_and(|host| {
                origin
                    .strip_prefix("http://")
                    .or_else(|| origin.strip_prefix("https://"))
                    .is_some_and(|o| o == host)
            });
            if !own {
                return Err(ApiError::forbidden(format!(
                    "an action from origin {origin:?} is refused: only the service's own pages \
                     may send them"
                )));
            }
        }
    }
    Ok(())
}

/// Whether a `Host` header names this machine: `localhost`, `127.0.0.1` or `[::1]`, with or
/// without a port.
fn is_this_machine(host: &str) -> bool {
    let name = if let Some(rest) = host.strip_prefix('[') {
        rest.split_once(']').map_or(rest, |(name, _)| name)
    } else {
        host.rsplit_once(':').map_or(host, |(name, _)| name)
    };
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn service(token: Option<&str>) -> Service {
        let store: Arc<dyn loom_storage::Storage> = Arc::new(loom_storage::MemoryStorage::new());
        Service::new(store, Arc::new(loom_core::Registry::new())).with_token(token.map(Into::into))
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn the_token_is_required_where_one_is_set() {
        let s = service(Some("s3cret"));
        let path = "/api/v1/workflows";
        let err = check(&s, &Method::GET, path, &headers(&[])).unwrap_err();
        assert_eq!(err.status(), 401);
        let wrong = headers(&[("authorization", "Bearer nope")]);
        assert_eq!(
            check(&s, &Method::GET, path, &wrong).unwrap_err().status(),
            401
        );
        let basic = headers(&[("authorization", "Basic czNjcmV0")]);
        assert_eq!(
            check(&s, &Method::GET, path, &basic).unwrap_err().status(),
            401
        );
        let right = headers(&[("authorization", "Bearer s3cret")]);
        assert!(check(&s, &Method::GET, path, &right).is_ok());
        assert!(check(&s, &Method::GET, "/livez", &headers(&[])).is_ok());
        assert!(check(&s, &Method::GET, "/api/openapi.json", &headers(&[])).is_ok());
        assert!(check(&s, &Method::GET, "/login", &headers(&[])).is_ok());
        assert!(check(&s, &Method::GET, "/assets/loom.css", &headers(&[])).is_ok());
        let cookie = headers(&[("cookie", "theme=dark; loom_token=s3cret")]);
        assert!(check(&s, &Method::GET, "/workflows", &cookie).is_ok());
        let stale = headers(&[("cookie", "loom_token=old")]);
        assert_eq!(
            check(&s, &Method::GET, "/workflows", &stale)
                .unwrap_err()
                .status(),
            401
        );
    }

    #[test]
    fn cross_site_actions_are_refused() {
        let s = service(None);
        let path = "/api/v1/workflows/x/cancel";
        let local = ("host", "127.0.0.1:8233");
        let ok = headers(&[
            local,
            ("origin", "http://127.0.0.1:8233"),
            ("sec-fetch-site", "same-origin"),
        ]);
        assert!(check(&s, &Method::POST, path, &ok).is_ok());
        assert!(
            check(&s, &Method::POST, path, &headers(&[local])).is_ok(),
            "curl sends neither"
        );
        for bad in [
            headers(&[local, ("origin", "http://evil.example")]),
            headers(&[local, ("origin", "null")]),
            headers(&[local, ("sec-fetch-site", "cross-site")]),
            headers(&[local, ("sec-fetch-site", "same-site")]),
        ] {
            assert_eq!(
                check(&s, &Method::POST, path, &bad).unwrap_err().status(),
                403,
                "{bad:?}"
            );
        }
        let read = headers(&[local, ("sec-fetch-site", "cross-site")]);
        assert!(check(&s, &Method::GET, "/api/v1/workflows", &read).is_ok());
    }

    #[test]
    fn without_a_token_only_this_machine_is_served() {
        let s = service(None);
        for host in [
            "127.0.0.1:8233",
            "localhost:8233",
            "LOCALHOST",
            "[::1]:8233",
            "127.0.0.1",
        ] {
            assert!(
                check(
                    &s,
                    &Method::GET,
                    "/api/v1/workflows",
                    &headers(&[("host", host)])
                )
                .is_ok(),
                "{host}"
            );
        }
        for host in [
            "evil.example:8233",
            "evil.example",
            "10.0.0.7:8233",
            "[2001:db8::1]:80",
        ] {
            let err = check(
                &s,
                &Method::GET,
                "/api/v1/workflows",
                &headers(&[("host", host)]),
            );
            assert_eq!(err.unwrap_err().status(), 403, "{host}");
        }
        let none = check(&s, &Method::GET, "/api/v1/workflows", &headers(&[]));
        assert_eq!(none.unwrap_err().status(), 403, "no Host is no machine");
        let with_token = service(Some("t"));
        let h = headers(&[
            ("host", "loom.internal:8233"),
            ("authorization", "Bearer t"),
        ]);
        assert!(check(&with_token, &Method::GET, "/api/v1/workflows", &h).is_ok());
    }
}
