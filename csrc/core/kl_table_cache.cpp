// The CPU drivers' float Band-KL tables: built from exact float64 solves on the kernel variant's vectorised
// loop (KernelTable::kl_table_exact), checked, and cached per delta.
#include "kl_table_cache.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <mutex>

#include "bandpo/kl_table_build.h"
#include "cpu_dispatch.h"
#include "thread_pool.h"

namespace bandpo {
namespace detail {

KlTableMode kl_table_mode() {
  static const KlTableMode mode = [] {
    const char* v = std::getenv("BANDPO_KL_TABLE");
    if (v && std::strcmp(v, "0") == 0) return KlTableMode::off;
    if (v && std::strcmp(v, "refuse") == 0) return KlTableMode::refuse;
    return KlTableMode::on;
  }();
  return mode;
}

namespace {

std::atomic<int64_t> builds{0};

}  // namespace

void count_kl_table_build() { builds.fetch_add(1, std::memory_order_relaxed); }
int64_t kl_table_builds() { return builds.load(std::memory_order_relaxed); }

namespace {

// Builds the table for delta, uncached; its max_error says whether it may be used (kl_table_for decides).
std::shared_ptr<const KlTableData> build_kl_table(double delta, const ParallelFor& parallel_for) {
  count_kl_table_build();
  auto table = std::make_shared<KlTableData>();
  const KlTableLayout l = kl_table_layout(delta);
  table->layout = l;
  table->coeffs.assign(static_cast<size_t>(l.size()) * kKlTableCoeffs, 0.0f);
  // Exact values at every tabulated interval's nodes and check points, in chunks of intervals.
  const int64_t n_intervals = l.size() - 2;
  constexpr int64_t kChunk = 64;
  const int64_t n_chunks = (n_intervals + kChunk - 1) / kChunk;
  std::vector<double> chunk_error(static_cast<size_t>(n_chunks), 0.0);
  const KernelTable& k = cpu_kernels();
  run_parallel(parallel_for, n_chunks, [&](int64_t b, int64_t e) {
    double lp[kChunk * kKlTablePointsPerInterval];
    KlTableValues values[kChunk * kKlTablePointsPerInterval];
    for (int64_t chunk = b; chunk < e; ++chunk) {
      const int64_t first = 1 + chunk * kChunk;
      const int64_t count = std::min(kChunk, n_intervals + 1 - first);
      for (int64_t i = 0; i < count; ++i)
        for (int j = 0; j < kKlTablePointsPerInterval; ++j)
          lp[i * kKlTablePointsPerInterval + j] = kl_table_point_logp(l, static_cast<int32_t>(first + i), j);
      k.kl_table_exact(lp, count * kKlTablePointsPerInterval, delta, values);
      double worst = 0.0;
      for (int64_t i = 0; i < count; ++i) {
        float c[kKlTableCoeffs];
        const int32_t index = static_cast<int32_t>(first + i);
        kl_table_fit(l, index, &values[i * kKlTablePointsPerInterval], c);
        worst = std::max(worst, kl_table_interval_error(l, index, &values[i * kKlTablePointsPerInterval], c));
        kl_table_store(l, index, c, table->coeffs.data());
      }
      chunk_error[static_cast<size_t>(chunk)] = worst;
    }
  });
  double worst = 0.0;
  for (double e : chunk_error) worst = std::max(worst, e);
  for (int32_t index : {0, l.size() - 1}) {
    float c[kKlTableCoeffs];
    kl_table_fill_limit(l, index, delta, c);
    worst = std::max(worst, kl_table_limit_error(l, index, c, kl_table_exact(kl_table_limit_logp(l, index), delta)));
    kl_table_store(l, index, c, table->coeffs.data());
  }
  // NaN (a solve gone wrong) must not pass the check.
  table->max_error = worst == worst ? worst : INFINITY;
  return table;
}

}  // namespace

std::shared_ptr<const KlTableData> kl_table_for(double delta, const ParallelFor& parallel_for) {
  if (kl_table_mode() == KlTableMode::off) return nullptr;
  struct Entry {
    double delta;
    std::shared_ptr<const KlTableData> table;  // null: built and refused
  };
  static std::mutex mutex;
  static std::vector<Entry> cache;  // most recently used last
  std::lock_guard<std::mutex> lock(mutex);
  for (size_t i = 0; i < cache.size(); ++i) {
    if (cache[i].delta == delta) {
      Entry hit = cache[i];
      cache.erase(cache.begin() + static_cast<std::ptrdiff_t>(i));
      cache.push_back(hit);
      return hit.table;
    }
  }
  std::shared_ptr<const KlTableData> table = build_kl_table(delta, parallel_for);
  if (!(table->max_error <= kKlTableMaxError) || kl_table_mode() == KlTableMode::refuse) table = nullptr;
  if (cache.size() >= static_cast<size_t>(kKlTableCacheSize)) cache.erase(cache.begin());
  cache.push_back(Entry{delta, table});
  return table;
}

KlTable kl_table_view(const KlTableData* data) {
  if (data == nullptr) return KlTable{nullptr, KlTableLayout{}};
  return KlTable{data->coeffs.data(), data->layout};
}

}  // namespace detail
}  // namespace bandpo
