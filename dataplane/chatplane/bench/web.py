"""`chatplane bench web`: the web app's targets (issue 19) in Debian's Chromium.

Drives the system Chromium (`CHROMIUM`, never a Playwright browser download)
through Playwright against a running server (`--url`, `--data-dir` for its
token key), or against a `chatplane up` of its own on a temp data dir, stopped
at the end. It measures, in order:

- first contentful paint of `/` over `--loads` fresh browser contexts (empty
  cache each): median, min, max;
- the size of each asset that load fetched from the server (`/`, app.js,
  app.css), raw and gzip -9 compressed here, so it is what is served;
- one tab holding a conversation of `--messages` messages: two fresh users,
  the conversation seeded through the SDK (pipelined sends from several
  devices); the receiver signs in on a new device and syncs; the bench checks
  each message was delivered once and listed in seq order, scrolls the list up
  (frame times p50/p95/max), and reads how many rows the virtualized list
  keeps in the DOM at the top, the quarters and the bottom.

The machine goes in the result (CPUs, load average before and after, the
browser's version): on a shared machine the times are that machine's.
Playwright comes with `pip install 'chatplane[bench]'`; the page helpers are in
`webpages.py`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gzip
import importlib.util
import json
import os
import re
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from chatplane.bench.direct import SetupError

if TYPE_CHECKING:
    from playwright.sync_api import Browser

    from chatplane.auth import TokenSigner

CHROMIUM = os.environ.get("CHATPLANE_CHROMIUM", "/usr/bin/chromium")
SEND_DEVICES = 4  # the sender's devices sending at once while seeding
SEND_WINDOW = 200  # sends in flight per device while seeding
SCROLL_POINTS = (0.0, 0.25, 0.5, 0.75, 1.0)  # where the rows in the DOM are read
READY = re.compile(r"chatplane ready at (\S+)")

Say = Callable[[str], None]
T = TypeVar("T")


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


@contextlib.contextmanager
def own_server(timeout_s: float = 60.0) -> Iterator[tuple[str, str]]:
    """A `chatplane up` on a temp data dir and any free port: (its URL, the
    data dir); SIGTERM at the end, then the data dir goes. Its per-user send
    rate is lifted: seeding sends from one user, which the default (100/s)
    would pace to 100 s for 10,000 messages; nothing measured depends on it."""
    with tempfile.TemporaryDirectory(prefix="chatplane-bench-web-") as tmp:
        data_dir = Path(tmp) / "data"
        log_path = Path(tmp) / "up.log"
        with log_path.open("w") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "chatplane.cli", "up", "--data-dir", str(data_dir),
                 "--port", "0"], stdout=log, stderr=subprocess.STDOUT, text=True,
                env={**os.environ, "CHATPLANE_SEND_RATE_PER_USER_S": "100000"})
        try:
            deadline = time.monotonic() + timeout_s
            while (found := READY.search(log_path.read_text())) is None:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise SetupError("chatplane up did not get ready:\n" + log_path.read_text()[-2000:])
                time.sleep(0.1)
            yield found.group(1), str(data_dir)
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)


async def seed(url: str, signer: TokenSigner, sender: str, receiver: str, count: int) -> str:
    """`count` messages from `sender` to `receiver` (texts m0, m1, ...), sent
    from SEND_DEVICES devices at once with SEND_WINDOW sends in flight each;
    returns the conversation's id."""
    from chatplane.client import Client

    clients = [Client(url, signer.mint(sender, f"seed{d}")) for d in range(SEND_DEVICES)]
    await asyncio.gather(*(c.connect() for c in clients))
    try:
        conversation = await clients[0].direct(receiver)

        async def send_share(client: Client, share: range) -> None:
            for start in range(share.start, share.stop, SEND_WINDOW):
                await asyncio.gather(*(client.send_text(conversation, f"m{i}")
                                       for i in range(start, min(share.stop, start + SEND_WINDOW))))

        bounds = [count * d // SEND_DEVICES for d in range(SEND_DEVICES + 1)]
        await asyncio.gather(*(send_share(c, range(bounds[d], bounds[d + 1]))
                               for d, c in enumerate(clients)))
        return conversation
    finally:
        await asyncio.gather(*(c.close() for c in clients))


async def within(timeout_s: float, work: Awaitable[T]) -> T:
    async with asyncio.timeout(timeout_s):
        return await work


def asset_sizes(urls: list[str]) -> dict[str, dict[str, int]]:
    """path -> {bytes, gzip_bytes}: each URL fetched as served (no transfer
    encoding asked for) and compressed here with gzip -9."""
    sizes: dict[str, dict[str, int]] = {}
    for url in dict.fromkeys(urls):
        request = urllib.request.Request(url, headers={"Accept-Encoding": "identity"})
        with urllib.request.urlopen(request, timeout=30) as response:
            body = response.read()
        path = urllib.parse.urlsplit(url).path or "/"
        sizes[path] = {"bytes": len(body), "gzip_bytes": len(gzip.compress(body, compresslevel=9))}
    return sizes


def paints(browser: Browser, url: str, loads: int, say: Say) -> tuple[dict[str, Any], list[str]]:
    """First contentful paint of `/` over `loads` fresh contexts, and the URLs
    the first load fetched."""
    from chatplane.bench import webpages

    times: list[float] = []
    fetched: list[str] = []
    for i in range(loads):
        took, loaded = webpages.first_paint(browser, url)
        times.append(round(took, 1))
        fetched = fetched or loaded
        say(f"first paint {i + 1}/{loads}: {took:.0f} ms")
    return {"loads": loads, "median_ms": round(statistics.median(times), 1), "min_ms": min(times),
            "max_ms": max(times), "all_ms": times}, fetched


def hold_conversation(browser: Browser, url: str, signer: TokenSigner, conversation: str, receiver: str,
                      count: int, timeout_s: float, say: Say) -> dict[str, Any]:
    """The receiver signs in on a new device, holds the whole conversation and
    scrolls it: what the page holds, the DOM's rows, the times."""
    from chatplane.bench import webpages

    began = time.monotonic()
    device = webpages.sign_in(browser, url, receiver, signer.mint(receiver, "web"),
                              online_timeout_ms=timeout_s * 1000)
    online = time.monotonic()
    device.wait_delivered(count, timeout_s * 1000)
    held = time.monotonic()
    delivered = device.delivered()
    say(f"held {len(delivered)} messages {held - began:.1f} s after signing in")
    device.open_conversation(conversation)
    listed = device.messages()  # raises PageMismatch unless the DOM's rows are a slice of it
    frames = device.scroll_frames()
    windows = []
    for fraction in SCROLL_POINTS:
        windows.append(device.rows_at(fraction))
        device.messages()  # wherever it is scrolled, the rows are a slice of the list
    device.context.close()
    return {
        "messages": count,
        "delivered": len(delivered),
        "delivered_distinct": len(set(delivered)),
        "listed": len(listed),
        "listed_in_seq_order": [seq for seq, _ in listed] == list(range(1, count + 1)),
        "rows_max": max(len(rows) for rows in windows),
        "rows_contiguous": all(rows == list(range(rows[0], rows[0] + len(rows)))
                               for rows in windows if rows),
        "bottom_row": windows[-1][-1] if windows[-1] else None,
        "scroll_frame_ms": {k: round(float(v), 1) for k, v in frames.items()},
        "sign_in_s": round(online - began, 2),
        "sync_s": round(held - began, 2),
    }


def run(url: str, data_dir: str, loads: int, messages: int, chromium: str, timeout_s: float,
        say: Say) -> dict[str, Any]:
    from playwright.sync_api import Error as PlaywrightError
    from playwright.sync_api import sync_playwright

    from chatplane.bench.spread import token_signer
    from chatplane.bench.webpages import PageMismatch

    signer = token_signer(data_dir)
    prefix = f"wb{secrets.token_hex(3)}"  # fresh users: no history from earlier runs
    sender, receiver = f"{prefix}s", f"{prefix}r"
    result: dict[str, Any] = {"workload": "web", "url": url,
                              "machine": {"cpus": os.cpu_count(), "load_average_before": load_average()}}
    with sync_playwright() as playwright:
        try:
            browser = playwright.chromium.launch(executable_path=chromium)
        except PlaywrightError as exc:
            raise SetupError(f"cannot start {chromium}: {exc.message.splitlines()[0]}") from exc
        try:
            result["machine"]["chromium"] = browser.version
            result["first_paint"], fetched = paints(browser, url, loads, say)
            result["assets"] = asset_sizes(fetched)
            say(f"seeding {messages} messages from {sender} to {receiver}")
            began = time.monotonic()
            with ThreadPoolExecutor(1) as pool:  # Playwright's own loop runs in this thread
                conversation = pool.submit(asyncio.run, within(
                    timeout_s * 5, seed(url, signer, sender, receiver, messages))).result()
            seeding = round(time.monotonic() - began, 2)
            held = hold_conversation(browser, url, signer, conversation, receiver, messages,
                                     timeout_s, say)
            result["conversation"] = {**held, "seed_s": seeding}
        except (PageMismatch, PlaywrightError) as exc:  # what was measured so far is reported
            result["error"] = str(exc).splitlines()[0]
        finally:
            browser.close()
    result["machine"]["load_average_after"] = load_average()
    result["clean"] = clean(result)
    return result


def clean(result: dict[str, Any]) -> bool:
    """Each message delivered once and listed in order; the DOM's rows a
    contiguous window that ends at the newest at the bottom."""
    held = result.get("conversation")
    if held is None or "error" in result:
        return False
    count = held["messages"]
    return (held["delivered"] == held["delivered_distinct"] == held["listed"] == count
            and held["listed_in_seq_order"] and held["rows_contiguous"]
            and held["bottom_row"] == count)


def table(result: dict[str, Any]) -> str:
    paint, held, machine = result.get("first_paint"), result.get("conversation"), result["machine"]
    lines = [f"server        {result['url']} ({result['server']}; Chromium {machine.get('chromium')})"]
    if paint is not None:
        lines.append(f"first paint   median {paint['median_ms']:.0f} ms, min {paint['min_ms']:.0f}, "
                     f"max {paint['max_ms']:.0f} ({paint['loads']} loads, a fresh context each)")
    lines += [f"asset         {path}  {s['bytes']:,} B, gzip -9 {s['gzip_bytes']:,} B"
              for path, s in result.get("assets", {}).items()]
    if held is not None:
        frames = held["scroll_frame_ms"]
        lines += [
            f"conversation  {held['messages']:,} messages: delivered {held['delivered']:,} "
            f"({held['delivered_distinct']:,} distinct), listed {held['listed']:,}, in seq order: "
            f"{'yes' if held['listed_in_seq_order'] else 'NO'}; at most {held['rows_max']} rows in the DOM",
            f"times         seeding {held['seed_s']} s; sign-in {held['sign_in_s']} s, all held "
            f"{held['sync_s']} s after signing in",
            f"scroll frame  p50 {frames['p50']} ms, p95 {frames['p95']} ms, max {frames['max']} ms",
        ]
    if "error" in result:
        lines.append(f"error         {result['error']}")
    lines += [f"machine       {machine['cpus']} CPUs; load average {machine['load_average_before']} "
              f"before, {machine['load_average_after']} after",
              "result        " + ("CLEAN" if result["clean"] else "FAILED")]
    return "\n".join(lines)


def run_command(args: argparse.Namespace) -> int:
    if args.loads < 1 or args.messages < 1 or args.timeout <= 0:
        print("bench web: --loads, --messages and --timeout must be positive", file=sys.stderr)
        return 2
    if bool(args.url) != bool(args.data_dir):
        print("bench web: give --url and --data-dir together, or neither (a chatplane up of "
              "its own)", file=sys.stderr)
        return 2
    if not os.path.exists(args.chromium):
        print(f"bench web: no browser at {args.chromium} (scripts/setup/40-web.sh installs "
              "Debian's chromium; or --chromium PATH)", file=sys.stderr)
        return 2

    def say(line: str) -> None:
        if not args.quiet:
            print(line, file=sys.stderr, flush=True)

    if importlib.util.find_spec("playwright") is None:
        print("bench web: needs playwright: pip install 'chatplane[bench]'", file=sys.stderr)
        return 2
    try:
        with contextlib.ExitStack() as stack:
            url, data_dir = args.url, args.data_dir
            if not url:
                url, data_dir = stack.enter_context(own_server())
                say(f"chatplane up at {url}, data dir {data_dir}")
            result = run(url.rstrip("/"), data_dir, args.loads, args.messages, args.chromium,
                         args.timeout, say)
    except SetupError as exc:
        print(f"bench web: {exc}", file=sys.stderr)
        return 1
    except (OSError, TimeoutError, RuntimeError) as exc:
        print(f"bench web: {exc!r}", file=sys.stderr)
        return 1
    result["server"] = "given" if args.url else "own chatplane up"
    print(table(result))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(result, fh, indent=2)
            fh.write("\n")
    return 0 if result["clean"] else 1


def add_parser(workloads: argparse._SubParsersAction) -> None:
    p = workloads.add_parser(
        "web", help="the web app in Chromium: first paint, bundle size, a 10,000-message tab",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", default="", help="the server's base URL (default: start a chatplane "
                                             "up of its own on a temp data dir)")
    p.add_argument("--data-dir", default="", help="with --url: the server's data dir (tokens are "
                                                  "minted with its key)")
    p.add_argument("--loads", type=int, default=10, help="fresh contexts that load / (default 10)")
    p.add_argument("--messages", type=int, default=10_000,
                   help="messages of the conversation one tab holds (default 10000)")
    p.add_argument("--timeout", type=float, default=120.0,
                   help="seconds for the tab to hold them all (seeding: 5 times this)")
    p.add_argument("--chromium", default=CHROMIUM,
                   help=f"the browser (default {CHROMIUM}; CHATPLANE_CHROMIUM)")
    p.add_argument("--json", metavar="FILE", help="also write the result as JSON here")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.set_defaults(func=run_command)
