"""Byte pipelines for backup files: zstd compression in Python, optional AES-256-GCM, sha256 of what is stored.

Written files are ``zstd(raw)`` or, with a key, ``gcm(zstd(raw))``. The GCM format is a magic line
followed by frames ``nonce(12) | final(1) | length(4) | ciphertext+tag``; each frame's index and
final flag are authenticated, so reordered, dropped or truncated frames fail to decrypt.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

import zstandard

CHUNK = 4 * 1024 * 1024
GCM_MAGIC = b"DBOPS-AES256GCM-1\n"
_NONCE = 12
_HEADER = _NONCE + 1 + 4


class ChecksumMismatch(Exception):
    """A stored file is not what its manifest says: corrupted, truncated or replaced."""


class _HashingWriter:
    """File writer that counts and hashes everything written."""

    def __init__(self, fh: BinaryIO):
        self.fh = fh
        self.sha256 = hashlib.sha256()
        self.bytes = 0

    def write(self, data: bytes) -> int:
        self.sha256.update(data)
        self.bytes += len(data)
        return self.fh.write(data)


class _GcmWriter:
    """Encrypts what is written into authenticated frames of at most CHUNK bytes."""

    def __init__(self, out: _HashingWriter, key: bytes):
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        self.out = out
        self.aead = AESGCM(key)
        self.buffer = bytearray()
        self.index = 0
        out.write(GCM_MAGIC)

    def write(self, data: bytes) -> int:
        self.buffer += data
        while len(self.buffer) > CHUNK:
            self._seal(bytes(self.buffer[:CHUNK]), final=False)
            del self.buffer[:CHUNK]
        return len(data)

    def close(self) -> None:
        self._seal(bytes(self.buffer), final=True)
        self.buffer.clear()

    def _seal(self, chunk: bytes, final: bool) -> None:
        nonce = os.urandom(_NONCE)
        sealed = self.aead.encrypt(nonce, chunk, _aad(self.index, final))
        self.out.write(nonce + bytes([final]) + len(sealed).to_bytes(4, "big") + sealed)
        self.index += 1


def _aad(index: int, final: bool) -> bytes:
    return index.to_bytes(8, "big") + bytes([final])


def write_compressed(chunks: Iterable[bytes], dest: Path, level: int, key: bytes | None = None) -> tuple[int, int, str]:
    """Compress (and encrypt) ``chunks`` into ``dest``. Return (stored bytes, raw bytes, sha256 of stored)."""
    raw_bytes = 0
    with open(dest, "wb") as fh:
        hashing = _HashingWriter(fh)
        sink = _GcmWriter(hashing, key) if key else hashing
        compressor = zstandard.ZstdCompressor(level=level, threads=-1, write_checksum=True)
        with compressor.stream_writer(sink, closefd=False, write_size=CHUNK) as zst:
            for chunk in chunks:
                raw_bytes += len(chunk)
                zst.write(chunk)
        if key:
            sink.close()
        fh.flush()
        os.fsync(fh.fileno())
    return hashing.bytes, raw_bytes, hashing.sha256.hexdigest()


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()


def _stored_blocks(fh: BinaryIO, key: bytes | None, name: str, digest) -> Iterable[bytes]:
    """Yield the compressed stream from a stored file, decrypting frames; hashes every byte read."""

    def read(n: int) -> bytes:
        data = fh.read(n)
        digest.update(data)
        return data

    if not key:
        while block := read(CHUNK):
            yield block
        return
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    if read(len(GCM_MAGIC)) != GCM_MAGIC:
        raise ChecksumMismatch(f"{name}: not an encrypted dbops file (bad header)")
    aead, index, final = AESGCM(key), 0, False
    while not final:
        header = read(_HEADER)
        if len(header) < _HEADER:
            raise ChecksumMismatch(f"{name}: truncated after {index} encrypted frames")
        nonce, final, length = header[:_NONCE], bool(header[_NONCE]), int.from_bytes(header[_NONCE + 1:], "big")
        try:
            yield aead.decrypt(nonce, read(length), _aad(index, final))
        except InvalidTag:
            raise ChecksumMismatch(f"{name}: encrypted frame {index} fails authentication "
                                   "(corrupted, or the wrong key)") from None
        index += 1


def decompressed(src: Path, sha256: str, key: bytes | None = None) -> Iterator[bytes]:
    """The content of stored file ``src``, decrypted and decompressed, checked against ``sha256`` at its end.

    :raises ChecksumMismatch: the file differs from ``sha256``, does not decompress or fails authentication.
    """
    digest = hashlib.sha256()
    try:
        with open(src, "rb") as fh:
            decompressor = zstandard.ZstdDecompressor().decompressobj()
            for block in _stored_blocks(fh, key, src.name, digest):
                yield decompressor.decompress(block)
            digest.update(fh.read())  # anything after the last frame still counts
    except zstandard.ZstdError as err:
        actual = digest.hexdigest()
        if actual != sha256:
            raise ChecksumMismatch(f"{src.name}: sha256 {actual} differs from the manifest's {sha256}") from None
        raise ChecksumMismatch(f"{src.name}: does not decompress: {err}") from None
    actual = digest.hexdigest()
    if actual != sha256:
        raise ChecksumMismatch(f"{src.name}: sha256 {actual} differs from the manifest's {sha256}")


def read_decompressed(src: Path, dest: Path, sha256: str, key: bytes | None = None) -> int:
    """Check ``src`` against ``sha256`` while decrypting and decompressing it into ``dest``; return raw bytes."""
    raw_bytes = 0
    with open(dest, "wb") as out:
        for data in decompressed(src, sha256, key):
            raw_bytes += len(data)
            out.write(data)
    return raw_bytes


def is_encrypted(path: Path) -> bool:
    """Whether a stored file was written encrypted (it starts with the AES-GCM header, not a zstd frame)."""
    with open(path, "rb") as fh:
        return fh.read(len(GCM_MAGIC)) == GCM_MAGIC
