"""Training on an image folder (read file by file) and fine-tuning from a weights file."""
from __future__ import annotations

import numpy as np
import torch

import googlenet
from googlenet.train import resolve_config, train


def _folder(root, classes=("cat", "dog", "owl"), per_class=4, size=20):
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for k, name in enumerate(classes):
            (root / split / name).mkdir(parents=True)
            for i in range(per_class):
                pixels = rng.integers(0, 80, (size, size + 4, 3), dtype=np.uint8) + 60 * k
                Image.fromarray(pixels.astype(np.uint8)).save(root / split / name / f"{i}.png")
    return root


def test_finetune_on_an_image_folder(tmp_path, capsys):
    data = _folder(tmp_path / "imgs")
    source = googlenet.create_model("googlenet_cifar", num_classes=10)
    googlenet.save_weights(source, tmp_path / "w.safetensors")
    config = resolve_config(flags={"dataset": "imagefolder", "data": str(data), "weights": str(tmp_path / "w.safetensors"),
                                   "model": "googlenet_cifar", "input_size": 16, "epochs": 1, "batch_size": 6,
                                   "workers": 0, "device": "cpu"})
    assert config.recipe == "finetune"
    result = train(config, out=tmp_path / "run")
    out = capsys.readouterr().out
    assert "10 -> 3 classes" in out
    assert result.test_images == 12
    model = googlenet.load_weights(tmp_path / "run" / "model.safetensors")
    assert model.meta["class_names"] == ["cat", "dog", "owl"] and model.meta["input_size"] == 16
    assert model.meta["resize"] == round(16 * 256 / 224) and model.fc.out_features == 3
    assert (tmp_path / "run" / "errors.png").is_file()


def test_paper_augmentation_on_tensors_runs(tmp_path, fake_fmnist, monkeypatch):
    """The paper's crops/photometric/random interpolation, batched, feed the no-BN googlenet."""
    monkeypatch.setenv("GOOGLENET_CACHE", str(tmp_path / "cache"))
    data = fake_fmnist(tmp_path / "fm", n_train=8, n_test=4)
    config = resolve_config("paper", flags={"data": str(data), "epochs": 1, "batch_size": 4, "limit_train": 8,
                                            "limit_test": 4, "device": "cpu", "input_size": 224})
    result = train(config, out=tmp_path / "run")
    assert result.test_images == 4 and torch.isfinite(torch.tensor(float(result.history[0]["train_loss"])))
