/**
 * The LeaseStore contract run against the kube store on the test API server. Each store is
 * one Node whose spec.podCIDR the harness assigns (as the controller-manager would).
 */
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { leaseStoreContract } from './contract.ts';
import type { NetConf } from './contract.ts';
import { KubeLeaseStore } from '../../src/lease/kube/store.ts';
import type { Ipv4Cidr } from '../../src/routing/ipv4.ts';
import { formatCidr, parseCidr } from '../../src/routing/ipv4.ts';
import { KubeApiServer } from '../support/kube-api-server.ts';
import { tempDir } from '../support/kube-tools.ts';

const PREFIX = 'flannel.alpha.coreos.com/';

leaseStoreContract(
  'kube',
  async (netConf: NetConf) => {
    const tmp = tempDir('kube-contract');
    const server = await KubeApiServer.start({ bookmarkIntervalMs: 500 });
    const netConfPath = join(tmp.dir, 'net-conf.json');
    writeFileSync(netConfPath, JSON.stringify(netConf));
    const kubeconfig = server.writeKubeconfig(tmp.dir);
    const network = parseCidr(String(netConf.Network));
    const subnetLen = typeof netConf.SubnetLen === 'number' ? netConf.SubnetLen : 24;
    let count = 0;
    const newNode = (): KubeLeaseStore => {
      count++;
      const name = `node-${count}`;
      const podCIDR = formatCidr({
        addr: (network.addr + count * 2 ** (32 - subnetLen)) >>> 0,
        prefix: subnetLen,
      });
      server.addNode({ name, podCIDR });
      return new KubeLeaseStore({
        nodeName: name,
        kubeconfig,
        netConfPath,
        backoffInitialMs: 50,
        watchdogMs: 10_000,
      });
    };
    return {
      store: newNode(),
      peerStore: () => Promise.resolve(newNode()),
      removeLease: (subnet: Ipv4Cidr) => {
        const node = server.listNodes().find((n) => n.spec.podCIDR === formatCidr(subnet));
        if (!node) return Promise.reject(new Error(`no node has podCIDR ${formatCidr(subnet)}`));
        server.modifyNode(node.metadata.name, (n) => {
          const ann = n.metadata.annotations as Record<string, string>;
          for (const k of Object.keys(ann)) if (k.startsWith(PREFIX)) delete ann[k];
        });
        return Promise.resolve();
      },
      cleanup: async () => {
        await server.close();
        tmp.remove();
      },
    };
  },
  {
    fixedSubnets: 'the controller-manager assigns each Node its spec.podCIDR',
    noExpiry: 'Node annotations do not expire',
    noReservations: 'kube mode has no reservations (a podCIDR is a Node field)',
  },
);
