/**
 * eachLimited: runs `fn` over `items` in order with at most `limit` calls in flight (a
 * bounded worker pool). A worker takes the next item only while `stop()` is false, so an
 * aborted run starts nothing new; a call that throws rejects the whole run (the other
 * workers finish their current item). Resolves with the number of items started.
 */
export async function eachLimited<T>(
  items: readonly T[], limit: number, fn: (item: T, index: number) => Promise<void>, stop: () => boolean = () => false,
): Promise<number> {
  let next = 0;
  const worker = async (): Promise<void> => {
    while (next < items.length && !stop()) {
      const i = next++;
      await fn(items[i]!, i);
    }
  };
  await Promise.all(Array.from({ length: Math.max(1, limit) }, worker));
  return next;
}
