"""A small Python client of the jobs API: submit, follow progress (SSE), download.

    client = VideoClient("http://127.0.0.1:8000")
    job = client.submit(prompt="a cat walks on the grass", size="960x544")
    job = client.wait(job["id"], on_update=lambda j: print(j["progress"]))
    # with LoRA adapters of the server's registry (client.loras()): loras=[{"name": "ink", "scale": 0.8}]
    open("cat.mp4", "wb").write(client.content(job["id"]))
"""

from __future__ import annotations

import json
import mimetypes
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx

from skyreels.models import SERVED_MODEL_IDS
from skyreels.request import Task

TERMINAL = {"completed", "failed", "cancelled"}


class VideoAPIError(RuntimeError):
    def __init__(self, status_code: int, body: dict[str, Any] | str) -> None:
        error = body.get("error", {}) if isinstance(body, dict) else {}
        super().__init__(f"HTTP {status_code}: {error.get('message', body)}")
        self.status_code = status_code
        self.code = error.get("code")
        self.body = body


class JobFailed(RuntimeError):
    def __init__(self, job: dict[str, Any]) -> None:
        error = job.get("error") or {}
        super().__init__(f"job {job['id']} {job['status']}: {error.get('code')}: {error.get('message')}")
        self.job = job


class VideoClient:
    def __init__(self, base_url: str = "http://127.0.0.1:8000", timeout_s: float = 30.0,
                 api_key: str | None = None) -> None:
        """`api_key`: sent as a Bearer token, for a server with API keys."""
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.Client(base_url=base_url, timeout=timeout_s, headers=headers)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> VideoClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def models(self) -> list[str]:
        return [model["id"] for model in self._call("GET", "/v1/models")["data"]]

    def loras(self) -> list[dict[str, Any]]:
        """The server's LoRA adapters (GET /v1/loras): submit names them in `loras=[{"name": ..., "scale": ...}]`."""
        return self._call("GET", "/v1/loras")["data"]

    def submit(self, prompt: str, image: str | Path | bytes | None = None, **fields: Any) -> dict[str, Any]:
        """POST /v1/videos; with `image` (a path or bytes) the job is I2V, sent as multipart."""
        body = {"prompt": prompt, **fields}
        if image is None:
            return self._call("POST", "/v1/videos", json=body)
        body.setdefault("model", SERVED_MODEL_IDS[Task.I2V])
        name = Path(image).name if not isinstance(image, bytes) else "image.png"
        data = image if isinstance(image, bytes) else Path(image).read_bytes()
        mime = mimetypes.guess_type(name)[0] or "application/octet-stream"
        form = {key: json.dumps(value) if isinstance(value, list | dict) else str(value) for key, value in body.items()}
        return self._call("POST", "/v1/videos", data=form, files={"input_reference": (name, data, mime)})

    def get(self, job_id: str) -> dict[str, Any]:
        return self._call("GET", f"/v1/videos/{job_id}")

    def list(self, limit: int = 20, after: str | None = None) -> dict[str, Any]:
        params = {"limit": limit} | ({"after": after} if after else {})
        return self._call("GET", "/v1/videos", params=params)

    def cancel(self, job_id: str) -> dict[str, Any]:
        return self._call("POST", f"/v1/videos/{job_id}/cancel")

    def delete(self, job_id: str) -> dict[str, Any]:
        return self._call("DELETE", f"/v1/videos/{job_id}")

    def events(self, job_id: str, timeout_s: float | None = None) -> Iterator[dict[str, Any]]:
        """The job after every change, until it ends (server-sent events)."""
        with self._http.stream("GET", f"/v1/videos/{job_id}/events", timeout=timeout_s) as response:
            if response.status_code != 200:
                response.read()
                raise VideoAPIError(response.status_code, _body(response))
            for line in response.iter_lines():
                if line.startswith("data: "):
                    yield json.loads(line.removeprefix("data: "))

    def wait(
        self,
        job_id: str,
        on_update: Callable[[dict[str, Any]], None] | None = None,
        timeout_s: float | None = None,
        raise_on_failure: bool = True,
    ) -> dict[str, Any]:
        """Follows the job to its end; raises JobFailed when it failed or was cancelled."""
        job = self.get(job_id)
        if job["status"] not in TERMINAL:
            for job in self.events(job_id, timeout_s=timeout_s):
                if on_update is not None:
                    on_update(job)
        if raise_on_failure and job["status"] != "completed":
            raise JobFailed(job)
        return job

    def content(self, job_id: str, variant: str = "video") -> bytes:
        response = self._http.get(f"/v1/videos/{job_id}/content", params={"variant": variant})
        if response.status_code != 200:
            raise VideoAPIError(response.status_code, _body(response))
        return response.content

    def _call(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        response = self._http.request(method, path, **kwargs)
        if response.status_code >= 400:
            raise VideoAPIError(response.status_code, _body(response))
        return response.json()


def _body(response: httpx.Response) -> dict[str, Any] | str:
    try:
        return response.json()
    except ValueError:
        return response.text
