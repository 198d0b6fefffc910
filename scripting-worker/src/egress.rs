//! Egress, when the operator allows any: the one way out of a sandbox is an HTTPS proxy the
//! worker serves on a Unix socket bind-mounted into that run only (runsc reaches it with
//! `--host-uds=open`; the sandbox still has no network device but its loopback). The proxy
//! takes `CONNECT host:port` only (no cleartext HTTP), checks the destination against the
//! allowlist, resolves it itself and refuses non-public addresses (no reaching the node, the
//! cluster or the cloud metadata service by a name that resolves there), connects to the
//! address it checked (no second resolution to rebind), and records every attempt for the
//! run's result. Connections per run are bounded; the proxy ends with the run.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UnixListener, UnixStream};
use tokio::task::JoinSet;

/// The longest request head the proxy reads (a CONNECT line and a few headers).
const MAX_HEAD: usize = 8 << 10;
/// How long a client may take to send its request head.
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);

/// `[egress]`: where sandboxes may connect, through the proxy. Empty: nowhere (the default).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct EgressConfig {
    /// Destinations: `host` (port 443), `host:port`, or `*.suffix[:port]` (any name under
    /// `suffix`, not `suffix` itself). Names only, compared lowercased.
    pub allowed_hosts: Vec<String>,
    /// Let allowed names resolve to loopback, private, link-local and other non-public
    /// addresses (off: a name of the allowlist pointing into the cluster is refused).
    pub allow_private_addresses: bool,
    /// TCP connect to a destination (ms).
    pub connect_timeout_ms: u64,
    /// Proxied connections one run may open; beyond, refused.
    pub max_connections: usize,
}

impl Default for EgressConfig {
    fn default() -> Self {
        Self {
            allowed_hosts: Vec::new(),
            allow_private_addresses: false,
            connect_timeout_ms: 5_000,
            max_connections: 16,
        }
    }
}

/// One allowlist entry.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Rule {
    /// The name, or the suffix (with its leading dot) of a wildcard.
    name: String,
    wildcard: bool,
    port: u16,
}

/// The parsed allowlist and its settings.
#[derive(Debug, Clone)]
pub(crate) struct EgressPolicy {
    rules: Vec<Rule>,
    allow_private: bool,
    connect_timeout: Duration,
    max_connections: usize,
}

/// One attempt a run made through the proxy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Attempt {
    pub(crate) host: String,
    pub(crate) port: u16,
    pub(crate) allowed: bool,
    /// Why it was refused or failed (empty when it was carried).
    pub(crate) reason: String,
}

impl EgressPolicy {
    /// The policy of `config`; `None` when nothing is allowed (no proxy at all).
    pub(crate) fn from_config(config: &EgressConfig) -> Result<Option<Self>, String> {
        if config.allowed_hosts.is_empty() {
            return Ok(None);
        }
        let rules = config.allowed_hosts.iter().map(|entry| rule(entry)).collect::<Result<Vec<_>, _>>()?;
        Ok(Some(Self {
            rules,
            allow_private: config.allow_private_addresses,
            connect_timeout: Duration::from_millis(config.connect_timeout_ms),
            max_connections: config.max_connections,
        }))
    }

    fn allows(&self, host: &str, port: u16) -> bool {
        let host = host.to_ascii_lowercase();
        self.rules.iter().any(|r| {
            r.port == port
                && if r.wildcard { host.ends_with(&r.name) && host.len() > r.name.len() } else { host == r.name }
        })
    }
}

fn rule(entry: &str) -> Result<Rule, String> {
    let entry = entry.trim().to_ascii_lowercase();
    let (name, port) = match entry.rsplit_once(':') {
        Some((name, port)) => {
            (name.to_string(), port.parse::<u16>().map_err(|_| format!("egress.allowed_hosts: {entry:?}: bad port"))?)
        }
        None => (entry.clone(), 443),
    };
    let (name, wildcard) = match name.strip_prefix("*.") {
        Some(suffix) => (format!(".{suffix}"), true),
        None => (name, false),
    };
    let label_ok =
        |l: &str| !l.is_empty() && l.len() <= 63 && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    if name.trim_start_matches('.').split('.').any(|l| !label_ok(l)) || port == 0 {
        return Err(format!("egress.allowed_hosts: {entry:?} is not a host name, host:port or *.suffix"));
    }
    Ok(Rule { name, wildcard, port })
}

/// A run's proxy: serves `socket` until dropped or [`RunProxy::finish`].
pub(crate) struct RunProxy {
    attempts: Arc<Mutex<Vec<Attempt>>>,
    tasks: JoinSet<()>,
}

impl RunProxy {
    /// Listens on `socket` (world-connectable: the script's uid inside is not the worker's).
    pub(crate) fn start(socket: &Path, policy: EgressPolicy) -> std::io::Result<Self> {
        let listener = UnixListener::bind(socket)?;
        std::fs::set_permissions(socket, std::os::unix::fs::PermissionsExt::from_mode(0o777))?;
        let attempts = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = JoinSet::new();
        let (policy, recorded) = (Arc::new(policy), attempts.clone());
        tasks.spawn(async move {
            let mut connections = JoinSet::new();
            let mut opened = 0usize;
            while let Ok((stream, _)) = listener.accept().await {
                opened += 1;
                let (policy, recorded) = (policy.clone(), recorded.clone());
                if opened > policy.max_connections {
                    connections.spawn(async move { refuse(stream, "too many connections for one run").await });
                    continue;
                }
                connections.spawn(async move {
                    if let Some(attempt) = serve(stream, &policy).await {
                        tracing::info!(host = %attempt.host, port = attempt.port, allowed = attempt.allowed, reason = %attempt.reason, "sandbox egress");
                        recorded.lock().unwrap_or_else(|p| p.into_inner()).push(attempt);
                    }
                });
            }
        });
        Ok(Self { attempts, tasks })
    }

    /// Stops serving (every proxied connection ends) and returns the run's attempts.
    pub(crate) fn finish(mut self) -> Vec<Attempt> {
        self.tasks.abort_all();
        std::mem::take(&mut *self.attempts.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

async fn refuse(mut stream: UnixStream, why: &str) {
    let body = format!("qiria egress: {why}\n");
    let answer = format!("HTTP/1.1 403 Forbidden\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}", body.len());
    let _ = stream.write_all(answer.as_bytes()).await;
}

/// One proxied connection: the attempt it made, or `None` if it never said where to.
async fn serve(mut stream: UnixStream, policy: &EgressPolicy) -> Option<Attempt> {
    let head = match tokio::time::timeout(HEAD_TIMEOUT, read_head(&mut stream)).await {
        Ok(Some(head)) => head,
        _ => return None,
    };
    let line = head.lines().next().unwrap_or_default().to_string();
    let mut parts = line.split_whitespace();
    let (method, target) = (parts.next().unwrap_or_default(), parts.next().unwrap_or_default());
    if method != "CONNECT" {
        refuse(stream, "only CONNECT (HTTPS) is proxied").await;
        return Some(Attempt {
            host: String::new(),
            port: 0,
            allowed: false,
            reason: format!("{method} refused: only CONNECT"),
        });
    }
    let Some((host, port)) = target
        .rsplit_once(':')
        .and_then(|(h, p)| Some((h.trim_matches(['[', ']']).to_string(), p.parse::<u16>().ok()?)))
    else {
        refuse(stream, "CONNECT needs host:port").await;
        return None;
    };
    let mut attempt = Attempt { host: host.clone(), port, allowed: false, reason: String::new() };
    if !policy.allows(&host, port) {
        attempt.reason = "not on the allowlist".into();
        refuse(stream, &format!("{host}:{port} is not on the allowlist")).await;
        return Some(attempt);
    }
    let address = match resolve(&host, port, policy.allow_private).await {
        Ok(address) => address,
        Err(why) => {
            refuse(stream, &why).await;
            attempt.reason = why;
            return Some(attempt);
        }
    };
    let upstream = match tokio::time::timeout(policy.connect_timeout, TcpStream::connect(address)).await {
        Ok(Ok(upstream)) => upstream,
        Ok(Err(e)) => {
            attempt.reason = format!("connect: {e}");
            let _ = stream.write_all(b"HTTP/1.1 502 Bad Gateway\r\ncontent-length: 0\r\n\r\n").await;
            return Some(attempt);
        }
        Err(_) => {
            attempt.reason = "connect timed out".into();
            let _ = stream.write_all(b"HTTP/1.1 504 Gateway Timeout\r\ncontent-length: 0\r\n\r\n").await;
            return Some(attempt);
        }
    };
    attempt.allowed = true;
    if stream.write_all(b"HTTP/1.1 200 Connection Established\r\n\r\n").await.is_err() {
        return Some(attempt);
    }
    let mut upstream = upstream;
    let _ = tokio::io::copy_bidirectional(&mut stream, &mut upstream).await;
    Some(attempt)
}

/// Reads up to the end of the request head (bounded); `None` if it never ends.
async fn read_head(stream: &mut UnixStream) -> Option<String> {
    let mut head = Vec::with_capacity(512);
    let mut byte = [0u8; 1];
    // Byte by byte: nothing after the head may be consumed (it belongs to the tunnel).
    while head.len() < MAX_HEAD {
        if stream.read(&mut byte).await.ok()? == 0 {
            return None;
        }
        head.push(byte[0]);
        if head.ends_with(b"\r\n\r\n") {
            return String::from_utf8(head).ok();
        }
    }
    None
}

/// The first address of `host` the policy accepts.
async fn resolve(host: &str, port: u16, allow_private: bool) -> Result<SocketAddr, String> {
    let addresses: Vec<SocketAddr> =
        tokio::net::lookup_host((host, port)).await.map_err(|e| format!("{host} does not resolve: {e}"))?.collect();
    addresses
        .iter()
        .copied()
        .find(|a| allow_private || is_public(a.ip()))
        .ok_or_else(|| format!("{host} resolves to no public address"))
}

/// Whether `ip` is a public unicast address (not the node, the cluster, a metadata service).
fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            !(v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || v4.is_documentation()
                || a == 0
                || (a == 100 && (64..128).contains(&b)))
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public(IpAddr::V4(v4));
            }
            let first = v6.segments()[0];
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (first & 0xfe00) == 0xfc00
                || (first & 0xffc0) == 0xfe80)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(hosts: &[&str]) -> EgressPolicy {
        let config =
            EgressConfig { allowed_hosts: hosts.iter().map(|h| h.to_string()).collect(), ..EgressConfig::default() };
        EgressPolicy::from_config(&config).expect("parses").expect("some egress")
    }

    #[test]
    fn the_allowlist_matches_names_ports_and_suffixes_only() {
        let p = policy(&["pypi.org", "files.example.com:8443", "*.githubusercontent.com"]);
        assert!(p.allows("pypi.org", 443) && p.allows("PyPI.org", 443));
        assert!(!p.allows("pypi.org", 80) && !p.allows("evil-pypi.org", 443) && !p.allows("pypi.org.evil", 443));
        assert!(p.allows("files.example.com", 8443) && !p.allows("files.example.com", 443));
        assert!(p.allows("raw.githubusercontent.com", 443));
        assert!(!p.allows("githubusercontent.com", 443) && !p.allows("xgithubusercontent.com", 443));
        assert!(EgressPolicy::from_config(&EgressConfig::default()).expect("parses").is_none());
        for bad in ["", "host:0", "host:http", "a b", "*.", "http://x"] {
            let config = EgressConfig { allowed_hosts: vec![bad.into()], ..EgressConfig::default() };
            assert!(EgressPolicy::from_config(&config).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn only_public_addresses_are_public() {
        for private in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "fd00::1",
            "fe80::1",
            "::ffff:10.0.0.1",
        ] {
            assert!(!is_public(private.parse().expect("ip")), "{private}");
        }
        for public in ["1.1.1.1", "151.101.0.223", "2a04:4e42::223"] {
            assert!(is_public(public.parse().expect("ip")), "{public}");
        }
    }
}
