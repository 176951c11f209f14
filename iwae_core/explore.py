"""The computations behind the dashboard views, each reproducible from a seed (no Streamlit here).

Random draws use the global torch RNG inside `torch.random.fork_rng()`, so a view never disturbs
training or another view's stream. Images are Bernoulli means shaped [..., 784].
"""

from __future__ import annotations

import torch

from .maths.model import IWAE

SIDE = 28  # images are SIDE x SIDE pixels


def _seeded(seed: int, *parts: int) -> int:
    """A seed for sub-stream `parts` of `seed`: draw d of seed s never depends on how many draws follow."""
    value = int(seed)
    for p in parts:
        value = (value * 1_000_003 + int(p) + 1) % (2**63 - 1)
    return value


def latent_draws(z_dim: int, n: int, seed: int) -> torch.Tensor:
    """n draws z ~ N(0, I) from the seed alone, so models with the same z_dim decode the same z: [n, z_dim].

    Draw i has its own seed, so asking for more draws keeps the first ones unchanged.
    """
    draws = [torch.randn(z_dim, generator=torch.Generator().manual_seed(_seeded(seed, 0, i))) for i in range(n)]
    return torch.stack(draws) if draws else torch.zeros(0, z_dim)


@torch.no_grad()
def decoder_samples(model: IWAE, z: torch.Tensor, weight_draws: int, tau: float, seed: int) -> torch.Tensor:
    """p(x|z) for each of `weight_draws` decoder draws theta_d ~ q(theta) (sigma scaled by tau): [draws, n, 784].

    Draw d has its own seed, so asking for more draws keeps the first ones unchanged.
    """
    out = []
    for d in range(weight_draws):
        with torch.random.fork_rng():
            torch.manual_seed(_seeded(seed, 1, d))
            out.append(model.sample(z, tau=tau)[0])
    return torch.stack(out)


@torch.no_grad()
def encoded_mean(model: IWAE, x: torch.Tensor, tau: float, weight_draws: int, seed: int) -> torch.Tensor:
    """E_q[z|x] of one image x [784], averaged over encoder weight draws: [z_dim]."""
    draws = weight_draws if model.config.random_encoder and tau > 0 else 1
    with torch.random.fork_rng():
        torch.manual_seed(_seeded(seed, 2))
        return model.posterior_mean(x[None], draws, tau)[0]


def prior_draw(z_dim: int, seed: int) -> torch.Tensor:
    """One z ~ p(z) from the seed, the starting point of a traversal from the prior: [z_dim]."""
    gen = torch.Generator().manual_seed(_seeded(seed, 3))
    return torch.randn(z_dim, generator=gen)


@torch.no_grad()
def traversal(model: IWAE, z0: torch.Tensor, units: list[int], offsets: torch.Tensor, tau: float,
              seed: int) -> torch.Tensor:
    """Images with latent unit u set to z0[u] + each offset (the others at z0), one row per unit:
    [units, offsets, 784]. Every row uses the same decoder weight draw (same seed), so rows differ
    only by the unit moved."""
    rows = []
    for u in units:
        with torch.random.fork_rng():
            torch.manual_seed(_seeded(seed, 4))
            rows.append(model.traverse(z0, u, z0[u] + offsets.to(z0), tau=tau))
    return torch.stack(rows) if rows else torch.zeros(0, len(offsets), model.config.x_dim)


@torch.no_grad()
def reconstruction(model: IWAE, x: torch.Tensor, tau: float, seed: int) -> torch.Tensor:
    """p(x|z) at z = E_q[z|x] for one image x [784], one weight draw of each network: [784]."""
    with torch.random.fork_rng():
        torch.manual_seed(_seeded(seed, 5))
        return model.reconstruct(x[None], tau)[0]


@torch.no_grad()
def reconstructions(model: IWAE, x: torch.Tensor, weight_draws: int, tau: float, seed: int) -> torch.Tensor:
    """p(x|z) at z = E_q[z|x] for images x [n, 784] under `weight_draws` draws of both networks' weights (one
    draw per row, shared by the row's images, so a row is one network): [draws, n, 784]. Draw d has its own
    seed, so more draws keep the first ones."""
    out = []
    for d in range(weight_draws):
        with torch.random.fork_rng():
            torch.manual_seed(_seeded(seed, 6, d))
            out.append(model.reconstruct(x, tau))
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
