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
#include <cstdint>
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
  // Runs chunks of generation `gen` until none is left.
  void RunChunks(uint32_t gen);

  std::vector<std::thread> workers_;
  std::atomic<size_t> num_threads_;

  std::mutex call_mutex_;  // one ParallelFor at a time

  std::mutex mutex_;
  std::condition_variable wake_;
  std::condition_variable done_;
  std::atomic<bool> stopping_{false};
  std::atomic<size_t> participants_{0};  // workers that may join this loop

  // Chunks are claimed from ticket_ = (generation << 32) | next chunk, so a
  // worker that wakes late (descheduled on a busy machine) claims nothing
  // from a loop that is over, and the caller never waits for a worker that
  // has not started: it waits for the chunks, not for the threads.
  std::atomic<uint64_t> ticket_{0};
  // (generation << 32) | number of chunks of the current loop.
  std::atomic<uint64_t> limit_{0};
  std::atomic<size_t> completed_{0};  // chunks done in this generation
  std::atomic<bool> failed_{false};   // a chunk threw: skip the others
  const RangeFn* fn_ = nullptr;
  size_t n_ = 0;
  size_t grain_ = 1;
  std::exception_ptr error_;
};

}  // namespace lowbit

#endif  // LOWBIT_UTIL_THREAD_POOL_H_
