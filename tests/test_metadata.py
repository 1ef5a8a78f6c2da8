"""build-metadata: label filtering, exclusion counts, duplicates, leakage, outputs and the stage script."""
from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import yaml

from ser.config import parse_params
from ser.data.manifest import ManifestError, read_manifest, speaker_leaks, validate
from ser.data.metadata import MetadataError, build_manifests, corpus_roots, file_sha1, write_outputs
import ser.data.metadata as metadata
from test_corpora import make_crema, make_iemocap, make_ravdess, make_tess, write_wav

REPO = Path(__file__).resolve().parents[1]
RAVDESS_ALL = tuple(f"{i:02d}" for i in range(1, 9))


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    """<base>/raw/{ravdess,crema_d,tess,iemocap}, built once for this module (tests only read it)."""
    base = tmp_path_factory.mktemp("corpora")
    make_ravdess(base / "raw" / "ravdess", actors=range(1, 9), emotions=RAVDESS_ALL)
    make_crema(base / "raw" / "crema_d", actors=(1001, 1002, 1003, 1004, 1005, 1006))
    make_tess(base / "raw" / "tess", words=[f"word{i}" for i in range(10)], extras=False)
    make_iemocap(base / "raw" / "iemocap")
    return base


def params_dict(base: Path | str) -> dict:
    """The repo's params.yaml with corpora pointing at the fixture tree and splits sized to it."""
    data = yaml.safe_load((REPO / "params.yaml").read_text())
    data["models"], data["fusions"] = {}, {}  # not this stage's business
    data["corpora"] = {c: {"source": "local", "path": str(Path(base) / "raw" / c)}
                       for c in ("iemocap", "ravdess", "crema_d", "tess")}
    data["studies"] = {
        "cross_corpus": {"labels": ["angry", "happy", "neutral", "sad"], "corpora": ["iemocap", "ravdess"],
                         "source": "iemocap", "target": "ravdess"},
        "multi_corpus": {"labels": ["angry", "disgust", "fear", "happy", "neutral", "sad", "surprise"],
                         "corpora": ["crema_d", "ravdess", "tess"]},
    }
    data["splits"] = {
        "cross_corpus": {"iemocap": {"protocol": "sessions", "train": ["1", "2", "3"], "val": ["4"], "test": ["5"]},
                         "ravdess": {"protocol": "speakers", "adapt": ["1-4"], "test": ["5-8"]}},
        "multi_corpus": {"crema_d": {"protocol": "speakers", "val": ["1004"], "test": ["1005-1006"]},
                         "ravdess": {"protocol": "speakers", "val": ["5-6"], "test": ["7-8"]},
                         "tess": {"protocol": "held_out_words", "val_fraction": 0.1, "test_fraction": 0.2}},
    }
    return data


def build(tree: Path, edit=None):
    data = params_dict(tree)
    if edit:
        edit(data)
    params = parse_params(data)
    return build_manifests(params, corpus_roots(params))


def test_manifests_labels_splits_and_exclusions(tree):
    manifests, report = build(tree)
    cross, multi = manifests["cross_corpus"][1], manifests["multi_corpus"][1]
    validate(cross, labels=["angry", "happy", "neutral", "sad"])
    assert {r.split for r in cross if r.corpus == "ravdess"} == {"adapt", "test"}
    assert {r.session: r.split for r in cross if r.corpus == "iemocap"} == {
        "1": "train", "2": "train", "3": "train", "4": "val", "5": "test"}
    assert Counter(r.raw_label for r in cross if r.emotion == "happy" and r.corpus == "iemocap") == {"hap": 5, "exc": 5}

    rep = report["studies"]["cross_corpus"]["corpora"]
    assert rep["iemocap"]["excluded_by_raw_label"] == {"fru": {"maps_to": "frustrated", "count": 5},
                                                      "oth": {"maps_to": "", "count": 5},
                                                      "xxx": {"maps_to": "", "count": 5}}
    assert rep["iemocap"]["kept"] == 5 * 7
    assert rep["iemocap"]["folds"]["1"]["splits"] == {"train": 21, "val": 7, "test": 7}
    assert rep["iemocap"]["folds"]["1"]["speakers"] == {"train": 6, "val": 2, "test": 2}
    assert {s["reason"].split(" for ")[0] for s in rep["iemocap"]["skipped"]} >= {"no category line"}
    assert rep["ravdess"]["excluded_by_raw_label"]["02"] == {"maps_to": "calm", "count": 16}
    assert set(rep["ravdess"]["excluded_by_raw_label"]) == {"02", "06", "07", "08"}
    assert rep["ravdess"]["ignored"]["song files (vocal channel 02)"] == 1
    assert rep["ravdess"]["folds"]["1"]["labels"] == {"angry": 16, "happy": 16, "neutral": 16, "sad": 16}

    mrep = report["studies"]["multi_corpus"]["corpora"]
    assert mrep["ravdess"]["excluded_by_raw_label"] == {"02": {"maps_to": "calm", "count": 16}}
    assert mrep["ravdess"]["folds"]["1"]["splits"] == {"train": 56, "val": 28, "test": 28}
    tess = [r for r in multi if r.corpus == "tess"]
    assert {r.emotion for r in tess if r.raw_label == "ps"} == {"surprise"}
    for split in ("train", "val", "test"):  # held-out words: both speakers everywhere, exempt from leakage
        assert {r.speaker for r in tess if r.split == split} == {"OAF", "YAF"}
    assert speaker_leaks(multi, exempt=["tess"]) == []
    for study in report["studies"].values():  # every file is accounted for exactly once
        for c in study["corpora"].values():
            assert c["files_found"] == c["readable"] + len(c["skipped"])
            assert c["readable"] == (c["duplicates_dropped"] + c["kept"]
                                     + sum(e["count"] for e in c["excluded_by_raw_label"].values()))
            for f in c["folds"].values():
                assert c["kept"] == f["unassigned"] + sum(f["splits"].values())
                assert sum(f["splits"].values()) == sum(f["labels"].values())
    json.dumps(report)  # JSON-able as it stands


def test_duplicates_keep_agreeing_copy_and_drop_conflicting_pair(tree):
    manifests, report = build(tree)
    ids = {r.utt_id for r in manifests["multi_corpus"][1]}
    assert "crema_d/1001_IWW_SAD_LO" in ids and "crema_d/1001_IWW_SAD_MD" not in ids
    assert not {"crema_d/1002_TIE_ANG_HI", "crema_d/1002_TIE_HAP_HI"} & ids
    groups = {tuple(g["utt_ids"]): g for g in report["studies"]["multi_corpus"]["duplicate_groups"]}
    assert set(groups) == {("crema_d/1001_IWW_SAD_LO", "crema_d/1001_IWW_SAD_MD"),
                           ("crema_d/1002_TIE_ANG_HI", "crema_d/1002_TIE_HAP_HI")}
    conflict = groups[("crema_d/1002_TIE_ANG_HI", "crema_d/1002_TIE_HAP_HI")]
    assert conflict["labels"] == ["angry", "happy"] and conflict["action"].startswith("dropped all")
    assert groups[("crema_d/1001_IWW_SAD_LO", "crema_d/1001_IWW_SAD_MD")]["action"] == "kept crema_d/1001_IWW_SAD_LO"
    assert report["studies"]["multi_corpus"]["corpora"]["crema_d"]["duplicates_dropped"] == 3


def test_each_corpus_scanned_once(tree, monkeypatch):
    calls = Counter()
    real = metadata.scan_corpus

    def counting(name, cfg, root):
        calls[name] += 1
        return real(name, cfg, root)

    monkeypatch.setattr(metadata, "scan_corpus", counting)
    build(tree)
    assert calls == {"iemocap": 1, "ravdess": 1, "crema_d": 1, "tess": 1}


def test_label_without_source_warns(tree, caplog):
    def five_class(d):
        d["studies"]["cross_corpus"]["labels"].append("frustrated")

    with caplog.at_level(logging.WARNING, logger="ser.data.metadata"):
        manifests, report = build(tree, five_class)
    assert "RAVDESS has no frustrated class" in caplog.text
    assert report["studies"]["cross_corpus"]["corpora"]["ravdess"]["missing_labels"] == ["RAVDESS has no frustrated class"]
    assert Counter(r.emotion for r in manifests["cross_corpus"][1] if r.corpus == "iemocap")["frustrated"] == 5

    def typo(d):
        d["studies"]["cross_corpus"]["labels"].append("angy")

    with pytest.raises(MetadataError, match=r"label\(s\) \['angy'\] have no clips"):
        build(tree, typo)


def test_speaker_leakage_names_the_speaker(tmp_path, tree):
    # a generic corpus whose speaker s2 recorded in two sessions: a session split leaks him
    root = tmp_path / "mine"
    lines = ["path,speaker,emotion,session"]
    for i, (spk, sess) in enumerate([("s1", 1), ("s2", 1), ("s2", 2), ("s3", 2)]):
        write_wav(root / f"c{i}.wav")
        lines.append(f"c{i}.wav,{spk},{'sad' if i % 2 else 'angry'},{sess}")
    (root / "meta.csv").write_text("\n".join(lines) + "\n")

    def add_csv(d):
        d["corpora"]["mine"] = {"source": "local", "path": str(root), "adapter": "csv", "csv": "meta.csv"}
        d["studies"]["multi_corpus"] = {"labels": ["angry", "sad"], "corpora": ["mine"]}
        d["splits"]["multi_corpus"] = {"mine": {"protocol": "sessions", "train": ["1"], "test": ["2"]}}

    with pytest.raises(ManifestError, match=r"speaker leakage: mine speaker 's2' is in splits \['test', 'train'\]"):
        build(tree, add_csv)


def test_outputs_round_trip(tree, tmp_path):
    manifests, report = build(tree)
    write_outputs(manifests, report, tmp_path / "manifests", tmp_path / "reports" / "metadata.json")
    for study, folds in manifests.items():
        for fold, rows in folds.items():
            assert read_manifest(tmp_path / "manifests" / study / f"f{fold}.csv") == rows
    assert json.loads((tmp_path / "reports" / "metadata.json").read_text()) == report


def test_corpus_roots_prefer_verify_report(tmp_path):
    params = parse_params(params_dict("elsewhere"))
    report = tmp_path / "verify.json"
    report.write_text(json.dumps({"corpora": {"ravdess": {"root": "data/raw/ravdess", "files": 1440}}}))
    roots = corpus_roots(params, report)
    assert roots["ravdess"] == Path("data/raw/ravdess")
    assert roots["tess"] == Path("elsewhere/raw/tess")  # not in the report: corpora.tess.path
    with pytest.raises(MetadataError, match="run `dvc repro download-verify`"):
        corpus_roots(params, tmp_path / "missing.json")


def test_file_sha1_reads_in_chunks(tmp_path):
    data = os.urandom((1 << 20) * 2 + 123)  # crosses chunk boundaries
    (tmp_path / "big.bin").write_bytes(data)
    assert file_sha1(tmp_path / "big.bin") == hashlib.sha1(data).hexdigest()


def test_stage_script_end_to_end(tree, tmp_path):
    # run from the tree's base with relative roots: manifests keep relative paths
    data = params_dict("not/here")  # corpora.*.path wrong on purpose: roots come from the verify report
    work = tmp_path
    (work / "params.yaml").write_text(yaml.safe_dump(data))
    rel = Path(os.path.relpath(tree, work))
    (work / "verify.json").write_text(json.dumps(
        {"corpora": {c: {"root": str(rel / "raw" / c)} for c in ("iemocap", "ravdess", "crema_d", "tess")}}))
    proc = subprocess.run(
        [sys.executable, str(REPO / "stages" / "build_metadata.py"), "--verify-report", "verify.json",
         "--params", "params.yaml", "--out-dir", "out/manifests", "--report", "out/reports/metadata.json"],
        cwd=work, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "study multi_corpus" in proc.stderr and "wrote out/manifests/cross_corpus/f1.csv" in proc.stderr
    rows = read_manifest(work / "out" / "manifests" / "cross_corpus" / "f1.csv")
    assert rows and all(not Path(r.path).is_absolute() and (work / r.path).is_file() for r in rows)
    report = json.loads((work / "out" / "reports" / "metadata.json").read_text())
    assert report["studies"]["cross_corpus"]["clips"] == len(rows)

    (work / "verify.json").write_text(json.dumps({"corpora": {}}))  # falls back to corpora.*.path: absent
    proc = subprocess.run([sys.executable, str(REPO / "stages" / "build_metadata.py"), "--verify-report",
                           "verify.json", "--out-dir", "o2", "--report", "o2.json"],
                          cwd=work, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "IEMOCAP expected at not/here/raw/iemocap" in proc.stderr


def test_target_speakers_never_become_training_data(tree, caplog):
    """A target actor missing from every list is left out, not used as labeled training data."""
    def forget_actor_8(d):
        d["splits"]["cross_corpus"]["ravdess"] = {"protocol": "speakers", "adapt": ["1-4"], "test": ["5-7"]}

    with caplog.at_level(logging.WARNING):
        manifests, report = build(tree, forget_actor_8)
    ravdess = [r for r in manifests["cross_corpus"][1] if r.corpus == "ravdess"]
    assert {r.split for r in ravdess} == {"adapt", "test"}
    assert "08" not in {r.speaker for r in ravdess}
    assert report["studies"]["cross_corpus"]["corpora"]["ravdess"]["folds"]["1"]["unassigned"] > 0
    assert "in no split" in caplog.text


def test_training_on_target_labels_needs_explicit_consent(tree):
    from ser.config import ParamsError

    def train_on_target(d):
        d["splits"]["cross_corpus"]["ravdess"] = {"protocol": "speakers", "train": ["1-2"], "adapt": ["3-4"],
                                                  "test": ["5-8"]}
    with pytest.raises(ParamsError, match=r"train_on_target"):
        build(tree, train_on_target)

    def consent(d):
        train_on_target(d)
        d["studies"]["cross_corpus"]["train_on_target"] = True
    manifests, _ = build(tree, consent)
    assert {r.speaker for r in manifests["cross_corpus"][1] if r.corpus == "ravdess" and r.split == "train"} \
        == {"01", "02"}


def test_summary_says_a_label_mapped_to_nothing_was_dropped_by_the_label_map(caplog):
    from ser.data.metadata import _log_summary

    corpus = {"files_found": 3, "skipped": [], "duplicates_dropped": 0, "kept": 1,
              "folds": {"1": {"unassigned": 0, "splits": {"train": 1}}},
              "excluded_by_raw_label": {"xxx": {"maps_to": "", "count": 2}}}
    with caplog.at_level("INFO", logger="ser.data.metadata"):
        _log_summary("s", {"labels": ["a", "b"], "clips": 1, "n_folds": 1, "corpora": {"c": corpus}})
    assert "xxx (dropped by label_map) x2" in caplog.text and "unmapped" not in caplog.text


def test_fold_protocols_give_one_manifest_per_fold(tree, tmp_path):
    """loso: 5 folds, each speaker-disjoint, every session tested once; the fixed RAVDESS target
    split repeats in every fold; the folds are written as <study>/f<k>.csv."""
    def loso(d):
        d["splits"]["cross_corpus"]["iemocap"] = {"protocol": "loso"}
        d["splits"]["multi_corpus"] = {"crema_d": {"protocol": "speaker_folds", "folds": 3},
                                       "ravdess": {"protocol": "speaker_folds", "folds": 3},
                                       "tess": {"protocol": "held_out_words", "folds": 3}}
    manifests, report = build(tree, loso)
    cross = manifests["cross_corpus"]
    assert sorted(cross) == [1, 2, 3, 4, 5] and report["studies"]["cross_corpus"]["n_folds"] == 5
    tested = []
    for fold, rows in cross.items():
        assert not speaker_leaks(rows)
        tested += sorted({r.session for r in rows if r.corpus == "iemocap" and r.split == "test"})
        assert {r.utt_id: r.split for r in rows if r.corpus == "ravdess"} == \
               {r.utt_id: r.split for r in cross[1] if r.corpus == "ravdess"}
    assert tested == ["1", "2", "3", "4", "5"]
    assert sorted(manifests["multi_corpus"]) == [1, 2, 3]
    multi_tested = [r.utt_id for rows in manifests["multi_corpus"].values() for r in rows if r.split == "test"]
    assert len(multi_tested) == len(set(multi_tested)) == len(manifests["multi_corpus"][1])  # each clip tested once
    write_outputs(manifests, report, tmp_path / "m", tmp_path / "r.json")
    assert sorted(p.name for p in (tmp_path / "m" / "cross_corpus").iterdir()) == [f"f{k}.csv" for k in range(1, 6)]


def test_fold_protocols_of_one_study_must_agree(tree):
    def mismatch(d):
        d["splits"]["multi_corpus"]["crema_d"] = {"protocol": "speaker_folds", "folds": 3}
        d["splits"]["multi_corpus"]["ravdess"] = {"protocol": "speaker_folds", "folds": 4}
    with pytest.raises(MetadataError, match=r"splits\.multi_corpus: the fold protocols of one study must have the "
                                            r"same number of folds, got \{'crema_d': 3, 'ravdess': 4\}"):
        build(tree, mismatch)


def test_matrix_design_trains_on_each_corpus_and_tests_on_all(tree):
    def matrix(d):
        d["studies"]["mx"] = {"design": "matrix", "labels": ["angry", "happy", "neutral", "sad"],
                              "corpora": ["iemocap", "ravdess"]}
        d["splits"]["mx"] = {"iemocap": {"protocol": "sessions", "train": ["1", "2", "3"], "val": ["4"],
                                         "test": ["5"]},
                             "ravdess": {"protocol": "speakers", "val": ["3-4"], "test": ["5-8"]}}
    manifests, report = build(tree, matrix)
    mx = manifests["mx"]
    assert sorted(mx) == [1, 2]
    trained = {f: {r.corpus for r in rows if r.split in ("train", "val")} for f, rows in mx.items()}
    assert trained == {1: {"iemocap"}, 2: {"ravdess"}}
    tests = [{r.utt_id for r in rows if r.split == "test"} for rows in mx.values()]
    assert tests[0] == tests[1] and {u.split("/")[0] for u in tests[0]} == {"iemocap", "ravdess"}
