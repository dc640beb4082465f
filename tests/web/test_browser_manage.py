"""Managing groups and people from the web app in a real browser against a
real `chatplane up`: the owner renames a group and another member's page shows
the new name at once; a refused request is said in the page; the owner
dissolves the group and every member's page closes it. A user blocks another
from the friends view; the blocked user's send is refused where it was typed
and never reaches the blocker; after unblocking, messages flow again."""

from __future__ import annotations

import pytest

from chatplane.auth import TokenSigner
from chatplane.storage.base import direct_conversation_id
from tests.support.server import ServerProcess
from tests.web.readiness import skip_unless_ready

pytestmark = [pytest.mark.browser, pytest.mark.slow]

skip_unless_ready()

from tests.web.pages import CHROMIUM, IMG, PHONE, Device, sign_in, sync_api  # noqa: E402

expect = sync_api.expect


def befriend(asker: Device, other: Device) -> None:
    asker.page.fill("#friend-id", other.name)
    asker.page.press("#friend-id", "Enter")
    other.page.get_by_role("button", name=f"Accept {asker.name}").click()
    expect(asker.page.locator(f'#friend-list li[data-user="{other.name}"]')).to_be_visible()


def test_rename_then_dissolve_a_group_on_every_members_page(web_server: ServerProcess) -> None:
    signer = TokenSigner.from_data_dir(web_server.data_dir)
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM)
        try:
            pam = sign_in(browser, web_server.url, "pam", signer.mint("pam", "web"))
            quin = sign_in(browser, web_server.url, "quin", signer.mint("quin", "web"), PHONE)
            befriend(pam, quin)  # friends are added at once, not invited
            pam.page.fill("#group-name", "band")
            pam.page.fill("#group-members", "quin")
            pam.page.press("#group-members", "Enter")
            expect(pam.page.locator("#chat-title")).to_have_text("band")
            quin.page.locator("#conversations button .name", has_text="band").click()
            expect(quin.page.locator("#chat-title")).to_have_text("band")

            # a plain member sees neither rename nor dissolve
            quin.page.get_by_role("button", name="Members").click()
            expect(quin.page.locator('#member-list li[data-user="quin"]')).to_contain_text("member")
            expect(quin.page.get_by_label("Rename the group")).to_be_hidden()
            expect(quin.page.get_by_role("button", name="Dissolve the group…")).to_be_hidden()
            quin.page.get_by_role("button", name="Members").click()

            pam.page.get_by_role("button", name="Members").click()
            pam.page.get_by_label("Rename the group").fill("the band")
            pam.page.press("#new-group-name", "Enter")
            expect(pam.page.locator("#chat-title")).to_have_text("the band")
            expect(quin.page.locator("#chat-title")).to_have_text("the band")
            expect(quin.page.locator("#messages")).to_contain_text("pam renamed the group to the band")
            quin.page.get_by_role("button", name="Back to conversations").click()
            expect(quin.page.locator("#conversations")).to_contain_text("the band")
            quin.page.locator("#conversations button .name", has_text="the band").click()

            # the owner may not leave (transfer or dissolve): the page says why
            pam.page.get_by_role("button", name="Leave the group").click()
            expect(pam.page.get_by_role("alert").filter(has_text="not allowed")).to_be_visible()

            # dissolving takes a second, deliberate step, by keyboard here
            pam.page.get_by_role("button", name="Dissolve the group…").click()
            confirm = pam.page.get_by_role("button", name="Dissolve for everyone")
            expect(confirm).to_be_focused()
            pam.page.keyboard.press("Escape")
            expect(confirm).to_be_hidden()
            expect(pam.page.get_by_role("button", name="Dissolve the group…")).to_be_focused()
            pam.page.keyboard.press("Enter")
            expect(confirm).to_be_focused()
            IMG.mkdir(parents=True, exist_ok=True)
            pam.page.screenshot(path=str(IMG / "web-dissolve.png"))
            pam.page.keyboard.press("Enter")
            for member in (pam, quin):
                expect(member.page.locator("#members")).to_have_text("group · dissolved")
                expect(member.page.locator("#text")).to_be_disabled()
                expect(member.page.locator("#members-toggle")).to_be_hidden()
                member.wait_for_texts(["pam dissolved the group"])
            # a reload learns it from the history too
            quin.page.reload()
            quin.wait_online()
            quin.page.locator("#conversations button .name", has_text="the band").click()
            expect(quin.page.locator("#members")).to_have_text("group · dissolved")
            expect(quin.page.locator("#text")).to_be_disabled()
        finally:
            browser.close()


def test_block_refuses_the_blocked_users_send_until_unblocked(web_server: ServerProcess) -> None:
    signer = TokenSigner.from_data_dir(web_server.data_dir)
    conversation = direct_conversation_id("rod", "sue")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM)
        try:
            rod = sign_in(browser, web_server.url, "rod", signer.mint("rod", "web"))
            sue = sign_in(browser, web_server.url, "sue", signer.mint("sue", "web"), PHONE)
            befriend(rod, sue)
            sue.page.get_by_role("button", name="Chat with rod").click()
            sue.send("hi rod")
            rod.open_conversation(conversation)
            rod.wait_for_texts(["hi rod"])

            rod.page.get_by_role("button", name="Block sue").click()
            blocked = rod.page.get_by_role("list", name="Blocked users")
            expect(blocked.locator("li", has_text="sue (blocked)")).to_be_visible()
            expect(rod.page.locator('#friend-list li[data-user="sue"]')).to_have_count(0)
            # the blocked user's page drops the friendship live (event/friend)
            sue.page.get_by_role("button", name="Back to conversations").click()
            expect(sue.page.locator('#friend-list li[data-user="rod"]')).to_have_count(0)

            sue.open_conversation(conversation)
            sue.send("are you there?")
            refused = sue.page.get_by_role("alert").filter(has_text="Not sent")
            expect(refused).to_contain_text("blocked")
            expect(sue.page.locator("#messages li.pending")).to_have_count(0)
            assert "are you there?" not in [text for _, text in sue.messages()]
            IMG.mkdir(parents=True, exist_ok=True)
            sue.page.screenshot(path=str(IMG / "web-blocked.png"))

            rod.page.get_by_role("button", name="Unblock sue").click()
            expect(blocked.locator("li")).to_have_count(0)
            sue.send("hello again")
            expect(refused).to_be_hidden()
            rod.open_conversation(conversation)
            for device in (rod, sue):
                device.wait_for_texts(["hello again"])
                assert [text for _, text in device.messages()] == ["hi rod", "hello again"]
        finally:
            browser.close()
