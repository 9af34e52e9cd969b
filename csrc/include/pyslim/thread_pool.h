// A small fork-join pool of our own, so that pyslim never brings a second OpenMP runtime beside torch's.
// The caller passes the thread count for each call (the Python layer passes torch.get_num_threads()
// unless the user set one with pyslim.set_num_threads).
#pragma once

#include <cstdint>
#include <functional>

namespace pyslim {

// Runs fn(task) for task in [0, num_tasks) on up to num_threads threads (the caller's thread included)
// and returns when all tasks are done. Safe to call from several threads at once (calls serialise on the
// pool; a call made from inside a task runs inline).
void parallel_for(int64_t num_tasks, int num_threads, const std::function<void(int64_t)>& fn);

// Number of tasks to split `work` items into so that each has at least `grain` items.
static inline int64_t split_count(int64_t work, int64_t grain, int num_threads) {
  if (work <= 0) return 0;
  int64_t tasks = (work + grain - 1) / grain;
  if (tasks > num_threads) tasks = num_threads;
  return tasks < 1 ? 1 : tasks;
}

}  // namespace pyslim
