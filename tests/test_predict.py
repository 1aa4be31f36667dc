"""googlenet.predict and googlenet.images: preprocessing from metadata, every image mode,
bad and hostile files (one error per file, the rest still classified), the predict CLI."""
from __future__ import annotations

import importlib.util
import io
import json
import os
import struct
import sys
import tempfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from torchvision.transforms.v2 import functional as TF

import googlenet
from googlenet import UserError
from googlenet.cli import main as cli_main
from googlenet.images import ImageReadError, read_image
from googlenet.predict import (TorchClassifier, complete_meta, load_classifier, pick_backend, predict,
                               predict_files, preprocess)

SIZE, RESIZE = 8, 10
META = {"class_names": [f"class{i}" for i in range(10)], "input_size": SIZE, "resize": RESIZE,
        "mean": [0.5], "std": [0.25], "dataset": "fashion-mnist"}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A random googlenet_cifar taking 1 channel at 8 px, saved with preprocessing metadata."""
    torch.manual_seed(0)
    model = googlenet.create_model("googlenet_cifar", in_chans=1, num_classes=10, aux_logits=False)
    path = tmp_path_factory.mktemp("weights") / "tiny.safetensors"
    googlenet.save_weights(model, path, **META)
    return model.eval(), path


def gradient(width: int = 30, height: int = 20) -> np.ndarray:
    x = np.linspace(0, 255, width)[None, :] * np.ones((height, 1))
    y = np.linspace(0, 255, height)[:, None] * np.ones((1, width))
    return np.stack([x, y, 255 - x], axis=-1).astype(np.uint8)


def write_modes(folder: Path) -> dict[str, Path]:
    """One file per mode Pillow decodes: the formats users send."""
    rgb = Image.fromarray(gradient())
    files: dict[str, Path] = {}

    def save(name: str, image: Image.Image, **kw) -> None:
        files[name] = folder / name
        image.save(files[name], **kw)

    save("rgb.png", rgb)
    save("gray.jpg", rgb.convert("L"), quality=90)
    save("rgba.png", rgb.convert("RGBA"))
    save("la.png", rgb.convert("LA"))
    save("bilevel.png", rgb.convert("1"))
    palette = rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    save("palette_transparent.png", palette, transparency=0)
    save("cmyk.jpg", rgb.convert("CMYK"))
    save("gray16.png", Image.fromarray((gradient()[:, :, 0].astype(np.uint16) * 257)))
    save("float.tiff", Image.fromarray(gradient()[:, :, 0].astype(np.float32) / 255.0))
    frames = [rgb, rgb.transpose(Image.Transpose.FLIP_LEFT_RIGHT)]
    save("animated.gif", frames[0], save_all=True, append_images=frames[1:], duration=50, loop=0)
    save("image.bmp", rgb)
    save("image.webp", rgb)
    save("portrait.png", rgb.transpose(Image.Transpose.ROTATE_90))
    return files


def png_with_declared_size(width: int, height: int) -> bytes:
    """A 1x1 PNG whose header claims width x height (CRC fixed): a decompression bomb's header."""
    buffer = io.BytesIO()
    Image.new("L", (1, 1)).save(buffer, format="PNG")
    data = bytearray(buffer.getvalue())
    ihdr = data.index(b"IHDR")
    data[ihdr + 4:ihdr + 12] = struct.pack(">II", width, height)
    crc = zlib.crc32(bytes(data[ihdr:ihdr + 17])) & 0xFFFFFFFF
    data[ihdr + 17:ihdr + 21] = struct.pack(">I", crc)
    return bytes(data)


def write_bad_files(folder: Path) -> dict[str, Path]:
    good = io.BytesIO()
    Image.fromarray(gradient(64, 64)).save(good, format="PNG")
    jpeg = io.BytesIO()
    Image.fromarray(gradient(64, 64)).save(jpeg, format="JPEG")
    files = {name: folder / name for name in
             ("empty.png", "truncated.png", "truncated.jpg", "notes.txt", "bomb.png", "a_folder", "missing.png")}
    files["empty.png"].write_bytes(b"")
    files["truncated.png"].write_bytes(good.getvalue()[: len(good.getvalue()) // 2])
    files["truncated.jpg"].write_bytes(jpeg.getvalue()[: len(jpeg.getvalue()) // 2])
    files["notes.txt"].write_text("this is not an image\n")
    files["bomb.png"].write_bytes(png_with_declared_size(100_000, 100_000))
    files["a_folder"].mkdir()
    return files


# ------------------------------------------------------------------ decoding
@pytest.mark.parametrize("channels", [1, 3])
def test_every_mode_decodes_to_the_model_channels(tmp_path, channels):
    for name, path in write_modes(tmp_path).items():
        image = read_image(path, channels)
        assert image.dtype == torch.uint8 and image.shape[0] == channels, name
        expected = (30, 20) if name == "portrait.png" else (20, 30)
        assert tuple(image.shape[1:]) == expected, name


def test_sixteen_bit_is_rescaled_not_clipped(tmp_path):
    path = tmp_path / "levels16.png"
    Image.fromarray(np.array([[0, 257 * 128, 65535]], dtype=np.uint16)).save(path)
    assert read_image(path, 1).flatten().tolist() == [0, 128, 255]


def test_rgb_to_gray_matches_pillow_luma(tmp_path):
    path = tmp_path / "rgb.png"
    Image.fromarray(gradient()).save(path)
    expected = torch.from_numpy(np.array(Image.open(path).convert("L"))).unsqueeze(0)
    assert torch.equal(read_image(path, 1), expected)


@pytest.mark.parametrize("name, reason", [
    ("empty.png", "empty"), ("truncated.png", "corrupt or truncated"), ("truncated.jpg", "corrupt or truncated"),
    ("notes.txt", "not an image"), ("bomb.png", "decompression bomb"), ("a_folder", "a folder with no image files"),
    ("missing.png", "no such file")])
def test_bad_files_raise_one_line_errors_naming_the_file(tmp_path, name, reason):
    path = write_bad_files(tmp_path)[name]
    with pytest.raises(ImageReadError) as info:
        read_image(path, 3)
    message = str(info.value)
    assert str(path) in message and reason in message and "\n" not in message


def test_pixel_budget_is_checked_before_decoding(tmp_path):
    path = tmp_path / "big.png"
    Image.fromarray(gradient(64, 64)).save(path)
    assert read_image(path, 3, max_pixels=64 * 64).shape == (3, 64, 64)
    with pytest.raises(ImageReadError, match="decompression bomb"):
        read_image(path, 3, max_pixels=64 * 64 - 1)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_fifo_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    with pytest.raises(ImageReadError, match="not a regular file"):
        read_image(fifo, 3)


def _seed_images() -> list[bytes]:
    out = []
    for fmt in ("PNG", "JPEG", "GIF", "BMP", "TIFF"):
        buffer = io.BytesIO()
        Image.fromarray(gradient(12, 10)).save(buffer, format=fmt)
        out.append(buffer.getvalue())
    return out


SEEDS = _seed_images()


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.sampled_from(SEEDS), cut=st.floats(0, 1),
       flips=st.lists(st.tuples(st.floats(0, 1), st.integers(0, 255)), max_size=8),
       junk=st.binary(max_size=64))
def test_fuzzed_images_decode_or_fail_cleanly(seed, cut, flips, junk):
    data = bytearray(seed[: max(1, int(len(seed) * cut))] if cut < 0.9 else seed)
    for where, value in flips:
        data[int(where * (len(data) - 1))] = value
    data += junk if cut < 0.2 else b""
    with tempfile.NamedTemporaryFile(suffix=".img", delete=False) as f:
        f.write(bytes(data))
    try:
        image = read_image(f.name, 3, max_pixels=4096 * 4096)
        assert image.dtype == torch.uint8 and image.shape[0] == 3
    except ImageReadError as e:
        assert f.name in str(e) and "\n" not in str(e)
    finally:
        os.unlink(f.name)


# ------------------------------------------------------------------ preprocessing
def test_preprocess_resizes_shorter_side_crops_centre_and_normalises():
    meta = complete_meta(META, 10, 1)
    image = torch.from_numpy(gradient()[:, :, :1].copy()).permute(2, 0, 1)  # 1 x 20 x 30
    x = preprocess(image, meta)
    resized = TF.resize(image.float() / 255, [RESIZE], antialias=True)  # 10 x 15
    assert tuple(resized.shape[-2:]) == (10, 15)
    expected = (resized[..., 1:9, 4:12] - 0.5) / 0.25  # offsets as torchvision's CenterCrop: 1, round(3.5)
    assert x.shape == (1, SIZE, SIZE) and torch.allclose(x, expected)
    assert torch.allclose(x, (TF.center_crop(resized, [SIZE]) - 0.5) / 0.25)


def test_extreme_aspect_ratio_keeps_memory_bounded(tmp_path):
    path = tmp_path / "strip.png"
    Image.fromarray(np.full((2, 60_000), 200, dtype=np.uint8)).save(path)
    meta = complete_meta({"input_size": 224, "resize": 256, "mean": [0.5], "std": [0.5]}, 2, 1)
    x = preprocess(read_image(path, 1), meta)  # unguarded: a 256 x 7,680,000 float image (7.9 GB)
    assert x.shape == (1, 224, 224) and torch.allclose(x, torch.full_like(x, (200 / 255 - 0.5) / 0.5), atol=1e-5)
    from googlenet.predict import MAX_ASPECT, resize_shorter
    assert resize_shorter(torch.zeros(1, 3, 2, 60_000), 2).shape[-1] == 2 * MAX_ASPECT


def test_complete_meta_fills_defaults_and_rejects_inconsistent_metadata():
    meta = complete_meta({}, 3, 3, native_size=224)
    assert meta["resize"] == 256 and meta["class_names"] == ["0", "1", "2"] and len(meta["mean"]) == 3
    assert complete_meta({}, 2, 1, native_size=32)["resize"] == 32
    with pytest.raises(UserError, match="class names"):
        complete_meta({"class_names": ["a"]}, 2, 1)
    with pytest.raises(UserError, match="mean/std"):
        complete_meta({"mean": [0.5, 0.5, 0.5], "std": [1, 1, 1]}, 2, 1)


# ------------------------------------------------------------------ prediction
def test_predict_matches_a_direct_forward_pass(tiny, tmp_path):
    model, path = tiny
    files = write_modes(tmp_path)
    paths = [files["rgb.png"], files["gray16.png"], files["palette_transparent.png"]]
    results = predict(path, paths, topk=3, device="cpu")
    assert [r.path for r in results] == [str(p) for p in paths]
    meta = complete_meta(META, 10, 1)
    batch = torch.stack([preprocess(read_image(p, 1), meta) for p in paths])
    with torch.inference_mode():
        probs = torch.softmax(model(batch), dim=1)
    top = probs.topk(3, dim=1)
    for i, result in enumerate(results):
        assert result.ok and result.indices == top.indices[i].tolist()
        assert result.labels == [META["class_names"][j] for j in top.indices[i].tolist()]
        assert result.probabilities == pytest.approx(top.values[i].tolist(), abs=1e-5)
        assert result.probabilities == sorted(result.probabilities, reverse=True)
    # One path needs no list (a string was read character by character), and a folder means
    # its image files, as on the command line (it was "a folder with no image files").
    one = predict(path, paths[0], topk=3, device="cpu")
    assert [r.path for r in one] == [str(paths[0])] and one[0].indices == results[0].indices
    in_folder = predict(path, tmp_path, topk=3, device="cpu")
    assert len(in_folder) >= 3 and all(r.path.startswith(str(tmp_path)) for r in in_folder)


def test_bad_files_do_not_stop_the_others(tiny, tmp_path):
    model, _ = tiny
    bad = write_bad_files(tmp_path)
    good = write_modes(tmp_path)["rgb.png"]
    paths = [good, *bad.values(), good]
    results = list(predict_files(TorchClassifier(model), paths, topk=2, batch_size=3))
    assert [r.path for r in results] == [str(p) for p in paths]
    assert results[0].ok and results[-1].ok and results[0].indices == results[-1].indices
    assert all(not r.ok and str(p) in r.error for r, p in zip(results[1:-1], bad.values()))


def test_predict_cli_text_json_and_exit_codes(tiny, tmp_path, capsys):
    _, weights = tiny
    files = write_modes(tmp_path)
    bad = write_bad_files(tmp_path)
    good = [str(files["rgb.png"]), str(files["cmyk.jpg"])]
    assert cli_main(["predict", str(weights), *good, "--topk", "2", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert good[0] in out and good[1] in out and out.count("%") == 4
    code = cli_main(["predict", str(weights), good[0], str(bad["notes.txt"]), str(bad["bomb.png"]), good[1],
                     "--json", "--topk", "12"])
    captured = capsys.readouterr()
    assert code == 1
    lines = [json.loads(line) for line in captured.out.splitlines()]
    assert [line["path"] for line in lines] == [good[0], str(bad["notes.txt"]), str(bad["bomb.png"]), good[1]]
    assert len(lines[0]["predictions"]) == 10 and "error" in lines[1] and "error" in lines[2]
    assert sum(p["probability"] for p in lines[0]["predictions"]) == pytest.approx(1.0, abs=1e-5)
    errors = captured.err.strip().splitlines()
    assert len(errors) == 2 and "notes.txt" in errors[0] and "bomb.png" in errors[1]


def test_predict_cli_bad_weights_and_flags(tiny, tmp_path, capsys):
    _, weights = tiny
    image = write_modes(tmp_path)["rgb.png"]
    pickle_file = tmp_path / "model.pth"
    pickle_file.write_bytes(b"\x80\x04\x95not really a pickle")
    assert cli_main(["predict", str(pickle_file), str(image)]) == 2
    err = capsys.readouterr().err.strip()
    assert "model.pth" in err and len(err.splitlines()) == 1
    onnx_name = tmp_path / "model.onnx"
    onnx_name.write_bytes(b"garbage")
    assert cli_main(["predict", str(onnx_name), str(image), "--backend", "torch"]) == 2
    assert "is an ONNX model; run it with --backend auto (or onnxruntime)" in capsys.readouterr().err
    if importlib.util.find_spec("onnxruntime"):  # the default backend picks onnxruntime for .onnx
        assert cli_main(["predict", str(onnx_name), str(image)]) == 2
        err = capsys.readouterr().err.strip()
        assert "not a valid ONNX model" in err and len(err.splitlines()) == 1
    assert cli_main(["predict", str(weights), str(image), "--topk", "0"]) == 2
    assert "--topk" in capsys.readouterr().err


@pytest.mark.parametrize("as_folder", [False, True])
def test_our_weights_with_backend_onnxruntime_are_exported_for_it(tiny, tmp_path, capsys, as_folder):
    """--backend onnxruntime on .safetensors weights (or a run folder) exports them to ONNX at
    load, as --backend ncnn converts them; once it said "Protobuf parsing failed", then refused."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    _, weights = tiny
    if as_folder:
        (tmp_path / "run").mkdir()
        (tmp_path / "run" / "model.safetensors").write_bytes(weights.read_bytes())
        weights = tmp_path / "run"
    images = write_modes(tmp_path)
    paths = [images["rgb.png"], images["animated.gif"], images["gray.jpg"]]
    via_onnx = predict(weights, paths, topk=3, backend="onnxruntime")
    via_torch = predict(weights, paths, topk=3, device="cpu")
    for a, b in zip(via_onnx, via_torch):
        assert a.indices == b.indices and a.probabilities == pytest.approx(b.probabilities, abs=1e-4)
    classifier = load_classifier(weights, backend="onnxruntime")
    assert classifier.backend == "ONNX Runtime on the CPU" and classifier.meta["resize"] == RESIZE
    assert len(classifier(torch.rand(5, 1, SIZE, SIZE))) == 5  # any batch (a dynamic-batch export)
    assert cli_main(["predict", str(weights), str(paths[0]), "--backend", "onnxruntime", "--json"]) == 0
    assert '"predictions"' in capsys.readouterr().out


# ------------------------------------------------------------------ onnxruntime
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the legacy exporter, as export.py uses it
def test_onnxruntime_backend_matches_torch(tiny, tmp_path, monkeypatch):
    pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")
    backend = pytest.importorskip("googlenet.onnx_backend")
    model, _ = tiny
    path = tmp_path / "tiny.onnx"
    model = model.to(memory_format=torch.contiguous_format)
    with torch.no_grad():
        torch.onnx.export(model, (torch.randn(1, 1, SIZE, SIZE),), str(path), input_names=["input"],
                          output_names=["logits"], dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
                          opset_version=17, dynamo=False)
    proto = onnx.load(str(path))
    meta = {**META, "in_chans": 1, "model": "googlenet_cifar", "num_classes": 10, "format": backend.ONNX_META_FORMAT}
    for key, value in backend.encode_metadata(meta).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(proto, str(path))
    images = write_modes(tmp_path)
    paths = [images["rgb.png"], images["animated.gif"]]
    via_onnx = predict(path, paths, topk=3, backend="onnxruntime")
    via_torch = predict(tiny[1], paths, topk=3, device="cpu")
    for a, b in zip(via_onnx, via_torch):
        assert a.indices == b.indices and a.probabilities == pytest.approx(b.probabilities, abs=1e-4)
    assert load_classifier(path, backend="onnxruntime").meta["resize"] == RESIZE
    assert cli_main(["predict", str(path), str(paths[0]), "--backend", "onnxruntime", "--json"]) == 0
    assert cli_main(["predict", str(path), str(paths[0]), "--json"]) == 0  # .onnx: onnxruntime by default
    assert load_classifier(path).meta["resize"] == RESIZE
    monkeypatch.setitem(sys.modules, "onnx", None)  # a deployment with onnxruntime alone runs .onnx files
    assert load_classifier(path, backend="onnxruntime").meta["resize"] == RESIZE


# ------------------------------------------------------------------ ncnn
def test_ncnn_backend_matches_torch(tiny, tmp_path, capsys):
    pytest.importorskip("ncnn")
    pytest.importorskip("pnnx")
    _, weights = tiny
    images = write_modes(tmp_path)
    paths = [images["rgb.png"], images["animated.gif"], images["gray16.png"]]
    via_ncnn = predict(weights, paths, topk=3, backend="ncnn")
    via_torch = predict(weights, paths, topk=3, device="cpu")
    for a, b in zip(via_ncnn, via_torch):
        assert a.ok and a.indices == b.indices and a.probabilities == pytest.approx(b.probabilities, abs=1e-5)
    assert cli_main(["predict", str(weights), str(paths[0]), "--backend", "ncnn", "--json"]) == 0
    line = json.loads(capsys.readouterr().out)
    assert [entry["label"] for entry in line["predictions"][:3]] == via_torch[0].labels


def test_ncnn_backend_leaves_onnx_files_to_onnxruntime_and_names_its_extra(tiny, tmp_path, capsys, monkeypatch):
    assert pick_backend("m.onnx", "ncnn") == "onnxruntime" and pick_backend("m.safetensors", "ncnn") == "ncnn"
    image = write_modes(tmp_path)["rgb.png"]
    import googlenet.ncnn_backend

    monkeypatch.setattr(googlenet.ncnn_backend, "ncnn_available", lambda: False)
    assert cli_main(["predict", str(tiny[1]), str(image), "--backend", "ncnn"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "pip install 'googlenet[ncnn]'" in err, err


def test_pick_backend_by_suffix():
    assert pick_backend("m.onnx") == "onnxruntime" and pick_backend("runs/x/M.ONNX") == "onnxruntime"
    assert pick_backend("m.safetensors") == "torch" and pick_backend("m.onnx", "torch") == "torch"


def test_our_other_files_given_as_weights_say_what_they_are(tiny, tmp_path, capsys):
    model, weights = tiny
    image = write_modes(tmp_path)["rgb.png"]
    from googlenet.export import export_torchscript

    script = export_torchscript(model, tmp_path / "tiny.torchscript.pt")
    assert cli_main(["predict", str(script), str(image)]) == 2
    err = capsys.readouterr().err.strip()
    assert "TorchScript export" in err and ".safetensors" in err and len(err.splitlines()) == 1
    run = tmp_path / "run"
    run.mkdir()
    torch.save({"model": {}, "config": {}}, run / "last.pt")
    (run / "model.safetensors").write_bytes(weights.read_bytes())
    assert cli_main(["predict", str(run / "last.pt"), str(image)]) == 2
    err = capsys.readouterr().err.strip()
    assert "training checkpoint" in err and str(run / "model.safetensors") in err
    # The arguments swapped: an image where the weights go.
    assert cli_main(["predict", str(image), str(weights)]) == 2
    err = capsys.readouterr().err.strip()
    assert f"{image} is an image, not a weights file; were the arguments swapped?" in err and len(err.splitlines()) == 1
    # A run's text files, and the other two files of an ncnn export, name what to pass instead.
    (run / "config.yaml").write_text("model: googlenet_cifar\n")
    assert cli_main(["eval", str(run / "config.yaml")]) == 2
    assert capsys.readouterr().err.strip() == (f"googlenet eval: error: {run / 'config.yaml'} is a text file, not "
                                               f"weights; this run's weights are {run / 'model.safetensors'}")
    for part in ("m.bin", "m.json"):
        (tmp_path / "m.param").write_text("7767517\n")
        (tmp_path / part).write_bytes(b"\0" * 8)
        assert cli_main(["predict", str(tmp_path / part), str(image)]) == 2
        assert capsys.readouterr().err.strip().endswith(f"is part of an ncnn export; pass its graph file, "
                                                        f"{tmp_path / 'm.param'}")
    assert "predict and eval take .safetensors weights, a run folder, an .onnx file or an ncnn .param file" in \
        (cli_main(["eval", str(script)]), capsys.readouterr().err)[1]
    # import-torchvision given our own checkpoint: says so, not a list of shape mismatches
    assert cli_main(["import-torchvision", str(run / "last.pt"), str(tmp_path / "x.safetensors")]) == 2
    err = capsys.readouterr().err.strip()
    assert "is a googlenet training checkpoint, not a torchvision one" in err and len(err.splitlines()) == 1


def test_a_folder_without_images_is_reported_as_such(tmp_path):
    with pytest.raises(ImageReadError, match=r"a folder with no image files directly in it \(.jpg"):
        read_image(tmp_path, 3)


def test_predict_classifies_every_image_in_a_folder(tiny, tmp_path, capsys):
    _, weights = tiny
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("b.PNG", "a.jpg"):
        Image.fromarray(gradient()).save(photos / name, format="PNG" if name.endswith("PNG") else "JPEG")
    (photos / "notes.txt").write_text("not an image")
    (photos / "nested").mkdir()
    (tmp_path / "empty").mkdir()
    (tmp_path / "loose").mkdir()
    loose = write_modes(tmp_path / "loose")["rgb.png"]
    code = cli_main(["predict", str(weights), str(photos), str(loose), str(tmp_path / "empty"), "--json",
                     "--device", "cpu"])
    captured = capsys.readouterr()
    paths = [json.loads(line)["path"] for line in captured.out.splitlines()]
    assert paths == [str(photos / "a.jpg"), str(photos / "b.PNG"), str(loose), str(tmp_path / "empty")]
    assert code == 1 and "a folder with no image files" in captured.err and captured.err.count("\n") == 1


def test_a_malicious_pickle_as_weights_runs_no_code(tmp_path, capsys, malicious_pickle):
    payload, marker = malicious_pickle
    image = write_modes(tmp_path)["rgb.png"]
    evil = tmp_path / "evil.pth"
    evil.write_bytes(payload)
    assert cli_main(["predict", str(evil), str(image)]) == 2
    err = capsys.readouterr().err.strip()
    assert "evil.pth" in err and len(err.splitlines()) == 1
    assert not marker.exists()


def test_a_run_folder_means_its_weights(tiny, tmp_path, capsys):
    _, weights = tiny
    image = str(write_modes(tmp_path)["rgb.png"])
    run = tmp_path / "run"
    run.mkdir()
    (run / "model.safetensors").write_bytes(weights.read_bytes())
    assert cli_main(["predict", str(weights), image, "--json", "--device", "cpu"]) == 0
    from_file = capsys.readouterr().out
    assert cli_main(["predict", str(run), image, "--json", "--device", "cpu"]) == 0
    assert capsys.readouterr().out == from_file
    (run / "model.safetensors").unlink()
    torch.save({"model": {}, "config": {}}, run / "last.pt")
    assert cli_main(["predict", str(run), image]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"{run} is a folder, not a weights file" in err, err
    assert f"googlenet train --resume {run}" in err


def test_forgetting_the_weights_or_the_images_is_one_line(capsys):
    assert cli_main(["predict", "shoe.png"]) == 2
    assert "no weights given: the first argument is the model" in capsys.readouterr().err
    assert cli_main(["predict", "runs/x/model.safetensors"]) == 2
    assert "no images given" in capsys.readouterr().err


def test_metadata_that_does_not_fit_the_model_names_the_file(tmp_path, capsys):
    """With --ensemble or several runs around, "the weights' metadata" alone does not say which."""
    model = googlenet.create_model("googlenet_cifar", in_chans=1, num_classes=10, aux_logits=False)
    path = tmp_path / "odd.safetensors"
    googlenet.save_weights(model, path, **{**META, "mean": [0.5, 0.5], "std": [0.5, 0.5]})
    image = tmp_path / "x.png"
    Image.fromarray(gradient()).save(image)
    assert cli_main(["predict", str(path), str(image), "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"googlenet predict: error: {path}: the weights' metadata has mean/std for 2 channel(s)")


def test_predict_notes_a_device_the_onnx_or_ncnn_backend_does_not_use(tiny, tmp_path, capsys):
    pytest.importorskip("ncnn")
    pytest.importorskip("pnnx")
    image = write_modes(tmp_path)["rgb.png"]
    assert cli_main(["predict", str(tiny[1]), str(image), "--backend", "ncnn", "--device", "cuda", "--json"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["path"] == str(image)  # stdout: the prediction alone
    assert captured.err.strip() == (f"googlenet predict: note: {tiny[1]} ran in ncnn on the CPU in fp32; "
                                    "--device cuda applies to the torch backend only")
