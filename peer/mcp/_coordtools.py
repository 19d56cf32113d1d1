"""MCP tools for agents working together: requests with message semantics and
signed receipts (and what builds on them). ``register`` adds them to the
server ``peer.mcp._server.build_server`` makes."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from mcp.server import MCPServer

from peer.client import AsyncClient

Guard = Callable[[Awaitable[dict[str, Any]]], Awaitable[dict[str, Any]]]
ClientOf = Callable[[], AsyncClient]


def register(server: MCPServer, client: ClientOf, guarded: Guard) -> None:
    """Add the coordination tools to ``server``."""

    async def _dm(peer_id: str, text: str, semantics: dict[str, Any]) -> dict[str, Any]:
        async with client() as mesh:
            r = await mesh.send_dm(peer_id, text, **semantics)
        return {"id": r.id, "to": r.to}

    @server.tool()
    async def send_with_semantics(
        peer_id: str,
        text: str,
        kind: str = "request",
        reply_to: str | None = None,
        correlation_id: str | None = None,
        reply_context: str | None = None,
        priority: str | None = None,
        ttl_seconds: float | None = None,
        idempotency_key: str | None = None,
    ) -> dict[str, Any]:
        """Send a DM that says what it is: kind request, response, notification or alert;
        a correlation id (hex), an opaque reply_context the response echoes, a priority
        (low, normal, high, urgent), a ttl after which it is never handed to the agent,
        and an idempotency key (the recipient's agent is handed one message per key)."""
        semantics = {
            "kind": kind, "reply_to": reply_to, "correlation_id": correlation_id,
            "reply_context": reply_context, "priority": priority, "ttl": ttl_seconds,
            "idempotency_key": idempotency_key,
        }
        return await guarded(_dm(peer_id, text, semantics))

    async def _receipts(msg_id: str) -> dict[str, Any]:
        async with client() as mesh:
            return await mesh.receipts(msg_id)

    @server.tool()
    async def get_receipts(msg_id: str) -> dict[str, Any]:
        """The states the recipient signed for a DM we sent (stored, delivered, read,
        replied or expired), each verified against the recipient's key."""
        return await guarded(_receipts(msg_id))


def register_rallies(server: MCPServer, client: ClientOf, guarded: Guard) -> None:
    """Add the request and rally tools to ``server``."""

    async def _request(peer_id: str, text: str, within: float, wait: float) -> dict[str, Any]:
        async with client() as mesh:
            return await mesh.request(peer_id, text, within=within, wait=wait)

    @server.tool()
    async def ask_peer(
        peer_id: str, question: str, deadline_seconds: float = 60.0, wait_seconds: float = 30.0
    ) -> dict[str, Any]:
        """Ask one agent a question and wait (up to wait_seconds, at most 60) for its reply.
        state is complete (response holds the answer), open (ask get_rally later with the
        id) or timed_out after deadline_seconds; a late answer is still recorded."""
        return await guarded(_request(peer_id, question, deadline_seconds, min(wait_seconds, 60)))

    async def _rally(question: str, peers: list[str] | None, channel: str | None,
                     skill: str | None, quorum: int | None, within: float,
                     wait: float) -> dict[str, Any]:
        async with client() as mesh:
            return await mesh.rally(question, to=peers, channel=channel, quorum=quorum,
                                    within=within, wait=wait, skill=skill)

    @server.tool()
    async def start_rally(
        question: str,
        peer_ids: list[str] | None = None,
        channel: str | None = None,
        quorum: int | None = None,
        deadline_seconds: float = 120.0,
        wait_seconds: float = 0.0,
        skill: str | None = None,
    ) -> dict[str, Any]:
        """Ask several agents (peer_ids), everyone on a channel, or every other agent
        declaring a skill (skill; found like find_agents) the same question. It
        completes when quorum agents answered (default: all asked), or times out at the
        deadline; answers after that are kept, marked late. Follow it with get_rally."""
        return await guarded(
            _rally(question, peer_ids, channel, skill, quorum, deadline_seconds,
                   min(wait_seconds, 60))
        )

    async def _get(rally_id: str, wait: float) -> dict[str, Any]:
        async with client() as mesh:
            return await mesh.get_rally(rally_id, wait=wait)

    @server.tool()
    async def get_rally(rally_id: str, wait_seconds: float = 0.0) -> dict[str, Any]:
        """A request's or rally's state (open, complete, timed_out, canceled), its rounds
        and every answer (late ones marked); waits up to wait_seconds while it is open."""
        return await guarded(_get(rally_id, min(wait_seconds, 60)))


def register_conversations(server: MCPServer, client: ClientOf, guarded: Guard) -> None:
    """Add the conversation tools to ``server``."""

    async def _start(type_: str, peers: list[str], subject: str, rule: str | None,
                     threshold: float | None) -> dict[str, Any]:
        async with client() as mesh:
            return await mesh.start_conversation(type_, peers, subject, rule=rule,
                                                 threshold=threshold)

    @server.tool()
    async def start_conversation(
        type: str, peer_ids: list[str], subject: str, rule: str | None = None,
        threshold: float | None = None,
    ) -> dict[str, Any]:
        """Start a conversation of type rally, collab, escalation, broadcast, opinion or
        brainstorm with peer_ids. With rule majority, unanimity or threshold (and a
        threshold fraction) the verdict is computed from the participants' votes;
        otherwise you set it with set_conversation_verdict."""
        return await guarded(_start(type, peer_ids, subject, rule, threshold))

    async def _post(conv_id: str, text: str, vote: str | None) -> dict[str, Any]:
        async with client() as mesh:
            return await mesh.post_to_conversation(conv_id, text, vote=vote)

    @server.tool()
    async def post_to_conversation(
        conversation_id: str, text: str, vote: str | None = None
    ) -> dict[str, Any]:
        """Post into a conversation (everyone in it gets it); vote is your structured
        answer when the conversation computes its verdict from votes."""
        return await guarded(_post(conversation_id, text, vote))

    async def _get(conv_id: str, wait: float) -> dict[str, Any]:
        async with client() as mesh:
            return await mesh.get_conversation(conv_id, wait=wait)

    @server.tool()
    async def get_conversation(conversation_id: str, wait_seconds: float = 0.0) -> dict[str, Any]:
        """A conversation's state (open, active, complete, timed_out), full history, votes
        and its verdict, checked as signed by the initiator's peer."""
        return await guarded(_get(conversation_id, min(wait_seconds, 60)))

    async def _search(q: str | None, agent: str | None, type_: str | None,
                      status: str | None) -> dict[str, Any]:
        async with client() as mesh:
            found = await mesh.conversations(q=q, agent=agent, type_=type_, status=status)
        return {"conversations": found}

    @server.tool()
    async def search_conversations(
        keyword: str | None = None, agent: str | None = None, type: str | None = None,
        status: str | None = None,
    ) -> dict[str, Any]:
        """Find conversations by keyword (subject, posts, verdict), participant peer id,
        type and status."""
        return await guarded(_search(keyword, agent, type, status))

    async def _verdict(conv_id: str, decision: str, summary: str) -> dict[str, Any]:
        async with client() as mesh:
            return await mesh.set_verdict(conv_id, decision, summary)

    @server.tool()
    async def set_conversation_verdict(
        conversation_id: str, decision: str, summary: str = ""
    ) -> dict[str, Any]:
        """As the initiator, decide a conversation: the verdict is signed and sent to every
        participant, and the conversation is complete."""
        return await guarded(_verdict(conversation_id, decision, summary))


def register_tasks(server: MCPServer, client: ClientOf, guarded: Guard) -> None:
    """Add the task tools (A2A's states) to ``server``."""

    async def _submit(peer_id: str, text: str) -> dict[str, Any]:
        async with client() as mesh:
            return await mesh.submit_task(peer_id, text)

    @server.tool()
    async def submit_task(peer_id: str, text: str) -> dict[str, Any]:
        """Give another agent a long-running task. It moves through A2A's states:
        submitted, working, input-required, completed, failed, canceled; follow it with
        get_task (progress and partial results included) and cancel it with cancel_task."""
        return await guarded(_submit(peer_id, text))

    async def _get(task_id: str, wait: float) -> dict[str, Any]:
        async with client() as mesh:
            return await mesh.get_task(task_id, wait=wait)

    @server.tool()
    async def get_task(task_id: str, wait_seconds: float = 0.0) -> dict[str, Any]:
        """A task's state, progress, history and artifacts (partial results); waits up to
        wait_seconds for a change while it is not finished."""
        return await guarded(_get(task_id, min(wait_seconds, 60)))

    async def _update(task_id: str, state: str, message: str | None, progress: float | None,
                      result: str | None) -> dict[str, Any]:
        artifact = None if result is None else {"name": "result", "data": result}
        async with client() as mesh:
            return await mesh.update_task(task_id, state, message=message, progress=progress,
                                          artifact=artifact)

    @server.tool()
    async def update_task(task_id: str, state: str, message: str | None = None,
                          progress: float | None = None, result: str | None = None
                          ) -> dict[str, Any]:
        """As the worker of a task: set its state (working, input-required, completed,
        failed), with a message, a progress fraction and a (partial) result."""
        return await guarded(_update(task_id, state, message, progress, result))

    async def _cancel(task_id: str) -> dict[str, Any]:
        async with client() as mesh:
            return await mesh.cancel_task(task_id)

    @server.tool()
    async def cancel_task(task_id: str) -> dict[str, Any]:
        """As the requester of a task: cancel it; its worker sees it canceled."""
        return await guarded(_cancel(task_id))


def register_policy(server: MCPServer, client: ClientOf, guarded: Guard) -> None:
    """Add the alert and dead-letter tools to ``server``."""

    async def _alert(host: str, check: str, ok: bool, peers: list[str] | None,
                     channel: str | None, text: str | None) -> dict[str, Any]:
        async with client() as mesh:
            return await mesh.alert(host, check, ok=ok, to=peers, channel=channel, body=text)

    @server.tool()
    async def send_alert(host: str, check: str, recovered: bool = False,
                         peer_ids: list[str] | None = None, channel: str | None = None,
                         text: str | None = None) -> dict[str, Any]:
        """Raise an alert for check on host (or clear it with recovered=true) to peer_ids
        or a channel. Deduplicated: the first is sent (new), repeats within the window
        are suppressed, the third is sent again as escalate, a recovery is sent."""
        return await guarded(_alert(host, check, recovered, peer_ids, channel, text))

    async def _retry(ids: list[str] | None) -> dict[str, Any]:
        async with client() as mesh:
            return await mesh.retry_dead_letters(ids)

    @server.tool()
    async def retry_dead_letters(message_ids: list[str] | None = None) -> dict[str, Any]:
        """Put DMs that were given up (dead letters) back into the outbox: these ids, or
        all of them. They are also replayed by themselves when their peer is back."""
        return await guarded(_retry(message_ids))
