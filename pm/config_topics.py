"""The ``[topics]`` section of the configuration: the request, answer and status topic
templates (docs/protocol.md). Kept beside :mod:`pm.config`, which holds the other sections,
with the one rule that ties it to ``[cluster]`` (:func:`check_answer_topic_for_cluster`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .config_fields import Section
from .protocol import GATEWAY_PLACEHOLDER, TopicTemplates

if TYPE_CHECKING:
    from .config import Config

# The answer topic a cluster's gateways use: "{gateway}" is replaced by each gateway's id
# (cluster.gateway_id, or the id made up at start), so each hears only its own answers.
CLUSTER_ANSWER_TOPIC = "/remote/{device}/response/{gateway}"


class TopicsConfig(Section):
    # "{device}" is replaced by the normalized device id; in "response" (the request's
    # tunnel, where a device answers), "{gateway}" by this gateway's id: required with
    # cluster.enabled, e.g. "/remote/{device}/response/{gateway}" (docs/scale-out.md).
    request: str = "/remote/{device}"
    response: str = "/remote/{device}/response"
    # Presence (protocol v1.1): a device publishes a retained "online" here when it connects
    # and sets "offline" as its last will; the embedded broker (either engine) publishes the
    # same on behalf of every device it sees subscribe to its request topic (docs/protocol.md).
    status: str = "/remote/{device}/status"

    def __post_init__(self) -> None:
        # Checked here, not only where the topics are used: a bad template must stop `pm
        # serve` with one line naming the key, before the broker starts.
        for name, template in (
            ("request", self.request),
            ("response", self.response),
            ("status", self.status),
        ):
            if template.count("{device}") != 1:
                raise ValueError(f"topics.{name} must contain {{device}} exactly once")
            if "+" in template or "#" in template:
                raise ValueError(f"topics.{name} must not contain the MQTT wildcards + or #")
            if name != "response" and GATEWAY_PLACEHOLDER in template:
                # A device's request and status topics name no gateway: any may send.
                raise ValueError(f"topics.{name} must not contain {GATEWAY_PLACEHOLDER}")
        if self.response.count(GATEWAY_PLACEHOLDER) > 1:
            raise ValueError(f"topics.response must contain {GATEWAY_PLACEHOLDER} at most once")
        if len({self.request, self.response, self.status}) != 3:
            raise ValueError("topics.request, topics.response and topics.status must differ")


def check_answer_topic_for_cluster(cluster_enabled: bool, response: str) -> None:
    """Refuse a cluster whose answer topic has no gateway level: every gateway would then
    subscribe to every answer (and a device's answer would reach a gateway that holds no
    request for it).

    Error handling: raises ValueError naming both keys and the topic to use.
    """
    if cluster_enabled and GATEWAY_PLACEHOLDER not in response:
        raise ValueError(
            f"topics.response = {response!r} has no {GATEWAY_PLACEHOLDER} level, which "
            f"cluster.enabled = true needs (each gateway receives only the answers to its own "
            f"requests), e.g. topics.response = {CLUSTER_ANSWER_TOPIC!r}"
        )


def topic_templates(config: Config) -> TopicTemplates:
    """The gateway's topics: ``[topics]`` with ``cluster.gateway_id`` as the answer
    template's ``{gateway}`` (resolved at start: :func:`pm.cluster.with_gateway_id`).

    Error handling: raises ValueError for a ``{gateway}`` template and no gateway id.
    """
    topics = config.topics
    return TopicTemplates(
        topics.request, topics.response, topics.status, gateway=config.cluster.gateway_id
    )
