//! Every architecture sluice serves, under the name config.json's `architectures` gives it.
//!
//! One list: the loaders pick the family from it, task resolution reads each entry's role,
//! and an architecture missing from it stops start-up with a message listing the entries.

/// The network families: one forward pass each (decoders share the decoder skeleton).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    Llama,
    Mistral,
    Qwen2,
    Qwen3,
    Qwen3Moe,
    Mixtral,
    Gemma2,
    Gemma3,
    Phi3,
    /// Qwen2 with M-RoPE and a vision tower (images in the prompt).
    Qwen2Vl,
    Bert,
}

/// What a checkpoint of an architecture holds on top of its trunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// A causal LM: generates, and may be pooled (`--task embed`, `reward`, or a classifier
    /// converted from its LM head).
    CausalLm,
    /// A decoder trunk with a classification head (`score`) on its last token.
    DecoderClassifier,
    /// A decoder trunk with a per-token reward head.
    DecoderReward,
    /// An encoder whose pooled states are embeddings.
    EncoderEmbedding,
    /// An encoder with a classification head.
    EncoderClassifier,
}

#[derive(Debug)]
pub struct Architecture {
    pub name: &'static str,
    pub arch: Arch,
    pub role: Role,
}

const fn entry(name: &'static str, arch: Arch, role: Role) -> Architecture {
    Architecture { name, arch, role }
}

use Arch::*;
use Role::*;

pub const ARCHITECTURES: &[Architecture] = &[
    entry("LlamaForCausalLM", Llama, CausalLm),
    entry("LlamaForSequenceClassification", Llama, DecoderClassifier),
    entry("MistralForCausalLM", Mistral, CausalLm),
    entry("MistralForSequenceClassification", Mistral, DecoderClassifier),
    entry("MixtralForCausalLM", Mixtral, CausalLm),
    entry("MixtralForSequenceClassification", Mixtral, DecoderClassifier),
    entry("Qwen2ForCausalLM", Qwen2, CausalLm),
    entry("Qwen2ForSequenceClassification", Qwen2, DecoderClassifier),
    entry("Qwen2ForRewardModel", Qwen2, DecoderReward),
    entry("Qwen2ForProcessRewardModel", Qwen2, DecoderReward),
    entry("Qwen3ForCausalLM", Qwen3, CausalLm),
    entry("Qwen3ForSequenceClassification", Qwen3, DecoderClassifier),
    entry("Qwen3MoeForCausalLM", Qwen3Moe, CausalLm),
    entry("Qwen3MoeForSequenceClassification", Qwen3Moe, DecoderClassifier),
    entry("Gemma2ForCausalLM", Gemma2, CausalLm),
    entry("Gemma2ForSequenceClassification", Gemma2, DecoderClassifier),
    entry("Gemma3ForCausalLM", Gemma3, CausalLm),
    // The text part of a Gemma 3 image-text checkpoint (its vision tower is not loaded).
    entry("Gemma3ForConditionalGeneration", Gemma3, CausalLm),
    entry("Gemma3TextForSequenceClassification", Gemma3, DecoderClassifier),
    entry("Phi3ForCausalLM", Phi3, CausalLm),
    entry("Qwen2VLForConditionalGeneration", Qwen2Vl, CausalLm),
    entry("Phi3ForSequenceClassification", Phi3, DecoderClassifier),
    entry("BertModel", Bert, EncoderEmbedding),
    entry("BertForSequenceClassification", Bert, EncoderClassifier),
    // RoBERTa's position offset and head on the BERT skeleton.
    entry("XLMRobertaModel", Bert, EncoderEmbedding),
    entry("XLMRobertaForSequenceClassification", Bert, EncoderClassifier),
    entry("RobertaModel", Bert, EncoderEmbedding),
    entry("RobertaForSequenceClassification", Bert, EncoderClassifier),
];

/// config.json's `model_type`, for configs that name no architecture.
const MODEL_TYPES: &[(&str, &str)] = &[
    ("llama", "LlamaForCausalLM"),
    ("mistral", "MistralForCausalLM"),
    ("mixtral", "MixtralForCausalLM"),
    ("qwen2", "Qwen2ForCausalLM"),
    ("qwen3", "Qwen3ForCausalLM"),
    ("qwen3_moe", "Qwen3MoeForCausalLM"),
    ("gemma2", "Gemma2ForCausalLM"),
    ("gemma3_text", "Gemma3ForCausalLM"),
    ("gemma3", "Gemma3ForConditionalGeneration"),
    ("phi3", "Phi3ForCausalLM"),
    ("qwen2_vl", "Qwen2VLForConditionalGeneration"),
    ("bert", "BertModel"),
    ("xlm-roberta", "XLMRobertaModel"),
    ("roberta", "RobertaModel"),
];

pub fn lookup(name: &str) -> Option<&'static Architecture> {
    ARCHITECTURES.iter().find(|a| a.name == name)
}

/// The architecture a config without `architectures` stands for.
pub fn by_model_type(model_type: &str) -> Option<&'static Architecture> {
    MODEL_TYPES.iter().find(|(t, _)| *t == model_type).and_then(|(_, name)| lookup(name))
}

pub fn has_role(name: &str, role: Role) -> bool {
    lookup(name).is_some_and(|a| a.role == role)
}

/// "architecture X is not supported (A, B, … are)": the one message for any loader.
pub fn unsupported(name: &str) -> String {
    let names: Vec<&str> = ARCHITECTURES.iter().map(|a| a.name).collect();
    format!("architecture {name} is not supported ({} are)", names.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_model_types_resolve() {
        for (i, a) in ARCHITECTURES.iter().enumerate() {
            assert!(ARCHITECTURES[..i].iter().all(|b| b.name != a.name), "{} twice", a.name);
        }
        for (t, _) in MODEL_TYPES {
            assert!(by_model_type(t).is_some(), "{t}");
        }
        let msg = unsupported("FooForCausalLM");
        assert!(msg.starts_with("architecture FooForCausalLM is not supported (LlamaForCausalLM, "));
        assert!(msg.contains("Qwen3MoeForCausalLM") && msg.contains("Gemma2ForCausalLM") && msg.contains("BertModel"));
    }
}
