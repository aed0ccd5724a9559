"""A small actor runtime on trio: bounded mailboxes, supervision, and keyed registries.

It knows nothing of puppetmaster; ``pm`` imports ``actors``, never the reverse.
"""

from ._ref import ActorRef as ActorRef
from ._ref import ActorStopped as ActorStopped
from ._ref import AskTimeout as AskTimeout
from ._ref import MailboxFull as MailboxFull
from ._ref import Reply as Reply
from ._ref import open_mailbox as open_mailbox
from ._registry import SWEEPS_PER_IDLE_TIMEOUT as SWEEPS_PER_IDLE_TIMEOUT
from ._registry import IdleInbox as IdleInbox
from ._registry import Registry as Registry
from ._supervisor import ActorFunction as ActorFunction
from ._supervisor import Directive as Directive
from ._supervisor import Failure as Failure
from ._supervisor import FailureHandler as FailureHandler
from ._supervisor import Supervisor as Supervisor
from ._supervisor import open_supervisor as open_supervisor
from ._supervisor import stop_on_failure as stop_on_failure
