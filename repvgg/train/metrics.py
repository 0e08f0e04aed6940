"""Per-epoch metrics: metrics.jsonl (append), metrics.csv and curves.png (rewritten atomically)."""
from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path

from ..fileio import atomic_savefig, atomic_write_text


class MetricsLog:
    """Rows of per-epoch metrics kept in memory and mirrored to jsonl/csv/png in `folder`."""

    def __init__(self, folder: str | os.PathLike, resume_epoch: int | None = None, metric: str = "top1",
                 metric_name: str = "top-1", train_metric_name: str = "train (augmented)"):
        self.folder = Path(folder)
        self.metric, self.metric_name, self.train_metric_name = metric, metric_name, train_metric_name
        self.jsonl, self.csv, self.png = (self.folder / n for n in ("metrics.jsonl", "metrics.csv", "curves.png"))
        self.rows: list[dict] = []
        if resume_epoch is not None and self.jsonl.is_file():
            # keep the epochs the resumed state has seen; later rows came from a lost tail
            for line in self.jsonl.read_text().splitlines():
                if line.strip():
                    row = json.loads(line)
                    if row.get("epoch", 0) <= resume_epoch:
                        self.rows.append(row)
        self._rewrite_jsonl()

    def _rewrite_jsonl(self) -> None:
        atomic_write_text(self.jsonl, "".join(json.dumps(r) + "\n" for r in self.rows))

    def add(self, row: dict) -> None:
        self.rows.append(row)
        with open(self.jsonl, "a") as f:
            f.write(json.dumps(row) + "\n")
        self._write_csv()
        self.plot()

    def _write_csv(self) -> None:
        keys = list(dict.fromkeys(k for r in self.rows for k in r))
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=keys)
        w.writeheader()
        w.writerows(self.rows)
        atomic_write_text(self.csv, buf.getvalue())

    def plot(self) -> None:
        """Loss, accuracy and lr against epoch, in one PNG."""
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        ep = [r["epoch"] for r in self.rows]
        fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
        axes[0].plot(ep, [r.get("train_loss") for r in self.rows], "o-", label="train")
        for split in ("val", "test"):
            if any(f"{split}_loss" in r for r in self.rows):
                axes[0].plot(ep, [r.get(f"{split}_loss") for r in self.rows], "o-", label=split)
        axes[0].set_title("loss")
        axes[1].plot(ep, [r.get("train_acc") for r in self.rows], "o-", label=self.train_metric_name)
        for split, label in (("val", f"val {self.metric_name} (selects)"), ("test", f"test {self.metric_name} (report only)")):
            if any(f"{split}_{self.metric}" in r for r in self.rows):
                axes[1].plot(ep, [r.get(f"{split}_{self.metric}") for r in self.rows], "o-", label=label)
        axes[1].set_title("accuracy (%)" if self.metric == "top1" else f"{self.metric_name} (%)")
        axes[2].plot(ep, [r.get("lr") for r in self.rows], "o-")
        axes[2].set_title("lr (end of epoch)")
        for ax in axes:
            ax.set_xlabel("epoch")
            ax.grid(alpha=0.3)
        axes[0].legend()
        axes[1].legend()
        fig.tight_layout()
        try:
            atomic_savefig(fig, self.png, dpi=90)
        finally:
            plt.close(fig)
