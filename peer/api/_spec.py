"""Every endpoint of the local API, once: its parameters, body fields and
answers. The API refuses a query parameter or body field not listed here
(400 naming it), and ``GET /openapi.json`` is generated from the same table,
so the description cannot drift from what is enforced.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from ._values import ApiError

_BLOB_DOC = (
    "the file's bytes, streamed; Content-Type: its media type, X-Blob-Name: its name"
)


@dataclass(frozen=True, slots=True)
class Field:
    name: str
    type: str  # a JSON Schema type: string, integer, boolean, number, array, object
    doc: str
    required: bool = False


@dataclass(frozen=True, slots=True)
class Endpoint:
    method: str
    path: str
    summary: str
    params: tuple[Field, ...] = ()
    body: tuple[Field, ...] = ()
    open: bool = False  # no token wanted
    compat_open: bool = False  # no token wanted from loopback under --compat ocmesh
    stream: str | None = None  # "sse" or "websocket"
    returns: str = "object"  # the JSON type of a 200 answer ("text": plain text, not JSON)
    raw: str | None = None  # the request body is raw bytes of this media type (blobs)

    def check_params(self, names: list[str]) -> None:
        allowed = {f.name for f in self.params}
        for name in names:
            if name not in allowed:
                raise ApiError(400, "unknown-param", _unknown("query parameter", name, allowed))

    def check_body(self, data: dict[str, Any]) -> None:
        allowed = {f.name for f in self.body}
        for name in data:
            if name not in allowed:
                raise ApiError(400, "unknown-field", _unknown("field", name, allowed))


def _unknown(what: str, name: str, allowed: set[str]) -> str:
    known = ", ".join(sorted(allowed)) or "none"
    return f"unknown {what} {name!r}: it would be ignored, so it is refused (known: {known})"


_LIMIT = Field("limit", "integer", "at most this many (default 100, at most 1000)")
_WAIT = Field("wait", "number", "seconds to wait for an answer worth giving (0..60)")
_CHANNEL_Q = Field("channel", "string", "only this channel's messages")
_PEER_Q = Field("peer", "string", "only the DMs with this peer id (64 hex digits)")
_THREAD_Q = Field("thread", "string", "only this thread: the message with this id, its replies")
_AFTER = Field("after", "integer", "a cursor: only messages after it")
_OUTGOING = Field("outgoing", "boolean", "include our own messages (default true)")
_STREAM_PARAMS = (
    Field("after", "integer", "resume after this cursor (Last-Event-ID wins); absent: live only"),
    _CHANNEL_Q,
    _PEER_Q,
    _THREAD_Q,
    _OUTGOING,
)
_META_B = (
    Field("kind", "string", "DMs: request, response, notification (default) or alert"),
    Field("correlation_id", "string", "DMs: hex, 1..32 bytes: the request this belongs to"),
    Field("conversation_id", "string", "DMs: hex, 1..32 bytes: the conversation"),
    Field("reply_context", "string", "DMs: opaque, at most 1024 bytes; the reply echoes it"),
    Field("priority", "string", "DMs: low, normal, high or urgent"),
    Field("ttl", "number", "DMs: seconds until it expires (never handed to an agent after)"),
    Field("expires_at", "integer", "DMs: expiry, ms since the Unix epoch (instead of ttl)"),
    Field("idempotency_key", "string", "DMs: at most 128 bytes; the recipient's agent is"
          " handed one message per key"),
)
_CHANNEL_B = Field("channel", "string", "a channel name", required=True)
_ID_Q = Field("id", "string", "the schedule's id")
_ID_B = Field("id", "string", "the schedule's id", required=True)
_AUDIT_FILTERS = (
    Field("agent", "string", "a peer id: records it sent or received"),
    Field("kind", "string", "channel, dm, receipt or state (an outgoing DM's state change)"),
    Field("direction", "string", "in, out or relayed (what a relay-only seed carried)"),
    Field("topic", "string", "a channel name or topic"),
    Field("conversation", "string", "a conversation, request, rally or task id "
          "(a DM's conversation_id), or a thread (or replied-to message) id"),
    Field("since", "string", "from this time (ISO 8601 or Unix ms)"),
    Field("until", "string", "before this time (ISO 8601 or Unix ms)"),
)
AUDIT_ENDPOINTS = (
    Endpoint("GET", "/audit", "audit records (every message in and out, DM states), oldest "
             "first; X-Clawmesh-Next pages",
             params=(*_AUDIT_FILTERS, Field("after", "string", "X-Clawmesh-Next of the last "
                                            "page"), _LIMIT),
             returns="array"),
    Endpoint("GET", "/audit/export", "every matching audit record, streamed as JSON lines "
             "or CSV",
             params=(*_AUDIT_FILTERS, Field("format", "string", "jsonl (default) or csv")),
             returns="text"),
)
SCHEDULE_ENDPOINTS = (
    Endpoint("POST", "/schedules", "make a schedule: a message sent at a time, every N "
             "seconds or on a cron expression",
             body=(Field("message", "object", "the /send body to send", required=True),
                   Field("at", "string", "one-off: an ISO 8601 time or Unix ms"),
                   Field("every", "number", "recurring: every this many seconds (>= 1)"),
                   Field("cron", "string", "recurring: a cron expression (5 fields, or 6 "
                         "with seconds last)"),
                   Field("tz", "string", "the cron expression's IANA time zone (default UTC)"),
                   Field("start", "string", "with every: the first occurrence (default: "
                         "now + every); with cron: not before"),
                   Field("missed", "string", "occurrences missed while down: fire (once, "
                         "the default) or skip"),
                   Field("grace", "number", "with missed=skip: seconds late an occurrence "
                         "still fires (default 60)"),
                   Field("limit", "integer", "at most this many firings"),
                   Field("name", "string", "a label"))),
    Endpoint("GET", "/schedules", "the schedules, with state and next occurrence",
             params=(_ID_Q,), returns="array"),
    Endpoint("DELETE", "/schedules", "delete a schedule and its job history", params=(_ID_Q,)),
    Endpoint("POST", "/schedules/pause", "pause a schedule", body=(_ID_B,)),
    Endpoint("POST", "/schedules/resume", "resume a schedule (from now: paused occurrences "
             "are not owed)", body=(_ID_B,)),
    Endpoint("GET", "/schedules/runs", "a schedule's job history: each firing or skip and "
             "its outcome",
             params=(_ID_Q, Field("after", "integer", "only runs after this run number"),
                     _LIMIT, Field("newest", "boolean", "newest first")),
             returns="array"),
)

_ASK_B = (
    Field("body", "string", "the question", required=True),
    Field("payload", "object", "structured data with it (any JSON value)"),
    Field("timeout", "number", "seconds until the deadline (default 30, up to 7 days)"),
    Field("wait", "number", "seconds to wait for the answer before answering (0..60)"),
)
_ID_P = (_WAIT,)
_RALLY_ENDPOINTS = (
    Endpoint("POST", "/request", "ask one peer; the answer is its reply (wait, or GET later)",
             body=(Field("to", "string", "the peer id asked", required=True), *_ASK_B)),
    Endpoint("GET", "/requests/{id}", "a request: open, complete or timed_out, and its answer",
             params=_ID_P),
    Endpoint("POST", "/rally", "ask several peers, a channel or a skill; complete on quorum",
             body=(Field("to", "array", "the peer ids asked (or channel, or skill)"),
                   Field("channel", "string", "ask everyone on this channel (or to, or skill)"),
                   Field("skill", "string", "ask the agents declaring this skill (not us)"),
                   Field("tag", "string", "with skill: only agents with a skill tagged so"),
                   Field("online", "boolean", "with skill: only online (true) or offline"),
                   Field("max", "integer", "with skill: ask at most this many (online first)"),
                   Field("quorum", "integer", "answers that complete it (default: all)"),
                   *_ASK_B)),
    Endpoint("GET", "/rallies", "our rallies and requests",
             params=(Field("state", "string", "open, complete, timed_out or canceled"),),
             returns="array"),
    Endpoint("GET", "/rallies/{id}", "a rally: its rounds, answers (late ones marked), state",
             params=_ID_P),
    Endpoint("POST", "/rallies/{id}/round", "ask a follow-up carrying the last answers",
             body=(Field("quorum", "integer", "answers that complete it (default: as before)"),
                   *_ASK_B)),
    Endpoint("POST", "/rallies/{id}/cancel", "end an open rally"),
)

_CONVERSATION_ENDPOINTS = (
    Endpoint("POST", "/conversations", "start a conversation: rally, collab, escalation,"
             " broadcast, opinion or brainstorm",
             body=(Field("type", "string", "the conversation type", required=True),
                   Field("to", "array", "the participants' peer ids", required=True),
                   Field("body", "string", "the subject, sent to everyone", required=True),
                   Field("payload", "object", "structured data with it"),
                   Field("rule", "string", "computed verdict: majority, unanimity, threshold"),
                   Field("threshold", "number", "with rule threshold: a fraction in (0, 1]"),
                   Field("timeout", "number", "seconds until it times out (default 3600)"),
                   Field("idle_timeout", "number", "seconds without a post until it times out"
                         " (default 1800)"))),
    Endpoint("GET", "/conversations", "search conversations",
             params=(Field("q", "string", "a keyword in the subject, posts or verdict"),
                     Field("agent", "string", "a peer id taking part"),
                     Field("type", "string", "the type"),
                     Field("status", "string", "open, active, complete or timed_out")),
             returns="array"),
    Endpoint("GET", "/conversations/{id}", "a conversation: history, votes, signed verdict",
             params=(_WAIT,)),
    Endpoint("POST", "/conversations/{id}/messages", "post into a conversation (to everyone)",
             body=(Field("body", "string", "the text", required=True),
                   Field("vote", "string", "a structured vote for a computed verdict"),
                   Field("payload", "object", "structured data with it"))),
    Endpoint("POST", "/conversations/{id}/verdict", "the initiator decides: signed, to all",
             body=(Field("decision", "string", "the decision", required=True),
                   Field("summary", "string", "a summary"))),
)

_TASK_ENDPOINTS = (
    Endpoint("POST", "/tasks", "give a peer a long-running task (A2A states)",
             body=(Field("to", "string", "the worker's peer id", required=True),
                   Field("body", "string", "what to do", required=True),
                   Field("payload", "object", "structured input"))),
    Endpoint("GET", "/tasks", "our tasks, as requester or worker",
             params=(Field("role", "string", "requester or worker"),
                     Field("state", "string", "submitted, working, input-required, completed,"
                           " failed, canceled or rejected")),
             returns="array"),
    Endpoint("GET", "/tasks/{id}", "a task: state, progress, history, artifacts",
             params=(_WAIT,)),
    Endpoint("POST", "/tasks/{id}/status", "the worker moves its task on",
             body=(Field("state", "string", "the new state", required=True),
                   Field("message", "string", "a status message"),
                   Field("progress", "number", "a fraction in [0, 1]"),
                   Field("artifact", "object", "{name, data, append, last}: a (partial)"
                         " result"))),
    Endpoint("POST", "/tasks/{id}/cancel", "the requester cancels its task"),
    Endpoint("POST", "/tasks/{id}/input", "the requester answers an input-required task",
             body=(Field("body", "string", "the answer", required=True),
                   Field("payload", "object", "structured data"))),
)

BLOB_ENDPOINTS = (
    Endpoint("POST", "/blobs",
             "upload a file (streamed; 413 past --blob-max-mb, 507 past the quota)",
             raw=_BLOB_DOC),
    Endpoint("POST", "/blobs/uploads",
             "open a resumable upload (X-Blob-Size: the total, if known); answers its id"),
    Endpoint("GET", "/blobs/uploads/{uid}", "a resumable upload's offset: resume from there"),
    Endpoint("PUT", "/blobs/uploads/{uid}",
             "add bytes to an upload: Content-Range: bytes START-END/TOTAL (or /*); "
             "the PUT that reaches TOTAL answers the blob", raw=_BLOB_DOC),
    Endpoint("DELETE", "/blobs/uploads/{uid}", "abandon a resumable upload"),
    Endpoint("GET", "/blobs/{id}",
             "a blob's bytes (HEAD too), Range honoured (206); missing chunks are fetched "
             "from the mesh as they are read", returns="string"),
    Endpoint("DELETE", "/blobs/{id}",
             "forget a blob here and free the chunks nothing else names (others keep theirs)"),
    Endpoint("GET", "/blobs/{id}/status", "a blob's size and the chunks held of the total"),
)

_CARD_BODY = (
    Field("name", "string", "the agent's name (1..64 characters)", required=True),
    Field("description", "string", "what the agent does (up to 1024 bytes)"),
    Field("version", "string", "the agent's version"),
    Field("availability", "string", "available, busy or away (default available)"),
    Field("skills", "array",
          "skills: {id, name, description, tags, inputModes, outputModes, examples}",
          required=True),
    Field("defaultInputModes", "array", "media types the agent accepts"),
    Field("defaultOutputModes", "array", "media types the agent produces"),
    Field("supportedInterfaces", "array",
          "{protocolBinding, url, protocolVersion}; the mesh one is added if absent"),
)
AGENT_ENDPOINTS = (
    Endpoint("GET", "/agents", "agents by skill and tag, found through the DHT, with their cards",
             params=(Field("skill", "string", "only agents declaring this skill id"),
                     Field("tag", "string", "only agents with a skill tagged so"),
                     Field("online", "boolean", "only online (true) or offline (false) agents"),
                     _LIMIT),
             returns="array"),
    Endpoint("GET", "/card", "our agent card and whether it is published"),
    Endpoint("PUT", "/card", "declare our agent card (published in the DHT at once)",
             body=_CARD_BODY),
    Endpoint("DELETE", "/card", "withdraw our agent card (held copies expire within 20 min)"),
)

ENDPOINTS: tuple[Endpoint, ...] = (
    Endpoint("GET", "/status", "the peer: id, key, uptime, links, counters", open=True,
             compat_open=True),
    Endpoint("GET", "/peers", "peers known, with name, key, online state, features",
             params=(Field("online", "boolean", "only online (true) or offline (false) peers"),
                     Field("min", "integer", "with wait: wait until at least this many"),
                     Field("feature", "string",
                           "only peers with exactly this capability, or whose agent card "
                           "declares this skill id"),
                     _WAIT),
             compat_open=True, returns="array"),
    Endpoint("POST", "/send", "send to a channel or a DM to one peer",
             body=(Field("channel", "string", "a channel name (or to: \"#name\")"),
                   Field("to", "string", "a peer id, or its public key as /peers lists it"),
                   Field("body", "string", "the text"),
                   Field("content", "string", "the text (ocmesh's name for body)"),
                   Field("payload", "object", "any JSON value; {\"$b64\": ...} for bytes"),
                   Field("reply_to", "string", "the id of the message this answers"),
                   Field("thread", "string", "the id of the thread's first message"),
                   Field("attachments", "array",
                         "blobs held here (POST /blobs) it refers to: [{id, name?, type?, "
                         "size?}], at most 32; what is left out comes from the blob"),
                   Field("send_at", "string", "send later: an ISO 8601 time or Unix ms "
                         "(answers 202 with the one-off schedule; over 60 s past: 400)"),
                   *_META_B),
             compat_open=True),
    Endpoint("GET", "/receipts", "the states a DM's recipient signed: stored, delivered, read,"
             " replied (or expired)",
             params=(Field("id", "string", "the id /send answered", required=True),)),
    Endpoint("GET", "/messages", "inbox messages in cursor order; headers tell count and more",
             params=(Field("unread", "boolean", "only unread (marks them read unless peek)"),
                     Field("peek", "boolean", "with unread=true: do not mark them read"),
                     _AFTER, _LIMIT, _CHANNEL_Q, _PEER_Q, _THREAD_Q, _WAIT),
             compat_open=True, returns="array"),
    Endpoint("POST", "/ack", "mark messages read",
             body=(Field("ids", "array", "message ids"),
                   Field("through", "integer", "every message up to this cursor"))),
    Endpoint("POST", "/subscribe", "join a channel", body=(_CHANNEL_B,)),
    Endpoint("POST", "/unsubscribe", "leave a channel", body=(_CHANNEL_B,)),
    Endpoint("GET", "/channels", "the channels we are in", returns="array"),
    Endpoint("GET", "/events", "new inbox messages and DM status changes as Server-Sent Events",
             params=_STREAM_PARAMS, stream="sse"),
    Endpoint("GET", "/ws", "the /events stream as JSON text frames over a WebSocket",
             params=_STREAM_PARAMS, stream="websocket"),
    Endpoint("GET", "/bootstrap.json", "this peer as a bootstrap.json entry", open=True),
    Endpoint("GET", "/dht", "the DHT's state"),
    Endpoint("GET", "/outbox", "our DMs waiting for a receipt", params=(_LIMIT, _WAIT),
             returns="array"),
    Endpoint("GET", "/dead-letters", "our DMs never receipted", params=(_LIMIT,),
             returns="array"),
    Endpoint("GET", "/openapi.json", "this description", open=True),
    *AGENT_ENDPOINTS,
    Endpoint("POST", "/login-link", "a new one-time login link for the web page"),
    Endpoint("POST", "/logout", "end the web page's session (clears its cookie)", open=True),
    *BLOB_ENDPOINTS,
    Endpoint("GET", "/metrics", "the peer's statistics in the Prometheus text format",
             open=True, returns="text"),
    *SCHEDULE_ENDPOINTS,
    *AUDIT_ENDPOINTS,
    Endpoint("GET", "/fleet", "the fleet: this peer's status and every status heard in "
             "others' presence", params=(Field("online", "boolean", "only peers heard "
                                                "recently (true) or not (false)"),)),
    # MESH's webhook clients (protocol-spec/gateways.md part 2); the body is MESH's
    # envelope, checked by its own rules; the --mesh-token opens these two as well
    Endpoint("POST", "/hooks/{sender}", "a MESH v3 envelope from sender: 202 once carried"),
    Endpoint("GET", "/inbox", "MESH messages for this agent, in MESH's {messages, count}",
             params=(_LIMIT,)),
    Endpoint("GET", "/health", "MESH's health: {status, agent, inbox}", open=True),
    # A2A (protocol-spec/gateways.md part 3): agent cards, and the JSON-RPC 2.0 binding
    # of each mesh agent (SendMessage, SendStreamingMessage, GetTask, ListTasks,
    # CancelTask, SubscribeToTask; the v0.3 names without an A2A-Version header)
    Endpoint("GET", "/.well-known/agent-card.json", "this peer's A2A agent card", open=True),
    Endpoint("GET", "/.well-known/agent.json", "the same card, for v0.3 clients", open=True),
    Endpoint("GET", "/a2a/{peer}/.well-known/agent-card.json", "a mesh agent's A2A card",
             open=True),
    Endpoint("GET", "/a2a/{peer}/.well-known/agent.json", "the same card, for v0.3 clients",
             open=True),
    Endpoint("POST", "/a2a/{peer}", "A2A JSON-RPC 2.0 to a mesh agent (SSE for streams)"),
    *_RALLY_ENDPOINTS,
    *_CONVERSATION_ENDPOINTS,
    *_TASK_ENDPOINTS,
    Endpoint("POST", "/dead-letters/retry", "put dead letters back into the outbox (those "
             "whose ttl has passed stay dead, listed as skipped)",
             body=(Field("ids", "array", "only these message ids (default: all)"),)),
    Endpoint("POST", "/dead-letters/{id}/retry", "put one dead letter back into the outbox "
             "(409 expired once its ttl has passed)"),
    Endpoint("POST", "/alerts", "send an alert, deduplicated by host and check",
             body=(Field("host", "string", "where", required=True),
                   Field("check", "string", "what", required=True),
                   Field("status", "string", "firing (default) or ok"),
                   Field("body", "string", "the text (default: check on host: status)"),
                   Field("to", "array", "peer ids to alert (or channel)"),
                   Field("channel", "string", "a channel to alert (or to)"))),
    Endpoint("GET", "/alerts", "the alerts firing now", returns="array"),
)

BY_ROUTE = {(e.method, e.path): e for e in ENDPOINTS}

ERRORS = {
    "400": "bad input: an unknown field or parameter, a bad value, an unknown peer",
    "401": "no or wrong token",
    "403": "Host or Origin is not loopback, or a session cookie not from the page's origin",
    "413": "too large",
    "507": "not stored: the disk quota (blobs) or the store is full",
    "503": "too many requests or streams at once; retry shortly",
}

_ERROR_SCHEMA = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message"],
            "properties": {"code": {"type": "string"}, "message": {"type": "string"}},
        }
    },
}


def _operation(e: Endpoint) -> dict[str, Any]:
    op: dict[str, Any] = {"summary": e.summary, "operationId": _op_id(e)}
    params: list[dict[str, Any]] = [
        {"name": f.name, "in": "query", "description": f.doc, "schema": {"type": f.type}}
        for f in e.params
    ]
    for name in re.findall(r"{(\w+)}", e.path):  # /blobs/{id}: a path parameter
        params.append({"name": name, "in": "path", "required": True, "schema": {"type": "string"}})
    if e.stream is not None:
        params.append(
            {"name": "Last-Event-ID", "in": "header", "schema": {"type": "string"},
             "description": "the last cursor received: resume after it"}
        )
    if params:
        op["parameters"] = params
    if e.raw is not None:
        op["requestBody"] = {"required": True, "description": e.raw,
                             "content": {"*/*": {"schema": {"type": "string", "format": "binary"}}}}
    if e.body:
        op["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": {
                "type": "object",
                "additionalProperties": False,
                "properties": {f.name: {"type": f.type, "description": f.doc} for f in e.body},
                "required": [f.name for f in e.body if f.required],
            }}},
        }
    ok: dict[str, Any] = {"description": "OK"}
    if e.stream == "sse":
        ok["content"] = {"text/event-stream": {"schema": {"type": "string"}}}
    elif e.stream == "websocket":
        ok = {"description": "switching to a WebSocket (status 101)"}
    elif e.returns == "text":
        ok["content"] = {"text/plain": {"schema": {"type": "string"}}}
    else:
        ok["content"] = {"application/json": {"schema": {"type": e.returns}}}
    responses: dict[str, Any] = {"200": ok}
    for status, text in ERRORS.items():
        if status == "401" and e.open:
            continue
        responses[status] = {
            "description": text,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
        }
    op["responses"] = responses
    if not e.open:
        op["security"] = [{"bearer": []}]
    return op


def _op_id(e: Endpoint) -> str:
    name = e.path.strip("/").replace(".json", "").replace("-", "_") or "root"
    name = name.replace("{", "").replace("}", "").replace("/", "_")
    return f"{e.method.lower()}_{name}"


def openapi(version: str) -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    for e in ENDPOINTS:
        paths.setdefault(e.path, {})[e.method.lower()] = _operation(e)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "clawmesh local API",
            "version": version,
            "description": "A clawmesh peer's API on loopback. Every error is "
            '{"error": {"code": ..., "message": ...}}; unknown query parameters '
            "and body fields are refused with 400.",
        },
        "paths": paths,
        "components": {
            "schemas": {"Error": _ERROR_SCHEMA},
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "the api-token file in the key directory",
                }
            },
        },
    }
