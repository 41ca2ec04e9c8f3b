//! What the engine reports about itself, for `/metrics`: written by the engine thread
//! after every step, read by anyone. Names follow vLLM's metrics, so that dashboards
//! made for vLLM work unchanged.

use std::sync::atomic::{AtomicU64, Ordering};

use super::latency::{RequestLatency, StepLatency};

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
    /// Request latencies (vLLM's histograms) and finished requests.
    pub latency: RequestLatency,
    /// The parts of engine steps.
    pub steps: StepLatency,
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
        let mut out = crate::pipeline::Exposition::default();
        self.write(&mut out, model);
        out.finish()
    }

    pub fn write(&self, out: &mut crate::pipeline::Exposition, model: &str) {
        let m = [("model_name", model)];
        let g = |v: &AtomicU64| Self::get(v) as f64;
        out.single("vllm:num_requests_running", "gauge", "Requests in the running batch.", &m, g(&self.requests_running));
        out.single("vllm:num_requests_waiting", "gauge", "Requests waiting to be scheduled.", &m, g(&self.requests_waiting));
        out.single("vllm:kv_cache_usage_perc", "gauge", "KV-cache usage; 1 means 100 percent.", &m, self.kv_usage());
        out.single("vllm:prompt_tokens_total", "counter", "Prompt tokens admitted.", &m, g(&self.prompt_tokens));
        out.single("vllm:generation_tokens_total", "counter", "Tokens generated.", &m, g(&self.generation_tokens));
        out.single("vllm:num_preemptions_total", "counter", "Sequences preempted (recomputed later).", &m, g(&self.preemptions));
        out.single("vllm:prefix_cache_queries_total", "counter", "Prompt tokens looked up in the prefix cache.", &m, g(&self.prefix_queries));
        out.single("vllm:prefix_cache_hits_total", "counter", "Prompt tokens found in the prefix cache.", &m, g(&self.prefix_hits));
        self.latency.write(out, model);
    }
}
