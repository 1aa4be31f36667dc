"""googlenet.evaluate: crop geometry, metrics, multi-crop and ensemble averaging, the eval CLI."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torchvision.transforms.v2 import functional as TF

import googlenet
from googlenet import UserError
from googlenet.cli import main as cli_main
from googlenet.evaluate import (CropPlan, class_probabilities, compute_metrics, evaluate, evaluate_arrays,
                                five_crop_offsets, folder_classes_to_model, format_result, scaled_scales, square_offsets)
from googlenet.predict import TorchClassifier, normalize

SIZE = 8  # tiny input: googlenet_cifar runs at 8 px (8 -> 4 -> 2 through its two pools)


def meta_for(size: int = SIZE, resize: int | None = None, channels: int = 1, classes: int = 10) -> dict:
    return {"class_names": [f"c{i}" for i in range(classes)], "input_size": size, "resize": resize or size,
            "mean": [0.5] * channels, "std": [0.25] * channels, "in_chans": channels, "num_classes": classes}


class MeanPixelClassifier:
    """A deterministic stand-in: logits are a fixed linear map of per-channel mean and corner pixel,
    so different views give different probabilities (the averaging is visible)."""

    def __init__(self, meta: dict, seed: int = 0) -> None:
        self.meta = meta
        g = torch.Generator().manual_seed(seed)
        self.weight = torch.randn(meta["num_classes"], 2 * meta["in_chans"], generator=g)
        self.calls = 0

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        features = torch.cat([x.mean(dim=(2, 3)), x[:, :, 0, 0]], dim=1)
        return features @ self.weight.T


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    model = googlenet.create_model("googlenet_cifar", in_chans=1, num_classes=10, aux_logits=False)
    model.meta = {**meta_for(), "dataset": "fashion-mnist"}
    return model.eval()


# ------------------------------------------------------------------ geometry
def test_scales_match_the_paper_at_256_and_scale_with_the_models_own_resize():
    """The first scale is the model's single-crop shorter side (the paper: 256 for 224 crops);
    a 28-px model tested at 28 px gets 28 first, not 28 x 256/224 = 32."""
    assert scaled_scales(256) == (256, 288, 320, 352)
    assert scaled_scales(28) == (28, 32, 35, 38)
    assert scaled_scales(32) == (32, 36, 40, 44)  # 32/256 = 1/8 exactly
    assert CropPlan.for_meta(meta_for(28, 28), 10).scales[0] == 28


@pytest.mark.parametrize("crops", [1, 10, 144])
@pytest.mark.parametrize("shape", [(28, 28), (32, 40), (44, 30)])
def test_view_count_and_size(crops, shape):
    plan = CropPlan.for_meta(meta_for(28, 32), crops)
    views = plan.views(torch.rand(2, 3, *shape))
    assert len(views) == crops == plan.num_views
    assert all(tuple(v.shape) == (2, 3, 28, 28) for v in views)


def test_ten_crop_views_are_the_expected_slices():
    # Shorter side 32 == the first scale for input 28, so no resize happens and views are slices.
    image = torch.arange(32 * 40, dtype=torch.float32).view(1, 1, 32, 40)
    views = CropPlan.for_meta(meta_for(28, 32), 10).views(image)
    expected = [image[..., 0:28, 0:28], image[..., 0:28, 12:40], image[..., 4:32, 0:28],
                image[..., 4:32, 12:40], image[..., 2:30, 6:34]]
    for got, want in zip(views[:5], expected):
        assert torch.equal(got, want)
    for got, want in zip(views[5:], expected):
        assert torch.equal(got, want.flip(-1))


def test_144_crop_views_are_the_expected_slices_landscape_and_portrait():
    plan = CropPlan.for_meta(meta_for(28, 32), 144)
    landscape = torch.arange(32 * 40, dtype=torch.float32).view(1, 1, 32, 40)
    views = plan.views(landscape)
    # Scale 32 (the first 36 views): squares at columns 0, 4, 8; per square TL,TR,BL,BR,C,whole + mirrors.
    for s, left in enumerate((0, 4, 8)):
        square = landscape[..., :, left:left + 32]
        block = views[12 * s: 12 * s + 12]
        assert torch.equal(block[0], square[..., 0:28, 0:28])
        assert torch.equal(block[3], square[..., 4:32, 4:32])
        assert torch.equal(block[4], square[..., 2:30, 2:30])
        assert torch.allclose(block[5], TF.resize(square, [28], antialias=True))
        assert torch.equal(block[6], block[0].flip(-1))
        assert torch.equal(block[11], block[5].flip(-1))
    portrait = landscape.transpose(-1, -2).contiguous()  # 40 x 32: squares at rows 0, 4, 8
    views = plan.views(portrait)
    assert torch.equal(views[12 * 2 + 1], portrait[..., 8:40, :][..., 0:28, 4:32])  # bottom square, TR
    # The other scales really are resized: views of scale 36 come from a 36 x 45 image.
    resized = TF.resize(landscape, [36], antialias=True)
    assert tuple(resized.shape[-2:]) == (36, 45)
    assert torch.allclose(plan.views(landscape)[36], resized[..., 0:28, 0:28])


def test_square_and_five_crop_offsets():
    assert square_offsets(32, 40) == [(0, 0), (0, 4), (0, 8)]
    assert square_offsets(40, 32) == [(0, 0), (4, 0), (8, 0)]
    assert square_offsets(32, 32) == [(0, 0)] * 3
    assert five_crop_offsets(256, 256, 224) == [(0, 0), (0, 32), (32, 0), (32, 32), (16, 16)]


def test_crop_plan_describes_scaled_geometry_and_rejects_bad_crops():
    assert "relative to its shorter side 256, here 28" in CropPlan.for_meta(meta_for(28, 28), 144).describe()
    assert "28/32/35/38" in CropPlan.for_meta(meta_for(28, 28), 144).describe()
    assert "relative" not in CropPlan.for_meta(meta_for(224, 256), 144).describe()
    with pytest.raises(UserError):
        CropPlan.for_meta(meta_for(), 5)


# ------------------------------------------------------------------ metrics
def test_compute_metrics_by_hand():
    probs = torch.tensor([[0.7, 0.2, 0.1, 0.0, 0.0, 0.0],   # true 0: top-1 right
                          [0.1, 0.2, 0.3, 0.4, 0.0, 0.0],   # true 1: predicted 3, in the top 5
                          [0.5, 0.15, 0.1, 0.1, 0.1, 0.05],  # true 5: predicted 0, not in the top 5
                          [0.0, 0.0, 0.0, 0.0, 0.1, 0.9]])  # true 5: right
    labels = torch.tensor([0, 1, 5, 5])
    r = compute_metrics(probs, labels, list("abcdef"))
    assert r.top1 == pytest.approx(0.5) and r.top1_error == pytest.approx(0.5)
    assert r.top5 == pytest.approx(0.75)
    assert r.confusion[0][0] == 1 and r.confusion[1][3] == 1 and r.confusion[5][0] == 1 and r.confusion[5][5] == 1
    assert sum(map(sum, r.confusion)) == 4
    assert r.per_class_total == [1, 1, 0, 0, 0, 2] and r.per_class_correct == [1, 0, 0, 0, 0, 1]
    assert r.per_class_accuracy[2] is None and r.per_class_accuracy[5] == pytest.approx(0.5)


def test_topk_is_clipped_for_few_classes():
    r = compute_metrics(torch.tensor([[0.2, 0.8], [0.6, 0.4]]), torch.tensor([0, 0]), ["a", "b"])
    assert r.topk == 2 and r.top5 == 1.0 and r.top1 == 0.5


# ------------------------------------------------------------------ probabilities
def test_one_crop_accuracy_equals_a_plain_forward_pass(tiny_model):
    torch.manual_seed(1)
    images = torch.randint(0, 256, (12, 1, SIZE, SIZE), dtype=torch.uint8)
    labels = torch.randint(0, 10, (12,))
    result = evaluate_arrays(TorchClassifier(tiny_model), images, labels, crops=1, batch_size=5)
    with torch.inference_mode():
        logits = tiny_model(normalize(images.float() / 255, [0.5], [0.25]))
    predicted = logits.argmax(1)
    top5 = logits.topk(5, dim=1).indices
    assert result.num_images == 12
    assert result.top1 == pytest.approx((predicted == labels).float().mean().item())
    assert result.top5 == pytest.approx((top5 == labels[:, None]).any(1).float().mean().item())
    for i in range(12):
        assert result.confusion[labels[i]][predicted[i]] >= 1


@pytest.mark.parametrize("crops", [10, 144])
def test_multi_crop_averages_softmax_over_the_views(crops):
    meta = meta_for(28, 28, channels=3)
    classifier = MeanPixelClassifier(meta)
    images = torch.randint(0, 256, (3, 3, 30, 36), dtype=torch.uint8)
    probs, labels = class_probabilities(classifier, [(images, torch.tensor([0, 1, 2]))], crops, batch_size=64)
    views = CropPlan.for_meta(meta, crops).views(images.float() / 255)
    expected = torch.stack([torch.softmax(classifier(normalize(v, meta["mean"], meta["std"])), 1)
                            for v in views]).mean(0)
    assert torch.allclose(probs, expected, atol=1e-6)
    assert not torch.allclose(probs, torch.softmax(classifier(normalize(views[0], meta["mean"], meta["std"])), 1))
    assert labels.tolist() == [0, 1, 2]


def test_batching_does_not_change_results():
    meta = meta_for(28, 28, channels=3)
    images = torch.randint(0, 256, (7, 3, 28, 28), dtype=torch.uint8)
    labels = torch.arange(7) % 10
    a = evaluate_arrays(MeanPixelClassifier(meta), images, labels, crops=10, batch_size=7)
    b = evaluate_arrays(MeanPixelClassifier(meta), images, labels, crops=10, batch_size=1000)
    assert a.confusion == b.confusion and a.top5 == b.top5


def test_ensemble_averages_models_and_checks_classes():
    meta = meta_for(28, 28, channels=3)
    images = torch.randint(0, 256, (5, 3, 28, 28), dtype=torch.uint8)
    labels = torch.arange(5)
    one, two = MeanPixelClassifier(meta, seed=1), MeanPixelClassifier(meta, seed=2)
    p1, _ = class_probabilities(one, [(images, labels)])
    p2, _ = class_probabilities(two, [(images, labels)])
    result = evaluate_arrays([one, two], images, labels)
    expected = compute_metrics((p1 + p2) / 2, labels, meta["class_names"])
    assert result.confusion == expected.confusion and result.top1 == expected.top1
    other = MeanPixelClassifier({**meta, "class_names": [f"x{i}" for i in range(10)]})
    with pytest.raises(UserError, match="ensemble"):
        evaluate_arrays([one, other], images, labels)


# ------------------------------------------------------------------ files and the CLI
@pytest.fixture()
def weights_and_data(tmp_path, monkeypatch, tiny_model):
    """A weights file and a synthetic 'fashion-mnist' test set served by a patched load_dataset."""
    from googlenet.data import ArrayDataset

    path = tmp_path / "tiny.safetensors"
    googlenet.save_weights(tiny_model, path, **tiny_model.meta)
    torch.manual_seed(2)
    data = ArrayDataset(torch.randint(0, 256, (10, 1, SIZE, SIZE), dtype=torch.uint8), torch.arange(10),
                        [f"c{i}" for i in range(10)], "fashion-mnist", (0.5,), (0.25,))
    calls = []

    def fake_load_dataset(name, split, data_dir=None, limit=None):
        calls.append((name, split, limit))
        if name == "cifar100":
            return ArrayDataset(data.images.expand(-1, 3, -1, -1), data.labels, [str(i) for i in range(100)],
                                name, (0.5,) * 3, (0.25,) * 3)
        return data.subset(limit)

    monkeypatch.setattr("googlenet.data.load_dataset", fake_load_dataset)
    return path, data, calls


def test_evaluate_file_uses_the_recorded_dataset(weights_and_data, tiny_model):
    path, data, calls = weights_and_data
    result = evaluate(path, limit_test=6, device="cpu", batch_size=4, progress=True)
    assert calls == [("fashion-mnist", "test", 6)]
    direct = evaluate_arrays(TorchClassifier(tiny_model), data.images[:6], data.labels[:6])
    assert result.num_images == 6 and result.confusion == direct.confusion
    assert result.dataset == "fashion-mnist" and result.models == [str(path)]
    text = format_result(result)
    assert "top-1 accuracy" in text and "confusion matrix" in text and "c9" in text


def test_eval_into_a_log_prints_progress_lines(weights_and_data, capsys, monkeypatch):
    """`googlenet eval ... > log 2>&1` said nothing for as long as the evaluation took (a
    bar is only drawn on a terminal); a log gets a plain line a minute, as training prints."""
    from googlenet import progress

    path, _, _ = weights_and_data
    monkeypatch.setattr(progress, "PLAIN_EVERY_S", 0.0)  # a line at every batch, not every minute
    assert cli_main(["eval", str(path), "--limit-test", "8", "--batch-size", "2", "--json", "--device", "cpu"]) == 0
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.startswith("  eval: ")]
    assert lines and lines[0].startswith("  eval: 2/8 img, ") and "min left" in lines[0]
    assert json.loads(captured.out)["num_images"] == 8  # stdout stays the JSON alone


def test_eval_cli_json_and_text(weights_and_data, capsys):
    path, _, _ = weights_and_data
    assert cli_main(["eval", str(path), "--limit-test", "4", "--json", "--device", "cpu"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["num_images"] == 4 and 0 <= out["top1"] <= 1 and len(out["confusion"]) == 10
    assert out["top1_error"] == pytest.approx(1 - out["top1"])
    assert cli_main(["eval", str(path), "--limit-test", "1", "--crops", "10", "--ensemble", str(path)]) == 0
    text = capsys.readouterr().out
    assert "10 crops" in text and "ensemble of 2" in text and "the image and its mirror, 5 times each" in text


def test_eval_picks_the_backend_by_suffix_and_an_ensemble_may_mix_them(weights_and_data, tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    from googlenet.export import export_onnx

    path, _, _ = weights_and_data
    onnx_file = export_onnx(googlenet.load_weights(path), tmp_path / "tiny.onnx", dynamic_batch=True)
    assert cli_main(["eval", str(onnx_file), "--limit-test", "6", "--json"]) == 0  # no --backend needed
    via_onnx = json.loads(capsys.readouterr().out)
    assert cli_main(["eval", str(path), "--limit-test", "6", "--json", "--device", "cpu"]) == 0
    via_torch = json.loads(capsys.readouterr().out)
    assert via_onnx["confusion"] == via_torch["confusion"]
    assert cli_main(["eval", str(path), "--ensemble", str(onnx_file), "--limit-test", "6", "--json",
                     "--device", "cpu"]) == 0
    mixed = json.loads(capsys.readouterr().out)
    assert mixed["models"] == [str(path), str(onnx_file)] and mixed["confusion"] == via_torch["confusion"]
    # --bf16 steers the torch backend only: the ONNX model's run says it went without it.
    assert cli_main(["eval", str(onnx_file), "--limit-test", "2", "--bf16"]) == 0
    assert (f"note: {onnx_file} ran in ONNX Runtime on the CPU in fp32; --bf16 applies to the torch backend only"
            in capsys.readouterr().out)
    assert cli_main(["eval", str(onnx_file), "--limit-test", "2"]) == 0
    assert "torch backend only" not in capsys.readouterr().out
    assert cli_main(["eval", str(onnx_file), "--limit-test", "2", "--device", "cpu:0"]) == 0  # the CPU: nothing ignored
    assert "torch backend only" not in capsys.readouterr().out


def test_eval_with_backend_ncnn_matches_torch_with_ten_crops(weights_and_data, capsys):
    pytest.importorskip("ncnn")
    pytest.importorskip("pnnx")
    path, _, _ = weights_and_data
    assert cli_main(["eval", str(path), "--backend", "ncnn", "--crops", "10", "--limit-test", "6", "--json"]) == 0
    via_ncnn = json.loads(capsys.readouterr().out)
    assert cli_main(["eval", str(path), "--crops", "10", "--limit-test", "6", "--json", "--device", "cpu"]) == 0
    via_torch = json.loads(capsys.readouterr().out)
    assert via_ncnn["confusion"] == via_torch["confusion"] and via_ncnn["top1"] == via_torch["top1"]
    assert (via_ncnn["backends"], via_torch["backends"]) == (["ncnn on the CPU"], ["torch on cpu"])
    assert cli_main(["eval", str(path), "--backend", "ncnn", "--limit-test", "2", "--bf16"]) == 0
    out = capsys.readouterr().out
    assert f"note: {path} ran in ncnn on the CPU in fp32; --bf16 applies to the torch backend only" in out
    assert "views/s; ncnn on the CPU)" in out  # the report says what ran


def test_eval_cli_class_count_mismatch_and_bad_weights_are_one_line_errors(weights_and_data, tmp_path, capsys):
    path, _, _ = weights_and_data
    assert cli_main(["eval", str(path), "--dataset", "cifar100", "--limit-test", "2"]) == 2
    err = capsys.readouterr().err.strip()
    assert "100 classes" in err and "10" in err and len(err.splitlines()) == 1
    bogus = tmp_path / "bogus.safetensors"
    bogus.write_bytes(b"not a safetensors file at all")
    assert cli_main(["eval", str(bogus)]) == 2
    err = capsys.readouterr().err.strip()
    assert "bogus.safetensors" in err and len(err.splitlines()) == 1
    assert cli_main(["eval", str(tmp_path / "missing.safetensors")]) == 2
    assert "not found" in capsys.readouterr().err


def test_weights_without_a_dataset_need_dataset_flag(tmp_path, tiny_model):
    path = tmp_path / "nodata.safetensors"
    model = googlenet.create_model("googlenet_cifar", in_chans=1, num_classes=10, aux_logits=False)
    model.load_state_dict(tiny_model.state_dict())
    googlenet.save_weights(model, path, **meta_for())  # no "dataset" key
    with pytest.raises(UserError, match="--dataset"):
        evaluate(path)


def test_eval_image_folder_skips_unreadable_files(tmp_path, capsys):
    from PIL import Image

    torch.manual_seed(3)
    model = googlenet.create_model("googlenet_cifar", in_chans=3, num_classes=2, aux_logits=False)
    weights = tmp_path / "folder.safetensors"
    googlenet.save_weights(model, weights, class_names=["cat", "dog"], input_size=SIZE, resize=SIZE,
                           mean=[0.5] * 3, std=[0.25] * 3, dataset="imagefolder")
    sizes = {"cat": [(10, 12), (9, 9)], "dog": [(12, 10), (16, 8)]}
    for name, shapes in sizes.items():
        (tmp_path / "data" / "val" / name).mkdir(parents=True)
        for i, (w, h) in enumerate(shapes):
            pixels = torch.randint(0, 256, (h, w, 3), dtype=torch.uint8).numpy()
            Image.fromarray(pixels).save(tmp_path / "data" / "val" / name / f"{i}.png")
    (tmp_path / "data" / "val" / "dog" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    result = evaluate(weights, data_dir=tmp_path / "data", device="cpu")
    assert result.num_images == 4 and result.per_class_total == [2, 2] and result.class_names == ["cat", "dog"]
    assert len(result.skipped) == 1 and "broken.png" in result.skipped[0]
    assert cli_main(["eval", str(weights), "--data", str(tmp_path / "data"), "--limit-test", "2"]) == 0
    captured = capsys.readouterr()
    assert "broken.png" not in captured.err  # the 2-image subset takes one image per class
    with pytest.raises(UserError, match="--data"):
        evaluate(weights)


def test_a_malicious_pickle_as_weights_runs_no_code(tmp_path, capsys, malicious_pickle):
    payload, marker = malicious_pickle
    for name in ("model.pth", "model.safetensors"):
        evil = tmp_path / name
        evil.write_bytes(payload)
        assert cli_main(["eval", str(evil), "--dataset", "fashion-mnist"]) == 2
        err = capsys.readouterr().err.strip()
        assert name in err and len(err.splitlines()) == 1
    assert not marker.exists()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_and_bf16_agree_with_cpu(tiny_model):
    images = torch.randint(0, 256, (16, 1, SIZE, SIZE), dtype=torch.uint8)
    labels = torch.arange(16) % 10
    cpu, _ = class_probabilities(TorchClassifier(tiny_model, "cpu"), [(images, labels)])
    gpu, _ = class_probabilities(TorchClassifier(tiny_model, "cuda"), [(images, labels)])
    bf16, _ = class_probabilities(TorchClassifier(tiny_model, "cuda", bf16=True), [(images, labels)])
    tiny_model.to("cpu")
    assert torch.allclose(cpu, gpu, atol=1e-4)
    assert torch.allclose(cpu, bf16, atol=5e-2)


def test_report_of_many_classes_stays_short():
    probs = torch.eye(200)[torch.arange(400) % 200]
    labels = torch.arange(400) % 200
    labels[:7] = 199  # seven wrong answers make classes 0..6 the worst
    result = compute_metrics(probs, labels, [f"n{i:03d}" for i in range(200)])
    text = format_result(result)
    assert "10 worst and 10 best of 200" in text and "omitted" in text
    assert "n000" in text and "n150" not in text and len(text.splitlines()) < 40


def test_a_run_folder_means_its_weights(tiny_model, tmp_path, capsys):
    from PIL import Image

    run = tmp_path / "run"
    run.mkdir()
    googlenet.save_weights(tiny_model, run / "model.safetensors", dataset="imagefolder")
    for i, name in enumerate(tiny_model.meta["class_names"]):  # one image per class
        (tmp_path / "data" / "val" / name).mkdir(parents=True)
        Image.new("L", (SIZE, SIZE), 25 * i).save(tmp_path / "data" / "val" / name / "0.png")
    argv = ["--data", str(tmp_path / "data"), "--device", "cpu", "--json"]
    assert cli_main(["eval", str(run / "model.safetensors"), *argv]) == 0
    from_file = json.loads(capsys.readouterr().out)
    assert cli_main(["eval", str(run), *argv]) == 0
    from_folder = json.loads(capsys.readouterr().out)
    assert from_folder["top1_error"] == from_file["top1_error"] and from_folder["num_images"] == 10
    empty = tmp_path / "empty"
    empty.mkdir()
    assert cli_main(["eval", str(empty), "--dataset", "fashion-mnist"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"{empty} is a folder, not a weights file" in err, err
    assert str(empty / "model.safetensors") in err


class RecordingClassifier(MeanPixelClassifier):
    """MeanPixelClassifier that keeps every batch it is given, to check what a model saw."""

    def __init__(self, meta: dict, seed: int = 0) -> None:
        super().__init__(meta, seed)
        self.inputs: list[torch.Tensor] = []

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.inputs.append(x)
        return super().__call__(x)


def _colour_folder(root, classes: int = 2):
    """root/val/c<i>/0.png: one solid, clearly coloured image per class."""
    from PIL import Image

    for i in range(classes):
        (root / "val" / f"c{i}").mkdir(parents=True)
        Image.new("RGB", (12, 10), (200, 30 + 40 * i, 90)).save(root / "val" / f"c{i}" / "0.png")


def test_an_image_folder_ensemble_decodes_for_each_models_channels(tmp_path, monkeypatch):
    """An RGB model ensembled after a grayscale one must still see colour, not luma repeated."""
    _colour_folder(tmp_path / "data")
    models = {"gray": RecordingClassifier(meta_for(channels=1, classes=2)),
              "rgb": RecordingClassifier(meta_for(channels=3, classes=2), seed=1)}
    monkeypatch.setattr("googlenet.evaluate.load_classifier", lambda path, **_: models[path])
    evaluate("gray", ensemble=["rgb"], dataset="imagefolder", data_dir=tmp_path / "data")
    rgb = torch.cat(models["rgb"].inputs)
    assert rgb.shape[1] == 3 and not torch.equal(rgb[:, 0], rgb[:, 1])
    assert torch.cat(models["gray"].inputs).shape[1] == 1


def test_an_image_folder_with_no_readable_image_is_one_line_saying_why(tmp_path, monkeypatch, capsys):
    for i in range(2):
        (tmp_path / "data" / "val" / f"c{i}").mkdir(parents=True)
        (tmp_path / "data" / "val" / f"c{i}" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    model = MeanPixelClassifier({**meta_for(classes=2), "dataset": "imagefolder"})
    monkeypatch.setattr("googlenet.evaluate.load_classifier", lambda path, **_: model)
    assert cli_main(["eval", "m.safetensors", "--data", str(tmp_path / "data")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "none of the 2 image(s)" in err and "broken.png" in err, err
    assert "empty" not in err


class ConstantClassifier:
    """Always predicts class `index` (whatever the image): what it scores shows how labels were matched."""

    def __init__(self, meta: dict, index: int) -> None:
        self.meta, self.index = meta, index

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        logits = torch.zeros(len(x), self.meta["num_classes"])
        logits[:, self.index] = 5.0
        return logits


def test_image_folder_classes_are_matched_to_the_model_by_name_not_folder_order(tmp_path, monkeypatch):
    """Folders are listed alphabetically ("ant" before "zebra"); this model's class 0 is "zebra".
    Matched by position, the three "ant" images were scored against "zebra": 25% instead of 75%."""
    from PIL import Image

    for name, count in (("ant", 3), ("zebra", 1)):
        (tmp_path / "data" / "test" / name).mkdir(parents=True)
        for i in range(count):
            Image.new("L", (8, 8), 40 * i).save(tmp_path / "data" / "test" / name / f"{i}.png")
    meta = {**meta_for(classes=2), "class_names": ["zebra", "ant"], "dataset": "imagefolder"}
    monkeypatch.setattr("googlenet.evaluate.load_classifier", lambda path, **_: ConstantClassifier(meta, 1))
    result = evaluate("m.safetensors", data_dir=tmp_path / "data")
    assert result.top1 == pytest.approx(0.75) and result.per_class_total == [1, 3]
    assert any("matched to the classes of m.safetensors by name" in n for n in result.notes)
    assert format_result(result).splitlines()[4].startswith("note: the 2 classes of ")  # above the tables


def test_folder_class_names_match_with_the_characters_a_folder_cannot_hold():
    from googlenet.data.datasets import FASHION_MNIST_CLASSES

    folders = sorted(["T-shirt_top", "Trouser", "Ankle boot", "Bag"])
    to_model, notes = folder_classes_to_model(folders, FASHION_MNIST_CLASSES, "DIR", "w")
    assert to_model == [9, 8, 0, 1] and notes
    assert folder_classes_to_model(FASHION_MNIST_CLASSES, FASHION_MNIST_CLASSES, "DIR", "w") == (None, [])
    with pytest.raises(UserError, match=r"has 2 classes and 1 of them \(Shoes\) match none of the 10 classes of w"):
        folder_classes_to_model(["Bag", "Shoes"], FASHION_MNIST_CLASSES, "DIR", "w")
    # no name in common and as many classes: compared by index, with the warning as before
    to_model, notes = folder_classes_to_model([str(i) for i in range(10)], FASHION_MNIST_CLASSES, "DIR", "w")
    assert to_model is None and "compared by index" in notes[0]


def test_a_tensor_dataset_is_matched_by_class_name_too(monkeypatch):
    """A model fine-tuned on an image folder lists Fashion-MNIST's classes alphabetically;
    `eval --dataset fashion-mnist` compared them by index (28% for a good model)."""
    from googlenet.data import datasets

    if not (Path(datasets.FASHION_MNIST_SYSTEM_DIR) / "t10k-images-idx3-ubyte.gz").is_file():
        pytest.skip("dataset-fashion-mnist is not installed")
    alphabetical = sorted(datasets.FASHION_MNIST_CLASSES)
    meta = {**meta_for(classes=10), "class_names": alphabetical, "dataset": "fashion-mnist"}
    ankle_boot = alphabetical.index("Ankle boot")  # 0 here, 9 in the dataset
    monkeypatch.setattr("googlenet.evaluate.load_classifier", lambda path, **_: ConstantClassifier(meta, ankle_boot))
    result = evaluate("m.safetensors", limit_test=100)
    labels = datasets.load_dataset("fashion-mnist", "test", limit=100).labels
    assert result.top1 == pytest.approx(float((labels == 9).float().mean()))
    assert any("matched to the classes of m.safetensors by name" in n for n in result.notes)
