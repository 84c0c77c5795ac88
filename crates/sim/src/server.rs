//! The SMTP server around the receiver model: tokio, one task per connection.
//!
//! The shell does the I/O: sockets, TLS, line framing, command syntax (500/501), the
//! message text, the ledger. Dialogue order and every policy decision come from the
//! [`Receiver`] behind one mutex (each call is short and never awaits).

use crate::ledger::{LedgerLine, LedgerWriter};
use crate::model::{Receiver, SessionId};
use crate::reply::{After, Reason, Reply};
use smtp_proto::Request;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use time::OffsetDateTime;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

/// RFC 5321 §4.5.3.1.4: a command line is at most 512 octets, but receivers commonly
/// allow more; the issue fixes our limit at 1000 bytes including CRLF.
pub const MAX_COMMAND_LINE: usize = 1000;
/// Longest message text line we keep in memory while looking for headers; longer lines
/// are counted and skipped, never buffered whole.
const MAX_DATA_LINE: usize = 64 * 1024;

/// Server settings (the shell's; policy lives in the profile).
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Connections open at once, over all clients; more get `421 4.3.2` and are closed.
    pub max_connections: usize,
    /// Largest message accepted (advertised as SIZE).
    pub max_message_size: usize,
    /// Close a session that sends nothing for this long (RFC 5321 §4.5.3.2.7: 5 min).
    pub idle_timeout: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            max_connections: 2000,
            max_message_size: 50 * 1024 * 1024,
            idle_timeout: Duration::from_secs(300),
        }
    }
}

/// State shared by every connection.
pub struct Shared {
    receiver: Mutex<Receiver>,
    start: Instant,
    epoch: OffsetDateTime,
    ledger: Option<LedgerWriter>,
    tls: TlsAcceptor,
    config: ServerConfig,
    slots: Arc<Semaphore>,
}

impl Shared {
    /// Wrap a receiver; its `now = 0` is this moment.
    pub fn new(
        receiver: Receiver,
        ledger: Option<LedgerWriter>,
        tls: TlsAcceptor,
        config: ServerConfig,
    ) -> Arc<Shared> {
        let epoch = OffsetDateTime::now_utc();
        Arc::new(Shared {
            receiver: Mutex::new(receiver.with_epoch(epoch)),
            start: Instant::now(),
            epoch,
            ledger,
            tls,
            slots: Arc::new(Semaphore::new(config.max_connections)),
            config,
        })
    }

    fn now(&self) -> Duration {
        self.start.elapsed()
    }

    fn with<R>(&self, f: impl FnOnce(&mut Receiver, Duration) -> R) -> R {
        let now = self.now();
        // A panic while holding the lock would be a bug in the model; keep serving.
        let mut guard = self.receiver.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut guard, now)
    }

    fn wall_time(&self) -> String {
        let t = self.epoch + self.now();
        t.format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default()
    }
}

/// A self-signed certificate for STARTTLS, made at start (rcgen).
pub fn self_signed_tls(host_name: &str) -> anyhow::Result<TlsAcceptor> {
    use anyhow::Context as _;
    let names = vec![host_name.to_string(), "localhost".to_string()];
    let cert = rcgen::generate_simple_self_signed(names).context("generating certificate")?;
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(rustls::pki_types::PrivatePkcs8KeyDer::from(
        cert.signing_key.serialize_der(),
    ));
    // Name the provider explicitly: with several crypto back-ends linked in the
    // workspace, rustls cannot pick a process default on its own.
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_no_client_auth()
        .with_single_cert(vec![cert.cert.der().clone()], key)
        .context("TLS certificate")?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Accept connections on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    let listen = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    let listen: Arc<str> = Arc::from(listen);
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                // Out of file descriptors and the like: wait a little, keep serving.
                tracing::warn!("accept on {listen}: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let shared = shared.clone();
        let listen = listen.clone();
        tokio::spawn(async move {
            let _ = stream.set_nodelay(true);
            let Ok(permit) = shared.slots.clone().try_acquire_owned() else {
                let mut stream = stream;
                let _ = stream
                    .write_all(b"421 4.3.2 Too many connections, try again later\r\n")
                    .await;
                return;
            };
            if let Err(e) = session(stream, peer, &listen, &shared).await {
                tracing::debug!("session from {peer}: {e}");
            }
            drop(permit);
        });
    }
}

/// A connection, before or after STARTTLS.
enum Conn {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
    /// Only while the plain stream is handed to the TLS handshake.
    Upgrading,
}

fn upgrading<T>() -> Poll<io::Result<T>> {
    Poll::Ready(Err(io::Error::other("connection is being upgraded to TLS")))
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Conn::Upgrading => upgrading(),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Conn::Upgrading => upgrading(),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_flush(cx),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Conn::Upgrading => upgrading(),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Conn::Upgrading => upgrading(),
        }
    }
}

/// Result of reading one line with a length limit.
enum Line {
    /// A complete line (with its LF) is in the buffer.
    Complete,
    /// The line was longer than the limit; it was consumed and discarded.
    TooLong,
    /// The client closed the connection.
    Eof,
}

/// Read up to and including LF into `buf` (cleared first), keeping at most `max` bytes.
async fn read_line<R: AsyncBufReadExt + Unpin>(
    r: &mut R,
    buf: &mut Vec<u8>,
    max: usize,
) -> io::Result<Line> {
    buf.clear();
    let mut too_long = false;
    loop {
        let avail = r.fill_buf().await?;
        if avail.is_empty() {
            // A last line without LF counts as the connection closing mid-line.
            return Ok(Line::Eof);
        }
        let (take, done) = match avail.iter().position(|&b| b == b'\n') {
            Some(i) => (i + 1, true),
            None => (avail.len(), false),
        };
        if !too_long {
            if buf.len() + take > max {
                too_long = true;
                buf.clear();
            } else {
                buf.extend_from_slice(&avail[..take]);
            }
        }
        r.consume(take);
        if done {
            return Ok(if too_long {
                Line::TooLong
            } else {
                Line::Complete
            });
        }
    }
}

/// Per-session I/O state: buffered reader over the connection plus pending output.
struct Io {
    reader: BufReader<Conn>,
    out: Vec<u8>,
    tls: bool,
}

impl Io {
    fn push(&mut self, text: &str) {
        self.out.extend_from_slice(text.as_bytes());
        self.out.extend_from_slice(b"\r\n");
    }

    /// Send pending replies now.
    async fn flush(&mut self) -> io::Result<()> {
        if !self.out.is_empty() {
            let w = self.reader.get_mut();
            w.write_all(&self.out).await?;
            w.flush().await?;
            self.out.clear();
        }
        Ok(())
    }

    /// Send pending replies unless the client has pipelined more commands already
    /// (RFC 2920: replies may be batched until the server would block on reading).
    async fn flush_if_idle(&mut self) -> io::Result<()> {
        if self.reader.buffer().is_empty() {
            self.flush().await?;
        }
        Ok(())
    }
}

/// Closes the model's session however the connection ends.
struct SessionGuard<'a> {
    shared: &'a Shared,
    id: SessionId,
}

impl Drop for SessionGuard<'_> {
    fn drop(&mut self) {
        let id = self.id;
        self.shared.with(|mx, now| mx.close(now, id));
    }
}

async fn session(
    stream: TcpStream,
    peer: SocketAddr,
    listen: &str,
    shared: &Shared,
) -> io::Result<()> {
    let client_ip = peer.ip();
    let mut io = Io {
        reader: BufReader::with_capacity(16 * 1024, Conn::Plain(stream)),
        out: Vec::with_capacity(1024),
        tls: false,
    };
    let id = match shared.with(|mx, now| mx.connect(now, client_ip, listen)) {
        Ok((id, banner)) => {
            io.push(&banner.text);
            id
        }
        Err(refusal) => {
            log_refusal(shared, &refusal, client_ip, listen, "");
            io.push(&refusal.text);
            return io.flush().await;
        }
    };
    let _guard = SessionGuard { shared, id };
    io.flush().await?;
    let mut line = Vec::with_capacity(1024);
    let idle = shared.config.idle_timeout;
    loop {
        io.flush_if_idle().await?;
        let got = match tokio::time::timeout(
            idle,
            read_line(&mut io.reader, &mut line, MAX_COMMAND_LINE),
        )
        .await
        {
            Ok(r) => r?,
            Err(_) => {
                io.push("421 4.4.2 Error: timeout exceeded");
                return io.flush().await;
            }
        };
        match got {
            Line::Eof => return Ok(()),
            Line::TooLong => {
                io.push("500 5.5.2 Error: line too long");
                continue;
            }
            Line::Complete => {}
        }
        match command(&mut io, &line, id, client_ip, listen, shared).await? {
            Next::Continue => {}
            Next::Close => return io.flush().await,
            Next::Drop => return Ok(()),
        }
    }
}

enum Next {
    Continue,
    Close,
    Drop,
}

fn next_after(reply: &Reply) -> Next {
    match reply.after {
        After::Continue => Next::Continue,
        After::Close => Next::Close,
        After::Drop => Next::Drop,
    }
}

async fn command(
    io: &mut Io,
    line: &[u8],
    id: SessionId,
    client_ip: std::net::IpAddr,
    listen: &str,
    shared: &Shared,
) -> io::Result<Next> {
    let request = match Request::parse(&mut line.iter()) {
        Ok(r) => r,
        Err(e) => {
            io.push(&syntax_error(e));
            return Ok(Next::Continue);
        }
    };
    let mut recipient = String::new();
    let reply = match request {
        Request::Ehlo { host } => {
            let first = shared.with(|mx, now| mx.ehlo(now, id, &host));
            io.push(&ehlo_reply(&first, io.tls, shared.config.max_message_size));
            return Ok(Next::Continue);
        }
        Request::Helo { host } => shared.with(|mx, now| mx.ehlo(now, id, &host)),
        Request::Mail { from } => {
            if from.size > shared.config.max_message_size {
                io.push("552 5.3.4 Message size exceeds fixed maximum message size");
                return Ok(Next::Continue);
            }
            shared.with(|mx, now| mx.mail_from(now, id, &from.address))
        }
        Request::Rcpt { to } => {
            if to.address.is_empty() {
                io.push("501 5.1.3 Bad recipient address syntax");
                return Ok(Next::Continue);
            }
            recipient = to.address.to_string();
            shared.with(|mx, now| mx.rcpt(now, id, &to.address))
        }
        Request::Data => {
            let reply = shared.with(|mx, now| mx.data(now, id));
            io.push(&reply.text);
            if reply.code != 354 {
                return Ok(Next::Continue);
            }
            io.flush().await?;
            return receive_message(io, id, client_ip, listen, shared).await;
        }
        Request::Rset => shared.with(|mx, now| mx.rset(now, id)),
        Request::Noop { .. } => {
            io.push("250 2.0.0 Ok");
            return Ok(Next::Continue);
        }
        Request::Vrfy { .. } => {
            io.push("252 2.0.0 Cannot VRFY user, but will accept message and attempt delivery");
            return Ok(Next::Continue);
        }
        Request::Help { .. } => {
            io.push("214 2.0.0 See RFC 5321");
            return Ok(Next::Continue);
        }
        Request::Quit => {
            io.push("221 2.0.0 Bye");
            return Ok(Next::Close);
        }
        Request::StartTls => {
            if io.tls {
                io.push("503 5.5.1 Error: TLS already active");
                return Ok(Next::Continue);
            }
            io.push("220 2.0.0 Ready to start TLS");
            io.flush().await?;
            starttls(io, shared).await?;
            shared.with(|mx, now| mx.starttls(now, id));
            return Ok(Next::Continue);
        }
        Request::Lhlo { .. }
        | Request::Bdat { .. }
        | Request::Auth { .. }
        | Request::Expn { .. }
        | Request::Etrn { .. }
        | Request::Atrn { .. }
        | Request::Burl { .. } => {
            io.push("502 5.5.1 Error: command not implemented");
            return Ok(Next::Continue);
        }
    };
    if reply.code >= 400 {
        log_refusal(shared, &reply, client_ip, listen, &recipient);
    }
    io.push(&reply.text);
    Ok(next_after(&reply))
}

/// Replace the plain stream by a TLS stream (RFC 3207). Anything the client pipelined
/// after STARTTLS is discarded, as RFC 3207 §4.2 requires.
async fn starttls(io: &mut Io, shared: &Shared) -> io::Result<()> {
    let placeholder = BufReader::new(Conn::Upgrading);
    let old = std::mem::replace(&mut io.reader, placeholder);
    let Conn::Plain(tcp) = old.into_inner() else {
        return Err(io::Error::other("STARTTLS on a TLS stream"));
    };
    // A client that never starts the handshake must not hold the connection forever.
    let tls = tokio::time::timeout(shared.config.idle_timeout, shared.tls.accept(tcp))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timeout"))??;
    io.reader = BufReader::with_capacity(16 * 1024, Conn::Tls(Box::new(tls)));
    io.tls = true;
    Ok(())
}

async fn receive_message(
    io: &mut Io,
    id: SessionId,
    client_ip: std::net::IpAddr,
    listen: &str,
    shared: &Shared,
) -> io::Result<Next> {
    let mut line = Vec::with_capacity(1024);
    let mut in_headers = true;
    let mut message_id: Option<String> = None;
    let mut size = 0usize;
    loop {
        let got = tokio::time::timeout(
            shared.config.idle_timeout,
            read_line(&mut io.reader, &mut line, MAX_DATA_LINE),
        )
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "timeout in DATA"))??;
        match got {
            Line::Eof => return Ok(Next::Drop),
            Line::TooLong => {
                size += MAX_DATA_LINE;
                in_headers = false;
                continue;
            }
            Line::Complete => {}
        }
        if line == b".\r\n" || line == b".\n" {
            break;
        }
        size += line.len();
        if in_headers {
            let text = trim_eol(&line);
            if text.is_empty() {
                in_headers = false;
            } else if message_id.is_none()
                && text.len() > 11
                && text[..11].eq_ignore_ascii_case(b"message-id:")
            {
                let value = String::from_utf8_lossy(&text[11..]).trim().to_string();
                if !value.is_empty() {
                    message_id = Some(value);
                }
            }
        }
    }
    if size > shared.config.max_message_size {
        shared.with(|mx, now| mx.rset(now, id));
        io.push("552 5.3.4 Message size exceeds fixed maximum message size");
        return Ok(Next::Continue);
    }
    let outcome = shared.with(|mx, now| mx.data_end(now, id, message_id.as_deref()));
    if !outcome.accepted.is_empty()
        && let Some(ledger) = &shared.ledger
    {
        let time = shared.wall_time();
        let lines = outcome
            .accepted
            .iter()
            .map(|rcpt| LedgerLine {
                message_id: message_id.clone(),
                recipient: rcpt.clone(),
                client_ip: client_ip.to_string(),
                listen: listen.to_string(),
                time: time.clone(),
                deferred: None,
                code: None,
            })
            .collect();
        // The 250 goes out only once the ledger has the lines.
        if let Err(e) = ledger.append_durable(lines).await {
            tracing::error!("ledger: {e}");
            io.push("451 4.3.0 Error: ledger write failed, message not accepted");
            return Ok(Next::Continue);
        }
    }
    let reply = outcome.reply;
    if reply.code >= 400 {
        log_refusal(shared, &reply, client_ip, listen, "");
    }
    if !reply.delay.is_zero() {
        tokio::time::sleep(reply.delay).await;
    }
    if reply.after != After::Drop {
        io.push(&reply.text);
    }
    Ok(next_after(&reply))
}

fn trim_eol(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// Record a deferral or rejection in the ledger (not waited for).
fn log_refusal(
    shared: &Shared,
    reply: &Reply,
    client_ip: std::net::IpAddr,
    listen: &str,
    recipient: &str,
) {
    if reply.reason == Reason::Protocol || reply.reason == Reason::Ok {
        return;
    }
    if let Some(ledger) = &shared.ledger {
        ledger.append(vec![LedgerLine {
            message_id: None,
            recipient: recipient.to_string(),
            client_ip: client_ip.to_string(),
            listen: listen.to_string(),
            time: shared.wall_time(),
            deferred: Some(reply.reason.as_str().to_string()),
            code: Some(reply.code),
        }]);
    }
}

/// The EHLO reply: the profile's first line, then our extensions (RFC 1870 SIZE,
/// RFC 2920 PIPELINING, RFC 6152 8BITMIME, RFC 3207 STARTTLS, RFC 2034).
fn ehlo_reply(first: &Reply, tls: bool, max_size: usize) -> String {
    if first.code != 250 {
        return first.text.clone();
    }
    let mut out = String::with_capacity(200);
    for l in first.lines() {
        out.push_str("250-");
        out.push_str(l.get(4..).unwrap_or(""));
        out.push_str("\r\n");
    }
    out.push_str("250-PIPELINING\r\n");
    out.push_str(&format!("250-SIZE {max_size}\r\n"));
    out.push_str("250-8BITMIME\r\n");
    if !tls {
        out.push_str("250-STARTTLS\r\n");
    }
    out.push_str("250 ENHANCEDSTATUSCODES");
    out
}

fn syntax_error(e: smtp_proto::Error) -> String {
    use smtp_proto::Error as E;
    match e {
        E::UnknownCommand | E::NeedsMoreData { .. } | E::ResponseTooLong => {
            "500 5.5.2 Error: command not recognized".into()
        }
        E::InvalidSenderAddress => "501 5.1.7 Bad sender address syntax".into(),
        E::InvalidRecipientAddress => "501 5.1.3 Bad recipient address syntax".into(),
        E::SyntaxError { syntax } => format!("501 5.5.4 Syntax: {syntax}"),
        E::InvalidParameter { param } => format!("501 5.5.4 Invalid parameter {param}"),
        E::UnsupportedParameter { param } => {
            let param: String = param.chars().filter(|c| !c.is_control()).take(64).collect();
            format!("555 5.5.4 Unsupported parameter {param}")
        }
        E::InvalidResponse { .. } => "500 5.5.2 Error: command not recognized".into(),
    }
}
