"""Restore a stored backup: fetch (checksums), databases to restore into, pg_restore, roles, what is never replaced."""

from __future__ import annotations

import hashlib
import re
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path

from airflow.sdk.exceptions import AirflowFailException
from psycopg import sql

from dbops.core.config import DbopsConfig
from dbops.core.manifest import FileEntry, Manifest
from dbops.core.processes import DEFAULT_TIMEOUT, run, tool_failed
from dbops.core.store import BackupStore
from dbops.core.streams import ChecksumMismatch, read_decompressed
from dbops.hooks.postgres import DbopsPostgresHook
from dbops.hooks.tools import PgTool

RESTORED_BY = "dbops restore of "  # the start of the comment a restore puts on the database it creates


def fetch(store: BackupStore, manifest: Manifest, prefix: str, staging: Path, key: bytes | None) -> Path:
    """Download the backup's archive, check size and sha256, decrypt and decompress; return the archive
    (a file, or a directory for a directory-format dump)."""
    (entry,) = manifest.files
    archive = fetch_file(store, prefix, entry, staging, key)
    if archive.suffix != ".tar":
        return archive
    directory = staging / "archive.d"  # a directory-format archive: pg_restore reads the directory
    with tarfile.open(archive) as tar:
        tar.extractall(directory, filter="data")
    archive.unlink()
    return directory


def fetch_file(store: BackupStore, prefix: str, entry: FileEntry, staging: Path, key: bytes | None) -> Path:
    """Download one file of a backup into ``staging`` (same relative name), check its size and sha256,
    decrypt and decompress it; return the decompressed file."""
    stored_size = store.size(f"{prefix}/{entry.name}")
    if stored_size != entry.bytes:
        raise ChecksumMismatch(f"{entry.name}: stored size {stored_size} differs from the manifest's {entry.bytes}")
    downloaded = staging / entry.name
    downloaded.parent.mkdir(parents=True, exist_ok=True)
    decompressed = staging / entry.name.removesuffix(".zst")
    store.get_file(f"{prefix}/{entry.name}", downloaded)
    try:
        read_decompressed(downloaded, decompressed, entry.sha256, key)
    except ChecksumMismatch as err:
        if entry.name == downloaded.name:
            raise
        raise ChecksumMismatch(f"{entry.name} (in the store): {err}") from None
    finally:
        downloaded.unlink(missing_ok=True)
    return decompressed


def create_database(admin: DbopsPostgresHook, name: str, replace: bool = False, comment: str | None = None) -> None:
    """Create ``name`` (dropping it first when ``replace``) on the admin hook's server, with ``comment``."""
    with admin.get_conn() as conn:
        conn.autocommit = True
        if replace:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE template0").format(sql.Identifier(name)))
        if comment:
            conn.execute(sql.SQL("COMMENT ON DATABASE {} IS {}").format(sql.Identifier(name), sql.Literal(comment)))


def drop_database(admin: DbopsPostgresHook, name: str) -> None:
    with admin.get_conn() as conn:
        conn.autocommit = True
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def database_comment(admin: DbopsPostgresHook, name: str) -> str | None:
    """The comment of database ``name``; None when it has none or does not exist."""
    row = admin.get_first("SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = %s",
                          parameters=(name,))
    return row[0] if row else None


def database_exists(admin: DbopsPostgresHook, name: str) -> bool:
    return admin.get_first("SELECT 1 FROM pg_database WHERE datname = %s", parameters=(name,)) is not None


def derived_name(database: str, suffix: str) -> str:
    """``<database><suffix>`` within PostgreSQL's 63 bytes: a long name is cut and tagged with its hash."""
    name = database + suffix
    if len(name.encode()) <= 63:
        return name
    tag = f"_{hashlib.sha1(database.encode()).hexdigest()[:8]}{suffix}"
    return database.encode()[:63 - len(tag.encode())].decode(errors="ignore") + tag


def swap_databases(admin: DbopsPostgresHook, new: str, database: str, retired: str) -> bool:
    """Put ``new`` in place of ``database``: the old one (if any) is renamed to ``retired`` first.

    The old database's sessions are terminated only here, just before its rename (renaming needs a
    database nobody is connected to); connections to it are refused from that moment. Return whether
    there was an old database. If a step fails, the old database gets its name and connections back.
    """
    with admin.get_conn() as conn:
        conn.autocommit = True
        old = sql.Identifier(database)
        replaced = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,)).fetchone() is not None
        renamed = False
        try:
            if replaced:
                conn.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS false").format(old))
                conn.execute("SELECT pg_terminate_backend(pid, 10000) FROM pg_stat_activity "
                             "WHERE datname = %s AND pid <> pg_backend_pid()", (database,))
                conn.execute(sql.SQL("ALTER DATABASE {} RENAME TO {}").format(old, sql.Identifier(retired)))
                renamed = True
            conn.execute(sql.SQL("ALTER DATABASE {} RENAME TO {}").format(sql.Identifier(new), old))
        except BaseException:
            if renamed:
                conn.execute(sql.SQL("ALTER DATABASE {} RENAME TO {}").format(sql.Identifier(retired), old))
            if replaced:
                conn.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS true").format(old))
            raise
    return replaced


def pg_restore(tool: PgTool, admin: DbopsPostgresHook, database: str, archive: Path, jobs: int,
               owners: bool = False, timeout: float = DEFAULT_TIMEOUT) -> float:
    """Restore ``archive`` into ``database`` with ``jobs`` parallel jobs; return seconds.

    With ``owners`` the objects keep their owners and grants (the roles must exist); without, they
    belong to the connecting role and carry no grants. A failure raises a classified ToolError.
    """
    started = time.monotonic()
    keep = [] if owners else ["--no-owner", "--no-privileges"]
    with admin.cli_environment(database) as env:
        result = run([tool.path, *keep, "--exit-on-error", f"--jobs={max(jobs, 1)}", f"--dbname={database}",
                      str(archive)], timeout, env)
    if result.returncode != 0:
        raise tool_failed("pg_restore", result.returncode, result.stderr)
    return time.monotonic() - started


# Words of pg_dump's SQL: a quoted identifier, or a run of anything but blanks, commas, parentheses, quotes.
_WORD = re.compile(r'"(?:[^"]|"")+"|[^\s,;()"]+')
_NOT_ROLES = {"WITH", "GRANT", "OPTION", "GRANTED", "BY", "CASCADE", "RESTRICT", "PUBLIC"}


@dataclass
class ArchiveNeeds:
    """What restoring an archive needs of a server, from the SQL pg_restore would run."""

    roles: set[str]  # own objects or appear in grants
    extensions: set[str]
    collations: set[str]  # pg_catalog collations that columns, indexes or types name
    locales: set[tuple[str, str]]  # (provider, locale) of the collations it creates


_EXTENSION = re.compile(r'^CREATE EXTENSION IF NOT EXISTS ("(?:[^"]|"")+"|\S+)')
_CATALOG_COLLATION = re.compile(r'COLLATE pg_catalog\.("(?:[^"]|"")+"|\w+)')
_CREATE_COLLATION = re.compile(r"^CREATE COLLATION \S+ \((.*)\);$")
_OPTION = re.compile(r"(\w+) = (?:'((?:[^']|'')*)'|(\w+))")


def archive_needs(tool: PgTool, archive: Path, timeout: float = DEFAULT_TIMEOUT) -> ArchiveNeeds:
    """Roles, extensions, collations and locales that restoring ``archive`` needs."""
    result = run([tool.path, "--schema-only", "--file=-", str(archive)], timeout, env={})
    if result.returncode != 0:
        raise tool_failed("pg_restore --schema-only", result.returncode, result.stderr)
    needs = ArchiveNeeds(set(), set(), set(), set())
    for line in result.stdout.splitlines():
        needs.roles.update(_roles_in(line))
        needs.collations.update(_unquote(name) for name in _CATALOG_COLLATION.findall(line))
        if match := _EXTENSION.match(line):
            needs.extensions.add(_unquote(match.group(1)))
        elif match := _CREATE_COLLATION.match(line):
            options = {key: quoted.replace("''", "'") if quoted or not bare else bare
                       for key, quoted, bare in _OPTION.findall(match.group(1))}
            provider = options.get("provider", "libc")
            needs.locales.update((provider, options[key]) for key in ("locale", "lc_collate", "lc_ctype")
                                 if options.get(key))
    return needs


def _unquote(word: str) -> str:
    return word[1:-1].replace('""', '"') if word.startswith('"') else word


def _roles_in(line: str) -> list[str]:
    """Roles a line of pg_dump's SQL names as owner, grantor or grantee."""
    words = _WORD.findall(line)
    plain = ["" if word.startswith('"') else word.upper() for word in words]
    if line.startswith("SET SESSION AUTHORIZATION "):
        named = words[3:4]
    elif line.startswith("ALTER ") and plain[-3:-1] == ["OWNER", "TO"]:
        named = words[-1:]
    elif line.startswith(("GRANT ", "REVOKE ", "ALTER DEFAULT PRIVILEGES ")):
        last = max((i for i, word in enumerate(plain) if word in ("TO", "FROM")), default=len(words))
        named = [word for word, upper in zip(words[last + 1:], plain[last + 1:]) if upper not in _NOT_ROLES]
        if plain[3:5] == ["FOR", "ROLE"]:
            named.append(words[5])
    else:
        return []
    return [_unquote(word) for word in named]


def missing_roles(admin: DbopsPostgresHook, roles: set[str]) -> list[str]:
    """Those of ``roles`` that do not exist on the admin hook's server."""
    existing = {row[0] for row in admin.get_records("SELECT rolname FROM pg_roles")}
    return sorted(roles - existing)


def protected_databases(config: DbopsConfig, target: str) -> dict[str, str]:
    """Databases a restore never replaces, with the reason: PostgreSQL's own, Airflow's metadata database,
    the ops database, and the database of every configured target and verification connection."""
    from urllib.parse import urlsplit

    from airflow.configuration import conf
    from airflow.sdk import BaseHook

    def database_of(conn_id: str) -> str:
        conn = BaseHook.get_connection(conn_id)
        return conn.schema or conn.login  # libpq's default database is the user's name

    protected = {}  # filled so that, for a name with several reasons, the most basic one is given
    for name, settings in config.targets.items():
        if settings.backup and settings.backup.verify_conn_id:
            protected[database_of(settings.backup.verify_conn_id)] = f"target {name}'s verification database"
    for name, settings in config.targets.items():
        protected[database_of(settings.conn_id)] = (
            "the target's own database" if name == target else f"the database of target {name}")
    protected[database_of(config.ops_conn_id)] = "the dbops ops database"
    metadata = urlsplit(conf.get("database", "sql_alchemy_conn", fallback="")).path.lstrip("/")
    for name in {"airflow", metadata} - {""}:
        protected[name] = "Airflow's metadata database"
    protected.update({"postgres": "PostgreSQL's maintenance database", "template0": "a template database",
                      "template1": "a template database"})
    return protected


def check_replaceable(config: DbopsConfig, target: str, admin: DbopsPostgresHook, database: str,
                      overwrite: bool | str, confirm_database: str | None) -> None:
    """Refuse a bad or protected name, and an existing database unless this restore may replace it: with
    ``overwrite``, and only if a restore created it or ``confirm_database`` names it again."""
    if not database or len(database.encode()) > 63:
        raise AirflowFailException(f"database name {database!r} must be 1 to 63 bytes")
    if confirm_database and confirm_database != database:
        raise AirflowFailException(f"confirm_database {confirm_database!r} does not match database "
                                   f"{database!r}: leave it empty, or repeat the database name exactly")
    reason = protected_databases(config, target).get(database)
    if reason:
        raise AirflowFailException(f"refusing to restore over {database!r}: it is {reason}. "
                                   "Restore into another database name.")
    if not database_exists(admin, database):
        return
    if str(overwrite).lower() not in ("true", "1", "yes"):
        raise AirflowFailException(f"database {database!r} exists; choose a new name or set overwrite")
    comment = database_comment(admin, database) or ""
    if not comment.startswith(RESTORED_BY) and confirm_database != database:
        raise AirflowFailException(
            f"database {database!r} exists and no dbops restore created it (its comment: {comment!r}); "
            f"to replace it anyway, set confirm_database to {database!r} as well as overwrite")


def drop_leftover(admin: DbopsPostgresHook, temporary: str) -> bool:
    """Drop the temporary database an interrupted restore left behind (return whether there was one);
    refuse one no restore made."""
    if not database_exists(admin, temporary):
        return False
    if not (database_comment(admin, temporary) or "").startswith(RESTORED_BY):
        raise AirflowFailException(f"database {temporary!r}, this restore's temporary name, exists and no dbops "
                                   "restore created it; rename or drop it, then run again")
    drop_database(admin, temporary)
    return True
