// One contract suite for KernelNet, run against both implementations: IpRouteKernel inside
// a throwaway network namespace (real iproute2 + kernel) and the RecordingKernel twin. The
// same operations must leave the same observable state and fail the same way.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import type { KernelNet, KernelOp } from '../../src/kernel/kernel.ts';
import { describeOp, normalizeMac, renderOp } from '../../src/kernel/kernel.ts';
import { IpRouteKernel } from '../../src/kernel/iproute.ts';
import { NetlinkKernel } from '../../src/kernel/netlink.ts';
import { RecordingKernel } from '../../src/kernel/recording.ts';
import { NetnsRun, rootSnapshot } from '../../src/netns/netns.ts';
import { parseCidr, parseIpv4 } from '../../src/routing/ipv4.ts';
import { KernelError } from '../../src/util/errors.ts';

const MAC_A = '0a:00:00:00:00:0a';
const MAC_B = '0a:00:00:00:00:0b';
const ip = parseIpv4;

function vxlanOps(): KernelOp[] {
  return [
    {
      op: 'link-add-vxlan',
      spec: {
        name: 'weft.1',
        vni: 1,
        local: ip('198.18.0.1'),
        dev: 'eth0',
        port: 8472,
        mac: MAC_A,
        mtu: 1450,
      },
    },
    { op: 'addr-replace', dev: 'weft.1', addr: { addr: ip('10.5.1.0'), prefix: 32 } },
    { op: 'link-up', name: 'weft.1', mtu: 1450, txqueuelen: 4321 },
    { op: 'neigh-replace', neigh: { addr: ip('10.5.2.0'), lladdr: MAC_B, dev: 'weft.1' } },
    { op: 'fdb-append', fdb: { mac: MAC_B, dev: 'weft.1', dst: ip('198.18.0.2') } },
    {
      op: 'route-replace',
      route: { dst: parseCidr('10.5.2.0/24'), via: ip('10.5.2.0'), dev: 'weft.1', onlink: true },
    },
    { op: 'route-replace', route: { dst: parseCidr('10.5.3.0/24'), via: ip('198.18.0.3'), dev: 'eth0' } },
  ];
}

function contract(name: string, make: () => Promise<KernelNet>, teardown: () => Promise<void>): void {
  void describe(name, () => {
    let k: KernelNet;
    before(async () => {
      k = await make();
    });
    after(teardown);

    void test('vxlan module is reported available', async () => {
      assert.equal(await k.vxlanAvailable(), true);
    });

    void test('creates a VXLAN device and per-peer state, and reads it back', async () => {
      await k.apply(vxlanOps());
      const l = await k.getLink('weft.1');
      assert.ok(l);
      assert.equal(l.kind, 'vxlan');
      assert.equal(l.mac, MAC_A);
      assert.equal(l.mtu, 1450);
      assert.equal(l.txqueuelen, 4321);
      assert.equal(l.up, true);
      assert.deepEqual(l.vxlan, {
        vni: 1,
        local: ip('198.18.0.1'),
        dev: 'eth0',
        port: 8472,
        learning: false,
      });
      assert.deepEqual(await k.listAddrs('weft.1'), [{ addr: ip('10.5.1.0'), prefix: 32 }]);
      assert.deepEqual(await k.listNeighs('weft.1'), [
        { addr: ip('10.5.2.0'), lladdr: MAC_B, dev: 'weft.1' },
      ]);
      assert.deepEqual(await k.listFdb('weft.1'), [{ mac: MAC_B, dev: 'weft.1', dst: ip('198.18.0.2') }]);
      assert.deepEqual(await k.listRoutes('weft.1'), [
        { dst: parseCidr('10.5.2.0/24'), via: ip('10.5.2.0'), dev: 'weft.1', onlink: true },
      ]);
      const eth = await k.listRoutes('eth0');
      assert.ok(eth.some((r) => r.dst.addr === ip('10.5.3.0') && r.via === ip('198.18.0.3')));
      assert.ok((await k.listLinks()).some((x) => x.name === 'weft.1'));
      assert.equal(await k.getLink('nope0'), undefined);
    });

    void test('appending the same FDB entry and replacing again are idempotent', async () => {
      await k.apply(vxlanOps().slice(1));
      assert.equal((await k.listFdb('weft.1')).length, 1);
      assert.equal((await k.listNeighs('weft.1')).length, 1);
    });

    void test('a gateway off every connected subnet is refused, naming the command', async () => {
      const op: KernelOp = {
        op: 'route-replace',
        route: { dst: parseCidr('10.5.4.0/24'), via: ip('203.0.113.1'), dev: 'eth0' },
      };
      await assert.rejects(k.apply([op]), (err: unknown) => {
        assert.ok(err instanceof KernelError);
        assert.equal(err.code, 'WEFT_KERNEL');
        assert.ok(err.message.includes('route replace 10.5.4.0/24 via 203.0.113.1 dev eth0'), err.message);
        return true;
      });
    });

    void test('creating an existing device fails; deletes of missing things do not', async () => {
      await assert.rejects(k.apply(vxlanOps().slice(0, 1)), KernelError);
      await k.apply([
        {
          op: 'route-del',
          route: { dst: parseCidr('10.5.2.0/24'), via: ip('10.5.2.0'), dev: 'weft.1', onlink: true },
        },
        {
          op: 'route-del',
          route: { dst: parseCidr('10.5.2.0/24'), via: ip('10.5.2.0'), dev: 'weft.1', onlink: true },
        },
        { op: 'fdb-del', fdb: { mac: MAC_B, dev: 'weft.1', dst: ip('198.18.0.2') } },
        { op: 'fdb-del', fdb: { mac: MAC_B, dev: 'weft.1', dst: ip('198.18.0.2') } },
        { op: 'neigh-del', neigh: { addr: ip('10.5.2.0'), dev: 'weft.1' } },
        { op: 'neigh-del', neigh: { addr: ip('10.5.77.0'), dev: 'weft.1' } },
        { op: 'addr-del', dev: 'weft.1', addr: { addr: ip('10.99.0.1'), prefix: 32 } },
      ]);
      assert.deepEqual(await k.listRoutes('weft.1'), []);
      assert.deepEqual(await k.listFdb('weft.1'), []);
      assert.deepEqual(await k.listNeighs('weft.1'), []);
    });

    void test('deleting the device takes its routes with it; deleting twice is fine', async () => {
      await k.apply(vxlanOps().slice(3, 6));
      await k.apply([{ op: 'link-del', name: 'weft.1' }]);
      await k.apply([{ op: 'link-del', name: 'weft.1' }]);
      assert.equal(await k.getLink('weft.1'), undefined);
      assert.equal(
        (await k.listRoutes()).some((r) => r.dev === 'weft.1'),
        false,
      );
    });
  });
}

/** A contract run on a throwaway namespace (eth0 198.18.0.1/24 to a peer), read by `make`. */
function netnsContract(name: string, make: (ns: string) => KernelNet): void {
  const run = new NetnsRun();
  let snapshot = '';
  contract(
    name,
    async () => {
      snapshot = rootSnapshot();
      const ns = await run.addNamespace('k');
      const peer = await run.addNamespace('kp');
      await run.addVeth(ns, 'eth0', peer, 'eth1');
      await run.ip(ns, 'addr', 'add', '198.18.0.1/24', 'dev', 'eth0');
      return make(ns);
    },
    async () => {
      await run.destroy();
      assert.equal(rootSnapshot(), snapshot, 'the root namespace is unchanged');
    },
  );
}

netnsContract('IpRouteKernel (netns)', (ns) => new IpRouteKernel({ netns: ns }));
netnsContract(
  'NetlinkKernel (netns): netlink reads, iproute2 writes',
  (ns) => new NetlinkKernel({ netns: ns }),
);
contract(
  'RecordingKernel',
  () => {
    const k = new RecordingKernel();
    k.addDevice('eth0', [{ addr: ip('198.18.0.1'), prefix: 24 }]);
    return Promise.resolve(k);
  },
  () => Promise.resolve(),
);

void test('renderOp: every operation is one iproute2 batch line', () => {
  const lines = vxlanOps().map(describeOp);
  assert.deepEqual(lines, [
    `ip link add weft.1 address ${MAC_A} mtu 1450 type vxlan id 1 local 198.18.0.1 dev eth0 dstport 8472 nolearning`,
    'ip addr replace 10.5.1.0/32 dev weft.1',
    'ip link set weft.1 mtu 1450 txqueuelen 4321 up',
    `ip neigh replace 10.5.2.0 lladdr ${MAC_B} dev weft.1 nud permanent`,
    `bridge fdb append ${MAC_B} dev weft.1 dst 198.18.0.2`,
    'ip route replace 10.5.2.0/24 via 10.5.2.0 dev weft.1 onlink',
    'ip route replace 10.5.3.0/24 via 198.18.0.3 dev eth0',
  ]);
  assert.equal(renderOp({ op: 'link-del', name: 'x' }).tool, 'ip');
  assert.equal(normalizeMac('0A-00-00-00-00-0B'), MAC_B);
  assert.equal(normalizeMac('0a:00:00'), undefined);
});

void test('RecordingKernel: injected failure and external deletion', async () => {
  const k = new RecordingKernel();
  k.addDevice('eth0', [{ addr: ip('198.18.0.1'), prefix: 24 }]);
  k.failOnce = /link add/;
  await assert.rejects(k.apply(vxlanOps().slice(0, 1)), /injected failure/);
  await k.apply(vxlanOps());
  assert.equal(k.ops.length, 7);
  k.externalDelete('weft.1');
  assert.equal(await k.getLink('weft.1'), undefined);
  assert.deepEqual(await k.listRoutes('weft.1'), []);
  assert.equal(k.ops.length, 7, 'external changes are not recorded');
});
