"""DDP under torchrun: two CPU processes train one model on disjoint shards and stay in sync."""

import json
import socket
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

SCRIPT = """
import os, sys, torch
from safetensors.torch import save_file
from iwae_core.config import ModelConfig, RunConfig, TrainConfig
from iwae_core.train import Trainer
torch.manual_seed(0)
x = torch.rand(400, 784) * 0.5
data = {"train": x, "valid": x[:50], "test": x[:50], "source": "synthetic"}
run = RunConfig(ModelConfig.for_variant("iwae-r", hidden=(16,), z_dim=2),
                TrainConfig(k=3, batch_size=20, epochs=1, max_steps=8, threads=1, eval_images=50, eval_k=3))
out = sys.argv[1]
t = Trainer(run, out=out, data=data)
t.fit()
assert t.world_size == 2 and len(t.batches.x) == 200
save_file({k: v.contiguous() for k, v in t.model.state_dict().items()}, f"{out}/rank{t.rank}.safetensors")
"""


@pytest.mark.slow
def test_two_processes_train_in_sync(tmp_path):
    script = tmp_path / "ddp_train.py"
    script.write_text(SCRIPT)
    out = tmp_path / "run"
    out.mkdir()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr",
                    "127.0.0.1", "--master_port", str(port), str(script), str(out)],
                   check=True, capture_output=True, text=True, timeout=300)
    a, b = load_file(out / "rank0.safetensors"), load_file(out / "rank1.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)  # gradients were averaged: the replicas agree
    written = load_file(out / "model.safetensors")  # only rank 0 writes the model folder
    assert all(torch.equal(a[k], written[k]) for k in a)
    from iwae_core.config import ModelConfig
    from iwae_core.maths.model import IWAE

    torch.manual_seed(0)
    torch.rand(400, 784)
    init = IWAE(ModelConfig.for_variant("iwae-r", hidden=(16,), z_dim=2)).state_dict()
    assert not all(torch.equal(init[k], a[k]) for k in a)  # and they did train


OBJECTIVE_SCRIPT = """
import json, sys, torch
from safetensors.torch import save_file
from iwae_core.config import ModelConfig, RunConfig, TrainConfig
from iwae_core.train import Trainer

class Recording(Trainer):
    # keeps each step's binarised batch and the random state its forward pass starts from
    def train_step(self, x):
        self.seen.append((x.clone(), torch.get_rng_state()))
        m = super().train_step(x)
        self.grads.append({n: p.grad.clone() for n, p in self.model.named_parameters()})  # all-reduced
        return m

torch.manual_seed(0)
x = torch.rand(400, 784) * 0.5
data = {"train": x, "valid": x[:50], "test": x[:50], "source": "synthetic"}
run = RunConfig(ModelConfig.for_variant(sys.argv[2], hidden=(16,), z_dim=2, init_sigma=0.05),
                TrainConfig(k=3, batch_size=10, epochs=1, max_steps=3, threads=1, eval_images=50, eval_k=3,
                            noise_precision="float32"))
t = Recording(run, data=data)
t.seen, t.grads, bounds = [], [], []
t.hooks.on_step.append(lambda tr, m: bounds.append(m["bound"]))
t.fit()
out = sys.argv[1]
tensors = {f"x{i}": xb for i, (xb, _) in enumerate(t.seen)} | {f"rng{i}": s for i, (_, s) in enumerate(t.seen)}
tensors |= {f"weight.{k}": v.contiguous() for k, v in t.model.state_dict().items()}
tensors |= {f"grad{i}.{n}": g for i, grads in enumerate(t.grads) for n, g in grads.items()}
save_file(tensors, f"{out}/rank{t.rank}.safetensors")
json.dump(bounds, open(f"{out}/rank{t.rank}.json", "w"))
"""


class _TwoStreams(torch.nn.Module):
    """The model on a double batch whose halves draw their noise from the two ranks' random states."""

    def __init__(self, model, states):
        super().__init__()
        self.model, self.states, self.step = model, states, 0

    def forward(self, x, k, **kwargs):
        half = len(x) // 2
        s0, s1 = self.states[self.step]
        self.step += 1
        torch.set_rng_state(s0)
        a = self.model(x[:half], k, **kwargs)
        torch.set_rng_state(s1)
        b = self.model(x[half:], k, **kwargs)
        return torch.cat([a, b], dim=1)


@pytest.mark.slow
def test_two_processes_optimise_the_objective_of_one_process_with_twice_the_batch(tmp_path):
    """torchrun with 2 gloo processes and batch B per process = one process with batch 2B holding both
    processes' images and noise (IWAE-R: Flipout and latent noise). Per step, within the stated tolerances
    (float32 sums in another order: the all-reduce adds two half-batch gradients, one process sums 2B):
    the one process's training bound equals the mean of the two processes' within 1e-4 nats; its gradient
    of the objective equals the processes' all-reduced gradient within 1e-4 in relative norm per tensor
    (measured: at most 3e-6; an average, not a sum, which would be off by 0.5 and which Adam alone
    would hide); the weights after 3 Adam steps agree within 1e-6."""
    variant = "iwae-r"
    from iwae_core.config import ModelConfig, RunConfig, TrainConfig
    from iwae_core.train import Trainer

    script = tmp_path / "ddp_objective.py"
    script.write_text(OBJECTIVE_SCRIPT)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr",
                    "127.0.0.1", "--master_port", str(port), str(script), str(tmp_path), variant],
                   check=True, capture_output=True, text=True, timeout=300)
    ranks = [load_file(tmp_path / f"rank{r}.safetensors") for r in (0, 1)]
    ddp_bounds = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert all(torch.equal(ranks[0][k], ranks[1][k]) for k in ranks[0] if k.startswith("weight."))

    threads = torch.get_num_threads()
    try:
        torch.manual_seed(0)
        x = torch.rand(400, 784) * 0.5
        data = {"train": x, "valid": x[:50], "test": x[:50], "source": "synthetic"}
        run = RunConfig(ModelConfig.for_variant(variant, hidden=(16,), z_dim=2, init_sigma=0.05),
                        TrainConfig(k=3, batch_size=20, epochs=1, max_steps=3, threads=1, eval_images=50, eval_k=3,
                                    noise_precision="float32"))
        one = Trainer(run, data=data)
        assert one.world_size == 1 and one.steps_per_epoch == 20  # as each of the two processes: 200 / 10
        one.net = _TwoStreams(one.model, [(ranks[0][f"rng{i}"], ranks[1][f"rng{i}"]) for i in range(3)])
        for i in range(3):
            m = one.train_step(torch.cat([ranks[0][f"x{i}"], ranks[1][f"x{i}"]]))
            assert abs(m["bound"] - (ddp_bounds[0][i] + ddp_bounds[1][i]) / 2) < 1e-4
            for n, p in one.model.named_parameters():
                g = ranks[0][f"grad{i}.{n}"]
                assert ((p.grad - g).norm() / g.norm()).item() < 1e-4, (i, n)  # measured: at most 3e-6
        for k, v in one.model.state_dict().items():
            torch.testing.assert_close(v, ranks[0][f"weight.{k}"], rtol=0, atol=1e-6)
    finally:
        torch.set_num_threads(threads)
