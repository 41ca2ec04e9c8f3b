//! A `multipart/form-data` request as the HTTP edge received it: its text fields in order
//! and its uploaded file. The audio APIs take their requests this way (OpenAI's wire
//! format); validation reads the fields one by one, as it reads a JSON body's.

use bytes::Bytes;

/// A form's parts, as sent.
#[derive(Debug, Clone, Default)]
pub struct Form {
    /// Text fields, in order (a name may repeat, as `timestamp_granularities[]` does).
    pub fields: Vec<(String, String)>,
    /// File parts, in order (the audio APIs take exactly one, named `file`).
    pub files: Vec<Upload>,
}

/// One uploaded file.
#[derive(Debug, Clone)]
pub struct Upload {
    /// The part's field name.
    pub field: String,
    /// The filename the client gave (its extension hints at the format).
    pub filename: Option<String>,
    pub bytes: Bytes,
}

impl Upload {
    /// The filename's extension, lowercased (`mp3`), when it has one.
    pub fn extension(&self) -> Option<String> {
        let name = self.filename.as_deref()?;
        let (_, ext) = name.rsplit_once('.')?;
        (!ext.is_empty() && ext.len() <= 8).then(|| ext.to_ascii_lowercase())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extension_of_the_filename() {
        let u = |name: Option<&str>| Upload { field: "file".into(), filename: name.map(str::to_owned), bytes: Bytes::new() };
        assert_eq!(u(Some("talk.MP3")).extension().as_deref(), Some("mp3"));
        assert_eq!(u(Some("archive.tar.gz")).extension().as_deref(), Some("gz"));
        assert_eq!(u(Some("noext")).extension(), None);
        assert_eq!(u(Some("dot.")).extension(), None);
        assert_eq!(u(None).extension(), None);
    }
}
