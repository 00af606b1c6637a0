/**
 * BackingJournal: the record file of FUSE passthrough backing ids, read when a mount is
 * resumed (restart without unmount, src/daemon/restart-state.ts). The native engine
 * appends to it (native/src/backing_journal.h); this side creates it, checks it and says
 * which ids are live.
 *
 * Why: backing ids belong to the FUSE connection (fs/fuse/backing.c: an idr of struct
 * fuse_conn, freed only with the connection), which outlives the process in systemd's fd
 * store. While a passthrough file of an inode is open (a running program maps its store
 * libraries), the kernel accepts a new open of that inode only in passthrough mode with the
 * SAME backing (fs/fuse/iomode.c: fuse_inode_uncached_io_start refuses another backing
 * with EBUSY, fuse_file_io_open a cached open with EIO). A new process must answer with
 * the ids the earlier ones gave.
 *
 * Format (little endian): the 8-byte header `NARFSBJ1`, then 24-byte records
 *   u32 payloadLength (16), u32 crc32(payload),
 *   payload = u8 op, u8[3] zero, u32 backingId, u64 nodeid
 * op 1: the id was registered for nodeid; 2: retired (the node's content was dropped while
 * files of it may be open: new opens fail until the kernel forgets the node); 3: closed.
 *
 * Invariants:
 * - A registration is appended (one write(2), O_APPEND) before the open reply that carries
 *   the id; a close before FUSE_DEV_IOC_BACKING_CLOSE. So at every byte the valid prefix
 *   names every id a kernel file may use. A process killed between the ioctl and the
 *   record, or between the record and the reply, leaves an id no file uses: harmless
 *   (freed with the connection, or closed when the kernel forgets the node).
 * - `open` keeps the longest prefix of records whose length and CRC check and truncates
 *   the rest (a process killed mid-write), so appends continue after good records.
 * - Live ids: registered and not closed, the latest per node (one per node is all the
 *   engine ever holds).
 * No fsync: the connection does not survive a machine crash either.
 */
import { closeSync, ftruncateSync, openSync, readFileSync, writeSync } from 'node:fs';
import { crc32 } from 'node:zlib';

const MAGIC = Buffer.from('NARFSBJ1', 'latin1');
const HEAD = 8;
const RECORD = 24;
const PAYLOAD = 16;

export const BACKING_OP = { opened: 1, retired: 2, closed: 3 } as const;

export interface LiveBacking {
  nodeid: number;
  backingId: number;
  /** Content dropped while files may be open: the node's opens fail until it is forgotten. */
  retired: boolean;
}

export class BackingJournal {
  readonly path: string;
  /** Bytes of the valid prefix (where the engine appends). */
  readonly size: number;
  /** Records in the valid prefix. */
  readonly records: number;
  readonly #live: Map<number, LiveBacking>;

  private constructor(path: string, size: number, records: number, live: Map<number, LiveBacking>) {
    this.path = path;
    this.size = size;
    this.records = records;
    this.#live = live;
  }

  /**
   * Opens `path`: `fresh` starts an empty file (a new mount: no ids yet); otherwise the
   * valid prefix is read (a resumed mount) and a torn tail cut off. The file is closed
   * again: the engine opens it for appending.
   */
  static open(path: string, options: { fresh: boolean }): BackingJournal {
    let data: Buffer = Buffer.alloc(0);
    if (!options.fresh) {
      try {
        data = readFileSync(path);
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
      }
    }
    const fd = openSync(path, options.fresh ? 'w' : 'a', 0o600);
    try {
      if (data.length < HEAD || !data.subarray(0, HEAD).equals(MAGIC)) {
        ftruncateSync(fd, 0);
        writeSync(fd, MAGIC);
        return new BackingJournal(path, HEAD, 0, new Map());
      }
      const byId = new Map<number, LiveBacking>();
      let off = HEAD;
      let records = 0;
      while (off + RECORD <= data.length) {
        if (data.readUInt32LE(off) !== PAYLOAD) break;
        const payload = data.subarray(off + 8, off + RECORD);
        if (crc32(payload) !== data.readUInt32LE(off + 4)) break;
        const op = payload[0]!;
        const backingId = payload.readUInt32LE(4);
        const nodeid = Number(payload.readBigUInt64LE(8));
        if (op === BACKING_OP.opened) {
          byId.delete(backingId); // re-insert: Map order is the order of registration
          byId.set(backingId, { nodeid, backingId, retired: false });
        } else if (op === BACKING_OP.retired) {
          const b = byId.get(backingId);
          if (b) b.retired = true;
        } else if (op === BACKING_OP.closed) {
          byId.delete(backingId);
        } else {
          break;
        }
        off += RECORD;
        records++;
      }
      if (off !== data.length) ftruncateSync(fd, off);
      const live = new Map<number, LiveBacking>();
      for (const b of byId.values()) live.set(b.nodeid, b); // the latest per node
      return new BackingJournal(path, off, records, live);
    } finally {
      closeSync(fd);
    }
  }

  /** The live ids, one per node. */
  get live(): LiveBacking[] {
    return [...this.#live.values()];
  }

  /** What the engine's mount() takes (native/src/backing_journal.h): nodeids below `unknownBelow` are an earlier process's. */
  engineOptions(unknownBelow: number): { path: string; size: number; live: Float64Array; unknownBelow: number } {
    const live = new Float64Array(this.#live.size * 3);
    let i = 0;
    for (const b of this.#live.values()) {
      live[i++] = b.nodeid;
      live[i++] = b.backingId;
      live[i++] = b.retired ? 1 : 0;
    }
    return { path: this.path, size: this.size, live, unknownBelow };
  }
}
