"""The register-if-better rule and the content-hash split, without MLflow or data."""

import hashlib

from ml_tasks.data.splits import split_of, splits_of
from ml_tasks.model.validation import decide

RULES = {"min_accuracy": 0.8, "min_macro_f1": 0.8, "min_improvement": 0.01}


def incumbent(accuracy: float) -> dict:
    return {
        "alias": "champion",
        "version": "3",
        "metrics": {"accuracy": accuracy, "macro_f1": accuracy},
    }


def test_floors_decide_when_there_is_no_incumbent() -> None:
    assert decide({"accuracy": 0.9, "macro_f1": 0.9}, None, RULES)[0]
    ok, reason = decide({"accuracy": 0.7, "macro_f1": 0.9}, None, RULES)
    assert not ok and "below the floor" in reason


def test_must_beat_the_incumbent_by_the_margin() -> None:
    ok, reason = decide({"accuracy": 0.905, "macro_f1": 0.9}, incumbent(0.9), RULES)
    assert not ok and "champion v3" in reason and "margin" in reason
    assert decide({"accuracy": 0.92, "macro_f1": 0.9}, incumbent(0.9), RULES)[0]


def test_force_still_respects_the_floors() -> None:
    assert decide({"accuracy": 0.85, "macro_f1": 0.85}, incumbent(0.99), RULES, force=True)[0]
    assert not decide({"accuracy": 0.5, "macro_f1": 0.5}, incumbent(0.4), RULES, force=True)[0]


def test_split_depends_on_content_only_and_follows_the_fractions() -> None:
    fractions = {"train": 0.7, "val": 0.15, "test": 0.15}
    hashes = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(20_000)]
    splits = [split_of(h, fractions) for h in hashes]
    assert splits == [split_of(h, fractions) for h in hashes]
    for name, share in fractions.items():
        assert abs(splits.count(name) / len(splits) - share) < 0.01


def test_the_vectorised_split_gives_the_same_answer_for_every_hash() -> None:
    hashes = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(5_000)]
    hashes += ["0" * 64, "f" * 64, "b333333" + "0" * 57]  # the ends and an edge of the range
    for fractions in (
        {"train": 0.7, "val": 0.15, "test": 0.15},
        {"train": 0.8, "val": 0.2, "test": 0.0},
        {"train": 0.5, "val": 0.25, "test": 0.25},
    ):
        assert splits_of(hashes, fractions) == [split_of(h, fractions) for h in hashes]
    assert splits_of([], {"train": 1.0, "val": 0.0, "test": 0.0}) == []
