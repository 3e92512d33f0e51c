/**
 * The simulator's agenda: events ordered by simulated time, then by the order they were scheduled,
 * so a run is a pure function of its seed. A binary heap keeps scheduling O(log n).
 */
export type Scheduled = { atMs: number; seq: number; run: () => void; cancelled: boolean };

export const createAgenda = () => {
  const heap: Scheduled[] = [];
  let seq = 0;

  const before = (a: Scheduled, b: Scheduled): boolean =>
    a.atMs < b.atMs || (a.atMs === b.atMs && a.seq < b.seq);

  const push = (atMs: number, run: () => void): Scheduled => {
    const item: Scheduled = { atMs, seq: seq++, run, cancelled: false };
    heap.push(item);
    let index = heap.length - 1;
    while (index > 0) {
      const parent = (index - 1) >> 1;
      if (!before(heap[index]!, heap[parent]!)) break;
      [heap[index], heap[parent]] = [heap[parent]!, heap[index]!];
      index = parent;
    }
    return item;
  };

  const pop = (): Scheduled | undefined => {
    const top = heap[0];
    const last = heap.pop();
    if (heap.length > 0 && last) {
      heap[0] = last;
      let index = 0;
      for (;;) {
        const left = 2 * index + 1;
        const right = left + 1;
        let smallest = index;
        if (left < heap.length && before(heap[left]!, heap[smallest]!)) smallest = left;
        if (right < heap.length && before(heap[right]!, heap[smallest]!)) smallest = right;
        if (smallest === index) break;
        [heap[index], heap[smallest]] = [heap[smallest]!, heap[index]!];
        index = smallest;
      }
    }
    return top;
  };

  /** The next event that was not cancelled, without removing it. */
  const peek = (): Scheduled | undefined => {
    while (heap.length > 0 && heap[0]!.cancelled) pop();
    return heap[0];
  };

  return { push, pop, peek, size: () => heap.length };
};
