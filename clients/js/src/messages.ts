// What the SDK hands to apps: messages, send acks, connection states and
// errors, and the conversions from wire frames (GroupPush batches included).
import { decodeMessageBatch, type Frame } from "./codec.js";

export interface Message {
  conversationId: string;
  seq: number;
  inboxSeq: number;
  messageId: string;
  sender: string;
  senderDevice: string;
  cid: number;
  text: string;
  payload: Uint8Array;
  contentType: string;
  sentAtMs: number;
}

export interface SendAck {
  conversationId: string;
  seq: number;
  messageId: string;
  cid: number;
  duplicate: boolean;
}

export type ConnectionState = "connecting" | "online" | "reconnecting" | "closed" | "failed";

export class RequestError extends Error {
  constructor(readonly code: number, message: string, readonly retriable: boolean) {
    super(message);
  }
}

export class LinkClosed extends Error {}

export function toMessage(m: Frame, inboxSeq = 0): Message {
  return {
    conversationId: m.conversation_id, seq: m.seq, inboxSeq, messageId: m.message_id,
    sender: m.sender, senderDevice: m.sender_device, cid: m.cid, text: m.text,
    payload: m.payload instanceof Uint8Array ? m.payload : new Uint8Array(m.payload ?? []),
    contentType: m.content_type || "text", sentAtMs: m.sent_at_ms,
  };
}

/** A GroupPush's messages: listed, or a zlib-compressed MessageBatch. */
export async function groupPushMessages(push: Frame): Promise<Frame[]> {
  const compressed = push.compressed as Uint8Array | undefined;
  if (!compressed || compressed.length === 0) return push.messages as Frame[];
  const stream = new Blob([new Uint8Array(compressed)]).stream().pipeThrough(new DecompressionStream("deflate"));
  const batch = new Uint8Array(await new Response(stream).arrayBuffer());
  return decodeMessageBatch(batch).messages as Frame[];
}
