"""Regions (DESIGN §5): the peer list and the cross-region link: peers probe each other
with `Region.Hello`; on embedded stores, 1:1 chats and groups have a home region that
sequences them, other regions forward sends and group changes there and follow its
replicated log (homes.py, replication.py, groupchanges.py), acked per durability mode
(durability.py), the log trimmed once every peer applied it (trimming.py). User
inboxes, event conversations and failover are not built yet."""
