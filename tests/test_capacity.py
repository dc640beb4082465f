"""`chatplane capacity` and the fan-out model behind it.

The arithmetic is checked against the formulas it documents, bad input is
refused with one line, the drawn fan-out agrees with the exact mean, and a
real `chatplane up` run writes exactly one inbox entry per member of each
message's conversation, as the model assumes (groups drawn from the Zipf
distribution the model uses)."""

from __future__ import annotations

import asyncio
import json
import math
import sqlite3
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest

from chatplane.auth import TokenSigner
from chatplane.client import Client
from chatplane.planning import groups
from chatplane.planning.capacity import DAY_S, FIGURES, Workload, plan
from tests.support.server import ServerProcess

EXAMPLES = Path(__file__).parent.parent / "examples" / "capacity"
FIGS = {name: 1000.0 for name in FIGURES}


def run_capacity(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "chatplane.cli", "capacity", *args],
                          capture_output=True, text=True, timeout=60)


def test_pods_follow_the_documented_formulas() -> None:
    w = Workload(dau=2e7, msgs_per_user=50, peak=3, distribution="direct=1",
                 regions="a=0.25,b=0.75", devices=2, concurrent=0.5, headroom=0.5)
    out = plan(FIGS, w)
    for name, share in (("a", 0.25), ("b", 0.75)):
        r = out["regions"][name]
        peak = 2e7 * share * 50 / DAY_S * 3
        assert r["im_pods"] == math.ceil(peak / 500)
        pushes = peak * 2 * 2 * 0.5  # 2 members, 2 devices, half of them online
        connections = 2e7 * share * 2 * 0.5
        assert r["gateway_pods"] == math.ceil(max(connections, pushes) / 500)
        everyone = 2e7 * 50 / DAY_S * 3
        assert r["database_nodes"] == math.ceil((everyone + everyone * 2) * 3 / 500)
        assert r["cross_region_bytes_per_s"]["peak"] == round(peak * 1000)
    assert out["members_per_message"]["write_diffusion"] == 2


def test_large_groups_add_pushes_but_no_inbox_rows() -> None:
    small = plan(FIGS, Workload(dau=1e6, msgs_per_user=10, peak=2, distribution="fixed:400=1"))
    large = plan(FIGS, Workload(dau=1e6, msgs_per_user=10, peak=2, distribution="fixed:600=1"))
    assert large["members_per_message"] == {"write_diffusion": 0, "large_groups": 600}
    assert (large["total"]["database_nodes"] < small["total"]["database_nodes"]
            and large["total"]["pushes_per_s_peak"] > small["total"]["pushes_per_s_peak"])


@pytest.mark.parametrize("args, says", [
    (["--peak", "0.5"], "--peak"),
    (["--regions", "a=0.5,b=0.4"], "--regions"),
    (["--group-size-distribution", "zipf:2:1:10=1"], "zipf:S:MIN:MAX"),
    (["--group-size-distribution", "direct=0.5"], "add up to 1"),
    (["--figures", "/nonexistent.json"], "/nonexistent.json"),
    (["--concurrent", "2"], "--concurrent"),
])
def test_unusable_input_is_refused_with_one_line(args: list[str], says: str) -> None:
    base = {"--figures": str(EXAMPLES / "production.json"), "--dau": "1e9",
            "--msgs-per-user": "100", "--peak": "3"}
    base.update(dict(zip(args[::2], args[1::2], strict=True)))
    done = run_capacity(*[x for kv in base.items() for x in kv])
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.count("\n") == 1 and says in done.stderr


def test_a_missing_figure_is_refused(tmp_path: Path) -> None:
    figures = json.loads((EXAMPLES / "production.json").read_text())
    del figures["figures"]["redis_ops_per_shard_s"]
    (tmp_path / "f.json").write_text(json.dumps(figures))
    done = run_capacity("--figures", str(tmp_path / "f.json"), "--dau", "1e6",
                        "--msgs-per-user", "10", "--peak", "2")
    assert done.returncode == 2 and done.stderr.count("\n") == 1
    assert "redis_ops_per_shard_s" in done.stderr


def test_the_plan_prints_every_tier_per_region() -> None:
    done = run_capacity("--figures", str(EXAMPLES / "measured-here.json"), "--dau", "1e6",
                        "--msgs-per-user", "20", "--peak", "3", "--regions", "x=0.5,y=0.5",
                        "--json")
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    for region in ("x", "y"):
        assert {"im_pods", "gateway_pods", "state_pods", "database_nodes", "redis_shards",
                "hot_bytes_per_day", "archive_bytes_per_day",
                "cross_region_bytes_per_s"} <= set(out["regions"][region])


def test_drawn_fan_out_agrees_with_the_exact_mean() -> None:
    parts = groups.parse("direct=0.6,zipf:1.5:3:200=0.4")
    small, large = groups.expected_members(parts, 500)
    drawn = groups.simulate(parts, 200_000, seed=3)
    assert large == 0 and abs(drawn["mean"] - small) / small < 0.02
    assert drawn["p99"] > drawn["p50"]


async def test_a_real_run_writes_one_inbox_entry_per_member(
        data_dir: Path, signer: TokenSigner) -> None:
    sizes = groups.draw_sizes(groups.parse("direct=0.4,zipf:1.2:3:40=0.6"), 30, seed=5)
    server = ServerProcess(data_dir)
    server.start()
    try:
        auth = {"Authorization": f"Bearer {server.admin_secret}"}
        async with aiohttp.ClientSession() as http:
            for i, size in enumerate(sizes):
                owner, members = f"o{i}", [f"m{i}-{k}" for k in range(size - 1)]
                client = Client(server.url, signer.mint(owner, "phone", 600))
                await client.connect()
                if size == 2:
                    conversation = await client.direct(members[0])
                else:
                    async with http.post(server.admin_url + "/v1/admin/groups", headers=auth,
                                         json={"name": f"g{i}", "owner": owner,
                                               "members": members}) as r:
                        assert r.status == 201, await r.text()
                        conversation = (await r.json())["conversation_id"]
                await client.send_text(conversation, f"cap-{i}")
                await client.close()
        await asyncio.sleep(0.2)
    finally:
        server.stop()
    with sqlite3.connect(data_dir / "chatplane.db") as db:
        counted = dict(db.execute(
            "SELECT m.text, count(*) FROM inbox i JOIN messages m ON m.conversation_id ="
            " i.conversation_id AND m.seq = i.seq WHERE m.text LIKE 'cap-%' GROUP BY m.text"))
    assert [counted.get(f"cap-{i}", 0) for i in range(len(sizes))] == sizes
