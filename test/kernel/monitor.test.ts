// KernelMonitor in a throwaway namespace (a child process there opens it and reports each
// change): a link, an address and a route changed there each reach it, a burst becomes one
// change, a quiet namespace gives none, and nothing from other namespaces gets in.
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { NetnsRun, rootSnapshot } from '../../src/netns/netns.ts';
import { MonitorChild } from './fixtures/monitor-harness.ts';

const run = new NetnsRun();
let snapshot = '';
let ns = '';
let other = '';
let child: MonitorChild;

const changes = (): number => child.changes();

before(async () => {
  snapshot = rootSnapshot();
  ns = await run.addNamespace('mon');
  other = await run.addNamespace('other');
  await run.addVeth(ns, 'eth0', other, 'eth0');
  child = await MonitorChild.start(run, ns, { DEBOUNCE_MS: '50' });
});
after(async () => {
  await child.stop();
  await run.destroy();
  assert.equal(rootSnapshot(), snapshot, 'the root namespace is unchanged');
});

void test('a link, an address and a route change each reach the monitor', async () => {
  const c0 = changes();
  await run.ip(ns, 'link', 'set', 'eth0', 'mtu', '1400');
  await child.waitFor('a change after an MTU change', () => changes() > c0);
  const c1 = changes();
  await run.ip(ns, 'addr', 'add', '198.18.7.1/24', 'dev', 'eth0');
  await child.waitFor('a change after addr add', () => changes() > c1);
  const c2 = changes();
  await run.ip(ns, 'route', 'add', '10.99.0.0/16', 'via', '198.18.7.2', 'dev', 'eth0');
  await child.waitFor('a change after route add', () => changes() > c2);
  const c3 = changes();
  await run.ip(ns, 'route', 'del', '10.99.0.0/16');
  await child.waitFor('a change after route del', () => changes() > c3);
});

void test('a burst of notifications is one change; other namespaces and silence give none', async () => {
  await new Promise((r) => setTimeout(r, 300));
  const c0 = changes();
  // One ip -batch: 20 routes added back to back, well inside the 50 ms debounce.
  const lines = Array.from({ length: 20 }, (_, i) => `route add 10.98.${i}.0/24 via 198.18.7.2 dev eth0`);
  await run.exec(ns, 'ip', ['-batch', '-'], { input: lines.join('\n') + '\n' });
  await child.waitFor('the burst', () => changes() > c0);
  await new Promise((r) => setTimeout(r, 300));
  const after = changes();
  assert.ok(after - c0 <= 2, `20 routes in one batch gave ${after - c0} changes`);
  const last = child.child.output().trim().split('\n').at(-1) ?? '';
  const notes = Number(last.split(' ')[1]);
  assert.ok(notes >= 20, `every notification was read (${last})`);
  // The other end of the veth is in another namespace: changes there are not ours.
  await run.ip(other, 'addr', 'add', '198.18.7.2/24', 'dev', 'eth0');
  await run.ip(other, 'route', 'add', '10.97.0.0/16', 'via', '198.18.7.1', 'dev', 'eth0');
  await new Promise((r) => setTimeout(r, 500));
  assert.equal(changes(), after, 'no change from the other namespace, none while quiet');
});
