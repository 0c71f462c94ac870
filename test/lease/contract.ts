/**
 * The LeaseStore contract: one node:test suite every store must pass (embedded, etcd, kube).
 *
 * Usage, from test/lease/<store>.test.ts:
 *
 *   leaseStoreContract('etcd', async (netConf) => {
 *     // make a store serving `netConf` (the net-conf JSON object) on fresh backing state
 *     return { store, peerStore: async () => anotherNode, removeLease: async (subnet) => ..., cleanup };
 *   }, { fixedSubnets: undefined });
 *
 * The factory is called once per test with the network config that test needs, so every
 * test starts from empty state. The suite closes every store it was handed (store and each
 * peerStore()) exactly once, then calls cleanup().
 *
 * Stores that cannot do a part declare it in `caps` with the reason; for those stores the
 * clause is replaced by a test of what the store does instead (named with the reason), so
 * every store runs a real check for every clause and nothing is skipped.
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import type { Ipv4Cidr } from '../../src/routing/ipv4.ts';
import {
  cidrContainsCidr,
  cidrEquals,
  cidrToKey,
  formatCidr,
  parseCidr,
  parseIpv4,
  prefixMask,
} from '../../src/routing/ipv4.ts';
import type { Lease, LeaseAttrs, LeaseEvent, LeaseStore } from '../../src/lease/types.ts';
import { LeaseError } from '../../src/util/errors.ts';

export interface LeaseStoreHarness {
  /** The store under test, acting as node A. */
  readonly store: LeaseStore;
  /** Another store on the same backing state acting as a new node (a new one per call). */
  peerStore(): Promise<LeaseStore>;
  /** Deletes the lease for `subnet` behind the stores' backs (an admin, or expiry). */
  removeLease(subnet: Ipv4Cidr): Promise<void>;
  /** Writes a reservation (a lease without expiry) for `subnet`; required unless caps.noReservations. */
  reserve?(subnet: Ipv4Cidr, attrs: LeaseAttrs): Promise<void>;
  /** Removes the backing state. Stores have been closed already. */
  cleanup(): Promise<void>;
}

export interface LeaseStoreCapabilities {
  /** Why the store does not pick subnets itself (kube: Node spec.podCIDR); undefined when it does. */
  readonly fixedSubnets?: string;
  /** Why leases have no expiry to renew (kube); undefined when they do. */
  readonly noExpiry?: string;
  /** Why reservations are not supported; undefined when `reserve` is implemented. */
  readonly noReservations?: string;
}

/** The net-conf JSON object a test wants served. */
export type NetConf = Readonly<Record<string, unknown>>;

export type LeaseStoreFactory = (netConf: NetConf) => Promise<LeaseStoreHarness>;

/** A roomy network: 10.66.0.0/16 in /24s. */
export const CONTRACT_NETWORK: NetConf = { Network: '10.66.0.0/16', SubnetLen: 24, Backend: { Type: 'udp' } };
/** A tiny network: /28 in /30s, SubnetMin/Max default -> exactly 3 subnets (.4, .8, .12). */
export const CONTRACT_TINY_NETWORK: NetConf = {
  Network: '10.67.0.0/28',
  SubnetLen: 30,
  Backend: { Type: 'udp' },
};

/** Peers' events must arrive within this long after the change completes. */
export const EVENT_DEADLINE_MS = 1000;

export function nodeAttrs(n: number, backendData: unknown = null): LeaseAttrs {
  return { publicIp: `198.18.0.${n}`, publicIpv6: null, backendType: 'udp', backendData };
}

/** Collects batches from watch() and lets a test wait for a condition on them. */
export class EventLog {
  readonly batches: (readonly LeaseEvent[])[] = [];
  readonly lost: Ipv4Cidr[] = [];
  private waiters: (() => void)[] = [];

  readonly onEvents = (events: readonly LeaseEvent[]): void => {
    this.batches.push(events);
    this.wake();
  };
  readonly onOwnLeaseLost = (subnet: Ipv4Cidr): void => {
    this.lost.push(subnet);
    this.wake();
  };

  private wake(): void {
    const w = this.waiters;
    this.waiters = [];
    for (const f of w) f();
  }

  get events(): LeaseEvent[] {
    return this.batches.flat();
  }

  /** Peers currently known from applying all events in order, keyed by subnet. */
  peers(): Map<string, Lease> {
    const m = new Map<string, Lease>();
    for (const e of this.events) {
      if (e.type === 'added') m.set(cidrToKey(e.lease.subnet), e.lease);
      else m.delete(cidrToKey(e.lease.subnet));
    }
    return m;
  }

  /** Resolves once `cond()` holds; rejects after `timeoutMs` with `what` in the message. */
  async waitFor(what: string, cond: () => boolean, timeoutMs = EVENT_DEADLINE_MS): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (!cond()) {
      const left = deadline - Date.now();
      if (left <= 0) {
        throw new Error(
          `timed out after ${timeoutMs} ms waiting for ${what}; batches: ${describeBatches(this.batches)}`,
        );
      }
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, Math.min(left, 50));
        this.waiters.push(() => {
          clearTimeout(t);
          resolve();
        });
      });
    }
  }
}

function describeBatches(batches: readonly (readonly LeaseEvent[])[]): string {
  return JSON.stringify(
    batches.map((b) => b.map((e) => `${e.type} ${formatCidr(e.lease.subnet)} ${e.lease.attrs.publicIp}`)),
  );
}

interface Ctx {
  readonly h: LeaseStoreHarness;
  readonly store: LeaseStore;
  readonly peer: () => Promise<LeaseStore>;
  readonly aborts: AbortController[];
  /** Starts a watch that is aborted (and awaited) at the end of the test. */
  readonly watch: (store: LeaseStore, own: Ipv4Cidr) => EventLog;
}

async function withStore(
  factory: LeaseStoreFactory,
  netConf: NetConf,
  body: (ctx: Ctx) => Promise<void>,
): Promise<void> {
  const h = await factory(netConf);
  const stores: LeaseStore[] = [h.store];
  const aborts: AbortController[] = [];
  const watches: Promise<void>[] = [];
  const ctx: Ctx = {
    h,
    store: h.store,
    aborts,
    peer: async () => {
      const s = await h.peerStore();
      stores.push(s);
      return s;
    },
    watch: (store, own) => {
      const log = new EventLog();
      const ac = new AbortController();
      aborts.push(ac);
      watches.push(
        store.watch(own, { signal: ac.signal, onEvents: log.onEvents, onOwnLeaseLost: log.onOwnLeaseLost }),
      );
      return log;
    },
  };
  let settled: PromiseSettledResult<void>[] = [];
  try {
    await body(ctx);
  } finally {
    for (const ac of aborts) ac.abort();
    settled = await Promise.allSettled(watches);
    for (const s of stores) await s.close().catch(() => undefined);
    await h.cleanup();
  }
  // A watch must resolve (not reject) when its signal aborts.
  for (const r of settled) if (r.status === 'rejected') throw r.reason;
}

function assertFits(
  lease: Lease,
  net: { network: Ipv4Cidr; subnetLen: number; subnetMin: number; subnetMax: number },
  checkRange: boolean,
): void {
  assert.ok(
    cidrContainsCidr(net.network, lease.subnet),
    `${formatCidr(lease.subnet)} is inside ${formatCidr(net.network)}`,
  );
  if (!checkRange) return;
  assert.equal(lease.subnet.prefix, net.subnetLen, 'subnet length is SubnetLen');
  assert.equal(
    (lease.subnet.addr & prefixMask(net.subnetLen)) >>> 0,
    lease.subnet.addr,
    'aligned to SubnetLen',
  );
  assert.ok(
    lease.subnet.addr >= net.subnetMin && lease.subnet.addr <= net.subnetMax,
    'within [SubnetMin, SubnetMax]',
  );
}

export function leaseStoreContract(
  name: string,
  factory: LeaseStoreFactory,
  caps: LeaseStoreCapabilities = {},
): void {
  const fixed = caps.fixedSubnets;
  const noExpiry = caps.noExpiry;
  /**
   * Registers the clause, or (when the store declared a reason it does not apply) the test
   * of what the store does instead, named with both.
   */
  const clause = (
    name: string,
    reason: string | undefined,
    fn: () => Promise<void>,
    instead: { readonly name: string; readonly fn: () => Promise<void> },
  ): void => {
    if (reason) void test(`${name}: not applicable (${reason}); instead ${instead.name}`, instead.fn);
    else void test(name, fn);
  };
  /** For stores with fixed subnets: what acquire does whatever the request says. */
  const assignedSubnetWins = {
    name: 'each store gets its own assigned subnet whatever previousSubnet asks for',
    fn: () =>
      withStore(factory, CONTRACT_NETWORK, async ({ store, peer }) => {
        const wanted = parseCidr('10.66.77.0/24');
        const la = await store.acquire(nodeAttrs(1), { previousSubnet: wanted });
        const again = await store.acquire(nodeAttrs(1), { previousSubnet: parseCidr('10.66.78.0/24') });
        assert.ok(cidrEquals(again.subnet, la.subnet), 'acquire again keeps the assigned subnet');
        const b = await peer();
        const lb = await b.acquire(nodeAttrs(2), { previousSubnet: la.subnet });
        assert.ok(!cidrEquals(lb.subnet, la.subnet), "another store never gets this store's subnet");
        const cfg = await store.getNetworkConfig();
        assertFits(la, cfg, false);
        assertFits(lb, cfg, false);
      }),
  };

  void describe(`LeaseStore contract: ${name}`, () => {
    void test('serves the network config with flannel defaults', async () => {
      await withStore(factory, CONTRACT_NETWORK, async ({ store }) => {
        const cfg = await store.getNetworkConfig();
        assert.ok(cidrEquals(cfg.network, parseCidr('10.66.0.0/16')));
        assert.equal(cfg.subnetLen, 24);
        assert.equal(cfg.subnetMin, parseIpv4('10.66.1.0'));
        assert.equal(cfg.subnetMax, parseIpv4('10.66.255.0'));
        assert.equal(cfg.backend.type, 'udp');
      });
    });

    void test('acquire gives a subnet inside Network, aligned, within [SubnetMin, SubnetMax], with our attrs', async () => {
      await withStore(factory, CONTRACT_NETWORK, async ({ store }) => {
        const cfg = await store.getNetworkConfig();
        const before = Date.now();
        const lease = await store.acquire(nodeAttrs(1));
        assertFits(lease, cfg, !fixed);
        assert.equal(lease.attrs.publicIp, '198.18.0.1');
        assert.equal(lease.attrs.backendType, 'udp');
        if (noExpiry) assert.equal(lease.expiresAt, Infinity);
        else assert.ok(lease.expiresAt > before + 60 * 60_000, 'expiry lies well in the future (hours)');
      });
    });

    void test('two acquirers get different subnets', async () => {
      await withStore(factory, CONTRACT_NETWORK, async ({ store, peer }) => {
        const b = await peer();
        const [la, lb] = await Promise.all([store.acquire(nodeAttrs(1)), b.acquire(nodeAttrs(2))]);
        assert.ok(!cidrEquals(la.subnet, lb.subnet), `${formatCidr(la.subnet)} vs ${formatCidr(lb.subnet)}`);
      });
    });

    void test('acquire again with the same public IP reuses the live lease', async () => {
      await withStore(factory, CONTRACT_NETWORK, async ({ store, peer }) => {
        const first = await store.acquire(nodeAttrs(1));
        const again = await store.acquire(nodeAttrs(1));
        assert.ok(cidrEquals(first.subnet, again.subnet));
        // A restarted node (a fresh store object) finds it too.
        if (!fixed) {
          const restarted = await peer();
          const third = await restarted.acquire(nodeAttrs(1));
          assert.ok(
            cidrEquals(first.subnet, third.subnet),
            'a new store instance with our public IP gets our lease',
          );
        }
      });
    });

    void test('reacquiring with new backend data keeps the subnet and publishes the new data', async () => {
      await withStore(factory, CONTRACT_NETWORK, async ({ store, peer, watch }) => {
        const b = await peer();
        const lb = await b.acquire(nodeAttrs(2));
        const first = await store.acquire(nodeAttrs(1, { v: 1 }));
        const log = watch(b, lb.subnet);
        await log.waitFor('initial peers', () => log.peers().has(cidrToKey(first.subnet)));
        const again = await store.acquire(nodeAttrs(1, { v: 2 }));
        assert.ok(cidrEquals(first.subnet, again.subnet));
        assert.deepEqual(again.attrs.backendData, { v: 2 });
        await log.waitFor('the peer to see the new backend data', () => {
          const p = log.peers().get(cidrToKey(first.subnet));
          return p !== undefined && JSON.stringify(p.attrs.backendData) === '{"v":2}';
        });
      });
    });

    clause(
      'previousSubnet is reused when free, and not when another node holds it',
      fixed,
      async () => {
        await withStore(factory, CONTRACT_NETWORK, async ({ store, peer }) => {
          const wanted = parseCidr('10.66.77.0/24');
          const lease = await store.acquire(nodeAttrs(1), { previousSubnet: wanted });
          assert.ok(cidrEquals(lease.subnet, wanted), `got ${formatCidr(lease.subnet)}`);
          const b = await peer();
          const lb = await b.acquire(nodeAttrs(2), { previousSubnet: wanted });
          assert.ok(!cidrEquals(lb.subnet, wanted), 'a held subnet is not handed to another node');
          // A previous subnet outside [SubnetMin, SubnetMax] or of the wrong length is ignored.
          const c = await peer();
          const lc = await c.acquire(nodeAttrs(3), { previousSubnet: parseCidr('10.66.0.0/24') });
          assert.ok(!cidrEquals(lc.subnet, parseCidr('10.66.0.0/24')), 'subnet below SubnetMin is not used');
          const d = await peer();
          const ld = await d.acquire(nodeAttrs(4), { previousSubnet: parseCidr('10.66.80.0/23') });
          assert.equal(ld.subnet.prefix, 24, 'previous subnet of the wrong length is not used');
        });
      },
      assignedSubnetWins,
    );

    clause(
      'a live lease with our public IP wins over previousSubnet',
      fixed,
      async () => {
        await withStore(factory, CONTRACT_NETWORK, async ({ store, peer }) => {
          const first = await store.acquire(nodeAttrs(1));
          const restarted = await peer();
          const other = first.subnet.addr === parseIpv4('10.66.90.0') ? '10.66.91.0/24' : '10.66.90.0/24';
          const again = await restarted.acquire(nodeAttrs(1), { previousSubnet: parseCidr(other) });
          assert.ok(cidrEquals(first.subnet, again.subnet));
        });
      },
      {
        name: 'acquiring again with another previousSubnet keeps the assigned subnet',
        fn: () =>
          withStore(factory, CONTRACT_NETWORK, async ({ store }) => {
            const first = await store.acquire(nodeAttrs(1));
            const other = first.subnet.addr === parseIpv4('10.66.90.0') ? '10.66.91.0/24' : '10.66.90.0/24';
            const again = await store.acquire(nodeAttrs(1), { previousSubnet: parseCidr(other) });
            assert.ok(cidrEquals(first.subnet, again.subnet));
          }),
      },
    );

    clause(
      'renew extends expiry',
      noExpiry,
      async () => {
        await withStore(factory, CONTRACT_NETWORK, async ({ store }) => {
          const lease = await store.acquire(nodeAttrs(1));
          await new Promise((r) => setTimeout(r, 20));
          const renewed = await store.renew(lease);
          assert.ok(cidrEquals(renewed.subnet, lease.subnet));
          assert.ok(renewed.expiresAt > lease.expiresAt, `${renewed.expiresAt} > ${lease.expiresAt}`);
          assert.equal(renewed.attrs.publicIp, lease.attrs.publicIp);
        });
      },
      {
        name: 'renew keeps a lease that never expires',
        fn: () =>
          withStore(factory, CONTRACT_NETWORK, async ({ store }) => {
            const lease = await store.acquire(nodeAttrs(1));
            const renewed = await store.renew(lease);
            assert.ok(cidrEquals(renewed.subnet, lease.subnet));
            assert.equal(renewed.expiresAt, Infinity);
            assert.equal(renewed.attrs.publicIp, lease.attrs.publicIp);
          }),
      },
    );

    clause(
      'renew of a lease that is gone fails with LeaseError',
      noExpiry,
      async () => {
        await withStore(factory, CONTRACT_NETWORK, async ({ store, h }) => {
          const lease = await store.acquire(nodeAttrs(1));
          await h.removeLease(lease.subnet);
          await assert.rejects(store.renew(lease), (err: unknown) => err instanceof LeaseError);
        });
      },
      {
        name: 'renew of a lease whose record was removed writes it again, and peers see it',
        fn: () =>
          withStore(factory, CONTRACT_NETWORK, async ({ store, peer, watch, h }) => {
            const b = await peer();
            const lb = await b.acquire(nodeAttrs(2));
            const lease = await store.acquire(nodeAttrs(1));
            await h.removeLease(lease.subnet);
            const renewed = await store.renew(lease);
            assert.ok(cidrEquals(renewed.subnet, lease.subnet));
            const log = watch(b, lb.subnet);
            await log.waitFor('the peer to see the rewritten lease', () =>
              log.peers().has(cidrToKey(lease.subnet)),
            );
          }),
      },
    );

    void test('release frees the subnet (peers see it removed; idempotent)', async () => {
      await withStore(factory, CONTRACT_NETWORK, async ({ store, peer, watch }) => {
        const b = await peer();
        const lb = await b.acquire(nodeAttrs(2));
        const la = await store.acquire(
          nodeAttrs(1),
          fixed ? {} : { previousSubnet: parseCidr('10.66.42.0/24') },
        );
        const log = watch(b, lb.subnet);
        await log.waitFor('A as a peer', () => log.peers().has(cidrToKey(la.subnet)));
        await store.release(la);
        await log.waitFor('A removed', () => !log.peers().has(cidrToKey(la.subnet)));
        await store.release(la);
        if (!fixed) {
          const c = await peer();
          const lc = await c.acquire(nodeAttrs(3), { previousSubnet: la.subnet });
          assert.ok(cidrEquals(lc.subnet, la.subnet), 'a released subnet can be taken by another node');
        }
      });
    });

    void test('watch delivers current peers first, then added/removed within 1 s, never our own lease', async () => {
      await withStore(factory, CONTRACT_NETWORK, async ({ store, peer, watch }) => {
        const b = await peer();
        const c = await peer();
        const la = await store.acquire(nodeAttrs(1));
        const lb = await b.acquire(nodeAttrs(2));
        const lc = await c.acquire(nodeAttrs(3));
        const log = watch(store, la.subnet);
        await log.waitFor('the first batch', () => log.batches.length >= 1);
        const first = log.batches[0] ?? [];
        assert.ok(
          first.every((e) => e.type === 'added'),
          'first batch has only added events',
        );
        assert.deepEqual(
          first.map((e) => cidrToKey(e.lease.subnet)).sort(),
          [cidrToKey(lb.subnet), cidrToKey(lc.subnet)].sort(),
          'first batch is exactly the current peers',
        );
        const fromB = first.find((e) => cidrEquals(e.lease.subnet, lb.subnet));
        assert.equal(fromB?.lease.attrs.publicIp, '198.18.0.2', 'peer attrs are delivered');

        const d = await peer();
        let t0 = Date.now();
        const ld = await d.acquire(nodeAttrs(4));
        await log.waitFor(
          'D added',
          () => log.peers().has(cidrToKey(ld.subnet)),
          EVENT_DEADLINE_MS + (Date.now() - t0),
        );

        t0 = Date.now();
        await c.release(lc);
        await log.waitFor(
          'C removed',
          () => !log.peers().has(cidrToKey(lc.subnet)),
          EVENT_DEADLINE_MS + (Date.now() - t0),
        );

        // Our own renewals and re-acquisitions never show up.
        if (!noExpiry) await store.renew(la);
        await store.acquire(nodeAttrs(1));
        await new Promise((r) => setTimeout(r, 300));
        assert.ok(
          log.events.every((e) => !cidrEquals(e.lease.subnet, la.subnet)),
          'no event ever carries our own subnet',
        );
        assert.equal(log.lost.length, 0, 'own lease not reported lost by our own renew');
        assert.deepEqual([...log.peers().keys()].sort(), [cidrToKey(lb.subnet), cidrToKey(ld.subnet)].sort());
      });
    });

    void test('watch with no peers delivers an empty first batch and resolves on abort', async () => {
      await withStore(factory, CONTRACT_NETWORK, async ({ store, aborts }) => {
        const la = await store.acquire(nodeAttrs(1));
        const log = new EventLog();
        const ac = new AbortController();
        aborts.push(ac);
        const done = store.watch(la.subnet, { signal: ac.signal, onEvents: log.onEvents });
        await log.waitFor('the first batch', () => log.batches.length >= 1);
        assert.equal(log.batches[0]?.length, 0);
        ac.abort();
        await done;
      });
    });

    void test('own lease deleted -> onOwnLeaseLost', async () => {
      await withStore(factory, CONTRACT_NETWORK, async ({ store, watch, h }) => {
        const la = await store.acquire(nodeAttrs(1));
        const log = watch(store, la.subnet);
        await log.waitFor('the first batch', () => log.batches.length >= 1);
        const t0 = Date.now();
        await h.removeLease(la.subnet);
        await log.waitFor('onOwnLeaseLost', () => log.lost.length > 0, EVENT_DEADLINE_MS + (Date.now() - t0));
        assert.ok(cidrEquals(log.lost[0] as Ipv4Cidr, la.subnet));
        assert.ok(log.events.every((e) => !cidrEquals(e.lease.subnet, la.subnet)));
        // After a loss, acquiring again works (the daemon re-acquires).
        const again = await store.acquire(nodeAttrs(1), { previousSubnet: la.subnet });
        if (!fixed) assert.ok(cidrEquals(again.subnet, la.subnet), 're-acquire keeps the subnet when free');
      });
    });

    clause(
      'full network -> LeaseError that says what to do',
      fixed,
      async () => {
        await withStore(factory, CONTRACT_TINY_NETWORK, async ({ store, peer }) => {
          const cfg = await store.getNetworkConfig();
          assert.equal(cfg.subnetLen, 30);
          const got: Lease[] = [await store.acquire(nodeAttrs(1))];
          for (let n = 2; n <= 3; n++) got.push(await (await peer()).acquire(nodeAttrs(n)));
          const keys = new Set(got.map((l) => cidrToKey(l.subnet)));
          assert.equal(keys.size, 3, 'three distinct subnets');
          for (const l of got) assertFits(l, cfg, true);
          const late = await peer();
          await assert.rejects(late.acquire(nodeAttrs(9)), (err: unknown) => {
            assert.ok(err instanceof LeaseError, `expected LeaseError, got ${String(err)}`);
            assert.match(err.message, /10\.67\.0\.0\/28/, 'message names the network');
            return true;
          });
          // Freeing one makes room again.
          await store.release(got[0] as Lease);
          const lateLease = await late.acquire(nodeAttrs(9));
          assert.ok(cidrEquals(lateLease.subnet, (got[0] as Lease).subnet));
        });
      },
      {
        name: 'every store of a small Network gets its own assigned subnet inside it',
        fn: () =>
          withStore(factory, CONTRACT_TINY_NETWORK, async ({ store, peer }) => {
            const cfg = await store.getNetworkConfig();
            const got: Lease[] = [await store.acquire(nodeAttrs(1))];
            for (let n = 2; n <= 3; n++) got.push(await (await peer()).acquire(nodeAttrs(n)));
            assert.equal(new Set(got.map((l) => cidrToKey(l.subnet))).size, 3, 'three distinct subnets');
            for (const l of got) assertFits(l, cfg, false);
          }),
      },
    );

    void test('concurrent acquirers never share a subnet', async () => {
      await withStore(factory, CONTRACT_NETWORK, async ({ store, peer }) => {
        const stores = [store];
        for (let i = 0; i < 7; i++) stores.push(await peer());
        const leases = await Promise.all(stores.map((s, i) => s.acquire(nodeAttrs(10 + i))));
        const keys = new Set(leases.map((l) => cidrToKey(l.subnet)));
        assert.equal(keys.size, leases.length, `distinct subnets: ${[...keys].join(' ')}`);
      });
    });

    const resSkip = fixed ?? caps.noReservations;
    clause(
      'reservations are never handed to others, and are used by their owner',
      resSkip,
      async () => {
        await withStore(factory, CONTRACT_TINY_NETWORK, async ({ store, peer, h }) => {
          assert.ok(h.reserve !== undefined, 'harness implements reserve() (or declares noReservations)');
          const reserved = parseCidr('10.67.0.8/30');
          await h.reserve(reserved, nodeAttrs(7));
          const others: Lease[] = [await store.acquire(nodeAttrs(1), { previousSubnet: reserved })];
          others.push(await (await peer()).acquire(nodeAttrs(2), { previousSubnet: reserved }));
          for (const l of others)
            assert.ok(!cidrEquals(l.subnet, reserved), 'reservation not given to another node');
          const owner = await peer();
          const lo = await owner.acquire(nodeAttrs(7));
          assert.ok(cidrEquals(lo.subnet, reserved), 'the reservation owner gets its subnet');
          assert.equal(lo.expiresAt, Infinity, 'a reservation has no expiry');
        });
      },
      assignedSubnetWins,
    );
  });
}
