"""``python -m peer mcp``: the mesh as MCP tools, served over stdio with the official SDK.

It talks to the local peer's API through ``peer.client`` and nothing else.
"""

from ._server import build_server, serve_stdio

__all__ = ["build_server", "serve_stdio"]
