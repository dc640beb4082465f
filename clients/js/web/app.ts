// The chatplane web app: sign in with a token (kept in sessionStorage, sent
// only in the Login frame), the conversation list with last message and
// unread counts, 1:1 and group chats, history loaded as you scroll up, read
// receipts, and a visible connection state. Everything comes through the SDK,
// so the page shows each message once and in inbox order.
import { TabClient, decodeEvent, decodeGroupEvent, defaultCursorStore, type ConnectionState,
  type Frame, type Message } from "../src/index.js";
import { describe, renderList, renderMessages, seqsOf, showChat, type Conversation }
  from "./render.js";
import { refusal, SocialPanels } from "./social.js";
import { VirtualList, type Anchor } from "./virtual.js";

const TOKEN_KEY = "chatplane.token";
const PAGE = 50;
const $ = <T extends HTMLElement>(id: string): T => document.getElementById(id) as T;
// the open conversation, virtualized: only the rows in view are in the DOM
const messageList = new VirtualList($("messages"));

let client: TabClient | null = null;
const social = new SocialPanels({
  client: () => client,
  openDirect: async (peer) => {
    const reply = await client!.request({ open_direct: { peer_user_id: peer } });
    const c = conversation(reply.open_direct_ack.conversation_id);
    c.name = peer;
    open(c.id);
  },
  openGroup: (id, name) => {
    const c = conversation(id);
    c.kind = "group";
    if (name) c.name = name;
    open(id);
  },
  activeGroup: () => (active && conversations.get(active)?.kind === "group" ? active : null),
});
const conversations = new Map<string, Conversation>();
let active: string | null = null;
let loadingOlder = false;
const pendingSends = new Map<number, string>(); // temporary id -> text, shown greyed
let pendingCounter = 0;
// Test and diagnostics hook: every message the SDK delivered, in order.
const delivered: string[] = [];
(window as unknown as { chatplane: object }).chatplane = {
  delivered,
  state: () => client?.state,
  received: () => Object.fromEntries(client?.leader?.received ?? []),
  leads: () => client?.isLeader ?? false,
  // the open conversation as its list holds it, [seq, text] in order (the DOM
  // has only the rows in view: tests check those are a slice of this)
  listed: () => {
    const c = active ? conversations.get(active) : undefined;
    return c ? seqsOf(c).map((seq) => [seq, describe(c.messages.get(seq)!)]) : [];
  },
  // The connection lost as a network drop loses it: the SDK learns of it at once. A plain
  // close() waits for the server's closing reply, which an offline page never reads once
  // anything arrived after it went offline (Chromium then waits a minute for it).
  drop: () => {
    const socket = (client?.leader as unknown as { socket: WebSocket | null })?.socket;
    if (!socket) return;
    const lost = socket.onclose;
    socket.onclose = null;
    socket.onmessage = null;
    socket.close();
    lost?.call(socket, new CloseEvent("close", { wasClean: false }));
  },
};

function tokenIdentity(token: string): { user: string; device: string } {
  try {
    const payload = token.split(".")[0].replace(/-/g, "+").replace(/_/g, "/");
    const claims = JSON.parse(atob(payload)) as { u?: string; d?: string };
    return { user: claims.u ?? "", device: claims.d ?? "" };
  } catch {
    return { user: "", device: "" };
  }
}

function conversation(id: string): Conversation {
  let c = conversations.get(id);
  if (c === undefined) {
    c = { id, kind: id.startsWith("g:") ? "group" : "direct", name: id, last: null, unread: 0,
          countedTo: 0, readSeq: 0, headSeq: 0, members: 0, messages: new Map(), hasOlder: true, peerRead: 0,
          dissolved: false, sorted: { size: 0, seqs: [] } };
    if (id.startsWith("d:") && client) {
      c.name = id.slice(2).split(":").find((u) => u !== client!.userId) ?? id;
    }
    conversations.set(id, c);
  }
  return c;
}

// -- incoming -------------------------------------------------------------

function onMessage(m: Message): void {
  delivered.push(`${m.conversationId}#${m.seq}`);
  if (m.conversationId.startsWith("u:")) {
    onEvent(m);
    return;
  }
  const c = conversation(m.conversationId);
  applyGroupEvent(c, m);
  c.messages.set(m.seq, m);
  c.headSeq = Math.max(c.headSeq, m.seq);
  if (!c.last || m.seq >= c.last.seq) c.last = m;
  const mine = m.sender === client?.userId;
  if (mine) {
    c.readSeq = Math.max(c.readSeq, m.seq);
  } else if (active === c.id && document.visibilityState === "visible") {
    markRead(c);
  } else if (m.seq > c.readSeq && m.seq > c.countedTo) {
    // a message the list's count already holds (its sync came after the list) is not
    // counted twice
    c.unread += 1;
  }
  if (active === c.id && !mine) announced = `${m.sender}: ${describe(m)}`;
  scheduleRender();
}

let renderQueued = false;
let announced = ""; // the newest incoming message of the open conversation, for screen readers

/** Redraw once per frame however many messages arrived in it. */
function scheduleRender(): void {
  if (renderQueued) return;
  renderQueued = true;
  requestAnimationFrame(() => {
    renderQueued = false;
    drawList();
    drawMessages("follow");
    if (announced) { // once per frame, not once per message of a sync
      $("announce").textContent = announced;
      announced = "";
    }
  });
}

/** A group's name and size follow its system messages. */
function applyGroupEvent(c: Conversation, m: Message): void {
  if (m.contentType !== "system/group" || c.messages.has(m.seq)) return;
  const e = decodeGroupEvent(m.payload);
  c.kind = "group";
  if (e.name && (e.action === "GROUP_ACTION_UNSPECIFIED" || e.action === "RENAME")) {
    c.name = e.name;
  }
  const count = (e.user_ids as string[]).length;
  if (e.action === "GROUP_ACTION_UNSPECIFIED") c.members = count + 1;
  else if (c.members && e.action === "ADD") c.members += count;
  else if (c.members && e.action === "JOIN") c.members += 1;
  else if (c.members && e.action === "KICK") c.members -= count;
  else if (c.members && e.action === "LEAVE") c.members -= 1;
  if (e.action === "DISSOLVE") c.dissolved = true;
  if (active === c.id && !$("members-panel").hidden) void social.refreshMembers();
  // joined on another device of this user: its invitation is gone here too
  if (e.action === "JOIN" && m.sender === client?.userId) void social.refreshInvitations();
  if (active === c.id) showChat(c);
}


function onEvent(m: Message): void {
  const event = decodeEvent(m.payload);
  if (event.kind === "read") {
    const c = conversation(event.read.conversation_id);
    c.readSeq = Math.max(c.readSeq, event.read.read_seq);
    const unreadAbove = [...c.messages.values()].filter(
      (x) => x.seq > c.readSeq && x.sender !== client?.userId).length;
    c.unread = Math.min(c.unread, unreadAbove);
    drawList();
  } else if (event.kind === "friend") {
    void social.refreshFriends();
  } else if (event.kind === "receipt") {
    const c = conversation(event.receipt.conversation_id);
    c.peerRead = Math.max(c.peerRead, event.receipt.read_seq);
    if (active === c.id) drawMessages("follow");
  } else if (event.kind === "invitation") {
    void social.refreshInvitations(); // not a member yet: no conversation until it joins
  }
}

function markRead(c: Conversation): void {
  if (c.headSeq > c.readSeq) {
    c.readSeq = c.headSeq;
    client?.request({ mark_read: { conversation_id: c.id, seq: c.headSeq } }).catch(() => {});
  }
  c.unread = 0;
}

function onState(state: ConnectionState, detail?: string): void {
  const status = $("status");
  const text: Record<ConnectionState, string> = {
    connecting: "Connecting…", online: "Online", reconnecting: "Reconnecting…",
    closed: "Signed out", failed: `Signed out: ${detail ?? "refused"}` };
  status.textContent = text[state];
  status.className = `status ${state}`;
  if (state === "online") {
    void loadConversations();
    void social.refreshFriends();
    void social.refreshInvitations();
  }
  if (state === "failed") {
    sessionStorage.removeItem(TOKEN_KEY);
    showSignin(detail ?? "sign-in refused");
  }
}

// -- requests ---------------------------------------------------------------

async function loadConversations(): Promise<void> {
  if (!client) return;
  const reply = await client.request({ conversations: { limit: 100 } });
  for (const s of reply.conversations_response.conversations as Frame[]) {
    const c = conversation(s.conversation_id);
    c.kind = s.kind || c.kind;
    c.name = s.name || c.name;
    c.unread = s.unread;
    c.countedTo = Math.max(c.countedTo, s.head_seq);
    c.readSeq = s.read_seq;
    c.headSeq = Math.max(c.headSeq, s.head_seq);
    c.members = s.members;
    if (s.last_message && s.last_message.seq && (!c.last || s.last_message.seq > c.last.seq)) {
      c.last = { conversationId: c.id, seq: s.last_message.seq, inboxSeq: 0,
        messageId: s.last_message.message_id, sender: s.last_message.sender, senderDevice: "",
        cid: 0, text: s.last_message.text, payload: s.last_message.payload,
        contentType: s.last_message.content_type || "text", sentAtMs: s.last_message.sent_at_ms };
    }
  }
  drawList();
  if (active) await loadOlder(conversation(active), true);
}

async function loadOlder(c: Conversation, newest = false): Promise<void> {
  if (!client || loadingOlder || (!c.hasOlder && !newest)) return;
  loadingOlder = true;
  try {
    const seqs = [...c.messages.keys()];
    const before = newest || seqs.length === 0 ? 0 : Math.min(...seqs);
    if (before === 1) {
      c.hasOlder = false;
      return;
    }
    const reply = await client.request({ history: { conversation_id: c.id, before_seq: before,
                                                    limit: PAGE } });
    const page = reply.history_response;
    for (const m of page.messages as Frame[]) {
      if (!c.messages.has(m.seq)) {
        const message: Message = { conversationId: c.id, seq: m.seq, inboxSeq: 0,
          messageId: m.message_id, sender: m.sender, senderDevice: m.sender_device, cid: m.cid,
          text: m.text, payload: m.payload, contentType: m.content_type || "text",
          sentAtMs: m.sent_at_ms };
        applyGroupEvent(c, message);
        c.messages.set(m.seq, message);
      }
    }
    if (!newest || seqs.length === 0) c.hasOlder = page.has_more;
    c.headSeq = Math.max(c.headSeq, page.head_seq);
    if (active === c.id) drawMessages(newest ? "bottom" : "follow");
  } finally {
    loadingOlder = false;
  }
}

function open(id: string): void {
  const c = conversation(id);
  active = id;
  $("app").classList.add("in-chat");
  $("members-panel").hidden = true;
  $("members-toggle").setAttribute("aria-expanded", "false");
  $("receipts").textContent = "";
  $("chat-error").textContent = "";
  showChat(c);
  markRead(c);
  drawList();
  drawMessages("bottom");
  void loadOlder(c, true).then(() => markRead(c));
  $("text").focus();
}

// -- rendering --------------------------------------------------------------

function drawList(): void {
  renderList(conversations.values(), active, open);
}

function drawMessages(anchor: Anchor): void {
  const c = active ? conversations.get(active) : undefined;
  if (!c) return;
  const pending = [...pendingSends.entries()].filter(([, v]) => v.startsWith(`${c.id}\u0000`))
    .map(([pid, v]): [number, string] => [pid, v.slice(c.id.length + 1)]);
  renderMessages(messageList, c, client?.userId ?? "", pending,
                 (seq) => void social.showReceipts(c.id, seq), anchor);
}

// -- sign in and out ------------------------------------------------------------

function showSignin(error = ""): void {
  $("app").hidden = true;
  $("signin").hidden = false;
  $("signin-error").textContent = error;
  void fetch("/dev/login").then((r) => { $("dev-form").hidden = !r.ok; }).catch(() => {});
}

function start(token: string): void {
  const { user, device } = tokenIdentity(token);
  $("signin").hidden = true;
  $("app").hidden = false;
  $("me").textContent = user ? `${user} · ${device}` : "";
  // tabs of one device share one connection (the leading tab's)
  client = new TabClient({ url: location.origin, token, clientName: "chatplane-web",
    store: defaultCursorStore(`${user}/${device}`), onMessage, onState }, `${user}/${device}`);
  client.start().catch(() => {});
}

function wire(): void {
  social.wire();
  $("signin-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const token = ($("token") as HTMLTextAreaElement).value.trim();
    ($("token") as HTMLTextAreaElement).value = "";
    sessionStorage.setItem(TOKEN_KEY, token);
    start(token);
  });
  $("dev-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const user = ($("dev-user") as HTMLInputElement).value.trim();
    const device = ($("dev-device") as HTMLInputElement).value.trim() || "web";
    const reply = await fetch("/dev/login", { method: "POST",
      headers: { "content-type": "application/json" }, body: JSON.stringify({ user, device }) });
    const body = await reply.json() as { token?: string; error?: string };
    if (!body.token) {
      $("signin-error").textContent = body.error ?? "development login refused";
      return;
    }
    sessionStorage.setItem(TOKEN_KEY, body.token);
    start(body.token);
  });
  $("signout").addEventListener("click", () => {
    sessionStorage.removeItem(TOKEN_KEY);
    client?.close();
    location.reload();
  });
  $("back").addEventListener("click", () => {
    active = null;
    $("app").classList.remove("in-chat");
    drawList();
  });
  $("composer").addEventListener("submit", (event) => {
    event.preventDefault();
    const input = $("text") as HTMLInputElement;
    const text = input.value;
    if (!text.trim() || !client || !active) return;
    input.value = "";
    $("chat-error").textContent = "";
    const pid = ++pendingCounter;
    const target = active;
    pendingSends.set(pid, `${target}\u0000${text}`);
    drawMessages("bottom");
    client.send(target, text).then(() => undefined, (error: Error) => {
      // a refused send (blocked, not a member, dissolved) is said where it was typed
      if (active === target) $("chat-error").textContent = `Not sent (${refusal(error)})`;
    }).finally(() => {
      pendingSends.delete(pid);
      if (active === target) drawMessages("follow");
    });
  });
  $("messages").addEventListener("scroll", () => {
    const c = active ? conversations.get(active) : undefined;
    if (c && c.hasOlder && $("messages").scrollTop < 60) void loadOlder(c); // near the top
  });
  $("new-direct").addEventListener("submit", async (event) => {
    event.preventDefault();
    const peer = ($("peer") as HTMLInputElement).value.trim();
    if (!client || !peer) return;
    const reply = await client.request({ open_direct: { peer_user_id: peer } });
    const c = conversation(reply.open_direct_ack.conversation_id);
    c.name = peer;
    ($("peer") as HTMLInputElement).value = "";
    open(c.id);
  });
  $("new-group").addEventListener("submit", async (event) => {
    event.preventDefault();
    const name = ($("group-name") as HTMLInputElement).value.trim();
    const members = ($("group-members") as HTMLInputElement).value.split(/[,\s]+/)
      .filter(Boolean);
    if (!client || !name) return;
    const reply = await client.request({ group_create: { name, members } });
    const c = conversation(reply.group_op_ack.conversation_id);
    const invited = reply.group_op_ack.invited as string[];
    c.name = name;
    c.kind = "group";
    c.members = members.length - invited.length + 1;
    ($("group-name") as HTMLInputElement).value = "";
    ($("group-members") as HTMLInputElement).value = "";
    open(c.id);
    social.noteInvited(invited);
  });
  document.addEventListener("visibilitychange", () => {
    const c = active ? conversations.get(active) : undefined;
    if (c && document.visibilityState === "visible") { markRead(c); drawList(); }
  });
}

wire();
const saved = sessionStorage.getItem(TOKEN_KEY);
if (saved) start(saved);
else showSignin();
