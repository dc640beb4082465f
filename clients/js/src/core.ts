// The client side of the protocol as a state machine without I/O, the mirror
// of chatplane.protocol.clientsession (Python). The I/O (client.ts) feeds it
// frame bytes (`receive`) and the clock in ms (`tick`) and takes bytes out
// (`dataToSend`) and events (`eventsReceived`). It owns the login and the
// resume decision, request ids, pending sends by cid, batched cumulative
// acks, heartbeats and the silent-server check, and the reconnect backoff.
// Both cores pass tests/vectors/session.json. One difference: a compressed
// GroupPush is inflated by the I/O (an async stream in browsers), which then
// hands the messages to `acceptGroup` (the `inflate` event).
import { decodeFrame, encodeFrame, type Frame } from "./codec.js";
import { Backoff, CidAllocator, ConversationOrder, InboxCursor, resumeCursor, SendQueue }
  from "./delivery.js";
import { RequestError, toMessage, type Message, type SendAck } from "./messages.js";

export const ACK_DELAY_MS = 10; // pushes gathered before one cumulative ack covers them
export const STAYED_UP_MS = 2000; // a connection up this long starts the backoff over
// Errors after which reconnecting cannot help (docs/protocol.md, error codes).
export const TERMINAL = new Set([5, 6, 13, 17, 19]);

export type CoreEvent =
  | { type: "logged_in"; ack: Frame; storeReset: boolean }
  | { type: "delivered"; messages: Message[] }
  | { type: "reply"; requestId: number; frame: Frame; error: RequestError | null }
  | { type: "send_done"; cid: number; ack: SendAck | null; error: RequestError | null }
  | { type: "sync" }
  | { type: "pull" }
  | { type: "inflate"; push: Frame }
  | { type: "ended"; reason: string; error: RequestError | null };

export type Phase = "offline" | "logging_in" | "active";

export interface CoreOptions {
  have?: number;
  storeId?: string;
  clientName?: string;
  heartbeatMs?: number;
  random?: () => number;
  cids?: CidAllocator;
}

// Conversations whose seqs are the same in every region (1:1 chats, groups: one
// home sequences each); inbox and event seqs are per store.
const COMMON_SEQS = ["d:", "g:"];

export class ClientCore {
  cursor: InboxCursor<Message>;
  order = new ConversationOrder<Message>();
  storeId: string;
  region = ""; // the region of that store (LoginAck.region)
  readonly sends = new SendQueue<Frame>();
  readonly cids: CidAllocator;
  readonly backoff: Backoff;
  heartbeatMs: number;
  serverMaxFrame = 64 * 1024;
  userId = "";
  deviceId = "";
  inboxHead = 0;
  storeResets = 0;
  sendRetries = 0;
  phase: Phase = "offline";
  reconnectDelayMs: number | null = null; // the server's Reconnect, or 0
  lastKind = ""; // the kind of the last frame received (for diagnostics)
  private readonly random: () => number;
  private readonly heartbeatFixed: boolean;
  private nextId = 0;
  private out: Uint8Array[] = [];
  private events: CoreEvent[] = [];
  private loginId = 0;
  private outstanding = new Set<number>();
  private sendIds = new Map<number, number>(); // request id -> cid
  private ackedSent = 0;
  private ackDue: number | null = null;
  private beatDue: number | null = null;
  private lastFrame = 0;
  private upSince: number | null = null;

  constructor(private readonly options: CoreOptions = {}) {
    this.cursor = new InboxCursor<Message>(options.have ?? 0);
    this.storeId = options.storeId ?? "";
    this.random = options.random ?? Math.random;
    this.cids = options.cids ?? new CidAllocator();
    this.backoff = new Backoff(100, 10_000, this.random);
    this.heartbeatFixed = options.heartbeatMs !== undefined;
    this.heartbeatMs = options.heartbeatMs ?? 15_000;
  }

  private resetConnection(): void {
    this.phase = "offline";
    this.loginId = 0;
    this.outstanding = new Set();
    this.sendIds = new Map();
    this.ackedSent = 0;
    this.ackDue = this.beatDue = this.upSince = null;
    this.lastFrame = 0;
    this.reconnectDelayMs = null;
  }

  // -- the connection ---------------------------------------------------------

  /** A link is open: queue the Login (the token only ever travels here). */
  login(token: string, now: number): void {
    this.resetConnection();
    this.phase = "logging_in";
    this.loginId = ++this.nextId;
    this.lastFrame = now;
    this.queue({ id: this.loginId, login: {
      protocol_version: 1, token, inbox_seq: this.cursor.have, store_id: this.storeId,
      client_name: this.options.clientName ?? "chatplane-js" } });
  }

  /** The link is gone: forget the connection; ms to wait before the next. */
  connectionLost(now: number): number {
    if (this.upSince !== null && now - this.upSince > STAYED_UP_MS) this.backoff.reset();
    const delay = this.reconnectDelayMs !== null
      ? this.reconnectDelayMs * (1 + this.random()) : this.backoff.nextDelayMs();
    this.resetConnection();
    this.out = [];
    return delay;
  }

  /** What survives an inbox resync from 0: in another region (failover), what was
   * delivered of 1:1 chats and groups (their seqs are common to every region), so
   * the new store's copies are not delivered again; in the same region (a wiped
   * store) nothing (docs/client.md, "Failover across regions"). */
  private orderAfterReset(region: string): ConversationOrder<Message> {
    const order = new ConversationOrder<Message>();
    if (this.region && region && region !== this.region) {
      for (const [c, seq] of this.order.last) {
        if (COMMON_SEQS.some((p) => c.startsWith(p))) order.last.set(c, seq);
      }
      for (const c of this.order.large) {
        if (COMMON_SEQS.some((p) => c.startsWith(p))) order.large.add(c);
      }
    }
    return order;
  }

  private loggedIn(ack: Frame, now: number): void {
    const resumed = resumeCursor(this.cursor.have, this.storeId, ack.store_id, ack.inbox_head);
    const reset = resumed.have !== this.cursor.have;
    if (reset) { // another store, or less than the device holds: start over
      this.cursor = new InboxCursor<Message>(resumed.have);
      this.order = this.orderAfterReset(ack.region ?? "");
      this.storeResets += 1;
    }
    this.storeId = resumed.store;
    this.region = ack.region || this.region;
    this.serverMaxFrame = ack.max_frame_bytes || this.serverMaxFrame;
    this.sends.maxInflight = ack.max_inflight_sends || this.sends.maxInflight;
    this.ackedSent = Math.min(this.cursor.have, ack.inbox_head);
    this.userId = ack.user_id;
    this.deviceId = ack.device_id;
    this.inboxHead = ack.inbox_head;
    if (!this.heartbeatFixed && ack.heartbeat_interval_ms) {
      this.heartbeatMs = Math.max(ack.heartbeat_interval_ms, 500);
    }
    this.phase = "active";
    this.upSince = now;
    this.beatDue = now + this.heartbeatMs;
    this.events.push({ type: "logged_in", ack, storeReset: reset });
    this.sends.reconnected();
    this.pump(now);
    this.events.push({ type: "sync" });
  }

  // -- requests and sends -------------------------------------------------------

  /** Queue a request with a new id; its answer comes as a `reply` event. */
  request(frame: Frame): number {
    const id = ++this.nextId;
    this.outstanding.add(id);
    this.queue({ ...frame, id });
    return id;
  }

  /** The caller stopped waiting: a late answer is dropped. */
  forget(requestId: number): void {
    this.outstanding.delete(requestId);
  }

  /** A message with a new cid, pending until acked and resent across
   * reconnects; returns the cid (its `send_done` event carries it). */
  send(conversationId: string, text: string, now: number, contentType = ""): number {
    const cid = this.cids.next();
    this.sends.add(cid, { conversation_id: conversationId, cid, text, content_type: contentType });
    this.pump(now);
    return cid;
  }

  private pump(now: number): void {
    if (this.phase !== "active") return;
    for (const cid of this.sends.due(now)) {
      const id = ++this.nextId;
      this.sendIds.set(id, cid);
      this.queue({ id, send: this.sends.pending.get(cid) });
    }
  }

  private sendAnswered(cid: number, frame: Frame, now: number): void {
    const error = errorOf(frame);
    const outcome = this.sends.answered(cid, error === null, error?.retriable ?? false, now,
                                        50 + this.random() * 200);
    if (outcome === "acked") {
      const a = frame.send_ack;
      this.events.push({ type: "send_done", cid, error: null, ack: {
        conversationId: a.conversation_id, seq: a.seq, messageId: a.message_id, cid: a.cid,
        duplicate: a.duplicate } });
    } else if (outcome === "refused") {
      this.events.push({ type: "send_done", cid, ack: null, error });
    } else if (outcome === "retry") {
      this.sendRetries += 1;
      return;
    }
    this.pump(now);
  }

  // -- input ----------------------------------------------------------------------

  /** One frame's bytes from the link. */
  receive(data: Uint8Array, now: number): void {
    this.lastFrame = now;
    let frame: Frame;
    try {
      frame = decodeFrame(data);
    } catch (error) {
      this.end(`undecodable frame from the server: ${String(error)}`, null);
      return;
    }
    const kind = frame.body ?? "";
    this.lastKind = kind;
    if (this.phase === "logging_in") {
      if (frame.id !== this.loginId && kind !== "error") return;
      if (kind === "login_ack") {
        this.loggedIn(frame.login_ack, now);
      } else if (kind === "error") {
        const e = frame.error;
        this.end(`login refused: ${e.message}`, new RequestError(e.code, e.message, e.retriable));
      }
      return;
    }
    if (this.phase !== "active") return;
    const fatal = kind === "error" && frame.error.fatal;
    if (kind === "push") {
      this.accept(frame.push.entries, now);
    } else if (kind === "group_push") {
      const push = frame.group_push;
      if (push.compressed && push.compressed.length > 0) this.events.push({ type: "inflate", push });
      else this.acceptGroup(push.conversation_id, push.head_seq, push.messages, 0);
    } else if (kind === "sync_hint") {
      this.events.push({ type: "sync" });
    } else if (kind === "reconnect") {
      this.reconnectDelayMs = frame.reconnect.delay_ms;
      this.end(`server asked to reconnect: ${frame.reconnect.reason}`, null);
    } else if (frame.id && this.sendIds.has(frame.id)) {
      const cid = this.sendIds.get(frame.id)!;
      this.sendIds.delete(frame.id);
      this.sendAnswered(cid, frame, now);
      if (fatal) this.end(`server closed: ${frame.error.message}`, null);
    } else if (frame.id && this.outstanding.has(frame.id)) {
      this.outstanding.delete(frame.id);
      this.events.push({ type: "reply", requestId: frame.id, frame, error: errorOf(frame) });
      if (fatal) this.end(`server closed: ${frame.error.message}`, null);
    } else if (fatal) {
      const e = frame.error;
      this.end(e.message, new RequestError(e.code, e.message, e.retriable));
    }
  }

  /** Inbox entries (a push or a sync page): delivered once, in order. */
  accept(entries: Frame[], now: number): void {
    const out: Message[] = [];
    for (const entry of entries) {
      for (const m of this.cursor.accept(entry.inbox_seq, toMessage(entry.message, entry.inbox_seq))) {
        out.push(...this.order.offer(m.conversationId, m.seq, m, true));
      }
    }
    this.deliver(out);
    if (this.phase === "active" && this.cursor.have > this.ackedSent && this.ackDue === null) {
      this.ackDue = now + ACK_DELAY_MS; // one cumulative ack covers what comes meanwhile
    }
    if (this.cursor.gap) this.events.push({ type: "sync" });
  }

  /** Large-group messages (a GroupPush or a sync delta: not from the inbox). */
  acceptGroup(conversationId: string, headSeq: number, messages: Frame[], joinedSeq: number): void {
    const out: Message[] = [];
    if (joinedSeq) out.push(...this.order.start(conversationId, joinedSeq - 1));
    for (const m of messages) out.push(...this.order.offer(conversationId, m.seq, toMessage(m), false));
    this.order.sawHead(conversationId, headSeq);
    this.deliver(out);
  }

  acceptSync(response: Frame, now: number): void {
    this.inboxHead = Math.max(this.inboxHead, response.inbox_head);
    this.accept(response.entries, now);
    for (const g of response.groups as Frame[]) {
      this.acceptGroup(g.conversation_id, g.head_seq, g.messages, g.joined_seq);
    }
  }

  /** A history page that fills a gap of `order.wants`. */
  acceptPulled(conversationId: string, messages: Frame[]): void {
    this.deliver(this.order.pulled(conversationId,
                                   messages.map((m): [number, Message] => [m.seq, toMessage(m)])));
  }

  private deliver(messages: Message[]): void {
    if (messages.length > 0) this.events.push({ type: "delivered", messages });
    if (this.order.wants.size > 0) this.events.push({ type: "pull" });
  }

  // -- the clock --------------------------------------------------------------------

  /** Run what is due: the batched ack, paused sends, the heartbeat. */
  tick(now: number): void {
    if (this.phase !== "active") return;
    if (this.ackDue !== null && now >= this.ackDue) {
      this.ackDue = null;
      if (this.cursor.have > this.ackedSent) {
        this.ackedSent = this.cursor.have;
        this.queue({ push_ack: { inbox_seq: this.cursor.have } });
      }
    }
    if (this.sends.pausedUntil !== null && now >= this.sends.pausedUntil) this.pump(now);
    if (this.beatDue !== null && now >= this.beatDue) {
      this.beatDue = now + this.heartbeatMs;
      if (now - this.lastFrame > 3 * this.heartbeatMs) {
        this.end("server silent for three heartbeats", null);
        return;
      }
      this.queue({ heartbeat: { client_time_ms: Date.now() } });
    }
  }

  /** `tick` has nothing to do before this time (null: nothing scheduled). */
  nextDue(): number | null {
    if (this.phase !== "active") return null;
    const due = [this.ackDue, this.sends.pausedUntil, this.beatDue]
      .filter((t): t is number => t !== null);
    return due.length > 0 ? Math.min(...due) : null;
  }

  // -- output -------------------------------------------------------------------------

  private end(reason: string, error: RequestError | null): void {
    this.phase = "offline";
    this.events.push({ type: "ended", reason, error });
  }

  private queue(frame: Frame): void {
    this.out.push(encodeFrame(frame));
  }

  dataToSend(): Uint8Array[] {
    const out = this.out;
    this.out = [];
    return out;
  }

  eventsReceived(): CoreEvent[] {
    const events = this.events;
    this.events = [];
    return events;
  }
}

/** The error an answer carries (a fatal one is final: not retriable). */
function errorOf(frame: Frame): RequestError | null {
  if (frame.body !== "error") return null;
  const e = frame.error;
  return new RequestError(e.code, e.message, e.retriable && !e.fatal);
}
