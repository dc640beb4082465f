// The web app's social screens: friends and requests in the sidebar, blocked
// users (block, unblock), group invitations (join or decline: nobody is put in
// a group without consent), a group's members with roles (add, kick, make
// admin, rename, leave; the owner dissolves), and who has read one of your
// messages. Every change goes through protocol requests; the resulting events
// (event/friend, system/group) refresh what is shown on every device. A
// refusal is shown in an alert next to what was refused.
import { RequestError, type Frame, type TabClient } from "../src/index.js";

export interface SocialContext {
  client: () => TabClient | null;
  openDirect: (peer: string) => Promise<void>;
  openGroup: (conversationId: string, name: string) => void;
  activeGroup: () => string | null;
}

const $ = <T extends HTMLElement>(id: string): T => document.getElementById(id) as T;

// the protocol's error codes a user can cause here, in words (protocol.md)
const REFUSALS: Record<number, string> = { 7: "too fast, try again", 8: "not allowed",
  9: "not found", 10: "invalid", 18: "blocked" };

/** A refused request in words: the reason, then the server's message. */
export function refusal(error: unknown): string {
  const message = (error as Error).message;
  const reason = error instanceof RequestError ? REFUSALS[error.code] : undefined;
  return reason ? `${reason}: ${message}` : message;
}

function button(label: string, name: string, onClick: () => void): HTMLButtonElement {
  const b = document.createElement("button");
  b.type = "button";
  b.textContent = label;
  b.setAttribute("aria-label", name);
  b.addEventListener("click", onClick);
  return b;
}

function person(who: string, ...extra: HTMLElement[]): HTMLLIElement {
  const li = document.createElement("li");
  li.dataset.user = who;
  const name = document.createElement("span");
  name.className = "who";
  name.textContent = who;
  li.append(name, ...extra);
  return li;
}

export class SocialPanels {
  constructor(private readonly ctx: SocialContext) {}

  /** A request; a refusal is shown in the alert `errors` names. */
  private async ask(frame: Frame, errors = "chat-error"): Promise<Frame | null> {
    const client = this.ctx.client();
    if (!client) return null;
    try {
      return await client.request(frame);
    } catch (error) {
      $(errors).textContent = `Refused (${refusal(error)})`;
      return null;
    }
  }

  /** What the user asked for: the last refusal shown there goes first. */
  private async act(frame: Frame, errors = "chat-error"): Promise<Frame | null> {
    $(errors).textContent = "";
    return this.ask(frame, errors);
  }

  async refreshFriends(): Promise<void> {
    const reply = await this.ask({ friends: {} });
    if (!reply) return;
    const r = reply.friends_response;
    const friendOp = (action: string, user: string) => async () => {
      await this.act({ friend_op: { action, user_id: user } }, "friends-error");
      await this.refreshFriends();
    };
    const block = (user: string) => button("Block", `Block ${user}`, friendOp("BLOCK", user));
    $("friend-requests").replaceChildren(...(r.incoming as Frame[]).map((f) => person(
      `${f.user_id} wants to be friends`,
      button("Accept", `Accept ${f.user_id}`, friendOp("ACCEPT", f.user_id)),
      button("Decline", `Decline ${f.user_id}`, friendOp("DECLINE", f.user_id)),
      block(f.user_id))));
    $("friend-list").replaceChildren(
      ...(r.friends as Frame[]).map((f) => person(f.user_id,
        button("Chat", `Chat with ${f.user_id}`, () => void this.ctx.openDirect(f.user_id)),
        block(f.user_id))),
      ...(r.outgoing as Frame[]).map((f) => person(`${f.user_id} (asked)`)));
    // blocked users can neither message nor befriend this user until unblocked
    $("blocked-list").replaceChildren(...(r.blocked as Frame[]).map((f) => person(
      `${f.user_id} (blocked)`,
      button("Unblock", `Unblock ${f.user_id}`, friendOp("UNBLOCK", f.user_id)))));
  }

  /** Pending group invitations, each with Join and Decline. */
  async refreshInvitations(): Promise<void> {
    const reply = await this.ask({ invitations: {} });
    if (!reply) return;
    const invitations = reply.invitations_response.invitations as Frame[];
    const answer = (invitation: Frame, action: "JOIN" | "DECLINE_INVITATION") => async () => {
      const done = await this.ask({ group_op: { conversation_id: invitation.conversation_id,
                                                action } });
      await this.refreshInvitations();
      if (done && action === "JOIN") {
        this.ctx.openGroup(invitation.conversation_id, invitation.name);
      }
    };
    $("invitation-list").replaceChildren(...invitations.map((i) => {
      const name = i.name || i.conversation_id;
      const li = person(`${name} (from ${i.inviter})`,
        button("Join", `Join ${name}`, answer(i, "JOIN")),
        button("Decline", `Decline ${name}`, answer(i, "DECLINE_INVITATION")));
      li.dataset.conversation = i.conversation_id;
      return li;
    }));
    $("invitations").hidden = invitations.length === 0;
  }

  async refreshMembers(): Promise<void> {
    const group = this.ctx.activeGroup();
    if (!group) return;
    const reply = await this.ask({ members: { conversation_id: group, limit: 200 } });
    if (!reply) return;
    const me = this.ctx.client()?.userId;
    const members = reply.members_response.members as Frame[];
    const myRole = members.find((m) => m.user_id === me)?.role ?? "member";
    const manages = myRole === "owner" || myRole === "admin";
    const op = (action: string, user: string, role = "") => async () => {
      await this.ask({ group_op: { conversation_id: group, action, user_ids: [user], role } });
      await this.refreshMembers();
    };
    $("member-list").replaceChildren(...members.map((m) => {
      const role = document.createElement("span");
      role.className = "role";
      role.textContent = m.role;
      const actions: HTMLElement[] = [role];
      if (manages && m.user_id !== me && m.role !== "owner") {
        if (myRole === "owner" && m.role === "member") {
          actions.push(button("Make admin", `Make ${m.user_id} admin`,
                              op("SET_ROLE", m.user_id, "admin")));
        }
        actions.push(button("Remove", `Remove ${m.user_id}`, op("KICK", m.user_id)));
      }
      return person(m.user_id, ...actions);
    }));
    $("add-member").hidden = !manages;
    $("rename-group").hidden = !manages; // owners and admins rename
    $("dissolve-group").hidden = myRole !== "owner"; // only the owner dissolves
    if (myRole !== "owner") this.confirmDissolve(false);
  }

  /** Show or hide the dissolve confirmation (a second, deliberate step). */
  private confirmDissolve(show: boolean): void {
    $("dissolve-confirm").hidden = !show;
    $("dissolve-group").setAttribute("aria-expanded", String(show));
    if (show) $("dissolve-yes").focus();
  }

  /** Say who got an invitation instead of being added (not your friends). */
  noteInvited(invited: string[]): void {
    if (invited.length === 0) return;
    $("receipts").textContent =
      `Invited ${invited.join(", ")}: they join when they accept (not your friends yet)`;
  }

  /** Who of the conversation has read message `seq`. */
  async showReceipts(conversationId: string, seq: number): Promise<void> {
    const reply = await this.ask({ receipts: { conversation_id: conversationId, seq, limit: 50 } });
    if (!reply) return;
    const r = reply.receipts_response;
    const read = (r.read as string[]).join(", ") || "nobody yet";
    const unread = (r.unread as string[]).join(", ") || "nobody";
    $("receipts").textContent = `#${seq} read by ${read}; not yet: ${unread}`;
  }

  wire(): void {
    $("add-friend").addEventListener("submit", async (event) => {
      event.preventDefault();
      const input = $("friend-id") as HTMLInputElement;
      const user = input.value.trim();
      if (!user) return;
      input.value = "";
      await this.act({ friend_op: { action: "REQUEST", user_id: user } }, "friends-error");
      await this.refreshFriends();
    });
    $("members-toggle").addEventListener("click", () => {
      const panel = $("members-panel");
      panel.hidden = !panel.hidden;
      $("members-toggle").setAttribute("aria-expanded", String(!panel.hidden));
      if (!panel.hidden) void this.refreshMembers();
    });
    $("add-member").addEventListener("submit", async (event) => {
      event.preventDefault();
      const group = this.ctx.activeGroup();
      const input = $("member-id") as HTMLInputElement;
      const user = input.value.trim();
      if (!group || !user) return;
      input.value = "";
      const reply = await this.act({ group_op: { conversation_id: group, action: "ADD",
                                                 user_ids: [user] } });
      if (reply) this.noteInvited(reply.group_op_ack.invited as string[]);
      await this.refreshMembers();
    });
    $("leave-group").addEventListener("click", async () => {
      const group = this.ctx.activeGroup();
      if (group) await this.act({ group_op: { conversation_id: group, action: "LEAVE" } });
    });
    $("rename-group").addEventListener("submit", async (event) => {
      event.preventDefault();
      const group = this.ctx.activeGroup();
      const input = $("new-group-name") as HTMLInputElement;
      const name = input.value.trim();
      if (!group || !name) return;
      // the RENAME system message retitles the group on every member's page
      const reply = await this.act({ group_op: { conversation_id: group, action: "RENAME", name } });
      if (reply) input.value = "";
    });
    $("dissolve-group").addEventListener("click", () =>
      this.confirmDissolve($("dissolve-confirm").hidden));
    const cancel = () => {
      this.confirmDissolve(false);
      $("dissolve-group").focus();
    };
    $("dissolve-no").addEventListener("click", cancel);
    $("dissolve-confirm").addEventListener("keydown", (event) => {
      if (event.key === "Escape") cancel();
    });
    $("dissolve-yes").addEventListener("click", async () => {
      const group = this.ctx.activeGroup();
      this.confirmDissolve(false);
      // the DISSOLVE system message closes the group on every member's page
      if (group) await this.act({ group_op: { conversation_id: group, action: "DISSOLVE" } });
    });
  }
}
