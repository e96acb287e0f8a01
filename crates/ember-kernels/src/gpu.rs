//! Inference kernels for the GPU backends (CubeCL: wgpu, CUDA): LayerNorm (alone, or with the
//! shortcut sum and bias before it), GPT-2's tanh GELU (with the bias before it), a bias plus a
//! shortcut sum, the softmax over the last dimension and masked attention, one kernel each.
//!
//! Why: a decoding step on a GPU is bound by kernel launches, not arithmetic. Composed from
//! Burn's tensor ops a GPT-2 block launches ~50 kernels per token (LayerNorm 9 each, the GELU
//! 6, attention's scale, mask, max, subtract, exp, sum, divide ~10), each costing tens of
//! microseconds of launch and scheduling while the block's arithmetic takes a few. These
//! kernels replace those chains. They have no backward pass and run only outside autodiff
//! ([`runs_on`]); training keeps the composed ops.
//!
//! Each row kernel runs one cube of [`UNITS`] units per row: the units stride over the row,
//! then combine their partial results through shared memory (a tree reduction).

use burn::backend::cubecl::dtype_to_storage_type;
use burn::backend::tensor::{BoolTensor, FloatTensor};
use burn::backend::{Backend, Dispatch, DispatchDevice, TensorMetadata, backend_extension};
use burn::prelude::*;
use burn::tensor::{DType, Shape};
use burn_cubecl::CubeBackend;
use burn_cubecl::cubecl::{CubeCount, CubeDim, calculate_cube_count_elemwise};
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::ops::numeric::empty_device_dtype;
use burn_cubecl::tensor::CubeTensor;

use kernels::{
    add_bias_residual_kernel, attention_kernel, gelu_tanh_kernel, layer_norm_kernel, softmax_kernel,
};

/// Units per cube of the row kernels: a power of two (the tree reductions halve it).
const UNITS: u32 = 128;

/// Units per cube of the attention kernel: 4 groups of GPT-2's 64-wide heads in the weighted
/// sum of the values; 256 is the most every WebGPU device allows.
const ATTENTION_UNITS: u32 = 256;

/// Most cubes along the launch grid's x axis; more rows continue along y.
const MAX_CUBES_X: usize = 32768;

/// Whether a tensor of `dtype` on `device` takes these kernels: `f32` on a CubeCL (GPU)
/// device outside autodiff, unless switched off ([`crate::set_gpu_kernels`]).
pub(crate) fn runs_on(dtype: DType, device: &Device) -> bool {
    dtype == DType::F32
        && crate::GPU_KERNELS.load(std::sync::atomic::Ordering::Relaxed)
        && !device.is_autodiff()
        && matches!(device.as_dispatch(), DispatchDevice::Cube(_))
}

/// [`runs_on`] for every tensor an op reads: its activations `xs` and its `[width]` vectors
/// (biases, LayerNorm weights).
pub(crate) fn all_run_on<const D: usize>(xs: &[&Tensor<D>], vectors: &[&Tensor<1>]) -> bool {
    xs.iter().all(|x| runs_on(x.dtype(), &x.device()))
        && vectors.iter().all(|v| runs_on(v.dtype(), &v.device()))
}

/// Whether [`attention`] serves queries like `x`'s (any tensor of theirs) over `keys` keys:
/// [`runs_on`], and scores that fit the kernel's shared memory.
pub(crate) fn attention_runs_on<const D: usize>(x: &Tensor<D>, keys: usize) -> bool {
    runs_on(x.dtype(), &x.device()) && keys <= crate::FUSED_ATTENTION_MAX_KEYS
}

#[backend_extension(Cube: cfg(feature = "cube"), Fusion: cfg(all(feature = "cube", feature = "fusion")))]
pub trait GpuOps: Backend {
    /// GPT-2's GELU (tanh approximation), any shape.
    #[fusion(dtype = x, shape = x)]
    fn gpu_gelu_tanh(x: FloatTensor<Self>) -> FloatTensor<Self>;
    /// `gelu_tanh(x + bias)`, `bias: [width]` along `x`'s last dimension.
    #[fusion(dtype = x, shape = x)]
    fn gpu_bias_gelu_tanh(x: FloatTensor<Self>, bias: FloatTensor<Self>) -> FloatTensor<Self>;
    /// `residual + (branch + bias)`, `bias: [width]` along the last dimension.
    #[fusion(dtype = branch, shape = branch)]
    fn gpu_add_bias_residual(
        branch: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        residual: FloatTensor<Self>,
    ) -> FloatTensor<Self>;
    /// Softmax over the last dimension, any shape.
    #[fusion(dtype = x, shape = x)]
    fn gpu_softmax_last(x: FloatTensor<Self>) -> FloatTensor<Self>;
    /// LayerNorm over the last dimension of `x` with `gamma`, `beta`: `[width]`.
    #[fusion(dtype = x, shape = x)]
    fn gpu_layer_norm(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        epsilon: f64,
    ) -> FloatTensor<Self>;
    /// `(sum, normed)`: `sum = residual + (branch + bias)`, `bias: [width]` along the last
    /// dimension, and its LayerNorm with `gamma`, `beta: [width]`.
    #[fusion(meta = |branch, _bias, _residual, _gamma, _beta, _epsilon| (branch.clone(), branch.clone()))]
    fn gpu_add_bias_residual_layer_norm(
        branch: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        residual: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        epsilon: f64,
    ) -> (FloatTensor<Self>, FloatTensor<Self>);
    /// `softmax(q·kᵀ/√head_dim, hidden keys at f32::MIN)·v`, heads merged:
    /// `q: [batch, heads, queries, head_dim]`, `k`, `v: [batch, heads, keys, head_dim]`,
    /// `hide: [batch, heads, queries, keys]` (true = do not attend; broadcast views allowed)
    /// → `[batch, queries, heads·head_dim]`.
    #[fusion(dtype = q, shape = merged_heads_shape(q))]
    fn gpu_attention(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        hide: BoolTensor<Self>,
    ) -> FloatTensor<Self>;
}

/// `[batch, heads, queries, head_dim]` → `[batch, queries, heads·head_dim]`.
fn merged_heads_shape(q: &Shape) -> Shape {
    Shape::new([q[0], q[2], q[1] * q[3]])
}

pub(crate) fn gelu_tanh<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    Tensor::from_dispatch(<Dispatch as GpuOps>::gpu_gelu_tanh(x.into_dispatch()))
}

pub(crate) fn bias_gelu_tanh<const D: usize>(x: Tensor<D>, bias: Tensor<1>) -> Tensor<D> {
    Tensor::from_dispatch(<Dispatch as GpuOps>::gpu_bias_gelu_tanh(
        x.into_dispatch(),
        bias.into_dispatch(),
    ))
}

pub(crate) fn add_bias_residual<const D: usize>(
    branch: Tensor<D>,
    bias: Tensor<1>,
    residual: Tensor<D>,
) -> Tensor<D> {
    Tensor::from_dispatch(<Dispatch as GpuOps>::gpu_add_bias_residual(
        branch.into_dispatch(),
        bias.into_dispatch(),
        residual.into_dispatch(),
    ))
}

pub(crate) fn softmax_last<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    Tensor::from_dispatch(<Dispatch as GpuOps>::gpu_softmax_last(x.into_dispatch()))
}

pub(crate) fn layer_norm<const D: usize>(
    x: Tensor<D>,
    gamma: Tensor<1>,
    beta: Tensor<1>,
    epsilon: f64,
) -> Tensor<D> {
    Tensor::from_dispatch(<Dispatch as GpuOps>::gpu_layer_norm(
        x.into_dispatch(),
        gamma.into_dispatch(),
        beta.into_dispatch(),
        epsilon,
    ))
}

pub(crate) fn add_bias_residual_layer_norm<const D: usize>(
    branch: Tensor<D>,
    bias: Tensor<1>,
    residual: Tensor<D>,
    gamma: Tensor<1>,
    beta: Tensor<1>,
    epsilon: f64,
) -> (Tensor<D>, Tensor<D>) {
    let (sum, normed) = <Dispatch as GpuOps>::gpu_add_bias_residual_layer_norm(
        branch.into_dispatch(),
        bias.into_dispatch(),
        residual.into_dispatch(),
        gamma.into_dispatch(),
        beta.into_dispatch(),
        epsilon,
    );
    (Tensor::from_dispatch(sum), Tensor::from_dispatch(normed))
}

pub(crate) fn attention(
    q: Tensor<4>,
    k: Tensor<4>,
    v: Tensor<4>,
    hide: Tensor<4, Bool>,
) -> Tensor<3> {
    // A broadcast view (stride 0 along the dimensions it repeats), read as it is.
    let hide = hide.expand(attention_scores_shape(&q, &k));
    Tensor::from_dispatch(<Dispatch as GpuOps>::gpu_attention(
        q.into_dispatch(),
        k.into_dispatch(),
        v.into_dispatch(),
        hide.into_dispatch(),
    ))
}

/// [`crate::causal_self_attention`] without dropout: `qkv: [batch, seq, 3·emb]` →
/// `[batch, seq, emb]`, the heads read as views of the projection.
pub(crate) fn causal_attention(qkv: Tensor<3>, heads: usize) -> Tensor<3> {
    let seq = qkv.dims()[1];
    let future = crate::future_mask(seq, seq, &qkv.device()).reshape([1, 1, seq, seq]);
    let part = |i: usize| crate::qkv_heads(&qkv, heads, i);
    attention(part(0), part(1), part(2), future)
}

/// The GELU kernel over `x`, with `bias: [width]` added along the last dimension first.
fn launch_gelu_tanh(x: CubeTensor, bias: Option<CubeTensor>) -> CubeTensor {
    let x = into_contiguous(x);
    let out = empty_like(&x);
    let (_, width) = rows_and_width(&x);
    let (cube_count, cube_dim) = elementwise_grid(&x);
    let dtype = dtype_to_storage_type(x.dtype);
    let biased = bias.is_some();
    // Without a bias the kernel never reads its bias argument: `x` stands in.
    let bias = bias.map_or_else(|| x.clone(), into_contiguous);
    gelu_tanh_kernel::launch(
        &x.client.clone(),
        cube_count,
        cube_dim,
        x.into_tensor_arg(),
        bias.into_tensor_arg(),
        out.clone().into_tensor_arg(),
        width as u32,
        biased,
        dtype,
    );
    out
}

/// `[batch, heads, queries, keys]` of `q: [batch, heads, queries, _]`, `k: [_, _, keys, _]`.
fn attention_scores_shape(q: &Tensor<4>, k: &Tensor<4>) -> [usize; 4] {
    let [batch, heads, queries, _] = q.dims();
    [batch, heads, queries, k.dims()[2]]
}

impl GpuOps for CubeBackend {
    fn gpu_gelu_tanh(x: FloatTensor<Self>) -> FloatTensor<Self> {
        launch_gelu_tanh(x, None)
    }

    fn gpu_bias_gelu_tanh(x: FloatTensor<Self>, bias: FloatTensor<Self>) -> FloatTensor<Self> {
        launch_gelu_tanh(x, Some(bias))
    }

    fn gpu_add_bias_residual(
        branch: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        residual: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        let branch = into_contiguous(branch);
        let residual = into_contiguous(residual);
        let bias = into_contiguous(bias);
        let out = empty_like(&branch);
        let (_, width) = rows_and_width(&branch);
        let (cube_count, cube_dim) = elementwise_grid(&branch);
        let dtype = dtype_to_storage_type(branch.dtype);
        add_bias_residual_kernel::launch(
            &branch.client.clone(),
            cube_count,
            cube_dim,
            branch.into_tensor_arg(),
            bias.into_tensor_arg(),
            residual.into_tensor_arg(),
            out.clone().into_tensor_arg(),
            width as u32,
            dtype,
        );
        out
    }

    fn gpu_softmax_last(x: FloatTensor<Self>) -> FloatTensor<Self> {
        let x = into_contiguous(x);
        let out = empty_like(&x);
        let (rows, width) = rows_and_width(&x);
        let dtype = dtype_to_storage_type(x.dtype);
        softmax_kernel::launch(
            &x.client.clone(),
            row_cubes(rows),
            CubeDim::new_1d(UNITS),
            x.into_tensor_arg(),
            out.clone().into_tensor_arg(),
            rows as u32,
            width as u32,
            UNITS,
            dtype,
        );
        out
    }

    fn gpu_layer_norm(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        epsilon: f64,
    ) -> FloatTensor<Self> {
        launch_layer_norm(x, None, gamma, beta, epsilon).1
    }

    fn gpu_add_bias_residual_layer_norm(
        branch: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        residual: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        epsilon: f64,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        launch_layer_norm(residual, Some((branch, bias)), gamma, beta, epsilon)
    }

    fn gpu_attention(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        hide: BoolTensor<Self>,
    ) -> FloatTensor<Self> {
        let [batch, heads, queries, head_dim] = q.shape().dims::<4>();
        let keys = k.shape()[2];
        let out = empty_device_dtype(
            q.client.clone(),
            q.device.clone(),
            merged_heads_shape(&q.shape()),
            q.dtype,
        );
        let rows = batch * heads * queries;
        let dtypes = [
            dtype_to_storage_type(q.dtype),
            dtype_to_storage_type(hide.dtype),
        ];
        attention_kernel::launch(
            &q.client.clone(),
            row_cubes(rows),
            CubeDim::new_1d(ATTENTION_UNITS),
            q.into_tensor_arg(),
            k.into_tensor_arg(),
            v.into_tensor_arg(),
            hide.into_tensor_arg(),
            out.clone().into_tensor_arg(),
            rows as u32,
            1.0 / (head_dim as f32).sqrt(),
            keys.next_power_of_two().max(ATTENTION_UNITS as usize) as u32,
            ATTENTION_UNITS,
            dtypes,
        );
        out
    }
}

/// An uninitialised contiguous tensor of `x`'s shape, dtype and device.
fn empty_like(x: &CubeTensor) -> CubeTensor {
    empty_device_dtype(x.client.clone(), x.device.clone(), x.shape(), x.dtype)
}

/// `(rows, width)` of a tensor read as rows of its last dimension.
fn rows_and_width(x: &CubeTensor) -> (usize, usize) {
    let shape = x.shape();
    let width = shape[shape.num_dims() - 1];
    (shape.num_elements() / width.max(1), width)
}

/// The LayerNorm kernel over the rows of `x`, or with `summand: (branch, bias)` over
/// `x + (branch + bias)`, which it also writes out: `(sum, normed)`, `sum` a placeholder of
/// one element without a summand.
fn launch_layer_norm(
    x: CubeTensor,
    summand: Option<(CubeTensor, CubeTensor)>,
    gamma: CubeTensor,
    beta: CubeTensor,
    epsilon: f64,
) -> (CubeTensor, CubeTensor) {
    let x = into_contiguous(x);
    let normed = empty_like(&x);
    let (rows, width) = rows_and_width(&x);
    let dtype = dtype_to_storage_type(x.dtype);
    let summed = summand.is_some();
    // Without a summand the kernel reads neither `branch` nor `bias` (`x` stands in) and
    // writes no sum.
    let (branch, bias, sum) = match summand {
        Some((branch, bias)) => (into_contiguous(branch), bias, empty_like(&x)),
        None => {
            let placeholder =
                empty_device_dtype(x.client.clone(), x.device.clone(), Shape::new([1]), x.dtype);
            (x.clone(), x.clone(), placeholder)
        }
    };
    layer_norm_kernel::launch(
        &x.client.clone(),
        row_cubes(rows),
        CubeDim::new_1d(UNITS),
        x.into_tensor_arg(),
        branch.into_tensor_arg(),
        bias.into_tensor_arg(),
        sum.clone().into_tensor_arg(),
        gamma.into_tensor_arg(),
        beta.into_tensor_arg(),
        normed.clone().into_tensor_arg(),
        rows as u32,
        width as u32,
        epsilon as f32,
        summed,
        UNITS,
        dtype,
    );
    (sum, normed)
}

/// One unit per element of `x`.
fn elementwise_grid(x: &CubeTensor) -> (CubeCount, CubeDim) {
    let elements = x.shape().num_elements();
    let cube_dim = CubeDim::new(&x.client, elements);
    let cube_count = calculate_cube_count_elemwise(&x.client, elements, cube_dim);
    (cube_count, cube_dim)
}

/// One cube per row, laid out over x then y (the grid's x extent is limited).
fn row_cubes(rows: usize) -> CubeCount {
    let x = rows.clamp(1, MAX_CUBES_X);
    CubeCount::Static(x as u32, rows.div_ceil(x) as u32, 1)
}

/// The kernels, in CubeCL (whose `Tensor` and `Float` are its own, not Burn's).
mod kernels {
    use burn_cubecl::cubecl;
    use burn_cubecl::cubecl::prelude::*;

    /// The row this cube works on (see `super::row_cubes`).
    #[cube]
    fn cube_row() -> usize {
        (CUBE_POS_Y * CUBE_COUNT_X + CUBE_POS_X) as usize
    }

    /// Combines every unit's `value` (sum, or maximum when `max`) through `partial`, a shared
    /// buffer of one slot per unit, and hands the result to every unit.
    #[cube]
    fn cube_reduce<F: Float>(partial: &mut Shared<[F]>, value: F, #[comptime] max: bool) -> F {
        let unit = UNIT_POS_X as usize;
        partial[unit] = value;
        sync_cube();
        let mut stride = (CUBE_DIM_X / 2) as usize;
        while stride > 0 {
            if unit < stride {
                if max {
                    partial[unit] = F::max(partial[unit], partial[unit + stride]);
                } else {
                    partial[unit] = partial[unit] + partial[unit + stride];
                }
            }
            sync_cube();
            stride /= 2;
        }
        let result = partial[0];
        // Every unit has read the result before the buffer serves the next reduction.
        sync_cube();
        result
    }

    #[cube(launch)]
    pub(super) fn gelu_tanh_kernel<F: Float>(
        x: &Tensor<F>,
        bias: &Tensor<F>,
        out: &mut Tensor<F>,
        width: u32,
        #[comptime] biased: bool,
        #[define(F)] _dtype: ElemType,
    ) {
        if ABSOLUTE_POS >= out.len() {
            terminate!();
        }
        let mut value = x[ABSOLUTE_POS];
        if biased {
            value += bias[ABSOLUTE_POS % width as usize];
        }
        // √(2/π)·(x + 0.044715·x³)
        let inner = F::new(0.797_884_6) * (value + F::new(0.044715) * value * value * value);
        out[ABSOLUTE_POS] = F::new(0.5) * value * (F::new(1.0) + inner.tanh());
    }

    #[cube(launch)]
    pub(super) fn add_bias_residual_kernel<F: Float>(
        branch: &Tensor<F>,
        bias: &Tensor<F>,
        residual: &Tensor<F>,
        out: &mut Tensor<F>,
        width: u32,
        #[define(F)] _dtype: ElemType,
    ) {
        if ABSOLUTE_POS >= out.len() {
            terminate!();
        }
        let biased = branch[ABSOLUTE_POS] + bias[ABSOLUTE_POS % width as usize];
        out[ABSOLUTE_POS] = residual[ABSOLUTE_POS] + biased;
    }

    #[cube(launch)]
    pub(super) fn softmax_kernel<F: Float>(
        x: &Tensor<F>,
        out: &mut Tensor<F>,
        rows: u32,
        width: u32,
        #[comptime] units: u32,
        #[define(F)] _dtype: ElemType,
    ) {
        let row = cube_row();
        if row >= rows as usize {
            terminate!();
        }
        let width = width as usize;
        let base = row * width;
        let mut partial = Shared::new_slice(units as usize);

        let mut local_max = F::new(f32::MIN);
        let mut j = UNIT_POS_X as usize;
        while j < width {
            local_max = F::max(local_max, x[base + j]);
            j += units as usize;
        }
        let row_max = cube_reduce::<F>(&mut partial, local_max, true);

        let mut local_sum = F::new(0.0);
        let mut j = UNIT_POS_X as usize;
        while j < width {
            let e = (x[base + j] - row_max).exp();
            out[base + j] = e;
            local_sum += e;
            j += units as usize;
        }
        let inverse_sum = F::new(1.0) / cube_reduce::<F>(&mut partial, local_sum, false);

        let mut j = UNIT_POS_X as usize;
        while j < width {
            out[base + j] *= inverse_sum;
            j += units as usize;
        }
    }

    #[cube(launch)]
    /// With `summed`, the row normalised is `x + (branch + bias)`, written to `sum` in the
    /// first pass and read back from there (each unit reads only what it wrote).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn layer_norm_kernel<F: Float>(
        x: &Tensor<F>,
        branch: &Tensor<F>,
        bias: &Tensor<F>,
        sum: &mut Tensor<F>,
        gamma: &Tensor<F>,
        beta: &Tensor<F>,
        out: &mut Tensor<F>,
        rows: u32,
        width: u32,
        epsilon: f32,
        #[comptime] summed: bool,
        #[comptime] units: u32,
        #[define(F)] _dtype: ElemType,
    ) {
        let row = cube_row();
        if row >= rows as usize {
            terminate!();
        }
        let count = F::cast_from(width);
        let width = width as usize;
        let base = row * width;
        let mut partial = Shared::new_slice(units as usize);

        let mut local_sum = F::new(0.0);
        let mut j = UNIT_POS_X as usize;
        while j < width {
            let mut value = x[base + j];
            if summed {
                value += branch[base + j] + bias[j * bias.stride(0)];
                sum[base + j] = value;
            }
            local_sum += value;
            j += units as usize;
        }
        let mean = cube_reduce::<F>(&mut partial, local_sum, false) / count;

        // The variance of the centred values (two passes, as PyTorch computes it).
        let mut local_squares = F::new(0.0);
        let mut j = UNIT_POS_X as usize;
        while j < width {
            let centred = row_value(x, sum, base + j, summed) - mean;
            local_squares += centred * centred;
            j += units as usize;
        }
        let variance = cube_reduce::<F>(&mut partial, local_squares, false) / count;
        let inverse_std = F::new(1.0) / (variance + F::cast_from(epsilon)).sqrt();

        let mut j = UNIT_POS_X as usize;
        while j < width {
            let normalised = (row_value(x, sum, base + j, summed) - mean) * inverse_std;
            out[base + j] = normalised * gamma[j * gamma.stride(0)] + beta[j * beta.stride(0)];
            j += units as usize;
        }
    }

    /// The LayerNorm kernel's input at `index`: the sum it wrote, or `x`.
    #[cube]
    fn row_value<F: Float>(
        x: &Tensor<F>,
        sum: &mut Tensor<F>,
        index: usize,
        #[comptime] summed: bool,
    ) -> F {
        if summed { sum[index] } else { x[index] }
    }

    /// One cube per (sequence, head, query) row: the row's scores go to shared memory (`keys_cap`
    /// slots, `keys` rounded up to a power of two so that few sizes compile), then their softmax,
    /// then the weighted sum of the values, by groups of units over interleaved keys.
    #[cube(launch)]
    pub(super) fn attention_kernel<F: Float, B: Numeric>(
        q: &Tensor<F>,
        k: &Tensor<F>,
        v: &Tensor<F>,
        hide: &Tensor<B>,
        out: &mut Tensor<F>,
        rows: u32,
        scale: f32,
        #[comptime] keys_cap: u32,
        #[comptime] units: u32,
        #[define(F, B)] _dtypes: [ElemType; 2],
    ) {
        let row = cube_row();
        if row >= rows as usize {
            terminate!();
        }
        let heads = q.shape(1);
        let queries = q.shape(2);
        let head_dim = q.shape(3);
        let keys = k.shape(2);
        let query = row % queries;
        let head = (row / queries) % heads;
        let seq = row / (queries * heads);

        let q_base = seq * q.stride(0) + head * q.stride(1) + query * q.stride(2);
        let k_base = seq * k.stride(0) + head * k.stride(1);
        let v_base = seq * v.stride(0) + head * v.stride(1);
        let hide_base = seq * hide.stride(0) + head * hide.stride(1) + query * hide.stride(2);

        let mut scores = Shared::new_slice(keys_cap as usize);
        let mut partial = Shared::new_slice(units as usize);

        let mut local_max = F::new(f32::MIN);
        let mut j = UNIT_POS_X as usize;
        while j < keys {
            let mut score = F::new(f32::MIN);
            if hide[hide_base + j * hide.stride(3)] == B::from_int(0) {
                let mut dot = F::new(0.0);
                let key = k_base + j * k.stride(2);
                for d in 0..head_dim {
                    dot += q[q_base + d * q.stride(3)] * k[key + d * k.stride(3)];
                }
                score = dot * F::cast_from(scale);
            }
            scores[j] = score;
            local_max = F::max(local_max, score);
            j += units as usize;
        }
        let row_max = cube_reduce::<F>(&mut partial, local_max, true);

        let mut local_sum = F::new(0.0);
        let mut j = UNIT_POS_X as usize;
        while j < keys {
            let e = (scores[j] - row_max).exp();
            scores[j] = e;
            local_sum += e;
            j += units as usize;
        }
        let inverse_sum = F::new(1.0) / cube_reduce::<F>(&mut partial, local_sum, false);

        // out[seq, query, head·head_dim + d]: the units split into `groups` of `head_dim`, each
        // group summing every groups-th key, so that all units work on a long row (one unit
        // per column would leave most idle and walk every key alone).
        let out_base = (seq * queries + query) * heads * head_dim + head * head_dim;
        let unit = UNIT_POS_X as usize;
        let groups = units as usize / head_dim;
        if groups > 1 {
            if unit < groups * head_dim {
                let d = unit % head_dim;
                let value = v_base + d * v.stride(3);
                let mut acc = F::new(0.0);
                let mut j = unit / head_dim;
                while j < keys {
                    acc += scores[j] * v[value + j * v.stride(2)];
                    j += groups;
                }
                partial[unit] = acc;
            }
        } else {
            let mut d = unit;
            while d < head_dim {
                let value = v_base + d * v.stride(3);
                let mut acc = F::new(0.0);
                for j in 0..keys {
                    acc += scores[j] * v[value + j * v.stride(2)];
                }
                out[out_base + d] = acc * inverse_sum;
                d += units as usize;
            }
        }
        // Outside the branches: every unit meets the barrier.
        sync_cube();
        if groups > 1 && unit < head_dim {
            let mut total = F::new(0.0);
            for group in 0..groups {
                total += partial[group * head_dim + unit];
            }
            out[out_base + unit] = total * inverse_sum;
        }
    }
}
