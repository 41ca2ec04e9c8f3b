//! Granite 3.2+ reasoning: the answer opens with "Here is my thought process:" (or
//! "Here's …") and the response follows "Here is my response:" (or "Here's …"). An
//! answer that does not open so, or never reaches its response, is all content, as vLLM
//! reads a whole answer.

use super::Markers;

pub const MARKERS: Markers = Markers {
    start: &["Here is my thought process:", "Here's my thought process:"],
    end: &["Here is my response:", "Here's my response:"],
    start_required: true,
    unclosed_is_content: true,
};

#[cfg(test)]
mod tests {
    use super::super::split::tests::assert_streams_like_whole;
    use super::super::ReasoningParser;

    #[test]
    fn thought_process_then_response() {
        let p = ReasoningParser::Granite;
        let text = "Here's my thought process:\nAdd them.\nHere is my response:\n4";
        assert_eq!(p.split(text, false), (Some("\nAdd them.\n".into()), Some("\n4".into())));
        assert_eq!(p.split("Just 4.", false), (None, Some("Just 4.".into())));
        let unclosed = "Here is my thought process: still going";
        assert_eq!(p.split(unclosed, false), (None, Some(unclosed.into())));
        assert_streams_like_whole(p, text, false);
        assert_streams_like_whole(p, "Here we go", false);
    }
}
