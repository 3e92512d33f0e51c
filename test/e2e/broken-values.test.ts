/**
 * The near-miss property of test/e2e/values.test.ts must be able to fail. Here `set` is given back
 * the value check it had before (validateValue and an encode, no round trip through the decoder,
 * own `__proto__` keys and -0 let through), on two nodes over the real mTLS transport, and the same
 * property, with the same seed, must find a value that is not refused with INVALID_ARGUMENT.
 */
import fc from 'fast-check';
import { afterAll, describe, expect, it, vi } from 'vitest';
import {
  createClusterCertificates,
  type DiskeyvalNode,
  diskeyval,
  isInvalidArgument,
} from '../../src/index.js';
import { nearMiss } from '../support/values.js';

vi.mock('../../src/validate.js', async (importOriginal) => {
  const original = await importOriginal<typeof import('../../src/validate.js')>();
  const { encodeValue } = await import('../../src/io/command.js');
  return {
    ...original,
    // The broken variant: only the old structural check, minus the __proto__ and surrogate rules.
    encodeCheckedValue: (value: unknown, maxValueBytes: number): Uint8Array => {
      if (value === undefined) throw Object.assign(new Error('undefined'), { code: 'INVALID_ARGUMENT' });
      const bytes = encodeValue(value);
      if (bytes.byteLength > maxValueBytes)
        throw Object.assign(new Error('big'), { code: 'INVALID_ARGUMENT' });
      return bytes;
    },
  };
});

const { freePorts } = (await import(new URL('../../scripts/cluster.mjs', import.meta.url).href)) as {
  freePorts(count: number, host?: string): Promise<number[]>;
};

const nodes: DiskeyvalNode[] = [];
afterAll(async () => {
  await Promise.all(nodes.map((node) => node.end()));
});

describe('a set without the round-trip check', () => {
  it('is caught by the near-miss property, for __proto__ keys, -0, long strings with lone surrogates and holes', async () => {
    const ids = ['b1', 'b2', 'b3'];
    const certs = await createClusterCertificates({ nodes: ids });
    const ports = await freePorts(3);
    const peers = ids.map((nodeId, index) => ({ nodeId, host: '127.0.0.1', port: ports[index]! }));
    for (const nodeId of ['b1', 'b2']) {
      const node = diskeyval({
        nodeId,
        host: '127.0.0.1',
        port: peers.find((peer) => peer.nodeId === nodeId)!.port,
        peers: peers.filter((peer) => peer.nodeId !== nodeId),
        tls: { cert: certs.nodes[nodeId]!.cert, key: certs.nodes[nodeId]!.key, ca: certs.ca.cert },
        electionTimeoutMs: 150,
        heartbeatMs: 30,
        proposalTimeoutMs: 1000,
      });
      nodes.push(node);
      await node.start();
    }
    await nodes[0]!.set('warm-up', 0);
    let counter = 0;
    // Each bug class on its own: the property with only that kind of near-miss must fail.
    for (const kind of [
      'an own __proto__ key',
      '-0',
      'a lone surrogate in a long string',
      'a hole in an array',
    ]) {
      const result = await fc.check(
        fc.asyncProperty(
          nearMiss.filter(({ what }) => what === kind),
          async ({ value }) => {
            const error = await nodes[counter++ % 2]!.set(`bad-${counter}`, value).then(
              () => null,
              (rejection: unknown) => rejection,
            );
            expect(isInvalidArgument(error)).toBe(true);
          },
        ),
        { seed: Number(process.env.FC_SEED ?? 20261201) + 1, numRuns: 20, endOnFailure: true },
      );
      console.log(`broken set, ${kind}: caught after ${result.numRuns} run(s)`);
      expect(result.failed, kind).toBe(true);
    }
  });
});
