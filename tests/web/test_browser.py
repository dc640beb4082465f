"""The web app in a real browser against a real `chatplane up`: two users in
two contexts chat, a third context is the second user's second device; one
device drops its connection while messages are sent, another goes offline and
reloads. Every page must then show the conversation exactly once and in the
same order. Screenshots land in docs/img/ (docs/web-client.md shows them)."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from chatplane.auth import TokenSigner
from chatplane.client import Client
from chatplane.storage.base import direct_conversation_id
from tests.support.server import ServerProcess

pytestmark = [pytest.mark.browser, pytest.mark.slow]

if not os.path.exists(os.environ.get("CHATPLANE_CHROMIUM", "/usr/bin/chromium")):
    pytest.skip("Debian's chromium is not installed (scripts/setup/40-web.sh)",
                allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api",
                               reason="playwright is not installed (pip install .[test])")
if not (Path(__file__).resolve().parents[2] / "dataplane/chatplane/web/static/app.js").exists():
    pytest.skip("the web app is not built (scripts/setup/40-web.sh)", allow_module_level=True)

from tests.web.pages import CHROMIUM, PHONE, Device, sign_in  # noqa: E402

IMG = Path(__file__).resolve().parents[2] / "docs" / "img"


@pytest.fixture(scope="module")
def web_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One server for the module: every test uses users of its own."""
    data_dir = tmp_path_factory.mktemp("web")
    proc = ServerProcess(data_dir, tcp=False)
    proc.start()
    yield proc
    proc.stop()


def check_same_conversation(devices: list[Device], sent: list[str]) -> list[tuple[int, str]]:
    """Nothing missing, nothing twice, the same order everywhere."""
    reference = devices[0].messages()
    seqs = [seq for seq, _ in reference]
    texts = [text for _, text in reference]
    assert seqs == sorted(set(seqs)), f"{devices[0].name}: seqs out of order or twice: {seqs}"
    assert sorted(texts) == sorted(sent), f"{devices[0].name}: shows {texts}, sent {sent}"
    for device in devices[1:]:
        assert device.messages() == reference, f"{device.name} differs from {devices[0].name}"
    for device in devices:
        delivered = device.delivered()
        assert len(delivered) == len(set(delivered)), f"{device.name}: delivered twice {delivered}"
    return reference


def test_three_devices_chat_through_drops_and_reloads(web_server: ServerProcess) -> None:
    signer = TokenSigner.from_data_dir(web_server.data_dir)
    conversation = direct_conversation_id("alice", "bob")
    IMG.mkdir(parents=True, exist_ok=True)
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM)
        try:
            signin = browser.new_page(viewport={"width": 900, "height": 560},
                                      base_url=web_server.url)
            signin.goto("/")
            signin.screenshot(path=str(IMG / "web-signin.png"))
            first_paint = signin.evaluate(
                "performance.getEntriesByName('first-contentful-paint')[0]?.startTime ?? -1")
            signin.close()

            alice = sign_in(browser, web_server.url, "alice", signer.mint("alice", "laptop"))
            bob = sign_in(browser, web_server.url, "bob", signer.mint("bob", "phone"), PHONE)
            bob2 = sign_in(browser, web_server.url, "bob2", signer.mint("bob", "tablet"))

            alice.page.fill("#peer", "bob")
            alice.page.press("#peer", "Enter")
            alice.page.wait_for_selector(f'button[data-conversation="{conversation}"]')
            sent = ["hi bob"]
            alice.send(sent[0])
            for device in (bob, bob2):
                device.open_conversation(conversation)
                device.wait_for_texts(sent)

            for i in range(1, 6):  # interleaved, no waiting for acks
                alice.send(f"alice {i}")
                bob.send(f"bob {i}")
                sent += [f"alice {i}", f"bob {i}"]
            for device in (alice, bob, bob2):
                device.wait_for_texts(sent)
            check_same_conversation([alice, bob, bob2], sent)

            # bob's tablet goes offline; alice's connection drops under her sends
            bob2.context.set_offline(True)
            bob2.page.evaluate("window.chatplane.drop()")
            bob2.page.wait_for_function("() => window.chatplane.state() === 'reconnecting'")
            for i in range(6, 9):
                alice.send(f"alice {i}")
                sent.append(f"alice {i}")
            alice.page.evaluate("window.chatplane.drop()")  # the sends are resent, same cids
            for i in range(6, 9):
                bob.send(f"bob {i}")
                sent.append(f"bob {i}")
            bob2.page.screenshot(path=str(IMG / "web-reconnecting.png"))
            alice.wait_online()
            alice.wait_for_texts(sent)
            bob.wait_for_texts(sent)

            bob2.context.set_offline(False)
            bob2.wait_online(timeout_ms=20_000)
            bob2.wait_for_texts(sent)
            check_same_conversation([alice, bob, bob2], sent)

            # the tablet reloads: its cursor comes back from IndexedDB, the
            # conversation from history, new messages from the inbox
            bob2.page.reload()
            bob2.wait_online()
            bob2.open_conversation(conversation)
            alice.send("after the reload")
            sent.append("after the reload")
            for device in (alice, bob, bob2):
                device.wait_for_texts(sent)
            shown = check_same_conversation([alice, bob, bob2], sent)
            assert len(shown) == len(sent) == 18

            # bob's phone reads: alice sees the receipt; the list shows no unread
            bob.page.locator("#back").click()
            bob.page.screenshot(path=str(IMG / "web-conversations-phone.png"))
            bob.open_conversation(conversation)
            alice.page.wait_for_selector("#messages li.mine .receipt")
            bob.page.screenshot(path=str(IMG / "web-chat-phone.png"))
            alice.page.screenshot(path=str(IMG / "web-chat-desktop.png"))
            print(f"\nfirst contentful paint of the sign-in page: {first_paint:.0f} ms")
        finally:
            browser.close()
    log = "\n".join(web_server.output)
    assert "eyJ" not in log  # no token (base64 JSON) in the server's output


async def send_texts(url: str, token: str, peer: str, texts: list[str]) -> str:
    client = Client(url, token)
    await client.connect()
    try:
        conversation = await client.direct(peer)
        for text in texts:  # one by one: seq i holds texts[i - 1]
            await client.send_text(conversation, text)
        return conversation
    finally:
        await client.close()


def test_history_pages_on_scroll_up_and_a_group_made_in_the_page(
        web_server: ServerProcess) -> None:
    signer = TokenSigner.from_data_dir(web_server.data_dir)
    texts = [f"note {i}" for i in range(1, 131)]
    conversation = asyncio.run(send_texts(web_server.url, signer.mint("carol", "py"), "dave",
                                          texts))
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM)
        try:
            dave = sign_in(browser, web_server.url, "dave", signer.mint("dave", "web"), PHONE)
            dave.page.wait_for_function(
                "n => window.chatplane.delivered.length >= n", arg=len(texts))
            # reloaded, the page holds nothing: the list comes from the server
            # (last message, unread count), the messages from history pages
            dave.page.reload()
            dave.wait_online()
            row = dave.page.locator(f'button[data-conversation="{conversation}"]')
            sync_api.expect(row).to_contain_text("note 130")
            sync_api.expect(row.locator(".unread")).to_have_text("130")
            dave.open_conversation(conversation)
            dave.wait_for_texts(["note 130"])
            assert len(dave.messages()) < len(texts)  # one page, not everything
            for _ in range(10):
                if len(dave.messages()) == len(texts):
                    break
                dave.page.locator("#messages").evaluate("list => { list.scrollTop = 0; }")
                dave.page.wait_for_timeout(300)
            assert dave.messages() == [(i, f"note {i}") for i in range(1, 131)]
            dave.page.locator("#back").click()
            sync_api.expect(row.locator(".unread")).to_have_count(0)

            # a group made in the page reaches another member's page
            erin = sign_in(browser, web_server.url, "erin", signer.mint("erin", "web"))
            dave.page.fill("#group-name", "trio")
            dave.page.fill("#group-members", "erin, carol")
            dave.page.press("#group-members", "Enter")
            sync_api.expect(dave.page.locator("#chat-title")).to_have_text("trio")
            dave.send("welcome to trio")
            group_row = erin.page.locator("#conversations button .name", has_text="trio")
            group_row.click()
            erin.wait_for_texts(["welcome to trio"])
            erin.send("thanks dave")
            dave.wait_for_texts(["thanks dave"])
            assert erin.messages() == dave.messages()
            assert [t for _, t in erin.messages()][-2:] == ["welcome to trio", "thanks dave"]
            erin.page.screenshot(path=str(IMG / "web-group.png"))
        finally:
            browser.close()


async def large_group_traffic(url: str, signer: TokenSigner, texts: list[str],
                              started: asyncio.Event | None = None) -> str:
    client = Client(url, signer.mint("hal", "py"))
    await client.connect()
    try:
        group = await client.create_group("big", ["fay", "gus"])
        await asyncio.gather(*(client.send_text(group, t) for t in texts))
        return group
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
                    group = pool.submit(asyncio.run, large_group_traffic(
                        server.url, signer, first)).result(30)
                for device in (fay, gus):
                    device.page.wait_for_selector(f'button[data-conversation="{group}"]')
                    device.open_conversation(group)
                    device.wait_for_texts(first)
                fay.send("fay here")
                gus.send("gus here")
                sent = [*first, "fay here", "gus here"]
                for device in (fay, gus):
                    device.wait_for_texts(sent)
                shown = fay.messages()
                assert gus.messages() == shown
                assert [seq for seq, _ in shown] == list(range(1, len(shown) + 1))
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
    once, and scrolling the list still draws frames quickly (reported)."""
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
            frames = jon.page.evaluate(SCROLL_FRAMES)
            rendered = jon.page.eval_on_selector_all("#messages li", "items => items.length")
            print(f"\n10,000 messages held; {rendered} rendered; scroll frame time "
                  f"p50 {frames['p50']:.1f} ms, p95 {frames['p95']:.1f} ms, "
                  f"max {frames['max']:.1f} ms; seeding {seeded - began:.1f} s, "
                  f"sign-in and sync {synced - seeded:.1f} s")
            assert rendered < 1000  # a window of the list, not all of it
            assert frames["p95"] < 100
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


def test_friends_group_roles_and_receipts(web_server: ServerProcess) -> None:
    """Friend request and accept, a group's members with roles, and the read
    and unread lists of a message, all through the page."""
    signer = TokenSigner.from_data_dir(web_server.data_dir)
    expect = sync_api.expect
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM)
        try:
            mia = sign_in(browser, web_server.url, "mia", signer.mint("mia", "web"))
            ned = sign_in(browser, web_server.url, "ned", signer.mint("ned", "web"), PHONE)
            mia.page.fill("#friend-id", "ned")
            mia.page.press("#friend-id", "Enter")
            expect(mia.page.locator("#friend-list")).to_contain_text("ned (asked)")
            ned.page.get_by_role("button", name="Accept mia").click()
            expect(mia.page.locator('#friend-list li[data-user="ned"]')).to_be_visible()

            mia.page.fill("#group-name", "crew")
            mia.page.fill("#group-members", "ned")
            mia.page.press("#group-members", "Enter")
            expect(mia.page.locator("#chat-title")).to_have_text("crew")
            mia.page.get_by_role("button", name="Members").click()
            expect(mia.page.locator('#member-list li[data-user="mia"]')).to_contain_text("owner")
            mia.page.get_by_role("button", name="Make ned admin").click()
            expect(mia.page.locator('#member-list li[data-user="ned"]')).to_contain_text("admin")
            mia.page.screenshot(path=str(IMG / "web-members.png"))

            mia.send("who reads this?")
            ned.page.locator("#conversations button .name", has_text="crew").click()
            ned.wait_for_texts(["who reads this?"])  # open and visible: ned has read it
            mine = mia.page.locator("#messages li.mine", has_text="who reads this?")
            for _ in range(20):
                mine.click()
                if "read by ned" in mia.page.locator("#receipts").inner_text():
                    break
                mia.page.wait_for_timeout(200)
            expect(mia.page.locator("#receipts")).to_contain_text("read by ned")
        finally:
            browser.close()
