// Several tabs of one device behaving as one: the tab holding the Web Lock
// named after the device is the leader and runs the only ChatClient (one
// connection, one cursor in IndexedDB); the others are followers that get its
// messages and state over a BroadcastChannel and send their requests through
// it. When the leader's tab closes, its lock is released and a follower takes
// over, resuming from the shared cursor. Without Web Locks or BroadcastChannel
// every tab simply leads.
import { ChatClient, LinkClosed, RequestError, type ClientOptions, type ConnectionState,
  type Message, type SendAck } from "./client.js";
import type { Frame } from "./codec.js";

type Note =
  | { type: "hello" }
  | { type: "state"; state: ConnectionState; userId: string; deviceId: string; detail?: string }
  | { type: "msg"; message: Message }
  | { type: "req"; id: string; frame: Frame }
  | { type: "send"; id: string; conversationId: string; text: string }
  | { type: "res"; id: string; frame?: Frame; ack?: SendAck;
      error?: { code: number; message: string; retriable: boolean } };

const FOLLOWER_TIMEOUT_MS = 15_000;

export class TabClient {
  userId = "";
  deviceId = "";
  state: ConnectionState = "connecting";
  leader: ChatClient | null = null;
  private channel: BroadcastChannel | null = null;
  private waiting = new Map<string, { resolve: (n: Note) => void; reject: (e: Error) => void }>();
  private releaseLock: (() => void) | null = null;
  private seenInboxSeq = 0; // the highest entry the leading tab handed us
  private started!: Promise<void>;
  private resolveStarted!: () => void;
  private rejectStarted!: (e: Error) => void;

  constructor(private readonly options: ClientOptions, private readonly name: string) {
    this.started = new Promise((resolve, reject) => {
      this.resolveStarted = resolve;
      this.rejectStarted = reject;
    });
  }

  get isLeader(): boolean {
    return this.leader !== null;
  }

  /** Resolves once this tab is online, as leader or through one. */
  start(): Promise<void> {
    const locks = typeof navigator !== "undefined" ? navigator.locks : undefined;
    if (typeof BroadcastChannel === "undefined" || locks === undefined) {
      void this.lead();
      return this.started;
    }
    this.channel = new BroadcastChannel(`chatplane:${this.name}`);
    this.channel.onmessage = (event: MessageEvent<Note>) => this.onNote(event.data);
    void locks.request(`chatplane:${this.name}`, () => new Promise<void>((release) => {
      this.releaseLock = release;
      void this.lead();
    }));
    this.channel.postMessage({ type: "hello" } satisfies Note);
    return this.started;
  }

  close(): void {
    this.leader?.close();
    this.channel?.close();
    this.releaseLock?.();
  }

  send(conversationId: string, text: string): Promise<SendAck> {
    if (this.leader) return this.leader.send(conversationId, text);
    return this.ask({ type: "send", id: newId(), conversationId, text }).then((n) => {
      if (n.type !== "res" || !n.ack) throw new LinkClosed("no ack");
      return n.ack;
    });
  }

  request(frame: Frame): Promise<Frame> {
    if (this.leader) return this.leader.request(frame);
    return this.ask({ type: "req", id: newId(), frame }).then((n) => {
      if (n.type !== "res" || !n.frame) throw new LinkClosed("no reply");
      return n.frame;
    });
  }

  private async lead(): Promise<void> {
    // What the old leader delivered to us was delivered to the device: do not
    // deliver it again from a cursor it had not saved yet.
    const store = this.options.store;
    if (store !== undefined && this.seenInboxSeq > 0) {
      const saved = await store.load();
      if (this.seenInboxSeq > saved.have) {
        await store.save({ have: this.seenInboxSeq, storeId: saved.storeId });
      }
    }
    const client = new ChatClient({
      ...this.options,
      onMessage: (message) => {
        this.options.onMessage?.(message);
        this.post({ type: "msg", message });
      },
      onState: (state, detail) => {
        this.userId = client.userId;
        this.deviceId = client.deviceId;
        this.setState(state, detail);
        this.post({ type: "state", state, userId: client.userId, deviceId: client.deviceId,
                    detail });
      },
    });
    this.leader = client;
    client.start().then(() => this.resolveStarted(), (error: Error) => this.rejectStarted(error));
  }

  private setState(state: ConnectionState, detail?: string): void {
    this.state = state;
    this.options.onState?.(state, detail);
    if (state === "online") this.resolveStarted();
  }

  private post(note: Note): void {
    this.channel?.postMessage(note);
  }

  private ask(note: Note & { id: string }): Promise<Note> {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.waiting.delete(note.id);
        reject(new LinkClosed("the leading tab did not answer"));
      }, FOLLOWER_TIMEOUT_MS);
      this.waiting.set(note.id, {
        resolve: (n) => { clearTimeout(timer); resolve(n); },
        reject: (e) => { clearTimeout(timer); reject(e); },
      });
      this.post(note);
    });
  }

  private onNote(note: Note): void {
    const leader = this.leader;
    if (leader !== null) { // serve the followers
      if (note.type === "hello") {
        this.post({ type: "state", state: leader.state, userId: leader.userId,
                    deviceId: leader.deviceId });
      } else if (note.type === "req") {
        leader.request(note.frame).then((frame) => this.post({ type: "res", id: note.id, frame }),
          (error: Error) => this.post({ type: "res", id: note.id, error: describe(error) }));
      } else if (note.type === "send") {
        leader.send(note.conversationId, note.text).then(
          (ack) => this.post({ type: "res", id: note.id, ack }),
          (error: Error) => this.post({ type: "res", id: note.id, error: describe(error) }));
      }
      return;
    }
    if (note.type === "state") {
      this.userId = note.userId;
      this.deviceId = note.deviceId;
      this.setState(note.state, note.detail);
    } else if (note.type === "msg") {
      this.seenInboxSeq = Math.max(this.seenInboxSeq, note.message.inboxSeq);
      this.options.onMessage?.(note.message);
    } else if (note.type === "res") {
      const w = this.waiting.get(note.id);
      if (w === undefined) return;
      this.waiting.delete(note.id);
      if (note.error) w.reject(new RequestError(note.error.code, note.error.message,
                                                note.error.retriable));
      else w.resolve(note);
    }
  }
}

function newId(): string {
  return `${Date.now().toString(36)}-${Math.random().toString(36).slice(2)}`;
}

function describe(error: Error): { code: number; message: string; retriable: boolean } {
  return error instanceof RequestError
    ? { code: error.code, message: error.message, retriable: error.retriable }
    : { code: 11, message: error.message, retriable: true };
}
