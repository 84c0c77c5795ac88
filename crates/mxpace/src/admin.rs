//! Requests to a running relay's admin API (`mxpace relay queue`, `mxpace pacing`,
//! `mxpace demo`): plain HTTP on the address the relay's `[http]` section names.

use anyhow::{Context, bail};
use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::Duration;

/// A request method of the admin API.
#[derive(Debug, Clone, Copy)]
pub enum Method {
    Get,
    Post,
}

/// One agent for the process: status codes are answers, not errors (the caller decides),
/// and no proxy from the environment: the admin API is on this host.
fn agent() -> &'static ureq::Agent {
    static AGENT: OnceLock<ureq::Agent> = OnceLock::new();
    AGENT.get_or_init(|| {
        ureq::Agent::config_builder()
            .http_status_as_error(false)
            .proxy(None)
            .timeout_connect(Some(Duration::from_secs(5)))
            .timeout_global(Some(Duration::from_secs(30)))
            .build()
            .into()
    })
}

/// Sends `body` (JSON) to `path` and returns the status and the whole answer.
pub fn request(
    addr: SocketAddr,
    method: Method,
    path: &str,
    body: Option<&[u8]>,
) -> anyhow::Result<(u16, Vec<u8>)> {
    let url = format!("http://{addr}{path}");
    let sent = match method {
        Method::Get => agent().get(&url).call(),
        Method::Post => agent()
            .post(&url)
            .header("content-type", "application/json")
            .send(body.unwrap_or(b"{}")),
    };
    let mut response = sent.with_context(|| format!("{method:?} {url} (the relay's admin API)"))?;
    let status = response.status().as_u16();
    let body = response
        .body_mut()
        .read_to_vec()
        .with_context(|| format!("reading the answer to {method:?} {url}"))?;
    Ok((status, body))
}

/// As [`request`], for callers that need a 200: anything else is an error carrying the
/// relay's answer (which names what was wrong, e.g. the known paths for an unknown one).
pub fn request_ok(
    addr: SocketAddr,
    method: Method,
    path: &str,
    body: Option<&[u8]>,
) -> anyhow::Result<Vec<u8>> {
    let (status, answer) = request(addr, method, path, body)?;
    if status != 200 {
        bail!(
            "relay answered {status}: {}",
            String::from_utf8_lossy(&answer).trim()
        );
    }
    Ok(answer)
}
