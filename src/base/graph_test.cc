#include "base/graph.h"

#include "gtest/gtest.h"

namespace kosh::base {
namespace {

using V = std::vector<int>;

TEST(TopologicalLevels, LevelsInOrder) {
  // 0 and 3 have no dependencies; 1 needs 0; 2 needs 1 and 3.
  TopoLevels t = TopologicalLevels({{}, {0}, {1, 3}, {}});
  EXPECT_TRUE(t.cycle.empty());
  ASSERT_EQ(t.levels.size(), 3u);
  EXPECT_EQ(t.levels[0], (V{0, 3}));
  EXPECT_EQ(t.levels[1], (V{1}));
  EXPECT_EQ(t.levels[2], (V{2}));
}

TEST(TopologicalLevels, NamesOneCycleInDependencyOrder) {
  // 0 is fine; 1 -> 2 -> 3 -> 1 (1 depends on 3, 2 on 1, 3 on 2); 4 depends on the cycle.
  TopoLevels t = TopologicalLevels({{}, {0, 3}, {1}, {2}, {3}});
  ASSERT_EQ(t.levels.size(), 1u);
  EXPECT_EQ(t.levels[0], (V{0}));
  ASSERT_EQ(t.cycle.size(), 4u);
  EXPECT_EQ(t.cycle.front(), t.cycle.back());
  // Each element is a dependency of the next.
  const std::vector<V> deps = {{}, {0, 3}, {1}, {2}, {3}};
  for (size_t i = 0; i + 1 < t.cycle.size(); ++i) {
    const V& d = deps[t.cycle[i + 1]];
    EXPECT_NE(std::find(d.begin(), d.end(), t.cycle[i]), d.end()) << i;
  }
}

TEST(TopologicalLevels, SelfLoop) {
  TopoLevels t = TopologicalLevels({{0}});
  EXPECT_TRUE(t.levels.empty());
  EXPECT_EQ(t.cycle, (V{0, 0}));
}

}  // namespace
}  // namespace kosh::base
