"""Claiming images: overlapping runs never share an image, retries resume, nothing is lost.

Runs against the moto S3 endpoint (conditional puts of ledger entries are what keeps runs
apart) and a local lake (``O_EXCL``). Fast: no Label Studio, no Airflow.
"""

from __future__ import annotations

import threading
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from servers import s3_client

from ml_tasks.annotation.batches import count_waiting
from ml_tasks.annotation.claim import Claimed, claim_batch
from ml_tasks.core.lake import Lake, LocalLake, S3Lake


@pytest.fixture(params=["s3", "local"])
def lake(request: pytest.FixtureRequest, tmp_path: Path) -> Lake:
    if request.param == "local":
        return LocalLake(tmp_path / "lake")
    endpoint = request.getfixturevalue("s3_endpoint")
    client = s3_client(endpoint)
    bucket = f"claims-{uuid.uuid4().hex[:8]}"
    client.create_bucket(Bucket=bucket)
    return S3Lake(bucket, client=client)


def put_waiting(lake: Lake, count: int, *, without_sidecar: int = 0) -> list[str]:
    keys = []
    for i in range(count + without_sidecar):
        key = f"incoming/2026-01-0{1 + i % 2}/{i:016x}.png"
        lake.write_bytes(key, f"image {i}".encode())
        if i < count:
            lake.write_bytes(key[:-4] + ".json", b"{}")
        keys.append(key)
    return keys[:count]


def open_ledger_entries(lake: Lake) -> set[str]:
    keys = list(lake.list("annotation/.claims/ledger/"))
    opened = {k.removesuffix(".json") for k in keys if k.endswith(".json")}
    return opened - {k.removesuffix(".done") for k in keys if k.endswith(".done")}


def ledger_entry(lake: Lake, batch: str) -> int:
    import json

    return int(json.loads(lake.read_bytes(f"annotation/{batch}/manifest.json"))["ledger"])


def claimed_names(lake: Lake, batch: str) -> list[str]:
    import json

    manifest: dict[str, Any] = json.loads(lake.read_bytes(f"annotation/{batch}/manifest.json"))
    return [item["name"] for item in manifest["images"]]


def test_a_claim_moves_images_with_sidecars_and_leaves_the_rest(lake: Lake) -> None:
    put_waiting(lake, 5, without_sidecar=2)
    result = claim_batch(lake, "b1", 4)
    assert result.images == 4
    names = claimed_names(lake, "b1")
    for name in names:
        assert lake.read_bytes(f"annotation/b1/{name}").startswith(b"image ")
        assert lake.exists(f"annotation/b1/{name[:-4]}.json")
    left = list(lake.list("incoming/"))
    assert count_waiting(left) == 1 and len(left) == 4  # 1 pair + 2 images still writing
    assert not open_ledger_entries(lake)  # the reservation closes once the claim is done
    # A retry of the same run claims nothing more and changes nothing.
    again = claim_batch(lake, "b1", 4)
    assert again.resumed and claimed_names(lake, "b1") == names


def test_overlapping_runs_never_claim_the_same_image(lake: Lake) -> None:
    put_waiting(lake, 60)
    results: dict[str, Claimed] = {}

    def claim(batch: str) -> None:
        results[batch] = claim_batch(lake, batch, 25)

    threads = [threading.Thread(target=claim, args=(f"run{i}",)) for i in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    everything = [n for b in results for n in claimed_names(lake, b)]
    assert len(everything) == len(set(everything))  # nobody shares an image
    counts = [r.images for r in results.values()]
    # Each run stops at 25 or when it has tried every image it listed (losing races is fine).
    assert sum(counts) == 60 and max(counts) <= 25
    assert count_waiting(lake.list("incoming/")) == 0  # and nothing was left behind
    copies = Counter(k.rsplit("/", 1)[-1] for k in lake.list("annotation/") if k.endswith(".png"))
    assert len(copies) == 60 and set(copies.values()) == {1}


def test_a_claim_that_crashed_after_its_manifest_resumes_the_same_images(lake: Lake) -> None:
    import json

    put_waiting(lake, 6)
    # The state a crash leaves right after writing the manifest: ledger entry + manifest, no
    # copies.
    chosen = sorted(k for k in lake.list("incoming/") if k.endswith(".png"))[:3]
    lake.write_bytes(
        "annotation/.claims/ledger/0000000001.json",
        json.dumps({"batch": "b9", "images": chosen}).encode(),
    )
    lake.write_bytes(
        "annotation/b9/manifest.json",
        json.dumps({"batch": "b9", "state": "claiming", "ledger": 1, "images": chosen}).encode(),
    )
    other = claim_batch(lake, "b10", 10)  # another run meanwhile: must not take those three
    assert other.images == 3
    result = claim_batch(lake, "b9", 10)
    assert result.resumed and result.images == 3
    assert sorted(claimed_names(lake, "b9")) == sorted(k.rsplit("/", 1)[-1] for k in chosen)
    assert list(lake.list("incoming/")) == []


def test_a_claim_that_crashed_before_its_manifest_resumes_its_reservation(lake: Lake) -> None:
    import json

    put_waiting(lake, 6)
    # The state a crash leaves between reserving and writing the manifest: only the entry.
    chosen = sorted(k for k in lake.list("incoming/") if k.endswith(".png"))[2:5]
    lake.write_bytes(
        "annotation/.claims/ledger/0000000001.json",
        json.dumps({"batch": "b7", "images": chosen}).encode(),
    )
    other = claim_batch(lake, "b8", 10)  # meanwhile: takes the other three only
    assert other.images == 3 and not set(claimed_names(lake, "b8")) & {
        k.rsplit("/", 1)[-1] for k in chosen
    }
    result = claim_batch(lake, "b7", 10)
    assert result.resumed and result.images == 3
    assert sorted(claimed_names(lake, "b7")) == sorted(k.rsplit("/", 1)[-1] for k in chosen)
    assert list(lake.list("incoming/")) == [] and not open_ledger_entries(lake)


def test_a_run_that_loses_a_ledger_number_reads_again_and_takes_other_images(
    lake: Lake, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The race itself, made certain: another run reserves between our reading and writing."""
    put_waiting(lake, 8)
    original = lake.create_if_absent
    rival_done: list[Claimed] = []
    raced: list[str] = []

    def create_if_absent(key: str, body: bytes) -> bool:
        if not raced:
            raced.append(key)
            rival_done.append(claim_batch(lake, "rival", 5))  # wins this very number first
        return original(key, body)

    monkeypatch.setattr(lake, "create_if_absent", create_if_absent)
    ours = claim_batch(lake, "ours", 5)
    assert rival_done[0].images == 5 and ours.images == 3
    assert not set(claimed_names(lake, "ours")) & set(claimed_names(lake, "rival"))
    assert [ledger_entry(lake, b) for b in ("rival", "ours")] == [1, 2]


def test_the_ledger_keeps_only_open_entries_and_the_newest(lake: Lake) -> None:
    import json

    ledger = "annotation/.claims/ledger/"
    put_waiting(lake, 12)
    claim_batch(lake, "first", 3)  # entry 1
    # a run that crashed after reserving holds entry 2 open
    waiting = sorted(k for k in lake.list("incoming/") if k.endswith(".png"))
    lake.write_bytes(
        f"{ledger}0000000002.json", json.dumps({"batch": "crashed", "images": waiting[:3]}).encode()
    )
    claim_batch(lake, "third", 3)  # entry 3; prunes closed entry 1, keeps the open 2
    assert sorted(lake.list(ledger)) == [
        f"{ledger}0000000002.json",
        f"{ledger}0000000003.done",
        f"{ledger}0000000003.json",
    ]
    assert claim_batch(lake, "crashed", 3).resumed  # closes 2, which is then pruned
    assert sorted(lake.list(ledger)) == [f"{ledger}0000000003.done", f"{ledger}0000000003.json"]
    claim_batch(lake, "fourth", 3)
    assert ledger_entry(lake, "fourth") == 4  # numbering goes on from the newest entry
    assert sorted(lake.list(ledger)) == [f"{ledger}0000000004.done", f"{ledger}0000000004.json"]
    names = [n for b in ("first", "crashed", "third", "fourth") for n in claimed_names(lake, b)]
    assert len(names) == len(set(names)) == 12 and not list(lake.list("incoming/"))
