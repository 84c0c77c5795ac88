//! The shell: expand globs, open files (or stdin), detect the format, feed the readers
//! and the analyzer. Postfix input is parsed on all cores: big chunks split on line
//! boundaries are parsed in parallel (stateless), then joined by queue ID in order
//! (cheap), so correlation is exactly as in a sequential read.

use crate::aggregate::{Analyzer, AttemptView, Config, Derived, Tally};
use crate::knowledge::Providers;
use crate::template::Templater;
use anyhow::{Context, Result, bail};
use mxpace_events::Event;
use mxpace_events::readers::postfix::{self, Correlator, Parsed, Record};
use mxpace_events::readers::{
    self, Format, LineStatus, MAX_LINE, ReadStats, ReaderConfig, SkipReason, Stamp, YearTracker,
};
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::io::{BufRead, Read};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};
use time::OffsetDateTime;

/// How to read the inputs.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Force a format instead of detecting it.
    pub format: Option<Format>,
    pub reader: ReaderConfig,
    /// Show a progress bar (the caller decides: only on a TTY and for large inputs).
    pub progress: bool,
    /// Keep reading the (single) input as it grows.
    pub follow: bool,
    /// With `follow`: stop after this long without new data (None: forever).
    pub follow_idle: Option<Duration>,
    /// Parse Postfix on several cores (default true via [`Options::new`]).
    pub parallel: bool,
    /// Bytes per parallel chunk (default [`CHUNK`]).
    pub chunk_bytes: usize,
}

impl Options {
    /// Defaults: detect the format, parallel Postfix parsing.
    pub fn new() -> Self {
        Options {
            parallel: true,
            chunk_bytes: CHUNK,
            ..Default::default()
        }
    }
}

/// Expand the command line's inputs: globs, plain paths, and `-` for stdin.
pub fn expand(inputs: &[String]) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for input in inputs {
        if input == "-" || !input.contains(['*', '?', '[']) {
            out.push(PathBuf::from(input));
            continue;
        }
        let mut matched: Vec<PathBuf> = glob::glob(input)
            .with_context(|| format!("bad glob pattern {input:?}"))?
            .filter_map(|p| p.ok())
            .filter(|p| p.is_file())
            .collect();
        if matched.is_empty() {
            bail!("no file matches {input:?}");
        }
        // Rotated logs: mail.log.3.gz, mail.log.2.gz, mail.log.1, mail.log — oldest first.
        matched.sort_by_key(|p| std::cmp::Reverse(rotation_number(p)));
        out.extend(matched);
    }
    Ok(out)
}

fn rotation_number(path: &Path) -> u32 {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    name.split('.')
        .filter_map(|part| part.parse::<u32>().ok())
        .next_back()
        .unwrap_or(0)
}

/// What reading produced.
#[derive(Debug, Default)]
pub struct Outcome {
    pub stats: ReadStats,
    pub formats: Vec<Format>,
}

/// Read every input into the analyzer. `on_idle` is called during `follow` when no new
/// data arrived (to refresh a live summary).
pub fn read_all(
    paths: &[PathBuf],
    options: &Options,
    analyzer: &mut Analyzer,
    on_idle: &mut dyn FnMut(&Analyzer, &ReadStats),
) -> Result<Outcome> {
    let mut outcome = Outcome::default();
    if options.follow && paths.len() != 1 {
        bail!("--follow needs exactly one input");
    }
    // Readers live across files: rotated logs continue each other, and a message queued
    // in one file is often delivered in the next.
    let mut correlator: Option<Correlator> = None;
    let mut line_readers: Vec<(Format, Box<dyn readers::LineReader>)> = Vec::new();
    for path in paths {
        let (source, size): (Box<dyn Read + Send>, Option<u64>) = if path.as_os_str() == "-" {
            (Box::new(std::io::stdin()), None)
        } else {
            let file = std::fs::File::open(path)
                .with_context(|| format!("cannot open {}", path.display()))?;
            let size = file.metadata().ok().map(|m| m.len());
            (Box::new(file), size)
        };
        let mut config = options.reader.clone();
        if config.year.is_none() {
            let (year, month) = year_of(path);
            config.year = Some(year);
            config.end_month = Some(month);
        }
        let (mut input, _) = readers::open_reader(source)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let format = match options.format {
            Some(f) => f,
            None => {
                let head = input
                    .fill_buf()
                    .with_context(|| format!("cannot read {}", path.display()))?;
                let head = &head[..head.len().min(64 * 1024)];
                match readers::detect(head) {
                    Some(f) => f,
                    None if head.is_empty() => continue,
                    None => bail!(
                        "{}: unknown log format (not Postfix, Exim, PowerMTA, KumoMTA or mxpace events); use --format to force one",
                        path.display()
                    ),
                }
            }
        };
        outcome.formats.push(format);
        let bar = progress_bar(options.progress, size, path);
        let stats = if format == Format::Postfix && options.parallel && !options.follow {
            let correlator = correlator.get_or_insert_with(|| Correlator::new(&config));
            let chunk = options.chunk_bytes.max(4096);
            read_postfix_parallel(
                &mut input,
                &config,
                correlator,
                chunk,
                analyzer,
                bar.as_ref(),
            )?
        } else {
            let i = match line_readers.iter().position(|(f, _)| *f == format) {
                Some(i) => i,
                None => {
                    line_readers.push((format, readers::reader_for(format, &config)));
                    line_readers.len() - 1
                }
            };
            let reader = line_readers[i].1.as_mut();
            read_sequential(&mut input, reader, options, analyzer, bar.as_ref(), on_idle)?
        };
        if let Some(bar) = bar {
            bar.finish_and_clear();
        }
        outcome.stats.merge(&stats);
    }
    Ok(outcome)
}

/// Year and month (1–12) the log most likely ends in: the file's modification time, else now.
fn year_of(path: &Path) -> (i32, u8) {
    let modified = std::fs::metadata(path).and_then(|m| m.modified()).ok();
    let t = time::OffsetDateTime::from(modified.unwrap_or_else(std::time::SystemTime::now));
    (t.year(), t.month() as u8)
}

fn progress_bar(enabled: bool, size: Option<u64>, path: &Path) -> Option<indicatif::ProgressBar> {
    let size = size?;
    if !enabled || size < 64 << 20 {
        return None;
    }
    let bar = indicatif::ProgressBar::new(size);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{msg} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar.set_message(path.display().to_string());
    Some(bar)
}

fn read_sequential(
    input: &mut Box<dyn BufRead + Send>,
    reader: &mut dyn readers::LineReader,
    options: &Options,
    analyzer: &mut Analyzer,
    bar: Option<&indicatif::ProgressBar>,
    on_idle: &mut dyn FnMut(&Analyzer, &ReadStats),
) -> Result<ReadStats> {
    let mut stats = ReadStats::default();
    let mut line = Vec::with_capacity(4096);
    let mut events: Vec<Event> = Vec::new();
    let mut idle_since = Instant::now();
    loop {
        line.clear();
        let (mut n, mut cut) =
            readers::read_line_capped(input.as_mut(), &mut line, MAX_LINE).context("read error")?;
        if n == 0 {
            if !options.follow {
                break;
            }
            on_idle(analyzer, &stats);
            if options
                .follow_idle
                .is_some_and(|max| idle_since.elapsed() >= max)
            {
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
            continue;
        }
        if !line.ends_with(b"\n") && options.follow {
            // A line still being written: wait for its end.
            while !line.ends_with(b"\n") {
                let (more, more_cut) =
                    readers::read_line_capped(input.as_mut(), &mut line, MAX_LINE)
                        .context("read error")?;
                n += more;
                cut |= more_cut;
                if more == 0 {
                    if options
                        .follow_idle
                        .is_some_and(|max| idle_since.elapsed() >= max)
                    {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
        idle_since = Instant::now();
        if cut {
            let len = n - usize::from(line.ends_with(b"\n"));
            stats.count(LineStatus::Skipped(SkipReason::TooLong), len, 0);
            if let Some(bar) = bar {
                bar.inc(n as u64);
            }
            continue;
        }
        let body = line.strip_suffix(b"\n").unwrap_or(&line);
        if body.is_empty() {
            continue;
        }
        events.clear();
        let status = reader.feed(body, &mut events);
        stats.count(status, body.len(), events.len());
        for e in &events {
            analyzer.observe(e);
        }
        if let Some(bar) = bar {
            bar.inc(n as u64);
        }
    }
    Ok(stats)
}

/// Default chunk size for parallel parsing: large enough to amortise the fork/join.
pub const CHUNK: usize = 8 << 20;

/// Pieces per chunk: several per core, so that the ordered fold can start on the first
/// piece while the others are parsed, and the cores idle little at the chunk's end.
const PIECES_PER_CHUNK: usize = 32;

/// One line of a piece, parsed (borrowing the chunk) or counted, with its length. Kept
/// small (the piece's attempts, which are large, are in [`Piece::attempts`]).
enum Item<'a> {
    /// A delivery attempt: its index in [`Piece::attempts`].
    Attempt(u32, u32),
    Queue(Stamp, QueueLine<'a>, u32),
    Ignored(u32),
    Skipped(SkipReason, u32),
}

/// A Postfix line that is not a delivery attempt: the frequent records inline, the rare
/// ones boxed, so that an item stays small.
enum QueueLine<'a> {
    MessageId {
        qid: &'a str,
        message_id: &'a str,
    },
    From {
        qid: &'a str,
        sender: &'a str,
        size: Option<u64>,
    },
    Removed {
        qid: &'a str,
        by_operator: bool,
    },
    Other(Box<Record<'a>>),
}

impl<'a> QueueLine<'a> {
    fn of(record: Record<'a>) -> Self {
        match record {
            Record::MessageId { qid, message_id } => QueueLine::MessageId { qid, message_id },
            Record::From { qid, sender, size } => QueueLine::From { qid, sender, size },
            Record::Removed { qid, by_operator } => QueueLine::Removed { qid, by_operator },
            other => QueueLine::Other(Box::new(other)),
        }
    }

    fn record(&self) -> Record<'a> {
        match self {
            QueueLine::MessageId { qid, message_id } => Record::MessageId { qid, message_id },
            QueueLine::From { qid, sender, size } => Record::From {
                qid,
                sender,
                size: *size,
            },
            QueueLine::Removed { qid, by_operator } => Record::Removed {
                qid,
                by_operator: *by_operator,
            },
            QueueLine::Other(record) => (**record).clone(),
        }
    }
}

struct Attempt<'a> {
    stamp: Stamp,
    /// The instant as the parser thread resolved it, from the year tracker's state at the
    /// start of the chunk; the fold checks it against the tracker in order.
    time: Option<OffsetDateTime>,
    delivery: postfix::Delivery<'a>,
    mx_host: Option<Cow<'a, str>>,
    /// The provider of [`Derived`]: the rest of it is counted in the piece's tally on the
    /// parser thread and dropped there (computed again only if the piece must be tallied
    /// again in order), so that the fold neither carries nor frees it.
    provider: Cow<'a, str>,
}

impl<'a> Attempt<'a> {
    /// The attempt as the analyzer sees it; the sender and message-id come from the
    /// queue's correlation (empty here).
    fn view(&self, time: OffsetDateTime) -> AttemptView<'_> {
        let d = &self.delivery;
        AttemptView {
            time,
            queue_id: d.qid,
            message_id: "",
            sender: "",
            sender_unknown: false,
            recipient: d.recipient,
            outcome: Some(d.outcome),
            held: d.held,
            source_ip: d.source_ip,
            mx_host: self.mx_host.as_deref(),
            provider: None,
            stream: None,
            reply: d.reply,
            verdict: None,
            session: (!d.session.is_empty()).then_some(d.session),
        }
    }

    /// The keys of the attempt that depend only on its line.
    fn derive<'p>(&self, providers: &'p Providers, templater: &mut Templater) -> Derived<'p>
    where
        'a: 'p,
    {
        let d = &self.delivery;
        Derived::of(
            providers,
            d.recipient,
            self.mx_host.as_deref(),
            None,
            d.reply,
            Some(d.outcome),
            templater,
        )
    }

    /// Add the attempt's order-free counts (all but those by sender domain).
    fn tally(
        &self,
        derived: &Derived<'_>,
        tally: &mut Tally,
        config: &Config,
        time: OffsetDateTime,
    ) {
        if !self.delivery.held {
            let view = self.view(time);
            tally.add(config, &view, derived, self.delivery.outcome, false);
        }
    }
}

/// A parsed piece: its lines, its delivery attempts, and their order-free counts.
struct Piece<'a> {
    items: Vec<Item<'a>>,
    attempts: Vec<Attempt<'a>>,
    tally: Tally,
    /// The instant of each [`Item::Queue`] line, in order, as the parser thread resolved
    /// it (the attempts' are in [`Attempt::time`]).
    queue_times: Vec<Option<OffsetDateTime>>,
    /// The year tracker the parser thread started from, and where it left it: when the
    /// fold's tracker stands where this one started, every instant above is the one the
    /// fold would compute, and the fold moves its tracker to the end state at once.
    years_at_start: YearTracker,
    years_at_end: YearTracker,
}

/// What the parser threads share.
struct ParseContext<'a> {
    reader: &'a ReaderConfig,
    config: &'a Config,
    /// The year tracker at the start of the chunk.
    years: YearTracker,
}

fn parse_piece<'a>(piece: &'a [u8], providers: &'a Providers, cx: &ParseContext<'_>) -> Piece<'a> {
    let mut items = Vec::with_capacity(piece.len() / 160 + 1);
    let mut attempts = Vec::with_capacity(piece.len() / 600 + 1);
    let mut tally = Tally::default();
    let mut years = cx.years.clone();
    let mut queue_times = Vec::with_capacity(piece.len() / 250 + 1);
    let mut templater = Templater::new();
    // Most pieces are plain text: checked once here, not line by line by the parser.
    let text = readers::clean_text(piece);
    for line in lines(piece) {
        let len = line.len() as u32;
        if line.len() > MAX_LINE {
            items.push(Item::Skipped(SkipReason::TooLong, len));
            continue;
        }
        let parsed = match text {
            Some(text) => {
                let at = line.as_ptr() as usize - piece.as_ptr() as usize;
                match text.get(at..at + line.len()) {
                    Some(line) => postfix::parse_text(line, cx.reader),
                    None => postfix::parse_line(line, cx.reader),
                }
            }
            None => postfix::parse_line(line, cx.reader),
        };
        items.push(match parsed {
            Ok(Some(Parsed {
                stamp,
                record: Record::Delivery(delivery),
            })) => {
                let mut attempt = Attempt {
                    stamp,
                    time: years.resolve(stamp),
                    mx_host: delivery.mx_host.map(lower),
                    delivery,
                    provider: Cow::Borrowed(""),
                };
                let derived = attempt.derive(providers, &mut templater);
                if let Some(time) = attempt.time {
                    attempt.tally(&derived, &mut tally, cx.config, time);
                }
                attempt.provider = derived.provider;
                attempts.push(attempt);
                Item::Attempt(attempts.len() as u32 - 1, len)
            }
            Ok(Some(p)) => {
                queue_times.push(years.resolve(p.stamp));
                Item::Queue(p.stamp, QueueLine::of(p.record), len)
            }
            Ok(None) => Item::Ignored(len),
            Err(r) => Item::Skipped(r, len),
        });
    }
    Piece {
        items,
        attempts,
        tally,
        queue_times,
        years_at_start: cx.years.clone(),
        years_at_end: years,
    }
}

/// The non-empty lines of `piece` (without their `\n`), found with memchr: a byte-by-byte
/// split cost about 5 % of the whole analysis.
fn lines(piece: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut start = 0;
    memchr::memchr_iter(b'\n', piece)
        .chain(std::iter::once(piece.len()))
        .filter_map(move |end| {
            let line = &piece[start.min(end)..end];
            start = end + 1;
            (!line.is_empty()).then_some(line)
        })
}

/// Split a chunk into about `pieces` ranges that end on line boundaries.
fn piece_ranges(chunk: &[u8], pieces: usize) -> Vec<Range<usize>> {
    let piece_len = chunk.len() / pieces.max(1) + 1;
    let mut out = Vec::with_capacity(pieces + 1);
    let mut start = 0;
    while start < chunk.len() {
        let from = start + piece_len;
        let end = if from >= chunk.len() {
            chunk.len()
        } else {
            memchr::memchr(b'\n', &chunk[from..]).map_or(chunk.len(), |i| from + i + 1)
        };
        out.push(start..end);
        start = end;
    }
    out
}

/// Read up to `size` bytes ending on a line boundary into `buf` (emptied first; its
/// memory is reused); the cut-off tail is carried over to the next chunk.
fn next_chunk(
    input: &mut dyn BufRead,
    carry: &mut Vec<u8>,
    size: usize,
    mut buf: Vec<u8>,
) -> Result<Chunk> {
    buf.clear();
    buf.append(carry);
    buf.reserve(size + 4096);
    let mut limited = input.take((size.saturating_sub(buf.len())) as u64);
    limited.read_to_end(&mut buf).context("read error")?;
    let at_end = input.fill_buf().context("read error")?.is_empty();
    if at_end {
        return Ok(Chunk::Lines(buf));
    }
    if let Some(last) = memchr::memrchr(b'\n', &buf) {
        carry.extend_from_slice(&buf[last + 1..]);
        buf.truncate(last + 1);
        return Ok(Chunk::Lines(buf));
    }
    // The chunk is the start of a single line: read on to its end, keeping up to
    // MAX_LINE bytes of it.
    let before = buf.len();
    let over = before > MAX_LINE;
    if over {
        buf.clear(); // only the line's end is looked at from here on
    }
    let keep = if over { 0 } else { MAX_LINE };
    let (more, cut) = readers::read_line_capped(input, &mut buf, keep).context("read error")?;
    if over || cut {
        // The length without the line's `\n`, as other lines are counted.
        let len = before + more - usize::from(buf.ends_with(b"\n"));
        buf.clear();
        return Ok(Chunk::TooLong(len, buf));
    }
    Ok(Chunk::Lines(buf))
}

/// What the reader thread reads next: a chunk of whole lines, or a line longer than
/// [`MAX_LINE`], read and dropped (its length, and the buffer back).
enum Chunk {
    Lines(Vec<u8>),
    TooLong(usize, Vec<u8>),
}

/// What a parsed piece borrows from: its chunk (shared by the chunk's pieces) and the
/// provider table (the piece's provider names borrow it).
struct PieceSource {
    chunk: Arc<Vec<u8>>,
    range: Range<usize>,
    providers: Arc<Providers>,
    /// The length of a line longer than [`MAX_LINE`] that stands in this piece's place
    /// (the piece is then empty); 0 otherwise.
    too_long: usize,
}

impl PieceSource {
    fn bytes(&self) -> &[u8] {
        &self.chunk[self.range.clone()]
    }
}

self_cell::self_cell!(
    /// A piece parsed on a worker thread, together with the chunk its lines borrow, so
    /// that it can travel to the fold while the workers go on with the next chunks.
    struct ParsedPiece {
        owner: PieceSource,
        #[covariant]
        dependent: Piece,
    }
);

/// Pieces waiting for a worker, and parsed pieces waiting for the fold, at most (each
/// about 1/32 of a chunk): how far the reader and the workers may run ahead of the fold.
const PIECES_IN_FLIGHT: usize = PIECES_PER_CHUNK / 2;

/// Postfix on all cores, as a pipeline that never waits for a whole chunk: a reader
/// thread reads chunks (cut at line ends) and hands out their pieces; worker threads
/// parse pieces (stateless, borrowing the chunk, no allocation per line); this thread
/// folds the parsed pieces in file order (year of the stamps, queue-ID correlation, the
/// analyzer). Bounded channels keep at most [`PIECES_IN_FLIGHT`] pieces queued at each
/// stage; the chunks' buffers go back to the reader once folded. The fold sees every
/// line in file order, as a sequential read does.
fn read_postfix_parallel(
    input: &mut Box<dyn BufRead + Send>,
    config: &ReaderConfig,
    correlator: &mut Correlator,
    chunk_bytes: usize,
    analyzer: &mut Analyzer,
    bar: Option<&indicatif::ProgressBar>,
) -> Result<ReadStats> {
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
    let providers = analyzer.providers();
    let analysis = analyzer.config().clone();
    let mut stats = ReadStats::default();
    let mut events = Vec::new();
    // The year tracker as the fold last left it: the workers' guess for classic stamps
    // (a wrong guess is corrected in order by the fold; it only costs time).
    let years = Mutex::new(correlator.years());
    let (work_tx, work_rx) = mpsc::sync_channel::<(usize, PieceSource)>(PIECES_IN_FLIGHT);
    let work_rx = Mutex::new(work_rx);
    let (done_tx, done_rx) = mpsc::sync_channel::<(usize, ParsedPiece)>(PIECES_IN_FLIGHT);
    let (recycle_tx, recycle_rx) = mpsc::sync_channel::<Vec<u8>>(2);
    std::thread::scope(|scope| {
        for _ in 0..workers {
            let done_tx = done_tx.clone();
            let (work_rx, years, reader_config, analysis) = (&work_rx, &years, config, &analysis);
            let parse = move || {
                loop {
                    let next = work_rx.lock().map(|rx| rx.recv());
                    let Ok(Ok((seq, source))) = next else { break };
                    let cx = ParseContext {
                        reader: reader_config,
                        config: analysis,
                        years: years
                            .lock()
                            .map_or_else(|p| p.into_inner().clone(), |y| y.clone()),
                    };
                    let parsed = ParsedPiece::new(source, |source| {
                        parse_piece(source.bytes(), &source.providers, &cx)
                    });
                    if done_tx.send((seq, parsed)).is_err() {
                        break;
                    }
                }
            };
            if let Err(e) = std::thread::Builder::new()
                .name("parse".into())
                .spawn_scoped(scope, parse)
            {
                drop(work_tx); // the workers already started see the end of the work
                return Err(anyhow::Error::new(e).context("cannot start a parser thread"));
            }
        }
        let providers = &providers;
        // Moved in: the work channel closes when the reader is done.
        let reader = std::thread::Builder::new()
            .name("read".into())
            .spawn_scoped(scope, move || {
                let mut carry = Vec::new();
                let mut seq = 0;
                loop {
                    let buf = recycle_rx.try_recv().unwrap_or_default();
                    let (chunk, ranges, too_long) =
                        match next_chunk(input.as_mut(), &mut carry, chunk_bytes, buf)? {
                            Chunk::Lines(chunk) if chunk.is_empty() => return Ok(()),
                            Chunk::Lines(chunk) => {
                                let ranges = piece_ranges(&chunk, PIECES_PER_CHUNK);
                                (chunk, ranges, 0)
                            }
                            Chunk::TooLong(len, empty) => {
                                (empty, std::iter::once(0..0).collect(), len)
                            }
                        };
                    let chunk = Arc::new(chunk);
                    for range in ranges {
                        let source = PieceSource {
                            chunk: Arc::clone(&chunk),
                            range,
                            providers: Arc::clone(providers),
                            too_long,
                        };
                        if work_tx.send((seq, source)).is_err() {
                            return Ok(()); // the workers stopped: the fold is gone
                        }
                        seq += 1;
                    }
                }
            })
            .context("cannot start the reader thread")?;
        drop(done_tx);
        let mut waiting = BTreeMap::new();
        let mut want = 0;
        for (seq, parsed) in done_rx {
            waiting.insert(seq, parsed);
            while let Some(mut parsed) = waiting.remove(&want) {
                let too_long = parsed.borrow_owner().too_long;
                if too_long > 0 {
                    stats.count(LineStatus::Skipped(SkipReason::TooLong), too_long, 0);
                }
                let len = parsed.borrow_owner().range.len() + too_long;
                parsed.with_dependent_mut(|_, piece| {
                    fold(piece, correlator, analyzer, &mut stats, &mut events);
                });
                if let Ok(mut y) = years.lock() {
                    *y = correlator.years();
                }
                if let Some(bar) = bar {
                    bar.inc(len as u64);
                }
                if let Some(buf) = Arc::into_inner(parsed.into_owner().chunk) {
                    let _ = recycle_tx.try_send(buf); // full: the reader has buffers enough
                }
                want += 1;
            }
        }
        reader
            .join()
            .unwrap_or_else(|_| Err(anyhow::anyhow!("the reader thread failed")))
    })?;
    Ok(stats)
}

/// The ordered step for one parsed piece: stamps get their year, lines are joined by
/// queue ID, attempts reach the analyzer as borrowed views (no event built), and the
/// piece's tally is merged. Should a stamp's year differ from the parser thread's guess
/// (a year rollover earlier in the chunk), the piece is tallied again here, in order.
fn fold(
    piece: &mut Piece<'_>,
    correlator: &mut Correlator,
    analyzer: &mut Analyzer,
    stats: &mut ReadStats,
    events: &mut Vec<Event>,
) {
    // The parser thread started from the fold's year state: its instants are the fold's.
    let same_start = correlator.years() == piece.years_at_start;
    let mut queue_times = piece.queue_times.iter();
    let mut guessed_right = true;
    let mut times = Vec::with_capacity(if same_start { 0 } else { piece.attempts.len() });
    for item in &piece.items {
        match item {
            Item::Attempt(i, len) => {
                let a = &piece.attempts[*i as usize];
                let time = if same_start {
                    a.time
                } else {
                    let time = correlator.resolve(a.stamp);
                    guessed_right &= time == a.time;
                    times.push(time);
                    time
                };
                let Some(time) = time else {
                    stats.count(
                        LineStatus::Skipped(SkipReason::BadTimestamp),
                        *len as usize,
                        0,
                    );
                    continue;
                };
                let context = correlator.delivery(&a.delivery);
                let view = AttemptView {
                    message_id: context.map_or("", |c| c.message_id),
                    sender: context.map_or("", |c| c.sender),
                    sender_unknown: context.is_none(),
                    ..a.view(time)
                };
                analyzer.observe_tallied(&view, &a.provider);
                stats.count(LineStatus::Used, *len as usize, 1);
            }
            Item::Queue(stamp, line, len) => {
                let len = *len as usize;
                let parsed = queue_times.next().copied().flatten();
                let time = if same_start {
                    parsed
                } else {
                    correlator.resolve(*stamp)
                };
                let Some(time) = time else {
                    stats.count(LineStatus::Skipped(SkipReason::BadTimestamp), len, 0);
                    continue;
                };
                match *line {
                    QueueLine::From { qid, sender, size } => {
                        // The `received` event without building one.
                        let announced = correlator.queued(qid, sender, size);
                        if announced {
                            analyzer.observe_received(time, qid);
                        }
                        stats.count(LineStatus::Used, len, announced as usize);
                    }
                    ref line => {
                        events.clear();
                        correlator.queue_record(time, line.record(), events);
                        stats.count(LineStatus::Used, len, events.len());
                        for e in events.iter() {
                            analyzer.observe(e);
                        }
                    }
                }
            }
            Item::Ignored(len) => stats.count(LineStatus::Ignored, *len as usize, 0),
            Item::Skipped(r, len) => stats.count(LineStatus::Skipped(*r), *len as usize, 0),
        }
    }
    if same_start {
        correlator.set_years(piece.years_at_end.clone());
    }
    if guessed_right {
        analyzer.merge_tally(std::mem::take(&mut piece.tally));
        return;
    }
    let mut tally = Tally::default();
    let providers = analyzer.providers();
    let mut templater = Templater::new();
    for (a, time) in piece.attempts.iter().zip(times) {
        if let Some(time) = time {
            let derived = a.derive(&providers, &mut templater);
            a.tally(&derived, &mut tally, analyzer.config(), time);
        }
    }
    analyzer.merge_tally(tally);
}

fn lower(s: &str) -> Cow<'_, str> {
    if s.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(s.to_ascii_lowercase())
    } else {
        Cow::Borrowed(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generate::{Scenario, write_postfix};
    use crate::report::Report;

    /// A generated Postfix log of 20 minutes at 2 messages a second (classic stamps of
    /// 2026, for [`ReaderConfig`]'s `year`): several chunks at the tests' chunk sizes.
    fn twenty_minute_log() -> Vec<u8> {
        let s = Scenario {
            rate_per_sec: 2.0,
            minutes: 20,
            ..Scenario::baseline_unix(1_795_420_800)
        };
        let mut log = Vec::new();
        write_postfix(&s, &mut log).unwrap();
        log
    }

    #[test]
    fn lines_are_split_without_their_ends_and_empty_ones_are_dropped() {
        let split = |s: &str| -> Vec<String> {
            lines(s.as_bytes())
                .map(|l| String::from_utf8_lossy(l).into_owned())
                .collect()
        };
        assert_eq!(split("a\n\nbc\nd"), ["a", "bc", "d"]);
        assert_eq!(split("x\n"), ["x"]);
        assert!(split("").is_empty());
        assert!(split("\n\n").is_empty());
    }

    /// A read error in the middle of the log (a truncated compressed file, a failing
    /// disk) ends the pipeline with that error once the pieces read so far are folded:
    /// no thread is left waiting.
    #[test]
    fn a_read_error_mid_log_is_reported_and_nothing_hangs() {
        struct FailsAfter(std::io::Cursor<Vec<u8>>);
        impl Read for FailsAfter {
            fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
                match self.0.read(buf)? {
                    0 => Err(std::io::Error::other("disk on fire")),
                    n => Ok(n),
                }
            }
        }
        let log = twenty_minute_log();
        let size = log.len();
        let mut input: Box<dyn BufRead + Send> = Box::new(std::io::BufReader::with_capacity(
            1000,
            FailsAfter(std::io::Cursor::new(log)),
        ));
        let reader = ReaderConfig {
            year: Some(2026),
            ..Default::default()
        };
        let mut correlator = Correlator::new(&reader);
        let mut analyzer = Analyzer::new(crate::Config::default());
        let err = read_postfix_parallel(
            &mut input,
            &reader,
            &mut correlator,
            4096,
            &mut analyzer,
            None,
        )
        .unwrap_err();
        assert!(format!("{err:#}").contains("disk on fire"), "{err:#}");
        assert!(size > 10 * 4096, "the log must span many chunks");
    }

    /// The parser threads guess the year of classic stamps; when the guess is wrong the
    /// fold must tally the piece again with the right time. Forcing a wrong guess (2020)
    /// on every piece must give the report of a plain sequential read.
    #[test]
    fn a_wrong_year_guess_of_the_parser_threads_is_corrected_in_order() {
        let log = twenty_minute_log();
        let reader = ReaderConfig {
            year: Some(2026),
            ..Default::default()
        };

        let mut sequential = Analyzer::new(crate::Config::default());
        let mut line_reader = readers::reader_for(Format::Postfix, &reader);
        let mut events = Vec::new();
        let mut stats = ReadStats::default();
        for line in log.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            events.clear();
            let status = line_reader.feed(line, &mut events);
            stats.count(status, line.len(), events.len());
            for e in &events {
                sequential.observe(e);
            }
        }

        let mut parallel = Analyzer::new(crate::Config::default());
        let providers = parallel.providers();
        let config = parallel.config().clone();
        let cx = ParseContext {
            reader: &reader,
            config: &config,
            years: YearTracker::new(2020),
        };
        let mut correlator = Correlator::new(&reader);
        let mut parallel_stats = ReadStats::default();
        for range in piece_ranges(&log, 8) {
            let mut piece = parse_piece(&log[range], &providers, &cx);
            fold(
                &mut piece,
                &mut correlator,
                &mut parallel,
                &mut parallel_stats,
                &mut events,
            );
        }
        assert_eq!(stats, parallel_stats);
        let json = |a: &Analyzer| {
            let report = Report::build(a, &stats, vec!["mail.log".into()], "postfix");
            serde_json::to_value(&report).unwrap()
        };
        assert!(json(&sequential) == json(&parallel));
        assert!(json(&parallel)["segments"].as_array().unwrap().len() > 10);
    }
}
