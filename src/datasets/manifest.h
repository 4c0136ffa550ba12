// The output of `kosh dataset build`: a directory of sorted partitioned files plus a manifest, and
// the key partitioning they share with the server. docs/formats.md ("Dataset build output")
// documents every field.
//
// Storage keys are [2-byte bucket, big-endian][key bytes] with bucket = KeyHash(key) >> 48, and
// partition p of N holds the buckets b with b * N >> 16 == p. So partitions are disjoint key ranges
// (their files never overlap, so a loaded version needs no compaction), every partition holds a
// uniform share of the keys whatever the key distribution, and a batch job can route a key to its
// partition with a few lines of code (docs/operations.md shows them in Python).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "datasets/value_codec.h"

namespace kosh::datasets {

// FNV-1a 64 of the key bytes, then the MurmurHash3 64-bit finaliser (fmix64).
uint64_t KeyHash(absl::string_view key);
inline uint16_t KeyBucket(absl::string_view key) { return static_cast<uint16_t>(KeyHash(key) >> 48); }
inline uint32_t PartitionOfBucket(uint32_t bucket, uint32_t partitions) {
  return static_cast<uint32_t>((static_cast<uint64_t>(bucket) * partitions) >> 16);
}
inline uint32_t PartitionOf(absl::string_view key, uint32_t partitions) {
  return PartitionOfBucket(KeyBucket(key), partitions);
}
// Appends the storage key of `key` to *out (after clearing it).
void MakeStorageKey(absl::string_view key, std::string* out);
// The user key inside a storage key (empty if too short).
inline absl::string_view UserKey(absl::string_view storage_key) {
  return storage_key.size() < 2 ? absl::string_view() : storage_key.substr(2);
}

constexpr uint32_t kMaxPartitions = 4096;
constexpr const char* kManifestName = "manifest.json";
// "manifest.part-00003-of-00016.json": the manifest of one partition built on its own.
std::string PartialManifestName(uint32_t index, uint32_t count);
// "part-00003-007.sst": file 7 of partition 3.
std::string DataFileName(uint32_t partition, uint32_t seq);

struct ManifestFile {
  std::string name;         // relative to the build directory
  uint32_t partition = 0;
  uint64_t rows = 0;
  uint64_t bytes = 0;
  uint32_t crc32c = 0;          // of the file's bytes
  uint32_t content_crc32c = 0;  // of its (key, value) sequence: equal for equal content
  std::string first_key;        // user keys of its first and last entries (storage-key order)
  std::string last_key;
};

struct Manifest {
  uint32_t format_version = 1;
  std::string dataset;
  ValueSchema schema;
  uint32_t partitions = 0;
  std::optional<uint32_t> partition;  // set for a one-partition build (--partition i/N)
  uint64_t rows = 0;
  std::string min_key;  // smallest and largest user key in byte order ("" when empty)
  std::string max_key;
  std::vector<ManifestFile> files;
  std::string label;
  std::string built_at;  // RFC 3339 UTC
  // CRC-32C over the files' content_crc32c in file order: two builds of the same rows (and the same
  // partition count) have the same digest, whatever the threads, memory budget or input split.
  std::string content_digest;
  // Written with these, so a reader can check that it understands them.
  std::string compression = "lz4";
  uint32_t block_bytes = 4096;
  uint32_t bloom_bits = 10;
  // Free-form JSON objects, stored verbatim: how the build ran and what it read.
  std::string build_json = "{}";
  std::string input_json = "{}";

  uint64_t total_bytes() const;
};

// Pretty-printed JSON. Keys that are not valid UTF-8 cannot occur (the builder rejects them).
std::string ManifestToJson(const Manifest& m);
// INVALID_ARGUMENT naming `source` and the field for anything malformed or unsupported.
absl::StatusOr<Manifest> ManifestFromJson(absl::string_view text, absl::string_view source);

// Reads the manifest(s) of a build directory: manifest.json, or a complete set of partial
// manifests (one per partition, all of the same dataset, schema and partition count), merged into
// one. FAILED_PRECONDITION explains what is missing or inconsistent.
absl::StatusOr<Manifest> ReadBuildManifest(const std::string& dir);

// Writes `content` to `path` atomically: a temporary file, fsync, rename, fsync of the directory.
absl::Status WriteFileAtomic(const std::string& path, absl::string_view content);

// CRC-32C printed as "crc32c:0123abcd" and parsed back.
std::string FormatCrc(uint32_t crc);
bool ParseCrc(absl::string_view text, uint32_t* crc);

// Now as RFC 3339 UTC with milliseconds, e.g. "2024-05-01T12:00:00.123Z".
std::string NowRfc3339();

}  // namespace kosh::datasets
