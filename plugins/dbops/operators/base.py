"""The base of every dbops operator that works on one configured target."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from airflow.sdk import BaseOperator

from dbops.config import DbopsConfig, load_config


class TargetOperator(BaseOperator):
    """An operator for one target of dbops.yaml.

    :param target: the target's key in dbops.yaml.
    :param config_path: the config file; default ``$DBOPS_CONFIG`` or include/config/dbops.yaml.
    """

    template_fields: Sequence[str] = ("target",)

    def __init__(self, *, target: str, config_path: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.target = target
        self.config_path = config_path

    def load_config(self) -> DbopsConfig:
        return load_config(self.config_path)
