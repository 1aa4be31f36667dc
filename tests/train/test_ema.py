"""WeightAverage: the averaged copy follows avg <- avg + (1 - d) (w - avg), buffers included."""
from __future__ import annotations

import copy

import torch

import googlenet
from googlenet.train.ema import WeightAverage


def _reference_update(avg: dict, model: torch.nn.Module, decay: float, n: int) -> None:
    d = min(decay, (1 + n) / (10 + n))
    for k, v in model.state_dict().items():
        if v.is_floating_point():
            avg[k] = avg[k] + (1 - d) * (v - avg[k])
        else:
            avg[k] = v.clone()


def test_average_matches_the_formula_over_steps_and_in_place_loads():
    torch.manual_seed(0)
    model = googlenet.create_model("googlenet_cifar", in_chans=1, num_classes=3)
    ema = WeightAverage(model, decay=0.9)
    expected = {k: v.clone() for k, v in ema.module.state_dict().items()}
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.rand(4, 1, 16, 16), torch.tensor([0, 1, 2, 0])
    for step in range(1, 5):
        model.train()
        loss = googlenet.googlenet_loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()  # in place: the cached tensor lists keep seeing the new values
        if step == 3:  # a resume loads in place too
            model.load_state_dict(copy.deepcopy(model.state_dict()))
        ema.update(model)
        _reference_update(expected, model, 0.9, step)
        got = ema.module.state_dict()
        for k, v in expected.items():
            assert torch.allclose(got[k].float(), v.float(), atol=1e-6), (step, k)
    assert ema.updates == 4
    # The batch-norm statistics and counters moved with the model (buffers are averaged/copied).
    assert int(got["conv1.bn.num_batches_tracked"]) == 4


def test_a_different_model_object_gets_fresh_tensor_lists():
    a = googlenet.create_model("googlenet_cifar", in_chans=1, num_classes=3)
    b = copy.deepcopy(a)
    with torch.no_grad():
        for p in b.parameters():
            p.add_(1.0)
    ema = WeightAverage(a, decay=0.0)  # d = min(0, ...) = 0: the average becomes the model
    ema.update(a)
    ema.update(b)
    assert torch.equal(ema.module.fc.weight, b.fc.weight)
