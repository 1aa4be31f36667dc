"""The device-resident loader on CPU tensors: order, sharding, determinism, augmentations."""
from __future__ import annotations

import pytest
import torch

from googlenet.data import transforms as T
from googlenet.data.datasets import ArrayDataset
from googlenet.data.gpu_loader import BatchAugment, SampleStream, TensorLoader


def fake_data(n: int = 20, chans: int = 1, size: int = 8) -> ArrayDataset:
    images = torch.arange(n * chans * size * size, dtype=torch.int64).remainder(251).to(torch.uint8)
    images = images.view(n, chans, size, size)
    return ArrayDataset(images, torch.arange(n) % 10, [str(i) for i in range(10)], "fake",
                        (0.5,) * chans, (0.25,) * chans)


def test_sample_stream_visits_every_sample_once_per_pass():
    stream = SampleStream(10, seed=3)
    first, second = stream.take(0, 10), stream.take(10, 10)
    assert sorted(first.tolist()) == list(range(10)) and sorted(second.tolist()) == list(range(10))
    assert not torch.equal(first, second)  # a new order each pass
    assert torch.equal(stream.take(7, 6), torch.cat([first[7:], second[:3]]))
    assert torch.equal(SampleStream(10, seed=3).take(0, 10), first)  # seeded
    assert not torch.equal(SampleStream(10, seed=4).take(0, 10), first)


def test_sample_stream_draws_each_pass_once(monkeypatch):
    """A step slices the kept permutation: no new randperm (and, on CUDA, no host-to-device
    copy) per step. Before, every step redrew its whole pass (ImageNet: 1.3M numbers)."""
    draws = []
    real_randperm = torch.randperm

    def counting_randperm(*args, **kwargs):
        draws.append(args[0])
        return real_randperm(*args, **kwargs)

    expected = [SampleStream(10, seed=3).take(i * 4, 4) for i in range(10)]  # fresh streams, uncached
    monkeypatch.setattr(torch, "randperm", counting_randperm)
    stream = SampleStream(10, seed=3)
    got = [stream.take(i * 4, 4) for i in range(10)]  # 40 positions: passes 0-3
    assert all(torch.equal(a, b) for a, b in zip(got, expected))
    assert len(draws) == 4 and len(stream._kept) <= SampleStream.KEPT_PASSES
    loader = TensorLoader(fake_data(20), batch_size=4, seed=1)
    draws.clear()
    batches = list(loader.train_batches(0, 5, epoch=0))  # one pass of 20 images
    assert len(batches) == 5 and len(draws) == 1


def test_eval_batches_are_normalised_in_order():
    data = fake_data()
    loader = TensorLoader(data, batch_size=8, channels_last=False)
    batches = list(loader.eval_batches())
    assert [len(y) for _, y in batches] == [8, 8, 4]
    x, y = batches[0]
    expected = (data.images[:8].float() / 255 - 0.5) / 0.25
    assert torch.allclose(x, expected) and torch.equal(y, data.labels[:8])
    assert sum(len(y) for _, y in loader.eval_batches(limit=10)) == 10


def test_ranks_split_batches_without_overlap():
    data = fake_data(24)
    ranks = [TensorLoader(data, batch_size=4, rank=r, world_size=2, seed=1) for r in range(2)]
    single = TensorLoader(data, batch_size=8, seed=1)
    assert ranks[0].steps_per_epoch == single.steps_per_epoch == 3
    for step in range(3):
        together = torch.cat([ranks[0]._rank_batch(step), ranks[1]._rank_batch(step)])
        assert torch.equal(together, single._rank_batch(step))
    evaluated = [y for r in ranks for _, y in r.eval_batches()]
    assert torch.equal(torch.cat(evaluated), data.labels)  # each test sample once


def test_train_batches_replay_exactly_and_augment():
    data = fake_data(16, chans=3, size=12)
    augment = BatchAugment(crop_padding=2, flip=True, photometric=0.2, erasing=0.5)
    loader = TensorLoader(data, batch_size=8, augment=augment, input_size=16, seed=5)
    run1 = list(loader.train_batches(first_step=2, steps=2, epoch=1))
    run2 = list(loader.train_batches(first_step=2, steps=2, epoch=1))
    for (x1, y1), (x2, y2) in zip(run1, run2):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)
    x, _ = run1[0]
    assert x.shape == (8, 3, 16, 16) and x.is_contiguous(memory_format=torch.channels_last)
    other_epoch = next(loader.train_batches(first_step=2, steps=1, epoch=2))[0]
    assert not torch.equal(other_epoch, x)


def test_gray_images_feed_rgb_models():
    loader = TensorLoader(fake_data(), batch_size=4, in_chans=3)
    x, _ = next(loader.eval_batches())
    assert x.shape[1] == 3 and torch.equal(x[:, 0], x[:, 2])


def test_random_crop_shifts_content():
    g = torch.Generator().manual_seed(0)
    x = torch.zeros(64, 1, 6, 6, dtype=torch.uint8)
    x[:, :, 2:4, 2:4] = 1
    out = T.random_crop(x, 2, g)
    assert out.shape == x.shape
    centres = {tuple(torch.nonzero(o[0])[0].tolist()) for o in out}
    assert len(centres) > 4  # different windows per image
    assert all(int(o.sum()) <= 4 for o in out)


def test_random_flip_and_erasing():
    g = torch.Generator().manual_seed(0)
    x = torch.arange(6.0).repeat(100, 1, 6, 1)  # rows 0..5
    flipped = T.random_flip(x, g)
    share = (flipped[:, 0, 0, 0] == 5).float().mean()
    assert 0.3 < share < 0.7
    erased = T.random_erasing(torch.ones(200, 1, 10, 10), g, p=0.5)
    touched = (erased == 0).flatten(1).any(1).float().mean()
    assert 0.3 < touched < 0.7


@pytest.mark.parametrize("mode", ["bilinear", "nearest"])
def test_random_resized_crop_full_area_is_identity(mode):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 2, 8, 8)
    out = T.random_resized_crop(x, 8, g, scale=(1.0, 1.0), ratio=(1.0, 1.0), mode=mode)
    assert torch.allclose(out, x, atol=1e-5)
    small = T.random_resized_crop(x, 4, g, scale=(0.08, 1.0))
    assert small.shape == (3, 2, 4, 4)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_loader_keeps_data_on_the_gpu():
    data = fake_data(32, chans=1, size=12)
    augment = BatchAugment(crop_padding=2, flip=True, erasing=0.5, resized_crop_min_area=0.5)
    loader = TensorLoader(data, batch_size=8, device="cuda", augment=augment, seed=1)
    assert loader.images.is_cuda
    x, y = next(loader.train_batches(0, 1, epoch=0))
    assert x.is_cuda and y.is_cuda and x.shape == (8, 1, 12, 12)
    again = next(loader.train_batches(0, 1, epoch=0))[0]
    assert torch.equal(x, again)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_batches_do_not_synchronise():
    """After the first step of a pass, producing a training batch never waits for the GPU
    (the index stream lives on the device; augmentation draws from a CUDA generator)."""
    data = fake_data(64, chans=1, size=12)
    augment = BatchAugment(crop_padding=2, flip=True, erasing=0.5, photometric=0.2)
    loader = TensorLoader(data, batch_size=8, device="cuda", augment=augment, input_size=16, seed=1)
    batches = loader.train_batches(0, 4, epoch=0)
    next(batches)  # draws the pass's permutation and copies it once
    torch.cuda.set_sync_debug_mode("error")
    try:
        rest = list(batches)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert len(rest) == 3 and all(x.is_cuda and y.is_cuda for x, y in rest)
    cpu = TensorLoader(data, batch_size=8, augment=augment, input_size=16, seed=1)
    assert torch.equal(torch.cat([y for _, y in cpu.train_batches(0, 4, epoch=0)]).cuda(),
                       torch.cat([y for _, y in loader.train_batches(0, 4, epoch=0)]))  # same order
