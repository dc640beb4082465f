// A virtualized list for the open conversation: however many messages it
// holds (10,000 and more), the DOM has only the rows in view plus a margin,
// between two spacers whose heights stand for the rest. Row heights vary
// (wrapped text), so each rendered row is measured and remembered; rows never
// rendered count at the average measured height. Scrolling re-renders only
// when the window of rows changes, reusing the nodes it already built. When
// rows are added above (older history) the first row in view keeps its place
// on screen; at the bottom, the list follows new rows.

/** One row: `key` is stable (a message's seq, a pending send's id). */
export interface Row {
  key: string;
  build: () => HTMLLIElement;
}

export type Anchor = "bottom" | "follow" | "keep";

const OVERSCAN_PX = 600; // rendered above and below the viewport
const FIRST_GUESS_PX = 44; // a row's height before anything was measured
const BOTTOM_SLACK_PX = 40; // this close to the end counts as "at the bottom"

export class VirtualList {
  private rows: Row[] = [];
  private readonly heights = new Map<string, number>();
  private measuredTotal = 0;
  private nodes = new Map<string, HTMLLIElement>();
  private first = -1;
  private last = -1;
  private offsets: number[] = [0];
  private readonly top: HTMLLIElement;
  private readonly bottom: HTMLLIElement;
  private frameQueued = false;

  constructor(private readonly list: HTMLElement) {
    this.top = spacer();
    this.bottom = spacer();
    list.addEventListener("scroll", () => this.onScroll(), { passive: true });
  }

  atBottom(): boolean {
    const l = this.list;
    return l.scrollHeight - l.scrollTop - l.clientHeight < BOTTOM_SLACK_PX;
  }

  /** The rows in order, as the list holds them (not only those rendered). */
  get keys(): string[] {
    return this.rows.map((r) => r.key);
  }

  /** New rows (or changed ones: every node is rebuilt). "bottom": show the
   * end; "follow": stay at the end if there already; "keep": the row in view
   * stays where it is on screen. */
  update(rows: Row[], anchor: Anchor): void {
    const follow = anchor === "bottom" || (anchor === "follow" && this.atBottom());
    const held = follow ? null : this.anchorRow();
    this.rows = rows;
    this.nodes = new Map();
    this.first = this.last = -1;
    this.layout();
    this.place(follow, held);
  }

  private estimate(): number {
    return this.heights.size > 0 ? this.measuredTotal / this.heights.size : FIRST_GUESS_PX;
  }

  private height(key: string): number {
    return this.heights.get(key) ?? this.estimate();
  }

  private layout(): void {
    const offsets = new Array<number>(this.rows.length + 1);
    offsets[0] = 0;
    for (let i = 0; i < this.rows.length; i++) offsets[i + 1] = offsets[i] + this.height(this.rows[i].key);
    this.offsets = offsets;
  }

  /** The first row whose bottom is below `y`. */
  private indexAt(y: number): number {
    let lo = 0;
    let hi = this.rows.length;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (this.offsets[mid + 1] <= y) lo = mid + 1;
      else hi = mid;
    }
    return Math.min(lo, Math.max(0, this.rows.length - 1));
  }

  private anchorRow(): { key: string; delta: number } | null {
    if (this.rows.length === 0) return null;
    const i = this.indexAt(this.list.scrollTop);
    return { key: this.rows[i].key, delta: this.offsets[i] - this.list.scrollTop };
  }

  private place(follow: boolean, held: { key: string; delta: number } | null): void {
    // twice at most: the second pass corrects for heights measured in the first
    for (let pass = 0; pass < 2; pass++) {
      if (follow) {
        this.list.scrollTop = this.offsets[this.rows.length];
      } else if (held) {
        const i = this.rows.findIndex((r) => r.key === held.key);
        if (i >= 0) this.list.scrollTop = this.offsets[i] - held.delta;
      }
      if (!this.render()) break;
    }
    if (follow) this.list.scrollTop = this.list.scrollHeight;
  }

  private onScroll(): void {
    if (this.frameQueued) return;
    this.frameQueued = true;
    requestAnimationFrame(() => {
      this.frameQueued = false;
      const held = this.anchorRow();
      if (this.render() && held) { // heights changed above the view: hold it still
        const i = this.rows.findIndex((r) => r.key === held.key);
        if (i >= 0) this.list.scrollTop = this.offsets[i] - held.delta;
      }
    });
  }

  /** Render the rows around the viewport; true when measuring changed a height. */
  private render(): boolean {
    const n = this.rows.length;
    if (n === 0) {
      this.list.replaceChildren();
      this.first = this.last = -1;
      return false;
    }
    const top = this.list.scrollTop;
    const first = this.indexAt(Math.max(0, top - OVERSCAN_PX));
    const last = this.indexAt(top + this.list.clientHeight + OVERSCAN_PX);
    if (first === this.first && last === this.last) return false;
    this.first = first;
    this.last = last;
    const nodes = new Map<string, HTMLLIElement>();
    const shown: HTMLLIElement[] = [];
    const before: HTMLLIElement[] = []; // new rows above those kept
    const after: HTMLLIElement[] = []; // and below
    for (let i = first; i <= last; i++) {
      const row = this.rows[i];
      let node = this.nodes.get(row.key);
      if (node === undefined) {
        node = row.build();
        (shown.length === before.length ? before : after).push(node);
      }
      node.setAttribute("aria-setsize", String(n));
      node.setAttribute("aria-posinset", String(i + 1));
      nodes.set(row.key, node);
      shown.push(node);
    }
    const kept = shown.length - before.length - after.length;
    this.top.style.height = `${this.offsets[first]}px`;
    this.bottom.style.height = `${this.offsets[n] - this.offsets[last + 1]}px`;
    if (kept > 0 && this.top.parentNode === this.list) {
      // a scroll moves the window a few rows: touch only those
      for (const [key, node] of this.nodes) if (!nodes.has(key)) node.remove();
      this.top.after(...before);
      this.bottom.before(...after);
    } else {
      this.list.replaceChildren(this.top, ...shown, this.bottom);
    }
    this.nodes = nodes;
    return this.measure(shown, first);
  }

  /** Each rendered row's height, margins included (from the next one's top). */
  private measure(shown: HTMLLIElement[], first: number): boolean {
    let changed = false;
    const tops = [...shown, this.bottom].map((node) => node.offsetTop);
    shown.forEach((_, j) => {
      const key = this.rows[first + j].key;
      const h = tops[j + 1] - tops[j];
      const before = this.heights.get(key);
      if (h > 0 && before !== h) {
        this.measuredTotal += h - (before ?? 0);
        this.heights.set(key, h);
        changed = true;
      }
    });
    if (changed) {
      this.layout();
      this.top.style.height = `${this.offsets[first]}px`;
      this.bottom.style.height =
        `${this.offsets[this.rows.length] - this.offsets[first + shown.length]}px`;
    }
    return changed;
  }
}

function spacer(): HTMLLIElement {
  const li = document.createElement("li");
  li.className = "spacer";
  li.setAttribute("aria-hidden", "true");
  return li;
}
