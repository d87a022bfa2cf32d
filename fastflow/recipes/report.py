"""Pipeline results: the typed :class:`ResultRow`, and what turns rows into tables, JSON records
and PNG figures. Display labels ("digits FD", "latency ms (b=1)") exist only here, at print and
write time; the recipes name rows by method, solver and CFG scale."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fastflow.metrics.evaluate import mean_sd
from fastflow.utils.images import pyplot, save_figure, to_uint8
from fastflow.utils.io import atomic_write_json
from fastflow.utils.table import format_table

#: field or metric → its label in tables and in ``results.json``
LABELS = {"nfe": "NFE", "fd": "digits FD", "coverage": "coverage", "latency_ms": "latency ms (b=1)",
          "params": "params (M)", "cfg": "CFG α", "label_accuracy": "label accuracy"}


@dataclass
class ResultRow:
    """One model sampled one way, and what it scored."""

    method: str
    solver: str  # the solver and its steps as shown: "euler 1", "rk45"
    nfe: float
    metrics: dict[str, float] = field(default_factory=dict)  # fd, coverage[, label_accuracy]
    latency_ms: float | None = None  # one sample at batch 1, p50
    params: int | None = None
    cfg: float | None = None  # the CFG scale a conditional model was sampled at

    @property
    def key(self) -> tuple[str, str, float | None]:
        return self.method, self.solver, self.cfg

    def record(self) -> dict[str, Any]:
        """The labelled dict of tables and ``results.json``."""
        out: dict[str, Any] = {"method": self.method, "solver": self.solver, LABELS["nfe"]: self.nfe,
                               LABELS["fd"]: self.metrics["fd"], LABELS["coverage"]: self.metrics["coverage"],
                               LABELS["latency_ms"]: self.latency_ms, LABELS["params"]: self.params / 1e6}
        if self.cfg is not None:
            out[LABELS["cfg"]] = self.cfg
        out.update({LABELS.get(k, k): v for k, v in self.metrics.items() if k not in ("fd", "coverage")})
        return out


def find(rows: Sequence[ResultRow], method: str, solver: str, cfg: float | None = None) -> ResultRow:
    return next(r for r in rows if r.key == (method, solver, cfg))


def fd_of(records: Sequence[dict[str, Any]], method: str, solver: str, cfg: float | None = None) -> float:
    """Digits FD of the row ``(method, solver[, CFG α])`` of written records (a seed's run)."""
    return next(
        r[LABELS["fd"]] for r in records if (r["method"], r["solver"], r.get(LABELS["cfg"])) == (method, solver, cfg)
    )


def print_table(rows: Sequence[dict[str, Any]], fields: Sequence[str]) -> None:
    print(format_table(list(rows), [LABELS.get(f, f) for f in fields]))


def print_checks(checks: dict[str, Any], seeds: int | None = None) -> None:
    for name, held in checks.items():
        print(f"[{held}/{seeds}] {name}" if seeds else f"[{'x' if held else ' '}] {name}")


def paired_orderings(runs: Sequence[dict[str, Any]], orderings: Sequence[tuple]) -> list[dict[str, Any]]:
    """For each ``(claim, better, worse)`` (rows named by method, solver[, CFG α]) the paired gain
    (worse − better FD, mean ± sd over seeds: the seeds share nothing, but both methods of a seed
    share its teacher and pairs), in how many seeds it holds, whether it holds beyond one sd of that
    gain, and whether the two methods' mean ± sd intervals are apart."""
    table = []
    for claim, better, worse in orderings:
        b, w = ([fd_of(run["rows"], *m) for run in runs] for m in (better, worse))
        gain, (bm, bs), (wm, wsd) = mean_sd([y - x for x, y in zip(b, w, strict=True)]), mean_sd(b), mean_sd(w)
        table.append({"claim": claim, "better": f"{bm:.1f} ± {bs:.1f}", "worse": f"{wm:.1f} ± {wsd:.1f}",
                      "paired gain": f"{gain[0]:.2f} ± {gain[1]:.2f}",
                      "seeds holding": f"{sum(y > x for x, y in zip(b, w, strict=True))}/{len(runs)}",
                      "beyond one sd": gain[0] > gain[1], "intervals apart": bm + bs < wm - wsd})
    return table


def report_seeds(out: Path, result: dict[str, Any], title: str, fields: Sequence[str],
                 orderings: Sequence[tuple] = ()) -> None:
    """Add the paired ``orderings`` to ``result``, write ``out/results-seeds.json``, print the tables."""
    if orderings:
        result["orderings"] = paired_orderings(list(result["per_seed"].values()), orderings)
    atomic_write_json(out / "results-seeds.json", result)
    print()
    print(f"{title} over seeds {result['seeds']} (mean ± sd)")
    print_table(result["rows"], fields)
    print_checks(result["checks"], len(result["seeds"]))
    if orderings:
        print()
        print(format_table(result["orderings"], ["claim", "better", "worse", "paired gain", "seeds holding",
                                                 "beyond one sd", "intervals apart"]))


def latency_quality_plot(rows: Sequence[ResultRow], path: Path) -> None:
    """Latency and digits FD against NFE, a line per method."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), dpi=110)
    for i, m in enumerate(dict.fromkeys(r.method for r in rows)):
        rs = [r for r in rows if r.method == m]
        axes[0].plot([r.nfe for r in rs], [r.latency_ms for r in rs], "o-", color=f"C{i}", label=m)
        axes[1].plot([r.nfe for r in rs], [r.metrics["fd"] for r in rs], "o-", color=f"C{i}", label=m)
    axes[0].set(xscale="log", yscale="log", xlabel="NFE", ylabel="latency per image, batch 1 (ms)",
                title="latency vs NFE")
    axes[1].set(xscale="log", yscale="log", xlabel="NFE", ylabel="digits FD (lower is better)",
                title="quality vs NFE")
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path)


def sample_rows_figure(samples: dict[str, torch.Tensor], path: Path, per_row: int = 16) -> None:
    """A strip of ``per_row`` grey samples per labelled entry."""
    plt = pyplot()
    fig, axes = plt.subplots(len(samples), 1, figsize=(per_row * 0.6, len(samples) * 0.95), dpi=110)
    for ax, (label, x) in zip(axes, samples.items(), strict=False):
        imgs = np.pad(to_uint8(x[:per_row])[..., 0], ((0, 0), (0, 0), (1, 1)), constant_values=255)
        ax.imshow(np.concatenate(list(imgs), axis=1), cmap="gray", vmin=0, vmax=255)
        ax.set_title(label, fontsize=8)
        ax.axis("off")
    fig.tight_layout()
    save_figure(fig, path)


def strip_figure(columns: dict[str, torch.Tensor], path: Path, n: int = 6) -> None:
    """``n`` images, one per row; a column per labelled method (nearest-neighbour enlarged)."""
    plt = pyplot()
    fig, axes = plt.subplots(n, len(columns), figsize=(1.3 * len(columns), 1.3 * n + 0.3), dpi=110)
    for j, (label, x) in enumerate(columns.items()):
        imgs = to_uint8(x[:n])
        for i in range(n):
            axes[i, j].imshow(imgs[i], interpolation="nearest")
            axes[i, j].axis("off")
        axes[0, j].set_title(label, fontsize=8)
    fig.tight_layout(pad=0.3)
    save_figure(fig, path)
