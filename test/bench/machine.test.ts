// bench/machine.ts: the PTI facts read from sysfs and cpuinfo, and the line the bench prints.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { cpus } from 'node:os';
import {
  describeCosts,
  describeWake,
  machineCosts,
  pcidFromCpuinfo,
  ptiFromMeltdown,
  wakeCosts,
} from '../../bench/machine.ts';

void test('page-table isolation and PCID from their kernel texts', () => {
  assert.equal(ptiFromMeltdown('Mitigation: PTI\n'), 'on');
  assert.equal(ptiFromMeltdown('Not affected\n'), 'off');
  assert.equal(ptiFromMeltdown('Vulnerable\n'), 'off');
  assert.equal(ptiFromMeltdown(undefined), 'unknown');
  assert.equal(ptiFromMeltdown('something new'), 'unknown');
  const cpuinfo = (flags: string): string =>
    `processor\t: 0\nmodel name\t: X\nflags\t\t: ${flags}\n\nprocessor\t: 1\n`;
  assert.equal(pcidFromCpuinfo(cpuinfo('fpu vme pse pcid invpcid avx2')), true);
  assert.equal(pcidFromCpuinfo(cpuinfo('fpu vme pse avx2 pti')), false);
  assert.equal(pcidFromCpuinfo('processor : 0\n'), undefined);
  assert.equal(pcidFromCpuinfo(undefined), undefined);
});

void test('the cost line: measured here, and said plainly', () => {
  const c = machineCosts();
  assert.ok(c.systemCallUs > 0 && c.systemCallUs < 1000, `a system call took ${c.systemCallUs} µs`);
  assert.match(
    describeCosts({ systemCallUs: 1.72, pageTableIsolation: 'on', pcid: false }),
    /^a system call from Node costs 1\.72 µs here \(page-table isolation on and no PCID, so/,
  );
  assert.match(
    describeCosts({ systemCallUs: 0.1, pageTableIsolation: 'off', pcid: true }),
    /0\.10 µs here \(no page-table isolation\)/,
  );
});

void test('cross-CPU wake-up: measured here with both programs pinned, and said plainly', async () => {
  const w = await wakeCosts();
  if (cpus().length < 2) {
    assert.equal(w, undefined);
  } else {
    assert.ok(w, 'measured on a machine with 2 CPUs');
    assert.ok(w.backToBackUs > 0 && w.backToBackUs < 100_000, `back to back: ${w.backToBackUs} µs`);
    assert.ok(w.afterIdleUs > 0 && w.afterIdleUs < 100_000, `after idle: ${w.afterIdleUs} µs`);
  }
  assert.match(
    describeWake({ backToBackUs: 19.4, afterIdleUs: 166.2 }),
    /^waking a program on the other CPU takes 19 µs back to back and 166 µs after 10 ms idle/,
  );
  assert.match(describeWake(undefined), /not measured/);
});
