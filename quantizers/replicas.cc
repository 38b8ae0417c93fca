// The process's active replicas.
#include "quantizers/replicas.h"

#include <atomic>

namespace qsearch::quantizers {
namespace {
std::atomic<Replicas*> g_active{nullptr};
}  // namespace

Replicas* ActiveReplicas() { return g_active.load(); }

ScopedReplicas::ScopedReplicas(Replicas* r) : previous_(g_active.exchange(r)) {}
ScopedReplicas::~ScopedReplicas() { g_active.store(previous_); }

}  // namespace qsearch::quantizers
