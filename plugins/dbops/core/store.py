"""The backup store interface: objects addressed by keys, on a local directory or S3 (hooks/store.py)."""

from __future__ import annotations

import uuid
from abc import ABC, abstractmethod
from pathlib import Path


class BackupStore(ABC):
    """Objects addressed by ``/``-separated keys below the store's root."""

    @abstractmethod
    def put_bytes(self, key: str, data: bytes) -> None:
        """Write ``data`` at ``key``, replacing it atomically."""

    @abstractmethod
    def put_file(self, path: Path, key: str) -> None:
        """Upload the local file ``path`` to ``key`` (multipart where the store has it)."""

    @abstractmethod
    def read_bytes(self, key: str) -> bytes:
        """Read the object at ``key``."""

    @abstractmethod
    def get_file(self, key: str, path: Path) -> None:
        """Download the object at ``key`` to the local file ``path``."""

    @abstractmethod
    def sha256(self, key: str) -> str:
        """sha256 of the object at ``key`` as stored, read back from the store."""

    @abstractmethod
    def size(self, key: str) -> int | None:
        """Size in bytes of the object at ``key``, or None when it does not exist."""

    @abstractmethod
    def list_keys(self, prefix: str) -> list[str]:
        """Every key below ``prefix``, sorted."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Delete the object at ``key``; deleting a missing key is not an error."""

    @abstractmethod
    def describe(self) -> str:
        """Where the store is, for logs and manifests (never credentials)."""

    def exists(self, key: str) -> bool:
        return self.size(key) is not None

    def check_writable(self) -> None:
        """Write, read back and delete a probe object; raise if any step fails or data differs."""
        key = f".dbops-probe/{uuid.uuid4().hex}"
        payload = uuid.uuid4().bytes
        self.put_bytes(key, payload)
        try:
            if self.read_bytes(key) != payload:
                raise OSError(f"{self.describe()}: probe object read back differs from what was written")
        finally:
            self.delete(key)
