"""Rerun the paper's ablations (Tables 6-7): every block variant, same recipe, several seeds.

    from repvgg.train.ablate import run_ablation
    rows = run_ablation("runs/ablation", model="repvgg_a0", data="fashion-mnist", seeds=3)

Each (variant, seed) trains with :mod:`repvgg.train` in ``OUT/runs/VARIANT/seedK/`` and ends with
an atomically written ``result.json``; a run that has one is never rerun, a run that stopped half
way resumes from its last epoch, so the whole ablation can be killed and restarted at will. Two
processes may share one OUT (a lock file per run), to use two cores. The summary
(``ablation.md``/``.csv``/``.png``) is rewritten after every run.
"""
from __future__ import annotations

import csv
import io
import json
import os
import statistics
import time
from pathlib import Path

import torch

from .. import list_blocks
from ..archs import ARCHS, canonical_name, resize_arch
from ..blocks import BLOCKS
from ..fileio import atomic_savefig, atomic_write_text

# The paper's ImageNet top-1 (%) of RepVGG-B0 trained 120 epochs (Tables 6 and 7). QARepVGG is not
# in the paper. Quoted for the ORDERING only: other data, model size and schedule than ours.
PAPER_TOP1 = {
    "repvgg": 75.14, "no_identity": 73.15, "no_1x1": 74.79, "plain": 72.39,
    "identity_no_bn": 74.18, "post_bn": 73.52, "relu_in_branches": 75.69, "dirac": 73.97,
    "trivial": 73.51, "acb": 73.58, "residual_reorg": 74.56, "qa": None,
}
NOT_CONVERTIBLE = "n/a (not convertible)"


def all_variants() -> list[str]:
    return list(list_blocks())


def parse_variants(spec: str | list[str]) -> list[str]:
    """ "all" or a comma-separated list of names from ``list_blocks()``, checked."""
    names = all_variants()
    if isinstance(spec, str):
        spec = names if spec.strip() == "all" else [s.strip() for s in spec.split(",") if s.strip()]
    bad = [s for s in spec if s not in names]
    if bad or not spec:
        raise ValueError(f"unknown variant(s) {bad or spec}; choose 'all' or from: {', '.join(names)}")
    return list(dict.fromkeys(spec))


def convertible(variant: str) -> bool:
    """Whether reparameterize gives a deploy model (residual_reorg: folded conv-BN, shortcuts kept)."""
    return variant == "residual_reorg" or not BLOCKS[variant].branch_relu


# ------------------------------------------------------------------------------------- one run
def _claim(run_dir: Path) -> bool:
    """Create ``run_dir/.lock`` (pid inside) unless a live process holds it."""
    lock = run_dir / ".lock"
    run_dir.mkdir(parents=True, exist_ok=True)
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            try:
                os.kill(int(lock.read_text() or 0), 0)
                return False  # a live process is on it
            except (ProcessLookupError, ValueError):
                lock.unlink(missing_ok=True)  # stale: its process is gone
                continue
            except PermissionError:
                return False
        with os.fdopen(fd, "w") as f:
            f.write(str(os.getpid()))
        return True
    return False


def _speeds(trained: torch.nn.Module, deployed: torch.nn.Module | None, shape, repeats: int = 3) -> dict:
    """Inference images/s of the train-time form and the deploy form, timed interleaved (fp32)."""
    from ..bench.timing import Protocol, time_interleaved

    x = torch.randn(*shape)
    runners = {"train_form": lambda: trained(x)}
    if deployed is not None:
        runners["deploy"] = lambda: deployed(x)
    t = time_interleaved(runners, shape[0], Protocol(warmup=2, iters=2, repeats=repeats), torch.device("cpu"))
    return {f"infer_{k}_img_s": v.median for k, v in t.items()}


def run_one(variant: str, seed: int, run_dir: Path, recipe: str, overrides: dict, *,
            keep_checkpoints: bool = False, log=print) -> dict | None:
    """Train, evaluate and time one (variant, seed); return its result (None: another process has it)."""
    from ..rebuild import model_from_checkpoint
    from ..data import build_loader
    from ..evaluate import evaluate
    from ..reparam import reparameterize
    from . import Trainer, prepare_run

    result_path = run_dir / "result.json"
    if result_path.is_file():
        return json.loads(result_path.read_text())
    if not _claim(run_dir):
        return None
    try:
        resume = (run_dir / "last.state.pt").is_file()
        free = {k: overrides[k] for k in ("threads",) if k in overrides}
        cfg = prepare_run(run_dir, recipe, {**overrides, "block": variant, "seed": seed}) if not resume \
            else prepare_run(run_dir, recipe, free, resume=True)
        log(f"[{variant} seed {seed}] {'resuming' if resume else 'training'} in {run_dir}")
        t0 = time.perf_counter()
        trainer = Trainer(cfg, run_dir, resume=resume, overwrite=not resume, quiet=True)
        summary = trainer.run()
        info = trainer.info
        res = dict(variant=variant, seed=seed, convertible=convertible(variant), best_epoch=summary["best_epoch"])
        if convertible(variant):
            fin = trainer.finish()
            res.update(top1_train_form=fin["train_top1"], top1_deploy=fin["deploy_top1"],
                       deploy_agreement_pct=fin["agreement_pct"])
        else:
            loader = build_loader(trainer.test_ds, 512, train=False)
            res.update(top1_train_form=evaluate(model_from_checkpoint(run_dir / "best.safetensors"), loader,
                                                info.num_classes)["top1"], top1_deploy=None)
        res["train_s"] = summary["elapsed_s"]
        rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line]
        res["train_img_s"] = statistics.median(r["img_per_s"] for r in rows)
        trained = model_from_checkpoint(run_dir / "best.safetensors").eval()
        deployed = reparameterize(trained) if convertible(variant) else None
        res["params_train_form"] = sum(p.numel() for p in trained.parameters())
        res["params_deploy"] = sum(p.numel() for p in deployed.parameters()) if deployed is not None else None
        res.update(_speeds(trained, deployed, (128, info.in_chans, info.image_size, info.image_size)))
        res["torch_threads"] = torch.get_num_threads()
        res["loadavg_1min"] = os.getloadavg()[0]
        res["wall_s"] = time.perf_counter() - t0
        if not keep_checkpoints:  # logs, metrics and the result stay; weights are large
            for f in ("last.safetensors", "last_ema.safetensors", "last.state.pt", "best.safetensors",
                      "deploy.safetensors"):
                (run_dir / f).unlink(missing_ok=True)
        atomic_write_text(result_path, json.dumps(res, indent=2))
        top = res["top1_deploy"] if res["top1_deploy"] is not None else res["top1_train_form"]
        log(f"[{variant} seed {seed}] top-1 {top:.2f}% in {res['wall_s']:.0f}s")
        return res
    finally:
        (run_dir / ".lock").unlink(missing_ok=True)


# ------------------------------------------------------------------------------------- summary
def _mean_std(values: list[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def summarize(results: list[dict], variants: list[str]) -> list[dict]:
    """One row per variant: mean/std over seeds of top-1, medians of speeds, params, paper's number."""
    rows = []
    for v in variants:
        rs = [r for r in results if r["variant"] == v]
        dep = [r["top1_deploy"] for r in rs if r.get("top1_deploy") is not None]
        trn = [r["top1_train_form"] for r in rs]

        def med(key):
            vals = [r[key] for r in rs if r.get(key) is not None]
            return statistics.median(vals) if vals else None

        ratios = [r["infer_deploy_img_s"] / r["infer_train_form_img_s"] for r in rs if r.get("infer_deploy_img_s")]
        d_mean, d_std = _mean_std(dep)
        t_mean, t_std = _mean_std(trn)
        rows.append(dict(
            variant=v, seeds=len(rs), convertible=convertible(v), top1_deploy_mean=d_mean, top1_deploy_std=d_std,
            top1_train_form_mean=t_mean, top1_train_form_std=t_std, per_seed=[round(x, 2) for x in (dep or trn)],
            train_img_s=med("train_img_s"), infer_train_form_img_s=med("infer_train_form_img_s"),
            infer_deploy_img_s=med("infer_deploy_img_s"),
            deploy_speedup=statistics.median(ratios) if ratios else None, params_train_form=med("params_train_form"),
            params_deploy=med("params_deploy"), train_s=med("train_s"), paper_imagenet_top1_b0=PAPER_TOP1.get(v),
        ))
    return rows


def _pm(mean, std) -> str:
    return "" if mean is None else f"{mean:.2f} ± {std:.2f}"


def _num(x, fmt="{:.0f}") -> str:
    return "" if x is None else fmt.format(x)


def table_rows(rows: list[dict]) -> list[dict]:
    """Display strings: deploy columns of non-convertible variants say so."""
    out = []
    for r in rows:
        na = not r["convertible"]
        note = " (BN folded, shortcuts kept)" if r["variant"] == "residual_reorg" and r["seeds"] else ""
        out.append({
            "variant": r["variant"], "seeds": str(r["seeds"]),
            "top-1 deploy (%)": NOT_CONVERTIBLE if na else _pm(r["top1_deploy_mean"], r["top1_deploy_std"]),
            "top-1 train-time form (%)": _pm(r["top1_train_form_mean"], r["top1_train_form_std"]),
            "per seed": " ".join(f"{x:.2f}" for x in r["per_seed"]),
            "train img/s": _num(r["train_img_s"]),
            "infer img/s train-time form": _num(r["infer_train_form_img_s"]),
            "infer img/s deploy": NOT_CONVERTIBLE if na else _num(r["infer_deploy_img_s"]) + note,
            "deploy speed-up (paired)": NOT_CONVERTIBLE if na else _num(r["deploy_speedup"], "{:.2f}x"),
            "params train-time form (M)": _num(r["params_train_form"] and r["params_train_form"] / 1e6, "{:.3f}"),
            "params deploy (M)": NOT_CONVERTIBLE if na else _num(r["params_deploy"] and r["params_deploy"] / 1e6,
                                                               "{:.3f}"),
            "paper ImageNet top-1, RepVGG-B0 (paper's)": _num(r["paper_imagenet_top1_b0"], "{:.2f}") or "not in paper",
        })
    return out


def write_summary(out: Path, rows: list[dict], header: str) -> list[Path]:
    """ablation.md, ablation.csv (display strings + raw numbers) and ablation.png, atomically."""
    disp = table_rows(rows)
    cols = list(disp[0]) if disp else []
    md = [header, "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    md += ["| " + " | ".join(d[c] for c in cols) + " |" for d in disp]
    atomic_write_text(out / "ablation.md", "\n".join(md) + "\n")
    buf = io.StringIO()
    raw_keys = [k for k in (rows[0] if rows else {}) if k != "per_seed"]
    w = csv.writer(buf)
    w.writerow(raw_keys + ["per_seed"])
    for r in rows:
        w.writerow(["" if r[k] is None else r[k] for k in raw_keys] + [" ".join(map(str, r["per_seed"]))])
    atomic_write_text(out / "ablation.csv", buf.getvalue())
    paths = [out / "ablation.md", out / "ablation.csv"]
    lines = header.splitlines()
    subtitle = "\n".join([lines[0].lstrip("# ")] + [ln.strip(" ") for ln in lines if ln.startswith("Hardware:")])
    if _bar_chart(out / "ablation.png", rows, subtitle):
        paths.append(out / "ablation.png")
    return paths


def _bar_chart(path: Path, rows: list[dict], subtitle: str = "") -> bool:
    rows = [r for r in rows if r["seeds"]]
    if not rows:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r["variant"] for r in rows]
    ours = [r["top1_deploy_mean"] if r["convertible"] else r["top1_train_form_mean"] for r in rows]
    errs = [r["top1_deploy_std"] if r["convertible"] else r["top1_train_form_std"] for r in rows]
    fig, (a, b) = plt.subplots(1, 2, figsize=(13, 4.8))
    bars = a.bar(names, ours, yerr=errs, capsize=3, color="tab:blue")
    for bar, r in zip(bars, rows):
        if not r["convertible"]:
            bar.set_hatch("//")
            bar.set_color("tab:gray")
    lo = min(o - (e or 0) for o, e in zip(ours, errs))
    a.set_ylim(max(0, lo - 2), min(100, max(o + (e or 0) for o, e in zip(ours, errs)) + 1))
    a.set_ylabel("top-1 (%), mean ± std over seeds")
    a.set_title("this run (deploy model; gray = train-time form, not convertible)")
    paper = [r["paper_imagenet_top1_b0"] or 0 for r in rows]
    b.bar(names, paper, color="tab:orange")
    b.set_ylim(71.5, 76)
    b.set_ylabel("ImageNet top-1 (%)")
    b.set_title("the paper's RepVGG-B0, 120 epochs (Tables 6-7); 0 = not in paper")
    for ax in (a, b):
        ax.tick_params(axis="x", rotation=60)
    if subtitle:   # what was trained, on what data and machine: a plot read alone says it
        fig.suptitle(subtitle, fontsize=8)
    fig.tight_layout()
    atomic_savefig(fig, path, dpi=110)
    plt.close(fig)
    return True


# ------------------------------------------------------------------------------------- all runs
def collect(out: Path, variants: list[str], seeds: int) -> list[dict]:
    results = []
    for v in variants:
        for s in range(seeds):
            p = out / "runs" / v / f"seed{s}" / "result.json"
            if p.is_file():
                results.append(json.loads(p.read_text()))
    return results


def run_ablation(output, model: str = "repvgg_a0", data: str = "fashion-mnist", variants="all", seeds: int = 3,
                 recipe: str = "small", epochs: int | None = None, width: float = 1.0,
                 overrides: dict | None = None, keep_checkpoints: bool = False, report_only: bool = False,
                 header: str = "", log=print) -> list[dict]:
    """Train every (variant, seed) not done yet (seed-major order), then write the summary; return its rows."""
    out = Path(output)
    variants = parse_variants(variants)
    if seeds < 1:
        raise ValueError(f"--seeds must be >= 1, got {seeds}")
    name = canonical_name(model)
    try:  # fail before any run starts, naming the flag
        resize_arch(ARCHS[name], width)
    except ValueError as e:
        raise ValueError(f"--width {width}: {e}") from None
    base = {**(overrides or {}), "model": name, "width": width, "data": data}
    if epochs is not None:
        base["epochs"] = epochs
    out.mkdir(parents=True, exist_ok=True)
    todo = [(v, s) for s in range(seeds) for v in variants]
    done_times = []
    for i, (v, s) in enumerate(todo):
        if report_only:
            break
        run_dir = out / "runs" / v / f"seed{s}"
        fresh = not (run_dir / "result.json").is_file()
        res = run_one(v, s, run_dir, recipe, base, keep_checkpoints=keep_checkpoints, log=log)
        if res is None:
            log(f"[{v} seed {s}] another process is on it; next")
            continue
        if fresh:
            done_times.append(res["wall_s"])
            left = sum(1 for vv, ss in todo[i + 1:] if not (out / "runs" / vv / f"seed{ss}" / "result.json").is_file())
            log(f"  {left} run(s) left, about {statistics.mean(done_times) * left / 60:.0f} min at this pace")
        results = collect(out, variants, seeds)
        write_summary(out, summarize(results, variants), header + _conditions(results))
    results = collect(out, variants, seeds)
    rows = summarize(results, variants)
    write_summary(out, rows, header + _conditions(results))
    return rows


def _conditions(results: list[dict]) -> str:
    """How loaded the machine was while the speeds were timed (they move with it)."""
    loads = [r["loadavg_1min"] for r in results if r.get("loadavg_1min") is not None]
    threads = sorted({r["torch_threads"] for r in results if r.get("torch_threads")})
    if not loads:
        return ""
    return (f"  \nSpeeds timed with {'/'.join(map(str, threads))} torch thread(s) while the 1-min load average "
            f"was {min(loads):.1f}-{max(loads):.1f} on {os.cpu_count()} cores (other jobs ran too).")
