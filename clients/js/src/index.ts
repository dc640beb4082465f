// chatplane JavaScript SDK: the client, its delivery rules and cursor stores.
export { ChatClient, groupPushMessages, LinkClosed, RequestError, toMessage } from "./client.js";
export type { ClientOptions, ConnectionState, Message, SendAck } from "./client.js";
export { decodeEvent, decodeFrame, decodeGroupEvent, encodeFrame } from "./codec.js";
export type { Frame } from "./codec.js";
export { ACK_DELAY_MS, ClientCore, TERMINAL } from "./core.js";
export type { CoreEvent, CoreOptions, Phase } from "./core.js";
export { Backoff, CidAllocator, ConversationOrder, InboxCursor, resumeCursor, SendQueue }
  from "./delivery.js";
export { defaultCursorStore, IndexedDbCursorStore, MemoryCursorStore } from "./store.js";
export type { Cursor, CursorStore } from "./store.js";
export { TabClient } from "./tabs.js";
