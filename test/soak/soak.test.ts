// The soak run (bench/soak.ts) in a 60-second version: three nodes on the udp backend carry
// a TCP stream and a small-packet UDP stream at once while weftd's memory, throughput and
// drops are sampled every 10 s. The verdicts must hold: memory flat (last RSS within 20% of
// the RSS after warm-up), no crash and no lost lease, every drop explained (no unexpected
// reason; the UDP datagrams lost are covered by counted drops), and traffic flowed all along.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { runSoak } from '../../bench/soak.ts';

void test('soak, 60 s: memory flat, no crashes, drops explained', { timeout: 150_000 }, async (t) => {
  const report = await runSoak({
    minutes: 1,
    sampleSeconds: 10,
    tcpMbps: 200,
    print: (line) => t.diagnostic(line),
  });
  const { samples, verdict } = report;
  assert.ok(samples.length >= 5, `only ${samples.length} samples in 60 s`);
  for (const s of samples) {
    for (const n of s.nodes) {
      assert.ok(n.running, `weftd on ${n.node} was not running at t=${s.t} s`);
      assert.ok(n.rssBytes > 10 * 1024 * 1024, `${n.node} RSS ${n.rssBytes} at t=${s.t} s`);
      assert.ok(n.heapUsedBytes > 1024 * 1024, `${n.node} heap ${n.heapUsedBytes} at t=${s.t} s`);
    }
    // TCP at 200 Mbit/s plus UDP: the overlay carried traffic in every period.
    assert.ok(s.mbps > 50, `only ${s.mbps.toFixed(1)} Mbit/s through the overlay at t=${s.t} s`);
  }
  assert.ok(report.tcp && report.tcp.gbps > 0.05, `TCP stream: ${JSON.stringify(report.tcp)}`);
  assert.ok(report.udp && report.udp.packets > 100_000, `UDP stream: ${JSON.stringify(report.udp)}`);
  assert.ok(verdict.memoryFlat, verdict.reasons.join('\n'));
  assert.equal(verdict.crashes, 0, verdict.reasons.join('\n'));
  assert.equal(verdict.leasesLost, 0, verdict.reasons.join('\n'));
  assert.ok(verdict.dropsExplained, verdict.reasons.join('\n'));
  assert.ok(verdict.pass);
});
