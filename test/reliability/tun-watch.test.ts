// The TUN device check the userspace backends run every second, against twins (no
// namespaces): tunProblem() tells a deleted, replaced, downed, address-less or route-less
// device apart from a healthy one (RecordingKernel), and TunWatch never runs two checks at
// once, makes every FULL_CHECK_EVERY-th periodic check a full one, and stop() waits for a
// check in progress. The real devices are covered by device-loss.test.ts.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { FULL_CHECK_EVERY, tunProblem, TunWatch } from '../../src/backend/udp/udp.ts';
import { RecordingKernel } from '../../src/kernel/recording.ts';
import { parseCidr, parseIpv4 } from '../../src/routing/ipv4.ts';

const NAME = 'wtw0'; // not a device of this namespace: os.networkInterfaces() never lists it
const ADDR = parseIpv4('10.60.3.0');
const NET = parseCidr('10.60.0.0/16');

async function healthyKernel(): Promise<{ kernel: RecordingKernel; index: number }> {
  const kernel = new RecordingKernel();
  kernel.addDevice(NAME, [], 1500);
  kernel.externalModify(NAME, { kind: 'tun' });
  await kernel.apply([
    { op: 'addr-replace', dev: NAME, addr: { addr: ADDR, prefix: 32 } },
    { op: 'link-up', name: NAME, mtu: 1472 },
    { op: 'route-replace', route: { dst: NET, dev: NAME } },
  ]);
  const index = (await kernel.getLink(NAME))!.index;
  return { kernel, index };
}

void test('tunProblem: healthy, gone, replaced, down, address lost, route lost', async () => {
  const { kernel, index } = await healthyKernel();
  assert.equal(await tunProblem(kernel, NAME, ADDR, index, NET), undefined);
  assert.equal(await tunProblem(kernel, NAME, ADDR, index + 1, NET), 'replaced', 'another device, same name');

  await kernel.apply([{ op: 'route-del', route: { dst: NET, dev: NAME } }]);
  assert.equal(await tunProblem(kernel, NAME, ADDR, index, NET), 'route');

  await kernel.apply([{ op: 'addr-del', dev: NAME, addr: { addr: ADDR, prefix: 32 } }]);
  assert.equal(await tunProblem(kernel, NAME, ADDR, index, NET), 'address');

  kernel.externalModify(NAME, { up: false });
  assert.equal(await tunProblem(kernel, NAME, ADDR, index, NET), 'down');

  kernel.externalModify(NAME, { up: true, kind: 'dummy' });
  assert.equal(await tunProblem(kernel, NAME, ADDR, index, NET), 'replaced', 'not a TUN any more');

  kernel.externalDelete(NAME);
  assert.equal(await tunProblem(kernel, NAME, ADDR, index, NET), 'gone');
});

void test('tunProblem: the cheap check trusts a device listed with our address unless asked for a full one', async () => {
  // Loopback is listed by os.networkInterfaces() with 127.0.0.1; the kernel twin knows nothing.
  const kernel = new RecordingKernel();
  const lo = parseIpv4('127.0.0.1');
  assert.equal(await tunProblem(kernel, 'lo', lo, 1, NET, false), undefined, 'no kernel query needed');
  assert.equal(await tunProblem(kernel, 'lo', lo, 1, NET, true), 'gone', 'a full check asks the kernel');
});

void test('TunWatch: one check at a time, every 5th periodic check full, stop waits', async () => {
  const calls: boolean[] = [];
  let running = 0;
  let maxRunning = 0;
  let release: (() => void) | undefined;
  const watch = new TunWatch(5, async (full) => {
    calls.push(full);
    running++;
    maxRunning = Math.max(maxRunning, running);
    if (calls.length === 1) await new Promise<void>((r) => (release = r));
    else await sleep(1);
    running--;
  });
  // By hand: a check now (full), joined by a second caller while it runs.
  const first = watch.tick();
  const joined = watch.tick();
  assert.equal(first, joined, 'a tick during a check joins it');
  assert.deepEqual(calls, [true]);
  release?.();
  await first;

  watch.start();
  const deadline = Date.now() + 5000;
  while (calls.length < 1 + 2 * FULL_CHECK_EVERY && Date.now() < deadline) await sleep(5);
  await watch.stop();
  const after = calls.length;
  await sleep(30);
  assert.equal(calls.length, after, 'no checks after stop()');
  assert.equal(maxRunning, 1, 'never two checks at once');
  const periodic = calls.slice(1);
  assert.ok(periodic.length >= 2 * FULL_CHECK_EVERY, `only ${periodic.length} periodic checks`);
  assert.deepEqual(
    periodic,
    periodic.map((_, i) => (i + 1) % FULL_CHECK_EVERY === 0),
    'every FULL_CHECK_EVERY-th periodic check is full',
  );

  // stop() waits for a check in progress.
  let done = false;
  const slow = new TunWatch(0, async () => {
    await sleep(50);
    done = true;
  });
  void slow.tick();
  await slow.stop();
  assert.equal(done, true);
});

void test('TunWatch: a kernel change during a check runs one more full check after it, once', async () => {
  const calls: boolean[] = [];
  let release: (() => void) | undefined;
  const watch = new TunWatch(60_000, async (full) => {
    calls.push(full);
    if (calls.length === 1) await new Promise<void>((r) => (release = r));
  });
  watch.start();
  const first = watch.tick(true);
  // Two notifications arrive while the first check runs (it may have read the state before them).
  void watch.tick(true, true);
  void watch.tick(true, true);
  // A plain tick joins without asking for another.
  assert.equal(watch.tick(false), first);
  release?.();
  await first;
  await sleep(20);
  assert.deepEqual(calls, [true, true], 'exactly one full check after the running one');
  await watch.tick(false);
  assert.equal(calls.length, 3);
  await watch.stop();
  // After stop() nothing asked earlier runs again.
  const w2 = new TunWatch(60_000, async () => {
    calls.push(true);
    await sleep(5);
  });
  w2.start();
  const p = w2.tick(true);
  void w2.tick(true, true);
  await w2.stop();
  await p;
  await sleep(20);
  assert.equal(calls.length, 4, 'the rerun is dropped when the watch stops');
});
