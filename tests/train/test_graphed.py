"""CUDA-graphed training steps: where they apply, the plumbing around the recording (checked on
the CPU with a stand-in for torch.cuda.make_graphed_callables), and on a GPU the real graphs
against eager training."""
from __future__ import annotations

import copy

import pytest
import torch
from safetensors.torch import load_file

import googlenet
from googlenet.models import GoogLeNetOutputs
from googlenet.train import graphed, resolve_config, train

TINY = {"limit_train": 48, "limit_test": 24, "batch_size": 16, "input_size": 12, "device": "cpu"}
# A replayed graph draws its dropout masks its own way (philox offsets per replay), not as eager steps do.
NO_DROPOUT = ["dropout=0", "dropout_aux=0"]


class StandIn:
    """Records what it was asked to graph and, like the real one, runs warm-up forwards
    (which move the batch-norm statistics) and returns the module ready to call."""

    def __init__(self, fail: bool = False) -> None:
        self.shapes, self.fail, self.wrapped = [], fail, None

    def __call__(self, module, sample_args):
        self.shapes.append(tuple(sample_args[0].shape))
        if self.fail:
            raise RuntimeError("operation not permitted when stream is capturing\nmore detail")
        for _ in range(3):
            module(*sample_args)
        self.wrapped = module
        return module


@pytest.mark.parametrize("setting, reason", [
    ({}, None),
    ({"cuda_graph": False}, "off"),
    ({"compile": True}, "torch.compile"),
    ({"accum_steps": 2}, "accumulation"),
])
def test_where_graphs_apply(setting, reason):
    config = resolve_config(flags=setting)
    got = graphed.unavailable_reason(config, torch.device("cuda"), world_size=1)
    assert got is None if reason is None else reason in got
    assert "CUDA" in graphed.unavailable_reason(resolve_config(), torch.device("cpu"), 1)
    assert "processes" in graphed.unavailable_reason(resolve_config(), torch.device("cuda"), 2)
    assert "image-folder" in graphed.unavailable_reason(resolve_config(), torch.device("cuda"), 1,
                                                        resident_data=False)


def test_recording_keeps_batch_norm_statistics_and_the_models_own_forward():
    model = googlenet.create_model("googlenet_cifar_fast", num_classes=10, in_chans=1, dropout=0.0,
                                   dropout_aux=0.0).train()
    before = [b.clone() for b in model.buffers()]
    x = torch.randn(4, 1, 28, 28)
    stand_in = StandIn()
    forward = graphed.GraphedForward(model, x, None, make_graphed=stand_in)
    assert stand_in.shapes == [(4, 1, 28, 28)]
    assert all(torch.equal(a, b) for a, b in zip(before, model.buffers())), "warm-up moved the BN statistics"
    assert "forward" not in vars(model)  # the model itself is not patched

    out = forward(x)
    assert isinstance(out, GoogLeNetOutputs)
    for b, saved in zip(model.buffers(), before):  # the same step again, eagerly, from the same state
        b.copy_(saved)
    torch.testing.assert_close(out.logits, model(x).logits, rtol=0, atol=0)

    calls = []
    stand_in.wrapped.register_forward_hook(lambda *args: calls.append(1))
    forward(torch.randn(2, 1, 28, 28))  # another batch size: the model, not the recording
    assert calls == []
    forward(x.transpose(2, 3))  # same shape, other strides: copied into the recording's input
    assert calls == [1]
    model.eval()  # the recording is a training step: an eval-mode model is called directly
    forward(x)
    assert calls == [1]


def test_logits_only_models_come_back_as_a_tensor():
    model = googlenet.create_model("googlenet_cifar_fast", num_classes=10, in_chans=1, aux_logits=False).train()
    x = torch.randn(2, 1, 28, 28)
    out = graphed.GraphedForward(model, x, None, make_graphed=StandIn())(x)
    assert isinstance(out, torch.Tensor) and out.shape == (2, 10)


def _run(fmnist_dir, out, monkeypatch, stand_in=None):
    if stand_in is not None:  # as on one GPU: graphs apply, recorded by the stand-in
        monkeypatch.setattr(graphed, "unavailable_reason", lambda *args, **kwargs: None)
        monkeypatch.setattr(torch.cuda, "make_graphed_callables", stand_in)
    # Dropout on: the recording's warm-up forwards draw masks too, and must give the random stream back.
    config = resolve_config(flags={**TINY, "data": str(fmnist_dir), "epochs": 2})
    assert config.dropout > 0
    train(config, out=out)
    monkeypatch.undo()
    return load_file(out / "model.safetensors")


@pytest.fixture
def fmnist_dir(tmp_path, monkeypatch, fake_fmnist):
    monkeypatch.setenv("GOOGLENET_CACHE", str(tmp_path / "cache"))
    return fake_fmnist(tmp_path / "fm", n_train=48, n_test=24)


def test_the_loop_through_the_graphed_path_trains_exactly_as_without(fmnist_dir, tmp_path, monkeypatch, capsys):
    plain = _run(fmnist_dir, tmp_path / "plain", monkeypatch)
    assert "CUDA graphs" not in capsys.readouterr().out
    stand_in = StandIn()
    through = _run(fmnist_dir, tmp_path / "graphed", monkeypatch, stand_in)
    assert stand_in.shapes == [(16, 1, 12, 12)]  # recorded once, on the first batch
    assert "CUDA graphs: forward and backward of each (16, 1, 12, 12) batch recorded" in capsys.readouterr().out
    assert plain.keys() == through.keys()
    for key in plain:
        assert torch.equal(plain[key], through[key]), key


def test_a_failed_recording_falls_back_to_eager_training(fmnist_dir, tmp_path, monkeypatch, capsys):
    plain = _run(fmnist_dir, tmp_path / "plain", monkeypatch)
    capsys.readouterr()
    stand_in = StandIn(fail=True)
    through = _run(fmnist_dir, tmp_path / "failed", monkeypatch, stand_in)
    out = capsys.readouterr().out
    assert len(stand_in.shapes) == 1  # tried once, not at every step
    assert "note: CUDA graphs off (recording failed: operation not permitted when stream is capturing)" in out
    for key in plain:
        assert torch.equal(plain[key], through[key]), key


# ------------------------------------------------------------------ on a GPU, the real graphs
cuda_only = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def _train_steps(model, batches, use_graph: bool, dtype):
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4)
    forward = graphed.GraphedForward(model, batches[0][0], dtype) if use_graph else model
    losses = []
    for x, y in batches:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
            loss = googlenet.models.googlenet_loss(forward(x), y)
        loss.backward()
        optimizer.step()
        losses.append(float(loss))
    return losses


@cuda_only
@pytest.mark.parametrize("dtype", [None, torch.bfloat16], ids=["fp32", "bf16"])
def test_cuda_graphed_steps_match_eager_steps(dtype, monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "deterministic", True)
    torch.manual_seed(0)
    start = googlenet.create_model("googlenet_cifar_fast", num_classes=10, in_chans=1, dropout=0.0,
                                   dropout_aux=0.0).cuda().to(memory_format=torch.channels_last).train()
    batches = [(torch.randn(32, 1, 28, 28, device="cuda").contiguous(memory_format=torch.channels_last),
                torch.randint(0, 10, (32,), device="cuda")) for _ in range(4)]
    batches.append((batches[0][0][:8], batches[0][1][:8]))  # a short batch: eager, same parameters
    eager_model, graph_model = copy.deepcopy(start), copy.deepcopy(start)
    eager = _train_steps(eager_model, batches, False, dtype)
    through = _train_steps(graph_model, batches, True, dtype)
    tol = 1e-4 if dtype is None else 2e-2
    assert through == pytest.approx(eager, rel=tol)
    for (name, a), b in zip(eager_model.state_dict().items(), graph_model.state_dict().values()):
        torch.testing.assert_close(b.float(), a.float(), rtol=tol, atol=tol, msg=name)


@cuda_only
def test_cuda_training_run_with_graphs_matches_one_without(fmnist_dir, tmp_path, capsys, monkeypatch):
    """The whole loop on the GPU (resident data, bf16, EMA, late flags), graphed and not: a replay
    that did nothing (e.g. recorded on the wrong device) would leave the weights far apart."""
    monkeypatch.setattr(torch.backends.cudnn, "deterministic", True)
    weights = {}
    for use_graph in (False, True):
        # fp32, deterministic cuDNN: the same kernels either way, so the runs agree far more
        # closely than the weights move in six steps.
        config = resolve_config(flags={**TINY, "device": "cuda", "data": str(fmnist_dir), "epochs": 2,
                                       "precision": "fp32"},
                                overrides=[*NO_DROPOUT, f"cuda_graph={str(use_graph).lower()}"])
        result = train(config, out=tmp_path / f"run-{use_graph}")
        assert all(torch.isfinite(torch.tensor(float(r["train_loss"]))) for r in result.history)
        assert ("CUDA graphs: forward and backward" in capsys.readouterr().out) == use_graph
        weights[use_graph] = load_file(tmp_path / f"run-{use_graph}" / "model.safetensors")
    compared = 0
    for key, eager in weights[False].items():
        torch.testing.assert_close(weights[True][key].float(), eager.float(), rtol=1e-3, atol=1e-4, msg=key)
        compared += 1
    assert compared > 100
