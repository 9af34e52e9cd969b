// The fork-join pool: every task runs exactly once, for back-to-back calls (helpers still spinning), calls
// after the helpers went to sleep or while they wake, changing thread and task counts, nested calls, and
// several callers.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <string>
#include <thread>
#include <vector>

#include "pyslim/thread_pool.h"

namespace pyslim {
namespace {

void expect_each_once(int64_t tasks, int threads) {
  std::vector<std::atomic<int>> hits(static_cast<size_t>(tasks));
  for (auto& h : hits) h.store(0);
  parallel_for(tasks, threads, [&](int64_t t) { hits[static_cast<size_t>(t)].fetch_add(1); });
  for (int64_t t = 0; t < tasks; ++t) ASSERT_EQ(hits[static_cast<size_t>(t)].load(), 1) << "task " << t;
}

TEST(ThreadPool, BackToBackCallsRunEveryTaskOnce) {
  for (int rep = 0; rep < 2000; ++rep) expect_each_once(1 + rep % 13, 1 + rep % 4);
}

TEST(ThreadPool, CallsAfterHelpersSleep) {
  for (int rep = 0; rep < 4; ++rep) {
    expect_each_once(64, 3);
    std::this_thread::sleep_for(std::chrono::milliseconds(3));  // past the spin: helpers wait on the condvar
  }
}

TEST(ThreadPool, CallsAroundTheSpinDeadline) {
  // Helpers that wake while the caller is closing the call (or after it returned and the next call began)
  // must neither run a task of a finished call nor miss one of the next: every gap around the 100 us spin.
  for (int gap_us : {0, 50, 90, 100, 110, 150, 300, 2000}) {
    for (int rep = 0; rep < 20; ++rep) {
      expect_each_once(2, 2);
      expect_each_once(64, 4);
      std::this_thread::sleep_for(std::chrono::microseconds(gap_us));
    }
  }
}

TEST(ThreadPool, FewerTasksThanThreadsAndGrowingPool) {
  expect_each_once(2, 8);
  expect_each_once(100, 8);
  expect_each_once(1, 8);
  expect_each_once(7, 2);
}

TEST(ThreadPool, RunsEveryTaskExactlyOnce) {
  for (int64_t tasks : {0, 1, 2, 5, 100, 1000}) {
    for (int threads : {1, 2, 4}) {
      SCOPED_TRACE("tasks=" + std::to_string(tasks) + " threads=" + std::to_string(threads));
      std::vector<std::atomic<int>> hits(static_cast<size_t>(tasks));
      for (auto& h : hits) h.store(0);
      parallel_for(tasks, threads, [&](int64_t t) { hits[static_cast<size_t>(t)].fetch_add(1); });
      for (int64_t t = 0; t < tasks; ++t) ASSERT_EQ(hits[static_cast<size_t>(t)].load(), 1) << "task " << t;
    }
  }
}

TEST(ThreadPool, UsesMoreThanOneThreadWhenAsked) {
  // Each task waits (bounded) for the other to start: with two threads both run at once.
  std::atomic<int> started{0};
  std::atomic<bool> overlapped{false};
  parallel_for(2, 2, [&](int64_t) {
    started.fetch_add(1);
    for (int spin = 0; spin < 2000000 && started.load() < 2; ++spin) std::this_thread::yield();
    if (started.load() == 2) overlapped.store(true);
  });
  EXPECT_TRUE(overlapped.load());
}

TEST(ThreadPool, NestedCallRunsInline) {
  std::atomic<int64_t> total{0};
  parallel_for(4, 2, [&](int64_t outer) {
    parallel_for(3, 2, [&](int64_t inner) { total.fetch_add(outer * 10 + inner); });
  });
  // sum over outer 0..3, inner 0..2 of (10 outer + inner) = 10 * 6 * 3 + 3 * 4 = 192
  EXPECT_EQ(total.load(), 192);
}

TEST(ThreadPool, ConcurrentCallersSerialise) {
  std::atomic<int64_t> a{0}, b{0};
  std::thread t1([&] {
    for (int r = 0; r < 50; ++r) parallel_for(16, 2, [&](int64_t i) { a.fetch_add(i); });
  });
  std::thread t2([&] {
    for (int r = 0; r < 50; ++r) parallel_for(16, 2, [&](int64_t i) { b.fetch_add(i); });
  });
  t1.join();
  t2.join();
  EXPECT_EQ(a.load(), 50 * 120);
  EXPECT_EQ(b.load(), 50 * 120);
}

TEST(ThreadPool, SplitCount) {
  EXPECT_EQ(split_count(0, 100, 4), 0);
  EXPECT_EQ(split_count(1, 100, 4), 1);
  EXPECT_EQ(split_count(250, 100, 4), 3);
  EXPECT_EQ(split_count(1000, 100, 4), 4);
  EXPECT_EQ(split_count(1000, 100, 0), 1);
}

}  // namespace
}  // namespace pyslim
