"""The web app driven through Playwright, for the browser tests: the page
helpers are the product's (`chatplane.bench.webpages`, which `chatplane bench
web` drives too); here only what is the tests' own: the screenshots' folder,
the phone's viewport, and the check that pages agree."""

from __future__ import annotations

from pathlib import Path

from playwright import sync_api

from chatplane.bench.web import CHROMIUM
from chatplane.bench.webpages import Device, sign_in

__all__ = ["CHROMIUM", "IMG", "PHONE", "Device", "check_same_conversation", "sign_in", "sync_api"]
IMG = Path(__file__).resolve().parents[2] / "docs" / "img"
PHONE = {"width": 390, "height": 780}


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
