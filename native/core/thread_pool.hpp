// The addon's own worker threads. Heavy native calls run on a libuv worker (so the event loop stays
// free) and fan their loops out here, instead of competing for libuv's four shared threads.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

namespace lowbit {

class ThreadPool {
 public:
  // spin_us: how long an idle worker polls for new work before it sleeps (< 0: LOWBIT_POOL_SPIN_US
  // from the environment, else the default below).
  explicit ThreadPool(int threads, int spin_us = -1);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int size() const { return (int)workers_.size() + 1; }  // the caller helps too

  // Runs fn(begin, end) over [0, n) split into chunks of at least `grain`; returns when all are done.
  // Safe to call from several threads at once; the calling thread works on chunks as well.
  // The first exception thrown by fn is re-thrown here.
  void parallel_for(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& fn);

 private:
  void worker_loop();
  void spin_for_work() const;
  std::vector<std::thread> workers_;
  std::deque<std::function<void()>> queue_;
  std::mutex mutex_;
  std::condition_variable wake_;
  bool stopping_ = false;
  std::atomic<int64_t> queued_{0};  // queue_.size(), readable without the mutex by spinning workers
  int spin_us_ = 0;
};

// Default spin of an idle worker, in microseconds (0: sleep at once). Waking a sleeping thread costs
// tens of microseconds (more in a VM), a decode-step GEMV lasts 0.1-1 ms; but on the quiet host Xeon
// (2 threads, 2026-12-01) a 100 µs spin changed neither the repacked GEMV (their tasks are claimed
// dynamically, so a late worker just takes fewer) nor the same-size streaming reads, within the
// noise: off by default, LOWBIT_POOL_SPIN_US=100 to compare elsewhere.
constexpr int kDefaultPoolSpinUs = 0;

// The process-wide pool (hardware threads by default). Callers hold the returned pointer for as long
// as they use the pool (`global_pool()->parallel_for(...)` holds it for the call), so that
// set_global_threads may replace the pool at any time: work in flight finishes on the pool it
// started with, which is destroyed when its last user lets go (issue 8: it used to be freed under
// running workers).
std::shared_ptr<ThreadPool> global_pool();
// Replaces the global pool with one of n threads (n <= 0: hardware concurrency). Safe while work runs.
void set_global_threads(int n);
int hardware_threads();

}  // namespace lowbit
