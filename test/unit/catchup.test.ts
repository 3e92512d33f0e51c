/**
 * Catch-up pieces at unit level (issue 9, items 2 and 4): the incarnation rule of the leader's
 * progress, byte-bounded AppendEntries, frames bounded when a tick's messages exceed one, and the
 * size checks at option time and at `set`.
 */
import { decode } from '@msgpack/msgpack';
import { afterEach, describe, expect, it } from 'vitest';
import { createMemoryTransport, type DiskeyvalNode, diskeyval } from '../../src/index.js';
import {
  createFrameDecoder,
  createFrameEncoder,
  encodeFrames,
  FRAME_HEADER_BYTES,
  frameBodyLength,
} from '../../src/io/codec.js';
import type { Entry, RaftMessage } from '../../src/machines/messages.js';
import {
  admitIncarnation,
  createProgress,
  onAppendAccepted,
  onAppendRejected,
  onAppendSent,
  onHeartbeatAnswered,
  onHeartbeatSent,
} from '../../src/machines/progress.js';
import { createLog, sliceBounded } from '../../src/machines/raft-log.js';

/** A follower in replicate at match 50 of a leader at 100, heard as incarnation 7. */
const replicating = () => {
  const progress = createProgress(100, 7);
  onAppendAccepted(progress, 50);
  onAppendSent(progress, 60);
  expect(progress).toMatchObject({ state: 'replicate', matchIndex: 50, nextIndex: 61, incarnation: 7 });
  return progress;
};

describe('progress: incarnations', () => {
  it('an answer from a higher incarnation resets the progress: match 0, probe from the leader end', () => {
    const progress = replicating();
    expect(admitIncarnation(progress, 8, 100)).toBe('restarted');
    expect(progress).toMatchObject({
      state: 'probe',
      matchIndex: 0,
      nextIndex: 101,
      inflight: [],
      probeSent: false,
      incarnation: 8,
    });
    // Then the restarted follower's rejection below the old match is heeded (the old rule ignored it).
    expect(onAppendRejected(progress, 100, 1)).toBe(true);
    expect(progress.nextIndex).toBe(1);
  });

  it('an answer from a lower incarnation is stale and changes nothing', () => {
    const progress = replicating();
    const before = structuredClone(progress);
    expect(admitIncarnation(progress, 6, 100)).toBe('stale');
    expect(progress).toEqual(before);
  });

  it('answers of the current incarnation, duplicated or reordered, never reset it', () => {
    const progress = replicating();
    for (let copy = 0; copy < 3; copy += 1) expect(admitIncarnation(progress, 7, 100)).toBe('current');
    expect(progress.matchIndex).toBe(50);
    // Within one incarnation a rejection at or below the match is stale, as before.
    expect(onAppendRejected(progress, 40, 1)).toBe(false);
    expect(progress.matchIndex).toBe(50);
    expect(onAppendAccepted(progress, 45)).toBe(false);
    expect(progress.matchIndex).toBe(50);
  });

  it("a new leader's first answer only records the incarnation", () => {
    const progress = createProgress(100);
    expect(admitIncarnation(progress, 5, 100)).toBe('current');
    expect(progress.incarnation).toBe(5);
    expect(admitIncarnation(progress, 4, 100)).toBe('stale');
  });
});

describe('progress: heartbeat answers in a burst', () => {
  it('release one AppendEntries per heartbeat sent, not one per answer', () => {
    // A follower stopped for a while answers every heartbeat it missed at once when it resumes.
    const progress = createProgress(100, 7);
    onAppendAccepted(progress, 50);
    for (let index = 51; index <= 58; index += 1) onAppendSent(progress, index);
    expect(progress.inflight).toHaveLength(8);
    onHeartbeatSent(progress);
    for (let answer = 0; answer < 100; answer += 1) onHeartbeatAnswered(progress, 8);
    expect(progress.inflight).toEqual([52, 53, 54, 55, 56, 57, 58]);
    onAppendSent(progress, 59);
    for (let answer = 0; answer < 100; answer += 1) onHeartbeatAnswered(progress, 8);
    expect(progress.inflight).toHaveLength(8);
    onHeartbeatSent(progress);
    onHeartbeatAnswered(progress, 8);
    expect(progress.inflight).toHaveLength(7);
  });

  it('unpause a probe once per heartbeat sent', () => {
    const progress = createProgress(100, 7);
    onAppendSent(progress, 100);
    expect(progress.probeSent).toBe(true);
    onHeartbeatAnswered(progress, 8);
    expect(progress.probeSent).toBe(true);
    onHeartbeatSent(progress);
    onHeartbeatAnswered(progress, 8);
    expect(progress.probeSent).toBe(false);
    onAppendSent(progress, 100);
    onHeartbeatAnswered(progress, 8);
    expect(progress.probeSent).toBe(true);
  });
});

describe('AppendEntries bounded in bytes', () => {
  const entryOf = (bytes: number): Entry => ({ term: 1, kind: 'command', data: new Uint8Array(bytes) });
  const log = createLog([entryOf(400), entryOf(400), entryOf(300), entryOf(5000), entryOf(10)]);
  const sizes = (entries: Entry[]) => entries.map((entry) => entry.data!.byteLength);

  it('stops before the entry that would exceed the bound, and within the count', () => {
    expect(sizes(sliceBounded(log, 1, 5, 1000))).toEqual([400, 400]);
    expect(sizes(sliceBounded(log, 1, 5, 1100))).toEqual([400, 400, 300]);
    expect(sizes(sliceBounded(log, 1, 2, 1e9))).toEqual([400, 400]);
    expect(sizes(sliceBounded(log, 5, 9, 1e9))).toEqual([10]);
  });

  it('always carries the first entry, however large', () => {
    expect(sizes(sliceBounded(log, 4, 5, 1000))).toEqual([5000]);
    expect(sizes(sliceBounded(log, 3, 5, 1000))).toEqual([300]);
  });
});

describe('frames bounded when a batch exceeds maxFrameBytes', () => {
  const encoder = createFrameEncoder();
  const append = (index: number, bytes: number): RaftMessage => ({
    type: 'AppendEntries',
    from: 'a',
    to: 'b',
    term: 3,
    prevLogIndex: index,
    prevLogTerm: 3,
    entries: [{ term: 3, kind: 'command', data: new Uint8Array(bytes).fill(index) }],
    leaderCommit: index,
  });

  it('keeps one frame for a batch that fits', () => {
    const batch = [append(1, 100), append(2, 100)];
    const { frames, sent } = encodeFrames(encoder, batch, 4096);
    expect(frames).toHaveLength(1);
    expect(sent).toBe(2);
  });

  it('starts a new frame before the message that would overflow, keeping every message in order', () => {
    const maxFrameBytes = 64 * 1024;
    // 40 messages of 6 KiB: 240 KiB, several frames; and 20 small ones (more than 15: array16).
    const batch = [
      ...Array.from({ length: 40 }, (_, index) => append(index + 1, 6 * 1024)),
      ...Array.from({ length: 20 }, (_, index) => append(100 + index, 1)),
    ];
    const { frames, sent, tooLarge } = encodeFrames(encoder, batch, maxFrameBytes);
    expect(tooLarge).toEqual([]);
    expect(sent).toBe(batch.length);
    expect(frames.length).toBeGreaterThanOrEqual(4);
    for (const frame of frames) {
      expect(frameBodyLength(frame)).toBeLessThanOrEqual(maxFrameBytes);
      expect(frame.byteLength).toBe(FRAME_HEADER_BYTES + frameBodyLength(frame));
    }
    // Greedy: no two neighbouring frames could have been one.
    for (let i = 1; i < frames.length; i += 1)
      expect(frameBodyLength(frames[i - 1]!) + frameBodyLength(frames[i]!)).toBeGreaterThan(
        maxFrameBytes - 6 * 1024 - 64,
      );
    const decoder = createFrameDecoder({ handshake: false, maxFrameBytes });
    const decoded = frames.flatMap((frame) => decoder.push(frame).flat());
    expect(decoded).toEqual(batch.map((message) => decode(encoder.message(message))));
    expect(decoded.map((message) => (message as unknown as { prevLogIndex: number }).prevLogIndex)).toEqual(
      batch.map((message) => (message as unknown as { prevLogIndex: number }).prevLogIndex),
    );
  });

  it('leaves out and returns a message too large alone, sending the others', () => {
    const batch = [append(1, 10), append(2, 70 * 1024), append(3, 10)];
    const { frames, sent, tooLarge } = encodeFrames(encoder, batch, 64 * 1024);
    expect(sent).toBe(2);
    expect(tooLarge).toEqual([batch[1]]);
    const decoder = createFrameDecoder({ handshake: false, maxFrameBytes: 64 * 1024 });
    expect(frames.flatMap((frame) => decoder.push(frame).flat())).toHaveLength(2);
  });
});

describe('entry size limits', () => {
  const open: DiskeyvalNode[] = [];
  afterEach(async () => {
    await Promise.all(open.splice(0).map((node) => node.end()));
  });

  const codeOf = (fn: () => unknown): unknown => {
    try {
      fn();
    } catch (error) {
      return (error as { code?: string }).code;
    }
    return 'no error';
  };

  it('refuses options whose largest entry would not fit in half a frame', () => {
    const base = { nodeId: 'a', peers: ['b'], transport: createMemoryTransport() };
    expect(codeOf(() => diskeyval({ ...base, maxValueBytes: 9 * 1024 * 1024 }))).toBe('INVALID_ARGUMENT');
    expect(codeOf(() => diskeyval({ ...base, maxFrameBytes: 1024 * 1024 }))).toBe('INVALID_ARGUMENT');
    expect(codeOf(() => diskeyval({ ...base, maxFrameBytes: 1024 }))).toBe('INVALID_ARGUMENT');
    expect(codeOf(() => diskeyval({ ...base, maxValueBytes: 0 }))).toBe('INVALID_ARGUMENT');
    const fits = diskeyval({ ...base, maxFrameBytes: 4 * 1024 * 1024, maxValueBytes: 1024 * 1024 });
    open.push(fits);
    expect(fits.isLeader()).toBe(false);
  });

  it('takes a 900 KiB value with the defaults and refuses one over maxValueBytes before proposing it', async () => {
    const node = diskeyval({ nodeId: 'solo', peers: [], transport: createMemoryTransport() });
    open.push(node);
    await node.start();
    const deadline = Date.now() + 5000;
    while (!node.isLeader()) {
      if (Date.now() > deadline) throw new Error('no leader');
      await new Promise((resolve) => setImmediate(resolve));
    }
    const big = new Uint8Array(900 * 1024).fill(7);
    await node.set('big', big);
    expect(Buffer.compare(Buffer.from((await node.get<Uint8Array>('big'))!), Buffer.from(big))).toBe(0);
    const before = node.getMetrics().lastIndex;
    const error = await node.set('huge', new Uint8Array(1024 * 1024 + 1)).then(
      () => null,
      (rejection: { code?: string }) => rejection,
    );
    expect(error?.code).toBe('INVALID_ARGUMENT');
    expect(node.getMetrics().lastIndex).toBe(before);
  });
});
