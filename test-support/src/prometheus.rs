//! A real Prometheus (Debian's `prometheus` 2.42) started by a test: it scrapes the given
//! admin ports every second and answers PromQL over its HTTP API, so that a test can run every
//! expression of the Grafana dashboards against what our services really exported.

use std::path::Path;
use std::time::Duration;

use crate::process::Process;
use crate::{free_port, wait_until};

const PROMETHEUS: &str = "/usr/bin/prometheus";

/// A running Prometheus.
pub struct Prometheus {
    /// Its HTTP port.
    pub port: u16,
    _process: Process,
}

/// What a query answered.
#[derive(Debug)]
pub enum Answer {
    /// The series of a valid query (perhaps none).
    Series(Vec<serde_json::Value>),
    /// Prometheus refused it (`errorType`, `error`): for PromQL that does not parse, `bad_data`.
    Error(String, String),
}

impl Prometheus {
    /// Starts it under `dir`, scraping each `(job, admin port)` at `/metrics` every second;
    /// waits until every target has been scraped once.
    pub async fn start(dir: &Path, targets: &[(&str, u16)]) -> Self {
        assert!(Path::new(PROMETHEUS).is_file(), "{PROMETHEUS} is missing: ./dev installs prometheus");
        let dir = dir.join("prometheus");
        std::fs::create_dir_all(dir.join("data")).expect("prometheus dir");
        let mut config = String::from("global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n");
        for (job, port) in targets {
            config.push_str(&format!(
                "  - job_name: {job}\n    static_configs:\n      - targets: ['127.0.0.1:{port}']\n"
            ));
        }
        std::fs::write(dir.join("prometheus.yml"), config).expect("prometheus config");
        let port = free_port();
        let args = [
            format!("--config.file={}", dir.join("prometheus.yml").display()),
            format!("--storage.tsdb.path={}", dir.join("data").display()),
            format!("--web.listen-address=127.0.0.1:{port}"),
            "--enable-feature=exemplar-storage".to_string(),
        ];
        let process = Process::spawn("prometheus", Path::new(PROMETHEUS), &args, &dir.join("prometheus.log"))
            .expect("start prometheus");
        let prometheus = Self { port, _process: process };
        let wanted = targets.len();
        let scraped = wait_until(Duration::from_secs(60), || async {
            match prometheus.query("up").await {
                Answer::Series(series) => series.len() == wanted && series.iter().all(|s| s["value"][1] == "1"),
                Answer::Error(..) => false,
            }
        })
        .await;
        if !scraped {
            prometheus._process.fail("never scraped every target");
        }
        prometheus
    }

    /// Evaluates `expr` now.
    pub async fn query(&self, expr: &str) -> Answer {
        let url = format!("http://127.0.0.1:{}/api/v1/query", self.port);
        let response = match reqwest::Client::new().get(url).query(&[("query", expr)]).send().await {
            Ok(response) => response,
            Err(e) => return Answer::Error("unreachable".into(), e.to_string()),
        };
        let body: serde_json::Value = response.json().await.unwrap_or_default();
        if body["status"] == "success" {
            Answer::Series(body["data"]["result"].as_array().cloned().unwrap_or_default())
        } else {
            let kind = body["errorType"].as_str().unwrap_or("unknown").to_owned();
            Answer::Error(kind, body["error"].as_str().unwrap_or_default().to_owned())
        }
    }
}
