"""The schema's version: Alembic migrations, run on every open so that a database of any age
is brought to the newest revision before it is used."""

from __future__ import annotations

from importlib.resources import files

from alembic import command
from alembic.config import Config as AlembicConfig
from sqlalchemy.engine import Connection

__all__ = [
    "migrate",
]


def _alembic_config() -> AlembicConfig:
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(files("mark.adapters.db") / "migrations"))
    return cfg


def migrate(connection: Connection) -> None:
    """Bring the schema to the newest Alembic revision on an open connection."""
    cfg = _alembic_config()
    cfg.attributes["connection"] = connection
    command.upgrade(cfg, "head")
