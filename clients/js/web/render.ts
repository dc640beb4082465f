// Drawing the web app's lists: conversations (last message, unread badge)
// and the open conversation's messages (in seq order, with read marks, in a
// virtualized list: virtual.ts), and its header (a dissolved group takes no
// more sends). Pure DOM from the state app.ts keeps.
import { decodeGroupEvent, type Message } from "../src/index.js";
import type { Anchor, Row, VirtualList } from "./virtual.js";

export interface Conversation {
  id: string;
  kind: string;
  name: string;
  last: Message | null;
  unread: number;
  countedTo: number; // the server's unread count (conversation list) covers seqs up to here
  readSeq: number;
  headSeq: number;
  members: number;
  messages: Map<number, Message>;
  hasOlder: boolean;
  peerRead: number;
  dissolved: boolean; // a group its owner dissolved: nothing more can be sent
  sorted: { size: number; seqs: number[] }; // the seqs in order, kept while size holds
}

// one formatter for every row (toLocaleTimeString would build one per call)
const TIME = new Intl.DateTimeFormat([], { hour: "2-digit", minute: "2-digit" });
const $ = <T extends HTMLElement>(id: string): T => document.getElementById(id) as T;

export function describe(m: Message): string {
  if (m.contentType === "system/group") {
    const e = decodeGroupEvent(m.payload);
    const who = (e.user_ids as string[]).join(", ");
    const verbs: Record<string, string> = {
      GROUP_ACTION_UNSPECIFIED: `created the group ${e.name}`, ADD: `added ${who}`,
      INVITE: `invited ${who}`, JOIN: "joined", LEAVE: "left", KICK: `removed ${who}`,
      SET_ROLE: `made ${who} ${e.role}`, RENAME: `renamed the group to ${e.name}`,
      DISSOLVE: "dissolved the group" };
    return `${e.actor} ${verbs[e.action as string] ?? String(e.action).toLowerCase()}`;
  }
  return m.text;
}

/** The conversation's seqs in order (sorted again only when it grew). */
export function seqsOf(c: Conversation): number[] {
  if (c.sorted.size !== c.messages.size) {
    c.sorted = { size: c.messages.size, seqs: [...c.messages.keys()].sort((a, b) => a - b) };
  }
  return c.sorted.seqs;
}

export function renderList(conversations: Iterable<Conversation>, active: string | null,
                           open: (id: string) => void): void {
  const list = $("conversations");
  const sorted = [...conversations].filter((c) => !c.id.startsWith("u:"))
    .sort((a, b) => (b.last?.sentAtMs ?? 0) - (a.last?.sentAtMs ?? 0));
  list.replaceChildren(...sorted.map((c) => {
    const item = document.createElement("li");
    const button = document.createElement("button");
    button.type = "button";
    button.dataset.conversation = c.id;
    if (c.id === active) button.setAttribute("aria-current", "true");
    const name = document.createElement("span");
    name.className = "name";
    name.textContent = c.name;
    const last = document.createElement("span");
    last.className = "last";
    last.textContent = c.last ? `${c.last.sender}: ${describe(c.last)}` : "";
    button.append(name, last);
    let label = `${c.name}`;
    if (c.unread > 0) {
      const badge = document.createElement("span");
      badge.className = "unread";
      badge.textContent = String(c.unread);
      button.append(badge);
      label += `, ${c.unread} unread`;
    }
    button.setAttribute("aria-label", label);
    button.addEventListener("click", () => open(c.id));
    item.append(button);
    return item;
  }));
}

function messageRow(c: Conversation, m: Message, mine: string,
                    onOwn: (seq: number) => void): HTMLLIElement {
  const li = document.createElement("li");
  li.dataset.seq = String(m.seq);
  li.dataset.id = m.messageId;
  const system = m.contentType.startsWith("system/");
  li.className = system ? "system" : m.sender === mine ? "mine" : "theirs";
  if (!system && m.sender !== mine && c.kind === "group") {
    const from = document.createElement("span");
    from.className = "from";
    from.textContent = m.sender;
    li.append(from);
  }
  const text = document.createElement("span");
  text.className = "text";
  text.textContent = describe(m);
  const when = document.createElement("time");
  when.className = "when";
  when.dateTime = new Date(m.sentAtMs).toISOString();
  when.textContent = TIME.format(m.sentAtMs);
  li.append(text, when);
  if (m.sender === mine && !system) {
    li.tabIndex = 0;
    li.title = "Who has read this";
    const show = () => onOwn(m.seq);
    li.addEventListener("click", show);
    li.addEventListener("keydown", (e) => { if (e.key === "Enter") show(); });
  }
  if (m.sender === mine && c.kind === "direct" && m.seq <= c.peerRead) {
    const receipt = document.createElement("span");
    receipt.className = "receipt";
    receipt.textContent = "✓✓";
    receipt.title = "read";
    li.append(receipt);
  }
  return li;
}

/** The open conversation into the virtual list: every message it holds, then
 * the sends not acked yet (greyed). Rows are built only when rendered. */
export function renderMessages(list: VirtualList, c: Conversation, mine: string,
                               pending: [number, string][], onOwn: (seq: number) => void,
                               anchor: Anchor): void {
  const rows: Row[] = seqsOf(c).map((seq) => ({
    key: String(seq), build: () => messageRow(c, c.messages.get(seq)!, mine, onOwn) }));
  for (const [pid, text] of pending) {
    rows.push({ key: `pending-${pid}`, build: () => {
      const li = document.createElement("li");
      li.className = "mine pending";
      li.textContent = text;
      return li;
    } });
  }
  list.update(rows, anchor);
}

/** The open conversation's title, size, and whether one can still send. */
export function showChat(c: Conversation): void {
  $("chat-title").textContent = c.name;
  const group = c.kind === "group";
  $("members").textContent = !group ? ""
    : c.dissolved ? "group · dissolved" : `group · ${c.members || "?"} members`;
  $("members-toggle").hidden = !group || c.dissolved;
  if (c.dissolved) {
    $("members-panel").hidden = true;
    $("members-toggle").setAttribute("aria-expanded", "false");
  }
  const text = $("text") as HTMLInputElement;
  text.disabled = c.dissolved;
  text.placeholder = c.dissolved ? "This group was dissolved" : "Message";
  ($("send") as HTMLButtonElement).disabled = c.dissolved;
}
