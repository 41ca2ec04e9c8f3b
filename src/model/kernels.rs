//! CPU kernels of our own (kernels/), called on libtorch tensors.

use std::ffi::{CStr, c_char, c_void};

use tch::{Kind, Tensor};

use super::quant::{GgmlType, QuantTensor};

unsafe extern "C" {
    // The `at::Tensor*` handles tch keeps behind its `Tensor`s.
    fn sluice_paged_decode_attention(
        out: *mut c_void,
        q: *const c_void,
        kc: *const c_void,
        vc: *const c_void,
        slots: *const c_void,
        lens: *const c_void,
        scale: f64,
        softcap: f64,
        allow_simd: i32,
    ) -> *const c_char;
    fn sluice_paged_prefill_attention(
        out: *mut c_void,
        q: *const c_void,
        kc: *const c_void,
        vc: *const c_void,
        slots: *const c_void,
        scale: f64,
        allow_simd: i32,
    ) -> *const c_char;
    fn sluice_rms_norm(out: *mut c_void, x: *const c_void, w: *const c_void, eps: f64, unit_offset: i32) -> *const c_char;
    fn sluice_rope_and_cache(
        q_out: *mut c_void,
        kc: *mut c_void,
        vc: *mut c_void,
        qkv: *const c_void,
        cos: *const c_void,
        sin: *const c_void,
        slots: *const c_void,
    ) -> *const c_char;
    #[allow(clippy::too_many_arguments)]
    fn sluice_quant_linear(
        out: *mut c_void,
        x: *const c_void,
        w: *const c_void,
        ty: i64,
        rows: i64,
        cols: i64,
        col0: i64,
        path: i32,
        isa: i32,
    ) -> *const c_char;
    fn sluice_quant_rows(out: *mut c_void, w: *const c_void, ty: i64, rows: i64, cols: i64, ids: *const c_void) -> *const c_char;
    fn sluice_quant_isa() -> i32;
    fn sluice_quant_auto_path(n: i64) -> i32;
}

/// Turns a kernel's error message into a panic naming the kernel.
fn check(kernel: &str, err: *const c_char) {
    if !err.is_null() {
        // SAFETY: a non-null result is a NUL-terminated message owned by the kernel's thread.
        let msg = unsafe { CStr::from_ptr(err) }.to_string_lossy();
        panic!("{kernel}: {msg}");
    }
}

/// transformers' LlamaRMSNorm of each row of `x: [n, dim]` with weight `w: [dim]` (both
/// contiguous, one dtype, on the CPU): float32 statistics, rounded to the dtype before and
/// after the weight. One pass instead of eight tensor operations. With `unit_offset`
/// (Gemma's RMSNorm) the weight is stored as w − 1 and `(1 + w)·x̂` is taken in float32
/// before the one rounding.
pub fn rms_norm(x: &Tensor, w: &Tensor, eps: f64, unit_offset: bool) -> Tensor {
    let mut out = x.empty_like();
    // SAFETY: live tensors for the whole call; the kernel validates shapes, dtypes and
    // contiguity before touching memory, and writes only into `out`.
    let err = unsafe {
        sluice_rms_norm(out.as_mut_ptr().cast(), x.as_ptr().cast(), w.as_ptr().cast(), eps, unit_offset as i32)
    };
    check("RMSNorm", err);
    out
}

/// Rotary embedding and cache write for the new tokens of a step: rotates the query and key
/// heads of `qkv: [n, (h + 2·kvh)·d]` with each token's `cos`/`sin: [n, rd]` rows (the first
/// `rd <= d` dimensions of each head turn, the rest are copied), returns the
/// rotated queries `[n, h, d]`, and writes the rotated keys and the values to each token's
/// `slots: i64 [n]` entry of `kc`/`vc: [slots, kvh, d]`. All contiguous, one dtype, on the
/// CPU; rounding as transformers' `apply_rotary_pos_emb`.
pub fn rope_and_cache(qkv: &Tensor, cos: &Tensor, sin: &Tensor, slots: &Tensor, kc: &mut Tensor, vc: &mut Tensor, h: i64) -> Tensor {
    let (n, d) = (qkv.size()[0], kc.size()[2]);
    let mut q = Tensor::empty([n, h, d], (qkv.kind(), qkv.device()));
    // SAFETY: live tensors for the whole call; the kernel validates shapes, dtypes,
    // contiguity and every slot before touching memory, and writes only into `q` and the
    // slots' rows of the caches.
    let err = unsafe {
        sluice_rope_and_cache(
            q.as_mut_ptr().cast(),
            kc.as_mut_ptr().cast(),
            vc.as_mut_ptr().cast(),
            qkv.as_ptr().cast(),
            cos.as_ptr().cast(),
            sin.as_ptr().cast(),
            slots.as_ptr().cast(),
        )
    };
    check("rotary embedding", err);
    q
}

/// Attention of one query token per sequence over its context, read in place from the
/// paged cache: `q: [b, h, d]`, `kc`/`vc: [slots, kvh, d]` (all contiguous, one dtype, on
/// the CPU), `slots: i64 [b, lmax]` the cache slot of each context position, `lens: i64
/// [b]` each context's length. Scores are `q·k · scale`, soft-capped to `softcap·tanh(s /
/// softcap)` when `softcap > 0`. Returns `[b, h, d]`. Panics on tensors that break these
/// rules (the kernel checks every shape and slot before reading).
pub fn paged_decode_attention(q: &Tensor, kc: &Tensor, vc: &Tensor, slots: &Tensor, lens: &Tensor, scale: f64, softcap: f64) -> Tensor {
    decode_attention_with(q, kc, vc, slots, lens, scale, softcap, Isa::Best)
}

/// Causal attention of a prompt chunk over its context, read in place from the paged cache
/// (flash attention's tiles and online softmax): `q: [n, h, d]` the chunk's queries,
/// `kc`/`vc: [slots, kvh, d]` (all contiguous, one dtype, on the CPU), `slots: i64 [ctx]`
/// the cache slot of each context position, the last `n` the chunk's own, so query `i` sees
/// the keys at positions `0..=ctx - n + i`. Scores are `q·k · scale`, in float32 to the end.
/// Returns `[n, h, d]`. Panics on tensors that break these rules (the kernel checks every
/// shape and slot before reading).
pub fn paged_prefill_attention(q: &Tensor, kc: &Tensor, vc: &Tensor, slots: &Tensor, scale: f64) -> Tensor {
    prefill_attention_with(q, kc, vc, slots, scale, Isa::Best)
}

fn prefill_attention_with(q: &Tensor, kc: &Tensor, vc: &Tensor, slots: &Tensor, scale: f64, isa: Isa) -> Tensor {
    let mut out = q.empty_like();
    // SAFETY: as for the decode kernel: live tensors, everything validated before any read,
    // and only `out` written.
    let err = unsafe {
        sluice_paged_prefill_attention(
            out.as_mut_ptr().cast(),
            q.as_ptr().cast(),
            kc.as_ptr().cast(),
            vc.as_ptr().cast(),
            slots.as_ptr().cast(),
            scale,
            matches!(isa, Isa::Best) as i32,
        )
    };
    check("paged prefill attention", err);
    out
}

/// How a quantized product is computed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QuantPath {
    /// By the number of rows and the CPU (`quant_auto_path`): int8 dot products for a few;
    /// for more the int8 tiles, or the float tiles on CPUs without AVX2, on those with
    /// AVX-512 BF16 past 16 rows (libtorch's bfloat16 products native there), and on those
    /// with AMX past 8.
    Auto,
    /// Activations quantized per 32 values to int8; int8 dot products with the blocks.
    Dots,
    /// Tiles of the weights dequantized to x's dtype, then libtorch's matrix product.
    Tiles,
    /// Activations quantized per 32 values to int8; 8 weight rows at a time unpacked across
    /// the vector lanes and multiplied against every activation row (AVX2; the portable int8
    /// dot products without it).
    Int8Tiles,
}

/// Which instruction set the int8 dot products may use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QuantIsa {
    /// The best the CPU has: AVX-512 VNNI, else AVX2, else portable loops.
    Best,
    /// At most AVX2.
    Avx2,
    /// The portable loops.
    Portable,
}

fn ggml_id(ty: GgmlType) -> i64 {
    match ty {
        GgmlType::F32 => 0,
        GgmlType::F16 => 1,
        GgmlType::Q4_0 => 2,
        GgmlType::Q4_1 => 3,
        GgmlType::Q5_0 => 6,
        GgmlType::Q5_1 => 7,
        GgmlType::Q8_0 => 8,
        GgmlType::Q4K => 12,
        GgmlType::Q6K => 14,
        GgmlType::BF16 => 30,
    }
}

/// `out[:, col0 .. col0 + w.rows) = x · Wᵀ` for `x: [n, w.cols]` and `out: [n, ≥ col0 +
/// w.rows]` (contiguous, one float dtype, on the CPU), read from W's blocks.
pub fn quant_linear_into(out: &mut Tensor, x: &Tensor, w: &QuantTensor, col0: usize, path: QuantPath, isa: QuantIsa) {
    let path = match path {
        QuantPath::Auto => 0,
        QuantPath::Dots => 1,
        QuantPath::Tiles => 2,
        QuantPath::Int8Tiles => 3,
    };
    let isa = match isa {
        QuantIsa::Best => 0,
        QuantIsa::Avx2 => 1,
        QuantIsa::Portable => 2,
    };
    // SAFETY: live tensors for the whole call; the kernel checks the weights' size against
    // their type and shape, and x's and out's shapes, dtypes and contiguity, before touching
    // memory, and writes only into out's columns col0 .. col0 + rows.
    let err = unsafe {
        sluice_quant_linear(
            out.as_mut_ptr().cast(),
            x.as_ptr().cast(),
            w.data.as_ptr().cast(),
            ggml_id(w.ty),
            w.rows as i64,
            w.cols as i64,
            col0 as i64,
            path,
            isa,
        )
    };
    check("quantized linear", err);
}

/// Rows `ids: i64 [n]` of a quantized matrix, dequantized to `kind`: `[n, w.cols]`.
pub fn quant_rows(w: &QuantTensor, ids: &Tensor, kind: Kind) -> Tensor {
    let ids = ids.to_kind(Kind::Int64).contiguous();
    let mut out = Tensor::empty([ids.size()[0], w.cols as i64], (kind, tch::Device::Cpu));
    // SAFETY: live tensors; the kernel checks every id against the row count and the
    // shapes before reading, and writes only into `out`.
    let err = unsafe {
        sluice_quant_rows(out.as_mut_ptr().cast(), w.data.as_ptr().cast(), ggml_id(w.ty), w.rows as i64, w.cols as i64, ids.as_ptr().cast())
    };
    check("quantized rows", err);
    out
}

/// The instruction set the int8 dot products use on this CPU.
pub fn quant_isa() -> &'static str {
    // SAFETY: no arguments; reads the CPU's features once.
    match unsafe { sluice_quant_isa() } {
        0 => "AVX-512 VNNI",
        1 => "AVX2",
        _ => "portable",
    }
}

/// The path `QuantPath::Auto` takes for a product of `rows` rows on this CPU.
pub fn quant_auto_path(rows: usize) -> QuantPath {
    // SAFETY: a plain number in and out; reads the CPU's features once.
    match unsafe { sluice_quant_auto_path(rows as i64) } {
        1 => QuantPath::Dots,
        3 => QuantPath::Int8Tiles,
        _ => QuantPath::Tiles,
    }
}

/// Which of the kernel's code paths may run.
#[derive(Clone, Copy, Debug)]
enum Isa {
    /// AVX2 where the CPU has it (float32 and bfloat16, head size a multiple of 8), else
    /// the portable loops.
    Best,
    /// The portable loops only.
    #[cfg_attr(not(test), allow(dead_code))]
    Portable,
}

#[allow(clippy::too_many_arguments)]
fn decode_attention_with(q: &Tensor, kc: &Tensor, vc: &Tensor, slots: &Tensor, lens: &Tensor, scale: f64, softcap: f64, isa: Isa) -> Tensor {
    let mut out = q.empty_like();
    // SAFETY: the handles are live tch tensors for the whole call; the kernel validates
    // shapes, dtypes, contiguity and every slot index before touching memory, and writes
    // only into `out`.
    let err = unsafe {
        sluice_paged_decode_attention(
            out.as_mut_ptr().cast(),
            q.as_ptr().cast(),
            kc.as_ptr().cast(),
            vc.as_ptr().cast(),
            slots.as_ptr().cast(),
            lens.as_ptr().cast(),
            scale,
            softcap,
            matches!(isa, Isa::Best) as i32,
        )
    };
    check("paged decode attention", err);
    out
}

#[cfg(test)]
mod tests {
    use tch::{Device, Kind, Tensor};

    use super::*;

    /// Attention computed the plain way: gather each context, score, softmax, weigh.
    fn reference(q: &Tensor, kc: &Tensor, vc: &Tensor, slots: &[Vec<i64>], scale: f64, softcap: f64) -> Tensor {
        let h = q.size()[1];
        let kvh = kc.size()[1];
        let rows: Vec<Tensor> = slots
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let idx = Tensor::from_slice(s);
                let k = kc.index_select(0, &idx).to_kind(Kind::Double).repeat_interleave_self_int(h / kvh, 1, None); // [l, h, d]
                let v = vc.index_select(0, &idx).to_kind(Kind::Double).repeat_interleave_self_int(h / kvh, 1, None);
                let qi = q.get(i as i64).to_kind(Kind::Double); // [h, d]
                let mut scores = qi.unsqueeze(1).matmul(&k.permute([1, 2, 0])).squeeze_dim(1) * scale; // [h, l]
                if softcap > 0.0 {
                    scores = (scores / softcap).tanh() * softcap;
                }
                scores.softmax(-1, Kind::Double).unsqueeze(1).matmul(&v.transpose(0, 1)).squeeze_dim(1) // [h, d]
            })
            .collect();
        Tensor::stack(&rows, 0)
    }

    #[allow(clippy::too_many_arguments)]
    fn case(kind: Kind, isa: Isa, h: i64, kvh: i64, d: i64, lens: &[usize], softcap: f64, tol: f64) {
        tch::manual_seed(7);
        let num_slots = 64 * 16;
        let kc = Tensor::randn([num_slots, kvh, d], (Kind::Float, Device::Cpu)).to_kind(kind);
        let vc = Tensor::randn([num_slots, kvh, d], (Kind::Float, Device::Cpu)).to_kind(kind);
        let b = lens.len() as i64;
        let q = (Tensor::randn([b, h, d], (Kind::Float, Device::Cpu)) * 0.5).to_kind(kind);
        let lmax = *lens.iter().max().unwrap();
        // Scattered slots, as a paged cache hands them out; padding past each length.
        let slots: Vec<Vec<i64>> = lens
            .iter()
            .enumerate()
            .map(|(i, &l)| (0..l as i64).map(|j| (j * 37 + i as i64 * 101 + 5) % num_slots).collect())
            .collect();
        let mut flat = vec![0i64; lens.len() * lmax];
        for (i, s) in slots.iter().enumerate() {
            flat[i * lmax..i * lmax + s.len()].copy_from_slice(s);
        }
        let table = Tensor::from_slice(&flat).view([b, lmax as i64]);
        let lens_t = Tensor::from_slice(&lens.iter().map(|&l| l as i64).collect::<Vec<_>>());
        let scale = 1.0 / (d as f64).sqrt();
        let got = decode_attention_with(&q, &kc, &vc, &table, &lens_t, scale, softcap, isa).to_kind(Kind::Double);
        let want = reference(&q, &kc, &vc, &slots, scale, softcap);
        let err = (got - want).abs().max().double_value(&[]);
        assert!(err <= tol, "{kind:?} {isa:?} h={h} kvh={kvh} d={d} lens={lens:?} cap={softcap}: max error {err} > {tol}");
    }

    #[test]
    fn matches_plain_attention_in_every_path_and_dtype() {
        // Groups of 3 query heads per KV head (SmolLM2), 1, 4, 2 and 8 (the AVX2 build takes
        // heads 3 at a time), head sizes of 8, 6 and 5 vectors of 8 (it takes 4, 2, then 1 at
        // a time) and one it does not take (36); contexts of 1 position to several chunks of
        // 64, with and without a remainder of 4 positions.
        let shapes: [(i64, i64, i64); 6] = [(9, 3, 64), (4, 4, 32), (8, 2, 48), (6, 3, 40), (16, 2, 64), (4, 2, 36)];
        let lens = [1usize, 7, 16, 17, 64, 65, 300];
        for isa in [Isa::Best, Isa::Portable] {
            for (h, kvh, d) in shapes {
                for cap in [0.0, 0.5] {
                    case(Kind::Float, isa, h, kvh, d, &lens, cap, 1e-6);
                    // bfloat16 rounds scores and probabilities as transformers' eager attention.
                    case(Kind::BFloat16, isa, h, kvh, d, &lens, cap, 1e-2);
                    case(Kind::Half, isa, h, kvh, d, &lens, cap, 2e-3);
                }
            }
        }
    }

    #[test]
    fn a_sequence_attends_alike_alone_and_in_a_batch() {
        // Bit for bit: the work is split by each sequence's own chunks, never across them.
        tch::manual_seed(11);
        let (h, kvh, d, num_slots) = (9i64, 3i64, 64i64, 1024i64);
        for isa in [Isa::Best, Isa::Portable] {
            let kc = Tensor::randn([num_slots, kvh, d], (Kind::Float, Device::Cpu)).to_kind(Kind::BFloat16);
            let vc = Tensor::randn([num_slots, kvh, d], (Kind::Float, Device::Cpu)).to_kind(Kind::BFloat16);
            let lens = [300i64, 5, 130];
            let lmax = 300;
            let q = Tensor::randn([3, h, d], (Kind::Float, Device::Cpu)).to_kind(Kind::BFloat16);
            let table: Vec<i64> = (0..3 * lmax).map(|i| (i * 7 + 3) % num_slots).collect();
            let table = Tensor::from_slice(&table).view([3, lmax]);
            let batch = decode_attention_with(&q, &kc, &vc, &table, &Tensor::from_slice(&lens), 0.125, 0.0, isa);
            for (i, &len) in lens.iter().enumerate() {
                let i = i as i64;
                let alone = decode_attention_with(
                    &q.narrow(0, i, 1).contiguous(),
                    &kc,
                    &vc,
                    &table.narrow(0, i, 1).contiguous(),
                    &Tensor::from_slice(&[len]),
                    0.125,
                    0.0,
                    isa,
                );
                assert!(alone.equal(&batch.narrow(0, i, 1)), "{isa:?}: sequence {i} differs alone");
            }
        }
    }

    /// Prompt attention computed the plain way, in float64: gather the context, score every
    /// query against the keys its position may see, softmax, weigh.
    fn prefill_reference(q: &Tensor, kc: &Tensor, vc: &Tensor, slots: &[i64], scale: f64) -> Tensor {
        let (n, h) = (q.size()[0], q.size()[1]);
        let ctx = slots.len() as i64;
        let group = h / kc.size()[1];
        let idx = Tensor::from_slice(slots);
        let k = kc.index_select(0, &idx).to_kind(Kind::Double).repeat_interleave_self_int(group, 1, None).transpose(0, 1); // [h, ctx, d]
        let v = vc.index_select(0, &idx).to_kind(Kind::Double).repeat_interleave_self_int(group, 1, None).transpose(0, 1);
        let scores = q.to_kind(Kind::Double).transpose(0, 1).matmul(&k.transpose(1, 2)) * scale; // [h, n, ctx]
        let qpos = Tensor::arange_start(ctx - n, ctx, (Kind::Int64, Device::Cpu)).unsqueeze(1);
        let hidden = Tensor::arange(ctx, (Kind::Int64, Device::Cpu)).unsqueeze(0).gt_tensor(&qpos);
        scores.masked_fill(&hidden, f64::NEG_INFINITY).softmax(-1, Kind::Double).matmul(&v).transpose(0, 1) // [n, h, d]
    }

    #[test]
    fn prefill_attention_matches_plain_attention_in_every_path_and_dtype() {
        // Groups of 3 (SmolLM2), 1, 4, 8 and 2 query heads per KV head; head sizes the AVX2
        // build takes 4, 2 and 1 vectors of 8 at a time, and one it does not take (36).
        // Chunks of 1 query to several tiles of 32 queries and 64 keys, whole prompts and
        // chunks after a cached prefix, with short last tiles.
        let shapes: [(i64, i64, i64); 6] = [(9, 3, 64), (4, 4, 32), (8, 2, 48), (8, 1, 40), (16, 2, 128), (4, 2, 36)];
        let chunks: [(i64, i64); 8] = [(1, 1), (5, 5), (33, 33), (64, 64), (130, 130), (1, 70), (40, 300), (97, 161)];
        tch::manual_seed(5);
        let num_slots = 512i64;
        for isa in [Isa::Best, Isa::Portable] {
            for (h, kvh, d) in shapes {
                for kind in [Kind::Float, Kind::BFloat16, Kind::Half] {
                    let kc = Tensor::randn([num_slots, kvh, d], (Kind::Float, Device::Cpu)).to_kind(kind);
                    let vc = Tensor::randn([num_slots, kvh, d], (Kind::Float, Device::Cpu)).to_kind(kind);
                    for (n, ctx) in chunks {
                        let q = Tensor::randn([n, h, d], (Kind::Float, Device::Cpu)).to_kind(kind);
                        // Scattered slots, as a paged cache hands them out.
                        let slots: Vec<i64> = (0..ctx).map(|j| (j * 37 + 11) % num_slots).collect();
                        let scale = 1.0 / (d as f64).sqrt();
                        let got = prefill_attention_with(&q, &kc, &vc, &Tensor::from_slice(&slots), scale, isa);
                        let want = prefill_reference(&q, &kc, &vc, &slots, scale);
                        let err = (got.to_kind(Kind::Double) - &want).abs().max().double_value(&[]);
                        // Float32 but for the probabilities and the output, each rounded to
                        // the dtype once: up to ~2⁻⁹ (bfloat16) or ~2⁻¹¹ (float16) of
                        // outputs of a few units, each way.
                        let tol = match kind {
                            Kind::BFloat16 => 3e-2,
                            Kind::Half => 5e-3,
                            _ => 1e-5,
                        };
                        assert!(err <= tol, "{kind:?} {isa:?} h={h} kvh={kvh} d={d} n={n} ctx={ctx}: max error {err} > {tol}");
                    }
                }
            }
        }
    }

    #[test]
    fn a_prompt_attends_alike_whole_and_in_chunks() {
        // A prompt prefilled in two chunks (the second over the first's cached keys) gets,
        // for its later queries, what the whole prompt gets: each query's softmax runs over
        // the same keys in the same tiles.
        tch::manual_seed(3);
        let (h, kvh, d, ctx) = (9i64, 3i64, 64i64, 300i64);
        let kc = Tensor::randn([ctx, kvh, d], (Kind::Float, Device::Cpu)).to_kind(Kind::BFloat16);
        let vc = Tensor::randn([ctx, kvh, d], (Kind::Float, Device::Cpu)).to_kind(Kind::BFloat16);
        let q = Tensor::randn([ctx, h, d], (Kind::Float, Device::Cpu)).to_kind(Kind::BFloat16);
        let slots = Tensor::arange(ctx, (Kind::Int64, Device::Cpu));
        for isa in [Isa::Best, Isa::Portable] {
            let whole = prefill_attention_with(&q, &kc, &vc, &slots, 0.125, isa);
            let tail = prefill_attention_with(&q.narrow(0, 128, ctx - 128).contiguous(), &kc, &vc, &slots, 0.125, isa);
            assert!(tail.equal(&whole.narrow(0, 128, ctx - 128)), "{isa:?}: the second chunk differs from the whole prompt");
        }
    }

    #[test]
    fn rms_norm_matches_the_tensor_operations() {
        tch::manual_seed(3);
        for kind in [Kind::Float, Kind::BFloat16, Kind::Half] {
            let x = (Tensor::randn([37, 576], (Kind::Float, Device::Cpu)) * 3.0).to_kind(kind);
            let w = (Tensor::randn([576], (Kind::Float, Device::Cpu)) * 0.2 + 1.0).to_kind(kind);
            // transformers' LlamaRMSNorm, operation by operation.
            let x32 = x.to_kind(Kind::Float);
            let var = x32.pow_tensor_scalar(2).mean_dim(-1, true, Kind::Float);
            let want = &w * (x32 * (var + 1e-5).rsqrt()).to_kind(kind);
            let got = rms_norm(&x, &w, 1e-5, false);
            // Rounded results may differ by one step of the dtype where the float32 sums
            // are added in another order; count those, and bound the float32 error.
            let diff = (got.to_kind(Kind::Double) - want.to_kind(Kind::Double)).abs();
            let rel = (&diff / want.to_kind(Kind::Double).abs().clamp_min(1e-3)).max().double_value(&[]);
            let off = diff.gt(0.0).sum(Kind::Int64).int64_value(&[]);
            if kind == Kind::Float {
                assert!(rel <= 1e-5, "float32 relative error {rel}");
            } else {
                assert!(off <= 37 * 576 / 100, "{kind:?}: {off} of {} values differ", 37 * 576);
                assert!(rel <= 1e-2, "{kind:?}: relative error {rel}");
            }
        }
    }

    #[test]
    fn rope_and_cache_match_the_tensor_operations() {
        tch::manual_seed(5);
        let (n, h, kvh, d) = (7i64, 9i64, 3i64, 64i64);
        for kind in [Kind::Float, Kind::BFloat16, Kind::Half] {
            let qkv = Tensor::randn([n, (h + 2 * kvh) * d], (Kind::Float, Device::Cpu)).to_kind(kind);
            let angles = Tensor::rand([n, d / 2], (Kind::Float, Device::Cpu)) * 50.0;
            let emb = Tensor::cat(&[&angles, &angles], -1);
            let (cos, sin) = (emb.cos().to_kind(kind), emb.sin().to_kind(kind));
            let slots = Tensor::from_slice(&[9i64, 3, 40, 41, 0, 17, 63]);
            let mut kc = Tensor::zeros([64, kvh, d], (kind, Device::Cpu));
            let mut vc = Tensor::zeros([64, kvh, d], (kind, Device::Cpu));
            let q = rope_and_cache(&qkv, &cos, &sin, &slots, &mut kc, &mut vc, h);
            // transformers' apply_rotary_pos_emb, operation by operation.
            let rope = |x: &Tensor| {
                let halves = x.chunk(2, -1);
                let rotated = Tensor::cat(&[&halves[1].neg(), &halves[0]], -1);
                x * cos.unsqueeze(1) + rotated * sin.unsqueeze(1)
            };
            let parts = qkv.split_with_sizes([h * d, kvh * d, kvh * d], -1);
            let same = |a: &Tensor, b: &Tensor, what: &str| {
                let err = (a.to_kind(Kind::Double) - b.to_kind(Kind::Double)).abs().max().double_value(&[]);
                assert!(err <= 1e-6, "{kind:?} {what}: max difference {err}");
            };
            same(&q, &rope(&parts[0].view([n, h, d])), "queries");
            same(&kc.index_select(0, &slots), &rope(&parts[1].view([n, kvh, d])), "cached keys");
            same(&vc.index_select(0, &slots), &parts[2].view([n, kvh, d]), "cached values");
            // Rows of other slots are untouched.
            assert_eq!(kc.index_select(0, &Tensor::from_slice(&[1i64, 2, 62])).abs().sum(Kind::Double).double_value(&[]), 0.0);
        }
    }

    #[test]
    fn gemma_rms_norm_matches_the_tensor_operations() {
        tch::manual_seed(4);
        for kind in [Kind::Float, Kind::BFloat16] {
            let x = (Tensor::randn([9, 256], (Kind::Float, Device::Cpu)) * 3.0).to_kind(kind);
            let w = (Tensor::randn([256], (Kind::Float, Device::Cpu)) * 0.2).to_kind(kind);
            // transformers' Gemma2RMSNorm: everything in float32, one rounding at the end.
            let x32 = x.to_kind(Kind::Float);
            let normed = &x32 * (x32.pow_tensor_scalar(2).mean_dim(-1, true, Kind::Float) + 1e-6).rsqrt();
            let want = (normed * (w.to_kind(Kind::Float) + 1.0)).to_kind(kind);
            let got = rms_norm(&x, &w, 1e-6, true);
            let diff = (got.to_kind(Kind::Double) - want.to_kind(Kind::Double)).abs();
            let rel = (&diff / want.to_kind(Kind::Double).abs().clamp_min(1e-3)).max().double_value(&[]);
            assert!(rel <= if kind == Kind::Float { 1e-5 } else { 1e-2 }, "{kind:?}: relative error {rel}");
        }
    }

    /// Partial rotary (Phi-4-mini's 0.75): the first `rd` dimensions of each head turn, the
    /// rest pass through.
    #[test]
    fn partial_rope_turns_only_the_leading_dimensions() {
        tch::manual_seed(6);
        let (n, h, kvh, d, rd) = (3i64, 4i64, 2i64, 16i64, 12i64);
        let qkv = Tensor::randn([n, (h + 2 * kvh) * d], (Kind::Float, Device::Cpu));
        let angles = Tensor::rand([n, rd / 2], (Kind::Float, Device::Cpu)) * 20.0;
        let emb = Tensor::cat(&[&angles, &angles], -1);
        let (cos, sin) = (emb.cos(), emb.sin());
        let slots = Tensor::from_slice(&[1i64, 2, 3]);
        let mut kc = Tensor::zeros([8, kvh, d], (Kind::Float, Device::Cpu));
        let mut vc = Tensor::zeros([8, kvh, d], (Kind::Float, Device::Cpu));
        let q = rope_and_cache(&qkv, &cos, &sin, &slots, &mut kc, &mut vc, h);
        let x = qkv.narrow(1, 0, h * d).view([n, h, d]);
        let (rot, pass) = (x.narrow(2, 0, rd), x.narrow(2, rd, d - rd));
        let halves = rot.chunk(2, -1);
        let rotated = Tensor::cat(&[&halves[1].neg(), &halves[0]], -1);
        let want = Tensor::cat(&[&rot * cos.unsqueeze(1) + rotated * sin.unsqueeze(1), pass], -1);
        let err = (q - want).abs().max().double_value(&[]);
        assert!(err <= 1e-6, "max difference {err}");
    }

    /// Random blocks of type `ty`: random integers, and scales (f16) of a size real
    /// models have, so that no value overflows.
    fn random_blocks(ty: GgmlType, rows: usize, cols: usize, seed: u64) -> QuantTensor {
        let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let (elems, bytes) = ty.block();
        let blocks = rows * cols / elems;
        let mut data: Vec<u8> = (0..blocks * bytes).map(|_| next() as u8).collect();
        let scale = |next: &mut dyn FnMut() -> u64, signed: bool| {
            let v = (next() % 1000) as f32 / 1000.0 * 0.02 + 0.001;
            let v = if signed && next() % 2 == 0 { -v } else { v };
            half::f16::from_f32(v).to_le_bytes()
        };
        for b in data.chunks_exact_mut(bytes) {
            match ty {
                GgmlType::Q4_0 | GgmlType::Q5_0 | GgmlType::Q8_0 => b[0..2].copy_from_slice(&scale(&mut next, false)),
                GgmlType::Q4_1 | GgmlType::Q5_1 | GgmlType::Q4K => {
                    b[0..2].copy_from_slice(&scale(&mut next, false));
                    b[2..4].copy_from_slice(&scale(&mut next, true));
                }
                GgmlType::Q6K => b[208..210].copy_from_slice(&scale(&mut next, false)),
                _ => unreachable!(),
            }
        }
        QuantTensor::new(ty, rows, cols, &data).unwrap()
    }

    const QUANT_TYPES: [GgmlType; 7] =
        [GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q5_0, GgmlType::Q5_1, GgmlType::Q8_0, GgmlType::Q4K, GgmlType::Q6K];

    /// Every type, path and instruction set against dequantize-then-matmul, in float64:
    /// the tiles within float rounding; the int8 dot products within what quantizing each
    /// activation group to int8 can move the result (half a step, max|x|/254, per value,
    /// times |w|) — and the instruction sets agree with each other.
    #[test]
    fn quantized_linear_matches_dequantize_then_matmul() {
        tch::manual_seed(11);
        for (k, ty) in QUANT_TYPES.into_iter().enumerate() {
            let (elems, _) = ty.block();
            // 261 rows: tiles of different lengths, and no multiple of the int8 path's
            // 4-row blocks; widths of 3 blocks (or 2 super-blocks).
            let (rows, cols) = (261usize, if elems == 32 { 96 } else { 512 });
            let w = random_blocks(ty, rows, cols, k as u64 + 1);
            let wf = w.dequantize().to_kind(Kind::Double);
            for n in [1i64, 3, 8, 13, 133] {
                let x32 = Tensor::randn([n, cols as i64], (Kind::Float, Device::Cpu));
                for kind in [Kind::Float, Kind::BFloat16, Kind::Half] {
                    let x = x32.to_kind(kind);
                    let xd = x.to_kind(Kind::Double);
                    let want = xd.matmul(&wf.tr());
                    // The most quantizing x can move each output: activations are quantized
                    // per 32 values, or per 256 against the K-quants' super-blocks.
                    let block = if elems == 32 { 32 } else { 256 };
                    let step = xd.view([n, -1, block]).abs().amax([-1], true) / 254.0;
                    let slack = step.expand([n, cols as i64 / block, block], false).reshape([n, cols as i64]).matmul(&wf.abs().tr());
                    // Σ|x||w|: what float rounding in the sums is relative to.
                    let mag = xd.abs().matmul(&wf.abs().tr());
                    // Float16's rounding is finer than bfloat16's: bfloat16's room holds it.
                    let bf16 = kind != Kind::Float;
                    let mut results = Vec::new();
                    let mut int8_tiles = Vec::new();
                    for (path, isa) in [
                        (QuantPath::Dots, QuantIsa::Best),
                        (QuantPath::Dots, QuantIsa::Avx2),
                        (QuantPath::Dots, QuantIsa::Portable),
                        (QuantPath::Tiles, QuantIsa::Best),
                        (QuantPath::Tiles, QuantIsa::Avx2),
                        (QuantPath::Tiles, QuantIsa::Portable),
                        (QuantPath::Int8Tiles, QuantIsa::Best),
                        (QuantPath::Int8Tiles, QuantIsa::Avx2),
                    ] {
                        // Two spare columns each side: only the layer's columns are written.
                        let mut out = Tensor::full([n, rows as i64 + 4], 7.0, (kind, Device::Cpu));
                        quant_linear_into(&mut out, &x, &w, 2, path, isa);
                        let spare = Tensor::cat(&[out.narrow(1, 0, 2), out.narrow(1, rows as i64 + 2, 2)], 1);
                        assert!(spare.eq(7.0).all().int64_value(&[]) == 1, "{ty:?} {path:?}: wrote outside its columns");
                        let got = out.narrow(1, 2, rows as i64).to_kind(Kind::Double);
                        // Float32 sums; in bfloat16 the result's rounding, and the tiles'
                        // weights rounded to bfloat16 (the int8 path reads them exactly).
                        let per_term = if bf16 && path == QuantPath::Tiles { 2.5e-3 } else { 1e-5 };
                        let mut room = &mag * per_term + want.abs() * if bf16 { 4e-3 } else { 0.0 };
                        if path == QuantPath::Dots || path == QuantPath::Int8Tiles {
                            room += &slack * 1.01;
                        }
                        let excess = ((&got - &want).abs() - room).max().double_value(&[]);
                        assert!(excess <= 0.0, "{ty:?} n={n} {kind:?} {path:?} {isa:?}: off by {excess} more than allowed");
                        if path == QuantPath::Int8Tiles {
                            int8_tiles.push(got.shallow_clone());
                        }
                        // The int8 tiles quantize per 32 values also against the
                        // K-quants: the same int8 sums as the dot products' elsewhere.
                        if path == QuantPath::Dots || (path == QuantPath::Int8Tiles && elems == 32) {
                            results.push(got);
                        }
                    }
                    // The int8 tiles take the same float steps in 256-bit (8 rows a panel) and
                    // 512-bit registers (16 rows, with AVX-512 VNNI): the same results.
                    assert_eq!(int8_tiles[0], int8_tiles[1], "{ty:?} n={n} {kind:?}: the int8 tiles' builds differ");
                    // The same int8 sums in every instruction set and on both int8 paths: only float
                    // rounding differs.
                    for r in &results[1..] {
                        let room = &mag * 1e-5 + results[0].abs() * if bf16 { 8e-3 } else { 0.0 };
                        let excess = ((r - &results[0]).abs() - room).max().double_value(&[]);
                        assert!(excess <= 0.0, "{ty:?} n={n} {kind:?}: instruction sets differ by {excess} more than rounding");
                    }
                }
            }
        }
    }

    /// The automatic choice is the path `quant_auto_path` names: int8 dot products up to 2
    /// rows and the int8 tiles past that with AVX2; up to 8 rows and the float tiles past
    /// that on CPUs with AVX-512 BF16 or without AVX2.
    #[test]
    fn quantized_linear_picks_a_path_by_rows() {
        let w = random_blocks(GgmlType::Q4_1, 40, 64, 3);
        let simd = quant_isa() != "portable";
        let bf16 = std::arch::is_x86_feature_detected!("avx512bf16");
        // CPUID leaf 7 exists on every CPU with AVX2 (checked before it is read).
        let amx = simd && (std::arch::x86_64::__cpuid_count(7, 0).edx >> 22) & 1 == 1;
        for n in [2i64, 3, 8, 9, 16, 17, 64] {
            let x = Tensor::randn([n, 64], (Kind::Float, Device::Cpu));
            let run = |path| {
                let mut out = Tensor::zeros([n, 40], (Kind::Float, Device::Cpu));
                quant_linear_into(&mut out, &x, &w, 0, path, QuantIsa::Best);
                out
            };
            let want = if !simd || (bf16 && amx) {
                if n <= 8 { QuantPath::Dots } else { QuantPath::Tiles }
            } else if n <= 2 {
                QuantPath::Dots
            } else if bf16 && n > 16 {
                QuantPath::Tiles
            } else {
                QuantPath::Int8Tiles
            };
            assert_eq!(quant_auto_path(n as usize), want, "n={n}");
            assert_eq!(run(QuantPath::Auto), run(want), "n={n}");
        }
    }

    #[test]
    fn quantized_rows_are_the_dequantized_rows() {
        for (k, ty) in QUANT_TYPES.into_iter().enumerate() {
            let cols = ty.block().0 * 2;
            let w = random_blocks(ty, 21, cols, 50 + k as u64);
            let ids = Tensor::from_slice(&[20i64, 0, 7, 7]);
            let got = quant_rows(&w, &ids, Kind::Float);
            let want = w.dequantize().index_select(0, &ids);
            assert_eq!(got, want, "{ty:?}");
            let bf = quant_rows(&w, &ids, Kind::BFloat16);
            assert_eq!(bf, want.to_kind(Kind::BFloat16), "{ty:?} in bfloat16");
        }
    }

    #[test]
    #[should_panic(expected = "row 21 is out of range")]
    fn quantized_rows_refuse_an_id_past_the_table() {
        let w = random_blocks(GgmlType::Q8_0, 21, 32, 1);
        let _ = quant_rows(&w, &Tensor::from_slice(&[3i64, 21]), Kind::Float);
    }

    #[test]
    #[should_panic(expected = "x must be [n, 64]")]
    fn quantized_linear_refuses_a_wrong_width() {
        let w = random_blocks(GgmlType::Q4_0, 8, 64, 1);
        let mut out = Tensor::zeros([1, 8], (Kind::Float, Device::Cpu));
        quant_linear_into(&mut out, &Tensor::zeros([1, 32], (Kind::Float, Device::Cpu)), &w, 0, QuantPath::Auto, QuantIsa::Best);
    }

    #[test]
    #[should_panic(expected = "a slot is out of range")]
    fn refuses_a_slot_outside_the_cache() {
        let kc = Tensor::zeros([16, 1, 16], (Kind::Float, Device::Cpu));
        let q = Tensor::zeros([1, 1, 16], (Kind::Float, Device::Cpu));
        let slots = Tensor::from_slice(&[3i64, 16]).view([1, 2]);
        let _ = paged_decode_attention(&q, &kc, &kc, &slots, &Tensor::from_slice(&[2i64]), 1.0, 0.0);
    }

    #[test]
    #[should_panic(expected = "a slot is out of range")]
    fn prefill_refuses_a_slot_outside_the_cache() {
        let kc = Tensor::zeros([16, 1, 16], (Kind::Float, Device::Cpu));
        let q = Tensor::zeros([1, 1, 16], (Kind::Float, Device::Cpu));
        let _ = paged_prefill_attention(&q, &kc, &kc, &Tensor::from_slice(&[3i64, 16]), 1.0);
    }
}
