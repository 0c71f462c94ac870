// KernelMonitor with a KernelInterest, in a throwaway namespace (a child process there
// opens it, test/kernel/fixtures/monitor-child.ts): changes of devices it was not told
// about (an underlay's MTU, addresses, neighbours; routes outside the Network) are read and
// dropped; changes of its device (link, address, neighbour) and routes into the Network
// through any device each reach it; the device is followed when it is deleted and made
// again under its name, and dropped when renamed away.
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { KernelGroups } from '../../src/kernel/monitor.ts';
import { NetnsRun, rootSnapshot } from '../../src/netns/netns.ts';
import { MonitorChild } from './fixtures/monitor-harness.ts';

const run = new NetnsRun();
let snapshot = '';
let ns = '';
let child: MonitorChild;

/** Runs `change`, waits past the debounce, and says whether it reached the owner. */
async function reaches(change: () => Promise<unknown>): Promise<boolean> {
  await new Promise((r) => setTimeout(r, 150));
  const c0 = child.changes();
  await change();
  await new Promise((r) => setTimeout(r, 300));
  return child.changes() > c0;
}

before(async () => {
  snapshot = rootSnapshot();
  ns = await run.addNamespace('mint');
  const other = await run.addNamespace('mpeer');
  await run.addVeth(ns, 'eth0', other, 'eth0');
  await run.ip(ns, 'link', 'set', 'eth0', 'up');
  await run.ip(ns, 'addr', 'add', '198.18.9.1/24', 'dev', 'eth0');
  await run.ip(ns, 'link', 'add', 'wt0', 'type', 'bridge');
  await run.ip(ns, 'link', 'set', 'wt0', 'up');
  child = await MonitorChild.start(run, ns, {
    DEBOUNCE_MS: '30',
    GROUPS: String(KernelGroups.link | KernelGroups.neigh | KernelGroups.ipv4Addr | KernelGroups.ipv4Route),
    INTEREST_DEVICES: 'wt0',
    ROUTES_WITHIN: '10.244.0.0/16',
  });
});
after(async () => {
  await child.stop();
  await run.destroy();
  assert.equal(rootSnapshot(), snapshot, 'the root namespace is unchanged');
});

void test('changes of other devices and routes outside the Network are read and dropped', async () => {
  const before = await child.counters();
  const reached = await reaches(async () => {
    await run.ip(ns, 'link', 'set', 'eth0', 'mtu', '1400');
    await run.ip(ns, 'addr', 'add', '198.18.9.5/24', 'dev', 'eth0');
    await run.ip(ns, 'route', 'add', '10.99.0.0/16', 'via', '198.18.9.2', 'dev', 'eth0');
    await run.ip(ns, 'route', 'add', '10.245.1.0/24', 'via', '198.18.9.2', 'dev', 'eth0');
    await run.ip(ns, 'neigh', 'add', '198.18.9.7', 'lladdr', '02:00:00:00:09:07', 'dev', 'eth0');
    await run.ip(ns, 'neigh', 'del', '198.18.9.7', 'dev', 'eth0');
    // A route that covers the Network but is less specific than any of its routes.
    await run.ip(ns, 'route', 'add', '10.0.0.0/8', 'via', '198.18.9.2', 'dev', 'eth0');
  });
  const now = await child.counters();
  assert.equal(reached, false, `no change reached the owner:\n${child.child.output()}`);
  assert.ok(
    now.notifications - before.notifications >= 7,
    `the notifications were read (${JSON.stringify(now)})`,
  );
  assert.equal(
    now.ignored - before.ignored,
    now.notifications - before.notifications,
    'every one was dropped',
  );
});

void test("the device's own changes and routes into the Network through any device each reach it", async () => {
  assert.ok(await reaches(() => run.ip(ns, 'addr', 'add', '10.244.3.0/32', 'dev', 'wt0')), 'address added');
  assert.ok(await reaches(() => run.ip(ns, 'link', 'set', 'wt0', 'mtu', '1450')), 'MTU changed');
  assert.ok(
    await reaches(() =>
      run.ip(ns, 'neigh', 'add', '10.244.3.9', 'lladdr', '02:00:00:00:03:09', 'dev', 'wt0'),
    ),
    'neighbour added',
  );
  assert.ok(
    await reaches(() =>
      run.ip(ns, 'route', 'add', '10.244.7.0/24', 'via', '10.244.7.0', 'dev', 'wt0', 'onlink'),
    ),
    'a route through the device',
  );
  // Replaced by a route through another device: the notification names only eth0.
  assert.ok(
    await reaches(() => run.ip(ns, 'route', 'replace', '10.244.7.0/24', 'via', '198.18.9.2', 'dev', 'eth0')),
    'a route into the Network replaced to go elsewhere',
  );
  assert.ok(
    await reaches(() => run.ip(ns, 'route', 'del', '10.244.7.0/24')),
    'a route into the Network deleted',
  );
  assert.ok(await reaches(() => run.ip(ns, 'link', 'set', 'wt0', 'down')), 'set down');
});

void test('the device is followed across re-creation under its name and dropped when renamed away', async () => {
  assert.ok(await reaches(() => run.ip(ns, 'link', 'del', 'wt0')), 'deleted');
  assert.ok(await reaches(() => run.ip(ns, 'link', 'add', 'wt0', 'type', 'bridge')), 'made again');
  // The new device has a new ifindex: its address is still ours.
  assert.ok(
    await reaches(() => run.ip(ns, 'addr', 'add', '10.244.3.0/32', 'dev', 'wt0')),
    'address on the new one',
  );
  assert.ok(await reaches(() => run.ip(ns, 'link', 'set', 'wt0', 'name', 'wtold')), 'renamed away');
  assert.equal(
    await reaches(() => run.ip(ns, 'addr', 'add', '198.18.10.1/24', 'dev', 'wtold')),
    false,
    'the renamed device is no longer ours',
  );
});
