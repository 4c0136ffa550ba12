#include "pipelines/node.h"

#include "absl/strings/str_cat.h"

namespace kosh::pipelines {

absl::Status NodeRegistry::Register(NodeType type) {
  if (type.name.empty() || type.build == nullptr) {
    return absl::InvalidArgumentError("node type: a name and a factory are required");
  }
  for (char c : type.name) {
    if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_')) {
      return absl::InvalidArgumentError(absl::StrCat("node type \"", type.name, "\": use [a-z0-9_]"));
    }
  }
  if (type.max_inputs < type.min_inputs) {
    return absl::InvalidArgumentError(absl::StrCat("node type \"", type.name, "\": max_inputs < min_inputs"));
  }
  std::string name = type.name;
  if (!types_.emplace(name, std::move(type)).second) {
    return absl::InvalidArgumentError(absl::StrCat("node type \"", name, "\" is registered twice"));
  }
  return absl::OkStatus();
}

const NodeType* NodeRegistry::Find(const std::string& name) const {
  auto it = types_.find(name);
  return it == types_.end() ? nullptr : &it->second;
}

std::string NodeRegistry::Names() const {
  std::string out;
  for (const auto& [name, t] : types_) absl::StrAppend(&out, out.empty() ? "" : ", ", name);
  return out;
}

}  // namespace kosh::pipelines
