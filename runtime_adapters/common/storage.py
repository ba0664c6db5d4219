"""Where a model's files come from: a local path, or S3 (downloaded once into the pod's cache).

Paths are local paths (optionally ``file://``) or ``s3://bucket/prefix``; a
model's key (ModelInfo.key) may name an entry of the storage config, as
modelmesh-serving does, either plainly or as its controller's JSON
(``model_key.py``). The storage config is a JSON file mapping storage keys to
``{type, access_key_id, secret_access_key, endpoint_url, region, bucket}``, or
a directory with one such JSON file per storage key (modelmesh-serving's
storage-config secret mounted as a volume).

Downloads are atomic (a temporary folder renamed into place, so a half-written
download is never loaded), shared by every model that names the same objects,
and kept after unload so a reload does not download again; unused downloads
are removed oldest first once the cache passes its byte budget. Paths that
escape the allowed roots or the cache are rejected. Secrets never reach a
message or a log line.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from runtime_adapters.common.model_files import ModelFilesError, files_size
from runtime_adapters.common.model_key import parse_model_key

log = logging.getLogger(__name__)


class StorageError(Exception):
    """The files could not be fetched (missing object, access denied, endpoint down).

    The message names the object, never a credential.
    """


@dataclass(frozen=True)
class StorageEntry:
    type: str = "s3"
    access_key_id: str = field(default="", repr=False)
    secret_access_key: str = field(default="", repr=False)
    endpoint_url: str = ""
    region: str = ""
    bucket: str = ""


@dataclass(frozen=True)
class S3Location:
    storage_key: str
    bucket: str
    prefix: str

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"


def load_storage_config(path: Path | None) -> dict[str, StorageEntry]:
    if path is None:
        return {}
    raw: dict[str, Any]
    if path.is_dir():  # a mounted secret: a file per key; Kubernetes' own ..data links and folders skipped
        raw = {
            entry.name: entry.read_text()
            for entry in sorted(path.iterdir())
            if not entry.name.startswith(".") and entry.is_file()
        }
    else:
        raw = json.loads(path.read_text())
    known = set(StorageEntry.__dataclass_fields__)
    entries = {}
    for key, value in raw.items():
        if isinstance(value, str):  # a Kubernetes secret holds each entry as a JSON string
            value = json.loads(value)
        if "default_bucket" in value and "bucket" not in value:
            value["bucket"] = value["default_bucket"]
        entries[key] = StorageEntry(**{k: str(v) for k, v in value.items() if k in known})
    return entries


def safe_prefix(prefix: str) -> str:
    """An object prefix that cannot climb out of the cache: no '..', not absolute."""
    parts = PurePosixPath(prefix).parts
    if not prefix or prefix.startswith("/") or ".." in parts:
        raise ModelFilesError(f"object path {prefix!r} is not allowed")
    return prefix


def parse_location(model_path: str, model_key: str, config: Mapping[str, StorageEntry]) -> Path | S3Location:
    """Where the files are (pure): a local Path or an S3Location."""
    raw = model_path.strip()
    if not raw:
        raise ModelFilesError("model path is empty")
    key = parse_model_key(model_key)
    storage_key, bucket_override = key.storage_key, key.bucket
    if storage_key and storage_key not in config:
        raise ModelFilesError(f"unknown storage key {storage_key!r}")
    entry = config.get(storage_key)
    if raw.startswith("s3://"):
        bucket, _, prefix = raw[len("s3://") :].partition("/")
        if not bucket:
            raise ModelFilesError(f"no bucket in {model_path!r}")
        if not storage_key:  # the entry for this bucket, else the only one
            matching = [k for k, e in config.items() if e.bucket == bucket] or (
                list(config)[:1] if len(config) == 1 else []
            )
            storage_key = matching[0] if matching else ""
        return S3Location(storage_key, bucket, safe_prefix(prefix))
    if entry is not None and entry.type == "s3":
        bucket = bucket_override or entry.bucket
        if not bucket:
            raise ModelFilesError(f"storage key {storage_key!r} names no bucket")
        return S3Location(storage_key, bucket, safe_prefix(raw.lstrip("/")))
    if raw.startswith("file://"):
        raw = raw[len("file://") :]
    elif "://" in raw:
        raise ModelFilesError(f"unsupported model path scheme: {model_path}")
    return Path(raw)


def within(path: Path, roots: Sequence[Path]) -> bool:
    real = Path(os.path.realpath(path))
    return any(real == root or root in real.parents for root in roots)


@dataclass
class _Download:
    path: Path  # what the runtime loads: the folder, or the single file in it
    folder: Path
    users: set[str] = field(default_factory=set)
    last_used: float = 0.0


class ModelStore:
    def __init__(
        self,
        cache_dir: Path,
        config: Mapping[str, StorageEntry],
        model_roots: Sequence[Path] = (),
        cache_max_bytes: int = 10 << 30,
    ) -> None:
        self.cache_dir = Path(os.path.realpath(cache_dir))
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        self._config = config
        self._roots = [Path(os.path.realpath(r)) for r in model_roots]
        self._cache_max = cache_max_bytes
        self._downloads: dict[Path, _Download] = {}
        self._by_model: dict[str, Path] = {}
        self._locks: dict[Path, asyncio.Lock] = {}
        self._clients: dict[str, Any] = {}
        self.download_count = 0

    def local_path(self, model_path: str, model_key: str) -> Path | None:
        """The local path for a local model (checked against the roots), None for a remote one."""
        location = parse_location(model_path, model_key, self._config)
        if isinstance(location, S3Location):
            return None
        path = location.expanduser().absolute()
        if self._roots and not within(path, self._roots):
            raise ModelFilesError(f"model path {path} is outside the allowed model roots")
        if not path.exists():
            raise ModelFilesError(f"model path does not exist: {path}")
        return path

    async def fetch(self, model_id: str, model_path: str, model_key: str) -> Path:
        """The local files of a model, downloading them first if they are remote and not cached."""
        local = self.local_path(model_path, model_key)
        if local is not None:
            return local
        location = parse_location(model_path, model_key, self._config)
        assert isinstance(location, S3Location)
        entry = self._config.get(location.storage_key, StorageEntry())
        # The storage key is part of the name: files fetched with one set of credentials are not
        # handed to a model whose credentials might not allow them.
        identity = f"{location.storage_key}|{entry.endpoint_url}|{location.bucket}|{location.prefix}"
        digest = hashlib.sha256(identity.encode()).hexdigest()
        folder = self.cache_dir / digest[:24]
        async with self._locks.setdefault(folder, asyncio.Lock()):
            download = self._downloads.get(folder)
            if download is None:
                path = await asyncio.to_thread(self._download, location, entry, folder)
                download = self._downloads[folder] = _Download(path, folder)
            download.users.add(model_id)
            download.last_used = time.monotonic()
            self._by_model[model_id] = folder
        return download.path

    def release(self, model_id: str) -> None:
        """The model is unloaded: its download stays for a reload, unless the cache is over budget."""
        folder = self._by_model.pop(model_id, None)
        download = self._downloads.get(folder) if folder else None
        if download is not None:
            download.users.discard(model_id)
            download.last_used = time.monotonic()
        self._trim()

    def _trim(self) -> None:
        unused = sorted((d for d in self._downloads.values() if not d.users), key=lambda d: d.last_used)
        total = sum(files_size(d.folder) for d in self._downloads.values())
        for download in unused:
            if total <= self._cache_max:
                break
            total -= files_size(download.folder)
            shutil.rmtree(download.folder, ignore_errors=True)
            del self._downloads[download.folder]

    def _client(self, location: S3Location, entry: StorageEntry) -> Any:
        client = self._clients.get(location.storage_key)
        if client is None:
            import boto3  # only pods that use S3 need it loaded

            client = boto3.client(
                "s3",
                endpoint_url=entry.endpoint_url or None,
                region_name=entry.region or None,
                aws_access_key_id=entry.access_key_id or None,
                aws_secret_access_key=entry.secret_access_key or None,
            )
            self._clients[location.storage_key] = client
        return client

    def _download(self, location: S3Location, entry: StorageEntry, folder: Path) -> Path:
        from botocore.exceptions import BotoCoreError, ClientError

        if folder.exists():  # a download an earlier adapter process completed
            return _entry_path(folder, location)
        client = self._client(location, entry)
        tmp = Path(tempfile.mkdtemp(prefix=".partial-", dir=self.cache_dir))
        try:
            pages = client.get_paginator("list_objects_v2").paginate(
                Bucket=location.bucket, Prefix=location.prefix
            )
            keys = [obj["Key"] for page in pages for obj in page.get("Contents", [])]
            keys = [
                k for k in keys if k == location.prefix or k.startswith(location.prefix.rstrip("/") + "/")
            ]
            if not keys:
                raise StorageError(f"no object at {location.uri}")
            for key in keys:
                relative = (
                    PurePosixPath(key).name
                    if key == location.prefix
                    else key[len(location.prefix) :].lstrip("/")
                )
                target = tmp / safe_prefix(relative)
                if not within(target.parent, [Path(os.path.realpath(tmp))]):
                    raise ModelFilesError(f"object {key!r} would land outside the cache")
                target.parent.mkdir(parents=True, exist_ok=True)
                client.download_file(location.bucket, key, str(target))
            self.download_count += 1
            os.rename(tmp, folder)  # atomic: the folder appears complete or not at all
        except (ClientError, BotoCoreError) as e:
            raise StorageError(f"cannot fetch {location.uri}: {_describe(e)}") from None
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        log.info("downloaded %s", location.uri)
        return _entry_path(folder, location)


def _entry_path(folder: Path, location: S3Location) -> Path:
    single = folder / PurePosixPath(location.prefix).name
    return single if single.is_file() and len(list(folder.iterdir())) == 1 else folder


def _describe(error: Exception) -> str:
    """A botocore error without anything secret: its code and message only."""
    response = getattr(error, "response", None)
    if isinstance(response, dict):
        details = response.get("Error", {})
        return f"{details.get('Code', 'error')}: {details.get('Message', '')}".strip()
    return type(error).__name__


def add_storage_arguments(parser: argparse.ArgumentParser) -> None:
    """The storage flags every adapter takes."""
    parser.add_argument(
        "--storage-config",
        type=Path,
        default=os.environ.get("STORAGE_CONFIG") or os.environ.get("STORAGE_CONFIG_DIR") or None,
        help="storage entries by storage key: a JSON file, or a directory of one JSON file per key "
        "(env STORAGE_CONFIG, or modelmesh-serving's STORAGE_CONFIG_DIR)",
    )
    parser.add_argument(
        "--cache-dir", type=Path, default=None, help="where downloads go (default: beside the repository)"
    )
    parser.add_argument(
        "--cache-max-bytes", type=int, default=10 << 30, help="unused downloads are removed past this"
    )
    parser.add_argument(
        "--model-root",
        type=Path,
        action="append",
        default=[],
        help="local model paths must lie below one of these (repeatable; none = any path)",
    )


def store_from_args(args: argparse.Namespace, repository_dir: Path) -> ModelStore:
    cache_dir = args.cache_dir or repository_dir.with_name(repository_dir.name + "-cache")
    return ModelStore(
        cache_dir, load_storage_config(args.storage_config), args.model_root, args.cache_max_bytes
    )
