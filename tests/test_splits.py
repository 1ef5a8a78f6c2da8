"""Split protocols: sessions, loso, speakers (ranges, implicit train), held-out words, all-test."""
from __future__ import annotations

import logging
from collections import defaultdict

import pytest

from ser.config import SplitParams
from ser.manifest import Utterance, speaker_leaks
from ser.splits import SplitError, assign_splits


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
    rows = assign_splits(iemocap_rows(), "iemocap", SplitParams(protocol="loso", fold=fold))
    assert by_split(rows, "session") == {"train": train, "val": {val}, "test": {str(fold)}}


def test_loso_unknown_fold_is_an_error():
    rows = [r for r in iemocap_rows() if r.session != "5"]
    with pytest.raises(SplitError, match=r"fold 5 is not a session of iemocap \(sessions: 1-4\)"):
        assign_splits(rows, "iemocap", SplitParams(protocol="loso", fold=5))


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
    with caplog.at_level(logging.WARNING, logger="ser.splits"):
        out = assign_splits(rows, "ravdess", SplitParams(protocol="speakers", val=("7", "9-10"), test=("8",)))
    assert "have no clips: 9-10" in caplog.text
    assert by_split(out)["val"] == {"07"}
    with pytest.raises(SplitError, match=r"split 'test' lists speakers 30-31 but none of them has clips"):
        assign_splits(rows, "ravdess", SplitParams(protocol="speakers", test=("30-31",)))


def test_unlisted_speakers_stay_unassigned_when_train_is_explicit(caplog):
    rows = [utt("x", s, 0) for s in ("a", "b", "c", "d")]
    with caplog.at_level(logging.WARNING, logger="ser.splits"):
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
