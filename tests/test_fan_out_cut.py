"""An inbox fan-out whose call broke after its owner applied it is asked
again of the owner, which looks for what it wrote, instead of being written
here beside the owner's write (im/forward.py): against a real owner process
(tests/support/fanout_peer.py) whose stream is cut right after it applied
the first batch, and one killed (nothing answers: written here, as before)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from chatplane.im.forward import ImRing
from chatplane.registry.instances import CachedInstances, Instances
from chatplane.rpc.linksecurity import LinkSecurity
from chatplane.rpc.peers import Peers
from tests.test_streams import free_port

SECRET = "fan-out-cut-secret"
ENTRIES = [(7, ["ann", "bob"]), (8, ["ann"])]


class Owner:
    def __init__(self, log: Path, cut_first: bool) -> None:
        self.log = log
        self.port = free_port()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.support.fanout_peer", "--port", str(self.port),
             "--secret", SECRET, "--log", str(log), *(["--cut-first"] if cut_first else [])],
            stdout=subprocess.PIPE, text=True, start_new_session=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()  # (the owner exits by itself after 120 s)
        assert line.startswith("ready"), line

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def asked(self) -> list[dict[str, object]]:
        """The fan-outs the owner applied, in order."""
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines()]

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)


@pytest.fixture
def owner(tmp_path: Path) -> Iterator[Callable[[bool], Owner]]:
    started: list[Owner] = []

    def make(cut_first: bool) -> Owner:
        started.append(Owner(tmp_path / f"owner{len(started)}.jsonl", cut_first))
        return started[-1]

    yield make
    for one in started:
        one.kill()


@pytest.fixture
async def ring() -> AsyncIterator[ImRing]:
    """The asking instance's side (its registry is never read: fan_out is
    given the owner's address)."""
    peers = Peers(5.0, LinkSecurity("im", secret=SECRET))
    unused = aioredis.Redis(host="127.0.0.1", port=1)
    made = ImRing("im-asking", peers, CachedInstances(Instances(unused, 5.0), "im"))
    yield made
    await made.fan_out_streams.close()
    await peers.close()
    await unused.aclose()


async def test_a_fan_out_cut_after_its_owner_applied_it_is_asked_again_not_written_here(
        owner: Callable[[bool], Owner], ring: ImRing) -> None:
    cut = owner(True)
    answered = await ring.fan_out(cut.address, "c:cut", ENTRIES, fresh={7, 8})
    assert answered  # the caller writes nothing here
    first, again = cut.asked()
    assert first == {"conversation": "c:cut", "entries": [[7, ["ann", "bob"]], [8, ["ann"]]],
                     "fresh": [7, 8]}
    # asked again with nothing fresh: the owner looks for the entries it wrote
    assert again == {**first, "fresh": []}
    assert (ring.fan_outs_asked_again, ring.fan_outs_kept, ring.fan_outs_forwarded) == (1, 0, 1)


async def test_a_fan_out_to_an_owner_that_is_gone_is_written_here(
        owner: Callable[[bool], Owner], ring: ImRing) -> None:
    gone = owner(False)
    assert await ring.fan_out(gone.address, "c:gone", ENTRIES, fresh={7, 8})
    gone.kill()
    # refused, and refused again: the caller writes them here (looking for any entry)
    assert not await ring.fan_out(gone.address, "c:gone", ENTRIES, fresh={7, 8})
    assert (ring.fan_outs_asked_again, ring.fan_outs_kept, ring.fan_outs_forwarded) == (1, 1, 1)
    assert len(gone.asked()) == 1
