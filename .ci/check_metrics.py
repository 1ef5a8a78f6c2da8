"""CI check: every evaluation metrics file exists and holds finite numbers."""
import json
import math
import sys
from pathlib import Path

import yaml

params = yaml.safe_load(Path("params.yaml").read_text())
cross = [m for m, p in params["models"].items() if params["studies"][p["study"]].get("target")]
expected = [Path("metrics/in_domain") / f"{m}.json" for m in params["models"]]
expected += [Path("metrics/ravdess") / f"{m}.json" for m in cross]
bad = []
for path in expected:
    if not path.is_file():
        bad.append(f"{path}: missing")
        continue
    metrics = json.loads(path.read_text())
    for key in ("accuracy", "uar", "macro_f1", "cohen_kappa"):
        value = metrics.get(key)
        if not isinstance(value, (int, float)) or not math.isfinite(value):
            bad.append(f"{path}: {key} = {value!r}")
    print(f"{path}: accuracy {metrics['accuracy']:.3f}  UAR {metrics['uar']:.3f} "
          f"[{metrics['uar_ci95'][0]:.3f}, {metrics['uar_ci95'][1]:.3f}]")
if not Path("metrics/summary.md").is_file():
    bad.append("metrics/summary.md: missing")
if bad:
    sys.exit("metrics check failed:\n  " + "\n  ".join(bad))
print(f"{len(expected)} metrics files hold numbers")
