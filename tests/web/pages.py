"""The web app driven through Playwright: Debian's Chromium (never a browser
download), one browser context per device, and what a page shows read back
from it: the open conversation's messages as (seq, text), in page order."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from playwright import sync_api
from playwright.sync_api import Browser, BrowserContext, Page, expect

from tests.web.readiness import CHROMIUM

__all__ = ["CHROMIUM", "IMG", "PHONE", "Device", "check_same_conversation", "sign_in", "sync_api"]
IMG = Path(__file__).resolve().parents[2] / "docs" / "img"
PHONE = {"width": 390, "height": 780}
DESKTOP = {"width": 1100, "height": 720}


@dataclass
class Device:
    """One signed-in browser context: a user's device."""

    name: str
    context: BrowserContext
    page: Page

    def messages(self) -> list[tuple[int, str]]:
        """The open conversation as the page lists it (delivered messages only).
        The list is virtualized: its DOM holds the rows in view, which must be
        a contiguous slice of what it lists, in the same order."""
        listed = [(int(seq), text) for seq, text in self.page.evaluate("window.chatplane.listed()")]
        rows = [(int(seq), text) for seq, text in self.page.eval_on_selector_all(
            "#messages li[data-seq]",
            "items => items.map(li => [li.dataset.seq, li.querySelector('.text').textContent])")]
        if rows:
            start = next((i for i, row in enumerate(listed) if row == rows[0]), -1)
            assert start >= 0 and listed[start:start + len(rows)] == rows, \
                f"{self.name}: rendered rows {rows} are not a slice of the list"
        return listed

    def delivered(self) -> list[str]:
        """Every message the SDK handed to the page since it loaded, in order."""
        return list(self.page.evaluate("window.chatplane.delivered"))

    def send(self, text: str) -> None:
        self.page.fill("#text", text)
        self.page.press("#text", "Enter")

    def open_conversation(self, conversation_id: str) -> None:
        button = self.page.locator(f'button[data-conversation="{conversation_id}"]')
        button.click()
        expect(self.page.locator("#text")).to_be_enabled()

    def wait_online(self, timeout_ms: float = 10_000) -> None:
        expect(self.page.locator("#status")).to_have_text("Online", timeout=timeout_ms)

    def wait_for_texts(self, texts: list[str], timeout_ms: float = 15_000) -> None:
        """Until every text is listed (delivered, not pending)."""
        self.page.wait_for_function(
            """texts => {
                const shown = new Set(window.chatplane.listed().map(([, text]) => text));
                return texts.every(t => shown.has(t));
            }""", arg=texts, timeout=timeout_ms)


def sign_in(browser: Browser, base_url: str, name: str, token: str,
            viewport: dict[str, int] = DESKTOP, context: BrowserContext | None = None) -> Device:
    """A new context (a device), or a new tab in `context` (the same device)."""
    if context is None:
        context = browser.new_context(base_url=base_url, viewport=viewport)  # type: ignore[arg-type]
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto("/")
    page.fill("#token", token)
    page.click("#signin-form button[type=submit]")
    device = Device(name, context, page)
    device.wait_online()
    assert not errors, f"{name}: page errors {errors}"
    return device


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
