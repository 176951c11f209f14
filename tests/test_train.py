"""The Trainer (iwae_core/train.py): on real MNIST the bound improves, resume reproduces the uninterrupted run
exactly, NaN stops it; the noise products run in the chosen precision."""

import json

import pytest
import torch

from iwae_core import checkpoint as ckpt
from iwae_core.config import ModelConfig, RunConfig, TrainConfig
from iwae_core.data import load_mnist
from iwae_core.train import Hooks, Trainer, TrainingDiverged
from support import require_data


@pytest.fixture(scope="module")
def small_mnist():
    data = load_mnist(require_data("MNIST", "raw"), download=False)
    return {**data, "train": data["train"][:5000], "valid": data["valid"][:200]}


def tiny_run(variant="iwae", **train) -> RunConfig:
    kw = dict(k=5, batch_size=50, lr=3e-3, epochs=3, eval_k=20, eval_images=200, threads=1)
    kw.update(train)
    return RunConfig(ModelConfig.for_variant(variant, hidden=(64,), z_dim=8), TrainConfig(**kw))


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["iwae", "iwae-r"])
def test_bound_improves_over_a_few_hundred_steps(small_mnist, variant, tmp_path):
    trainer = Trainer(tiny_run(variant), out=tmp_path, data=small_mnist)
    before = trainer.validation_bound()
    assert trainer.fit() == "finished" and trainer.step == 300
    after = trainer.history[-1]["valid_bound"]
    assert after > before + 100, (before, after)  # from ~-540 nats at init to well above -250
    assert trainer.history[0]["valid_bound"] < after
    model, run = ckpt.load_model(tmp_path)
    assert run.model.variant == variant
    rows = (tmp_path / "history.csv").read_text().splitlines()
    assert len(rows) == 4 and rows[0].startswith("epoch,step")


@pytest.mark.slow
def test_resume_reproduces_the_uninterrupted_run_exactly(small_mnist, tmp_path):
    run = tiny_run("iwae-r", epochs=2, lr_final=1e-4)
    full = Trainer(run, out=tmp_path / "full", data=small_mnist)
    full.fit()

    def stop_mid_epoch(trainer, metrics):
        if trainer.step == 137:
            trainer.request_stop()

    first = Trainer(run, out=tmp_path / "split", data=small_mnist, hooks=Hooks(on_step=[stop_mid_epoch]))
    assert first.fit() == "stopped" and first.step == 137
    second = Trainer(run, out=tmp_path / "split", data=small_mnist)
    assert second.resume() and second.step == 137
    assert second.fit() == "finished"
    a, b = full.model.state_dict(), second.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert full.history == [{**row, "seconds": full.history[i]["seconds"]} for i, row in enumerate(second.history)]
    sa, sb = full.optimizer.state_dict()["state"], second.optimizer.state_dict()["state"]
    assert all(torch.equal(sa[i]["exp_avg_sq"], sb[i]["exp_avg_sq"]) for i in sa)


def test_valid_every_adds_validation_points_within_epochs_and_changes_nothing_else(small_mnist, tmp_path):
    """valid_every = 30 on 2 epochs of 100 steps: a validation bound after steps 30, 60, 90, 120, 150, 180 and at
    each epoch's end (100, 200), not twice at an epoch's end; the weights, Adam's state and history.csv (one row
    per epoch) are those of the default run, which validates at the epochs' ends only, as before."""
    def trained(name, **train):
        seen = []
        hooks = Hooks(on_eval=[lambda t, m: seen.append((m["step"], m["valid_bound"]))])
        trainer = Trainer(tiny_run("iwae-r", epochs=2, **train), out=tmp_path / name, data=small_mnist, hooks=hooks)
        assert trainer.fit() == "finished" and trainer.step == 200
        return trainer, seen

    default, per_epoch = trained("default")
    often, points = trained("often", valid_every=30)
    assert [s for s, _ in per_epoch] == [100, 200]
    assert [s for s, _ in points] == [30, 60, 90, 100, 120, 150, 180, 200]
    assert dict(points)[100] == dict(per_epoch)[100] and dict(points)[200] == dict(per_epoch)[200]
    assert len({v for _, v in points}) == len(points)  # each point measures the model of its step
    a, b = default.model.state_dict(), often.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    sa, sb = default.optimizer.state_dict()["state"], often.optimizer.state_dict()["state"]
    assert all(torch.equal(sa[i]["exp_avg"], sb[i]["exp_avg"]) for i in sa)
    assert [{**r, "seconds": 0} for r in default.history] == [{**r, "seconds": 0} for r in often.history]
    assert len((tmp_path / "often" / "history.csv").read_text().splitlines()) == 3  # header + one row per epoch
    old = json.loads(often.run.to_json())
    del old["train"]["valid_every"]  # a config written before the setting existed: validates per epoch
    assert RunConfig.from_json(json.dumps(old)).train.valid_every == 0
    with pytest.raises(ValueError, match="valid_every"):
        TrainConfig(valid_every=-1)


def test_a_done_run_trains_no_further_when_resumed(small_mnist, tmp_path):
    run = tiny_run(max_steps=3)
    first = Trainer(run, out=tmp_path, data=small_mnist)
    assert first.fit() == "max_steps" and first.step == 3 and first.done
    again = Trainer(run, out=tmp_path, data=small_mnist)
    assert again.resume() and again.done
    assert again.fit() == "max_steps" and again.step == 3  # not one step past --max-steps
    assert not Trainer(tiny_run(max_steps=4), out=tmp_path / "other", data=small_mnist).done


def test_nan_stops_with_a_clear_message_and_keeps_the_last_good_checkpoint(small_mnist, tmp_path):
    run = tiny_run("iwae", epochs=1, max_steps=40)
    trainer = Trainer(run, out=tmp_path, data=small_mnist)
    trainer.fit()
    good = ckpt.read_tensors(tmp_path / "checkpoint" / "model.safetensors")

    def poison(trainer, metrics):
        if trainer.step == 45:
            with torch.no_grad():
                trainer.model.decoder.layers[0].weight_mu[0, 0] = float("nan")

    again = Trainer(tiny_run("iwae", epochs=1, max_steps=80), out=tmp_path, data=small_mnist,
                    hooks=Hooks(on_step=[poison]))
    assert again.resume()
    with pytest.raises(TrainingDiverged, match=r"step 46 .*not finite.*last good checkpoint"):
        again.fit()
    kept = ckpt.read_tensors(tmp_path / "checkpoint" / "model.safetensors")
    assert all(torch.equal(good[k], kept[k]) for k in good)
    state = json.loads((tmp_path / "checkpoint" / "trainer_state.json").read_text())
    assert state["step"] == 40


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_a_non_finite_gradient_stops_training_before_the_update(small_mnist, bad):
    """The loss is still finite when one gradient entry is NaN or inf; the check before Adam's step must stop the
    run with the weights and Adam's moments exactly as the last good step left them."""
    trainer = Trainer(tiny_run("iwae-r", max_steps=5), data=small_mnist)
    x = small_mnist["train"][:8].bernoulli()
    trainer.train_step(x)
    weights = {name: p.detach().clone() for name, p in trainer.model.named_parameters()}
    moments = [{key: value.clone() for key, value in state.items()} for state in trainer.optimizer.state.values()]
    rho = trainer.model.decoder.layers[1].weight_rho

    def poison(grad):
        grad = grad.clone()
        grad[3, 2] = bad
        return grad
    rho.register_hook(poison)
    with pytest.raises(TrainingDiverged, match="a gradient became NaN or infinite, so the weights were not updated"):
        trainer.train_step(x)
    assert all(torch.equal(p, weights[name]) for name, p in trainer.model.named_parameters())
    after = list(trainer.optimizer.state.values())
    assert all(torch.equal(a[key], b[key]) for a, b in zip(after, moments, strict=True) for key in b)
    assert trainer.step == 1


def test_resume_refuses_a_checkpoint_of_another_model(small_mnist, tmp_path):
    Trainer(tiny_run("iwae", max_steps=5), out=tmp_path, data=small_mnist).fit()
    other = Trainer(tiny_run("iwae-r", max_steps=5), out=tmp_path, data=small_mnist)
    with pytest.raises(ckpt.CheckpointError, match="other settings"):
        other.resume()


def test_lr_schedule_is_cosine_from_lr_to_lr_final(small_mnist):
    trainer = Trainer(tiny_run(lr=1e-3, lr_final=1e-4, epochs=2), data=small_mnist)
    total = trainer.total_steps
    assert trainer.lr_at(0) == pytest.approx(1e-3)
    assert trainer.lr_at(total // 2) == pytest.approx(5.5e-4, rel=1e-2)
    assert trainer.lr_at(total) == pytest.approx(1e-4)


def test_init_from_continues_a_trained_model_as_a_new_stage(small_mnist, tmp_path):
    first = Trainer(tiny_run(epochs=1), out=tmp_path / "a", data=small_mnist)
    first.fit()
    first.finish({"command": "iwae train first"})
    second = Trainer(tiny_run(epochs=1, lr=1e-3, seed=1, init_from=str(tmp_path / "a")), out=tmp_path / "b",
                     data=small_mnist)
    start = {name: p.clone() for name, p in second.model.state_dict().items()}
    trained, _ = ckpt.load_model(tmp_path / "a")
    assert all(torch.equal(start[name], p) for name, p in trained.state_dict().items())
    assert second.fit() == "finished"
    second.finish({"command": "iwae train second"})
    training = json.loads((tmp_path / "b" / "metrics.json").read_text())["training"]
    assert (training["epochs"], training["steps"]) == (2, 200)  # one epoch of 100 steps in each stage
    assert [s["command"] for s in training["stages"]] == ["iwae train first", "iwae train second"]
    assert [s["steps"] for s in training["stages"]] == [100, 100]
    assert training["stages"][1]["init_from"] == str(tmp_path / "a")
    rows = (tmp_path / "b" / "history.csv").read_text().splitlines()[1:]
    assert [r.split(",")[:2] for r in rows] == [["1", "100"], ["2", "200"]]
    assert float(rows[1].split(",")[2]) == pytest.approx(1e-3)  # the new stage's own schedule


def test_init_from_refuses_a_model_of_other_sizes(small_mnist, tmp_path):
    first = Trainer(tiny_run(max_steps=5, epochs=1), out=tmp_path / "a", data=small_mnist)
    first.fit()
    first.finish({"command": "iwae train first"})
    other = RunConfig(ModelConfig.for_variant("iwae", hidden=(32,), z_dim=8),
                      TrainConfig(k=5, batch_size=50, epochs=1, threads=1, init_from=str(tmp_path / "a")))
    with pytest.raises(ckpt.CheckpointError, match="other sizes"):
        Trainer(other, out=tmp_path / "b", data=small_mnist)


def test_trainer_puts_the_noise_products_in_the_chosen_precision():
    from iwae_core.train import Trainer

    images = torch.rand(200, 784)
    for precision, expected in (("float32", None), ("bfloat16", torch.bfloat16)):
        run = RunConfig(ModelConfig.for_variant("iwae-r", hidden=(16,), z_dim=4),
                        TrainConfig(k=2, batch_size=50, epochs=1, threads=1, noise_precision=precision))
        trainer = Trainer(run, data={"train": images, "valid": images[:100]})
        dtypes = {m.noise_dtype for m in trainer.model.modules() if hasattr(m, "noise_dtype")}
        assert dtypes == {expected}
