"""Functions with hand-written backward passes, for speed on CPU: the Bernoulli log-likelihood, the weight
KL, the random layers' products in a lower precision, and tanh and softplus (elementwise.cpp's on CPU).

Each saves passes over its largest tensors that autograd's composition of ATen ops would make (ATen's
log_sigmoid still runs a scalar loop on CPU; its tanh and softplus are fast on some CPUs and slow on others,
see tanh). Tests compare every value with a float64 reference and every backward with gradcheck.
"""

from __future__ import annotations

import math
import threading

import torch
import torch.nn.functional as F

from . import native


def _sum_of_logs(p: torch.Tensor) -> torch.Tensor:
    """sum(log(p), -1) for p in [0.5, 1], with a sixteenth of the logs (log is the slowest pass here).

    Halves of the last axis are multiplied together up to four times while it is even, so each log is
    taken of a product of up to 16 values: at least 0.5^16 = 1.5e-5, far from underflow. Each product
    adds a rounding of relative size 6e-8, as each log did, so the sum is as accurate as before.
    """
    for _ in range(4):
        n = p.shape[-1]
        if n % 2:
            break
        p = p[..., : n // 2] * p[..., n // 2:]
    return p.log_().sum(-1)


def _product_length(n: int) -> int:
    """The number m <= 16 of factors in each product of the compiled likelihood: the largest divisor of n whose
    cofactor n / m is a multiple of 16 (m = 7 for 784), else the largest divisor of n up to 16."""
    divisors = [m for m in range(16, 0, -1) if n % m == 0]
    return next((m for m in divisors if (n // m) % 16 == 0), divisors[0])


class _BernoulliLogProb(torch.autograd.Function):
    """sum_d log Bernoulli(x_d | sigmoid(l_d)) with a hand-written backward, x - sigmoid(l).

    log sigmoid(y) with y = l (2x - 1) is computed as min(y, 0) + log sigmoid(|y|) with in-place ops on
    two buffers: ATen's log_sigmoid and log1p are not vectorised on CPU and took a third of a training step.
    log sigmoid(|y|) = -log(1 + exp(-|y|)) loses at most exp(-|y|) < 1.2e-7 per term where 1 + exp(-|y|)
    rounds to 1, below float32's rounding of the sum itself. |y| is capped at 80, which changes nothing
    (sigmoid(80) rounds to 1 in float32 and float64) but keeps exp away from its slow subnormal path,
    which the large logits of a trained decoder's background pixels would hit. Float32 on CPU, elementwise.cpp
    computes the same form in one pass per row (forward 0.8-0.9 ms against 3.0 for these passes on [25, 100, 784],
    two threads of an AMD EPYC), compiled too (an opaque op of the graph: 1-3 % shorter compiled steps than
    inductor's loop, docs/benchmarks.md); and, uncompiled, the gradient x - sigmoid(l). Compiled, the gradient is
    inductor's, fused with what the decoder's backward does next to it (the bias gradient, Flipout's signs, the
    cast to bfloat16).
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x, logits)
        ctx.native = not ctx.needs_input_grad[0] and _native_rows(x, logits)
        if ctx.native:  # the same form in one pass per row (elementwise.cpp)
            return torch.ops.iwae_core.bernoulli_log_prob_cpu(x, logits)
        y = logits * (2 * x - 1)
        if torch.compiler.is_compiling():
            # one generated loop over [..., m, c] blocks: each log is taken of a product of m <= 16 sigmoids
            # (>= 0.5^16) straight from y, without the buffer of sigmoids and its halvings that _sum_of_logs
            # reads back; c a multiple of 16 where x_dim allows, so the loop is vectorised without a tail
            m = _product_length(y.shape[-1])
            blocks = y.unflatten(-1, (m, -1))
            return (blocks.clamp_max(0).sum(-2) + blocks.abs().clamp_max(80).sigmoid().prod(-2).log()).sum(-1)
        sigmoid_abs = y.abs().clamp_max_(80).sigmoid_()  # log of it: -log(1 + exp(-|y|))
        return y.clamp_max_(0).sum(-1).add_(_sum_of_logs(sigmoid_abs))

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor):
        x, logits = ctx.saved_tensors
        g = grad.unsqueeze(-1)
        grad_x = grad_logits = None
        if ctx.needs_input_grad[1]:
            if torch.compiler.is_compiling():  # functional: traced, an out= into a new buffer becomes a copy
                grad_logits = ((x - torch.sigmoid(logits)) * g).sum_to_size(logits.shape)
            elif ctx.native:
                grad_logits = torch.ops.iwae_core.bernoulli_grad_logits_cpu(x, logits, grad.contiguous())
            else:  # in place: two fewer [k, batch, x_dim] buffers, 0.9 ms of a step
                p = torch.sigmoid(logits)
                grad_logits = torch.sub(x, p, out=p).mul_(g).sum_to_size(logits.shape)
        if ctx.needs_input_grad[0]:
            grad_x = (2 * logits * torch.sigmoid(logits * (1 - 2 * x)) * g).sum_to_size(x.shape)
        return grad_x, grad_logits


def _widened(low: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """low copied into a new tensor of dtype. An element-wise op mixing a bfloat16 input with a float32 input
    or output runs ATen's casting loop, 1.4-1.7x the time of this copy followed by the same op in float32
    ([2500, 784] on one thread); callers widen first and then work in place."""
    return low if low.dtype == dtype else torch.empty(low.shape, dtype=dtype, device=low.device).copy_(low)


class _FlipoutNoise(torch.autograd.Function):
    """Flipout's perturbation ((x * s) @ w^T) * r with its products in `dtype` (float32 results).

    The sign flips s and r are folded into the casts to and from `dtype`, so a lower-precision product
    costs no extra pass over the [k, batch, features] tensors; with dtype = x.dtype it is the plain
    computation. Signs are exact in every precision and the products accumulate in float32.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, s: torch.Tensor, w: torch.Tensor, r: torch.Tensor,
                dtype: torch.dtype) -> torch.Tensor:
        xs = torch.mul(x, s, out=x.new_empty(torch.broadcast_shapes(x.shape, s.shape), dtype=dtype))
        w_low = w.to(dtype)
        product = torch.matmul(xs, w_low.T)
        ctx.save_for_backward(xs, w_low, s, r)
        ctx.x_shape = x.shape
        return _widened(product, x.dtype).mul_(r)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor):
        xs, w_low, s, r = ctx.saved_tensors
        grad_r = torch.mul(grad, r, out=grad.new_empty(grad.shape, dtype=w_low.dtype))
        grad_w = grad_x = None
        if ctx.needs_input_grad[2]:
            grad_w = (grad_r.reshape(-1, grad_r.shape[-1]).T @ xs.reshape(-1, xs.shape[-1])).to(grad.dtype)
        if ctx.needs_input_grad[0]:
            grad_x = _widened(torch.matmul(grad_r, w_low), grad.dtype).mul_(s).sum_to_size(ctx.x_shape)
        return grad_x, None, grad_w, None, None


def flipout_noise(x: torch.Tensor, s: torch.Tensor, w: torch.Tensor, r: torch.Tensor,
                  dtype: torch.dtype | None = None) -> torch.Tensor:
    """((x * s) @ w^T) * r for x [..., in], signs s [..., in] and r [..., out], noise weights w [out, in];
    the products in `dtype` (default x.dtype)."""
    return _FlipoutNoise.apply(x, s, w, r, dtype or x.dtype)


class _FlipoutLinear(torch.autograd.Function):
    """A whole Flipout layer, x mu^T + bias + c + ((x * s) w^T) * r, uncompiled on CPU in float32 with the noise
    path's products in bfloat16 and the mean path's in bfloat16 (mean_low) or float32: the products, and
    flipout.cpp's four passes around them, each reading and writing the layer's tensors once (the mean path and
    flipout_noise composed made three to six passes, several through ATen's mixed-dtype loops; docs/benchmarks.md).

    x [L, B, in] (L = k, or 1 for rows shared by the k samples), mu and w [out, in], bias [out], the bias noise c
    and the signs r [1, B, out], s [1, B, in]; returns [L, B, out] float32. The same values as the composition up
    to the order of float32 additions: each product's result rounded to bfloat16 once, as there.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, mu: torch.Tensor, bias: torch.Tensor, w: torch.Tensor, c: torch.Tensor,
                s: torch.Tensor, r: torch.Tensor, mean_low: bool) -> torch.Tensor:
        rows = x.reshape(-1, x.shape[-1]).contiguous()
        x_low, xs = torch.ops.iwae_core.flipout_inputs_cpu(rows, s.contiguous(), mean_low)
        x_mean, mu_mean = (x_low, mu.to(torch.bfloat16)) if mean_low else (rows, mu)
        w_low = w.to(torch.bfloat16)
        y = torch.ops.iwae_core.flipout_output_cpu(x_mean @ mu_mean.T, xs @ w_low.T, bias.contiguous(),
                                                    c.contiguous(), r.contiguous())
        ctx.save_for_backward(x_mean, xs, mu_mean, w_low, s, r)
        ctx.mean_low, ctx.x_shape, ctx.c_shape = mean_low, x.shape, c.shape
        return y.view(*x.shape[:-1], -1)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor):
        x_mean, xs, mu_mean, w_low, s, r = ctx.saved_tensors
        g = grad.reshape(-1, grad.shape[-1]).contiguous()
        g_low, gr, grad_c = torch.ops.iwae_core.flipout_grad_output_cpu(g, r.contiguous(), ctx.mean_low)
        g_mean = g_low if ctx.mean_low else g
        grad_x = grad_mu = grad_bias = grad_w = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.ops.iwae_core.flipout_grad_input_cpu(g_mean @ mu_mean, gr @ w_low, s.contiguous())
            grad_x = grad_x.view(ctx.x_shape)
        if ctx.needs_input_grad[1]:
            grad_mu = (g_mean.T @ x_mean).to(grad.dtype)
        if ctx.needs_input_grad[2]:
            grad_bias = grad_c.sum(0)
        if ctx.needs_input_grad[3]:
            grad_w = (gr.T @ xs).to(grad.dtype)
        return grad_x, grad_mu, grad_bias, grad_w, grad_c.view(ctx.c_shape), None, None, None


def flipout_fused(x: torch.Tensor, noise_dtype: torch.dtype | None, mean_dtype: torch.dtype | None) -> bool:
    """Whether a Flipout layer on x takes flipout_linear: uncompiled (compiled, inductor fuses the same passes
    itself), float32 CPU input, the noise path in bfloat16, the mean path in bfloat16 or float32, and the package's
    kernels built."""
    return (noise_dtype == torch.bfloat16 and mean_dtype in (None, torch.float32, torch.bfloat16)
            and not torch.compiler.is_compiling() and x.device.type == "cpu" and x.dtype == torch.float32
            and native_elementwise())


def flipout_linear(x: torch.Tensor, mu: torch.Tensor, bias: torch.Tensor, w: torch.Tensor, c: torch.Tensor,
                   s: torch.Tensor, r: torch.Tensor, mean_dtype: torch.dtype | None) -> torch.Tensor:
    """x mu^T + bias + c + ((x * s) w^T) * r, the noise products in bfloat16 and the mean path's in mean_dtype (see
    _FlipoutLinear; check flipout_fused first)."""
    return _FlipoutLinear.apply(x, mu, bias, w, c, s, r, mean_dtype == torch.bfloat16)


class _SquaredInputProduct(torch.autograd.Function):
    """(x * x) @ v^T + b, the local reparameterisation's pre-activation variance, with the product in
    `dtype` (float32 result); the squaring and the casts share their passes over x."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, v: torch.Tensor, b: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        x2 = torch.mul(x, x, out=x.new_empty(x.shape, dtype=dtype))
        v_low = v.to(dtype)
        product = torch.matmul(x2, v_low.T)
        ctx.save_for_backward(x, x2, v_low)
        ctx.b_shape = b.shape
        return _widened(product, x.dtype).add_(b)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor):
        x, x2, v_low = ctx.saved_tensors
        grad_low = grad.to(v_low.dtype)
        grad_x = grad_v = grad_b = None
        if ctx.needs_input_grad[0]:
            back = torch.matmul(grad_low, v_low * 2)  # d(x^2)/dx = 2x; doubling is exact
            grad_x = _widened(back, grad.dtype).mul_(x)
        if ctx.needs_input_grad[1]:
            grad_v = (grad_low.reshape(-1, grad.shape[-1]).T @ x2.reshape(-1, x2.shape[-1])).to(grad.dtype)
        if ctx.needs_input_grad[2]:
            grad_b = grad.sum_to_size(ctx.b_shape)
        return grad_x, grad_v, grad_b, None


def squared_input_product(x: torch.Tensor, v: torch.Tensor, b: torch.Tensor,
                          dtype: torch.dtype | None = None) -> torch.Tensor:
    """(x * x) @ v^T + b for x [..., in], v [out, in], b [out]; the product in `dtype` (default x.dtype)."""
    return _SquaredInputProduct.apply(x, v, b, dtype or x.dtype)


class _GaussianKL(torch.autograd.Function):
    """KL(N(mu, sigma^2) || N(0, s^2)) summed over all entries, sigma = softplus(rho), with a hand-written
    backward: autograd's version of the closed form made about twenty passes over each weight matrix per step
    (softplus, log, squares, sums and their backward), this one about a dozen.

    KL = sum_i [log s - log sigma_i + (sigma_i^2 + mu_i^2) / (2 s^2) - 1/2]   (Blundell et al., "Weight
    Uncertainty in Neural Networks", ICML 2015, arXiv:1505.05424, with a Gaussian prior), so
    dKL/dmu = mu / s^2 and dKL/drho = (sigma / s^2 - 1 / sigma) * sigmoid(rho), as d softplus / drho = sigmoid.
    """

    @staticmethod
    def forward(ctx, mu: torch.Tensor, rho: torch.Tensor, prior_std: float) -> torch.Tensor:
        sigma = softplus(rho)
        s2 = prior_std**2
        squares = torch.dot(sigma.flatten(), sigma.flatten()) + torch.dot(mu.flatten(), mu.flatten())
        ctx.save_for_backward(mu, rho, sigma)
        ctx.s2 = s2
        return squares / (2 * s2) - torch.log(sigma).sum() + mu.numel() * (math.log(prior_std) - 0.5)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor):
        mu, rho, sigma = ctx.saved_tensors
        c = grad / ctx.s2
        grad_mu = grad_rho = None
        if ctx.needs_input_grad[0]:
            grad_mu = mu * c
        if ctx.needs_input_grad[1]:
            grad_rho = torch.mul(sigma, c).sub_(torch.reciprocal(sigma).mul_(grad)).mul_(torch.sigmoid(rho))
        return grad_mu, grad_rho, None


def gaussian_kl(mu: torch.Tensor, rho: torch.Tensor, prior_std: float) -> torch.Tensor:
    """KL(N(mu, softplus(rho)^2) || N(0, prior_std^2)) summed over all entries, in closed form (see _GaussianKL);
    mu and rho of one shape."""
    return _GaussianKL.apply(mu, rho, prior_std)


def _native_rows(x: torch.Tensor, logits: torch.Tensor) -> bool:
    """Whether elementwise.cpp computes the likelihood: float32 CPU tensors, contiguous, x the logits' last axes
    (as x [batch, D] against logits [k, batch, D])."""
    shape = list(x.shape)
    while len(shape) > 1 and shape[0] == 1:
        shape.pop(0)
    return (_takes_native(logits) and x.dtype == torch.float32
            and x.device.type == "cpu" and x.is_contiguous() and logits.is_contiguous()
            and len(shape) <= logits.dim() and list(logits.shape[logits.dim() - len(shape):]) == shape)


def bernoulli_log_prob(x: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """sum over the last axis of log Bernoulli(x | sigmoid(logits)) for binary x (see bounds.py)."""
    return _BernoulliLogProb.apply(x, logits)


class _LowPrecisionLinear(torch.autograd.Function):
    """x @ w^T + b with the three products of forward and backward in `dtype` and float32 results.

    Every product takes `dtype` inputs and accumulates in float32 (oneDNN on CPU, cuBLAS on CUDA); its
    result is rounded to `dtype` once (CPU matmul has no float32-output variant for bfloat16 inputs) and
    widened straight back, so what leaves the layer (activations, logits, gradients for Adam) is float32.
    The bias is added, and its gradient summed, in float32. Saved for backward: the low-precision copies
    of x and w (half the memory of float32 ones).
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor:
        x_low, w_low = x.to(dtype), w.to(dtype)
        product = torch.matmul(x_low, w_low.T)
        ctx.save_for_backward(x_low, w_low)
        ctx.has_bias, ctx.out_dtype = b is not None, x.dtype
        out = _widened(product, x.dtype)  # then the bias added in float32 (see _widened)
        return out.add_(b) if b is not None else out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor):
        x_low, w_low = ctx.saved_tensors
        grad_low = grad.to(w_low.dtype)
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.matmul(grad_low, w_low).to(ctx.out_dtype)
        if ctx.needs_input_grad[1]:
            grad_w = (grad_low.reshape(-1, grad.shape[-1]).T @ x_low.reshape(-1, x_low.shape[-1])).to(ctx.out_dtype)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = grad.reshape(-1, grad.shape[-1]).sum(0)
        return grad_x, grad_w, grad_b, None


def low_precision_linear(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None,
                         dtype: torch.dtype) -> torch.Tensor:
    """F.linear(x, w, b) with its products (forward and backward) in `dtype`, float32 in and out
    (see _LowPrecisionLinear); x [..., in], w [out, in], b [out] or None."""
    return _LowPrecisionLinear.apply(x, w, b, dtype)


@torch.library.custom_op("iwae_core::tanh", mutates_args=())
def _tanh_op(x: torch.Tensor) -> torch.Tensor:
    return torch.tanh(x)


@_tanh_op.register_fake
def _(x: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(x)


def _tanh_setup(ctx, inputs: tuple, output: torch.Tensor) -> None:
    ctx.save_for_backward(output)


def _tanh_backward(ctx, grad: torch.Tensor) -> torch.Tensor:
    (y,) = ctx.saved_tensors
    return torch.ops.aten.tanh_backward(grad, y)  # grad * (1 - y^2), from the saved output, in one pass


_tanh_op.register_autograd(_tanh_backward, setup_context=_tanh_setup)

_native: bool | None = None  # whether elementwise.cpp's ops are built and registered, once tried
_native_lock = threading.Lock()


def _softplus_setup(ctx, inputs: tuple, output: torch.Tensor) -> None:
    ctx.save_for_backward(inputs[0])


def _softplus_backward(ctx, grad: torch.Tensor) -> torch.Tensor:
    (x,) = ctx.saved_tensors
    return grad * torch.sigmoid(x)  # d softplus / dx = sigmoid


def native_elementwise() -> bool:
    """Whether float32 CPU tensors take elementwise.cpp's tanh, softplus and Bernoulli log-likelihood, building the
    package's kernels on the first call (see tanh). compiled.compile_loss asks before tracing, so that a compiled
    graph calls the ops without Python."""
    global _native
    if _native is None:
        with _native_lock:  # the dashboard runs its pages on several threads; the ops are registered once
            if _native is None:
                try:
                    native.load()
                except Exception:  # no compiler, a failed build: torch's functions, the same values to 2.4 ulp
                    _native = False
                else:
                    torch.library.register_fake("iwae_core::bernoulli_log_prob_cpu")(
                        lambda x, logits: logits.new_empty(logits.shape[:-1]))
                    for name, backward, setup in (("tanh_cpu", _tanh_backward, _tanh_setup),
                                                  ("softplus_cpu", _softplus_backward, _softplus_setup)):
                        torch.library.register_fake(f"iwae_core::{name}")(torch.empty_like)
                        torch.library.register_autograd(f"iwae_core::{name}", backward, setup_context=setup)
                    _native = True
    return _native


def _takes_native(x: torch.Tensor) -> bool:
    """Whether x goes to elementwise.cpp: float32 on CPU, the ops built (only looked up, not built, while
    torch.compile traces)."""
    if x.device.type != "cpu" or x.dtype != torch.float32:
        return False
    return bool(_native) if torch.compiler.is_compiling() else native_elementwise()


def tanh(x: torch.Tensor) -> torch.Tensor:
    """tanh(x); float32 CPU tensors take elementwise.cpp's (within 1.8 ulp of the correctly rounded value).

    ATen's CPU tanh took 3.3-3.7 ms on a [2500, 400] tensor on one thread of a CPU where it is slow (AMD EPYC,
    AVX-512), against 0.36 ms on one where it is fast (Intel, AMX), and its time depends on the values;
    elementwise.cpp's took 0.7-1.0 ms on the first, and inductor's own vectorised tanh 1.8 ms on the first and
    1.5 ms on the second (docs/benchmarks.md). So under compilation tanh is an opaque op of the graph either way,
    elementwise.cpp's when it is built, else ATen's through a Python custom op; its backward, grad * (1 - y^2), is
    fused by inductor."""
    if _takes_native(x):
        return torch.ops.iwae_core.tanh_cpu(x)
    return _tanh_op(x) if torch.compiler.is_compiling() else torch.tanh(x)


def softplus(x: torch.Tensor) -> torch.Tensor:
    """log(1 + e^x) (F.softplus with beta 1; sigma = softplus(rho) of every random weight); float32 CPU tensors
    take elementwise.cpp's. ATen's and inductor's both go through SLEEF's log1p, which took 9 ms per million
    entries on one thread of an AMD EPYC; elementwise.cpp's uses exp and log alone (about 2 ms). Compiled, it is an
    opaque op, its backward grad * sigmoid(x) fused by inductor."""
    return torch.ops.iwae_core.softplus_cpu(x) if _takes_native(x) else F.softplus(x)
