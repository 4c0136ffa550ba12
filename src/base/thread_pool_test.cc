#include "base/thread_pool.h"

#include <atomic>

#include "absl/synchronization/notification.h"
#include "gtest/gtest.h"

namespace kosh::base {
namespace {

TEST(ThreadPool, RunsEveryClosureOnItsThreads) {
  std::atomic<int> ran{0};
  absl::Notification all;
  const std::thread::id me = std::this_thread::get_id();
  std::atomic<bool> on_caller{false};
  {
    ThreadPool pool(3);
    for (int i = 0; i < 100; ++i) {
      pool.Schedule([&] {
        if (std::this_thread::get_id() == me) on_caller = true;
        if (ran.fetch_add(1) + 1 == 100) all.Notify();
      });
    }
    EXPECT_TRUE(all.WaitForNotificationWithTimeout(absl::Seconds(10)));
  }
  EXPECT_EQ(ran.load(), 100);
  EXPECT_FALSE(on_caller.load());
}

TEST(ThreadPool, DestructorFinishesWhatIsQueued) {
  std::atomic<int> ran{0};
  {
    ThreadPool pool(1);
    absl::Notification go;
    pool.Schedule([&] { go.WaitForNotification(); });  // holds the only thread
    for (int i = 0; i < 10; ++i) pool.Schedule([&] { ran.fetch_add(1); });
    go.Notify();
  }  // joins after the queue drains
  EXPECT_EQ(ran.load(), 10);
}

}  // namespace
}  // namespace kosh::base
