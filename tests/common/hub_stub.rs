//! A stand-in for the Hugging Face Hub on loopback, speaking the parts of its file API that
//! huggingface_hub (and sluice) use: `GET /api/models/{repo}/revision/{rev}` (the commit
//! and its files, with `blobs=true` sizes and hashes), `HEAD|GET /{repo}/resolve/{rev}/{file}`
//! (`X-Repo-Commit`, `ETag`; for LFS files a 302 to a CDN path with `X-Linked-Etag` and
//! `X-Linked-Size`), the CDN's `GET` with `Range`, and the Hub's refusals (`X-Error-Code`:
//! `RepoNotFound`, `RevisionNotFound`, `EntryNotFound`, `GatedRepo`). Files can be set to be
//! cut half-way once (the connection dropped) or served corrupted.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::http::{HeaderMap, Method, Response, StatusCode, Uri};
use sha2::Digest;

pub struct StubFile {
    pub path: String,
    pub bytes: Vec<u8>,
    pub lfs: bool,
}

impl StubFile {
    pub fn sha256(&self) -> String {
        hex(&sha2::Sha256::digest(&self.bytes))
    }

    /// Git's blob id of the content (the pointer file's, for LFS files, as the Hub does).
    pub fn git_sha1(&self) -> String {
        let content: Vec<u8> = if self.lfs {
            format!("version https://git-lfs.github.com/spec/v1\noid sha256:{}\nsize {}\n", self.sha256(), self.bytes.len())
                .into_bytes()
        } else {
            self.bytes.clone()
        };
        let mut h = sha1::Sha1::new();
        h.update(format!("blob {}\0", content.len()).as_bytes());
        h.update(&content);
        hex(&h.finalize())
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

pub struct StubRepo {
    pub id: String,
    pub commit: String,
    pub files: Vec<StubFile>,
    /// A gated repository: file requests need `Authorization: Bearer <token>`.
    pub token: Option<String>,
}

/// One request as the stand-in saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub range: Option<String>,
    pub auth: Option<String>,
}

#[derive(Default)]
struct State {
    repos: Vec<StubRepo>,
    /// Paths whose next full download is cut half-way.
    cut_once: Mutex<HashSet<String>>,
    /// Paths served with one byte changed.
    corrupt: HashSet<String>,
    seen: Mutex<Vec<Seen>>,
    origin: Mutex<String>,
}

pub struct HubStub {
    pub endpoint: String,
    state: Arc<State>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl HubStub {
    /// Serves `repos`; `cut_once` and `corrupt` name files (`repo/path`) to misbehave.
    pub fn start(repos: Vec<StubRepo>, cut_once: &[&str], corrupt: &[&str]) -> HubStub {
        let state = Arc::new(State {
            repos,
            cut_once: Mutex::new(cut_once.iter().map(|s| s.to_string()).collect()),
            corrupt: corrupt.iter().map(|s| s.to_string()).collect(),
            ..State::default()
        });
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let st = state.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                let addr = listener.local_addr().unwrap();
                *st.origin.lock().unwrap() = format!("http://{addr}");
                addr_tx.send(addr).unwrap();
                let app = axum::Router::new().fallback({
                    let st = st.clone();
                    move |method: Method, uri: Uri, headers: HeaderMap| {
                        let st = st.clone();
                        async move { handle(&st, method, uri, headers) }
                    }
                });
                axum::serve(listener, app)
                    .with_graceful_shutdown(async move {
                        let _ = rx.await;
                    })
                    .await
                    .unwrap();
            });
        });
        let addr = addr_rx.recv().unwrap();
        HubStub { endpoint: format!("http://{addr}"), state, stop: Some(tx), thread: Some(thread) }
    }

    /// Every request so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.state.seen.lock().unwrap().clone()
    }

    /// Stops listening: the port refuses connections from now on.
    pub fn stop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for HubStub {
    fn drop(&mut self) {
        self.stop();
    }
}

fn refuse(status: StatusCode, code: &str, message: &str, commit: Option<&str>) -> Response<Body> {
    let mut r = Response::builder().status(status).header("x-error-code", code).header("x-error-message", message);
    if let Some(c) = commit {
        r = r.header("x-repo-commit", c);
    }
    r.body(Body::from(format!("{{\"error\": \"{message}\"}}"))).unwrap()
}

fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn handle(st: &State, method: Method, uri: Uri, headers: HeaderMap) -> Response<Body> {
    let path = uri.path().to_string();
    let header = |n: &str| headers.get(n).and_then(|v| v.to_str().ok()).map(str::to_owned);
    st.seen.lock().unwrap().push(Seen {
        method: method.to_string(),
        path: path.clone(),
        range: header("range"),
        auth: header("authorization"),
    });
    let find = |id: &str| st.repos.iter().find(|r| r.id == id);
    let not_found = || refuse(StatusCode::UNAUTHORIZED, "RepoNotFound", "Repository not found", None);
    let rev_ok = |r: &StubRepo, rev: &str| rev == "main" || rev == r.commit;

    if let Some(rest) = path.strip_prefix("/api/models/") {
        let (id, rev) = match rest.split_once("/revision/") {
            Some((id, rev)) => (id.to_string(), decode(rev)),
            None => (rest.to_string(), "main".to_string()),
        };
        let Some(repo) = find(&id) else { return not_found() };
        if !rev_ok(repo, &rev) {
            return refuse(StatusCode::NOT_FOUND, "RevisionNotFound", &format!("Invalid rev id: {rev}"), None);
        }
        let siblings: Vec<serde_json::Value> = repo
            .files
            .iter()
            .map(|f| {
                let mut s = serde_json::json!({"rfilename": f.path, "blobId": f.git_sha1(), "size": f.bytes.len()});
                if f.lfs {
                    s["lfs"] = serde_json::json!({"sha256": f.sha256(), "size": f.bytes.len(), "pointerSize": 134});
                    s["size"] = serde_json::json!(f.bytes.len());
                }
                s
            })
            .collect();
        let body = serde_json::json!({"id": repo.id, "modelId": repo.id, "sha": repo.commit, "private": false,
                                      "gated": if repo.token.is_some() { serde_json::json!("auto") } else { serde_json::json!(false) },
                                      "siblings": siblings});
        return Response::builder().header("content-type", "application/json").body(Body::from(body.to_string())).unwrap();
    }

    if let Some(sha) = path.strip_prefix("/cdn/") {
        let found = st.repos.iter().flat_map(|r| r.files.iter().map(move |f| (r, f))).find(|(_, f)| f.lfs && f.sha256() == sha);
        let Some((repo, file)) = found else { return refuse(StatusCode::NOT_FOUND, "", "no such object", None) };
        return content(st, &format!("{}/{}", repo.id, file.path), file, &method, header("range"));
    }

    // /{org}/{name}/resolve/{rev}/{file...}
    let parts: Vec<&str> = path.trim_start_matches('/').splitn(5, '/').collect();
    if parts.len() == 5 && parts[2] == "resolve" {
        let id = format!("{}/{}", parts[0], parts[1]);
        let (rev, file_path) = (decode(parts[3]), decode(parts[4]));
        let Some(repo) = find(&id) else { return not_found() };
        if !rev_ok(repo, &rev) {
            return refuse(StatusCode::NOT_FOUND, "RevisionNotFound", &format!("Invalid rev id: {rev}"), None);
        }
        if let Some(token) = &repo.token {
            if header("authorization").as_deref() != Some(&format!("Bearer {token}")) {
                return refuse(
                    StatusCode::UNAUTHORIZED,
                    "GatedRepo",
                    &format!("Access to model {id} is restricted. You must have access to it and be authenticated to access it. Please log in."),
                    Some(&repo.commit),
                );
            }
        }
        let Some(file) = repo.files.iter().find(|f| f.path == file_path) else {
            return refuse(StatusCode::NOT_FOUND, "EntryNotFound", &format!("{file_path} does not exist on \"{rev}\""), Some(&repo.commit));
        };
        if file.lfs {
            let origin = st.origin.lock().unwrap().clone();
            return Response::builder()
                .status(StatusCode::FOUND)
                .header("location", format!("{origin}/cdn/{}", file.sha256()))
                .header("x-repo-commit", &repo.commit)
                .header("etag", format!("\"{}\"", file.git_sha1()))
                .header("x-linked-etag", format!("\"{}\"", file.sha256()))
                .header("x-linked-size", file.bytes.len().to_string())
                .body(Body::empty())
                .unwrap();
        }
        let mut r = content(st, &format!("{id}/{}", file.path), file, &method, header("range"));
        r.headers_mut().insert("x-repo-commit", repo.commit.parse().unwrap());
        r.headers_mut().insert("etag", format!("\"{}\"", file.git_sha1()).parse().unwrap());
        return r;
    }
    refuse(StatusCode::NOT_FOUND, "", "no such route", None)
}

/// A file's bytes, whole or from a `Range: bytes=N-`, maybe cut or corrupted.
fn content(st: &State, key: &str, file: &StubFile, method: &Method, range: Option<String>) -> Response<Body> {
    let mut bytes = file.bytes.clone();
    if st.corrupt.contains(key) {
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
    }
    let total = bytes.len();
    let start = range
        .as_deref()
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.split('-').next())
        .and_then(|s| s.parse::<usize>().ok());
    let mut r = Response::builder().header("accept-ranges", "bytes");
    let body = match start {
        Some(s) if s >= total => {
            return Response::builder()
                .status(StatusCode::RANGE_NOT_SATISFIABLE)
                .header("content-range", format!("bytes */{total}"))
                .body(Body::empty())
                .unwrap();
        }
        Some(s) => {
            r = r.status(StatusCode::PARTIAL_CONTENT).header("content-range", format!("bytes {s}-{}/{total}", total - 1));
            bytes[s..].to_vec()
        }
        None => bytes,
    };
    r = r.header("content-length", body.len().to_string());
    if *method == Method::HEAD {
        return r.body(Body::empty()).unwrap();
    }
    let cut = start.is_none() && st.cut_once.lock().unwrap().remove(key);
    if cut {
        // Half the bytes, then the connection drops.
        let half = body[..body.len() / 2].to_vec();
        let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
            vec![Ok(half), Err(std::io::Error::new(std::io::ErrorKind::ConnectionReset, "cut"))];
        return r.body(Body::from_stream(futures_util::stream::iter(chunks))).unwrap();
    }
    r.body(Body::from(body)).unwrap()
}
