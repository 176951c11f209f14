"""device.py's CPU mode for training steps: subnormals flushed inside the block and the thread's mode restored
after it, and a gradient step that is the same with and without it where the IWAE gradient does underflow."""

import pytest
import torch

from iwae_core.config import ModelConfig
from iwae_core.device import SMALLEST_NORMAL, flushing_subnormals, subnormals_flushed
from iwae_core.maths.bounds import iwae_bound
from iwae_core.maths.model import IWAE

needs_mode = pytest.mark.skipif(not torch.set_flush_denormal(False), reason="this CPU has no flush-to-zero mode")


@needs_mode
@pytest.mark.parametrize("before", [False, True])
def test_the_block_flushes_and_leaves_the_threads_mode_as_it_found_it(before):
    torch.set_flush_denormal(before)
    try:
        assert flushing_subnormals() == before
        with subnormals_flushed():
            assert flushing_subnormals()
            assert torch.tensor([SMALLEST_NORMAL]).div(8).item() == 0.0
        assert flushing_subnormals() == before
        with pytest.raises(RuntimeError), subnormals_flushed():  # restored on the way out of an error too
            raise RuntimeError("a step failed")
        assert flushing_subnormals() == before
    finally:
        torch.set_flush_denormal(False)
    assert torch.tensor([SMALLEST_NORMAL]).div(8).item() > 0.0  # subnormals exist again


@needs_mode
def test_the_block_flushes_in_every_thread_of_a_parallel_op():
    """The mode belongs to a CPU thread: the other threads of a parallel op must flush too, and be restored."""
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        x = torch.full((4_000_000,), SMALLEST_NORMAL / 4)  # large enough to be split across both threads
        with subnormals_flushed():
            assert (x.mul(1.0) != 0).sum().item() == 0  # was 2,000,000: the second thread's half kept
        assert (x.mul(1.0) != 0).sum().item() == len(x)  # and both threads keep subnormals again after it
    finally:
        torch.set_num_threads(threads)


def gradients(model: IWAE, x: torch.Tensor, k: int) -> tuple[list[torch.Tensor], torch.Tensor]:
    torch.manual_seed(1)
    log_w = model.log_weights(x, k)  # [k, batch]
    loss = -iwae_bound(log_w).mean()
    return torch.autograd.grad(loss, list(model.parameters())), torch.softmax(log_w.detach(), 0)


@needs_mode
@pytest.mark.parametrize("variant", ["iwae", "iwae-r"])
def test_a_step_with_underflowing_importance_weights_has_the_same_gradients_flushed(variant):
    """A decoder with large weights spreads the k log weights of an image over hundreds of nats, so most
    normalised weights are subnormal or zero, as a trained model's are: the gradients with subnormals flushed
    equal the exact ones to 1e-30 (they differ only by terms below 1.2e-38)."""
    torch.manual_seed(0)
    model = IWAE(ModelConfig.for_variant(variant, hidden=(64,), z_dim=8, init_sigma=0.01))
    with torch.no_grad():
        model.decoder.layers[-1].weight_mu.mul_(40.0)
    x = torch.bernoulli(torch.full((16, 784), 0.13))
    exact, weights = gradients(model, x, k=50)
    assert ((weights > 0) & (weights < SMALLEST_NORMAL)).any(), "no subnormal importance weight: the test shows nothing"
    with subnormals_flushed():
        flushed, _ = gradients(model, x, k=50)
    for g, f in zip(exact, flushed, strict=True):
        torch.testing.assert_close(f, g, rtol=0.0, atol=1e-30)
