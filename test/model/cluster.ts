/**
 * A few raft machines wired together in one process, for tests of the machine's own behaviour
 * (ticks, persist order, snapshots): every `send` output is queued and delivered in order by
 * `settle`, on a clock whose timers never fire (only explicit events move time). Logs are memory
 * logs: nothing waits for a persist.
 */
import { type Actor, createActor } from 'xstate';
import type { NodeId, RaftMessage } from '../../src/machines/messages.js';
import { type RaftMachine, raftMachine, roleOf } from '../../src/machines/raft.machine.js';
import type { RaftEmitted, RaftEvent, RaftInput } from '../../src/machines/raft.types.js';

const frozenClock = { setTimeout: () => 0, clearTimeout: () => {} };

export type TestServer = { actor: Actor<RaftMachine>; outputs: RaftEmitted[] };

export const startServer = (input: RaftInput, onSend?: (messages: RaftMessage[]) => void): TestServer => {
  const outputs: RaftEmitted[] = [];
  const actor = createActor(raftMachine, { input, clock: frozenClock });
  actor.on('*', (emitted) => {
    const output = emitted as RaftEmitted;
    outputs.push(output);
    if (output.type === 'send') onSend?.(output.messages);
  });
  actor.start();
  return { actor, outputs };
};

export const createCluster = (ids: NodeId[], input: Partial<RaftInput> = {}) => {
  const inFlight: RaftMessage[] = [];
  const servers = new Map<NodeId, TestServer>();
  for (const [position, id] of ids.entries()) {
    const base: RaftInput = { id, voters: ids, electionTimeoutMs: 100, heartbeatMs: 10, seed: position + 1 };
    servers.set(
      id,
      startServer({ ...base, ...input }, (messages) => inFlight.push(...messages)),
    );
  }
  const server = (id: NodeId): TestServer => {
    const found = servers.get(id);
    if (!found) throw new Error(`no server ${id}`);
    return found;
  };
  const send = (id: NodeId, event: RaftEvent): void => {
    server(id).actor.send(event);
    const snapshot = server(id).actor.getSnapshot();
    if (snapshot.status !== 'active') throw new Error(`${id} stopped: ${String(snapshot.error)}`);
  };
  /** Delivers every message in flight, and those they cause, up to `maxMessages` (a bound). */
  const settle = (maxMessages = 100_000): number => {
    let delivered = 0;
    for (; inFlight.length > 0; delivered += 1) {
      if (delivered >= maxMessages) throw new Error(`not settled after ${maxMessages} messages`);
      const message = inFlight.shift()!;
      send(message.to, { type: 'message', message });
    }
    return delivered;
  };
  const role = (id: NodeId) => roleOf(server(id).actor.getSnapshot().value);
  const context = (id: NodeId) => server(id).actor.getSnapshot().context;
  const stop = (): void => {
    for (const { actor } of servers.values()) actor.stop();
  };
  return { server, send, settle, role, context, stop };
};
