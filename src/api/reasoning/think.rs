//! `<think>…</think>` reasoning, as DeepSeek-R1, QwQ and Qwen3 write it. Newer templates
//! open `<think>` in the prompt, so the answer may start inside the reasoning with no
//! opening marker; when the model writes it, it is dropped.

use super::Markers;

pub const MARKERS: Markers = Markers { start: &["<think>"], end: &["</think>"], start_required: false, unclosed_is_content: false };

#[cfg(test)]
mod tests {
    use super::super::split::tests::assert_streams_like_whole;
    use super::super::ReasoningParser;
    use serde_json::{json, Map};

    #[test]
    fn reasoning_up_to_the_closing_marker() {
        let p = ReasoningParser::DeepseekR1;
        assert_eq!(p.split("Let me see.\n</think>\n\nIt is 4.", false), (Some("Let me see.\n".into()), Some("\n\nIt is 4.".into())));
        assert_eq!(p.split("<think>\nhmm\n</think>4", false), (Some("\nhmm\n".into()), Some("4".into())));
        assert_eq!(p.split("still thinking", false), (Some("still thinking".into()), None));
        assert_eq!(p.split("</think>", false), (None, None));
        assert_eq!(p.split("plain", true), (None, Some("plain".into())));
    }

    #[test]
    fn qwen3_without_thinking_is_all_content() {
        let off: Map<String, serde_json::Value> = json!({"enable_thinking": false}).as_object().unwrap().clone();
        assert!(ReasoningParser::Qwen3.answer_is_content("<|im_start|>assistant\n", &off));
        assert!(!ReasoningParser::DeepseekR1.answer_is_content("<|im_start|>assistant\n", &off));
        let none = Map::new();
        assert!(ReasoningParser::Qwen3.answer_is_content("assistant\n<think>\n\n</think>\n\n", &none));
        assert!(!ReasoningParser::Qwen3.answer_is_content("<think>old</think> user: hi assistant\n<think>\n", &none));
        assert!(!ReasoningParser::Qwen3.answer_is_content("assistant\n", &none));
    }

    #[test]
    fn streaming_at_every_cut_reads_what_the_whole_reads() {
        for text in ["<think>\nA, then B. 😀\n</think>\n\nB.", "no markers at all", "a</think>b</think>c", "<thi", "<think>"] {
            assert_streams_like_whole(ReasoningParser::Qwen3, text, false);
            assert_streams_like_whole(ReasoningParser::DeepseekR1, text, true);
        }
    }
}
