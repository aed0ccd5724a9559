"""Persistence: jobs and tasks in SQLite, written in groups behind the actors."""

from ._schema import SCHEMA_VERSION as SCHEMA_VERSION
from ._schema import SchemaTooNew as SchemaTooNew
from ._schema import migrate as migrate
from ._sqlite import Store as Store
from ._sqlite import open_store as open_store
