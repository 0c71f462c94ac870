/**
 * How long a node takes to turn a 5,000-lease etcd snapshot into its route table.
 *
 * Why: at start and after every relist (compaction, reconnect) the whole lease set goes
 * through the store's decoding (src/lease/etcd/codec.ts), reconcile (src/lease/reconcile.ts)
 * and the route table (src/routing/route-table.ts). Target: under 100 ms for 5,000 leases,
 * so a relist in a big cluster never stalls the daemon. Rows, side by side:
 *   - decode: 5,000 etcd key/values (flannel JSON) -> Lease values;
 *   - first sync: empty -> 5,000 peers, events applied to a RouteTable;
 *   - relist: 5,000 known vs a snapshot with 1% removed, 1% added, 1% changed, applied;
 *   - with --etcd: the real store against a real etcd holding 5,000 flannel leases (one
 *     etcd lease each, as flanneld writes them): watch() start to first batch applied.
 *
 *   node --import tsx bench/reconcile.ts [--leases 5000] [--runs 15] [--etcd]
 */
import { parseArgs } from 'node:util';
import { decodeLeaseValue, encodeLeaseValue, parseSubnetKey, subnetKey } from '../src/lease/etcd/codec.ts';
import { reconcileSnapshot } from '../src/lease/reconcile.ts';
import type { Lease, LeaseEvent } from '../src/lease/types.ts';
import type { Ipv4Cidr } from '../src/routing/ipv4.ts';
import { parseIpv4 } from '../src/routing/ipv4.ts';
import { RouteTable } from '../src/routing/route-table.ts';

const { values } = parseArgs({
  options: {
    leases: { type: 'string', default: '5000' },
    runs: { type: 'string', default: '15' },
    etcd: { type: 'boolean', default: false },
  },
});
const N = Number(values.leases);
const RUNS = Number(values.runs);
const TARGET_MS = 100;
const PREFIX = '/coreos.com/network';
const NETWORK_BASE = parseIpv4('10.128.0.0'); // /9 of /24s: room for 32k subnets

function subnetOf(i: number): Ipv4Cidr {
  return { addr: (NETWORK_BASE + (i + 1) * 256) >>> 0, prefix: 24 };
}

function leaseOf(i: number, generation = 0): Lease {
  return {
    subnet: subnetOf(i),
    attrs: {
      publicIp: `172.${16 + ((i >> 16) & 15)}.${(i >> 8) & 255}.${i & 255}`,
      publicIpv6: null,
      backendType: 'vxlan',
      backendData: {
        VNI: 1,
        VtepMAC: `aa:bb:${generation.toString(16).padStart(2, '0')}:${((i >> 8) & 255).toString(16).padStart(2, '0')}:${(i & 255).toString(16).padStart(2, '0')}:01`,
      },
    },
    expiresAt: Date.now() + 86_400_000,
  };
}

function apply(table: RouteTable<Lease>, events: readonly LeaseEvent[]): void {
  for (const e of events) {
    if (e.type === 'removed') table.remove(e.lease.subnet);
    else table.replace(e.lease.subnet, e.lease);
  }
}

function stats(xs: number[]): { median: number; min: number; max: number } {
  const s = [...xs].sort((a, b) => a - b);
  return { median: s[Math.floor(s.length / 2)]!, min: s[0]!, max: s[s.length - 1]! };
}

function row(name: string, times: number[]): void {
  const { median, min, max } = stats(times);
  const verdict = median < TARGET_MS ? 'ok' : `OVER ${TARGET_MS} ms`;
  console.log(
    `${name.padEnd(44)} median ${median.toFixed(2).padStart(8)} ms  (min ${min.toFixed(2)}, max ${max.toFixed(2)}, n=${times.length})  ${verdict}`,
  );
}

function time(fn: () => void): number {
  const t0 = performance.now();
  fn();
  return performance.now() - t0;
}

const own: Ipv4Cidr = subnetOf(N + 10);
const kvs = Array.from({ length: N }, (_, i) => ({
  key: subnetKey(PREFIX, subnetOf(i)),
  value: encodeLeaseValue(leaseOf(i).attrs),
}));
const snapshot = Array.from({ length: N }, (_, i) => leaseOf(i));
const k1 = Math.max(1, Math.floor(N / 100));
// Relist input: first 1% gone, 1% new ones at the end, the next 1% with a new VTEP MAC.
const relisted = [
  ...snapshot.slice(k1, 2 * k1).map((l, j) => leaseOf(k1 + j, 1)),
  ...snapshot.slice(2 * k1),
  ...Array.from({ length: k1 }, (_, j) => leaseOf(N + 20 + j)),
];

console.log(`reconcile bench: ${N} leases, ${RUNS} runs each, target < ${TARGET_MS} ms`);
const decodeT: number[] = [];
const firstT: number[] = [];
const relistT: number[] = [];
for (let r = 0; r < RUNS + 2; r++) {
  const keep = r >= 2; // two warm-up rounds
  const d = time(() => {
    const out: Lease[] = [];
    for (const kv of kvs) {
      const subnet = parseSubnetKey(PREFIX, kv.key)!;
      out.push({ subnet, attrs: decodeLeaseValue(kv.key, kv.value), expiresAt: Infinity });
    }
    if (out.length !== N) throw new Error('decode lost leases');
  });
  const table = new RouteTable<Lease>();
  let known: Map<string, Lease> = new Map();
  const f = time(() => {
    const res = reconcileSnapshot(known, snapshot, own);
    apply(table, res.events);
    known = res.known;
  });
  if (table.size !== N) throw new Error(`first sync: ${table.size} routes, want ${N}`);
  let events = 0;
  const l = time(() => {
    const res = reconcileSnapshot(known, relisted, own);
    apply(table, res.events);
    events = res.events.length;
  });
  if (table.size !== N || events !== 4 * k1)
    throw new Error(`relist: ${table.size} routes, ${events} events`);
  if (keep) {
    decodeT.push(d);
    firstT.push(f);
    relistT.push(l);
  }
}
row(`decode ${N} flannel values`, decodeT);
row(`first sync: ${N} added -> route table`, firstT);
row(`relist: ${N} known, ${4 * k1} events -> route table`, relistT);

if (values.etcd) {
  const { startEtcd } = await import('../test/support/etcd.ts');
  const { EtcdLeaseStore } = await import('../src/lease/etcd/store.ts');
  const { Etcd3 } = await import('etcd3');
  const cluster = await startEtcd({ members: 1 });
  const client = new Etcd3({ hosts: [...cluster.endpoints] });
  try {
    await client
      .put(`${PREFIX}/config`)
      .value(JSON.stringify({ Network: '10.128.0.0/9', Backend: { Type: 'vxlan' } }));
    const t0 = performance.now();
    for (let i = 0; i < N; i += 250) {
      await Promise.all(
        kvs.slice(i, i + 250).map(async (kv) => {
          const lease = client.lease(86400, { autoKeepAlive: false });
          await lease.put(kv.key).value(kv.value);
          lease.release();
        }),
      );
    }
    console.log(`(wrote ${N} flannel leases to etcd in ${(performance.now() - t0).toFixed(0)} ms)`);
    /** watch() start to the first batch applied to a fresh route table. */
    const firstBatch = async (store: InstanceType<typeof EtcdLeaseStore>): Promise<number> => {
      const table = new RouteTable<Lease>();
      const ac = new AbortController();
      const t1 = performance.now();
      let elapsed = 0;
      let watching: Promise<void> = Promise.resolve();
      await new Promise<void>((resolve) => {
        watching = store.watch(own, {
          signal: ac.signal,
          onEvents: (events) => {
            apply(table, events);
            elapsed = performance.now() - t1;
            resolve();
          },
        });
      });
      ac.abort();
      await watching;
      if (table.size !== N) throw new Error(`etcd first batch: ${table.size} routes, want ${N}`);
      return elapsed;
    };
    const cold: number[] = [];
    const warm: number[] = [];
    for (let r = 0; r < Math.min(RUNS, 5); r++) {
      // Cold: a fresh store, nothing cached (a daemon start). Warm: the same store again,
      // peers' etcd lease expiry cached (a relist after compaction or reconnect).
      const store = new EtcdLeaseStore({ endpoints: cluster.endpoints });
      cold.push(await firstBatch(store));
      warm.push(await firstBatch(store));
      await store.close();
    }
    row(`etcd store cold: list+TTL lookups+reconcile`, cold);
    row(`etcd store warm (relist): list+reconcile`, warm);
  } finally {
    client.close();
    await cluster.stop();
  }
}
