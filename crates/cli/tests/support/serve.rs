//! `mystira-users serve` as a child process, shared by the process tests that call its HTTP
//! API (`serve.rs`, `operator_gates.rs`): started on a free port of loopback, its log kept, a
//! development token from `dev-token`, and a metric read from `/metrics`.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_mystira-users");

/// The Cosmos emulator's well-known key, which the test server accepts (scripts/test exports
/// the server's endpoint and certificate, not a key).
pub use mystira_test_support::cosmos::EMULATOR_KEY;
use mystira_test_support::process::ChildGuard;

/// A running `serve`, the address it bound and what it has logged.
pub struct Serve {
    /// Killed on drop: a test that fails before `stop` must not leave the server running.
    pub child: ChildGuard,
    pub base: String,
    pub log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Serve {
    /// Starts `serve` on a free port; with `cosmos_db`, on that database of the Cosmos test
    /// server, else with no Cosmos settings (development on PostgreSQL alone).
    pub fn start(db: &str, cosmos_db: Option<&str>) -> Serve {
        Self::start_with(db, cosmos_db, &[])
    }

    pub fn start_with(db: &str, cosmos_db: Option<&str>, extra: &[&str]) -> Serve {
        let mut command = Command::new(BIN);
        command.args(["serve", "--phase-poll-ms", "200"]);
        // a free port on loopback unless the test listens elsewhere
        if !extra.contains(&"--listen") {
            command.args(["--listen", "127.0.0.1:0"]);
        }
        command
            .args(extra)
            .args(["--database-url", db])
            .env_remove("MYSTIRA_CONFIG")
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(cosmos_db) = cosmos_db {
            command
                .env("COSMOS_DATABASE", cosmos_db)
                .env("COSMOS_KEY", EMULATOR_KEY);
        } else {
            for name in ["COSMOS_ENDPOINT", "COSMOS_KEY", "COSMOS_DATABASE"] {
                command.env_remove(name);
            }
        }
        let mut child = ChildGuard::new(command.spawn().unwrap());
        // the "serving" log line names the bound address
        let stderr = child.stderr.take().unwrap();
        let mut lines = BufReader::new(stderr).lines();
        let mut before = Vec::new();
        let address = loop {
            let line = lines
                .next()
                .expect("serve exited before it listened")
                .unwrap();
            if let Some(rest) = line.split("address=").nth(1) {
                break rest.split_whitespace().next().unwrap().to_owned();
            }
            before.push(line);
        };
        // keep draining stderr so the child never blocks on a full pipe, keeping the lines
        let log = std::sync::Arc::new(std::sync::Mutex::new(before));
        let kept = log.clone();
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                kept.lock().unwrap().push(line);
            }
        });
        Serve {
            child,
            base: format!("http://{address}"),
            log,
        }
    }

    /// What the process logged so far.
    pub fn logged(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    pub async fn get(&self, path: &str) -> (u16, String, String) {
        self.get_as(path, None).await
    }

    /// GET with an optional bearer token: status, content type, body.
    pub async fn get_as(&self, path: &str, token: Option<&str>) -> (u16, String, String) {
        let mut request = reqwest::Client::new().get(format!("{}{path}", self.base));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let content_type = response
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        (status, content_type, response.text().await.unwrap())
    }

    /// A request with a JSON body: status and the body as JSON.
    pub async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        token: &str,
        body: serde_json::Value,
    ) -> (u16, serde_json::Value) {
        let response = reqwest::Client::new()
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(token)
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or_default())
    }

    /// Polls `path` until it answers `status`, for at most `within`.
    pub async fn until(&self, path: &str, status: u16, within: Duration) -> (u16, String, String) {
        let deadline = Instant::now() + within;
        loop {
            let answer = self.get(path).await;
            if answer.0 == status || Instant::now() > deadline {
                return answer;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// SIGTERM, then the exit status and stdout.
    pub fn stop(mut self) -> (std::process::ExitStatus, String) {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.child.try_wait().unwrap().is_none() {
            assert!(
                Instant::now() < deadline,
                "serve did not stop within 10 s of SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let status = self.child.wait().unwrap();
        let mut stdout = String::new();
        if let Some(mut out) = self.child.stdout.take() {
            std::io::Read::read_to_string(&mut out, &mut stdout).unwrap();
        }
        (status, stdout)
    }
}

/// The value of the metric `name` (with its labels) in a /metrics text.
pub fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or_else(|| panic!("{name} is not in the metrics:\n{text}"))
}

/// A token from `dev-token` with the development key in `key`.
pub fn dev_token(key: &std::path::Path, args: &[&str]) -> String {
    let out = Command::new(BIN)
        .arg("dev-token")
        .args(args)
        .arg("--dev-key")
        .arg(key)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}
