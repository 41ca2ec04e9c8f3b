//! The parts of the Hub's HTTP API a download uses, as huggingface_hub uses them:
//! `GET /api/models/{repo}/revision/{rev}?blobs=true` (the commit and its files, with
//! sizes and hashes), `HEAD /{repo}/resolve/{commit}/{file}` (the blob's ETag, size and
//! where to fetch it: relative redirects are followed, an absolute one — a CDN — is where
//! the GET goes), and a ranged `GET` of the content. Every request has a connect timeout
//! and a read timeout, so a dead network is an error, never a hang.

use std::collections::BTreeMap;

use reqwest::header::{HeaderMap, HeaderValue};
use reqwest::{Response, StatusCode, Url};
use serde_json::Value as Json;

use super::HubError;
use super::cache::TreeEntry;
use super::settings::HubSettings;

/// A commit and its files.
pub struct RepoInfo {
    pub sha: String,
    pub files: BTreeMap<String, TreeEntry>,
}

/// What HEAD says about one file.
#[derive(Debug, Clone)]
pub struct FileMeta {
    /// The blob's name in the cache: the sha256 of an LFS file, the git blob id otherwise.
    pub etag: String,
    pub size: Option<u64>,
    /// Where the content is fetched from (the CDN for LFS files).
    pub url: Url,
}

/// What a failed request was about, for its error message.
#[derive(Clone, Copy)]
enum About<'a> {
    Revision(&'a str),
    File { revision: &'a str, file: &'a str },
}

#[derive(Clone)]
pub struct Client {
    /// Redirects are handled by hand (HEAD reads the first answer's headers).
    http: reqwest::Client,
    endpoint: Url,
    settings: HubSettings,
}

/// The `/`-separated parts of a path, each percent-encoded.
fn encode_path(path: &str) -> String {
    path.split('/').map(encode_component).collect::<Vec<_>>().join("/")
}

fn encode_component(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `W/"abc"` or `"abc"` → `abc`.
fn normalize_etag(v: &str) -> String {
    v.trim().trim_start_matches("W/").trim_matches('"').to_string()
}

fn header<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

/// The innermost cause of an error, which says what actually happened ("Connection refused").
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

impl Client {
    pub fn new(settings: &HubSettings) -> Result<Client, HubError> {
        let endpoint = Url::parse(&format!("{}/", settings.endpoint.trim_end_matches('/')))
            .map_err(|e| HubError::Files(format!("HF_ENDPOINT {:?} is not a URL ({e})", settings.endpoint)))?;
        let http = reqwest::Client::builder()
            .user_agent(concat!("sluice/", env!("CARGO_PKG_VERSION"), "; hf_hub-compatible"))
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(settings.etag_timeout)
            .read_timeout(settings.download_timeout)
            .build()
            .map_err(|e| HubError::Files(format!("cannot set up HTTPS: {e}")))?;
        Ok(Client { http, endpoint, settings: settings.clone() })
    }

    fn url(&self, path: &str) -> Url {
        // The endpoint may sit under a path (a mirror): join relative to it.
        self.endpoint.join(path.trim_start_matches('/')).expect("a path joins onto the endpoint URL")
    }

    fn same_host(&self, url: &Url) -> bool {
        url.host_str() == self.endpoint.host_str() && url.port_or_known_default() == self.endpoint.port_or_known_default()
    }

    fn auth(&self, req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.settings.token {
            Some(t) => req.bearer_auth(t),
            None => req,
        }
    }

    /// A request that never left, or never finished: the network, not the Hub.
    pub fn network_error(&self, repo: &str, e: &reqwest::Error) -> HubError {
        let detail = if e.is_timeout() {
            format!(
                "no answer within {}s (HF_HUB_ETAG_TIMEOUT / HF_HUB_DOWNLOAD_TIMEOUT set these)",
                self.settings.etag_timeout.max(self.settings.download_timeout).as_secs_f64()
            )
        } else {
            root_cause(e)
        };
        HubError::Unreachable {
            repo: repo.to_string(),
            endpoint: self.settings.endpoint.clone(),
            cache: self.settings.cache_dir.clone(),
            detail,
        }
    }

    /// Maps a refusal to the error that says what to do, as huggingface_hub reads the
    /// Hub's `X-Error-Code` and `X-Error-Message` headers.
    fn refusal(&self, repo: &str, resp: &Response, about: About) -> HubError {
        let h = resp.headers();
        let status = resp.status();
        let code = header(h, "x-error-code").unwrap_or("");
        let message = header(h, "x-error-message").unwrap_or("");
        let token = if self.settings.token.is_some() { "the token given cannot read it" } else { "no token was given" };
        let endpoint = self.settings.endpoint.clone();
        let repo = repo.to_string();
        match (code, status) {
            ("RevisionNotFound", _) => HubError::RevisionNotFound {
                repo,
                revision: match about {
                    About::Revision(r) | About::File { revision: r, .. } => r.to_string(),
                },
            },
            ("EntryNotFound", _) | ("", StatusCode::NOT_FOUND) if matches!(about, About::File { .. }) => {
                let About::File { revision, file } = about else { unreachable!() };
                HubError::EntryNotFound { repo, revision: revision.to_string(), file: file.to_string() }
            }
            ("GatedRepo", _) => HubError::Gated { repo, endpoint, token },
            ("RepoNotFound", _) | (_, StatusCode::NOT_FOUND) => HubError::RepoNotFound { repo, endpoint, token },
            (_, StatusCode::UNAUTHORIZED) if self.settings.token.is_some() && message.contains("credentials") => {
                HubError::BadToken { repo, status: status.as_u16() }
            }
            // The Hub answers 401 for missing, private and gated repositories alike.
            (_, StatusCode::UNAUTHORIZED) => HubError::RepoNotFound { repo, endpoint, token },
            (_, StatusCode::FORBIDDEN) => HubError::Forbidden {
                repo,
                detail: if message.is_empty() { String::new() } else { format!(": {message}") },
            },
            _ => HubError::Http {
                endpoint,
                url: resp.url().to_string(),
                status: status.as_u16(),
                detail: if message.is_empty() { String::new() } else { format!(" ({message})") },
            },
        }
    }

    /// The commit `revision` names and its files (sizes, git blob ids, LFS sha256).
    pub async fn repo_info(&self, repo: &str, revision: &str) -> Result<RepoInfo, HubError> {
        let mut url = self.url(&format!("api/models/{}/revision/{}", encode_path(repo), encode_component(revision)));
        url.set_query(Some("blobs=true"));
        let resp = self
            .auth(self.http.get(url.clone()))
            .timeout(self.settings.etag_timeout + self.settings.download_timeout)
            .send()
            .await
            .map_err(|e| self.network_error(repo, &e))?;
        if !resp.status().is_success() {
            return Err(self.refusal(repo, &resp, About::Revision(revision)));
        }
        let body: Json = resp.json().await.map_err(|e| HubError::Http {
            endpoint: self.settings.endpoint.clone(),
            url: url.to_string(),
            status: 200,
            detail: format!(" (the model info is not the JSON a Hub sends: {})", root_cause(&e)),
        })?;
        let not_a_hub = || HubError::NotAHub { endpoint: self.settings.endpoint.clone(), url: url.to_string(), header: "sha" };
        let sha = body.get("sha").and_then(Json::as_str).ok_or_else(not_a_hub)?.to_string();
        let mut files = BTreeMap::new();
        for s in body.get("siblings").and_then(Json::as_array).ok_or_else(not_a_hub)? {
            let Some(name) = s.get("rfilename").and_then(Json::as_str) else { continue };
            let lfs = s.get("lfs");
            files.insert(
                name.to_string(),
                TreeEntry {
                    size: s.get("size").and_then(Json::as_u64).unwrap_or(0),
                    blob_id: s.get("blobId").and_then(Json::as_str).unwrap_or("").to_string(),
                    lfs_sha256: lfs.and_then(|l| l.get("sha256")).and_then(Json::as_str).map(str::to_owned),
                    lfs_size: lfs.and_then(|l| l.get("size")).and_then(Json::as_u64),
                },
            );
        }
        Ok(RepoInfo { sha, files })
    }

    /// HEAD of a file at a commit: its ETag, size and download URL.
    pub async fn head(&self, repo: &str, commit: &str, file: &str) -> Result<FileMeta, HubError> {
        let mut url = self.url(&format!("{}/resolve/{}/{}", encode_path(repo), commit, encode_path(file)));
        for _ in 0..10 {
            let resp = self
                .auth(self.http.head(url.clone()))
                .header(reqwest::header::ACCEPT_ENCODING, HeaderValue::from_static("identity"))
                .timeout(self.settings.etag_timeout)
                .send()
                .await
                .map_err(|e| self.network_error(repo, &e))?;
            let status = resp.status();
            let h = resp.headers();
            let location = header(h, "location").map(str::to_owned);
            if status.is_redirection() {
                let Some(loc) = location.as_deref() else {
                    return Err(HubError::NotAHub { endpoint: self.settings.endpoint.clone(), url: url.to_string(), header: "Location" });
                };
                if Url::parse(loc).is_err() {
                    // A relative redirect: the Hub's own (a renamed repository). Follow it.
                    url = url.join(loc).map_err(|_| HubError::NotAHub {
                        endpoint: self.settings.endpoint.clone(),
                        url: url.to_string(),
                        header: "Location",
                    })?;
                    continue;
                }
            } else if !status.is_success() {
                return Err(self.refusal(repo, &resp, About::File { revision: commit, file }));
            }
            let missing = |header| HubError::NotAHub { endpoint: self.settings.endpoint.clone(), url: url.to_string(), header };
            header(h, "x-repo-commit").ok_or_else(|| missing("X-Repo-Commit"))?;
            let etag = header(h, "x-linked-etag").or_else(|| header(h, "etag")).map(normalize_etag).ok_or_else(|| missing("ETag"))?;
            let size = header(h, "x-linked-size")
                .or_else(|| if status.is_redirection() { None } else { header(h, "content-length") })
                .and_then(|v| v.parse().ok());
            let target = match location {
                Some(loc) if status.is_redirection() => Url::parse(&loc).map_err(|_| missing("Location"))?,
                _ => url.clone(),
            };
            return Ok(FileMeta { etag, size, url: target });
        }
        Err(HubError::Http {
            endpoint: self.settings.endpoint.clone(),
            url: url.to_string(),
            status: 310,
            detail: " (too many redirects)".into(),
        })
    }

    /// GET of the content from byte `from` on (a range request when `from > 0`). The token
    /// goes only to the Hub's own host, never to a CDN.
    pub async fn get(&self, repo: &str, url: &Url, from: u64) -> Result<Response, HubError> {
        let mut url = url.clone();
        for _ in 0..10 {
            let mut req = self.http.get(url.clone()).header(reqwest::header::ACCEPT_ENCODING, HeaderValue::from_static("identity"));
            if self.same_host(&url) {
                req = self.auth(req);
            }
            if from > 0 {
                req = req.header(reqwest::header::RANGE, format!("bytes={from}-"));
            }
            let resp = req.send().await.map_err(|e| self.network_error(repo, &e))?;
            if resp.status().is_redirection() {
                if let Some(next) = header(resp.headers(), "location").and_then(|l| url.join(l).ok()) {
                    url = next;
                    continue;
                }
            }
            if resp.status().is_success() || resp.status() == StatusCode::RANGE_NOT_SATISFIABLE {
                return Ok(resp);
            }
            return Err(self.refusal(repo, &resp, About::File { revision: "", file: url.path() }));
        }
        Err(HubError::Http {
            endpoint: self.settings.endpoint.clone(),
            url: url.to_string(),
            status: 310,
            detail: " (too many redirects)".into(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_and_etags() {
        assert_eq!(encode_path("1_Pooling/config.json"), "1_Pooling/config.json");
        assert_eq!(encode_component("refs/pr/1"), "refs%2Fpr%2F1");
        assert_eq!(encode_path("a b/c+d"), "a%20b/c%2Bd");
        assert_eq!(normalize_etag("W/\"abc\""), "abc");
        assert_eq!(normalize_etag("\"abc\""), "abc");
    }
}
