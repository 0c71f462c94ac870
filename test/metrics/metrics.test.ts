/**
 * Metrics: snapshot values become correctly named and labelled Prometheus series, and
 * counters follow the snapshots they are read from at each scrape.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createMetrics } from '../../src/metrics/metrics.ts';
import type { DaemonStatus } from '../../src/daemon/daemon.ts';
import type { ForwarderSnapshot } from '../../src/dataplane/forwarder.ts';

function status(over: Partial<DaemonStatus> = {}): DaemonStatus {
  return {
    state: 'running',
    ready: true,
    reason: undefined,
    checks: { leaseHeld: true, subnetFileWritten: true, dataPathUp: true },
    store: 'embedded',
    network: '10.244.0.0/16',
    backend: 'udp',
    underlay: { iface: 'eth0', addr: '198.18.0.1', mtu: 1500 },
    lease: {
      subnet: '10.244.1.0/24',
      publicIp: '198.18.0.1',
      expiresAt: new Date(Date.now() + 3600_000).toISOString(),
      backendData: null,
    },
    mtu: 1472,
    subnetFile: '/run/weft/subnet.env',
    peers: [{ subnet: '10.244.2.0/24', publicIp: '198.18.0.2', backendType: 'udp', backendData: null }],
    counters: {
      leaseAcquired: 1,
      leaseRenewed: 3,
      renewFailures: 0,
      leaseLost: 0,
      subnetChanged: 0,
      peerEvents: 1,
      watchRestarts: 2,
      acquireFailures: 0,
    },
    backendStats: {
      connIo: {
        tunnelWrites: 12,
        tunnelFallbacks: 3,
        tunnelPeerSegmented: 4,
        tunnelErrors: 1,
        tunnelAttached: 0,
      },
      deviceRecreated: 1,
      deviceRepaired: 2,
      deviceRepairFailures: 0,
      tunnelRestored: 3,
      tunnelGuardTrips: 1,
      tunnelRetries: 1,
      kernelEventChecks: 7,
      kernelEventsIgnored: 40,
    },
    error: undefined,
    ...over,
  };
}

function fwd(sent: number): ForwarderSnapshot {
  return {
    running: true,
    encap: 'udp',
    routes: 1,
    counters: {
      tunReadPackets: sent,
      tunReadBytes: sent * 100,
      tunWritePackets: 5,
      tunWriteBytes: 500,
      sendPackets: sent,
      sendBytes: sent * 100,
      recvPackets: 5,
      recvBytes: 500,
      icmpUnreachableSent: 2,
      busyPollHits: 40,
      busyPollMisses: 9,
      busyPollSkipped: 1,
    },
    drops: { noRoute: 2, ttlExpired: 0, spoofedSource: 7 },
    batchSizes: { tunRead: [1, 2, 0, 0, 0, 0, 0, 0], recv: [3, 0, 0, 0, 0, 0, 0, 0] },
    peers: [
      {
        id: 0,
        leaseKey: '10.244.2.0-24',
        subnet: '10.244.2.0/24',
        publicIp: '198.18.0.2',
        port: 8285,
        tunnelGso: false,
        txPackets: sent,
        txBytes: sent * 100,
        rxPackets: 5,
        rxBytes: 500,
      },
    ],
  };
}

void test('daemon, lease, data path and per-peer series with Prometheus names', async () => {
  let sent = 10;
  const reg = createMetrics({
    status: () => status(),
    forwarder: () => fwd(sent),
    info: () => ({ version: '0.1.0', dataplane: 'userspace', offloads: { tunTso: true, udpGro: false } }),
  });
  let text = await reg.metrics();
  const has = (line: string | RegExp): void =>
    typeof line === 'string' ? assert.ok(text.includes(line), `missing: ${line}`) : assert.match(text, line);
  has('# TYPE weft_dataplane_packets_total counter');
  has('weft_dataplane_packets_total{direction="sent"} 10');
  has('weft_dataplane_bytes_total{direction="received"} 500');
  has('weft_dataplane_drops_total{reason="no_route"} 2');
  has('weft_dataplane_drops_total{reason="spoofed_source"} 7');
  has('weft_dataplane_icmp_unreachable_total 2');
  has('weft_dataplane_busy_poll_total{outcome="hit"} 40');
  has('weft_dataplane_busy_poll_total{outcome="miss"} 9');
  has('weft_dataplane_busy_poll_total{outcome="skipped"} 1');
  has('weft_peer_packets_total{peer_subnet="10.244.2.0/24",peer_ip="198.18.0.2",direction="tx"} 10');
  has('weft_peer_bytes_total{peer_subnet="10.244.2.0/24",peer_ip="198.18.0.2",direction="rx"} 500');
  has('weft_dataplane_batches_total{side="tun_read",size="2-3"} 2');
  has('weft_dataplane_offload{feature="tun_tso"} 1');
  has('weft_dataplane_offload{feature="udp_gro"} 0');
  has('weft_dataplane_tunnel_gso_total{outcome="written"} 12');
  has('weft_dataplane_tunnel_gso_total{outcome="segmented"} 3');
  has('weft_dataplane_tunnel_gso_total{outcome="peer_segmented"} 4');
  has('weft_dataplane_tunnel_gso_total{outcome="error"} 1');
  has('weft_repairs_total{what="device_recreated"} 1');
  has('weft_repairs_total{what="device_repaired"} 2');
  has('weft_repairs_total{what="device_repair_failed"} 0');
  has('weft_repairs_total{what="tunnel_gso_restored"} 3');
  has('weft_repairs_total{what="tunnel_gso_given_up"} 1');
  has('weft_repairs_total{what="tunnel_gso_retried"} 1');
  has('weft_kernel_event_checks_total 7');
  has('weft_kernel_events_ignored_total 40');
  has('weft_lease_held 1');
  has('weft_lease_renewals_total 3');
  has('weft_watch_restarts_total 2');
  has('weft_peers 1');
  has('weft_routes 1');
  has('weft_ready 1');
  has(/weft_lease_expiry_seconds 3[56]\d\d/);
  has(
    /weft_info\{version="0.1.0",backend="udp",store="embedded",dataplane="userspace",network="10.244.0.0\/16"\} 1/,
  );
  has('process_resident_memory_bytes');
  has('nodejs_heap_size_used_bytes');
  // Counters follow the data path between scrapes.
  sent = 25;
  text = await reg.metrics();
  has('weft_dataplane_packets_total{direction="sent"} 25');
  has('weft_peer_packets_total{peer_subnet="10.244.2.0/24",peer_ip="198.18.0.2",direction="tx"} 25');
});

void test('kernel data paths: no forwarder series, routes from peers', async () => {
  const reg = createMetrics({
    status: () =>
      status({ ready: false, checks: { leaseHeld: false, subnetFileWritten: false, dataPathUp: false } }),
    forwarder: () => undefined,
    info: () => ({ version: '0.1.0', dataplane: 'kernel', offloads: {} }),
  });
  const text = await reg.metrics();
  assert.ok(!/weft_dataplane_packets_total\{/.test(text));
  assert.ok(text.includes('weft_ready 0'));
  assert.ok(text.includes('weft_lease_held 0'));
  assert.ok(text.includes('weft_routes 1'));
});
