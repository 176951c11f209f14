"""Comparing evaluated models (iwae_core/compare.py): test results of other weights than a folder's own are
recognised, left out of the paired differences and marked in `iwae table`."""

import hashlib
import shutil

from iwae_core import checkpoint as ckpt
from iwae_core import zoo
from iwae_core.compare import stale_evaluation


def test_results_of_other_weights_are_recognised_and_left_out(tmp_path, capsys):
    """A retrained model copied over an evaluated one must not be paired with its predecessor's results."""
    from safetensors.torch import save_file

    from iwae_core.cli import main
    from iwae_core.compare import paired_differences

    for name in ("omniglot-iwae", "omniglot-iwae-rrec"):
        shutil.copytree(zoo.PRETRAINED_DIR / name, tmp_path / name,
                        ignore=shutil.ignore_patterns("checkpoint", "*.log"))
    a, b = (tmp_path / n for n in ("omniglot-iwae", "omniglot-iwae-rrec"))
    entry = lambda p: zoo.select_models([p])[0]  # noqa: E731
    assert not stale_evaluation(entry(a)) and len(paired_differences([entry(a), entry(b)])) == 1

    original = ckpt.read_tensors(a / "test_ll.safetensors")
    shifted = {k: v + 0.5 for k, v in original.items()}  # another model's per-image results
    save_file(shifted, str(a / "test_ll.safetensors"))
    assert stale_evaluation(entry(a)) and paired_differences([entry(a), entry(b)]) == []
    assert main(["table", str(a), str(b), "--paired"]) == 0
    out, err = capsys.readouterr()
    assert "evaluated with other weights" in out and "omniglot-iwae" in err and "iwae eval" in err
    save_file(shifted, str(a / "test_ll.safetensors"), metadata={"model_sha256": "0" * 64})
    assert stale_evaluation(entry(a))
    current = hashlib.sha256((a / "model.safetensors").read_bytes()).hexdigest()
    save_file(original, str(a / "test_ll.safetensors"), metadata={"model_sha256": current})
    assert not stale_evaluation(entry(a))
    (a / "test_ll.safetensors").write_bytes(b"not safetensors")
    assert stale_evaluation(entry(a))

    save_file(original, str(a / "test_ll.safetensors"))
    weights = ckpt.read_tensors(a / "model.safetensors")
    save_file({k: v * 1.01 for k, v in weights.items()}, str(a / "model.safetensors"))  # retrained
    assert stale_evaluation(entry(a)) and paired_differences([entry(a), entry(b)]) == []


def test_table_names_the_objective_of_random_weight_models(tmp_path, capsys):
    """`iwae table` tells a mixture-reading IWAE-R from a Bayesian one: same variant, other objective."""
    import json

    from iwae_core.cli import main

    for name in ("omniglot-iwae", "omniglot-iwae-r"):
        shutil.copytree(zoo.PRETRAINED_DIR / name, tmp_path / name,
                        ignore=shutil.ignore_patterns("checkpoint", "*.log"))
    mixture = tmp_path / "omniglot-iwae-r-mixture"
    shutil.copytree(tmp_path / "omniglot-iwae-r", mixture)
    config = json.loads((mixture / "config.json").read_text())
    config["train"].update(objective="mixture", beta=0.0)
    config["model"].update(encoder_granularity="sample", decoder_granularity="sample")
    (mixture / "config.json").write_text(json.dumps(config))
    assert main(["table", str(tmp_path / "omniglot-iwae"), str(tmp_path / "omniglot-iwae-r"), str(mixture)]) == 0
    rows = {line.split()[-1]: line for line in capsys.readouterr().out.splitlines()[1:]}
    assert " iwae-r bayes " in rows["omniglot-iwae-r"] and " iwae-r mixture " in rows["omniglot-iwae-r-mixture"]
    assert "bayes" not in rows["omniglot-iwae"] and "mixture" not in rows["omniglot-iwae"]


def test_models_of_one_name_in_two_folders_are_told_apart_and_paired(tmp_path, capsys):
    """A retrained model beside the shipped one (same folder name, other parent): both are listed and paired,
    each under its parent's name; identical per-image results give a zero difference, not a division by zero."""
    from iwae_core.cli import main

    for parent in ("shipped", "retrained"):
        shutil.copytree(zoo.PRETRAINED_DIR / "omniglot-iwae", tmp_path / parent / "omniglot-iwae",
                        ignore=shutil.ignore_patterns("checkpoint", "*.log"))
    a, b = tmp_path / "shipped" / "omniglot-iwae", tmp_path / "retrained" / "omniglot-iwae"
    assert main(["table", str(a), str(b), "--paired", "--write"]) == 0
    out = capsys.readouterr().out
    assert "shipped/omniglot-iwae" in out and "retrained/omniglot-iwae" in out
    assert "+0.000 ± 0.000  (identical" in out
    import json
    paired = json.loads((a / "metrics.json").read_text())["paired"]
    assert len(paired) == 1 and {paired[0]["a"], paired[0]["b"]} == {"shipped/omniglot-iwae", "retrained/omniglot-iwae"}
