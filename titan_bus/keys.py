"""Redis key names, all built here.

Every key of a topic carries the topic as a Redis Cluster hash tag, so that all
of one topic lives in one hash slot (scripts and pipelines stay single-slot) and
one ACL pattern, ``<prefix>:{<topic>}:*``, covers exactly that topic::

    titan:{chat.v1}:lane:high      one stream per lane
    titan:{chat.v1}:dlq            dead letters
    titan:{chat.v1}:delayed        delayed publishes not yet due
    titan:{chat.v1}:delayed:G      group G's retries not yet due
    titan:{chat.v1}:retry:G        group G's retries, due (read by G alone)
    titan:{chat.v1}:done:G         events group G handled (ids by time)
    titan:{chat.v1}:idem:K         publisher idempotency key K (expires)
    titan:{chat.v1}:suspects       claimed entries being retried alone
    titan:{chat.v1}:rate           handling rate limit of the topic
    titan:bus:rate                 bus-wide handling rate limit
    titan:bus:quota:NAME           publish quota of publisher NAME

Keys shared by all topics are few and sit under ``<prefix>:bus:``.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class KeySpace:
    """Builds key names under one prefix (``titan`` unless configured)."""

    prefix: str = "titan"

    def topic_pattern(self, topic: str) -> str:
        """Return the key pattern that matches every key of ``topic``."""
        return f"{self.prefix}:{{{topic}}}:*"

    def lane(self, topic: str, lane: str) -> str:
        """Return the stream key of one lane of ``topic``."""
        return f"{self.prefix}:{{{topic}}}:lane:{lane}"

    def dead_letters(self, topic: str) -> str:
        """Return the dead-letter stream key of ``topic``."""
        return f"{self.prefix}:{{{topic}}}:dlq"

    def delayed(self, topic: str) -> str:
        """Return the delayed-set key of ``topic``."""
        return f"{self.prefix}:{{{topic}}}:delayed"

    def done(self, topic: str, group: str) -> str:
        """Return the set of event ids ``group`` handled recently (idempotency)."""
        return f"{self.prefix}:{{{topic}}}:done:{group}"

    def publish_key(self, topic: str, idempotency_key: str) -> str:
        """Return the key remembering a publisher's idempotency key."""
        return f"{self.prefix}:{{{topic}}}:idem:{idempotency_key}"

    def suspects(self, topic: str) -> str:
        """Return the hash of claimed entries being retried alone (see recovery)."""
        return f"{self.prefix}:{{{topic}}}:suspects"

    def rate(self, topic: str) -> str:
        """Return the rate-limit bucket of ``topic`` (events handled per second)."""
        return f"{self.prefix}:{{{topic}}}:rate"

    def quota(self, publisher: str) -> str:
        """Return the publish-rate bucket of one publisher identity."""
        return self.shared(f"quota:{publisher}")

    def retry_lane(self, topic: str, group: str) -> str:
        """Return the stream of ``group``'s retries of ``topic`` (read by it alone)."""
        return f"{self.prefix}:{{{topic}}}:retry:{group}"

    def retry_delayed(self, topic: str, group: str) -> str:
        """Return the delayed set of ``group``'s retries of ``topic``."""
        return f"{self.prefix}:{{{topic}}}:delayed:{group}"

    def shared(self, name: str) -> str:
        """Return a key shared by all topics, e.g. the global rate limiter."""
        return f"{self.prefix}:bus:{name}"

    def parse_lane(self, key: str | bytes) -> tuple[str, str]:
        """Return ``(topic, lane)`` for a lane stream key.

        Raises:
            ValueError: ``key`` is not a lane key of this key space.
        """
        text = key.decode() if isinstance(key, bytes) else key
        head = f"{self.prefix}:{{"
        topic, sep, rest = text.removeprefix(head).partition("}:lane:")
        if not text.startswith(head) or not sep or not rest:
            raise ValueError(f"not a lane key under prefix {self.prefix!r}: {text!r}")

        return topic, rest
