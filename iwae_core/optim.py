"""Adam for an IWAE: the weight means and the rho parameters (sigma = softplus(rho)) in groups of their own.

Why two groups: the gradient on rho is 1e-6 to 1e-5 RMS per layer, below the paper preset's eps of 1e-4, so with
one eps Adam would move sigma at a small fraction of its rate (TrainConfig.rho_adam_eps says more). Each group
carries an lr_scale, which set_lr applies to the schedule's learning rate at every step. gradients_finite is the
Trainer's check before each step.
"""

from __future__ import annotations

import torch


def build_adam(model: torch.nn.Module, cfg, device: torch.device | None = None) -> torch.optim.Adam:
    """Adam for a model: the weight means with cfg.adam_eps, the rho parameters (sigma = softplus(rho)) in a
    group of their own with cfg.rho_adam_eps and a learning rate cfg.rho_lr_scale times the schedule's (see
    TrainConfig.rho_adam_eps for why). With the same settings for both, one group, as runs had before.
    """
    named = list(model.named_parameters())
    rho = [p for name, p in named if name.endswith("_rho")]
    means = [p for name, p in named if not name.endswith("_rho")]
    if rho and (cfg.rho_adam_eps != cfg.adam_eps or cfg.rho_lr_scale != 1):
        groups = [{"params": means, "eps": cfg.adam_eps, "lr_scale": 1.0},
                  {"params": rho, "eps": cfg.rho_adam_eps, "lr_scale": cfg.rho_lr_scale}]
    else:
        groups = [{"params": means + rho, "eps": cfg.adam_eps, "lr_scale": 1.0}]
    # fused: one kernel per step instead of a dozen passes per parameter (CPU and CUDA support it)
    fused = device is not None and device.type in ("cpu", "cuda")
    return torch.optim.Adam(groups, lr=cfg.lr, fused=fused or None)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """The schedule's learning rate for this step, times each group's lr_scale."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)


def gradients_finite(optimizer: torch.optim.Optimizer) -> bool:
    """Whether every gradient the optimizer is about to apply is finite (no NaN, no inf).

    Checked before the step, it keeps non-finite numbers out of the weights and Adam's moments: Adam turns
    finite gradients into finite updates (a gradient too large to square only makes its update 0). On CPU and
    CUDA in one fused pass over all of them, the check torch's GradScaler makes (it multiplies each gradient by
    1, which changes nothing): 0.15 ms of an IWAE step on two threads, against 0.34 ms for a sum per tensor.
    """
    grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
    if not grads:
        return True
    device = grads[0].device
    if device.type not in ("cpu", "cuda"):
        return bool(torch.stack([g.sum() for g in grads]).isfinite().all())
    found = torch.zeros((), device=device)
    torch._amp_foreach_non_finite_check_and_unscale_(grads, found, torch.ones((), device=device))
    return not found.item()
