"""Social setup for tests that are about groups, not about consent: make the
group's owner friends with its members first (adding non-friends invites
them, docs/protocol.md "Group invitations"), or build the group through the
admin API, which adds without asking."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import aiohttp

from chatplane.client import Client


async def befriend(owner: Client, others: Sequence[Client]) -> None:
    """Each user of `others` asks `owner`, who accepts (two requests a pair;
    the owner's own devices and a user's second device are skipped)."""
    done = {owner.user_id}
    for other in others:
        if other.user_id not in done:
            done.add(other.user_id)
            await other.add_friend(owner.user_id)
            await owner.accept_friend(other.user_id)


async def admin_group(url: str, data_dir: Path, owner: str, name: str,
                      members: Sequence[str]) -> str:
    """A group made by the admin API (POST /v1/admin/groups on the admin port
    `url`): every member added at once; returns its conversation id."""
    secret = (data_dir / "admin.secret").read_text().strip()
    async with aiohttp.ClientSession() as http, http.post(
            url + "/v1/admin/groups", headers={"Authorization": f"Bearer {secret}"},
            json={"owner": owner, "name": name, "members": list(members)}) as response:
        assert response.status == 201, await response.text()
        return str((await response.json())["conversation_id"])
