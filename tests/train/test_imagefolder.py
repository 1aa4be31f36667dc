"""Training on an image folder (read file by file) and fine-tuning from a weights file."""
from __future__ import annotations

import numpy as np
import torch

import googlenet
from googlenet.train import resolve_config, train


def _folder(root, classes=("cat", "dog", "owl"), per_class=4, size=20, grey=False):
    from PIL import Image

    rng = np.random.default_rng(0)
    shape = (size, size + 4) if grey else (size, size + 4, 3)
    for split in ("train", "val"):
        for k, name in enumerate(classes):
            (root / split / name).mkdir(parents=True)
            for i in range(per_class):
                pixels = rng.integers(0, 80, shape, dtype=np.uint8) + 60 * k
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


def test_a_one_channel_model_fine_tunes_on_an_image_folder_read_as_luma(tmp_path):
    """Image folders were always read as RGB, so a 1-channel model's fine-tuning stopped with
    "expects 1-channel images, the data has 3"; eval already converted them to its channels."""
    from googlenet.models.weights import IMAGENET_MEAN, IMAGENET_STD
    from googlenet.train.loop import Process, Trainer

    data = _folder(tmp_path / "imgs", classes=("a", "b"), per_class=2, grey=True)
    googlenet.save_weights(googlenet.create_model("googlenet_cifar", num_classes=10, in_chans=1),
                           tmp_path / "w.safetensors")
    flags = {"dataset": "imagefolder", "data": str(data), "model": "googlenet_cifar", "input_size": 16,
             "epochs": 1, "batch_size": 4, "workers": 0, "device": "cpu"}
    trainer = Trainer(resolve_config(flags={**flags, "weights": str(tmp_path / "w.safetensors")}),
                      tmp_path / "run", Process())
    x, _ = next(trainer.train_loader.train_batches(0, 1, 0))
    assert x.shape[1] == 1 and next(trainer.test_loader.eval_batches())[0].shape[1] == 1
    assert trainer.info.in_chans == 1 and trainer.info.mean == (sum(IMAGENET_MEAN) / 3,)
    assert trainer.info.std == (sum(IMAGENET_STD) / 3,)
    result = trainer.fit()
    assert result.test_images == 4
    tuned = googlenet.load_weights(result.weights)
    assert tuned.in_chans == 1 and len(tuned.meta["mean"]) == len(tuned.meta["std"]) == 1  # what eval normalises by
    # Without --weights the model is a fresh RGB one, as before.
    fresh = Trainer(resolve_config(flags=flags), tmp_path / "fresh", Process())
    assert fresh.model.in_chans == 3 and next(fresh.test_loader.eval_batches())[0].shape[1] == 3


def test_paper_augmentation_on_tensors_runs(tmp_path, fake_fmnist, monkeypatch):
    """The paper's crops/photometric/random interpolation, batched, feed the no-BN googlenet."""
    monkeypatch.setenv("GOOGLENET_CACHE", str(tmp_path / "cache"))
    data = fake_fmnist(tmp_path / "fm", n_train=8, n_test=4)
    config = resolve_config("paper", flags={"data": str(data), "epochs": 1, "batch_size": 4, "limit_train": 8,
                                            "limit_test": 4, "device": "cpu", "input_size": 224})
    result = train(config, out=tmp_path / "run")
    assert result.test_images == 4 and torch.isfinite(torch.tensor(float(result.history[0]["train_loss"])))


def test_limits_on_an_image_folder_keep_every_class(tmp_path):
    """ImageFolder lists files class by class: --limit-train 3 on 3 classes x 4 files took the
    first 3 files, all "cat". The limited sets now hold every class (evenly spaced picks),
    the same files every time, and eval's --limit-test picks the same ones."""
    from googlenet.data.datasets import image_folder
    from googlenet.evaluate import _image_folder_batches
    from googlenet.train.setup import _limited

    data = _folder(tmp_path / "imgs")
    train_set = _limited(image_folder(data, "train"), 3)
    assert sorted(train_set.targets) == [0, 1, 2]
    assert [label for _, label in train_set.samples] == train_set.targets and train_set.imgs == train_set.samples
    assert _limited(image_folder(data, "train"), 3).samples == train_set.samples
    assert len(_limited(image_folder(data, "val"), 100).samples) == 12  # a limit above the count keeps all
    _, count, batches = _image_folder_batches(data, 3, [])
    assert count == 3 and sorted(int(label) for _, label in batches(3)) == [0, 1, 2]


def test_a_per_epoch_test_subset_of_an_image_folder_spans_every_class(tmp_path):
    """The budget's per-epoch test subset took the first N files: the first classes alone."""
    from torchvision.transforms import v2

    from googlenet.data.datasets import image_folder
    from googlenet.data.folder_loader import FolderLoader

    data = _folder(tmp_path / "imgs")
    to_tensor = v2.Compose([v2.PILToTensor(), v2.ToDtype(torch.float32, scale=True)])
    loader = FolderLoader(image_folder(data, "val"), 2, "cpu", eval_transform=to_tensor, workers=0)
    assert sorted(int(y) for _, ys in loader.eval_batches(3) for y in ys) == [0, 1, 2]
    assert sum(len(ys) for _, ys in loader.eval_batches(None)) == 12
    halves = [FolderLoader(image_folder(data, "val"), 2, "cpu", eval_transform=to_tensor, workers=0,
                           rank=rank, world_size=2) for rank in (0, 1)]
    assert sorted(int(y) for h in halves for _, ys in h.eval_batches(6) for y in ys) == [0, 0, 1, 1, 2, 2]


def test_fine_tuning_keeps_the_weights_preprocessing_and_puts_their_classes_in_the_folders_order(tmp_path):
    """Fashion-MNIST weights fine-tuned on a folder of the same classes: the folder lists them
    alphabetically, and the classifier was kept by index (class 0 "T-shirt/top" trained as
    "Ankle boot": 80% -> 24%); the data was also resized to 224 px and ImageNet-normalised."""
    from googlenet.data.datasets import FASHION_MNIST_CLASSES
    from googlenet.train.setup import build_loaders, build_model

    folders = [name.replace("/", "_") for name in FASHION_MNIST_CLASSES[:3]]  # T-shirt_top, Trouser, Pullover
    data = _folder(tmp_path / "imgs", classes=folders, per_class=2, size=12)
    source = googlenet.create_model("googlenet_cifar", num_classes=3, in_chans=1)
    googlenet.save_weights(source, tmp_path / "w.safetensors", class_names=FASHION_MNIST_CLASSES[:3],
                           input_size=12, resize=12, mean=[0.286], std=[0.353], dataset="fashion-mnist")
    config = resolve_config(flags={"dataset": "imagefolder", "data": str(data), "weights": str(tmp_path / "w.safetensors"),
                                   "model": "googlenet_cifar", "workers": 0, "device": "cpu"})
    _, _, info = build_loaders(config, torch.device("cpu"), model_in_chans=1)
    assert (info.input_size, info.resize, info.mean, info.std) == (12, 12, (0.286,), (0.353,))
    assert info.class_names == ["Pullover", "T-shirt_top", "Trouser"]
    said = []
    model = build_model(config, 3, 1, say=said.append, class_names=info.class_names).eval()
    assert "put in the data's class order" in said[-1]
    x = torch.rand(2, 1, 12, 12)
    with torch.no_grad():  # the same network, its outputs listed in the folder's order
        torch.testing.assert_close(model(x), source.eval()(x)[:, [2, 0, 1]])
