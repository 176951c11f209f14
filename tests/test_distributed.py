"""DDP under torchrun: two CPU processes train one model on disjoint shards and stay in sync."""

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
    from iwae_core.model import IWAE

    torch.manual_seed(0)
    torch.rand(400, 784)
    init = IWAE(ModelConfig.for_variant("iwae-r", hidden=(16,), z_dim=2)).state_dict()
    assert not all(torch.equal(init[k], a[k]) for k in a)  # and they did train
