"""One interface for local paths and ``gs://bucket/prefix`` URIs: list, read, write, exists, copy with a checksum.

Every function takes a URI: a local path, a ``file://`` URI or a ``gs://`` URI (``fetch`` also takes
https://). gs:// goes through google-cloud-storage with its default retry policy (exponential backoff on 429,
5xx and connection errors, 120 s deadline) applied to reads, listings and our idempotent writes. One client is
made per process (a forked DataLoader worker makes its own) with a connection pool sized for parallel reads.
``STORAGE_EMULATOR_HOST`` points the client at an emulator and needs no credentials.

Errors say what is wrong and what to do: a missing bucket or object, no permission (which role), no
credentials (what to set), a local path that does not exist. Local writes go through a temporary file and a
rename, so a reader never sees a half-written file.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import posixpath
import re
import shutil
import tempfile
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import unquote, urlparse

from kubedistill.errors import StorageError

__all__ = [
    "FileInfo",
    "StorageError",
    "exists",
    "fetch",
    "is_gcs",
    "is_remote",
    "join",
    "list_files",
    "read_bytes",
    "relative_to",
    "sha256_file",
    "split_gs_uri",
    "to_local_path",
    "verify_sha256",
    "write_bytes",
]

logger = logging.getLogger(__name__)

REMOTE_SCHEMES = ("http", "https", "gs")
HTTP_TIMEOUT_S = 60.0  # per socket operation (connect or one read), not for the whole download
GCS_TIMEOUT_S = (10.0, 60.0)  # (connect, read) per request; retries add up to the retry policy's deadline
GCS_POOL_SIZE = 64  # HTTP connections per process: enough for the parallel readers below
LIST_WORKERS = 16
_CHUNK = 1 << 20
_SHA256_RE = re.compile(r"[0-9a-f]{64}")
_GCS_AUTH_HINT = (
    "set GOOGLE_APPLICATION_CREDENTIALS to a service-account key file, "
    "or run `gcloud auth application-default login` (on GKE: Workload Identity for the pod's service account)"
)


@dataclass(frozen=True)
class FileInfo:
    """A listed file: its URI (absolute local path or full gs:// URI) and size in bytes."""

    uri: str
    size: int


def is_remote(uri: str | os.PathLike[str]) -> bool:
    """True for http://, https:// and gs:// URIs; False for local paths and file:// URIs."""
    return urlparse(str(uri)).scheme.lower() in REMOTE_SCHEMES


def is_gcs(uri: str | os.PathLike[str]) -> bool:
    return str(uri).startswith("gs://")


def to_local_path(uri: str | os.PathLike[str]) -> Path:
    """A local path or ``file://`` URI as a Path (``~`` expanded)."""
    text = str(uri)
    if text.startswith("file://"):
        return Path(unquote(urlparse(text).path))
    return Path(text).expanduser()


def join(uri: str, *parts: str) -> str:
    """``uri`` / parts, with '/' for gs:// and the OS separator for local paths."""
    if is_gcs(uri):
        return posixpath.join(uri.rstrip("/") + "/", *parts)
    return os.path.join(to_local_path(uri), *parts)


def relative_to(uri: str, root: str) -> str:
    """The part of ``uri`` below ``root``, with '/' separators (both URIs as ``list_files`` returns them)."""
    if is_gcs(uri):
        prefix = root.rstrip("/") + "/"
        return uri[len(prefix) :] if uri.startswith(prefix) else posixpath.basename(uri)
    rel = os.path.relpath(uri, os.path.abspath(to_local_path(root)))
    return rel.replace(os.sep, "/")


def split_gs_uri(uri: str, *, object_required: bool = True) -> tuple[str, str]:
    """``gs://bucket/path/to/object`` -> (``bucket``, ``path/to/object``)."""
    parsed = urlparse(uri)
    name = parsed.path.lstrip("/")
    if parsed.scheme != "gs" or not parsed.netloc or (object_required and not name):
        expected = "gs://BUCKET/PATH/TO/OBJECT" if object_required else "gs://BUCKET[/PREFIX]"
        raise StorageError(f"{uri!r} is not a valid gs:// URI: expected {expected}.")
    return parsed.netloc, name


# --- listing ----------------------------------------------------------------------------------------------------


def list_files(uri: str) -> list[FileInfo]:
    """Every file under ``uri`` (recursively) with its size, sorted by URI; ``uri`` may also be one file.

    Nothing is filtered out (hidden files included): callers decide what to skip. Local folders are walked
    with ``os.scandir``, following symlinked folders once. A gs:// prefix is listed as a folder: its
    first-level sub-prefixes are listed in parallel (GCS lists one prefix sequentially, page by page), and
    zero-byte "folder placeholder" objects (names ending in '/') are left out.

    Raises:
        StorageError: the path or bucket does not exist, or cannot be listed (with what to do).
    """
    if is_gcs(uri):
        return _list_gcs(uri)
    return _list_local(uri)


def _list_local(uri: str) -> list[FileInfo]:
    root = os.path.abspath(to_local_path(uri))
    if os.path.isfile(root):
        return [FileInfo(root, os.path.getsize(root))]
    if not os.path.isdir(root):
        raise StorageError(f"{root} does not exist: check the path (and that this machine can see it).")
    found: list[FileInfo] = []
    pending, visited = [root], set()
    while pending:
        folder = pending.pop()
        st = os.stat(folder)
        if (st.st_dev, st.st_ino) in visited:  # a symlink loop
            continue
        visited.add((st.st_dev, st.st_ino))
        try:
            with os.scandir(folder) as it:
                entries = list(it)
        except OSError as e:
            raise StorageError(
                f"Cannot list folder {folder} ({e.strerror or e}): fix its permissions or leave it out."
            ) from e
        for entry in entries:
            try:
                if entry.is_dir():
                    pending.append(entry.path)
                elif entry.is_file():
                    found.append(FileInfo(entry.path, entry.stat().st_size))
                elif entry.is_symlink() and not os.path.exists(entry.path):
                    found.append(FileInfo(entry.path, 0))  # dangling: listed, so that reading it reports why
            except OSError:  # removed while listing
                continue
    return sorted(found, key=lambda f: f.uri)


def _list_gcs(uri: str) -> list[FileInfo]:
    bucket, name = split_gs_uri(uri, object_required=False)
    prefix = name.rstrip("/") + "/" if name else ""
    with _gcs_errors(uri, "list"):
        client = gcs_client()
        iterator = client.list_blobs(
            bucket, prefix=prefix, delimiter="/", timeout=GCS_TIMEOUT_S, retry=_retry(), fields=_LIST_FIELDS
        )
        found = [_blob_info(bucket, b) for b in iterator if not b.name.endswith("/")]
        subprefixes = sorted(iterator.prefixes)

        def list_prefix(sub: str) -> list[FileInfo]:
            blobs = client.list_blobs(
                bucket, prefix=sub, timeout=GCS_TIMEOUT_S, retry=_retry(), fields=_LIST_FIELDS
            )
            return [_blob_info(bucket, b) for b in blobs if not b.name.endswith("/")]

        if subprefixes:
            with ThreadPoolExecutor(
                min(LIST_WORKERS, len(subprefixes)), thread_name_prefix="gcs-list"
            ) as pool:
                for part in pool.map(list_prefix, subprefixes):
                    found.extend(part)
        if not found and name and not name.endswith("/"):
            blob = client.bucket(bucket).get_blob(name, timeout=GCS_TIMEOUT_S, retry=_retry())
            if blob is not None:  # the URI names one object
                found.append(_blob_info(bucket, blob))
    return sorted(found, key=lambda f: f.uri)


_LIST_FIELDS = "items(name,size),prefixes,nextPageToken"


def _blob_info(bucket: str, blob: Any) -> FileInfo:
    return FileInfo(f"gs://{bucket}/{blob.name}", int(blob.size or 0))


# --- reading and writing ----------------------------------------------------------------------------------------


def read_bytes(uri: str) -> bytes:
    """The whole content of one file. Raises StorageError naming the URI and the cause."""
    if is_gcs(uri):
        bucket, name = split_gs_uri(uri)
        with _gcs_errors(uri, "read"):
            return (
                gcs_client()
                .bucket(bucket)
                .blob(name)
                .download_as_bytes(timeout=GCS_TIMEOUT_S, retry=_retry())
            )
    path = to_local_path(uri)
    try:
        return path.read_bytes()
    except FileNotFoundError as e:
        raise StorageError(f"{path} does not exist: check the path.") from e
    except OSError as e:
        raise StorageError(f"Cannot read {path} ({e.strerror or e}).") from e


def write_bytes(uri: str, data: bytes, *, content_type: str | None = None) -> None:
    """Write (replace) one file. Local: atomically (temporary file, fsync, rename), parent folders created."""
    if is_gcs(uri):
        bucket, name = split_gs_uri(uri)
        with _gcs_errors(uri, "write"):
            # An upload of the same bytes is idempotent, so it may be retried like a read.
            gcs_client().bucket(bucket).blob(name).upload_from_string(
                data, content_type=content_type, timeout=GCS_TIMEOUT_S, retry=_retry()
            )
        return
    path = to_local_path(uri)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)
        finally:
            Path(tmp).unlink(missing_ok=True)
    except OSError as e:
        raise StorageError(
            f"Cannot write {path} ({e.strerror or e}): check the folder and free space."
        ) from e


def exists(uri: str) -> bool:
    """Whether ``uri`` is an existing file (local or gs:// object) or local folder."""
    if is_gcs(uri):
        bucket, name = split_gs_uri(uri)
        with _gcs_errors(uri, "read"):
            return gcs_client().bucket(bucket).blob(name).exists(timeout=GCS_TIMEOUT_S, retry=_retry())
    return to_local_path(uri).exists()


def localize(uri: str, folder: str | os.PathLike[str], name: str | None = None) -> Path:
    """A local path for ``uri``: the path itself when local; for gs:// a copy in ``folder`` (``name``, default
    the object's base name). StorageError names the URI when it cannot be read."""
    if not is_remote(uri):
        return to_local_path(uri)
    return fetch(uri, Path(folder) / (name or posixpath.basename(uri.rstrip("/"))))


def upload_file(path: str | os.PathLike[str], uri: str, *, content_type: str | None = None) -> None:
    """Copy a local file to ``uri`` (local: atomically; gs://: a GCS object appears only once complete, and
    large files go up in resumable chunks instead of through memory)."""
    if not is_gcs(uri):
        write_bytes(uri, Path(path).read_bytes(), content_type=content_type)
        return
    bucket, name = split_gs_uri(uri)
    with _gcs_errors(uri, "write"):
        gcs_client().bucket(bucket).blob(name).upload_from_filename(
            str(path), content_type=content_type, timeout=GCS_TIMEOUT_S, retry=_retry()
        )


def delete(uri: str) -> None:
    """Remove one file (local or gs:// object); nothing happens when it is not there."""
    if is_gcs(uri):
        bucket, name = split_gs_uri(uri)
        with _gcs_errors(uri, "delete"):
            blob = gcs_client().bucket(bucket).blob(name)
            if blob.exists(timeout=GCS_TIMEOUT_S, retry=_retry()):
                blob.delete(timeout=GCS_TIMEOUT_S)
        return
    try:
        to_local_path(uri).unlink(missing_ok=True)
    except OSError as e:
        raise StorageError(f"Cannot delete {uri} ({e.strerror or e}).") from e


# --- Google Cloud Storage client and errors ---------------------------------------------------------------------

_client_lock = threading.Lock()
# (pid, emulator host) -> client: a client's HTTP pool must not be shared across fork, and a client made for
# one endpoint must not be used after STORAGE_EMULATOR_HOST changes (tests start one emulator after another).
_clients: dict[tuple[int, str | None], Any] = {}


def gcs_client() -> Any:  # -> google.cloud.storage.Client
    """This process's storage client (created on first use)."""
    key = (os.getpid(), os.environ.get("STORAGE_EMULATOR_HOST"))
    client = _clients.get(key)
    if client is not None:
        return client
    with _client_lock:
        if key not in _clients:
            _clients.clear()  # a parent process's or a previous endpoint's client is not ours to use
            _clients[key] = _new_client()
        return _clients[key]


def _new_client() -> Any:
    storage = _import_storage()
    if os.environ.get("STORAGE_EMULATOR_HOST"):
        client = storage.Client(project=os.environ.get("GOOGLE_CLOUD_PROJECT", "emulator"))
    else:
        import google.auth

        # Reading needs no project; asking the client to infer one fails for many user logins.
        credentials, project = google.auth.default()
        client = storage.Client(project=project or "<none>", credentials=credentials)
    from requests.adapters import HTTPAdapter

    adapter = HTTPAdapter(pool_connections=4, pool_maxsize=GCS_POOL_SIZE)
    client._http.mount("https://", adapter)  # the client's requests session; the default pool holds 10
    client._http.mount("http://", adapter)
    return client


def _import_storage() -> Any:
    try:  # imported here: only gs:// users pay for (or need) the Google client libraries
        from google.cloud import storage
    except ImportError as e:
        raise StorageError("gs:// URIs need google-cloud-storage: pip install google-cloud-storage") from e
    return storage


def _retry() -> Any:
    from google.cloud.storage.retry import DEFAULT_RETRY

    return DEFAULT_RETRY


@contextmanager
def _gcs_errors(uri: str, action: str) -> Iterator[None]:
    """Translate google-cloud-storage exceptions into StorageErrors that say what to do."""
    from google.api_core import exceptions as gexc
    from google.auth import exceptions as auth_exc

    bucket = urlparse(uri).netloc
    role = {"read": "roles/storage.objectViewer", "list": "roles/storage.objectViewer",
            "delete": "roles/storage.objectUser"}.get(action, "roles/storage.objectCreator")  # fmt: skip
    try:
        yield
    except auth_exc.DefaultCredentialsError as e:
        raise StorageError(f"No Google Cloud credentials to {action} {uri}: {_GCS_AUTH_HINT}.") from e
    except auth_exc.GoogleAuthError as e:
        raise StorageError(f"Google Cloud authentication failed for {uri} ({e}): {_GCS_AUTH_HINT}.") from e
    except gexc.NotFound as e:
        if action == "list":
            raise StorageError(
                f"Cannot list {uri}: the bucket {bucket!r} does not exist (or is not visible to these "
                "credentials); check the bucket name."
            ) from e
        name = urlparse(uri).path.lstrip("/")
        raise StorageError(
            f"{uri} not found: the bucket {bucket!r} or the object {name!r} does not exist."
        ) from e
    except (gexc.Forbidden, gexc.Unauthorized) as e:
        raise StorageError(
            f"Permission denied to {action} {uri} ({e.code}): grant the account in use {role} on bucket "
            f"{bucket!r}, or {_GCS_AUTH_HINT} with an account that has it."
        ) from e
    except gexc.GoogleAPIError as e:
        raise StorageError(f"Cannot {action} {uri}: {e}") from e
    except OSError as e:  # connection refused/reset after the retry deadline, DNS failures
        raise StorageError(
            f"Cannot {action} {uri}: {e}. Check the network (and STORAGE_EMULATOR_HOST)."
        ) from e


# --- checksums and fetch (weights) ------------------------------------------------------------------------------


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex sha256 digest of a file, read in 1 MiB chunks (constant memory for multi-GB checkpoints)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def normalize_sha256(expected: str) -> str:
    """Lower-case hex digest; accepts an optional ``sha256:`` prefix. Raises StorageError if malformed."""
    value = expected.strip().lower().removeprefix("sha256:")
    if not _SHA256_RE.fullmatch(value):
        raise StorageError(f"sha256={expected!r} is not a sha256 digest: expected 64 hexadecimal characters.")
    return value


def verify_sha256(path: str | os.PathLike[str], expected: str, *, source: str | None = None) -> None:
    """Raise StorageError naming the expected and the actual digest when ``path`` does not match."""
    wanted = normalize_sha256(expected)
    actual = sha256_file(path)
    if actual != wanted:
        raise StorageError(
            f"sha256 mismatch for {source or path}: expected {wanted}, got {actual}. The file is corrupt, "
            "truncated or a different version; check the URI and the sha256 you passed."
        )


def fetch(
    uri: str, dest: str | os.PathLike[str], *, sha256: str | None = None, timeout_s: float = HTTP_TIMEOUT_S
) -> Path:
    """Copy ``uri`` (https://, http://, gs://, file:// or a local path) to ``dest`` atomically.

    ``sha256``, when given, is checked before the file is renamed into place: on a mismatch the temporary
    file is deleted and StorageError names the expected and the actual digest. Returns ``dest``.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    if sha256 is not None:
        sha256 = normalize_sha256(sha256)  # fail before downloading gigabytes
    fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            _copier(uri)(uri, out, timeout_s)
            out.flush()
            os.fsync(out.fileno())  # the rename below must not publish a file whose data is still in flight
        os.chmod(tmp, 0o644)  # mkstemp makes it owner-only; a cache shared by several users must be readable
        if sha256 is not None:
            verify_sha256(tmp, sha256, source=uri)
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    logger.info("fetched %s -> %s (%d bytes)", uri, dest, dest.stat().st_size)
    return dest


def _copier(uri: str) -> Callable[[str, BinaryIO, float], None]:
    scheme = urlparse(uri).scheme.lower()
    if scheme in ("http", "https"):
        return _copy_http
    if scheme == "gs":
        return _copy_gcs
    if scheme in ("", "file") or len(scheme) == 1:  # one letter: a Windows drive, still a local path
        return _copy_local
    raise StorageError(
        f"Unsupported URI scheme {scheme!r} in {uri!r}: use https://, gs://, file:// or a path."
    )


def _copy_local(uri: str, out: BinaryIO, timeout_s: float) -> None:
    path = to_local_path(uri)
    if not path.is_file():
        raise StorageError(f"{path} does not exist or is not a file: check the path.")
    with open(path, "rb") as src:
        shutil.copyfileobj(src, out, _CHUNK)


def _copy_http(url: str, out: BinaryIO, timeout_s: float) -> None:
    request = urllib.request.Request(url, headers={"User-Agent": "kubedistill"})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            expected = response.headers.get("Content-Length")
            shutil.copyfileobj(response, out, _CHUNK)
    except urllib.error.HTTPError as e:
        raise StorageError(f"Downloading {url} failed: HTTP {e.code} {e.reason}. Check the URL.") from e
    # Network failures only: an OSError from writing (a full disk) must not be blamed on the network.
    except (urllib.error.URLError, ConnectionError, TimeoutError, http.client.HTTPException) as e:
        reason = getattr(e, "reason", e)
        raise StorageError(
            f"Cannot download {url}: {reason}. Check the URL and the network; on a machine without internet "
            "access, copy the file there and pass its local path or a gs:// URI instead."
        ) from e
    if expected is not None and out.tell() != int(expected):  # a dropped connection can look like an EOF
        raise StorageError(f"Download of {url} was cut short: {out.tell()} of {expected} bytes. Try again.")


def _copy_gcs(uri: str, out: BinaryIO, timeout_s: float) -> None:
    bucket, name = split_gs_uri(uri)
    with _gcs_errors(uri, "read"):
        gcs_client().bucket(bucket).blob(name).download_to_file(out, timeout=timeout_s, retry=_retry())
