// CPU driver: validation, the fixed item partition, threads, deterministic reduction, aggregation.
#include "bandpo/cpu.h"
#include "bandpo/version.h"

#include <algorithm>
#include <cstdlib>
#include <string>
#include <atomic>
#include <condition_variable>
#include <cmath>
#include <exception>
#include <mutex>
#include <sstream>
#include <stdexcept>
#include <thread>
#include <vector>

#include "checks.h"
#include "cpu_kernels.h"

#if defined(__unix__) || defined(__APPLE__)
#include <unistd.h>
#define BANDPO_HAVE_FORK 1
#endif

namespace bandpo {
namespace {

using detail::KernelTable;
using detail::SegmentSums;

// The best kernels this CPU runs, unless BANDPO_CPU_ISA (baseline, avx2, avx512) asks for another one (to
// test every variant on one machine); a variant the CPU lacks is never taken.
const KernelTable& kernels() {
  static const KernelTable& table = []() -> const KernelTable& {
    const char* requested = std::getenv("BANDPO_CPU_ISA");
    const std::string want = requested ? requested : "";
    if (want == "baseline") return detail::kernel_table_baseline();
#if defined(BANDPO_HAVE_X86_ISA_VARIANTS)
    __builtin_cpu_init();
    const bool has_avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    if (want == "avx2" && has_avx2) return detail::kernel_table_avx2();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl"))
      return detail::kernel_table_avx512();
    if (has_avx2) return detail::kernel_table_avx2();
#endif
    return detail::kernel_table_baseline();
  }();
  return table;
}

// A persistent pool: waking parked workers costs microseconds, where creating threads per call would cost
// tens of them on every (possibly small) training-step call. Tasks are items taken from an atomic counter;
// the calling thread works too. One job runs at a time (concurrent callers queue on job_mutex_).
class ThreadPool {
 public:
  static ThreadPool& instance() {
    static ThreadPool pool(std::max(1u, std::thread::hardware_concurrency()));
    return pool;
  }

  int size() const { return static_cast<int>(workers_.size()) + 1; }

  void run(int64_t n_items, int max_threads, const std::function<void(int64_t, int64_t)>& body) {
#if defined(BANDPO_HAVE_FORK)
    // A fork()ed child (e.g. a DataLoader worker) inherits the pool but not its threads: run serially there.
    if (getpid() != owner_pid_) {
      body(0, n_items);
      return;
    }
#endif
    const int64_t n_helpers = std::min<int64_t>({static_cast<int64_t>(max_threads) - 1, n_items - 1,
                                                 static_cast<int64_t>(workers_.size())});
    if (n_helpers <= 0) {
      body(0, n_items);
      return;
    }
    std::lock_guard<std::mutex> job_lock(job_mutex_);
    {
      std::lock_guard<std::mutex> lock(mutex_);
      body_ = &body;
      n_items_ = n_items;
      next_item_.store(0);
      helpers_wanted_ = n_helpers;
      helpers_running_ = 0;
      error_ = nullptr;
      ++generation_;
    }
    wake_.notify_all();
    work();
    std::unique_lock<std::mutex> lock(mutex_);
    done_.wait(lock, [&] { return helpers_wanted_ == 0 && helpers_running_ == 0; });
    body_ = nullptr;
    if (error_) std::rethrow_exception(error_);
  }

  ~ThreadPool() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stop_ = true;
    }
    wake_.notify_all();
    for (auto& t : workers_) t.join();
  }

 private:
  explicit ThreadPool(unsigned n_threads) {
#if defined(BANDPO_HAVE_FORK)
    owner_pid_ = getpid();
#endif
    for (unsigned i = 1; i < n_threads; ++i) workers_.emplace_back([this] { worker_loop(); });
  }

  void work() {
    try {
      for (int64_t item; (item = next_item_.fetch_add(1)) < n_items_;) (*body_)(item, item + 1);
    } catch (...) {
      std::lock_guard<std::mutex> lock(mutex_);
      if (!error_) error_ = std::current_exception();
      next_item_.store(n_items_);
    }
  }

  void worker_loop() {
    uint64_t seen = 0;
    std::unique_lock<std::mutex> lock(mutex_);
    for (;;) {
      wake_.wait(lock, [&] { return stop_ || (generation_ != seen && helpers_wanted_ > 0); });
      if (stop_) return;
      seen = generation_;
      --helpers_wanted_;
      ++helpers_running_;
      lock.unlock();
      work();
      lock.lock();
      if (--helpers_running_ == 0 && helpers_wanted_ == 0) done_.notify_all();
    }
  }

  std::vector<std::thread> workers_;
  std::mutex job_mutex_, mutex_;
  std::condition_variable wake_, done_;
  const std::function<void(int64_t, int64_t)>* body_ = nullptr;
  int64_t n_items_ = 0;
  std::atomic<int64_t> next_item_{0};
  int64_t helpers_wanted_ = 0, helpers_running_ = 0;
  uint64_t generation_ = 0;
  bool stop_ = false;
  std::exception_ptr error_;
#if defined(BANDPO_HAVE_FORK)
  pid_t owner_pid_ = 0;
#endif
};

void run_parallel(const ParallelFor& parallel_for, int64_t n_items, const std::function<void(int64_t, int64_t)>& body) {
  if (n_items <= 0) return;
  if (parallel_for) {
    parallel_for(n_items, body);
  } else {
    ThreadPool& pool = ThreadPool::instance();
    pool.run(n_items, pool.size(), body);
  }
}

// The fixed partition of a [rows, cols] problem into items of at most kItemTokens tokens: whole rows when
// rows are short, otherwise chunks of one row. It depends only on the shape, never on the thread count.
struct Partition {
  int64_t rows, cols;
  int64_t rows_per_item;   // > 0: items are groups of whole rows
  int64_t chunks_per_row;  // > 0: items are chunks of one row
  int64_t n_items;

  Partition(int64_t rows_, int64_t cols_) : rows(rows_), cols(cols_) {
    if (cols <= kItemTokens) {
      rows_per_item = cols > 0 ? std::max<int64_t>(1, kItemTokens / cols) : std::max<int64_t>(rows, 1);
      chunks_per_row = 0;
      n_items = rows > 0 ? (rows + rows_per_item - 1) / rows_per_item : 0;
    } else {
      rows_per_item = 0;
      chunks_per_row = (cols + kItemTokens - 1) / kItemTokens;
      n_items = rows * chunks_per_row;
    }
  }
  bool whole_rows() const { return rows_per_item > 0; }

  // Calls f(row, begin, end) for the segments of item `item`, in order.
  template <class F>
  void for_each_segment(int64_t item, F&& f) const {
    if (whole_rows()) {
      const int64_t r_end = std::min(rows, (item + 1) * rows_per_item);
      for (int64_t r = item * rows_per_item; r < r_end; ++r) f(r, r * cols, (r + 1) * cols);
    } else {
      const int64_t r = item / chunks_per_row, c = item % chunks_per_row;
      f(r, r * cols + c * kItemTokens, r * cols + std::min(cols, (c + 1) * kItemTokens));
    }
  }
};

// Per item: the sums over its tokens, and for whole-row items the sum over its rows of the per-row means
// (seq-mean-token-mean).
struct ItemSums {
  SegmentSums tokens;
  double row_mean_loss = 0;
  double row_mean_pg = 0;
};

// Throws std::invalid_argument for the first bad value at a valid position in [begin, end), if any: the
// positions bad_token() (token_loss.h) flags, named by argument and flat index.
void throw_if_invalid(const LossInputs& in, int64_t begin, int64_t end) {
  auto value = [&](const void* p, int64_t i) -> double {
    switch (in.dtype) {
      case DType::float32: return load<double>(static_cast<const float*>(p), i);
      case DType::float64: return load<double>(static_cast<const double*>(p), i);
      case DType::bfloat16: return load<double>(static_cast<const bfloat16*>(p), i);
      case DType::float16: return load<double>(static_cast<const float16*>(p), i);
    }
    return 0.0;
  };
  // A log-probability's fault: NaN, or above the tolerance (a probability above 1).
  auto log_prob_fault = [](std::ostringstream& msg, const char* name, int64_t i, double v) {
    if (std::isnan(v)) {
      msg << name << "[" << i << "] is NaN at a valid (mask != 0) position";
    } else if (v > kLogProbTolerance) {
      msg << name << "[" << i << "] = " << v << " > 0 is not a log-probability (a probability above 1; "
          << "log-probs may exceed 0 by rounding only, up to " << kLogProbTolerance << ")";
    } else {
      return false;
    }
    return true;
  };
  for (int64_t i = begin; i < end; ++i) {
    double w = 1.0;
    if (in.mask_kind == MaskKind::boolean) w = static_cast<const uint8_t*>(in.mask)[i] ? 1.0 : 0.0;
    if (in.mask_kind == MaskKind::values) w = value(in.mask, i);
    if (w == 0.0) continue;
    const int64_t adv_index = in.advantages_per_row ? i / std::max<int64_t>(in.cols, 1) : i;
    const double logp = value(in.logp, i), old_logp = value(in.old_logp, i), adv = value(in.advantages, adv_index);
    const double ref = in.ref_logp ? value(in.ref_logp, i) : 0.0;
    if (!bad_token(logp, old_logp, adv, ref, w)) continue;
    std::ostringstream msg;
    msg << "band_loss: ";
    // The first fault in argument order: mask, logp, old_logp, advantages, ref_logp.
    if (std::isnan(w)) {
      msg << "mask[" << i << "] is NaN";
    } else if (!log_prob_fault(msg, "logp", i, logp) && !log_prob_fault(msg, "old_logp", i, old_logp)) {
      if (!std::isfinite(adv))
        msg << "advantages[" << adv_index << "] = " << adv << " is not finite at a valid (mask != 0) position";
      else
        log_prob_fault(msg, "ref_logp", i, ref);  // the only fault bad_token() leaves
    }
    throw std::invalid_argument(msg.str());
  }
}

}  // namespace

const char* cpu_kernel_isa() { return kernels().isa; }

const char* version() { return BANDPO_VERSION_STRING; }

ParallelFor thread_pool_parallel_for(int num_threads) {
  return [num_threads](int64_t n_items, const std::function<void(int64_t, int64_t)>& body) {
    ThreadPool::instance().run(n_items, std::max(1, num_threads), body);
  };
}

void band_bounds_cpu(DType dtype, const void* old_logp, int64_t n, const BoundOptions& options, void* lower,
                     void* upper, const ParallelFor& parallel_for) {
  detail::check_bounds_call(dtype, old_logp, n, options, lower, upper, "band_bounds");
  if (n == 0) return;
  const KernelTable& k = kernels();
  const int64_t n_items = (n + kItemTokens - 1) / kItemTokens;
  run_parallel(parallel_for, n_items, [&](int64_t b, int64_t e) {
    k.bounds(dtype, old_logp, b * kItemTokens, std::min(n, e * kItemTokens), options, lower, upper);
  });
}

LossResult band_loss_forward_cpu(const LossInputs& in, const LossOptions& options, const ParallelFor& parallel_for) {
  detail::check_loss_call(in, options, "band_loss");
  const KernelTable& k = kernels();
  const Partition part(in.rows, in.cols);
  std::vector<ItemSums> items = detail::host_workspace<ItemSums>(part.n_items, in, "band_loss");
  run_parallel(parallel_for, part.n_items, [&](int64_t b, int64_t e) {
    for (int64_t item = b; item < e; ++item) {
      ItemSums& acc = items[static_cast<size_t>(item)];
      part.for_each_segment(item, [&](int64_t row, int64_t begin, int64_t end) {
        const SegmentSums s = k.loss_segment(in, options, row, begin, end);
        acc.tokens.add(s);
        if (part.whole_rows()) {
          acc.row_mean_loss += detail::mean_or_zero(s.loss, s.weight);
          acc.row_mean_pg += detail::mean_or_zero(s.pg, s.weight);
        }
      });
    }
  });

  // Combine in item order: the same additions in the same order for any thread count.
  SegmentSums total;
  double row_mean_loss = 0, row_mean_pg = 0;
  SegmentSums row;  // running sums of the row being assembled from chunks
  for (int64_t item = 0; item < part.n_items; ++item) {
    const ItemSums& it = items[static_cast<size_t>(item)];
    if (it.tokens.invalid > 0)
      part.for_each_segment(item, [&](int64_t, int64_t begin, int64_t end) { throw_if_invalid(in, begin, end); });
    total.add(it.tokens);
    if (part.whole_rows()) {
      row_mean_loss += it.row_mean_loss;
      row_mean_pg += it.row_mean_pg;
    } else {
      row.add(it.tokens);
      if ((item + 1) % part.chunks_per_row == 0) {
        row_mean_loss += detail::mean_or_zero(row.loss, row.weight);
        row_mean_pg += detail::mean_or_zero(row.pg, row.weight);
        row = SegmentSums();
      }
    }
  }

  return detail::finish_loss(total, row_mean_loss, row_mean_pg, options, in.rows, in.cols);
}

void band_loss_backward_cpu(const LossInputs& in, const LossOptions& options, double grad_loss, void* grad_logp,
                            const ParallelFor& parallel_for) {
  const int64_t n = detail::check_loss_call(in, options, "band_loss backward");
  const KernelTable& k = kernels();
  const Partition part(in.rows, in.cols);
  if (n == 0) return;
  if (!grad_logp) throw std::invalid_argument("band_loss backward: grad_logp must not be null when rows * cols > 0");
  // Per-token weight of the gradient for the token-sum modes; per row for seq-mean-token-mean.
  double total_weight = static_cast<double>(n);
  if (detail::backward_needs_total_weight(options, in.mask_kind)) {
    std::vector<double> partial = detail::host_workspace<double>(part.n_items, in, "band_loss backward");
    run_parallel(parallel_for, part.n_items, [&](int64_t b, int64_t e) {
      for (int64_t item = b; item < e; ++item)
        part.for_each_segment(item, [&](int64_t, int64_t begin, int64_t end) {
          partial[static_cast<size_t>(item)] += k.weight_sum(in, begin, end);
        });
    });
    total_weight = 0;
    for (double p : partial) total_weight += p;
  }
  const double denominator = detail::aggregation_denominator(options, in.rows, in.cols, total_weight);
  const double token_scale = denominator != 0.0 ? grad_loss / denominator : 0.0;
  const bool per_row_mean = options.agg == Aggregation::seq_mean_token_mean;

  // Rows longer than an item need their total weight before any of their chunks can be scaled.
  std::vector<double> row_weight;
  if (per_row_mean && !part.whole_rows()) {
    std::vector<double> chunk_weight = detail::host_workspace<double>(part.n_items, in, "band_loss backward");
    run_parallel(parallel_for, part.n_items, [&](int64_t b, int64_t e) {
      for (int64_t item = b; item < e; ++item)
        part.for_each_segment(item, [&](int64_t, int64_t begin, int64_t end) {
          chunk_weight[static_cast<size_t>(item)] = k.weight_sum(in, begin, end);
        });
    });
    row_weight = detail::host_workspace<double>(in.rows, in, "band_loss backward");
    for (int64_t item = 0; item < part.n_items; ++item)
      row_weight[static_cast<size_t>(item / part.chunks_per_row)] += chunk_weight[static_cast<size_t>(item)];
  }

  run_parallel(parallel_for, part.n_items, [&](int64_t b, int64_t e) {
    for (int64_t item = b; item < e; ++item) {
      part.for_each_segment(item, [&](int64_t row, int64_t begin, int64_t end) {
        double scale = token_scale;
        if (per_row_mean) {
          const double w = part.whole_rows() ? k.weight_sum(in, begin, end) : row_weight[static_cast<size_t>(row)];
          scale = w != 0.0 ? token_scale / w : 0.0;
        }
        k.grad_segment(in, options, row, begin, end, scale, grad_logp);
      });
    }
  });
}

LossResult band_loss_cpu(const LossInputs& inputs, const LossOptions& options, void* grad_logp,
                         const ParallelFor& parallel_for) {
  const LossResult result = band_loss_forward_cpu(inputs, options, parallel_for);
  if (grad_logp) band_loss_backward_cpu(inputs, options, 1.0, grad_logp, parallel_for);
  return result;
}

}  // namespace bandpo
