//! The API's errors: a status and `{"code": ..., "error": ...}`, a stable machine-readable code
//! and a sentence for people.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use loom_storage::StorageError;
use loom_worker::ClientError;
use serde::Serialize;
use utoipa::ToSchema;

/// An error the API answers with.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

/// The body of every error answer.
#[derive(Serialize, ToSchema)]
pub struct ErrorBody {
    /// A stable name for the kind of error: `bad_request`, `unauthorized`, `forbidden`,
    /// `not_found`, `conflict`, `unsupported_media_type`, `unavailable` or `internal`.
    pub code: String,
    /// What went wrong, for people.
    pub error: String,
}

impl ApiError {
    /// 400: the request is malformed or does not fit (bad JSON, unknown type, bad filter).
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    /// 401: no token, or the wrong one.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    /// 403: an action refused as a cross-site request.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    /// 500: the service failed where the request was fine.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
    }

    /// 415: a body that is not declared as JSON.
    pub fn unsupported(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            message,
        )
    }

    /// 404: no such workflow, or no such route.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }

    /// The status it answers with.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// What went wrong, for people.
    pub fn message(&self) -> &str {
        &self.message
    }
}

/// The status and code a store error is answered with.
pub(crate) fn storage_status(e: &StorageError) -> (StatusCode, &'static str) {
    match e {
        StorageError::NotFound(_) | StorageError::ScheduleNotFound(_) => {
            (StatusCode::NOT_FOUND, "not_found")
        }
        StorageError::AlreadyExists { .. }
        | StorageError::ScheduleExists(_)
        | StorageError::ScheduleConflict { .. }
        | StorageError::Conflict { .. }
        | StorageError::RunMoved { .. }
        | StorageError::Closed { .. } => (StatusCode::CONFLICT, "conflict"),
        StorageError::InvalidArgument(_) => (StatusCode::BAD_REQUEST, "bad_request"),
        StorageError::Unavailable { .. } => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
        _ => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
    }
}

/// The status and code a client error is answered with.
pub(crate) fn client_status(e: &ClientError) -> (StatusCode, &'static str) {
    match e {
        ClientError::Storage(e) => storage_status(e),
        ClientError::IdInUse(_) => (StatusCode::CONFLICT, "conflict"),
        ClientError::Payload(_) | ClientError::UnknownWorkflow { .. } => {
            (StatusCode::BAD_REQUEST, "bad_request")
        }
        _ => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
    }
}

impl From<StorageError> for ApiError {
    fn from(e: StorageError) -> Self {
        ClientError::Storage(e).into()
    }
}

impl From<ClientError> for ApiError {
    fn from(e: ClientError) -> Self {
        let (status, code) = client_status(&e);
        if status == StatusCode::INTERNAL_SERVER_ERROR {
            tracing::error!(error = %e, "a request failed");
        }
        Self::new(status, code, e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            code: self.code.to_owned(),
            error: self.message,
        };
        let mut response = (self.status, Json(body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer"),
            );
        }
        response
    }
}
