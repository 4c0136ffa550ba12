#include "server/options.h"

#include "base/config.h"
#include "gtest/gtest.h"

namespace kosh::server {
namespace {

absl::StatusOr<ServerOptions> Parse(const std::string& yaml) {
  auto node = base::ParseYaml(yaml, "test.yaml");
  if (!node.ok()) return node.status();
  return ParseServerOptions(*node);
}

TEST(ServerOptions, DefaultsWithEmptyConfig) {
  auto o = Parse("");
  ASSERT_TRUE(o.ok()) << o.status();
  EXPECT_EQ(o->grpc_address, "0.0.0.0:7070");
  EXPECT_EQ(o->http_address, "0.0.0.0:7080");
  EXPECT_EQ(o->storage.path, "./data");
  EXPECT_TRUE(o->storage.sync_writes);
  EXPECT_FALSE(o->auth.enabled);
  EXPECT_EQ(o->features.max_keys_per_request, 1000u);
}

TEST(ServerOptions, ParsesEveryKnownSection) {
  auto o = Parse(R"(
server: {grpc_address: "127.0.0.1:0", http_address: "127.0.0.1:9", http_threads: 3, grace_period: 2s,
         max_message_bytes: 1MiB, port_file: /tmp/p}
storage: {path: /tmp/x, sync_writes: false, block_cache: 8MiB, write_buffer: 4MiB, background_jobs: 3}
features: {cache: 64MiB, max_keys_per_request: 10, max_rows_per_write: 20, max_string_bytes: 1KiB}
schema: {files: [a.yaml, b.yaml]}
auth:
  enabled: true
  tokens:
    - {name: r, token: "read-token-1", scopes: [read]}
    - {name: a, token: "admin-token-1", scopes: [admin, write]}
log: {level: debug}
)");
  ASSERT_TRUE(o.ok()) << o.status();
  EXPECT_EQ(o->http_threads, 3);
  EXPECT_EQ(o->grace_period_ms, 2000);
  EXPECT_EQ(o->max_message_bytes, 1u << 20);
  EXPECT_EQ(o->storage.path, "/tmp/x");
  EXPECT_FALSE(o->storage.sync_writes);
  EXPECT_EQ(o->storage.block_cache_bytes, 8u << 20);
  EXPECT_EQ(o->features.cache_bytes, 64u << 20);
  EXPECT_EQ(o->features.max_keys_per_request, 10u);
  EXPECT_EQ(o->features.codec.max_string_bytes, 1024u);
  EXPECT_EQ(o->schema_files.size(), 2u);
  ASSERT_EQ(o->auth.tokens.size(), 2u);
  EXPECT_EQ(o->auth.tokens[0].second.scopes, static_cast<uint8_t>(Scope::kRead));
  EXPECT_EQ(o->log_level, "debug");
}

TEST(ServerOptions, ErrorsNameThePath) {
  struct Case {
    const char* yaml;
    const char* expect;
  } cases[] = {
      {"server: {prot: 1}", "server.prot"},
      {"storage: {path: [1]}", "storage.path"},
      {"server: {grpc_address: nohost}", "server.grpc_address"},
      {"server: {http_threads: 0}", "server.http_threads"},
      {"features: {cache: lots}", "features.cache"},
      {"auth: {enabled: true}", "auth.tokens"},
      {"auth: {tokens: [{token: short, scopes: [read]}]}", "auth.tokens[0].token"},
      {"auth: {tokens: [{token: long-enough, scopes: [root]}]}", "auth.tokens[0].scopes[0]"},
      {"bogus: 1", "bogus"},
  };
  for (const auto& c : cases) {
    auto o = Parse(c.yaml);
    ASSERT_FALSE(o.ok()) << c.yaml;
    EXPECT_NE(o.status().message().find(c.expect), std::string::npos)
        << c.yaml << " -> " << o.status().message();
  }
}

TEST(ServerOptions, FamilySectionsAreKeptForTheirFamilies) {
  auto o = Parse("interactions: {hot_budget: 1GiB}\ndatasets: {root: /d}");
  ASSERT_TRUE(o.ok()) << o.status();
  ASSERT_TRUE(o->interactions.IsMap());
  EXPECT_EQ(o->interactions["hot_budget"].as<std::string>(), "1GiB");
  EXPECT_EQ(o->datasets["root"].as<std::string>(), "/d");
  EXPECT_FALSE(o->flows.IsDefined() && !o->flows.IsNull());
}

TEST(ServerOptions, FlagsOverrideConfig) {
  auto o = Parse("storage: {path: /from/config}");
  ASSERT_TRUE(o.ok());
  ASSERT_TRUE(ApplyFlags({"--data-dir", "/from/flag", "--grpc-address=127.0.0.1:0", "--schema", "s.yaml",
                          "--grace-period", "500ms", "--sync-writes", "false"},
                         &*o)
                  .ok());
  EXPECT_EQ(o->storage.path, "/from/flag");
  EXPECT_EQ(o->grpc_address, "127.0.0.1:0");
  EXPECT_EQ(o->schema_files, std::vector<std::string>{"s.yaml"});
  EXPECT_EQ(o->grace_period_ms, 500);
  EXPECT_FALSE(o->storage.sync_writes);
  EXPECT_FALSE(ApplyFlags({"--nope", "1"}, &*o).ok());
  EXPECT_FALSE(ApplyFlags({"--data-dir"}, &*o).ok());
  EXPECT_FALSE(ApplyFlags({"--sync-writes", "maybe"}, &*o).ok());
}

TEST(ServerOptions, RegistryBackend) {
  auto d = Parse("");
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_EQ(d->registry_store.backend, RegistryStoreOptions::Backend::kEmbedded);  // the default
  auto o = Parse(R"(
registry:
  backend: zookeeper
  zookeeper: {hosts: "10.0.0.1:2181,10.0.0.2:2181", root: /kosh/prod, session_timeout: 6s, connect_timeout: 750ms}
)");
  ASSERT_TRUE(o.ok()) << o.status();
  EXPECT_EQ(o->registry_store.backend, RegistryStoreOptions::Backend::kZooKeeper);
  EXPECT_EQ(o->registry_store.zookeeper.hosts, "10.0.0.1:2181,10.0.0.2:2181");
  EXPECT_EQ(o->registry_store.zookeeper.root, "/kosh/prod");
  EXPECT_EQ(o->registry_store.zookeeper.session_timeout_ms, 6000);
  EXPECT_EQ(o->registry_store.zookeeper.connect_timeout_ms, 750);
  struct Case {
    const char* yaml;
    const char* expect;
  } cases[] = {
      {"registry: {backend: etcd}", "registry.backend"},
      {"registry: {backned: zookeeper}", "registry.backned"},
      {"registry: {zookeeper: {hostz: a}}", "registry.zookeeper.hostz"},
      {"registry: {zookeeper: {hosts: \"nohost\"}}", "registry.zookeeper.hosts"},
      {"registry: {zookeeper: {root: kosh}}", "registry.zookeeper.root"},
      {"registry: {zookeeper: {session_timeout: 1ms}}", "registry.zookeeper.session_timeout"},
      {"registry: {zookeeper: {connect_timeout: soon}}", "registry.zookeeper.connect_timeout"},
      {"registry: [1]", "registry"},
  };
  for (const auto& c : cases) {
    auto bad = Parse(c.yaml);
    ASSERT_FALSE(bad.ok()) << c.yaml;
    EXPECT_NE(bad.status().message().find(c.expect), std::string::npos) << c.yaml << " -> " << bad.status().message();
  }
  ASSERT_TRUE(ApplyFlags({"--registry-zookeeper", "127.0.0.1:2181"}, &*d).ok());
  EXPECT_EQ(d->registry_store.backend, RegistryStoreOptions::Backend::kZooKeeper);
  EXPECT_EQ(d->registry_store.zookeeper.hosts, "127.0.0.1:2181");
  EXPECT_FALSE(ApplyFlags({"--registry-zookeeper", ""}, &*d).ok());
}

TEST(ServerOptions, EnvironmentSubstitution) {
  setenv("KOSH_TEST_DIR", "/env/dir", 1);
  auto o = Parse("storage: {path: \"${KOSH_TEST_DIR}\"}\nlog: {level: \"${KOSH_UNSET_LEVEL:-warn}\"}");
  ASSERT_TRUE(o.ok()) << o.status();
  EXPECT_EQ(o->storage.path, "/env/dir");
  EXPECT_EQ(o->log_level, "warn");
}

}  // namespace
}  // namespace kosh::server
