"""The submission registry's parts: rules, stores, claims, lease, file names, the service clock, replay."""

from __future__ import annotations

import threading
import time
from email.utils import formatdate
from pathlib import Path

import pytest

from airflow_provider_aitryon import api
from airflow_provider_aitryon.catalog import (
    DONE,
    FAILED,
    LOOKUP,
    QUEUED,
    STAGE_COARSE,
    STAGE_REFINE,
    WAITING,
    CatalogItem,
    replay,
)
from airflow_provider_aitryon.models import TaskStatus
from airflow_provider_aitryon.registry import (
    RETENTION_SECONDS,
    ClaimIndex,
    Decision,
    FileStore,
    MemoryStore,
    Submission,
    SubmissionRegistry,
    VariableStore,
    after_status,
    decide,
    sku_file_stem,
)
from airflow_provider_aitryon.registry.lease import PartitionBusy, PartitionLease
from airflow_provider_aitryon.service_clock import ServiceClock

FP = "f" * 64


def entry(**kwargs: object) -> Submission:
    values: dict[str, object] = {"scope": "dag/run/submit", "fingerprint": FP, "model": "aitryon-refiner"}
    values.update(kwargs)
    return Submission(**values)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------ rules


@pytest.mark.parametrize(
    ("held", "resubmit", "want"),
    [
        (None, False, Decision.SUBMIT),
        (entry(task_id="t"), True, Decision.SUBMIT),
        (entry(task_id="t", fingerprint="other"), False, Decision.SUBMIT),
        (entry(task_id="t", submitted_at=time.time() - RETENTION_SECONDS - 1), False, Decision.SUBMIT),
        (entry(failure={"code": "InvalidParameter", "message": "m", "retryable": False}), False, Decision.SUBMIT),
        (entry(), False, Decision.LOOKUP),
        (entry(task_id="t"), False, Decision.CHECK),
    ],
    ids=["nothing", "resubmit", "changed-request", "older-than-24h", "refused", "intent-only", "known-task"],
)
def test_decide_is_the_rule_table(held, resubmit, want):
    assert decide(held, FP, resubmit=resubmit)[0] is want


@pytest.mark.parametrize(
    ("status", "want"),
    [("PENDING", Decision.REUSE), ("RUNNING", Decision.REUSE), ("SUCCEEDED", Decision.REUSE),
     ("FAILED", Decision.SUBMIT), ("CANCELED", Decision.SUBMIT), ("UNKNOWN", Decision.SUBMIT)],
)  # fmt: skip
def test_after_status_reuses_live_and_finished_tasks_only(status, want):
    assert after_status(TaskStatus(status)) is want


def test_a_new_generation_keeps_the_paid_task_in_the_audit_trail():
    held = entry()
    held.recorded("t-1", "r-1", adopted=True)
    held.new_generation("g" * 64, "aitryon-refiner", "dag/run/submit#2")
    assert (held.task_id, held.adopted, held.superseded, held.fingerprint) == (None, False, ["t-1"], "g" * 64)
    assert Submission.from_dict(held.to_dict()) == held


def test_foreign_values_are_not_entries():
    assert Submission.from_dict({"hello": 1}) is None
    assert Submission.from_dict("text") is None


# ------------------------------------------------------------------------------ stores and claims


def test_file_store_keeps_entries_next_to_the_output(tmp_path):
    store = FileStore(str(tmp_path / "registry" / "items"))
    registry = SubmissionRegistry(store, ClaimIndex(MemoryStore()))
    registry.record_task("refine-a", entry(), "t-1", "r-1", adopted=False)
    registry.put("refine-old", entry(task_id="t-0", submitted_at=time.time() - RETENTION_SECONDS - 5))
    assert sorted(p.name for p in (tmp_path / "registry" / "items").iterdir()) == ["refine-a.json", "refine-old.json"]
    assert registry.get("refine-a").task_id == "t-1"  # type: ignore[union-attr]
    assert registry.purge_expired() == ["refine-old"]
    assert list(registry.entries()) == ["refine-a"]
    assert registry.claims.is_claimed("t-1")


def test_variable_store_outside_airflow_lives_in_this_process():
    store = VariableStore("aitryon_test_")
    store.put("k", {"a": 1})
    assert VariableStore("aitryon_test_").get("k") == {"a": 1}
    assert "k" in store.list_keys()
    store.delete("k")
    assert store.get("k") is None


def test_a_claim_that_cannot_be_read_counts_as_claimed():
    class Broken(MemoryStore):
        def get(self, key):  # type: ignore[no-untyped-def]
            raise OSError("unreachable")

    claims = ClaimIndex(Broken())
    assert claims.is_claimed("someone-elses") is True
    claims.remember(["ours"])
    assert "ours" in claims


# ------------------------------------------------------------------------------ file names


def test_skus_that_read_alike_get_distinct_stable_file_names():
    skus = ["a/b", "a b", "a:b", "a\\b", "a_b", "A_b", "L" * 150 + "a" * 150, "L" * 150 + "b" * 150, "..", ""]
    stems = [sku_file_stem(s) for s in skus]
    assert len(set(stems)) == len(skus)
    assert stems == [sku_file_stem(s) for s in skus]  # stable across runs
    assert all("/" not in s and "\\" not in s and ":" not in s and len(s) <= 80 for s in stems)


# ------------------------------------------------------------------------------ lease


def test_a_second_run_is_refused_in_one_sentence_naming_the_holder(tmp_path):
    PartitionLease(str(tmp_path), "dag/run-1").acquire()
    with pytest.raises(PartitionBusy, match=r"is being refined by dag/run-1, which holds its lease for another \d+ s"):
        PartitionLease(str(tmp_path), "dag/run-2").acquire()
    PartitionLease(str(tmp_path), "dag/run-1").acquire()  # the same run (a retry, a clear) may take it again


def test_an_expired_or_released_lease_or_a_finished_holder_can_be_taken(tmp_path):
    PartitionLease(str(tmp_path / "a"), "dag/run-1", ttl=0.05).acquire()
    time.sleep(0.1)
    PartitionLease(str(tmp_path / "a"), "dag/run-2").acquire()  # a crashed run does not hold it forever

    first = PartitionLease(str(tmp_path / "b"), "dag/run-1")
    first.acquire()
    first.release()
    PartitionLease(str(tmp_path / "b"), "dag/run-2").acquire()

    PartitionLease(str(tmp_path / "c"), "dag/run-1").acquire()
    PartitionLease(str(tmp_path / "c"), "dag/run-2").acquire(holder_alive=lambda holder: False)


def test_a_holder_whose_lease_was_taken_learns_it_on_renewal(tmp_path):
    first = PartitionLease(str(tmp_path), "dag/run-1", ttl=0.05)
    first.acquire()
    time.sleep(0.1)
    PartitionLease(str(tmp_path), "dag/run-2").acquire()
    with pytest.raises(PartitionBusy, match="dag/run-2"):
        first.renew()


def test_of_runs_racing_for_a_lease_exactly_one_wins(tmp_path):
    results: list[str] = []

    def take(name: str) -> None:
        try:
            PartitionLease(str(tmp_path), name).acquire()
            results.append("won")
        except PartitionBusy:
            results.append("refused")

    threads = [threading.Thread(target=take, args=(f"dag/run-{i}",)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == ["refused"] * 7 + ["won"]


# ------------------------------------------------------------------------------ service clock


@pytest.mark.parametrize("offset", [0.0, 0.37, -5.0, 240.81])
def test_the_clock_learns_a_skew_from_date_headers_and_calibration_halves_it(offset):
    clock = ServiceClock()
    now = 1_800_000_000.25
    for _ in range(8):  # what find_submitted does: ask at the moment that splits the interval
        sent = clock.calibrate_at(now) if clock.known else now
        clock.observe_date(formatdate(sent + 0.002 + offset, usegmt=True), sent, sent + 0.004)
        now = sent + 0.01
    assert clock.lo <= offset <= clock.hi
    assert clock.width < 0.1


def test_a_contradicting_observation_restarts_the_estimate():
    clock = ServiceClock()
    clock.observe_event(100.0, 99.0, 99.1)  # offset in [0.9, 1.0]
    clock.observe_event(200.0, 100.0, 100.1)  # the service's clock was stepped: ~100 s
    assert 99.8 <= clock.lo <= clock.hi <= 100.0


# ------------------------------------------------------------------------------ fingerprints


def test_a_re_signed_url_is_the_same_request():
    def call(url: str) -> api.ApiCall:
        return api.refiner_call(person_image_url="https://p/x.png", top_garment_url="https://p/t.png",
                                coarse_image_url=url, gender="woman")  # fmt: skip

    signed_1 = "https://b.oss-cn-beijing.aliyuncs.com/c.png?Expires=1&OSSAccessKeyId=AK&Signature=s1"
    signed_2 = "https://b.oss-cn-beijing.aliyuncs.com/c.png?Expires=2&OSSAccessKeyId=AK&Signature=s2"
    v4 = "https://b.oss-cn-beijing.aliyuncs.com/c.png?x-oss-signature=zz&x-oss-date=1&x-oss-expires=60"
    assert call(signed_1).fingerprint() == call(signed_2).fingerprint() == call(v4).fingerprint()
    assert call("https://b/c.png?v=1").fingerprint() != call("https://b/c.png?v=2").fingerprint()


# ------------------------------------------------------------------------------ replay


ITEM = CatalogItem(sku="s", person_image_url="https://p/p.png", top_garment_url="https://p/t.png", gender="woman")


def stage_entry(stage: str, coarse_url: str | None = None, **kwargs: object) -> Submission:
    call = ITEM.call(stage, coarse_image_url=coarse_url)
    return entry(fingerprint=call.fingerprint(), model=str(call.body["model"]), **kwargs)  # type: ignore[index]


def test_replay_reads_every_state_of_an_item():
    coarse_done = stage_entry(STAGE_COARSE, task_id="c", status="SUCCEEDED", image_url="https://r/c.png?Signature=1")
    assert replay(ITEM, {}).phase == QUEUED
    assert replay(ITEM, {STAGE_COARSE: stage_entry(STAGE_COARSE)}).phase == LOOKUP
    assert replay(ITEM, {STAGE_COARSE: stage_entry(STAGE_COARSE, task_id="c", status="RUNNING")}).phase == WAITING
    refine = replay(ITEM, {STAGE_COARSE: coarse_done})
    assert (refine.phase, refine.stage, refine.coarse_url) == (QUEUED, STAGE_REFINE, "https://r/c.png?Signature=1")
    # The coarse URL was signed again: still the same refine request, still the same paid task.
    resigned = stage_entry(STAGE_REFINE, "https://r/c.png?Signature=2", task_id="r", status="SUCCEEDED")
    waiting = replay(ITEM, {STAGE_COARSE: coarse_done, STAGE_REFINE: resigned})
    assert (waiting.phase, waiting.task_id) == (WAITING, "r")  # paid, not saved: query and download
    saved = stage_entry(STAGE_REFINE, "https://r/c.png", task_id="r", status="SUCCEEDED", saved_uri="/o/s.png")
    done = replay(ITEM, {STAGE_COARSE: coarse_done, STAGE_REFINE: saved})
    assert (done.phase, done.row.image, done.row.task_ids) == (DONE, "/o/s.png", {"coarse": "c", "refine": "r"})


def test_replay_of_failures_says_how_a_rerun_resumes():
    save_failed = stage_entry(STAGE_COARSE, task_id="c", status="SUCCEEDED",
                              failure={"code": "SaveFailed", "message": "503", "retryable": True})  # fmt: skip
    item = CatalogItem(sku="s", person_image_url="https://p/p.png", top_garment_url="https://p/t.png",
                       gender="woman", coarse_image_url="https://p/c.png")  # fmt: skip
    refine_failed_save = entry(fingerprint=item.call(STAGE_REFINE).fingerprint(), task_id="r", status="SUCCEEDED",
                               failure={"code": "SaveFailed", "message": "503", "retryable": True})  # fmt: skip
    progress = replay(item, {STAGE_REFINE: refine_failed_save})
    assert (progress.phase, progress.retry, progress.row.code) == (FAILED, WAITING, "SaveFailed")
    permanent = entry(fingerprint=item.call(STAGE_REFINE).fingerprint(), task_id="r", status="FAILED",
                      code="InvalidPerson")  # fmt: skip
    assert replay(item, {STAGE_REFINE: permanent}).retry is None
    transient = entry(fingerprint=item.call(STAGE_REFINE).fingerprint(), task_id="r", status="FAILED",
                      code="InternalError")  # fmt: skip
    assert replay(item, {STAGE_REFINE: transient}).retry == QUEUED
    assert save_failed.failure is not None


def test_replay_of_a_changed_catalog_line_submits_the_new_request(tmp_path: Path):
    old = entry(fingerprint="old-request", task_id="r", status="SUCCEEDED", saved_uri="/o/s.png")
    item = CatalogItem(sku="s", person_image_url="https://p/new.png", top_garment_url="https://p/t.png",
                       gender="woman", coarse_image_url="https://p/c.png")  # fmt: skip
    assert replay(item, {STAGE_REFINE: old}).phase == QUEUED
