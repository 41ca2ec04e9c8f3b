//! Test support for the streaming parsers (tool calls, reasoning): the ways a text can
//! arrive in pieces, so a parser can be checked to read every one as it reads the whole.

/// `text` cut in two at every character boundary, and then one character at a time.
pub fn every_cut(text: &str) -> Vec<Vec<&str>> {
    text.char_indices()
        .map(|(i, _)| vec![&text[..i], &text[i..]])
        .chain(std::iter::once(text.char_indices().map(|(i, c)| &text[i..i + c.len_utf8()]).collect()))
        .collect()
}
