"""The backup stores: a local directory and S3 (or S3-compatible) storage, behind :class:`BackupStore`."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from dbops.core.config import StorageConfig
from dbops.core.store import BackupStore


class LocalStore(BackupStore):
    """A directory; every write goes to a hidden partial file first and is renamed into place."""

    def __init__(self, root: Path):
        self.root = root

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if not path.is_relative_to(self.root.resolve()):
            raise ValueError(f"key {key!r} escapes the store root {self.root}")
        return path

    def _replace_with(self, key: str, write) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.partial")
        with open(partial, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(partial, path)

    def put_bytes(self, key: str, data: bytes) -> None:
        self._replace_with(key, lambda fh: fh.write(data))

    def put_file(self, path: Path, key: str) -> None:
        """Hard-link when staging and store share a filesystem (no copy); copy otherwise."""
        target = self._path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f".{target.name}.partial")
        partial.unlink(missing_ok=True)
        try:
            os.link(path, partial)
        except OSError:
            with open(path, "rb") as src:
                self._replace_with(key, lambda fh: shutil.copyfileobj(src, fh, 4 * 1024 * 1024))
            return
        os.replace(partial, target)
        directory = os.open(target.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)

    def sha256(self, key: str) -> str:
        from dbops.core.streams import file_sha256

        return file_sha256(self._path(key))

    def read_bytes(self, key: str) -> bytes:
        return self._path(key).read_bytes()

    def get_file(self, key: str, path: Path) -> None:
        shutil.copyfile(self._path(key), path)

    def size(self, key: str) -> int | None:
        path = self._path(key)
        return path.stat().st_size if path.is_file() else None

    def list_keys(self, prefix: str) -> list[str]:
        base = self._path(prefix)
        if not base.is_dir():
            return []
        root = self.root.resolve()
        return sorted(str(p.relative_to(root)) for p in base.rglob("*") if p.is_file())

    def delete(self, key: str) -> None:
        path = self._path(key)
        path.unlink(missing_ok=True)
        root = self.root.resolve()
        for parent in path.parents:  # tidy empty directories up to the root
            if parent == root or not parent.is_relative_to(root):
                break
            if parent.is_dir() and any(parent.iterdir()):
                break
            if parent.is_dir():
                parent.rmdir()

    def describe(self) -> str:
        return f"file://{self.root}"


class S3Store(BackupStore):
    """S3 through the Amazon provider's :class:`S3Hook`, with server-side encryption and storage class."""

    def __init__(self, url: str, aws_conn_id: str, sse: str | None = None, storage_class: str | None = None):
        from airflow.providers.amazon.aws.hooks.s3 import S3Hook

        bucket, _, prefix = url.removeprefix("s3://").partition("/")
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        extra_args = {k: v for k, v in (("ServerSideEncryption", sse), ("StorageClass", storage_class)) if v}
        self.hook = S3Hook(aws_conn_id=aws_conn_id, extra_args=extra_args)

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def put_bytes(self, key: str, data: bytes) -> None:
        self.hook.load_bytes(data, self._key(key), self.bucket, replace=True)

    def put_file(self, path: Path, key: str) -> None:
        self.hook.load_file(str(path), self._key(key), self.bucket, replace=True)

    def read_bytes(self, key: str) -> bytes:
        return self.hook.get_key(self._key(key), self.bucket).get()["Body"].read()

    def get_file(self, key: str, path: Path) -> None:
        self.hook.get_conn().download_file(self.bucket, self._key(key), str(path))

    def sha256(self, key: str) -> str:
        import hashlib

        digest = hashlib.sha256()
        body = self.hook.get_key(self._key(key), self.bucket).get()["Body"]
        for chunk in iter(lambda: body.read(4 * 1024 * 1024), b""):
            digest.update(chunk)
        return digest.hexdigest()

    def size(self, key: str) -> int | None:
        head = self.hook.head_object(self._key(key), self.bucket)
        return None if head is None else int(head["ContentLength"])

    def list_keys(self, prefix: str) -> list[str]:
        strip = len(self.prefix) + 1 if self.prefix else 0
        return sorted(k[strip:] for k in self.hook.list_keys(self.bucket, prefix=self._key(prefix)))

    def delete(self, key: str) -> None:
        self.hook.delete_objects(self.bucket, [self._key(key)])

    def describe(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"


def get_store(storage: StorageConfig) -> BackupStore:
    if storage.scheme == "s3":
        return S3Store(storage.url, storage.aws_conn_id, storage.sse, storage.storage_class)
    return LocalStore(storage.local_path)
