"""CI check: every model's evaluation metrics files exist and hold finite numbers (or say why they were skipped)."""
import json
import math
import sys
from pathlib import Path

import yaml

params = yaml.safe_load(Path("params.yaml").read_text())
expected = []
for model, mp in params["models"].items():
    expected.append(Path("metrics/models") / model / "in_domain.json")
    if params["studies"][mp["study"]].get("target"):
        expected.append(Path("metrics/models") / model / "target.json")
bad = []
for path in expected:
    if not path.is_file():
        bad.append(f"{path}: missing")
        continue
    metrics = json.loads(path.read_text())
    if metrics.get("skipped"):
        print(f"{path}: skipped ({metrics['skipped']})")
        continue
    for key in ("accuracy", "uar", "macro_f1", "cohen_kappa"):
        value = metrics.get(key)
        if not isinstance(value, (int, float)) or not math.isfinite(value):
            bad.append(f"{path}: {key} = {value!r}")
    print(f"{path}: accuracy {metrics['accuracy']:.3f}  UAR {metrics['uar']:.3f} "
          f"[{metrics['uar_ci95'][0]:.3f}, {metrics['uar_ci95'][1]:.3f}]  "
          f"top class {metrics['top_class']} {metrics['top_class_share']:.2f}")
for path in ("metrics/summary.md", "metrics/comparisons.json"):
    if not Path(path).is_file():
        bad.append(f"{path}: missing")
if bad:
    sys.exit("metrics check failed:\n  " + "\n  ".join(bad))
print(f"{len(expected)} metrics files hold numbers")
