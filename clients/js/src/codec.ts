// Frames on the wire: protobuf chatplane.v1.Frame (proto/chatplane/v1/
// frames.proto, compiled to static code at build time). One frame per binary
// WebSocket message. Decoded frames are plain objects with numbers for 64-bit
// fields (cids from the clock in microseconds stay below 2^53) and `body`
// naming the oneof that is set.
import { chatplane } from "./frames_pb.js";

const FrameType = chatplane.v1.Frame;
const EventType = chatplane.v1.Event;
const GroupEventType = chatplane.v1.GroupEvent;
const MessageBatchType = chatplane.v1.MessageBatch;

// A frame as a plain object: `id`, `body` (the oneof's name) and that body.
// eslint-disable-next-line @typescript-eslint/no-explicit-any
export type Frame = { id?: number; body?: string; [kind: string]: any };

const DECODE = { longs: Number, enums: String, defaults: true, oneofs: true };

export function encodeFrame(frame: Frame): Uint8Array {
  const { body: _body, ...fields } = frame;
  return FrameType.encode(FrameType.fromObject(fields)).finish();
}

export function decodeFrame(data: Uint8Array): Frame {
  return FrameType.toObject(FrameType.decode(data), DECODE) as Frame;
}

/** The payload of an `event/*` message (Event) as a plain object. */
export function decodeEvent(payload: Uint8Array): Frame {
  return EventType.toObject(EventType.decode(payload), { ...DECODE, oneofs: true }) as Frame;
}

/** The payload of a `system/group` message (GroupEvent). */
export function decodeGroupEvent(payload: Uint8Array): Frame {
  return GroupEventType.toObject(GroupEventType.decode(payload), DECODE) as Frame;
}

/** A GroupPush's compressed batch, once inflated. */
export function decodeMessageBatch(data: Uint8Array): Frame {
  return MessageBatchType.toObject(MessageBatchType.decode(data), DECODE) as Frame;
}
