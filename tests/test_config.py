"""Strict params loading: every profile loads; bad files fail naming the key."""
import copy
import json
import re
import shutil
from pathlib import Path

import pytest
import yaml

from ser.config import ParamsError, load_params, parse_params

ROOT = Path(__file__).resolve().parents[1]
PARAMS = ROOT / "params.yaml"


def _default() -> dict:
    return yaml.safe_load((ROOT / "params.yaml").read_text())


@pytest.mark.parametrize("path", ["params.yaml", "profiles/paper.yaml"])
def test_profiles_load(path):
    params = load_params(ROOT / path)
    assert {"cross_corpus", "multi_corpus", "corpus_matrix"} <= set(params.studies)
    assert params.studies["corpus_matrix"].design == "matrix"
    assert params.splits["cross_corpus"]["iemocap"].protocol == "loso"
    assert params.studies["cross_corpus"].labels == ("angry", "happy", "neutral", "sad")
    assert params.models["dann"].objective == "dann"


def test_profiles_share_keys():
    """The paper profile is the demo profile with other values, never other keys (it adds studies and models)."""
    def keys(d, prefix=""):
        out = set()
        for k, v in d.items():
            out.add(prefix + str(k))
            if isinstance(v, dict) and k not in ("corpora", "front_end"):  # mappings whose entries differ
                out |= keys(v, f"{prefix}{k}.")
        return out
    paper = yaml.safe_load((ROOT / "profiles/paper.yaml").read_text())
    demo = _default()
    own = ("models.", "studies.", "splits.")
    assert {k for k in keys(paper) if not k.startswith(own)} == {k for k in keys(demo) if not k.startswith(own)}
    assert set(demo["studies"]) <= set(paper["studies"]) and set(demo["splits"]) <= set(paper["splits"])


def test_unknown_key_is_named():
    data = _default()
    data["models"]["baseline"]["optim"]["learning_rate"] = 0.1
    with pytest.raises(ParamsError, match=r"unknown key models\.baseline\.optim\.learning_rate"):
        parse_params(data)


def test_unknown_top_level_key(tmp_path):
    data = _default()
    data["lamda_domain"] = 0.3
    p = tmp_path / "params.yaml"
    p.write_text(yaml.safe_dump(data))
    with pytest.raises(ParamsError, match=rf"{p}.*unknown key lamda_domain"):
        load_params(p)


def test_missing_key_is_named():
    data = _default()
    del data["models"]["dann"]["epochs"]
    with pytest.raises(ParamsError, match=r"missing key models\.dann\.epochs"):
        parse_params(data)


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d.update(lambda_domain=-0.1), "lambda_domain must be >= 0"),
    (lambda d: d.update(max_alpha=1.5), r"max_alpha must be in \[0, 1\]"),
    (lambda d: d["models"]["baseline"].update(objective="mmd"), r"models\.baseline\.objective: 'mmd' is not one of"),
    (lambda d: d["models"]["baseline"].update(study="nope"), "unknown study 'nope'"),
    (lambda d: d["models"]["qlora"].update(objective="dann"), "needs a study with a target corpus"),
    (lambda d: d["models"]["baseline"].update(epochs="many"), r"models\.baseline\.epochs: expected an integer"),
    (lambda d: d["studies"]["cross_corpus"].update(labels=["sad", "sad"]), "distinct"),
    (lambda d: d["splits"]["cross_corpus"].pop("ravdess"), r"splits\.cross_corpus\.ravdess: missing split protocol"),
    (lambda d: d["splits"]["cross_corpus"]["iemocap"].update(folds=3), "folds applies to protocols speaker_folds"),
    (lambda d: d.update(seed=1), r"unknown key seed: seed is now `seeds: \[<int>, \.\.\.\]`"),
    (lambda d: d.update(fold=1), r"unknown key fold: .*`folds: \[1, 2, \.\.\.\]`"),
    (lambda d: d["splits"]["cross_corpus"]["iemocap"].update(fold=1),
     r"unknown key splits\.cross_corpus\.iemocap\.fold: the fold is no longer chosen in the split"),
    (lambda d: d.update(seeds=[]), "seeds must be a non-empty list"),
    (lambda d: d.update(folds=[1, 1]), "folds must be a non-empty list of distinct"),
    (lambda d: d.update(folds=[0, 1]), "folds are numbered from 1"),
    (lambda d: d["studies"]["corpus_matrix"].update(source="iemocap"), "design 'matrix' .* takes no source"),
    (lambda d: d["splits"]["corpus_matrix"].update(iemocap={"protocol": "loso"}),
     r"splits\.corpus_matrix\.iemocap: a 'matrix' study runs one fold per training corpus"),
    (lambda d: d["splits"]["corpus_matrix"]["ravdess"].update(val=[]),
     r"splits\.corpus_matrix\.ravdess: a 'matrix' study trains on every corpus .* needs a val split"),
    (lambda d: d["corpora"]["ravdess"].update(source="download"), "needs a 'url'"),
])
def test_bad_values_fail(mutate, message):
    data = _default()
    mutate(data)
    with pytest.raises(ParamsError, match=message):
        parse_params(data)


def test_numeric_strings_and_ids():
    data = _default()
    data["models"]["baseline"]["optim"]["lr"] = "1e-3"  # PyYAML reads this as a string
    data["splits"]["cross_corpus"]["iemocap"]["train"] = [1, 2, 3]
    p = parse_params(data)
    assert p.models["baseline"].optim.lr == pytest.approx(1e-3)
    assert p.splits["cross_corpus"]["iemocap"].train == ("1", "2", "3")


def test_params_are_frozen():
    p = load_params(ROOT / "params.yaml")
    with pytest.raises(Exception):
        p.seed = 3  # type: ignore[misc]


def _cross_only(data: dict) -> dict:
    """The demo params reduced to the cross-corpus study (the multi-corpus study is optional)."""
    data = copy.deepcopy(data)
    for study in ("multi_corpus", "corpus_matrix"):
        data["studies"].pop(study)
        data["splits"].pop(study)
    data["models"] = {k: m for k, m in data["models"].items() if m["study"] == "cross_corpus"}
    return data


def test_studies_are_optional():
    data = _cross_only(yaml.safe_load(PARAMS.read_text()))
    params = parse_params(data)
    assert set(params.studies) == {"cross_corpus"}


@pytest.mark.parametrize("edit, match", [
    (lambda d: d["splits"]["cross_corpus"].update(iemocap={"protocol": "sessions", "train": ["1", "2"], "test": ["5"]}),
     r"no corpus .* has val data"),
    (lambda d: d["splits"]["cross_corpus"]["ravdess"].update(adapt=[]), r"need unlabeled target data"),
    (lambda d: d["splits"]["cross_corpus"]["ravdess"].update(val=["13"]), r"train_on_target"),
    (lambda d: d["splits"]["cross_corpus"].update(
        iemocap={"protocol": "sessions", "train": ["1", "2", "3"], "val": ["4"]},
        ravdess={"protocol": "speakers", "adapt": ["1-12"]}), r"no corpus .* has test data"),
])
def test_unworkable_split_combinations_fail_at_load(edit, match):
    data = _cross_only(yaml.safe_load(PARAMS.read_text()))
    edit(data)
    with pytest.raises(ParamsError, match=match):
        parse_params(data)


@pytest.mark.parametrize("entry, match", [
    ({"protocol": "speaker_folds", "folds": 1}, r"folds must be >= 2, got 1"),
    ({"protocol": "speaker_folds", "folds": 2}, r"folds: 2 has no fold left for training.*val_speakers"),
    ({"protocol": "speaker_folds", "val_speakers": -1}, r"val_speakers must be >= 0"),
    ({"protocol": "speaker_folds", "folds": "six"}, r"folds: expected an integer"),
    ({"protocol": "speakers", "folds": 3}, r"folds applies to protocols speaker_folds and held_out_words"),
])
def test_speaker_folds_params_are_checked(entry, match):
    data = _default()
    data["splits"]["multi_corpus"]["ravdess"] = entry
    with pytest.raises(ParamsError, match=r"splits\.multi_corpus\.ravdess.*" + match):
        parse_params(data)


def test_speaker_folds_params_load_and_provide_train_val_test():
    data = _default()
    data["splits"]["multi_corpus"]["ravdess"] = {"protocol": "speaker_folds", "seed": 1}
    data["splits"]["multi_corpus"]["crema_d"] = {"protocol": "speaker_folds", "folds": 2, "val_speakers": 8}
    splits = parse_params(data).splits["multi_corpus"]
    assert (splits["ravdess"].k, splits["ravdess"].val_speakers) == (6, 0)  # RAVDESS's EmoBox default
    assert splits["crema_d"].k == 2
    assert splits["ravdess"].provides() == splits["crema_d"].provides(False) == {"train", "val", "test"}


def test_speaker_folds_on_a_target_corpus_is_rejected():
    """Folds train on the corpus, so a cross-corpus target may not use them unless the study says so."""
    data = _cross_only(yaml.safe_load(PARAMS.read_text()))
    data["splits"]["cross_corpus"]["ravdess"] = {"protocol": "speaker_folds"}
    with pytest.raises(ParamsError, match=r"splits\.cross_corpus\.ravdess: .*target corpus.*train_on_target"):
        parse_params(data)


def test_source_without_test_speakers_is_valid():
    """Training on a corpus that has no test speakers is normal: only its in-domain evaluation is skipped."""
    data = _cross_only(yaml.safe_load(PARAMS.read_text()))
    data["splits"]["cross_corpus"]["iemocap"] = {"protocol": "sessions", "train": ["1", "2", "3", "5"], "val": ["4"]}
    parse_params(data)


# --------------------------------------------------------------------------- model params
def _set(path: str, value):
    """An edit of the demo params: set the dotted key `path` (creating mappings) to `value`."""
    def edit(d):
        *parents, last = path.split(".")
        for key in parents:
            d = d.setdefault(key, {})
        d[last] = value
    return edit


@pytest.mark.parametrize("edit, match", [
    (_set("models.baseline.crnn.dropout", 1.5), r"models\.baseline\.crnn: dropout must be in \[0, 1\), got 1\.5"),
    (_set("models.dann.crnn.dropout", -0.1), r"models\.dann\.crnn: dropout must be in \[0, 1\)"),
    (_set("models.baseline.crnn.channels", [32, 0]), r"models\.baseline\.crnn: channels must be"),
    (_set("models.baseline.crnn.channels", []), r"models\.baseline\.crnn: channels must be"),
    (_set("models.baseline.crnn.lstm_hidden", 0), r"models\.baseline\.crnn: lstm_hidden must be >= 1"),
    (_set("models.baseline.arch", "cnn"), r"models\.baseline\.arch: 'cnn' is not one of \['crnn', 'encoder'"),
    (_set("models.qlora.encoder.lora.dropout", 1.0), r"models\.qlora\.encoder\.lora: lora\.dropout must be in"),
    (_set("models.qlora.encoder.lora.target_modules", []), r"models\.qlora\.encoder\.lora: .*target_modules"),
    (_set("models.finetune.encoder.head_hidden", 0), r"models\.finetune\.encoder: head_hidden must be >= 1"),
    (_set("models.finetune.encoder.max_seconds", 0),
     r"models\.finetune\.encoder: max_seconds must be > 0"),
    (_set("models.finetune.encoder.chunk_seconds", 0),
     r"models\.finetune\.encoder: chunk_seconds must be > 0"),
    # regimes: a lora: section goes with regime lora / qlora and only with them; embeddings need frozen
    (_set("models.finetune.encoder.lora", {"r": 4}), r"models\.finetune\.encoder: regime full trains no adapters"),
    (lambda d: d["models"]["qlora"]["encoder"].pop("lora"),
     r"models\.qlora\.encoder: regime qlora needs a lora: section"),
    (_set("models.qlora.encoder.regime", "nf4"),
     r"models\.qlora\.encoder\.regime: 'nf4' is not one of \['frozen', 'full', 'lora', 'qlora'\]"),
    (_set("models.finetune.encoder.layers", "first"), r"models\.finetune\.encoder: layers must be last, weighted"),
    (_set("models.finetune.input", "embeddings"),
     r"models\.finetune: input 'embeddings' .* needs arch encoder with encoder\.regime: frozen"),
    (_set("models.finetune.optim.grad_clip", 0), r"models\.finetune\.optim: grad_clip must be > 0"),
    (_set("models.finetune.optim.weight_decay", -0.01), r"models\.finetune\.optim: weight_decay must be >= 0"),
    (_set("models.baseline.balance", "weighted"), r"models\.baseline\.balance: 'weighted' is not one of"),
    (_set("models.baseline.patience", 0), r"models\.baseline: patience must be >= 1"),
    (_set("models.finetune.spec_augment", {"time_masks": 2}), r"models\.finetune: spec_augment masks log-mels"),
    (_set("models.baseline.spec_augment", {"time_width": -1}),
     r"models\.baseline\.spec_augment: time_width must be >= 0"),
    (_set("models.baseline.spec_augment", {"freq_mask": 2}), r"unknown key models\.baseline\.spec_augment\.freq_mask"),
])
def test_bad_model_params_fail_at_load(edit, match):
    data = yaml.safe_load(PARAMS.read_text())
    edit(data)
    with pytest.raises(ParamsError, match=match):
        parse_params(data)


def test_training_options_load():
    data = yaml.safe_load(PARAMS.read_text())
    data["models"]["baseline"].update(balance="sampler", patience=3,
                                      spec_augment={"freq_masks": 1, "freq_width": 0, "time_width": 12})
    mp = parse_params(data).models["baseline"]
    assert mp.balance == "sampler" and mp.patience == 3
    assert (mp.spec_augment.freq_masks, mp.spec_augment.freq_width, mp.spec_augment.time_masks,
            mp.spec_augment.time_width) == (1, 0, 2, 12)
    for key in ("balance", "patience", "spec_augment"):  # the defaults, whatever params.yaml sets
        data["models"]["dann"].pop(key, None)
    default = parse_params(data).models["dann"]
    assert default.balance == "loss" and default.patience is None and default.spec_augment is None


def test_arch_choices_follow_the_model_registry():
    from ser.config import ARCHS
    from ser.models import MODELS
    from ser.train.learners import LEARNERS, TorchLearner
    assert set(MODELS) <= set(ARCHS), "every registered model must be a valid `arch` in params.yaml"
    assert set(LEARNERS) == set(ARCHS), "every `arch` of params.yaml needs exactly one learner"
    assert {a for a, learner in LEARNERS.items() if isinstance(learner, TorchLearner)} == set(MODELS)


@pytest.mark.parametrize("edit, match", [
    (lambda m: m["baseline"].update(input="waves", spec_augment=None), r"models.baseline: arch 'crnn' reads mels"),
    (lambda m: m["baseline"].pop("crnn"), r"models.baseline: arch 'crnn' needs a 'crnn:' section"),
    (lambda m: m["qlora"].update(input="mels"), r"models.qlora: arch 'encoder' reads waves"),
])
def test_arch_input_and_section_checked_at_load(edit, match):
    data = yaml.safe_load(PARAMS.read_text())
    edit(data["models"])
    with pytest.raises(ParamsError, match=match):
        parse_params(data)


def test_store_plan_lists_the_stores_the_models_read():
    params = load_params(ROOT / "params.yaml")
    plan = params.store_plan()
    assert set(plan) == {"mels", "waves", "embeddings", *params.features.functionals}
    for kind, studies in plan.items():
        readers = {m.study for m in params.models.values() if m.input == kind}
        if kind == "waves":  # the embeddings stores are computed from the waveform store
            readers |= {m.study for m in params.models.values() if m.input == "embeddings"}
        assert studies == sorted(readers)
    assert "multi_corpus" not in plan["mels"]  # no mel model in the multi-corpus study: its store is not built
    data = _default()
    data["models"] = {"baseline": data["models"]["baseline"]}
    data["fusions"] = {}
    assert parse_params(data).store_plan() == {"mels": ["cross_corpus"], "waves": [], "embeddings": [],
                                               "egemaps": [], "ge2e": []}


# --------------------------------------------------------------------------- the wav2vec2-only schema
OLD_W2V_MODEL = {"study": "cross_corpus", "arch": "wav2vec2", "objective": "ce", "input": "waves", "epochs": 1,
                 "batch_size": 2, "optim": {},
                 "wav2vec2": {"backbone": "random:tiny", "quantize": "nf4", "lora": {"r": 4}}}


@pytest.mark.parametrize("edit, match", [
    # a whole model of the old schema: the arch is named first
    (lambda m: None, r"models\.old\.arch: 'wav2vec2' is now `arch: encoder`"),
    (lambda m: m.update(arch="encoder"),
     r"unknown key models\.old\.wav2vec2: the section is now `encoder:`.*random:wav2vec2-tiny"),
    (lambda m: m.update(arch="encoder", encoder=m.pop("wav2vec2")),
     r"unknown key models\.old\.encoder\.quantize: choose the regime instead, `regime: qlora`"),
    # only the arch left over: an encoder: section already in place
    (lambda m: m.update(encoder={"backbone": "random:wav2vec2-tiny"}) or m.pop("wav2vec2"),
     r"models\.old\.arch: 'wav2vec2' is now `arch: encoder`"),
])
def test_old_encoder_keys_name_their_replacement(edit, match, tmp_path):
    data = _default()
    model = copy.deepcopy(OLD_W2V_MODEL)
    edit(model)
    data["models"]["old"] = model
    with pytest.raises(ParamsError, match=match):
        parse_params(data)
    path = tmp_path / "params.yaml"   # the file path prefixes the same message
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ParamsError, match=re.escape(str(path)) + ": .*" + match):
        load_params(path)


def test_migrated_old_model_loads():
    """The model of the old schema, with the renames its errors name applied, loads."""
    data = _default()
    model = copy.deepcopy(OLD_W2V_MODEL)
    enc = model.pop("wav2vec2")
    enc.pop("quantize")
    model.update(arch="encoder", encoder={**enc, "backbone": "random:wav2vec2-tiny", "regime": "qlora"})
    data["models"]["old"] = model
    mp = parse_params(data).models["old"]
    assert (mp.arch, mp.encoder.backbone, mp.encoder.regime, mp.encoder.lora.r) == \
        ("encoder", "random:wav2vec2-tiny", "qlora", 4)
    assert (mp.encoder.layers, mp.encoder.projection) == ("last", 256)   # the defaults


def test_run_spec_holds_what_a_model_reads_and_bind_refuses_stale_params(tmp_path):
    """The run spec scopes params to models: lambda_domain reaches DANN models only, `train` torch models
    only; train@/evaluate@ refuse a bind file whose spec no longer matches params.yaml."""
    import dataclasses

    from ser.runs import BindError, check_spec, write_bind

    params = load_params(ROOT / "params.yaml")
    moved = dataclasses.replace(params, lambda_domain=0.3,
                                train=dataclasses.replace(params.train, threads=3))
    for name, mp in params.models.items():
        spec, other = params.run_spec(name), moved.run_spec(name)
        assert spec["model"]["study"] == mp.study and spec["study"]["labels"] == list(params.study(mp.study).labels)
        assert ("dann" in spec) == (mp.objective == "dann") and ("train" in spec) == (mp.arch != "classical")
        if mp.arch == "classical":
            assert spec == other, name  # neither threads nor lambda reach a classical model
        else:
            assert spec != other and other["train"]["threads"] == 3, name
    assert params.run_spec("baseline") == moved.run_spec("baseline") | {"train": params.run_spec("baseline")["train"]}
    store = tmp_path / "store"
    store.mkdir()
    (store / "meta.json").write_text('{"folds": [1, 2], "content_sha256": "abc"}')
    bind = write_bind("dann", "mels", "cross_corpus", store, tmp_path / "dann.json", spec=params.run_spec("dann"))
    check_spec(bind, params.run_spec("dann"), tmp_path / "dann.json")
    with pytest.raises(BindError, match=r"dann.lambda_domain: 0.5 in the bind file, 0.3 in params.yaml"):
        check_spec(bind, moved.run_spec("dann"), tmp_path / "dann.json")
    with pytest.raises(BindError, match="records no run spec"):
        check_spec({**bind, "spec": None}, params.run_spec("dann"), tmp_path / "dann.json")


def test_write_binds_writes_one_file_per_model_and_nothing_else(tmp_path):
    """The bind stage: data/bind/<model>.json for every model, a dropped model's file removed; a missing
    store fails naming it before any file is written; an unchanged model's file keeps its bytes."""
    import dataclasses

    from ser.runs import BindError, write_binds

    params = load_params(ROOT / "params.yaml")
    features, out = tmp_path / "features", tmp_path / "bind"
    for mp in params.models.values():
        store = features / mp.input / mp.study / (mp.store_key or "")
        store.mkdir(parents=True, exist_ok=True)
        (store / "meta.json").write_text(f'{{"folds": [1, 2], "content_sha256": "{mp.input}"}}')
    out.mkdir()
    (out / "gone.json").write_text("{}")
    write_binds(params, features, out)
    assert sorted(p.stem for p in out.glob("*.json")) == sorted(params.models)
    before = {p.name: p.read_bytes() for p in out.glob("*.json")}
    write_binds(dataclasses.replace(params, lambda_domain=0.3), features, out)
    changed = {p.name for p in out.glob("*.json") if p.read_bytes() != before[p.name]}
    assert changed == {f"{n}.json" for n, mp in params.models.items() if mp.objective == "dann"}
    # A store rebuilt with the same values but another stamp (e.g. the embedding code changed): the
    # models reading it get a new bind file, since their meta.json copies the store's meta.
    probe = next(n for n, mp in params.models.items() if mp.input == "embeddings")
    mp = params.models[probe]
    meta_path = features / mp.input / mp.study / mp.store_key / "meta.json"
    write_binds(params, features, out)
    before = {p.name: p.read_bytes() for p in out.glob("*.json")}
    meta_path.write_text(json.dumps({**json.loads(meta_path.read_text()), "stamp": {"code": "new"}}))
    write_binds(params, features, out)
    changed = {p.name for p in out.glob("*.json") if p.read_bytes() != before[p.name]}
    assert changed == {f"{n}.json" for n, m in params.models.items()
                       if (m.input, m.study, m.store_key) == (mp.input, mp.study, mp.store_key)}
    shutil.rmtree(features / "mels")
    with pytest.raises(BindError, match=r"mels/cross_corpus/meta.json: missing \(model 'baseline'"):
        write_binds(params, features, tmp_path / "fresh")
    assert not (tmp_path / "fresh").exists()


def test_runtime_section_holds_speed_knobs_no_stage_depends_on():
    import yaml

    params = load_params(ROOT / "params.yaml")
    assert params.runtime.workers >= 1 and params.runtime.num_workers >= 0
    for section, key in (("features", "workers"), ("train", "num_workers")):
        data = yaml.safe_load((ROOT / "params.yaml").read_text())
        data[section][key] = 2
        with pytest.raises(ParamsError, match=rf"{section}.{key}: it is now runtime.{key}"):
            parse_params(data)
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    for name, stage in stages.items():
        keys = [p if isinstance(p, str) else next(iter(p)) for p in stage.get("do", stage).get("params", [])]
        assert not [k for k in keys if k.split(".")[0] == "runtime"], f"stage {name} depends on runtime"


@pytest.mark.parametrize("fusions, match", [
    ({"f": {"members": ["baseline"]}}, r"fusions\.f: members: name two or more distinct models"),
    ({"f": {"members": ["baseline", "baseline"]}}, r"fusions\.f: members: name two or more distinct"),
    ({"f": {"members": ["baseline", "nope"]}}, r"fusions\.f\.members: \['nope'\] not in `models`"),
    ({"baseline": {"members": ["dann", "egemaps_mlp"]}}, r"fusions\.baseline: 'baseline' is also a model's name"),
    ({"f": {"members": ["baseline", "qlora"]}}, r"fusions\.f\.members: models of different studies"),
    ({"f": {"members": ["baseline", "egemaps_svm"]}}, r"\['egemaps_svm'\] score with an SVM's decision values"),
    ({"f": {"members": ["matrix_logreg", "matrix_logreg2"]}}, r"fusions\.f: study 'corpus_matrix' is a matrix study"),
    ({"f": {"members": ["baseline", "dann"], "weights": [1, 2]}}, r"unknown key fusions\.f\.weights"),
])
def test_bad_fusions_fail_at_load(fusions, match):
    """fusions: two or more distinct models of one (single-design) study that score with probabilities."""
    data = _default()
    data["models"]["matrix_logreg2"] = copy.deepcopy(data["models"]["matrix_logreg"])
    data["fusions"] = fusions
    with pytest.raises(ParamsError, match=match):
        parse_params(data)


def test_fusions_load_and_name_their_study():
    params = load_params(PARAMS)
    assert params.fusions and all(len(f.members) >= 2 for f in params.fusions.values())
    name, fusion = next(iter(params.fusions.items()))
    assert params.study_of(name) == params.models[fusion.members[0]].study
    assert params.models["egemaps_logreg"].scores == "softmax" and params.models["egemaps_svm"].scores == "decision"
    data = _default()
    del data["fusions"]
    assert parse_params(data).fusions == {}
