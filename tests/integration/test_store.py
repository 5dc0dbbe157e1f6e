"""The backup store against a local directory and a real S3-compatible server (moto server)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import boto3
import pytest

from dbops.config import StorageConfig
from dbops.errors import is_transient
from dbops.hooks.store import LocalStore, S3Store, get_store


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def s3_endpoint():
    port = free_port()
    moto = Path(sys.executable).parent / "moto_server"
    proc = subprocess.Popen([str(moto), "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.2)
    yield endpoint
    proc.terminate()
    proc.wait(timeout=10)


def aws_connection(monkeypatch, conn_id: str, endpoint: str) -> None:
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps({
        "conn_type": "aws", "login": "testing", "password": "testing",
        "extra": {"endpoint_url": endpoint, "region_name": "us-east-1"},
    }))


@pytest.fixture
def bucket(s3_endpoint, monkeypatch):
    aws_connection(monkeypatch, "aws_test", s3_endpoint)
    client = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1",
                          aws_access_key_id="testing", aws_secret_access_key="testing")
    client.create_bucket(Bucket="dbops-test")
    return client


def test_local_store_round_trip_and_probe(tmp_path):
    store = get_store(StorageConfig(url=f"file://{tmp_path}/backups"))
    assert isinstance(store, LocalStore)
    store.put_bytes("appdb/2026-11-22/manifest.json", b"{}")
    assert store.read_bytes("appdb/2026-11-22/manifest.json") == b"{}"
    store.check_writable()
    assert not list((tmp_path / "backups" / ".dbops-probe").iterdir())


def test_local_store_rejects_keys_escaping_its_root(tmp_path):
    store = LocalStore(tmp_path / "backups")
    with pytest.raises(ValueError, match="escapes the store root"):
        store.put_bytes("../../etc/evil", b"x")
    assert not (tmp_path / "etc").exists()


def test_local_store_not_writable_fails(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(OSError):
        LocalStore(blocker / "backups").check_writable()


def test_s3_store_writes_with_encryption_and_storage_class(bucket):
    store = get_store(StorageConfig(url="s3://dbops-test/prod", aws_conn_id="aws_test", sse="AES256",
                                    storage_class="STANDARD_IA"))
    assert isinstance(store, S3Store)
    store.put_bytes("appdb/x.bin", b"payload")
    head = bucket.head_object(Bucket="dbops-test", Key="prod/appdb/x.bin")
    assert head["ServerSideEncryption"] == "AES256" and head["StorageClass"] == "STANDARD_IA"
    assert store.read_bytes("appdb/x.bin") == b"payload"
    store.delete("appdb/x.bin")
    store.check_writable()
    assert bucket.list_objects_v2(Bucket="dbops-test", Prefix="prod/").get("KeyCount", 0) == 0


def test_unreachable_s3_fails_as_transient(monkeypatch):
    aws_connection(monkeypatch, "aws_down", f"http://127.0.0.1:{free_port()}")
    store = S3Store("s3://dbops-test/prod", "aws_down")
    with pytest.raises(Exception) as info:
        store.check_writable()
    assert is_transient(info.value), repr(info.value)
