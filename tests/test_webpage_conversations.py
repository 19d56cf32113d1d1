"""Agent conversations on the web page, in real headless Chromium (helpers and the
browser fixture from ``test_webpage_browser``): a conversation alice's peer starts
through the API appears live in her page's list; opened with the keyboard it shows
its subject and posts threaded in order with its state; bob's reply (through his
peer's API) makes it active, and his vote, under the majority rule, its verdict,
which shows on alice's page and on bob's phone-sized page. Screenshots under
``test-artifacts/screenshots/``."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from playwright.sync_api import Browser, Page, expect

from ._procs import PeerProcess, start_peer, stop, wait_ready
from .test_webpage_browser import (  # noqa: F401
    PAGE_ERRORS,
    _open,
    _shot,
    browser,
    pytestmark,
)


def _until(what: str, check: Any, deadline_s: float = 20.0) -> Any:
    end = time.monotonic() + deadline_s
    while not (value := check()):
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(0.05)
    return value


def _item(page: Page, conv_id: str) -> Any:
    return page.locator(f'#convos li[data-conversation="{conv_id}"]')


def test_a_conversation_threaded_with_its_state_and_verdict(
    tmp_path: Path, browser: Browser  # noqa: F811
) -> None:
    a = start_peer(tmp_path, "a", "--name", "alice")
    wait_ready(a)
    b = start_peer(tmp_path, "b", "--name", "bob", bootstrap=a.ws_url)
    wait_ready(b)
    peers: list[PeerProcess] = [a, b]
    try:
        assert a.get("/peers", min="1", wait="20").json()
        assert b.get("/peers", min="1", wait="20").json()
        page = _open(browser, a)
        expect(page.locator("#convos")).to_contain_text("No conversations yet.")

        r = a.post("/conversations", {"type": "opinion", "to": [b.peer_id],
                                      "body": "tabs or spaces?", "rule": "majority"})
        assert r.status_code == 200, r.text
        conv_id = r.json()["id"]
        item = _item(page, conv_id)  # live, from the conversation event
        expect(item).to_contain_text("tabs or spaces?")
        expect(item).to_contain_text("opinion")
        expect(item).to_contain_text("open")
        expect(item).to_contain_text("2 members")

        item.locator("button").focus()  # the keyboard opens it
        page.keyboard.press("Enter")
        expect(page.locator("#conv-title")).to_have_text("tabs or spaces?")
        expect(page.locator("#conv-title")).to_be_focused()
        expect(page.locator("#conv-sub")).to_contain_text("opinion conversation · open")
        expect(page.locator("#convo-facts")).to_contain_text("bob")
        expect(page.locator("#convo-verdict")).to_contain_text("Not decided yet")
        expect(page.locator("#messages")).to_be_hidden()

        _until("bob's peer has it", lambda: b.get(f"/conversations/{conv_id}").status_code == 200)
        r = b.post(f"/conversations/{conv_id}/messages", {"body": "spaces, always"})
        assert r.status_code == 200, r.text
        posts = page.locator("#convo-messages .msg")
        expect(posts).to_have_count(2)
        expect(posts.nth(0)).to_contain_text("tabs or spaces?")
        expect(posts.nth(1)).to_contain_text("spaces, always")
        expect(posts.nth(1)).to_contain_text("bob")
        expect(page.locator("#conv-sub")).to_contain_text("active")
        expect(item).to_contain_text("active")
        _shot(page, "12-conversation-active")

        # alice posts from her page (Enter sends); she started it, so she may decide
        expect(page.locator("#verdict-form")).to_be_visible()
        page.get_by_label("Post in this conversation").fill("vote please")
        page.get_by_label("Post in this conversation").press("Enter")
        expect(posts).to_have_count(3)
        expect(posts.nth(2)).to_contain_text("vote please")

        # bob's phone: the list behind the menu; he votes from the page
        phone = _open(browser, b, phone=True)
        phone.click("#menu")
        _item(phone, conv_id).locator("button").click()
        expect(phone.locator("#sidebar")).not_to_have_class("sidebar open")
        expect(phone.locator("#convo-messages .msg")).to_have_count(3)
        expect(phone.locator("#verdict-form")).to_be_hidden()  # not his to decide
        phone.get_by_label("Post in this conversation").fill("my vote")
        phone.get_by_label("Vote").fill("spaces")
        phone.get_by_role("button", name="Post", exact=True).click()

        verdict = page.locator("#convo-verdict")
        expect(verdict.locator(".decision")).to_have_text("spaces")
        expect(verdict).to_contain_text("majority")
        expect(verdict).to_contain_text("bob: spaces")
        expect(verdict).to_contain_text("alice, given by this peer")
        expect(page.locator("#conv-sub")).to_contain_text("complete")
        expect(posts).to_have_count(4)
        expect(posts.nth(3)).to_contain_text("vote: spaces")
        expect(item).to_contain_text("complete")
        expect(page.locator("#convo-form")).to_be_hidden()
        _shot(page, "13-conversation-verdict")
        expect(phone.locator("#convo-verdict .decision")).to_have_text("spaces")
        expect(phone.locator("#conv-sub")).to_contain_text("complete")
        expect(phone.locator("#convo-verdict")).to_contain_text("alice, signature checked")
        _shot(phone, "14-conversation-verdict-phone")

        # without a rule, the initiator decides on the page; bob's peer has the verdict
        r = a.post("/conversations", {"type": "collab", "to": [b.peer_id], "body": "ship it?"})
        assert r.status_code == 200, r.text
        second = r.json()["id"]
        _item(page, second).locator("button").click()
        expect(page.locator("#convo-verdict")).to_contain_text("the initiator gives it")
        page.get_by_label("Decision").fill("ship")
        page.get_by_label("Summary").fill("no objection")
        page.get_by_role("button", name="Decide").click()
        expect(page.locator("#convo-verdict .decision")).to_have_text("ship")
        expect(page.locator("#convo-verdict")).to_contain_text("no objection")
        def bobs_verdict() -> Any:
            return (b.get(f"/conversations/{second}").json().get("verdict") or {}).get("decision")

        _until("bob's peer has the verdict", lambda: bobs_verdict() == "ship")

        # back to a DM: the conversation view gives way to the messages
        page.locator("#dms button.conv", has_text="bob").click()
        expect(page.locator("#convo")).to_be_hidden()
        expect(page.locator("#messages")).to_be_visible()
        assert PAGE_ERRORS == []
    finally:
        for p in peers:
            stop(p)
