// The addon's busyPoll (the forwarder's busy-poll window, src/dataplane/busy-poll.ts): it
// reports which of a TUN device and a socket is readable, waits out its window when neither
// is, returns as soon as traffic arrives while it spins, and reports nothing for closed handles.
import assert from 'node:assert/strict';
import { resolve } from 'node:path';
import { test } from 'node:test';
import { NetnsRun } from '../../src/netns/netns.ts';
import { projectRoot } from '../../src/util/self.ts';

interface Timed {
  mask: number;
  us: number;
}

void test('busyPoll: idle window, socket ready, TUN ready, traffic during the spin, closed handles', async (t) => {
  const run = new NetnsRun();
  t.after(() => run.destroy());
  const ns = await run.addNamespace('bp');
  const out = await run.exec(
    ns,
    process.execPath,
    ['--import', 'tsx', resolve(projectRoot, 'test/native/fixtures/busy-poll-check.ts')],
    { timeoutMs: 30000 },
  );
  const r = JSON.parse(out.trim().split('\n').pop() as string) as {
    idle: Timed;
    zeroWindow: Timed;
    socket: Timed;
    tun: Timed;
    late: Timed;
    closed: number;
  };
  assert.equal(r.idle.mask, 0, 'nothing pending');
  assert.ok(r.idle.us >= 3000, `an idle window lasts its length (${r.idle.us} µs)`);
  assert.ok(r.idle.us < 1_000_000, `and not much longer (${r.idle.us} µs)`);
  assert.equal(r.zeroWindow.mask, 0, 'a zero window does not poll');
  assert.equal(r.socket.mask, 2, 'a datagram on the socket');
  assert.ok(r.socket.us < 100_000, `found at once (${r.socket.us} µs)`);
  assert.equal(r.tun.mask, 1, 'a packet routed into the TUN');
  assert.equal(r.late.mask, 2, 'a datagram that arrived during the window');
  assert.ok(r.late.us >= 10_000 && r.late.us < 2_000_000, `returned when it arrived (${r.late.us} µs)`);
  assert.equal(r.closed, 0, 'closed handles are never readable');
});
