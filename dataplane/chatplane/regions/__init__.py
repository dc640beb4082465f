"""Regions (DESIGN §5): the peer list and the cross-region link: peers probe each other
with `Region.Hello`; on embedded stores, 1:1 chats have a home region that sequences
them, other regions forward sends there and follow its replicated log (homes.py,
replication.py). Groups, user inboxes, durability modes and failover are not built yet."""
