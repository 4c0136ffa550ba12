#include "flows/expr.h"

#include <cmath>

#include "absl/strings/match.h"
#include "gtest/gtest.h"

namespace kosh::flows {
namespace {

double Eval(const std::string& text, std::vector<double> in = {}) {
  auto e = Expr::Parse(text);
  EXPECT_TRUE(e.ok()) << text << ": " << e.status();
  if (!e.ok()) return NAN;
  return e->Evaluate(in);
}

TEST(ExprTest, PrecedenceAndAssociativity) {
  EXPECT_DOUBLE_EQ(Eval("1 + 2 * 3"), 7);
  EXPECT_DOUBLE_EQ(Eval("(1 + 2) * 3"), 9);
  EXPECT_DOUBLE_EQ(Eval("10 - 4 - 3"), 3);
  EXPECT_DOUBLE_EQ(Eval("12 / 3 / 2"), 2);
  EXPECT_DOUBLE_EQ(Eval("-2 * -3"), 6);
  EXPECT_DOUBLE_EQ(Eval("2.5e1 + .5"), 25.5);
}

TEST(ExprTest, Functions) {
  EXPECT_DOUBLE_EQ(Eval("log1p(0)"), 0);
  EXPECT_NEAR(Eval("log1p(1)"), std::log(2.0), 1e-12);
  EXPECT_DOUBLE_EQ(Eval("min(3, 1, 2)"), 1);
  EXPECT_DOUBLE_EQ(Eval("max(3, 1 + 5, 2)"), 6);
  EXPECT_DOUBLE_EQ(Eval("abs(-4)"), 4);
  EXPECT_DOUBLE_EQ(Eval("sqrt(16)"), 4);
  // Out-of-domain inputs give 0, not NaN.
  EXPECT_DOUBLE_EQ(Eval("log(0)"), 0);
  EXPECT_DOUBLE_EQ(Eval("sqrt(-1)"), 0);
  EXPECT_DOUBLE_EQ(Eval("1 / 0"), 0);
}

TEST(ExprTest, Comparisons) {
  EXPECT_DOUBLE_EQ(Eval("1 < 2"), 1);
  EXPECT_DOUBLE_EQ(Eval("2 <= 1"), 0);
  EXPECT_DOUBLE_EQ(Eval("3 == 3"), 1);
  EXPECT_DOUBLE_EQ(Eval("3 != 3"), 0);
  EXPECT_DOUBLE_EQ(Eval("1 + 1 >= 2"), 1);
}

TEST(ExprTest, ColumnsInOrderOfFirstUse) {
  auto e = Expr::Parse("product.product_stats.price * 2 + log1p(user.user_profile.age) - product.product_stats.price");
  ASSERT_TRUE(e.ok()) << e.status();
  ASSERT_EQ(e->columns().size(), 2u);
  EXPECT_EQ(e->columns()[0], "product.product_stats.price");
  EXPECT_EQ(e->columns()[1], "user.user_profile.age");
  EXPECT_NEAR(e->Evaluate({10, 3}), 10 * 2 + std::log1p(3.0) - 10, 1e-12);
}

TEST(ExprTest, ErrorsNameTheOffset) {
  struct Case {
    const char* text;
    const char* message;
  };
  for (const Case& c : {Case{"1 +", "expected a number"}, Case{"(1 + 2", "expected \")\""},
                        Case{"foo(1)", "unknown function \"foo\""}, Case{"min(1)", "two or more"},
                        Case{"log1p(1, 2)", "one argument"}, Case{"1 $ 2", "unexpected"},
                        Case{"", "expected a number"}}) {
    auto e = Expr::Parse(c.text);
    ASSERT_FALSE(e.ok()) << c.text;
    EXPECT_EQ(e.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_TRUE(absl::StrContains(e.status().message(), c.message)) << c.text << ": " << e.status();
    EXPECT_TRUE(absl::StrContains(e.status().message(), "offset")) << e.status();
  }
}

TEST(ExprTest, DeepNestingIsRejectedNotACrash) {
  std::string text(1000, '-');
  text += "1";
  auto e = Expr::Parse(text);
  ASSERT_FALSE(e.ok());
  EXPECT_TRUE(absl::StrContains(e.status().message(), "nested too deeply"));
}

}  // namespace
}  // namespace kosh::flows
