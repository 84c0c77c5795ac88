//! HTTP endpoint (axum): message injection with an idempotency key, the admin API
//! the `mxpace queue` and `mxpace pacing` commands use while the relay runs, and
//! Prometheus metrics (`GET /metrics`). Only clients in `allow_clients` are served.

use crate::gate::OperatorAction;
use crate::pacing_gate::{parse_path_name, path_name};
use crate::queue::{Filter, summarize};
use crate::service::{self, AdminAction, EnvelopeRecipient, Shared, Submission, now_ms};
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine;
use mxpace_pacing::PathSnapshot;
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpListener;

/// Largest JSON request accepted (a message plus its envelope).
const MAX_REQUEST: usize = 40 * 1024 * 1024;

/// `POST /v1/messages`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InjectRequest {
    /// Envelope sender ("" for the null sender).
    pub from: String,
    pub to: Vec<String>,
    /// The RFC 5322 message as text…
    #[serde(default)]
    pub message: Option<String>,
    /// …or as base64 (for 8-bit content).
    #[serde(default)]
    pub message_base64: Option<String>,
    #[serde(default)]
    pub stream: Option<String>,
    /// Also accepted as the `Idempotency-Key` header.
    #[serde(default)]
    pub idempotency_key: Option<String>,
}

/// `POST /v1/queue/{retry|bounce|delete}`
#[derive(Debug, Deserialize)]
pub struct AdminRequest {
    pub filter: Vec<String>,
}

fn error(status: StatusCode, msg: impl Into<String>) -> Response {
    (status, Json(json!({ "error": msg.into() }))).into_response()
}

/// Serve until the task is dropped.
pub async fn serve(shared: Arc<Shared>, listener: TcpListener) {
    let app = Router::new()
        .route("/v1/messages", post(inject))
        .route("/v1/queue", get(queue_summary))
        .route("/v1/queue/{id}", get(queue_show))
        .route("/v1/queue/action/{action}", post(queue_action))
        .route("/v1/pacing", get(pacing_state))
        .route("/v1/pacing/{ip}/{provider}/{action}", post(pacing_action))
        .route("/metrics", get(metrics))
        .route("/v1/stats", get(stats))
        .route("/", get(dashboard))
        .layer(axum::middleware::from_fn(same_origin_json))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_REQUEST))
        .with_state(shared);
    if let Err(e) = axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .await
    {
        tracing::error!("http server: {e}");
    }
}

/// A browser sends some cross-site POSTs without asking the server first (a form or a
/// `text/plain` body): a page open in an operator's browser could otherwise inject mail
/// through a loopback relay or pause its paths, since `allow_clients` sees the
/// operator's own address. A POST must therefore carry a JSON content type (which a
/// cross-site page can only send after a CORS preflight this server never answers),
/// and a request whose `Origin` is not this server is refused.
async fn same_origin_json(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let headers = request.headers();
    if request.method() == axum::http::Method::POST {
        let json = headers
            .get(axum::http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"));
        if !json {
            return error(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "a POST must be sent as Content-Type: application/json",
            );
        }
    }
    if let Some(origin) = headers.get(axum::http::header::ORIGIN) {
        let host = headers
            .get(axum::http::header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or("");
        let own = origin
            .to_str()
            .ok()
            .and_then(|o| o.strip_prefix("http://"))
            .is_some_and(|o| !host.is_empty() && o.eq_ignore_ascii_case(host));
        if !own {
            return error(StatusCode::FORBIDDEN, "cross-origin request refused");
        }
    }
    next.run(request).await
}

fn allowed(shared: &Shared, peer: SocketAddr) -> bool {
    shared
        .config
        .relay
        .allow_clients
        .iter()
        .any(|n| n.contains(&peer.ip()))
}

async fn inject(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    if !allowed(&shared, peer) {
        return error(StatusCode::FORBIDDEN, "client not in allow_clients");
    }
    let req: InjectRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("bad JSON: {e}")),
    };
    let raw = match (req.message, req.message_base64) {
        (Some(m), None) => m.into_bytes(),
        (None, Some(b)) => match base64::engine::general_purpose::STANDARD.decode(b.trim()) {
            Ok(v) => v,
            Err(e) => return error(StatusCode::BAD_REQUEST, format!("message_base64: {e}")),
        },
        _ => {
            return error(
                StatusCode::BAD_REQUEST,
                "give exactly one of message or message_base64",
            );
        }
    };
    if raw.is_empty() || raw.len() > shared.config.relay.max_message_size {
        return error(StatusCode::PAYLOAD_TOO_LARGE, "message empty or too large");
    }
    // Held until the message is spooled (or refused), like SMTP DATA.
    let mut held = shared.data_budget.reserve();
    if !held.grow_to(raw.len()) {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            [(axum::http::header::RETRY_AFTER, "5")],
            Json(json!({ "error": "4.3.1 max_data_memory is in use, try again later" })),
        )
            .into_response();
    }
    if req.to.is_empty() || req.to.len() > 1000 {
        return error(StatusCode::BAD_REQUEST, "to: give 1 to 1000 recipients");
    }
    let valid = |a: &str| {
        !a.chars()
            .any(|c| c.is_control() || c == '<' || c == '>' || c == ' ')
            && a.len() <= 320
    };
    for r in &req.to {
        if !valid(r)
            || !r
                .rsplit_once('@')
                .is_some_and(|(l, d)| !l.is_empty() && !d.is_empty())
        {
            return error(StatusCode::BAD_REQUEST, format!("bad recipient {r:?}"));
        }
    }
    if !valid(&req.from) || (!req.from.is_empty() && !req.from.contains('@')) {
        return error(StatusCode::BAD_REQUEST, "bad sender");
    }
    let key = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or(req.idempotency_key)
        .filter(|k| !k.is_empty());
    if key.as_ref().is_some_and(|k| k.len() > 200) {
        return error(StatusCode::BAD_REQUEST, "idempotency key longer than 200");
    }
    // Normalise bare LF to CRLF, as SMTP ingress does.
    let mut body = Vec::with_capacity(raw.len() + raw.len() / 40);
    let mut prev = 0u8;
    for &b in &raw {
        if b == b'\n' && prev != b'\r' {
            body.push(b'\r');
        }
        body.push(b);
        prev = b;
    }
    if !body.ends_with(b"\r\n") {
        body.extend_from_slice(b"\r\n");
    }
    let trace = format!(
        "Received: from [{}] by {} (mxpace) with HTTP;\r\n\t{}\r\n",
        peer.ip(),
        shared.config.relay.hostname,
        time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc2822)
            .unwrap_or_default()
    );
    let sub = Submission {
        sender: req.from,
        recipients: req
            .to
            .into_iter()
            .map(|address| EnvelopeRecipient {
                address,
                orcpt: None,
                notify: 0,
            })
            .collect(),
        env_id: None,
        ret_full: false,
        stream: req.stream,
        idempotency_key: key,
        trace: Some(trace),
        body,
    };
    match service::accept(&shared, sub).await {
        Ok(a) => (
            StatusCode::OK,
            Json(json!({ "queue_id": a.queue_id, "duplicate": a.duplicate })),
        )
            .into_response(),
        Err(e) => error(
            StatusCode::INSUFFICIENT_STORAGE,
            format!("4.3.1 not queued, try again: {e}"),
        ),
    }
}

async fn queue_summary(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
) -> Response {
    if !allowed(&shared, peer) {
        return error(StatusCode::FORBIDDEN, "client not in allow_clients");
    }
    let q = shared.queue();
    Json(summarize(q.messages(), now_ms())).into_response()
}

/// The dashboard page: static HTML whose script polls `/v1/pacing`, `/v1/queue` and
/// `/v1/stats` (same origin) and offers pause/resume per path.
const DASHBOARD: &str = include_str!("dashboard.html");

/// `GET /`: the dashboard.
async fn dashboard(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
) -> Response {
    if !allowed(&shared, peer) {
        return error(StatusCode::FORBIDDEN, "client not in allow_clients");
    }
    let hostname = shared
        .config
        .relay
        .hostname
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;");
    (
        [
            (axum::http::header::CONTENT_TYPE, "text/html; charset=utf-8"),
            // Nothing outside this page and its own API; no framing by other sites.
            (
                axum::http::header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; frame-ancestors 'none'",
            ),
        ],
        DASHBOARD.replace("{{hostname}}", &hostname),
    )
        .into_response()
}

/// `GET /v1/stats`: what the relay did since it started (see [`crate::metrics::Counters::to_json`]).
async fn stats(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
) -> Response {
    if !allowed(&shared, peer) {
        return error(StatusCode::FORBIDDEN, "client not in allow_clients");
    }
    Json(shared.counters.to_json()).into_response()
}

/// `GET /metrics`: Prometheus text exposition (see [`crate::metrics`]).
async fn metrics(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
) -> Response {
    if !allowed(&shared, peer) {
        return error(StatusCode::FORBIDDEN, "client not in allow_clients");
    }
    let now = now_ms();
    let summary = summarize(shared.queue().messages(), now);
    let paths = shared.gate.snapshot(now);
    service::write_pacing_changes(&shared);
    let text = crate::metrics::render(&shared.counters, &summary, &paths);
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

async fn queue_show(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(id): Path<String>,
) -> Response {
    if !allowed(&shared, peer) {
        return error(StatusCode::FORBIDDEN, "client not in allow_clients");
    }
    match shared.queue().get(&id) {
        Some(m) => Json(m.clone()).into_response(),
        None => error(StatusCode::NOT_FOUND, format!("{id}: not in the queue")),
    }
}

async fn queue_action(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(action): Path<String>,
    Json(req): Json<AdminRequest>,
) -> Response {
    if !allowed(&shared, peer) {
        return error(StatusCode::FORBIDDEN, "client not in allow_clients");
    }
    let action = match action.as_str() {
        "retry" => AdminAction::Retry,
        "bounce" => AdminAction::Bounce,
        "delete" => AdminAction::Delete,
        _ => {
            return error(
                StatusCode::NOT_FOUND,
                "action must be retry, bounce or delete",
            );
        }
    };
    let filter = match Filter::parse(&req.filter) {
        Ok(f) => f,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    match service::admin(&shared, action, &filter).await {
        Ok(n) => Json(json!({ "affected": n })).into_response(),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// One path in `GET /v1/pacing`: its name (`203.0.113.10/microsoft`) and its
/// snapshot's fields.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NamedSnapshot {
    /// `IP/provider`, as `mxpace pacing pause|resume` takes it.
    pub name: String,
    /// The last receiver reply that moved this path (also after `reason` moved on to
    /// "pause over" or "successes"), and when (ms since the epoch).
    #[serde(default)]
    pub last_reply: Option<String>,
    #[serde(default)]
    pub last_reply_at: Option<i64>,
    #[serde(flatten)]
    pub snapshot: PathSnapshot,
}

/// `GET /v1/pacing`: every path the relay has used, in path order.
async fn pacing_state(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
) -> Response {
    if !allowed(&shared, peer) {
        return error(StatusCode::FORBIDDEN, "client not in allow_clients");
    }
    let paths: Vec<NamedSnapshot> = shared
        .gate
        .snapshot(now_ms())
        .into_iter()
        .map(|snapshot| {
            let last = shared.gate.last_reply(&snapshot.path);
            NamedSnapshot {
                name: path_name(&snapshot.path),
                last_reply_at: last.as_ref().map(|(at, _)| *at),
                last_reply: last.map(|(_, r)| r),
                snapshot,
            }
        })
        .collect();
    service::write_pacing_changes(&shared);
    Json(paths).into_response()
}

/// `POST /v1/pacing/{ip}/{provider}/{pause|resume}`.
async fn pacing_action(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path((ip, provider, action)): Path<(String, String, String)>,
) -> Response {
    if !allowed(&shared, peer) {
        return error(StatusCode::FORBIDDEN, "client not in allow_clients");
    }
    let action = match action.as_str() {
        "pause" => OperatorAction::Pause,
        "resume" => OperatorAction::Resume,
        _ => return error(StatusCode::NOT_FOUND, "action must be pause or resume"),
    };
    let path = match parse_path_name(&format!("{ip}/{provider}")) {
        Ok(p) => p,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    let result = shared.gate.operator(&path, action, now_ms());
    service::write_pacing_changes(&shared);
    match result {
        Ok(()) => {
            // Held mail of a resumed path should not wait for its hold to run out.
            shared.wake.notify_one();
            let snapshot = shared
                .gate
                .snapshot(now_ms())
                .into_iter()
                .find(|s| s.path == path);
            Json(json!({ "name": path_name(&path), "path": snapshot })).into_response()
        }
        Err(e @ crate::gate::OperatorError::UnknownPath { .. }) => {
            error(StatusCode::NOT_FOUND, e.to_string())
        }
        Err(e) => error(StatusCode::CONFLICT, e.to_string()),
    }
}
