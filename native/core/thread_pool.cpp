#include "thread_pool.hpp"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <exception>
#include <memory>

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#endif

namespace lowbit {

namespace {
int spin_from_env() {
  const char* v = std::getenv("LOWBIT_POOL_SPIN_US");
  if (v == nullptr || *v == '\0') return kDefaultPoolSpinUs;
  const long us = std::strtol(v, nullptr, 10);
  return (int)std::clamp<long>(us, 0, 100000);
}
}  // namespace

ThreadPool::ThreadPool(int threads, int spin_us) : spin_us_(spin_us < 0 ? spin_from_env() : spin_us) {
  for (int i = 1; i < std::max(threads, 1); ++i) workers_.emplace_back([this] { worker_loop(); });
}

ThreadPool::~ThreadPool() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stopping_ = true;
  }
  wake_.notify_all();
  for (auto& t : workers_) t.join();
}

// Polls the queue's size for up to spin_us_ before the worker blocks on the condition variable.
void ThreadPool::spin_for_work() const {
  if (spin_us_ <= 0) return;
  const auto until = std::chrono::steady_clock::now() + std::chrono::microseconds(spin_us_);
  for (;;) {
    for (int i = 0; i < 64; ++i) {
      if (queued_.load(std::memory_order_acquire) > 0) return;
#if defined(__x86_64__) || defined(_M_X64)
      _mm_pause();
#endif
    }
    if (std::chrono::steady_clock::now() >= until) return;
  }
}

void ThreadPool::worker_loop() {
  for (;;) {
    spin_for_work();
    std::function<void()> task;
    {
      std::unique_lock<std::mutex> lock(mutex_);
      wake_.wait(lock, [this] { return stopping_ || !queue_.empty(); });
      if (stopping_ && queue_.empty()) return;
      task = std::move(queue_.front());
      queue_.pop_front();
      queued_.fetch_sub(1, std::memory_order_relaxed);
    }
    task();
  }
}

namespace {
// Shared state of one parallel_for call: chunks are claimed through an atomic counter, so whoever
// is free (pool worker or caller) takes the next one.
struct ForJob {
  int64_t n, chunk, chunks;
  const std::function<void(int64_t, int64_t)>* fn;
  std::atomic<int64_t> next{0};
  std::atomic<int64_t> done{0};
  std::mutex mutex;
  std::condition_variable finished;
  std::exception_ptr error;

  void run_chunks() {
    for (;;) {
      const int64_t c = next.fetch_add(1);
      if (c >= chunks) return;
      try {
        if (!error) (*fn)(c * chunk, std::min(n, (c + 1) * chunk));
      } catch (...) {
        std::lock_guard<std::mutex> lock(mutex);
        if (!error) error = std::current_exception();
      }
      if (done.fetch_add(1) + 1 == chunks) {
        std::lock_guard<std::mutex> lock(mutex);
        finished.notify_all();
      }
    }
  }
};
}  // namespace

void ThreadPool::parallel_for(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& fn) {
  if (n <= 0) return;
  grain = std::max<int64_t>(grain, 1);
  const int64_t max_chunks = (int64_t)size() * 4;  // a few chunks per thread evens out the load
  int64_t chunks = std::min(max_chunks, (n + grain - 1) / grain);
  if (chunks <= 1 || workers_.empty()) {
    fn(0, n);
    return;
  }
  auto job = std::make_shared<ForJob>();
  job->n = n;
  job->chunk = (n + chunks - 1) / chunks;
  job->chunks = (n + job->chunk - 1) / job->chunk;
  job->fn = &fn;
  const int helpers = (int)std::min<int64_t>((int64_t)workers_.size(), job->chunks - 1);
  {
    std::lock_guard<std::mutex> lock(mutex_);
    for (int i = 0; i < helpers; ++i) queue_.emplace_back([job] { job->run_chunks(); });
    queued_.fetch_add(helpers, std::memory_order_release);
  }
  wake_.notify_all();
  job->run_chunks();
  // The helpers' last chunks usually end within microseconds: poll before sleeping (a wake-up costs more).
  if (spin_us_ > 0 && job->done.load() != job->chunks) {
    const auto until = std::chrono::steady_clock::now() + std::chrono::microseconds(spin_us_);
    while (job->done.load(std::memory_order_acquire) != job->chunks && std::chrono::steady_clock::now() < until) {
#if defined(__x86_64__) || defined(_M_X64)
      _mm_pause();
#endif
    }
  }
  {
    std::unique_lock<std::mutex> lock(job->mutex);
    job->finished.wait(lock, [&] { return job->done.load() == job->chunks; });
  }
  if (job->error) std::rethrow_exception(job->error);
}

int hardware_threads() {
  const unsigned n = std::thread::hardware_concurrency();
  return n == 0 ? 1 : (int)n;
}

namespace {
std::mutex g_pool_mutex;
std::shared_ptr<ThreadPool> g_pool;
}  // namespace

std::shared_ptr<ThreadPool> global_pool() {
  std::lock_guard<std::mutex> lock(g_pool_mutex);
  if (!g_pool) g_pool = std::make_shared<ThreadPool>(hardware_threads());
  return g_pool;
}

void set_global_threads(int n) {
  auto fresh = std::make_shared<ThreadPool>(n <= 0 ? hardware_threads() : n);
  std::shared_ptr<ThreadPool> old;
  {
    std::lock_guard<std::mutex> lock(g_pool_mutex);
    old = std::move(g_pool);
    g_pool = std::move(fresh);
  }
  // `old` is destroyed here (joining its idle threads) unless work still holds it; then the last
  // parallel_for to finish on it does so.
}

}  // namespace lowbit
