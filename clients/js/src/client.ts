// The browser/node client: a WebSocket to the gateway, login with the stored
// inbox cursor, sync of the delta, live pushes acked cumulatively, sends with
// increasing cids resent after a reconnect until acked, heartbeats, and
// reconnect with backoff. The rules are in delivery.ts; this is the I/O.
import { decodeFrame, encodeFrame, type Frame } from "./codec.js";
import { groupPushMessages, LinkClosed, RequestError, toMessage, type ConnectionState,
  type Message, type SendAck } from "./messages.js";
import { Backoff, CidAllocator, ConversationOrder, InboxCursor, resumeCursor } from "./delivery.js";
import { MemoryCursorStore, type CursorStore } from "./store.js";

export interface ClientOptions {
  /** Base URL of a gateway or of `chatplane up` (http[s]://host:port). */
  url: string;
  token: string;
  store?: CursorStore;
  clientName?: string;
  /** A WebSocket constructor (the global one by default). */
  webSocket?: typeof WebSocket;
  onMessage?: (message: Message) => void;
  onState?: (state: ConnectionState, detail?: string) => void;
}

export { groupPushMessages, LinkClosed, RequestError, toMessage };
export type { ConnectionState, Message, SendAck };

// Errors after which reconnecting cannot help (docs/protocol.md, error codes).
const TERMINAL = new Set([5, 6, 13, 17]);
const ACK_DELAY_MS = 10;
const SYNC_PAGE = 500;

interface Pending {
  send: Frame;
  resolve: (ack: SendAck) => void;
  reject: (error: Error) => void;
}

interface Waiting {
  resolve: (frame: Frame) => void;
  reject: (error: Error) => void;
}

export class ChatClient {
  userId = "";
  deviceId = "";
  inboxHead = 0;
  state: ConnectionState = "connecting";
  reconnects = 0;
  storeResets = 0;
  /** Frames of each kind received, for diagnostics (e.g. `group_push`). */
  readonly received = new Map<string, number>();
  private cursor = new InboxCursor<Message>(0);
  private order = new ConversationOrder<Message>();
  private pulling = false;
  private storeId = "";
  private readonly store: CursorStore;
  private readonly cids = new CidAllocator();
  private readonly backoff = new Backoff();
  private readonly pending = new Map<number, Pending>();
  private waiting = new Map<number, Waiting>();
  private socket: WebSocket | null = null;
  private online = false;
  private closed = false;
  private nextId = 1;
  private ackedSent = 0;
  private ackTimer: ReturnType<typeof setTimeout> | null = null;
  private heartbeatTimer: ReturnType<typeof setInterval> | null = null;
  private syncing = false;
  private resync = false;
  private lastFrameAt = 0;
  private heartbeatMs = 15_000;
  private logins = 0;
  private firstLogin: Promise<void>;
  private resolveFirstLogin!: () => void;
  private rejectFirstLogin!: (error: Error) => void;

  constructor(private readonly options: ClientOptions) {
    this.store = options.store ?? new MemoryCursorStore();
    this.firstLogin = new Promise((resolve, reject) => {
      this.resolveFirstLogin = resolve;
      this.rejectFirstLogin = reject;
    });
  }

  /** Connect; resolves after the first login is accepted. */
  async start(): Promise<void> {
    const saved = await this.store.load();
    this.cursor = new InboxCursor<Message>(saved.have);
    this.storeId = saved.storeId;
    void this.connect();
    return this.firstLogin;
  }

  get have(): number {
    return this.cursor.have;
  }

  close(): void {
    this.closed = true;
    this.setState("closed");
    this.socket?.close();
  }

  /** Send a text; resolves with the server's ack once the message is durable. */
  send(conversationId: string, text: string, contentType = ""): Promise<SendAck> {
    const cid = this.cids.next();
    return new Promise((resolve, reject) => {
      const send = { conversation_id: conversationId, cid, text, content_type: contentType };
      this.pending.set(cid, { send, resolve, reject });
      if (this.online) this.transmit(cid);
    });
  }

  get pendingSends(): number {
    return this.pending.size;
  }

  /** A request frame (one body, e.g. `{history: {...}}`); resolves with the reply. */
  request(frame: Frame): Promise<Frame> {
    const socket = this.socket;
    if (!this.online || socket === null) return Promise.reject(new LinkClosed("not connected"));
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      this.waiting.set(id, { resolve, reject });
      socket.send(encodeFrame({ ...frame, id }));
    });
  }

  // -- the connection ---------------------------------------------------------

  private setState(state: ConnectionState, detail?: string): void {
    this.state = state;
    this.options.onState?.(state, detail);
  }

  private async endpoint(): Promise<string> {
    const base = this.options.url.replace(/\/$/, "");
    try {
      const reply = await fetch(`${base}/v1/dispatch?uid=${encodeURIComponent(this.userId)}`);
      const body = await reply.json() as { endpoints?: { ws?: string }[] };
      const ws = body.endpoints?.[0]?.ws;
      if (ws) return ws;
    } catch {
      // dispatch unreachable: try the gateway we were given
    }
    return base.replace(/^http/, "ws") + "/ws";
  }

  private async connect(): Promise<void> {
    if (this.closed) return;
    const url = await this.endpoint();
    const Socket = this.options.webSocket ?? WebSocket;
    const socket = new Socket(url);
    socket.binaryType = "arraybuffer";
    this.socket = socket;
    let upSince = 0;
    let reconnectDelayMs: number | null = null;
    let terminal: RequestError | null = null;
    const loginId = this.nextId++;
    socket.onopen = () => {
      // the token travels only in this frame: never in a URL
      socket.send(encodeFrame({ id: loginId, login: {
        protocol_version: 1, token: this.options.token, inbox_seq: this.cursor.have,
        store_id: this.storeId, client_name: this.options.clientName ?? "chatplane-js" } }));
    };
    socket.onmessage = (event: MessageEvent) => {
      if (socket !== this.socket) return;
      this.lastFrameAt = Date.now();
      const frame = decodeFrame(new Uint8Array(event.data as ArrayBuffer));
      const kind = frame.body ?? "";
      this.received.set(kind, (this.received.get(kind) ?? 0) + 1);
      if (frame.id === loginId && frame.body === "login_ack") {
        upSince = Date.now();
        this.loggedIn(frame.login_ack);
      } else if (frame.body === "error" && (frame.id === loginId || !frame.id)
                 && (frame.id === loginId || frame.error.fatal)) {
        // a refused login, or the server closing the connection (e.g.
        // SESSION_REPLACED: another connection of this device took over)
        const { code, message, retriable } = frame.error;
        if (TERMINAL.has(code)) terminal = new RequestError(code, message, retriable);
        socket.close();
      } else if (frame.body === "reconnect") {
        reconnectDelayMs = frame.reconnect.delay_ms;
        socket.close();
      } else {
        this.dispatchFrame(frame, socket);
      }
    };
    socket.onclose = () => {
      if (socket !== this.socket) return;
      this.lost();
      if (terminal !== null) {
        this.closed = true;
        this.setState("failed", terminal.message);
        this.rejectFirstLogin(terminal);
        for (const p of this.pending.values()) p.reject(terminal);
        this.pending.clear();
        return;
      }
      if (this.closed) return;
      if (upSince && Date.now() - upSince > 2000) this.backoff.reset();
      const delay = reconnectDelayMs !== null
        ? reconnectDelayMs * (1 + Math.random()) : this.backoff.nextDelayMs();
      this.setState("reconnecting");
      setTimeout(() => void this.connect(), delay);
    };
  }

  private loggedIn(ack: Frame): void {
    const resumed = resumeCursor(this.cursor.have, this.storeId, ack.store_id, ack.inbox_head);
    if (resumed.have !== this.cursor.have) {
      this.cursor = new InboxCursor<Message>(resumed.have);
      this.order = new ConversationOrder<Message>();
      this.storeResets += 1;
    }
    this.storeId = resumed.store;
    void this.store.save({ have: this.cursor.have, storeId: this.storeId });
    this.userId = ack.user_id;
    this.deviceId = ack.device_id;
    this.inboxHead = ack.inbox_head;
    this.ackedSent = Math.min(this.cursor.have, ack.inbox_head);
    this.heartbeatMs = Math.max(ack.heartbeat_interval_ms || 15_000, 500);
    this.logins += 1;
    if (this.logins > 1) this.reconnects += 1;
    this.online = true;
    this.setState("online");
    this.resolveFirstLogin();
    this.heartbeatTimer = setInterval(() => this.heartbeat(), this.heartbeatMs);
    for (const cid of [...this.pending.keys()].sort((a, b) => a - b)) this.transmit(cid);
    this.startSync();
  }

  private lost(): void {
    this.online = false;
    if (this.heartbeatTimer !== null) clearInterval(this.heartbeatTimer);
    if (this.ackTimer !== null) clearTimeout(this.ackTimer);
    this.heartbeatTimer = this.ackTimer = null;
    const waiting = this.waiting;
    this.waiting = new Map();
    for (const w of waiting.values()) w.reject(new LinkClosed("connection lost"));
    this.syncing = false;
  }

  private heartbeat(): void {
    if (Date.now() - this.lastFrameAt > 3 * this.heartbeatMs) {
      this.socket?.close(); // the server is silent: reconnect
      return;
    }
    this.socket?.send(encodeFrame({ heartbeat: { client_time_ms: Date.now() } }));
  }

  private dispatchFrame(frame: Frame, socket: WebSocket): void {
    const kind = frame.body;
    if (kind === "push") {
      this.accept(frame.push.entries);
    } else if (kind === "group_push") {
      const push = frame.group_push;
      void groupPushMessages(push).then((messages) =>
        this.acceptGroup(push.conversation_id, push.head_seq, messages, 0));
    } else if (kind === "sync_hint") {
      this.startSync();
    } else if (frame.id && this.waiting.has(frame.id)) {
      const w = this.waiting.get(frame.id)!;
      this.waiting.delete(frame.id);
      if (kind === "error") {
        w.reject(new RequestError(frame.error.code, frame.error.message, frame.error.retriable));
      } else {
        w.resolve(frame);
      }
      if (kind === "error" && frame.error.fatal) socket.close();
    } else if (kind === "error" && frame.error.fatal) {
      socket.close();
    }
  }

  private transmit(cid: number): void {
    const entry = this.pending.get(cid);
    if (entry === undefined) return;
    this.request({ send: entry.send }).then((reply) => {
      const ack = reply.send_ack;
      this.pending.delete(cid);
      entry.resolve({ conversationId: ack.conversation_id, seq: ack.seq,
                      messageId: ack.message_id, cid: ack.cid, duplicate: ack.duplicate });
    }, (error: Error) => {
      if (error instanceof RequestError && !error.retriable) {
        this.pending.delete(cid);
        entry.reject(error);
      } else if (error instanceof RequestError) {
        // retriable: same cid, a little later
        setTimeout(() => { if (this.online) this.transmit(cid); }, 50 + Math.random() * 200);
      }
      // LinkClosed: resent after the next login, same cid
    });
  }

  private accept(entries: Frame[]): void {
    for (const entry of entries) {
      for (const message of this.cursor.accept(entry.inbox_seq,
                                               toMessage(entry.message, entry.inbox_seq))) {
        this.emit(this.order.offer(message.conversationId, message.seq, message, true));
      }
    }
    if (this.cursor.have > this.ackedSent && this.ackTimer === null) {
      // acks are cumulative: one per ACK_DELAY_MS covers every push since
      this.ackTimer = setTimeout(() => this.sendAck(), ACK_DELAY_MS);
    }
    if (this.cursor.gap) this.startSync();
  }

  private emit(messages: Message[]): void {
    for (const message of messages) this.options.onMessage?.(message);
    if (this.order.wants.size > 0) this.startPulls();
  }

  /** Large-group messages (a GroupPush or a sync delta: not from the inbox). */
  private acceptGroup(conversationId: string, headSeq: number, messages: Frame[],
                      joinedSeq: number): void {
    if (joinedSeq) this.emit(this.order.start(conversationId, joinedSeq - 1));
    for (const m of messages) {
      this.emit(this.order.offer(conversationId, m.seq, toMessage(m), false));
    }
    this.order.sawHead(conversationId, headSeq);
    if (this.order.wants.size > 0) this.startPulls();
  }

  private startPulls(): void {
    if (this.pulling) return;
    this.pulling = true;
    void this.pull().catch(() => undefined).finally(() => { this.pulling = false; });
  }

  /** Fill per-conversation gaps from history, one conversation at a time. */
  private async pull(): Promise<void> {
    while (this.order.wants.size > 0) {
      const [conversationId, after] = this.order.wants.entries().next().value as [string, number];
      const reply = await this.request({ history: { conversation_id: conversationId,
                                                    after_seq: after, limit: 200 } });
      const pulled = (reply.history_response.messages as Frame[])
        .map((m): [number, Message] => [m.seq, toMessage(m)]);
      this.emit(this.order.pulled(conversationId, pulled));
    }
  }

  private sendAck(): void {
    this.ackTimer = null;
    const have = this.cursor.have;
    if (!this.online || have <= this.ackedSent) return;
    this.ackedSent = have;
    this.socket?.send(encodeFrame({ push_ack: { inbox_seq: have } }));
    void this.store.save({ have, storeId: this.storeId });
  }

  private startSync(): void {
    if (this.syncing) {
      this.resync = true;
      return;
    }
    this.syncing = true;
    void this.sync().catch(() => undefined).finally(() => { this.syncing = false; });
  }

  /** Pull the inbox after the cursor until nothing is missing. */
  private async sync(): Promise<void> {
    for (;;) {
      this.resync = false;
      const conversations = [...this.order.large].filter((c) => this.order.last.has(c))
        .map((c) => ({ conversation_id: c, seq: this.order.last.get(c) }));
      const reply = await this.request({ sync: { after_inbox_seq: this.cursor.have,
                                                 limit: SYNC_PAGE, conversations } });
      const response = reply.sync_response;
      this.inboxHead = Math.max(this.inboxHead, response.inbox_head);
      this.accept(response.entries);
      for (const group of response.groups as Frame[]) {
        this.acceptGroup(group.conversation_id, group.head_seq, group.messages, group.joined_seq);
      }
      if (!response.has_more && !this.resync && !this.cursor.gap) return;
      if (response.entries.length === 0) await new Promise((r) => setTimeout(r, 50));
    }
  }
}
