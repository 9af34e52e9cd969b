#include "pyslim/thread_pool.h"

#include <dlfcn.h>
#include <pthread.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

namespace pyslim {
namespace {

thread_local bool in_pool_task = false;

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  _mm_pause();
#elif defined(__aarch64__)
  asm volatile("yield" ::: "memory");
#endif
}

// How long a helper keeps polling for the next call after finishing one (and how long the caller polls for
// its helpers before sleeping). A condition-variable wake-up costs ~50 us on the development VM — as much as a
// small convolution — so back-to-back calls (one layer after another) must not pay it each time; after the
// spin the threads sleep, so an idle pool costs nothing. PYSLIM_POOL_SPIN_US overrides (0 = always sleep).
int64_t spin_ns() {
  static const int64_t ns = [] {
    const char* v = std::getenv("PYSLIM_POOL_SPIN_US");
    if (v != nullptr && *v != '\0') {
      char* end = nullptr;
      const long us = std::strtol(v, &end, 10);
      if (end != v && us >= 0) return static_cast<int64_t>(us) * 1000;
    }
    return static_cast<int64_t>(100) * 1000;
  }();
  return ns;
}

// Polls `ready` (with a pause between polls) for up to spin_ns(); true as soon as it holds.
template <typename Ready>
bool spin_until(const Ready& ready) {
  const int64_t budget = spin_ns();
  if (budget <= 0) return ready();
  const auto start = std::chrono::steady_clock::now();
  for (;;) {
    for (int i = 0; i < 64; ++i) {
      if (ready()) return true;
      cpu_relax();
    }
    if (std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now() - start).count() >
        budget)
      return ready();
  }
}

// A call is published as one atomic word, (generation << 16) | helpers, so that a helper never pairs one
// call's generation with another call's helper count.
constexpr int kHelperBits = 16;
constexpr uint64_t kHelperMask = (uint64_t{1} << kHelperBits) - 1;

// Entry to a call: (generation << 32) | closed bit | helpers inside. A helper enters only an open call of its
// generation; the caller closes the call once every task is taken and waits only for the helpers inside. A
// helper that wakes late (a sleeping thread: ~200 us on the development VM after a 1 ms gap) finds the call
// closed and goes back to waiting, instead of holding the caller until it arrives.
constexpr uint64_t kClosed = uint64_t{1} << 31;
constexpr uint64_t kInsideMask = kClosed - 1;
inline uint64_t entry_generation(uint64_t gen) { return (gen & 0xffffffffu) << 32; }

class Pool {
 public:
  ~Pool() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_.store(true);
    }
    cv_.notify_all();
    for (auto& t : workers_) t.join();
  }

  void run(int64_t num_tasks, int num_threads, const std::function<void(int64_t)>& fn) {
    std::lock_guard<std::mutex> call_lock(call_mu_);
    int64_t helpers = std::min<int64_t>(num_tasks, num_threads) - 1;
    if (helpers > static_cast<int64_t>(kHelperMask)) helpers = static_cast<int64_t>(kHelperMask);
    ensure_workers(static_cast<int>(helpers));
    fn_ = &fn;
    num_tasks_ = num_tasks;
    next_.store(0, std::memory_order_relaxed);
    bool wake;
    {
      // Published under mu_: a helper that is about to sleep either sees the new word in its wait predicate
      // or is already counted in sleepers_ when we look.
      std::lock_guard<std::mutex> lock(mu_);
      const uint64_t gen = (call_.load(std::memory_order_relaxed) >> kHelperBits) + 1;
      entry_.store(entry_generation(gen), std::memory_order_release);
      call_.store((gen << kHelperBits) | static_cast<uint64_t>(helpers), std::memory_order_release);
      wake = sleepers_ > 0;
    }
    if (wake) cv_.notify_all();
    work();
    // Every task is taken: close the call, then wait for the helpers inside (they are awake, finishing a task
    // or about to find none left).
    entry_.fetch_or(kClosed, std::memory_order_acq_rel);
    auto none_inside = [&] { return (entry_.load(std::memory_order_acquire) & kInsideMask) == 0; };
    if (!spin_until(none_inside)) {
      std::unique_lock<std::mutex> lock(mu_);
      done_cv_.wait(lock, none_inside);
    }
    fn_ = nullptr;
  }

 private:
  void ensure_workers(int n) {
    while (static_cast<int>(workers_.size()) < n) {
      const int id = static_cast<int>(workers_.size());
      const uint64_t now = call_.load(std::memory_order_relaxed);
      workers_.emplace_back([this, id, now] { loop(id, now); });
    }
  }

  void work() {
    const bool was = in_pool_task;
    in_pool_task = true;
    for (int64_t t = next_.fetch_add(1); t < num_tasks_; t = next_.fetch_add(1)) (*fn_)(t);
    in_pool_task = was;
  }

  // Enters the call of generation `gen` if it is still open; false if it is closed (or already over).
  bool enter(uint64_t gen) {
    const uint64_t want = entry_generation(gen);
    uint64_t e = entry_.load(std::memory_order_acquire);
    for (;;) {
      if ((e & ~(kClosed | kInsideMask)) != want || (e & kClosed) != 0) return false;
      if (entry_.compare_exchange_weak(e, e + 1, std::memory_order_acq_rel, std::memory_order_acquire)) return true;
    }
  }

  void loop(int id, uint64_t seen) {
    for (;;) {
      uint64_t word = call_.load(std::memory_order_acquire);
      if (word == seen && !spin_until([&] {
            word = call_.load(std::memory_order_acquire);
            return word != seen || stop_.load(std::memory_order_relaxed);
          })) {
        std::unique_lock<std::mutex> lock(mu_);
        ++sleepers_;
        cv_.wait(lock, [&] {
          word = call_.load(std::memory_order_acquire);
          return word != seen || stop_.load(std::memory_order_relaxed);
        });
        --sleepers_;
      }
      if (stop_.load(std::memory_order_relaxed)) return;
      seen = word;
      if (static_cast<uint64_t>(id) >= (word & kHelperMask)) continue;  // not needed for this call
      if (!enter(word >> kHelperBits)) continue;                         // the caller already took every task
      work();
      const uint64_t left = entry_.fetch_sub(1, std::memory_order_acq_rel) - 1;
      if ((left & kInsideMask) == 0 && (left & kClosed) != 0) {
        // The caller may be asleep on done_cv_; taking mu_ orders this with its predicate check.
        { std::lock_guard<std::mutex> lock(mu_); }
        done_cv_.notify_one();
      }
    }
  }

  std::mutex call_mu_;
  std::mutex mu_;
  std::condition_variable cv_, done_cv_;
  std::vector<std::thread> workers_;
  const std::function<void(int64_t)>* fn_ = nullptr;
  int64_t num_tasks_ = 0;
  std::atomic<int64_t> next_{0};
  std::atomic<uint64_t> call_{0};
  std::atomic<uint64_t> entry_{0};
  std::atomic<bool> stop_{false};
  int sleepers_ = 0;  // guarded by mu_
};

// Leaked on purpose: joining threads from a static destructor at interpreter exit can deadlock. A forked child
// (a DataLoader worker, multiprocessing) has none of the parent's helper threads, and its copies of the pool's
// mutexes may be held by threads that do not exist there: it starts over with a fresh pool (the old one is
// abandoned, never touched again).
std::atomic<Pool*> g_pool{nullptr};

void reset_pool_in_child() { g_pool.store(nullptr); }

Pool& pool() {
  Pool* p = g_pool.load(std::memory_order_acquire);
  if (p != nullptr) return *p;
  static std::once_flag registered;
  std::call_once(registered, [] { pthread_atfork(nullptr, nullptr, reset_pool_in_child); });
  static std::mutex create_mu;
  std::lock_guard<std::mutex> lock(create_mu);
  p = g_pool.load(std::memory_order_acquire);
  if (p == nullptr) {
    p = new Pool();
    g_pool.store(p, std::memory_order_release);
  }
  return *p;
}

// GOMP_parallel(fn, data, num_threads, flags): runs fn(data) on a team of num_threads threads, the caller
// included, and returns after the team's closing barrier.
using GompParallel = void (*)(void (*)(void*), void*, unsigned, unsigned);
std::atomic<GompParallel> gomp_parallel{nullptr};

struct OmpCall {
  const std::function<void(int64_t)>* fn;
  int64_t num_tasks;
  std::atomic<int64_t> next{0};
};

void omp_team_member(void* data) {
  auto* call = static_cast<OmpCall*>(data);
  const bool was = in_pool_task;
  in_pool_task = true;
  for (int64_t t = call->next.fetch_add(1); t < call->num_tasks; t = call->next.fetch_add(1)) (*call->fn)(t);
  in_pool_task = was;
}

}  // namespace

bool use_openmp_runtime(const char* library_path) {
  if (library_path == nullptr) return false;
  void* lib = dlopen(library_path, RTLD_LAZY | RTLD_NOLOAD);  // never loads a runtime of our own
  if (lib == nullptr) return false;
  auto fn = reinterpret_cast<GompParallel>(dlsym(lib, "GOMP_parallel"));
  // The handle is kept (not dlclose'd): the runtime must stay loaded while parallel_for may call into it.
  if (fn == nullptr) {
    dlclose(lib);
    return false;
  }
  gomp_parallel.store(fn);
  return true;
}

void use_own_pool() { gomp_parallel.store(nullptr); }

const char* parallel_backend() { return gomp_parallel.load() != nullptr ? "openmp" : "own"; }

void parallel_for(int64_t num_tasks, int num_threads, const std::function<void(int64_t)>& fn) {
  if (num_tasks <= 0) return;
  if (num_threads <= 1 || num_tasks == 1 || in_pool_task) {
    for (int64_t t = 0; t < num_tasks; ++t) fn(t);
    return;
  }
  if (const GompParallel omp = gomp_parallel.load()) {
    OmpCall call{&fn, num_tasks};
    omp(omp_team_member, &call, static_cast<unsigned>(std::min<int64_t>(num_tasks, num_threads)), 0);
    return;
  }
  pool().run(num_tasks, num_threads, fn);
}

}  // namespace pyslim
