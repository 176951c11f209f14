"""The two readings of a random-weight IWAE (--objective bayes|mixture) and the options that set sigma's
learning: what the command line builds, what a run records, and that beta = 0 reports no KL."""

import json

import pytest

from conftest import synthetic_data
from iwae_core import checkpoint as ckpt
from iwae_core.cli import build_parser, build_run, main
from iwae_core.config import ModelConfig, RunConfig, TrainConfig
from iwae_core.train import Trainer


def run_from(*argv: str) -> RunConfig:
    return build_run(build_parser().parse_args(["train", "--out", "unused", *argv]))


def test_mixture_objective_draws_weights_per_sample_and_has_no_kl():
    run = run_from("--variant", "iwae-r", "--objective", "mixture", "--init-sigma", "0.01")
    assert run.train.objective == "mixture" and run.train.beta == 0
    assert run.model.decoder_granularity == run.model.encoder_granularity == "sample"
    assert run.model.init_sigma == 0.01
    bayes = run_from("--variant", "iwae-r")
    assert bayes.train.objective == "bayes" and bayes.train.beta == 1
    assert bayes.model.decoder_granularity == "datapoint"


def test_optimiser_options_reach_the_config():
    run = run_from("--preset", "paper", "--adam-eps", "1e-6", "--rho-adam-eps", "1e-9", "--rho-lr-scale", "2")
    assert (run.train.adam_eps, run.train.rho_adam_eps, run.train.rho_lr_scale) == (1e-6, 1e-9, 2.0)
    assert run_from("--preset", "paper").train.adam_eps == 1e-4  # the paper's eps for the means


@pytest.mark.parametrize("argv, message", [
    (["--objective", "mixture", "--beta", "1"], "--beta must be 0"),
    (["--variant", "iwae-r", "--objective", "mixture", "--decoder-granularity", "datapoint"],
     "--decoder-granularity must be 'sample'"),
    (["--init-sigma", "0"], "--init-sigma must be positive"),
    (["--rho-adam-eps", "-1"], "--rho-adam-eps must be positive"),
])
def test_contradictory_options_are_refused(tmp_path, capsys, argv, message):
    assert main(["train", *argv, "--out", str(tmp_path / "x"), "--data-dir", str(tmp_path)]) == 2
    assert message in capsys.readouterr().err


def test_old_config_reads_with_rho_sharing_the_means_eps():
    d = json.loads(RunConfig(train=TrainConfig(adam_eps=1e-4)).to_json())
    for key in ("rho_adam_eps", "rho_lr_scale", "objective"):
        del d["train"][key]
    old = RunConfig.from_json(json.dumps(d))
    assert old.train.rho_adam_eps == 1e-4 and old.train.objective == "bayes"  # how it was trained


def test_beta_zero_reports_no_kl_and_the_run_records_its_objective(tmp_path):
    run = RunConfig(ModelConfig.for_variant("iwae-r", hidden=(16,), z_dim=3, init_sigma=0.05,
                                            decoder_granularity="sample"),
                    TrainConfig(k=4, batch_size=20, epochs=1, max_steps=10, threads=1, eval_k=4, eval_images=20,
                                objective="mixture", beta=0.0))
    steps = []
    trainer = Trainer(run, out=tmp_path, data=synthetic_data())
    trainer.hooks.on_step.append(lambda t, m: steps.append(m))
    trainer.fit()
    trainer.finish()
    assert steps and all(m["kl_per_datapoint"] is None for m in steps)
    assert all(row["kl_per_datapoint"] is None for row in trainer.history)
    header, *rows = (tmp_path / "history.csv").read_text().splitlines()
    kl_column = header.split(",").index("kl_per_datapoint")
    assert rows and all(r.split(",")[kl_column] == "" for r in rows)
    training = json.loads((tmp_path / "metrics.json").read_text())["training"]
    assert training["objective"] == "mixture" and training["beta"] == 0 and training["rho_adam_eps"] == 1e-8
    _, loaded = ckpt.load_model(tmp_path)
    assert loaded.train.objective == "mixture"
