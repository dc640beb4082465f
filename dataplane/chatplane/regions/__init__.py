"""Regions: the peer list and the cross-region link (DESIGN §5, first slice: peers probe
each other with `Region.Hello`; forwarding and cross-region fan-out are not built yet)."""
