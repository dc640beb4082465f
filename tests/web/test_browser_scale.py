"""The web app at scale and across tabs, in a real browser against a real
`chatplane up`: a large group delivered by GroupPush, a new device syncing
10,000 messages of one conversation (its times are `chatplane bench web`'s),
and two tabs of one device sharing one connection."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from chatplane.auth import TokenSigner
from chatplane.bench import web
from chatplane.client import Client
from chatplane.storage.base import direct_conversation_id
from tests.support.server import ServerProcess
from tests.web.readiness import skip_unless_ready

skip_unless_ready()

from tests.web.pages import CHROMIUM, PHONE, check_same_conversation, sign_in, sync_api  # noqa: E402

pytestmark = [pytest.mark.browser, pytest.mark.slow]


async def make_group(url: str, signer: TokenSigner) -> str:
    """hal's group "big": fay and gus are strangers to hal, so invited."""
    client = Client(url, signer.mint("hal", "py"))
    await client.connect()
    try:
        group = await client.create_group("big", ["fay", "gus"])
        assert sorted(client.last_invited) == ["fay", "gus"]
        return group
    finally:
        await client.close()


async def large_group_traffic(url: str, signer: TokenSigner, group: str,
                              texts: list[str]) -> None:
    client = Client(url, signer.mint("hal", "py"))
    await client.connect()
    try:
        await asyncio.gather(*(client.send_text(group, t) for t in texts))
    finally:
        await client.close()


def test_large_group_by_group_pushes(tmp_path: Path) -> None:
    """A group over the large-group threshold reaches pages by GroupPush (read
    diffusion, batched and compressed when busy) and history pulls, not the
    inbox; both members' pages still show it once each and in order."""
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    server = ServerProcess(data_dir, tcp=False, env={"CHATPLANE_LARGE_GROUP_THRESHOLD": "2"})
    server.start()
    signer = TokenSigner.from_data_dir(data_dir)
    try:
        with sync_api.sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM)
            try:
                fay = sign_in(browser, server.url, "fay", signer.mint("fay", "web"))
                gus = sign_in(browser, server.url, "gus", signer.mint("gus", "web"), PHONE)
                first = [f"burst {i}" for i in range(1, 41)]
                with ThreadPoolExecutor(1) as pool:  # playwright's loop runs in this thread
                    group = pool.submit(asyncio.run, make_group(server.url, signer)).result(30)
                    for device in (fay, gus):  # both accept from the invitations view
                        device.page.get_by_role("button", name="Join big").click()
                        device.page.wait_for_selector(f'button[data-conversation="{group}"]',
                                                      state="attached")
                    pool.submit(asyncio.run, large_group_traffic(
                        server.url, signer, group, first)).result(30)
                for device in (fay, gus):  # joining opened the group
                    sync_api.expect(device.page.locator("#chat-title")).to_have_text("big")
                    device.wait_for_texts(first)
                fay.send("fay here")
                gus.send("gus here")
                sent = [*first, "fay here", "gus here"]
                for device in (fay, gus):
                    device.wait_for_texts(sent)
                # each member sees the group from its own JOIN on (gus joined
                # after fay), every seq once and in order
                shown = fay.messages()
                later = gus.messages()
                assert later and shown[-len(later):] == later
                assert [seq for seq, _ in shown] == list(range(shown[0][0],
                                                                shown[0][0] + len(shown)))
                assert sorted(t for _, t in shown if t in sent) == sorted(sent)
                for device in (fay, gus):
                    delivered = device.delivered()
                    assert len(delivered) == len(set(delivered)), device.name
                    received = device.page.evaluate("() => window.chatplane.received()")
                    assert received.get("group_push", 0) > 0, received  # not the inbox
            finally:
                browser.close()
    finally:
        server.stop()


def test_ten_thousand_messages_stay_responsive(tmp_path: Path) -> None:
    """A new device syncs a conversation of 10,000 messages: each is delivered
    once and listed in order, and the list is virtualized: the DOM holds a
    contiguous window of rows wherever it is scrolled, the newest at the
    bottom. The same steps as `chatplane bench web`, which reports the times
    (docs/benchmarks.md); here nothing is asserted on time. Its own server
    lifts the per-user send rate, as the bench's does: one user seeds all."""
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    server = ServerProcess(data_dir, tcp=False,
                           env={"CHATPLANE_SEND_RATE_PER_USER_S": "100000"})
    server.start()
    signer = TokenSigner.from_data_dir(data_dir)
    count = 10_000
    try:
        conversation = asyncio.run(web.seed(server.url, signer, "ivy", "jon", count))
        with sync_api.sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM)
            try:
                held = web.hold_conversation(browser, server.url, signer, conversation, "jon",
                                             count, timeout_s=60, say=print)
            finally:
                browser.close()
    finally:
        server.stop()
    assert held["delivered"] == held["delivered_distinct"] == count
    assert held["listed"] == count and held["listed_in_seq_order"]
    assert held["rows_contiguous"] and held["bottom_row"] == count
    assert held["rows_max"] < 200, held


def test_tabs_of_one_device_share_one_connection(web_server: ServerProcess) -> None:
    """Two tabs signed in as the same device: one leads (holds the connection),
    the other follows through it; neither kicks the other out; both show the
    same conversation; when the leading tab closes the other takes over."""
    signer = TokenSigner.from_data_dir(web_server.data_dir)
    conversation = direct_conversation_id("kim", "lou")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM)
        try:
            token = signer.mint("kim", "laptop")
            tab1 = sign_in(browser, web_server.url, "tab1", token)
            tab2 = sign_in(browser, web_server.url, "tab2", token, context=tab1.context)
            lou = sign_in(browser, web_server.url, "lou", signer.mint("lou", "web"))
            leads = [t.page.evaluate("() => window.chatplane.leads()") for t in (tab1, tab2)]
            assert leads == [True, False]

            lou.page.fill("#peer", "kim")
            lou.page.press("#peer", "Enter")
            lou.send("hello kim")
            for tab in (tab1, tab2):
                tab.page.wait_for_selector(f'button[data-conversation="{conversation}"]')
                tab.open_conversation(conversation)
            tab2.send("from the second tab")  # through the leading tab's connection
            tab1.send("from the first tab")
            sent = ["hello kim", "from the second tab", "from the first tab"]
            for device in (tab1, tab2, lou):
                device.wait_for_texts(sent)
            check_same_conversation([tab1, tab2, lou], sent)

            tab1.page.close()  # the leader goes: the follower takes the lock and connects
            tab2.page.wait_for_function("() => window.chatplane.leads()")
            tab2.wait_online()
            lou.send("still there?")
            sent.append("still there?")
            tab2.wait_for_texts(sent)
            check_same_conversation([tab2, lou], sent)
            assert "failed" not in str(tab2.page.evaluate("() => window.chatplane.state()"))
        finally:
            browser.close()
