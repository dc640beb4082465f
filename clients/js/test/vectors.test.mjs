// The JS SDK's delivery rules against the shared vectors (tests/vectors/),
// the same files the Python core passes (tests/delivery/test_vectors.py).
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { test } from "node:test";
import { ConversationOrder, InboxCursor, resumeCursor } from "../dist/chatplane.js";

const vectors = (name) =>
  JSON.parse(readFileSync(new URL(`../../../tests/vectors/${name}`, import.meta.url), "utf8")).cases;

for (const c of vectors("inbox_cursor.json")) {
  test(`inbox cursor: ${c.name}`, () => {
    const cursor = new InboxCursor(c.have);
    for (const step of c.steps) {
      assert.deepEqual(cursor.accept(step.accept, step.accept), step.delivered, JSON.stringify(step));
      assert.equal(cursor.have, step.have);
      assert.equal(cursor.gap, step.gap);
    }
    if (c.duplicates !== undefined) assert.equal(cursor.duplicates, c.duplicates);
  });
}

for (const c of vectors("resume.json")) {
  test(`resume: ${c.name}`, () => {
    const { have, store } = resumeCursor(c.have, c.held_store, c.ack_store, c.inbox_head);
    assert.equal(have, c.have_after);
    assert.equal(have === 0 && c.have > 0, c.resync);
    assert.equal(store, c.store);
  });
}

for (const c of vectors("conversation_order.json")) {
  test(`conversation order: ${c.name}`, () => {
    const order = new ConversationOrder();
    for (const step of c.steps) {
      let out;
      if (step.op === "offer") out = order.offer(step.conv, step.seq, step.seq, step.inbox);
      else if (step.op === "start") out = order.start(step.conv, step.before);
      else if (step.op === "head") { order.sawHead(step.conv, step.head); out = []; }
      else out = order.pulled(step.conv, step.seqs.map((s) => [s, s]));
      assert.deepEqual(out, step.delivered, JSON.stringify(step));
      assert.deepEqual(Object.fromEntries(order.wants), step.wants, JSON.stringify(step));
    }
    if (c.duplicates !== undefined) assert.equal(order.duplicates, c.duplicates);
  });
}
