/**
 * A NarfsError as plain JSON, for the hops where an error leaves its thread or process:
 * worker thread → daemon (postMessage) and daemon → CLI (the control socket's JSON lines).
 *
 * Format: `{ code, message, hint, details? }`, all JSON-safe. Invariants: `code`, `hint`
 * and `details` arrive as they left, so a command run through the daemon reports exactly
 * what it reports alone; a code the receiver does not know (another version, a corrupt
 * line) becomes the receiver's fallback code, never a blind cast; `details` is copied
 * value by value into plain JSON (bounded in depth and size; Errors become their code and
 * message; keys that name secrets are dropped — details never carry secrets anyway).
 */
import { ERROR_CATALOG, NarfsError, toNarfsError, type ErrorCode } from '../errors.js';

export interface WireError {
  code: string;
  message: string;
  hint: string;
  details?: Record<string, unknown>;
}

const MAX_TEXT = 8192;
const MAX_ITEMS = 1000;
const MAX_DEPTH = 6;
const SECRET_KEY = /secret|token|passw|authori[sz]ation|cookie|credential|private.?key/i;

/** `e` as a WireError; anything that is not a NarfsError gets `fallback` as its code. */
export function toWireError(e: unknown, fallback: ErrorCode = 'ERR_INTERNAL'): WireError {
  const err = toNarfsError(e, fallback);
  const wire: WireError = { code: err.code, message: text(err.message), hint: text(err.hint) };
  const details = err.details === undefined ? undefined : jsonSafe(err.details, 0);
  if (details && typeof details === 'object' && !Array.isArray(details)) wire.details = details as Record<string, unknown>;
  return wire;
}

/** Rebuilds the NarfsError of a WireError received from elsewhere; never trusts its shape. */
export function fromWireError(w: unknown, fallback: ErrorCode, options: { cause?: unknown } = {}): NarfsError {
  const o = (w !== null && typeof w === 'object' ? w : {}) as Record<string, unknown>;
  const raw = typeof o.code === 'string' ? o.code : undefined;
  const known = raw !== undefined && Object.hasOwn(ERROR_CATALOG, raw);
  const code = (known ? raw : fallback) as ErrorCode;
  let message = typeof o.message === 'string' ? text(o.message) : 'no message';
  if (!known) message = `${raw === undefined ? 'an error without a code' : `unknown error code ${JSON.stringify(raw.slice(0, 64))}`}: ${message}`;
  const details = o.details !== null && typeof o.details === 'object' && !Array.isArray(o.details)
    ? jsonSafe(o.details, 0) as Record<string, unknown> : undefined;
  return new NarfsError(code, message, {
    ...(typeof o.hint === 'string' && o.hint !== '' ? { hint: text(o.hint) } : {}),
    ...(details ? { details } : {}),
    ...(options.cause === undefined ? {} : { cause: options.cause }),
  });
}

/** A plain-JSON copy of `v` (what JSON.stringify would keep, bounded), or undefined. */
export function jsonSafe(v: unknown, depth = 0): unknown {
  switch (typeof v) {
    case 'string': return text(v);
    case 'number': return Number.isFinite(v) ? v : String(v);
    case 'boolean': return v;
    case 'bigint': return v.toString();
    case 'undefined': case 'function': case 'symbol': return undefined;
  }
  if (v === null) return null;
  if (depth >= MAX_DEPTH) return '[…]';
  if (v instanceof Error) {
    const code = (v as { code?: unknown }).code;
    return { ...(typeof code === 'string' ? { code } : {}), message: text(v.message) };
  }
  if (Array.isArray(v)) {
    return v.slice(0, MAX_ITEMS).map((x) => jsonSafe(x, depth + 1) ?? null);
  }
  if (v instanceof Date) return v.toISOString();
  if (Buffer.isBuffer(v) || ArrayBuffer.isView(v)) return `[${(v as ArrayBufferView).byteLength} bytes]`;
  const out: Record<string, unknown> = {};
  let n = 0;
  for (const [k, x] of Object.entries(v as Record<string, unknown>)) {
    if (SECRET_KEY.test(k)) continue;
    if (n++ >= MAX_ITEMS) break;
    const y = jsonSafe(x, depth + 1);
    if (y !== undefined) out[k] = y;
  }
  return out;
}

function text(s: string): string {
  return s.length > MAX_TEXT ? `${s.slice(0, MAX_TEXT)}…` : s;
}
