//! The outbound SMTP client: connect from a chosen source address, EHLO with
//! that source's name, opportunistic STARTTLS, then one or more transactions on
//! the same connection, pipelined when the server offers PIPELINING.
//! Replies are read by our own reader (enhanced codes kept exact); smtp-proto
//! is used only to parse EHLO capabilities.

use crate::smtp_io::{BoxIo, Reply, dot_stuff, read_reply};
use smtp_proto::EhloResponse;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::TcpSocket;

/// Why a session could not be used.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// Network trouble: refused, reset, timeout, TLS failure, garbage.
    #[error("{0}")]
    Io(String),
    /// The server answered, but not with what lets us go on (greeting, EHLO).
    #[error("{}", .0.text())]
    Refused(Reply),
}

fn io_err(stage: &str, e: impl std::fmt::Display) -> SessionError {
    SessionError::Io(format!("{stage}: {e}"))
}

/// An open, greeted SMTP connection.
pub struct Session {
    io: BufReader<BoxIo>,
    /// EHLO capabilities (smtp-proto `EXT_*` bits); 0 after HELO.
    pub capabilities: u32,
    pub tls: bool,
    pub peer: SocketAddr,
    pub greeting: Reply,
    timeout: Duration,
    /// True when the last transaction ended cleanly (no RSET needed).
    clean: bool,
}

/// What the server said about each recipient of one transaction.
#[derive(Debug, Clone)]
pub struct TransactionResult {
    /// One reply per recipient, in order: the RCPT reply when it refused the
    /// recipient, else the end-of-data reply (or the MAIL/DATA refusal).
    pub per_recipient: Vec<Reply>,
}

async fn timed<T>(
    d: Duration,
    stage: &str,
    f: impl std::future::Future<Output = io::Result<T>>,
) -> Result<T, SessionError> {
    match tokio::time::timeout(d, f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(io_err(stage, e)),
        Err(_) => Err(SessionError::Io(format!("{stage}: timed out after {d:?}"))),
    }
}

impl Session {
    /// Connect to `addr` from `source` (when given), read the greeting, EHLO
    /// (falling back to HELO), and upgrade with STARTTLS when offered.
    pub async fn open(
        addr: SocketAddr,
        source: Option<IpAddr>,
        ehlo: &str,
        server_name: &str,
        tls: Option<Arc<rustls::ClientConfig>>,
        timeout: Duration,
    ) -> Result<Session, SessionError> {
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()
        } else {
            TcpSocket::new_v6()
        }
        .map_err(|e| io_err("socket", e))?;
        if let Some(ip) = source {
            socket
                .bind(SocketAddr::new(ip, 0))
                .map_err(|e| io_err(&format!("bind {ip}"), e))?;
        }
        let stream = timed(timeout, "connect", socket.connect(addr)).await?;
        let _ = stream.set_nodelay(true);
        let mut io: BufReader<BoxIo> = BufReader::with_capacity(8 * 1024, Box::new(stream));
        let greeting = timed(timeout, "greeting", read_reply(&mut io)).await?;
        if greeting.code != 220 {
            return Err(SessionError::Refused(greeting));
        }
        let mut s = Session {
            io,
            capabilities: 0,
            tls: false,
            peer: addr,
            greeting,
            timeout,
            clean: true,
        };
        s.hello(ehlo).await?;
        if let Some(cfg) = tls
            && s.capabilities & smtp_proto::EXT_START_TLS != 0
        {
            s.starttls(cfg, server_name).await?;
            s.hello(ehlo).await?;
        }
        Ok(s)
    }

    async fn command(&mut self, line: &str) -> Result<Reply, SessionError> {
        let stage = line.split(' ').next().unwrap_or("command").to_owned();
        let mut bytes = line.as_bytes().to_vec();
        bytes.extend_from_slice(b"\r\n");
        timed(self.timeout, &stage, self.io.get_mut().write_all(&bytes)).await?;
        timed(self.timeout, &stage, read_reply(&mut self.io)).await
    }

    async fn hello(&mut self, name: &str) -> Result<(), SessionError> {
        let reply = self.command(&format!("EHLO {name}")).await?;
        if reply.is_positive() {
            let raw = reply.raw();
            self.capabilities = EhloResponse::parse(&mut raw.iter())
                .map(|r| r.capabilities)
                .unwrap_or(0);
            return Ok(());
        }
        let reply = self.command(&format!("HELO {name}")).await?;
        if !reply.is_positive() {
            return Err(SessionError::Refused(reply));
        }
        self.capabilities = 0;
        Ok(())
    }

    async fn starttls(
        &mut self,
        cfg: Arc<rustls::ClientConfig>,
        server_name: &str,
    ) -> Result<(), SessionError> {
        let reply = self.command("STARTTLS").await?;
        if reply.code != 220 {
            return Err(SessionError::Refused(reply));
        }
        let name = rustls::pki_types::ServerName::try_from(server_name.to_owned())
            .or_else(|_| rustls::pki_types::ServerName::try_from(self.peer.ip().to_string()))
            .map_err(|e| io_err("TLS server name", e))?;
        let placeholder: BoxIo = Box::new(tokio::io::join(tokio::io::empty(), tokio::io::sink()));
        let plain = std::mem::replace(&mut self.io, BufReader::new(placeholder)).into_inner();
        let connector = tokio_rustls::TlsConnector::from(cfg);
        let tls = timed(
            self.timeout,
            "TLS handshake",
            connector.connect(name, plain),
        )
        .await?;
        self.io = BufReader::with_capacity(8 * 1024, Box::new(tls));
        self.tls = true;
        Ok(())
    }

    /// Run one transaction. `Err` means the connection is unusable and no
    /// recipient got a final answer.
    pub async fn send(
        &mut self,
        sender: &str,
        recipients: &[String],
        body: &[u8],
    ) -> Result<TransactionResult, SessionError> {
        if !self.clean {
            let r = self.command("RSET").await?;
            if !r.is_positive() {
                return Err(SessionError::Refused(r));
            }
        }
        self.clean = false;
        let caps = self.capabilities;
        let mut mail = format!("MAIL FROM:<{sender}>");
        if caps & smtp_proto::EXT_SIZE != 0 {
            mail.push_str(&format!(" SIZE={}", body.len()));
        }
        if caps & smtp_proto::EXT_8BIT_MIME != 0 && !body.is_ascii() {
            mail.push_str(" BODY=8BITMIME");
        }
        let utf8 = !sender.is_ascii() || recipients.iter().any(|r| !r.is_ascii());
        if utf8 && caps & smtp_proto::EXT_SMTP_UTF8 != 0 {
            mail.push_str(" SMTPUTF8");
        }
        let pipelining = caps & smtp_proto::EXT_PIPELINING != 0;
        let (mail_reply, rcpt_replies, data_reply) = if pipelining {
            // RFC 2920: MAIL, every RCPT and DATA in one write, then the replies in order.
            let mut batch = format!("{mail}\r\n");
            for r in recipients {
                batch.push_str(&format!("RCPT TO:<{r}>\r\n"));
            }
            batch.push_str("DATA\r\n");
            timed(
                self.timeout,
                "MAIL",
                self.io.get_mut().write_all(batch.as_bytes()),
            )
            .await?;
            let mail_reply = timed(self.timeout, "MAIL", read_reply(&mut self.io)).await?;
            let mut rcpts = Vec::with_capacity(recipients.len());
            for _ in recipients {
                rcpts.push(timed(self.timeout, "RCPT", read_reply(&mut self.io)).await?);
            }
            let data = timed(self.timeout, "DATA", read_reply(&mut self.io)).await?;
            (mail_reply, rcpts, Some(data))
        } else {
            let mail_reply = self.command(&mail).await?;
            let mut rcpts = Vec::new();
            let mut data = None;
            if mail_reply.is_positive() {
                for r in recipients {
                    rcpts.push(self.command(&format!("RCPT TO:<{r}>")).await?);
                }
                if rcpts.iter().any(Reply::is_positive) {
                    data = Some(self.command("DATA").await?);
                }
            }
            (mail_reply, rcpts, data)
        };
        if !mail_reply.is_positive() {
            if data_reply.as_ref().is_some_and(|d| d.code == 354) {
                // Some servers answer 354 even after a refused MAIL; end it empty.
                self.finish_empty_data().await?;
            }
            return Ok(TransactionResult {
                per_recipient: vec![mail_reply; recipients.len()],
            });
        }
        let any_accepted = rcpt_replies.iter().any(Reply::is_positive);
        let data_reply = match data_reply {
            Some(d) if d.code == 354 => d,
            Some(d) => {
                // DATA refused (or no recipient was accepted).
                let per = rcpt_replies
                    .into_iter()
                    .map(|r| if r.is_positive() { d.clone() } else { r })
                    .collect();
                return Ok(TransactionResult { per_recipient: per });
            }
            None => {
                return Ok(TransactionResult {
                    per_recipient: rcpt_replies,
                });
            }
        };
        if !any_accepted {
            // 354 with no accepted recipient (a confused pipelining server): send
            // an empty message so the session stays in step, deliver nothing.
            let _ = data_reply;
            self.finish_empty_data().await?;
            return Ok(TransactionResult {
                per_recipient: rcpt_replies,
            });
        }
        let mut wire = Vec::with_capacity(body.len() + body.len() / 50 + 8);
        dot_stuff(body, &mut wire);
        timed(
            self.timeout,
            "DATA body",
            self.io.get_mut().write_all(&wire),
        )
        .await?;
        // RFC 5321 §4.5.3.2.6 asks clients to wait 10 minutes for the final reply.
        let final_reply = timed(
            self.timeout
                .max(Duration::from_secs(600))
                .min(self.timeout * 10),
            "end of DATA",
            read_reply(&mut self.io),
        )
        .await?;
        self.clean = true;
        let per = rcpt_replies
            .into_iter()
            .map(|r| {
                if r.is_positive() {
                    final_reply.clone()
                } else {
                    r
                }
            })
            .collect();
        Ok(TransactionResult { per_recipient: per })
    }

    async fn finish_empty_data(&mut self) -> Result<(), SessionError> {
        timed(self.timeout, "DATA", self.io.get_mut().write_all(b".\r\n")).await?;
        let _ = timed(self.timeout, "DATA", read_reply(&mut self.io)).await?;
        Ok(())
    }

    /// Say goodbye (best effort, short wait).
    pub async fn quit(mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            let _ = self.io.get_mut().write_all(b"QUIT\r\n").await;
            let _ = read_reply(&mut self.io).await;
        })
        .await;
    }
}
