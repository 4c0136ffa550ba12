#include "base/thread_group.h"

#include <system_error>
#include <thread>

namespace kosh::base {

bool ThreadGroup::Spawn(std::function<void()> fn) {
  std::shared_ptr<State> state = state_;
  {
    absl::MutexLock l(&state->mu);
    ++state->running;
  }
  try {
    std::thread([state, fn = std::move(fn)]() mutable {
      fn();
      fn = nullptr;  // what it captured goes before Wait() can return
      absl::MutexLock l(&state->mu);
      --state->running;
    }).detach();
    return true;
  } catch (const std::system_error&) {
    absl::MutexLock l(&state->mu);
    --state->running;
    return false;
  }
}

void ThreadGroup::Wait() {
  State* s = state_.get();
  absl::MutexLock l(&s->mu);
  s->mu.Await(absl::Condition(+[](State* st) ABSL_EXCLUSIVE_LOCKS_REQUIRED(st->mu) { return st->running == 0; }, s));
}

}  // namespace kosh::base
