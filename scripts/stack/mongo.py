"""The local MongoDB-compatible server (SecantusDB, a MongoDB wire-protocol server on WiredTiger).

Local development and tests only: production targets run mongod (docker-compose keeps the official
image). It runs as a one-member replica set on 127.0.0.1:``DBOPS_MONGO_PORT`` with its data under
var/mongodata and SCRAM authentication: the first start creates the user ``dbops`` (password in
var/secrets/mongo_password, sent over the wire, never in process arguments), then restarts with
``--auth``. Stopped by its pid, which var/mongodata/mongod.pid holds.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from scripts.stack import log
from scripts.stack.credentials import mongo_password
from scripts.stack.paths import MONGO_DATA, MONGO_PORT, PG_HOST, port_taken, require_free_port

MONGO_USER = "dbops"
DEMO_DATABASE = "chatdb"
SERVER_BIN = str(Path(sys.executable).parent / "secantusd-py")
# The server keeps 1 h of oplog by default (mongod's usually spans days); its cap of 100 000 entries stays,
# as every oplog query reads all of them.
OPLOG_RETENTION_SECONDS = 2 * 86400


def mongo_client(password: str | None = None, port: int = MONGO_PORT, **kwargs):
    """A pymongo client of the local server as ``dbops`` (``password`` overrides the generated one)."""
    import pymongo

    return pymongo.MongoClient(PG_HOST, port, username=MONGO_USER, password=password or mongo_password(),
                               authSource="admin", directConnection=True, serverSelectionTimeoutMS=5000,
                               **kwargs)


def mongo_conn(database: str, port: int = MONGO_PORT, password: str | None = None) -> str:
    """Airflow connection (JSON) of a database on the local server, as ``AIRFLOW_CONN_*`` takes it."""
    return json.dumps({"conn_type": "mongo", "host": PG_HOST, "port": port, "schema": database,
                       "login": MONGO_USER, "password": password or mongo_password(),
                       "extra": {"authSource": "admin", "directConnection": True, "serverSelectionTimeoutMS": 5000}})


class MongoServer:
    """The server on ``port`` with its data (and pid file) in ``data``; stopped by that pid.

    ``standalone``: a standalone server (no replica set: no oplog, no transactions) instead.
    ``oplog_max_entries``: cap the oplog at this many entries (the server's default is 100 000).
    """

    def __init__(self, port: int = MONGO_PORT, data: Path = MONGO_DATA, standalone: bool = False,
                 oplog_max_entries: int | None = None) -> None:
        self.port = port
        self.data = data
        self.standalone = standalone
        self.oplog_max_entries = oplog_max_entries
        self.pid_file = data / "mongod.pid"
        self.log_file = data / "mongod.log"

    def running_pid(self) -> int | None:
        """The pid of the server this data directory's pid file names, when that process still runs."""
        try:
            pid = int(self.pid_file.read_text().split()[0])
            os.kill(pid, 0)
        except (FileNotFoundError, ValueError, IndexError, ProcessLookupError, PermissionError):
            return None
        return pid

    def start(self) -> bool:
        """Start the server unless it runs already. Return True when this call started it."""
        if self.running_pid() is not None:
            port = int(self.pid_file.read_text().split()[1])
            if port != self.port:
                raise SystemExit(f"[devstack] the MongoDB-compatible server of {self.data} runs on port {port}, "
                                 f"not DBOPS_MONGO_PORT={self.port}; stop it first (devstack.py down with "
                                 f"DBOPS_MONGO_PORT={port})")
            return False
        require_free_port(self.port, "the MongoDB-compatible server", "DBOPS_MONGO_PORT")
        users_created = self.data / ".dbops-users-created"
        if not users_created.exists():
            log(f"initialising the MongoDB-compatible server (SecantusDB) in {self.data}")
            self._launch(auth=False)
            self._create_user()
            self.stop()
            users_created.touch()
        log(f"starting the MongoDB-compatible server on {PG_HOST}:{self.port} "
            f"({'standalone' if self.standalone else 'one-member replica set'})")
        self._launch(auth=True)
        return True

    def stop(self, timeout: float = 30) -> None:
        """SIGTERM, wait (the server takes 3-6 s to exit), SIGKILL after ``timeout``."""
        pid = self.running_pid()
        if pid is not None:
            log("stopping the MongoDB-compatible server")
            try:
                os.kill(pid, signal.SIGTERM)
                deadline = time.monotonic() + timeout
                while not _gone(pid):
                    if time.monotonic() > deadline:
                        os.kill(pid, signal.SIGKILL)
                    time.sleep(0.2)
            except ProcessLookupError:
                pass
        self.pid_file.unlink(missing_ok=True)

    def _launch(self, auth: bool) -> None:
        self.data.mkdir(parents=True, exist_ok=True)
        args = [SERVER_BIN, "--host", PG_HOST, "--port", str(self.port), "--storage-path", str(self.data / "wt"),
                "--log-level", "WARNING", "--oplog-retention-seconds", str(OPLOG_RETENTION_SECONDS),
                *(["--auth"] if auth else []),
                *(["--standalone"] if self.standalone else []),
                *(["--oplog-max-entries", str(self.oplog_max_entries)] if self.oplog_max_entries else [])]
        with open(self.log_file, "ab") as out:
            proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        self.pid_file.write_text(f"{proc.pid} {self.port}")
        deadline = time.monotonic() + 60
        while not port_taken(self.port):
            if proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise SystemExit(f"[devstack] the MongoDB-compatible server did not start on {PG_HOST}:{self.port}; "
                                 f"see {self.log_file}")
            time.sleep(0.2)

    def _create_user(self) -> None:
        import pymongo

        with pymongo.MongoClient(PG_HOST, self.port, directConnection=True, serverSelectionTimeoutMS=10000) as client:
            client.admin.command("createUser", MONGO_USER, pwd=mongo_password(), roles=["root"])


def _gone(pid: int) -> bool:
    """True once ``pid`` has exited (reaping it when it is our child)."""
    try:
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return True
    except ChildProcessError:  # not our child
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def start_mongo() -> bool:
    """Start the local stack's server unless it runs. Return True when this call started it."""
    return MongoServer().start()


def stop_mongo() -> None:
    MongoServer().stop()


def load_mongo_demo_if_empty() -> None:
    """Generate the demo target chatdb (scripts/mongo_demo_data.py) unless it is loaded already."""
    from scripts.mongo_demo_data import generate

    with mongo_client() as client:
        if "chat_conversations" in client[DEMO_DATABASE].list_collection_names():
            return
        size = int(os.environ.get("DBOPS_MONGO_DEMO_SIZE_MB", "20"))
        log(f"loading the demo MongoDB target {DEMO_DATABASE} (about {size} MB)")
        generate(client[DEMO_DATABASE], size)
