"""posthog-js' compressed rrweb events (`cv: 2024-10`) are inflated for rrweb's player by the export."""

from __future__ import annotations

import gzip

import orjson

from gateway.recordings.export import playable


def packed(value: object) -> str:
    """As posthog-js packs a field: gzip of its JSON, bytes as latin-1 code points."""
    return gzip.compress(orjson.dumps(value)).decode("latin-1")


def test_full_snapshot_and_mutation_fields_are_inflated_and_the_marker_dropped() -> None:
    node = {"type": 0, "childNodes": [{"type": 3, "textContent": "héllo ✓"}], "id": 1}
    full = {"type": 2, "cv": "2024-10", "data": packed({"node": node, "initialOffset": {"top": 0, "left": 0}}),
            "timestamp": 5}
    assert playable(full) == {"type": 2, "data": {"node": node, "initialOffset": {"top": 0, "left": 0}},
                              "timestamp": 5}
    mutation = {"type": 3, "cv": "2024-10", "timestamp": 6,
                "data": {"source": 0, "adds": packed([{"parentId": 1}]), "removes": [], "texts": packed([]),
                         "attributes": packed([{"id": 2, "attributes": {"class": "x"}}])}}
    assert playable(mutation)["data"] == {"source": 0, "adds": [{"parentId": 1}], "removes": [], "texts": [],
                                          "attributes": [{"id": 2, "attributes": {"class": "x"}}]}


def test_uncompressed_events_are_untouched_and_a_broken_field_is_kept_as_stored() -> None:
    plain = {"type": 3, "data": {"source": 0, "adds": "not gzip"}, "timestamp": 1}
    assert playable(plain) is plain
    broken = {"type": 2, "cv": "2024-10", "data": "not gzip ÿ", "timestamp": 1}
    assert playable(broken) == {"type": 2, "data": "not gzip ÿ", "timestamp": 1}
    non_latin = {"type": 3, "cv": "2024-10", "data": {"source": 8, "adds": "✓"}, "timestamp": 1}
    assert playable(non_latin)["data"] == {"source": 8, "adds": "✓"}
