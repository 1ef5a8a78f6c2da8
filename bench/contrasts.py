"""Do the corpora express each emotion contrast alike? Class contrasts of openSMILE functionals, per corpus.

For a study-level openSMILE store the pipeline wrote (e.g. a `bench/realdata.py` work folder's
`<setup>/data/features/egemaps/cross_corpus`, which holds every clip of the set-up's corpora), each
speaker's functionals are z-scored with that speaker's own statistics (ser.features.scaling, as the
heads' `standardise: speaker`). For every pair of classes (a, b) and every corpus, the contrast is the
vector of per-feature mean differences mean(a) - mean(b). Printed per contrast: the correlation of
that vector between each pair of corpora (1: the corpora mark the contrast with the same features
in the same directions; near 0: a model trained on one reads the other's contrast as noise), and the
features whose direction flips between two corpora, largest first. Labels are read, so this is an
analysis of labeled corpora, never a model input.

    python bench/contrasts.py /tmp/ser-realdata/multi_corpus/data/features/egemaps/cross_corpus \\
        --labels angry happy neutral sad --out /tmp/contrasts.json
"""
from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ser.features.scaling import speaker_standardise  # noqa: E402
from ser.features.stores import CLIPS, read_index  # noqa: E402


def load(store: Path) -> tuple[np.ndarray, list[str], list[str], list[str]]:
    """(per-speaker z-scored rows, corpus and emotion per row, feature names) of a study-level store."""
    meta_path, idx_path, arr_path = store / "meta.json", store / f"{CLIPS}.csv", store / f"{CLIPS}.npy"
    for path in (meta_path, idx_path, arr_path):
        if not path.is_file():
            raise SystemExit(f"{path}: missing; pass a study-level openSMILE store (the folder with "
                             f"{CLIPS}.npy, {CLIPS}.csv and meta.json)")
    meta = json.loads(meta_path.read_text())
    if "feature_names" not in meta:
        raise SystemExit(f"{meta_path}: kind {meta.get('kind')!r} has no feature_names: pass an openSMILE store")
    index = read_index(idx_path)
    rows = np.load(arr_path, mmap_mode="r")[[r.offset for r in index]]
    z = np.nan_to_num(speaker_standardise(rows, [f"{r.corpus}/{r.speaker}" for r in index]))
    return z, [r.corpus for r in index], [r.emotion for r in index], list(meta["feature_names"])


def contrasts(z: np.ndarray, corpus: Sequence[str], emotion: Sequence[str], names: Sequence[str],
              labels: Sequence[str], top: int = 4, min_clips: int = 5) -> list[dict[str, Any]]:
    """Per class pair: each corpus's contrast vector, their correlations, and the top flipped features.
    A corpus with fewer than `min_clips` clips of either class is left out of that contrast."""
    corpus, emotion = np.asarray(corpus), np.asarray(emotion)
    out = []
    for a, b in itertools.combinations(labels, 2):
        vec = {}
        for c in sorted(set(corpus)):
            ra, rb = (corpus == c) & (emotion == a), (corpus == c) & (emotion == b)
            if ra.sum() >= min_clips and rb.sum() >= min_clips:
                vec[c] = z[ra].mean(axis=0) - z[rb].mean(axis=0)
        pairs = []
        for c1, c2 in itertools.combinations(sorted(vec), 2):
            v1, v2 = vec[c1], vec[c2]
            flip = np.sign(v1) != np.sign(v2)
            order = np.argsort(-(np.abs(v1) + np.abs(v2)) * flip, kind="stable")[:top]
            pairs.append({"corpora": [c1, c2], "correlation": float(np.corrcoef(v1, v2)[0, 1]),
                          "flipped": [{"feature": names[i], c1: float(v1[i]), c2: float(v2[i])}
                                      for i in order if flip[i]]})
        out.append({"contrast": f"{a} - {b}", "corpora": sorted(vec), "pairs": pairs})
    return out


def table(result: list[dict[str, Any]]) -> str:
    lines = ["| contrast | corpora | correlation | features that flip (z-score units) |", "|---|---|---|---|"]
    for item in result:
        for p in item["pairs"]:
            c1, c2 = p["corpora"]
            flips = "; ".join(f"{f['feature']} {f[c1]:+.2f} / {f[c2]:+.2f}" for f in p["flipped"])
            lines.append(f"| {item['contrast']} | {c1} / {c2} | {p['correlation']:.2f} | {flips} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("store", type=Path, help="a study-level openSMILE store folder")
    ap.add_argument("--labels", nargs="+", default=["angry", "happy", "neutral", "sad"])
    ap.add_argument("--top", type=int, default=4, help="flipped features shown per corpus pair (default 4)")
    ap.add_argument("--out", type=Path, help="also write the result as JSON")
    args = ap.parse_args(argv)
    z, corpus, emotion, names = load(args.store)
    result = contrasts(z, corpus, emotion, names, args.labels, args.top)
    print(table(result))
    if args.out:
        args.out.write_text(json.dumps({"store": str(args.store), "labels": args.labels, "contrasts": result,
                                        "table": table(result)}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
