"""The web app driven through Playwright's sync API, for `chatplane bench web`
and the browser tests (one copy: `tests/web/pages.py` imports it from here).

One browser context per device, signed in with a token; what a page shows is
read back through the app's diagnostics hook (`window.chatplane`, set up in
`clients/js/web/app.ts`) and its DOM: the open conversation as (seq, text) in
page order, every message the SDK delivered, the rows the virtualized list
has in the DOM. Importing this module needs the playwright package
(`pip install 'chatplane[bench]'`); `chatplane.bench.web` imports it only to run.
"""

from __future__ import annotations

from dataclasses import dataclass

from playwright.sync_api import Browser, BrowserContext, Page, Response, expect

DESKTOP = {"width": 1100, "height": 720}

# Probes are functions, never bare expressions: Playwright polls an expression
# with eval, which the page's Content-Security-Policy refuses.
PAINTED = "() => performance.getEntriesByName('first-contentful-paint').length > 0"
FIRST_PAINT = "() => performance.getEntriesByName('first-contentful-paint')[0].startTime"

# Scrolls the open conversation up 40 px per frame for 120 frames and returns
# the time between frames (ms): what a person scrolling would see stutter.
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

SCROLL_TO = "(list, f) => { list.scrollTop = f * (list.scrollHeight - list.clientHeight); }"


class PageMismatch(AssertionError):
    """What the page shows breaks a rule of the list (rows out of place)."""


@dataclass
class Device:
    """One signed-in browser context: a user's device."""

    name: str
    context: BrowserContext
    page: Page

    def rows(self) -> list[tuple[int, str]]:
        """The rows of the open conversation in the DOM, in page order."""
        return [(int(seq), text) for seq, text in self.page.eval_on_selector_all(
            "#messages li[data-seq]",
            "items => items.map(li => [li.dataset.seq, li.querySelector('.text').textContent])")]

    def messages(self) -> list[tuple[int, str]]:
        """The open conversation as the page lists it (delivered messages only).
        The list is virtualized: its DOM holds the rows in view, which must be
        a contiguous slice of what it lists, in the same order (else PageMismatch)."""
        listed = [(int(seq), text) for seq, text in self.page.evaluate("window.chatplane.listed()")]
        rows = self.rows()
        if rows:
            start = next((i for i, row in enumerate(listed) if row == rows[0]), -1)
            if start < 0 or listed[start:start + len(rows)] != rows:
                raise PageMismatch(f"{self.name}: rendered rows {rows} are not a slice of the list")
        return listed

    def delivered(self) -> list[str]:
        """Every message the SDK handed to the page since it loaded, in order."""
        return list(self.page.evaluate("window.chatplane.delivered"))

    def wait_delivered(self, count: int, timeout_ms: float) -> None:
        """Until the SDK has handed the page at least `count` messages."""
        self.page.wait_for_function("n => window.chatplane.delivered.length >= n", arg=count,
                                    timeout=timeout_ms)

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

    def scroll_frames(self) -> dict[str, float]:
        """Frame times (ms, p50/p95/max) while the list scrolls up (SCROLL_FRAMES)."""
        return dict(self.page.evaluate(SCROLL_FRAMES))

    def rows_at(self, fraction: float) -> list[int]:
        """The seqs of the rows in the DOM once the list is scrolled to
        `fraction` of its height (0 the top, 1 the bottom)."""
        self.page.locator("#messages").evaluate(SCROLL_TO, fraction)
        self.page.wait_for_timeout(100)  # the scroll handler renders on the next frame
        return [seq for seq, _ in self.rows()]


def sign_in(browser: Browser, base_url: str, name: str, token: str,
            viewport: dict[str, int] = DESKTOP, context: BrowserContext | None = None,
            online_timeout_ms: float = 10_000) -> Device:
    """A new context (a device), or a new tab in `context` (the same device),
    signed in with `token` and online (page errors raise PageMismatch)."""
    if context is None:
        context = browser.new_context(base_url=base_url, viewport=viewport)  # type: ignore[arg-type]
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto("/")
    page.fill("#token", token)
    page.click("#signin-form button[type=submit]")
    device = Device(name, context, page)
    device.wait_online(online_timeout_ms)
    if errors:
        raise PageMismatch(f"{name}: page errors {errors}")
    return device


def first_paint(browser: Browser, base_url: str, timeout_ms: float = 30_000) -> tuple[float, list[str]]:
    """One load of `/` in a fresh context (empty cache): its first contentful
    paint in ms, and the URLs of what the page loaded from the server."""
    context = browser.new_context(base_url=base_url, viewport=DESKTOP)  # type: ignore[arg-type]
    try:
        page = context.new_page()
        loaded: list[str] = []

        def on_response(response: Response) -> None:
            if response.ok and response.url.startswith(base_url):
                loaded.append(response.url)

        page.on("response", on_response)
        page.goto("/")
        page.wait_for_function(PAINTED, timeout=timeout_ms)
        return float(page.evaluate(FIRST_PAINT)), loaded
    finally:
        context.close()
