// Where a device keeps its inbox cursor between page loads: IndexedDB in a
// browser, memory elsewhere (node tests). The cursor is (have, store_id):
// docs/protocol.md, "Which store".

export interface Cursor {
  have: number;
  storeId: string;
}

export interface CursorStore {
  load(): Promise<Cursor>;
  save(cursor: Cursor): Promise<void>;
}

export class MemoryCursorStore implements CursorStore {
  constructor(private cursor: Cursor = { have: 0, storeId: "" }) {}

  async load(): Promise<Cursor> {
    return { ...this.cursor };
  }

  async save(cursor: Cursor): Promise<void> {
    this.cursor = { ...cursor };
  }
}

/** One record per (user, device) key in database "chatplane", store "cursor". */
export class IndexedDbCursorStore implements CursorStore {
  private db: Promise<IDBDatabase>;

  constructor(private readonly key: string, factory: IDBFactory = indexedDB) {
    this.db = new Promise((resolve, reject) => {
      const open = factory.open("chatplane", 1);
      open.onupgradeneeded = () => open.result.createObjectStore("cursor");
      open.onsuccess = () => resolve(open.result);
      open.onerror = () => reject(open.error);
    });
  }

  async load(): Promise<Cursor> {
    const db = await this.db;
    return new Promise((resolve, reject) => {
      const get = db.transaction("cursor").objectStore("cursor").get(this.key);
      get.onsuccess = () => resolve((get.result as Cursor | undefined) ?? { have: 0, storeId: "" });
      get.onerror = () => reject(get.error);
    });
  }

  async save(cursor: Cursor): Promise<void> {
    const db = await this.db;
    return new Promise((resolve, reject) => {
      const tx = db.transaction("cursor", "readwrite");
      tx.objectStore("cursor").put({ ...cursor }, this.key);
      tx.oncomplete = () => resolve();
      tx.onerror = () => reject(tx.error);
    });
  }
}

/** IndexedDB when the platform has it, memory otherwise. */
export function defaultCursorStore(key: string): CursorStore {
  return typeof indexedDB !== "undefined" ? new IndexedDbCursorStore(key) : new MemoryCursorStore();
}
