// The JS SDK's delivery rules against the shared vectors (tests/vectors/),
// the same files the Python core passes (tests/delivery/test_vectors.py).
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { test } from "node:test";
import { InboxCursor, resumeCursor } from "../dist/chatplane.js";

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
