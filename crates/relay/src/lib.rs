//! The relay: ingress, durable spool, scheduler, egress SMTP client, DSN.
//!
//! Flow of a message: [`ingress`] (SMTP) or [`http`] (JSON) → [`service::accept`]
//! commits it to the [`spool`] → [`queue`] marks recipients due → [`scheduler`]
//! asks the [`gate`] (by default [`pacing_gate::ControllerGate`], the pacing
//! controller per egress IP × provider) and hands jobs to [`egress`] sessions → replies are
//! classified by `mxpace_reply::explain` → `mxpace_pacing::retry` decides →
//! [`service::finish_attempt`] commits the new state, writes events, queues [`dsn`]s.

pub mod budget;
pub mod config;
pub mod dsn;
pub mod egress;
pub mod event_log;
pub mod gate;
pub mod headers;
pub mod http;
pub mod ingress;
pub mod metrics;
pub mod pacing_gate;
pub mod password;
pub mod queue;
pub mod routes;
pub mod scheduler;
pub mod service;
pub mod smtp_io;
pub mod spool;
pub mod tls;

use anyhow::Context;
use config::Config;
use gate::PacingGate;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// File in the spool directory holding the running relay's HTTP admin address.
pub const ADMIN_ADDR_FILE: &str = "admin.addr";

/// A started relay.
pub struct RelayHandle {
    /// SMTP addresses actually bound (port 0 in the config is resolved here).
    pub smtp: Vec<SocketAddr>,
    pub http: Option<SocketAddr>,
    pub shared: Arc<service::Shared>,
    tasks: Vec<JoinHandle<()>>,
}

impl RelayHandle {
    /// Wait for the tasks (they run until aborted or the process ends).
    pub async fn wait(self) {
        for t in self.tasks {
            let _ = t.await;
        }
    }

    /// Stop every task.
    pub fn abort(&self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Open the spool, load the queue, bind the listeners and start everything.
pub async fn start(config: Config, gate: Arc<dyn PacingGate>) -> anyhow::Result<RelayHandle> {
    let spool = spool::Spool::open(&config.relay.spool)?;
    let mut queue = queue::Queue::default();
    let loaded = spool.load_all()?;
    let count = loaded.len();
    for m in loaded {
        queue.insert(m);
    }
    tracing::info!(
        "loaded {count} queued messages from {}",
        config.relay.spool.display()
    );
    let events = event_log::EventLog::open(&config.relay.events)
        .with_context(|| format!("opening events file {}", config.relay.events.display()))?;
    let server_tls = match &config.tls {
        Some(t) => Some(tls::server_config(&t.cert, &t.key)?),
        None => None,
    };
    let client_tls = tls::opportunistic_client_config()?;
    let router = Arc::new(routes::Router::new(&config)?);
    let mut smtp_listeners = Vec::new();
    for addr in &config.relay.listen {
        let l = TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding SMTP listener {addr}"))?;
        smtp_listeners.push(l);
    }
    let http_listener = match config.relay.http {
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding HTTP listener {addr}"))?,
        ),
        None => None,
    };
    let config_max_data_memory = config.relay.max_data_memory;
    let shared = Arc::new(service::Shared {
        config,
        spool,
        queue: Mutex::new(queue),
        events,
        counters: metrics::Counters::default(),
        data_budget: budget::DataBudget::new(config_max_data_memory),
        wake: tokio::sync::Notify::new(),
        gate,
    });
    let mut tasks = Vec::new();
    let mut smtp = Vec::new();
    for l in smtp_listeners {
        smtp.push(l.local_addr()?);
        tasks.push(tokio::spawn(ingress::serve(
            shared.clone(),
            l,
            server_tls.clone(),
        )));
    }
    let mut http_addr = None;
    let _ = std::fs::remove_file(shared.config.relay.spool.join(ADMIN_ADDR_FILE));
    if let Some(l) = http_listener {
        let addr = l.local_addr()?;
        http_addr = Some(addr);
        // `mxpace queue` finds the running relay's admin API here (the config
        // may say port 0).
        std::fs::write(
            shared.config.relay.spool.join(ADMIN_ADDR_FILE),
            addr.to_string(),
        )
        .context("writing the admin address into the spool")?;
        tasks.push(tokio::spawn(http::serve(shared.clone(), l)));
    }
    tasks.push(tokio::spawn(service::prune_idempotency_keys(
        shared.clone(),
    )));
    tasks.push(tokio::spawn(scheduler::run(
        shared.clone(),
        router,
        client_tls,
    )));
    Ok(RelayHandle {
        smtp,
        http: http_addr,
        shared,
        tasks,
    })
}
