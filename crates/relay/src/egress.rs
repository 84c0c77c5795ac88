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
    /// STARTTLS was offered but the handshake failed (retry in plaintext).
    #[error("STARTTLS failed: {0}")]
    Tls(String),
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

/// RFC 3461 DSN parameters of one transaction, passed on to a next hop that
/// advertises DSN (and left out for one that does not).
#[derive(Debug, Clone, Default)]
pub struct DsnParams {
    /// ENVID, as the submitter gave it (decoded).
    pub env_id: Option<String>,
    /// RET=FULL was asked for (RET=HDRS or nothing otherwise).
    pub ret_full: bool,
    /// Per recipient, in the order of the recipients: NOTIFY bits (smtp-proto
    /// `RCPT_NOTIFY_*`, 0 = not given) and ORCPT (decoded, without `rfc822;`).
    pub recipients: Vec<(u64, Option<String>)>,
}

/// RFC 3461 §4 xtext: printable ASCII except `+` and `=` as is, the rest as `+XX`.
/// Hand-written: smtp-proto only decodes xtext.
fn xtext(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if (b'!'..=b'~').contains(&b) && b != b'+' && b != b'=' {
            out.push(b as char);
        } else {
            out.push_str(&format!("+{b:02X}"));
        }
    }
    out
}

/// The NOTIFY parameter value for smtp-proto's flag bits (None when not given).
fn notify_value(flags: u64) -> Option<String> {
    if flags & smtp_proto::RCPT_NOTIFY_NEVER != 0 {
        return Some("NEVER".into());
    }
    let words: Vec<&str> = [
        (smtp_proto::RCPT_NOTIFY_SUCCESS, "SUCCESS"),
        (smtp_proto::RCPT_NOTIFY_FAILURE, "FAILURE"),
        (smtp_proto::RCPT_NOTIFY_DELAY, "DELAY"),
    ]
    .iter()
    .filter(|(bit, _)| flags & bit != 0)
    .map(|(_, w)| *w)
    .collect();
    (!words.is_empty()).then(|| words.join(","))
}

/// The RCPT command for recipient `i`, with DSN parameters when `dsn_ok`.
fn rcpt_command(address: &str, i: usize, dsn: &DsnParams, dsn_ok: bool) -> String {
    let mut cmd = format!("RCPT TO:<{address}>");
    if dsn_ok && let Some((flags, orcpt)) = dsn.recipients.get(i) {
        if let Some(n) = notify_value(*flags) {
            cmd.push_str(&format!(" NOTIFY={n}"));
        }
        if let Some(o) = orcpt.as_deref().filter(|o| !o.is_empty()) {
            cmd.push_str(&format!(" ORCPT=rfc822;{}", xtext(o)));
        }
    }
    cmd
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
            s.starttls(cfg, server_name)
                .await
                .map_err(|e| SessionError::Tls(e.to_string()))?;
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
        dsn: &DsnParams,
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
        let dsn_ok = caps & smtp_proto::EXT_DSN != 0;
        if dsn_ok {
            if dsn.ret_full {
                mail.push_str(" RET=FULL");
            }
            if let Some(id) = dsn.env_id.as_deref().filter(|i| !i.is_empty()) {
                mail.push_str(&format!(" ENVID={}", xtext(id)));
            }
        }
        let pipelining = caps & smtp_proto::EXT_PIPELINING != 0;
        let (mail_reply, rcpt_replies, data_reply) = if pipelining {
            // RFC 2920: MAIL, every RCPT and DATA in one write, then the replies in order.
            let mut batch = format!("{mail}\r\n");
            for (i, r) in recipients.iter().enumerate() {
                batch.push_str(&rcpt_command(r, i, dsn, dsn_ok));
                batch.push_str("\r\n");
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
                for (i, r) in recipients.iter().enumerate() {
                    rcpts.push(self.command(&rcpt_command(r, i, dsn, dsn_ok)).await?);
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

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};

    #[test]
    fn xtext_encodes_plus_equals_and_non_printables() {
        assert_eq!(xtext("Bob@Example.COM"), "Bob@Example.COM");
        assert_eq!(xtext("a+b=c d"), "a+2Bb+3Dc+20d");
        assert_eq!(xtext("é"), "+C3+A9");
    }

    #[test]
    fn notify_words_follow_the_flags() {
        use smtp_proto::{RCPT_NOTIFY_DELAY, RCPT_NOTIFY_FAILURE, RCPT_NOTIFY_NEVER};
        assert_eq!(notify_value(0), None);
        assert_eq!(notify_value(RCPT_NOTIFY_NEVER).as_deref(), Some("NEVER"));
        assert_eq!(
            notify_value(RCPT_NOTIFY_FAILURE | RCPT_NOTIFY_DELAY).as_deref(),
            Some("FAILURE,DELAY")
        );
    }

    /// A loopback receiver that advertises `ehlo_lines`, accepts everything and
    /// returns the MAIL and RCPT commands it saw.
    async fn receiver(
        ehlo_lines: &'static str,
    ) -> (SocketAddr, tokio::task::JoinHandle<Vec<String>>) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let (conn, _) = l.accept().await.unwrap();
            let (r, mut w) = conn.into_split();
            let mut r = tokio::io::BufReader::new(r);
            w.write_all(b"220 rx.test ESMTP\r\n").await.unwrap();
            let mut seen = Vec::new();
            let mut line = String::new();
            let mut in_data = false;
            while r.read_line(&mut line).await.unwrap_or(0) > 0 {
                let cmd = line.trim_end().to_owned();
                line.clear();
                let reply: &[u8] = if in_data {
                    if cmd != "." {
                        continue;
                    }
                    in_data = false;
                    b"250 2.0.0 queued\r\n"
                } else if cmd.starts_with("EHLO") {
                    ehlo_lines.as_bytes()
                } else if cmd.starts_with("MAIL") || cmd.starts_with("RCPT") {
                    seen.push(cmd);
                    b"250 2.1.0 ok\r\n"
                } else if cmd == "DATA" {
                    in_data = true;
                    b"354 go\r\n"
                } else if cmd == "QUIT" {
                    let _ = w.write_all(b"221 bye\r\n").await;
                    break;
                } else {
                    b"250 ok\r\n"
                };
                w.write_all(reply).await.unwrap();
            }
            seen
        });
        (addr, task)
    }

    async fn send_with_dsn(ehlo_lines: &'static str) -> Vec<String> {
        let (addr, task) = receiver(ehlo_lines).await;
        let mut s = Session::open(
            addr,
            None,
            "mta.test",
            "rx.test",
            None,
            Duration::from_secs(5),
        )
        .await
        .unwrap();
        let dsn = DsnParams {
            env_id: Some("env 1+2".into()),
            ret_full: true,
            recipients: vec![
                (smtp_proto::RCPT_NOTIFY_NEVER, Some("Orig@x.test".into())),
                (0, None),
            ],
        };
        let rcpts = ["a@x.test".to_owned(), "b@x.test".to_owned()];
        let r = s
            .send("s@o.test", &rcpts, b"Subject: t\r\n\r\nhi\r\n", &dsn)
            .await
            .unwrap();
        assert!(r.per_recipient.iter().all(|r| r.code == 250));
        s.quit().await;
        task.await.unwrap()
    }

    #[tokio::test]
    async fn dsn_parameters_go_to_a_next_hop_that_advertises_dsn() {
        let seen = send_with_dsn("250-rx.test\r\n250-PIPELINING\r\n250 DSN\r\n").await;
        assert_eq!(
            seen,
            [
                "MAIL FROM:<s@o.test> RET=FULL ENVID=env+201+2B2",
                "RCPT TO:<a@x.test> NOTIFY=NEVER ORCPT=rfc822;Orig@x.test",
                "RCPT TO:<b@x.test>",
            ]
        );
    }

    #[tokio::test]
    async fn dsn_parameters_are_left_out_without_the_extension() {
        let seen = send_with_dsn("250-rx.test\r\n250 PIPELINING\r\n").await;
        assert_eq!(
            seen,
            [
                "MAIL FROM:<s@o.test>",
                "RCPT TO:<a@x.test>",
                "RCPT TO:<b@x.test>"
            ]
        );
    }
}
