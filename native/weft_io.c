/*
 * weft_io: batch I/O for weft's userspace data path (TUN device + UDP socket).
 *
 * Why this is C: the forwarder's speed is decided by syscalls per packet and by checksum
 * cost. Here one TUN read returns a 64 KiB TCP/UDP super-packet (IFF_VNET_HDR + TSO/USO)
 * which is split into MTU-sized packets directly into the caller's PacketBatch slots;
 * TUN writes coalesce runs of one TCP flow back into a single GSO write (payloads by
 * iovec, no copies); UDP uses one sendmmsg per batch with UDP_SEGMENT and one recvmmsg
 * per batch with UDP_GRO, split into per-datagram descriptors without copying.
 *
 * Rules kept here:
 *  - Node-API only (node_api.h) plus libuv's uv_poll for readiness, so the addon is
 *    ABI-stable and never uses the libuv thread pool.
 *  - No static mutable state: every buffer and counter lives in a handle, so the addon
 *    works in worker threads; an env cleanup hook closes handles so a worker can exit.
 *  - Nothing allocates or logs per packet; everything is counted per handle.
 *
 * Send-side backpressure (UDP): the socket is non-blocking (libuv's uv_poll_init makes it
 * so); when sendmmsg reports EAGAIN, send waits for POLLOUT for at most
 * WEFT_SEND_WAIT_MS in total per call, then gives up and returns the count sent so far
 * (the caller counts the rest as dropped). This bounds how long the event loop can stall
 * while still giving TCP the pushback it needs under a full socket buffer.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <fcntl.h>
#include <linux/if.h>
#include <linux/filter.h>
#include <linux/if_tun.h>
#include <linux/netlink.h>
#include <netinet/in.h>
#include <poll.h>
#include <stddef.h>
#include <sched.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include <node_api.h>
#include <uv.h>
#if defined(__x86_64__)
#include <immintrin.h>
#endif

#ifndef TUN_F_USO4
#define TUN_F_USO4 0x20
#endif
#ifndef TUN_F_USO6
#define TUN_F_USO6 0x40
#endif
#ifndef SOL_UDP
#define SOL_UDP 17
#endif
#ifndef UDP_SEGMENT
#define UDP_SEGMENT 103
#endif
#ifndef UDP_GRO
#define UDP_GRO 104
#endif

#define VNET_HDR_LEN 10
#define VNET_F_NEEDS_CSUM 1
#define VNET_GSO_NONE 0
#define VNET_GSO_TCPV4 1
#define VNET_GSO_UDP 3
#define VNET_GSO_TCPV6 4
#define VNET_GSO_UDP_L4 5
#define VNET_GSO_ECN 0x80

#define MAX_SUPER 65535

/*
 * Tunnel GSO (kernel 6.17+): a whole TCP super-packet, wrapped in Ethernet + outer IPv4 +
 * UDP (+ the encapsulation's own header, written by JS in the headroom), is written to a
 * TAP device with a vnet header that describes it as a UDP-tunnel GSO packet; the node's
 * stack forwards it and the egress device (or software GSO) cuts it into ordinary
 * datagrams of the wire format. The TUN read side hands such super-packets up whole, in a
 * "jumbo" region at the end of the batch's arena, instead of segmenting them.
 */
#define TUN_F_UDP_TUNNEL_GSO 0x080
#define VNET_GSO_UDP_TUNNEL_IPV4 0x20
#define TNL_VNET_LEN 24 /* virtio_net_hdr_v1_hash_tunnel: 20 bytes, outer_th and inner_nh offsets */
#define TNL_OUTER_LEN (14 + 20 + 8)
#define JUMBO_META 16 /* magic, packet offset, gso_size, gso_type, send-whole flag */
#define JUMBO_META_WHOLE 11 /* set by the caller (PacketBatch.sendWhole): the peer takes it whole */
#define JUMBO_HEAD 256
#define JUMBO_PKT (MAX_SUPER + 64)
#define JUMBO_SLOT (JUMBO_META + JUMBO_HEAD + JUMBO_PKT)
#define JUMBO_SLOTS 4
#define JUMBO_REGION (JUMBO_SLOTS * JUMBO_SLOT)
#define JUMBO_MAGIC 0x4a4d4257u /* "WBMJ" little-endian */
/* Scratch for segmenting one whole super-packet here (handle->seg_arena): 64 slots of 2 KiB. */
#define SEG_SLOT 2048
#define SEG_MAX 64
#define SEG_ARENA (SEG_SLOT * SEG_MAX)
#define MAX_COALESCE_SEGS 256
#define UDP_GSO_MAX_SEGS 64
#define UDP_GSO_MAX_BYTES 65507
#define WEFT_SEND_WAIT_MS 50

/* ------------------------------------------------------------------ counters */

enum {
  TC_READS,          /* read() syscalls that returned a packet */
  TC_PACKETS_IN,     /* packets handed up (after segmentation) */
  TC_SUPER_PACKETS,  /* GSO super-packets read */
  TC_SEGMENTS,       /* packets produced by segmenting super-packets */
  TC_CSUM_COMPLETED, /* NEEDS_CSUM packets completed without GSO */
  TC_WRITES,         /* write()/writev() syscalls */
  TC_PACKETS_OUT,    /* packets accepted by the kernel */
  TC_COALESCED_WRITES,
  TC_COALESCED_SEGMENTS,
  TC_EAGAIN,
  TC_ERRORS,
  TC_DROPPED, /* unusable reads (oversize, IPv6 super-packets, malformed GSO) */
  TC_PENDING, /* super-packets that did not fit the batch and were kept for the next read */
  TC_CSUM_PARTIAL_IN, /* packets whose sender left the checksum partial: written with NEEDS_CSUM
                         (vnet header) or completed here (no vnet header) */
  TC_GSO_WRITES,      /* TCP packets larger than the MTU written whole as one GSO write */
  TC_WHOLE_SUPER,     /* TCP super-packets handed up whole (tunnel GSO) instead of segmented */
  TC_SEGMENTED_WRITES, /* TCP packets larger than the MTU cut here (TUN without GSO writes) */
  TC_COUNT
};
static const char *const tun_counter_names[TC_COUNT] = {
    "reads",          "packetsIn",        "superPackets",       "segments",     "csumCompleted",
    "writes",         "packetsOut",       "coalescedWrites",    "coalescedSegments", "eagain",
    "errors",         "dropped",          "pendingSuperPackets", "partialCsumWrites", "gsoWrites",
    "wholeSuperPackets", "segmentedWrites"};

enum {
  UC_RECV_CALLS,
  UC_MESSAGES_IN,
  UC_DATAGRAMS_IN,
  UC_GRO_MESSAGES,
  UC_SEND_CALLS,
  UC_MESSAGES_OUT,
  UC_DATAGRAMS_OUT,
  UC_GSO_MESSAGES,
  UC_EAGAIN,
  UC_SEND_WAITS,
  UC_ERRORS,
  UC_TRUNCATED,
  UC_DROPPED,
  UC_TUNNEL_WRITES,    /* super-packets written to the tunnel-GSO TAP */
  UC_TUNNEL_ERRORS,    /* failed TAP writes (the TAP is then detached) */
  UC_TUNNEL_FALLBACKS, /* whole super-packets segmented here because the TAP failed or was detached */
  UC_TUNNEL_BYTES,     /* bytes written to the TAP, outer headers included */
  UC_TUNNEL_PEER_SEGMENTED, /* whole super-packets segmented here because their peer does not
                               take tunnel-GSO datagrams (the caller did not mark them whole) */
  UC_TUNNEL_OFF,       /* whole super-packets segmented here because no TAP was ever attached
                          (tunnel GSO is off, or this node cannot use it) */
  UC_COUNT
};
static const char *const udp_counter_names[UC_COUNT] = {
    "recvCalls",  "messagesIn", "datagramsIn", "groMessages", "sendCalls", "messagesOut", "datagramsOut",
    "gsoMessages", "eagain",    "sendWaits",   "errors",      "truncated", "dropped",
    "tunnelWrites", "tunnelErrors", "tunnelFallbacks", "tunnelBytes", "tunnelPeerSegmented", "tunnelOff"};

/* ------------------------------------------------------------------ handle */

#define KIND_TUN 1
#define KIND_UDP 2
#define KIND_TAP 3
#define KIND_NLMON 4

typedef struct weft_handle weft_handle;

typedef struct {
  uv_poll_t poll;
  weft_handle *owner; /* NULL once the handle is closed; freed in the uv close callback */
} poll_box;

struct weft_handle {
  int kind;
  int fd;
  int closed;
  int finalized;
  napi_env env;
  poll_box *box;
  napi_ref callback;
  napi_async_context async_ctx;
  int cleanup_hook;
  /* TUN */
  int vnet;
  int mtu;
  int offload_bits;
  uint8_t *scratch; /* MAX_SUPER + slack, holds one super-packet */
  int pending_len;  /* a super-packet kept for the next read (did not fit the batch) */
  uint8_t pending_hdr[VNET_HDR_LEN];
  struct iovec *iov; /* MAX_COALESCE_SEGS + 2 */
  uint8_t hdr_save[120]; /* first packet's headers while a coalesced write is tried */
  int keep_super;        /* hand TCP super-packets up whole (jumbo region) instead of segmenting */
  int uso_refused;       /* a UDP GSO write failed with EINVAL: runs of UDP datagrams are not coalesced */
  /* TAP (tunnel GSO) */
  uint8_t mac[6];
  /* UDP */
  int gso;
  int gro;
  int port;
  uint32_t addr;
  int rcvbuf;
  int sndbuf;
  struct mmsghdr *msgs;
  struct iovec *msg_iov;
  struct sockaddr_in *names;
  uint8_t *ctrl; /* per message control space */
  size_t msg_cap;
  size_t iov_cap;
  int tap_fd;    /* a dup of the tunnel-GSO TAP's fd, or -1 */
  int tap_lost;  /* a TAP was attached and is gone (failed or detached): segmenting is a fallback */
  uint8_t tap_mac[6];
  uint16_t ip_id;
  uint8_t *seg_arena; /* fallback segmentation of whole super-packets (no TAP) */
  double counters[20]; /* indexed by TC_* or UC_* */
};

_Static_assert(TC_COUNT <= 20 && UC_COUNT <= 20, "counters[] too small");

#define CTRL_SPACE 64

/* ------------------------------------------------------------------ napi helpers */

#define NAPI_CALL(env, call)                                                                       \
  do {                                                                                             \
    if ((call) != napi_ok) {                                                                       \
      const napi_extended_error_info *info_;                                                       \
      napi_get_last_error_info((env), &info_);                                                     \
      bool pending_;                                                                               \
      napi_is_exception_pending((env), &pending_);                                                 \
      if (!pending_)                                                                               \
        napi_throw_error((env), "WEFT_NATIVE",                                                     \
                         info_ && info_->error_message ? info_->error_message : "napi call failed"); \
      return NULL;                                                                                 \
    }                                                                                              \
  } while (0)

static napi_value throw_errno(napi_env env, const char *what, int err) {
  char msg[256];
  snprintf(msg, sizeof msg, "%s: %s", what, strerror(err));
  napi_value code, m, e, en;
  const char *c = "WEFT_NATIVE";
  napi_create_string_utf8(env, c, NAPI_AUTO_LENGTH, &code);
  napi_create_string_utf8(env, msg, NAPI_AUTO_LENGTH, &m);
  napi_create_error(env, code, m, &e);
  napi_create_int32(env, err, &en);
  napi_set_named_property(env, e, "errno", en);
  napi_throw(env, e);
  return NULL;
}

static int get_i32(napi_env env, napi_value v, int32_t *out) {
  return napi_get_value_int32(env, v, out) == napi_ok;
}

static int get_buffer(napi_env env, napi_value v, uint8_t **data, size_t *len) {
  void *d;
  if (napi_get_buffer_info(env, v, &d, len) != napi_ok) return 0;
  *data = d;
  return 1;
}

/* A typed array of the expected type; `len` is in elements. */
static int get_typed(napi_env env, napi_value v, napi_typedarray_type want, void **data, size_t *len) {
  napi_typedarray_type t;
  napi_value ab;
  size_t off;
  if (napi_get_typedarray_info(env, v, &t, len, data, &ab, &off) != napi_ok) return 0;
  return t == want;
}

static weft_handle *get_handle(napi_env env, napi_value v, int kind) {
  void *p = NULL;
  if (napi_get_value_external(env, v, &p) != napi_ok || p == NULL) {
    napi_throw_type_error(env, "WEFT_NATIVE", "not a weft_io handle");
    return NULL;
  }
  weft_handle *h = p;
  if (h->kind != kind) {
    napi_throw_type_error(env, "WEFT_NATIVE", "wrong weft_io handle kind");
    return NULL;
  }
  return h;
}

/* ------------------------------------------------------------------ checksums */

/*
 * One's-complement sum of a byte range as big-endian 16-bit words, not folded (callers add
 * sums of several ranges, each starting at an even offset, and fold once). The loop adds
 * native 32-bit words into 64-bit accumulators (no carries lost for any packet size) and
 * swaps the folded result once: the one's-complement sum is byte-order independent
 * (RFC 1071), which makes this several times faster than summing 16-bit words.
 */
static uint64_t csum_tail(uint64_t a, const uint8_t *p, size_t len) {
  while (len >= 4) {
    uint32_t w;
    memcpy(&w, p, 4);
    a += w;
    p += 4;
    len -= 4;
  }
  if (len >= 2) {
    uint16_t w;
    memcpy(&w, p, 2);
    a += w;
    p += 2;
    len -= 2;
  }
  if (len) {
    uint8_t tail[2] = {p[0], 0};
    uint16_t w;
    memcpy(&w, tail, 2);
    a += w;
  }
  while (a >> 16) a = (a & 0xffff) + (a >> 16);
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
  a = __builtin_bswap16((uint16_t)a);
#endif
  return a;
}

/*
 * The bulk of both sums below: adds the 32-bit native words of `src` (a multiple of 64
 * bytes) into 64-bit lanes, copying them to `dst` on the way when `dst` is not NULL. AVX2
 * when the CPU has it (one load, one store and two adds per 32 bytes), plain C otherwise.
 */
#if defined(__x86_64__)
__attribute__((target("avx2"))) static uint64_t sum_words_avx2(uint8_t *dst, const uint8_t *src, size_t len) {
  __m256i a0 = _mm256_setzero_si256(), a1 = _mm256_setzero_si256();
  const __m256i z = _mm256_setzero_si256();
  for (size_t i = 0; i < len; i += 64) {
    __m256i x = _mm256_loadu_si256((const __m256i *)(const void *)(src + i));
    __m256i y = _mm256_loadu_si256((const __m256i *)(const void *)(src + i + 32));
    if (dst) {
      _mm256_storeu_si256((__m256i *)(void *)(dst + i), x);
      _mm256_storeu_si256((__m256i *)(void *)(dst + i + 32), y);
    }
    a0 = _mm256_add_epi64(a0, _mm256_unpacklo_epi32(x, z));
    a1 = _mm256_add_epi64(a1, _mm256_unpackhi_epi32(x, z));
    a0 = _mm256_add_epi64(a0, _mm256_unpacklo_epi32(y, z));
    a1 = _mm256_add_epi64(a1, _mm256_unpackhi_epi32(y, z));
  }
  uint64_t lanes[4];
  _mm256_storeu_si256((__m256i *)(void *)lanes, _mm256_add_epi64(a0, a1));
  return lanes[0] + lanes[1] + lanes[2] + lanes[3];
}
#endif

static uint64_t sum_words_c(uint8_t *dst, const uint8_t *src, size_t len) {
  uint64_t a = 0, b = 0, c = 0, d = 0;
  for (size_t i = 0; i < len; i += 16) {
    uint32_t w[4];
    memcpy(w, src + i, 16);
    if (dst) memcpy(dst + i, w, 16);
    a += w[0];
    b += w[1];
    c += w[2];
    d += w[3];
  }
  return a + b + c + d;
}

static uint64_t sum_words(uint8_t *dst, const uint8_t *src, size_t len) {
#if defined(__x86_64__)
  if (__builtin_cpu_supports("avx2")) return sum_words_avx2(dst, src, len);
#endif
  return sum_words_c(dst, src, len);
}

static uint64_t csum_add(uint64_t sum, const uint8_t *p, size_t len) {
  size_t bulk = len & ~(size_t)63;
  uint64_t a = bulk ? sum_words(NULL, p, bulk) : 0;
  return sum + csum_tail(a, p + bulk, len - bulk);
}

/*
 * csum_add of `src` while copying it to `dst` (the two must not overlap): one pass over
 * the bytes instead of a copy followed by a sum, for the payload of each segment.
 */
static uint64_t csum_copy(uint64_t sum, uint8_t *dst, const uint8_t *src, size_t len) {
  size_t bulk = len & ~(size_t)63;
  uint64_t a = bulk ? sum_words(dst, src, bulk) : 0;
  memcpy(dst + bulk, src + bulk, len - bulk);
  return sum + csum_tail(a, src + bulk, len - bulk);
}

static uint16_t csum_fold(uint64_t sum) {
  while (sum >> 16) sum = (sum & 0xffff) + (sum >> 16);
  return (uint16_t)sum;
}

static inline uint16_t rd16(const uint8_t *p) { return (uint16_t)((p[0] << 8) | p[1]); }
static inline uint32_t rd32(const uint8_t *p) {
  return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}
static inline void wr16(uint8_t *p, uint16_t v) {
  p[0] = (uint8_t)(v >> 8);
  p[1] = (uint8_t)v;
}
static inline void wr32(uint8_t *p, uint32_t v) {
  p[0] = (uint8_t)(v >> 24);
  p[1] = (uint8_t)(v >> 16);
  p[2] = (uint8_t)(v >> 8);
  p[3] = (uint8_t)v;
}
static inline uint16_t le16(const uint8_t *p) { return (uint16_t)(p[0] | (p[1] << 8)); }
static inline void wle16(uint8_t *p, uint16_t v) {
  p[0] = (uint8_t)v;
  p[1] = (uint8_t)(v >> 8);
}

static void ip_fix_csum(uint8_t *ip, int ihl) {
  ip[10] = ip[11] = 0;
  wr16(ip + 10, (uint16_t)~csum_fold(csum_add(0, ip, (size_t)ihl)));
}

/* Pseudo-header sum for IPv4 (not complemented). */
static uint64_t pseudo4(const uint8_t *ip, uint8_t proto, uint32_t l4len) {
  uint64_t s = csum_add(0, ip + 12, 8);
  return s + proto + l4len;
}

/* ------------------------------------------------------------------ segmentation */

typedef struct {
  uint8_t *arena;
  size_t arena_len;
  int headroom;
  int slot_size;
  int capacity;
  int32_t *offset;
  int32_t *length;
  int count;
} out_batch;

typedef struct {
  uint8_t flags, gso_type;
  uint16_t hdr_len, gso_size, csum_start, csum_offset;
} vnet_hdr;

static void parse_vnet(const uint8_t *b, vnet_hdr *h) {
  h->flags = b[0];
  h->gso_type = b[1];
  h->hdr_len = le16(b + 2);
  h->gso_size = le16(b + 4);
  h->csum_start = le16(b + 6);
  h->csum_offset = le16(b + 8);
}

/* Completes a partial (NEEDS_CSUM) checksum in place. Returns 0 if the offsets are bad. */
static int complete_csum(uint8_t *pkt, int len, const vnet_hdr *v) {
  int start = v->csum_start, off = v->csum_offset;
  if (start + off + 2 > len) return 0;
  uint16_t c = (uint16_t)~csum_fold(csum_add(0, pkt + start, (size_t)(len - start)));
  /* UDP over IPv4/IPv6: a computed 0 is sent as 0xffff (0 means "no checksum"). */
  if (off == 6 && c == 0) c = 0xffff;
  wr16(pkt + start + off, c);
  return 1;
}

/* Slots a super-packet needs. Returns -1 if it cannot be segmented here. */
static int gso_segments(const uint8_t *pkt, int len, const vnet_hdr *v, int *hdrlen_out) {
  uint8_t gt = v->gso_type & ~VNET_GSO_ECN;
  if (len < 20 || (pkt[0] >> 4) != 4) return -1;
  int ihl = (pkt[0] & 15) * 4;
  if (ihl < 20 || len < ihl + 8) return -1;
  int hdrlen;
  if (gt == VNET_GSO_TCPV4) {
    if (pkt[9] != 6 || len < ihl + 20) return -1;
    hdrlen = ihl + (pkt[ihl + 12] >> 4) * 4;
    if ((pkt[ihl + 12] >> 4) < 5) return -1;
  } else if (gt == VNET_GSO_UDP_L4) {
    if (pkt[9] != 17) return -1;
    hdrlen = ihl + 8;
  } else {
    return -1;
  }
  if (hdrlen > len || v->gso_size == 0) return -1;
  int payload = len - hdrlen;
  *hdrlen_out = hdrlen;
  if (payload == 0) return 1;
  return (payload + v->gso_size - 1) / v->gso_size;
}

/*
 * Splits the super-packet `pkt` (IPv4 TCP or UDP, vnet header `v`) into `o`'s slots,
 * starting at o->count. The caller checked that enough slots are free.
 */
static int segment_into(const uint8_t *pkt, int len, const vnet_hdr *v, int hdrlen, out_batch *o) {
  int ihl = (pkt[0] & 15) * 4;
  int tcp = (v->gso_type & ~VNET_GSO_ECN) == VNET_GSO_TCPV4;
  int gso = v->gso_size;
  int payload = len - hdrlen;
  int room = o->slot_size - o->headroom;
  if (hdrlen + (payload < gso ? payload : gso) > room) return -1;
  uint16_t id0 = rd16(pkt + 4);
  uint32_t seq0 = tcp ? rd32(pkt + ihl + 4) : 0;
  uint8_t flags0 = tcp ? pkt[ihl + 13] : 0;
  int n = 0;
  for (int off = 0; off < payload || (payload == 0 && n == 0); off += gso) {
    int chunk = payload - off < gso ? payload - off : gso;
    int last = off + gso >= payload;
    int slot = o->count + n;
    uint8_t *d = o->arena + (size_t)slot * (size_t)o->slot_size + (size_t)o->headroom;
    memcpy(d, pkt, (size_t)hdrlen);
    /* Payload copied and summed in one pass; it starts at an even offset of the L4 part. */
    uint64_t psum = csum_copy(0, d + hdrlen, pkt + hdrlen + off, (size_t)chunk);
    int tot = hdrlen + chunk;
    wr16(d + 2, (uint16_t)tot);
    wr16(d + 4, (uint16_t)(id0 + n));
    ip_fix_csum(d, ihl);
    uint8_t *l4 = d + ihl;
    int l4len = tot - ihl;
    if (tcp) {
      wr32(l4 + 4, seq0 + (uint32_t)off);
      uint8_t f = flags0;
      if (!last) f &= (uint8_t)~(0x01 | 0x08); /* FIN, PSH only on the last */
      if (n > 0) f &= (uint8_t)~0x80;          /* CWR only on the first */
      l4[13] = f;
      l4[16] = l4[17] = 0;
      uint64_t s = pseudo4(d, 6, (uint32_t)l4len);
      s = csum_add(s, l4, (size_t)(hdrlen - ihl)) + psum;
      wr16(l4 + 16, (uint16_t)~csum_fold(s));
    } else {
      wr16(l4 + 4, (uint16_t)l4len);
      l4[6] = l4[7] = 0;
      uint64_t s = pseudo4(d, 17, (uint32_t)l4len);
      s = csum_add(s, l4, (size_t)(hdrlen - ihl)) + psum;
      uint16_t c = (uint16_t)~csum_fold(s);
      wr16(l4 + 6, c ? c : 0xffff);
    }
    o->offset[slot] = (int32_t)((size_t)slot * (size_t)o->slot_size + (size_t)o->headroom);
    o->length[slot] = tot;
    n++;
    if (payload == 0) break;
  }
  return n;
}

/*
 * Handles one packet read from a vnet-header device, already contiguous at `pkt`
 * (which may or may not be slot o->count). Returns packets produced, 0 to drop,
 * -2 when it needs more free slots than the batch has (caller keeps it pending).
 */
static int process_vnet_packet(weft_handle *h, uint8_t *pkt, int len, const vnet_hdr *v, out_batch *o,
                               int in_slot) {
  uint8_t gt = v->gso_type & ~VNET_GSO_ECN;
  int room = o->slot_size - o->headroom;
  if (gt == VNET_GSO_NONE) {
    if (len > room) {
      if (h) h->counters[TC_DROPPED]++;
      return 0;
    }
    uint8_t *d = o->arena + (size_t)o->count * (size_t)o->slot_size + (size_t)o->headroom;
    if (!in_slot) memcpy(d, pkt, (size_t)len);
    if (v->flags & VNET_F_NEEDS_CSUM) {
      if (!complete_csum(d, len, v)) {
        if (h) h->counters[TC_DROPPED]++;
        return 0;
      }
      if (h) h->counters[TC_CSUM_COMPLETED]++;
    }
    o->offset[o->count] = (int32_t)(d - o->arena);
    o->length[o->count] = len;
    return 1;
  }
  int hdrlen = 0;
  int segs = gso_segments(pkt, len, v, &hdrlen);
  if (segs < 0) {
    if (h) h->counters[TC_DROPPED]++;
    return 0;
  }
  if (segs > o->capacity - o->count) return -2;
  if (in_slot) {
    /* Segmenting writes slot o->count first; the packet must not live there. */
    return -3;
  }
  int n = segment_into(pkt, len, v, hdrlen, o);
  if (n < 0) {
    if (h) h->counters[TC_DROPPED]++;
    return 0;
  }
  if (h) {
    h->counters[TC_SUPER_PACKETS]++;
    h->counters[TC_SEGMENTS] += n;
  }
  return n;
}

static int parse_out_batch(napi_env env, napi_value *argv, out_batch *o) {
  /* argv: arena, headroom, slotSize, capacity, offset(Int32Array), length(Int32Array) */
  size_t n1, n2;
  void *p1, *p2;
  int32_t headroom, slot, cap;
  if (!get_buffer(env, argv[0], &o->arena, &o->arena_len) || !get_i32(env, argv[1], &headroom) ||
      !get_i32(env, argv[2], &slot) || !get_i32(env, argv[3], &cap) ||
      !get_typed(env, argv[4], napi_int32_array, &p1, &n1) || !get_typed(env, argv[5], napi_int32_array, &p2, &n2)) {
    napi_throw_type_error(env, "WEFT_NATIVE", "expected (arena, headroom, slotSize, capacity, offset, length)");
    return 0;
  }
  if (slot <= 0 || headroom < 0 || headroom >= slot || cap < 0 || (size_t)cap > n1 || (size_t)cap > n2 ||
      (size_t)cap * (size_t)slot > o->arena_len) {
    napi_throw_range_error(env, "WEFT_NATIVE", "batch layout does not fit its arena");
    return 0;
  }
  o->headroom = headroom;
  o->slot_size = slot;
  o->capacity = cap;
  o->offset = p1;
  o->length = p2;
  o->count = 0;
  return 1;
}

/* Test hook: segment(vnetHdrPlusPacket, arena, headroom, slotSize, capacity, offset, length) -> count */
static napi_value js_segment(napi_env env, napi_callback_info info) {
  size_t argc = 7;
  napi_value argv[7];
  NAPI_CALL(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  uint8_t *in;
  size_t inlen;
  out_batch o;
  if (argc < 7 || !get_buffer(env, argv[0], &in, &inlen) || inlen < VNET_HDR_LEN) {
    napi_throw_type_error(env, "WEFT_NATIVE", "segment(vnetHdrPlusPacket, arena, headroom, slotSize, capacity, offset, length)");
    return NULL;
  }
  if (!parse_out_batch(env, argv + 1, &o)) return NULL;
  vnet_hdr v;
  parse_vnet(in, &v);
  int r = o.capacity > 0 ? process_vnet_packet(NULL, in + VNET_HDR_LEN, (int)inlen - VNET_HDR_LEN, &v, &o, 0) : -2;
  if (r == -2) {
    napi_throw_range_error(env, "WEFT_NATIVE", "batch too small for this super-packet");
    return NULL;
  }
  napi_value res;
  napi_create_int32(env, r < 0 ? 0 : r, &res);
  return res;
}

/* ------------------------------------------------------------------ handle lifecycle */

static void poll_closed(uv_handle_t *p) { free(p); }

static void free_handle_memory(weft_handle *h) {
  free(h->scratch);
  free(h->iov);
  free(h->msgs);
  free(h->msg_iov);
  free(h->names);
  free(h->ctrl);
  free(h->seg_arena);
  free(h);
}

/* Closes fd and poll; releases JS references. Safe to call twice. */
static void handle_close(weft_handle *h, int from_cleanup) {
  if (h->closed) return;
  h->closed = 1;
  if (h->box) {
    uv_poll_stop(&h->box->poll);
    h->box->owner = NULL;
    uv_close((uv_handle_t *)&h->box->poll, poll_closed);
    h->box = NULL;
  }
  if (h->fd >= 0) close(h->fd);
  h->fd = -1;
  if (h->kind == KIND_UDP && h->tap_fd >= 0) close(h->tap_fd);
  h->tap_fd = -1;
  if (h->callback) {
    napi_delete_reference(h->env, h->callback);
    h->callback = NULL;
  }
  if (h->async_ctx) {
    napi_async_destroy(h->env, h->async_ctx);
    h->async_ctx = NULL;
  }
  (void)from_cleanup;
}

static void env_cleanup(void *arg) {
  weft_handle *h = arg;
  h->cleanup_hook = 0;
  handle_close(h, 1);
  /* The JS external may still be finalized later; it owns the memory. */
}

static void handle_finalize(napi_env env, void *data, void *hint) {
  (void)hint;
  weft_handle *h = data;
  if (h->cleanup_hook) {
    napi_remove_env_cleanup_hook(env, env_cleanup, h);
    h->cleanup_hook = 0;
  }
  /* Releasing references from a finalizer is allowed; async_destroy too. */
  handle_close(h, 0);
  free_handle_memory(h);
}

/*
 * A new handle of `kind` owning `fd`; on allocation failure closes fd, throws ENOMEM as
 * `what` and returns NULL.
 */
static weft_handle *new_handle(napi_env env, int fd, int kind, const char *what) {
  weft_handle *h = calloc(1, sizeof *h);
  if (!h) {
    close(fd);
    throw_errno(env, what, ENOMEM);
    return NULL;
  }
  h->kind = kind;
  h->fd = fd;
  h->tap_fd = -1;
  return h;
}

static napi_value wrap_handle(napi_env env, weft_handle *h) {
  napi_value ext;
  h->env = env;
  if (napi_create_external(env, h, handle_finalize, NULL, &ext) != napi_ok) {
    if (h->fd >= 0) close(h->fd);
    free_handle_memory(h);
    napi_throw_error(env, "WEFT_NATIVE", "cannot create handle");
    return NULL;
  }
  napi_add_env_cleanup_hook(env, env_cleanup, h);
  h->cleanup_hook = 1;
  return ext;
}

static napi_value js_close(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  NAPI_CALL(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  void *p = NULL;
  if (argc < 1 || napi_get_value_external(env, argv[0], &p) != napi_ok || !p) {
    napi_throw_type_error(env, "WEFT_NATIVE", "close(handle)");
    return NULL;
  }
  weft_handle *h = p;
  if (h->cleanup_hook) {
    napi_remove_env_cleanup_hook(env, env_cleanup, h);
    h->cleanup_hook = 0;
  }
  handle_close(h, 0);
  return NULL;
}

/* ------------------------------------------------------------------ readiness */

static int tun_has_pending(weft_handle *h) { return h->kind == KIND_TUN && h->pending_len > 0; }

static void call_js(weft_handle *h) {
  napi_env env = h->env;
  napi_handle_scope scope;
  if (napi_open_handle_scope(env, &scope) != napi_ok) return;
  napi_value fn, global, result;
  if (napi_get_reference_value(env, h->callback, &fn) == napi_ok && fn != NULL &&
      napi_get_global(env, &global) == napi_ok) {
    napi_status st = napi_make_callback(env, h->async_ctx, global, fn, 0, NULL, &result);
    if (st == napi_pending_exception) {
      napi_value err;
      napi_get_and_clear_last_exception(env, &err);
      napi_fatal_exception(env, err);
    }
  }
  napi_close_handle_scope(env, scope);
}

static void on_poll(uv_poll_t *p, int status, int events) {
  (void)events;
  poll_box *box = (poll_box *)p;
  weft_handle *h = box->owner;
  if (!h || h->closed || !h->callback) return;
  if (status < 0) h->counters[h->kind == KIND_TUN ? TC_ERRORS : UC_ERRORS]++;
  call_js(h);
  /* A super-packet left pending (batch was full) is not signalled by the fd: call again. */
  for (int i = 0; i < 8 && box->owner && !h->closed && h->callback && tun_has_pending(h); i++) call_js(h);
}

/*
 * busyPoll(tunHandle, udpHandle, maxUs) -> readable mask (1 = TUN, 2 = socket, 0 = none).
 * Spins for at most maxUs checking both fds with poll(..., 0), yielding the CPU between
 * checks (sched_yield: any runnable task on this CPU goes first, so the spin only uses
 * time nobody else wants). This is the forwarder's short busy-poll window after traffic:
 * a reply arriving within it is handled without a sleep and wake-up (epoll, the scheduler,
 * and on virtual machines a halted vCPU), which is most of a userspace hop's latency.
 */
static napi_value js_busy_poll(napi_env env, napi_callback_info info) {
  size_t argc = 4;
  napi_value argv[4];
  NAPI_CALL(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  void *a = NULL, *b = NULL;
  int32_t max_us = 0;
  void *cp = NULL;
  size_t clen = 0;
  if (argc < 3 || napi_get_value_external(env, argv[0], &a) != napi_ok || !a ||
      napi_get_value_external(env, argv[1], &b) != napi_ok || !b || !get_i32(env, argv[2], &max_us) ||
      (argc >= 4 && (!get_typed(env, argv[3], napi_float64_array, &cp, &clen) || clen < 2))) {
    napi_throw_type_error(env, "WEFT_NATIVE", "busyPoll(tunHandle, udpHandle, maxUs[, clock: Float64Array(2)])");
    return NULL;
  }
  weft_handle *t = a, *u = b;
  int mask = 0;
  struct timespec t0, now;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  now = t0;
  if (!t->closed && !u->closed && max_us > 0) {
    struct pollfd fds[2] = {{t->fd, POLLIN, 0}, {u->fd, POLLIN, 0}};
    int64_t limit_ns = (int64_t)max_us * 1000;
    for (;;) {
      int r = poll(fds, 2, 0);
      if (r > 0) {
        if (fds[0].revents) mask |= 1;
        if (fds[1].revents) mask |= 2;
        break;
      }
      if (tun_has_pending(t)) {
        mask |= 1;
        break;
      }
      clock_gettime(CLOCK_MONOTONIC, &now);
      if ((int64_t)(now.tv_sec - t0.tv_sec) * 1000000000 + (now.tv_nsec - t0.tv_nsec) >= limit_ns) break;
      sched_yield();
    }
    if (mask) clock_gettime(CLOCK_MONOTONIC, &now);
  }
  if (cp) {
    /* The caller's clock, without allocating a number per call: [now ms, ms this call took]. */
    double *clock = cp;
    clock[0] = (double)now.tv_sec * 1e3 + (double)now.tv_nsec / 1e6;
    clock[1] = (double)(now.tv_sec - t0.tv_sec) * 1e3 + (double)(now.tv_nsec - t0.tv_nsec) / 1e6;
  }
  napi_value res;
  napi_create_int32(env, mask, &res);
  return res;
}

/* startReading(handle, callback) */
static napi_value js_start(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  NAPI_CALL(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  void *pp = NULL;
  if (argc < 2 || napi_get_value_external(env, argv[0], &pp) != napi_ok || !pp) {
    napi_throw_type_error(env, "WEFT_NATIVE", "startReading(handle, callback)");
    return NULL;
  }
  weft_handle *h = pp;
  if (h->closed) {
    napi_throw_error(env, "WEFT_NATIVE", "handle is closed");
    return NULL;
  }
  napi_valuetype t;
  napi_typeof(env, argv[1], &t);
  if (t != napi_function) {
    napi_throw_type_error(env, "WEFT_NATIVE", "callback must be a function");
    return NULL;
  }
  if (h->callback) napi_delete_reference(env, h->callback);
  NAPI_CALL(env, napi_create_reference(env, argv[1], 1, &h->callback));
  if (!h->async_ctx) {
    napi_value name;
    napi_create_string_utf8(env, h->kind == KIND_TUN ? "weft:tun" : h->kind == KIND_NLMON ? "weft:netlink" : "weft:udp",
                            NAPI_AUTO_LENGTH, &name);
    NAPI_CALL(env, napi_async_init(env, NULL, name, &h->async_ctx));
  }
  if (!h->box) {
    uv_loop_t *loop;
    NAPI_CALL(env, napi_get_uv_event_loop(env, &loop));
    poll_box *box = calloc(1, sizeof *box);
    if (!box) return throw_errno(env, "startReading", ENOMEM);
    int r = uv_poll_init(loop, &box->poll, h->fd);
    if (r < 0) {
      free(box);
      return throw_errno(env, "uv_poll_init", -r);
    }
    box->owner = h;
    h->box = box;
  }
  int r = uv_poll_start(&h->box->poll, UV_READABLE, on_poll);
  if (r < 0) return throw_errno(env, "uv_poll_start", -r);
  return NULL;
}

static napi_value js_stop(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  NAPI_CALL(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  void *pp = NULL;
  if (argc < 1 || napi_get_value_external(env, argv[0], &pp) != napi_ok || !pp) {
    napi_throw_type_error(env, "WEFT_NATIVE", "stopReading(handle)");
    return NULL;
  }
  weft_handle *h = pp;
  if (h->box) uv_poll_stop(&h->box->poll);
  return NULL;
}

/* stats(handle) -> { counter: number } */
static napi_value js_stats(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  NAPI_CALL(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  void *pp = NULL;
  if (argc < 1 || napi_get_value_external(env, argv[0], &pp) != napi_ok || !pp) {
    napi_throw_type_error(env, "WEFT_NATIVE", "stats(handle)");
    return NULL;
  }
  weft_handle *h = pp;
  napi_value obj, v;
  NAPI_CALL(env, napi_create_object(env, &obj));
  int n = h->kind == KIND_TUN ? TC_COUNT : UC_COUNT;
  const char *const *names = h->kind == KIND_TUN ? tun_counter_names : udp_counter_names;
  for (int i = 0; i < n; i++) {
    napi_create_double(env, h->counters[i], &v);
    napi_set_named_property(env, obj, names[i], v);
  }
  if (h->kind == KIND_UDP) {
    napi_create_double(env, h->gso, &v);
    napi_set_named_property(env, obj, "gsoEnabled", v);
    napi_create_double(env, h->tap_fd >= 0 ? 1 : 0, &v);
    napi_set_named_property(env, obj, "tunnelAttached", v);
  }
  return obj;
}

/* ------------------------------------------------------------------ TUN */

static void sleep_ms(int ms) {
  struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
  nanosleep(&ts, NULL);
}

/* tunOpen(name, vnetHdr, multiQueue, offloads, mtu) -> {handle, name, vnetHdr, offloadBits} */
/*
 * Opens /dev/net/tun (non-blocking) and attaches it to device `name` with `flags`. A
 * device that is still going away (EBUSY) is waited for briefly. Returns the fd, or -1
 * with errno set and *what naming the failed step.
 */
static int open_tun_fd(const char *name, size_t nlen, short flags, struct ifreq *ifr, const char **what) {
  *what = "open /dev/net/tun";
  int fd = open("/dev/net/tun", O_RDWR | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) return -1;
  memset(ifr, 0, sizeof *ifr);
  memcpy(ifr->ifr_name, name, nlen);
  ifr->ifr_flags = flags;
  int r = -1;
  for (int attempt = 0; attempt < 40; attempt++) {
    r = ioctl(fd, TUNSETIFF, ifr);
    if (r == 0 || errno != EBUSY) break;
    sleep_ms(50);
  }
  if (r < 0) {
    int e = errno;
    close(fd);
    errno = e;
    *what = "TUNSETIFF";
    return -1;
  }
  return fd;
}

static napi_value js_tun_open(napi_env env, napi_callback_info info) {
  size_t argc = 6;
  napi_value argv[6];
  NAPI_CALL(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  char name[IFNAMSIZ + 1];
  size_t nlen = 0;
  bool vnet = false, mq = false, offl = false;
  int32_t mtu = 1500;
  if (argc < 5 || napi_get_value_string_utf8(env, argv[0], name, sizeof name, &nlen) != napi_ok ||
      napi_get_value_bool(env, argv[1], &vnet) != napi_ok || napi_get_value_bool(env, argv[2], &mq) != napi_ok ||
      napi_get_value_bool(env, argv[3], &offl) != napi_ok || !get_i32(env, argv[4], &mtu)) {
    napi_throw_type_error(env, "WEFT_NATIVE", "tunOpen(name, vnetHdr, multiQueue, offloads, mtu[, keepSuperPackets])");
    return NULL;
  }
  bool keep = false;
  if (argc >= 6 && napi_get_value_bool(env, argv[5], &keep) != napi_ok) keep = false;
  if (nlen >= IFNAMSIZ) {
    napi_throw_range_error(env, "WEFT_NATIVE", "interface name longer than 15 bytes");
    return NULL;
  }
  struct ifreq ifr;
  const char *what = NULL;
  int fd = open_tun_fd(name, nlen, IFF_TUN | IFF_NO_PI | (vnet ? IFF_VNET_HDR : 0) | (mq ? IFF_MULTI_QUEUE : 0),
                       &ifr, &what);
  if (fd < 0) return throw_errno(env, what, errno);
  int bits = 0;
  if (vnet) {
    int sz = VNET_HDR_LEN;
    if (ioctl(fd, TUNSETVNETHDRSZ, &sz) < 0) {
      int e = errno;
      close(fd);
      return throw_errno(env, "TUNSETVNETHDRSZ", e);
    }
    if (offl) {
      static const int tries[] = {TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_USO4 | TUN_F_USO6,
                                  TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6, TUN_F_CSUM};
      for (size_t i = 0; i < sizeof tries / sizeof tries[0]; i++) {
        if (ioctl(fd, TUNSETOFFLOAD, (unsigned long)tries[i]) == 0) {
          bits = tries[i];
          break;
        }
      }
    }
    if (bits == 0) ioctl(fd, TUNSETOFFLOAD, 0UL);
  }
  weft_handle *h = new_handle(env, fd, KIND_TUN, "tunOpen");
  if (!h) return NULL;
  h->vnet = vnet;
  h->mtu = mtu;
  h->offload_bits = bits;
  h->keep_super = keep && vnet && (bits & TUN_F_TSO4);
  h->scratch = malloc(MAX_SUPER + 64);
  h->iov = malloc(sizeof(struct iovec) * (MAX_COALESCE_SEGS + 2));
  if (!h->scratch || !h->iov) {
    close(fd);
    free_handle_memory(h);
    return throw_errno(env, "tunOpen", ENOMEM);
  }
  napi_value ext = wrap_handle(env, h);
  if (!ext) return NULL;
  napi_value res, v;
  NAPI_CALL(env, napi_create_object(env, &res));
  napi_set_named_property(env, res, "handle", ext);
  napi_create_string_utf8(env, ifr.ifr_name, strnlen(ifr.ifr_name, IFNAMSIZ), &v);
  napi_set_named_property(env, res, "name", v);
  napi_get_boolean(env, vnet, &v);
  napi_set_named_property(env, res, "vnetHdr", v);
  napi_create_int32(env, bits, &v);
  napi_set_named_property(env, res, "offloadBits", v);
  return res;
}

/*
 * An unfragmented TCP/IPv4 packet whose IP total length is `len` and whose headers fit in
 * it: sets the IP and TCP header lengths. The one header check behind coalescing, whole
 * super-packets and oversize writes.
 */
static int tcp4_lengths(const uint8_t *p, int len, int *ihl_out, int *thl_out) {
  if (len < 40 || (p[0] >> 4) != 4 || p[9] != 6 || rd16(p + 2) != len) return 0;
  if (rd16(p + 6) & 0x3fff) return 0; /* MF or fragment offset */
  int ihl = (p[0] & 15) * 4;
  if (ihl < 20 || len < ihl + 20) return 0;
  int thl = (p[ihl + 12] >> 4) * 4;
  if (thl < 20 || ihl + thl > len) return 0;
  *ihl_out = ihl;
  *thl_out = thl;
  return 1;
}

/* A TCP/IPv4 super-packet that a tunnel-GSO send can take whole (the kernel's own layout). */
static int whole_super_ok(const uint8_t *p, int len, const vnet_hdr *v) {
  if ((v->gso_type & ~VNET_GSO_ECN) != VNET_GSO_TCPV4 || !(v->flags & VNET_F_NEEDS_CSUM)) return 0;
  int ihl, thl;
  if (len > MAX_SUPER || !tcp4_lengths(p, len, &ihl, &thl)) return 0;
  if (v->csum_start != ihl || v->csum_offset != 16 || v->gso_size == 0) return 0;
  return len - ihl - thl > v->gso_size;
}

/* Descriptor o->count = the jumbo packet; its vnet facts go to its slot's meta. */
static void put_jumbo(out_batch *o, const uint8_t *pkt, int len, const vnet_hdr *v) {
  uint8_t *m = (uint8_t *)pkt - JUMBO_HEAD - JUMBO_META;
  uint32_t magic = JUMBO_MAGIC;
  int32_t at = (int32_t)(pkt - o->arena);
  memcpy(m, &magic, 4);
  memcpy(m + 4, &at, 4);
  memcpy(m + 8, &v->gso_size, 2);
  m[10] = v->gso_type;
  m[JUMBO_META_WHOLE] = 0;
  o->offset[o->count] = at;
  o->length[o->count] = len;
}

/*
 * tunRead(handle, arena, headroom, slotSize, capacity, offset, length) -> count
 * Reads until EAGAIN or until the batch is full. A super-packet that needs more slots than
 * are left is kept (already contiguous in the handle's scratch buffer) and segmented first
 * by the next call; the poll callback calls JS again while one is pending, so a reader
 * that calls read() until it returns 0 (or less than capacity) never strands it.
 */
static napi_value js_tun_read(napi_env env, napi_callback_info info) {
  size_t argc = 7;
  napi_value argv[7];
  NAPI_CALL(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  if (argc < 7) {
    napi_throw_type_error(env, "WEFT_NATIVE", "tunRead(handle, arena, headroom, slotSize, capacity, offset, length)");
    return NULL;
  }
  weft_handle *h = get_handle(env, argv[0], KIND_TUN);
  if (!h) return NULL;
  out_batch o;
  if (!parse_out_batch(env, argv + 1, &o)) return NULL;
  if (h->closed) {
    napi_throw_error(env, "WEFT_NATIVE", "TUN handle is closed");
    return NULL;
  }
  int room = o.slot_size - o.headroom;
  /* Whole TCP super-packets go to the jumbo slots at the arena's end (JUMBO_SLOTS per call). */
  uint8_t *jbase = NULL;
  if (h->keep_super && h->vnet && o.arena_len >= (size_t)o.capacity * (size_t)o.slot_size + JUMBO_REGION)
    jbase = o.arena + o.arena_len - JUMBO_REGION;
  int jn = 0;
  if (h->pending_len > 0) {
    vnet_hdr v;
    parse_vnet(h->pending_hdr, &v);
    int r = process_vnet_packet(h, h->scratch, h->pending_len, &v, &o, 0);
    if (r == -2 && o.count == 0) {
      /* Can never fit this batch: drop it. */
      h->counters[TC_DROPPED]++;
      h->pending_len = 0;
    } else if (r >= 0) {
      o.count += r;
      h->counters[TC_PACKETS_IN] += r;
      h->pending_len = 0;
    }
  }
  while (h->pending_len == 0 && o.count < o.capacity && (!jbase || jn < JUMBO_SLOTS)) {
    uint8_t *slot = o.arena + (size_t)o.count * (size_t)o.slot_size + (size_t)o.headroom;
    ssize_t n;
    uint8_t hdr[VNET_HDR_LEN];
    /* Where a packet longer than the slot is made contiguous (and where its tail spills). */
    uint8_t *jumbo = jbase ? jbase + (size_t)jn * JUMBO_SLOT + JUMBO_META + JUMBO_HEAD : NULL;
    uint8_t *spill = jumbo ? jumbo : h->scratch;
    if (h->vnet) {
      /* Header, then straight into the slot; anything longer spills after the slot part. */
      struct iovec iov[3] = {{hdr, VNET_HDR_LEN}, {slot, (size_t)room}, {spill + room, (size_t)(MAX_SUPER + 64 - room)}};
      n = readv(h->fd, iov, room < MAX_SUPER ? 3 : 2);
    } else {
      n = read(h->fd, slot, (size_t)room);
    }
    if (n < 0) {
      if (errno == EAGAIN || errno == EWOULDBLOCK) {
        h->counters[TC_EAGAIN]++;
      } else if (errno != EINTR) {
        h->counters[TC_ERRORS]++;
      }
      if (errno == EINTR) continue;
      break;
    }
    h->counters[TC_READS]++;
    if (!h->vnet) {
      if (n == 0) break;
      o.offset[o.count] = (int32_t)(slot - o.arena);
      o.length[o.count] = (int32_t)n;
      o.count++;
      h->counters[TC_PACKETS_IN]++;
      continue;
    }
    if (n < VNET_HDR_LEN) {
      h->counters[TC_DROPPED]++;
      continue;
    }
    int len = (int)n - VNET_HDR_LEN;
    vnet_hdr v;
    parse_vnet(hdr, &v);
    int r;
    if ((v.gso_type & ~VNET_GSO_ECN) == VNET_GSO_NONE && len <= room) {
      r = process_vnet_packet(h, slot, len, &v, &o, 1);
    } else {
      /* Make the packet contiguous (the slot part moves in front of the spill). */
      int head = len < room ? len : room;
      memcpy(spill, slot, (size_t)head);
      if (jumbo && whole_super_ok(spill, len, &v)) {
        put_jumbo(&o, spill, len, &v);
        h->counters[TC_WHOLE_SUPER]++;
        h->counters[TC_PACKETS_IN]++;
        o.count++;
        jn++;
        continue;
      }
      r = process_vnet_packet(h, spill, len, &v, &o, 0);
      if (r == -2 && o.count == 0) {
        h->counters[TC_DROPPED]++; /* needs more slots than the whole batch has */
        continue;
      }
      if (r == -2) {
        if (spill != h->scratch) memcpy(h->scratch, spill, (size_t)len);
        memcpy(h->pending_hdr, hdr, VNET_HDR_LEN);
        h->pending_len = len;
        h->counters[TC_PENDING]++;
        break;
      }
    }
    if (r > 0) {
      o.count += r;
      h->counters[TC_PACKETS_IN] += r;
    }
  }
  napi_value res;
  napi_create_int32(env, o.count, &res);
  return res;
}

/* ---- TUN write: coalescing */

typedef struct {
  const uint8_t *arena;
  size_t arena_len;
  const int32_t *offset;
  const int32_t *length;
  int count;
} in_batch;

static int in_desc(const in_batch *b, int i, uint8_t **p, int *len) {
  int32_t off = b->offset[i], l = b->length[i];
  if (off < 0 || l <= 0 || (size_t)off + (size_t)l > b->arena_len) return 0;
  *p = (uint8_t *)b->arena + off;
  *len = l;
  return 1;
}

/* Header facts for a TCPv4 segment or UDPv4 datagram that may take part in coalescing. */
typedef struct {
  int ihl, hdrlen, payload, proto;
} run_info;

static int tcp4_candidate(const uint8_t *p, int len, run_info *t) {
  int ihl, doff;
  if (!tcp4_lengths(p, len, &ihl, &doff)) return 0;
  if (p[ihl + 12] & 0x0f) return 0; /* reserved bits / AE */
  uint8_t f = p[ihl + 13];
  if ((f & ~0x08) != 0x10) return 0; /* ACK, optionally PSH */
  t->ihl = ihl;
  t->hdrlen = ihl + doff;
  t->payload = len - t->hdrlen;
  t->proto = 6;
  return t->payload > 0;
}

/*
 * An unfragmented UDP/IPv4 datagram with a payload (at least one byte) whose lengths agree.
 * One sent without a checksum (0) arrives with one when coalesced: the kernel computes every
 * segment's.
 */
static int udp4_candidate(const uint8_t *p, int len, run_info *t) {
  if (len < 29 || (p[0] >> 4) != 4 || p[9] != 17 || rd16(p + 2) != len) return 0;
  if (rd16(p + 6) & 0x3fff) return 0; /* MF or fragment offset */
  int ihl = (p[0] & 15) * 4;
  if (ihl < 20 || len < ihl + 9 || rd16(p + ihl + 4) != len - ihl) return 0;
  t->ihl = ihl;
  t->hdrlen = ihl + 8;
  t->payload = len - t->hdrlen;
  t->proto = 17;
  return 1;
}

/* `udp`: UDP datagrams may be coalesced too (the TUN takes USO writes). */
static int run_candidate(const uint8_t *p, int len, int udp, run_info *t) {
  if (len >= 20 && p[9] == 17) return udp && udp4_candidate(p, len, t);
  return tcp4_candidate(p, len, t);
}

/*
 * Can packet `b` follow `prev` in the run that `first` starts? What the kernel's segmentation
 * will rebuild from the first packet's headers must be what each packet carried: the same
 * IP header (TOS, DF, TTL, addresses, options) and ports; for TCP the same ACK, data offset
 * and options, and contiguous sequence numbers; for UDP the next IP ID unless DF is set (the
 * kernel numbers the segments' IDs on from the first; an ID only matters for reassembly,
 * RFC 6864). No packet may carry more payload than the first (it sets the segment size).
 */
static int can_follow(const uint8_t *first, const run_info *tf, const uint8_t *prev, const run_info *tp,
                      const uint8_t *b, const run_info *tb) {
  if (tb->proto != tf->proto || tb->ihl != tf->ihl || tb->hdrlen != tf->hdrlen) return 0;
  int ihl = tf->ihl;
  if (first[1] != b[1]) return 0;                          /* TOS */
  if ((first[6] & 0x40) != (b[6] & 0x40)) return 0;        /* DF */
  if (first[8] != b[8]) return 0;                          /* TTL */
  if (memcmp(first + 12, b + 12, 8) != 0) return 0;        /* addresses */
  if (ihl > 20 && memcmp(first + 20, b + 20, (size_t)ihl - 20) != 0) return 0; /* IP options */
  const uint8_t *fa = first + ihl, *bb = b + ihl;
  if (memcmp(fa, bb, 4) != 0) return 0;                    /* ports */
  if (tb->payload > tf->payload) return 0;
  if (tf->proto == 17) {
    if (!(first[6] & 0x40) && rd16(b + 4) != (uint16_t)(rd16(prev + 4) + 1)) return 0; /* IP ID */
    return 1;
  }
  if (memcmp(fa + 8, bb + 8, 4) != 0) return 0;            /* ack */
  if (fa[12] != bb[12]) return 0;                          /* data offset */
  if (tf->hdrlen - ihl > 20 && memcmp(fa + 20, bb + 20, (size_t)(tf->hdrlen - ihl - 20)) != 0) return 0;
  if (rd32(prev + tp->ihl + 4) + (uint32_t)tp->payload != rd32(bb + 4)) return 0; /* contiguous */
  return 1;
}

/*
 * Finds the run starting at i (UDP datagrams join runs only when `udp`). Returns its length
 * (1 = no coalescing); for a run, sets *total to the super-packet's IP total length and *out
 * to its first packet's header facts.
 */
static int find_run(const in_batch *b, int i, int udp, int *total, run_info *out) {
  uint8_t *first;
  int flen;
  run_info tf;
  if (!in_desc(b, i, &first, &flen) || !run_candidate(first, flen, udp, &tf)) return 1;
  if (tf.proto == 6 && (first[tf.ihl + 13] & 0x08)) return 1; /* PSH only allowed on the last */
  int max = tf.proto == 17 ? UDP_GSO_MAX_SEGS : MAX_COALESCE_SEGS;
  uint8_t *prev = first;
  run_info tp = tf;
  int sum = flen;
  int n = 1;
  for (int j = i + 1; j < b->count && n < max; j++) {
    uint8_t *p;
    int len;
    run_info tj;
    if (!in_desc(b, j, &p, &len) || !run_candidate(p, len, udp, &tj)) break;
    if (!can_follow(first, &tf, prev, &tp, p, &tj)) break;
    if (sum + tj.payload > 65535) break;
    sum += tj.payload;
    n++;
    prev = p;
    tp = tj;
    if (tj.payload < tf.payload) break; /* shorter: the last */
    if (tj.proto == 6 && (p[tj.ihl + 13] & 0x08)) break; /* PSH: the last */
  }
  *total = sum;
  *out = tf;
  return n;
}

/*
 * Prepares the writev for the run [i, i+n): fixes the first packet's headers in place and
 * fills iov (vnet header, first headers, each payload). Returns the iovec count.
 */
static int build_coalesced(const in_batch *b, int i, int n, int total, const run_info *ri, uint8_t *vh,
                           struct iovec *iov) {
  uint8_t *first = NULL, *last = NULL;
  int flen = 0, llen = 0;
  const run_info tf = *ri;
  in_desc(b, i, &first, &flen);
  in_desc(b, i + n - 1, &last, &llen);
  uint8_t *l4 = first + tf.ihl;
  int ihl = tf.ihl;
  wr16(first + 2, (uint16_t)total);
  ip_fix_csum(first, ihl);
  memset(vh, 0, VNET_HDR_LEN);
  vh[0] = VNET_F_NEEDS_CSUM;
  if (tf.proto == 17) {
    wr16(l4 + 4, (uint16_t)(total - ihl));
    wr16(l4 + 6, csum_fold(pseudo4(first, 17, (uint32_t)(total - ihl))));
    vh[1] = VNET_GSO_UDP_L4;
    wle16(vh + 8, 6);
  } else {
    l4[13] = (uint8_t)((l4[13] & ~0x08) | (last[ihl + 13] & 0x08)); /* PSH from the last */
    memcpy(l4 + 14, last + ihl + 14, 2);                              /* newest window */
    wr16(l4 + 16, csum_fold(pseudo4(first, 6, (uint32_t)(total - ihl))));
    vh[1] = VNET_GSO_TCPV4;
    wle16(vh + 8, 16);
  }
  wle16(vh + 2, (uint16_t)tf.hdrlen);
  wle16(vh + 4, (uint16_t)tf.payload);
  wle16(vh + 6, (uint16_t)ihl);
  iov[0].iov_base = vh;
  iov[0].iov_len = VNET_HDR_LEN;
  iov[1].iov_base = first;
  iov[1].iov_len = (size_t)tf.hdrlen;
  int k = 2;
  for (int j = i; j < i + n; j++) {
    uint8_t *p = NULL;
    int len = 0;
    in_desc(b, j, &p, &len);
    iov[k].iov_base = p + tf.hdrlen;
    iov[k].iov_len = (size_t)(len - tf.hdrlen);
    k++;
  }
  return k;
}

static int parse_in_batch(napi_env env, napi_value *argv, in_batch *b) {
  /* argv: arena, offset, length, count */
  size_t n1, n2, alen;
  void *p1, *p2;
  uint8_t *arena;
  int32_t count;
  if (!get_buffer(env, argv[0], &arena, &alen) || !get_typed(env, argv[1], napi_int32_array, &p1, &n1) ||
      !get_typed(env, argv[2], napi_int32_array, &p2, &n2) || !get_i32(env, argv[3], &count)) {
    napi_throw_type_error(env, "WEFT_NATIVE", "expected (arena, offset, length, count)");
    return 0;
  }
  if (count < 0 || (size_t)count > n1 || (size_t)count > n2) {
    napi_throw_range_error(env, "WEFT_NATIVE", "count exceeds the descriptor arrays");
    return 0;
  }
  b->arena = arena;
  b->arena_len = alen;
  b->offset = p1;
  b->length = p2;
  b->count = count;
  return 1;
}

/* tunWrite(handle, arena, offset, length, count) -> packets accepted */
/*
 * A packet whose TCP/UDP checksum field holds only the pseudo-header sum (a sender's
 * CHECKSUM_PARTIAL that no device completed: Linux's vxlan driver over a veth underlay
 * sends exactly that) would be dropped by our kernel as corrupt. Such a packet is written
 * with NEEDS_CSUM instead, which is what the sender's kernel meant. Cheap: the full
 * checksum is verified only when the field equals the pseudo-header sum (1 in 65536 of
 * complete packets), and a packet whose checksum verifies is left alone.
 * Returns 1 and fills `vh` when the packet needs NEEDS_CSUM.
 */
static int partial_csum_hdr(const uint8_t *p, int len, uint8_t *vh) {
  if (len < 20 || (p[0] >> 4) != 4) return 0;
  int ihl = (p[0] & 15) * 4;
  int tot = rd16(p + 2);
  if (ihl < 20 || tot > len || tot < ihl + 8) return 0;
  if (rd16(p + 6) & 0x3fff) return 0; /* a fragment: the L4 header is not all here */
  uint8_t proto = p[9];
  int off;
  if (proto == 6) {
    if (tot < ihl + 20) return 0;
    off = 16;
  } else if (proto == 17) {
    off = 6;
    if (rd16(p + ihl + 6) == 0) return 0; /* UDP without checksum */
  } else {
    return 0;
  }
  uint32_t l4len = (uint32_t)(tot - ihl);
  uint16_t field = rd16(p + ihl + off);
  if (field != csum_fold(pseudo4(p, proto, l4len))) return 0;
  if (csum_fold(csum_add(pseudo4(p, proto, l4len), p + ihl, l4len)) == 0xffff) return 0; /* complete and valid */
  memset(vh, 0, VNET_HDR_LEN);
  vh[0] = VNET_F_NEEDS_CSUM;
  wle16(vh + 6, (uint16_t)ihl);
  wle16(vh + 8, (uint16_t)off);
  return 1;
}

/*
 * A TCP packet larger than the device MTU cannot go to the TUN as one plain packet. A
 * kernel VXLAN peer reached over veth (same host) sends whole TCP super-packets as one
 * UDP-tunnel GSO skb, which a UDP socket receives as one big datagram (no UDP_GRO cmsg:
 * that is for UDP_L4 trains only), inner checksum partial. Such a packet is written as one
 * GSO packet (TCPV4, segments that fit the MTU, the checksum left to the kernel with the
 * pseudo-header sum in place). Returns 0 when it is not such a packet.
 */
static int oversize_tcp_hdr(uint8_t *p, int len, int mtu, uint8_t *vh) {
  int ihl, thl;
  if (len <= mtu || !tcp4_lengths(p, len, &ihl, &thl)) return 0;
  if (ihl + thl >= len || ihl + thl >= mtu) return 0;
  uint8_t *th = p + ihl;
  th[16] = th[17] = 0;
  wr16(th + 16, csum_fold(pseudo4(p, 6, (uint32_t)(len - ihl))));
  memset(vh, 0, VNET_HDR_LEN);
  vh[0] = VNET_F_NEEDS_CSUM;
  vh[1] = VNET_GSO_TCPV4 | ((th[13] & 0x80) ? VNET_GSO_ECN : 0); /* CWR: only the first segment keeps it */
  wle16(vh + 2, (uint16_t)(ihl + thl));
  wle16(vh + 4, (uint16_t)(mtu - ihl - thl));
  wle16(vh + 6, (uint16_t)ihl);
  wle16(vh + 8, 16);
  return 1;
}

/*
 * The same packet for a TUN that cannot take GSO writes (offloads off): cut here into
 * MTU-sized TCP segments with full checksums, one write each. Returns the segments the
 * kernel took, or -1 when it is not such a packet (the caller writes it as it is).
 */
static int write_segmented(weft_handle *h, const uint8_t *p, int len) {
  int ihl, thl;
  if (h->mtu <= 0 || len <= h->mtu || !tcp4_lengths(p, len, &ihl, &thl)) return -1;
  int hdrlen = ihl + thl;
  if (hdrlen >= h->mtu) return -1;
  int slot = (h->mtu + 63) & ~63;
  if (slot < SEG_SLOT) slot = SEG_SLOT;
  vnet_hdr v;
  memset(&v, 0, sizeof v);
  v.flags = VNET_F_NEEDS_CSUM;
  v.gso_type = VNET_GSO_TCPV4;
  v.gso_size = (uint16_t)(h->mtu - hdrlen);
  v.hdr_len = (uint16_t)hdrlen;
  v.csum_start = (uint16_t)ihl;
  v.csum_offset = 16;
  int segs = (len - hdrlen + v.gso_size - 1) / v.gso_size;
  if (segs > SEG_ARENA / slot) return -1;
  if (!h->seg_arena && !(h->seg_arena = malloc(SEG_ARENA))) return -1;
  int32_t so[SEG_MAX], sl[SEG_MAX];
  out_batch b = {.arena = h->seg_arena, .arena_len = SEG_ARENA, .headroom = 0,
                 .slot_size = slot, .capacity = SEG_ARENA / slot, .offset = so, .length = sl, .count = 0};
  int n = segment_into(p, len, &v, hdrlen, &b);
  if (n <= 0) return -1;
  h->counters[TC_SEGMENTED_WRITES]++;
  uint8_t zero[VNET_HDR_LEN];
  memset(zero, 0, sizeof zero);
  int took = 0;
  for (int k = 0; k < n; k++) {
    uint8_t *d = h->seg_arena + so[k];
    ssize_t r;
    do {
      if (h->vnet) {
        struct iovec iov[2] = {{zero, VNET_HDR_LEN}, {d, (size_t)sl[k]}};
        r = writev(h->fd, iov, 2);
      } else {
        r = write(h->fd, d, (size_t)sl[k]);
      }
    } while (r < 0 && errno == EINTR);
    h->counters[TC_WRITES]++;
    if (r < 0)
      h->counters[errno == EAGAIN || errno == EWOULDBLOCK ? TC_EAGAIN : TC_ERRORS]++;
    else
      took++;
  }
  return took;
}

static napi_value js_tun_write(napi_env env, napi_callback_info info) {
  size_t argc = 5;
  napi_value argv[5];
  NAPI_CALL(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  if (argc < 5) {
    napi_throw_type_error(env, "WEFT_NATIVE", "tunWrite(handle, arena, offset, length, count)");
    return NULL;
  }
  weft_handle *h = get_handle(env, argv[0], KIND_TUN);
  if (!h) return NULL;
  in_batch b;
  if (!parse_in_batch(env, argv + 1, &b)) return NULL;
  if (h->closed) {
    napi_throw_error(env, "WEFT_NATIVE", "TUN handle is closed");
    return NULL;
  }
  int accepted = 0;
  int gro = h->vnet && (h->offload_bits & TUN_F_TSO4);
  int udp_gro = gro && (h->offload_bits & TUN_F_USO4) && !h->uso_refused;
  uint8_t vh[VNET_HDR_LEN];
  for (int i = 0; i < b.count;) {
    uint8_t *p;
    int len;
    if (!in_desc(&b, i, &p, &len)) {
      h->counters[TC_ERRORS]++;
      i++;
      continue;
    }
    int total = 0;
    run_info ri;
    int n = gro ? find_run(&b, i, udp_gro, &total, &ri) : 1;
    if (n > 1) {
      /* Keep the first packet's headers: if the kernel refuses the GSO write they are
       * restored and the run is written packet by packet. */
      int hdrlen = ri.hdrlen;
      memcpy(h->hdr_save, p, (size_t)hdrlen);
      int k = build_coalesced(&b, i, n, total, &ri, vh, h->iov);
      ssize_t r;
      do {
        r = writev(h->fd, h->iov, k);
      } while (r < 0 && errno == EINTR);
      h->counters[TC_WRITES]++;
      if (r >= 0) {
        h->counters[TC_COALESCED_WRITES]++;
        h->counters[TC_COALESCED_SEGMENTS] += n;
        h->counters[TC_PACKETS_OUT] += n;
        accepted += n;
        i += n;
        continue;
      }
      h->counters[errno == EAGAIN || errno == EWOULDBLOCK ? TC_EAGAIN : TC_ERRORS]++;
      memcpy(p, h->hdr_save, (size_t)hdrlen);
      if (errno == EINVAL && ri.proto == 17) {
        /* A kernel that announced USO but refuses UDP GSO writes: coalesce TCP only. */
        h->uso_refused = 1;
        udp_gro = 0;
      }
      if (errno == EAGAIN || errno == EWOULDBLOCK) {
        i += n;
        continue;
      }
      /* Fall through: this run goes out as single packets. */
    }
    for (int j = i; j < i + n; j++) {
      if (!in_desc(&b, j, &p, &len)) continue;
      if (!gro) {
        int took = write_segmented(h, p, len);
        if (took >= 0) {
          if (took > 0) {
            accepted++;
            h->counters[TC_PACKETS_OUT]++;
          }
          continue;
        }
      }
      if (!h->vnet && partial_csum_hdr(p, len, vh)) {
        /* No vnet header to say NEEDS_CSUM with: complete the checksum here. */
        vnet_hdr cv;
        memset(&cv, 0, sizeof cv);
        cv.csum_start = le16(vh + 6);
        cv.csum_offset = le16(vh + 8);
        complete_csum(p, len, &cv);
        h->counters[TC_CSUM_PARTIAL_IN]++;
      }
      ssize_t r;
      do {
        if (h->vnet) {
          if (gro && oversize_tcp_hdr(p, len, h->mtu, vh)) h->counters[TC_GSO_WRITES]++;
          else if (partial_csum_hdr(p, len, vh)) h->counters[TC_CSUM_PARTIAL_IN]++;
          else memset(vh, 0, sizeof vh);
          struct iovec iov[2] = {{vh, VNET_HDR_LEN}, {p, (size_t)len}};
          r = writev(h->fd, iov, 2);
        } else {
          r = write(h->fd, p, (size_t)len);
        }
      } while (r < 0 && errno == EINTR);
      h->counters[TC_WRITES]++;
      if (r < 0) {
        h->counters[errno == EAGAIN || errno == EWOULDBLOCK ? TC_EAGAIN : TC_ERRORS]++;
      } else {
        accepted++;
        h->counters[TC_PACKETS_OUT]++;
      }
    }
    i += n;
  }
  napi_value res;
  napi_create_int32(env, accepted, &res);
  return res;
}

/* Test hook: coalesce(arena, offset, length, count) -> Buffer[] (the bytes each write would carry) */
static napi_value js_coalesce(napi_env env, napi_callback_info info) {
  size_t argc = 4;
  napi_value argv[4];
  NAPI_CALL(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  in_batch b;
  if (argc < 4) {
    napi_throw_type_error(env, "WEFT_NATIVE", "coalesce(arena, offset, length, count)");
    return NULL;
  }
  if (!parse_in_batch(env, argv, &b)) return NULL;
  struct iovec *iov = malloc(sizeof(struct iovec) * (MAX_COALESCE_SEGS + 2));
  if (!iov) return throw_errno(env, "coalesce", ENOMEM);
  napi_value arr;
  napi_create_array(env, &arr);
  uint32_t idx = 0;
  uint8_t vh[VNET_HDR_LEN];
  for (int i = 0; i < b.count;) {
    uint8_t *p;
    int len;
    if (!in_desc(&b, i, &p, &len)) {
      i++;
      continue;
    }
    int total = 0;
    run_info ri;
    int n = find_run(&b, i, 1, &total, &ri);
    int k;
    if (n > 1) {
      k = build_coalesced(&b, i, n, total, &ri, vh, iov);
    } else {
      memset(vh, 0, sizeof vh);
      iov[0].iov_base = vh;
      iov[0].iov_len = VNET_HDR_LEN;
      iov[1].iov_base = p;
      iov[1].iov_len = (size_t)len;
      k = 2;
    }
    size_t sz = 0;
    for (int j = 0; j < k; j++) sz += iov[j].iov_len;
    void *data;
    napi_value buf;
    if (napi_create_buffer(env, sz, &data, &buf) != napi_ok) {
      free(iov);
      return NULL;
    }
    uint8_t *d = data;
    for (int j = 0; j < k; j++) {
      memcpy(d, iov[j].iov_base, iov[j].iov_len);
      d += iov[j].iov_len;
    }
    napi_set_element(env, arr, idx++, buf);
    i += n;
  }
  free(iov);
  return arr;
}


/* ------------------------------------------------------------------ UDP */

static int ensure_msg_cap(weft_handle *h, size_t msgs, size_t iovs) {
  if (msgs > h->msg_cap) {
    struct mmsghdr *m = realloc(h->msgs, sizeof *m * msgs);
    if (!m) return 0;
    h->msgs = m;
    struct sockaddr_in *nm = realloc(h->names, sizeof *nm * msgs);
    if (!nm) return 0;
    h->names = nm;
    uint8_t *c = realloc(h->ctrl, CTRL_SPACE * msgs);
    if (!c) return 0;
    h->ctrl = c;
    h->msg_cap = msgs;
  }
  if (iovs > h->iov_cap) {
    struct iovec *v = realloc(h->msg_iov, sizeof *v * iovs);
    if (!v) return 0;
    h->msg_iov = v;
    h->iov_cap = iovs;
  }
  return 1;
}

static int set_buf(int fd, int force_opt, int opt, int bytes) {
  if (bytes <= 0) return 0;
  if (setsockopt(fd, SOL_SOCKET, force_opt, &bytes, sizeof bytes) == 0) return 0;
  return setsockopt(fd, SOL_SOCKET, opt, &bytes, sizeof bytes);
}

/* udpOpen(bindAddr, port, reusePort, rcvbuf, sndbuf, offloads) -> {handle, addr, port, gso, gro, rcvbuf, sndbuf} */
static napi_value js_udp_open(napi_env env, napi_callback_info info) {
  size_t argc = 6;
  napi_value argv[6];
  NAPI_CALL(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  uint32_t addr = 0;
  int32_t port = 0, rcvbuf = 0, sndbuf = 0;
  bool reuse = false, offl = true;
  if (argc < 6 || napi_get_value_uint32(env, argv[0], &addr) != napi_ok || !get_i32(env, argv[1], &port) ||
      napi_get_value_bool(env, argv[2], &reuse) != napi_ok || !get_i32(env, argv[3], &rcvbuf) ||
      !get_i32(env, argv[4], &sndbuf) || napi_get_value_bool(env, argv[5], &offl) != napi_ok) {
    napi_throw_type_error(env, "WEFT_NATIVE", "udpOpen(bindAddr, port, reusePort, rcvbuf, sndbuf, offloads)");
    return NULL;
  }
  if (port < 0 || port > 65535) {
    napi_throw_range_error(env, "WEFT_NATIVE", "port out of range");
    return NULL;
  }
  int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd < 0) return throw_errno(env, "socket", errno);
  int one = 1;
  if (reuse && setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one) < 0) {
    int e = errno;
    close(fd);
    return throw_errno(env, "SO_REUSEPORT", e);
  }
  set_buf(fd, SO_RCVBUFFORCE, SO_RCVBUF, rcvbuf);
  set_buf(fd, SO_SNDBUFFORCE, SO_SNDBUF, sndbuf);
  struct sockaddr_in sa;
  memset(&sa, 0, sizeof sa);
  sa.sin_family = AF_INET;
  sa.sin_port = htons((uint16_t)port);
  sa.sin_addr.s_addr = htonl(addr);
  if (bind(fd, (struct sockaddr *)&sa, sizeof sa) < 0) {
    int e = errno;
    close(fd);
    return throw_errno(env, "bind", e);
  }
  socklen_t sl = sizeof sa;
  getsockname(fd, (struct sockaddr *)&sa, &sl);
  int gro = 0, gso = 0;
  if (offl) {
    if (setsockopt(fd, SOL_UDP, UDP_GRO, &one, sizeof one) == 0) gro = 1;
    int v = 0;
    socklen_t vl = sizeof v;
    if (getsockopt(fd, SOL_UDP, UDP_SEGMENT, &v, &vl) == 0) gso = 1;
  }
  int rb = 0, sb = 0;
  socklen_t il = sizeof rb;
  getsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rb, &il);
  il = sizeof sb;
  getsockopt(fd, SOL_SOCKET, SO_SNDBUF, &sb, &il);
  weft_handle *h = new_handle(env, fd, KIND_UDP, "udpOpen");
  if (!h) return NULL;
  h->gso = gso;
  h->gro = gro;
  h->addr = ntohl(sa.sin_addr.s_addr);
  h->port = ntohs(sa.sin_port);
  h->rcvbuf = rb;
  h->sndbuf = sb;
  if (!ensure_msg_cap(h, 64, 256)) {
    close(fd);
    free_handle_memory(h);
    return throw_errno(env, "udpOpen", ENOMEM);
  }
  napi_value ext = wrap_handle(env, h);
  if (!ext) return NULL;
  napi_value res, v;
  NAPI_CALL(env, napi_create_object(env, &res));
  napi_set_named_property(env, res, "handle", ext);
  napi_create_uint32(env, h->addr, &v);
  napi_set_named_property(env, res, "addr", v);
  napi_create_int32(env, h->port, &v);
  napi_set_named_property(env, res, "port", v);
  napi_get_boolean(env, gso, &v);
  napi_set_named_property(env, res, "gso", v);
  napi_get_boolean(env, gro, &v);
  napi_set_named_property(env, res, "gro", v);
  napi_create_int32(env, rb, &v);
  napi_set_named_property(env, res, "rcvbuf", v);
  napi_create_int32(env, sb, &v);
  napi_set_named_property(env, res, "sndbuf", v);
  return res;
}

/*
 * udpAttachSteering(handle, program) -> undefined. Attaches a classic BPF program
 * (Buffer of struct sock_filter, 8 bytes each) to the handle's SO_REUSEPORT group with
 * SO_ATTACH_REUSEPORT_CBPF: the kernel runs it on each datagram (data starting at the UDP
 * payload) and delivers to the socket whose index in the group it returns; an index out of
 * range falls back to the kernel's own hash. The program is built in TypeScript
 * (src/conn/steering.ts); here it is only handed over.
 */
static napi_value js_udp_attach_steering(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  NAPI_CALL(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  weft_handle *h = argc >= 1 ? get_handle(env, argv[0], KIND_UDP) : NULL;
  if (!h) return NULL;
  uint8_t *prog = NULL;
  size_t len = 0;
  if (argc < 2 || !get_buffer(env, argv[1], &prog, &len) || len == 0 || len % sizeof(struct sock_filter) != 0 ||
      len / sizeof(struct sock_filter) > 4096) {
    napi_throw_type_error(env, "WEFT_NATIVE", "udpAttachSteering(handle, program: Buffer of 8-byte cBPF instructions)");
    return NULL;
  }
  struct sock_fprog fp;
  fp.len = (unsigned short)(len / sizeof(struct sock_filter));
  fp.filter = (struct sock_filter *)prog;
  if (setsockopt(h->fd, SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF, &fp, sizeof fp) < 0)
    return throw_errno(env, "SO_ATTACH_REUSEPORT_CBPF", errno);
  return NULL;
}

/* A device ioctl (SIOC*IF*) through a throwaway socket; -1 with errno as the ioctl left it. */
static int ifreq_ioctl(unsigned long req, struct ifreq *ifr) {
  int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (s < 0) return -1;
  int r = ioctl(s, req, ifr);
  int e = errno;
  close(s);
  errno = e;
  return r;
}

/*
 * tapOpen(name, mac?, multiQueue?) -> { handle, name, mac } : a TAP device for tunnel-GSO sends (see
 * TUN_F_UDP_TUNNEL_GSO above), with hardware address `mac` ("aa:bb:cc:dd:ee:ff") when given
 * (a restarted daemon's TAP then looks like the one before). Throws with the errno when the
 * kernel refuses the tunnel offload (EINVAL before 6.17), so the caller can fall back to
 * segmenting in userspace. multiQueue (IFF_MULTI_QUEUE): each forwarding thread opens its
 * own queue of the same device by name (only the first open sets the address).
 */
static napi_value js_tap_open(napi_env env, napi_callback_info info) {
  size_t argc = 3;
  napi_value argv[3];
  NAPI_CALL(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  char name[IFNAMSIZ + 1];
  size_t nlen = 0;
  bool multi = false;
  if (argc < 1 || napi_get_value_string_utf8(env, argv[0], name, sizeof name, &nlen) != napi_ok ||
      (argc >= 3 && napi_get_value_bool(env, argv[2], &multi) != napi_ok)) {
    napi_throw_type_error(env, "WEFT_NATIVE", "tapOpen(name, mac?, multiQueue?: boolean)");
    return NULL;
  }
  unsigned want[6];
  int set_mac = 0;
  napi_valuetype mt = napi_undefined;
  if (argc >= 2) napi_typeof(env, argv[1], &mt);
  if (mt == napi_string) {
    char ms[32];
    size_t mlen = 0;
    char tail;
    if (napi_get_value_string_utf8(env, argv[1], ms, sizeof ms, &mlen) != napi_ok ||
        sscanf(ms, "%2x:%2x:%2x:%2x:%2x:%2x%c", &want[0], &want[1], &want[2], &want[3], &want[4], &want[5],
               &tail) != 6 ||
        (want[0] & 1)) {
      napi_throw_range_error(env, "WEFT_NATIVE", "tapOpen: mac must be a unicast aa:bb:cc:dd:ee:ff");
      return NULL;
    }
    set_mac = 1;
  }
  if (nlen >= IFNAMSIZ) {
    napi_throw_range_error(env, "WEFT_NATIVE", "interface name longer than 15 bytes");
    return NULL;
  }
  struct ifreq ifr;
  const char *what = NULL;
  int fd = open_tun_fd(name, nlen, (short)(IFF_TAP | IFF_NO_PI | IFF_VNET_HDR | (multi ? IFF_MULTI_QUEUE : 0)), &ifr,
                       &what);
  if (fd < 0) return throw_errno(env, what, errno);
  int sz = TNL_VNET_LEN;
  what = "TUNSETVNETHDRSZ";
  int r = ioctl(fd, TUNSETVNETHDRSZ, &sz);
  if (r == 0) {
    what = "TUNSETOFFLOAD (UDP tunnel GSO)";
    r = ioctl(fd, TUNSETOFFLOAD, (unsigned long)(TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_UDP_TUNNEL_GSO));
  }
  uint8_t mac[6];
  if (r == 0 && set_mac) {
    what = "SIOCSIFHWADDR";
    struct ifreq w = ifr;
    w.ifr_hwaddr.sa_family = 1; /* ARPHRD_ETHER */
    for (int k = 0; k < 6; k++) w.ifr_hwaddr.sa_data[k] = (char)want[k];
    r = ifreq_ioctl(SIOCSIFHWADDR, &w);
  }
  if (r == 0) {
    what = "SIOCGIFHWADDR";
    r = ifreq_ioctl(SIOCGIFHWADDR, &ifr);
    if (r == 0) memcpy(mac, ifr.ifr_hwaddr.sa_data, 6);
  }
  if (r < 0) {
    int e = errno;
    close(fd);
    return throw_errno(env, what, e);
  }
  weft_handle *h = new_handle(env, fd, KIND_TAP, "tapOpen");
  if (!h) return NULL;
  memcpy(h->mac, mac, 6);
  napi_value ext = wrap_handle(env, h);
  if (!ext) return NULL;
  napi_value res, v;
  NAPI_CALL(env, napi_create_object(env, &res));
  napi_set_named_property(env, res, "handle", ext);
  napi_create_string_utf8(env, ifr.ifr_name, strnlen(ifr.ifr_name, IFNAMSIZ), &v);
  napi_set_named_property(env, res, "name", v);
  char macs[18];
  snprintf(macs, sizeof macs, "%02x:%02x:%02x:%02x:%02x:%02x", mac[0], mac[1], mac[2], mac[3], mac[4], mac[5]);
  napi_create_string_utf8(env, macs, NAPI_AUTO_LENGTH, &v);
  napi_set_named_property(env, res, "mac", v);
  return res;
}

/*
 * udpAttachTunnel(udpHandle, tapHandle | null): whole super-packets sent on this socket go
 * to the TAP as tunnel-GSO writes (the socket keeps its own duplicate of the TAP's fd, so
 * the TAP handle may be closed); null detaches. Without a TAP they are segmented here.
 */
static napi_value js_udp_attach_tunnel(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  NAPI_CALL(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  weft_handle *h = argc >= 1 ? get_handle(env, argv[0], KIND_UDP) : NULL;
  if (!h) return NULL;
  napi_valuetype t = napi_undefined;
  if (argc >= 2) napi_typeof(env, argv[1], &t);
  if (h->tap_fd >= 0) {
    close(h->tap_fd);
    h->tap_lost = 1;
  }
  h->tap_fd = -1;
  if (t == napi_null || t == napi_undefined) return NULL;
  weft_handle *tap = get_handle(env, argv[1], KIND_TAP);
  if (!tap) return NULL;
  if (tap->closed || h->closed) {
    napi_throw_error(env, "WEFT_NATIVE", "udpAttachTunnel: handle is closed");
    return NULL;
  }
  if (h->addr == 0) {
    napi_throw_error(env, "WEFT_NATIVE", "udpAttachTunnel: the socket must be bound to an address (the outer source)");
    return NULL;
  }
  int fd = fcntl(tap->fd, F_DUPFD_CLOEXEC, 0);
  if (fd < 0) return throw_errno(env, "udpAttachTunnel: dup", errno);
  h->tap_fd = fd;
  h->tap_lost = 0;
  memcpy(h->tap_mac, tap->mac, 6);
  return NULL;
}

static int64_t now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* The descriptors of a udpSend batch, for the checks a datagram must pass to join a run. */
typedef struct {
  const int32_t *off;
  const uint32_t *addr;
  const uint16_t *port;
  size_t alen;
} send_descs;

/*
 * Where the UDP GSO run of datagrams starting at i (lengths len[], up to n) ends, in one
 * pass: datagrams of len[i] bytes, the last one possibly shorter, at most UDP_GSO_MAX_SEGS
 * of them and UDP_GSO_MAX_BYTES in all; with `d`, also to the same destination as i and
 * inside the arena (without, every datagram qualifies: the segments of one super-packet).
 */
static int gso_run_end(const int32_t *len, int i, int n, const send_descs *d) {
  int j = i + 1;
  int total = len[i];
  while (j < n && j - i < UDP_GSO_MAX_SEGS && len[j] > 0 && len[j] <= len[i] && total + len[j] <= UDP_GSO_MAX_BYTES) {
    if (d && (d->addr[j] != d->addr[i] || d->port[j] != d->port[i] || d->off[j] < 0 ||
              (size_t)d->off[j] + (size_t)len[j] > d->alen))
      break;
    total += len[j];
    j++;
    if (len[j - 1] < len[i]) break;
  }
  return j;
}

/*
 * Message m of h->msgs: the datagrams in h->msg_iov[iov0, iov0 + n) to addr:port, one
 * UDP_SEGMENT message (segment size = the first datagram's length) when n > 1.
 */
static void put_msg(weft_handle *h, int m, int iov0, int n, uint32_t addr, uint16_t port) {
  struct mmsghdr *mh = &h->msgs[m];
  struct sockaddr_in *sa = &h->names[m];
  memset(sa, 0, sizeof *sa);
  sa->sin_family = AF_INET;
  sa->sin_port = htons(port);
  sa->sin_addr.s_addr = htonl(addr);
  memset(&mh->msg_hdr, 0, sizeof mh->msg_hdr);
  mh->msg_hdr.msg_name = sa;
  mh->msg_hdr.msg_namelen = sizeof *sa;
  mh->msg_hdr.msg_iov = &h->msg_iov[iov0];
  mh->msg_hdr.msg_iovlen = (size_t)n;
  if (n > 1) {
    uint8_t *c = h->ctrl + (size_t)m * CTRL_SPACE;
    memset(c, 0, CMSG_SPACE(sizeof(uint16_t)));
    mh->msg_hdr.msg_control = c;
    mh->msg_hdr.msg_controllen = CMSG_SPACE(sizeof(uint16_t));
    struct cmsghdr *cm = CMSG_FIRSTHDR(&mh->msg_hdr);
    cm->cmsg_level = SOL_UDP;
    cm->cmsg_type = UDP_SEGMENT;
    cm->cmsg_len = CMSG_LEN(sizeof(uint16_t));
    uint16_t seg = (uint16_t)h->msg_iov[iov0].iov_len;
    memcpy(CMSG_DATA(cm), &seg, sizeof seg);
    h->counters[UC_GSO_MESSAGES]++;
  }
  mh->msg_len = (unsigned)n; /* datagrams in this message, until sendmmsg overwrites it */
}

/* Sends messages [0, nmsg) built in h->msgs; returns datagrams sent. */
static int send_msgs(weft_handle *h, int nmsg) {
  int sent = 0, done = 0;
  int64_t deadline = -1;
  while (done < nmsg) {
    h->counters[UC_SEND_CALLS]++;
    /* Remember datagram counts: sendmmsg overwrites msg_len with bytes sent. */
    int r = sendmmsg(h->fd, h->msgs + done, (unsigned)(nmsg - done), 0);
    if (r > 0) {
      for (int k = done; k < done + r; k++) {
        int dg = (int)h->msgs[k].msg_hdr.msg_iovlen;
        sent += dg;
        h->counters[UC_DATAGRAMS_OUT] += dg;
      }
      h->counters[UC_MESSAGES_OUT] += r;
      done += r;
      continue;
    }
    if (r < 0 && errno == EINTR) continue;
    if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      h->counters[UC_EAGAIN]++;
      int64_t now = now_ms();
      if (deadline < 0) deadline = now + WEFT_SEND_WAIT_MS;
      if (now >= deadline) break;
      struct pollfd pfd = {h->fd, POLLOUT, 0};
      h->counters[UC_SEND_WAITS]++;
      poll(&pfd, 1, (int)(deadline - now));
      continue;
    }
    /* A hard error on the first remaining message: skip that message. A GSO message that
     * the route refuses (e.g. segment larger than the path MTU) is retried datagram by
     * datagram. */
    int err = errno;
    h->counters[UC_ERRORS]++;
    struct mmsghdr *m = &h->msgs[done];
    if (m->msg_hdr.msg_iovlen > 1 && m->msg_hdr.msg_control) {
      /* EIO: the egress device cannot checksum GSO datagrams; stop using UDP_SEGMENT. */
      if (err == EIO) h->gso = 0;
      for (size_t k = 0; k < m->msg_hdr.msg_iovlen; k++) {
        struct msghdr one;
        memset(&one, 0, sizeof one);
        one.msg_name = m->msg_hdr.msg_name;
        one.msg_namelen = m->msg_hdr.msg_namelen;
        one.msg_iov = &m->msg_hdr.msg_iov[k];
        one.msg_iovlen = 1;
        if (sendmsg(h->fd, &one, 0) >= 0) {
          sent++;
          h->counters[UC_DATAGRAMS_OUT]++;
        }
      }
    } else {
      h->counters[UC_DROPPED] += (double)m->msg_hdr.msg_iovlen;
    }
    done++;
  }
  return sent;
}

/* The jumbo meta of descriptor (off, len) when it is a whole super-packet from tunRead. */
static uint8_t *jumbo_of(uint8_t *arena, size_t alen, int32_t off, int32_t len, int32_t *pkt_at, vnet_hdr *v) {
  if (alen < JUMBO_REGION || off < 0 || len <= 0) return NULL;
  size_t base = alen - JUMBO_REGION;
  if ((size_t)off < base || (size_t)off + (size_t)len > alen) return NULL;
  uint8_t *m = arena + base + ((size_t)off - base) / JUMBO_SLOT * JUMBO_SLOT;
  uint32_t magic;
  memcpy(&magic, m, 4);
  memcpy(pkt_at, m + 4, 4);
  if (magic != JUMBO_MAGIC || *pkt_at < off || *pkt_at - off > JUMBO_HEAD || *pkt_at >= off + len) return NULL;
  memset(v, 0, sizeof *v);
  memcpy(&v->gso_size, m + 8, 2);
  v->gso_type = m[10];
  v->flags = VNET_F_NEEDS_CSUM;
  const uint8_t *p = arena + *pkt_at;
  v->csum_start = (uint16_t)((p[0] & 15) * 4);
  v->csum_offset = 16;
  return m;
}

/*
 * A whole super-packet as ordinary datagrams, segmented here: no tunnel-GSO TAP is attached
 * (counted as a fallback), or the peer does not take tunnel-GSO datagrams (`why` is then
 * UC_TUNNEL_PEER_SEGMENTED).
 */
static int send_segmented(weft_handle *h, uint8_t *arena, int32_t off, int32_t len, int32_t pkt_at,
                          const vnet_hdr *v, uint32_t addr, uint16_t port, int why) {
  int encap = pkt_at - off;
  const uint8_t *pkt = arena + pkt_at;
  int plen = len - encap;
  int hdrlen = 0;
  int segs = gso_segments(pkt, plen, v, &hdrlen);
  if (segs <= 0 || segs > SEG_MAX || encap >= SEG_SLOT / 2) return 0;
  if (!h->seg_arena && !(h->seg_arena = malloc(SEG_ARENA))) return 0;
  int32_t so[SEG_MAX], sl[SEG_MAX];
  out_batch b = {.arena = h->seg_arena, .arena_len = SEG_ARENA, .headroom = encap,
                 .slot_size = SEG_SLOT, .capacity = SEG_MAX, .offset = so, .length = sl, .count = 0};
  int n = segment_into(pkt, plen, v, hdrlen, &b);
  if (n <= 0 || !ensure_msg_cap(h, (size_t)n, (size_t)n)) return 0;
  h->counters[why]++;
  for (int k = 0; k < n; k++) {
    uint8_t *d = h->seg_arena + so[k] - encap;
    memcpy(d, arena + off, (size_t)encap);
    sl[k] += encap;
    h->msg_iov[k].iov_base = d;
    h->msg_iov[k].iov_len = (size_t)sl[k];
  }
  /* Equal-sized datagrams (all but the last) go out as UDP GSO messages, like any batch. */
  int nmsg = 0;
  for (int k = 0; k < n;) {
    int e = h->gso ? gso_run_end(sl, k, n, NULL) : k + 1;
    put_msg(h, nmsg++, k, e - k, addr, port);
    k = e;
  }
  return send_msgs(h, nmsg) == n ? 1 : 0;
}

/* One whole super-packet (its encapsulation header in front) as one tunnel-GSO TAP write. */
static int send_whole(weft_handle *h, uint8_t *arena, int32_t off, int32_t len, int32_t pkt_at,
                      const vnet_hdr *v, uint32_t addr, uint16_t port) {
  if (h->tap_fd < 0 || len + TNL_OUTER_LEN - 14 > 65535) {
    int why = h->tap_fd < 0 && !h->tap_lost ? UC_TUNNEL_OFF : UC_TUNNEL_FALLBACKS;
    return send_segmented(h, arena, off, len, pkt_at, v, addr, port, why);
  }
  uint8_t hb[TNL_VNET_LEN + TNL_OUTER_LEN];
  memset(hb, 0, TNL_VNET_LEN);
  int inner = TNL_OUTER_LEN + (pkt_at - off);
  const uint8_t *pkt = arena + pkt_at;
  int ihl = (pkt[0] & 15) * 4;
  int thl = (pkt[ihl + 12] >> 4) * 4;
  hb[0] = VNET_F_NEEDS_CSUM;
  hb[1] = (uint8_t)(v->gso_type | VNET_GSO_UDP_TUNNEL_IPV4);
  wle16(hb + 2, (uint16_t)(inner + ihl + thl));
  wle16(hb + 4, v->gso_size);
  wle16(hb + 6, (uint16_t)(inner + ihl));
  wle16(hb + 8, 16);
  wle16(hb + 20, 14 + 20);
  wle16(hb + 22, (uint16_t)inner);
  uint8_t *e = hb + TNL_VNET_LEN;
  memcpy(e, h->tap_mac, 6);
  static const uint8_t src_mac[6] = {0x02, 0x77, 0x65, 0x66, 0x74, 0x00};
  memcpy(e + 6, src_mac, 6);
  e[12] = 0x08;
  e[13] = 0x00;
  uint8_t *ip = e + 14;
  memset(ip, 0, 28);
  ip[0] = 0x45;
  wr16(ip + 2, (uint16_t)(28 + len));
  wr16(ip + 4, h->ip_id++);
  ip[8] = 64;
  ip[9] = 17;
  wr32(ip + 12, h->addr);
  wr32(ip + 16, addr);
  ip_fix_csum(ip, 20);
  uint8_t *udp = ip + 20;
  wr16(udp, (uint16_t)h->port);
  wr16(udp + 2, port);
  wr16(udp + 4, (uint16_t)(8 + len));
  struct iovec iov[2] = {{hb, sizeof hb}, {arena + off, (size_t)len}};
  for (;;) {
    ssize_t r = writev(h->tap_fd, iov, 2);
    if (r >= 0) {
      h->counters[UC_TUNNEL_WRITES]++;
      h->counters[UC_TUNNEL_BYTES] += (double)(len + TNL_OUTER_LEN);
      return 1;
    }
    if (errno == EINTR) continue;
    break;
  }
  /* The TAP refused (gone, down, or a kernel without tunnel GSO): stop using it. */
  h->counters[UC_TUNNEL_ERRORS]++;
  close(h->tap_fd);
  h->tap_fd = -1;
  h->tap_lost = 1;
  return send_segmented(h, arena, off, len, pkt_at, v, addr, port, UC_TUNNEL_FALLBACKS);
}

/*
 * udpSend(handle, arena, offset, length, addr, port, count) -> datagrams sent.
 * One sendmmsg per call (more only after EAGAIN waits or a partial send).
 */
static napi_value js_udp_send(napi_env env, napi_callback_info info) {
  size_t argc = 7;
  napi_value argv[7];
  NAPI_CALL(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  if (argc < 7) {
    napi_throw_type_error(env, "WEFT_NATIVE", "udpSend(handle, arena, offset, length, addr, port, count)");
    return NULL;
  }
  weft_handle *h = get_handle(env, argv[0], KIND_UDP);
  if (!h) return NULL;
  uint8_t *arena;
  size_t alen, n1, n2, n3, n4;
  void *po, *pl, *pa, *pp;
  int32_t count;
  if (!get_buffer(env, argv[1], &arena, &alen) || !get_typed(env, argv[2], napi_int32_array, &po, &n1) ||
      !get_typed(env, argv[3], napi_int32_array, &pl, &n2) || !get_typed(env, argv[4], napi_uint32_array, &pa, &n3) ||
      !get_typed(env, argv[5], napi_uint16_array, &pp, &n4) || !get_i32(env, argv[6], &count)) {
    napi_throw_type_error(env, "WEFT_NATIVE", "udpSend(handle, arena, offset:Int32Array, length:Int32Array, addr:Uint32Array, port:Uint16Array, count)");
    return NULL;
  }
  if (count < 0 || (size_t)count > n1 || (size_t)count > n2 || (size_t)count > n3 || (size_t)count > n4) {
    napi_throw_range_error(env, "WEFT_NATIVE", "count exceeds the descriptor arrays");
    return NULL;
  }
  if (h->closed) {
    napi_throw_error(env, "WEFT_NATIVE", "UDP handle is closed");
    return NULL;
  }
  const int32_t *off = po, *len = pl;
  const uint32_t *addr = pa;
  const uint16_t *port = pp;
  if (!ensure_msg_cap(h, (size_t)count + 1, (size_t)count + 1)) return throw_errno(env, "udpSend", ENOMEM);

  /* Build messages: runs of same destination and size (last may be shorter) -> one GSO message. */
  const send_descs descs = {.off = off, .addr = addr, .port = port, .alen = alen};
  int nmsg = 0, niov = 0;
  int i = 0, sent = 0;
  while (i < count) {
    if (off[i] < 0 || len[i] <= 0 || (size_t)off[i] + (size_t)len[i] > alen) {
      h->counters[UC_DROPPED]++;
      i++;
      continue;
    }
    int32_t pkt_at;
    vnet_hdr jv;
    uint8_t *meta = jumbo_of(arena, alen, off[i], len[i], &pkt_at, &jv);
    if (meta) {
      /* Keep the order: what was built so far goes first. */
      sent += send_msgs(h, nmsg);
      nmsg = niov = 0;
      sent += meta[JUMBO_META_WHOLE]
                  ? send_whole(h, arena, off[i], len[i], pkt_at, &jv, addr[i], port[i])
                  : send_segmented(h, arena, off[i], len[i], pkt_at, &jv, addr[i], port[i],
                                   UC_TUNNEL_PEER_SEGMENTED);
      memset(meta, 0, 4); /* the meta is used once */
      i++;
      continue;
    }
    int j = h->gso ? gso_run_end(len, i, count, &descs) : i + 1;
    for (int k = i; k < j; k++) {
      h->msg_iov[niov + k - i].iov_base = arena + off[k];
      h->msg_iov[niov + k - i].iov_len = (size_t)len[k];
    }
    put_msg(h, nmsg++, niov, j - i, addr[i], port[i]);
    niov += j - i;
    i = j;
  }

  sent += send_msgs(h, nmsg);
  napi_value res;
  napi_create_int32(env, sent, &res);
  return res;
}

/*
 * udpRecv(handle, arena, messageSize, capacity, offset, length, addr, port) -> descriptors.
 * One recvmmsg (MSG_DONTWAIT); each GRO message is split into datagrams without copying.
 */
static napi_value js_udp_recv(napi_env env, napi_callback_info info) {
  size_t argc = 8;
  napi_value argv[8];
  NAPI_CALL(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  if (argc < 8) {
    napi_throw_type_error(env, "WEFT_NATIVE", "udpRecv(handle, arena, messageSize, capacity, offset, length, addr, port)");
    return NULL;
  }
  weft_handle *h = get_handle(env, argv[0], KIND_UDP);
  if (!h) return NULL;
  uint8_t *arena;
  size_t alen, n1, n2, n3, n4;
  void *po, *pl, *pa, *pp;
  int32_t msize, cap;
  if (!get_buffer(env, argv[1], &arena, &alen) || !get_i32(env, argv[2], &msize) || !get_i32(env, argv[3], &cap) ||
      !get_typed(env, argv[4], napi_int32_array, &po, &n1) || !get_typed(env, argv[5], napi_int32_array, &pl, &n2) ||
      !get_typed(env, argv[6], napi_uint32_array, &pa, &n3) || !get_typed(env, argv[7], napi_uint16_array, &pp, &n4)) {
    napi_throw_type_error(env, "WEFT_NATIVE", "udpRecv(handle, arena, messageSize, capacity, offset:Int32Array, length:Int32Array, addr:Uint32Array, port:Uint16Array)");
    return NULL;
  }
  if (msize <= 0 || cap < 0 || (size_t)cap > n1 || (size_t)cap > n2 || (size_t)cap > n3 || (size_t)cap > n4) {
    napi_throw_range_error(env, "WEFT_NATIVE", "receive batch layout is invalid");
    return NULL;
  }
  if (h->closed) {
    napi_throw_error(env, "WEFT_NATIVE", "UDP handle is closed");
    return NULL;
  }
  int32_t *off = po, *len = pl;
  uint32_t *addr = pa;
  uint16_t *port = pp;
  size_t nbuf = alen / (size_t)msize;
  /* Each message may hold up to 64 GRO segments; keep room for all of them. */
  size_t vlen = h->gro ? (size_t)cap / UDP_GSO_MAX_SEGS : (size_t)cap;
  if (vlen > nbuf) vlen = nbuf;
  if (vlen > 1024) vlen = 1024;
  int count = 0;
  if (vlen == 0) goto out;
  if (!ensure_msg_cap(h, vlen, vlen)) return throw_errno(env, "udpRecv", ENOMEM);
  for (size_t k = 0; k < vlen; k++) {
    struct mmsghdr *m = &h->msgs[k];
    memset(&m->msg_hdr, 0, sizeof m->msg_hdr);
    h->msg_iov[k].iov_base = arena + k * (size_t)msize;
    h->msg_iov[k].iov_len = (size_t)msize;
    m->msg_hdr.msg_iov = &h->msg_iov[k];
    m->msg_hdr.msg_iovlen = 1;
    m->msg_hdr.msg_name = &h->names[k];
    m->msg_hdr.msg_namelen = sizeof(struct sockaddr_in);
    m->msg_hdr.msg_control = h->ctrl + k * CTRL_SPACE;
    m->msg_hdr.msg_controllen = CTRL_SPACE;
    m->msg_len = 0;
  }
  h->counters[UC_RECV_CALLS]++;
  int r;
  do {
    r = recvmmsg(h->fd, h->msgs, (unsigned)vlen, MSG_DONTWAIT, NULL);
  } while (r < 0 && errno == EINTR);
  if (r < 0) {
    if (errno == EAGAIN || errno == EWOULDBLOCK)
      h->counters[UC_EAGAIN]++;
    else
      h->counters[UC_ERRORS]++;
    goto out;
  }
  for (int k = 0; k < r; k++) {
    struct mmsghdr *m = &h->msgs[k];
    int total = (int)m->msg_len;
    h->counters[UC_MESSAGES_IN]++;
    if (m->msg_hdr.msg_flags & MSG_TRUNC) {
      h->counters[UC_TRUNCATED]++;
      continue;
    }
    int seg = total;
    for (struct cmsghdr *cm = CMSG_FIRSTHDR(&m->msg_hdr); cm; cm = CMSG_NXTHDR(&m->msg_hdr, cm)) {
      if (cm->cmsg_level == SOL_UDP && cm->cmsg_type == UDP_GRO) {
        int g;
        memcpy(&g, CMSG_DATA(cm), sizeof g);
        if (g > 0) seg = g;
      }
    }
    if (seg < total) h->counters[UC_GRO_MESSAGES]++;
    struct sockaddr_in *sa = &h->names[k];
    uint32_t a = ntohl(sa->sin_addr.s_addr);
    uint16_t p = ntohs(sa->sin_port);
    int base = (int)((size_t)k * (size_t)msize);
    if (total == 0) {
      /* An empty datagram: still one descriptor would have length 0; skip it. */
      continue;
    }
    for (int o = 0; o < total; o += seg) {
      if (count >= cap) {
        h->counters[UC_DROPPED]++;
        continue;
      }
      off[count] = base + o;
      len[count] = total - o < seg ? total - o : seg;
      addr[count] = a;
      port[count] = p;
      count++;
      h->counters[UC_DATAGRAMS_IN]++;
    }
  }
out:;
  napi_value res;
  napi_create_int32(env, count, &res);
  return res;
}

/* ------------------------------------------------------------------ netlink */

/*
 * netlinkRequest(request, netnsPath?): sends one rtnetlink request (built and parsed by
 * src/kernel/netlink.ts) and returns every byte of the answer up to and including the
 * NLMSG_DONE or NLMSG_ERROR that ends it. Reads only: weftd's periodic device checks use it
 * instead of starting `ip` processes. With netnsPath the socket is created inside that
 * namespace (the calling thread enters it for the socket() call only and returns at once;
 * a netlink socket stays bound to the namespace it was created in). Blocking, with a 5 s
 * receive timeout: the kernel answers a request in its own namespace without waiting.
 */
#define NL_RECV_BYTES 65536

static int nl_socket_in(const char *nspath, int *err) {
  if (!nspath) {
    int fd = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_ROUTE);
    if (fd < 0) *err = errno;
    return fd;
  }
  int self = open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC);
  if (self < 0) {
    *err = errno;
    return -1;
  }
  int target = open(nspath, O_RDONLY | O_CLOEXEC);
  if (target < 0) {
    *err = errno;
    close(self);
    return -1;
  }
  int fd = -1;
  if (setns(target, CLONE_NEWNET) < 0) {
    *err = errno;
  } else {
    fd = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_ROUTE);
    if (fd < 0) *err = errno;
    if (setns(self, CLONE_NEWNET) < 0) {
      /* The event loop's thread would go on in the wrong namespace: never continue. */
      fprintf(stderr, "weft_io: cannot return to the original network namespace: %s\n",
              strerror(errno));
      abort();
    }
  }
  close(target);
  close(self);
  return fd;
}

static napi_value js_netlink_request(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  NAPI_CALL(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  uint8_t *req;
  size_t req_len;
  if (argc < 1 || !get_buffer(env, argv[0], &req, &req_len) || req_len < sizeof(struct nlmsghdr)) {
    napi_throw_type_error(env, "WEFT_NATIVE", "netlinkRequest(request: Buffer, netnsPath?: string)");
    return NULL;
  }
  char nspath[512];
  const char *ns = NULL;
  if (argc > 1) {
    napi_valuetype t;
    NAPI_CALL(env, napi_typeof(env, argv[1], &t));
    if (t == napi_string) {
      size_t n;
      if (napi_get_value_string_utf8(env, argv[1], nspath, sizeof nspath, &n) != napi_ok ||
          n >= sizeof nspath - 1) {
        napi_throw_type_error(env, "WEFT_NATIVE", "netlinkRequest: bad netnsPath");
        return NULL;
      }
      ns = nspath;
    }
  }
  uint32_t seq;
  memcpy(&seq, req + offsetof(struct nlmsghdr, nlmsg_seq), sizeof seq);
  int err = 0;
  int fd = nl_socket_in(ns, &err);
  if (fd < 0) return throw_errno(env, "netlink socket", err);
  struct timeval tv = {.tv_sec = 5, .tv_usec = 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  struct sockaddr_nl kernel = {.nl_family = AF_NETLINK};
  ssize_t sent;
  do {
    sent = sendto(fd, req, req_len, 0, (struct sockaddr *)&kernel, sizeof kernel);
  } while (sent < 0 && errno == EINTR);
  if (sent < 0) {
    err = errno;
    close(fd);
    return throw_errno(env, "netlink send", err);
  }
  uint8_t *chunk = malloc(NL_RECV_BYTES);
  if (!chunk) {
    close(fd);
    return throw_errno(env, "netlink receive", ENOMEM);
  }
  uint8_t *out = NULL;
  size_t out_len = 0;
  const char *what = NULL;
  int done = 0;
  while (!done) {
    struct sockaddr_nl from;
    struct iovec iov = {.iov_base = chunk, .iov_len = NL_RECV_BYTES};
    struct msghdr mh = {.msg_name = &from, .msg_namelen = sizeof from, .msg_iov = &iov, .msg_iovlen = 1};
    ssize_t n = recvmsg(fd, &mh, 0);
    if (n < 0) {
      if (errno == EINTR) continue;
      err = errno;
      what = "netlink receive";
      break;
    }
    if (mh.msg_flags & MSG_TRUNC) {
      err = EMSGSIZE;
      what = "netlink receive (truncated)";
      break;
    }
    if (from.nl_pid != 0) continue; /* not from the kernel */
    /* Stop after this request's DONE or ERROR (the caller drops messages of other requests). */
    int rem = (int)n;
    for (struct nlmsghdr *h = (struct nlmsghdr *)chunk; NLMSG_OK(h, rem); h = NLMSG_NEXT(h, rem)) {
      if (h->nlmsg_seq == seq && (h->nlmsg_type == NLMSG_DONE || h->nlmsg_type == NLMSG_ERROR)) done = 1;
    }
    uint8_t *grown = realloc(out, out_len + (size_t)n);
    if (!grown) {
      err = ENOMEM;
      what = "netlink receive";
      break;
    }
    out = grown;
    memcpy(out + out_len, chunk, (size_t)n);
    out_len += (size_t)n;
  }
  free(chunk);
  close(fd);
  if (what) {
    free(out);
    return throw_errno(env, what, err);
  }
  napi_value res;
  void *unused;
  napi_status st = napi_create_buffer_copy(env, out_len, out ? (const void *)out : (const void *)"", &unused, &res);
  free(out);
  NAPI_CALL(env, st);
  return res;
}

/*
 * netlinkSubscribe(groups) -> handle: a non-blocking rtnetlink socket in the current
 * namespace that joins the RTMGRP_* multicast groups in `groups` (links, IPv4 addresses,
 * IPv4 routes...). Readable through startReading when the kernel announces a change;
 * netlinkRecv reads the notifications (src/kernel/monitor.ts decodes them).
 */
static napi_value js_netlink_subscribe(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  NAPI_CALL(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  uint32_t groups;
  if (argc < 1 || napi_get_value_uint32(env, argv[0], &groups) != napi_ok || groups == 0) {
    napi_throw_type_error(env, "WEFT_NATIVE", "netlinkSubscribe(groups: number > 0)");
    return NULL;
  }
  int fd = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC | SOCK_NONBLOCK, NETLINK_ROUTE);
  if (fd < 0) return throw_errno(env, "netlink socket", errno);
  struct sockaddr_nl sa = {.nl_family = AF_NETLINK, .nl_groups = groups};
  if (bind(fd, (struct sockaddr *)&sa, sizeof sa) < 0) {
    int e = errno;
    close(fd);
    return throw_errno(env, "netlink bind", e);
  }
  weft_handle *h = new_handle(env, fd, KIND_NLMON, "netlinkSubscribe");
  if (!h) return NULL;
  return wrap_handle(env, h);
}

/*
 * netlinkRecv(handle, buffer) -> the length of the next notification datagram, copied into
 * `buffer` (a length above buffer.length means it did not fit and was cut: the caller
 * cannot tell what it said); 0 when none is waiting; -1 when the kernel reported that some
 * were lost (the receive buffer overran: ENOBUFS).
 */
static napi_value js_netlink_recv(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  NAPI_CALL(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  weft_handle *h = argc >= 1 ? get_handle(env, argv[0], KIND_NLMON) : NULL;
  if (!h) return NULL;
  uint8_t *buf;
  size_t cap;
  if (argc < 2 || !get_buffer(env, argv[1], &buf, &cap)) {
    napi_throw_type_error(env, "WEFT_NATIVE", "netlinkRecv(handle, buffer: Buffer)");
    return NULL;
  }
  if (h->closed) {
    napi_throw_error(env, "WEFT_NATIVE", "handle is closed");
    return NULL;
  }
  ssize_t n;
  do {
    n = recv(h->fd, buf, cap, MSG_DONTWAIT | MSG_TRUNC);
  } while (n < 0 && errno == EINTR);
  int32_t r = n > 0 ? (int32_t)(n > INT32_MAX ? INT32_MAX : n) : (n < 0 && errno == ENOBUFS ? -1 : 0);
  napi_value res;
  NAPI_CALL(env, napi_create_int32(env, r, &res));
  return res;
}

/* ------------------------------------------------------------------ module */

NAPI_MODULE_INIT() {
  napi_property_descriptor props[] = {
      {"tunOpen", NULL, js_tun_open, NULL, NULL, NULL, napi_default, NULL},
      {"tunRead", NULL, js_tun_read, NULL, NULL, NULL, napi_default, NULL},
      {"tunWrite", NULL, js_tun_write, NULL, NULL, NULL, napi_default, NULL},
      {"udpOpen", NULL, js_udp_open, NULL, NULL, NULL, napi_default, NULL},
      {"udpSend", NULL, js_udp_send, NULL, NULL, NULL, napi_default, NULL},
      {"udpRecv", NULL, js_udp_recv, NULL, NULL, NULL, napi_default, NULL},
      {"udpAttachSteering", NULL, js_udp_attach_steering, NULL, NULL, NULL, napi_default, NULL},
      {"tapOpen", NULL, js_tap_open, NULL, NULL, NULL, napi_default, NULL},
      {"udpAttachTunnel", NULL, js_udp_attach_tunnel, NULL, NULL, NULL, napi_default, NULL},
      {"busyPoll", NULL, js_busy_poll, NULL, NULL, NULL, napi_default, NULL},
      {"startReading", NULL, js_start, NULL, NULL, NULL, napi_default, NULL},
      {"stopReading", NULL, js_stop, NULL, NULL, NULL, napi_default, NULL},
      {"close", NULL, js_close, NULL, NULL, NULL, napi_default, NULL},
      {"stats", NULL, js_stats, NULL, NULL, NULL, napi_default, NULL},
      {"segment", NULL, js_segment, NULL, NULL, NULL, napi_default, NULL},
      {"coalesce", NULL, js_coalesce, NULL, NULL, NULL, napi_default, NULL},
      {"netlinkRequest", NULL, js_netlink_request, NULL, NULL, NULL, napi_default, NULL},
      {"netlinkSubscribe", NULL, js_netlink_subscribe, NULL, NULL, NULL, napi_default, NULL},
      {"netlinkRecv", NULL, js_netlink_recv, NULL, NULL, NULL, napi_default, NULL},
  };
  napi_define_properties(env, exports, sizeof props / sizeof props[0], props);
  /* The jumbo region a TUN read batch reserves (PacketBatch.forTunRead must match it). */
  napi_value jr;
  napi_create_int32(env, JUMBO_REGION, &jr);
  napi_set_named_property(env, exports, "jumboRegionBytes", jr);
  return exports;
}
