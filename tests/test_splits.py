"""Split protocols: sessions, loso, speakers (ranges, implicit train), speaker folds, held-out words, all-test."""
from __future__ import annotations

import dataclasses
import logging
import random
from collections import defaultdict

import pytest

from ser.config import SplitParams
from ser.data.manifest import Utterance, speaker_leaks
from ser.data.splits import SplitError, assign_splits, fold_count


def utt(corpus: str, speaker: str, i: int, session: str = "", text: str = "") -> Utterance:
    return Utterance(utt_id=f"{corpus}/{speaker}_{i}", corpus=corpus, speaker=speaker, path=f"{speaker}_{i}.wav",
                     duration_s=1.0, sample_rate=16000, raw_label="neu", session=session, text=text)


def iemocap_rows() -> list[Utterance]:
    return [utt("iemocap", f"Ses{s:02d}{g}", i, session=str(s)) for s in range(1, 6) for g in "FM" for i in range(3)]


def by_split(rows, attr="speaker") -> dict[str, set[str]]:
    out: dict[str, set[str]] = defaultdict(set)
    for r in rows:
        out[r.split].add(getattr(r, attr))
    return dict(out)


def test_sessions_protocol():
    rows = assign_splits(iemocap_rows(), "iemocap",
                         SplitParams(protocol="sessions", train=("1", "2", "03"), val=("4",), test=("5",)))
    assert by_split(rows, "session") == {"train": {"1", "2", "3"}, "val": {"4"}, "test": {"5"}}
    assert by_split(rows)["test"] == {"Ses05F", "Ses05M"}
    assert not speaker_leaks(rows)
    # an omitted train list means every session not listed elsewhere
    rows = assign_splits(iemocap_rows(), "iemocap", SplitParams(protocol="sessions", val=("4",), test=("5",)))
    assert by_split(rows, "session")["train"] == {"1", "2", "3"}


@pytest.mark.parametrize("fold, val, train", [(1, "5", {"2", "3", "4"}), (3, "2", {"1", "4", "5"}),
                                              (5, "4", {"1", "2", "3"})])
def test_loso_previous_session_is_validation(fold, val, train):
    rows = assign_splits(iemocap_rows(), "iemocap", SplitParams(protocol="loso"), fold=fold)
    assert by_split(rows, "session") == {"train": train, "val": {val}, "test": {str(fold)}}


def test_loso_unknown_fold_is_an_error():
    rows = [r for r in iemocap_rows() if r.session != "5"]
    assert fold_count(rows, SplitParams(protocol="loso"), "iemocap") == 4
    with pytest.raises(SplitError, match=r"fold 5 does not exist: iemocap has 4 sessions \(1-4\), so loso has "
                                         r"folds 1-4"):
        assign_splits(rows, "iemocap", SplitParams(protocol="loso"), fold=5)


def test_speakers_ranges_compare_numerically():
    rows = [utt("ravdess", f"{a:02d}", i) for a in range(1, 25) for i in range(2)]
    out = assign_splits(rows, "ravdess", SplitParams(protocol="speakers", adapt=("1-12",), test=("13-24",)))
    groups = by_split(out)
    assert groups["adapt"] == {f"{a:02d}" for a in range(1, 13)}  # "01" matches 1
    assert groups["test"] == {f"{a:02d}" for a in range(13, 25)}
    assert "train" not in groups and "unassigned" not in groups


def test_speakers_omitted_train_is_everyone_else():
    rows = [utt("crema_d", str(a), i) for a in range(1001, 1011) for i in range(2)]
    out = assign_splits(rows, "crema_d",
                        SplitParams(protocol="speakers", val=("1006-1007",), test=("1008-1010",)))
    assert by_split(out) == {"train": {str(a) for a in range(1001, 1006)},
                             "val": {"1006", "1007"}, "test": {"1008", "1009", "1010"}}


def test_speaker_in_two_splits_is_an_error_naming_him():
    rows = [utt("ravdess", f"{a:02d}", 0) for a in range(1, 9)]
    with pytest.raises(SplitError, match=r"splits.multi.ravdess: ravdess speaker 4 is listed in both 'val' and 'test'"):
        assign_splits(rows, "ravdess", SplitParams(protocol="speakers", val=("1-4",), test=("04", "5")),
                      where="splits.multi.ravdess")


def test_missing_listed_speaker_warns_but_empty_split_fails(caplog):
    rows = [utt("ravdess", f"{a:02d}", 0) for a in range(1, 9)]
    with caplog.at_level(logging.WARNING, logger="ser.data.splits"):
        out = assign_splits(rows, "ravdess", SplitParams(protocol="speakers", val=("7", "9-10"), test=("8",)))
    assert "have no clips: 9-10" in caplog.text
    assert by_split(out)["val"] == {"07"}
    with pytest.raises(SplitError, match=r"split 'test' lists speakers 30-31 but none of them has clips"):
        assign_splits(rows, "ravdess", SplitParams(protocol="speakers", test=("30-31",)))


def test_unlisted_speakers_stay_unassigned_when_train_is_explicit(caplog):
    rows = [utt("x", s, 0) for s in ("a", "b", "c", "d")]
    with caplog.at_level(logging.WARNING, logger="ser.data.splits"):
        out = assign_splits(rows, "x", SplitParams(protocol="speakers", train=("A",), test=("b",)))
    assert {r.speaker: r.split for r in out} == {"a": "train", "b": "test", "c": "unassigned", "d": "unassigned"}
    assert "in no split" in caplog.text


def test_bad_range_and_missing_sessions_are_errors():
    rows = [utt("ravdess", "01", 0)]
    with pytest.raises(SplitError, match="range '12-1' is empty"):
        assign_splits(rows, "ravdess", SplitParams(protocol="speakers", test=("12-1",)))
    with pytest.raises(SplitError, match="have no session"):
        assign_splits(rows, "ravdess", SplitParams(protocol="sessions", test=("1",)))


def test_held_out_words_splits_words_not_speakers():
    words = [f"w{i:02d}" for i in range(20)]
    rows = [utt("tess", spk, i, text=w) for spk in ("OAF", "YAF") for i, w in enumerate(words) for _ in range(1)]
    sp = SplitParams(protocol="held_out_words", val_fraction=0.1, test_fraction=0.2, seed=0)
    out = assign_splits(rows, "tess", sp)
    words_in = by_split(out, "text")
    assert (len(words_in["train"]), len(words_in["val"]), len(words_in["test"])) == (14, 2, 4)
    assert not (words_in["train"] & words_in["test"]) and not (words_in["val"] & words_in["test"])
    assert all(spk == {"OAF", "YAF"} for spk in by_split(out).values())  # seen speakers everywhere
    assert assign_splits(rows, "tess", sp) == out  # seeded
    other = assign_splits(rows, "tess", SplitParams(protocol="held_out_words", seed=1))
    assert by_split(other, "text")["test"] != words_in["test"]
    with pytest.raises(SplitError, match="too few"):
        assign_splits(rows[:2], "tess", sp)


def test_all_test():
    rows = [utt("ravdess", f"{a:02d}", 0) for a in range(1, 4)]
    assert {r.split for r in assign_splits(rows, "ravdess", SplitParams(protocol="all_test"))} == {"test"}


# --------------------------------------------------------------------------- fold protocols
def test_loso_over_all_folds_tests_every_session_once():
    tested = []
    for fold in range(1, 6):
        groups = by_split(assign_splits(iemocap_rows(), "iemocap", SplitParams(protocol="loso"), fold=fold), "session")
        assert set(groups) == {"train", "val", "test"}
        assert not (groups["train"] & groups["val"]) and not (groups["test"] & (groups["train"] | groups["val"]))
        tested += sorted(groups["test"])
    assert sorted(tested) == ["1", "2", "3", "4", "5"]


def speaker_rows(n_f: int = 12, n_m: int = 12, clips: int = 2, gender: bool = True) -> list[Utterance]:
    """RAVDESS-like: actor ids 01.., odd male, even female (n_f/n_m of each), `clips` clips each."""
    ids = [a for a in range(1, 2 * max(n_f, n_m) + 1)]
    males = [a for a in ids if a % 2][:n_m]
    females = [a for a in ids if not a % 2][:n_f]
    rows = []
    for a in sorted(males + females):
        g = ("M" if a % 2 else "F") if gender else ""
        rows += [dataclasses.replace(utt("ravdess", f"{a:02d}", i), gender=g) for i in range(clips)]
    return rows


def fold_splits(rows, k, seed=0, **kw) -> list[dict[str, set[str]]]:
    return [by_split(assign_splits(rows, "ravdess", SplitParams(protocol="speaker_folds", folds=k,
                                                                seed=seed, **kw), fold=f))
            for f in range(1, k + 1)]


@pytest.mark.parametrize("k, val_speakers", [(2, 2), (5, 0), (5, 3), (6, 0)])
def test_speaker_folds_test_every_speaker_once_and_never_leak(k, val_speakers):
    rows = speaker_rows()
    splits = fold_splits(rows, k, val_speakers=val_speakers)
    tested = [s for groups in splits for s in groups["test"]]
    assert sorted(tested) == sorted({r.speaker for r in rows})  # each speaker test in exactly one fold
    for f, groups in enumerate(splits, start=1):
        assert set(groups) == {"train", "val", "test"}, f"fold {f}: {groups}"
        train, val, test = groups["train"], groups["val"], groups["test"]
        assert not (train & val) and not (train & test) and not (val & test)
        assert len(test) in (24 // k, -(-24 // k))  # fold sizes differ by at most one speaker
        if val_speakers:
            assert len(val) == val_speakers
        else:  # the fold before the test fold, cyclically (like loso)
            assert val == splits[f - 2]["test"]
    out = assign_splits(rows, "ravdess", SplitParams(protocol="speaker_folds", folds=k,
                                                     val_speakers=val_speakers), fold=1)
    assert not speaker_leaks(out)


def test_speaker_folds_balance_gender():
    gender = {f"{a:02d}": "M" if a % 2 else "F" for a in range(1, 25)}
    for seed in range(4):  # seed 0 alone is balanced even unstratified, by chance
        for groups in fold_splits(speaker_rows(), 6, seed=seed):
            assert sorted(gender[s] for s in groups["test"]) == ["F", "F", "M", "M"], f"seed {seed}"
    # uneven genders (7 F, 5 M in 6 folds): the deal runs on across genders, so every fold still gets 2
    for groups in fold_splits(speaker_rows(n_f=7, n_m=5), 6):
        assert len(groups["test"]) == 2
    # drawn validation speakers alternate genders too
    for groups in fold_splits(speaker_rows(), 2, val_speakers=4):
        assert sorted(gender[s] for s in groups["val"]) == ["F", "F", "M", "M"]


def test_speaker_folds_are_seeded_and_ignore_row_order():
    rows = speaker_rows()
    first = fold_splits(rows, 6, seed=3)
    assert fold_splits(rows, 6, seed=3) == first
    assert fold_splits(list(reversed(rows)), 6, seed=3) == first
    shuffled = rows[:]
    random.Random(1).shuffle(shuffled)
    assert fold_splits(shuffled, 6, seed=3) == first
    assert [g["test"] for g in fold_splits(rows, 6, seed=4)] != [g["test"] for g in first]
    # ids compare numerically, as in the list protocols: "1" and "01" are one speaker
    renamed = [dataclasses.replace(r, speaker=str(int(r.speaker))) for r in rows]
    assert [{int(s) for s in g["test"]} for g in fold_splits(renamed, 6, seed=3)] == \
           [{int(s) for s in g["test"]} for g in first]


def test_speaker_folds_without_gender_deal_all_speakers():
    rows = speaker_rows(gender=False)
    splits = fold_splits(rows, 5)
    assert sorted(s for g in splits for s in g["test"]) == sorted({r.speaker for r in rows})
    # one speaker of unknown gender turns stratification off rather than making a third group
    mixed = speaker_rows()
    mixed[0] = dataclasses.replace(mixed[0], gender="")
    mixed[1] = dataclasses.replace(mixed[1], gender="")
    assert fold_splits(mixed, 6) == fold_splits(rows, 6)


def test_speaker_folds_too_few_speakers_name_the_alternatives():
    rows = [utt("tess", spk, i, text=f"w{i}") for spk in ("OAF", "YAF") for i in range(3)]
    with pytest.raises(SplitError, match=r"splits\.multi\.tess: tess has 2 speaker\(s\) \(oaf, yaf\), too few "
                                         r"for protocol 'speaker_folds' with folds: 5.*held_out_words.*all_test"):
        assign_splits(rows, "tess", SplitParams(protocol="speaker_folds", folds=5),
                      where="splits.multi.tess", fold=1)
    with pytest.raises(SplitError, match=r"val_speakers: 1 leaves no training speaker.*held_out_words"):
        assign_splits(rows, "tess", SplitParams(protocol="speaker_folds", folds=2, val_speakers=1), fold=1)


def test_fold_counts_and_a_fold_beyond_them():
    assert fold_count(iemocap_rows(), SplitParams(protocol="loso"), "iemocap") == 5
    assert fold_count(speaker_rows(), SplitParams(protocol="speaker_folds")) == 6  # the default k
    assert fold_count(speaker_rows(), SplitParams(protocol="speakers", test=("1",))) == 1
    with pytest.raises(SplitError, match=r"fold 7 does not exist: speaker_folds has folds 1-6"):
        assign_splits(speaker_rows(), "ravdess", SplitParams(protocol="speaker_folds"), fold=7)
    # a single-split protocol gives every fold the same split
    sp = SplitParams(protocol="speakers", val=("1-4",), test=("5-8",))
    assert assign_splits(speaker_rows(), "ravdess", sp, fold=1) == assign_splits(speaker_rows(), "ravdess", sp, fold=3)


def tess_rows(words: int = 20) -> list[Utterance]:
    return [utt("tess", spk, i, text=f"w{i}") for spk in ("OAF", "YAF") for i in range(words)]


def test_held_out_words_folds_test_every_word_once():
    rows, k = tess_rows(), 5
    sp = SplitParams(protocol="held_out_words", folds=k, val_fraction=0.1, seed=2)
    assert fold_count(rows, sp) == k
    tested = []
    for fold in range(1, k + 1):
        groups = by_split(assign_splits(rows, "tess", sp, fold=fold), "text")
        assert set(groups) == {"train", "val", "test"}
        assert not (groups["train"] & groups["val"]) and not (groups["test"] & (groups["train"] | groups["val"]))
        assert len(groups["test"]) == 4 and len(groups["val"]) == 2
        tested += sorted(groups["test"])
        # both speakers in every split: unseen words, seen speakers
        assert by_split(assign_splits(rows, "tess", sp, fold=fold))["test"] == {"OAF", "YAF"}
    assert sorted(tested) == sorted({r.text for r in rows})
    with pytest.raises(SplitError, match=r"3 word\(s\) in tess are too few for folds: 5"):
        assign_splits(tess_rows(3), "tess", sp, fold=1)
