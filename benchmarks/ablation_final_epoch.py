"""Re-derive an ablation table that was selected on the test set: each run's FINAL epoch instead.

Before 2026-12-04 the trainer kept ``best.safetensors`` by test top-1, so a run whose best epoch
was not its last reported a test-selected figure. Every run logged its test top-1 after each epoch
(``metrics.jsonl``, column ``val_top1``, which then meant the test set); the final epoch's value
involves no selection. This rewrites those runs' ``result.json`` top-1 (the train-time figure;
the deploy figure too, since fusion changed no prediction in any run: agreement 100.0%) and the
table, and says so in both. Speeds, params and every other column stay as measured.

    python benchmarks/ablation_final_epoch.py benchmarks/results/ablation
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from repvgg.train.ablate import all_variants, run_ablation  # noqa: E402

NOTE = "final epoch (no selection), re-derived from metrics.jsonl on 2026-12-04"


def fix_run(run_dir: Path) -> str | None:
    result_path = run_dir / "result.json"
    res = json.loads(result_path.read_text())
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]
    last = rows[-1]
    if str(res["best_epoch"]) == str(last["epoch"]) or res.get("top1_source") == NOTE:
        return None
    was = res["top1_train_form"]
    res["top1_test_selected_epoch"] = res["best_epoch"]
    res["top1_test_selected"] = was
    res["top1_train_form"] = last["val_top1"]
    if res.get("top1_deploy") is not None:
        if res.get("deploy_agreement_pct") != 100.0:
            raise SystemExit(f"{run_dir}: fusion changed predictions; its deploy figure cannot be re-derived")
        res["top1_deploy"] = last["val_top1"]
    res["top1_source"] = NOTE
    result_path.write_text(json.dumps(res, indent=2))
    return f"{run_dir.parent.name} {run_dir.name}: epoch {res['best_epoch']} {was:.2f}% -> epoch {last['epoch']} " \
           f"{last['val_top1']:.2f}%"


def main(folder: str) -> int:
    out = Path(folder)
    changes = [c for d in sorted((out / "runs").glob("*/seed*")) if (c := fix_run(d))]
    md = (out / "ablation.md").read_text()
    header = md.split("\n\n| variant")[0].split("  \nSpeeds timed")[0].replace(
        "Top-1 is on the test split, best epoch (EMA weights when the recipe uses EMA).",
        "Top-1 is on the test split, of each run's final epoch (EMA weights; re-derived on 2026-12-04 for the "
        f"{len(changes) or 'earlier'} runs whose kept epoch had been picked on the test set: "
        "benchmarks/ablation_final_epoch.py).")
    seeds = len({d.name for d in (out / "runs").glob("*/seed*")})
    variants = [v for v in all_variants() if (out / "runs" / v).is_dir()]
    run_ablation(out, variants=variants, seeds=seeds, report_only=True, header=header, log=lambda m: None)
    print("\n".join(changes) or "nothing to change")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
