//! Image content parts (`{"type": "image_url", "image_url": {"url": …, "detail": …}}`):
//! their shape, and where the image comes from. A `data:` URL is decoded here (base64, an
//! `image/*` media type), so a malformed one is a 400 before anything is scheduled;
//! `detail` is accepted and ignored, as vLLM does.

use base64::Engine as _;
use serde_json::Value;

use crate::api::error::ApiError;

/// Where an image part's image is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageSource {
    /// A `data:` URL's bytes, and the media type it declared.
    Inline { media_type: String, bytes: Vec<u8> },
    /// An `http://` or `https://` URL.
    Remote(String),
    /// A `file://` URL's path.
    Local(String),
}

/// More images in one request's messages than `--limit-mm-per-prompt` allows is a 400.
pub fn check_image_count(vision: Option<&crate::api::context::VisionServing>, images: usize) -> Result<(), ApiError> {
    match vision {
        Some(v) if images > v.max_images => Err(ApiError::invalid(
            "messages",
            format!("The messages carry {images} images; at most {} are allowed per prompt (--limit-mm-per-prompt).", v.max_images),
        )),
        _ => Ok(()),
    }
}

/// A vision model's `mm_processor_kwargs`: `min_pixels` and `max_pixels` (vLLM's names for
/// Qwen2-VL's resize bounds) give the request its own processor settings; any other key,
/// or bounds the processor cannot use, is a 400.
pub fn processor_kwargs(
    f: &mut super::Fields,
    vision: &crate::api::context::VisionServing,
) -> Result<Option<std::sync::Arc<crate::vision::qwen2_vl::ProcessorConfig>>, ApiError> {
    let Some(kwargs) = f.take::<serde_json::Map<String, Value>>("mm_processor_kwargs")? else { return Ok(None) };
    if kwargs.is_empty() {
        return Ok(None);
    }
    let mut bounds = [None, None];
    for (k, v) in &kwargs {
        let slot = match k.as_str() {
            "min_pixels" => 0,
            "max_pixels" => 1,
            other => {
                return Err(ApiError::invalid(
                    format!("mm_processor_kwargs.{other}"),
                    format!("`mm_processor_kwargs.{other}` is not an option of this model's processor; min_pixels and max_pixels are."),
                ));
            }
        };
        bounds[slot] = Some(v.as_u64().filter(|&n| n > 0).ok_or_else(|| {
            ApiError::invalid(format!("mm_processor_kwargs.{k}"), format!("`mm_processor_kwargs.{k}` must be a positive integer."))
        })?);
    }
    vision
        .processor
        .with_pixel_bounds(bounds[0], bounds[1])
        .map(|p| Some(std::sync::Arc::new(p)))
        .map_err(|e| ApiError::invalid("mm_processor_kwargs", format!("`mm_processor_kwargs`: {e}.")))
}

/// Checks an `image_url` part (`param` names it in errors) and finds its image.
pub fn image_part(param: &str, part: &Value) -> Result<ImageSource, ApiError> {
    let inner = part.get("image_url");
    let url = match inner {
        Some(Value::Object(o)) => o.get("url"),
        _ => None,
    };
    let Some(Value::String(url)) = url else {
        return Err(ApiError::invalid(
            format!("{param}.image_url.url"),
            format!("`{param}` of type image_url needs `image_url: {{\"url\": \"…\"}}` with the URL as a string."),
        ));
    };
    if let Some(detail) = inner.and_then(|o| o.get("detail"))
        && !detail.is_string()
    {
        return Err(ApiError::invalid(format!("{param}.image_url.detail"), "`detail` must be a string (it is ignored)."));
    }
    source(&format!("{param}.image_url.url"), url)
}

fn source(param: &str, url: &str) -> Result<ImageSource, ApiError> {
    let lower = url.get(..8).unwrap_or(url).to_ascii_lowercase();
    if lower.starts_with("data:") {
        return inline(param, &url[5..]);
    }
    if lower.starts_with("http://") || lower.starts_with("https://") {
        return Ok(ImageSource::Remote(url.to_string()));
    }
    if lower.starts_with("file://") {
        return Ok(ImageSource::Local(url[7..].to_string()));
    }
    let shown: String = url.chars().take(40).collect();
    Err(ApiError::invalid(
        param,
        format!("The image URL {shown:?} is not supported; use a data: URL (base64), http(s):// or file://."),
    ))
}

/// `<media type>[;parameters];base64,<data>` → the decoded bytes.
fn inline(param: &str, rest: &str) -> Result<ImageSource, ApiError> {
    let Some((head, data)) = rest.split_once(',') else {
        return Err(ApiError::invalid(param, "The data: URL has no `,` before its data."));
    };
    let mut fields = head.split(';');
    let media_type = fields.next().unwrap_or("").trim().to_ascii_lowercase();
    if !fields.any(|f| f.trim().eq_ignore_ascii_case("base64")) {
        return Err(ApiError::invalid(param, "The data: URL must be base64-encoded (`data:image/png;base64,…`)."));
    }
    if !media_type.starts_with("image/") {
        return Err(ApiError::invalid(
            param,
            format!("The data: URL's media type is {media_type:?}; an image part needs an image/* type."),
        ));
    }
    let compact: String = data.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(compact.as_bytes())
        .map_err(|e| ApiError::invalid(param, format!("The data: URL's base64 data is not valid: {e}.")))?;
    if bytes.is_empty() {
        return Err(ApiError::invalid(param, "The data: URL holds no data."));
    }
    Ok(ImageSource::Inline { media_type, bytes })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn part(url: &str) -> Value {
        json!({"type": "image_url", "image_url": {"url": url, "detail": "high"}})
    }

    #[test]
    fn data_urls_are_decoded() {
        let got = image_part("p", &part("data:image/png;base64,iVBORw0K")).unwrap();
        assert_eq!(got, ImageSource::Inline { media_type: "image/png".into(), bytes: b"\x89PNG\r\n".to_vec() });
    }

    #[test]
    fn other_sources_are_told_apart() {
        assert_eq!(image_part("p", &part("https://a.b/c.png")).unwrap(), ImageSource::Remote("https://a.b/c.png".into()));
        assert_eq!(image_part("p", &part("file:///tmp/x.png")).unwrap(), ImageSource::Local("/tmp/x.png".into()));
    }

    #[test]
    fn malformed_parts_say_what_is_wrong() {
        let msg = |v: Value| image_part("messages[0].content[1]", &v).unwrap_err();
        let e = msg(json!({"type": "image_url"}));
        assert_eq!(e.param.as_deref(), Some("messages[0].content[1].image_url.url"));
        assert!(msg(part("data:image/png,abc")).message.contains("base64"));
        assert!(msg(part("data:text/plain;base64,aGk=")).message.contains("image/*"));
        assert!(msg(part("data:image/png;base64,%%%")).message.contains("not valid"));
        assert!(msg(part("data:image/png;base64")).message.contains("`,`"));
        assert!(msg(part("ftp://x/y.png")).message.contains("not supported"));
        assert!(msg(json!({"type": "image_url", "image_url": {"url": "data:image/png;base64,aGk=", "detail": 3}}))
            .message
            .contains("detail"));
    }
}
