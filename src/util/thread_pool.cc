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

void ThreadPool::RunChunks(uint32_t gen) {
  uint64_t t = ticket_.load(std::memory_order_relaxed);
  for (;;) {
    if (static_cast<uint32_t>(t >> 32) != gen) return;
    if (!ticket_.compare_exchange_weak(t, t + 1, std::memory_order_acq_rel,
                                       std::memory_order_relaxed)) {
      continue;
    }
    // A claim is valid only below this generation's chunk count. A valid
    // claim keeps the loop (and fn_, n_, grain_) alive until it completes.
    const uint64_t limit = limit_.load(std::memory_order_acquire);
    const size_t chunks = static_cast<uint32_t>(limit);
    const size_t chunk = static_cast<uint32_t>(t);
    if (static_cast<uint32_t>(limit >> 32) != gen || chunk >= chunks) return;
    if (!failed_.load(std::memory_order_relaxed)) {
      const size_t begin = chunk * grain_;
      const size_t end = std::min(n_, begin + grain_);
      try {
        (*fn_)(begin, end);
      } catch (...) {
        std::lock_guard<std::mutex> lock(mutex_);
        if (!error_) error_ = std::current_exception();
        failed_.store(true, std::memory_order_relaxed);
      }
    }
    if (completed_.fetch_add(1, std::memory_order_acq_rel) + 1 == chunks) {
      std::lock_guard<std::mutex> lock(mutex_);
      done_.notify_one();
    }
    t = ticket_.load(std::memory_order_relaxed);
  }
}

void ThreadPool::WorkerLoop(size_t index) {
  uint32_t seen = 0;
  auto generation = [this] {
    return static_cast<uint32_t>(ticket_.load(std::memory_order_acquire) >>
                                 32);
  };
  for (;;) {
    for (int i = 0; i < kSpinIterations && generation() == seen &&
                    !stopping_.load(std::memory_order_relaxed);
         ++i) {
      CpuRelax();
    }
    if (generation() == seen) {
      std::unique_lock<std::mutex> lock(mutex_);
      wake_.wait(lock, [&] { return stopping_ || generation() != seen; });
    }
    if (stopping_) return;
    seen = generation();
    if (index >= participants_.load(std::memory_order_relaxed)) continue;
    tls_inside_task = true;
    RunChunks(seen);
    tls_inside_task = false;
  }
}

void ThreadPool::ParallelFor(size_t n, size_t grain, const RangeFn& fn) {
  if (n == 0) return;
  // Chunk indices are 32-bit (the low half of ticket_).
  grain = std::max<size_t>({1, grain, n / (size_t{1} << 31) + 1});
  const size_t chunks = (n + grain - 1) / grain;
  const size_t threads = std::min(NumThreads(), chunks);
  if (threads <= 1 || tls_inside_task) {
    fn(0, n);
    return;
  }
  std::lock_guard<std::mutex> call_lock(call_mutex_);
  const uint32_t gen =
      static_cast<uint32_t>(ticket_.load(std::memory_order_relaxed) >> 32) + 1;
  fn_ = &fn;
  n_ = n;
  grain_ = grain;
  error_ = nullptr;
  failed_.store(false, std::memory_order_relaxed);
  completed_.store(0, std::memory_order_relaxed);
  participants_.store(threads - 1, std::memory_order_relaxed);
  limit_.store(uint64_t{gen} << 32 | chunks, std::memory_order_release);
  {
    // Under the mutex, so that a worker about to sleep sees the new
    // generation or gets the notification.
    std::lock_guard<std::mutex> lock(mutex_);
    ticket_.store(uint64_t{gen} << 32, std::memory_order_release);
  }
  wake_.notify_all();
  tls_inside_task = true;
  RunChunks(gen);
  tls_inside_task = false;
  for (int i = 0; i < kSpinIterations &&
                  completed_.load(std::memory_order_acquire) != chunks;
       ++i) {
    CpuRelax();
  }
  if (completed_.load(std::memory_order_acquire) != chunks) {
    std::unique_lock<std::mutex> lock(mutex_);
    done_.wait(lock, [&] {
      return completed_.load(std::memory_order_acquire) == chunks;
    });
  }
  // Every chunk's writes (and error_) happened before its completion count.
  fn_ = nullptr;
  std::exception_ptr error = std::move(error_);
  error_ = nullptr;
  if (error) std::rethrow_exception(error);
}

}  // namespace lowbit
