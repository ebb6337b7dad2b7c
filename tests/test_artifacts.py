import uuid
from pathlib import Path

import fsspec
import pytest

from skyreels.artifacts import INPUT_IMAGE, THUMBNAIL, VIDEO, ArtifactStore


@pytest.fixture(params=["local", "memory"])
def store(request, tmp_path: Path):
    if request.param == "local":
        yield ArtifactStore(str(tmp_path / "artifacts"))
        return
    url = f"memory://artifacts-{uuid.uuid4().hex}"
    yield ArtifactStore(url)
    fs = fsspec.filesystem("memory")
    if fs.exists(url):
        fs.rm(url, recursive=True)


def test_roundtrip(store: ArtifactStore):
    store.put("video_1", VIDEO, b"mp4 bytes")
    store.put("video_1", THUMBNAIL, b"jpg")
    assert store.get("video_1", VIDEO) == b"mp4 bytes"
    assert store.exists("video_1", THUMBNAIL)
    assert not store.exists("video_1", INPUT_IMAGE)
    assert not store.exists("video_2", VIDEO)
    assert store.size("video_1", VIDEO) == len(b"mp4 bytes")

    store.put("video_1", VIDEO, b"replaced")
    assert store.get("video_1", VIDEO) == b"replaced"


def test_missing_artifacts(store: ArtifactStore):
    with pytest.raises(FileNotFoundError):
        store.get("nope", VIDEO)
    with pytest.raises(FileNotFoundError):
        store.size("nope", VIDEO)


def test_delete_removes_only_that_job(store: ArtifactStore):
    store.put("a", VIDEO, b"1")
    store.put("a", THUMBNAIL, b"2")
    store.put("b", VIDEO, b"3")
    store.delete("a")
    assert not store.exists("a", VIDEO)
    assert not store.exists("a", THUMBNAIL)
    assert store.get("b", VIDEO) == b"3"
    store.delete("a")  # absent: no error


def test_local_layout_and_no_leftover_temp_files(tmp_path: Path):
    store = ArtifactStore(str(tmp_path / "out"))
    store.put("job-1", VIDEO, b"x" * 1000)
    assert sorted(p.name for p in (tmp_path / "out" / "job-1").iterdir()) == [VIDEO]
    assert (tmp_path / "out" / "job-1" / VIDEO).read_bytes() == b"x" * 1000


def test_file_url_is_local(tmp_path: Path):
    store = ArtifactStore(f"file://{tmp_path}/out")
    store.put("j", INPUT_IMAGE, b"png")
    assert (tmp_path / "out" / "j" / INPUT_IMAGE).read_bytes() == b"png"


def test_memory_layout():
    url = f"memory://layout-{uuid.uuid4().hex}"
    ArtifactStore(url).put("j", VIDEO, b"v")
    fs = fsspec.filesystem("memory")
    try:
        assert fs.cat_file(f"{url}/j/{VIDEO}") == b"v"
    finally:
        fs.rm(url, recursive=True)


BAD_SEGMENTS = ["", ".", "..", "../x", "a/b", "a\\b", "/abs", "a..b", ".hidden", "a\x00"]


@pytest.mark.parametrize("bad", BAD_SEGMENTS)
def test_path_traversal_refused(store: ArtifactStore, bad: str):
    with pytest.raises(ValueError):
        store.put(bad, VIDEO, b"x")
    with pytest.raises(ValueError):
        store.get("job", bad)
    with pytest.raises(ValueError):
        store.exists(bad, VIDEO)
    with pytest.raises(ValueError):
        store.size("job", bad)
    with pytest.raises(ValueError):
        store.delete(bad)
