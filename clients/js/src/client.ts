// The browser/node client: only I/O over the sans-I/O core (core.ts): a
// WebSocket to the gateway, timers, promises, the cursor store, and the sync
// and history pulls the core asks for. The core holds the protocol and the
// delivery rules (login and resume, request ids, pending sends by cid, acks,
// heartbeats, backoff).
import type { Frame } from "./codec.js";
import { ClientCore, TERMINAL, type CoreEvent } from "./core.js";
import { groupPushMessages, LinkClosed, RequestError, toMessage, type ConnectionState,
  type Message, type SendAck } from "./messages.js";
import { MemoryCursorStore, type CursorStore } from "./store.js";

export interface ClientOptions {
  /** Base URL of a gateway or of `chatplane up` (http[s]://host:port), or one per
   * region: a connection that fails before its login is accepted moves to the next
   * (docs/client.md, "Failover across regions"). */
  url: string | string[];
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

const SYNC_PAGE = 500;

interface Waiting {
  resolve: (frame: Frame) => void;
  reject: (error: Error) => void;
}

export class ChatClient {
  state: ConnectionState = "connecting";
  reconnects = 0;
  /** Frames of each kind received, for diagnostics (e.g. `group_push`). */
  readonly received = new Map<string, number>();
  private core: ClientCore;
  private readonly store: CursorStore;
  private readonly pending = new Map<number, { resolve: (a: SendAck) => void;
                                               reject: (e: Error) => void }>();
  private waiting = new Map<number, Waiting>();
  private socket: WebSocket | null = null;
  private urlIndex = 0; // the entry URL in use (options.url, one per region)
  private closed = false;
  private timer: ReturnType<typeof setTimeout> | null = null;
  private timerAt = 0;
  private pulling = false;
  private syncing = false;
  private resync = false;
  private logins = 0;
  private savedHave = -1;
  private firstLogin: Promise<void>;
  private resolveFirstLogin!: () => void;
  private rejectFirstLogin!: (error: Error) => void;

  constructor(private readonly options: ClientOptions) {
    this.store = options.store ?? new MemoryCursorStore();
    this.core = new ClientCore({ clientName: options.clientName });
    this.firstLogin = new Promise((resolve, reject) => {
      this.resolveFirstLogin = resolve;
      this.rejectFirstLogin = reject;
    });
  }

  /** Connect; resolves after the first login is accepted. */
  async start(): Promise<void> {
    const saved = await this.store.load();
    this.core = new ClientCore({ have: saved.have, storeId: saved.storeId,
                                 clientName: this.options.clientName });
    void this.connect();
    return this.firstLogin;
  }

  get have(): number {
    return this.core.cursor.have;
  }

  get userId(): string {
    return this.core.userId;
  }

  get deviceId(): string {
    return this.core.deviceId;
  }

  get inboxHead(): number {
    return this.core.inboxHead;
  }

  get storeResets(): number {
    return this.core.storeResets;
  }

  close(): void {
    this.closed = true;
    this.setState("closed");
    this.socket?.close();
  }

  /** Send a text; resolves with the server's ack once the message is durable. */
  send(conversationId: string, text: string, contentType = ""): Promise<SendAck> {
    return new Promise((resolve, reject) => {
      const cid = this.core.send(conversationId, text, performance.now(), contentType);
      this.pending.set(cid, { resolve, reject });
      this.process();
    });
  }

  get pendingSends(): number {
    return this.pending.size;
  }

  /** A request frame (one body, e.g. `{history: {...}}`); resolves with the reply. */
  request(frame: Frame): Promise<Frame> {
    if (this.core.phase !== "active" || this.socket === null) {
      return Promise.reject(new LinkClosed("not connected"));
    }
    return new Promise((resolve, reject) => {
      this.waiting.set(this.core.request(frame), { resolve, reject });
      this.process();
    });
  }

  // -- the core's output --------------------------------------------------------

  /** Send what the core queued, act on its events, arm the timer. */
  private process(): void {
    const socket = this.socket;
    for (const data of this.core.dataToSend()) {
      if (socket !== null && socket.readyState === 1) socket.send(data);
    }
    for (const event of this.core.eventsReceived()) this.handle(event);
    this.arm();
  }

  private handle(event: CoreEvent): void {
    switch (event.type) {
      case "logged_in":
        this.logins += 1;
        if (this.logins > 1) this.reconnects += 1;
        this.saveCursor();
        this.setState("online");
        this.resolveFirstLogin();
        break;
      case "delivered":
        for (const message of event.messages) this.options.onMessage?.(message);
        break;
      case "reply": {
        const w = this.waiting.get(event.requestId);
        this.waiting.delete(event.requestId);
        if (event.error !== null) w?.reject(event.error);
        else w?.resolve(event.frame);
        break;
      }
      case "send_done": {
        const p = this.pending.get(event.cid);
        this.pending.delete(event.cid);
        if (event.error !== null) p?.reject(event.error);
        else if (event.ack !== null) p?.resolve(event.ack);
        break;
      }
      case "sync":
        this.startSync();
        break;
      case "pull":
        this.startPulls();
        break;
      case "inflate": {
        const push = event.push;
        void groupPushMessages(push).then((messages) => {
          this.core.acceptGroup(push.conversation_id, push.head_seq, messages, 0);
          this.process();
        });
        break;
      }
      case "ended":
        if (event.error !== null && TERMINAL.has(event.error.code)) this.fail(event.error);
        this.socket?.close();
        break;
    }
  }

  private arm(): void {
    const due = this.core.nextDue();
    if (due === null || (this.timer !== null && this.timerAt <= due)) return;
    if (this.timer !== null) clearTimeout(this.timer);
    this.timerAt = due;
    this.timer = setTimeout(() => {
      this.timer = null;
      this.core.tick(performance.now());
      this.process();
      this.saveCursor();
    }, Math.max(0, due - performance.now()));
  }

  private saveCursor(): void {
    if (this.core.cursor.have === this.savedHave) return;
    this.savedHave = this.core.cursor.have;
    void this.store.save({ have: this.core.cursor.have, storeId: this.core.storeId });
  }

  private fail(error: RequestError): void {
    this.closed = true;
    this.setState("failed", error.message);
    this.rejectFirstLogin(error);
    for (const p of this.pending.values()) p.reject(error);
    this.pending.clear();
  }

  // -- the connection ---------------------------------------------------------

  private setState(state: ConnectionState, detail?: string): void {
    this.state = state;
    this.options.onState?.(state, detail);
  }

  /** The entry URL in use (the last that worked, or the next to try). */
  get url(): string {
    const urls = typeof this.options.url === "string" ? [this.options.url] : this.options.url;
    return urls[this.urlIndex % urls.length];
  }

  private nextUrl(): void {
    const count = typeof this.options.url === "string" ? 1 : this.options.url.length;
    this.urlIndex = (this.urlIndex + 1) % count;
  }

  private async endpoint(): Promise<string> {
    const base = this.url.replace(/\/$/, "");
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
    let loggedIn = false;
    socket.onopen = () => {
      if (socket !== this.socket) return;
      this.core.login(this.options.token, performance.now());
      this.process();
    };
    socket.onmessage = (event: MessageEvent) => {
      if (socket !== this.socket) return;
      const data = new Uint8Array(event.data as ArrayBuffer);
      this.core.receive(data, performance.now());
      loggedIn ||= this.core.phase === "active";
      const kind = this.core.lastKind;
      this.received.set(kind, (this.received.get(kind) ?? 0) + 1);
      this.process();
    };
    socket.onclose = () => {
      if (socket !== this.socket) return;
      this.lost();
      if (this.closed) return;
      if (!loggedIn) this.nextUrl(); // that region did not take us: the next URL
      const delay = this.core.connectionLost(performance.now());
      this.setState("reconnecting");
      setTimeout(() => void this.connect(), delay);
    };
  }

  private lost(): void {
    if (this.timer !== null) clearTimeout(this.timer);
    this.timer = null;
    const waiting = this.waiting;
    this.waiting = new Map();
    for (const w of waiting.values()) w.reject(new LinkClosed("connection lost"));
    this.syncing = false;
  }

  // -- sync and pulls -----------------------------------------------------------

  private startPulls(): void {
    if (this.pulling) return;
    this.pulling = true;
    void this.pull().catch(() => undefined).finally(() => { this.pulling = false; });
  }

  /** Fill per-conversation gaps from history, one conversation at a time. */
  private async pull(): Promise<void> {
    while (this.core.order.wants.size > 0) {
      const [conversationId, after] =
        this.core.order.wants.entries().next().value as [string, number];
      const reply = await this.request({ history: { conversation_id: conversationId,
                                                    after_seq: after, limit: 200 } });
      this.core.acceptPulled(conversationId, reply.history_response.messages as Frame[]);
      this.process();
    }
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
      const order = this.core.order;
      const conversations = [...order.large].filter((c) => order.last.has(c))
        .map((c) => ({ conversation_id: c, seq: order.last.get(c) }));
      const reply = await this.request({ sync: { after_inbox_seq: this.core.cursor.have,
                                                 limit: SYNC_PAGE, conversations } });
      const response = reply.sync_response;
      this.core.acceptSync(response, performance.now());
      this.process();
      if (!response.has_more && !this.resync && !this.core.cursor.gap) return;
      if (response.entries.length === 0) await new Promise((r) => setTimeout(r, 50));
    }
  }
}
