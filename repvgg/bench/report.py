"""Benchmark output: a markdown table for the terminal, and CSV + JSON + a Fig. 1-style scatter.

Every file carries the hardware, software versions, machine load and the command that made it,
and is written atomically (temp file + os.replace) so a killed run never leaves half a result.
"""
from __future__ import annotations

import csv
import datetime
import io
import json
import os
import platform
import sys
from pathlib import Path

import torch

from ..fileio import atomic_savefig, atomic_write_text

COLUMNS = [
    ("label", "model"), ("images_per_s", "images/s (median)"), ("spread", "min-max"),
    ("params_m", "params (M)"), ("macs_g", "FLOPs (GMACs)"), ("wino_muls_g", "Wino MULs (G)"),
    ("peak_mem_mb", "peak mem (MB)"), ("ceiling_fraction", "of ceiling"),
    ("paper_top1", "paper top-1"), ("paper_speed", "paper img/s (1080Ti)"),
]


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _cpu_flags() -> set[str] | None:
    """The CPU's feature flags from /proc/cpuinfo (None where there is none)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return None


def cpu_isa() -> str:
    """The vector extensions that decide CPU speed here: "AVX512-BF16", "AVX512", "AVX2", ...
    Two VMs both called "AMD EPYC" differed 3x in speed by this alone. "-BF16" only for native bf16
    (avx512_bf16 or amx_bf16): oneDNN says bf16 is supported on any AVX-512 CPU, where it is emulated
    and training in it ran 0.46-0.49x the fp32 speed (Xeon, 2026-12-06)."""
    cap = torch.backends.cpu.get_cpu_capability()
    flags = _cpu_flags()
    if flags is not None:
        bf16 = bool(flags & {"avx512_bf16", "amx_bf16"})
    else:
        try:
            bf16 = torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
        except (AttributeError, RuntimeError):
            bf16 = False
    return f"{cap}-BF16" if cap.startswith("AVX512") and bf16 else cap


def cpu_label() -> str:
    """``"AMD EPYC (AVX2)"``: the CPU's name and its vector extensions, for results files."""
    return f"{cpu_name()} ({cpu_isa()})"


def environment(device: torch.device) -> dict:
    """Hardware and software the numbers come from."""
    import torchvision

    env = dict(
        date_utc=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S"),
        cpu=cpu_name(), cpu_count=os.cpu_count(), torch_threads=torch.get_num_threads(),
        cpu_capability=torch.backends.cpu.get_cpu_capability(),
        mkldnn_bf16=bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()),
        python=platform.python_version(), torch=torch.__version__, torchvision=torchvision.__version__,
        device=str(device), gpu=torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        command=" ".join([Path(sys.argv[0]).name] + sys.argv[1:]),
    )
    if "timm" in sys.modules:
        env["timm"] = sys.modules["timm"].__version__
    return env


def loadavg() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def _fmt(key: str, row: dict) -> str:
    v = row.get(key)
    if key == "spread":
        return f"{row['images_per_s_min']:.1f}-{row['images_per_s_max']:.1f}"
    if v is None:
        return "-"
    if key == "ceiling_fraction":
        return f"{100 * v:.0f}%"
    if isinstance(v, float):
        return f"{v:.2f}" if key in ("params_m", "macs_g", "wino_muls_g", "paper_top1") else f"{v:.1f}"
    return str(v)


def markdown_table(rows: list[dict]) -> str:
    cols = [c for c in COLUMNS if any(r.get(c[0]) is not None for r in rows) or c[0] in ("label", "spread")]
    lines = ["| " + " | ".join(h for _, h in cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(_fmt(k, r) for k, _ in cols) + " |" for r in rows]
    return "\n".join(lines)


def write_text(path: Path, text: str) -> None:
    atomic_write_text(path, text)


def write_results(stem: str | Path, result: dict, title: str = "RepVGG benchmark") -> list[Path]:
    """``stem``.json / .csv / .md / .png; returns the paths written."""
    stem = Path(stem)
    rows = result["rows"]
    paths = [stem.with_suffix(".json"), stem.with_suffix(".csv"), stem.with_suffix(".md")]
    write_text(paths[0], json.dumps(result, indent=2) + "\n")
    buf = io.StringIO()
    keys = [k for k in rows[0] if not isinstance(rows[0][k], (list, dict))] if rows else []
    writer = csv.DictWriter(buf, fieldnames=keys, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    write_text(paths[1], buf.getvalue())
    write_text(paths[2], f"# {title}\n\n{markdown_table(rows)}\n\n{settings_text(result)}\n")
    png = stem.with_suffix(".png")
    if scatter_png(png, rows, result["environment"], title, result.get("settings")):
        paths.append(png)
    return paths


def settings_text(result: dict) -> str:
    env, s = result["environment"], result["settings"]
    lines = [f"- {k}: {v}" for k, v in s.items()]
    lines += [f"- {k}: {v}" for k, v in env.items()]
    return "\n".join(lines)


def scatter_png(path: Path, rows: list[dict], env: dict, title: str, settings: dict | None = None) -> bool:
    """Paper top-1 (labelled as the paper's) against our measured images/s, like the paper's Fig. 1.

    The title says what is plotted; a second line gives the hardware, batch, image size and dtype.
    Labels are placed one by one where they overlap neither a point nor an earlier label.
    """
    pts = [r for r in rows if r.get("paper_top1") is not None and r["form"] != "train"]
    if not pts:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = settings or {}
    device = env.get("gpu") or f"{env.get('cpu')}, {env.get('cpu_count')} cores, {env.get('torch_threads')} thread(s)"
    fig, ax = plt.subplots(figsize=(8, 5.5))
    for group, marker, color in (("repvgg", "o", "tab:red"), ("baseline", "s", "tab:blue"), ("timm", "^", "tab:green")):
        sel = [r for r in pts if r["kind"] == group]
        if sel:
            ax.scatter([r["images_per_s"] for r in sel], [r["paper_top1"] for r in sel], marker=marker,
                       color=color, label={"repvgg": "RepVGG (deploy form)", "baseline": "torchvision baselines",
                                           "timm": "timm"}[group])
    ax.set_xlabel("measured inference throughput (images/s, median of interleaved repeats)")
    ax.set_ylabel("ImageNet top-1 (%), from the paper's Tables 4-5")
    ax.set_title(f"{title}: accuracy vs. speed (paper Fig. 1 style)\n{device}; batch {s.get('batch_size', '?')}, "
                 f"{s.get('image_size', '?')} px, {rows[0]['dtype']}", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    _place_labels(fig, ax, [(r["images_per_s"], r["paper_top1"], r["name"]) for r in pts])
    fig.tight_layout()
    atomic_savefig(fig, path, format="png", dpi=120)
    plt.close(fig)
    return True


_OFFSETS = [(5, 4), (5, -11), (-5, 4), (-5, -11), (5, 14), (5, -21), (-5, 14), (-5, -21), (5, 24), (-5, 24),
            (5, -31), (-5, -31)]


def _place_labels(fig, ax, points: list[tuple[float, float, str]]) -> None:
    """Annotate each point at the first offset whose text box overlaps no point or earlier label."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    taken = [ax.transData.transform((x, y)) for x, y, _ in points]
    dots = [matplotlib_bbox(px, py, 4) for px, py in taken]
    boxes = []
    for x, y, text in sorted(points, key=lambda p: -p[1]):
        for dx, dy in _OFFSETS:
            ann = ax.annotate(text, (x, y), xytext=(dx, dy), textcoords="offset points", fontsize=7,
                              ha="left" if dx > 0 else "right")
            box = ann.get_window_extent(renderer).expanded(1.05, 1.15)
            if not any(box.overlaps(b) for b in boxes + dots) and ax.bbox.contains(box.x0, box.y0) \
                    and ax.bbox.contains(box.x1, box.y1):
                boxes.append(box)
                break
            ann.remove()
        else:   # nowhere free: the first choice, with a leader line so it stays readable
            ann = ax.annotate(text, (x, y), xytext=(12, 12), textcoords="offset points", fontsize=7,
                              arrowprops=dict(arrowstyle="-", lw=0.5, color="grey"))
            boxes.append(ann.get_window_extent(renderer))


def matplotlib_bbox(px: float, py: float, r: float):
    from matplotlib.transforms import Bbox

    return Bbox([[px - r, py - r], [px + r, py + r]])
