"""Which spooled records belong to a person: the one rule `gateway gdpr purge-spool` and /gdpr/delete share."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from gateway.core.record import Record


def spool_matcher(distinct_ids: Sequence[str], token: str | None) -> Callable[[Record], bool]:
    """Whether a spooled record is the person's (its distinct_id header, and token header if given)."""
    ids = {distinct_id.encode() for distinct_id in distinct_ids}
    token_bytes = token.encode() if token else None

    def matches(record: Record) -> bool:
        return record.header("distinct_id") in ids and (token_bytes is None or record.header("token") == token_bytes)

    return matches
