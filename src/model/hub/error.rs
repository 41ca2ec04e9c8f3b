//! What can go wrong between a Hub id and a snapshot on disk, each with what to do about it.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum HubError {
    #[error(
        "{repo}: the Hub at {endpoint} has no such model, or it is private and {token}: check the id, or set \
         HF_TOKEN (or HUGGING_FACE_HUB_TOKEN) to a token that can read it"
    )]
    RepoNotFound { repo: String, endpoint: String, token: &'static str },

    #[error(
        "{repo} is a gated model and {token}: accept its conditions on {endpoint}/{repo}, then set HF_TOKEN \
         (or HUGGING_FACE_HUB_TOKEN) to a token of the account that did"
    )]
    Gated { repo: String, endpoint: String, token: &'static str },

    #[error("{repo}: the Hub refused the token given in HF_TOKEN / HUGGING_FACE_HUB_TOKEN ({status}): set a valid token, or unset it for public models")]
    BadToken { repo: String, status: u16 },

    #[error("{repo}: the Hub forbids this token to read it (403{detail}): use a token with read access to the repository")]
    Forbidden { repo: String, detail: String },

    #[error(
        "{repo} has no revision {revision:?}: give a branch, a tag or a commit hash that exists (see the model's \
         \"Files and versions\" page), or leave --revision out for main"
    )]
    RevisionNotFound { repo: String, revision: String },

    #[error("{repo} has no file {file:?} at revision {revision}")]
    EntryNotFound { repo: String, revision: String, file: String },

    #[error(
        "could not reach the Hub at {endpoint} ({detail}) and {repo} is not complete in the cache at {cache}: \
         check the network and HF_ENDPOINT, or download the model where there is a network and copy the cache \
         folder here"
    )]
    Unreachable { repo: String, endpoint: String, cache: PathBuf, detail: String },

    #[error("the Hub at {endpoint} answered {status} for {url}{detail}: try again later")]
    Http { endpoint: String, url: String, status: u16, detail: String },

    #[error("the Hub at {endpoint} answered {url} without the {header} header that a Hugging Face Hub sends: check HF_ENDPOINT, proxies and firewalls")]
    NotAHub { endpoint: String, url: String, header: &'static str },

    #[error(
        "{repo}: HF_HUB_OFFLINE is set and the cache at {cache} {state}: unset HF_HUB_OFFLINE to download it"
    )]
    Offline { repo: String, cache: PathBuf, state: String },

    #[error(
        "{file} of {repo} does not match the Hub's checksum ({algo} {expected} expected, {actual} downloaded); \
         the download was removed and nothing was added to the cache: run again to download it anew"
    )]
    Corrupt { repo: String, file: String, algo: &'static str, expected: String, actual: String },

    #[error(
        "{file} of {repo}: the download was cut {attempts} times ({detail}); the {done} bytes received are kept \
         in {partial}, and the next start resumes from there"
    )]
    Cut { repo: String, file: String, attempts: usize, detail: String, done: u64, partial: PathBuf },

    #[error("{0}")]
    Files(String),

    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
}

impl HubError {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        HubError::Io { path: path.into(), source }
    }
}
