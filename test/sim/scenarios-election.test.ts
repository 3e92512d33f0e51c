/**
 * Leader election scenarios, after the lab suites' 2A/3A tests and the seed's backlog: initial
 * election, re-election, a rejoining old leader, no leader without a quorum, many elections on 7
 * servers, split votes, stale candidates, higher-term messages, CheckQuorum and PreVote.
 * Every scenario runs over several seeds on the simulator; every failure names its seed and the
 * command that replays it.
 */
import { describe, it } from 'vitest';
import type { RaftMessage } from '../../src/machines/messages.js';
import {
  agreeOne,
  createSimulation,
  ensure,
  isolate,
  type Simulation,
  seedsFor,
  UNRELIABLE,
  waitForLeader,
} from './simulator.js';

const ELECTION_MS = 150;
const HEARTBEAT_MS = 50;
const MAX_DELAY_MS = 5;

const verbose = process.env.DISKEYVAL_SIM_VERBOSE !== undefined;

/** Fails on the first step at which two live servers lead the same term (explicit, on top of the checker). */
const watchOneLeaderPerTerm = (sim: Simulation): Map<number, string> => {
  const leaders = new Map<number, string>();
  sim.onStep(() => {
    for (const id of sim.ids) {
      const status = sim.status(id);
      if (status?.role !== 'leader') continue;
      const known = leaders.get(status.term);
      if (known !== undefined && known !== id) sim.fail(`${known} and ${id} both lead term ${status.term}`);
      leaders.set(status.term, id);
    }
  });
  return leaders;
};

const leadersNow = (sim: Simulation): string[] => sim.ids.filter((id) => sim.status(id)?.role === 'leader');

const shuffled = (sim: Simulation, items: readonly string[]): string[] => {
  const out = [...items];
  for (let index = out.length - 1; index > 0; index -= 1) {
    const other = sim.rng.int(0, index + 1);
    [out[index], out[other]] = [out[other]!, out[index]!];
  }
  return out;
};

const percentile = (values: number[], p: number): number => {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.floor(p * sorted.length))] ?? Number.NaN;
};

describe('scenarios: leader election', () => {
  it('elects one leader within a bound, and every server agrees on its term and identity', async () => {
    for (const seed of seedsFor(60, 1101)) {
      const sim = createSimulation({ seed, nodes: 3 });
      const tookMs = await sim.runUntil(() => sim.stableLeader() !== null, 1_000, 'the initial election');
      const leader = sim.stableLeader()!;
      await sim.runFor(2 * HEARTBEAT_MS);
      const terms = new Set(sim.ids.map((id) => sim.status(id)!.term));
      ensure(sim, terms.size === 1, `servers disagree on the term after the election: ${[...terms]}`);
      for (const id of sim.ids) {
        ensure(
          sim,
          sim.status(id)!.leaderId === leader,
          `${id} follows ${sim.status(id)!.leaderId}, not ${leader}`,
        );
      }
      ensure(sim, leadersNow(sim).length === 1, `leaders: ${leadersNow(sim)}`);
      // One timeout plus a few round trips: the first election is not a drawn-out affair.
      ensure(sim, tookMs <= 2 * ELECTION_MS + 200, `the first election took ${tookMs} ms`);
    }
  });

  it('keeps the same leader and term for 2 s when nothing fails', async () => {
    for (const seed of seedsFor(30, 1102)) {
      const sim = createSimulation({ seed, nodes: 3 });
      const leader = await waitForLeader(sim, 1_000);
      const term = sim.status(leader)!.term;
      const terms = sim.ids.map((id) => sim.status(id)!.term);
      await sim.runFor(2_000);
      ensure(sim, sim.stableLeader() === leader, `leader changed from ${leader} to ${sim.stableLeader()}`);
      ensure(
        sim,
        sim.status(leader)!.term === term,
        `term moved from ${term} to ${sim.status(leader)!.term}`,
      );
      for (const [index, id] of sim.ids.entries()) {
        ensure(sim, sim.status(id)!.term === Math.max(terms[index]!, term), `${id} changed its term`);
      }
      ensure(sim, sim.checker.leaders().size === 1, `${sim.checker.leaders().size} leaders over the run`);
    }
  });

  it('re-elects after the leader is disconnected, within a bounded failover time', async () => {
    const failovers: number[] = [];
    for (const seed of seedsFor(60, 1103)) {
      const sim = createSimulation({ seed, nodes: 3 });
      const first = await waitForLeader(sim, 1_000);
      const firstTerm = sim.status(first)!.term;
      isolate(sim, [first]);
      const tookMs = await sim.runUntil(
        () => {
          const now = sim.stableLeader();
          return now !== null && now !== first;
        },
        3_000,
        'a new leader after disconnecting the old one',
        1,
      );
      failovers.push(tookMs);
      const second = sim.stableLeader()!;
      ensure(sim, sim.status(second)!.term > firstTerm, 'the new leader did not move to a higher term');
      // Followers time out after at most 2T, then PreVote and a vote: a few round trips more.
      ensure(sim, tookMs <= 4 * 2 * ELECTION_MS, `failover took ${tookMs} ms`);
    }
    if (verbose) {
      console.info(
        `failover (3 servers, disconnect): p50 ${percentile(failovers, 0.5)} ms, max ${Math.max(...failovers)} ms`,
      );
    }
  });

  it('does not disturb the new leader when the old leader rejoins', async () => {
    for (const seed of seedsFor(50, 1104)) {
      const sim = createSimulation({ seed, nodes: 3 });
      const first = await waitForLeader(sim, 1_000);
      await agreeOne(sim, `before-${seed}`, 3);
      isolate(sim, [first]);
      // The isolated leader keeps accepting proposals it cannot commit while it is cut off.
      const cutOff = [0, 1, 2].map((n) => sim.propose(first, `lost-${seed}-${n}`));
      const second = await waitForLeader(sim, 3_000, 'a leader on the majority side');
      ensure(sim, second !== first, 'the isolated leader still counts as stable');
      const term = sim.status(second)!.term;
      await agreeOne(sim, `during-${seed}`, 2);
      for (let n = 0; n < 3; n += 1) {
        ensure(sim, sim.committedOn(`lost-${seed}-${n}`) === 0, 'an entry of the isolated leader committed');
      }
      ensure(
        sim,
        cutOff.every((proposal) => proposal.state !== 'ok'),
        'a cut-off write succeeded',
      );
      sim.heal();
      await sim.runFor(1_000);
      ensure(
        sim,
        sim.stableLeader() === second,
        `leader after rejoin: ${sim.stableLeader()}, expected ${second}`,
      );
      ensure(
        sim,
        sim.status(second)!.term === term,
        `the rejoin moved the term to ${sim.status(second)!.term}`,
      );
      ensure(sim, sim.status(first)!.role === 'follower', `the old leader is ${sim.status(first)!.role}`);
      ensure(sim, sim.status(first)!.term === term, `the old leader is at term ${sim.status(first)!.term}`);
      await agreeOne(sim, `after-${seed}`, 3);
      // Once it rejoins, the old leader may complete those writes through the new leader; what
      // it acknowledges is committed everywhere.
      await sim.runUntil(
        () => cutOff.every((proposal) => proposal.state !== 'ok' || sim.committedOn(proposal.value) === 3),
        1_000,
        'the acknowledged writes of the old leader on every server',
      );
    }
  });

  it('has no leader without a quorum, and elects one once a majority reconnects', async () => {
    for (const seed of seedsFor(50, 1105)) {
      const sim = createSimulation({ seed, nodes: 3 });
      const first = await waitForLeader(sim, 1_000);
      isolate(sim, [first]);
      const second = await waitForLeader(sim, 3_000);
      sim.heal();
      await sim.runFor(500);
      // Disconnect the leader and one more: every server is alone.
      const other = sim.ids.find((id) => id !== second && id !== first)!;
      isolate(sim, [second, other]);
      // CheckQuorum makes the leader step down within two election timeouts.
      await sim.runFor(2 * ELECTION_MS + MAX_DELAY_MS);
      ensure(sim, leadersNow(sim).length === 0, `leaders without a quorum: ${leadersNow(sim)}`);
      const stop = sim.onStep(() => {
        if (leadersNow(sim).length > 0) sim.fail(`${leadersNow(sim)} became leader without a quorum`);
      });
      await sim.runFor(2_000);
      stop();
      // Reconnect one: two of three can elect.
      isolate(sim, [second]);
      const third = await waitForLeader(sim, 3_000, 'a leader once two servers reconnect');
      ensure(sim, third !== second, `the still-disconnected ${second} counts as leader`);
      sim.heal();
      await sim.runFor(1_000);
      ensure(sim, sim.stableLeader() !== null, 'no leader after everyone reconnected');
      await agreeOne(sim, `final-${seed}`, 3);
    }
  });

  it('elects many times on 7 servers with 3 random servers disconnected, one leader per term', async () => {
    for (const seed of seedsFor(20, 1106)) {
      const sim = createSimulation({ seed, nodes: 7 });
      const leaders = watchOneLeaderPerTerm(sim);
      await waitForLeader(sim, 3_000);
      for (let iteration = 0; iteration < 10; iteration += 1) {
        const apart = shuffled(sim, sim.ids).slice(0, 3);
        isolate(sim, apart);
        await sim.runUntil(
          () => {
            const leader = sim.stableLeader();
            return leader !== null && !apart.includes(leader);
          },
          3_000,
          `a leader among the 4 connected servers (iteration ${iteration})`,
        );
        sim.heal();
        await sim.runFor(sim.rng.int(0, 2 * ELECTION_MS));
      }
      await waitForLeader(sim, 3_000, 'a leader after the last reconnection');
      await agreeOne(sim, `final-${seed}`, 7);
      ensure(sim, leaders.size >= 2, `only ${leaders.size} terms had a leader`);
    }
  });

  it('turns a follower into a candidate after its election timeout once the leader is gone', async () => {
    for (const seed of seedsFor(60, 1107)) {
      const sim = createSimulation({ seed, nodes: 3 });
      const leader = await waitForLeader(sim, 1_000);
      await sim.runFor(sim.rng.int(0, 2 * HEARTBEAT_MS));
      const crashedAt = sim.now();
      let candidateAt = -1;
      const stop = sim.onStep(() => {
        if (candidateAt < 0 && sim.ids.some((id) => sim.status(id)?.role === 'candidate'))
          candidateAt = sim.now();
      });
      sim.crash(leader);
      await sim.runUntil(() => candidateAt >= 0, 1_000, 'a follower to become candidate', 1);
      stop();
      const after = candidateAt - crashedAt;
      // The last heartbeat arrived at most one interval (plus delay) before the crash.
      ensure(
        sim,
        after >= ELECTION_MS - HEARTBEAT_MS - MAX_DELAY_MS,
        `candidacy ${after} ms after the crash`,
      );
      ensure(sim, after <= 2 * ELECTION_MS + MAX_DELAY_MS, `candidacy only ${after} ms after the crash`);
      await waitForLeader(sim, 3_000, 'a leader among the two survivors');
    }
  });

  it('retries a split vote between two candidates with a term bump until one wins', async () => {
    for (const seed of seedsFor(60, 1108)) {
      // Equal, slow links: both candidates ask for votes before either hears the other.
      const sim = createSimulation({ seed, nodes: 3, network: { minDelayMs: 20, maxDelayMs: 21 } });
      sim.crash('s3');
      let split = false;
      const stop = sim.onStep(() => {
        const a = sim.node('s1')?.snapshot().context;
        const b = sim.node('s2')?.snapshot().context;
        if (
          a &&
          b &&
          a.currentTerm === 1 &&
          b.currentTerm === 1 &&
          a.votedFor === 's1' &&
          b.votedFor === 's2'
        )
          split = true;
      });
      sim.node('s1')!.fire({ type: 'electionTimeout' });
      sim.node('s2')!.fire({ type: 'electionTimeout' });
      const leader = await waitForLeader(sim, 5_000, 'a leader after the split vote');
      stop();
      ensure(sim, split, 'both candidates should have voted for themselves in term 1');
      ensure(sim, !sim.checker.leaders().has(1), `term 1 had a leader: ${sim.checker.leaders().get(1)}`);
      ensure(sim, sim.status(leader)!.term >= 2, `leader at term ${sim.status(leader)!.term}`);
      await agreeOne(sim, `after-split-${seed}`, 2);
    }
  });

  it('recovers from a five-way split vote in which every server votes for itself', async () => {
    for (const seed of seedsFor(40, 1109)) {
      const sim = createSimulation({ seed, nodes: 5, network: { minDelayMs: 20, maxDelayMs: 21 } });
      let split = false;
      const stop = sim.onStep(() => {
        const contexts = sim.ids.map((id) => sim.node(id)!.snapshot().context);
        if (contexts.every((context) => context.currentTerm === 1 && context.votedFor === context.id))
          split = true;
      });
      for (const id of sim.ids) sim.node(id)!.fire({ type: 'electionTimeout' });
      const leader = await waitForLeader(sim, 5_000, 'a leader after the five-way split');
      stop();
      ensure(sim, split, 'every server should have voted for itself in term 1');
      ensure(sim, !sim.checker.leaders().has(1), 'term 1 had a leader despite the split');
      ensure(sim, sim.status(leader)!.term >= 2, `leader at term ${sim.status(leader)!.term}`);
      await agreeOne(sim, `after-split-${seed}`, 5);
    }
  });

  it('rejects a vote request from a candidate with an outdated term', async () => {
    for (const seed of seedsFor(50, 1110)) {
      const sim = createSimulation({ seed, nodes: 3 });
      let leader = await waitForLeader(sim, 1_000);
      // Move a few terms forward.
      for (let round = 0; round < 2; round += 1) {
        isolate(sim, [leader]);
        await sim.runUntil(
          () => sim.stableLeader() !== null && sim.stableLeader() !== leader,
          3_000,
          're-election',
        );
        sim.heal();
        leader = await waitForLeader(sim, 3_000);
      }
      await sim.runFor(200);
      const term = sim.status(leader)!.term;
      // The stale candidate is a crashed server; its request claims a better log than anyone's.
      const stale = sim.ids.find((id) => id !== leader)!;
      const voter = sim.ids.find((id) => id !== leader && id !== stale)!;
      sim.crash(stale);
      const answers: RaftMessage[] = [];
      sim.observe((message) => {
        if (message.type === 'RequestVoteResponse' && message.to === stale) answers.push(message);
      });
      const before = {
        leader: sim.node(leader)!.snapshot().context,
        voter: sim.node(voter)!.snapshot().context,
      };
      const votedBefore = { leader: before.leader.votedFor, voter: before.voter.votedFor };
      for (const to of [leader, voter]) {
        sim.inject({
          type: 'RequestVote',
          from: stale,
          to,
          term: term - 1,
          lastLogIndex: 1_000,
          lastLogTerm: term - 1,
          preVote: false,
        });
      }
      await sim.runFor(20);
      ensure(sim, answers.length === 2, `expected 2 answers, got ${answers.length}`);
      for (const answer of answers) {
        ensure(
          sim,
          answer.type === 'RequestVoteResponse' && !answer.voteGranted && answer.term === term,
          `a stale candidate got ${JSON.stringify(answer)}`,
        );
      }
      ensure(
        sim,
        sim.stableLeader() === leader && sim.status(leader)!.term === term,
        'the leader was disturbed',
      );
      ensure(
        sim,
        sim.node(voter)!.snapshot().context.votedFor === votedBefore.voter,
        'the voter changed its vote',
      );
      ensure(sim, sim.persisted(voter).hardState.term === term, 'the voter changed its persisted term');
    }
  });

  it('never elects a candidate whose log lacks committed entries', async () => {
    for (const seed of seedsFor(60, 1111)) {
      const sim = createSimulation({ seed, nodes: 3 });
      const leader = await waitForLeader(sim, 1_000);
      const [upToDate, behind] = sim.ids.filter((id) => id !== leader) as [string, string];
      sim.crash(behind);
      for (let n = 0; n < 5; n += 1) await agreeOne(sim, `c-${seed}-${n}`, 2);
      sim.crash(leader);
      sim.restart(behind);
      let behindLed = false;
      const stop = sim.onStep(() => {
        if (sim.status(behind)?.role === 'leader') behindLed = true;
      });
      const next = await waitForLeader(sim, 5_000, 'a leader among the up-to-date and the stale server');
      await sim.runFor(1_000);
      stop();
      ensure(sim, next === upToDate, `${next} won, but only ${upToDate} holds every committed entry`);
      ensure(sim, !behindLed, `${behind} led with a stale log`);
      await sim.runUntil(() => sim.committedOn(`c-${seed}-4`) === 2, 2_000, 'the stale server to catch up');
    }
  });

  it('makes a leader step down when it sees a higher term in an append or a heartbeat', async () => {
    for (const seed of seedsFor(40, 1112)) {
      for (const kind of ['AppendEntries', 'Heartbeat'] as const) {
        const sim = createSimulation({ seed, nodes: 3 });
        const leader = await waitForLeader(sim, 1_000);
        await agreeOne(sim, `before-${seed}`, 3);
        const term = sim.status(leader)!.term;
        // A server of a newer term (crashed now, so its answers go nowhere) reaches the leader.
        const newer = sim.ids.find((id) => id !== leader)!;
        sim.crash(newer);
        sim.inject(
          kind === 'AppendEntries'
            ? {
                type: 'AppendEntries',
                from: newer,
                to: leader,
                term: term + 1,
                prevLogIndex: 0,
                prevLogTerm: 0,
                entries: [],
                leaderCommit: 0,
              }
            : { type: 'Heartbeat', from: newer, to: leader, term: term + 1, commit: 0, seq: 0 },
        );
        await sim.runFor(2);
        const status = sim.status(leader)!;
        ensure(sim, status.role === 'follower', `${kind}: the leader is still ${status.role}`);
        ensure(sim, status.term === term + 1, `${kind}: the old leader is at term ${status.term}`);
        ensure(sim, status.leaderId === newer, `${kind}: the old leader follows ${status.leaderId}`);
        sim.restart(newer);
        const next = await waitForLeader(sim, 5_000, 'a leader after the step-down');
        ensure(sim, sim.status(next)!.term > term, `new leader at term ${sim.status(next)!.term}`);
        await agreeOne(sim, `after-${seed}`, 3);
        ensure(sim, sim.committedOn(`before-${seed}`) === 3, 'a committed entry was lost');
      }
    }
  });

  it('steps an isolated leader down through CheckQuorum within two election timeouts', async () => {
    const stepDowns: number[] = [];
    for (const seed of seedsFor(80, 1113)) {
      const sim = createSimulation({ seed, nodes: 3 });
      const leader = await waitForLeader(sim, 1_000);
      await sim.runFor(sim.rng.int(0, ELECTION_MS));
      isolate(sim, [leader]);
      const tookMs = await sim.runUntil(
        () => sim.status(leader)!.role !== 'leader',
        2_000,
        'the isolated leader to step down',
        1,
      );
      stepDowns.push(tookMs);
      ensure(sim, tookMs <= 2 * ELECTION_MS, `the isolated leader stepped down only after ${tookMs} ms`);
      // It can never come back as leader on its own.
      const stop = sim.onStep(() => {
        if (sim.status(leader)?.role === 'leader') sim.fail('the isolated server became leader again');
      });
      await sim.runFor(1_000);
      stop();
    }
    if (verbose) console.info(`CheckQuorum step-down: max ${Math.max(...stepDowns)} ms`);
  });

  it('applies CheckQuorum on 5 servers: a leader with one follower steps down, with two it stays', async () => {
    for (const seed of seedsFor(40, 1114)) {
      const sim = createSimulation({ seed, nodes: 5 });
      const leader = await waitForLeader(sim, 2_000);
      const term = sim.status(leader)!.term;
      const others = shuffled(
        sim,
        sim.ids.filter((id) => id !== leader),
      );
      // With two followers it still has a majority: it stays leader and commits.
      sim.partition([leader, others[0]!, others[1]!], [others[2]!, others[3]!]);
      await sim.runFor(1_000);
      ensure(sim, sim.stableLeader() === leader, `the leader of a 3/5 majority lost leadership`);
      ensure(sim, sim.status(leader)!.term === term, 'the majority side changed term');
      await agreeOne(sim, `majority-${seed}`, 3);
      // With one follower it has no majority: CheckQuorum steps it down, the other side elects.
      sim.partition([leader, others[0]!], [others[1]!, others[2]!, others[3]!]);
      const tookMs = await sim.runUntil(
        () => sim.status(leader)!.role !== 'leader',
        2_000,
        'the minority leader to step down',
        1,
      );
      ensure(sim, tookMs <= 2 * ELECTION_MS, `step-down took ${tookMs} ms`);
      const next = await waitForLeader(sim, 3_000, 'a leader on the 3-server side');
      ensure(sim, next !== leader && next !== others[0], `${next} leads from the minority side`);
      sim.heal();
      await agreeOne(sim, `final-${seed}`, 5);
    }
  });

  it('PreVote: a partitioned follower keeps its term and does not disrupt the leader when it rejoins', async () => {
    for (const seed of seedsFor(30, 1115)) {
      const sim = createSimulation({ seed, nodes: 3 });
      const leader = await waitForLeader(sim, 1_000);
      await sim.runFor(200);
      const term = sim.status(leader)!.term;
      const follower = sim.ids.find((id) => id !== leader)!;
      const followerTerm = sim.status(follower)!.term;
      isolate(sim, [follower]);
      let campaigns = 0;
      const stop = sim.onStep(() => {
        const status = sim.status(follower)!;
        if (status.term !== followerTerm) sim.fail(`the partitioned follower moved to term ${status.term}`);
        if (status.role === 'candidate') campaigns += 1;
      });
      for (let n = 0; n < 5; n += 1) await agreeOne(sim, `p-${seed}-${n}`, 2);
      await sim.runFor(2_000);
      stop();
      ensure(sim, campaigns > 0, 'the partitioned follower never tried to campaign');
      sim.heal();
      await sim.runFor(1_000);
      ensure(
        sim,
        sim.stableLeader() === leader,
        `leader after rejoin: ${sim.stableLeader()}, expected ${leader}`,
      );
      ensure(
        sim,
        sim.status(leader)!.term === term,
        `the rejoin moved the term to ${sim.status(leader)!.term}`,
      );
      ensure(
        sim,
        sim.status(follower)!.leaderId === leader,
        'the rejoined follower does not follow the leader',
      );
      ensure(sim, sim.committedOn(`p-${seed}-4`) === 3, 'the rejoined follower did not catch up');
    }
  });

  it('PreVote on 5 servers: two isolated followers keep their terms; the majority keeps its leader', async () => {
    for (const seed of seedsFor(25, 1116)) {
      const sim = createSimulation({ seed, nodes: 5 });
      const leader = await waitForLeader(sim, 2_000);
      await sim.runFor(200);
      const term = sim.status(leader)!.term;
      const apart = shuffled(
        sim,
        sim.ids.filter((id) => id !== leader),
      ).slice(0, 2);
      const termsBefore = apart.map((id) => sim.status(id)!.term);
      isolate(sim, apart);
      for (let n = 0; n < 10; n += 1) {
        await agreeOne(sim, `m-${seed}-${n}`, 3);
        await sim.runFor(sim.rng.int(0, 300));
      }
      apart.forEach((id, index) => {
        ensure(
          sim,
          sim.status(id)!.term === termsBefore[index],
          `${id} moved to term ${sim.status(id)!.term}`,
        );
      });
      sim.heal();
      await sim.runFor(1_000);
      ensure(
        sim,
        sim.stableLeader() === leader && sim.status(leader)!.term === term,
        'the rejoin disturbed the leader',
      );
      await sim.runUntil(
        () => sim.committedOn(`m-${seed}-9`) === 5,
        2_000,
        'the rejoined followers to catch up',
      );
    }
  });

  it('never has two leaders in one term through repeated leader crashes on an unreliable network', async () => {
    for (const seed of seedsFor(15, 1117)) {
      const sim = createSimulation({ seed, nodes: 5, network: UNRELIABLE });
      const leaders = watchOneLeaderPerTerm(sim);
      for (let round = 0; round < 12; round += 1) {
        const leader = await waitForLeader(sim, 10_000, `a leader in round ${round}`);
        sim.propose(leader, `r-${seed}-${round}`);
        await sim.runFor(sim.rng.int(0, 100));
        sim.crash(leader);
        await sim.runFor(sim.rng.int(0, 400));
        sim.restart(leader);
      }
      await waitForLeader(sim, 10_000);
      await agreeOne(sim, `final-${seed}`, 5, 20_000);
      ensure(sim, leaders.size >= 12, `only ${leaders.size} terms had a leader`);
    }
  });

  it('fails over within a bound when the leader of 5 servers crashes, again and again', async () => {
    const failovers: number[] = [];
    for (const seed of seedsFor(15, 1118)) {
      const sim = createSimulation({ seed, nodes: 5 });
      for (let round = 0; round < 8; round += 1) {
        const leader = await waitForLeader(sim, 3_000);
        await agreeOne(sim, `f-${seed}-${round}`, 5);
        await sim.runFor(sim.rng.int(0, 2 * HEARTBEAT_MS));
        sim.crash(leader);
        const tookMs = await sim.runUntil(() => sim.stableLeader() !== null, 3_000, `failover ${round}`, 1);
        failovers.push(tookMs);
        ensure(sim, tookMs <= 5 * 2 * ELECTION_MS, `failover took ${tookMs} ms`);
        sim.restart(leader);
      }
    }
    if (verbose) {
      console.info(
        `failover (5 servers, crash): p50 ${percentile(failovers, 0.5)} ms, p90 ${percentile(failovers, 0.9)} ms, max ${Math.max(...failovers)} ms`,
      );
    }
  });
});
