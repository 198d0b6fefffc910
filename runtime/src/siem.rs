//! Delivery of the audit trail to the SIEM, at least once, in order, over RELP on mutual TLS.
//!
//! The trail file is the spool: every record is on disk (`fdatasync`) before it is sent, so
//! while the SIEM is down records wait there, and a restarted service goes on from the last
//! record the SIEM acknowledged — kept in a cursor file beside the trail (`<trail>.siem-cursor`,
//! replaced atomically after each acknowledged batch). RELP (rsyslog's Reliable Event Logging
//! Protocol) acknowledges every record; plain syslog over TLS (RFC 5425) does not, and loses
//! what is in flight when the receiver dies. A record acknowledged but not yet in the cursor
//! when the service dies is sent again: the SIEM may see a record twice (its `seq` tells),
//! never miss one.
//!
//! Each record is one RFC 5424 message (facility `log audit`, app `qiria-<service>`, msgid
//! `audit`) whose text is the record's JSON line, checkpoints included — the SIEM's copy of
//! the latest checkpoint is what `qiria-audit verify --checkpoint` checks a trail's end
//! against.
//!
//! The spool is bounded (`spool_max_records` not yet acknowledged). Past it, `when_full`
//! decides: `block` (the default) refuses admin actions ([`admit_admin_action`]) until the SIEM
//! catches up — an unaudited admin action is worse than none — and `drop_oldest` skips the
//! oldest records, counted.
//!
//! No maintained Rust crate speaks RELP; the protocol's framing (`TXNR SP COMMAND SP DATALEN
//! [SP DATA] LF`) is small and written here, against rsyslog's `imrelp` in the tests.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde::{Deserialize, Serialize};

/// Records sent before their acknowledgements are read.
const WINDOW: usize = 64;
/// The longest answer frame read from the SIEM.
const FRAME_MAX: usize = 64 << 10;
/// Waiting for the SIEM to answer or take a write.
const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// Reconnecting: from the first to the longest wait.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// RFC 5424 priority: facility 13 (log audit) × 8 + severity 6 (informational).
const PRI: u32 = 110;

/// `[log.siem]`: where the audit trail is delivered.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SiemConfig {
    /// The SIEM's RELP listener, `host:port`.
    pub address: String,
    /// The name its certificate must carry.
    pub server_name: String,
    /// `ca.crt` (the SIEM's certificate chains to it), `tls.crt`, `tls.key` (this service's
    /// client certificate): a `kubernetes.io/tls` secret's names.
    pub tls_dir: PathBuf,
    /// Records not yet acknowledged, at most.
    pub spool_max_records: u64,
    /// `block` (refuse admin actions) or `drop_oldest`.
    pub when_full: WhenFull,
}

impl Default for SiemConfig {
    fn default() -> Self {
        Self {
            address: String::new(),
            server_name: String::new(),
            tls_dir: "/var/run/secrets/qiria/siem-tls".into(),
            spool_max_records: 100_000,
            when_full: WhenFull::Block,
        }
    }
}

/// What a full spool does.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum WhenFull {
    /// Admin actions are refused until the SIEM catches up.
    Block,
    /// The oldest records are skipped (counted).
    DropOldest,
}

/// Admin actions are refused: the SIEM has not acknowledged enough of the trail.
#[derive(Debug, thiserror::Error)]
#[error("the audit spool is full ({spooled} records the SIEM has not acknowledged): admin actions wait for it")]
pub struct SpoolFull {
    pub spooled: u64,
}

/// Where delivery stands; read by each service's `/metrics`.
#[derive(Debug, Default)]
pub struct Spool {
    /// The last record written to the trail.
    pub head: AtomicU64,
    /// The last record the SIEM acknowledged.
    pub acked: AtomicU64,
    /// Records skipped by `drop_oldest`.
    pub dropped: AtomicU64,
    /// Whether a session with the SIEM is open.
    pub connected: AtomicBool,
    /// When the SIEM last acknowledged a record (Unix ms; 0: never).
    pub last_ack_ms: AtomicU64,
    max: u64,
    block: bool,
    wake: (Mutex<()>, Condvar),
}

impl Spool {
    /// Records written, not yet acknowledged.
    pub fn spooled(&self) -> u64 {
        self.head.load(Relaxed).saturating_sub(self.acked.load(Relaxed))
    }

    fn full(&self) -> bool {
        self.spooled() >= self.max
    }
}

static SPOOL: OnceLock<Arc<Spool>> = OnceLock::new();

/// This process's delivery, when it has one.
pub fn spool() -> Option<&'static Arc<Spool>> {
    SPOOL.get()
}

/// Refuses an admin action while a `block` spool is full.
pub fn admit_admin_action() -> Result<(), SpoolFull> {
    match spool() {
        Some(spool) if spool.block && spool.full() => Err(SpoolFull { spooled: spool.spooled() }),
        _ => Ok(()),
    }
}

/// Appends the delivery's metrics (called by [`crate::metrics::render_shared`]): records waiting (the alarm: it grows while the SIEM is away), whether a session is open,
/// the last acknowledged record and when, records dropped by `drop_oldest`.
pub(crate) fn render_metrics(out: &mut String) {
    use std::fmt::Write as _;
    let Some(spool) = spool() else { return };
    let gauge = |out: &mut String, name: &str, help: &str, value: u64| {
        let _ = write!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}\n");
    };
    gauge(out, "qiria_audit_spool_records", "Audit records the SIEM has not acknowledged", spool.spooled());
    gauge(
        out,
        "qiria_audit_siem_connected",
        "Whether a RELP session with the SIEM is open",
        u64::from(spool.connected.load(Relaxed)),
    );
    gauge(out, "qiria_audit_siem_acked_seq", "The last audit record the SIEM acknowledged", spool.acked.load(Relaxed));
    let last = spool.last_ack_ms.load(Relaxed) / 1000;
    gauge(out, "qiria_audit_siem_last_ack_timestamp_seconds", "When the SIEM last acknowledged a record", last);
    let dropped = spool.dropped.load(Relaxed);
    let _ = write!(
        out,
        "# HELP qiria_audit_spool_dropped Audit records skipped undelivered (when_full = drop_oldest)\n\
         # TYPE qiria_audit_spool_dropped counter\nqiria_audit_spool_dropped_total {dropped}\n"
    );
}

/// Tells the forwarder a record `seq` is on disk.
pub(crate) fn appended(seq: u64) {
    if let Some(spool) = spool() {
        spool.head.store(seq, Relaxed);
        spool.wake.1.notify_all();
    }
}

/// Starts delivering the trail at `trail` (whose last record is `head`) as `service`.
pub fn start(trail: &Path, head: u64, service: &str, config: &SiemConfig) -> io::Result<()> {
    let tls = client_config(&config.tls_dir)?;
    let server_name = ServerName::try_from(config.server_name.clone())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("log.siem.server_name: {e}")))?;
    let cursor = Cursor::read(&cursor_path(trail))?;
    let spool = Arc::new(Spool {
        head: AtomicU64::new(head),
        acked: AtomicU64::new(cursor.seq),
        max: config.spool_max_records.max(1),
        block: config.when_full == WhenFull::Block,
        ..Spool::default()
    });
    SPOOL.set(spool.clone()).map_err(|_| io::Error::other("the SIEM forwarder is already running"))?;
    let forwarder = Forwarder {
        trail: trail.to_path_buf(),
        cursor,
        spool,
        address: config.address.clone(),
        server_name,
        tls: Arc::new(tls),
        drop_oldest: config.when_full == WhenFull::DropOldest,
        header: format!("<{PRI}>1 - {} qiria-{service} - audit - ", hostname()),
    };
    std::thread::Builder::new().name("siem-forwarder".into()).spawn(move || forwarder.run())?;
    Ok(())
}

fn client_config(dir: &Path) -> io::Result<rustls::ClientConfig> {
    let invalid = |what: &str, e: &dyn std::fmt::Display| {
        io::Error::new(io::ErrorKind::InvalidData, format!("log.siem.tls_dir: {}/{what}: {e}", dir.display()))
    };
    let mut roots = rustls::RootCertStore::empty();
    for ca in CertificateDer::pem_file_iter(dir.join("ca.crt")).map_err(|e| invalid("ca.crt", &e))? {
        roots.add(ca.map_err(|e| invalid("ca.crt", &e))?).map_err(|e| invalid("ca.crt", &e))?;
    }
    let chain = CertificateDer::pem_file_iter(dir.join("tls.crt"))
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| invalid("tls.crt", &e))?;
    let key = PrivateKeyDer::from_pem_file(dir.join("tls.key")).map_err(|e| invalid("tls.key", &e))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid("(versions)", &e))?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .map_err(|e| invalid("tls.crt", &e))
}

fn hostname() -> String {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let name: String = name.trim().chars().filter(|c| c.is_ascii_graphic()).take(255).collect();
    if name.is_empty() {
        "-".into()
    } else {
        name
    }
}

/// The last acknowledged record and where the next one starts in the trail.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Cursor {
    seq: u64,
    offset: u64,
}

fn cursor_path(trail: &Path) -> PathBuf {
    let mut name = trail.as_os_str().to_owned();
    name.push(".siem-cursor");
    PathBuf::from(name)
}

impl Cursor {
    fn read(path: &Path) -> io::Result<Self> {
        match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("{}: {e}", path.display()))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Self::default()),
            Err(e) => Err(e),
        }
    }

    /// Replaces the file atomically, on disk before it returns.
    fn write(&self, path: &Path) -> io::Result<()> {
        let temporary = path.with_extension("siem-cursor.new");
        let mut file = File::create(&temporary)?;
        file.write_all(&serde_json::to_vec(self).map_err(io::Error::other)?)?;
        file.sync_data()?;
        std::fs::rename(&temporary, path)
    }
}

struct Forwarder {
    trail: PathBuf,
    cursor: Cursor,
    spool: Arc<Spool>,
    address: String,
    server_name: ServerName<'static>,
    tls: Arc<rustls::ClientConfig>,
    drop_oldest: bool,
    header: String,
}

/// One record read from the trail.
struct Line {
    seq: u64,
    end: u64,
    text: Vec<u8>,
}

impl Forwarder {
    fn run(mut self) {
        let mut backoff = BACKOFF_MIN;
        loop {
            match self.session() {
                Ok(()) => backoff = BACKOFF_MIN,
                Err(e) => {
                    self.spool.connected.store(false, Relaxed);
                    tracing::warn!(target: "qiria::siem", error = %e, retry_ms = backoff.as_millis() as u64, "SIEM delivery interrupted; records wait in the trail");
                    self.wait(backoff);
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
            }
        }
    }

    /// Waits at most `timeout` for a new record (or the backoff to pass).
    fn wait(&self, timeout: Duration) {
        let (lock, wake) = &self.spool.wake;
        if let Ok(guard) = lock.lock() {
            let _ = wake.wait_timeout(guard, timeout);
        }
    }

    /// One connection: open, then send every record after the cursor as it comes.
    fn session(&mut self) -> io::Result<()> {
        let tcp = TcpStream::connect(&self.address)?;
        tcp.set_read_timeout(Some(IO_TIMEOUT))?;
        tcp.set_write_timeout(Some(IO_TIMEOUT))?;
        tcp.set_nodelay(true)?;
        let tls =
            rustls::ClientConnection::new(self.tls.clone(), self.server_name.clone()).map_err(io::Error::other)?;
        let mut relp = Relp::new(rustls::StreamOwned::new(tls, tcp));
        relp.open()?;
        self.spool.connected.store(true, Relaxed);
        tracing::info!(target: "qiria::siem", address = %self.address, from_seq = self.cursor.seq + 1, "SIEM session open");
        let file = File::open(&self.trail)?;
        if self.cursor.offset > file.metadata()?.len() {
            // The trail is shorter than what was delivered: replaced or cut. Everything in it is
            // sent again (the SIEM sees repeated `seq`s) rather than nothing ever again.
            tracing::warn!(target: "qiria::siem", offset = self.cursor.offset, "the trail is shorter than the delivery cursor; resending it from the start");
            self.cursor = Cursor::default();
        }
        let mut trail = BufReader::new(file);
        loop {
            self.drop_if_full(&mut trail)?;
            let batch = read_lines(&mut trail, self.cursor.offset, WINDOW)?;
            if batch.is_empty() {
                self.wait(Duration::from_secs(1));
                continue;
            }
            let mut sent = Vec::with_capacity(batch.len());
            for line in &batch {
                let mut message = self.header.clone().into_bytes();
                message.extend_from_slice(&line.text);
                sent.push(relp.send(b"syslog", &message)?);
            }
            for txnr in sent {
                relp.acknowledged(txnr)?;
            }
            if let Some(last) = batch.last() {
                self.cursor = Cursor { seq: last.seq, offset: last.end };
                self.cursor.write(&cursor_path(&self.trail))?;
                self.spool.acked.store(last.seq, Relaxed);
                self.spool.last_ack_ms.store(now_ms(), Relaxed);
            }
        }
    }

    /// `drop_oldest`: moves the cursor past the records beyond the spool's bound.
    fn drop_if_full(&mut self, trail: &mut BufReader<File>) -> io::Result<()> {
        if !self.drop_oldest || !self.spool.full() {
            return Ok(());
        }
        let excess = self.spool.spooled() - self.spool.max + 1;
        let skipped = read_lines(trail, self.cursor.offset, usize::try_from(excess).unwrap_or(usize::MAX))?;
        if let Some(last) = skipped.last() {
            self.cursor = Cursor { seq: last.seq, offset: last.end };
            self.cursor.write(&cursor_path(&self.trail))?;
            self.spool.acked.store(last.seq, Relaxed);
            self.spool.dropped.fetch_add(skipped.len() as u64, Relaxed);
            tracing::warn!(target: "qiria::siem", dropped = skipped.len(), "audit spool full: the oldest records were skipped");
        }
        Ok(())
    }
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or_default()
}

/// Up to `max` whole records from `offset` (a line still being written is left for later).
fn read_lines(trail: &mut BufReader<File>, offset: u64, max: usize) -> io::Result<Vec<Line>> {
    trail.seek(SeekFrom::Start(offset))?;
    let mut lines = Vec::new();
    let mut end = offset;
    while lines.len() < max {
        let mut text = Vec::new();
        let n = trail.read_until(b'\n', &mut text)?;
        if n == 0 || text.last() != Some(&b'\n') {
            break;
        }
        end += n as u64;
        text.pop();
        let seq = serde_json::from_slice::<serde_json::Value>(&text)
            .ok()
            .and_then(|record| record["seq"].as_u64())
            .ok_or_else(|| {
                io::Error::new(io::ErrorKind::InvalidData, format!("trail record at byte {offset} has no seq"))
            })?;
        lines.push(Line { seq, end, text });
    }
    Ok(lines)
}

/// A RELP session over `S`.
struct Relp<S> {
    stream: BufReader<S>,
    next: u64,
}

impl<S: Read + Write> Relp<S> {
    fn new(stream: S) -> Self {
        Self { stream: BufReader::new(stream), next: 1 }
    }

    /// The `open` command and its answer.
    fn open(&mut self) -> io::Result<()> {
        let offer = concat!("relp_version=0\nrelp_software=qiria,", env!("CARGO_PKG_VERSION"), "\ncommands=syslog");
        let txnr = self.send(b"open", offer.as_bytes())?;
        let answer = self.acknowledged(txnr)?;
        if !answer.windows(b"commands=".len()).any(|w| w == b"commands=") || !contains(&answer, b"syslog") {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "the SIEM does not take syslog over RELP"));
        }
        Ok(())
    }

    /// Sends one command; its transaction number.
    fn send(&mut self, command: &[u8], data: &[u8]) -> io::Result<u64> {
        let txnr = self.next;
        self.next = if self.next >= 999_999_999 { 1 } else { self.next + 1 };
        self.stream.get_mut().write_all(&frame(txnr, command, data))?;
        Ok(txnr)
    }

    /// Reads the answer to `txnr` (answers come in order); its data after the status, or an
    /// error when the SIEM refused or closed.
    fn acknowledged(&mut self, txnr: u64) -> io::Result<Vec<u8>> {
        let (number, command, data) = read_frame(&mut self.stream)?;
        if command == b"serverclose" {
            return Err(io::Error::new(io::ErrorKind::ConnectionAborted, "the SIEM closed the session"));
        }
        if command != b"rsp" || number != txnr {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("expected the answer to {txnr}, got {number}"),
            ));
        }
        if !data.starts_with(b"200") {
            let status = String::from_utf8_lossy(&data[..data.len().min(200)]).into_owned();
            return Err(io::Error::other(format!("the SIEM refused record {txnr}: {status}")));
        }
        Ok(data)
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// `TXNR SP COMMAND SP DATALEN [SP DATA] LF`.
fn frame(txnr: u64, command: &[u8], data: &[u8]) -> Vec<u8> {
    let mut out = format!("{txnr} ").into_bytes();
    out.extend_from_slice(command);
    out.extend_from_slice(format!(" {}", data.len()).as_bytes());
    if !data.is_empty() {
        out.push(b' ');
        out.extend_from_slice(data);
    }
    out.push(b'\n');
    out
}

/// Reads one frame: (transaction number, command, data).
fn read_frame(reader: &mut impl BufRead) -> io::Result<(u64, Vec<u8>, Vec<u8>)> {
    let bad = |why: &str| io::Error::new(io::ErrorKind::InvalidData, format!("RELP frame: {why}"));
    let token = |reader: &mut dyn BufRead, max: usize| -> io::Result<(Vec<u8>, u8)> {
        let mut out = Vec::new();
        loop {
            let mut byte = [0u8; 1];
            reader.read_exact(&mut byte)?;
            if byte[0] == b' ' || byte[0] == b'\n' {
                return Ok((out, byte[0]));
            }
            if out.len() >= max {
                return Err(bad("a header field is too long"));
            }
            out.push(byte[0]);
        }
    };
    let (txnr, _) = token(reader, 9)?;
    let txnr = std::str::from_utf8(&txnr).ok().and_then(|t| t.parse().ok()).ok_or_else(|| bad("no TXNR"))?;
    let (command, _) = token(reader, 32)?;
    let (length, after) = token(reader, 9)?;
    let length: usize =
        std::str::from_utf8(&length).ok().and_then(|l| l.parse().ok()).ok_or_else(|| bad("no DATALEN"))?;
    if length > FRAME_MAX {
        return Err(bad("DATALEN too large"));
    }
    let mut data = vec![0u8; length];
    if length > 0 {
        if after != b' ' {
            return Err(bad("no space before the data"));
        }
        reader.read_exact(&mut data)?;
        let mut trailer = [0u8; 1];
        reader.read_exact(&mut trailer)?;
        if trailer[0] != b'\n' {
            return Err(bad("no trailer"));
        }
    } else if after != b'\n' {
        // `N rsp 0` may be followed by a space before its trailer.
        let mut trailer = [0u8; 1];
        reader.read_exact(&mut trailer)?;
        if trailer[0] != b'\n' {
            return Err(bad("no trailer"));
        }
    }
    Ok((txnr, command, data))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_written_and_read_as_relp_has_them() {
        assert_eq!(frame(1, b"open", b"relp_version=0"), b"1 open 14 relp_version=0\n");
        assert_eq!(frame(7, b"close", b""), b"7 close 0\n");
        let mut answers = io::Cursor::new(b"2 rsp 6 200 OK\n3 rsp 0\n0 serverclose 0\n".to_vec());
        assert_eq!(read_frame(&mut answers).expect("frame"), (2, b"rsp".to_vec(), b"200 OK".to_vec()));
        assert_eq!(read_frame(&mut answers).expect("frame"), (3, b"rsp".to_vec(), Vec::new()));
        assert_eq!(read_frame(&mut answers).expect("frame").1, b"serverclose".to_vec());
        for bad in [&b"x rsp 6 200 OK\n"[..], b"1 rsp 99999999 a\n", b"1 rsp 2 OKX", b"1234567890123 rsp 0\n"] {
            assert!(read_frame(&mut io::Cursor::new(bad.to_vec())).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn a_refusal_or_an_answer_out_of_order_ends_the_session() {
        struct Script(io::Cursor<Vec<u8>>, Vec<u8>);
        impl Read for Script {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                self.0.read(buf)
            }
        }
        impl Write for Script {
            fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
                self.1.extend_from_slice(buf);
                Ok(buf.len())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let mut relp =
            Relp::new(Script(io::Cursor::new(b"1 rsp 20 500 queue is full\n3 rsp 6 200 OK\n".to_vec()), Vec::new()));
        let one = relp.send(b"syslog", b"a").expect("send");
        assert!(relp.acknowledged(one).is_err(), "500 is a refusal");
        let two = relp.send(b"syslog", b"b").expect("send");
        assert!(relp.acknowledged(two).is_err(), "the answer to 3 is not the answer to 2");
        assert_eq!(relp.stream.get_ref().1, b"1 syslog 1 a\n2 syslog 1 b\n");
    }

    #[test]
    fn whole_records_are_read_from_the_cursor_and_a_line_being_written_waits() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("trail.jsonl");
        std::fs::write(&path, "{\"seq\":1}\n{\"seq\":2}\n{\"seq\":3").expect("write");
        let mut trail = BufReader::new(File::open(&path).expect("open"));
        let lines = read_lines(&mut trail, 0, 10).expect("read");
        assert_eq!(lines.iter().map(|l| l.seq).collect::<Vec<_>>(), vec![1, 2]);
        let from = read_lines(&mut trail, lines[0].end, 10).expect("read");
        assert_eq!(from.iter().map(|l| l.seq).collect::<Vec<_>>(), vec![2]);
        assert_eq!(from[0].text, b"{\"seq\":2}");

        let cursor = cursor_path(&path);
        assert_eq!(Cursor::read(&cursor).expect("none yet"), Cursor::default());
        Cursor { seq: 2, offset: 20 }.write(&cursor).expect("write");
        assert_eq!(Cursor::read(&cursor).expect("read"), Cursor { seq: 2, offset: 20 });
    }
}
