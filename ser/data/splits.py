"""Split protocols: which clips of a corpus are train, val, test or adapt data.

Every protocol except `held_out_words` is speaker-independent: a speaker's
clips all land in one split, so a test score measures generalisation to people
the model never heard. The protocols are documented on ser.config.SplitParams;
the choices worth knowing:

- ids in lists are compared numerically when numeric ("01" == "1", so RAVDESS
  actors and CREMA-D ids can be written either way) and may be ranges
  ("1-12", "1064-1072");
- an omitted or empty `train` list means every speaker (session) not listed
  in another split, so a corpus's val/test actors are the only ones to name;
  except for a cross-corpus study's target corpus, whose unlisted speakers are
  left out: its labels are never trained on unless the study says so;
- a listed id missing from the data is a warning (the demo and the real
  corpus may differ), but a listed split that ends up empty is an error;
- the fold protocols (`loso` over sessions, `speaker_folds` over speakers,
  `held_out_words` with `folds`) give one split per fold (`fold_count`);
  running folds 1..k tests every session, speaker or word exactly once, and
  the fold before the test fold (cyclically) validates. A single-split
  protocol gives every fold the same split. `speaker_folds` is seeded and independent of row order, and
  deals each gender separately when every speaker has one;
- `held_out_words` (TESS, whose two speakers say the same 200 words) holds out
  *words*: both speakers are in every split, so its test score measures
  generalisation to unseen words of seen speakers, not to unseen speakers. Such
  corpora are exempt from the speaker-leakage check (ser.data.manifest.validate).
"""
from __future__ import annotations

import dataclasses
import itertools
import logging
import random
import re
from collections import Counter, defaultdict
from typing import Iterable, Sequence, Union

from ser.config import SplitParams
from ser.data.manifest import Utterance
from ser.errors import SerError

log = logging.getLogger(__name__)

__all__ = ["SplitError", "assign_splits", "fold_count", "expand_ids", "id_key", "LISTED_SPLITS"]

LISTED_SPLITS = ("train", "val", "test", "adapt")
RANGE = re.compile(r"^\s*(\d+)\s*-\s*(\d+)\s*$")

Key = Union[int, str]


class SplitError(ValueError, SerError):
    """A split protocol cannot be applied; the message names the params entry to fix."""


def id_key(value: str) -> Key:
    """Comparison key of a speaker or session id: numeric ids as ints ("01" == "1")."""
    value = str(value).strip()
    return int(value) if value.isdigit() else value.casefold()


def expand_ids(entries: Sequence[str], where: str) -> set[Key]:
    """Keys named by a split list; "1-12" is the inclusive numeric range."""
    keys: set[Key] = set()
    for entry in entries:
        m = RANGE.match(str(entry))
        if m:
            lo, hi = int(m.group(1)), int(m.group(2))
            if lo > hi:
                raise SplitError(f"{where}: range {entry!r} is empty (write low-high, e.g. '1-12')")
            keys.update(range(lo, hi + 1))
        elif str(entry).strip():
            keys.add(id_key(entry))
        else:
            raise SplitError(f"{where}: empty id in list {list(entries)}")
    return keys


def _compact(keys: Iterable[Key]) -> str:
    """'1-12, 15, Ses01F': numeric runs folded into ranges, for readable messages."""
    nums = sorted(k for k in keys if isinstance(k, int))
    words = sorted(str(k) for k in keys if not isinstance(k, int))
    parts, start = [], None
    for i, n in enumerate(nums):
        start = n if start is None else start
        if i + 1 == len(nums) or nums[i + 1] != n + 1:
            parts.append(str(n) if start == n else f"{start}-{n}")
            start = None
    return ", ".join(parts + words) or "none"


def _by_lists(rows: list[Utterance], corpus: str, attr: str, lists: dict[str, Sequence[str]],
              implicit_train: bool, where: str) -> list[Utterance]:
    """Assign each row the split whose list names its `attr` (speaker or session)."""
    wanted = {name: expand_ids(entries, f"{where}.{name}") for name, entries in lists.items() if entries}
    owner: dict[Key, str] = {}
    for name, keys in wanted.items():
        for key in sorted(keys, key=str):
            if key in owner:
                raise SplitError(f"{where}: {corpus} {attr} {key!r} is listed in both {owner[key]!r} and "
                                 f"{name!r}; each {attr} must be in one split only")
            owner[key] = name
    if any(not getattr(r, attr).strip() for r in rows):
        raise SplitError(f"{where}: some {corpus} clips have no {attr}; this protocol needs one for every clip")
    present = {id_key(getattr(r, attr)) for r in rows}
    absent = set(owner) - present
    if absent:
        log.warning("%s: %s %s(s) listed in the splits have no clips: %s", where, corpus, attr, _compact(absent))
    if implicit_train and "train" not in wanted:
        for key in present - set(owner):
            owner[key] = "train"
    unlisted = present - set(owner)
    if unlisted:
        log.warning("%s: %s %s(s) in no split (their clips are left out): %s",
                    where, corpus, attr, _compact(unlisted))
    out = [dataclasses.replace(r, split=owner.get(id_key(getattr(r, attr)), "unassigned")) for r in rows]
    used = Counter(r.split for r in out)
    for name, keys in wanted.items():
        if not used[name]:
            raise SplitError(f"{where}: split {name!r} lists {attr}s {_compact(keys)} but none of them has "
                             f"clips in {corpus} (present: {_compact(present)})")
    return out


def _sessions(rows: list[Utterance], corpus: str, where: str) -> list[int]:
    sessions = sorted({id_key(r.session) for r in rows if r.session.strip()}, key=str)
    if not all(isinstance(s, int) for s in sessions):
        raise SplitError(f"{where}: protocol 'loso' needs numeric sessions, {corpus} has {sessions}")
    if len(sessions) < 3:
        raise SplitError(f"{where}: protocol 'loso' needs >= 3 sessions (train, val, test); "
                         f"{corpus} has {_compact(sessions)}")
    return sorted(sessions)  # type: ignore[arg-type]


def fold_count(rows: list[Utterance], sp: SplitParams, corpus: str = "", where: str = "") -> int:
    """How many folds protocol `sp` defines on these rows: 1 for a single split."""
    if sp.protocol == "loso":
        return len(_sessions(rows, corpus, where or f"splits.<study>.{corpus}"))
    return sp.k or 1


def _loso(rows: list[Utterance], corpus: str, fold: int, where: str) -> list[Utterance]:
    """Leave-one-session-out: fold f tests the f-th session, the session before it (cyclically) validates."""
    sessions = _sessions(rows, corpus, where)
    if not 1 <= fold <= len(sessions):
        raise SplitError(f"{where}: fold {fold} does not exist: {corpus} has {len(sessions)} sessions "
                         f"({_compact(sessions)}), so loso has folds 1-{len(sessions)}")
    test = sessions[fold - 1]
    val = sessions[fold - 2]  # index -1 wraps to the last session: fold 1 validates on 5
    lists = {"train": [str(s) for s in sessions if s not in (test, val)],
             "val": [str(val)], "test": [str(test)]}
    log.info("%s: loso fold %d -> train sessions %s, val %d, test %d",
             where, fold, _compact(map(int, lists["train"])), val, test)
    return _by_lists(rows, corpus, "session", lists, implicit_train=False, where=where)


def _speaker_order(keys: Iterable[Key]) -> list[Key]:
    """Speakers in a fixed order (numeric ids before names), whatever order the rows came in."""
    return sorted(keys, key=lambda k: (isinstance(k, str), k))


def _deal(speakers: list[Key], gender: dict[Key, str], k: int, rng: random.Random) -> list[list[Key]]:
    """k folds of speakers: shuffled, then dealt round-robin, one gender after the other when all are known.

    The deal continues across genders (it does not restart at fold 1), so fold
    sizes differ by at most one speaker, and so do each gender's counts per fold.
    """
    groups = ([[s for s in speakers if gender[s] == g] for g in sorted(set(gender.values()))]
              if gender else [list(speakers)])
    folds: list[list[Key]] = [[] for _ in range(k)]
    dealt = 0
    for group in groups:
        rng.shuffle(group)
        for spk in group:
            folds[dealt % k].append(spk)
            dealt += 1
    return folds


def _draw_val(folds: list[list[Key]], fold: int, gender: dict[Key, str], rng: random.Random,
              corpus: str, sp: SplitParams, where: str) -> list[Key]:
    """`val_speakers` speakers of the training folds, drawn alternately by gender (when known)."""
    pool = _speaker_order(s for i, f in enumerate(folds) if i != fold - 1 for s in f)
    if sp.val_speakers >= len(pool):
        raise SplitError(
            f"{where}: val_speakers: {sp.val_speakers} leaves no training speaker among the {len(pool)} "
            f"speakers outside test fold {fold} of {corpus}; lower val_speakers, use fewer folds, or protocol "
            f"'held_out_words' / 'all_test' for a corpus with few speakers")
    groups = [[s for s in pool if gender[s] == g] for g in sorted(set(gender.values()))] if gender else [pool]
    for group in groups:
        rng.shuffle(group)
    drawn = [s for tier in itertools.zip_longest(*groups) for s in tier if s is not None]
    return drawn[:sp.val_speakers]


def _speaker_folds(rows: list[Utterance], corpus: str, sp: SplitParams, fold: int, where: str) -> list[Utterance]:
    """Seeded k-fold over speakers: fold = test, the fold before it (or N drawn speakers) = val."""
    if any(not r.speaker.strip() for r in rows):
        raise SplitError(f"{where}: some {corpus} clips have no speaker; protocol 'speaker_folds' needs one for "
                         f"every clip")
    k = sp.k
    assert k is not None
    if not 1 <= fold <= k:
        raise SplitError(f"{where}: fold {fold} does not exist: speaker_folds has folds 1-{k} (folds: {k})")
    genders: dict[Key, set[str]] = defaultdict(set)
    for r in rows:
        genders[id_key(r.speaker)].add(r.gender.strip().upper())
    speakers = _speaker_order(genders)
    # stratify only when every speaker has exactly one known gender; one unknown
    # speaker would otherwise form a "gender" of its own
    gender = {s: next(iter(g)) for s, g in genders.items()} if all(
        len(g) == 1 and "" not in g for g in genders.values()) else {}
    if len(speakers) < k:  # an empty fold would be an empty test set; train and val are checked below
        raise SplitError(
            f"{where}: {corpus} has {len(speakers)} speaker(s) ({_compact(speakers)}), too few for protocol "
            f"'speaker_folds' with folds: {k} (every fold needs a speaker). Use fewer folds (folds <= "
            f"{len(speakers)}), protocol 'held_out_words' for a corpus whose few speakers say the same words "
            f"(as TESS: unseen words, not unseen speakers), or 'all_test' to keep {corpus} out of training")
    rng = random.Random(sp.seed)
    folds = _deal(speakers, gender, k, rng)
    test = folds[fold - 1]
    if sp.val_speakers:
        val = _draw_val(folds, fold, gender, rng, corpus, sp, where)
    else:
        val = folds[fold - 2]  # index -1 wraps: fold 1 validates on fold k, as loso does
    split_of = {s: "train" for s in speakers}
    split_of.update({s: "val" for s in val})
    split_of.update({s: "test" for s in test})
    log.info("%s: speaker_folds fold %d/%d (seed %d, %s) -> test %s; val %s; %d train speakers",
             where, fold, k, sp.seed, "stratified by gender" if gender else "gender not used",
             _compact(test), _compact(val), sum(v == "train" for v in split_of.values()))
    return [dataclasses.replace(r, split=split_of[id_key(r.speaker)]) for r in rows]


def _held_out_words(rows: list[Utterance], corpus: str, sp: SplitParams, fold: int, where: str) -> list[Utterance]:
    """Seeded split of the word list (`text`): unseen words, seen speakers (see module doc).

    With `folds: k` the shuffled words are dealt into k folds: fold f tests
    fold f's words, val_fraction of the other words validate, the rest train.
    """
    if any(not r.text.strip() for r in rows):
        raise SplitError(f"{where}: protocol 'held_out_words' needs a word (text) for every {corpus} clip")
    words = sorted({r.text for r in rows})
    rng = random.Random(sp.seed)
    rng.shuffle(words)
    if sp.k is None:
        n_test = max(1, round(len(words) * sp.test_fraction))
        test = words[:n_test]
        rest = words[n_test:]
    else:
        if len(words) < sp.k:
            raise SplitError(f"{where}: {len(words)} word(s) in {corpus} are too few for folds: {sp.k}")
        if not 1 <= fold <= sp.k:
            raise SplitError(f"{where}: fold {fold} does not exist: held_out_words has folds 1-{sp.k}")
        test = words[fold - 1::sp.k]
        rest = [w for i, w in enumerate(words) if i % sp.k != fold - 1]
    n_val = max(1, round(len(words) * sp.val_fraction)) if sp.val_fraction > 0 else 0
    if n_val >= len(rest):
        raise SplitError(f"{where}: {len(words)} word(s) in {corpus} are too few for val_fraction "
                         f"{sp.val_fraction} and test_fraction {sp.test_fraction} (train would be empty)")
    split_of = {w: "test" for w in test}
    split_of.update({w: "val" for w in rest[:n_val]})
    log.info("%s: held-out words (seed %d%s): %d train, %d val, %d test words; every speaker in every split",
             where, sp.seed, f", fold {fold}/{sp.k}" if sp.k else "", len(rest) - n_val, n_val, len(test))
    return [dataclasses.replace(r, split=split_of.get(r.text, "train")) for r in rows]


def assign_splits(rows: list[Utterance], corpus: str, sp: SplitParams, where: str = "", *,
                  implicit_train: bool = True, fold: int = 1) -> list[Utterance]:
    """Copies of `rows` with `split` set by protocol `sp` for fold `fold` (1-based; a
    single-split protocol ignores it); rows in no split stay "unassigned".

    `where` names the params entry in messages (default: splits.<study>.<corpus>).
    implicit_train=False (a cross-corpus target corpus): unlisted speakers stay
    unassigned instead of becoming training data, so a forgotten speaker never
    puts target labels into training.
    """
    where = where or f"splits.<study>.{corpus}"
    lists = {name: getattr(sp, name) for name in LISTED_SPLITS}
    if sp.protocol in ("loso", "speaker_folds", "held_out_words", "all_test") and any(lists.values()):
        log.warning("%s: protocol %r ignores the train/val/test/adapt lists", where, sp.protocol)
    if not rows:
        raise SplitError(f"{where}: {corpus} has no clips to split")
    if sp.protocol == "all_test":
        out = [dataclasses.replace(r, split="test") for r in rows]
    elif sp.protocol == "sessions":
        out = _by_lists(rows, corpus, "session", lists, implicit_train=implicit_train, where=where)
    elif sp.protocol == "speakers":
        out = _by_lists(rows, corpus, "speaker", lists, implicit_train=implicit_train, where=where)
    elif sp.protocol == "loso":
        out = _loso(rows, corpus, fold, where)
    elif sp.protocol == "speaker_folds":
        out = _speaker_folds(rows, corpus, sp, fold, where)
    elif sp.protocol == "held_out_words":
        out = _held_out_words(rows, corpus, sp, fold, where)
    else:  # SplitParams' Literal makes this unreachable from params.yaml
        raise SplitError(f"{where}: unknown protocol {sp.protocol!r}")
    speakers: dict[str, set[str]] = defaultdict(set)
    for r in out:
        speakers[r.split].add(r.speaker)
    log.info("%s: %s", where, ", ".join(f"{s} {sum(r.split == s for r in out)} clips/{len(speakers[s])} speakers"
                                        for s in (*LISTED_SPLITS, "unassigned") if speakers[s]))
    return out
