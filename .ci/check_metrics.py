"""CI check: every run's metrics files exist and hold finite numbers (or say why they were skipped or
not run), and metrics/aggregate.json aggregates every model's test sets."""
import json
import math
import sys
from pathlib import Path

import yaml

params = yaml.safe_load(Path("params.yaml").read_text())
bad, checked = [], 0


def finite(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


aggregate_path = Path("metrics/aggregate.json")
aggregate = json.loads(aggregate_path.read_text())["models"] if aggregate_path.is_file() else {}
if not aggregate:
    bad.append(f"{aggregate_path}: missing or empty")
for model, mp in params["models"].items():
    study = params["studies"][mp["study"]]
    scopes = (list(study["corpora"]) if study.get("design") == "matrix"
              else ["in_domain"] + (["target"] if study.get("target") else []))
    for fold in params["folds"]:
        for seed in params["seeds"]:
            run = Path("metrics/models") / model / f"f{fold}-s{seed}"
            if (run / "not_run.json").is_file():
                print(f"{run}: not run ({json.loads((run / 'not_run.json').read_text())['not_run']})")
                continue
            for scope in scopes:
                path = run / f"{scope}.json"
                if not path.is_file():
                    bad.append(f"{path}: missing")
                    continue
                metrics = json.loads(path.read_text())
                checked += 1
                if metrics.get("skipped"):
                    print(f"{path}: skipped ({metrics['skipped']})")
                    continue
                bad += [f"{path}: {key} = {metrics.get(key)!r}" for key in ("accuracy", "uar", "macro_f1", "cohen_kappa")
                        if not finite(metrics.get(key))]
                print(f"{path}: accuracy {metrics['accuracy']:.3f}  UAR {metrics['uar']:.3f}  "
                      f"top class {metrics['top_class']} {metrics['top_class_share']:.2f}")
    trained = [study["corpora"][f - 1] for f in params["folds"] if f <= len(study["corpora"])]
    keys = [f"{a}_to_{b}" for a in trained for b in study["corpora"]] if study.get("design") == "matrix" else scopes
    for scope in keys:
        agg = aggregate.get(model, {}).get(scope)
        if agg is None:
            bad.append(f"{aggregate_path}: no {model}/{scope}")
        elif not agg.get("skipped"):
            for part in ("mean_over_runs", "pooled"):
                if not finite((agg.get(part) or {}).get("uar")):
                    bad.append(f"{aggregate_path}: {model}/{scope} {part}.uar = {(agg.get(part) or {}).get('uar')!r}")
            if not bad:
                ci = agg["pooled"].get("uar_ci95") or [math.nan, math.nan]
                print(f"{model}/{scope}: UAR {agg['mean_over_runs']['uar']:.3f} over {agg['n_runs']} run(s); pooled "
                      f"{agg['pooled']['uar']:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]")
# Weighted-layer encoders: every run's learned layer weights (a distribution over hidden states) and their mean.
layer_weights = json.loads(aggregate_path.read_text()).get("layer_weights", {}) if aggregate_path.is_file() else {}
for model, mp in params["models"].items():
    if (mp.get("encoder") or {}).get("layers") != "weighted":
        continue
    for fold in params["folds"]:
        for seed in params["seeds"]:
            run = Path("metrics/models") / model / f"f{fold}-s{seed}"
            if (run / "not_run.json").is_file():
                continue
            path = run / "layer_weights.json"
            weights = json.loads(path.read_text()).get("layer_weights") if path.is_file() else None
            if not weights or not all(finite(w) and w >= 0 for w in weights) or abs(sum(weights) - 1) > 1e-4:
                bad.append(f"{path}: layer weights {weights!r} are not a distribution over hidden states")
    if model not in layer_weights:
        bad.append(f"{aggregate_path}: no layer_weights for {model}")
    else:
        print(f"{model}: layer weights {[round(w, 3) for w in layer_weights[model]['mean']]} "
              f"(top hidden state {layer_weights[model]['top_layer']})")
for path in ("metrics/summary.md", "metrics/comparisons.json", "metrics/corpus_matrix.json"):
    if not Path(path).is_file():
        bad.append(f"{path}: missing")
if bad:
    sys.exit("metrics check failed:\n  " + "\n  ".join(bad))
print(f"{checked} run metrics files hold numbers; aggregate.json covers every model")
