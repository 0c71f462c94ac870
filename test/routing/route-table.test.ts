import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { parseCidr, parseIpv4, prefixMask, formatCidr } from '../../src/routing/ipv4.ts';
import type { Ipv4Cidr } from '../../src/routing/ipv4.ts';
import { RouteTable } from '../../src/routing/route-table.ts';

const a = (s: string): number => parseIpv4(s);
const c = (s: string): Ipv4Cidr => parseCidr(s);

void test('longest prefix wins among /0, nested prefixes and /32', () => {
  const t = new RouteTable<string>();
  assert.equal(t.lookup(a('10.0.0.1')), undefined, 'empty table');
  assert.equal(t.add(c('0.0.0.0/0'), 'default'), true);
  assert.equal(t.add(c('10.0.0.0/8'), 'ten'), true);
  assert.equal(t.add(c('10.244.0.0/16'), 'cluster'), true);
  assert.equal(t.add(c('10.244.3.0/24'), 'node3'), true);
  assert.equal(t.add(c('10.244.3.77/32'), 'host'), true);
  assert.equal(t.add(c('200.1.2.0/24'), 'high'), true);
  assert.equal(t.size, 6);
  assert.equal(t.lookup(a('10.244.3.77')), 'host');
  assert.equal(t.lookup(a('10.244.3.78')), 'node3');
  assert.equal(t.lookup(a('10.244.4.1')), 'cluster');
  assert.equal(t.lookup(a('10.1.1.1')), 'ten');
  assert.equal(t.lookup(a('8.8.8.8')), 'default');
  assert.equal(t.lookup(a('200.1.2.255')), 'high', 'addresses >= 2^31');
  assert.equal(t.lookup(a('255.255.255.255')), 'default');
});

void test('add refuses duplicates; replace swaps; remove falls back to the shorter prefix', () => {
  const t = new RouteTable<string>();
  t.add(c('10.244.0.0/16'), 'cluster');
  t.add(c('10.244.3.0/24'), 'old');
  assert.equal(t.add(c('10.244.3.0/24'), 'dup'), false);
  assert.equal(t.lookup(a('10.244.3.1')), 'old');
  assert.equal(t.replace(c('10.244.3.0/24'), 'new'), 'old');
  assert.equal(t.lookup(a('10.244.3.1')), 'new');
  assert.equal(t.size, 2);
  assert.equal(t.replace(c('10.244.9.0/24'), 'nine'), undefined);
  assert.equal(t.size, 3);
  assert.equal(t.remove(c('10.244.3.0/24')), 'new');
  assert.equal(t.remove(c('10.244.3.0/24')), undefined, 'second remove is a no-op');
  assert.equal(t.lookup(a('10.244.3.1')), 'cluster');
  assert.equal(t.get(c('10.244.9.0/24')), 'nine');
  assert.equal(t.size, 2);
  t.remove(c('10.244.0.0/16'));
  t.remove(c('10.244.9.0/24'));
  assert.equal(t.size, 0);
  assert.equal(t.lookup(a('10.244.3.1')), undefined);
});

void test('host bits in a CIDR given to the table are ignored', () => {
  const t = new RouteTable<string>();
  t.add({ addr: a('10.244.3.9'), prefix: 24 }, 'x');
  assert.equal(t.get(c('10.244.3.0/24')), 'x');
  assert.equal(t.lookup(a('10.244.3.200')), 'x');
  assert.throws(() => t.add({ addr: 0, prefix: 33 }, 'bad'), RangeError);
});

void test('entries iterates every route, longest prefix first; clear empties', () => {
  const t = new RouteTable<number>();
  t.add(c('0.0.0.0/0'), 0);
  t.add(c('10.244.3.0/24'), 24);
  t.add(c('192.168.0.0/16'), 16);
  const got = Array.from(t.entries()).map(([k, v]) => `${formatCidr(k)}=${v}`);
  assert.deepEqual(got, ['10.244.3.0/24=24', '192.168.0.0/16=16', '0.0.0.0/0=0']);
  t.clear();
  assert.equal(t.size, 0);
  assert.deepEqual(Array.from(t.entries()), []);
});

void test('property: lookup equals a linear scan for the longest containing prefix', () => {
  const route = fc.record({
    addr: fc.integer({ min: 0, max: 0xffffffff }),
    prefix: fc.integer({ min: 0, max: 32 }),
  });
  fc.assert(
    fc.property(
      fc.array(route, { maxLength: 40 }),
      fc.array(fc.integer({ min: 0, max: 0xffffffff }), { maxLength: 40 }),
      (routes, probes) => {
        const t = new RouteTable<number>();
        const list: { net: number; prefix: number; v: number }[] = [];
        routes.forEach((r, i) => {
          const net = (r.addr & prefixMask(r.prefix)) >>> 0;
          const existing = list.find((x) => x.net === net && x.prefix === r.prefix);
          if (existing) existing.v = i;
          else list.push({ net, prefix: r.prefix, v: i });
          t.replace({ addr: net, prefix: r.prefix }, i);
        });
        assert.equal(t.size, list.length);
        // Probe random addresses and addresses inside each route.
        for (const addr of [...probes, ...list.map((x) => x.net)]) {
          let best: { prefix: number; v: number } | undefined;
          for (const x of list) {
            if (
              (addr & prefixMask(x.prefix)) >>> 0 === x.net &&
              (best === undefined || x.prefix > best.prefix)
            )
              best = x;
          }
          assert.equal(t.lookup(addr), best?.v);
        }
      },
    ),
    { numRuns: 300 },
  );
});
