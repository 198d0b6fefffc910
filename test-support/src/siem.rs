//! A real rsyslog (Debian's `rsyslog`, `rsyslog-relp`, `rsyslog-gnutls`) as the SIEM: `imrelp`
//! on loopback with mutual TLS (a client certificate from the test CA is required), every
//! message's text appended to a file the test reads. It can be stopped (SIGTERM: rsyslog
//! writes what it acknowledged before it exits, as a SIEM with a disk queue does) and started
//! again on the same port.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::process::Process;
use crate::tls::TestPki;
use crate::{free_port, wait_until};

/// The rsyslog daemon.
const RSYSLOGD: &str = "/usr/sbin/rsyslogd";

/// A running (or stopped) rsyslog SIEM.
pub struct Siem {
    /// Its RELP port on 127.0.0.1.
    pub port: u16,
    config: PathBuf,
    pid_file: PathBuf,
    log: PathBuf,
    received: PathBuf,
    process: Option<Process>,
}

impl Siem {
    /// Writes its TLS files (server certificate of `pki`, clients must chain to its CA) and
    /// configuration under `dir`, starts it and waits until it accepts connections.
    pub async fn start(dir: &Path, pki: &TestPki) -> Self {
        let port = free_port();
        assert!(
            Path::new(RSYSLOGD).is_file(),
            "{RSYSLOGD} is missing: ./dev installs rsyslog, rsyslog-relp, rsyslog-gnutls"
        );
        let dir = dir.join("siem");
        let work = dir.join("work");
        std::fs::create_dir_all(&work).expect("siem dir");
        for (name, pem) in
            [("ca.crt", &pki.ca_pem), ("tls.crt", &pki.server_cert_pem), ("tls.key", &pki.server_key_pem)]
        {
            std::fs::write(dir.join(name), pem).expect("siem tls");
        }
        let received = dir.join("received.log");
        let config = dir.join("rsyslog.conf");
        std::fs::write(
            &config,
            format!(
                "global(workDirectory=\"{work}\" maxMessageSize=\"64k\")\n\
                 module(load=\"imrelp\")\n\
                 input(type=\"imrelp\" address=\"127.0.0.1\" port=\"{port}\" tls=\"on\" \
                 tls.caCert=\"{dir}/ca.crt\" tls.myCert=\"{dir}/tls.crt\" tls.myPrivKey=\"{dir}/tls.key\" \
                 tls.authMode=\"certvalid\" ruleset=\"siem\")\n\
                 template(name=\"text\" type=\"string\" string=\"%msg%\\n\")\n\
                 ruleset(name=\"siem\") {{ action(type=\"omfile\" file=\"{received}\" template=\"text\") }}\n",
                work = work.display(),
                dir = dir.display(),
                received = received.display(),
            ),
        )
        .expect("siem config");
        let mut siem = Self {
            port,
            config,
            pid_file: dir.join("rsyslogd.pid"),
            log: dir.join("rsyslogd.log"),
            received,
            process: None,
        };
        siem.resume().await;
        siem
    }

    /// Starts it again (after [`Self::stop`]) on the same port and waits until it listens.
    pub async fn resume(&mut self) {
        let _ = std::fs::remove_file(&self.pid_file);
        let args = ["-n", "-f", &self.config.display().to_string(), "-i", &self.pid_file.display().to_string()]
            .map(String::from);
        let process = Process::spawn("rsyslogd", Path::new(RSYSLOGD), &args, &self.log).expect("start rsyslogd");
        let port = self.port;
        let listening =
            wait_until(
                Duration::from_secs(20),
                || async move { std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() },
            )
            .await;
        if !listening {
            process.fail("never listened");
        }
        self.process = Some(process);
    }

    /// Stops it with SIGTERM and waits for it to exit.
    pub fn stop(&mut self) {
        if let Some(mut process) = self.process.take() {
            if let Some(pid) = process.pid() {
                let _ = std::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status();
            }
            process.wait();
        }
    }

    /// Every message text received so far, as JSON (lines that are not JSON are skipped).
    pub fn received(&self) -> Vec<serde_json::Value> {
        self.received_lines().iter().filter_map(|l| serde_json::from_str(l).ok()).collect()
    }

    /// Every message text received so far, byte for byte.
    pub fn received_lines(&self) -> Vec<String> {
        std::fs::read_to_string(&self.received).unwrap_or_default().lines().map(str::to_owned).collect()
    }

    /// A service's `[log]` section that keeps its audit trail under `dir` (a fresh audit key
    /// made by `qiria-audit keygen`) and delivers it to this SIEM with the client certificate
    /// of `pki` (whose CA the SIEM trusts): `[log]` then `[log.siem]`, with `siem_settings`
    /// added to the latter.
    pub fn log_section(&self, dir: &Path, pki: &TestPki, siem_settings: &str) -> String {
        let keys = dir.join("audit-key");
        let made =
            std::process::Command::new(crate::binary("qiria-audit")).arg("keygen").arg("--dir").arg(&keys).status();
        assert!(made.is_ok_and(|s| s.success()), "qiria-audit keygen");
        let tls = dir.join("siem-client-tls");
        std::fs::create_dir_all(&tls).expect("tls");
        std::fs::write(tls.join("ca.crt"), &pki.ca_pem).expect("ca");
        std::fs::write(tls.join("tls.crt"), &pki.client_cert_pem).expect("cert");
        std::fs::write(tls.join("tls.key"), &pki.client_key_pem).expect("key");
        format!(
            "[log]\naudit_trail = \"{trail}\"\naudit_key_dir = \"{keys}\"\naudit_checkpoint_every = 4\n\
             [log.siem]\naddress = \"127.0.0.1:{port}\"\nserver_name = \"localhost\"\ntls_dir = \"{tls}\"\n{siem_settings}\n",
            trail = Self::trail(dir).display(),
            keys = keys.display(),
            port = self.port,
            tls = tls.display(),
        )
    }

    /// Where [`Self::log_section`] puts the trail.
    pub fn trail(dir: &Path) -> PathBuf {
        dir.join("audit.jsonl")
    }

    /// rsyslog's own output.
    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}
