"""Rough edges a new user hits: example DAG defaults that work, and odd settings said in one sentence."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

import pytest
import requests
from conftest import FakeTI, set_connection

from airflow_provider_aitryon.catalog import plan_chunks
from airflow_provider_aitryon.errors import DashScopeConfigError
from airflow_provider_aitryon.failures import AirflowFailException
from airflow_provider_aitryon.operators.refiner import RefinerSubmitOperator
from airflow_provider_aitryon.operators.storage import SaveTryOnResultOperator

REPO = Path(__file__).resolve().parent.parent


def load_dag(name: str, monkeypatch: pytest.MonkeyPatch, samples: str) -> Any:
    monkeypatch.setenv("AITRYON_SAMPLES_URL", samples)
    spec = importlib.util.spec_from_file_location(f"example_{name}", REPO / "dags" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)
    spec.loader.exec_module(module)
    return module.dag


@pytest.mark.parametrize("name", ["aitryon_refine", "aitryon_pipeline"])
def test_every_default_image_of_the_example_dags_exists_on_the_emulator(emu, monkeypatch, name):
    dag = load_dag(name, monkeypatch, emu.base_url + "/samples")
    urls = [param.value for param in dag.params.values() if isinstance(param.value, str) and "/samples/" in param.value]
    assert urls
    for url in urls:
        response = requests.get(url, timeout=10)
        assert response.status_code == 200, url
        assert response.content[:8] == b"\x89PNG\r\n\x1a\n", url


def test_the_refine_dag_defaults_refine_out_of_the_box(emu, monkeypatch):
    set_connection(monkeypatch, emu.base_url)
    params = {key: param.value for key, param in load_dag("aitryon_refine", monkeypatch, emu.base_url + "/samples")
              .params.items()}  # fmt: skip
    op = RefinerSubmitOperator(
        task_id="submit_refiner", wait_for_completion=True, deferrable=False, poll_interval=0.2,
        person_image_url=params["person_image_url"], top_garment_url=params["top_garment_url"],
        bottom_garment_url=params["bottom_garment_url"], coarse_image_url=params["coarse_image_url"],
        gender=params["gender"],
    )  # fmt: skip
    result = op.execute({"ti": FakeTI()})  # pre-flight checks the coarse image against the person's size too
    assert result["task_status"] == "SUCCEEDED"


@pytest.fixture
def catalog(tmp_path: Path) -> str:
    line = '{"sku": "a", "person_image_url": "http://x/p.png", "top_garment_url": "http://x/t.png", "gender": "woman"}'
    path = tmp_path / "catalog.jsonl"
    path.write_text(line + "\n")
    return str(path)


@pytest.mark.parametrize(
    ("output", "says"),
    [
        ("", "output is missing"),
        ("   ", "output is missing"),
        ("{tmp}/catalog.jsonl", "because {tmp}/catalog.jsonl is a file"),
        ("{tmp}/catalog.jsonl/sub", "because {tmp}/catalog.jsonl is a file"),
        ("/proc/aitryon-output", "cannot be written by this worker"),
        ("s3://bucket/looks", "install apache-airflow-providers-amazon[s3fs] on every worker"),
        ("gs://bucket/looks", "install apache-airflow-providers-google on every worker"),
        ("foo://bucket/looks", "foo://, which no installed Airflow provider supports"),
        ("https://user:secret@host/looks?signature=abc", "output https://host/looks is an https URL, which cannot"),
    ],
)
def test_an_odd_backfill_output_is_one_sentence(catalog, tmp_path, output, says):
    with pytest.raises(DashScopeConfigError) as raised:
        plan_chunks(catalog, output.format(tmp=tmp_path), holder="dag/run")
    message = str(raised.value)
    assert says.format(tmp=tmp_path) in message
    assert message.count(". ") == 0 and message.endswith(".")
    assert "secret" not in message and "signature" not in message
    assert not (tmp_path / "registry").exists()


def test_a_relative_backfill_output_becomes_absolute(catalog, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (chunk,) = plan_chunks(catalog, "partition", holder="dag/run")
    assert chunk.startswith(str(tmp_path / "partition" / "chunks") + "/")


def test_saving_to_a_store_without_its_provider_is_one_sentence(emu):
    op = SaveTryOnResultOperator(task_id="save", image_url=emu.sample_url("person.png"), destination="s3://bucket/a/")
    with pytest.raises((AirflowFailException, DashScopeConfigError), match=r"install apache-airflow-providers-amazon"):
        op.execute({})
