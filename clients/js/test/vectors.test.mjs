// The JS SDK's delivery rules against the shared vectors (tests/vectors/),
// the same files the Python core passes (tests/delivery/test_vectors.py).
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { test } from "node:test";
import { ClientCore, ConversationOrder, decodeFrame, encodeFrame, InboxCursor, resumeCursor }
  from "../dist/chatplane.js";

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

// `expected` is a subset of `actual`; scalars compare as text.
function matches(expected, actual) {
  if (expected !== null && typeof expected === "object") {
    return actual !== null && typeof actual === "object"
      && Object.entries(expected).every(([k, v]) => k in actual && matches(v, actual[k]));
  }
  return String(expected) === String(actual);
}

function describe(event, cids) {
  switch (event.type) {
    case "logged_in": return event.storeReset ? "logged_in:reset" : "logged_in";
    case "sync": return "sync";
    case "pull": return "pull";
    case "delivered": return `delivered:${event.messages.map((m) => m.seq).join(",")}`;
    case "reply": return event.error === null ? `reply:${event.requestId}`
      : `reply:${event.requestId}:error:${event.error.code}:${event.error.retriable}`;
    case "send_done": return event.error === null
      ? `send_done:${cids.indexOf(event.cid)}:ack:${event.ack.seq}`
      : `send_done:${cids.indexOf(event.cid)}:error:${event.error.code}`;
    case "ended": return event.error === null ? "ended" : `ended:${event.error.code}`;
    default: return event.type;
  }
}

// The session vectors are in seconds; the JS core counts milliseconds.
for (const c of vectors("session.json")) {
  test(`client core: ${c.name}`, () => {
    const core = new ClientCore({ have: c.have, storeId: c.store, random: () => 0.5 });
    const cids = [];
    for (const step of c.steps) {
      const now = step.now * 1000;
      if (step.op === "login") core.login("tok", now);
      else if (step.op === "in") core.receive(encodeFrame(step.frame), now);
      else if (step.op === "send") cids.push(core.send("d:a:b", step.text, now));
      else if (step.op === "request") core.request(step.frame);
      else if (step.op === "tick") core.tick(now);
      else {
        assert.equal(step.op, "lost");
        const delay = core.connectionLost(now);
        assert.ok(Math.abs(delay - step.delay * 1000) < 1e-6, `${delay} ${JSON.stringify(step)}`);
      }
      const out = core.dataToSend().map((d) => decodeFrame(d));
      assert.equal(out.length, step.out.length, JSON.stringify({ step, out }));
      step.out.forEach((e, i) => assert.ok(matches(e, out[i]), JSON.stringify({ step, got: out[i] })));
      assert.deepEqual(core.eventsReceived().map((e) => describe(e, cids)), step.events,
                       JSON.stringify(step));
    }
  });
}

test("a move to another region keeps what was delivered of chats (Python: test_a_move_to_another_region_keeps_what_was_delivered_of_chats)", () => {
  for (const [region, kept] of [["us", true], ["eu", false]]) {
    const core = new ClientCore({ random: () => 0.5 });
    const login = (store, head) => {
      core.login("tok", 0);
      const [frame] = core.dataToSend().map(decodeFrame);
      core.receive(encodeFrame({ id: frame.id, login_ack: {
        inbox_head: head, store_id: store, region: store === "s1" ? "eu" : region,
        heartbeat_interval_ms: 1000 } }), 0);
      core.eventsReceived();
    };
    const entry = (inbox, seq) => ({ inbox_seq: inbox, message: {
      conversation_id: "d:a:b", seq, message_id: `m${seq}`, text: `t${seq}` } });
    const delivered = () => core.eventsReceived().filter((e) => e.type === "delivered")
      .flatMap((e) => e.messages.map((m) => m.seq));
    login("s1", 0);
    core.acceptSync({ entries: [entry(1, 1), entry(2, 2)], inbox_head: 2, groups: [] }, 0);
    assert.deepEqual(delivered(), [1, 2]);
    core.connectionLost(1);
    login("s2", 3);  // failover: another store, resync from 0
    assert.equal(core.cursor.have, 0);
    core.acceptSync({ entries: [entry(1, 1), entry(2, 2), entry(3, 3)], inbox_head: 3, groups: [] }, 0);
    assert.deepEqual(delivered(), kept ? [3] : [1, 2, 3], region);
  }
});
