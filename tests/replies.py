"""Canned DashScope answers in the shapes of the spec's examples."""

from __future__ import annotations

from typing import Any

from scripted_server import Reply


def task(status: str, task_id: str = "task-1", **output: Any) -> Reply:
    body: dict[str, Any] = {
        "output": {"task_id": task_id, "task_status": status, **output},
        "request_id": f"req-{status.lower()}",
    }
    if status == "SUCCEEDED":
        body["output"].setdefault("results", {"image_url": "http://results.example/refined.png"})
        body["usage"] = {"image_count": 1}
    return Reply(200, body)


def submitted(task_id: str = "task-1") -> Reply:
    return Reply(200, {"output": {"task_id": task_id, "task_status": "PENDING"}, "request_id": "req-submit"})


def error(status: int, code: str, message: str = "error from the scripted server") -> Reply:
    return Reply(status, {"request_id": f"req-{code}", "code": code, "message": message})
