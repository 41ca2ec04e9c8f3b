// A small C API over libtorch's c10d: one Gloo process group (CPU tensors) joined through a
// TCPStore, and the collectives tensor parallelism needs: all-reduce (sum, in place),
// broadcast from rank 0 (tensors, and bytes), all-gather along a dimension, barrier.
//
// libtorch's wheel ships ProcessGroupGloo inside libtorch_cpu but not gloo's own headers,
// which ProcessGroupGloo.hpp includes; build.rs compiles this file with SLUICE_HAVE_GLOO
// when scripts/setup.sh has put them in place. Without them every entry point answers
// that this build has no Gloo.

#include <ATen/ATen.h>

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "entry.h"

#ifdef SLUICE_HAVE_GLOO
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#endif

namespace {

#ifdef SLUICE_HAVE_GLOO
struct Group {
  c10::intrusive_ptr<c10d::Store> store;
  c10::intrusive_ptr<c10d::ProcessGroupGloo> pg;
  std::chrono::milliseconds timeout;
};

Group* group_of(void* g) {
  TORCH_CHECK(g != nullptr, "no process group");
  return static_cast<Group*>(g);
}

std::chrono::milliseconds op_timeout(Group* g, int64_t timeout_ms) {
  return timeout_ms > 0 ? std::chrono::milliseconds(timeout_ms) : g->timeout;
}
#else
[[noreturn]] void no_gloo() {
  TORCH_CHECK(false,
              "this build has no Gloo (tensor parallelism needs gloo's headers at build time: "
              "run scripts/setup.sh, then build again)");
}
#endif

}  // namespace

extern "C" {

// 1 when this build can make process groups.
int sluice_dist_available() {
#ifdef SLUICE_HAVE_GLOO
  return 1;
#else
  return 0;
#endif
}

// The rendezvous store of a group of `world` ranks: rank 0 serves it at master_host:port
// (port 0: a free one, which `*port_out` then says), the others connect to it.
const char* sluice_dist_store(const char* master_host, int port, int rank, int world, int64_t timeout_ms,
                              void** out, int* port_out) {
  return sluice::guarded([&] {
#ifdef SLUICE_HAVE_GLOO
    TORCH_CHECK(world >= 1 && rank >= 0 && rank < world, "rank ", rank, " is not in a group of ", world);
    TORCH_CHECK(port >= 0 && port < 65536 && (port > 0 || rank == 0), "port ", port, " is out of range");
    c10d::TCPStoreOptions so;
    so.port = static_cast<std::uint16_t>(port);
    so.isServer = rank == 0;
    so.numWorkers = world;
    so.waitWorkers = false;
    so.timeout = std::chrono::milliseconds(timeout_ms);
    auto store = c10::make_intrusive<c10d::TCPStore>(std::string(master_host), so);
    *port_out = store->getPort();
    *out = new c10::intrusive_ptr<c10d::Store>(store);
#else
    (void)master_host, (void)port, (void)rank, (void)world, (void)timeout_ms, (void)port_out;
    *out = nullptr;
    no_gloo();
#endif
  });
}

void sluice_dist_store_free(void* store) {
#ifdef SLUICE_HAVE_GLOO
  delete static_cast<c10::intrusive_ptr<c10d::Store>*>(store);
#else
  (void)store;
#endif
}

// Joins the group through `store_handle` (from sluice_dist_store): returns once every rank
// has. The transport binds to `bind_host` (an address of this machine), or to the
// interface `ifname`, or, both empty, to the address this machine's hostname resolves to.
// `timeout_ms` bounds the rendezvous and every collective that is not given its own.
const char* sluice_dist_init(void* store_handle, int rank, int world, int64_t timeout_ms, const char* bind_host,
                             const char* ifname, void** out) {
  return sluice::guarded([&] {
#ifdef SLUICE_HAVE_GLOO
    TORCH_CHECK(store_handle != nullptr, "no store");
    auto timeout = std::chrono::milliseconds(timeout_ms);
    auto store = *static_cast<c10::intrusive_ptr<c10d::Store>*>(store_handle);
    auto opts = c10d::ProcessGroupGloo::Options::create(timeout);
    std::string bind(bind_host ? bind_host : ""), iface(ifname ? ifname : "");
    if (!iface.empty()) {
      opts->devices.push_back(c10d::ProcessGroupGloo::createDeviceForInterface(iface));
    } else if (!bind.empty()) {
      opts->devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname(bind));
    } else {
      opts->devices.push_back(c10d::ProcessGroupGloo::createDefaultDevice());
    }
    // One thread runs the collectives: the callers wait on each one in turn.
    opts->threads = 1;
    auto pg = c10::make_intrusive<c10d::ProcessGroupGloo>(store, rank, world, opts);
    *out = new Group{store, pg, timeout};
#else
    (void)store_handle, (void)rank, (void)world, (void)timeout_ms, (void)bind_host, (void)ifname;
    *out = nullptr;
    no_gloo();
#endif
  });
}

// Sums `t` (contiguous, CPU) over the ranks, in place on every rank.
const char* sluice_dist_all_reduce(void* g, void* t) {
  return sluice::guarded([&] {
#ifdef SLUICE_HAVE_GLOO
    auto* grp = group_of(g);
    std::vector<at::Tensor> ts{*static_cast<at::Tensor*>(t)};
    c10d::AllreduceOptions o;
    o.reduceOp = c10d::ReduceOp::SUM;
    o.timeout = grp->timeout;
    grp->pg->allreduce(ts, o)->wait();
#else
    (void)g, (void)t;
    no_gloo();
#endif
  });
}

// Rank 0's `t` into every other rank's `t` (same shape and dtype). `timeout_ms` > 0 takes
// the place of the group's timeout (a follower waits long for its next command).
const char* sluice_dist_broadcast(void* g, void* t, int64_t timeout_ms) {
  return sluice::guarded([&] {
#ifdef SLUICE_HAVE_GLOO
    auto* grp = group_of(g);
    std::vector<at::Tensor> ts{*static_cast<at::Tensor*>(t)};
    c10d::BroadcastOptions o;
    o.rootRank = 0;
    o.timeout = op_timeout(grp, timeout_ms);
    grp->pg->broadcast(ts, o)->wait();
#else
    (void)g, (void)t, (void)timeout_ms;
    no_gloo();
#endif
  });
}

// Rank 0's `len` bytes at `data` into every other rank's buffer of the same length.
const char* sluice_dist_broadcast_bytes(void* g, uint8_t* data, int64_t len, int64_t timeout_ms) {
  return sluice::guarded([&] {
#ifdef SLUICE_HAVE_GLOO
    auto* grp = group_of(g);
    TORCH_CHECK(len >= 0, "negative length");
    if (len == 0) return;
    std::vector<at::Tensor> ts{at::from_blob(data, {len}, at::TensorOptions().dtype(at::kByte))};
    c10d::BroadcastOptions o;
    o.rootRank = 0;
    o.timeout = op_timeout(grp, timeout_ms);
    grp->pg->broadcast(ts, o)->wait();
#else
    (void)g, (void)data, (void)len, (void)timeout_ms;
    no_gloo();
#endif
  });
}

// Every rank's `in` (one shape on all ranks), joined along `dim` in rank order, into `out`
// (a new tensor on every rank).
const char* sluice_dist_all_gather(void* g, void* out, void* in, int64_t dim) {
  return sluice::guarded([&] {
#ifdef SLUICE_HAVE_GLOO
    auto* grp = group_of(g);
    auto x = static_cast<at::Tensor*>(in)->contiguous();
    std::vector<at::Tensor> parts;
    for (int i = 0; i < grp->pg->getSize(); ++i) parts.push_back(at::empty_like(x));
    std::vector<std::vector<at::Tensor>> outs{parts};
    std::vector<at::Tensor> ins{x};
    c10d::AllgatherOptions o;
    o.timeout = grp->timeout;
    grp->pg->allgather(outs, ins, o)->wait();
    *static_cast<at::Tensor*>(out) = at::cat(outs[0], dim);
#else
    (void)g, (void)out, (void)in, (void)dim;
    no_gloo();
#endif
  });
}

const char* sluice_dist_barrier(void* g) {
  return sluice::guarded([&] {
#ifdef SLUICE_HAVE_GLOO
    auto* grp = group_of(g);
    c10d::BarrierOptions o;
    o.timeout = grp->timeout;
    grp->pg->barrier(o)->wait();
#else
    (void)g;
    no_gloo();
#endif
  });
}

void sluice_dist_destroy(void* g) {
#ifdef SLUICE_HAVE_GLOO
  delete static_cast<Group*>(g);
#else
  (void)g;
#endif
}

}  // extern "C"
