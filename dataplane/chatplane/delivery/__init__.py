"""The delivery rules, in one place: sequencing, dedup, acks, sync.

Pure code (no asyncio, no sockets): the gateway, the state tier and the SDK
feed these objects what happened and do what they return.

- `acks.DownlinkWindow`   server side, per device: what was pushed and not yet
                          acked, when to retransmit, when to tell it to sync.
- `sync.InboxCursor`      client side, per device: drop what it has, buffer
                          what is early, deliver in order, ask for gaps.
- `dedup.CidAllocator`    client side: increasing cids that survive restarts.
Sequencing itself (contiguous seq and inbox_seq, idempotent on cid) is the
storage's `append` (chatplane.storage.base), under one writer per conversation.
"""
