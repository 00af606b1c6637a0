/**
 * The four parsers under fuzz — NAR (streaming NarParser), narinfo, `.ls` listing JSON and
 * `.drv` ATerm — as FuzzTargets: their format-aware mutations and their checks of an
 * accepted input.
 *
 * Checks of an accepted input (each breach is an OracleViolation):
 * - nar: the whole buffer and a random chunking give the same verdict (same listing, or
 *   same error code); every regular file has narOffset ≥ 8 with narOffset + size within
 *   the input, the u64 before it equal to its size, and its bytes handed over in order
 *   and equal to the input there; writing the listing back with writeNar reproduces the
 *   input byte for byte (only canonical NARs are accepted); the listing survives
 *   listingToJson → parseListingJson;
 * - narinfo: formatNarInfo → parseNarInfo gives the same narinfo;
 * - ls: entries in bytewise order with valid names, depth < 64, safe sizes and offsets;
 *   listingToJson → parseListingJson gives the same listing;
 * - drv: at least one output, unique non-empty ids, paths absolute or undefined; the text
 *   has the shape Nix's own grammar accepts (drv-reference.ts).
 * - index: encodeNarIndex gives the input back byte for byte (one spelling per index);
 *   files in NAR order, non-overlapping, within NarSize, each with 32 × chunkCount bytes
 *   of chunk hashes; findFile finds each file by its first and last byte; frames ascend
 *   and stay within NarSize and FileSize.
 *
 * Text formats are decoded from the mutated bytes with Buffer#toString('utf8'), as
 * src/store does with what a datalake serves; `.ls` listings are bytes (names need not be
 * UTF-8) and are parsed as bytes.
 */
import { isDeepStrictEqual } from 'node:util';

import type { ErrorCode } from '../../src/errors.js';
import { parseDerivation } from '../../src/nix/derivation.js';
import { formatHash, parseHash, type Hash } from '../../src/nix/hash.js';
import {
  NAR_MAX_DEPTH,
  isByteString,
  listingToJson,
  listingsEqual,
  narNameProblem,
  narTargetProblem,
  parseListingJson,
  type NarNode,
} from '../../src/nix/nar-listing.js';
import { chunkCount, encodeNarIndex, findFile, parseNarIndex } from '../../src/nix/nar-index.js';
import { NarParser, parseNar, type NarHandler } from '../../src/nix/nar-parser.js';
import { NarTokenWriter, writeNar, type NarTree } from '../../src/nix/nar-writer.js';
import { formatNarInfo, parseNarInfo, type NarInfo } from '../../src/nix/narinfo.js';
import { storePathFull } from '../../src/nix/store-path.js';
import { drvShapeProblem } from './drv-reference.js';
import { OracleViolation, type FuzzTarget } from './fuzz-engine.js';
import { INTERESTING_DECIMALS, insert, type MutationContext } from './mutate-bytes.js';
import type { Prng } from './prng.js';

export type FuzzTargetName = 'nar' | 'narinfo' | 'ls' | 'drv' | 'index';
export const FUZZ_TARGET_NAMES: readonly FuzzTargetName[] = ['nar', 'narinfo', 'ls', 'drv', 'index'];

const violation = (message: string): OracleViolation => new OracleViolation(message);

/** A match of `re` (global) at or after a random position, wrapping around; O(distance), not O(text). */
function matchNear(rng: Prng, text: string, re: RegExp): RegExpExecArray | undefined {
  re.lastIndex = rng.int(text.length + 1);
  let m = re.exec(text);
  if (m === null) {
    re.lastIndex = 0;
    m = re.exec(text);
  }
  return m ?? undefined;
}

// ===========================================================================
// NAR

const NAR_KEYWORDS = ['(', ')', 'type', 'regular', 'directory', 'symlink', 'executable', 'contents', 'target', 'entry', 'name', 'node', 'nix-archive-1', ''];
const narToken = (s: string | Buffer): Buffer => new NarTokenWriter().str(s).bytes();
const NAR_TOKENS = NAR_KEYWORDS.map((k) => narToken(k));
const NAR_DICTIONARY = [
  ...NAR_TOKENS,
  ...['.', '..', 'a/b', 'a\0b', 'A', 'z', '\u00e9', 'x'.repeat(255), 'x'.repeat(256)].map((s) => narToken(s)),
  narToken(Buffer.from([0xff, 0xfe])),
];
const MAGIC_TOKEN_BYTES = NAR_TOKENS[12]!.length; // 8-byte length + "nix-archive-1" + 3 padding

/** u64 values for length fields: the limits of the grammar and of JS numbers. */
const HUGE_U64: readonly bigint[] = [
  0n, 1n, 7n, 8n, 9n, 13n, 31n, 32n, 33n, 255n, 256n, 4095n, 4096n, 4097n, 0x10000n, 2n ** 20n, 2n ** 24n, 2n ** 28n, 2n ** 30n,
  0x7fffffffn, 0xffffffffn, 0x100000000n,
  2n ** 40n, 2n ** 52n, 2n ** 53n - 1n, 2n ** 53n, 2n ** 53n + 1n, 2n ** 62n, 2n ** 63n - 1n, 2n ** 63n, 2n ** 64n - 1n,
];

function writeU64(b: Buffer, at: number, v: bigint): Buffer {
  const out = Buffer.from(b);
  out.writeBigUInt64LE(BigInt.asUintN(64, v), at);
  return out;
}

/** Offsets of whole NAR tokens equal to `tok` (tokens are 8-aligned). */
function tokenOffsets(b: Buffer, tok: Buffer): number[] {
  const out: number[] = [];
  for (let at = b.indexOf(tok); at >= 0; at = b.indexOf(tok, at + 8)) if (at % 8 === 0) out.push(at);
  return out;
}

const narMutators: Array<(rng: Prng, b: Buffer) => Buffer> = [
  // An 8-aligned u64 (likely a length: prefer small values) set to a huge or boundary value.
  (rng, b) => {
    const slots = Math.floor(b.length / 8);
    if (slots === 0) return b;
    let at = rng.int(slots) * 8;
    for (let tries = 0; tries < 8 && b.readBigUInt64LE(at) >= 0x10000n; tries++) at = rng.int(slots) * 8;
    const cur = b.readBigUInt64LE(at);
    const v = rng.chance(0.7) ? rng.pick(HUGE_U64) : rng.pick([cur + 1n, cur - 1n, cur + 8n, cur * 2n, BigInt(b.length - at), BigInt(b.length)]);
    return writeU64(b, at, v);
  },
  // The size after a `contents` token changed.
  (rng, b) => {
    const at = rng.pick([...tokenOffsets(b, NAR_TOKENS[7]!), -1]);
    const sizeAt = at + NAR_TOKENS[7]!.length;
    if (at < 0 || sizeAt + 8 > b.length) return b;
    const cur = b.readBigUInt64LE(sizeAt);
    const v = rng.chance(0.5) ? rng.pick(HUGE_U64) : cur + BigInt(rng.range(-9, 9));
    return writeU64(b, sizeAt, v);
  },
  // A keyword token replaced, removed or repeated.
  (rng, b) => {
    const tok = rng.pick(NAR_TOKENS);
    const offs = tokenOffsets(b, tok);
    if (offs.length === 0) return b;
    const at = rng.pick(offs);
    switch (rng.int(3)) {
      case 0:
        return Buffer.concat([b.subarray(0, at), rng.pick(NAR_TOKENS), b.subarray(at + tok.length)]);
      case 1:
        return Buffer.concat([b.subarray(0, at), b.subarray(at + tok.length)]);
      default:
        return insert(b, at, tok);
    }
  },
  // The root wrapped in n directories (depth limit 64, and far beyond it).
  (rng, b) => {
    if (b.length < MAGIC_TOKEN_BYTES) return b;
    const n = rng.pick([1, 2, 62, 63, 64, 65, 200, 20000]);
    const open = new NarTokenWriter().strs('(', 'type', 'directory', 'entry', '(', 'name', 'd', 'node').bytes();
    const close = new NarTokenWriter().strs(')', ')').bytes();
    const parts: Buffer[] = [b.subarray(0, MAGIC_TOKEN_BYTES)];
    for (let i = 0; i < n; i++) parts.push(open);
    parts.push(b.subarray(MAGIC_TOKEN_BYTES));
    for (let i = 0; i < n; i++) parts.push(close);
    return Buffer.concat(parts);
  },
  // A non-zero padding byte: the byte before an 8-aligned boundary.
  (rng, b) => {
    const slots = Math.floor(b.length / 8);
    if (slots === 0) return b;
    const out = Buffer.from(b);
    out[rng.int(slots) * 8 + 7] = rng.range(1, 255);
    return out;
  },
];

/**
 * A NAR as its sequence of strings (every NAR token, file contents included, is a
 * length-prefixed padded string), or undefined when the framing is broken.
 */
function narStrings(b: Buffer): Buffer[] | undefined {
  const out: Buffer[] = [];
  for (let at = 0; at < b.length; ) {
    if (at + 8 > b.length) return undefined;
    const n = b.readBigUInt64LE(at);
    const padded = (n + 7n) & ~7n;
    if (BigInt(at) + 8n + padded > BigInt(b.length)) return undefined;
    out.push(b.subarray(at + 8, at + 8 + Number(n)));
    at += 8 + Number(padded);
  }
  return out;
}

const WEIRD_NAMES = ['', '.', '..', '...', 'a/b', '/', 'a\0', '\0', 'x'.repeat(255), 'x'.repeat(256), 'A', 'Z', 'a', 'z', '~', '\u00e9', 'e\u0301', '__proto__', ' ']
  .map((s) => Buffer.from(s, 'utf8'))
  .concat([Buffer.from([0xff]), Buffer.from([0xc3]), Buffer.from([0xed, 0xa0, 0x80]), Buffer.from([0x61, 0x00])]);
const WEIRD_TARGETS = ['', '/', '.', '..', 'a\0b', 'x'.repeat(4095), 'x'.repeat(4096), '/nix/store/x', '\u00e9']
  .map((s) => Buffer.from(s, 'utf8'))
  .concat([Buffer.from([0xff, 0x2f]), Buffer.from([0])]);

/** The [start, end) string indices of every `entry ( … )`, at any depth. */
function entryRanges(toks: Buffer[]): Array<[number, number]> {
  // One pass with a stack of open parens (-1, or the index of the `entry` before it).
  // `(` / `)` also occur as names, targets or contents; good enough for a mutator.
  const out: Array<[number, number]> = [];
  const open: number[] = [];
  for (let i = 0; i < toks.length; i++) {
    const t = toks[i]!;
    if (t.equals(K.open)) open.push(i > 0 && toks[i - 1]!.equals(K.entry) ? i - 1 : -1);
    else if (t.equals(K.close) && open.length > 0) {
      const entry = open.pop()!;
      if (entry >= 0) out.push([entry, i + 1]);
    }
  }
  return out;
}

const K = { entry: Buffer.from('entry'), open: Buffer.from('('), close: Buffer.from(')'), name: Buffer.from('name'), target: Buffer.from('target'), contents: Buffer.from('contents') };
const NAR_KEYWORD_BYTES = NAR_KEYWORDS.map((k) => Buffer.from(k, 'latin1'));

/** Mutations of the string sequence; the result is re-framed with correct lengths and padding. */
const narStringMutators: Array<(rng: Prng, toks: Buffer[]) => void> = [
  // A name or a symlink target replaced by a weird one (or by its neighbour's name).
  (rng, toks) => {
    const key = rng.chance(0.7) ? K.name : K.target;
    const at = toks.flatMap((t, i) => (t.equals(key) && i + 1 < toks.length ? [i + 1] : []));
    if (at.length === 0) return;
    const i = rng.pick(at);
    const names = at.filter((j) => j !== i);
    if (key === K.name && names.length > 0 && rng.chance(0.3)) toks[i] = toks[rng.pick(names)]!;
    else toks[i] = rng.pick(key === K.name ? WEIRD_NAMES : WEIRD_TARGETS);
  },
  // Entries swapped, duplicated or removed (sort order, duplicates, empty directories).
  (rng, toks) => {
    const ranges = entryRanges(toks);
    if (ranges.length === 0) return;
    const [s, e] = rng.pick(ranges);
    const piece = toks.slice(s, e);
    switch (rng.int(3)) {
      case 0: {
        const later = ranges.filter(([s2]) => s2 >= e);
        if (later.length === 0) return;
        const [s2, e2] = rng.pick(later);
        const other = toks.slice(s2, e2);
        toks.splice(s2, e2 - s2, ...piece);
        toks.splice(s, e - s, ...other);
        return;
      }
      case 1:
        toks.splice(e, 0, ...piece);
        return;
      default:
        toks.splice(s, e - s);
    }
  },
  // A file's contents replaced by bytes of another length (valid: moves every narOffset after it).
  (rng, toks) => {
    const at = toks.flatMap((t, i) => (t.equals(K.contents) && i + 1 < toks.length ? [i + 1] : []));
    if (at.length === 0) return;
    toks[rng.pick(at)] = rng.chance(0.2) ? Buffer.alloc(0) : rng.bytes(rng.small(300));
  },
  // Any string replaced by a keyword, removed, or repeated.
  (rng, toks) => {
    if (toks.length === 0) return;
    const i = rng.int(toks.length);
    switch (rng.int(3)) {
      case 0:
        toks[i] = rng.pick(NAR_KEYWORD_BYTES);
        return;
      case 1:
        toks.splice(i, 1);
        return;
      default:
        toks.splice(i, 0, toks[i]!);
    }
  },
];

/** Chunk sizes for the streaming parse: 1-byte, small, large, or aligned ± 1. */
function chunking(rng: Prng, length: number): number[] {
  const mode = rng.int(4);
  const sizes: number[] = [];
  for (let left = length; left > 0; ) {
    let n: number;
    if (mode === 0 && length <= 64 << 10) n = 1;
    else if (mode === 1) n = rng.small(64);
    else if (mode === 2) n = rng.small(Math.max(1, length));
    else n = 8 * rng.range(1, 8) + rng.range(-1, 1);
    n = Math.max(1, Math.min(left, n));
    sizes.push(n);
    left -= n;
  }
  return sizes;
}

type Verdict = { ok: true; root: NarNode } | { ok: false; error: unknown };

function verdict(f: () => NarNode): Verdict {
  try {
    return { ok: true, root: f() };
  } catch (error) {
    return { ok: false, error };
  }
}

const codeOf = (e: unknown): string => (e instanceof OracleViolation ? 'OracleViolation' : ((e as { code?: string } | null)?.code ?? String(e)));

/** A handler that checks every callback against the input bytes. */
class CheckingHandler implements NarHandler {
  files = 0;
  private current: { size: number; narOffset: number; got: number } | undefined;
  constructor(private readonly input: Buffer) {}

  onFileStart(_path: readonly string[], size: number, _executable: boolean, narOffset: number): void {
    if (this.current !== undefined) throw violation('onFileStart before the previous file ended');
    // The file's bytes need not all be in the input (it may be truncated), its size field must.
    if (!Number.isSafeInteger(narOffset) || narOffset < 8 || narOffset > this.input.length) throw violation(`narOffset ${narOffset} outside the input`);
    if (this.input.readBigUInt64LE(narOffset - 8) !== BigInt(size)) throw violation(`the u64 before narOffset ${narOffset} is not the size ${size}`);
    this.current = { size, narOffset, got: 0 };
  }

  onFileContents(_path: readonly string[], chunk: Buffer, offsetInFile: number): void {
    const c = this.current;
    if (c === undefined) throw violation('onFileContents outside a file');
    if (offsetInFile !== c.got) throw violation(`contents at offset ${offsetInFile}, expected ${c.got}`);
    if (chunk.length === 0 || c.got + chunk.length > c.size) throw violation(`a contents chunk of ${chunk.length} bytes overruns the size ${c.size}`);
    const at = c.narOffset + offsetInFile;
    if (!chunk.equals(this.input.subarray(at, at + chunk.length))) throw violation(`contents handed over differ from the input at ${at}`);
    c.got += chunk.length;
  }

  onFileEnd(): void {
    const c = this.current;
    if (c === undefined) throw violation('onFileEnd outside a file');
    if (c.got !== c.size) throw violation(`file ended after ${c.got} of ${c.size} bytes`);
    this.current = undefined;
    this.files++;
  }
}

/** The listing, with contents taken from the input at each narOffset, as a NarTree. */
function treeOf(node: NarNode, input: Buffer, counter: { files: number }): NarTree {
  switch (node.type) {
    case 'regular': {
      counter.files++;
      const { narOffset, size } = node;
      if (!Number.isSafeInteger(narOffset) || !Number.isSafeInteger(size) || narOffset < 8 || narOffset + size > input.length) {
        throw violation(`accepted NAR has a file with narOffset ${narOffset} size ${size} outside its ${input.length} bytes`);
      }
      if (input.readBigUInt64LE(narOffset - 8) !== BigInt(size)) throw violation(`accepted NAR: the u64 before narOffset ${narOffset} is not ${size}`);
      return { type: 'regular', contents: input.subarray(narOffset, narOffset + size), executable: node.executable };
    }
    case 'symlink':
      return { type: 'symlink', target: Buffer.from(node.target, 'latin1') };
    case 'directory': {
      // Names are byte strings: written back as their bytes.
      const byteEntries: Array<[Buffer, NarTree]> = [];
      for (const [name, child] of node.entries) byteEntries.push([Buffer.from(name, 'latin1'), treeOf(child, input, counter)]);
      return { type: 'directory', entries: {}, byteEntries };
    }
  }
}

const narTarget: FuzzTarget = {
  name: 'nar',
  allows: (code: ErrorCode) => code.startsWith('ERR_NAR_'),
  dictionary: NAR_DICTIONARY,
  mutate(rng, b) {
    const toks = rng.chance(0.5) ? narStrings(b) : undefined;
    if (toks === undefined) return rng.pick(narMutators)(rng, b);
    rng.pick(narStringMutators)(rng, toks);
    const w = new NarTokenWriter();
    for (const t of toks) w.str(t);
    return w.bytes();
  },
  run(input, rng) {
    const whole = verdict(() => parseNar(input));
    const handler = new CheckingHandler(input);
    const sizes = chunking(rng, input.length);
    const streamed = verdict(() => {
      const p = new NarParser(handler);
      let off = 0;
      for (const n of sizes) {
        p.write(input.subarray(off, off + n));
        off += n;
      }
      if (p.bytesSeen !== input.length) throw violation(`bytesSeen ${p.bytesSeen} after ${input.length} bytes`);
      return p.end();
    });
    if (!streamed.ok && streamed.error instanceof OracleViolation) throw streamed.error;
    if (whole.ok !== streamed.ok || (!whole.ok && !streamed.ok && codeOf(whole.error) !== codeOf(streamed.error))) {
      throw violation(
        `verdict depends on chunking: whole ${whole.ok ? 'accepted' : codeOf(whole.error)}, ` +
          `in ${sizes.length} chunks ${streamed.ok ? 'accepted' : codeOf(streamed.error)}`,
      );
    }
    if (!whole.ok) throw whole.error;
    if (!streamed.ok) throw streamed.error; // unreachable
    if (!listingsEqual(whole.root, streamed.root) || !listingsEqual(streamed.root, whole.root)) {
      throw violation('whole and chunked parses give different listings');
    }
    checkAcceptedNar(input, whole.root, handler.files);
  },
};

/**
 * The checks of an accepted NAR against its listing `root` (exported for the oracle's own
 * tests): file offsets and sizes within the input, canonical bytes, .ls round trip, and
 * `filesEnded` (onFileEnd calls) equal to the number of regular files.
 */
export function checkAcceptedNar(input: Buffer, root: NarNode, filesEnded: number): void {
  const counter = { files: 0 };
  const tree = treeOf(root, input, counter);
  if (counter.files !== filesEnded) throw violation(`listing has ${counter.files} files, the handler saw ${filesEnded} end`);
  if (!writeNar(tree).equals(input)) throw violation('accepted NAR is not canonical: writeNar of its listing differs');
  let again: NarNode;
  try {
    again = parseListingJson(listingToJson(root));
  } catch (e) {
    throw violation(`the listing of an accepted NAR is rejected as .ls JSON: ${codeOf(e)} ${(e as Error).message}`);
  }
  if (!listingsEqual(root, again)) throw violation('the listing of an accepted NAR changes through .ls JSON');
}

// ===========================================================================
// narinfo

const NARINFO_KEYS = ['StorePath', 'URL', 'Compression', 'FileHash', 'FileSize', 'NarHash', 'NarSize', 'References', 'Deriver', 'Sig', 'CA', 'System'];
const NARINFO_DICTIONARY = [...NARINFO_KEYS.map((k) => `${k}: `), ': ', ':', '\n', '\r\n', '/nix/store/', 'sha256:', 'sha512-', 'unknown-deriver', 'fixed:r:sha256:', 'text:sha256:', 'fixed:git:sha1:'].map((s) => Buffer.from(s, 'utf8'));

function hashVariants(value: string): string[] {
  let h: Hash;
  try {
    h = parseHash(value);
  } catch {
    return [];
  }
  const other: Hash = { algo: h.algo === 'sha256' ? 'sha512' : 'sha256', digest: Buffer.alloc(h.algo === 'sha256' ? 64 : 32, 7) };
  return [
    formatHash(h, 'base16'), formatHash(h, 'base64'), formatHash(h, 'sri'), formatHash(h, 'nix32', false),
    formatHash(other, 'nix32'), `${formatHash(h, 'base16')}00`, formatHash(h, 'base16').slice(0, -2), `md5:${formatHash(h, 'base16', false)}`,
    `sha256:${'z'.repeat(52)}`, `sha256-${'A'.repeat(43)}=`, 'sha256:', 'sha256-', 'sha256',
  ];
}

const NARINFO_WEIRD_VALUES = [
  '', ' ', ':', '/nix/store/', '/nix/store/x', '/nix/store/00000000000000000000000000000000-', '/nix/store/eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee-x',
  `/nix/store/00000000000000000000000000000000-${'n'.repeat(212)}`, '00000000000000000000000000000000-..', '00000000000000000000000000000000-.-x',
  'unknown-deriver', 'fixed:r:sha256:', 'fixed:r:sha1:0000000000000000000000000000000000000000', 'text:sha1:00', 'fixed:git:sha1:00', 'fixed:', 'nar:sha256:00',
  '\u0000', '\ufffd', 'a'.repeat(1 << 16),
];

function narinfoLines(text: string): string[] {
  const lines = text.split('\n');
  if (lines[lines.length - 1] === '') lines.pop();
  return lines;
}

const narinfoMutators: Array<(rng: Prng, lines: string[]) => string[]> = [
  // A number field set to an interesting decimal.
  (rng, lines) => {
    const i = rng.int(lines.length);
    const key = rng.pick(['NarSize', 'FileSize']);
    const at = lines.findIndex((l) => l.startsWith(`${key}:`));
    lines[at >= 0 ? at : i] = `${key}: ${rng.pick(INTERESTING_DECIMALS)}`;
    return lines;
  },
  // A line dropped, duplicated, or two lines swapped.
  (rng, lines) => {
    const i = rng.int(lines.length);
    const j = rng.int(lines.length);
    switch (rng.int(3)) {
      case 0:
        lines.splice(i, 1);
        break;
      case 1:
        lines.splice(i, 0, lines[i]!);
        break;
      default:
        [lines[i], lines[j]] = [lines[j]!, lines[i]!];
    }
    return lines;
  },
  // A value replaced: by another line's value, an encoding variant of a hash, or a weird value.
  (rng, lines) => {
    const i = rng.int(lines.length);
    const line = lines[i]!;
    const colon = line.indexOf(':');
    const key = colon < 0 ? rng.pick(NARINFO_KEYS) : line.slice(0, colon);
    const value = colon < 0 ? line : line.slice(colon + 2);
    const donor = lines[rng.int(lines.length)]!;
    const choices = [...hashVariants(value), ...NARINFO_WEIRD_VALUES, donor.slice(donor.indexOf(':') + 2), `${value} ${value}`];
    lines[i] = `${key}: ${rng.pick(choices)}`;
    return lines;
  },
  // A key renamed, the separator broken, or CR line ends.
  (rng, lines) => {
    const i = rng.int(lines.length);
    const line = lines[i]!;
    const colon = line.indexOf(':');
    switch (rng.int(4)) {
      case 0:
        lines[i] = `${rng.pick(NARINFO_KEYS)}${colon < 0 ? ': ' : line.slice(colon)}`;
        break;
      case 1:
        lines[i] = colon < 0 ? line : `${line.slice(0, colon)}:${line.slice(colon + 2)}`;
        break;
      case 2:
        lines[i] = `${line}\r`;
        break;
      default:
        lines[i] = colon < 0 ? line : `${line.slice(0, colon)}${line.slice(colon + 1)}`;
    }
    return lines;
  },
];

function narinfoKey(ni: NarInfo): unknown {
  return {
    storePath: storePathFull(ni.storePath),
    url: ni.url,
    compression: ni.compression,
    fileHash: ni.fileHash === undefined ? undefined : formatHash(ni.fileHash, 'base16'),
    fileSize: ni.fileSize === 0 ? undefined : ni.fileSize, // formatNarInfo omits FileSize 0, as Nix
    narHash: formatHash(ni.narHash, 'base16'),
    narSize: ni.narSize,
    references: ni.references.map(storePathFull),
    deriver: ni.deriver === undefined ? undefined : storePathFull(ni.deriver),
    sigs: ni.sigs,
    ca: ni.ca,
    system: ni.system,
  };
}

const narinfoTarget: FuzzTarget = {
  name: 'narinfo',
  allows: (code: ErrorCode) => code === 'ERR_NARINFO_PARSE' || code === 'ERR_NARINFO_CORRUPT',
  dictionary: NARINFO_DICTIONARY,
  mutate(rng, b) {
    const text = b.toString('utf8');
    const lines = narinfoLines(text);
    if (lines.length === 0) return b;
    const out = rng.pick(narinfoMutators)(rng, lines).join('\n');
    return Buffer.from(rng.chance(0.9) ? `${out}\n` : out, 'utf8');
  },
  run(input) {
    const ni = parseNarInfo(input.toString('utf8'), 'fuzz');
    if (!Number.isSafeInteger(ni.narSize) || ni.narSize <= 0) throw violation(`accepted NarSize ${ni.narSize}`);
    if (ni.fileSize !== undefined && (!Number.isSafeInteger(ni.fileSize) || ni.fileSize < 0)) throw violation(`accepted FileSize ${ni.fileSize}`);
    let again: NarInfo;
    try {
      again = parseNarInfo(formatNarInfo(ni), 'fuzz-again');
    } catch (e) {
      throw violation(`formatNarInfo of an accepted narinfo is rejected: ${codeOf(e)} ${(e as Error).message}`);
    }
    if (!isDeepStrictEqual(narinfoKey(ni), narinfoKey(again))) throw violation('narinfo changes through formatNarInfo → parseNarInfo');
  },
};

// ===========================================================================
// .ls listing JSON

const LS_DICTIONARY = [
  '{', '}', '[', ']', ',', ':', '"', '\\', '\\u0000', '\\ud800', '"type"', '"regular"', '"directory"', '"symlink"', '"entries"', '"size"',
  '"narOffset"', '"executable"', '"target"', '"version"', '"root"', 'true', 'false', 'null', '1e400', '-0', '9007199254740993',
].map((s) => Buffer.from(s, 'utf8'));

const LS_WEIRD_VALUES: unknown[] = [
  null, true, false, 0, -1, 1.5, 2 ** 53, 2 ** 53 - 1, 2 ** 63, 1e308, -0, '', 'x', '/', 'a\u0000b', '\ud800', 'é', [], {}, [1], { type: 'regular' },
  { type: 'directory', entries: [] }, { type: 'symlink', target: 'x'.repeat(4096) }, { type: 'regular', size: 1, narOffset: 0 },
];
const LS_WEIRD_NAMES = ['', '.', '..', 'a/b', 'a\u0000b', '\ud800', '__proto__', 'constructor', 'toString', 'type', '0', '1', '10', 'n'.repeat(256), 'é', 'e\u0301'];

type Json = null | boolean | number | string | Json[] | { [k: string]: Json };

/** Every object/array in the document, with the place to write a replacement of each member. */
function containers(v: Json, out: Array<Json[] | { [k: string]: Json }>, depth = 0): void {
  if (depth > 200 || v === null || typeof v !== 'object') return;
  out.push(v);
  for (const c of Array.isArray(v) ? v : Object.values(v)) containers(c, out, depth + 1);
}

function deepListing(n: number, leaf: string): string {
  return `{"version":1,"root":${'{"type":"directory","entries":{"d":'.repeat(n)}${leaf}${'}}'.repeat(n)}}`;
}

/** JSON text of a mutated document, or undefined for a cycle or a nesting too deep for JSON.stringify. */
function stringify(doc: Json): string | undefined {
  try {
    return JSON.stringify(doc);
  } catch {
    return undefined;
  }
}

const lsMutators: Array<(rng: Prng, text: string) => string | undefined> = [
  // A member of some object/array replaced, removed or added (JSON-aware).
  (rng, text) => {
    let doc: Json;
    try {
      doc = JSON.parse(text) as Json;
    } catch {
      return undefined;
    }
    const all: Array<Json[] | { [k: string]: Json }> = [];
    containers(doc, all);
    if (all.length === 0) return undefined;
    const c = rng.pick(all);
    const weird = (): Json => JSON.parse(JSON.stringify(rng.pick(LS_WEIRD_VALUES))) as Json;
    if (Array.isArray(c)) {
      if (c.length > 0 && rng.chance(0.5)) c.splice(rng.int(c.length), 1);
      else c.push(weird());
      return stringify(doc);
    }
    const keys = Object.keys(c);
    switch (rng.int(4)) {
      case 0:
        if (keys.length > 0) c[rng.pick(keys)] = weird();
        break;
      case 1:
        if (keys.length > 0) delete c[rng.pick(keys)];
        break;
      case 2: {
        // A new or renamed key; defineProperty keeps "__proto__" an own key.
        const key = rng.chance(0.5) ? rng.pick(LS_WEIRD_NAMES) : rng.pick(['type', 'size', 'narOffset', 'executable', 'target', 'entries', 'version', 'root']);
        const from = keys.length > 0 && rng.chance(0.5) ? rng.pick(keys) : undefined;
        const value = from === undefined ? weird() : c[from]!;
        if (from !== undefined) delete c[from];
        Object.defineProperty(c, key, { value, enumerable: true, writable: true, configurable: true });
        break;
      }
      default:
        // A child node moved somewhere else.
        if (keys.length > 0) c[rng.pick(keys)] = rng.pick(all) as Json;
    }
    return stringify(doc);
  },
  // A number literal replaced by an interesting one (the text, so 1e400 and -0 survive).
  (rng, text) => {
    const m = matchNear(rng, text, /-?[0-9][0-9.eE+-]*/g);
    if (m === undefined) return undefined;
    const by = rng.pick([...INTERESTING_DECIMALS.filter((d) => /^-?[0-9]/.test(d)), '1e400', '-0', '0.0', '1E2', '1.0', '9007199254740993', '-9007199254740993']);
    return text.slice(0, m.index) + by + text.slice(m.index + m[0].length);
  },
  // Deep nesting: of directories (limit 64) and of raw JSON arrays/objects.
  (rng, text) => {
    const n = rng.pick([62, 63, 64, 65, 1000, 100000]);
    switch (rng.int(3)) {
      case 0:
        return deepListing(n, '{"type":"regular","size":0}');
      case 1:
        return `${'['.repeat(n)}${']'.repeat(rng.chance(0.5) ? n : 0)}`;
      default: {
        const at = text.indexOf('"entries":{');
        if (at < 0) return undefined;
        const cut = at + '"entries":{'.length;
        return `${text.slice(0, cut)}"x":${'{"a":'.repeat(n)}1${'}'.repeat(n)},${text.slice(cut)}`;
      }
    }
  },
];

function checkListing(node: NarNode, depth: number): void {
  if (depth >= NAR_MAX_DEPTH) throw violation(`accepted listing nests to depth ${depth}`);
  switch (node.type) {
    case 'regular':
      if (!Number.isSafeInteger(node.size) || node.size < 0 || !Number.isSafeInteger(node.narOffset) || node.narOffset < 0) {
        throw violation(`accepted listing has size ${node.size} narOffset ${node.narOffset}`);
      }
      if (typeof node.executable !== 'boolean') throw violation('accepted listing has a non-boolean executable');
      return;
    case 'symlink':
      if (typeof node.target !== 'string' || !isByteString(node.target) || narTargetProblem(Buffer.from(node.target, 'latin1')) !== undefined) throw violation('accepted listing has an invalid target');
      return;
    case 'directory': {
      if (!(node.entries instanceof Map)) throw violation('accepted listing has entries that are not a Map');
      let prev: Buffer | undefined;
      for (const [name, child] of node.entries) {
        const bytes = Buffer.from(name, 'latin1');
        if (!isByteString(name) || narNameProblem(bytes) !== undefined) throw violation(`accepted listing has the name ${JSON.stringify(name)}`);
        if (prev !== undefined && Buffer.compare(prev, bytes) >= 0) throw violation('accepted listing has entries out of bytewise order');
        prev = bytes;
        checkListing(child, depth + 1);
      }
    }
  }
}

const lsTarget: FuzzTarget = {
  name: 'ls',
  allows: (code: ErrorCode) => code === 'ERR_LISTING_PARSE',
  dictionary: LS_DICTIONARY,
  mutate(rng, b) {
    const out = rng.pick(lsMutators)(rng, b.toString('utf8'));
    return out === undefined ? b : Buffer.from(out, 'utf8');
  },
  run(input) {
    // The bytes of a .ls, as narfs reads them (names need not be UTF-8).
    const root = parseListingJson(input);
    checkListing(root, 0);
    let again: NarNode;
    try {
      again = parseListingJson(listingToJson(root));
    } catch (e) {
      throw violation(`listingToJson of an accepted listing is rejected: ${codeOf(e)} ${(e as Error).message}`);
    }
    if (!listingsEqual(root, again) || !listingsEqual(again, root)) throw violation('listing changes through listingToJson → parseListingJson');
  },
};

// ===========================================================================
// .drv ATerm

const DRV_DICTIONARY = ['Derive(', 'DrvWithVersion("xp-dyn-drv",', 'DrvWithVersion("x",', '(', ')', '[', ']', ',', '"', '\\', '\\"', '\\n', '""', '("out","","","")', '/nix/store/'].map((s) => Buffer.from(s, 'utf8'));

const drvMutators: Array<(rng: Prng, text: string) => string | undefined> = [
  // Deep nesting inside a list or tuple (the reader recurses).
  (rng, text) => {
    const open = matchNear(rng, text, /[[(]/g);
    if (open === undefined) return undefined;
    const at = open.index + 1;
    const n = rng.pick([63, 64, 65, 66, 1000, 100000]);
    const balanced = rng.chance(0.7);
    const nested = `${'['.repeat(n)}${balanced ? ']'.repeat(n) : ''}`;
    return text.slice(0, at) + nested + (text[at] === ']' || text[at] === ')' ? '' : ',') + text.slice(at);
  },
  // Escapes: a backslash or quote at a random place, or before a quote / at the end.
  (rng, text) => {
    const quote = rng.chance(0.5) ? matchNear(rng, text, /"/g) : undefined;
    const at = quote !== undefined ? quote.index : rng.int(text.length + 1);
    return text.slice(0, at) + rng.pick(['\\', '"', '\\\\', '\\"', '\\n']) + text.slice(at);
  },
  // A string's contents replaced.
  (rng, text) => {
    const m = matchNear(rng, text, /"(?:[^"\\]|\\.)*"/g);
    if (m === undefined) return undefined;
    const by = rng.pick(['""', '"out"', '"/nix/store/x"', '"relative"', '"\\', `"${'x'.repeat(1 << 16)}"`, '"\u0000"', '"\ud800"']);
    return text.slice(0, m.index) + by + text.slice(m.index + m[0].length);
  },
  // Punctuation swapped: ( ↔ [, ) ↔ ], a comma removed or doubled.
  (rng, text) => {
    const punct = matchNear(rng, text, /[()[\],]/g);
    if (punct === undefined) return undefined;
    const at = punct.index;
    const swap: Record<string, string> = { '(': '[', '[': '(', ')': ']', ']': ')', ',': rng.pick(['', ',,', ')']) };
    return text.slice(0, at) + swap[text[at]!]! + text.slice(at + 1);
  },
  // Another header.
  (rng, text) => {
    if (!text.startsWith('Derive(')) return undefined;
    return rng.pick(['DrvWithVersion("xp-dyn-drv",', 'DrvWithVersion("other",', 'DrvWithVersion(', 'Derive', 'derive(']) + text.slice('Derive('.length);
  },
];

const drvTarget: FuzzTarget = {
  name: 'drv',
  allows: (code: ErrorCode) => code === 'ERR_DERIVATION_PARSE',
  dictionary: DRV_DICTIONARY,
  mutate(rng, b) {
    const out = rng.pick(drvMutators)(rng, b.toString('utf8'));
    return out === undefined ? b : Buffer.from(out, 'utf8');
  },
  run(input) {
    const text = input.toString('utf8');
    const drv = parseDerivation(text);
    const problem = drvShapeProblem(text);
    if (problem !== undefined) throw violation(`accepted a derivation Nix's grammar rejects: ${problem}`);
    if (drv.outputs.length === 0) throw violation('accepted derivation has no outputs');
    const ids = new Set<string>();
    for (const o of drv.outputs) {
      if (typeof o.id !== 'string' || o.id === '' || ids.has(o.id)) throw violation(`accepted derivation has the output id ${JSON.stringify(o.id)}`);
      ids.add(o.id);
      if (o.path !== undefined && (typeof o.path !== 'string' || !o.path.startsWith('/'))) throw violation(`accepted derivation has the output path ${JSON.stringify(o.path)}`);
    }
    for (const s of [drv.system, drv.builder, ...drv.args, ...drv.inputSrcs, ...drv.env.flat()]) {
      if (typeof s !== 'string') throw violation('accepted derivation has a non-string field');
    }
  },
};

// ===========================================================================
// narfs index (binary)

/** Varints at the limits (0, 1 byte, 2 bytes, 2^53 - 1, non-minimal, too long) and node types. */
const INDEX_DICTIONARY = [
  Buffer.from('NARFSIX\x01', 'latin1'),
  Buffer.from([0x00]), Buffer.from([0x01]), Buffer.from([0x02]), Buffer.from([0x03]), Buffer.from([0x04]),
  Buffer.from([0x7f]), Buffer.from([0x80, 0x01]), Buffer.from([0x80, 0x00]), Buffer.from([0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x0f]),
  Buffer.from([0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x10]), Buffer.from([0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]),
  Buffer.from([0x01, 0x2e]), Buffer.from([0x02, 0x2e, 0x2e]), Buffer.from([0x03, 0x61, 0x2f, 0x62]), Buffer.alloc(32),
];

const indexTarget: FuzzTarget = {
  name: 'index',
  allows: (code: ErrorCode) => code === 'ERR_INDEX_PARSE',
  dictionary: INDEX_DICTIONARY,
  run(input) {
    const idx = parseNarIndex(input);
    let again: Buffer;
    try {
      again = encodeNarIndex(idx);
    } catch (e) {
      throw violation(`encodeNarIndex of an accepted index throws: ${codeOf(e)} ${(e as Error).message}`);
    }
    if (!again.equals(input)) throw violation('an accepted index does not encode back to its bytes');
    let end = 0;
    for (const f of idx.files) {
      if (f.size <= 0 || f.narOffset < end || f.narOffset + f.size > idx.narSize) throw violation(`file at ${f.narOffset} (size ${f.size}) overlaps or leaves the NAR`);
      const n = chunkCount(f.size, idx.chunkSize);
      const hashes = n <= 1 ? 32 : idx.wholeOnly ? 0 : 32 * n; // a whole-only tree has no chunk hashes
      if (f.sha256.length !== 32 || f.chunkHashes.length !== hashes) throw violation(`file at ${f.narOffset} has malformed hashes`);
      if (findFile(idx, f.narOffset) !== f || findFile(idx, f.narOffset + f.size - 1) !== f) throw violation(`findFile misses the file at ${f.narOffset}`);
      end = f.narOffset + f.size;
    }
    const fr = idx.frames;
    if (fr !== undefined) {
      for (let i = 1; i < fr.narOffsets.length; i++) {
        if (!(fr.narOffsets[i]! > fr.narOffsets[i - 1]!) || !(fr.fileOffsets[i]! > fr.fileOffsets[i - 1]!)) throw violation('frames do not ascend');
      }
      if (fr.narOffsets.at(-1)! >= idx.narSize || fr.fileOffsets.at(-1)! >= fr.fileSize) throw violation('a frame starts beyond NarSize or FileSize');
    }
  },
};

export const FUZZ_TARGETS: Readonly<Record<FuzzTargetName, FuzzTarget>> = {
  nar: narTarget,
  narinfo: narinfoTarget,
  ls: lsTarget,
  drv: drvTarget,
  index: indexTarget,
};
