#include "datasets/builder.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <filesystem>
#include <mutex>
#include <queue>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "base/status.h"
#include "nlohmann/json.hpp"

namespace kosh::datasets {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;
using Json = nlohmann::ordered_json;

constexpr int kLineBits = 40;
constexpr uint64_t kLineMask = (uint64_t{1} << kLineBits) - 1;
constexpr size_t kMaxLineBytes = 64u << 20;

double Since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

absl::Status Errno(absl::string_view what, const std::string& path, int err) {
  std::string msg = absl::StrCat(what, " ", path, ": ", std::strerror(err));
  if (err == ENOSPC || err == EDQUOT) return absl::ResourceExhaustedError(msg);
  if (err == ENOENT) return absl::NotFoundError(msg);
  return absl::InternalError(msg);
}

// The first error wins; everyone checks `failed` and stops.
class Failure {
 public:
  void Set(absl::Status s) {
    std::lock_guard<std::mutex> lock(mu_);
    if (status_.ok()) status_ = std::move(s);
    failed_.store(true, std::memory_order_release);
  }
  bool failed() const { return failed_.load(std::memory_order_acquire); }
  absl::Status status() {
    std::lock_guard<std::mutex> lock(mu_);
    return status_;
  }

 private:
  std::atomic<bool> failed_{false};
  std::mutex mu_;
  absl::Status status_;
};

// A row error with its position, kept so that the report lists the earliest ones.
struct RowError {
  uint64_t seq;
  std::string message;
};

// Keeps the `limit` errors with the smallest sequence numbers.
class ErrorList {
 public:
  explicit ErrorList(size_t limit) : limit_(limit) {}
  void Add(uint64_t seq, std::string message) {
    if (limit_ == 0) return;
    if (errors_.size() == limit_ && seq >= errors_.back().seq) return;
    auto it = std::upper_bound(errors_.begin(), errors_.end(), seq,
                               [](uint64_t s, const RowError& e) { return s < e.seq; });
    errors_.insert(it, RowError{seq, std::move(message)});
    if (errors_.size() > limit_) errors_.pop_back();
  }
  void Merge(const ErrorList& other) {
    for (const auto& e : other.errors_) Add(e.seq, e.message);
  }
  const std::vector<RowError>& errors() const { return errors_; }

 private:
  size_t limit_;
  std::vector<RowError> errors_;
};

// --- chunks -------------------------------------------------------------------------------------

struct Chunk {
  uint32_t file = 0;
  uint64_t first_line = 0;
  std::string data;
  std::shared_ptr<const ColumnMap> columns;
};

class ChunkQueue {
 public:
  ChunkQueue(size_t capacity, int producers) : capacity_(capacity), producers_(producers) {}
  // False when the build failed (the chunk is dropped).
  bool Push(Chunk c, const Failure& failure) {
    std::unique_lock<std::mutex> lock(mu_);
    while (!(q_.size() < capacity_ || failure.failed())) not_full_.wait_for(lock, std::chrono::milliseconds(50));
    if (failure.failed()) return false;
    q_.push_back(std::move(c));
    not_empty_.notify_one();
    return true;
  }
  // False when every producer is done and the queue is empty, or the build failed.
  bool Pop(Chunk* c, const Failure& failure) {
    std::unique_lock<std::mutex> lock(mu_);
    while (!(!q_.empty() || producers_ == 0 || failure.failed())) {
      not_empty_.wait_for(lock, std::chrono::milliseconds(50));
    }
    if (failure.failed() || q_.empty()) return false;
    *c = std::move(q_.front());
    q_.pop_front();
    not_full_.notify_one();
    return true;
  }
  void ProducerDone() {
    std::lock_guard<std::mutex> lock(mu_);
    --producers_;
    not_empty_.notify_all();
  }

 private:
  std::mutex mu_;
  std::condition_variable not_empty_, not_full_;
  std::deque<Chunk> q_;
  size_t capacity_;
  int producers_;
};

// --- sort buffers and runs --------------------------------------------------------------------------

// Records: [u32 key length][u32 value length][u64 seq][storage key][value], indexed by entries
// carrying the first 8 key bytes (big-endian) so most comparisons never touch the arena.
struct Entry {
  uint64_t prefix;
  uint64_t offset;
};

uint64_t KeyPrefix(absl::string_view k) {
  uint64_t p = 0;
  size_t n = std::min<size_t>(8, k.size());
  for (size_t i = 0; i < n; ++i) p |= static_cast<uint64_t>(static_cast<uint8_t>(k[i])) << (56 - 8 * i);
  return p;
}

class SortBuffer {
 public:
  explicit SortBuffer(size_t limit) : limit_(limit) {}

  void Add(absl::string_view key, uint64_t seq, absl::string_view value) {
    if (arena_.capacity() == 0) arena_.reserve(limit_ + (1 << 16));
    uint64_t off = arena_.size();
    uint32_t kl = static_cast<uint32_t>(key.size()), vl = static_cast<uint32_t>(value.size());
    arena_.resize(off + 16 + kl + vl);
    char* p = arena_.data() + off;
    std::memcpy(p, &kl, 4);
    std::memcpy(p + 4, &vl, 4);
    std::memcpy(p + 8, &seq, 8);
    std::memcpy(p + 16, key.data(), kl);
    std::memcpy(p + 16 + kl, value.data(), vl);
    entries_.push_back({KeyPrefix(key), off});
  }
  size_t bytes() const { return arena_.size() + entries_.size() * sizeof(Entry); }
  bool full() const { return bytes() >= limit_; }
  bool empty() const { return entries_.empty(); }

  absl::string_view Key(const Entry& e) const {
    uint32_t kl;
    std::memcpy(&kl, arena_.data() + e.offset, 4);
    return absl::string_view(arena_.data() + e.offset + 16, kl);
  }
  absl::string_view Value(const Entry& e) const {
    uint32_t kl, vl;
    std::memcpy(&kl, arena_.data() + e.offset, 4);
    std::memcpy(&vl, arena_.data() + e.offset + 4, 4);
    return absl::string_view(arena_.data() + e.offset + 16 + kl, vl);
  }
  const char* Record(const Entry& e) const { return arena_.data() + e.offset; }
  uint64_t Seq(const Entry& e) const {
    uint64_t s;
    std::memcpy(&s, arena_.data() + e.offset + 8, 8);
    return s;
  }

  void Sort() {
    std::sort(entries_.begin(), entries_.end(), [this](const Entry& a, const Entry& b) {
      if (a.prefix != b.prefix) return a.prefix < b.prefix;
      int c = Key(a).compare(Key(b));
      if (c != 0) return c < 0;
      return Seq(a) < Seq(b);
    });
  }
  void Clear() {
    arena_.clear();
    entries_.clear();
  }
  const std::vector<Entry>& entries() const { return entries_; }

 private:
  size_t limit_;
  std::string arena_;
  std::vector<Entry> entries_;
};

// The first entry of partition p in a sorted buffer: partitions are bucket ranges, buckets are the
// first two key bytes, i.e. the top 16 bits of the prefix.
uint64_t FirstPrefixOf(uint32_t p, uint32_t partitions) {
  // Smallest bucket b with b * N >> 16 >= p is ceil(p * 65536 / N).
  uint64_t b = (static_cast<uint64_t>(p) * 65536 + partitions - 1) / partitions;
  return b << 48;
}

// A spilled run: records [varint key length][varint value length][u64 seq][key][value] grouped by
// partition; part_off[p]..part_off[p+1] is partition p's section.
struct RunFile {
  std::string path;
  int fd = -1;
  std::vector<uint64_t> part_off;
  uint64_t bytes = 0;
  ~RunFile() {
    if (fd >= 0) ::close(fd);
    if (!path.empty()) ::unlink(path.c_str());
  }
};

class RunWriter {
 public:
  static absl::StatusOr<std::unique_ptr<RunWriter>> Create(const std::string& path, uint32_t partitions) {
    int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0) return Errno("creating spill file", path, errno);
    auto w = std::unique_ptr<RunWriter>(new RunWriter());
    w->run_ = std::make_unique<RunFile>();
    w->run_->path = path;
    w->run_->fd = fd;
    w->run_->part_off.assign(partitions + 1, 0);
    w->partitions_ = partitions;
    w->buf_.reserve(1 << 20);
    return w;
  }
  // Records must come in partition order.
  absl::Status Add(uint32_t partition, absl::string_view key, uint64_t seq, absl::string_view value) {
    while (next_part_ <= partition) run_->part_off[next_part_++] = offset_ + buf_.size();
    PutVarint(&buf_, key.size());
    PutVarint(&buf_, value.size());
    buf_.append(reinterpret_cast<const char*>(&seq), 8);
    buf_.append(key.data(), key.size());
    buf_.append(value.data(), value.size());
    if (buf_.size() >= (1 << 20)) return Flush();
    return absl::OkStatus();
  }
  absl::StatusOr<std::unique_ptr<RunFile>> Finish() {
    RETURN_IF_ERROR(Flush());
    while (next_part_ <= partitions_) run_->part_off[next_part_++] = offset_;
    run_->bytes = offset_;
    return std::move(run_);
  }

 private:
  RunWriter() = default;
  absl::Status Flush() {
    size_t done = 0;
    while (done < buf_.size()) {
      ssize_t w = ::write(run_->fd, buf_.data() + done, buf_.size() - done);
      if (w < 0) {
        if (errno == EINTR) continue;
        return Errno("writing spill file", run_->path, errno);
      }
      done += static_cast<size_t>(w);
    }
    offset_ += buf_.size();
    buf_.clear();
    return absl::OkStatus();
  }
  std::unique_ptr<RunFile> run_;
  uint32_t partitions_ = 0;
  uint32_t next_part_ = 0;
  uint64_t offset_ = 0;
  std::string buf_;
};

// --- cursors ------------------------------------------------------------------------------------

class Cursor {
 public:
  virtual ~Cursor() = default;
  // Moves to the next record; valid() is false past the end.
  virtual absl::Status Next() = 0;
  bool valid() const { return valid_; }
  absl::string_view key() const { return key_; }
  absl::string_view value() const { return value_; }
  uint64_t seq() const { return seq_; }

 protected:
  bool valid_ = false;
  absl::string_view key_, value_;
  uint64_t seq_ = 0;
};

class MemCursor final : public Cursor {
 public:
  MemCursor(const SortBuffer* buf, size_t begin, size_t end) : buf_(buf), i_(begin), end_(end) {}
  absl::Status Next() override {
    if (i_ >= end_) {
      valid_ = false;
      return absl::OkStatus();
    }
    const auto& es = buf_->entries();
    // The records sit at random places in the arena: fetch a few ahead while merging.
    if (i_ + 8 < end_) __builtin_prefetch(buf_->Record(es[i_ + 8]));
    const Entry& e = es[i_++];
    key_ = buf_->Key(e);
    value_ = buf_->Value(e);
    seq_ = buf_->Seq(e);
    valid_ = true;
    return absl::OkStatus();
  }

 private:
  const SortBuffer* buf_;
  size_t i_, end_;
};

class FileCursor final : public Cursor {
 public:
  FileCursor(const RunFile* run, uint64_t begin, uint64_t end, size_t buffer_bytes)
      : run_(run), pos_(begin), end_(end), buf_(std::max<size_t>(buffer_bytes, 64), '\0') {}

  absl::Status Next() override {
    // The record header is at most 28 bytes; make sure it is buffered (or the section ends).
    RETURN_IF_ERROR(Ensure(28));
    if (avail() == 0) {
      valid_ = false;
      return absl::OkStatus();
    }
    absl::string_view in(buf_.data() + head_, avail());
    uint64_t kl, vl;
    if (!GetVarint(&in, &kl) || !GetVarint(&in, &vl) || in.size() < 8) return Corrupt();
    size_t header = avail() - in.size() + 8;
    RETURN_IF_ERROR(Ensure(header + kl + vl));
    if (avail() < header + kl + vl) return Corrupt();
    const char* p = buf_.data() + head_;
    std::memcpy(&seq_, p + header - 8, 8);
    key_ = absl::string_view(p + header, kl);
    value_ = absl::string_view(p + header + kl, vl);
    head_ += header + kl + vl;
    valid_ = true;
    return absl::OkStatus();
  }

 private:
  size_t avail() const { return tail_ - head_; }
  absl::Status Corrupt() {
    return absl::DataLossError(absl::StrCat("spill file ", run_->path, " is corrupt"));
  }
  // Makes at least `n` bytes available unless the section ends first. Invalidates views into the
  // buffer (callers take them after).
  absl::Status Ensure(size_t n) {
    if (avail() >= n || pos_ >= end_) return absl::OkStatus();
    if (head_ > 0) {
      std::memmove(buf_.data(), buf_.data() + head_, avail());
      tail_ -= head_;
      head_ = 0;
    }
    if (buf_.size() < n) buf_.resize(n);
    while (avail() < n && pos_ < end_) {
      size_t want = std::min<uint64_t>(buf_.size() - tail_, end_ - pos_);
      ssize_t r = ::pread(run_->fd, buf_.data() + tail_, want, static_cast<off_t>(pos_));
      if (r < 0) {
        if (errno == EINTR) continue;
        return Errno("reading spill file", run_->path, errno);
      }
      if (r == 0) return Corrupt();
      tail_ += static_cast<size_t>(r);
      pos_ += static_cast<uint64_t>(r);
    }
    return absl::OkStatus();
  }

  const RunFile* run_;
  uint64_t pos_, end_;
  std::string buf_;
  size_t head_ = 0, tail_ = 0;
};

// Merges cursors in (key, seq) order.
class Merger {
 public:
  explicit Merger(std::vector<std::unique_ptr<Cursor>> cursors) : cursors_(std::move(cursors)) {}
  absl::Status Init() {
    for (auto& c : cursors_) {
      RETURN_IF_ERROR(c->Next());
      if (c->valid()) heap_.push(c.get());
    }
    return absl::OkStatus();
  }
  bool done() const { return heap_.empty(); }
  Cursor* top() const { return heap_.top(); }
  absl::Status Advance() {
    Cursor* c = heap_.top();
    heap_.pop();
    RETURN_IF_ERROR(c->Next());
    if (c->valid()) heap_.push(c);
    return absl::OkStatus();
  }

 private:
  struct Greater {
    bool operator()(const Cursor* a, const Cursor* b) const {
      int c = a->key().compare(b->key());
      if (c != 0) return c > 0;
      return a->seq() > b->seq();
    }
  };
  std::vector<std::unique_ptr<Cursor>> cursors_;
  std::priority_queue<Cursor*, std::vector<Cursor*>, Greater> heap_;
};

// --- the build ----------------------------------------------------------------------------------------

struct PartitionOutput {
  std::vector<ManifestFile> files;
  uint64_t rows = 0;
  std::string min_key, max_key;
};

class BuildJob {
 public:
  BuildJob(const BuildOptions& o, BuildReport* r) : o_(o), report_(r), errors_(o.max_reported_errors) {}

  absl::Status Run();

 private:
  absl::Status Prepare();
  void Produce(int producer);
  void Work(int worker);
  absl::Status Spill(SortBuffer* buf);
  absl::Status IntermediateMerges();
  absl::Status MergeRunGroup(const std::vector<const RunFile*>& group, std::unique_ptr<RunFile>* out);
  void WritePartitions();
  absl::Status WritePartition(uint32_t p, PartitionOutput* out);
  std::vector<std::unique_ptr<Cursor>> CursorsFor(uint32_t p, const std::vector<const RunFile*>& runs,
                                                  bool with_memory, size_t buffer_bytes);
  std::string Where(uint64_t seq) const {
    return absl::StrCat(o_.inputs[seq >> kLineBits], ":", seq & kLineMask);
  }
  void AddError(uint64_t seq, std::string message) {
    std::lock_guard<std::mutex> lock(errors_mu_);
    errors_.Add(seq, std::move(message));
  }
  void Cleanup();

  const BuildOptions& o_;
  BuildReport* report_;
  ParserOptions parser_;
  storage::SortedFileOptions sst_;
  int threads_ = 1;
  uint32_t partitions_ = 16;
  size_t chunk_bytes_ = 0;
  size_t buffer_limit_ = 0;
  std::string tmp_dir_;
  bool created_output_ = false;

  Failure failure_;
  std::unique_ptr<ChunkQueue> queue_;
  std::atomic<uint32_t> next_file_{0};
  std::shared_ptr<const ColumnMap> default_columns_;

  std::atomic<uint64_t> input_bytes_{0}, file_bytes_{0}, lines_{0}, bad_rows_{0}, other_rows_{0};
  std::atomic<uint64_t> duplicates_{0}, duplicate_errors_{0}, spill_bytes_{0};
  std::atomic<uint64_t> run_seq_{0};
  std::atomic<bool> over_budget_{false};  // more malformed rows than allowed: the build fails
  std::mutex errors_mu_;
  ErrorList errors_;
  std::vector<std::string> input_compression_;
  std::vector<uint64_t> input_file_bytes_;

  std::mutex runs_mu_;
  std::vector<std::unique_ptr<RunFile>> runs_;
  std::vector<std::unique_ptr<SortBuffer>> tails_;  // sorted in-memory tails, one per worker

  std::mutex outputs_mu_;
  std::vector<std::string> written_files_;  // removed on failure
  std::vector<PartitionOutput> outputs_;
  std::atomic<uint32_t> next_partition_{0};
  size_t merge_buffer_bytes_ = 0;
};

absl::Status BuildJob::Prepare() {
  if (o_.dataset.empty()) return absl::InvalidArgumentError("dataset: a name is required");
  if (o_.inputs.empty()) return absl::InvalidArgumentError("inputs: no input files");
  if (o_.output_dir.empty()) return absl::InvalidArgumentError("output: a directory is required");
  if (o_.schema.kind == v1::DATASET_KIND_UNSPECIFIED) return absl::InvalidArgumentError("kind: required");
  if (o_.partitions == 0 || o_.partitions > kMaxPartitions) {
    return absl::InvalidArgumentError(absl::StrCat("partitions: expected 1 to ", kMaxPartitions));
  }
  if (o_.partition.has_value() && *o_.partition >= o_.partitions) {
    return absl::InvalidArgumentError(absl::StrCat("partition: ", *o_.partition, " is not below ", o_.partitions));
  }
  if (o_.memory_budget < (256u << 10)) return absl::InvalidArgumentError("memory: at least 256KiB");
  if (o_.inputs.size() >= (size_t{1} << (64 - kLineBits))) return absl::InvalidArgumentError("inputs: too many files");
  if (o_.max_fan_in < 2) return absl::InvalidArgumentError("max_fan_in: at least 2");
  partitions_ = o_.partitions;
  sst_ = o_.sst;
  sst_.compression = o_.compression.value_or(o_.schema.kind == v1::DATASET_KIND_RECS ? storage::Compression::kNone
                                                                                     : storage::Compression::kLz4);
  parser_ = o_.parser;
  parser_.schema = o_.schema;
  if (o_.format.has_value()) {
    parser_.format = *o_.format;
  } else {
    auto f = FormatFromName(o_.inputs[0]);
    if (!f.has_value()) {
      return absl::InvalidArgumentError(absl::StrCat("format: cannot tell the format of ", o_.inputs[0],
                                                     " from its name; give --format csv|tsv|jsonl"));
    }
    parser_.format = *f;
  }
  if (parser_.format == InputFormat::kJsonl && parser_.header) {
    return absl::InvalidArgumentError("header: JSON Lines input has no header line");
  }
  for (const auto& in : o_.inputs) {
    std::error_code ec;
    if (!fs::is_regular_file(in, ec)) return absl::NotFoundError(absl::StrCat("input ", in, ": no such file"));
  }
  if (!parser_.header || parser_.format == InputFormat::kJsonl) {
    ASSIGN_OR_RETURN(ColumnMap m, MakeColumnMap(parser_, std::nullopt));
    default_columns_ = std::make_shared<const ColumnMap>(std::move(m));
  }

  threads_ = o_.threads > 0 ? o_.threads : static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  threads_ = std::min(threads_, 256);
  chunk_bytes_ = std::clamp<size_t>(o_.memory_budget / (8 * (3 * threads_ + 1)), 16 << 10, 8 << 20);
  buffer_limit_ = std::max<size_t>(64 << 10, static_cast<size_t>(o_.memory_budget * 0.6 / threads_));

  // The output directory: created if needed, and it must not hold the files this build writes.
  std::error_code ec;
  if (!fs::exists(o_.output_dir, ec)) {
    fs::create_directories(o_.output_dir, ec);
    if (ec) return absl::InternalError(absl::StrCat("creating ", o_.output_dir, ": ", ec.message()));
    created_output_ = true;
  }
  for (const auto& e : fs::directory_iterator(o_.output_dir, ec)) {
    std::string name = e.path().filename().string();
    bool conflict = name == kManifestName;
    if (o_.partition.has_value()) {
      conflict = conflict || name == PartialManifestName(*o_.partition, o_.partitions) ||
                 absl::StartsWith(name, absl::StrCat(DataFileName(*o_.partition, 0).substr(0, 11)));
    } else {
      conflict = conflict || absl::StartsWith(name, "manifest.part-") ||
                 (absl::StartsWith(name, "part-") && absl::EndsWith(name, ".sst"));
    }
    if (conflict) {
      return absl::FailedPreconditionError(absl::StrCat(
          "output ", o_.output_dir, " already holds ", name,
          ": build into a new directory (a loaded version shares its files, so never overwrite them)"));
    }
  }
  if (ec) return absl::InternalError(absl::StrCat("listing ", o_.output_dir, ": ", ec.message()));
  tmp_dir_ = o_.tmp_dir.empty() ? o_.output_dir : o_.tmp_dir;
  tmp_dir_ = absl::StrCat(tmp_dir_, "/.spill-", ::getpid(), o_.partition.has_value() ? absl::StrCat("-p", *o_.partition) : "");
  fs::create_directories(tmp_dir_, ec);
  if (ec) return absl::InternalError(absl::StrCat("creating ", tmp_dir_, ": ", ec.message()));
  input_compression_.assign(o_.inputs.size(), "none");
  input_file_bytes_.assign(o_.inputs.size(), 0);
  return absl::OkStatus();
}

void BuildJob::Produce(int /*producer*/) {
  while (!failure_.failed()) {
    uint32_t f = next_file_.fetch_add(1);
    if (f >= o_.inputs.size()) break;
    const std::string& path = o_.inputs[f];
    auto src = LineSource::Open(path);
    if (!src.ok()) {
      failure_.Set(src.status());
      break;
    }
    std::shared_ptr<const ColumnMap> columns = default_columns_;
    bool first = true;
    while (!failure_.failed()) {
      Chunk c;
      c.file = f;
      auto more = (*src)->Next(chunk_bytes_, kMaxLineBytes, &c.data, &c.first_line);
      if (!more.ok()) {
        failure_.Set(absl::Status(more.status().code(), absl::StrCat(path, ": ", more.status().message())));
        break;
      }
      if (!*more) break;
      input_bytes_.fetch_add(c.data.size(), std::memory_order_relaxed);
      if (first && parser_.header) {
        size_t nl = c.data.find('\n');
        absl::string_view header = absl::string_view(c.data).substr(0, nl);
        auto m = MakeColumnMap(parser_, header);
        if (!m.ok()) {
          failure_.Set(absl::InvalidArgumentError(absl::StrCat(path, ":", c.first_line, ": ", m.status().message())));
          break;
        }
        columns = std::make_shared<const ColumnMap>(std::move(*m));
        c.data.erase(0, nl == std::string::npos ? c.data.size() : nl + 1);
        c.first_line += 1;
      }
      first = false;
      c.columns = columns;
      if (c.data.empty()) continue;
      if (!queue_->Push(std::move(c), failure_)) break;
    }
    input_compression_[f] = std::string((*src)->compression());
    input_file_bytes_[f] = (*src)->file_bytes_read();
    file_bytes_.fetch_add((*src)->file_bytes_read(), std::memory_order_relaxed);
  }
  queue_->ProducerDone();
}

absl::Status BuildJob::Spill(SortBuffer* buf) {
  buf->Sort();
  std::string path = absl::StrCat(tmp_dir_, "/run-", run_seq_.fetch_add(1), ".tmp");
  ASSIGN_OR_RETURN(auto w, RunWriter::Create(path, partitions_));
  for (const Entry& e : buf->entries()) {
    RETURN_IF_ERROR(w->Add(PartitionOfBucket(static_cast<uint32_t>(e.prefix >> 48), partitions_), buf->Key(e),
                           buf->Seq(e), buf->Value(e)));
  }
  ASSIGN_OR_RETURN(auto run, w->Finish());
  spill_bytes_.fetch_add(run->bytes, std::memory_order_relaxed);
  buf->Clear();
  std::lock_guard<std::mutex> lock(runs_mu_);
  runs_.push_back(std::move(run));
  return absl::OkStatus();
}

void BuildJob::Work(int worker) {
  RowParser parser(parser_);
  auto buf = std::make_unique<SortBuffer>(buffer_limit_);
  std::string skey, value;
  Chunk c;
  uint64_t lines = 0, bad = 0, other = 0;
  while (queue_->Pop(&c, failure_)) {
    const char* p = c.data.data();
    const char* end = p + c.data.size();
    uint64_t line_no = c.first_line;
    for (; p < end; ++line_no) {
      const char* nl = static_cast<const char*>(std::memchr(p, '\n', end - p));
      const char* line_end = nl ? nl : end;
      absl::string_view line(p, line_end - p);
      p = line_end + 1;
      if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
      if (line.empty()) continue;
      ++lines;
      const uint64_t seq = (static_cast<uint64_t>(c.file) << kLineBits) | line_no;
      absl::string_view key;
      absl::Status st = parser.Parse(line, *c.columns, &key, &value);
      if (!st.ok()) {
        ++bad;
        AddError(seq, absl::StrCat(Where(seq), ": ", st.message()));
        const uint64_t total = bad_rows_.fetch_add(1, std::memory_order_relaxed) + 1;
        if (total > o_.max_bad_rows) {
          // The build will fail. Keep reading (without sorting) until there are enough errors
          // to show, so one run reports the input's problems rather than only the first.
          over_budget_.store(true, std::memory_order_relaxed);
          if (total >= o_.max_bad_rows + std::max<uint64_t>(1, o_.max_reported_errors)) {
            failure_.Set(absl::InvalidArgumentError("too many malformed rows"));
            break;
          }
        }
        continue;
      }
      if (over_budget_.load(std::memory_order_relaxed)) continue;
      MakeStorageKey(key, &skey);
      if (o_.partition.has_value()) {
        uint32_t bucket = (static_cast<uint8_t>(skey[0]) << 8) | static_cast<uint8_t>(skey[1]);
        if (PartitionOfBucket(bucket, partitions_) != *o_.partition) {
          ++other;
          continue;
        }
      }
      buf->Add(skey, seq, value);
      if (buf->full()) {
        absl::Status s = Spill(buf.get());
        if (!s.ok()) {
          failure_.Set(s);
          break;
        }
      }
    }
    if (failure_.failed()) break;
  }
  lines_.fetch_add(lines);
  other_rows_.fetch_add(other);
  if (!failure_.failed()) buf->Sort();
  std::lock_guard<std::mutex> lock(runs_mu_);
  tails_[worker] = std::move(buf);
}

std::vector<std::unique_ptr<Cursor>> BuildJob::CursorsFor(uint32_t p, const std::vector<const RunFile*>& runs,
                                                          bool with_memory, size_t buffer_bytes) {
  std::vector<std::unique_ptr<Cursor>> cursors;
  for (const RunFile* r : runs) {
    if (r->part_off[p + 1] > r->part_off[p]) {
      cursors.push_back(std::make_unique<FileCursor>(r, r->part_off[p], r->part_off[p + 1], buffer_bytes));
    }
  }
  if (with_memory) {
    const uint64_t lo = FirstPrefixOf(p, partitions_);
    const uint64_t hi = p + 1 < partitions_ ? FirstPrefixOf(p + 1, partitions_) : UINT64_MAX;
    for (const auto& t : tails_) {
      if (!t || t->empty()) continue;
      const auto& es = t->entries();
      auto b = std::lower_bound(es.begin(), es.end(), lo, [](const Entry& e, uint64_t v) { return e.prefix < v; });
      auto e = p + 1 < partitions_
                   ? std::lower_bound(es.begin(), es.end(), hi, [](const Entry& x, uint64_t v) { return x.prefix < v; })
                   : es.end();
      if (e > b) cursors.push_back(std::make_unique<MemCursor>(t.get(), b - es.begin(), e - es.begin()));
    }
  }
  return cursors;
}

absl::Status BuildJob::MergeRunGroup(const std::vector<const RunFile*>& group, std::unique_ptr<RunFile>* out) {
  std::string path = absl::StrCat(tmp_dir_, "/run-", run_seq_.fetch_add(1), ".tmp");
  ASSIGN_OR_RETURN(auto w, RunWriter::Create(path, partitions_));
  for (uint32_t p = 0; p < partitions_; ++p) {
    if (failure_.failed()) return absl::CancelledError("build failed");
    Merger m(CursorsFor(p, group, false, merge_buffer_bytes_));
    RETURN_IF_ERROR(m.Init());
    while (!m.done()) {
      Cursor* c = m.top();
      RETURN_IF_ERROR(w->Add(p, c->key(), c->seq(), c->value()));
      RETURN_IF_ERROR(m.Advance());
    }
  }
  ASSIGN_OR_RETURN(*out, w->Finish());
  spill_bytes_.fetch_add((*out)->bytes, std::memory_order_relaxed);
  return absl::OkStatus();
}

absl::Status BuildJob::IntermediateMerges() {
  size_t mem_runs = 0;
  for (const auto& t : tails_) mem_runs += t && !t->empty();
  const size_t limit = std::max<size_t>(2, o_.max_fan_in > mem_runs + 2 ? o_.max_fan_in - mem_runs : 2);
  while (runs_.size() > limit) {
    ++report_->merge_passes;
    const size_t fan = std::max<size_t>(2, o_.max_fan_in);
    std::vector<std::vector<const RunFile*>> groups;
    for (size_t i = 0; i < runs_.size(); i += fan) {
      std::vector<const RunFile*> g;
      for (size_t k = i; k < std::min(runs_.size(), i + fan); ++k) g.push_back(runs_[k].get());
      groups.push_back(std::move(g));
    }
    merge_buffer_bytes_ = std::clamp<size_t>(o_.memory_budget / 4 / (threads_ * fan), 4 << 10, 1 << 20);
    std::vector<std::unique_ptr<RunFile>> merged(groups.size());
    std::atomic<size_t> next{0};
    std::vector<std::thread> ts;
    for (int t = 0; t < threads_; ++t) {
      ts.emplace_back([&] {
        for (size_t g = next.fetch_add(1); g < groups.size(); g = next.fetch_add(1)) {
          if (groups[g].size() == 1) continue;  // carried over as it is
          absl::Status s = MergeRunGroup(groups[g], &merged[g]);
          if (!s.ok()) failure_.Set(s);
        }
      });
    }
    for (auto& t : ts) t.join();
    if (failure_.failed()) return failure_.status();
    std::vector<std::unique_ptr<RunFile>> next_runs;
    for (size_t g = 0; g < groups.size(); ++g) {
      if (merged[g]) {
        next_runs.push_back(std::move(merged[g]));
      } else {  // a single run: keep it
        for (auto& r : runs_) {
          if (r.get() == groups[g][0]) next_runs.push_back(std::move(r));
        }
      }
    }
    runs_ = std::move(next_runs);  // destroys (and unlinks) the merged inputs
  }
  return absl::OkStatus();
}

absl::Status BuildJob::WritePartition(uint32_t p, PartitionOutput* out) {
  std::vector<const RunFile*> runs;
  for (const auto& r : runs_) runs.push_back(r.get());
  Merger m(CursorsFor(p, runs, true, merge_buffer_bytes_));
  RETURN_IF_ERROR(m.Init());
  std::unique_ptr<storage::SortedFileWriter> writer;
  ManifestFile current;
  uint32_t file_seq = 0;
  std::string pend_key, pend_value;
  uint64_t pend_seq = 0;
  bool pending = false;
  std::string crc_scratch;

  auto finish_file = [&]() -> absl::Status {
    if (!writer) return absl::OkStatus();
    ASSIGN_OR_RETURN(storage::SortedFileInfo info, writer->Finish());
    writer.reset();
    current.rows = info.entries;
    current.bytes = info.bytes;
    current.crc32c = info.crc32c;
    out->files.push_back(current);
    return absl::OkStatus();
  };
  auto emit = [&]() -> absl::Status {
    if (duplicate_errors_.load(std::memory_order_relaxed) > 0) return absl::OkStatus();  // failing anyway
    if (!writer) {
      current = ManifestFile();
      current.name = DataFileName(p, file_seq++);
      current.partition = p;
      std::string path = o_.output_dir + "/" + current.name;
      {
        std::lock_guard<std::mutex> lock(outputs_mu_);
        written_files_.push_back(path);
      }
      ASSIGN_OR_RETURN(writer, storage::SortedFileWriter::Open(path, sst_));
      current.first_key = std::string(UserKey(pend_key));
    }
    RETURN_IF_ERROR(writer->Add(pend_key, pend_value));
    crc_scratch.clear();
    PutVarint(&crc_scratch, pend_key.size());
    crc_scratch.append(pend_key);
    PutVarint(&crc_scratch, pend_value.size());
    current.content_crc32c = storage::Crc32c(current.content_crc32c, crc_scratch.data(), crc_scratch.size());
    current.content_crc32c = storage::Crc32c(current.content_crc32c, pend_value.data(), pend_value.size());
    crc_scratch.clear();
    absl::string_view user = UserKey(pend_key);
    current.last_key = std::string(user);
    if (out->rows == 0 || user < absl::string_view(out->min_key)) out->min_key = std::string(user);
    if (out->rows == 0 || user > absl::string_view(out->max_key)) out->max_key = std::string(user);
    ++out->rows;
    if (writer->file_bytes() >= o_.target_file_bytes) return finish_file();
    return absl::OkStatus();
  };

  uint64_t n = 0;
  while (!m.done()) {
    if ((++n & 0xFFF) == 0 && failure_.failed()) return absl::CancelledError("build failed");
    Cursor* c = m.top();
    if (pending && c->key() == pend_key) {
      if (o_.on_duplicate == OnDuplicate::kError) {
        duplicate_errors_.fetch_add(1, std::memory_order_relaxed);
        AddError(c->seq(), absl::StrCat(Where(c->seq()), ": duplicate key \"", UserKey(pend_key).substr(0, 128),
                                        "\" (first at ", Where(pend_seq), ")"));
      } else {
        duplicates_.fetch_add(1, std::memory_order_relaxed);
        pend_value.assign(c->value().data(), c->value().size());
        pend_seq = c->seq();
      }
    } else {
      if (pending) RETURN_IF_ERROR(emit());
      pend_key.assign(c->key().data(), c->key().size());
      pend_value.assign(c->value().data(), c->value().size());
      pend_seq = c->seq();
      pending = true;
    }
    RETURN_IF_ERROR(m.Advance());
  }
  if (pending) RETURN_IF_ERROR(emit());
  return finish_file();
}

void BuildJob::WritePartitions() {
  std::vector<uint32_t> parts;
  if (o_.partition.has_value()) {
    parts.push_back(*o_.partition);
  } else {
    for (uint32_t p = 0; p < partitions_; ++p) parts.push_back(p);
  }
  outputs_.assign(partitions_, PartitionOutput());
  size_t cursors = runs_.size() + tails_.size();
  merge_buffer_bytes_ =
      std::clamp<size_t>(o_.memory_budget / 4 / (threads_ * std::max<size_t>(1, cursors)), 4 << 10, 1 << 20);
  std::atomic<size_t> next{0};
  std::vector<std::thread> ts;
  for (int t = 0; t < std::min<int>(threads_, static_cast<int>(parts.size())); ++t) {
    ts.emplace_back([&] {
      for (size_t i = next.fetch_add(1); i < parts.size() && !failure_.failed(); i = next.fetch_add(1)) {
        absl::Status s = WritePartition(parts[i], &outputs_[parts[i]]);
        if (!s.ok()) failure_.Set(s);
      }
    });
  }
  for (auto& t : ts) t.join();
}

void BuildJob::Cleanup() {
  runs_.clear();
  tails_.clear();
  std::error_code ec;
  if (!tmp_dir_.empty()) fs::remove_all(tmp_dir_, ec);
}

absl::Status BuildJob::Run() {
  const auto start = Clock::now();
  absl::Status prepared = Prepare();
  if (!prepared.ok()) {
    Cleanup();
    return prepared;
  }
  report_->threads = threads_;
  report_->input_files = o_.inputs.size();

  // 1. Read, parse, sort and spill.
  const int producers = std::min<int>(threads_, static_cast<int>(o_.inputs.size()));
  queue_ = std::make_unique<ChunkQueue>(2 * threads_, producers);
  tails_.resize(threads_);
  {
    std::vector<std::thread> ts;
    for (int i = 0; i < producers; ++i) ts.emplace_back([this, i] { Produce(i); });
    for (int i = 0; i < threads_; ++i) ts.emplace_back([this, i] { Work(i); });
    for (auto& t : ts) t.join();
  }
  report_->read_parse_seconds = Since(start);
  report_->runs_spilled = runs_.size();

  // 2. Merge and write.
  const auto merge_start = Clock::now();
  const bool failing = failure_.failed() || over_budget_.load();
  if (!failing) {
    absl::Status s = IntermediateMerges();
    if (!s.ok()) failure_.Set(s);
  }
  if (!failing && !failure_.failed()) WritePartitions();
  report_->merge_write_seconds = Since(merge_start);

  report_->input_bytes = input_bytes_.load();
  report_->input_file_bytes = file_bytes_.load();
  report_->lines = lines_.load();
  report_->bad_rows = bad_rows_.load();
  report_->other_partition_rows = other_rows_.load();
  report_->duplicate_rows = duplicates_.load() + duplicate_errors_.load();
  report_->spill_bytes = spill_bytes_.load();
  for (const auto& e : errors_.errors()) report_->errors.push_back(e.message);

  absl::Status result = failure_.status();
  const bool stopped_early = !result.ok();
  if (over_budget_.load() && (result.ok() || result.message() == "too many malformed rows")) {
    result = absl::InvalidArgumentError(absl::StrCat(stopped_early ? "at least " : "", report_->bad_rows,
                                                     " malformed row(s), more than --max-bad-rows ", o_.max_bad_rows));
  }
  if (result.ok() && duplicate_errors_.load() > 0) {
    result = absl::InvalidArgumentError(absl::StrCat(duplicate_errors_.load(), " duplicate key(s) (use --on-duplicate last to keep the last row)"));
  }

  Manifest m;
  if (result.ok()) {
    m.dataset = o_.dataset;
    m.schema = o_.schema;
    m.partitions = partitions_;
    m.partition = o_.partition;
    m.label = o_.label;
    m.built_at = NowRfc3339();
    m.compression = std::string(storage::CompressionName(sst_.compression));
    m.block_bytes = sst_.block_bytes;
    m.bloom_bits = static_cast<uint32_t>(sst_.bloom_bits_per_key);
    uint32_t digest = 0;
    for (auto& out : outputs_) {
      if (out.rows > 0) {
        if (m.rows == 0 || out.min_key < m.min_key) m.min_key = out.min_key;
        if (m.rows == 0 || out.max_key > m.max_key) m.max_key = out.max_key;
      }
      m.rows += out.rows;
      for (auto& f : out.files) {
        digest = storage::Crc32c(digest, &f.content_crc32c, 4);
        report_->output_bytes += f.bytes;
        m.files.push_back(std::move(f));
      }
    }
    m.content_digest = FormatCrc(digest);
    report_->rows_written = m.rows;
    report_->files = m.files.size();
    report_->content_digest = m.content_digest;
    report_->total_seconds = Since(start);

    char host[256] = {0};
    ::gethostname(host, sizeof(host) - 1);
    Json build = {{"host", host},
                  {"threads", threads_},
                  {"memory_budget", o_.memory_budget},
                  {"seconds", report_->total_seconds},
                  {"runs_spilled", report_->runs_spilled},
                  {"merge_passes", report_->merge_passes},
                  {"target_file_bytes", o_.target_file_bytes}};
    Json files = Json::array();
    for (size_t i = 0; i < o_.inputs.size(); ++i) {
      std::error_code ec;
      files.push_back({{"path", fs::absolute(o_.inputs[i], ec).string()},
                       {"bytes", input_file_bytes_[i]},
                       {"compression", input_compression_[i]}});
    }
    Json input = {{"format", std::string(InputFormatName(parser_.format))},
                  {"files", files},
                  {"bytes", report_->input_bytes},
                  {"lines", report_->lines},
                  {"bad_rows_skipped", report_->bad_rows},
                  {"max_bad_rows", o_.max_bad_rows},
                  {"on_duplicate", o_.on_duplicate == OnDuplicate::kError ? "error" : "last"},
                  {"duplicate_rows", report_->duplicate_rows},
                  {"other_partition_rows", report_->other_partition_rows}};
    m.build_json = build.dump();
    m.input_json = input.dump(-1, ' ', false, Json::error_handler_t::replace);
    std::string name = o_.partition.has_value() ? PartialManifestName(*o_.partition, partitions_) : kManifestName;
    report_->manifest_path = o_.output_dir + "/" + name;
    result = WriteFileAtomic(report_->manifest_path, ManifestToJson(m));
  }
  if (!result.ok()) {
    std::error_code ec;
    for (const auto& f : written_files_) fs::remove(f, ec);
    report_->manifest_path.clear();
  }
  Cleanup();
  if (!result.ok() && created_output_) {
    std::error_code ec;
    if (fs::is_empty(o_.output_dir, ec)) fs::remove(o_.output_dir, ec);
  }
  report_->total_seconds = Since(start);
  if (!result.ok() && !report_->errors.empty()) {
    std::string first;
    for (size_t i = 0; i < std::min<size_t>(5, report_->errors.size()); ++i) {
      absl::StrAppend(&first, "\n  ", report_->errors[i]);
    }
    result = absl::Status(result.code(), absl::StrCat(result.message(), "; first errors:", first));
  }
  return result;
}

}  // namespace

std::string BuildReport::ToJson() const {
  Json j = {{"ok", !manifest_path.empty()},
            {"manifest", manifest_path},
            {"rows", rows_written},
            {"files", files},
            {"output_bytes", output_bytes},
            {"content_digest", content_digest},
            {"input_files", input_files},
            {"input_bytes", input_bytes},
            {"input_file_bytes", input_file_bytes},
            {"lines", lines},
            {"bad_rows_skipped", bad_rows},
            {"duplicate_rows", duplicate_rows},
            {"other_partition_rows", other_partition_rows},
            {"runs_spilled", runs_spilled},
            {"spill_bytes", spill_bytes},
            {"merge_passes", merge_passes},
            {"threads", threads},
            {"read_parse_seconds", read_parse_seconds},
            {"merge_write_seconds", merge_write_seconds},
            {"seconds", total_seconds},
            {"mb_per_s", total_seconds > 0 ? input_bytes / 1e6 / total_seconds : 0.0},
            {"errors", errors}};
  return j.dump(-1, ' ', false, Json::error_handler_t::replace);
}

absl::Status Build(const BuildOptions& options, BuildReport* report) {
  *report = BuildReport();
  BuildJob job(options, report);
  return job.Run();
}

}  // namespace kosh::datasets
