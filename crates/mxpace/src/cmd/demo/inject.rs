//! The mixed stream the demo sends through the relay's HTTP API.

use super::TENANTS;
use crate::admin::{self, Method};
use anyhow::{Context, bail};
use std::net::SocketAddr;
use std::time::Duration;

/// Injects the mixed stream: bulk all at once, transactional one every half second.
pub(super) struct Injector {
    pub(super) http: SocketAddr,
    pub(super) bulk: u32,
    pub(super) transactional: u32,
    pub(super) sent_bulk: u32,
    pub(super) sent_transactional: u32,
    pub(super) accepted: u32,
}

impl Injector {
    pub(super) fn new(http: SocketAddr, messages: u32) -> Injector {
        let transactional = messages / 4;
        Injector {
            http,
            bulk: messages - transactional,
            transactional,
            sent_bulk: 0,
            sent_transactional: 0,
            accepted: 0,
        }
    }

    pub(super) fn done(&self) -> bool {
        self.sent_bulk == self.bulk && self.sent_transactional == self.transactional
    }

    pub(super) fn step(&mut self, elapsed: Duration) -> anyhow::Result<()> {
        while self.sent_bulk < self.bulk {
            let i = self.sent_bulk;
            self.inject("bulk", i)?;
            self.sent_bulk += 1;
        }
        let due = ((elapsed.as_millis() / 500) as u32 + 1).min(self.transactional);
        while self.sent_transactional < due {
            let i = self.sent_transactional;
            self.inject("transactional", i)?;
            self.sent_transactional += 1;
        }
        Ok(())
    }

    pub(super) fn inject(&mut self, stream: &str, i: u32) -> anyhow::Result<()> {
        let tenant = TENANTS[i as usize % TENANTS.len()];
        let to = format!("{stream}-{i}@{tenant}");
        let message = format!(
            "From: demo@shop.example\r\nTo: {to}\r\nSubject: {stream} #{i}\r\n\
             Message-ID: <{stream}-{i}@shop.example>\r\n\r\nHello from mxpace demo.\r\n"
        );
        let body = serde_json::json!({
            "from": "demo@shop.example",
            "to": [to],
            "message": message,
            "stream": stream,
            "idempotency_key": format!("demo-{stream}-{i}"),
        })
        .to_string();
        let (status, reply) = admin::request(
            self.http,
            Method::Post,
            "/v1/messages",
            Some(body.as_bytes()),
        )
        .with_context(|| format!("injecting {stream} #{i}"))?;
        if status != 200 {
            let reply = String::from_utf8_lossy(&reply);
            bail!("the relay refused {stream} #{i}: {status} {reply}");
        }
        self.accepted += 1;
        Ok(())
    }
}
