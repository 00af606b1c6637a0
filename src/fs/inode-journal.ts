/**
 * InodeJournal: the append-only file that lets a restarted daemon answer for nodeids the
 * kernel still holds from an earlier process of the same mount (restart without unmount:
 * the FUSE connection is resumed, the kernel keeps its nodeids and lookup counts, and the
 * new process must map any of them back to a store path and a path inside it).
 *
 * Format (little endian): the 8-byte header `NARFSIJ1`, then records
 *   u32 payloadLength, u32 crc32(payload), payload = u64 nodeid, u64 parent nodeid, name
 * where name is the entry's byte string (one char per byte, src/nix/nar-listing.ts).
 *
 * Invariants:
 * - A nodeid's record is appended (one write(2) on an O_APPEND descriptor) before the
 *   reply that hands the nodeid to the kernel; a record names its parent, whose own record
 *   (or the root, 1, or a fixed root directory) came earlier.
 * - Crash at any point = consistent: a process killed mid-write leaves a valid prefix and
 *   at most one torn record; `open` keeps the longest prefix of records whose length and
 *   CRC check, and truncates the rest before appending. A record whose reply never left
 *   is harmless (the nodeid is simply never used). No fsync: the kernel's nodeids do not
 *   outlive a machine crash either, and a write(2) is in the page cache, which survives
 *   the process.
 * - Nodeids only grow: `nextIno` is above every recorded one, so a restarted process
 *   never hands out a number the kernel may still hold.
 * - A failed or short append truncates the file back to its last good record and throws
 *   (the request fails with EIO rather than hand out a nodeid that could not be recorded).
 * Cost: one write(2) of ~30 bytes + name per inode created (not per request); the file
 * grows for the life of a mount (a fresh mount starts it empty).
 */
import { closeSync, ftruncateSync, openSync, readFileSync, writeSync } from 'node:fs';
import { crc32 } from 'node:zlib';
import { NarfsError } from '../errors.js';

const MAGIC = Buffer.from('NARFSIJ1', 'latin1');
const HEAD = 8;
const FIXED = 16;

export interface JournalRecord {
  parent: number;
  name: string;
}

export class InodeJournal {
  readonly #path: string;
  readonly #fd: number;
  #size: number;
  readonly #byIno = new Map<number, JournalRecord>();
  readonly #byParent = new Map<number, Map<string, number>>();
  #maxIno = 0;

  private constructor(path: string, fd: number, size: number) {
    this.#path = path;
    this.#fd = fd;
    this.#size = size;
  }

  /**
   * Opens `path`: `fresh` starts an empty journal (a new mount); otherwise the records of
   * the valid prefix are loaded (a resumed mount) and a torn tail is cut off.
   */
  static open(path: string, options: { fresh: boolean }): InodeJournal {
    let data: Buffer = Buffer.alloc(0);
    if (!options.fresh) {
      try {
        data = readFileSync(path);
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
      }
    }
    const fd = openSync(path, options.fresh ? 'w' : 'a');
    const valid = data.length >= HEAD && data.subarray(0, HEAD).equals(MAGIC);
    const j = new InodeJournal(path, fd, 0);
    if (!valid) {
      ftruncateSync(fd, 0);
      writeSync(fd, MAGIC);
      j.#size = HEAD;
      return j;
    }
    let off = HEAD;
    while (off + 8 <= data.length) {
      const len = data.readUInt32LE(off);
      if (len < FIXED || off + 8 + len > data.length) break;
      const payload = data.subarray(off + 8, off + 8 + len);
      if (crc32(payload) !== data.readUInt32LE(off + 4)) break;
      const ino = Number(payload.readBigUInt64LE(0));
      const parent = Number(payload.readBigUInt64LE(8));
      j.#remember(ino, parent, payload.toString('latin1', FIXED));
      off += 8 + len;
    }
    if (off !== data.length) ftruncateSync(fd, off);
    j.#size = off;
    return j;
  }

  get path(): string {
    return this.#path;
  }

  /** Records loaded or appended. */
  get size(): number {
    return this.#byIno.size;
  }

  /** Above every nodeid recorded. */
  get nextIno(): number {
    return this.#maxIno + 1;
  }

  get(ino: number): JournalRecord | undefined {
    return this.#byIno.get(ino);
  }

  /** The nodeid recorded for `name` under `parent` (the latest, if several). */
  childOf(parent: number, name: string): number | undefined {
    return this.#byParent.get(parent)?.get(name);
  }

  /** Appends one record; returns once write(2) took all of it. */
  append(ino: number, parent: number, name: string): void {
    const nameLen = Buffer.byteLength(name, 'latin1');
    const rec = Buffer.allocUnsafe(8 + FIXED + nameLen);
    rec.writeUInt32LE(FIXED + nameLen, 0);
    rec.writeBigUInt64LE(BigInt(ino), 8);
    rec.writeBigUInt64LE(BigInt(parent), 16);
    rec.write(name, 8 + FIXED, 'latin1');
    rec.writeUInt32LE(crc32(rec.subarray(8)), 4);
    let written = 0;
    try {
      written = writeSync(this.#fd, rec);
    } catch (err) {
      this.#cut();
      throw new NarfsError('ERR_RESTART_STATE', `cannot append to the inode journal ${this.#path}: ${(err as Error).message}`, { cause: err });
    }
    if (written !== rec.length) {
      this.#cut();
      throw new NarfsError('ERR_RESTART_STATE', `short write to the inode journal ${this.#path} (${written} of ${rec.length} bytes)`);
    }
    this.#size += rec.length;
    this.#remember(ino, parent, name);
  }

  close(): void {
    closeSync(this.#fd);
  }

  #cut(): void {
    try {
      ftruncateSync(this.#fd, this.#size);
    } catch {
      // The next open drops a torn tail anyway.
    }
  }

  #remember(ino: number, parent: number, name: string): void {
    this.#byIno.set(ino, { parent, name });
    let kids = this.#byParent.get(parent);
    if (!kids) this.#byParent.set(parent, (kids = new Map()));
    kids.set(name, ino);
    if (ino > this.#maxIno) this.#maxIno = ino;
  }
}
