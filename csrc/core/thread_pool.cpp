// The library's persistent thread pool (the default ParallelFor of the CPU entry points).
#include "thread_pool.h"

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

#if defined(__unix__) || defined(__APPLE__)
#include <unistd.h>
#define BANDPO_HAVE_FORK 1
#endif

namespace bandpo {
namespace {

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
    const int64_t n_helpers =
        std::min<int64_t>({static_cast<int64_t>(max_threads) - 1, n_items - 1, static_cast<int64_t>(workers_.size())});
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

}  // namespace

namespace detail {

void run_parallel(const ParallelFor& parallel_for, int64_t n_items, const std::function<void(int64_t, int64_t)>& body) {
  if (n_items <= 0) return;
  if (parallel_for) {
    parallel_for(n_items, body);
  } else {
    ThreadPool& pool = ThreadPool::instance();
    pool.run(n_items, pool.size(), body);
  }
}

}  // namespace detail

ParallelFor thread_pool_parallel_for(int num_threads) {
  return [num_threads](int64_t n_items, const std::function<void(int64_t, int64_t)>& body) {
    ThreadPool::instance().run(n_items, std::max(1, num_threads), body);
  };
}

}  // namespace bandpo
