// The client's delivery rules, without I/O: the inbox cursor (drop
// duplicates, buffer early entries, release in order, pull gaps), the resume
// decision after a login, cids, and reconnect backoff. They mirror
// chatplane.delivery (Python) and pass the same vectors (tests/vectors/).

/** Exactly once and in order from pushes and syncs (docs/protocol.md). */
export class InboxCursor<T> {
  have: number;
  duplicates = 0;
  private early = new Map<number, T>();

  constructor(have = 0, private readonly maxBuffered = 10_000) {
    this.have = have;
  }

  /** Entries wait on a missing one: pull with SyncRequest{after_inbox_seq: have}. */
  get gap(): boolean {
    return this.early.size > 0;
  }

  /** Take one entry; return what became deliverable, in inbox order. */
  accept(seq: number, item: T): T[] {
    if (seq <= this.have || this.early.has(seq)) {
      this.duplicates += 1;
      return [];
    }
    if (seq !== this.have + 1) {
      // over the buffer: dropped here, the sync brings it again
      if (this.early.size < this.maxBuffered) this.early.set(seq, item);
      return [];
    }
    const ready = [item];
    this.have = seq;
    for (;;) {
      const next = this.early.get(this.have + 1);
      if (next === undefined) break;
      this.early.delete(this.have + 1);
      ready.push(next);
      this.have += 1;
    }
    return ready;
  }
}

/**
 * After a LoginAck: the cursor to keep and the store it counts in. Another
 * store, or an inbox head below `have`, means the cursor counts nothing
 * there: start over from 0 (or new messages would look like duplicates).
 */
export function resumeCursor(have: number, heldStore: string, ackStore: string,
                             inboxHead: number): { have: number; store: string } {
  const otherStore = Boolean(heldStore && ackStore && ackStore !== heldStore);
  if (otherStore || inboxHead < have) have = 0;
  return { have, store: ackStore || heldStore };
}

/** Strictly increasing client message ids, from the clock in microseconds,
 * so they keep increasing across page reloads without a stored counter. */
export class CidAllocator {
  private last: number;

  constructor(start?: number, private readonly clock: () => number = () => Date.now() * 1000) {
    this.last = start ?? this.clock();
  }

  next(): number {
    this.last = Math.max(this.last + 1, this.clock());
    return this.last;
  }
}

/** Full-jitter exponential backoff; starts over once a connection stayed up. */
export class Backoff {
  private attempt = 0;

  constructor(private readonly baseMs = 100, private readonly maxMs = 10_000,
              private readonly random: () => number = Math.random) {}

  nextDelayMs(): number {
    this.attempt += 1;
    const ceiling = Math.min(this.maxMs, this.baseMs * 2 ** Math.min(this.attempt, 10));
    return this.random() * ceiling;
  }

  reset(): void {
    this.attempt = 0;
  }
}
