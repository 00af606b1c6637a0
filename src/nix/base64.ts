/**
 * Strict standard base64 (RFC 4648 §4, with `=` padding), as Nix writes it for hashes,
 * keys and signatures (`base64Encode` in src/libutil/util.cc / base-n.cc).
 *
 * Invariant: `decodeBase64Strict` accepts exactly the strings `encodeBase64` can produce
 * (canonical padding, zero trailing bits), so a textual value has one decoding and one
 * spelling. Node's own `Buffer.from(s, 'base64')` silently skips junk; never use it on
 * untrusted input without this check.
 */

const B64_RE = /^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/;

export function encodeBase64(bytes: Uint8Array): string {
  return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString('base64');
}

/** Decodes canonical base64, or returns undefined for anything else. Never throws. */
export function decodeBase64Strict(s: string): Buffer | undefined {
  if (!B64_RE.test(s)) return undefined;
  const out = Buffer.from(s, 'base64');
  // Non-zero bits in the last symbol before the padding make a non-canonical spelling.
  if (out.toString('base64') !== s) return undefined;
  return out;
}

/** Length of the padded base64 spelling of `byteLength` bytes. */
export function base64Length(byteLength: number): number {
  return Math.ceil(byteLength / 3) * 4;
}
