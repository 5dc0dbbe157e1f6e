"""mongo_retention__<target> (daily): the ``mongo.retention`` policies of each MongoDB target in
include/config/dbops.yaml. What it does and what to do when it fails: include/runbooks/mongo_retention.md.
"""

from __future__ import annotations

from datetime import timedelta

from airflow.sdk import DAG

from dbops.core.config import load_config, pool_name
from dbops.core.dag_defaults import dag_kwargs, runbook
from dbops.core.parsing import own_targets
from dbops.mongo.policy import mongo_sections
from dbops.notifications.channels import DbopsFailureNotifier
from dbops.operators.mongo import MongoRetentionOperator

config = load_config()

for target, policy in own_targets(mongo_sections(config, "retention")):
    with DAG(
        dag_id=f"mongo_retention__{target}",
        schedule=policy.schedule,
        description=f"Data retention of MongoDB {target}: due documents purged in batches, or TTL indexes",
        doc_md=runbook("mongo_retention", target),
        **dag_kwargs(tags=["retention", "mongodb", target],
                     on_failure=DbopsFailureNotifier(target=target, channels=policy.notify)),
    ):
        MongoRetentionOperator(task_id="purge", target=target, pool=pool_name(target),
                               execution_timeout=timedelta(hours=2))
