"""Merge the three steps of bench/gpu_check.sh into one JSON and print the README's GPU rows.

    python bench/gpu_summary.py WORK_DIR OUT_JSON

WORK_DIR holds <step>.json (the step's own result, when it got that far), <step>.log and
<step>.status.json (exit status, seconds, limit) for the steps train, qlora and embed.
Exit status 1 when a step failed or ran out of time (its row says so), else 0.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Optional

STEPS = ("train", "qlora", "embed")
MIB = 2 ** 20


def _load(path: Path) -> Optional[dict[str, Any]]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _state(status: dict[str, Any]) -> str:
    rc = status.get("rc")
    return "ok" if rc == 0 else ("timed out" if rc in (124, 137) else f"failed (exit {rc})")


def train_rows(doc: dict[str, Any]) -> list[str]:
    return [f"| training step, {r['model']} ({r['backbone'] or 'CRNN'}, batch {r['batch_size']}, "
            f"{r['mixed_precision']}) | {r['seconds_per_step']:.3f} s/step, {r['samples_per_s']:.1f} clips/s | "
            f"{r['cuda_peak_mib'] if r.get('cuda_peak_mib') is not None else '-'} MiB peak |"
            for r in doc.get("models", [])]


def _peak_mib(r: dict[str, Any]) -> Optional[float]:
    for key in ("cuda_step_peak_bytes", "step_peak_rss_bytes"):
        if r.get(key) is not None:
            return round(r[key] / MIB, 1)
    return None


def _last(value: Any) -> float:
    """The steady-state value: the last step's when a list (the first step also allocates the optimizer)."""
    if isinstance(value, list):
        value = value[-1] if value else None
    return float("nan") if value is None else float(value)


def qlora_rows(doc: dict[str, Any]) -> list[str]:
    rows = [f"| training step, {r['config']} ({doc.get('preset')}, {r.get('compute_dtype') or r.get('mixed_precision')}) "
            f"| {_last(r.get('step_seconds')):.3f} s/step, {r.get('trainable_fraction', 0):.2%} trainable | "
            f"{_peak_mib(r)} MiB peak |" for r in doc.get("results", [])]
    for name, ratio in (doc.get("ratios") or {}).items():
        rows.append(f"| {name} | step peak ratio {ratio.get('step_peak', float('nan')):.3f} | |")
    return rows


def embed_rows(doc: dict[str, Any]) -> list[str]:
    pre = doc.get("precompute", {})
    backbone = doc.get("settings", {}).get("backbone")
    return [f"| embedding precompute ({backbone}, {pre.get('device')}{', bf16' if pre.get('bf16') else ''}) | "
            f"{pre.get('embed_seconds_per_audio_hour')} s per audio hour "
            f"({pre.get('audio_seconds', 0) / 60:.0f} min in {pre.get('embed_seconds')} s) | "
            f"{pre.get('cuda_peak_mib', '-')} MiB peak |"]


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        sys.exit(__doc__)
    work, out = Path(argv[0]), Path(argv[1])
    merged: dict[str, Any] = {"steps": {}}
    rows = ["| GPU check | result | memory |", "|---|---|---|"]
    ok = True
    for step, to_rows in zip(STEPS, (train_rows, qlora_rows, embed_rows)):
        status = _load(work / f"{step}.status.json") or {"rc": None}
        doc = _load(work / f"{step}.json")
        merged["steps"][step] = {"status": status, "state": _state(status), "result": doc}
        if status.get("rc") == 0 and doc is not None:
            rows += to_rows(doc)
        else:
            ok = False
            tail = (work / f"{step}.log").read_text(errors="replace").strip().splitlines()[-3:] \
                if (work / f"{step}.log").exists() else []
            merged["steps"][step]["log_tail"] = tail
            rows.append(f"| {step} | {_state(status)} after {status.get('seconds')} s | |")
    merged["readme_rows"] = rows
    merged["seconds"] = sum((s["status"].get("seconds") or 0) for s in merged["steps"].values())
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(merged, indent=2) + "\n")
    print("\n".join(rows))
    print(f"gpu check: {merged['seconds']} s in all; wrote {out}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
