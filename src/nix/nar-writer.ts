/**
 * NAR serialisation (`dumpPath` in src/libutil/archive.cc, `writeString`/`writePadding`
 * in src/libutil/serialise.cc).
 *
 * Format: see nix-formats.md §1.1-1.2: 8-byte little-endian ints, strings as length ‖ bytes
 * ‖ zero padding to a multiple of 8, directory entries in bytewise (strcmp) order of
 * their names, `executable ""` before `contents`. `NarTree` is for authoring: its names and
 * targets are Unicode (written as UTF-8); `bytes:` keys / Uint8Array targets give raw bytes.
 *
 * Invariant: `writeNar` produces the bytes `nix-store --dump` would for the same tree. It
 * does not validate names or targets (use `parseNar` for that). `NarTokenWriter` emits
 * tokens one by one with no checks at all, so tests can build malformed NARs.
 */

export type NarTree =
  | { type: 'regular'; contents: Buffer | string; executable?: boolean }
  | { type: 'symlink'; target: string | Uint8Array }
  | { type: 'directory'; entries: Record<string, NarTree>; byteEntries?: ReadonlyArray<readonly [Uint8Array, NarTree]> };

/** Low-level, unchecked NAR token emitter (one growing buffer). */
export class NarTokenWriter {
  private buf = Buffer.allocUnsafe(1024);
  private length = 0;

  /** int(n): 8 bytes little-endian. */
  int(n: number | bigint): this {
    this.reserve(8);
    if (typeof n === 'number' && Number.isSafeInteger(n) && n >= 0) {
      this.buf.writeUInt32LE(n % 0x100000000, this.length);
      this.buf.writeUInt32LE(Math.floor(n / 0x100000000), this.length + 4);
    } else {
      this.buf.writeBigUInt64LE(BigInt(n), this.length);
    }
    this.length += 8;
    return this;
  }

  /** str(s): length, bytes, then zero padding (or `padByte` to make bad padding). */
  str(s: string | Uint8Array, padByte = 0): this {
    const bytes = typeof s === 'string' ? Buffer.from(s, 'utf8') : s;
    this.int(bytes.length);
    this.raw(bytes);
    return this.pad(bytes.length, padByte);
  }

  /** Several str() tokens. */
  strs(...tokens: Array<string | Uint8Array>): this {
    for (const t of tokens) this.str(t);
    return this;
  }

  /** The padding that follows `len` bytes of data. */
  pad(len: number, padByte = 0): this {
    const n = (8 - (len % 8)) % 8;
    this.reserve(n);
    this.buf.fill(padByte, this.length, this.length + n);
    this.length += n;
    return this;
  }

  /** Bytes as they are, no length, no padding. */
  raw(bytes: Uint8Array | string): this {
    const b = typeof bytes === 'string' ? Buffer.from(bytes, 'utf8') : bytes;
    this.reserve(b.length);
    this.buf.set(b, this.length);
    this.length += b.length;
    return this;
  }

  get byteLength(): number {
    return this.length;
  }

  /** A copy of everything written so far. */
  bytes(): Buffer {
    return Buffer.from(this.buf.subarray(0, this.length));
  }

  private reserve(n: number): void {
    if (this.length + n <= this.buf.length) return;
    let cap = this.buf.length * 2;
    while (cap < this.length + n) cap *= 2;
    const next = Buffer.allocUnsafe(cap);
    this.buf.copy(next, 0, 0, this.length);
    this.buf = next;
  }
}

export function writeNar(tree: NarTree): Buffer {
  const w = new NarTokenWriter();
  w.str('nix-archive-1');
  writeNode(w, tree);
  return w.bytes();
}

function writeNode(w: NarTokenWriter, node: NarTree): void {
  w.strs('(', 'type');
  switch (node.type) {
    case 'regular': {
      w.str('regular');
      if (node.executable === true) w.strs('executable', '');
      w.str('contents');
      w.str(typeof node.contents === 'string' ? Buffer.from(node.contents, 'utf8') : node.contents);
      break;
    }
    case 'symlink':
      w.strs('symlink', 'target', node.target);
      break;
    case 'directory': {
      w.str('directory');
      const names: Array<{ bytes: Uint8Array; child: NarTree }> = Object.keys(node.entries)
        .map((name) => ({ bytes: Buffer.from(name, 'utf8'), child: Object.getOwnPropertyDescriptor(node.entries, name)!.value as NarTree }));
      for (const [bytes, child] of node.byteEntries ?? []) names.push({ bytes, child });
      names.sort((a, b) => Buffer.compare(a.bytes, b.bytes));
      for (const { bytes, child } of names) {
        w.strs('entry', '(', 'name', bytes, 'node');
        writeNode(w, child);
        w.str(')');
      }
      break;
    }
  }
  w.str(')');
}
