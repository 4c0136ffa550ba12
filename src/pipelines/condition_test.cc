#include "pipelines/condition.h"

#include "absl/strings/match.h"
#include "gtest/gtest.h"

namespace kosh::pipelines {
namespace {

class ConditionTest : public ::testing::Test {
 protected:
  bool Eval(const std::string& text, std::vector<int64_t> counts = {}) {
    auto c = Condition::Parse(text);
    EXPECT_TRUE(c.ok()) << text << ": " << c.status();
    if (!c.ok()) return false;
    counts.resize(c->nodes().size(), 0);
    return c->Evaluate(context_, counts);
  }
  std::string Error(const std::string& text) {
    auto c = Condition::Parse(text);
    EXPECT_FALSE(c.ok()) << "accepted: " << text;
    return c.ok() ? "" : std::string(c.status().message());
  }
  google::protobuf::Map<std::string, std::string> context_;
};

TEST_F(ConditionTest, ContextComparisons) {
  context_["segment"] = "new_user";
  context_["age"] = "31";
  context_["empty"] = "";
  EXPECT_TRUE(Eval("context.segment == 'new_user'"));
  EXPECT_TRUE(Eval("context.segment == \"new_user\""));
  EXPECT_FALSE(Eval("context.segment != 'new_user'"));
  EXPECT_TRUE(Eval("context.age > 30 and context.age <= 31"));
  EXPECT_TRUE(Eval("context.age == 31.0"));   // a numeric string compares as a number
  EXPECT_FALSE(Eval("context.segment > 3"));  // not a number: orderings are false
  EXPECT_TRUE(Eval("context.segment != 3"));
  EXPECT_TRUE(Eval("context.missing == ''"));  // absent reads as the empty string
  EXPECT_FALSE(Eval("context.missing"));
  EXPECT_TRUE(Eval("context.segment"));
  EXPECT_TRUE(Eval("has(context.empty) && !has(context.missing)"));
  EXPECT_FALSE(Eval("context.empty"));
  EXPECT_TRUE(Eval("not (context.segment == 'x' or context.age < 18)"));
  EXPECT_TRUE(Eval("context.segment == 'a' || true"));
  EXPECT_TRUE(Eval("'b' > 'a'"));
}

TEST_F(ConditionTest, CountsOfNodes) {
  auto c = Condition::Parse("count(recs) < 5 and count(recent) >= 1 or count(recs) == 42");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->nodes(), (std::vector<std::string>{"recs", "recent"}));
  EXPECT_TRUE(c->Evaluate(context_, std::vector<int64_t>{4, 1}));
  EXPECT_FALSE(c->Evaluate(context_, std::vector<int64_t>{5, 1}));
  EXPECT_FALSE(c->Evaluate(context_, std::vector<int64_t>{4, 0}));
  EXPECT_TRUE(c->Evaluate(context_, std::vector<int64_t>{42, 0}));
  EXPECT_EQ(c->text(), "count(recs) < 5 and count(recent) >= 1 or count(recs) == 42");
}

TEST_F(ConditionTest, ErrorsNameTheOffset) {
  EXPECT_EQ(Error("context.segment = 'x'"), "at offset 16: unexpected character '='");
  EXPECT_EQ(Error("context.segment == 'x"), "at offset 19: unterminated string");
  EXPECT_EQ(Error("segment == 'x'"),
            "at offset 0: unknown name \"segment\" (expected context.NAME, has(context.NAME), count(NODE), a number or "
            "a quoted string)");
  EXPECT_EQ(Error("count recs"), "at offset 6: expected \"(\" after count");
  EXPECT_EQ(Error("count(recs"), "at offset 10: expected \")\" after count(recs");
  EXPECT_EQ(Error("has(segment)"), "at offset 0: has(...) takes context.NAME");
  EXPECT_EQ(Error("context.a.b == 1"), "at offset 0: \"context.a.b\" is not context.NAME");
  EXPECT_EQ(Error("(count(a) > 1"), "at offset 13: expected \")\"");
  EXPECT_EQ(Error("count(a) > 1 )"), "at offset 13: unexpected \")\"");
  EXPECT_EQ(Error(""), "at offset 0: unexpected end of condition");
  EXPECT_EQ(Error("1 =="), "at offset 4: unexpected end of condition");
}

}  // namespace
}  // namespace kosh::pipelines
