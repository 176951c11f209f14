"""Reading the files of a model folder (iwae_core/folders.py): stored bound curves are checked before use."""

import torch


def test_stored_curves_are_checked_before_use(tmp_path):
    import pytest
    from safetensors.torch import save_file

    from iwae_core import folders

    meta = {"model_sha256": "ab", "ks": "1,2,5", "seed": "0", "n_images": "4", "test_seed": "2016", "source": "s"}
    good = tmp_path / "good.safetensors"
    save_file({"k_max=5,tau=1": torch.zeros(3, 4), "k_max=2,tau=0": torch.zeros(2, 4)}, str(good), metadata=meta)
    curves = folders.read_bound_curves(good)
    assert curves["meta"]["ks"] == [1, 2, 5] and curves["k_max=5,tau=1"].shape == (3, 4)
    cases = {"shape": ({"k_max=5,tau=1": torch.zeros(2, 4)}, meta, "tensor k_max=5,tau=1 of shape"),
             "name": ({"tau=1": torch.zeros(3, 4)}, meta, "tensor tau=1 of shape"),
             "nan": ({"k_max=5,tau=1": torch.full((3, 4), float("nan"))}, meta, "finite"),
             "meta": ({"k_max=5,tau=1": torch.zeros(3, 4)}, {k: v for k, v in meta.items() if k != "seed"}, "'seed'")}
    for name, (tensors, metadata, words) in cases.items():
        path = tmp_path / f"{name}.safetensors"
        save_file(tensors, str(path), metadata=metadata)
        with pytest.raises(folders.FileError, match=words) as err:
            folders.read_bound_curves(path)
        assert str(path) in str(err.value)
