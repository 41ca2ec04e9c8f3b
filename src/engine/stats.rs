//! What the engine reports about itself, for `/metrics`: written by the engine thread
//! after every step, read by anyone. Names follow vLLM's metrics, so that dashboards
//! made for vLLM work unchanged.

use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug, Default)]
pub struct EngineStats {
    /// Requests with a sequence in the running batch.
    pub requests_running: AtomicU64,
    /// Requests with a sequence waiting (not yet admitted, or preempted).
    pub requests_waiting: AtomicU64,
    /// Fraction of KV blocks in use, as f64 bits.
    kv_usage_bits: AtomicU64,
    pub prompt_tokens: AtomicU64,
    pub generation_tokens: AtomicU64,
    pub preemptions: AtomicU64,
    /// Prompt tokens looked up in the prefix cache, and those found there.
    pub prefix_queries: AtomicU64,
    pub prefix_hits: AtomicU64,
}

impl EngineStats {
    pub fn set_kv_usage(&self, fraction: f64) {
        self.kv_usage_bits.store(fraction.to_bits(), Ordering::Relaxed);
    }

    pub fn kv_usage(&self) -> f64 {
        f64::from_bits(self.kv_usage_bits.load(Ordering::Relaxed))
    }

    pub fn get(v: &AtomicU64) -> u64 {
        v.load(Ordering::Relaxed)
    }

    /// The Prometheus text exposition of these figures, labelled with the model's name.
    pub fn prometheus(&self, model: &str) -> String {
        let label = format!("{{model_name=\"{}\"}}", model.replace('\\', "\\\\").replace('"', "\\\""));
        let mut out = String::new();
        let mut put = |name: &str, kind: &str, help: &str, value: String| {
            out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n{name}{label} {value}\n"));
        };
        let g = Self::get;
        put("vllm:num_requests_running", "gauge", "Requests in the running batch.", g(&self.requests_running).to_string());
        put("vllm:num_requests_waiting", "gauge", "Requests waiting to be scheduled.", g(&self.requests_waiting).to_string());
        put("vllm:kv_cache_usage_perc", "gauge", "KV-cache usage; 1 means 100 percent.", format!("{}", self.kv_usage()));
        put("vllm:prompt_tokens_total", "counter", "Prompt tokens admitted.", g(&self.prompt_tokens).to_string());
        put("vllm:generation_tokens_total", "counter", "Tokens generated.", g(&self.generation_tokens).to_string());
        put("vllm:num_preemptions_total", "counter", "Sequences preempted (recomputed later).", g(&self.preemptions).to_string());
        put("vllm:prefix_cache_queries_total", "counter", "Prompt tokens looked up in the prefix cache.", g(&self.prefix_queries).to_string());
        put("vllm:prefix_cache_hits_total", "counter", "Prompt tokens found in the prefix cache.", g(&self.prefix_hits).to_string());
        out
    }
}
