"""Export: ONNX (checked by onnx.checker, run by onnxruntime), TorchScript (script and trace),
int8, metadata round trips and one-line errors for bad input. Inputs are tiny (32 px) so the
whole file runs in about a minute on two cores."""
from __future__ import annotations

import os
import pickle
import signal
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import googlenet
from googlenet.cli import main
from googlenet.errors import UserError
from googlenet.export import (
    MIN_OPSET,
    export_metadata,
    export_onnx,
    export_torchscript,
    inference_network,
    load_torchscript,
)
from googlenet.onnx_backend import OnnxClassifier

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

ALL_MODELS = googlenet.list_models()
SIZE = 32  # exported input side: small, but every pool still sees >= 1 pixel


def tiny_model(name: str) -> torch.nn.Module:
    in_chans = 1 if name == "googlenet_cifar" else 3
    model = googlenet.create_model(name, num_classes=10, in_chans=in_chans)
    model.meta = {"class_names": [f"c{i}" for i in range(10)], "input_size": SIZE, "resize": SIZE,
                  "mean": [0.25] * in_chans, "std": [0.5] * in_chans, "dataset": "fashion-mnist"}
    return model.eval()


def rand_input(model: torch.nn.Module, batch: int) -> torch.Tensor:
    return torch.rand(batch, model.in_chans, SIZE, SIZE) * 2 - 0.9  # non-zero, both signs


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("weights") / "cifar.safetensors"
    googlenet.save_weights(tiny_model("googlenet_cifar"), path)
    return path


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_line_error(code: int, err: str, *needles: str) -> None:
    assert code == 2
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    for needle in needles:
        assert needle in lines[0]


# ------------------------------------------------------------------ TorchScript
@pytest.mark.parametrize("name", ALL_MODELS)
def test_script_and_trace_work_on_every_variant(name):
    """torchvision's googlenet could not be scripted or traced with its aux heads; ours can."""
    model = tiny_model(name)  # aux heads still attached
    x = rand_input(model, 2)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = model(x)
        scripted = torch.jit.script(model)
        traced = torch.jit.trace(inference_network(model), x)
        torch.testing.assert_close(scripted(x), expected)
        torch.testing.assert_close(traced(x), expected)
        torch.testing.assert_close(traced(x[:1]), expected[:1])  # traced graph is not tied to batch 2
        scripted.train()
        assert isinstance(scripted(x), torch.Tensor)  # one return type, even in train mode


def test_torchscript_export_carries_metadata(tmp_path, weights_file, capsys):
    out = tmp_path / "m.pt"
    code, stdout, err = run_cli(capsys, "export", str(weights_file), "--format", "torchscript", "--out", str(out))
    assert code == 0, err
    assert "TorchScript" in stdout
    module, meta = load_torchscript(out)
    model = googlenet.load_weights(weights_file).eval()
    assert meta["class_names"] == model.meta["class_names"]
    assert meta["input_size"] == SIZE and meta["in_chans"] == 1 and meta["model"] == "googlenet_cifar"
    x = rand_input(model, 3)
    with torch.no_grad():
        torch.testing.assert_close(module(x), model(x))


def test_traced_torchscript_export(tmp_path):
    model = tiny_model("googlenet_tv")
    module, meta = load_torchscript(export_torchscript(model, tmp_path / "tv.pt", method="trace"))
    assert meta["method"] == "trace"
    x = rand_input(model, 1)
    with torch.no_grad():
        torch.testing.assert_close(module(x), model(x))


# ------------------------------------------------------------------ ONNX
@pytest.mark.parametrize("name", [*ALL_MODELS, "googlenet_tv+transform_input"])
def test_onnx_matches_pytorch_for_batch_1_and_3(tmp_path, name):
    name, _, option = name.partition("+")
    model = tiny_model(name)
    if option:  # torchvision's ImageNet weights re-normalise the input inside the network
        model.transform_input = True
    path = export_onnx(model, tmp_path / f"{name}.onnx", dynamic_batch=True, verify=False)
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    # Only the inference network is exported: parameters match it, not the model with aux heads.
    net = inference_network(model)
    exported_params = sum(int(np.prod(t.dims)) for t in proto.graph.initializer)
    bn_stats = sum(b.numel() for n, b in net.named_buffers() if "running" in n)
    assert exported_params <= sum(p.numel() for p in net.parameters()) + bn_stats
    assert exported_params < sum(p.numel() for p in model.parameters())
    runtime = OnnxClassifier(path, threads=1)
    # Its workers stop spinning when a run returns (else they slow the PyTorch code between runs).
    assert runtime.session.get_session_options().get_session_config_entry("session.force_spinning_stop") == "1"
    for batch in (1, 3):
        x = rand_input(model, batch)
        with torch.no_grad():
            expected = model(x)
        got = runtime(x)
        assert got.shape == (batch, 10)
        assert (got - expected).abs().max().item() <= 1e-4 * max(1.0, expected.abs().max().item())


def test_onnx_cli_opset_fixed_batch_and_metadata(tmp_path, weights_file, capsys):
    out = tmp_path / "m.onnx"
    code, stdout, err = run_cli(capsys, "export", str(weights_file), "--format", "onnx",
                                "--opset", str(MIN_OPSET), "--out", str(out))
    assert code == 0, err
    proto = onnx.load(str(out))
    assert [o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")] == [MIN_OPSET]
    runtime = OnnxClassifier(out, threads=1)
    assert runtime.fixed_batch == 1
    model = googlenet.load_weights(weights_file)
    for key in ("class_names", "input_size", "resize", "mean", "std", "dataset"):
        assert runtime.meta[key] == pytest.approx(model.meta[key]), key
    assert runtime.meta["in_chans"] == 1 and runtime.meta["model"] == "googlenet_cifar"
    # A fixed-batch file still classifies a batch of 2, one image per run.
    x = rand_input(model, 2)
    with torch.no_grad():
        torch.testing.assert_close(runtime(x), model.eval()(x), atol=1e-4, rtol=1e-4)


def test_an_export_that_fails_verification_never_replaces_the_out_file(tmp_path, weights_file, capsys,
                                                                        monkeypatch):
    """The check against PyTorch runs before the rename: a good file already at --out stays."""
    from googlenet import export

    out = tmp_path / "m.onnx"
    assert run_cli(capsys, "export", str(weights_file), "--out", str(out))[0] == 0
    good = out.read_bytes()
    monkeypatch.setattr(export, "scaled_difference", lambda *args: 1.0)  # onnxruntime "disagrees"
    code, _, err = run_cli(capsys, "export", str(weights_file), "--out", str(out))
    assert code == 1 and f"{out}: onnxruntime differs from PyTorch" in err, err
    assert out.read_bytes() == good
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]  # no temporary file left


def test_default_output_name_next_to_weights(tmp_path, capsys):
    weights = tmp_path / "run.safetensors"
    googlenet.save_weights(tiny_model("googlenet_cifar"), weights)
    code, _, err = run_cli(capsys, "export", str(weights), "--format", "onnx")
    assert code == 0, err
    assert (tmp_path / "run.onnx").is_file()


def test_dynamo_exporter_also_works(tmp_path):
    """The torch.export-based exporter (onnxscript) is the fallback if the TorchScript one goes."""
    model = tiny_model("googlenet_cifar")
    with pytest.raises(UserError, match="too old"):
        export_onnx(model, tmp_path / "old.onnx", opset=17, dynamo=True)
    path = export_onnx(model, tmp_path / "d.onnx", opset=18, dynamic_batch=True, dynamo=True)  # verifies
    assert OnnxClassifier(path, threads=1).meta["opset"] == 18


# ------------------------------------------------------------------ int8
def test_int8_export_is_smaller_and_close(tmp_path, weights_file, capsys):
    int8 = tmp_path / "m.int8.onnx"
    code, stdout, err = run_cli(capsys, "export", str(weights_file), "--format", "onnx", "--int8",
                                "--dynamic-batch", "--calib-dataset", "random", "--calib-images", "32",
                                "--out", str(int8))
    assert code == 0, err
    assert "int8" in stdout
    model = googlenet.load_weights(weights_file).eval()
    fp32_bytes = 4 * sum(p.numel() for p in inference_network(model).parameters())
    assert os.path.getsize(int8) < 0.4 * fp32_bytes  # int8 weights: about a quarter of the bytes
    proto = onnx.load(str(int8))
    ops = {n.op_type for n in proto.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    q = OnnxClassifier(int8, threads=1)
    assert q.meta["int8"] is True and q.meta["calibration_images"] == 32
    assert q.meta["class_names"] == model.meta["class_names"]
    x = (torch.rand(8, 1, SIZE, SIZE) - 0.25) / 0.5  # the calibration distribution, normalised
    with torch.no_grad():
        ref = model(x)
    got = q(x)
    assert (got - ref).abs().max().item() < 0.1 * (ref.max() - ref.min()).item()


def test_int8_calibration_reads_training_images():
    """Calibration images are preprocessed exactly as predict does it."""
    from googlenet.data.datasets import FASHION_MNIST_SYSTEM_DIR, load_dataset
    from googlenet.predict import preprocess
    from googlenet.quantize import calibration_batches

    if not Path(FASHION_MNIST_SYSTEM_DIR).is_dir():
        pytest.skip("Fashion-MNIST is not installed")
    meta = export_metadata(inference_network(tiny_model("googlenet_cifar")))
    meta.update(input_size=28, resize=28)
    batches = calibration_batches(meta, "fashion-mnist", 20)
    assert [len(b) for b in batches] == [10, 10]  # equal batches, at most 16 images each
    expected = preprocess(load_dataset("fashion-mnist", "train", limit=20).images, meta)
    np.testing.assert_allclose(np.concatenate(batches), expected.numpy(), rtol=0, atol=1e-6)


# ------------------------------------------------------------------ bad input
def test_not_a_weights_file(tmp_path, capsys):
    bad = tmp_path / "notes.safetensors"
    bad.write_text("hello, not tensors")
    code, _, err = run_cli(capsys, "export", str(bad), "--format", "onnx")
    assert_one_line_error(code, err, str(bad))
    assert not (tmp_path / "notes.onnx").exists()


class _Planted:
    """A pickle whose loading runs code: it would create the folder `marker`."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_malicious_pickle_never_runs(tmp_path, capsys, suffix):
    marker = tmp_path / "pwned"
    evil = tmp_path / f"evil{suffix}"
    evil.write_bytes(pickle.dumps({"state_dict": _Planted(marker)}))
    for fmt in ("onnx", "torchscript"):
        code, _, err = run_cli(capsys, "export", str(evil), "--format", fmt)
        assert_one_line_error(code, err, str(evil))
    assert not marker.exists()


@pytest.mark.parametrize("argv, needle", [
    (["--format", "tflite"], "unknown format"),
    (["--format", "onnx", "--opset", "9"], "too old"),
    (["--format", "onnx", "--opset", "99"], "newer"),
    (["--format", "torchscript", "--int8"], "--int8 needs --format onnx"),
    (["--format", "onnx", "--int8", "--calib-images", "0"], "positive"),
    (["--format", "onnx", "--int8", "--calib-images", "100000"], "at most 5000"),
    (["--format", "onnx", "--calib-dataset", "random"], "--int8 only"),  # nothing to calibrate
    (["--format", "onnx", "--calib-images", "20"], "--int8 only"),
    (["--format", "onnx", "--data", "somewhere"], "--int8 only"),
])
def test_bad_flags_are_one_line_errors(weights_file, capsys, argv, needle):
    code, _, err = run_cli(capsys, "export", str(weights_file), *argv)
    assert_one_line_error(code, err, needle)


def test_missing_weights_and_overwrite_refused(tmp_path, weights_file, capsys):
    code, _, err = run_cli(capsys, "export", str(tmp_path / "nope.safetensors"), "--format", "onnx")
    assert_one_line_error(code, err, "not found")
    code, _, err = run_cli(capsys, "export", str(weights_file), "--format", "onnx", "--out", str(weights_file))
    assert_one_line_error(code, err, "overwrite")


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_an_out_that_cannot_be_written_is_one_line(tmp_path, weights_file, capsys, fmt):
    a_file = tmp_path / "notes.txt"
    a_file.write_text("a file, not a folder")
    code, _, err = run_cli(capsys, "export", str(weights_file), "--format", fmt, "--out", str(a_file / "m.out"))
    assert_one_line_error(code, err, f"cannot write {a_file / 'm.out'}", "pick another --out",
                          f"({a_file} is a file, not a folder)")  # not mkdir's bare "File exists"
    assert list(tmp_path.iterdir()) == [a_file]  # nothing left behind


def test_output_error_claims_only_the_output_and_its_folders(tmp_path):
    import errno

    from googlenet.errors import RunError, UserError, output_error

    out = tmp_path / "dir" / "m.onnx"
    beside = OSError(errno.ENOENT, "No such file or directory", str(tmp_path / "dir" / ".m.onnx.x1.tmp"))
    assert type(output_error(beside, out)) is UserError
    assert str(output_error(beside, out)) == f"cannot write {out} (No such file or directory); pick another --out"
    denied = PermissionError(errno.EACCES, "Permission denied", str(tmp_path))
    assert type(output_error(denied, out)) is RunError and str(tmp_path) in str(output_error(denied, out))
    assert output_error(OSError(errno.ENOENT, "gone", str(tmp_path / "other" / "x")), out) is None
    assert output_error(ValueError("not an OSError"), out) is None


def test_onnx_backend_rejects_files_that_are_not_our_onnx(tmp_path):
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x00\x01 not a protobuf" * 10)
    with pytest.raises(UserError, match="not a valid ONNX model"):
        OnnxClassifier(garbage)
    with pytest.raises(UserError, match="not found"):
        OnnxClassifier(tmp_path / "missing.onnx")
    # A valid ONNX model without our metadata: onnxruntime could run it, but predict
    # would not know how to preprocess, so it is refused with a hint.
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 2, 2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, 2, 2])])
    foreign = tmp_path / "foreign.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(foreign))
    with pytest.raises(UserError, match="not one exported by googlenet"):
        OnnxClassifier(foreign)


def test_int8_calibration_from_an_image_folder(tmp_path):
    from PIL import Image

    from googlenet.quantize import calibration_batches

    for cls in ("cat", "dog"):
        (tmp_path / "train" / cls).mkdir(parents=True)
        for i in range(3):
            pixels = np.full((40, 50, 3), 60 * i + (100 if cls == "dog" else 0), np.uint8)
            Image.fromarray(pixels).save(tmp_path / "train" / cls / f"{i}.png")
    (tmp_path / "train" / "dog" / "broken.png").write_bytes(b"not a png")
    meta = {"input_size": SIZE, "resize": SIZE, "in_chans": 3, "mean": [0.5] * 3, "std": [0.25] * 3}
    (batch,) = calibration_batches(meta, "imagefolder", 4, str(tmp_path))
    assert batch.shape == (4, 3, SIZE, SIZE)
    assert len({round(float(v), 4) for v in batch.mean(axis=(1, 2, 3))}) > 1  # drawn from both classes
    with pytest.raises(UserError, match="--data"):
        calibration_batches(meta, "imagefolder", 4, None)


def test_format_defaults_to_the_out_suffix_else_onnx(tmp_path, weights_file, capsys):
    code, stdout, err = run_cli(capsys, "export", str(weights_file), "--out", str(tmp_path / "deploy.pt"))
    assert code == 0, err
    assert "TorchScript" in stdout and isinstance(torch.jit.load(str(tmp_path / "deploy.pt")), torch.jit.ScriptModule)
    code, stdout, err = run_cli(capsys, "export", str(weights_file), "--out", str(tmp_path / "deploy.onnx"))
    assert code == 0, err
    assert "wrote ONNX" in stdout and (tmp_path / "deploy.onnx").read_bytes()[:2] != b"PK"  # a protobuf, not a zip
    weights = tmp_path / "plain.safetensors"
    weights.write_bytes(weights_file.read_bytes())
    code, stdout, err = run_cli(capsys, "export", str(weights))
    assert code == 0, err
    assert "wrote ONNX" in stdout and (tmp_path / "plain.onnx").is_file()
    code, _, err = run_cli(capsys, "export", str(weights_file), "--out", str(tmp_path / "deploy.tflite"))
    assert_one_line_error(code, err, "cannot tell the format", "--format onnx|torchscript")
    assert not (tmp_path / "deploy.tflite").exists()


# ------------------------------------------------------------------ what is given as WEIGHTS
def test_an_onnx_file_as_weights_is_named_not_overwritten(tmp_path, capsys):
    """Checked before the output name is derived: model.onnx -> model.onnx is no overwrite to refuse."""
    onnx_file = tmp_path / "model.onnx"
    onnx_file.write_bytes(b"\x08\x07\x12\x07pytorch")  # an ONNX protobuf's first bytes
    code, _, err = run_cli(capsys, "export", str(onnx_file))
    assert_one_line_error(code, err, f"{onnx_file} is already an ONNX export", ".safetensors")
    assert "overwrite" not in err and onnx_file.read_bytes() == b"\x08\x07\x12\x07pytorch"


def test_an_ncnn_export_as_weights_is_named(tmp_path, capsys):
    param, bin_file = tmp_path / "model.param", tmp_path / "model.bin"
    param.write_text("7767517\n")
    bin_file.write_bytes(b"\0" * 16)
    for given in (param, bin_file):
        code, _, err = run_cli(capsys, "export", str(given))
        assert_one_line_error(code, err, f"{given} is part of an ncnn export", ".safetensors")
    assert param.read_text() == "7767517\n" and bin_file.read_bytes() == b"\0" * 16


@pytest.mark.parametrize("name", ["model.torchscript.pt", "model.ts"])
def test_an_export_as_its_own_out_is_not_weights(tmp_path, capsys, name):
    other = tmp_path / name
    other.write_bytes(b"not safetensors")
    code, _, err = run_cli(capsys, "export", str(other), "--format", "torchscript", "--out", str(other))
    assert_one_line_error(code, err, str(other), "not a safetensors weights file")
    assert "overwrite" not in err


def test_a_run_folder_exports_its_weights(tmp_path, weights_file, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "model.safetensors").write_bytes(weights_file.read_bytes())
    code, out, _ = run_cli(capsys, "export", str(run), "--format", "torchscript")
    assert code == 0 and (run / "model.torchscript.pt").is_file(), out
    assert load_torchscript(run / "model.torchscript.pt")[1]["class_names"][0] == "c0"
    code, _, err = run_cli(capsys, "export", str(tmp_path), "--format", "onnx")
    assert_one_line_error(code, err, f"{tmp_path} is a folder, not a weights file", "model.safetensors")


def test_a_training_checkpoint_points_to_the_runs_weights(tmp_path, weights_file, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "model.safetensors").write_bytes(weights_file.read_bytes())
    torch.save({"model": googlenet.load_weights(weights_file).state_dict(), "config": {}}, run / "last.pt")
    code, _, err = run_cli(capsys, "export", str(run / "last.pt"))
    assert_one_line_error(code, err, f"{run / 'last.pt'} is a training checkpoint", str(run / "model.safetensors"))
    assert "import-torchvision" not in err


def test_int8_calibration_on_a_folder_of_unreadable_files_is_one_line(tmp_path, capsys):
    """Not one decodable calibration image: say so, naming a file, instead of torch.stack's traceback."""
    for cls in ("c0", "c1"):
        (tmp_path / "data" / "train" / cls).mkdir(parents=True)
        (tmp_path / "data" / "train" / cls / "broken.png").write_bytes(b"not a png")
    model = googlenet.create_model("googlenet_cifar", num_classes=2, in_chans=1)
    weights = googlenet.save_weights(model, tmp_path / "two.safetensors", class_names=["c0", "c1"],
                                     input_size=SIZE, resize=SIZE, mean=[0.5], std=[0.25], dataset="imagefolder")
    code, _, err = run_cli(capsys, "export", str(weights), "--int8", "--calib-images", "2",
                           "--data", str(tmp_path / "data"), "--out", str(tmp_path / "two.int8.onnx"))
    assert_one_line_error(code, err, "could be read", "broken.png")
    assert not (tmp_path / "two.int8.onnx").exists()
    # One readable image among them: calibrated on it, and told so (not the 3 asked for).
    from PIL import Image

    Image.new("L", (SIZE, SIZE), 128).save(tmp_path / "data" / "train" / "c1" / "good.png")
    code, _, err = run_cli(capsys, "export", str(weights), "--int8", "--calib-images", "3",
                           "--data", str(tmp_path / "data"), "--out", str(tmp_path / "two.int8.onnx"))
    assert code == 0, err
    assert "note: calibrating on 1 of the 3 images asked for" in err and (tmp_path / "two.int8.onnx").is_file()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_a_terminated_export_removes_its_temporary_files(tmp_path, weights_file, signum):
    """SIGTERM/SIGHUP (a closed terminal, `timeout`, a job scheduler) ended the process at once:
    no message, and the export's temporary folders stayed in /tmp. Now it unwinds like Ctrl-C."""
    import subprocess
    import sys
    import time

    tmp = tmp_path / "tmp"
    tmp.mkdir()
    out = tmp_path / "m.int8.onnx"
    env = {**os.environ, "TMPDIR": str(tmp), "PYTHONPATH": str(Path(googlenet.__file__).parents[1])}
    proc = subprocess.Popen([sys.executable, "-m", "googlenet", "export", str(weights_file), "--int8",
                             "--calib-dataset", "random", "--calib-images", "5000", "--out", str(out)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not any(tmp.glob("ort.quant.*")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)  # calibrating: ours and onnxruntime's temporary folders all exist from here on
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signum, err
    assert err.strip().splitlines()[-1] == f"googlenet export: stopped by {signal.Signals(signum).name}"
    left = sorted(p.name for p in tmp.iterdir())
    assert not [name for name in left if name.startswith(("googlenet-", "ort.quant"))], left  # torch's caches may stay
    assert not out.exists()


@pytest.mark.parametrize("fmt, name", [("torchscript", "model.onnx"), ("onnx", "model.pt")])
def test_a_format_that_contradicts_the_out_suffix_is_refused(tmp_path, weights_file, capsys, fmt, name):
    """predict picks the backend by suffix: TorchScript named .onnx (or ONNX named .pt) would fail there."""
    code, _, err = run_cli(capsys, "export", str(weights_file), "--format", fmt, "--out", str(tmp_path / name))
    assert_one_line_error(code, err, f"--format {fmt} contradicts", "suffix")
    assert not (tmp_path / name).exists()
    code, _, err = run_cli(capsys, "export", str(weights_file), "--format", fmt, "--out", str(tmp_path / "model.bin"))
    assert code == 0, err  # a suffix that names no format stays the user's choice


# ------------------------------------------------------------------ ncnn
def test_ncnn_export_writes_three_files_that_predict_and_eval_run(tmp_path, weights_file, capsys):
    pytest.importorskip("ncnn")
    pytest.importorskip("pnnx")
    from PIL import Image

    from googlenet.export import load_ncnn_export
    from googlenet.predict import load_classifier, predict

    out = tmp_path / "deploy" / "cifar.param"  # the format from the suffix
    code, stdout, err = run_cli(capsys, "export", str(weights_file), "--out", str(out))
    assert code == 0, err
    assert stdout.startswith(f"wrote ncnn {out} (+ .bin, .json)")
    param, weights, meta = load_ncnn_export(out)
    assert weights == out.with_suffix(".bin") and weights.stat().st_size > 1e6
    assert meta["input_size"] == SIZE and meta["in_chans"] == 1 and meta["class_names"][0] == "c0"
    # The export runs like the weights it came from: same logits (to Winograd rounding), same top-k.
    model = googlenet.load_weights(weights_file).eval()
    x = rand_input(model, 3)
    with torch.no_grad():
        ref = model(x)
    got = load_classifier(out)(x)  # auto: .param -> ncnn
    assert (got - ref).abs().max().item() <= 5e-5 * ref.abs().max().item()
    image = tmp_path / "a.png"
    Image.new("L", (40, 30), 90).save(image)
    (via_ncnn,), (via_torch,) = predict(out, [image], topk=3), predict(weights_file, [image], topk=3, device="cpu")
    assert via_ncnn.indices == via_torch.indices
    assert main(["eval", str(out), "--limit-test", "4", "--json"]) == 0
    assert '"backends": ["ncnn on the CPU"]' in capsys.readouterr().out


def test_a_default_ncnn_export_sits_next_to_the_weights_and_a_broken_one_is_one_line(tmp_path, weights_file,
                                                                                         capsys):
    pytest.importorskip("ncnn")
    pytest.importorskip("pnnx")
    import shutil

    weights = tmp_path / "model.safetensors"
    shutil.copyfile(weights_file, weights)
    code, _, err = run_cli(capsys, "export", str(weights), "--format", "ncnn")
    assert code == 0, err
    param = tmp_path / "model.ncnn.param"
    assert param.is_file() and (tmp_path / "model.ncnn.bin").is_file() and (tmp_path / "model.ncnn.json").is_file()
    code, _, err = run_cli(capsys, "predict", str(param), str(param), "--backend", "torch")
    assert_one_line_error(code, err, "is an ncnn export; run it with --backend auto (or ncnn)")
    (tmp_path / "model.ncnn.json").unlink()
    code, _, err = run_cli(capsys, "predict", str(param), str(param))
    assert_one_line_error(code, err, "ncnn export incomplete", "model.ncnn.json not found")


def test_ncnn_exports_refuse_to_overwrite_what_is_not_theirs_and_broken_ones_are_one_line(tmp_path, weights_file,
                                                                                             capsys):
    pytest.importorskip("ncnn")
    pytest.importorskip("pnnx")
    import json
    import shutil

    code, _, err = run_cli(capsys, "export", str(weights_file), "--format", "ncnn", "--out", str(tmp_path / "x"))
    assert_one_line_error(code, err, "end --out in .param")
    weights_as_bin = tmp_path / "w.bin"  # weights whose name an export's .bin would take
    shutil.copyfile(weights_file, weights_as_bin)
    code, _, err = run_cli(capsys, "export", str(weights_as_bin), "--out", str(tmp_path / "w.param"))
    assert_one_line_error(code, err, "would overwrite the weights file")
    (tmp_path / "notes.json").write_text('{"mine": true}')
    code, _, err = run_cli(capsys, "export", str(weights_file), "--out", str(tmp_path / "notes.param"))
    assert_one_line_error(code, err, "notes.json exists and is not part of a googlenet ncnn export")
    assert json.loads((tmp_path / "notes.json").read_text()) == {"mine": True}
    # Over an earlier export it is fine; then break each file in turn.
    out = tmp_path / "m.param"
    for _ in range(2):
        assert run_cli(capsys, "export", str(weights_file), "--out", str(out))[0] == 0
    meta = json.loads(out.with_suffix(".json").read_text())
    out.with_suffix(".json").write_text(json.dumps({**meta, "num_classes": 7, "class_names": ["a"] * 7}))
    code, _, err = run_cli(capsys, "predict", str(out), str(out))
    assert_one_line_error(code, err, "export it again")
    out.with_suffix(".json").write_text(json.dumps(meta))
    out.write_text("not a param file\n")
    code, _, err = run_cli(capsys, "predict", str(out), str(out))
    assert_one_line_error(code, err, "not an ncnn .param file")
    # A .bin that cannot be written is named (not the .param the user gave).
    out.with_suffix(".bin").unlink()
    out.with_suffix(".bin").mkdir()
    code, _, err = run_cli(capsys, "export", str(weights_file), "--out", str(out))
    assert_one_line_error(code, err, f"cannot write {out.with_suffix('.bin')}")
