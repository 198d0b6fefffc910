//! The tamper-evident audit trail: every audit event (`qiria::audit`) appended to a JSONL file
//! as a record chained to the one before it, with checkpoints signed by the service's own audit
//! key, and the check of such a file ([`verify`]).
//!
//! A record is one line: `{"seq":N,"time_ms":…,"service":…,"event":…,"fields":{…},"prev":H,"hash":H'}`
//! where `prev` is the previous record's `hash` (64 zeros for the first) and `hash` is the
//! SHA-256 of the line's own bytes up to `,"hash"` closed by `}` — the exact bytes written, so
//! verifying needs no canonical form. Every `checkpoint_every` records, and when a trail is
//! opened, a `checkpoint` record signs (ECDSA P-256, the audit key, used for nothing else) the
//! service, its own sequence number and the hash of the record before it. So:
//!
//! - an edited record no longer matches its hash; a removed, inserted or moved one breaks the
//!   sequence and the `prev` links; a chain recomputed after an edit no longer matches the next
//!   checkpoint's signature; a forged checkpoint does not verify with the public key;
//! - records cut from the end are found against the latest checkpoint held outside the file
//!   (the SIEM's copy), and a chain rewritten without its checkpoints by the longest run of
//!   records without one (`max_unsealed`).
//!
//! The file is opened append-only and each record is written with one `write` and flushed to
//! disk (`fdatasync`) before the next: audit events are rare (logins, reloads, admin actions,
//! job changes), and one that was reported must not be lost in a crash.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};

use base64::Engine as _;
use p256::ecdsa::signature::{Signer, Verifier};
use p256::ecdsa::{Signature, SigningKey, VerifyingKey};
use p256::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey, LineEnding};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

/// The `prev` of a trail's first record.
const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";
/// Audit events waiting for the writer; past this, `record` waits (an audit event is never
/// dropped).
const QUEUE: usize = 1024;
/// The file names in an audit key directory.
pub const PRIVATE_KEY: &str = "audit.key";
/// The public half, published for verifiers.
pub const PUBLIC_KEY: &str = "audit.pub";

/// One appended record's place in the chain.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Head {
    seq: u64,
    hash: String,
}

/// An open trail.
pub struct Trail {
    file: File,
    service: String,
    head: Head,
    key: SigningKey,
    every: u64,
    unsealed: u64,
}

impl Trail {
    /// Opens (or creates) the trail at `path` for `service`, continuing its chain, and seals
    /// what an earlier process left unsealed with a checkpoint.
    pub fn open(path: &Path, service: &str, key: SigningKey, checkpoint_every: u64) -> io::Result<Self> {
        let head = last_head(path)?;
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        let mut trail =
            Self { file, service: service.to_string(), head, key, every: checkpoint_every.max(1), unsealed: 0 };
        trail.checkpoint()?;
        Ok(trail)
    }

    /// Appends one event; a checkpoint follows every `checkpoint_every` records.
    pub fn append(&mut self, event: &str, fields: BTreeMap<String, Value>) -> io::Result<()> {
        self.write(event, Value::Object(fields.into_iter().collect()))?;
        self.unsealed += 1;
        if self.unsealed >= self.every {
            self.checkpoint()?;
        }
        Ok(())
    }

    fn checkpoint(&mut self) -> io::Result<()> {
        let seq = self.head.seq + 1;
        let signature: Signature = self.key.sign(checkpoint_message(&self.service, seq, &self.head.hash).as_bytes());
        let fields = json!({
            "head": self.head.hash,
            "key_id": key_id(self.key.verifying_key()),
            "signature": base64::engine::general_purpose::STANDARD.encode(signature.to_bytes()),
        });
        self.write("checkpoint", fields)?;
        self.unsealed = 0;
        Ok(())
    }

    fn write(&mut self, event: &str, fields: Value) -> io::Result<()> {
        let seq = self.head.seq + 1;
        let body = json!({
            "seq": seq,
            "time_ms": now_ms(),
            "service": self.service,
            "event": event,
            "fields": fields,
            "prev": self.head.hash,
        });
        let body = serde_json::to_string(&body).map_err(io::Error::other)?;
        let hash = hex::encode(Sha256::digest(body.as_bytes()));
        let line = format!("{},\"hash\":\"{hash}\"}}\n", &body[..body.len() - 1]);
        self.file.write_all(line.as_bytes())?;
        self.file.sync_data()?;
        self.head = Head { seq, hash };
        Ok(())
    }
}

fn now_ms() -> u64 {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    u64::try_from(now.as_millis()).unwrap_or(u64::MAX)
}

/// What signs a checkpoint: the service, the checkpoint's own sequence number, the head.
fn checkpoint_message(service: &str, seq: u64, head: &str) -> String {
    format!("qiria-audit-checkpoint/v1\n{service}\n{seq}\n{head}")
}

/// A short name of a public key: the first 16 hex digits of the SHA-256 of its SPKI DER.
pub fn key_id(key: &VerifyingKey) -> String {
    let der = key.to_public_key_der().map(|d| d.as_bytes().to_vec()).unwrap_or_default();
    hex::encode(&Sha256::digest(der)[..8])
}

/// The last record of an existing trail (the chain continues from it), or the genesis.
fn last_head(path: &Path) -> io::Result<Head> {
    let file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Head { seq: 0, hash: GENESIS.into() }),
        Err(e) => return Err(e),
    };
    let mut last = None;
    for line in io::BufReader::new(file).lines() {
        let line = line?;
        if !line.trim().is_empty() {
            last = Some(line);
        }
    }
    match last {
        None => Ok(Head { seq: 0, hash: GENESIS.into() }),
        Some(line) => {
            let record = parse(&line).map_err(|why| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{}: its last record is unreadable ({why}); refusing to extend it", path.display()),
                )
            })?;
            Ok(Head { seq: record.seq, hash: record.hash })
        }
    }
}

/// Makes an audit key pair in `dir` (`audit.key`, mode 0600, and `audit.pub`).
pub fn generate_key(dir: &Path) -> io::Result<String> {
    std::fs::create_dir_all(dir)?;
    let key = SigningKey::random(&mut rand::rngs::OsRng);
    let private = key.to_pkcs8_pem(LineEnding::LF).map_err(io::Error::other)?;
    let public = key.verifying_key().to_public_key_pem(LineEnding::LF).map_err(io::Error::other)?;
    let path = dir.join(PRIVATE_KEY);
    let mut file = OpenOptions::new().write(true).create_new(true).mode_0600().open(&path)?;
    file.write_all(private.as_bytes())?;
    std::fs::write(dir.join(PUBLIC_KEY), public)?;
    Ok(key_id(key.verifying_key()))
}

/// `OpenOptions` with mode 0600 on Unix.
trait Private {
    fn mode_0600(&mut self) -> &mut Self;
}

impl Private for OpenOptions {
    fn mode_0600(&mut self) -> &mut Self {
        std::os::unix::fs::OpenOptionsExt::mode(self, 0o600)
    }
}

/// The service's audit key from `dir/audit.key`.
pub fn load_key(dir: &Path) -> io::Result<SigningKey> {
    let path = dir.join(PRIVATE_KEY);
    let pem =
        std::fs::read_to_string(&path).map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
    SigningKey::from_pkcs8_pem(&pem)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("{}: {e}", path.display())))
}

/// A public audit key from a PEM file (`audit.pub`).
pub fn load_public_key(path: &Path) -> io::Result<VerifyingKey> {
    let pem =
        std::fs::read_to_string(path).map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
    VerifyingKey::from_public_key_pem(&pem)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("{}: {e}", path.display())))
}

/// A parsed record.
#[derive(Debug, Clone)]
struct Record {
    seq: u64,
    event: String,
    service: String,
    fields: Value,
    prev: String,
    hash: String,
}

/// Splits a line into its body and hash, checks the one against the other, and reads it.
fn parse(line: &str) -> Result<Record, String> {
    let at = line.rfind(",\"hash\":\"").ok_or("no hash")?;
    let body = format!("{}}}", &line[..at]);
    let hash = line[at + 9..].strip_suffix("\"}").ok_or("no hash")?.to_string();
    if hex::encode(Sha256::digest(body.as_bytes())) != hash {
        return Err("its content does not match its hash (edited)".into());
    }
    let value: Value = serde_json::from_str(&body).map_err(|e| format!("not JSON: {e}"))?;
    let text = |k: &str| value[k].as_str().map(str::to_string).ok_or(format!("no {k}"));
    Ok(Record {
        seq: value["seq"].as_u64().ok_or("no seq")?,
        event: text("event")?,
        service: text("service")?,
        fields: value["fields"].clone(),
        prev: text("prev")?,
        hash,
    })
}

/// What a clean trail holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// Records, checkpoints included.
    pub records: u64,
    /// Checkpoints whose signatures verified.
    pub checkpoints: u64,
    /// Records after the last checkpoint (protected by the SIEM's copy only).
    pub unsealed_tail: u64,
}

/// The first thing wrong with a trail.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line} (seq {seq}): {why}")]
pub struct Broken {
    /// 1-based line number in the file (0: the end of the file).
    pub line: usize,
    /// The record's sequence number, as far as known.
    pub seq: u64,
    /// What is wrong.
    pub why: String,
}

/// Checks a trail: every record's hash, the sequence and links, every checkpoint's signature
/// with `public`, no more than `max_unsealed` records in a row without a checkpoint, and, given
/// the latest checkpoint `held` outside the file (its line, as the SIEM received it), that the
/// file still holds it unchanged.
pub fn verify(
    trail: impl BufRead,
    public: &VerifyingKey,
    max_unsealed: u64,
    held: Option<&str>,
) -> Result<Verified, Broken> {
    let mut head = Head { seq: 0, hash: GENESIS.into() };
    let (mut checkpoints, mut unsealed, mut lines) = (0u64, 0u64, 0usize);
    let mut hashes: BTreeMap<u64, String> = BTreeMap::new();
    let held = match held {
        Some(line) => Some(parse(line.trim()).map_err(|why| Broken {
            line: 0,
            seq: 0,
            why: format!("the checkpoint held outside: {why}"),
        })?),
        None => None,
    };
    for (index, line) in trail.lines().enumerate() {
        let line_no = index + 1;
        let line = line.map_err(|e| Broken { line: line_no, seq: head.seq + 1, why: format!("unreadable: {e}") })?;
        if line.trim().is_empty() {
            continue;
        }
        lines = line_no;
        let broken = |why: String| Broken { line: line_no, seq: head.seq + 1, why };
        let record = parse(&line).map_err(broken)?;
        if record.seq != head.seq + 1 {
            return Err(broken(format!(
                "sequence {} where {} was due: a record was removed, inserted or moved",
                record.seq,
                head.seq + 1
            )));
        }
        if record.prev != head.hash {
            return Err(broken("does not follow the record before it: a record was removed, inserted or moved".into()));
        }
        if record.event == "checkpoint" {
            let signature = record.fields["signature"].as_str().unwrap_or_default();
            let signature = base64::engine::general_purpose::STANDARD
                .decode(signature)
                .ok()
                .and_then(|bytes| Signature::from_slice(&bytes).ok());
            let message = checkpoint_message(&record.service, record.seq, &head.hash);
            let signed = record.fields["head"].as_str() == Some(head.hash.as_str())
                && signature.is_some_and(|s| public.verify(message.as_bytes(), &s).is_ok());
            if !signed {
                return Err(broken("checkpoint whose signature does not verify with the audit key (forged, or the chain before it was rewritten)".into()));
            }
            checkpoints += 1;
            unsealed = 0;
        } else {
            unsealed += 1;
            if unsealed > max_unsealed {
                return Err(broken(format!(
                    "more than {max_unsealed} records without a checkpoint: checkpoints were removed"
                )));
            }
        }
        hashes.insert(record.seq, record.hash.clone());
        head = Head { seq: record.seq, hash: record.hash };
    }
    if let Some(held) = held {
        match hashes.get(&held.seq) {
            None => {
                return Err(Broken {
                    line: lines,
                    seq: head.seq,
                    why: format!(
                    "the file ends at seq {} but the checkpoint held outside is seq {}: records were cut from the end",
                    head.seq, held.seq
                ),
                })
            }
            Some(hash) if *hash != held.hash => {
                return Err(Broken { line: 0, seq: held.seq, why: "differs from the checkpoint held outside".into() })
            }
            Some(_) => {}
        }
    }
    Ok(Verified { records: head.seq, checkpoints, unsealed_tail: unsealed })
}

/// One event for the writer.
struct Entry {
    event: String,
    fields: BTreeMap<String, Value>,
}

/// A `tracing` layer that appends every `qiria::audit` event to the trail, on a thread of its
/// own (the file's `fdatasync` never runs on a request's thread).
pub struct TrailLayer {
    sender: SyncSender<Entry>,
    head: u64,
}

impl TrailLayer {
    /// Opens the trail and starts its writer.
    pub fn start(path: PathBuf, service: &str, key_dir: &Path, checkpoint_every: u64) -> io::Result<Self> {
        let key = load_key(key_dir)?;
        let mut trail = Trail::open(&path, service, key, checkpoint_every)?;
        let head = trail.head.seq;
        let (sender, receiver): (SyncSender<Entry>, Receiver<Entry>) = sync_channel(QUEUE);
        std::thread::Builder::new().name("audit-trail".into()).spawn(move || {
            for entry in receiver {
                match trail.append(&entry.event, entry.fields) {
                    Ok(()) => crate::siem::appended(trail.head.seq),
                    // Nothing else can be done from here: say so where operators look.
                    Err(error) => eprintln!("qiria audit trail {}: append failed: {error}", path.display()),
                }
            }
        })?;
        Ok(Self { sender, head })
    }

    /// The last record on disk when the trail was opened (its opening checkpoint).
    pub fn head(&self) -> u64 {
        self.head
    }
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for TrailLayer {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        if event.metadata().target() != "qiria::audit" {
            return;
        }
        let mut fields = Fields::default();
        event.record(&mut fields);
        let name = match fields.0.remove("event") {
            Some(Value::String(name)) => name,
            _ => "unnamed".into(),
        };
        fields.0.remove("message");
        // Blocks when the writer is behind by a whole queue: an audit event waits, never drops.
        let _ = self.sender.send(Entry { event: name, fields: fields.0 });
    }
}

/// An event's fields as JSON values.
#[derive(Default)]
struct Fields(BTreeMap<String, Value>);

impl tracing::field::Visit for Fields {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().to_string(), Value::String(format!("{value:?}")));
    }
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        self.0.insert(field.name().to_string(), Value::String(value.to_string()));
    }
    fn record_i64(&mut self, field: &tracing::field::Field, value: i64) {
        self.0.insert(field.name().to_string(), json!(value));
    }
    fn record_u64(&mut self, field: &tracing::field::Field, value: u64) {
        self.0.insert(field.name().to_string(), json!(value));
    }
    fn record_bool(&mut self, field: &tracing::field::Field, value: bool) {
        self.0.insert(field.name().to_string(), json!(value));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trail(dir: &Path, events: usize, every: u64) -> (PathBuf, VerifyingKey) {
        let keys = dir.join("keys");
        generate_key(&keys).expect("key");
        let path = dir.join("audit.jsonl");
        let mut trail = Trail::open(&path, "test", load_key(&keys).expect("load"), every).expect("open");
        for i in 0..events {
            trail.append("login_succeeded", [("user".to_string(), json!(format!("u{i}")))].into()).expect("append");
        }
        (path, load_public_key(&keys.join(PUBLIC_KEY)).expect("public"))
    }

    fn check(text: &str, key: &VerifyingKey, held: Option<&str>) -> Result<Verified, Broken> {
        verify(io::Cursor::new(text.as_bytes()), key, 10, held)
    }

    #[test]
    fn a_clean_trail_verifies_and_a_reopened_one_continues_its_chain() {
        let dir = tempfile::tempdir().expect("dir");
        let (path, key) = trail(dir.path(), 7, 3);
        let text = std::fs::read_to_string(&path).expect("read");
        // 1 opening checkpoint, 7 events with a checkpoint after every third.
        assert_eq!(check(&text, &key, None), Ok(Verified { records: 10, checkpoints: 3, unsealed_tail: 1 }));
        let mut again =
            Trail::open(&path, "test", load_key(&dir.path().join("keys")).expect("key"), 3).expect("reopen");
        again.append("logout", BTreeMap::new()).expect("append");
        let text = std::fs::read_to_string(&path).expect("read");
        assert_eq!(check(&text, &key, None).map(|v| v.records), Ok(12));
    }

    #[test]
    fn every_kind_of_tampering_is_named() {
        let dir = tempfile::tempdir().expect("dir");
        let (path, key) = trail(dir.path(), 8, 4);
        let text = std::fs::read_to_string(&path).expect("read");
        let lines: Vec<&str> = text.lines().collect();
        let join = |lines: &[&str]| lines.join("\n") + "\n";
        let edited = join(&[&lines[..3], &[lines[3].replace("u2", "u9").as_str()], &lines[4..]].concat());
        assert_eq!(check(&edited, &key, None).map_err(|b| b.line), Err(4));
        let removed = join(&[&lines[..3], &lines[4..]].concat());
        assert_eq!(check(&removed, &key, None).map_err(|b| b.line), Err(4));
        let inserted = join(&[&lines[..3], &[lines[2]], &lines[3..]].concat());
        assert_eq!(check(&inserted, &key, None).map_err(|b| b.line), Err(4));
        let mut moved = lines.clone();
        moved.swap(2, 3);
        assert_eq!(check(&join(&moved), &key, None).map_err(|b| b.line), Err(3));
        // A forged checkpoint: another key signs the same head.
        let other = dir.path().join("other");
        generate_key(&other).expect("other key");
        let forged_key = load_public_key(&other.join(PUBLIC_KEY)).expect("other public");
        assert!(check(&text, &forged_key, None).is_err_and(|b| b.line == 1 && b.why.contains("signature")));
        // The chain recomputed after the edit, every hash and link consistent again: the next
        // checkpoint's signature no longer covers it.
        let mut rewritten: Vec<String> = Vec::new();
        let mut prev = GENESIS.to_string();
        for (i, line) in lines.iter().enumerate() {
            let at = line.rfind(",\"hash\":\"").expect("hash");
            let mut body: Value = serde_json::from_str(&format!("{}}}", &line[..at])).expect("body");
            if i == 3 {
                body["fields"]["user"] = json!("u9");
            }
            body["prev"] = json!(prev);
            let body = serde_json::to_string(&body).expect("json");
            prev = hex::encode(Sha256::digest(body.as_bytes()));
            rewritten.push(format!("{},\"hash\":\"{prev}\"}}", &body[..body.len() - 1]));
        }
        let rewritten: Vec<&str> = rewritten.iter().map(String::as_str).collect();
        let broken = check(&join(&rewritten), &key, None).expect_err("a rewritten chain verified");
        assert!(broken.line == 6 && broken.why.contains("signature"), "{broken}");
        // Cut from the end: only the checkpoint held outside tells.
        let last_checkpoint = lines.iter().rposition(|l| l.contains("\"event\":\"checkpoint\"")).expect("a checkpoint");
        let held = lines[last_checkpoint];
        let cut = join(&lines[..last_checkpoint]);
        assert!(check(&cut, &key, None).is_ok());
        assert!(check(&cut, &key, Some(held)).is_err_and(|b| b.why.contains("cut from the end")));
        assert!(check(&text, &key, Some(held)).is_ok());
    }
}
