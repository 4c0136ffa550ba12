#include "base/config.h"

#include <map>

#include "gtest/gtest.h"

namespace kosh::base {
namespace {

std::optional<std::string> Env(const std::string& name) {
  static const std::map<std::string, std::string> env = {{"PORT", "9000"}, {"EMPTY", ""}};
  auto it = env.find(name);
  if (it == env.end()) return std::nullopt;
  return it->second;
}

TEST(ExpandEnv, SubstitutesSetVariables) {
  auto r = ExpandEnv("port: ${PORT}\n", Env);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(*r, "port: 9000\n");
}

TEST(ExpandEnv, DefaultAppliesWhenUnsetOrEmpty) {
  EXPECT_EQ(*ExpandEnv("${NOPE:-7}", Env), "7");
  EXPECT_EQ(*ExpandEnv("${EMPTY:-x}", Env), "x");
  EXPECT_EQ(*ExpandEnv("${PORT:-1}", Env), "9000");
  EXPECT_EQ(*ExpandEnv("${NOPE:-}", Env), "");
}

TEST(ExpandEnv, DollarEscapesAndPlainDollars) {
  EXPECT_EQ(*ExpandEnv("a$$b $x", Env), "a$b $x");
}

TEST(ExpandEnv, UnsetWithoutDefaultNamesVariableAndLine) {
  auto r = ExpandEnv("a: 1\nb: ${MISSING_VAR}\n", Env);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(r.status().message().find("MISSING_VAR"), std::string::npos);
  EXPECT_NE(r.status().message().find("line 2"), std::string::npos);
}

TEST(ExpandEnv, CommentLinesAreLeftAlone) {
  EXPECT_EQ(*ExpandEnv("  # token: ${UNSET_TOKEN}\na: ${PORT}", Env), "  # token: ${UNSET_TOKEN}\na: 9000");
}

TEST(ExpandEnv, UnterminatedIsAnError) {
  EXPECT_FALSE(ExpandEnv("x: ${PORT\n}", Env).ok());
  EXPECT_FALSE(ExpandEnv("x: ${bad-name}", Env).ok());
}

TEST(ParseYaml, SyntaxErrorNamesLine) {
  auto r = ParseYaml("a: [1, 2\nb: 3\n", "test.yaml");
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("test.yaml"), std::string::npos);
  EXPECT_NE(r.status().message().find("line"), std::string::npos);
}

TEST(Units, DurationsAndSizes) {
  EXPECT_EQ(*ParseDurationMs("500ms"), 500);
  EXPECT_EQ(*ParseDurationMs("30s"), 30000);
  EXPECT_EQ(*ParseDurationMs("2m"), 120000);
  EXPECT_EQ(*ParseDurationMs("1h"), 3600000);
  EXPECT_EQ(*ParseDurationMs("3"), 3000);
  EXPECT_FALSE(ParseDurationMs("soon").ok());
  EXPECT_FALSE(ParseDurationMs("-1s").ok());
  EXPECT_EQ(*ParseBytes("64MiB"), 64ull << 20);
  EXPECT_EQ(*ParseBytes("1GiB"), 1ull << 30);
  EXPECT_EQ(*ParseBytes("4096"), 4096u);
  EXPECT_FALSE(ParseBytes("lots").ok());
}

TEST(YamlReader, TypedGettersNameThePath) {
  auto node = ParseYaml("server:\n  port: abc\n  threads: 4\n  grace: 5s\n", "t");
  ASSERT_TRUE(node.ok());
  YamlReader root(*node, "");
  auto server = root.Child("server");
  ASSERT_TRUE(server.ok());
  int64_t port = 1;
  auto st = server->GetInt("port", &port);
  EXPECT_FALSE(st.ok());
  EXPECT_NE(st.message().find("server.port"), std::string::npos);
  EXPECT_EQ(port, 1);  // untouched on error
  int64_t threads = 0, grace = 0;
  EXPECT_TRUE(server->GetInt("threads", &threads).ok());
  EXPECT_EQ(threads, 4);
  EXPECT_TRUE(server->GetDurationMs("grace", &grace).ok());
  EXPECT_EQ(grace, 5000);
  int64_t absent = 42;
  EXPECT_TRUE(server->GetInt("absent", &absent).ok());
  EXPECT_EQ(absent, 42);
}

TEST(YamlReader, UnknownKeysAreRejected) {
  auto node = ParseYaml("server:\n  prot: 1\n", "t");
  YamlReader root(*node, "");
  auto server = root.Child("server");
  auto st = server->CheckKeys({"port", "threads"});
  ASSERT_FALSE(st.ok());
  EXPECT_NE(st.message().find("server.prot"), std::string::npos);
}

}  // namespace
}  // namespace kosh::base
