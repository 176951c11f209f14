"""Trainer: Adam on (1/B) sum_b L_k(x_b) - beta KL/N, with hooks, atomic checkpoints, exact resume, NaN guard.

The device, the precision of its products and the memory check are device.py's; writing and reading a
checkpoint, what it must hold and which settings a resumed run may change are resume.py's; Adam's parameter
groups are optim.py's.
"""

from __future__ import annotations

import math
import os
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from . import checkpoint as ckpt
from . import history as history_csv
from .allocator import retain_freed_memory
from .compiled import check_compile_mode, compile_loss, should_compile
from .config import RunConfig
from .data import Batches, binarize, load_dataset
from .device import check_training_memory, matmul_dtype, noise_dtype, pick_device, subnormals_flushed
from .maths.bounds import iwae_bound, surrogate_objective
from .maths.model import IWAE
from .optim import build_adam, gradients_finite, set_lr
from .resume import read_checkpoint, read_earlier_stages, write_checkpoint
from .scale import distributed


class TrainingDiverged(RuntimeError):
    """The loss or a gradient became NaN or infinite; the weights stay as they were before that step, and the
    last good checkpoint is kept."""


@dataclass
class Hooks:
    """Callbacks the dashboard and the CLI attach to a run; each gets the trainer and a metrics dict."""

    on_step: list[Callable] = field(default_factory=list)
    on_epoch: list[Callable] = field(default_factory=list)
    on_eval: list[Callable] = field(default_factory=list)
    on_checkpoint: list[Callable] = field(default_factory=list)


class Trainer:
    def __init__(self, run: RunConfig, out: str | os.PathLike | None = None, data: dict | None = None,
                 hooks: Hooks | None = None, data_dir: str | None = None) -> None:
        self.run, self.cfg = run, run.train
        self.out = Path(out) if out else None
        self.hooks = hooks or Hooks()
        check_training_memory(run)
        self.device = pick_device(self.cfg.device)
        if self.device.type == "cpu":
            torch.set_num_threads(self.cfg.threads or os.cpu_count() or 1)
            retain_freed_memory()
        self.data = data if data is not None else load_dataset(self.cfg.dataset, data_dir)
        self.rank, self.world_size = distributed.init_from_env(self.device)
        torch.manual_seed(self.cfg.seed)  # the same initial weights in every process
        self.model = IWAE(run.model)
        # what earlier stages did (zero for a run from scratch); this run's epochs and steps count on
        self.before = {"epochs": 0, "steps": 0, "train_seconds": 0.0, "history": [], "stages": []}
        if self.cfg.init_from:
            self.before = read_earlier_stages(self.cfg.init_from, run)
            ckpt.load_state(self.model, Path(self.cfg.init_from) / "model.safetensors")
        self.model = self.model.to(self.device)
        # bf16-mixed puts the noise path in bfloat16 too; in float32 runs it follows noise_precision as before
        self.matmul_dtype = matmul_dtype(self.cfg.precision, self.device)
        self.noise_dtype = self.matmul_dtype or noise_dtype(self.cfg.noise_precision, self.device)
        self.model.set_noise_precision(self.noise_dtype)
        self.model.set_mean_precision(self.matmul_dtype)
        self.net = distributed.wrap(self.model, self.device)
        check_compile_mode(self.cfg.compile, self.device, self.world_size)
        # the loss compiled with torch.compile, where the run compiles (decided at its first step, when a resumed
        # run knows how many steps it has left; compiled.should_compile), and what was decided and why
        self.compiled_loss: Callable | None = None
        self.compile_note: str | None = None
        self._compile_tried = False
        self.optimizer = build_adam(self.model, self.cfg, self.device)
        self.batches = Batches(distributed.shard(self.data["train"]), self.cfg.batch_size,
                               seed=self.cfg.seed + self.rank)
        if len(self.batches) == 0:  # otherwise the run "finishes" at once and writes an untrained model
            raise ValueError(f"--batch-size {self.cfg.batch_size} is more than the {len(self.batches.x):,} "
                             "training images: an epoch would have no step; use a smaller --batch-size")
        if self.world_size > 1:
            torch.manual_seed(self.cfg.seed + self.rank)  # independent weight and latent noise per process
        self.n_train = len(self.data["train"])
        self.valid = binarize(self.data["valid"][: self.cfg.eval_images], seed=1234).to(self.device)
        self.step, self.epoch, self.batch_in_epoch, self.perm = 0, 0, 0, None
        self.history: list[dict] = list(self.before["history"])
        self.seconds = 0.0
        self._stop = False
        self.epoch_sums = {"bound": 0.0, "n": 0}

    # ---- schedule and objective -------------------------------------------------------------
    @property
    def steps_per_epoch(self) -> int:
        return len(self.batches)

    @property
    def total_steps(self) -> int:
        return self.cfg.epochs * self.steps_per_epoch

    @property
    def planned_steps(self) -> int:
        """The steps the run ends at: its epochs' steps, or max_steps if that comes first."""
        return self.total_steps if self.cfg.max_steps is None else min(self.total_steps, self.cfg.max_steps)

    @property
    def max_steps_reached(self) -> bool:
        return self.cfg.max_steps is not None and self.step >= self.cfg.max_steps

    @property
    def done(self) -> bool:
        """Whether the run has done its epochs or its max_steps: fit() then trains nothing more."""
        return self.epoch >= self.cfg.epochs or self.max_steps_reached

    def lr_at(self, step: int) -> float:
        if self.cfg.lr_final is None:
            return self.cfg.lr
        t = min(step / max(self.total_steps, 1), 1.0)
        return self.cfg.lr_final + 0.5 * (self.cfg.lr - self.cfg.lr_final) * (1 + math.cos(math.pi * t))

    @property
    def has_kl(self) -> bool:
        """Whether the objective has a KL term: not with beta = 0 (the mixture objective among them)."""
        return self.cfg.beta != 0

    def kl_per_datapoint(self) -> torch.Tensor:
        return self.model.kl_divergence(encoder=self.cfg.kl_encoder, decoder=True) / self.n_train

    def request_stop(self) -> None:
        """Ask the run to stop after the current step (it checkpoints first)."""
        self._stop = True

    # ---- the loop ----------------------------------------------------------------------------
    def fit(self) -> str:
        """Train until the epochs or max_steps are done or a stop is requested; returns the reason."""
        if self.max_steps_reached:  # resumed at its last step: not one step more
            return "max_steps"
        self.model.train()
        last_ckpt = time.monotonic()
        while self.epoch < self.cfg.epochs:
            for i, perm, x in self.batches.epoch(self.batch_in_epoch, self.perm):
                t0 = time.perf_counter()
                self.perm, self.batch_in_epoch = perm, i
                metrics = self.train_step(x.to(self.device))
                self.batch_in_epoch = i + 1
                self.seconds += time.perf_counter() - t0
                for hook in self.hooks.on_step:
                    hook(self, metrics)
                if self.valid_due():
                    self.validate()
                done = self.max_steps_reached
                if done and self.batch_in_epoch == self.steps_per_epoch:
                    self.end_epoch()  # the last step closed an epoch: record it before stopping
                if self._stop or done:
                    self.save_checkpoint()
                    return "stopped" if self._stop else "max_steps"
                if self.out and time.monotonic() - last_ckpt > self.cfg.checkpoint_every:
                    self.save_checkpoint()
                    last_ckpt = time.monotonic()
            self.end_epoch()
            last_ckpt = time.monotonic()
        return "finished"

    def train_step(self, x: torch.Tensor) -> dict:
        # CUDA float32 runs multiply in TF32 (tensor cores, float32 range, 10-bit mantissa) during the step
        # alone, so the validation bound and every evaluation stay in full float32
        tf32 = self.device.type == "cuda" and self.matmul_dtype is None
        if tf32:
            allow_tf32 = torch.backends.cuda.matmul.allow_tf32
            torch.backends.cuda.matmul.allow_tf32 = True
        try:
            with subnormals_flushed():  # an IWAE-R step ran 1.5x faster (see device.subnormals_flushed)
                return self._train_step(x)
        finally:
            if tf32:
                torch.backends.cuda.matmul.allow_tf32 = allow_tf32

    def loss(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(loss, bound, KL/N or None) of a batch x [batch, x_dim]: loss = -((1/B) sum_b L_k(x_b) - beta KL/N)
        (the surrogate's mean for stl and dreg) and bound = (1/B) sum_b L_k(x_b), without gradient, for the
        progress report (here, so that a compiled loss computes it in its own loops: 0.2 ms less a step on two
        threads than a logsumexp after it). The Trainer compiles this where it pays."""
        log_w = self.net(x, self.cfg.k, estimator=self.cfg.estimator)
        objective = surrogate_objective(log_w, self.cfg.estimator).mean()
        kl = self.kl_per_datapoint() if self.has_kl else None
        if kl is not None:
            objective = objective - self.cfg.beta * kl
        return -objective, iwae_bound(log_w.detach()).mean(), kl

    def decide_compile(self) -> None:
        """Compile the loss or not (compiled.should_compile, from the steps left to run); the first step calls
        this unless the caller did, e.g. to say so before a first step that spends 10-30 s compiling."""
        rows = max(self.planned_steps - self.step, 0) * self.cfg.batch_size * self.cfg.k
        use, why = should_compile(self.cfg.compile, self.device, rows, self.world_size)
        self.compile_note = f"{'compiled' if use else 'not compiled'}: {why}"
        self.compiled_loss = compile_loss(self.loss, self.device) if use else None

    def _loss_and_gradients(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """loss(x)'s (loss, bound, KL/N or None), with the gradients in .grad, through the compiled loss where the
        run compiles. The compiled loss's first step compiles it; should that fail (no working compiler, an op
        inductor cannot handle), the run warns, naming the error, and goes on uncompiled from the same random
        state."""
        if self.compile_note is None:
            self.decide_compile()
        first_compiled = self.compiled_loss is not None and not self._compile_tried
        rng = torch.random.get_rng_state() if first_compiled else None
        cuda_rng = torch.cuda.get_rng_state(self.device) if first_compiled and self.device.type == "cuda" else None
        try:
            loss, bound, kl = (self.compiled_loss or self.loss)(x)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
        except Exception as err:
            if not first_compiled:
                raise
            torch.random.set_rng_state(rng)
            if cuda_rng is not None:
                torch.cuda.set_rng_state(cuda_rng, self.device)
            self.compiled_loss = None
            self.compile_note = f"not compiled: compiling failed ({ckpt.one_line(err)})"
            warnings.warn(f"torch.compile of the training step failed, so the run goes on uncompiled: "
                          f"{ckpt.one_line(err)}", RuntimeWarning, stacklevel=2)
            return self._loss_and_gradients(x)
        self._compile_tried = self._compile_tried or first_compiled
        return loss, bound, kl

    def _train_step(self, x: torch.Tensor) -> dict:
        set_lr(self.optimizer, self.lr_at(self.step))
        loss, bound, kl = self._loss_and_gradients(x)
        # checked before the update, so the weights stay as the last good step left them
        if not math.isfinite(loss.item()):
            raise TrainingDiverged(self._diverged_message("the loss is not finite, so the weights were not updated"))
        if not gradients_finite(self.optimizer):
            raise TrainingDiverged(self._diverged_message(
                "a gradient became NaN or infinite, so the weights were not updated"))
        self.optimizer.step()
        self.step += 1
        bound = bound.item()
        self.epoch_sums["bound"] += bound
        self.epoch_sums["n"] += 1
        return {"step": self.step, "epoch": self.epoch, "batch": self.batch_in_epoch + 1,
                "steps_per_epoch": self.steps_per_epoch, "bound": bound,
                "kl_per_datapoint": None if kl is None else kl.item(),
                "lr": self.lr_at(self.step - 1)}

    def _diverged_message(self, what: str) -> str:
        if self.out and (self.out / "checkpoint").exists():
            kept = f"The last good checkpoint is kept in {self.out / 'checkpoint'}."
        else:
            kept = "No checkpoint had been written yet."
        return (f"training stopped at step {self.step + 1} (epoch {self.epoch + 1}): {what}. {kept} "
                f"Try a smaller learning rate "
                f"(now {self.lr_at(self.step):.2g}) or a smaller k.")

    @torch.no_grad()
    def validation_bound(self) -> float:
        """Mean L_k (k = eval_k) on fixed-seed binarised validation images, without touching the RNG."""
        self.model.eval()
        # in float32 whatever the training precision (the noise path as noise_precision says, as it always
        # was), so the validation bounds of float32 and bf16-mixed runs compare like for like
        self.model.set_mean_precision(None)
        self.model.set_noise_precision(noise_dtype(self.cfg.noise_precision, self.device))
        try:
            with torch.random.fork_rng(devices=[] if self.device.type == "cpu" else [self.device]):
                torch.manual_seed(4321)
                bounds = [iwae_bound(self.model.log_weights(xb, self.cfg.eval_k))
                          for xb in self.valid.split(100)]
        finally:
            self.model.set_mean_precision(self.matmul_dtype)
            self.model.set_noise_precision(self.noise_dtype)
        self.model.train()
        return torch.cat(bounds).mean().item()

    def sigma_means(self) -> tuple[float | None, float | None]:
        def mean_sigma(net):
            if not net.random:
                return None
            sig = torch.cat([torch.cat([layer.weight_sigma.flatten(), layer.bias_sigma]) for layer in net.layers])
            return sig.mean().item()
        return mean_sigma(self.model.encoder), mean_sigma(self.model.decoder)

    def valid_due(self) -> bool:
        """Whether valid_every asks for a validation bound after this step; the last step of an epoch has its
        own (end_epoch), so it is not computed twice."""
        every = self.cfg.valid_every
        return bool(every) and self.step % every == 0 and self.batch_in_epoch < self.steps_per_epoch

    def validate(self) -> float:
        """The validation bound now, within an epoch, handed to the on_eval hooks (history.csv keeps one row
        per epoch). It draws from its own seeded stream, so the training goes on exactly as without it."""
        valid = self.validation_bound()
        for hook in self.hooks.on_eval:
            hook(self, {"epoch": self.epoch, "step": self.before["steps"] + self.step, "valid_bound": valid})
        return valid

    def end_epoch(self) -> None:
        self.epoch += 1
        self.batch_in_epoch, self.perm = 0, None
        valid = self.validation_bound()
        for hook in self.hooks.on_eval:
            hook(self, {"epoch": self.epoch, "step": self.before["steps"] + self.step, "valid_bound": valid})
        n = max(self.epoch_sums["n"], 1)
        kl = self.kl_per_datapoint().item() if self.has_kl else None  # no KL in the objective: none to report
        train_bound = self.epoch_sums["bound"] / n
        enc_sigma, dec_sigma = self.sigma_means()
        row = {"epoch": self.before["epochs"] + self.epoch, "step": self.before["steps"] + self.step,
               "lr": self.lr_at(self.step), "train_bound": train_bound,
               "kl_per_datapoint": kl, "objective": train_bound - (0.0 if kl is None else self.cfg.beta * kl),
               "valid_bound": valid,
               "mean_sigma_encoder": enc_sigma, "mean_sigma_decoder": dec_sigma,
               "seconds": round(self.before["train_seconds"] + self.seconds, 2)}
        self.history.append(row)
        self.epoch_sums = {"bound": 0.0, "n": 0}
        for hook in self.hooks.on_epoch:
            hook(self, row)
        if self.out:
            self.save_checkpoint()

    # ---- checkpoints (resume.py writes and reads them) -----------------------------------------
    def save_checkpoint(self) -> None:
        """Write the model folder and DIR/checkpoint/ atomically (rank 0 only); see resume.write_checkpoint."""
        if not write_checkpoint(self):
            return
        for hook in self.hooks.on_checkpoint:
            hook(self, {"step": self.step, "epoch": self.epoch})

    def resume(self, allow_changes: bool = False) -> bool:
        """Continue from DIR/checkpoint if it exists; returns whether there was one (resume.read_checkpoint)."""
        return read_checkpoint(self, allow_changes)

    def finished_record(self) -> bool:
        """Whether metrics.json records this run's training up to its current step (finish() has run)."""
        if self.out is None:
            return False
        path = self.out / "metrics.json"
        try:
            training = ckpt.read_json_object(path).get("training") or {}
        except ckpt.CheckpointError:
            return False
        return training.get("steps") == self.before["steps"] + self.step

    def finish(self, extra_metrics: dict | None = None) -> None:
        """Write the final model folder with metrics.json describing the run (rank 0 only)."""
        if not self.out or self.rank != 0:
            return
        ckpt.save_model(self.out, self.model, self.run)
        history_csv.write(self.out / "history.csv", self.history)
        metrics_path = self.out / "metrics.json"
        metrics = ckpt.read_json_object(metrics_path)
        extra_metrics = extra_metrics or {}
        stage = {"epochs": self.epoch, "steps": self.step, "train_seconds": round(self.seconds, 1),
                 "lr": self.cfg.lr, "lr_final": self.cfg.lr_final, "batch_size": self.cfg.batch_size,
                 "init_from": self.cfg.init_from, "command": extra_metrics.get("command")}
        metrics["training"] = {
            "dataset": self.cfg.dataset, "variant": self.run.model.variant,
            "epochs": self.before["epochs"] + self.epoch, "steps": self.before["steps"] + self.step,
            "train_seconds": round(self.before["train_seconds"] + self.seconds, 1), "device": str(self.device),
            "threads": torch.get_num_threads() if self.device.type == "cpu" else None,
            "processes": self.world_size,
            "noise_precision": str(self.noise_dtype or torch.float32).removeprefix("torch."),
            "precision": "float32" if self.matmul_dtype is None else "bf16-mixed",
            "compiled": self.compiled_loss is not None,
            "objective": self.cfg.objective, "beta": self.cfg.beta, "init_sigma": self.run.model.init_sigma,
            "adam_eps": self.cfg.adam_eps, "rho_adam_eps": self.cfg.rho_adam_eps,
            "rho_lr_scale": self.cfg.rho_lr_scale,
            "source": self.data.get("source"),
            "final_valid_bound": self.history[-1]["valid_bound"] if self.history else None,
            **extra_metrics,
            "stages": self.before["stages"] + [stage]}
        ckpt.write_json(metrics_path, metrics)
