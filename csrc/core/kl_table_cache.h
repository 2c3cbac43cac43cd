// Internal: the float Band-KL tables (kl_table.h) of the CPU drivers, built on first use per delta and kept.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "bandpo/cpu.h"
#include "bandpo/kl_table.h"

namespace bandpo {
namespace detail {

struct KlTableData {
  KlTableLayout layout;
  std::vector<float> coeffs;  // layout.size() * kKlTableCoeffs
  double max_error;           // the builder's check (kl_table_build.h)
};

// The table for delta, or null: where its check finds an error above kKlTableMaxError (the call then
// solves exactly), or where BANDPO_KL_TABLE=0 asks to always solve. Built once per delta (on parallel_for,
// deterministically: the same bits for any thread count) and kept for the last kKlTableCacheSize deltas,
// so that a training run with a fixed delta builds it once. Thread-safe.
std::shared_ptr<const KlTableData> kl_table_for(double delta, const ParallelFor& parallel_for);

// What the environment variable BANDPO_KL_TABLE asks for (read once): unset (or any other value) on; "0" off,
// every call solves exactly; "refuse": tables are built and checked, then refused as if their check had
// failed, so that the tests reach the fallback (on the CPU and on the device) that no valid delta triggers.
enum class KlTableMode { on, off, refuse };
KlTableMode kl_table_mode();

// The view the kernels take: the table, or none when `data` is null or the call does not read one (only
// "kl" with a float compute type does; float64 always solves).
KlTable kl_table_view(const KlTableData* data);

constexpr int kKlTableCacheSize = 4;

// Tables built in this process, on the CPU and (enqueued) on every device: what the caches save is countable
// (bandpo_kl_table_builds() in the C ABI; the tests call twice and count one build).
void count_kl_table_build();
int64_t kl_table_builds();

}  // namespace detail
}  // namespace bandpo
