// Small builders shared by the end-to-end tests: typed values, keys, requests and expected rows.
#pragma once

#include <initializer_list>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "harness.h"
#include "kosh/v1/feature_store.pb.h"
#include "kosh/v1/registry.pb.h"
#include "kosh/v1/types.pb.h"

namespace kosh::e2e {

inline v1::Value Bool(bool b) {
  v1::Value v;
  v.set_bool_value(b);
  return v;
}
inline v1::Value I32(int32_t x) {
  v1::Value v;
  v.set_int32_value(x);
  return v;
}
inline v1::Value I64(int64_t x) {
  v1::Value v;
  v.set_int64_value(x);
  return v;
}
inline v1::Value F32(float x) {
  v1::Value v;
  v.set_float32_value(x);
  return v;
}
inline v1::Value F64(double x) {
  v1::Value v;
  v.set_float64_value(x);
  return v;
}
inline v1::Value Str(const std::string& s) {
  v1::Value v;
  v.set_string_value(s);
  return v;
}
inline v1::Value Bytes(const std::string& s) {
  v1::Value v;
  v.set_bytes_value(s);
  return v;
}
inline v1::Value FList(std::initializer_list<float> xs) {
  v1::Value v;
  auto* l = v.mutable_float_list();
  for (float x : xs) l->add_values(x);
  return v;
}
inline v1::Value IList(std::initializer_list<int32_t> xs) {
  v1::Value v;
  auto* l = v.mutable_int32_list();
  for (int32_t x : xs) l->add_values(x);
  return v;
}
inline v1::Value I64List(std::initializer_list<int64_t> xs) {
  v1::Value v;
  auto* l = v.mutable_int64_list();
  for (int64_t x : xs) l->add_values(x);
  return v;
}

inline v1::EntityKey Key(const std::vector<std::string>& parts) {
  v1::EntityKey k;
  for (const auto& p : parts) k.add_parts(p);
  return k;
}

inline v1::FeatureSpec Spec(const std::string& name, v1::FeatureType type, uint32_t len = 0) {
  v1::FeatureSpec f;
  f.set_name(name);
  f.set_type(type);
  f.set_vector_length(len);
  return f;
}
inline v1::FeatureSpec SpecWithDefault(const std::string& name, v1::FeatureType type, const v1::Value& def,
                                       uint32_t len = 0) {
  v1::FeatureSpec f = Spec(name, type, len);
  *f.mutable_default_value() = def;
  return f;
}

inline v1::Entity MakeEntity(const std::string& name, const std::vector<std::string>& key_columns) {
  v1::Entity e;
  e.set_name(name);
  for (const auto& k : key_columns) e.add_key_columns(k);
  return e;
}

inline v1::CreateFeatureGroupRequest MakeGroup(const std::string& entity, const std::string& name,
                                               const std::vector<v1::FeatureSpec>& features,
                                               int64_t ttl_seconds = 0) {
  v1::CreateFeatureGroupRequest r;
  r.set_entity(entity);
  r.set_name(name);
  r.set_ttl_seconds(ttl_seconds);
  for (const auto& f : features) *r.add_features() = f;
  return r;
}

inline v1::RetrieveRequest MakeRetrieve(const std::string& entity, const std::vector<std::vector<std::string>>& keys,
                                        const std::vector<std::string>& features) {
  v1::RetrieveRequest r;
  r.set_entity(entity);
  for (const auto& k : keys) *r.add_keys() = Key(k);
  for (const auto& f : features) r.add_features(f);
  return r;
}

struct RowSpec {
  std::vector<std::string> key;
  std::vector<v1::Value> values;
};
inline v1::PersistRequest MakePersist(const std::string& entity, const std::string& group,
                                      const std::vector<RowSpec>& rows, const std::vector<std::string>& features = {},
                                      uint32_t version = 0) {
  v1::PersistRequest r;
  r.set_entity(entity);
  r.set_group(group);
  r.set_version(version);
  for (const auto& f : features) r.add_features(f);
  for (const auto& row : rows) {
    auto* pr = r.add_rows();
    *pr->mutable_key() = Key(row.key);
    for (const auto& v : row.values) *pr->add_values() = v;
  }
  return r;
}

inline void AddColumn(v1::RetrieveResponse* r, const std::string& group, const std::string& feature,
                      v1::FeatureType type, uint32_t len = 0) {
  auto* c = r->add_columns();
  c->set_group(group);
  c->set_feature(feature);
  c->set_type(type);
  c->set_vector_length(len);
}
inline void AddRow(v1::RetrieveResponse* r, const std::vector<v1::Value>& values,
                   const std::vector<v1::ValueStatus>& statuses) {
  auto* row = r->add_rows();
  for (const auto& v : values) *row->add_values() = v;
  for (auto s : statuses) row->add_statuses(s);
}

// gtest-friendly check of a gRPC status: code and a substring of the message.
inline ::testing::AssertionResult IsError(const grpc::Status& s, grpc::StatusCode code,
                                          const std::string& substring = "") {
  if (s.error_code() == code && s.error_message().find(substring) != std::string::npos) {
    return ::testing::AssertionSuccess();
  }
  return ::testing::AssertionFailure() << "expected " << CodeName(code) << " containing \"" << substring
                                       << "\", got " << CodeName(s.error_code()) << ": \"" << s.error_message()
                                       << "\"";
}
inline ::testing::AssertionResult IsOk(const grpc::Status& s) {
  if (s.ok()) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << "expected OK, got " << CodeName(s.error_code()) << ": \""
                                       << s.error_message() << "\"";
}

// An HTTP error response: status, the JSON error body's code and a substring of its message.
inline ::testing::AssertionResult IsHttpError(const HttpResponse& r, int status, const std::string& code,
                                              const std::string& substring = "") {
  if (!r.ok()) return ::testing::AssertionFailure() << "no HTTP response: " << r.error;
  ErrorBody e = ParseErrorBody(r.body);
  if (r.status == status && e.code == code && e.message.find(substring) != std::string::npos &&
      r.content_type == "application/json") {
    return ::testing::AssertionSuccess();
  }
  return ::testing::AssertionFailure() << "expected HTTP " << status << " " << code << " containing \""
                                       << substring << "\", got " << r.status << " (" << r.content_type
                                       << "): " << r.body;
}
inline ::testing::AssertionResult IsHttpOk(const HttpResponse& r) {
  if (r.ok() && r.status == 200) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << "expected HTTP 200, got " << (r.ok() ? std::to_string(r.status) : r.error)
                                       << ": " << r.body;
}

// POSTs `req` as proto3 JSON and parses the 200 response into `resp`.
inline ::testing::AssertionResult HttpRpc(const KoshServer& server, const std::string& path,
                                          const google::protobuf::Message& req, google::protobuf::Message* resp,
                                          const Headers& headers = {}) {
  HttpResponse r = server.Post(path, ToJson(req), headers);
  auto ok = IsHttpOk(r);
  if (!ok) return ok;
  return ParseJson(r.body, resp);
}

}  // namespace kosh::e2e
