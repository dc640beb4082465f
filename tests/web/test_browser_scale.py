"""The web app at scale and across tabs, in a real browser against a real
`chatplane up`: a large group delivered by GroupPush, a new device syncing
10,000 messages of one conversation (scroll frame times reported), and two
tabs of one device sharing one connection."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from chatplane.auth import TokenSigner
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


async def flood(url: str, signer: TokenSigner, count: int, devices: int = 4) -> str:
    """`count` messages from ivy to jon, sent from several devices at once."""
    clients = [Client(url, signer.mint("ivy", f"py{d}")) for d in range(devices)]
    await asyncio.gather(*(c.connect() for c in clients))
    try:
        conversation = await clients[0].direct("jon")

        async def send_share(client: Client, share: range) -> None:
            for start in range(share.start, share.stop, 200):
                await asyncio.gather(*(client.send_text(conversation, f"m{i}")
                                       for i in range(start, min(share.stop, start + 200))))

        per = count // devices
        await asyncio.gather(*(send_share(c, range(d * per, (d + 1) * per))
                               for d, c in enumerate(clients)))
        return conversation
    finally:
        await asyncio.gather(*(c.close() for c in clients))


SCROLL_FRAMES = """async () => {
    const list = document.getElementById('messages');
    const deltas = [];
    let last = performance.now();
    for (let i = 0; i < 120; i++) {
        await new Promise(r => requestAnimationFrame(r));
        const now = performance.now();
        deltas.push(now - last);
        last = now;
        list.scrollTop = Math.max(0, list.scrollTop - 40);
    }
    deltas.sort((a, b) => a - b);
    const at = q => deltas[Math.floor(q * (deltas.length - 1))];
    return {p50: at(0.5), p95: at(0.95), max: deltas[deltas.length - 1]};
}"""


def test_ten_thousand_messages_stay_responsive(web_server: ServerProcess) -> None:
    """A new device syncs a conversation of 10,000 messages: each is delivered
    once and listed in order, and the list is virtualized: the DOM holds a
    window of rows wherever it is scrolled (scroll frame times are printed,
    docs/benchmarks.md; not asserted: the machine is shared)."""
    signer = TokenSigner.from_data_dir(web_server.data_dir)
    count = 10_000
    began = time.monotonic()
    conversation = asyncio.run(flood(web_server.url, signer, count))
    seeded = time.monotonic()
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM)
        try:
            jon = sign_in(browser, web_server.url, "jon", signer.mint("jon", "web"))
            jon.page.wait_for_function("n => window.chatplane.delivered.length >= n", arg=count,
                                       timeout=60_000)
            delivered = jon.delivered()
            assert len(delivered) == len(set(delivered)) == count
            synced = time.monotonic()
            jon.open_conversation(conversation)
            listed = jon.messages()  # also checks the rendered rows are a slice of it
            assert [seq for seq, _ in listed] == list(range(1, count + 1))
            frames = jon.page.evaluate(SCROLL_FRAMES)
            # the list is virtualized: wherever it is scrolled, the DOM holds
            # a window of rows around the view, the right ones
            rendered = []
            for fraction in (0.0, 0.25, 0.5, 0.75, 1.0):
                jon.page.locator("#messages").evaluate(
                    "(list, f) => { list.scrollTop = f * (list.scrollHeight - list.clientHeight); }",
                    fraction)
                jon.page.wait_for_timeout(100)  # the scroll handler renders on the next frame
                rows = jon.page.eval_on_selector_all("#messages li[data-seq]",
                                                     "items => items.map(li => +li.dataset.seq)")
                assert rows == list(range(rows[0], rows[0] + len(rows))), rows
                rendered.append(len(rows))
                jon.messages()
            assert rows[-1] == count  # at the bottom: the newest row
            assert max(rendered) < 200, rendered
            print(f"\n10,000 messages held; {max(rendered)} rows rendered at most; scroll frame "
                  f"time p50 {frames['p50']:.1f} ms, p95 {frames['p95']:.1f} ms, "
                  f"max {frames['max']:.1f} ms; seeding {seeded - began:.1f} s, "
                  f"sign-in and sync {synced - seeded:.1f} s")
        finally:
            browser.close()


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
