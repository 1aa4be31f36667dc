"""The paper's Table 1, measured from a live model with forward hooks.

Each row groups the model's modules the way the paper's table does (the 1x1 reduce
and 3x3 conv of stage 2 share one row, depth 2); output sizes, parameters and
multiply-adds ("ops") are read from a real forward pass, never typed in. For the
paper's own network at 224x224 the published params/ops stand beside each row, with a
note where the paper's figure and the arithmetic differ by more than 2%.
"""
from __future__ import annotations

import csv
import io
import json
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from .models import spec

PAPER_TOLERANCE = 0.02  # relative difference above which a row gets a note
K = 1024  # the paper's "K" for params
M = 1_000_000  # and its "M" for ops


@dataclass
class Row:
    name: str  # the paper's label: "inception (3a)", "convolution 7x7/2", ...
    type: str
    patch: str  # "7x7/2", "" for inception modules
    modules: list[str]  # model attributes this row covers
    depth: int
    n1x1: int | None = None
    n3x3red: int | None = None
    n3x3: int | None = None
    n5x5red: int | None = None
    n5x5: int | None = None
    pool_proj: int | None = None
    output: list[int] = field(default_factory=list)  # [H, W, C]
    params: int = 0
    ops: int = 0  # multiply-adds
    paper_params: int | None = None
    paper_ops: int | None = None
    note: str | None = None


def _kxk(module: nn.Module) -> str:
    k = module.kernel_size if isinstance(module.kernel_size, int) else module.kernel_size[0]
    s = module.stride if isinstance(module.stride, int) else module.stride[0]
    return f"{k}x{k}/{s}"


def _plan(model: nn.Module) -> list[Row]:
    """Which modules make up each row of the table, in forward order."""
    rows: list[Row] = []

    def pool(attr: str) -> None:
        m = getattr(model, attr)
        if isinstance(m, nn.MaxPool2d):
            rows.append(Row(f"max pool {_kxk(m)}", "max pool", _kxk(m), [attr], 0))

    def lrn(attr: str) -> None:
        if isinstance(getattr(model, attr), nn.LocalResponseNorm):
            rows.append(Row("local response norm", "LRN", f"{spec.LRN_SIZE} ch", [attr], 0))

    def conv_row(attrs: list[str], **columns) -> None:
        last = getattr(model, attrs[-1]).conv
        rows.append(Row(f"convolution {_kxk(last)}", "convolution", _kxk(last), attrs, len(attrs), **columns))

    conv_row(["conv1"])
    pool("maxpool1")
    lrn("lrn1")
    if model.conv2.conv.kernel_size == (1, 1):
        # The paper's stage-2 row: a 1x1 reduce (64) feeding the 3x3 conv (192), depth 2.
        conv_row(["conv2", "conv3"], n3x3red=model.conv2.conv.out_channels, n3x3=model.conv3.conv.out_channels)
    else:
        conv_row(["conv2"])
        conv_row(["conv3"])
    lrn("lrn2")
    pool("maxpool2")
    for name, module in model.inception_modules().items():
        if name == "4a":
            pool("maxpool3")
        if name == "5a":
            pool("maxpool4")
        s = module.spec
        rows.append(Row(f"inception ({name})", "inception", "", [f"inception{name}"], 2,
                        s.n1x1, s.n3x3red, s.n3x3, s.n5x5red, s.n5x5, s.pool_proj))
    rows.append(Row("avg pool", "avg pool", "", ["avgpool"], 0))
    rows.append(Row(f"dropout ({model.dropout.p:.0%})", "dropout", "", ["dropout"], 0))
    rows.append(Row("linear", "linear", "", ["fc"], 1))
    return rows


def _count_ops(module: nn.Module, output: torch.Tensor) -> int:
    """Multiply-adds of one conv or linear layer for a batch of one."""
    if isinstance(module, nn.Conv2d):
        kh, kw = module.kernel_size
        return output[0].numel() * (module.in_channels // module.groups) * kh * kw
    if isinstance(module, nn.Linear):
        return module.in_features * module.out_features
    return 0


@torch.no_grad()
def summarize(model: nn.Module, input_size: int | None = None, in_chans: int | None = None) -> dict:
    """Table 1 of `model` as a dict: {"model", "input_size", "rows": [...], "total": {...}}."""
    input_size = input_size or model.variant.input_size
    in_chans = in_chans or model.in_chans
    rows = _plan(model)
    hooks = []
    for row in rows:
        modules = [getattr(model, a) for a in row.modules]
        row.params = sum(p.numel() for m in modules for p in m.parameters())

        def record_output(_m, _inp, out, row=row):
            if out.dim() == 4:
                row.output = [out.shape[2], out.shape[3], out.shape[1]]
            else:
                row.output = [1, 1, out.shape[1]]

        hooks.append(modules[-1].register_forward_hook(record_output))
        for m in modules:
            for layer in m.modules():
                if isinstance(layer, (nn.Conv2d, nn.Linear)):
                    def add_ops(mod, _inp, out, row=row):
                        row.ops += _count_ops(mod, out)
                    hooks.append(layer.register_forward_hook(add_ops))
    was_training = model.training
    model.eval()
    try:
        model(torch.rand(1, in_chans, input_size, input_size))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)

    for row in rows:
        if row.type == "avg pool":
            row.patch = f"{rows[rows.index(row) - 1].output[0]}x{rows[rows.index(row) - 1].output[1]}/1"
            row.name = f"avg pool {row.patch}"
    name = getattr(model, "model_name", type(model).__name__)
    if _is_paper_setting(model, name, input_size, in_chans):
        _add_paper_values(rows)
    return {
        "model": name,
        "input_size": input_size,
        "rows": [_row_dict(r) for r in rows],
        "total": {"params": sum(r.params for r in rows), "ops": sum(r.ops for r in rows)},
    }


def _is_paper_setting(model: nn.Module, name: str, input_size: int, in_chans: int) -> bool:
    return name == "googlenet" and input_size == 224 and in_chans == 3 and model.num_classes == 1000


def _add_paper_values(rows: list[Row]) -> None:
    for row in rows:
        published = spec.PAPER_COST.get(row.name)
        if published is None:
            continue
        kparams, mops = published
        row.paper_params, row.paper_ops = round(kparams * K), round(mops * M)
        notes = []
        for what, ours, paper, printed, unit, scale in (
            ("params", row.params, row.paper_params, kparams, "K", K),
            ("ops", row.ops, row.paper_ops, mops, "M", M),
        ):
            if _disagrees(ours / scale, printed):
                notes.append(f"paper lists {printed:g}{unit} {what}, the layer has {ours / scale:.1f}{unit} "
                             f"({(ours - paper) / paper:+.0%})")
        row.note = "; ".join(notes) or None


def _disagrees(ours: float, printed: float) -> bool:
    """More than 2% apart, and not explained by the paper rounding to the digits it printed."""
    decimals = len(f"{printed:g}".partition(".")[2])
    if round(ours, decimals) == printed:
        return False
    return abs(ours - printed) > PAPER_TOLERANCE * printed


def _row_dict(row: Row) -> dict:
    d = asdict(row)
    d.pop("modules")
    d["module"] = "+".join(row.modules)
    return d


def _fmt(value: float, scale: float) -> str:
    v = value / scale
    return f"{v:.1f}" if v < 10 else f"{v:.0f}"


def _human(value: int | None, scale: float, unit: str) -> str:
    return "" if value is None or value == 0 else f"{_fmt(value, scale)}{unit}"


COLUMNS = ("type", "patch size/stride", "output size", "depth", "#1x1", "#3x3 reduce", "#3x3",
           "#5x5 reduce", "#5x5", "pool proj", "params", "ops", "paper params", "paper ops", "note")


def _count(value: int | None, scale: float, unit: str, raw: bool) -> str:
    """A params/ops cell: "1.8K" for reading, or the plain integer (`raw`: CSV, for spreadsheets)."""
    if raw:
        return "" if value is None else str(value)
    return _human(value, scale, unit)


def _cells(row: dict, raw: bool = False) -> list[str]:
    """One table row as text; `raw`: params and ops as plain integers."""
    def opt(v):
        return "" if v is None else str(v)

    def count(value, scale, unit):
        return _count(value, scale, unit, raw)

    label = row["name"] if row["type"] in ("inception", "dropout") else row["type"]
    return [label, row["patch"], "x".join(map(str, row["output"])), str(row["depth"]),
            opt(row["n1x1"]), opt(row["n3x3red"]), opt(row["n3x3"]), opt(row["n5x5red"]), opt(row["n5x5"]),
            opt(row["pool_proj"]), count(row["params"], K, "K"), count(row["ops"], M, "M"),
            count(row["paper_params"], K, "K"), count(row["paper_ops"], M, "M"), row["note"] or ""]


def render(table: dict, fmt: str = "table") -> str:
    """Render summarize()'s dict as "table" (aligned text), "markdown", "csv" or "json"."""
    if fmt == "json":
        return json.dumps(table, indent=2)
    raw = fmt == "csv"
    rows = [_cells(r, raw) for r in table["rows"]]
    total = table["total"]
    total_row = ["total", "", "", "", "", "", "", "", "", "", _count(total["params"], K, "K", raw),
                 _count(total["ops"], M, "M", raw), "", "", ""]
    has_paper = any(r["paper_params"] is not None for r in table["rows"])
    columns = list(COLUMNS) if has_paper else list(COLUMNS[:12])
    width = len(columns)
    rows = [r[:width] for r in rows] + [total_row[:width]]
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.writer(out)
        writer.writerow(columns)
        writer.writerows(rows)
        return out.getvalue()
    title = (f"{table['model']} at {table['input_size']}x{table['input_size']}: "
             f"{total['params'] / 1e6:.2f} M params, {total['ops'] / 1e9:.2f} G multiply-adds "
             "(auxiliary classifiers excluded, as in the paper's Table 1; in the params column "
             "K = 1024 and M = 10^6 in the ops column, the paper's units)")
    if fmt == "markdown":
        lines = [f"**{title}**", "", "| " + " | ".join(columns) + " |", "|" + "---|" * width]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
        return "\n".join(lines)
    if fmt != "table":
        raise ValueError(f"unknown format {fmt!r}")
    # Plain text: drop the wide note column into lines under the table.
    text_cols = columns[:14] if has_paper else columns
    widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(text_cols)]
    fmt_line = "  ".join(f"{{:<{w}}}" for w in widths)
    lines = [title, fmt_line.format(*text_cols), fmt_line.format(*("-" * w for w in widths))]
    lines += [fmt_line.format(*r[: len(text_cols)]) for r in rows]
    notes = [(r[0], r[14]) for r in rows if has_paper and r[14]]
    if notes:
        lines.append("")
        lines += [f"note ({label}): {note}" for label, note in notes]
    return "\n".join(lines)
