// The LeaseStore contract against the etcd store on one real etcd member (loopback, free
// ports). Each contract test gets its own key prefix, so every test starts from empty state.
import { after } from 'node:test';
import { EtcdLeaseStore } from '../../src/lease/etcd/store.ts';
import { encodeLeaseValue, subnetKey } from '../../src/lease/etcd/codec.ts';
import { startEtcd } from '../support/etcd.ts';
import type { EtcdCluster } from '../support/etcd.ts';
import { leaseStoreContract } from './contract.ts';

let etcd: Promise<EtcdCluster> | undefined;
const getEtcd = (): Promise<EtcdCluster> => (etcd ??= startEtcd({ members: 1 }));
after(async () => {
  if (etcd) await (await etcd).stop();
});

let n = 0;
leaseStoreContract('etcd', async (netConf) => {
  const cluster = await getEtcd();
  const prefix = `/weft-contract-${process.pid}/${++n}/coreos.com/network`;
  await cluster.etcdctl(['put', `${prefix}/config`, JSON.stringify(netConf)]);
  const make = (): EtcdLeaseStore => new EtcdLeaseStore({ endpoints: cluster.endpoints, prefix });
  return {
    store: make(),
    peerStore: () => Promise.resolve(make()),
    removeLease: async (subnet) => {
      await cluster.etcdctl(['del', subnetKey(prefix, subnet)]);
    },
    reserve: async (subnet, attrs) => {
      // A reservation is a key without an etcd lease (flannel docs: "reservations").
      await cluster.etcdctl(['put', subnetKey(prefix, subnet), encodeLeaseValue(attrs)]);
    },
    cleanup: async () => {
      await cluster.etcdctl(['del', '--prefix', prefix]);
    },
  };
});
