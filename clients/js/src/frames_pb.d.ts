// Types for the generated src/frames_pb.js (scripts/proto.mjs): the SDK uses
// it through codec.ts only, on plain objects.
interface StaticType {
  fromObject(object: Record<string, unknown>): unknown;
  toObject(message: unknown, options: Record<string, unknown>): Record<string, unknown>;
  encode(message: unknown): { finish(): Uint8Array };
  decode(data: Uint8Array): unknown;
}
export const chatplane: { v1: Record<string, StaticType> };
