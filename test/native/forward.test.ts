// Integration: two namespaces joined by veth, each running the forwarder fixture (NativeTun
// <-> NativeConn). Ping both ways, TCP transfers with a sha256 check both ways, the addon's
// counters (super-packets read, GSO sends, GRO receives, coalesced writes), and an
// informative iperf3 figure; once with offloads and once without. Torn down always.
import assert from 'node:assert/strict';
import { resolve } from 'node:path';
import { describe, test } from 'node:test';
import { NetnsRun } from '../../src/netns/netns.ts';
import type { SpawnedProcess } from '../../src/netns/netns.ts';
import type { TunCounters, UdpCounters } from '../../src/native/addon.ts';
import { projectRoot } from '../../src/util/self.ts';

const fixtures = resolve(projectRoot, 'test/native/fixtures');
const TRANSFER_BYTES = 16 * 1024 * 1024;

interface FwdStats {
  tun: TunCounters;
  conn: UdpCounters;
  tunDrops: number;
  netDrops: number;
}

async function waitFor(p: SpawnedProcess, re: RegExp, ms = 15000): Promise<RegExpExecArray> {
  const until = Date.now() + ms;
  for (;;) {
    const m = re.exec(p.output());
    if (m) return m;
    if (p.child.exitCode !== null || Date.now() > until) {
      throw new Error(
        `waiting for ${re}: ${p.child.exitCode !== null ? 'process exited' : 'timeout'}\n${p.output()}`,
      );
    }
    await new Promise((r) => setTimeout(r, 30));
  }
}

async function statsOf(p: SpawnedProcess): Promise<FwdStats> {
  const before = (p.output().match(/^STATS /gm) ?? []).length;
  process.kill(p.pid, 'SIGUSR2');
  const until = Date.now() + 5000;
  for (;;) {
    const lines = p
      .output()
      .split('\n')
      .filter((l) => l.startsWith('STATS '));
    if (lines.length > before) return JSON.parse((lines[lines.length - 1] as string).slice(6)) as FwdStats;
    if (Date.now() > until) throw new Error(`no STATS from forwarder\n${p.output()}`);
    await new Promise((r) => setTimeout(r, 30));
  }
}

function tsx(script: string, ...args: string[]): [string, string[]] {
  return [process.execPath, ['--import', 'tsx', resolve(fixtures, script), ...args]];
}

async function iperf(
  run: NetnsRun,
  client: string,
  server: string,
  addr: string,
  reverse: boolean,
): Promise<number> {
  const srv = run.spawn(server, 'iperf3', ['-s', '-1', '-B', addr, '--forceflush']);
  await waitFor(srv, /Server listening/);
  const out = await run.exec(client, 'iperf3', ['-c', addr, '-t', '3', '-J', ...(reverse ? ['-R'] : [])], {
    timeoutMs: 20000,
  });
  await srv.exited;
  const j = JSON.parse(out) as { end: { sum_received: { bits_per_second: number } } };
  return j.end.sum_received.bits_per_second / 1e9;
}

for (const offloads of [true, false]) {
  void describe(`TUN <-> UDP forwarding through the native addon, offloads ${offloads ? 'on' : 'off'}`, () => {
    void test('ping, TCP transfers with integrity check, counters, iperf3', async (t) => {
      const run = new NetnsRun();
      t.after(() => run.destroy());
      const a = await run.addNamespace('a');
      const b = await run.addNamespace('b');
      await run.addVeth(a, 'u0', b, 'u0', 1500);
      await run.ip(a, 'addr', 'add', '10.99.0.1/24', 'dev', 'u0');
      await run.ip(b, 'addr', 'add', '10.99.0.2/24', 'dev', 'u0');
      const common = { tun: 'wt0', mtu: 1472, port: 8285, peerPort: 8285, offloads };
      const cfgA = {
        ...common,
        podAddr: '10.244.1.1/24',
        remoteSubnet: '10.244.2.0/24',
        bind: '10.99.0.1',
        peer: '10.99.0.2',
        // Small enough that a second super-packet often does not fit and is kept pending.
        tunSlots: 64,
      };
      const cfgB = {
        ...common,
        podAddr: '10.244.2.1/24',
        remoteSubnet: '10.244.1.0/24',
        bind: '10.99.0.2',
        peer: '10.99.0.1',
      };
      const fa = run.spawn(a, ...tsx('forwarder.ts', JSON.stringify(cfgA)), { cwd: projectRoot });
      const fb = run.spawn(b, ...tsx('forwarder.ts', JSON.stringify(cfgB)), { cwd: projectRoot });
      const readyA = JSON.parse((await waitFor(fa, /^READY (.*)$/m))[1] as string) as {
        tunOffloads: { vnetHdr: boolean; tso: boolean; uso: boolean; gro: boolean };
        connOffloads: { gso: boolean; gro: boolean };
        rcvbuf: number;
      };
      await waitFor(fb, /^READY /m);
      assert.equal(readyA.tunOffloads.vnetHdr, offloads);
      assert.equal(readyA.tunOffloads.tso, offloads);
      assert.equal(readyA.connOffloads.gso, offloads);
      assert.equal(readyA.connOffloads.gro, offloads);
      assert.ok(readyA.rcvbuf >= 8 * 1024 * 1024, `receive buffer forced up (got ${readyA.rcvbuf})`);

      const pingAB = await run.exec(a, 'ping', ['-c', '3', '-i', '0.2', '-W', '2', '10.244.2.1']);
      assert.match(pingAB, / 0% packet loss/);
      const pingBA = await run.exec(b, 'ping', [
        '-c',
        '3',
        '-i',
        '0.2',
        '-W',
        '2',
        '-s',
        '1400',
        '10.244.1.1',
      ]);
      assert.match(pingBA, / 0% packet loss/);

      // A -> B bulk transfer (A's TUN reads super-packets, B's TUN writes coalesced runs) ...
      const srvB = run.spawn(b, ...tsx('tcp.ts', 'server', '10.244.2.1', '5001'), { cwd: projectRoot });
      await waitFor(srvB, /LISTENING/);
      const cli = await run.exec(
        a,
        ...tsx('tcp.ts', 'client', '10.244.2.1', '5001', String(TRANSFER_BYTES)),
        {
          timeoutMs: 60000,
        },
      );
      assert.match(cli, /^OK \d+ \d+/m);
      // ... and B -> A.
      const srvA = run.spawn(a, ...tsx('tcp.ts', 'server', '10.244.1.1', '5002'), { cwd: projectRoot });
      await waitFor(srvA, /LISTENING/);
      const cli2 = await run.exec(
        b,
        ...tsx('tcp.ts', 'client', '10.244.1.1', '5002', String(TRANSFER_BYTES)),
        {
          timeoutMs: 60000,
        },
      );
      assert.match(cli2, /^OK \d+ \d+/m);

      const sa = await statsOf(fa);
      const sb = await statsOf(fb);
      t.diagnostic(`A: ${JSON.stringify(sa)}`);
      t.diagnostic(`B: ${JSON.stringify(sb)}`);
      for (const s of [sa, sb]) {
        assert.ok(s.tun.packetsIn > TRANSFER_BYTES / 1500, 'every segment went through the TUN reader');
        assert.ok(s.conn.datagramsIn > TRANSFER_BYTES / 1500 / 2);
        assert.equal(s.tun.errors, 0);
        assert.equal(s.conn.errors, 0);
        if (offloads) {
          assert.ok(s.tun.superPackets > 0, 'super-packets were read');
          assert.ok(s.tun.segments > s.tun.superPackets, 'and segmented');
          assert.ok(s.tun.coalescedWrites > 0, 'coalesced TUN writes happened');
          assert.ok(s.tun.coalescedSegments > 2 * s.tun.coalescedWrites);
          assert.ok(s.conn.gsoMessages > 0, 'UDP_SEGMENT sends happened');
          assert.ok(s.conn.groMessages > 0, 'UDP_GRO receives happened');
        } else {
          assert.equal(s.tun.superPackets, 0);
          assert.equal(s.tun.coalescedWrites, 0);
          assert.equal(s.conn.gsoMessages, 0);
          assert.equal(s.conn.groMessages, 0);
        }
      }

      const fwd = await iperf(run, a, b, '10.244.2.1', false);
      const rev = await iperf(run, a, b, '10.244.2.1', true);
      const msg = `iperf3 -t 3, offloads ${offloads ? 'on' : 'off'}: A->B ${fwd.toFixed(2)} Gbit/s, B->A ${rev.toFixed(2)} Gbit/s`;
      t.diagnostic(msg);
      assert.ok(fwd > 0 && rev > 0);
    });
  });
}
