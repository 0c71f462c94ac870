/**
 * RecordingKernel: the in-memory twin of KernelNet for unit tests. It records every applied
 * operation as the command line it would run ("ip route replace ...", "bridge fdb append
 * ...") and models just enough kernel state and rules to catch real mistakes: a gateway
 * that is not on a connected subnet is refused unless `onlink`, a device must exist before
 * it is used, deleting a device takes its addresses, routes, neighbours and FDB with it.
 */
import { cidrContains, cidrEquals, formatCidr, formatIpv4, prefixMask } from '../routing/ipv4.ts';
import { KernelError } from '../util/errors.ts';
import type { FdbSpec, IfAddr, KernelNet, KernelOp, LinkInfo, NeighSpec, RouteSpec } from './kernel.ts';
import { describeOp } from './kernel.ts';

interface LinkState {
  info: LinkInfo;
  addrs: IfAddr[];
  neighs: Map<number, string>;
  fdb: { mac: string; dst: number }[];
}

export class RecordingKernel implements KernelNet {
  /** Every operation applied successfully, as a command line, in order. */
  readonly ops: string[] = [];
  /** Whether vxlanAvailable() answers true. */
  vxlanModule = true;
  /** When set, the first operation whose command line matches fails (then the pattern clears). */
  failOnce: RegExp | undefined;
  private readonly links = new Map<string, LinkState>();
  private routes: RouteSpec[] = [];
  private nextIndex = 1;

  /** Adds a plain device (e.g. the underlay) with addresses, as if it already existed. */
  addDevice(name: string, addrs: readonly IfAddr[] = [], mtu = 1500): void {
    this.links.set(name, {
      info: { name, index: this.nextIndex++, mtu, up: true, mac: '02:00:00:00:00:00' },
      addrs: [...addrs],
      neighs: new Map(),
      fdb: [],
    });
  }

  /** Deletes a device behind the backend's back (not recorded), like `ip link del` by an admin. */
  externalDelete(name: string): void {
    this.dropLink(name);
  }

  /** Replaces a device's settings behind the backend's back (not recorded). */
  externalModify(name: string, patch: Partial<LinkInfo>): void {
    const l = this.links.get(name);
    if (l) l.info = { ...l.info, ...patch };
  }

  /** Clears the operation log (state is kept). */
  clearOps(): void {
    this.ops.length = 0;
  }

  vxlanAvailable(): Promise<boolean> {
    return Promise.resolve(this.vxlanModule);
  }

  getLink(name: string): Promise<LinkInfo | undefined> {
    return Promise.resolve(this.links.get(name)?.info);
  }

  listLinks(): Promise<LinkInfo[]> {
    return Promise.resolve([...this.links.values()].map((l) => l.info));
  }

  listAddrs(dev: string): Promise<IfAddr[]> {
    return Promise.resolve([...(this.links.get(dev)?.addrs ?? [])]);
  }

  listRoutes(dev?: string): Promise<RouteSpec[]> {
    return Promise.resolve(this.routes.filter((r) => dev === undefined || r.dev === dev));
  }

  listNeighs(dev: string): Promise<NeighSpec[]> {
    const l = this.links.get(dev);
    return Promise.resolve(l ? [...l.neighs].map(([addr, lladdr]) => ({ addr, lladdr, dev })) : []);
  }

  listFdb(dev: string): Promise<FdbSpec[]> {
    const l = this.links.get(dev);
    return Promise.resolve(l ? l.fdb.map((f) => ({ ...f, dev })) : []);
  }

  apply(ops: readonly KernelOp[]): Promise<void> {
    for (const op of ops) {
      const line = describeOp(op);
      if (this.failOnce?.test(line)) {
        this.failOnce = undefined;
        return Promise.reject(new KernelError(`"${line}" failed: injected failure`));
      }
      try {
        this.applyOne(op);
      } catch (err) {
        return Promise.reject(
          err instanceof KernelError ? err : new KernelError(`"${line}" failed: ${String(err)}`),
        );
      }
      this.ops.push(line);
    }
    return Promise.resolve();
  }

  private need(name: string, line: string): LinkState {
    const l = this.links.get(name);
    if (!l) throw new KernelError(`"${line}" failed: Cannot find device "${name}"`);
    return l;
  }

  private dropLink(name: string): void {
    if (!this.links.delete(name)) return;
    this.routes = this.routes.filter((r) => r.dev !== name);
  }

  /** The device whose connected subnet holds `addr`, if any. */
  private connected(addr: number, dev?: string): string | undefined {
    for (const [name, l] of this.links) {
      if (dev !== undefined && name !== dev) continue;
      if (!l.info.up) continue;
      for (const a of l.addrs) {
        if (cidrContains({ addr: (a.addr & prefixMask(a.prefix)) >>> 0, prefix: a.prefix }, addr))
          return name;
      }
    }
    return undefined;
  }

  /** Interface sysctls set through iface-sysctl ops, keyed "<dev>/<key>". */
  readonly sysctls = new Map<string, string>();

  private applyOne(op: KernelOp): void {
    const line = describeOp(op);
    switch (op.op) {
      case 'link-add-vxlan': {
        const s = op.spec;
        if (this.links.has(s.name)) throw new KernelError(`"${line}" failed: File exists`);
        this.need(s.dev, line);
        this.links.set(s.name, {
          info: {
            name: s.name,
            index: this.nextIndex++,
            mtu: s.mtu,
            up: false,
            mac: s.mac,
            kind: 'vxlan',
            vxlan: { vni: s.vni, local: s.local, dev: s.dev, port: s.port, learning: false },
          },
          addrs: [],
          neighs: new Map(),
          fdb: [],
        });
        return;
      }
      case 'link-del':
        this.dropLink(op.name);
        return;
      case 'iface-sysctl': {
        this.need(op.dev, line);
        this.sysctls.set(`${op.dev}/${op.key}`, op.value);
        return;
      }
      case 'link-up': {
        const l = this.need(op.name, line);
        l.info = {
          ...l.info,
          up: true,
          ...(op.mtu !== undefined ? { mtu: op.mtu } : {}),
          ...(op.txqueuelen !== undefined ? { txqueuelen: op.txqueuelen } : {}),
        };
        return;
      }
      case 'addr-replace': {
        const l = this.need(op.dev, line);
        l.addrs = l.addrs.filter((a) => a.addr !== op.addr.addr);
        l.addrs.push(op.addr);
        return;
      }
      case 'addr-del': {
        const l = this.links.get(op.dev);
        if (l) l.addrs = l.addrs.filter((a) => !(a.addr === op.addr.addr && a.prefix === op.addr.prefix));
        return;
      }
      case 'route-replace': {
        const r = op.route;
        let dev = r.dev;
        if (dev !== undefined) this.need(dev, line);
        if (r.via !== undefined && !r.onlink) {
          const on = this.connected(r.via, dev);
          if (on === undefined)
            throw new KernelError(`"${line}" failed: Nexthop has invalid gateway (${formatIpv4(r.via)})`);
          dev = on;
        }
        if (dev === undefined) throw new KernelError(`"${line}" failed: no device for ${formatCidr(r.dst)}`);
        this.routes = this.routes.filter((x) => !cidrEquals(x.dst, r.dst));
        this.routes.push({ ...r, dev });
        return;
      }
      case 'route-del':
        this.routes = this.routes.filter((x) => !cidrEquals(x.dst, op.route.dst));
        return;
      case 'neigh-replace':
        this.need(op.neigh.dev, line).neighs.set(op.neigh.addr, op.neigh.lladdr);
        return;
      case 'neigh-del':
        this.links.get(op.neigh.dev)?.neighs.delete(op.neigh.addr);
        return;
      case 'fdb-append': {
        const l = this.need(op.fdb.dev, line);
        if (!l.fdb.some((f) => f.mac === op.fdb.mac && f.dst === op.fdb.dst))
          l.fdb.push({ mac: op.fdb.mac, dst: op.fdb.dst });
        return;
      }
      case 'fdb-del': {
        const l = this.links.get(op.fdb.dev);
        if (l) l.fdb = l.fdb.filter((f) => !(f.mac === op.fdb.mac && f.dst === op.fdb.dst));
        return;
      }
    }
  }
}
