// The process-wide thread pool: one per process, sized to the cores.
//
// Highway 1.0.3 ships no pool, so this is a small one on std::thread. Work is
// split into contiguous index ranges; the caller's thread takes part, so a
// pool of N threads starts N - 1 workers.
#ifndef LOWBIT_UTIL_THREAD_POOL_H_
#define LOWBIT_UTIL_THREAD_POOL_H_

#include <atomic>
#include <condition_variable>
#include <cstddef>
#include <exception>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace lowbit {

class ThreadPool {
 public:
  using RangeFn = std::function<void(size_t begin, size_t end)>;

  // The single pool of the process.
  static ThreadPool& Global();

  explicit ThreadPool(size_t max_threads);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  // How many threads (the caller included) ParallelFor uses: 1..MaxThreads().
  void SetNumThreads(size_t n);
  size_t NumThreads() const { return num_threads_.load(); }
  size_t MaxThreads() const { return workers_.size() + 1; }

  // Calls fn(begin, end) on disjoint ranges covering [0, n), each at most
  // `grain` long, and returns when all are done. Exceptions thrown by fn are
  // rethrown here (the first one). Calls from inside a task run inline.
  void ParallelFor(size_t n, size_t grain, const RangeFn& fn);

 private:
  void WorkerLoop(size_t index);
  void RunChunks();

  std::vector<std::thread> workers_;
  std::atomic<size_t> num_threads_;

  std::mutex call_mutex_;  // one ParallelFor at a time

  std::mutex mutex_;
  std::condition_variable wake_;
  std::condition_variable done_;
  // Written under mutex_; atomic so that spinning threads can watch them.
  std::atomic<uint64_t> generation_{0};
  std::atomic<bool> stopping_{false};
  size_t participants_ = 0;  // workers taking part in this generation
  std::atomic<size_t> finished_{0};

  const RangeFn* fn_ = nullptr;
  size_t n_ = 0;
  size_t grain_ = 1;
  std::atomic<size_t> next_{0};
  std::exception_ptr error_;
};

}  // namespace lowbit

#endif  // LOWBIT_UTIL_THREAD_POOL_H_
