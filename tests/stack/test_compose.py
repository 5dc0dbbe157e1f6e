"""Structural checks of docker-compose.yaml and Dockerfile.

No Docker engine runs where the tests run, so the production stack is checked by reading
the files: the services it must have, pinned images, the Celery setup, mounts, health
checks, dependency conditions, and that the worker can be scaled. Pure: PyYAML only.
"""

from __future__ import annotations

import json
import re
import shlex
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO / "docker-compose.yaml"
DOCKERFILE = REPO / "Dockerfile"

AIRFLOW_SERVICES = (
    "airflow-init",
    "airflow-apiserver",
    "airflow-scheduler",
    "airflow-dag-processor",
    "airflow-triggerer",
    "airflow-worker",
)
REQUIRED_SERVICES = (
    "postgres",
    "redis",
    *AIRFLOW_SERVICES,
    "target-postgres",
    "mongodb",
    "minio",
)
# Services that run once and exit; every other service is long-running.
ONE_SHOT_SERVICES = frozenset({"airflow-init", "minio-init"})
ALLOWED_BASE_IMAGES = ("apache/airflow:3.3.2", "apache/airflow:3.3.2-python3.11")

_INTERPOLATION = re.compile(r"\$\$|\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<default>[^}]*))?\}")


def resolve(value: str) -> str:
    """Apply compose interpolation with an empty environment: what a bare `up` would use."""

    def _sub(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        if match.group("op") in (":-", "-"):
            return match.group("default")
        return ""

    return _INTERPOLATION.sub(_sub, value)


@cache
def compose() -> dict[str, Any]:
    # safe_load resolves the x-airflow-common anchors and `<<` merge keys.
    return yaml.safe_load(COMPOSE_FILE.read_text())


def services() -> dict[str, dict[str, Any]]:
    return compose()["services"]


def long_running() -> list[str]:
    return sorted(set(services()) - ONE_SHOT_SERVICES)


def environment(service: str) -> dict[str, str]:
    env = services()[service].get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {key: resolve(str(value)) for key, value in env.items()}


def volume_mounts(service: str) -> dict[str, str]:
    """Container target -> source, for short ("src:dst[:mode]") and long syntax."""
    mounts: dict[str, str] = {}
    for volume in services()[service].get("volumes") or []:
        if isinstance(volume, dict):
            mounts[volume["target"]] = volume.get("source", "")
        else:
            parts = resolve(volume).split(":")
            mounts[parts[1] if len(parts) > 1 else parts[0]] = parts[0] if len(parts) > 1 else ""
    return mounts


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    logical: list[str] = []
    buffer = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            buffer += line[:-1] + " "
            continue
        logical.append(buffer + line)
        buffer = ""
    if buffer:
        logical.append(buffer)
    return [(text.split(None, 1)[0].upper(), text.split(None, 1)[1] if " " in text else "") for text in logical]


def split_image(image: str) -> tuple[str, str | None]:
    """Split "registry:port/name:tag@digest" into (name, tag)."""
    image = image.split("@", 1)[0]
    last = image.rsplit("/", 1)[-1]
    if ":" in last:
        name, tag = image.rsplit(":", 1)
        return name, tag
    return image, None


# ------------------------------------------------------------------------------ services


def test_required_services_present() -> None:
    missing = [name for name in REQUIRED_SERVICES if name not in services()]
    assert not missing, f"docker-compose.yaml lacks services: {missing}"


@pytest.mark.parametrize("service", AIRFLOW_SERVICES)
def test_airflow_services_build_from_dockerfile(service: str) -> None:
    build = services()[service].get("build")
    assert build is not None, f"{service} must be built from ./Dockerfile (build: .)"
    context = build if isinstance(build, str) else build.get("context", ".")
    dockerfile = "Dockerfile" if isinstance(build, str) else build.get("dockerfile", "Dockerfile")
    assert (REPO / context / dockerfile).resolve() == DOCKERFILE


def test_every_image_is_pinned() -> None:
    problems = []
    for name, service in services().items():
        image = service.get("image")
        if image is None:
            if "build" not in service:
                problems.append(f"{name}: neither image nor build")
            continue
        image = resolve(str(image))
        if "@sha256:" in image:
            continue
        _, tag = split_image(image)
        if tag is None or tag == "" or tag == "latest" or tag.startswith("latest-"):
            problems.append(f"{name}: {image!r} is not pinned to a tag")
    assert not problems, problems


def test_no_latest_anywhere() -> None:
    text = COMPOSE_FILE.read_text() + DOCKERFILE.read_text()
    assert not re.search(r":latest\b", text), "a `:latest` image reference crept in"


def test_dockerfile_base_image_is_airflow_332() -> None:
    froms = [args.split()[0] for instr, args in dockerfile_instructions() if instr == "FROM"]
    assert froms, "Dockerfile has no FROM"
    assert froms[0] in ALLOWED_BASE_IMAGES, f"FROM {froms[0]!r}, expected one of {ALLOWED_BASE_IMAGES}"
    # A multi-stage build would have to end on the same base; one stage is what we ship.
    assert all(base in ALLOWED_BASE_IMAGES for base in froms), froms


def test_dockerfile_installs_requirements_with_constraints_as_airflow_user() -> None:
    instructions = dockerfile_instructions()
    user = "root"
    copied: set[str] = set()
    installs = []
    for instr, args in instructions:
        if instr == "USER":
            user = args.strip()
        elif instr in ("COPY", "ADD"):
            copied.update(Path(token).name for token in shlex.split(args) if not token.startswith("--"))
        elif instr == "RUN" and re.search(r"\bpip\b.*\binstall\b", args):
            installs.append((user, shlex.split(args)))
    assert {"requirements.txt", "constraints.txt"} <= copied, "requirements.txt and constraints.txt must be copied in"
    matching = []
    for install_user, argv in installs:
        pairs = list(zip(argv, argv[1:]))
        req = any(flag in ("-r", "--requirement") and Path(value).name == "requirements.txt" for flag, value in pairs)
        con = any(flag in ("-c", "--constraint") and Path(value).name == "constraints.txt" for flag, value in pairs)
        if req and con:
            matching.append((install_user, argv))
    assert matching, f"no `pip install -r requirements.txt -c constraints.txt` in Dockerfile: {installs}"
    for install_user, argv in matching:
        assert install_user == "airflow", "the official image must be extended with pip as USER airflow"
        assert "--no-cache-dir" in argv


# ------------------------------------------------------------------------------ Airflow configuration


@pytest.mark.parametrize("service", AIRFLOW_SERVICES)
def test_executor_is_celery(service: str) -> None:
    assert environment(service).get("AIRFLOW__CORE__EXECUTOR") == "CeleryExecutor"


@pytest.mark.parametrize("service", AIRFLOW_SERVICES)
def test_airflow_environment(service: str) -> None:
    env = environment(service)
    assert env.get("AIRFLOW__CORE__LOAD_EXAMPLES", "").lower() == "false"
    assert env.get("AIRFLOW__CORE__AUTH_MANAGER", "").endswith(("FabAuthManager", "SimpleAuthManager"))
    assert env.get("AIRFLOW__CORE__EXECUTION_API_SERVER_URL", "").startswith("http://airflow-apiserver:8080/")
    assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].split("@", 1)[1].startswith("postgres/")
    broker = env["AIRFLOW__CELERY__BROKER_URL"]
    assert broker.startswith("redis://") and "@redis:6379" in broker
    assert env["AIRFLOW__CELERY__RESULT_BACKEND"].startswith("db+postgresql://")
    # Long backups must not outlive their execution-API token (default 600 s).
    assert int(env.get("AIRFLOW__EXECUTION_API__JWT_EXPIRATION_TIME", "600")) >= 3600
    # Every component must sign/verify tokens with the same secret.
    assert env.get("AIRFLOW__API_AUTH__JWT_SECRET")


def test_dbops_connections() -> None:
    env = environment("airflow-worker")
    conns = {}
    for key in ("AIRFLOW_CONN_DBOPS_STATE", "AIRFLOW_CONN_PG_APPDB", "AIRFLOW_CONN_AWS_BACKUP", "AIRFLOW_CONN_MONGO_CHATDB",
                "AIRFLOW_CONN_PG_APPDB_REPLICATION"):
        assert key in env, f"{key} missing from the Airflow environment"
        conns[key] = json.loads(env[key])
    assert conns["AIRFLOW_CONN_DBOPS_STATE"]["conn_type"] == "postgres"
    assert conns["AIRFLOW_CONN_DBOPS_STATE"]["schema"] != "airflow", "state must not live in the metadata DB"
    assert conns["AIRFLOW_CONN_PG_APPDB"]["host"] == "target-postgres"
    assert conns["AIRFLOW_CONN_PG_APPDB"]["schema"] == "appdb"
    assert conns["AIRFLOW_CONN_PG_APPDB_REPLICATION"]["host"] == "target-postgres"
    mongo = conns["AIRFLOW_CONN_MONGO_CHATDB"]  # the demo MongoDB target: mongod, the official image
    assert (mongo["conn_type"], mongo["host"], mongo["schema"]) == ("mongo", "mongodb", "chatdb")
    aws = conns["AIRFLOW_CONN_AWS_BACKUP"]
    assert aws["conn_type"] == "aws"
    assert aws["extra"]["endpoint_url"] == "http://minio:9000"
    for name, conn in conns.items():
        if conn.get("host"):
            assert conn["host"] in services(), f"{name} points at unknown service {conn['host']!r}"


def test_secrets_are_interpolated_not_hardcoded() -> None:
    """Passwords and secrets come from ${VAR:-dev-default}, so a .env overrides them."""
    secretish = re.compile(r"PASSWORD|SECRET|FERNET|AIRFLOW_CONN_|SQL_ALCHEMY_CONN|RESULT_BACKEND|^MC_HOST_")
    problems = []
    checked = 0
    for name, service in services().items():
        env = service.get("environment") or {}
        if isinstance(env, list):
            env = dict(item.split("=", 1) for item in env if "=" in item)
        for key, value in env.items():
            if secretish.search(key):
                checked += 1
                if "${" not in str(value):
                    problems.append(f"{name}.{key}")
    assert checked, "no secret-bearing variables found at all"
    assert not problems, f"hard-coded secrets (use ${{VAR:-default}}): {problems}"


@pytest.mark.parametrize("service", AIRFLOW_SERVICES)
def test_airflow_services_mount_code(service: str) -> None:
    mounts = volume_mounts(service)
    for folder in ("dags", "plugins", "include", "logs"):
        target = f"/opt/airflow/{folder}"
        assert target in mounts, f"{service} does not mount {target}"
        assert Path(mounts[target]).name == folder and mounts[target].startswith("./"), mounts[target]


def test_named_volumes_are_declared() -> None:
    declared = set(compose().get("volumes") or {})
    for name in services():
        for source in volume_mounts(name).values():
            if source and not source.startswith(("./", "/", "~")):
                assert source in declared, f"{name} uses undeclared volume {source!r}"


def test_target_postgres_18_volume_layout() -> None:
    """postgres:18+ refuses to start with the data volume at /var/lib/postgresql/data."""
    _, tag = split_image(services()["target-postgres"]["image"])
    mounts = volume_mounts("target-postgres")
    assert tag is not None and tag.split(".")[0].split("-")[0] == "18"
    assert "/var/lib/postgresql" in mounts
    assert "/var/lib/postgresql/data" not in mounts
    assert environment("target-postgres").get("POSTGRES_DB") == "appdb"


# ------------------------------------------------------------------------------ health and ordering


def _healthcheck_test(service: str) -> list[str] | str | None:
    check = services()[service].get("healthcheck")
    if not check or check.get("disable"):
        return None
    test = check.get("test")
    if not test or test == ["NONE"]:
        return None
    return test


@pytest.mark.parametrize("service", [name for name in REQUIRED_SERVICES if name not in ONE_SHOT_SERVICES])
def test_required_long_running_services_have_healthchecks(service: str) -> None:
    assert _healthcheck_test(service), f"{service} has no healthcheck"


def test_every_long_running_service_has_healthcheck_and_restart() -> None:
    missing = [name for name in long_running() if not _healthcheck_test(name)]
    assert not missing, f"long-running services without a healthcheck: {missing}"
    restart_policies = ("always", "unless-stopped")
    no_restart = [name for name in long_running() if services()[name].get("restart") not in restart_policies]
    assert not no_restart, f"long-running services without a restart policy: {no_restart}"


def test_one_shot_services_do_not_restart() -> None:
    for name in ONE_SHOT_SERVICES & set(services()):
        assert services()[name].get("restart", "no") in ("no", "on-failure"), name


def test_healthcheck_probes_match_the_service() -> None:
    """Each health check probes the right thing, not a placeholder such as `true`."""
    expected = {
        "postgres": "pg_isready",
        "target-postgres": "pg_isready",
        "redis": "redis-cli ping",
        "mongodb": "mongosh",
        "minio": "mc ready",
        "airflow-apiserver": "/api/v2/",
        "airflow-scheduler": ":8974/health",
        "airflow-dag-processor": "DagProcessorJob",
        "airflow-triggerer": "TriggererJob",
        "airflow-worker": "inspect ping",
    }
    for service, needle in expected.items():
        test = _healthcheck_test(service)
        joined = " ".join(test) if isinstance(test, list) else str(test)
        assert needle in joined, f"{service} healthcheck {joined!r} does not contain {needle!r}"


def test_depends_on_uses_health_conditions() -> None:
    problems = []
    for name, service in services().items():
        depends = service.get("depends_on") or {}
        if isinstance(depends, list):
            problems.append(f"{name}: depends_on without conditions")
            continue
        for dependency, spec in depends.items():
            assert dependency in services(), f"{name} depends on unknown {dependency}"
            wanted = "service_completed_successfully" if dependency in ONE_SHOT_SERVICES else "service_healthy"
            if (spec or {}).get("condition") != wanted:
                problems.append(f"{name} -> {dependency}: expected condition {wanted}")
    assert not problems, problems
    for service in AIRFLOW_SERVICES:
        depends = services()[service]["depends_on"]
        assert depends["postgres"]["condition"] == "service_healthy"
        assert depends["redis"]["condition"] == "service_healthy"
        if service != "airflow-init":
            assert depends["airflow-init"]["condition"] == "service_completed_successfully"


# ------------------------------------------------------------------------------ scaling


def test_worker_is_scalable() -> None:
    worker = services()["airflow-worker"]
    assert "container_name" not in worker, "container_name prevents --scale airflow-worker=N"
    assert "hostname" not in worker, "a fixed hostname makes every replica the same Celery node"
    assert not worker.get("ports"), "host port bindings collide when the worker is scaled"
    assert worker.get("command") in ("celery worker", ["celery", "worker"])


def test_no_container_names_on_airflow_services() -> None:
    named = [name for name in AIRFLOW_SERVICES if "container_name" in services()[name]]
    assert not named, f"container_name set on {named}: prevents scaling and parallel stacks"


def test_pitr_needs_are_in_the_compose_file() -> None:
    """Incremental base backups need WAL summaries; staged dumps survive a worker restart."""
    target = compose()["services"]["target-postgres"]
    assert "summarize_wal=on" in target["command"]
    for service in ("airflow-worker", "airflow-scheduler"):
        mounts = [str(v) for v in compose()["services"][service].get("volumes", [])]
        assert any(m.endswith(":/opt/airflow/var/staging") for m in mounts), service
