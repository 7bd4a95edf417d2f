//! The access log (SPEC "Access log"): one line per response on stdout, as
//! text or JSON. Lines are formatted and written by a thread of its own
//! from a bounded queue, so a slow or blocked stdout never stalls a
//! request: past `QUEUE` waiting lines, a line is dropped and counted in
//! `access_log_dropped_total`. Nothing here knows about HTTP routing; the
//! proxy fills an `Entry`.

use crate::config::LogFormat;
use http::uri::PathAndQuery;
use http::{Method, Version};
use prometheus::IntCounter;
use std::fmt::Write as _;
use std::io::Write;
use std::net::IpAddr;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// Lines waiting for the writer at most; past it, lines are dropped.
pub const QUEUE: usize = 16_384;

/// One response as the access log tells it.
#[derive(Debug, Clone)]
pub struct Entry {
    /// When the request arrived.
    pub time: SystemTime,
    pub client: IpAddr,
    /// `None` for a request head the parser refused.
    pub method: Option<Method>,
    /// The target's path (no query: it may carry secrets and keys).
    pub path: Option<PathAndQuery>,
    pub protocol: Version,
    pub status: u16,
    /// The chosen backend's name, if one was chosen.
    pub backend: Option<Arc<str>>,
    /// Its address.
    pub upstream: Option<Arc<str>>,
    /// Where the key came from (a `key_source_total` label).
    pub key_source: Option<&'static str>,
    /// The key's 64-bit hash point (never the raw key).
    pub key_hash: Option<u64>,
    /// Request body bytes read from the client.
    pub bytes_in: u64,
    /// Response body bytes sent to the client.
    pub bytes_out: u64,
    /// From the request's arrival to the end of the response body.
    pub duration: Duration,
    /// For a response the proxy made itself: a `proxy_responses_total` cause.
    pub cause: Option<&'static str>,
}

/// The queue to the writer thread.
pub struct AccessLog {
    queue: SyncSender<(Entry, LogFormat)>,
    dropped: IntCounter,
}

impl AccessLog {
    /// Starts the writer thread, writing to stdout.
    pub fn stdout(dropped: IntCounter) -> std::io::Result<Self> {
        Self::to(std::io::stdout(), dropped)
    }

    /// Starts the writer thread, writing to `out`.
    pub fn to(out: impl Write + Send + 'static, dropped: IntCounter) -> std::io::Result<Self> {
        let (queue, lines) = sync_channel(QUEUE);
        let counter = dropped.clone();
        std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || write_lines(lines, out, counter))?;
        Ok(AccessLog { queue, dropped })
    }

    /// Queues a line; never blocks. A full queue drops it (counted).
    pub fn write(&self, entry: Entry, format: LogFormat) {
        match self.queue.try_send((entry, format)) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => self.dropped.inc(),
            // The writer thread is gone (it never is while the sender lives).
            Err(TrySendError::Disconnected(_)) => self.dropped.inc(),
        }
    }
}

/// The writer thread: formats and writes lines, flushing whenever the
/// queue is empty; ends when the sender is dropped. Once stdout fails,
/// every line not written (those in its buffer, and all that follow) is
/// counted as dropped.
fn write_lines(lines: Receiver<(Entry, LogFormat)>, out: impl Write, dropped: IntCounter) {
    let mut out = std::io::BufWriter::with_capacity(64 * 1024, out);
    let mut line = String::with_capacity(512);
    // Lines in the buffer since the last flush: lost if stdout fails.
    let mut unflushed = 0u64;
    let failed = |e: std::io::Error, lost: u64| {
        tracing::warn!("access log: stdout failed ({e}); lines are counted as dropped from now on");
        dropped.inc_by(lost);
    };
    'writing: while let Ok(mut next) = lines.recv() {
        loop {
            line.clear();
            match next.1 {
                LogFormat::Text => text(&next.0, &mut line),
                LogFormat::Json => json(&next.0, &mut line),
            }
            if let Err(e) = out.write_all(line.as_bytes()) {
                failed(e, unflushed + 1);
                break 'writing;
            }
            unflushed += 1;
            match lines.try_recv() {
                Ok(more) => next = more,
                Err(_) => break,
            }
        }
        if let Err(e) = out.flush() {
            failed(e, unflushed);
            break;
        }
        unflushed = 0;
    }
    for _ in lines {
        dropped.inc();
    }
}

/// A text field's value: as it is when it is a plain word, else quoted
/// (`"` and `\` escaped), so a line always splits into its fields.
fn word(value: &str) -> std::borrow::Cow<'_, str> {
    let plain = !value.is_empty()
        && value
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\' && b != b'=');
    if plain {
        value.into()
    } else {
        let escaped = value.replace('\\', "\\\\").replace('"', "\\\"");
        format!("\"{escaped}\"").into()
    }
}

/// Seconds with microsecond precision, without float noise ("0.000512").
fn seconds(d: Duration) -> String {
    format!("{}.{:06}", d.as_secs(), d.subsec_micros())
}

/// The path with `"`, `\` and control bytes percent-encoded, so a line
/// always parses.
fn path_of(e: &Entry) -> String {
    let Some(p) = &e.path else {
        return "-".into();
    };
    let mut s = String::with_capacity(p.path().len());
    for c in p.path().chars() {
        if c == '"' || c == '\\' || c.is_control() {
            let mut buf = [0; 4];
            for b in c.encode_utf8(&mut buf).bytes() {
                let _ = write!(s, "%{b:02X}");
            }
        } else {
            s.push(c);
        }
    }
    s
}

/// `time client "METHOD path PROTOCOL" status key=value…`, one line.
pub fn text(e: &Entry, out: &mut String) {
    let method = e.method.as_ref().map_or("-", Method::as_str);
    let _ = write!(
        out,
        "{} {} \"{method} {} {:?}\" {} backend={} upstream={} key_source={} key_hash={} bytes_in={} bytes_out={} duration_seconds={} cause={}",
        humantime::format_rfc3339_micros(e.time),
        e.client.to_canonical(),
        path_of(e),
        e.protocol,
        e.status,
        e.backend.as_deref().map_or("-".into(), word),
        e.upstream.as_deref().map_or("-".into(), word),
        e.key_source.unwrap_or("-"),
        e.key_hash.map_or("-".into(), |h| h.to_string()),
        e.bytes_in,
        e.bytes_out,
        seconds(e.duration),
        e.cause.unwrap_or("-"),
    );
    out.push('\n');
}

/// One JSON object: SPEC's fields, `null` where there is nothing to say.
pub fn json(e: &Entry, out: &mut String) {
    let value = serde_json::json!({
        "time": humantime::format_rfc3339_micros(e.time).to_string(),
        "client": e.client.to_canonical().to_string(),
        "method": e.method.as_ref().map(Method::as_str),
        "path": e.path.as_ref().map(PathAndQuery::path),
        "protocol": format!("{:?}", e.protocol),
        "status": e.status,
        "backend": e.backend.as_deref().unwrap_or(""),
        "upstream": e.upstream.as_deref().unwrap_or(""),
        "key_source": e.key_source,
        "key_hash": e.key_hash,
        "bytes_in": e.bytes_in,
        "bytes_out": e.bytes_out,
        // A number with at most six decimals: micro-second precision.
        "duration_seconds": serde_json::Value::Number(
            seconds(e.duration).parse().unwrap_or_else(|_| 0.into()),
        ),
        "cause": e.cause,
    });
    let _ = write!(out, "{value}");
    out.push('\n');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> Entry {
        Entry {
            time: SystemTime::UNIX_EPOCH + Duration::from_micros(1_795_000_000_123_456),
            client: "::ffff:10.0.0.7".parse().unwrap(),
            method: Some(Method::GET),
            path: Some("/a%20b/\"x\"?key=secret".parse().unwrap()),
            protocol: Version::HTTP_11,
            status: 200,
            backend: Some("b1".into()),
            upstream: Some("127.0.0.1:9001".into()),
            key_source: Some("header"),
            key_hash: Some(u64::MAX),
            bytes_in: 3,
            bytes_out: 1024,
            duration: Duration::from_nanos(512_345),
            cause: None,
        }
    }

    #[test]
    fn text_line_has_every_field_and_no_query() {
        let mut line = String::new();
        text(&entry(), &mut line);
        assert_eq!(
            line,
            "2026-11-18T11:06:40.123456Z 10.0.0.7 \"GET /a%20b/%22x%22 HTTP/1.1\" 200 backend=b1 upstream=127.0.0.1:9001 key_source=header key_hash=18446744073709551615 bytes_in=3 bytes_out=1024 duration_seconds=0.000512 cause=-\n"
        );
    }

    #[test]
    fn json_line_has_spec_fields() {
        let mut line = String::new();
        let mut e = entry();
        e.backend = None;
        e.upstream = None;
        e.cause = Some("no_backend");
        e.status = 503;
        json(&e, &mut line);
        assert!(line.ends_with('\n'));
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["time"], "2026-11-18T11:06:40.123456Z");
        assert_eq!(v["client"], "10.0.0.7");
        assert_eq!(v["path"], "/a%20b/\"x\"");
        assert_eq!(v["protocol"], "HTTP/1.1");
        assert_eq!(v["backend"], "");
        assert_eq!(v["upstream"], "");
        assert_eq!(v["key_hash"], u64::MAX);
        assert_eq!(v["cause"], "no_backend");
        assert!(line.contains("\"duration_seconds\":0.000512"), "{line}");
        assert_eq!(v.as_object().unwrap().len(), 14);
    }

    #[test]
    fn text_values_with_spaces_are_quoted() {
        let mut e = entry();
        e.backend = Some("b 3 = \"x\"".into());
        let mut line = String::new();
        text(&e, &mut line);
        assert!(
            line.contains(r#" backend="b 3 = \"x\"" upstream="#),
            "{line}"
        );
    }

    /// Once stdout fails, every line (those in the buffer and all later
    /// ones) is counted as dropped: written + dropped = sent.
    #[test]
    fn a_broken_stdout_counts_every_line_it_loses() {
        struct Broken;
        impl Write for Broken {
            fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
                Err(std::io::ErrorKind::BrokenPipe.into())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Err(std::io::ErrorKind::BrokenPipe.into())
            }
        }
        let dropped = IntCounter::new("d", "d").unwrap();
        let log = AccessLog::to(Broken, dropped.clone()).unwrap();
        for _ in 0..14 {
            log.write(entry(), LogFormat::Json);
        }
        // Bounded wait for the writer thread to get through the queue.
        let start = std::time::Instant::now();
        while dropped.get() < 14 && start.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(dropped.get(), 14);
    }

    /// A writer that never accepts a byte: the queue fills, then every
    /// further line is dropped and counted, and `write` never blocks.
    #[test]
    fn a_blocked_stdout_drops_and_counts_instead_of_blocking() {
        struct Stuck(std::sync::mpsc::Receiver<()>);
        impl Write for Stuck {
            fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
                let _ = self.0.recv();
                Err(std::io::ErrorKind::BrokenPipe.into())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let (release, stuck) = std::sync::mpsc::channel();
        let dropped = IntCounter::new("d", "d").unwrap();
        let log = AccessLog::to(Stuck(stuck), dropped.clone()).unwrap();
        let start = std::time::Instant::now();
        let extra = 2000;
        for _ in 0..QUEUE + extra {
            log.write(entry(), LogFormat::Text);
        }
        assert!(start.elapsed() < Duration::from_secs(5));
        // The writer's 64 KiB buffer holds a few hundred lines (about 230
        // bytes each) and the queue the next QUEUE; the rest are dropped.
        assert!(dropped.get() >= 1000, "{}", dropped.get());
        drop(release);
    }
}
