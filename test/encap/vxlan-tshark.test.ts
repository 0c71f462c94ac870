/**
 * The vxlan codec against an independent decoder: frames written by VxlanEncap (and an
 * ICMP unreachable from buildIcmpUnreachable) are wrapped in outer Ethernet/IPv4/UDP 4789,
 * saved as a pcap file and dissected by tshark (Wireshark). No traffic is sent anywhere.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { VxlanEncap } from '../../src/encap/encap.ts';
import { buildIcmpUnreachable } from '../../src/encap/icmp.ts';
import { ipv4DecrementTtl } from '../../src/encap/ipv4.ts';
import { buildIpv4, ip } from './packets.ts';

const OUR_MAC = Buffer.from('02aabbccdd01', 'hex');
const PEER_MAC = Buffer.from('02aabbccdd02', 'hex');

/** Outer Ethernet + IPv4 + UDP (checksum 0, allowed for IPv4) around a VXLAN datagram. */
function outerFrame(datagram: Buffer): Buffer {
  const udp = Buffer.alloc(8);
  udp.writeUInt16BE(51000, 0);
  udp.writeUInt16BE(4789, 2);
  udp.writeUInt16BE(8 + datagram.length, 4);
  const ipPkt = buildIpv4({
    src: ip('198.18.0.1'),
    dst: ip('198.18.0.2'),
    protocol: 17,
    payload: Buffer.concat([udp, datagram]),
  });
  const eth = Buffer.from('0000000000b10000000000a10800', 'hex');
  return Buffer.concat([eth, ipPkt]);
}

function pcap(frames: Buffer[]): Buffer {
  const global = Buffer.alloc(24);
  global.writeUInt32LE(0xa1b2c3d4, 0);
  global.writeUInt16LE(2, 4);
  global.writeUInt16LE(4, 6);
  global.writeUInt32LE(65535, 16);
  global.writeUInt32LE(1, 20); // LINKTYPE_ETHERNET
  const parts: Buffer[] = [global];
  frames.forEach((f, i) => {
    const rec = Buffer.alloc(16);
    rec.writeUInt32LE(1_700_000_000 + i, 0);
    rec.writeUInt32LE(f.length, 8);
    rec.writeUInt32LE(f.length, 12);
    parts.push(rec, f);
  });
  return Buffer.concat(parts);
}

void test('tshark decodes VxlanEncap frames as VXLAN with our VNI, MACs and a valid inner packet', (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'weft-vxlan-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const sender = new VxlanEncap(0x123456, PEER_MAC);
  const frames: Buffer[] = [];
  // A UDP packet forwarded (TTL decremented in place) and an ICMP unreachable about it.
  const udpPayload = Buffer.alloc(40, 1);
  udpPayload.writeUInt16BE(40000, 0);
  udpPayload.writeUInt16BE(40001, 2);
  udpPayload.writeUInt16BE(40, 4);
  udpPayload.writeUInt16BE(0, 6);
  const inner = buildIpv4({
    src: ip('10.244.2.9'),
    dst: ip('10.244.1.5'),
    protocol: 17,
    ttl: 64,
    payload: udpPayload,
  });
  const icmpArena = Buffer.alloc(200);
  const icmpLen = buildIcmpUnreachable(inner, 0, inner.length, icmpArena, 22, ip('10.244.2.0'));
  assert.ok(icmpLen > 0);
  for (const [pkt, at] of [
    [Buffer.concat([Buffer.alloc(22), inner]), 22],
    [icmpArena.subarray(0, 22 + icmpLen), 22],
  ] as [Buffer, number][]) {
    ipv4DecrementTtl(pkt, at);
    const s = sender.encapsulate(pkt, at, pkt.length - at, { vtepMac: OUR_MAC });
    frames.push(outerFrame(pkt.subarray(s)));
  }
  const file = join(dir, 'vxlan.pcap');
  writeFileSync(file, pcap(frames));
  const out = execFileSync(
    'tshark',
    [
      '-n',
      '-r',
      file,
      '-o',
      'ip.check_checksum:TRUE',
      '-d',
      'udp.port==4789,vxlan',
      '-T',
      'fields',
      '-E',
      'separator=|',
      '-e',
      'vxlan.flags',
      '-e',
      'vxlan.vni',
      '-e',
      'eth.dst',
      '-e',
      'eth.src',
      '-e',
      'ip.src',
      '-e',
      'ip.dst',
      '-e',
      'ip.ttl',
      '-e',
      'ip.checksum.status',
      '-e',
      'icmp.type',
      '-e',
      'icmp.code',
      '-e',
      'icmp.checksum.status',
      '-e',
      '_ws.expert',
    ],
    { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] },
  );
  const lines = out.trim().split('\n');
  assert.equal(lines.length, 2, out);
  const fields = lines.map((l) => l.split('|'));
  for (const f of fields) {
    const [flags, vni, ethDst, ethSrc, ipSrc, ipDst, , csumStatus] = f;
    assert.equal(Number(flags), 0x0800, `VXLAN flags: ${flags}`);
    assert.equal(vni, String(0x123456));
    // Outer then inner Ethernet: inner dst = receiver's VTEP MAC, src = sender's.
    assert.equal(ethDst, '00:00:00:00:00:b1,02:aa:bb:cc:dd:01');
    assert.equal(ethSrc, '00:00:00:00:00:a1,02:aa:bb:cc:dd:02');
    assert.match(ipSrc ?? '', /^198\.18\.0\.1,10\.244\.2\./);
    assert.match(ipDst ?? '', /^198\.18\.0\.2,10\.244\./);
    // Wireshark checksum status: 0 bad, 1 good, 2 unverified; every IPv4 header must be good.
    assert.ok(
      (csumStatus ?? '').split(',').every((s) => s === '1'),
      `IP checksum status: ${csumStatus}`,
    );
    assert.equal(f[11] ?? '', '', `tshark expert info: ${f[11]}`);
  }
  const [first, second] = fields as [string[], string[]];
  assert.equal(first[6], '64,63', 'inner TTL decremented');
  assert.equal(second[8], '3');
  assert.equal(second[9], '0');
  assert.equal(second[10], '1', 'ICMP checksum good');
});
