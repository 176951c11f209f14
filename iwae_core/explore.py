"""The computations behind the dashboard views, each reproducible from a seed (no Streamlit here).

Random draws use seeded torch.Generator objects (never the global RNG), so a view never disturbs training or
another view's stream. Images are Bernoulli means shaped [..., 784].
"""

from __future__ import annotations

import weakref

import torch

from .maths import rng
from .maths.layers import BayesLinear
from .maths.model import IWAE, BayesMLP

SIDE = 28  # images are SIDE x SIDE pixels


def _seeded(seed: int, *parts: int) -> int:
    """A seed for sub-stream `parts` of `seed`: draw d of seed s never depends on how many draws follow."""
    value = int(seed)
    for p in parts:
        value = (value * 1_000_003 + int(p) + 1) % (2**63 - 1)
    return value


# One weight draw of a network, made as BayesLinear.forward makes it at granularity 'batch' (model.sample,
# reconstruct, traverse and posterior_mean use that granularity) but with tau * sigma computed once per view
# instead of once per draw, and with a seeded generator per draw, so draw d needs no global RNG state and equals
# what `torch.manual_seed(seed_d); net(h, 1, "batch", tau)` draws. The products stay one F.linear per draw and
# per group of rows, of the shapes the per-draw calls had: a batched matrix product (baddbmm, or more rows in one
# product) rounds differently, and the views must stay bit-identical for a link to show the same images.
_Noise = list  # per layer: (weight noise, bias noise), or None where the layer draws nothing


_SIGMAS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # layer -> ((rho, its version) x 2, sigmas)


def _sigmas(layer: BayesLinear) -> tuple[torch.Tensor, torch.Tensor]:
    """A random layer's (weight sigma, bias sigma) = softplus(rho), kept while rho is unchanged: a view's
    weights do not move, and softplus of every weight was most of a tau move's work. An in-place change of rho
    (an optimiser step, load_state_dict) bumps its version; a new tensor has another address, since the kept
    one holds on to the old memory: either recomputes."""
    rhos = (layer.weight_rho, layer.bias_rho)
    kept = _SIGMAS.get(layer)
    if kept is None or any(rho.data_ptr() != old.data_ptr() or rho._version != version
                           for rho, (old, version) in zip(rhos, kept[0], strict=True)):
        with torch.no_grad():
            kept = (tuple((rho.detach(), rho._version) for rho in rhos), (layer.weight_sigma, layer.bias_sigma))
        _SIGMAS[layer] = kept
    return kept[1]


def _scaled_sigmas(net: BayesMLP, tau: float) -> list[tuple[torch.Tensor, torch.Tensor] | None]:
    """Each layer's (tau * weight sigma, tau * bias sigma), None where it draws nothing (deterministic, or tau 0)."""
    return [tuple(tau * s for s in _sigmas(layer)) if layer.random and tau != 0 else None for layer in net.layers]


def _draw(sigmas: list, generator: torch.Generator, draws: str) -> _Noise:
    """One draw of a network's weight noise, in BayesLinear's order: each random layer's weights, then its bias,
    by the model's generator (rng.randn with `draws`)."""
    noise = []
    for s in sigmas:
        if s is None:
            noise.append(None)
            continue
        w_sigma, b_sigma = s
        w_noise = w_sigma * rng.randn(*w_sigma.shape, generator=generator, dtype=w_sigma.dtype,
                                      device=w_sigma.device, draws=draws)
        b_noise = b_sigma * rng.randn(*b_sigma.shape, generator=generator, dtype=b_sigma.dtype,
                                      device=b_sigma.device, draws=draws)
        noise.append((w_noise, b_noise))
    return noise


def _run(net: BayesMLP, h: torch.Tensor, noise: _Noise) -> torch.Tensor:
    """net(h, k, 'batch', tau) under the given weight draw: BayesLinear's operations, in its order."""
    last = len(net.layers) - 1
    for i, (layer, n) in enumerate(zip(net.layers, noise, strict=True)):
        out = layer._linear(h, layer.weight_mu, layer.bias_mu, layer.mean_dtype)
        if n is not None:
            out = out + layer._linear(h, n[0], n[1], layer.mean_dtype)
        h = net.act(out) if i < last else out
    return h


def _draws(sigmas: list, seeds: list[int], draws: str) -> list[_Noise]:
    return [_draw(sigmas, torch.Generator().manual_seed(s), draws) for s in seeds]


def _fixed(sigmas: list) -> bool:
    """Whether a network draws nothing (deterministic, or tau = 0): then every weight draw is the same."""
    return all(s is None for s in sigmas)


def _repeat(one: torch.Tensor, times: int) -> torch.Tensor:
    return one[None].repeat(times, *([1] * one.dim()))


def latent_draws(z_dim: int, n: int, seed: int) -> torch.Tensor:
    """n draws z ~ N(0, I) from the seed alone, so models with the same z_dim decode the same z: [n, z_dim].

    Draw i has its own seed, so asking for more draws keeps the first ones unchanged.
    """
    draws = [torch.randn(z_dim, generator=torch.Generator().manual_seed(_seeded(seed, 0, i))) for i in range(n)]
    return torch.stack(draws) if draws else torch.zeros(0, z_dim)


@torch.no_grad()
def decoder_samples(model: IWAE, z: torch.Tensor, weight_draws: int, tau: float, seed: int) -> torch.Tensor:
    """p(x|z) for each of `weight_draws` decoder draws theta_d ~ q(theta) (sigma scaled by tau): [draws, n, 784].

    Draw d has its own seed, so asking for more draws keeps the first ones unchanged. A decoder that draws
    nothing (deterministic, or tau = 0) is run once and its images repeated.
    """
    sigmas = _scaled_sigmas(model.decoder, tau)
    h = z.unsqueeze(0)
    if _fixed(sigmas):
        return _repeat(torch.sigmoid(_run(model.decoder, h, [None] * len(sigmas)))[0], weight_draws)
    noises = _draws(sigmas, [_seeded(seed, 1, d) for d in range(weight_draws)], model.draws)
    out = [torch.sigmoid(_run(model.decoder, h, noise))[0] for noise in noises]
    return torch.stack(out) if out else torch.zeros(0, len(z), model.config.x_dim)


def _encoded(model: IWAE, x: torch.Tensor, noise: _Noise) -> torch.Tensor:
    """The mean of q(z|x) for x [batch, 784] under one encoder weight draw: [1, batch, z_dim] (as model.encode)."""
    return _run(model.encoder, x.unsqueeze(0), noise).chunk(2, dim=-1)[0]


@torch.no_grad()
def encoded_mean(model: IWAE, x: torch.Tensor, tau: float, weight_draws: int, seed: int) -> torch.Tensor:
    """E_q[z|x] of one image x [784], averaged over encoder weight draws: [z_dim]."""
    sigmas = _scaled_sigmas(model.encoder, tau)
    draws = weight_draws if model.config.random_encoder and tau > 0 else 1
    generator = torch.Generator().manual_seed(_seeded(seed, 2))  # one stream for all draws, one after another
    means = [_encoded(model, x[None], _draw(sigmas, generator, model.draws))[0] for _ in range(draws)]
    return torch.stack(means).mean(0)[0]


def prior_draw(z_dim: int, seed: int) -> torch.Tensor:
    """One z ~ p(z) from the seed, the starting point of a traversal from the prior: [z_dim]."""
    gen = torch.Generator().manual_seed(_seeded(seed, 3))
    return torch.randn(z_dim, generator=gen)


@torch.no_grad()
def traversal(model: IWAE, z0: torch.Tensor, units: list[int], offsets: torch.Tensor, tau: float,
              seed: int) -> torch.Tensor:
    """Images with latent unit u set to z0[u] + each offset (the others at z0), one row per unit:
    [units, offsets, 784]. Every row uses the same decoder weight draw (same seed, drawn once), so rows
    differ only by the unit moved, and a row does not depend on which other units are asked for."""
    if not units:
        return torch.zeros(0, len(offsets), model.config.x_dim)
    (noise,) = _draws(_scaled_sigmas(model.decoder, tau), [_seeded(seed, 4)], model.draws)
    rows = []
    for u in units:
        z = z0.expand(len(offsets), -1).clone()
        z[:, u] = z0[u] + offsets.to(z0)
        rows.append(torch.sigmoid(_run(model.decoder, z.unsqueeze(0), noise))[0])
    return torch.stack(rows)


def _reconstructed(model: IWAE, x: torch.Tensor, enc_sigmas: list, dec_sigmas: list,
                   generator: torch.Generator | None) -> torch.Tensor:
    """p(x|z) at z = the mean of q(z|x) for x [batch, 784] under one draw of both networks (encoder first, from
    the one generator, as model.reconstruct draws them): [batch, 784]."""
    enc = _draw(enc_sigmas, generator, model.draws) if generator is not None else [None] * len(enc_sigmas)
    mean = _encoded(model, x, enc)
    dec = _draw(dec_sigmas, generator, model.draws) if generator is not None else [None] * len(dec_sigmas)
    return torch.sigmoid(_run(model.decoder, mean, dec))[0]


@torch.no_grad()
def reconstruction(model: IWAE, x: torch.Tensor, tau: float, seed: int) -> torch.Tensor:
    """p(x|z) at z = E_q[z|x] for one image x [784], one weight draw of each network: [784]."""
    generator = torch.Generator().manual_seed(_seeded(seed, 5))
    return _reconstructed(model, x[None], _scaled_sigmas(model.encoder, tau), _scaled_sigmas(model.decoder, tau),
                          generator)[0]


@torch.no_grad()
def reconstructions(model: IWAE, x: torch.Tensor, weight_draws: int, tau: float, seed: int) -> torch.Tensor:
    """p(x|z) at z = E_q[z|x] for images x [n, 784] under `weight_draws` draws of both networks' weights (one
    draw per row, shared by the row's images, so a row is one network): [draws, n, 784]. Draw d has its own
    seed, so more draws keep the first ones. Networks that draw nothing (deterministic, or tau = 0) are run
    once and the images repeated."""
    enc, dec = _scaled_sigmas(model.encoder, tau), _scaled_sigmas(model.decoder, tau)
    if _fixed(enc) and _fixed(dec):
        return _repeat(_reconstructed(model, x, enc, dec, None), weight_draws)
    out = [_reconstructed(model, x, enc, dec, torch.Generator().manual_seed(_seeded(seed, 6, d)))
           for d in range(weight_draws)]
    return torch.stack(out) if out else torch.zeros(0, len(x), model.config.x_dim)


@torch.no_grad()
def weight_maps(model: IWAE) -> dict[str, dict[str, torch.Tensor | None]]:
    """|mu|, sigma and |mu|/sigma of the first encoder and the last decoder layer, one row of 784 per hidden unit.

    encoder: unit j's incoming weights W[j, :]; decoder: unit j's outgoing weights W[:, j].
    sigma and snr are None for a deterministic layer. Each tensor is [hidden units, 784].
    """
    out = {}
    for net, layer, rows in (("encoder", model.encoder.layers[0], lambda w: w),
                             ("decoder", model.decoder.layers[-1], lambda w: w.t())):
        abs_mu = rows(layer.weight_mu.detach()).abs().contiguous()
        sigma = rows(layer.weight_sigma.detach()).contiguous() if layer.random else None
        out[net] = {"abs_mu": abs_mu, "sigma": sigma, "snr": abs_mu / sigma if sigma is not None else None}
    return out


@torch.no_grad()
def layer_sigmas(model: IWAE) -> dict[str, torch.Tensor]:
    """Every weight sigma of every random layer, flattened, keyed 'encoder.0', 'decoder.1', ..."""
    out = {}
    for net_name, net in (("encoder", model.encoder), ("decoder", model.decoder)):
        for i, layer in enumerate(net.layers):
            if layer.random:
                out[f"{net_name}.{i}"] = layer.weight_sigma.detach().flatten().clone()
    return out


def tile(images: torch.Tensor, ncol: int, pad: int = 1, fill: float = float("nan")) -> torch.Tensor:
    """Images [n, 784] (or [n, 28, 28]) laid out row by row, ncol per row, `fill` between them: [H, W].

    H = rows * (28 + pad) - pad and W = min(ncol, n) * (28 + pad) - pad. The dashboard's figures fill the
    gaps with NaN (drawn as gaps), the Train live page's sample PNG with white."""
    images = images.reshape(-1, SIDE, SIDE)
    n = len(images)
    ncol = max(1, min(ncol, n)) if n else 1
    nrow = max(1, -(-n // ncol))
    step = SIDE + pad
    out = torch.full((nrow * step - pad, ncol * step - pad), fill, dtype=images.dtype if n else torch.float32)
    for i, image in enumerate(images):
        r, c = divmod(i, ncol)
        out[r * step:r * step + SIDE, c * step:c * step + SIDE] = image
    return out
