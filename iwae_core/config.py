"""Settings for models, training and evaluation as dataclasses that round-trip through JSON."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

VARIANTS = {
    # variant -> (random encoder phi, random decoder theta)
    "iwae": (False, False),
    "iwae-r": (True, True),
    "iwae-rrec": (True, False),
}
GRANULARITIES = ("batch", "datapoint", "sample")
ESTIMATORS = ("iwae", "stl", "dreg")
DATASETS = ("mnist", "omniglot")
# precision of the random layers' noise-path products in training; auto = bfloat16 on a CPU with native
# bfloat16 matrix products, float32 elsewhere (see BayesLinear and docs/cli.md)
NOISE_PRECISIONS = ("auto", "float32", "bfloat16")
# precision of a training step's matrix products: float32, or bf16-mixed (bfloat16 inputs, float32
# accumulation and results; parameters, Adam, draws and the bound stay float32); auto = bf16-mixed where the
# device multiplies bfloat16 natively (see device.matmul_dtype and docs/precision.md)
PRECISIONS = ("float32", "bf16-mixed", "auto")
# the two readings of a random-weight IWAE (see TrainConfig.objective)
OBJECTIVES = ("bayes", "mixture")
# whether the training step's loss is compiled with torch.compile; auto = where it pays (see compiled.py)
COMPILE_MODES = ("auto", "on", "off")
# how the random draws of a test log-likelihood pass are seeded (evaluate.log_likelihood_range):
#   stream:    one torch stream seeded once per pass, running through the images in order; every number
#              shipped so far was computed this way, and it stays the default.
#   per-batch: each batch of images starts its own stream, seeded from (seed, index of its first image).
# With either, a pass split across processes gives the same per-image values as in one process.
SEEDINGS = ("stream", "per-batch")
# which generator draws a model's noise (eps, weight noise, Flipout's signs) in training and evaluation: philox,
# drawn on every CPU thread (maths/rng.py), or torch's own serial one, which every model saved before philox
# existed keeps (RunConfig.from_json) so that its runs resume and its numbers reproduce exactly
DRAWS = ("philox", "torch")


@dataclass
class ModelConfig:
    """Architecture of an IWAE and which of its networks have random (Gaussian) weights."""

    x_dim: int = 784
    hidden: tuple[int, ...] = (400,)
    z_dim: int = 40
    activation: str = "tanh"
    random_encoder: bool = False
    random_decoder: bool = False
    encoder_granularity: str = "sample"
    decoder_granularity: str = "datapoint"
    prior_std: float = 1.0
    init_sigma: float = 1e-3
    draws: str = "philox"  # the generator of eps, the weight noise and Flipout's signs (DRAWS)

    def __post_init__(self) -> None:
        # a config.json is user input: sizes must be true integers (not 3.5, "3" or true), flags booleans
        if not isinstance(self.hidden, list | tuple) or not all(is_int(h) for h in self.hidden):
            raise ValueError(f"hidden must be a list of integers, got {self.hidden!r:.80}")
        self.hidden = tuple(int(h) for h in self.hidden)
        for name in ("x_dim", "z_dim"):
            if not is_int(getattr(self, name)):
                raise ValueError(f"{name} must be an integer, got {getattr(self, name)!r:.80}")
        for name in ("random_encoder", "random_decoder"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r:.80}")
        for name in ("encoder_granularity", "decoder_granularity"):
            if getattr(self, name) not in GRANULARITIES:
                raise ValueError(f"{name} must be one of {GRANULARITIES}, got {getattr(self, name)!r}")
        check_draws(self.draws)
        if self.activation not in ("tanh", "relu", "softplus"):
            raise ValueError(f"activation must be tanh, relu or softplus, got {self.activation!r}")
        if self.z_dim < 1 or self.x_dim < 1 or any(h < 1 for h in self.hidden):
            raise ValueError("x_dim, z_dim and every hidden size must be positive")
        if not self.prior_std > 0 or not self.init_sigma > 0:
            raise ValueError("prior_std and init_sigma must be positive")
        if not (math.isfinite(self.prior_std) and math.isfinite(self.init_sigma)):
            raise ValueError("prior_std and init_sigma must be finite")

    @property
    def variant(self) -> str:
        """Name of the variant ("iwae", "iwae-r", "iwae-rrec"), or "custom" for other combinations."""
        for name, flags in VARIANTS.items():
            if flags == (self.random_encoder, self.random_decoder):
                return name
        return "custom"

    @classmethod
    def for_variant(cls, variant: str, **kwargs) -> ModelConfig:
        if variant not in VARIANTS:
            raise ValueError(f"unknown variant {variant!r}; choose one of {sorted(VARIANTS)}")
        enc, dec = VARIANTS[variant]
        return cls(random_encoder=enc, random_decoder=dec, **kwargs)


@dataclass
class TrainConfig:
    """How a model is trained: data, objective, optimiser and schedule."""

    dataset: str = "mnist"
    k: int = 25
    estimator: str = "iwae"
    beta: float = 1.0
    kl_encoder: bool = False
    batch_size: int = 100
    lr: float = 1e-3
    lr_final: float | None = None  # cosine decay to this rate over the run; None keeps lr constant
    adam_eps: float = 1e-4
    # Adam's eps and a learning-rate multiplier for the rho parameters (sigma = softplus(rho)) alone.
    # Adam's step m / (sqrt(v) + eps) is blind to the gradient's scale only while sqrt(v) >> eps. rho's
    # gradient is tiny: the KL enters divided by N (about 1/N per weight at small sigma) and every term is
    # scaled by dsigma/drho = sigmoid(rho) ~ sigma, so it is 1e-6 to 1e-5, below the means' eps of 1e-4,
    # which then throttles rho to a fraction of Adam's rate. An eps far below that scale restores the rate
    # and keeps rho as the stored parameter, so every saved model loads unchanged.
    rho_adam_eps: float = 1e-8
    rho_lr_scale: float = 1.0
    # bayes: theta ~ q(theta) once per data point, objective (1/B) sum L_k - beta KL(q(theta)||p(theta)) / N,
    #   a lower bound on log p(X) under the prior N(0, prior_std^2) (Bayesian IWAE-R).
    # mixture: the poster's literal reading, p(x|z) = int p(x|z; theta) q(theta) dtheta and
    #   q(z|x) = int q(z|x; phi) q(phi) dphi with no prior: each importance sample draws its own
    #   (theta_m, phi_m, z_m) and the objective is the IWAE bound itself (granularity 'sample', beta 0).
    objective: str = "bayes"
    epochs: int = 10
    max_steps: int | None = None
    seed: int = 0
    device: str = "auto"
    threads: int | None = None
    checkpoint_every: float = 60.0  # seconds of training between checkpoints
    eval_k: int = 100
    eval_images: int = 400  # validation images for the per-epoch bound
    # also compute the validation bound every this many steps within an epoch (0: once per epoch only), so
    # a short run's curve has more than one validation point; it never changes the training (own RNG stream)
    valid_every: int = 0
    # a trained model folder whose weights start this run: a new training stage with its own schedule
    # (fresh Adam state), counted on from that model's epochs, steps and history
    init_from: str | None = None
    noise_precision: str = "auto"
    # float32 until a fidelity study (3 seeds, 10 epochs) shows bf16-mixed within 0.05 nats; see PRECISIONS
    precision: str = "float32"
    compile: str = "auto"

    def __post_init__(self) -> None:
        if self.dataset not in DATASETS:
            raise ValueError(f"dataset must be one of {DATASETS}, got {self.dataset!r}")
        if self.noise_precision not in NOISE_PRECISIONS:
            raise ValueError(f"noise_precision must be one of {NOISE_PRECISIONS}, got {self.noise_precision!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {self.objective!r}")
        if self.compile not in COMPILE_MODES:
            raise ValueError(f"compile must be one of {COMPILE_MODES}, got {self.compile!r}")
        if self.objective == "mixture" and self.beta != 0:
            raise ValueError(f"the mixture objective has no prior over the weights, so no KL term: beta must be 0, "
                             f"got {self.beta}")
        for name in ("adam_eps", "rho_adam_eps", "rho_lr_scale"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.estimator not in ESTIMATORS:
            raise ValueError(f"estimator must be one of {ESTIMATORS}, got {self.estimator!r}")
        check_k(self.k)
        check_k(self.eval_k, "eval_k")  # the validation bound's k: checked here, not on every validation
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {self.batch_size}")
        if not (self.lr > 0):
            raise ValueError(f"lr must be positive, got {self.lr}")
        check_train_numbers(self)
        if self.epochs < 1:
            raise ValueError(f"epochs must be at least 1, got {self.epochs}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"max_steps must be at least 1, got {self.max_steps}")
        if not is_int(self.valid_every) or self.valid_every < 0:
            raise ValueError(f"valid_every must be a whole number of steps, 0 or more, got {self.valid_every!r:.40}")


MAX_K = 100_000
MAX_SEED = 2**63 - 2**20  # torch seeds are 64-bit; room for the + rank and + 1000 * repeat offsets


def is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_train_numbers(cfg: TrainConfig) -> None:
    """Reject training settings that would run but do something other than asked (NaN or infinite
    rates, a negative final rate, 0 threads meaning "all cores", a seed that overflows)."""
    for name in ("lr", "beta", "adam_eps"):
        value = getattr(cfg, name)
        if not math.isfinite(value):
            raise ValueError(f"{name} must be a finite number, got {value}")
    if cfg.lr_final is not None and not (math.isfinite(cfg.lr_final) and cfg.lr_final >= 0):
        raise ValueError(f"lr_final must be a finite rate of 0 or more, got {cfg.lr_final}")
    if not cfg.beta >= 0 or not cfg.adam_eps > 0:
        raise ValueError(f"beta must be 0 or more and adam_eps positive, got {cfg.beta} and {cfg.adam_eps}")
    if cfg.threads is not None and not (is_int(cfg.threads) and cfg.threads >= 1):
        raise ValueError(f"threads must be at least 1 (leave it unset for all cores), got {cfg.threads}")
    check_seed(cfg.seed)


def check_seed(seed, name: str = "seed") -> int:
    if not is_int(seed) or not 0 <= seed <= MAX_SEED:
        raise ValueError(f"{name} must be an integer from 0 to {MAX_SEED}, got {seed!r:.40}")
    return seed


def check_draws(draws: str) -> str:
    """Reject a noise generator that is not one of DRAWS."""
    if draws not in DRAWS:
        raise ValueError(f"draws must be one of {DRAWS}, got {draws!r}")
    return draws


def check_k(k: int, name: str = "k") -> int:
    """Reject a number of importance samples that is not a positive integer of sane size."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"{name} must be a positive integer, got {k!r}")
    if k > MAX_K:
        raise ValueError(f"{name}={k} is more than {MAX_K} importance samples; use a smaller {name}")
    return k


PAPER_PRESET = {
    "model": {"hidden": (400,), "z_dim": 40, "activation": "tanh"},
    "train": {"k": 25, "batch_size": 100, "lr": 1e-3, "lr_final": 1e-4, "adam_eps": 1e-4},
}


def to_dict(obj) -> dict:
    d = dataclasses.asdict(obj)
    return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


def from_dict(cls, d: dict):
    """Build a config dataclass from a dict, naming any key it does not know."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} keys: {unknown}")
    return cls(**d)


@dataclass
class RunConfig:
    """Everything that defines a trained model folder: written as config.json beside the weights."""

    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        if self.train.objective == "mixture" and self.model.random_decoder and \
                self.model.decoder_granularity != "sample":
            raise ValueError("the mixture objective draws the decoder's weights per importance sample: "
                             f"decoder_granularity must be 'sample', got {self.model.decoder_granularity!r}")
        if self.train.objective == "mixture" and self.model.random_encoder and \
                self.model.encoder_granularity != "sample":
            raise ValueError("the mixture objective draws the encoder's weights per importance sample: "
                             f"encoder_granularity must be 'sample', got {self.model.encoder_granularity!r}")

    def to_json(self) -> str:
        return json.dumps({"model": to_dict(self.model), "train": to_dict(self.train)}, indent=2)

    @classmethod
    def from_json(cls, text: str) -> RunConfig:
        d = json.loads(text)
        # runs written before noise_precision existed computed every product in float32; runs written before
        # rho_adam_eps existed trained rho with the means' eps (one Adam group), and with the Bayesian objective;
        # runs written before precision existed multiplied in float32; models written before draws existed draw
        # their noise with torch's generator, so that their numbers reproduce
        train = {"noise_precision": "float32", "precision": "float32",
                 "rho_adam_eps": d["train"].get("adam_eps", 1e-4), **d["train"]}
        model = {"draws": "torch", **d["model"]}
        return cls(model=from_dict(ModelConfig, model), train=from_dict(TrainConfig, train))

    def save(self, path: Path) -> None:
        Path(path).write_text(self.to_json())
