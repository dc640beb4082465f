// Cids, backoff, the cursor stores and the frame codec (byte-level, no sockets).
import assert from "node:assert/strict";
import { test } from "node:test";
import { Backoff, CidAllocator, decodeFrame, encodeFrame, MemoryCursorStore }
  from "../dist/chatplane.js";

test("cids strictly increase even when the clock stands still or goes back", () => {
  let now = 1_000;
  const cids = new CidAllocator(undefined, () => now);
  const a = cids.next();
  now = 500;
  const b = cids.next();
  now = 5_000;
  const c = cids.next();
  assert.ok(a < b && b < c, `${a} ${b} ${c}`);
  assert.equal(c, 5_000);
});

test("backoff grows with full jitter up to its ceiling and starts over", () => {
  const backoff = new Backoff(100, 1_000, () => 1);
  assert.deepEqual([1, 2, 3, 4, 5].map(() => backoff.nextDelayMs()), [200, 400, 800, 1000, 1000]);
  backoff.reset();
  assert.equal(backoff.nextDelayMs(), 200);
});

test("the memory store keeps the cursor with its store id", async () => {
  const store = new MemoryCursorStore();
  assert.deepEqual(await store.load(), { have: 0, storeId: "" });
  await store.save({ have: 7, storeId: "s1" });
  assert.deepEqual(await store.load(), { have: 7, storeId: "s1" });
});

test("frames round-trip and match the Python encoding byte for byte", () => {
  const bytes = encodeFrame({ id: 1, login: { protocol_version: 1, token: "t", inbox_seq: 5 } });
  // pb.Frame(id=1, login=pb.Login(protocol_version=1, token="t", inbox_seq=5)).SerializeToString()
  assert.deepEqual([...bytes], [8, 1, 82, 7, 8, 1, 18, 1, 116, 24, 5]);
  const frame = decodeFrame(bytes);
  assert.equal(frame.body, "login");
  assert.equal(frame.login.inbox_seq, 5);
  const cid = 1_765_000_000_000_000;  // microseconds: above 2^32, below 2^53
  const send = decodeFrame(encodeFrame({ id: 2, send: { conversation_id: "d:a:b", cid, text: "hé" } }));
  assert.equal(send.send.cid, cid);
  assert.equal(send.send.text, "hé");
});

test("a compressed GroupPush inflates to its messages (zlib, as the server writes it)", async () => {
  const { deflateSync } = await import("node:zlib");
  const { groupPushMessages } = await import("../dist/chatplane.js");
  // MessageBatch{messages: [Message{conversation_id: "g:1", seq: 1..3}]}, encoded by hand
  const message = (seq) => [10, 7, 10, 3, ...Buffer.from("g:1"), 16, seq];
  const batch = Uint8Array.from([1, 2, 3].flatMap(message));
  const messages = await groupPushMessages({ compressed: deflateSync(batch, { level: 1 }) });
  assert.deepEqual(messages.map((m) => [m.conversation_id, m.seq]), [["g:1", 1], ["g:1", 2], ["g:1", 3]]);
  const listed = await groupPushMessages({ compressed: new Uint8Array(), messages: [{ seq: 4 }] });
  assert.deepEqual(listed, [{ seq: 4 }]);
});
