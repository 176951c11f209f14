"""The IWAE: a Gaussian recognition network q(z|x; phi) and a Bernoulli generative network p(x|z; theta).

Either network may have random weights (BayesLinear). Tensors are shaped [k, batch, features].
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ModelConfig, check_draws
from . import rng
from .bounds import bernoulli_log_prob, normal_log_prob, normalized_weights
from .layers import BayesLinear
from .ops import softplus, tanh

ACTIVATIONS = {"tanh": tanh, "relu": F.relu, "softplus": softplus}


class BayesMLP(nn.Module):
    """A stack of BayesLinear layers with a nonlinearity between them (none after the last)."""

    def __init__(self, sizes: list[int], random: bool, activation: str, prior_std: float,
                 init_sigma: float) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            BayesLinear(a, b, random=random, prior_std=prior_std, init_sigma=init_sigma)
            for a, b in zip(sizes[:-1], sizes[1:], strict=True))
        self.act = ACTIVATIONS[activation]
        self.random = random

    def forward(self, h: torch.Tensor, k: int, granularity: str, tau: float) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            h = layer(h, k, granularity, tau)
            if i < len(self.layers) - 1:
                h = self.act(h)
        return h

    def kl_divergence(self) -> torch.Tensor:
        return sum(layer.kl_divergence() for layer in self.layers)


class IWAE(nn.Module):
    def __init__(self, config: ModelConfig | None = None) -> None:
        super().__init__()
        self.config = c = config or ModelConfig()
        self.encoder = BayesMLP([c.x_dim, *c.hidden, 2 * c.z_dim], c.random_encoder, c.activation,
                                c.prior_std, c.init_sigma)
        self.decoder = BayesMLP([c.z_dim, *reversed(c.hidden), c.x_dim], c.random_decoder,
                                c.activation, c.prior_std, c.init_sigma)
        self.set_draws(c.draws)

    def encode(self, x: torch.Tensor, k: int = 1, tau: float = 1.0,
               granularity: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """x: [batch, x_dim] -> mean, std of q(z|x), each [k or 1, batch, z_dim]."""
        g = granularity or self.config.encoder_granularity
        h = self.encoder(x.unsqueeze(0), k, g, tau)
        mean, pre_std = h.chunk(2, dim=-1)
        return mean, softplus(pre_std) + 1e-6

    def decode(self, z: torch.Tensor, tau: float = 1.0,
               granularity: str | None = None) -> torch.Tensor:
        """z: [k, batch, z_dim] -> Bernoulli logits [k, batch, x_dim]."""
        g = granularity or self.config.decoder_granularity
        return self.decoder(z, z.shape[0], g, tau)

    def log_weights(self, x: torch.Tensor, k: int, tau: float = 1.0, estimator: str = "iwae",
                    encoder_granularity: str | None = None, decoder_granularity: str | None = None,
                    return_z: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """log w = log p(x|z) + log p(z) - log q(z|x) for k draws per data point: [batch, x_dim] -> [k, batch].

        With estimator 'stl' or 'dreg' the parameters of q inside log q are stopped, so phi gets
        gradient only through z; 'dreg' also rescales that path by the normalised weights.
        With return_z, also the draws z ~ q(z|x) the weights were computed at: (log_w [k, batch],
        z [k, batch, z_dim]); the random draws made are the same either way.
        k and the estimator are taken as given: they are checked where they enter (TrainConfig, the CLI, the
        public functions of evaluate.py and curves.py), once, not on every call of this inner step.
        """
        mean, std = self.encode(x, k, tau, encoder_granularity)
        eps = rng.randn(k, x.shape[0], self.config.z_dim, device=x.device, dtype=x.dtype, draws=self.draws)
        z = mean + std * eps
        if estimator in ("stl", "dreg"):
            mean, std = mean.detach(), std.detach()
        logits = self.decode(z, tau, decoder_granularity)
        log_w = bernoulli_log_prob(x, logits) + normal_log_prob(z, 0.0, 1.0) - normal_log_prob(z, mean, std)
        if estimator == "dreg" and z.requires_grad:
            w = normalized_weights(log_w.detach()).unsqueeze(-1)
            z.register_hook(lambda grad: grad * w)
        return (log_w, z) if return_z else log_w

    def forward(self, x: torch.Tensor, k: int, **kwargs) -> torch.Tensor:
        """The log importance weights (see log_weights); forward exists so DDP can wrap the model."""
        return self.log_weights(x, k, **kwargs)

    def kl_divergence(self, encoder: bool = True, decoder: bool = True) -> torch.Tensor:
        """KL(q(weights) || p(weights)) of the chosen networks, in closed form."""
        kl = self._zero()
        if encoder:
            kl = kl + self.encoder.kl_divergence()
        if decoder:
            kl = kl + self.decoder.kl_divergence()
        return kl

    def set_noise_precision(self, dtype: torch.dtype | None) -> None:
        """Compute the random layers' noise-path products (Flipout's perturbation, the local
        reparameterisation's variance) in dtype; None computes them in the input's dtype."""
        for module in self.modules():
            if isinstance(module, BayesLinear):
                module.noise_dtype = dtype

    def set_mean_precision(self, dtype: torch.dtype | None) -> None:
        """Compute every layer's mean-path products (x mu^T + b, forward and backward) with dtype inputs,
        float32 accumulation and float32 results; None computes them in the input's dtype."""
        for module in self.modules():
            if isinstance(module, BayesLinear):
                module.mean_dtype = dtype

    def set_draws(self, draws: str) -> None:
        """Draw eps and every layer's weight noise with rng's Philox ("philox") or torch's own generator ("torch");
        the config's choice (ModelConfig.draws) is set at construction."""
        check_draws(draws)
        self.draws = draws
        for module in self.modules():
            if isinstance(module, BayesLinear):
                module.draws = draws

    def _zero(self) -> torch.Tensor:
        return self.encoder.layers[0].weight_mu.new_zeros(())

    @torch.no_grad()
    def sample(self, z: torch.Tensor | None = None, n: int = 64, tau: float = 1.0) -> torch.Tensor:
        """Bernoulli means p(x|z) for z ~ p(z) (or given z [n, z_dim]) from one decoder draw shared by all
        n images: [1, n, x_dim]. (More weight draws: call again; explore.decoder_samples does, seeded.)"""
        if z is None:
            ref = self._zero()
            z = rng.randn(n, self.config.z_dim, device=ref.device, dtype=ref.dtype, draws=self.draws)
        return torch.sigmoid(self.decode(z.unsqueeze(0), tau, "batch"))

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor, tau: float = 1.0) -> torch.Tensor:
        """Bernoulli means of p(x|z) at z = posterior mean of q(z|x): [batch, x_dim]."""
        mean, _ = self.encode(x, 1, tau, "batch")
        return torch.sigmoid(self.decode(mean, tau, "batch"))[0]

    @torch.no_grad()
    def traverse(self, z0: torch.Tensor, unit: int, values: torch.Tensor,
                 tau: float = 0.0) -> torch.Tensor:
        """Images along latent axis `unit` starting from z0 [z_dim], set to each of values: [len, x_dim]."""
        z = z0.expand(len(values), -1).clone()
        z[:, unit] = values.to(z)
        return torch.sigmoid(self.decode(z.unsqueeze(0), tau, "batch"))[0]

    @torch.no_grad()
    def posterior_mean(self, x: torch.Tensor, weight_draws: int = 1, tau: float = 1.0) -> torch.Tensor:
        """E_q[z|x] averaged over encoder weight draws: [batch, z_dim]."""
        means = [self.encode(x, 1, tau, "batch")[0][0] for _ in range(weight_draws)]
        return torch.stack(means).mean(0)
