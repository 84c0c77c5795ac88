//! The ESMTP server applications submit to. Never an open relay: mail is taken
//! only from `allow_clients` networks or users who authenticated over TLS.
//! `250` after DATA is sent only once the message is committed to the spool.

use crate::service::{self, EnvelopeRecipient, Shared, Submission};
use crate::smtp_io::{BoxIo, read_line_piece};
use base64::Engine;
use smtp_proto::Request;
use std::net::SocketAddr;
use std::sync::Arc;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc2822;
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

/// Longest command line. RFC 5321 §4.5.3.1.4 says 512; extensions (DSN ORCPT,
/// SMTPUTF8 addresses) make it longer in practice, so allow some room.
const MAX_COMMAND_LINE: usize = 4096;
/// Longest piece of a DATA line read at once (a 1 MB line is read in pieces).
const DATA_PIECE: usize = 64 * 1024;
/// Most recipients per message (RFC 5321 §4.5.3.1.8 asks for at least 100).
const MAX_RECIPIENTS: usize = 1000;
/// Errors after which the session is closed.
const MAX_ERRORS: u32 = 20;
/// Reply bytes buffered before they are flushed even mid-pipeline.
const MAX_PENDING_OUTPUT: usize = 64 * 1024;

/// Serve SMTP on `listener` until the task is dropped.
pub async fn serve(
    shared: Arc<Shared>,
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
) {
    let slots = Arc::new(Semaphore::new(shared.config.relay.max_clients));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                // Out of file descriptors and the like: wait instead of spinning.
                tracing::warn!("accept: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let shared = shared.clone();
        let tls = tls.clone();
        match slots.clone().try_acquire_owned() {
            Ok(permit) => {
                tokio::spawn(async move {
                    let mut s = Session::new(shared, peer, tls, Box::new(stream));
                    if let Err(e) = s.run().await {
                        tracing::debug!(%peer, "session ended: {e}");
                    }
                    drop(permit);
                });
            }
            Err(_) => {
                tokio::spawn(async move {
                    let mut stream = stream;
                    let _ = stream
                        .write_all(b"421 4.7.0 Too many connections, try again later\r\n")
                        .await;
                });
            }
        }
    }
}

#[derive(Default)]
struct Transaction {
    sender: Option<String>,
    env_id: Option<String>,
    ret_full: bool,
    recipients: Vec<EnvelopeRecipient>,
}

struct Session {
    shared: Arc<Shared>,
    peer: SocketAddr,
    tls_config: Option<Arc<rustls::ServerConfig>>,
    io: BufReader<BoxIo>,
    out: Vec<u8>,
    helo: Option<String>,
    esmtp: bool,
    tls_active: bool,
    user: Option<String>,
    tx: Transaction,
    errors: u32,
}

enum Flow {
    Continue,
    Close,
}

impl Session {
    fn new(
        shared: Arc<Shared>,
        peer: SocketAddr,
        tls_config: Option<Arc<rustls::ServerConfig>>,
        io: BoxIo,
    ) -> Self {
        Session {
            shared,
            peer,
            tls_config,
            io: BufReader::with_capacity(16 * 1024, io),
            out: Vec::with_capacity(512),
            helo: None,
            esmtp: false,
            tls_active: false,
            user: None,
            tx: Transaction::default(),
            errors: 0,
        }
    }

    fn reply(&mut self, text: &str) {
        self.out.extend_from_slice(text.as_bytes());
        self.out.extend_from_slice(b"\r\n");
    }

    async fn flush(&mut self) -> std::io::Result<()> {
        if !self.out.is_empty() {
            let out = std::mem::take(&mut self.out);
            self.io.get_mut().write_all(&out).await?;
            self.io.get_mut().flush().await?;
        }
        Ok(())
    }

    fn timeout(&self) -> std::time::Duration {
        self.shared.config.relay.client_timeout
    }

    async fn run(&mut self) -> std::io::Result<()> {
        let greeting = format!(
            "220 {} ESMTP mxpace ready",
            self.shared.config.relay.hostname
        );
        self.reply(&greeting);
        self.flush().await?;
        loop {
            // RFC 2920: replies to a pipelined group go out together, when the
            // client has nothing more buffered.
            if self.io.buffer().is_empty() || self.out.len() > MAX_PENDING_OUTPUT {
                self.flush().await?;
            }
            let mut line = Vec::new();
            let piece = match tokio::time::timeout(
                self.timeout(),
                read_line_piece(&mut self.io, &mut line, MAX_COMMAND_LINE),
            )
            .await
            {
                Ok(r) => r?,
                Err(_) => {
                    self.reply("421 4.4.2 Timeout waiting for command, closing");
                    self.flush().await?;
                    return Ok(());
                }
            };
            if piece.eof {
                return Ok(());
            }
            if !piece.complete {
                self.skip_rest_of_line().await?;
                self.error("500 5.5.2 Line too long");
            } else if memchr::memchr(0, &line).is_some() {
                self.error("500 5.5.2 NUL character in command");
            } else {
                match self.command(&line).await? {
                    Flow::Continue => {}
                    Flow::Close => {
                        self.flush().await?;
                        return Ok(());
                    }
                }
            }
            if self.errors >= MAX_ERRORS {
                self.reply("421 4.7.0 Too many errors, closing");
                self.flush().await?;
                return Ok(());
            }
        }
    }

    fn error(&mut self, text: &str) {
        self.errors += 1;
        self.reply(text);
    }

    async fn skip_rest_of_line(&mut self) -> std::io::Result<()> {
        loop {
            let mut scratch = Vec::new();
            let p = tokio::time::timeout(
                self.timeout(),
                read_line_piece(&mut self.io, &mut scratch, MAX_COMMAND_LINE),
            )
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "timeout"))??;
            if p.complete || p.eof {
                return Ok(());
            }
        }
    }

    fn may_relay(&self) -> bool {
        self.user.is_some()
            || self
                .shared
                .config
                .relay
                .allow_clients
                .iter()
                .any(|n| n.contains(&self.peer.ip()))
    }

    async fn command(&mut self, line: &[u8]) -> std::io::Result<Flow> {
        let parsed = Request::parse(&mut line.iter()).map(|r| r.into_owned());
        let req = match parsed {
            Ok(r) => r,
            Err(e) => {
                let text = match e {
                    smtp_proto::Error::UnknownCommand => "500 5.5.2 Command unrecognized".into(),
                    smtp_proto::Error::InvalidSenderAddress => {
                        "501 5.1.7 Bad sender address syntax".into()
                    }
                    smtp_proto::Error::InvalidRecipientAddress => {
                        "501 5.1.3 Bad recipient address syntax".into()
                    }
                    smtp_proto::Error::SyntaxError { syntax } => {
                        format!("501 5.5.4 Syntax: {syntax}")
                    }
                    smtp_proto::Error::InvalidParameter { param } => {
                        format!("501 5.5.4 Invalid parameter {param}")
                    }
                    smtp_proto::Error::UnsupportedParameter { param } => {
                        format!("555 5.5.4 Unsupported parameter {}", sanitize(&param))
                    }
                    _ => "500 5.5.2 Syntax error".into(),
                };
                self.error(&text);
                return Ok(Flow::Continue);
            }
        };
        match req {
            Request::Ehlo { host } => {
                self.helo = Some(host.clone());
                self.esmtp = true;
                self.tx = Transaction::default();
                let mut lines = vec![
                    format!(
                        "{} Hello {}",
                        self.shared.config.relay.hostname,
                        sanitize(&host)
                    ),
                    "PIPELINING".to_string(),
                    format!("SIZE {}", self.shared.config.relay.max_message_size),
                    "8BITMIME".into(),
                    "SMTPUTF8".into(),
                    "ENHANCEDSTATUSCODES".into(),
                    "DSN".into(),
                ];
                if self.tls_config.is_some() && !self.tls_active {
                    lines.push("STARTTLS".into());
                }
                if self.tls_active && !self.shared.config.user.is_empty() {
                    lines.push("AUTH PLAIN LOGIN".into());
                }
                let n = lines.len();
                for (i, l) in lines.into_iter().enumerate() {
                    let sep = if i + 1 == n { ' ' } else { '-' };
                    self.reply(&format!("250{sep}{l}"));
                }
            }
            Request::Helo { host } | Request::Lhlo { host } => {
                self.helo = Some(host);
                self.esmtp = false;
                self.tx = Transaction::default();
                let text = format!("250 {}", self.shared.config.relay.hostname);
                self.reply(&text);
            }
            Request::StartTls => return self.starttls().await,
            Request::Auth {
                mechanism,
                initial_response,
            } => self.auth(mechanism, initial_response).await?,
            Request::Mail { from } => self.mail(from),
            Request::Rcpt { to } => self.rcpt(to),
            Request::Data => return self.data().await,
            Request::Bdat { .. } => self.error("502 5.5.1 BDAT not supported (no CHUNKING)"),
            Request::Rset => {
                self.tx = Transaction::default();
                self.reply("250 2.0.0 Ok");
            }
            Request::Noop { .. } => self.reply("250 2.0.0 Ok"),
            Request::Vrfy { .. } => self.reply("252 2.5.2 Cannot VRFY user"),
            Request::Help { .. } => self.reply("214 2.0.0 See RFC 5321"),
            Request::Quit => {
                self.reply("221 2.0.0 Bye");
                return Ok(Flow::Close);
            }
            _ => self.error("502 5.5.1 Command not implemented"),
        }
        Ok(Flow::Continue)
    }

    async fn starttls(&mut self) -> std::io::Result<Flow> {
        let Some(config) = self.tls_config.clone() else {
            self.error("502 5.5.1 STARTTLS not available");
            return Ok(Flow::Continue);
        };
        if self.tls_active {
            self.error("503 5.5.1 TLS already active");
            return Ok(Flow::Continue);
        }
        self.reply("220 2.0.0 Ready to start TLS");
        self.flush().await?;
        // Anything the client pipelined after STARTTLS is discarded (RFC 3207 §4.2:
        // a plaintext injection must not reach the TLS session).
        let placeholder: BoxIo = Box::new(empty::EmptyDuplex);
        let old = std::mem::replace(&mut self.io, BufReader::new(placeholder));
        let plain = old.into_inner();
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        let tls = tokio::time::timeout(self.timeout(), acceptor.accept(plain))
            .await
            .map_err(|_| {
                std::io::Error::new(std::io::ErrorKind::TimedOut, "TLS handshake timeout")
            })??;
        self.io = BufReader::with_capacity(16 * 1024, Box::new(tls));
        self.tls_active = true;
        self.helo = None;
        self.esmtp = false;
        self.user = None;
        self.tx = Transaction::default();
        Ok(Flow::Continue)
    }

    async fn read_auth_line(&mut self) -> std::io::Result<Option<String>> {
        self.flush().await?;
        let mut line = Vec::new();
        let p = tokio::time::timeout(
            self.timeout(),
            read_line_piece(&mut self.io, &mut line, MAX_COMMAND_LINE),
        )
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "timeout"))??;
        if !p.complete {
            return Ok(None);
        }
        Ok(Some(String::from_utf8_lossy(&line).trim().to_owned()))
    }

    async fn auth(&mut self, mechanism: u64, initial: String) -> std::io::Result<()> {
        if !self.tls_active {
            self.error("538 5.7.11 Encryption required for requested authentication mechanism");
            return Ok(());
        }
        if self.shared.config.user.is_empty() {
            self.error("502 5.5.1 AUTH not available");
            return Ok(());
        }
        if self.user.is_some() {
            self.error("503 5.5.1 Already authenticated");
            return Ok(());
        }
        let b64 = base64::engine::general_purpose::STANDARD;
        let decode = |s: &str| b64.decode(s.trim()).ok();
        let creds: Option<(String, String)> = if mechanism == smtp_proto::AUTH_PLAIN {
            let data = if initial.is_empty() || initial == "=" {
                self.reply("334 ");
                self.read_auth_line().await?.unwrap_or_default()
            } else {
                initial
            };
            decode(&data).and_then(|raw| {
                let mut parts = raw.split(|&b| b == 0);
                let _authzid = parts.next()?;
                let user = String::from_utf8(parts.next()?.to_vec()).ok()?;
                let pass = String::from_utf8(parts.next()?.to_vec()).ok()?;
                Some((user, pass))
            })
        } else if mechanism == smtp_proto::AUTH_LOGIN {
            let user = if initial.is_empty() {
                self.reply("334 VXNlcm5hbWU6");
                self.read_auth_line().await?.unwrap_or_default()
            } else {
                initial
            };
            self.reply("334 UGFzc3dvcmQ6");
            let pass = self.read_auth_line().await?.unwrap_or_default();
            match (decode(&user), decode(&pass)) {
                (Some(u), Some(p)) => String::from_utf8(u).ok().zip(String::from_utf8(p).ok()),
                _ => None,
            }
        } else {
            self.error("504 5.5.4 Unrecognized authentication type");
            return Ok(());
        };
        let ok = match &creds {
            Some((user, pass)) => {
                // Argon2 takes tens of milliseconds on purpose: off the async workers.
                let shared = self.shared.clone();
                let (user, pass) = (user.clone(), pass.clone());
                tokio::task::spawn_blocking(move || {
                    crate::password::verify(&shared.config.user, &user, &pass)
                })
                .await
                .unwrap_or(false)
            }
            None => false,
        };
        if ok {
            self.user = creds.map(|(u, _)| u);
            self.reply("235 2.7.0 Authentication successful");
        } else {
            self.error("535 5.7.8 Authentication credentials invalid");
        }
        Ok(())
    }

    fn mail(&mut self, from: smtp_proto::MailFrom<String>) {
        if self.helo.is_none() {
            self.error("503 5.5.1 Send EHLO/HELO first");
            return;
        }
        if self.tx.sender.is_some() {
            self.error("503 5.5.1 Nested MAIL command");
            return;
        }
        if from.size > self.shared.config.relay.max_message_size {
            self.error("552 5.3.4 Message size exceeds fixed maximum message size");
            return;
        }
        if !self.may_relay() {
            // Refuse early: an unknown, unauthenticated client gets nothing queued.
            self.error("530 5.7.0 Authentication required (or connect from an allowed network)");
            return;
        }
        self.tx = Transaction {
            sender: Some(from.address),
            env_id: from.env_id,
            ret_full: from.flags & smtp_proto::MAIL_RET_FULL != 0,
            recipients: Vec::new(),
        };
        self.reply("250 2.1.0 Ok");
    }

    fn rcpt(&mut self, to: smtp_proto::RcptTo<String>) {
        if self.tx.sender.is_none() {
            self.error("503 5.5.1 Need MAIL before RCPT");
            return;
        }
        if !self.may_relay() {
            self.error("554 5.7.1 Relay access denied");
            return;
        }
        if self.tx.recipients.len() >= MAX_RECIPIENTS {
            self.reply("452 4.5.3 Too many recipients");
            return;
        }
        let domain_ok = to
            .address
            .rsplit_once('@')
            .is_some_and(|(l, d)| !l.is_empty() && !d.is_empty());
        if !domain_ok {
            self.error("501 5.1.3 Recipient address must be user@domain");
            return;
        }
        self.tx.recipients.push(EnvelopeRecipient {
            address: to.address,
            orcpt: to.orcpt,
            notify: to.flags
                & (smtp_proto::RCPT_NOTIFY_SUCCESS
                    | smtp_proto::RCPT_NOTIFY_FAILURE
                    | smtp_proto::RCPT_NOTIFY_DELAY
                    | smtp_proto::RCPT_NOTIFY_NEVER),
        });
        self.reply("250 2.1.5 Ok");
    }

    async fn data(&mut self) -> std::io::Result<Flow> {
        if self.tx.sender.is_none() {
            self.error("503 5.5.1 Need MAIL command");
            return Ok(Flow::Continue);
        }
        if self.tx.recipients.is_empty() {
            self.error("554 5.5.1 No valid recipients");
            return Ok(Flow::Continue);
        }
        self.reply("354 End data with <CR><LF>.<CR><LF>");
        self.flush().await?;
        let max = self.shared.config.relay.max_message_size;
        let mut body = Vec::with_capacity(16 * 1024);
        // Held until the message is spooled (or refused): dropped at the end of DATA.
        let mut held = self.shared.data_budget.reserve();
        let mut over_budget = false;
        let mut too_big = false;
        let mut has_nul = false;
        let mut at_line_start = true;
        loop {
            let mut piece = Vec::new();
            let p = match tokio::time::timeout(
                self.timeout(),
                read_line_piece(&mut self.io, &mut piece, DATA_PIECE),
            )
            .await
            {
                Ok(r) => r?,
                Err(_) => {
                    self.reply("421 4.4.2 Timeout during DATA, closing");
                    return Ok(Flow::Close);
                }
            };
            if p.eof {
                // The client went away mid-message: nothing was acknowledged.
                return Ok(Flow::Close);
            }
            if at_line_start && p.complete && (piece == b".\r\n" || piece == b".\n") {
                break;
            }
            let mut content: &[u8] = &piece;
            if at_line_start && content.first() == Some(&b'.') {
                content = &content[1..];
            }
            has_nul |= memchr::memchr(0, content).is_some();
            if body.len() + content.len() + 1 > max {
                too_big = true;
            } else if over_budget || !held.grow_to(body.len() + content.len() + 1) {
                // Read on to the end (the client is mid-message), keep nothing.
                over_budget = true;
                body = Vec::new();
            } else if p.complete && !content.ends_with(b"\r\n") {
                // Bare LF: stored as CRLF, as SMTP requires on the wire.
                body.extend_from_slice(&content[..content.len() - 1]);
                body.extend_from_slice(b"\r\n");
            } else {
                body.extend_from_slice(content);
            }
            at_line_start = p.complete;
        }
        let tx = std::mem::take(&mut self.tx);
        if too_big {
            self.reply("552 5.3.4 Message size exceeds fixed maximum message size");
            return Ok(Flow::Continue);
        }
        if has_nul {
            self.reply("554 5.6.0 Message contains NUL characters");
            return Ok(Flow::Continue);
        }
        if over_budget {
            tracing::warn!("message data refused: max_data_memory is in use by other sessions");
            self.reply("452 4.3.1 Insufficient system storage, try again later");
            return Ok(Flow::Continue);
        }
        let user_stream = self.user.as_ref().and_then(|u| {
            self.shared
                .config
                .user
                .iter()
                .find(|c| c.name == *u)
                .and_then(|c| c.stream.clone())
        });
        let trace = self.received_header(&tx);
        let sub = Submission {
            sender: tx.sender.unwrap_or_default(),
            recipients: tx.recipients,
            env_id: tx.env_id,
            ret_full: tx.ret_full,
            stream: user_stream,
            idempotency_key: None,
            trace: Some(trace),
            body,
        };
        match service::accept(&self.shared, sub).await {
            Ok(a) => {
                let text = format!("250 2.0.0 Ok: queued as {}", a.queue_id);
                self.reply(&text);
            }
            Err(e) => {
                tracing::error!("spooling failed: {e}");
                self.reply("452 4.3.1 Insufficient system storage, try again later");
            }
        }
        Ok(Flow::Continue)
    }

    fn received_header(&self, tx: &Transaction) -> String {
        let with = match (self.esmtp, self.tls_active, self.user.is_some()) {
            (false, _, _) => "SMTP",
            (true, false, false) => "ESMTP",
            (true, true, false) => "ESMTPS",
            (true, false, true) => "ESMTPA",
            (true, true, true) => "ESMTPSA",
        };
        let date = OffsetDateTime::now_utc()
            .format(&Rfc2822)
            .unwrap_or_default();
        let for_clause = match tx.recipients.as_slice() {
            [one] => format!("\r\n\tfor <{}>", sanitize(&one.address)),
            _ => String::new(),
        };
        format!(
            "Received: from {} ([{}])\r\n\tby {} (mxpace) with {with}{for_clause};\r\n\t{date}\r\n",
            sanitize(self.helo.as_deref().unwrap_or("unknown")),
            self.peer.ip(),
            self.shared.config.relay.hostname,
        )
    }
}

/// Keep client-supplied text printable and short before echoing it.
fn sanitize(s: &str) -> String {
    s.chars().filter(|c| !c.is_control()).take(255).collect()
}

/// A stand-in transport that is always at EOF (used while swapping streams).
mod empty {
    use std::pin::Pin;
    use std::task::{Context, Poll};
    use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

    pub struct EmptyDuplex;

    impl AsyncRead for EmptyDuplex {
        fn poll_read(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            _: &mut ReadBuf<'_>,
        ) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }
    impl AsyncWrite for EmptyDuplex {
        fn poll_write(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            b: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            Poll::Ready(Ok(b.len()))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }
}
