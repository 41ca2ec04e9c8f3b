//! pool_stream: the encoder's outputs → the endpoint's JSON answer: embeddings
//! (normalized unless asked otherwise, cut to `dimensions`, floats or base64), pooling
//! outputs, class probabilities, pair scores, or ranked documents.

use std::time::Instant;

use crate::engine::latency::FinishedReason;
use crate::engine::stats::EngineStats;
use std::sync::Arc;

use crate::api::pooling::*;
use crate::api::request::{PoolJob, PoolShape};
use crate::stages::item::{Item, Payload, Reply, RequestCtx};
use crate::model::encoder::PoolingInfo;
use crate::model::pooling::{normalize, softmax};
use crate::pipeline::{Outlet, Stage};

pub struct PoolStream {
    pub model: Arc<PoolingInfo>,
    /// Where finished requests are counted (`vllm:request_success_total`, e2e latency).
    pub stats: Arc<EngineStats>,
}

impl Stage<Item> for PoolStream {
    fn process(&self, item: Item, _out: &Outlet<Item>) {
        let Payload::Pool(job) = item.payload else { unreachable!("pool_stream takes pooled jobs") };
        let latency = &self.stats.latency;
        if item.ctx.is_cancelled() {
            latency.on_finished(&item.ctx.timeline, FinishedReason::Abort, Instant::now());
            return;
        }
        let mut body = self.answer(&item.ctx, *job);
        if let Some(m) = item.ctx.metrics(Instant::now()) {
            m.append_to(&mut body);
        }
        // Counted before the reply, so that whoever got the answer sees it counted.
        latency.on_finished(&item.ctx.timeline, FinishedReason::Stop, Instant::now());
        item.ctx.reply(Reply::Body(body));
    }
}

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na = a.iter().map(|x| x * x).sum::<f32>().sqrt();
    let nb = b.iter().map(|x| x * x).sum::<f32>().sqrt();
    dot / (na * nb).max(1e-12)
}

fn vector(v: Vec<f32>, base64: bool) -> Vector {
    if base64 { Vector::Base64(base64_f32(&v)) } else { Vector::Float(v) }
}

impl PoolStream {
    /// A classifier's probabilities: softmax over the labels, or the sigmoid of a single
    /// logit (cross-encoders).
    fn probs(&self, logits: &[f32]) -> Vec<f32> {
        if logits.len() == 1 { vec![sigmoid(logits[0])] } else { softmax(logits) }
    }

    /// The pooler's output as `/pooling` and embeddings give it.
    fn pooled(&self, v: Vec<f32>, dimensions: Option<usize>, normalize_it: Option<bool>) -> Vec<f32> {
        if !self.model.embedding {
            return self.probs(&v);
        }
        let mut v = v;
        if let Some(d) = dimensions {
            v.truncate(d);
        }
        if normalize_it.unwrap_or(self.model.normalizes) {
            normalize(&mut v);
        }
        v
    }

    /// Score of each pair, in request order.
    fn scores(&self, outputs: &[Vec<f32>], pairs: &Option<Vec<(usize, usize)>>, activation: bool) -> Vec<f32> {
        match pairs {
            Some(pairs) => pairs.iter().map(|&(a, b)| cosine(&outputs[a], &outputs[b])).collect(),
            None if activation => outputs.iter().map(|l| sigmoid(l[0])).collect(),
            None => outputs.iter().map(|l| l[0]).collect(),
        }
    }

    fn answer(&self, ctx: &RequestCtx, job: PoolJob) -> String {
        let tokens: usize = job.encoded.iter().map(|e| e.ids.len()).sum();
        fn list<T>(ctx: &RequestCtx, model: &str, tokens: usize, data: Vec<T>) -> ListResponse<T> {
            ListResponse {
                id: ctx.id.clone(),
                object: "list",
                created: ctx.created,
                model: model.to_string(),
                data,
                usage: PoolingUsage::new(tokens),
            }
        }
        let json = match &job.shape {
            PoolShape::Embeddings { base64, dimensions, normalize } => {
                let data: Vec<EmbeddingData> = job
                    .outputs
                    .iter()
                    .enumerate()
                    .map(|(index, v)| EmbeddingData {
                        index,
                        object: "embedding",
                        embedding: vector(self.pooled(v.clone(), *dimensions, *normalize), *base64),
                    })
                    .collect();
                serde_json::to_string(&list(ctx, &job.model, tokens, data))
            }
            PoolShape::Pooling { base64, dimensions, normalize } => {
                let data: Vec<PoolingData> = job
                    .outputs
                    .iter()
                    .enumerate()
                    .map(|(index, v)| PoolingData {
                        index,
                        object: "pooling",
                        data: match (self.model.per_token, *base64) {
                            // Per-token rows as they are (vLLM's reward pooling: no activation).
                            (true, true) => Vector::Base64(base64_f32(v)),
                            (true, false) => {
                                Vector::Rows(v.chunks(self.model.width.max(1)).map(<[f32]>::to_vec).collect())
                            }
                            (false, _) => vector(self.pooled(v.clone(), *dimensions, *normalize), *base64),
                        },
                    })
                    .collect();
                serde_json::to_string(&list(ctx, &job.model, tokens, data))
            }
            PoolShape::Classify { activation } => {
                let data: Vec<ClassifyData> = job
                    .outputs
                    .iter()
                    .enumerate()
                    .map(|(index, logits)| {
                        let probs = if *activation { self.probs(logits) } else { logits.clone() };
                        let best = probs
                            .iter()
                            .enumerate()
                            .fold(0, |b, (i, p)| if *p > probs[b] { i } else { b });
                        ClassifyData {
                            index,
                            label: self.model.labels.get(best).cloned().unwrap_or_else(|| format!("LABEL_{best}")),
                            num_classes: probs.len(),
                            probs,
                        }
                    })
                    .collect();
                serde_json::to_string(&list(ctx, &job.model, tokens, data))
            }
            PoolShape::Score { pairs, activation } => {
                let data: Vec<ScoreData> = self
                    .scores(&job.outputs, pairs, *activation)
                    .into_iter()
                    .enumerate()
                    .map(|(index, score)| ScoreData { index, object: "score", score })
                    .collect();
                serde_json::to_string(&list(ctx, &job.model, tokens, data))
            }
            PoolShape::Rerank { pairs, documents, top_n, return_documents, activation } => {
                let mut results: Vec<RerankResult> = self
                    .scores(&job.outputs, pairs, *activation)
                    .into_iter()
                    .enumerate()
                    .map(|(index, relevance_score)| RerankResult {
                        index,
                        document: return_documents.then(|| RerankDocument { text: documents[index].clone() }),
                        relevance_score,
                    })
                    .collect();
                results.sort_by(|a, b| b.relevance_score.total_cmp(&a.relevance_score));
                if *top_n > 0 {
                    results.truncate(*top_n);
                }
                serde_json::to_string(&RerankResponse {
                    id: ctx.id.clone(),
                    model: job.model.clone(),
                    usage: RerankUsage { prompt_tokens: tokens, total_tokens: tokens },
                    results,
                })
            }
        };
        json.expect("pooling answers serialize")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn activations() {
        let p = softmax(&[1.0, 1.0]);
        assert_eq!(p, vec![0.5, 0.5]);
        assert!((sigmoid(0.0) - 0.5).abs() < 1e-7);
        assert!((cosine(&[1.0, 0.0], &[2.0, 0.0]) - 1.0).abs() < 1e-7);
        assert!(cosine(&[1.0, 0.0], &[0.0, 3.0]).abs() < 1e-7);
    }
}
