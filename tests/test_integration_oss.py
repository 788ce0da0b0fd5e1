"""The example DAGs with private ``oss://`` inputs and an ``oss://`` output, in real Airflow.

`airflow dags test` runs the pipeline DAG and the catalog backfill against the emulator (as
DashScope) and the OSS stand-in (as a private bucket that verifies every V4 signature with the
secret it was given). What is checked is what the stand-in saw and holds: signed requests only,
none refused, the objects written (bytes and sha256 as the XCom and the manifest say), and a scan
of everything Airflow wrote for the secret and every signature the stand-in verified.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from harness import airflow_env, dags_test, migrate, task_states, xcom_value

from airflow_provider_aitryon import api
from airflow_provider_aitryon.emulator import Emulator, EmulatorConfig
from airflow_provider_aitryon.emulator.oss import OssStandIn, SignatureV4Verifier
from airflow_provider_aitryon.emulator.samples import sample_images

pytestmark = pytest.mark.integration

BUCKET = "shop-looks"
SECRET = "oss-integration-SECRET-0c9e"
API_KEY = "sk-oss-integration-key"


@pytest.fixture(scope="module")
def signatures() -> Iterator[list[str]]:
    """Every signature the stand-in verified (a spy in this process, where the stand-in runs)."""
    seen: list[str] = []
    original = SignatureV4Verifier._compare

    def spy(self: Any, canonical: str, timestamp: str, date: str, secret: str, provided: str, key_id: str) -> None:
        seen.append(provided)
        original(self, canonical, timestamp, date, secret, provided, key_id)

    SignatureV4Verifier._compare = spy  # type: ignore[method-assign]
    yield seen
    SignatureV4Verifier._compare = original  # type: ignore[method-assign]


@pytest.fixture(scope="module")
def oss(signatures: list[str]) -> Iterator[OssStandIn]:
    with OssStandIn(access_key_id="LTAI-integration", access_key_secret=SECRET) as stand_in:
        for name in ("person.png", "top.png", "bottom.png", "blank_person.png"):
            stand_in.put(BUCKET, f"models/{name}", sample_images()[name], "image/png")
        yield stand_in


@pytest.fixture(scope="module")
def emulator() -> Iterator[Emulator]:
    with Emulator(EmulatorConfig(latency=0.3, api_key=API_KEY, log_requests=False)) as emu:
        yield emu


@pytest.fixture(scope="module")
def airflow(emulator: Emulator, oss: OssStandIn, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    home = tmp_path_factory.mktemp("airflow_home_oss")
    env = airflow_env(home, emulator.base_url, api_key=API_KEY, AIRFLOW_CONN_OSS_DEFAULT=oss.connection_json())
    conn = json.loads(env["AIRFLOW_CONN_DASHSCOPE_DEFAULT"])
    conn["extra"]["allow_private_inputs"] = True  # the stand-in is on loopback: pre-flight may fetch it
    env["AIRFLOW_CONN_DASHSCOPE_DEFAULT"] = json.dumps(conn)
    migrate(env)
    return home, env


def uri(name: str) -> str:
    return f"oss://{BUCKET}/models/{name}"


def audit(label: str, oss: OssStandIn, signatures: list[str]) -> None:
    """What the stand-in saw, for the record (pytest -s prints it)."""
    from collections import Counter

    seen = Counter((r.method, r.operation, r.auth, r.status) for r in oss.requests)
    print(f"\n{label}: {len(oss.requests)} requests, {oss.refused} refused, {len(set(signatures))} signatures verified")
    for (method, operation, auth, status), count in sorted(seen.items()):
        print(f"  {count:4d} x {method} {operation} ({auth}) -> {status}")


def scan(home: Path, result: Any, signatures: list[str]) -> None:
    """Nothing Airflow wrote or printed holds the secret or a signature."""
    texts = [result.stdout, result.stderr]
    texts += [p.read_text(errors="replace") for p in home.rglob("*") if p.is_file() and p.suffix != ".db"]
    texts.append((home / "airflow.db").read_bytes().decode("latin-1"))
    blob = "\n".join(texts)
    assert SECRET not in blob
    assert "x-oss-signature=" not in blob.lower() and "x-oss-credential=" not in blob.lower()
    assert API_KEY not in blob
    assert signatures
    for signature in set(signatures):
        assert signature not in blob


def test_the_pipeline_reads_private_oss_images_and_saves_to_oss(emulator, oss, airflow, signatures):
    home, env = airflow
    conf = {
        "person_image_url": uri("person.png"),
        "top_garment_url": uri("top.png"),
        "bottom_garment_url": uri("bottom.png"),
        "output": f"oss://{BUCKET}/runs",
    }
    result = dags_test(env, "aitryon_pipeline", conf, timeout=600)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    assert set(task_states(home, "aitryon_pipeline").values()) == {"success"}

    saved = {name: xcom_value(home, "aitryon_pipeline", name) for name in ("save_coarse", "save_refined")}
    for record in saved.values():
        assert record["uri"].startswith(f"oss://{BUCKET}/runs/")
        data = oss.objects[record["uri"][len("oss://") :]]
        assert data[:4] == b"\x89PNG" and hashlib.sha256(data).hexdigest() == record["sha256"]
    sheet = xcom_value(home, "aitryon_pipeline", "contact_sheet")
    assert oss.objects[sheet["uri"][len("oss://") :]][:4] == b"\x89PNG"
    assert not [key for key in oss.objects if key.endswith(".part")]  # atomic writes left nothing behind

    reads = [r for r in oss.requests if (r.key or "").startswith("models/")]
    # Pre-flight and DashScope GET presigned URLs; the contact sheet reads through the file system
    # (header-signed). Never a HEAD on a URL signed for GET.
    allowed = {("GET", "presigned"), ("GET", "header"), ("HEAD", "header")}
    assert reads and {(r.method, r.auth) for r in reads} <= allowed
    assert ("GET", "presigned") in {(r.method, r.auth) for r in reads}
    writes = [r for r in oss.requests if r.method in ("PUT", "POST", "DELETE")]
    assert writes and {r.auth for r in writes} == {"header"}
    assert oss.refused == 0
    assert emulator.stats()["submits_by_model"].get(api.MODEL_REFINER) == 1
    scan(home, result, signatures)
    audit("pipeline", oss, signatures)


def test_a_backfill_partition_with_oss_catalog_inputs_and_output(emulator, oss, airflow, signatures):
    home, env = airflow
    lines = [
        {"sku": f"look-{i}", "person_image_url": uri("person.png"), "top_garment_url": uri("top.png"),
         "bottom_garment_url": uri("bottom.png"), "gender": "woman"}
        for i in range(4)
    ]  # fmt: skip
    lines[3]["person_image_url"] = uri("blank_person.png")  # DashScope refuses: InvalidPerson
    oss.put(BUCKET, "catalogs/2026-01-05.jsonl", "".join(json.dumps(line) + "\n" for line in lines).encode())
    output = f"oss://{BUCKET}/backfill/2026-01-05"
    conf = {"catalog": f"oss://{BUCKET}/catalogs/2026-01-05.jsonl", "output": output, "chunk_size": 2,
            "expected_latency": 0.3}  # fmt: skip
    before = dict(emulator.stats()["submits_by_model"])

    result = dags_test(env, "aitryon_catalog_backfill", conf, timeout=600)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    rows = {
        row["sku"]: row
        for row in map(json.loads, oss.objects[f"{BUCKET}/backfill/2026-01-05/manifest.jsonl"].decode().splitlines())
    }
    assert {sku: row["status"] for sku, row in rows.items()} == {
        "look-0": "succeeded", "look-1": "succeeded", "look-2": "succeeded", "look-3": "failed",
    }  # fmt: skip
    assert rows["look-3"]["code"] == "InvalidPerson"
    for sku in ("look-0", "look-1", "look-2"):
        image = rows[sku]["image"]
        assert image.startswith(f"{output}/images/")
        data = oss.objects[image[len("oss://") :]]
        assert data[:4] == b"\x89PNG"
        if "sha256" in rows[sku]:
            assert hashlib.sha256(data).hexdigest() == rows[sku]["sha256"]
    after = emulator.stats()["submits_by_model"]
    assert after[api.MODEL_TRYON] - before.get(api.MODEL_TRYON, 0) == 4
    assert after[api.MODEL_REFINER] - before.get(api.MODEL_REFINER, 0) == 3
    assert oss.refused == 0
    assert {r.auth for r in oss.requests if (r.key or "").startswith("models/")} <= {"presigned", "header"}
    # The review gallery went to the bucket too, with the private person and garment images as
    # thumbnails (read through the OSS connection) and the counts of the manifest.
    page = oss.objects[f"{BUCKET}/backfill/2026-01-05/report.html"].decode()
    assert page.count('class="item"') == 4 and 'data-succeeded="3"' in page and 'data-failed="1"' in page
    assert page.count('<img class="thumb" data-role="person"') == 4
    summary = json.loads(oss.objects[f"{BUCKET}/backfill/2026-01-05/summary.json"])
    assert summary["charged"]["images"] == {api.MODEL_TRYON: 3, api.MODEL_REFINER: 3}

    rerun = dags_test(env, "aitryon_catalog_backfill", conf, timeout=600)
    assert rerun.returncode == 0, (rerun.stdout + rerun.stderr)[-4000:]
    assert emulator.stats()["submits_by_model"] == after  # nothing paid twice
    scan(home, rerun, signatures)
    # Nor anything written to the bucket: manifests, registry entries, chunk files.
    written = b"\n".join(data for key, data in oss.objects.items() if not key.endswith(".png")).decode(errors="replace")
    assert "x-oss-signature" not in written.lower() and SECRET not in written
    assert not any(signature in written for signature in set(signatures))
    audit("pipeline and backfill", oss, signatures)
    print("  manifest:", {sku: (row["status"], row.get("code")) for sku, row in rows.items()})
