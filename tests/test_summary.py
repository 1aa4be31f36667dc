"""`googlenet summary` reproduces the paper's Table 1 from the live model."""
from __future__ import annotations

import csv
import io
import json

import pytest

import googlenet
from googlenet.cli import main
from googlenet.models import spec
from googlenet.summary import render, summarize

# Table 1's "output size" column, row by row (LRN rows are the model's, not the table's).
PAPER_OUTPUTS = {
    "convolution 7x7/2": [112, 112, 64], "convolution 3x3/1": [56, 56, 192],
    "inception (3a)": [28, 28, 256], "inception (3b)": [28, 28, 480],
    "inception (4a)": [14, 14, 512], "inception (4b)": [14, 14, 512], "inception (4c)": [14, 14, 512],
    "inception (4d)": [14, 14, 528], "inception (4e)": [14, 14, 832],
    "inception (5a)": [7, 7, 832], "inception (5b)": [7, 7, 1024],
    "avg pool 7x7/1": [1, 1, 1024], "dropout (40%)": [1, 1, 1024], "linear": [1, 1, 1000],
}
# Rows where the paper's printed params/ops disagree with the arithmetic by more than 2%.
PAPER_DISCREPANCIES = {"convolution 7x7/2", "inception (4c)", "inception (5a)"}


@pytest.fixture(scope="module")
def table():
    return summarize(googlenet.create_model("googlenet"))


def test_rows_reproduce_table1(table):
    rows = {r["name"]: r for r in table["rows"]}
    for name, output in PAPER_OUTPUTS.items():
        assert rows[name]["output"] == output, name
    assert [r["output"] for r in table["rows"] if r["type"] == "max pool"] == [
        [56, 56, 64], [28, 28, 192], [14, 14, 480], [7, 7, 832]]
    for s in spec.INCEPTION:
        row = rows[f"inception ({s.name})"]
        assert (row["n1x1"], row["n3x3red"], row["n3x3"], row["n5x5red"], row["n5x5"], row["pool_proj"]) == (
            s.n1x1, s.n3x3red, s.n3x3, s.n5x5red, s.n5x5, s.pool_proj)
        assert row["depth"] == 2
    assert rows["convolution 3x3/1"]["n3x3red"] == 64 and rows["convolution 3x3/1"]["depth"] == 2


def test_params_and_ops_against_the_paper(table):
    for row in table["rows"]:
        if row["paper_params"] is None:
            assert row["name"] not in spec.PAPER_COST
            continue
        close = all(abs(ours - paper) <= 0.025 * paper
                    for ours, paper in ((row["params"], row["paper_params"]), (row["ops"], row["paper_ops"])))
        if row["name"] in PAPER_DISCREPANCIES:
            assert not close and row["note"] and "paper lists" in row["note"], row
        else:
            assert close and row["note"] is None, row
    assert {r["name"] for r in table["rows"] if r["note"]} == PAPER_DISCREPANCIES


def test_totals(table):
    # about 1.58 G multiply-adds at 224 for the true-5x5 network; ~7.0 M params without aux heads
    assert 1.55e9 < table["total"]["ops"] < 1.60e9
    assert table["total"]["ops"] == sum(r["ops"] for r in table["rows"])
    model = googlenet.create_model("googlenet", aux_logits=False)
    assert table["total"]["params"] == sum(p.numel() for p in model.parameters())


def test_torchvision_variant_has_its_own_figures():
    t = summarize(googlenet.create_model("googlenet_tv"))
    assert 1.45e9 < t["total"]["ops"] < 1.55e9  # 3x3 in place of 5x5
    assert all(r["paper_params"] is None for r in t["rows"])


def test_json_shape_through_cli(capsys):
    assert main(["summary", "googlenet", "--format", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert set(data) == {"model", "input_size", "rows", "total"} and data["input_size"] == 224
    keys = {"name", "type", "patch", "output", "depth", "n1x1", "n3x3red", "n3x3", "n5x5red", "n5x5",
            "pool_proj", "params", "ops", "paper_params", "paper_ops", "note"}
    assert all(keys <= set(r) for r in data["rows"])
    assert data["rows"][0]["name"] == "convolution 7x7/2"


def test_other_formats_and_sizes(capsys):
    assert main(["summary", "googlenet_cifar", "--input-size", "28", "--in-chans", "1", "--format", "csv"]) == 0
    rows = [r for r in csv.reader(io.StringIO(capsys.readouterr().out)) if r]
    assert rows[0][:3] == ["type", "patch size/stride", "output size"]
    assert ["inception (5b)", "", "7x7x1024"] == rows[-5][:3]
    total = rows[-1]
    params, ops = int(total[10]), int(total[11])  # plain numbers for a spreadsheet, not "1.8K"
    model = googlenet.create_model("googlenet_cifar", in_chans=1)
    assert params == sum(p.numel() for n, p in model.named_parameters() if not n.startswith("aux"))
    assert ops > 10**8
    table = summarize(googlenet.create_model("googlenet"))
    text = render(table, "table")
    assert "inception (4e)" in text and "note (convolution)" in text
    assert render(table, "markdown").count("\n| inception") == 9


def test_bad_model_and_size_are_one_line_errors(capsys):
    assert main(["summary", "nope"]) == 2
    assert main(["summary", "googlenet", "--input-size", "0"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 2 and "Traceback" not in err


def test_a_size_too_small_for_the_pools_names_the_smallest_that_works(capsys):
    """googlenet's pools shrink 28 px below 1x1: the error says which size it needs (31 px),
    found on the meta device, as `googlenet train` says it, not torch's pooling message."""
    assert main(["summary", "googlenet", "--input-size", "28"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["googlenet summary: error: googlenet cannot run at 28px: its pools need images of at least "
                   "31px; use --input-size 31 or more, or a model for small images (googlenet_cifar, "
                   "googlenet_cifar_fast)"]
    assert main(["summary", "googlenet", "--input-size", "31", "--format", "csv"]) == 0
    # A small-image model too small for its own pools is not told to use itself.
    assert main(["summary", "googlenet_cifar_fast", "--input-size", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert "googlenet_cifar_fast cannot run at 1px" in err and "or a model for small images" not in err, err


def test_a_size_too_large_for_memory_says_so_in_words(capsys, monkeypatch):
    """`--input-size 100000` printed the allocator's '[enforce fail at alloc_cpu.cpp:127] err == 0.
    DefaultCPUAllocator: ...'. The allocation is simulated: a real one would need 112 GiB."""
    import googlenet.summary

    def out_of_memory(*args, **kwargs):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate "
                           "memory: you tried to allocate 120000000000 bytes. Error code 12 (Cannot allocate memory)")

    monkeypatch.setattr(googlenet.summary, "summarize", out_of_memory)
    assert main(["summary", "googlenet_cifar", "--input-size", "100000"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "googlenet summary: error: googlenet_cifar at 100000px needs more memory than this machine has (one layer "
        "asked for 112 GiB); use a smaller --input-size"]
