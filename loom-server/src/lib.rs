//! Loom's HTTP service: a JSON API over the [`Client`](loom_worker::Client), described by the
//! OpenAPI document it serves at `/api/openapi.json`, and a web dashboard over the same, for
//! `loom server` and for users' own binaries.
//!
//! This crate is the room for HTTP: routes, request and response shapes, authentication and
//! the protection of actions against cross-site requests. It must not hold rules of the store
//! (the `Client` and the `Storage` behind it decide what an operation does) nor open databases
//! (its caller hands it a store).
//!
//! Safe by default: [`check_bind`] refuses an address other than loopback unless a token is
//! set; with a token, every API call must carry it as `Authorization: Bearer TOKEN`. Actions
//! (`POST`) must send JSON and, when a browser sends them, come from the service's own origin
//! (see [`auth`]).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use loom_core::Registry;
use loom_storage::Storage;
use loom_worker::Client;

pub mod api;
pub mod auth;
mod error;
mod schedule_pages;
pub mod schedules;
mod ui;

pub use error::{ApiError, ErrorBody};

/// What the service serves: the store, the registry of the binary it runs in (for starting
/// workflows by name and listing types), and the token callers must present, if any.
#[derive(Clone)]
pub struct Service {
    client: Client,
    registry: Arc<Registry>,
    token: Option<Arc<str>>,
    samples: Arc<ui::Samples>,
    login_gate: Arc<tokio::sync::Mutex<()>>,
}

impl Service {
    /// A service over `store`, starting workflows by the types of `registry`.
    pub fn new(store: Arc<dyn Storage>, registry: Arc<Registry>) -> Self {
        Service {
            client: Client::new(store),
            registry,
            token: None,
            samples: Arc::default(),
            login_gate: Arc::default(),
        }
    }

    /// Requires `token` as a bearer token on every API call. An empty token is none.
    pub fn with_token(mut self, token: Option<String>) -> Self {
        self.token = token.filter(|t| !t.is_empty()).map(Arc::from);
        self
    }

    /// The routes: the API under `/api/v1`, the OpenAPI document at `/api/openapi.json`,
    /// liveness at `/livez`, and the dashboard everywhere else (`/workflows`, `/stats`,
    /// `/types`, `/login`).
    pub fn router(self) -> Router {
        let state = Arc::new(self);
        api::routes()
            .merge(ui::routes())
            .layer(axum::middleware::from_fn_with_state(
                state.clone(),
                auth::guard,
            ))
            .with_state(state)
    }

    /// Serves the routes on `listener` until `shutdown` resolves.
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        axum::serve(listener, self.router())
            .with_graceful_shutdown(shutdown)
            .await
    }

    pub(crate) fn client(&self) -> &Client {
        &self.client
    }

    pub(crate) fn registry(&self) -> &Registry {
        &self.registry
    }

    pub(crate) fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }

    pub(crate) fn samples(&self) -> &ui::Samples {
        &self.samples
    }

    /// Failed sign-ins wait their turn here.
    pub(crate) fn login_gate(&self) -> &tokio::sync::Mutex<()> {
        &self.login_gate
    }
}

/// Whether the service may listen on `addr`: always on loopback; elsewhere only with a token,
/// since anyone who reaches the address could otherwise start, signal and cancel workflows.
pub fn check_bind(addr: SocketAddr, token: Option<&str>) -> Result<(), String> {
    if addr.ip().is_loopback() || token.is_some_and(|t| !t.is_empty()) {
        Ok(())
    } else {
        Err(format!(
            "{addr} is reachable from other machines: give a token (--token or LOOM_TOKEN) \
             that callers must present, or listen on 127.0.0.1"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::check_bind;

    #[test]
    fn only_loopback_listens_without_a_token() {
        let loopback = "127.0.0.1:8233".parse().unwrap();
        let v6 = "[::1]:8233".parse().unwrap();
        let everyone = "0.0.0.0:8233".parse().unwrap();
        assert!(check_bind(loopback, None).is_ok());
        assert!(check_bind(v6, None).is_ok());
        let refused = check_bind(everyone, None).unwrap_err();
        assert!(refused.contains("--token"), "{refused}");
        assert!(
            check_bind(everyone, Some("")).is_err(),
            "an empty token is none"
        );
        assert!(check_bind(everyone, Some("s3cret")).is_ok());
    }
}
