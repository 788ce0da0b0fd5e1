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


# The vendor page's request and response examples (000_bce052fdf375d505.txt), shared by the tests.
VENDOR_INPUT = {
    "top_garment_url": "https://dashscope-swap.oss-cn-beijing.aliyuncs.com/aa-test/sample-top.jpg",
    "bottom_garment_url": "https://dashscope-swap.oss-cn-beijing.aliyuncs.com/aa-test/sample-bottom.jpg",
    "person_image_url": "https://dashscope-swap.oss-cn-beijing.aliyuncs.com/aa-test/sample-person.png",
    "coarse_image_url": "https://dashscope-swap.oss-cn-beijing.aliyuncs.com/aa-test/result.png",
}
VENDOR_SUBMITTED = {
    "output": {"task_id": "a8532587-fa8c-4ef8-82be-0c46b17950d1", "task_status": "PENDING"},
    "request_id": "7574ee8f-38a3-4b1e-9280-11c33ab46e51",
}
