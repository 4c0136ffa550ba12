#include "base/thread_pool.h"

#include <atomic>
#include <memory>

#include "absl/synchronization/notification.h"
#include "base/thread_group.h"
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

TEST(ThreadGroup, WaitBlocksUntilEveryThreadHasEnded) {
  std::atomic<int> ended{0};
  absl::Notification go;
  ThreadGroup group;
  for (int i = 0; i < 4; ++i) {
    ASSERT_TRUE(group.Spawn([&] {
      go.WaitForNotification();
      ended.fetch_add(1);
    }));
  }
  EXPECT_EQ(ended.load(), 0);
  go.Notify();
  group.Wait();
  EXPECT_EQ(ended.load(), 4);
}

TEST(ThreadGroup, WhatAThreadCapturedIsGoneWhenWaitReturns) {
  auto held = std::make_shared<int>(1);
  ThreadGroup group;
  ASSERT_TRUE(group.Spawn([copy = held] { EXPECT_EQ(*copy, 1); }));
  group.Wait();
  EXPECT_EQ(held.use_count(), 1);
}

TEST(ThreadGroup, DestructorWaits) {
  std::atomic<bool> ended{false};
  {
    ThreadGroup group;
    ASSERT_TRUE(group.Spawn([&] {
      absl::SleepFor(absl::Milliseconds(50));
      ended = true;
    }));
  }
  EXPECT_TRUE(ended.load());
}

}  // namespace
}  // namespace kosh::base
