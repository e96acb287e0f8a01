//! The kernels as a Burn backend extension: implemented on `Flex` with [`crate::cpu`], and on
//! `Autodiff<Flex>` with hand-written backward passes. The public functions of the crate call
//! them only for tensors on a flex device ([`runs_on`]), the one backend listed here.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind, unary};
use burn::backend::tensor::{FloatTensor, IntTensor};
use burn::backend::{Autodiff, AutodiffBackend, Backend, Dispatch, Flex, backend_extension};
use burn::prelude::*;
use burn::tensor::{Bytes, DType};
use burn_flex::{FlexTensor, Layout};

use crate::AdamWStep;
use crate::cpu;

/// Whether a tensor of `dtype` on `device` takes the fused kernels: `f32` on the flex device,
/// with or without autodiff.
pub(crate) fn runs_on(dtype: DType, device: &Device) -> bool {
    dtype == DType::F32 && device.clone().inner() == Device::flex()
}

#[backend_extension(Flex, Autodiff)]
pub trait FusedOps: Backend {
    fn gelu_tanh(x: FloatTensor<Self>) -> FloatTensor<Self>;
    fn gelu_tanh_backward(x: FloatTensor<Self>, grad: FloatTensor<Self>) -> FloatTensor<Self>;
    /// Softmax over the last dimension.
    fn softmax_last(x: FloatTensor<Self>) -> FloatTensor<Self>;
    /// The gradient of [`softmax_last`](FusedOps::softmax_last) from its output.
    fn softmax_last_backward(y: FloatTensor<Self>, grad: FloatTensor<Self>) -> FloatTensor<Self>;
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

pub(crate) fn softmax_last<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    Tensor::from_dispatch(<Dispatch as FusedOps>::softmax_last(x.into_dispatch()))
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
fn targets_i64(targets: &FlexTensor) -> Vec<i64> {
    let targets = targets.to_contiguous();
    match targets.dtype() {
        DType::I64 => targets.as_slice::<i64>().expect("contiguous").to_vec(),
        DType::I32 => targets
            .as_slice::<i32>()
            .expect("contiguous")
            .iter()
            .map(|&t| t as i64)
            .collect(),
        dtype => panic!("cross-entropy targets must be i64 or i32, got {dtype:?}"),
    }
}

fn tensor_from(values: Vec<f32>, shape: Shape) -> FlexTensor {
    FlexTensor::new(
        Bytes::from_elems(values),
        Layout::contiguous(shape),
        DType::F32,
    )
}

/// `tensor` with storage of its own, contiguous and exactly its elements, so it can be updated
/// in place: itself when it already is, else a copy.
fn owned_contiguous(tensor: FlexTensor) -> FlexTensor {
    let n = tensor.layout().num_elements();
    let exact =
        tensor.layout().contiguous_offsets() == Some((0, n)) && tensor.bytes().len() == n * 4;
    if tensor.is_unique() && exact {
        tensor
    } else {
        tensor_from(
            values(&tensor).into_owned(),
            tensor.layout().shape().clone(),
        )
    }
}

impl FusedOps for Flex {
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

    fn nll_rows(logits: FlexTensor, targets: FlexTensor) -> (FlexTensor, FlexTensor) {
        let classes = logits.layout().shape()[1];
        let targets = targets_i64(&targets);
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
        let targets = targets_i64(&targets);
        let dlogits = cpu::nll_rows_backward(
            &values(&logits),
            classes,
            &targets,
            &values(&lse),
            &values(&grad),
        );
        tensor_from(dlogits, logits.layout().shape().clone())
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

#[derive(Debug)]
struct GeluTanh;

impl<B: Backend + FusedOps> Backward<B, 1> for GeluTanh {
    /// The input: the derivative is recomputed from it.
    type State = FloatTensor<B>;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let x = ops.state;
        unary::<B, _>(ops.parents, ops.node, grads, |grad| {
            B::gelu_tanh_backward(x, grad)
        });
    }
}

#[derive(Debug)]
struct SoftmaxLast;

impl<B: Backend + FusedOps> Backward<B, 1> for SoftmaxLast {
    /// The output, which the gradient needs (and the next product usually keeps anyway).
    type State = FloatTensor<B>;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let y = ops.state;
        unary::<B, _>(ops.parents, ops.node, grads, |grad| {
            B::softmax_last_backward(y, grad)
        });
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

/// Under autodiff: the forward ops record one node each with the backward above; the backward
/// and optimizer ops run on the inner backend and return constants (not differentiable again).
impl<B: Backend + FusedOps, C: CheckpointStrategy> FusedOps for Autodiff<B, C> {
    fn gelu_tanh(x: FloatTensor<Self>) -> FloatTensor<Self> {
        let (x, guard) = x.into_parts();
        match GeluTanh.prepare::<C>([guard]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => {
                let y = B::gelu_tanh(x.clone());
                prep.finish(x, y)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::gelu_tanh(x)),
        }
    }

    fn gelu_tanh_backward(x: FloatTensor<Self>, grad: FloatTensor<Self>) -> FloatTensor<Self> {
        Self::from_inner(B::gelu_tanh_backward(Self::inner(x), Self::inner(grad)))
    }

    fn softmax_last(x: FloatTensor<Self>) -> FloatTensor<Self> {
        let (x, guard) = x.into_parts();
        let y = B::softmax_last(x);
        match SoftmaxLast.prepare::<C>([guard]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => prep.finish(y.clone(), y),
            OpsKind::UnTracked(prep) => prep.finish(y),
        }
    }

    fn softmax_last_backward(y: FloatTensor<Self>, grad: FloatTensor<Self>) -> FloatTensor<Self> {
        Self::from_inner(B::softmax_last_backward(Self::inner(y), Self::inner(grad)))
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
