"""The web app in a real browser against a real `chatplane up`: two users in
two contexts chat, a third context is the second user's second device; one
device drops its connection while messages are sent, another goes offline and
reloads. Every page must then show the conversation exactly once and in the
same order. Screenshots land in docs/img/ (docs/web-client.md shows them)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from chatplane.auth import TokenSigner
from chatplane.client import Client
from chatplane.storage.base import direct_conversation_id
from tests.support.server import ServerProcess
from tests.web.readiness import skip_unless_ready

pytestmark = [pytest.mark.browser, pytest.mark.slow]

skip_unless_ready()

from tests.web.pages import CHROMIUM, IMG, PHONE, check_same_conversation, sign_in, sync_api  # noqa: E402


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
            signin.wait_for_function(
                "() => performance.getEntriesByName('first-contentful-paint').length > 0")
            first_paint = signin.evaluate(
                "() => performance.getEntriesByName('first-contentful-paint')[0].startTime")
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
            bob2.wait_online(timeout_ms=30_000)  # its backoff may be at 10 s by now
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

            # a group made in the page: strangers are invited, not added
            # (the server asks consent); erin joins from her invitations
            erin = sign_in(browser, web_server.url, "erin", signer.mint("erin", "web"))
            dave.page.fill("#group-name", "trio")
            dave.page.fill("#group-members", "erin, carol")
            dave.page.press("#group-members", "Enter")
            sync_api.expect(dave.page.locator("#chat-title")).to_have_text("trio")
            sync_api.expect(dave.page.locator("#receipts")).to_contain_text("Invited erin, carol")
            invitation = erin.page.locator("#invitation-list li", has_text="trio")
            sync_api.expect(invitation).to_contain_text("from dave")
            erin.page.screenshot(path=str(IMG / "web-invitation.png"))
            erin.page.get_by_role("button", name="Join trio").click()
            sync_api.expect(erin.page.locator("#chat-title")).to_have_text("trio")
            sync_api.expect(erin.page.locator("#invitations")).to_be_hidden()
            dave.send("welcome to trio")
            erin.wait_for_texts(["welcome to trio"])
            erin.send("thanks dave")
            dave.wait_for_texts(["thanks dave"])
            shown = erin.messages()
            assert dave.messages()[-len(shown):] == shown  # the same seqs, since erin joined
            assert [t for _, t in shown][-2:] == ["welcome to trio", "thanks dave"]

            # declined, an invitation goes away and erin never joins
            dave.page.locator("#back").click()  # the phone shows the list again
            dave.page.fill("#group-name", "quartet")
            dave.page.fill("#group-members", "erin")
            dave.page.press("#group-members", "Enter")
            sync_api.expect(dave.page.locator("#chat-title")).to_have_text("quartet")
            erin.page.get_by_role("button", name="Decline quartet").click()
            sync_api.expect(erin.page.locator("#invitations")).to_be_hidden()
            sync_api.expect(erin.page.locator("#conversations button .name",
                                              has_text="quartet")).to_have_count(0)
            dave.page.get_by_role("button", name="Members").click()
            sync_api.expect(dave.page.locator('#member-list li[data-user="dave"]')).to_be_visible()
            sync_api.expect(dave.page.locator('#member-list li[data-user="erin"]')).to_have_count(0)
            erin.page.locator("#conversations button .name", has_text="trio").click()
            erin.page.screenshot(path=str(IMG / "web-group.png"))
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


LABELS = """() => [...document.querySelectorAll('input, textarea')]
    .filter(e => e.labels === null || e.labels.length === 0).map(e => e.id)"""


def test_dev_login_form_only_when_enabled_and_every_field_labelled(
        web_server: ServerProcess, tmp_path: Path) -> None:
    dev = ServerProcess(tmp_path / "dev", tcp=False, extra_args=["--dev-login"])
    (tmp_path / "dev").mkdir()
    dev.start()
    try:
        with sync_api.sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM)
            try:
                plain = browser.new_page(base_url=web_server.url)
                plain.goto("/")
                sync_api.expect(plain.locator("#signin-form")).to_be_visible()
                plain.wait_for_timeout(300)  # the probe of /dev/login has answered
                sync_api.expect(plain.locator("#dev-form")).to_be_hidden()
                assert plain.evaluate(LABELS) == []  # every field has a label

                page = browser.new_page(base_url=dev.url)
                page.goto("/")
                page.get_by_label("User id").fill("olga")
                page.keyboard.press("Enter")  # keyboard only
                sync_api.expect(page.locator("#status")).to_have_text("Online")
                sync_api.expect(page.locator("#me")).to_have_text("olga · web")
                assert page.evaluate(LABELS) == []
                assert "token" not in page.url
            finally:
                browser.close()
    finally:
        dev.stop()


def test_a_replaced_session_signs_out_instead_of_fighting(web_server: ServerProcess) -> None:
    """The same device signed in from another browser replaces this one
    (SESSION_REPLACED): the first page stops and asks to sign in again rather
    than reconnecting and kicking the other out in turn."""
    signer = TokenSigner.from_data_dir(web_server.data_dir)
    token = signer.mint("pia", "phone")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM)
        try:
            first = sign_in(browser, web_server.url, "first", token)
            second = sign_in(browser, web_server.url, "second", token)
            sync_api.expect(first.page.locator("#signin-error")).to_contain_text(
                "logged in on another connection", timeout=10_000)
            sync_api.expect(first.page.locator("#signin-form")).to_be_visible()
            second.page.wait_for_timeout(1500)  # longer than a reconnect's first backoff
            sync_api.expect(second.page.locator("#status")).to_have_text("Online")
        finally:
            browser.close()
