#include "util/thread_pool.h"

#include <algorithm>

namespace lowbit {
namespace {

thread_local bool tls_inside_task = false;

// Pause iterations a thread spins for new work (workers) or for the others to
// finish (the caller) before sleeping on a condition variable: about 50-100
// microseconds. A forward pass issues its parallel loops microseconds apart,
// and a futex wake-up costs 20-40 microseconds, more than a small matrix.
constexpr int kSpinIterations = 4000;

inline void CpuRelax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#else
  std::this_thread::yield();
#endif
}

size_t CoreCount() {
  const unsigned hw = std::thread::hardware_concurrency();
  return hw == 0 ? 1 : hw;
}

}  // namespace

ThreadPool& ThreadPool::Global() {
  // Leaked on purpose: worker threads must not be joined during static
  // destruction, when the interpreter may already be gone.
  static ThreadPool* pool = new ThreadPool(CoreCount());
  return *pool;
}

ThreadPool::ThreadPool(size_t max_threads)
    : num_threads_(std::max<size_t>(1, max_threads)) {
  const size_t n_workers = std::max<size_t>(1, max_threads) - 1;
  workers_.reserve(n_workers);
  for (size_t i = 0; i < n_workers; ++i) {
    workers_.emplace_back([this, i] { WorkerLoop(i); });
  }
}

ThreadPool::~ThreadPool() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stopping_ = true;
  }
  wake_.notify_all();
  for (std::thread& t : workers_) t.join();
}

void ThreadPool::SetNumThreads(size_t n) {
  num_threads_.store(std::clamp<size_t>(n, 1, MaxThreads()));
}

void ThreadPool::RunChunks() {
  for (;;) {
    const size_t begin = next_.fetch_add(grain_);
    if (begin >= n_) return;
    const size_t end = std::min(n_, begin + grain_);
    try {
      (*fn_)(begin, end);
    } catch (...) {
      std::lock_guard<std::mutex> lock(mutex_);
      if (!error_) error_ = std::current_exception();
      next_.store(n_);  // stop handing out work
    }
  }
}

void ThreadPool::WorkerLoop(size_t index) {
  uint64_t seen = 0;
  for (;;) {
    for (int i = 0; i < kSpinIterations &&
                    generation_.load(std::memory_order_acquire) == seen &&
                    !stopping_.load(std::memory_order_relaxed);
         ++i) {
      CpuRelax();
    }
    {
      std::unique_lock<std::mutex> lock(mutex_);
      wake_.wait(lock, [&] {
        return stopping_ || (generation_ != seen && index < participants_);
      });
      if (stopping_) return;
      seen = generation_;
    }
    tls_inside_task = true;
    RunChunks();
    tls_inside_task = false;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      finished_.fetch_add(1, std::memory_order_release);
    }
    done_.notify_one();
  }
}

void ThreadPool::ParallelFor(size_t n, size_t grain, const RangeFn& fn) {
  if (n == 0) return;
  grain = std::max<size_t>(1, grain);
  const size_t chunks = (n + grain - 1) / grain;
  const size_t threads = std::min(NumThreads(), chunks);
  if (threads <= 1 || tls_inside_task) {
    fn(0, n);
    return;
  }
  std::lock_guard<std::mutex> call_lock(call_mutex_);
  {
    std::lock_guard<std::mutex> lock(mutex_);
    fn_ = &fn;
    n_ = n;
    grain_ = grain;
    next_.store(0);
    error_ = nullptr;
    participants_ = threads - 1;
    finished_.store(0);
    generation_.fetch_add(1, std::memory_order_release);
  }
  wake_.notify_all();
  tls_inside_task = true;
  RunChunks();
  tls_inside_task = false;
  for (int i = 0; i < kSpinIterations &&
                  finished_.load(std::memory_order_acquire) != threads - 1;
       ++i) {
    CpuRelax();
  }
  std::exception_ptr error;
  {
    std::unique_lock<std::mutex> lock(mutex_);
    done_.wait(lock, [&] { return finished_ == participants_; });
    fn_ = nullptr;
    error = error_;
    error_ = nullptr;
  }
  if (error) std::rethrow_exception(error);
}

}  // namespace lowbit
