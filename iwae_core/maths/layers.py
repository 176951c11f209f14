"""BayesLinear: a linear layer whose weights are deterministic or mean-field Gaussian q(W) = N(mu, sigma^2).

Inputs and outputs are shaped [k or 1, batch, features]: a leading 1 means "the same for all k
importance samples" (e.g. the data x entering the encoder), so shared work is done once.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from . import rng
from .ops import (
    flipout_fused,
    flipout_linear,
    flipout_noise,
    gaussian_kl,
    low_precision_linear,
    softplus,
    squared_input_product,
)


def inverse_softplus(y: float) -> float:
    return y + math.log(-math.expm1(-y))


class BayesLinear(nn.Module):
    """y = x W^T + b with W, b either point estimates (random=False) or Gaussian with sigma = softplus(rho).

    How often a random weight is drawn (granularity):
      batch:     one draw for the whole call (plain reparameterisation);
      datapoint: one draw per data point, shared by its k samples (Flipout sign flips);
      sample:    an independent draw for every (sample, data point) row (local reparameterisation).
    tau tau replaces sigma by tau * sigma (0: posterior mean, 1: learned posterior).

    Flipout: Wen, Vicol, Ba, Tran and Grosse, "Flipout: Efficient Pseudo-Independent Weight Perturbations
    on Mini-Batches" (ICLR 2018, arXiv:1803.04386). Local reparameterisation: Kingma, Salimans and Welling,
    "Variational Dropout and the Local Reparameterization Trick" (NeurIPS 2015, arXiv:1506.02557).
    """

    def __init__(self, in_features: int, out_features: int, random: bool = False,
                 prior_std: float = 1.0, init_sigma: float = 1e-3) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.random, self.prior_std = random, prior_std
        bound = 1.0 / math.sqrt(in_features)
        self.weight_mu = nn.Parameter(torch.empty(out_features, in_features).uniform_(-bound, bound))
        self.bias_mu = nn.Parameter(torch.zeros(out_features))
        if random:
            rho = inverse_softplus(init_sigma)
            self.weight_rho = nn.Parameter(torch.full((out_features, in_features), rho))
            self.bias_rho = nn.Parameter(torch.full((out_features,), rho))
        # dtype of the noise path's matrix products (None: the input's); see IWAE.set_noise_precision
        self.noise_dtype: torch.dtype | None = None
        # dtype of the mean path's products (None: the input's); see IWAE.set_mean_precision
        self.mean_dtype: torch.dtype | None = None
        # which generator draws the weight noise (config.DRAWS); see IWAE.set_draws
        self.draws = "philox"

    def extra_repr(self) -> str:
        return f"{self.in_features} -> {self.out_features}, random={self.random}"

    @property
    def weight_sigma(self) -> torch.Tensor:
        return softplus(self.weight_rho)

    @property
    def bias_sigma(self) -> torch.Tensor:
        return softplus(self.bias_rho)

    def kl_divergence(self) -> torch.Tensor:
        """KL(q(W, b) || p(W, b)) in closed form; zero for a deterministic layer."""
        if not self.random:
            return self.weight_mu.new_zeros(())
        return (gaussian_kl(self.weight_mu, self.weight_rho, self.prior_std)
                + gaussian_kl(self.bias_mu, self.bias_rho, self.prior_std))

    @staticmethod
    def _linear(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
        if dtype is None or dtype == x.dtype:
            if torch.compiler.is_compiling() and x.device.type == "cpu":
                # + b, written as - (-1) b: inductor turns a product followed by "+ bias" into addmm, which on
                # CPU first copies the bias into every row of the output for the product to read back, a write
                # and a read of [k * batch, out] more (about 0.6 ms of an IWAE step on two threads); a
                # subtraction it leaves as it is, so the bias joins the loop that next reads the product (the
                # likelihood's for the decoder's last layer; before the opaque tanh, one pass in place).
                # x - (-1) b is x + b exactly. On CUDA inductor weighs addmm against the loop itself.
                return F.linear(x, w).sub(b, alpha=-1)
            return F.linear(x, w, b)
        return low_precision_linear(x, w, b, dtype)  # float32 out, products in dtype (see ops.py)

    def forward(self, x: torch.Tensor, k: int, granularity: str = "sample",
                tau: float = 1.0) -> torch.Tensor:
        """x: [k or 1, batch, in] -> [k or 1, batch, out] (always [k, ...] for granularity 'sample')."""
        if not self.random or tau == 0:
            return self._mean(x)
        if granularity == "datapoint":
            return self._flipout(x, tau)
        mean = self._mean(x)
        w_sigma = tau * self.weight_sigma
        b_sigma = tau * self.bias_sigma
        batch = x.shape[1]
        if granularity == "batch":
            w_noise = w_sigma * rng.randn_like(w_sigma, self.draws)
            b_noise = b_sigma * rng.randn_like(b_sigma, self.draws)
            # a full weight product like the mean path's, so in its precision (noise_dtype covers Flipout
            # and the local reparameterisation, as it always has)
            return mean + self._linear(x, w_noise, b_noise, self.mean_dtype)
        if granularity == "sample":
            # Local reparameterisation: exact for independent weights per row.
            var = squared_input_product(x, w_sigma**2, b_sigma**2, self._noise_low(x))
            rows = max(k, x.shape[0])
            eps = rng.randn(rows, batch, self.out_features, device=x.device, dtype=x.dtype, draws=self.draws)
            return torch.addcmul(mean, var.sqrt(), eps)
        raise ValueError(f"unknown granularity {granularity!r}; choose batch, datapoint or sample")

    def _mean(self, x: torch.Tensor) -> torch.Tensor:
        """The mean path x mu^T + b, its products in mean_dtype."""
        return self._linear(x, self.weight_mu, self.bias_mu, self.mean_dtype)

    def _noise_low(self, x: torch.Tensor) -> torch.dtype | None:
        """The noise path's product dtype where it differs from x's, else None."""
        return self.noise_dtype if self.noise_dtype not in (None, x.dtype) else None

    def _flipout(self, x: torch.Tensor, tau: float) -> torch.Tensor:
        """A 'datapoint' draw (Flipout): W_b = mu + (tau sigma * eps) * r_b s_b^T with random signs per data point.
        Three ways to the same values from the same draws: each data point's weights built (_materialize), the
        products with the passes around them fused (ops.flipout_linear), or the mean path and flipout_noise."""
        if self._materialize(x):
            return self._datapoint_weights_product(x, tau)
        w_noise, s, r, b_noise = self._datapoint_draws(x, tau * self.weight_sigma, tau * self.bias_sigma)
        low = self._noise_low(x)
        if flipout_fused(x, low, self.mean_dtype):
            return flipout_linear(x, self.weight_mu, self.bias_mu, w_noise, b_noise, s, r, self.mean_dtype)
        # out of place first: F.linear's output is a view to autograd, and in-place ops on it make
        # the backward copy whole tensors (CopySlices); the sum is a fresh tensor
        return (self._mean(x) + b_noise).add_(flipout_noise(x, s, w_noise, r, low))

    MATERIALIZED_MAX = 1 << 24  # entries of the per-data-point weights [batch, out, in] built at once (64 MB)

    def _materialize(self, x: torch.Tensor) -> bool:
        """Whether a 'datapoint' draw is computed with each data point's weights built explicitly: without
        gradients (evaluation), with several rows per data point, in float32 throughout, when they fit in
        MATERIALIZED_MAX entries. Flipout's two products per row (mean and noise paths) then become one."""
        return (not torch.is_grad_enabled() and x.shape[0] > 1 and self.mean_dtype in (None, x.dtype)
                and self.noise_dtype in (None, x.dtype)
                and x.shape[1] * self.out_features * self.in_features <= self.MATERIALIZED_MAX)

    def _datapoint_draws(self, x: torch.Tensor, w_sigma: torch.Tensor, b_sigma: torch.Tensor):
        """A 'datapoint' draw for x [k, batch, in]: weight noise sigma * eps [out, in], Flipout's random signs
        s [1, batch, in] and r [1, batch, out], and bias noise [1, batch, out]."""
        batch = x.shape[1]
        w_noise = w_sigma * rng.randn_like(w_sigma, self.draws)
        s = rng.signs(1, batch, self.in_features, device=x.device, dtype=x.dtype, draws=self.draws)
        r = rng.signs(1, batch, self.out_features, device=x.device, dtype=x.dtype, draws=self.draws)
        b_noise = b_sigma * rng.randn(1, batch, self.out_features, device=x.device, dtype=x.dtype,
                                      draws=self.draws)
        return w_noise, s, r, b_noise

    def _datapoint_weights_product(self, x: torch.Tensor, tau: float) -> torch.Tensor:
        """The 'datapoint' draw of forward's Flipout branch (the same draws, so the same outputs up to
        rounding) with W_b = mu + (tau sigma * eps) * r_b s_b^T built per data point b and each of b's rows
        multiplied by it. x: [k, batch, in] -> [k, batch, out]."""
        w_noise, s, r, b_noise = self._datapoint_draws(x, tau * self.weight_sigma, tau * self.bias_sigma)
        w = torch.addcmul(self.weight_mu, w_noise, r[0, :, :, None] * s[0, :, None, :])  # [batch, out, in]
        bias = (self.bias_mu + b_noise[0]).unsqueeze(1)  # [batch, 1, out]
        return torch.baddbmm(bias, x.transpose(0, 1), w.transpose(1, 2)).transpose(0, 1)  # [k, batch, out]
