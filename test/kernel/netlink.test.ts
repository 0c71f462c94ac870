// NetlinkKernel against IpRouteKernel on a busy namespace: every read must answer what
// `ip -json` / `bridge -json` answer (links of many kinds, several addresses per device,
// routes of every shape in the main table and some outside it, neighbours in several
// states, VXLAN FDB entries), and how its errors and the kernel's errnos surface.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { IpRouteKernel } from '../../src/kernel/iproute.ts';
import type { KernelNet, RouteSpec } from '../../src/kernel/kernel.ts';
import { NetlinkKernel } from '../../src/kernel/netlink.ts';
import {
  AF_INET,
  decodeMessages,
  encodeRequest,
  NLM_F_DUMP_INTR,
  NLMSG_DONE,
  NLMSG_ERROR,
  RTM_NEWADDR,
} from '../../src/kernel/netlink-codec.ts';
import { NetnsRun, rootSnapshot } from '../../src/netns/netns.ts';
import { formatCidr } from '../../src/routing/ipv4.ts';
import { KernelError } from '../../src/util/errors.ts';

const byRoute = (a: RouteSpec, b: RouteSpec): number =>
  formatCidr(a.dst).localeCompare(formatCidr(b.dst)) || (a.dev ?? '').localeCompare(b.dev ?? '');

void describe('NetlinkKernel reads = IpRouteKernel reads (real kernel, throwaway netns)', () => {
  const run = new NetnsRun();
  let snapshot = '';
  let nl: KernelNet;
  let ipr: KernelNet;
  const devs = ['lo', 'eth0', 'br0', 'dum0', 'dum1', 'vx0', 'tun7', 'nope0'];

  before(async () => {
    snapshot = rootSnapshot();
    const ns = await run.addNamespace('nl');
    const peer = await run.addNamespace('nlp');
    await run.addVeth(ns, 'eth0', peer, 'eth1', 1400);
    const sh = async (...args: string[]): Promise<void> => {
      await run.ip(ns, ...args);
    };
    await sh('link', 'set', 'lo', 'up');
    await sh('addr', 'add', '198.18.0.1/24', 'dev', 'eth0');
    await sh('addr', 'add', '198.18.0.9/24', 'dev', 'eth0');
    await sh('addr', 'add', '192.0.2.5/32', 'dev', 'eth0');
    await sh('link', 'add', 'br0', 'type', 'bridge');
    await sh('link', 'set', 'br0', 'up');
    await sh('addr', 'add', '10.9.0.1/24', 'dev', 'br0');
    await sh('link', 'add', 'dum0', 'txqueuelen', '77', 'type', 'veth', 'peer', 'name', 'dum1');
    await sh(
      'link',
      'add',
      'vx0',
      'type',
      'vxlan',
      'id',
      '42',
      'local',
      '198.18.0.1',
      'dev',
      'eth0',
      'dstport',
      '4789',
      'nolearning',
    );
    await sh('link', 'set', 'vx0', 'up');
    await sh('addr', 'add', '10.7.1.0/32', 'dev', 'vx0');
    await sh('tuntap', 'add', 'dev', 'tun7', 'mode', 'tun');
    await sh('addr', 'add', '10.8.0.1/32', 'dev', 'tun7');
    await sh('route', 'add', 'default', 'via', '198.18.0.254', 'dev', 'eth0');
    await sh('route', 'add', 'blackhole', '10.66.0.0/16');
    await sh('route', 'add', '10.7.2.0/24', 'via', '10.7.2.0', 'dev', 'vx0', 'onlink');
    await sh('route', 'add', '10.7.3.0/24', 'via', '10.7.3.0', 'dev', 'vx0', 'onlink');
    await sh('route', 'add', '203.0.113.7', 'dev', 'eth0');
    await sh('route', 'add', '10.50.0.0/16', 'via', '198.18.0.2', 'table', '100');
    await sh('neigh', 'add', '10.7.2.0', 'lladdr', '0a:00:00:00:00:02', 'dev', 'vx0', 'nud', 'permanent');
    await sh('neigh', 'add', '10.7.3.0', 'lladdr', '0a:00:00:00:00:03', 'dev', 'vx0', 'nud', 'permanent');
    await sh('neigh', 'add', '198.18.0.2', 'lladdr', '02:00:00:00:00:02', 'dev', 'eth0', 'nud', 'stale');
    await sh('neigh', 'add', '198.18.0.3', 'lladdr', '02:00:00:00:00:03', 'dev', 'eth0', 'nud', 'noarp');
    await sh('neigh', 'add', '198.18.0.4', 'dev', 'eth0', 'nud', 'failed');
    for (const [m, dst] of [
      ['0a:00:00:00:00:02', '198.18.0.2'],
      ['0a:00:00:00:00:03', '198.18.0.3'],
      ['0a:00:00:00:00:04', '198.18.0.5'],
      ['0a:00:00:00:00:04', '198.18.0.7'],
    ] as const) {
      await run.exec(ns, 'bridge', ['fdb', 'append', m, 'dev', 'vx0', 'dst', dst]);
    }
    await run.exec(ns, 'bridge', ['fdb', 'append', '00:00:00:00:00:00', 'dev', 'vx0', 'dst', '198.18.0.6']);
    // Every read must come from netlink: the writer (iproute2 by default) refuses them here.
    const noIp = (): never => {
      throw new Error('a read went to iproute2');
    };
    nl = new NetlinkKernel({
      netns: ns,
      writer: {
        vxlanAvailable: noIp,
        getLink: noIp,
        listLinks: noIp,
        listAddrs: noIp,
        listRoutes: noIp,
        listNeighs: noIp,
        listFdb: noIp,
        apply: noIp,
      },
    });
    ipr = new IpRouteKernel({ netns: ns });
  });
  after(async () => {
    await run.destroy();
    assert.equal(rootSnapshot(), snapshot, 'the root namespace is unchanged');
  });

  void test('links: the list and each device by name', async () => {
    const sortByIndex = (l: { index: number }[]) => [...l].sort((a, b) => a.index - b.index);
    const mine = sortByIndex(await nl.listLinks());
    assert.deepEqual(mine, sortByIndex(await ipr.listLinks()));
    assert.ok(mine.length >= 6);
    for (const d of devs) assert.deepEqual(await nl.getLink(d), await ipr.getLink(d), d);
    const vx = await nl.getLink('vx0');
    assert.deepEqual(vx?.vxlan, { vni: 42, local: 0xc6120001, dev: 'eth0', port: 4789, learning: false });
    assert.equal((await nl.getLink('dum0'))?.txqueuelen, 77);
    assert.equal((await nl.getLink('tun7'))?.kind, 'tun');
    assert.equal((await nl.getLink('tun7'))?.mac, '');
    assert.equal((await nl.getLink('eth0'))?.mtu, 1400);
  });

  void test('addresses, neighbours and FDB entries per device', async () => {
    for (const d of devs.filter((x) => x !== 'nope0')) {
      assert.deepEqual(await nl.listAddrs(d), await ipr.listAddrs(d), `addrs ${d}`);
      assert.deepEqual(await nl.listNeighs(d), await ipr.listNeighs(d), `neighs ${d}`);
      assert.deepEqual(await nl.listFdb(d), await ipr.listFdb(d), `fdb ${d}`);
    }
    assert.equal((await nl.listAddrs('eth0')).length, 3);
    assert.equal((await nl.listNeighs('vx0')).length, 2);
    assert.equal(
      (await nl.listNeighs('eth0')).length,
      1,
      'the stale entry only (noarp and failed are not listed)',
    );
    const fdb = await nl.listFdb('vx0');
    assert.ok(fdb.length >= 3);
    const raw = await run.exec(run.ns('nl'), 'bridge', ['fdb', 'show', 'dev', 'vx0']);
    assert.match(raw, /^00:00:00:00:00:00 dst 198\.18\.0\.6/m, 'the kernel has the all-zero entry');
    assert.ok(!fdb.some((f) => f.mac === '00:00:00:00:00:00'), 'the all-zero MAC entry is not listed');
  });

  void test('routes: the main table, all and per device', async () => {
    const all = [...(await nl.listRoutes())].sort(byRoute);
    assert.deepEqual(all, [...(await ipr.listRoutes())].sort(byRoute));
    assert.ok(
      all.some((r) => r.dst.prefix === 0 && r.via === 0xc61200fe),
      'the default route',
    );
    assert.ok(
      all.some((r) => formatCidr(r.dst) === '10.66.0.0/16' && r.dev === undefined),
      'the blackhole',
    );
    assert.ok(!all.some((r) => formatCidr(r.dst) === '10.50.0.0/16'), 'table 100 is not the main table');
    for (const d of devs.filter((x) => x !== 'nope0')) {
      assert.deepEqual(
        [...(await nl.listRoutes(d))].sort(byRoute),
        [...(await ipr.listRoutes(d))].sort(byRoute),
        d,
      );
    }
    assert.equal((await nl.listRoutes('vx0')).filter((r) => r.onlink).length, 2);
  });

  void test('a device that does not exist: undefined for getLink, an error for per-device lists', async () => {
    assert.equal(await nl.getLink('nope0'), undefined);
    for (const read of [
      () => nl.listAddrs('nope0'),
      () => nl.listRoutes('nope0'),
      () => nl.listNeighs('nope0'),
      () => nl.listFdb('nope0'),
    ]) {
      await assert.rejects(read(), (err: unknown) => err instanceof KernelError && /nope0/.test(err.message));
    }
    await assert.rejects(ipr.listAddrs('nope0'), 'iproute2 fails the same read');
  });
});

void test('NetlinkKernel: the kernel errno names the failure; answers to other requests are ignored', async () => {
  const seen: Buffer[] = [];
  const answer = (reply: (seq: number) => Buffer[]) => (req: Buffer) => {
    seen.push(req);
    const seq = decodeMessages(req)[0]?.seq ?? 0;
    return Buffer.concat(reply(seq));
  };
  const error = (seq: number, errno: number): Buffer => {
    const e = Buffer.alloc(4 + 16);
    e.writeInt32LE(-errno, 0);
    return encodeRequest(NLMSG_ERROR, 0, seq, e);
  };
  const eperm = new NetlinkKernel({
    transport: answer((seq) => [error(seq, 1)]),
    writer: new IpRouteKernel(),
  });
  await assert.rejects(eperm.listLinks(), (err: unknown) => {
    assert.ok(err instanceof KernelError);
    assert.equal(err.code, 'WEFT_KERNEL');
    assert.match(err.message, /netlink link dump: EPERM/);
    return true;
  });
  const enodev = new NetlinkKernel({
    transport: answer((seq) => [error(seq, 19)]),
    writer: new IpRouteKernel(),
  });
  assert.equal(await enodev.getLink('x'), undefined);
  // An address from a stale request (other seq) in front of the real, empty, answer.
  const stale = Buffer.alloc(8 + 8);
  stale[0] = AF_INET;
  stale[1] = 24;
  stale.writeUInt16LE(8, 8);
  stale.writeUInt16LE(2, 10);
  stale.writeUInt32BE(0x0a000001, 12);
  let n = 0;
  const k = new NetlinkKernel({
    transport: answer((seq) => {
      n++;
      if (n === 1) {
        // getLink for the device: an ifinfomsg with index 5 and IFLA_IFNAME.
        const l = Buffer.alloc(16 + 8);
        l.writeInt32LE(5, 4);
        l.writeUInt16LE(7, 16);
        l.writeUInt16LE(3, 18);
        l.write('eth0\0', 20, 'latin1');
        return [encodeRequest(16, 0, seq, l), error(seq, 0)];
      }
      return [
        encodeRequest(RTM_NEWADDR, 2, seq + 1000, stale),
        encodeRequest(NLMSG_DONE, 2, seq, Buffer.alloc(4)),
      ];
    }),
    writer: new IpRouteKernel(),
  });
  seen.length = 0;
  assert.deepEqual(await k.listAddrs('eth0'), []);
  assert.equal(seen.length, 2, 'the device, then the address dump');
  const seqs = seen.map((r) => decodeMessages(r)[0]?.seq);
  assert.notEqual(seqs[0], seqs[1], 'every request has its own sequence number');
  // A dump the kernel marks interrupted is asked again, and fails after three tries.
  let dumps = 0;
  const link = (seq: number, name: string, flags: number): Buffer => {
    const l = Buffer.alloc(16 + 8);
    l.writeInt32LE(3, 4);
    l.writeUInt16LE(4 + name.length + 1, 16);
    l.writeUInt16LE(3, 18);
    l.write(`${name}\0`, 20, 'latin1');
    return encodeRequest(16, flags, seq, l);
  };
  const flaky = new NetlinkKernel({
    transport: answer((seq) => {
      dumps++;
      const intr = dumps === 1 ? NLM_F_DUMP_INTR : 0;
      return [link(seq, `if${dumps}`, 2 | intr), encodeRequest(NLMSG_DONE, 2 | intr, seq, Buffer.alloc(4))];
    }),
    writer: new IpRouteKernel(),
  });
  assert.deepEqual(
    (await flaky.listLinks()).map((l) => l.name),
    ['if2'],
    'the interrupted answer is dropped, the second one kept',
  );
  const busy = new NetlinkKernel({
    transport: answer((seq) => [encodeRequest(NLMSG_DONE, 2 | NLM_F_DUMP_INTR, seq, Buffer.alloc(4))]),
    writer: new IpRouteKernel(),
  });
  await assert.rejects(busy.listLinks(), /kept changing during 3 dumps/);
  const broken = new NetlinkKernel({
    transport: () => {
      throw new Error('netlink receive: Resource temporarily unavailable');
    },
    writer: new IpRouteKernel(),
  });
  await assert.rejects(broken.getLink('eth0'), /netlink link eth0: netlink receive/);
});
