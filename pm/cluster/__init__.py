"""Several gateways on one PostgreSQL database (issue 16): gateway identity, device shards
and their leases with fencing epochs. Inactive unless ``cluster.enabled`` (docs/scale-out.md
says what exists and what is missing)."""

from ._identity import gateway_id_for as gateway_id_for
from ._identity import with_gateway_id as with_gateway_id
from ._keeper import LeaseKeeper as LeaseKeeper
from ._leases import FENCE as FENCE
from ._leases import LeaseBook as LeaseBook
from ._leases import ShardCountMismatch as ShardCountMismatch
from ._leases import ShardLease as ShardLease
from ._shards import fair_share as fair_share
from ._shards import shard_of as shard_of
