"""The audit record of a carried envelope, as JSON bytes, without building a dict.

A relay-only seed writes one ``relayed`` audit record per envelope it carries
(``peer.api._audit``): at a few thousand messages a second, building the
record as a dict, formatting two timestamps with ``datetime`` and running
``json.dumps`` over it was about a tenth of the relay's event loop. This
module writes the same bytes from a template. Rules kept here:

* ``relayed_json`` returns exactly ``_dump(relayed_record(env, now_ms))``
  (``tests/test_auditfast.py`` compares them, including escapes, non-ASCII
  text, missing fields and every kind), or None for anything it is not sure
  of (a field of an unexpected type, a time outside ``_ISO_RANGE``, 1970 to 2099): the
  caller then takes the general path, so a record is never different, only
  cheaper.
* Strings are escaped by ``json.encoder.encode_basestring``, the function
  ``json.dumps`` itself uses with ``ensure_ascii=False``; numbers are ints
  only (``%d`` is their ``repr``).
* Timestamps: the date and time to the second are cached (a few entries,
  cleared when full); the milliseconds are appended, as ``isoformat`` with
  ``timespec="milliseconds"`` writes them for a whole number of milliseconds.
"""

from __future__ import annotations

from datetime import UTC, datetime
from json.encoder import encode_basestring

from peer.wire._envelope import Envelope

# whole milliseconds for which ``iso`` (which divides by 1000 as a float) writes the
# cached second plus ".mmm+00:00": the years 1970 to 2099 (a float's error there is
# under half a microsecond); outside it the general path is taken
_ISO_RANGE = range(0, 4_102_444_800_000)
_SECONDS: dict[int, str] = {}
_SECONDS_MAX = 64

_TEMPLATE = (
    '{"time":"%s","time_ms":%d,"direction":"relayed","kind":%s,"id":"%s",'
    '"sender":"%s","recipients":%s,"topic":%s,"conversation":%s,"size":%d,'
    '"state":"relayed","sent":"%s","seq":%d,"text":%s}'
)


def iso_ms(ms: int) -> str | None:
    """``peer.api._values.iso(ms)`` for ``ms`` in ``_ISO_RANGE``, else None."""
    if type(ms) is not int or ms not in _ISO_RANGE:
        return None
    second, milli = divmod(ms, 1000)
    head = _SECONDS.get(second)
    if head is None:
        if len(_SECONDS) >= _SECONDS_MAX:
            _SECONDS.clear()
        head = datetime.fromtimestamp(second, UTC).isoformat(timespec="seconds")[:-6]
        _SECONDS[second] = head
    return f"{head}.{milli:03d}+00:00"


def relayed_json(env: Envelope, now_ms: int, max_text: int) -> bytes | None:
    """The JSON bytes of ``relayed_record(env, now_ms)``; None: use the general path."""
    fields = env.fields
    kind = env.kind
    time, sent = iso_ms(now_ms), iso_ms(env.ts)
    if time is None or sent is None or type(env.seq) is not int:
        return None
    if type(kind) is not str or type(env.topic) is not str:
        return None  # not what an opened envelope holds: the general path decides
    if kind == "msg":
        recipients = "[" + encode_basestring("#" + env.topic) + "]"
        body = fields.get("body")
        text = encode_basestring(body[:max_text]) if isinstance(body, str) else "null"
    else:
        to = fields.get("to")
        if to is None:
            recipients = "[]"
        elif type(to) is bytes:
            recipients = '["' + to.hex() + '"]'
        else:
            return None
        text = "null"
    conversation = fields.get("thread") or fields.get("reply_to")
    conv = '"' + conversation.hex() + '"' if isinstance(conversation, bytes) else "null"
    return (
        _TEMPLATE
        % (
            time,
            now_ms,
            encode_basestring("channel" if kind == "msg" else kind),
            env.id.hex(),
            env.sender.hex(),
            recipients,
            encode_basestring(env.topic),
            conv,
            len(env.wire),
            sent,
            env.seq,
            text,
        )
    ).encode()
