/**
 * Prometheus metrics for weftd (GET /metrics on the health server).
 *
 * The data path only bumps typed-array counters; this module turns snapshots of them into
 * Prometheus series at scrape time (collect callbacks), so scraping costs nothing between
 * scrapes and the hot loop never touches prom-client. Names follow Prometheus conventions:
 * `weft_` prefix, `_total` for counters, base units (bytes, seconds). Node's process
 * metrics (process_*, nodejs_*) come from prom-client's defaults.
 */
import { Counter, Gauge, Registry, collectDefaultMetrics } from 'prom-client';
import type { DaemonStatus } from '../daemon/daemon.ts';
import type { ForwarderSnapshot } from '../dataplane/forwarder.ts';

export interface MetricsSources {
  /** The daemon's status (lease, peers, counters, readiness). */
  status(): DaemonStatus;
  /** The userspace forwarder's counters; undefined for kernel data paths or before start. */
  forwarder(): ForwarderSnapshot | undefined;
  /** Extra facts for weft_info and weft_dataplane_offload. */
  info(): { version: string; dataplane: string; offloads: Readonly<Record<string, boolean>> };
}

const BATCH_SIZE_LABELS = ['1', '2-3', '4-7', '8-15', '16-31', '32-63', '64-127', '128+'];

/** counters key of ForwarderSnapshot -> [metric, direction label]. */
const PACKET_COUNTERS: Readonly<Record<string, [string, string]>> = {
  tunReadPackets: ['packets', 'tun_read'],
  tunReadBytes: ['bytes', 'tun_read'],
  tunWritePackets: ['packets', 'tun_write'],
  tunWriteBytes: ['bytes', 'tun_write'],
  sendPackets: ['packets', 'sent'],
  sendBytes: ['bytes', 'sent'],
  recvPackets: ['packets', 'received'],
  recvBytes: ['bytes', 'received'],
};

function snakeCase(s: string): string {
  return s.replace(/([a-z0-9])([A-Z])/g, '$1_$2').toLowerCase();
}

/** Sets a prom-client counter to an absolute value read from a snapshot. */
function setCounter<T extends string>(
  c: Counter<T>,
  labels: Partial<Record<T, string>>,
  value: number,
): void {
  if (value > 0) c.inc(labels, value);
  else c.inc(labels, 0);
}

/** Interval of the event-loop delay sampler behind nodejs_eventloop_lag_*_seconds. */
export const EVENT_LOOP_SAMPLE_MS = 100;

export function createMetrics(src: MetricsSources): Registry {
  const registry = new Registry();
  // prom-client samples event-loop delay with a timer; its default (every 10 ms) woke an idle
  // weftd 100 times a second. Every 100 ms still records any stall of 100 ms or more.
  collectDefaultMetrics({ register: registry, eventLoopMonitoringPrecision: EVENT_LOOP_SAMPLE_MS });
  const r = [registry];

  new Gauge({
    name: 'weft_info',
    help: 'Constant 1, labelled with the backend, lease store, data plane and version',
    labelNames: ['version', 'backend', 'store', 'dataplane', 'network'],
    registers: r,
    collect() {
      this.reset();
      const s = src.status();
      const i = src.info();
      this.set(
        {
          version: i.version,
          backend: s.backend ?? '',
          store: s.store ?? '',
          dataplane: i.dataplane,
          network: s.network ?? '',
        },
        1,
      );
    },
  });
  new Gauge({
    name: 'weft_ready',
    help: '1 when the lease is held, the subnet file written and the data path up',
    registers: r,
    collect() {
      this.set(src.status().ready ? 1 : 0);
    },
  });
  new Gauge({
    name: 'weft_lease_held',
    help: '1 while this node holds a lease',
    registers: r,
    collect() {
      this.set(src.status().checks.leaseHeld ? 1 : 0);
    },
  });
  new Gauge({
    name: 'weft_lease_expiry_seconds',
    help: "Seconds until this node's lease expires (absent when the store has no expiry)",
    registers: r,
    collect() {
      this.reset();
      const exp = src.status().lease?.expiresAt;
      if (exp) this.set((Date.parse(exp) - Date.now()) / 1000);
    },
  });
  /** A counter without labels whose value `read` gives (no series while it gives undefined). */
  const statCounter = (name: string, help: string, read: () => number | undefined): void => {
    new Counter({
      name,
      help,
      registers: r,
      collect() {
        this.reset();
        const v = read();
        if (v !== undefined) setCounter(this, {}, v);
      },
    });
  };
  const daemonCounter = (name: string, help: string, key: keyof DaemonStatus['counters']): void =>
    statCounter(name, help, () => src.status().counters[key]);
  daemonCounter(
    'weft_lease_acquisitions_total',
    'Leases acquired (first and re-acquisitions)',
    'leaseAcquired',
  );
  daemonCounter('weft_lease_renewals_total', 'Successful lease renewals', 'leaseRenewed');
  daemonCounter('weft_lease_renew_failures_total', 'Failed lease renewal attempts', 'renewFailures');
  daemonCounter('weft_lease_lost_total', 'Times our own lease vanished and was re-acquired', 'leaseLost');
  daemonCounter(
    'weft_lease_subnet_changes_total',
    'Re-acquisitions that had to take another subnet',
    'subnetChanged',
  );
  daemonCounter('weft_peer_events_total', 'Peer lease events applied to the backend', 'peerEvents');
  daemonCounter(
    'weft_watch_restarts_total',
    'Times the peer watch was restarted (reconnects, relists)',
    'watchRestarts',
  );
  new Gauge({
    name: 'weft_peers',
    help: "Peers (other nodes' leases) known",
    registers: r,
    collect() {
      this.set(src.status().peers.length);
    },
  });
  new Gauge({
    name: 'weft_routes',
    help: 'Entries in the data path route table (userspace) or peers routed (kernel)',
    registers: r,
    collect() {
      const f = src.forwarder();
      this.set(f ? f.routes : src.status().peers.length);
    },
  });

  const packets = new Counter({
    name: 'weft_dataplane_packets_total',
    help: 'Packets through the userspace data path, by direction (tun_read, tun_write, sent, received)',
    labelNames: ['direction'],
    registers: r,
    collect() {
      fillDirections(this, 'packets');
    },
  });
  const bytes = new Counter({
    name: 'weft_dataplane_bytes_total',
    help: 'Bytes through the userspace data path, by direction (sent/received count UDP payload)',
    labelNames: ['direction'],
    registers: r,
    collect() {
      fillDirections(this, 'bytes');
    },
  });
  function fillDirections(c: Counter<'direction'>, kind: string): void {
    c.reset();
    const f = src.forwarder();
    if (!f) return;
    for (const [key, [metric, direction]] of Object.entries(PACKET_COUNTERS)) {
      if (metric === kind) setCounter(c, { direction }, f.counters[key] ?? 0);
    }
  }
  void packets;
  void bytes;
  new Counter({
    name: 'weft_dataplane_drops_total',
    help: 'Packets dropped by the data path, by reason',
    labelNames: ['reason'],
    registers: r,
    collect() {
      this.reset();
      const f = src.forwarder();
      if (!f) return;
      for (const [reason, v] of Object.entries(f.drops)) setCounter(this, { reason: snakeCase(reason) }, v);
    },
  });
  new Counter({
    name: 'weft_dataplane_keepalives_total',
    help: 'NAT keepalive datagrams (Backend.PersistentKeepaliveInterval), by direction (sent, received, send_failed)',
    labelNames: ['direction'],
    registers: r,
    collect() {
      this.reset();
      const c = src.forwarder()?.counters;
      if (!c) return;
      setCounter(this, { direction: 'sent' }, c.keepaliveSent ?? 0);
      setCounter(this, { direction: 'received' }, c.keepaliveReceived ?? 0);
      setCounter(this, { direction: 'send_failed' }, c.keepaliveSendFailed ?? 0);
    },
  });
  new Counter({
    name: 'weft_dataplane_busy_poll_total',
    help: 'Busy-poll windows after small turns (weftd --busy-poll-us), by outcome (hit: traffic handled without sleeping, miss: the window ran out, skipped: empty windows already used 10% of the last second, bulk: none after a small turn while bulk traffic flows)',
    labelNames: ['outcome'],
    registers: r,
    collect() {
      this.reset();
      const c = src.forwarder()?.counters;
      if (!c) return;
      setCounter(this, { outcome: 'hit' }, c.busyPollHits ?? 0);
      setCounter(this, { outcome: 'miss' }, c.busyPollMisses ?? 0);
      setCounter(this, { outcome: 'skipped' }, c.busyPollSkipped ?? 0);
      setCounter(this, { outcome: 'bulk' }, c.busyPollBulk ?? 0);
    },
  });
  new Counter({
    name: 'weft_dataplane_tunnel_gso_total',
    help: 'Whole TCP super-packets read from the TUN (tunnel GSO, weftd --tunnel-gso), by outcome (written: one TAP write each, segmented: by the socket because the TAP failed or was detached, peer_segmented: by the socket because the peer does not take them whole, off: by the socket because tunnel GSO is off on this node, error: failed TAP writes)',
    labelNames: ['outcome'],
    registers: r,
    collect() {
      this.reset();
      const io = (src.status().backendStats as { connIo?: Record<string, number> } | undefined)?.connIo;
      if (!io || io['tunnelWrites'] === undefined) return;
      setCounter(this, { outcome: 'written' }, io['tunnelWrites'] ?? 0);
      setCounter(this, { outcome: 'segmented' }, io['tunnelFallbacks'] ?? 0);
      setCounter(this, { outcome: 'peer_segmented' }, io['tunnelPeerSegmented'] ?? 0);
      setCounter(this, { outcome: 'off' }, io['tunnelOff'] ?? 0);
      setCounter(this, { outcome: 'error' }, io['tunnelErrors'] ?? 0);
    },
  });
  /** A number from the backend's stats (weft status), or undefined when it has none. */
  const backendStat = (key: string): number | undefined => {
    const v = (src.status().backendStats as Record<string, unknown> | undefined)?.[key];
    return typeof v === 'number' ? v : undefined;
  };
  new Counter({
    name: 'weft_repairs_total',
    help: "What weftd put right behind the kernel's or an operator's back, by what (device_recreated: the overlay device (the TUN, or kernel VXLAN's weft.<VNI>) made again after it was deleted or replaced, device_repaired: the TUN's address, MTU or route put back, device_repair_failed: a repair that failed and waits for the next check, tunnel_gso_restored: the tunnel-GSO TAP made again or set up after it was deleted or set down, tunnel_gso_given_up: the guard saw the node drop the TAP's packets, tunnel_gso_retried: the TAP tried again after that, weftd --tunnel-gso-retry); the same names as weft status without the prefix",
    labelNames: ['what'],
    registers: r,
    collect() {
      this.reset();
      for (const [key, what] of [
        ['deviceRecreated', 'device_recreated'],
        ['deviceRepaired', 'device_repaired'],
        ['deviceRepairFailures', 'device_repair_failed'],
        ['tunnelRestored', 'tunnel_gso_restored'],
        ['tunnelGuardTrips', 'tunnel_gso_given_up'],
        ['tunnelRetries', 'tunnel_gso_retried'],
      ] as const) {
        const v = backendStat(key);
        if (v !== undefined) setCounter(this, { what }, v);
      }
    },
  });
  statCounter(
    'weft_kernel_event_checks_total',
    "Checks (or kernel backends' verifying passes) started by a kernel notification about something the backend looks after (kernelEventChecks in weft status)",
    () => backendStat('kernelEventChecks'),
  );
  statCounter(
    'weft_kernel_events_ignored_total',
    'Kernel notifications read and dropped as about nothing the backend looks after: other devices, routes outside the Network (kernelEventsIgnored in weft status)',
    () => backendStat('kernelEventsIgnored'),
  );
  new Counter({
    name: 'weft_dataplane_icmp_unreachable_total',
    help: 'ICMP net-unreachable replies written back to the TUN (no route)',
    registers: r,
    collect() {
      this.reset();
      setCounter(this, {}, src.forwarder()?.counters.icmpUnreachableSent ?? 0);
    },
  });
  new Counter({
    name: 'weft_dataplane_batches_total',
    help: 'Non-empty batches, by side (tun_read, received) and size range in packets',
    labelNames: ['side', 'size'],
    registers: r,
    collect() {
      this.reset();
      const f = src.forwarder();
      if (!f) return;
      const sides: [string, readonly number[]][] = [
        ['tun_read', f.batchSizes.tunRead],
        ['received', f.batchSizes.recv],
      ];
      for (const [side, buckets] of sides) {
        buckets.forEach((v, i) => setCounter(this, { side, size: BATCH_SIZE_LABELS[i] ?? String(i) }, v));
      }
    },
  });
  new Gauge({
    name: 'weft_dataplane_offload',
    help: '1 when an offload is in use (tun_vnet_hdr, tun_tso, tun_uso, udp_gso, udp_gro, tunnel_gso)',
    labelNames: ['feature'],
    registers: r,
    collect() {
      this.reset();
      for (const [feature, on] of Object.entries(src.info().offloads))
        this.set({ feature: snakeCase(feature) }, on ? 1 : 0);
    },
  });
  const perPeer = (
    name: string,
    help: string,
    pick: (p: ForwarderSnapshot['peers'][number], dir: string) => number,
  ): void => {
    new Counter({
      name,
      help,
      labelNames: ['peer_subnet', 'peer_ip', 'direction'],
      registers: r,
      collect() {
        this.reset();
        for (const p of src.forwarder()?.peers ?? []) {
          for (const direction of ['tx', 'rx']) {
            setCounter(this, { peer_subnet: p.subnet, peer_ip: p.publicIp, direction }, pick(p, direction));
          }
        }
      },
    });
  };
  perPeer('weft_peer_packets_total', 'Packets sent to (tx) and received from (rx) each peer', (p, d) =>
    d === 'tx' ? p.txPackets : p.rxPackets,
  );
  perPeer('weft_peer_bytes_total', 'Bytes sent to (tx) and received from (rx) each peer', (p, d) =>
    d === 'tx' ? p.txBytes : p.rxBytes,
  );
  return registry;
}
