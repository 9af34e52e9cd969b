// Fork-join parallelism for the CPU kernels, on one of two backends:
//   * torch's own OpenMP runtime (the libgomp that torch already loaded), when the Python layer hands it over
//     with use_openmp_runtime(): pyslim's tasks then run on the very threads torch's intra-op ops use, so
//     the two never compete for cores (two pools on a 2-core machine each spin while the other works);
//   * otherwise a small pool of our own (C++ programs, tests, or no usable runtime). pyslim never loads an
//     OpenMP runtime itself.
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

// Makes parallel_for run on the OpenMP runtime at `library_path` if, and only if, that library is already
// loaded in this process (dlopen RTLD_NOLOAD) and exports GOMP_parallel (libgomp, and LLVM's / Intel's
// runtimes through their GOMP compatibility layer). Returns whether it did; on false the backend is unchanged.
bool use_openmp_runtime(const char* library_path);
// Back to pyslim's own pool.
void use_own_pool();
// "openmp" or "own".
const char* parallel_backend();

// Number of tasks to split `work` items into so that each has at least `grain` items.
static inline int64_t split_count(int64_t work, int64_t grain, int num_threads) {
  if (work <= 0) return 0;
  int64_t tasks = (work + grain - 1) / grain;
  if (tasks > num_threads) tasks = num_threads;
  return tasks < 1 ? 1 : tasks;
}

}  // namespace pyslim
