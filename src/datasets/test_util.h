// Helpers shared by the datasets unit tests.
#pragma once

#include <stdlib.h>

#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "datasets/builder.h"
#include "gtest/gtest.h"

namespace kosh::datasets::testing {

class TempDir {
 public:
  TempDir() {
    std::string tmpl = (std::filesystem::temp_directory_path() / "kosh-ds-XXXXXX").string();
    path_ = mkdtemp(tmpl.data());
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  std::string File(const std::string& name) const { return path_ + "/" + name; }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

inline void WriteText(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << text;
}

inline std::string ReadText(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

// "u<i>,<tag><i>:0.5|<i+1>:0.25" rows: recommendation lists whose item ids encode `tag`.
inline std::string RecsCsv(int from, int to, const std::string& tag = "i") {
  std::string s;
  for (int i = from; i < to; ++i) {
    absl::StrAppend(&s, "u", i, ",", tag, i, ":0.5|", tag, "x", i + 1, ":0.25\n");
  }
  return s;
}

inline BuildOptions RecsBuild(const std::string& dataset, std::vector<std::string> inputs, const std::string& out) {
  BuildOptions o;
  o.dataset = dataset;
  o.schema = *MakeSchema(v1::DATASET_KIND_RECS, {});
  o.inputs = std::move(inputs);
  o.output_dir = out;
  o.threads = 2;
  o.memory_budget = 64 << 20;
  return o;
}

inline BuildOptions BytesBuild(const std::string& dataset, std::vector<std::string> inputs, const std::string& out) {
  BuildOptions o = RecsBuild(dataset, std::move(inputs), out);
  o.schema = *MakeSchema(v1::DATASET_KIND_BYTES, {});
  return o;
}

}  // namespace kosh::datasets::testing
