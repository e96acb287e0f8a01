//! The kernels as a Burn backend extension: implemented on `Flex` with [`crate::cpu`], and on
//! `Autodiff<Flex>` with hand-written backward passes. The public functions of the crate call
//! them only for tensors on a flex device ([`runs_on`]), the one backend listed here.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind, binary, unary};
use burn::backend::ops::FloatTensorOps;
use burn::backend::tensor::{FloatTensor, IntTensor};
use burn::backend::{
    Autodiff, AutodiffBackend, Backend, Dispatch, Flex, TensorMetadata, backend_extension,
};
use burn::prelude::*;
use burn::tensor::{Bytes, DType, FloatDType, bf16};
use burn_flex::{FlexTensor, Layout};

use crate::AdamWStep;
use crate::attention::{self, AttentionShape};
use crate::cpu;

/// Whether a tensor of `dtype` on `device` takes the fused kernels: `f32` on the flex device,
/// with or without autodiff.
pub(crate) fn runs_on(dtype: DType, device: &Device) -> bool {
    dtype == DType::F32 && device.clone().inner() == Device::flex()
}

/// Whether [`FusedOps::matmul_2d`] takes a weight of `weight` dtype times `x`-dtype rows on
/// `device`: both `f32` as [`runs_on`], or a bf16 weight (read as stored by the few-rows
/// kernels, widened once for larger products) outside autodiff, whose tracked product and
/// backward pass are `f32`-only.
pub(crate) fn reads_weight(x: DType, weight: DType, device: &Device) -> bool {
    runs_on(x, device) && (weight == DType::F32 || weight == DType::BF16 && !device.is_autodiff())
}

#[backend_extension(Flex, Autodiff)]
pub trait FusedOps: Backend {
    fn gelu_tanh(x: FloatTensor<Self>) -> FloatTensor<Self>;
    fn gelu_tanh_backward(x: FloatTensor<Self>, grad: FloatTensor<Self>) -> FloatTensor<Self>;
    /// `[m, k] · [k, n]` for 2-D tensors, strided operands read in place.
    fn matmul_2d(lhs: FloatTensor<Self>, rhs: FloatTensor<Self>) -> FloatTensor<Self>;
    /// `lhs · rhsᵀ` for `lhs: [m, k]`, `rhs: [n, k]`; under autodiff the gradient of `rhs` comes
    /// out in `rhs`'s own `[n, k]` layout.
    fn matmul_2d_nt(lhs: FloatTensor<Self>, rhs: FloatTensor<Self>) -> FloatTensor<Self> {
        Self::matmul_2d(lhs, Self::float_transpose(rhs))
    }
    /// `lhs: [.., m, k] · rhs: [.., k, n]` with the same batch dimensions, for attention. On
    /// the CPU backend a product of few rows per batch element runs the batch elements side by
    /// side; under autodiff it is the backend's own (tracked) product.
    fn matmul_batched(lhs: FloatTensor<Self>, rhs: FloatTensor<Self>) -> FloatTensor<Self> {
        Self::float_matmul(lhs, rhs)
    }
    /// Softmax over the last dimension.
    fn softmax_last(x: FloatTensor<Self>) -> FloatTensor<Self>;
    /// The gradient of [`softmax_last`](FusedOps::softmax_last) from its output.
    fn softmax_last_backward(y: FloatTensor<Self>, grad: FloatTensor<Self>) -> FloatTensor<Self>;
    /// Causal self-attention of `qkv: [batch, seq, 3·heads·head_dim]` ([`crate::attention`]):
    /// `[batch, seq, heads·head_dim]`, and the weights `[batch, heads, seq, seq]` before
    /// dropout when `keep_weights` (the backward pass's state). Dropout of probability `prob`
    /// on the weights with the mask of `seed` ([`cpu::DropoutMask`]), none at 0.
    fn causal_attention(
        qkv: FloatTensor<Self>,
        heads: usize,
        seed: u64,
        prob: f64,
        keep_weights: bool,
    ) -> (FloatTensor<Self>, Option<FloatTensor<Self>>);
    /// The gradient of [`causal_attention`](FusedOps::causal_attention)'s `qkv` from its
    /// output's, with the weights it kept.
    fn causal_attention_backward(
        qkv: FloatTensor<Self>,
        weights: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        heads: usize,
        seed: u64,
        prob: f64,
    ) -> FloatTensor<Self>;
    /// `(nll [n], logsumexp [n])` of `logits: [n, classes]`.
    fn nll_rows(
        logits: FloatTensor<Self>,
        targets: IntTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>);
    /// `[n, classes]` gradient of the logits from the gradient `[n]` of the nll.
    fn nll_rows_backward(
        logits: FloatTensor<Self>,
        targets: IntTensor<Self>,
        lse: FloatTensor<Self>,
        grad: FloatTensor<Self>,
    ) -> FloatTensor<Self>;
    /// Inverted dropout of drop probability `prob` whose mask is a function of `seed` and the
    /// element index ([`cpu::DropoutMask`]); its backward pass is the same op on the gradient.
    fn dropout(x: FloatTensor<Self>, seed: u64, prob: f64) -> FloatTensor<Self>;
    /// LayerNorm over the last dimension of `x` with scale `gamma` and shift `beta`
    /// (`[width]`): the output and `[rows, 2]` per-row statistics (mean, 1/std) for the
    /// backward pass.
    fn layer_norm(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        epsilon: f64,
    ) -> (FloatTensor<Self>, FloatTensor<Self>);
    /// `(dx, dγ, dβ)` of [`layer_norm`](FusedOps::layer_norm) from the output's gradient.
    fn layer_norm_backward(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        stats: FloatTensor<Self>,
        grad: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>);
    /// Rows `ids` (any shape) of `table: [vocab, emb]` → `[ids.., emb]`.
    fn lookup_rows(table: FloatTensor<Self>, ids: IntTensor<Self>) -> FloatTensor<Self>;
    /// `[vocab, emb]` gradient of the table from the gradient `[ids.., emb]` of
    /// [`lookup_rows`](FusedOps::lookup_rows)'s output.
    fn lookup_rows_backward(
        grad: FloatTensor<Self>,
        ids: IntTensor<Self>,
        vocab: usize,
    ) -> FloatTensor<Self>;
    /// `[1]`: the sum of the squares of all elements (not differentiable).
    fn squared_sum(x: FloatTensor<Self>) -> FloatTensor<Self>;
    /// `x · factor`, in place where `x`'s storage is its own (not differentiable).
    fn scale(x: FloatTensor<Self>, factor: f32) -> FloatTensor<Self>;
    /// `(param, moment_1, moment_2)` after one step; settings as in [`AdamWStep`].
    #[allow(clippy::too_many_arguments)]
    fn adamw_update(
        param: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        moment_1: FloatTensor<Self>,
        moment_2: FloatTensor<Self>,
        lr: f64,
        betas: (f32, f32),
        epsilon: f32,
        weight_decay: f32,
        time: usize,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>);
}

pub(crate) fn gelu_tanh<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    Tensor::from_dispatch(<Dispatch as FusedOps>::gelu_tanh(x.into_dispatch()))
}

pub(crate) fn matmul_2d(lhs: Tensor<2>, rhs: Tensor<2>) -> Tensor<2> {
    Tensor::from_dispatch(<Dispatch as FusedOps>::matmul_2d(
        lhs.into_dispatch(),
        rhs.into_dispatch(),
    ))
}

pub(crate) fn matmul_2d_nt(lhs: Tensor<2>, rhs: Tensor<2>) -> Tensor<2> {
    Tensor::from_dispatch(<Dispatch as FusedOps>::matmul_2d_nt(
        lhs.into_dispatch(),
        rhs.into_dispatch(),
    ))
}

pub(crate) fn matmul_batched<const D: usize>(lhs: Tensor<D>, rhs: Tensor<D>) -> Tensor<D> {
    Tensor::from_dispatch(<Dispatch as FusedOps>::matmul_batched(
        lhs.into_dispatch(),
        rhs.into_dispatch(),
    ))
}

pub(crate) fn softmax_last<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    Tensor::from_dispatch(<Dispatch as FusedOps>::softmax_last(x.into_dispatch()))
}

pub(crate) fn causal_attention(qkv: Tensor<3>, heads: usize, seed: u64, prob: f64) -> Tensor<3> {
    let (out, _) =
        <Dispatch as FusedOps>::causal_attention(qkv.into_dispatch(), heads, seed, prob, false);
    Tensor::from_dispatch(out)
}

pub(crate) fn dropout<const D: usize>(x: Tensor<D>, seed: u64, prob: f64) -> Tensor<D> {
    Tensor::from_dispatch(<Dispatch as FusedOps>::dropout(
        x.into_dispatch(),
        seed,
        prob,
    ))
}

pub(crate) fn squared_sum<const D: usize>(x: Tensor<D>) -> Tensor<1> {
    Tensor::from_dispatch(<Dispatch as FusedOps>::squared_sum(x.into_dispatch()))
}

pub(crate) fn scale<const D: usize>(x: Tensor<D>, factor: f32) -> Tensor<D> {
    Tensor::from_dispatch(<Dispatch as FusedOps>::scale(x.into_dispatch(), factor))
}

pub(crate) fn embedding(table: Tensor<2>, ids: Tensor<2, Int>) -> Tensor<3> {
    Tensor::from_dispatch(<Dispatch as FusedOps>::lookup_rows(
        table.into_dispatch(),
        ids.into_dispatch(),
    ))
}

pub(crate) fn layer_norm<const D: usize>(
    x: Tensor<D>,
    gamma: Tensor<1>,
    beta: Tensor<1>,
    epsilon: f64,
) -> Tensor<D> {
    let (y, _stats) = <Dispatch as FusedOps>::layer_norm(
        x.into_dispatch(),
        gamma.into_dispatch(),
        beta.into_dispatch(),
        epsilon,
    );
    Tensor::from_dispatch(y)
}

pub(crate) fn nll_rows(logits: Tensor<2>, targets: Tensor<1, Int>) -> Tensor<1> {
    let (nll, _lse) =
        <Dispatch as FusedOps>::nll_rows(logits.into_dispatch(), targets.into_dispatch());
    Tensor::from_dispatch(nll)
}

pub(crate) fn adamw_update<const D: usize>(
    param: Tensor<D>,
    grad: Tensor<D>,
    moment_1: Tensor<D>,
    moment_2: Tensor<D>,
    step: AdamWStep,
) -> (Tensor<D>, Tensor<D>, Tensor<D>) {
    let (param, moment_1, moment_2) = <Dispatch as FusedOps>::adamw_update(
        param.into_dispatch(),
        grad.into_dispatch(),
        moment_1.into_dispatch(),
        moment_2.into_dispatch(),
        step.lr,
        (step.beta_1, step.beta_2),
        step.epsilon,
        step.weight_decay,
        step.time,
    );
    (
        Tensor::from_dispatch(param),
        Tensor::from_dispatch(moment_1),
        Tensor::from_dispatch(moment_2),
    )
}

/// The elements of a float tensor in row-major order, borrowed when it is contiguous.
fn values(tensor: &FlexTensor) -> std::borrow::Cow<'_, [f32]> {
    match tensor.as_slice::<f32>() {
        Some(slice) => std::borrow::Cow::Borrowed(slice),
        None => std::borrow::Cow::Owned(
            tensor
                .to_contiguous()
                .as_slice::<f32>()
                .expect("contiguous")
                .to_vec(),
        ),
    }
}

/// Integer targets as `i64`, whatever the int dtype.
fn int_values(targets: &FlexTensor) -> Vec<i64> {
    let targets = targets.to_contiguous();
    match targets.dtype() {
        DType::I64 => targets.as_slice::<i64>().expect("contiguous").to_vec(),
        DType::I32 => targets
            .as_slice::<i32>()
            .expect("contiguous")
            .iter()
            .map(|&t| t as i64)
            .collect(),
        dtype => panic!("integer tensors (targets, token ids) must be i64 or i32, got {dtype:?}"),
    }
}

fn dims_2d(tensor: &FlexTensor) -> [usize; 2] {
    let shape = tensor.layout().shape();
    assert_eq!(shape.num_dims(), 2, "expected a 2-D tensor, got {shape:?}");
    [shape[0], shape[1]]
}

/// First element and (row, column) strides of a 2-D `f32` tensor.
fn strided_2d(tensor: &FlexTensor) -> (*const f32, isize, isize) {
    let layout = tensor.layout();
    let strides = layout.strides();
    let storage = tensor.storage::<f32>();
    // SAFETY: the layout's start offset lies inside the storage.
    let first = unsafe { storage.as_ptr().add(layout.start_offset()) };
    (first, strides[0], strides[1])
}

fn tensor_from(values: Vec<f32>, shape: Shape) -> FlexTensor {
    FlexTensor::new(
        Bytes::from_elems(values),
        Layout::contiguous(shape),
        DType::F32,
    )
}

/// Whether `tensor` alone holds its storage, contiguous and exactly its elements: then it can
/// be updated in place.
fn is_exclusive(tensor: &FlexTensor) -> bool {
    let n = tensor.layout().num_elements();
    tensor.is_unique()
        && tensor.layout().contiguous_offsets() == Some((0, n))
        && tensor.bytes().len() == n * 4
}

/// `tensor` with storage of its own, contiguous and exactly its elements, so it can be updated
/// in place: itself when it already is, else a copy.
fn owned_contiguous(tensor: FlexTensor) -> FlexTensor {
    if is_exclusive(&tensor) {
        tensor
    } else {
        tensor_from(
            values(&tensor).into_owned(),
            tensor.layout().shape().clone(),
        )
    }
}

/// How the few-rows kernels read a right operand `[k, n]` with these (row, column) strides:
/// `(false, stride)` when its rows of `n` are contiguous, `stride` apart; `(true, stride)` when
/// its columns of `k` are (the transposed view of a `[n, k]` table); `None` for other layouts.
fn contiguous_lines(
    row_stride: isize,
    column_stride: isize,
    [k, n]: [usize; 2],
) -> Option<(bool, usize)> {
    match (row_stride, column_stride) {
        (rs, 1) if rs >= n as isize => Some((false, rs as usize)),
        (1, cs) if cs >= k as isize => Some((true, cs as usize)),
        _ => None,
    }
}

/// `lhs · rhs` by [`cpu::matmul_few_rows`] or [`cpu::matmul_nt_few_rows`] when `lhs` has at
/// most [`crate::SPLIT_MAX_ROWS`] rows and `rhs` is stored densely row by row (`[k, n]`) or
/// column by column (the transposed view of a `[n, k]` table); `None` otherwise (gemm's case).
fn few_rows_product(lhs: &FlexTensor, rhs: &FlexTensor, [m, k, n]: [usize; 3]) -> Option<Vec<f32>> {
    if m == 0 || m > crate::SPLIT_MAX_ROWS || k == 0 || n == 0 {
        return None;
    }
    let strides = rhs.layout().strides();
    let (transposed, stride) = contiguous_lines(strides[0], strides[1], [k, n])?;
    if stride != if transposed { k } else { n } {
        return None; // rows apart from each other: not one dense block
    }
    let lhs = values(lhs);
    let start = rhs.layout().start_offset();
    Some(match rhs.dtype() {
        DType::BF16 => {
            let rhs = rhs.storage::<bf16>().get(start..start + k * n)?;
            few_rows_by(&lhs, rhs, [m, k, n], transposed)
        }
        _ => {
            let rhs = rhs.storage::<f32>().get(start..start + k * n)?;
            few_rows_by(&lhs, rhs, [m, k, n], transposed)
        }
    })
}

/// [`cpu::matmul_few_rows`] or, for `rhs` read as its transpose, [`cpu::matmul_nt_few_rows`].
fn few_rows_by<W: cpu::Weight>(
    lhs: &[f32],
    rhs: &[W],
    [m, k, n]: [usize; 3],
    transposed: bool,
) -> Vec<f32> {
    match transposed {
        false => cpu::matmul_few_rows(lhs, m, rhs, k, n),
        true => cpu::matmul_nt_few_rows(lhs, m, rhs, n, k),
    }
}

/// The element offset in a tensor laid out as `layout` of the output's batch element `b`
/// (row-major over `batch_dims`, the output's batch dimensions, which the tensor's leading
/// dimensions equal or broadcast against with size 1).
fn batch_offset(layout: &Layout, batch_dims: &[usize], b: usize) -> isize {
    let (shape, strides) = (layout.shape(), layout.strides());
    let (mut rest, mut offset) = (b, layout.start_offset() as isize);
    for d in (0..batch_dims.len()).rev() {
        if shape[d] != 1 {
            offset += (rest % batch_dims[d]) as isize * strides[d];
        }
        rest /= batch_dims[d];
    }
    offset
}

/// [`FusedOps::matmul_batched`] on flex when every batch element has at most
/// [`crate::SPLIT_MAX_ROWS`] rows, the batch dimensions agree or broadcast (size 1), and each
/// batch element of `rhs` has contiguous rows or columns (a head of a cache buffer or of a
/// projection's output does); `None` otherwise.
fn few_rows_batched(lhs: &FlexTensor, rhs: &FlexTensor) -> Option<FlexTensor> {
    let (lhs_shape, rhs_shape) = (lhs.layout().shape(), rhs.layout().shape());
    let dims = lhs_shape.num_dims();
    if dims < 3 || rhs_shape.num_dims() != dims {
        return None;
    }
    let (m, k, n) = (
        lhs_shape[dims - 2],
        lhs_shape[dims - 1],
        rhs_shape[dims - 1],
    );
    if m == 0 || m > crate::SPLIT_MAX_ROWS || k == 0 || n == 0 || rhs_shape[dims - 2] != k {
        return None;
    }
    // The output's batch dimensions: equal sizes, or 1 broadcast against the other's.
    let mut batch_dims = Vec::with_capacity(dims);
    for d in 0..dims - 2 {
        batch_dims.push(match (lhs_shape[d], rhs_shape[d]) {
            (a, b) if a == b || b == 1 => a,
            (1, b) => b,
            _ => return None,
        });
    }
    let strides = rhs.layout().strides();
    // Rows of `[k, n]` (or of `[n, k]` for a transposed view) contiguous, any distance apart.
    let (transposed, stride) = contiguous_lines(strides[dims - 2], strides[dims - 1], [k, n])?;
    let (rows, len) = if transposed { (n, k) } else { (k, n) };
    let extent = (rows - 1) * stride + len;
    let storage = rhs.storage::<f32>();
    let lhs_values = values(lhs);
    let batch: usize = batch_dims.iter().product();
    // `lhs_values` are `lhs`'s elements in row-major order.
    let lhs_layout = Layout::contiguous(lhs_shape.clone());
    let mut pairs = Vec::with_capacity(batch);
    for b in 0..batch {
        let rhs_offset = usize::try_from(batch_offset(rhs.layout(), &batch_dims, b)).ok()?;
        let rhs_batch = cpu::Rows {
            values: storage.get(rhs_offset..rhs_offset + extent)?,
            rows,
            len,
            stride,
        };
        let lhs_offset = batch_offset(&lhs_layout, &batch_dims, b) as usize;
        let lhs_batch = &lhs_values[lhs_offset..lhs_offset + m * k];
        pairs.push((lhs_batch, rhs_batch));
    }
    let out = cpu::matmul_few_rows_batched(&pairs, [m, k, n], transposed);
    let mut shape = batch_dims;
    shape.extend([m, n]);
    Some(tensor_from(out, Shape::from(shape)))
}

/// Products below this many multiply-adds run on one thread (the flex backend's threshold).
const PARALLEL_MACS: usize = 192 * 192 * 192;

/// A matrix operand for gemm: its first element and its (row, column) strides in elements.
pub(crate) type Strided = (*const f32, isize, isize);

/// Most output columns of a product by a transposed right operand (`rhs: [k, n]` read from an
/// `[n, k]` weight: a layer's input gradient `grad · Wᵀ`) that [`gemm_into`] splits by columns
/// across the threads, one single-threaded gemm per slice. Why: gemm turns a row-major product
/// around to write columns, and an operand it then multiplies from the left that is this narrow
/// and not column-contiguous (the weight) it packs whole on the calling thread while the
/// workers wait (perf: 1.2–1.5% of gpt-tiny's samples, on the main thread). Split, each thread
/// packs its own slice: alone +13–30% on gpt2-small's shapes; in the step (in-process A/B,
/// alternate steps) gpt2-small b2 +1.6% and +5.2% over 25 pairs each, b8 +2%, gpt-tiny +1%.
const SPLIT_MAX_COLUMNS: usize = 1024;
/// Fewest output columns per thread for [`SPLIT_MAX_COLUMNS`]'s split: a narrower product keeps
/// gemm's own threading, which also splits its rows.
const SPLIT_MIN_COLUMNS: usize = 64;

/// Writes `lhs: [m, k] · rhs: [k, n]` into the `m·n` row-major elements at `out`, on all threads
/// when `parallel`. A product over `k = 0` is zeros.
///
/// # Safety
/// `lhs` and `rhs` must address `[m, k]` and `[k, n]` readable elements, `out` `m·n` writable
/// ones that overlap neither.
unsafe fn gemm_into(
    out: *mut f32,
    [m, k, n]: [usize; 3],
    lhs: Strided,
    rhs: Strided,
    parallel: bool,
) {
    if m * n == 0 {
        return;
    }
    if k == 0 {
        // SAFETY: `out` has `m·n` writable elements (the caller's contract).
        unsafe { std::ptr::write_bytes(out, 0, m * n) };
        return;
    }
    let threads = rayon::current_num_threads();
    let (rhs_ptr, rhs_rs, rhs_cs) = rhs;
    let columns = SPLIT_MIN_COLUMNS * threads..=SPLIT_MAX_COLUMNS;
    if !(parallel && threads > 1 && columns.contains(&n) && rhs_cs != 1) {
        // SAFETY: the caller's contract.
        unsafe { gemm_strided(out, n as isize, [m, k, n], lhs, rhs, 1.0, parallel) };
        return;
    }
    use rayon::prelude::*;
    let width = n.div_ceil(threads).next_multiple_of(16);
    // Addresses, which the threads can share.
    let (out_at, lhs_at, rhs_at) = (out as usize, lhs.0 as usize, rhs_ptr as usize);
    (0..n.div_ceil(width)).into_par_iter().for_each(|slice| {
        let start = slice * width;
        let len = width.min(n - start);
        let lhs = (lhs_at as *const f32, lhs.1, lhs.2);
        let rhs_start = (rhs_at as *const f32).wrapping_offset(start as isize * rhs_cs);
        // SAFETY: columns `start..start + len` of `rhs` and of the output, inside the caller's
        // operands; the slices' outputs do not overlap.
        unsafe {
            let out = (out_at as *mut f32).add(start);
            let rhs = (rhs_start, rhs_rs, rhs_cs);
            gemm_strided(out, n as isize, [m, k, len], lhs, rhs, 1.0, false);
        }
    });
}

/// One gemm call: `scale · lhs: [m, k] · rhs: [k, n]` written (not accumulated) over the
/// `[m, n]` elements at `out`, whose rows are `out_rs` elements apart.
///
/// # Safety
/// As [`gemm_into`], with `out`'s rows `out_rs ≥ n` apart and `m`, `n`, `k` > 0.
pub(crate) unsafe fn gemm_strided(
    out: *mut f32,
    out_rs: isize,
    [m, k, n]: [usize; 3],
    (lhs_ptr, lhs_rs, lhs_cs): Strided,
    (rhs_ptr, rhs_rs, rhs_cs): Strided,
    scale: f32,
    parallel: bool,
) {
    let parallelism = match parallel {
        true => gemm::Parallelism::Rayon(0),
        false => gemm::Parallelism::None,
    };
    // SAFETY: the caller's contract; with `read_dst` false gemm writes every output element
    // without reading any.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            out,
            1,
            out_rs,
            false,
            lhs_ptr,
            lhs_cs,
            lhs_rs,
            rhs_ptr,
            rhs_cs,
            rhs_rs,
            0.0,
            scale,
            false,
            false,
            false,
            parallelism,
        );
    }
}

/// `lhs: [.., m, k] · rhs: [.., k, n]` with the same batch dimensions, each batch element a
/// gemm that reads the operands through their strides (a head of a projection's output, a
/// transposed key view) and writes straight into the output: the batch elements on all threads
/// when there are enough of them, else each product on all threads. `None` when the batch
/// dimensions differ (broadcasting: flex's own product).
fn gemm_batched(lhs: &FlexTensor, rhs: &FlexTensor) -> Option<FlexTensor> {
    let (lhs_shape, rhs_shape) = (lhs.layout().shape(), rhs.layout().shape());
    let dims = lhs_shape.num_dims();
    if dims < 3
        || rhs_shape.num_dims() != dims
        || (0..dims - 2).any(|d| lhs_shape[d] != rhs_shape[d])
    {
        return None;
    }
    let (m, k, n) = (
        lhs_shape[dims - 2],
        lhs_shape[dims - 1],
        rhs_shape[dims - 1],
    );
    if rhs_shape[dims - 2] != k {
        return None;
    }
    let batch_dims = &lhs_shape[..dims - 2];
    let batch: usize = batch_dims.iter().product();
    // Each batch element's first element and (row, column) strides, as addresses so that the
    // parallel tasks can share them.
    let elements = |tensor: &FlexTensor| -> Vec<(usize, isize, isize)> {
        let strides = tensor.layout().strides();
        let base = tensor.storage::<f32>().as_ptr() as usize;
        (0..batch)
            .map(|b| {
                let offset = batch_offset(tensor.layout(), batch_dims, b);
                let address = base.wrapping_add_signed(offset * 4);
                (address, strides[dims - 2], strides[dims - 1])
            })
            .collect()
    };
    let (lhs_elements, rhs_elements) = (elements(lhs), elements(rhs));
    let operand = |(address, rs, cs): (usize, isize, isize)| (address as *const f32, rs, cs);
    let size = m * n;
    let mut out: Vec<f32> = Vec::with_capacity(batch * size);
    let product = |b: usize, dst: *mut f32, parallel: bool| {
        let (lhs, rhs) = (operand(lhs_elements[b]), operand(rhs_elements[b]));
        // SAFETY: the layouts place batch element `b` of each operand at these addresses and
        // strides inside its storage; `dst` is batch element `b` of the output.
        unsafe { gemm_into(dst, [m, k, n], lhs, rhs, parallel) };
    };
    if size > 0 && batch >= rayon::current_num_threads() {
        use rayon::prelude::*;
        out.spare_capacity_mut()[..batch * size]
            .par_chunks_mut(size)
            .enumerate()
            .for_each(|(b, dst)| product(b, dst.as_mut_ptr().cast(), false));
    } else {
        for b in 0..batch {
            // SAFETY: inside the reserved `batch·size` elements.
            let dst = unsafe { out.as_mut_ptr().add(b * size) };
            product(b, dst, size * k >= PARALLEL_MACS);
        }
    }
    // SAFETY: every output element was written (gemm writes all `m·n` of each batch element).
    unsafe { out.set_len(batch * size) };
    let mut shape: Vec<usize> = batch_dims.to_vec();
    shape.extend([m, n]);
    Some(tensor_from(out, Shape::from(shape)))
}

/// The dimensions of a fused attention over `qkv: [batch, seq, 3·heads·head_dim]`.
fn attention_shape(qkv: &FlexTensor, heads: usize) -> AttentionShape {
    let shape = qkv.layout().shape();
    assert_eq!(
        shape.num_dims(),
        3,
        "attention: qkv must be [batch, seq, 3·emb]"
    );
    let width = shape[2];
    crate::check_projection_width(width, heads);
    AttentionShape {
        batch: shape[0],
        seq: shape[1],
        heads,
        head_dim: width / (3 * heads),
    }
}

impl FusedOps for Flex {
    /// The flex backend's own 2-D product writes into a zeroed buffer that `Bytes` then copies
    /// to realign (three passes over the output on one thread before the product starts); here
    /// the product writes straight into the output's memory.
    fn matmul_2d(lhs: FlexTensor, rhs: FlexTensor) -> FlexTensor {
        let ([m, k], [k_rhs, n]) = (dims_2d(&lhs), dims_2d(&rhs));
        assert_eq!(k, k_rhs, "matmul_2d: [{m}, {k}] · [{k_rhs}, {n}]");
        if let Some(out) = few_rows_product(&lhs, &rhs, [m, k, n]) {
            return tensor_from(out, Shape::new([m, n]));
        }
        // A bf16 weight outside the few-rows products (a prompt's prefill) is widened once here;
        // an f32 one is returned as it is.
        let rhs = <Flex as FloatTensorOps<Flex>>::float_cast(rhs, FloatDType::F32);
        let mut out: Vec<f32> = Vec::with_capacity(m * n);
        let (lhs, rhs) = (strided_2d(&lhs), strided_2d(&rhs));
        // SAFETY: `strided_2d` addresses `[m, k]` and `[k, n]` elements inside the operands'
        // storage (their layouts say so); `out` has room for `m·n`.
        unsafe {
            gemm_into(
                out.as_mut_ptr(),
                [m, k, n],
                lhs,
                rhs,
                m * n * k >= PARALLEL_MACS,
            );
            out.set_len(m * n);
        }
        tensor_from(out, Shape::new([m, n]))
    }

    /// Few rows per batch element (one query per head while decoding): each batch element's
    /// product by [`cpu::matmul_few_rows_batched`], the elements on all threads (flex's batched
    /// gemm runs such small products one after the other on one thread); otherwise
    /// [`gemm_batched`], which writes straight into its output (flex zero-fills its output and
    /// copies it once more on one thread before the products start); with broadcast batch
    /// dimensions flex's own product.
    fn matmul_batched(lhs: FlexTensor, rhs: FlexTensor) -> FlexTensor {
        if let Some(out) = few_rows_batched(&lhs, &rhs).or_else(|| gemm_batched(&lhs, &rhs)) {
            return out;
        }
        <Flex as FloatTensorOps<Flex>>::float_matmul(lhs, rhs)
    }

    fn gelu_tanh(x: FlexTensor) -> FlexTensor {
        tensor_from(cpu::gelu_tanh(&values(&x)), x.layout().shape().clone())
    }

    fn gelu_tanh_backward(x: FlexTensor, grad: FlexTensor) -> FlexTensor {
        let dx = cpu::gelu_tanh_backward(&values(&x), &values(&grad));
        tensor_from(dx, x.layout().shape().clone())
    }

    fn softmax_last(x: FlexTensor) -> FlexTensor {
        let shape = x.layout().shape().clone();
        let width = shape[shape.num_dims() - 1];
        tensor_from(cpu::softmax_rows(&values(&x), width), shape)
    }

    fn softmax_last_backward(y: FlexTensor, grad: FlexTensor) -> FlexTensor {
        let shape = y.layout().shape().clone();
        let width = shape[shape.num_dims() - 1];
        let dx = cpu::softmax_rows_backward(&values(&y), &values(&grad), width);
        tensor_from(dx, shape)
    }

    fn causal_attention(
        qkv: FlexTensor,
        heads: usize,
        seed: u64,
        prob: f64,
        keep_weights: bool,
    ) -> (FlexTensor, Option<FlexTensor>) {
        let shape = attention_shape(&qkv, heads);
        let mask = (prob > 0.0).then(|| cpu::DropoutMask::new(seed, prob));
        let (out, weights) = attention::forward(&values(&qkv), shape, mask, keep_weights);
        let AttentionShape { batch, seq, .. } = shape;
        let out = tensor_from(out, Shape::new([batch, seq, heads * shape.head_dim]));
        let weights =
            keep_weights.then(|| tensor_from(weights, Shape::new([batch, heads, seq, seq])));
        (out, weights)
    }

    fn causal_attention_backward(
        qkv: FlexTensor,
        weights: FlexTensor,
        grad: FlexTensor,
        heads: usize,
        seed: u64,
        prob: f64,
    ) -> FlexTensor {
        let shape = attention_shape(&qkv, heads);
        let mask = (prob > 0.0).then(|| cpu::DropoutMask::new(seed, prob));
        let dqkv = attention::backward(
            &values(&qkv),
            &values(&weights),
            &values(&grad),
            shape,
            mask,
        );
        tensor_from(dqkv, qkv.layout().shape().clone())
    }

    fn nll_rows(logits: FlexTensor, targets: FlexTensor) -> (FlexTensor, FlexTensor) {
        let classes = logits.layout().shape()[1];
        let targets = int_values(&targets);
        let (nll, lse) = cpu::nll_rows(&values(&logits), classes, &targets);
        let rows = Shape::new([targets.len()]);
        (tensor_from(nll, rows.clone()), tensor_from(lse, rows))
    }

    fn nll_rows_backward(
        logits: FlexTensor,
        targets: FlexTensor,
        lse: FlexTensor,
        grad: FlexTensor,
    ) -> FlexTensor {
        let classes = logits.layout().shape()[1];
        let targets = int_values(&targets);
        let mut dlogits = owned_contiguous(logits);
        cpu::nll_rows_backward_in_place(
            dlogits.try_storage_mut::<f32>().expect("exclusive"),
            classes,
            &targets,
            &values(&lse),
            &values(&grad),
        );
        dlogits
    }

    /// In place when the input's storage is its own (a product's output, which the product's
    /// backward does not keep), else into a new tensor.
    fn dropout(x: FlexTensor, seed: u64, prob: f64) -> FlexTensor {
        let mask = cpu::DropoutMask::new(seed, prob);
        if is_exclusive(&x) {
            let mut x = x;
            cpu::dropout_in_place(x.try_storage_mut::<f32>().expect("exclusive"), mask);
            x
        } else {
            tensor_from(cpu::dropout(&values(&x), mask), x.layout().shape().clone())
        }
    }

    fn lookup_rows(table: FlexTensor, ids: FlexTensor) -> FlexTensor {
        let [_, emb] = dims_2d(&table);
        let mut shape: Vec<usize> = ids.layout().shape().to_vec();
        shape.push(emb);
        let rows = cpu::gather_rows(&values(&table), emb, &int_values(&ids));
        tensor_from(rows, Shape::from(shape))
    }

    /// Zeroes the table on all threads and adds the rows into it: Burn's zero-fills it and
    /// copies it once more to realign it, on one thread (150 MB for GPT-2's vocabulary).
    fn lookup_rows_backward(grad: FlexTensor, ids: FlexTensor, vocab: usize) -> FlexTensor {
        let shape = grad.layout().shape();
        let emb = shape[shape.num_dims() - 1];
        let table = cpu::scatter_add_rows(&values(&grad), emb, &int_values(&ids), vocab);
        tensor_from(table, Shape::new([vocab, emb]))
    }

    fn layer_norm(
        x: FlexTensor,
        gamma: FlexTensor,
        beta: FlexTensor,
        epsilon: f64,
    ) -> (FlexTensor, FlexTensor) {
        let shape = x.layout().shape().clone();
        let width = shape[shape.num_dims() - 1];
        let (y, stats) = cpu::layer_norm_rows(
            &values(&x),
            width,
            &values(&gamma),
            &values(&beta),
            epsilon as f32,
        );
        let rows = stats.len() / 2;
        (
            tensor_from(y, shape),
            tensor_from(stats, Shape::new([rows, 2])),
        )
    }

    fn layer_norm_backward(
        x: FlexTensor,
        gamma: FlexTensor,
        stats: FlexTensor,
        grad: FlexTensor,
    ) -> (FlexTensor, FlexTensor, FlexTensor) {
        let shape = x.layout().shape().clone();
        let width = shape[shape.num_dims() - 1];
        let (dx, dgamma, dbeta) = cpu::layer_norm_rows_backward(
            &values(&x),
            width,
            &values(&gamma),
            &values(&stats),
            &values(&grad),
        );
        (
            tensor_from(dx, shape),
            tensor_from(dgamma, Shape::new([width])),
            tensor_from(dbeta, Shape::new([width])),
        )
    }

    fn squared_sum(x: FlexTensor) -> FlexTensor {
        let sum = cpu::squared_sum(&values(&x)) as f32;
        tensor_from(vec![sum], Shape::new([1]))
    }

    fn scale(x: FlexTensor, factor: f32) -> FlexTensor {
        let mut x = owned_contiguous(x);
        cpu::scale_in_place(x.try_storage_mut::<f32>().expect("owned"), factor);
        x
    }

    fn adamw_update(
        param: FlexTensor,
        grad: FlexTensor,
        moment_1: FlexTensor,
        moment_2: FlexTensor,
        lr: f64,
        betas: (f32, f32),
        epsilon: f32,
        weight_decay: f32,
        time: usize,
    ) -> (FlexTensor, FlexTensor, FlexTensor) {
        let mut param = owned_contiguous(param);
        let mut moment_1 = owned_contiguous(moment_1);
        let mut moment_2 = owned_contiguous(moment_2);
        let step = AdamWStep {
            lr,
            beta_1: betas.0,
            beta_2: betas.1,
            epsilon,
            weight_decay,
            time,
        };
        cpu::adamw_update(
            param.try_storage_mut::<f32>().expect("owned"),
            &values(&grad),
            moment_1.try_storage_mut::<f32>().expect("owned"),
            moment_2.try_storage_mut::<f32>().expect("owned"),
            step,
        );
        (param, moment_1, moment_2)
    }
}

/// An element-wise (GELU) or row-wise (softmax) op whose backward needs one tensor: GELU keeps
/// its input, softmax its output (which the next product keeps anyway).
#[derive(Debug)]
enum OneTensorOp {
    GeluTanh,
    SoftmaxLast,
}

impl<B: Backend + FusedOps> Backward<B, 1> for OneTensorOp {
    type State = FloatTensor<B>;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let kept = ops.state;
        unary::<B, _>(ops.parents, ops.node, grads, |grad| match self {
            OneTensorOp::GeluTanh => B::gelu_tanh_backward(kept, grad),
            OneTensorOp::SoftmaxLast => B::softmax_last_backward(kept, grad),
        });
    }
}

/// Records a [`OneTensorOp`] under autodiff.
fn one_tensor_tracked<B: Backend + FusedOps, C: CheckpointStrategy>(
    x: FloatTensor<Autodiff<B, C>>,
    op: OneTensorOp,
) -> FloatTensor<Autodiff<B, C>> {
    let (x, guard) = x.into_parts();
    let (y, kept) = match op {
        OneTensorOp::GeluTanh => (B::gelu_tanh(x.clone()), x),
        OneTensorOp::SoftmaxLast => {
            let y = B::softmax_last(x);
            (y.clone(), y)
        }
    };
    match op.prepare::<C>([guard]).compute_bound().stateful() {
        OpsKind::Tracked(prep) => prep.finish(kept, y),
        OpsKind::UnTracked(prep) => prep.finish(y),
    }
}

/// `lhs · rhs`, or `lhs · rhsᵀ` with `rhs` stored `[n, k]` when `rhs_transposed`: then the
/// gradient of `rhs` is computed in that `[n, k]` layout.
#[derive(Debug)]
struct Matmul2d {
    rhs_transposed: bool,
}

impl<B: Backend + FusedOps> Backward<B, 2> for Matmul2d {
    /// Both operands: each one's gradient is a product with the other.
    type State = (FloatTensor<B>, FloatTensor<B>);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let (lhs, rhs) = ops.state;
        let nt = self.rhs_transposed;
        binary::<B, _, _>(
            ops.parents,
            ops.node,
            grads,
            // d lhs = grad · rhsᵀ: [m, n]·[n, k]
            |grad| B::matmul_2d(grad, if nt { rhs } else { B::float_transpose(rhs) }),
            |grad| match nt {
                true => B::matmul_2d(B::float_transpose(grad), lhs), // [n, m]·[m, k]
                false => B::matmul_2d(B::float_transpose(lhs), grad), // [k, m]·[m, n]
            },
        );
    }
}

/// Records a [`Matmul2d`] under autodiff.
fn matmul_tracked<B: Backend + FusedOps, C: CheckpointStrategy>(
    lhs: FloatTensor<Autodiff<B, C>>,
    rhs: FloatTensor<Autodiff<B, C>>,
    rhs_transposed: bool,
) -> FloatTensor<Autodiff<B, C>> {
    let (lhs, lhs_guard) = lhs.into_parts();
    let (rhs, rhs_guard) = rhs.into_parts();
    let out = match rhs_transposed {
        true => B::matmul_2d_nt(lhs.clone(), rhs.clone()),
        false => B::matmul_2d(lhs.clone(), rhs.clone()),
    };
    match (Matmul2d { rhs_transposed })
        .prepare::<C>([lhs_guard, rhs_guard])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => prep.finish((lhs, rhs), out),
        OpsKind::UnTracked(prep) => prep.finish(out),
    }
}

/// `lhs: [.., m, k] · rhs: [.., k, n]` with the same batch dimensions; the gradients are
/// batched products with transposed views of the other operand (no copies).
#[derive(Debug)]
struct MatmulBatched;

impl<B: Backend + FusedOps> Backward<B, 2> for MatmulBatched {
    /// Both operands: each one's gradient is a product with the other.
    type State = (FloatTensor<B>, FloatTensor<B>);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let (lhs, rhs) = ops.state;
        binary::<B, _, _>(
            ops.parents,
            ops.node,
            grads,
            |grad| B::matmul_batched(grad, B::float_transpose(rhs)), // [.., m, n]·[.., n, k]
            |grad| B::matmul_batched(B::float_transpose(lhs), grad), // [.., k, m]·[.., m, n]
        );
    }
}

/// Fused causal self-attention's backward: the projection's gradient from the projection and
/// the weights, with the forward's dropout mask regenerated from its seed.
#[derive(Debug)]
struct CausalAttention {
    heads: usize,
    seed: u64,
    prob: f64,
}

impl<B: Backend + FusedOps> Backward<B, 1> for CausalAttention {
    /// The projection `qkv` and the weights before dropout.
    type State = (FloatTensor<B>, FloatTensor<B>);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let (qkv, weights) = ops.state;
        unary::<B, _>(ops.parents, ops.node, grads, |grad| {
            B::causal_attention_backward(qkv, weights, grad, self.heads, self.seed, self.prob)
        });
    }
}

/// An embedding lookup's backward: the output's gradient added into a zero table at the ids.
#[derive(Debug)]
struct Embedding {
    vocab: usize,
}

impl<B: Backend + FusedOps> Backward<B, 1> for Embedding {
    /// The ids looked up.
    type State = IntTensor<B>;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let ids = ops.state;
        unary::<B, _>(ops.parents, ops.node, grads, |grad| {
            B::lookup_rows_backward(grad, ids, self.vocab)
        });
    }
}

/// LayerNorm's backward: the input, the scale and the per-row statistics give all three
/// gradients in one pass.
#[derive(Debug)]
struct LayerNormOp;

impl<B: Backend + FusedOps> Backward<B, 3> for LayerNormOp {
    /// The input, γ, and `[rows, 2]` (mean, 1/std).
    type State = (FloatTensor<B>, FloatTensor<B>, FloatTensor<B>);

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let (x, gamma, stats) = ops.state;
        let grad = grads.consume::<B>(&ops.node);
        let (dx, dgamma, dbeta) = B::layer_norm_backward(x, gamma, stats, grad);
        for (parent, grad) in ops.parents.into_iter().zip([dx, dgamma, dbeta]) {
            if let Some(node) = parent {
                grads.register::<B>(node.id, grad);
            }
        }
    }
}

#[derive(Debug)]
struct NllRows;

impl<B: Backend + FusedOps> Backward<B, 1> for NllRows {
    /// Logits, targets and each row's logsumexp: the softmax is recomputed from them.
    type State = (FloatTensor<B>, IntTensor<B>, FloatTensor<B>);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let (logits, targets, lse) = ops.state;
        unary::<B, _>(ops.parents, ops.node, grads, |grad| {
            B::nll_rows_backward(logits, targets, lse, grad)
        });
    }
}

/// Dropout's backward: the same mask (regenerated from its seed) on the gradient.
#[derive(Debug)]
struct DropoutOp {
    seed: u64,
    prob: f64,
}

impl<B: Backend + FusedOps> Backward<B, 1> for DropoutOp {
    type State = ();

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        unary::<B, _>(ops.parents, ops.node, grads, |grad| {
            B::dropout(grad, self.seed, self.prob)
        });
    }
}

/// Under autodiff: the forward ops record one node each with the backward above; the backward
/// and optimizer ops run on the inner backend and return constants (not differentiable again).
impl<B: Backend + FusedOps, C: CheckpointStrategy> FusedOps for Autodiff<B, C> {
    fn gelu_tanh(x: FloatTensor<Self>) -> FloatTensor<Self> {
        one_tensor_tracked::<B, C>(x, OneTensorOp::GeluTanh)
    }

    fn gelu_tanh_backward(x: FloatTensor<Self>, grad: FloatTensor<Self>) -> FloatTensor<Self> {
        Self::from_inner(B::gelu_tanh_backward(Self::inner(x), Self::inner(grad)))
    }

    fn matmul_2d(lhs: FloatTensor<Self>, rhs: FloatTensor<Self>) -> FloatTensor<Self> {
        matmul_tracked::<B, C>(lhs, rhs, false)
    }

    fn matmul_2d_nt(lhs: FloatTensor<Self>, rhs: FloatTensor<Self>) -> FloatTensor<Self> {
        matmul_tracked::<B, C>(lhs, rhs, true)
    }

    /// With the same batch dimensions, tracked with [`MatmulBatched`]'s backward, whose
    /// products are the inner backend's [`FusedOps::matmul_batched`]; with broadcast ones
    /// Burn's tracked product (its backward sums the broadcast gradients).
    fn matmul_batched(lhs: FloatTensor<Self>, rhs: FloatTensor<Self>) -> FloatTensor<Self> {
        let (lhs_shape, rhs_shape) = (lhs.shape(), rhs.shape());
        let dims = lhs_shape.num_dims();
        if rhs_shape.num_dims() != dims || lhs_shape[..dims - 2] != rhs_shape[..dims - 2] {
            return Self::float_matmul(lhs, rhs);
        }
        let (lhs, lhs_guard) = lhs.into_parts();
        let (rhs, rhs_guard) = rhs.into_parts();
        let out = B::matmul_batched(lhs.clone(), rhs.clone());
        match MatmulBatched
            .prepare::<C>([lhs_guard, rhs_guard])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => prep.finish((lhs, rhs), out),
            OpsKind::UnTracked(prep) => prep.finish(out),
        }
    }

    fn softmax_last(x: FloatTensor<Self>) -> FloatTensor<Self> {
        one_tensor_tracked::<B, C>(x, OneTensorOp::SoftmaxLast)
    }

    fn softmax_last_backward(y: FloatTensor<Self>, grad: FloatTensor<Self>) -> FloatTensor<Self> {
        Self::from_inner(B::softmax_last_backward(Self::inner(y), Self::inner(grad)))
    }

    /// Tracked, the inner backend keeps the weights for the backward pass; untracked (no
    /// gradient needed) it keeps none.
    fn causal_attention(
        qkv: FloatTensor<Self>,
        heads: usize,
        seed: u64,
        prob: f64,
        _keep_weights: bool,
    ) -> (FloatTensor<Self>, Option<FloatTensor<Self>>) {
        let (qkv, guard) = qkv.into_parts();
        let op = CausalAttention { heads, seed, prob };
        let out = match op.prepare::<C>([guard]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => {
                let (out, weights) = B::causal_attention(qkv.clone(), heads, seed, prob, true);
                let weights = weights.expect("the weights were asked for");
                prep.finish((qkv, weights), out)
            }
            OpsKind::UnTracked(prep) => {
                prep.finish(B::causal_attention(qkv, heads, seed, prob, false).0)
            }
        };
        (out, None)
    }

    fn causal_attention_backward(
        qkv: FloatTensor<Self>,
        weights: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        heads: usize,
        seed: u64,
        prob: f64,
    ) -> FloatTensor<Self> {
        Self::from_inner(B::causal_attention_backward(
            Self::inner(qkv),
            Self::inner(weights),
            Self::inner(grad),
            heads,
            seed,
            prob,
        ))
    }

    fn nll_rows(
        logits: FloatTensor<Self>,
        targets: IntTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let (logits, guard) = logits.into_parts();
        let (nll, lse) = B::nll_rows(logits.clone(), targets.clone());
        let nll = match NllRows.prepare::<C>([guard]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => prep.finish((logits, targets, lse.clone()), nll),
            OpsKind::UnTracked(prep) => prep.finish(nll),
        };
        (nll, Self::from_inner(lse))
    }

    fn nll_rows_backward(
        logits: FloatTensor<Self>,
        targets: IntTensor<Self>,
        lse: FloatTensor<Self>,
        grad: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        Self::from_inner(B::nll_rows_backward(
            Self::inner(logits),
            targets,
            Self::inner(lse),
            Self::inner(grad),
        ))
    }

    fn lookup_rows(table: FloatTensor<Self>, ids: IntTensor<Self>) -> FloatTensor<Self> {
        let vocab = table.shape()[0];
        let (table, guard) = table.into_parts();
        let out = B::lookup_rows(table, ids.clone());
        match (Embedding { vocab })
            .prepare::<C>([guard])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => prep.finish(ids, out),
            OpsKind::UnTracked(prep) => prep.finish(out),
        }
    }

    fn lookup_rows_backward(
        grad: FloatTensor<Self>,
        ids: IntTensor<Self>,
        vocab: usize,
    ) -> FloatTensor<Self> {
        Self::from_inner(B::lookup_rows_backward(Self::inner(grad), ids, vocab))
    }

    fn layer_norm(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        epsilon: f64,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let (x, x_guard) = x.into_parts();
        let (gamma, gamma_guard) = gamma.into_parts();
        let (beta, beta_guard) = beta.into_parts();
        let (y, stats) = <B as FusedOps>::layer_norm(x.clone(), gamma.clone(), beta, epsilon);
        let y = match LayerNormOp
            .prepare::<C>([x_guard, gamma_guard, beta_guard])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => prep.finish((x, gamma, stats.clone()), y),
            OpsKind::UnTracked(prep) => prep.finish(y),
        };
        (y, Self::from_inner(stats))
    }

    fn layer_norm_backward(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        stats: FloatTensor<Self>,
        grad: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        let (dx, dgamma, dbeta) = B::layer_norm_backward(
            Self::inner(x),
            Self::inner(gamma),
            Self::inner(stats),
            Self::inner(grad),
        );
        (
            Self::from_inner(dx),
            Self::from_inner(dgamma),
            Self::from_inner(dbeta),
        )
    }

    fn squared_sum(x: FloatTensor<Self>) -> FloatTensor<Self> {
        Self::from_inner(B::squared_sum(Self::inner(x)))
    }

    fn scale(x: FloatTensor<Self>, factor: f32) -> FloatTensor<Self> {
        Self::from_inner(B::scale(Self::inner(x), factor))
    }

    fn dropout(x: FloatTensor<Self>, seed: u64, prob: f64) -> FloatTensor<Self> {
        let (x, guard) = x.into_parts();
        let y = B::dropout(x, seed, prob);
        DropoutOp { seed, prob }
            .prepare::<C>([guard])
            .compute_bound()
            .stateless(y)
    }

    fn adamw_update(
        param: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        moment_1: FloatTensor<Self>,
        moment_2: FloatTensor<Self>,
        lr: f64,
        betas: (f32, f32),
        epsilon: f32,
        weight_decay: f32,
        time: usize,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        let (param, moment_1, moment_2) = B::adamw_update(
            Self::inner(param),
            Self::inner(grad),
            Self::inner(moment_1),
            Self::inner(moment_2),
            lr,
            betas,
            epsilon,
            weight_decay,
            time,
        );
        (
            Self::from_inner(param),
            Self::from_inner(moment_1),
            Self::from_inner(moment_2),
        )
    }
}
