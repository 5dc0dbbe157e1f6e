"""mongo_maintenance_weekly__<target>: weekly maintenance of each MongoDB target with a ``mongo.maintenance``
section in include/config/dbops.yaml. What it does and what to do when it fails:
include/runbooks/mongo_maintenance_weekly.md.
"""

from __future__ import annotations

from datetime import timedelta

from airflow.sdk import DAG

from dbops.core.config import load_config, pool_name
from dbops.core.dag_defaults import dag_kwargs, runbook
from dbops.core.parsing import own_targets
from dbops.mongo.policy import mongo_sections
from dbops.notifications.channels import DbopsFailureNotifier
from dbops.operators.mongo import MongoMaintenanceOperator

config = load_config()

for target, policy in own_targets(mongo_sections(config, "maintenance")):
    with DAG(
        dag_id=f"mongo_maintenance_weekly__{target}",
        schedule=policy.weekly,
        description=f"Weekly maintenance of MongoDB {target}: validate, compact where free, unused indexes",
        doc_md=runbook("mongo_maintenance_weekly", target),
        **dag_kwargs(tags=["maintenance", "mongodb", target],
                     on_failure=DbopsFailureNotifier(target=target, channels=policy.notify)),
    ):
        MongoMaintenanceOperator(task_id="maintain", target=target, pool=pool_name(target),
                                 execution_timeout=timedelta(hours=4))
