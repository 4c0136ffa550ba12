#pragma once

#include <functional>
#include <memory>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"

namespace kosh::base {

// Threads started one per long-running call (a dataset load), each ending on its own; Wait() and
// the destructor block until every one has ended. The count lives in state shared with the
// threads, so the last one can finish unlocking while the group is being destroyed.
class ThreadGroup {
 public:
  ThreadGroup() = default;
  ~ThreadGroup() { Wait(); }
  ThreadGroup(const ThreadGroup&) = delete;
  ThreadGroup& operator=(const ThreadGroup&) = delete;

  // Runs `fn` on a new thread; `fn` and what it captured are destroyed before the thread counts
  // as ended. False if no thread could be started (the system's limit); then `fn` does not run.
  bool Spawn(std::function<void()> fn);
  // Blocks until every thread spawned so far has ended.
  void Wait();

 private:
  struct State {
    absl::Mutex mu;
    int running ABSL_GUARDED_BY(mu) = 0;
  };
  std::shared_ptr<State> state_ = std::make_shared<State>();
};

}  // namespace kosh::base
