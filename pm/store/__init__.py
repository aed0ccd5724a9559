"""Persistence: jobs and tasks in SQLite or PostgreSQL, written in groups behind the actors."""

from ._devices import DeviceTaskQuery as DeviceTaskQuery
from ._errors import StoreOpenError as StoreOpenError
from ._errors import StoreUnavailable as StoreUnavailable
from ._open import open_store as open_store
from ._schema import SCHEMA_VERSION as SCHEMA_VERSION
from ._schema import SchemaTooNew as SchemaTooNew
from ._schema import migrate as migrate
from ._store import Store as Store
