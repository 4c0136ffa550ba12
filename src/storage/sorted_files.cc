#include "storage/sorted_files.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "rocksdb/cache.h"
#include "rocksdb/db.h"
#include "rocksdb/filter_policy.h"
#include "rocksdb/metadata.h"
#include "rocksdb/options.h"
#include "rocksdb/sst_file_writer.h"
#include "rocksdb/table.h"
#include "storage/rocksdb_logger.h"

#if defined(__x86_64__)
#include <nmmintrin.h>
#endif

namespace kosh::storage {
namespace {

absl::Status FromRocks(const rocksdb::Status& s, absl::string_view what) {
  if (s.ok()) return absl::OkStatus();
  std::string msg = absl::StrCat(what, ": ", s.ToString());
  if (s.IsNotFound()) return absl::NotFoundError(msg);
  if (s.IsCorruption()) return absl::DataLossError(msg);
  if (s.IsInvalidArgument()) return absl::InvalidArgumentError(msg);
  if (s.IsNoSpace()) return absl::ResourceExhaustedError(msg);
  if (s.IsIOError() && s.ToString().find("No space left") != std::string::npos) {
    return absl::ResourceExhaustedError(msg);
  }
  if (s.IsBusy() || s.IsTimedOut() || s.IsTryAgain()) return absl::UnavailableError(msg);
  return absl::InternalError(msg);
}

absl::Status Errno(absl::string_view what, const std::string& path, int err) {
  std::string msg = absl::StrCat(what, " ", path, ": ", std::strerror(err));
  if (err == ENOENT) return absl::NotFoundError(msg);
  if (err == ENOSPC || err == EDQUOT) return absl::ResourceExhaustedError(msg);
  if (err == EACCES || err == EPERM) return absl::PermissionDeniedError(msg);
  return absl::InternalError(msg);
}

// --- CRC-32C ------------------------------------------------------------------------------------

struct Crc32cTable {
  uint32_t t[256];
  Crc32cTable() {
    for (uint32_t i = 0; i < 256; ++i) {
      uint32_t c = i;
      for (int k = 0; k < 8; ++k) c = (c >> 1) ^ (0x82F63B78u & (0u - (c & 1u)));
      t[i] = c;
    }
  }
};

uint32_t Crc32cPortable(uint32_t crc, const uint8_t* p, size_t n) {
  static const Crc32cTable table;
  for (size_t i = 0; i < n; ++i) crc = table.t[(crc ^ p[i]) & 0xFF] ^ (crc >> 8);
  return crc;
}

#if defined(__x86_64__)
__attribute__((target("sse4.2"))) uint32_t Crc32cHw(uint32_t crc, const uint8_t* p, size_t n) {
  uint64_t c = crc;
  while (n >= 8) {
    uint64_t w;
    std::memcpy(&w, p, 8);
    c = _mm_crc32_u64(c, w);
    p += 8;
    n -= 8;
  }
  uint32_t c32 = static_cast<uint32_t>(c);
  while (n > 0) {
    c32 = _mm_crc32_u8(c32, *p++);
    --n;
  }
  return c32;
}
const bool kHaveSse42 = __builtin_cpu_supports("sse4.2");
#endif

// --- options -------------------------------------------------------------------------------------

rocksdb::CompressionType ToRocks(Compression c) {
  switch (c) {
    case Compression::kNone: return rocksdb::kNoCompression;
    case Compression::kLz4: return rocksdb::kLZ4Compression;
    case Compression::kZstd: return rocksdb::kZSTD;
  }
  return rocksdb::kNoCompression;
}

// The table format shared by the writer and the store, so that the store uses the files' filters.
rocksdb::BlockBasedTableOptions TableOptions(uint32_t block_bytes, int bloom_bits,
                                             std::shared_ptr<rocksdb::Cache> cache) {
  rocksdb::BlockBasedTableOptions t;
  t.block_size = block_bytes;
  if (bloom_bits > 0) t.filter_policy.reset(rocksdb::NewBloomFilterPolicy(bloom_bits));
  t.whole_key_filtering = true;
  t.data_block_index_type = rocksdb::BlockBasedTableOptions::kDataBlockBinaryAndHash;
  // Index and filter blocks live with the table readers (loaded when the store opens), so a
  // lookup never waits for them and the block cache holds data blocks only.
  t.cache_index_and_filter_blocks = false;
  if (cache) {
    t.block_cache = std::move(cache);
  } else {
    t.no_block_cache = true;
  }
  return t;
}

class RocksBlockCache final : public BlockCache {
 public:
  explicit RocksBlockCache(uint64_t capacity) : cache_(rocksdb::NewLRUCache(capacity)) {}
  uint64_t usage() const override { return cache_->GetUsage(); }
  uint64_t capacity() const override { return cache_->GetCapacity(); }
  const std::shared_ptr<rocksdb::Cache>& cache() const { return cache_; }

 private:
  std::shared_ptr<rocksdb::Cache> cache_;
};

rocksdb::Options StoreOptions(const SortedStoreOptions& o) {
  rocksdb::Options opts;
  auto* cache = dynamic_cast<RocksBlockCache*>(o.cache.get());
  opts.table_factory.reset(rocksdb::NewBlockBasedTableFactory(
      TableOptions(4096, o.bloom_bits_per_key, cache ? cache->cache() : nullptr)));
  // The store is immutable: nothing is ever compacted, flushed or written after the ingestion.
  opts.disable_auto_compactions = true;
  opts.max_open_files = -1;  // open every table (index + filter) when the store opens
  opts.info_log_level = rocksdb::InfoLogLevel::WARN_LEVEL;
  opts.avoid_flush_during_shutdown = true;
  opts.skip_stats_update_on_db_open = true;
  opts.stats_dump_period_sec = 0;
  opts.stats_persist_period_sec = 0;
  opts.paranoid_checks = true;
  // Files from SstFileWriter carry no unique id; without this, every open warns about it.
  opts.verify_sst_unique_id_in_manifest = false;
  return opts;
}

class RocksSortedStore final : public SortedStore {
 public:
  RocksSortedStore(std::string dir, std::unique_ptr<rocksdb::DB> db, std::shared_ptr<BlockCache> cache)
      : dir_(std::move(dir)), cache_(std::move(cache)), db_(std::move(db)) {}
  ~RocksSortedStore() override { db_->Close(); }

  absl::Status MultiGet(absl::Span<const absl::string_view> keys,
                        absl::FunctionRef<void(size_t, absl::string_view)> found) override {
    const size_t n = keys.size();
    if (n == 0) return absl::OkStatus();
    constexpr size_t kInline = 16;
    rocksdb::Slice slices_inline[kInline];
    std::vector<rocksdb::Slice> slices_heap;
    rocksdb::Slice* slices = slices_inline;
    if (n > kInline) {
      slices_heap.resize(n);
      slices = slices_heap.data();
    }
    for (size_t i = 0; i < n; ++i) slices[i] = rocksdb::Slice(keys[i].data(), keys[i].size());
    std::vector<rocksdb::PinnableSlice> values(n);
    std::vector<rocksdb::Status> statuses(n);
    db_->MultiGet(rocksdb::ReadOptions(), db_->DefaultColumnFamily(), n, slices, values.data(),
                  statuses.data());
    for (size_t i = 0; i < n; ++i) {
      if (statuses[i].ok()) {
        found(i, absl::string_view(values[i].data(), values[i].size()));
      } else if (!statuses[i].IsNotFound()) {
        return FromRocks(statuses[i], absl::StrCat("reading ", dir_));
      }
    }
    return absl::OkStatus();
  }

  absl::Status Scan(absl::FunctionRef<bool(absl::string_view, absl::string_view)> fn) override {
    std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(rocksdb::ReadOptions()));
    for (it->SeekToFirst(); it->Valid(); it->Next()) {
      if (!fn(absl::string_view(it->key().data(), it->key().size()),
              absl::string_view(it->value().data(), it->value().size()))) {
        break;
      }
    }
    return FromRocks(it->status(), absl::StrCat("scanning ", dir_));
  }

  std::vector<StoredFile> Files() override {
    std::vector<rocksdb::LiveFileMetaData> meta;
    db_->GetLiveFilesMetaData(&meta);
    std::vector<StoredFile> out;
    for (const auto& m : meta) {
      StoredFile f;
      f.name = m.name;
      if (!f.name.empty() && f.name[0] == '/') f.name.erase(0, 1);
      f.bytes = m.size;
      f.entries = m.num_entries;
      f.smallest_key = m.smallestkey;
      f.largest_key = m.largestkey;
      out.push_back(std::move(f));
    }
    std::sort(out.begin(), out.end(),
              [](const StoredFile& a, const StoredFile& b) { return a.smallest_key < b.smallest_key; });
    return out;
  }

  const std::string& dir() const override { return dir_; }

 private:
  std::string dir_;
  std::shared_ptr<BlockCache> cache_;  // outlives db_
  std::unique_ptr<rocksdb::DB> db_;
};

absl::StatusOr<std::unique_ptr<rocksdb::DB>> OpenDb(const std::string& dir, const SortedStoreOptions& o,
                                                    bool create) {
  if (o.cache == nullptr) return absl::InvalidArgumentError("SortedStoreOptions.cache is required");
  rocksdb::Options opts = StoreOptions(o);
  // Warnings and errors go to the process log, not to a LOG file (see NewProcessLogger).
  opts.info_log = NewProcessLogger(absl::StrCat("sorted store ", dir), rocksdb::InfoLogLevel::WARN_LEVEL);
  opts.create_if_missing = create;
  opts.error_if_exists = create;
  rocksdb::DB* raw = nullptr;
  rocksdb::Status s = rocksdb::DB::Open(opts, dir, &raw);
  if (!s.ok()) return FromRocks(s, absl::StrCat("opening sorted store ", dir));
  return std::unique_ptr<rocksdb::DB>(raw);
}

}  // namespace

uint32_t Crc32c(uint32_t crc, const void* data, size_t n) {
  const auto* p = static_cast<const uint8_t*>(data);
  crc = ~crc;
#if defined(__x86_64__)
  if (kHaveSse42) return ~Crc32cHw(crc, p, n);
#endif
  return ~Crc32cPortable(crc, p, n);
}

void IoThrottle::Acquire(uint64_t bytes) {
  if (rate_ == 0 || bytes == 0) return;
  const double burst = std::max<double>(static_cast<double>(rate_) / 10, 64 * 1024);
  int64_t wait_ns = 0;
  {
    absl::MutexLock lock(&mu_);
    int64_t now = absl::GetCurrentTimeNanos();
    if (last_ns_ == 0) {
      last_ns_ = now;
      available_ = burst;
    }
    available_ = std::min(burst, available_ + (now - last_ns_) * 1e-9 * static_cast<double>(rate_));
    last_ns_ = now;
    available_ -= static_cast<double>(bytes);
    if (available_ < 0) wait_ns = static_cast<int64_t>(-available_ / static_cast<double>(rate_) * 1e9);
  }
  if (wait_ns > 0) std::this_thread::sleep_for(std::chrono::nanoseconds(wait_ns));
}

absl::StatusOr<FileDigest> DigestFile(const std::string& path, IoThrottle* throttle, const CancelFn& cancelled,
                                      ReadMode mode) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return Errno("opening", path, errno);
  struct stat sb;
  if (::fstat(fd, &sb) != 0) {
    int err = errno;
    ::close(fd);
    return Errno("stat", path, err);
  }
  const uint64_t size = static_cast<uint64_t>(sb.st_size);
  // No readahead: every read asks the disk for exactly the range it needs, never for a
  // multi-megabyte readahead window.
  ::posix_fadvise(fd, 0, 0, POSIX_FADV_RANDOM);
  // For the modes that read around the cache, a second descriptor with O_DIRECT for the ranges that
  // are not cached. Without it (a filesystem that refuses O_DIRECT) the disk reads go through the
  // cache.
  int dfd = -1;
  if (size > 0 && mode != ReadMode::kCached) dfd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_DIRECT);
  // Which ranges are cached: a read with RWF_NOWAIT returns only bytes the page cache holds (a
  // short read stops at the first page it does not; EAGAIN if that is the first). Unlike the
  // mincore() probe it replaces, it maps nothing into the process (that probe mapped and unmapped
  // every file in the server's address space) and it sees every cached page, also of files the
  // process may not write. Where the kernel or filesystem refuses it, every range counts as not
  // cached.
  bool probe = mode != ReadMode::kDirectOnly;
  const size_t page = static_cast<size_t>(std::max<long>(::sysconf(_SC_PAGESIZE), 4096));
  // Throttled reads go in small steps so that the rate is smooth and a cancel is seen quickly.
  size_t chunk = throttle != nullptr && throttle->rate() > 0
                     ? std::clamp<size_t>(throttle->rate() / 16, 16 << 10, 1 << 20)
                     : 1 << 20;
  chunk = (chunk + page - 1) / page * page;  // O_DIRECT: buffer, offset and length page-aligned
  // Disk reads are smaller: their size is how long another reader may wait behind one of ours. (On
  // this project's virtual disk, 256 KiB reads one at a time still move 0.4-0.6 GB/s; 1 MiB reads
  // from two threads moved ~1 GB/s but raised concurrent 4 KiB reads' p99 from ~1 ms to 7-60 ms.)
  const size_t disk_chunk = std::min<size_t>(chunk, std::max<size_t>(256 << 10, page));
  absl::Mutex* gate = throttle != nullptr ? throttle->disk_gate() : nullptr;
  struct FreeDeleter {
    void operator()(void* p) const { std::free(p); }
  };
  std::unique_ptr<char, FreeDeleter> buf(static_cast<char*>(std::aligned_alloc(page, chunk)));
  FileDigest d;
  absl::Status st;
  if (!buf) st = absl::ResourceExhaustedError(absl::StrCat("reading ", path, ": out of memory"));
  while (st.ok()) {
    if (cancelled && cancelled()) {
      st = absl::CancelledError(absl::StrCat("reading ", path, ": cancelled"));
      break;
    }
    const uint64_t off = d.bytes;
    // The next read: the cached pages from `off` on (up to `chunk`) from the cache; or, if the page
    // at `off` is not cached, `disk_chunk` bytes from the disk (whatever of them is cached: one
    // 256 KiB read costs little more than one 4 KiB read, many small ones cost far more).
    ssize_t r = -1;
    bool done = false;  // `r` holds this step's read
    if (off >= size || off % page != 0) {
      // At the end of the file, or after a short read: no disk read to size.
      r = ::pread(fd, buf.get(), chunk, static_cast<off_t>(off));
      done = true;
    } else if (probe) {
      struct iovec v = {buf.get(), chunk};
      r = ::preadv2(fd, &v, 1, static_cast<off_t>(off), RWF_NOWAIT);
      if (r >= 0 || (errno != EAGAIN && errno != EOPNOTSUPP && errno != EINVAL)) {
        done = true;  // from the cache, or an error reported below
      } else if (errno != EAGAIN) {
        probe = false;  // RWF_NOWAIT refused here: no more probes
      }
    }
    if (!done) {
      const bool direct = dfd >= 0;
      if (gate != nullptr) gate->Lock();
      r = ::pread(direct ? dfd : fd, buf.get(), disk_chunk, static_cast<off_t>(off));
      const int err = errno;
      if (gate != nullptr) gate->Unlock();
      errno = err;
      if (r < 0 && errno == EINVAL && direct) {  // O_DIRECT accepted at open, refused on read
        ::close(dfd);
        dfd = -1;
        continue;
      }
    }
    if (r < 0) {
      if (errno == EINTR) continue;
      st = Errno("reading", path, errno);
      break;
    }
    if (r == 0) break;
    d.crc32c = Crc32c(d.crc32c, buf.get(), static_cast<size_t>(r));
    d.bytes += static_cast<uint64_t>(r);
    if (throttle != nullptr) throttle->Acquire(static_cast<uint64_t>(r));
  }
  if (dfd >= 0) ::close(dfd);
  ::close(fd);
  if (!st.ok()) return st;
  return d;
}

absl::StatusOr<Compression> ParseCompression(absl::string_view name) {
  if (name == "none") return Compression::kNone;
  if (name == "lz4") return Compression::kLz4;
  if (name == "zstd") return Compression::kZstd;
  return absl::InvalidArgumentError(absl::StrCat("unknown compression \"", name, "\" (none, lz4, zstd)"));
}

absl::string_view CompressionName(Compression c) {
  switch (c) {
    case Compression::kNone: return "none";
    case Compression::kLz4: return "lz4";
    case Compression::kZstd: return "zstd";
  }
  return "none";
}

// --- SortedFileWriter ----------------------------------------------------------------------------

struct SortedFileWriter::Rep {
  std::string path;
  rocksdb::Options options;
  std::unique_ptr<rocksdb::SstFileWriter> writer;
  uint64_t entries = 0;
  bool finished = false;
};

SortedFileWriter::SortedFileWriter(std::unique_ptr<Rep> rep) : rep_(std::move(rep)) {}

SortedFileWriter::~SortedFileWriter() {
  if (rep_ && !rep_->finished) {
    rep_->writer.reset();  // abandons the table builder
    std::error_code ec;
    std::filesystem::remove(rep_->path, ec);
  }
}

absl::StatusOr<std::unique_ptr<SortedFileWriter>> SortedFileWriter::Open(const std::string& path,
                                                                        const SortedFileOptions& options) {
  auto rep = std::make_unique<Rep>();
  rep->path = path;
  rep->options.table_factory.reset(rocksdb::NewBlockBasedTableFactory(
      TableOptions(options.block_bytes, options.bloom_bits_per_key, nullptr)));
  rep->options.compression = ToRocks(options.compression);
  rocksdb::EnvOptions env;
  env.bytes_per_sync = 8 << 20;  // write back as we go rather than in one burst at the end
  rep->writer = std::make_unique<rocksdb::SstFileWriter>(env, rep->options);
  rocksdb::Status s = rep->writer->Open(path);
  if (!s.ok()) return FromRocks(s, absl::StrCat("creating ", path));
  return std::unique_ptr<SortedFileWriter>(new SortedFileWriter(std::move(rep)));
}

absl::Status SortedFileWriter::Add(absl::string_view key, absl::string_view value) {
  rocksdb::Status s = rep_->writer->Put(rocksdb::Slice(key.data(), key.size()),
                                        rocksdb::Slice(value.data(), value.size()));
  if (!s.ok()) return FromRocks(s, absl::StrCat("writing ", rep_->path));
  ++rep_->entries;
  return absl::OkStatus();
}

uint64_t SortedFileWriter::entries() const { return rep_->entries; }
uint64_t SortedFileWriter::file_bytes() const { return rep_->writer->FileSize(); }

absl::StatusOr<SortedFileInfo> SortedFileWriter::Finish() {
  if (rep_->entries == 0) return absl::FailedPreconditionError(absl::StrCat(rep_->path, ": no entries"));
  rocksdb::ExternalSstFileInfo info;
  rocksdb::Status s = rep_->writer->Finish(&info);
  if (!s.ok()) return FromRocks(s, absl::StrCat("finishing ", rep_->path));
  auto digest = DigestFile(rep_->path);
  if (!digest.ok()) return digest.status();
  rep_->finished = true;
  SortedFileInfo out;
  out.path = rep_->path;
  out.entries = info.num_entries;
  out.bytes = digest->bytes;
  out.crc32c = digest->crc32c;
  out.smallest_key = info.smallest_key;
  out.largest_key = info.largest_key;
  return out;
}

// --- BlockCache, SortedStore ----------------------------------------------------------------------

std::shared_ptr<BlockCache> BlockCache::New(uint64_t capacity_bytes) {
  return std::make_shared<RocksBlockCache>(capacity_bytes);
}

absl::StatusOr<std::unique_ptr<SortedStore>> SortedStore::Create(const std::string& dir,
                                                                const std::vector<std::string>& files,
                                                                const SortedStoreOptions& options) {
  std::error_code ec;
  if (std::filesystem::exists(dir, ec)) {
    return absl::AlreadyExistsError(absl::StrCat("sorted store ", dir, " already exists"));
  }
  // Made here rather than by RocksDB, which would first log an error about listing a missing dir.
  if (!std::filesystem::create_directory(dir, ec)) {
    return Errno("creating", dir, ec ? ec.value() : EEXIST);
  }
  auto db = OpenDb(dir, options, /*create=*/true);
  if (!db.ok()) {
    std::filesystem::remove_all(dir, ec);
    return db.status();
  }
  if (!files.empty()) {
    rocksdb::IngestExternalFileOptions io;
    io.move_files = true;                      // hard links; the given paths are removed
    io.failed_move_fall_back_to_copy = false;  // callers stage links on this filesystem
    io.snapshot_consistency = false;
    io.allow_global_seqno = true;
    io.allow_blocking_flush = false;
    io.write_global_seqno = false;             // never modify the files (they are shared links)
    io.verify_checksums_before_ingest = false;  // callers verify whole-file checksums first
    rocksdb::Status s = (*db)->IngestExternalFile(files, io);
    if (!s.ok()) {
      (*db)->Close();
      db->reset();
      std::filesystem::remove_all(dir, ec);
      return FromRocks(s, absl::StrCat("ingesting into ", dir));
    }
  }
  absl::Status synced = SyncDir(dir);
  if (!synced.ok()) return synced;
  return std::unique_ptr<SortedStore>(new RocksSortedStore(dir, std::move(*db), options.cache));
}

absl::StatusOr<std::unique_ptr<SortedStore>> SortedStore::Open(const std::string& dir,
                                                              const SortedStoreOptions& options) {
  auto db = OpenDb(dir, options, /*create=*/false);
  if (!db.ok()) return db.status();
  return std::unique_ptr<SortedStore>(new RocksSortedStore(dir, std::move(*db), options.cache));
}

absl::Status SyncDir(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return Errno("opening directory", path, errno);
  int r = ::fsync(fd);
  int err = errno;
  ::close(fd);
  if (r != 0) return Errno("syncing directory", path, err);
  return absl::OkStatus();
}

}  // namespace kosh::storage
