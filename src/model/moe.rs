//! The MLP of a decoder layer, dense or as a sparse mixture of experts.
//!
//! A sparse block routes each token to its `top_k` experts (softmax over the router's
//! logits in float32, the top k, renormalised where the model says so) and runs each expert
//! only on the tokens routed to it: the rows are gathered per expert, pushed through its
//! MLP, weighed, and added back into their places. A step's cost grows with the experts its
//! tokens activate, not with the number of experts. Experts are visited in ascending order,
//! so each token's sum is formed in transformers' order.

use tch::{Device, Kind, Tensor};

use super::config::{Activation, MoeConfig};
use super::linear::Linear;

/// A gated MLP: `down(act(gate(x)) · up(x))`, gate and up in one product.
pub struct Mlp {
    /// Gate and up projections stacked: `[2·I, hidden]`.
    pub gate_up: Linear,
    pub down: Linear,
    pub act: Activation,
}

impl Mlp {
    pub fn activate(&self, gate_up: &Tensor) -> Tensor {
        let gu = gate_up.chunk(2, -1);
        let gate = match self.act {
            Activation::Silu => gu[0].silu(),
            Activation::GeluTanh => gu[0].gelu("tanh"),
        };
        gate * &gu[1]
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        self.down.forward(&self.activate(&self.gate_up.forward(x)))
    }
}

pub struct SparseMoe {
    /// `[experts, hidden]`.
    pub router: Linear,
    pub experts: Vec<Mlp>,
    pub top_k: usize,
    pub norm_topk_prob: bool,
    pub weights_in_dtype: bool,
}

impl SparseMoe {
    pub fn new(router: Linear, experts: Vec<Mlp>, cfg: &MoeConfig) -> Self {
        SparseMoe { router, experts, top_k: cfg.top_k, norm_topk_prob: cfg.norm_topk_prob, weights_in_dtype: cfg.weights_in_dtype }
    }

    /// `x: [n, hidden]` → `[n, hidden]`.
    pub fn forward(&self, x: &Tensor) -> Tensor {
        let k = self.top_k as i64;
        let probs = self.router.forward(x).softmax(-1, Kind::Float);
        let (mut weights, chosen) = probs.topk(k, -1, true, true); // [n, k]
        if self.norm_topk_prob {
            weights = &weights / weights.sum_dim_intlist(-1, true, Kind::Float);
        }
        if self.weights_in_dtype {
            weights = weights.to_kind(x.kind());
        }
        let weights = weights.reshape([-1]);
        let chosen: Vec<i64> = Vec::try_from(chosen.reshape([-1]).to_device(Device::Cpu)).expect("expert ids");
        // Per expert: the tokens routed to it and where their weights are.
        let mut routed: Vec<(Vec<i64>, Vec<i64>)> = vec![(Vec::new(), Vec::new()); self.experts.len()];
        for (flat, &e) in chosen.iter().enumerate() {
            let (tokens, at) = &mut routed[e as usize];
            tokens.push(flat as i64 / k);
            at.push(flat as i64);
        }
        let mut out = x.zeros_like();
        let dev = x.device();
        for (expert, (tokens, at)) in self.experts.iter().zip(&routed) {
            if tokens.is_empty() {
                continue;
            }
            let tokens = Tensor::from_slice(tokens).to_device(dev);
            let w = weights.index_select(0, &Tensor::from_slice(at).to_device(dev)).unsqueeze(1);
            let y = expert.forward(&x.index_select(0, &tokens)) * w;
            let _ = out.index_add_(0, &tokens, &y.to_kind(x.kind()));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mlp(seed: i64, hidden: i64, width: i64) -> Mlp {
        tch::manual_seed(seed);
        let opts = (Kind::Float, Device::Cpu);
        let w = |r: i64, c: i64| Tensor::randn([r, c], opts) / (c as f64).sqrt();
        Mlp {
            gate_up: Linear::new(w(2 * width, hidden), None, Device::Cpu, Kind::Float),
            down: Linear::new(w(hidden, width), None, Device::Cpu, Kind::Float),
            act: Activation::Silu,
        }
    }

    /// Routed computation equals every expert on every token, weighed by the dense top-k
    /// routing matrix (zeros for experts a token was not sent to).
    #[test]
    fn routed_experts_equal_the_dense_mixture() {
        let _guard = tch::no_grad_guard();
        let (hidden, width, n_exp) = (8i64, 6i64, 5usize);
        for (k, norm) in [(2usize, true), (2, false), (1, false), (5, true)] {
            let experts: Vec<Mlp> = (0..n_exp).map(|e| mlp(e as i64, hidden, width)).collect();
            tch::manual_seed(99);
            let router = Linear::new(Tensor::randn([n_exp as i64, hidden], (Kind::Float, Device::Cpu)), None, Device::Cpu, Kind::Float);
            let x = Tensor::randn([7, hidden], (Kind::Float, Device::Cpu));
            let probs = router.forward(&x).softmax(-1, Kind::Float);
            let moe = SparseMoe { router, experts, top_k: k, norm_topk_prob: norm, weights_in_dtype: true };
            let got = moe.forward(&x);
            let (top, idx) = probs.topk(k as i64, -1, true, true);
            let top = if norm { &top / top.sum_dim_intlist(-1, true, Kind::Float) } else { top };
            let dense = Tensor::zeros([7, n_exp as i64], (Kind::Float, Device::Cpu)).scatter(1, &idx, &top);
            let all = Tensor::stack(&moe.experts.iter().map(|e| e.forward(&x)).collect::<Vec<_>>(), 1); // [n, E, H]
            let want = (all * dense.unsqueeze(2)).sum_dim_intlist(1, false, Kind::Float);
            let diff = (got - want).abs().max().double_value(&[]);
            assert!(diff < 1e-5, "top-{k} norm {norm}: {diff}");
        }
    }
}
