#include "datasets/manifest.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <algorithm>
#include <set>

#include "absl/strings/match.h"
#include "absl/strings/strip.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "base/config.h"
#include "base/status.h"
#include "google/protobuf/util/json_util.h"
#include "nlohmann/json.hpp"
#include "storage/sorted_files.h"

namespace kosh::datasets {
namespace {

using Json = nlohmann::ordered_json;

absl::Status Bad(absl::string_view source, absl::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat(source, ": ", what));
}

}  // namespace

uint64_t KeyHash(absl::string_view key) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (char c : key) {
    h ^= static_cast<uint8_t>(c);
    h *= 0x100000001b3ull;
  }
  h ^= h >> 33;
  h *= 0xff51afd7ed558ccdull;
  h ^= h >> 33;
  h *= 0xc4ceb9fe1a85ec53ull;
  h ^= h >> 33;
  return h;
}

void MakeStorageKey(absl::string_view key, std::string* out) {
  uint16_t b = KeyBucket(key);
  out->clear();
  out->reserve(key.size() + 2);
  out->push_back(static_cast<char>(b >> 8));
  out->push_back(static_cast<char>(b & 0xFF));
  out->append(key.data(), key.size());
}

std::string PartialManifestName(uint32_t index, uint32_t count) {
  return absl::StrFormat("manifest.part-%05u-of-%05u.json", index, count);
}

std::string DataFileName(uint32_t partition, uint32_t seq) {
  return absl::StrFormat("part-%05u-%03u.sst", partition, seq);
}

std::string FormatCrc(uint32_t crc) { return absl::StrFormat("crc32c:%08x", crc); }

bool ParseCrc(absl::string_view text, uint32_t* crc) {
  if (!absl::ConsumePrefix(&text, "crc32c:") || text.size() != 8) return false;
  uint64_t v = 0;
  for (char c : text) {
    int d;
    if (c >= '0' && c <= '9') d = c - '0';
    else if (c >= 'a' && c <= 'f') d = c - 'a' + 10;
    else return false;
    v = v * 16 + static_cast<uint64_t>(d);
  }
  *crc = static_cast<uint32_t>(v);
  return true;
}

std::string NowRfc3339() {
  return absl::FormatTime("%Y-%m-%dT%H:%M:%E3SZ", absl::Now(), absl::UTCTimeZone());
}

uint64_t Manifest::total_bytes() const {
  uint64_t b = 0;
  for (const auto& f : files) b += f.bytes;
  return b;
}

std::string ManifestToJson(const Manifest& m) {
  Json j;
  j["format"] = "kosh-dataset";
  j["format_version"] = m.format_version;
  j["dataset"] = m.dataset;
  j["kind"] = std::string(KindName(m.schema.kind));
  Json fields = Json::array();
  for (const auto& f : m.schema.fields) {
    std::string text;
    google::protobuf::util::JsonPrintOptions po;
    po.preserve_proto_field_names = true;
    (void)google::protobuf::util::MessageToJsonString(f, &text, po);
    fields.push_back(Json::parse(text));
  }
  j["fields"] = fields;
  j["partitioning"] = {{"scheme", "fnv1a64-fmix64-bucket16"}, {"partitions", m.partitions}};
  if (m.partition.has_value()) j["partitioning"]["partition"] = *m.partition;
  j["rows"] = m.rows;
  j["key_range"] = {{"min", m.min_key}, {"max", m.max_key}};
  j["content_digest"] = m.content_digest;
  j["label"] = m.label;
  j["built_at"] = m.built_at;
  j["sst"] = {{"compression", m.compression}, {"block_bytes", m.block_bytes}, {"bloom_bits", m.bloom_bits}};
  Json files = Json::array();
  for (const auto& f : m.files) {
    files.push_back({{"name", f.name},
                     {"partition", f.partition},
                     {"rows", f.rows},
                     {"bytes", f.bytes},
                     {"checksum", FormatCrc(f.crc32c)},
                     {"content_checksum", FormatCrc(f.content_crc32c)},
                     {"first_key", f.first_key},
                     {"last_key", f.last_key}});
  }
  j["files"] = files;
  j["build"] = Json::parse(m.build_json, nullptr, false);
  if (j["build"].is_discarded()) j["build"] = Json::object();
  j["input"] = Json::parse(m.input_json, nullptr, false);
  if (j["input"].is_discarded()) j["input"] = Json::object();
  return j.dump(2, ' ', false, Json::error_handler_t::replace) + "\n";
}

absl::StatusOr<Manifest> ManifestFromJson(absl::string_view text, absl::string_view source) {
  Json j;
  try {
    j = Json::parse(text.begin(), text.end());
  } catch (const Json::exception& e) {
    return Bad(source, absl::StrCat("not valid JSON: ", e.what()));
  }
  if (!j.is_object()) return Bad(source, "expected a JSON object");
  Manifest m;
  try {
    if (j.value("format", "") != "kosh-dataset") return Bad(source, "format: not a kosh dataset manifest");
    m.format_version = j.at("format_version").get<uint32_t>();
    if (m.format_version != 1) {
      return Bad(source, absl::StrCat("format_version: ", m.format_version, " is not supported (1)"));
    }
    m.dataset = j.at("dataset").get<std::string>();
    auto kind = ParseKind(j.at("kind").get<std::string>());
    if (!kind.ok()) return Bad(source, absl::StrCat("kind: ", kind.status().message()));
    std::vector<v1::FeatureSpec> fields;
    for (const auto& f : j.value("fields", Json::array())) {
      v1::FeatureSpec spec;
      auto st = google::protobuf::util::JsonStringToMessage(f.dump(), &spec);
      if (!st.ok()) return Bad(source, absl::StrCat("fields: ", std::string(st.message())));
      fields.push_back(std::move(spec));
    }
    auto schema = MakeSchema(*kind, std::move(fields));
    if (!schema.ok()) return Bad(source, schema.status().message());
    m.schema = std::move(*schema);
    const Json& part = j.at("partitioning");
    if (part.value("scheme", "") != "fnv1a64-fmix64-bucket16") return Bad(source, "partitioning.scheme: unsupported");
    m.partitions = part.at("partitions").get<uint32_t>();
    if (m.partitions == 0 || m.partitions > kMaxPartitions) return Bad(source, "partitioning.partitions: out of range");
    if (part.contains("partition")) {
      m.partition = part.at("partition").get<uint32_t>();
      if (*m.partition >= m.partitions) return Bad(source, "partitioning.partition: out of range");
    }
    m.rows = j.at("rows").get<uint64_t>();
    m.min_key = j.at("key_range").value("min", "");
    m.max_key = j.at("key_range").value("max", "");
    m.content_digest = j.value("content_digest", "");
    m.label = j.value("label", "");
    m.built_at = j.value("built_at", "");
    if (j.contains("sst")) {
      m.compression = j["sst"].value("compression", "lz4");
      m.block_bytes = j["sst"].value("block_bytes", 4096u);
      m.bloom_bits = j["sst"].value("bloom_bits", 10u);
    }
    uint64_t rows = 0;
    std::set<std::string> names;
    const Json& files = j.at("files");
    if (!files.is_array()) return Bad(source, "files: expected a list");
    for (size_t i = 0; i < files.size(); ++i) {
      const Json& f = files[i];
      ManifestFile mf;
      mf.name = f.at("name").get<std::string>();
      std::string where = absl::StrCat("files[", i, "]");
      if (mf.name.empty() || mf.name.find('/') != std::string::npos || mf.name[0] == '.') {
        return Bad(source, absl::StrCat(where, ".name: \"", mf.name, "\" is not a plain file name"));
      }
      if (!names.insert(mf.name).second) return Bad(source, absl::StrCat(where, ".name: listed twice"));
      mf.partition = f.at("partition").get<uint32_t>();
      if (mf.partition >= m.partitions) return Bad(source, absl::StrCat(where, ".partition: out of range"));
      mf.rows = f.at("rows").get<uint64_t>();
      mf.bytes = f.at("bytes").get<uint64_t>();
      if (!ParseCrc(f.at("checksum").get<std::string>(), &mf.crc32c)) {
        return Bad(source, absl::StrCat(where, ".checksum: expected crc32c:xxxxxxxx"));
      }
      if (!ParseCrc(f.value("content_checksum", "crc32c:00000000"), &mf.content_crc32c)) {
        return Bad(source, absl::StrCat(where, ".content_checksum: expected crc32c:xxxxxxxx"));
      }
      mf.first_key = f.value("first_key", "");
      mf.last_key = f.value("last_key", "");
      rows += mf.rows;
      m.files.push_back(std::move(mf));
    }
    if (rows != m.rows) {
      return Bad(source, absl::StrCat("rows: ", m.rows, " but the files hold ", rows));
    }
    if (j.contains("build")) m.build_json = j["build"].dump();
    if (j.contains("input")) m.input_json = j["input"].dump();
  } catch (const Json::exception& e) {
    return Bad(source, absl::StrCat("malformed: ", e.what()));
  }
  return m;
}

absl::StatusOr<Manifest> ReadBuildManifest(const std::string& dir) {
  std::error_code ec;
  if (!std::filesystem::is_directory(dir, ec)) {
    return absl::FailedPreconditionError(absl::StrCat(dir, ": not a directory"));
  }
  const std::string full = dir + "/" + kManifestName;
  if (std::filesystem::exists(full, ec)) {
    auto text = base::ReadFile(full);
    if (!text.ok()) return absl::FailedPreconditionError(std::string(text.status().message()));
    auto m = ManifestFromJson(*text, full);
    if (!m.ok()) return absl::FailedPreconditionError(std::string(m.status().message()));
    if (m->partition.has_value()) {
      return absl::FailedPreconditionError(absl::StrCat(full, ": a full manifest must not name one partition"));
    }
    return m;
  }
  // Partial manifests, one per partition.
  std::vector<std::string> names;
  for (const auto& e : std::filesystem::directory_iterator(dir, ec)) {
    std::string name = e.path().filename().string();
    if (absl::StartsWith(name, "manifest.part-") && absl::EndsWith(name, ".json")) names.push_back(name);
  }
  if (ec) return absl::FailedPreconditionError(absl::StrCat(dir, ": ", ec.message()));
  if (names.empty()) {
    return absl::FailedPreconditionError(absl::StrCat(dir, ": no ", kManifestName,
                                                      " (and no partial manifests): the build did not finish"));
  }
  std::sort(names.begin(), names.end());
  std::optional<Manifest> merged;
  std::set<uint32_t> seen;
  for (const auto& name : names) {
    std::string path = dir + "/" + name;
    auto text = base::ReadFile(path);
    if (!text.ok()) return absl::FailedPreconditionError(std::string(text.status().message()));
    auto m = ManifestFromJson(*text, path);
    if (!m.ok()) return absl::FailedPreconditionError(std::string(m.status().message()));
    if (!m->partition.has_value() || name != PartialManifestName(*m->partition, m->partitions)) {
      return absl::FailedPreconditionError(absl::StrCat(path, ": the name does not match its partitioning"));
    }
    if (!merged.has_value()) {
      merged = std::move(*m);
      seen.insert(*merged->partition);
      merged->partition.reset();
      continue;
    }
    if (m->dataset != merged->dataset || !(m->schema == merged->schema) || m->partitions != merged->partitions) {
      return absl::FailedPreconditionError(
          absl::StrCat(path, ": dataset, schema or partition count differs from the other partial manifests"));
    }
    if (!seen.insert(*m->partition).second) {
      return absl::FailedPreconditionError(absl::StrCat(path, ": partition ", *m->partition, " appears twice"));
    }
    if (m->rows > 0) {
      if (merged->rows == 0 || m->min_key < merged->min_key) merged->min_key = m->min_key;
      if (merged->rows == 0 || m->max_key > merged->max_key) merged->max_key = m->max_key;
    }
    merged->rows += m->rows;
    for (auto& f : m->files) merged->files.push_back(std::move(f));
    if (m->built_at > merged->built_at) merged->built_at = m->built_at;
  }
  if (seen.size() != merged->partitions) {
    std::vector<uint32_t> missing;
    for (uint32_t p = 0; p < merged->partitions && missing.size() < 10; ++p) {
      if (!seen.count(p)) missing.push_back(p);
    }
    std::string list;
    for (uint32_t p : missing) absl::StrAppend(&list, list.empty() ? "" : ", ", p);
    return absl::FailedPreconditionError(absl::StrCat(dir, ": ", seen.size(), " of ", merged->partitions,
                                                      " partial manifests present; missing partition(s) ", list));
  }
  std::sort(merged->files.begin(), merged->files.end(),
            [](const ManifestFile& a, const ManifestFile& b) { return a.name < b.name; });
  uint32_t digest = 0;
  for (const auto& f : merged->files) digest = storage::Crc32c(digest, &f.content_crc32c, 4);
  merged->content_digest = FormatCrc(digest);
  return *merged;
}

absl::Status WriteFileAtomic(const std::string& path, absl::string_view content) {
  // Disk full (or over quota) is RESOURCE_EXHAUSTED wherever it strikes: creating, writing, syncing.
  auto error = [](absl::string_view what, const std::string& p, int err) {
    std::string msg = absl::StrCat(what, " ", p, ": ", std::strerror(err));
    return err == ENOSPC || err == EDQUOT ? absl::ResourceExhaustedError(msg) : absl::InternalError(msg);
  };
  std::string tmp = path + ".tmp";
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return error("creating", tmp, errno);
  size_t done = 0;
  while (done < content.size()) {
    ssize_t w = ::write(fd, content.data() + done, content.size() - done);
    if (w < 0) {
      if (errno == EINTR) continue;
      int err = errno;
      ::close(fd);
      ::unlink(tmp.c_str());
      return error("writing", tmp, err);
    }
    done += static_cast<size_t>(w);
  }
  if (::fsync(fd) != 0) {
    int err = errno;
    ::close(fd);
    ::unlink(tmp.c_str());
    return error("syncing", tmp, err);
  }
  ::close(fd);
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    int err = errno;
    ::unlink(tmp.c_str());
    return error("renaming", tmp, err);
  }
  std::string dir = std::filesystem::path(path).parent_path().string();
  return storage::SyncDir(dir.empty() ? "." : dir);
}

}  // namespace kosh::datasets
