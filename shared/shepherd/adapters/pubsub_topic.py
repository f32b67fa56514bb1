"""The NotificationTopic port on Pub/Sub: one topic per deployment (SHEPHERD_TOPIC).

Preparing it makes sure the topic exists and that the build server's service account (as the
server names it) may publish to it; done once per publisher and process, not once per
invocation.
"""

from __future__ import annotations

import contextlib
import logging
import threading

from google.api_core import exceptions as gexc
from google.cloud import pubsub_v1

logger = logging.getLogger(__name__)

PUBLISHER_ROLE = "roles/pubsub.publisher"


class PubSubTopic:
    def __init__(self, client: pubsub_v1.PublisherClient, topic: str) -> None:
        self._client = client
        self._topic = topic
        self._prepared: set[str] = set()
        self._lock = threading.Lock()

    def prepare(self, manager: str, publisher: str) -> str:
        member = f"serviceAccount:{publisher}"
        with self._lock:
            if member not in self._prepared:
                self._ensure_topic()
                self._ensure_publisher(member)
                self._prepared.add(member)
        return self._topic

    def _ensure_topic(self) -> None:
        # Look first: deployed, this function may administer the topic but not create topics.
        try:
            self._client.get_topic(topic=self._topic)
        except gexc.NotFound:
            with contextlib.suppress(gexc.AlreadyExists):
                self._client.create_topic(name=self._topic)

    def _ensure_publisher(self, member: str) -> None:
        try:
            policy = self._client.get_iam_policy(request={"resource": self._topic})
        except gexc.MethodNotImplemented:
            logger.warning("IAM is not implemented here (an emulator): %s not granted", member)
            return
        for binding in policy.bindings:
            if binding.role == PUBLISHER_ROLE and member in binding.members:
                return
        policy.bindings.add(role=PUBLISHER_ROLE, members=[member])
        self._client.set_iam_policy(request={"resource": self._topic, "policy": policy})
