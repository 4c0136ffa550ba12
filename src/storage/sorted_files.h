// Sorted immutable files and the read-only store opened from them: the storage half of datasets.
//
// A SortedFileWriter writes one sorted file (a RocksDB SST written with SstFileWriter) from keys
// added in strictly increasing byte order; Finish reports its size, entry count, key range and a
// CRC-32C of the file's bytes. A SortedStore is a fresh RocksDB instance in its own directory that
// has ingested a set of such files (hard links, no copy) and is then only read: point lookups,
// batched lookups, stats. Nothing here exposes RocksDB types; like rocksdb_engine.cc, this is the
// only place that includes RocksDB headers for these files.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/types/span.h"

namespace kosh::storage {

// CRC-32C (Castagnoli, the iSCSI polynomial) of `n` bytes, continuing from `crc` (0 to start).
// Uses the SSE4.2 instruction when the CPU has it. Thread-safe.
uint32_t Crc32c(uint32_t crc, const void* data, size_t n);

// The disk budget of one background job (a load), shared by its threads:
//  - a rate: Acquire(n) returns once n more bytes may be transferred at the configured rate
//    (bursts up to 1/10 s worth of bytes); 0 = unlimited;
//  - a depth: DigestFile(kDirect) holds disk_gate() around each read that goes to the disk, so the
//    job never has more than one read at the device however many threads it runs (reads served
//    from the page cache run in parallel). Other readers of the disk then wait behind at most one
//    of the job's reads.
class IoThrottle {
 public:
  explicit IoThrottle(uint64_t bytes_per_second) : rate_(bytes_per_second) {}
  void Acquire(uint64_t bytes);
  uint64_t rate() const { return rate_; }
  absl::Mutex* disk_gate() { return &gate_; }

 private:
  const uint64_t rate_;
  absl::Mutex gate_;
  absl::Mutex mu_;
  double available_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t last_ns_ ABSL_GUARDED_BY(mu_) = 0;
};

// Returns true when the operation should stop (e.g. the request was cancelled).
using CancelFn = std::function<bool()>;

struct FileDigest {
  uint64_t bytes = 0;
  uint32_t crc32c = 0;
};

// How DigestFile reads. In both modes readahead is off; ranges already in the page cache are read
// from it in 1 MiB steps (no I/O), the others in 256 KiB steps (smaller when throttled), one at a
// time per IoThrottle (see there), so at most 256 KiB of a pass over gigabytes is ever queued at the
// disk ahead of other readers. (The kernel's sequential readahead queued megabytes; the datasets
// section of docs/benchmarks.md shows what that did to readers' latency.)
enum class ReadMode {
  // Disk reads go through the page cache: the file's pages are cached afterwards (warming).
  kCached,
  // Disk reads use O_DIRECT: the pass neither fills nor churns the page cache. Falls back to kCached
  // where the filesystem refuses O_DIRECT.
  kDirect,
  // Every read uses O_DIRECT, cached or not: the pass never touches the file's cached pages. For a
  // pass over files that readers are reading at the same time (a pass through their cached pages
  // raised the readers' p99 2-3x; docs/benchmarks.md, "Datasets"). Falls back to kCached where the
  // filesystem refuses O_DIRECT.
  kDirectOnly,
};

// Reads the whole file at `path` and returns its size and CRC-32C. NOT_FOUND if it does not exist,
// CANCELLED if `cancelled` returns true between reads, other errors name the path. `throttle` may
// be null.
absl::StatusOr<FileDigest> DigestFile(const std::string& path, IoThrottle* throttle = nullptr,
                                      const CancelFn& cancelled = nullptr, ReadMode mode = ReadMode::kCached);

enum class Compression { kNone, kLz4, kZstd };
// "none", "lz4", "zstd"; INVALID_ARGUMENT otherwise.
absl::StatusOr<Compression> ParseCompression(absl::string_view name);
absl::string_view CompressionName(Compression c);

struct SortedFileOptions {
  Compression compression = Compression::kLz4;  // kept per block only when it saves >= 12.5%
  uint32_t block_bytes = 4096;                  // data block size (point lookups read one block)
  int bloom_bits_per_key = 10;                  // ~1% false positives; 0 disables the filter
};

struct SortedFileInfo {
  std::string path;
  uint64_t entries = 0;
  uint64_t bytes = 0;
  uint32_t crc32c = 0;  // of the file's bytes, as DigestFile computes it
  std::string smallest_key;
  std::string largest_key;
};

// Writes one sorted file. Not thread-safe (one writer per thread).
class SortedFileWriter {
 public:
  // Creates (truncating) the file at `path`.
  static absl::StatusOr<std::unique_ptr<SortedFileWriter>> Open(const std::string& path,
                                                                const SortedFileOptions& options);
  // An unfinished file is removed.
  ~SortedFileWriter();

  // Keys must be strictly increasing in byte order (INVALID_ARGUMENT otherwise).
  absl::Status Add(absl::string_view key, absl::string_view value);
  uint64_t entries() const;
  // Bytes written so far (approximate until Finish).
  uint64_t file_bytes() const;
  // Writes the index and filter, fsyncs and closes the file, then reads it back to checksum it.
  // At least one entry must have been added.
  absl::StatusOr<SortedFileInfo> Finish();

 private:
  struct Rep;
  explicit SortedFileWriter(std::unique_ptr<Rep> rep);
  std::unique_ptr<Rep> rep_;
};

// A byte-bounded LRU cache of data blocks that several stores share.
class BlockCache {
 public:
  static std::shared_ptr<BlockCache> New(uint64_t capacity_bytes);
  virtual ~BlockCache() = default;
  virtual uint64_t usage() const = 0;
  virtual uint64_t capacity() const = 0;
};

struct SortedStoreOptions {
  std::shared_ptr<BlockCache> cache;  // required
  int bloom_bits_per_key = 10;        // must name the same filter family the files were written with
};

// One sorted file as the store holds it.
struct StoredFile {
  std::string name;  // inside the store directory
  uint64_t bytes = 0;
  uint64_t entries = 0;
  std::string smallest_key;
  std::string largest_key;
};

// A read-only set of sorted files. Thread-safe: any number of readers.
class SortedStore {
 public:
  // Creates a new store in directory `dir` (which must not exist yet) and ingests `files`, which
  // must be on the same filesystem as `dir` and must not overlap in key range (files written from
  // one sorted stream, or from disjoint key ranges). The files are hard-linked into the store and
  // the given paths are removed: pass links made for the purpose. Disk-full is RESOURCE_EXHAUSTED.
  static absl::StatusOr<std::unique_ptr<SortedStore>> Create(const std::string& dir,
                                                            const std::vector<std::string>& files,
                                                            const SortedStoreOptions& options);
  // Opens a store that Create made earlier.
  static absl::StatusOr<std::unique_ptr<SortedStore>> Open(const std::string& dir,
                                                          const SortedStoreOptions& options);
  virtual ~SortedStore() = default;

  // Looks up `keys`; calls found(i, value) for each key i that is present (the view is valid only
  // during the call). Missing keys are not reported. Errors (I/O, corruption) fail the whole call.
  virtual absl::Status MultiGet(absl::Span<const absl::string_view> keys,
                                absl::FunctionRef<void(size_t, absl::string_view)> found) = 0;
  // Calls fn for every entry in key order until it returns false (tests and tools).
  virtual absl::Status Scan(absl::FunctionRef<bool(absl::string_view, absl::string_view)> fn) = 0;
  // The files the store serves from, in key order.
  virtual std::vector<StoredFile> Files() = 0;
  virtual const std::string& dir() const = 0;
};

// fsyncs the directory at `path` (so that renames and links inside it are durable).
absl::Status SyncDir(const std::string& path);

}  // namespace kosh::storage
