//! media: a chat's images, between render and tokenize. For each image part, in order:
//! its bytes (a `data:` URL's, decoded at validation; an `http(s)://` URL fetched with a
//! timeout and a size limit; a `file://` path read only under `--allowed-local-media-path`),
//! decoded to RGB, and preprocessed as the model's image processor does; then each image's
//! placeholder in the rendered prompt is repeated once per merged patch, so that the
//! tokenizer gives the engine one placeholder token per image embedding. Anything wrong
//! with an image is a 400 that says which image and what was wrong. Jobs without images
//! pass through untouched.

use std::sync::Arc;
use std::time::Duration;

use crate::api::context::{ServingContext, VisionServing};
use crate::api::error::ApiError;
use crate::api::request::{Job, Prompt};
use crate::api::validate::media::ImageSource;
use crate::model::qwen2_vl::ImageInput;
use crate::pipeline::{Outlet, Stage};
use crate::stages::item::{Item, Payload};
use crate::vision::qwen2_vl::preprocess;

pub struct Media {
    pub serving: Arc<ServingContext>,
    /// Runs the fetches of http(s) images (one small runtime for the stage's workers).
    fetcher: Fetcher,
}

impl Media {
    pub fn new(serving: Arc<ServingContext>) -> Result<Self, String> {
        Ok(Media { serving, fetcher: Fetcher::new()? })
    }
}

impl Stage<Item> for Media {
    fn process(&self, item: Item, out: &Outlet<Item>) {
        let Payload::Job(mut job) = item.payload else { unreachable!("media takes jobs") };
        if !job.media.is_empty() {
            if let Err(e) = self.prepare(&mut job) {
                item.ctx.fail(e);
                return;
            }
        }
        let _ = out.send(Item { ctx: item.ctx, payload: Payload::Job(job) });
    }
}

impl Media {
    fn prepare(&self, job: &mut Job) -> Result<(), ApiError> {
        let Some(vision) = self.serving.vision.as_deref() else {
            return Err(ApiError::bad_request("The served model takes no images."));
        };
        let processor = job.processor.as_deref().unwrap_or(&vision.processor);
        let images = self.fetcher.images(&job.media, processor, vision)?;
        let Prompt::Texts { texts, .. } = &mut job.prompt else {
            return Err(ApiError::internal("the media stage takes rendered chats"));
        };
        let [text] = texts.as_mut_slice() else {
            return Err(ApiError::internal("a chat renders to one prompt"));
        };
        *text = expand_placeholders(text, &vision.placeholder, &images)?;
        job.images = images;
        job.media.clear();
        Ok(())
    }
}

/// `text` with its `i`-th `placeholder` repeated as many times as image `i` has tokens; a
/// 400 when the prompt does not place exactly one placeholder per image.
pub fn expand_placeholders(text: &str, placeholder: &str, images: &[ImageInput]) -> Result<String, ApiError> {
    let pieces: Vec<&str> = text.split(placeholder).collect();
    let found = pieces.len() - 1;
    if found != images.len() {
        return Err(ApiError::invalid(
            "messages",
            format!(
                "The rendered prompt has {found} image placeholders ({placeholder}) for {} images: the chat template \
                 must place each image part once, and message text must not contain {placeholder}.",
                images.len()
            ),
        ));
    }
    let extra: usize = images.iter().map(|i| i.patches.num_tokens.saturating_sub(1) * placeholder.len()).sum();
    let mut out = String::with_capacity(text.len() + extra);
    out.push_str(pieces[0]);
    for (image, piece) in images.iter().zip(&pieces[1..]) {
        for _ in 0..image.patches.num_tokens {
            out.push_str(placeholder);
        }
        out.push_str(piece);
    }
    Ok(out)
}

/// Reads images from where their URLs point, and prepares them for the model.
pub struct Fetcher {
    runtime: tokio::runtime::Runtime,
    client: reqwest::Client,
}

impl Fetcher {
    pub fn new() -> Result<Self, String> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("media-fetch")
            .enable_all()
            .build()
            .map_err(|e| format!("the media stage's fetch runtime: {e}"))?;
        let client = reqwest::Client::builder()
            .user_agent(concat!("sluice/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("the media stage's HTTP client: {e}"))?;
        Ok(Fetcher { runtime, client })
    }

    /// Each image read, decoded and preprocessed with `processor`; a 400 naming the first
    /// image that cannot be.
    pub fn images(
        &self,
        sources: &[ImageSource],
        processor: &crate::vision::qwen2_vl::ProcessorConfig,
        vision: &VisionServing,
    ) -> Result<Vec<ImageInput>, ApiError> {
        let count = sources.len();
        let mut images = Vec::with_capacity(count);
        for (k, source) in sources.iter().enumerate() {
            let which = |msg: String| ApiError::invalid("messages", format!("Image {} of {count}: {msg}", k + 1));
            let bytes = self.bytes(source, vision).map_err(which)?;
            let rgb = crate::vision::decode::decode(&bytes, vision.max_pixels).map_err(|e| which(e.to_string()))?;
            let patches = preprocess(&rgb, processor).map_err(|e| which(e.to_string()))?;
            images.push(ImageInput::new(patches));
        }
        Ok(images)
    }

    /// The image's bytes, or what went wrong (said for the client).
    fn bytes(&self, source: &ImageSource, vision: &VisionServing) -> Result<Vec<u8>, String> {
        let max = vision.max_bytes;
        let too_large = |n: usize| format!("the image has {n} bytes or more, over the limit of {max} bytes");
        match source {
            ImageSource::Inline { bytes, .. } if bytes.len() > max => Err(too_large(bytes.len())),
            ImageSource::Inline { bytes, .. } => Ok(bytes.clone()),
            ImageSource::Local(path) => read_local(path, vision.local_root.as_deref(), max),
            ImageSource::Remote(url) => {
                let fetch = fetch(&self.client, url, max);
                match self.runtime.block_on(async { tokio::time::timeout(vision.fetch_timeout, fetch).await }) {
                    Ok(result) => result,
                    Err(_) => Err(format!("fetching {url} took longer than {}", seconds(vision.fetch_timeout))),
                }
            }
        }
    }
}

fn seconds(d: Duration) -> String {
    format!("{} s (VLLM_IMAGE_FETCH_TIMEOUT)", d.as_secs_f64())
}

async fn fetch(client: &reqwest::Client, url: &str, max: usize) -> Result<Vec<u8>, String> {
    let mut resp = client.get(url).send().await.map_err(|e| format!("fetching {url} failed: {}", root_cause(&e)))?;
    let status = resp.status();
    if !status.is_success() {
        return Err(format!("fetching {url} answered HTTP {status}"));
    }
    if let Some(ct) = resp.headers().get(reqwest::header::CONTENT_TYPE) {
        let ct = ct.to_str().unwrap_or("").split(';').next().unwrap_or("").trim().to_ascii_lowercase();
        if !(ct.starts_with("image/") || ct == "application/octet-stream" || ct.is_empty()) {
            return Err(format!("{url} is not an image: its content type is {ct:?}"));
        }
    }
    if let Some(n) = resp.content_length().filter(|&n| n as usize > max) {
        return Err(format!("{url} has {n} bytes, over the limit of {max} bytes"));
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| format!("reading {url} failed: {}", root_cause(&e)))? {
        if body.len() + chunk.len() > max {
            return Err(format!("{url} has more than {max} bytes, over the limit"));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// The innermost error's words (reqwest's outer ones only say "error sending request").
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut inner: &dyn std::error::Error = e;
    while let Some(next) = inner.source() {
        inner = next;
    }
    inner.to_string()
}

/// A `file://` image: only a file at or below `root` (links and `..` resolved first), and
/// never read when there is no root.
fn read_local(path: &str, root: Option<&std::path::Path>, max: usize) -> Result<Vec<u8>, String> {
    let Some(root) = root else {
        return Err("file:// URLs are refused: the server was not started with --allowed-local-media-path".into());
    };
    let outside = || format!("file://{path} is outside the folder allowed by --allowed-local-media-path");
    // `file://localhost/x` names `/x` too.
    let path = path.strip_prefix("localhost").unwrap_or(path);
    let real = std::fs::canonicalize(path).map_err(|e| {
        if std::path::Path::new(path).starts_with(root) { format!("file://{path} cannot be read: {e}") } else { outside() }
    })?;
    if !real.starts_with(root) {
        return Err(outside());
    }
    let meta = std::fs::metadata(&real).map_err(|e| format!("file://{path} cannot be read: {e}"))?;
    if !meta.is_file() {
        return Err(format!("file://{path} is not a file"));
    }
    if meta.len() as usize > max {
        return Err(format!("file://{path} has {} bytes, over the limit of {max} bytes", meta.len()));
    }
    std::fs::read(&real).map_err(|e| format!("file://{path} cannot be read: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vision::qwen2_vl::ImagePatches;

    fn image(tokens: usize) -> ImageInput {
        ImageInput::new(ImagePatches { pixel_values: vec![], grid_thw: [1, 2, 2 * tokens], patch_width: 0, num_tokens: tokens })
    }

    #[test]
    fn placeholders_are_repeated_per_image_token() {
        let t = expand_placeholders("a<P>b<P>c", "<P>", &[image(2), image(3)]).unwrap();
        assert_eq!(t, "a<P><P>b<P><P><P>c");
        let e = expand_placeholders("a<P>b", "<P>", &[image(2), image(3)]).unwrap_err();
        assert!(e.message.contains("1 image placeholders (<P>) for 2 images"), "{}", e.message);
    }

    #[test]
    fn local_files_only_under_the_root() {
        let dir = std::env::temp_dir().join(format!("sluice-media-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("in")).unwrap();
        std::fs::write(dir.join("in/a.png"), b"png").unwrap();
        std::fs::write(dir.join("b.png"), b"png").unwrap();
        let root = std::fs::canonicalize(dir.join("in")).unwrap();
        let inside = format!("{}/a.png", root.display());
        assert_eq!(read_local(&inside, Some(&root), 100).unwrap(), b"png");
        let escape = format!("{}/../b.png", root.display());
        assert!(read_local(&escape, Some(&root), 100).unwrap_err().contains("outside the folder"));
        assert!(read_local(&inside, None, 100).unwrap_err().contains("--allowed-local-media-path"));
        assert!(read_local(&inside, Some(&root), 2).unwrap_err().contains("over the limit"));
        assert!(read_local("/etc/passwd", Some(&root), 100).unwrap_err().contains("outside the folder"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
