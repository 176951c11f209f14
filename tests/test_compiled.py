"""The compiled training step (iwae_core/compiled.py, Trainer --compile): it draws the same random numbers as the
plain step and trains to the same weights up to rounding; a compilation that fails falls back to the plain step
on the same draws; auto compiles only where the compilation pays back, and `on` where it cannot run is refused."""

import warnings

import pytest
import torch

from conftest import synthetic_data
from iwae_core import compiled as compiled_module
from iwae_core import train as train_module
from iwae_core.config import ModelConfig, RunConfig, TrainConfig
from iwae_core.resume import changed_settings
from iwae_core.train import Trainer
from support import require_compile

CPU = torch.device("cpu")


def tiny_trainer(compile: str, variant: str = "iwae-r", seed: int = 3, draws: str = "philox") -> Trainer:
    run = RunConfig(ModelConfig.for_variant(variant, hidden=(32,), z_dim=4, init_sigma=0.05, draws=draws),
                    TrainConfig(k=3, batch_size=20, epochs=1, max_steps=4, seed=seed, device="cpu", threads=1,
                                eval_k=5, eval_images=50, compile=compile))
    return Trainer(run, data=synthetic_data(seed=seed))


def steps(trainer: Trainer, n: int) -> list[float]:
    batches = trainer.batches.epoch()
    return [trainer.train_step(next(batches)[2])["bound"] for _ in range(n)]


def run_steps(compile: str, n: int = 4, draws: str = "philox") -> tuple[Trainer, list[float], torch.Tensor]:
    """A tiny trainer after n steps (its seed sets the process's generator), its bounds, and the generator's next
    draws: equal next draws mean the steps drew the same amount of random numbers."""
    trainer = tiny_trainer(compile, draws=draws)
    bounds = steps(trainer, n)
    return trainer, bounds, torch.rand(5)


@pytest.mark.slow
def test_compiled_step_draws_what_the_plain_step_draws_and_trains_alike():
    require_compile()
    # IWAE-R with its KL: Flipout in the decoder, local reparameterisation in the encoder, the hand-written ops
    plain, bounds_plain, next_plain = run_steps("off")
    fused, bounds_fused, next_fused = run_steps("on")
    assert plain.compiled_loss is None and fused.compiled_loss is not None and "compiled" in fused.compile_note
    assert torch.equal(next_fused, next_plain)  # the same draws, through torch's generator
    # the same numbers up to the fused loops' float32 rounding (the bounds are about -550 nats)
    assert bounds_fused == pytest.approx(bounds_plain, rel=1e-5)
    # and the same gradients, from one state on one batch (after Adam's first steps the weights can differ by
    # up to 2 lr where a gradient is near zero: Adam's step is about lr * sign(gradient) there)
    x = plain.valid[:20]
    gradients = []
    for trainer, loss_fn in ((plain, plain.loss), (fused, fused.compiled_loss)):
        trainer.model.load_state_dict(tiny_trainer("off").model.state_dict())
        trainer.optimizer.zero_grad(set_to_none=True)
        torch.manual_seed(5)
        loss_fn(x)[0].backward()
        gradients.append([p.grad.clone() for p in trainer.model.parameters()])
    # log w near -550 nats is rounded to 6e-5 in float32; the normalised importance weights carry a rounding of
    # that size (relative) into every gradient, so two orders of summation agree to about 1e-4, not better. A rho's
    # gradient is a sum of terms proportional to the draws eps, of either sign, so it is small beside its terms
    # and carries their rounding several times over: over seeds 5-7 the rho gradients differed by up to 1.4e-3
    # (relative), the means' by up to 2e-4
    for (name, _), g_plain, g_fused in zip(plain.model.named_parameters(), *gradients, strict=True):
        tolerance = 3e-3 if name.endswith("_rho") else 1e-3
        assert (g_fused - g_plain).norm() <= tolerance * g_plain.norm(), name


@pytest.mark.slow
def test_a_model_drawing_with_torchs_generator_compiles_and_draws_what_its_plain_step_draws():
    """Models saved before Philox draw with torch.randn and randint (ModelConfig.draws = torch); resumed with
    --compile they must compile (not fall back) and draw as the plain step does."""
    require_compile()
    plain, bounds_plain, next_plain = run_steps("off", n=2, draws="torch")
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # a fallback to the plain step warns
        fused, bounds_fused, next_fused = run_steps("on", n=2, draws="torch")
    assert fused.compiled_loss is not None and "not compiled" not in fused.compile_note
    assert torch.equal(next_fused, next_plain)
    assert bounds_fused == pytest.approx(bounds_plain, rel=1e-5)


def test_a_failing_compilation_falls_back_to_the_plain_step_on_the_same_draws(monkeypatch):
    def broken(fn, device):
        def call(*args):
            torch.randn(1000)  # it consumed random numbers before failing: the fallback must undo that
            raise RuntimeError("C++ compile error: inductor could not build the kernel")
        return call

    monkeypatch.setattr(train_module, "compile_loss", broken)
    monkeypatch.setattr(train_module, "check_compile_mode", lambda *a: None)
    monkeypatch.setattr(train_module, "should_compile", lambda mode, *a: (mode == "on", f"compile {mode}"))
    with pytest.warns(RuntimeWarning, match="failed.*uncompiled.*could not build"):
        failing, bounds_failing, next_failing = run_steps("on", 3)
    plain, bounds_plain, next_plain = run_steps("off", 3)
    assert bounds_failing == bounds_plain and torch.equal(next_failing, next_plain)  # bit for bit, same draws
    assert failing.compiled_loss is None and "compiling failed" in failing.compile_note
    assert plain.compile_note == "not compiled: compile off"
    for p, q in zip(failing.model.parameters(), plain.model.parameters(), strict=True):
        assert torch.equal(p, q)


def test_auto_compiles_only_where_it_pays_and_on_is_refused_where_it_cannot_run(monkeypatch):
    many, few = compiled_module.COMPILE_MIN_ROWS, compiled_module.COMPILE_MIN_ROWS - 1
    monkeypatch.setattr(compiled_module, "cxx_compiler", lambda: "/usr/bin/g++")
    assert compiled_module.should_compile("auto", CPU, many) == (True, f"{many:,} rows (steps x batch x k) to go")
    use, why = compiled_module.should_compile("auto", CPU, few)
    assert not use and "pay back" in why
    assert compiled_module.should_compile("off", CPU, many)[0] is False
    assert compiled_module.should_compile("on", CPU, 1)[0] is True
    assert "distributed" in compiled_module.should_compile("auto", CPU, many, world_size=2)[1]
    assert "mps" in compiled_module.should_compile("auto", torch.device("mps"), many)[1]
    monkeypatch.setattr(compiled_module, "cxx_compiler", lambda: None)
    use, why = compiled_module.should_compile("auto", CPU, many)
    assert not use and "no C++ compiler" in why
    with pytest.raises(ValueError, match=r"compile on: no C\+\+ compiler"):
        compiled_module.should_compile("on", CPU, many)
    with pytest.raises(ValueError, match=r"compile on: no C\+\+ compiler"):
        tiny_trainer("on")  # refused before anything runs, not at the first step


def test_the_setting_is_checked_recorded_and_may_change_on_resume(tmp_path):
    with pytest.raises(ValueError, match="compile must be one of"):
        TrainConfig(compile="yes")
    saved, asked = TrainConfig(compile="auto"), TrainConfig(compile="off")
    assert changed_settings(saved, asked) == []  # how fast a run goes, like --threads
    trainer = tiny_trainer("off")
    trainer.out = tmp_path
    trainer.fit()
    trainer.finish()
    assert trainer.compile_note.startswith("not compiled: compile off")
    import json
    assert json.loads((tmp_path / "metrics.json").read_text())["training"]["compiled"] is False
