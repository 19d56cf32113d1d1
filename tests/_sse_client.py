"""A stream client as its own process, to be killed: ``python -m tests._sse_client
API_URL TOKEN [LAST_EVENT_ID]`` prints ``<cursor> <message id>`` per message event
of ``/events``, one flushed line each, until killed."""

from __future__ import annotations

import json
import sys

import httpx


def main(argv: list[str]) -> None:
    url, token = argv[0], argv[1]
    headers = {"Authorization": f"Bearer {token}"}
    if len(argv) > 2:
        headers["Last-Event-ID"] = argv[2]
    params = {} if len(argv) > 2 else {"after": "0"}
    with (
        httpx.Client(timeout=httpx.Timeout(10, read=None)) as client,
        client.stream("GET", url + "/events", headers=headers, params=params) as r,
    ):
        r.raise_for_status()
        event: dict[str, str] = {}
        for line in r.iter_lines():
            if line == "":
                if event.get("event") == "message":
                    data = json.loads(event["data"])
                    sys.stdout.write(f"{event['id']} {data['id']}\n")
                    sys.stdout.flush()
                event = {}
            elif not line.startswith(":"):
                key, _, value = line.partition(": ")
                event[key] = value


if __name__ == "__main__":
    main(sys.argv[1:])
