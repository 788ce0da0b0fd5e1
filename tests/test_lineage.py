"""OpenLineage facets of the submit, save and catalog operators, run for real against the emulator.

The openlineage provider is in the ``dev`` extra; the tests that need it skip (visibly) without it.
Names follow `airflow_provider_aitryon.lineage`: ``https://host`` + path for image URLs (never the
query string), ``file`` + absolute path for local files, ``s3://bucket`` + key for object stores.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from airflow.sdk import Asset
from conftest import API_KEY, FakeTI, quiet_emulator_config, set_connection
from packaging.version import Version

from airflow_provider_aitryon import compat, lineage
from airflow_provider_aitryon.budget import forget_budgets
from airflow_provider_aitryon.catalog import merge_manifest, plan_chunks, read_catalog
from airflow_provider_aitryon.compat import TaskDeferred
from airflow_provider_aitryon.emulator import Emulator
from airflow_provider_aitryon.operators.batch import RefineCatalogChunkOperator
from airflow_provider_aitryon.operators.refiner import RefinerSubmitOperator
from airflow_provider_aitryon.operators.storage import SaveTryOnResultOperator
from airflow_provider_aitryon.operators.tryon import TryOnSubmitOperator
from airflow_provider_aitryon.sensors.refiner import RefinerTaskSensor

# What an OSS-signed URL carries: none of it may reach a lineage backend.
SIGNATURE = "Expires=1767225600&OSSAccessKeyId=LTAI5tSECRETKEYID&Signature=c2VjcmV0LXNpZ25hdHVyZQ%3D%3D"
SECRETS = (API_KEY, "LTAI5tSECRETKEYID", "c2VjcmV0LXNpZ25hdHVyZQ", "Signature", "Expires")

needs_openlineage = pytest.mark.skipif(
    not lineage.openlineage_available(), reason="the openlineage provider is not installed (pip install '.[dev]')"
)


@pytest.fixture
def emulator(monkeypatch: pytest.MonkeyPatch) -> Iterator[Emulator]:
    forget_budgets()
    with Emulator(quiet_emulator_config()) as emu:
        set_connection(monkeypatch, emu.base_url)
        yield emu
    forget_budgets()


def signed(url: str) -> str:
    return f"{url}?{SIGNATURE}"


def names(datasets: list[Any]) -> list[tuple[str, str]]:
    return [(d.namespace, d.name) for d in datasets]


def as_json(ol: Any) -> str:
    """Everything a lineage backend would receive from these facets, as the OpenLineage client sends it."""
    from openlineage.client.serde import Serde

    parts = [Serde.to_json(d) for d in [*ol.inputs, *ol.outputs]]
    parts += [f"{k}: {Serde.to_json(v)}" for k, v in {**ol.run_facets, **ol.job_facets}.items()]
    return "\n".join(parts)


def assert_no_secrets(ol: Any) -> None:
    text = as_json(ol)
    for secret in SECRETS:
        assert secret not in text, f"{secret!r} leaked into lineage:\n{text}"
    for dataset in [*ol.inputs, *ol.outputs]:
        assert "?" not in dataset.name and "#" not in dataset.name and "@" not in dataset.namespace


def emulator_dataset(emu: Emulator, path: str) -> tuple[str, str]:
    return emu.base_url.rstrip("/"), path


def result_dataset(image_url: str, task_id: str) -> tuple[str, str]:
    """What a DashScope result URL names: its origin and path (worked out here, not by the module)."""
    parts = urlsplit(image_url)
    assert task_id in parts.path
    return f"{parts.scheme}://{parts.netloc}", parts.path


# ------------------------------------------------------------------------------------ naming


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (
            "https://dashscope-result-bj.oss-cn-beijing.aliyuncs.com/1d/a/b.png?" + SIGNATURE,
            ("https://dashscope-result-bj.oss-cn-beijing.aliyuncs.com", "/1d/a/b.png"),
        ),
        (
            "http://user:password@127.0.0.1:8089/samples/person.png#top",
            ("http://127.0.0.1:8089", "/samples/person.png"),
        ),
        ("HTTPS://Img.Example.COM:443/Person.PNG", ("https://img.example.com", "/Person.PNG")),
        ("http://[::1]:8080/x.png", ("http://[::1]:8080", "/x.png")),
        ("https://img.example.com", ("https://img.example.com", "/")),
    ],
)
def test_url_datasets_are_host_and_path_only(url, expected):
    assert lineage.url_dataset(url) == expected


@pytest.mark.parametrize("url", [None, "", "ftp://host/x.png", "/local/x.png", "https://", 42])
def test_what_is_not_an_http_url_is_no_dataset(url):
    assert lineage.url_dataset(url) is None


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("/data/out/a.png", ("file", "/data/out/a.png")),
        ("file:///data/out/a.png", ("file", "/data/out/a.png")),
        ("file:///data/out/", ("file", "/data/out")),
        ("file://nas01/share/a.png", ("file://nas01", "/share/a.png")),
        ("s3://bucket/tryon/a.png", ("s3://bucket", "tryon/a.png")),
        ("s3://aws_conn@bucket/tryon/a.png", ("s3://bucket", "tryon/a.png")),
        ("s3a://bucket/tryon/", ("s3://bucket", "tryon")),
        ("gcs://bucket/a.png", ("gs://bucket", "a.png")),
        ("gs://bucket", ("gs://bucket", "/")),
        ("abfs://container/a.png", ("abfs://container", "a.png")),
    ],
)
def test_storage_datasets_follow_airflows_converters(target, expected):
    assert lineage.storage_dataset(target) == expected


def test_a_relative_path_is_named_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert lineage.storage_dataset("out/a.png") == ("file", f"{tmp_path}/out/a.png")


# ------------------------------------------------------------------------------------ submit operators


def tryon(emu: Emulator, **overrides: Any) -> TryOnSubmitOperator:
    kwargs: dict[str, Any] = {
        "task_id": "submit",
        "person_image_url": signed(emu.sample_url("person.png")),
        "top_garment_url": signed(emu.sample_url("top.png")),
        "bottom_garment_url": signed(emu.sample_url("bottom.png")),
        "validate_inputs": False,
        "wait_for_completion": True,
        "deferrable": False,
        "poll_interval": 0.05,
    }
    kwargs.update(overrides)
    return TryOnSubmitOperator(**kwargs)


@needs_openlineage
def test_tryon_and_refiner_lineage_joins_through_the_coarse_result(emulator):
    coarse_op = tryon(emulator)
    start = coarse_op.get_openlineage_facets_on_start()
    ti = FakeTI()
    coarse = coarse_op.execute({"ti": ti})
    done = coarse_op.get_openlineage_facets_on_complete(FakeTI())

    samples = [emulator_dataset(emulator, f"/samples/{n}.png") for n in ("person", "top", "bottom")]
    assert names(start.inputs) == samples and start.outputs == [] and start.run_facets == {}
    assert names(done.inputs) == samples
    coarse_out = result_dataset(coarse["image_url"], coarse["task_id"])
    assert names(done.outputs) == [coarse_out]

    task = done.run_facets["dashscopeTask"]
    assert (task.taskId, task.model, task.taskStatus, task.adopted) == (
        coarse["task_id"],
        "aitryon",
        "SUCCEEDED",
        False,
    )
    assert task.requestId and task.requestId == ti.pushed["request_id"]  # the submit's request id
    assert done.run_facets["externalQuery"].externalQueryId == coarse["task_id"]
    assert done.run_facets["externalQuery"].source == emulator.base_url.rstrip("/")
    assert_no_secrets(done)

    # The refiner reads the coarse result: its input is the dataset the try-on wrote, signature or not.
    refine_op = RefinerSubmitOperator(
        task_id="refine",
        person_image_url=signed(emulator.sample_url("person.png")),
        top_garment_url=signed(emulator.sample_url("top.png")),
        bottom_garment_url=signed(emulator.sample_url("bottom.png")),
        coarse_image_url=signed(coarse["image_url"]),
        validate_inputs=False,
        wait_for_completion=True,
        deferrable=False,
        poll_interval=0.05,
    )
    refined = refine_op.execute({"ti": FakeTI()})
    refine = refine_op.get_openlineage_facets_on_complete(FakeTI())
    assert names(refine.inputs) == [*samples, coarse_out]
    assert names(refine.outputs) == [result_dataset(refined["image_url"], refined["task_id"])]
    assert refine.run_facets["dashscopeTask"].model == "aitryon-refiner"
    assert_no_secrets(refine)


@needs_openlineage
def test_the_request_id_is_the_submits_and_no_api_key_is_anywhere(emulator):
    op = tryon(emulator, wait_for_completion=False)
    ti = FakeTI()
    task_id = op.execute({"ti": ti})
    done = op.get_openlineage_facets_on_complete(ti)
    task = done.run_facets["dashscopeTask"]
    assert task.taskId == task_id == ti.pushed["dashscope_task_id"]
    assert task.requestId == ti.pushed["request_id"] and task.requestId
    assert task.taskStatus == "PENDING"  # submitted, not waited for: no result dataset yet
    assert done.outputs == []
    assert len(done.inputs) == 3
    assert_no_secrets(done)


@needs_openlineage
def test_a_deferred_wait_reports_its_result_after_resuming(emulator):
    op = tryon(emulator, deferrable=True)
    with pytest.raises(TaskDeferred) as info:
        op.execute({"ti": FakeTI()})

    async def first_event() -> dict[str, Any]:
        async for event in info.value.trigger.run():
            return dict(event.payload)
        raise AssertionError("the trigger yielded nothing")

    event = asyncio.run(first_event())
    # The task resumes in a new process: a fresh operator instance runs execute_complete.
    resumed = tryon(emulator, deferrable=True)
    result = resumed.execute_complete({"ti": FakeTI()}, event)
    done = resumed.get_openlineage_facets_on_complete(FakeTI())
    assert names(done.outputs) == [result_dataset(result["image_url"], result["task_id"])]
    task = done.run_facets["dashscopeTask"]
    assert (task.taskId, task.taskStatus) == (result["task_id"], "SUCCEEDED")
    assert task.requestId  # the submit's, kept by the submission registry across the deferral
    assert_no_secrets(done)


@needs_openlineage
@pytest.mark.parametrize("deferrable", [False, True])
def test_the_sensor_outputs_the_result_that_the_next_tasks_read(emulator, deferrable):
    emulator.update(latency=1.0)  # still running at the first poke: the deferred path defers
    submit = tryon(emulator, wait_for_completion=False)
    task_id = submit.execute({"ti": FakeTI()})
    wait = RefinerTaskSensor(
        task_id="wait", dashscope_task_id=task_id, poke_interval=0.05, timeout=60, deferrable=deferrable
    )
    if not deferrable:
        result = wait.execute({"ti": FakeTI()})
    else:
        with pytest.raises(TaskDeferred) as info:
            wait.execute({"ti": FakeTI()})

        async def first_event() -> dict[str, Any]:
            async for event in info.value.trigger.run():
                return dict(event.payload)
            raise AssertionError("the trigger yielded nothing")

        event = asyncio.run(first_event())
        wait = RefinerTaskSensor(task_id="wait", dashscope_task_id=task_id, poke_interval=0.05, timeout=60)
        result = wait.execute_complete({"ti": FakeTI()}, event)
    done = wait.get_openlineage_facets_on_complete(FakeTI())
    assert done.inputs == []
    assert names(done.outputs) == [result_dataset(result["image_url"], task_id)]
    task = done.run_facets["dashscopeTask"]
    assert (task.taskId, task.taskStatus) == (task_id, "SUCCEEDED")
    assert done.run_facets["externalQuery"].externalQueryId == task_id
    assert_no_secrets(done)


@needs_openlineage
def test_a_task_that_fails_still_names_its_inputs_and_task(emulator):
    op = tryon(emulator, person_image_url=signed(emulator.sample_url("missing.png")))
    with pytest.raises(Exception, match="InvalidURL"):
        op.execute({"ti": FakeTI()})
    # The listener asks get_openlineage_facets_on_complete on failure too (there is no _on_failure).
    failed = op.get_openlineage_facets_on_complete(FakeTI())
    assert names(failed.inputs)[0] == emulator_dataset(emulator, "/samples/missing.png")
    assert failed.outputs == []
    task = failed.run_facets["dashscopeTask"]
    assert task.taskId and task.taskStatus is None  # the wait failed: no status is claimed
    assert_no_secrets(failed)


@needs_openlineage
def test_a_submit_refused_before_sending_reports_no_task(emulator):
    op = tryon(emulator, top_garment_url="not a url", wait_for_completion=False)
    with pytest.raises(Exception, match="top_garment_url"):
        op.execute({"ti": FakeTI()})
    refused = op.get_openlineage_facets_on_complete(FakeTI())
    assert refused.run_facets == {} and refused.outputs == []


# ------------------------------------------------------------------------------------ save operator


def coarse_result(emu: Emulator) -> dict[str, Any]:
    return tryon(emu).execute({"ti": FakeTI()})


@needs_openlineage
def test_the_saved_copy_is_the_output_and_carries_its_size_and_checksum(emulator, tmp_path):
    result = coarse_result(emulator)
    outlet = Asset(uri=f"file://{tmp_path}/published/tryon.png", name="tryon_published")
    op = SaveTryOnResultOperator(
        task_id="save",
        image_url={**result, "image_url": signed(result["image_url"])},  # the sensor's dict, re-signed
        destination=f"{tmp_path}/saved/",
        outlets=[outlet],
    )
    saved = op.execute({"ti": FakeTI()})
    done = op.get_openlineage_facets_on_complete(FakeTI())

    data = Path(saved["uri"]).read_bytes()
    assert names(done.inputs) == [result_dataset(result["image_url"], result["task_id"])]
    written, published = done.outputs
    assert (written.namespace, written.name) == ("file", saved["uri"])
    assert written.outputFacets["outputStatistics"].size == len(data) == saved["bytes"]
    assert written.outputFacets["outputStatistics"].fileCount == 1
    assert written.facets["version"].datasetVersion == hashlib.sha256(data).hexdigest()
    # The Asset outlet is kept: the listener adds outlets only when an operator names no dataset.
    assert (published.namespace, published.name) == ("file", f"{tmp_path}/published/tryon.png")
    assert_no_secrets(done)


@needs_openlineage
@pytest.mark.skipif(
    Version("3.2") > compat.AIRFLOW_VERSION,
    reason="Airflow 3.1's ObjectStoragePath prints memory:// paths as memory:///bucket/key (fsspec's memory root), "
    "naming no bucket; bucket stores (s3://, gs://, oss://) print as bucket/key there too",
)
def test_an_object_store_destination_is_named_by_bucket_and_key(emulator):
    from airflow.sdk.io import attach
    from fsspec.implementations.memory import MemoryFileSystem

    attach("memory", fs=MemoryFileSystem())  # an object store that needs no provider or network
    result = coarse_result(emulator)
    op = SaveTryOnResultOperator(task_id="save", image_url=result, destination="memory://tryon-bucket/results/")
    saved = op.execute({"ti": FakeTI()})
    done = op.get_openlineage_facets_on_complete(FakeTI())
    (written,) = done.outputs
    assert (written.namespace, written.name) == ("memory://tryon-bucket", f"results/{result['task_id']}.png")
    assert saved["uri"] == f"memory://tryon-bucket/results/{result['task_id']}.png"


@needs_openlineage
def test_a_failed_save_names_what_it_read_and_no_output(emulator, tmp_path):
    op = SaveTryOnResultOperator(
        task_id="save", image_url=signed(f"{emulator.base_url}/results/never-made.png"), destination=f"{tmp_path}/"
    )
    with pytest.raises(Exception, match="expired or is not reachable"):
        op.execute({"ti": FakeTI()})
    done = op.get_openlineage_facets_on_complete(FakeTI())
    assert names(done.inputs) == [emulator_dataset(emulator, "/results/never-made.png")]
    assert done.outputs == []
    assert_no_secrets(done)


# ------------------------------------------------------------------------------------ catalog backfill


def write_catalog(path: Path, emu: Emulator, count: int, *, bad_lines: int = 0) -> str:
    lines = [
        json.dumps(
            {
                "sku": f"sku-{i:03d}",
                "person_image_url": signed(emu.sample_url("person.png")),
                "top_garment_url": signed(emu.sample_url("top.png")),
                "gender": "woman",
            }
        )
        for i in range(count)
    ]
    lines += ["{not json"] * bad_lines
    path.write_text("\n".join(lines) + "\n")
    return str(path)


@needs_openlineage
def test_a_catalog_chunk_reports_the_partition_not_its_items(emulator, tmp_path):
    output = str(tmp_path / "backfill" / "2026-01-01")
    (chunk,) = plan_chunks(write_catalog(tmp_path / "catalog.jsonl", emulator, 3), output)
    op = RefineCatalogChunkOperator(task_id="refine_chunk", chunk=chunk, output_dir=output, expected_latency=0.1)

    start = op.get_openlineage_facets_on_start()
    with pytest.raises(TaskDeferred) as info:
        op.execute({})

    async def run_trigger() -> dict[str, Any]:
        events = [event.payload async for event in info.value.trigger.run()]
        assert len(events) == 1
        return dict(events[0])

    counts = op.execute_complete({}, asyncio.run(run_trigger()))
    done = op.get_openlineage_facets_on_complete(FakeTI())

    partition = [("file", f"{output}/chunks")]
    assert names(start.inputs) == names(done.inputs) == partition
    assert (
        names(start.outputs) == names(done.outputs) == [("file", f"{output}/images"), ("file", f"{output}/manifest.d")]
    )
    images, parts = done.outputs
    saved = sorted(p.name for p in (Path(output) / "images").iterdir())
    assert counts["succeeded"] == 3 and len(saved) == 3
    assert images.outputFacets["outputStatistics"].fileCount == 3
    assert parts.outputFacets["outputStatistics"].rowCount == 3
    facet = done.run_facets["dashscopeCatalogChunk"]
    assert (facet.chunk, facet.items, facet.succeeded, facet.failed, facet.undone) == (Path(chunk).stem, 3, 3, 0, 0)
    assert_no_secrets(done)


def _collectors() -> Any:
    """The module holding Airflow's hook lineage collector: the task SDK's, or core's on Airflow 3.1."""
    try:
        import airflow.sdk.lineage as collectors
    except ImportError:  # Airflow 3.1
        import airflow.lineage.hook as collectors  # type: ignore[no-redef]
    return collectors


def _use_collector(monkeypatch: pytest.MonkeyPatch, collector: Any) -> None:
    collectors = _collectors()
    monkeypatch.setattr(collectors, "get_hook_lineage_collector", lambda: collector)
    if hasattr(collectors, "_hook_lineage_collector"):  # Airflow 3.1: the reader looks for this global
        monkeypatch.setattr(collectors, "_hook_lineage_collector", collector)


@pytest.fixture
def hook_lineage(monkeypatch: pytest.MonkeyPatch) -> Any:
    """A real hook lineage collector, as Airflow creates when a lineage reader (OpenLineage) is configured."""
    collector = _collectors().HookLineageCollector()
    _use_collector(monkeypatch, collector)
    return collector


@needs_openlineage
def test_plan_and_finalize_report_partition_datasets_to_hook_lineage(emulator, tmp_path, hook_lineage, monkeypatch):
    from airflow.providers.openlineage.extractors.manager import ExtractorManager

    catalog = write_catalog(tmp_path / "2026-01-01.jsonl", emulator, 5, bad_lines=1)
    output = str(tmp_path / "backfill" / "2026-01-01")

    # plan: many chunks, one dataset for them all.
    chunks = plan_chunks(catalog, output, chunk_size=2)
    assert len(chunks) == 3
    planned = ExtractorManager().get_hook_lineage()
    assert names(planned.inputs) == [("file", catalog)]
    assert names(planned.outputs) == [
        ("file", f"{output}/chunks"),
        ("file", f"{output}/manifest.d"),
        ("file", f"{output}/summary.json"),  # the estimate, written before anything is paid
    ]

    # finalize (in a task process of its own): the catalog and the parts in, the manifest out.
    fresh = type(hook_lineage)()
    _use_collector(monkeypatch, fresh)
    read_catalog(catalog)
    merge_manifest(output)
    finalized = ExtractorManager().get_hook_lineage()
    assert names(finalized.inputs) == [("file", catalog), ("file", f"{output}/manifest.d")]
    assert names(finalized.outputs) == [("file", f"{output}/manifest.jsonl")]


@needs_openlineage
def test_a_saved_image_is_reported_to_hook_lineage_for_task_flow_code(emulator, tmp_path, hook_lineage):
    from airflow.providers.openlineage.extractors.manager import ExtractorManager

    from airflow_provider_aitryon.storage import save_image

    saved = save_image(coarse_result(emulator), f"{tmp_path}/out/")
    collected = ExtractorManager().get_hook_lineage()
    assert names(collected.outputs) == [("file", saved["uri"])]  # the file, not its temporary name


# ------------------------------------------------------------------------------------ without openlineage


def test_without_the_openlineage_provider_the_methods_return_none(emulator, tmp_path, monkeypatch):
    for module in [
        m for m in sys.modules if m == "openlineage" or m.startswith(("openlineage.", "airflow.providers.openlineage"))
    ]:
        monkeypatch.delitem(sys.modules, module)
    for module in (
        "openlineage",
        "openlineage.client",
        "airflow.providers.openlineage",
        "airflow.providers.openlineage.extractors",
    ):
        monkeypatch.setitem(sys.modules, module, None)  # import raises ImportError
    assert not lineage.openlineage_available()

    submit = tryon(emulator)
    result = submit.execute({"ti": FakeTI()})  # runs as before
    assert submit.get_openlineage_facets_on_start() is None
    assert submit.get_openlineage_facets_on_complete(FakeTI()) is None

    save = SaveTryOnResultOperator(task_id="save", image_url=result, destination=f"{tmp_path}/")
    assert Path(save.execute({"ti": FakeTI()})["uri"]).exists()
    assert save.get_openlineage_facets_on_complete(FakeTI()) is None

    chunk = RefineCatalogChunkOperator(task_id="refine_chunk", chunk=f"{tmp_path}/c.jsonl", output_dir=str(tmp_path))
    assert chunk.get_openlineage_facets_on_start() is None
    assert chunk.get_openlineage_facets_on_complete(FakeTI()) is None


# ------------------------------------------------------------------------------------ real Airflow


@needs_openlineage
@pytest.mark.integration
def test_the_openlineage_listener_emits_the_pipelines_lineage(tmp_path):
    """`airflow dags test` of the example pipeline with OpenLineage's file transport: what a backend gets."""
    from harness import airflow_env, dags_test, migrate, task_states

    key = "sk-lineage-SECRET-91c2"
    events_file = tmp_path / "openlineage.jsonl"
    with Emulator(quiet_emulator_config(latency=0.5, api_key=key)) as emu:
        server = emu.base_url.rstrip("/")
        transport = {"type": "file", "log_file_path": str(events_file), "append": True}
        env = airflow_env(
            tmp_path / "home",
            emu.base_url,
            api_key=key,
            AIRFLOW__OPENLINEAGE__TRANSPORT=json.dumps(transport),
            AIRFLOW__OPENLINEAGE__NAMESPACE="aitryon-test",
        )
        migrate(env)
        result = dags_test(env, "aitryon_pipeline", {"output": str(tmp_path / "out")}, timeout=400)
        assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    assert set(task_states(tmp_path / "home", "aitryon_pipeline").values()) == {"success"}

    text = events_file.read_text()
    assert key not in text and "Authorization" not in text
    events = [json.loads(line) for line in text.splitlines() if line.strip()]
    complete = {
        e["job"]["name"].split(".", 1)[1]: e for e in events if e["eventType"] == "COMPLETE" and "." in e["job"]["name"]
    }

    def ios(task: str, side: str) -> list[tuple[str, str]]:
        return [(d["namespace"], d["name"]) for d in complete[task].get(side, [])]

    samples = [(server, f"/samples/{n}.png") for n in ("person", "top", "bottom")]
    assert ios("submit_coarse", "inputs") == samples
    coarse_task = complete["submit_coarse"]["run"]["facets"]["dashscopeTask"]["taskId"]
    (coarse_out,) = ios("wait_for_coarse", "outputs")
    assert coarse_task in coarse_out[1] and "?" not in coarse_out[1]
    assert ios("submit_refiner", "inputs") == [*samples, coarse_out]  # joins through the result
    assert ios("save_coarse", "inputs") == [coarse_out]
    (saved,) = ios("save_refined", "outputs")
    assert saved[0] == "file" and saved[1].endswith("/refined.png") and Path(saved[1]).is_file()
    assert complete["submit_refiner"]["run"]["facets"]["externalQuery"]["source"] == server
