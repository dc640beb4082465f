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
 * Per-conversation order on top of the inbox (chatplane.delivery.sync.
 * ConversationOrder): a message is delivered when it is the next seq of its
 * conversation, dropped when already delivered, otherwise held while the
 * owner pulls the range (`wants`: conversation -> after_seq) from history.
 * Large groups (read diffusion) arrive by GroupPush and pulls, not the inbox.
 */
export class ConversationOrder<T> {
  last = new Map<string, number>();
  heads = new Map<string, number>();
  large = new Set<string>();
  wants = new Map<string, number>();
  duplicates = 0;
  private held = new Map<string, Map<number, T>>();

  constructor(private readonly maxHeld = 10_000) {}

  /** The device starts the conversation after `beforeSeq` (once). */
  start(conversationId: string, beforeSeq: number): T[] {
    if (this.last.has(conversationId)) return [];
    this.last.set(conversationId, beforeSeq);
    return this.drain(conversationId);
  }

  offer(conversationId: string, seq: number, item: T, fromInbox: boolean): T[] {
    let last = this.last.get(conversationId);
    if (last === undefined) {
      if (!fromInbox) {
        this.hold(conversationId, seq, item);
        return [];
      }
      last = seq - 1;
      this.last.set(conversationId, last);
    }
    if (seq <= last) {
      this.duplicates += 1;
      return [];
    }
    this.hold(conversationId, seq, item);
    return this.drain(conversationId);
  }

  /** A large group's head (push notice or sync): pull up to it. */
  sawHead(conversationId: string, headSeq: number): void {
    this.large.add(conversationId);
    this.heads.set(conversationId, Math.max(this.heads.get(conversationId) ?? 0, headSeq));
    const last = this.last.get(conversationId);
    if (last !== undefined && last < this.heads.get(conversationId)!) {
      this.wants.set(conversationId, last);
    }
  }

  /** The result of pulling after wants[conversationId], ascending. Seqs the
   * server skipped are not visible to this member: jump them. */
  pulled(conversationId: string, seqsAndItems: [number, T][]): T[] {
    const after = this.wants.get(conversationId);
    this.wants.delete(conversationId);
    let last = this.last.get(conversationId);
    if (last === undefined) return [];
    if (seqsAndItems.length > 0 && seqsAndItems[0][0] > last + 1) {
      last = seqsAndItems[0][0] - 1;
      this.last.set(conversationId, last);
    } else if (seqsAndItems.length === 0) {
      const held = this.held.get(conversationId);
      if (held && held.size > 0 && after !== undefined) {
        const lowest = Math.min(...held.keys());
        if (lowest > last + 1) this.last.set(conversationId, lowest - 1);
      }
    }
    for (const [seq, item] of seqsAndItems) {
      if (seq > this.last.get(conversationId)!) this.hold(conversationId, seq, item);
    }
    const out = this.drain(conversationId);
    const head = this.heads.get(conversationId) ?? 0;
    const now = this.last.get(conversationId)!;
    if (seqsAndItems.length > 0 && now < head) this.wants.set(conversationId, now);
    return out;
  }

  private hold(conversationId: string, seq: number, item: T): void {
    let held = this.held.get(conversationId);
    if (held === undefined) {
      held = new Map();
      this.held.set(conversationId, held);
    }
    if (held.size < this.maxHeld || held.has(seq)) held.set(seq, item);
  }

  private drain(conversationId: string): T[] {
    const held = this.held.get(conversationId);
    let last = this.last.get(conversationId)!;
    const out: T[] = [];
    const head = this.heads.get(conversationId) ?? 0;
    if (held === undefined || held.size === 0) {
      if (last >= head) this.wants.delete(conversationId);
      return out;
    }
    for (const seq of [...held.keys()]) {
      if (seq <= last) {
        held.delete(seq);
        this.duplicates += 1;
      }
    }
    while (held.has(last + 1)) {
      last += 1;
      out.push(held.get(last)!);
      held.delete(last);
    }
    this.last.set(conversationId, last);
    if (held.size > 0) {
      this.wants.set(conversationId, last); // a gap below what is held: pull it
    } else {
      this.held.delete(conversationId);
      if (last >= head) this.wants.delete(conversationId); // caught up
    }
    return out;
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

/** What became of a send once the server answered (SendQueue.answered). */
export type SendOutcome = "acked" | "refused" | "retry" | "stale";

/**
 * The sends a device has not seen acked, by cid (chatplane.delivery.sends):
 * out in cid order, at most `maxInflight` at once, again with the same cid
 * after a reconnect; after a retriable refusal nothing more goes out until
 * `pausedUntil` (the server takes sends again from the refused cid).
 */
export class SendQueue<T> {
  readonly pending = new Map<number, T>(); // insertion order is cid order
  readonly inflight = new Set<number>();
  pausedUntil: number | null = null;

  constructor(public maxInflight = 128) {}

  get size(): number {
    return this.pending.size;
  }

  add(cid: number, body: T): void {
    this.pending.set(cid, body);
  }

  /** The cids to transmit now, in order (marked in flight). */
  due(now: number): number[] {
    if (this.pausedUntil !== null) {
      if (now < this.pausedUntil) return [];
      this.pausedUntil = null;
    }
    const out: number[] = [];
    for (const cid of this.pending.keys()) {
      if (this.inflight.size >= this.maxInflight) break;
      if (!this.inflight.has(cid)) {
        this.inflight.add(cid);
        out.push(cid);
      }
    }
    return out;
  }

  answered(cid: number, ok: boolean, retriable: boolean, now: number, pause: number): SendOutcome {
    this.inflight.delete(cid);
    if (!this.pending.has(cid)) return "stale";
    if (ok || !retriable) {
      this.pending.delete(cid);
      return ok ? "acked" : "refused";
    }
    if (this.pausedUntil === null) this.pausedUntil = now + pause;
    return "retry";
  }

  /** A new connection: everything pending goes again, same cids. */
  reconnected(): void {
    this.inflight.clear();
    this.pausedUntil = null;
  }
}
