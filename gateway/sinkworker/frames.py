"""A spooled request read as one message (embedded mode): its rows built in one pass over its events.

`spooled_messages` is the spool reader's expander: a request whose events all go to one topic becomes
one `SpooledFrame` (listed once per record, so the reader's positions and limits count events), any
other request its `SpooledEvent`s (spooled.py). msgspec reads the events with `properties` left as
their JSON text: the spool holds them as `orjson.dumps` wrote them, which is what the row stores
(`orjson.dumps` of the parsed properties gives the same bytes), so the row passes them through,
minus `$elements_chain` and with `$ip` as the ip mode has it, edited in the text. `SpooledFrame.rows`
gives the rows `RowEncoder.encode_binary` gives for the request's records, or None for any shape it
does not cover (`$set`, offsets, clock skew, an unusual uuid, time or distinct_id, an unknown token
under --strict-teams, ...): the batch then takes the frame's `SpooledEvent`s instead.
"""

from __future__ import annotations

import re
import struct
from datetime import datetime, timedelta
from typing import Any

import msgspec
import orjson

from gateway.capture.check_event import CHECK_EVENT
from gateway.capture.events import MAX_DISTINCT_ID_LENGTH, SNAPSHOT_ITEMS_EVENT
from gateway.capture.spooled import request_options, request_parts
from gateway.capture.timestamps import EPOCH, MAX_FUTURE, MAX_MICROS, MIN_MICROS, epoch_micros
from gateway.sinkworker.rows import TIME_UNITS, IpMode, RowEncoder, rowbinary_length, rowbinary_string
from gateway.sinkworker.spooled import SpooledEvent, spooled_events
from gateway.sinkworker.teams import UnknownToken

_NO_VALUE = msgspec.Raw()
_LOCALHOST = "127.0.0.1"
_MICROSECOND = timedelta(microseconds=1)
_MAX_FUTURE_US = MAX_FUTURE // _MICROSECOND
_NAIVE_EPOCH = EPOCH.replace(tzinfo=None)
_fromisoformat = datetime.fromisoformat
_CHAIN_KEY, _IP_KEY = b'"$elements_chain":', b'"$ip":'
_PLAIN_SECOND = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d", re.ASCII)
_MILLIS = {f"{n:03d}": n * 1000 for n in range(1000)}  # ".mmm" as microseconds, for digits only
# Names that route elsewhere (capture's data types), or are no row: their requests take the event path.
_SPECIAL = frozenset({"$$client_ingestion_warning", "$exception", "$$heatmap", CHECK_EVENT, SNAPSHOT_ITEMS_EVENT})


class _Properties(msgspec.Struct, gc=False):
    """What of an event's properties a row depends on (a Raw value: only present or not, and its text)."""

    distinct_id: Any = None
    cookieless: Any = msgspec.field(name="$cookieless_mode", default=False)
    ip: msgspec.Raw = msgspec.field(name="$ip", default=_NO_VALUE)
    elements_chain: msgspec.Raw = msgspec.field(name="$elements_chain", default=_NO_VALUE)
    person_profile: Any = msgspec.field(name="$process_person_profile", default=None)
    capture_internal: msgspec.Raw = msgspec.field(name="capture_internal", default=_NO_VALUE)
    clock_skew: msgspec.Raw = msgspec.field(name="$clock_skew", default=_NO_VALUE)
    ignore_sent_at: msgspec.Raw = msgspec.field(name="$ignore_sent_at", default=_NO_VALUE)


class _Event(msgspec.Struct, gc=False):
    event: Any = None
    properties: msgspec.Raw = _NO_VALUE
    distinct_id: Any = None
    uuid: Any = None
    timestamp: Any = None
    offset: msgspec.Raw = _NO_VALUE
    clock_skew: msgspec.Raw = msgspec.field(name="$clock_skew", default=_NO_VALUE)
    set: msgspec.Raw = msgspec.field(name="$set", default=_NO_VALUE)
    set_once: msgspec.Raw = msgspec.field(name="$set_once", default=_NO_VALUE)


_read_events = msgspec.json.Decoder(list[_Event]).decode
_read_properties = msgspec.json.Decoder(_Properties).decode


class SpooledFrame:
    """The events of one spooled request, all for `topic`, at positions `first`..`offset` (sources.py)."""

    __slots__ = ("content", "count", "events", "first", "historical", "ip", "now", "offset", "partition",
                 "sent_at", "timestamp", "token", "topic")  # fmt: skip

    def __init__(self, content: memoryview, events: list[_Event], head: dict[str, Any], topic: str) -> None:
        self.content = content
        self.events = events
        self.count = len(events)
        self.topic = topic
        self.token: str = head["token"]
        self.ip: str = head["ip"]
        self.historical = bool(head["historical"])  # as `routed_events` reads it
        self.now = epoch_micros(_fromisoformat(head["now"]))
        sent_at = head["sent_at"]
        self.sent_at = None if sent_at is None else epoch_micros(_fromisoformat(sent_at))
        self.partition = self.first = self.offset = self.timestamp = 0

    def placed(self, partition: int, first: int, timestamp: int) -> SpooledFrame:
        """This request's events at positions `first`.. of `partition`, read at `timestamp` (epoch ms)."""
        self.partition, self.first, self.offset, self.timestamp = partition, first, first + self.count - 1, timestamp
        return self

    def positions(self) -> range:
        return range(self.first, self.offset + 1)

    def events_placed(self) -> list[SpooledEvent]:
        """The request's events as the event path reads them, at their positions."""
        partition, timestamp = self.partition, self.timestamp
        return [event.placed(partition, offset, timestamp)
                for offset, event in enumerate(spooled_events(self.content), self.first)]  # fmt: skip

    def rows(self, encoder: RowEncoder) -> list[bytes] | None:
        """The RowBinary rows `encoder.encode_binary` makes of the request's records, or None."""
        if encoder.topics is not None and self.topic not in encoder.topics:
            return None
        try:
            team_id = encoder.teams.team_id(self.token)
        except UnknownToken:
            return None
        subsecond = encoder.subsecond
        divisor = 1 if subsecond else 1_000_000
        _, limit, head = TIME_UNITS[subsecond]  # the row layout is RowEncoder._pack's
        now, sent_at, ip_mode, client_ip = self.now, self.sent_at, encoder.ip_mode, self.ip
        created = now // divisor
        created = created if 0 <= created < limit else 0
        ips = {ip: _ip_pieces(ip) for ip in (client_ip, _LOCALHOST) if type(ip) is str and ip}
        tail = rowbinary_string(self.token) + rowbinary_string(self.topic)
        partition, offset, seconds, historical = self.partition, self.first, self.timestamp // 1000, self.historical
        pack, length, string = head.pack, rowbinary_length, rowbinary_string
        second_micros, millis_micros = _SECONDS, _MILLIS.get
        rows = []
        append = rows.append
        try:
            for event in self.events:
                if event.offset or event.clock_skew or event.set or event.set_once:
                    return None
                properties = _read_properties(event.properties)
                if properties.clock_skew or properties.ignore_sent_at:
                    return None
                if properties.cookieless is not False and properties.cookieless is not True:
                    return None
                distinct_id = event.distinct_id
                if distinct_id is None:
                    distinct_id = properties.distinct_id
                if (type(distinct_id) is not str or not distinct_id or "\0" in distinct_id
                        or len(distinct_id) > MAX_DISTINCT_ID_LENGTH):  # fmt: skip
                    return None
                uuid = event.uuid
                if type(uuid) is not str:
                    return None
                digits = uuid.replace("-", "")
                raw_uuid = bytes.fromhex(digits)
                if len(digits) != 32 or len(raw_uuid) != 16:
                    return None
                # posthog-js's `toISOString()` (milliseconds, `Z`) from a per-second cache; else the general rules
                timestamp = event.timestamp
                micros = None
                if type(timestamp) is str and len(timestamp) == 24 and timestamp[19] == "." and timestamp[23] == "Z":
                    second, millis = second_micros[timestamp[:19]], millis_micros(timestamp[20:23])
                    if second is not None and millis is not None:
                        micros = second + millis if sent_at is None else now + (second + millis - sent_at)
                        if not MIN_MICROS <= micros <= MAX_MICROS:
                            return None
                        if micros - now > _MAX_FUTURE_US:
                            micros = now
                if micros is None:
                    micros = _event_micros(timestamp, sent_at, now)
                    if micros is None:
                        return None
                moment = micros // divisor
                edited = _edited(event.properties, properties, ip_mode,
                                 ips.get(_LOCALHOST if properties.capture_internal else client_ip))  # fmt: skip
                if edited is None:
                    return None
                text, size, chain = edited
                identity = distinct_id.encode()
                append(b"".join((
                    pack(raw_uuid[7::-1] + raw_uuid[15:7:-1], moment if 0 <= moment < limit else 0, created,
                         team_id, offset, partition, seconds, properties.person_profile is False, historical),
                    string(event.event), length(size), *text, length(len(identity)), identity,
                    length(len(chain)), chain, tail,
                )))  # fmt: skip
                offset += 1
        except (ValueError, TypeError, struct.error):  # a bad uuid, time or properties; an out-of-range value
            return None
        return rows


def spooled_messages(content: memoryview) -> list[Any]:
    """A stored request as the sink reads it: one SpooledFrame per record, or its SpooledEvents
    (a `RequestExpander` of gateway/spool/format.py; ValueError if `content` is malformed)."""
    frame = _frame(content)
    return [frame] * frame.count if frame is not None else spooled_events(content)


def first_offset(message: Any) -> int:
    """The position of a message's first record (a frame's `offset` is its last record's)."""
    return message.first if type(message) is SpooledFrame else message.offset


def _frame(content: memoryview) -> SpooledFrame | None:
    """The request as one frame, or None: its events go to several topics or elsewhere, or it is not
    of the shape read here."""
    try:
        head, events_json = request_parts(content)
        events = _read_events(events_json)
        options = request_options(head)
        names = {event.event for event in events}
        if (not events or options.historical_rerouting_after is not None or not names.isdisjoint(_SPECIAL)
                or not all(type(name) is str and name for name in names)
                or type(head["token"]) is not str or not head["token"]):  # fmt: skip
            return None
        topics = options.topics
        return SpooledFrame(content, events, head, topics.historical if head["historical"] else topics.main)
    except (ValueError, TypeError, KeyError, struct.error):  # msgspec's and orjson's errors are ValueErrors
        return None


def _second_micros(text: str) -> int | None:
    """`YYYY-MM-DDTHH:MM:SS` (UTC) in epoch microseconds, cached; None for any other text."""
    if not _PLAIN_SECOND.fullmatch(text):
        return None
    try:
        micros = (_fromisoformat(text) - _NAIVE_EPOCH) // _MICROSECOND
    except ValueError:
        return None
    if len(_SECONDS) >= _SECONDS_MAX:
        _SECONDS.clear()
    _SECONDS[text] = micros
    return micros


class _SecondCache(dict[str, int]):
    """Seconds looked up by their text; a text not yet seen is parsed (`_second_micros`)."""

    def __missing__(self, key: str) -> int | None:
        return _second_micros(key)


_SECONDS = _SecondCache()
_SECONDS_MAX = 4096


def _event_micros(timestamp: Any, sent_at: int | None, now: int) -> int | None:
    """`event_micros` (capture/timestamps.py) of an event with at most a timestamp, or None where the
    result is not plainly in range."""
    if timestamp is None:
        return now
    if type(timestamp) is not str:
        return None
    parsed = _fromisoformat(timestamp)
    micros = (parsed - (EPOCH if parsed.tzinfo is not None else _NAIVE_EPOCH)) // _MICROSECOND
    result = micros if sent_at is None else now + (micros - sent_at)
    if not (MIN_MICROS <= micros <= MAX_MICROS and MIN_MICROS <= result <= MAX_MICROS):
        return None
    return now if result - now > _MAX_FUTURE_US else result


def _ip_pieces(ip: str) -> tuple[bytes, bytes]:
    """`"$ip":<ip>`, and what follows the other properties when it is added last."""
    entry = _IP_KEY + orjson.dumps(ip)
    return entry, b"," + entry + b"}"


def _edited(
    raw: msgspec.Raw, properties: _Properties, ip_mode: IpMode, ip: tuple[bytes, bytes] | None
) -> tuple[tuple[Any, ...], int, bytes] | None:
    """The properties JSON as the row stores it, in pieces, and its length: without `$elements_chain`,
    `$ip` as the ip mode has it (`ip`: `_ip_pieces` of the event's ip); and the elements chain. None
    where an edit is not plain (`_without`)."""
    chain_value, present = properties.elements_chain, properties.ip
    add = ip is not None and ip_mode is not IpMode.DROP and not (present and ip_mode is IpMode.IF_MISSING)
    drop = present and ip_mode is IpMode.DROP
    if not (chain_value or add or drop):
        return (raw,), len(raw), b""  # as stored
    text: bytes | None = bytes(raw)
    chain = b""
    if chain_value:
        value = bytes(chain_value)
        if value[:1] == b'"':
            chain = value[1:-1] if b"\\" not in value else msgspec.json.decode(value).encode()
        text = _without(text, _CHAIN_KEY + value)  # type: ignore[arg-type]
    if text is not None and drop:
        text = _without(text, _IP_KEY + bytes(present))
    elif text is not None and add and present:
        text = _replaced(text, _IP_KEY + bytes(present), ip[0])  # type: ignore[index]
    elif text is not None and add:
        if len(text) > 2:
            return (memoryview(text)[:-1], ip[1]), len(text) - 1 + len(ip[1]), chain  # type: ignore[index]
        text = b"{" + ip[0] + b"}"  # type: ignore[index]
    return None if text is None else ((text,), len(text), chain)


def _without(text: bytes, entry: bytes) -> bytes | None:
    """`text` without the key-value pair `entry` of its outermost object (and a comma), or None where
    that is not plain: the pair is there once (the same pair in a nested object would be ambiguous) and
    after `{` or `,` (so its quote opens a key: inside a string a quote follows a backslash)."""
    parts = text.split(entry)
    if len(parts) != 2:
        return None
    before, after = parts
    if before[-1:] == b",":
        return before[:-1] + after
    if before[-1:] == b"{":
        return before + after[1:] if after[:1] == b"," else before + after
    return None


def _replaced(text: bytes, entry: bytes, new: bytes) -> bytes | None:
    """`text` with the pair `entry` of its outermost object replaced by `new` (as `_without`)."""
    parts = text.split(entry)
    return parts[0] + new + parts[1] if len(parts) == 2 and parts[0][-1:] in (b",", b"{") else None
