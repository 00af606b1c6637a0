/**
 * Sealed buffers: ArrayBuffers that a chunk job (chunk-job.ts) left to this thread alone:
 * decoded seekable zstd frames, and ranged bodies back from a verify worker (their
 * transfer detached every other reference). Nobody writes into a sealed buffer again, so a
 * holder may keep a view of it instead of a copy (lazy-store.ts `keepable`); such a view
 * keeps the whole buffer alive, which a holder's memory bound must count.
 *
 * Why a registry and not a SharedArrayBuffer: decoded frames used to lie in
 * SharedArrayBuffers, which V8 backs with fresh pages on every allocation (glibc cannot
 * reuse them as it reuses freed heap memory). On the bench VM, filling 560 MiB of fresh
 * 4 MiB SharedArrayBuffers cost 1.9-2.3 s of CPU, 4 MiB plain ArrayBuffers 0.2 s; a full
 * read of the bench closure (scenario 11, seekable) spent ~1.2 CPU-s less in the decode
 * workers. Keeping views of verified bodies instead of copies saved the JS thread a copy of
 * every file of a `Compression: none` read (bench/RESULTS.md). A WeakSet holds no buffer
 * alive.
 */
const sealed = new WeakSet<ArrayBufferLike>();

/** Marks `buf` as written for good: its bytes never change again. */
export function seal(buf: ArrayBufferLike): void {
  sealed.add(buf);
}

/** Whether `buf` was sealed (a view of it may be kept instead of a copy). */
export function isSealed(buf: ArrayBufferLike): boolean {
  return sealed.has(buf);
}
