"""storage.fetch / sha256 and models.weights.resolve_weights against a real local HTTP server."""

from __future__ import annotations

import hashlib
import multiprocessing
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from kubedistill.errors import StorageError, WeightsError
from kubedistill.models.weights import cached_path, resolve_weights
from kubedistill.storage import (
    FileInfo,
    exists,
    fetch,
    is_remote,
    list_files,
    read_bytes,
    sha256_file,
    split_gs_uri,
    write_bytes,
)

PAYLOAD = bytes(range(256)) * 4096 + b"tail"  # ~1 MiB, so copies span several chunks
PAYLOAD_SHA = hashlib.sha256(PAYLOAD).hexdigest()
WRONG_SHA = "0" * 64


@dataclass
class FileServer:
    """Serves ``files`` (path -> bytes) on 127.0.0.1 and counts GET requests per path."""

    files: dict[str, bytes]
    delay_s: float = 0.0
    overstate: dict[str, int] = field(default_factory=dict)  # path -> bytes the Content-Length lies by
    hits: Counter = field(default_factory=Counter)
    port: int = 0

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"


def _handler_for(server: FileServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            server.hits[self.path] += 1
            body = server.files.get(self.path)
            if body is None:
                self.send_error(404)
                return
            time.sleep(server.delay_s)  # widens the window in which concurrent downloads would overlap
            self.send_response(200)
            self.send_header("Content-Length", str(len(body) + server.overstate.get(self.path, 0)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    return Handler


@pytest.fixture
def http_server() -> Iterator[FileServer]:
    state = FileServer(files={"/w/model.pth": PAYLOAD, "/v2/model.pth": PAYLOAD})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(state))
    state.port = httpd.server_address[1]
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield state
    httpd.shutdown()
    httpd.server_close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".part"))


# --- storage -------------------------------------------------------------------------------------------


def test_is_remote() -> None:
    assert is_remote("https://x/y.pth") and is_remote("http://x/y") and is_remote("gs://b/o")
    assert not is_remote("/tmp/y.pth") and not is_remote("file:///tmp/y.pth") and not is_remote("rel/y.pth")


def test_sha256_file_streams_the_whole_file(tmp_path: Path) -> None:
    path = tmp_path / "f.bin"
    path.write_bytes(PAYLOAD)
    assert sha256_file(path) == PAYLOAD_SHA


def test_fetch_http_writes_dest_atomically(http_server: FileServer, tmp_path: Path) -> None:
    dest = tmp_path / "sub" / "model.pth"
    assert fetch(http_server.url("/w/model.pth"), dest, sha256=PAYLOAD_SHA.upper()) == dest
    assert dest.read_bytes() == PAYLOAD
    assert _leftovers(dest.parent) == []


def test_fetch_sha256_mismatch_raises_and_leaves_nothing(http_server: FileServer, tmp_path: Path) -> None:
    dest = tmp_path / "model.pth"
    with pytest.raises(StorageError, match=f"expected {WRONG_SHA}, got {PAYLOAD_SHA}"):
        fetch(http_server.url("/w/model.pth"), dest, sha256=WRONG_SHA)
    assert list(tmp_path.iterdir()) == []


def test_fetch_malformed_sha256_fails_before_downloading(http_server: FileServer, tmp_path: Path) -> None:
    with pytest.raises(StorageError, match="not a sha256 digest"):
        fetch(http_server.url("/w/model.pth"), tmp_path / "m.pth", sha256="abc")
    assert http_server.hits == Counter()


def test_fetch_404_names_the_url(http_server: FileServer, tmp_path: Path) -> None:
    url = http_server.url("/missing.pth")
    with pytest.raises(StorageError, match=f"{url} failed: HTTP 404"):
        fetch(url, tmp_path / "m.pth")
    assert list(tmp_path.iterdir()) == []


def test_fetch_cut_short_download_is_an_error(http_server: FileServer, tmp_path: Path) -> None:
    http_server.overstate["/w/model.pth"] = 1000  # the connection closes before the announced length
    url = http_server.url("/w/model.pth")
    with pytest.raises(StorageError, match=url):
        fetch(url, tmp_path / "m.pth")
    assert list(tmp_path.iterdir()) == []


def test_fetch_unreachable_url_names_it(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{_free_port()}/model.pth"
    with pytest.raises(StorageError, match=f"Cannot download {url}.*local path or a gs:// URI"):
        fetch(url, tmp_path / "m.pth")


@pytest.mark.parametrize("as_uri", [False, True], ids=["path", "file-uri"])
def test_fetch_local_file(tmp_path: Path, as_uri: bool) -> None:
    src = tmp_path / "src.pth"
    src.write_bytes(PAYLOAD)
    dest = fetch(src.as_uri() if as_uri else str(src), tmp_path / "out" / "dst.pth", sha256=PAYLOAD_SHA)
    assert dest.read_bytes() == PAYLOAD


def test_fetch_missing_local_file(tmp_path: Path) -> None:
    with pytest.raises(StorageError, match="nope.pth does not exist"):
        fetch(str(tmp_path / "nope.pth"), tmp_path / "dst.pth")
    assert list(tmp_path.iterdir()) == []


def test_split_gs_uri() -> None:
    assert split_gs_uri("gs://bucket/a/b.pth") == ("bucket", "a/b.pth")
    with pytest.raises(StorageError, match="gs://BUCKET/PATH"):
        split_gs_uri("gs://bucket-only")


# --- resolve_weights -----------------------------------------------------------------------------------


def test_resolve_downloads_once_then_uses_the_cache(http_server: FileServer, tmp_path: Path) -> None:
    url = http_server.url("/w/model.pth")
    first = resolve_weights(url, sha256=PAYLOAD_SHA, cache_dir=tmp_path)
    second = resolve_weights(url, sha256=PAYLOAD_SHA, cache_dir=tmp_path)
    assert first == second and first.read_bytes() == PAYLOAD
    assert first.parent == tmp_path / "weights" and first.name.startswith("model-") and first.suffix == ".pth"
    assert http_server.hits["/w/model.pth"] == 1


def test_cache_names_do_not_clash_for_one_basename(http_server: FileServer, tmp_path: Path) -> None:
    a = cached_path(http_server.url("/w/model.pth"), tmp_path)
    b = cached_path(http_server.url("/v2/model.pth"), tmp_path)
    assert a != b and a.parent == b.parent


def test_cache_dir_from_environment(http_server: FileServer, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("KUBEDISTILL_CACHE_DIR", str(tmp_path / "env-cache"))
    path = resolve_weights(http_server.url("/w/model.pth"))
    assert path.parent == tmp_path / "env-cache" / "weights"


def test_corrupt_cached_file_is_downloaded_again(http_server: FileServer, tmp_path: Path) -> None:
    url = http_server.url("/w/model.pth")
    path = resolve_weights(url, cache_dir=tmp_path)
    path.write_bytes(b"truncated")
    assert resolve_weights(url, cache_dir=tmp_path).read_bytes() == b"truncated"  # no sha256: trusted
    assert resolve_weights(url, sha256=PAYLOAD_SHA, cache_dir=tmp_path).read_bytes() == PAYLOAD
    assert http_server.hits["/w/model.pth"] == 2


def test_resolve_mismatch_leaves_no_cached_file(http_server: FileServer, tmp_path: Path) -> None:
    url = http_server.url("/w/model.pth")
    with pytest.raises(WeightsError, match="sha256 mismatch"):
        resolve_weights(url, sha256=WRONG_SHA, cache_dir=tmp_path)
    assert not cached_path(url, tmp_path).exists()
    assert _leftovers(tmp_path / "weights") == []


def test_resolve_local_path_in_place_with_sha256(tmp_path: Path) -> None:
    src = tmp_path / "local.pth"
    src.write_bytes(PAYLOAD)
    assert resolve_weights(str(src), sha256=PAYLOAD_SHA, cache_dir=tmp_path / "c") == src
    with pytest.raises(WeightsError, match=f"sha256 mismatch for {src}: expected {WRONG_SHA}"):
        resolve_weights(str(src), sha256=WRONG_SHA)
    with pytest.raises(WeightsError, match="does not exist"):
        resolve_weights(str(tmp_path / "missing.pth"))
    assert not (tmp_path / "c").exists()


def _resolve_after_barrier(barrier, url: str, cache_dir: str, results) -> None:
    barrier.wait(timeout=120)  # all processes start resolving together, after their (slow) imports
    results.put(str(resolve_weights(url, sha256=PAYLOAD_SHA, cache_dir=cache_dir)))


def test_concurrent_processes_download_once(http_server: FileServer, tmp_path: Path) -> None:
    http_server.delay_s = 0.5  # without the lock, every process would be mid-download at once
    ctx = multiprocessing.get_context("spawn")
    n = 2
    barrier, results = ctx.Barrier(n), ctx.Queue()
    args = (barrier, http_server.url("/w/model.pth"), str(tmp_path), results)
    procs = [ctx.Process(target=_resolve_after_barrier, args=args) for _ in range(n)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=180)
    assert [p.exitcode for p in procs] == [0] * n
    paths = {results.get(timeout=5) for _ in range(n)}
    assert len(paths) == 1 and Path(paths.pop()).read_bytes() == PAYLOAD
    assert http_server.hits["/w/model.pth"] == 1


# --- gs:// against the fake-gcs-server emulator (a real server process on 127.0.0.1) ----------------------------------


@pytest.fixture
def weights_bucket(gcs_bucket) -> str:
    """A bucket on the session's emulator (see conftest.py) holding teachers/model.pth."""
    gcs_bucket.blob("teachers/model.pth").upload_from_string(PAYLOAD)
    return gcs_bucket.name


def test_fetch_gs_object(weights_bucket: str, tmp_path: Path) -> None:
    dest = fetch(f"gs://{weights_bucket}/teachers/model.pth", tmp_path / "m.pth", sha256=PAYLOAD_SHA)
    assert dest.read_bytes() == PAYLOAD


def test_fetch_gs_missing_object_and_bucket(weights_bucket: str, tmp_path: Path) -> None:
    with pytest.raises(StorageError, match=f"not found: the bucket '{weights_bucket}' or the object 'nope.pth'"):
        fetch(f"gs://{weights_bucket}/nope.pth", tmp_path / "m.pth")
    with pytest.raises(StorageError, match="gs://no-such-bucket/x.pth not found"):
        fetch("gs://no-such-bucket/x.pth", tmp_path / "m.pth")
    assert list(tmp_path.iterdir()) == []


def test_fetch_gs_without_credentials_says_how_to_log_in(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("STORAGE_EMULATOR_HOST", raising=False)
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "missing-key.json"))
    with pytest.raises(StorageError, match="GOOGLE_APPLICATION_CREDENTIALS.*gcloud auth application-default"):
        fetch("gs://bucket/model.pth", tmp_path / "m.pth")


# --- the storage interface: list / read / write / exists, local and gs:// ---------------------------------------


def test_local_list_read_write_exists(tmp_path: Path) -> None:
    write_bytes(str(tmp_path / "a" / "b" / "c.bin"), b"abc")  # parents created
    write_bytes(str(tmp_path / ".hidden"), b"h")
    (tmp_path / "link.bin").symlink_to(tmp_path / "gone.bin")
    listed = list_files(str(tmp_path))
    assert [(f.uri, f.size) for f in listed] == [
        (str(tmp_path / ".hidden"), 1),
        (str(tmp_path / "a" / "b" / "c.bin"), 3),
        (str(tmp_path / "link.bin"), 0),  # dangling: listed, so that reading it says why
    ]
    assert list_files(str(tmp_path / "a" / "b" / "c.bin")) == [FileInfo(str(tmp_path / "a" / "b" / "c.bin"), 3)]
    assert read_bytes(str(tmp_path / "a" / "b" / "c.bin")) == b"abc"
    assert exists(str(tmp_path / "a")) and not exists(str(tmp_path / "zzz"))
    with pytest.raises(StorageError, match=f"{tmp_path / 'link.bin'} does not exist"):
        read_bytes(str(tmp_path / "link.bin"))
    with pytest.raises(StorageError, match=f"{tmp_path / 'nope'} does not exist: check the path"):
        list_files(str(tmp_path / "nope"))
    write_bytes(str(tmp_path / "a" / "b" / "c.bin"), b"new")
    assert read_bytes(str(tmp_path / "a" / "b" / "c.bin")) == b"new"
    assert not [p for p in (tmp_path / "a" / "b").iterdir() if p.name.endswith(".part")]


def test_gcs_list_read_write_exists(gcs_bucket) -> None:
    names = [f"data/class{c}/img{i}.jpg" for c in range(5) for i in range(30)] + ["data/top.jpg", "data/.hidden"]
    for name in names:
        gcs_bucket.blob(name).upload_from_string(name.encode())
    gcs_bucket.blob("data/empty_folder/").upload_from_string(b"")  # a console "folder" placeholder
    gcs_bucket.blob("datax/other.jpg").upload_from_string(b"not under data/")
    root = f"gs://{gcs_bucket.name}/data"
    listed = list_files(root)
    assert [f.uri for f in listed] == sorted(f"gs://{gcs_bucket.name}/{n}" for n in names)
    assert all(f.size == len(f.uri.split("/", 3)[3]) for f in listed)
    assert list_files(root + "/") == listed
    one = f"gs://{gcs_bucket.name}/data/top.jpg"
    assert list_files(one) == [FileInfo(one, len(b"data/top.jpg"))]
    assert read_bytes(one) == b"data/top.jpg"
    write_bytes(f"gs://{gcs_bucket.name}/out/x.json", b"{}")
    assert exists(f"gs://{gcs_bucket.name}/out/x.json") and not exists(f"gs://{gcs_bucket.name}/out/y.json")
    assert list_files(f"gs://{gcs_bucket.name}/nothing-here") == []
    with pytest.raises(StorageError, match="the bucket 'missing-bucket' does not exist"):
        list_files("gs://missing-bucket/data")
    with pytest.raises(StorageError, match=f"not found: the bucket '{gcs_bucket.name}' or the object 'data/no.jpg'"):
        read_bytes(f"gs://{gcs_bucket.name}/data/no.jpg")


def test_gcs_permission_denied_names_the_role(monkeypatch) -> None:
    """The emulator has no access control, so a stand-in HTTP server answers every request with GCS's 403 body.
    Everything else (client, retries, error translation) is the real code path."""

    class Deny(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            body = b'{"error": {"code": 403, "message": "caller does not have storage.objects.list access"}}'
            self.send_response(403)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_POST = do_GET  # noqa: N815

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Deny)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", f"http://127.0.0.1:{server.server_address[1]}")
        with pytest.raises(StorageError, match="Permission denied to list gs://private/data .*roles/storage.objectViewer"):
            list_files("gs://private/data")
        with pytest.raises(StorageError, match="Permission denied to read .*roles/storage.objectViewer"):
            read_bytes("gs://private/data/a.jpg")
    finally:
        server.shutdown()


def test_gcs_without_credentials_says_what_to_set(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("STORAGE_EMULATOR_HOST", raising=False)
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "missing-key.json"))
    for call in (lambda: list_files("gs://bucket/data"), lambda: read_bytes("gs://bucket/a.jpg")):
        with pytest.raises(StorageError, match="No Google Cloud credentials.*GOOGLE_APPLICATION_CREDENTIALS"):
            call()
