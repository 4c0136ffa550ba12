// Builders shared by the interaction-store end-to-end tests.
#pragma once

#include <chrono>
#include <string>
#include <vector>

#include "e2e_test_util.h"
#include "kosh/v1/interactions.grpc.pb.h"

namespace kosh::e2e {

using IS = v1::Interactions::Stub;

inline int64_t NowMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

inline v1::Event Event(const std::string& user, const std::string& type, const std::string& item, int64_t ts) {
  v1::Event e;
  e.set_user_id(user);
  e.set_type(type);
  e.set_item_id(item);
  e.set_timestamp_ms(ts);
  return e;
}

inline v1::WriteRequest MakeWrite(const std::vector<v1::Event>& events) {
  v1::WriteRequest r;
  for (const auto& e : events) *r.add_events() = e;
  return r;
}

inline v1::LastKRequest MakeLastK(const std::vector<std::string>& users, const std::vector<std::string>& types,
                                  uint32_t k, bool merge = false) {
  v1::LastKRequest r;
  for (const auto& u : users) r.add_user_ids(u);
  for (const auto& t : types) r.add_types(t);
  r.set_k(k);
  r.set_merge_types(merge);
  return r;
}

inline v1::WindowRequest MakeWindow(const std::vector<std::string>& users, const std::vector<std::string>& types,
                                    int64_t within_ms, uint32_t limit = 0, bool merge = false) {
  v1::WindowRequest r;
  for (const auto& u : users) r.add_user_ids(u);
  for (const auto& t : types) r.add_types(t);
  r.mutable_range()->set_within_ms(within_ms);
  r.set_limit(limit);
  r.set_merge_types(merge);
  return r;
}

inline v1::CountRequest MakeCount(const std::vector<std::string>& users, const std::vector<std::string>& types,
                                  int64_t within_ms = 0) {
  v1::CountRequest r;
  for (const auto& u : users) r.add_user_ids(u);
  for (const auto& t : types) r.add_types(t);
  r.mutable_range()->set_within_ms(within_ms);
  return r;
}

// The item ids of a history, newest first.
inline std::vector<std::string> ItemIds(const v1::History& h) { return {h.item_ids().begin(), h.item_ids().end()}; }

}  // namespace kosh::e2e
