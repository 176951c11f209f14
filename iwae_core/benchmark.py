"""`iwae bench`: speed and memory of the paper model on this machine, printed as ratios from one run
(`--json`: one JSON object on stdout, the table on stderr).

- training step (batch 100, k = 25) / the bare matrix products of an IWAE step, and / those of the
  variant's own step (a random layer has twice the products), per variant;
- IWAE-R step / IWAE step, with the Trainer's default noise-path precision and, where that is bfloat16,
  also with float32;
- the IWAE and IWAE-R steps in bf16-mixed (--precision) / the same run's float32 steps, and the bare
  products in bfloat16;
- what bars the IWAE-R bf16-mixed target (shared_work): the two steps' bare products, whose ratio is the floor of
  the steps' ratio, and the most work outside the products both may do for it to stay at 0.7, beside what they do;
- where torch.compile can run (compiled.compile_unavailable), the same four ratios with the loss compiled,
  as a long run trains by default (--compile auto; the compilation itself is done in the warm-up);
- test log-likelihood (S = 5000): images per second, and peak memory for several batch sizes, each
  measured in a fresh process so peaks do not mask each other.

Each ratio is that of two median times; beside it the bench gives the quartiles of the same ratio taken round by
round, and for the four targets (plain and compiled) whether the run meets them, misses them, or cannot tell
(the target lies between those quartiles).
"""

from __future__ import annotations

import json
import random
import statistics
import subprocess
import sys
import time

import torch

from .allocator import retain_freed_memory
from .compiled import compile_unavailable
from .config import PAPER_PRESET, ModelConfig, RunConfig, TrainConfig
from .device import noise_dtype
from .maths import rng
from .train import Trainer

BATCH, K = 100, 25
ROUND_SEED = 0  # the seed of round_times' shuffled orders, so that a run's orders repeat


def round_times(fns: dict, repeats: int, warmup: int = 3, seed: int = ROUND_SEED) -> dict:
    """Seconds of each function's call in every round ({name: [repeats]}), the functions timed in turn within
    a round so that a slow spell of a shared machine hits all of them alike and their ratios stay meaningful.

    Each round takes the functions in a new order (shuffled with `seed`): a call is slower after one that filled
    the caches with its own buffers (docs/benchmarks.md: a one-image step took twice as long after a full-size
    step), so a fixed order would charge each function for the same predecessor in every round."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times = {name: [] for name in fns}
    order, shuffler = list(fns), random.Random(seed)
    for _ in range(repeats):
        shuffler.shuffle(order)
        for name in order:
            fn = fns[name]
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return times


def medians(rounds: dict) -> dict:
    """{name: median seconds} of round_times' {name: [seconds per round]}."""
    return {name: statistics.median(ts) for name, ts in rounds.items()}


def median_times(fns: dict, repeats: int, warmup: int = 3) -> dict:
    """Median seconds per call of each function (round_times)."""
    return medians(round_times(fns, repeats, warmup))


# (name in --json, numerator, denominator, target or None): every ratio the bench reports, of two timed
# functions of the same run; a ratio is left out where one of its functions was not timed
RATIOS = (
    ("iwae_step_over_bare_matmuls", "iwae", "bare iwae", 1.3),
    ("iwae_r_step_over_iwae_step", "iwae-r", "iwae", 2.3),
    ("iwae_rrec_step_over_iwae_step", "iwae-rrec", "iwae", None),
    ("iwae_bf16_mixed_step_over_float32_step", "iwae bf16-mixed", "iwae", 0.7),
    ("iwae_r_bf16_mixed_step_over_float32_step", "iwae-r bf16-mixed", "iwae-r", 0.7),
    ("iwae_bf16_mixed_step_over_bf16_bare_matmuls", "iwae bf16-mixed", "bare iwae bfloat16", None),
    ("bare_matmuls_bfloat16_over_float32", "bare iwae bfloat16", "bare iwae", None),
    ("iwae_r_float32_noise_step_over_iwae_step", "iwae-r float32", "iwae", None),
    ("iwae_r_bf16_mixed_step_over_all_float32_step", "iwae-r bf16-mixed", "iwae-r float32", None),
    ("iwae_compiled_step_over_bare_matmuls", "iwae compiled", "bare iwae", 1.3),
    ("iwae_r_compiled_step_over_iwae_compiled_step", "iwae-r compiled", "iwae compiled", 2.3),
    ("iwae_bf16_mixed_compiled_step_over_float32_compiled_step", "iwae bf16-mixed compiled", "iwae compiled", 0.7),
    ("iwae_r_bf16_mixed_compiled_step_over_float32_compiled_step", "iwae-r bf16-mixed compiled", "iwae-r compiled",
     0.7),
    ("iwae_r_bf16_mixed_compiled_step_over_all_float32_compiled_step", "iwae-r bf16-mixed compiled",
     "iwae-r float32 compiled", None),
)


def ratios_of(times: dict) -> tuple[dict, dict]:
    """(ratio of the two functions' median times, (lower, upper) quartile of their ratio round by round) for each
    of RATIOS whose functions are in times ({name: [seconds per round]}). The quartiles show how far a ratio
    moves with the machine's noise: a target inside them is not settled by this run."""
    median, ratios, quartiles = medians(times), {}, {}
    for name, num, den, _ in RATIOS:
        if num in times and den in times:
            ratios[name] = median[num] / median[den]
            per_round = [a / b for a, b in zip(times[num], times[den], strict=True)]
            q1, _, q3 = statistics.quantiles(per_round, n=4) if len(per_round) > 1 else per_round * 3
            quartiles[name] = (q1, q3)
    return ratios, quartiles


def paper_trainer(variant: str, data: dict, **train) -> Trainer:
    """A CPU Trainer of `variant` with the paper preset on `data`, on torch's current thread count; `train` overrides
    TrainConfig's fields (precision, compile, batch_size, ...)."""
    settings = {**PAPER_PRESET["train"], "device": "cpu", "threads": torch.get_num_threads(), **train}
    run = RunConfig(model=ModelConfig.for_variant(variant, **PAPER_PRESET["model"]), train=TrainConfig(**settings))
    return Trainer(run, data=data)


def train_step_fn(variant: str, noise_precision: str = "auto", precision: str = "float32", compile: str = "off",
                  batch: int = BATCH, k: int = K):
    """One step of the Trainer itself (the paper preset: objective, KL, Adam, NaN guard) on a fixed batch of
    `batch` images with `k` samples each; with compile="on" its loss is compiled (the first call compiles it)."""
    torch.manual_seed(0)
    images = torch.rand(1000, 784)
    trainer = paper_trainer(variant, {"train": images, "valid": images[:100]}, batch_size=batch, k=k,
                            noise_precision=noise_precision, precision=precision, compile=compile)
    x = torch.bernoulli(torch.full((batch, 784), 0.13))
    return lambda: trainer.train_step(x)


def bare_matmul_fn(variant: str = "iwae", dtype: torch.dtype = torch.float32, batch: int = BATCH, k: int = K,
                   noise_dtype: torch.dtype | None = None):
    """The matrix products of one training step of `variant` in `dtype` (`batch` images, `k` samples each): per
    layer the forward product, and the weight- and input-gradient products (no input gradient for the data). A
    random layer has two of each: the mean and the noise path (Flipout in the decoder, local reparameterisation in
    the encoder), the noise path's in `noise_dtype` if given (as the float32 step multiplies it where the CPU
    multiplies bfloat16 natively)."""
    config = ModelConfig.for_variant(variant)
    random_encoder, random_decoder = config.random_encoder, config.random_decoder
    rows_enc2 = batch * k if random_encoder else batch  # a random encoder's samples differ after layer 1
    layers = [(batch, 784, 400, random_encoder, False), (rows_enc2, 400, 80, random_encoder, True),
              (batch * k, 40, 400, random_decoder, True), (batch * k, 400, 784, random_decoder, True)]
    products = []  # (a [rows, in], w [in, out], g [rows, out], input gradient or not), one per path
    for rows, n_in, n_out, is_random, input_grad in layers:
        a = torch.randn(rows, n_in, dtype=dtype)
        w = torch.randn(n_in, n_out, dtype=dtype)
        g = torch.randn(rows, n_out, dtype=dtype)
        products.append((a, w, g, input_grad))
        if is_random:
            products.append((a, w, g, input_grad) if noise_dtype is None else
                            (a.to(noise_dtype), w.to(noise_dtype), g.to(noise_dtype), input_grad))

    def step():
        for a, w, g, input_grad in products:
            a @ w  # forward
            a.T @ g  # weight gradient
            if input_grad:
                g @ w.T  # input gradient
    return step


def shared_work(times: dict, target: float = 0.7) -> dict:
    """What bars the IWAE-R bf16-mixed / float32 target, from one run's median seconds (medians' {name: s}).

    Only the products differ between the two steps, so with P_b the bf16-mixed step's bare products, P_f the
    float32 step's (its noise path as it runs it) and O the work both do outside them (the draws, sigma, the
    element-wise passes, the likelihood, Adam), the ratio is (P_b + O) / (P_f + O). It falls to P_b / P_f (the
    floor) as O vanishes, and stays at or below `target` only while O <= (target P_f - P_b) / (1 - target)
    (negative: unreachable). Returns those in ms, and each IWAE-R step's O (its median minus its products)."""
    p_b, p_f = times["bare iwae-r bfloat16"], times["bare iwae-r float32 step"]
    steps = {"iwae-r": p_f, "iwae-r bf16-mixed": p_b, "iwae-r compiled": p_f, "iwae-r bf16-mixed compiled": p_b}
    return {"products_ms": {"bf16-mixed": round(p_b * 1e3, 2), "float32": round(p_f * 1e3, 2)},
            "floor": round(p_b / p_f, 3), "target": target,
            "max_shared_ms": round((target * p_f - p_b) / (1 - target) * 1e3, 2),
            "shared_ms": {step: round((times[step] - products) * 1e3, 2)
                          for step, products in steps.items() if step in times}}


def peak_resident_mb() -> float:
    """This process's peak resident memory in MB: its own high-water mark, VmHWM, where /proc has it (Linux).
    getrusage's ru_maxrss, the fallback elsewhere, keeps on Linux the parent's resident size at the fork across
    fork and exec, so read in a fresh interpreter started by a bench that had grown past a gigabyte timing training
    steps, it gave that gigabyte whatever the interpreter itself used."""
    try:
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) / 1024 for line in status if line.startswith("VmHWM:"))
    except (OSError, StopIteration):
        import resource  # Unix only: here, not at the top, so that the module imports everywhere

        maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return maxrss / 2**20 if sys.platform == "darwin" else maxrss / 1024  # bytes there, KiB elsewhere


def eval_memory(batch_size: int, S: int, seconds: float | None = None) -> dict:
    """Peak resident memory of log_likelihood on one batch, in a fresh interpreter (peak_resident_mb). With
    `seconds`, the batch is too big to finish: the peak is read after that long (memory is bounded per chunk of
    rows)."""
    code = f"""
import json, os, threading, time, torch
from iwae_core.benchmark import peak_resident_mb
from iwae_core.config import ModelConfig
from iwae_core.maths.model import IWAE
from iwae_core.evaluate import log_likelihood
m = IWAE(ModelConfig.for_variant('iwae-r'))
x = torch.bernoulli(torch.full(({batch_size}, 784), 0.13))
base = peak_resident_mb()
def report(rate):
    peak = peak_resident_mb()
    print(json.dumps({{'base_mb': base, 'peak_mb': peak, 'images_per_s': rate}}), flush=True)
    os._exit(0)
if {seconds!r} is not None:
    threading.Timer({seconds!r}, report, args=(None,)).start()
t = time.perf_counter()
log_likelihood(m, x, S={S}, batch_size={batch_size})
report({batch_size} / (time.perf_counter() - t))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def run_benchmarks(quick: bool = False, as_json: bool = False) -> dict:
    """Time and print everything (the human-readable table); with as_json the table goes to stderr and
    stdout gets one JSON object: the ratios by name, bare product and step times in ms, eval rate and memory."""
    out = sys.stderr if as_json else sys.stdout

    def say(text: str) -> None:
        print(text, file=out, flush=True)

    repeats = 5 if quick else 30
    retain_freed_memory()  # as the Trainer and the evaluation do
    say(f"torch {torch.__version__}, {torch.get_num_threads()} threads, paper model 784-400-40, "
        f"batch {BATCH}, k {K}")
    variants = ("iwae", "iwae-rrec", "iwae-r")
    precision = str(noise_dtype("auto", torch.device("cpu")) or torch.float32).removeprefix("torch.")
    say(f"noise-path products of the random layers: {precision} (the Trainer's default, auto, on this CPU)")
    say(f"noise drawn by Philox4x32-10 (maths/rng.py), implementation: {rng.backend()}")
    fns = {**{f"bare {v}": bare_matmul_fn(v) for v in variants},
           **{f"bare {v} bfloat16": bare_matmul_fn(v, torch.bfloat16) for v in ("iwae", "iwae-r")},
           "bare iwae-r float32 step": bare_matmul_fn("iwae-r", noise_dtype=noise_dtype("auto", torch.device("cpu"))),
           **{v: train_step_fn(v) for v in variants},
           **{f"{v} bf16-mixed": train_step_fn(v, precision="bf16-mixed") for v in ("iwae", "iwae-r")}}
    if precision != "float32":
        fns["iwae-r float32"] = train_step_fn("iwae-r", noise_precision="float32")
    compiling = compile_unavailable(torch.device("cpu")) is None
    if compiling:
        for v in ("iwae", "iwae-r"):
            fns[f"{v} compiled"] = train_step_fn(v, compile="on")
            fns[f"{v} bf16-mixed compiled"] = train_step_fn(v, precision="bf16-mixed", compile="on")
        if precision != "float32":
            fns["iwae-r float32 compiled"] = train_step_fn("iwae-r", noise_precision="float32", compile="on")
    rounds = round_times(fns, repeats)
    times = medians(rounds)
    ratios, quartiles = ratios_of(rounds)
    steps = {v: times[v] for v in fns if not v.startswith("bare")}
    bare = times["bare iwae"]
    say(f"bare float32 matrix products of one IWAE step: {bare * 1e3:.1f} ms "
        f"(bfloat16: {times['bare iwae bfloat16'] * 1e3:.1f} ms); of one IWAE-R step: "
        f"{times['bare iwae-r'] * 1e3:.1f} ms (bfloat16: {times['bare iwae-r bfloat16'] * 1e3:.1f} ms)")
    labels = {"iwae-r float32": "iwae-r, float32 noise path",
              "iwae-r float32 compiled": "iwae-r, float32 noise, compiled"}
    for v, t in steps.items():
        own = times[f"bare {v.split()[0]}"]
        say(f"train step {labels.get(v, v):31s} {t * 1e3:7.1f} ms   step / IWAE bare matmuls = {t / bare:.2f}   "
            f"step / its own bare float32 matmuls ({own * 1e3:.1f} ms) = {t / own:.2f}")
    line = f"iwae-r step / iwae step = {ratios['iwae_r_step_over_iwae_step']:.2f}"
    # the float32 IWAE-R step's noise path already multiplies in bfloat16 where the CPU does so natively (auto),
    # so bf16-mixed is also timed against an IWAE-R step with every product in float32
    all_float32 = ""
    if "iwae-r float32" in steps:
        line += f" (float32 noise path: {ratios['iwae_r_float32_noise_step_over_iwae_step']:.2f})"
        all_float32 = (f"; iwae-r against a float32 step whose noise path is float32 too: "
                       f"{ratios['iwae_r_bf16_mixed_step_over_all_float32_step']:.2f}")
    say(f"{line}   iwae-rrec step / iwae step = {ratios['iwae_rrec_step_over_iwae_step']:.2f}")
    say(f"bf16-mixed step / float32 step: iwae {ratios['iwae_bf16_mixed_step_over_float32_step']:.2f}, "
        f"iwae-r {ratios['iwae_r_bf16_mixed_step_over_float32_step']:.2f} (targets <= 0.7; the float32 steps "
        f"above, the same run){all_float32}")
    if compiling:
        all_float32 = ""
        if "iwae-r float32 compiled" in steps:
            all_float32 = (f" (against a float32 step whose noise path is float32 too: "
                           f"{ratios['iwae_r_bf16_mixed_compiled_step_over_all_float32_compiled_step']:.2f})")
        say(f"compiled loss (--compile on; auto compiles runs of 5 million rows or more): iwae step / IWAE bare "
            f"matmuls = {ratios['iwae_compiled_step_over_bare_matmuls']:.2f}, iwae-r step / iwae step = "
            f"{ratios['iwae_r_compiled_step_over_iwae_compiled_step']:.2f}, bf16-mixed / float32: iwae "
            f"{ratios['iwae_bf16_mixed_compiled_step_over_float32_compiled_step']:.2f}, iwae-r "
            f"{ratios['iwae_r_bf16_mixed_compiled_step_over_float32_compiled_step']:.2f}{all_float32}")
    else:
        say(f"compiled loss: not measured ({compile_unavailable(torch.device('cpu'))})")
    say("targets: the ratio of median times, the middle half of the rounds' own ratios (a target inside it is not "
        "settled by this run), the target")
    for name, _, _, target in RATIOS:
        if target is not None and name in ratios:
            (q1, q3), verdict = quartiles[name], "met" if ratios[name] <= target else "missed"
            if q1 <= target <= q3:
                verdict = "at the line"
            say(f"  {name:60s} {ratios[name]:.3f}  ({q1:.3f}-{q3:.3f})  <= {target}: {verdict}")
    bar = shared_work(times)
    measured = ", ".join(f"{step} {ms:.1f}" for step, ms in bar["shared_ms"].items())
    limit = (f"under {bar['max_shared_ms']:.1f} ms" if bar["max_shared_ms"] >= 0 else "under none: unreachable")
    say(f"what bars the iwae-r bf16-mixed target: bare products {bar['products_ms']['bf16-mixed']:.1f} ms in "
        f"bfloat16 against {bar['products_ms']['float32']:.1f} ms as the float32 step multiplies them, so the ratio "
        f"is at least {bar['floor']:.3f}, and at most {bar['target']} only while the work both steps do outside "
        f"their products stays {limit}; each step's median minus its products, ms: {measured}")
    S = 5000
    mem = {}
    for b, seconds in ([(1, None), (100, None)] if quick else [(1, None), (100, None), (1000, 20.0),
                                                                (100_000, 20.0)]):
        mem[b] = m = eval_memory(b, S, seconds)
        rate = f"{m['images_per_s']:.2f} images/s" if m["images_per_s"] else f"stopped after {seconds:.0f} s"
        say(f"test LL S={S}, iwae-r, batch {b:>6}: peak RSS {m['peak_mb']:7.0f} MB "
            f"(+{m['peak_mb'] - m['base_mb']:.0f} MB over the loaded interpreter), {rate}")
    result = {
        "torch": torch.__version__, "threads": torch.get_num_threads(), "quick": quick, "repeats": repeats,
        "draws": rng.backend(),
        "round_order": f"shuffled each round, seed {ROUND_SEED}",  # before 2026-12-02: one fixed order
        "noise_precision": precision, "ratios": {name: round(r, 3) for name, r in ratios.items()},
        "ratio_quartiles": {name: [round(q1, 3), round(q3, 3)] for name, (q1, q3) in quartiles.items()},
        "bare_matmul_ms": {name.removeprefix("bare "): round(t * 1e3, 2) for name, t in times.items()
                           if name.startswith("bare")},
        "step_ms": {name: round(t * 1e3, 2) for name, t in steps.items()},
        "iwae_r_bf16_mixed_bar": bar,
        "eval_S": S,
        "eval_images_per_s": {str(b): m["images_per_s"] for b, m in mem.items()},
        "eval_peak_mb": {str(b): round(m["peak_mb"]) for b, m in mem.items()},
        "eval_base_mb": {str(b): round(m["base_mb"]) for b, m in mem.items()},  # the interpreter, model and input
    }
    if as_json:
        print(json.dumps(result))
    return result
