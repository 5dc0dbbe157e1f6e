"""The backup store against a local directory and a real S3-compatible server (moto server)."""

from __future__ import annotations

import json

import boto3
import pytest

from dbops.core.config import StorageConfig
from dbops.core.errors import is_transient
from dbops.hooks.store import LocalStore, S3Store, get_store
from tests.conftest import free_port


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
    assert not (tmp_path / "backups" / ".dbops-probe").exists(), "the probe and its empty directory are removed"


def test_local_store_deleting_what_is_not_there_is_fine(tmp_path):
    store = LocalStore(tmp_path / "backups")
    store.delete("appdb/full/20200101T000000Z/manifest.json")
    store.put_bytes("appdb/full/a/manifest.json", b"{}")
    store.delete("appdb/full/a/manifest.json")
    assert not (tmp_path / "backups" / "appdb").exists() and (tmp_path / "backups").is_dir()


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


@pytest.fixture(params=["local", "s3"])
def any_store(request, tmp_path, bucket):
    if request.param == "local":
        return LocalStore(tmp_path / "backups")
    return S3Store("s3://dbops-test/files", "aws_test")


def test_files_list_size_and_delete(any_store, tmp_path):
    source = tmp_path / "big.bin"
    source.write_bytes(b"x" * (9 * 1024 * 1024))  # above boto3's 8 MiB multipart threshold
    any_store.put_file(source, "appdb/full/20261122T020000Z/dump.pgc.zst")
    any_store.put_bytes("appdb/full/20261122T020000Z/manifest.json", b"{}")
    any_store.put_bytes("appdb/full/20261121T020000Z/manifest.json", b"{}")
    assert any_store.list_keys("appdb/full/20261122T020000Z") == [
        "appdb/full/20261122T020000Z/dump.pgc.zst", "appdb/full/20261122T020000Z/manifest.json"]
    assert any_store.size("appdb/full/20261122T020000Z/dump.pgc.zst") == 9 * 1024 * 1024
    assert any_store.size("appdb/full/nothing") is None
    copy = tmp_path / "copy.bin"
    any_store.get_file("appdb/full/20261122T020000Z/dump.pgc.zst", copy)
    assert copy.read_bytes() == source.read_bytes()
    for key in any_store.list_keys("appdb/full/20261122T020000Z"):
        any_store.delete(key)
    assert any_store.list_keys("appdb/full/20261122T020000Z") == []
    assert any_store.exists("appdb/full/20261121T020000Z/manifest.json")
